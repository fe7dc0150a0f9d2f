// Tests of the local communicator (ranks are threads): every collective at 1, 2, 3, 4 and 8
// ranks against independently computed results (float sums bit-exact in rank order), split,
// point to point (eager sends, order), async all-reduce, abort, timeout, departure and argument
// errors.
// The rank_* checks above LOOM_COMM_TEST_SHARED_ONLY use only the public API; test-comm-mpi.c
// includes this file with that macro defined to run them on MPI processes.

#include "testutil.h"

#include "loom/comm.h"
#include "loom/status.h"

#include <float.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ---- checks from rank threads (testutil's checks are thread-safe) ------------------------------

#define RCHECK CHECK_MSG

#define RCHECK_OK(expr, rank)                                                      \
    do {                                                                           \
        int rc_st_ = (expr);                                                       \
        RCHECK(rc_st_ == 0, "rank %d: status %d: %s", (rank), rc_st_, loom_last_error()); \
    } while (0)

static int has(const char *msg, const char *part) { return strstr(msg, part) != NULL; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ---- per-rank data and independently computed expectations -------------------------------------

static uint32_t mix(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static uint32_t hash2(int r, size_t i, uint32_t salt) {
    return mix((uint32_t)r * 2654435761u ^ mix((uint32_t)i + salt));
}

// Floats of different magnitudes per rank, so the summation order shows in the low bits.
static float f32_value(int r, size_t i, uint32_t salt) {
    return ((float)(hash2(r, i, salt) >> 8) / 16777216.0f - 0.5f) * (1.0f + 37.25f * (float)r);
}

static int32_t i32_value(int r, size_t i, uint32_t salt) {
    return (int32_t)(hash2(r, i, salt) % 2001u) - 1000;
}

static void fill_f32(float *x, size_t n, int r, size_t first, uint32_t salt) {
    for (size_t i = 0; i < n; i++) x[i] = f32_value(r, first + i, salt);
}

static void fill_i32(int32_t *x, size_t n, int r, size_t first, uint32_t salt) {
    for (size_t i = 0; i < n; i++) x[i] = i32_value(r, first + i, salt);
}

// ((x0 op x1) op x2) ... in fp32, the order the contract promises.
static float expect_f32(int nranks, size_t i, uint32_t salt, loom_reduce_op op) {
    float acc = f32_value(0, i, salt);
    for (int r = 1; r < nranks; r++) {
        float x = f32_value(r, i, salt);
        acc = op == LOOM_REDUCE_SUM ? acc + x : (x > acc ? x : acc);
    }
    return acc;
}

static int32_t expect_i32(int nranks, size_t i, uint32_t salt, loom_reduce_op op) {
    int64_t acc = i32_value(0, i, salt);
    for (int r = 1; r < nranks; r++) {
        int64_t x = i32_value(r, i, salt);
        acc = op == LOOM_REDUCE_SUM ? acc + x : (x > acc ? x : acc);
    }
    return (int32_t)acc;
}

// The local transport sums in rank order, so its float sums are checked bit for bit; MPI picks
// its own order (still identical on every rank, which rank_all_reduce checks separately).
static int exact_rank_order = 1;

// Number of elements of got[0..n) that differ from expected element first+i: bitwise, or for
// sums in another order by more than a few roundings of the magnitudes summed.
static size_t mismatches_f32(const float *got, size_t n, int nranks, size_t first, uint32_t salt,
                             loom_reduce_op op) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float want = expect_f32(nranks, first + i, salt, op);
        if (exact_rank_order || op != LOOM_REDUCE_SUM) {
            bad += memcmp(&got[i], &want, sizeof want) != 0;
            continue;
        }
        double magnitude = 0;
        for (int r = 0; r < nranks; r++) magnitude += fabs((double)f32_value(r, first + i, salt));
        bad += fabs((double)got[i] - (double)want) > 2.0 * nranks * FLT_EPSILON * magnitude;
    }
    return bad;
}

// FNV-1a of a buffer, as a non-negative I32 to all-gather.
static int32_t checksum(const void *p, size_t bytes) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < bytes; i++) h = (h ^ ((const unsigned char *)p)[i]) * 16777619u;
    return (int32_t)(h >> 1);
}

// Whether every rank holds the same bytes (all-gathers their checksums).
static int same_on_every_rank(loom_comm_t c, const void *p, size_t bytes) {
    int32_t mine = checksum(p, bytes), all[64];
    int n = loom_comm_size(c);
    if (n > 64 || loom_comm_all_gather(c, &mine, all, 1, LOOM_DTYPE_I32) != LOOM_OK) return 0;
    for (int k = 0; k < n; k++) {
        if (all[k] != mine) return 0;
    }
    return 1;
}

static size_t mismatches_i32(const int32_t *got, size_t n, int nranks, size_t first,
                             uint32_t salt, loom_reduce_op op) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += got[i] != expect_i32(nranks, first + i, salt, op);
    return bad;
}

// ---- collectives --------------------------------------------------------------------------------

