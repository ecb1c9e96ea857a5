/* test_core.c — core kernels: GEMM over every view layout vs the float64 reference, bf16
 * rounding, RNG reproducibility, status table, checked allocation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "blas.h"
#include "fileio.h"
#include "harness.h"
#include "impl.h"
#include "ref.h"
#include "rng.h"

// f32 GEMM vs f64 reference: error grows like sqrt(k)*eps*|a||b|; 1e-5 relative to the
// largest output with k <= 70 and entries in [-1, 1] leaves ~10x headroom.
#define GEMM_RTOL 1e-5

// X (rows x cols, float64 row-major) into out as floats: row-major, or (t) as the transpose of
// a row-major cols x rows array
static void store_op(const double *X, size_t rows, size_t cols, int t, float *out) {
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++)
            out[t ? j * rows + i : i * cols + j] = (float)X[i * cols + j];
}

static void gemm_should_match_reference_for_all_layouts(void) {
    ref_rng r = {1};
    const size_t dims[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 1, 9}, {1, 64, 1}, {65, 31, 70}};
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
        size_t m = dims[t][0], k = dims[t][1], n = dims[t][2];
        double *A = malloc(m * k * sizeof *A), *B = malloc(k * n * sizeof *B);
        double *C0 = malloc(m * n * sizeof *C0), *C = malloc(m * n * sizeof *C);
        float *a = malloc(m * k * sizeof *a), *b = malloc(k * n * sizeof *b);
        float *c = malloc(m * n * sizeof *c);
        ref_fill(&r, A, m * k, -1, 1);
        ref_fill(&r, B, k * n, -1, 1);
        ref_fill(&r, C0, m * n, -1, 1);
        for (int layout = 0; layout < 8; layout++) {
            int ta = layout & 1, tb = (layout >> 1) & 1, tc = (layout >> 2) & 1;
            // store A (and B, C) either row-major or as the transpose of a row-major array
            store_op(A, m, k, ta, a);
            store_op(B, k, n, tb, b);
            store_op(C0, m, n, tc, c);
            ngd_cview va = ta ? ngd_cview_t(ngd_cview_rm(a, k, m, m)) : ngd_cview_rm(a, m, k, k);
            ngd_cview vb = tb ? ngd_cview_t(ngd_cview_rm(b, n, k, k)) : ngd_cview_rm(b, k, n, n);
            ngd_view vc = tc ? ngd_view_t(ngd_view_rm(c, n, m, m)) : ngd_view_rm(c, m, n, n);
            ngd_gemm(0.5f, va, vb, -2.0f, vc);
            ref_matmul(m, k, n, A, B, C);
            double maxref = 0;
            for (size_t i = 0; i < m * n; i++) {
                C[i] = 0.5 * C[i] - 2.0 * C0[i];
                if (fabs(C[i]) > maxref) maxref = fabs(C[i]);
            }
            float *got = malloc(m * n * sizeof *got);
            for (size_t i = 0; i < m; i++)
                for (size_t j = 0; j < n; j++)
                    got[i * n + j] = c[tc ? j * m + i : i * n + j];
            CHECK_TENSOR(got, C, m * n, 0.0, GEMM_RTOL * maxref, "gemm");
            free(got);
        }
        free(A), free(B), free(C0), free(C), free(a), free(b), free(c);
    }
}

// ngd_syrk_full against the float64 A Aᵀ: below and above its block-row threshold (384 rows
// and at least half as many columns), and a long product (256+ rows, 8x as many columns: its
// own block rows, 3 of them here), a square of 2048+ rows from A of 128+ columns (by halves
// down to diagonal blocks of at most 320 rows, however few the columns), A and C
// row-major or transposed, beta = 0 over a NaN-filled C (not read) and beta != 0 over a symmetric
// C; the result must be exactly symmetric on every path (alpha 0.3 folded into one operand of a
// single product gave C[i][j] and C[j][i] apart), its multiply-adds counted at least at the
// half product's, and under bf16 emulation (bf16.h) bf16 values. Each shape at 2 threads (from
// 384 to 1024 rows a row-major C goes by 2 x 2 blocks there, one per thread) and at 1.
static void syrk_should_match_reference_and_be_symmetric(void) {
    ref_rng r = {3};
    const size_t dims[][2] = {{5, 7},     {383, 200},  {384, 192}, {400, 199},
                              {900, 450}, {260, 2100}, {2100, 130}};
    for (size_t t = 0; t < 2 * sizeof dims / sizeof dims[0]; t++) {
        const int before = th_set_threads(t % 2 ? 1 : 2);
        const size_t m = dims[t / 2][0], k = dims[t / 2][1];
        double *A = malloc(m * k * sizeof *A), *C0 = malloc(m * m * sizeof *C0);
        double *C = malloc(m * m * sizeof *C), *P = malloc(m * m * sizeof *P);
        float *a = malloc(m * k * sizeof *a), *c = malloc(m * m * sizeof *c);
        float *got = malloc(m * m * sizeof *got);
        ref_fill(&r, A, m * k, -1, 1);
        for (size_t i = 0; i < m; i++) // a symmetric C0
            for (size_t j = 0; j <= i; j++)
                C0[i * m + j] = C0[j * m + i] = ref_uniform(&r, -1, 1);
        for (size_t i = 0; i < m; i++) // P = A Aᵀ
            for (size_t j = 0; j < m; j++) {
                double d = 0;
                for (size_t l = 0; l < k; l++)
                    d += A[i * k + l] * A[j * k + l];
                P[i * m + j] = d;
            }
        for (int layout = 0; layout < 16; layout++) {
            const int ta = layout & 1, tc = (layout >> 1) & 1, b0 = (layout >> 2) & 1;
            const bool emul = layout >= 8 && !tc && !ta; // (one layout is enough there)
            if (layout >= 8 && !emul) continue;
            const float beta = b0 ? 0.0f : -0.5f;
            store_op(A, m, k, ta, a);
            for (size_t i = 0; i < m * m; i++)
                c[i] = b0 ? NAN : (float)C0[i]; // (C0 symmetric: either layout)
            ngd_cview va = ta ? ngd_cview_t(ngd_cview_rm(a, k, m, m)) : ngd_cview_rm(a, m, k, k);
            ngd_view vc = tc ? ngd_view_t(ngd_view_rm(c, m, m, m)) : ngd_view_rm(c, m, m, m);
            const bool emul0 = ngd_bf16_emul_set(emul);
            const uint64_t f0 = ngd_gemm_flop_count();
            ngd_syrk_full(0.3f, va, beta, vc);
            const uint64_t fl = ngd_gemm_flop_count() - f0;
            ngd_bf16_emul_set(emul0);
            CHECK_MSG(fl >= (uint64_t)m * m * k && fl <= 2 * (uint64_t)m * m * k,
                      "m %zu k %zu: %llu multiply-adds counted", m, k, (unsigned long long)fl);
            double maxref = 0;
            for (size_t i = 0; i < m; i++)
                for (size_t j = 0; j < m; j++) {
                    C[i * m + j] = 0.3 * P[i * m + j] + (b0 ? 0.0 : -0.5 * C0[i * m + j]);
                    maxref = fmax(maxref, fabs(C[i * m + j]));
                    got[i * m + j] = c[tc ? j * m + i : i * m + j];
                }
            CHECK_TENSOR(got, C, m * m, 0.0, (emul ? 0.01 : GEMM_RTOL) * maxref, "syrk");
            size_t asym = 0, unrounded = 0;
            for (size_t i = 0; i < m; i++)
                for (size_t j = 0; j < m; j++) {
                    if (j < i) asym += memcmp(&got[i * m + j], &got[j * m + i], sizeof(float)) != 0;
                    uint32_t u;
                    memcpy(&u, &got[i * m + j], sizeof u);
                    unrounded += emul && (u & 0xffffu) != 0;
                }
            CHECK_MSG(asym == 0 && unrounded == 0,
                      "m %zu k %zu layout %d: %zu pairs apart, %zu "
                      "not bf16",
                      m, k, layout, asym, unrounded);
        }
        th_set_threads(before);
        free(A), free(C0), free(C), free(P), free(a), free(c), free(got);
    }
}

// ngd_syrk_full's products of 384-1023 rows (K Kᵀ and KᵀK of the mlp's factors) have the same
// bits at 1, 2 and 3 threads and inside a parallel region (the 2 x 2 blocks of one-thread
// products everywhere; at one thread the whole product had rounded differently)
static void syrk_should_give_the_same_bits_at_any_thread_count(void) {
    ref_rng r = {5};
    const int nthr0 = th_set_threads(0);
    const size_t dims[][2] = {{384, 192}, {513, 400}, {785, 785}};
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
        const size_t m = dims[t][0], k = dims[t][1];
        float *a = malloc(m * k * sizeof *a), *c[5];
        for (size_t i = 0; i < m * k; i++)
            a[i] = (float)ref_uniform(&r, -1, 1);
        for (int v = 0; v < 5; v++) {
            c[v] = malloc(m * m * sizeof(float));
            const bool ta = v == 4; // (Aᵀ A of the same numbers stored k x m: its own reference)
            const ngd_cview va =
                ta ? ngd_cview_t(ngd_cview_rm(a, k, m, m)) : ngd_cview_rm(a, m, k, k);
            const int before = th_set_threads(v == 1 ? 2 : v == 2 ? 3 : v == 4 ? 2 : 1);
            if (v == 3) {
                th_set_threads(2);
#pragma omp parallel num_threads(2)
#pragma omp single
                ngd_syrk_full(0.3f, va, 0.0f, ngd_view_rm(c[v], m, m, m));
            } else {
                ngd_syrk_full(0.3f, va, 0.0f, ngd_view_rm(c[v], m, m, m));
            }
            th_set_threads(before);
        }
        for (int v = 1; v < 4; v++)
            CHECK_MSG(memcmp(c[0], c[v], m * m * sizeof(float)) == 0,
                      "m %zu k %zu: run %d differs from one thread's", m, k, v);
        th_set_threads(1); // Aᵀ A at one thread against two
        float *c1 = malloc(m * m * sizeof *c1);
        ngd_syrk_full(0.3f, ngd_cview_t(ngd_cview_rm(a, k, m, m)), 0.0f, ngd_view_rm(c1, m, m, m));
        th_set_threads(nthr0);
        CHECK_MSG(memcmp(c1, c[4], m * m * sizeof(float)) == 0, "m %zu k %zu: AᵀA differs", m, k);
        for (int v = 0; v < 5; v++)
            free(c[v]);
        free(a), free(c1);
    }
}

// beta = 0 never reads C: the small-product loop clears it, and oneDNN's sgemm (above
// SMALL_GEMM_MACS, every layout of A, B and C) must not read the NaN there either. C is a
// view of a wider buffer whose padding must come back untouched.
static void gemm_should_ignore_nan_in_c_when_beta_is_zero(void) {
    float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, c[4] = {NAN, NAN, NAN, NAN};
    ngd_gemm(1.0f, ngd_cview_rm(a, 2, 2, 2), ngd_cview_rm(b, 2, 2, 2), 0.0f,
             ngd_view_rm(c, 2, 2, 2));
    CHECK_TENSOR(c, a, 4, 0.0, 0.0, "beta0");
    ref_rng r = {11};
    const size_t m = 37, k = 53, n = 29, pad = 3; // 56,869 multiply-adds: oneDNN's path
    double *A = malloc(m * k * sizeof *A), *B = malloc(k * n * sizeof *B);
    double *C = malloc(m * n * sizeof *C);
    float *fa = malloc(m * k * sizeof *fa), *fb = malloc(k * n * sizeof *fb);
    float *fc = malloc((m + pad) * (n + pad) * sizeof *fc), *got = malloc(m * n * sizeof *got);
    ref_fill(&r, A, m * k, -1, 1);
    ref_fill(&r, B, k * n, -1, 1);
    ref_matmul(m, k, n, A, B, C);
    double maxref = 0;
    for (size_t i = 0; i < m * n; i++)
        maxref = fmax(maxref, fabs(C[i]));
    for (int layout = 0; layout < 8; layout++) {
        const int ta = layout & 1, tb = (layout >> 1) & 1, tc = (layout >> 2) & 1;
        store_op(A, m, k, ta, fa);
        store_op(B, k, n, tb, fb);
        for (size_t i = 0; i < (m + pad) * (n + pad); i++)
            fc[i] = NAN;
        const size_t ldc = tc ? m + pad : n + pad; // row stride of the stored array
        ngd_cview va = ta ? ngd_cview_t(ngd_cview_rm(fa, k, m, m)) : ngd_cview_rm(fa, m, k, k);
        ngd_cview vb = tb ? ngd_cview_t(ngd_cview_rm(fb, n, k, k)) : ngd_cview_rm(fb, k, n, n);
        ngd_view vc = tc ? ngd_view_t(ngd_view_rm(fc, n, m, ldc)) : ngd_view_rm(fc, m, n, ldc);
        ngd_gemm(1.0f, va, vb, 0.0f, vc);
        size_t pad_kept = 0;
        for (size_t i = 0; i < (tc ? n : m); i++)
            for (size_t j = 0; j < ldc; j++) {
                const float v = fc[i * ldc + j];
                if (j >= (tc ? m : n))
                    pad_kept += isnan(v) != 0;
                else if (tc)
                    got[j * n + i] = v;
                else
                    got[i * n + j] = v;
            }
        CHECK(pad_kept == (tc ? n : m) * pad);
        CHECK_TENSOR(got, C, m * n, 0.0, GEMM_RTOL * maxref, "beta0 sgemm");
    }
    free(A), free(B), free(C), free(fa), free(fb), free(fc), free(got);
}

// ngd_f32_gemm (row-major, transpose flags, leading dimensions 3 past the rows) of one
// shape against float64: C = 1.5 op(A) op(B) + beta C, over a NaN-filled C when beta = 0;
// the padding of C must stay as it was. Returns the elements off by more than GEMM_RTOL of the
// largest (plus a padding element changed, or a call refused).
static size_t f32_gemm_case(ref_rng *r, size_t m, size_t n, size_t k, bool ta, bool tb,
                            float beta) {
    const size_t pad = 3, lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
    const size_t na = (ta ? k : m) * lda, nb = (tb ? n : k) * ldb;
    float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(m * ldc * 4);
    double *R = malloc(m * n * 8);
    for (size_t i = 0; i < na; i++)
        A[i] = (float)ref_uniform(r, -1, 1);
    for (size_t i = 0; i < nb; i++)
        B[i] = (float)ref_uniform(r, -1, 1);
    for (size_t i = 0; i < m * ldc; i++)
        C[i] = beta == 0.0f ? NAN : (float)ref_uniform(r, -1, 1);
    double mx = 0;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0;
            for (size_t p = 0; p < k; p++)
                s += (double)(ta ? A[p * lda + i] : A[i * lda + p]) *
                     (double)(tb ? B[j * ldb + p] : B[p * ldb + j]);
            R[i * n + j] = 1.5 * s + (beta == 0.0f ? 0.0 : (double)beta * (double)C[i * ldc + j]);
            mx = fmax(mx, fabs(R[i * n + j]));
        }
    const float c_pad = C[ldc - 1];
    size_t bad = ngd_f32_gemm(ta, tb, m, n, k, 1.5f, A, lda, B, ldb, beta, C, ldc) != NGD_OK;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++)
            bad += !(fabs((double)C[i * ldc + j] - R[i * n + j]) <= GEMM_RTOL * (mx + 1));
    bad += !(beta == 0.0f ? isnan(C[ldc - 1]) : C[ldc - 1] == c_pad);
    free(A), free(B), free(C), free(R);
    return bad;
}

// libngd's public f32 GEMM on both its kernels: dnnl_sgemm, and the matmul primitive (B
// transposed, 8 rows or more, k of 256 or more), on either side of each bound and every transpose;
// after a bf16 primitive of the same shape (the per-thread cache must key on the type); inside a
// parallel region (dnnl_sgemm on the calling thread); its argument checks; not counted.
static void f32_gemm_should_match_reference_on_both_kernels(void) {
    ref_rng r = {23};
    const size_t dims[][3] = {{8, 40, 300},   {7, 40, 300},    {300, 64, 256},
                              {130, 70, 255}, {2100, 24, 260}, {20, 30, 40}};
    size_t bad = 0;
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++)
        for (int layout = 0; layout < 8; layout++)
            bad += f32_gemm_case(&r, dims[t][0], dims[t][1], dims[t][2], layout & 1, layout & 2,
                                 layout & 4 ? -0.5f : 0.0f);
    CHECK(bad == 0);
    // a bf16 product of a new shape first, then the f32 one of the same shape, leading
    // dimensions and scalars
    uint16_t *A16 = calloc(9 * 303, 2), *B16 = calloc(40 * 303, 2);
    float *C16 = malloc(9 * 43 * 4);
    CHECK(ngd_bf16_gemm(false, true, 9, 40, 300, 1.5f, A16, 303, B16, 303, 0.0f, C16, 43) ==
          NGD_OK);
    CHECK(C16[0] == 0.0f);
    CHECK(f32_gemm_case(&r, 9, 40, 300, false, true, 0.0f) == 0);
    free(A16), free(B16), free(C16);
    size_t pbad = 0;
#pragma omp parallel for num_threads(2) reduction(+ : pbad) schedule(static)
    for (int i = 0; i < 8; i++) {
        ref_rng ri = {(uint64_t)(100 + i)};
        pbad += f32_gemm_case(&ri, 16 + 8 * (size_t)(i % 3), 48, 300, false, true, 0.25f);
    }
    CHECK(pbad == 0);
    // arguments, and nothing counted
    float *A = calloc(40 * 60, 4), *B = calloc(60 * 50, 4), *C = malloc(40 * 50 * 4);
    for (size_t i = 0; i < 40 * 50; i++)
        C[i] = 7.0f;
    CHECK(ngd_f32_gemm(false, false, 40, 50, 60, 1.0f, NULL, 60, B, 50, 0.0f, C, 50) ==
          NGD_ERR_ARG);
    CHECK(ngd_f32_gemm(false, false, 40, 50, 60, 1.0f, A, 60, B, 50, 0.0f, NULL, 50) ==
          NGD_ERR_ARG);
    CHECK(ngd_f32_gemm(false, false, 40, 50, 60, 1.0f, A, 59, B, 50, 0.0f, C, 50) == NGD_ERR_ARG);
    CHECK(ngd_f32_gemm(true, false, 40, 50, 60, 1.0f, A, 39, B, 50, 0.0f, C, 50) == NGD_ERR_ARG);
    CHECK(ngd_f32_gemm(false, true, 40, 50, 60, 1.0f, A, 60, B, 59, 0.0f, C, 50) == NGD_ERR_ARG);
    CHECK(ngd_f32_gemm(false, false, 40, 50, 60, 1.0f, A, 60, B, 50, 0.0f, C, 49) == NGD_ERR_ARG);
    CHECK(C[0] == 7.0f && C[40 * 50 - 1] == 7.0f);
    CHECK(ngd_f32_gemm(false, false, 0, 50, 60, 1.0f, NULL, 60, NULL, 50, 0.0f, NULL, 50) ==
          NGD_OK);
    const uint64_t f0 = ngd_gemm_flop_count();
    CHECK(ngd_f32_gemm(false, true, 40, 50, 60, 1.0f, A, 60, B, 60, 0.0f, C, 50) == NGD_OK);
    CHECK(ngd_gemm_flop_count() == f0 && C[0] == 0.0f);
    free(A), free(B), free(C);
}

static void bf16_should_round_to_nearest_even(void) {
    CHECK(ngd_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(ngd_bf16_to_f32(0x3f80) == 1.0f);
    // 1 + 2^-8 is exactly half-way between bf16 1.0 and 1.0078125: ties to even -> 1.0
    CHECK(ngd_f32_to_bf16(1.00390625f) == 0x3f80);
    // 1 + 3*2^-8 is half-way between 1.0078125 (odd) and 1.015625 (even) -> up
    CHECK(ngd_f32_to_bf16(1.01171875f) == 0x3f82);
    CHECK(isnan(ngd_bf16_to_f32(ngd_f32_to_bf16(NAN))));
    CHECK(isinf(ngd_bf16_to_f32(ngd_f32_to_bf16(INFINITY))));
    // 8 significant bits: the rounding error is at most half an ulp, 2^-8 relative
    ref_rng r = {3};
    for (int i = 0; i < 1000; i++) {
        float x = (float)ref_uniform(&r, -1e3, 1e3);
        float y = ngd_bf16_to_f32(ngd_f32_to_bf16(x));
        CHECK(fabsf(y - x) <= fabsf(x) * 0x1.0p-8f);
    }
}

// A bf16 value's nearest-even rounding, from its two bf16 neighbours compared in double (not
// the bit trick under test): the bits of x's truncation t and of t + 1 ulp
static uint16_t ref_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    const uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    if ((u & 0xffffu) == 0) return lo;
    const double dl = fabs((double)x - (double)ngd_bf16_to_f32(lo));
    const uint32_t hu = (uint32_t)hi << 16;
    float hf;
    memcpy(&hf, &hu, sizeof hf);
    // (past the largest finite bf16 the upper neighbour is Inf: the half-way point is 2^128
    //  minus half an ulp, as IEEE rounding takes it)
    const double dh = isinf(hf) ? ldexp(1.0, 128) - fabs((double)x) : fabs((double)hf - (double)x);
    return dl < dh ? lo : dh < dl ? hi : (lo & 1) ? hi : lo;
}

// The public array conversions (ngd.h): every value as the reference rounds it, specials and
// ties included, on the plain loop (short) and on the threads (long)
static void bf16_arrays_should_round_as_the_reference(void) {
    const size_t n = 300000; // past 8 blocks of 16384: the threaded path
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    uint16_t *h = malloc(n * sizeof *h);
    CHECK(x && y && h);
    const float special[] = {
        0.0f, -0.0f,         1.00390625f,   1.01171875f, -1.00390625f, INFINITY,        -INFINITY,
        NAN,  3.3895314e38f, 3.4028235e38f, 1e-40f,      -1e-45f,      0x1.fffffep-127f};
    const size_t ns = sizeof special / sizeof special[0];
    ref_rng r = {11};
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)(ref_uniform(&r, 0, 4294967295.0));
        if (i % 3 == 0) bits = (bits & 0xffff0000u) | 0x8000u; // a tie
        memcpy(&x[i], &bits, sizeof bits);
        if (i < ns) x[i] = special[i];
    }
    for (int pass = 0; pass < 2; pass++) {
        const size_t m = pass ? n : 1000;
        ngd_bf16_encode(x, h, m);
        size_t bad = 0;
        for (size_t i = 0; i < m; i++)
            bad += h[i] != ref_bf16(x[i]);
        CHECK(bad == 0);
        ngd_bf16_decode(h, y, m);
        bad = 0;
        for (size_t i = 0; i < m; i++) {
            uint32_t want = (uint32_t)h[i] << 16, got;
            memcpy(&got, &y[i], sizeof got);
            bad += got != want;
        }
        CHECK(bad == 0);
    }
    CHECK(h[5] == 0x7f80 && h[6] == 0xff80 && isnan(y[7]) && h[9] == 0x7f80 && h[8] == 0x7f7f);
    CHECK(h[2] == 0x3f80 && h[3] == 0x3f82 && h[1] == 0x8000);
    free(x), free(y), free(h);
}

static void rng_should_be_reproducible_and_standard_normal(void) {
    ngd_rng a, b;
    ngd_rng_seed(&a, 42, 7);
    ngd_rng_seed(&b, 42, 7);
    for (int i = 0; i < 10; i++)
        CHECK(ngd_rng_u64(&a) == ngd_rng_u64(&b));
    ngd_rng_seed(&b, 42, 8);
    CHECK(ngd_rng_u64(&a) != ngd_rng_u64(&b));
    double s = 0, s2 = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double x = ngd_rng_normal(&a);
        s += x, s2 += x * x;
    }
    // mean and variance of n normals: standard errors 1/sqrt(n) ~ 0.0022 and ~0.0032
    CHECK_CLOSE(s / n, 0.0, 0.0, 0.012);
    CHECK_CLOSE(s2 / n, 1.0, 0.0, 0.016);
}

static void status_table_should_name_every_code(void) {
    for (int s = 0; s < NGD_STATUS_COUNT; s++) {
        const char *m = ngd_status_str((ngd_status)s);
        CHECK(m && strcmp(m, "unknown status") != 0);
    }
    CHECK(strcmp(ngd_status_str((ngd_status)999), "unknown status") == 0);
    char want[32]; // the header's macros, as the library reports them
    snprintf(want, sizeof want, "%d.%d.%d", NGD_VERSION_MAJOR, NGD_VERSION_MINOR,
             NGD_VERSION_PATCH);
    CHECK_MSG(strcmp(ngd_version(), want) == 0, "%s != %s", ngd_version(), want);
}

// CRC-32 (IEEE 802.3, reflected 0xEDB88320): the standard check value, and a bitwise
// reference over lengths that cross every tail case of a table/SIMD implementation
static void crc32_should_match_the_bitwise_definition(void) {
    CHECK(ngd_crc32("123456789", 9) == 0xCBF43926u);
    CHECK(ngd_crc32("", 0) == 0u);
    unsigned char buf[1000];
    uint32_t x = 12345u;
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)((x = x * 1664525u + 1013904223u) >> 24);
    const size_t lens[] = {1, 3, 7, 8, 15, 16, 17, 63, 64, 65, 999, 1000};
    for (size_t t = 0; t < sizeof lens / sizeof lens[0]; t++) {
        uint32_t c = 0xffffffffu;
        for (size_t i = 0; i < lens[t]; i++) {
            c ^= buf[i];
            for (int k = 0; k < 8; k++)
                c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
        }
        CHECK_MSG(ngd_crc32(buf, lens[t]) == (c ^ 0xffffffffu), "length %zu", lens[t]);
    }
}

// ngd_view_scale_f32 and ngd_view_scale_copy touch exactly the view's elements, each s x, on
// row-major, transposed, padded (leading dimension > cols) and strided (every other column)
// views, small and large enough to run over the threads
static void view_scaling_should_touch_exactly_the_view(void) {
    const size_t shapes[3][2] = {{3, 5}, {300, 257}, {1, 40000}};
    for (size_t t = 0; t < 3; t++)
        for (int lay = 0; lay < 8; lay++) { // bits: transposed, padded, every other column
            const size_t R = shapes[t][0], C = shapes[t][1], ld = C + (lay & 2 ? 3 : 0);
            const size_t n = R * ld;
            float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
            float *z = malloc(n * sizeof *z);
            unsigned char *in = calloc(n, 1);
            for (size_t i = 0; i < n; i++)
                x[i] = (float)(i % 97) - 48.0f, y[i] = -7.0f, z[i] = x[i];
            ngd_view vx = ngd_view_rm(x, R, C, ld), vy = ngd_view_rm(y, R, C, ld);
            ngd_view vz = ngd_view_rm(z, R, C, ld);
            if (lay & 4) // columns 0, 2, 4, ...
                vx.cols = vy.cols = vz.cols = (C + 1) / 2, vx.cs = vy.cs = vz.cs = 2;
            for (size_t i = 0; i < vx.rows; i++)
                for (size_t j = 0; j < vx.cols; j++)
                    in[(ptrdiff_t)i * vx.rs + (ptrdiff_t)j * vx.cs] = 1;
            if (lay & 1) vx = ngd_view_t(vx), vy = ngd_view_t(vy), vz = ngd_view_t(vz);
            ngd_view_scale_copy(ngd_cv(vx), vy, 0.375f);
            ngd_view_scale_f32(vz, 0.375f);
            size_t bad = 0;
            for (size_t i = 0; i < n; i++) {
                bad += y[i] != (in[i] ? 0.375f * x[i] : -7.0f);
                bad += z[i] != (in[i] ? 0.375f * x[i] : x[i]);
            }
            CHECK_MSG(bad == 0, "shape %zu layout %d: %zu wrong", t, lay, bad);
            free(x), free(y), free(z), free(in);
        }
}

// ngd_view_scale_copy from x in the other orientation (x a transposed view, y row-major:
// the 16 x 16 tile path where 16 lines and 16 elements fit, with tails of lines and elements),
// s = 0.375 and 1, padded leading dimensions left alone, infinities and NaN carried
static void view_scale_copy_should_transpose_exactly(void) {
    const size_t shapes[5][2] = {{3, 5}, {16, 16}, {37, 53}, {300, 257}, {64, 2000}};
    const float ss[2] = {0.375f, 1.0f};
    for (size_t t = 0; t < 5; t++)
        for (int k = 0; k < 2; k++) {
            const size_t R = shapes[t][0], C = shapes[t][1], ldy = C + 3, ldx = R + 5;
            float *x = malloc(C * ldx * sizeof *x), *y = malloc(R * ldy * sizeof *y);
            for (size_t i = 0; i < C * ldx; i++)
                x[i] = (float)(i % 89) - 44.0f;
            x[0] = INFINITY, x[C * ldx - ldx + R - 1] = NAN; // corners of the view
            for (size_t i = 0; i < R * ldy; i++)
                y[i] = -7.0f;
            // y (R x C) = s · xᵀ, x stored (C x R) with leading dimension ldx
            ngd_view_scale_copy(ngd_cview_t(ngd_cview_rm(x, C, R, ldx)), ngd_view_rm(y, R, C, ldy),
                                ss[k]);
            size_t bad = 0;
            for (size_t i = 0; i < R; i++)
                for (size_t j = 0; j < ldy; j++) {
                    const float want = j < C ? ss[k] * x[j * ldx + i] : -7.0f, got = y[i * ldy + j];
                    bad += !(got == want || (isnan(got) && isnan(want)));
                }
            CHECK_MSG(bad == 0, "%zu x %zu, s %g: %zu wrong", R, C, (double)ss[k], bad);
            free(x), free(y);
        }
}

static void alloc_should_reject_overflow(void) {
    CHECK(ngd_malloc(SIZE_MAX / 2, 4) == NULL);
    int ok = 1;
    ngd_mul_size(SIZE_MAX, 2, &ok);
    CHECK(!ok);
    void *p = ngd_malloc(10, 4);
    CHECK(p != NULL);
    ngd_free(p);
}

static const test_case TESTS[] = {
    TEST(bf16_arrays_should_round_as_the_reference),
    TEST(gemm_should_match_reference_for_all_layouts),
    TEST(gemm_should_ignore_nan_in_c_when_beta_is_zero),
    TEST(f32_gemm_should_match_reference_on_both_kernels),
    TEST(syrk_should_match_reference_and_be_symmetric),
    TEST(syrk_should_give_the_same_bits_at_any_thread_count),
    TEST(bf16_should_round_to_nearest_even),
    TEST(crc32_should_match_the_bitwise_definition),
    TEST(rng_should_be_reproducible_and_standard_normal),
    TEST(status_table_should_name_every_code),
    TEST(alloc_should_reject_overflow),
    TEST(view_scaling_should_touch_exactly_the_view),
    TEST(view_scale_copy_should_transpose_exactly),
};
int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
