// The estimate of one candidate plan: layers split into balanced pipeline stages, each stage's
// time and memory from the per-layer stage costs, the step from a simulation of the schedule,
// data-parallel gradient reduction (overlapped with the last backward) and the optimizer.

#include "cost/autodist-impl.h"

#include "core/core.h"
#include "cost/pipe-time.h"
#include "lower/schedule.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

// Gradient bucket of the runtime's overlapped reduction (loom_compute_config.bucket_bytes).
#define AD_BUCKET_BYTES (25.0 * 1024 * 1024)

// Bytes per parameter element of each category under a precision.
typedef struct elem_bytes {
    double param, grad, optim, activation_scale, update;  // update: optimizer step traffic
} elem_bytes;

static elem_bytes bytes_of(loom_precision p) {
    // fp32 AdamW: parameter, gradient, m, v; the step reads and writes all of them, plus the
    // gradient-norm pass and zeroing the gradients. Mixed: bf16 parameter and gradient, fp32
    // master, m and v (ZeRO's 16 bytes per parameter).
    if (p == LOOM_PRECISION_MIXED) return (elem_bytes){2, 2, 12, 0.5, 32};
    return (elem_bytes){4, 4, 8, 1.0, 36};
}

static ad_kind kind_of(int stage, int n_stages) {
    if (n_stages == 1) return AD_SINGLE;
    return stage == 0 ? AD_FIRST : stage == n_stages - 1 ? AD_LAST : AD_MIDDLE;
}

// A stage quantity with k layers of which r recomputed (the full-recompute parts' per-layer
// value for those).
static double mix(ad_linear plain, ad_linear full, int k, int r) {
    return plain.base + (k - r) * plain.layer + r * full.layer;
}

// The forward + backward seconds of stage s with k layers.
static double stage_cost(const ad_parts *parts, int s, int n_stages, int k) {
    const ad_part *p = &parts->part[kind_of(s, n_stages)];
    return ad_at(p->forward_s, k) + ad_at(p->backward_s, k);
}

// Whether a stage may start at layer i (pipeline_pivots; layer 0 always: the first stage starts
// at the embeddings).
static int may_start(const ad_ctx *ctx, int i) {
    if (i == 0 || !ctx->cfg.pipeline_pivots || !ctx->cfg.pipeline_pivots[0]) return 1;
    char name[96], pattern[96];
    snprintf(name, sizeof name, ctx->layer_format, i);
    for (const char *p = ctx->cfg.pipeline_pivots; *p;) {
        size_t len = strcspn(p, ",");
        snprintf(pattern, sizeof pattern, "%.*s", (int)len, p);
        p += len + (p[len] == ',');
        if (!strcmp(pattern, "layers") || (pattern[0] && loom_module_matches(name, pattern)))
            return 1;
    }
    return 0;
}

// Stage starts allowed at layers [i, L): allowed[i] (allowed[L] = 0).
static void count_starts(const ad_ctx *ctx, int *allowed) {
    int L = ctx->model.n_layer;
    allowed[L] = 0;
    for (int i = L - 1; i >= 1; i--) allowed[i] = allowed[i + 1] + may_start(ctx, i);
}

// Greedy cut with every stage's cost at most `limit`: layers per stage in k. 0 when impossible.
// A stage ends only where enough allowed starts remain for the stages after it.
static int cut(const ad_ctx *ctx, const ad_parts *parts, int n_stages, double limit,
               const int *allowed, int *k) {
    int L = ctx->model.n_layer, start = 0;
    for (int s = 0; s < n_stages; s++) {
        int left = n_stages - s - 1;  // stages after this one, one layer each at least
        if (left == 0) {
            k[s] = L - start;
            return k[s] >= 1 && stage_cost(parts, s, n_stages, k[s]) <= limit;
        }
        int best = 0;
        for (int n = 1; start + n <= L - left; n++) {
            if (stage_cost(parts, s, n_stages, n) > limit) break;
            if (may_start(ctx, start + n) && allowed[start + n] >= left) best = n;
        }
        if (!best) return 0;
        k[s] = best;
        start += best;
    }
    return 0;
}

