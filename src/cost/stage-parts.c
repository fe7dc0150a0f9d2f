// Stage costs for the plan search, from the real machinery: copies of the model with one and two
// layers (alone, and cut into a three-stage pipeline) are planned, parallelized, recomputed and
// lowered like the runtime does; what their programs hold and their ops cost, as a linear
// function of the layers a stage holds.

#include "cost/autodist-impl.h"

#include "backend/backend.h"
#include "core/core.h"
#include "cost/op-cost.h"
#include "lower/schedule.h"
#include "models/family.h"
#include "plan/plan.h"
#include "runtime/runner.h"

#include <stdio.h>
#include <string.h>

const char *loom__ad_variant_spec(const ad_ctx *ctx, int variant) {
    switch (variant) {
    case AD_VARIANT_SELECTIVE: return loom__family(ctx->model.family)->attention_module;
    case AD_VARIANT_FULL: return "layers";
    case AD_VARIANT_CUSTOM: return ctx->cfg.recompute_modules ? ctx->cfg.recompute_modules : "";
    default: return "";
    }
}

// What one lowered stage program holds and costs (one sample of a part, at k layers).
typedef struct sample {
    double forward_s, backward_s, tp_comm_s;
    double arena, held, params, inputs, staging, scratch, send_bytes;
} sample;

// Seconds of a tensor-parallel comm node (its forward or backward) among `tp` ranks.
static double comm_seconds(const ad_ctx *ctx, const loom_graph *g, const loom_node *n,
                           bool backward, int tp) {
    double bytes = 0;
    loom_collective kind = LOOM_COLLECTIVE_ALL_REDUCE;
    switch (n->op) {
    case LOOM_OP_ALL_REDUCE:  // partial sums -> replicated; backward passes the gradient on
        if (backward) return 0;
        bytes = (double)loom__value_bytes(g, n->out[0]);
        break;
    case LOOM_OP_GRAD_SYNC:  // identity; backward all-reduces the gradient
        if (!backward) return 0;
        bytes = (double)loom__value_bytes(g, n->out[0]);
        break;
    case LOOM_OP_ALL_GATHER:  // shards -> replicated; backward takes the local shard
        if (backward) return 0;
        kind = LOOM_COLLECTIVE_ALL_GATHER;
        bytes = (double)loom__value_bytes(g, n->out[0]);
        break;
    case LOOM_OP_SHARD_SLICE:  // local slice; backward gathers the gradient
        if (!backward) return 0;
        kind = LOOM_COLLECTIVE_ALL_GATHER;
        bytes = (double)loom__value_bytes(g, n->in[0]);
        break;
    default: return 0;
    }
    double scale = ctx->precision == LOOM_PRECISION_MIXED ? 0.5 : 1.0;
    return loom_device_collective_seconds(&ctx->spec, kind, bytes * scale, tp);
}

const char *loom__ad_in_layer0(const ad_ctx *ctx, const char *path) {
    char layer0[64];
    snprintf(layer0, sizeof layer0, ctx->layer_format, 0);
    size_t n = strlen(layer0);
    if (strncmp(path, layer0, n) != 0 || (path[n] != '.' && path[n] != '\0')) return NULL;
    return path + n + (path[n] == '.');
}

