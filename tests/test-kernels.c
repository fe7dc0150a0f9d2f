// CPU kernel tests: each forward against a naive double-precision reference, each backward against
// the reference's analytic gradient and central finite differences of the reference forward,
// acc = 0/1 and NULL-gradient semantics, and bit-identical results with 1 and 2 threads.

#include "backend/cpu/kernels.h"
#include "testutil.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Attention scratch sized for the longest sequence used here (kernels never allocate).
static loom_cpu_scratch g_scratch;

static void scratch_init(int64_t max_t) {
    g_scratch.threads = omp_get_max_threads();
    g_scratch.per_thread = loom_cpu_attention_scratch_floats(max_t, max_t, 1);
    g_scratch.data = malloc((size_t)(g_scratch.per_thread * g_scratch.threads) * sizeof(float));
}

// The kernels' shared vectorized exp (kernels-math.c, internal: not in kernels.h).

enum { FD_SPOTS = 6 };
static const double RTOL_FWD = 1e-5, RTOL_BWD = 1e-4, RTOL_FD = 1e-4;

// ---- random data, buffers ---------------------------------------------------------------------

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng_next(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static int64_t rng_int(int64_t n) { return (int64_t)(rng_next() % (uint64_t)n); }
static float rng_uniform(void) { return (float)((double)(rng_next() >> 11) * 0x1p-53 * 2.0 - 1.0); }

static float *rand_floats(int64_t n, float scale) {
    float *x = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = scale * rng_uniform();
    return x;
}

static float *filled(int64_t n, float value) {
    float *x = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = value;
    return x;
}

static float *copy_floats(const float *x, int64_t n) {
    float *y = malloc((size_t)n * sizeof(float));
    memcpy(y, x, (size_t)n * sizeof(float));
    return y;
}

static double *to_double(const float *x, int64_t n) {
    double *y = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

static double *zeros(int64_t n) { return calloc((size_t)n, sizeof(double)); }

// base + delta, the expected value of an acc = 1 gradient.
static double *plus(const float *base, const double *delta, int64_t n) {
    double *y = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++) y[i] = (double)base[i] + delta[i];
    return y;
}

static double dot(const double *a, const double *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static double mean_abs(const double *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += fabs(x[i]);
    return n ? s / (double)n : 0.0;
}

// ---- checks (one printed line each) -------------------------------------------------------------

static void report(int ok, const char *name, const char *what, double err, double tol) {
    printf("%s %-52s %s %.2e (tol %.0e)\n", ok ? "ok  " : "FAIL", name, what, err, tol);
    CHECK_MSG(ok, "%s: %s %.3g > %.3g", name, what, err, tol);
}

// Elementwise relative error against a double reference: |got - want| / (|want| + mean|want|),
// the mean term guarding entries that cancel to ~0.
static void expect_close(const char *name, const float *got, const double *want, int64_t n,
                         double rtol) {
    const double floor_ = mean_abs(want, n) + 1e-30;
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]) / (fabs(want[i]) + floor_);
        if (!(err <= worst)) worst = err; // NaN-sticky
    }
    report(worst <= rtol, name, "rel err", worst, rtol);
}

static void expect_identical(const char *name, const float *a, const float *b, int64_t n) {
    int ok = memcmp(a, b, (size_t)n * sizeof(float)) == 0;
    report(ok, name, "bit-identical, diff", ok ? 0.0 : 1.0, 0.0);
}

// A naive double forward over inputs held in `op`: out (n_out).
typedef void (*ref_forward_fn)(const void *op, double *out);

// Central finite differences of L = sum(dout * forward(op)) with respect to a few elements of x
// (an input array inside op, perturbed in place), against the kernel's gradient `grad`.
// grad_ref (the analytic reference) sets the error scale.
static void expect_fd(const char *name, ref_forward_fn forward, const void *op, int64_t n_out,
                      const double *dout, double *x, int64_t n_x, const float *grad,
                      const double *grad_ref) {
    double *out = malloc((size_t)n_out * sizeof(double));
    const double floor_ = mean_abs(grad_ref, n_x) + 1e-30;
    double worst = 0;
    for (int spot = 0; spot < FD_SPOTS; spot++) {
        const int64_t i = rng_int(n_x);
        const double x0 = x[i], h = 1e-4 * fmax(1.0, fabs(x0));
        x[i] = x0 + h;
        forward(op, out);
        const double up = dot(out, dout, n_out);
        x[i] = x0 - h;
        forward(op, out);
        const double down = dot(out, dout, n_out);
        x[i] = x0;
        const double fd = (up - down) / (2 * h);
        double err = fabs((double)grad[i] - fd) / (fabs(fd) + floor_);
        if (!(err <= worst)) worst = err;
    }
    free(out);
    report(worst <= RTOL_FD, name, "fd err ", worst, RTOL_FD);
}

// ---- shared exp ---------------------------------------------------------------------------------

static void test_exp(void) {
    const int64_t n = 1 << 20;
    float *x = malloc((size_t)n * sizeof(float)), *y = filled(n, NAN);
    for (int64_t i = 0; i < n; i++) x[i] = -87.3f + 176.0f * (float)i / (float)n;
    loom_cpu__exp_affine(y, x, 1.0f, 0.0f, n);
    double worst = 0, sum = 0;
    for (int64_t i = 0; i < n; i++) {
        const double e = exp((double)x[i]);
        sum += e;
        const double err = fabs((double)y[i] - e) / e;
        if (!(err <= worst)) worst = err;
    }
    report(worst <= 1.2e-7, "exp helper over [-87.3, 88.7], ~1 ulp", "rel err", worst, 1.2e-7);
    // Affine argument and the returned sum.
    const double got_sum = loom_cpu__exp_affine(NULL, x, 0.5f, -1.0f, n);
    double want_sum = 0;
    for (int64_t i = 0; i < n; i++) want_sum += exp(fma(0.5, (double)x[i], -1.0));
    report(fabs(got_sum - want_sum) <= 1e-6 * want_sum, "exp helper affine sum", "rel err",
           fabs(got_sum - want_sum) / want_sum, 1e-6);
    const float special[] = { -INFINITY, INFINITY, NAN, -100.0f, 89.0f, 88.72f, 0.0f };
    float e[7];
    loom_cpu__exp_affine(e, special, 1.0f, 0.0f, 7);
    const int ok = e[0] == 0.0f && e[1] == INFINITY && isnan(e[2]) && e[3] == 0.0f &&
                   e[4] == INFINITY && fabs(e[5] / exp(88.72f) - 1.0) < 2e-7 && e[6] == 1.0f;
    report(ok, "exp helper -inf, inf, nan, underflow, overflow, top", "mismatch", !ok, 0.0);
    free(x); free(y);
}

// ---- linear -------------------------------------------------------------------------------------

typedef struct {
    const double *inp, *weight, *bias; // (M, K), (N, K) or (K, N), (N) or NULL
    int64_t M, K, N;
    int weight_kn;
} linear_op;

static double linear_w(const linear_op *op, int64_t n, int64_t k) {
    return op->weight_kn ? op->weight[k * op->N + n] : op->weight[n * op->K + k];
}

static void ref_linear_forward(const void *opv, double *out) {
    const linear_op *op = opv;
    for (int64_t m = 0; m < op->M; m++)
        for (int64_t n = 0; n < op->N; n++) {
            double s = op->bias ? op->bias[n] : 0.0;
            for (int64_t k = 0; k < op->K; k++) s += op->inp[m * op->K + k] * linear_w(op, n, k);
            out[m * op->N + n] = s;
        }
}

