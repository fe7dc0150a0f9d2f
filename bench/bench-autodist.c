// Autodist on this machine: predicted step time and peak memory of plans of two small models
// (GPT-2 and LLaMA shaped) against what the runtime measures for the same plans with the
// `local` communicator; then the plan the search picks for 2 devices against the measured
// fastest of the 2-device plans.
//
//   ./build/bench/bench-autodist [--steps 5] [--rounds 3] [--batch 8] [--seq 64] [--layers 4] [--embd 256]
//                                [--vocab 2048]
//
// Needs the "cpu" device spec (`loom bench devices`; measured quickly when absent) and measures
// each distinct op once (cached in $XDG_CACHE_HOME/loom/ops/cpu.json). Step time: the median of
// `steps` steps after one warm-up, the best of `rounds` rounds; memory: the largest rank's bytes (loom_parallel_memory).

#include "loom/autodist.h"
#include "bench-util.h"
#include "loom/parallel.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int steps = 5, rounds = 3, B = 8, T = 64, n_layer = 4, n_embd = 256, vocab = 2048;

static void die(const char *what) {
    fprintf(stderr, "bench-autodist: %s: %s\n", what, loom_last_error());
    exit(1);
}

// A plan's fixed settings (0 / -1: searched); op_search 0 keeps the family's table.
typedef struct shape {
    int tp, pp, dp, micro_batch;
    int recompute, zero, schedule;
    int op_search;
} shape;

static loom_autodist_config job(int devices, const shape *s) {
    loom_autodist_config ac = loom_autodist_config_default();
    ac.devices = devices;
    ac.device_spec = "cpu";
    ac.global_batch = B;
    ac.seq = T;
    ac.mem_constraint = 8e9;
    if (s) {
        ac.tp = s->tp, ac.pp = s->pp, ac.dp = s->dp, ac.micro_batch = s->micro_batch;
        ac.recompute = s->recompute, ac.zero = s->zero, ac.schedule = s->schedule;
        ac.op_search = s->op_search;
    }
    return ac;
}

// Run `plan` for `steps` steps: median seconds per step and the largest rank's bytes.
static void measure(loom_model_t m, const loom_autodist_plan *plan, const loom_autodist_config *ac,
                    double *seconds, size_t *bytes) {
    loom_compute_config cc = loom_compute_config_default();
    loom_train_config tc = loom_train_config_default();
    loom_autodist_apply(plan, ac, &cc, &tc);
    loom_parallel_t par = NULL;
    if (loom_parallelize(m, &cc, &tc, &par) < 0) die("parallelize");
    int32_t *tokens = malloc((size_t)B * T * sizeof(int32_t));
    int32_t *targets = malloc((size_t)B * T * sizeof(int32_t));
    for (int i = 0; i < B * T; i++) tokens[i] = (i * 7 + 3) % vocab, targets[i] = (i * 5 + 1) % vocab;
    double times[64];
    for (int s = 0; s <= steps; s++) {
        loom_step_stats st;
        if (loom_parallel_step(par, tokens, targets, &st) < 0) die("step");
        if (s > 0) times[s - 1] = st.seconds;
    }
    *seconds = bench_median(times, steps);
    *bytes = 0;
    for (int r = 0; r < loom_parallel_nranks(par); r++) {
        loom_memory_stats g = loom_parallel_memory(par, r);
        size_t total = g.parameters + g.gradients + g.optimizer + g.activations + g.inputs +
                       g.buffers;
        if (total > *bytes) *bytes = total;
    }
    loom_parallel_free(par);
    free(tokens), free(targets);
}

static void describe(const loom_autodist_plan *p, char *buf, size_t cap) {
    snprintf(buf, cap, "tp%d pp%d dp%d b%dx%d%s%s%s%s", p->tp, p->pp, p->dp, p->micro_batch,
             p->num_micro_batches, p->pp > 1 ? " " : "",
             p->pp > 1 ? loom_schedule_name(p->schedule) : "",
             p->recompute ? " rc-" : "", p->recompute ? loom_recompute_mode_name(p->recompute) : "");
    if (p->zero) snprintf(buf + strlen(buf), cap - strlen(buf), " zero");
    if (p->tp > 1)
        snprintf(buf + strlen(buf), cap - strlen(buf), p->layout[0] ? " ops*" : " table");
}

typedef struct row {
    char label[96];
    char layout[512];  // the per-op strategies, when not the family's table
    double predicted_s, measured_s;
    size_t predicted_b, measured_b;
    int devices;
} row;

static row run_plan(loom_model_t m, const loom_model_config *mc, int devices, const shape *s) {
    loom_autodist_config ac = job(devices, s);
    loom_autodist_t ad = NULL;
    if (loom_autodist_search(mc, &ac, &ad) < 0) die("search");
    const loom_autodist_plan *p = loom_autodist_best(ad);
    row r = {.devices = devices, .predicted_s = p->step_time_s,
             .predicted_b = p->peak_memory_bytes};
    describe(p, r.label, sizeof r.label);
    snprintf(r.layout, sizeof r.layout, "%s", p->layout);
    // The best of a few rounds: other work on the machine only ever slows a round down.
    for (int k = 0; k < rounds; k++) {
        double t;
        measure(m, p, &ac, &t, &r.measured_b);
        if (k == 0 || t < r.measured_s) r.measured_s = t;
    }
    loom_autodist_free(ad);
    return r;
}

