// Internals of the parallel trainer shared by its files (stepping, checkpoints).

#ifndef LOOM_RUNTIME_PARALLEL_IMPL_H
#define LOOM_RUNTIME_PARALLEL_IMPL_H

#include "loom/autodist.h"
#include "loom/parallel.h"
#include "plan/plan.h"
#include "runtime/runner.h"

enum { LOOM_PARALLEL_INPUTS = 4 };

typedef struct rank_state {
    struct loom_parallel *par;
    int rank, unit, index;            // global rank, unit (dp index), index inside the unit
    int pipe_rank, tp_index;          // index = pipe_rank * tp + tp_index
    // world; unit: every rank of the unit; tp: the stage's ranks; pipe: the unit's ranks with
    // this tp_index (one per pipeline rank); dp: this index in every unit; tied: per tied group.
    loom_comm_t world, unit_comm, tp_comm, pipe_comm, dp_comm, zero_comm, zero_cross;
    loom_comm_t *tied_comms;
    int n_tied_groups;
    loom_local_graph lg;
    loom_runner *runner;
    loom_runner *eval_runner;         // forward-only program on the same parameters (lazy)
    int eval_micros;                  // its micro-batches
    float *params;                    // the rank's parameter region
    // Per-step inputs (tokens, targets, positions, loss normalizer): their local values, the
    // rows of the unit's batch each holds, and buffers for every micro-batch.
    loom_value inputs[LOOM_PARALLEL_INPUTS];
    int64_t rows[LOOM_PARALLEL_INPUTS], first_row[LOOM_PARALLEL_INPUTS];
    void *batch[LOOM_PARALLEL_INPUTS];
    float loss;                       // the step's loss, averaged over the units
    float *micro_loss;                // per micro-batch: its share of the loss, over the units
    loom_status status;
    char error[1024];
} rank_state;

// Ranks held by this process: all of them as threads (local), or its own one (mpi).
struct loom_parallel {
    loom_model_t model;
    int n_held;                       // entries of `ranks`
    loom_compute_config cc;
    loom_train_config tc;
    int parts, units, nranks, threads_per_rank;
    int tp, pp;                       // devices per stage, pipeline ranks (parts = pp * tp)
    int nmicros;                      // micro-batches per batch (pipeline_nmicros)
    int micros;                       // micro-batches per step: grad_accum * nmicros
    int eval_micros;                  // micro-batches of the next forward-only run
    int64_t micro_rows;               // rows of one micro-batch in a unit
    loom_graph_t global;
    loom_value loss;
    loom_plan plan;
    rank_state *ranks;
    // The current call's micro-batches: micro m of unit u starts at row
    // u * src_unit_stride + src_offset[m] of src_tokens[m] / src_targets[m].
    const int32_t **src_tokens, **src_targets;
    int64_t *src_offset, src_unit_stride;
    float *loss_norm;                 // per micro-batch: its weight in the step's loss (units /
                                      // kept targets of its batch / batches), 0 for a dummy
    int32_t *dummy_tokens, *dummy_targets;  // a micro-batch that contributes nothing
    uint64_t *param_holders;          // per global value: bit r, pipeline rank r reads it
    uint64_t *tied_sets;              // the distinct holder sets of more than one rank
    int n_tied_sets;
    const char *io_dir;               // checkpoint directory of the current save or load
    loom_autodist_t autodist;         // the search that chose the plan (autodist policy)
};

typedef loom_status (*loom__rank_fn)(rank_state *rs);

// The autodist policy: search (or load) the plan for cc->runtime_ndevices devices, then
// loom_parallelize it; the trainer keeps the search (loom_parallel_autodist).
loom_status loom__parallelize_autodist(loom_model_t model, const loom_compute_config *cc,
                                       const loom_train_config *tc, loom_parallel_t *out);

// Threads per rank: tc->threads, else this machine's cores shared by the ranks on it (all of
// them with the local comm; the processes mpirun placed on this node with mpi).
int loom__threads_per_rank(const loom_compute_config *cc, const loom_train_config *tc);

// The full tensor of a parameter-shaped value from the unit's shards of it (`local` on each
// rank): collective over the unit; the unit's first rank receives it in `full`.
loom_status loom__gather_full(rank_state *rs, const loom_local_leaf *leaf, const float *local,
                              float *full);
// Whether this rank writes a parameter leaf into merged files: the first pipeline rank holding
// it (tied parameters are held by several), and for a replicated one its stage's first rank.
int loom__leaf_owner(const rank_state *rs, const loom_local_leaf *leaf);
// The block [offset, offset + shape) of its global tensor a leaf's contiguous shard holds
// (Shard with no fused chunks); 0 for replicated values and fused shards.
int loom__shard_block(const rank_state *rs, const loom_local_leaf *leaf, int64_t *offset,
                      int64_t *shape);

// Run fn on every rank this process holds, concurrently (threads for the local comm); the first
// rank that failed on its own names the error.
loom_status loom__run_ranks(loom_parallel_t p, loom__rank_fn fn);

#endif // LOOM_RUNTIME_PARALLEL_IMPL_H
