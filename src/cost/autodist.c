// The plan search: every tensor x pipeline x data-parallel split of the devices, micro-batch
// size, schedule, recomputation and ZeRO setting the user left open is estimated (stage costs
// shared through the parts cache), and the fastest plan under the memory limit wins.

#include "cost/autodist-impl.h"

#include "core/core.h"
#include "io/fileio.h"
#include "ir/ir.h"
#include "models/family.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const recompute_names[] = {"none", "selective", "full"};
static const char *const precision_names[] = {"auto", "fp32", "mixed"};

const char *loom_recompute_mode_name(loom_recompute_mode m) {
    return (unsigned)m < LOOM_RECOMPUTE_MODE_COUNT ? recompute_names[m] : "?";
}

int loom_recompute_mode_from_name(const char *name) {
    for (int i = 0; name && i < LOOM_RECOMPUTE_MODE_COUNT; i++)
        if (!strcmp(name, recompute_names[i])) return i;
    return -1;
}

const char *loom_precision_name(loom_precision p) {
    return (unsigned)p < LOOM_PRECISION_COUNT ? precision_names[p] : "?";
}

loom_autodist_config loom_autodist_config_default(void) {
    return (loom_autodist_config){.devices = 1, .global_batch = 8, .seq = 1024,
                                  .recompute = -1, .zero = -1, .schedule = -1,
                                  .measured = -1, .op_search = 1};
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// The "cpu" spec, measured now (quick) and cached when this machine has none yet.
static loom_status cpu_spec(loom_device_spec *spec) {
    loom_status st = loom_device_spec_builtin("cpu", spec);
    if (st != LOOM_ERR_NOT_FOUND) return st;
    loom_clear_error();
    loom__log(LOOM_LOG_INFO, "no measured cpu device spec yet: measuring this machine (about a "
              "second; `loom bench devices` measures it more precisely)");
    loom_device_measure_config mc = loom_device_measure_config_default();
    mc.quick = 1;
    LOOM_CHECK(loom_device_measure(&mc, spec, NULL));
    char path[4096];
    if (loom_device_spec_cache_path("cpu", path, sizeof path) == 0) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        if (loom__mkdirs(dir) != 0 || loom_device_spec_save(path, spec) < 0) {
            loom__log(LOOM_LOG_WARN, "could not cache the cpu device spec in %s", path);
            loom_clear_error();
        }
    }
    return LOOM_OK;
}

// Parameters of the model and the module name of its numbered layers, from graphs of one and
// two layers.
static loom_status model_facts(ad_ctx *ctx) {
    int64_t count[2] = {0, 0};
    for (int k = 1; k <= 2; k++) {
        loom_model_config m = ctx->model;
        m.n_layer = k;
        loom_graph_t g = NULL;
        loom_value loss;
        LOOM_CHECK(loom_graph_create(&g));
        loom_status st = loom__model_build_loss_graph(&m, g, 1, ctx->cfg.seq, &loss);
        for (int v = 0; st == 0 && v < g->n_values; v++)
            if (g->values[v].role == LOOM_ROLE_PARAM) count[k - 1] += loom__value_numel(g, v);
        for (int i = 0; st == 0 && k == 1 && i < g->n_nodes && !ctx->layer_format[0]; i++) {
            char prefix[64];
            if (!loom__module_prefix(g->modules[g->nodes[i].module], "layers", prefix,
                                     sizeof prefix))
                continue;
            size_t len = strlen(prefix);  // "h.0" -> "h.%d"
            if (len > 0 && prefix[len - 1] == '0')
                snprintf(ctx->layer_format, sizeof ctx->layer_format, "%.*s%%d", (int)len - 1,
                         prefix);
        }
        loom_graph_destroy(g);
        if (st < 0) return st;
    }
    ctx->n_params = count[0] + (count[1] - count[0]) * (ctx->model.n_layer - 1);
    if (!ctx->layer_format[0])
        return loom__error(LOOM_ERR_UNSUPPORTED, "autodist: the model has no numbered layers");
    return LOOM_OK;
}

static int is_fixed(int v) { return v > 0; }

