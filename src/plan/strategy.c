// Sharding strategies derived from dimension annotations: which placement every input and
// output of an op gets when the op is split along one identifier.

#include "plan/plan.h"

#include "core/core.h"

#include <stdio.h>
#include <string.h>

// An op's annotation bound to the node's actual shapes.
typedef struct bound_ann {
    loom_annotation ann;
    int64_t len[LOOM_ANN_MAX_IDS];
    int star_ndim;
} bound_ann;

static loom_status bind_node(const loom_graph *g, const loom_node *n, bound_ann *b) {
    const loom_op_def *def = loom__op_def(n->op);
    LOOM_CHECK(loom__ann_parse(def->annotation, &b->ann));
    char sizes[128] = "";
    if (def->sizes) def->sizes(n, sizes, sizeof sizes);
    int ndim[LOOM_MAX_IO];
    int64_t shapes[LOOM_MAX_IO][LOOM_MAX_DIMS];
    for (int i = 0; i < n->n_in; i++) {
        ndim[i] = g->values[n->in[i]].ndim;
        memcpy(shapes[i], g->values[n->in[i]].shape, sizeof shapes[i]);
    }
    return loom__ann_bind(&b->ann, def->annotation, sizes[0] ? sizes : NULL, n->n_in, ndim,
                          (const int64_t(*)[LOOM_MAX_DIMS])shapes, b->len, &b->star_ndim);
}

// The actual dim index of annotated dim `d` of tensor `t` ('*' expands to star_ndim dims).
static int actual_dim(const bound_ann *b, int t, int d) {
    const loom_ann_tensor *at = &b->ann.tensors[t];
    return d + (at->star >= 0 && at->star < d ? b->star_ndim - 1 : 0);
}

int loom__strategy_find_id(const loom_node *n, const char *name) {
    loom_annotation ann;
    if (loom__ann_parse(loom__op_def(n->op)->annotation, &ann) < 0) return -1;
    return loom__ann_find(&ann, name);
}

static const char *module_of(const loom_graph *g, const loom_node *n) {
    return g->modules[n->module][0] ? g->modules[n->module] : "(top)";
}

// Placement of tensor t (input or output index in the annotation) under the strategy.
static loom_status place_tensor(const loom_graph *g, const loom_node *n, const bound_ann *b,
                                const loom_strategy *s, int parts, int t, loom_placement *p) {
    const loom_ann_tensor *at = &b->ann.tensors[t];
    int is_input = t < b->ann.n_in;
    loom_value v = is_input ? n->in[t] : n->out[t - b->ann.n_in];
    const loom_value_info *vi = &g->values[v];
    *p = (loom_placement){.kind = is_input ? LOOM_PLACE_REPLICATE : LOOM_PLACE_PARTIAL,
                          .scale = 1.0f};
    int dim = -1, chunks = 1;
    if (s->id == LOOM_SPLIT_STAR) {
        if (at->star >= 0 && s->star_dim < b->star_ndim) dim = at->star + s->star_dim;
        chunks = s->chunks;
    } else {
        for (int d = 0; d < at->n_dims && dim < 0; d++)
            for (int f = 0; f < at->dims[d].n_factors; f++) {
                if (at->dims[d].factors[f] != s->id) continue;
                dim = actual_dim(b, t, d);
                chunks = s->chunks;
                for (int e = 0; e < f; e++) chunks *= (int)b->len[at->dims[d].factors[e]];
                break;
            }
    }
    if (dim < 0) return LOOM_OK;
    int64_t len = vi->shape[dim];
    if (len % chunks != 0 || (len / chunks) % parts != 0)
        return loom__error(LOOM_ERR_SHAPE,
                           "%s in module '%s': %s %d has length %lld along dim %d, which does not "
                           "split into %d parts%s; choose a degree that divides it",
                           loom__op_def(n->op)->signature, module_of(g, n),
                           is_input ? "input" : "output", is_input ? t : t - b->ann.n_in,
                           (long long)len, dim, parts, chunks > 1 ? " per fused chunk" : "");
    *p = (loom_placement){.kind = LOOM_PLACE_SHARD, .dim = dim, .chunks = chunks, .scale = 1.0f};
    return LOOM_OK;
}

