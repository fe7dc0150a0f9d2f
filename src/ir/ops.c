// The op table (one row per op: signature, annotation, types, backward needs, FLOPs) and the
// typed builder calls that record ops into a graph.
//
// Attributes per op (loom_node.ai / .af):
//   layernorm, rmsnorm   af[0] eps
//   rope                 ai[0] n_head            af[0] theta
//   attention(_cached)   ai[0] n_head            ai[1] n_kv_head
//   cross_entropy        ai[0] ignore_index
//   slice                ai[0] start             ai[1] length
//   chunk                ai[0] chunks            ai[1] index
//   embedding            ai[0] first row held    ai[1] full vocabulary (0: not split)
//   cross_entropy        ai[1] first column held ai[2] full vocabulary (0: not split)
//                        ai[3] 1: sum over kept rows instead of their mean
//   comm ops             ai[0] dim               ai[1] chunks   ai[2] group size
//                        ai[3] group (0: the unit's devices)    af[0] scale (all_reduce)

#include "ir/ir.h"

#include "core/core.h"

#include <stdio.h>
#include <string.h>

// ---- identifier sizes from attributes -----------------------------------------------------------

static void attention_sizes(const loom_node *n, char *buf, size_t cap) {
    int64_t h = n->ai[0], g = n->ai[1];
    snprintf(buf, cap, "g=%lld,r=%lld", (long long)g, (long long)(h / g));
}

static void rope_sizes(const loom_node *n, char *buf, size_t cap) {
    snprintf(buf, cap, "h=%lld", (long long)n->ai[0]);
}

static void chunk_sizes(const loom_node *n, char *buf, size_t cap) {
    snprintf(buf, cap, "f=%lld", (long long)n->ai[0]);
}

// Comm ops keep the shape except along ai[0], which all-gather multiplies by the group size
// and shard-slice divides by it.
static void comm_shape(const loom_node *n, const int64_t *in_shape, int ndim, int64_t *out) {
    for (int i = 0; i < ndim; i++) out[i] = in_shape[i];
    int64_t P = n->ai[2];
    if (n->op == LOOM_OP_ALL_GATHER) out[n->ai[0]] *= P;
    if (n->op == LOOM_OP_SHARD_SLICE) out[n->ai[0]] /= P;
}

static void slice_sizes(const loom_node *n, char *buf, size_t cap) {
    snprintf(buf, cap, "s=%lld", (long long)n->ai[1]);
}

// ---- FLOPs --------------------------------------------------------------------------------------

// Matrix-product ops: 2*M*K*N forward; backward computes both dinp and dweight (twice that).
static double product_flops(const loom_graph *g, const loom_node *n, bool backward) {
    const loom_value_info *x = &g->values[n->in[0]];
    const loom_value_info *y = &g->values[n->out[0]];
    double k = (double)x->shape[x->ndim - 1];
    double fwd = 2.0 * (double)loom__value_numel(g, n->out[0]) * k;
    (void)y;
    return backward ? 2 * fwd : fwd;
}

// Causal attention: Q K^T and P V over the lower triangle, 2 * B * Hq * T^2 * D forward;
// backward recomputes Q K^T and does four more products (2.5x).
static double attention_flops(const loom_graph *g, const loom_node *n, bool backward) {
    const loom_value_info *q = &g->values[n->in[0]];
    double B = (double)q->shape[0], T = (double)q->shape[1], C = (double)q->shape[2];
    double fwd = 2.0 * B * T * T * C;
    return backward ? 2.5 * fwd : fwd;
}

static double attention_cached_flops(const loom_graph *g, const loom_node *n, bool backward) {
    const loom_value_info *q = &g->values[n->in[0]];
    const loom_value_info *kc = &g->values[n->in[3]];
    return 4.0 * (double)q->shape[0] * (double)q->shape[1] * (double)kc->shape[1] *
           (double)q->shape[2];
}

static double cross_entropy_flops(const loom_graph *g, const loom_node *n, bool backward) {
    double elems = (double)loom__value_numel(g, n->in[0]);
    return backward ? 3 * elems : 4 * elems;
}

// ---- the table ----------------------------------------------------------------------------------

#define B(i) (1u << (i))