// Among the splits whose stages all cost at most `limit`, the one with the least sum of squared
// stage costs (the stages that are not the bottleneck balanced too, as the runtime's own
// balancing does, rather than the slack left to the last ones): dynamic programming over
// (stage, first layer), stage lengths bounded by the limit. One exists: the greedy cut met it.
static loom_status balanced_cut(const ad_ctx *ctx, const ad_parts *parts, int n_stages,
                                double limit, int *k) {
    int L = ctx->model.n_layer, S = n_stages;
    // sum[s * (L + 1) + i]: least sum of squares of stages s.. with stage s starting at layer i
    // (< 0: impossible); take[...]: that stage's layers.
    double *sum = loom__malloc((size_t)(S + 1) * (size_t)(L + 1) * sizeof(double));
    int *take = loom__malloc((size_t)S * (size_t)(L + 1) * sizeof(int));
    if (!sum || !take) return loom__free(sum), loom__free(take), LOOM_ERR_NOMEM;
#define SUM(s, i) sum[(size_t)(s) * (size_t)(L + 1) + (size_t)(i)]
#define TAKE(s, i) take[(size_t)(s) * (size_t)(L + 1) + (size_t)(i)]
    for (int i = 0; i <= L; i++) SUM(S, i) = i == L ? 0 : -1;
    for (int s = S - 1; s >= 0; s--)
        for (int i = 0; i <= L; i++) {
            SUM(s, i) = -1;
            if ((s == 0) != (i == 0) || (s > 0 && !may_start(ctx, i))) continue;
            for (int n = 1; i + n <= L - (S - 1 - s); n++) {
                double c = stage_cost(parts, s, S, n);
                if (c > limit) break;
                double rest = SUM(s + 1, i + n);
                if (rest < 0) continue;
                if (SUM(s, i) < 0 || c * c + rest < SUM(s, i)) {
                    SUM(s, i) = c * c + rest;
                    TAKE(s, i) = n;
                }
            }
        }
    LOOM_ASSERT(SUM(0, 0) >= 0);
    for (int s = 0, i = 0; s < S; s++) {
        k[s] = TAKE(s, i);
        i += k[s];
    }
#undef SUM
#undef TAKE
    loom__free(sum), loom__free(take);
    return LOOM_OK;
}

// Layers per virtual stage: the least slowest stage (bisection on its cost), then the most even
// split under it.
static loom_status split_layers(const ad_ctx *ctx, const ad_parts *parts, int n_stages, int *k) {
    int L = ctx->model.n_layer;
    if (n_stages == 1) {
        k[0] = L;
        return LOOM_OK;
    }
    int *allowed = loom__malloc((size_t)(L + 1) * sizeof(int));
    if (!allowed) return LOOM_ERR_NOMEM;
    count_starts(ctx, allowed);
    double hi = stage_cost(parts, 0, 1, L) + stage_cost(parts, 0, n_stages, L) +
                stage_cost(parts, n_stages - 1, n_stages, L), lo = 0;
    loom_status st = LOOM_OK;
    if (!cut(ctx, parts, n_stages, hi, allowed, k)) {
        st = loom__error(LOOM_ERR_INVALID, "%d layers do not cut into %d pipeline stages%s", L,
                         n_stages, ctx->cfg.pipeline_pivots ? " at pipeline_pivots" : "");
    } else {
        for (int it = 0; it < 60 && hi - lo > 1e-9 * hi; it++) {
            double mid = 0.5 * (lo + hi);
            if (cut(ctx, parts, n_stages, mid, allowed, k)) hi = mid;
            else lo = mid;
        }
        st = balanced_cut(ctx, parts, n_stages, hi, k);
    }
    loom__free(allowed);
    return st;
}

