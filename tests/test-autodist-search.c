// Autodist plan search through the library API: the chosen plan is the fastest that fits, every
// plan keeps its invariants (closed forms for parameters, FLOPs, batch and layers), fixed
// settings and search-space limits are honoured, bad settings are refused by name, and the
// search scales to the example models on up to 8192 devices.

#include "io-testutil.h"

#include "loom/autodist.h"
#include "loom/constraints.h"
#include "loom/device.h"
#include "loom/model.h"
#include "loom/parallel.h"
#include "loom/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GB 1e9

// ---- helpers ----------------------------------------------------------------------------------

static const char *config_path(const char *name) {
    static char path[4][512];
    static int next;
    char *b = path[next++ % 4];
    snprintf(b, sizeof path[0], "%s/../../examples/configs/%s.json", LOOM_TEST_DATA, name);
    return b;
}

static loom_model_config load_model(const char *name) {
    loom_model_config mc;
    memset(&mc, 0, sizeof mc);
    loom_status st = loom_model_config_load(config_path(name), &mc);
    CHECK_MSG(st == LOOM_OK, "loading %s: %s", name, loom_last_error());
    if (st != LOOM_OK) exit(tu_finish() + 1);  // nothing below can run without the model
    return mc;
}

// Parameters of a model from its config (tied embeddings once): GPT-2 has learned positions,
// biases and two layer norms (weight + bias) per layer; LLaMA has bias-free projections, a SwiGLU
// MLP of three matrices and two RMS norms per layer.
static double closed_form_params(const loom_model_config *m) {
    double d = m->n_embd, L = m->n_layer, V = m->vocab_size, ff = m->n_inner;
    double kv = (double)m->n_kv_head * m->head_dim, q = (double)m->n_head * m->head_dim;
    if (m->family == LOOM_FAMILY_GPT2)  // wte + wpe + layers (qkv, proj, fc, proj, 2 ln) + ln_f
        return V * d + m->max_seq * d + L * (d * 3 * d + 3 * d + d * d + d + d * ff + ff + ff * d +
                                             d + 4 * d) + 2 * d;
    double head = m->tie_word_embeddings ? 0 : V * d;
    return V * d + head + L * (d * q + 2 * d * kv + q * d + 3 * d * ff + 2 * d) + d;
}

// An autodist config for the H100 spec's roofline (a GPU spec: mixed precision).
static loom_autodist_config h100(int devices, int global_batch, int seq, double mem_gb) {
    loom_autodist_config ac = loom_autodist_config_default();
    ac.devices = devices;
    ac.device_spec = "h100-80gb-sxm";
    ac.global_batch = global_batch;
    ac.seq = seq;
    ac.mem_constraint = mem_gb * GB;
    ac.measured = 0;
    return ac;
}

static int near(double a, double b, double rel) {
    return fabs(a - b) <= rel * fmax(fabs(a), fabs(b)) + 1e-300;
}

// The first number in `s` after `after` (NAN when absent).
static double number_after(const char *s, const char *after) {
    const char *p = s ? strstr(s, after) : NULL;
    if (!p) return NAN;
    p += strlen(after);
    while (*p && !(*p >= '0' && *p <= '9')) p++;
    return *p ? strtod(p, NULL) : NAN;
}

// The number just before `before` in `s` ("12.5% slower" -> 12.5; NAN when absent).
static double number_before(const char *s, const char *before) {
    const char *p = s ? strstr(s, before) : NULL;
    if (!p) return NAN;
    while (p > s && ((p[-1] >= '0' && p[-1] <= '9') || p[-1] == '.' || p[-1] == '-')) p--;
    return strtod(p, NULL);
}

static void describe(const loom_autodist_plan *p, char *buf, size_t cap) {
    snprintf(buf, cap, "tp%d pp%d dp%d x%d chunks, mb %d x %d, %s, recompute %s, zero %d",
             p->tp, p->pp, p->dp, p->chunks, p->micro_batch, p->num_micro_batches,
             loom_schedule_name(p->schedule), loom_recompute_mode_name(p->recompute), p->zero);
    if (p->layout && p->layout[0])
        snprintf(buf + strlen(buf), cap - strlen(buf), ", ops: %s", p->layout);
}

// The plan recomputes nothing: no recompute mode and no recompute_modules.
static int recomputes_nothing(const loom_autodist_config *c, const loom_autodist_plan *p) {
    int modules = c->recompute_modules && c->recompute_modules[0];
    return p->recompute == LOOM_RECOMPUTE_NONE && !modules;
}

