/* bf16.h — bfloat16 <-> float32 conversion (round to nearest even; NaN kept quiet). */
#ifndef NGD_BF16_H
#define NGD_BF16_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ngd.h"

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

// ngd_f32_to_bf16 without a branch (the same bits), for loops the compiler vectorises
static inline uint16_t ngd_f32_to_bf16_vec(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, q = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? q : r);
}

// ngd_bf16_decode / ngd_bf16_encode: the same conversions over arrays (public: ngd.h)

// x rounded to the nearest bf16 value (ties to even), as a float.
static inline float ngd_bf16_round1(float x) { return ngd_bf16_to_f32(ngd_f32_to_bf16(x)); }
void ngd_bf16_round(float *x, size_t n); // every x[i] := ngd_bf16_round1(x[i])

// Emulated bf16 arithmetic (ngd_kfac_options.factor_arith = NGD_BF16): while it is on in the
// calling thread, the operations of blas.c (ngd_gemm, ngd_syrk_full, ngd_view_scale,
// ngd_view_copy, the LAPACK calls' outputs) and the element-wise steps of lowrank.c round
// their results to bf16. Off by default; ngd_bf16_emul_set returns the previous state so a
// caller restores it. Thread-local: one layer's factor path, whichever thread runs it.
bool ngd_bf16_emul_set(bool on);
bool ngd_bf16_emul(void);

// The CPU's bf16 dot-product rate (vdpbf16ps, FLOP/s) over its f32 FMA rate (vfmadd231ps), one
// core, measured once per process (about 2 ms); 0 without AVX512-BF16 (or off x86-64)
double ngd_bf16_dot_ratio(void);
#endif
