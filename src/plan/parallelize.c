// The parallelize pass: one rank's local graph from the global forward graph and a plan.
//
// Every global value gets a local value in some placement. A consumer that needs another
// placement gets a redistribution (a comm op, whose backward is the adjoint). Gradient
// convention: the gradient of a Replicate value is complete on every rank, of a Shard value the
// rank's shard of the complete gradient. So a Replicate value read by a split op goes through
// loom.grad_sync (identity forward, all-reduce of the partial gradients backward). The local
// graph is then differentiated by the ordinary autodiff.

#include "plan/plan.h"

#include "core/core.h"

#include <string.h>

#define MAX_VERSIONS 4

typedef struct local_version {
    loom_placement place;
    loom_value value;
} local_version;

// A boundary value: produced on pipeline rank `from` (in `stage`), read on `to` (first in
// `to_stage`). Numbered in global value order, so every rank agrees on the tags.
typedef struct edge {
    loom_value value;
    int from, to, stage, to_stage;
} edge;

typedef struct pass {
    const loom_graph *g;
    const loom_plan *plan;
    int rank, parts;
    int pipe_rank, pipe_ranks;
    bool *needs_grad;                      // global value: its gradient reaches a parameter
    uint64_t *readers;                     // global value: bit r, pipeline rank r reads it
    edge *edges;
    int n_edges;
    int cap_sends, cap_recvs;
    loom_graph_t lg;
    int *n_versions;                       // per global value
    local_version (*versions)[MAX_VERSIONS];
    bool *requires;                        // global value depends on a parameter
    loom_local_graph *out;
    int cap_leaves;
} pass;

static int stage_of(const pass *ps, int node) {
    return ps->plan->stage_of ? ps->plan->stage_of[node] : 0;
}

static int rank_of_stage(const pass *ps, int stage) { return stage % ps->pipe_ranks; }

static loom_status add_edge_record(loom_pipe_edge **list, int *n, int *cap,
                                   const loom_pipe_edge *e) {
    if (*n == *cap) {
        int c = *cap ? 2 * *cap : 16;
        loom_pipe_edge *l = loom__realloc(*list, (size_t)c * sizeof *l);
        if (!l) return LOOM_ERR_NOMEM;
        *list = l;
        *cap = c;
    }
    (*list)[(*n)++] = *e;
    return LOOM_OK;
}

static int same_place(const loom_placement *a, const loom_placement *b) {
    if (a->kind != b->kind) return 0;
    if (a->kind == LOOM_PLACE_SHARD) return a->dim == b->dim && a->chunks == b->chunks;
    if (a->kind == LOOM_PLACE_PARTIAL) return a->scale == b->scale;
    return 1;
}

static void remember(pass *ps, loom_value global, const loom_placement *p, loom_value local) {
    int k = ps->n_versions[global];
    if (k == MAX_VERSIONS) {  // keep the first (the producer's) and recycle the rest
        k = MAX_VERSIONS - 1;
        ps->n_versions[global] = k;
    }
    ps->versions[global][k] = (local_version){*p, local};
    ps->n_versions[global] = k + 1;
}

static loom_status add_leaf_record(pass *ps, loom_value global, loom_value local,
                                   const loom_placement *p) {
    loom_local_graph *o = ps->out;
    if (o->n_leaves == ps->cap_leaves) {
        int cap = ps->cap_leaves ? 2 * ps->cap_leaves : 64;
        loom_local_leaf *l = loom__realloc(o->leaves, (size_t)cap * sizeof *l);
        if (!l) return LOOM_ERR_NOMEM;
        o->leaves = l;
        ps->cap_leaves = cap;
    }
    o->leaves[o->n_leaves++] = (loom_local_leaf){global, local, *p, ps->readers[global]};
    return LOOM_OK;
}

// Local shape of a global value under a placement.
static int local_shape(const loom_value_info *vi, const loom_placement *p, int parts,
                       int64_t *shape) {
    memcpy(shape, vi->shape, sizeof vi->shape);
    if (p->kind == LOOM_PLACE_SHARD) shape[p->dim] /= parts;
    return vi->ndim;
}

