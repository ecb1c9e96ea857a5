/*
 * test_bf16.c — `--precision bf16`: the conversions, the bf16 GEMM (every transpose the
 * layers use; oneDNN's matmul primitive, its bf16 GEMM and the converting path; the public
 * door and the per-thread primitive caches) and the bf16
 * Linear / Conv2d layers, against plain float64 code.
 *
 * Error bounds. bf16 keeps 8 significant bits: rounding a value x gives x(1 + d), |d| <= u
 * = 2^-8. A product of two rounded inputs is then a·b·(1 + e), |e| <= 2u + u² (exact in
 * f32), and summing k such products in f32 adds at most γ_k ≈ k·2^-24 relative to Σ|a||b|.
 * So each output element of a bf16 GEMM of float inputs obeys
 *     |C - C64| <= (2u + u² + k·2^-24·(1 + slack)) · |alpha| Σ_p |a_ip||b_pj| + rounding of C,
 * and against float64 arithmetic on the already-rounded inputs only the k·2^-24 term is
 * left. Both are checked (the second shows the accumulation is f32, not bf16).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "bf16.h"
#include "blas.h"
#include "harness.h"
#include "nn.h"

// The two bf16 GEMMs under test: the engine's (src/nn) and libngd's (src/core)
typedef void (*gemm16_fn)(bool, bool, size_t, size_t, size_t, float, const uint16_t *, size_t,
                          const uint16_t *, size_t, float, float *, size_t);
static gemm16_fn g_gemm = nn_gemm_bf16;

static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// The independent reference of round-to-nearest-even: the two bf16 neighbours of x (its
// truncation and the next value up in magnitude), compared in float64.
static uint16_t ref_round(float x) {
    if (isnan(x)) return 0; // checked separately
    const uint32_t u = f_bits(x);
    const uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    const double dl = fabs((double)x - (double)bits_f((uint32_t)lo << 16));
    if ((lo & 0x7f80u) == 0x7f80u) return lo; // inf stays inf
    // the upper neighbour in magnitude; above the largest finite value it is inf, which
    // IEEE rounding picks from halfway (2^128 - 2^119) on
    const double vh = (hi & 0x7f80u) == 0x7f80u ? ldexp(1.0, 128) * (x < 0 ? -1 : 1)
                                                : (double)bits_f((uint32_t)hi << 16);
    const double dh = fabs((double)x - vh);
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1u) ? hi : lo; // tie: even
}

static void encode_should_round_to_nearest_even(void) {
    trng r = {1};
    enum { N = 200000 };
    float *x = malloc(N * sizeof *x);
    uint16_t *y = malloc(N * sizeof *y);
    for (size_t i = 0; i < N; i++) {
        // random bit patterns (all exponents), random values, exact ties, edge cases
        uint32_t u = (uint32_t)(tu(&r) * 4294967296.0);
        if (i % 4 == 1) u = f_bits((float)(tu(&r) * 8 - 4));
        if (i % 4 == 2) u = (u & 0xffff0000u) | 0x8000u; // a tie
        if (i % 4 == 3) u = (u & 0xffff0000u) | (i % 8 == 3 ? 0x7fffu : 0x8001u);
        x[i] = bits_f(u);
    }
    const float edge[] = {0.0f,   -0.0f,   INFINITY, -INFINITY,  3.4028235e38f, -3.4028235e38f,
                          1e-40f, -1e-45f, 1.0f,     1.00390625f /* 1 + 2^-8: tie, even: 1 */};
    memcpy(x, edge, sizeof edge);
    nn_bf16_encode(x, y, N);
    size_t bad = 0, nans = 0;
    for (size_t i = 0; i < N; i++) {
        if (isnan(x[i])) {
            nans++;
            // NaN stays NaN (quiet bit set), sign kept
            const float back = bits_f((uint32_t)y[i] << 16);
            if (!isnan(back) || !(y[i] & 0x40u) || (y[i] >> 15) != (f_bits(x[i]) >> 31)) bad++;
            continue;
        }
        if (y[i] != ref_round(x[i])) {
            if (bad < 5)
                fprintf(stderr, "    x = %a (0x%08x): got 0x%04x want 0x%04x\n", (double)x[i],
                        f_bits(x[i]), y[i], ref_round(x[i]));
            bad++;
        }
    }
    CHECK(bad == 0);
    CHECK(nans > 100);                         // random bit patterns include NaNs
    CHECK(y[9] == 0x3f80u);                    // 1 + 2^-8 ties to 1
    CHECK(y[4] == 0x7f80u && y[5] == 0xff80u); // FLT_MAX rounds to inf
    CHECK(y[1] == 0x8000u && y[6] == 0x0000u + (uint16_t)(f_bits(1e-40f) >> 16)); // subnormal kept
    // decoding is exact: bf16 -> f32 -> bf16 is the identity on every non-NaN pattern
    size_t rt = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        const uint16_t hv = (uint16_t)h;
        float f;
        uint16_t back;
        nn_bf16_decode(&hv, &f, 1);
        nn_bf16_encode(&f, &back, 1);
        if (!isnan(f) && back != hv) rt++;
        if (f_bits(f) != (h << 16)) rt++;
    }
    CHECK(rt == 0);
    free(x), free(y);
}

// The rows-with-leading-dimension variant touches only its rows x cols.
static void encode_rows_should_keep_padding(void) {
    float x[3 * 5];
    uint16_t y[3 * 7];
    for (int i = 0; i < 15; i++)
        x[i] = (float)i + 0.25f;
    for (int i = 0; i < 21; i++)
        y[i] = 0xabcd;
    nn_bf16_encode_rows(x, 5, y, 7, 3, 4);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 7; c++) {
            const uint16_t want = c < 4 ? (uint16_t)(f_bits(x[r * 5 + c]) >> 16) : 0xabcd;
            CHECK(y[r * 7 + c] == want); // (i + 0.25 with i < 15 is exact in bf16 up to 7.25)
        }
}

// One bf16 GEMM case: float inputs rounded to bf16, checked against float64 products of the
// original inputs and of the rounded ones, with the bounds of the header comment.
static size_t gemm_case(trng *r, bool ta, bool tb, size_t m, size_t n, size_t k, size_t pad,
                        float alpha, float beta) {
    const size_t lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
    const size_t na = (ta ? k : m) * lda, nb = (tb ? n : k) * ldb, nc = m * ldc;
    float *A = malloc(na * sizeof *A), *B = malloc(nb * sizeof *B), *C0 = malloc(nc * 4);
    float *C = malloc(nc * 4), *R = malloc(nc * 4);
    uint16_t *A16 = malloc(na * 2), *B16 = malloc(nb * 2);
    tfill(r, A, na, -1, 1);
    tfill(r, B, nb, -2, 2);
    tfill(r, C0, nc, -1, 1);
    nn_bf16_encode(A, A16, na);
    nn_bf16_encode(B, B16, nb);
    memcpy(C, C0, nc * 4);
    if (beta == 0.0f)
        for (size_t i = 0; i < nc; i++)
            C[i] = NAN; // never read
    g_gemm(ta, tb, m, n, k, alpha, A16, lda, B16, ldb, beta, C, ldc);
    memcpy(R, C0, nc * 4);
    nn_gemm_bf16_ref(ta, tb, m, n, k, alpha, A16, lda, B16, ldb, beta, R, ldc);
    const double u = ldexp(1.0, -8), acc = (double)k * ldexp(1.0, -24) * 1.5;
    size_t bad = 0;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0, s16 = 0, mag = 0;
            for (size_t p = 0; p < k; p++) {
                const size_t ia = ta ? p * lda + i : i * lda + p;
                const size_t ib = tb ? j * ldb + p : p * ldb + j;
                s += (double)A[ia] * (double)B[ib];
                s16 += (double)bits_f((uint32_t)A16[ia] << 16) *
                       (double)bits_f((uint32_t)B16[ib] << 16);
                mag += fabs((double)A[ia] * (double)B[ib]);
            }
            const double c0 = beta == 0.0f ? 0.0 : (double)beta * (double)C0[i * ldc + j];
            const double want = (double)alpha * s + c0, want16 = (double)alpha * s16 + c0;
            const double got = (double)C[i * ldc + j];
            const double cround = ldexp(1.0, -23) * (fabs(want16) + fabs(c0)); // f32 of C
            const double b64 = (2 * u + u * u + acc) * fabs((double)alpha) * mag * 1.02 + cround;
            const double b16 = acc * fabs((double)alpha) * mag * 1.02 + cround;
            const bool ok = fabs(got - want) <= b64 && fabs(got - want16) <= b16 + 1e-30 &&
                            fabs((double)R[i * ldc + j] - want16) <= cround + 1e-30;
            if (!ok) {
                if (bad < 3)
                    fprintf(stderr,
                            "    ta %d tb %d %zux%zux%zu (%zu,%zu): got %.9g want %.9g (bf16 "
                            "inputs %.9g), bounds %.3g %.3g ref %.9g\n",
                            ta, tb, m, n, k, i, j, got, want, want16, b64, b16,
                            (double)R[i * ldc + j]);
                bad++;
            }
        }
    // padding of C untouched
    if (beta != 0.0f)
        for (size_t i = 0; i < m; i++)
            for (size_t j = n; j < ldc; j++)
                if (f_bits(C[i * ldc + j]) != f_bits(C0[i * ldc + j])) bad++;
    free(A), free(B), free(C0), free(C), free(R), free(A16), free(B16);
    return bad;
}

// (the last four, and {64, 160, 784}, {784, 64, 128}: 2^21 multiply-adds or more on 64 rows or
// more, which two threads without AMX take as two halves of C's rows; 513 leaves a half of 257,
// whose last row goes apart)
static const size_t DIMS[][3] = {{1, 1, 1},       {7, 13, 5},     {33, 1, 9},      {64, 70, 3},
                                 {5, 64, 65},     {130, 70, 40},  {3, 200, 90},    {257, 9, 33},
                                 {64, 160, 784},  {784, 64, 128}, {24, 100, 1000}, {513, 96, 64},
                                 {130, 130, 130}, {65, 300, 120}, {200, 64, 200},  {40, 545, 70}};

static void run_gemm_grid(unsigned seed) {
    trng r = {seed};
    size_t bad = 0, runs = 0;
    for (size_t t = 0; t < sizeof DIMS / sizeof DIMS[0]; t++)
        for (int layout = 0; layout < 4; layout++)
            for (int bc = 0; bc < 3; bc++) {
                const float alpha = bc == 2 ? -0.75f : 1.0f;
                const float beta = bc == 0 ? 0.0f : bc == 1 ? 1.0f : 0.5f;
                bad += gemm_case(&r, layout & 1, layout & 2, DIMS[t][0], DIMS[t][1], DIMS[t][2],
                                 (size_t)(t % 3) * 3, alpha, beta);
                runs++;
            }
    CHECK(runs == 4 * 3 * sizeof DIMS / sizeof DIMS[0]);
    CHECK(bad == 0);
}

