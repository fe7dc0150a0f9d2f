// LLaMA family (model_type "llama", and "mistral" / "qwen2" where the math is the same):
// RMSNorm, rotary positions (rotate-half), grouped-query attention, SwiGLU MLP, optional q/k/v
// biases (Qwen2, LLaMA attention_bias), tied or separate lm_head.

#include "models/family.h"

#include "core/core.h"

#include <stdio.h>
#include <string.h>

static const char *const llama_types[] = {"llama", "mistral", "qwen2", NULL};

static loom_model_config llama_defaults(void) {
    loom_model_config c;
    memset(&c, 0, sizeof c);
    c.family = LOOM_FAMILY_LLAMA;
    strcpy(c.model_type, "llama");
    c.vocab_size = 256;
    c.max_seq = 256;
    c.n_embd = 384;
    c.n_layer = 6;
    c.n_head = 6;
    c.n_kv_head = 2;
    c.head_dim = 64;
    c.n_inner = 1024;
    c.norm_eps = 1e-6f;
    c.rope_theta = 10000.0f;
    c.init_std = 0.02f;
    return c;
}

static loom_status llama_from_json(const json_t *root, const char *path, loom_model_config *c) {
    *c = llama_defaults();
    const char *type = loom__json_str(root, "model_type");
    snprintf(c->model_type, sizeof c->model_type, "%s", type ? type : "llama");
    int qwen2 = strcmp(c->model_type, "qwen2") == 0;
    LOOM_CHECK(loom__json_int(root, path, "vocab_size", 1, 0, &c->vocab_size));
    LOOM_CHECK(loom__json_int(root, path, "hidden_size", 1, 0, &c->n_embd));
    LOOM_CHECK(loom__json_int(root, path, "intermediate_size", 1, 0, &c->n_inner));
    LOOM_CHECK(loom__json_int(root, path, "num_hidden_layers", 1, 0, &c->n_layer));
    LOOM_CHECK(loom__json_int(root, path, "num_attention_heads", 1, 0, &c->n_head));
    LOOM_CHECK(loom__json_int(root, path, "num_key_value_heads", 0, c->n_head, &c->n_kv_head));
    LOOM_CHECK(loom__json_int(root, path, "head_dim", 0,
                              c->n_head > 0 ? c->n_embd / c->n_head : 0, &c->head_dim));
    LOOM_CHECK(loom__json_int(root, path, "max_position_embeddings", 0, 2048, &c->max_seq));
    LOOM_CHECK(loom__json_float(root, path, "rms_norm_eps", 0, 1e-6f, &c->norm_eps));
    LOOM_CHECK(loom__json_float(root, path, "rope_theta", 0, 10000.0f, &c->rope_theta));
    LOOM_CHECK(loom__json_float(root, path, "initializer_range", 0, 0.02f, &c->init_std));
    LOOM_CHECK(loom__json_bool(root, path, "tie_word_embeddings", 0, &c->tie_word_embeddings));
    int attention_bias = 0, mlp_bias = 0;
    LOOM_CHECK(loom__json_bool(root, path, "attention_bias", 0, &attention_bias));
    LOOM_CHECK(loom__json_bool(root, path, "mlp_bias", 0, &mlp_bias));
    // Qwen2 always has q/k/v biases and no o_proj bias; LLaMA's attention_bias covers all four.
    c->attention_bias = qwen2 || attention_bias;
    c->o_bias = !qwen2 && attention_bias;
    if (mlp_bias)
        return loom__error(LOOM_ERR_UNSUPPORTED, "%s: mlp_bias true is not supported", path);
    const char *act = loom__json_str(root, "hidden_act");
    if (act && strcmp(act, "silu"))
        return loom__error(LOOM_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" is not supported (loom "
                           "implements SwiGLU with \"silu\")", path, act);
    json_t *scaling = json_object_get(root, "rope_scaling");
    if (scaling && !json_is_null(scaling))
        return loom__error(LOOM_ERR_UNSUPPORTED, "%s: rope_scaling is not supported; remove it "
                           "or set it to null for plain rotary embeddings", path);
    json_t *window = json_object_get(root, "sliding_window");
    int use_window = 1;
    LOOM_CHECK(loom__json_bool(root, path, "use_sliding_window", !qwen2, &use_window));
    if (window && json_is_integer(window) && use_window)
        c->sliding_window = (int)json_integer_value(window);
    return LOOM_OK;
}

static json_t *llama_to_json(const loom_model_config *c) {
    const char *arch = !strcmp(c->model_type, "qwen2")     ? "Qwen2ForCausalLM"
                       : !strcmp(c->model_type, "mistral") ? "MistralForCausalLM"
                                                           : "LlamaForCausalLM";
    json_t *j = json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:f, "
                          "s:b, s:s}",
                          "architectures", arch, "model_type", c->model_type,
                          "vocab_size", c->vocab_size, "hidden_size", c->n_embd,
                          "intermediate_size", c->n_inner, "num_hidden_layers", c->n_layer,
                          "num_attention_heads", c->n_head, "num_key_value_heads", c->n_kv_head,
                          "head_dim", c->head_dim, "max_position_embeddings", c->max_seq,
                          "rms_norm_eps", (double)c->norm_eps, "rope_theta",
                          (double)c->rope_theta, "initializer_range", (double)c->init_std,
                          "tie_word_embeddings", c->tie_word_embeddings, "hidden_act", "silu");
    if (j && strcmp(c->model_type, "qwen2") != 0)
        json_object_set_new(j, "attention_bias", json_boolean(c->attention_bias));
    if (j && c->sliding_window) json_object_set_new(j, "sliding_window", json_integer(c->sliding_window));
    return j;
}

