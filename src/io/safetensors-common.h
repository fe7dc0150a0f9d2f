// Internal helpers shared by the safetensors reader and writer: file names, byte sizes of
// shapes, and shape formatting for messages.

#ifndef LOOM_IO_SAFETENSORS_COMMON_H
#define LOOM_IO_SAFETENSORS_COMMON_H

#include "loom/dtype.h"

#include <stdint.h>
#include <stdio.h>

#define LOOM_ST_SINGLE_NAME "model.safetensors"
#define LOOM_ST_INDEX_NAME "model.safetensors.index.json"
#define LOOM_ST_METADATA_KEY "__metadata__"
// The reference implementation's limit; larger headers mean a corrupt or hostile file.
#define LOOM_ST_MAX_HEADER_BYTES 100000000ull

// Bytes of a tensor of `ndim` dims and element type `dtype` into *out. Returns 0, or -1 when
// a dimension is negative or the size overflows 2^62.
static inline int loom__st_nbytes(int ndim, const int64_t *shape, loom_dtype dtype, uint64_t *out) {
    const uint64_t limit = (uint64_t)1 << 62;
    uint64_t n = loom_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        uint64_t d = (uint64_t)shape[i];
        if (d != 0 && n > limit / d) return -1;
        n *= d;
    }
    *out = n;
    return 0;
}

// "[64, 192]" into buf (truncated to cap). Returns buf.
static inline const char *loom__st_format_shape(char *buf, size_t cap, int ndim,
                                                const int64_t *shape) {
    size_t len = 0;
    buf[0] = '\0';
    len += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? ", " : "",
                                (long long)shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
    return buf;
}

#endif // LOOM_IO_SAFETENSORS_COMMON_H