static void ref_linear_backward(const linear_op *op, const double *dout, double *dinp,
                                double *dweight, double *dbias) {
    const int64_t M = op->M, K = op->K, N = op->N;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            const double g = dout[m * N + n];
            dbias[n] += g;
            for (int64_t k = 0; k < K; k++) {
                dinp[m * K + k] += g * linear_w(op, n, k);
                dweight[op->weight_kn ? k * N + n : n * K + k] += g * op->inp[m * K + k];
            }
        }
}

static void test_linear_case(int64_t M, int64_t K, int64_t N, int weight_kn, int with_bias) {
    char prefix[96], name[160];
    snprintf(prefix, sizeof prefix, "linear %s M=%lld K=%lld N=%lld bias=%d",
             weight_kn ? "kn" : "nk", (long long)M, (long long)K, (long long)N, with_bias);
    float *inp = rand_floats(M * K, 1.0f), *weight = rand_floats(N * K, 0.5f);
    float *bias = with_bias ? rand_floats(N, 1.0f) : NULL, *dout = rand_floats(M * N, 1.0f);
    double *inp_d = to_double(inp, M * K), *weight_d = to_double(weight, N * K);
    double *bias_d = with_bias ? to_double(bias, N) : NULL, *dout_d = to_double(dout, M * N);
    linear_op op = { inp_d, weight_d, bias_d, M, K, N, weight_kn };

    float *out = filled(M * N, NAN);
    double *out_ref = zeros(M * N);
    loom_cpu_linear_forward(out, inp, weight, bias, M, K, N, weight_kn);
    ref_linear_forward(&op, out_ref);
    snprintf(name, sizeof name, "%s fwd", prefix);
    expect_close(name, out, out_ref, M * N, RTOL_FWD);

    double *dinp_ref = zeros(M * K), *dweight_ref = zeros(N * K), *dbias_ref = zeros(N);
    ref_linear_backward(&op, dout_d, dinp_ref, dweight_ref, dbias_ref);
    float *dinp = filled(M * K, NAN), *dweight = filled(N * K, NAN), *dbias = filled(N, NAN);
    loom_cpu_linear_backward(dinp, dweight, dbias, dout, inp, weight, M, K, N, weight_kn, 0, 0, 0);
    snprintf(name, sizeof name, "%s bwd dinp", prefix);
    expect_close(name, dinp, dinp_ref, M * K, RTOL_BWD);
    snprintf(name, sizeof name, "%s bwd dweight", prefix);
    expect_close(name, dweight, dweight_ref, N * K, RTOL_BWD);
    snprintf(name, sizeof name, "%s bwd dbias", prefix);
    expect_close(name, dbias, dbias_ref, N, RTOL_BWD);
    snprintf(name, sizeof name, "%s bwd fd dinp", prefix);
    expect_fd(name, ref_linear_forward, &op, M * N, dout_d, inp_d, M * K, dinp, dinp_ref);
    snprintf(name, sizeof name, "%s bwd fd dweight", prefix);
    expect_fd(name, ref_linear_forward, &op, M * N, dout_d, weight_d, N * K, dweight,
              dweight_ref);
    snprintf(name, sizeof name, "%s bwd fd dbias", prefix);
    if (with_bias)
        expect_fd(name, ref_linear_forward, &op, M * N, dout_d, bias_d, N, dbias, dbias_ref);

    // acc = 1 adds into existing gradients.
    float *base_i = rand_floats(M * K, 1.0f), *base_w = rand_floats(N * K, 1.0f);
    float *base_b = rand_floats(N, 1.0f);
    float *acc_i = copy_floats(base_i, M * K), *acc_w = copy_floats(base_w, N * K);
    float *acc_b = copy_floats(base_b, N);
    loom_cpu_linear_backward(acc_i, acc_w, acc_b, dout, inp, weight, M, K, N, weight_kn, 1, 1, 1);
    double *want_i = plus(base_i, dinp_ref, M * K), *want_w = plus(base_w, dweight_ref, N * K);
    double *want_b = plus(base_b, dbias_ref, N);
    snprintf(name, sizeof name, "%s bwd acc=1 dinp/dweight/dbias", prefix);
    expect_close(name, acc_i, want_i, M * K, RTOL_BWD);
    expect_close(name, acc_w, want_w, N * K, RTOL_BWD);
    expect_close(name, acc_b, want_b, N, RTOL_BWD);

    // NULL gradients are skipped; mixed acc flags.
    float *only_w = copy_floats(base_w, N * K);
    loom_cpu_linear_backward(NULL, only_w, NULL, dout, inp, weight, M, K, N, weight_kn, 0, 1, 0);
    snprintf(name, sizeof name, "%s bwd NULL dinp/dbias", prefix);
    expect_close(name, only_w, want_w, N * K, RTOL_BWD);

    free(inp); free(weight); free(bias); free(dout); free(inp_d); free(weight_d); free(bias_d);
    free(dout_d); free(out); free(out_ref); free(dinp_ref); free(dweight_ref); free(dbias_ref);
    free(dinp); free(dweight); free(dbias); free(base_i); free(base_w); free(base_b);
    free(acc_i); free(acc_w); free(acc_b); free(want_i); free(want_w); free(want_b); free(only_w);
}

static void test_linear(void) {
    test_linear_case(13, 19, 23, 0, 1);
    test_linear_case(13, 19, 23, 1, 1);
    test_linear_case(7, 9, 5, 0, 0);
    test_linear_case(67, 33, 520, 1, 1); // large enough for the threaded bias paths
}

// ---- batched matmul -----------------------------------------------------------------------------

typedef struct {
    const double *a, *bm; // (Bt, M, K), (Bt, K, N)
    int64_t Bt, M, K, N;
} matmul_op;

static void ref_matmul_forward(const void *opv, double *out) {
    const matmul_op *op = opv;
    const int64_t M = op->M, K = op->K, N = op->N;
    for (int64_t b = 0; b < op->Bt; b++)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += op->a[(b * M + m) * K + k] * op->bm[(b * K + k) * N + n];
                out[(b * M + m) * N + n] = s;
            }
}

static void test_matmul_case(int64_t Bt, int64_t M, int64_t K, int64_t N) {
    char name[128];
    float *a = rand_floats(Bt * M * K, 1.0f), *bm = rand_floats(Bt * K * N, 1.0f);
    float *dout = rand_floats(Bt * M * N, 1.0f);
    double *a_d = to_double(a, Bt * M * K), *bm_d = to_double(bm, Bt * K * N);
    double *dout_d = to_double(dout, Bt * M * N);
    matmul_op op = { a_d, bm_d, Bt, M, K, N };
    float *out = filled(Bt * M * N, NAN);
    double *out_ref = zeros(Bt * M * N);
    loom_cpu_matmul_forward(out, a, bm, Bt, M, K, N);
    ref_matmul_forward(&op, out_ref);
    snprintf(name, sizeof name, "matmul fwd Bt=%lld M=%lld K=%lld N=%lld", (long long)Bt,
             (long long)M, (long long)K, (long long)N);
    expect_close(name, out, out_ref, Bt * M * N, RTOL_FWD);

    double *da_ref = zeros(Bt * M * K), *dbm_ref = zeros(Bt * K * N);
    for (int64_t b = 0; b < Bt; b++)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                const double g = dout_d[(b * M + m) * N + n];
                for (int64_t k = 0; k < K; k++) {
                    da_ref[(b * M + m) * K + k] += g * bm_d[(b * K + k) * N + n];
                    dbm_ref[(b * K + k) * N + n] += g * a_d[(b * M + m) * K + k];
                }
            }
    float *da = filled(Bt * M * K, NAN), *dbm = filled(Bt * K * N, NAN);
    loom_cpu_matmul_backward(da, dbm, dout, a, bm, Bt, M, K, N, 0, 0);
    snprintf(name, sizeof name, "matmul bwd Bt=%lld M=%lld K=%lld N=%lld da/dbm", (long long)Bt,
             (long long)M, (long long)K, (long long)N);
    expect_close(name, da, da_ref, Bt * M * K, RTOL_BWD);
    expect_close(name, dbm, dbm_ref, Bt * K * N, RTOL_BWD);
    expect_fd("matmul bwd fd da", ref_matmul_forward, &op, Bt * M * N, dout_d, a_d, Bt * M * K,
              da, da_ref);
    expect_fd("matmul bwd fd dbm", ref_matmul_forward, &op, Bt * M * N, dout_d, bm_d, Bt * K * N,
              dbm, dbm_ref);
    float *base = rand_floats(Bt * K * N, 1.0f), *acc = copy_floats(base, Bt * K * N);
    double *want = plus(base, dbm_ref, Bt * K * N);
    loom_cpu_matmul_backward(NULL, acc, dout, a, bm, Bt, M, K, N, 0, 1);
    expect_close("matmul bwd acc=1 dbm, NULL da", acc, want, Bt * K * N, RTOL_BWD);
    free(a); free(bm); free(dout); free(a_d); free(bm_d); free(dout_d); free(out); free(out_ref);
    free(da_ref); free(dbm_ref); free(da); free(dbm); free(base); free(acc); free(want);
}