static void rank_all_reduce(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c), n = loom_comm_size(c);
    const size_t counts[] = {1, 1037, 100003};  // odd sizes, and several reduction blocks
    for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
        size_t count = counts[ci];
        float *send = malloc(count * sizeof *send), *recv = malloc(count * sizeof *recv);
        float *again = malloc(count * sizeof *again);
        int32_t *isend = malloc(count * sizeof *isend), *irecv = malloc(count * sizeof *irecv);
        for (int op = 0; op < LOOM_REDUCE_COUNT; op++) {
            uint32_t salt = (uint32_t)(ci * 10 + (size_t)op);
            // F32 out of place, twice: bit-exact against the rank-order sum, and run to run.
            fill_f32(send, count, r, 0, salt);
            RCHECK_OK(loom_comm_all_reduce(c, send, recv, count, LOOM_DTYPE_F32, op), r);
            size_t bad = mismatches_f32(recv, count, n, 0, salt, op);
            RCHECK(bad == 0, "n=%d rank %d count %zu op %d: %zu of the F32 results differ", n, r,
                   count, op, bad);
            RCHECK_OK(loom_comm_all_reduce(c, send, again, count, LOOM_DTYPE_F32, op), r);
            RCHECK(memcmp(recv, again, count * sizeof *recv) == 0,
                   "n=%d rank %d: a second run differs", n, r);
            RCHECK(same_on_every_rank(c, recv, count * sizeof *recv),
                   "n=%d rank %d count %zu op %d: ranks hold different results", n, r, count, op);
            // F32 in place.
            fill_f32(recv, count, r, 0, salt);
            RCHECK_OK(loom_comm_all_reduce(c, recv, recv, count, LOOM_DTYPE_F32, op), r);
            bad = mismatches_f32(recv, count, n, 0, salt, op);
            RCHECK(bad == 0, "n=%d rank %d in place: %zu of the F32 results differ", n, r, bad);
            // I32 out of place and in place.
            fill_i32(isend, count, r, 0, salt);
            RCHECK_OK(loom_comm_all_reduce(c, isend, irecv, count, LOOM_DTYPE_I32, op), r);
            bad = mismatches_i32(irecv, count, n, 0, salt, op);
            RCHECK(bad == 0, "n=%d rank %d: %zu of the I32 results differ", n, r, bad);
            RCHECK_OK(loom_comm_all_reduce(c, isend, isend, count, LOOM_DTYPE_I32, op), r);
            RCHECK(memcmp(isend, irecv, count * sizeof *isend) == 0,
                   "n=%d rank %d: I32 in place differs from out of place", n, r);
        }
        free(send);
        free(recv);
        free(again);
        free(isend);
        free(irecv);
    }
}

static void rank_reduce_scatter(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c), n = loom_comm_size(c);
    const size_t counts[] = {1, 1031, 5000};
    for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
        size_t rc = counts[ci], total = rc * (size_t)n;
        uint32_t salt = 100 + (uint32_t)ci;
        float *send = malloc(total * sizeof *send), *recv = malloc(rc * sizeof *recv);
        fill_f32(send, total, r, 0, salt);
        RCHECK_OK(loom_comm_reduce_scatter(c, send, recv, rc, LOOM_DTYPE_F32, LOOM_REDUCE_SUM),
                  r);
        size_t bad = mismatches_f32(recv, rc, n, (size_t)r * rc, salt, LOOM_REDUCE_SUM);
        RCHECK(bad == 0, "n=%d rank %d rc %zu: %zu reduce_scatter results differ", n, r, rc,
               bad);
        // In place: recv is this rank's slice of send.
        RCHECK_OK(loom_comm_reduce_scatter(c, send, send + (size_t)r * rc, rc, LOOM_DTYPE_F32,
                                           LOOM_REDUCE_SUM), r);
        RCHECK(memcmp(send + (size_t)r * rc, recv, rc * sizeof *recv) == 0,
               "n=%d rank %d: in-place reduce_scatter differs", n, r);
        int32_t *isend = malloc(total * sizeof *isend), *irecv = malloc(rc * sizeof *irecv);
        fill_i32(isend, total, r, 0, salt);
        RCHECK_OK(loom_comm_reduce_scatter(c, isend, irecv, rc, LOOM_DTYPE_I32, LOOM_REDUCE_MAX),
                  r);
        bad = mismatches_i32(irecv, rc, n, (size_t)r * rc, salt, LOOM_REDUCE_MAX);
        RCHECK(bad == 0, "n=%d rank %d: %zu I32 max reduce_scatter results differ", n, r, bad);
        free(send);
        free(recv);
        free(isend);
        free(irecv);
    }
}

static void rank_all_gather(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c), n = loom_comm_size(c);
    size_t sc = 777, total = sc * (size_t)n;
    float *send = malloc(sc * sizeof *send), *recv = malloc(total * sizeof *recv);
    fill_f32(send, sc, r, 0, 7);
    RCHECK_OK(loom_comm_all_gather(c, send, recv, sc, LOOM_DTYPE_F32), r);
    size_t bad = 0;
    for (int k = 0; k < n; k++) {
        for (size_t i = 0; i < sc; i++) bad += recv[(size_t)k * sc + i] != f32_value(k, i, 7);
    }
    RCHECK(bad == 0, "n=%d rank %d: %zu all_gather elements differ", n, r, bad);
    // In place: send is this rank's block of recv.
    float *inplace = calloc(total, sizeof *inplace);
    fill_f32(inplace + (size_t)r * sc, sc, r, 0, 7);
    RCHECK_OK(loom_comm_all_gather(c, inplace + (size_t)r * sc, inplace, sc, LOOM_DTYPE_F32), r);
    RCHECK(memcmp(inplace, recv, total * sizeof *recv) == 0,
           "n=%d rank %d: in-place all_gather differs", n, r);
    // BF16 is moved as 2-byte elements.
    uint16_t half[3] = {(uint16_t)(r * 3), (uint16_t)(r * 3 + 1), (uint16_t)(r * 3 + 2)};
    uint16_t *halves = malloc((size_t)n * sizeof half);
    RCHECK_OK(loom_comm_all_gather(c, half, halves, 3, LOOM_DTYPE_BF16), r);
    bad = 0;
    for (int i = 0; i < 3 * n; i++) bad += halves[i] != (uint16_t)i;
    RCHECK(bad == 0, "n=%d rank %d: BF16 all_gather wrong", n, r);
    free(send);
    free(recv);
    free(inplace);
    free(halves);
}

