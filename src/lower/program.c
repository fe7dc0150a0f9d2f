// Lowering a graph to a one-rank program: schedule, liveness, and the memory plan.

#include "lower/program.h"

#include "core/core.h"

#include <string.h>

#define ALIGN 64
static size_t align_up(size_t n) { return (n + ALIGN - 1) & ~(size_t)(ALIGN - 1); }

// ---- instruction list ---------------------------------------------------------------------------

typedef struct builder {
    loom_program *p;
    int cap;
} builder;

static loom_status emit(builder *b, loom_instr in) {
    loom_program *p = b->p;
    if (p->n_instr == b->cap) {
        int c = b->cap ? b->cap * 2 : 256;
        loom_instr *grown = loom__realloc(p->instr, (size_t)c * sizeof *grown);
        if (!grown) return LOOM_ERR_NOMEM;
        p->instr = grown;
        b->cap = c;
    }
    p->instr[p->n_instr++] = in;
    return LOOM_OK;
}

static loom_status push_instr(builder *b, loom_instr_kind kind, int32_t node, int32_t arg) {
    return emit(b, (loom_instr){.kind = kind, .node = node, .arg = arg, .value = -1, .peer = -1});
}

static loom_status push_p2p(builder *b, loom_instr_kind kind, loom_value v, int micro,
                            const loom_pipe_edge *e, int grad) {
    int tag = 2 * (e->tag * b->p->micro_batches + micro) + grad;
    return emit(b, (loom_instr){.kind = kind, .node = -1, .arg = micro, .value = v,
                                .peer = e->peer, .tag = tag});
}

// The forward of virtual stage `stage` for micro-batch `micro`: receive its boundary inputs,
// run its nodes in order, send its boundary outputs, record the loss where it is computed.
static loom_status push_forward(builder *b, const loom_pipe_program *pp, int stage, int micro,
                                int load) {
    const loom_graph *g = b->p->graph;
    if (load) LOOM_CHECK(push_instr(b, LOOM_INSTR_LOAD_BATCH, -1, micro));
    for (int k = 0; pp && k < pp->n_recvs; k++)
        if (pp->recvs[k].stage == stage)
            LOOM_CHECK(push_p2p(b, LOOM_INSTR_RECV, pp->recvs[k].value, micro, &pp->recvs[k], 0));
    for (int i = 0; i < g->n_nodes; i++) {
        const loom_node *n = &g->nodes[i];
        if (!n->backward && n->recompute_group < 0 && n->stage == stage)
            LOOM_CHECK(push_instr(b, LOOM_INSTR_FORWARD, i, micro));
    }
    for (int k = 0; pp && k < pp->n_sends; k++)
        if (pp->sends[k].stage == stage)
            LOOM_CHECK(push_p2p(b, LOOM_INSTR_SEND, pp->sends[k].value, micro, &pp->sends[k], 0));
    if (b->p->loss >= 0 && g->nodes[g->values[b->p->loss].producer].stage == stage)
        LOOM_CHECK(push_instr(b, LOOM_INSTR_RECORD_LOSS, -1, micro));
    return LOOM_OK;
}

// The backward of virtual stage `stage` for micro-batch `micro`: seed the loss or receive the
// boundary outputs' gradients, run its backward nodes in order (the clones of a recomputed group
// just before the first backward node that reads one of them), send the boundary inputs'
// gradients back.
static loom_status push_backward(builder *b, const loom_pipe_program *pp, int stage, int micro,
                                 char *recomputed) {
    const loom_graph *g = b->p->graph;
    if (b->p->loss >= 0 && g->nodes[g->values[b->p->loss].producer].stage == stage)
        LOOM_CHECK(push_instr(b, LOOM_INSTR_SEED_GRAD, -1, micro));
    for (int k = 0; pp && k < pp->n_sends; k++)
        if (pp->sends[k].stage == stage && pp->sends[k].grad)
            LOOM_CHECK(push_p2p(b, LOOM_INSTR_RECV, g->values[pp->sends[k].value].grad, micro,
                                &pp->sends[k], 1));
    memset(recomputed, 0, (size_t)g->n_nodes);
    for (int i = 0; i < g->n_nodes; i++) {
        const loom_node *n = &g->nodes[i];
        if (!n->backward || n->stage != stage) continue;
        int32_t group = g->nodes[n->fwd].recompute_group;
        if (group >= 0 && !recomputed[group]) {
            for (int k = 0; k < g->n_nodes; k++)
                if (!g->nodes[k].backward && g->nodes[k].recompute_group == group)
                    LOOM_CHECK(push_instr(b, LOOM_INSTR_FORWARD, k, micro));
            recomputed[group] = 1;
        }
        LOOM_CHECK(push_instr(b, LOOM_INSTR_BACKWARD, i, micro));
    }
    for (int k = 0; pp && k < pp->n_recvs; k++) {
        const loom_pipe_edge *e = &pp->recvs[k];
        if (e->stage != stage || !e->grad) continue;
        loom_value gv = g->values[e->value].grad;
        if (gv < 0)
            return loom__error(LOOM_ERR_INTERNAL, "pipeline: stage %d computes no gradient for "
                               "its boundary input '%s'", stage, g->values[e->value].name);
        LOOM_CHECK(push_p2p(b, LOOM_INSTR_SEND, gv, micro, e, 1));
    }
    return LOOM_OK;
}