static void test_matmul(void) {
    test_matmul_case(3, 5, 7, 9);
    test_matmul_case(3, 128, 128, 129); // large products: run one after another, all threads each
}

// ---- embedding ----------------------------------------------------------------------------------

static void test_embedding(void) {
    const int64_t N = 37, V = 11, C = 70;
    int32_t idx[37];
    for (int64_t n = 0; n < N; n++) idx[n] = (int32_t)rng_int(V);
    idx[1] = idx[0]; // repeated rows
    float *weight = rand_floats(V * C, 1.0f), *dout = rand_floats(N * C, 1.0f);
    float *out = filled(N * C, NAN);
    loom_cpu_embedding_forward(out, idx, weight, N, V, C);
    double *out_ref = zeros(N * C);
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) out_ref[n * C + c] = weight[idx[n] * C + c];
    expect_close("embedding fwd", out, out_ref, N * C, 0.0);

    double *dweight_ref = zeros(V * C);
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) dweight_ref[idx[n] * C + c] += dout[n * C + c];
    float *dweight = filled(V * C, NAN);
    loom_cpu_embedding_backward(dweight, dout, idx, N, V, C, 0);
    expect_close("embedding bwd acc=0", dweight, dweight_ref, V * C, RTOL_BWD);
    float *base = rand_floats(V * C, 1.0f), *acc = copy_floats(base, V * C);
    double *want = plus(base, dweight_ref, V * C);
    loom_cpu_embedding_backward(acc, dout, idx, N, V, C, 1);
    expect_close("embedding bwd acc=1", acc, want, V * C, RTOL_BWD);
    free(weight); free(dout); free(out); free(out_ref); free(dweight_ref); free(dweight);
    free(base); free(acc); free(want);
}

// ---- elementwise --------------------------------------------------------------------------------

static void test_add_mul(int64_t n) {
    char name[96];
    float *a = rand_floats(n, 2.0f), *b = rand_floats(n, 2.0f), *dout = rand_floats(n, 1.0f);
    float *out = filled(n, NAN);
    double *want = zeros(n);

    loom_cpu_add_forward(out, a, b, n);
    for (int64_t i = 0; i < n; i++) want[i] = (double)a[i] + b[i];
    snprintf(name, sizeof name, "add fwd n=%lld", (long long)n);
    expect_close(name, out, want, n, RTOL_FWD);
    loom_cpu_mul_forward(out, a, b, n);
    for (int64_t i = 0; i < n; i++) want[i] = (double)a[i] * b[i];
    snprintf(name, sizeof name, "mul fwd n=%lld", (long long)n);
    expect_close(name, out, want, n, RTOL_FWD);

    float *da = filled(n, NAN), *db = rand_floats(n, 1.0f), *db_base = copy_floats(db, n);
    loom_cpu_add_backward(da, db, dout, n, 0, 1);
    double *dout_d = to_double(dout, n), *want_db = plus(db_base, dout_d, n);
    snprintf(name, sizeof name, "add bwd n=%lld da acc=0, db acc=1", (long long)n);
    expect_close(name, da, dout_d, n, RTOL_BWD);
    expect_close(name, db, want_db, n, RTOL_BWD);

    double *da_ref = zeros(n), *db_ref = zeros(n);
    for (int64_t i = 0; i < n; i++) {
        da_ref[i] = (double)dout[i] * b[i];
        db_ref[i] = (double)dout[i] * a[i];
    }
    memcpy(db, db_base, (size_t)n * sizeof(float));
    loom_cpu_mul_backward(da, db, dout, a, b, n, 0, 1);
    double *want_mul_db = plus(db_base, db_ref, n);
    snprintf(name, sizeof name, "mul bwd n=%lld da acc=0, db acc=1", (long long)n);
    expect_close(name, da, da_ref, n, RTOL_BWD);
    expect_close(name, db, want_mul_db, n, RTOL_BWD);
    loom_cpu_mul_backward(NULL, da, dout, a, b, n, 0, 0);
    expect_close("mul bwd NULL da", da, db_ref, n, RTOL_BWD);
    // In place: the gradient overwrites dout.
    float *inplace = copy_floats(dout, n);
    loom_cpu_mul_backward(inplace, NULL, inplace, a, b, n, 0, 0);
    expect_close("mul bwd da aliasing dout", inplace, da_ref, n, RTOL_BWD);

    free(a); free(b); free(dout); free(out); free(want); free(da); free(db); free(db_base);
    free(dout_d); free(want_db); free(da_ref); free(db_ref); free(want_mul_db); free(inplace);
}

typedef struct {
    const double *x;
    int64_t n;
    int silu;
} activation_op;

static const double SQRT_2_OVER_PI = 0.79788456080286535588;