// Forward and backward seconds of one micro-batch through local graph g (recomputed clones run
// in the backward), and the tensor-parallel collectives among them; the ops of layer 0 count
// layer_weight times (1: as they are).
static loom_status graph_seconds(ad_ctx *ctx, const loom_graph *g, int tp, double layer_weight,
                                 sample *s) {
    double *fwd = NULL, *bwd = NULL;
    if (ctx->measured) {
        fwd = loom__malloc((size_t)(g->n_nodes + 1) * sizeof(double));
        bwd = loom__malloc((size_t)(g->n_nodes + 1) * sizeof(double));
        loom_status st = fwd && bwd
                             ? loom__measure_op_times(g, ctx->threads, ctx->concurrent, fwd, bwd)
                             : LOOM_ERR_NOMEM;
        if (st < 0) return loom__free(fwd), loom__free(bwd), st;
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const loom_node *n = &g->nodes[i];
        const loom_node *f = n->backward ? &g->nodes[n->fwd] : n;
        int in_backward = n->backward || n->recompute_group >= 0;
        int comm = (loom__op_def(n->op)->flags & LOOM_OPF_COMM) != 0;
        // Measured: with more devices than cores, each gets a share of one.
        double t = comm             ? comm_seconds(ctx, g, f, n->backward, tp)
                   : ctx->measured ? (n->backward ? bwd[n->fwd] : fwd[i]) * ctx->oversubscribed
                                   : loom__op_seconds_roofline(&ctx->spec, g, f, n->backward,
                                                               ctx->dtype);
        if (layer_weight != 1 && loom__ad_in_layer0(ctx, g->modules[f->module]))
            t *= layer_weight;
        if (comm) s->tp_comm_s += t;
        *(in_backward ? &s->backward_s : &s->forward_s) += t;
    }
    loom__free(fwd), loom__free(bwd);
    return LOOM_OK;
}

loom_status loom__ad_plan_seconds(ad_ctx *ctx, const loom_graph *global, loom_value loss,
                                  loom_constraints_t constraints, int tp, double *seconds) {
    loom_compute_config cc = loom_compute_config_default();
    cc.policy = LOOM_POLICY_TP;
    cc.constraints = constraints;
    loom_plan plan;
    loom_local_graph lg;
    memset(&lg, 0, sizeof lg);
    sample s;
    memset(&s, 0, sizeof s);
    loom_status st = loom__plan_create(global, &cc, tp, &ctx->model, NULL, &plan);
    if (st < 0) return st;
    st = loom__parallelize(global, loss, &plan, 0, 0, &lg);
    // The whole model's time: one layer costed as all of them.
    if (st == 0) st = graph_seconds(ctx, lg.graph, tp, ctx->model.n_layer, &s);
    *seconds = s.forward_s + s.backward_s;
    loom__local_graph_free(&lg);
    loom__plan_free(&plan);
    return st;
}

// Bytes of the parallel runtime's per-micro-batch token buffers for local graph g.
static double staging_bytes(const loom_graph *g) {
    static const char *names[] = {"tokens", "targets", "positions", "loss_norm"};
    double bytes = 0;
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        loom_value v = loom_graph_find((loom_graph_t)g, names[k]);
        if (v >= 0) bytes += (double)loom__value_numel(g, v) * 4;
    }
    return bytes;
}

// Lower local graph lg for `micros` micro-batches (all in flight under gpipe when pipelined).
static loom_status lower(const loom_local_graph *lg, int pipelined, int ranks, int rank,
                         int micros, loom_program **prog) {
    loom_lower_options lo = {.train = 1, .micro_batches = micros, .seed = 1.0f};
    if (!pipelined) return loom__lower(lg->graph, &lo, prog);
    loom_pipe_program pp = {.rank = rank, .ranks = ranks, .n_sends = lg->n_sends,
                            .sends = lg->sends, .n_recvs = lg->n_recvs, .recvs = lg->recvs};
    loom_pipe_action *actions = NULL;
    LOOM_CHECK(loom__schedule_actions(LOOM_SCHEDULE_GPIPE, ranks, 1, micros, rank, &actions,
                                      &pp.n_actions));
    pp.actions = actions;
    lo.pipe = &pp;
    loom_status st = loom__lower(lg->graph, &lo, prog);
    loom__free(actions);
    return st;
}

static double arena_bytes(const loom_program *p) {
    return (double)(p->region_bytes[LOOM_REGION_ARENA] + p->region_bytes[LOOM_REGION_PERSIST]);
}

