// Local transport: ranks are threads of one process sharing a "world". Collectives publish
// buffer pointers, meet at a barrier, and each rank computes its own output from its peers'
// buffers, reducing in rank order 0..n-1 so every rank gets bit-identical results.
//
// Sends are eager: a send copies the message into one block (header and data), links it at the
// end of the destination's inbox and returns without waiting for the receiver, so ranks may
// send to each other in any order. The receiver takes the first block from its peer with its
// tag (send order per pair and tag), copies it out and returns it to a small per-world cache of
// blocks by size class, so steady-state steps do not call malloc; blocks left unreceived go
// with the world. Asynchronous all-reduces run on a per-rank progress thread in issue order; a
// blocking collective first waits for them. Every wait is bounded by the timeout; a timeout, an
// abort (which reaches every world split from the same loom_comm_local_create_all) or a rank
// destroying its handle mid-call poisons the world.

#include "comm/comm-impl.h"
#include "core/core.h"

#include <errno.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

// Reductions accumulate this many bytes at a time in a stack block (L1-resident), reading each
// rank's input once and writing the output once; it also makes in-place reductions safe.
#define REDUCE_BLOCK_BYTES 16384
// All-reduce splits the vector into per-rank chunks aligned to this many bytes.
#define CHUNK_ALIGN_BYTES 64
// Message blocks come in size classes: class k holds up to 2^(MSG_MIN_SHIFT + k) bytes of data
// (256 B to 512 GiB); a larger message gets a block of its own size that is never cached. A
// world caches at most MSG_CACHE_PER_CLASS received blocks per class, which covers what a
// pipeline step keeps in flight at once; blocks beyond that are freed.
#define MSG_MIN_SHIFT 8
#define MSG_CLASSES 32
#define MSG_CACHE_PER_CLASS 16

typedef struct local_world local_world;

// The worlds split (transitively) from one loom_comm_local_create_all: an abort reaches all.
typedef struct local_family {
    pthread_mutex_t mu;
    local_world *worlds;  // linked through local_world.family_next
} local_family;

// A sent message: one block with a copy of the data. The world owns it from the send until a
// receiver unlinks it; the receiver then copies it out and gives it back to the cache.
typedef struct local_message {
    struct local_message *next;  // in an inbox or in the cache
    int src, tag;
    int size_class;  // index into the cache, or -1: larger than every class, never cached
    size_t bytes;
    unsigned char data[];
} local_message;

// Rank r's incoming messages in send order; a receive takes the first that matches (src, tag).
typedef struct local_inbox {
    local_message *head;
    local_message **tail;  // &last->next, or &head when empty
} local_inbox;

// What rank r publishes for the collective in progress.
typedef struct local_slot {
    const void *send;
    void *recv;
    int color, key;             // split
    local_world *split_result;  // split: written by the new group's leader only
} local_slot;

struct local_world {
    pthread_mutex_t mu;
    pthread_cond_t cv;  // on CLOCK_MONOTONIC; every state change broadcasts
    int size;
    int handles;  // live handles; the last destroy frees the world
    local_family *family;
    local_world *family_next;
    int *top_rank;  // each rank's rank in the family's first world (for abort messages)
    // barrier: rank r has entered entered[r] barriers; `completed` barriers are behind everyone
    uint64_t *entered;
    uint64_t completed;
    int arrived;
    unsigned char *departed;  // destroyed its handle
    int departed_count;
    unsigned char *reading;   // between barriers, reading peers' buffers
    int readers;
    local_slot *slots;
    local_inbox *inbox;  // per destination rank
    local_message *cache[MSG_CLASSES];  // received blocks for the next sends, by size class
    int cached[MSG_CLASSES];
    loom_comm_failure failure;
};

typedef struct local_request {
    struct loom_comm_request base;
    struct local_request *next;
    loom_comm_args args;
    int done;
    loom_status status;
    char error[1024];
} local_request;