static void gemm_bf16_should_meet_the_bf16_bound_for_all_transposes(void) { run_gemm_grid(5); }

// The path for CPUs without bf16 kernels (converting to f32) under the same bounds.
static void gemm_bf16_converting_path_should_meet_the_same_bound(void) {
    ngd_gemm_bf16_path(NGD_BF16_PATH_CONVERT);
    run_gemm_grid(6);
    ngd_gemm_bf16_path(NGD_BF16_PATH_MATMUL);
}

// The bf16 dot-product probe: measured once (the same figure every call), 0 exactly where the
// CPU has no AVX512-BF16, else a rate ratio within reason; ngd_bf16_dot_slow reports that
// figure and says slow only below NGD_BF16_SLOW; the default GEMM path follows it, and
// NGD_BF16_GEMM overrides it
static void bf16_dot_probe_should_choose_the_path(void) {
    const double r = ngd_bf16_dot_ratio();
    double r2 = -1.0;
    const bool slow = ngd_bf16_dot_slow(&r2);
    printf("  bf16 dot products at %.3fx the f32 FMAs' FLOP rate: %s\n", r,
           slow ? "slow (products in f32)" : "not slow");
    CHECK(r2 == r && ngd_bf16_dot_ratio() == r);
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    CHECK((r == 0.0) ==
          !(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16")));
#endif
    CHECK(r == 0.0 || (r > 0.05 && r < 20.0));
    CHECK(!slow || (r > 0.0 && r < NGD_BF16_SLOW));
    const char *was = getenv("NGD_BF16_GEMM");
    char *keep = was ? strdup(was) : NULL;
    unsetenv("NGD_BF16_GEMM");
    CHECK(ngd_gemm_bf16_path_default() == (slow ? NGD_BF16_PATH_CONVERT : NGD_BF16_PATH_MATMUL));
    static const char *names[] = {"matmul", "gemm", "convert"};
    for (int i = 0; i < 3; i++) {
        setenv("NGD_BF16_GEMM", names[i], 1);
        CHECK(ngd_gemm_bf16_path_default() == (ngd_bf16_path)i);
    }
    if (keep)
        setenv("NGD_BF16_GEMM", keep, 1);
    else
        unsetenv("NGD_BF16_GEMM");
    free(keep);
}

// oneDNN's AVX512-BF16 GEMM (the path before the matmul primitive, NGD_BF16_GEMM=gemm)
static void gemm_bf16_gemm_path_should_meet_the_same_bound(void) {
    ngd_gemm_bf16_path(NGD_BF16_PATH_GEMM);
    run_gemm_grid(9);
    ngd_gemm_bf16_path(NGD_BF16_PATH_MATMUL);
}

// ngd_f32_gemm_bias and ngd_bf16_gemm_bias (a Linear's forward): over a NaN-filled C (never
// read), within k·2^-23 Σ|a||b| + 2^-23|C| of float64 on the same inputs, as is setting C's
// rows to the bias and adding the product (ngd_*_gemm, beta 1), whichever path runs the shape
// (the matmul primitive with its bias; dnnl_sgemm for f32 products with k < 32 or A
// transposed; the small loop; k % 32 = 31; m % 32 = 1; k = 0). Not bit for bit: at k = 784
// the primitive adds the bias at another point of its sums than the sum post-op adds C (a
// third of the elements differ in the last bits). A NULL bias is the beta 0 product, bit for
// bit; bad arguments are refused.
static void gemm_bias_should_equal_the_bias_rows_plus_the_product(void) {
    static const size_t D[][3] = {{128, 512, 784}, {9, 40, 300}, {64, 192, 64}, {33, 70, 31},
                                  {65, 64, 256},   {3, 5, 7},    {20, 30, 0},   {130, 96, 95}};
    trng r = {41};
    size_t bad = 0, cases = 0;
    for (size_t t = 0; t < sizeof D / sizeof D[0]; t++)
        for (int layout = 0; layout < 4; layout++)
            for (int bf = 0; bf < 2; bf++) {
                const bool ta = layout & 1, tb = layout & 2;
                const size_t m = D[t][0], n = D[t][1], k = D[t][2], ldc = n + 3;
                const size_t lda = (ta ? m : k) + 1, ldb = (tb ? k : n) + 2;
                const size_t na = (ta ? k : m) * lda + 1, nb = (tb ? n : k) * ldb + 1;
                float *A = malloc(na * sizeof(float)), *B = malloc(nb * sizeof(float));
                float *bias = malloc(n * sizeof(float)), *C1 = malloc(m * ldc * sizeof(float)),
                      *C2 = malloc(m * ldc * sizeof(float));
                uint16_t *A16 = malloc(na * 2), *B16 = malloc(nb * 2);
                tfill(&r, A, na, -1, 1), tfill(&r, B, nb, -1, 1), tfill(&r, bias, n, -2, 2);
                nn_bf16_encode(A, A16, na), nn_bf16_encode(B, B16, nb);
                if (bf) { // the reference reads the rounded inputs
                    nn_bf16_decode(A16, A, na), nn_bf16_decode(B16, B, nb);
                }
                for (size_t i = 0; i < m * ldc; i++)
                    C1[i] = NAN, C2[i] = -7.0f; // (C2's padding: compared below)
                for (size_t i = 0; i < m; i++)
                    memcpy(C2 + i * ldc, bias, n * sizeof(float));
                ngd_status s1, s2;
                if (bf) {
                    s1 = ngd_bf16_gemm_bias(ta, tb, m, n, k, A16, lda, B16, ldb, bias, C1, ldc);
                    s2 = ngd_bf16_gemm(ta, tb, m, n, k, 1.0f, A16, lda, B16, ldb, 1.0f, C2, ldc);
                } else {
                    s1 = ngd_f32_gemm_bias(ta, tb, m, n, k, A, lda, B, ldb, bias, C1, ldc);
                    s2 = ngd_f32_gemm(ta, tb, m, n, k, 1.0f, A, lda, B, ldb, 1.0f, C2, ldc);
                }
                CHECK(s1 == NGD_OK && s2 == NGD_OK);
                size_t diff = 0, far = 0;
                for (size_t i = 0; i < m; i++) {
                    for (size_t j = 0; j < n; j++) {
                        double sum = bias[j], mag = 0;
                        for (size_t p = 0; p < k; p++) {
                            const double a = ta ? A[p * lda + i] : A[i * lda + p],
                                         b = tb ? B[j * ldb + p] : B[p * ldb + j];
                            sum += a * b, mag += fabs(a * b);
                        }
                        const double bound =
                            ldexp((double)k + 1, -23) * mag + ldexp(fabs(sum), -23) + 1e-30;
                        far += !(fabs((double)C1[i * ldc + j] - sum) <= bound) +
                               !(fabs((double)C2[i * ldc + j] - sum) <= bound);
                    }
                    for (size_t j = n; j < ldc; j++) // (C's padding untouched)
                        diff += !isnan(C1[i * ldc + j]);
                }
                if (diff || far) {
                    if (bad < 4)
                        fprintf(stderr, "    %s ta %d tb %d %zux%zux%zu: %zu differ, %zu far\n",
                                bf ? "bf16" : "f32", ta, tb, m, n, k, diff, far);
                    bad++;
                }
                cases++;
                // no bias: the beta 0 product
                for (size_t i = 0; i < m * ldc; i++)
                    C1[i] = NAN, C2[i] = NAN;
                if (bf) {
                    s1 = ngd_bf16_gemm_bias(ta, tb, m, n, k, A16, lda, B16, ldb, NULL, C1, ldc);
                    s2 = ngd_bf16_gemm(ta, tb, m, n, k, 1.0f, A16, lda, B16, ldb, 0.0f, C2, ldc);
                } else {
                    s1 = ngd_f32_gemm_bias(ta, tb, m, n, k, A, lda, B, ldb, NULL, C1, ldc);
                    s2 = ngd_f32_gemm(ta, tb, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C2, ldc);
                }
                CHECK(s1 == NGD_OK && s2 == NGD_OK);
                for (size_t i = 0; i < m; i++)
                    for (size_t j = 0; j < n; j++)
                        bad += f_bits(C1[i * ldc + j]) != f_bits(C2[i * ldc + j]);
                free(A), free(B), free(bias), free(C1), free(C2), free(A16), free(B16);
            }
    CHECK(cases == 64);
    CHECK(bad == 0);
    float A[12] = {0}, B[12] = {0}, b[4] = {0}, C[12];
    uint16_t A16[12] = {0}, B16[12] = {0};
    CHECK(ngd_f32_gemm_bias(false, false, 3, 4, 3, NULL, 3, B, 4, b, C, 4) == NGD_ERR_ARG);
    CHECK(ngd_f32_gemm_bias(false, false, 3, 4, 3, A, 2, B, 4, b, C, 4) == NGD_ERR_ARG);
    CHECK(ngd_f32_gemm_bias(false, false, 3, 4, 3, A, 3, B, 4, b, NULL, 4) == NGD_ERR_ARG);
    CHECK(ngd_bf16_gemm_bias(false, true, 3, 4, 3, A16, 3, B16, 2, b, C, 4) == NGD_ERR_ARG);
    CHECK(ngd_bf16_gemm_bias(false, false, 3, 4, 3, A16, 3, B16, 4, b, C, 3) == NGD_ERR_ARG);
    CHECK(ngd_bf16_gemm_bias(false, false, 0, 4, 3, NULL, 3, NULL, 4, b, NULL, 4) == NGD_OK);
}

// ngd_syrk_bf16_lower (the bf16 statistics' chunks of wide factors): C's lower triangle and
// diagonal against the float64 product of the same bf16 values (beta 0 over NaN, and beta !=
// 0); above the diagonal only the block rows' diagonal blocks may be written (as the product
// with that C's values), so most of the strictly upper triangle stays as it was: 700 rows go
// by three block rows, which leave two thirds of it.
static void syrk_bf16_lower_should_write_the_lower_triangle_only(void) {
    const size_t n = 700, k = 130;
    const float mark = 12345.0f; // (the upper triangle's values on entry)
    trng r = {23};
    float *f = malloc(n * k * 4), *C = malloc(n * n * 4), *C0 = malloc(n * n * 4);
    uint16_t *A = malloc(n * k * 2);
    tfill(&r, f, n * k, -1, 1);
    nn_bf16_encode(f, A, n * k);
    tfill(&r, C0, n * n, -1, 1);
    ngd_syrk_bf16_lower(false, 0, k, 0.5f, A, k, 0.0f, C, 1); // (no rows: nothing; it divided by 0)
    for (int c = 0; c < 4; c++) {
        const bool ta = c & 1, b0 = c & 2;
        const float beta = b0 ? 0.0f : -0.5f;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++)
                C[i * n + j] = j > i ? mark : b0 ? NAN : C0[i * n + j];
        ngd_syrk_bf16_lower(ta, n, k, 0.5f, A, ta ? n : k, beta, C, n);
        double maxref = 0, maxerr = 0;
        size_t kept = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++) {
                if (j > i && C[i * n + j] == mark) {
                    kept++;
                    continue;
                }
                double d = 0;
                for (size_t p = 0; p < k; p++)
                    d += (double)bits_f((uint32_t)A[ta ? p * n + i : i * k + p] << 16) *
                         (double)bits_f((uint32_t)A[ta ? p * n + j : j * k + p] << 16);
                const double c0 = j > i ? (double)mark : (double)C0[i * n + j];
                const double want = 0.5 * d + (b0 ? 0.0 : -0.5 * c0);
                maxref = fmax(maxref, fabs(j > i ? 0.5 * d : want));
                maxerr = fmax(maxerr, fabs((double)C[i * n + j] - want));
            }
        // f32 accumulation of 130 products of entries in [-1, 1] (as the test below); the
        // written upper entries' beta C term is 6172.5, whose f32 ulp is 5e-4
        CHECK_MSG(maxerr <= 1e-5 * maxref + (b0 ? 0.0 : 1e-3), "ta %d beta %g: error %.3g of %.3g",
                  ta, (double)beta, maxerr, maxref);
        CHECK_MSG(kept >= n * (n - 1) / 2 * 6 / 10, "ta %d: %zu upper entries kept", ta, kept);
    }
    free(f), free(C), free(C0), free(A);
}