// Element i of the block rank `from` sends to rank `to`.
static int32_t a2a_value(int from, int to, size_t i) { return from * 1000000 + to * 1000 + (int)i; }

static void rank_all_to_all(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c), n = loom_comm_size(c);
    size_t count = 129, total = count * (size_t)n;
    int32_t *send = malloc(total * sizeof *send), *recv = malloc(total * sizeof *recv);
    for (int k = 0; k < n; k++) {
        for (size_t i = 0; i < count; i++) send[(size_t)k * count + i] = a2a_value(r, k, i);
    }
    RCHECK_OK(loom_comm_all_to_all(c, send, recv, count, LOOM_DTYPE_I32), r);
    size_t bad = 0;
    for (int k = 0; k < n; k++) {
        for (size_t i = 0; i < count; i++) bad += recv[(size_t)k * count + i] != a2a_value(k, r, i);
    }
    RCHECK(bad == 0, "n=%d rank %d: %zu all_to_all elements differ", n, r, bad);
    RCHECK_OK(loom_comm_all_to_all(c, send, send, count, LOOM_DTYPE_I32), r);
    RCHECK(memcmp(send, recv, total * sizeof *send) == 0,
           "n=%d rank %d: in-place all_to_all differs", n, r);
    free(send);
    free(recv);
}

static void rank_broadcast(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c), n = loom_comm_size(c);
    size_t count = 3001;
    float *send = malloc(count * sizeof *send), *recv = malloc(count * sizeof *recv);
    for (int root = 0; root < n; root++) {
        uint32_t salt = 50 + (uint32_t)root;
        fill_f32(send, count, r, 0, salt);
        memset(recv, 0, count * sizeof *recv);
        // Non-roots pass a NULL send: only the root's is read.
        RCHECK_OK(loom_comm_broadcast(c, r == root ? send : NULL, recv, count, LOOM_DTYPE_F32,
                                      root), r);
        size_t bad = 0;
        for (size_t i = 0; i < count; i++) bad += recv[i] != f32_value(root, i, salt);
        RCHECK(bad == 0, "n=%d rank %d root %d: %zu broadcast elements differ", n, r, root, bad);
        // In place on the root.
        fill_f32(recv, count, r, 0, 60);
        RCHECK_OK(loom_comm_broadcast(c, recv, recv, count, LOOM_DTYPE_F32, root), r);
        bad = 0;
        for (size_t i = 0; i < count; i++) bad += recv[i] != f32_value(root, i, 60);
        RCHECK(bad == 0, "n=%d rank %d root %d: in-place broadcast wrong", n, r, root);
    }
    free(send);
    free(recv);
}

// Ring: rank r sends to r+1 with tag 100+r, receives from r-1 with tag 100+(r-1). Rank 0 sends
// first and every other rank receives first, so most receives wait for their message.
static void rank_ring(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c), n = loom_comm_size(c);
    if (n < 2) return;
    int right = (r + 1) % n, left = (r + n - 1) % n;
    size_t count = 20000;
    int32_t *out = malloc(count * sizeof *out), *in = malloc(count * sizeof *in);
    fill_i32(out, count, r, 0, 200);
    if (r == 0) RCHECK_OK(loom_comm_send(c, out, count, LOOM_DTYPE_I32, right, 100 + r), r);
    RCHECK_OK(loom_comm_recv(c, in, count, LOOM_DTYPE_I32, left, 100 + left), r);
    if (r != 0) RCHECK_OK(loom_comm_send(c, out, count, LOOM_DTYPE_I32, right, 100 + r), r);
    size_t bad = 0;
    for (size_t i = 0; i < count; i++) bad += in[i] != i32_value(left, i, 200);
    RCHECK(bad == 0, "n=%d rank %d: ring message from %d wrong", n, r, left);
    free(out);
    free(in);
}

// Eager sends: every rank sends three messages of different lengths to each ring neighbour
// (tag 10 rightwards, 11 leftwards; at 2 ranks both go to the one peer) before it receives any,
// scribbling over its buffer after each send; then it receives them all and checks contents and
// order. With rendezvous sends every rank would wait in its first send.
static void rank_both_ways(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c), n = loom_comm_size(c);
    if (n < 2) return;
    int right = (r + 1) % n, left = (r + n - 1) % n;
    enum { MSGS = 3 };
    const size_t lengths[MSGS] = {1, 4099, (size_t)1 << 18};  // the last is past MPI's eager limit
    int32_t *buf = malloc(lengths[MSGS - 1] * sizeof *buf);
    for (int k = 0; k < MSGS; k++) {
        for (int dir = 0; dir < 2; dir++) {
            fill_i32(buf, lengths[k], r, 0, 400 + (uint32_t)(10 * dir + k));
            RCHECK_OK(loom_comm_send(c, buf, lengths[k], LOOM_DTYPE_I32, dir ? left : right,
                                     10 + dir), r);
            memset(buf, 0xa5, lengths[k] * sizeof *buf);  // the message is a copy
        }
    }
    // Leftwards messages first: the receives match (src, tag) past the messages queued earlier.
    for (int dir = 1; dir >= 0; dir--) {
        int from = dir ? right : left;
        for (int k = 0; k < MSGS; k++) {
            memset(buf, 0, lengths[k] * sizeof *buf);
            RCHECK_OK(loom_comm_recv(c, buf, lengths[k], LOOM_DTYPE_I32, from, 10 + dir), r);
            size_t bad = 0;
            for (size_t i = 0; i < lengths[k]; i++) {
                bad += buf[i] != i32_value(from, i, 400 + (uint32_t)(10 * dir + k));
            }
            RCHECK(bad == 0, "n=%d rank %d: message %d from rank %d (tag %d): %zu elements differ",
                   n, r, k, from, 10 + dir, bad);
        }
    }
    free(buf);
}