// What every plan must satisfy, whatever the search chose.
static void check_plan(const loom_model_config *m, loom_autodist_t ad, const loom_autodist_plan *p,
                       const char *what) {
    const loom_autodist_config *c = loom_autodist_get_config(ad);
    char d[1024];
    describe(p, d, sizeof d);
    // Per-op strategies: the table ("") or overrides carried by constraints, inside tp > 1.
    int user = loom_constraints_count(c->constraints);
    CHECK_MSG(p->layout && (p->layout[0] ? p->tp > 1 && loom_constraints_count(p->constraints) >
                                                             user
                                         : loom_constraints_count(p->constraints) == user),
              "%s: %s, layout '%s' with %d constraints (user's %d)", what, d,
              p->layout ? p->layout : "(null)", loom_constraints_count(p->constraints), user);
    // Devices, batch, stages.
    CHECK_MSG(p->tp >= 1 && p->pp >= 1 && p->dp >= 1 && p->tp * p->pp * p->dp == c->devices,
              "%s: %s on %d devices", what, d, c->devices);
    CHECK_MSG(p->dp * p->micro_batch * p->num_micro_batches == c->global_batch,
              "%s: %s, global batch %d", what, d, c->global_batch);
    CHECK_MSG(p->chunks >= 1 && p->pp * p->chunks == p->n_stages, "%s: %s, %d stages", what, d,
              p->n_stages);
    CHECK_MSG(p->chunks == 1 || p->schedule == LOOM_SCHEDULE_1F1B_INTERLEAVED,
              "%s: %s: chunks without interleaving", what, d);
    CHECK_MSG(p->precision == LOOM_PRECISION_MIXED, "%s: a GPU spec plans mixed precision, got %s",
              what, loom_precision_name(p->precision));
    int layers = 0, ok_layers = 1, ok_ends = 1, ok_ranks = 1, ok_rc = 1, ok_times = 1;
    for (int s = 0; p->stages && s < p->n_stages; s++) {
        const loom_autodist_stage *st = &p->stages[s];
        ok_layers &= st->n_layers >= 1 && st->first_layer == layers;
        layers += st->n_layers;
        ok_ends &= st->embeddings == (s == 0) && st->head == (s == p->n_stages - 1);
        ok_ranks &= st->pipe_rank == s % p->pp && st->chunk == s / p->pp;
        ok_rc &= st->recompute_layers >= 0 && st->recompute_layers <= st->n_layers;
        if (recomputes_nothing(c, p)) ok_rc &= st->recompute_layers == 0;
        // A backward does two matmuls for each of the forward's (and repeats recomputed ones);
        // other layouts than the table may gather in the forward what the backward only slices.
        ok_times &= st->forward_s > 0 &&
                    (p->layout[0] ? st->backward_s > 0 : st->backward_s >= st->forward_s);
    }
    CHECK_MSG(p->stages && ok_layers && layers == m->n_layer, "%s: %s: stages hold %d of %d "
              "layers (contiguous, >= 1 each: %d)", what, d, layers, m->n_layer, ok_layers);
    CHECK_MSG(ok_ends, "%s: %s: embeddings must be on the first stage, the head on the last",
              what, d);
    CHECK_MSG(ok_ranks, "%s: %s: stage s must be chunk s / pp of pipe rank s %% pp", what, d);
    CHECK_MSG(ok_rc, "%s: %s: recompute_layers out of range", what, d);
    CHECK_MSG(ok_times, "%s: %s: stage forward/backward times", what, d);
    if (recomputes_nothing(c, p))
        CHECK_MSG(p->recompute_spec && !p->recompute_spec[0], "%s: %s: recompute spec '%s'", what,
                  d, tu_str(p->recompute_spec));
    else
        CHECK_MSG(p->recompute_spec && p->recompute_spec[0], "%s: %s: empty recompute spec",
                  what, d);

    // Memory: each rank's peak is the sum of its categories, the plan's the largest.
    size_t peak = 0;
    int ok_sum = 1, ok_flight = 1;
    for (int r = 0; p->memory && r < p->pp; r++) {
        const loom_autodist_memory *mem = &p->memory[r];
        const loom_memory_stats *b = &mem->bytes;
        ok_sum &= mem->peak == b->parameters + b->gradients + b->optimizer + b->activations +
                                   b->inputs + b->buffers;
        if (mem->peak > peak) peak = mem->peak;
        // Micro-batches in flight: 1F1B holds min(pp - rank, m) on rank `rank`, GPipe all m.
        int m_ = p->num_micro_batches, want = p->pp == 1 ? 1
                                             : p->schedule == LOOM_SCHEDULE_GPIPE ? m_
                                             : p->schedule == LOOM_SCHEDULE_1F1B
                                                 ? (p->pp - r < m_ ? p->pp - r : m_)
                                                 : -1;
        ok_flight &= want < 0 ? mem->in_flight >= 1 && mem->in_flight <= p->chunks * m_
                              : mem->in_flight == want;
    }
    CHECK_MSG(p->memory && ok_sum && peak == p->peak_memory_bytes, "%s: %s: peak %zu, ranks' "
              "largest %zu (sums exact: %d)", what, d, p->peak_memory_bytes, peak, ok_sum);
    CHECK_MSG(ok_flight, "%s: %s: micro-batches in flight", what, d);
    CHECK_MSG(p->fits == ((double)p->peak_memory_bytes <= c->mem_constraint), "%s: %s: fits=%d "
              "with %zu bytes under %.0f", what, d, p->fits, p->peak_memory_bytes,
              c->mem_constraint);
    // Every parameter is held somewhere with its gradient and Adam state (2 + 2 + 12 bytes),
    // so the fullest device holds at least 1/devices of 16 N.
    double n = closed_form_params(m);
    CHECK_MSG((double)p->peak_memory_bytes >= 16 * n / c->devices * (1 - 1e-9), "%s: %s: peak %zu "
              "below 16 N / devices = %.0f", what, d, p->peak_memory_bytes, 16 * n / c->devices);
    if (p->tp == 1 && p->pp == 1 && p->memory) {  // pure data parallelism: the whole model
        const loom_memory_stats *b = &p->memory[0].bytes;
        double share = p->zero && p->dp > 1 ? p->dp : 1;
        CHECK_MSG(near((double)b->parameters, 2 * n, 1e-3) &&
                  near((double)b->gradients, 2 * n, 1e-3), "%s: %s: parameters %zu, gradients "
                  "%zu bytes, want 2 x %.0f", what, d, b->parameters, b->gradients, n);
        CHECK_MSG(near((double)b->optimizer, 12 * n / share, 1e-2), "%s: %s: optimizer %zu bytes, "
                  "want 12 x %.0f / %.0f", what, d, b->optimizer, n, share);
    }

    // Time: the parts add up, idle parts vanish without their parallelism.
    double busiest = 0;
    for (int r = 0; p->stages && r < p->pp; r++) {
        double busy = 0;
        for (int k = 0; k < p->chunks; k++)
            busy += p->stages[k * p->pp + r].forward_s + p->stages[k * p->pp + r].backward_s;
        busiest = fmax(busiest, busy * p->num_micro_batches);
    }
    CHECK_MSG(near(p->compute_s, busiest, 1e-9), "%s: %s: compute %.9g s, busiest rank %.9g s",
              what, d, p->compute_s, busiest);
    CHECK_MSG(p->step_time_s > 0 && p->step_time_s >= p->compute_s * (1 - 1e-12) &&
              p->bubble_s >= 0 && p->pp_comm_s >= 0 && p->dp_comm_s >= 0 && p->optimizer_s > 0 &&
              p->tp_comm_s >= 0 && p->tp_comm_s <= p->compute_s, "%s: %s: step %g compute %g "
              "bubble %g pp %g dp %g optim %g tp %g", what, d, p->step_time_s, p->compute_s,
              p->bubble_s, p->pp_comm_s, p->dp_comm_s, p->optimizer_s, p->tp_comm_s);
    double parts = p->compute_s + p->bubble_s + p->pp_comm_s + p->dp_comm_s + p->optimizer_s;
    CHECK_MSG(near(parts, p->step_time_s, 1e-6), "%s: %s: step %.9g s, parts add to %.9g s", what,
              d, p->step_time_s, parts);
    CHECK_MSG(p->tp > 1 || p->tp_comm_s == 0, "%s: %s: tensor-parallel comm without tp", what, d);
    CHECK_MSG(p->dp > 1 || p->dp_comm_s == 0, "%s: %s: data-parallel comm without dp", what, d);
    CHECK_MSG(p->pp > 1 || (p->pp_comm_s == 0 && p->bubble_s < 1e-12 * p->step_time_s),
              "%s: %s: pipeline time without a pipeline", what, d);
    // Throughput: tokens per step over the step; FLOPs by PaLM's 6N + 12 L H Q T per token.
    double tokens = (double)c->global_batch * c->seq;
    CHECK_MSG(near(p->tokens_per_s, tokens / p->step_time_s, 1e-9), "%s: %s: %g tokens/s, want "
              "%g", what, d, p->tokens_per_s, tokens / p->step_time_s);
    double flops = (6 * n + 12.0 * m->n_layer * m->n_head * m->head_dim * c->seq) * tokens;
    CHECK_MSG(near(p->model_flops, flops, 1e-9), "%s: %s: model flops %.6g, want %.6g", what, d,
              p->model_flops, flops);
    loom_device_spec spec;
    if (loom_device_spec_builtin("h100-80gb-sxm", &spec) == 0) {
        double mfu = flops / (p->step_time_s * c->devices * spec.peak_flops_bf16);
        CHECK_MSG(p->mfu > 0 && p->mfu < 1 && near(p->mfu, mfu, 1e-6), "%s: %s: MFU %g, want %g",
                  what, d, p->mfu, mfu);
    }
}

