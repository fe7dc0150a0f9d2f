// Checked allocation wrappers: every allocation in the library goes through these.

#include "core/core.h"

#include <string.h>

void *loom__malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) loom__error(LOOM_ERR_NOMEM, "out of memory allocating %zu bytes", n);
    return p;
}

void *loom__calloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) loom__error(LOOM_ERR_NOMEM, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *loom__realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) loom__error(LOOM_ERR_NOMEM, "out of memory reallocating %zu bytes", n);
    return q;
}

void *loom__malloc_aligned(size_t n) {
    void *p = NULL;
    size_t rounded = (n + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0) {
        loom__error(LOOM_ERR_NOMEM, "out of memory allocating %zu aligned bytes", n);
        return NULL;
    }
    return p;
}

void loom__free_aligned(void *p) { free(p); }

void loom__free(void *p) { free(p); }

char *loom__strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = loom__malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
