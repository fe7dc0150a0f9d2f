// Copies between full tensors and their shards, for placements, comm ops and checkpoints.

#include "plan/shard.h"

#include <string.h>

loom_shard_layout loom__shard_layout(int ndim, const int64_t *full_shape, int dim, int chunks,
                                     int parts) {
    loom_shard_layout l = {1, 1, 1, parts};
    for (int i = 0; i < dim; i++) l.outer *= full_shape[i];
    l.outer *= chunks;
    for (int i = dim + 1; i < ndim; i++) l.inner *= full_shape[i];
    l.block = full_shape[dim] / chunks / parts;
    return l;
}

void loom__shard_copy(const loom_shard_layout *l, int index, float *local, float *full,
                      int to_local, int acc) {
    const int64_t run = l->block * l->inner;
    #pragma omp parallel for if (l->outer * run > 32768)
    for (int64_t o = 0; o < l->outer; o++) {
        float *lp = local + o * run;
        float *fp = full + (o * l->parts + index) * run;
        float *dst = to_local ? lp : fp;
        const float *src = to_local ? fp : lp;
        if (!acc) memcpy(dst, src, (size_t)run * sizeof(float));
        else for (int64_t i = 0; i < run; i++) dst[i] += src[i];
    }
}
