// Sharded training checkpoints: every rank writes its slices of the global tensors (parameters
// and optimizer state); any block of any tensor can be read back under another parallel plan.

#ifndef LOOM_CHECKPOINT_H
#define LOOM_CHECKPOINT_H

#include "loom/dtype.h"
#include "loom/status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- format ----------------------------------------------------------------------------------
//
// A sharded checkpoint is a directory DIR:
//
//   DIR/shard-RRRRR-of-NNNNN.safetensors   one per rank (RRRRR = rank, NNNNN = world, 5 digits)
//   DIR/checkpoint.json                    written last, by rank 0, once every shard is written
//
// Each shard is a safetensors file whose F32 tensors are the rank's local slices, named as the
// global tensors ("h.0.attn.c_attn.weight", "optim.m.h.0.attn.c_attn.weight", "optim.v.<name>").
// A tensor may be split along any dims into contiguous blocks, replicated on several ranks, or
// both. The file's "__metadata__" holds (all values are strings, as safetensors requires):
//   "loom.format"  "loom-shard-1"
//   "loom.rank", "loom.world", "loom.step"   decimal integers (step = optimizer steps taken)
//   "loom.slices"  JSON {name: {"global_shape": [...], "offset": [...]}}; the slice covers
//                  [offset, offset + shape) of the global tensor, shape being the stored one
//   "loom.crc32"   JSON {name: CRC-32 (zlib) of the slice's raw little-endian bytes}
//   "loom.config"  the model's config.json text (the same on every rank), when given
//   "loom.extra"   free JSON text (e.g. data-loader position), when given
// checkpoint.json is {"format": "loom-checkpoint-1", "world": N, "step": K,
// "shards": ["shard-00000-of-0000N.safetensors", ...]} in rank order. A directory without it is
// an incomplete save. Where several shards hold the same element, readers take the lowest rank.
//
// A merged checkpoint (loom_checkpoint_merge) is a Hugging Face style directory: config.json,
// model.safetensors (every tensor not named "optim.*", in full) and optimizer.safetensors (the
// "optim.*" tensors, in full; "__metadata__" {"format": "pt", "step": K} plus "loom.extra" and
// "loom.names" = JSON {file name: loom name} for the tensors file_name_fn renamed).

// One local slice a rank saves: elements [offset, offset + shape) of a global tensor of shape
// global_shape, stored row-major and contiguous in `data` (prod(shape) floats).
typedef struct loom_shard_tensor {
    const char *name;
    int ndim;
    int64_t global_shape[LOOM_MAX_DIMS];
    int64_t offset[LOOM_MAX_DIMS];
    int64_t shape[LOOM_MAX_DIMS];
    const float *data;
} loom_shard_tensor;

// Who writes the shard and what goes into its metadata. config_json and extra_json must be
// valid JSON text, or NULL to leave them out.
typedef struct loom_shard_info {
    int rank, world;
    int64_t step;
    const char *config_json;
    const char *extra_json;
} loom_shard_info;

// ---- writing ---------------------------------------------------------------------------------

// Write rank info->rank's shard DIR/shard-RRRRR-of-NNNNN.safetensors atomically, creating DIR
// (its parent must exist) and removing a stale DIR/checkpoint.json, so that a directory being
// overwritten never looks complete. Every slice must lie inside its global shape
// (LOOM_ERR_SHAPE); other bad arguments give LOOM_ERR_INVALID, write failures LOOM_ERR_IO.
loom_status loom_checkpoint_write_shard(const char *dir, const loom_shard_info *info, int n,
                                        const loom_shard_tensor *tensors);
// On rank 0 once every rank's write_shard returned (the caller synchronizes): check that every
// shard exists (LOOM_ERR_NOT_FOUND) and agrees on format, world, step and global shapes
// (LOOM_ERR_FORMAT), then write DIR/checkpoint.json atomically. Data checksums are not read.
loom_status loom_checkpoint_commit(const char *dir, int world, int64_t step);

// ---- reading ---------------------------------------------------------------------------------

typedef struct loom_checkpoint *loom_checkpoint_t;

// Open a committed sharded directory or a merged (Hugging Face style) one; both read the same
// way. Headers and metadata are validated here; each slice's checksum on its first read.
// LOOM_ERR_NOT_FOUND for a directory without checkpoint.json or model.safetensors ("incomplete")
// or a missing shard, LOOM_ERR_FORMAT for malformed or inconsistent files.
loom_status loom_checkpoint_open(const char *dir, loom_checkpoint_t *out);
// Unmap and free. NULL is fine.
void loom_checkpoint_close(loom_checkpoint_t c);
// Optimizer steps taken when the checkpoint was written (0 for a merged one without
// optimizer.safetensors).
int64_t loom_checkpoint_step(loom_checkpoint_t c);
// The model's config.json text, or NULL if the checkpoint has none. Borrowed until close.
const char *loom_checkpoint_config_json(loom_checkpoint_t c);
// The "loom.extra" JSON text given at write time, or NULL. Borrowed until close.
const char *loom_checkpoint_extra_json(loom_checkpoint_t c);
// Number of distinct global tensors (0 for NULL).
int loom_checkpoint_count(loom_checkpoint_t c);
// The i-th global tensor in name order (NULL when i is out of range); *ndim and global_shape
// (LOOM_MAX_DIMS entries) receive its global shape when not NULL. Borrowed until close.
const char *loom_checkpoint_name(loom_checkpoint_t c, int i, int *ndim, int64_t *global_shape);
// 1 if the checkpoint holds global tensor `name`, 0 otherwise.
int loom_checkpoint_has(loom_checkpoint_t c, const char *name);
// Copy block [offset, offset + shape) of tensor `name` into dst (prod(shape) floats, row-major),
// assembled from whichever slices cover it, whatever plan wrote them; NULL offset means zeros,
// NULL shape the rest. LOOM_ERR_NOT_FOUND (no such tensor), LOOM_ERR_SHAPE (ndim, block outside),
// LOOM_ERR_FORMAT (elements in no shard, checksum failure). One thread per handle at a time.
loom_status loom_checkpoint_read(loom_checkpoint_t c, const char *name, int ndim,
                                 const int64_t *offset, const int64_t *shape, float *dst);

// ---- merging ---------------------------------------------------------------------------------

// Merge the checkpoint in shard_dir into out_dir (created; its parent must exist) as described
// above, each file atomically; every slice's checksum is checked, replicas must agree
// (LOOM_ERR_FORMAT). file_name_fn(name, buf, cap) names a tensor in the files (GPT-2 adds
// "transformer."; for "optim.<slot>.<param>" it maps <param>); NULL keeps the names.
loom_status loom_checkpoint_merge(const char *shard_dir, const char *out_dir,
                                  const char *(*file_name_fn)(const char *name, char *buf,
                                                              size_t cap));

#ifdef __cplusplus
}
#endif
#endif // LOOM_CHECKPOINT_H
