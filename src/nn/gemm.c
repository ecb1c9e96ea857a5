/*
 * gemm.c — the engine's one door to a GEMM backend: row-major sgemm with transpose flags
 * over libngd's ngd_f32_gemm (oneDNN's dnnl_sgemm, measured fastest f32 GEMM here,
 * docs/design.md, or its matmul primitive where that is faster), a plain loop for tiny
 * products, and the float64-accumulating reference it is tested against. No batching.
 * bf16: nn_gemm_bf16 (bf16 inputs, f32 accumulation and output) over libngd's ngd_bf16_gemm.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "nn.h"

#define AT(M, ld, t, i, j) ((t) ? (M)[(size_t)(j) * (ld) + (i)] : (M)[(size_t)(i) * (ld) + (j)])

// The reference loop of both element types: C = alpha op(A) op(B) + beta C, each dot product
// summed in double; GET(M, ld, t, i, j) reads an element as a float. No allocation (it is the
// last fallback of both GEMMs).
#define REF_GEMM_LOOP(GET)                                                                         \
    for (size_t i = 0; i < m; i++)                                                                 \
        for (size_t j = 0; j < n; j++) {                                                           \
            double s = 0;                                                                          \
            for (size_t p = 0; p < k; p++)                                                         \
                s += (double)GET(A, lda, ta, i, p) * (double)GET(B, ldb, tb, p, j);                \
            double c = beta == 0.0f ? 0.0 : (double)beta * (double)C[i * ldc + j];                 \
            C[i * ldc + j] = (float)((double)alpha * s + c);                                       \
        }

void nn_sgemm_ref(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float *A,
                  size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc) {
    REF_GEMM_LOOP(AT)
}

// Below this many multiply-adds a plain loop beats a oneDNN call (about 10 us of dispatch
// and thread wake-up per call, measured in src/core's wrapper): small attention heads and
// the tests make many such calls.
#define NN_SMALL_GEMM_MACS 16384

// C (already scaled by beta) += alpha op(A) op(B); p outer so rows of a plain B stream
static void gemm_small(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float *A,
                       size_t lda, const float *B, size_t ldb, float *C, size_t ldc) {
    for (size_t i = 0; i < m; i++) {
        float *c = C + i * ldc;
        for (size_t p = 0; p < k; p++) {
            const float a = alpha * AT(A, lda, ta, i, p);
            if (!tb) {
                const float *b = B + p * ldb;
                for (size_t j = 0; j < n; j++)
                    c[j] += a * b[j];
            } else {
                for (size_t j = 0; j < n; j++)
                    c[j] += a * B[j * ldb + p];
            }
        }
    }
}

static void zero_rows(float *C, size_t m, size_t n, size_t ldc) {
    if (ldc == n) {
        memset(C, 0, m * n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < m; i++)
        memset(C + i * ldc, 0, n * sizeof(float));
}

static atomic_uint_fast64_t flops; // nn_flop_count

uint64_t nn_flop_count(void) { return (uint64_t)atomic_load(&flops); }

void nn_flop_add(uint64_t f) { atomic_fetch_add_explicit(&flops, f, memory_order_relaxed); }

static void sgemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float *A,
                  size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc);

void nn_sgemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float *A,
              size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc) {
    if (m == 0 || n == 0) return;
    atomic_fetch_add_explicit(&flops, 2 * (uint64_t)m * n * k, memory_order_relaxed);
    sgemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

// The argument checks of both GEMMs, and C = beta·C (beta 0: zeros, never NaN·0) when there
// is no product to add (k = 0 or alpha = 0). Returns true when that finished the call.
static bool gemm_prologue(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, size_t lda,
                          size_t ldb, float beta, float *C, size_t ldc) {
    if (k == 0 || alpha == 0.0f) {
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < n; j++)
                C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return true;
    }
    NN_ASSERT(lda >= (ta ? m : k) && ldb >= (tb ? k : n) && ldc >= n);
    // oneDNN takes int64 sizes; our sizes are far below that, but say so rather than wrap
    NN_ASSERT(m < INT64_MAX && n < INT64_MAX && k < INT64_MAX && lda < INT64_MAX &&
              ldb < INT64_MAX && ldc < INT64_MAX);
    return false;
}

static void sgemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float *A,
                  size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc) {
    if (gemm_prologue(ta, tb, m, n, k, alpha, lda, ldb, beta, C, ldc)) return;
    if (m * n * k <= NN_SMALL_GEMM_MACS) {
        if (beta == 0.0f) zero_rows(C, m, n, ldc); // the loop adds into C
        if (beta != 0.0f && beta != 1.0f)
            for (size_t i = 0; i < m; i++)
                for (size_t j = 0; j < n; j++)
                    C[i * ldc + j] *= beta;
        gemm_small(ta, tb, m, n, k, alpha, A, lda, B, ldb, C, ldc);
        return;
    }
    // libngd's f32 GEMM (include/ngd.h): dnnl_sgemm, or oneDNN's matmul primitive where it is
    // faster (B transposed, few rows: the Linear layers' forward products). beta = 0: C is
    // written without being read (NaN garbage never leaks: tested over every transpose and
    // shapes from vectors to 1024, test_nn_grad), so it is not cleared
    const ngd_status st = ngd_f32_gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    NN_ASSERT(st == NGD_OK);
    (void)st;
}

// C = op(A) op(B) + 1 biasᵀ (bias NULL: the beta 0 product), C written: libngd's
// ngd_*_gemm_bias, where the matmul primitive adds the bias in its kernel (no pass setting C's
// rows to the bias, no product reading C back); libngd sets the rows and adds the product on
// its other paths (small products, k = 0, dnnl_sgemm's shapes)
static void gemm_bias(bool bf, bool ta, bool tb, size_t m, size_t n, size_t k, const void *A,
                      size_t lda, const void *B, size_t ldb, const float *bias, float *C,
                      size_t ldc) {
    if (!bias) {
        if (bf)
            nn_gemm_bf16(ta, tb, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
        else
            nn_sgemm(ta, tb, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
        return;
    }
    atomic_fetch_add_explicit(&flops, 2 * (uint64_t)m * n * k, memory_order_relaxed);
    const ngd_status st = bf ? ngd_bf16_gemm_bias(ta, tb, m, n, k, A, lda, B, ldb, bias, C, ldc)
                             : ngd_f32_gemm_bias(ta, tb, m, n, k, A, lda, B, ldb, bias, C, ldc);
    NN_ASSERT(st == NGD_OK); // (NGD_ERR_ARG: a leading dimension below its row length)
    (void)st;
}

void nn_sgemm_bias(bool ta, bool tb, size_t m, size_t n, size_t k, const float *A, size_t lda,
                   const float *B, size_t ldb, const float *bias, float *C, size_t ldc) {
    gemm_bias(false, ta, tb, m, n, k, A, lda, B, ldb, bias, C, ldc);
}

// ====== bf16 ======

// Round to nearest even, NaN kept (quietened); written without a branch so that the loop
// vectorises (16 values per AVX-512 instruction). Identical to libngd's ngd_f32_to_bf16.
// Arrays of at least ENC_PAR_MIN numbers are split over the threads in blocks (a Linear
// rounds its W every forward pass: 0.67 M numbers a step for the mlp, one thread working
// while the other waited), unless the caller is already in a parallel region; shorter ones
// never enter one (even a false `if` clause costs libgomp a team per call).
#define ENC_BLOCK   16384
#define ENC_PAR_MIN (4 * ENC_BLOCK)

static void encode_range(const float *x, uint16_t *y, size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] = nn_to_bf16(x[i]);
}

void nn_bf16_encode(const float *x, uint16_t *y, size_t n) {
#ifdef _OPENMP
    if (n >= ENC_PAR_MIN && !omp_in_parallel() && omp_get_max_threads() > 1) {
        const size_t nb = (n + ENC_BLOCK - 1) / ENC_BLOCK;
#pragma omp parallel for schedule(static)
        for (size_t b = 0; b < nb; b++)
            encode_range(x + b * ENC_BLOCK, y + b * ENC_BLOCK,
                         (n - b * ENC_BLOCK < ENC_BLOCK ? n - b * ENC_BLOCK : ENC_BLOCK));
        return;
    }
#endif
    encode_range(x, y, n);
}

void nn_bf16_decode(const uint16_t *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] = nn_from_bf16(x[i]);
}

// Rows of a row-major matrix (rows, cols) with leading dimensions lds / ldd.
void nn_bf16_encode_rows(const float *x, size_t lds, uint16_t *y, size_t ldd, size_t rows,
                         size_t cols) {
    if (lds == cols && ldd == cols) {
        nn_bf16_encode(x, y, rows * cols);
        return;
    }
    for (size_t r = 0; r < rows; r++)
        nn_bf16_encode(x + r * lds, y + r * ldd, cols);
}

bool nn_bf16_native(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

#define ATH(M, ld, t, i, j) nn_from_bf16(AT(M, ld, t, i, j))

void nn_gemm_bf16_ref(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                      const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, float beta,
                      float *C, size_t ldc) {
    REF_GEMM_LOOP(ATH)
}

void nn_gemm_bf16_bias(bool ta, bool tb, size_t m, size_t n, size_t k, const uint16_t *A,
                       size_t lda, const uint16_t *B, size_t ldb, const float *bias, float *C,
                       size_t ldc) {
    gemm_bias(true, ta, tb, m, n, k, A, lda, B, ldb, bias, C, ldc);
}

void nn_gemm_bf16(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const uint16_t *A,
                  size_t lda, const uint16_t *B, size_t ldb, float beta, float *C, size_t ldc) {
    if (m == 0 || n == 0) return;
    atomic_fetch_add_explicit(&flops, 2 * (uint64_t)m * n * k, memory_order_relaxed);
    if (gemm_prologue(ta, tb, m, n, k, alpha, lda, ldb, beta, C, ldc)) return;
    // libngd's bf16 GEMM (include/ngd.h): the matmul primitive (AMX or AVX512-BF16), or f32
    // copies where the CPU has no bf16 kernel
    const ngd_status st = ngd_bf16_gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    NN_ASSERT(st == NGD_OK);
    (void)st;
}
