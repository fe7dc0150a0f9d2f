// Automatic parallel plans (nnScaler's AutoDist): for a model, a device count, a device spec and
// a memory limit per device, the fastest plan of tensor, pipeline and data parallelism,
// micro-batching, recomputation and ZeRO-1 that fits, with its predicted step time and memory.
//
//     loom_autodist_config ac = loom_autodist_config_default();
//     ac.devices = 1024; ac.device_spec = "h100-80gb-sxm"; ac.mem_constraint = 64e9;
//     ac.global_batch = 1024; ac.seq = 4096;
//     loom_autodist_t ad;
//     if (loom_autodist_search(&model_cfg, &ac, &ad) < 0) puts(loom_last_error());
//     const loom_autodist_plan *best = loom_autodist_best(ad);   // best->tp, best->pp, ...
//     loom_autodist_print(ad, stdout, 0);
//     loom_autodist_free(ad);
//
// Every estimate comes from the real machinery: the plan's per-rank local graphs (parallelize
// pass, autodiff, recomputation) are built for one and two layers of the model and lowered into
// programs, so memory is what the runtime would allocate; op times come from measurements on
// this machine's backend (cached on disk) or from the device spec's roofline; collectives from
// the spec's links; the pipeline by simulating the schedule. docs/autodist.md has the model.

#ifndef LOOM_AUTODIST_H
#define LOOM_AUTODIST_H

#include "loom/constraints.h"
#include "loom/model.h"
#include "loom/parallel.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

// What is recomputed in the backward (activation checkpointing).
typedef enum loom_recompute_mode {
    LOOM_RECOMPUTE_NONE = 0,
    LOOM_RECOMPUTE_SELECTIVE,   // the attention block of every layer ("attn" modules)
    LOOM_RECOMPUTE_FULL,        // whole layers: recompute_layers of each stage's layers
    LOOM_RECOMPUTE_MODE_COUNT
} loom_recompute_mode;

const char *loom_recompute_mode_name(loom_recompute_mode m);  // "none", "selective", "full"
int loom_recompute_mode_from_name(const char *name);          // -1 when unknown

// Numerics the plan is for: what one parameter, gradient and activation element costs.
typedef enum loom_precision {
    LOOM_PRECISION_AUTO = 0,    // fp32 on a CPU spec, mixed on a GPU spec
    LOOM_PRECISION_FP32,        // fp32 everything, fp32 Adam: 4 + 4 + 8 bytes per parameter
    LOOM_PRECISION_MIXED,       // bf16 parameters, gradients and activations, fp32 master and
                                // Adam state: 2 + 2 + 12 bytes per parameter
    LOOM_PRECISION_COUNT
} loom_precision;

const char *loom_precision_name(loom_precision p);  // "auto", "fp32", "mixed"

typedef struct loom_autodist_config {
    int devices;                  // devices of the job (1..)
    const char *device_spec;      // a built-in spec name or a JSON file (NULL: "cpu")
    double mem_constraint;        // bytes one device may use; 0: 0.8 x the spec's memory
    int global_batch;             // sequences per optimizer step
    int seq;                      // tokens per sequence
    loom_precision precision;
    // Fixed by the user; 0 (or -1 where marked) leaves it to the search.
    int tp, pp, dp;               // tensor, pipeline, data-parallel degrees
    int micro_batch;              // sequences per micro-batch on one data-parallel rank
    int recompute;                // -1: search; else a loom_recompute_mode
    int zero;                     // -1: search; 0: off; 1: ZeRO-1 over the data-parallel ranks
    int schedule;                 // -1: search 1f1b and 1f1b_interleaved; else a loom_schedule
    // nnScaler's names for the rest of the search space:
    int max_partition_degree;     // largest tensor-parallel degree (0: a node's devices)
    const char *pipeline_pivots;  // modules where a stage may start (NULL: any layer)
    const char *recompute_modules;  // recompute exactly these modules (loom_graph_recompute
                                  // spec, e.g. "attn" or "h.0,h.1"); overrides `recompute`
    loom_constraints_t constraints;  // partition constraints (borrowed; NULL: none)
    // How op times are found: measured on this machine's CPU backend (each distinct op once,
    // cached on disk; the default for the "cpu" spec) or the spec's roofline (GPU specs).
    int measured;                 // -1: by the spec; 0: roofline; 1: measured
    int threads;                  // threads per device when measuring (0: cores / devices)
    int keep;                     // alternatives kept in the result (0: 10)
    // Per-op strategy search inside stages: 1 (the default) tries, per tensor-parallel degree,
    // other strategies than the model family's table for every op (replicated, split on any
    // dim its annotation allows, whole blocks data-parallel) and keeps the fastest layout as a
    // candidate next to the table; 0 keeps the table (Megatron's layout) alone.
    int op_search;
} loom_autodist_config;

