// Reading and writing safetensors files (Hugging Face format): single files, sharded sets with a
// model.safetensors.index.json, and directories holding either. Files are little-endian.

#ifndef LOOM_SAFETENSORS_H
#define LOOM_SAFETENSORS_H

#include "loom/dtype.h"
#include "loom/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- reading -------------------------------------------------------------------------------

// A set of named tensors from one safetensors file or a sharded set; files stay mapped
// (read-only) until loom_weights_close.
typedef struct loom_weights *loom_weights_t;

// Description of one tensor. `name` and `file` (the safetensors file holding it) are borrowed
// from the loom_weights_t and live until it is closed.
typedef struct loom_tensor_info {
    const char *name;
    loom_dtype dtype;
    int ndim;
    int64_t shape[LOOM_MAX_DIMS];
    const char *file;
} loom_tensor_info;

// Open `path`: a .safetensors file, a *.json sharded index ({"weight_map": {name: shard}}), or a
// directory holding model.safetensors (preferred, as transformers does) or
// model.safetensors.index.json. Every header is validated in full. Errors: LOOM_ERR_NOT_FOUND
// (missing file or shard), LOOM_ERR_FORMAT (malformed header or index, offsets or sizes that
// do not match), LOOM_ERR_UNSUPPORTED (dtype other than F32/F16/BF16/I32/I64/U16), LOOM_ERR_IO.
loom_status loom_weights_open(const char *path, loom_weights_t *out);
// Unmap and free. NULL is fine.
void loom_weights_close(loom_weights_t w);
// Number of tensors (0 for NULL).
int loom_weights_count(loom_weights_t w);
// The i-th tensor in name order (0 <= i < count); LOOM_ERR_INVALID when i is out of range.
loom_status loom_weights_info_at(loom_weights_t w, int i, loom_tensor_info *info);
// Look a tensor up by name. LOOM_ERR_NOT_FOUND: "tensor 'x' not found in <path>", with a
// "did you mean" hint when a name differs only by a leading "prefix." (e.g. "transformer.").
loom_status loom_weights_find(loom_weights_t w, const char *name, loom_tensor_info *info);
// Whether a tensor named `name` exists (false for NULL arguments).
bool loom_weights_has(loom_weights_t w, const char *name);
// The value of `key` in the files' "__metadata__" (first file that has it), or NULL. Borrowed.
const char *loom_weights_metadata(loom_weights_t w, const char *key);
// Copy tensor `name` into `dst` as fp32, converting F16/BF16 exactly. The stored shape must be
// exactly (ndim, shape) (LOOM_ERR_SHAPE otherwise, naming both shapes). LOOM_ERR_NOT_FOUND if
// absent; LOOM_ERR_UNSUPPORTED for integer dtypes. `dst` holds prod(shape) floats.
loom_status loom_weights_read_f32(loom_weights_t w, const char *name, int ndim,
                                  const int64_t *shape, float *dst);
// Same for int32 data: I32 copied, I64 and U16 converted (LOOM_ERR_UNSUPPORTED for I64 values
// outside the int32 range and for float dtypes).
loom_status loom_weights_read_i32(loom_weights_t w, const char *name, int ndim,
                                  const int64_t *shape, int32_t *dst);
// The path given to loom_weights_open. Borrowed.
const char *loom_weights_path(loom_weights_t w);

// ---- writing -------------------------------------------------------------------------------

// One tensor to write: `data` holds prod(shape) elements of `dtype`, little-endian, contiguous.
typedef struct loom_named_tensor {
    const char *name;
    loom_dtype dtype;
    int ndim;
    int64_t shape[LOOM_MAX_DIMS];
    const void *data;
} loom_named_tensor;

// Write `n` tensors to `path` as given (no conversion), data laid out in the given order.
// meta_kv holds 2*n_meta strings (key, value) for "__metadata__" (may be NULL when n_meta is 0).
// Atomic: written to "<path>.tmp.<pid>", fsynced, renamed over `path`. Errors: LOOM_ERR_INVALID
// (duplicate or empty name, bad dtype/shape, NULL data), LOOM_ERR_IO (path and strerror; the
// temp file is removed).
loom_status loom_safetensors_write(const char *path, int n, const loom_named_tensor *tensors,
                                   int n_meta, const char *const *meta_kv);
// Write a model directory the way transformers does (creating `dir` if missing; its parent must
// exist). When the tensor data fits in max_shard_bytes (or max_shard_bytes is 0): one
// dir/model.safetensors. Otherwise tensors are split in order into
// model-00001-of-0000N.safetensors files of at most max_shard_bytes data bytes each (a larger
// tensor gets a shard of its own) plus model.safetensors.index.json. Every file carries the
// metadata {"format": "pt"}; a stale file of the other layout is removed. Errors as above.
loom_status loom_safetensors_write_sharded(const char *dir, int n, const loom_named_tensor *tensors,
                                           size_t max_shard_bytes);

#ifdef __cplusplus
}
#endif
#endif // LOOM_SAFETENSORS_H
