// Rotary position embedding (Hugging Face rotate-half convention): the rotation and its
// adjoint (the rotation by -angle) are one kernel.

#include "backend/cpu/kernels.h"

#include <math.h>

enum { PARALLEL_MIN_ELEMS = 1 << 14 };
// Frequencies handled per pass over a row's heads (bounds the per-row cos/sin tables).
enum { FREQ_CHUNK = 64 };

// For each row n and head: (x, y) = (v[i], v[i + half]) becomes
//   (x cos - y sin', y cos + x sin'),  sin' = direction * sin(pos[n] * inv_freq_i),
// direction +1 for the forward rotation, -1 for its adjoint. out may alias inp: each pair is
// read before it is written and no pair overlaps another (hence `omp simd`). acc adds into out.
static void rope_rotate(float *out, const float *inp, const int32_t *pos, int64_t N, int64_t H,
                        int64_t D, float theta, float direction, int acc) {
    const int64_t half = D / 2;
    #pragma omp parallel for schedule(static) if (N * H * D > PARALLEL_MIN_ELEMS)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t f0 = 0; f0 < half; f0 += FREQ_CHUNK) {
            const int64_t nf = half - f0 < FREQ_CHUNK ? half - f0 : FREQ_CHUNK;
            float cos_t[FREQ_CHUNK], sin_t[FREQ_CHUNK];
            for (int64_t i = 0; i < nf; i++) {
                // As torch computes them: inv_freq = 1 / theta^(2i / D) in fp32, angle in fp32.
                const float inv_freq = 1.0f / powf(theta, (float)(2 * (f0 + i)) / (float)D);
                const float angle = (float)pos[n] * inv_freq;
                cos_t[i] = cosf(angle);
                sin_t[i] = direction * sinf(angle);
            }
            for (int64_t h = 0; h < H; h++) {
                const float *x = inp + (n * H + h) * D + f0, *y = x + half; // (nf) each
                float *ox = out + (n * H + h) * D + f0, *oy = ox + half;
                #pragma omp simd
                for (int64_t i = 0; i < nf; i++) {
                    const float xi = x[i], yi = y[i];
                    const float rx = xi * cos_t[i] - yi * sin_t[i];
                    const float ry = yi * cos_t[i] + xi * sin_t[i];
                    ox[i] = acc ? ox[i] + rx : rx;
                    oy[i] = acc ? oy[i] + ry : ry;
                }
            }
        }
    }
}

void loom_cpu_rope_forward(float *out, const float *inp, const int32_t *pos, int64_t N,
                           int64_t H, int64_t D, float theta) {
    rope_rotate(out, inp, pos, N, H, D, theta, 1.0f, 0);
}

void loom_cpu_rope_backward(float *dinp, const float *dout, const int32_t *pos, int64_t N,
                            int64_t H, int64_t D, float theta, int acc) {
    rope_rotate(dinp, dout, pos, N, H, D, theta, -1.0f, acc);
}
