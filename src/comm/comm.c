// Communicator entry points: argument validation in one place, then dispatch through the
// transport's vtable; plus the reduction and failure-message helpers every transport shares.

#include "comm/comm-impl.h"
#include "core/core.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

// Largest rank count of a local communicator (threads of one process).
#define LOCAL_MAX_RANKS 1024

static const char *const op_names[LOOM_COMM_OP_COUNT] = {
    [LOOM_COMM_OP_ALL_REDUCE] = "all_reduce", [LOOM_COMM_OP_REDUCE_SCATTER] = "reduce_scatter",
    [LOOM_COMM_OP_ALL_GATHER] = "all_gather", [LOOM_COMM_OP_ALL_TO_ALL] = "all_to_all",
    [LOOM_COMM_OP_BROADCAST] = "broadcast",   [LOOM_COMM_OP_BARRIER] = "barrier",
    [LOOM_COMM_OP_SPLIT] = "split",           [LOOM_COMM_OP_SEND] = "send",
    [LOOM_COMM_OP_RECV] = "recv",
};

const char *loom__comm_op_name(loom_comm_op op) {
    return (unsigned)op < LOOM_COMM_OP_COUNT ? op_names[op] : "?";
}

loom_comm_config loom_comm_config_default(void) {
    loom_comm_config cfg = {.timeout_s = 60.0};
    return cfg;
}

const char *loom_comm_kind_name(loom_comm_kind kind) {
    switch (kind) {
    case LOOM_COMM_LOCAL: return "local";
    case LOOM_COMM_MPI: return "mpi";
    case LOOM_COMM_NCCL: return "nccl";
    case LOOM_COMM_KIND_COUNT: break;
    }
    return "?";
}

// ---- handles ------------------------------------------------------------------------------------

loom_comm_t loom__comm_new(const loom_comm_vtable *vt, loom_comm_kind kind, int rank, int size,
                           const loom_comm_config *cfg, void *transport) {
    loom_comm_t c = loom__calloc(1, sizeof *c);
    if (!c) return NULL;
    c->vt = vt;
    c->kind = kind;
    c->rank = rank;
    c->size = size;
    c->cfg = *cfg;
    c->transport = transport;
    return c;
}

void loom__comm_free(loom_comm_t c) { loom__free(c); }

int loom_comm_rank(loom_comm_t c) { return c ? c->rank : -1; }
int loom_comm_size(loom_comm_t c) { return c ? c->size : 0; }
loom_comm_kind loom_comm_get_kind(loom_comm_t c) { return c ? c->kind : LOOM_COMM_KIND_COUNT; }

// ---- shared helpers -----------------------------------------------------------------------------

void loom__comm_reduce(void *dst, const void *a, const void *b, size_t count, loom_dtype dtype,
                       loom_reduce_op op) {
    if (dtype == LOOM_DTYPE_F32) {
        float *d = dst;
        const float *x = a, *y = b;
        if (op == LOOM_REDUCE_SUM) {
            for (size_t i = 0; i < count; i++) d[i] = x[i] + y[i];
        } else {  // MAX; a NaN on either side wins
            for (size_t i = 0; i < count; i++) d[i] = (x[i] >= y[i] || x[i] != x[i]) ? x[i] : y[i];
        }
    } else {
        LOOM_ASSERT(dtype == LOOM_DTYPE_I32);
        int32_t *d = dst;
        const int32_t *x = a, *y = b;
        if (op == LOOM_REDUCE_SUM) {
            for (size_t i = 0; i < count; i++) d[i] = (int32_t)((uint32_t)x[i] + (uint32_t)y[i]);
        } else {
            for (size_t i = 0; i < count; i++) d[i] = x[i] >= y[i] ? x[i] : y[i];
        }
    }
}

void loom__comm_describe(const loom_comm_args *args, char *buf, size_t cap) {
    const char *name = loom__comm_op_name(args->op);
    if (args->op == LOOM_COMM_OP_SEND || args->op == LOOM_COMM_OP_RECV) {
        snprintf(buf, cap, "%s #%" PRIu64 " %s rank %d (tag %d)", name, args->seq,
                 args->op == LOOM_COMM_OP_SEND ? "to" : "from", args->peer, args->tag);
    } else {
        snprintf(buf, cap, "%s #%" PRIu64, name, args->seq);
    }
}