// What the result of a search must satisfy: the best plan, then the alternatives (sorted by
// time, each saying why it lost).
static void check_result(const loom_model_config *m, loom_autodist_t ad, loom_status st,
                         const char *what) {
    const loom_autodist_plan *best = loom_autodist_best(ad);
    const loom_autodist_config *c = loom_autodist_get_config(ad);
    check_plan(m, ad, best, what);
    CHECK_MSG(best->rejected && !best->rejected[0], "%s: the best plan is rejected: %s", what,
              tu_str(best->rejected));
    CHECK_MSG(best->fits == (st == LOOM_OK), "%s: status %s, best fits %d", what,
              loom_status_name(st), best->fits);
    if (st == LOOM_OK)
        CHECK_MSG((double)best->peak_memory_bytes <= c->mem_constraint, "%s: best needs %zu bytes "
                  "over the %.0f limit", what, best->peak_memory_bytes, c->mem_constraint);
    size_t min_mem = loom_autodist_min_memory(ad);
    CHECK_MSG(min_mem > 0 && min_mem <= best->peak_memory_bytes, "%s: min memory %zu, best %zu",
              what, min_mem, best->peak_memory_bytes);
    int n = loom_autodist_n_alternatives(ad);
    CHECK_MSG(n >= 0 && n <= c->keep && n < loom_autodist_plans_evaluated(ad),
              "%s: %d alternatives, keep %d, %lld evaluated", what, n, c->keep,
              (long long)loom_autodist_plans_evaluated(ad));
    CHECK(loom_autodist_alternative(ad, -1) == NULL && loom_autodist_alternative(ad, n) == NULL);
    double prev = 0;
    for (int i = 0; i < n; i++) {
        const loom_autodist_plan *q = loom_autodist_alternative(ad, i);
        char w[320];
        snprintf(w, sizeof w, "%s, alternative %d", what, i);
        if (!q) {
            CHECK_MSG(q, "%s: NULL", w);
            continue;
        }
        check_plan(m, ad, q, w);
        CHECK_MSG(q->step_time_s >= prev, "%s: step %g after %g: not sorted", w, q->step_time_s,
                  prev);
        prev = q->step_time_s;
        CHECK_MSG(min_mem <= q->peak_memory_bytes, "%s: needs %zu, below the min memory %zu", w,
                  q->peak_memory_bytes, min_mem);
        const char *why = q->rejected ? q->rejected : "";
        CHECK_MSG(why[0] && (strstr(why, "slower") || strstr(why, "GB")), "%s: rejected '%s'", w,
                  why);
        if (q->fits && best->fits) {
            // The best plan is the fastest that fits.
            CHECK_MSG(q->step_time_s >= best->step_time_s, "%s: fits and takes %g s, the best %g s",
                      w, q->step_time_s, best->step_time_s);
            double pct = 100 * (q->step_time_s / best->step_time_s - 1);
            CHECK_MSG(strstr(why, "slower") && fabs(number_before(why, "% slower") - pct) <= 0.051,
                      "%s: '%s', want %.2f%% slower", w, why, pct);
        } else if (!q->fits) {
            double needs = number_after(why, "needs");
            double peak = (double)q->peak_memory_bytes / GB;
            CHECK_MSG(strstr(why, "GB") && fabs(needs - peak) <= 0.0051, "%s: '%s', needs %.4f GB",
                      w, why, peak);
        }
    }
}

// The alternatives are "fitting alternatives and the faster ones rejected for memory"
// (autodist.h): a plan both slower than the best and too big is no alternative, and would take
// the place of a fitting one.
static void check_unfit_alternatives_faster(loom_autodist_t ad, const char *what) {
    const loom_autodist_plan *best = loom_autodist_best(ad);
    int n = loom_autodist_n_alternatives(ad), bad = 0, first = -1;
    for (int i = 0; i < n; i++) {
        const loom_autodist_plan *q = loom_autodist_alternative(ad, i);
        if (best->fits && !q->fits && q->step_time_s > best->step_time_s && !bad++) first = i;
    }
    CHECK_MSG(bad == 0, "%s: %d of %d alternatives neither fit nor are faster than the best "
              "(%g s), the first #%d (%g s)", what, bad, n, best->step_time_s, first,
              first >= 0 ? loom_autodist_alternative(ad, first)->step_time_s : 0.0);
}

// The message of the last search (loom_last_error() right after it).
static char search_msg[1024];

// Search, check the result, return it (NULL on an error other than "nothing fits").
static loom_autodist_t search(const loom_model_config *m, const loom_autodist_config *ac,
                              loom_status *status, const char *what) {
    loom_autodist_t ad = NULL;
    loom_status st = loom_autodist_search(m, ac, &ad);
    snprintf(search_msg, sizeof search_msg, "%s", st == LOOM_OK ? "" : loom_last_error());
    if (status) *status = st;
    if (st != LOOM_OK && st != LOOM_ERR_NOMEM) {
        CHECK_MSG(ad == NULL, "%s: failed search left a result", what);
        if (getenv("LOOM_TEST_VERBOSE")) fprintf(stderr, "  %s: %s\n", what, search_msg);
        return NULL;
    }
    CHECK_MSG(ad != NULL, "%s: status %s without a result", what, loom_status_name(st));
    if (ad) check_result(m, ad, st, what);
    return ad;
}

