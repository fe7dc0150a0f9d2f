// CPU kernel benchmark: OpenBLAS sgemm throughput, a check that sgemm runs single-threaded inside
// an OpenMP parallel region, and the time of each kernel at GPT-2 124M training shapes.
// Usage: bench-kernels [reps]   (OMP_NUM_THREADS sets the thread count)

#include "backend/cpu/kernels.h"

#include <cblas.h>
#include <dirent.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// Attention scratch sized for the longest sequence used here (kernels never allocate).
static loom_cpu_scratch g_scratch;

static void scratch_init(int64_t max_t) {
    g_scratch.threads = omp_get_max_threads();
    g_scratch.per_thread = loom_cpu_attention_scratch_floats(max_t, max_t, 1);
    g_scratch.data = malloc((size_t)(g_scratch.per_thread * g_scratch.threads) * sizeof(float));
}

static int reps = 10;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *rand_buf(int64_t n, float scale) {
    float *x = malloc((size_t)n * sizeof(float));
    uint32_t s = 12345u;
    for (int64_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = scale * ((float)(s >> 8) / 16777216.0f - 0.5f);
    }
    return x;
}

static int thread_count(void) {
    int n = 0;
    DIR *dir = opendir("/proc/self/task");
    if (!dir) return -1;
    for (struct dirent *e; (e = readdir(dir));) n += e->d_name[0] != '.';
    closedir(dir);
    return n;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// Median milliseconds of `reps` runs of BODY after one warm-up run.
#define TIME_MS(result, BODY)                                              \
    do {                                                                   \
        double times_[64];                                                 \
        int n_ = reps < 64 ? reps : 64;                                    \
        BODY;                                                              \
        for (int r_ = 0; r_ < n_; r_++) {                                  \
            double t0_ = now_s();                                          \
            BODY;                                                          \
            times_[r_] = 1e3 * (now_s() - t0_);                            \
        }                                                                  \
        qsort(times_, (size_t)n_, sizeof(double), cmp_double);             \
        (result) = times_[n_ / 2];                                         \
    } while (0)

static double total_ms; // running sum of a modeled training step

static void row(const char *name, double ms, double flops, double count_in_step) {
    printf("  %-44s %9.3f ms", name, ms);
    if (flops > 0) printf("  %7.1f GFLOP/s", flops / ms * 1e-6);
    printf("\n");
    total_ms += ms * count_in_step;
}

static void bench_sgemm(int64_t M, int64_t N, int64_t K) {
    float *a = rand_buf(M * K, 1.0f), *b = rand_buf(K * N, 1.0f), *c = rand_buf(M * N, 1.0f);
    double nn, nt, inside;
    TIME_MS(nn, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)N, (int)K,
                            1.0f, a, (int)K, b, (int)N, 0.0f, c, (int)N));
    TIME_MS(nt, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K,
                            1.0f, a, (int)K, b, (int)K, 0.0f, c, (int)N));
    // One caller inside a parallel region of all threads (the others wait at the barrier).
    int tasks_inside = 0;
    #pragma omp parallel
    {
        #pragma omp master
        {
            TIME_MS(inside, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M,
                                        (int)N, (int)K, 1.0f, a, (int)K, b, (int)N, 0.0f, c,
                                        (int)N));
            tasks_inside = thread_count();
        }
    }
    const double flops = 2.0 * (double)M * (double)N * (double)K;
    printf("  sgemm %lldx%lldx%lld: NN %.2f ms %.1f GFLOP/s, NT %.2f ms %.1f GFLOP/s; inside "
           "omp parallel %.2f ms %.1f GFLOP/s (process threads %d)\n",
           (long long)M, (long long)N, (long long)K, nn, flops / nn * 1e-6, nt,
           flops / nt * 1e-6, inside, flops / inside * 1e-6, tasks_inside);
    free(a); free(b); free(c);
}

// A GPT-2 linear: forward and backward (dinp, dweight, dbias), Conv1D (K, N) weight layout
// unless weight_kn == 0. count: how many of them one training step has.
static void bench_linear(const char *name, int64_t M, int64_t K, int64_t N, int weight_kn,
                         int with_bias, double count) {
    float *inp = rand_buf(M * K, 1.0f), *w = rand_buf(K * N, 0.1f), *bias = rand_buf(N, 1.0f);
    float *out = rand_buf(M * N, 1.0f), *dinp = rand_buf(M * K, 1.0f);
    float *dw = rand_buf(K * N, 1.0f), *db = rand_buf(N, 1.0f);
    const double flops = 2.0 * (double)M * (double)N * (double)K;
    double fwd, bwd, bias_only;
    char label[96];
    TIME_MS(fwd, loom_cpu_linear_forward(out, inp, w, with_bias ? bias : NULL, M, K, N,
                                         weight_kn));
    TIME_MS(bwd, loom_cpu_linear_backward(dinp, dw, with_bias ? db : NULL, out, inp, w, M, K, N,
                                          weight_kn, 0, 1, 1));
    snprintf(label, sizeof label, "linear %s fwd (%lldx%lldx%lld)", name, (long long)M,
             (long long)N, (long long)K);
    row(label, fwd, flops, count);
    snprintf(label, sizeof label, "linear %s bwd", name);
    row(label, bwd, 2 * flops, count);
    if (with_bias) {
        TIME_MS(bias_only, loom_cpu_linear_backward(NULL, NULL, db, out, inp, w, M, K, N,
                                                    weight_kn, 0, 0, 1));
        snprintf(label, sizeof label, "  of which bias grad");
        row(label, bias_only, 0, 0);
    }
    free(inp); free(w); free(bias); free(out); free(dinp); free(dw); free(db);
}