// What pipeline rank `rank` holds with r layers of each of its stages recomputed.
static void rank_memory(const ad_ctx *ctx, const ad_plan *p, const ad_parts *plain,
                        const ad_parts *full, int rank, int r, loom_autodist_memory *mem) {
    const loom_autodist_plan *q = &p->pub;
    elem_bytes eb = bytes_of(ctx->precision);
    double params = 0, inputs = 0, staging = 0, scratch = 0, held = 0, transient = 0;
    for (int c = 0; c < q->chunks; c++) {
        const loom_autodist_stage *st = &p->stages[c * q->pp + rank];
        ad_kind kind = kind_of(c * q->pp + rank, q->n_stages);
        const ad_part *a = &plain->part[kind], *b = full ? &full->part[kind] : a;
        int k = st->n_layers, rr = r < k ? r : k;
        params += mix(a->params, b->params, k, rr);
        inputs += mix(a->inputs, b->inputs, k, rr);
        staging += mix(a->staging, b->staging, k, rr);
        double h = mix(a->held, b->held, k, rr), arena = mix(a->arena, b->arena, k, rr);
        held += h / q->chunks;
        if (arena - h > transient) transient = arena - h;
        if (a->scratch > scratch) scratch = a->scratch;
        if (b->scratch > scratch) scratch = b->scratch;
    }
    double n = params / 4, share = q->zero && q->dp > 1 ? q->dp : 1;
    int m = q->num_micro_batches;
    loom_memory_stats *b = &mem->bytes;
    b->parameters = (size_t)(n * eb.param);
    b->gradients = (size_t)(n * eb.grad);
    b->optimizer = (size_t)(n * eb.optim / share);
    b->activations = (size_t)((mem->in_flight * held + transient) * eb.activation_scale);
    b->inputs = (size_t)(inputs * m);
    b->buffers = (size_t)(scratch + staging * m);
    mem->peak = b->parameters + b->gradients + b->optimizer + b->activations + b->inputs +
                b->buffers;
}

// Seconds of a collective among `ranks` devices `stride` apart (the unit layout puts tensor
// ranks next to each other, then pipeline ranks, then data-parallel replicas).
static double group_seconds(const ad_ctx *ctx, loom_collective kind, double bytes, int ranks,
                            int stride) {
    if (ranks <= 1) return 0;
    const loom_device_spec *s = &ctx->spec;
    int one_node = (double)ranks * stride <= s->devices_per_node || !(s->inter_node.bandwidth > 0);
    return loom_collective_seconds(one_node ? &s->intra_node : &s->inter_node, kind, bytes, ranks);
}

static loom_status set_strings(const ad_ctx *ctx, ad_plan *p) {
    const loom_autodist_plan *q = &p->pub;
    size_t cap = (size_t)q->n_stages * 12 + 2;
    loom__free(p->pipeline_layers), loom__free(p->recompute_spec);
    p->pipeline_layers = loom__malloc(cap);
    if (!p->pipeline_layers) return LOOM_ERR_NOMEM;
    p->pipeline_layers[0] = '\0';
    for (int s = 0; q->n_stages > 1 && s < q->n_stages; s++)
        snprintf(p->pipeline_layers + strlen(p->pipeline_layers), cap - strlen(p->pipeline_layers),
                 "%s%d", s ? "," : "", p->stages[s].n_layers);
    int all = 1, any = 0;
    for (int s = 0; s < q->n_stages; s++) {
        all &= p->stages[s].recompute_layers == p->stages[s].n_layers;
        any |= p->stages[s].recompute_layers > 0;
    }
    const char *user = ctx->cfg.recompute_modules;
    const char *fixed = q->recompute == LOOM_RECOMPUTE_SELECTIVE
                            ? loom__ad_variant_spec(ctx, AD_VARIANT_SELECTIVE)
                        : user && user[0]                                     ? user
                        : q->recompute == LOOM_RECOMPUTE_FULL && all && any ? "layers"
                                                                              : NULL;
    if (fixed || !any) {
        p->recompute_spec = loom__strdup(fixed ? fixed : "");
        return p->recompute_spec ? LOOM_OK : LOOM_ERR_NOMEM;
    }
    // Some layers of each stage: name them ("h.0,h.1,h.6").
    size_t len = 0, room = (size_t)ctx->model.n_layer * 72 + 1;
    p->recompute_spec = loom__malloc(room);
    if (!p->recompute_spec) return LOOM_ERR_NOMEM;
    p->recompute_spec[0] = '\0';
    for (int s = 0; s < q->n_stages; s++)
        for (int i = 0; i < p->stages[s].recompute_layers; i++) {
            char name[72];
            snprintf(name, sizeof name, ctx->layer_format, p->stages[s].first_layer + i);
            len += (size_t)snprintf(p->recompute_spec + len, room - len, "%s%s", len ? "," : "",
                                    name);
        }
    return LOOM_OK;
}