static double rel(double predicted, double measured) { return predicted / measured - 1; }

int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--steps")) steps = v < 64 ? v : 63;
        else if (!strcmp(argv[i], "--rounds")) rounds = v > 0 ? v : 1;
        else if (!strcmp(argv[i], "--batch")) B = v;
        else if (!strcmp(argv[i], "--seq")) T = v;
        else if (!strcmp(argv[i], "--layers")) n_layer = v;
        else if (!strcmp(argv[i], "--embd")) n_embd = v;
        else if (!strcmp(argv[i], "--vocab")) vocab = v;
        else {
            fprintf(stderr, "bench-autodist: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    enum { NONE = LOOM_RECOMPUTE_NONE, FULL = LOOM_RECOMPUTE_FULL, F1B = LOOM_SCHEDULE_1F1B,
           INTER = LOOM_SCHEDULE_1F1B_INTERLEAVED };
    // tp, pp, dp, micro-batch, recompute, zero, schedule, per-op search.
    static const shape shapes[] = {
        {1, 1, 1, 8, NONE, 0, F1B, 1}, {1, 1, 1, 4, NONE, 0, F1B, 1},
        {1, 1, 1, 8, FULL, 0, F1B, 1}, {1, 1, 2, 4, NONE, 0, F1B, 1},
        {1, 1, 2, 4, NONE, 1, F1B, 1}, {2, 1, 1, 8, NONE, 0, F1B, 0},
        {2, 1, 1, 8, NONE, 0, F1B, 1}, {1, 2, 1, 2, NONE, 0, F1B, 1},
        {1, 2, 1, 1, NONE, 0, F1B, 1}, {1, 2, 1, 2, NONE, 0, INTER, 1},
    };
    double errs_t[64], errs_m[64];
    int n_err = 0;
    printf("%-7s %-26s %4s %12s %12s %7s %11s %11s %7s\n", "model", "plan", "dev", "predicted ms",
           "measured ms", "error", "pred MB", "meas MB", "error");
    for (int f = 0; f < LOOM_FAMILY_COUNT; f++) {
        loom_model_config mc = loom_model_config_default((loom_family)f);
        mc.n_layer = n_layer, mc.n_embd = n_embd, mc.vocab_size = vocab;
        mc.n_head = n_embd / 64, mc.n_kv_head = f == LOOM_FAMILY_LLAMA ? n_embd / 128 : n_embd / 64;
        mc.head_dim = 64;
        mc.n_inner = f == LOOM_FAMILY_LLAMA ? 2 * n_embd + n_embd / 2 : 4 * n_embd;
        mc.max_seq = T > mc.max_seq ? T : mc.max_seq;
        loom_model_t m = NULL;
        if (loom_model_create(&mc, 1, &m) < 0) die("model");
        row fits[16];  // the 2-device plans
        int n_fits = 0;
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
            shape s = shapes[i];
            int devices = s.tp * s.pp * s.dp;
            row r = run_plan(m, &mc, devices, &s);
            printf("%-7s %-26s %4d %12.2f %12.2f %+6.1f%% %11.1f %11.1f %+6.1f%%\n",
                   mc.model_type, r.label, devices, 1e3 * r.predicted_s, 1e3 * r.measured_s,
                   100 * rel(r.predicted_s, r.measured_s), r.predicted_b / 1e6,
                   r.measured_b / 1e6, 100 * rel((double)r.predicted_b, (double)r.measured_b));
            if (r.layout[0]) printf("%-7s   ops*: %s\n", "", r.layout);
            fflush(stdout);
            errs_t[n_err] = fabs(rel(r.predicted_s, r.measured_s));
            errs_m[n_err++] = fabs(rel((double)r.predicted_b, (double)r.measured_b));
            if (devices == 2) fits[n_fits++] = r;
        }
        // The search's own pick for 2 devices, run, against the measured 2-device plans.
        row pick = run_plan(m, &mc, 2, NULL);
        int fastest = 0;
        for (int i = 1; i < n_fits; i++)
            if (fits[i].measured_s < fits[fastest].measured_s) fastest = i;
        printf("%-7s search pick for 2 devices: %s, predicted %.2f ms, measured %.2f ms; "
               "measured fastest of the 2-device plans above: %s, %.2f ms (pick %+.1f%%)\n",
               mc.model_type, pick.label, 1e3 * pick.predicted_s, 1e3 * pick.measured_s,
               fits[fastest].label, 1e3 * fits[fastest].measured_s,
               100 * rel(pick.measured_s, fits[fastest].measured_s));
        if (pick.layout[0]) printf("%-7s   ops*: %s\n", "", pick.layout);
        loom_model_free(m);
    }
    printf("median |error|: step time %.1f%%, peak memory %.1f%% over %d plans\n",
           100 * bench_median(errs_t, n_err), 100 * bench_median(errs_m, n_err), n_err);
    return 0;
}
