// Local communicator benchmark: all-reduce (F32 SUM, out of place) bus bandwidth for 2 and 4
// ranks (threads) at 64 KB..64 MB, as GB/s and as a fraction of one thread's memcpy bandwidth.
// Usage: bench-comm [max_mb]   busbw = 2(n-1)/n * bytes / time, as nccl-tests define it.

#include "loom/comm.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Repetitions so that one measurement moves about 1 GB (at least 5, at most 2000).
static int reps_for(size_t bytes) {
    size_t reps = ((size_t)1 << 30) / bytes;
    return reps < 5 ? 5 : reps > 2000 ? 2000 : (int)reps;
}

// memcpy bandwidth (bytes copied per second) of one thread on buffers of `bytes`.
static double memcpy_bandwidth(size_t bytes) {
    char *src = malloc(bytes), *dst = malloc(bytes);
    if (!src || !dst) {
        free(src);
        free(dst);
        return 0;
    }
    memset(src, 1, bytes);
    memset(dst, 0, bytes);
    int reps = reps_for(bytes);
    memcpy(dst, src, bytes);  // warm-up
    double best = 1e30;
    for (int trial = 0; trial < 3; trial++) {
        double t0 = now_s();
        for (int i = 0; i < reps; i++) {
            src[i % bytes] = (char)i;  // keep the copies from being merged
            memcpy(dst, src, bytes);
        }
        double t = (now_s() - t0) / reps;
        if (t < best) best = t;
    }
    volatile char sink = dst[bytes / 2];
    (void)sink;
    free(src);
    free(dst);
    return (double)bytes / best;
}

typedef struct copy_thread {
    size_t bytes;
    double bandwidth;
} copy_thread;

static void *copy_thread_main(void *arg) {
    copy_thread *t = arg;
    t->bandwidth = memcpy_bandwidth(t->bytes);
    return NULL;
}

// Mean per-thread memcpy bandwidth with n threads copying at once (memory shared by all).
static double concurrent_memcpy_bandwidth(int n, size_t bytes) {
    copy_thread threads[8];
    pthread_t ids[8];
    for (int i = 0; i < n; i++) {
        threads[i] = (copy_thread){.bytes = bytes};
        pthread_create(&ids[i], NULL, copy_thread_main, &threads[i]);
    }
    double sum = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(ids[i], NULL);
        sum += threads[i].bandwidth;
    }
    return sum / n;
}

typedef struct bench_rank {
    loom_comm_t comm;
    size_t bytes;
    int reps;
    double seconds_per_op;  // rank 0: best of three timed loops
    int failed;
} bench_rank;

static void *bench_rank_main(void *arg) {
    bench_rank *b = arg;
    size_t count = b->bytes / sizeof(float);
    float *send = malloc(b->bytes), *recv = malloc(b->bytes);
    if (!send || !recv) {
        fprintf(stderr, "bench-comm: out of memory\n");
        b->failed = 1;  // the other ranks time out on this size and report it
    } else {
        for (size_t i = 0; i < count; i++) send[i] = (float)(i % 1000) * 0.001f;
        memset(recv, 0, b->bytes);
    }
    double best = 1e30;
    for (int trial = 0; trial < 4 && !b->failed; trial++) {  // trial 0 warms up
        int reps = trial == 0 ? 2 : b->reps;
        if (loom_comm_barrier(b->comm) != LOOM_OK) b->failed = 1;
        double t0 = now_s();
        for (int i = 0; i < reps && !b->failed; i++) {
            if (loom_comm_all_reduce(b->comm, send, recv, count, LOOM_DTYPE_F32,
                                     LOOM_REDUCE_SUM) != LOOM_OK) {
                fprintf(stderr, "bench-comm: %s\n", loom_last_error());
                b->failed = 1;
            }
        }
        double t = (now_s() - t0) / reps;
        if (trial > 0 && t < best) best = t;
    }
    b->seconds_per_op = best;
    free(send);
    free(recv);
    return NULL;
}

// Seconds per all-reduce of `bytes` on n ranks (rank 0's view), or a negative value on failure.
static double time_all_reduce(int n, size_t bytes) {
    loom_comm_t comms[8];
    bench_rank ranks[8];
    pthread_t threads[8];
    loom_comm_config cfg = loom_comm_config_default();
    if (loom_comm_local_create_all(n, &cfg, comms) != LOOM_OK) {
        fprintf(stderr, "bench-comm: %s\n", loom_last_error());
        return -1;
    }
    for (int r = 0; r < n; r++) {
        ranks[r] = (bench_rank){.comm = comms[r], .bytes = bytes, .reps = reps_for(bytes)};
        pthread_create(&threads[r], NULL, bench_rank_main, &ranks[r]);
    }
    int failed = 0;
    for (int r = 0; r < n; r++) {
        pthread_join(threads[r], NULL);
        failed |= ranks[r].failed;
        loom_comm_destroy(comms[r]);
    }
    return failed ? -1 : ranks[0].seconds_per_op;
}

int main(int argc, char **argv) {
    size_t max_bytes = (size_t)(argc > 1 ? atoi(argv[1]) : 64) << 20;
    size_t copy_bytes = (size_t)64 << 20;
    double copy_bw = memcpy_bandwidth(copy_bytes);
    printf("memcpy of 64 MB, one thread: %.2f GB/s", copy_bw * 1e-9);
    printf(" (per thread with 2 at once: %.2f, with 4: %.2f)\n\n",
           concurrent_memcpy_bandwidth(2, copy_bytes) * 1e-9,
           concurrent_memcpy_bandwidth(4, copy_bytes) * 1e-9);
    printf("%5s %10s %12s %12s %12s %14s\n", "ranks", "size", "time (us)", "algbw GB/s",
           "busbw GB/s", "busbw/memcpy");
    const int rank_counts[] = {2, 4};
    for (size_t k = 0; k < sizeof rank_counts / sizeof rank_counts[0]; k++) {
        int n = rank_counts[k];
        for (size_t bytes = (size_t)64 << 10; bytes <= max_bytes; bytes *= 4) {
            double t = time_all_reduce(n, bytes);
            char size[32];
            if (bytes >= (size_t)1 << 20) {
                snprintf(size, sizeof size, "%zu MB", bytes >> 20);
            } else {
                snprintf(size, sizeof size, "%zu KB", bytes >> 10);
            }
            if (t <= 0) {
                printf("%5d %10s %12s\n", n, size, "failed");
                continue;
            }
            double algbw = (double)bytes / t, busbw = algbw * 2.0 * (n - 1) / n;
            printf("%5d %10s %12.1f %12.2f %12.2f %14.2f\n", n, size, t * 1e6, algbw * 1e-9,
                   busbw * 1e-9, busbw / copy_bw);
            fflush(stdout);
        }
    }
    return 0;
}