loom_status loom__ad_resolve(ad_ctx *ctx, const loom_model_config *model,
                             const loom_autodist_config *cfg) {
    memset(ctx, 0, sizeof *ctx);
    ctx->model = *model;
    ctx->cfg = *cfg;
    loom_autodist_config *c = &ctx->cfg;
    LOOM_CHECK(loom_model_config_validate(model));
    if (c->devices < 1)
        return loom__error(LOOM_ERR_INVALID, "autodist: devices must be >= 1 (got %d)", c->devices);
    if (c->global_batch < 1 || c->seq < 1)
        return loom__error(LOOM_ERR_INVALID, "autodist: the global batch (%d) and the sequence "
                           "length (%d) must be >= 1", c->global_batch, c->seq);
    if (c->seq > model->max_seq)
        return loom__error(LOOM_ERR_INVALID, "autodist: sequence length %d is longer than the "
                           "model's %d positions (max_position_embeddings / n_positions)", c->seq,
                           model->max_seq);
    const char *degree_names[] = {"tp", "pp", "dp", "micro_batch"};
    int degrees[] = {c->tp, c->pp, c->dp, c->micro_batch};
    for (int i = 0; i < 4; i++)
        if (degrees[i] < 0)
            return loom__error(LOOM_ERR_INVALID, "autodist: %s must be >= 1, or 0 to search it "
                               "(got %d)", degree_names[i], degrees[i]);
    for (int i = 0; i < 3; i++)
        if (degrees[i] > 0 && c->devices % degrees[i] != 0)
            return loom__error(LOOM_ERR_INVALID, "autodist: %s=%d does not divide the %d devices",
                               degree_names[i], degrees[i], c->devices);
    int64_t fixed = (int64_t)(c->tp > 0 ? c->tp : 1) * (c->pp > 0 ? c->pp : 1) *
                    (c->dp > 0 ? c->dp : 1);
    if (c->devices % fixed != 0 || (c->tp > 0 && c->pp > 0 && c->dp > 0 && fixed != c->devices))
        return loom__error(LOOM_ERR_INVALID, "autodist: tp x pp x dp must equal the %d devices "
                           "(tp=%d, pp=%d, dp=%d)", c->devices, c->tp, c->pp, c->dp);
    if (c->pp > model->n_layer)
        return loom__error(LOOM_ERR_INVALID, "autodist: pp=%d is more stages than the model's %d "
                           "layers", c->pp, model->n_layer);
    if (c->recompute >= LOOM_RECOMPUTE_MODE_COUNT || c->recompute < -1)
        return loom__error(LOOM_ERR_INVALID, "autodist: recompute must be none, selective or "
                           "full (or -1 to search)");
    if (c->schedule < -1 || c->schedule >= LOOM_SCHEDULE_COUNT ||
        c->schedule == LOOM_SCHEDULE_INFER_PIPE)
        return loom__error(LOOM_ERR_INVALID, "autodist: schedule must be 1f1b, gpipe or "
                           "1f1b_interleaved (or -1 to search)");
    if (c->zero > 1 || c->zero < -1)
        return loom__error(LOOM_ERR_INVALID, "autodist: zero must be 0, 1 or -1 (search)");
    if (c->max_partition_degree < 0 || c->keep < 0 || c->threads < 0)
        return loom__error(LOOM_ERR_INVALID, "autodist: max_partition_degree (%d), keep (%d) and "
                           "threads (%d) must be >= 0 (0: the default)", c->max_partition_degree,
                           c->keep, c->threads);
    if ((unsigned)c->precision >= LOOM_PRECISION_COUNT)
        return loom__error(LOOM_ERR_INVALID, "autodist: unknown precision %d", (int)c->precision);
    loom_status st = c->device_spec && strcmp(c->device_spec, "cpu") != 0
                         ? loom_device_spec_get(c->device_spec, &ctx->spec)
                         : cpu_spec(&ctx->spec);
    if (st < 0) return st;
    if (c->mem_constraint < 0)
        return loom__error(LOOM_ERR_INVALID, "autodist: mem_constraint must be > 0 bytes (or 0 "
                           "for 0.8 x the device's %.1f GB)", (double)ctx->spec.memory_bytes / 1e9);
    if (c->mem_constraint == 0) c->mem_constraint = 0.8 * (double)ctx->spec.memory_bytes;
    ctx->precision = c->precision != LOOM_PRECISION_AUTO ? c->precision
                     : ctx->spec.kind == LOOM_DEVICE_CPU ? LOOM_PRECISION_FP32
                                                         : LOOM_PRECISION_MIXED;
    ctx->dtype = ctx->precision == LOOM_PRECISION_MIXED ? LOOM_DTYPE_BF16 : LOOM_DTYPE_F32;
    ctx->measured = c->measured >= 0 ? c->measured : ctx->spec.kind == LOOM_DEVICE_CPU;
    if (ctx->measured && ctx->spec.kind != LOOM_DEVICE_CPU)
        return loom__error(LOOM_ERR_UNSUPPORTED, "autodist: op times can be measured only on the "
                           "CPU backend; use the roofline (measured = 0) for %s", ctx->spec.name);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    ctx->threads = c->threads > 0 ? c->threads : (int)(cores / c->devices);
    if (ctx->threads < 1) ctx->threads = 1;
    // The devices of a CPU job are this machine's cores: their ops run side by side.
    ctx->concurrent = ctx->spec.kind == LOOM_DEVICE_CPU && c->devices > 1 ? c->devices : 1;
    if (ctx->concurrent > cores) ctx->concurrent = (int)cores;
    ctx->oversubscribed = ctx->spec.kind == LOOM_DEVICE_CPU && c->devices > cores
                              ? (double)c->devices / (double)cores : 1.0;
    if (c->max_partition_degree <= 0)
        c->max_partition_degree = ctx->spec.devices_per_node > 0 ? ctx->spec.devices_per_node : 1;
    if (c->keep <= 0) c->keep = 10;
    if (c->op_search < 0 || c->op_search > 1)
        return loom__error(LOOM_ERR_INVALID, "autodist: op_search must be 0 or 1 (got %d)",
                           c->op_search);
    c->device_spec = NULL;  // the caller's string is not kept; ctx->spec.name says it
    LOOM_CHECK(model_facts(ctx));
    return loom__ad_layouts_init(ctx);
}

