// Per-rank programs: a flat instruction list in schedule order over pre-planned buffers.
//
// Lowering turns a graph (with its backward, for training) into a program: the instructions one
// rank executes for one step, and a memory plan that places every value in a region. Activations
// and activation gradients share one arena whose offsets come from liveness, so a step allocates
// nothing. With one rank the program has no collectives; parallel lowering adds them.

#ifndef LOOM_LOWER_PROGRAM_H
#define LOOM_LOWER_PROGRAM_H

#include "ir/ir.h"
#include "lower/schedule.h"

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
    LOOM_INSTR_SEND,            // send `value` of micro-batch `arg` to pipeline rank `peer`
    LOOM_INSTR_RECV,            // receive `value` of micro-batch `arg` from pipeline rank `peer`
    LOOM_INSTR_TIED_SYNC,       // sum parameter `value`'s gradient over the stages sharing it
                                // (tied group `peer`)
    LOOM_INSTR_COUNT
} loom_instr_kind;

typedef struct loom_instr {
    loom_instr_kind kind;
    int32_t node;
    int32_t arg;        // micro-batch (its values' instance)
    uint32_t acc_mask;
    int32_t value;      // send, recv, tied_sync
    int32_t peer;       // send, recv: pipeline rank; tied_sync: tied group
    int32_t tag;        // send, recv
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

// A pipeline stage's traffic: a boundary value of a (virtual) stage this rank runs, exchanged
// with another pipeline rank. Sends: produced here in `stage`, read there (the gradient comes
// back when `grad`). Receives: read here from `stage` on, produced there (its gradient goes
// back when `grad`).
typedef struct loom_pipe_edge {
    loom_value value;  // local value
    int stage;         // the virtual stage of this rank that produces (send) or first reads it
    int peer;          // pipeline rank at the other end
    int tag;           // unique per edge in the unit (tags are 2 * (tag * micros + micro) + grad)
    bool grad;         // a gradient flows back
} loom_pipe_edge;

typedef struct loom_pipe_program {
    const loom_pipe_action *actions;  // this rank's schedule
    int n_actions;
    int rank, ranks;                  // pipeline rank; chunk c runs virtual stage c*ranks+rank
    int n_sends, n_recvs;
    const loom_pipe_edge *sends, *recvs;
    int n_tied;                       // parameters shared with other pipeline ranks
    const loom_value *tied;           // local parameter values
    const int *tied_group;            // their tied groups (runner->tied_comms)
} loom_pipe_program;

typedef struct loom_lower_options {
    int train;           // 1: forward + backward + optimizer; 0: forward only
    int micro_batches;   // gradient accumulation steps (>= 1)
    int dp_sync;         // 1: gradients are averaged over data-parallel replicas each step
    float seed;          // d(loss) of each micro-batch; 0: 1 / micro_batches
    // NULL: every micro-batch's forward then backward in turn; else the pipeline schedule
    // (micro_batches in flight at once, each in its own instance of the activations).
    const loom_pipe_program *pipe;
} loom_lower_options;

typedef struct loom_program {
    const loom_graph *graph;
    int n_instr;
    loom_instr *instr;
    int micro_batches;
    int train;
    bool pipelined;      // micro-batches in flight together (opt->pipe)
    float seed;
    // Memory plan: per value, its region; per (micro-batch, value) instance its byte offset
    // inside that region (offset[m * n_values + v]). Activations, their gradients and the
    // inputs have one instance per micro-batch (the arena places those whose lifetimes
    // overlap apart); parameters, gradients and persistent values are shared.
    uint8_t *region;
    size_t *offset;
    size_t input_bytes;  // one micro-batch's inputs (the INPUT region holds micro_batches)
    size_t region_bytes[LOOM_REGION_COUNT];
    // Parameters in region order (their offsets are also the gradients' offsets).
    int n_params;
    int32_t *params;
    int32_t loss;        // loss value (recorded per micro-batch), -1
} loom_program;

loom_status loom__lower(const loom_graph *g, const loom_lower_options *opt, loom_program **out);
void loom__program_free(loom_program *p);
// Name of an instruction kind ("forward").
const char *loom__instr_name(loom_instr_kind kind);
// Print the instruction list and the memory plan summary.
void loom__program_dump(const loom_program *p, FILE *f);

#endif // LOOM_LOWER_PROGRAM_H