static loom_status llama_validate(const loom_model_config *c) {
    if (c->n_head <= 0 || c->n_kv_head <= 0 || c->n_head % c->n_kv_head != 0)
        return loom__error(LOOM_ERR_INVALID, "%s config: num_attention_heads (%d) must be a "
                           "multiple of num_key_value_heads (%d)", c->model_type, c->n_head,
                           c->n_kv_head);
    if (c->head_dim <= 0 || c->head_dim % 2)
        return loom__error(LOOM_ERR_INVALID, "%s config: head_dim (%d) must be even for rotary "
                           "embeddings", c->model_type, c->head_dim);
    return LOOM_OK;
}

static loom_value llama_block(const loom_model_config *c, loom_graph_t g, int l, loom_value x,
                              loom_value positions, loom_graph_mode mode, int B, int cache_len) {
    const int64_t C = c->n_embd, F = c->n_inner;
    const int64_t Cq = (int64_t)c->n_head * c->head_dim, Ckv = (int64_t)c->n_kv_head * c->head_dim;
    char name[160];
#define PARAM(suffix, ...)                                                                  \
    (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix),                          \
     loom_graph_param(g, name, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),   \
                      (int64_t[]){__VA_ARGS__}))
#define SCOPED(scope, expr) \
    (loom_graph_push_scope(g, scope), tmp = (expr), loom_graph_pop_scope(g), tmp)
    loom_value tmp;
    loom_graph_push_scopef(g, "model.layers.%d", l);

    loom_value h = SCOPED("input_layernorm",
                          loom_rms_norm(g, x, PARAM("input_layernorm.weight", C), c->norm_eps));
    loom_graph_push_scope(g, "self_attn");
    int qb = c->attention_bias;
    loom_value q = SCOPED("q_proj", loom_linear(g, h, PARAM("self_attn.q_proj.weight", Cq, C),
                                                qb ? PARAM("self_attn.q_proj.bias", Cq) : LOOM_NONE));
    loom_value k = SCOPED("k_proj", loom_linear(g, h, PARAM("self_attn.k_proj.weight", Ckv, C),
                                                qb ? PARAM("self_attn.k_proj.bias", Ckv) : LOOM_NONE));
    loom_value v = SCOPED("v_proj", loom_linear(g, h, PARAM("self_attn.v_proj.weight", Ckv, C),
                                                qb ? PARAM("self_attn.v_proj.bias", Ckv) : LOOM_NONE));
    q = loom_rope(g, q, positions, c->n_head, c->rope_theta);    // (B, T, Hq*D)
    k = loom_rope(g, k, positions, c->n_kv_head, c->rope_theta); // (B, T, Hkv*D)
    loom_value a;
    if (mode == LOOM_GRAPH_DECODE) {
        int64_t cache_shape[3] = {B, cache_len, Ckv};
        snprintf(name, sizeof name, "model.layers.%d.self_attn.k_cache", l);
        loom_value kc = loom_graph_state(g, name, 3, cache_shape);
        snprintf(name, sizeof name, "model.layers.%d.self_attn.v_cache", l);
        loom_value vc = loom_graph_state(g, name, 3, cache_shape);
        a = loom_attention_cached(g, q, k, v, kc, vc, positions, c->n_head, c->n_kv_head);
    } else {
        a = loom_attention(g, q, k, v, c->n_head, c->n_kv_head);
    }
    a = SCOPED("o_proj", loom_linear(g, a, PARAM("self_attn.o_proj.weight", C, Cq),
                                     c->o_bias ? PARAM("self_attn.o_proj.bias", C) : LOOM_NONE));
    loom_graph_pop_scope(g);
    x = loom_add(g, x, a);

    h = SCOPED("post_attention_layernorm",
               loom_rms_norm(g, x, PARAM("post_attention_layernorm.weight", C), c->norm_eps));
    loom_graph_push_scope(g, "mlp");
    loom_value gate = SCOPED("gate_proj",
                             loom_linear(g, h, PARAM("mlp.gate_proj.weight", F, C), LOOM_NONE));
    loom_value up = SCOPED("up_proj",
                           loom_linear(g, h, PARAM("mlp.up_proj.weight", F, C), LOOM_NONE));
    h = loom_mul(g, loom_silu(g, gate), up);  // (B, T, F)
    h = SCOPED("down_proj", loom_linear(g, h, PARAM("mlp.down_proj.weight", C, F), LOOM_NONE));
    loom_graph_pop_scope(g);
    x = loom_add(g, x, h);
    loom_graph_pop_scope(g);
