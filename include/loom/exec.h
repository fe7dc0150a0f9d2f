// Running a graph built with the C API: lower it to a one-rank program, bind fresh buffers, run.
//
//     loom_exec_t ex;
//     loom_exec_create(g, &ex);                // forward (+ backward if the graph has one)
//     float *w; loom_exec_buffer(ex, w_value, (void **)&w);   // fill parameters and inputs
//     loom_exec_run(ex);
//     const float *dw; loom_exec_buffer(ex, loom_graph_grad(g, w_value), (void **)&dw);

#ifndef LOOM_EXEC_H
#define LOOM_EXEC_H

#include "loom/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_exec *loom_exec_t;

// The graph must outlive the executor. Parameters get zeroed storage owned by the executor.
loom_status loom_exec_create(loom_graph_t g, loom_exec_t *out);
void loom_exec_free(loom_exec_t e);
// Buffer of a value that persists across runs: inputs, parameters, states, values marked with
// loom_graph_mark_output, and parameter gradients. Other values live in the shared arena and
// are not addressable (LOOM_ERR_INVALID).
loom_status loom_exec_buffer(loom_exec_t e, loom_value v, void **data);
// Run the forward pass, and the backward pass with d(loss) = 1 when the graph has one
// (parameter gradients are overwritten, not accumulated across runs).
loom_status loom_exec_run(loom_exec_t e);

#ifdef __cplusplus
}
#endif
#endif // LOOM_EXEC_H
