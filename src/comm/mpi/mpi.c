// MPI transport: one process per rank over OpenMPI. Every call but send is a non-blocking MPI
// operation polled against a deadline, so a rank that stops answering yields LOOM_ERR_COMM, not
// a hang. Sends are eager: they copy the message into a staging block, post MPI_Isend and
// return; the block waits in the communicator's list of sends in flight until a later call on
// it (or its destroy, which waits for them up to the timeout) finds the send complete.
//
// Notices. Each loom MPI communicator owns two duplicates of the MPI communicator: `data` for
// the calls and `control` for notices, which ranks look for (MPI_Iprobe) while they poll.
// - loom_comm_abort sends "rank R failed: <why>" to every other rank of every live loom MPI
//   communicator of the process, and poisons them locally.
// - A collective that times out asks every rank where it is (a census, answered by ranks that
//   are inside a loom call on that communicator, with a grace of a quarter of the timeout, at
//   most 1 s), names the ranks that did not arrive, and sends that to everyone.
// Guaranteed: the aborting rank's own later calls fail at once; a peer inside (or later entering)
// a loom call on one of those communicators fails as soon as the notice arrives. Best effort:
// delivery itself (if the network loses notices, the peers fail at their own timeout).
// Limits: after LOOM_ERR_COMM, the MPI operation of the failed call stays pending (MPI cannot
// cancel collectives), so its buffers must stay allocated until the process exits; a destroy
// that gives up on sends in flight leaks their staging blocks (MPI may still read them); and
// each communicator's control duplicate (and a failed one's data duplicate) outlives its
// destroy, until MPI_Finalize (see mpi_destroy).

#include "comm/comm-impl.h"
#include "core/core.h"

#include <stdlib.h>

int loom_comm_mpi_launched(void) {
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK")) return 1;
    const char *ntasks = getenv("SLURM_NTASKS");
    return getenv("SLURM_PROCID") && ntasks && atoi(ntasks) > 1;
}

#ifndef LOOM_HAVE_MPI

int loom_comm_mpi_available(void) { return 0; }

loom_status loom__comm_mpi_create(void *mpi_comm, const loom_comm_config *cfg, loom_comm_t *out) {
    return loom__error(LOOM_ERR_UNSUPPORTED, "loom_comm_mpi_create: loom was built without MPI "
                       "(install an MPI such as libopenmpi-dev and reconfigure), or use the "
                       "local communicator");
}

#else

#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define NOTICE_TAG 1
#define NOTICE_TEXT sizeof(((loom_comm_failure *)0)->reason)

// Control messages on the `control` duplicate.
enum notice_kind {
    NOTICE_FAILED = 1,  // the sender's communicator failed: text says why
    NOTICE_QUERY,       // the sender timed out at collective `seq`: where are you?
    NOTICE_REPLY,       // answer to the query for `seq`: I am in call (op, at)
};

typedef struct mpi_notice {
    int32_t kind;
    int32_t op;   // REPLY: the call the sender is in
    uint64_t seq; // QUERY/REPLY: the collective asked about
    uint64_t at;  // REPLY: the sender's call's sequence number
    char text[NOTICE_TEXT];
} mpi_notice;

// A message on its way out, a notice or an eager send's staged copy: MPI reads `payload` until
// `request` completes, so the block lives until then (reap_outgoing frees it).
typedef struct mpi_outgoing {
    struct mpi_outgoing *next;
    MPI_Request request;
    loom_comm_args call;  // a send: the call it came from (op, peer, tag, seq), for messages
    unsigned char payload[];
} mpi_outgoing;

// What each rank answered during a timeout census.
typedef struct census_entry {
    int replied;
    int op;
    uint64_t at;
} census_entry;

typedef struct mpi_comm_data {
    MPI_Comm data, control;
    int rank, size;
    int tag_ub;
    loom_comm_failure failure;
    int notified;  // our FAILED notices went out (once)
    mpi_outgoing *notices;  // in flight on `control`
    mpi_outgoing *sends;    // eager sends in flight on `data`
    census_entry *census;  // non-NULL while this rank runs a census
    uint64_t census_seq;
    struct mpi_comm_data *next;  // live list
} mpi_comm_data;

