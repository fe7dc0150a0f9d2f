// Causal grouped-query attention, flash style: blocks of query rows against the keys they can
// see, every block product through cblas_sgemm, no (T, T) buffer; plus the KV-cache forward.

#include "backend/cpu/kernels.h"

#include "core/core.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>


// Query rows per block. A block's scores are (ATTN_BLOCK x keys), kept in per-thread scratch.
enum { ATTN_BLOCK = 64 };

static int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// Threads for a parallel region: what OpenMP would use, capped by the scratch's slices.
static int region_threads(const loom_cpu_scratch *scratch) {
    int n = omp_get_max_threads();
    return n < scratch->threads ? n : scratch->threads;
}

int64_t loom_cpu_attention_scratch_floats(int64_t Tq, int64_t Tkv, int backward) {
    int64_t rows = min_i64(ATTN_BLOCK, Tq);
    return backward ? 2 * rows * Tkv : rows * Tkv;  // backward: p and dp/ds blocks
}

// Softmax of one block of score rows, in place: row r of s (rows, nkeys) holds q . k for the
// query at position first_pos + r; keys after that position are masked (set to 0). Writes
// inv_sum[r] = 1 / sum of the row's exponentials and, when lse is not NULL, lse[r] (for the
// scaled scores). The rows are left unnormalized: exp(scale (s - max)).
static void softmax_block_rows(float *s, float *inv_sum, float *lse, int64_t rows, int64_t nkeys,
                               int64_t first_pos, float scale) {
    for (int64_t r = 0; r < rows; r++) {
        float *row = s + r * nkeys; // (nkeys)
        const int64_t visible = first_pos + r + 1;
        float max = -INFINITY;
        #pragma omp simd reduction(max : max)
        for (int64_t j = 0; j < visible; j++) max = row[j] > max ? row[j] : max;
        const double sum = loom_cpu__exp_affine(row, row, scale, -max * scale, visible);
        memset(row + visible, 0, (size_t)(nkeys - visible) * sizeof(float));
        inv_sum[r] = (float)(1.0 / sum);
        if (lse) lse[r] = max * scale + (float)log(sum);
    }
}

// Forward for queries q (B, Tq, Hq*D) at positions pos0 .. pos0+Tq-1 against keys/values
// (B, Tkv, Hkv*D) of which rows 0 .. pos0+Tq-1 are used. out (B, Tq, Hq*D); lse (B, Hq, Tq) or
// NULL. Work items are (batch, query head, query block), largest blocks first.
static void attention_forward_rows(float *out, float *lse, const float *q, const float *k,
                                   const float *v, int64_t B, int64_t Tq, int64_t Tkv,
                                   int64_t pos0, int64_t Hq, int64_t Hkv, int64_t D,
                                   const loom_cpu_scratch *scratch) {
    const int64_t group = Hq / Hkv;
    const int64_t ldq = Hq * D, ldkv = Hkv * D;
    const float scale = 1.0f / sqrtf((float)D);
    const int64_t nblocks = (Tq + ATTN_BLOCK - 1) / ATTN_BLOCK;
    const int64_t max_keys = pos0 + Tq;
    const int64_t nitems = B * Hq * nblocks;
    const int64_t scratch_floats = scratch->per_thread;
    LOOM_ASSERT(scratch_floats >= loom_cpu_attention_scratch_floats(Tq, max_keys, 0));

    #pragma omp parallel for schedule(dynamic, 1) if (nitems > 1) num_threads(region_threads(scratch))
    for (int64_t item = 0; item < nitems; item++) {
        const int64_t blk = nblocks - 1 - item / (B * Hq);
        const int64_t b = item % (B * Hq) / Hq, h = item % Hq;
        const int64_t i0 = blk * ATTN_BLOCK, rows = min_i64(ATTN_BLOCK, Tq - i0);
        const int64_t nkeys = pos0 + i0 + rows;
        const float *qb = q + (b * Tq + i0) * ldq + h * D;         // (rows, D), ld ldq
        const float *kb = k + b * Tkv * ldkv + (h / group) * D;    // (nkeys, D), ld ldkv
        const float *vb = v + b * Tkv * ldkv + (h / group) * D;    // (nkeys, D), ld ldkv
        float *ob = out + (b * Tq + i0) * ldq + h * D;             // (rows, D), ld ldq
        float *s = scratch->data + omp_get_thread_num() * scratch_floats; // (rows, nkeys)
        float inv_sum[ATTN_BLOCK];

        // s = q k^T; p = exp(scale s - lse) unnormalized; o = p v, rows then normalized.
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)nkeys, (int)D, 1.0f,
                    qb, (int)ldq, kb, (int)ldkv, 0.0f, s, (int)nkeys);
        softmax_block_rows(s, inv_sum, lse ? lse + (b * Hq + h) * Tq + i0 : NULL, rows, nkeys,
                           pos0 + i0, scale);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)D, (int)nkeys,
                    1.0f, s, (int)nkeys, vb, (int)ldkv, 0.0f, ob, (int)ldq);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t d = 0; d < D; d++) ob[r * ldq + d] *= inv_sum[r];
    }
}

void loom_cpu_attention_forward(float *out, float *lse, const float *q, const float *k,
                                const float *v, int64_t B, int64_t T, int64_t Hq, int64_t Hkv,
                                int64_t D, const loom_cpu_scratch *scratch) {
    attention_forward_rows(out, lse, q, k, v, B, T, T, 0, Hq, Hkv, D, scratch);
}

