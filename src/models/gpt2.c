// GPT-2 (model_type "gpt2"): learned positions, pre-LayerNorm blocks, Conv1D [in, out] weights,
// fused q/k/v (c_attn), tanh GELU, lm_head tied to wte.

#include "models/family.h"

#include "core/core.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const gpt2_types[] = {"gpt2", NULL};

static loom_model_config gpt2_defaults(void) {
    loom_model_config c;
    memset(&c, 0, sizeof c);
    c.family = LOOM_FAMILY_GPT2;
    strcpy(c.model_type, "gpt2");
    c.vocab_size = 256;
    c.max_seq = 256;
    c.n_embd = 384;
    c.n_layer = 6;
    c.n_head = 6;
    c.n_kv_head = 6;
    c.head_dim = 64;
    c.n_inner = 4 * 384;
    c.norm_eps = 1e-5f;
    c.tie_word_embeddings = 1;
    c.attention_bias = 1;
    c.o_bias = 1;
    c.init_std = 0.02f;
    return c;
}

static loom_status gpt2_from_json(const json_t *root, const char *path, loom_model_config *c) {
    *c = gpt2_defaults();
    LOOM_CHECK(loom__json_int(root, path, "vocab_size", 1, 0, &c->vocab_size));
    int n_ctx = 1024;
    LOOM_CHECK(loom__json_int(root, path, "n_ctx", 0, 1024, &n_ctx));
    LOOM_CHECK(loom__json_int(root, path, "n_positions", 0, n_ctx, &c->max_seq));
    LOOM_CHECK(loom__json_int(root, path, "n_embd", 1, 0, &c->n_embd));
    LOOM_CHECK(loom__json_int(root, path, "n_layer", 1, 0, &c->n_layer));
    LOOM_CHECK(loom__json_int(root, path, "n_head", 1, 0, &c->n_head));
    c->n_kv_head = c->n_head;
    c->head_dim = c->n_head > 0 ? c->n_embd / c->n_head : 0;
    LOOM_CHECK(loom__json_int(root, path, "n_inner", 0, 4 * c->n_embd, &c->n_inner));
    LOOM_CHECK(loom__json_float(root, path, "layer_norm_epsilon", 0, 1e-5f, &c->norm_eps));
    LOOM_CHECK(loom__json_float(root, path, "initializer_range", 0, 0.02f, &c->init_std));
    LOOM_CHECK(loom__json_bool(root, path, "tie_word_embeddings", 1, &c->tie_word_embeddings));
    const char *act = loom__json_str(root, "activation_function");
    if (act && strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh"))
        return loom__error(LOOM_ERR_UNSUPPORTED,
                           "%s: activation_function \"%s\" is not supported (loom implements the "
                           "tanh GELU, \"gelu_new\")", path, act);
    if (!c->tie_word_embeddings)
        return loom__error(LOOM_ERR_UNSUPPORTED,
                           "%s: tie_word_embeddings false is not supported for gpt2 (GPT-2's "
                           "lm_head is the token embedding)", path);
    return LOOM_OK;
}

static json_t *gpt2_to_json(const loom_model_config *c) {
    return json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:s, s:f, s:b}",
                     "architectures", "GPT2LMHeadModel", "model_type", "gpt2",
                     "vocab_size", c->vocab_size, "n_positions", c->max_seq, "n_ctx", c->max_seq,
                     "n_embd", c->n_embd, "n_layer", c->n_layer, "n_head", c->n_head,
                     "n_inner", c->n_inner, "layer_norm_epsilon", (double)c->norm_eps,
                     "activation_function", "gelu_new", "initializer_range",
                     (double)c->init_std, "tie_word_embeddings", 1);
}

static loom_status gpt2_validate(const loom_model_config *c) {
    if (c->n_head <= 0 || c->n_embd % c->n_head != 0)
        return loom__error(LOOM_ERR_INVALID, "gpt2 config: n_embd (%d) must be a multiple of "
                           "n_head (%d)", c->n_embd, c->n_head);
    return LOOM_OK;
}