// One stage program: pipeline rank `rank` of `ranks` (1: no pipeline) of the plan.
static loom_status sample_rank(ad_ctx *ctx, const loom_graph *global, loom_value loss,
                               const loom_plan *plan, int rank, const char *recompute,
                               sample *s) {
    memset(s, 0, sizeof *s);
    loom_local_graph lg;
    memset(&lg, 0, sizeof lg);
    loom_program *one = NULL, *two = NULL;
    loom_status st = loom__parallelize(global, loss, plan, 0, rank, &lg);
    if (st == 0 && recompute[0]) st = loom__graph_recompute(lg.graph, recompute, 0);
    int pipelined = plan->pipe_ranks > 1;
    if (st == 0) st = lower(&lg, pipelined, plan->pipe_ranks, rank, 1, &one);
    if (st == 0 && pipelined) st = lower(&lg, 1, plan->pipe_ranks, rank, 2, &two);
    if (st == 0) st = graph_seconds(ctx, lg.graph, plan->parts, 1, s);
    if (st == 0) {
        s->arena = arena_bytes(one);
        s->held = two ? arena_bytes(two) - s->arena : 0;
        s->params = (double)one->region_bytes[LOOM_REGION_PARAM];
        s->inputs = (double)one->input_bytes;
        s->staging = staging_bytes(lg.graph);
        for (int k = 0; k < lg.n_sends; k++)
            s->send_bytes += (double)loom__value_bytes(lg.graph, lg.sends[k].value);
        // Kernel scratch is the CPU backend's (GPU kernels keep theirs inside the arena model).
        if (ctx->spec.kind == LOOM_DEVICE_CPU)
            for (int i = 0; i < lg.graph->n_nodes; i++) {
                size_t b = loom__backend_cpu()->scratch_bytes(lg.graph, &lg.graph->nodes[i],
                                                              ctx->threads);
                if ((double)b > s->scratch) s->scratch = (double)b;
            }
    }
    loom__program_free(one), loom__program_free(two);
    loom__local_graph_free(&lg);
    return st;
}

// The model with `layers` layers as a forward graph with its loss, planned for tp devices per
// stage and `stages` pipeline stages of layers / stages layers each.
static loom_status sample_model(ad_ctx *ctx, int layers, int stages, int tp, int micro_batch,
                                const char *recompute, loom_constraints_t constraints,
                                sample *out) {
    loom_model_config m = ctx->model;
    m.n_layer = layers;
    loom_graph_t g = NULL;
    loom_value loss = LOOM_NONE;
    loom_plan plan;
    memset(&plan, 0, sizeof plan);
    LOOM_CHECK(loom_graph_create(&g));
    loom_status st = loom__model_build_loss_graph(&m, g, micro_batch, ctx->cfg.seq, &loss);
    loom_compute_config cc = loom_compute_config_default();
    cc.policy = LOOM_POLICY_HYBRID;
    cc.constraints = constraints;
    cc.pipeline_nstages = stages;
    char split[64] = "";
    for (int s = 0; s < stages; s++)
        snprintf(split + strlen(split), sizeof split - strlen(split), "%s%d", s ? "," : "",
                 layers / stages);
    cc.pipeline_layers = stages > 1 ? split : NULL;
    if (st == 0) st = loom__plan_create(g, &cc, tp, &m, NULL, &plan);
    for (int r = 0; r < stages && st == 0; r++)
        st = sample_rank(ctx, g, loss, &plan, r, recompute, &out[r]);
    loom__plan_free(&plan);
    loom_graph_destroy(g);
    return st;
}

// A field of the samples at one and two layers as base + k * layer.
static ad_linear fit(const sample *one, const sample *two, size_t field) {
    double a = *(const double *)((const char *)one + field);
    double b = *(const double *)((const char *)two + field);
    return (ad_linear){2 * a - b, b - a};
}

