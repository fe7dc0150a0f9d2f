// The loom graph: an arena of annotated ops in topological order, built with a recording API.
//
// A graph owns its nodes and values. Builder calls only record: nothing is computed until a
// program lowered from the graph runs. Every node carries its op signature ("loom.linear"), its
// dimension annotation ("* k+, n k+ -> * n") and its module path ("h.3.attn"), made with
// loom_graph_push_scope()/loom_graph_pop_scope().
//
//     loom_graph_t g;
//     loom_graph_create(&g);
//     loom_value x = loom_graph_input(g, "x", LOOM_DTYPE_F32, 2, (int64_t[]){8, 16});
//     loom_graph_push_scope(g, "fc");
//     loom_value w = loom_graph_param(g, "fc.weight", 2, (int64_t[]){32, 16});
//     loom_value y = loom_linear(g, x, w, LOOM_NONE);      // (8, 32)
//     loom_graph_pop_scope(g);
//     if (loom_graph_status(g) < 0) puts(loom_last_error());
//
// Errors are sticky: a builder call that fails (bad shape, bad argument) records the error,
// returns LOOM_NONE, and every later call on the graph returns LOOM_NONE too. Check
// loom_graph_status() once after building.

#ifndef LOOM_GRAPH_H
#define LOOM_GRAPH_H

#include "loom/dtype.h"
#include "loom/status.h"

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_graph *loom_graph_t;

// A value (tensor) of a graph, by index. LOOM_NONE means "no value".
typedef int32_t loom_value;
#define LOOM_NONE ((loom_value)-1)

typedef enum loom_role {
    LOOM_ROLE_INPUT = 0,   // fed by the caller each step (tokens, targets, positions)
    LOOM_ROLE_PARAM,       // trainable weight
    LOOM_ROLE_ACTIVATION,  // produced by a forward node
    LOOM_ROLE_GRADIENT,    // produced by backward nodes (accumulated when several contribute)
    LOOM_ROLE_STATE,       // persistent buffer mutated by the graph (key/value cache)
    LOOM_ROLE_COUNT
} loom_role;

const char *loom_role_name(loom_role r);

// ---- lifetime and status ------------------------------------------------------------------------

loom_status loom_graph_create(loom_graph_t *out);
void loom_graph_destroy(loom_graph_t g);  // NULL is a no-op
// The first error recorded by a builder call (0 when none). Its message is in loom_last_error()
// right after the failing call, and kept in loom_graph_error().
loom_status loom_graph_status(loom_graph_t g);
const char *loom_graph_error(loom_graph_t g);

// ---- module scopes ------------------------------------------------------------------------------

