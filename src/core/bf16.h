/* bf16.h — bfloat16 <-> float32 conversion (round to nearest even; NaN kept quiet). */
#ifndef NGD_BF16_H
#define NGD_BF16_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline float ngd_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t ngd_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); // NaN: quiet
    u += 0x7fffu + ((u >> 16) & 1u); // round to nearest even
    return (uint16_t)(u >> 16);
}

void ngd_bf16_decode(const uint16_t *src, float *dst, size_t n);
void ngd_bf16_encode(const float *src, uint16_t *dst, size_t n);
#endif