static const loom_op_def op_table[LOOM_OP_COUNT] = {
    [LOOM_OP_EMBEDDING] = {"loom.embedding", "*, v+ e -> * e", "if", 0,
                           B(0), 0, B(1), NULL, NULL, NULL},
    [LOOM_OP_LINEAR] = {"loom.linear", "* k+, n k+ -> * n", "ff", LOOM_OPF_MATMUL,
                        B(0) | B(1), 0, B(0) | B(1), NULL, NULL, product_flops},
    [LOOM_OP_LINEAR_BIAS] = {"loom.linear_bias", "* k+, n k+, n -> * n", "fff",
                             LOOM_OPF_BIAS_AFTER_REDUCE | LOOM_OPF_MATMUL,
                             B(0) | B(1), 0, B(0) | B(1) | B(2), NULL, NULL, product_flops},
    [LOOM_OP_CONV1D] = {"loom.conv1d", "* k+, k+ n, n -> * n", "fff",
                        LOOM_OPF_BIAS_AFTER_REDUCE | LOOM_OPF_MATMUL,
                        B(0) | B(1), 0, B(0) | B(1) | B(2), NULL, NULL, product_flops},
    [LOOM_OP_MATMUL] = {"loom.matmul", "* m k+, * k+ n -> * m n", "ff", LOOM_OPF_MATMUL,
                        B(0) | B(1), 0, B(0) | B(1), NULL, NULL, product_flops},
    [LOOM_OP_ADD] = {"loom.add", "*, * -> *", "ff", 0, 0, 0, B(0) | B(1), NULL, NULL, NULL},
    [LOOM_OP_MUL] = {"loom.mul", "*, * -> *", "ff", 0,
                     B(0) | B(1), 0, B(0) | B(1), NULL, NULL, NULL},
    [LOOM_OP_LAYERNORM] = {"loom.layer_norm", "* c^, c^, c^ -> * c^, *, *", "fff", 0,
                           B(0) | B(1), B(1) | B(2), B(0) | B(1) | B(2), NULL, NULL, NULL},
    [LOOM_OP_RMSNORM] = {"loom.rms_norm", "* c^, c^ -> * c^, *", "ff", 0,
                         B(0) | B(1), B(1), B(0) | B(1), NULL, NULL, NULL},
    [LOOM_OP_GELU] = {"loom.gelu", "* -> *", "f", 0, B(0), 0, B(0), NULL, NULL, NULL},
    [LOOM_OP_SILU] = {"loom.silu", "* -> *", "f", 0, B(0), 0, B(0), NULL, NULL, NULL},
    [LOOM_OP_ROPE] = {"loom.rope", "b s (h d^), b s -> b s (h d^)", "fi", 0,
                      B(1), 0, B(0), NULL, rope_sizes, NULL},
    [LOOM_OP_ATTENTION] = {"loom.attention",
                           "b s^ (g r d^), b s^ (g d^), b s^ (g d^) -> b s^ (g r d^), b (g r) s^",
                           "fff", LOOM_OPF_MATMUL, B(0) | B(1) | B(2), B(0) | B(1),
                           B(0) | B(1) | B(2), NULL,
                           attention_sizes, attention_flops},
    [LOOM_OP_ATTENTION_CACHED] = {"loom.attention_cached",
                                  "b s^ (g r d^), b s^ (g d^), b s^ (g d^), b t^ (g d^), "
                                  "b t^ (g d^), b s^ -> b s^ (g r d^)",
                                  "fffffi",
                                  LOOM_OPF_NO_BACKWARD | LOOM_OPF_MUTATES_STATE | LOOM_OPF_MATMUL,
                                  0, 0, 0, NULL, attention_sizes, attention_cached_flops},
    [LOOM_OP_CROSS_ENTROPY] = {"loom.cross_entropy", "* v+, * -> 1, *, *", "fi",
                               LOOM_OPF_CUSTOM_SPLIT, B(0) | B(1), B(1), B(0),
                               "a split vocabulary needs an all-reduce of the row max and of the "
                               "sum of exponentials, and of the target logit",
                               NULL, cross_entropy_flops},
    [LOOM_OP_SLICE] = {"loom.slice", "* c^ -> * s^", "f", 0, 0, 0, B(0), NULL, slice_sizes,
                       NULL},
    [LOOM_OP_SUM] = {"loom.sum", "* -> 1", "f", 0, 0, 0, B(0), NULL, NULL, NULL},
    [LOOM_OP_CHUNK] = {"loom.chunk", "* (f^ n) -> * n", "f", 0, 0, 0, B(0), NULL, chunk_sizes,
                       NULL},
    [LOOM_OP_LINEAR_KN] = {"loom.linear_kn", "* k+, k+ n -> * n", "ff", LOOM_OPF_MATMUL,
                           B(0) | B(1), 0,
                           B(0) | B(1), NULL, NULL, product_flops},
    [LOOM_OP_BIAS_ADD] = {"loom.bias_add", "* n, n -> * n", "ff", 0, 0, 0, B(0) | B(1), NULL,
                          NULL, NULL},
    [LOOM_OP_ALL_REDUCE] = {"loom.all_reduce", "* -> *", "f", LOOM_OPF_COMM, 0, 0, B(0), NULL,
                            NULL, NULL, comm_shape},
    [LOOM_OP_GRAD_SYNC] = {"loom.grad_sync", "* -> *", "f", LOOM_OPF_COMM, 0, 0, B(0), NULL,
                           NULL, NULL, comm_shape},
    [LOOM_OP_ALL_GATHER] = {"loom.all_gather", "* -> *", "f", LOOM_OPF_COMM, 0, 0, B(0), NULL,
                            NULL, NULL, comm_shape},
    [LOOM_OP_SHARD_SLICE] = {"loom.shard_slice", "* -> *", "f", LOOM_OPF_COMM, 0, 0, B(0), NULL,
                             NULL, NULL, comm_shape},
};