// Push one path component ("h", "3", "attn"; a component may itself contain dots). Nodes made
// until the matching pop get the dotted path of all pushed components ("h.3.attn").
void loom_graph_push_scope(loom_graph_t g, const char *name);
void loom_graph_push_scopef(loom_graph_t g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void loom_graph_pop_scope(loom_graph_t g);

// ---- leaves -------------------------------------------------------------------------------------

loom_value loom_graph_input(loom_graph_t g, const char *name, loom_dtype dtype, int ndim,
                            const int64_t *shape);
// A trainable fp32 parameter; `name` is its file name (Hugging Face naming), unique in the graph.
loom_value loom_graph_param(loom_graph_t g, const char *name, int ndim, const int64_t *shape);
// A persistent fp32 state buffer (key/value cache).
loom_value loom_graph_state(loom_graph_t g, const char *name, int ndim, const int64_t *shape);
// Keep a value alive and readable after a run (logits, loss).
void loom_graph_mark_output(loom_graph_t g, loom_value v);

// ---- ops (each returns its first output; extra outputs are saved tensors for backward) ---------

// out (*, E) = weight (V, E) rows at idx (*). Annotation "*, v+ e -> * e".
loom_value loom_embedding(loom_graph_t g, loom_value idx, loom_value weight);
// out (*, N) = x (*, K) @ weight (N, K)^T [+ bias (N)]. bias may be LOOM_NONE.
loom_value loom_linear(loom_graph_t g, loom_value x, loom_value weight, loom_value bias);
// GPT-2 Conv1D: out (*, N) = x (*, K) @ weight (K, N) + bias (N).
loom_value loom_conv1d(loom_graph_t g, loom_value x, loom_value weight, loom_value bias);
// out (*, M, N) = a (*, M, K) @ b (*, K, N).
loom_value loom_matmul(loom_graph_t g, loom_value a, loom_value b);
loom_value loom_add(loom_graph_t g, loom_value a, loom_value b);  // same shapes
loom_value loom_mul(loom_graph_t g, loom_value a, loom_value b);  // same shapes
loom_value loom_layer_norm(loom_graph_t g, loom_value x, loom_value weight, loom_value bias,
                           float eps);
loom_value loom_rms_norm(loom_graph_t g, loom_value x, loom_value weight, float eps);
loom_value loom_gelu(loom_graph_t g, loom_value x);  // tanh form (GPT-2 gelu_new)
loom_value loom_silu(loom_graph_t g, loom_value x);
// Rotary embedding, rotate-half convention. x (B, T, H*D), positions (B, T) int32.
loom_value loom_rope(loom_graph_t g, loom_value x, loom_value positions, int n_head, float theta);
// Causal self-attention with grouped-query heads. q (B, T, Hq*D), k and v (B, T, Hkv*D).
loom_value loom_attention(loom_graph_t g, loom_value q, loom_value k, loom_value v, int n_head,
                          int n_kv_head);
// Inference attention over a key/value cache: writes k, v (B, T, Hkv*D) into the caches
// (B, Tmax, Hkv*D) at the rows' positions (B, T), then attends causally over the cache.
loom_value loom_attention_cached(loom_graph_t g, loom_value q, loom_value k, loom_value v,
                                 loom_value k_cache, loom_value v_cache, loom_value positions,
                                 int n_head, int n_kv_head);
// Mean softmax cross-entropy over rows whose target != ignore_index. logits (*, V), targets (*)
// int32. Returns the scalar loss (shape (1)).
loom_value loom_cross_entropy(loom_graph_t g, loom_value logits, loom_value targets,
                              int ignore_index);
// Chunk `index` of `chunks` equal parts of the last dim: out (*, C / chunks). Annotation
// "* (f^ n) -> * n": a fused axis (GPT-2's q|k|v) that tensor parallelism splits inside.
loom_value loom_chunk(loom_graph_t g, loom_value x, int chunks, int index);
// out (*, N) = x (*, N) + bias (N).
loom_value loom_bias_add(loom_graph_t g, loom_value x, loom_value bias);
// Sum of all elements, shape (1).
loom_value loom_sum(loom_graph_t g, loom_value x);
// The same loss summed over the kept rows (no division): splitting its rows gives exact partial
// sums; multiply by 1 / (kept rows of the whole batch) for the mean.
loom_value loom_cross_entropy_sum(loom_graph_t g, loom_value logits, loom_value targets,
                                  int ignore_index);
// out (*, len) = x (*, start : start + len) on the last dim.
loom_value loom_slice(loom_graph_t g, loom_value x, int64_t start, int64_t len);

// ---- autodiff -----------------------------------------------------------------------------------

// Append the backward of every node the scalar `loss` depends on. Afterwards each parameter
// (and each activation on the path) has a gradient value: see loom_graph_grad().
loom_status loom_graph_backward(loom_graph_t g, loom_value loss);
loom_value loom_graph_grad(loom_graph_t g, loom_value v);  // LOOM_NONE when it has none
// Recompute the forward of the modules `spec` names (comma-separated module names matched as
// path suffixes, e.g. "attn" or "h.3"; "layers" = every numbered layer) during the backward
// instead of keeping their activations: less memory, one more forward, bit-identical results.
// Call after loom_graph_backward.
loom_status loom_graph_recompute(loom_graph_t g, const char *spec);

// ---- inspection ---------------------------------------------------------------------------------

int loom_graph_n_values(loom_graph_t g);
int loom_graph_n_nodes(loom_graph_t g);
// Shape of a value: returns ndim and fills shape[0..ndim).
int loom_value_shape(loom_graph_t g, loom_value v, int64_t shape[LOOM_MAX_DIMS]);
int64_t loom_value_numel(loom_graph_t g, loom_value v);
loom_dtype loom_value_dtype(loom_graph_t g, loom_value v);
loom_role loom_value_role(loom_graph_t g, loom_value v);
const char *loom_value_name(loom_graph_t g, loom_value v);  // borrowed; may be ""
loom_value loom_graph_find(loom_graph_t g, const char *name); // LOOM_NONE when absent
// Node inspection.
const char *loom_node_signature(loom_graph_t g, int node);  // "loom.linear"
const char *loom_node_annotation(loom_graph_t g, int node); // "* k+, n k+ -> * n"
const char *loom_node_module(loom_graph_t g, int node);     // "h.3.attn" ("" at top level)
int loom_node_is_backward(loom_graph_t g, int node);
// Forward FLOPs of a node (backward nodes: their own FLOPs).
double loom_node_flops(loom_graph_t g, int node);

// Human-readable listing: one line per node with signature, module path, inputs and outputs
// (name, shape, role) and annotation.
loom_status loom_graph_dump(loom_graph_t g, FILE *f);

// ---- annotations --------------------------------------------------------------------------------

// Parse an annotation in the dimension language (see docs/annotations.md) and check it is well
// formed: LOOM_ERR_FORMAT with the column and the reason otherwise.
loom_status loom_annotation_check(const char *annotation);
// Check tensor shapes against an annotation and infer the output shapes. `sizes` binds
// identifiers to lengths ("g=2,d=8", or NULL) for products the shapes alone cannot split.
// out_ndim/out_shapes receive n_out entries. LOOM_ERR_SHAPE names the tensor, the dim and the
// identifier that disagree.
loom_status loom_annotation_infer(const char *annotation, const char *sizes, int n_in,
                                  const int *in_ndim, const int64_t (*in_shapes)[LOOM_MAX_DIMS],
                                  int *n_out, int *out_ndim,
                                  int64_t (*out_shapes)[LOOM_MAX_DIMS]);

#ifdef __cplusplus
}
#endif
#endif // LOOM_GRAPH_H