typedef struct mpi_request {
    struct loom_comm_request base;
    MPI_Request request;
    loom_comm_args args;
} mpi_request;

// Live loom MPI communicators of this process, and whether loom initialized MPI.
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static mpi_comm_data *live_head;
static int live_count;
static int loom_initialized_mpi;

int loom_comm_mpi_available(void) { return 1; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Polling etiquette: spin briefly, then yield the core between polls (ranks often share cores).
// Never sleep: MPI moves large messages only while it is polled.
static void poll_pause(double waited_s) {
    if (waited_s >= 1e-4) sched_yield();
}

static void mpi_error_text(int rc, char *buf, size_t cap) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
    text[len] = '\0';
    snprintf(buf, cap, "MPI error %d: %s", rc, len ? text : "(no description)");
}

// Free the blocks of `list` (d->notices or d->sends) whose send has completed. With `abandon`,
// MPI_Request_free the others and leak their blocks, which MPI may still read. A send that MPI
// reports failed is let go the same way and, for an eager send, poisons d. Returns how many
// blocks remain in the list.
static int reap_outgoing(mpi_comm_data *d, mpi_outgoing **list, int abandon) {
    int left = 0;
    for (mpi_outgoing **p = list; *p;) {
        mpi_outgoing *o = *p;
        int done = 0, rc = MPI_Test(&o->request, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
            if (list == &d->sends) {
                char text[MPI_MAX_ERROR_STRING + 32];
                mpi_error_text(rc, text, sizeof text);
                loom__comm_failure_set(&d->failure, &o->call, "%s", text);
            }
            done = o->request == MPI_REQUEST_NULL;  // released by MPI: the block is ours
        }
        if (!done && !abandon && rc == MPI_SUCCESS) {
            p = &o->next;
            left++;
            continue;
        }
        *p = o->next;
        if (done) {
            loom__free(o);
        } else {
            MPI_Request_free(&o->request);  // o is leaked
        }
    }
    return left;
}

// Send a notice to rank `to` (best effort: dropped when memory or MPI fails).
static void post_notice(mpi_comm_data *d, int to, const mpi_notice *notice) {
    reap_outgoing(d, &d->notices, 0);
    mpi_outgoing *o = loom__malloc(sizeof *o + sizeof *notice);
    if (!o) return;
    memcpy(o->payload, notice, sizeof *notice);
    if (MPI_Isend(o->payload, (int)sizeof *notice, MPI_BYTE, to, NOTICE_TAG, d->control,
                  &o->request) != MPI_SUCCESS) {
        loom__free(o);
        return;
    }
    o->next = d->notices;
    d->notices = o;
}

static void post_to_all(mpi_comm_data *d, const mpi_notice *notice) {
    for (int q = 0; q < d->size; q++) {
        if (q != d->rank) post_notice(d, q, notice);
    }
}

// Tell every other rank of d why it is unusable (once per communicator).
static void send_failed_notices(mpi_comm_data *d, const char *text) {
    if (d->notified) return;
    d->notified = 1;
    mpi_notice notice = {.kind = NOTICE_FAILED};  // text truncated to fit, zero-terminated
    memcpy(notice.text, text, strnlen(text, sizeof notice.text - 1));
    post_to_all(d, &notice);
}

// Take delivered notices: record failures, answer queries (with `current`, the call this rank
// is in, or NULL), collect census replies. Returns whether d is failed.
static int receive_notices(mpi_comm_data *d, const loom_comm_args *current) {
    for (;;) {
        int flag = 0;
        MPI_Status status;
        if (MPI_Iprobe(MPI_ANY_SOURCE, NOTICE_TAG, d->control, &flag, &status) != MPI_SUCCESS ||
            !flag) {
            break;
        }
        mpi_notice in;
        if (MPI_Recv(&in, (int)sizeof in, MPI_BYTE, status.MPI_SOURCE, NOTICE_TAG, d->control,
                     MPI_STATUS_IGNORE) != MPI_SUCCESS) {
            break;
        }
        in.text[sizeof in.text - 1] = '\0';
        int from = status.MPI_SOURCE;
        if (in.kind == NOTICE_FAILED) {
            loom__comm_failure_set(&d->failure, NULL, "%s", in.text);
        } else if (in.kind == NOTICE_QUERY && current) {  // outside a call: no answer
            mpi_notice reply = {.kind = NOTICE_REPLY, .op = (int32_t)current->op,
                                .seq = in.seq, .at = current->seq};
            post_notice(d, from, &reply);
        } else if (in.kind == NOTICE_REPLY && d->census && in.seq == d->census_seq && from >= 0 &&
                   from < d->size) {
            d->census[from] = (census_entry){1, in.op, in.at};
        }
    }
    return d->failure.failed;
}