// Schedule: [zero grads] the actions (forward / backward of a stage and micro-batch), then
// [tied-gradient sums, data-parallel sync, clip, step]. Without a pipeline the actions are
// forward 0, backward 0, forward 1, ... on stage 0.
static loom_status push_schedule(builder *b, const loom_lower_options *opt) {
    loom_program *p = b->p;
    const loom_graph *g = p->graph;
    const loom_pipe_program *pp = opt->pipe;
    if (p->train) LOOM_CHECK(push_instr(b, LOOM_INSTR_ZERO_GRADS, -1, 0));
    char *recomputed = loom__calloc((size_t)g->n_nodes + 1, 1);    // per recompute group
    char *loaded = loom__calloc((size_t)p->micro_batches, 1);     // inputs of a micro-batch
    loom_status st = recomputed && loaded ? LOOM_OK : LOOM_ERR_NOMEM;
    int n_actions = pp ? pp->n_actions : p->micro_batches * (p->train ? 2 : 1);
    for (int a = 0; a < n_actions && st == 0; a++) {
        loom_pipe_action act = {0, 0, 0};
        if (pp) act = pp->actions[a];
        else act = (loom_pipe_action){(uint8_t)(p->train && a % 2), 0, p->train ? a / 2 : a};
        if (act.micro < 0 || act.micro >= p->micro_batches) {
            st = loom__error(LOOM_ERR_INTERNAL, "schedule names micro-batch %d of %d", act.micro,
                             p->micro_batches);
            break;
        }
        int stage = pp ? act.chunk * pp->ranks + pp->rank : 0;
        if (!act.backward) {
            st = push_forward(b, pp, stage, act.micro, !loaded[act.micro]);
            loaded[act.micro] = 1;
        } else if (p->train) {
            st = push_backward(b, pp, stage, act.micro, recomputed);
        }
    }
    loom__free(recomputed), loom__free(loaded);
    LOOM_CHECK(st);
    if (!p->train) return LOOM_OK;
    for (int k = 0; pp && k < pp->n_tied; k++)
        LOOM_CHECK(emit(b, (loom_instr){.kind = LOOM_INSTR_TIED_SYNC, .node = -1, .arg = 0,
                                        .value = pp->tied[k], .peer = pp->tied_group[k]}));
    if (opt->dp_sync) LOOM_CHECK(push_instr(b, LOOM_INSTR_DP_SYNC, -1, 0));
    LOOM_CHECK(push_instr(b, LOOM_INSTR_CLIP_GRADS, -1, 0));
    return push_instr(b, LOOM_INSTR_OPTIMIZER_STEP, -1, 0);
}

// ---- regions ------------------------------------------------------------------------------------

// `received`: the value is a pipeline boundary input that a RECV fills (it lives in the arena
// from its receive to its last use, so only the micro-batches in flight hold one).
static loom_region region_of(const loom_program *p, loom_value v, bool received) {
    const loom_graph *g = p->graph;
    const loom_value_info *vi = &g->values[v];
    switch (vi->role) {
    case LOOM_ROLE_INPUT: return received ? LOOM_REGION_ARENA : LOOM_REGION_INPUT;
    case LOOM_ROLE_PARAM: return LOOM_REGION_PARAM;
    case LOOM_ROLE_STATE: return LOOM_REGION_PERSIST;
    case LOOM_ROLE_GRADIENT:
        if (g->values[vi->grad_of].role == LOOM_ROLE_PARAM) return LOOM_REGION_PARAM_GRAD;
        if (vi->grad_of == g->loss) return LOOM_REGION_PERSIST;
        return LOOM_REGION_ARENA;
    case LOOM_ROLE_ACTIVATION:
        // The loss is read right after its node (record_loss) and must outlive the arena; so
        // must the outputs a caller reads after a run, unless micro-batches are in flight
        // together (pipelines), when each needs its own instance.
        if (v == g->loss) return LOOM_REGION_PERSIST;
        return vi->is_output && !p->pipelined ? LOOM_REGION_PERSIST : LOOM_REGION_ARENA;
    case LOOM_ROLE_COUNT: break;
    }
    return LOOM_REGION_NONE;
}