// Search expecting success; NULL (and a failed check) otherwise.
static loom_autodist_t search_ok(const loom_model_config *m, const loom_autodist_config *ac,
                                 const char *what) {
    loom_status st;
    loom_autodist_t ad = search(m, ac, &st, what);
    CHECK_MSG(st == LOOM_OK, "%s: status %s: %s", what, loom_status_name(st), search_msg);
    if (st != LOOM_OK) loom_autodist_free(ad), ad = NULL;
    return ad;
}

// ---- the best plan ----------------------------------------------------------------------------

// With every plan kept, the best is the fastest fitting one of all, and the space is covered.
static void best_is_fastest_fitting(void) {
    loom_model_config m = load_model("gpt2-small");
    loom_autodist_config ac = h100(8, 16, 1024, 3);
    ac.keep = 100000;
    loom_autodist_t ad = search_ok(&m, &ac, "gpt2 8 x h100, 3 GB, all kept");
    if (!ad) return;
    const loom_autodist_plan *best = loom_autodist_best(ad);
    int n = loom_autodist_n_alternatives(ad);
    int seen_tp[9] = {0}, seen_pp[9] = {0}, seen_mb[3] = {0}, interleaved = 0;
    for (int i = -1; i < n; i++) {
        const loom_autodist_plan *q = i < 0 ? best : loom_autodist_alternative(ad, i);
        if (q->fits)
            CHECK_MSG(q->step_time_s >= best->step_time_s, "plan %d fits and is faster", i);
        if (q->tp <= 8) seen_tp[q->tp] = 1;
        if (q->pp <= 8) seen_pp[q->pp] = 1;
        if (q->dp == 8 && q->micro_batch <= 2) seen_mb[q->micro_batch] = 1;
        interleaved |= q->schedule == LOOM_SCHEDULE_1F1B_INTERLEAVED;
        CHECK_MSG(q->schedule != LOOM_SCHEDULE_GPIPE, "plan %d: gpipe is searched only when fixed",
                  i);
    }
    // tp 1, 2, 4 split 12 heads; pp 1, 2, 4, 8 split 12 layers; dp 8 takes 1 or 2 sequences.
    CHECK_MSG(seen_tp[1] && seen_tp[2] && seen_tp[4], "tp searched: %d %d %d", seen_tp[1],
              seen_tp[2], seen_tp[4]);
    CHECK_MSG(seen_pp[1] && seen_pp[2] && seen_pp[4] && seen_pp[8], "pp searched: %d %d %d %d",
              seen_pp[1], seen_pp[2], seen_pp[4], seen_pp[8]);
    CHECK_MSG(seen_mb[1] && seen_mb[2], "micro-batches 1 and 2 at dp 8: %d %d", seen_mb[1],
              seen_mb[2]);
    CHECK_MSG(interleaved, "no interleaved plan searched");
    check_unfit_alternatives_faster(ad, "gpt2 8 x h100, 3 GB, all kept");
    loom_autodist_free(ad);
}

// A tighter limit never gives a faster plan; below what plain data parallelism needs, the plan
// must use a memory saver (recomputation, ZeRO, pipeline or tensor parallelism).
static void tighter_limits(void) {
    loom_model_config m = load_model("gpt2-small");
    // The least memory without any saver: tp = pp = 1, no recomputation, no ZeRO.
    loom_autodist_config plain = h100(8, 64, 1024, 60);
    plain.tp = 1, plain.pp = 1, plain.recompute = LOOM_RECOMPUTE_NONE, plain.zero = 0;
    plain.keep = 1000;
    loom_autodist_t ad = search_ok(&m, &plain, "gpt2 without memory savers");
    size_t no_saver = ad ? loom_autodist_min_memory(ad) : 0;
    loom_autodist_free(ad);
    CHECK_MSG(no_saver > 2 * GB, "plain data parallelism needs %zu bytes; the 2 GB case below "
              "assumes more", no_saver);

    const double limits[] = {60, 8, 4, 2, 1.5, 1.2};
    double prev_step = 0;
    const loom_autodist_plan *loose = NULL;
    loom_autodist_t loose_ad = NULL;
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        loom_autodist_config ac = h100(8, 64, 1024, limits[i]);
        char what[64];
        snprintf(what, sizeof what, "gpt2 8 x h100 at %.1f GB", limits[i]);
        loom_autodist_t r = search_ok(&m, &ac, what);
        if (!r) continue;
        const loom_autodist_plan *p = loom_autodist_best(r);
        CHECK_MSG(p->step_time_s >= prev_step, "%s: %g s, faster than %g s under a looser limit",
                  what, p->step_time_s, prev_step);
        prev_step = p->step_time_s;
        if (!loose) {
            loose = p, loose_ad = r;
            continue;
        }
        if ((double)loose->peak_memory_bytes > limits[i] * GB)
            CHECK_MSG(p->peak_memory_bytes < loose->peak_memory_bytes, "%s: the 60 GB plan does "
                      "not fit, yet the plan needs as much", what);
        if (limits[i] == 2) check_unfit_alternatives_faster(r, what);
        if ((double)no_saver > limits[i] * GB)
            CHECK_MSG(p->recompute != LOOM_RECOMPUTE_NONE || p->zero || p->pp > 1 || p->tp > 1,
                      "%s: fits %zu bytes with no memory saver, yet plain data parallelism "
                      "needs %zu", what, p->peak_memory_bytes, no_saver);
        loom_autodist_free(r);
    }
    loom_autodist_free(loose_ad);
}

