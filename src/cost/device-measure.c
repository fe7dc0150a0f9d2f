// Measuring this machine for its "cpu" device spec: OpenBLAS SGEMM rates (one thread and all),
// a STREAM-style triad for memory bandwidth, and latency and bandwidth of the `local`
// communicator's all-reduce and all-gather, fitted to the collective model.

#include "loom/comm.h"
#include "loom/device.h"

#include "core/core.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

loom_device_measure_config loom_device_measure_config_default(void) {
    return (loom_device_measure_config){.quick = 0, .threads = 0};
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void progress(const loom_device_measure_config *cfg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void progress(const loom_device_measure_config *cfg, const char *fmt, ...) {
    if (!cfg->progress) return;
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    cfg->progress(line, cfg->user);
}

// ---- the machine --------------------------------------------------------------------------------

static void read_cpu_model(char *buf, size_t cap) {
    buf[0] = '\0';
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        const char *p = strchr(line, ':');
        if (!p) break;
        for (p++; *p == ' ' || *p == '\t'; p++) {
        }
        snprintf(buf, cap, "%s", p);
        size_t n = strlen(buf);
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = '\0';
        break;
    }
    fclose(f);
}

// MemTotal of /proc/meminfo in bytes; 0 when unknown.
static uint64_t read_ram_bytes(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kib = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemTotal: %llu kB", &kib) == 1) break;
    fclose(f);
    return (uint64_t)kib * 1024;
}

// ---- SGEMM --------------------------------------------------------------------------------------

static float *random_floats(size_t n, uint32_t seed) {
    float *x = loom__malloc_aligned(n * sizeof(float));
    if (!x) return NULL;
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
    return x;
}

// Best FLOP/s of `reps` runs of C = A B (n x n), after one warm-up run, on `threads` threads.
static double sgemm_rate(int n, int threads, int reps, const float *a, const float *b, float *c) {
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                    c, n);
        double t = now_s() - t0;
        if (r > 0 && t < best) best = t;
    }
    return 2.0 * (double)n * (double)n * (double)n / best;
}

// ---- memory bandwidth ---------------------------------------------------------------------------

// Best bytes/s of `reps` passes of a[i] = b[i] + 3 c[i] over n floats on `threads` threads,
// counting 12 bytes per element as STREAM does (two reads, one write).
static double triad_rate(float *a, const float *b, const float *c, size_t n, int threads,
                         int reps) {
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t0 = now_s();
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (size_t i = 0; i < n; i++) a[i] = b[i] + 3.0f * c[i];
        double t = now_s() - t0;
        if (r > 0 && t < best) best = t;
    }
    volatile float sink = a[n / 2];
    (void)sink;
    return 12.0 * (double)n / best;
}

// ---- collectives --------------------------------------------------------------------------------

enum { T_AR_SMALL, T_AR_LARGE, T_AG_SMALL, T_AG_LARGE, T_COUNT };

typedef struct comm_job {
    loom_comm_t comm;
    size_t small_count, large_count;  // floats of the full vector; multiples of the rank count
    int reps_small, reps_large;
    double seconds[T_COUNT];          // per call: best of three timed loops
    loom_status status;
    char error[512];
} comm_job;

static loom_status run_collective(comm_job *j, int test, float *send, float *recv) {
    int n = loom_comm_size(j->comm);
    int large = test == T_AR_LARGE || test == T_AG_LARGE;
    size_t count = large ? j->large_count : j->small_count;
    int reps = large ? j->reps_large : j->reps_small;
    double best = 1e30;
    for (int trial = 0; trial < 4; trial++) {  // trial 0 warms up
        int calls = trial == 0 ? 2 : reps;
        LOOM_CHECK(loom_comm_barrier(j->comm));
        double t0 = now_s();
        for (int i = 0; i < calls; i++) {
            if (test == T_AR_SMALL || test == T_AR_LARGE)
                LOOM_CHECK(loom_comm_all_reduce(j->comm, send, recv, count, LOOM_DTYPE_F32,
                                                LOOM_REDUCE_SUM));
            else
                LOOM_CHECK(loom_comm_all_gather(j->comm, send, recv, count / (size_t)n,
                                                LOOM_DTYPE_F32));
        }
        double t = (now_s() - t0) / calls;
        if (trial > 0 && t < best) best = t;
    }
    j->seconds[test] = best;
    return LOOM_OK;
}