void loom__comm_failure_set(loom_comm_failure *f, const loom_comm_args *origin, const char *fmt,
                            ...) {
    if (f->failed) return;
    f->failed = 1;
    f->origin[0] = '\0';
    if (origin) loom__comm_describe(origin, f->origin, sizeof f->origin);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->reason, sizeof f->reason, fmt, ap);
    va_end(ap);
}

loom_status loom__comm_failure_raise(loom_comm_t c, const loom_comm_args *args,
                                     const loom_comm_failure *f) {
    char call[128];
    loom__comm_describe(args, call, sizeof call);
    const char *kind = loom_comm_kind_name(c->kind);
    if (f->origin[0] && strcmp(f->origin, call) != 0) {
        return loom__error(LOOM_ERR_COMM,
                           "%s on rank %d of %d (%s): the communicator failed earlier, at %s: %s",
                           call, c->rank, c->size, kind, f->origin, f->reason);
    }
    return loom__error(LOOM_ERR_COMM, "%s on rank %d of %d (%s): %s", call, c->rank, c->size,
                       kind, f->reason);
}

// ---- validation ---------------------------------------------------------------------------------

static loom_status check_config(const char *fn, const loom_comm_config *cfg) {
    if (!(cfg->timeout_s > 0) || !isfinite(cfg->timeout_s)) {
        return loom__error(LOOM_ERR_INVALID,
                           "%s: config timeout_s %g must be a positive number of seconds "
                           "(default %g)",
                           fn, cfg->timeout_s, loom_comm_config_default().timeout_s);
    }
    return LOOM_OK;
}

static loom_status check_comm(const char *fn, loom_comm_t c) {
    if (!c) return loom__error(LOOM_ERR_INVALID, "%s: the communicator is NULL", fn);
    return LOOM_OK;
}

// Element type (and reduction) support, and the element size into args.
static loom_status check_dtype(const char *fn, loom_comm_t c, loom_comm_args *a, int reducing) {
    if ((unsigned)a->dtype >= LOOM_DTYPE_COUNT) {
        return loom__error(LOOM_ERR_INVALID, "%s (rank %d): dtype %d is not a loom_dtype", fn,
                           c->rank, (int)a->dtype);
    }
    const char *name = loom_dtype_name(a->dtype);
    if (reducing) {
        if ((unsigned)a->reduce >= LOOM_REDUCE_COUNT) {
            return loom__error(LOOM_ERR_INVALID, "%s (rank %d): reduce op %d is not a "
                               "loom_reduce_op (SUM or MAX)", fn, c->rank, (int)a->reduce);
        }
        if (a->dtype != LOOM_DTYPE_F32 && a->dtype != LOOM_DTYPE_I32) {
            return loom__error(LOOM_ERR_UNSUPPORTED, "%s (rank %d): reductions support F32 and "
                               "I32, not %s; convert to F32 first", fn, c->rank, name);
        }
    } else if (a->dtype != LOOM_DTYPE_F32 && a->dtype != LOOM_DTYPE_I32 &&
               a->dtype != LOOM_DTYPE_F16 && a->dtype != LOOM_DTYPE_BF16) {
        return loom__error(LOOM_ERR_UNSUPPORTED, "%s (rank %d): communicators move F32, I32, "
                           "F16 and BF16, not %s", fn, c->rank, name);
    }
    a->elem_size = loom_dtype_size(a->dtype);
    return LOOM_OK;
}

// Whether byte ranges [a, a+an) and [b, b+bn) share a byte.
static int ranges_overlap(const void *a, size_t an, const void *b, size_t bn) {
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return x < y + bn && y < x + an;
}