// A parameter or input made directly in the placement its first consumer needs.
static loom_value make_leaf(pass *ps, loom_value global, const loom_placement *p) {
    const loom_value_info *vi = &ps->g->values[global];
    int64_t shape[LOOM_MAX_DIMS];
    int nd = local_shape(vi, p, ps->parts, shape);
    loom_value v = vi->role == LOOM_ROLE_PARAM ? loom_graph_param(ps->lg, vi->name, nd, shape)
                   : vi->role == LOOM_ROLE_STATE ? loom_graph_state(ps->lg, vi->name, nd, shape)
                                                 : loom_graph_input(ps->lg, vi->name, vi->dtype,
                                                                    nd, shape);
    if (v == LOOM_NONE) return LOOM_NONE;
    if (add_leaf_record(ps, global, v, p) < 0) return loom__graph_fail(ps->lg, LOOM_ERR_NOMEM);
    remember(ps, global, p, v);
    return v;
}

// The edge carrying `global` from its producer's rank to `to`, and its index (the tag).
static int find_edge(const pass *ps, loom_value global, int to) {
    for (int k = 0; k < ps->n_edges; k++)
        if (ps->edges[k].value == global && ps->edges[k].to == to) return k;
    return -1;
}

// A boundary input: the value of another pipeline rank's stage, received whole.
static loom_value receive_boundary(pass *ps, loom_value global) {
    const loom_value_info *vi = &ps->g->values[global];
    int k = find_edge(ps, global, ps->pipe_rank);
    LOOM_ASSERT(k >= 0);
    loom_value v = loom_graph_input(ps->lg, vi->name, vi->dtype, vi->ndim, vi->shape);
    if (v == LOOM_NONE) return LOOM_NONE;
    ps->lg->values[v].requires_grad = ps->needs_grad[global];
    loom_pipe_edge e = {v, ps->edges[k].to_stage, ps->edges[k].from, k, ps->needs_grad[global]};
    if (add_edge_record(&ps->out->recvs, &ps->out->n_recvs, &ps->cap_recvs, &e) < 0)
        return loom__graph_fail(ps->lg, LOOM_ERR_NOMEM);
    remember(ps, global, &loom__replicated, v);
    return v;
}

static loom_value comm_op(pass *ps, loom_op op, loom_value x, const loom_placement *p,
                          float scale) {
    int64_t ai[4] = {p ? p->dim : 0, p ? p->chunks : 1, ps->parts, 0};
    float af[4] = {scale, 0, 0, 0};
    loom_value out;
    if (loom__graph_add_node(ps->lg, op, 1, &x, ai, af, &out) < 0) return LOOM_NONE;
    return out;
}

// The local value of `global` in placement `want`, redistributing from what exists.
static loom_value get_local(pass *ps, loom_value global, const loom_placement *want) {
    int n = ps->n_versions[global];
    for (int k = 0; k < n; k++)
        if (same_place(&ps->versions[global][k].place, want)) return ps->versions[global][k].value;
    if (n == 0 && ps->g->values[global].producer >= 0) {
        // Made by another pipeline rank's stage: it arrives (replicated) before this stage runs.
        LOOM_ASSERT(ps->plan->stage_of);  // else forward values are made in order
        if (receive_boundary(ps, global) == LOOM_NONE) return LOOM_NONE;
        n = ps->n_versions[global];
    }
    if (n == 0) return make_leaf(ps, global, want);
    local_version cur = ps->versions[global][0];
    loom_value v = cur.value;
    if (ps->g->values[global].dtype != LOOM_DTYPE_F32) {
        loom__error(LOOM_ERR_UNSUPPORTED, "redistributing the integer value '%s' between "
                    "placements is not supported", ps->g->values[global].name);
        return loom__graph_fail(ps->lg, LOOM_ERR_UNSUPPORTED);
    }
        switch (cur.place.kind) {
    case LOOM_PLACE_PARTIAL:
        v = comm_op(ps, LOOM_OP_ALL_REDUCE, v, NULL, cur.place.scale);
        break;
    case LOOM_PLACE_SHARD:
        v = comm_op(ps, LOOM_OP_ALL_GATHER, v, &cur.place, 1.0f);
        break;
    case LOOM_PLACE_REPLICATE: break;
    }
    if (v != LOOM_NONE && cur.place.kind != LOOM_PLACE_REPLICATE)
        remember(ps, global, &loom__replicated, v);
    if (want->kind == LOOM_PLACE_SHARD && v != LOOM_NONE) {
        v = comm_op(ps, LOOM_OP_SHARD_SLICE, v, want, 1.0f);
        if (v != LOOM_NONE) remember(ps, global, want, v);
    }
    if (want->kind == LOOM_PLACE_PARTIAL) {
        loom__error(LOOM_ERR_INTERNAL, "no op consumes a partial sum");
        return loom__graph_fail(ps->lg, LOOM_ERR_INTERNAL);
    }
    return v;
}