// ---- candidates -----------------------------------------------------------------------------

typedef struct search {
    struct loom_autodist *a;
    ad_plan *plans;
    int n, cap;
    loom_status first_error;
    char error[512];
} search;

// Estimate one candidate; *fits: it was kept and fits the memory limit.
static loom_status consider(search *s, const loom_autodist_plan *shape, int layout, int *fits) {
    *fits = 0;
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 256;
        ad_plan *p = loom__realloc(s->plans, (size_t)cap * sizeof *p);
        if (!p) return LOOM_ERR_NOMEM;
        s->plans = p, s->cap = cap;
    }
    ad_plan *p = &s->plans[s->n];
    memset(p, 0, sizeof *p);
    p->pub = *shape;
    p->layout = layout;
    s->a->evaluated++;
    loom_status st = loom__ad_estimate(&s->a->ctx, p);
    if (st == LOOM_ERR_NOMEM) return loom__ad_plan_free(p), st;
    if (st < 0) {  // this shape cannot split the model: remember why, go on
        if (s->first_error == 0) {
            s->first_error = st;
            snprintf(s->error, sizeof s->error, "%s", loom_last_error());
        }
        loom_clear_error();
        loom__ad_plan_free(p);
        return LOOM_OK;
    }
    // Full recomputation of no layer is the plan without recomputation.
    int any = 0;
    for (int i = 0; i < p->pub.n_stages; i++) any |= p->stages[i].recompute_layers > 0;
    if (p->pub.recompute == LOOM_RECOMPUTE_FULL && !any) {
        loom__ad_plan_free(p);
        return LOOM_OK;
    }
    *fits = p->pub.fits;
    s->n++;
    return LOOM_OK;
}