// One rank's handle data: its world and its progress thread for asynchronous all-reduces.
typedef struct local_rank {
    local_world *world;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int progress_started, stopping;
    pthread_t progress;
    local_request *queue_head, *queue_tail;
    uint64_t issued, finished;
} local_rank;

static local_world *world_of(loom_comm_t c) { return ((local_rank *)c->transport)->world; }

// ---- time ---------------------------------------------------------------------------------------

static struct timespec deadline_after(double seconds) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (seconds > 1e9) seconds = 1e9;
    time_t whole = (time_t)seconds;
    ts.tv_sec += whole;
    ts.tv_nsec += (long)((seconds - (double)whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

// Wait on the world's condition until woken or the deadline; 1 when the deadline has passed.
static int world_wait(local_world *w, const struct timespec *deadline) {
    return pthread_cond_timedwait(&w->cv, &w->mu, deadline) == ETIMEDOUT;
}

// ---- worlds -------------------------------------------------------------------------------------

static local_family *family_new(void) {
    local_family *f = loom__calloc(1, sizeof *f);
    if (f) pthread_mutex_init(&f->mu, NULL);
    return f;
}

static void msg_free_list(local_message *m) {
    while (m) {
        local_message *next = m->next;
        loom__free(m);
        m = next;
    }
}

static void world_free(local_world *w) {
    if (!w) return;
    local_family *f = w->family;
    int family_empty = 0;
    if (f) {
        pthread_mutex_lock(&f->mu);
        for (local_world **p = &f->worlds; *p; p = &(*p)->family_next) {
            if (*p == w) {
                *p = w->family_next;
                break;
            }
        }
        family_empty = f->worlds == NULL;
        pthread_mutex_unlock(&f->mu);
    }
    if (family_empty) {
        pthread_mutex_destroy(&f->mu);
        loom__free(f);
    }
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    // Messages nobody received, and the cache.
    for (int r = 0; w->inbox && r < w->size; r++) msg_free_list(w->inbox[r].head);
    for (int k = 0; k < MSG_CLASSES; k++) msg_free_list(w->cache[k]);
    loom__free(w->top_rank);
    loom__free(w->entered);
    loom__free(w->departed);
    loom__free(w->reading);
    loom__free(w->slots);
    loom__free(w->inbox);
    loom__free(w);
}

// A world of `size` ranks in `family`; top_rank[r] is rank r's rank in the family's first world.
static local_world *world_new(int size, local_family *family, const int *top_rank) {
    local_world *w = loom__calloc(1, sizeof *w);
    if (!w) return NULL;
    size_t n = (size_t)size;
    w->size = size;
    w->handles = size;
    w->top_rank = loom__malloc(n * sizeof *w->top_rank);
    w->entered = loom__calloc(n, sizeof *w->entered);
    w->departed = loom__calloc(n, sizeof *w->departed);
    w->reading = loom__calloc(n, sizeof *w->reading);
    w->slots = loom__calloc(n, sizeof *w->slots);
    w->inbox = loom__calloc(n, sizeof *w->inbox);
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &attr);
    pthread_condattr_destroy(&attr);
    if (!w->top_rank || !w->entered || !w->departed || !w->reading || !w->slots || !w->inbox) {
        world_free(w);
        loom__error(LOOM_ERR_NOMEM, "out of memory creating a %d-rank local communicator", size);
        return NULL;
    }
    memcpy(w->top_rank, top_rank, n * sizeof *top_rank);
    for (size_t r = 0; r < n; r++) w->inbox[r].tail = &w->inbox[r].head;
    w->family = family;
    pthread_mutex_lock(&family->mu);
    w->family_next = family->worlds;
    family->worlds = w;
    pthread_mutex_unlock(&family->mu);
    return w;
}

// Reading flags (under w->mu): a rank reads its peers' buffers between two barriers. A rank
// that fails must not return while anyone still reads, or its caller could free the buffers.
// The rank completing a barrier sets every rank's flag (one that has not woken up yet is about
// to read); each rank clears its own when it enters its next barrier or leaves the world.
static void set_reading(local_world *w, int rank, int reading) {
    if (w->reading[rank] == reading) return;
    w->reading[rank] = (unsigned char)reading;
    w->readers += reading ? 1 : -1;
    if (w->readers == 0) pthread_cond_broadcast(&w->cv);
}

// Rank `rank` gives up its handle; waiters for it learn it left; the last one frees the world.
static void world_release(local_world *w, int rank) {
    pthread_mutex_lock(&w->mu);
    set_reading(w, rank, 0);
    if (!w->departed[rank]) {
        w->departed[rank] = 1;
        w->departed_count++;
    }
    int last = --w->handles == 0;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (last) world_free(w);
}

// "3" or "3, 5": the ranks that have not entered barrier `target` (and, with departed_only,
// have destroyed their handle); returns how many.
static int list_ranks(const local_world *w, uint64_t target, int departed_only, char *buf,
                      size_t cap) {
    int count = 0;
    size_t used = 0;
    buf[0] = '\0';
    for (int q = 0; q < w->size; q++) {
        if (w->entered[q] >= target || (departed_only && !w->departed[q])) continue;
        if (used < cap) {
            int k = snprintf(buf + used, cap - used, "%s%d", count ? ", " : "", q);
            used += k > 0 ? (size_t)k : 0;
        }
        count++;
    }
    return count;
}

// Enter barrier `a` (one of the steps of a collective) and wait for every rank, for a failure,
// or for the timeout; a timeout or a departed rank poisons the world. then_read: the caller
// reads peers' buffers after this barrier (until its next one).
static loom_status world_barrier(loom_comm_t c, const loom_comm_args *a, int then_read) {
    local_world *w = world_of(c);
    pthread_mutex_lock(&w->mu);
    set_reading(w, c->rank, 0);
    if (w->failure.failed) goto failed;
    uint64_t target = ++w->entered[c->rank];
    if (++w->arrived == w->size) {
        w->arrived = 0;
        w->completed++;
        for (int q = 0; q < w->size; q++) set_reading(w, q, then_read);
        pthread_cond_broadcast(&w->cv);
    }
    struct timespec deadline = deadline_after(c->cfg.timeout_s);
    int timed_out = 0;
    while (w->completed < target && !w->failure.failed) {
        char ranks[256];
        int n;
        if (w->departed_count && (n = list_ranks(w, target, 1, ranks, sizeof ranks)) > 0) {
            loom__comm_failure_set(&w->failure, a, "%s %s destroyed the communicator "
                                   "instead of entering this call", n > 1 ? "ranks" : "rank",
                                   ranks);
        } else if (timed_out) {
            n = list_ranks(w, target, 0, ranks, sizeof ranks);
            loom__comm_failure_set(&w->failure, a, "%s %s did not arrive within %.1f s",
                                   n > 1 ? "ranks" : "rank", ranks, c->cfg.timeout_s);
        }
        if (w->failure.failed) {
            pthread_cond_broadcast(&w->cv);
            break;
        }
        timed_out = world_wait(w, &deadline);
    }
    if (w->completed >= target) {  // everyone got through, whatever happened since
        pthread_mutex_unlock(&w->mu);
        return LOOM_OK;
    }
failed:;
    // A copy in progress ends soon; the bound only matters when ranks called different
    // collectives (one may then never clear its flag).
    struct timespec until = deadline_after(c->cfg.timeout_s);
    while (w->readers > 0 && !world_wait(w, &until)) {}
    loom_status st = loom__comm_failure_raise(c, a, &w->failure);
    pthread_mutex_unlock(&w->mu);
    return st;
}

// ---- collectives --------------------------------------------------------------------------------

// First element of rank k's all-reduce chunk: the vector split into `size` near-equal chunks of
// whole CHUNK_ALIGN_BYTES units.
static size_t chunk_start(size_t count, size_t elem_size, int size, int k) {
    size_t unit = CHUNK_ALIGN_BYTES / elem_size;
    size_t units = (count + unit - 1) / unit;
    size_t base = units / (size_t)size, extra = units % (size_t)size;
    size_t start_unit = (size_t)k * base + ((size_t)k < extra ? (size_t)k : extra);
    size_t start = start_unit * unit;
    return start < count ? start : count;
}

// dst[0..count) = op over ranks 0..n-1, in that order, of the published send buffers at
// offset_bytes. dst may be the calling rank's own input (in place): each block is read from
// every rank before it is written.
static void reduce_in_rank_order(const local_world *w, const loom_comm_args *a,
                                 size_t offset_bytes, void *dst, size_t count) {
    alignas(64) unsigned char block[REDUCE_BLOCK_BYTES];
    size_t es = a->elem_size, per_block = REDUCE_BLOCK_BYTES / es;
    for (size_t done = 0; done < count; done += per_block) {
        size_t m = count - done < per_block ? count - done : per_block;
        size_t off = offset_bytes + done * es;
        char *out = (char *)dst + done * es;
        const char *first = (const char *)w->slots[0].send + off;
        if (w->size == 1) {
            if (out != first) memcpy(out, first, m * es);
            continue;
        }
        loom__comm_reduce(block, first, (const char *)w->slots[1].send + off, m, a->dtype,
                          a->reduce);
        for (int k = 2; k < w->size; k++) {
            loom__comm_reduce(block, block, (const char *)w->slots[k].send + off, m, a->dtype,
                              a->reduce);
        }
        memcpy(out, block, m * es);
    }
}

// A collective on the calling rank: publish, meet, compute this rank's output, meet again so no
// buffer is read after the call returns. Runs on the caller's thread or the progress thread.
static loom_status local_collective(loom_comm_t c, const loom_comm_args *a) {
    local_world *w = world_of(c);
    int r = c->rank, n = c->size;
    size_t es = a->elem_size, bytes = a->count * es;
    if (a->op == LOOM_COMM_OP_BARRIER) return world_barrier(c, a, 0);

    // In-place all-to-all: peers read our blocks while we overwrite them, so publish a copy.
    void *copy = NULL;
    const void *published = a->send;
    if (a->op == LOOM_COMM_OP_ALL_TO_ALL && a->send == a->recv) {
        copy = loom__malloc(bytes * (size_t)n);
        if (!copy) return LOOM_ERR_NOMEM;  // message recorded; the peers time out
        memcpy(copy, a->send, bytes * (size_t)n);
        published = copy;
    }
    w->slots[r].send = published;
    w->slots[r].recv = a->recv;
    loom_status st = world_barrier(c, a, 1);
    if (st < 0) goto done;

    char *recv = a->recv;
    switch (a->op) {
    case LOOM_COMM_OP_ALL_REDUCE: {
        // Reduce-scatter into our own chunk, then gather the other ranks' chunks.
        size_t lo = chunk_start(a->count, es, n, r), hi = chunk_start(a->count, es, n, r + 1);
        reduce_in_rank_order(w, a, lo * es, recv + lo * es, hi - lo);
        st = world_barrier(c, a, 1);
        if (st < 0) goto done;
        for (int k = 0; k < n; k++) {
            if (k == r) continue;
            size_t klo = chunk_start(a->count, es, n, k), khi = chunk_start(a->count, es, n, k + 1);
            memcpy(recv + klo * es, (const char *)w->slots[k].recv + klo * es, (khi - klo) * es);
        }
        break;
    }
    case LOOM_COMM_OP_REDUCE_SCATTER:
        reduce_in_rank_order(w, a, (size_t)r * bytes, recv, a->count);
        break;
    case LOOM_COMM_OP_ALL_GATHER:
        for (int k = 0; k < n; k++) {
            const void *src = w->slots[k].send;
            if (recv + (size_t)k * bytes != src) memcpy(recv + (size_t)k * bytes, src, bytes);
        }
        break;
    case LOOM_COMM_OP_ALL_TO_ALL:
        for (int k = 0; k < n; k++) {
            memcpy(recv + (size_t)k * bytes, (const char *)w->slots[k].send + (size_t)r * bytes,
                   bytes);
        }
        break;
    case LOOM_COMM_OP_BROADCAST:
        if (recv != w->slots[a->root].send) memcpy(recv, w->slots[a->root].send, bytes);
        break;
    default:
        LOOM_ASSERT(0);  // comm.c sends only data collectives here
    }
    st = world_barrier(c, a, 0);
done:
    loom__free(copy);
    return st;
}

// ---- point to point -----------------------------------------------------------------------------

// The size class of a message of `bytes`, or -1 when it is larger than every class.
static int msg_class(size_t bytes) {
    for (int k = 0; k < MSG_CLASSES; k++) {
        if ((uint64_t)bytes <= (uint64_t)1 << (MSG_MIN_SHIFT + k)) return k;
    }
    return -1;
}

// Under w->mu: a cached block for a message of class k (NULL when there is none).
static local_message *msg_reuse(local_world *w, int k) {
    local_message *m = k >= 0 ? w->cache[k] : NULL;
    if (m) {
        w->cache[k] = m->next;
        w->cached[k]--;
    }
    return m;
}

// Under w->mu: keep a block that is done with for the next send of its class, unless the class
// holds MSG_CACHE_PER_CLASS already; returns the block when the caller must free it (after
// unlocking). A block is cached only after it carried a message, so the cache never holds more
// than the messages that were in flight at once.
static local_message *msg_recycle(local_world *w, local_message *m) {
    int k = m->size_class;
    if (k < 0 || w->cached[k] >= MSG_CACHE_PER_CLASS) return m;
    m->next = w->cache[k];
    w->cache[k] = m;
    w->cached[k]++;
    return NULL;
}

// Under w->mu: whether send `a` cannot be delivered (the world failed, or the peer destroyed
// its handle, which poisons the world); the failure raised, or LOOM_OK.
static loom_status send_refused(loom_comm_t c, const loom_comm_args *a) {
    local_world *w = world_of(c);
    if (!w->failure.failed && w->departed[a->peer]) {
        loom__comm_failure_set(&w->failure, NULL, "rank %d destroyed the communicator "
                               "without receiving from rank %d (tag %d)", a->peer, c->rank,
                               a->tag);
        pthread_cond_broadcast(&w->cv);
    }
    return w->failure.failed ? loom__comm_failure_raise(c, a, &w->failure) : LOOM_OK;
}

// Eager: copy the message into a block, link it at the end of the peer's inbox, return.
static loom_status local_send(loom_comm_t c, const loom_comm_args *a) {
    local_world *w = world_of(c);
    size_t bytes = a->count * a->elem_size;
    int k = msg_class(bytes);
    pthread_mutex_lock(&w->mu);
    loom_status st = send_refused(c, a);
    local_message *m = st < 0 ? NULL : msg_reuse(w, k);
    pthread_mutex_unlock(&w->mu);
    if (st < 0) return st;
    if (!m) {
        size_t capacity = k >= 0 ? (size_t)1 << (MSG_MIN_SHIFT + k) : bytes;
        m = capacity <= SIZE_MAX - sizeof *m ? loom__malloc(sizeof *m + capacity) : NULL;
        if (!m) {
            char call[128];
            loom__comm_describe(a, call, sizeof call);
            return loom__error(LOOM_ERR_NOMEM, "%s on rank %d: out of memory copying the %zu "
                               "bytes of the message", call, c->rank, bytes);
        }
        m->size_class = k;
    }
    m->next = NULL;
    m->src = c->rank;
    m->tag = a->tag;
    m->bytes = bytes;
    memcpy(m->data, a->send, bytes);  // unlocked: the other ranks go on meanwhile
    pthread_mutex_lock(&w->mu);
    st = send_refused(c, a);  // the copy gave the peer time to leave
    if (st == LOOM_OK) {
        local_inbox *in = &w->inbox[a->peer];
        *in->tail = m;
        in->tail = &m->next;
        m = NULL;
        pthread_cond_broadcast(&w->cv);
    } else {
        m = msg_recycle(w, m);
    }
    pthread_mutex_unlock(&w->mu);
    loom__free(m);
    return st;
}

// Take the first message from the peer with this tag (waiting for it) and copy it out. A
// message of another length is dropped and reported here only: its sender has moved on.
static loom_status local_recv(loom_comm_t c, const loom_comm_args *a) {
    local_world *w = world_of(c);
    local_inbox *in = &w->inbox[c->rank];
    size_t bytes = a->count * a->elem_size;
    loom_status st = LOOM_OK;
    struct timespec deadline = deadline_after(c->cfg.timeout_s);
    int timed_out = 0;
    local_message **p;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        for (p = &in->head; *p && ((*p)->src != a->peer || (*p)->tag != a->tag);
             p = &(*p)->next) {}
        if (*p) break;
        if (!w->failure.failed && w->departed[a->peer]) {
            loom__comm_failure_set(&w->failure, NULL, "rank %d destroyed the communicator "
                                   "without sending to rank %d (tag %d)", a->peer, c->rank,
                                   a->tag);
        } else if (!w->failure.failed && timed_out) {
            loom__comm_failure_set(&w->failure, NULL, "rank %d did not send to rank %d (tag %d) "
                                   "within %.1f s", a->peer, c->rank, a->tag, c->cfg.timeout_s);
        }
        if (w->failure.failed) {
            st = loom__comm_failure_raise(c, a, &w->failure);
            pthread_cond_broadcast(&w->cv);
            pthread_mutex_unlock(&w->mu);
            return st;
        }
        timed_out = world_wait(w, &deadline);
    }
    local_message *m = *p;
    *p = m->next;
    if (in->tail == &m->next) in->tail = p;
    pthread_mutex_unlock(&w->mu);
    if (m->bytes == bytes) {
        memcpy(a->recv, m->data, bytes);
    } else {
        char call[128];
        loom__comm_describe(a, call, sizeof call);
        st = loom__error(LOOM_ERR_INVALID, "%s on rank %d: expected %zu bytes but rank %d sent "
                         "%zu with this tag (the message is dropped); the lengths and dtypes "
                         "must match", call, c->rank, bytes, a->peer, m->bytes);
    }
    pthread_mutex_lock(&w->mu);
    m = msg_recycle(w, m);
    pthread_mutex_unlock(&w->mu);
    loom__free(m);
    return st;
}