// 100 messages of 1 KB to the right neighbour, all sent before the receiver starts (a barrier
// separates the two), in two rounds: the second reuses the first's message blocks.
static void rank_queued(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c), n = loom_comm_size(c);
    if (n < 2) return;
    int right = (r + 1) % n, left = (r + n - 1) % n;
    enum { QUEUED = 100, WORDS = 256 };
    int32_t buf[WORDS];
    for (int round = 0; round < 2; round++) {
        uint32_t salt = 500 + (uint32_t)round;
        int failed = 0;
        for (int k = 0; k < QUEUED; k++) {
            fill_i32(buf, WORDS, r, (size_t)k * WORDS, salt);
            failed += loom_comm_send(c, buf, WORDS, LOOM_DTYPE_I32, right, 20) != LOOM_OK;
        }
        RCHECK(failed == 0, "n=%d rank %d: %d queued sends failed: %s", n, r, failed,
               loom_last_error());
        RCHECK_OK(loom_comm_barrier(c), r);
        size_t bad = 0;
        for (int k = 0; k < QUEUED; k++) {
            memset(buf, 0, sizeof buf);
            failed += loom_comm_recv(c, buf, WORDS, LOOM_DTYPE_I32, left, 20) != LOOM_OK;
            for (size_t i = 0; i < WORDS; i++) {
                bad += buf[i] != i32_value(left, (size_t)k * WORDS + i, salt);
            }
        }
        RCHECK(failed == 0 && bad == 0, "n=%d rank %d round %d: %d receives failed (%s), %zu "
               "elements differ", n, r, round, failed, failed ? loom_last_error() : "", bad);
    }
}

// Parity groups with reversed keys: in each group, the highest parent rank becomes rank 0.
static void rank_split(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c), n = loom_comm_size(c);
    loom_comm_t sub = NULL;
    RCHECK_OK(loom_comm_split(c, r % 2, -r, &sub), r);
    if (!sub) return;
    int want_size = 0, want_rank = 0;
    for (int q = 0; q < n; q++) {
        if (q % 2 != r % 2) continue;
        want_size++;
        want_rank += q > r;
    }
    RCHECK(loom_comm_size(sub) == want_size && loom_comm_rank(sub) == want_rank,
           "n=%d rank %d: sub rank %d size %d, want %d of %d", n, r, loom_comm_rank(sub),
           loom_comm_size(sub), want_rank, want_size);
    int32_t mine = r, all[16] = {0}, sum = 0;
    RCHECK_OK(loom_comm_all_gather(sub, &mine, all, 1, LOOM_DTYPE_I32), r);
    size_t bad = 0;
    int k = 0;
    for (int q = n - 1; q >= 0; q--) {  // same-parity parent ranks, descending
        if (q % 2 == r % 2) bad += all[k++] != q;
    }
    RCHECK(bad == 0, "n=%d rank %d: sub all_gather order wrong", n, r);
    RCHECK_OK(loom_comm_all_reduce(sub, &mine, &sum, 1, LOOM_DTYPE_I32, LOOM_REDUCE_SUM), r);
    int want_sum = 0;
    for (int q = r % 2; q < n; q += 2) want_sum += q;
    RCHECK(sum == want_sum, "n=%d rank %d: sub sum %d, want %d", n, r, sum, want_sum);
    // The parent still works, and a color < 0 rank gets no communicator.
    loom_comm_t none = (loom_comm_t)1;
    RCHECK_OK(loom_comm_split(c, r == 0 ? -1 : 0, 0, &none), r);
    RCHECK(r == 0 ? none == NULL : loom_comm_size(none) == n - 1, "n=%d rank %d: color -1", n, r);
    RCHECK_OK(loom_comm_barrier(c), r);
    loom_comm_destroy(none);
    loom_comm_destroy(sub);
}

static double busy_work(int iters) {
    volatile double acc = 0;
    for (int i = 0; i < iters; i++) acc += (double)i * 1e-9;
    return acc;
}

static void rank_async(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c), n = loom_comm_size(c);
    enum { REQS = 3 };
    size_t count = 50000;
    float *bufs[REQS], *outs[REQS];
    loom_comm_request_t reqs[REQS];
    for (int round = 0; round < 2; round++) {
        for (int k = 0; k < REQS; k++) {
            bufs[k] = malloc(count * sizeof(float));
            outs[k] = malloc(count * sizeof(float));
            fill_f32(bufs[k], count, r, 0, 300 + (uint32_t)k);
            // Request 1 is in place.
            float *dst = k == 1 ? bufs[k] : outs[k];
            RCHECK_OK(loom_comm_all_reduce_async(c, bufs[k], dst, count, LOOM_DTYPE_F32,
                                                 LOOM_REDUCE_SUM, &reqs[k]), r);
            busy_work(200000);  // compute while the request runs
        }
        for (int k = 0; k < REQS; k++) {
            RCHECK_OK(loom_comm_wait(reqs[k]), r);
            float *dst = k == 1 ? bufs[k] : outs[k];
            size_t bad = mismatches_f32(dst, count, n, 0, 300 + (uint32_t)k, LOOM_REDUCE_SUM);
            RCHECK(bad == 0, "n=%d rank %d request %d: %zu results differ", n, r, k, bad);
            free(bufs[k]);
            free(outs[k]);
        }
        // A blocking collective right after async ones follows them in order.
        int32_t one = 1, total = 0;
        RCHECK_OK(loom_comm_all_reduce(c, &one, &total, 1, LOOM_DTYPE_I32, LOOM_REDUCE_SUM), r);
        RCHECK(total == n, "n=%d rank %d: blocking after async got %d", n, r, total);
    }
    loom_comm_request_t empty = (loom_comm_request_t)1;
    RCHECK_OK(loom_comm_all_reduce_async(c, NULL, NULL, 0, LOOM_DTYPE_F32, LOOM_REDUCE_SUM,
                                         &empty), r);
    RCHECK(empty == NULL, "count 0 gives a NULL request");
    RCHECK_OK(loom_comm_wait(empty), r);
    // A blocking collective issued while a request is pending runs after it.
    loom_comm_request_t pending;
    float x = 1, y = 0;
    RCHECK_OK(loom_comm_all_reduce_async(c, &x, &y, 1, LOOM_DTYPE_F32, LOOM_REDUCE_SUM,
                                         &pending), r);
    RCHECK_OK(loom_comm_barrier(c), r);
    RCHECK_OK(loom_comm_wait(pending), r);
    RCHECK(y == (float)n, "n=%d rank %d: last async %g", n, r, (double)y);
}

