// Internal view of the graph: values, nodes and the op table shared by ir, lower and backends.

#ifndef LOOM_IR_IR_H
#define LOOM_IR_IR_H

#include "loom/graph.h"

#include <stdbool.h>

#define LOOM_MAX_IO 8

// Op ids, one per row of the op table (src/ir/ops.c). Append-only.
typedef enum loom_op {
    LOOM_OP_EMBEDDING = 0,
    LOOM_OP_LINEAR,
    LOOM_OP_LINEAR_BIAS,
    LOOM_OP_CONV1D,
    LOOM_OP_MATMUL,
    LOOM_OP_ADD,
    LOOM_OP_MUL,
    LOOM_OP_LAYERNORM,
    LOOM_OP_RMSNORM,
    LOOM_OP_GELU,
    LOOM_OP_SILU,
    LOOM_OP_ROPE,
    LOOM_OP_ATTENTION,
    LOOM_OP_ATTENTION_CACHED,
    LOOM_OP_CROSS_ENTROPY,
    LOOM_OP_SLICE,
    LOOM_OP_SUM,
    LOOM_OP_CHUNK,
    LOOM_OP_BIAS_ADD,
    LOOM_OP_LINEAR_KN,      // GPT-2 Conv1D layout without bias (row-parallel c_proj)
    // Communication ops: they appear only in the local graphs of parallel plans.
    LOOM_OP_ALL_REDUCE,     // Partial -> Replicate; backward: identity (scaled)
    LOOM_OP_GRAD_SYNC,      // Replicate consumed by a split op: identity; backward: all-reduce
    LOOM_OP_ALL_GATHER,     // Shard -> Replicate; backward: take the local shard
    LOOM_OP_SHARD_SLICE,    // Replicate -> Shard (local slice); backward: all-gather
    LOOM_OP_COUNT
} loom_op;

// Op-table row flags.
enum {
    LOOM_OPF_NO_BACKWARD = 1u << 0,        // inference-only op
    LOOM_OPF_BIAS_AFTER_REDUCE = 1u << 1,  // last input (bias) is added once, after a k+ reduction
    LOOM_OPF_CUSTOM_SPLIT = 1u << 2,       // splitting its reduce dim needs more than a partial
                                           // sum (see split_note)
    LOOM_OPF_MUTATES_STATE = 1u << 3,      // writes into STATE inputs
    LOOM_OPF_COMM = 1u << 4,               // communicates over the node's group (ai[3])
    LOOM_OPF_MATMUL = 1u << 5,             // matrix products: runs at the matmul rate
};

typedef struct loom_node loom_node;
typedef struct loom_graph loom_graph;

// One row of the op table. Kernels live in the backends, indexed by loom_op.
typedef struct loom_op_def {
    const char *signature;    // "loom.linear"
    const char *annotation;   // dimension annotation (DESIGN.md section 2)
    const char *in_types;     // one char per input: 'f' fp32, 'i' int32
    uint32_t flags;
    uint32_t bwd_needs_in;    // bit i: backward reads forward input i
    uint32_t bwd_needs_out;   // bit o: backward reads forward output o
    uint32_t grad_inputs;     // bit i: input i can receive a gradient
    const char *split_note;   // how a LOOM_OPF_CUSTOM_SPLIT op reduces ("max and sum-of-exp")
    // Identifier sizes the shapes alone cannot give (products), from the node's attributes:
    // writes "g=2,r=2" into buf.
    void (*sizes)(const loom_node *n, char *buf, size_t cap);
    // FLOPs of the forward and of the backward (NULL: one per output element / twice that).
    double (*flops)(const loom_graph *g, const loom_node *n, bool backward);
    // Output shape rule for ops the annotation cannot describe (comm ops); NULL: annotation.
    void (*shape)(const loom_node *n, const int64_t *in_shape, int in_ndim, int64_t *out_shape);
} loom_op_def;

const loom_op_def *loom__op_def(loom_op op);
// The op whose signature is `signature` ("loom.linear"), or -1.
int loom__op_by_signature(const char *signature);