// Attributes of the local op: head counts, vocabulary ranges.
static void localize(const pass *ps, const loom_node *n, const loom_strategy *s, int64_t *ai) {
    memcpy(ai, n->ai, sizeof n->ai);
    if (s->id < 0) return;
    loom_annotation ann;
    if (loom__ann_parse(loom__op_def(n->op)->annotation, &ann) < 0) return;
    const char *id = ann.ids[s->id].name;
    int64_t P = ps->parts;
    switch (n->op) {
    case LOOM_OP_ROPE:
        if (!strcmp(id, "h")) ai[0] /= P;
        break;
    case LOOM_OP_ATTENTION:
    case LOOM_OP_ATTENTION_CACHED:
        if (!strcmp(id, "g")) ai[0] /= P, ai[1] /= P;
        if (!strcmp(id, "r")) ai[0] /= P;
        break;
    case LOOM_OP_EMBEDDING:
        if (!strcmp(id, "v")) {
            int64_t V = ps->g->values[n->in[1]].shape[0];
            ai[0] = ps->rank * (V / P), ai[1] = V;
        }
        break;
    case LOOM_OP_CROSS_ENTROPY:
        if (!strcmp(id, "v")) {
            int64_t V = ps->g->values[n->in[0]].shape[ps->g->values[n->in[0]].ndim - 1];
            ai[1] = ps->rank * (V / P), ai[2] = V;
        }
        break;
    default: break;
    }
}

static loom_status lower_node(pass *ps, int idx) {
    const loom_graph *g = ps->g;
    const loom_node *n = &g->nodes[idx];
    const loom_op_def *def = loom__op_def(n->op);
    loom_strategy s = ps->plan->strategy[idx];
    if (s.id == LOOM_SPLIT_FOLLOW) {
        s = (loom_strategy){LOOM_SPLIT_NONE, 0, 1};
        for (int i = 0; i < n->n_in && s.id == LOOM_SPLIT_NONE; i++)
            if (ps->n_versions[n->in[i]] > 0)
                s = loom__strategy_follow(g, n, i, &ps->versions[n->in[i]][0].place);
        LOOM_CHECK(loom__plan_constrain(ps->plan, g, n, &s));
    }
    loom_placement in_p[LOOM_MAX_IO], out_p[LOOM_MAX_IO];
    LOOM_CHECK(loom__strategy_placements(g, n, &s, ps->parts, in_p, out_p));
    // A bias added after a split reduction is added once, after the all-reduce.
    bool bias_after = (def->flags & LOOM_OPF_BIAS_AFTER_REDUCE) &&
                      out_p[0].kind == LOOM_PLACE_PARTIAL;
    int n_in = bias_after ? n->n_in - 1 : n->n_in;
    loom_value in[LOOM_MAX_IO];
    for (int i = 0; i < n_in; i++) {
        in[i] = get_local(ps, n->in[i], &in_p[i]);
        if (in[i] == LOOM_NONE) return loom_graph_status(ps->lg);
        bool split_op = s.id != LOOM_SPLIT_NONE && ps->parts > 1;
        if (split_op && in_p[i].kind == LOOM_PLACE_REPLICATE && ps->requires[n->in[i]] &&
            (def->grad_inputs >> i & 1)) {
            in[i] = comm_op(ps, LOOM_OP_GRAD_SYNC, in[i], NULL, 1.0f);
            if (in[i] == LOOM_NONE) return loom_graph_status(ps->lg);
        }
    }
    loom_op op = n->op;
    if (bias_after) op = n->op == LOOM_OP_CONV1D ? LOOM_OP_LINEAR_KN : LOOM_OP_LINEAR;
    int64_t ai[4];
    localize(ps, n, &s, ai);
    if (s.id == LOOM_SPLIT_QHEADS) {
        // This rank's query heads all read kv head j: take it from the replicated k and v.
        int64_t heads_here = n->ai[0] / ps->parts, per_group = n->ai[0] / n->ai[1];
        int j = (int)(ps->rank * heads_here / per_group);
        for (int k = 1; k <= 2; k++) {
            in[k] = loom_chunk(ps->lg, in[k], (int)n->ai[1], j);
            if (in[k] == LOOM_NONE) return loom_graph_status(ps->lg);
        }
        ai[0] = heads_here, ai[1] = 1;
    }
    loom_value out[LOOM_MAX_IO];
    if (loom__graph_add_node(ps->lg, op, n_in, in, ai, n->af, out) < 0)
        return loom_graph_status(ps->lg);
    if (bias_after) {
        loom_value reduced = comm_op(ps, LOOM_OP_ALL_REDUCE, out[0], NULL, out_p[0].scale);
        loom_value bias = get_local(ps, n->in[n->n_in - 1], &loom__replicated);
        if (reduced == LOOM_NONE || bias == LOOM_NONE) return loom_graph_status(ps->lg);
        out[0] = loom_bias_add(ps->lg, reduced, bias);
        if (out[0] == LOOM_NONE) return loom_graph_status(ps->lg);
        out_p[0] = loom__replicated;
    }
    for (int o = 0; o < n->n_out; o++) {
        remember(ps, n->out[o], &out_p[o], out[o]);
        if (g->values[n->out[o]].is_output) loom_graph_mark_output(ps->lg, out[o]);
    }
    // Outputs other pipeline ranks read leave whole (replicated) after their producer.
    int grads = 0;
    for (int k = 0; k < ps->n_edges; k++) {
        const edge *e = &ps->edges[k];
        if (g->values[e->value].producer != idx) continue;
        loom_value v = get_local(ps, e->value, &loom__replicated);
        if (v == LOOM_NONE) return loom_graph_status(ps->lg);
        bool grad = ps->needs_grad[e->value];
        if (grad && grads++)
            return loom__error(LOOM_ERR_UNSUPPORTED, "pipeline: '%s' (module '%s') is read by "
                               "stages on several pipeline ranks; their gradients cannot flow "
                               "back to one producer yet: move the stage boundaries",
                               g->values[e->value].name, g->modules[n->module]);
        loom_pipe_edge pe = {v, e->stage, e->to, k, grad};
        LOOM_CHECK(add_edge_record(&ps->out->sends, &ps->out->n_sends, &ps->cap_sends, &pe));
    }
    return LOOM_OK;
}