// Record an MPI error code as the communicator's failure and raise it.
static loom_status fail_with_mpi_error(loom_comm_t c, const loom_comm_args *a, int rc) {
    mpi_comm_data *d = c->transport;
    char text[MPI_MAX_ERROR_STRING + 32];
    mpi_error_text(rc, text, sizeof text);
    loom__comm_failure_set(&d->failure, a, "%s", text);
    return loom__comm_failure_raise(c, a, &d->failure);
}

// Appends "sep item" to buf.
static void append(char *buf, size_t cap, const char *sep, const char *item) {
    size_t used = strlen(buf);
    if (used < cap) snprintf(buf + used, cap - used, "%s%s", used ? sep : "", item);
}

// After collective `a` timed out: ask every rank where it is, give them a short grace to answer
// (the collective may still complete: then *done), and record which ranks did not arrive.
static loom_status timeout_census(loom_comm_t c, const loom_comm_args *a, MPI_Request *req,
                                  MPI_Status *status, int *done) {
    mpi_comm_data *d = c->transport;
    census_entry *census = loom__calloc((size_t)c->size, sizeof *census);
    if (census) {
        census[c->rank] = (census_entry){1, (int)a->op, a->seq};
        d->census = census;
        d->census_seq = a->seq;
        mpi_notice query = {.kind = NOTICE_QUERY, .seq = a->seq};
        post_to_all(d, &query);
        double grace = c->cfg.timeout_s * 0.25;
        double start = now_s(), end = start + (grace < 0.1 ? 0.1 : grace > 1.0 ? 1.0 : grace);
        for (int answered = 0; !*done && !d->failure.failed && answered < c->size;) {
            int rc = MPI_Test(req, done, status);
            if (rc != MPI_SUCCESS) {
                d->census = NULL;
                loom__free(census);
                return fail_with_mpi_error(c, a, rc);
            }
            receive_notices(d, a);
            double t = now_s();
            if (t > end) break;
            answered = 0;
            for (int q = 0; q < c->size; q++) answered += census[q].replied;
            poll_pause(t - start);
        }
        d->census = NULL;
    }
    if (*done || d->failure.failed) {
        loom__free(census);
        return LOOM_OK;
    }
    // "ranks 3, 5 did not arrive within 2.0 s (rank 5 is in all_gather #9)"
    char missing[160] = "", elsewhere[200] = "", item[96];
    int n_missing = 0;
    for (int q = 0; census && q < c->size; q++) {
        const census_entry *e = &census[q];
        if (e->replied && e->op == (int)a->op && e->at == a->seq) continue;
        snprintf(item, sizeof item, "%d", q);
        append(missing, sizeof missing, ", ", item);
        n_missing++;
        if (e->replied) {
            loom_comm_args there = {.op = (loom_comm_op)e->op, .seq = e->at};
            char call[64];
            loom__comm_describe(&there, call, sizeof call);
            snprintf(item, sizeof item, "rank %d is in %s", q, call);
            append(elsewhere, sizeof elsewhere, "; ", item);
        }
    }
    loom__free(census);
    if (n_missing == 0) {
        loom__comm_failure_set(&d->failure, a, "every rank has arrived but MPI did not complete "
                               "the call within %.1f s", c->cfg.timeout_s);
    } else {
        loom__comm_failure_set(&d->failure, a, "%s %s did not arrive within %.1f s%s%s%s",
                               n_missing > 1 ? "ranks" : "rank", missing, c->cfg.timeout_s,
                               elsewhere[0] ? " (" : "", elsewhere, elsewhere[0] ? ")" : "");
    }
    return LOOM_OK;
}

// Wait for `req` (the MPI side of call `a`): done, a failure notice, an MPI error, or the
// timeout, which poisons the communicator and tells the other ranks.
// How long a call that may already be complete keeps polling after a peer's failure notice.
#define NOTICE_GRACE_S 0.2

