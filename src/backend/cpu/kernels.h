// CPU kernels: the numeric forward and backward passes of every op, on plain fp32 buffers.
// No graph, no shapes objects: outputs first, then inputs, then sizes (llm.c style).

#ifndef LOOM_CPU_KERNELS_H
#define LOOM_CPU_KERNELS_H

#include <stdint.h>

// Conventions
// - All float buffers are contiguous, row-major fp32. Integer indices are int32.
// - Every matrix product goes through OpenBLAS cblas_sgemm. Other kernels are threaded with
//   OpenMP (`#pragma omp parallel for`); OpenBLAS is the OpenMP build, so both share one pool.
// - Backward kernels take an `acc` flag per produced gradient: 0 overwrites the gradient buffer,
//   1 adds into it. A gradient pointer may be NULL: that gradient is not wanted, skip its work.
// - Kernels are deterministic: the same inputs and thread count give bit-identical outputs (no
//   atomics, no reductions whose order depends on scheduling). All kernels except the
//   sgemm-backed products are also independent of the thread count; OpenBLAS splits long
//   reduction dims (K > 384, not a multiple of 384) differently with 1 and 2 threads.
// - Kernels never allocate: attention's per-thread scratch is planned by the caller
//   (loom_cpu_attention_scratch_floats). They never fail: the runtime validates shapes and
//   indices before calling them.
//
// Legend: M rows (= B*T flattened), K input features, N output features, B batch, T time,
// C channels, V vocabulary, Hq query heads, Hkv key/value heads, D head dim.

// ---- linear: out = inp @ W^T + bias ------------------------------------------------------------

// out (M, N) = inp (M, K) @ weight^T + bias.
// weight is (N, K) when weight_kn == 0 (nn.Linear layout) and (K, N) when weight_kn == 1
// (GPT-2 Conv1D layout). bias (N) may be NULL.
void loom_cpu_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                             int64_t M, int64_t K, int64_t N, int weight_kn);
// dinp (M, K), dweight (same layout as weight), dbias (N); each may be NULL.
void loom_cpu_linear_backward(float *dinp, float *dweight, float *dbias,
                              const float *dout, const float *inp, const float *weight,
                              int64_t M, int64_t K, int64_t N, int weight_kn,
                              int acc_dinp, int acc_dweight, int acc_dbias);

// out (M, N) = x (M, N) + bias (N), broadcast over rows (the bias a row-parallel linear adds
// once, after its partial sums are reduced). out may alias x.
void loom_cpu_bias_add_forward(float *out, const float *x, const float *bias, int64_t M,
                               int64_t N);
// dx = dout; dbias = sum over rows of dout (deterministic). Either may be NULL.
void loom_cpu_bias_add_backward(float *dx, float *dbias, const float *dout, int64_t M, int64_t N,
                                int acc_dx, int acc_dbias);

// ---- batched matmul: out[b] = a[b] @ bm[b] -------------------------------------------------------

// out (Bt, M, N) = a (Bt, M, K) @ bm (Bt, K, N).
void loom_cpu_matmul_forward(float *out, const float *a, const float *bm,
                             int64_t Bt, int64_t M, int64_t K, int64_t N);
void loom_cpu_matmul_backward(float *da, float *dbm, const float *dout, const float *a,
                              const float *bm, int64_t Bt, int64_t M, int64_t K, int64_t N,
                              int acc_da, int acc_dbm);

// ---- embedding: out[n] = weight[idx[n]] ----------------------------------------------------------

// out (N, C), idx (N), weight (V, C).
void loom_cpu_embedding_forward(float *out, const int32_t *idx, const float *weight,
                                int64_t N, int64_t V, int64_t C);
// dweight (V, C) += scatter of dout (N, C) at idx; acc == 0 zeroes dweight first.
// Deterministic: rows with equal indices are summed in increasing n.
void loom_cpu_embedding_backward(float *dweight, const float *dout, const int32_t *idx,
                                 int64_t N, int64_t V, int64_t C, int acc);

// ---- elementwise ---------------------------------------------------------------------------------