// A limit nothing meets: LOOM_ERR_NOMEM, the smallest plan kept, its size in the message.
static void nothing_fits(void) {
    loom_model_config m = load_model("gpt2-small");
    loom_autodist_config ac = h100(8, 16, 1024, 0.05);
    loom_status st;
    loom_autodist_t ad = search(&m, &ac, &st, "gpt2 under 0.05 GB");
    CHECK_MSG(st == LOOM_ERR_NOMEM, "status %s", loom_status_name(st));
    const char *msg = search_msg;
    if (!ad) return;
    size_t min_mem = loom_autodist_min_memory(ad);
    const loom_autodist_plan *best = loom_autodist_best(ad);
    CHECK_MSG(strstr(msg, "smallest"), "message: %s", msg);
    double shown = number_after(msg, "smallest");
    CHECK_MSG(fabs(shown - (double)min_mem / GB) <= 0.0051, "message says %.4f GB, min memory is "
              "%.4f GB: %s", shown, (double)min_mem / GB, msg);
    CHECK_MSG(!best->fits && best->peak_memory_bytes == min_mem, "the best after NOMEM is the "
              "smallest: %zu vs %zu", best->peak_memory_bytes, min_mem);
    CHECK_MSG((double)min_mem > 0.05 * GB, "min memory %zu fits the limit", min_mem);
    for (int i = 0; i < loom_autodist_n_alternatives(ad); i++)
        CHECK_MSG(!loom_autodist_alternative(ad, i)->fits, "alternative %d fits", i);
    // Raising the limit to the smallest plan's needs makes a plan fit.
    ac.mem_constraint = (double)min_mem;
    loom_autodist_t ok = search_ok(&m, &ac, "gpt2 at exactly the smallest memory");
    if (ok) CHECK(loom_autodist_best(ok)->peak_memory_bytes <= min_mem);
    loom_autodist_free(ok);
    loom_autodist_free(ad);
}

// ---- fixed settings ---------------------------------------------------------------------------

typedef enum { F_TP, F_PP, F_DP, F_MB, F_RECOMPUTE, F_ZERO, F_SCHEDULE } fixed_kind;

static int plan_value(const loom_autodist_plan *p, fixed_kind k) {
    switch (k) {
    case F_TP: return p->tp;
    case F_PP: return p->pp;
    case F_DP: return p->dp;
    case F_MB: return p->micro_batch;
    case F_RECOMPUTE: return (int)p->recompute;
    case F_ZERO: return p->zero;
    default: return (int)p->schedule;
    }
}

static void fix_one(const loom_model_config *m, fixed_kind k, const char *name, int value) {
    loom_autodist_config ac = h100(8, 16, 1024, 0);
    int *field[] = {&ac.tp, &ac.pp, &ac.dp, &ac.micro_batch, &ac.recompute, &ac.zero, &ac.schedule};
    *field[k] = value;
    char what[96];
    const char *label = k == F_SCHEDULE    ? loom_schedule_name((loom_schedule)value)
                        : k == F_RECOMPUTE ? loom_recompute_mode_name((loom_recompute_mode)value)
                                           : NULL;
    if (label) snprintf(what, sizeof what, "gpt2 8 x h100 with %s fixed at %s", name, label);
    else snprintf(what, sizeof what, "gpt2 8 x h100 with %s fixed at %d", name, value);
    loom_autodist_t ad = search_ok(m, &ac, what);
    if (!ad) return;
    const loom_autodist_plan *p = loom_autodist_best(ad);
    char d[256];
    describe(p, d, sizeof d);
    CHECK_MSG(plan_value(p, k) == value, "%s: best is %s", what, d);
    int n = loom_autodist_n_alternatives(ad), other = 0, first = -1;
    for (int i = 0; i < n; i++)
        if (plan_value(loom_autodist_alternative(ad, i), k) != value && !other++) first = i;
    if (first >= 0) describe(loom_autodist_alternative(ad, first), d, sizeof d);
    CHECK_MSG(other == 0, "%s: %d of %d alternatives differ, the first #%d: %s", what, other, n,
              first, d);
    if (k == F_RECOMPUTE && value == LOOM_RECOMPUTE_FULL)
        for (int s = 0; s < p->n_stages; s++)
            CHECK_MSG(p->stages[s].recompute_layers == p->stages[s].n_layers, "%s: stage %d "
                      "recomputes %d of %d layers", what, s, p->stages[s].recompute_layers,
                      p->stages[s].n_layers);
    loom_autodist_free(ad);
}

static void fixed_settings(void) {
    loom_model_config m = load_model("gpt2-small");
    fix_one(&m, F_TP, "tp", 2);
    fix_one(&m, F_TP, "tp", 4);
    fix_one(&m, F_PP, "pp", 2);
    fix_one(&m, F_PP, "pp", 4);
    fix_one(&m, F_DP, "dp", 4);
    fix_one(&m, F_DP, "dp", 1);
    fix_one(&m, F_MB, "micro_batch", 1);
    fix_one(&m, F_MB, "micro_batch", 2);
    for (int r = 0; r < LOOM_RECOMPUTE_MODE_COUNT; r++) fix_one(&m, F_RECOMPUTE, "recompute", r);
    fix_one(&m, F_ZERO, "zero", 0);
    fix_one(&m, F_ZERO, "zero", 1);
    fix_one(&m, F_SCHEDULE, "schedule", LOOM_SCHEDULE_1F1B);
    fix_one(&m, F_SCHEDULE, "schedule", LOOM_SCHEDULE_GPIPE);
    fix_one(&m, F_SCHEDULE, "schedule", LOOM_SCHEDULE_1F1B_INTERLEAVED);
}

// Fixing every setting of a found plan estimates the same plan again.
static void fixed_plan_reproduces(void) {
    loom_model_config m = load_model("gpt2-small");
    loom_autodist_config ac = h100(8, 32, 1024, 1.5);
    loom_autodist_t ad = search_ok(&m, &ac, "gpt2 at 1.5 GB");
    if (!ad) return;
    const loom_autodist_plan *p = loom_autodist_best(ad);
    loom_autodist_config fx = ac;
    fx.tp = p->tp, fx.pp = p->pp, fx.dp = p->dp, fx.micro_batch = p->micro_batch;
    fx.recompute = (int)p->recompute, fx.zero = p->zero, fx.schedule = (int)p->schedule;
    loom_autodist_t again = search_ok(&m, &fx, "gpt2 with the found plan fixed");
    if (again) {
        const loom_autodist_plan *q = loom_autodist_best(again);
        CHECK_MSG(q->step_time_s == p->step_time_s &&
                  q->peak_memory_bytes == p->peak_memory_bytes && q->chunks == p->chunks &&
                  !strcmp(q->pipeline_layers, p->pipeline_layers),
                  "fixed: %g s, %zu bytes, layers '%s'; searched: %g s, %zu bytes, layers '%s'",
                  q->step_time_s, q->peak_memory_bytes, q->pipeline_layers, p->step_time_s,
                  p->peak_memory_bytes, p->pipeline_layers);
    }
    loom_autodist_free(again);
    loom_autodist_free(ad);
}