// ---- asynchronous all-reduce: a per-rank progress thread runs requests in issue order ----------

static void *progress_main(void *arg) {
    loom_comm_t c = arg;
    local_rank *lr = c->transport;
    pthread_mutex_lock(&lr->mu);
    for (;;) {
        while (!lr->queue_head && !lr->stopping) pthread_cond_wait(&lr->cv, &lr->mu);
        local_request *req = lr->queue_head;
        if (!req) break;  // stopping, and nothing left to run
        lr->queue_head = req->next;
        if (!lr->queue_head) lr->queue_tail = NULL;
        pthread_mutex_unlock(&lr->mu);
        loom_status st = local_collective(c, &req->args);
        pthread_mutex_lock(&lr->mu);
        req->status = st;
        if (st < 0) snprintf(req->error, sizeof req->error, "%s", loom_last_error());
        req->done = 1;  // the waiter may free req from here on
        lr->finished++;
        pthread_cond_broadcast(&lr->cv);
    }
    pthread_mutex_unlock(&lr->mu);
    return NULL;
}

// Wait until every request this rank issued has run, so the next collective follows them.
static void drain_async(loom_comm_t c) {
    local_rank *lr = c->transport;
    if (!lr->progress_started) return;
    pthread_mutex_lock(&lr->mu);
    while (lr->finished < lr->issued) pthread_cond_wait(&lr->cv, &lr->mu);
    pthread_mutex_unlock(&lr->mu);
}

