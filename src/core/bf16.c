/* bf16.c — bulk bfloat16 conversion (written without branches so that the compiler
 * vectorises these loops; the same results as ngd_f32_to_bf16 / ngd_bf16_to_f32). */
#include "bf16.h"

#include "impl.h"

// Both directions split long arrays over the threads (SINGD's bf16 preconditioning rounds
// two d_out x d_in matrices per step; one thread left the other waiting, docs/benchmarks.md)
void ngd_bf16_decode(const uint16_t *src, float *dst, size_t n) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > 4 * NGD_PAR_MIN)
#endif
    for (size_t i = 0; i < n; i++)
        dst[i] = ngd_bf16_to_f32(src[i]);
}

void ngd_bf16_encode(const float *src, uint16_t *dst, size_t n) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > 4 * NGD_PAR_MIN)
#endif
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], sizeof u);
        const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, q = (u >> 16) | 0x40u;
        dst[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? q : r);
    }
}

void ngd_bf16_round(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = ngd_bf16_round1(x[i]);
}

static _Thread_local bool emul; // ngd_bf16_emul_set

bool ngd_bf16_emul_set(bool on) {
    const bool was = emul;
    emul = on;
    return was;
}

bool ngd_bf16_emul(void) { return emul; }
