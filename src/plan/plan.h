// Plans: per-op sharding strategies over the devices of one unit, the placements they imply,
// and the pass that turns a global graph into one rank's local graph with its communication.

#ifndef LOOM_PLAN_PLAN_H
#define LOOM_PLAN_PLAN_H

#include "ir/annotation.h"
#include "ir/ir.h"
#include "lower/program.h"
#include "loom/constraints.h"
#include "loom/model.h"
#include "loom/parallel.h"

// Where a tensor lives on the unit's devices (one mesh axis).
typedef enum loom_place_kind {
    LOOM_PLACE_REPLICATE = 0,  // every rank holds all of it
    LOOM_PLACE_SHARD,          // split along `dim`, viewed as (chunks, n), n split in parts
    LOOM_PLACE_PARTIAL,        // every rank holds a partial sum; the value is scale * sum
} loom_place_kind;

typedef struct loom_placement {
    loom_place_kind kind;
    int dim;          // SHARD: the dim (of the global tensor)
    int chunks;       // SHARD: fused chunks of that dim (GPT-2's q|k|v: 3)
    float scale;      // PARTIAL: 1, or 1/parts for a mean of per-rank means
} loom_placement;

// Replicate: every rank holds all of it.
static const loom_placement loom__replicated = {LOOM_PLACE_REPLICATE, 0, 1, 1.0f};

// How one op is split: by one identifier of its annotation (or the first '*' dim + `star_dim`).
// LOOM_SPLIT_FOLLOW: decided while lowering, from how the inputs are already sharded.
// LOOM_SPLIT_QHEADS (attention only): the query heads split in contiguous blocks that each fall
// inside one kv group; k and v stay replicated and each rank attends with its group's kv head
// (grouped-query attention whose kv heads do not divide the degree).
enum { LOOM_SPLIT_NONE = -1, LOOM_SPLIT_STAR = -2, LOOM_SPLIT_FOLLOW = -3, LOOM_SPLIT_QHEADS = -4 };
typedef struct loom_strategy {
    int id;           // annotation identifier index, or LOOM_SPLIT_NONE / STAR / FOLLOW / QHEADS
    int star_dim;     // LOOM_SPLIT_STAR: which of the dims '*' covers
    int chunks;       // fused chunks the policy sees in that dim (1: none)
} loom_strategy;

// The placements of a node's inputs and outputs under a strategy over `parts` ranks. Fails with
// LOOM_ERR_SHAPE naming the op, the module, the tensor and the dim when a length does not
// divide, and LOOM_ERR_INVALID when the identifier may not be split (frozen).
loom_status loom__strategy_placements(const loom_graph *g, const loom_node *n,
                                      const loom_strategy *s, int parts, loom_placement *in,
                                      loom_placement *out);
// The strategy that splits `n` the way input `input` is already sharded (elementwise ops,
// rotary embeddings, chunks follow their producer), or LOOM_SPLIT_NONE.
loom_strategy loom__strategy_follow(const loom_graph *g, const loom_node *n, int input,
                                    const loom_placement *p);
// The strategy splitting input `input` of `n` along `dim` (a constraint's "input,dim").
loom_status loom__strategy_from_dim(const loom_graph *g, const loom_node *n, int input, int dim,
                                    int parts, loom_strategy *out);
// The (input, dim) a strategy splits: the first sharded input. 0 when it splits none.
int loom__strategy_split_dim(const loom_graph *g, const loom_node *n, const loom_strategy *s,
                             int parts, int *input, int *dim);
// Whether `heads` query heads in `groups` kv groups split into `parts` contiguous blocks each
// inside one group (LOOM_SPLIT_QHEADS).
int loom__qheads_splittable(int64_t heads, int64_t groups, int parts);
// The identifier of `n`'s annotation named `name`, or -1.
int loom__strategy_find_id(const loom_node *n, const char *name);

// A policy (loom/parallel.h) assigns a strategy to each forward node of a graph.
typedef loom_policy loom_policy_kind;

typedef struct loom_plan {
    int parts;                 // devices splitting each op (a stage's tensor-parallel group)
    loom_constraints_t constraints;  // borrowed; NULL: none
    loom_policy_kind policy;
    int n_nodes;               // forward nodes of the global graph
    loom_strategy *strategy;   // per global node
    // Pipelines: pipe_ranks x chunks virtual stages; stage_of[node] (NULL: one stage). Virtual
    // stage s runs on pipeline rank s % pipe_ranks.
    int pipe_ranks, chunks;
    int32_t *stage_of;
} loom_plan;