static void bench_attention(int64_t B, int64_t T, int64_t H, int64_t D, double count) {
    const int64_t n = B * T * H * D;
    float *q = rand_buf(n, 1.0f), *k = rand_buf(n, 1.0f), *v = rand_buf(n, 1.0f);
    float *out = rand_buf(n, 1.0f), *lse = rand_buf(B * H * T, 1.0f), *dout = rand_buf(n, 1.0f);
    float *dq = rand_buf(n, 1.0f), *dk = rand_buf(n, 1.0f), *dv = rand_buf(n, 1.0f);
    // Causal: about half of the T^2 scores; forward 2 products, backward 5.
    const double flops = 2.0 * (double)B * (double)H * (double)T * (double)(T + 1) / 2 * (double)D;
    double fwd, bwd;
    char label[96];
    TIME_MS(fwd, loom_cpu_attention_forward(out, lse, q, k, v, B, T, H, H, D, &g_scratch));
    TIME_MS(bwd, loom_cpu_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, B, T, H, H, D,
                                             0, 0, 0, &g_scratch));
    snprintf(label, sizeof label, "attention fwd B=%lld T=%lld H=%lld D=%lld", (long long)B,
             (long long)T, (long long)H, (long long)D);
    row(label, fwd, 2 * flops, count);
    snprintf(label, sizeof label, "attention bwd B=%lld T=%lld", (long long)B, (long long)T);
    row(label, bwd, 5 * flops, count);
    free(q); free(k); free(v); free(out); free(lse); free(dout); free(dq); free(dk); free(dv);
}