// ngd_syrk_bf16 (SINGD's bf16 K Kᵀ and KᵀK) against the float64 product of the same bf16
// operands, for op(A) = A and Aᵀ, below and above its block-row threshold (1024 rows: 1040 x
// 520 takes the block rows at one thread, the 2 x 2 blocks at two; 1100 x 130 is one product
// there: A has fewer than half as many columns as rows), beta = 0 over a
// NaN-filled C and beta != 0 over a symmetric C, on the matmul and the convert paths (the
// default where bf16 products are slow); C exactly symmetric everywhere (alpha 0.3 folded
// into one operand of a single product had left C[i][j] and C[j][i] apart), its
// multiply-adds counted (the 2 x 2 blocks at two threads had gone uncounted).
// Above 1024 rows every 7th row is checked against float64 (all of C for symmetry).
static void syrk_bf16_should_match_the_reference_and_be_symmetric(void) {
    const size_t dims[][2] = {{300, 200}, {513, 130}, {700, 350}, {1040, 520}, {1100, 130}};
    trng r = {21};
    for (size_t t = 0; t < 4 * sizeof dims / sizeof dims[0]; t++) {
        // each shape at 2 threads and at 1 (two threads without AMX: 2 x 2 blocks from 256),
        // by both paths
        const int th = t % 2 ? 1 : 2, before = th_set_threads(th);
        ngd_gemm_bf16_path((t / 2) % 2 ? NGD_BF16_PATH_CONVERT : NGD_BF16_PATH_MATMUL);
        const size_t n = dims[t / 4][0], k = dims[t / 4][1], step = n >= 1024 ? 7 : 1;
        float *f = malloc(n * k * 4), *C = malloc(n * n * 4), *C0 = malloc(n * n * 4);
        uint16_t *A = malloc(n * k * 2);
        tfill(&r, f, n * k, -1, 1);
        nn_bf16_encode(f, A, n * k);
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j <= i; j++)
                C0[i * n + j] = C0[j * n + i] = (float)(2.0 * tu(&r) - 1.0);
        for (int c = 0; c < 4; c++) {
            const bool ta = c & 1, b0 = c & 2;
            const float beta = b0 ? 0.0f : -0.5f;
            for (size_t i = 0; i < n * n; i++)
                C[i] = b0 ? NAN : C0[i];
            // ta: the stored A is k x n (the same values read as its transpose)
            const uint64_t f0 = ngd_gemm_flop_count();
            ngd_syrk_bf16(ta, n, k, 0.3f, A, ta ? n : k, beta, C, n);
            const uint64_t fl = ngd_gemm_flop_count() - f0;
            CHECK_MSG(fl >= (uint64_t)n * n * k && fl <= 2 * (uint64_t)n * n * k,
                      "n %zu k %zu threads %d: %llu multiply-adds counted", n, k, th,
                      (unsigned long long)fl);
            double maxref = 0, maxerr = 0;
            size_t asym = 0;
            for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < i; j++)
                    asym += f_bits(C[i * n + j]) != f_bits(C[j * n + i]);
            for (size_t i = 0; i < n; i += (i + step < n ? step : 1)) // (and the last row)
                for (size_t j = 0; j < n; j++) {
                    double d = 0;
                    for (size_t p = 0; p < k; p++) {
                        const size_t ia = ta ? p * n + i : i * k + p,
                                     ja = ta ? p * n + j : j * k + p;
                        d += (double)bits_f((uint32_t)A[ia] << 16) *
                             (double)bits_f((uint32_t)A[ja] << 16);
                    }
                    const double want = 0.3 * d + (b0 ? 0.0 : -0.5 * (double)C0[i * n + j]);
                    maxref = fmax(maxref, fabs(want));
                    maxerr = fmax(maxerr, fabs((double)C[i * n + j] - want));
                }
            // f32 accumulation of k <= 520 products of entries in [-1, 1]: 1e-5 of the
            // largest output leaves ~10x headroom (a NaN fails it)
            CHECK(maxerr <= 1e-5 * maxref);
            CHECK_MSG(asym == 0, "n %zu k %zu ta %d threads %d: %zu pairs differ", n, k, ta, th,
                      asym);
        }
        th_set_threads(before);
        ngd_gemm_bf16_path(NGD_BF16_PATH_MATMUL); // (the other tests' setting)
        free(f), free(C), free(C0), free(A);
    }
}

// A client's worker threads made and joined one after another: each thread that runs a
// product keeps oneDNN's primitives in a cache of its own, freed when it ends (they stayed
// until the process ended: about 150 KiB a thread, a review's program grew 51 MB over 500
// threads). A product that two threads split runs on an OpenMP worker of the client thread's
// own team too, which ends with it.
static void *one_product(void *arg) {
    float *C = arg;
    uint16_t *A = malloc(128 * 256 * 2), *B = malloc(256 * 256 * 2);
    for (size_t i = 0; i < 128 * 256; i++)
        A[i] = 0x3f80; // 1.0
    for (size_t i = 0; i < 256 * 256; i++)
        B[i] = 0x3f00; // 0.5
    ngd_bf16_gemm(false, false, 128, 256, 256, 1.0f, A, 256, B, 256, 0.0f, C, 256);
    free(A), free(B);
    return NULL;
}

static void thread_caches_should_be_freed_when_threads_end(void) {
    float *C = malloc(128 * 256 * sizeof(float));
    one_product(C); // (this thread's cache, and its workers')
    const size_t before = ngd_blas_thread_caches();
    size_t ok = 0;
    for (int i = 0; i < 20; i++) {
        pthread_t th;
        C[0] = 0.0f;
        if (pthread_create(&th, NULL, one_product, C) != 0) break;
        pthread_join(th, NULL);
        ok += C[0] == 128.0f && C[128 * 256 - 1] == 128.0f; // (256 products of 1 · 0.5)
    }
    CHECK(ok == 20);
    // (a worker of an ended thread's team ends a moment after it: allow a few in flight)
    size_t after = ngd_blas_thread_caches();
    for (int w = 0; w < 100 && after > before; w++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        after = ngd_blas_thread_caches();
    }
    CHECK_MSG(after <= before + 2, "caches %zu before 20 threads, %zu after", before, after);
    free(C);
}

// The public door (ngd.h): bad arguments are NGD_ERR_ARG and leave C alone; a product is
// not counted in ngd_gemm_flop_count (that counts libngd's own work) and equals the
// internal GEMM's bit for bit.
static void public_bf16_gemm_should_check_arguments_and_not_count(void) {
    const size_t m = 40, n = 50, k = 60;
    uint16_t *A = malloc(m * k * 2), *B = malloc(k * n * 2);
    float *C = malloc(m * n * 4), *D = malloc(m * n * 4), *f = malloc(k * n * 4);
    trng r = {11};
    tfill(&r, f, k * n, -1, 1);
    nn_bf16_encode(f, A, m * k);
    nn_bf16_encode(f, B, k * n);
    for (size_t i = 0; i < m * n; i++)
        C[i] = 7.0f;
    CHECK(ngd_bf16_gemm(false, false, m, n, k, 1.0f, NULL, k, B, n, 0.0f, C, n) == NGD_ERR_ARG);
    CHECK(ngd_bf16_gemm(false, false, m, n, k, 1.0f, A, k, B, n, 0.0f, NULL, n) == NGD_ERR_ARG);
    CHECK(ngd_bf16_gemm(false, false, m, n, k, 1.0f, A, k - 1, B, n, 0.0f, C, n) == NGD_ERR_ARG);
    CHECK(ngd_bf16_gemm(true, false, m, n, k, 1.0f, A, m - 1, B, n, 0.0f, C, n) == NGD_ERR_ARG);
    CHECK(ngd_bf16_gemm(false, true, m, n, k, 1.0f, A, k, B, k - 1, 0.0f, C, n) == NGD_ERR_ARG);
    CHECK(ngd_bf16_gemm(false, false, m, n, k, 1.0f, A, k, B, n, 0.0f, C, n - 1) == NGD_ERR_ARG);
    CHECK(C[0] == 7.0f && C[m * n - 1] == 7.0f);
    CHECK(ngd_bf16_gemm(false, false, 0, n, k, 1.0f, NULL, k, NULL, n, 0.0f, NULL, n) == NGD_OK);
    const uint64_t f0 = ngd_gemm_flop_count();
    CHECK(ngd_bf16_gemm(false, false, m, n, k, 1.0f, A, k, B, n, 0.0f, C, n) == NGD_OK);
    CHECK(ngd_gemm_flop_count() == f0);
    ngd_gemm_bf16(false, false, m, n, k, 1.0f, A, k, B, n, 0.0f, D, n);
    CHECK(ngd_gemm_flop_count() - f0 == 2ull * m * n * k);
    CHECK(memcmp(C, D, m * n * 4) == 0);
    free(A), free(B), free(C), free(D), free(f);
}

