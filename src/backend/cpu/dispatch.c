// CPU backend: maps each graph node to its kernel call (the kernel half of an op-table row),
// validating what user data can get wrong (token ids) before any kernel runs.

#include "backend/backend.h"
#include "backend/cpu/kernels.h"

#include "core/core.h"
#include "plan/shard.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#define F(v) ((float *)ptr[v])
#define CF(v) ((const float *)ptr[v])
#define IDS(v) ((const int32_t *)ptr[v])
#define OPT(v) ((v) >= 0 ? (float *)ptr[v] : NULL)

static int64_t dim(const loom_graph *g, loom_value v, int i) {
    const loom_value_info *vi = &g->values[v];
    return vi->shape[i < 0 ? vi->ndim + i : i];
}

static int64_t rows(const loom_graph *g, loom_value v) {
    return loom__value_numel(g, v) / dim(g, v, -1);
}

// Token ids come from user data: an id outside the vocabulary is an error, not a crash.
static loom_status check_ids(const loom_graph *g, const loom_node *n, const int32_t *ids,
                             int64_t count, int64_t limit, int64_t allowed, const char *what) {
    for (int64_t i = 0; i < count; i++) {
        if ((ids[i] < 0 || ids[i] >= limit) && ids[i] != allowed)
            return loom__error(LOOM_ERR_INVALID,
                               "%s in module '%s': %s %d at position %lld is outside [0, %lld); "
                               "the data does not fit this model's vocabulary",
                               loom__op_def(n->op)->signature,
                               g->modules[n->module][0] ? g->modules[n->module] : "(top)", what,
                               ids[i], (long long)i, (long long)limit);
    }
    return LOOM_OK;
}

static int64_t count_kept(const int32_t *targets, int64_t n, int32_t ignore) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += targets[i] != ignore;
    return c;
}

// Sum in fp64, in index order (deterministic; used for scalar reductions only).
static double sum_f64(const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    return s;
}

// ---- slice (a copy along the last dim) ----------------------------------------------------------

static void slice_forward(float *out, const float *inp, int64_t N, int64_t C, int64_t start,
                          int64_t len) {
#pragma omp parallel for if (N * len > 32768)
    for (int64_t r = 0; r < N; r++) memcpy(out + r * len, inp + r * C + start, (size_t)len * 4);
}

static void slice_backward(float *dinp, const float *dout, int64_t N, int64_t C, int64_t start,
                           int64_t len, int acc) {
#pragma omp parallel for if (N * C > 32768)
    for (int64_t r = 0; r < N; r++) {
        float *d = dinp + r * C;
        const float *s = dout + r * len;
        if (!acc) {
            memset(d, 0, (size_t)start * 4);
            memset(d + start + len, 0, (size_t)(C - start - len) * 4);
            memcpy(d + start, s, (size_t)len * 4);
        } else {
            for (int64_t i = 0; i < len; i++) d[start + i] += s[i];
        }
    }
}

// ---- communication ops --------------------------------------------------------------------------

// The node communicates over the unit: its communicator must exist (with `size` ranks, when
// size > 0).
static loom_status need_comm(const loom_graph *g, const loom_node *n, const loom_kernel_ctx *ctx,
                             int64_t size) {
    if (ctx->comm && (size <= 0 || loom_comm_size(ctx->comm) == size)) return LOOM_OK;
    return loom__error(LOOM_ERR_INTERNAL, "%s in module '%s' needs a communicator of %lld ranks",
                       loom__op_def(n->op)->signature,
                       g->modules[n->module][0] ? g->modules[n->module] : "(top)",
                       (long long)size);
}

// The layout of the full (gathered) side of a shard/gather node.
static loom_shard_layout comm_layout(const loom_graph *g, const loom_node *n) {
    loom_value full = n->op == LOOM_OP_ALL_GATHER ? n->out[0] : n->in[0];
    const loom_value_info *vi = &g->values[full];
    return loom__shard_layout(vi->ndim, vi->shape, (int)n->ai[0], (int)n->ai[1], (int)n->ai[2]);
}

