// Element type sizes and names.

#include "loom/dtype.h"

size_t loom_dtype_size(loom_dtype t) {
    switch (t) {
    case LOOM_DTYPE_F32: return 4;
    case LOOM_DTYPE_F16: return 2;
    case LOOM_DTYPE_BF16: return 2;
    case LOOM_DTYPE_I32: return 4;
    case LOOM_DTYPE_I64: return 8;
    case LOOM_DTYPE_U16: return 2;
    case LOOM_DTYPE_COUNT: break;
    }
    return 0;
}

const char *loom_dtype_name(loom_dtype t) {
    switch (t) {
    case LOOM_DTYPE_F32: return "F32";
    case LOOM_DTYPE_F16: return "F16";
    case LOOM_DTYPE_BF16: return "BF16";
    case LOOM_DTYPE_I32: return "I32";
    case LOOM_DTYPE_I64: return "I64";
    case LOOM_DTYPE_U16: return "U16";
    case LOOM_DTYPE_COUNT: break;
    }
    return "?";
}