// ngd_gemm_bf16 of A (m x k) and op(B) (tb: B stored n x k) against the float64 reference of
// the same bf16 inputs: the elements off by more than the f32 accumulation of k products allows
static size_t product_mismatches(const uint16_t *A, const uint16_t *B, size_t m, size_t n, size_t k,
                                 bool tb) {
    float *C = malloc(m * n * 4), *R = malloc(m * n * 4);
    ngd_gemm_bf16(false, tb, m, n, k, 1.0f, A, k, B, tb ? k : n, 0.0f, C, n);
    nn_gemm_bf16_ref(false, tb, m, n, k, 1.0f, A, k, B, tb ? k : n, 0.0f, R, n);
    size_t bad = 0;
    for (size_t j = 0; j < m * n; j++)
        if (fabs((double)C[j] - (double)R[j]) > 1e-5 * (double)k) bad++;
    free(C), free(R);
    return bad;
}

// Product number i (m, n, k from the index, every one above the small-loop size; distinct for
// i < 120)
static size_t cache_case(const uint16_t *A, const uint16_t *B, size_t i) {
    return product_mismatches(A, B, 24 + i % 24, 40 + (i * 7) % 40, 32 + (i * 13) % 64, i % 2);
}

// Shapes on which oneDNN 2.6's AMX matmul kernel executes an illegal instruction at one
// thread (k % 32 == 31 with these m, n): they must take the other kernel and be right
static void k_31_mod_32_shapes_should_not_crash(void) {
    const size_t shapes[][3] = {{43, 77, 63}, {70, 9, 63}, {70, 260, 2047}};
    uint16_t *A = malloc(70 * 2047 * 2), *B = malloc(2047 * 260 * 2);
    float *f = malloc(2047 * 260 * 4);
    trng r = {13};
    tfill(&r, f, 2047 * 260, -1, 1);
    nn_bf16_encode(f, A, 70 * 2047);
    nn_bf16_encode(f, B, 2047 * 260);
    const int nt = th_set_threads(1);
    size_t bad = 0;
    for (size_t t = 0; t < 3; t++)
        bad += product_mismatches(A, B, shapes[t][0], shapes[t][1], shapes[t][2], false);
    th_set_threads(nt);
    CHECK(bad == 0);
    free(A), free(B), free(f);
}

// Each thread keeps the primitives of its last 64 shapes: two threads running different
// shapes at once, the same shapes outside a parallel region and at another thread count
// (other keys), and 100 shapes on one thread (evictions, then the evicted made again).
static void matmul_cache_should_serve_many_shapes_and_threads(void) {
    const size_t kmax = 96, nmax = 80, mmax = 48;
    uint16_t *A = malloc(mmax * kmax * 2), *B = malloc(kmax * nmax * 2);
    float *f = malloc(kmax * nmax * 4);
    trng r = {12};
    tfill(&r, f, kmax * nmax, -1, 1);
    nn_bf16_encode(f, A, mmax * kmax);
    nn_bf16_encode(f, B, kmax * nmax);
    size_t bad = 0;
    for (int round = 0; round < 2; round++) {
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic) num_threads(2) reduction(+ : bad)
#endif
        for (int s = 0; s < 80; s++)
            bad += cache_case(A, B, (size_t)(s % 40));
        const int nt = th_set_threads(round ? 1 : 0);
        for (size_t i = 0; i < 100; i++)
            bad += cache_case(A, B, i);
        th_set_threads(nt);
    }
    CHECK(bad == 0);
    free(A), free(B), free(f);
}

// The converting path's operands beyond the 16M floats a thread keeps: by two panels of the
// reduction (8192 x 2100 A: C scaled by beta once, the second panel added), or, where a
// panel would be under 256 products long, copied whole into a fresh buffer (66000 x 260 A);
// every transpose; then a kept-size product (the thread's buffer reused). Under the same
// bounds, through libngd's own GEMM.
static void converting_path_should_take_operands_of_any_size(void) {
    trng r = {91};
    g_gemm = ngd_gemm_bf16;
    ngd_gemm_bf16_path(NGD_BF16_PATH_CONVERT);
    size_t bad = 0;
    for (int t = 0; t < 4; t++) {
        bad += gemm_case(&r, t & 1, t & 2, 8192, 4, 2100, 3, 1.0f, 0.5f);
        bad += gemm_case(&r, t & 1, t & 2, 66000, 2, 260, 1, -0.75f, t & 1 ? 0.0f : 1.0f);
    }
    bad += gemm_case(&r, false, true, 300, 200, 100, 0, 1.0f, 0.0f);
    ngd_gemm_bf16_path(NGD_BF16_PATH_MATMUL);
    g_gemm = nn_gemm_bf16;
    CHECK(bad == 0);
}

// libngd's own bf16 GEMM (SINGD's bf16 compute), matmul and converting paths, under the same
// bounds.
static void core_gemm_bf16_should_meet_the_same_bound(void) {
    g_gemm = ngd_gemm_bf16;
    run_gemm_grid(7);
    ngd_gemm_bf16_path(NGD_BF16_PATH_CONVERT);
    run_gemm_grid(8);
    ngd_gemm_bf16_path(NGD_BF16_PATH_MATMUL);
    g_gemm = nn_gemm_bf16;
}

// ngd_gemm_bf16_16 (bf16 C, SINGD's intermediate products) against ngd_gemm_bf16's f32 C
// rounded by ngd_bf16_encode: the same bits on the paths tried (the matmul primitive rounds
// its f32 sums in its store; the others round an f32 C), at most one bf16 unit apart allowed
// where oneDNN plans the two types' products with other blockings. Shapes: small (the plain
// loop), m = 32j + 1 and n = 32j + 1 (split), k = 32j + 31 (not the matmul), the two threads'
// row halves, every transpose, a padded ldc whose padding must stay; 1 and 2 threads, every
// path.
static void gemm_bf16_16_should_be_the_f32_product_rounded(void) {
    static const size_t shapes[][3] = {{5, 7, 9},      {33, 20, 40},   {97, 130, 64},
                                       {128, 512, 96}, {200, 70, 127}, {513, 128, 160},
                                       {64, 200, 300}, {130, 66, 785}, {64, 545, 100}};
    const ngd_bf16_path paths[] = {NGD_BF16_PATH_MATMUL, NGD_BF16_PATH_GEMM, NGD_BF16_PATH_CONVERT};
    trng r = {77};
    size_t diff1 = 0, total = 0;
    for (int th = 1; th <= 2; th++) {
        const int before = th_set_threads(th);
        for (size_t pi = 0; pi < 3; pi++) {
            ngd_gemm_bf16_path(paths[pi]);
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
                for (int t = 0; t < 4; t++) {
                    const bool ta = t & 1, tb = t & 2;
                    const size_t m = shapes[si][0], n = shapes[si][1], k = shapes[si][2];
                    const size_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 5;
                    const size_t na = (ta ? k : m) * lda, nb = (tb ? n : k) * ldb;
                    float *fa = malloc(na * 4), *fb = malloc(nb * 4), *c = malloc(m * n * 4);
                    uint16_t *A = malloc(na * 2), *B = malloc(nb * 2), *c16 = malloc(m * ldc * 2),
                             *want = malloc(m * n * 2);
                    tfill(&r, fa, na, -1, 1), tfill(&r, fb, nb, -1, 1);
                    ngd_bf16_encode(fa, A, na), ngd_bf16_encode(fb, B, nb);
                    for (size_t i = 0; i < m * ldc; i++)
                        c16[i] = 0x7fc1u; // a NaN the product must not touch in the padding
                    ngd_gemm_bf16(ta, tb, m, n, k, 0.75f, A, lda, B, ldb, 0.0f, c, n);
                    ngd_bf16_encode(c, want, m * n);
                    ngd_gemm_bf16_16(ta, tb, m, n, k, 0.75f, A, lda, B, ldb, c16, ldc);
                    size_t bad = 0, pad = 0;
                    for (size_t i = 0; i < m; i++) {
                        for (size_t j = 0; j < n; j++) {
                            const int d = (int)c16[i * ldc + j] - (int)want[i * n + j];
                            bad += d < -1 || d > 1;
                            diff1 += d != 0;
                        }
                        for (size_t j = n; j < ldc; j++)
                            pad += c16[i * ldc + j] != 0x7fc1u;
                    }
                    total += m * n;
                    CHECK_MSG(bad == 0 && pad == 0,
                              "%zu x %zu x %zu ta %d tb %d path %zu threads %d: %zu elements "
                              "more than one unit off, %zu padding written",
                              m, n, k, ta, tb, pi, th, bad, pad);
                    free(fa), free(fb), free(c), free(A), free(B), free(c16), free(want);
                }
        }
        th_set_threads(before);
    }
    ngd_gemm_bf16_path(NGD_BF16_PATH_MATMUL);
    printf("  bf16 C: %zu of %zu elements one unit off the rounded f32 C\n", diff1, total);
    CHECK(diff1 * 1000 <= total); // (rare: a different blocking's sums)
}

// ngd_optim_state_bytes: factors (and momenta) stored in bf16 take half the bytes of f32;
// the first-order buffers (f32 momentum) are the same. bf16 compute needs bf16 storage.
static void bf16_factor_state_should_be_half(void) {
    const size_t din = 30, dout = 12, dK = din + 1;
    float *w = calloc(dout * din, 4), *dw = calloc(dout * din, 4), *b = calloc(dout, 4),
          *db = calloc(dout, 4);
    size_t bytes[2];
    for (int bf = 0; bf < 2; bf++) {
        ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
        c.momentum = 0.9f;
        if (bf) c.structure_K.dtype = c.structure_C.dtype = NGD_BF16, c.factor_compute = NGD_BF16;
        ngd_optim *o = NULL;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        ngd_layer L = {.name = "fc",
                       .weight = w,
                       .weight_grad = dw,
                       .d_out = dout,
                       .d_in = din,
                       .bias = b,
                       .bias_grad = db};
        int id;
        CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_OK);
        bytes[bf] = ngd_optim_state_bytes(o);
        ngd_optim_free(o);
    }
    const size_t factors = 2 * (dK * dK + dout * dout); // K, C and their momenta (alpha1 != 0)
    const size_t first = dout * dK * 4;                 // SGD momentum of [W | b], f32
    CHECK_MSG(bytes[0] == factors * 4 + first, "f32 state %zu, want %zu", bytes[0],
              factors * 4 + first);
    CHECK_MSG(bytes[1] == factors * 2 + first, "bf16 state %zu, want %zu", bytes[1],
              factors * 2 + first);
    ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
    c.factor_compute = NGD_BF16; // with f32 storage: refused
    char msg[256];
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG);
    CHECK(strstr(msg, "factor_compute") != NULL);
    free(w), free(dw), free(b), free(db);
}