// full (+)= all-gather of every rank's `local` (rank-major into scratch, then block by block).
static loom_status gather_into(const loom_graph *g, const loom_node *n, const loom_kernel_ctx *ctx,
                               const float *local, int64_t local_n, float *full, int acc) {
    loom_shard_layout l = comm_layout(g, n);
    float *staged = ctx->scratch;
    LOOM_ASSERT(ctx->scratch_bytes >= (size_t)(local_n * l.parts) * sizeof(float));
    LOOM_CHECK(loom_comm_all_gather(ctx->comm, local, staged, (size_t)local_n, LOOM_DTYPE_F32));
    for (int r = 0; r < l.parts; r++) loom__shard_copy(&l, r, staged + r * local_n, full, 0, acc);
    return LOOM_OK;
}

static loom_status comm_forward(const loom_graph *g, const loom_node *n, void *const *ptr,
                                const loom_kernel_ctx *ctx) {
    LOOM_CHECK(need_comm(g, n, ctx, n->ai[2]));
    const int32_t *in = n->in, *out = n->out;
    int64_t count = loom__value_numel(g, in[0]);
    switch (n->op) {
    case LOOM_OP_ALL_REDUCE:
        LOOM_CHECK(loom_comm_all_reduce(ctx->comm, CF(in[0]), F(out[0]), (size_t)count,
                                        LOOM_DTYPE_F32, LOOM_REDUCE_SUM));
        if (n->af[0] != 1.0f) loom_cpu_scale(F(out[0]), n->af[0], loom__value_numel(g, out[0]));
        return LOOM_OK;
    case LOOM_OP_GRAD_SYNC:
        memcpy(F(out[0]), CF(in[0]), (size_t)count * sizeof(float));
        return LOOM_OK;
    case LOOM_OP_ALL_GATHER: return gather_into(g, n, ctx, CF(in[0]), count, F(out[0]), 0);
    case LOOM_OP_SHARD_SLICE: {
        loom_shard_layout l = comm_layout(g, n);
        loom__shard_copy(&l, loom_comm_rank(ctx->comm), F(out[0]), F(in[0]), 1, 0);
        return LOOM_OK;
    }
    default: break;
    }
    return loom__error(LOOM_ERR_INTERNAL, "not a comm op: %d", n->op);
}

static loom_status comm_backward(const loom_graph *g, const loom_node *f, const int32_t *dout,
                                 const int32_t *din, uint32_t acc, void *const *ptr,
                                 const loom_kernel_ctx *ctx) {
    LOOM_CHECK(need_comm(g, f, ctx, f->ai[2]));
    if (din[0] < 0) return LOOM_OK;
    int a = (int)(acc & 1);
    int64_t count = loom__value_numel(g, dout[0]);
    float *dx = F(din[0]);
    switch (f->op) {
    case LOOM_OP_ALL_REDUCE:
        // Adjoint of y = scale * sum_r x_r: every rank's dx = scale * dy.
        for (int64_t i = 0; i < count; i++) dx[i] = (a ? dx[i] : 0.0f) + f->af[0] * CF(dout[0])[i];
        return LOOM_OK;
    case LOOM_OP_GRAD_SYNC: {
        // The output's gradient is this node's alone: reduce the partial gradients in place.
        float *dy = F(dout[0]);
        LOOM_CHECK(loom_comm_all_reduce(ctx->comm, dy, dy, (size_t)count, LOOM_DTYPE_F32,
                                        LOOM_REDUCE_SUM));
        loom_cpu_add_backward(dx, NULL, dy, count, a, 0);
        return LOOM_OK;
    }
    case LOOM_OP_ALL_GATHER: {
        loom_shard_layout l = comm_layout(g, f);
        loom__shard_copy(&l, loom_comm_rank(ctx->comm), dx, F(dout[0]), 1, a);
        return LOOM_OK;
    }
    case LOOM_OP_SHARD_SLICE: return gather_into(g, f, ctx, CF(dout[0]), count, dx, a);
    default: break;
    }
    return loom__error(LOOM_ERR_INTERNAL, "not a comm op: %d", f->op);
}