void loom_cpu_add_forward(float *out, const float *a, const float *b, int64_t n);
// da = dout, db = dout (either may be NULL).
void loom_cpu_add_backward(float *da, float *db, const float *dout, int64_t n,
                           int acc_da, int acc_db);
void loom_cpu_mul_forward(float *out, const float *a, const float *b, int64_t n);
void loom_cpu_mul_backward(float *da, float *db, const float *dout, const float *a,
                           const float *b, int64_t n, int acc_da, int acc_db);

// GELU, tanh approximation (GPT-2 "gelu_new"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void loom_cpu_gelu_forward(float *out, const float *inp, int64_t n);
void loom_cpu_gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n, int acc);
// SiLU: x * sigmoid(x).
void loom_cpu_silu_forward(float *out, const float *inp, int64_t n);
void loom_cpu_silu_backward(float *dinp, const float *dout, const float *inp, int64_t n, int acc);

// ---- normalization -------------------------------------------------------------------------------

// LayerNorm over the last dim. out (N, C), mean (N), rstd (N), inp (N, C), weight (C), bias (C).
void loom_cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                const float *weight, const float *bias, int64_t N, int64_t C,
                                float eps);
// dweight/dbias reduce over N deterministically (fixed partition of N, fixed summation order).
void loom_cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                 const float *inp, const float *weight, const float *mean,
                                 const float *rstd, int64_t N, int64_t C,
                                 int acc_dinp, int acc_dweight, int acc_dbias);

// RMSNorm (LLaMA): out = inp * rstd * weight, rstd = 1/sqrt(mean(inp^2) + eps).
// out (N, C), rstd (N), inp (N, C), weight (C).
void loom_cpu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                              int64_t N, int64_t C, float eps);
void loom_cpu_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                               const float *weight, const float *rstd, int64_t N, int64_t C,
                               int acc_dinp, int acc_dweight);

// ---- rotary position embedding (Hugging Face rotate-half convention) ----------------------------

// out, inp (N, H*D) with N = B*T rows; pos (N) the position of each row.
// For each head, with half = D/2, i < half, inv_freq_i = theta^(-2i/D), angle = pos * inv_freq_i:
//   out[i]        = x[i] * cos - x[i + half] * sin
//   out[i + half] = x[i + half] * cos + x[i] * sin
// (cos/sin computed in fp32 exactly as torch does: inv_freq in fp32, angle = pos * inv_freq in
// fp32, then cosf/sinf.)  out may alias inp.
void loom_cpu_rope_forward(float *out, const float *inp, const int32_t *pos, int64_t N,
                           int64_t H, int64_t D, float theta);
// The adjoint rotation (angle -> -angle). dinp may alias dout.
void loom_cpu_rope_backward(float *dinp, const float *dout, const int32_t *pos, int64_t N,
                            int64_t H, int64_t D, float theta, int acc);

// ---- causal self-attention with grouped-query heads ----------------------------------------------

// Per-thread scratch for the attention kernels, planned once by the caller. Parallel regions of
// a kernel use at most `threads` threads, each its own slice of `per_thread` floats.
typedef struct loom_cpu_scratch {
    float *data;          // (threads, per_thread)
    int threads;
    int64_t per_thread;
} loom_cpu_scratch;

// Floats per thread the attention kernels need for Tq query rows attending to at most Tkv keys
// (forward) or for the backward over T = Tq = Tkv.
int64_t loom_cpu_attention_scratch_floats(int64_t Tq, int64_t Tkv, int backward);

// q (B, T, Hq*D), k and v (B, T, Hkv*D), out (B, T, Hq*D), lse (B, Hq, T) the log-sum-exp of each
// scaled score row (saved for backward). Query head h uses key/value head h / (Hq / Hkv)
// (Hugging Face repeat_kv). Scores are scaled by 1/sqrt(D); causal mask (key t <= query s).
// Work is O(T^2 D) per head; no (B, H, T, T) buffer exists: at most a (rows-block x T) scratch
// per thread, allocated inside the call (once per call, not per head).
void loom_cpu_attention_forward(float *out, float *lse, const float *q, const float *k,
                                const float *v, int64_t B, int64_t T, int64_t Hq, int64_t Hkv,
                                int64_t D, const loom_cpu_scratch *scratch);
