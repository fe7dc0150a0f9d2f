// Backend interface: runs one node of a graph on buffers the runtime placed. A vtable per
// backend (cpu today, cuda next), in the ggml-backend style.

#ifndef LOOM_BACKEND_H
#define LOOM_BACKEND_H

#include "ir/ir.h"
#include "loom/comm.h"

// Scratch memory planned once per program (the largest any node needs), so kernels never
// allocate during a step.
typedef struct loom_kernel_ctx {
    void *scratch;
    size_t scratch_bytes;
    int threads;          // the thread count the scratch was sized for
    loom_comm_t comm;     // the unit's communicator (comm ops), NULL on one device
} loom_kernel_ctx;

typedef struct loom_backend_i {
    const char *name;
    // Bytes of scratch node `n` (forward or backward) needs with `threads` threads.
    size_t (*scratch_bytes)(const loom_graph *g, const loom_node *n, int threads);
    // Forward node `n`; ptr[v] is the buffer of value v.
    loom_status (*forward)(const loom_graph *g, const loom_node *n, void *const *ptr,
                           const loom_kernel_ctx *ctx);
    // Backward node `n`; acc_mask bit k: gradient output k accumulates instead of overwriting.
    loom_status (*backward)(const loom_graph *g, const loom_node *n, uint32_t acc_mask,
                            void *const *ptr, const loom_kernel_ctx *ctx);
    // Optimizers and reductions over plain fp32 buffers.
    double (*sum_squares)(const float *x, int64_t n);
    void (*scale)(float *x, float s, int64_t n);
    void (*adamw)(float *param, const float *grad, float *m, float *v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t t,
                  float grad_scale);
    void (*sgd)(float *param, const float *grad, float *buf, int64_t n, float lr, float momentum,
                float weight_decay, int64_t t, float grad_scale);
    // Use `n` threads for this backend's kernels (and its BLAS).
    void (*set_threads)(int n);
} loom_backend_i;

const loom_backend_i *loom__backend_cpu(void);

#endif // LOOM_BACKEND_H
