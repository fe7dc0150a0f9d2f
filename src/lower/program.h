// Per-rank programs: a flat instruction list in schedule order over pre-planned buffers.
//
// Lowering turns a graph (with its backward, for training) into a program: the instructions one
// rank executes for one step, and a memory plan that places every value in a region. Activations
// and activation gradients share one arena whose offsets come from liveness, so a step allocates
// nothing. With one rank the program has no collectives; parallel lowering adds them.

#ifndef LOOM_LOWER_PROGRAM_H
#define LOOM_LOWER_PROGRAM_H

#include "ir/ir.h"

typedef enum loom_instr_kind {
    LOOM_INSTR_ZERO_GRADS = 0,  // zero the parameter-gradient region
    LOOM_INSTR_LOAD_BATCH,      // copy micro-batch `arg` of the caller's inputs into the inputs
    LOOM_INSTR_SEED_GRAD,       // d(loss)/d(loss) = 1 / micro-batches
    LOOM_INSTR_RECORD_LOSS,     // add this micro-batch's loss to the step's running sum
    LOOM_INSTR_FORWARD,         // run node `node`
    LOOM_INSTR_BACKWARD,        // run backward node `node`; acc_mask bit k: output k accumulates
    LOOM_INSTR_DP_SYNC,         // average the parameter gradients over the data-parallel group
    LOOM_INSTR_CLIP_GRADS,      // global gradient norm and clipping scale
    LOOM_INSTR_OPTIMIZER_STEP,  // update every parameter
    LOOM_INSTR_COUNT
} loom_instr_kind;

typedef struct loom_instr {
    loom_instr_kind kind;
    int32_t node;
    int32_t arg;
    uint32_t acc_mask;
} loom_instr;

// Where a value lives.
typedef enum loom_region {
    LOOM_REGION_NONE = 0,    // unused by the program
    LOOM_REGION_ARENA,       // liveness-planned activations and activation gradients
    LOOM_REGION_INPUT,       // per-step inputs (tokens, targets, positions)
    LOOM_REGION_PARAM,       // parameters (bound to the model's storage)
    LOOM_REGION_PARAM_GRAD,  // parameter gradients, same layout as the parameters
    LOOM_REGION_PERSIST,     // outputs kept after a run, loss seed, state (key/value cache)
    LOOM_REGION_COUNT
} loom_region;

typedef struct loom_lower_options {
    int train;           // 1: forward + backward + optimizer; 0: forward only
    int micro_batches;   // gradient accumulation steps (>= 1)
    int dp_sync;         // 1: gradients are averaged over data-parallel replicas each step
} loom_lower_options;

typedef struct loom_program {
    const loom_graph *graph;
    int n_instr;
    loom_instr *instr;
    int micro_batches;
    int train;
    // Memory plan: per value, its region and byte offset inside that region.
    uint8_t *region;
    size_t *offset;
    size_t region_bytes[LOOM_REGION_COUNT];
    // Parameters in region order (their offsets are also the gradients' offsets).
    int n_params;
    int32_t *params;
    int32_t loss;        // loss value (training), -1
} loom_program;

loom_status loom__lower(const loom_graph *g, const loom_lower_options *opt, loom_program **out);
void loom__program_free(loom_program *p);
// Name of an instruction kind ("forward").
const char *loom__instr_name(loom_instr_kind kind);
// Print the instruction list and the memory plan summary.
void loom__program_dump(const loom_program *p, FILE *f);

#endif // LOOM_LOWER_PROGRAM_H