static double ref_gelu(double x) {
    return 0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)));
}
static double ref_gelu_grad(double x) {
    const double k = SQRT_2_OVER_PI, t = tanh(k * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
}
static double ref_silu(double x) { return x / (1.0 + exp(-x)); }
static double ref_silu_grad(double x) {
    const double s = 1.0 / (1.0 + exp(-x));
    return s + x * s * (1.0 - s);
}

static void ref_activation_forward(const void *opv, double *out) {
    const activation_op *op = opv;
    for (int64_t i = 0; i < op->n; i++) out[i] = op->silu ? ref_silu(op->x[i]) : ref_gelu(op->x[i]);
}

static void test_activation(int silu, int64_t n) {
    char name[96];
    const char *tag = silu ? "silu" : "gelu";
    float *x = rand_floats(n, 6.0f), *dout = rand_floats(n, 1.0f);
    const float extremes[] = { 0.0f, -0.0f, 30.0f, -30.0f, 100.0f, -100.0f, 1e-20f, -9.5f, 9.5f };
    for (size_t i = 0; i < sizeof extremes / sizeof extremes[0] && (int64_t)i < n; i++)
        x[i] = extremes[i];
    double *x_d = to_double(x, n), *dout_d = to_double(dout, n);
    activation_op op = { x_d, n, silu };
    float *out = filled(n, NAN);
    double *out_ref = zeros(n), *grad_ref = zeros(n);
    ref_activation_forward(&op, out_ref);
    for (int64_t i = 0; i < n; i++)
        grad_ref[i] = dout_d[i] * (silu ? ref_silu_grad(x_d[i]) : ref_gelu_grad(x_d[i]));
    if (silu) loom_cpu_silu_forward(out, x, n);
    else      loom_cpu_gelu_forward(out, x, n);
    snprintf(name, sizeof name, "%s fwd n=%lld", tag, (long long)n);
    expect_close(name, out, out_ref, n, RTOL_FWD);

    float *dinp = filled(n, NAN);
    if (silu) loom_cpu_silu_backward(dinp, dout, x, n, 0);
    else      loom_cpu_gelu_backward(dinp, dout, x, n, 0);
    snprintf(name, sizeof name, "%s bwd n=%lld", tag, (long long)n);
    expect_close(name, dinp, grad_ref, n, RTOL_BWD);
    expect_fd(name, ref_activation_forward, &op, n, dout_d, x_d, n, dinp, grad_ref);
    float *base = rand_floats(n, 1.0f), *acc = copy_floats(base, n);
    double *want = plus(base, grad_ref, n);
    if (silu) loom_cpu_silu_backward(acc, dout, x, n, 1);
    else      loom_cpu_gelu_backward(acc, dout, x, n, 1);
    snprintf(name, sizeof name, "%s bwd acc=1", tag);
    expect_close(name, acc, want, n, RTOL_BWD);
    free(x); free(dout); free(x_d); free(dout_d); free(out); free(out_ref); free(grad_ref);
    free(dinp); free(base); free(acc); free(want);
}

// ---- normalization ------------------------------------------------------------------------------

typedef struct {
    const double *x, *weight, *bias; // bias NULL: RMSNorm
    int64_t N, C;
    double eps;
} norm_op;

// out (N, C); mean, rstd (N) if not NULL.
static void ref_norm(const norm_op *op, double *out, double *mean, double *rstd) {
    for (int64_t n = 0; n < op->N; n++) {
        const double *x = op->x + n * op->C;
        double mu = 0, ms = 0;
        if (op->bias) {
            for (int64_t c = 0; c < op->C; c++) mu += x[c];
            mu /= (double)op->C;
        }
        for (int64_t c = 0; c < op->C; c++) ms += (x[c] - mu) * (x[c] - mu);
        const double r = 1.0 / sqrt(ms / (double)op->C + op->eps);
        for (int64_t c = 0; c < op->C; c++)
            out[n * op->C + c] = (x[c] - mu) * r * op->weight[c] + (op->bias ? op->bias[c] : 0.0);
        if (mean) mean[n] = mu;
        if (rstd) rstd[n] = r;
    }
}

static void ref_norm_forward(const void *op, double *out) { ref_norm(op, out, NULL, NULL); }

static void ref_norm_backward(const norm_op *op, const double *dout, double *dx, double *dw,
                              double *db) {
    const int64_t C = op->C;
    double *mean = zeros(op->N), *rstd = zeros(op->N), *out = zeros(op->N * C);
    ref_norm(op, out, mean, rstd);
    for (int64_t n = 0; n < op->N; n++) {
        const double *x = op->x + n * C, *dy = dout + n * C;
        double mean_g = 0, mean_gx = 0;
        for (int64_t c = 0; c < C; c++) {
            const double xhat = (x[c] - mean[n]) * rstd[n], g = dy[c] * op->weight[c];
            mean_g += g / (double)C;
            mean_gx += g * xhat / (double)C;
            dw[c] += dy[c] * xhat;
            db[c] += dy[c];
        }
        if (!op->bias) mean_g = 0;
        for (int64_t c = 0; c < C; c++) {
            const double xhat = (x[c] - mean[n]) * rstd[n];
            dx[n * C + c] = rstd[n] * (dy[c] * op->weight[c] - mean_g - xhat * mean_gx);
        }
    }
    free(mean); free(rstd); free(out);
}

static void test_norm(int rms, int64_t N, int64_t C) {
    char name[96];
    const char *tag = rms ? "rmsnorm" : "layernorm";
    const float eps = 1e-5f;
    float *x = rand_floats(N * C, 2.0f), *w = rand_floats(C, 1.0f), *b = rand_floats(C, 1.0f);
    for (int64_t i = 0; i < N * C; i++) x[i] += 0.5f; // nonzero mean
    float *dout = rand_floats(N * C, 1.0f);
    double *x_d = to_double(x, N * C), *w_d = to_double(w, C), *b_d = rms ? NULL : to_double(b, C);
    double *dout_d = to_double(dout, N * C);
    norm_op op = { x_d, w_d, b_d, N, C, eps };
    double *out_ref = zeros(N * C), *mean_ref = zeros(N), *rstd_ref = zeros(N);
    ref_norm(&op, out_ref, mean_ref, rstd_ref);
    float *out = filled(N * C, NAN), *mean = filled(N, NAN), *rstd = filled(N, NAN);
    if (rms) loom_cpu_rmsnorm_forward(out, rstd, x, w, N, C, eps);
    else     loom_cpu_layernorm_forward(out, mean, rstd, x, w, b, N, C, eps);
    snprintf(name, sizeof name, "%s fwd N=%lld C=%lld out", tag, (long long)N, (long long)C);
    expect_close(name, out, out_ref, N * C, RTOL_FWD);
    snprintf(name, sizeof name, "%s fwd rstd", tag);
    expect_close(name, rstd, rstd_ref, N, RTOL_FWD);
    if (!rms) expect_close("layernorm fwd mean", mean, mean_ref, N, RTOL_FWD);

    double *dx_ref = zeros(N * C), *dw_ref = zeros(C), *db_ref = zeros(C);
    ref_norm_backward(&op, dout_d, dx_ref, dw_ref, db_ref);
    float *dx = filled(N * C, NAN), *dw = filled(C, NAN), *db = filled(C, NAN);
    if (rms) loom_cpu_rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C, 0, 0);
    else     loom_cpu_layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C, 0, 0, 0);
    snprintf(name, sizeof name, "%s bwd dinp/dweight%s", tag, rms ? "" : "/dbias");
    expect_close(name, dx, dx_ref, N * C, RTOL_BWD);
    expect_close(name, dw, dw_ref, C, RTOL_BWD);
    if (!rms) expect_close(name, db, db_ref, C, RTOL_BWD);
    snprintf(name, sizeof name, "%s bwd fd dinp", tag);
    expect_fd(name, ref_norm_forward, &op, N * C, dout_d, x_d, N * C, dx, dx_ref);
    snprintf(name, sizeof name, "%s bwd fd dweight", tag);
    expect_fd(name, ref_norm_forward, &op, N * C, dout_d, w_d, C, dw, dw_ref);
    if (!rms) expect_fd("layernorm bwd fd dbias", ref_norm_forward, &op, N * C, dout_d, b_d, C, db,
                        db_ref);

    // acc = 1 on dinp and dweight, NULL dbias.
    float *base_x = rand_floats(N * C, 1.0f), *base_w = rand_floats(C, 1.0f);
    float *acc_x = copy_floats(base_x, N * C), *acc_w = copy_floats(base_w, C);
    double *want_x = plus(base_x, dx_ref, N * C), *want_w = plus(base_w, dw_ref, C);
    if (rms) loom_cpu_rmsnorm_backward(acc_x, acc_w, dout, x, w, rstd, N, C, 1, 1);
    else     loom_cpu_layernorm_backward(acc_x, acc_w, NULL, dout, x, w, mean, rstd, N, C, 1, 1, 0);
    snprintf(name, sizeof name, "%s bwd acc=1 dinp/dweight", tag);
    expect_close(name, acc_x, want_x, N * C, RTOL_BWD);
    expect_close(name, acc_w, want_w, C, RTOL_BWD);
    // NULL dinp: parameter gradients alone.
    if (rms) loom_cpu_rmsnorm_backward(NULL, dw, dout, x, w, rstd, N, C, 0, 0);
    else     loom_cpu_layernorm_backward(NULL, dw, db, dout, x, w, mean, rstd, N, C, 0, 0, 0);
    snprintf(name, sizeof name, "%s bwd NULL dinp", tag);
    expect_close(name, dw, dw_ref, C, RTOL_BWD);

    free(x); free(w); free(b); free(dout); free(x_d); free(w_d); free(b_d); free(dout_d);
    free(out_ref); free(mean_ref); free(rstd_ref); free(out); free(mean); free(rstd);
    free(dx_ref); free(dw_ref); free(db_ref); free(dx); free(dw); free(db); free(base_x);
    free(base_w); free(acc_x); free(acc_w); free(want_x); free(want_w);
}