// Which values cross between pipeline ranks, which pipeline ranks read each value, and which
// values' gradients reach a parameter (those gradients flow back across the boundaries).
static loom_status find_boundaries(pass *ps, loom_value loss) {
    const loom_graph *g = ps->g;
    for (int i = 0; i < g->n_nodes; i++) {
        const loom_node *n = &g->nodes[i];
        for (int k = 0; k < n->n_in; k++)
            ps->readers[n->in[k]] |= 1ull << rank_of_stage(ps, stage_of(ps, i));
    }
    if (loss >= 0) ps->needs_grad[loss] = ps->requires[loss];
    for (int i = g->n_nodes - 1; i >= 0; i--) {
        const loom_node *n = &g->nodes[i];
        bool any = false;
        for (int o = 0; o < n->n_out; o++) any |= ps->needs_grad[n->out[o]];
        if (!any) continue;
        for (int k = 0; k < n->n_in; k++)
            if (ps->requires[n->in[k]] && (loom__op_def(n->op)->grad_inputs >> k & 1))
                ps->needs_grad[n->in[k]] = true;
    }
    if (!ps->plan->stage_of) return LOOM_OK;
    for (int v = 0; v < g->n_values; v++) {
        int producer = g->values[v].producer;
        if (producer < 0) continue;
        int from_stage = stage_of(ps, producer), from = rank_of_stage(ps, from_stage);
        for (int to = 0; to < ps->pipe_ranks; to++) {
            if (to == from) continue;
            int first = -1;  // the first stage of rank `to` that reads v
            for (int i = producer + 1; i < g->n_nodes && first < 0; i++) {
                int s = stage_of(ps, i);
                if (rank_of_stage(ps, s) != to) continue;
                for (int k = 0; k < g->nodes[i].n_in; k++)
                    if (g->nodes[i].in[k] == v) first = s;
            }
            if (first < 0) continue;
            edge *grown = loom__realloc(ps->edges, (size_t)(ps->n_edges + 1) * sizeof *grown);
            if (!grown) return LOOM_ERR_NOMEM;
            ps->edges = grown;
            ps->edges[ps->n_edges++] = (edge){v, from, to, from_stage, first};
        }
    }
    return LOOM_OK;
}

