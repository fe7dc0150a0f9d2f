// Training and generation on one device: a trainer runs the model's training program (forward,
// backward, gradient clipping and an optimizer step over pre-planned buffers) per call.
//
//     loom_train_config tc = loom_train_config_default();
//     tc.batch = 4; tc.seq = 64;
//     loom_trainer_t t;
//     loom_trainer_create(model, &tc, &t);
//     loom_step_stats s;
//     loom_trainer_step(t, tokens, targets, &s);   // (grad_accum, B, T) int32 each
//     loom_trainer_free(t);

#ifndef LOOM_TRAIN_H
#define LOOM_TRAIN_H

#include "loom/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum loom_optimizer_kind {
    LOOM_OPTIM_ADAMW = 0,  // torch.optim.AdamW semantics
    LOOM_OPTIM_SGD,        // torch.optim.SGD (momentum, weight decay; no dampening)
    LOOM_OPTIM_COUNT
} loom_optimizer_kind;

typedef struct loom_train_config {
    int batch;                  // B, sequences per micro-batch
    int seq;                    // T, tokens per sequence
    int grad_accum;             // micro-batches per optimizer step
    loom_optimizer_kind optimizer;
    float lr;
    float beta1, beta2, eps;    // AdamW
    float momentum;             // SGD
    float weight_decay;         // decoupled (AdamW) or L2 (SGD), applied to every parameter
    float grad_clip;            // max global gradient norm; 0 disables clipping
    float loss_scale;           // static loss scaling: the backward starts from loss_scale and
                                // gradients are unscaled before clipping (default 1)
    const char *recompute;      // modules whose forward is recomputed in the backward
                                // (loom_graph_recompute spec, e.g. "layers" or "attn"); NULL
    int threads;                // 0: all cores
    int profile;                // accumulate per-op times (loom_trainer_profile)
    int trace;                  // record a timeline of every instruction (write it with
                                // loom_trainer_write_trace / loom_parallel_write_trace)
} loom_train_config;

loom_train_config loom_train_config_default(void);

typedef struct loom_trainer *loom_trainer_t;

typedef struct loom_step_stats {
    float loss;                 // mean over micro-batches
    float grad_norm;            // global norm before clipping
    double seconds;
    double tokens_per_s;
    double comm_wait_s;         // parallel runs: time rank 0 waited for the data-parallel
                                // gradient all-reduce after its backward
} loom_step_stats;

loom_status loom_trainer_create(loom_model_t model, const loom_train_config *cfg,
                                loom_trainer_t *out);
void loom_trainer_free(loom_trainer_t t);
// One optimizer step over grad_accum micro-batches. tokens, targets: (grad_accum, B, T) int32;
// targets equal to -100 are ignored. Updates the model's parameters in place.
loom_status loom_trainer_step(loom_trainer_t t, const int32_t *tokens, const int32_t *targets,
                              loom_step_stats *stats);
// Forward and backward only (no update): the loss and gradients stay readable.
loom_status loom_trainer_compute_grads(loom_trainer_t t, const int32_t *tokens,
                                       const int32_t *targets, loom_step_stats *stats);
// Gradient of a parameter after the last step or compute_grads (borrowed).
loom_status loom_trainer_grad(loom_trainer_t t, const char *name, const float **grad,
                              int64_t *numel);
// Logits (B, T, V) of the last micro-batch run (borrowed).
const float *loom_trainer_logits(loom_trainer_t t);
// Bytes planned for activations (the liveness arena), parameters, gradients, optimizer state.
// The bytes a rank holds, by what they are for. The runtime allocates everything when it binds
// a program and nothing while it steps, so these are its measured peak: parameters, their
// gradients, optimizer state (its ZeRO share), activations (the liveness-planned arena of every
// micro-batch in flight, activation gradients, and outputs kept after a run), inputs (the
// micro-batches' token buffers) and buffers (kernel scratch and staging).
typedef struct loom_memory_stats {
    size_t activations, parameters, gradients, optimizer, inputs, buffers;
} loom_memory_stats;
loom_memory_stats loom_trainer_memory(loom_trainer_t t);
// Per-op time table (needs cfg.profile), sorted by time.
void loom_trainer_profile(loom_trainer_t t, FILE *f);
// The timeline of the runs so far (needs cfg.trace) as a Chrome trace-event JSON file.
loom_status loom_trainer_write_trace(loom_trainer_t t, const char *path);
// The per-rank program and the graph, as text.
loom_status loom_trainer_dump(loom_trainer_t t, FILE *f);

// ---- generation -------------------------------------------------------------------------------

typedef struct loom_sample_config {
    float temperature;          // 0: greedy
    int top_k;                  // 0: all tokens
    uint64_t seed;
    int threads;                // 0: all cores
} loom_sample_config;

loom_sample_config loom_sample_config_default(void);

// Called for each new token; return non-zero to stop early.
typedef int (*loom_token_fn)(int32_t token, void *user);

// Extend `prompt` by up to n_new tokens with a key/value cache (one decode step per token).
// out receives the new tokens (capacity n_new); *n_out their count.
loom_status loom_generate(loom_model_t model, const int32_t *prompt, int n_prompt, int n_new,
                          const loom_sample_config *cfg, loom_token_fn on_token, void *user,
                          int32_t *out, int *n_out);

#ifdef __cplusplus
}
#endif
#endif // LOOM_TRAIN_H