static void rank_count_zero(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c);
    // count 0 is a no-op, even with NULL buffers, and only rank 0 calls: nothing waits.
    if (r == 0) {
        RCHECK_OK(loom_comm_all_reduce(c, NULL, NULL, 0, LOOM_DTYPE_F32, LOOM_REDUCE_SUM), r);
        RCHECK_OK(loom_comm_all_gather(c, NULL, NULL, 0, LOOM_DTYPE_F32), r);
        RCHECK_OK(loom_comm_broadcast(c, NULL, NULL, 0, LOOM_DTYPE_F32, 0), r);
    }
}
// Rank n-1 arrives 100 ms late: nobody may leave the barrier before it arrives.
static void rank_barrier_waits(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c), n = loom_comm_size(c);
    if (n < 2) return;
    RCHECK_OK(loom_comm_barrier(c), r);
    double t0 = now_s();
    if (r == n - 1) {
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    RCHECK_OK(loom_comm_barrier(c), r);
    double waited = now_s() - t0;
    RCHECK(waited >= 0.09, "n=%d rank %d left the barrier after %.3f s", n, r, waited);
}

// Rank 2 aborts instead of entering the all-reduce; the others must fail fast naming it.
static void rank_abort(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c);
    float x[64] = {0};
    RCHECK_OK(loom_comm_barrier(c), r);
    if (r == 2) {
        loom_comm_abort(c, "test failure");
        loom_status st = loom_comm_barrier(c);
        RCHECK(st == LOOM_ERR_COMM && has(loom_last_error(), "test failure"),
               "the aborted rank's own later call: %d %s", st, loom_last_error());
        return;
    }
    double t0 = now_s();
    loom_status st = loom_comm_all_reduce(c, x, x, 64, LOOM_DTYPE_F32, LOOM_REDUCE_SUM);
    double waited = now_s() - t0;
    const char *msg = loom_last_error();
    RCHECK(st == LOOM_ERR_COMM, "rank %d: status %d", r, st);
    RCHECK(has(msg, "rank 2") && has(msg, "test failure") && has(msg, "all_reduce #2"),
           "rank %d: message '%s'", r, msg);
    RCHECK(waited < 2.0, "rank %d: abort noticed after %.2f s (timeout 30 s)", r, waited);
    // Poisoned: later calls fail at once with the same reason.
    st = loom_comm_barrier(c);
    RCHECK(st == LOOM_ERR_COMM && has(loom_last_error(), "rank 2 failed: test failure"),
           "rank %d: later call %d '%s'", r, st, loom_last_error());
}

#ifndef LOOM_COMM_TEST_SHARED_ONLY
// ---- local only: harness (one thread per rank) --------------------------------------------------

typedef void (*rank_fn)(loom_comm_t c, void *ctx);

typedef struct rank_thread {
    loom_comm_t comm;
    rank_fn fn;
    void *ctx;
    int destroy_at_end;
} rank_thread;

static void *rank_main(void *arg) {
    rank_thread *t = arg;
    t->fn(t->comm, t->ctx);
    if (t->destroy_at_end) loom_comm_destroy(t->comm);  // each rank destroys its own handle
    return NULL;
}

// Runs fn on n fresh ranks, one thread each; with destroy_at_end, each thread destroys its
// handle at the end (else fn does).
static void run_ranks_with(int n, const loom_comm_config *cfg, rank_fn fn, void *ctx,
                           int destroy_at_end) {
    loom_comm_t comms[16];
    rank_thread threads[16];
    pthread_t ids[16];
    loom_status st = loom_comm_local_create_all(n, cfg, comms);
    CHECK_MSG(st == LOOM_OK, "create %d ranks: %s", n, loom_last_error());
    if (st != LOOM_OK) return;
    for (int r = 0; r < n; r++) {  // before any rank thread counts checks
        CHECK(loom_comm_rank(comms[r]) == r && loom_comm_size(comms[r]) == n);
        CHECK(loom_comm_get_kind(comms[r]) == LOOM_COMM_LOCAL);
    }
    for (int r = 0; r < n; r++) {
        threads[r] = (rank_thread){comms[r], fn, ctx, destroy_at_end};
        pthread_create(&ids[r], NULL, rank_main, &threads[r]);
    }
    for (int r = 0; r < n; r++) pthread_join(ids[r], NULL);
}

static void run_ranks(int n, const loom_comm_config *cfg, rank_fn fn, void *ctx) {
    run_ranks_with(n, cfg, fn, ctx, 1);
}

static atomic_int barrier_arrivals;

