// Communicators: NCCL-shaped collectives over ranks, with three transports behind one opaque
// handle: `local` (ranks are threads of one process, shared memory), `mpi` (one process per
// rank, OpenMPI) and, on GPUs, `nccl`.
//
//     loom_comm_t comms[4];
//     loom_comm_local_create_all(4, NULL, comms);      // one handle per rank (thread)
//     ... on rank r's thread:
//     loom_comm_all_reduce(comms[r], buf, buf, n, LOOM_DTYPE_F32, LOOM_REDUCE_SUM);
//
// Conventions (NCCL's): counts are in elements; sendbuf == recvbuf means in place; for
// reduce-scatter, recvbuf may be sendbuf + rank * recvcount; for all-gather, sendbuf may be
// recvbuf + rank * sendcount. Every call is collective over the communicator unless noted, and
// every rank must issue the same collectives in the same order.
//
// Reductions are deterministic: results are bit-identical across runs and on every rank (the
// local transport sums in rank order). A rank that fails (loom_comm_abort) or stops answering
// makes the others' pending and later calls fail with LOOM_ERR_COMM and a message naming it,
// within the configured timeout: never a silent hang.

#ifndef LOOM_COMM_H
#define LOOM_COMM_H

#include "loom/dtype.h"
#include "loom/status.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_comm *loom_comm_t;

typedef enum loom_reduce_op {
    LOOM_REDUCE_SUM = 0,
    LOOM_REDUCE_MAX,
    LOOM_REDUCE_COUNT
} loom_reduce_op;

typedef enum loom_comm_kind {
    LOOM_COMM_LOCAL = 0,
    LOOM_COMM_MPI,
    LOOM_COMM_NCCL,
    LOOM_COMM_KIND_COUNT
} loom_comm_kind;

typedef struct loom_comm_config {
    double timeout_s;  // a collective or receive waiting longer than this fails (default 60)
} loom_comm_config;

loom_comm_config loom_comm_config_default(void);
const char *loom_comm_kind_name(loom_comm_kind kind);

// ---- creation -----------------------------------------------------------------------------------

// `n` ranks as threads of this process: comms[r] is rank r's handle, to be used by one thread.
// cfg may be NULL (defaults).
loom_status loom_comm_local_create_all(int n, const loom_comm_config *cfg, loom_comm_t *comms);
// This process's rank in MPI_COMM_WORLD (or in *(MPI_Comm *)mpi_comm when not NULL). Calls
// MPI_Init_thread only if MPI is not initialized yet (and then MPI_Finalize when the last loom
// MPI communicator is destroyed). Sets MPI_ERRORS_RETURN on its own duplicate of the
// communicator. LOOM_ERR_UNSUPPORTED when loom was built without MPI.
loom_status loom_comm_mpi_create(void *mpi_comm, const loom_comm_config *cfg, loom_comm_t *out);
// Whether this process was started by mpirun/srun (environment), so the CLI can pick MPI.
int loom_comm_mpi_launched(void);
// Whether this build has MPI support.
int loom_comm_mpi_available(void);
// Sub-communicators: ranks with the same color form a new communicator, ordered by key (then
// by parent rank). Collective over `c`. color < 0: this rank gets no communicator (*out NULL).
loom_status loom_comm_split(loom_comm_t c, int color, int key, loom_comm_t *out);
// Destroy a handle. For `local`, each rank destroys its own; the shared state goes with the
// last one. NULL is a no-op.
void loom_comm_destroy(loom_comm_t c);

int loom_comm_rank(loom_comm_t c);
int loom_comm_size(loom_comm_t c);
loom_comm_kind loom_comm_get_kind(loom_comm_t c);

// ---- collectives --------------------------------------------------------------------------------

// recv (count) = op over ranks of send (count).
loom_status loom_comm_all_reduce(loom_comm_t c, const void *send, void *recv, size_t count,
                                 loom_dtype dtype, loom_reduce_op op);
// recv (recvcount) = this rank's slice of op over ranks of send (size * recvcount).
loom_status loom_comm_reduce_scatter(loom_comm_t c, const void *send, void *recv,
                                     size_t recvcount, loom_dtype dtype, loom_reduce_op op);
// recv (size * sendcount) = concatenation over ranks of send (sendcount).
loom_status loom_comm_all_gather(loom_comm_t c, const void *send, void *recv, size_t sendcount,
                                 loom_dtype dtype);
// Block j of send (count each, size blocks) goes to rank j; recv block i came from rank i.
loom_status loom_comm_all_to_all(loom_comm_t c, const void *send, void *recv, size_t count,
                                 loom_dtype dtype);
// recv (count) = root's send. On the root, send may equal recv.
loom_status loom_comm_broadcast(loom_comm_t c, const void *send, void *recv, size_t count,
                                loom_dtype dtype, int root);
loom_status loom_comm_barrier(loom_comm_t c);

// ---- point to point (not collective) ------------------------------------------------------------

// Sends are eager: loom_comm_send copies buf into memory of the transport and returns without
// waiting for the receiver, so buf may be reused at once, and neighbouring ranks may send to
// each other before either receives (any schedule whose receives do not wait on each other in a
// cycle completes). It fails when the communicator has failed or the peer has destroyed its
// handle. loom_comm_recv blocks, up to timeout_s, for the first message from `peer` with `tag`:
// messages between two ranks with the same tag arrive in send order. The lengths (count times
// the dtype's size) must match; a mismatch is reported by the receiver only, and the message is
// dropped. peer is another rank. A message takes memory until it is received; the `local`
// transport frees unreceived ones with the communicator, and loom_comm_destroy of an `mpi` one
// waits (up to timeout_s) for its sends still in flight, then warns and leaks their copies.
loom_status loom_comm_send(loom_comm_t c, const void *buf, size_t count, loom_dtype dtype,
                           int peer, int tag);
loom_status loom_comm_recv(loom_comm_t c, void *buf, size_t count, loom_dtype dtype, int peer,
                           int tag);

// ---- asynchronous all-reduce (gradient buckets overlapped with backward) ------------------------

typedef struct loom_comm_request *loom_comm_request_t;
// Start an all-reduce; the buffers must stay untouched until loom_comm_wait returns. Requests
// complete in issue order; every rank issues the same sequence.
loom_status loom_comm_all_reduce_async(loom_comm_t c, const void *send, void *recv, size_t count,
                                       loom_dtype dtype, loom_reduce_op op,
                                       loom_comm_request_t *req);
// Wait for a request and free it (also on error).
loom_status loom_comm_wait(loom_comm_request_t req);

// ---- failure ------------------------------------------------------------------------------------

// Declare this rank failed (`why` is shown to the others): every other rank's pending and later
// calls fail with LOOM_ERR_COMM naming this rank and `why`. Not collective.
void loom_comm_abort(loom_comm_t c, const char *why);

#ifdef __cplusplus
}
#endif
#endif // LOOM_COMM_H