static void fit_part(const sample *one, const sample *two, ad_part *p) {
    p->forward_s = fit(one, two, offsetof(sample, forward_s));
    p->backward_s = fit(one, two, offsetof(sample, backward_s));
    p->tp_comm_s = fit(one, two, offsetof(sample, tp_comm_s));
    p->arena = fit(one, two, offsetof(sample, arena));
    p->held = fit(one, two, offsetof(sample, held));
    p->params = fit(one, two, offsetof(sample, params));
    p->inputs = fit(one, two, offsetof(sample, inputs));
    p->staging = fit(one, two, offsetof(sample, staging));
    p->scratch = one->scratch > two->scratch ? one->scratch : two->scratch;
    p->send_bytes = two->send_bytes;
}

// The parts of the stage kinds of `piped` plans (first, middle, last) or of unpipelined ones.
static loom_status build_parts(ad_ctx *ctx, ad_parts *e, int piped) {
    const char *recompute = loom__ad_variant_spec(ctx, e->variant);
    loom_constraints_t constraints = ctx->layouts[e->layout].constraints;
    if (!piped) {
        sample single[2];
        for (int k = 1; k <= 2; k++)
            LOOM_CHECK(sample_model(ctx, k, 1, e->tp, e->micro_batch, recompute, constraints,
                                    &single[k - 1]));
        fit_part(&single[0], &single[1], &e->part[AD_SINGLE]);
        return LOOM_OK;
    }
    sample staged[2][3];
    for (int k = 1; k <= 2; k++)
        LOOM_CHECK(sample_model(ctx, 3 * k, 3, e->tp, e->micro_batch, recompute, constraints,
                                staged[k - 1]));
    for (int r = 0; r < 3; r++) fit_part(&staged[0][r], &staged[1][r], &e->part[AD_FIRST + r]);
    return LOOM_OK;
}

// The cache entry for (tp, micro_batch, variant, layout), created empty when there is none.
static ad_parts *entry(ad_ctx *ctx, int tp, int micro_batch, int variant, int layout) {
    for (int i = 0; i < ctx->n_cache; i++) {
        ad_parts *e = ctx->cache[i];
        if (e->tp == tp && e->micro_batch == micro_batch && e->variant == variant &&
            e->layout == layout)
            return e;
    }
    if (ctx->n_cache == ctx->cap_cache) {
        int cap = ctx->cap_cache ? 2 * ctx->cap_cache : 32;
        ad_parts **c = loom__realloc(ctx->cache, (size_t)cap * sizeof *c);
        if (!c) return NULL;
        ctx->cache = c, ctx->cap_cache = cap;
    }
    // Entries are allocated one by one: pointers handed out stay valid as the cache grows.
    ad_parts *e = loom__calloc(1, sizeof *e);
    if (!e) return NULL;
    ctx->cache[ctx->n_cache++] = e;
    e->tp = tp, e->micro_batch = micro_batch, e->variant = variant, e->layout = layout;
    e->built[0] = e->built[1] = 0;
    return e;
}

const ad_parts *loom__ad_parts(ad_ctx *ctx, int tp, int micro_batch, int variant, int layout,
                               int piped) {
    ad_parts *e = entry(ctx, tp, micro_batch, variant, layout);
    if (!e || e->status < 0 || e->built[piped != 0]) return e;
    loom__log_mute(1);  // a plan's warnings ("stays replicated") are for runs, not estimates
    e->status = build_parts(ctx, e, piped);
    loom__log_mute(0);
    e->built[piped != 0] = 1;
    if (e->status < 0) {
        snprintf(e->error, sizeof e->error, "%s", loom_last_error());
        loom_clear_error();
    }
    return e;
}

void loom__ad_parts_free(ad_ctx *ctx) {
    for (int i = 0; i < ctx->n_cache; i++) loom__free(ctx->cache[i]);
    loom__free(ctx->cache);
    ctx->cache = NULL;
    ctx->n_cache = ctx->cap_cache = 0;
}