// K-FAC with bf16 factor averages: after statistics steps every entry of the averages is a
// bf16 value (low 16 bits zero), and they stay within bf16 rounding (2^-8 relative per
// update, compounded over the updates) of the f32 run's; the f32 run's are not bf16 values.
static void kfac_bf16_averages_should_be_bf16_values(void) {
    const size_t din = 20, dout = 6, dK = din + 1, N = 16;
    trng r = {31};
    float *a = malloc(N * din * 4), *g = malloc(N * dout * 4);
    float *K[2] = {malloc(dK * dK * 4), malloc(dK * dK * 4)};
    for (int bf = 0; bf < 2; bf++) {
        float *w = calloc(dout * din, 4), *dw = calloc(dout * din, 4), *b = calloc(dout, 4),
              *db = calloc(dout, 4);
        ngd_config c = ngd_config_default(NGD_METHOD_KFAC);
        c.kfac.T_u = 1, c.kfac.T_i = 2;
        if (bf) c.kfac.ea_dtype = NGD_BF16;
        ngd_optim *o = NULL;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        ngd_layer L = {.name = "fc",
                       .weight = w,
                       .weight_grad = dw,
                       .d_out = dout,
                       .d_in = din,
                       .bias = b,
                       .bias_grad = db};
        int id;
        CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_OK);
        trng rr = r; // the same data for both runs
        for (int s = 0; s < 6; s++) {
            tfill(&rr, a, N * din, -1, 1);
            tfill(&rr, g, N * dout, -0.1, 0.1);
            tfill(&rr, dw, dout * din, -0.01, 0.01);
            if (ngd_optim_wants_stats(o))
                CHECK(ngd_optim_observe(o, id, N, ngd_matrix_f32(a, N, din),
                                        ngd_matrix_f32(g, N, dout)) == NGD_OK);
            CHECK(ngd_optim_step(o) == NGD_OK);
        }
        CHECK(ngd_optim_factor_dense(o, id, 'K', K[bf], dK) == NGD_OK);
        size_t low = 0;
        for (size_t i = 0; i < dK * dK; i++)
            low += (f_bits(K[bf][i]) & 0xffffu) != 0;
        if (bf)
            CHECK_MSG(low == 0, "%zu averages are not bf16 values", low);
        else
            CHECK(low > dK * dK / 2); // the f32 run's are (a control for the check above)
        ngd_optim_free(o);
        free(w), free(dw), free(b), free(db);
    }
    double mx = 0, err = 0;
    for (size_t i = 0; i < dK * dK; i++) {
        mx = fmax(mx, fabs((double)K[0][i]));
        err = fmax(err, fabs((double)K[1][i] - (double)K[0][i]));
    }
    CHECK_MSG(err <= 6 * ldexp(1.0, -8) * mx, "bf16 averages differ by %g (max %g)", err, mx);
    free(a), free(g), free(K[0]), free(K[1]);
}

// Exactly representable inputs and sums give the exact answer on every path, and the flop
// counter counts a bf16 GEMM like an f32 one.
static void gemm_bf16_should_be_exact_on_representable_values(void) {
    const size_t m = 64, n = 96, k = 256;
    float *A = malloc(m * k * 4), *B = malloc(k * n * 4), *C = malloc(m * n * 4);
    uint16_t *A16 = malloc(m * k * 2), *B16 = malloc(k * n * 2);
    for (size_t i = 0; i < m * k; i++)
        A[i] = (float)((int)(i % 7) - 3);
    for (size_t i = 0; i < k * n; i++)
        B[i] = (float)((int)(i % 5) - 2) * 0.5f;
    nn_bf16_encode(A, A16, m * k);
    nn_bf16_encode(B, B16, k * n);
    for (int path = 0; path < 3; path++) {
        ngd_gemm_bf16_path((ngd_bf16_path)path);
        const uint64_t f0 = nn_flop_count();
        nn_gemm_bf16(false, false, m, n, k, 1.0f, A16, k, B16, n, 0.0f, C, n);
        CHECK(nn_flop_count() - f0 == 2ull * m * n * k);
        size_t bad = 0;
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < n; j++) {
                double s = 0;
                for (size_t p = 0; p < k; p++)
                    s += (double)A[i * k + p] * (double)B[p * n + j];
                if ((double)C[i * n + j] != s) bad++;
            }
        CHECK(bad == 0);
    }
    ngd_gemm_bf16_path(NGD_BF16_PATH_MATMUL);
    free(A), free(B), free(C), free(A16), free(B16);
}

// ---- layers ----

static double bf16_bound(double mag, size_t k, double val) {
    const double u = ldexp(1.0, -8);
    return (2 * u + u * u + (double)(k + 16) * ldexp(1.0, -24) * 1.5) * mag * 1.02 +
           ldexp(1.0, -23) * fabs(val) + 1e-30;
}

// counts elements of got outside bound of want (mag: Σ|terms|, k: reduction length)
static size_t out_of_bound(const float *got, const double *want, const double *mag, size_t n,
                           size_t k, const char *what) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= bf16_bound(mag[i], k, want[i]))) {
            if (bad < 3)
                fprintf(stderr, "    %s[%zu]: got %.9g want %.9g bound %.3g\n", what, i,
                        (double)got[i], want[i], bf16_bound(mag[i], k, want[i]));
            bad++;
        }
    return bad;
}

// Linear in bf16 mode: y, dW, db, dx within the bf16 bounds of float64 on the f32 inputs,
// and the statistics are the bf16 copies (a = rounded x, g = rounded dy).
static void linear_bf16_should_match_float64(void) {
    const size_t shapes[][3] = {{5, 7, 3}, {64, 100, 30}, {128, 784, 64}}; // rows, din, dout
    trng r = {9};
    for (size_t t = 0; t < 3; t++) {
        const size_t R = shapes[t][0], din = shapes[t][1], dout = shapes[t][2];
        nn_rng rng;
        nn_rng_seed(&rng, 3);
        nn_linear l;
        CHECK(nn_linear_init(&l, din, dout, true, &rng) == NN_OK);
        CHECK(nn_linear_use_bf16(&l, R) == NN_OK);
        float *x = malloc(R * din * 4), *y = malloc(R * dout * 4), *dy = malloc(R * dout * 4);
        float *dx = calloc(R * din, 4);
        tfill(&r, x, R * din, -2, 2);
        tfill(&r, dy, R * dout, -1, 1);
        nn_linear_forward(&l, x, y, R);
        nn_linear_backward(&l, dy, dx);
        double *wy = calloc(R * dout, 8), *my = calloc(R * dout, 8);
        double *wdw = calloc(dout * din, 8), *mdw = calloc(dout * din, 8);
        double *wdx = calloc(R * din, 8), *mdx = calloc(R * din, 8);
        for (size_t i = 0; i < R; i++)
            for (size_t o = 0; o < dout; o++) {
                wy[i * dout + o] = (double)l.b[o];
                my[i * dout + o] = fabs((double)l.b[o]);
                for (size_t j = 0; j < din; j++) {
                    const double xw = (double)x[i * din + j] * (double)l.w[o * din + j];
                    const double dxw = (double)dy[i * dout + o] * (double)x[i * din + j];
                    const double dww = (double)dy[i * dout + o] * (double)l.w[o * din + j];
                    wy[i * dout + o] += xw, my[i * dout + o] += fabs(xw);
                    wdw[o * din + j] += dxw, mdw[o * din + j] += fabs(dxw);
                    wdx[i * din + j] += dww, mdx[i * din + j] += fabs(dww);
                }
            }
        CHECK(out_of_bound(y, wy, my, R * dout, din, "y") == 0);
        CHECK(out_of_bound(l.dw, wdw, mdw, dout * din, R, "dW") == 0);
        CHECK(out_of_bound(dx, wdx, mdx, R * din, dout, "dx") == 0);
        for (size_t o = 0; o < dout; o++) { // db: f32 sums of the f32 dy
            double s = 0, m = 0;
            for (size_t i = 0; i < R; i++)
                s += (double)dy[i * dout + o], m += fabs((double)dy[i * dout + o]);
            CHECK(fabs((double)l.db[o] - s) <= (double)R * ldexp(1.0, -24) * m * 1.5 + 1e-30);
        }
        ngd_matrix a, g;
        nn_linear_stats(&l, &a, &g);
        CHECK(a.dtype == NGD_BF16 && g.dtype == NGD_BF16 && a.rows == R && g.cols == dout);
        size_t bad = 0;
        for (size_t i = 0; i < R * din; i++) {
            uint16_t h;
            nn_bf16_encode(&x[i], &h, 1);
            bad += ((const uint16_t *)a.data)[i] != h;
        }
        for (size_t i = 0; i < R * dout; i++) {
            uint16_t h;
            nn_bf16_encode(&dy[i], &h, 1);
            bad += ((const uint16_t *)g.data)[i] != h;
        }
        CHECK(bad == 0);
        nn_linear_free(&l);
        free(x), free(y), free(dy), free(dx);
        free(wy), free(my), free(wdw), free(mdw), free(wdx), free(mdx);
    }
}