// ---- vocabulary-parallel embedding and cross-entropy ----------------------------------------------

// Rows [first, first + V_local) of a vocabulary of V: ids outside give zero rows (the all-reduce
// of the partial outputs then leaves exactly the owner's row).
static void embedding_rows_forward(float *out, const int32_t *ids, const float *weight, int64_t N,
                                   int64_t first, int64_t v_local, int64_t C) {
    #pragma omp parallel for if (N * C > 32768)
    for (int64_t n = 0; n < N; n++) {
        int64_t row = ids[n] - first;
        if (row >= 0 && row < v_local) memcpy(out + n * C, weight + row * C, (size_t)C * 4);
        else memset(out + n * C, 0, (size_t)C * 4);
    }
}

static void embedding_rows_backward(float *dweight, const float *dout, const int32_t *ids,
                                    int64_t N, int64_t first, int64_t v_local, int64_t C, int acc) {
    if (!acc) memset(dweight, 0, (size_t)(v_local * C) * 4);
    for (int64_t n = 0; n < N; n++) {
        int64_t row = ids[n] - first;
        if (row < 0 || row >= v_local) continue;
        for (int64_t c = 0; c < C; c++) dweight[row * C + c] += dout[n * C + c];
    }
}

// Cross-entropy over logits split by vocabulary: all-reduce the row max, the sum of
// exponentials and the target logit (held by one rank), so every rank gets the full losses.
// logits (N, Vl) hold columns [first, first + Vl) of V. lse and row losses (N) double as the
// buffers of the reductions.
static loom_status cross_entropy_vp_forward(const loom_kernel_ctx *ctx, float *loss, float *lse,
                                            float *rows_loss, const float *logits,
                                            const int32_t *targets, int64_t N, int64_t Vl,
                                            int64_t first, int32_t ignore, int sum_rows) {
    for (int64_t n = 0; n < N; n++) {
        const float *x = logits + n * Vl;
        float m = -INFINITY;
        for (int64_t j = 0; j < Vl; j++) m = x[j] > m ? x[j] : m;
        lse[n] = m;
    }
    LOOM_CHECK(loom_comm_all_reduce(ctx->comm, lse, lse, (size_t)N, LOOM_DTYPE_F32, LOOM_REDUCE_MAX));
    for (int64_t n = 0; n < N; n++)
        rows_loss[n] = (float)loom_cpu__exp_affine(NULL, logits + n * Vl, 1.0f, -lse[n], Vl);
    LOOM_CHECK(loom_comm_all_reduce(ctx->comm, rows_loss, rows_loss, (size_t)N, LOOM_DTYPE_F32,
                                    LOOM_REDUCE_SUM));
    for (int64_t n = 0; n < N; n++) lse[n] += logf(rows_loss[n]);
    for (int64_t n = 0; n < N; n++) {
        int64_t j = (int64_t)targets[n] - first;
        rows_loss[n] = targets[n] != ignore && j >= 0 && j < Vl ? logits[n * Vl + j] : 0.0f;
    }
    LOOM_CHECK(loom_comm_all_reduce(ctx->comm, rows_loss, rows_loss, (size_t)N, LOOM_DTYPE_F32,
                                    LOOM_REDUCE_SUM));
    int64_t kept = count_kept(targets, N, ignore);
    for (int64_t n = 0; n < N; n++) rows_loss[n] = targets[n] != ignore ? lse[n] - rows_loss[n] : 0;
    double sum = sum_f64(rows_loss, N);
    loss[0] = sum_rows ? (float)sum : kept ? (float)(sum / (double)kept) : 0.0f;
    return LOOM_OK;
}