typedef struct loom_value_info {
    char *name;              // owned; params: file name; others: generated
    loom_dtype dtype;
    int ndim;
    int64_t shape[LOOM_MAX_DIMS];
    loom_role role;
    int32_t producer;        // forward node producing it; -1 for leaves and gradients
    int32_t grad;            // value holding d(loss)/d(this value), -1
    int32_t grad_of;         // for gradients: the value it is the gradient of, -1
    bool is_output;          // kept alive after a run
    bool requires_grad;      // an input whose gradient is wanted (a pipeline stage's boundary)
} loom_value_info;

struct loom_node {
    loom_op op;
    bool backward;           // a backward node: computes input grads of node `fwd`
    int32_t fwd;             // forward node of a backward node, -1 otherwise
    // Recomputation: a clone of a forward node, run again during the backward pass (just before
    // the first backward node of its group needs it) so the original's saved outputs can die
    // after the forward. -1 for ordinary nodes.
    int32_t recompute_group;
    int n_in, n_out;
    // Forward: in = op inputs, out = op outputs.
    // Backward: in = gradients of the forward outputs (-1 where none), out = gradients of the
    // forward inputs (-1 where not wanted); it also reads the forward's saved in/outs per table.
    int32_t in[LOOM_MAX_IO];
    int32_t out[LOOM_MAX_IO];
    int64_t ai[4];           // integer attributes (per op, see ops.c)
    float af[4];             // float attributes
    int32_t module;          // index into the graph's module path table
    int32_t stage;           // pipeline (virtual) stage it runs in; 0 without pipelines
};

struct loom_graph {
    loom_value_info *values;
    int n_values, cap_values;
    loom_node *nodes;
    int n_nodes, cap_nodes;
    char **modules;          // interned module paths
    int n_modules, cap_modules;
    char scope[1024];        // current dotted path
    int scope_len[64];       // lengths of the path at each push
    int scope_depth;
    int32_t current_module;
    int32_t current_stage;   // stage of the nodes added next (the parallelize pass sets it)
    loom_status status;      // first sticky error
    char *error;             // its message
    bool has_backward;
    int32_t loss;            // value the backward was built for, -1
};

// Record a sticky builder error (keeps the first); returns LOOM_NONE.
loom_value loom__graph_fail(loom_graph *g, loom_status st);
// Append a value; returns its index or LOOM_NONE (error recorded).
loom_value loom__graph_add_value(loom_graph *g, const char *name, loom_dtype dtype, int ndim,
                                 const int64_t *shape, loom_role role);
// Append a forward node of `op` over inputs, inferring output shapes from the annotation.
// Returns the node index or -1. out[] receives the output values.
int loom__graph_add_node(loom_graph *g, loom_op op, int n_in, const loom_value *in,
                         const int64_t *ai, const float *af, loom_value *out);
// Append a raw node (autodiff); returns its index or -1.
int loom__graph_push_node(loom_graph *g, const loom_node *n);
// Reverse-mode autodiff from `loss` (a scalar, or -1 for a pipeline stage without it) and from
// `seeds`: values whose gradients arrive from elsewhere (a later pipeline stage). Inputs with
// requires_grad get gradients like parameters. loom_graph_backward is the loss-only case.
loom_status loom__graph_backward_seeded(loom_graph_t g, loom_value loss, int n_seeds,
                                        const loom_value *seeds);
// loom_graph_recompute; require_match 0 accepts a spec naming no module of g (a pipeline
// stage's part of a model the spec was checked against with loom__recompute_matches).
loom_status loom__graph_recompute(loom_graph_t g, const char *spec, int require_match);
int loom__recompute_matches(const loom_graph *g, const char *spec);
// FLOPs of forward node `fwd` (its backward when `backward`): the op table's formula, else one
// (two for the backward) per output element.
double loom__op_flops(const loom_graph *g, const loom_node *fwd, bool backward);
// Bytes of a value.
size_t loom__value_bytes(const loom_graph *g, loom_value v);
int64_t loom__value_numel(const loom_graph *g, loom_value v);
// The module prefix of `path` that `pattern` names: the shortest prefix, on dot boundaries, that
// the pattern suffix-matches (loom_module_matches), or for "layers" the first numbered component
// ("h.3", "model.layers.3"). Writes it into buf (cap bytes); returns 0 when none.
int loom__module_prefix(const char *path, const char *pattern, char *buf, size_t cap);

#endif // LOOM_IR_IR_H
