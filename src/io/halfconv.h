// Exact conversions between fp32 and the 16-bit float formats (IEEE binary16 "F16" and bfloat16
// "BF16"). Narrowing rounds to nearest even; widening is exact (subnormals, inf and NaN kept).

#ifndef LOOM_IO_HALFCONV_H
#define LOOM_IO_HALFCONV_H

#include <stddef.h>
#include <stdint.h>

float loom__bf16_to_f32(uint16_t h);
uint16_t loom__f32_to_bf16(float f);  // NaN stays a (quiet) NaN
float loom__f16_to_f32(uint16_t h);
uint16_t loom__f32_to_f16(float f);  // overflow gives inf, NaN stays a (quiet) NaN

// Bulk forms. `src`/`dst` need no alignment (they may point into a mapped file).
void loom__bf16_to_f32_n(float *dst, const void *src, size_t n);
void loom__f16_to_f32_n(float *dst, const void *src, size_t n);
void loom__f32_to_bf16_n(void *dst, const float *src, size_t n);
void loom__f32_to_f16_n(void *dst, const float *src, size_t n);

#endif // LOOM_IO_HALFCONV_H