#undef PARAM
#undef SCOPED
    return x;
}

static loom_status llama_build(const loom_model_config *c, loom_graph_t g, loom_graph_mode mode,
                               int B, int T, int cache_len) {
    const int64_t C = c->n_embd, V = c->vocab_size;
    int64_t bt[2] = {B, T};
    int max_pos = mode == LOOM_GRAPH_DECODE ? cache_len : T;
    if (c->sliding_window > 0 && max_pos > c->sliding_window)
        return loom__error(LOOM_ERR_UNSUPPORTED, "%s: sequence length %d exceeds sliding_window "
                           "(%d); sliding-window attention is not implemented", c->model_type,
                           max_pos, c->sliding_window);
    loom_value tokens = loom_graph_input(g, "tokens", LOOM_DTYPE_I32, 2, bt);
    loom_value positions = loom_graph_input(g, "positions", LOOM_DTYPE_I32, 2, bt);
    loom_value embed = loom_graph_param(g, "model.embed_tokens.weight", 2, (int64_t[]){V, C});
    loom_graph_push_scope(g, "model.embed_tokens");
    loom_value x = loom_embedding(g, tokens, embed);  // (B, T, C)
    loom_graph_pop_scope(g);
    for (int l = 0; l < c->n_layer; l++)
        x = llama_block(c, g, l, x, positions, mode, B, cache_len);
    loom_graph_push_scope(g, "model.norm");
    x = loom_rms_norm(g, x, loom_graph_param(g, "model.norm.weight", 1, &C), c->norm_eps);
    loom_graph_pop_scope(g);
    loom_value head = c->tie_word_embeddings
                          ? embed
                          : loom_graph_param(g, "lm_head.weight", 2, (int64_t[]){V, C});
    loom_graph_push_scope(g, "lm_head");
    loom_value logits = loom_linear(g, x, head, LOOM_NONE);  // (B, T, V)
    loom_graph_pop_scope(g);
    loom_graph_mark_output(g, logits);
    if (mode == LOOM_GRAPH_TRAIN) {
        loom_value targets = loom_graph_input(g, "targets", LOOM_DTYPE_I32, 2, bt);
        loom_value loss = loom_cross_entropy(g, logits, targets, -100);
        loom_graph_mark_output(g, loss);
        LOOM_CHECK(loom_graph_status(g));
        return loom_graph_backward(g, loss);
    }
    return loom_graph_status(g);
}

// Hugging Face init: N(0, initializer_range) for matrices and embeddings, norms 1, biases 0.
static void llama_init(const loom_model_config *c, const char *name, float *data, int64_t n,
                       double (*normal)(void *), void *rng) {
    size_t len = strlen(name);
    int is_norm = strstr(name, "norm.weight") != NULL;
    int is_bias = len > 5 && strcmp(name + len - 5, ".bias") == 0;
    for (int64_t i = 0; i < n; i++)
        data[i] = is_norm ? 1.0f : is_bias ? 0.0f : (float)(normal(rng) * c->init_std);
}

static const char *llama_file_to_param(const char *file_name, char *buf, size_t cap) {
    // Rotary inverse frequencies are stored by some checkpoints; they are derived, not learned.
    if (strstr(file_name, "rotary_emb.inv_freq")) return NULL;
    snprintf(buf, cap, "%s", file_name);
    return buf;
}

static const char *llama_param_to_file(const char *name, char *buf, size_t cap) {
    snprintf(buf, cap, "%s", name);
    return buf;
}

static const loom_tp_rule llama_tp_rules[] = {
    {"model.embed_tokens", "loom.embedding", "vocab", 1},
    {"self_attn.q_proj", "loom.linear", "n", 1},
    {"self_attn.q_proj", "loom.linear_bias", "n", 1},
    {"self_attn.k_proj", "loom.linear", "kv_n", 1},
    {"self_attn.k_proj", "loom.linear_bias", "kv_n", 1},
    {"self_attn.v_proj", "loom.linear", "kv_n", 1},
    {"self_attn.v_proj", "loom.linear_bias", "kv_n", 1},
    {"self_attn", "loom.attention", "heads", 1},
    {"self_attn.o_proj", "loom.linear", "k", 1},
    {"self_attn.o_proj", "loom.linear_bias", "k", 1},
    {"mlp.gate_proj", "loom.linear", "n", 1},
    {"mlp.up_proj", "loom.linear", "n", 1},
    {"mlp.down_proj", "loom.linear", "k", 1},
    {"lm_head", "loom.linear", "vocab", 1},
    {"", "loom.cross_entropy", "vocab", 1},
    {NULL, NULL, NULL, 0},
};

const loom_family_i loom__family_llama = {
    .name = "llama",
    .model_types = llama_types,
    .defaults = llama_defaults,
    .from_json = llama_from_json,
    .to_json = llama_to_json,
    .validate = llama_validate,
    .build = llama_build,
    .init = llama_init,
    .file_to_param = llama_file_to_param,
    .param_to_file = llama_param_to_file,
    .tp_rules = llama_tp_rules,
    .attention_module = "self_attn",
};