int loom__qheads_splittable(int64_t heads, int64_t groups, int parts) {
    return heads % parts == 0 && (heads / groups) % (heads / parts) == 0;
}

loom_status loom__strategy_placements(const loom_graph *g, const loom_node *n,
                                      const loom_strategy *s, int parts, loom_placement *in,
                                      loom_placement *out) {
    for (int i = 0; i < n->n_in; i++) in[i] = loom__replicated;
    for (int o = 0; o < n->n_out; o++) out[o] = loom__replicated;
    if (s->id == LOOM_SPLIT_NONE || parts == 1) return LOOM_OK;
    if (s->id == LOOM_SPLIT_QHEADS) {
        int64_t heads = n->ai[0], groups = n->ai[1];
        if (n->op != LOOM_OP_ATTENTION || !loom__qheads_splittable(heads, groups, parts))
            return loom__error(LOOM_ERR_SHAPE, "%s in module '%s': %lld query heads in %lld kv "
                               "groups do not split into %d blocks inside single groups",
                               loom__op_def(n->op)->signature, module_of(g, n), (long long)heads,
                               (long long)groups, parts);
        in[0] = out[0] = (loom_placement){LOOM_PLACE_SHARD, 2, 1, 1.0f};
        out[1] = (loom_placement){LOOM_PLACE_SHARD, 1, 1, 1.0f};
        return LOOM_OK;
    }
    bound_ann b;
    LOOM_CHECK(bind_node(g, n, &b));
    const loom_op_def *def = loom__op_def(n->op);
    if (s->id >= 0 && b.ann.ids[s->id].kind == LOOM_ANN_FROZEN)
        return loom__error(LOOM_ERR_INVALID, "%s in module '%s': '%s' is frozen in '%s' and "
                           "cannot be split", def->signature, module_of(g, n),
                           b.ann.ids[s->id].name, def->annotation);
    if (s->id >= 0 && b.len[s->id] % parts != 0)
        return loom__error(LOOM_ERR_SHAPE, "%s in module '%s': '%s' has length %lld, which does "
                           "not split into %d parts", def->signature, module_of(g, n),
                           b.ann.ids[s->id].name, (long long)b.len[s->id], parts);
    if (s->id == LOOM_SPLIT_STAR && b.star_ndim <= s->star_dim)
        return loom__error(LOOM_ERR_INVALID, "%s in module '%s': its '*' covers %d dims, cannot "
                           "split the %d-th", def->signature, module_of(g, n), b.star_ndim,
                           s->star_dim);
    for (int t = 0; t < b.ann.n_in; t++) LOOM_CHECK(place_tensor(g, n, &b, s, parts, t, &in[t]));
    for (int o = 0; o < b.ann.n_out; o++)
        LOOM_CHECK(place_tensor(g, n, &b, s, parts, b.ann.n_in + o, &out[o]));
    if (n->op == LOOM_OP_CROSS_ENTROPY) {
        if (s->id == LOOM_SPLIT_STAR) {
            // A summed loss splits into exact partial sums; a mean into a mean of rank means.
            if (!n->ai[3]) out[0].scale = 1.0f / (float)parts;
        } else {
            // Vocabulary-parallel: the op reduces max, sum of exponentials and target logits
            // itself; every output is then complete on every rank.
            for (int o = 0; o < n->n_out; o++) out[o] = loom__replicated;
        }
    }
    return LOOM_OK;
}