static loom_status local_start_async(loom_comm_t c, const loom_comm_args *a,
                                     loom_comm_request_t *out) {
    local_rank *lr = c->transport;
    if (!lr->progress_started) {
        int rc = pthread_create(&lr->progress, NULL, progress_main, c);
        if (rc != 0) {
            return loom__error(LOOM_ERR_NOMEM, "all_reduce_async on rank %d: cannot start the "
                               "progress thread: %s", c->rank, strerror(rc));
        }
        lr->progress_started = 1;
    }
    local_request *req = loom__calloc(1, sizeof *req);
    if (!req) return LOOM_ERR_NOMEM;
    req->base.comm = c;
    req->args = *a;
    pthread_mutex_lock(&lr->mu);
    if (lr->queue_tail) {
        lr->queue_tail->next = req;
    } else {
        lr->queue_head = req;
    }
    lr->queue_tail = req;
    lr->issued++;
    pthread_cond_broadcast(&lr->cv);
    pthread_mutex_unlock(&lr->mu);
    *out = &req->base;
    return LOOM_OK;
}

static loom_status local_wait(loom_comm_request_t base) {
    local_request *req = (local_request *)base;
    local_rank *lr = base->comm->transport;
    pthread_mutex_lock(&lr->mu);
    while (!req->done) pthread_cond_wait(&lr->cv, &lr->mu);
    pthread_mutex_unlock(&lr->mu);
    loom_status st = req->status;
    if (st < 0) loom__error(st, "%s", req->error);
    loom__free(req);
    return st;
}