static void *comm_rank_main(void *arg) {
    comm_job *j = arg;
    float *send = random_floats(j->large_count, 7u + (uint32_t)loom_comm_rank(j->comm));
    float *recv = loom__malloc_aligned(j->large_count * sizeof(float));
    loom_status st = send && recv ? LOOM_OK : LOOM_ERR_NOMEM;
    for (int t = 0; t < T_COUNT && st == LOOM_OK; t++) st = run_collective(j, t, send, recv);
    if (st < 0) {
        snprintf(j->error, sizeof j->error, "%s", loom_last_error());
        loom_comm_abort(j->comm, j->error);  // the other ranks fail at once instead of waiting
    }
    j->status = st;
    loom__free_aligned(send);
    loom__free_aligned(recv);
    return NULL;
}

// Fit alpha and B_w of the collective model (t = steps alpha + volume S / B_w) to a small and a
// large measurement.
static loom_device_link fit_link(double t_small, double t_large, loom_collective kind, int n,
                                 double large_bytes) {
    double steps, factor;
    loom_collective_ring(kind, n, &steps, &factor);
    loom_device_link l;
    l.latency = t_small / steps;
    double t_bw = t_large - steps * l.latency;
    if (t_bw < 0.5 * t_large) t_bw = 0.5 * t_large;  // latency-bound large size: stay finite
    l.bandwidth = factor * large_bytes / t_bw;
    return l;
}

static loom_status measure_comm(int n, int quick, loom_device_comm_result *out) {
    comm_job jobs[64];
    loom_comm_t comms[64];
    pthread_t threads[64];
    if (n < 2 || n > 64) return loom__error(LOOM_ERR_INVALID, "measuring %d ranks (2..64)", n);
    size_t small = 64, large = quick ? ((size_t)1 << 20) : ((size_t)8 << 20);  // floats
    small = (small + (size_t)n - 1) / (size_t)n * (size_t)n;
    large = large / (size_t)n * (size_t)n;
    loom_comm_config cc = loom_comm_config_default();
    LOOM_CHECK(loom_comm_local_create_all(n, &cc, comms));
    int started = 0;
    for (int r = 0; r < n; r++) {
        jobs[r] = (comm_job){.comm = comms[r], .small_count = small, .large_count = large,
                             .reps_small = quick ? 100 : 500, .reps_large = quick ? 3 : 10};
        if (pthread_create(&threads[r], NULL, comm_rank_main, &jobs[r]) != 0) break;
        started++;
    }
    if (started < n) loom_comm_abort(comms[0], "could not start the rank threads");
    for (int r = 0; r < started; r++) pthread_join(threads[r], NULL);
    for (int r = 0; r < n; r++) loom_comm_destroy(comms[r]);
    if (started < n)
        return loom__error(LOOM_ERR_INTERNAL, "could not start %d rank threads", n);
    for (int r = 0; r < n; r++)
        if (jobs[r].status < 0)
            return loom__error(jobs[r].status, "local %d-rank collectives, rank %d: %s", n, r,
                               jobs[r].error);
    const double *s = jobs[0].seconds;
    *out = (loom_device_comm_result){
        .ranks = n,
        .small_bytes = small * sizeof(float),
        .large_bytes = large * sizeof(float),
        .all_reduce_small_s = s[T_AR_SMALL],
        .all_reduce_large_s = s[T_AR_LARGE],
        .all_gather_small_s = s[T_AG_SMALL],
        .all_gather_large_s = s[T_AG_LARGE],
    };
    double bytes = (double)out->large_bytes;
    out->all_reduce = fit_link(s[T_AR_SMALL], s[T_AR_LARGE], LOOM_COLLECTIVE_ALL_REDUCE, n, bytes);
    out->all_gather = fit_link(s[T_AG_SMALL], s[T_AG_LARGE], LOOM_COLLECTIVE_ALL_GATHER, n, bytes);
    return LOOM_OK;
}