static loom_status poll_request(loom_comm_t c, const loom_comm_args *a, MPI_Request *req,
                                MPI_Status *status) {
    mpi_comm_data *d = c->transport;
    int collective = a->op != LOOM_COMM_OP_SEND && a->op != LOOM_COMM_OP_RECV;
    double start = now_s(), deadline = start + c->cfg.timeout_s;
    for (;;) {
        int done = 0, error_class = 0;
        int rc = MPI_Test(req, &done, status);
        if (rc != MPI_SUCCESS && a->op == LOOM_COMM_OP_RECV &&
            MPI_Error_class(rc, &error_class) == MPI_SUCCESS && error_class == MPI_ERR_TRUNCATE) {
            char call[128];
            loom__comm_describe(a, call, sizeof call);
            return loom__error(LOOM_ERR_INVALID, "%s on rank %d: rank %d sent more than the %zu "
                               "bytes expected with this tag; the lengths and dtypes must match",
                               call, c->rank, a->peer, a->count * a->elem_size);
        }
        if (rc != MPI_SUCCESS) return fail_with_mpi_error(c, a, rc);
        if (done) return LOOM_OK;
        if (receive_notices(d, a)) {
            // A peer failed, perhaps after this call completed on its side (it left a barrier
            // and aborted while our barrier had not been polled to completion yet): give the
            // call a moment to finish before failing it. Later calls fail at once.
            double grace = now_s() + NOTICE_GRACE_S;
            while (rc == MPI_SUCCESS && !done && now_s() < grace) {
                rc = MPI_Test(req, &done, status);
                if (!done) sched_yield();
            }
            if (rc == MPI_SUCCESS && done) return LOOM_OK;
            break;
        }
        double t = now_s();
        if (t > deadline) {
            char call[128];
            loom__comm_describe(a, call, sizeof call);
            if (collective) {
                LOOM_CHECK(timeout_census(c, a, req, status, &done));
                if (done) return LOOM_OK;
            } else {  // a receive (sends do not wait)
                loom__comm_failure_set(&d->failure, NULL, "rank %d did not send to rank %d "
                                       "(tag %d) within %.1f s", a->peer, c->rank, a->tag,
                                       c->cfg.timeout_s);
            }
            char text[sizeof call + NOTICE_TEXT + 64];
            snprintf(text, sizeof text, "rank %d gave up on %s: %s", c->rank, call,
                     d->failure.reason);
            send_failed_notices(d, text);
            break;
        }
        poll_pause(t - start);
    }
    // The operation stays pending inside MPI (collectives cannot be cancelled); a receive is
    // cancelled so that it cannot write into the caller's buffer later.
    if (a->op == LOOM_COMM_OP_RECV && MPI_Cancel(req) == MPI_SUCCESS) MPI_Request_free(req);
    return loom__comm_failure_raise(c, a, &d->failure);
}

static MPI_Datatype mpi_type(loom_dtype dtype) {
    switch (dtype) {
    case LOOM_DTYPE_F32: return MPI_FLOAT;
    case LOOM_DTYPE_I32: return MPI_INT32_T;
    default: return MPI_UINT16_T;  // F16, BF16: moved, never reduced
    }
}

// MPI counts are ints (all-to-all and all-gather buffers hold size of them).
static loom_status check_count(loom_comm_t c, const loom_comm_args *a) {
    size_t limit = a->op == LOOM_COMM_OP_ALL_TO_ALL || a->op == LOOM_COMM_OP_ALL_GATHER
                       ? (size_t)INT_MAX / (size_t)c->size
                       : (size_t)INT_MAX;
    if (a->count > limit) {
        char call[128];
        loom__comm_describe(a, call, sizeof call);
        return loom__error(LOOM_ERR_UNSUPPORTED, "%s on rank %d: %zu elements exceed MPI's int "
                           "counts; split the buffer into parts of at most %zu", call, c->rank,
                           a->count, limit);
    }
    return LOOM_OK;
}