#undef B

const loom_op_def *loom__op_def(loom_op op) {
    LOOM_ASSERT((unsigned)op < LOOM_OP_COUNT);
    return &op_table[op];
}

int loom__op_by_signature(const char *signature) {
    for (int op = 0; signature && op < LOOM_OP_COUNT; op++)
        if (!strcmp(op_table[op].signature, signature)) return op;
    return -1;
}

// ---- builders -----------------------------------------------------------------------------------

static loom_value add1(loom_graph *g, loom_op op, int n_in, const loom_value *in,
                       const int64_t *ai, const float *af) {
    loom_value out[LOOM_MAX_IO];
    if (loom__graph_add_node(g, op, n_in, in, ai, af, out) < 0) return LOOM_NONE;
    return out[0];
}

static loom_value invalid(loom_graph *g, const char *sig, const char *why) {
    if (g->status) return LOOM_NONE;
    loom__error(LOOM_ERR_INVALID, "%s in module '%s': %s", sig, g->scope[0] ? g->scope : "(top)",
                why);
    return loom__graph_fail(g, LOOM_ERR_INVALID);
}

loom_value loom_embedding(loom_graph_t g, loom_value idx, loom_value weight) {
    return add1(g, LOOM_OP_EMBEDDING, 2, (loom_value[]){idx, weight}, NULL, NULL);
}

loom_value loom_linear(loom_graph_t g, loom_value x, loom_value weight, loom_value bias) {
    if (bias == LOOM_NONE) return add1(g, LOOM_OP_LINEAR, 2, (loom_value[]){x, weight}, NULL, NULL);
    return add1(g, LOOM_OP_LINEAR_BIAS, 3, (loom_value[]){x, weight, bias}, NULL, NULL);
}

loom_value loom_conv1d(loom_graph_t g, loom_value x, loom_value weight, loom_value bias) {
    return add1(g, LOOM_OP_CONV1D, 3, (loom_value[]){x, weight, bias}, NULL, NULL);
}

loom_value loom_matmul(loom_graph_t g, loom_value a, loom_value b) {
    return add1(g, LOOM_OP_MATMUL, 2, (loom_value[]){a, b}, NULL, NULL);
}

loom_value loom_add(loom_graph_t g, loom_value a, loom_value b) {
    return add1(g, LOOM_OP_ADD, 2, (loom_value[]){a, b}, NULL, NULL);
}

loom_value loom_mul(loom_graph_t g, loom_value a, loom_value b) {
    return add1(g, LOOM_OP_MUL, 2, (loom_value[]){a, b}, NULL, NULL);
}

loom_value loom_layer_norm(loom_graph_t g, loom_value x, loom_value weight, loom_value bias,
                           float eps) {
    if (!(eps > 0)) return invalid(g, "loom.layer_norm", "eps must be > 0");
    return add1(g, LOOM_OP_LAYERNORM, 3, (loom_value[]){x, weight, bias}, NULL,
                (float[4]){eps, 0, 0, 0});
}

loom_value loom_rms_norm(loom_graph_t g, loom_value x, loom_value weight, float eps) {
    if (!(eps > 0)) return invalid(g, "loom.rms_norm", "eps must be > 0");
    return add1(g, LOOM_OP_RMSNORM, 2, (loom_value[]){x, weight}, NULL, (float[4]){eps, 0, 0, 0});
}

loom_value loom_gelu(loom_graph_t g, loom_value x) {
    return add1(g, LOOM_OP_GELU, 1, &x, NULL, NULL);
}

loom_value loom_silu(loom_graph_t g, loom_value x) {
    return add1(g, LOOM_OP_SILU, 1, &x, NULL, NULL);
}