// ---- handles, split, abort ----------------------------------------------------------------------

static loom_status local_run(loom_comm_t c, const loom_comm_args *a) {
    if (a->op == LOOM_COMM_OP_SEND) return local_send(c, a);
    if (a->op == LOOM_COMM_OP_RECV) return local_recv(c, a);
    drain_async(c);
    return local_collective(c, a);
}

static loom_status local_split(loom_comm_t c, const loom_comm_args *a, int color, int key,
                               loom_comm_t *out);
static void local_abort(loom_comm_t c, const char *why);
static void local_destroy(loom_comm_t c);

static const loom_comm_vtable local_vtable = {
    .run = local_run,
    .start_async = local_start_async,
    .wait = local_wait,
    .split = local_split,
    .abort = local_abort,
    .destroy = local_destroy,
};

// Rank `rank`'s handle on w; on failure the rank's place in w is given up.
static loom_status local_handle_new(local_world *w, int rank, const loom_comm_config *cfg,
                                    loom_comm_t *out) {
    local_rank *lr = loom__calloc(1, sizeof *lr);
    loom_comm_t c = lr ? loom__comm_new(&local_vtable, LOOM_COMM_LOCAL, rank, w->size, cfg, lr)
                       : NULL;
    if (!c) {
        loom__free(lr);
        world_release(w, rank);
        return LOOM_ERR_NOMEM;
    }
    lr->world = w;
    pthread_mutex_init(&lr->mu, NULL);
    pthread_cond_init(&lr->cv, NULL);
    *out = c;
    return LOOM_OK;
}

