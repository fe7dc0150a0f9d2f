// Parallel-training benchmark on the `local` communicator (ranks are threads of this process):
// data parallel on 2 ranks vs 1 rank with the same global batch, the share of the gradient
// all-reduce hidden behind the backward by bucketing, and tensor- vs data-parallel step time.
//
//   ./build/bench/bench-parallel [--steps 4] [--seq 256] [--batch 8]
//
// Model: GPT-2 shaped, 6 layers, 512 wide, 8 heads, vocabulary 50304 (divisible for the
// vocabulary-parallel head), random init.

#include "loom/parallel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct result {
    double ms, tokens_per_s, wait_ms;
} result;

static int steps = 4, T = 256, B = 8;
static int32_t *tokens, *targets;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static result run(loom_model_t m, loom_policy policy, int plan, int runtime, int async) {
    loom_compute_config cc = loom_compute_config_default();
    cc.policy = policy;
    cc.plan_ndevices = plan;
    cc.runtime_ndevices = runtime;
    cc.async_reducer = async;
    cc.bucket_bytes = 4u << 20;
    loom_train_config tc = loom_train_config_default();
    tc.batch = B;
    tc.seq = T;
    tc.lr = 1e-4f;
    loom_parallel_t p;
    result r = {0, 0, 0};
    if (loom_parallelize(m, &cc, &tc, &p) < 0) {
        fprintf(stderr, "bench-parallel: %s\n", loom_last_error());
        exit(1);
    }
    double ms[64], wait[64];
    loom_step_stats s;
    loom_parallel_step(p, tokens, targets, &s);  // warm-up
    for (int i = 0; i < steps; i++) {
        if (loom_parallel_step(p, tokens, targets, &s) < 0) {
            fprintf(stderr, "bench-parallel: %s\n", loom_last_error());
            exit(1);
        }
        ms[i] = s.seconds * 1e3;
        wait[i] = s.comm_wait_s * 1e3;
    }
    qsort(ms, (size_t)steps, sizeof(double), cmp_double);
    qsort(wait, (size_t)steps, sizeof(double), cmp_double);
    r.ms = ms[steps / 2];
    r.wait_ms = wait[steps / 2];
    r.tokens_per_s = (double)B * T / (r.ms / 1e3);
    loom_parallel_free(p);
    return r;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seq") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) B = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench-parallel [--steps N] [--seq T] [--batch B]\n");
            return 2;
        }
    }
    if (steps < 1 || steps > 64 || T < 1 || T > 1024 || B < 2 || B % 2) {
        fprintf(stderr, "bench-parallel: need 1 <= steps <= 64, 1 <= T <= 1024, even B\n");
        return 2;
    }
    loom_model_config cfg = loom_model_config_default(LOOM_FAMILY_GPT2);
    cfg.vocab_size = 50304;
    cfg.max_seq = 1024;
    cfg.n_layer = 6;
    cfg.n_embd = 512;
    cfg.n_head = cfg.n_kv_head = 8;
    cfg.head_dim = 64;
    cfg.n_inner = 2048;
    loom_model_t m;
    if (loom_model_create(&cfg, 7, &m) < 0) {
        fprintf(stderr, "bench-parallel: %s\n", loom_last_error());
        return 1;
    }
    tokens = malloc((size_t)B * T * sizeof(int32_t));
    targets = malloc((size_t)B * T * sizeof(int32_t));
    uint32_t s = 1;
    for (int i = 0; i < B * T; i++) {
        s = s * 1664525u + 1013904223u;
        tokens[i] = (int32_t)((s >> 8) % 50257);
        targets[i] = (int32_t)((s >> 4) % 50257);
    }
    printf("GPT-2 shaped, 6 layers, 512 wide, %.1fM parameters, global batch %d x T=%d, "
           "%d timed steps (median)\n", (double)loom_model_n_params(m) / 1e6, B, T, steps);
    result one = run(m, LOOM_POLICY_DP, 1, 1, 1);
    result dp_sync = run(m, LOOM_POLICY_DP, 1, 2, 0);
    result dp = run(m, LOOM_POLICY_DP, 1, 2, 1);
    result tp = run(m, LOOM_POLICY_TP, 2, 2, 1);
    printf("  %-34s %10s %10s %14s\n", "config", "ms/step", "tokens/s", "grad wait ms");
    printf("  %-34s %10.1f %10.0f %14s\n", "1 rank", one.ms, one.tokens_per_s, "-");
    printf("  %-34s %10.1f %10.0f %14.1f\n", "dp2, one all-reduce after backward", dp_sync.ms,
           dp_sync.tokens_per_s, dp_sync.wait_ms);
    printf("  %-34s %10.1f %10.0f %14.1f\n", "dp2, buckets during backward", dp.ms,
           dp.tokens_per_s, dp.wait_ms);
    printf("  %-34s %10.1f %10.0f %14s\n", "tp2", tp.ms, tp.tokens_per_s, "-");
    printf("dp2 / 1 rank throughput:      %.2fx\n", dp.tokens_per_s / one.tokens_per_s);
    double hidden = dp_sync.wait_ms > 0 ? 1.0 - dp.wait_ms / dp_sync.wait_ms : 0.0;
    printf("gradient all-reduce: %.1f%% of the dp2 step without buckets; hidden by buckets: %.0f%% "
           "(wait %.1f ms with buckets vs %.1f ms without)\n", 100.0 * dp_sync.wait_ms / dp_sync.ms,
           hidden > 0 ? 100.0 * hidden : 0.0, dp.wait_ms, dp_sync.wait_ms);
    printf("tp2 / dp2 step time:          %.2fx\n", tp.ms / dp.ms);
    free(tokens), free(targets);
    loom_model_free(m);
    return 0;
}