// Whether send sits `elems` elements after recv (send_first: recv sits that far after send):
// the in-place positions. Unsigned arithmetic, so absurd counts cannot overflow.
static int at_offset(const loom_comm_args *a, size_t elems, int send_first) {
    uintptr_t offset = (uintptr_t)elems * (uintptr_t)a->elem_size;
    uintptr_t send = (uintptr_t)a->send, recv = (uintptr_t)a->recv;
    return send_first ? send + offset == recv : send == recv + offset;
}

// Buffer lengths (in elements of args), NULL pointers and aliasing. `send_elems` 0: send unused.
// in_place: send is at the call's in-place position, where it may overlap recv.
static loom_status check_buffers(const char *fn, loom_comm_t c, const loom_comm_args *a,
                                 size_t send_elems, size_t recv_elems, int in_place,
                                 const char *in_place_rule) {
    size_t es = a->elem_size;
    if ((send_elems && send_elems > SIZE_MAX / es) || (recv_elems && recv_elems > SIZE_MAX / es)) {
        return loom__error(LOOM_ERR_INVALID, "%s (rank %d): count %zu overflows the address "
                           "space", fn, c->rank, a->count);
    }
    if (send_elems && !a->send) {
        return loom__error(LOOM_ERR_INVALID, "%s (rank %d): send buffer is NULL (count %zu)", fn,
                           c->rank, a->count);
    }
    if (recv_elems && !a->recv) {
        return loom__error(LOOM_ERR_INVALID, "%s (rank %d): recv buffer is NULL (count %zu)", fn,
                           c->rank, a->count);
    }
    if (send_elems && recv_elems && !in_place &&
        ranges_overlap(a->send, send_elems * es, a->recv, recv_elems * es)) {
        return loom__error(LOOM_ERR_INVALID, "%s (rank %d): send and recv overlap; in place "
                           "means %s", fn, c->rank, in_place_rule);
    }
    return LOOM_OK;
}

static loom_status check_rank_arg(const char *fn, loom_comm_t c, const char *what, int r) {
    if (r < 0 || r >= c->size) {
        return loom__error(LOOM_ERR_INVALID, "%s (rank %d): %s %d is out of range [0, %d)", fn,
                           c->rank, what, r, c->size);
    }
    return LOOM_OK;
}

// size * n, saturating at SIZE_MAX (which check_buffers then rejects as an overflow).
static size_t times_size(loom_comm_t c, size_t n) {
    return n > SIZE_MAX / (size_t)c->size ? SIZE_MAX : n * (size_t)c->size;
}

// ---- creation -----------------------------------------------------------------------------------

loom_status loom_comm_local_create_all(int n, const loom_comm_config *cfg, loom_comm_t *comms) {
    static const char fn[] = "loom_comm_local_create_all";
    if (!comms) return loom__error(LOOM_ERR_INVALID, "%s: comms is NULL", fn);
    if (n < 1 || n > LOCAL_MAX_RANKS) {
        return loom__error(LOOM_ERR_INVALID, "%s: %d ranks; use 1 to %d", fn, n, LOCAL_MAX_RANKS);
    }
    for (int r = 0; r < n; r++) comms[r] = NULL;
    loom_comm_config config = cfg ? *cfg : loom_comm_config_default();
    LOOM_CHECK(check_config(fn, &config));
    return loom__comm_local_create_all(n, &config, comms);
}

loom_status loom_comm_mpi_create(void *mpi_comm, const loom_comm_config *cfg, loom_comm_t *out) {
    static const char fn[] = "loom_comm_mpi_create";
    if (!out) return loom__error(LOOM_ERR_INVALID, "%s: out is NULL", fn);
    *out = NULL;
    loom_comm_config config = cfg ? *cfg : loom_comm_config_default();
    LOOM_CHECK(check_config(fn, &config));
    return loom__comm_mpi_create(mpi_comm, &config, out);
}

loom_status loom_comm_split(loom_comm_t c, int color, int key, loom_comm_t *out) {
    static const char fn[] = "loom_comm_split";
    if (!out) return loom__error(LOOM_ERR_INVALID, "%s: out is NULL", fn);
    *out = NULL;
    LOOM_CHECK(check_comm(fn, c));
    loom_comm_args a = {.op = LOOM_COMM_OP_SPLIT, .seq = ++c->collectives_issued};
    return c->vt->split(c, &a, color, key, out);
}