// Every schedule, ZeRO and recomputation setting left open for one (tp, pp, dp, micro-batch,
// layout).
static loom_status enumerate_settings(search *s, int tp, int pp, int dp, int b, int layout) {
    const ad_ctx *ctx = &s->a->ctx;
    const loom_autodist_config *c = &ctx->cfg;
    int L = ctx->model.n_layer, m = c->global_batch / dp / b;
    for (int sched = 0; sched < LOOM_SCHEDULE_INFER_PIPE; sched++) {
        int chunks = sched == LOOM_SCHEDULE_1F1B_INTERLEAVED ? 2 : 1;
        if (pp == 1 && (sched != LOOM_SCHEDULE_1F1B ||
                        (c->schedule >= 0 && c->schedule != LOOM_SCHEDULE_1F1B)))
            continue;  // a schedule the user fixed needs a pipeline
        if (c->schedule >= 0 ? sched != c->schedule && pp > 1 : sched == LOOM_SCHEDULE_GPIPE)
            continue;
        if (chunks > 1 && (m % pp || L < chunks * pp)) continue;
        for (int zero = 0; zero <= (dp > 1); zero++) {
            if (c->zero >= 0 && zero != c->zero) continue;  // ZeRO needs dp > 1
            // Recomputation only adds time: when the plan without it fits, no recomputing
            // variant can be faster.
            for (int rc = 0, fits = 0; rc < LOOM_RECOMPUTE_MODE_COUNT; rc++) {
                if (rc > 0 && fits && c->recompute < 0) break;
                if (c->recompute_modules && c->recompute_modules[0] ? rc != 0
                    : c->recompute >= 0 ? rc != c->recompute : 0)
                    continue;
                loom_autodist_plan shape = {
                    .tp = tp, .pp = pp, .dp = dp, .chunks = chunks, .micro_batch = b,
                    .num_micro_batches = m, .schedule = (loom_schedule)sched,
                    .recompute = (loom_recompute_mode)rc, .zero = zero};
                int fit = 0;
                LOOM_CHECK(consider(s, &shape, layout, &fit));
                if (rc == 0) fits = fit;
            }
        }
    }
    return LOOM_OK;
}

static loom_status enumerate(search *s) {
    const ad_ctx *ctx = &s->a->ctx;
    const loom_autodist_config *c = &ctx->cfg;
    int n = c->devices, L = ctx->model.n_layer, B = c->global_batch;
    for (int tp = 1; tp <= n; tp++) {
        if (n % tp || (is_fixed(c->tp) ? tp != c->tp : tp > c->max_partition_degree)) continue;
        for (int pp = 1; pp <= n / tp && pp <= L; pp++) {
            if ((n / tp) % pp || (is_fixed(c->pp) && pp != c->pp)) continue;
            int dp = n / tp / pp;
            if ((is_fixed(c->dp) && dp != c->dp) || B % dp) continue;
            for (int b = 1; b <= B / dp; b++) {
                if ((B / dp) % b || (is_fixed(c->micro_batch) && b != c->micro_batch)) continue;
                // The family's table, and the per-op search's layout for this tp if it found
                // a faster one.
                int searched = 0;
                LOOM_CHECK(loom__ad_layout_search(&s->a->ctx, tp, b, &searched));
                LOOM_CHECK(enumerate_settings(s, tp, pp, dp, b, 0));
                if (searched > 0) LOOM_CHECK(enumerate_settings(s, tp, pp, dp, b, searched));
            }
        }
    }
    return LOOM_OK;
}

// Fastest first; among equals, the one needing less memory.
static int by_time(const void *x, const void *y) {
    const ad_plan *a = x, *b = y;
    if (a->pub.step_time_s != b->pub.step_time_s)
        return a->pub.step_time_s < b->pub.step_time_s ? -1 : 1;
    return a->pub.peak_memory_bytes < b->pub.peak_memory_bytes   ? -1
           : a->pub.peak_memory_bytes > b->pub.peak_memory_bytes ? 1
                                                                 : 0;
}