// Start the MPI operation of `a` (not a send). *scratch: a buffer the operation writes instead
// of recv (the result is copied out by finish_call), owned by the caller.
static loom_status start_call(loom_comm_t c, const loom_comm_args *a, MPI_Request *req,
                              void **scratch) {
    mpi_comm_data *d = c->transport;
    *scratch = NULL;
    LOOM_CHECK(check_count(c, a));
    int n = (int)a->count;
    size_t bytes = a->count * a->elem_size;
    MPI_Datatype type = mpi_type(a->dtype);
    MPI_Op op = a->reduce == LOOM_REDUCE_MAX ? MPI_MAX : MPI_SUM;
    const char *in = a->send;
    char *out = a->recv;
    int rc = MPI_SUCCESS;
    switch (a->op) {
    case LOOM_COMM_OP_ALL_REDUCE:
        rc = MPI_Iallreduce(in == out ? MPI_IN_PLACE : in, out, n, type, op, d->data, req);
        break;
    case LOOM_COMM_OP_REDUCE_SCATTER:
        if (out == in + (size_t)c->rank * bytes) {  // in place: MPI forbids aliasing
            *scratch = loom__malloc(bytes);
            if (!*scratch) return LOOM_ERR_NOMEM;
            out = *scratch;
        }
        rc = MPI_Ireduce_scatter_block(in, out, n, type, op, d->data, req);
        break;
    case LOOM_COMM_OP_ALL_GATHER:
        rc = MPI_Iallgather(in == out + (size_t)c->rank * bytes ? MPI_IN_PLACE : in, n, type,
                            out, n, type, d->data, req);
        break;
    case LOOM_COMM_OP_ALL_TO_ALL:
        if (in == out) {
            *scratch = loom__malloc(bytes * (size_t)c->size);
            if (!*scratch) return LOOM_ERR_NOMEM;
            memcpy(*scratch, in, bytes * (size_t)c->size);
            in = *scratch;
        }
        rc = MPI_Ialltoall(in, n, type, out, n, type, d->data, req);
        break;
    case LOOM_COMM_OP_BROADCAST:
        if (c->rank == a->root && in != out) memcpy(out, in, bytes);
        rc = MPI_Ibcast(out, n, type, a->root, d->data, req);
        break;
    case LOOM_COMM_OP_BARRIER:
        rc = MPI_Ibarrier(d->data, req);
        break;
    case LOOM_COMM_OP_RECV:
        rc = MPI_Irecv(out, n, type, a->peer, a->tag, d->data, req);
        break;
    default:
        LOOM_ASSERT(0);  // split and send never come here
    }
    if (rc != MPI_SUCCESS) {
        loom__free(*scratch);
        *scratch = NULL;
        return fail_with_mpi_error(c, a, rc);
    }
    return LOOM_OK;
}

// After the operation completed: copy out of scratch, check a receive's length.
static loom_status finish_call(loom_comm_t c, const loom_comm_args *a, void *scratch,
                               const MPI_Status *status) {
    size_t bytes = a->count * a->elem_size;
    if (scratch && a->op == LOOM_COMM_OP_REDUCE_SCATTER) memcpy(a->recv, scratch, bytes);
    loom__free(scratch);
    if (a->op == LOOM_COMM_OP_RECV) {
        int got = 0;
        MPI_Get_count(status, MPI_BYTE, &got);
        if ((size_t)got != bytes) {
            char call[128];
            loom__comm_describe(a, call, sizeof call);
            return loom__error(LOOM_ERR_INVALID, "%s on rank %d: expected %zu bytes but rank %d "
                               "sent %d with this tag; the lengths and dtypes must match", call,
                               c->rank, bytes, a->peer, got);
        }
    }
    return LOOM_OK;
}

// What every call on d does first: free the staging blocks of the eager sends that have
// completed, and take delivered notices. Returns whether d is failed.
static int enter_call(mpi_comm_data *d, const loom_comm_args *a) {
    reap_outgoing(d, &d->sends, 0);
    return receive_notices(d, a);
}