loom_autodist_config loom_autodist_config_default(void);

// One virtual pipeline stage of a plan (chunk * pp + pipe_rank).
typedef struct loom_autodist_stage {
    int pipe_rank, chunk;
    int first_layer, n_layers;    // the model's layers [first_layer, first_layer + n_layers)
    int embeddings, head;         // holds the token embeddings / the output head and loss
    int recompute_layers;         // of its layers, how many are recomputed (full recompute)
    double forward_s, backward_s; // one micro-batch, tensor-parallel communication included
} loom_autodist_stage;

// What one pipeline rank (each device of it) holds, by category, and its peak.
typedef struct loom_autodist_memory {
    loom_memory_stats bytes;      // parameters, gradients, optimizer, activations, inputs, buffers
    size_t peak;                  // their sum
    int in_flight;                // micro-batches whose activations it holds at once
} loom_autodist_memory;

typedef struct loom_autodist_plan {
    int tp, pp, dp;
    int chunks;                   // model chunks per pipeline rank (interleaving: > 1)
    int micro_batch;              // sequences per micro-batch per data-parallel rank
    int num_micro_batches;        // per optimizer step per pipeline
    loom_schedule schedule;
    loom_recompute_mode recompute;
    int zero;
    loom_precision precision;     // what the estimate assumed (never AUTO)
    // Predicted time of one optimizer step and where it goes (seconds per step).
    double step_time_s;
    double compute_s;             // the busiest pipeline rank's forward and backward passes
    double bubble_s;              // pipeline idle time (step minus the other parts)
    double tp_comm_s;             // tensor-parallel collectives (inside compute_s)
    double pp_comm_s;             // boundary sends exposed on the critical path
    double dp_comm_s;             // gradient reduction not hidden behind the backward
    double optimizer_s;           // the optimizer step (and ZeRO's parameter all-gather)
    double tokens_per_s;
    double mfu;                   // model FLOPs (6N + attention per token) / (step x peak)
    double model_flops;           // per step
    size_t peak_memory_bytes;     // the largest of the pipeline ranks' peaks
    int n_stages;                 // pp * chunks
    const loom_autodist_stage *stages;
    const loom_autodist_memory *memory;  // per pipeline rank (pp entries)
    // pipeline_layers for loom_compute_config ("3,3,2,2": layers per virtual stage) and the
    // recompute spec for loom_train_config ("" for none).
    const char *pipeline_layers;
    const char *recompute_spec;
    // Per-op strategies inside a stage's tensor-parallel group: the model family's table
    // (Megatron's layout) except the ops `layout` names ("attn: split b; mlp.c_fc: replicated";
    // "" when it is the table), which the per-op search found faster. `constraints` makes the
    // runtime follow them: the user's partition constraints plus one per op named (what
    // loom_autodist_apply passes; owned by the search result, NULL when there are none).
    const char *layout;
    loom_constraints_t constraints;
    int fits;                     // peak_memory_bytes <= the memory limit
    const char *rejected;         // why the search did not pick it ("" for the best plan)
} loom_autodist_plan;

typedef struct loom_autodist *loom_autodist_t;

// Search the plans for `model` under `cfg`. Errors: LOOM_ERR_INVALID naming the setting and the
// fix (a fixed degree that does not divide the devices or the batch, ...); LOOM_ERR_NOMEM with a
// message giving the smallest memory per device any plan needs, when no plan fits the limit (and
// *out still holds the result, its best plan the smallest, so callers can show it); the device
// spec's errors.
loom_status loom_autodist_search(const loom_model_config *model, const loom_autodist_config *cfg,
                                 loom_autodist_t *out);
void loom_autodist_free(loom_autodist_t a);