// Conv2d in bf16 mode against a direct float64 convolution: forward, dW, db and dx, on
// the layer's three paths (chunks of several small images; one image block by block, in
// forward's blocks of 256 columns and backward's of 1024; the transposed convolution for dx
// at stride 1, col2im otherwise and with groups).
// A bf16 input (nn_conv2d_forward_bf16: the activations a cnn keeps in bf16) gives exactly
// what the f32 input gives, since the layer rounds that input the same way: y, dW, db and dx
// bit for bit, the same g, and an `a` that is the unfold of the rounded input. Likewise a
// bf16 dy (nn_conv2d_backward_set_bf16: the cnn's BN writes it so) against its f32 values,
// with dx and without (a first layer).
static void conv2d_bf16_input_should_equal_rounding_inside(void) {
    // c_in, h, w, k, s, p, groups, c_out, N: 'same', strided, grouped, several samples per
    // chunk (a small image) and more than one bf16 backward block (40x40)
    const size_t cases[][9] = {{3, 6, 5, 3, 1, 1, 1, 8, 5},
                               {4, 16, 16, 3, 1, 1, 1, 6, 3},
                               {4, 9, 9, 3, 2, 1, 1, 5, 4},
                               {4, 8, 8, 3, 1, 1, 2, 6, 3},
                               {2, 40, 40, 3, 1, 1, 1, 3, 2}};
    trng r = {23};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const size_t *cs = cases[t];
        const ngd_conv_geom G = {cs[0], cs[1], cs[2], cs[3], cs[3], cs[4],
                                 cs[4], cs[5], cs[5], 1,     1,     cs[6]};
        const size_t cout = cs[7], N = cs[8];
        nn_conv2d l[4];
        for (int v = 0; v < 4; v++) {
            nn_rng rng;
            nn_rng_seed(&rng, 9);
            CHECK(nn_conv2d_init(&l[v], &G, cout, true, N, &rng) == NN_OK);
            CHECK(nn_conv2d_use_bf16(&l[v]) == NN_OK);
        }
        const size_t nx = N * G.c_in * G.h * G.w, ny = N * cout * l[0].oh * l[0].ow;
        float *x = malloc(nx * 4), *xr = malloc(nx * 4), *dy = malloc(ny * 4);
        float *y[2] = {malloc(ny * 4), malloc(ny * 4)}, *dx[2] = {malloc(nx * 4), malloc(nx * 4)};
        float *dxb = malloc(nx * 4);
        uint16_t *x16 = malloc(nx * 2), *dy16 = malloc(ny * 2);
        tfill(&r, x, nx, -1, 1);
        tfill(&r, dy, ny, -1, 1);
        nn_bf16_encode(dy, dy16, ny); // dy: bf16 values, also in dy16
        nn_bf16_decode(dy16, dy, ny);
        nn_bf16_encode(x, x16, nx);
        nn_bf16_decode(x16, xr, nx);
        nn_conv2d_forward(&l[0], x, y[0], N);
        nn_conv2d_forward_bf16(&l[1], x16, y[1], N);
        const size_t ns = nn_conv2d_stats_size(&l[1]);
        CHECK(ns >= nn_conv2d_stats_size(&l[0]));
        float *sc[2] = {malloc(ns * 4), malloc(ns * 4)}, *un = malloc(ns * 4);
        ngd_matrix a[2], g[2];
        for (int v = 0; v < 2; v++) {
            nn_conv2d_backward_set(&l[v], dy, dx[v]);
            CHECK(nn_conv2d_stats(&l[v], sc[v], &a[v], &g[v]) == NN_OK);
        }
        CHECK(memcmp(y[0], y[1], ny * 4) == 0);
        CHECK(memcmp(l[0].dw, l[1].dw, cout * l[0].d_in * 4) == 0);
        CHECK(memcmp(l[0].db, l[1].db, cout * 4) == 0);
        CHECK(memcmp(dx[0], dx[1], nx * 4) == 0);
        CHECK(g[1].dtype == NGD_BF16 && memcmp(g[0].data, g[1].data, g[0].rows * cout * 2) == 0);
        CHECK(a[1].dtype == NGD_F32 && a[1].rows == a[0].rows && a[1].cols == a[0].cols);
        CHECK(ngd_unfold(&G, N, xr, false, un) == NGD_OK);
        CHECK(memcmp(a[1].data, un, a[1].rows * a[1].cols * 4) == 0);
        // bf16 dy: with dx (l[2]) and without (l[3]); the same stats' g
        for (int v = 2; v < 4; v++) {
            nn_conv2d_forward_bf16(&l[v], x16, y[1], N);
            for (size_t i = 0; v == 2 && i < nx; i++)
                dxb[i] = NAN; // written
            nn_conv2d_backward_set_bf16(&l[v], dy16, v == 2 ? dxb : NULL);
            CHECK(memcmp(l[0].dw, l[v].dw, cout * l[0].d_in * 4) == 0);
            CHECK(memcmp(l[0].db, l[v].db, cout * 4) == 0);
            CHECK(l[v].dyb == dy16 && !l[v].dy);
            CHECK(nn_conv2d_stats(&l[v], sc[1], &a[1], &g[1]) == NN_OK);
            CHECK(memcmp(g[0].data, g[1].data, g[0].rows * cout * 2) == 0);
        }
        CHECK(memcmp(dx[0], dxb, nx * 4) == 0);
        for (int v = 0; v < 4; v++)
            nn_conv2d_free(&l[v]);
        for (int v = 0; v < 2; v++)
            free(y[v]), free(dx[v]), free(sc[v]);
        free(x), free(xr), free(dy), free(x16), free(un), free(dy16), free(dxb);
    }
}

// BatchNorm-ReLU and max pooling with bf16 outputs: exactly the f32 outputs rounded, the same
// running statistics and argmax, and the same backward.
static void bn_relu_and_pool_bf16_outputs_should_be_the_rounded_f32_ones(void) {
    const size_t N = 3, C = 5, H = 6, W = 4, n = N * C * H * W, L = N * C * (H / 2) * (W / 2);
    trng r = {24};
    float *x = malloc(n * 4), *y = malloc(n * 4), *dy = malloc(n * 4), *dx[2];
    uint16_t *y16 = malloc(n * 2), *want = malloc(n * 2);
    dx[0] = malloc(n * 4), dx[1] = malloc(n * 4);
    tfill(&r, x, n, -2, 2);
    tfill(&r, dy, n, -1, 1);
    nn_batchnorm bn[2];
    for (int v = 0; v < 2; v++) {
        CHECK(nn_batchnorm_init(&bn[v], C, H * W, N) == NN_OK);
        for (size_t c = 0; c < C; c++)
            bn[v].w[c] = 0.5f + 0.25f * (float)c, bn[v].b[c] = 0.1f * (float)c - 0.2f;
    }
    nn_batchnorm_relu_forward(&bn[0], x, y, N, true);
    nn_batchnorm_relu_forward_bf16(&bn[1], x, y16, N, true);
    nn_bf16_encode(y, want, n);
    CHECK(memcmp(y16, want, n * 2) == 0);
    CHECK(memcmp(bn[0].running_mean, bn[1].running_mean, C * 4) == 0);
    CHECK(memcmp(bn[0].running_var, bn[1].running_var, C * 4) == 0);
    for (int v = 0; v < 2; v++)
        nn_batchnorm_relu_backward(&bn[v], dy, dx[v]);
    CHECK(memcmp(dx[0], dx[1], n * 4) == 0);
    CHECK(memcmp(bn[0].dw, bn[1].dw, C * 4) == 0 && memcmp(bn[0].db, bn[1].db, C * 4) == 0);
    // backward into bf16: the f32 dx rounded (and the same parameter gradients)
    nn_batchnorm_relu_backward_bf16(&bn[1], dy, y16);
    nn_bf16_encode(dx[0], want, n);
    CHECK(memcmp(y16, want, n * 2) == 0);
    for (size_t c = 0; c < C; c++)
        CHECK(bn[1].dw[c] == 2 * bn[0].dw[c] && bn[1].db[c] == 2 * bn[0].db[c]);
    // pooling: the 2x2 kernel and the general one (3x3, stride 2, padding 1)
    const size_t geo[2][3] = {{2, 2, 0}, {3, 2, 1}};
    for (int k = 0; k < 2; k++) {
        nn_maxpool2d pl[2];
        for (int v = 0; v < 2; v++)
            CHECK(nn_maxpool2d_init(&pl[v], C, H, W, geo[k][0], geo[k][1], geo[k][2], N) == NN_OK);
        const size_t no = N * C * pl[0].oh * pl[0].ow;
        CHECK(k == 1 || no == L);
        nn_maxpool2d_forward(&pl[0], y, dx[0], N);
        nn_maxpool2d_forward_bf16(&pl[1], y, y16, N);
        nn_bf16_encode(dx[0], want, no);
        CHECK(memcmp(y16, want, no * 2) == 0);
        CHECK(memcmp(pl[0].argmax, pl[1].argmax, no * sizeof(int32_t)) == 0);
        for (int v = 0; v < 2; v++)
            nn_maxpool2d_free(&pl[v]);
    }
    for (int v = 0; v < 2; v++) {
        nn_batchnorm_free(&bn[v]);
        free(dx[v]);
    }
    free(x), free(y), free(dy), free(y16), free(want);
}