// Eager: MPI sends a staged copy, so the caller may reuse its buffer as soon as MPI_Isend is
// posted; the block waits in d->sends until MPI is done with it.
static loom_status send_eager(loom_comm_t c, const loom_comm_args *a) {
    mpi_comm_data *d = c->transport;
    LOOM_CHECK(check_count(c, a));
    size_t bytes = a->count * a->elem_size;  // at most INT_MAX elements: no overflow below
    mpi_outgoing *o = loom__malloc(sizeof *o + bytes);
    if (!o) {
        char call[128];
        loom__comm_describe(a, call, sizeof call);
        return loom__error(LOOM_ERR_NOMEM, "%s on rank %d: out of memory copying the %zu bytes "
                           "of the message", call, c->rank, bytes);
    }
    o->call = (loom_comm_args){.op = a->op, .peer = a->peer, .tag = a->tag, .seq = a->seq};
    memcpy(o->payload, a->send, bytes);
    int rc = MPI_Isend(o->payload, (int)a->count, mpi_type(a->dtype), a->peer, a->tag, d->data,
                       &o->request);
    if (rc != MPI_SUCCESS) {
        loom__free(o);
        return fail_with_mpi_error(c, a, rc);
    }
    o->next = d->sends;
    d->sends = o;
    return LOOM_OK;
}

static loom_status mpi_run(loom_comm_t c, const loom_comm_args *a) {
    mpi_comm_data *d = c->transport;
    if (a->op == LOOM_COMM_OP_SEND || a->op == LOOM_COMM_OP_RECV) {
        if (a->tag > d->tag_ub) {
            return loom__error(LOOM_ERR_INVALID, "loom_comm_%s (rank %d): tag %d exceeds this "
                               "MPI's largest tag %d", loom__comm_op_name(a->op), c->rank,
                               a->tag, d->tag_ub);
        }
    }
    if (enter_call(d, a)) return loom__comm_failure_raise(c, a, &d->failure);
    if (a->op == LOOM_COMM_OP_SEND) return send_eager(c, a);
    MPI_Request req = MPI_REQUEST_NULL;
    MPI_Status status;
    void *scratch = NULL;
    LOOM_CHECK(start_call(c, a, &req, &scratch));
    loom_status st = poll_request(c, a, &req, &status);
    if (st < 0) return st;  // scratch may still be written by MPI: left to it
    return finish_call(c, a, scratch, &status);
}

static loom_status mpi_start_async(loom_comm_t c, const loom_comm_args *a,
                                   loom_comm_request_t *out) {
    mpi_comm_data *d = c->transport;
    if (enter_call(d, a)) return loom__comm_failure_raise(c, a, &d->failure);
    mpi_request *r = loom__calloc(1, sizeof *r);
    if (!r) return LOOM_ERR_NOMEM;
    r->base.comm = c;
    r->args = *a;
    void *scratch = NULL;  // an all-reduce needs none
    loom_status st = start_call(c, a, &r->request, &scratch);
    LOOM_ASSERT(!scratch);
    if (st < 0) {
        loom__free(r);
        return st;
    }
    *out = &r->base;
    return LOOM_OK;
}

static loom_status mpi_wait(loom_comm_request_t base) {
    mpi_request *r = (mpi_request *)base;
    mpi_comm_data *d = base->comm->transport;
    MPI_Status status;
    reap_outgoing(d, &d->sends, 0);
    loom_status st = poll_request(base->comm, &r->args, &r->request, &status);
    loom__free(r);
    return st;
}

// ---- handles ------------------------------------------------------------------------------------

static loom_status mpi_split(loom_comm_t c, const loom_comm_args *a, int color, int key,
                             loom_comm_t *out);
static void mpi_abort(loom_comm_t c, const char *why);
static void mpi_destroy(loom_comm_t c);

static const loom_comm_vtable mpi_vtable = {
    .run = mpi_run,
    .start_async = mpi_start_async,
    .wait = mpi_wait,
    .split = mpi_split,
    .abort = mpi_abort,
    .destroy = mpi_destroy,
};

// MPI_Comm_idup polled against the deadline (no notices exist yet).
static loom_status dup_with_deadline(MPI_Comm base, double timeout_s, MPI_Comm *out,
                                     const char *what) {
    MPI_Request req;
    int rc = MPI_Comm_idup(base, out, &req);
    double start = now_s();
    for (int done = 0; rc == MPI_SUCCESS && !done;) {
        rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        double t = now_s();
        if (!done && t - start > timeout_s) {
            return loom__error(LOOM_ERR_COMM, "%s: duplicating the MPI communicator did not "
                               "complete within %.1f s: every rank must call it", what,
                               timeout_s);
        }
        poll_pause(t - start);
    }
    if (rc != MPI_SUCCESS) {
        char text[MPI_MAX_ERROR_STRING + 32];
        mpi_error_text(rc, text, sizeof text);
        return loom__error(LOOM_ERR_COMM, "%s: duplicating the MPI communicator: %s", what,
                           text);
    }
    MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN);
    return LOOM_OK;
}