// ---- invalid settings -------------------------------------------------------------------------

static void expect_invalid(const loom_model_config *m, const loom_autodist_config *ac,
                           const char *what, const char *word) {
    loom_autodist_t ad = (loom_autodist_t)1;
    loom_status st = loom_autodist_search(m, ac, &ad);
    const char *msg = loom_last_error();
    CHECK_MSG(st == LOOM_ERR_INVALID && ad == NULL && strstr(msg, word), "%s: status %s (want "
              "LOOM_ERR_INVALID), result %s, message (should name '%s'): %s", what,
              loom_status_name(st), ad ? "kept" : "NULL", word, msg);
    if (st == LOOM_OK || st == LOOM_ERR_NOMEM) loom_autodist_free(ad);
}

static void invalid_settings(void) {
    loom_model_config m = load_model("gpt2-small");
    loom_autodist_config base = h100(8, 16, 1024, 0), ac;
#define INVALID(setting, word)                                                              \
    do {                                                                                    \
        ac = base;                                                                          \
        setting;                                                                            \
        expect_invalid(&m, &ac, #setting, word);                                            \
    } while (0)
    INVALID(ac.tp = 3, "tp");
    INVALID((ac.tp = 2, ac.pp = 2, ac.dp = 4), "dp");
    INVALID((ac.tp = 2, ac.pp = 2, ac.dp = 1), "dp");
    INVALID((ac.tp = 4, ac.dp = 4), "dp");
    INVALID((ac.devices = 16, ac.pp = 16), "pp");
    INVALID(ac.seq = 2048, "seq");
    INVALID((ac.dp = 8, ac.micro_batch = 4), "micro_batch");
    INVALID(ac.tp = -1, "tp");
    INVALID(ac.pp = -2, "pp");
    INVALID(ac.dp = -1, "dp");
    INVALID(ac.micro_batch = -1, "micro_batch");
    INVALID(ac.devices = -8, "devices");
    INVALID(ac.devices = 0, "devices");
    INVALID(ac.global_batch = -16, "batch");
    INVALID(ac.seq = -1, "seq");
    INVALID(ac.mem_constraint = -1e9, "mem_constraint");
    INVALID(ac.recompute = -2, "recompute");
    INVALID(ac.recompute = LOOM_RECOMPUTE_MODE_COUNT, "recompute");
    INVALID(ac.zero = -2, "zero");
    INVALID(ac.zero = 2, "zero");
    INVALID(ac.schedule = -2, "schedule");
    INVALID(ac.schedule = LOOM_SCHEDULE_INFER_PIPE, "schedule");
    INVALID(ac.schedule = LOOM_SCHEDULE_COUNT, "schedule");
    INVALID(ac.precision = (loom_precision)7, "precision");
    INVALID(ac.max_partition_degree = -2, "max_partition_degree");
    INVALID(ac.keep = -1, "keep");
    INVALID(ac.threads = -1, "threads");
    INVALID(ac.op_search = 2, "op_search");
#undef INVALID
}

// ---- the rest of the search space -------------------------------------------------------------

static void max_partition_degree(void) {
    loom_model_config m = load_model("gpt2-small");
    loom_autodist_config ac = h100(8, 16, 1024, 1.0);
    ac.max_partition_degree = 2;
    ac.keep = 100000;
    loom_status st;
    loom_autodist_t ad = search(&m, &ac, &st, "gpt2 with max_partition_degree 2");
    if (!ad) return;
    CHECK(loom_autodist_best(ad)->tp <= 2);
    int n = loom_autodist_n_alternatives(ad), bad = 0, two = 0;
    for (int i = 0; i < n; i++) {
        bad += loom_autodist_alternative(ad, i)->tp > 2;
        two += loom_autodist_alternative(ad, i)->tp == 2;
    }
    CHECK_MSG(bad == 0, "%d of %d alternatives have tp > 2", bad, n);
    CHECK_MSG(two > 0 || loom_autodist_best(ad)->tp == 2, "tp 2 itself was not searched");
    loom_autodist_free(ad);
}

// The per-op search only adds candidates: its best is never slower than the table's, and with
// it off every plan keeps the table. GPT-2 small's 12 heads do not split in 8: the table alone
// cannot use tp 8, the search can (replicating or batch-splitting the attention block).
static void per_op_search(void) {
    loom_model_config m = load_model("gpt2-small");
    static const struct {
        int devices, tp, batch;
        double gb;
    } cases[] = {{2, 2, 8, 0}, {8, 0, 16, 0}, {8, 0, 16, 2}, {8, 8, 16, 0}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        loom_autodist_config ac = h100(cases[k].devices, cases[k].batch, 1024, cases[k].gb);
        ac.tp = cases[k].tp;
        ac.keep = 1000;
        char what[128];
        snprintf(what, sizeof what, "gpt2 on %d h100, tp %d, %g GB", cases[k].devices,
                 cases[k].tp, cases[k].gb);
        loom_status st_on, st_off;
        loom_autodist_t on = search(&m, &ac, &st_on, what);
        ac.op_search = 0;
        loom_autodist_t off = search(&m, &ac, &st_off, what);
        if (cases[k].tp == 8) {  // 12 heads in 8 parts: only the per-op search finds a plan
            CHECK_MSG(st_off == LOOM_ERR_SHAPE && strstr(search_msg, "heads"),
                      "%s without the per-op search: %s", what, search_msg);
            CHECK_MSG(st_on == LOOM_OK && on && loom_autodist_best(on)->layout[0] &&
                      strstr(loom_autodist_best(on)->layout, "attn:"),
                      "%s: %s", what, on ? loom_autodist_best(on)->layout : "no result");
        } else if (on && off) {
            const loom_autodist_plan *a = loom_autodist_best(on), *b = loom_autodist_best(off);
            CHECK_MSG(a->step_time_s <= b->step_time_s, "%s: %g s with the per-op search, %g s "
                      "with the table", what, a->step_time_s, b->step_time_s);
            CHECK_MSG(!b->layout[0], "%s: layout '%s' with op_search 0", what, b->layout);
            for (int i = 0; i < loom_autodist_n_alternatives(off); i++)
                CHECK(!loom_autodist_alternative(off, i)->layout[0]);
        }
        if (cases[k].tp == 2 && on)  // gpt2 small on tp 2: its batch split beats Megatron
            CHECK_MSG(loom_autodist_best(on)->layout[0], "%s: kept the table", what);
        loom_autodist_free(on), loom_autodist_free(off);
    }
}

static void pipeline_pivots(void) {
    loom_model_config m = load_model("gpt2-small");
    // Three stages may start only at 0, 4 and 8: exactly four layers each.
    loom_autodist_config ac = h100(3, 6, 1024, 0);
    ac.pp = 3;
    ac.pipeline_pivots = "h.4,h.8";
    loom_autodist_t ad = search_ok(&m, &ac, "gpt2 pp 3 at h.4,h.8");
    if (ad) {
        const loom_autodist_plan *p = loom_autodist_best(ad);
        CHECK_MSG(p->n_stages == 3 && p->stages[0].first_layer == 0 &&
                  p->stages[1].first_layer == 4 && p->stages[2].first_layer == 8,
                  "stages '%s'", p->pipeline_layers);
        CHECK_MSG(!strcmp(p->pipeline_layers, "4,4,4"), "pipeline_layers '%s'", p->pipeline_layers);
    }
    loom_autodist_free(ad);
    // Two stages: the second starts at one of the pivots.
    ac = h100(2, 4, 1024, 0);
    ac.pp = 2;
    ac.pipeline_pivots = "h.4,h.8";
    ad = search_ok(&m, &ac, "gpt2 pp 2 at h.4,h.8");
    if (ad && loom_autodist_best(ad)->n_stages == 2) {
        int start = loom_autodist_best(ad)->stages[1].first_layer;
        CHECK_MSG(start == 4 || start == 8, "the second stage starts at layer %d", start);
    }
    loom_autodist_free(ad);
    // Four stages cannot start at three places.
    ac = h100(4, 8, 1024, 0);
    ac.pp = 4;
    ac.pipeline_pivots = "h.4,h.8";
    ad = NULL;
    loom_status st = loom_autodist_search(&m, &ac, &ad);
    CHECK_MSG(st == LOOM_ERR_INVALID && strstr(loom_last_error(), "pivots"), "pp 4 at two "
              "pivots: %s: %s", loom_status_name(st), loom_last_error());
    loom_autodist_free(ad);
}

// Stage splits: the slowest stage as fast as it can be, and the others even under it, not packed
// from the front: virtual stages holding neither the embeddings nor the head (alike in cost per
// layer) differ by one layer at most, which a split that leaves its slack to the last stages
// breaks (GPT-2 small on 4 stages: 6,4,1,1 rather than 3,4,4,1).
static void balanced_stages(void) {
    static const struct {
        const char *model;
        int pp, devices, batch;
    } cases[] = {{"gpt2-small", 4, 4, 16}, {"llama-2-7b", 8, 8, 32}, {"llama-3-70b", 8, 64, 64}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        loom_model_config m = load_model(cases[c].model);
        loom_autodist_config ac = h100(cases[c].devices, cases[c].batch, 1024, 0);
        ac.pp = cases[c].pp;
        char what[96];
        snprintf(what, sizeof what, "%s pp %d", cases[c].model, cases[c].pp);
        loom_autodist_t ad = search_ok(&m, &ac, what);
        if (!ad) continue;
        const loom_autodist_plan *p = loom_autodist_best(ad);
        int lo = 1 << 30, hi = 0;
        for (int s = 0; s < p->n_stages; s++) {
            const loom_autodist_stage *st = &p->stages[s];
            if (st->embeddings || st->head) continue;
            if (st->n_layers < lo) lo = st->n_layers;
            if (st->n_layers > hi) hi = st->n_layers;
        }
        CHECK_MSG(p->n_stages > 2 && hi - lo <= 1, "%s: stages '%s' (middle ones %d to %d layers)",
                  what, p->pipeline_layers, lo, hi);
        loom_autodist_free(ad);
    }
}

// One fixed shape under a recomputation choice (mode, or modules when `modules` is set).
static loom_autodist_t recompute_shape(const loom_model_config *m, int mode, const char *modules) {
    loom_autodist_config ac = h100(1, 8, 1024, 0);
    ac.tp = 1, ac.pp = 1, ac.dp = 1, ac.micro_batch = 8;
    ac.recompute = mode;
    ac.recompute_modules = modules;
    char what[96];
    snprintf(what, sizeof what, "gpt2 one device, recompute %s",
             modules ? modules : loom_recompute_mode_name(mode));
    return search_ok(m, &ac, what);
}

static void recompute_modules(void) {
    loom_model_config m = load_model("gpt2-small");
    loom_autodist_config ac = h100(8, 16, 1024, 0);
    ac.recompute_modules = "attn";
    loom_autodist_t ad = search_ok(&m, &ac, "gpt2 recompute_modules attn");
    if (ad) {
        const loom_autodist_plan *p = loom_autodist_best(ad);
        CHECK_MSG(p->recompute_spec && !strcmp(p->recompute_spec, "attn"), "recompute spec '%s'",
                  tu_str(p->recompute_spec));
        for (int i = 0; i < loom_autodist_n_alternatives(ad); i++) {
            const char *s = loom_autodist_alternative(ad, i)->recompute_spec;
            CHECK_MSG(s && !strcmp(s, "attn"), "alternative %d: recompute spec '%s'", i, tu_str(s));
        }
    }
    loom_autodist_free(ad);
    // On one shape: recomputing more saves memory and costs time; GPT-2's selective
    // recomputation is its attention modules.
    loom_autodist_t none = recompute_shape(&m, LOOM_RECOMPUTE_NONE, NULL);
    loom_autodist_t sel = recompute_shape(&m, LOOM_RECOMPUTE_SELECTIVE, NULL);
    loom_autodist_t full = recompute_shape(&m, LOOM_RECOMPUTE_FULL, NULL);
    loom_autodist_t attn = recompute_shape(&m, -1, "attn");
    if (none && sel && full && attn) {
        const loom_autodist_plan *a = loom_autodist_best(none), *b = loom_autodist_best(sel),
                                 *c = loom_autodist_best(full), *d = loom_autodist_best(attn);
        CHECK_MSG(a->peak_memory_bytes > b->peak_memory_bytes &&
                  b->peak_memory_bytes > c->peak_memory_bytes, "peaks none %zu, selective %zu, "
                  "full %zu", a->peak_memory_bytes, b->peak_memory_bytes, c->peak_memory_bytes);
        CHECK_MSG(a->step_time_s < b->step_time_s && b->step_time_s < c->step_time_s,
                  "steps none %g, selective %g, full %g", a->step_time_s, b->step_time_s,
                  c->step_time_s);
        CHECK_MSG(d->peak_memory_bytes == b->peak_memory_bytes && d->step_time_s == b->step_time_s,
                  "attn: %zu bytes %g s; selective: %zu bytes %g s", d->peak_memory_bytes,
                  d->step_time_s, b->peak_memory_bytes, b->step_time_s);
    }
    loom_autodist_free(none), loom_autodist_free(sel), loom_autodist_free(full);
    loom_autodist_free(attn);
}

// Constraints that forbid splitting GPT-2's matmuls keep their weights whole on each device.
static void partition_constraints(void) {
    loom_model_config m = load_model("gpt2-small");
    static const char yaml[] = "- name: loom.conv1d\n"
                               "  allowed_partition_dims: []\n"
                               "  replica_allowed: true\n"
                               "- name: loom.linear\n"
                               "  allowed_partition_dims: []\n"
                               "  replica_allowed: true\n";
    loom_constraints_t cons = NULL;
    CHECK_OK(loom_constraints_parse(yaml, strlen(yaml), "no-split.yaml", &cons));
    loom_autodist_config ac = h100(2, 8, 1024, 0);
    ac.tp = 2;
    ac.op_search = 0;  // the family's table: Megatron's splits, which the constraints forbid
    loom_autodist_t free_ad = search_ok(&m, &ac, "gpt2 tp 2");
    ac.op_search = 1;  // whatever the per-op search tries must keep to the constraints too
    ac.constraints = cons;
    loom_autodist_t kept = search_ok(&m, &ac, "gpt2 tp 2 with matmuls unsplit");
    if (free_ad && kept) {
        size_t a = loom_autodist_best(free_ad)->memory[0].bytes.parameters;
        size_t b = loom_autodist_best(kept)->memory[0].bytes.parameters;
        // The four matrices of a layer hold 12 d^2 weights; tp 2 halves them unless kept whole.
        double d = m.n_embd, mats = 12.0 * m.n_layer * d * d * 2;  // bf16 bytes
        CHECK_MSG(b > a, "parameters per device: %zu constrained, %zu free", b, a);
        CHECK_MSG((double)b >= mats, "constrained: %zu bytes of parameters, the matrices alone "
                  "are %.0f", b, mats);
        CHECK_MSG((double)b - (double)a >= 0.5 * mats * 0.999, "constrained %zu - free %zu < half "
                  "the matrices (%.0f)", b, a, 0.5 * mats);
    }
    loom_autodist_free(free_ad), loom_autodist_free(kept);
    loom_constraints_free(cons);
}

// ---- running a plan ---------------------------------------------------------------------------

static void apply_plan(void) {
    loom_model_config m = load_model("gpt2-small");
    loom_autodist_config ac = h100(16, 64, 1024, 0);
    ac.tp = 2, ac.pp = 2;
    loom_autodist_t ad = search_ok(&m, &ac, "gpt2 tp 2 pp 2 on 16");
    if (!ad) return;
    const loom_autodist_plan *p = loom_autodist_best(ad);
    loom_compute_config cc = loom_compute_config_default();
    loom_train_config tc = loom_train_config_default();
    loom_autodist_apply(p, &ac, &cc, &tc);
    CHECK_MSG(cc.plan_ndevices == p->tp * p->pp && cc.plan_ndevices == 4, "plan devices %d",
              cc.plan_ndevices);
    CHECK_MSG(cc.runtime_ndevices == ac.devices, "runtime devices %d", cc.runtime_ndevices);
    CHECK(cc.pipeline_nstages == p->pp);
    CHECK(cc.pipeline_nmicros == p->num_micro_batches);
    CHECK(cc.pipeline_scheduler == p->schedule);
    CHECK(cc.use_zero == (p->zero && p->dp > 1));
    CHECK_MSG(tc.batch == ac.global_batch && tc.seq == ac.seq && tc.grad_accum == 1,
              "batch %d seq %d accum %d", tc.batch, tc.seq, tc.grad_accum);
    if (p->n_stages > 1) {  // the layers list names each virtual stage's layers
        int sum = 0, count = 0;
        for (const char *s = cc.pipeline_layers; s && *s;) {
            sum += atoi(s), count++;
            s += strcspn(s, ",");
            s += *s == ',';
        }
        CHECK_MSG(sum == m.n_layer && count == p->n_stages, "pipeline_layers '%s'",
                  tu_str(cc.pipeline_layers));
    }
    loom_autodist_free(ad);
}

// ---- scale ------------------------------------------------------------------------------------

static void scale(void) {
    static const char *models[] = {"gpt2-small", "llama-2-7b", "llama-3-70b", "llama-1t"};
    static const int devices[] = {1, 8, 64, 1024, 8192};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        loom_model_config m = load_model(models[i]);
        int seq = m.max_seq < 2048 ? m.max_seq : 2048;
        for (size_t j = 0; j < sizeof devices / sizeof devices[0]; j++) {
            int n = devices[j], batch = n > 256 ? n : 256;
            loom_autodist_config ac = h100(n, batch, seq, 0);
            char what[96];
            snprintf(what, sizeof what, "%s on %d x h100, batch %d x %d", models[i], n, batch, seq);
            loom_status st;
            loom_autodist_t ad = search(&m, &ac, &st, what);
            CHECK_MSG(st == LOOM_OK || st == LOOM_ERR_NOMEM, "%s: %s: %s", what,
                      loom_status_name(st), search_msg);
            if (ad && n == 1024 && !strcmp(models[i], "llama-3-70b"))
                printf("%s: searched %lld plans in %.3f s\n", what,
                       (long long)loom_autodist_plans_evaluated(ad),
                       loom_autodist_search_seconds(ad));
            loom_autodist_free(ad);
        }
    }
}

int main(void) {
    best_is_fastest_fitting();
    tighter_limits();
    nothing_fits();
    fixed_settings();
    fixed_plan_reproduces();
    invalid_settings();
    max_partition_degree();
    balanced_stages();
    per_op_search();
    pipeline_pivots();
    recompute_modules();
    partition_constraints();
    apply_plan();
    scale();
    return tu_finish();
}