static void why_rejected(const ad_ctx *ctx, const ad_plan *best, ad_plan *p) {
    if (!p->pub.fits)
        snprintf(p->rejected, sizeof p->rejected, "needs %.2f GB per device, over the %.2f GB "
                 "limit", (double)p->pub.peak_memory_bytes / 1e9, ctx->cfg.mem_constraint / 1e9);
    else
        snprintf(p->rejected, sizeof p->rejected, "%.1f%% slower",
                 100.0 * (p->pub.step_time_s / best->pub.step_time_s - 1.0));
}

static void describe(const ad_plan *p, char *buf, size_t cap) {
    snprintf(buf, cap, "tp=%d pp=%d dp=%d, micro-batch %d x %d, %s, recompute %s, zero %s",
             p->pub.tp, p->pub.pp, p->pub.dp, p->pub.micro_batch, p->pub.num_micro_batches,
             loom_schedule_name(p->pub.schedule), loom_recompute_mode_name(p->pub.recompute),
             p->pub.zero ? "on" : "off");
}

// GB for a message: whole above 100, two decimals above 1, three digits below.
static const char *gb_text(double bytes, char *buf, size_t cap) {
    double gb = bytes / 1e9;
    snprintf(buf, cap, gb >= 100 ? "%.0f" : gb >= 1 ? "%.2f" : "%.3g", gb);
    return buf;
}

static loom_status choose(search *s) {
    struct loom_autodist *a = s->a;
    const ad_ctx *ctx = &a->ctx;
    if (s->n == 0)
        return s->first_error < 0 ? loom__error(s->first_error, "autodist: no plan splits the "
                                                "model: %s", s->error)
                                  : loom__error(LOOM_ERR_INVALID, "autodist: no plan matches the "
                                                "fixed settings: the global batch (%d) must "
                                                "divide by dp x micro_batch, ZeRO needs dp > 1, "
                                                "a schedule other than 1f1b needs pp > 1 "
                                                "(1f1b_interleaved: micro-batches a multiple of "
                                                "pp, 2 x pp layers)", ctx->cfg.global_batch);
    qsort(s->plans, (size_t)s->n, sizeof *s->plans, by_time);
    int best = -1, smallest = 0;
    for (int i = 0; i < s->n; i++) {
        if (best < 0 && s->plans[i].pub.fits) best = i;
        if (s->plans[i].pub.peak_memory_bytes < s->plans[smallest].pub.peak_memory_bytes)
            smallest = i;
    }
    a->min_memory = s->plans[smallest].pub.peak_memory_bytes;
    int pick = best >= 0 ? best : smallest;
    LOOM_CHECK(loom__ad_plan_copy(&s->plans[pick], &a->best));
    a->best.rejected[0] = '\0';
    a->alternatives = loom__calloc((size_t)ctx->cfg.keep, sizeof *a->alternatives);
    if (!a->alternatives) return LOOM_ERR_NOMEM;
    // Fitting plans, and the faster ones that need too much memory: at most half of the list
    // for the latter while fitting ones remain, the fastest of each, listed fastest first.
    int fitting = 0, faster = 0, keep = ctx->cfg.keep;
    for (int i = 0; i < s->n; i++) {
        if (i == pick) continue;
        fitting += s->plans[i].pub.fits;
        faster += !s->plans[i].pub.fits && i < pick;
    }
    int take_faster = faster < keep / 2 ? faster : keep / 2;
    if (fitting < keep - take_faster)  // room left: more of the faster ones
        take_faster = faster < keep - fitting ? faster : keep - fitting;
    for (int i = 0; i < s->n && a->n_alternatives < keep; i++) {
        const loom_autodist_plan *q = &s->plans[i].pub;
        if (i == pick || (!q->fits && i > pick)) continue;
        if (!q->fits && take_faster-- <= 0) continue;
        ad_plan *alt = &a->alternatives[a->n_alternatives];
        LOOM_CHECK(loom__ad_plan_copy(&s->plans[i], alt));
        a->n_alternatives++;
        why_rejected(ctx, &a->best, alt);
    }
    if (best >= 0) return LOOM_OK;
    char what[256], limit[32], needs[32];
    describe(&s->plans[smallest], what, sizeof what);
    return loom__error(LOOM_ERR_NOMEM, "autodist: no plan fits %s GB per device; the smallest "
                       "needs %s GB (%s): raise the memory limit to at least that, or add "
                       "devices", gb_text(ctx->cfg.mem_constraint, limit, sizeof limit),
                       gb_text((double)a->min_memory, needs, sizeof needs), what);
}