static void live_add(mpi_comm_data *d) {
    pthread_mutex_lock(&live_mu);
    d->next = live_head;
    live_head = d;
    live_count++;
    pthread_mutex_unlock(&live_mu);
}

// Removes d; returns whether loom should finalize MPI now (it was the last, and loom began it).
static int live_remove(mpi_comm_data *d) {
    pthread_mutex_lock(&live_mu);
    for (mpi_comm_data **p = &live_head; *p; p = &(*p)->next) {
        if (*p == d) {
            *p = d->next;
            live_count--;
            break;
        }
    }
    int finalize = live_count == 0 && loom_initialized_mpi;
    if (finalize) loom_initialized_mpi = 0;
    pthread_mutex_unlock(&live_mu);
    return finalize;
}

static void finalize_if_ours(void) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
}

// A loom communicator owning `data` (already a private duplicate): adds the control duplicate.
static loom_status adopt(MPI_Comm data, const loom_comm_config *cfg, loom_comm_t *out,
                         const char *what) {
    mpi_comm_data *d = loom__calloc(1, sizeof *d);
    if (!d) {
        MPI_Comm_free(&data);
        return LOOM_ERR_NOMEM;
    }
    d->data = data;
    d->control = MPI_COMM_NULL;
    MPI_Comm_set_errhandler(data, MPI_ERRORS_RETURN);
    MPI_Comm_rank(data, &d->rank);
    MPI_Comm_size(data, &d->size);
    int *tag_ub = NULL, flag = 0;
    MPI_Comm_get_attr(data, MPI_TAG_UB, &tag_ub, &flag);
    d->tag_ub = flag && tag_ub ? *tag_ub : 32767;
    loom_status st = dup_with_deadline(data, cfg->timeout_s, &d->control, what);
    loom_comm_t c = st < 0 ? NULL
                           : loom__comm_new(&mpi_vtable, LOOM_COMM_MPI, d->rank, d->size, cfg, d);
    if (!c) {
        if (d->control != MPI_COMM_NULL) MPI_Comm_free(&d->control);
        MPI_Comm_free(&d->data);
        loom__free(d);
        return st < 0 ? st : LOOM_ERR_NOMEM;
    }
    live_add(d);
    *out = c;
    return LOOM_OK;
}

loom_status loom__comm_mpi_create(void *mpi_comm, const loom_comm_config *cfg, loom_comm_t *out) {
    static const char fn[] = "loom_comm_mpi_create";
    int finalized = 0, initialized = 0;
    MPI_Finalized(&finalized);
    if (finalized) {
        return loom__error(LOOM_ERR_COMM, "%s: MPI is already finalized; create MPI "
                           "communicators before MPI_Finalize (loom finalizes MPI itself when it "
                           "initialized it and its last MPI communicator is destroyed)", fn);
    }
    MPI_Initialized(&initialized);
    int began_mpi = 0;
    if (!initialized) {
        if (mpi_comm) {
            return loom__error(LOOM_ERR_INVALID, "%s: an MPI communicator was given but MPI is "
                               "not initialized", fn);
        }
        int provided = 0;
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
        if (rc != MPI_SUCCESS) {
            char text[MPI_MAX_ERROR_STRING + 32];
            mpi_error_text(rc, text, sizeof text);
            return loom__error(LOOM_ERR_COMM, "%s: MPI_Init_thread failed: %s", fn, text);
        }
        if (provided < MPI_THREAD_SERIALIZED) {
            loom__log(LOOM_LOG_WARN, "MPI provides thread level %d only: call loom MPI "
                      "communicators from the main thread", provided);
        }
        began_mpi = 1;
    }
    MPI_Comm base = mpi_comm ? *(MPI_Comm *)mpi_comm : MPI_COMM_WORLD;
    MPI_Comm data = MPI_COMM_NULL;
    loom_status st = dup_with_deadline(base, cfg->timeout_s, &data, fn);
    if (st == LOOM_OK) st = adopt(data, cfg, out, fn);
    if (began_mpi) {
        if (st == LOOM_OK) {
            pthread_mutex_lock(&live_mu);
            loom_initialized_mpi = 1;
            pthread_mutex_unlock(&live_mu);
        } else {
            MPI_Finalize();
        }
    }
    return st;
}