// The fastest plan that fits (or, after LOOM_ERR_NOMEM, the one needing the least memory).
const loom_autodist_plan *loom_autodist_best(loom_autodist_t a);
// The next-best plans, fastest first: fitting alternatives and the faster ones rejected for
// memory (at most half of the `keep` kept while fitting ones remain), each with `rejected`
// saying why.
int loom_autodist_n_alternatives(loom_autodist_t a);
const loom_autodist_plan *loom_autodist_alternative(loom_autodist_t a, int i);
// The inputs the search ran with (defaults resolved: the spec, the memory limit, ...).
const loom_autodist_config *loom_autodist_get_config(loom_autodist_t a);
const loom_model_config *loom_autodist_model(loom_autodist_t a);
double loom_autodist_search_seconds(loom_autodist_t a);
int64_t loom_autodist_plans_evaluated(loom_autodist_t a);
// The smallest peak memory per device of any plan considered.
size_t loom_autodist_min_memory(loom_autodist_t a);

// ---- output ------------------------------------------------------------------------------------

// The chosen plan as a table per stage (layers, mesh, memory split, time), the predicted step
// time, tokens/s and MFU; with `explain`, the best rejected alternatives and why.
void loom_autodist_print(loom_autodist_t a, FILE *f, int explain);
// JSON: tp, pp, dp, micro_batch_size, num_micro_batches, schedule, recompute, zero,
// step_time_s, tokens_per_s, mfu, peak_memory_bytes per stage, search_time_s, ...
loom_status loom_autodist_write_json(loom_autodist_t a, FILE *f);
// The equivalent Megatron-LM arguments (--tensor-model-parallel-size ...), one line.
void loom_autodist_print_megatron(loom_autodist_t a, FILE *f);

// ---- running a plan ----------------------------------------------------------------------------

// Fill `cc` and `tc` so that loom_parallelize runs `plan` (tc->batch becomes the global batch,
// grad_accum 1; the strings point into the plan, which must outlive them).
void loom_autodist_apply(const loom_autodist_plan *plan, const loom_autodist_config *cfg,
                         loom_compute_config *cc, loom_train_config *tc);

// ---- plan files --------------------------------------------------------------------------------

// Write the best plan as JSON (docs/autodist.md, "Plan files"), atomically: its settings (tp, pp,
// dp, chunks, micro_batch, num_micro_batches, schedule, recompute, zero, precision,
// pipeline_layers per virtual stage, recompute_modules, recompute_layers per pipeline rank), the
// job (devices, global_batch, seq, the device spec's name), the model's identity (model_type,
// n_layer, n_embd, n_head, n_kv_head, head_dim, vocab_size, n_inner), every forward op of the
// planned model in graph order keyed by module path and op signature with its split ([input,
// dim], "replicate" or "follow", as the file policy's plan files) and pipeline stage, and the
// predicted step time and memory (for people: loading ignores them). Errors: LOOM_ERR_IO naming
// the path.
loom_status loom_autodist_save(loom_autodist_t a, const char *path);

// Read a plan file for `model` and estimate it afresh under `cfg` (times and memory are
// recomputed; nothing the file predicted is trusted). The settings come from the file; cfg gives
// the device spec, memory limit, constraints and how op times are found, and its devices,
// global_batch and seq must equal the file's (else LOOM_ERR_INVALID naming both values). A plan
// that does not fit the model is LOOM_ERR_INVALID naming the file and the first mismatch: a
// model field ("n_layer: file 12, model 24") or an op ("op 17: the file has loom.linear in
// 'h.3.mlp.c_fc' but the model has loom.gelu in 'h.3.mlp.act'"; its split or stage), with the
// fix. Malformed JSON and missing or wrongly typed fields: LOOM_ERR_FORMAT naming the file and
// the field. The result works with every accessor and output function: its best plan is the
// loaded one, with no alternatives, loom_autodist_plans_evaluated 0 (no search) and
// loom_autodist_search_seconds the time reading and estimating took. When the plan needs more
// memory than cfg allows:
// LOOM_ERR_NOMEM saying how much, with *out still set (as loom_autodist_search).
loom_status loom_autodist_load(const char *path, const loom_model_config *model,
                               const loom_autodist_config *cfg, loom_autodist_t *out);

#ifdef __cplusplus
}
#endif
#endif // LOOM_AUTODIST_H