// Calls fn(v, ctx) for every value instruction `in` reads or writes.
typedef void (*value_fn)(const loom_graph *g, loom_value v, int instr, void *ctx);

static void for_each_value(const loom_graph *g, const loom_instr *in, int idx, value_fn fn,
                           void *ctx) {
    if (in->kind == LOOM_INSTR_SEND || in->kind == LOOM_INSTR_RECV) {
        fn(g, in->value, idx, ctx);
        return;
    }
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

// First and last instruction using each value (`used`) and each (micro-batch, value) instance.
typedef struct liveness {
    const loom_program *p;
    int micro;
    int *used;          // per value: instruction that first uses it in any micro-batch, -1
    int *first, *last;  // per instance m * n_values + v
} liveness;

static void note_use(const loom_graph *g, loom_value v, int instr, void *ctx) {
    liveness *l = ctx;
    if (l->used[v] < 0) l->used[v] = instr;
    size_t k = (size_t)l->micro * (size_t)g->n_values + (size_t)v;
    if (l->first[k] < 0) l->first[k] = instr;
    l->last[k] = instr;
}

// ---- arena placement ----------------------------------------------------------------------------

typedef struct block {
    size_t offset, size;
    int first, last;
    int32_t id;  // instance
} block;

static int by_size_desc(const void *a, const void *b) {
    const block *x = a, *y = b;
    if (x->size != y->size) return x->size < y->size ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int by_first(const void *a, const void *b) {
    const block *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int by_offset(const void *a, const void *b) {
    const block *x = *(block *const *)a, *y = *(block *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

// Greedy: largest first, each at the lowest offset that overlaps no placed block live at the
// same time. Returns the bytes used.
static size_t place_blocks(block *b, int n, block **conflicts) {
    qsort(b, (size_t)n, sizeof *b, by_size_desc);
    size_t top = 0;
    for (int i = 0; i < n; i++) {
        int k = 0;
        for (int j = 0; j < i; j++)
            if (!(b[j].last < b[i].first || b[i].last < b[j].first)) conflicts[k++] = &b[j];
        qsort(conflicts, (size_t)k, sizeof *conflicts, by_offset);
        size_t off = 0;
        for (int j = 0; j < k; j++) {
            if (conflicts[j]->offset >= off + b[i].size) break;  // the gap below it fits
            size_t end = conflicts[j]->offset + conflicts[j]->size;
            if (end > off) off = end;
        }
        b[i].offset = off;
        if (off + b[i].size > top) top = off + b[i].size;
    }
    return top;
}

// Place every arena instance. The timeline is cut where no instance is live (between the
// micro-batches of a plain program): each piece is placed on its own from offset 0.
static loom_status plan_arena(loom_program *p, const liveness *l) {
    const loom_graph *g = p->graph;
    size_t nv = (size_t)g->n_values, total = nv * (size_t)p->micro_batches;
    block *blocks = loom__malloc((total ? total : 1) * sizeof *blocks);
    block **conflicts = loom__malloc((total ? total : 1) * sizeof *conflicts);
    if (!blocks || !conflicts) {
        loom__free(blocks), loom__free(conflicts);
        return LOOM_ERR_NOMEM;
    }
    int n = 0;
    for (size_t k = 0; k < total; k++) {
        loom_value v = (loom_value)(k % nv);
        if (p->region[v] != LOOM_REGION_ARENA || l->first[k] < 0) continue;
        blocks[n++] = (block){0, align_up(loom__value_bytes(g, v)), l->first[k], l->last[k],
                              (int32_t)k};
    }
    qsort(blocks, (size_t)n, sizeof *blocks, by_first);
    size_t arena = 0;
    for (int lo = 0; lo < n;) {
        int hi = lo + 1, reach = blocks[lo].last;
        while (hi < n && blocks[hi].first <= reach) {
            if (blocks[hi].last > reach) reach = blocks[hi].last;
            hi++;
        }
        size_t used = place_blocks(blocks + lo, hi - lo, conflicts);
        if (used > arena) arena = used;
        for (int i = lo; i < hi; i++) p->offset[blocks[i].id] = blocks[i].offset;
        lo = hi;
    }
    p->region_bytes[LOOM_REGION_ARENA] = arena;
    loom__free(blocks), loom__free(conflicts);
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
    p->pipelined = opt->pipe != NULL;
    p->micro_batches = opt->micro_batches;
    p->seed = opt->seed > 0 ? opt->seed : 1.0f / (float)p->micro_batches;
    p->loss = g->loss;
    loom_status st = LOOM_OK;
    size_t nv = (size_t)g->n_values, total = nv * (size_t)p->micro_batches;
    liveness l = {.p = p};
    p->region = loom__calloc(nv, 1);
    p->offset = loom__calloc(total, sizeof(size_t));
    p->params = loom__malloc(nv * sizeof(int32_t));
    l.used = loom__malloc(nv * sizeof(int));
    l.first = loom__malloc(total * sizeof(int));
    l.last = loom__malloc(total * sizeof(int));
    if (!p->region || !p->offset || !p->params || !l.used || !l.first || !l.last) {
        st = LOOM_ERR_NOMEM;
        goto fail;
    }
    builder b = {p, 0};
    LOOM_CHECK_GOTO(push_schedule(&b, opt), st, fail);
    for (size_t v = 0; v < nv; v++) l.used[v] = -1;
    for (size_t k = 0; k < total; k++) l.first[k] = l.last[k] = -1;
    for (int i = 0; i < p->n_instr; i++) {
        l.micro = p->instr[i].arg;
        for_each_value(g, &p->instr[i], i, note_use, &l);
    }
    // Regions; the shared ones laid out in value order, the inputs once per micro-batch.
    for (size_t v = 0; v < nv; v++) {
        if (l.used[v] < 0 && g->values[v].role != LOOM_ROLE_PARAM && !(p->loss == (loom_value)v))
            continue;
        bool received = false;
        for (int k = 0; opt->pipe && k < opt->pipe->n_recvs; k++)
            received |= opt->pipe->recvs[k].value == (loom_value)v;
        loom_region r = region_of(p, (loom_value)v, received);
        if (r == LOOM_REGION_PARAM_GRAD && !p->train) continue;
        p->region[v] = (uint8_t)r;
        if (r == LOOM_REGION_ARENA) continue;
        p->offset[v] = p->region_bytes[r];
        p->region_bytes[r] += align_up(loom__value_bytes(g, (loom_value)v));
        if (r == LOOM_REGION_PARAM) p->params[p->n_params++] = (int32_t)v;
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
    p->input_bytes = p->region_bytes[LOOM_REGION_INPUT];
    p->region_bytes[LOOM_REGION_INPUT] *= (size_t)p->micro_batches;
    for (int m = 1; m < p->micro_batches; m++)
        for (size_t v = 0; v < nv; v++)
            p->offset[(size_t)m * nv + v] = p->offset[v] + (p->region[v] == LOOM_REGION_INPUT
                                                                 ? (size_t)m * p->input_bytes : 0);
    LOOM_CHECK_GOTO(plan_arena(p, &l), st, fail);
    // Accumulation: the first writer of an activation gradient's instance writes it (a receive
    // counts), later ones add. Parameter gradients always add (zeroed once per step).
    char *written = (char *)l.first;  // reused: per instance, written yet
    memset(written, 0, total);
    for (int i = 0; i < p->n_instr; i++) {
        loom_instr *in = &p->instr[i];
        size_t base = (size_t)in->arg * nv;
        if (in->kind == LOOM_INSTR_RECV) written[base + (size_t)in->value] = 1;
        if (in->kind != LOOM_INSTR_BACKWARD) continue;
        const loom_node *n = &g->nodes[in->node];
        for (int k = 0; k < n->n_out; k++) {
            loom_value gv = n->out[k];
            if (gv < 0) continue;
            if (p->region[gv] == LOOM_REGION_PARAM_GRAD || written[base + (size_t)gv])
                in->acc_mask |= 1u << k;
            written[base + (size_t)gv] = 1;
        }
    }
    loom__free(l.used), loom__free(l.first), loom__free(l.last);
    *out = p;
    return LOOM_OK;
fail:
    loom__free(l.used), loom__free(l.first), loom__free(l.last);
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
                                  "optimizer_step", "send", "recv", "tied_sync"};
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
        if (in->value >= 0) fprintf(f, " %s", g->values[in->value].name);
        if (in->kind == LOOM_INSTR_SEND || in->kind == LOOM_INSTR_RECV)
            fprintf(f, " %s rank %d (tag %d)", in->kind == LOOM_INSTR_SEND ? "to" : "from",
                    in->peer, in->tag);
        if (in->acc_mask) fprintf(f, " acc=0x%x", in->acc_mask);
        if (p->micro_batches > 1) fprintf(f, " [micro %d]", in->arg);
        fputc('\n', f);
    }
}
