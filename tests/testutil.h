// Minimal test helpers: typed checks that print file:line, a pass/fail tally, and the
// closing "N passed, N failed" line that CI reads. Exit 77 means "skipped".

#ifndef LOOM_TESTUTIL_H
#define LOOM_TESTUTIL_H

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

// Counters shared by every thread of a test (rank threads check too).
static int tu_passed, tu_failed;
static pthread_mutex_t tu_mutex = PTHREAD_MUTEX_INITIALIZER;

#define CHECK(cond) CHECK_MSG(cond, "check failed")

#define CHECK_MSG(cond, ...)                                                       \
    do {                                                                           \
        int tu_ok_ = !!(cond);                                                     \
        pthread_mutex_lock(&tu_mutex);                                             \
        if (tu_ok_) {                                                              \
            tu_passed++;                                                           \
        } else {                                                                   \
            tu_failed++;                                                           \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);        \
            fprintf(stderr, __VA_ARGS__);                                          \
            fputc('\n', stderr);                                                   \
        }                                                                          \
        pthread_mutex_unlock(&tu_mutex);                                           \
    } while (0)

// Status check: `st` must be 0; prints loom_last_error() otherwise.
#define CHECK_OK(expr)                                                             \
    do {                                                                           \
        int tu_st_ = (expr);                                                       \
        CHECK_MSG(tu_st_ == 0, "status %d: %s", tu_st_, loom_last_error());        \
    } while (0)

// Max relative error of a against b: max |a-b| / max(|b|_inf, floor).
static inline double tu_max_rel_err(const float *a, const float *b, size_t n, double floor_) {
    double maxdiff = 0, maxref = floor_;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > maxdiff || d != d) maxdiff = d != d ? INFINITY : d;
        if (fabs((double)b[i]) > maxref) maxref = fabs((double)b[i]);
    }
    return maxdiff / maxref;
}

static inline int tu_finish(void) {
    printf("%d passed, %d failed\n", tu_passed, tu_failed);
    return tu_failed ? 1 : 0;
}

#endif // LOOM_TESTUTIL_H