static void conv2d_bf16_should_match_float64(void) {
    // c_in, h, w, k, s, p, dil, groups, c_out, N
    const size_t cases[][10] = {{3, 6, 5, 3, 1, 1, 1, 1, 8, 5},
                                {4, 16, 16, 3, 1, 1, 1, 1, 6, 3},
                                {4, 9, 9, 3, 2, 1, 1, 1, 5, 4},
                                {4, 8, 8, 3, 1, 1, 1, 2, 6, 3},
                                {2, 12, 12, 5, 1, 2, 2, 1, 4, 2},
                                {3, 17, 17, 3, 1, 0, 1, 1, 7, 2},
                                // an image of more than one bf16 backward block (1024 columns)
                                {2, 40, 40, 3, 1, 1, 1, 1, 3, 2},
                                // small 'same' planes (zero-bordered copies): rows of 8
                                // bytes, more output than input channels; of 4, dilated
                                {3, 4, 4, 3, 1, 1, 1, 1, 8, 5},
                                {2, 2, 2, 3, 1, 2, 2, 1, 3, 4},
                                // more than NN_CONV_DWT_MAX output channels a group: dW's
                                // GEMM untransposed (the others compute dWᵀ)
                                {4, 6, 6, 3, 1, 1, 1, 2, 160, 2}};
    trng r = {21};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const size_t *cs = cases[t];
        const ngd_conv_geom G = {cs[0], cs[1], cs[2], cs[3], cs[3], cs[4],
                                 cs[4], cs[5], cs[5], cs[6], cs[6], cs[7]};
        const size_t cout = cs[8], N = cs[9];
        nn_rng rng;
        nn_rng_seed(&rng, 5);
        nn_conv2d l;
        CHECK(nn_conv2d_init(&l, &G, cout, true, N, &rng) == NN_OK);
        const size_t OH = l.oh, OW = l.ow, L = OH * OW, H = G.h, W = G.w, K = G.k1;
        const size_t cg = G.c_in / G.groups, cog = cout / G.groups, din = l.d_in;
        const size_t nx = N * G.c_in * H * W, ny = N * cout * L;
        float *x = malloc(nx * 4), *y = malloc(ny * 4), *dy = malloc(ny * 4);
        float *dx = calloc(nx, 4);
        tfill(&r, x, nx, -1, 1);
        tfill(&r, dy, ny, -1, 1);
        // a float32 step first: the layer's buffers (its zero-bordered planes among them)
        // then hold f32 data that bf16 mode must not read; dW and db cleared after it
        nn_conv2d_forward(&l, x, y, N);
        nn_conv2d_backward_set(&l, dy, dx);
        memset(l.dw, 0, cout * din * 4);
        memset(l.db, 0, cout * 4);
        memset(dx, 0, nx * 4);
        CHECK(nn_conv2d_use_bf16(&l) == NN_OK);
        nn_conv2d_forward(&l, x, y, N);
        nn_conv2d_backward(&l, dy, dx);
        double *wy = calloc(ny, 8), *my = calloc(ny, 8), *wdw = calloc(cout * din, 8);
        double *mdw = calloc(cout * din, 8), *wdx = calloc(nx, 8), *mdx = calloc(nx, 8);
        for (size_t n = 0; n < N; n++)
            for (size_t co = 0; co < cout; co++)
                for (size_t o1 = 0; o1 < OH; o1++)
                    for (size_t o2 = 0; o2 < OW; o2++) {
                        const size_t iy = ((n * cout + co) * OH + o1) * OW + o2;
                        wy[iy] = (double)l.b[co], my[iy] = fabs((double)l.b[co]);
                        const size_t g = co / cog;
                        for (size_t c = 0; c < cg; c++)
                            for (size_t k1 = 0; k1 < K; k1++)
                                for (size_t k2 = 0; k2 < K; k2++) {
                                    const ptrdiff_t i1 =
                                        (ptrdiff_t)(o1 * G.s1 + k1 * G.dil1) - (ptrdiff_t)G.p1;
                                    const ptrdiff_t i2 =
                                        (ptrdiff_t)(o2 * G.s2 + k2 * G.dil2) - (ptrdiff_t)G.p2;
                                    if (i1 < 0 || i2 < 0 || (size_t)i1 >= H || (size_t)i2 >= W)
                                        continue;
                                    const size_t ix =
                                        ((n * G.c_in + g * cg + c) * H + (size_t)i1) * W +
                                        (size_t)i2;
                                    const size_t iw = co * din + (c * K + k1) * K + k2;
                                    const double xw = (double)x[ix] * (double)l.w[iw];
                                    const double gx = (double)dy[iy] * (double)x[ix];
                                    const double gw = (double)dy[iy] * (double)l.w[iw];
                                    wy[iy] += xw, my[iy] += fabs(xw);
                                    wdw[iw] += gx, mdw[iw] += fabs(gx);
                                    wdx[ix] += gw, mdx[ix] += fabs(gw);
                                }
                    }
        CHECK(out_of_bound(y, wy, my, ny, din, "conv y") == 0);
        CHECK(out_of_bound(l.dw, wdw, mdw, cout * din, N * L, "conv dW") == 0);
        CHECK(out_of_bound(dx, wdx, mdx, nx, cout * K * K, "conv dx") == 0);
        for (size_t co = 0; co < cout; co++) {
            double s = 0, m = 0;
            for (size_t n = 0; n < N; n++)
                for (size_t p = 0; p < L; p++) {
                    const double v = (double)dy[(n * cout + co) * L + p];
                    s += v, m += fabs(v);
                }
            CHECK(fabs((double)l.db[co] - s) <= (double)(N * L) * ldexp(1.0, -24) * m * 1.5);
        }
        ngd_matrix a, g;
        float *scratch = malloc(nn_conv2d_stats_size(&l) * sizeof *scratch);
        CHECK(scratch && nn_conv2d_stats(&l, scratch, &a, &g) == NN_OK);
        CHECK(g.dtype == NGD_BF16 && g.rows == N * L && g.cols == cout);
        size_t bad = 0;
        for (size_t n = 0; n < N; n++)
            for (size_t co = 0; co < cout; co++)
                for (size_t p = 0; p < L; p++) {
                    uint16_t h;
                    nn_bf16_encode(&dy[(n * cout + co) * L + p], &h, 1);
                    bad += ((const uint16_t *)g.data)[(n * L + p) * cout + co] != h;
                }
        CHECK(bad == 0);
        nn_conv2d_free(&l);
        free(scratch);
        free(x), free(y), free(dy), free(dx);
        free(wy), free(my), free(wdw), free(mdw), free(wdx), free(mdx);
    }
}

// The AMX path of 3x3 'same' bf16 convolutions (conv_amx.c) on the layer's one-sample
// chunks: y (from f32 and from bf16 inputs), dx (written from a bf16 dy, and added onto a
// nonzero dx from an f32 dy) and dW against float64 on the bf16-rounded operands, each within
// a float32 sum's bound (k+1)·2^-24·Σ|terms| for a sum of k exact products; the same layer
// on the im2col path (amx, amx_t cleared) within the same bound; db, which does not go
// through it, equal bit for bit. Shapes: square, rows of 16 (a tile pair spans two rows),
// more output channels than input and fewer, 64 channels (two K blocks a tap), a batch of
// one with a 64-pixel image, and of five (a thread sums several samples' dW); odd segment
// counts, widths that are not multiples of 16 and small images, several to a chunk (below).
// The bf16 direct kernel's rounded output (y16) against its f32 output rounded by the
// independent reference, bit for bit: planes of whole 16-wide rows (a short last block) and
// of 20 columns (partial vectors compressed), with and without a bias, on values whose
// outputs are subnormal (vcvtneps2bf16 would flush them), infinite and NaN (kept quiet).
static void direct16_bf16_output_should_be_the_f32_output_rounded(void) {
    if (!nn_conv3x3_direct16_usable()) {
        fprintf(stderr, "    (AVX512-BF16 is not usable here: no direct bf16 path)\n");
        return;
    }
    const size_t cases[][4] = {{5, 16, 16, 16}, {3, 17, 20, 8}, {8, 32, 32, 24}}; // c h w co
    trng r = {43};
    for (size_t t = 0; t < 2 * sizeof cases / sizeof cases[0]; t++) {
        const size_t c = cases[t / 2][0], h = cases[t / 2][1], w = cases[t / 2][2];
        const size_t co = cases[t / 2][3], L = h * w, nx = c * L, ny = co * L;
        const bool bias = t % 2;
        float *x = malloc(nx * 4), *wt = malloc(co * c * 9 * 4), *b = malloc(co * 4);
        float *y = malloc(ny * 4);
        uint16_t *x16 = malloc(nx * 2), *y16 = malloc(ny * 2);
        uint32_t *wp = malloc(nn_conv3x3_direct16_wp_n(co, c) * 4);
        uint32_t *xp = calloc(nn_conv3x3_direct16_pad_n(c, h, w), 4);
        tfill(&r, x, nx, -1, 1);
        tfill(&r, wt, co * c * 9, -1, 1);
        tfill(&r, b, co, -0.5, 0.5);
        // output channel 2 from huge weights (some sums overflow), and one input NaN. (The
        // products and sums of vdpbf16ps flush subnormals to zero: a subnormal output comes
        // from the bias, channel 1's, onto zero weights; so do ties, channels 3 and 4.)
        for (size_t k = 0; k < c * 9; k++)
            wt[1 * c * 9 + k] = wt[3 * c * 9 + k] = wt[4 * c * 9 + k] = 0.0f,
                           wt[2 * c * 9 + k] *= 0x1p127f;
        b[1] = 0x1.81p-130f, b[3] = bits_f(0x3f818000u), b[4] = bits_f(0xbf808000u);
        x[nx / 2] = NAN;
        nn_bf16_encode(x, x16, nx);
        nn_conv3x3_direct16_pack(wt, co, c, wp);
        const float *bb = bias ? b : NULL;
        nn_conv3x3_direct16(x16, c, h, w, wp, co, y, NULL, bb, false, xp);
        for (size_t i = 0; i < ny; i++)
            y16[i] = 0x1234;
        nn_conv3x3_direct16(x16, c, h, w, wp, co, NULL, y16, bb, false, xp);
        size_t bad = 0, sub = 0, inf = 0, nan = 0;
        for (size_t i = 0; i < ny; i++) {
            if (isnan(y[i])) {
                nan++;
                bad += (y16[i] & 0x7fc0u) != 0x7fc0u || (y16[i] >> 15) != (f_bits(y[i]) >> 31);
                continue;
            }
            sub += y[i] != 0.0f && fabsf(y[i]) < 0x1p-126f;
            inf += isinf(y[i]) != 0;
            bad += y16[i] != ref_round(y[i]);
        }
        CHECK(bad == 0);
        CHECK((!bias || sub + 9 >= L) && inf > 0 && nan > 0); // (9: outputs by the NaN)
        free(x), free(wt), free(b), free(y), free(x16), free(y16), free(wp), free(xp);
    }
}