// ---- rope ---------------------------------------------------------------------------------------

typedef struct {
    const double *x;
    const int32_t *pos;
    int64_t N, H, D;
    float theta;
    double direction; // +1 rotation, -1 adjoint
} rope_op;

static void ref_rope(const void *opv, double *out) {
    const rope_op *op = opv;
    const int64_t half = op->D / 2;
    for (int64_t n = 0; n < op->N; n++)
        for (int64_t h = 0; h < op->H; h++)
            for (int64_t i = 0; i < half; i++) {
                // The angle is specified in fp32; everything after it in double.
                const float inv_freq = 1.0f / powf(op->theta, (float)(2 * i) / (float)op->D);
                const double angle = (double)((float)op->pos[n] * inv_freq);
                const double c = cos(angle), s = op->direction * sin(angle);
                const double *x = op->x + (n * op->H + h) * op->D;
                double *o = out + (n * op->H + h) * op->D;
                o[i] = x[i] * c - x[i + half] * s;
                o[i + half] = x[i + half] * c + x[i] * s;
            }
}

static void test_rope(int64_t N, int64_t H, int64_t D) {
    char name[96];
    const int64_t n = N * H * D;
    const float theta = 10000.0f;
    int32_t *pos = malloc((size_t)N * sizeof(int32_t));
    for (int64_t i = 0; i < N; i++) pos[i] = (int32_t)(i % 2 ? rng_int(2048) : i);
    float *x = rand_floats(n, 1.0f), *dout = rand_floats(n, 1.0f);
    double *x_d = to_double(x, n), *dout_d = to_double(dout, n);
    rope_op op = { x_d, pos, N, H, D, theta, 1.0 };
    double *out_ref = zeros(n), *grad_ref = zeros(n);
    ref_rope(&op, out_ref);
    rope_op adjoint = { dout_d, pos, N, H, D, theta, -1.0 };
    ref_rope(&adjoint, grad_ref);

    float *out = filled(n, NAN);
    loom_cpu_rope_forward(out, x, pos, N, H, D, theta);
    snprintf(name, sizeof name, "rope fwd N=%lld H=%lld D=%lld", (long long)N, (long long)H,
             (long long)D);
    expect_close(name, out, out_ref, n, RTOL_FWD);
    float *inplace = copy_floats(x, n);
    loom_cpu_rope_forward(inplace, inplace, pos, N, H, D, theta);
    expect_close("rope fwd in place", inplace, out_ref, n, RTOL_FWD);

    float *dinp = filled(n, NAN);
    loom_cpu_rope_backward(dinp, dout, pos, N, H, D, theta, 0);
    snprintf(name, sizeof name, "rope bwd N=%lld H=%lld D=%lld", (long long)N, (long long)H,
             (long long)D);
    expect_close(name, dinp, grad_ref, n, RTOL_BWD);
    expect_fd("rope bwd fd", ref_rope, &op, n, dout_d, x_d, n, dinp, grad_ref);
    memcpy(inplace, dout, (size_t)n * sizeof(float));
    loom_cpu_rope_backward(inplace, inplace, pos, N, H, D, theta, 0);
    expect_close("rope bwd in place", inplace, grad_ref, n, RTOL_BWD);
    float *base = rand_floats(n, 1.0f), *acc = copy_floats(base, n);
    double *want = plus(base, grad_ref, n);
    loom_cpu_rope_backward(acc, dout, pos, N, H, D, theta, 1);
    expect_close("rope bwd acc=1", acc, want, n, RTOL_BWD);
    free(pos); free(x); free(dout); free(x_d); free(dout_d); free(out_ref); free(grad_ref);
    free(out); free(inplace); free(dinp); free(base); free(acc); free(want);
}

// ---- attention ----------------------------------------------------------------------------------

typedef struct {
    const double *q, *k, *v; // (B, Tq, Hq*D), (B, Tkv, Hkv*D) x2
    int64_t B, Tq, Tkv, pos0, Hq, Hkv, D;
} attention_op;

// out (B, Tq, Hq*D), lse (B, Hq, Tq) or NULL. Query s sits at position pos0 + s.
static void ref_attention(const attention_op *op, double *out, double *lse) {
    const int64_t B = op->B, Tq = op->Tq, Hq = op->Hq, D = op->D, group = Hq / op->Hkv;
    const int64_t ldq = Hq * D, ldkv = op->Hkv * D;
    const double scale = 1.0 / sqrt((double)D);
    double *p = malloc((size_t)(op->pos0 + Tq) * sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t s = 0; s < Tq; s++) {
                const int64_t visible = op->pos0 + s + 1;
                const double *qs = op->q + (b * Tq + s) * ldq + h * D;
                double max = -INFINITY, sum = 0;
                for (int64_t t = 0; t < visible; t++) {
                    const double *kt = op->k + (b * op->Tkv + t) * ldkv + (h / group) * D;
                    p[t] = scale * dot(qs, kt, D);
                    max = fmax(max, p[t]);
                }
                for (int64_t t = 0; t < visible; t++) sum += (p[t] = exp(p[t] - max));
                double *os = out + (b * Tq + s) * ldq + h * D;
                for (int64_t d = 0; d < D; d++) os[d] = 0;
                for (int64_t t = 0; t < visible; t++) {
                    const double *vt = op->v + (b * op->Tkv + t) * ldkv + (h / group) * D;
                    for (int64_t d = 0; d < D; d++) os[d] += p[t] / sum * vt[d];
                }
                if (lse) lse[(b * Hq + h) * Tq + s] = max + log(sum);
            }
    free(p);
}

static void ref_attention_forward(const void *op, double *out) { ref_attention(op, out, NULL); }

// Gradients (accumulated into zeroed dq, dk, dv) of sum(dout * out), full causal attention.
static void ref_attention_backward(const attention_op *op, const double *dout, double *dq,
                                   double *dk, double *dv) {
    const int64_t B = op->B, T = op->Tq, Hq = op->Hq, D = op->D, group = Hq / op->Hkv;
    const int64_t ldq = Hq * D, ldkv = op->Hkv * D;
    const double scale = 1.0 / sqrt((double)D);
    double *p = malloc((size_t)T * sizeof(double)), *dp = malloc((size_t)T * sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t s = 0; s < T; s++) {
                const int64_t row = (b * T + s) * ldq + h * D;
                const double *qs = op->q + row, *dos = dout + row;
                double max = -INFINITY, sum = 0, delta = 0;
                for (int64_t t = 0; t <= s; t++) {
                    p[t] = scale * dot(qs, op->k + (b * T + t) * ldkv + (h / group) * D, D);
                    max = fmax(max, p[t]);
                }
                for (int64_t t = 0; t <= s; t++) sum += (p[t] = exp(p[t] - max));
                for (int64_t t = 0; t <= s; t++) {
                    p[t] /= sum;
                    dp[t] = dot(dos, op->v + (b * T + t) * ldkv + (h / group) * D, D);
                    delta += p[t] * dp[t];
                }
                for (int64_t t = 0; t <= s; t++) {
                    const int64_t kv = (b * T + t) * ldkv + (h / group) * D;
                    const double ds = p[t] * (dp[t] - delta);
                    for (int64_t d = 0; d < D; d++) {
                        dq[row + d] += scale * ds * op->k[kv + d];
                        dk[kv + d] += scale * ds * qs[d];
                        dv[kv + d] += p[t] * dos[d];
                    }
                }
            }
    free(p); free(dp);
}