static void local_destroy(loom_comm_t c) {
    local_rank *lr = c->transport;
    if (lr->progress_started) {  // runs what is queued, then stops
        pthread_mutex_lock(&lr->mu);
        lr->stopping = 1;
        pthread_cond_broadcast(&lr->cv);
        pthread_mutex_unlock(&lr->mu);
        pthread_join(lr->progress, NULL);
    }
    world_release(lr->world, c->rank);
    pthread_cond_destroy(&lr->cv);
    pthread_mutex_destroy(&lr->mu);
    loom__free(lr);
}

loom_status loom__comm_local_create_all(int n, const loom_comm_config *cfg, loom_comm_t *comms) {
    local_family *family = family_new();
    int *ranks = loom__malloc((size_t)n * sizeof *ranks);
    local_world *w = NULL;
    if (family && ranks) {
        for (int r = 0; r < n; r++) ranks[r] = r;
        w = world_new(n, family, ranks);
    }
    loom__free(ranks);
    if (!w) {
        if (family) {
            pthread_mutex_destroy(&family->mu);
            loom__free(family);
        }
        return LOOM_ERR_NOMEM;
    }
    loom_status st = LOOM_OK;
    for (int r = 0; r < n; r++) {
        if (st == LOOM_OK) {
            st = local_handle_new(w, r, cfg, &comms[r]);
        } else {
            world_release(w, r);
        }
    }
    if (st < 0) {
        for (int r = 0; r < n; r++) {
            loom_comm_destroy(comms[r]);
            comms[r] = NULL;
        }
    }
    return st;
}

