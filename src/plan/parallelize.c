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

typedef struct pass {
    const loom_graph *g;
    const loom_plan *plan;
    int rank, parts;
    loom_graph_t lg;
    int *n_versions;                       // per global value
    local_version (*versions)[MAX_VERSIONS];
    bool *requires;                        // global value depends on a parameter
    loom_local_graph *out;
    int cap_leaves;
} pass;

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
    o->leaves[o->n_leaves++] = (loom_local_leaf){global, local, *p};
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
    if (n == 0) {
        LOOM_ASSERT(ps->g->values[global].producer < 0);  // forward values are made in order
        return make_leaf(ps, global, want);
    }
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
    return LOOM_OK;
}

loom_status loom__parallelize(const loom_graph *global, loom_value loss, const loom_plan *plan,
                              int rank, loom_local_graph *out) {
    memset(out, 0, sizeof *out);
    out->loss = -1;
    if (global->has_backward)
        return loom__error(LOOM_ERR_INVALID, "parallelize: give the forward graph (the local "
                           "graphs get their own backward)");
    pass ps = {.g = global, .plan = plan, .rank = rank, .parts = plan->parts, .out = out};
    loom_status st = loom_graph_create(&ps.lg);
    if (st < 0) return st;
    out->graph = ps.lg;
    size_t nv = (size_t)global->n_values;
    ps.n_versions = loom__calloc(nv, sizeof(int));
    ps.versions = loom__calloc(nv, sizeof *ps.versions);
    ps.requires = loom__calloc(nv, sizeof(bool));
    if (!ps.n_versions || !ps.versions || !ps.requires) {
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
    for (int i = 0; i < global->n_nodes && st == 0; i++) {
        // Local nodes (and their comm ops) carry the global node's module path.
        loom_graph_push_scope(ps.lg, global->modules[global->nodes[i].module]);
        st = lower_node(&ps, i);
        loom_graph_pop_scope(ps.lg);
        if (st == 0) st = loom_graph_status(ps.lg);
    }
    if (st == 0 && loss >= 0) {
        out->loss = get_local(&ps, loss, &loom__replicated);
        loom_graph_mark_output(ps.lg, out->loss);
        st = loom_graph_status(ps.lg);
        if (st == 0) st = loom_graph_backward(ps.lg, out->loss);
    }
    if (st < 0) loom__error_prefix("rank %d of %d", rank, plan->parts);
done:
    loom__free(ps.n_versions);
    loom__free(ps.versions);
    loom__free(ps.requires);
    if (st < 0) loom__local_graph_free(out);
    return st;
}

void loom__local_graph_free(loom_local_graph *lg) {
    loom_graph_destroy(lg->graph);
    loom__free(lg->leaves);
    memset(lg, 0, sizeof *lg);
    lg->loss = -1;
}