// Per pipeline rank, how many of each stage's layers full recomputation recomputes: the fewest
// that fit the limit (all when even that does not fit, or when the user fixed full).
static void choose_recompute(const ad_ctx *ctx, ad_plan *p, const ad_parts *plain,
                             const ad_parts *full, int *r) {
    const loom_autodist_plan *q = &p->pub;
    double limit = ctx->cfg.mem_constraint;
    for (int rank = 0; rank < q->pp; rank++) {
        int kmax = 0;
        for (int c = 0; c < q->chunks; c++)
            if (p->stages[c * q->pp + rank].n_layers > kmax)
                kmax = p->stages[c * q->pp + rank].n_layers;
        loom_autodist_memory none = p->memory[rank], all = p->memory[rank];
        rank_memory(ctx, p, plain, full, rank, 0, &none);
        rank_memory(ctx, p, plain, full, rank, kmax, &all);
        int pick = kmax;
        if (ctx->cfg.recompute == LOOM_RECOMPUTE_FULL) pick = kmax;  // the user asked for all
        else if ((double)none.peak <= limit) pick = 0;
        else if (none.peak > all.peak && (double)all.peak <= limit)
            pick = (int)ceil(((double)none.peak - limit) / ((double)(none.peak - all.peak) / kmax));
        if (pick > kmax) pick = kmax;
        r[rank] = pick;
    }
}

