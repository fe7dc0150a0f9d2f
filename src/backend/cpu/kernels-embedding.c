// Embedding lookup (row gather) and its deterministic scatter-add backward.

#include "backend/cpu/kernels.h"

#include <string.h>

enum { PARALLEL_MIN_ELEMS = 1 << 15 };
// Columns of dweight owned by one work item of the backward scatter.
enum { SCATTER_COLS = 64 };

void loom_cpu_embedding_forward(float *out, const int32_t *idx, const float *weight,
                                int64_t N, int64_t V, int64_t C) {
    (void)V;
    #pragma omp parallel for schedule(static) if (N * C > PARALLEL_MIN_ELEMS)
    for (int64_t n = 0; n < N; n++)
        memcpy(out + n * C, weight + (int64_t)idx[n] * C, (size_t)C * sizeof(float));
}

void loom_cpu_embedding_backward(float *dweight, const float *dout, const int32_t *idx,
                                 int64_t N, int64_t V, int64_t C, int acc) {
    const int64_t nblocks = (C + SCATTER_COLS - 1) / SCATTER_COLS;
    #pragma omp parallel if (N * C > PARALLEL_MIN_ELEMS || (!acc && V * C > PARALLEL_MIN_ELEMS))
    {
        if (!acc) {
            #pragma omp for schedule(static)
            for (int64_t v = 0; v < V; v++) memset(dweight + v * C, 0, (size_t)C * sizeof(float));
        }
        // Each work item owns a column range of every dweight row and scans n in increasing
        // order, so rows with equal indices are summed in the same order whatever the threads.
        #pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblocks; blk++) {
            const int64_t c0 = blk * SCATTER_COLS;
            const int64_t width = C - c0 < SCATTER_COLS ? C - c0 : SCATTER_COLS;
            for (int64_t n = 0; n < N; n++) {
                float *dst = dweight + (int64_t)idx[n] * C + c0; // (V, C) row idx[n]
                const float *src = dout + n * C + c0;            // (N, C) row n
                for (int64_t c = 0; c < width; c++) dst[c] += src[c];
            }
        }
    }
}
