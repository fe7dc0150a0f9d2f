// Parallel training: a model split over devices by a plan, running as one program per rank.
//
//     loom_compute_config cc = loom_compute_config_default();
//     cc.plan_ndevices = 2;          // tensor parallel inside a unit of 2 devices
//     cc.runtime_ndevices = 4;       // 2 units, data parallel
//     cc.policy = LOOM_POLICY_TP;
//     loom_parallel_t par;
//     loom_parallelize(model, &cc, &train_cfg, &par);
//     loom_parallel_step(par, tokens, targets, &stats);   // global batch, as loom_trainer_step
//     loom_parallel_sync_model(par);                      // merged parameters into `model`
//
// Every plan computes what one device computes (to fp32 round-off): tests compare losses and
// merged parameters with the single-device trainer.

#ifndef LOOM_PARALLEL_H
#define LOOM_PARALLEL_H

#include "loom/comm.h"
#include "loom/constraints.h"
#include "loom/train.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum loom_policy {
    LOOM_POLICY_DP = 0,  // every op replicated inside a unit; units run data parallel
    LOOM_POLICY_TP,      // Megatron tensor parallelism (the family's policy table) in a unit
    LOOM_POLICY_DATA,    // every op split on its batch dim inside a unit
    LOOM_POLICY_CUSTOM,  // policy_fn decides per op (the others follow their inputs)
    LOOM_POLICY_FILE,    // a JSON plan file decides per op (plan_file)
    LOOM_POLICY_PP,      // pipeline stages, each on one device (plan_ndevices = pipeline_nstages)
    LOOM_POLICY_HYBRID,  // pipeline stages, each tensor parallel (the family's table) on
                         // plan_ndevices / pipeline_nstages devices; units data parallel
    LOOM_POLICY_AUTODIST,  // the fastest plan of runtime_ndevices devices that fits
                           // mem_constraint (loom/autodist.h); plan_ndevices and the pipeline
                           // settings are chosen, tc->batch x tc->grad_accum is the global batch
    LOOM_POLICY_COUNT
} loom_policy;

// Pipeline schedules: the order in which a pipeline rank runs the forward and backward passes
// of its micro-batches.
typedef enum loom_schedule {
    LOOM_SCHEDULE_1F1B = 0,          // warm-up forwards, then one forward / one backward
    LOOM_SCHEDULE_GPIPE,             // every forward, then every backward
    LOOM_SCHEDULE_1F1B_INTERLEAVED,  // 1F1B over pipeline_nchunks model chunks per rank
    LOOM_SCHEDULE_INFER_PIPE,        // forwards only (inference)
    LOOM_SCHEDULE_COUNT
} loom_schedule;

const char *loom_schedule_name(loom_schedule s);
// "1f1b", "gpipe", "1f1b_interleaved", "infer_pipe" -> schedule; -1 when unknown.
int loom_schedule_from_name(const char *name);

// What a custom policy sees of an op.
typedef struct loom_op_view {
    const char *signature;   // "loom.linear"
    const char *module;      // "h.3.mlp.c_fc"
    const char *annotation;  // "* k+, n k+ -> * n"
    int n_inputs;
    int input_ndim[8];
    const int64_t *input_shape[8];
} loom_op_view;

// A custom policy: return 1 and set *input, *dim to split the op along that dim of that input
// (a constraint's "input,dim"); 0 to replicate it; -1 to let it follow how its inputs are
// split (elementwise ops) or replicate.
typedef int (*loom_policy_fn)(void *user, const loom_op_view *op, int parts, int *input,
                              int *dim);

const char *loom_policy_name(loom_policy p);
// "dp", "tp", "data", "custom", "file" -> policy; -1 when unknown.
int loom_policy_from_name(const char *name);

typedef struct loom_compute_config {
    int plan_ndevices;      // devices holding one copy of the model (a unit)
    int runtime_ndevices;   // a multiple of plan_ndevices; the units run data parallel
    loom_policy policy;
    int use_zero;           // ZeRO-1: shard the optimizer state over the data-parallel units
    int zero_ngroups;       // ZeRO groups (each holds one copy of the optimizer state)
    int zero_reduce_scatter;  // reduce-scatter gradients inside a ZeRO group (else all-reduce)
    int async_reducer;      // all-reduce gradient buckets during the backward (default on)
    size_t bucket_bytes;    // gradient bucket size (default 25 MB)
    loom_constraints_t constraints;  // partition constraints (borrowed; NULL: none)
    loom_policy_fn policy_fn;        // LOOM_POLICY_CUSTOM
    void *policy_user;
    const char *plan_file;           // LOOM_POLICY_FILE: JSON, see docs/parallel.md
    loom_comm_kind comm;    // LOOM_COMM_LOCAL: ranks are threads of this process
    double timeout_s;       // a rank that stops answering fails the others after this
    // Pipeline parallelism (policies pp and hybrid; the other policies split each stage):
    // a unit's plan_ndevices devices are pipeline_nstages ranks x the devices of one stage.
    int pipeline_nstages;         // pipeline ranks per unit (1: no pipeline)
    int pipeline_nmicros;         // micro-batches each batch is split into (1)
    loom_schedule pipeline_scheduler;
    int pipeline_nchunks;         // model chunks per pipeline rank (virtual stages); 0: 2 for
                                  // 1f1b_interleaved, else 1
    const char *pipeline_pivots;  // module names where a stage may start ("h.4,h.8", "layers")
    const char *pipeline_layers;  // layers per stage, "0,-1,-1,0": -1 shares the rest evenly; 0
                                  // leaves a stage only the embeddings (first) or head (last)
    int pipeline_measured;        // balance stages by measured op times (each distinct op
                                  // profiled once on this machine; rank 0's under MPI) instead
                                  // of FLOPs (the default: the same split on every run)
    // The autodist policy (nnScaler's names); pipeline_pivots and constraints apply too. Under
    // mpi rank 0 searches (or loads), saves, and broadcasts the plan to the other processes.
    double mem_constraint;        // bytes a device may use (0: 0.8 x the device spec's memory)
    const char *device_spec;      // the devices' spec (NULL: "cpu", this machine, measured)
    int max_partition_degree;     // largest tensor-parallel degree (0: the spec's node)
    const char *recompute_modules;  // recompute exactly these modules (NULL: searched)
    const char *save_plan_path;   // write the chosen plan here (JSON, loom_autodist_save)
    const char *load_plan_path;   // run this plan file instead of searching (re-estimated)
} loom_compute_config;