loom_status loom__ad_estimate(ad_ctx *ctx, ad_plan *p) {
    loom_autodist_plan *q = &p->pub;
    q->precision = ctx->precision;
    q->n_stages = q->pp * q->chunks;
    int variant = ctx->cfg.recompute_modules && ctx->cfg.recompute_modules[0] ? AD_VARIANT_CUSTOM
                  : q->recompute == LOOM_RECOMPUTE_SELECTIVE                 ? AD_VARIANT_SELECTIVE
                                                                             : AD_VARIANT_NONE;
    int piped = q->pp * q->chunks > 1;
    if (p->layout < 0 || p->layout >= ctx->n_layouts ||
        (p->layout > 0 && ctx->layouts[p->layout].tp != q->tp))
        return loom__error(LOOM_ERR_INTERNAL, "autodist: layout %d is not one for tp=%d",
                           p->layout, q->tp);
    const ad_layout *lay = &ctx->layouts[p->layout];
    q->layout = lay->description;
    q->constraints = lay->constraints;
    const ad_parts *plain = loom__ad_parts(ctx, q->tp, q->micro_batch, variant, p->layout,
                                           piped);
    const ad_parts *full = q->recompute == LOOM_RECOMPUTE_FULL && variant == AD_VARIANT_NONE
                               ? loom__ad_parts(ctx, q->tp, q->micro_batch, AD_VARIANT_FULL,
                                                p->layout, piped)
                               : NULL;
    if (!plain || (q->recompute == LOOM_RECOMPUTE_FULL && variant == AD_VARIANT_NONE && !full))
        return LOOM_ERR_NOMEM;
    if (plain->status < 0) return loom__error(plain->status, "%s", plain->error);
    if (full && full->status < 0) return loom__error(full->status, "%s", full->error);
    loom__free(p->stages), loom__free(p->memory);
    p->stages = loom__calloc((size_t)q->n_stages, sizeof *p->stages);
    p->memory = loom__calloc((size_t)q->pp, sizeof *p->memory);
    int *k = loom__calloc((size_t)q->n_stages, sizeof(int));
    int *r = loom__calloc((size_t)q->pp, sizeof(int));
    int *in_flight = loom__calloc((size_t)q->pp, sizeof(int));
    double *fwd = loom__calloc((size_t)q->n_stages, sizeof(double));
    double *bwd = loom__calloc((size_t)q->n_stages, sizeof(double));
    loom_status st = p->stages && p->memory && k && r && in_flight && fwd && bwd ? LOOM_OK
                                                                                 : LOOM_ERR_NOMEM;
    if (st == 0 && p->preset_layers) {
        int sum = 0;
        for (int s = 0; s < q->n_stages; s++) {
            k[s] = p->preset_layers[s];
            sum += k[s];
            if (k[s] < 1) st = loom__error(LOOM_ERR_INVALID, "pipeline stage %d has %d layers "
                                           "(each needs at least one)", s, k[s]);
        }
        if (st == 0 && sum != ctx->model.n_layer)
            st = loom__error(LOOM_ERR_INVALID, "the stages hold %d layers but the model has %d",
                             sum, ctx->model.n_layer);
    } else if (st == 0) {
        st = split_layers(ctx, full ? full : plain, q->n_stages, k);
    }
    for (int s = 0, first = 0; st == 0 && s < q->n_stages; first += k[s], s++)
        p->stages[s] = (loom_autodist_stage){.pipe_rank = s % q->pp, .chunk = s / q->pp,
                                             .first_layer = first, .n_layers = k[s],
                                             .embeddings = s == 0,
                                             .head = s == q->n_stages - 1};
    q->stages = p->stages, q->memory = p->memory;
    // In flight per rank under the schedule (1 without a pipeline).
    for (int rank = 0; st == 0 && rank < q->pp; rank++) {
        in_flight[rank] = 1;
        if (q->n_stages == 1) continue;
        loom_pipe_action *a = NULL;
        int n = 0;
        st = loom__schedule_actions(q->schedule, q->pp, q->chunks, q->num_micro_batches, rank,
                                    &a, &n);
        if (st == 0) in_flight[rank] = loom__schedule_max_in_flight(a, n);
        loom__free(a);
        p->memory[rank].in_flight = in_flight[rank];
    }
    if (st == 0 && full && p->preset_recompute)
        for (int rank = 0; rank < q->pp; rank++) r[rank] = p->preset_recompute[rank];
    else if (st == 0 && full) choose_recompute(ctx, p, plain, full, r);
    else if (st == 0 && variant != AD_VARIANT_NONE)
        for (int rank = 0; rank < q->pp; rank++) r[rank] = 0;  // the variant's parts cover it
    size_t peak = 0;
    for (int rank = 0; st == 0 && rank < q->pp; rank++) {
        p->memory[rank].in_flight = in_flight[rank];
        rank_memory(ctx, p, plain, full, rank, r[rank], &p->memory[rank]);
        if (p->memory[rank].peak > peak) peak = p->memory[rank].peak;
    }
    q->peak_memory_bytes = peak;
    // Stage times.
    const ad_parts *fp = full ? full : plain;
    double tp_comm_max = 0, busy_max = 0;
    for (int s = 0; st == 0 && s < q->n_stages; s++) {
        loom_autodist_stage *sg = &p->stages[s];
        ad_kind kind = kind_of(s, q->n_stages);
        int rr = full ? (r[sg->pipe_rank] < sg->n_layers ? r[sg->pipe_rank] : sg->n_layers)
                      : variant != AD_VARIANT_NONE ? sg->n_layers : 0;
        sg->recompute_layers = rr;
        const ad_part *a = &plain->part[kind], *b = &fp->part[kind];
        int rf = full ? rr : 0;
        sg->forward_s = fwd[s] = mix(a->forward_s, b->forward_s, sg->n_layers, rf);
        sg->backward_s = bwd[s] = mix(a->backward_s, b->backward_s, sg->n_layers, rf);
    }
    elem_bytes eb = bytes_of(ctx->precision);
    int m = q->num_micro_batches;
    for (int rank = 0; st == 0 && rank < q->pp; rank++) {
        double busy = 0, comm = 0;
        for (int c = 0; c < q->chunks; c++) {
            int s = c * q->pp + rank;
            ad_kind kind = kind_of(s, q->n_stages);
            busy += m * (fwd[s] + bwd[s]);
            comm += m * mix(plain->part[kind].tp_comm_s, fp->part[kind].tp_comm_s,
                            p->stages[s].n_layers, full ? p->stages[s].recompute_layers : 0);
        }
        if (busy > busy_max) busy_max = busy, tp_comm_max = comm;
    }
    double makespan = busy_max, p2p = 0;
    if (st == 0 && q->n_stages > 1) {
        double bytes = plain->part[AD_FIRST].send_bytes * eb.activation_scale;
        p2p = group_seconds(ctx, LOOM_COLLECTIVE_SEND_RECV, bytes, 2, q->tp);
        loom_pipe_timing t = {0}, t0 = {0};
        st = loom__pipe_simulate(q->schedule, q->pp, q->chunks, m, fwd, bwd, p2p, 1, &t);
        if (st == 0) makespan = t.makespan;
        q->pp_comm_s = 0;
        if (st == 0 && p2p > 0 &&
            (st = loom__pipe_simulate(q->schedule, q->pp, q->chunks, m, fwd, bwd, 0, 1, &t0)) == 0)
            q->pp_comm_s = t.makespan - t0.makespan;
    }
    // Gradient reduction and optimizer step per rank; the step waits for the slowest.
    double tail = 0, dp_exposed = 0, optim = 0;
    for (int rank = 0; st == 0 && rank < q->pp; rank++) {
        double n = (double)p->memory[rank].bytes.parameters / eb.param;
        double share = q->zero && q->dp > 1 ? q->dp : 1, reduce = 0;
        if (q->dp > 1 && q->zero) {
            reduce = group_seconds(ctx, LOOM_COLLECTIVE_REDUCE_SCATTER, n * eb.grad, q->dp,
                                   q->tp * q->pp) +
                     group_seconds(ctx, LOOM_COLLECTIVE_ALL_GATHER, n * eb.param, q->dp,
                                   q->tp * q->pp);
        } else if (q->dp > 1) {
            double t = group_seconds(ctx, LOOM_COLLECTIVE_ALL_REDUCE, n * eb.grad, q->dp,
                                     q->tp * q->pp);
            double last_backward = 0, buckets = ceil(n * eb.grad / AD_BUCKET_BYTES);
            for (int c = 0; c < q->chunks; c++) last_backward += bwd[c * q->pp + rank];
            reduce = fmax(t - last_backward, t / fmax(buckets, 1));
        }
        double update = n / share * eb.update / ctx->spec.memory_bandwidth;
        if (reduce + update > tail) tail = reduce + update, dp_exposed = reduce, optim = update;
    }
    if (st == 0) {
        q->compute_s = busy_max;
        q->tp_comm_s = tp_comm_max;
        q->dp_comm_s = dp_exposed;
        q->optimizer_s = optim;
        q->step_time_s = makespan + tail;
        q->bubble_s = makespan - busy_max - q->pp_comm_s;
        if (q->bubble_s < 0) q->bubble_s = 0;
        double tokens = (double)ctx->cfg.global_batch * ctx->cfg.seq;
        q->tokens_per_s = tokens / q->step_time_s;
        double attn = 12.0 * ctx->model.n_layer * ctx->model.n_head * ctx->model.head_dim *
                      ctx->cfg.seq;
        q->model_flops = (6.0 * (double)ctx->n_params + attn) * tokens;
        double peak_rate = ctx->precision == LOOM_PRECISION_MIXED && ctx->spec.peak_flops_bf16 > 0
                               ? ctx->spec.peak_flops_bf16 : ctx->spec.peak_flops_f32;
        q->mfu = q->model_flops / (q->step_time_s * ctx->cfg.devices * peak_rate);
        q->fits = (double)q->peak_memory_bytes <= ctx->cfg.mem_constraint;
        st = set_strings(ctx, p);
        q->pipeline_layers = p->pipeline_layers;
        q->recompute_spec = p->recompute_spec;
        q->rejected = p->rejected;
    }
    loom__free(k), loom__free(r), loom__free(in_flight), loom__free(fwd), loom__free(bwd);
    return st;
}

