// Moving blocks between a full tensor and one rank's shard of it (Shard placements: one dim
// viewed as (chunks, n) and split along n into `parts` equal blocks).

#ifndef LOOM_PLAN_SHARD_H
#define LOOM_PLAN_SHARD_H

#include <stdint.h>

typedef struct loom_shard_layout {
    int64_t outer;   // product of the dims before `dim`, times chunks
    int64_t block;   // elements of one shard's run along `dim` (n / parts) ...
    int64_t inner;   // ... times the product of the dims after `dim`: floats per run
    int parts;       // shards along the dim
} loom_shard_layout;

// Layout of a (full) shape split along `dim` (chunks, parts).
loom_shard_layout loom__shard_layout(int ndim, const int64_t *full_shape, int dim, int chunks,
                                     int parts);
// local (outer, block*inner) <-> full (outer, parts*block*inner) at shard `index`.
// to_local: local (+)= full's shard; else full's shard (+)= local (acc: add, else copy).
void loom__shard_copy(const loom_shard_layout *l, int index, float *local, float *full,
                      int to_local, int acc);

#endif // LOOM_PLAN_SHARD_H