static void cross_entropy_vp_backward(float *dlogits, const float *logits, const float *lse,
                                      const int32_t *targets, int64_t N, int64_t Vl,
                                      int64_t first, int32_t ignore, float scale, int acc) {
    #pragma omp parallel for if (N * Vl > 32768)
    for (int64_t n = 0; n < N; n++) {
        float *d = dlogits + n * Vl;
        const float *x = logits + n * Vl;
        if (targets[n] == ignore) {
            if (!acc) memset(d, 0, (size_t)Vl * 4);
            continue;
        }
        int64_t t = (int64_t)targets[n] - first;
        for (int64_t j = 0; j < Vl; j++) {
            float g = scale * (expf(x[j] - lse[n]) - (j == t ? 1.0f : 0.0f));
            d[j] = acc ? d[j] + g : g;
        }
    }
}

// ---- forward ------------------------------------------------------------------------------------

// Attention's per-thread scratch, carved from the program's scratch buffer.
static loom_cpu_scratch attention_scratch(const loom_kernel_ctx *ctx) {
    loom_cpu_scratch s = {ctx->scratch, ctx->threads, 0};
    if (ctx->threads > 0) s.per_thread = (int64_t)(ctx->scratch_bytes / sizeof(float)) / ctx->threads;
    return s;
}

static size_t cpu_scratch_bytes(const loom_graph *g, const loom_node *n, int threads) {
    const loom_node *f = n->backward ? &g->nodes[n->fwd] : n;
    int64_t floats = 0;
    // Gathers assemble the full tensor rank-major before placing its blocks.
    if (f->op == LOOM_OP_ALL_GATHER || f->op == LOOM_OP_SHARD_SLICE)
        return loom__value_bytes(g, f->op == LOOM_OP_ALL_GATHER ? f->out[0] : f->in[0]);
    if (f->op == LOOM_OP_ATTENTION)
        floats = loom_cpu_attention_scratch_floats(dim(g, f->in[0], 1), dim(g, f->in[0], 1),
                                                   n->backward);
    else if (f->op == LOOM_OP_ATTENTION_CACHED)
        floats = loom_cpu_attention_scratch_floats(dim(g, f->in[0], 1), dim(g, f->in[3], 1), 0);
    return (size_t)floats * (size_t)threads * sizeof(float);
}