loom_status loom__parallelize(const loom_graph *global, loom_value loss, const loom_plan *plan,
                              int rank, int pipe_rank, loom_local_graph *out) {
    memset(out, 0, sizeof *out);
    out->loss = -1;
    if (global->has_backward)
        return loom__error(LOOM_ERR_INVALID, "parallelize: give the forward graph (the local "
                           "graphs get their own backward)");
    pass ps = {.g = global, .plan = plan, .rank = rank, .parts = plan->parts, .out = out,
               .pipe_rank = pipe_rank, .pipe_ranks = plan->pipe_ranks > 0 ? plan->pipe_ranks : 1};
    if (ps.pipe_ranks > 64)
        return loom__error(LOOM_ERR_UNSUPPORTED, "at most 64 pipeline ranks (got %d)",
                           ps.pipe_ranks);
    loom_status st = loom_graph_create(&ps.lg);
    if (st < 0) return st;
    out->graph = ps.lg;
    size_t nv = (size_t)global->n_values;
    ps.n_versions = loom__calloc(nv, sizeof(int));
    ps.versions = loom__calloc(nv, sizeof *ps.versions);
    ps.requires = loom__calloc(nv, sizeof(bool));
    ps.needs_grad = loom__calloc(nv, sizeof(bool));
    ps.readers = loom__calloc(nv, sizeof(uint64_t));
    if (!ps.n_versions || !ps.versions || !ps.requires || !ps.needs_grad || !ps.readers) {
        st = LOOM_ERR_NOMEM;
        goto done;
    }
    for (size_t v = 0; v < nv; v++) ps.requires[v] = global->values[v].role == LOOM_ROLE_PARAM;
    for (int i = 0; i < global->n_nodes; i++) {
        const loom_node *n = &global->nodes[i];
        bool any = false;
        for (int k = 0; k < n->n_in; k++)
            any |= ps.requires[n->in[k]] && (loom__op_def(n->op)->grad_inputs >> k & 1);
        for (int o = 0; o < n->n_out; o++) ps.requires[n->out[o]] = any;
    }
    st = find_boundaries(&ps, loss);
    for (int i = 0; i < global->n_nodes && st == 0; i++) {
        if (rank_of_stage(&ps, stage_of(&ps, i)) != pipe_rank) continue;
        // Local nodes (and their comm ops) carry the global node's module path and stage.
        ps.lg->current_stage = stage_of(&ps, i);
        loom_graph_push_scope(ps.lg, global->modules[global->nodes[i].module]);
        st = lower_node(&ps, i);
        loom_graph_pop_scope(ps.lg);
        if (st == 0) st = loom_graph_status(ps.lg);
    }
    bool has_loss = loss >= 0 && rank_of_stage(&ps, stage_of(&ps, global->values[loss].producer)) ==
                                     pipe_rank;
    if (st == 0 && has_loss) {
        ps.lg->current_stage = stage_of(&ps, global->values[loss].producer);
        out->loss = get_local(&ps, loss, &loom__replicated);
        loom_graph_mark_output(ps.lg, out->loss);
        st = loom_graph_status(ps.lg);
    }
    if (st == 0 && loss >= 0) {
        loom_value *seeds = loom__malloc((size_t)(out->n_sends + 1) * sizeof *seeds);
        int n_seeds = 0;
        if (!seeds) st = LOOM_ERR_NOMEM;
        for (int k = 0; st == 0 && k < out->n_sends; k++)
            if (out->sends[k].grad) seeds[n_seeds++] = out->sends[k].value;
        if (st == 0) st = loom__graph_backward_seeded(ps.lg, out->loss, n_seeds, seeds);
        loom__free(seeds);
    }
    if (st < 0) {
        if (ps.pipe_ranks > 1) loom__error_prefix("pipeline rank %d, rank %d of %d", pipe_rank,
                                                  rank, plan->parts);
        else loom__error_prefix("rank %d of %d", rank, plan->parts);
    }
done:
    loom__free(ps.n_versions);
    loom__free(ps.versions);
    loom__free(ps.requires);
    loom__free(ps.needs_grad);
    loom__free(ps.readers);
    loom__free(ps.edges);
    if (st < 0) loom__local_graph_free(out);
    return st;
}

void loom__local_graph_free(loom_local_graph *lg) {
    loom_graph_destroy(lg->graph);
    loom__free(lg->leaves);
    loom__free(lg->sends);
    loom__free(lg->recvs);
    memset(lg, 0, sizeof *lg);
    lg->loss = -1;
}