static void rank_barrier(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c), n = loom_comm_size(c);
    for (int round = 1; round <= 3; round++) {
        atomic_fetch_add(&barrier_arrivals, 1);
        RCHECK_OK(loom_comm_barrier(c), r);
        int seen = atomic_load(&barrier_arrivals);
        RCHECK(seen >= round * n, "n=%d rank %d round %d: left the barrier after %d arrivals", n,
               r, round, seen);
        RCHECK_OK(loom_comm_barrier(c), r);  // nobody starts the next round early
    }
}

static void test_collectives(void) {
    const int sizes[] = {1, 2, 3, 4, 8};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int n = sizes[i];
        run_ranks(n, NULL, rank_all_reduce, NULL);
        run_ranks(n, NULL, rank_reduce_scatter, NULL);
        run_ranks(n, NULL, rank_all_gather, NULL);
        run_ranks(n, NULL, rank_all_to_all, NULL);
        run_ranks(n, NULL, rank_broadcast, NULL);
        atomic_store(&barrier_arrivals, 0);
        run_ranks(n, NULL, rank_barrier, NULL);
        run_ranks(n, NULL, rank_barrier_waits, NULL);
        run_ranks(n, NULL, rank_ring, NULL);
        run_ranks(n, NULL, rank_split, NULL);
        run_ranks(n, NULL, rank_async, NULL);
        run_ranks(n, NULL, rank_count_zero, NULL);
    }
}

static void test_point_to_point(void) {
    for (int n = 2; n <= 4; n++) {
        run_ranks(n, NULL, rank_both_ways, NULL);
        run_ranks(n, NULL, rank_queued, NULL);
    }
}
// ---- failures -----------------------------------------------------------------------------------

enum { FAIL_RANKS = 4 };

// Rank 3 never enters the barrier (and keeps its handle until the others are done).
static pthread_barrier_t timeout_done;

static void rank_timeout(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c);
    if (r != 3) {
        double t0 = now_s();
        loom_status st = loom_comm_barrier(c);
        double waited = now_s() - t0;
        const char *msg = loom_last_error();
        RCHECK(st == LOOM_ERR_COMM, "rank %d: status %d", r, st);
        RCHECK(has(msg, "rank 3 did not arrive within 0.5 s") && has(msg, "barrier #1"),
               "rank %d: message '%s'", r, msg);
        RCHECK(waited >= 0.45 && waited < 1.5, "rank %d: failed after %.2f s", r, waited);
        float x = 0;
        st = loom_comm_all_reduce(c, &x, &x, 1, LOOM_DTYPE_F32, LOOM_REDUCE_SUM);
        RCHECK(st == LOOM_ERR_COMM && has(loom_last_error(), "failed earlier, at barrier #1"),
               "rank %d: later call %d '%s'", r, st, loom_last_error());
    }
    pthread_barrier_wait(&timeout_done);
}

// Rank 1 destroys its handle instead of entering the collective: the others fail at once.
static void rank_departure(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c);
    if (r == 1) {
        loom_comm_destroy(c);
        return;
    }
    double t0 = now_s();
    int32_t x = 1;
    loom_status st = loom_comm_all_reduce(c, &x, &x, 1, LOOM_DTYPE_I32, LOOM_REDUCE_SUM);
    RCHECK(st == LOOM_ERR_COMM && has(loom_last_error(), "rank 1 destroyed the communicator"),
           "rank %d: %d '%s'", r, st, loom_last_error());
    RCHECK(now_s() - t0 < 2.0, "rank %d: departure noticed late", r);
    loom_comm_destroy(c);
}

// Point to point: rank 1 waits for a message rank 0 never sends.
static void rank_recv_timeout(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c);
    if (r == 1) {
        int32_t x;
        loom_status st = loom_comm_recv(c, &x, 1, LOOM_DTYPE_I32, 0, 5);
        RCHECK(st == LOOM_ERR_COMM && has(loom_last_error(), "rank 0 did not send to rank 1 "
                                                             "(tag 5) within 0.3 s"),
               "recv timeout: %d '%s'", st, loom_last_error());
    }
    pthread_barrier_wait(&timeout_done);
}

// Mismatched lengths: the sender has moved on, so only the receiver fails; the message is
// dropped and the next one with the tag is received as usual.
static void rank_length_mismatch(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c);
    int32_t buf[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    if (r == 0) {
        RCHECK_OK(loom_comm_send(c, buf, 8, LOOM_DTYPE_I32, 1, 0), r);
        RCHECK_OK(loom_comm_send(c, buf, 4, LOOM_DTYPE_I32, 1, 0), r);
        return;
    }
    loom_status st = loom_comm_recv(c, buf, 4, LOOM_DTYPE_I32, 0, 0);
    const char *msg = loom_last_error();
    RCHECK(st == LOOM_ERR_INVALID && has(msg, "recv #1 from rank 0 (tag 0) on rank 1") &&
               has(msg, "expected 16 bytes but rank 0 sent 32") && has(msg, "must match"),
           "mismatch %d '%s'", st, msg);
    memset(buf, 0, sizeof buf);
    RCHECK_OK(loom_comm_recv(c, buf, 4, LOOM_DTYPE_I32, 0, 0), r);
    RCHECK(buf[0] == 0 && buf[3] == 3, "after the mismatch: %d %d", buf[0], buf[3]);
}

