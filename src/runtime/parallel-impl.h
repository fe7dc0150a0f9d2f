// Internals of the parallel trainer shared by its files (stepping, checkpoints).

#ifndef LOOM_RUNTIME_PARALLEL_IMPL_H
#define LOOM_RUNTIME_PARALLEL_IMPL_H

#include "loom/parallel.h"
#include "plan/plan.h"
#include "runtime/runner.h"

enum { LOOM_PARALLEL_INPUTS = 4 };

typedef struct rank_state {
    struct loom_parallel *par;
    int rank, unit, index;            // global rank, unit (dp index), index inside the unit
    loom_comm_t world, unit_comm, dp_comm, zero_comm, zero_cross;
    loom_local_graph lg;
    loom_runner *runner;
    loom_runner *eval_runner;         // forward-only program on the same parameters (lazy)
    float *params;                    // the rank's parameter region
    // Per-step inputs (tokens, targets, positions, loss normalizer): their local values, the
    // rows of the unit's batch each holds, and buffers for every micro-batch.
    loom_value inputs[LOOM_PARALLEL_INPUTS];
    int64_t rows[LOOM_PARALLEL_INPUTS], first_row[LOOM_PARALLEL_INPUTS];
    void *batch[LOOM_PARALLEL_INPUTS];
    float loss;                       // the step's loss, averaged over the units
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
    loom_graph_t global;
    loom_value loss;
    loom_plan plan;
    rank_state *ranks;
    const int32_t *step_tokens, *step_targets;
    float *loss_norm;                 // per micro-batch: units / kept targets of the global batch
    const char *io_dir;               // checkpoint directory of the current save or load
};

typedef loom_status (*loom__rank_fn)(rank_state *rs);

// The full tensor of a parameter-shaped value from the unit's shards of it (`local` on each
// rank): collective over the unit; the unit's first rank receives it in `full`.
loom_status loom__gather_full(rank_state *rs, const loom_local_leaf *leaf, const float *local,
                              float *full);
// The block [offset, offset + shape) of its global tensor a leaf's contiguous shard holds
// (Shard with no fused chunks); 0 for replicated values and fused shards.
int loom__shard_block(const rank_state *rs, const loom_local_leaf *leaf, int64_t *offset,
                      int64_t *shape);

// Run fn on every rank this process holds, concurrently (threads for the local comm); the first
// rank that failed on its own names the error.
loom_status loom__run_ranks(loom_parallel_t p, loom__rank_fn fn);

#endif // LOOM_RUNTIME_PARALLEL_IMPL_H
