// Communicator internals: the handle every transport shares, the vtable it dispatches through,
// and the helpers (reduction, failure messages) that both transports use.

#ifndef LOOM_COMM_IMPL_H
#define LOOM_COMM_IMPL_H

#include "loom/comm.h"

#include <stddef.h>
#include <stdint.h>

// What a call does; one descriptor serves every collective and point-to-point call, so the
// async queue, the failure messages and the MPI polling loop each exist once.
typedef enum loom_comm_op {
    LOOM_COMM_OP_ALL_REDUCE = 0,
    LOOM_COMM_OP_REDUCE_SCATTER,
    LOOM_COMM_OP_ALL_GATHER,
    LOOM_COMM_OP_ALL_TO_ALL,
    LOOM_COMM_OP_BROADCAST,
    LOOM_COMM_OP_BARRIER,
    LOOM_COMM_OP_SPLIT,
    LOOM_COMM_OP_SEND,
    LOOM_COMM_OP_RECV,
    LOOM_COMM_OP_COUNT
} loom_comm_op;

// A validated call. `count` is in elements: the all_reduce/broadcast/p2p length, the
// reduce_scatter recvcount, the all_gather sendcount, the all_to_all block length.
typedef struct loom_comm_args {
    loom_comm_op op;
    const void *send;
    void *recv;
    size_t count;
    size_t elem_size;
    loom_dtype dtype;
    loom_reduce_op reduce;
    int root;      // broadcast
    int peer;      // send/recv
    int tag;       // send/recv
    uint64_t seq;  // 1-based; collectives and point-to-point calls are numbered separately
} loom_comm_args;

typedef struct loom_comm_vtable {
    // Collective or point-to-point call (args->op != SPLIT); blocking, but sends are eager.
    loom_status (*run)(loom_comm_t c, const loom_comm_args *args);
    // Start args (an all-reduce) in the background; *req completes in issue order.
    loom_status (*start_async)(loom_comm_t c, const loom_comm_args *args,
                               loom_comm_request_t *req);
    // Wait for and free a request made by start_async.
    loom_status (*wait)(loom_comm_request_t req);
    // Collective; *out NULL when color < 0. args carries op SPLIT and the sequence number.
    loom_status (*split)(loom_comm_t c, const loom_comm_args *args, int color, int key,
                         loom_comm_t *out);
    void (*abort)(loom_comm_t c, const char *why);
    // Frees the transport data (not the handle itself).
    void (*destroy)(loom_comm_t c);
} loom_comm_vtable;

struct loom_comm {
    const loom_comm_vtable *vt;
    loom_comm_kind kind;
    int rank, size;
    loom_comm_config cfg;
    uint64_t collectives_issued;  // sequence numbers, assigned by comm.c
    uint64_t p2p_issued;
    void *transport;
};

// Transports embed this as the first member of their request type.
struct loom_comm_request {
    loom_comm_t comm;
};

// A handle around transport data; NULL (NOMEM recorded) on failure.
loom_comm_t loom__comm_new(const loom_comm_vtable *vt, loom_comm_kind kind, int rank, int size,
                           const loom_comm_config *cfg, void *transport);
// Frees a handle made by loom__comm_new (not its transport data).
void loom__comm_free(loom_comm_t c);

const char *loom__comm_op_name(loom_comm_op op);

// dst[i] = a[i] op b[i] for F32 or I32; dst may alias a or b. The one element-wise reduction of
// the library's communicators (I32 sums wrap around instead of overflowing).
void loom__comm_reduce(void *dst, const void *a, const void *b, size_t count, loom_dtype dtype,
                       loom_reduce_op op);

// Why a communicator is unusable. The first failure wins; later calls report it again.
typedef struct loom_comm_failure {
    int failed;
    char origin[96];   // the collective it happened in ("all_reduce #17"), or empty
    char reason[384];  // "rank 2 failed: <why>", "rank 3 did not arrive within 2.0 s"
} loom_comm_failure;

// Record a failure unless one is recorded already. origin: the collective it happened in, or
// NULL when the reason stands alone (an abort, a point-to-point timeout).
void loom__comm_failure_set(loom_comm_failure *f, const loom_comm_args *origin, const char *fmt,
                            ...) __attribute__((format(printf, 3, 4)));
// LOOM_ERR_COMM with "<call> on rank R of N (<kind>): <reason>", naming the call that failed
// first when it is not this one.
loom_status loom__comm_failure_raise(loom_comm_t c, const loom_comm_args *args,
                                     const loom_comm_failure *f);
// "all_reduce #17" / "send #3 to rank 2 (tag 5)": the call as messages name it.
void loom__comm_describe(const loom_comm_args *args, char *buf, size_t cap);

// Transport constructors (arguments validated by comm.c).
loom_status loom__comm_local_create_all(int n, const loom_comm_config *cfg, loom_comm_t *comms);
loom_status loom__comm_mpi_create(void *mpi_comm, const loom_comm_config *cfg, loom_comm_t *out);

#endif // LOOM_COMM_IMPL_H
