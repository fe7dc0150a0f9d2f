// Minimal test helpers: typed checks that print file:line, a pass/fail tally, and the
// closing "N passed, N failed" line that CI reads. Exit 77 means "skipped".

#ifndef LOOM_TESTUTIL_H
#define LOOM_TESTUTIL_H

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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

// Run `fn` in a child process (it may crash); returns its exit status, or 128 + signal. Probes
// return 0 when the library behaves, 3 when it returns the wrong result; a sanitizer abort
// shows up as 1.
static inline int tu_in_child(int (*fn)(void)) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) _exit(fn());
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The environment of a test that starts itself under mpirun: allowed as root (CI containers),
// no single-copy transport, one OpenMP thread per process, and no LeakSanitizer (OpenMPI keeps
// allocations past MPI_Finalize, many in unloaded plugins no suppression can name; the local
// tests cover loom's side with leak checks on). Other ASAN_OPTIONS are kept.
static inline void tu_mpi_environment(void) {
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 1);
    setenv("OMP_NUM_THREADS", "1", 1);
    char asan[512];
    const char *old = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof asan, "%s%sdetect_leaks=0", old ? old : "", old && *old ? ":" : "");
    setenv("ASAN_OPTIONS", asan, 1);
}

#endif // LOOM_TESTUTIL_H