void loom__ad_plan_free(ad_plan *p) {
    loom__free(p->stages), loom__free(p->memory);
    loom__free(p->pipeline_layers), loom__free(p->recompute_spec);
    memset(p, 0, sizeof *p);
}

loom_status loom__ad_plan_copy(const ad_plan *src, ad_plan *dst) {
    *dst = *src;
    int n = src->pub.n_stages, pp = src->pub.pp;
    dst->stages = loom__malloc((size_t)n * sizeof *dst->stages);
    dst->memory = loom__malloc((size_t)pp * sizeof *dst->memory);
    dst->pipeline_layers = loom__strdup(src->pipeline_layers ? src->pipeline_layers : "");
    dst->recompute_spec = loom__strdup(src->recompute_spec ? src->recompute_spec : "");
    if (!dst->stages || !dst->memory || !dst->pipeline_layers || !dst->recompute_spec) {
        loom__ad_plan_free(dst);
        return LOOM_ERR_NOMEM;
    }
    memcpy(dst->stages, src->stages, (size_t)n * sizeof *dst->stages);
    memcpy(dst->memory, src->memory, (size_t)pp * sizeof *dst->memory);
    dst->pub.stages = dst->stages, dst->pub.memory = dst->memory;
    dst->pub.pipeline_layers = dst->pipeline_layers;
    dst->pub.recompute_spec = dst->recompute_spec;
    dst->pub.rejected = dst->rejected;
    dst->preset_layers = dst->preset_recompute = NULL;  // borrowed by the original only
    return LOOM_OK;
}
