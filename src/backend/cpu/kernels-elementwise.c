// Elementwise kernels: add, mul, and the sigmoid-gated activations GELU (tanh form) and SiLU.
// Every loop is threaded over fixed chunks and vectorizes; outputs may alias inputs.

#include "backend/cpu/kernels.h"

#include <stddef.h>


// Elements per work item: chunks keep per-chunk scratch in L1 and small sizes on one thread.
enum { CHUNK = 2048 };
// Below this many elements a kernel runs on the calling thread (fork/join would cost more).
enum { PARALLEL_MIN_ELEMS = 1 << 15 };
// Transcendental kernels do more work per element, so they go parallel sooner.
enum { PARALLEL_MIN_ELEMS_ACTIVATION = 1 << 12 };

static int64_t chunk_count(int64_t n) { return (n + CHUNK - 1) / CHUNK; }
static int64_t chunk_len(int64_t n, int64_t chunk) {
    return n - chunk * CHUNK < CHUNK ? n - chunk * CHUNK : CHUNK;
}

// dst (=|+=) src * factor (factor NULL: src), acc selecting += over =.
static void store_grad(float *dst, const float *src, const float *factor, int64_t n, int acc) {
    if (factor) {
        if (acc) for (int64_t i = 0; i < n; i++) dst[i] += src[i] * factor[i];
        else     for (int64_t i = 0; i < n; i++) dst[i] = src[i] * factor[i];
    } else {
        if (acc) for (int64_t i = 0; i < n; i++) dst[i] += src[i];
        else     for (int64_t i = 0; i < n; i++) dst[i] = src[i];
    }
}

// ---- add, mul ---------------------------------------------------------------------------------

void loom_cpu_add_forward(float *out, const float *a, const float *b, int64_t n) {
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void loom_cpu_add_backward(float *da, float *db, const float *dout, int64_t n,
                           int acc_da, int acc_db) {
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN_ELEMS)
    for (int64_t c = 0; c < chunk_count(n); c++) {
        const int64_t i0 = c * CHUNK, len = chunk_len(n, c);
        if (da) store_grad(da + i0, dout + i0, NULL, len, acc_da);
        if (db) store_grad(db + i0, dout + i0, NULL, len, acc_db);
    }
}

void loom_cpu_mul_forward(float *out, const float *a, const float *b, int64_t n) {
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] * b[i];
}

void loom_cpu_mul_backward(float *da, float *db, const float *dout, const float *a,
                           const float *b, int64_t n, int acc_da, int acc_db) {
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN_ELEMS)
    for (int64_t c = 0; c < chunk_count(n); c++) {
        const int64_t i0 = c * CHUNK, len = chunk_len(n, c);
        // dout is copied first: da or db may alias it (or a, b) within the chunk.
        float g[CHUNK], a_chunk[CHUNK];
        for (int64_t i = 0; i < len; i++) g[i] = dout[i0 + i];
        for (int64_t i = 0; i < len; i++) a_chunk[i] = a[i0 + i];
        if (da) store_grad(da + i0, g, b + i0, len, acc_da);
        if (db) store_grad(db + i0, g, a_chunk, len, acc_db);
    }
}

// ---- sigmoid-gated activations: act(x) = x * sigmoid(alpha * z(x)) ----------------------------
// GELU tanh: 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): exact
// identity, no cancellation for negative x, and it vectorizes (tanhf does not).
// SiLU: x * sigmoid(x).

enum gate_kind { GATE_GELU_TANH, GATE_SILU };

static const float GELU_K = 0.7978845608028654f; // sqrt(2 / pi)
static const float GELU_C = 0.044715f;

// s[i] = sigmoid(alpha * z(x[i])) and, if dz is not NULL, dz[i] = alpha * z'(x[i]).
static void gate_sigmoid(float *s, float *dz, const float *x, int64_t n, enum gate_kind kind) {
    if (kind == GATE_GELU_TANH) {
        for (int64_t i = 0; i < n; i++)
            s[i] = 2.0f * GELU_K * (x[i] + GELU_C * x[i] * x[i] * x[i]);
        if (dz)
            for (int64_t i = 0; i < n; i++)
                dz[i] = 2.0f * GELU_K * (1.0f + 3.0f * GELU_C * x[i] * x[i]);
    } else {
        for (int64_t i = 0; i < n; i++) s[i] = x[i];
        if (dz) for (int64_t i = 0; i < n; i++) dz[i] = 1.0f;
    }
    loom_cpu__exp_affine(s, s, -1.0f, 0.0f, n); // exp(-alpha z)
    for (int64_t i = 0; i < n; i++) s[i] = 1.0f / (1.0f + s[i]);
}

static void gate_forward(float *out, const float *inp, int64_t n, enum gate_kind kind) {
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN_ELEMS_ACTIVATION)
    for (int64_t c = 0; c < chunk_count(n); c++) {
        const int64_t i0 = c * CHUNK, len = chunk_len(n, c);
        float s[CHUNK];
        gate_sigmoid(s, NULL, inp + i0, len, kind);
        for (int64_t i = 0; i < len; i++) out[i0 + i] = inp[i0 + i] * s[i];
    }
}

// d act / dx = s + x * alpha z'(x) * s (1 - s). 1 - s loses relative accuracy only where the
// term is negligible next to s ~ 1, and stays finite where exp overflows (s = 0).
static void gate_backward(float *dinp, const float *dout, const float *inp, int64_t n, int acc,
                          enum gate_kind kind) {
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN_ELEMS_ACTIVATION)
    for (int64_t c = 0; c < chunk_count(n); c++) {
        const int64_t i0 = c * CHUNK, len = chunk_len(n, c);
        const float *x = inp + i0;
        float s[CHUNK], slope[CHUNK]; // slope: alpha z'(x), then d act / dx
        gate_sigmoid(s, slope, x, len, kind);
        for (int64_t i = 0; i < len; i++)
            slope[i] = s[i] + x[i] * slope[i] * s[i] * (1.0f - s[i]);
        store_grad(dinp + i0, dout + i0, slope, len, acc);
    }
}

void loom_cpu_gelu_forward(float *out, const float *inp, int64_t n) {
    gate_forward(out, inp, n, GATE_GELU_TANH);
}

void loom_cpu_gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n, int acc) {
    gate_backward(dinp, dout, inp, n, acc, GATE_GELU_TANH);
}

void loom_cpu_silu_forward(float *out, const float *inp, int64_t n) {
    gate_forward(out, inp, n, GATE_SILU);
}

void loom_cpu_silu_backward(float *dinp, const float *dout, const float *inp, int64_t n, int acc) {
    gate_backward(dinp, dout, inp, n, acc, GATE_SILU);
}