loom_strategy loom__strategy_follow(const loom_graph *g, const loom_node *n, int input,
                                    const loom_placement *p) {
    loom_strategy none = {LOOM_SPLIT_NONE, 0, 1};
    if (p->kind != LOOM_PLACE_SHARD) return none;
    bound_ann b;
    if (bind_node(g, n, &b) < 0) {
        loom_clear_error();
        return none;
    }
    const loom_ann_tensor *at = &b.ann.tensors[input];
    for (int d = 0; d < at->n_dims; d++) {
        int first = actual_dim(&b, input, d);
        if (at->dims[d].n_factors == 0) {
            if (p->dim >= at->star && p->dim < at->star + b.star_ndim && p->chunks == 1)
                return (loom_strategy){LOOM_SPLIT_STAR, p->dim - at->star, 1};
            continue;
        }
        if (first != p->dim) continue;
        int64_t before = 1;
        for (int f = 0; f < at->dims[d].n_factors; f++) {
            int id = at->dims[d].factors[f];
            if (before == p->chunks && b.ann.ids[id].kind != LOOM_ANN_FROZEN)
                return (loom_strategy){id, 0, 1};
            before *= b.len[id];
        }
    }
    return none;
}

loom_status loom__strategy_from_dim(const loom_graph *g, const loom_node *n, int input, int dim,
                                    int parts, loom_strategy *out) {
    *out = (loom_strategy){LOOM_SPLIT_NONE, 0, 1};
    bound_ann b;
    LOOM_CHECK(bind_node(g, n, &b));
    const loom_op_def *def = loom__op_def(n->op);
    if (input < 0 || input >= n->n_in)
        return loom__error(LOOM_ERR_INVALID, "%s in module '%s' has no input %d",
                           def->signature, module_of(g, n), input);
    const loom_value_info *vi = &g->values[n->in[input]];
    if (dim < 0) dim += vi->ndim;
    if (dim < 0 || dim >= vi->ndim)
        return loom__error(LOOM_ERR_INVALID, "%s in module '%s': input %d has no dim %d",
                           def->signature, module_of(g, n), input, dim);
    const loom_ann_tensor *at = &b.ann.tensors[input];
    for (int d = 0; d < at->n_dims; d++) {
        int first = actual_dim(&b, input, d);
        if (at->dims[d].n_factors == 0) {
            if (dim >= first && dim < first + b.star_ndim) {
                *out = (loom_strategy){LOOM_SPLIT_STAR, dim - first, 1};
                return LOOM_OK;
            }
            continue;
        }
        if (first != dim) continue;
        // The first factor that may be split, preferring one whose length divides.
        int pick = -1;
        for (int f = 0; f < at->dims[d].n_factors; f++) {
            int id = at->dims[d].factors[f];
            if (b.ann.ids[id].kind == LOOM_ANN_FROZEN) continue;
            if (pick < 0 || (b.len[pick] % parts != 0 && b.len[id] % parts == 0)) pick = id;
        }
        if (pick >= 0) {
            *out = (loom_strategy){pick, 0, 1};
            return LOOM_OK;
        }
        return loom__error(LOOM_ERR_INVALID, "%s in module '%s': dim %d of input %d is frozen "
                           "in '%s'", def->signature, module_of(g, n), dim, input,
                           def->annotation);
    }
    return loom__error(LOOM_ERR_INTERNAL, "dim %d of input %d not found in '%s'", dim, input,
                       def->annotation);
}

int loom__strategy_split_dim(const loom_graph *g, const loom_node *n, const loom_strategy *s,
                             int parts, int *input, int *dim) {
    if (s->id == LOOM_SPLIT_NONE) return 0;
    loom_placement in[LOOM_MAX_IO], out[LOOM_MAX_IO];
    if (loom__strategy_placements(g, n, s, parts > 1 ? parts : 2, in, out) < 0) {
        loom_clear_error();
        return 0;
    }
    for (int i = 0; i < n->n_in; i++)
        if (in[i].kind == LOOM_PLACE_SHARD) {
            *input = i, *dim = in[i].dim;
            return 1;
        }
    return 0;
}
