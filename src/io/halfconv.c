// fp32 <-> F16 / BF16 conversions by bit manipulation (no hardware or compiler float16 needed).

#include "io/halfconv.h"

#include <string.h>

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float loom__bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t loom__f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);  // quiet NaN
    uint32_t round_bias = 0x7fffu + ((u >> 16) & 1u);  // ties go to the even result
    return (uint16_t)((u + round_bias) >> 16);
}

float loom__f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));  // inf / NaN
    if (exp == 0) {
        if (mant == 0) return bits_f32(sign);  // +-0
        // Subnormal: value = mant * 2^-24; normalize so the leading 1 lands on bit 10.
        int32_t e = -14;
        while (!(mant & 0x400u)) {
            mant <<= 1;
            e--;
        }
        return bits_f32(sign | (uint32_t)(e + 127) << 23 | (mant & 0x3ffu) << 13);
    }
    return bits_f32(sign | (exp - 15 + 127) << 23 | mant << 13);
}

// Shift `m` right by `shift` (1..31) rounding to nearest, ties to even.
static uint32_t shift_round_even(uint32_t m, int shift) {
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return q;
}

uint16_t loom__f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | (a >> 13 & 0x3ffu));  // NaN
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // >= 65520 rounds to inf
    int32_t e = (int32_t)(a >> 23);                           // biased f32 exponent
    uint32_t m = (a & 0x7fffffu) | 0x800000u;                 // with the implicit 1
    if (e < 113) {  // below 2^-14: F16 subnormal (or zero); unit is 2^-24
        if (e < 102) return sign;  // below 2^-25: rounds to zero (exactly 2^-25 ties to 0)
        return (uint16_t)(sign | shift_round_even(m, 126 - e));
    }
    // Normal: drop 13 mantissa bits; a carry out of the mantissa correctly bumps the exponent.
    uint32_t h = ((uint32_t)(e - 127 + 15) << 10) | ((a & 0x7fffffu) >> 13);
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

void loom__bf16_to_f32_n(float *dst, const void *src, size_t n) {
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
        dst[i] = loom__bf16_to_f32(h);
    }
}

void loom__f16_to_f32_n(float *dst, const void *src, size_t n) {
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
        dst[i] = loom__f16_to_f32(h);
    }
}

static void store_le16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v & 0xffu);
    p[1] = (uint8_t)(v >> 8);
}

void loom__f32_to_bf16_n(void *dst, const float *src, size_t n) {
    uint8_t *p = dst;
    for (size_t i = 0; i < n; i++) store_le16(p + 2 * i, loom__f32_to_bf16(src[i]));
}

void loom__f32_to_f16_n(void *dst, const float *src, size_t n) {
    uint8_t *p = dst;
    for (size_t i = 0; i < n; i++) store_le16(p + 2 * i, loom__f32_to_f16(src[i]));
}
