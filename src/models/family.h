// Model-family registry entries: config converters, graph builders and initializers.
// A family builds its graph only through the public builder API; parameter names are the
// Hugging Face names (without GPT-2's optional "transformer." prefix).

#ifndef LOOM_MODELS_FAMILY_H
#define LOOM_MODELS_FAMILY_H

#include "loom/model.h"

#include <jansson.h>

// One row of a family's tensor-parallel policy table (the Parallelformers idea): ops of
// `signature` whose module path ends with `module` are split along annotation identifier
// `split`; `chunks` > 1 marks a fused axis (GPT-2's c_attn holds q|k|v: 3 chunks).
// Special splits: "heads" (attention: kv groups when they divide, else query heads with k/v
// replicated), "kv_n" (k/v projections: output features when the kv heads divide, else
// replicated), "vocab" (vocabulary-parallel when the degree divides it, else replicated).
typedef struct loom_tp_rule {
    const char *module;
    const char *signature;
    const char *split;
    int chunks;
} loom_tp_rule;

typedef struct loom_family_i {
    const char *name;
    const char *const *model_types;  // NULL-terminated; the first is the default
    loom_model_config (*defaults)(void);
    // Fill cfg from a parsed config.json (`path` for messages).
    loom_status (*from_json)(const json_t *root, const char *path, loom_model_config *cfg);
    json_t *(*to_json)(const loom_model_config *cfg);
    loom_status (*validate)(const loom_model_config *cfg);
    // Record the model into g (params first used in a fixed order).
    loom_status (*build)(const loom_model_config *cfg, loom_graph_t g, loom_graph_mode mode,
                         int B, int T, int cache_len);
    // Random init of one parameter tensor (Hugging Face conventions); `normal` draws N(0, 1).
    void (*init)(const loom_model_config *cfg, const char *name, float *data, int64_t n,
                 double (*normal)(void *rng), void *rng);
    // Map a file tensor name to the loom name ("transformer.h.0..." -> "h.0..."); NULL when the
    // tensor is a known non-parameter buffer to ignore (GPT-2 "attn.bias").
    const char *(*file_to_param)(const char *file_name, char *buf, size_t cap);
    // Name to write a parameter under in a saved file.
    const char *(*param_to_file)(const char *name, char *buf, size_t cap);
    // Megatron tensor-parallel layout, terminated by a NULL module.
    const loom_tp_rule *tp_rules;
    // The module name of a layer's attention block ("attn"): what selective recomputation
    // recomputes.
    const char *attention_module;
} loom_family_i;

const loom_family_i *loom__family(loom_family f);
extern const loom_family_i loom__family_gpt2;
extern const loom_family_i loom__family_llama;

// JSON field helpers for config converters: errors name the file and the field.
loom_status loom__json_int(const json_t *root, const char *path, const char *key, int required,
                           int fallback, int *out);
loom_status loom__json_float(const json_t *root, const char *path, const char *key,
                             int required, float fallback, float *out);
loom_status loom__json_bool(const json_t *root, const char *path, const char *key, int fallback,
                            int *out);
// String field or NULL when absent / null.
const char *loom__json_str(const json_t *root, const char *key);

// The forward graph of one micro-batch of `rows` sequences with the training loss
// (cross-entropy sum of the logits times the input "loss_norm"; "targets" int32), no backward:
// what the parallel trainer and the cost model split.
loom_status loom__model_build_loss_graph(const loom_model_config *cfg, loom_graph_t g, int rows,
                                         int seq, loom_value *loss);

// The flat parameter storage of a model and its size in floats (for binding programs).
float *loom__model_storage(loom_model_t m, size_t *n_floats);

#endif // LOOM_MODELS_FAMILY_H