// Rank 1 destroys its handle with a message from rank 0 unreceived (freed with the world, as
// LeakSanitizer checks); rank 0's next send to it fails, naming it.
static void rank_send_departure(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c);
    int32_t x[4] = {1, 2, 3, 4};
    if (r == 0) RCHECK_OK(loom_comm_send(c, x, 4, LOOM_DTYPE_I32, 1, 3), r);
    RCHECK_OK(loom_comm_barrier(c), r);  // the message is queued before rank 1 leaves
    if (r == 1) loom_comm_destroy(c);
    pthread_barrier_wait(&timeout_done);
    if (r == 1) return;
    double t0 = now_s();
    loom_status st = loom_comm_send(c, x, 4, LOOM_DTYPE_I32, 1, 3);
    const char *msg = loom_last_error();
    RCHECK(st == LOOM_ERR_COMM && has(msg, "send #2 to rank 1 (tag 3) on rank 0") &&
               has(msg, "rank 1 destroyed the communicator without receiving from rank 0 (tag 3)"),
           "send to a departed rank: %d '%s'", st, msg);
    RCHECK(now_s() - t0 < 1.0, "the send to a departed rank took %.2f s", now_s() - t0);
    loom_comm_destroy(c);
}

static void test_failures(void) {
    loom_comm_config cfg = loom_comm_config_default();
    cfg.timeout_s = 30;
    run_ranks(FAIL_RANKS, &cfg, rank_abort, NULL);

    cfg.timeout_s = 0.5;
    pthread_barrier_init(&timeout_done, NULL, FAIL_RANKS);
    run_ranks(FAIL_RANKS, &cfg, rank_timeout, NULL);
    pthread_barrier_destroy(&timeout_done);

    cfg.timeout_s = 30;
    run_ranks_with(FAIL_RANKS, &cfg, rank_departure, NULL, 0);

    cfg.timeout_s = 0.3;
    pthread_barrier_init(&timeout_done, NULL, 2);
    run_ranks(2, &cfg, rank_recv_timeout, NULL);
    pthread_barrier_destroy(&timeout_done);
    run_ranks(2, NULL, rank_length_mismatch, NULL);
    pthread_barrier_init(&timeout_done, NULL, 2);
    run_ranks_with(2, NULL, rank_send_departure, NULL, 0);
    pthread_barrier_destroy(&timeout_done);
}

// A watchdog thread aborts rank 1 while the ranks run collectives on buffers they free right
// after each call: a rank that fails must not return while a peer still reads its buffers
// (under ASan a violation shows as a use-after-free).
static void *rank_collective_loop(void *arg) {
    loom_comm_t c = arg;
    int r = loom_comm_rank(c);
    loom_status st = LOOM_OK;
    for (int it = 0; st == LOOM_OK; it++) {
        size_t n = (size_t)1 << 18;
        float *send = calloc(n, sizeof *send), *recv = malloc(n * sizeof *recv);
        if (it % 3 == 0) {
            st = loom_comm_all_reduce(c, send, recv, n, LOOM_DTYPE_F32, LOOM_REDUCE_SUM);
        } else if (it % 3 == 1) {
            st = loom_comm_all_gather(c, send, recv, n / FAIL_RANKS, LOOM_DTYPE_F32);
        } else {
            st = loom_comm_all_to_all(c, recv, recv, n / FAIL_RANKS, LOOM_DTYPE_F32);
        }
        free(send);
        free(recv);
    }
    RCHECK(st == LOOM_ERR_COMM && has(loom_last_error(), "rank 1 failed: watchdog"),
           "rank %d: %d '%s'", r, st, loom_last_error());
    return NULL;
}

static void test_abort_midway(void) {
    for (int trial = 0; trial < 6; trial++) {
        loom_comm_t comms[FAIL_RANKS];
        pthread_t ids[FAIL_RANKS];
        CHECK_OK(loom_comm_local_create_all(FAIL_RANKS, NULL, comms));
        for (int r = 0; r < FAIL_RANKS; r++) {
            pthread_create(&ids[r], NULL, rank_collective_loop, comms[r]);
        }
        struct timespec pause = {0, (long)(trial * 7 + 1) * 1000 * 1000};
        nanosleep(&pause, NULL);
        loom_comm_abort(comms[1], "watchdog");
        for (int r = 0; r < FAIL_RANKS; r++) pthread_join(ids[r], NULL);
        for (int r = 0; r < FAIL_RANKS; r++) loom_comm_destroy(comms[r]);
    }
}

// Abort reaches sub-communicators too: rank 0 aborts its parent handle while rank 3 waits in a
// sub-communicator that rank 0 is not part of (rank 2 enters it only after the abort).
static atomic_int family_aborted;

static void rank_abort_family(loom_comm_t c, void *ctx) {
    int r = loom_comm_rank(c);
    loom_comm_t sub = NULL;
    RCHECK_OK(loom_comm_split(c, r / 2, r, &sub), r);
    if (r == 0) {
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
        loom_comm_abort(c, "family test");
        atomic_store(&family_aborted, 1);
    } else if (r >= 2) {
        struct timespec pause = {0, 1000 * 1000};
        while (r == 2 && !atomic_load(&family_aborted)) nanosleep(&pause, NULL);
        loom_status st = loom_comm_barrier(sub);
        RCHECK(st == LOOM_ERR_COMM && has(loom_last_error(), "family test") &&
                   has(loom_last_error(), "rank 0 of the top-level communicator failed"),
               "rank %d: %d '%s'", r, st, loom_last_error());
    } else {
        loom_status st = loom_comm_barrier(sub);  // rank 1's group holds rank 0
        RCHECK(st == LOOM_ERR_COMM && has(loom_last_error(), "rank 0 failed: family test"),
               "rank %d: %d '%s'", r, st, loom_last_error());
    }
    loom_comm_destroy(sub);
}

// ---- argument errors ----------------------------------------------------------------------------

