// A program bound to buffers on a backend, ready to run: the one-rank executor.

#ifndef LOOM_RUNTIME_RUNNER_H
#define LOOM_RUNTIME_RUNNER_H

#include "backend/backend.h"
#include "lower/program.h"

typedef struct loom_optim_params {
    int kind;  // 0 AdamW, 1 SGD (loom_optimizer_kind)
    float lr, beta1, beta2, eps, weight_decay, momentum, grad_clip;
    float loss_scale;  // 0 or 1: none
} loom_optim_params;

// A contiguous range of the flat gradient region all-reduced as one message once instruction
// `ready` (the last that writes into it) has run.
typedef struct loom_grad_bucket {
    size_t begin, len;  // floats
    int ready;
    loom_comm_request_t req;
} loom_grad_bucket;

// One timed instruction of a traced run.
typedef struct loom_trace_event {
    int32_t instr;        // index into the program
    double start, end;    // seconds (omp_get_wtime)
} loom_trace_event;

typedef struct loom_runner {
    loom_program *prog;
    const loom_backend_i *be;
    void *region[LOOM_REGION_COUNT];  // owned, except PARAM (bound to the model)
    void **ptr;                       // per value: its buffer (micro-batch 0's instance), NULL
                                      // when unused; ptr + m * n_values: micro-batch m's
    loom_kernel_ctx kernel;           // scratch sized for the largest node, owned
    // Per-step inputs: the caller's arrays for each INPUT value, micro-batch major.
    const void **batch_src;
    // Optimizer state, flat over the parameter region.
    float *opt_m, *opt_v;
    int64_t step;
    loom_optim_params optim;
    float last_grad_norm;
    double loss_sum;  // sum of the micro-batch losses of the current step
    float *micro_loss;  // per micro-batch: its loss (where this rank computes the loss)
    int skip_update;  // run forward and backward only (gradients stay readable)
    // Parallel runs: kernel.comm is the stage's tensor-parallel group; dp_comm the
    // data-parallel group; norm_comm the unit (every stage: the gradient norm sums over it);
    // pipe_comm the pipeline ranks (sends and receives); tied_comms the ranks sharing a tied
    // parameter (TIED_SYNC's groups).
    loom_comm_t dp_comm, norm_comm, pipe_comm;
    loom_comm_t *tied_comms;
    // Per parameter (program order): 1 when this rank's gradient is a replica another rank of
    // the unit already counts in the global norm.
    uint8_t *norm_skip;
    // ZeRO-1: optimizer state sharded over zero_comm (a group of data-parallel replicas);
    // zero_cross links the same share across ZeRO groups. NULL: off.
    loom_comm_t zero_comm, zero_cross;
    int zero_reduce_scatter;  // reduce-scatter the gradients (else all-reduce them)
    // Data-parallel gradient buckets overlapped with the backward (n_buckets 0: one all-reduce).
    int n_buckets;
    loom_grad_bucket *buckets;
    double dp_wait_seconds;   // time the last run waited for the gradient all-reduce
    // Per-op profile (seconds, forward and backward), when profiling.
    int profile;
    double op_seconds[LOOM_OP_COUNT][2];
    // Timeline (Chrome trace events): every instruction of every run while `trace` is set.
    int trace;
    loom_trace_event *events;
    int n_events, cap_events;
    double instr_seconds[LOOM_INSTR_COUNT];
} loom_runner;

// Check a training config's ranges (batch, optimizer settings); shared by both trainers.
struct loom_train_config;
loom_status loom__train_config_validate(const struct loom_train_config *c);
// Bind `prog` (ownership passes to the runner) with parameters at `params` (the model's flat
// storage laid out as the program's PARAM region).
loom_status loom__runner_create(loom_program *prog, const loom_backend_i *be, float *params,
                                loom_runner **out);
void loom__runner_free(loom_runner *r);
// Set the optimizer and allocate its zeroed state (before the first training run).
loom_status loom__runner_set_optimizer(loom_runner *r, const loom_optim_params *o);
// Split the data-parallel gradient all-reduce into buckets of about `bucket_bytes`, each started
// asynchronously as soon as the backward has written its last gradient.
loom_status loom__runner_enable_buckets(loom_runner *r, size_t bucket_bytes);
loom_status loom__buckets_start(loom_runner *r, int instr);
loom_status loom__buckets_finish(loom_runner *r);
// Write the timelines of `n` runners (rank ranks[i] each) as a Chrome trace-event JSON file
// (opens in Perfetto): one track per rank, every kernel, collective and idle gap.
loom_status loom__trace_write(const char *path, loom_runner *const *runners, const int *ranks,
                              int n);
// Floats of optimizer state this rank keeps (its ZeRO share).
size_t loom__runner_optimizer_floats(const loom_runner *r);
// Measured costs: every distinct forward node of g (op, input shapes and dtypes, attributes)
// runs alone, forward and backward, on the CPU backend with `threads` threads; cost[node] is
// its typical time in seconds (the median of a few runs, the least over rounds; 0 for comm
// ops). Nodes with the same signature share one measurement, so identical layers are profiled
// once.
loom_status loom__measure_costs(const loom_graph *g, int threads, double *cost);
// The same with the forward and backward times apart (fwd_s, bwd_s: per node; the clones of
// recomputed nodes are forward nodes and get their original's times), each op measured while
// `concurrent` copies of it run at once (the ranks of a plan sharing this machine's cores and
// memory bandwidth; 1: alone).
loom_status loom__measure_op_times(const loom_graph *g, int threads, int concurrent,
                                   double *fwd_s, double *bwd_s);
// Run every instruction once: one step (training) or one forward pass.
loom_status loom__runner_run(loom_runner *r);
// What the runner holds (loom_memory_stats; parameters counted though the caller owns them).
struct loom_memory_stats loom__runner_memory(const loom_runner *r);
// Bytes the runner owns per region.
size_t loom__runner_bytes(const loom_runner *r, loom_region region);

#endif // LOOM_RUNTIME_RUNNER_H
