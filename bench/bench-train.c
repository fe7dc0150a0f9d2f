// Training-step benchmark: GPT-2 124M (random init) on this machine, against the OpenBLAS SGEMM
// peak measured in the same run on the same threads.
//
//   ./build/bench/bench-train [--batch 4] [--seq 64] [--steps 5] [--threads 0] [--profile]
//
// Reports ms/step (median), tokens/s, achieved GFLOP/s with llm.c's count
// (6 N + 6 L C T) per token, the ratio to SGEMM peak, and, with --profile, the share of each op.

#include "loom/train.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double now(void) { return omp_get_wtime(); }

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// Best-of-3 SGEMM rate on an n x n x n product, the machine's practical matmul peak.
static double sgemm_peak_gflops(int n) {
    float *a = malloc((size_t)n * n * sizeof(float)), *b = malloc((size_t)n * n * sizeof(float));
    float *c = malloc((size_t)n * n * sizeof(float));
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = b[i] = (float)(i % 7) * 0.1f;
    double best = 0;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                    c, n);
        double dt = now() - t0;
        double gf = 2.0 * n * n * (double)n / dt / 1e9;
        if (rep > 0 && gf > best) best = gf;  // rep 0 warms up
    }
    free(a), free(b), free(c);
    return best;
}

int main(int argc, char **argv) {
    int B = 4, T = 64, steps = 5, threads = 0, profile = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc) B = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seq") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--profile")) profile = 1;
        else {
            fprintf(stderr, "usage: bench-train [--batch B] [--seq T] [--steps N] [--threads N] "
                            "[--profile]\n");
            return 2;
        }
    }
    if (B < 1 || T < 1 || T > 1024 || steps < 1) {
        fprintf(stderr, "bench-train: need B >= 1, 1 <= T <= 1024, steps >= 1\n");
        return 2;
    }
    loom_model_config cfg = loom_model_config_default(LOOM_FAMILY_GPT2);
    cfg.vocab_size = 50257;
    cfg.max_seq = 1024;
    cfg.n_layer = 12;
    cfg.n_embd = 768;
    cfg.n_head = cfg.n_kv_head = 12;
    cfg.head_dim = 64;
    cfg.n_inner = 3072;
    loom_model_t m;
    if (loom_model_create(&cfg, 42, &m) < 0) {
        fprintf(stderr, "bench-train: %s\n", loom_last_error());
        return 1;
    }
    loom_train_config tc = loom_train_config_default();
    tc.batch = B;
    tc.seq = T;
    tc.threads = threads;
    tc.profile = profile;
    tc.lr = 1e-4f;
    loom_trainer_t t;
    if (loom_trainer_create(m, &tc, &t) < 0) {
        fprintf(stderr, "bench-train: %s\n", loom_last_error());
        return 1;
    }
    int n_threads = omp_get_max_threads();
    double peak = sgemm_peak_gflops(2048);
    int32_t *tokens = malloc((size_t)B * T * sizeof(int32_t));
    int32_t *targets = malloc((size_t)B * T * sizeof(int32_t));
    uint32_t s = 1;
    for (int i = 0; i < B * T; i++) {
        s = s * 1664525u + 1013904223u;
        tokens[i] = (int32_t)(s >> 8) % cfg.vocab_size;
        targets[i] = (int32_t)((s >> 4) % (uint32_t)cfg.vocab_size);
    }
    loom_step_stats st;
    if (loom_trainer_step(t, tokens, targets, &st) < 0) {  // warm-up: optimizer state, caches
        fprintf(stderr, "bench-train: %s\n", loom_last_error());
        return 1;
    }
    double *ms = malloc((size_t)steps * sizeof(double));
    for (int i = 0; i < steps; i++) {
        loom_trainer_step(t, tokens, targets, &st);
        ms[i] = st.seconds * 1e3;
    }
    qsort(ms, (size_t)steps, sizeof(double), cmp_double);
    double med = ms[steps / 2];
    double n_params = (double)loom_model_n_params(m);
    double flops_per_token = 6.0 * n_params + 6.0 * cfg.n_layer * cfg.n_embd * T;
    double gflops = flops_per_token * B * T / (med / 1e3) / 1e9;
    loom_memory_stats mem = loom_trainer_memory(t);
    printf("GPT-2 124M training step, B=%d T=%d, %d threads, %.1fM parameters\n", B, T,
           n_threads, n_params / 1e6);
    printf("  step (median of %d): %.1f ms   min %.1f ms   max %.1f ms\n", steps, med, ms[0],
           ms[steps - 1]);
    printf("  tokens/s:            %.1f\n", B * T / (med / 1e3));
    printf("  achieved:            %.1f GFLOP/s  (%.1f GFLOP per step)\n", gflops,
           flops_per_token * B * T / 1e9);
    printf("  SGEMM peak:          %.1f GFLOP/s  (OpenBLAS 2048^3, same threads)\n", peak);
    printf("  ratio to peak:       %.1f%%\n", 100 * gflops / peak);
    printf("  planned activations: %.1f MB\n", (double)mem.activations / 1e6);
    if (profile) {
        printf("per-op time over %d steps (+1 warm-up):\n", steps);
        loom_trainer_profile(t, stdout);
    }
    free(ms), free(tokens), free(targets);
    loom_trainer_free(t);
    loom_model_free(m);
    return 0;
}