// Whether parent rank q (key kq) comes before rank p (key kp) in the new communicator.
static int split_precedes(int kq, int q, int kp, int p) { return kq < kp || (kq == kp && q < p); }

// Publish (color, key), meet; each group's leader (new rank 0) creates its world; meet again;
// every member takes its handle on its leader's world.
static loom_status local_split(loom_comm_t c, const loom_comm_args *a, int color, int key,
                               loom_comm_t *out) {
    drain_async(c);
    local_world *w = world_of(c);
    int r = c->rank;
    w->slots[r].color = color;
    w->slots[r].key = key;
    LOOM_CHECK(world_barrier(c, a, 0));

    int new_rank = 0, new_size = 0, leader = -1;
    for (int q = 0; color >= 0 && q < c->size; q++) {
        const local_slot *s = &w->slots[q];
        if (s->color != color) continue;
        new_size++;
        if (split_precedes(s->key, q, key, r)) new_rank++;
        if (leader < 0 || split_precedes(s->key, q, w->slots[leader].key, leader)) leader = q;
    }
    if (color >= 0 && leader == r) {
        // Members in new-rank order: by (key, parent rank); record their top-level ranks.
        int *tops = loom__malloc((size_t)new_size * sizeof *tops);
        if (tops) {
            for (int q = 0; q < c->size; q++) {
                const local_slot *s = &w->slots[q];
                if (s->color != color) continue;
                int nr = 0;
                for (int p = 0; p < c->size; p++) {
                    const local_slot *t = &w->slots[p];
                    nr += t->color == color && split_precedes(t->key, p, s->key, q);
                }
                tops[nr] = w->top_rank[q];
            }
            w->slots[r].split_result = world_new(new_size, w->family, tops);
            loom__free(tops);
        } else {
            w->slots[r].split_result = NULL;
        }
    }
    loom_status st = world_barrier(c, a, 0);
    if (st < 0) {
        // This barrier never completes for anyone now, so no member took a handle on the new
        // world: its creator frees it.
        if (color >= 0 && leader == r) world_free(w->slots[r].split_result);
        return st;
    }
    if (color < 0) return LOOM_OK;
    local_world *nw = w->slots[leader].split_result;
    if (!nw) {
        return loom__error(LOOM_ERR_NOMEM, "split #%llu on rank %d: rank %d (the new group's "
                           "leader) ran out of memory creating it",
                           (unsigned long long)a->seq, r, leader);
    }
    return local_handle_new(nw, new_rank, &c->cfg, out);
}

// Poison every world of the family: the caller's with its rank there, the others with its rank
// in them (or its top-level rank when it is not a member).
static void local_abort(loom_comm_t c, const char *why) {
    local_world *w = world_of(c);
    int top = w->top_rank[c->rank];
    local_family *f = w->family;
    pthread_mutex_lock(&f->mu);
    for (local_world *v = f->worlds; v; v = v->family_next) {
        pthread_mutex_lock(&v->mu);
        int member = -1;
        for (int q = 0; q < v->size && member < 0; q++) {
            if (v->top_rank[q] == top) member = q;
        }
        if (v == w) member = c->rank;
        if (member >= 0) {
            loom__comm_failure_set(&v->failure, NULL, "rank %d failed: %s", member, why);
        } else {
            loom__comm_failure_set(&v->failure, NULL, "rank %d of the top-level communicator "
                                   "failed: %s", top, why);
        }
        pthread_cond_broadcast(&v->cv);
        pthread_mutex_unlock(&v->mu);
    }
    pthread_mutex_unlock(&f->mu);
}