void loom_comm_destroy(loom_comm_t c) {
    if (!c) return;
    c->vt->destroy(c);
    loom__comm_free(c);
}

void loom_comm_abort(loom_comm_t c, const char *why) {
    if (!c) return;
    c->vt->abort(c, why ? why : "(no reason given)");
}

// ---- collectives --------------------------------------------------------------------------------

// Numbers a validated collective and runs it.
static loom_status run_collective(loom_comm_t c, loom_comm_args *a) {
    a->seq = ++c->collectives_issued;
    return c->vt->run(c, a);
}

// Validation shared by the blocking and the asynchronous all-reduce.
static loom_status check_all_reduce(const char *fn, loom_comm_t c, loom_comm_args *a) {
    LOOM_CHECK(check_comm(fn, c));
    LOOM_CHECK(check_dtype(fn, c, a, 1));
    if (a->count == 0) return LOOM_OK;
    return check_buffers(fn, c, a, a->count, a->count, a->send == a->recv, "send == recv");
}

loom_status loom_comm_all_reduce(loom_comm_t c, const void *send, void *recv, size_t count,
                                 loom_dtype dtype, loom_reduce_op op) {
    loom_comm_args a = {.op = LOOM_COMM_OP_ALL_REDUCE, .send = send, .recv = recv,
                        .count = count, .dtype = dtype, .reduce = op};
    LOOM_CHECK(check_all_reduce("loom_comm_all_reduce", c, &a));
    return count ? run_collective(c, &a) : LOOM_OK;
}

loom_status loom_comm_reduce_scatter(loom_comm_t c, const void *send, void *recv,
                                     size_t recvcount, loom_dtype dtype, loom_reduce_op op) {
    static const char fn[] = "loom_comm_reduce_scatter";
    loom_comm_args a = {.op = LOOM_COMM_OP_REDUCE_SCATTER, .send = send, .recv = recv,
                        .count = recvcount, .dtype = dtype, .reduce = op};
    LOOM_CHECK(check_comm(fn, c));
    LOOM_CHECK(check_dtype(fn, c, &a, 1));
    if (recvcount == 0) return LOOM_OK;
    // In place: recv is this rank's slice of send, so send starts rank slices before recv.
    int in_place = at_offset(&a, (size_t)c->rank * recvcount, 1);
    LOOM_CHECK(check_buffers(fn, c, &a, times_size(c, recvcount), recvcount, in_place,
                             "recv == send + rank * recvcount"));
    return run_collective(c, &a);
}

loom_status loom_comm_all_gather(loom_comm_t c, const void *send, void *recv, size_t sendcount,
                                 loom_dtype dtype) {
    static const char fn[] = "loom_comm_all_gather";
    loom_comm_args a = {.op = LOOM_COMM_OP_ALL_GATHER, .send = send, .recv = recv,
                        .count = sendcount, .dtype = dtype};
    LOOM_CHECK(check_comm(fn, c));
    LOOM_CHECK(check_dtype(fn, c, &a, 0));
    if (sendcount == 0) return LOOM_OK;
    int in_place = at_offset(&a, (size_t)c->rank * sendcount, 0);
    LOOM_CHECK(check_buffers(fn, c, &a, sendcount, times_size(c, sendcount), in_place,
                             "send == recv + rank * sendcount"));
    return run_collective(c, &a);
}

loom_status loom_comm_all_to_all(loom_comm_t c, const void *send, void *recv, size_t count,
                                 loom_dtype dtype) {
    static const char fn[] = "loom_comm_all_to_all";
    loom_comm_args a = {.op = LOOM_COMM_OP_ALL_TO_ALL, .send = send, .recv = recv,
                        .count = count, .dtype = dtype};
    LOOM_CHECK(check_comm(fn, c));
    LOOM_CHECK(check_dtype(fn, c, &a, 0));
    if (count == 0) return LOOM_OK;
    size_t total = times_size(c, count);
    LOOM_CHECK(check_buffers(fn, c, &a, total, total, send == recv, "send == recv"));
    return run_collective(c, &a);
}

