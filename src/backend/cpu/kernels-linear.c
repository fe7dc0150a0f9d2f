// Linear layers and batched matmul: one cblas_sgemm per matrix product (transposes via the
// CBLAS flags, never copies), plus the threaded bias add and deterministic bias-gradient sum.

#include "backend/cpu/kernels.h"

#include <cblas.h>
#include <string.h>

// Below this many elements a pass runs on the calling thread (fork/join would cost more).
enum { PARALLEL_MIN_ELEMS = 1 << 15 };
// Columns per work item of the bias-gradient reduction.
enum { BIAS_GRAD_COLS = 64 };

// Weight operand as CBLAS sees it for out = inp @ weight^T: nn.Linear (N, K) weights are
// transposed by the flag, Conv1D (K, N) weights are used as they are.
static CBLAS_TRANSPOSE weight_trans(int weight_kn) { return weight_kn ? CblasNoTrans : CblasTrans; }
static int64_t weight_ld(int64_t K, int64_t N, int weight_kn) { return weight_kn ? N : K; }

void loom_cpu_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                             int64_t M, int64_t K, int64_t N, int weight_kn) {
    // With a bias, out starts as the broadcast bias and the product is added (beta = 1), as
    // torch's addmm does.
    if (bias) {
        #pragma omp parallel for schedule(static) if (M * N > PARALLEL_MIN_ELEMS)
        for (int64_t m = 0; m < M; m++) memcpy(out + m * N, bias, (size_t)N * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, weight_trans(weight_kn), (int)M, (int)N, (int)K,
                1.0f, inp, (int)K, weight, (int)weight_ld(K, N, weight_kn), bias ? 1.0f : 0.0f,
                out, (int)N);
}

// dbias (N) (+)= sum over rows of dout (M, N). Each work item owns BIAS_GRAD_COLS columns and
// adds the rows in increasing m, in double: the result does not depend on the thread count.
static void bias_grad(float *dbias, const float *dout, int64_t M, int64_t N, int acc) {
    const int64_t nblocks = (N + BIAS_GRAD_COLS - 1) / BIAS_GRAD_COLS;
    #pragma omp parallel for schedule(static) if (M * N > PARALLEL_MIN_ELEMS)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        const int64_t c0 = blk * BIAS_GRAD_COLS;
        const int64_t width = N - c0 < BIAS_GRAD_COLS ? N - c0 : BIAS_GRAD_COLS;
        double sum[BIAS_GRAD_COLS] = { 0 };
        for (int64_t m = 0; m < M; m++) {
            const float *row = dout + m * N + c0;
            for (int64_t c = 0; c < width; c++) sum[c] += (double)row[c];
        }
        for (int64_t c = 0; c < width; c++)
            dbias[c0 + c] = (float)(acc ? (double)dbias[c0 + c] + sum[c] : sum[c]);
    }
}

void loom_cpu_bias_add_forward(float *out, const float *x, const float *bias, int64_t M,
                               int64_t N) {
    #pragma omp parallel for schedule(static) if (M * N > PARALLEL_MIN_ELEMS)
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) out[m * N + n] = x[m * N + n] + bias[n];
}

void loom_cpu_bias_add_backward(float *dx, float *dbias, const float *dout, int64_t M, int64_t N,
                                int acc_dx, int acc_dbias) {
    if (dx) loom_cpu_add_backward(dx, NULL, dout, M * N, acc_dx, 0);
    if (dbias) bias_grad(dbias, dout, M, N, acc_dbias);
}

void loom_cpu_linear_backward(float *dinp, float *dweight, float *dbias,
                              const float *dout, const float *inp, const float *weight,
                              int64_t M, int64_t K, int64_t N, int weight_kn,
                              int acc_dinp, int acc_dweight, int acc_dbias) {
    if (dinp) {
        // dinp (M, K) = dout (M, N) @ W_nk (N, K); a (K, N) weight is W_nk transposed.
        cblas_sgemm(CblasRowMajor, CblasNoTrans, weight_kn ? CblasTrans : CblasNoTrans,
                    (int)M, (int)K, (int)N, 1.0f, dout, (int)N, weight,
                    (int)weight_ld(K, N, weight_kn), acc_dinp ? 1.0f : 0.0f, dinp, (int)K);
    }
    if (dweight) {
        if (weight_kn) {
            // dweight (K, N) = inp^T (K, M) @ dout (M, N)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)N, (int)M, 1.0f,
                        inp, (int)K, dout, (int)N, acc_dweight ? 1.0f : 0.0f, dweight, (int)N);
        } else {
            // dweight (N, K) = dout^T (N, M) @ inp (M, K)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)N, (int)K, (int)M, 1.0f,
                        dout, (int)N, inp, (int)K, acc_dweight ? 1.0f : 0.0f, dweight, (int)K);
        }
    }
    if (dbias) bias_grad(dbias, dout, M, N, acc_dbias);
}

// C[b] (M, N) = op(A[b]) op(B[b]) + beta C[b] for b < Bt. Several products run in parallel
// over the batch, each sgemm single-threaded (OpenBLAS does so inside a parallel region), which
// keeps the result independent of the thread count; a single product uses all threads.
static void batched_sgemm(CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, int64_t Bt,
                          int64_t M, int64_t N, int64_t K, const float *a, int64_t lda,
                          const float *bm, int64_t ldb, float beta, float *c, int64_t ldc) {
    const int64_t stride_a = M * K, stride_b = K * N, stride_c = M * N;
    #pragma omp parallel for schedule(dynamic, 1) if (Bt > 1)
    for (int64_t b = 0; b < Bt; b++) {
        cblas_sgemm(CblasRowMajor, trans_a, trans_b, (int)M, (int)N, (int)K, 1.0f,
                    a + b * stride_a, (int)lda, bm + b * stride_b, (int)ldb, beta,
                    c + b * stride_c, (int)ldc);
    }
}

void loom_cpu_matmul_forward(float *out, const float *a, const float *bm,
                             int64_t Bt, int64_t M, int64_t K, int64_t N) {
    // out (Bt, M, N) = a (Bt, M, K) @ bm (Bt, K, N)
    batched_sgemm(CblasNoTrans, CblasNoTrans, Bt, M, N, K, a, K, bm, N, 0.0f, out, N);
}

void loom_cpu_matmul_backward(float *da, float *dbm, const float *dout, const float *a,
                              const float *bm, int64_t Bt, int64_t M, int64_t K, int64_t N,
                              int acc_da, int acc_dbm) {
    // da (Bt, M, K) = dout (Bt, M, N) @ bm^T
    if (da)
        batched_sgemm(CblasNoTrans, CblasTrans, Bt, M, K, N, dout, N, bm, N,
                      acc_da ? 1.0f : 0.0f, da, K);
    // dbm (Bt, K, N) = a^T (Bt, K, M) @ dout
    if (dbm)
        batched_sgemm(CblasTrans, CblasNoTrans, Bt, K, N, M, a, K, dout, N,
                      acc_dbm ? 1.0f : 0.0f, dbm, N);
}