loom_compute_config loom_compute_config_default(void);

typedef struct loom_parallel *loom_parallel_t;

// Plan, lower and bind the model on runtime_ndevices ranks; copies the model's parameters into
// the ranks' shards. Errors name the op, the module and the dim a plan cannot split.
loom_status loom_parallelize(loom_model_t model, const loom_compute_config *cc,
                             const loom_train_config *tc, loom_parallel_t *out);
void loom_parallel_free(loom_parallel_t p);
// One optimizer step. tokens, targets: (grad_accum, B, T) with B the global batch (tc->batch),
// split over the units and then into pipeline_nmicros micro-batches; B must divide by units x
// pipeline_nmicros (and the micro-batch by the stage's devices under the data policy).
loom_status loom_parallel_step(loom_parallel_t p, const int32_t *tokens, const int32_t *targets,
                               loom_step_stats *stats);
// ---- end-to-end steps (nnScaler's end2end train_step / infer_step) ------------------------------

// One micro-batch: loom_parallel_micro_rows(p) sequences of tc->seq tokens and targets (split
// over the units, each unit a contiguous block of rows).
typedef struct loom_sample {
    const int32_t *tokens;
    const int32_t *targets;   // -100: ignored
} loom_sample;

// Micro-batches one step runs (grad_accum x pipeline_nmicros), and the rows of one.
int loom_parallel_micro_batches(loom_parallel_t p);
int64_t loom_parallel_micro_rows(loom_parallel_t p);
// One optimizer step over n <= loom_parallel_micro_batches(p) samples: the missing ones run as
// dummy micro-batches that contribute nothing. The loss is the mean over the samples of each
// sample's mean; losses (may be NULL) receives each sample's.
loom_status loom_parallel_train_step(loom_parallel_t p, const loom_sample *samples, int n,
                                     float *losses, loom_step_stats *stats);
// Forward only over n samples (the infer_pipe schedule on pipelines): each sample's loss.
loom_status loom_parallel_infer_step(loom_parallel_t p, const loom_sample *samples, int n,
                                     float *losses);

// Inference: the loss of one (B, T) batch under the current parameters, forward only (no
// gradients, no update), averaged over the units like a step's.
loom_status loom_parallel_eval(loom_parallel_t p, const int32_t *tokens, const int32_t *targets,
                               float *loss);
// Write the merged (global) parameters back into the model. Collective: under mpi every process
// calls it and the process of rank 0 gets the merged parameters.
loom_status loom_parallel_sync_model(loom_parallel_t p);
// Save the parameters and optimizer state as a sharded checkpoint: the first unit's ranks each
// write DIR/shard-RRRRR-of-PPPPP.safetensors (atomically, checksummed), then rank 0 commits
// DIR/checkpoint.json. Collective. `loom merge DIR OUT` makes one Hugging Face directory.
loom_status loom_parallel_save_sharded(loom_parallel_t p, const char *dir);
// Load parameters, optimizer state and step from a sharded or merged checkpoint written under
// any plan or device count (each rank reads the blocks its placements need). Collective.
loom_status loom_parallel_load_checkpoint(loom_parallel_t p, const char *dir);
// Optimizer steps taken so far (restored by loom_parallel_load_checkpoint).
int64_t loom_parallel_steps_done(loom_parallel_t p);
// The timeline of the steps so far (needs tc->trace): one Chrome trace-event JSON file with a
// track per rank (local comm); under mpi each process writes PATH with "-rank<N>" added.
loom_status loom_parallel_write_trace(loom_parallel_t p, const char *path);
// This process's first rank (0 with the local comm).
int loom_parallel_rank(loom_parallel_t p);
// Bytes a rank this process holds keeps, by category (loom_memory_stats: its measured peak;
// all zero for a rank held by another process).
loom_memory_stats loom_parallel_memory(loom_parallel_t p, int rank);
int loom_parallel_nranks(loom_parallel_t p);
// The device allocation: a table of modules x ranks (which share of each module's parameters a
// rank holds, '-' for none: pipeline ranks hold their stages' modules; '-' too for ranks held
// by another process) and the bytes of parameters, gradients, optimizer state and activations
// of each pipeline rank.
void loom_parallel_print_allocation(loom_parallel_t p, FILE *f);
// The search behind a parallel trainer made with the autodist policy (its chosen plan, for
// loom_autodist_print); NULL for the other policies. Borrowed: freed with the trainer.
struct loom_autodist *loom_parallel_autodist(loom_parallel_t p);

#ifdef __cplusplus
}
#endif
#endif // LOOM_PARALLEL_H
