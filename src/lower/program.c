// Lowering a graph to a one-rank program: schedule, liveness, and the memory plan.

#include "lower/program.h"

#include "core/core.h"

#include <string.h>

#define ALIGN 64
static size_t align_up(size_t n) { return (n + ALIGN - 1) & ~(size_t)(ALIGN - 1); }

// ---- instruction list ---------------------------------------------------------------------------

static loom_status push_instr(loom_program *p, int *cap, loom_instr_kind kind, int32_t node,
                              int32_t arg) {
    if (p->n_instr == *cap) {
        int c = *cap ? *cap * 2 : 256;
        loom_instr *in = loom__realloc(p->instr, (size_t)c * sizeof *in);
        if (!in) return LOOM_ERR_NOMEM;
        p->instr = in;
        *cap = c;
    }
    p->instr[p->n_instr++] = (loom_instr){kind, node, arg, 0};
    return LOOM_OK;
}

// The body of one micro-step: forward nodes in order, then backward nodes in order.
// The body of one micro-step: forward nodes in order, then backward nodes in order; the clones
// of a recomputed group run (in their forward order) just before the first backward node that
// reads one of them.
static loom_status push_body(loom_program *p, int *cap, const loom_graph *g, int micro) {
    LOOM_CHECK(push_instr(p, cap, LOOM_INSTR_LOAD_BATCH, -1, micro));
    for (int i = 0; i < g->n_nodes; i++) {
        const loom_node *n = &g->nodes[i];
        if (!n->backward && n->recompute_group < 0)
            LOOM_CHECK(push_instr(p, cap, LOOM_INSTR_FORWARD, i, micro));
    }
    if (!p->train) return LOOM_OK;
    LOOM_CHECK(push_instr(p, cap, LOOM_INSTR_RECORD_LOSS, -1, micro));
    LOOM_CHECK(push_instr(p, cap, LOOM_INSTR_SEED_GRAD, -1, micro));
    char *recomputed = loom__calloc((size_t)g->n_nodes, 1);  // per group id
    if (!recomputed) return LOOM_ERR_NOMEM;
    loom_status st = LOOM_OK;
    for (int i = 0; i < g->n_nodes && st == 0; i++) {
        const loom_node *n = &g->nodes[i];
        if (!n->backward) continue;
        int32_t group = g->nodes[n->fwd].recompute_group;
        if (group >= 0 && !recomputed[group]) {
            for (int k = 0; k < g->n_nodes && st == 0; k++)
                if (!g->nodes[k].backward && g->nodes[k].recompute_group == group)
                    st = push_instr(p, cap, LOOM_INSTR_FORWARD, k, micro);
            recomputed[group] = 1;
        }
        if (st == 0) st = push_instr(p, cap, LOOM_INSTR_BACKWARD, i, micro);
    }
    loom__free(recomputed);
    return st;
}

// ---- regions ------------------------------------------------------------------------------------

static loom_region region_of(const loom_graph *g, loom_value v) {
    const loom_value_info *vi = &g->values[v];
    switch (vi->role) {
    case LOOM_ROLE_INPUT: return LOOM_REGION_INPUT;
    case LOOM_ROLE_PARAM: return LOOM_REGION_PARAM;
    case LOOM_ROLE_STATE: return LOOM_REGION_PERSIST;
    case LOOM_ROLE_GRADIENT:
        if (g->values[vi->grad_of].role == LOOM_ROLE_PARAM) return LOOM_REGION_PARAM_GRAD;
        if (vi->grad_of == g->loss) return LOOM_REGION_PERSIST;
        return LOOM_REGION_ARENA;
    case LOOM_ROLE_ACTIVATION:
        // The loss is read after the forward pass (record_loss): it must outlive the arena.
        return vi->is_output || v == g->loss ? LOOM_REGION_PERSIST : LOOM_REGION_ARENA;
    case LOOM_ROLE_COUNT: break;
    }
    return LOOM_REGION_NONE;
}

// Calls fn(v, ctx) for every value instruction `in` reads or writes.
typedef void (*value_fn)(const loom_graph *g, loom_value v, int instr, void *ctx);

static void for_each_value(const loom_graph *g, const loom_instr *in, int idx, value_fn fn,
                           void *ctx) {
    if (in->kind != LOOM_INSTR_FORWARD && in->kind != LOOM_INSTR_BACKWARD) return;
    const loom_node *n = &g->nodes[in->node];
    for (int k = 0; k < n->n_in; k++)
        if (n->in[k] >= 0) fn(g, n->in[k], idx, ctx);
    for (int k = 0; k < n->n_out; k++)
        if (n->out[k] >= 0) fn(g, n->out[k], idx, ctx);
    if (n->backward) {
        const loom_node *f = &g->nodes[n->fwd];
        const loom_op_def *def = loom__op_def(f->op);
        for (int k = 0; k < f->n_in; k++)
            if (def->bwd_needs_in >> k & 1) fn(g, f->in[k], idx, ctx);
        for (int k = 0; k < f->n_out; k++)
            if (def->bwd_needs_out >> k & 1) fn(g, f->out[k], idx, ctx);
    }
}