// Build a plan for `g` (forward nodes) with `parts` devices per stage (the unit's devices over
// cc->pipeline_nstages). `cfg` (the model's config; may be NULL except for tp and hybrid)
// selects the family's tensor-parallel policy table; pipeline stages follow cc's pipeline_*.
// node_cost: NULL, or per node its measured cost to balance the stages by (else FLOPs).
loom_status loom__plan_create(const loom_graph *g, const loom_compute_config *cc, int parts,
                              const loom_model_config *cfg, const double *node_cost,
                              loom_plan *plan);
// As loom__plan_create (tp and hybrid), except that an op the family's table cannot split over
// `parts` (heads that do not divide) is replicated and marked in unsplittable[node] (n_nodes
// bytes) instead of failing: where the per-op search starts. Without this, a table that cannot
// split an op fails the plan unless partition constraints name the op (they then decide).
loom_status loom__plan_create_relaxed(const loom_graph *g, const loom_compute_config *cc,
                                      int parts, const loom_model_config *cfg,
                                      uint8_t *unsplittable, loom_plan *plan);
void loom__plan_free(loom_plan *plan);
// Make `s` obey the plan's partition constraints for node `n`: keep it when allowed, else the
// first allowed partition dim that splits legally, else replication when allowed. Fails naming
// the op, its module and the constraint (file, line) when nothing is left.
loom_status loom__plan_constrain(const loom_plan *plan, const loom_graph *g, const loom_node *n,
                                 loom_strategy *s);
// Whether node n may take strategy s under the plan: its partition constraints allow it and its
// placements divide the shapes over plan->parts ranks.
int loom__plan_usable(const loom_plan *plan, const loom_graph *g, const loom_node *n,
                      const loom_strategy *s);
// Every constraint names an op of the op table (else an error naming the entry).
loom_status loom__constraints_check(loom_constraints_t c);

// JSON plan files: {"ops": [{"module": "h.0.attn.c_attn", "op": "loom.conv1d",
// "split": [input, dim] | "replicate" | "follow"}, ...]}, keyed by module path and op signature
// (stable across runs). Ops the file does not name follow their inputs.
typedef struct loom_plan_file loom_plan_file;
loom_status loom__plan_file_load(const char *path, const loom_graph *g, loom_plan_file **out);
// The file's decision for node `node`: 1 split (input, dim), 0 replicate, -1 follow.
int loom__plan_file_lookup(loom_plan_file *f, const loom_graph *g, int node, int *input, int *dim);
// An entry that matched no op means the file was made for another model: an error naming it.
loom_status loom__plan_file_unused(const loom_plan_file *f, const char *path);
void loom__plan_file_free(loom_plan_file *f);
// One op's "split" in a plan file: 1 for [input, dim], 0 "replicate", -1 "follow" (the verdicts
// of loom__plan_file_lookup), LOOM_PLAN_SPLIT_BAD for anything else.
enum { LOOM_PLAN_SPLIT_BAD = -2 };
struct json_t;
int loom__plan_split_parse(const struct json_t *split, int *input, int *dim);
// The "split" value of a verdict (a new reference; NULL when out of memory).
struct json_t *loom__plan_split_json(int verdict, int input, int dim);
// The verdict of node n's strategy s over `parts` ranks: -1 follow, 1 a split of input `input`
// along `dim`, 0 replicate (a strategy that splits no input keeps its inputs whole).
int loom__strategy_verdict(const loom_graph *g, const loom_node *n, const loom_strategy *s,
                           int parts, int *input, int *dim);

// Where each global leaf (parameter, input) lives in a rank's local graph.
typedef struct loom_local_leaf {
    loom_value global, local;
    loom_placement place;
    uint64_t pipe_ranks;       // bit r: pipeline rank r reads it too (tied parameters)
} loom_local_leaf;

typedef struct loom_local_graph {
    loom_graph_t graph;        // the rank's local forward + backward graph
    loom_value loss;           // local loss (replicated), -1 when none (or another stage's)
    int n_leaves;
    loom_local_leaf *leaves;   // parameters and inputs
    // Pipelines: boundary values exchanged with the other pipeline ranks (replicated here).
    int n_sends, n_recvs;
    loom_pipe_edge *sends, *recvs;
} loom_local_graph;

// The local graph of tensor-parallel rank `rank` of pipeline rank `pipe_rank`: the nodes of
// its stages with local shapes, localized attributes, and the redistributions (comm ops) the
// placements need; boundary values from other stages as inputs; then its backward, seeded by
// the loss and the boundary outputs. `global` must be a forward graph (no backward) whose loss
// is `loss` (or -1 for inference).
loom_status loom__parallelize(const loom_graph *global, loom_value loss, const loom_plan *plan,
                              int rank, int pipe_rank, loom_local_graph *out);
void loom__local_graph_free(loom_local_graph *lg);

#endif // LOOM_PLAN_PLAN_H