// One transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)).
static loom_value gpt2_block(const loom_model_config *c, loom_graph_t g, int l, loom_value x,
                             loom_value positions, loom_graph_mode mode, int B, int cache_len) {
    const int64_t C = c->n_embd, F = c->n_inner;
    char name[128];
#define PARAM(suffix, ...)                                                                  \
    (snprintf(name, sizeof name, "h.%d.%s", l, suffix),                                     \
     loom_graph_param(g, name, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),   \
                      (int64_t[]){__VA_ARGS__}))
    loom_graph_push_scopef(g, "h.%d", l);

    loom_graph_push_scope(g, "ln_1");
    loom_value h = loom_layer_norm(g, x, PARAM("ln_1.weight", C), PARAM("ln_1.bias", C),
                                   c->norm_eps);
    loom_graph_pop_scope(g);

    loom_graph_push_scope(g, "attn");
    loom_graph_push_scope(g, "c_attn");
    loom_value qkv = loom_conv1d(g, h, PARAM("attn.c_attn.weight", C, 3 * C),
                                 PARAM("attn.c_attn.bias", 3 * C));  // (B, T, 3C)
    loom_graph_pop_scope(g);
    loom_value q = loom_chunk(g, qkv, 3, 0), k = loom_chunk(g, qkv, 3, 1);
    loom_value v = loom_chunk(g, qkv, 3, 2);
    loom_value a;
    if (mode == LOOM_GRAPH_DECODE) {
        int64_t cache_shape[3] = {B, cache_len, C};
        snprintf(name, sizeof name, "h.%d.attn.k_cache", l);
        loom_value kc = loom_graph_state(g, name, 3, cache_shape);
        snprintf(name, sizeof name, "h.%d.attn.v_cache", l);
        loom_value vc = loom_graph_state(g, name, 3, cache_shape);
        a = loom_attention_cached(g, q, k, v, kc, vc, positions, c->n_head, c->n_head);
    } else {
        a = loom_attention(g, q, k, v, c->n_head, c->n_head);
    }
    loom_graph_push_scope(g, "c_proj");
    a = loom_conv1d(g, a, PARAM("attn.c_proj.weight", C, C), PARAM("attn.c_proj.bias", C));
    loom_graph_pop_scope(g);
    loom_graph_pop_scope(g);
    x = loom_add(g, x, a);

    loom_graph_push_scope(g, "ln_2");
    h = loom_layer_norm(g, x, PARAM("ln_2.weight", C), PARAM("ln_2.bias", C), c->norm_eps);
    loom_graph_pop_scope(g);
    loom_graph_push_scope(g, "mlp");
    loom_graph_push_scope(g, "c_fc");
    h = loom_conv1d(g, h, PARAM("mlp.c_fc.weight", C, F), PARAM("mlp.c_fc.bias", F));
    loom_graph_pop_scope(g);
    h = loom_gelu(g, h);
    loom_graph_push_scope(g, "c_proj");
    h = loom_conv1d(g, h, PARAM("mlp.c_proj.weight", F, C), PARAM("mlp.c_proj.bias", C));
    loom_graph_pop_scope(g);
    loom_graph_pop_scope(g);
    x = loom_add(g, x, h);
    loom_graph_pop_scope(g);
#undef PARAM
    return x;
}