static loom_status cpu_forward(const loom_graph *g, const loom_node *n, void *const *ptr,
                               const loom_kernel_ctx *ctx) {
    const int32_t *in = n->in, *out = n->out;
    switch (n->op) {
    case LOOM_OP_EMBEDDING: {
        int64_t N = loom__value_numel(g, in[0]), V = dim(g, in[1], 0), C = dim(g, in[1], 1);
        int64_t full = n->ai[1] ? n->ai[1] : V;  // vocabulary-parallel: this rank holds V rows
        LOOM_CHECK(check_ids(g, n, IDS(in[0]), N, full, INT32_MIN, "token id"));
        if (n->ai[1]) embedding_rows_forward(F(out[0]), IDS(in[0]), CF(in[1]), N, n->ai[0], V, C);
        else loom_cpu_embedding_forward(F(out[0]), IDS(in[0]), CF(in[1]), N, V, C);
        return LOOM_OK;
    }
    case LOOM_OP_LINEAR:
    case LOOM_OP_LINEAR_KN:
    case LOOM_OP_LINEAR_BIAS:
    case LOOM_OP_CONV1D: {
        int kn = n->op == LOOM_OP_CONV1D || n->op == LOOM_OP_LINEAR_KN;
        int64_t M = rows(g, in[0]), K = dim(g, in[0], -1), N = dim(g, out[0], -1);
        const float *bias = n->n_in == 3 ? CF(in[2]) : NULL;
        loom_cpu_linear_forward(F(out[0]), CF(in[0]), CF(in[1]), bias, M, K, N, kn);
        return LOOM_OK;
    }
    case LOOM_OP_MATMUL: {
        const loom_value_info *a = &g->values[in[0]];
        int64_t M = a->shape[a->ndim - 2], K = a->shape[a->ndim - 1], N = dim(g, in[1], -1);
        int64_t Bt = loom__value_numel(g, in[0]) / (M * K);
        loom_cpu_matmul_forward(F(out[0]), CF(in[0]), CF(in[1]), Bt, M, K, N);
        return LOOM_OK;
    }
    case LOOM_OP_ADD:
        loom_cpu_add_forward(F(out[0]), CF(in[0]), CF(in[1]), loom__value_numel(g, in[0]));
        return LOOM_OK;
    case LOOM_OP_MUL:
        loom_cpu_mul_forward(F(out[0]), CF(in[0]), CF(in[1]), loom__value_numel(g, in[0]));
        return LOOM_OK;
    case LOOM_OP_LAYERNORM:
        loom_cpu_layernorm_forward(F(out[0]), F(out[1]), F(out[2]), CF(in[0]), CF(in[1]),
                                   CF(in[2]), rows(g, in[0]), dim(g, in[0], -1), n->af[0]);
        return LOOM_OK;
    case LOOM_OP_RMSNORM:
        loom_cpu_rmsnorm_forward(F(out[0]), F(out[1]), CF(in[0]), CF(in[1]), rows(g, in[0]),
                                 dim(g, in[0], -1), n->af[0]);
        return LOOM_OK;
    case LOOM_OP_GELU:
        loom_cpu_gelu_forward(F(out[0]), CF(in[0]), loom__value_numel(g, in[0]));
        return LOOM_OK;
    case LOOM_OP_SILU:
        loom_cpu_silu_forward(F(out[0]), CF(in[0]), loom__value_numel(g, in[0]));
        return LOOM_OK;
    case LOOM_OP_ROPE: {
        int64_t H = n->ai[0], D = dim(g, in[0], -1) / H;
        loom_cpu_rope_forward(F(out[0]), CF(in[0]), IDS(in[1]), rows(g, in[0]), H, D, n->af[0]);
        return LOOM_OK;
    }
    case LOOM_OP_ATTENTION: {
        int64_t Hq = n->ai[0], Hkv = n->ai[1];
        int64_t B = dim(g, in[0], 0), T = dim(g, in[0], 1), D = dim(g, in[0], 2) / Hq;
        loom_cpu_scratch scratch = attention_scratch(ctx);
        loom_cpu_attention_forward(F(out[0]), F(out[1]), CF(in[0]), CF(in[1]), CF(in[2]), B, T,
                                   Hq, Hkv, D, &scratch);
        return LOOM_OK;
    }
    case LOOM_OP_ATTENTION_CACHED: {
        int64_t Hq = n->ai[0], Hkv = n->ai[1];
        int64_t B = dim(g, in[0], 0), Tq = dim(g, in[0], 1), D = dim(g, in[0], 2) / Hq;
        int64_t Tmax = dim(g, in[3], 1), Ckv = Hkv * D;
        const int32_t *pos = IDS(in[5]);
        // Rows of a batch advance together: position of row b, step t is pos0 + t.
        int64_t pos0 = pos[0];
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < Tq; t++)
                if (pos[b * Tq + t] != pos0 + t)
                    return loom__error(LOOM_ERR_INVALID, "loom.attention_cached: positions must "
                                       "be pos0, pos0+1, ... in every row");
        if (pos0 < 0 || pos0 + Tq > Tmax)
            return loom__error(LOOM_ERR_INVALID,
                               "loom.attention_cached: positions %lld..%lld exceed the cache "
                               "length %lld", (long long)pos0, (long long)(pos0 + Tq - 1),
                               (long long)Tmax);
        float *kc = F(in[3]), *vc = F(in[4]);
        for (int64_t b = 0; b < B; b++) {
            memcpy(kc + (b * Tmax + pos0) * Ckv, CF(in[1]) + b * Tq * Ckv, (size_t)(Tq * Ckv) * 4);
            memcpy(vc + (b * Tmax + pos0) * Ckv, CF(in[2]) + b * Tq * Ckv, (size_t)(Tq * Ckv) * 4);
        }
        loom_cpu_scratch scratch = attention_scratch(ctx);
        loom_cpu_attention_cached_forward(F(out[0]), CF(in[0]), kc, vc, B, Tq, Tmax, pos0, Hq,
                                          Hkv, D, &scratch);
        return LOOM_OK;
    }
    case LOOM_OP_CROSS_ENTROPY: {
        int64_t N = rows(g, in[0]), V = dim(g, in[0], -1);
        int32_t ignore = (int32_t)n->ai[0];
        if (n->ai[2]) {
            LOOM_CHECK(check_ids(g, n, IDS(in[1]), N, n->ai[2], ignore, "target id"));
            LOOM_CHECK(need_comm(g, n, ctx, 0));
            return cross_entropy_vp_forward(ctx, F(out[0]), F(out[1]), F(out[2]), CF(in[0]),
                                            IDS(in[1]), N, V, n->ai[1], ignore, (int)n->ai[3]);
        }
        LOOM_CHECK(check_ids(g, n, IDS(in[1]), N, V, ignore, "target id"));
        float *losses = F(out[2]);
        loom_cpu_cross_entropy_forward(losses, F(out[1]), CF(in[0]), IDS(in[1]), N, V, ignore);
        int64_t kept = count_kept(IDS(in[1]), N, ignore);
        double sum = sum_f64(losses, N);
        F(out[0])[0] = n->ai[3] ? (float)sum : kept ? (float)(sum / (double)kept) : 0.0f;
        return LOOM_OK;
    }
    case LOOM_OP_SUM: {
        F(out[0])[0] = (float)sum_f64(CF(in[0]), loom__value_numel(g, in[0]));
        return LOOM_OK;
    }
    case LOOM_OP_SLICE:
        slice_forward(F(out[0]), CF(in[0]), rows(g, in[0]), dim(g, in[0], -1), n->ai[0], n->ai[1]);
        return LOOM_OK;
    case LOOM_OP_CHUNK: {
        int64_t len = dim(g, out[0], -1);
        slice_forward(F(out[0]), CF(in[0]), rows(g, in[0]), dim(g, in[0], -1), n->ai[1] * len, len);
        return LOOM_OK;
    }
    case LOOM_OP_BIAS_ADD:
        loom_cpu_bias_add_forward(F(out[0]), CF(in[0]), CF(in[1]), rows(g, in[0]),
                                  dim(g, in[0], -1));
        return LOOM_OK;
    case LOOM_OP_ALL_REDUCE:
    case LOOM_OP_GRAD_SYNC:
    case LOOM_OP_ALL_GATHER:
    case LOOM_OP_SHARD_SLICE: return comm_forward(g, n, ptr, ctx);
    case LOOM_OP_COUNT: break;
    }
    return loom__error(LOOM_ERR_INTERNAL, "cpu backend: no forward kernel for op %d", n->op);
}