typedef struct liveness {
    int *first, *last;
} liveness;

static void note_use(const loom_graph *g, loom_value v, int instr, void *ctx) {
    liveness *l = ctx;
    if (l->first[v] < 0) l->first[v] = instr;
    l->last[v] = instr;
}

// ---- arena placement ----------------------------------------------------------------------------

typedef struct placed {
    size_t offset, size;
    int first, last;
} placed;

static int by_size_desc(const void *a, const void *b, void *sizes_) {
    const size_t *sizes = sizes_;
    size_t sa = sizes[*(const int *)a], sb = sizes[*(const int *)b];
    if (sa != sb) return sa < sb ? 1 : -1;
    return *(const int *)a - *(const int *)b;
}

// Insertion sort with a context (qsort_r is not C11); a few hundred values at most.
static void sort_values(int *v, int n, size_t *sizes) {
    for (int i = 1; i < n; i++) {
        int x = v[i], j = i - 1;
        while (j >= 0 && by_size_desc(&v[j], &x, sizes) > 0) v[j + 1] = v[j], j--;
        v[j + 1] = x;
    }
}

// Greedy: largest first, each at the lowest offset that overlaps no live-together placed value.
static loom_status plan_arena(loom_program *p, const liveness *l) {
    const loom_graph *g = p->graph;
    int n = 0;
    int *order = loom__malloc((size_t)g->n_values * sizeof(int));
    size_t *sizes = loom__calloc((size_t)g->n_values, sizeof(size_t));
    placed *done = loom__malloc((size_t)g->n_values * sizeof(placed));
    if (!order || !sizes || !done) {
        loom__free(order), loom__free(sizes), loom__free(done);
        return LOOM_ERR_NOMEM;
    }
    for (int v = 0; v < g->n_values; v++) {
        if (p->region[v] != LOOM_REGION_ARENA) continue;
        sizes[v] = align_up(loom__value_bytes(g, v));
        order[n++] = v;
    }
    sort_values(order, n, sizes);
    size_t top = 0;
    for (int i = 0; i < n; i++) {
        int v = order[i];
        size_t off = 0;
        // Candidate offsets: 0 and the end of every conflicting block; take the lowest that fits.
        for (int again = 1; again;) {
            again = 0;
            for (int j = 0; j < i; j++) {
                const placed *q = &done[j];
                bool live_together = !(q->last < l->first[v] || l->last[v] < q->first);
                bool overlap = off < q->offset + q->size && q->offset < off + sizes[v];
                if (live_together && overlap) {
                    off = q->offset + q->size;
                    again = 1;
                }
            }
        }
        done[i] = (placed){off, sizes[v], l->first[v], l->last[v]};
        p->offset[v] = off;
        if (off + sizes[v] > top) top = off + sizes[v];
    }
    p->region_bytes[LOOM_REGION_ARENA] = top;
    loom__free(order), loom__free(sizes), loom__free(done);
    return LOOM_OK;
}

// ---- lowering -----------------------------------------------------------------------------------

