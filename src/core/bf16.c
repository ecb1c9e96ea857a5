/* bf16.c — bulk bfloat16 conversion (the compiler vectorises these loops). */
#include "bf16.h"

void ngd_bf16_decode(const uint16_t *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = ngd_bf16_to_f32(src[i]);
}

void ngd_bf16_encode(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++)
        dst[i] = ngd_f32_to_bf16(src[i]);
}