loom_status loom_comm_broadcast(loom_comm_t c, const void *send, void *recv, size_t count,
                                loom_dtype dtype, int root) {
    static const char fn[] = "loom_comm_broadcast";
    loom_comm_args a = {.op = LOOM_COMM_OP_BROADCAST, .send = send, .recv = recv,
                        .count = count, .dtype = dtype, .root = root};
    LOOM_CHECK(check_comm(fn, c));
    LOOM_CHECK(check_dtype(fn, c, &a, 0));
    LOOM_CHECK(check_rank_arg(fn, c, "root", root));
    if (count == 0) return LOOM_OK;
    if (c->rank != root) a.send = NULL;  // only the root's send is read
    LOOM_CHECK(check_buffers(fn, c, &a, c->rank == root ? count : 0, count, a.send == recv,
                             "send == recv"));
    return run_collective(c, &a);
}

loom_status loom_comm_barrier(loom_comm_t c) {
    LOOM_CHECK(check_comm("loom_comm_barrier", c));
    loom_comm_args a = {.op = LOOM_COMM_OP_BARRIER};
    return run_collective(c, &a);
}

// ---- point to point -----------------------------------------------------------------------------

static loom_status point_to_point(const char *fn, loom_comm_t c, loom_comm_args *a) {
    LOOM_CHECK(check_comm(fn, c));
    LOOM_CHECK(check_dtype(fn, c, a, 0));
    LOOM_CHECK(check_rank_arg(fn, c, "peer", a->peer));
    if (a->peer == c->rank) {
        return loom__error(LOOM_ERR_INVALID, "%s (rank %d): peer is this rank; messages go "
                           "to other ranks, copy the buffer instead", fn, c->rank);
    }
    if (a->tag < 0) {
        return loom__error(LOOM_ERR_INVALID, "%s (rank %d): tag %d is negative", fn, c->rank,
                           a->tag);
    }
    if (a->count == 0) return LOOM_OK;
    int sending = a->op == LOOM_COMM_OP_SEND;
    LOOM_CHECK(check_buffers(fn, c, a, sending ? a->count : 0, sending ? 0 : a->count, 0, "-"));
    a->seq = ++c->p2p_issued;
    return c->vt->run(c, a);
}

loom_status loom_comm_send(loom_comm_t c, const void *buf, size_t count, loom_dtype dtype,
                           int peer, int tag) {
    loom_comm_args a = {.op = LOOM_COMM_OP_SEND, .send = buf, .count = count, .dtype = dtype,
                        .peer = peer, .tag = tag};
    return point_to_point("loom_comm_send", c, &a);
}

loom_status loom_comm_recv(loom_comm_t c, void *buf, size_t count, loom_dtype dtype, int peer,
                           int tag) {
    loom_comm_args a = {.op = LOOM_COMM_OP_RECV, .recv = buf, .count = count, .dtype = dtype,
                        .peer = peer, .tag = tag};
    return point_to_point("loom_comm_recv", c, &a);
}

// ---- asynchronous all-reduce --------------------------------------------------------------------

loom_status loom_comm_all_reduce_async(loom_comm_t c, const void *send, void *recv, size_t count,
                                       loom_dtype dtype, loom_reduce_op op,
                                       loom_comm_request_t *req) {
    static const char fn[] = "loom_comm_all_reduce_async";
    if (!req) return loom__error(LOOM_ERR_INVALID, "%s: req is NULL", fn);
    *req = NULL;
    loom_comm_args a = {.op = LOOM_COMM_OP_ALL_REDUCE, .send = send, .recv = recv,
                        .count = count, .dtype = dtype, .reduce = op};
    LOOM_CHECK(check_all_reduce(fn, c, &a));
    if (count == 0) return LOOM_OK;  // *req stays NULL; loom_comm_wait(NULL) succeeds
    a.seq = ++c->collectives_issued;
    return c->vt->start_async(c, &a, req);
}

loom_status loom_comm_wait(loom_comm_request_t req) {
    if (!req) return LOOM_OK;
    return req->comm->vt->wait(req);
}