// MPI_Comm_split is blocking, so a polled barrier goes first: a missing rank makes the barrier
// time out instead of hanging the split.
static loom_status mpi_split(loom_comm_t c, const loom_comm_args *a, int color, int key,
                             loom_comm_t *out) {
    mpi_comm_data *d = c->transport;
    if (enter_call(d, a)) return loom__comm_failure_raise(c, a, &d->failure);
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Ibarrier(d->data, &req);
    if (rc != MPI_SUCCESS) return fail_with_mpi_error(c, a, rc);
    LOOM_CHECK(poll_request(c, a, &req, MPI_STATUS_IGNORE));
    MPI_Comm part = MPI_COMM_NULL;
    rc = MPI_Comm_split(d->data, color < 0 ? MPI_UNDEFINED : color, key, &part);
    if (rc != MPI_SUCCESS) return fail_with_mpi_error(c, a, rc);
    if (part == MPI_COMM_NULL) return LOOM_OK;
    return adopt(part, &c->cfg, out, "loom_comm_split");
}

// Poison every live loom MPI communicator of this process and notify their peers.
static void mpi_abort(loom_comm_t c, const char *why) {
    pthread_mutex_lock(&live_mu);
    for (mpi_comm_data *d = live_head; d; d = d->next) {
        loom__comm_failure_set(&d->failure, NULL, "rank %d failed: %s", d->rank, why);
        send_failed_notices(d, d->failure.reason);
    }
    pthread_mutex_unlock(&live_mu);
}

// At destroy, after waiting: give up on the eager sends still in flight, naming them in a
// warning. Returns how many there were.
static int abandon_sends(loom_comm_t c) {
    mpi_comm_data *d = c->transport;
    char calls[512] = "", call[128];
    int n = 0;
    for (const mpi_outgoing *o = d->sends; o; o = o->next, n++) {
        loom__comm_describe(&o->call, call, sizeof call);
        append(calls, sizeof calls, ", ", call);
    }
    if (n == 0) return 0;
    char why[64];
    if (d->failure.failed) {
        snprintf(why, sizeof why, "the communicator failed");
    } else {
        snprintf(why, sizeof why, "not received within %.1f s", c->cfg.timeout_s);
    }
    loom__log(LOOM_LOG_WARN, "loom_comm_destroy on rank %d of %d (mpi): %d %s in flight, %s "
              "(%s); leaking the staging copies, which MPI may still read", c->rank, c->size, n,
              n > 1 ? "sends" : "send", why, calls);
    reap_outgoing(d, &d->sends, 1);
    return n;
}

static void mpi_destroy(loom_comm_t c) {
    mpi_comm_data *d = c->transport;
    receive_notices(d, NULL);
    // A peer may not have taken our last (large) messages yet: wait for them, up to the
    // timeout and unless the communicator fails meanwhile.
    double start = now_s();
    while (reap_outgoing(d, &d->sends, 0) > 0 && !receive_notices(d, NULL)) {
        double t = now_s();
        if (t - start > c->cfg.timeout_s) break;
        poll_pause(t - start);
    }
    int abandoned = abandon_sends(c);
    reap_outgoing(d, &d->notices, 1);
    // OpenMPI reuses the context id of a freed communicator, and a message that arrives for it
    // later (a peer's late notice, a piece of a collective that failed here, an abandoned send)
    // would be taken for one of the next communicator's and break its ordering, hanging it. So
    // the control duplicate, which peers may write to at any time, is kept until MPI_Finalize,
    // and so is the data duplicate of a failed communicator or of one with abandoned sends.
    if (!d->failure.failed && !abandoned) MPI_Comm_free(&d->data);
    int finalize = live_remove(d);
    loom__free(d);
    if (finalize) finalize_if_ours();
}

#endif // LOOM_HAVE_MPI