loom_value loom_rope(loom_graph_t g, loom_value x, loom_value positions, int n_head, float theta) {
    if (g->status) return LOOM_NONE;
    if (n_head <= 0) return invalid(g, "loom.rope", "n_head must be > 0");
    if (!(theta > 0)) return invalid(g, "loom.rope", "theta must be > 0");
    if (x >= 0 && x < g->n_values) {
        const loom_value_info *xi = &g->values[x];
        int64_t c = xi->shape[xi->ndim - 1];
        if (c % n_head != 0 || (c / n_head) % 2 != 0)
            return invalid(g, "loom.rope", "the last dim must split into n_head heads of an even "
                                           "head dim");
    }
    return add1(g, LOOM_OP_ROPE, 2, (loom_value[]){x, positions}, (int64_t[4]){n_head, 0, 0, 0},
                (float[4]){theta, 0, 0, 0});
}

static int check_heads(loom_graph *g, const char *sig, int n_head, int n_kv_head) {
    if (n_head <= 0 || n_kv_head <= 0) return invalid(g, sig, "head counts must be > 0"), -1;
    if (n_head % n_kv_head != 0) {
        char why[128];
        snprintf(why, sizeof why, "n_head (%d) must be a multiple of n_kv_head (%d)", n_head,
                 n_kv_head);
        return invalid(g, sig, why), -1;
    }
    return 0;
}

loom_value loom_attention(loom_graph_t g, loom_value q, loom_value k, loom_value v, int n_head,
                          int n_kv_head) {
    if (g->status || check_heads(g, "loom.attention", n_head, n_kv_head) < 0) return LOOM_NONE;
    return add1(g, LOOM_OP_ATTENTION, 3, (loom_value[]){q, k, v},
                (int64_t[4]){n_head, n_kv_head, 0, 0}, NULL);
}

loom_value loom_attention_cached(loom_graph_t g, loom_value q, loom_value k, loom_value v,
                                 loom_value k_cache, loom_value v_cache, loom_value positions,
                                 int n_head, int n_kv_head) {
    if (g->status || check_heads(g, "loom.attention_cached", n_head, n_kv_head) < 0)
        return LOOM_NONE;
    for (int i = 0; i < 2; i++) {
        loom_value c = i ? v_cache : k_cache;
        if (c < 0 || c >= g->n_values || g->values[c].role != LOOM_ROLE_STATE)
            return invalid(g, "loom.attention_cached", "the caches must be state values");
    }
    return add1(g, LOOM_OP_ATTENTION_CACHED, 6,
                (loom_value[]){q, k, v, k_cache, v_cache, positions},
                (int64_t[4]){n_head, n_kv_head, 0, 0}, NULL);
}

loom_value loom_cross_entropy(loom_graph_t g, loom_value logits, loom_value targets,
                              int ignore_index) {
    return add1(g, LOOM_OP_CROSS_ENTROPY, 2, (loom_value[]){logits, targets},
                (int64_t[4]){ignore_index, 0, 0, 0}, NULL);
}

loom_value loom_cross_entropy_sum(loom_graph_t g, loom_value logits, loom_value targets,
                                  int ignore_index) {
    return add1(g, LOOM_OP_CROSS_ENTROPY, 2, (loom_value[]){logits, targets},
                (int64_t[4]){ignore_index, 0, 0, 1}, NULL);
}

loom_value loom_sum(loom_graph_t g, loom_value x) {
    return add1(g, LOOM_OP_SUM, 1, &x, NULL, NULL);
}

loom_value loom_chunk(loom_graph_t g, loom_value x, int chunks, int index) {
    if (g->status) return LOOM_NONE;
    if (chunks <= 0 || index < 0 || index >= chunks)
        return invalid(g, "loom.chunk", "index must be in [0, chunks)");
    return add1(g, LOOM_OP_CHUNK, 1, &x, (int64_t[4]){chunks, index, 0, 0}, NULL);
}

loom_value loom_bias_add(loom_graph_t g, loom_value x, loom_value bias) {
    return add1(g, LOOM_OP_BIAS_ADD, 2, (loom_value[]){x, bias}, NULL, NULL);
}

loom_value loom_slice(loom_graph_t g, loom_value x, int64_t start, int64_t len) {
    if (g->status) return LOOM_NONE;
    if (x >= 0 && x < g->n_values) {
        const loom_value_info *xi = &g->values[x];
        int64_t c = xi->shape[xi->ndim - 1];
        if (start < 0 || len <= 0 || start + len > c) {
            char why[128];
            snprintf(why, sizeof why, "slice [%lld, %lld) is outside the last dim (%lld)",
                     (long long)start, (long long)(start + len), (long long)c);
            return invalid(g, "loom.slice", why);
        }
    }
    return add1(g, LOOM_OP_SLICE, 1, &x, (int64_t[4]){start, len, 0, 0}, NULL);
}
