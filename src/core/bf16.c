/* bf16.c — bulk bfloat16 conversion (written without branches so that the compiler
 * vectorises these loops; the same results as ngd_f32_to_bf16 / ngd_bf16_to_f32). */
#include "bf16.h"

#include "impl.h"

#include <stdatomic.h>
#include <time.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

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

// ---- the CPU's bf16 dot-product rate against its f32 FMA rate ----
// Some CPUs with AVX512-BF16 run vdpbf16ps at a quarter of their FMA instruction rate, half
// the FLOP rate: an Intel Xeon (family 6, model 207) without AMX measured 86 GFLOP/s for
// vdpbf16ps against 176 for vfmadd (one core, 12 independent sums each), and oneDNN's bf16
// GEMM 150-165 against sgemm's 290-310 at 2 threads; an AMD Zen 5 runs vdpbf16ps at twice the
// FMA's FLOPs. Measured once per process: 12 independent chains of each instruction, in
// turns, the best of NGD_DOT_TURNS turns each (about 2 ms in all). The choice must not
// depend on the moment: a run and its resumption must take the same kernels to give the same
// bits. With 7 turns, 200 processes on that Xeon read 0.125-0.779 (threshold 0.75: one of
// them would have chosen the bf16 kernels; test_bf16.sh's K-FAC resume once differed so); with
// 48, 800 processes read 0.18-0.56.
#if defined(__x86_64__) && defined(__GNUC__)
#define NGD_DOT_TURNS 48
#define NGD_DOT_ITERS 4096

static double dot_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// The timed loop of NGD_DOT_ITERS x 12 instructions I (vfmadd231ps or vdpbf16ps), twelve
// independent sums in zmm0..zmm11 from zmm16 and zmm17 (all zero: no denormals), written in
// assembly so that the compiler's optimisation level cannot change it: compiled at -O1 (the
// sanitizer build) the intrinsics' loop read 1.3 where -O2 read 0.50 on the same Xeon, so
// that build chose the other bf16 path, and now and then, at 0.7, the first one (test_bf16.sh's
// runs under OMP_THREAD_LIMIT then differed in their last bits)
#define DOT_LOOP(I)                                                                                \
    __asm__ volatile("vpxord %%zmm16, %%zmm16, %%zmm16\n\t"                                        \
                     "vpxord %%zmm17, %%zmm17, %%zmm17\n\t"                                        \
                     "1:\n\t" I " %%zmm16, %%zmm17, %%zmm0\n\t" I                                  \
                     " %%zmm16, %%zmm17, %%zmm1\n\t" I " %%zmm16, %%zmm17, %%zmm2\n\t" I           \
                     " %%zmm16, %%zmm17, %%zmm3\n\t" I " %%zmm16, %%zmm17, %%zmm4\n\t" I           \
                     " %%zmm16, %%zmm17, %%zmm5\n\t" I " %%zmm16, %%zmm17, %%zmm6\n\t" I           \
                     " %%zmm16, %%zmm17, %%zmm7\n\t" I " %%zmm16, %%zmm17, %%zmm8\n\t" I           \
                     " %%zmm16, %%zmm17, %%zmm9\n\t" I " %%zmm16, %%zmm17, %%zmm10\n\t" I          \
                     " %%zmm16, %%zmm17, %%zmm11\n\t"                                              \
                     "dec %0\n\t"                                                                  \
                     "jnz 1b"                                                                      \
                     : "+r"(n)                                                                     \
                     :                                                                             \
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",     \
                       "xmm9", "xmm10", "xmm11", "xmm16", "xmm17", "cc")

// Seconds for NGD_DOT_ITERS x 12 vfmadd231ps (bf16 false) or vdpbf16ps (true)
__attribute__((target("avx512f,avx512bf16"))) static double dot_turn(bool bf16) {
    long n = NGD_DOT_ITERS;
    const double t0 = dot_now();
    if (bf16)
        DOT_LOOP("vdpbf16ps");
    else
        DOT_LOOP("vfmadd231ps");
    return dot_now() - t0;
}

static double dot_ratio_measure(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bf16")) return 0.0;
    double fma = 1e30, dot = 1e30;
    for (int t = 0; t < NGD_DOT_TURNS; t++) {
        fma = NGD_MIN(fma, dot_turn(false));
        dot = NGD_MIN(dot, dot_turn(true));
    }
    // FLOPs: 32 per vfmadd231ps (16 lanes), 64 per vdpbf16ps (16 lanes x 2 pairs)
    return fma > 0.0 && dot > 0.0 ? (64.0 / dot) / (32.0 / fma) : 0.0;
}
#else
static double dot_ratio_measure(void) { return 0.0; }
#endif

static _Atomic double dot_ratio = -1.0;

double ngd_bf16_dot_ratio(void) {
    double r = atomic_load_explicit(&dot_ratio, memory_order_relaxed);
    if (r < 0.0) { // (two threads may both measure; either figure is kept)
        r = dot_ratio_measure();
        atomic_store_explicit(&dot_ratio, r, memory_order_relaxed);
    }
    return r;
}
