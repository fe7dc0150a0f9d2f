// Fused softmax cross-entropy over a vocabulary: forward saves each row's log-sum-exp, backward
// rebuilds the softmax from it. Threaded over rows, vectorized exp within a row.

#include "backend/cpu/kernels.h"

#include <math.h>
#include <string.h>


// Rows parallelize once a call has this many logits.
enum { PARALLEL_MIN_ELEMS = 1 << 15 };
// Columns per pass of the backward (its probabilities stay in L1).
enum { CHUNK = 2048 };

static float row_max(const float *x, int64_t n) {
    float m = -INFINITY;
    #pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

void loom_cpu_cross_entropy_forward(float *losses, float *lse, const float *logits,
                                    const int32_t *targets, int64_t N, int64_t V,
                                    int32_t ignore_index) {
    #pragma omp parallel for schedule(static) if (N * V > PARALLEL_MIN_ELEMS)
    for (int64_t n = 0; n < N; n++) {
        const float *x = logits + n * V; // (V)
        const float m = row_max(x, V);
        const double sum = loom_cpu__exp_affine(NULL, x, 1.0f, -m, V);
        const float row_lse = m + (float)log(sum);
        lse[n] = row_lse;
        losses[n] = targets[n] == ignore_index ? 0.0f : row_lse - x[targets[n]];
    }
}

void loom_cpu_cross_entropy_backward(float *dlogits, const float *logits, const float *lse,
                                     const int32_t *targets, int64_t N, int64_t V,
                                     int32_t ignore_index, float scale, int acc) {
    #pragma omp parallel for schedule(static) if (N * V > PARALLEL_MIN_ELEMS)
    for (int64_t n = 0; n < N; n++) {
        const float *x = logits + n * V; // (V)
        float *dx = dlogits + n * V;     // (V)
        const int32_t target = targets[n];
        if (target == ignore_index) {
            if (!acc) memset(dx, 0, (size_t)V * sizeof(float));
            continue;
        }
        for (int64_t c0 = 0; c0 < V; c0 += CHUNK) {
            const int64_t len = V - c0 < CHUNK ? V - c0 : CHUNK;
            float prob[CHUNK]; // softmax of this chunk, minus the one-hot target
            loom_cpu__exp_affine(prob, x + c0, 1.0f, -lse[n], len);
            if (target >= c0 && target < c0 + len) prob[target - c0] -= 1.0f;
            if (acc) for (int64_t i = 0; i < len; i++) dx[c0 + i] += scale * prob[i];
            else     for (int64_t i = 0; i < len; i++) dx[c0 + i] = scale * prob[i];
        }
    }
}