// ---- the whole measurement ----------------------------------------------------------------------

static loom_status measure(const loom_device_measure_config *cfg, loom_device_measurement *m) {
    const int quick = cfg->quick;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    m->cores = online > 0 ? (int)online : 1;
    m->threads = cfg->threads > 0 ? cfg->threads : m->cores;
    read_cpu_model(m->cpu_model, sizeof m->cpu_model);
    m->ram_bytes = read_ram_bytes();
    if (m->ram_bytes == 0)
        return loom__error(LOOM_ERR_IO, "cannot read the memory size from /proc/meminfo");
    progress(cfg, "cpu: %s, %d cores, %.1f GiB", m->cpu_model[0] ? m->cpu_model : "(unknown)",
             m->cores, (double)m->ram_bytes / (1 << 30));

    // SGEMM at square sizes; the operands of the largest serve every size (leading dim = n).
    static const int sizes_full[] = {512, 1024, 2048}, sizes_quick[] = {256, 512};
    const int *sizes = quick ? sizes_quick : sizes_full;
    m->n_sgemm = quick ? 2 : 3;
    int nmax = sizes[m->n_sgemm - 1];
    size_t elems = (size_t)nmax * (size_t)nmax;
    float *a = random_floats(elems, 1), *b = random_floats(elems, 2), *c = random_floats(elems, 3);
    loom_status st = a && b && c ? LOOM_OK : LOOM_ERR_NOMEM;
    for (int i = 0; i < m->n_sgemm && st == LOOM_OK; i++) {
        int n = sizes[i], reps = quick ? 2 : 5;
        loom_device_sgemm_result *r = &m->sgemm[i];
        r->n = n;
        r->flops_one = sgemm_rate(n, 1, reps, a, b, c);
        r->flops_all = sgemm_rate(n, m->threads, reps, a, b, c);
        progress(cfg, "sgemm %dx%dx%d: %.1f GFLOP/s on 1 thread, %.1f GFLOP/s on %d", n, n, n,
                 r->flops_one * 1e-9, r->flops_all * 1e-9, m->threads);
    }
    loom__free_aligned(a), loom__free_aligned(b), loom__free_aligned(c);
    LOOM_CHECK(st);

    // Triad over three arrays well beyond the last-level cache.
    size_t n = quick ? ((size_t)8 << 20) : ((size_t)32 << 20);
    float *x = loom__malloc_aligned(n * sizeof(float));
    float *y = loom__malloc_aligned(n * sizeof(float));
    float *z = loom__malloc_aligned(n * sizeof(float));
    if (x && y && z) {
        #pragma omp parallel for num_threads(m->threads) schedule(static)
        for (size_t i = 0; i < n; i++) x[i] = 0, y[i] = 1, z[i] = (float)(i & 7);
        int reps = quick ? 3 : 10;
        m->triad_bytes = 12 * n;
        m->triad_one = triad_rate(x, y, z, n, 1, reps);
        m->triad_all = triad_rate(x, y, z, n, m->threads, reps);
        progress(cfg, "triad over 3 x %zu MB: %.1f GB/s on 1 thread, %.1f GB/s on %d",
                 n * sizeof(float) >> 20, m->triad_one * 1e-9, m->triad_all * 1e-9, m->threads);
    } else {
        st = LOOM_ERR_NOMEM;
    }
    loom__free_aligned(x), loom__free_aligned(y), loom__free_aligned(z);
    LOOM_CHECK(st);

    // The local communicator: 2 ranks, and one rank per core when there are more cores.
    int rank_counts[LOOM_DEVICE_MAX_COMM] = {2, m->cores};
    m->n_comm = m->cores > 2 ? 2 : 1;
    for (int i = 0; i < m->n_comm; i++) {
        int ranks = rank_counts[i] > 64 ? 64 : rank_counts[i];
        loom_device_comm_result *r = &m->comm[i];
        LOOM_CHECK(measure_comm(ranks, quick, r));
        progress(cfg, "local %d ranks: all-reduce %.1f us at %zu B, %.2f ms at %zu MB; "
                 "all-gather %.1f us, %.2f ms", ranks, r->all_reduce_small_s * 1e6,
                 r->small_bytes, r->all_reduce_large_s * 1e3, r->large_bytes >> 20,
                 r->all_gather_small_s * 1e6, r->all_gather_large_s * 1e3);
    }
    return LOOM_OK;
}