void loom_cpu_attention_cached_forward(float *out, const float *q, const float *k_cache,
                                       const float *v_cache, int64_t B, int64_t Tq, int64_t Tmax,
                                       int64_t pos0, int64_t Hq, int64_t Hkv, int64_t D,
                                       const loom_cpu_scratch *scratch) {
    attention_forward_rows(out, NULL, q, k_cache, v_cache, B, Tq, Tmax, pos0, Hq, Hkv, D,
                           scratch);
}

// Backward. With s = scale q k^T (causal), p = softmax(s) = exp(s - lse), o = p v:
//   dv += p^T do;  dp = do v^T;  ds = p (dp - delta), delta_i = rowsum(do_i o_i);
//   dq = scale ds k;  dk += scale ds^T q.
// A work item is (batch, kv head): it owns that head's dk, dv rows and walks its query heads
// and query blocks in a fixed order, so the accumulation is race-free and deterministic.
void loom_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                 const float *q, const float *k, const float *v,
                                 const float *out, const float *lse, int64_t B, int64_t T,
                                 int64_t Hq, int64_t Hkv, int64_t D,
                                 int acc_dq, int acc_dk, int acc_dv,
                                 const loom_cpu_scratch *scratch) {
    const int64_t group = Hq / Hkv;
    const int64_t ldq = Hq * D, ldkv = Hkv * D;
    const float scale = 1.0f / sqrtf((float)D);
    const int64_t nblocks = (T + ATTN_BLOCK - 1) / ATTN_BLOCK;
    const int64_t nitems = B * Hkv;
    const int need_ds = dq != NULL || dk != NULL;
    if (!need_ds && dv == NULL) return;
    const int64_t block_floats = min_i64(ATTN_BLOCK, T) * T;
    const int64_t scratch_floats = scratch->per_thread;
    LOOM_ASSERT(scratch_floats >= loom_cpu_attention_scratch_floats(T, T, 1));

    #pragma omp parallel for schedule(static) if (nitems > 1) num_threads(region_threads(scratch))
    for (int64_t item = 0; item < nitems; item++) {
        const int64_t b = item / Hkv, g = item % Hkv;
        const float *kb = k + b * T * ldkv + g * D; // (T, D), ld ldkv
        const float *vb = v + b * T * ldkv + g * D;
        float *dkb = dk ? dk + b * T * ldkv + g * D : NULL;
        float *dvb = dv ? dv + b * T * ldkv + g * D : NULL;
        float *p = scratch->data + omp_get_thread_num() * scratch_floats; // (rows, nkeys)
        float *ds = p + block_floats;                                // (rows, nkeys)
        for (int64_t t = 0; t < T; t++) {
            if (dkb && !acc_dk) memset(dkb + t * ldkv, 0, (size_t)D * sizeof(float));
            if (dvb && !acc_dv) memset(dvb + t * ldkv, 0, (size_t)D * sizeof(float));
        }
        for (int64_t h = g * group; h < (g + 1) * group; h++) {
            for (int64_t blk = 0; blk < nblocks; blk++) {
                const int64_t i0 = blk * ATTN_BLOCK, rows = min_i64(ATTN_BLOCK, T - i0);
                const int64_t nkeys = i0 + rows; // causal: this block sees keys [0, nkeys)
                const int64_t row0 = (b * T + i0) * ldq + h * D;
                const float *qb = q + row0, *dob = dout + row0, *ob = out + row0; // (rows, D)
                const float *lse_b = lse + (b * Hq + h) * T + i0;                  // (rows)

                // p = exp(scale q k^T - lse), causal entries zeroed
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)nkeys,
                            (int)D, 1.0f, qb, (int)ldq, kb, (int)ldkv, 0.0f, p, (int)nkeys);
                for (int64_t r = 0; r < rows; r++) {
                    float *row = p + r * nkeys;
                    const int64_t visible = i0 + r + 1;
                    loom_cpu__exp_affine(row, row, scale, -lse_b[r], visible);
                    memset(row + visible, 0, (size_t)(nkeys - visible) * sizeof(float));
                }
                // dv += p^T do
                if (dvb)
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nkeys, (int)D,
                                (int)rows, 1.0f, p, (int)nkeys, dob, (int)ldq, 1.0f, dvb,
                                (int)ldkv);
                if (!need_ds) continue;
                // ds = p (do v^T - delta)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)nkeys,
                            (int)D, 1.0f, dob, (int)ldq, vb, (int)ldkv, 0.0f, ds, (int)nkeys);
                for (int64_t r = 0; r < rows; r++) {
                    const float *do_r = dob + r * ldq, *o_r = ob + r * ldq;
                    float delta = 0.0f;
                    #pragma omp simd reduction(+ : delta)
                    for (int64_t d = 0; d < D; d++) delta += do_r[d] * o_r[d];
                    float *ds_r = ds + r * nkeys;
                    const float *p_r = p + r * nkeys;
                    for (int64_t j = 0; j < nkeys; j++) ds_r[j] = p_r[j] * (ds_r[j] - delta);
                }
                // dq (=|+=) scale ds k;  dk += scale ds^T q
                if (dq)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)D,
                                (int)nkeys, scale, ds, (int)nkeys, kb, (int)ldkv,
                                acc_dq ? 1.0f : 0.0f, dq + row0, (int)ldq);
                if (dkb)
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nkeys, (int)D,
                                (int)rows, scale, ds, (int)nkeys, qb, (int)ldq, 1.0f, dkb,
                                (int)ldkv);
            }
        }
    }
}