static void test_argument_errors(void) {
    loom_comm_t comms[2];
    CHECK_OK(loom_comm_local_create_all(2, NULL, comms));
    loom_comm_t c = comms[0];
    float buf[16] = {0};
    int32_t ibuf[16] = {0};

    CHECK(loom_comm_all_reduce(NULL, buf, buf, 4, LOOM_DTYPE_F32, LOOM_REDUCE_SUM) ==
          LOOM_ERR_INVALID);
    CHECK(has(loom_last_error(), "NULL"));
    CHECK(loom_comm_barrier(NULL) == LOOM_ERR_INVALID);
    CHECK(loom_comm_broadcast(c, buf, buf, 4, LOOM_DTYPE_F32, 2) == LOOM_ERR_INVALID);
    CHECK(has(loom_last_error(), "root 2 is out of range [0, 2)"));
    CHECK(loom_comm_broadcast(c, buf, buf, 4, LOOM_DTYPE_F32, -1) == LOOM_ERR_INVALID);
    CHECK(loom_comm_send(c, buf, 4, LOOM_DTYPE_F32, 2, 0) == LOOM_ERR_INVALID);
    CHECK(has(loom_last_error(), "peer 2 is out of range"));
    CHECK(loom_comm_recv(c, buf, 4, LOOM_DTYPE_F32, -1, 0) == LOOM_ERR_INVALID);
    CHECK(loom_comm_send(c, buf, 4, LOOM_DTYPE_F32, 0, 0) == LOOM_ERR_INVALID);  // self
    CHECK(loom_comm_send(c, buf, 4, LOOM_DTYPE_F32, 1, -3) == LOOM_ERR_INVALID);
    CHECK(loom_comm_all_reduce(c, buf, buf, 4, LOOM_DTYPE_F16, LOOM_REDUCE_SUM) ==
          LOOM_ERR_UNSUPPORTED);
    CHECK(loom_comm_all_gather(c, buf, buf + 8, 4, LOOM_DTYPE_I64) == LOOM_ERR_UNSUPPORTED);
    CHECK(loom_comm_all_reduce(c, buf, buf, 4, (loom_dtype)99, LOOM_REDUCE_SUM) ==
          LOOM_ERR_INVALID);
    CHECK(loom_comm_all_reduce(c, buf, buf, 4, LOOM_DTYPE_F32, (loom_reduce_op)7) ==
          LOOM_ERR_INVALID);
    CHECK(loom_comm_all_reduce(c, buf, NULL, 4, LOOM_DTYPE_F32, LOOM_REDUCE_SUM) ==
          LOOM_ERR_INVALID);
    CHECK(loom_comm_all_reduce(c, buf, buf + 1, 4, LOOM_DTYPE_F32, LOOM_REDUCE_SUM) ==
          LOOM_ERR_INVALID);
    CHECK(has(loom_last_error(), "overlap"));
    // Reduce-scatter in place must sit at send + rank * recvcount (rank 0: send itself).
    CHECK(loom_comm_reduce_scatter(c, ibuf, ibuf + 2, 4, LOOM_DTYPE_I32, LOOM_REDUCE_SUM) ==
          LOOM_ERR_INVALID);
    CHECK(loom_comm_all_gather(comms[1], ibuf + 1, ibuf, 4, LOOM_DTYPE_I32) == LOOM_ERR_INVALID);
    loom_comm_request_t req = NULL;
    CHECK(loom_comm_all_reduce_async(c, buf, buf, 4, LOOM_DTYPE_F32, LOOM_REDUCE_SUM, NULL) ==
          LOOM_ERR_INVALID);
    CHECK(loom_comm_all_reduce_async(NULL, buf, buf, 4, LOOM_DTYPE_F32, LOOM_REDUCE_SUM, &req) ==
          LOOM_ERR_INVALID && req == NULL);
    CHECK(loom_comm_split(c, 0, 0, NULL) == LOOM_ERR_INVALID);
    loom_comm_t sub = (loom_comm_t)1;
    CHECK(loom_comm_split(NULL, 0, 0, &sub) == LOOM_ERR_INVALID && sub == NULL);

    loom_comm_t more[2];
    CHECK(loom_comm_local_create_all(0, NULL, more) == LOOM_ERR_INVALID);
    CHECK(loom_comm_local_create_all(2, NULL, NULL) == LOOM_ERR_INVALID);
    loom_comm_config bad = {.timeout_s = 0};
    CHECK(loom_comm_local_create_all(2, &bad, more) == LOOM_ERR_INVALID);
    CHECK(has(loom_last_error(), "timeout_s"));

    CHECK(loom_comm_rank(NULL) == -1 && loom_comm_size(NULL) == 0);
    CHECK(strcmp(loom_comm_kind_name(LOOM_COMM_MPI), "mpi") == 0);
    CHECK(loom_comm_config_default().timeout_s == 60);
    loom_comm_destroy(NULL);
    loom_comm_abort(NULL, "nothing");
    // The handles are still healthy after the refused calls.
    loom_comm_destroy(comms[0]);
    loom_comm_destroy(comms[1]);
    if (!loom_comm_mpi_available()) {
        loom_comm_t m = (loom_comm_t)1;
        CHECK(loom_comm_mpi_create(NULL, NULL, &m) == LOOM_ERR_UNSUPPORTED && m == NULL);
        CHECK(has(loom_last_error(), "without MPI"));
    }
}

int main(void) {
    double t0 = now_s();
    test_argument_errors();
    test_collectives();
    test_point_to_point();
    test_failures();
    run_ranks(FAIL_RANKS, NULL, rank_abort_family, NULL);
    test_abort_midway();
    fprintf(stderr, "test-comm-local: %.1f s\n", now_s() - t0);
    return tu_finish();
}

#endif // LOOM_COMM_TEST_SHARED_ONLY