// ---- backward -----------------------------------------------------------------------------------

static loom_status cpu_backward(const loom_graph *g, const loom_node *n, uint32_t acc,
                                void *const *ptr, const loom_kernel_ctx *ctx) {
    const loom_node *f = &g->nodes[n->fwd];
    const int32_t *in = f->in, *out = f->out;
    const int32_t *dout = n->in, *din = n->out;
#define ACC(k) ((int)((acc >> (k)) & 1))
    switch (f->op) {
    case LOOM_OP_EMBEDDING: {
        int64_t N = loom__value_numel(g, in[0]), V = dim(g, in[1], 0), C = dim(g, in[1], 1);
        if (din[1] >= 0 && f->ai[1])
            embedding_rows_backward(F(din[1]), CF(dout[0]), IDS(in[0]), N, f->ai[0], V, C, ACC(1));
        else if (din[1] >= 0)
            loom_cpu_embedding_backward(F(din[1]), CF(dout[0]), IDS(in[0]), N, V, C, ACC(1));
        return LOOM_OK;
    }
    case LOOM_OP_LINEAR:
    case LOOM_OP_LINEAR_KN:
    case LOOM_OP_LINEAR_BIAS:
    case LOOM_OP_CONV1D: {
        int kn = f->op == LOOM_OP_CONV1D || f->op == LOOM_OP_LINEAR_KN;
        int64_t M = rows(g, in[0]), K = dim(g, in[0], -1), N = dim(g, out[0], -1);
        float *dbias = f->n_in == 3 ? OPT(din[2]) : NULL;
        loom_cpu_linear_backward(OPT(din[0]), OPT(din[1]), dbias, CF(dout[0]), CF(in[0]),
                                 CF(in[1]), M, K, N, kn, ACC(0), ACC(1), ACC(2));
        return LOOM_OK;
    }
    case LOOM_OP_MATMUL: {
        const loom_value_info *a = &g->values[in[0]];
        int64_t M = a->shape[a->ndim - 2], K = a->shape[a->ndim - 1], N = dim(g, in[1], -1);
        int64_t Bt = loom__value_numel(g, in[0]) / (M * K);
        loom_cpu_matmul_backward(OPT(din[0]), OPT(din[1]), CF(dout[0]), CF(in[0]), CF(in[1]), Bt,
                                 M, K, N, ACC(0), ACC(1));
        return LOOM_OK;
    }
    case LOOM_OP_ADD:
        loom_cpu_add_backward(OPT(din[0]), OPT(din[1]), CF(dout[0]), loom__value_numel(g, in[0]),
                              ACC(0), ACC(1));
        return LOOM_OK;
    case LOOM_OP_MUL:
        loom_cpu_mul_backward(OPT(din[0]), OPT(din[1]), CF(dout[0]), CF(in[0]), CF(in[1]),
                              loom__value_numel(g, in[0]), ACC(0), ACC(1));
        return LOOM_OK;
    case LOOM_OP_LAYERNORM:
        loom_cpu_layernorm_backward(OPT(din[0]), OPT(din[1]), OPT(din[2]), CF(dout[0]), CF(in[0]),
                                    CF(in[1]), CF(out[1]), CF(out[2]), rows(g, in[0]),
                                    dim(g, in[0], -1), ACC(0), ACC(1), ACC(2));
        return LOOM_OK;
    case LOOM_OP_RMSNORM:
        loom_cpu_rmsnorm_backward(OPT(din[0]), OPT(din[1]), CF(dout[0]), CF(in[0]), CF(in[1]),
                                  CF(out[1]), rows(g, in[0]), dim(g, in[0], -1), ACC(0), ACC(1));
        return LOOM_OK;
    case LOOM_OP_GELU:
        if (din[0] >= 0)
            loom_cpu_gelu_backward(F(din[0]), CF(dout[0]), CF(in[0]), loom__value_numel(g, in[0]),
                                   ACC(0));
        return LOOM_OK;
    case LOOM_OP_SILU:
        if (din[0] >= 0)
            loom_cpu_silu_backward(F(din[0]), CF(dout[0]), CF(in[0]), loom__value_numel(g, in[0]),
                                   ACC(0));
        return LOOM_OK;
    case LOOM_OP_ROPE: {
        int64_t H = f->ai[0], D = dim(g, in[0], -1) / H;
        if (din[0] >= 0)
            loom_cpu_rope_backward(F(din[0]), CF(dout[0]), IDS(in[1]), rows(g, in[0]), H, D,
                                   f->af[0], ACC(0));
        return LOOM_OK;
    }
    case LOOM_OP_ATTENTION: {
        int64_t Hq = f->ai[0], Hkv = f->ai[1];
        int64_t B = dim(g, in[0], 0), T = dim(g, in[0], 1), D = dim(g, in[0], 2) / Hq;
        loom_cpu_scratch scratch = attention_scratch(ctx);
        loom_cpu_attention_backward(OPT(din[0]), OPT(din[1]), OPT(din[2]), CF(dout[0]), CF(in[0]),
                                    CF(in[1]), CF(in[2]), CF(out[0]), CF(out[1]), B, T, Hq, Hkv,
                                    D, ACC(0), ACC(1), ACC(2), &scratch);
        return LOOM_OK;
    }
    case LOOM_OP_CROSS_ENTROPY: {
        int64_t N = rows(g, in[0]), V = dim(g, in[0], -1);
        int32_t ignore = (int32_t)f->ai[0];
        int64_t kept = count_kept(IDS(in[1]), N, ignore);
        float dloss = CF(dout[0])[0];
        float scale = f->ai[3] ? dloss : kept ? dloss / (float)kept : 0.0f;
        if (din[0] >= 0 && f->ai[2])
            cross_entropy_vp_backward(F(din[0]), CF(in[0]), CF(out[1]), IDS(in[1]), N, V,
                                      f->ai[1], ignore, scale, ACC(0));
        else if (din[0] >= 0)
            loom_cpu_cross_entropy_backward(F(din[0]), CF(in[0]), CF(out[1]), IDS(in[1]), N, V,
                                            ignore, scale, ACC(0));
        return LOOM_OK;
    }
    case LOOM_OP_SLICE:
        if (din[0] >= 0)
            slice_backward(F(din[0]), CF(dout[0]), rows(g, in[0]), dim(g, in[0], -1), f->ai[0],
                           f->ai[1], ACC(0));
        return LOOM_OK;
    case LOOM_OP_CHUNK:
        if (din[0] >= 0) {
            int64_t len = dim(g, out[0], -1);
            slice_backward(F(din[0]), CF(dout[0]), rows(g, in[0]), dim(g, in[0], -1),
                           f->ai[1] * len, len, ACC(0));
        }
        return LOOM_OK;
    case LOOM_OP_BIAS_ADD:
        loom_cpu_bias_add_backward(OPT(din[0]), OPT(din[1]), CF(dout[0]), rows(g, in[0]),
                                   dim(g, in[0], -1), ACC(0), ACC(1));
        return LOOM_OK;
    case LOOM_OP_ALL_REDUCE:
    case LOOM_OP_GRAD_SYNC:
    case LOOM_OP_ALL_GATHER:
    case LOOM_OP_SHARD_SLICE: return comm_backward(g, f, dout, din, acc, ptr, ctx);
    case LOOM_OP_SUM:
        if (din[0] >= 0) {
            int64_t count = loom__value_numel(g, in[0]);
            float d = CF(dout[0])[0], *dx = F(din[0]);
            for (int64_t i = 0; i < count; i++) dx[i] = (ACC(0) ? dx[i] : 0.0f) + d;
        }
        return LOOM_OK;
    case LOOM_OP_ATTENTION_CACHED:
    case LOOM_OP_COUNT: break;
    }
#undef ACC
    return loom__error(LOOM_ERR_INTERNAL, "cpu backend: no backward kernel for op %d", f->op);
}

static void cpu_set_threads(int n) {
    if (n <= 0) return;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

static const loom_backend_i cpu_backend = {
    .name = "cpu",
    .scratch_bytes = cpu_scratch_bytes,
    .forward = cpu_forward,
    .backward = cpu_backward,
    .sum_squares = loom_cpu_sum_squares,
    .scale = loom_cpu_scale,
    .adamw = loom_cpu_adamw_update,
    .sgd = loom_cpu_sgd_update,
    .set_threads = cpu_set_threads,
};

const loom_backend_i *loom__backend_cpu(void) { return &cpu_backend; }
