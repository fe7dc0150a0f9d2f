// LayerNorm and RMSNorm over the last dim. Both are one "normalize a row" kernel: RMSNorm is
// LayerNorm without centering and without bias, so they share every loop here.

#include "backend/cpu/kernels.h"

#include <math.h>
#include <stddef.h>

// Below this many elements a kernel runs on the calling thread.
enum { PARALLEL_MIN_ELEMS = 1 << 14 };
// Columns per work item of the weight/bias gradient reduction.
enum { PARAM_GRAD_COLS = 64 };

// out (N, C) = (inp - mean) * rstd * weight + bias, per row. mean == NULL gives RMSNorm
// (mean taken as 0, so rstd comes from the mean square; bias NULL).
static void norm_forward(float *out, float *mean, float *rstd, const float *inp,
                         const float *weight, const float *bias, int64_t N, int64_t C,
                         float eps) {
    #pragma omp parallel for schedule(static) if (N * C > PARALLEL_MIN_ELEMS)
    for (int64_t n = 0; n < N; n++) {
        const float *x = inp + n * C; // (C)
        float *y = out + n * C;       // (C)
        float mu = 0.0f;
        if (mean) {
            float sum = 0.0f;
            #pragma omp simd reduction(+ : sum)
            for (int64_t c = 0; c < C; c++) sum += x[c];
            mu = sum / (float)C;
            mean[n] = mu;
        }
        float sumsq = 0.0f;
        #pragma omp simd reduction(+ : sumsq)
        for (int64_t c = 0; c < C; c++) sumsq += (x[c] - mu) * (x[c] - mu);
        const float r = 1.0f / sqrtf(sumsq / (float)C + eps);
        rstd[n] = r;
        if (bias) for (int64_t c = 0; c < C; c++) y[c] = (x[c] - mu) * r * weight[c] + bias[c];
        else      for (int64_t c = 0; c < C; c++) y[c] = (x[c] - mu) * r * weight[c];
    }
}

// dst (=|+=) sum, rounded to fp32 once.
static void store_column_sums(float *dst, const double *sum, int64_t n, int acc) {
    for (int64_t c = 0; c < n; c++) dst[c] = (float)(acc ? dst[c] + sum[c] : sum[c]);
}

// Backward of norm_forward, mean == NULL for RMSNorm. With xhat = (x - mean) rstd and
// g = dout * weight:
//   LayerNorm: dx = rstd (g - mean(g) - xhat mean(g xhat))
//   RMSNorm:   dx = rstd (g - xhat mean(g xhat))
//   dweight = sum_n dout xhat, dbias = sum_n dout.
// dweight/dbias are column-parallel, each column summing its rows in increasing n (in double),
// so they do not depend on the thread count; dinp is row-parallel and comes last, so dinp may
// alias dout or inp.
static void norm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                          const float *inp, const float *weight, const float *mean,
                          const float *rstd, int64_t N, int64_t C,
                          int acc_dinp, int acc_dweight, int acc_dbias) {
    const int64_t nblocks = (C + PARAM_GRAD_COLS - 1) / PARAM_GRAD_COLS;
    #pragma omp parallel if (N * C > PARALLEL_MIN_ELEMS)
    {
        if (dweight || dbias) {
            #pragma omp for schedule(static)
            for (int64_t blk = 0; blk < nblocks; blk++) {
                const int64_t c0 = blk * PARAM_GRAD_COLS;
                const int64_t width = C - c0 < PARAM_GRAD_COLS ? C - c0 : PARAM_GRAD_COLS;
                double sum_w[PARAM_GRAD_COLS] = { 0 }, sum_b[PARAM_GRAD_COLS] = { 0 };
                for (int64_t n = 0; n < N; n++) {
                    const float *x = inp + n * C + c0, *dy = dout + n * C + c0;
                    const float mu = mean ? mean[n] : 0.0f, r = rstd[n];
                    for (int64_t c = 0; c < width; c++) {
                        sum_w[c] += (double)(dy[c] * ((x[c] - mu) * r));
                        sum_b[c] += (double)dy[c];
                    }
                }
                if (dweight) store_column_sums(dweight + c0, sum_w, width, acc_dweight);
                if (dbias) store_column_sums(dbias + c0, sum_b, width, acc_dbias);
            }
        }
        if (dinp) {
            #pragma omp for schedule(static)
            for (int64_t n = 0; n < N; n++) {
                const float *x = inp + n * C, *dy = dout + n * C; // (C)
                float *dx = dinp + n * C;                         // (C)
                const float mu = mean ? mean[n] : 0.0f, r = rstd[n];
                float sum_g = 0.0f, sum_gxhat = 0.0f;
                #pragma omp simd reduction(+ : sum_g, sum_gxhat)
                for (int64_t c = 0; c < C; c++) {
                    const float g = dy[c] * weight[c];
                    sum_g += g;
                    sum_gxhat += g * ((x[c] - mu) * r);
                }
                const float mean_g = mean ? sum_g / (float)C : 0.0f;
                const float mean_gxhat = sum_gxhat / (float)C;
                for (int64_t c = 0; c < C; c++) {
                    const float grad =
                        r * (dy[c] * weight[c] - mean_g - (x[c] - mu) * r * mean_gxhat);
                    dx[c] = acc_dinp ? dx[c] + grad : grad;
                }
            }
        }
    }
}

void loom_cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                const float *weight, const float *bias, int64_t N, int64_t C,
                                float eps) {
    norm_forward(out, mean, rstd, inp, weight, bias, N, C, eps);
}

void loom_cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                 const float *inp, const float *weight, const float *mean,
                                 const float *rstd, int64_t N, int64_t C,
                                 int acc_dinp, int acc_dweight, int acc_dbias) {
    norm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C,
                  acc_dinp, acc_dweight, acc_dbias);
}

void loom_cpu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                              int64_t N, int64_t C, float eps) {
    norm_forward(out, NULL, rstd, inp, weight, NULL, N, C, eps);
}

void loom_cpu_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                               const float *weight, const float *rstd, int64_t N, int64_t C,
                               int acc_dinp, int acc_dweight) {
    norm_backward(dinp, dweight, NULL, dout, inp, weight, NULL, rstd, N, C,
                  acc_dinp, acc_dweight, 0);
}