static void test_attention(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D) {
    char name[128], shape[64];
    snprintf(shape, sizeof shape, "B=%lld T=%lld Hq=%lld Hkv=%lld D=%lld", (long long)B,
             (long long)T, (long long)Hq, (long long)Hkv, (long long)D);
    const int64_t nq = B * T * Hq * D, nkv = B * T * Hkv * D, nlse = B * Hq * T;
    float *q = rand_floats(nq, 2.0f), *k = rand_floats(nkv, 2.0f), *v = rand_floats(nkv, 1.0f);
    float *dout = rand_floats(nq, 1.0f);
    double *q_d = to_double(q, nq), *k_d = to_double(k, nkv), *v_d = to_double(v, nkv);
    double *dout_d = to_double(dout, nq);
    attention_op op = { q_d, k_d, v_d, B, T, T, 0, Hq, Hkv, D };
    double *out_ref = zeros(nq), *lse_ref = zeros(nlse);
    ref_attention(&op, out_ref, lse_ref);
    float *out = filled(nq, NAN), *lse = filled(nlse, NAN);
    loom_cpu_attention_forward(out, lse, q, k, v, B, T, Hq, Hkv, D, &g_scratch);
    snprintf(name, sizeof name, "attention fwd %s out", shape);
    expect_close(name, out, out_ref, nq, RTOL_FWD);
    snprintf(name, sizeof name, "attention fwd %s lse", shape);
    expect_close(name, lse, lse_ref, nlse, RTOL_FWD);

    double *dq_ref = zeros(nq), *dk_ref = zeros(nkv), *dv_ref = zeros(nkv);
    ref_attention_backward(&op, dout_d, dq_ref, dk_ref, dv_ref);
    float *dq = filled(nq, NAN), *dk = filled(nkv, NAN), *dv = filled(nkv, NAN);
    loom_cpu_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv, D, 0, 0, 0, &g_scratch);
    snprintf(name, sizeof name, "attention bwd %s dq/dk/dv", shape);
    expect_close(name, dq, dq_ref, nq, RTOL_BWD);
    expect_close(name, dk, dk_ref, nkv, RTOL_BWD);
    expect_close(name, dv, dv_ref, nkv, RTOL_BWD);
    expect_fd("attention bwd fd dq", ref_attention_forward, &op, nq, dout_d, q_d, nq, dq, dq_ref);
    expect_fd("attention bwd fd dk", ref_attention_forward, &op, nq, dout_d, k_d, nkv, dk, dk_ref);
    expect_fd("attention bwd fd dv", ref_attention_forward, &op, nq, dout_d, v_d, nkv, dv, dv_ref);

    // acc = 1 everywhere; then NULL dq and dv with dk acc = 0.
    float *base_q = rand_floats(nq, 1.0f), *base_k = rand_floats(nkv, 1.0f);
    float *base_v = rand_floats(nkv, 1.0f);
    float *acc_q = copy_floats(base_q, nq), *acc_k = copy_floats(base_k, nkv);
    float *acc_v = copy_floats(base_v, nkv);
    loom_cpu_attention_backward(acc_q, acc_k, acc_v, dout, q, k, v, out, lse, B, T, Hq, Hkv, D,
                                1, 1, 1, &g_scratch);
    double *want_q = plus(base_q, dq_ref, nq), *want_k = plus(base_k, dk_ref, nkv);
    double *want_v = plus(base_v, dv_ref, nkv);
    snprintf(name, sizeof name, "attention bwd %s acc=1", shape);
    expect_close(name, acc_q, want_q, nq, RTOL_BWD);
    expect_close(name, acc_k, want_k, nkv, RTOL_BWD);
    expect_close(name, acc_v, want_v, nkv, RTOL_BWD);
    float *only_k = filled(nkv, NAN);
    loom_cpu_attention_backward(NULL, only_k, NULL, dout, q, k, v, out, lse, B, T, Hq, Hkv, D,
                                0, 0, 0, &g_scratch);
    expect_close("attention bwd NULL dq, dv", only_k, dk_ref, nkv, RTOL_BWD);
    float *only_v = filled(nkv, NAN);
    loom_cpu_attention_backward(NULL, NULL, only_v, dout, q, k, v, out, lse, B, T, Hq, Hkv, D,
                                0, 0, 0, &g_scratch);
    expect_close("attention bwd NULL dq, dk", only_v, dv_ref, nkv, RTOL_BWD);

    // The cache forward over the whole sequence is the same computation.
    float *cached = filled(nq, NAN);
    loom_cpu_attention_cached_forward(cached, q, k, v, B, T, T, 0, Hq, Hkv, D, &g_scratch);
    expect_identical("attention cached fwd pos0=0 == fwd", cached, out, nq);

    free(q); free(k); free(v); free(dout); free(q_d); free(k_d); free(v_d); free(dout_d);
    free(out_ref); free(lse_ref); free(out); free(lse); free(dq_ref); free(dk_ref); free(dv_ref);
    free(dq); free(dk); free(dv); free(base_q); free(base_k); free(base_v); free(acc_q);
    free(acc_k); free(acc_v); free(want_q); free(want_k); free(want_v); free(only_k);
    free(only_v); free(cached);
}

static void test_attention_cached(int64_t B, int64_t Tq, int64_t Tmax, int64_t pos0, int64_t Hq,
                                  int64_t Hkv, int64_t D) {
    char name[128];
    const int64_t nq = B * Tq * Hq * D, nkv = B * Tmax * Hkv * D;
    float *q = rand_floats(nq, 2.0f), *k = rand_floats(nkv, 2.0f), *v = rand_floats(nkv, 1.0f);
    // Cache rows past pos0 + Tq are not valid yet: poison them.
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = pos0 + Tq; t < Tmax; t++)
            for (int64_t i = 0; i < Hkv * D; i++)
                k[(b * Tmax + t) * Hkv * D + i] = v[(b * Tmax + t) * Hkv * D + i] = NAN;
    double *q_d = to_double(q, nq), *k_d = to_double(k, nkv), *v_d = to_double(v, nkv);
    attention_op op = { q_d, k_d, v_d, B, Tq, Tmax, pos0, Hq, Hkv, D };
    double *out_ref = zeros(nq);
    ref_attention(&op, out_ref, NULL);
    float *out = filled(nq, NAN);
    loom_cpu_attention_cached_forward(out, q, k, v, B, Tq, Tmax, pos0, Hq, Hkv, D, &g_scratch);
    snprintf(name, sizeof name, "attention cached fwd B=%lld Tq=%lld Tmax=%lld pos0=%lld Hq=%lld "
             "Hkv=%lld", (long long)B, (long long)Tq, (long long)Tmax, (long long)pos0,
             (long long)Hq, (long long)Hkv);
    expect_close(name, out, out_ref, nq, RTOL_FWD);
    free(q); free(k); free(v); free(q_d); free(k_d); free(v_d); free(out_ref); free(out);
}

// ---- cross-entropy ------------------------------------------------------------------------------

typedef struct {
    const double *logits;
    const int32_t *targets;
    int64_t N, V;
    int32_t ignore_index;
} xent_op;

// losses (N), lse (N) or NULL.
static void ref_xent(const xent_op *op, double *losses, double *lse) {
    for (int64_t n = 0; n < op->N; n++) {
        const double *x = op->logits + n * op->V;
        double max = -INFINITY, sum = 0;
        for (int64_t j = 0; j < op->V; j++) max = fmax(max, x[j]);
        for (int64_t j = 0; j < op->V; j++) sum += exp(x[j] - max);
        const double row_lse = max + log(sum);
        if (lse) lse[n] = row_lse;
        losses[n] = op->targets[n] == op->ignore_index ? 0.0 : row_lse - x[op->targets[n]];
    }
}

