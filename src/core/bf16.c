/* bf16.c — bulk bfloat16 conversion (written without branches so that the compiler
 * vectorises these loops; the same results as ngd_f32_to_bf16 / ngd_bf16_to_f32). */
#include "bf16.h"

#include "impl.h"

static void decode_range(const void *src, void *dst, size_t n) {
    const uint16_t *x = src;
    float *y = dst;
    for (size_t i = 0; i < n; i++)
        y[i] = ngd_bf16_to_f32(x[i]);
}

static void encode_range(const void *src, void *dst, size_t n) {
    const float *x = src;
    uint16_t *y = dst;
    for (size_t i = 0; i < n; i++)
        y[i] = ngd_f32_to_bf16_vec(x[i]);
}

// Both directions split long arrays over the threads in blocks (SINGD's bf16 preconditioning
// rounds two d_out x d_in matrices per step; one thread left the other waiting). Short ones
// (a statistics row) never enter a parallel region: even one with a false `if` clause costs
// libgomp a team allocation per call (the row-by-row decode of a conv's g in perf).
#define BF16_BLOCK 16384

// range(src, dst, n) over n elements of ss bytes in src and ds bytes in dst
static void by_blocks(void (*range)(const void *, void *, size_t), const void *src, size_t ss,
                      void *dst, size_t ds, size_t n) {
    if (n <= 8 * (size_t)BF16_BLOCK) {
        range(src, dst, n);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (size_t b = 0; b < (n + BF16_BLOCK - 1) / BF16_BLOCK; b++)
        range((const char *)src + b * BF16_BLOCK * ss, (char *)dst + b * BF16_BLOCK * ds,
              NGD_MIN((size_t)BF16_BLOCK, n - b * BF16_BLOCK));
}

void ngd_bf16_decode(const uint16_t *src, float *dst, size_t n) {
    by_blocks(decode_range, src, sizeof *src, dst, sizeof *dst, n);
}

void ngd_bf16_encode(const float *src, uint16_t *dst, size_t n) {
    by_blocks(encode_range, src, sizeof *src, dst, sizeof *dst, n);
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
