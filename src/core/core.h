// Internal core helpers shared by every box: error raising, checked allocation, asserts, logging.

#ifndef LOOM_CORE_H
#define LOOM_CORE_H

#include "loom/status.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

// Record a detailed message for the calling thread and return `st`:
//   return loom__error(LOOM_ERR_FORMAT, "%s: header length %llu exceeds file size", path, n);
loom_status loom__error(loom_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
// Prepend context to the current message ("loading model.safetensors: <old message>").
// Returns 0 so it can be used in expressions; the caller returns the original status.
loom_status loom__error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// Propagate a failing status.
#define LOOM_CHECK(expr)                    \
    do {                                    \
        loom_status loom_st_ = (expr);      \
        if (loom_st_ < 0) return loom_st_;  \
    } while (0)
// Jump to a cleanup label on failure, leaving the status in `st`.
#define LOOM_CHECK_GOTO(expr, st, label)    \
    do {                                    \
        (st) = (expr);                      \
        if ((st) < 0) goto label;           \
    } while (0)

// Internal invariants: always on (they guard our own logic, never user input).
void loom__assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));
#define LOOM_ASSERT(x) ((x) ? (void)0 : loom__assert_fail(#x, __FILE__, __LINE__))

// Checked allocation: NULL on failure with LOOM_ERR_NOMEM recorded as the last error.
void *loom__malloc(size_t n);
void *loom__calloc(size_t count, size_t size);
void *loom__realloc(void *p, size_t n);
// 64-byte aligned (for SIMD and cache lines); free with loom__free_aligned.
void *loom__malloc_aligned(size_t n);
void loom__free_aligned(void *p);
void loom__free(void *p);
char *loom__strdup(const char *s);

// Logging to stderr (the library never writes to stdout). LOOM_LOG=debug|info|warn|error.
enum loom_log_level { LOOM_LOG_DEBUG, LOOM_LOG_INFO, LOOM_LOG_WARN, LOOM_LOG_ERROR };
// Mute (on = 1) or unmute (0) this thread's debug, info and warning messages; nests.
void loom__log_mute(int on);
void loom__log(enum loom_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif // LOOM_CORE_H