static void ref_xent_forward(const void *op, double *losses) { ref_xent(op, losses, NULL); }

static void test_cross_entropy(int64_t N, int64_t V) {
    char name[96];
    const int32_t ignore = -100;
    float *logits = rand_floats(N * V, 4.0f);
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < V; j++) logits[n * V + j] += (float)(n % 3) * 40.0f; // shifted rows
    int32_t *targets = malloc((size_t)N * sizeof(int32_t));
    for (int64_t n = 0; n < N; n++) targets[n] = (int32_t)rng_int(V);
    targets[1] = ignore;
    targets[N - 1] = (int32_t)(V - 1);
    double *logits_d = to_double(logits, N * V);
    xent_op op = { logits_d, targets, N, V, ignore };
    double *losses_ref = zeros(N), *lse_ref = zeros(N);
    ref_xent(&op, losses_ref, lse_ref);
    float *losses = filled(N, NAN), *lse = filled(N, NAN);
    loom_cpu_cross_entropy_forward(losses, lse, logits, targets, N, V, ignore);
    snprintf(name, sizeof name, "cross-entropy fwd N=%lld V=%lld losses", (long long)N,
             (long long)V);
    expect_close(name, losses, losses_ref, N, RTOL_FWD);
    expect_close("cross-entropy fwd lse", lse, lse_ref, N, RTOL_FWD);

    // d/dlogits of scale * sum(losses): dout = scale for every row.
    const float scale = 1.0f / (float)(N - 1);
    double *dout = zeros(N), *grad_ref = zeros(N * V);
    for (int64_t n = 0; n < N; n++) {
        dout[n] = scale;
        if (targets[n] == ignore) continue;
        for (int64_t j = 0; j < V; j++)
            grad_ref[n * V + j] =
                scale * (exp(logits_d[n * V + j] - lse_ref[n]) - (j == targets[n]));
    }
    float *dlogits = filled(N * V, NAN);
    loom_cpu_cross_entropy_backward(dlogits, logits, lse, targets, N, V, ignore, scale, 0);
    snprintf(name, sizeof name, "cross-entropy bwd N=%lld V=%lld", (long long)N, (long long)V);
    expect_close(name, dlogits, grad_ref, N * V, RTOL_BWD);
    expect_fd("cross-entropy bwd fd", ref_xent_forward, &op, N, dout, logits_d, N * V, dlogits,
              grad_ref);
    float *base = rand_floats(N * V, 1.0f), *acc = copy_floats(base, N * V);
    double *want = plus(base, grad_ref, N * V);
    loom_cpu_cross_entropy_backward(acc, logits, lse, targets, N, V, ignore, scale, 1);
    expect_close("cross-entropy bwd acc=1", acc, want, N * V, RTOL_BWD);
    float *inplace = copy_floats(logits, N * V);
    loom_cpu_cross_entropy_backward(inplace, inplace, lse, targets, N, V, ignore, scale, 0);
    expect_close("cross-entropy bwd in place over logits", inplace, grad_ref, N * V, RTOL_BWD);
    free(logits); free(targets); free(logits_d); free(losses_ref); free(lse_ref); free(losses);
    free(lse); free(dout); free(grad_ref); free(dlogits); free(base); free(acc); free(want);
    free(inplace);
}

// ---- optimizers and reductions ------------------------------------------------------------------

static void test_reductions(void) {
    const int64_t n = 100003;
    float *x = rand_floats(n, 3.0f);
    double want = 0;
    for (int64_t i = 0; i < n; i++) want += (double)x[i] * x[i];
    const double got = loom_cpu_sum_squares(x, n);
    report(fabs(got - want) <= 1e-12 * want, "sum_squares n=100003", "rel err",
           fabs(got - want) / want, 1e-12);
    report(loom_cpu_sum_squares(x, 0) == 0.0 && loom_cpu_sum_squares(x, 1) == (double)x[0] * x[0],
           "sum_squares n=0, n=1", "mismatch", 0.0, 0.0);
    float *y = copy_floats(x, n);
    loom_cpu_scale(y, 0.37f, n);
    double *want_y = zeros(n);
    for (int64_t i = 0; i < n; i++) want_y[i] = (double)x[i] * 0.37f;
    expect_close("scale", y, want_y, n, RTOL_FWD);
    free(x); free(y); free(want_y);
}

static void test_adamw(void) {
    const int64_t n = 5000;
    const float lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gscale = 0.5f;
    float *p = rand_floats(n, 1.0f), *m = filled(n, 0.0f), *v = filled(n, 0.0f);
    double *p_d = to_double(p, n), *m_d = zeros(n), *v_d = zeros(n);
    for (int64_t t = 1; t <= 3; t++) {
        float *g = rand_floats(n, 1.0f);
        loom_cpu_adamw_update(p, g, m, v, n, lr, b1, b2, eps, wd, t, gscale);
        for (int64_t i = 0; i < n; i++) {
            const double gi = (double)g[i] * gscale;
            p_d[i] -= (double)lr * wd * p_d[i];
            m_d[i] = b1 * m_d[i] + (1.0 - b1) * gi;
            v_d[i] = b2 * v_d[i] + (1.0 - b2) * gi * gi;
            const double mhat = m_d[i] / (1.0 - pow(b1, (double)t));
            const double vhat = v_d[i] / (1.0 - pow(b2, (double)t));
            p_d[i] -= lr * mhat / (sqrt(vhat) + eps);
        }
        free(g);
    }
    expect_close("adamw 3 steps param", p, p_d, n, RTOL_FWD);
    expect_close("adamw 3 steps m", m, m_d, n, RTOL_FWD);
    expect_close("adamw 3 steps v", v, v_d, n, RTOL_FWD);
    free(p); free(m); free(v); free(p_d); free(m_d); free(v_d);
}

static void test_sgd(void) {
    const int64_t n = 5000;
    const float lr = 0.05f, wd = 0.01f, gscale = 2.0f;
    for (int with_momentum = 0; with_momentum <= 1; with_momentum++) {
        const float momentum = with_momentum ? 0.9f : 0.0f;
        float *p = rand_floats(n, 1.0f), *buf = with_momentum ? filled(n, NAN) : NULL;
        double *p_d = to_double(p, n), *buf_d = zeros(n);
        for (int64_t t = 1; t <= 3; t++) {
            float *g = rand_floats(n, 1.0f);
            loom_cpu_sgd_update(p, g, buf, n, lr, momentum, wd, t, gscale);
            for (int64_t i = 0; i < n; i++) {
                double d = (double)g[i] * gscale + (double)wd * p_d[i];
                if (with_momentum) d = buf_d[i] = t == 1 ? d : (double)momentum * buf_d[i] + d;
                p_d[i] -= (double)lr * d;
            }
            free(g);
        }
        expect_close(with_momentum ? "sgd momentum 3 steps param" : "sgd 3 steps param", p, p_d,
                     n, RTOL_FWD);
        if (with_momentum) expect_close("sgd momentum 3 steps buf", buf, buf_d, n, RTOL_FWD);
        free(p); free(buf); free(p_d); free(buf_d);
    }
}

// ---- determinism: 1 thread vs 2 threads ---------------------------------------------------------