static loom_status gpt2_build(const loom_model_config *c, loom_graph_t g, loom_graph_mode mode,
                              int B, int T, int cache_len) {
    const int64_t C = c->n_embd, V = c->vocab_size;
    int64_t bt[2] = {B, T};
    int max_pos = mode == LOOM_GRAPH_DECODE ? cache_len : T;
    if (max_pos > c->max_seq)
        return loom__error(LOOM_ERR_INVALID, "gpt2: sequence length %d exceeds n_positions (%d) "
                           "of this model", max_pos, c->max_seq);
    loom_value tokens = loom_graph_input(g, "tokens", LOOM_DTYPE_I32, 2, bt);
    loom_value positions = loom_graph_input(g, "positions", LOOM_DTYPE_I32, 2, bt);
    loom_value wte = loom_graph_param(g, "wte.weight", 2, (int64_t[]){V, C});
    loom_value wpe = loom_graph_param(g, "wpe.weight", 2, (int64_t[]){c->max_seq, C});
    loom_graph_push_scope(g, "wte");
    loom_value x = loom_embedding(g, tokens, wte);  // (B, T, C)
    loom_graph_pop_scope(g);
    loom_graph_push_scope(g, "wpe");
    x = loom_add(g, x, loom_embedding(g, positions, wpe));
    loom_graph_pop_scope(g);
    for (int l = 0; l < c->n_layer; l++) x = gpt2_block(c, g, l, x, positions, mode, B, cache_len);
    loom_graph_push_scope(g, "ln_f");
    x = loom_layer_norm(g, x, loom_graph_param(g, "ln_f.weight", 1, &C),
                        loom_graph_param(g, "ln_f.bias", 1, &C), c->norm_eps);
    loom_graph_pop_scope(g);
    loom_graph_push_scope(g, "lm_head");
    loom_value logits = loom_linear(g, x, wte, LOOM_NONE);  // (B, T, V), tied to wte
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

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

// Hugging Face init: N(0, initializer_range) for weights, residual projections scaled by
// 1/sqrt(2 n_layer), zero biases, LayerNorm weight 1.
static void gpt2_init(const loom_model_config *c, const char *name, float *data, int64_t n,
                      double (*normal)(void *), void *rng) {
    int is_ln = strstr(name, "ln_") != NULL;
    if (ends_with(name, ".bias") || (is_ln && ends_with(name, ".weight"))) {
        float v = (is_ln && ends_with(name, ".weight")) ? 1.0f : 0.0f;
        for (int64_t i = 0; i < n; i++) data[i] = v;
        return;
    }
    double std = c->init_std;
    if (ends_with(name, "c_proj.weight")) std /= sqrt(2.0 * c->n_layer);
    for (int64_t i = 0; i < n; i++) data[i] = (float)(normal(rng) * std);
}

static const char *gpt2_file_to_param(const char *file_name, char *buf, size_t cap) {
    const char *name = file_name;
    if (strncmp(name, "transformer.", 12) == 0) name += 12;
    // Causal-mask buffers of older checkpoints, and the tied head: not parameters.
    if (ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") ||
        strcmp(name, "lm_head.weight") == 0)
        return NULL;
    snprintf(buf, cap, "%s", name);
    return buf;
}

static const char *gpt2_param_to_file(const char *name, char *buf, size_t cap) {
    snprintf(buf, cap, "transformer.%s", name);
    return buf;
}

static const loom_tp_rule gpt2_tp_rules[] = {
    {"wte", "loom.embedding", "vocab", 1},
    {"attn.c_attn", "loom.conv1d", "n", 3},  // q|k|v fused in one weight: split inside each
    {"attn", "loom.attention", "heads", 1},
    {"attn.c_proj", "loom.conv1d", "k", 1},
    {"mlp.c_fc", "loom.conv1d", "n", 1},
    {"mlp.c_proj", "loom.conv1d", "k", 1},
    {"lm_head", "loom.linear", "vocab", 1},
    {"", "loom.cross_entropy", "vocab", 1},
    {NULL, NULL, NULL, 0},
};

const loom_family_i loom__family_gpt2 = {
    .name = "gpt2",
    .model_types = gpt2_types,
    .defaults = gpt2_defaults,
    .from_json = gpt2_from_json,
    .to_json = gpt2_to_json,
    .validate = gpt2_validate,
    .build = gpt2_build,
    .init = gpt2_init,
    .file_to_param = gpt2_file_to_param,
    .param_to_file = gpt2_param_to_file,
    .tp_rules = gpt2_tp_rules,
    .attention_module = "attn",
};