// Flash-style backward: probabilities recomputed from lse, O(T^2 D) per head.
// dq (B,T,Hq*D), dk, dv (B,T,Hkv*D); gradients of the query heads sharing one kv head are summed.
void loom_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                 const float *q, const float *k, const float *v,
                                 const float *out, const float *lse, int64_t B, int64_t T,
                                 int64_t Hq, int64_t Hkv, int64_t D,
                                 int acc_dq, int acc_dk, int acc_dv,
                                 const loom_cpu_scratch *scratch);
// Inference with a key/value cache. q (B, Tq, Hq*D) holds the queries at positions
// pos0 .. pos0+Tq-1; k_cache, v_cache (B, Tmax, Hkv*D) already hold keys/values for positions
// 0 .. pos0+Tq-1. Causal: query at position p sees keys 0..p. out (B, Tq, Hq*D).
void loom_cpu_attention_cached_forward(float *out, const float *q, const float *k_cache,
                                       const float *v_cache, int64_t B, int64_t Tq, int64_t Tmax,
                                       int64_t pos0, int64_t Hq, int64_t Hkv, int64_t D,
                                       const loom_cpu_scratch *scratch);

// ---- fused softmax cross-entropy ------------------------------------------------------------------

// logits (N, V), targets (N); rows whose target == ignore_index contribute nothing.
// lse (N) saved for backward; losses (N) per-row loss (0 for ignored rows).
// Returns nothing; the caller reduces: mean loss = sum(losses) / count(non-ignored).
void loom_cpu_cross_entropy_forward(float *losses, float *lse, const float *logits,
                                    const int32_t *targets, int64_t N, int64_t V,
                                    int32_t ignore_index);
// dlogits (N, V) = scale * (softmax(logits) - onehot(target)) for non-ignored rows, 0 otherwise.
// The caller passes scale = dloss / count.
void loom_cpu_cross_entropy_backward(float *dlogits, const float *logits, const float *lse,
                                     const int32_t *targets, int64_t N, int64_t V,
                                     int32_t ignore_index, float scale, int acc);

// ---- shared math (internal to the kernels) -------------------------------------------------------

// out[i] = exp(x[i] * scale + shift), accurate to about 1 ulp and vectorizable; returns the sum
// of the results in a fixed order. out may alias x, or be NULL when only the sum is wanted.
double loom_cpu__exp_affine(float *out, const float *x, float scale, float shift, int64_t n);

// ---- optimizers and reductions --------------------------------------------------------------------

// Deterministic sum of squares (fixed blocking, fp64 accumulation).
double loom_cpu_sum_squares(const float *x, int64_t n);
// In-place scale.
void loom_cpu_scale(float *x, float s, int64_t n);

// AdamW, PyTorch semantics (torch.optim.AdamW, amsgrad=False):
//   p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   mhat = m / (1 - b1^t);  vhat = v / (1 - b2^t);  p -= lr * mhat / (sqrt(vhat) + eps)
// t is the 1-based step. grad_scale multiplies g first (clipping).
// Follow torch's arithmetic order exactly (see torch/optim/adamw.py _single_tensor_adamw):
//   step_size = lr / bias_correction1; denom = sqrt(v) / sqrt(bias_correction2) + eps;
//   p = p - step_size * m / denom.
void loom_cpu_adamw_update(float *param, const float *grad, float *m, float *v, int64_t n,
                           float lr, float beta1, float beta2, float eps, float weight_decay,
                           int64_t t, float grad_scale);
// SGD with optional momentum (torch.optim.SGD, dampening 0, nesterov false):
//   g' = grad_scale * g + wd * p; buf = momentum * buf + g' (buf = g' at t == 1); p -= lr * buf.
// buf may be NULL when momentum == 0.
void loom_cpu_sgd_update(float *param, const float *grad, float *buf, int64_t n, float lr,
                         float momentum, float weight_decay, int64_t t, float grad_scale);

#endif // LOOM_CPU_KERNELS_H