static void test_determinism(void) {
    const int max_threads = omp_get_max_threads();
    // attention
    const int64_t B = 2, T = 131, Hq = 4, Hkv = 2, D = 16;
    const int64_t nq = B * T * Hq * D, nkv = B * T * Hkv * D;
    float *q = rand_floats(nq, 2.0f), *k = rand_floats(nkv, 2.0f), *v = rand_floats(nkv, 1.0f);
    float *dout = rand_floats(nq, 1.0f);
    float *out[2], *lse[2], *dq[2], *dk[2], *dv[2];
    // layernorm
    const int64_t N = 64, C = 1024;
    float *x = rand_floats(N * C, 2.0f), *w = rand_floats(C, 1.0f), *bias = rand_floats(C, 1.0f);
    float *dy = rand_floats(N * C, 1.0f), *mean = filled(N, 0), *rstd = filled(N, 0);
    float *ln_out = filled(N * C, 0);
    float *dx[2], *dw[2], *db[2];
    // embedding
    const int64_t EN = 300, EV = 50, EC = 200;
    int32_t *idx = malloc((size_t)EN * sizeof(int32_t));
    for (int64_t n = 0; n < EN; n++) idx[n] = (int32_t)rng_int(EV);
    float *edout = rand_floats(EN * EC, 1.0f), *edw[2];
    // linear, batched matmul, cross-entropy, sum of squares. OpenBLAS itself blocks the inner
    // dimension differently with 1 and 2 threads when it exceeds 384 and is not a multiple of it,
    // so the single (threaded) sgemm of a linear is only thread-count independent for such K;
    // the linear uses K = 64, 70 (dweight) and 768 (dinp) here.
    const int64_t LM = 70, LK = 64, LN = 768, XN = 16, XV = 3001;
    const int64_t MB = 3, MM = 40, MK = 600, MN = 50;
    float *ma = rand_floats(MB * MM * MK, 1.0f), *mbm = rand_floats(MB * MK * MN, 1.0f);
    float *mout[2];
    float *linp = rand_floats(LM * LK, 1.0f), *lw = rand_floats(LN * LK, 1.0f);
    float *ldout = rand_floats(LM * LN, 1.0f), *ldi[2], *ldw[2], *ldb[2];
    float *logits = rand_floats(XN * XV, 5.0f), *xloss = filled(XN, 0), *xlse[2], *dlogits[2];
    int32_t targets[16];
    for (int64_t n = 0; n < XN; n++) targets[n] = (int32_t)rng_int(XV);
    double sumsq[2];

    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(run == 0 ? 1 : 2);
        out[run] = filled(nq, 0); lse[run] = filled(B * Hq * T, 0);
        dq[run] = filled(nq, 0); dk[run] = filled(nkv, 0); dv[run] = filled(nkv, 0);
        loom_cpu_attention_forward(out[run], lse[run], q, k, v, B, T, Hq, Hkv, D, &g_scratch);
        loom_cpu_attention_backward(dq[run], dk[run], dv[run], dout, q, k, v, out[run], lse[run],
                                    B, T, Hq, Hkv, D, 0, 0, 0, &g_scratch);
        dx[run] = filled(N * C, 0); dw[run] = filled(C, 0); db[run] = filled(C, 0);
        loom_cpu_layernorm_forward(ln_out, mean, rstd, x, w, bias, N, C, 1e-5f);
        loom_cpu_layernorm_backward(dx[run], dw[run], db[run], dy, x, w, mean, rstd, N, C, 0, 0, 0);
        edw[run] = filled(EV * EC, 0);
        loom_cpu_embedding_backward(edw[run], edout, idx, EN, EV, EC, 0);
        ldi[run] = filled(LM * LK, 0); ldw[run] = filled(LN * LK, 0); ldb[run] = filled(LN, 0);
        loom_cpu_linear_backward(ldi[run], ldw[run], ldb[run], ldout, linp, lw, LM, LK, LN, 0,
                                 0, 0, 0);
        xlse[run] = filled(XN, 0); dlogits[run] = filled(XN * XV, 0);
        loom_cpu_cross_entropy_forward(xloss, xlse[run], logits, targets, XN, XV, -100);
        loom_cpu_cross_entropy_backward(dlogits[run], logits, xlse[run], targets, XN, XV, -100,
                                        0.1f, 0);
        sumsq[run] = loom_cpu_sum_squares(ldout, LM * LN);
        mout[run] = filled(MB * MM * MN, 0);
        loom_cpu_matmul_forward(mout[run], ma, mbm, MB, MM, MK, MN);
    }
    omp_set_num_threads(max_threads);
    expect_identical("determinism 1 vs 2 threads: attention fwd out", out[0], out[1], nq);
    expect_identical("determinism 1 vs 2 threads: attention fwd lse", lse[0], lse[1], B * Hq * T);
    expect_identical("determinism 1 vs 2 threads: attention bwd dq", dq[0], dq[1], nq);
    expect_identical("determinism 1 vs 2 threads: attention bwd dk", dk[0], dk[1], nkv);
    expect_identical("determinism 1 vs 2 threads: attention bwd dv", dv[0], dv[1], nkv);
    expect_identical("determinism 1 vs 2 threads: layernorm bwd dinp", dx[0], dx[1], N * C);
    expect_identical("determinism 1 vs 2 threads: layernorm bwd dweight", dw[0], dw[1], C);
    expect_identical("determinism 1 vs 2 threads: layernorm bwd dbias", db[0], db[1], C);
    expect_identical("determinism 1 vs 2 threads: embedding bwd", edw[0], edw[1], EV * EC);
    expect_identical("determinism 1 vs 2 threads: linear bwd dinp", ldi[0], ldi[1], LM * LK);
    expect_identical("determinism 1 vs 2 threads: linear bwd dweight", ldw[0], ldw[1], LN * LK);
    expect_identical("determinism 1 vs 2 threads: linear bwd dbias", ldb[0], ldb[1], LN);
    expect_identical("determinism 1 vs 2 threads: cross-entropy lse", xlse[0], xlse[1], XN);
    expect_identical("determinism 1 vs 2 threads: cross-entropy bwd", dlogits[0], dlogits[1],
                     XN * XV);
    expect_identical("determinism 1 vs 2 threads: matmul fwd K=600", mout[0], mout[1],
                     MB * MM * MN);
    report(sumsq[0] == sumsq[1], "determinism 1 vs 2 threads: sum_squares", "diff",
           fabs(sumsq[0] - sumsq[1]), 0.0);
    for (int run = 0; run < 2; run++) {
        free(out[run]); free(lse[run]); free(dq[run]); free(dk[run]); free(dv[run]);
        free(dx[run]); free(dw[run]); free(db[run]); free(edw[run]); free(ldi[run]);
        free(ldw[run]); free(ldb[run]); free(xlse[run]); free(dlogits[run]); free(mout[run]);
    }
    free(q); free(k); free(v); free(dout); free(x); free(w); free(bias); free(dy); free(mean);
    free(rstd); free(ln_out); free(idx); free(edout); free(linp); free(lw); free(ldout);
    free(logits);
    free(xloss); free(ma); free(mbm);
}

int main(void) {
    scratch_init(1024);
    test_exp();
    test_linear();
    test_matmul();
    test_embedding();
    test_add_mul(1001);
    test_add_mul(70001);
    test_activation(0, 1003);
    test_activation(0, 50001);
    test_activation(1, 1003);
    test_norm(0, 9, 77);
    test_norm(0, 40, 1000);
    test_norm(1, 9, 77);
    test_norm(1, 40, 1000);
    test_rope(6, 3, 16);
    test_rope(40, 4, 160);
    test_attention(2, 131, 4, 2, 16); // GQA, three query blocks, the last partial
    test_attention(1, 70, 3, 3, 8);   // Hq == Hkv
    test_attention(2, 5, 2, 1, 4);    // tiny T, one kv head
    test_attention_cached(2, 3, 20, 10, 4, 2, 8);
    test_attention_cached(1, 1, 200, 150, 2, 2, 16); // decode step
    test_attention_cached(2, 70, 90, 7, 4, 1, 8);    // chunked prefill, two query blocks
    test_cross_entropy(7, 1003);
    test_cross_entropy(5, 5003);
    test_reductions();
    test_adamw();
    test_sgd();
    test_determinism();
    free(g_scratch.data);
    return tu_finish();
}