loom_status loom__lower(const loom_graph *g, const loom_lower_options *opt, loom_program **out) {
    *out = NULL;
    if (g->status) return loom__error(g->status, "lowering a graph that failed to build: %s",
                                      g->error ? g->error : "");
    if (opt->micro_batches < 1)
        return loom__error(LOOM_ERR_INVALID, "micro_batches must be >= 1 (got %d)",
                           opt->micro_batches);
    if (opt->train && !g->has_backward)
        return loom__error(LOOM_ERR_INVALID, "training needs a graph with a backward pass "
                                             "(call loom_graph_backward first)");
    loom_program *p = loom__calloc(1, sizeof *p);
    if (!p) return LOOM_ERR_NOMEM;
    p->graph = g;
    p->train = opt->train;
    p->micro_batches = opt->train ? opt->micro_batches : 1;
    p->loss = opt->train ? g->loss : -1;
    loom_status st = LOOM_OK;
    int cap = 0;
    liveness l = {0};
    p->region = loom__calloc((size_t)g->n_values, 1);
    p->offset = loom__calloc((size_t)g->n_values, sizeof(size_t));
    p->params = loom__malloc((size_t)g->n_values * sizeof(int32_t));
    l.first = loom__malloc((size_t)g->n_values * sizeof(int));
    l.last = loom__malloc((size_t)g->n_values * sizeof(int));
    if (!p->region || !p->offset || !p->params || !l.first || !l.last) {
        st = LOOM_ERR_NOMEM;
        goto fail;
    }
    // Schedule: [zero grads] (load, forward, [seed, backward]) x micro-batches [clip, step].
    if (p->train) LOOM_CHECK_GOTO(push_instr(p, &cap, LOOM_INSTR_ZERO_GRADS, -1, 0), st, fail);
    int body_start = p->n_instr;
    LOOM_CHECK_GOTO(push_body(p, &cap, g, 0), st, fail);
    int body_end = p->n_instr;
    for (int m = 1; m < p->micro_batches; m++) LOOM_CHECK_GOTO(push_body(p, &cap, g, m), st, fail);
    if (p->train) {
        if (opt->dp_sync)
            LOOM_CHECK_GOTO(push_instr(p, &cap, LOOM_INSTR_DP_SYNC, -1, 0), st, fail);
        LOOM_CHECK_GOTO(push_instr(p, &cap, LOOM_INSTR_CLIP_GRADS, -1, 0), st, fail);
        LOOM_CHECK_GOTO(push_instr(p, &cap, LOOM_INSTR_OPTIMIZER_STEP, -1, 0), st, fail);
    }
    // Liveness over one micro-step body (every micro-step reuses the same arena layout).
    for (int v = 0; v < g->n_values; v++) l.first[v] = l.last[v] = -1;
    for (int i = body_start; i < body_end; i++) for_each_value(g, &p->instr[i], i, note_use, &l);
    // Regions; persistent ones laid out in value order.
    for (int v = 0; v < g->n_values; v++) {
        if (l.first[v] < 0 && g->values[v].role != LOOM_ROLE_PARAM && !(p->train && v == g->loss))
            continue;
        loom_region r = region_of(g, v);
        if (r == LOOM_REGION_PARAM_GRAD && !p->train) continue;
        p->region[v] = (uint8_t)r;
        if (r == LOOM_REGION_ARENA) continue;
        p->offset[v] = p->region_bytes[r];
        p->region_bytes[r] += align_up(loom__value_bytes(g, v));
        if (r == LOOM_REGION_PARAM) p->params[p->n_params++] = v;
    }
    // Gradients of parameters share the parameters' offsets (one flat layout for both).
    if (p->train) {
        for (int i = 0; i < p->n_params; i++) {
            loom_value gv = g->values[p->params[i]].grad;
            if (gv < 0) continue;
            p->region[gv] = LOOM_REGION_PARAM_GRAD;
            p->offset[gv] = p->offset[p->params[i]];
        }
        p->region_bytes[LOOM_REGION_PARAM_GRAD] = p->region_bytes[LOOM_REGION_PARAM];
    }
    LOOM_CHECK_GOTO(plan_arena(p, &l), st, fail);
    // Accumulation: the first producer of an activation gradient writes it, later ones add.
    // Parameter gradients always add (zeroed once per step, summed over micro-batches).
    int *written_in = l.first;  // reused: micro-step that last wrote each gradient
    for (int v = 0; v < g->n_values; v++) written_in[v] = -1;
    for (int i = 0; i < p->n_instr; i++) {
        loom_instr *in = &p->instr[i];
        if (in->kind != LOOM_INSTR_BACKWARD) continue;
        const loom_node *n = &g->nodes[in->node];
        for (int k = 0; k < n->n_out; k++) {
            loom_value gv = n->out[k];
            if (gv < 0) continue;
            if (p->region[gv] == LOOM_REGION_PARAM_GRAD || written_in[gv] == in->arg)
                in->acc_mask |= 1u << k;
            written_in[gv] = in->arg;
        }
    }
    loom__free(l.first), loom__free(l.last);
    *out = p;
    return LOOM_OK;
fail:
    loom__free(l.first), loom__free(l.last);
    loom__program_free(p);
    return st;
}

void loom__program_free(loom_program *p) {
    if (!p) return;
    loom__free(p->instr);
    loom__free(p->region);
    loom__free(p->offset);
    loom__free(p->params);
    loom__free(p);
}

const char *loom__instr_name(loom_instr_kind kind) {
    static const char *kinds[] = {"zero_grads", "load_batch", "seed_grad", "record_loss",
                                  "forward", "backward", "dp_sync", "clip_grads",
                                  "optimizer_step"};
    return (unsigned)kind < LOOM_INSTR_COUNT ? kinds[kind] : "?";
}

void loom__program_dump(const loom_program *p, FILE *f) {
    static const char *regions[] = {"none", "arena", "input", "param", "param_grad", "persist"};
    const loom_graph *g = p->graph;
    fprintf(f, "program: %d instructions, %d micro-batches\n", p->n_instr, p->micro_batches);
    for (int r = 1; r < LOOM_REGION_COUNT; r++)
        fprintf(f, "  region %-10s %12zu bytes\n", regions[r], p->region_bytes[r]);
    for (int i = 0; i < p->n_instr; i++) {
        const loom_instr *in = &p->instr[i];
        fprintf(f, "%5d %-14s", i, loom__instr_name(in->kind));
        if (in->node >= 0)
            fprintf(f, " %s @%s", loom__op_def(g->nodes[in->node].op)->signature,
                    g->modules[g->nodes[in->node].module]);
        if (in->acc_mask) fprintf(f, " acc=0x%x", in->acc_mask);
        fputc('\n', f);
    }
}