loom_status loom_autodist_search(const loom_model_config *model, const loom_autodist_config *cfg,
                                 loom_autodist_t *out) {
    *out = NULL;
    double t0 = now_s();
    struct loom_autodist *a = loom__calloc(1, sizeof *a);
    if (!a) return LOOM_ERR_NOMEM;
    search s = {.a = a};
    loom_status st = loom__ad_resolve(&a->ctx, model, cfg);
    if (st == 0) st = enumerate(&s);
    if (st == 0) st = choose(&s);  // LOOM_ERR_NOMEM: nothing fits, best is the smallest
    for (int i = 0; i < s.n; i++) loom__ad_plan_free(&s.plans[i]);
    loom__free(s.plans);
    a->search_s = now_s() - t0;
    if (st == 0 || (st == LOOM_ERR_NOMEM && a->best.stages)) *out = a;
    else loom_autodist_free(a);
    return st;
}

void loom_autodist_free(loom_autodist_t a) {
    if (!a) return;
    loom__ad_plan_free(&a->best);
    for (int i = 0; i < a->n_alternatives; i++) loom__ad_plan_free(&a->alternatives[i]);
    loom__free(a->alternatives);
    loom__ad_parts_free(&a->ctx);
    loom__ad_layouts_free(&a->ctx);
    loom__free(a);
}

const loom_autodist_plan *loom_autodist_best(loom_autodist_t a) { return &a->best.pub; }
int loom_autodist_n_alternatives(loom_autodist_t a) { return a->n_alternatives; }
const loom_autodist_plan *loom_autodist_alternative(loom_autodist_t a, int i) {
    return i >= 0 && i < a->n_alternatives ? &a->alternatives[i].pub : NULL;
}
const loom_autodist_config *loom_autodist_get_config(loom_autodist_t a) { return &a->ctx.cfg; }
const loom_model_config *loom_autodist_model(loom_autodist_t a) { return &a->ctx.model; }
const loom_device_spec *loom__autodist_spec(loom_autodist_t a) { return &a->ctx.spec; }
double loom_autodist_search_seconds(loom_autodist_t a) { return a->search_s; }
int64_t loom_autodist_plans_evaluated(loom_autodist_t a) { return a->evaluated; }
size_t loom_autodist_min_memory(loom_autodist_t a) { return a->min_memory; }

void loom_autodist_apply(const loom_autodist_plan *plan, const loom_autodist_config *cfg,
                         loom_compute_config *cc, loom_train_config *tc) {
    cc->plan_ndevices = plan->tp * plan->pp;
    cc->runtime_ndevices = plan->tp * plan->pp * plan->dp;
    cc->policy = plan->pp > 1    ? LOOM_POLICY_HYBRID
                 : plan->tp > 1  ? LOOM_POLICY_TP
                                 : LOOM_POLICY_DP;
    cc->constraints = plan->constraints;
    cc->use_zero = plan->zero && plan->dp > 1;
    cc->zero_ngroups = 1;
    cc->pipeline_nstages = plan->pp;
    cc->pipeline_nmicros = plan->num_micro_batches;
    cc->pipeline_scheduler = plan->schedule;
    cc->pipeline_nchunks = plan->chunks;
    cc->pipeline_layers = plan->n_stages > 1 ? plan->pipeline_layers : NULL;
    cc->pipeline_pivots = NULL;  // the layers list already respects them
    tc->batch = plan->micro_batch * plan->num_micro_batches * plan->dp;
    tc->seq = cfg->seq;
    tc->grad_accum = 1;
    tc->recompute = plan->recompute_spec && plan->recompute_spec[0] ? plan->recompute_spec : NULL;
}
