// Shared vectorizable math for the CPU kernels: exp over arrays, accurate to about 1 ulp.

#include "backend/cpu/kernels.h"

// exp(z) = 2^k * exp(r) with k = round(z / ln 2) and r = z - k ln 2 in [-ln2/2, ln2/2];
// exp(r) by its degree-7 Taylor polynomial (truncation error < 0.1 ulp), 2^k built in the
// exponent bits. Branch-free so that loops calling it vectorize. Results below FLT_MIN
// flush to 0, above FLT_MAX give +inf, NaN propagates.
static inline float exp_scalar(float z) {
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f;        // ln 2 = ln2_hi + ln2_lo, ln2_hi exact in 9 bits
    const float ln2_lo = -2.12194440e-4f;
    const float round_shift = 12582912.0f;    // 1.5 * 2^23: adding it rounds to an integer
    const float z_min = -87.3365447f;         // ln(FLT_MIN)
    const float z_max = 88.7228391f;          // ln(FLT_MAX)

    float zc = z < z_min ? z_min : z;
    zc = zc > z_max ? z_max : zc;
    const float k = __builtin_fmaf(zc, log2e, round_shift) - round_shift;
    float r = __builtin_fmaf(k, -ln2_hi, zc);
    r = __builtin_fmaf(k, -ln2_lo, r);
    // k reaches 128 only at the very top of the range: 2^128 = 2 * 2^127.
    const float top = k > 127.0f ? 2.0f : 1.0f;
    const float k_exp = k > 127.0f ? 127.0f : k;
    float p = 1.0f / 5040.0f;
    p = __builtin_fmaf(p, r, 1.0f / 720.0f);
    p = __builtin_fmaf(p, r, 1.0f / 120.0f);
    p = __builtin_fmaf(p, r, 1.0f / 24.0f);
    p = __builtin_fmaf(p, r, 1.0f / 6.0f);
    p = __builtin_fmaf(p, r, 0.5f);
    p = __builtin_fmaf(p, r, 1.0f);
    p = __builtin_fmaf(p, r, 1.0f);
    const float k_safe = k_exp == k_exp ? k_exp : 0.0f;  // NaN input: p is NaN anyway
    union { float f; uint32_t i; } two_k = { .i = (uint32_t)((int32_t)k_safe + 127) << 23 };
    float e = p * top * two_k.f;
    e = z < z_min ? 0.0f : e;
    return z > z_max ? __builtin_inff() : e;
}

// Elements per partial sum of loom_cpu__exp_affine: summed in fp32 simd lanes, then in double.
enum { SUM_BLOCK = 256 };

// out[i] = exp(x[i] * scale + shift) (one rounding for the affine part); returns the sum of the
// results in a fixed order (fp32 lanes within blocks of SUM_BLOCK, blocks in double). out may
// alias x; out may be NULL when only the sum is wanted.
double loom_cpu__exp_affine(float *out, const float *x, float scale, float shift, int64_t n) {
    double sum = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += SUM_BLOCK) {
        const int64_t len = n - i0 < SUM_BLOCK ? n - i0 : SUM_BLOCK;
        float block_sum = 0.0f;
        if (out) {
            #pragma omp simd reduction(+ : block_sum)
            for (int64_t i = i0; i < i0 + len; i++) {
                const float e = exp_scalar(__builtin_fmaf(x[i], scale, shift));
                out[i] = e;
                block_sum += e;
            }
        } else {
            #pragma omp simd reduction(+ : block_sum)
            for (int64_t i = i0; i < i0 + len; i++)
                block_sum += exp_scalar(__builtin_fmaf(x[i], scale, shift));
        }
        sum += (double)block_sum;
    }
    return sum;
}
