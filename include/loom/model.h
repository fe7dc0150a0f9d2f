// Model families (GPT-2, LLaMA/Mistral/Qwen2), their Hugging Face configs and weights, and the
// graphs they build.
//
//     loom_model_t m;
//     if (loom_model_load("gpt2-dir", &m) < 0) fprintf(stderr, "%s\n", loom_last_error());
//     ...
//     loom_model_save(m, "out-dir");   // config.json + model.safetensors
//     loom_model_free(m);

#ifndef LOOM_MODEL_H
#define LOOM_MODEL_H

#include "loom/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum loom_family {
    LOOM_FAMILY_GPT2 = 0,
    LOOM_FAMILY_LLAMA,     // also Mistral and Qwen2 configs (same math)
    LOOM_FAMILY_COUNT
} loom_family;

typedef struct loom_model_config {
    loom_family family;
    char model_type[32];      // Hugging Face model_type: "gpt2", "llama", "mistral", "qwen2"
    int vocab_size;
    int max_seq;              // n_positions / max_position_embeddings
    int n_embd;               // n_embd / hidden_size
    int n_layer;
    int n_head;
    int n_kv_head;            // num_key_value_heads (= n_head for GPT-2)
    int head_dim;             // n_embd / n_head unless the config says otherwise
    int n_inner;              // MLP hidden size (GPT-2 default 4 * n_embd)
    float norm_eps;           // layer_norm_epsilon / rms_norm_eps
    float rope_theta;
    int tie_word_embeddings;
    int attention_bias;       // q/k/v (and o, for LLaMA's attention_bias) biases
    int o_bias;               // o_proj bias (LLaMA attention_bias: true); Qwen2 has none
    float init_std;           // random init standard deviation (initializer_range)
    int sliding_window;       // Mistral sliding window (0: none); longer sequences are refused
} loom_model_config;

// Small defaults of a family (GPT-2: 6 layers, 384 wide, vocab 256 for byte text).
loom_model_config loom_model_config_default(loom_family family);
// Read a Hugging Face config.json. Errors name the file and the field.
loom_status loom_model_config_load(const char *path, loom_model_config *cfg);
// Parse config.json text (`source` names it in messages).
loom_status loom_model_config_parse(const char *text, const char *source, loom_model_config *cfg);
// The config as Hugging Face config.json text; free() it. NULL when out of memory.
char *loom_model_config_to_json(const loom_model_config *cfg);
// Check a config's fields are consistent (heads divide widths, ...).
loom_status loom_model_config_validate(const loom_model_config *cfg);
// Family of a Hugging Face model_type, or -1.
int loom_family_from_model_type(const char *model_type);

typedef struct loom_model *loom_model_t;

// A model with random weights (Hugging Face initialization conventions), seeded.
loom_status loom_model_create(const loom_model_config *cfg, uint64_t seed, loom_model_t *out);
// Load a directory with config.json and model.safetensors (or its sharded form).
loom_status loom_model_load(const char *dir, loom_model_t *out);
// Write config.json and model.safetensors (Hugging Face loadable) into `dir` (created).
loom_status loom_model_save(loom_model_t m, const char *dir);
void loom_model_free(loom_model_t m);

const loom_model_config *loom_model_get_config(loom_model_t m);
int64_t loom_model_n_params(loom_model_t m);       // distinct parameter elements
int loom_model_n_tensors(loom_model_t m);
// Name and shape of parameter i (Hugging Face name, in model order).
const char *loom_model_tensor_name(loom_model_t m, int i, int *ndim, int64_t shape[LOOM_MAX_DIMS]);
// The storage of a parameter by Hugging Face name (borrowed, writable).
loom_status loom_model_tensor(loom_model_t m, const char *name, float **data, int64_t *numel);

typedef enum loom_graph_mode {
    LOOM_GRAPH_TRAIN = 0,  // tokens, targets -> loss (and logits), with backward
    LOOM_GRAPH_FORWARD,    // tokens -> logits
    LOOM_GRAPH_DECODE,     // tokens at positions, key/value cache -> logits
} loom_graph_mode;

// Build the model's graph for batch B and sequence T (DECODE: T new tokens per call with a cache
// of `cache_len` positions).
loom_status loom_model_build_graph(loom_model_t m, loom_graph_mode mode, int B, int T,
                                   int cache_len, loom_graph_t *out);

#ifdef __cplusplus
}
#endif
#endif // LOOM_MODEL_H