// Without AMX no layer may claim the path. The same checks run on the direct AVX512-BF16
// path (conv_direct.c: amx cleared, direct16 set, where the CPU has it), with 3 input
// channels (an odd pair: half zero) and a row of 27 among the shapes it takes, and on its dW
// by image (dw16, set where the layer has its f32 twin's buffers), and on the f32 kernels
// fed decoded bf16 values (direct32, dw32, direct32_t: the choice where the bf16 twins do not
// pay), and there, where the layer takes it, on Winograd (variant 0: its f32 and bf16 inputs
// give the same bits as elsewhere, its results the same float64 bounds).
// NV variants of each layer: as chosen, im2col, the bf16 twins, the f32 kernels.
#define NV 4
static void conv3x3_amx_should_match_float64_and_the_im2col_path(void) {
    const size_t cases[][5] = {// c_in, h, w, c_out, N
                               {32, 16, 16, 32, 5},
                               {32, 32, 16, 64, 2},
                               {64, 16, 32, 32, 1},
                               {32, 4, 16, 32, 1},
                               // rows of 16 with an odd segment last; rows of 28 and of 8
                               // (planes outermost, segments across rows), several samples
                               // per chunk; one 16-pixel segment
                               {32, 7, 16, 64, 2},
                               {32, 4, 28, 32, 2},
                               {64, 8, 8, 32, 3},
                               {32, 4, 4, 64, 5},
                               {3, 16, 16, 32, 2},
                               {16, 10, 27, 16, 2},
                               // dW by image on AVX512-BF16 (nn_conv3x3_dw16): 48 output
                               // channels (a tile of 3 vectors), an odd input count and 561
                               // pixel pairs (not a multiple of 16); 16 outputs (a tile of
                               // one); 64 (two tiles of two) from 3 inputs
                               {5, 33, 34, 48, 2},
                               {4, 32, 32, 16, 1},
                               {3, 32, 32, 64, 2},
                               // 80 output channels (tiles of 3 + 2 vectors)
                               {8, 16, 16, 80, 2}};
    const bool usable = nn_amx_usable(), d16 = nn_conv3x3_direct16_usable(),
               pays = nn_conv3x3_direct16_pays();
    CHECK(pays == (d16 && !ngd_bf16_dot_slow(NULL)));
    if (!usable) fprintf(stderr, "    (AMX is not usable here: the im2col path only)\n");
    if (!d16) fprintf(stderr, "    (AVX512-BF16 is not usable here: no direct bf16 path)\n");
    trng r = {31};
    size_t n32t = 0;  // cases whose dx took the f32 transposed kernel on decoded values
    size_t n32 = 0;   // and whose forward took the f32 kernel
    size_t nwino = 0; // and that took Winograd
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const size_t cin = cases[t][0], H = cases[t][1], W = cases[t][2], cout = cases[t][3];
        const size_t N = cases[t][4], L = H * W, nx = N * cin * L, ny = N * cout * L;
        const size_t nw = cout * cin * 9;
        const ngd_conv_geom G = {cin, H, W, 3, 3, 1, 1, 1, 1, 1, 1, 1};
        nn_conv2d l[NV];
        for (int v = 0; v < NV; v++) {
            nn_rng rng;
            nn_rng_seed(&rng, 11);
            CHECK(nn_conv2d_init(&l[v], &G, cout, true, N, &rng) == NN_OK);
            CHECK(nn_conv2d_use_bf16(&l[v]) == NN_OK);
        }
        const bool fits = usable && nn_conv3x3_amx_fits(cin, H, W, cout),
                   fits_t = usable && nn_conv3x3_amx_fits(cout, H, W, cin);
        CHECK(l[0].amx == fits && l[0].amx_t == fits_t);
        CHECK(l[0].direct16 == (!fits && l[0].direct && pays) &&
              l[0].direct16_t == (!fits_t && l[0].direct_t && pays));
        CHECK(l[0].dw16 == (pays && !(l[0].amx && l[0].chunk == 1) && l[0].chunk == 1 &&
                            nn_conv3x3_dw16_fits(cin, H, W, cout)));
        l[1].amx = l[1].amx_t = l[1].direct16 = l[1].direct16_t = l[1].dw16 = false; // im2col
        l[2].amx = l[2].amx_t = false; // direct where it fits
        l[2].direct16 = l[2].direct && d16, l[2].direct16_t = l[2].direct_t && d16;
        l[2].dw16 = l[2].dw_direct && nn_conv3x3_dw16_fits(cin, H, W, cout);
        if (t >= 8) CHECK(!d16 || l[2].direct16 || l[2].direct16_t);
        if (t >= 10) CHECK(!d16 || l[2].dw16);
        // the f32 kernels on decoded bf16 values, chosen where the bf16 twins do not pay
        CHECK(l[0].dw32 == (!pays && l[0].dw_direct && !(l[0].amx && l[0].chunk == 1)) &&
              l[0].direct32_t == (!pays && l[0].direct_t && !fits_t) &&
              l[0].direct32 == (!pays && l[0].direct && !fits));
        l[3].amx = l[3].amx_t = l[3].direct16 = l[3].direct16_t = l[3].dw16 = false;
        l[3].dw32 = l[3].dw_direct, l[3].direct32_t = l[3].direct_t;
        l[3].direct32 = l[3].direct;
        if (t >= 10) CHECK(l[3].dw32);
        n32t += l[3].direct32_t, n32 += l[3].direct32;
        // Winograd (conv_wino.c) on bf16 values where the bf16 twins do not pay: l[0] as
        // chosen; the other variants without it
        const bool wino = !pays && cin >= 16 && cout >= 16 && H >= 4 && W >= 4;
        if (!wino) CHECK(!l[0].wino);
        if (wino && nn_conv3x3_direct_usable()) CHECK(l[0].wino != NULL);
        nwino += l[0].wino != NULL;
        for (int v = 1; v < NV; v++)
            nn_conv_wino_free(l[v].wino), l[v].wino = NULL;
        float *x = malloc(nx * 4), *xr = malloc(nx * 4), *dy = malloc(ny * 4);
        float *wr = malloc(nw * 4), *dx0 = malloc(nx * 4), *y[NV], *dx[NV];
        uint16_t *x16 = malloc(nx * 2), *dy16 = malloc(ny * 2), *w16 = malloc(nw * 2);
        tfill(&r, x, nx, -1, 1);
        tfill(&r, dy, ny, -1, 1);
        tfill(&r, dx0, nx, -1, 1);
        nn_bf16_encode(x, x16, nx);
        nn_bf16_decode(x16, xr, nx);
        nn_bf16_encode(dy, dy16, ny); // dy: bf16 values, also in dy16
        nn_bf16_decode(dy16, dy, ny);
        nn_bf16_encode(l[0].w, w16, nw);
        nn_bf16_decode(w16, wr, nw);
        double *wy = calloc(ny, 8), *my = calloc(ny, 8), *wdx = calloc(nx, 8), *mdx = calloc(nx, 8);
        double *wdw = calloc(nw, 8), *mdw = calloc(nw, 8);
        for (size_t n = 0; n < N; n++)
            for (size_t co = 0; co < cout; co++)
                for (size_t o = 0; o < L; o++) {
                    const size_t iy = (n * cout + co) * L + o, o1 = o / W, o2 = o % W;
                    wy[iy] = (double)l[0].b[co], my[iy] = fabs(wy[iy]);
                    for (size_t c = 0; c < cin; c++)
                        for (size_t k = 0; k < 9; k++) {
                            const size_t i1 = o1 + k / 3, i2 = o2 + k % 3; // padded
                            if (i1 < 1 || i2 < 1 || i1 > H || i2 > W) continue;
                            const size_t ix = ((n * cin + c) * H + i1 - 1) * W + i2 - 1;
                            const double w = (double)wr[(co * cin + c) * 9 + k];
                            wy[iy] += (double)xr[ix] * w, my[iy] += fabs((double)xr[ix] * w);
                            wdx[ix] += (double)dy[iy] * w, mdx[ix] += fabs((double)dy[iy] * w);
                            const double g = (double)dy[iy] * (double)xr[ix];
                            wdw[(co * cin + c) * 9 + k] += g,
                                mdw[(co * cin + c) * 9 + k] += fabs(g);
                        }
                }
        for (int v = 0; v < NV; v++) {
            y[v] = malloc(ny * 4), dx[v] = malloc(nx * 4);
            float *yb = malloc(ny * 4);
            const uint64_t f0 = nn_flop_count();
            nn_conv2d_forward(&l[v], x, y[v], N);
            CHECK(nn_flop_count() - f0 == 2 * (uint64_t)N * cout * cin * 9 * L); // every path
            CHECK(l[v].wino_fwd == (l[v].wino != NULL));
            size_t bad = 0;
            for (size_t i = 0; i < ny; i++)
                bad += !(fabs((double)y[v][i] - wy[i]) <=
                         (double)(9 * cin + 2) * ldexp(1.0, -24) * my[i] * 1.02 + 1e-30);
            CHECK(bad == 0);
            nn_conv2d_forward_bf16(&l[v], x16, yb, N);
            CHECK(memcmp(y[v], yb, ny * 4) == 0);
            free(yb);
            for (size_t i = 0; i < nx; i++)
                dx[v][i] = NAN; // written
            nn_conv2d_backward_set_bf16(&l[v], dy16, dx[v]);
            bad = 0;
            for (size_t i = 0; i < nx; i++)
                bad += !(fabs((double)dx[v][i] - wdx[i]) <=
                         (double)(9 * cout + 1) * ldexp(1.0, -24) * mdx[i] * 1.02 + 1e-30);
            CHECK(bad == 0);
            // added onto a nonzero dx, from an f32 dy
            nn_conv2d_forward(&l[v], x, y[v], N);
            memcpy(dx[v], dx0, nx * 4);
            nn_conv2d_backward(&l[v], dy, dx[v]);
            bad = 0;
            for (size_t i = 0; i < nx; i++) {
                const double want = wdx[i] + (double)dx0[i], m = mdx[i] + fabs((double)dx0[i]);
                bad += !(fabs((double)dx[v][i] - want) <=
                         (double)(9 * cout + 2) * ldexp(1.0, -24) * m * 1.02 + 1e-30);
            }
            CHECK(bad == 0);
            // dW: the same sum twice (a bf16 dy, then its f32 values), so exactly doubled
            bad = 0;
            for (size_t i = 0; i < nw; i++)
                bad += !(fabs((double)l[v].dw[i] / 2 - wdw[i]) <=
                         (double)(N * L + 1) * ldexp(1.0, -24) * mdw[i] * 1.02 + 1e-30);
            CHECK(bad == 0);
        }
        CHECK(memcmp(l[0].db, l[1].db, cout * 4) == 0 && memcmp(l[2].db, l[1].db, cout * 4) == 0 &&
              memcmp(l[3].db, l[1].db, cout * 4) == 0);
        for (int v = 0; v < NV; v++)
            nn_conv2d_free(&l[v]), free(y[v]), free(dx[v]);
        free(x), free(xr), free(dy), free(wr), free(dx0), free(x16), free(dy16), free(w16);
        free(wy), free(my), free(wdx), free(mdx), free(wdw), free(mdw);
    }
    CHECK(n32t > 0 && n32 > 0);
    if (!pays && nn_conv3x3_direct_usable()) CHECK(nwino > 0);
}

static const test_case TESTS[] = {
    TEST(encode_should_round_to_nearest_even),
    TEST(encode_rows_should_keep_padding),
    TEST(gemm_bf16_should_meet_the_bf16_bound_for_all_transposes),
    TEST(gemm_bf16_converting_path_should_meet_the_same_bound),
    TEST(gemm_bf16_gemm_path_should_meet_the_same_bound),
    TEST(public_bf16_gemm_should_check_arguments_and_not_count),
    TEST(gemm_bias_should_equal_the_bias_rows_plus_the_product),
    TEST(thread_caches_should_be_freed_when_threads_end),
    TEST(syrk_bf16_should_match_the_reference_and_be_symmetric),
    TEST(syrk_bf16_lower_should_write_the_lower_triangle_only),
    TEST(matmul_cache_should_serve_many_shapes_and_threads),
    TEST(k_31_mod_32_shapes_should_not_crash),
    TEST(gemm_bf16_should_be_exact_on_representable_values),
    TEST(core_gemm_bf16_should_meet_the_same_bound),
    TEST(gemm_bf16_16_should_be_the_f32_product_rounded),
    TEST(bf16_factor_state_should_be_half),
    TEST(kfac_bf16_averages_should_be_bf16_values),
    TEST(linear_bf16_should_match_float64),
    TEST(conv2d_bf16_should_match_float64),
    TEST(conv2d_bf16_input_should_equal_rounding_inside),
    TEST(direct16_bf16_output_should_be_the_f32_output_rounded),
    TEST(bf16_dot_probe_should_choose_the_path),
    TEST(converting_path_should_take_operands_of_any_size),
    TEST(conv3x3_amx_should_match_float64_and_the_im2col_path),
    TEST(bn_relu_and_pool_bf16_outputs_should_be_the_rounded_f32_ones),
};

int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
