/*
 * test_nn_grad.c — every engine layer's backward (input gradient and every parameter
 * gradient) against central finite differences of a scalar loss L = Σ w_i y_i (random
 * weights w, summed in float64 over the float32 outputs), in the spirit of ggml's
 * test-backend-ops "grad" mode; plus forward values against plain float64 references
 * (GEMM, naive 7-loop convolution, naive attention, batch-norm / layer-norm formulas) and
 * the contracts the models rely on (backward accumulates, K-FAC statistics layout equals
 * ngd_unfold's). Kinks are declared by construction: ReLU inputs are kept at |x| >= 0.05
 * and max-pool inputs are distinct by >= 0.01, both far more than the step h.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model.h"
#include "nn.h"
#include "ref.h"

// ---- finite differences ----

// Relative tolerance of one derivative: the truncation error of the central difference
// (h²/6·f''' with h = 1e-2, f''' = O(1) for these layers: ~2e-5) plus float32 rounding of
// the two loss values divided by 2h (~1e-5 relative for the sizes here), with headroom.
// Measured worst error/tolerance over all tensors: ~0.06 (run with -v); a wrong term in a
// backward (tried: batch-norm mean-of-x̂ term, attention scale, conv padding) gives 30-80.
#define FD_RTOL 2e-3
// Absolute floor, relative to the largest derivative checked in the tensor: entries that
// are near zero only carry the rounding noise of the big ones.
#define FD_ATOL_REL 5e-4
// entries checked per tensor (all when smaller; else spread evenly)
#define FD_MAX_CHECKS 40
#define FD_H          1e-2f

typedef struct {
    void (*fwd)(void *ctx); // recomputes y from the current inputs and parameters
    void *ctx;
    const float *y; // (ny) the output the loss reads
    size_t ny;
    const float *w; // (ny) loss weights; also the dy handed to backward
} fd_fn;

static double fd_loss(const fd_fn *f) {
    f->fwd(f->ctx);
    double s = 0.0;
    for (size_t i = 0; i < f->ny; i++)
        s += (double)f->w[i] * (double)f->y[i];
    return s;
}

// Compares grad[i] with (L(x_i + h) − L(x_i − h)) / (2h) at up to FD_MAX_CHECKS entries.
// Returns 1 if all agree; prints the worst entry if `report` and one does not.
static int fd_agrees(const fd_fn *f, float *x, const float *grad, size_t n, float h,
                     const char *label, int report) {
    size_t idx[FD_MAX_CHECKS];
    double num[FD_MAX_CHECKS], ana[FD_MAX_CHECKS];
    const size_t k = n < FD_MAX_CHECKS ? n : FD_MAX_CHECKS;
    for (size_t j = 0; j < k; j++)
        idx[j] = (j * n) / k + (n > k ? (j * 7919) % (n / k) : 0);
    double maxnum = 0.0;
    for (size_t j = 0; j < k; j++) {
        const size_t i = idx[j];
        const float x0 = x[i];
        x[i] = x0 + h;
        const float xp = x[i];
        const double lp = fd_loss(f);
        x[i] = x0 - h;
        const float xm = x[i];
        const double lm = fd_loss(f);
        x[i] = x0;
        num[j] = (lp - lm) / ((double)xp - (double)xm); // the step actually taken
        ana[j] = (double)grad[i];
        if (fabs(num[j]) > maxnum) maxnum = fabs(num[j]);
    }
    f->fwd(f->ctx); // leave the layer's cache at the unperturbed point
    int ok = 1;
    size_t worst = 0;
    double worst_ratio = 0.0;
    for (size_t j = 0; j < k; j++) {
        const double tol = FD_RTOL * fabs(num[j]) + FD_ATOL_REL * maxnum + 1e-7;
        const double ratio = fabs(ana[j] - num[j]) / tol;
        if (!(ratio <= 1.0)) ok = 0;
        if (!(ratio <= worst_ratio)) worst_ratio = ratio, worst = j;
    }
    if (ok && report && th_verbose)
        fprintf(stderr, "    %s: %zu derivatives, worst error/tolerance %.3g, max |num| %.3g\n",
                label, k, worst_ratio, maxnum);
    if (!ok && report)
        fprintf(stderr,
                "    %s: analytic %.8g vs numeric %.8g at [%zu] (error/tolerance %.3g, max |num| "
                "%.3g, %zu checked)\n",
                label, ana[worst], num[worst], idx[worst], worst_ratio, maxnum, k);
    return ok;
}

#define FD_CHECK(f, x, grad, n, h, label) CHECK(fd_agrees((f), (x), (grad), (n), (h), (label), 1))

// ---- small helpers ----

static void fill(ref_rng *r, float *x, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++)
        x[i] = (float)ref_uniform(r, lo, hi);
}

// values with |x| in [0.05, 1.05): away from ReLU's kink by much more than FD_H
static void fill_away_from_zero(ref_rng *r, float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double v = ref_uniform(r, 0.05, 1.05);
        x[i] = (float)(ref_uniform(r, 0, 1) < 0.5 ? -v : v);
    }
}

static float *fdup(const float *x, size_t n) {
    float *y = malloc(n * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

static float *zeros(size_t n) { return calloc(n, sizeof(float)); }

// ---- GEMM ----

// f32 GEMM vs f64 reference: k <= 90, entries in [-1, 1]: error <~ k·eps32 relative to the
// largest output; 1e-5 leaves ~10x headroom (as in test_core).
#define GEMM_RTOL 1e-5

// beta = 0 must never read C: garbage (NaN) there cannot leak into the product, on the
// oneDNN path (which nn_sgemm no longer clears C for) and on the small-product loop.
// The engine's arrays: 256 bytes or more start on a cache line (nn_malloc, nn_calloc: the
// kernels' vector loads would straddle two lines otherwise), nn_calloc's are zero, sizes that
// overflow give NULL, and all of them go back with free()
static void engine_arrays_should_be_aligned_zeroed_and_checked(void) {
    const size_t sizes[] = {1, 63, 64, 65, 1000, 4096, 100000, 1 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        const size_t n = sizes[i];
        float *a = nn_malloc(n, sizeof(float));
        unsigned char *z = nn_calloc(n, sizeof(float));
        CHECK(a && z);
        if (n * sizeof(float) >= 256) CHECK((uintptr_t)a % 64 == 0 && (uintptr_t)z % 64 == 0);
        size_t nz = 0;
        for (size_t j = 0; z && j < n * sizeof(float); j++)
            nz += z[j] != 0;
        CHECK(nz == 0);
        for (size_t j = 0; a && j < n; j++)
            a[j] = (float)j; // (the whole array is writable)
        free(a), free(z);
    }
    CHECK(nn_malloc(SIZE_MAX / 2, 4) == NULL && nn_calloc(SIZE_MAX / 2, 4) == NULL);
    void *e = nn_calloc(0, 4);
    CHECK(e != NULL);
    free(e);
}

static void gemm_with_beta_zero_should_ignore_nan_in_c(void) {
    const size_t sz[] = {1, 2, 7, 31, 64, 257, 1024};
    const size_t ns = sizeof sz / sizeof sz[0];
    size_t bad = 0, runs = 0;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (size_t a = 0; a < ns; a++)
                for (size_t b = 0; b < ns; b++)
                    for (size_t c = 0; c < ns; c += 2) {
                        const size_t m = sz[a], n = sz[b], k = sz[c];
                        if (m * n * k > 4000000) continue;
                        float *A = malloc(m * k * sizeof *A), *B = malloc(k * n * sizeof *B);
                        float *C = malloc(m * n * sizeof *C);
                        for (size_t i = 0; i < m * k; i++)
                            A[i] = 0.5f;
                        for (size_t i = 0; i < k * n; i++)
                            B[i] = 2.0f;
                        for (size_t i = 0; i < m * n; i++)
                            C[i] = NAN;
                        nn_sgemm(ta, tb, m, n, k, 1.0f, A, ta ? m : k, B, tb ? k : n, 0.0f, C, n);
                        for (size_t i = 0; i < m * n; i++)
                            if (C[i] != (float)k) {
                                bad++;
                                break;
                            }
                        runs++;
                        free(A), free(B), free(C);
                    }
    CHECK(runs > 300);
    CHECK(bad == 0);
}

static void gemm_should_match_reference_for_all_transposes(void) {
    ref_rng r = {11};
    // {m, n, k}: the plain small-product loop (<= 16K multiply-adds) and oneDNN (the rest)
    const size_t dims[][3] = {{1, 1, 1},   {7, 13, 5},    {33, 1, 9},   {64, 70, 3},
                              {5, 64, 65}, {130, 70, 40}, {3, 200, 90}, {257, 9, 33}};
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
        const size_t m = dims[t][0], n = dims[t][1], k = dims[t][2], pad = 3;
        for (int layout = 0; layout < 4; layout++) {
            const bool ta = layout & 1, tb = layout & 2;
            const size_t lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
            float *A = malloc((ta ? k : m) * lda * sizeof *A);
            float *B = malloc((tb ? n : k) * ldb * sizeof *B);
            float *C = malloc(m * ldc * sizeof *C), *C0 = malloc(m * ldc * sizeof *C0);
            fill(&r, A, (ta ? k : m) * lda, -1, 1);
            fill(&r, B, (tb ? n : k) * ldb, -1, 1);
            fill(&r, C0, m * ldc, -1, 1);
            for (int beta_case = 0; beta_case < 2; beta_case++) {
                const float beta = beta_case ? -0.5f : 0.0f;
                memcpy(C, C0, m * ldc * sizeof *C);
                if (!beta_case)
                    for (size_t i = 0; i < m * ldc; i++)
                        C[i] = NAN; // must never be read
                float *R = fdup(C0, m * ldc);
                nn_sgemm(ta, tb, m, n, k, 1.5f, A, lda, B, ldb, beta, C, ldc);
                nn_sgemm_ref(ta, tb, m, n, k, 1.5f, A, lda, B, ldb, beta, R, ldc);
                double mx = 0;
                for (size_t i = 0; i < m; i++)
                    for (size_t j = 0; j < n; j++)
                        mx = fmax(mx, fabs((double)R[i * ldc + j]));
                for (size_t i = 0; i < m; i++)
                    CHECK_TENSOR(C + i * ldc, R + i * ldc, n, 0.0, GEMM_RTOL * (mx + 1), "sgemm");
                // the padding columns of C are untouched
                if (beta_case)
                    for (size_t i = 0; i < m; i++)
                        for (size_t j = n; j < ldc; j++)
                            CHECK(C[i * ldc + j] == C0[i * ldc + j]);
                free(R);
            }
            free(A), free(B), free(C), free(C0);
        }
    }
}

// ---- Linear ----

typedef struct {
    nn_linear *l;
    const float *x;
    float *y;
    size_t rows;
} lin_ctx;
static void lin_fwd(void *p) {
    lin_ctx *c = p;
    nn_linear_forward(c->l, c->x, c->y, c->rows);
}

static void linear_should_match_reference_and_finite_differences(void) {
    ref_rng r = {21};
    for (int bias = 0; bias < 2; bias++) {
        const size_t rows = 6, din = 9, dout = 5;
        nn_rng g;
        nn_rng_seed(&g, 1);
        nn_linear l;
        CHECK(nn_linear_init(&l, din, dout, bias, &g) == NN_OK);
        CHECK((l.b != NULL) == bias);
        // PyTorch init bound 1/√d_in, and it is the bound: 45 uniform draws all below 0.8 of
        // it have probability 0.8^45 ≈ 4e-5 (and the seed is fixed)
        float wmax = 0.0f;
        for (size_t i = 0; i < din * dout; i++) {
            CHECK(fabsf(l.w[i]) <= 1.0f / 3.0f);
            wmax = fmaxf(wmax, fabsf(l.w[i]));
        }
        CHECK_MSG(wmax > 0.8f / 3.0f, "largest |w| %g, bound 1/3", (double)wmax);
        float *x = malloc(rows * din * sizeof *x), *y = malloc(rows * dout * sizeof *y);
        float *w = malloc(rows * dout * sizeof *w), *dx = zeros(rows * din);
        fill(&r, x, rows * din, -1, 1);
        fill(&r, w, rows * dout, -1, 1);
        lin_ctx c = {&l, x, y, rows};
        lin_fwd(&c);
        double want[6 * 5];
        for (size_t i = 0; i < rows; i++)
            for (size_t o = 0; o < dout; o++) {
                double s = bias ? (double)l.b[o] : 0.0;
                for (size_t j = 0; j < din; j++)
                    s += (double)x[i * din + j] * (double)l.w[o * din + j];
                want[i * dout + o] = s;
            }
        CHECK_TENSOR(y, want, rows * dout, 1e-5, 1e-6, "linear forward");
        nn_linear_backward(&l, w, dx);
        // the statistics are the borrowed input and output gradient
        ngd_matrix a, gm;
        nn_linear_stats(&l, &a, &gm);
        CHECK(a.data == x && a.rows == rows && a.cols == din);
        CHECK(gm.data == w && gm.rows == rows && gm.cols == dout);
        fd_fn f = {lin_fwd, &c, y, rows * dout, w};
        FD_CHECK(&f, x, dx, rows * din, FD_H, "linear dx");
        FD_CHECK(&f, l.w, l.dw, dout * din, FD_H, "linear dW");
        if (bias) FD_CHECK(&f, l.b, l.db, dout, FD_H, "linear db");
        ngd_layer L = nn_linear_ngd_layer(&l, "fc");
        CHECK(L.weight == l.w && L.d_out == dout && L.d_in == din && L.bias == l.b);
        nn_param ps[2];
        CHECK(nn_linear_params(&l, ps) == (size_t)(1 + bias));
        free(x), free(y), free(w), free(dx);
        nn_linear_free(&l);
        CHECK(l.w == NULL);
    }
}

static void backward_should_accumulate_and_zero_grads_should_reset(void) {
    ref_rng r = {22};
    nn_rng g;
    nn_rng_seed(&g, 2);
    nn_linear l;
    CHECK(nn_linear_init(&l, 4, 3, true, &g) == NN_OK);
    float x[8], y[6], dy[6], dx1[8] = {0}, dx2[8] = {0};
    fill(&r, x, 8, -1, 1);
    fill(&r, dy, 6, -1, 1);
    nn_linear_forward(&l, x, y, 2);
    nn_linear_backward(&l, dy, dx1);
    float *dw1 = fdup(l.dw, 12), db1[3];
    memcpy(db1, l.db, sizeof db1);
    memcpy(dx2, dx1, sizeof dx2);
    nn_linear_backward(&l, dy, dx2); // second pass adds the same again
    for (size_t i = 0; i < 12; i++)
        CHECK_CLOSE(l.dw[i], 2 * dw1[i], 1e-6, 1e-7);
    for (size_t i = 0; i < 3; i++)
        CHECK_CLOSE(l.db[i], 2 * db1[i], 1e-6, 1e-7);
    for (size_t i = 0; i < 8; i++)
        CHECK_CLOSE(dx2[i], 2 * dx1[i], 1e-6, 1e-7);
    nn_param ps[2];
    size_t np = nn_linear_params(&l, ps);
    CHECK(nn_param_count(ps, np) == 15);
    nn_zero_grads(ps, np);
    for (size_t i = 0; i < 12; i++)
        CHECK(l.dw[i] == 0.0f);
    for (size_t i = 0; i < 3; i++)
        CHECK(l.db[i] == 0.0f);
    // after nn_zero_grads the next backward writes dW (never reads it: a NaN put there is
    // gone), and the one after adds again; f32 and bf16 mode
    for (int bf = 0; bf < 2; bf++) {
        if (bf) {
            CHECK(nn_linear_use_bf16(&l, 2) == NN_OK);
            nn_linear_forward(&l, x, y, 2);
            nn_zero_grads(ps, np);
            nn_linear_backward(&l, dy, NULL);
            memcpy(dw1, l.dw, sizeof(float) * 12); // (bf16 products: their own dW)
        }
        nn_zero_grads(ps, np);
        for (size_t i = 0; i < 12; i++)
            l.dw[i] = NAN;
        nn_linear_backward(&l, dy, NULL);
        for (size_t i = 0; i < 12; i++)
            CHECK_MSG(l.dw[i] == dw1[i], "bf16 %d: dW[%zu] %g, want %g", bf, i, (double)l.dw[i],
                      (double)dw1[i]);
        nn_linear_backward(&l, dy, NULL);
        for (size_t i = 0; i < 12; i++)
            CHECK_CLOSE(l.dw[i], 2 * dw1[i], 1e-6, 1e-7);
    }
    free(dw1);
    nn_linear_free(&l);
}

// The checker itself must be able to fail: a gradient with one wrong entry is caught.
static void finite_difference_check_should_catch_a_wrong_gradient(void) {
    ref_rng r = {23};
    nn_rng g;
    nn_rng_seed(&g, 3);
    nn_linear l;
    CHECK(nn_linear_init(&l, 5, 4, true, &g) == NN_OK);
    float x[15], y[12], w[12], dx[15] = {0};
    fill(&r, x, 15, -1, 1);
    fill(&r, w, 12, -1, 1);
    lin_ctx c = {&l, x, y, 3};
    lin_fwd(&c);
    nn_linear_backward(&l, w, dx);
    fd_fn f = {lin_fwd, &c, y, 12, w};
    CHECK(fd_agrees(&f, x, dx, 15, FD_H, "exact", 0));
    dx[7] *= 1.05f; // a 5% error in one entry
    CHECK(!fd_agrees(&f, x, dx, 15, FD_H, "corrupted", 0));
    nn_linear_free(&l);
}

// ---- Conv2d ----

// y[n, co, o1, o2] = b[co] + Σ_{c in group, k1, k2} W[co, c, k1, k2] x[n, g*cg + c, i1, i2]
static void conv_naive(const ngd_conv_geom *G, size_t cout, size_t N, const float *x,
                       const float *W, const float *b, double *y) {
    const size_t oh = ngd_conv_out_h(G), ow = ngd_conv_out_w(G), cg = G->c_in / G->groups;
    const size_t cog = cout / G->groups;
    for (size_t n = 0; n < N; n++)
        for (size_t co = 0; co < cout; co++)
            for (size_t o1 = 0; o1 < oh; o1++)
                for (size_t o2 = 0; o2 < ow; o2++) {
                    double s = b ? (double)b[co] : 0.0;
                    const size_t grp = co / cog;
                    for (size_t c = 0; c < cg; c++)
                        for (size_t k1 = 0; k1 < G->k1; k1++)
                            for (size_t k2 = 0; k2 < G->k2; k2++) {
                                long i1 = (long)(o1 * G->s1 + k1 * G->dil1) - (long)G->p1;
                                long i2 = (long)(o2 * G->s2 + k2 * G->dil2) - (long)G->p2;
                                if (i1 < 0 || i2 < 0 || i1 >= (long)G->h || i2 >= (long)G->w)
                                    continue;
                                s += (double)W[((co * cg + c) * G->k1 + k1) * G->k2 + k2] *
                                     (double)x[((n * G->c_in + grp * cg + c) * G->h + (size_t)i1) *
                                                   G->w +
                                               (size_t)i2];
                            }
                    y[((n * cout + co) * oh + o1) * ow + o2] = s;
                }
}

typedef struct {
    nn_conv2d *l;
    const float *x;
    float *y;
    size_t n;
} conv_ctx;
static void conv_fwd(void *p) {
    conv_ctx *c = p;
    nn_conv2d_forward(c->l, c->x, c->y, c->n);
}

// geometries: {c_in, h, w, k1, k2, s1, s2, p1, p2, dil1, dil2, groups}, c_out, bias
typedef struct {
    ngd_conv_geom g;
    size_t cout;
    bool bias;
} conv_case;
static const conv_case CONV_CASES[] = {
    {{3, 7, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1}, 4, true},  // "same" 3x3
    {{2, 8, 7, 3, 2, 2, 1, 1, 0, 1, 1, 1}, 3, true},  // stride, non-square kernel
    {{2, 9, 9, 3, 3, 1, 2, 2, 1, 2, 2, 1}, 3, false}, // dilation, no bias
    {{4, 6, 5, 3, 3, 2, 2, 1, 1, 1, 1, 2}, 6, true},  // groups 2
    {{3, 5, 5, 1, 1, 1, 1, 0, 0, 1, 1, 3}, 3, true},  // depthwise 1x1
    {{2, 4, 4, 4, 4, 4, 4, 0, 0, 1, 1, 1}, 5, true},  // patchify (k = s)
    {{2, 3, 1, 1, 1, 1, 3, 2, 2, 1, 1, 2}, 2, true},  // windows wholly in the padding
    // small 'same' planes, a chunk of samples through zero-bordered copies: rows of 16
    // bytes; of 8 with dilation in one direction; of 32 with groups
    {{3, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1}, 5, true},
    {{2, 8, 2, 3, 1, 1, 1, 2, 0, 2, 1, 1}, 3, true},
    {{4, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 2}, 2, true},
};

static void conv2d_forward_should_match_naive_convolution(void) {
    ref_rng r = {31};
    for (size_t t = 0; t < sizeof CONV_CASES / sizeof CONV_CASES[0]; t++) {
        const conv_case *cc = &CONV_CASES[t];
        const size_t N = 3;
        nn_rng g;
        nn_rng_seed(&g, 10 + t);
        nn_conv2d l;
        CHECK(nn_conv2d_init(&l, &cc->g, cc->cout, cc->bias, N, &g) == NN_OK);
        const size_t nx = N * cc->g.c_in * cc->g.h * cc->g.w, ny = N * cc->cout * l.oh * l.ow;
        float *x = malloc(nx * sizeof *x), *y = malloc(ny * sizeof *y);
        double *want = malloc(ny * sizeof *want);
        fill(&r, x, nx, -1, 1);
        nn_conv2d_forward(&l, x, y, N);
        conv_naive(&cc->g, cc->cout, N, x, l.w, l.b, want);
        CHECK_TENSOR(y, want, ny, 1e-5, 1e-5, "conv2d forward");
        // a smaller batch than planned works the same
        nn_conv2d_forward(&l, x, y, 1);
        CHECK_TENSOR(y, want, ny / N, 1e-5, 1e-5, "conv2d forward N=1");
        free(x), free(y), free(want);
        nn_conv2d_free(&l);
    }
}

static void conv2d_backward_should_match_finite_differences(void) {
    ref_rng r = {32};
    for (size_t t = 0; t < sizeof CONV_CASES / sizeof CONV_CASES[0]; t++) {
        const conv_case *cc = &CONV_CASES[t];
        const size_t N = 2;
        nn_rng g;
        nn_rng_seed(&g, 20 + t);
        nn_conv2d l;
        CHECK(nn_conv2d_init(&l, &cc->g, cc->cout, cc->bias, N, &g) == NN_OK);
        const size_t nx = N * cc->g.c_in * cc->g.h * cc->g.w, ny = N * cc->cout * l.oh * l.ow;
        float *x = malloc(nx * sizeof *x), *y = malloc(ny * sizeof *y);
        float *w = malloc(ny * sizeof *w), *dx = zeros(nx);
        fill(&r, x, nx, -1, 1);
        fill(&r, w, ny, -1, 1);
        conv_ctx c = {&l, x, y, N};
        conv_fwd(&c);
        nn_conv2d_backward(&l, w, dx);
        float *dw = fdup(l.dw, cc->cout * l.d_in), *db = cc->bias ? fdup(l.db, cc->cout) : NULL;
        fd_fn f = {conv_fwd, &c, y, ny, w};
        char label[64];
        snprintf(label, sizeof label, "conv2d case %zu dx", t);
        FD_CHECK(&f, x, dx, nx, FD_H, label);
        snprintf(label, sizeof label, "conv2d case %zu dW", t);
        FD_CHECK(&f, l.w, dw, cc->cout * l.d_in, FD_H, label);
        if (db) {
            snprintf(label, sizeof label, "conv2d case %zu db", t);
            FD_CHECK(&f, l.b, db, cc->cout, FD_H, label);
        }
        free(x), free(y), free(w), free(dx), free(dw), free(db);
        nn_conv2d_free(&l);
    }
}

// a = im2col rows (n, o1, o2) x (c, k1, k2) must be exactly what libngd's ngd_unfold makes
// (group-averaged for groups > 1); g = dy permuted to (n, o1, o2) x c_out.
static void conv2d_stats_should_match_ngd_unfold_and_permuted_dy(void) {
    ref_rng r = {33};
    const size_t cases[] = {0, 1, 2, 3, 4, 6};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const conv_case *cc = &CONV_CASES[cases[ci]];
        const size_t N = 3;
        nn_rng g;
        nn_rng_seed(&g, 30 + ci);
        nn_conv2d l;
        CHECK(nn_conv2d_init(&l, &cc->g, cc->cout, cc->bias, N, &g) == NN_OK);
        const size_t L = l.oh * l.ow, nx = N * cc->g.c_in * cc->g.h * cc->g.w;
        const size_t ny = N * cc->cout * L;
        float *x = malloc(nx * sizeof *x), *y = malloc(ny * sizeof *y),
              *dy = malloc(ny * sizeof *dy);
        float *un = malloc(N * L * l.d_in * sizeof *un), *gp = malloc(ny * sizeof *gp);
        fill(&r, x, nx, -1, 1);
        fill(&r, dy, ny, -1, 1);
        nn_conv2d_forward(&l, x, y, N);
        nn_conv2d_backward(&l, dy, NULL);
        ngd_matrix a, gm;
        float *scratch = malloc(nn_conv2d_stats_size(&l) * sizeof *scratch);
        CHECK(nn_conv2d_stats(&l, scratch, &a, &gm) == NN_OK);
        CHECK(a.rows == N * L && a.cols == l.d_in && a.ld == l.d_in && a.dtype == NGD_F32);
        CHECK(gm.rows == N * L && gm.cols == cc->cout);
        CHECK(ngd_unfold(&cc->g, N, x, false, un) == NGD_OK);
        CHECK_TENSOR((const float *)a.data, un, N * L * l.d_in, 0.0, 0.0, "conv a vs ngd_unfold");
        // and a naive unfold: row (n, o1, o2), column (c, k1, k2), averaged over groups
        const ngd_conv_geom *G = &cc->g;
        const size_t cgr = G->c_in / G->groups;
        for (size_t nn = 0; nn < N; nn++)
            for (size_t o1 = 0; o1 < l.oh; o1++)
                for (size_t o2 = 0; o2 < l.ow; o2++)
                    for (size_t c = 0; c < cgr; c++)
                        for (size_t k1 = 0; k1 < G->k1; k1++)
                            for (size_t k2 = 0; k2 < G->k2; k2++) {
                                long i1 = (long)(o1 * G->s1 + k1 * G->dil1) - (long)G->p1;
                                long i2 = (long)(o2 * G->s2 + k2 * G->dil2) - (long)G->p2;
                                double v = 0;
                                if (i1 >= 0 && i2 >= 0 && i1 < (long)G->h && i2 < (long)G->w)
                                    for (size_t gr = 0; gr < G->groups; gr++)
                                        v += (double)
                                            x[((nn * G->c_in + gr * cgr + c) * G->h + (size_t)i1) *
                                                  G->w +
                                              (size_t)i2];
                                un[((nn * l.oh + o1) * l.ow + o2) * l.d_in +
                                   (c * G->k1 + k1) * G->k2 + k2] = (float)(v / (double)G->groups);
                            }
        CHECK_TENSOR((const float *)a.data, un, N * L * l.d_in, 1e-6, 1e-7, "conv a vs naive");
        for (size_t n = 0; n < N; n++)
            for (size_t p = 0; p < L; p++)
                for (size_t o = 0; o < cc->cout; o++)
                    gp[(n * L + p) * cc->cout + o] = dy[(n * cc->cout + o) * L + p];
        CHECK_TENSOR((const float *)gm.data, gp, ny, 0.0, 0.0, "conv g = permuted dy");
        ngd_layer Ly = nn_conv2d_ngd_layer(&l, "conv");
        CHECK(Ly.d_out == cc->cout && Ly.d_in == l.d_in && Ly.weight == l.w);
        free(x), free(y), free(dy), free(un), free(gp), free(scratch);
        nn_conv2d_free(&l);
    }
}

// Sizes above the engine's OpenMP threshold (32K floats per loop), so the threaded im2col
// and col2im paths run; backward is compared with the naive formulas
//   dW[co, c, k1, k2] = Σ dy[n, co, o] x[n, g c, i(o, k)],  dx[n, g c, i(o, k)] += Σ dy W
// instead of finite differences (too many evaluations at this size).
static void conv2d_threaded_paths_should_match_naive_forward_and_backward(void) {
    ref_rng r = {34};
    // one sample per chunk; strided groups (dx by col2im); several samples per chunk with
    // dx by the transposed convolution, more input than output channels, no padding in one
    // direction and dilation in the other (its flipped kernel pads unevenly)
    const conv_case cases[] = {{{16, 17, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1}, 24, true},
                               {{32, 16, 15, 3, 3, 2, 2, 1, 1, 1, 1, 2}, 8, true},
                               {{6, 9, 8, 3, 3, 1, 1, 0, 1, 2, 1, 1}, 3, true}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const ngd_conv_geom *G = &cases[t].g;
        const size_t N = 5, cout = cases[t].cout;
        nn_rng g;
        nn_rng_seed(&g, 40 + t);
        nn_conv2d l;
        CHECK(nn_conv2d_init(&l, G, cout, true, N, &g) == NN_OK);
        const size_t L = l.oh * l.ow, nx = N * G->c_in * G->h * G->w, ny = N * cout * L;
        const size_t cg = G->c_in / G->groups, cog = cout / G->groups;
        float *x = malloc(nx * sizeof *x), *y = malloc(ny * sizeof *y),
              *dy = malloc(ny * sizeof *dy);
        float *dx = zeros(nx);
        double *want = malloc(ny * sizeof *want), *wdx = calloc(nx, sizeof *wdx);
        double *wdw = calloc(cout * l.d_in, sizeof *wdw), *wdb = calloc(cout, sizeof *wdb);
        fill(&r, x, nx, -1, 1);
        fill(&r, dy, ny, -1, 1);
        nn_conv2d_forward(&l, x, y, N);
        conv_naive(G, cout, N, x, l.w, l.b, want);
        CHECK_TENSOR(y, want, ny, 1e-5, 1e-5, "large conv2d forward");
        nn_conv2d_backward(&l, dy, dx);
        for (size_t n = 0; n < N; n++)
            for (size_t co = 0; co < cout; co++)
                for (size_t o = 0; o < L; o++) {
                    const double d = (double)dy[(n * cout + co) * L + o];
                    const size_t o1 = o / l.ow, o2 = o % l.ow, grp = co / cog;
                    wdb[co] += d;
                    for (size_t c = 0; c < cg; c++)
                        for (size_t k1 = 0; k1 < G->k1; k1++)
                            for (size_t k2 = 0; k2 < G->k2; k2++) {
                                long i1 = (long)(o1 * G->s1 + k1 * G->dil1) - (long)G->p1;
                                long i2 = (long)(o2 * G->s2 + k2 * G->dil2) - (long)G->p2;
                                if (i1 < 0 || i2 < 0 || i1 >= (long)G->h || i2 >= (long)G->w)
                                    continue;
                                const size_t xi =
                                    ((n * G->c_in + grp * cg + c) * G->h + (size_t)i1) * G->w +
                                    (size_t)i2;
                                const size_t wi = ((co * cg + c) * G->k1 + k1) * G->k2 + k2;
                                wdw[wi] += d * (double)x[xi];
                                wdx[xi] += d * (double)l.w[wi];
                            }
                }
        // sums of up to N*L = 1.4K (dW) or 9*co (dx) products of O(1) terms in float32
        CHECK_TENSOR(l.dw, wdw, cout * l.d_in, 1e-4, 1e-4, "large conv2d dW");
        CHECK_TENSOR(l.db, wdb, cout, 1e-4, 1e-4, "large conv2d db");
        CHECK_TENSOR(dx, wdx, nx, 1e-4, 1e-5, "large conv2d dx");
        free(x), free(y), free(dy), free(dx), free(want), free(wdx), free(wdw), free(wdb);
        nn_conv2d_free(&l);
    }
}

// Before an adding and a writing backward are compared: z zeroed for the adding one, q
// filled with NaN for the writing one (which must not read it)
static void zeros_and_nans(float *z, float *q, size_t n) {
    memset(z, 0, n * sizeof *z);
    for (size_t i = 0; i < n; i++)
        q[i] = NAN;
}

// The write (=) variants and the fused BN-ReLU the CNNs use (and the mlp's ReLU and Linear,
// the transformer block's GELU) equal the plain layers: the same outputs, and the same gradients as
// the plain backward into a zeroed buffer, whatever the buffer held (NaN here).
static void fused_and_writing_variants_should_equal_the_plain_layers(void) {
    ref_rng r = {77};
    for (int train = 1; train >= 0; train--) { // BatchNorm + ReLU
        const size_t C = 4, HW = 30, N = 3, n = N * C * HW;
        nn_batchnorm a, b;
        CHECK(nn_batchnorm_init(&a, C, HW, N) == NN_OK && nn_batchnorm_init(&b, C, HW, N) == NN_OK);
        fill(&r, a.w, C, 0.5, 1.5);
        fill(&r, a.b, C, -0.5, 0.5);
        memcpy(b.w, a.w, C * sizeof(float)), memcpy(b.b, a.b, C * sizeof(float));
        float *x = malloc(n * sizeof *x), *y1 = malloc(n * sizeof *y1),
              *y2 = malloc(n * sizeof *y2);
        float *dy = malloc(n * sizeof *dy), *g = malloc(n * sizeof *g), *dx1 = zeros(n);
        float *dx2 = malloc(n * sizeof *dx2);
        fill(&r, x, n, -2, 2);
        fill(&r, dy, n, -1, 1);
        nn_batchnorm_forward(&a, x, y1, N, train);
        for (size_t i = 0; i < n; i++) { // ReLU after it, by hand
            g[i] = y1[i] > 0.0f ? dy[i] : 0.0f;
            y1[i] = y1[i] > 0.0f ? y1[i] : 0.0f;
        }
        nn_batchnorm_relu_forward(&b, x, y2, N, train);
        CHECK(memcmp(y1, y2, n * sizeof(float)) == 0);
        nn_batchnorm_backward(&a, g, dx1);
        for (size_t i = 0; i < n; i++)
            dx2[i] = NAN;
        nn_batchnorm_relu_backward(&b, dy, dx2);
        CHECK(memcmp(dx1, dx2, n * sizeof(float)) == 0);
        CHECK(memcmp(a.dw, b.dw, C * sizeof(float)) == 0 &&
              memcmp(a.db, b.db, C * sizeof(float)) == 0);
        free(x), free(y1), free(y2), free(dy), free(g), free(dx1), free(dx2);
        nn_batchnorm_free(&a), nn_batchnorm_free(&b);
    }
    for (size_t t = 0; t < 3; t++) { // max pooling 2x2/2: windows tiling the input, or not;
        // rows of 3 windows and of 21 (a whole 16-lane vector and a tail)
        const size_t N = 2, C = 3, H = t == 1 ? 7 : 8, W = t == 2 ? 42 : 6, n = N * C * H * W;
        nn_maxpool2d l;
        CHECK(nn_maxpool2d_init(&l, C, H, W, 2, 2, 0, N) == NN_OK);
        const size_t ny = N * C * l.oh * l.ow;
        float *x = malloc(n * sizeof *x), *y = malloc(ny * sizeof *y),
              *dy = malloc(ny * sizeof *dy);
        float *dx1 = zeros(n), *dx2 = malloc(n * sizeof *dx2);
        fill(&r, x, n, -1, 1);
        fill(&r, dy, ny, -1, 1);
        nn_maxpool2d_forward(&l, x, y, N);
        nn_maxpool2d_backward(&l, dy, dx1);
        for (size_t i = 0; i < n; i++)
            dx2[i] = NAN;
        nn_maxpool2d_backward_set(&l, dy, dx2);
        CHECK(memcmp(dx1, dx2, n * sizeof(float)) == 0);
        free(x), free(y), free(dy), free(dx1), free(dx2);
        nn_maxpool2d_free(&l);
    }
    { // ReLU and Linear (with bias; the f32 and the bf16 products): dx written
        const size_t rows = 9, din = 70, dout = 40, n = rows * din;
        float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *dy = malloc(n * sizeof *dy);
        float *dx1 = malloc(n * sizeof *dx1), *dx2 = malloc(n * sizeof *dx2);
        fill(&r, x, n, -1, 1);
        fill(&r, dy, n, -1, 1);
        for (int kind = 0; kind < 3; kind++) { // ReLU, GELU's erf and tanh forms
            nn_relu ra = {0}, rb = {0};
            nn_gelu ga = {.kind = kind == 2 ? NN_GELU_TANH : NN_GELU_ERF}, gb = ga;
            zeros_and_nans(dx1, dx2, n);
            if (kind == 0) {
                nn_relu_forward(&ra, x, y, n), nn_relu_forward(&rb, x, y, n);
                nn_relu_backward(&ra, dy, dx1), nn_relu_backward_set(&rb, dy, dx2);
            } else {
                nn_gelu_forward(&ga, x, y, n), nn_gelu_forward(&gb, x, y, n);
                nn_gelu_backward(&ga, dy, dx1), nn_gelu_backward_set(&gb, dy, dx2);
            }
            CHECK_MSG(memcmp(dx1, dx2, n * sizeof(float)) == 0, "activation %d", kind);
            // the adding backward onto a start other than zero: start + the written gradient
            for (size_t i = 0; i < n; i++)
                dx1[i] = 0.25f * (float)(i % 7) - 0.5f;
            if (kind == 0)
                nn_relu_backward(&ra, dy, dx1);
            else
                nn_gelu_backward(&ga, dy, dx1);
            size_t off = 0;
            for (size_t i = 0; i < n; i++)
                off += dx1[i] != (0.25f * (float)(i % 7) - 0.5f) + dx2[i];
            CHECK_MSG(off == 0, "activation %d added onto a start", kind);
            // the _set16 twins: the same dx, and dx16 its rounding (the next Linear's dy16)
            float *dx3 = malloc(n * sizeof *dx3);
            uint16_t *d16 = malloc(n * sizeof *d16), *want16 = malloc(n * sizeof *want16);
            for (size_t i = 0; i < n; i++)
                dx3[i] = NAN, d16[i] = 0x7fc1u;
            if (kind == 0)
                nn_relu_backward_set16(&rb, dy, dx3, d16);
            else
                nn_gelu_backward_set16(&gb, dy, dx3, d16);
            nn_bf16_encode(dx2, want16, n);
            CHECK_MSG(memcmp(dx3, dx2, n * sizeof(float)) == 0 &&
                          memcmp(d16, want16, n * sizeof(uint16_t)) == 0,
                      "activation %d, bf16 twin", kind);
            free(dx3), free(d16), free(want16);
        }
        for (int bf = 0; bf < 2; bf++) {
            nn_linear la, lb;
            nn_rng g;
            nn_rng_seed(&g, 61);
            CHECK(nn_linear_init(&la, din, dout, true, &g) == NN_OK);
            nn_rng_seed(&g, 61);
            CHECK(nn_linear_init(&lb, din, dout, true, &g) == NN_OK);
            if (bf)
                CHECK(nn_linear_use_bf16(&la, rows) == NN_OK &&
                      nn_linear_use_bf16(&lb, rows) == NN_OK);
            float *out = malloc(rows * dout * sizeof *out), *g2 = malloc(rows * dout * sizeof *g2);
            fill(&r, g2, rows * dout, -1, 1);
            nn_linear_forward(&la, x, out, rows);
            nn_linear_forward(&lb, x, out, rows);
            zeros_and_nans(dx1, dx2, n);
            nn_linear_backward(&la, g2, dx1);
            nn_linear_backward_set(&lb, g2, dx2);
            CHECK(memcmp(dx1, dx2, n * sizeof(float)) == 0);
            CHECK(memcmp(la.dw, lb.dw, dout * din * sizeof(float)) == 0 &&
                  memcmp(la.db, lb.db, dout * sizeof(float)) == 0);
            CHECK((nn_linear_dy16(&la) != NULL) == (bf == 1));
            if (bf) { // dy16 filled by the caller: the same dW, db, dx and statistics
                float *dx3 = malloc(n * sizeof *dx3);
                for (size_t i = 0; i < n; i++)
                    dx3[i] = NAN;
                nn_linear_forward(&la, x, out, rows);
                nn_zero_grads((nn_param[]){{"w", la.w, la.dw, dout * din, &la.dw_zeroed},
                                           {"b", la.b, la.db, dout, NULL}},
                              2);
                nn_bf16_encode(g2, nn_linear_dy16(&la), rows * dout);
                nn_linear_backward_set_in16(&la, g2, dx3);
                nn_linear_forward(&lb, x, out, rows);
                nn_zero_grads((nn_param[]){{"w", lb.w, lb.dw, dout * din, &lb.dw_zeroed},
                                           {"b", lb.b, lb.db, dout, NULL}},
                              2);
                nn_linear_backward_set(&lb, g2, dx2);
                CHECK(memcmp(dx3, dx2, n * sizeof(float)) == 0 &&
                      memcmp(la.dw, lb.dw, dout * din * sizeof(float)) == 0 &&
                      memcmp(la.db, lb.db, dout * sizeof(float)) == 0 &&
                      memcmp(la.dy16, lb.dy16, rows * dout * sizeof(uint16_t)) == 0);
                free(dx3);
            }
            free(out), free(g2);
            nn_linear_free(&la), nn_linear_free(&lb);
        }
        free(x), free(y), free(dy), free(dx1), free(dx2);
    }
    // Conv2d: one sample per chunk (16x16 outputs), several (6x5), groups
    const conv_case cases[] = {{{3, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1}, 5, true},
                               {{4, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1, 2}, 6, true}};
    for (size_t t = 0; t < 2; t++) {
        const ngd_conv_geom *G = &cases[t].g;
        const size_t N = 5, cout = cases[t].cout;
        nn_rng g;
        nn_rng_seed(&g, 50 + t);
        nn_conv2d l;
        CHECK(nn_conv2d_init(&l, G, cout, true, N, &g) == NN_OK);
        const size_t nx = N * G->c_in * G->h * G->w, ny = N * cout * l.oh * l.ow;
        float *x = malloc(nx * sizeof *x), *y = malloc(ny * sizeof *y),
              *dy = malloc(ny * sizeof *dy);
        float *dx1 = zeros(nx), *dx2 = malloc(nx * sizeof *dx2);
        fill(&r, x, nx, -1, 1);
        fill(&r, dy, ny, -1, 1);
        nn_conv2d_forward(&l, x, y, N);
        nn_conv2d_backward(&l, dy, dx1);
        float *dw1 = fdup(l.dw, cout * l.d_in);
        memset(l.dw, 0, cout * l.d_in * sizeof(float));
        for (size_t i = 0; i < nx; i++)
            dx2[i] = NAN;
        nn_conv2d_backward_set(&l, dy, dx2);
        CHECK(memcmp(dx1, dx2, nx * sizeof(float)) == 0);
        CHECK(memcmp(dw1, l.dw, cout * l.d_in * sizeof(float)) == 0);
        free(x), free(y), free(dy), free(dx1), free(dx2), free(dw1);
        nn_conv2d_free(&l);
    }
}

static void conv2d_init_should_reject_bad_geometry(void) {
    nn_rng g;
    nn_rng_seed(&g, 4);
    nn_conv2d l;
    ngd_conv_geom G = {3, 8, 8, 3, 3, 1, 1, 0, 0, 1, 1, 1};
    G.groups = 2; // does not divide c_in = 3
    CHECK(nn_conv2d_init(&l, &G, 4, true, 2, &g) == NN_ERR_ARG);
    G.groups = 1;
    G.s1 = 0;
    CHECK(nn_conv2d_init(&l, &G, 4, true, 2, &g) == NN_ERR_ARG);
    G.s1 = 1;
    G.k1 = 9; // kernel larger than the padded image
    CHECK(nn_conv2d_init(&l, &G, 4, true, 2, &g) == NN_ERR_ARG);
    CHECK(l.w == NULL && l.colt == NULL);
}

// ---- BatchNorm ----

typedef struct {
    nn_batchnorm *l;
    const float *x;
    float *y;
    size_t n;
    bool train;
} bn_ctx;
static void bn_fwd(void *p) {
    bn_ctx *c = p;
    nn_batchnorm_forward(c->l, c->x, c->y, c->n, c->train);
}

static void batchnorm_backward_should_match_finite_differences(void) {
    ref_rng r = {41};
    // {C, HW, N}: BatchNorm1d (HW = 1) and BatchNorm2d, in training and evaluation mode;
    // planes of 33: the backward's 16-lane sums twice and a tail
    const size_t shapes[][3] = {{5, 1, 6}, {3, 12, 3}, {2, 33, 2}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int train = 1; train >= 0; train--) {
            const size_t C = shapes[s][0], HW = shapes[s][1], N = shapes[s][2], n = N * C * HW;
            nn_batchnorm l;
            CHECK(nn_batchnorm_init(&l, C, HW, N) == NN_OK);
            fill(&r, l.w, C, 0.5, 1.5);
            fill(&r, l.b, C, -0.5, 0.5);
            fill(&r, l.running_mean, C, -0.3, 0.3);
            fill(&r, l.running_var, C, 0.5, 2.0);
            float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
            float *w = malloc(n * sizeof *w), *dx = zeros(n);
            fill(&r, x, n, -2, 2);
            fill(&r, w, n, -1, 1);
            bn_ctx c = {&l, x, y, N, train};
            bn_fwd(&c);
            nn_batchnorm_backward(&l, w, dx);
            float *dw = fdup(l.dw, C), *db = fdup(l.db, C);
            fd_fn f = {bn_fwd, &c, y, n, w};
            const char *m = train ? "train" : "eval";
            char label[64];
            snprintf(label, sizeof label, "batchnorm%s %s dx", HW == 1 ? "1d" : "2d", m);
            FD_CHECK(&f, x, dx, n, FD_H, label);
            snprintf(label, sizeof label, "batchnorm%s %s dgamma", HW == 1 ? "1d" : "2d", m);
            FD_CHECK(&f, l.w, dw, C, FD_H, label);
            snprintf(label, sizeof label, "batchnorm%s %s dbeta", HW == 1 ? "1d" : "2d", m);
            FD_CHECK(&f, l.b, db, C, FD_H, label);
            free(x), free(y), free(w), free(dx), free(dw), free(db);
            nn_batchnorm_free(&l);
        }
}

// A conv-BN-ReLU block in training takes BN's statistics from the moments the conv
// computed per output plane; it must give the two-pass statistics up to float rounding,
// also far from zero (outputs near 1000 with unit spread: a one-pass Σx² would lose them),
// on one-sample chunks (planes of 18x18) and several-sample chunks (6x6), with and without
// a bias, into f32 and bf16 outputs; evaluation keeps the running statistics. Each plane's
// moments are nn_plane_moments' of the conv's output, bit for bit, also where Winograd takes
// them sub-batch by sub-batch.
static void conv_bn_relu_block_statistics_should_match_the_two_pass_ones(void) {
    ref_rng r = {91};
    for (int t = 0; t < 14; t++) {
        // (t >= 8: 16 channels in and out, the Winograd layers' moments from their output;
        // t >= 12: 64x64 planes, in Winograd sub-batches of 4 images)
        const bool big = t >= 8, subs = t >= 12;
        const size_t HW1 = subs    ? 64
                           : t & 1 ? 6
                                   : 18,
                     N = subs ? 8 : 7, C = big ? 16 : 5, cin = big ? 16 : 3;
        const bool bias = !(t & 2), bf16out = t & 4;
        const ngd_conv_geom G = {cin, HW1, HW1, 3, 3, 1, 1, 1, 1, 1, 1, 1};
        nn_rng g;
        nn_rng_seed(&g, 60 + (uint64_t)t);
        nn_conv2d conv;
        CHECK(nn_conv2d_init(&conv, &G, C, bias, N, &g) == NN_OK);
        const size_t HW = conv.oh * conv.ow, nx = N * cin * HW1 * HW1, ny = N * C * HW;
        nn_batchnorm a, b;
        CHECK(nn_batchnorm_init(&a, C, HW, N) == NN_OK && nn_batchnorm_init(&b, C, HW, N) == NN_OK);
        fill(&r, a.w, C, 0.5, 1.5);
        fill(&r, a.b, C, -0.5, 0.5);
        memcpy(b.w, a.w, C * sizeof(float)), memcpy(b.b, a.b, C * sizeof(float));
        float *x = malloc(nx * sizeof *x), *cz = malloc(ny * sizeof *cz);
        float *cz2 = malloc(ny * sizeof *cz2), *y1 = malloc(ny * sizeof *y1);
        float *y2 = malloc(ny * sizeof *y2);
        uint16_t *h1 = malloc(ny * sizeof *h1), *h2 = malloc(ny * sizeof *h2);
        fill(&r, x, nx, -1, 1);
        // outputs near 1000: a bias (or, without one, an input offset positive weights sum)
        if (bias) { // and planes of different means (an offset per sample)
            for (size_t c = 0; c < C; c++)
                conv.b[c] = 1000.0f + (float)c;
            for (size_t i = 0; i < nx; i++)
                x[i] += (float)(i / (cin * HW1 * HW1));
        } else {
            fill(&r, conv.w, C * conv.d_in, 0.02, 0.1);
            for (size_t i = 0; i < nx; i++)
                x[i] += 100.0f;
        }
        // the fused block (moments) against the conv, then the two-pass BN-ReLU
        nn_act out = nn_conv_bn_relu_forward(&conv, &a, (nn_act){x, NULL}, cz, NULL, y1,
                                             bf16out ? h1 : NULL, N, true);
        CHECK(out.f == (bf16out ? NULL : y1) && out.h == (bf16out ? h1 : NULL));
        CHECK(!conv.moments_on); // switched off again
        CHECK(conv.wino_fwd == (conv.wino != NULL) && (big || !conv.wino));
        if (big && nn_conv3x3_direct_usable() && nn_conv_winograd()) CHECK(conv.wino_fwd);
        if (conv.wino) CHECK(nn_conv_wino_sub(conv.wino) == (subs ? 4 : N));
        for (size_t pl = 0; pl < N * C; pl++) {
            float m[NN_MOMENTS];
            nn_plane_moments(cz + pl * HW, HW, m);
            CHECK(memcmp(m, conv.moments + NN_MOMENTS * pl, sizeof m) == 0);
        }
        nn_conv2d_forward(&conv, x, cz2, N);
        CHECK(memcmp(cz, cz2, ny * sizeof(float)) == 0);
        if (bf16out)
            nn_batchnorm_relu_forward_bf16(&b, cz, h2, N, true);
        else
            nn_batchnorm_relu_forward(&b, cz, y2, N, true);
        for (size_t c = 0; c < C; c++) {
            double s = 0, ss = 0;
            for (size_t n = 0; n < N; n++)
                for (size_t p = 0; p < HW; p++)
                    s += (double)cz[(n * C + c) * HW + p];
            const double mu = s / (double)(N * HW);
            for (size_t n = 0; n < N; n++)
                for (size_t p = 0; p < HW; p++) {
                    const double d = (double)cz[(n * C + c) * HW + p] - mu;
                    ss += d * d;
                }
            const double invstd = 1.0 / sqrt(ss / (double)(N * HW) + 1e-5);
            CHECK(mu > 50.0 && ss / (double)(N * HW) > 1e-3); // far from zero, some spread
            CHECK_CLOSE(a.mean[c], mu, 1e-7, 0);
            CHECK_CLOSE(a.invstd[c], invstd, 2e-5, 0);
            CHECK_CLOSE(b.invstd[c], invstd, 2e-5, 0);
            // (the running mean starts at 0: one step makes it 0.1 of the batch's)
            CHECK_CLOSE(a.running_mean[c], 0.1 * mu, 3e-7, 0);
            // against the two-pass layer: 2 ulps on small planes; its float sums of a 64x64
            // plane of values near 100 are good to about 1e-6 (the plain and sanitizer builds
            // differed by 3e-7 there), the moments' combination to 1e-7 (above)
            CHECK_CLOSE(a.running_mean[c], b.running_mean[c], subs ? 2e-6 : 3e-7, 0);
            CHECK_CLOSE(a.running_var[c], b.running_var[c], 4e-5, 0);
        }
        // the outputs: the block's formula with its statistics (checked above), in float64;
        // bf16 outputs within bf16's rounding. (Not against the two-pass outputs: a mean one
        // float ulp apart (6e-5 near 1000) moves every x̂ by that times invstd.)
        float *u16 = malloc(ny * sizeof *u16);
        nn_bf16_decode(h1, u16, ny);
        for (size_t n = 0; n < N; n++)
            for (size_t c = 0; c < C; c++)
                for (size_t p = 0; p < HW; p++) {
                    const size_t i = (n * C + c) * HW + p;
                    const double v =
                        (double)a.w[c] * ((double)cz[i] - (double)a.mean[c]) * (double)a.invstd[c] +
                        (double)a.b[c];
                    const double want = v > 0 ? v : 0;
                    if (bf16out)
                        CHECK_CLOSE(u16[i], want, 1.0 / 256, 1e-5);
                    else
                        CHECK_CLOSE(y1[i], want, 1e-5, 1e-5);
                }
        free(u16);
        // evaluation: no moments; the running statistics as the plain layer
        out = nn_conv_bn_relu_forward(&conv, &a, (nn_act){x, NULL}, cz, NULL, y1, NULL, N, false);
        nn_batchnorm_relu_forward(&a, cz, y2, N, false);
        CHECK(!conv.moments_on && out.f == y1 && memcmp(y1, y2, ny * sizeof(float)) == 0);
        free(x), free(cz), free(cz2), free(y1), free(y2), free(h1), free(h2);
        nn_batchnorm_free(&a), nn_batchnorm_free(&b);
        nn_conv2d_free(&conv);
    }
}

// The f32 3x3 'same' convolution without im2col (conv_direct.c: forward, and dx on the
// flipped weights; dW by image, nn_conv2d.dw_direct) against float64 and against the im2col
// path of the same layer: y, dx written (over NaN) and added, dW, and the FLOPs counted.
// Shapes: the first layer's 3 channels (dx then stays on im2col), rows shorter and longer
// than a 48-position block, odd sizes, one row, 136 channels (forward on im2col, dx direct),
// widths of 16 and 32 (vectors aligned to rows; last blocks of 1 and of 2 vectors),
// an image too small for the path; dW by image wherever the output channels come in 16s:
// tiles of 1, 2 and 3 vectors of them (16, 32 and 64, 48, and 80 = 48 + 32, on one row of
// 1100), pixel counts that are not a multiple of 16 (297, 270, 1100); 3 output channels stay
// on im2col; images of 2x2, 1x1, 2x1 and 1x2 on the dense map (nn_conv2d.dense). The bound is a
// float sum's (k+2)·2⁻²⁴·Σ|terms| (products rounded too).
static void conv3x3_direct_should_match_float64_and_the_im2col_path(void) {
    const size_t cases[][5] = {
        // c_in, h, w, c_out, N
        {3, 32, 32, 32, 2},
        {32, 16, 16, 64, 3},
        {8, 17, 19, 8, 3},
        {8, 1, 300, 8, 2},
        {24, 9, 33, 16, 1},
        {16, 10, 27, 16, 2}, // (a vector starting on a row's last pad)
        {136, 16, 16, 8, 1}, // (forward on im2col: 136 channels)
        {16, 7, 5, 8, 4},    // (too small: im2col both ways)
        {8, 32, 32, 48, 2},
        {12, 20, 55, 16, 1},
        {12, 1, 1100, 80, 1}, // (dW by image)
        {8, 32, 32, 3, 1},    // (dW on im2col: 3 output channels)
        {16, 13, 32, 16, 2},  // (rows of 2 vectors: the last block holds 2 of its 3)
        // images of at most 2x2: the dense map (path 0), against im2col (path 1)
        {16, 2, 2, 32, 3},
        {8, 1, 1, 8, 2},
        {5, 2, 1, 7, 2},
        {3, 1, 2, 16, 1}};
    const bool usable = nn_conv3x3_direct_usable();
    if (!usable) fprintf(stderr, "    (AVX-512 is not usable here: the im2col path only)\n");
    ref_rng r = {37};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const size_t cin = cases[t][0], H = cases[t][1], W = cases[t][2], cout = cases[t][3];
        const size_t N = cases[t][4], L = H * W, nx = N * cin * L, ny = N * cout * L;
        const size_t nw = cout * cin * 9;
        const ngd_conv_geom G = {cin, H, W, 3, 3, 1, 1, 1, 1, 1, 1, 1};
        nn_conv2d l[3];
        for (int v = 0; v < 3; v++) {
            nn_rng rng;
            nn_rng_seed(&rng, 13);
            CHECK(nn_conv2d_init(&l[v], &G, cout, true, N, &rng) == NN_OK);
        }
        // l[2]: Winograd where the layer takes it (16+ channels both ways, 4x4+ images;
        // oneDNN has it wherever AVX-512 is, unless NGD_CONV_WINOGRAD=0), else nothing more
        // to test
        const bool wino = cin >= 16 && cout >= 16 && H >= 4 && W >= 4;
        CHECK(wino || !l[2].wino);
        if (wino && usable && nn_conv_winograd()) CHECK(l[2].wino != NULL);
        for (int v = 0; v < 2; v++)
            nn_conv_wino_free(l[v].wino), l[v].wino = NULL;
        CHECK(l[0].dense == (H <= 2 && W <= 2) && l[2].dense == l[0].dense);
        l[1].dense = false;
        CHECK(l[0].direct == (usable && nn_conv3x3_direct_fits(cin, H, W, cout)) &&
              l[0].direct_t == (usable && nn_conv3x3_direct_fits(cout, H, W, cin)));
        if (t < 7) CHECK(l[0].direct || l[0].direct_t || !usable);
        CHECK(l[0].dw_direct == (usable && cout % 16 == 0 && L >= 256));
        l[1].direct = l[1].direct_t = l[1].dw_direct = false;
        float *x = malloc(nx * 4), *dy = malloc(ny * 4), *dx0 = malloc(nx * 4);
        fill(&r, x, nx, -1, 1);
        fill(&r, dy, ny, -1, 1);
        fill(&r, dx0, nx, -1, 1);
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
                            const double w = (double)l[0].w[(co * cin + c) * 9 + k];
                            wy[iy] += (double)x[ix] * w, my[iy] += fabs((double)x[ix] * w);
                            wdx[ix] += (double)dy[iy] * w, mdx[ix] += fabs((double)dy[iy] * w);
                            const double g = (double)dy[iy] * (double)x[ix];
                            wdw[(co * cin + c) * 9 + k] += g,
                                mdw[(co * cin + c) * 9 + k] += fabs(g);
                        }
                }
        uint64_t fl[3] = {0};
        const int nv = l[2].wino ? 3 : 2;
        for (int v = 0; v < nv; v++) {
            float *y = malloc(ny * 4), *dx = malloc(nx * 4);
            const uint64_t f0 = nn_flop_count();
            nn_conv2d_forward(&l[v], x, y, N);
            fl[v] = nn_flop_count() - f0;
            size_t bad = 0;
            for (size_t i = 0; i < ny; i++)
                bad += !(fabs((double)y[i] - wy[i]) <=
                         (double)(9 * cin + 3) * ldexp(1.0, -24) * my[i] * 1.02 + 1e-30);
            CHECK_MSG(bad == 0, "case %zu path %d: %zu outputs off", t, v, bad);
            CHECK(l[v].wino_fwd == (v == 2) && l[v].dense == (v != 1 && l[0].dense));
            for (size_t i = 0; i < nx; i++)
                dx[i] = NAN; // written
            nn_conv2d_backward_set(&l[v], dy, dx);
            bad = 0;
            for (size_t i = 0; i < nx; i++)
                bad += !(fabs((double)dx[i] - wdx[i]) <=
                         (double)(9 * cout + 2) * ldexp(1.0, -24) * mdx[i] * 1.02 + 1e-30);
            CHECK_MSG(bad == 0, "case %zu path %d: %zu dx written off", t, v, bad);
            // added onto a nonzero dx
            nn_conv2d_forward(&l[v], x, y, N);
            memcpy(dx, dx0, nx * 4);
            nn_conv2d_backward(&l[v], dy, dx);
            bad = 0;
            for (size_t i = 0; i < nx; i++) {
                const double want = wdx[i] + (double)dx0[i], m = mdx[i] + fabs((double)dx0[i]);
                bad += !(fabs((double)dx[i] - want) <=
                         (double)(9 * cout + 3) * ldexp(1.0, -24) * m * 1.02 + 1e-30);
            }
            CHECK_MSG(bad == 0, "case %zu path %d: %zu dx added off", t, v, bad);
            // dW: the same sum twice
            bad = 0;
            for (size_t i = 0; i < nw; i++)
                bad += !(fabs((double)l[v].dw[i] / 2 - wdw[i]) <=
                         (double)(N * L + 2) * ldexp(1.0, -24) * mdw[i] * 1.02 + 1e-30);
            CHECK(bad == 0);
            free(y), free(dx);
        }
        CHECK(fl[0] == fl[1] && fl[0] == 2 * (uint64_t)N * cout * cin * 9 * L);
        CHECK(nv == 2 || fl[2] == fl[0]);
        free(x), free(dy), free(dx0), free(wy), free(my), free(wdx), free(mdx), free(wdw),
            free(mdw);
        nn_conv2d_free(&l[0]), nn_conv2d_free(&l[1]), nn_conv2d_free(&l[2]);
    }
}

// Winograd (conv_wino.c) takes full batches only: a partial one runs the layer's own
// kernels, with their bits (those of a layer made with nn_conv_set_winograd(false), which
// has none); a full one is within float32 rounding of them, also where it goes by several
// sub-batches (16 images of 32x32 at a time), and its dW adds onto dW, with or without dx.
// NGD_CONV_WINOGRAD=0 in the environment keeps new layers off it.
static void conv_winograd_should_take_full_batches_only_and_be_switchable(void) {
    const char *env = getenv("NGD_CONV_WINOGRAD");
    char *saved = env ? strdup(env) : NULL;
    CHECK(setenv("NGD_CONV_WINOGRAD", "0", 1) == 0);
    {
        const ngd_conv_geom G = {16, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1};
        nn_rng rng;
        nn_rng_seed(&rng, 3);
        nn_conv2d c;
        CHECK(!nn_conv_winograd());
        CHECK(nn_conv2d_init(&c, &G, 16, true, 4, &rng) == NN_OK && !c.wino);
        nn_conv2d_free(&c);
    }
    CHECK((saved ? setenv("NGD_CONV_WINOGRAD", saved, 1) : unsetenv("NGD_CONV_WINOGRAD")) == 0);
    free(saved);
    const bool on = nn_conv_winograd();               // (the environment's choice for the rest)
    const size_t geo[][3] = {{8, 4, 0}, {32, 32, 1}}; // H = W, N, several sub-batches
    for (int t = 0; t < 2; t++) {
        const size_t H = geo[t][0], N = geo[t][1], L = H * H;
        const ngd_conv_geom G = {16, H, H, 3, 3, 1, 1, 1, 1, 1, 1, 1};
        const size_t n = N * 16 * L, nw = 16 * 16 * 9;
        nn_rng rng;
        nn_conv2d a, b;
        nn_rng_seed(&rng, 3);
        CHECK(nn_conv2d_init(&a, &G, 16, true, N, &rng) == NN_OK);
        nn_conv_set_winograd(false);
        nn_rng_seed(&rng, 3);
        CHECK(nn_conv2d_init(&b, &G, 16, true, N, &rng) == NN_OK);
        nn_conv_set_winograd(true);
        CHECK(!b.wino && on == nn_conv_winograd());
        if (!on) CHECK(!a.wino);
        if (nn_conv3x3_direct_usable() && on) CHECK(a.wino != NULL);
        if (a.wino) CHECK(geo[t][2] ? nn_conv_wino_sub(a.wino) < N : nn_conv_wino_sub(a.wino) == N);
        ref_rng r = {17};
        float *x = malloc(n * 4), *dy = malloc(n * 4), *y1 = malloc(n * 4), *y2 = malloc(n * 4);
        float *dx1 = malloc(n * 4), *dx2 = malloc(n * 4);
        fill(&r, x, n, -1, 1);
        fill(&r, dy, n, -1, 1);
        for (size_t nb = N - 1; nb <= N; nb++) {
            const size_t m = nb * 16 * L;
            memset(a.dw, 0, nw * 4), memset(b.dw, 0, nw * 4);
            nn_conv2d_forward(&a, x, y1, nb);
            nn_conv2d_forward(&b, x, y2, nb);
            CHECK(a.wino_fwd == (a.wino && nb == N) && !b.wino_fwd);
            for (int k = 0; k < 3; k++) { // dW added three times, the last without dx
                nn_conv2d_backward_set(&a, dy, k < 2 ? dx1 : NULL);
                nn_conv2d_backward_set(&b, dy, k < 2 ? dx2 : NULL);
            }
            if (!a.wino_fwd) {
                CHECK(memcmp(y1, y2, m * 4) == 0 && memcmp(dx1, dx2, m * 4) == 0 &&
                      memcmp(a.dw, b.dw, nw * 4) == 0 && memcmp(a.db, b.db, 16 * 4) == 0);
                continue;
            }
            size_t bad = 0;
            for (size_t i = 0; i < m; i++)
                bad += !(fabsf(y1[i] - y2[i]) <= 1e-5f * (1.0f + fabsf(y2[i]))) +
                       !(fabsf(dx1[i] - dx2[i]) <= 1e-5f * (1.0f + fabsf(dx2[i])));
            const float tw = 1e-4f * (float)N / 4.0f; // (dW sums N·L products)
            for (size_t i = 0; i < nw; i++)
                bad += !(fabsf(a.dw[i] - b.dw[i]) <= tw * (1.0f + fabsf(b.dw[i])));
            CHECK_MSG(bad == 0, "H %zu: %zu values off", H, bad);
        }
        free(x), free(dy), free(y1), free(y2), free(dx1), free(dx2);
        nn_conv2d_free(&a), nn_conv2d_free(&b);
    }
}

// A layer whose switch to bf16 runs out of memory stays an f32 layer, Winograd included (it
// had been left in bf16 mode, rounding every f32 input: errors of 1e-3), for every
// allocation that can fail
static void conv_use_bf16_out_of_memory_should_leave_an_f32_layer(void) {
    const ngd_conv_geom G = {16, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1};
    const size_t N = 2, n = N * 16 * 256;
    ref_rng r = {23};
    float *x = malloc(n * 4), *y0 = malloc(n * 4), *y = malloc(n * 4);
    fill(&r, x, n, -1, 1);
    nn_rng rng;
    nn_conv2d ref;
    nn_rng_seed(&rng, 5);
    CHECK(nn_conv2d_init(&ref, &G, 16, true, N, &rng) == NN_OK);
    nn_conv2d_forward(&ref, x, y0, N);
    int fails = 0, k = 1;
    for (; k < 400; k++) {
        nn_conv2d l;
        nn_rng_seed(&rng, 5);
        CHECK(nn_conv2d_init(&l, &G, 16, true, N, &rng) == NN_OK);
        nn_alloc_fail_at(k);
        const nn_status st = nn_conv2d_use_bf16(&l);
        nn_alloc_fail_at(0);
        if (st == NN_OK) {
            nn_conv2d_free(&l);
            break;
        }
        CHECK(st == NN_ERR_NOMEM && !l.w16);
        fails++;
        nn_conv2d_forward(&l, x, y, N);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += !(fabsf(y[i] - y0[i]) <= 2e-5f * (1.0f + fabsf(y0[i])));
        CHECK_MSG(bad == 0, "allocation %d failing: %zu outputs off", k, bad);
        nn_conv2d_free(&l);
    }
    CHECK(fails > 0 && k < 400);
    free(x), free(y0), free(y);
    nn_conv2d_free(&ref);
}

// BN-ReLU straight into 2x2 max pooling (the last block of a CNN stage) equals BN-ReLU,
// then the pool: the same bits of the output, argmax and statistics, in training (two-pass
// and moments) and evaluation, f32 and bf16 out; with ties, NaN, an odd height (the last
// row is no window's), and rows wider than the fused kernel's buffer
// nn_conv_bn_relu_backward takes the conv's bias gradient from BN's sums of the dcz it
// writes (nn_batchnorm.dxsum -> nn_conv2d.dbsum) instead of a pass over dcz: the same bits
// as BN-ReLU backward then the conv's own backward, in f32 and with a bf16 dcz, after a
// training forward (where Σ dcz is rounding noise: BN takes out the mean) and an evaluation
// one; dW, dx and BN's gradients too, and the flags are off again after
static void conv_bn_relu_backward_should_equal_the_plain_layers(void) {
    ref_rng r = {95};
    // c_in, H = W, c_out (the second: Winograd in f32 where oneDNN has it)
    const size_t shapes[2][3] = {{3, 8, 8}, {16, 16, 16}};
    for (int t = 0; t < 8; t++) {
        const size_t cin = shapes[t % 2][0], H = shapes[t % 2][1], C = shapes[t % 2][2], N = 3;
        const bool bf16 = t / 2 % 2, train = t / 4;
        const ngd_conv_geom G = {cin, H, H, 3, 3, 1, 1, 1, 1, 1, 1, 1};
        nn_conv2d cv[2];
        nn_batchnorm bn[2];
        const size_t HW = H * H, nx = N * cin * HW, ny = N * C * HW;
        float *x = malloc(nx * sizeof *x), *dy = malloc(ny * sizeof *dy);
        fill(&r, x, nx, -1, 1);
        fill(&r, dy, ny, -1, 1);
        float *cz[2], *ra[2], *dcz[2], *dx[2];
        uint16_t *dcz16[2];
        for (int v = 0; v < 2; v++) {
            nn_rng g;
            nn_rng_seed(&g, 7);
            CHECK(nn_conv2d_init(&cv[v], &G, C, true, N, &g) == NN_OK);
            CHECK(!bf16 || nn_conv2d_use_bf16(&cv[v]) == NN_OK);
            CHECK(nn_batchnorm_init(&bn[v], C, HW, N) == NN_OK);
            for (size_t c = 0; c < C; c++)
                bn[v].w[c] = 0.5f + 0.1f * (float)c, bn[v].b[c] = 0.05f * (float)c - 0.2f;
            cz[v] = malloc(ny * sizeof(float)), ra[v] = malloc(ny * sizeof(float));
            dcz[v] = malloc(ny * sizeof(float)), dx[v] = malloc(nx * sizeof(float));
            dcz16[v] = malloc(ny * sizeof(uint16_t));
            nn_conv_bn_relu_forward(&cv[v], &bn[v], (nn_act){x, NULL}, cz[v], NULL, ra[v], NULL, N,
                                    train);
        }
        nn_conv_bn_relu_backward(&cv[0], &bn[0], dy, NULL, dcz[0], bf16 ? dcz16[0] : NULL, dx[0],
                                 NULL);
        CHECK(!bn[0].want_dxsum && !cv[0].dbsum);
        if (bf16) {
            nn_batchnorm_relu_backward_bf16(&bn[1], dy, dcz16[1]);
            nn_conv2d_backward_set_bf16(&cv[1], dcz16[1], dx[1]);
        } else {
            nn_batchnorm_relu_backward(&bn[1], dy, dcz[1]);
            nn_conv2d_backward_set(&cv[1], dcz[1], dx[1]);
        }
        double sdb = 0;
        for (size_t c = 0; c < C; c++)
            sdb += fabs((double)cv[1].db[c]);
        CHECK(train || sdb > 1e-3); // a bias gradient to compare
        CHECK(memcmp(cv[0].db, cv[1].db, C * sizeof(float)) == 0);
        CHECK(memcmp(cv[0].dw, cv[1].dw, C * cv[0].d_in * sizeof(float)) == 0);
        CHECK(memcmp(dx[0], dx[1], nx * sizeof(float)) == 0);
        CHECK(memcmp(bn[0].dw, bn[1].dw, C * sizeof(float)) == 0 &&
              memcmp(bn[0].db, bn[1].db, C * sizeof(float)) == 0);
        for (int v = 0; v < 2; v++) {
            free(cz[v]), free(ra[v]), free(dcz[v]), free(dx[v]), free(dcz16[v]);
            nn_conv2d_free(&cv[v]), nn_batchnorm_free(&bn[v]);
        }
        free(x), free(dy);
    }
}

// bf16 mode with the conv's output kept in bf16 (nn_conv2d_forward16 into cz16, BN-ReLU of a
// bf16 x): the same bits as the f32 layers run on the conv's output rounded to bf16, i.e. the
// conv's f32 output (nn_conv2d_forward) rounded, BN-ReLU's output, statistics, running
// statistics and pool argmax (training from the rounded planes' moments, and evaluation),
// and in backward dcz, dx, dW, db and BN's gradients; on the direct kernels' layers, with
// those cleared (im2col, chunks of several images and a short last one) and a strided conv.
// And with the block's gradients in bf16 too (BN-ReLU backward of a bf16 dy, the pool's
// gradient into bf16, the conv's dx rounded): the f32 functions on the rounded dy, dx rounded.
static void conv_bn_relu_with_a_bf16_conv_output_should_equal_the_rounded_f32_path(void) {
    ref_rng r = {97};
    // c_in, H = W, c_out, stride, N, direct kernels cleared
    const size_t shapes[4][6] = {
        {3, 16, 16, 1, 3, 0}, {5, 8, 6, 1, 6, 0}, {5, 8, 6, 1, 6, 1}, {4, 16, 5, 2, 6, 0}};
    for (int t = 0; t < 4 * 8; t++) {
        const size_t *sh = shapes[t % 4], cin = sh[0], H = sh[1], C = sh[2], S = sh[3], N = sh[4];
        const bool pooled = t / 4 % 2, train = t / 8 % 2, g16 = t / 16;
        const ngd_conv_geom G = {cin, H, H, 3, 3, S, S, 1, 1, 1, 1, 1};
        const size_t OH = (H - 1) / S + 1, HW = OH * OH, nx = N * cin * H * H, ny = N * C * HW;
        const size_t no = pooled ? N * C * (OH / 2) * (OH / 2) : ny;
        nn_conv2d cv[2];
        nn_batchnorm bn[2];
        nn_maxpool2d pl[2];
        float *x = malloc(nx * sizeof *x), *dy = malloc(no * sizeof *dy);
        float *cz = malloc(ny * sizeof *cz), *dx[2], *dyb = malloc(ny * sizeof *dyb);
        float *mom = malloc(N * C * NN_MOMENTS * sizeof *mom);
        uint16_t *cz16[2], *out16[2], *dcz16[2], *gh = malloc(ny * sizeof *gh);
        uint16_t *dxh = malloc(nx * sizeof *dxh), *dxr = malloc(nx * sizeof *dxr);
        fill(&r, x, nx, -1, 1);
        fill(&r, dy, no, -1, 1);
        for (int v = 0; v < 2; v++) {
            nn_rng g;
            nn_rng_seed(&g, 7);
            CHECK(nn_conv2d_init(&cv[v], &G, C, true, N, &g) == NN_OK);
            CHECK(nn_conv2d_use_bf16(&cv[v]) == NN_OK);
            if (sh[5]) cv[v].direct16 = cv[v].direct32 = cv[v].amx = false;
            for (size_t c = 0; c < C; c++)
                cv[v].b[c] = 0.03f * (float)c - 0.05f;
            CHECK(nn_batchnorm_init(&bn[v], C, HW, N) == NN_OK);
            CHECK(nn_maxpool2d_init(&pl[v], C, OH, OH, 2, 2, 0, N) == NN_OK);
            for (size_t c = 0; c < C; c++)
                bn[v].w[c] = 0.5f + 0.1f * (float)c, bn[v].b[c] = 0.05f * (float)c - 0.2f;
            cz16[v] = malloc(ny * sizeof(uint16_t)), out16[v] = malloc(ny * sizeof(uint16_t));
            dcz16[v] = malloc(ny * sizeof(uint16_t)), dx[v] = malloc(nx * sizeof(float));
        }
        // the bf16 output path
        nn_act in = {x, NULL}, o;
        if (pooled)
            o = nn_conv_bn_relu_pool_forward(&cv[0], &bn[0], &pl[0], in, NULL, cz16[0], NULL,
                                             out16[0], N, train);
        else
            o = nn_conv_bn_relu_forward(&cv[0], &bn[0], in, NULL, cz16[0], NULL, out16[0], N,
                                        train);
        CHECK(o.h == out16[0] && !o.f && bn[0].x16 == cz16[0] && !bn[0].x);
        // the f32 layers on the rounded conv output
        nn_conv2d_forward(&cv[1], x, cz, N);
        nn_bf16_encode(cz, cz16[1], ny);
        nn_bf16_decode(cz16[1], cz, ny);
        CHECK(memcmp(cz16[0], cz16[1], ny * sizeof(uint16_t)) == 0);
        for (size_t p = 0; p < N * C; p++)
            nn_plane_moments(cz + p * HW, HW, mom + NN_MOMENTS * p);
        if (pooled)
            nn_batchnorm_relu_maxpool_forward(&bn[1], &pl[1], cz, train ? mom : NULL, NULL,
                                              out16[1], N, train);
        else if (train)
            nn_batchnorm_relu_forward_moments(&bn[1], cz, mom, NULL, out16[1], N);
        else
            nn_batchnorm_relu_forward_bf16(&bn[1], cz, out16[1], N, false);
        CHECK(memcmp(out16[0], out16[1], no * sizeof(uint16_t)) == 0);
        CHECK(memcmp(bn[0].mean, bn[1].mean, C * sizeof(float)) == 0 &&
              memcmp(bn[0].invstd, bn[1].invstd, C * sizeof(float)) == 0 &&
              memcmp(bn[0].running_mean, bn[1].running_mean, C * sizeof(float)) == 0 &&
              memcmp(bn[0].running_var, bn[1].running_var, C * sizeof(float)) == 0);
        CHECK(!train || bn[0].running_mean[0] != 0.0f); // the batch statistics were taken
        CHECK(!pooled || memcmp(pl[0].argmax, pl[1].argmax, no * sizeof(int32_t)) == 0);
        // backward: the pool's (pooled), then BN-ReLU's and the conv's
        // g: the gradient of the BN-ReLU output (f32; with g16, the rounded values)
        const float *g = dy;
        if (pooled) {
            nn_maxpool2d_backward_set(&pl[0], dy, dyb);
            g = dyb;
        }
        if (g16) { // the reference reads the rounded dy in f32
            if (pooled) {
                nn_maxpool2d_backward_set_bf16(&pl[0], dy, gh);
            } else {
                nn_bf16_encode(dy, gh, ny);
            }
            if (!pooled) g = dyb;
            nn_bf16_decode(gh, dyb, ny);
            if (pooled) { // the bf16 pool gradient is the f32 one rounded
                uint16_t *e = malloc(ny * sizeof *e);
                float *f = malloc(ny * sizeof *f);
                nn_maxpool2d_backward_set(&pl[1], dy, f);
                nn_bf16_encode(f, e, ny);
                CHECK(memcmp(e, gh, ny * sizeof *e) == 0);
                free(e), free(f);
            }
            nn_conv_bn_relu_backward(&cv[0], &bn[0], NULL, gh, NULL, dcz16[0], NULL, dxh);
        } else {
            nn_conv_bn_relu_backward(&cv[0], &bn[0], g, NULL, NULL, dcz16[0], dx[0], NULL);
        }
        nn_batchnorm_relu_backward_bf16(&bn[1], g, dcz16[1]);
        nn_conv2d_backward_set_bf16(&cv[1], dcz16[1], dx[1]);
        CHECK(memcmp(dcz16[0], dcz16[1], ny * sizeof(uint16_t)) == 0);
        if (g16) {
            nn_bf16_encode(dx[1], dxr, nx);
            CHECK(memcmp(dxh, dxr, nx * sizeof *dxh) == 0);
        } else {
            CHECK(memcmp(dx[0], dx[1], nx * sizeof(float)) == 0);
        }
        CHECK(memcmp(cv[0].dw, cv[1].dw, C * cv[0].d_in * sizeof(float)) == 0 &&
              memcmp(cv[0].db, cv[1].db, C * sizeof(float)) == 0);
        CHECK(memcmp(bn[0].dw, bn[1].dw, C * sizeof(float)) == 0 &&
              memcmp(bn[0].db, bn[1].db, C * sizeof(float)) == 0);
        double sdw = 0;
        for (size_t c = 0; c < C; c++)
            sdw += fabs((double)bn[0].dw[c]);
        CHECK(sdw > 1e-3); // gradients to compare
        for (int v = 0; v < 2; v++) {
            free(cz16[v]), free(out16[v]), free(dcz16[v]), free(dx[v]);
            nn_conv2d_free(&cv[v]), nn_batchnorm_free(&bn[v]), nn_maxpool2d_free(&pl[v]);
        }
        free(x), free(dy), free(cz), free(dyb), free(mom), free(gh), free(dxh), free(dxr);
    }
}

static void batchnorm_relu_maxpool_should_equal_bn_relu_then_pool(void) {
    ref_rng r = {93};
    const size_t shapes[4][2] = {{8, 6}, {7, 10}, {4, 1030}, {5, 9}}; // H, W
    for (int t = 0; t < 4 * 2 * 3; t++) {
        const size_t H = shapes[t % 4][0], W = shapes[t % 4][1], HW = H * W, N = 3, C = 4;
        const bool bf16 = (t / 4) % 2, train = t / 8 != 2, moments = t / 8 == 1;
        const size_t n = N * C * HW, OH = H / 2, OW = W / 2, no = N * C * OH * OW;
        nn_batchnorm a, b;
        nn_maxpool2d pa, pb;
        CHECK(nn_batchnorm_init(&a, C, HW, N) == NN_OK && nn_batchnorm_init(&b, C, HW, N) == NN_OK);
        CHECK(nn_maxpool2d_init(&pa, C, H, W, 2, 2, 0, N) == NN_OK &&
              nn_maxpool2d_init(&pb, C, H, W, 2, 2, 0, N) == NN_OK);
        fill(&r, a.w, C, -1.5, 1.5); // some negative scales: the ReLU and the max swap order
        fill(&r, a.b, C, -0.5, 0.5);
        memcpy(b.w, a.w, C * sizeof(float)), memcpy(b.b, a.b, C * sizeof(float));
        fill(&r, a.running_mean, C, -0.2, 0.2);
        memcpy(b.running_mean, a.running_mean, C * sizeof(float));
        float *x = malloc(n * sizeof *x), *ra = malloc(n * sizeof *ra);
        float *y1 = malloc(no * sizeof *y1), *y2 = malloc(no * sizeof *y2);
        uint16_t *h1 = malloc(no * sizeof *h1), *h2 = malloc(no * sizeof *h2);
        float *mom = malloc(N * C * NN_MOMENTS * sizeof *mom);
        fill(&r, x, n, -2, 2);
        for (size_t i = 0; i < n; i += 7) // ties inside windows
            x[i + 1 < n ? i + 1 : i] = x[i];
        if (!moments) x[5] = NAN; // kept by the ReLU (in training, in its whole channel)
        for (size_t p = 0; p < N * C; p++)
            nn_plane_moments(x + p * HW, HW, mom + NN_MOMENTS * p);
        nn_batchnorm_relu_maxpool_forward(&a, &pa, x, moments ? mom : NULL, y1, bf16 ? h1 : NULL, N,
                                          train);
        if (moments)
            nn_batchnorm_relu_forward_moments(&b, x, mom, ra, NULL, N);
        else
            nn_batchnorm_relu_forward(&b, x, ra, N, train);
        if (bf16)
            nn_maxpool2d_forward_bf16(&pb, ra, h2, N);
        else
            nn_maxpool2d_forward(&pb, ra, y2, N);
        if (bf16)
            CHECK(memcmp(h1, h2, no * sizeof *h1) == 0);
        else
            CHECK(memcmp(y1, y2, no * sizeof *y1) == 0);
        if (!moments && !bf16) { // the NaN reached the output (its window's, in eval)
            size_t nans = 0;
            for (size_t i = 0; i < no; i++)
                nans += isnan(y1[i]);
            CHECK(nans == (train ? no / C : 1)); // (training: its channel, in every image)
        }
        CHECK(memcmp(pa.argmax, pb.argmax, no * sizeof *pa.argmax) == 0 && pa.n == N);
        CHECK(memcmp(a.mean, b.mean, C * sizeof(float)) == 0 &&
              memcmp(a.invstd, b.invstd, C * sizeof(float)) == 0 &&
              memcmp(a.running_mean, b.running_mean, C * sizeof(float)) == 0 &&
              memcmp(a.running_var, b.running_var, C * sizeof(float)) == 0);
        CHECK(a.x == x && a.n == N && a.relu && a.train == train); // what backward reads
        free(x), free(ra), free(y1), free(y2), free(h1), free(h2), free(mom);
        nn_batchnorm_free(&a), nn_batchnorm_free(&b);
        nn_maxpool2d_free(&pa), nn_maxpool2d_free(&pb);
    }
}

static void batchnorm_forward_should_match_formulas(void) {
    ref_rng r = {42};
    const size_t C = 3, HW = 10, N = 4, n = N * C * HW;
    nn_batchnorm l;
    CHECK(nn_batchnorm_init(&l, C, HW, N) == NN_OK);
    fill(&r, l.w, C, 0.5, 1.5);
    fill(&r, l.b, C, -0.5, 0.5);
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    double *want = malloc(n * sizeof *want);
    fill(&r, x, n, -3, 5);
    // training: batch statistics (biased variance); running stats move by momentum 0.1
    nn_batchnorm_forward(&l, x, y, N, true);
    double mean[3], var[3];
    for (size_t c = 0; c < C; c++) {
        double s = 0, ss = 0;
        for (size_t i = 0; i < N; i++)
            for (size_t p = 0; p < HW; p++)
                s += (double)x[(i * C + c) * HW + p];
        mean[c] = s / (double)(N * HW);
        for (size_t i = 0; i < N; i++)
            for (size_t p = 0; p < HW; p++) {
                double d = (double)x[(i * C + c) * HW + p] - mean[c];
                ss += d * d;
            }
        var[c] = ss / (double)(N * HW);
        for (size_t i = 0; i < N; i++)
            for (size_t p = 0; p < HW; p++) {
                size_t k = (i * C + c) * HW + p;
                want[k] = ((double)x[k] - mean[c]) / sqrt(var[c] + 1e-5) * (double)l.w[c] +
                          (double)l.b[c];
            }
        CHECK_CLOSE(l.running_mean[c], 0.1 * mean[c], 1e-5, 1e-6);
        const double unbiased = var[c] * (double)(N * HW) / (double)(N * HW - 1);
        CHECK_CLOSE(l.running_var[c], 0.9 + 0.1 * unbiased, 1e-5, 1e-6);
    }
    CHECK_TENSOR(y, want, n, 1e-5, 1e-5, "batchnorm train forward");
    // evaluation: the running statistics (a channel's variance 0: eps alone keeps it finite)
    l.running_var[1] = 0.0f;
    nn_batchnorm_forward(&l, x, y, N, false);
    for (size_t i = 0; i < N; i++)
        for (size_t c = 0; c < C; c++)
            for (size_t p = 0; p < HW; p++) {
                size_t k = (i * C + c) * HW + p;
                want[k] = ((double)x[k] - (double)l.running_mean[c]) /
                              sqrt((double)l.running_var[c] + 1e-5) * (double)l.w[c] +
                          (double)l.b[c];
            }
    CHECK_TENSOR(y, want, n, 1e-5, 1e-5, "batchnorm eval forward");
    // a NaN or an Inf in training makes both running statistics of its channel non-finite
    // (and no other channel's), as the mean is
    for (int k = 0; k < 2; k++) {
        const float rm1 = l.running_mean[1], rv1 = l.running_var[1];
        x[3] = k ? INFINITY : NAN; // image 0, channel 0
        nn_batchnorm_forward(&l, x, y, N, true);
        CHECK(!isfinite(l.running_mean[0]) && !isfinite(l.running_var[0]) &&
              !isfinite(l.invstd[0]));
        CHECK(isfinite(l.running_mean[1]) && isfinite(l.running_var[1]) &&
              (l.running_mean[1] != rm1 || l.running_var[1] != rv1));
        l.running_mean[0] = 0.0f, l.running_var[0] = 1.0f;
        x[3] = 0.5f;
    }
    nn_param ps[2];
    CHECK(nn_batchnorm_params(&l, ps) == 2 && ps[0].p == l.w && ps[1].g == l.db);
    free(x), free(y), free(want);
    nn_batchnorm_free(&l);
}

// ---- LayerNorm ----

typedef struct {
    nn_layernorm *l;
    const float *x;
    float *y;
    size_t rows;
} ln_ctx;
static void ln_fwd(void *p) {
    ln_ctx *c = p;
    nn_layernorm_forward(c->l, c->x, c->y, c->rows);
}

// widths 8, 13 and 21: the backward's 8-lane row sums with and without a tail, and its
// column blocks of 16 whole and partial
static void layernorm_should_match_formula_and_finite_differences(void) {
    ref_rng r = {51};
    const size_t Cs[] = {8, 13, 21};
    for (size_t ci = 0; ci < 3; ci++) {
        const size_t rows = 5, C = Cs[ci], n = rows * C;
        nn_layernorm l;
        CHECK(nn_layernorm_init(&l, C, rows) == NN_OK);
        fill(&r, l.w, C, 0.5, 1.5);
        fill(&r, l.b, C, -0.5, 0.5);
        float x[105], y[105], w[105], dx[105] = {0};
        double want[105];
        fill(&r, x, n, -2, 3);
        fill(&r, w, n, -1, 1);
        ln_ctx c = {&l, x, y, rows};
        ln_fwd(&c);
        for (size_t i = 0; i < rows; i++) {
            double s = 0, ss = 0;
            for (size_t j = 0; j < C; j++)
                s += (double)x[i * C + j];
            const double mu = s / (double)C;
            for (size_t j = 0; j < C; j++)
                ss += ((double)x[i * C + j] - mu) * ((double)x[i * C + j] - mu);
            const double rs = 1.0 / sqrt(ss / (double)C + 1e-5);
            for (size_t j = 0; j < C; j++)
                want[i * C + j] =
                    ((double)x[i * C + j] - mu) * rs * (double)l.w[j] + (double)l.b[j];
        }
        CHECK_TENSOR(y, want, n, 1e-5, 1e-5, "layernorm forward");
        nn_layernorm_backward(&l, w, dx);
        float *dw = fdup(l.dw, C), *db = fdup(l.db, C);
        fd_fn f = {ln_fwd, &c, y, n, w};
        FD_CHECK(&f, x, dx, n, FD_H, "layernorm dx");
        FD_CHECK(&f, l.w, dw, C, FD_H, "layernorm dgamma");
        FD_CHECK(&f, l.b, db, C, FD_H, "layernorm dbeta");
        free(dw), free(db);
        nn_layernorm_free(&l);
    }
}

// ---- activations ----

typedef struct {
    void *l;
    int kind; // 0 relu, 1 gelu
    const float *x;
    float *y;
    size_t n;
} act_ctx;
static void act_fwd(void *p) {
    act_ctx *c = p;
    if (c->kind == 0)
        nn_relu_forward(c->l, c->x, c->y, c->n);
    else
        nn_gelu_forward(c->l, c->x, c->y, c->n);
}

static void activations_should_match_finite_differences(void) {
    ref_rng r = {61};
    const size_t n = 50;
    float x[50], y[50], w[50], dx[50];
    fill(&r, w, n, -1, 1);
    // ReLU, with the kink at 0 kept away from the inputs
    nn_relu relu = {0};
    fill_away_from_zero(&r, x, n);
    act_ctx c = {&relu, 0, x, y, n};
    act_fwd(&c);
    for (size_t i = 0; i < n; i++)
        CHECK(y[i] == (x[i] > 0 ? x[i] : 0.0f));
    memset(dx, 0, sizeof dx);
    nn_relu_backward(&relu, w, dx);
    fd_fn f = {act_fwd, &c, y, n, w};
    FD_CHECK(&f, x, dx, n, FD_H, "relu dx");
    // in-place ReLU keeps the right mask
    float xi[50];
    memcpy(xi, x, sizeof xi);
    nn_relu_forward(&relu, xi, xi, n);
    float dxi[50] = {0};
    nn_relu_backward(&relu, w, dxi);
    CHECK_TENSOR(dxi, dx, n, 0.0, 0.0, "relu in place");
    // NaN passes the forward (f32 and bf16 outputs; it used to become 0 and train on as a
    // 0 activation), -0 gives +0, and the backward sends nothing through either
    {
        const float xs[4] = {NAN, -NAN, -0.0f, 2.0f}, dys[4] = {1, 1, 1, 1};
        float ys[4], dxs[4] = {0};
        uint16_t y16[4];
        nn_relu rl = {0};
        nn_relu_forward16(&rl, xs, y16, 4);
        nn_relu_forward(&rl, xs, ys, 4);
        nn_relu_backward(&rl, dys, dxs);
        CHECK(isnan(ys[0]) && isnan(ys[1]) && f_bits(ys[2]) == 0 && ys[3] == 2.0f);
        CHECK((y16[0] & 0x7fffu) > 0x7f80u && (y16[1] & 0x7fffu) > 0x7f80u && y16[2] == 0);
        CHECK(dxs[0] == 0.0f && dxs[1] == 0.0f && dxs[2] == 0.0f && dxs[3] == 1.0f);
    }
    // GELU, both forms
    for (int kind = 0; kind < 2; kind++) {
        nn_gelu gelu = {.kind = kind ? NN_GELU_TANH : NN_GELU_ERF};
        fill(&r, x, n, -3, 3);
        act_ctx cg = {&gelu, 1, x, y, n};
        act_fwd(&cg);
        memset(dx, 0, sizeof dx);
        nn_gelu_backward(&gelu, w, dx);
        fd_fn fg = {act_fwd, &cg, y, n, w};
        FD_CHECK(&fg, x, dx, n, FD_H, kind ? "gelu tanh dx" : "gelu erf dx");
        // known values: GELU(1) = Φ(1) = 0.841344746; tanh form 0.841191990
        float one = 1.0f, g1;
        nn_gelu_forward(&gelu, &one, &g1, 1);
        CHECK_CLOSE(g1, kind ? 0.841191990 : 0.841344746, 1e-6, 0);
    }
}

// ---- pooling ----

typedef struct {
    int kind; // 0 max, 1 avg, 2 gap, 3 tokenpool
    void *l;
    const float *x;
    float *y;
    size_t n, c, hw;
} pool_ctx;
static void pool_fwd(void *p) {
    pool_ctx *c = p;
    if (c->kind == 0)
        nn_maxpool2d_forward(c->l, c->x, c->y, c->n);
    else if (c->kind == 1)
        nn_avgpool2d_forward(c->l, c->x, c->y, c->n);
    else if (c->kind == 2)
        nn_gap_forward(c->x, c->y, c->n, c->c, c->hw);
    else
        nn_tokenpool_forward(c->x, c->y, c->n, c->hw, c->c);
}

// GELU's vectorisable tanh, erf and exp against float64 libm over their working ranges
static void activation_approximations_should_match_libm(void) {
    double et = 0, ee = 0, ex = 0;
    for (int i = -200000; i <= 200000; i++) {
        const float u = (float)i * 1e-4f; // [-20, 20]
        et = fmax(et, fabs((double)nn_tanh_approx(u) - tanh((double)u)));
        ee = fmax(ee, fabs((double)nn_erf_approx(u) - erf((double)u)));
        const float v = (float)i * 4.3e-4f; // [-86, 86]: relative error
        ex = fmax(ex, fabs((double)nn_exp_approx(v) / exp((double)v) - 1.0));
    }
    CHECK(et < 2.5e-7);
    CHECK(ee < 4e-7);
    CHECK(ex < 5e-7);
    CHECK(nn_tanh_approx(1e4f) == 1.0f && nn_tanh_approx(-1e4f) == -1.0f);
    CHECK(nn_exp_approx(-1e4f) > 0.0f && isfinite(nn_exp_approx(1e4f)));
    CHECK(isnan(nn_erf_approx(NAN)) && nn_erf_approx(-0.25f) < 0.0f && nn_erf_approx(-3.0f) < 0.0f);
    // far out erf is ±1 (its small-x series overflowed to -inf past |x| ~ 6000, and its 0
    // weight made that NaN)
    CHECK(nn_erf_approx(1e4f) == 1.0f && nn_erf_approx(-3e4f) == -1.0f);
    CHECK(nn_erf_approx(INFINITY) == 1.0f && nn_erf_approx(-INFINITY) == -1.0f);
    // GELU and GELU' of both kinds far out, through the layer (its AVX-512 loops where the
    // CPU has them, then the plain ones; f32 and bf16 outputs): x and 1 above, +inf included,
    // 0 below; NaN stays NaN
    const float xs[] = {1e4f, 3e4f, 1e30f, 3e38f, INFINITY, -1e4f, -3e4f, -1e30f, NAN};
    enum { NX = sizeof xs / sizeof xs[0] };
    for (int kv = 0; kv < 4; kv++) {
        const int kind = kv & 1;
        nn_gelu_set_vector(kv < 2);
        nn_gelu g = {.kind = kind ? NN_GELU_TANH : NN_GELU_ERF};
        float y[NX], dx[NX], dy[NX];
        uint16_t y16[NX];
        for (int i = 0; i < NX; i++)
            dy[i] = 1.0f;
        nn_gelu_forward(&g, xs, y, NX);
        nn_gelu_backward_set(&g, dy, dx);
        nn_gelu_forward16(&g, xs, y16, NX);
        for (int i = 0; i < NX - 1; i++) {
            const bool pos = xs[i] > 0.0f;
            CHECK(y[i] == (pos ? xs[i] : 0.0f));
            CHECK(fabsf(dx[i] - (pos ? 1.0f : 0.0f)) <= 1e-30f); // (e⁻⁸⁷·1e4 at most)
            CHECK(y16[i] == nn_to_bf16(y[i]));
        }
        CHECK(isnan(y[NX - 1]) && isnan(dx[NX - 1]) && (y16[NX - 1] & 0x7fffu) > 0x7f80u);
        // the same through nn_gelu_forward_grad (GELU' over a copy of x, then multiplied)
        float xg[NX], yg[NX], dxg[NX], xg16[NX];
        uint16_t yg16[NX], dxg16[NX];
        memcpy(xg, xs, sizeof xg), memcpy(xg16, xs, sizeof xg16);
        nn_gelu_forward_grad(&g, xg, yg, NULL, NX);
        nn_gelu_backward_set(&g, dy, dxg);
        nn_gelu_forward_grad(&g, xg16, NULL, yg16, NX);
        nn_gelu_backward_set16(&g, dy, dx, dxg16);
        for (int i = 0; i < NX - 1; i++) {
            const bool pos = xs[i] > 0.0f;
            CHECK_MSG(yg[i] == (pos ? xs[i] : 0.0f) && yg16[i] == nn_to_bf16(yg[i]),
                      "forward_grad: GELU(%g) = %g", (double)xs[i], (double)yg[i]);
            CHECK(fabsf(dxg[i] - (pos ? 1.0f : 0.0f)) <= 1e-30f && dxg16[i] == nn_to_bf16(dx[i]));
        }
        CHECK(isnan(yg[NX - 1]) && isnan(dxg[NX - 1]) && (yg16[NX - 1] & 0x7fffu) > 0x7f80u);
    }
    nn_gelu_set_vector(true);
    // GELU' of both kinds against float64 over [-12, 12] (the tanh form's 1 − t² lost to
    // cancellation near |u| ~ 3: 2e-6 where PyTorch's float32 has 1e-6), and GELU; through
    // the layer, so on a CPU with AVX-512 its vector code with reciprocal estimates)
    enum { NG = 24001 };
    float *gx = malloc(NG * sizeof *gx), *g1 = malloc(NG * sizeof *g1),
          *gd = malloc(NG * sizeof *gd);
    for (int i = 0; i < NG; i++)
        gx[i] = (float)(i - NG / 2) * 1e-3f, g1[i] = 1.0f;
    for (int kv = 0; kv < 4; kv++) { // (the AVX-512 loops where the CPU has them, the plain)
        const int kind = kv & 1;
        nn_gelu_set_vector(kv < 2);
        nn_gelu g = {.kind = kind ? NN_GELU_TANH : NN_GELU_ERF};
        float yy[NG], yp[NG], gp[NG], dp[NG];
        nn_gelu_forward(&g, gx, yy, NG);
        nn_gelu_backward_set(&g, g1, gd);
        // nn_gelu_forward_grad (its exponential shared): GELU' written over a copy of x and
        // multiplied by the backward; its GELU and GELU' are held to the same bounds below
        memcpy(gp, gx, NG * sizeof *gp);
        nn_gelu_forward_grad(&g, gp, yp, NULL, NG);
        nn_gelu_backward_set(&g, g1, dp);
        double worst = 0, worst_y = 0;
        for (int i = 0; i < NG; i++) {
            const double v = gx[i];
            double want, want_y;
            if (kind) {
                const double c = sqrt(2.0 / 3.14159265358979324),
                             u = c * (v + 0.044715 * v * v * v);
                const double t = tanh(u);
                want = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * v * v);
                want_y = 0.5 * v * (1.0 + t);
            } else {
                want = 0.5 * (1.0 + erf(v / sqrt(2.0))) +
                       v * exp(-0.5 * v * v) / sqrt(2.0 * 3.14159265358979324);
                want_y = 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
            }
            worst = fmax(worst, fmax(fabs((double)gd[i] - want), fabs((double)dp[i] - want)));
            // GELU itself: tanh / erf within 2.5e-7 / 4e-7 (above), times |v| / 2, plus
            // float32 rounding of y
            worst_y =
                fmax(worst_y, fmax(fabs((double)yy[i] - want_y), fabs((double)yp[i] - want_y)) /
                                  (1.0 + fabs(v)));
        }
        CHECK_MSG(worst < 1.2e-6, "GELU' (%s) off float64 by %.3g", kind ? "tanh" : "erf", worst);
        CHECK_MSG(worst_y < 5e-7, "GELU (%s) off float64 by %.3g (1 + |x|)", kind ? "tanh" : "erf",
                  worst_y);
    }
    nn_gelu_set_vector(true);
    free(gx), free(g1), free(gd);
}

static void maxpool_should_match_naive_and_finite_differences(void) {
    ref_rng r = {71};
    // {k, s, p}: classic 2x2/2, overlapping 3x3/2 with padding 1
    const size_t cfg[][3] = {{2, 2, 0}, {3, 2, 1}};
    for (size_t t = 0; t < 2; t++) {
        const size_t N = 2, C = 3, H = 7, W = 6, n = N * C * H * W;
        nn_maxpool2d l;
        CHECK(nn_maxpool2d_init(&l, C, H, W, cfg[t][0], cfg[t][1], cfg[t][2], N) == NN_OK);
        const size_t ny = N * C * l.oh * l.ow;
        // distinct values 0.01 apart, shuffled: no ties, kinks >> h away
        float *x = malloc(n * sizeof *x), *y = malloc(ny * sizeof *y), *w = malloc(ny * sizeof *w);
        float *dx = zeros(n);
        for (size_t i = 0; i < n; i++)
            x[i] = 0.01f * (float)i - 1.0f;
        for (size_t i = n; i > 1; i--) {
            size_t j = (size_t)ref_uniform(&r, 0, (double)i);
            float tmp = x[i - 1];
            x[i - 1] = x[j];
            x[j] = tmp;
        }
        fill(&r, w, ny, -1, 1);
        pool_ctx c = {0, &l, x, y, N, C, H * W};
        pool_fwd(&c);
        for (size_t pl = 0; pl < N * C; pl++)
            for (size_t o1 = 0; o1 < l.oh; o1++)
                for (size_t o2 = 0; o2 < l.ow; o2++) {
                    float best = -INFINITY;
                    for (size_t a = 0; a < l.k; a++)
                        for (size_t b = 0; b < l.k; b++) {
                            long i1 = (long)(o1 * l.s + a) - (long)l.p;
                            long i2 = (long)(o2 * l.s + b) - (long)l.p;
                            if (i1 >= 0 && i2 >= 0 && i1 < (long)H && i2 < (long)W)
                                best = fmaxf(best, x[pl * H * W + (size_t)i1 * W + (size_t)i2]);
                        }
                    CHECK(y[(pl * l.oh + o1) * l.ow + o2] == best);
                }
        nn_maxpool2d_backward(&l, w, dx);
        fd_fn f = {pool_fwd, &c, y, ny, w};
        FD_CHECK(&f, x, dx, n, 1e-3f, "maxpool dx");
        free(x), free(y), free(w), free(dx);
        nn_maxpool2d_free(&l);
    }
    nn_maxpool2d bad;
    CHECK(nn_maxpool2d_init(&bad, 1, 4, 4, 2, 2, 2, 1) == NN_ERR_ARG); // p > k/2
}

// The 2x2 path's rule, against a plain window scan: ties to the first in window order, a
// NaN always wins (the last NaN of the window), on ties placed in every position and a
// window of two NaNs; bf16 output the f32 one rounded, the same argmax. Rows of 4 windows
// and of 21 (a whole 16-lane vector and a masked tail of 5; an odd width)
static void maxpool_2x2_tie_and_nan_rule(size_t W) {
    const size_t N = 2, C = 3, H = 6, HW = H * W, n = N * C * HW;
    nn_maxpool2d l;
    CHECK(nn_maxpool2d_init(&l, C, H, W, 2, 2, 0, N) == NN_OK);
    const size_t L = l.oh * l.ow, ny = N * C * L;
    float *x = malloc(n * sizeof *x), *y = malloc(ny * sizeof *y);
    uint16_t *y16 = malloc(ny * sizeof *y16);
    int32_t *arg = malloc(ny * sizeof *arg);
    for (size_t i = 0; i < n; i++) // small integers: many ties
        x[i] = (float)((i * 5 / 7) % 3);
    x[3] = NAN, x[1] = NAN, x[W + 1] = NAN; // x[1], x[W+1]: one window
    const uint32_t snan = 0x7f800001u;      // a NaN that bf16 rounding would turn into inf
    memcpy(&x[HW + 2 * W + 1], &snan, sizeof snan);
    x[HW] = x[HW + 1] = 5, x[HW + W] = x[HW + W + 1] = 1; // a tie in the top row
    for (size_t k = 0; k < 4; k++)                        // all four equal
        x[2 * HW + (k / 2) * W + 2 + k % 2] = 5;
    nn_maxpool2d_forward(&l, x, y, N);
    memcpy(arg, l.argmax, ny * sizeof *arg);
    nn_maxpool2d_forward_bf16(&l, x, y16, N);
    CHECK(memcmp(arg, l.argmax, ny * sizeof *arg) == 0);
    size_t ties = 0, nans = 0;
    for (size_t pl = 0; pl < N * C; pl++)
        for (size_t o1 = 0; o1 < l.oh; o1++)
            for (size_t o2 = 0; o2 < l.ow; o2++) {
                const size_t at[4] = {2 * o1 * W + 2 * o2, 2 * o1 * W + 2 * o2 + 1,
                                      (2 * o1 + 1) * W + 2 * o2, (2 * o1 + 1) * W + 2 * o2 + 1};
                const float *xp = x + pl * HW;
                size_t want = at[0], eq = 0;
                for (int k = 1; k < 4; k++)
                    if (isnan(xp[at[k]]) || xp[at[k]] > xp[want]) want = at[k];
                for (int k = 0; k < 4; k++)
                    eq += xp[at[k]] == xp[want];
                ties += eq > 1, nans += isnan(xp[want]);
                const size_t o = pl * L + o1 * l.ow + o2;
                CHECK(arg[o] == (int32_t)want);
                CHECK(isnan(xp[want]) ? isnan(y[o]) : y[o] == xp[want]);
                uint16_t h;
                nn_bf16_encode(&y[o], &h, 1);
                CHECK(y16[o] == h);
            }
    CHECK(ties > 10 && nans == 3); // the cases were there
    free(x), free(y), free(y16), free(arg);
    nn_maxpool2d_free(&l);
}

static void maxpool_2x2_should_keep_the_tie_and_nan_rule(void) {
    for (size_t W = 8; W <= 43; W += 35)
        maxpool_2x2_tie_and_nan_rule(W);
}

static void average_pools_should_match_finite_differences(void) {
    ref_rng r = {72};
    const size_t N = 2, C = 3, H = 6, W = 5, n = N * C * H * W;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *w = malloc(n * sizeof *w);
    float *dx = zeros(n);
    fill(&r, x, n, -1, 1);
    fill(&r, w, n, -1, 1);
    // avgpool 3x3 stride 2 padding 1 (zeros counted): value check at a corner + FD
    nn_avgpool2d l;
    CHECK(nn_avgpool2d_init(&l, C, H, W, 3, 2, 1) == NN_OK);
    CHECK(l.oh == 3 && l.ow == 3);
    pool_ctx c = {1, &l, x, y, N, C, H * W};
    pool_fwd(&c);
    double corner = ((double)x[0] + (double)x[1] + (double)x[W] + (double)x[W + 1]) / 9.0;
    CHECK_CLOSE(y[0], corner, 1e-6, 1e-7);
    nn_avgpool2d_backward(&l, w, dx);
    fd_fn f = {pool_fwd, &c, y, N * C * 9, w};
    FD_CHECK(&f, x, dx, n, FD_H, "avgpool dx");
    // global average pool
    memset(dx, 0, n * sizeof *dx);
    pool_ctx cg = {2, NULL, x, y, N, C, H * W};
    pool_fwd(&cg);
    double m0 = 0;
    for (size_t i = 0; i < H * W; i++)
        m0 += (double)x[i];
    CHECK_CLOSE(y[0], m0 / (double)(H * W), 1e-6, 1e-7);
    nn_gap_backward(w, dx, N, C, H * W);
    fd_fn fg = {pool_fwd, &cg, y, N * C, w};
    FD_CHECK(&fg, x, dx, n, FD_H, "global avgpool dx");
    // token mean pool: (B = N, T = H*W... reuse as (2, 15, 6))
    memset(dx, 0, n * sizeof *dx);
    pool_ctx ct = {3, NULL, x, y, 2, 6, 15};
    pool_fwd(&ct);
    nn_tokenpool_backward(w, dx, 2, 15, 6);
    fd_fn ft = {pool_fwd, &ct, y, 2 * 6, w};
    FD_CHECK(&ft, x, dx, n, FD_H, "tokenpool dx");
    free(x), free(y), free(w), free(dx);
}

// ---- dropout, residual ----

typedef struct {
    nn_dropout *l;
    uint64_t seed;
    const float *x;
    float *y;
    size_t n;
} drop_ctx;
static void drop_fwd(void *p) {
    drop_ctx *c = p;
    nn_rng_seed(&c->l->rng, c->seed); // the same mask at every evaluation
    nn_dropout_forward(c->l, c->x, c->y, c->n, true);
}

static void dropout_should_scale_kept_units_and_match_finite_differences(void) {
    ref_rng r = {81};
    const size_t n = 4000;
    nn_dropout l;
    CHECK(nn_dropout_init(&l, 0.25f, n, 99) == NN_OK);
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *w = malloc(n * sizeof *w);
    float *dx = zeros(n);
    fill(&r, x, n, 0.5, 1.5);
    fill(&r, w, n, -1, 1);
    drop_ctx c = {&l, 7, x, y, n};
    drop_fwd(&c);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(y[i] == 0.0f || fabsf(y[i] - x[i] / 0.75f) <= 1e-6f * fabsf(x[i]));
        kept += y[i] != 0.0f;
    }
    // Binomial(4000, 0.75): sd 27; ±6 sd
    CHECK(kept > 3000 - 165 && kept < 3000 + 165);
    nn_dropout_backward(&l, w, dx);
    fd_fn f = {drop_fwd, &c, y, n, w};
    FD_CHECK(&f, x, dx, n, FD_H, "dropout dx");
    // reproducible from the seed; different seeds give different masks
    float *y2 = malloc(n * sizeof *y2);
    drop_fwd(&c);
    memcpy(y2, y, n * sizeof *y);
    drop_fwd(&c);
    CHECK(memcmp(y, y2, n * sizeof *y) == 0);
    c.seed = 8;
    drop_fwd(&c);
    CHECK(memcmp(y, y2, n * sizeof *y) != 0);
    // evaluation is the identity, forward and backward
    nn_dropout_forward(&l, x, y, n, false);
    CHECK(memcmp(y, x, n * sizeof *y) == 0);
    memset(dx, 0, n * sizeof *dx);
    nn_dropout_backward(&l, w, dx);
    CHECK(memcmp(dx, w, n * sizeof *dx) == 0);
    nn_dropout bad;
    CHECK(nn_dropout_init(&bad, 1.0f, n, 1) == NN_ERR_ARG && bad.keep == NULL);
    free(x), free(y), free(y2), free(w), free(dx);
    nn_dropout_free(&l);
}

static void residual_backward_should_send_dy_to_both_branches(void) {
    float a[4] = {1, 2, 3, 4}, b[4] = {-1, 0.5f, 2, 0}, y[4], dy[4] = {0.1f, -0.2f, 0.3f, 1};
    float da[4] = {1, 1, 1, 1}, db[4] = {0};
    nn_residual_forward(a, b, y, 4);
    for (int i = 0; i < 4; i++)
        CHECK(y[i] == a[i] + b[i]);
    nn_residual_backward(dy, da, db, 4);
    for (int i = 0; i < 4; i++)
        CHECK(da[i] == 1 + dy[i] && db[i] == dy[i]);
}

// ---- embeddings ----

typedef struct {
    int kind; // 0 token embedding, 1 positional, 2 patch
    void *l;
    const int32_t *idx;
    const float *x;
    float *y;
    size_t b, t;
} emb_ctx;
static void emb_fwd(void *p) {
    emb_ctx *c = p;
    if (c->kind == 0)
        nn_embedding_forward(c->l, c->idx, c->y, c->b * c->t);
    else if (c->kind == 1)
        nn_posembed_forward(c->l, c->x, c->y, c->b, c->t);
    else
        nn_patchembed_forward(c->l, c->x, c->y, c->b);
}

static void embeddings_should_match_finite_differences(void) {
    ref_rng r = {91};
    nn_rng g;
    nn_rng_seed(&g, 5);
    // token embedding with repeated tokens (their gradients add up)
    nn_embedding e;
    CHECK(nn_embedding_init(&e, 7, 4, &g) == NN_OK);
    const int32_t idx[6] = {3, 0, 3, 6, 1, 3};
    float y[6 * 4], w[6 * 4];
    fill(&r, w, 24, -1, 1);
    emb_ctx ce = {0, &e, idx, NULL, y, 2, 3};
    emb_fwd(&ce);
    CHECK(memcmp(y + 4, e.w, 4 * sizeof(float)) == 0); // row of token 0
    nn_embedding_backward(&e, w);
    fd_fn fe = {emb_fwd, &ce, y, 24, w};
    FD_CHECK(&fe, e.w, e.dw, 28, FD_H, "embedding dW");
    nn_embedding_free(&e);
    // positional embedding, T below the maximum
    nn_posembed pe;
    CHECK(nn_posembed_init(&pe, 6, 4, &g) == NN_OK);
    float x[2 * 5 * 4], yp[40], wp[40], dx[40] = {0};
    fill(&r, x, 40, -1, 1);
    fill(&r, wp, 40, -1, 1);
    emb_ctx cp = {1, &pe, NULL, x, yp, 2, 5};
    emb_fwd(&cp);
    CHECK(yp[4 * 4 + 1] == x[4 * 4 + 1] + pe.w[4 * 4 + 1]);
    nn_posembed_backward(&pe, wp, dx);
    fd_fn fp = {emb_fwd, &cp, yp, 40, wp};
    FD_CHECK(&fp, x, dx, 40, FD_H, "posembed dx");
    FD_CHECK(&fp, pe.w, pe.dw, 24, FD_H, "posembed dpos");
    for (size_t i = 20; i < 24; i++)
        CHECK(pe.dw[i] == 0.0f); // position 5 unused
    nn_param pp;
    CHECK(nn_posembed_params(&pe, &pp) == 1 && pp.n == 24);
    nn_posembed_free(&pe);
}

static void patch_embedding_should_equal_strided_conv_and_match_finite_differences(void) {
    ref_rng r = {92};
    nn_rng g;
    nn_rng_seed(&g, 6);
    const size_t N = 2, C = 2, H = 6, W = 4, p = 2, D = 5, P = (H / p) * (W / p);
    nn_patchembed l;
    CHECK(nn_patchembed_init(&l, C, H, W, p, D, N, &g) == NN_OK);
    CHECK(l.np == P);
    const size_t nx = N * C * H * W, ny = N * P * D;
    float *x = malloc(nx * sizeof *x), *y = malloc(ny * sizeof *y), *w = malloc(ny * sizeof *w);
    float *dx = zeros(nx);
    double *want = malloc(ny * sizeof *want), *conv = malloc(ny * sizeof *conv);
    fill(&r, x, nx, -1, 1);
    fill(&r, w, ny, -1, 1);
    emb_ctx c = {2, &l, NULL, x, y, N, 0};
    emb_fwd(&c);
    // the same as a convolution with kernel = stride = p, output (N, D, P) transposed
    ngd_conv_geom G = {C, H, W, p, p, p, p, 0, 0, 1, 1, 1};
    conv_naive(&G, D, N, x, l.proj.w, l.proj.b, conv);
    for (size_t n = 0; n < N; n++)
        for (size_t q = 0; q < P; q++)
            for (size_t d = 0; d < D; d++)
                want[(n * P + q) * D + d] = conv[(n * D + d) * P + q];
    CHECK_TENSOR(y, want, ny, 1e-5, 1e-6, "patch embedding forward");
    CHECK(nn_patchembed_backward(&l, w, dx) == NN_OK);
    ngd_matrix a, gm;
    nn_linear_stats(&l.proj, &a, &gm);
    CHECK(a.data == l.patches && a.rows == N * P && a.cols == C * p * p && gm.cols == D);
    fd_fn f = {emb_fwd, &c, y, ny, w};
    FD_CHECK(&f, x, dx, nx, FD_H, "patchembed dx");
    FD_CHECK(&f, l.proj.w, l.proj.dw, D * C * p * p, FD_H, "patchembed dW");
    FD_CHECK(&f, l.proj.b, l.proj.db, D, FD_H, "patchembed db");
    free(x), free(y), free(w), free(dx), free(want), free(conv);
    nn_patchembed_free(&l);
}

// ---- attention ----

// float64 reference of the whole layer from its weights
static void attention_naive(const nn_attention *l, const float *x, size_t B, size_t T, double *y) {
    const size_t C = l->c, nh = l->nh, hs = l->hs;
    double *qkv = malloc(B * T * 3 * C * sizeof *qkv), *out = malloc(B * T * C * sizeof *out);
    double *a = malloc(T * sizeof *a);
    for (size_t r = 0; r < B * T; r++)
        for (size_t o = 0; o < 3 * C; o++) {
            double s = (double)l->qkv.b[o];
            for (size_t j = 0; j < C; j++)
                s += (double)l->qkv.w[o * C + j] * (double)x[r * C + j];
            qkv[r * 3 * C + o] = s;
        }
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < nh; h++)
            for (size_t i = 0; i < T; i++) {
                const double *q = qkv + (b * T + i) * 3 * C + h * hs;
                double mx = -(double)INFINITY, s = 0;
                const size_t nj = l->causal ? i + 1 : T;
                for (size_t j = 0; j < nj; j++) {
                    const double *k = qkv + (b * T + j) * 3 * C + C + h * hs;
                    double d = 0;
                    for (size_t e = 0; e < hs; e++)
                        d += q[e] * k[e];
                    a[j] = d / sqrt((double)hs);
                    mx = fmax(mx, a[j]);
                }
                for (size_t j = 0; j < nj; j++)
                    s += (a[j] = exp(a[j] - mx));
                for (size_t e = 0; e < hs; e++) {
                    double o = 0;
                    for (size_t j = 0; j < nj; j++)
                        o += a[j] / s * qkv[(b * T + j) * 3 * C + 2 * C + h * hs + e];
                    out[(b * T + i) * C + h * hs + e] = o;
                }
            }
    for (size_t r = 0; r < B * T; r++)
        for (size_t o = 0; o < C; o++) {
            double s = (double)l->proj.b[o];
            for (size_t j = 0; j < C; j++)
                s += (double)l->proj.w[o * C + j] * out[r * C + j];
            y[r * C + o] = s;
        }
    free(qkv), free(out), free(a);
}

typedef struct {
    nn_attention *l;
    const float *x;
    float *y;
    size_t b, t;
} att_ctx;
static void att_fwd(void *p) {
    att_ctx *c = p;
    nn_attention_forward(c->l, c->x, c->y, c->b, c->t);
}

// An attention layer (seeded init) whose first `rows` rows of the qkv weight (q, k, v
// blocks of C rows each) are scaled by f: larger scores than the default init
static nn_status attention_scaled(nn_attention *l, size_t C, size_t nh, bool causal, size_t B,
                                  size_t T, uint64_t seed, size_t rows, float f) {
    nn_rng g;
    nn_rng_seed(&g, seed);
    const nn_status st = nn_attention_init(l, C, nh, causal, B, T, &g);
    if (st == NN_OK)
        for (size_t i = 0; i < rows * C; i++)
            l->qkv.w[i] *= f;
    return st;
}

static void attention_should_match_naive_and_finite_differences(void) {
    ref_rng r = {101};
    for (int causal = 0; causal < 2; causal++) {
        const size_t B = 2, T = 5, C = 8, nh = 2, n = B * T * C;
        nn_attention l;
        // larger weights than the default init, so the softmax is far from uniform
        CHECK(attention_scaled(&l, C, nh, causal, B, T + 2, 7 + (uint64_t)causal, 3 * C, 3.0f) ==
              NN_OK);
        float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *w = malloc(n * sizeof *w);
        float *dx = zeros(n);
        double *want = malloc(n * sizeof *want);
        fill(&r, x, n, -1, 1);
        fill(&r, w, n, -1, 1);
        att_ctx c = {&l, x, y, B, T};
        att_fwd(&c);
        attention_naive(&l, x, B, T, want);
        CHECK_TENSOR(y, want, n, 1e-5, 1e-5,
                     causal ? "causal attention forward" : "attention forward");
        if (causal) { // the first query sees only itself: its probabilities are (1, 0, ...)
            const size_t tp = (T + 15) / 16 * 16; // (att is kept transposed, rows of tp)
            CHECK(l.att[0] == 1.0f);
            for (size_t j = 1; j < T; j++)
                CHECK(l.att[j * tp] == 0.0f);
            for (size_t i = T; i < tp; i++) // (lanes past T)
                CHECK(l.att[i] == 0.0f);
        }
        nn_attention_backward(&l, w, dx);
        float *dwq = fdup(l.qkv.dw, 3 * C * C), *dbq = fdup(l.qkv.db, 3 * C);
        float *dwp = fdup(l.proj.dw, C * C), *dbp = fdup(l.proj.db, C);
        fd_fn f = {att_fwd, &c, y, n, w};
        FD_CHECK(&f, x, dx, n, FD_H, causal ? "causal attention dx" : "attention dx");
        FD_CHECK(&f, l.qkv.w, dwq, 3 * C * C, FD_H, "attention dWqkv");
        FD_CHECK(&f, l.qkv.b, dbq, 3 * C, FD_H, "attention dbqkv");
        FD_CHECK(&f, l.proj.w, dwp, C * C, FD_H, "attention dWproj");
        FD_CHECK(&f, l.proj.b, dbp, C, FD_H, "attention dbproj");
        // statistics: qkv sees x and dqkv, proj sees the heads' output and dy
        att_fwd(&c);
        nn_attention_backward(&l, w, NULL);
        ngd_matrix a, gm;
        nn_linear_stats(&l.qkv, &a, &gm);
        CHECK(a.data == x && a.rows == B * T && gm.data == l.dqkv && gm.cols == 3 * C);
        nn_linear_stats(&l.proj, &a, &gm);
        CHECK(a.data == l.atty && gm.data == w);
        free(x), free(y), free(w), free(dx), free(want), free(dwq), free(dbq), free(dwp), free(dbp);
        nn_attention_free(&l);
    }
}

// float64 reference of the whole layer's backward for the loss Σ w·y: dx (B·T x C) and dWqkv
// (3C x C), from the layer's weights and its input x
static void attention_naive_backward(const nn_attention *l, const float *x, const float *w,
                                     size_t B, size_t T, double *dx, double *dwq) {
    const size_t C = l->c, C3 = 3 * C, nh = l->nh, hs = l->hs, BT = B * T;
    const double sc = 1.0 / sqrt((double)hs);
    double *qkv = calloc(BT * C3, sizeof(double)), *dqkv = calloc(BT * C3, sizeof(double));
    double *dout = calloc(BT * C, sizeof(double)), *A = calloc(T * T, sizeof(double));
    double *dpre = calloc(T * T, sizeof(double));
    for (size_t r = 0; r < BT; r++)
        for (size_t o = 0; o < C3; o++) {
            double s = (double)l->qkv.b[o];
            for (size_t j = 0; j < C; j++)
                s += (double)l->qkv.w[o * C + j] * (double)x[r * C + j];
            qkv[r * C3 + o] = s;
        }
    for (size_t r = 0; r < BT; r++) // dout = w Wproj
        for (size_t j = 0; j < C; j++) {
            double s = 0;
            for (size_t o = 0; o < C; o++)
                s += (double)w[r * C + o] * (double)l->proj.w[o * C + j];
            dout[r * C + j] = s;
        }
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < nh; h++) {
            const double *q = qkv + b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
            double *dq = dqkv + b * T * C3 + h * hs, *dk = dq + C, *dv = dq + 2 * C;
            const double *dO = dout + b * T * C + h * hs;
            for (size_t i = 0; i < T; i++) { // probabilities
                const size_t nj = l->causal ? i + 1 : T;
                double mx = -(double)INFINITY, s = 0;
                for (size_t j = 0; j < T; j++) {
                    double d = 0;
                    for (size_t e = 0; e < hs; e++)
                        d += q[i * C3 + e] * k[j * C3 + e];
                    A[i * T + j] = d * sc;
                    if (j < nj) mx = fmax(mx, A[i * T + j]);
                }
                for (size_t j = 0; j < T; j++)
                    s += (A[i * T + j] = j < nj ? exp(A[i * T + j] - mx) : 0.0);
                for (size_t j = 0; j < T; j++)
                    A[i * T + j] /= s;
            }
            for (size_t i = 0; i < T; i++) { // dpre = A ⊙ (datt − Σ_j A datt), datt = dO vᵀ
                double sd = 0;
                for (size_t j = 0; j < T; j++) {
                    double d = 0;
                    for (size_t e = 0; e < hs; e++)
                        d += dO[i * C + e] * v[j * C3 + e];
                    dpre[i * T + j] = d;
                    sd += A[i * T + j] * d;
                }
                for (size_t j = 0; j < T; j++)
                    dpre[i * T + j] = A[i * T + j] * (dpre[i * T + j] - sd);
            }
            for (size_t i = 0; i < T; i++)
                for (size_t e = 0; e < hs; e++) {
                    double sq = 0, sk = 0, sv = 0;
                    for (size_t j = 0; j < T; j++) {
                        sq += dpre[i * T + j] * k[j * C3 + e];
                        sk += dpre[j * T + i] * q[j * C3 + e];
                        sv += A[j * T + i] * dO[j * C + e];
                    }
                    dq[i * C3 + e] = sq * sc, dk[i * C3 + e] = sk * sc, dv[i * C3 + e] = sv;
                }
        }
    for (size_t r = 0; r < BT; r++)
        for (size_t c = 0; c < C; c++) {
            double s = 0;
            for (size_t o = 0; o < C3; o++)
                s += dqkv[r * C3 + o] * (double)l->qkv.w[o * C + c];
            dx[r * C + c] = s;
        }
    for (size_t o = 0; o < C3; o++)
        for (size_t c = 0; c < C; c++) {
            double s = 0;
            for (size_t r = 0; r < BT; r++)
                s += dqkv[r * C3 + o] * (double)x[r * C + c];
            dwq[o * C + c] = s;
        }
    free(qkv), free(dqkv), free(dout), free(A), free(dpre);
}

// The heads' kernels at the shapes their vectors are cut for: hs a multiple of 16 (rows read
// in place) or not (padded copies, a last block of columns narrower than 16), T not a
// multiple of 16 (partial query blocks, padded lanes) and above 64 (more than four blocks of
// keys), down to one query and heads of 1 or 2 values, causal or not: forward and backward
// against float64, and the kept probabilities
// (transposed rows of tp) summing to 1 over the allowed keys, masked ones exactly 0; every
// pass on the kernels, then every pass on the per-head GEMMs (the default mixes the two by
// the heads' sizes)
static void attention_heads_should_match_float64_at_vector_edges(void) {
    ref_rng r = {107};
    const struct {
        size_t C, nh, T;
    } cs[] = {{32, 2, 37}, {64, 2, 70}, {40, 2, 21}, {16, 1, 16},
              {48, 1, 3},  {2, 2, 1},   {6, 3, 17}};
    for (int path = 0; path < 2; path++) // the AVX-512 kernels (where the CPU has them), GEMMs
        for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++)
            for (int causal = 0; causal < 2; causal++) {
                nn_attention_set_kernels(path == 0 ? NN_ATT_KERNELS : NN_ATT_GEMM);
                const size_t C = cs[ci].C, nh = cs[ci].nh, T = cs[ci].T, B = 2, n = B * T * C;
                const size_t tp = (T + 15) / 16 * 16;
                nn_attention l;
                CHECK(attention_scaled(&l, C, nh, causal, B, T, 31 + ci, 3 * C, 2.0f) == NN_OK);
                float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
                float *w = malloc(n * sizeof *w), *dx = malloc(n * sizeof *dx);
                double *want = malloc(n * sizeof *want), *wdx = malloc(n * sizeof *wdx);
                double *wdw = malloc(3 * C * C * sizeof *wdw);
                fill(&r, x, n, -1, 1);
                fill(&r, w, n, -1, 1);
                nn_attention_forward(&l, x, y, B, T);
                attention_naive(&l, x, B, T, want);
                CHECK_TENSOR(y, want, n, 2e-5, 2e-5, "attention heads forward");
                size_t bad = 0;
                for (size_t bh = 0; bh < B * nh; bh++)
                    for (size_t i = 0; i < tp; i++) {
                        double s = 0;
                        for (size_t j = 0; j < T; j++) {
                            const float p = l.att[(bh * T + j) * tp + i];
                            const bool masked = i >= T || (causal && j > i);
                            bad += masked ? p != 0.0f : !(p >= 0.0f);
                            s += (double)p;
                        }
                        bad += i < T ? !(fabs(s - 1.0) < 1e-5) : s != 0.0;
                    }
                CHECK(bad == 0);
                nn_attention_backward_set(&l, w, dx);
                attention_naive_backward(&l, x, w, B, T, wdx, wdw);
                CHECK_TENSOR(dx, wdx, n, 5e-5, 5e-5, "attention heads dx");
                CHECK_TENSOR(l.qkv.dw, wdw, 3 * C * C, 5e-5, 5e-5, "attention heads dWqkv");
                free(x), free(y), free(w), free(dx), free(want), free(wdx), free(wdw);
                nn_attention_free(&l);
            }
    nn_attention_set_kernels(NN_ATT_AUTO);
}

// Heads large enough to run side by side on the threads (each thread its own scratch): forward
// against the naive attention, and forward and backward bit for bit the same as on one
// thread (every head is computed by the same code wherever it runs)
static void attention_heads_on_threads_should_match_one_thread(void) {
    ref_rng r = {103};
    const size_t B = 8, T = 16, C = 32, nh = 4, n = B * T * C;
    float *x = malloc(n * sizeof *x), *w = malloc(n * sizeof *w);
    float *y[2], *dx[2], *dw[2];
    fill(&r, x, n, -1, 1);
    fill(&r, w, n, -1, 1);
    const int nthr0 = th_set_threads(0);
    for (int causal = 0; causal < 2; causal++) { // (without a mask: kernels forward, GEMMs back)
        for (int run = 0; run < 2; run++) {
            th_set_threads(run ? 2 : 1);
            nn_attention l;
            CHECK(attention_scaled(&l, C, nh, causal, B, T, 11, 3 * C, 3.0f) == NN_OK);
            y[run] = malloc(n * sizeof(float));
            dx[run] = zeros(n);
            nn_attention_forward(&l, x, y[run], B, T);
            if (run) {
                double *want = malloc(n * sizeof *want);
                attention_naive(&l, x, B, T, want);
                CHECK_TENSOR(y[run], want, n, 1e-5, 1e-5, "attention forward on threads");
                free(want);
            }
            nn_attention_backward(&l, w, dx[run]);
            dw[run] = fdup(l.qkv.dw, 3 * C * C);
            nn_attention_free(&l);
        }
        CHECK(memcmp(y[0], y[1], n * sizeof(float)) == 0);
        CHECK(memcmp(dx[0], dx[1], n * sizeof(float)) == 0);
        CHECK(memcmp(dw[0], dw[1], 3 * C * C * sizeof(float)) == 0);
        for (int run = 0; run < 2; run++)
            free(y[run]), free(dx[run]), free(dw[run]);
    }
    th_set_threads(nthr0);
    free(x), free(w);
}

// A score that overflows makes its query's output NaN, as expf's softmax would (not a finite
// one from a clamped exp), and only that query's: the other rows stay finite, and a causal
// layer keeps the entries its mask hides exactly 0 (those of that query too) and the value
// gradients of keys after it finite. Both paths, with and without a mask.
static void attention_nonfinite_scores_should_stay_in_their_query(void) {
    ref_rng r = {109};
    const size_t B = 1, T = 20, C = 32, nh = 2, n = B * T * C, q = 5;
    const size_t tp = (T + 15) / 16 * 16;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *w = malloc(n * sizeof *w);
    for (int mode = 0; mode < 2; mode++)
        for (int causal = 0; causal < 2; causal++) {
            nn_attention_set_kernels(mode ? NN_ATT_GEMM : NN_ATT_KERNELS);
            fill(&r, x, n, -1, 1);
            fill(&r, w, n, -1, 1);
            for (size_t j = 0; j < C; j++) // query q's scores: about 1e40 with itself
                x[q * C + j] = 1e20f;
            nn_attention l;
            CHECK(attention_scaled(&l, C, nh, causal, B, T, 13, 3 * C, 1.0f) == NN_OK);
            nn_attention_forward(&l, x, y, B, T);
            size_t wrong = 0;
            for (size_t i = 0; i < T; i++)
                for (size_t j = 0; j < C; j++)
                    wrong += i == q ? !isnan(y[i * C + j]) : !isfinite(y[i * C + j]);
            CHECK_MSG(wrong == 0, "mode %d causal %d: %zu outputs", mode, causal, wrong);
            if (causal) {
                size_t nz = 0;
                for (size_t h = 0; h < nh; h++)
                    for (size_t j = 0; j < T; j++)
                        for (size_t i = 0; i < j; i++) // key j after query i
                            nz += l.att[(h * T + j) * tp + i] != 0.0f;
                CHECK_MSG(nz == 0, "mode %d: %zu masked entries not 0", mode, nz);
                nn_attention_backward_set(&l, w, x);
                size_t bad = 0;
                for (size_t j = q + 1; j < T; j++) // dv of keys after q
                    for (size_t e = 0; e < C; e++)
                        bad += !isfinite(l.dqkv[j * 3 * C + 2 * C + e]);
                CHECK_MSG(bad == 0, "mode %d: %zu value gradients", mode, bad);
            }
            nn_attention_free(&l);
        }
    nn_attention_set_kernels(NN_ATT_AUTO);
    free(x), free(y), free(w);
}

// Parameter gradients that sum over the rows (a Linear's bias, LayerNorm's γ and β, the
// positional embedding) are shared by the threads in blocks of columns: on 2 threads they
// must give the serial row loop's bits (each column summed in row order), here with values
// of mixed magnitudes (any other order of the sums changes them), a ragged last block and
// more than one block per thread; and nn_colsum_add agrees with a float64 sum.
static void row_sums_on_threads_should_give_the_serial_loops_bits(void) {
    ref_rng r = {211};
    const size_t rows = 1000, C = 37, n = rows * C; // 37 000 numbers: the threads are taken
    float *x = malloc(n * sizeof *x), *dy = malloc(n * sizeof *dy);
    fill(&r, x, n, -2, 3);
    for (size_t i = 0; i < n; i++) {
        const double u = ref_uniform(&r, -0.5, 0.5);
        dy[i] = (float)(u * pow(10.0, ref_uniform(&r, -3.0, 3.0)));
    }
    const int nthr0 = th_set_threads(2);
    // nn_colsum_add onto a start value, against the serial loop and float64
    float acc[37], want[37];
    double want64[37];
    for (size_t j = 0; j < C; j++)
        acc[j] = want[j] = (float)j, want64[j] = (double)j;
    nn_colsum_add(dy, rows, C, C, acc);
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < C; j++)
            want[j] += dy[i * C + j], want64[j] += (double)dy[i * C + j];
    CHECK(memcmp(acc, want, sizeof acc) == 0);
    CHECK_TENSOR(acc, want64, C, 1e-3, 1e-4, "nn_colsum_add against float64");
    // a Linear's bias gradient
    nn_rng g;
    nn_rng_seed(&g, 5);
    nn_linear lin;
    CHECK(nn_linear_init(&lin, 3, C, true, &g) == NN_OK);
    float *xin = malloc(rows * 3 * sizeof *xin);
    fill(&r, xin, rows * 3, -1, 1);
    nn_linear_forward(&lin, xin, x, rows); // (x: the output, overwritten)
    nn_linear_backward(&lin, dy, NULL);
    for (size_t j = 0; j < C; j++)
        want[j] = 0.0f;
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < C; j++)
            want[j] += dy[i * C + j];
    CHECK(memcmp(lin.db, want, sizeof want) == 0);
    // in bf16 mode too (the sums of the f32 dy), and dy16 is nn_bf16_encode's
    memset(lin.db, 0, sizeof want);
    CHECK(nn_linear_use_bf16(&lin, rows) == NN_OK);
    nn_linear_forward(&lin, xin, x, rows);
    nn_linear_backward(&lin, dy, NULL);
    CHECK(memcmp(lin.db, want, sizeof want) == 0);
    uint16_t *dy16 = malloc(n * sizeof *dy16);
    nn_bf16_encode(dy, dy16, n);
    CHECK(memcmp(lin.dy16, dy16, n * sizeof *dy16) == 0);
    free(dy16);
    nn_linear_free(&lin);
    // LayerNorm's γ and β
    fill(&r, x, n, -2, 3);
    nn_layernorm l;
    CHECK(nn_layernorm_init(&l, C, rows) == NN_OK);
    float *y = malloc(n * sizeof *y), *dx = zeros(n);
    nn_layernorm_forward(&l, x, y, rows);
    nn_layernorm_backward(&l, dy, dx);
    float wdw[37] = {0}, wdb[37] = {0};
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < C; j++) {
            wdw[j] += dy[i * C + j] * (x[i * C + j] - l.mean[i]) * l.rstd[i];
            wdb[j] += dy[i * C + j];
        }
    CHECK(memcmp(l.dw, wdw, sizeof wdw) == 0);
    CHECK(memcmp(l.db, wdb, sizeof wdb) == 0);
    nn_layernorm_free(&l);
    // the positional embedding: dW[t] = Σ_b dy[b, t], b in order
    const size_t B = 40, T = 25; // B·T = rows
    nn_posembed pe;
    CHECK(nn_posembed_init(&pe, T, C, &g) == NN_OK);
    nn_posembed_forward(&pe, x, y, B, T);
    nn_posembed_backward(&pe, dy, NULL);
    float *wpe = zeros(T * C);
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++)
            for (size_t j = 0; j < C; j++)
                wpe[t * C + j] += dy[(b * T + t) * C + j];
    CHECK(memcmp(pe.dw, wpe, T * C * sizeof(float)) == 0);
    nn_posembed_free(&pe);
    th_set_threads(nthr0);
    free(x), free(dy), free(xin), free(y), free(dx), free(wpe);
}

// bf16 mode: a producer writing the next Linear's input already rounded (ReLU, both GELUs,
// LayerNorm) gives what rounding its f32 output gives, bit for bit, and a Linear (and the
// attention's qkv) run on that input gives nn_linear_forward's output and statistics; on 2
// threads, at sizes that take them, with NaN, ±inf and ties among the inputs.
static void bf16_producers_should_equal_rounding_the_f32_outputs(void) {
    ref_rng r = {223};
    const size_t rows = 700, C = 48, n = rows * C; // 33 600 numbers: the threads are taken
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    uint16_t *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    fill(&r, x, n, -4, 4);
    x[3] = NAN, x[5] = INFINITY, x[7] = -INFINITY;
    x[9] = 1.00390625f; // 1 + 2^-8: a tie, rounded to even
    const int nthr0 = th_set_threads(2);
    nn_relu relu;
    nn_relu_forward(&relu, x, y, n);
    nn_bf16_encode(y, want, n);
    nn_relu_forward16(&relu, x, got, n);
    CHECK(memcmp(got, want, n * sizeof *got) == 0 && relu.x == x);
    for (int kind = 0; kind < 2; kind++) {
        nn_gelu g = {.kind = kind ? NN_GELU_TANH : NN_GELU_ERF};
        nn_gelu_forward(&g, x, y, n);
        nn_bf16_encode(y, want, n);
        nn_gelu_forward16(&g, x, got, n);
        CHECK(memcmp(got, want, n * sizeof *got) == 0 && g.x == x);
    }
    x[3] = 0.5f, x[5] = 2.0f, x[7] = -1.0f; // (LayerNorm: rows of finite values)
    nn_layernorm ln;
    CHECK(nn_layernorm_init(&ln, C, rows) == NN_OK);
    fill(&r, ln.w, C, 0.5, 1.5);
    fill(&r, ln.b, C, -0.5, 0.5);
    nn_layernorm_forward(&ln, x, y, rows);
    nn_bf16_encode(y, want, n);
    nn_layernorm_forward16(&ln, x, got, rows);
    CHECK(memcmp(got, want, n * sizeof *got) == 0);
    nn_layernorm_free(&ln);
    // a Linear from the rounded input: the same output and statistics as from the f32 one
    nn_rng g;
    nn_rng_seed(&g, 9);
    nn_linear a, b;
    CHECK(nn_linear_init(&a, C, 40, true, &g) == NN_OK);
    nn_rng_seed(&g, 9);
    CHECK(nn_linear_init(&b, C, 40, true, &g) == NN_OK);
    CHECK(nn_linear_in16(&a) == NULL); // (f32 mode: no such buffer)
    CHECK(nn_linear_use_bf16(&a, rows) == NN_OK && nn_linear_use_bf16(&b, rows) == NN_OK);
    float *ya = malloc(rows * 40 * sizeof *ya), *yb = malloc(rows * 40 * sizeof *yb);
    nn_linear_forward(&a, y, ya, rows);
    nn_bf16_encode(y, nn_linear_in16(&b), n);
    nn_linear_forward_in16(&b, yb, rows);
    CHECK(memcmp(ya, yb, rows * 40 * sizeof *ya) == 0);
    fill(&r, ya, rows * 40, -1, 1); // (as dy)
    nn_linear_backward(&a, ya, NULL);
    nn_linear_backward(&b, ya, NULL);
    CHECK(memcmp(a.dw, b.dw, 40 * C * sizeof(float)) == 0);
    ngd_matrix sa, sg, sa2, sg2;
    nn_linear_stats(&a, &sa, &sg);
    nn_linear_stats(&b, &sa2, &sg2);
    CHECK(memcmp(sa.data, sa2.data, n * sizeof(uint16_t)) == 0);
    nn_linear_free(&a), nn_linear_free(&b);
    // the attention's qkv from the rounded input
    const size_t B = 4, T = 25, Ca = 16, na = B * T * Ca; // (B·T = 100 rows)
    nn_attention at[2];
    float *yo[2];
    for (int k = 0; k < 2; k++) {
        CHECK(attention_scaled(&at[k], Ca, 4, true, B, T, 17, 3 * Ca, 1.0f) == NN_OK);
        CHECK(nn_linear_use_bf16(&at[k].qkv, B * T) == NN_OK &&
              nn_linear_use_bf16(&at[k].proj, B * T) == NN_OK);
        yo[k] = malloc(na * sizeof(float));
    }
    nn_attention_forward(&at[0], x, yo[0], B, T);
    nn_bf16_encode(x, nn_linear_in16(&at[1].qkv), na);
    nn_attention_forward_in16(&at[1], yo[1], B, T);
    CHECK(memcmp(yo[0], yo[1], na * sizeof(float)) == 0);
    for (int k = 0; k < 2; k++)
        nn_attention_free(&at[k]), free(yo[k]);
    th_set_threads(nthr0);
    free(x), free(y), free(want), free(got), free(ya), free(yb);
}

// ---- loss ----

typedef struct {
    const float *logits;
    const int32_t *labels;
    size_t n, k;
    float smoothing;
    float loss;
} xent_ctx;
// The transformer's write (=) variants equal the adding ones into zeros, whatever the buffer
// held (NaN here): LayerNorm, attention (its Linears' gradients too) and token pooling; and
// LayerNorm's base + gradient the adding one onto a copy of base.
static void transformer_writing_variants_should_equal_the_adding_ones(void) {
    ref_rng r = {81};
    const size_t B = 2, T = 5, C = 8, n = B * T * C;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *dy = malloc(n * sizeof *dy);
    float *dx1 = malloc(n * sizeof *dx1), *dx2 = malloc(n * sizeof *dx2);
    fill(&r, x, n, -1, 1);
    fill(&r, dy, n, -1, 1);
    for (int kind = 0; kind < 3; kind++) {
        zeros_and_nans(dx1, dx2, n);
        if (kind == 0) {
            nn_layernorm a, b;
            CHECK(nn_layernorm_init(&a, C, B * T) == NN_OK &&
                  nn_layernorm_init(&b, C, B * T) == NN_OK);
            nn_layernorm_forward(&a, x, y, B * T);
            nn_layernorm_forward(&b, x, y, B * T);
            nn_layernorm_backward(&a, dy, dx1);
            nn_layernorm_backward_set(&b, dy, dx2);
            CHECK(memcmp(a.dw, b.dw, C * sizeof(float)) == 0);
            // base + the gradient (a residual): as the gradient added onto a copy of base
            float *c1 = malloc(n * sizeof *c1), *c2 = malloc(n * sizeof *c2);
            zeros_and_nans(c1, c2, n);
            memcpy(c1, x, n * sizeof *c1);
            nn_layernorm_backward(&a, dy, c1);
            nn_layernorm_backward_add(&b, dy, x, c2);
            CHECK(memcmp(c1, c2, n * sizeof(float)) == 0);
            free(c1), free(c2);
            nn_layernorm_free(&a), nn_layernorm_free(&b);
        } else if (kind == 1) {
            nn_attention a, b;
            CHECK(attention_scaled(&a, C, 2, true, B, T, 5, 3 * C, 3.0f) == NN_OK);
            CHECK(attention_scaled(&b, C, 2, true, B, T, 5, 3 * C, 3.0f) == NN_OK);
            nn_attention_forward(&a, x, y, B, T);
            nn_attention_forward(&b, x, y, B, T);
            nn_attention_backward(&a, dy, dx1);
            nn_attention_backward_set(&b, dy, dx2);
            CHECK(memcmp(a.qkv.dw, b.qkv.dw, 3 * C * C * sizeof(float)) == 0 &&
                  memcmp(a.proj.dw, b.proj.dw, C * C * sizeof(float)) == 0);
            nn_attention_free(&a), nn_attention_free(&b);
        } else {
            nn_tokenpool_backward(dy, dx1, B, T, C); // (dy's first B x C values as pooled)
            nn_tokenpool_backward_set(dy, dx2, B, T, C);
        }
        CHECK_MSG(memcmp(dx1, dx2, n * sizeof(float)) == 0, "writing variant %d", kind);
    }
    free(x), free(y), free(dy), free(dx1), free(dx2);
}

static void xent_fwd(void *p) {
    xent_ctx *c = p;
    c->loss = nn_xent_forward(c->logits, c->labels, c->n, c->k, c->smoothing, 1.0f, NULL);
}

// float64 softmax cross-entropy of N rows of K logits with smoothing eps: the mean loss,
// and (want_d not NULL) each dlogit, (p − target) / N
static double xent_ref(const float *z, const int32_t *lab, size_t N, size_t K, double eps,
                       double *want_d) {
    double want = 0;
    for (size_t i = 0; i < N; i++) {
        double m = -(double)INFINITY, se = 0;
        for (size_t j = 0; j < K; j++)
            m = fmax(m, (double)z[i * K + j]);
        for (size_t j = 0; j < K; j++)
            se += exp((double)z[i * K + j] - m);
        for (size_t j = 0; j < K; j++) {
            const double logp = (double)z[i * K + j] - m - log(se);
            const double tj = eps / (double)K + ((size_t)lab[i] == j ? 1.0 - eps : 0.0);
            want -= tj * logp;
            if (want_d) want_d[i * K + j] = (exp(logp) - tj) / (double)N;
        }
    }
    return want / (double)N;
}

// Wider rows (K = 21, labels at both ends and inside), with and without smoothing: the loss
// and every dlogit against float64; a NaN inside a row makes the loss and that row's
// gradient NaN, the other rows' finite
static void cross_entropy_of_wide_rows_should_match_float64(void) {
    ref_rng r = {113};
    enum { N = 5, K = 21 };
    float z[N * K], dz[N * K];
    double want_d[N * K];
    const int32_t lab[N] = {0, 7, 8, 16, 20};
    fill(&r, z, N * K, -6, 6);
    for (int s = 0; s < 2; s++) {
        const double eps = s ? 0.1 : 0.0;
        const double want = xent_ref(z, lab, N, K, eps, want_d);
        const float loss = nn_xent_forward(z, lab, N, K, (float)eps, 1.0f, dz);
        CHECK_CLOSE(loss, want, 1e-6, 1e-7);
        CHECK_TENSOR(dz, want_d, N * K, 1e-5, 1e-8, "xent dlogits of wide rows");
    }
    z[K + 10] = NAN; // (row 1)
    CHECK(isnan(nn_xent_forward(z, lab, N, K, 0.0f, 1.0f, dz)));
    size_t nans = 0;
    for (size_t j = 0; j < K; j++)
        nans += isnan(dz[K + j]) != 0;
    CHECK(nans == K && isfinite(dz[0]) && isfinite(dz[2 * K]));
}

static void cross_entropy_should_match_formula_and_finite_differences(void) {
    ref_rng r = {111};
    const size_t N = 4, K = 6;
    float z[24], dz[24];
    const int32_t lab[4] = {0, 5, 2, 2};
    fill(&r, z, 24, -3, 3);
    for (int s = 0; s < 2; s++) {
        const float eps = s ? 0.1f : 0.0f;
        const double want = xent_ref(z, lab, N, K, (double)eps, NULL);
        float loss = nn_xent_forward(z, lab, N, K, eps, 1.0f, dz);
        CHECK_CLOSE(loss, want, 1e-6, 1e-7);
        xent_ctx c = {z, lab, N, K, eps, 0};
        float one = 1.0f;
        fd_fn f = {xent_fwd, &c, &c.loss, 1, &one};
        FD_CHECK(&f, z, dz, 24, FD_H, eps > 0 ? "xent smoothed dlogits" : "xent dlogits");
        // the scale multiplies the gradient, not the loss; rows of dlogits sum to 0
        float dz2[24];
        CHECK(nn_xent_forward(z, lab, N, K, eps, 8.0f, dz2) == loss);
        for (size_t i = 0; i < 24; i++)
            CHECK_CLOSE(dz2[i], 8 * dz[i], 1e-6, 1e-8);
        for (size_t i = 0; i < N; i++) {
            double rs = 0;
            for (size_t j = 0; j < K; j++)
                rs += (double)dz[i * K + j];
            CHECK(fabs(rs) < 1e-7);
        }
    }
    // a NaN or infinite logit (NaN of either sign: x86's default NaN is negative): the loss
    // and that row's gradient are NaN, the other rows' gradients as they were
    // (-inf only with smoothing, whose target puts mass on it: without, it is a probability
    // of 0, below)
    const float bad[] = {NAN, -NAN, INFINITY, -INFINITY};
    for (int sm = 0; sm < 2; sm++)
        for (int b = 0; b < 4 - (sm == 0); b++)
            for (int at = 0; at < 3; at++) { // at the label (0) or elsewhere
                float zb[6] = {0.5f, -0.25f, 1.0f, 0.3f, 0.1f, -0.7f}, db[6], dref[6];
                const int32_t lb[2] = {0, 2};
                const float eps = sm ? 0.1f : 0.0f;
                CHECK(isfinite(nn_xent_forward(zb, lb, 2, 3, eps, 1.0f, dref)));
                zb[at] = bad[b];
                CHECK(!isfinite(nn_xent_forward(zb, lb, 2, 3, eps, 1.0f, db)));
                CHECK(isnan(db[0]) && isnan(db[1]) && isnan(db[2]));
                CHECK(db[3] == dref[3] && db[4] == dref[4] && db[5] == dref[5]);
            }
    // a -inf logit off the label without smoothing is a probability of 0, as in PyTorch: the
    // loss and gradient of the row without it (its own entry 0)
    {
        const float zi[4] = {1.0f, 2.0f, -INFINITY, 0.5f}, z3[3] = {1.0f, 2.0f, 0.5f};
        const int32_t li = 1;
        float di[4], d3[3];
        const float Li = nn_xent_forward(zi, &li, 1, 4, 0.0f, 1.0f, di);
        const float L3 = nn_xent_forward(z3, &li, 1, 3, 0.0f, 1.0f, d3);
        CHECK(fabsf(Li - L3) <= 1e-7f && fabs((double)Li - 0.4643688) < 1e-6);
        CHECK(fabsf(di[0] - d3[0]) <= 1e-7f && fabsf(di[1] - d3[1]) <= 1e-7f &&
              fabsf(di[2]) < 1e-30f && fabsf(di[3] - d3[2]) <= 1e-7f);
    }
    // accuracy: make rows 0 and 2 right, 1 and 3 wrong
    float zz[12] = {5, 0, 0, 5, 0, 0, 0, 0, 5, 0, 5, 0};
    const int32_t ll[4] = {0, 1, 2, 0};
    CHECK(nn_xent_correct(zz, ll, 4, 3) == 2);
}

// ---- PRNG ----

// The loss over many rows (a text model's 8192) runs on the threads in blocks of rows, each
// block's terms added in row order: one thread and two give the same loss, gradient and
// count, bit for bit, across block boundaries and a ragged last block; and the loss agrees
// with a float64 evaluation of its formula.
static void cross_entropy_on_threads_should_equal_one_thread(void) {
    ref_rng r = {229};
    const size_t N = 2500, K = 37; // 92 500 numbers: the threads are taken; 3 blocks of rows
    float *z = malloc(N * K * sizeof *z), *d[2];
    int32_t *y = malloc(N * sizeof *y);
    fill(&r, z, N * K, -6, 6);
    for (size_t i = 0; i < N; i++)
        y[i] = (int32_t)(i * 7 % K);
    float loss[2];
    size_t correct[2];
    const int nthr0 = th_set_threads(0);
    for (int k = 0; k < 2; k++) {
        th_set_threads(k + 1);
        d[k] = malloc(N * K * sizeof(float));
        loss[k] = nn_xent_forward(z, y, N, K, 0.1f, 2.0f, d[k]);
        correct[k] = nn_xent_correct(z, y, N, K);
    }
    th_set_threads(nthr0);
    CHECK(f_bits(loss[0]) == f_bits(loss[1]));
    CHECK(memcmp(d[0], d[1], N * K * sizeof(float)) == 0);
    CHECK(correct[0] == correct[1]);
    double want = 0.0;
    size_t want_c = 0;
    for (size_t i = 0; i < N; i++) {
        double mx = z[i * K], s = 0.0, zs = 0.0;
        size_t best = 0;
        for (size_t j = 0; j < K; j++) {
            mx = fmax(mx, (double)z[i * K + j]);
            if (z[i * K + j] > z[i * K + best]) best = j;
        }
        for (size_t j = 0; j < K; j++)
            s += exp((double)z[i * K + j] - mx), zs += (double)z[i * K + j];
        const double lse = mx + log(s);
        want += 0.9 * (lse - (double)z[i * K + (size_t)y[i]]) +
                0.1 / (double)K * ((double)K * lse - zs);
        want_c += best == (size_t)y[i];
    }
    want /= (double)N;
    CHECK(fabs((double)loss[1] - want) <= 1e-5 * fabs(want));
    CHECK(correct[1] == want_c);
    free(z), free(y), free(d[0]), free(d[1]);
}

static void rng_should_be_reproducible_and_unbiased(void) {
    nn_rng a, b;
    nn_rng_seed(&a, 42);
    nn_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++)
        CHECK(nn_rng_u64(&a) == nn_rng_u64(&b));
    size_t hist[5] = {0};
    double s = 0, ss = 0;
    for (int i = 0; i < 50000; i++) {
        hist[nn_rng_below(&a, 5)]++;
        float u = nn_rng_uniform(&a);
        CHECK(u >= 0.0f && u < 1.0f);
        double z = (double)nn_rng_normal(&a);
        s += z, ss += z * z;
    }
    // each bin ~ Binomial(50000, 0.2): sd ~ 89; ±6 sd
    for (int k = 0; k < 5; k++)
        CHECK(hist[k] > 10000 - 540 && hist[k] < 10000 + 540);
    CHECK(fabs(s / 50000) < 0.03 && fabs(ss / 50000 - 1) < 0.05);
    size_t perm[100], seen[100] = {0};
    nn_rng_permutation(&a, perm, 100);
    for (int i = 0; i < 100; i++)
        seen[perm[i]]++;
    for (int i = 0; i < 100; i++)
        CHECK(seen[i] == 1);
    // every ordering equally likely (Fisher–Yates): 2400 shuffles of 4 items give each of the
    // 24 orderings ~ Binomial(2400, 1/24) times, sd 9.8, ±6 sd; Sattolo's variant (j < i
    // instead of j <= i) gives only the 6 cyclic ones, a biased j some too rarely
    size_t orderings[24] = {0};
    for (int i = 0; i < 2400; i++) {
        size_t p4[4], code = 0;
        nn_rng_permutation(&a, p4, 4);
        for (size_t x = 0; x < 4; x++) { // Lehmer code: the ordering's rank, 0..23
            size_t smaller = 0;
            for (size_t z = x + 1; z < 4; z++)
                smaller += p4[z] < p4[x];
            code = code * (4 - x) + smaller;
        }
        orderings[code]++;
    }
    for (int k = 0; k < 24; k++)
        CHECK_MSG(orderings[k] > 100 - 59 && orderings[k] < 100 + 59, "ordering %d drawn %zu times",
                  k, orderings[k]);
}

static const test_case TESTS[] = {
    TEST(engine_arrays_should_be_aligned_zeroed_and_checked),
    TEST(gemm_should_match_reference_for_all_transposes),
    TEST(gemm_with_beta_zero_should_ignore_nan_in_c),
    TEST(linear_should_match_reference_and_finite_differences),
    TEST(backward_should_accumulate_and_zero_grads_should_reset),
    TEST(finite_difference_check_should_catch_a_wrong_gradient),
    TEST(conv2d_forward_should_match_naive_convolution),
    TEST(conv2d_backward_should_match_finite_differences),
    TEST(conv2d_stats_should_match_ngd_unfold_and_permuted_dy),
    TEST(conv2d_threaded_paths_should_match_naive_forward_and_backward),
    TEST(conv2d_init_should_reject_bad_geometry),
    TEST(fused_and_writing_variants_should_equal_the_plain_layers),
    TEST(batchnorm_backward_should_match_finite_differences),
    TEST(batchnorm_forward_should_match_formulas),
    TEST(conv_bn_relu_block_statistics_should_match_the_two_pass_ones),
    TEST(batchnorm_relu_maxpool_should_equal_bn_relu_then_pool),
    TEST(conv_bn_relu_backward_should_equal_the_plain_layers),
    TEST(conv_bn_relu_with_a_bf16_conv_output_should_equal_the_rounded_f32_path),
    TEST(conv3x3_direct_should_match_float64_and_the_im2col_path),
    TEST(conv_winograd_should_take_full_batches_only_and_be_switchable),
    TEST(conv_use_bf16_out_of_memory_should_leave_an_f32_layer),
    TEST(layernorm_should_match_formula_and_finite_differences),
    TEST(activations_should_match_finite_differences),
    TEST(activation_approximations_should_match_libm),
    TEST(maxpool_should_match_naive_and_finite_differences),
    TEST(maxpool_2x2_should_keep_the_tie_and_nan_rule),
    TEST(average_pools_should_match_finite_differences),
    TEST(dropout_should_scale_kept_units_and_match_finite_differences),
    TEST(residual_backward_should_send_dy_to_both_branches),
    TEST(embeddings_should_match_finite_differences),
    TEST(patch_embedding_should_equal_strided_conv_and_match_finite_differences),
    TEST(attention_should_match_naive_and_finite_differences),
    TEST(attention_heads_on_threads_should_match_one_thread),
    TEST(attention_nonfinite_scores_should_stay_in_their_query),
    TEST(attention_heads_should_match_float64_at_vector_edges),
    TEST(row_sums_on_threads_should_give_the_serial_loops_bits),
    TEST(bf16_producers_should_equal_rounding_the_f32_outputs),
    TEST(cross_entropy_on_threads_should_equal_one_thread),
    TEST(transformer_writing_variants_should_equal_the_adding_ones),
    TEST(cross_entropy_should_match_formula_and_finite_differences),
    TEST(cross_entropy_of_wide_rows_should_match_float64),
    TEST(rng_should_be_reproducible_and_unbiased),
};

int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
