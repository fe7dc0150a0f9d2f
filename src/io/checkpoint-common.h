// Internal declarations shared by the checkpoint writer, reader and merger: file and metadata
// names, the index of an opened checkpoint, and the block arithmetic that reassembles slices.

#ifndef LOOM_IO_CHECKPOINT_COMMON_H
#define LOOM_IO_CHECKPOINT_COMMON_H

#include "loom/checkpoint.h"
#include "loom/safetensors.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

#define LOOM_CKPT_INDEX_NAME "checkpoint.json"
#define LOOM_CKPT_FORMAT "loom-checkpoint-1"
#define LOOM_CKPT_SHARD_FORMAT "loom-shard-1"
#define LOOM_CKPT_KEY_FORMAT "loom.format"
#define LOOM_CKPT_KEY_RANK "loom.rank"
#define LOOM_CKPT_KEY_WORLD "loom.world"
#define LOOM_CKPT_KEY_STEP "loom.step"
#define LOOM_CKPT_KEY_SLICES "loom.slices"
#define LOOM_CKPT_KEY_CRC32 "loom.crc32"
#define LOOM_CKPT_KEY_CONFIG "loom.config"
#define LOOM_CKPT_KEY_EXTRA "loom.extra"
// Merged directories.
#define LOOM_CKPT_CONFIG_NAME "config.json"
#define LOOM_CKPT_OPTIMIZER_NAME "optimizer.safetensors"
#define LOOM_CKPT_OPTIM_PREFIX "optim."
#define LOOM_CKPT_KEY_MERGED_STEP "step"
#define LOOM_CKPT_KEY_NAMES "loom.names"

// A block of a global tensor: the elements i with lo[d] <= i[d] < hi[d] in every dim.
typedef struct ckpt_box {
    int64_t lo[LOOM_MAX_DIMS], hi[LOOM_MAX_DIMS];
} ckpt_box;

// One stored slice of a global tensor: tensor `file_name` of sources[source], covering `box`.
typedef struct ckpt_piece {
    int source;
    const char *file_name;  // borrowed from the source's loom_weights_t
    ckpt_box box;
    uint32_t crc32;
    bool has_crc32;  // merged (Hugging Face) files carry no checksums
    bool verified;   // checksum already checked
} ckpt_piece;

typedef struct ckpt_tensor {
    char *name;
    int ndim;
    int64_t global_shape[LOOM_MAX_DIMS];
    ckpt_piece *pieces;  // in rank order: the first piece holding an element is the one read
    int n_pieces, cap_pieces;
} ckpt_tensor;

struct loom_checkpoint {
    char *dir;
    int64_t step;
    char *config_json, *extra_json;  // NULL when absent
    loom_weights_t *sources;  // shards in rank order, or the merged model [and optimizer] files
    int n_sources;
    ckpt_tensor *tensors;  // sorted by name once open succeeds
    int n_tensors, cap_tensors;
};

// "shard-00002-of-00004.safetensors" into buf (at least 64 bytes).
void loom__ckpt_shard_name(char *buf, size_t cap, int rank, int world);
// Open the shards names[0..world) of `dir` as a checkpoint at `step`, checking every header
// and its metadata against rank, world and step. Used by loom_checkpoint_open and commit.
loom_status loom__ckpt_open_shards(const char *dir, int world, int64_t step,
                                   const char *const *names, loom_checkpoint_t *out);
// The tensor named `name`, or NULL.
ckpt_tensor *loom__ckpt_find(loom_checkpoint_t c, const char *name);
// The whole slice of piece p into a new loom__malloc'd array, checksum checked on first use.
loom_status loom__ckpt_load_piece(loom_checkpoint_t c, const ckpt_tensor *t, ckpt_piece *p,
                                  float **out);
// Assemble block `want` of t into dst (row-major over the block), lowest rank first.
loom_status loom__ckpt_assemble(loom_checkpoint_t c, const ckpt_tensor *t, const ckpt_box *want,
                                float *dst);

// The intersection of a and b into *out; false when it is empty.
bool loom__ckpt_box_intersect(const ckpt_box *a, const ckpt_box *b, int ndim, ckpt_box *out);
// Number of elements of b.
int64_t loom__ckpt_box_volume(const ckpt_box *b, int ndim);
// "[1:5, 2:8]" into buf (truncated to cap). Returns buf.
const char *loom__ckpt_format_box(char *buf, size_t cap, const ckpt_box *b, int ndim);

// Called for each contiguous run of `n` elements: at index a_index of array a, b_index of b.
// A nonzero return stops the walk and is returned by loom__ckpt_for_each_run.
typedef int (*ckpt_run_fn)(void *ctx, int64_t a_index, int64_t b_index, int64_t n);
// Walk block `part` (non-empty, inside both boxes) of two row-major arrays laid out over boxes
// a and b, in runs as long as both layouts allow.
int loom__ckpt_for_each_run(const ckpt_box *part, int ndim, const ckpt_box *a, const ckpt_box *b,
                            ckpt_run_fn fn, void *ctx);

// CRC-32 (zlib's polynomial) of n bytes.
static inline uint32_t loom__ckpt_crc32(const void *data, size_t n) {
    return (uint32_t)crc32_z(0L, (const Bytef *)data, n);
}

#endif // LOOM_IO_CHECKPOINT_COMMON_H