// v to 4 significant digits: measurements are not more precise, and the file reads better.
static double round4(double v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%.4g", v);
    return strtod(buf, NULL);
}

static void describe(const loom_device_measure_config *cfg, const loom_device_measurement *m,
                     loom_device_spec *s) {
    *s = (loom_device_spec){.kind = LOOM_DEVICE_CPU, .matmul_efficiency = 1};
    snprintf(s->name, sizeof s->name, "cpu");
    double best_one = 0, best_all = 0;
    for (int i = 0; i < m->n_sgemm; i++) {
        if (m->sgemm[i].flops_one > best_one) best_one = m->sgemm[i].flops_one;
        if (m->sgemm[i].flops_all > best_all) best_all = m->sgemm[i].flops_all;
    }
    s->peak_flops_f32 = round4(best_one);
    s->memory_bytes = m->ram_bytes / (uint64_t)m->cores;
    s->memory_bandwidth = round4(m->triad_all / m->cores);
    s->devices_per_node = m->cores;
    const loom_device_comm_result *c = &m->comm[m->n_comm - 1];
    s->intra_node.bandwidth = round4(c->all_reduce.bandwidth);
    s->intra_node.latency = round4(c->all_reduce.latency);
    char date[32] = "";
    time_t t = time(NULL);
    struct tm tm;
    if (gmtime_r(&t, &tm)) strftime(date, sizeof date, "%Y-%m-%d", &tm);
    snprintf(s->source, sizeof s->source, "measured by 'loom bench devices%s' on %s",
             cfg->quick ? " --quick" : "", date);
    snprintf(s->notes, sizeof s->notes,
             "%s, %d cores, %.1f GiB. One device is one core (a rank with one thread): "
             "peak_flops_f32 is the best one-thread SGEMM rate (all %d threads: %.1f GFLOP/s), "
             "memory a core's share of the RAM and of the %d-thread triad bandwidth (one thread "
             "alone: %.1f GB/s), intra_node the %d-rank all-reduce fit of the local "
             "communicator (all-gather fit: latency %.2f us, bandwidth %.2f GB/s).",
             m->cpu_model[0] ? m->cpu_model : "unknown CPU", m->cores,
             (double)m->ram_bytes / (1 << 30), m->threads, best_all * 1e-9, m->threads,
             m->triad_one * 1e-9, c->ranks, c->all_gather.latency * 1e6,
             c->all_gather.bandwidth * 1e-9);
}

loom_status loom_device_measure(const loom_device_measure_config *cfg, loom_device_spec *spec,
                                loom_device_measurement *m) {
    if (!spec) return loom__error(LOOM_ERR_INVALID, "loom_device_measure: spec is NULL");
    memset(spec, 0, sizeof *spec);
    loom_device_measure_config dflt = loom_device_measure_config_default();
    if (!cfg) cfg = &dflt;
    if (cfg->threads < 0)
        return loom__error(LOOM_ERR_INVALID, "loom_device_measure: threads %d < 0", cfg->threads);
    loom_device_measurement local;
    if (!m) m = &local;
    memset(m, 0, sizeof *m);
    int saved_omp = omp_get_max_threads(), saved_blas = openblas_get_num_threads();
    double t0 = now_s();
    loom_status st = measure(cfg, m);
    omp_set_num_threads(saved_omp);
    openblas_set_num_threads(saved_blas);
    m->seconds = now_s() - t0;
    if (st < 0) {
        loom__error_prefix("measuring this machine");
        return st;
    }
    describe(cfg, m, spec);
    st = loom_device_spec_validate(spec);
    if (st < 0) {
        loom__error_prefix("the measured spec is out of range (a broken measurement?)");
        memset(spec, 0, sizeof *spec);
    }
    return st;
}