int main(int argc, char **argv) {
    scratch_init(1024);
    if (argc > 1) reps = atoi(argv[1]) > 0 ? atoi(argv[1]) : reps;
    const int64_t B = 4, T = 64, M = B * T, C = 768, V = 50257, H = 12, D = 64, L = 12;
    printf("threads: omp %d, openblas %d; %s\n", omp_get_max_threads(),
           openblas_get_num_threads(), openblas_get_config());

    printf("OpenBLAS sgemm\n");
    bench_sgemm(256, 2304, 768);
    bench_sgemm(256, 50304, 768);

    printf("GPT-2 124M kernels, B=%lld T=%lld (M=%lld, C=%lld, V=%lld, %lld heads of %lld); "
           "median of %d\n", (long long)B, (long long)T, (long long)M, (long long)C,
           (long long)V, (long long)H, (long long)D, reps);
    total_ms = 0;
    bench_linear("qkv", M, C, 3 * C, 1, 1, (double)L);
    bench_linear("attn proj", M, C, C, 1, 1, (double)L);
    bench_linear("fc", M, C, 4 * C, 1, 1, (double)L);
    bench_linear("fc proj", M, 4 * C, C, 1, 1, (double)L);
    bench_linear("lm head (tied wte, nk)", M, C, V, 0, 0, 1);
    const double gemm_ms = total_ms;
    bench_attention(B, T, H, D, (double)L);

    float *x = rand_buf(M * 4 * C, 1.0f), *y = rand_buf(M * 4 * C, 1.0f);
    float *dy = rand_buf(M * 4 * C, 1.0f), *dx = rand_buf(M * 4 * C, 1.0f);
    float *w = rand_buf(C, 1.0f), *b = rand_buf(C, 1.0f), *dw = rand_buf(C, 1.0f);
    float *db = rand_buf(C, 1.0f), *mean = rand_buf(M, 1.0f), *rstd = rand_buf(M, 1.0f);
    double ms;
    TIME_MS(ms, loom_cpu_layernorm_forward(y, mean, rstd, x, w, b, M, C, 1e-5f));
    row("layernorm fwd (256x768)", ms, 0, 2.0 * (double)L + 1);
    TIME_MS(ms, loom_cpu_layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, M, C, 1, 1, 1));
    row("layernorm bwd", ms, 0, 2.0 * (double)L + 1);
    TIME_MS(ms, loom_cpu_gelu_forward(y, x, M * 4 * C));
    row("gelu fwd (256x3072)", ms, 0, (double)L);
    TIME_MS(ms, loom_cpu_gelu_backward(dx, dy, x, M * 4 * C, 0));
    row("gelu bwd", ms, 0, (double)L);
    TIME_MS(ms, loom_cpu_add_forward(y, x, dy, M * C));
    row("residual add fwd (256x768)", ms, 0, 2.0 * (double)L);
    TIME_MS(ms, loom_cpu_add_backward(dx, y, dy, M * C, 1, 1));
    row("residual add bwd (both acc)", ms, 0, 2.0 * (double)L);
    TIME_MS(ms, loom_cpu_rmsnorm_forward(y, rstd, x, w, M, C, 1e-5f));
    row("rmsnorm fwd (256x768, not in GPT-2)", ms, 0, 0);
    TIME_MS(ms, loom_cpu_rmsnorm_backward(dx, dw, dy, x, w, rstd, M, C, 1, 1));
    row("rmsnorm bwd", ms, 0, 0);
    TIME_MS(ms, loom_cpu_silu_forward(y, x, M * 4 * C));
    row("silu fwd (256x3072, not in GPT-2)", ms, 0, 0);
    int32_t *pos = malloc((size_t)M * sizeof(int32_t));
    for (int64_t i = 0; i < M; i++) pos[i] = (int32_t)(i % T);
    TIME_MS(ms, loom_cpu_rope_forward(y, x, pos, M, H, D, 10000.0f));
    row("rope fwd (256 x 12x64, not in GPT-2)", ms, 0, 0);
    TIME_MS(ms, loom_cpu_rope_backward(dx, dy, pos, M, H, D, 10000.0f, 1));
    row("rope bwd", ms, 0, 0);

    float *logits = rand_buf(M * V, 4.0f), *dlogits = rand_buf(M * V, 1.0f);
    float *losses = rand_buf(M, 1.0f), *lse = rand_buf(M, 1.0f);
    int32_t *targets = malloc((size_t)M * sizeof(int32_t));
    for (int64_t i = 0; i < M; i++) targets[i] = (int32_t)((i * 7919) % V);
    TIME_MS(ms, loom_cpu_cross_entropy_forward(losses, lse, logits, targets, M, V, -100));
    row("cross-entropy fwd (256x50257)", ms, 0, 1);
    TIME_MS(ms, loom_cpu_cross_entropy_backward(dlogits, logits, lse, targets, M, V, -100,
                                                1.0f / (float)M, 0));
    row("cross-entropy bwd", ms, 0, 1);

    float *wte = rand_buf(V * C, 1.0f), *dwte = rand_buf(V * C, 1.0f);
    TIME_MS(ms, loom_cpu_embedding_forward(y, targets, wte, M, V, C));
    row("embedding fwd (wte)", ms, 0, 2);
    TIME_MS(ms, loom_cpu_embedding_backward(dwte, dy, targets, M, V, C, 1));
    row("embedding bwd acc=1 (wte)", ms, 0, 1);
    TIME_MS(ms, loom_cpu_embedding_backward(dwte, dy, targets, M, V, C, 0));
    row("embedding bwd acc=0 (zeroes 50257x768)", ms, 0, 0);
    free(logits); free(dlogits); free(wte); free(dwte);

    const int64_t P = 124439808; // GPT-2 124M parameter count (tied embeddings)
    float *p = rand_buf(P, 1.0f), *g = rand_buf(P, 1.0f), *m = calloc((size_t)P, sizeof(float));
    float *v2 = calloc((size_t)P, sizeof(float));
    double sumsq = 0;
    TIME_MS(ms, sumsq = loom_cpu_sum_squares(g, P));
    row("sum_squares (124.4M)", ms, 0, 1);
    TIME_MS(ms, loom_cpu_adamw_update(p, g, m, v2, P, 6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, 1.0f));
    row("adamw (124.4M)", ms, 0, 1);
    free(p); free(g); free(m); free(v2);

    const double step_flops = 6.0 * 124e6 * (double)M; // ~6 N tokens
    printf("modeled step (kernels above x their count per step): %.1f ms, of which linear "
           "sgemm+bias %.1f ms; %.1f GFLOP/s on 6*124M*%lld flops (sumsq %.3g)\n",
           total_ms, gemm_ms, step_flops / total_ms * 1e-6, (long long)M, sumsq);

    printf("attention at long context\n");
    total_ms = 0;
    bench_attention(1, 1024, H, D, 1);
    free(x); free(y); free(dy); free(dx); free(w); free(b); free(dw); free(db); free(mean);
    free(rstd); free(pos); free(losses); free(lse); free(targets);
    free(g_scratch.data);
    return 0;
}
