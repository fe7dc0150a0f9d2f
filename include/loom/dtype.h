// Element types of loom tensors and of the files loom reads and writes.

#ifndef LOOM_DTYPE_H
#define LOOM_DTYPE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Append-only: new types go before LOOM_DTYPE_COUNT.
typedef enum loom_dtype {
    LOOM_DTYPE_F32 = 0,
    LOOM_DTYPE_F16,
    LOOM_DTYPE_BF16,
    LOOM_DTYPE_I32,
    LOOM_DTYPE_I64,
    LOOM_DTYPE_U16,
    LOOM_DTYPE_COUNT
} loom_dtype;

// Bytes per element.
size_t loom_dtype_size(loom_dtype t);
// Name as safetensors spells it ("F32", "BF16", ...).
const char *loom_dtype_name(loom_dtype t);

// Largest tensor rank loom handles.
#define LOOM_MAX_DIMS 6

#ifdef __cplusplus
}
#endif
#endif // LOOM_DTYPE_H
