/*
 * test_optim_misc.c — the Conv2d unfold helper against a naive loop
 * (docs/algorithms.md#singd-test-plan item 6: stride, padding, dilation, groups; reduce = mean of
 * the expand patches), per-layer
 * overrides (param groups) equal to separate optimizers (official test_param_groups), a
 * lr_cov schedule callback, plain parameters under AdamW's / SGD's rule beside any method,
 * AdamW and SGD (momentum, Nesterov, weight decay, loss and lr scales) against their rules in
 * float64, and the health readouts (norms of gradient and update, SINGD's factor traces and
 * norms) against float64.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "method.h" // (ngd_unfold_taps)
#include "ngd.h"
#include "ref.h"
#include "tproblem.h"

// naive im2col value for (n, o1, o2, c, k1, k2) with group averaging
static double naive_patch(const ngd_conv_geom *g, const float *x, size_t n, size_t o1, size_t o2,
                          size_t c, size_t k1, size_t k2) {
    long i1 = (long)(o1 * g->s1) - (long)g->p1 + (long)(k1 * g->dil1);
    long i2 = (long)(o2 * g->s2) - (long)g->p2 + (long)(k2 * g->dil2);
    if (i1 < 0 || i2 < 0 || i1 >= (long)g->h || i2 >= (long)g->w) return 0;
    size_t cg = g->c_in / g->groups;
    double s = 0;
    for (size_t gr = 0; gr < g->groups; gr++)
        s += (double)x[((n * g->c_in + gr * cg + c) * g->h + (size_t)i1) * g->w + (size_t)i2];
    return s / (double)g->groups;
}

static void unfold_should_match_a_naive_loop(void) {
    const ngd_conv_geom geoms[] = {
        {3, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1},   // plain 3x3, padding 1
        {4, 9, 8, 3, 2, 2, 3, 1, 0, 1, 2, 2},   // stride, dilation, groups 2, asymmetric kernel
        {6, 6, 5, 2, 2, 1, 1, 2, 2, 2, 1, 3},   // padding 2, dilation 2, groups 3
        {2, 5, 5, 5, 5, 1, 1, 0, 0, 1, 1, 1},   // kernel = image: one location
        {4, 9, 8, 3, 2, 2, 3, 1, 0, 1, 2, 1},   // stride, dilation, one group (the fast path)
        {3, 6, 7, 3, 3, 2, 1, 0, 3, 1, 1, 1},   // padding wider than a row's reach, stride 2
        {8, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1}, // enough work to split over the threads
    };
    ref_rng r = {5};
    for (size_t t = 0; t < sizeof geoms / sizeof geoms[0]; t++) {
        const ngd_conv_geom *g = &geoms[t];
        const size_t N = t == 6 ? 16 : 2, oh = ngd_conv_out_h(g), ow = ngd_conv_out_w(g);
        const size_t cols = g->c_in / g->groups * g->k1 * g->k2;
        CHECK(oh > 0 && ow > 0);
        float *x = malloc(N * g->c_in * g->h * g->w * 4);
        for (size_t i = 0; i < N * g->c_in * g->h * g->w; i++)
            x[i] = (float)ref_uniform(&r, -1, 1);
        float *ex = malloc(N * oh * ow * cols * 4), *red = malloc(N * cols * 4);
        double *want = malloc(N * oh * ow * cols * 8), *wred = calloc(N * cols, 8);
        CHECK(ngd_unfold(g, N, x, false, ex) == NGD_OK);
        CHECK(ngd_unfold(g, N, x, true, red) == NGD_OK);
        for (size_t n = 0; n < N; n++)
            for (size_t o1 = 0; o1 < oh; o1++)
                for (size_t o2 = 0; o2 < ow; o2++)
                    for (size_t c = 0; c < g->c_in / g->groups; c++)
                        for (size_t k1 = 0; k1 < g->k1; k1++)
                            for (size_t k2 = 0; k2 < g->k2; k2++) {
                                size_t col = (c * g->k1 + k1) * g->k2 + k2;
                                double v = naive_patch(g, x, n, o1, o2, c, k1, k2);
                                want[((n * oh + o1) * ow + o2) * cols + col] = v;
                                wred[n * cols + col] += v / (double)(oh * ow);
                            }
        // one group-average and a mean of O(10) terms in float32: 1e-6 is a few ulps
        CHECK_TENSOR(ex, want, N * oh * ow * cols, 0, 1e-6, "unfold expand");
        CHECK_TENSOR(red, wred, N * cols, 0, 1e-6, "unfold reduce");
        free(x), free(ex), free(red), free(want), free(wred);
    }
    ngd_conv_geom bad = geoms[0];
    bad.groups = 2; // 3 channels not divisible by 2
    float dummy[1];
    CHECK(ngd_unfold(&bad, 1, dummy, false, dummy) == NGD_ERR_ARG);
    bad = geoms[0], bad.s1 = 0;
    CHECK(ngd_conv_out_h(&bad) == 0 && ngd_unfold(&bad, 1, dummy, false, dummy) == NGD_ERR_ARG);
    // sizes whose arithmetic wrapped (a padding of SIZE_MAX/2 gave an output size of 1)
    bad = geoms[0], bad.p1 = SIZE_MAX / 2;
    CHECK(ngd_conv_out_h(&bad) == 0 && ngd_unfold(&bad, 1, dummy, false, dummy) == NGD_ERR_ARG);
    bad = geoms[0], bad.dil2 = SIZE_MAX / 2 + 2;
    CHECK(ngd_conv_out_w(&bad) == 0);
    // "0 on an invalid geometry" (ngd.h): groups that do not divide c_in, no groups, no
    // channels, and c_in·h·w that would wrap (c_in 2^62 on 2x2: 0) are invalid for the output
    // sizes too, not only for ngd_unfold
    const ngd_conv_geom g0 = geoms[0];
    CHECK(ngd_conv_out_h(&g0) != 0 && ngd_conv_out_w(&g0) != 0);
    ngd_conv_geom inval[4] = {g0, g0, g0, g0};
    inval[0].groups = 2, inval[1].groups = 0, inval[2].c_in = 0;
    inval[3].c_in = inval[3].groups = (size_t)1 << 62, inval[3].h = inval[3].w = 2;
    inval[3].k1 = inval[3].k2 = 1, inval[3].p1 = inval[3].p2 = 0;
    for (int i = 0; i < 4; i++) {
        CHECK_MSG(ngd_conv_out_h(&inval[i]) == 0 && ngd_conv_out_w(&inval[i]) == 0, "case %d", i);
        CHECK(ngd_unfold(&inval[i], 1, dummy, false, dummy) == NGD_ERR_ARG);
    }
}

// ngd_optim_observe_conv with a geometry whose c_in·h·w wraps to 0 and an x of 0 columns (it
// matched the wrapped size, and the unfolding read past x): refused as an invalid geometry
// before anything is read
static void observe_conv_should_refuse_sizes_that_overflow(void) {
    ngd_config c = ngd_config_default(NGD_METHOD_KFAC);
    ngd_optim *o = NULL;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    float w[1] = {0}, gw[1] = {0}, x[4] = {1, 2, 3, 4}, g[4] = {1, 1, 1, 1};
    ngd_layer L = {"c", w, gw, 1, 1, NULL, NULL, NULL};
    int id = -1;
    CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_OK);
    ngd_conv_geom geo = {(size_t)1 << 62, 2, 2, 1, 1, 1, 1, 0, 0, 1, 1, (size_t)1 << 62};
    const ngd_matrix xm = {x, 1, 0, 0, NGD_F32}, gm = {g, 4, 1, 1, NGD_F32};
    CHECK(ngd_optim_observe_conv(o, id, 1, &geo, xm, gm) == NGD_ERR_ARG);
    CHECK_MSG(strstr(ngd_optim_errmsg(o), "invalid convolution geometry") != NULL, "%s",
              ngd_optim_errmsg(o));
    // a valid geometry whose batch x positions overflows: said so
    ngd_conv_geom g1 = {1, 2, 2, 1, 1, 1, 1, 0, 0, 1, 1, 1};
    const ngd_matrix x1 = {x, SIZE_MAX / 2, 4, 4, NGD_F32};
    CHECK(ngd_optim_observe_conv(o, id, SIZE_MAX / 2, &g1, x1, gm) == NGD_ERR_ARG);
    CHECK_MSG(strstr(ngd_optim_errmsg(o), "overflows") != NULL, "%s", ngd_optim_errmsg(o));
    ngd_optim_free(o);
}

// ngd_optim_observe_conv (rows unfolded as libngd reads them) against ngd_optim_observe of
// ngd_unfold's matrix: the same preconditioned gradients after three statistics steps, for
// every path that reads a convolution's rows (SINGD's dense Gram product in blocks, its
// structured chunks, its bf16 products; K-FAC's Gram product, its emulated-bf16 chunks;
// reduce; B-KFAC's conv factors), geometries with stride, dilation, padding and groups, f32
// and bf16 inputs. Chunked paths take the same rows in the same order: the same bits. Block
// sums (dense Gram products) round otherwise: within 1e-5 (measured: at most 8e-7).
// ‖x − y‖ / ‖x‖ in float64 (infinite for x = 0)
static double rel_diff(const float *x, const float *y, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double u = (double)x[i], v = (double)y[i];
        num += (u - v) * (u - v), den += u * u;
    }
    return den > 0 ? sqrt(num / den) : (double)INFINITY;
}

static uint16_t bf16_rne(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static float bf16_val(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

typedef struct {
    const char *name;
    ngd_method m;
    const char *structure;
    bool bf16_compute, emulate, reduce;
    double tol; // 0: the same bits
} oc_case;

static void oc_run(const oc_case *k, const ngd_conv_geom *geom, size_t N, bool xb16, bool conv,
                   float *P) {
    const size_t oh = ngd_conv_out_h(geom), ow = ngd_conv_out_w(geom), L = oh * ow;
    const size_t cols = geom->c_in / geom->groups * geom->k1 * geom->k2, cout = 6;
    const size_t xs = geom->c_in * geom->h * geom->w;
    ngd_config c = ngd_config_default(k->m);
    c.keep_last_update = true;
    c.T = 1, c.kfac.T_u = 1, c.kfac.T_i = 1, c.lr = 1e-2f, c.damping = 1e-2f;
    c.kfac_approx = k->reduce ? NGD_KFAC_REDUCE : NGD_KFAC_EXPAND;
    if (k->structure) {
        CHECK(ngd_structure_parse(k->structure, &c.structure_K) == NGD_OK);
        c.structure_C = c.structure_K;
    }
    if (k->bf16_compute) {
        c.structure_K.dtype = c.structure_C.dtype = NGD_BF16;
        c.factor_compute = NGD_BF16;
    }
    if (k->emulate) c.kfac.factor_arith = NGD_BF16;
    float *w = calloc(cout * cols, 4), *dw = malloc(cout * cols * 4);
    float *b = calloc(cout, 4), *db = malloc(cout * 4);
    float *x = malloc(N * xs * 4), *a = malloc(N * L * cols * 4), *g = malloc(N * L * cout * 4);
    uint16_t *x16 = malloc(N * xs * 2);
    ngd_optim *o = NULL;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    ngd_layer Ly = {.name = "conv",
                    .weight = w,
                    .weight_grad = dw,
                    .d_out = cout,
                    .d_in = cols,
                    .bias = b,
                    .bias_grad = db};
    int id;
    CHECK(ngd_optim_add_layer(o, &Ly, &id) == NGD_OK);
    ref_rng r = {77};
    for (int s = 0; s < 3; s++) {
        for (size_t i = 0; i < N * xs; i++) {
            x16[i] = bf16_rne((float)ref_uniform(&r, -1, 1));
            x[i] = xb16 ? bf16_val(x16[i]) : (float)ref_uniform(&r, -1, 1);
        }
        for (size_t i = 0; i < N * L * cout; i++)
            g[i] = (float)ref_uniform(&r, -1, 1) / (float)N;
        for (size_t i = 0; i < cout * cols; i++)
            dw[i] = (float)ref_uniform(&r, -1, 1);
        for (size_t i = 0; i < cout; i++)
            db[i] = (float)ref_uniform(&r, -1, 1);
        ngd_matrix gm = ngd_matrix_f32(g, N * L, cout);
        if (conv) {
            ngd_matrix xm = xb16 ? ngd_matrix_bf16(x16, N, xs) : ngd_matrix_f32(x, N, xs);
            CHECK(ngd_optim_observe_conv(o, id, N, geom, xm, gm) == NGD_OK);
        } else {
            CHECK(ngd_unfold(geom, N, x, false, a) == NGD_OK);
            CHECK(ngd_optim_observe(o, id, N, ngd_matrix_f32(a, N * L, cols), gm) == NGD_OK);
        }
        CHECK(ngd_optim_step(o) == NGD_OK);
    }
    CHECK(ngd_optim_last_update(o, id, P, cout * (cols + 1)) == NGD_OK);
    ngd_optim_free(o);
    free(w), free(dw), free(b), free(db), free(x), free(a), free(g), free(x16);
}

static void observe_conv_should_equal_observe_of_the_unfolded_matrix(void) {
    const oc_case cases[] = {
        {"singd dense", NGD_METHOD_SINGD, "dense", false, false, false, 1e-5},
        {"singd diagonal", NGD_METHOD_SINGD, "diagonal", false, false, false, 0},
        {"singd block3", NGD_METHOD_SINGD, "block3diagonal", false, false, false, 0},
        {"singd bf16 compute", NGD_METHOD_SINGD, "dense", true, false, false, 0},
        {"singd reduce", NGD_METHOD_SINGD, "dense", false, false, true, 0},
        {"kfac", NGD_METHOD_KFAC, NULL, false, false, false, 1e-5},
        {"kfac emulated bf16", NGD_METHOD_KFAC, NULL, false, true, false, 0},
        {"kfac reduce", NGD_METHOD_KFAC, NULL, false, false, true, 0},
        {"bkfac", NGD_METHOD_BKFAC, NULL, false, false, false, 1e-5},
    };
    const ngd_conv_geom geoms[] = {
        {4, 9, 8, 3, 2, 2, 3, 1, 0, 1, 2, 2},   // stride, dilation, groups 2, asymmetric kernel
        {3, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1},   // plain 3x3, padding 1: rows cross chunks
        {3, 6, 7, 3, 3, 2, 1, 0, 3, 1, 1, 1},   // padding wider than a row's reach, stride 2
        {2, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1}, // N = 1000: 256000 rows, two Gram blocks (d 19)
        {16, 2, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1},  // 48 rows of d 145, 16 of 36 taps inside: SINGD
                                                // dense's S = X K from the images
        {12, 3, 2, 3, 2, 2, 1, 1, 0, 1, 1, 1},  // stride 2, a 3x2 kernel onto 2x1: the same
    };
    for (size_t gi = 0; gi < sizeof geoms / sizeof geoms[0]; gi++) {
        const ngd_conv_geom *geom = &geoms[gi];
        const size_t N = gi == 3 ? 1000 : 12; // (12: chunks of 256 rows that start mid-row)
        const size_t n = 6 * (geom->c_in / geom->groups * geom->k1 * geom->k2 + 1);
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
            for (int xb16 = 0; xb16 < 2; xb16++) {
                const oc_case *k = &cases[ci];
                if (gi == 3 && k->tol == 0 && !k->bf16_compute) continue; // (the blocks' cases)
                float *p0 = malloc(n * 4), *p1 = malloc(n * 4);
                oc_run(k, geom, N, xb16, false, p0);
                oc_run(k, geom, N, xb16, true, p1);
                const double rel = rel_diff(p0, p1, n);
                // (bf16 images: the convolution's Gram goes through the bf16 kernels, the
                // unfolded f32 matrix's through the f32 syrk, the same products summed in two
                // orders; after three SINGD updates geometry 0 is 1.2e-5 apart, the rest <= 9e-7)
                const double tol = xb16 ? 3 * k->tol : k->tol;
                const bool ok =
                    isfinite(rel) && (tol == 0 ? memcmp(p0, p1, n * 4) == 0 : rel <= tol);
                if (!ok || getenv("OC_SHOW"))
                    fprintf(stderr, "  %s, geometry %zu, %s x: relative difference %.3g\n", k->name,
                            gi, xb16 ? "bf16" : "f32", rel);
                CHECK(ok);
                free(p0), free(p1);
            }
    }
}

// A layer whose output side is wider than its input side (1x1 convolution, d_K = 256 without a
// bias, d_out = 257): its Gram block of 16384 rows x 256 = 2^22 floats must fit the observe
// scratch, which a review found sized for the wider side's blocks (16320 x 257, 64 floats
// fewer: a heap overflow under ASan, an abort without). K-FAC, its P against the plain path.
static void observe_conv_should_fit_a_block_of_the_narrower_side(void) {
    const size_t N = 16, cin = 256, L = 32 * 32, cout = 257, n = cout * cin;
    const ngd_conv_geom geom = {cin, 32, 32, 1, 1, 1, 1, 0, 0, 1, 1, 1};
    float *x = malloc(N * cin * L * 4), *a = malloc(N * L * cin * 4), *g = malloc(N * L * cout * 4);
    float *w = calloc(n, 4), *dw = malloc(n * 4), *P[2] = {malloc(n * 4), malloc(n * 4)};
    ref_rng r = {3};
    for (size_t i = 0; i < N * cin * L; i++)
        x[i] = (float)ref_uniform(&r, -1, 1);
    for (size_t i = 0; i < N * L * cout; i++)
        g[i] = (float)ref_uniform(&r, -1, 1) / (float)N;
    for (size_t i = 0; i < n; i++)
        dw[i] = (float)ref_uniform(&r, -1, 1);
    CHECK(ngd_unfold(&geom, N, x, false, a) == NGD_OK);
    for (int conv = 0; conv < 2; conv++) {
        ngd_config c = ngd_config_default(NGD_METHOD_KFAC);
        c.kfac.T_u = 1, c.kfac.T_i = 1, c.keep_last_update = true;
        ngd_optim *o = NULL;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        ngd_layer Ly = {.name = "c1x1", .weight = w, .weight_grad = dw, .d_out = cout, .d_in = cin};
        int id;
        CHECK(ngd_optim_add_layer(o, &Ly, &id) == NGD_OK);
        const ngd_matrix gm = ngd_matrix_f32(g, N * L, cout);
        CHECK((conv ? ngd_optim_observe_conv(o, id, N, &geom, ngd_matrix_f32(x, N, cin * L), gm)
                    : ngd_optim_observe(o, id, N, ngd_matrix_f32(a, N * L, cin), gm)) == NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
        CHECK(ngd_optim_last_update(o, id, P[conv], n) == NGD_OK);
        ngd_optim_free(o);
        memset(w, 0, n * 4);
    }
    const double rel = rel_diff(P[0], P[1], n);
    CHECK_MSG(rel < 1e-5, "P off by %.3g", rel);
    free(x), free(a), free(g), free(w), free(dw), free(P[0]), free(P[1]);
}

// SINGD's preconditioning from a convolution's images (kfac.factored_apply, dense K and C,
// both products cached): where its rows pay counting only the kernel taps inside the image
// (small images), P = (1/c)(𝒢 C Cᵀ)ᵀ(𝒜 K Kᵀ) with 𝒜 K Kᵀ by ngd_unfold_times, which skips the
// padding's zeros. Against the same run from the gradient (J = Σ_r g_r [a_r, 1]ᵀ of ngd_unfold's
// rows, a convolution's weight gradient, in float64): every step's P within float32 rounding,
// over 7 steps with factor updates every 3; the layer wants its statistics every step. Where
// the rows do not pay (8x8 images) it wants them on update steps only, as without the option.
typedef struct {
    ngd_conv_geom g;
    bool bias, pays;
} cr_case;

static void conv_rows_run(const cr_case *k, bool fact, size_t steps, float *Ps, double *moved) {
    const ngd_conv_geom *geom = &k->g;
    const size_t N = 4, cout = 16, L = ngd_conv_out_h(geom) * ngd_conv_out_w(geom);
    const size_t cols = geom->c_in * geom->k1 * geom->k2, dK = cols + k->bias;
    const size_t xs = geom->c_in * geom->h * geom->w, n = N * L;
    ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
    CHECK(ngd_structure_parse("dense", &c.structure_K) == NGD_OK);
    CHECK(ngd_structure_parse("dense", &c.structure_C) == NGD_OK);
    c.T = 3, c.lr = 0.05f, c.lr_cov = 0.05f, c.damping = 1e-2f, c.keep_last_update = true;
    c.kfac.factored_apply = fact;
    float *w = calloc(cout * cols, 4), *dw = malloc(cout * cols * 4);
    float *b = calloc(cout, 4), *db = malloc(cout * 4);
    float *x = malloc(N * xs * 4), *a = malloc(n * cols * 4), *g = malloc(n * cout * 4);
    ngd_optim *o = NULL;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    ngd_layer Ly = {.name = "conv", .weight = w, .weight_grad = dw, .d_out = cout, .d_in = cols};
    if (k->bias) Ly.bias = b, Ly.bias_grad = db;
    int id;
    CHECK(ngd_optim_add_layer(o, &Ly, &id) == NGD_OK);
    ref_rng r = {91};
    for (size_t t = 0; t < steps; t++) {
        for (size_t i = 0; i < N * xs; i++)
            x[i] = (float)ref_uniform(&r, -1, 1);
        for (size_t i = 0; i < n * cout; i++)
            g[i] = (float)ref_uniform(&r, -1, 1) / (float)N;
        CHECK(ngd_unfold(geom, N, x, false, a) == NGD_OK);
        for (size_t i = 0; i < cout; i++) { // J = Σ_r g_r [a_r, 1]ᵀ
            for (size_t j = 0; j < cols; j++) {
                double sum = 0;
                for (size_t q = 0; q < n; q++)
                    sum += (double)g[q * cout + i] * (double)a[q * cols + j];
                dw[i * cols + j] = (float)sum;
            }
            double sb = 0;
            for (size_t q = 0; q < n; q++)
                sb += (double)g[q * cout + i];
            db[i] = (float)sb;
        }
        const bool wants = ngd_optim_layer_wants_stats(o, id);
        CHECK_MSG(wants == (t % 3 == 0 || (fact && (t == 0 || k->pays))),
                  "step %zu (factored %d, pays %d): wants statistics %d", t, fact, k->pays, wants);
        if (wants)
            CHECK(ngd_optim_observe_conv(o, id, N, geom, ngd_matrix_f32(x, N, xs),
                                         ngd_matrix_f32(g, n, cout)) == NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
        float *P = Ps + t * cout * dK;
        CHECK(ngd_optim_last_update(o, id, P, cout * dK) == NGD_OK);
        if (moved) { // against the gradient itself (the preconditioner is not the identity)
            float *J = malloc(cout * dK * 4);
            for (size_t i = 0; i < cout; i++) {
                memcpy(J + i * dK, dw + i * cols, cols * 4);
                if (k->bias) J[i * dK + cols] = db[i];
            }
            *moved = fmax(*moved, rel_diff(J, P, cout * dK));
            free(J);
        }
    }
    ngd_optim_free(o);
    free(w), free(dw), free(b), free(db), free(x), free(a), free(g);
}

static void singd_from_conv_images_should_equal_the_gradient_path(void) {
    const cr_case cases[] = {
        {{8, 2, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1}, true, true},  // 2x2, padding 1: 16 of 36 taps
        {{8, 2, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1}, false, true}, // the same without a bias
        {{8, 3, 3, 3, 3, 2, 2, 1, 1, 1, 1, 1}, true, true},  // stride 2 onto 2x2
        {{8, 2, 2, 3, 3, 1, 1, 2, 2, 2, 2, 1}, true, true},  // dilation 2, padding 2: 4 taps
        {{8, 2, 3, 3, 2, 1, 1, 1, 0, 1, 1, 1}, true, true},  // 2x3, a 3x2 kernel
        {{8, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1}, true, false}, // 8x8: the gradient
    };
    const size_t steps = 7;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const cr_case *k = &cases[ci];
        const size_t np = 16 * (k->g.c_in * k->g.k1 * k->g.k2 + k->bias) * steps;
        float *P0 = malloc(np * 4), *P1 = malloc(np * 4);
        double moved = 0;
        conv_rows_run(k, false, steps, P0, &moved);
        conv_rows_run(k, true, steps, P1, NULL);
        const double rel = rel_diff(P0, P1, np);
        CHECK_MSG(rel < 1e-5, "case %zu: P from the images vs from the gradient: rel %.3g", ci,
                  rel);
        CHECK_MSG(moved > 1e-2, "case %zu: P stayed the gradient (rel %.3g)", ci, moved);
        if (getenv("OC_SHOW"))
            fprintf(stderr, "  case %zu: rel %.3g, moved %.3g\n", ci, rel, moved);
        free(P0), free(P1);
    }
    // ngd_unfold_times' tap count: 16 of 36 on a 2x2 image with padding 1, all 9 per position
    // without padding
    const ngd_conv_geom g22 = cases[0].g, g8 = {2, 8, 8, 3, 3, 1, 1, 0, 0, 1, 1, 1};
    CHECK(ngd_unfold_taps(&g22) == 16 && ngd_unfold_taps(&g8) == 36 * 9);
}

// The errors of ngd_optim_observe_conv, each naming what is wrong; the public observe refuses
// the internal dtype that carries its rows
static void observe_conv_should_refuse_bad_input(void) {
    ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
    float w[4 * 28] = {0}, dw[4 * 28] = {0}, x[2 * 3 * 25] = {0}, gbuf[2 * 25 * 4] = {0};
    ngd_optim *o = NULL;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    ngd_layer Ly = {.name = "conv", .weight = w, .weight_grad = dw, .d_out = 4, .d_in = 27};
    int id;
    CHECK(ngd_optim_add_layer(o, &Ly, &id) == NGD_OK);
    ngd_conv_geom geom = {3, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1}; // 25 locations, 27 columns
    ngd_matrix xm = ngd_matrix_f32(x, 2, 75), gm = ngd_matrix_f32(gbuf, 50, 4);
    CHECK(ngd_optim_observe_conv(o, id, 2, &geom, xm, gm) == NGD_OK);
    CHECK(ngd_optim_observe_conv(o, 9, 2, &geom, xm, gm) == NGD_ERR_LAYER);
    CHECK(ngd_optim_observe_conv(o, id, 2, NULL, xm, gm) == NGD_ERR_ARG &&
          strstr(ngd_optim_errmsg(o), "geometry"));
    ngd_conv_geom bad = geom;
    bad.groups = 2;
    CHECK(ngd_optim_observe_conv(o, id, 2, &bad, xm, gm) == NGD_ERR_ARG &&
          strstr(ngd_optim_errmsg(o), "invalid convolution geometry"));
    bad = geom, bad.k1 = 9; // larger than the padded image
    CHECK(ngd_optim_observe_conv(o, id, 2, &bad, xm, gm) == NGD_ERR_ARG);
    CHECK(ngd_optim_observe_conv(o, id, 2, &geom, ngd_matrix_f32(x, 2, 74), gm) == NGD_ERR_SHAPE &&
          strstr(ngd_optim_errmsg(o), "c_in*h*w = 75"));
    CHECK(ngd_optim_observe_conv(o, id, 3, &geom, xm, gm) == NGD_ERR_SHAPE);
    CHECK(ngd_optim_observe_conv(o, id, 2, &geom, ngd_matrix_f32(NULL, 2, 75), gm) == NGD_ERR_ARG);
    bad = geom, bad.k2 = 2; // 18 columns, the layer has 27
    CHECK(ngd_optim_observe_conv(o, id, 2, &bad, xm, ngd_matrix_f32(gbuf, 2 * 3 * 4, 4)) ==
              NGD_ERR_SHAPE &&
          strstr(ngd_optim_errmsg(o), "(c_in/groups)*k1*k2 = 18, the layer's d_in is 27"));
    CHECK(ngd_optim_observe_conv(o, id, 2, &geom, xm, ngd_matrix_f32(gbuf, 48, 4)) ==
              NGD_ERR_SHAPE &&
          strstr(ngd_optim_errmsg(o), "g has 48 rows, expected batch*oh*ow = 2*5*5 = 50"));
    ngd_matrix inner = {&geom, 50, 27, 27, (ngd_dtype)0x55};
    CHECK(ngd_optim_observe(o, id, 2, inner, gm) == NGD_ERR_ARG &&
          strstr(ngd_optim_errmsg(o), "unknown dtype"));
    ngd_optim_free(o);
}

// #singd-test-plan item 7 (test_param_groups): one optimizer with two groups (per-layer overrides)
// equals two separate optimizers, bit for bit.
static void overrides_should_equal_separate_optimizers(void) {
    ngd_config g1 = ngd_config_default(NGD_METHOD_SINGD);
    ngd_structure_parse("diagonal", &g1.structure_K);
    ngd_structure_parse("diagonal", &g1.structure_C);
    g1.T = 1, g1.lr = 1e-3f, g1.damping = 1e-2f, g1.momentum = 0.5f, g1.weight_decay = 5e-2f;
    g1.lr_cov = 5e-2f, g1.alpha1 = 0.2f;
    ngd_config g2 = ngd_config_default(NGD_METHOD_SINGD);
    g2.T = 3, g2.lr = 2e-2f;
    tp_problem a, b;
    tp_init(&a, 12, 6, 5, 4, 77);
    tp_init(&b, 12, 6, 5, 4, 77);
    // one optimizer, two groups
    ngd_optim *o;
    CHECK(ngd_optim_create(&g2, &o) == NGD_OK);
    ngd_layer l1 = {.name = "fc1",
                    .weight = a.W1,
                    .weight_grad = a.gW1,
                    .d_out = 5,
                    .d_in = 6,
                    .bias = a.b1,
                    .bias_grad = a.gb1,
                    .override = &g1};
    ngd_layer l2 = {.name = "fc2",
                    .weight = a.W2,
                    .weight_grad = a.gW2,
                    .d_out = 4,
                    .d_in = 5,
                    .bias = a.b2,
                    .bias_grad = a.gb2};
    CHECK(ngd_optim_add_layer(o, &l1, &a.id1) == NGD_OK);
    CHECK(ngd_optim_add_layer(o, &l2, &a.id2) == NGD_OK);
    // two optimizers
    ngd_optim *o1, *o2;
    CHECK(ngd_optim_create(&g1, &o1) == NGD_OK && ngd_optim_create(&g2, &o2) == NGD_OK);
    ngd_layer m1 = {.name = "fc1",
                    .weight = b.W1,
                    .weight_grad = b.gW1,
                    .d_out = 5,
                    .d_in = 6,
                    .bias = b.b1,
                    .bias_grad = b.gb1};
    ngd_layer m2 = {.name = "fc2",
                    .weight = b.W2,
                    .weight_grad = b.gW2,
                    .d_out = 4,
                    .d_in = 5,
                    .bias = b.b2,
                    .bias_grad = b.gb2};
    CHECK(ngd_optim_add_layer(o1, &m1, &b.id1) == NGD_OK);
    CHECK(ngd_optim_add_layer(o2, &m2, &b.id2) == NGD_OK);
    for (size_t s = 0; s < 20; s++) {
        tp_forward_backward(&a, o, s, 1.0f);
        CHECK(ngd_optim_step(o) == NGD_OK);
        tp_forward_backward(&b, NULL, s, 1.0f);
        if (ngd_optim_wants_stats(o1))
            ngd_optim_observe(o1, b.id1, 12, ngd_matrix_f32(b.x, 12, 6),
                              ngd_matrix_f32(b.dh, 12, 5));
        if (ngd_optim_wants_stats(o2))
            ngd_optim_observe(o2, b.id2, 12, ngd_matrix_f32(b.h, 12, 5),
                              ngd_matrix_f32(b.dy, 12, 4));
        CHECK(ngd_optim_step(o1) == NGD_OK && ngd_optim_step(o2) == NGD_OK);
    }
    CHECK(memcmp(a.W1, b.W1, 30 * 4) == 0 && memcmp(a.W2, b.W2, 20 * 4) == 0);
    CHECK(memcmp(a.b1, b.b1, 5 * 4) == 0 && memcmp(a.b2, b.b2, 4 * 4) == 0);
    CHECK(ngd_optim_layer_wants_stats(o, a.id1) && !ngd_optim_layer_wants_stats(o, a.id2));
    ngd_optim_free(o), ngd_optim_free(o1), ngd_optim_free(o2);
    tp_free(&a), tp_free(&b);
}

static float sched_calls;
static float lr_cov_schedule(size_t step, void *user) {
    sched_calls += 1.0f;
    return step < 2 ? 0.0f : *(const float *)user; // frozen for two steps, then β1
}

static void lr_cov_schedule_should_drive_the_factor_step(void) {
    float beta = 0.1f;
    ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
    c.T = 1, c.lr_cov_fn = lr_cov_schedule, c.lr_cov_user = &beta;
    tp_problem p;
    tp_init(&p, 8, 4, 3, 2, 9);
    ngd_optim *o;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK && tp_register(&p, o) == NGD_OK);
    float K[25], I[25] = {0};
    for (int i = 0; i < 5; i++)
        I[i * 6] = 1.0f;
    for (size_t s = 0; s < 2; s++)
        CHECK(tp_step(&p, o, s) == NGD_OK);
    CHECK(ngd_optim_factor_dense(o, p.id1, 'K', K, 5) == NGD_OK);
    CHECK_TENSOR(K, I, 25, 0, 0, "K frozen while lr_cov(t) = 0");
    CHECK(tp_step(&p, o, 2) == NGD_OK);
    ngd_layer_health h;
    CHECK(ngd_optim_layer_health(o, p.id1, &h) == NGD_OK);
    CHECK(h.beta1_K == beta);
    CHECK(ngd_optim_factor_dense(o, p.id1, 'K', K, 5) == NGD_OK);
    CHECK(memcmp(K, I, sizeof K) != 0);
    CHECK(sched_calls == 6.0f); // once per layer per update step
    // a schedule's NaN (or negative) fails the step before anything changes; the step can
    // then be retried
    float W1[12], K2[25];
    memcpy(W1, p.W1, sizeof W1);
    CHECK(ngd_optim_factor_dense(o, p.id1, 'K', K, 5) == NGD_OK);
    for (int bad = 0; bad < 2; bad++) {
        beta = bad ? -0.5f : NAN;
        tp_forward_backward(&p, o, 3, 1.0f);
        CHECK(ngd_optim_step(o) == NGD_ERR_ARG);
        CHECK(strstr(ngd_optim_errmsg(o), "lr_cov_fn returned") != NULL);
        CHECK(ngd_optim_steps(o) == 3 && memcmp(W1, p.W1, sizeof W1) == 0);
        CHECK(ngd_optim_factor_dense(o, p.id1, 'K', K2, 5) == NGD_OK);
        CHECK(memcmp(K, K2, sizeof K) == 0);
    }
    beta = 0.1f;
    CHECK(ngd_optim_step(o) == NGD_OK && ngd_optim_steps(o) == 4);
    CHECK(memcmp(W1, p.W1, sizeof W1) != 0);
    ngd_optim_free(o);
    tp_free(&p);
}

// IKFAC forces alpha1 = 0 as the official code does, and says so through the config's own
// log_fn, for the optimizer's config as for a layer's override
static char logged[512];
static void log_to_buffer(void *user, const char *msg) {
    (void)user;
    snprintf(logged, sizeof logged, "%s", msg);
}
static void kfac_like_alpha1_should_be_logged(void) {
    ngd_config c = ngd_config_default(NGD_METHOD_IKFAC);
    c.alpha1 = 0.3f, c.log_fn = log_to_buffer;
    logged[0] = '\0';
    ngd_optim *o;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    CHECK(strstr(logged, "config: kfac_like forces alpha1 = 0 (was 0.3)") != NULL);
    ngd_optim_free(o);
}

// Non-finite statistics with finite gradients (an Inf in a layer's input): SINGD refuses that
// factor update, counts it in decomp_failures and keeps K and C, so the step's update stays
// finite; the next clean statistics update the factors again. f32 dense and diagonal
// factors, and bf16 compute; with factored_apply, the step's non-finite rows are not used
// either (Ĝ is).
static void singd_should_refuse_non_finite_statistics(void) {
    for (int v = 0; v < 5; v++) {
        ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
        c.T = 1, c.lr = 0.1f;
        if (v == 1) ngd_structure_parse("diagonal", &c.structure_K);
        if (v == 2 || v == 4) {
            c.structure_K.dtype = c.structure_C.dtype = NGD_BF16;
            c.factor_compute = NGD_BF16;
        }
        if (v >= 3) c.kfac.factored_apply = true; // the step's rows (f32, bf16) are not used
        float W[4 * 6], dW[4 * 6], b[4] = {0}, db[4], a[3 * 6], g[3 * 4];
        for (int i = 0; i < 24; i++)
            W[i] = 0.05f * (float)(i % 7) - 0.1f, dW[i] = 0.01f * (float)(i % 5) - 0.02f;
        for (int i = 0; i < 4; i++)
            db[i] = 0.01f * (float)i;
        for (int i = 0; i < 18; i++)
            a[i] = 0.1f * (float)(i % 4) - 0.1f;
        for (int i = 0; i < 12; i++)
            g[i] = 0.2f * (float)(i % 3) - 0.2f;
        ngd_optim *o;
        int id;
        ngd_layer L = {.name = "fc",
                       .weight = W,
                       .weight_grad = dW,
                       .d_out = 4,
                       .d_in = 6,
                       .bias = b,
                       .bias_grad = db};
        CHECK(ngd_optim_create(&c, &o) == NGD_OK && ngd_optim_add_layer(o, &L, &id) == NGD_OK);
        float K0[49], K1[49], C0[16], C1[16];
        CHECK(ngd_optim_factor_dense(o, id, 'K', K0, 7) == NGD_OK);
        CHECK(ngd_optim_factor_dense(o, id, 'C', C0, 4) == NGD_OK);
        a[5] = INFINITY;
        CHECK(ngd_optim_observe(o, id, 3, ngd_matrix_f32(a, 3, 6), ngd_matrix_f32(g, 3, 4)) ==
              NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
        ngd_layer_health h;
        CHECK(ngd_optim_layer_health(o, id, &h) == NGD_OK);
        CHECK(h.decomp_failures == 1 && h.skips == 0);
        CHECK(ngd_optim_factor_dense(o, id, 'K', K1, 7) == NGD_OK);
        CHECK(ngd_optim_factor_dense(o, id, 'C', C1, 4) == NGD_OK);
        CHECK(memcmp(K0, K1, sizeof K0) == 0 && memcmp(C0, C1, sizeof C0) == 0);
        bool finite = true;
        for (int i = 0; i < 24; i++)
            finite = finite && isfinite(W[i]);
        CHECK(finite && isfinite(b[0]));
        a[5] = 0.3f;
        CHECK(ngd_optim_observe(o, id, 3, ngd_matrix_f32(a, 3, 6), ngd_matrix_f32(g, 3, 4)) ==
              NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
        CHECK(ngd_optim_layer_health(o, id, &h) == NGD_OK);
        CHECK(h.decomp_failures == 1 && h.updates == 1);
        CHECK(ngd_optim_factor_dense(o, id, 'K', K1, 7) == NGD_OK);
        CHECK(memcmp(K0, K1, sizeof K0) != 0);
        for (int i = 0; i < 24; i++)
            finite = finite && isfinite(W[i]);
        CHECK(finite);
        ngd_optim_free(o);
    }
}

// A plain parameter given AdamW's (or SGD's) rule by its override, under any method, takes
// exactly the steps a plain AdamW (SGD) optimizer takes, keeps them across a save/load, and
// a layer cannot take such an override.
static void params_should_take_adamw_or_sgd_under_any_method(void) {
    const ngd_method methods[] = {NGD_METHOD_SINGD, NGD_METHOD_KFAC, NGD_METHOD_BKFAC,
                                  NGD_METHOD_SGD, NGD_METHOD_ADAMW};
    enum { N = 7, STEPS = 6 };
    for (size_t mi = 0; mi < sizeof methods / sizeof *methods; mi++) {
        for (int rule = 0; rule < 2; rule++) {
            const ngd_method rm = rule ? NGD_METHOD_ADAMW : NGD_METHOD_SGD;
            ngd_config ov = ngd_config_default(rm);
            ov.lr = 0.05f, ov.weight_decay = 0.1f, ov.momentum = 0.7f, ov.beta2 = 0.99f;
            ngd_config main = ngd_config_default(methods[mi]);
            ngd_optim *o, *ref;
            CHECK(ngd_optim_create(&main, &o) == NGD_OK && ngd_optim_create(&ov, &ref) == NGD_OK);
            float p[N], q[N], g[N];
            for (int i = 0; i < N; i++)
                p[i] = q[i] = 0.3f * (float)i - 1.0f;
            int id, idr;
            CHECK(ngd_optim_add_param(o, "p", p, g, N, &ov, &id) == NGD_OK);
            CHECK(ngd_optim_add_param(ref, "p", q, g, N, NULL, &idr) == NGD_OK);
            for (int s = 0; s < STEPS; s++) {
                for (int i = 0; i < N; i++)
                    g[i] = sinf(1.3f * (float)(i + 3 * s)) + 0.2f * p[i];
                CHECK(ngd_optim_step(o) == NGD_OK && ngd_optim_step(ref) == NGD_OK);
            }
            CHECK_MSG(memcmp(p, q, sizeof p) == 0, "%s param with %s's rule",
                      ngd_method_name(methods[mi]), ngd_method_name(rm));
            CHECK(fabsf(p[0] + 1.0f) > 1e-3f); // it did move
            ngd_optim_free(o), ngd_optim_free(ref);
        }
    }
    // replay from a checkpoint: SINGD with an AdamW parameter, save after 3 steps
    {
        ngd_config main = ngd_config_default(NGD_METHOD_SINGD);
        ngd_config ov = ngd_config_default(NGD_METHOD_ADAMW);
        float p[N], r[N], g[N];
        for (int i = 0; i < N; i++)
            p[i] = 0.1f * (float)i;
        ngd_optim *o, *o2;
        int id, id2;
        CHECK(ngd_optim_create(&main, &o) == NGD_OK && ngd_optim_create(&main, &o2) == NGD_OK);
        CHECK(ngd_optim_add_param(o, "p", p, g, N, &ov, &id) == NGD_OK);
        CHECK(ngd_optim_add_param(o2, "p", r, g, N, &ov, &id2) == NGD_OK);
        void *buf = NULL;
        size_t len = 0;
        for (int s = 0; s < STEPS; s++) {
            if (s == 3) {
                CHECK(ngd_optim_save_mem(o, &buf, &len) == NGD_OK);
                CHECK(ngd_optim_load_mem(o2, buf, len) == NGD_OK);
                memcpy(r, p, sizeof r);
            }
            for (int i = 0; i < N; i++)
                g[i] = cosf(0.7f * (float)(i * s + 1));
            CHECK(ngd_optim_step(o) == NGD_OK);
            if (s >= 3) CHECK(ngd_optim_step(o2) == NGD_OK);
        }
        CHECK(memcmp(p, r, sizeof p) == 0);
        // a checkpoint whose parameter had SGD's rule (no second moment) does not load
        ngd_config sgd = ngd_config_default(NGD_METHOD_SGD);
        sgd.momentum = 0.9f;
        ngd_optim *o3;
        int id3;
        CHECK(ngd_optim_create(&main, &o3) == NGD_OK);
        CHECK(ngd_optim_add_param(o3, "p", r, g, N, &sgd, &id3) == NGD_OK);
        CHECK(ngd_optim_load_mem(o3, buf, len) != NGD_OK);
        free(buf);
        ngd_optim_free(o), ngd_optim_free(o2), ngd_optim_free(o3);
    }
    // a layer keeps the optimizer's method; a parameter cannot take a second-order one
    ngd_config main = ngd_config_default(NGD_METHOD_SINGD);
    ngd_config adam = ngd_config_default(NGD_METHOD_ADAMW);
    ngd_config kfac = ngd_config_default(NGD_METHOD_KFAC);
    ngd_optim *o;
    CHECK(ngd_optim_create(&main, &o) == NGD_OK);
    float W[6], gW[6], p[3], gp[3];
    ngd_layer l = {
        .name = "fc", .weight = W, .weight_grad = gW, .d_out = 2, .d_in = 3, .override = &adam};
    int id;
    CHECK(ngd_optim_add_layer(o, &l, &id) == NGD_ERR_ARG);
    CHECK(strstr(ngd_optim_errmsg(o), "adamw") != NULL);
    CHECK(ngd_optim_add_param(o, "p", p, gp, 3, &kfac, &id) == NGD_ERR_ARG);
    ngd_optim_free(o);
}

// The health's norms against f64: grad_norm = ‖[∇W | ∇b]‖ / s and update_norm = ‖P‖ of the
// last step, for SINGD (diagonal: the fused path that skips the gather; dense: the generic
// one), AdamW and K-FAC, under a loss scale s = 4.
static double norm_f64(const float *a, size_t na, const float *b, size_t nb, double s) {
    double t = 0;
    for (size_t i = 0; i < na; i++)
        t += (double)a[i] * (double)a[i];
    for (size_t i = 0; i < nb; i++)
        t += (double)b[i] * (double)b[i];
    return sqrt(t) / s;
}

static void health_norms_should_match_f64(void) {
    const char *structs[] = {"diagonal", "dense", NULL, NULL};
    const ngd_method methods[] = {NGD_METHOD_SINGD, NGD_METHOD_SINGD, NGD_METHOD_ADAMW,
                                  NGD_METHOD_KFAC};
    for (size_t k = 0; k < 4; k++) {
        ngd_config c = ngd_config_default(methods[k]);
        if (structs[k]) {
            ngd_structure_parse(structs[k], &c.structure_K);
            ngd_structure_parse(structs[k], &c.structure_C);
            c.T = 1;
        }
        c.keep_last_update = true;
        c.init_grad_scale = 4.0f;
        tp_problem p;
        tp_init(&p, 10, 6, 5, 3, 41 + k);
        ngd_optim *o;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK && tp_register(&p, o) == NGD_OK);
        for (size_t s = 0; s < 3; s++) {
            tp_forward_backward(&p, o, s, 4.0f);
            CHECK(ngd_optim_set_grad_scale(o, 4.0f) == NGD_OK);
            // the gradients as the step sees them (the step may not change them)
            const double g1 = norm_f64(p.gW1, 30, p.gb1, 5, 4.0),
                         g2 = norm_f64(p.gW2, 15, p.gb2, 3, 4.0);
            CHECK(ngd_optim_step(o) == NGD_OK);
            ngd_layer_health h1, h2;
            CHECK(ngd_optim_layer_health(o, p.id1, &h1) == NGD_OK);
            CHECK(ngd_optim_layer_health(o, p.id2, &h2) == NGD_OK);
            CHECK_MSG(fabs((double)h1.grad_norm - g1) <= 1e-5 * g1 &&
                          fabs((double)h2.grad_norm - g2) <= 1e-5 * g2,
                      "case %zu step %zu: grad norms %g %g, want %g %g", k, s, (double)h1.grad_norm,
                      (double)h2.grad_norm, g1, g2);
            float P1[35], P2[18];
            CHECK(ngd_optim_last_update(o, p.id1, P1, 35) == NGD_OK);
            CHECK(ngd_optim_last_update(o, p.id2, P2, 18) == NGD_OK);
            double u1 = norm_f64(P1, 35, NULL, 0, 1.0), u2 = norm_f64(P2, 18, NULL, 0, 1.0);
            if (methods[k] == NGD_METHOD_KFAC) { // the RMS clip: ‖νP‖ ≤ κ·sqrt(n)
                const double kappa = (double)c.kfac.clip_kappa;
                u1 = fmin(u1, kappa * sqrt(35.0)), u2 = fmin(u2, kappa * sqrt(18.0));
            }
            CHECK_MSG(u1 > 0 && fabs((double)h1.update_norm - u1) <= 1e-5 * u1 &&
                          fabs((double)h2.update_norm - u2) <= 1e-5 * u2,
                      "case %zu step %zu: update norms %g %g, want %g %g", k, s,
                      (double)h1.update_norm, (double)h2.update_norm, u1, u2);
        }
        ngd_optim_free(o);
        tp_free(&p);
    }
}

// SGD and AdamW at loss scale 1 read the gradients in place, and their update norm (‖P‖ =
// ‖Ĝ‖) is taken from the step's first pass over the gradients, not summed again.
static void first_order_update_norms_should_be_the_gradient_norms(void) {
    const ngd_method methods[] = {NGD_METHOD_SGD, NGD_METHOD_ADAMW};
    for (size_t k = 0; k < 2; k++) {
        ngd_config c = ngd_config_default(methods[k]);
        tp_problem p;
        tp_init(&p, 10, 6, 5, 3, 51 + k);
        ngd_optim *o;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK && tp_register(&p, o) == NGD_OK);
        for (size_t s = 0; s < 2; s++) {
            tp_forward_backward(&p, o, s, 1.0f);
            const double g1 = norm_f64(p.gW1, 30, p.gb1, 5, 1.0),
                         g2 = norm_f64(p.gW2, 15, p.gb2, 3, 1.0);
            CHECK(ngd_optim_step(o) == NGD_OK);
            ngd_layer_health h1, h2;
            CHECK(ngd_optim_layer_health(o, p.id1, &h1) == NGD_OK);
            CHECK(ngd_optim_layer_health(o, p.id2, &h2) == NGD_OK);
            CHECK_MSG(g1 > 0 && fabs((double)h1.update_norm - g1) <= 1e-6 * g1 &&
                          fabs((double)h2.update_norm - g2) <= 1e-6 * g2 &&
                          h1.update_norm == h1.grad_norm && h2.update_norm == h2.grad_norm,
                      "method %zu step %zu: update norms %g %g, want %g %g", k, s,
                      (double)h1.update_norm, (double)h2.update_norm, g1, g2);
        }
        ngd_optim_free(o);
        tp_free(&p);
    }
}

// SINGD's dense factors keep K Kᵀ and C Cᵀ between preconditioner updates. Loading a
// checkpoint into a live optimizer whose cache was formed from other factors must not use
// that cache: B (trained on other data, its cache formed) loads A's checkpoint and both go
// on bit-identically; and the cached path equals the 4-product path of a structure that is
// dense in value but not in kind (one 12-wide block) up to float32 rounding.
static void singd_cached_products_should_follow_loads_and_match_the_plain_path(void) {
    ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
    c.T = 2, c.lr = 0.05f, c.damping = 0.05f, c.keep_last_update = true;
    ngd_optim *a, *b;
    tp_problem pa, pb;
    tp_init(&pa, 8, 11, 12, 5, 1), tp_init(&pb, 8, 11, 12, 5, 1);
    pb.seed = 99; // other data: other factors, another cache
    CHECK(ngd_optim_create(&c, &a) == NGD_OK && ngd_optim_create(&c, &b) == NGD_OK);
    CHECK(tp_register(&pa, a) == NGD_OK && tp_register(&pb, b) == NGD_OK);
    for (size_t t = 0; t < 5; t++) {
        CHECK(tp_step(&pa, a, t) == NGD_OK);
        CHECK(tp_step(&pb, b, t) == NGD_OK);
    }
    CHECK(ngd_optim_workspace_bytes(a) > 0);
    void *buf;
    size_t len;
    CHECK(ngd_optim_save_mem(a, &buf, &len) == NGD_OK);
    CHECK(ngd_optim_load_mem(b, buf, len) == NGD_OK);
    free(buf);
    // the same parameters and data from here on (T = 2: step 5 uses the loaded factors'
    // products before the next update forms new ones)
    memcpy(pb.W1, pa.W1, 12 * 11 * sizeof(float)), memcpy(pb.b1, pa.b1, 12 * sizeof(float));
    memcpy(pb.W2, pa.W2, 5 * 12 * sizeof(float)), memcpy(pb.b2, pa.b2, 5 * sizeof(float));
    pb.seed = pa.seed;
    for (size_t t = 5; t < 8; t++) {
        CHECK(tp_step(&pa, a, t) == NGD_OK);
        CHECK(tp_step(&pb, b, t) == NGD_OK);
        CHECK(memcmp(pa.W1, pb.W1, 12 * 11 * sizeof(float)) == 0);
        CHECK(memcmp(pa.W2, pb.W2, 5 * 12 * sizeof(float)) == 0);
    }
    ngd_optim_free(b), tp_free(&pb);
    // the plain path: one block wider than every factor is dense in value, not in kind
    ngd_config c2 = c;
    CHECK(ngd_structure_parse("block64diagonal", &c2.structure_K) == NGD_OK);
    c2.structure_C = c2.structure_K;
    ngd_optim *p2;
    tp_problem pp;
    tp_init(&pp, 8, 11, 12, 5, 1);
    CHECK(ngd_optim_create(&c2, &p2) == NGD_OK && tp_register(&pp, p2) == NGD_OK);
    ngd_optim *d2;
    tp_problem pd;
    tp_init(&pd, 8, 11, 12, 5, 1);
    CHECK(ngd_optim_create(&c, &d2) == NGD_OK && tp_register(&pd, d2) == NGD_OK);
    float u1[12 * 12], u2[12 * 12];
    double worst = 0;
    for (size_t t = 0; t < 7; t++) {
        CHECK(tp_step(&pp, p2, t) == NGD_OK && tp_step(&pd, d2, t) == NGD_OK);
        CHECK(ngd_optim_last_update(p2, pp.id1, u1, 12 * 12) == NGD_OK);
        CHECK(ngd_optim_last_update(d2, pd.id1, u2, 12 * 12) == NGD_OK);
        worst = fmax(worst, rel_diff(u1, u2, 12 * 12));
    }
    CHECK(worst > 0 && worst < 1e-5); // other rounding, the same preconditioner
    ngd_optim_free(p2), tp_free(&pp);
    ngd_optim_free(d2), tp_free(&pd);
    ngd_optim_free(a), tp_free(&pa);
}

// Dense factors wider than 1024 take their d x d products by row panels (singd.c
// panel_rows: the update's L·m_new, the observe's Kᵀ (X Xᵀ) K, bf16 compute's too): P
// against the plain path, one block as wide as the factor (block-diagonal, dense in value,
// not in kind), with 1200 rows (the Gram product) on a 1100 -> 1030 layer: two panels a side;
// and with 192 rows (chunks: S = Kᵀ X, S Sᵀ; in bf16 compute by ngd_syrk_bf16_lower) on a
// 2100 -> 16 layer, whose K bf16 compute updates by panels of update_rows (two of 1051 rows). bf16
// compute against the f32 panels: within bf16's rounding.
static void singd_run_wide(const char *structure, bool bf16, size_t di, size_t dout, size_t nb,
                           float *P) {
    ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
    c.T = 1, c.lr = 1e-2f, c.damping = 1e-2f, c.keep_last_update = true, c.lr_cov = 0.1f;
    CHECK(ngd_structure_parse(structure, &c.structure_K) == NGD_OK);
    c.structure_C = c.structure_K;
    if (bf16) c.structure_K.dtype = c.structure_C.dtype = c.factor_compute = NGD_BF16;
    float *w = calloc((size_t)dout * di, 4), *dw = malloc((size_t)dout * di * 4);
    float *b = calloc(dout, 4), *db = malloc(dout * 4);
    float *a = malloc((size_t)nb * di * 4), *g = malloc((size_t)nb * dout * 4);
    ngd_optim *o = NULL;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    ngd_layer Ly = {.name = "wide",
                    .weight = w,
                    .weight_grad = dw,
                    .d_out = dout,
                    .d_in = di,
                    .bias = b,
                    .bias_grad = db};
    int id;
    CHECK(ngd_optim_add_layer(o, &Ly, &id) == NGD_OK);
    ref_rng r = {31};
    for (int s = 0; s < 3; s++) {
        for (size_t i = 0; i < (size_t)nb * di; i++)
            a[i] = (float)ref_uniform(&r, -1, 1);
        for (size_t i = 0; i < (size_t)nb * dout; i++)
            g[i] = (float)ref_uniform(&r, -1, 1) / nb;
        for (size_t i = 0; i < (size_t)dout * di; i++)
            dw[i] = (float)ref_uniform(&r, -1, 1);
        for (size_t i = 0; i < dout; i++)
            db[i] = (float)ref_uniform(&r, -1, 1);
        CHECK(ngd_optim_observe(o, id, nb, ngd_matrix_f32(a, nb, di),
                                ngd_matrix_f32(g, nb, dout)) == NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
    }
    CHECK(ngd_optim_last_update(o, id, P, (size_t)dout * (di + 1)) == NGD_OK);
    ngd_optim_free(o);
    free(w), free(dw), free(b), free(db), free(a), free(g);
}

static void singd_wide_dense_panels_should_match_the_plain_path(void) {
    const size_t dims[][3] = {{1100, 1030, 1200}, {2100, 16, 192}};
    for (size_t c = 0; c < 2; c++) {
        const size_t di = dims[c][0], dout = dims[c][1], nb = dims[c][2], n = dout * (di + 1);
        float *pd = malloc(n * 4), *pb = malloc(n * 4), *p16 = malloc(n * 4);
        singd_run_wide("dense", false, di, dout, nb, pd);
        singd_run_wide("block3000diagonal", false, di, dout, nb, pb);
        singd_run_wide("dense", true, di, dout, nb, p16);
        const double e32 = rel_diff(pb, pd, n), e16 = rel_diff(pd, p16, n);
        if (getenv("OC_SHOW")) fprintf(stderr, "%zu: e32 %.3g e16 %.3g\n", di, e32, e16);
        CHECK_MSG(e32 < 1e-5, "f32 panels against the plain path (%zu): %.3g", di, e32);
        CHECK_MSG(e16 < 3e-2, "bf16 panels against f32 (%zu): %.3g", di, e16);
        free(pd), free(pb), free(p16);
    }
}

// AdamW and SGD against the rules written out in float64 (torch.optim semantics, ngd.h):
//   AdamW: w ← w(1 − η·γ); m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²;
//          w ← w − η/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + ε)
//   SGD:   u ← g + γ w; buf ← μ buf + u (from zero); u ← buf, or u + μ·buf with Nesterov;
//          w ← w − η u
// with g = the written gradient / the loss scale s_t and η = lr · lr_scale, for a layer with
// a bias and a plain parameter in one optimizer, over steps with new gradients, a changing
// loss scale and an lr scale that changes half-way.
enum { FO_OUT = 3, FO_IN = 4, FO_NP = 5, FO_N = FO_OUT * FO_IN + FO_OUT + FO_NP, FO_STEPS = 7 };

static void first_order_ref_step(const ngd_config *c, double eta, size_t t, const double *g,
                                 double *w, double *m, double *v) {
    for (size_t j = 0; j < FO_N; j++) {
        if (c->method == NGD_METHOD_ADAMW) {
            const double b1 = (double)c->beta1, b2 = (double)c->beta2;
            w[j] *= 1.0 - eta * (double)c->weight_decay;
            m[j] = b1 * m[j] + (1.0 - b1) * g[j];
            v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
            const double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
            w[j] -= eta / bc1 * m[j] / (sqrt(v[j]) / sqrt(bc2) + (double)c->eps);
        } else {
            const double mu = (double)c->momentum;
            double u = g[j] + (double)c->weight_decay * w[j];
            if (mu != 0.0) {
                m[j] = mu * m[j] + u;
                u = c->nesterov ? u + mu * m[j] : m[j];
            }
            w[j] -= eta * u;
        }
    }
}

// Runs one config; returns the largest |w − w_ref| / (rtol·|w_ref| + atol) over the run (<= 1
// passes). float32 arithmetic with 1 − β2ᵗ formed in float32 (a cancellation: ~1e-5 relative)
// stays well inside; a wrong rule is off by a fraction of η ~ 1e-2.
#define FO_RTOL 1e-5
#define FO_ATOL 1e-7
static double first_order_vs_f64(const ngd_config *c) {
    // the flat f64 shadow: W (row-major), then b, then the parameter
    float W[FO_OUT * FO_IN], gW[FO_OUT * FO_IN], b[FO_OUT], gb[FO_OUT], p[FO_NP], gp[FO_NP];
    double w[FO_N], m[FO_N] = {0}, v[FO_N] = {0}, g[FO_N];
    ref_rng r = {.s = 1234 + (unsigned long long)c->method};
    for (size_t j = 0; j < FO_N; j++)
        w[j] = (double)(float)ref_uniform(&r, -1, 1);
    for (size_t j = 0; j < FO_OUT * FO_IN; j++)
        W[j] = (float)w[j];
    for (size_t j = 0; j < FO_OUT; j++)
        b[j] = (float)w[FO_OUT * FO_IN + j];
    for (size_t j = 0; j < FO_NP; j++)
        p[j] = (float)w[FO_OUT * FO_IN + FO_OUT + j];
    ngd_optim *o;
    CHECK(ngd_optim_create(c, &o) == NGD_OK);
    ngd_layer l = {.name = "fc",
                   .weight = W,
                   .weight_grad = gW,
                   .d_out = FO_OUT,
                   .d_in = FO_IN,
                   .bias = b,
                   .bias_grad = gb};
    int id, lid;
    CHECK(ngd_optim_add_layer(o, &l, &lid) == NGD_OK);
    CHECK(ngd_optim_add_param(o, "p", p, gp, FO_NP, NULL, &id) == NGD_OK);
    // powers of two: the library's g·(1/s) and lr·lr_scale are then exact in float32
    const float scales[FO_STEPS] = {1.0f, 8.0f, 0.5f, 0.5f, 4.0f, 1.0f, 16.0f};
    double worst = 0.0;
    for (size_t t = 0; t < FO_STEPS; t++) {
        const float lrs = t < FO_STEPS / 2 ? 1.0f : 0.5f;
        CHECK(ngd_optim_set_lr_scale(o, lrs) == NGD_OK);
        CHECK(ngd_optim_set_grad_scale(o, scales[t]) == NGD_OK);
        // gradients over four decades (so that ε matters for the small ones), sign mixed
        for (size_t j = 0; j < FO_N; j++) {
            const double mag = pow(10.0, ref_uniform(&r, -4, 0));
            const float gs = (float)(mag * (ref_uniform(&r, 0, 1) < 0.5 ? -1 : 1)) * scales[t];
            g[j] = (double)gs / (double)scales[t];
            if (j < FO_OUT * FO_IN)
                gW[j] = gs;
            else if (j < FO_OUT * FO_IN + FO_OUT)
                gb[j - FO_OUT * FO_IN] = gs;
            else
                gp[j - FO_OUT * FO_IN - FO_OUT] = gs;
        }
        CHECK(ngd_optim_step(o) == NGD_OK);
        // the layer's update norm is ‖Ĝ‖ = ‖[∇W | ∇b]‖ / s (read in place at scale 1,
        // gathered otherwise)
        double gg = 0.0;
        for (size_t j = 0; j < FO_OUT * FO_IN + FO_OUT; j++)
            gg += g[j] * g[j];
        ngd_layer_health h;
        CHECK(ngd_optim_layer_health(o, lid, &h) == NGD_OK);
        CHECK_MSG(fabs((double)h.update_norm - sqrt(gg)) <= 1e-5 * sqrt(gg),
                  "%s step %zu (scale %g): update norm %.8g, want %.8g", ngd_method_name(c->method),
                  t, (double)scales[t], (double)h.update_norm, sqrt(gg));
        first_order_ref_step(c, (double)(c->lr * lrs), t + 1, g, w, m, v);
        for (size_t j = 0; j < FO_N; j++) {
            const float got = j < FO_OUT * FO_IN            ? W[j]
                              : j < FO_OUT * FO_IN + FO_OUT ? b[j - FO_OUT * FO_IN]
                                                            : p[j - FO_OUT * FO_IN - FO_OUT];
            worst = fmax(worst, fabs((double)got - w[j]) / (FO_RTOL * fabs(w[j]) + FO_ATOL));
        }
    }
    ngd_optim_free(o);
    return worst;
}

static void adamw_and_sgd_should_follow_their_f64_rules(void) {
    ngd_config cases[7];
    int nc = 0;
    cases[nc] = ngd_config_default(NGD_METHOD_ADAMW); // PyTorch's defaults
    cases[nc++].lr = 1e-2f;
    cases[nc] = ngd_config_default(NGD_METHOD_ADAMW); // every constant off its default
    cases[nc].lr = 3e-2f, cases[nc].beta1 = 0.8f, cases[nc].beta2 = 0.95f;
    cases[nc].eps = 1e-3f, cases[nc++].weight_decay = 0.3f;
    cases[nc] = ngd_config_default(NGD_METHOD_SGD); // plain, with coupled weight decay
    cases[nc].lr = 0.05f, cases[nc++].weight_decay = 0.1f;
    for (int nest = 0; nest < 2; nest++) { // momentum, with and without Nesterov
        for (int wd = 0; wd < 2; wd++) {
            cases[nc] = ngd_config_default(NGD_METHOD_SGD);
            cases[nc].lr = 0.05f, cases[nc].momentum = 0.7f, cases[nc].nesterov = nest;
            cases[nc++].weight_decay = wd ? 0.2f : 0.0f;
        }
    }
    for (int k = 0; k < nc; k++) {
        const double e = first_order_vs_f64(&cases[k]);
        CHECK_MSG(e <= 1.0, "case %d (%s, momentum %g, nesterov %d, wd %g): %.3g x tolerance", k,
                  ngd_method_name(cases[k].method), (double)cases[k].momentum,
                  (int)cases[k].nesterov, (double)cases[k].weight_decay, e);
    }
}

// SINGD's factor health against the factors themselves: after every update, trace_K/C =
// tr(K)/d and norm_K/C = ‖K‖_F of the dense form (ngd_optim_factor_dense) in float64, for
// dense factors and for structured ones: Toeplitz (θ_k fills d−k entries), hierarchical,
// the corner shapes, block-diagonal with a shorter last block (7 = 3 + 3 + 1, 4 = 2 + 2).
static void singd_health_should_match_the_dense_factors(void) {
    const char *pairs[][2] = {
        {"dense", "dense"},
        {"hierarchical3_2", "triltoeplitz"},
        {"block3diagonal", "triutoeplitz"},
        {"diagonal", "tril_topleft_diag"},
        {"triu_bottomright_diag", "block2diagonal"},
    };
    for (size_t k = 0; k < sizeof pairs / sizeof *pairs; k++) {
        ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
        CHECK(ngd_structure_parse(pairs[k][0], &c.structure_K) == NGD_OK);
        CHECK(ngd_structure_parse(pairs[k][1], &c.structure_C) == NGD_OK);
        c.T = 2, c.lr_cov = 0.05f, c.lr = 1e-2f;
        tp_problem p;
        tp_init(&p, 10, 6, 5, 4, 61 + k); // K: 7 x 7 and 6 x 6, C: 5 x 5 and 4 x 4
        ngd_optim *o;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK && tp_register(&p, o) == NGD_OK);
        for (size_t s = 0; s < 5; s++) {
            CHECK(tp_step(&p, o, s) == NGD_OK);
            const int ids[2] = {p.id1, p.id2};
            const size_t dK[2] = {7, 6}, dC[2] = {5, 4};
            for (int l = 0; l < 2; l++) {
                ngd_layer_health h;
                CHECK(ngd_optim_layer_health(o, ids[l], &h) == NGD_OK);
                CHECK(h.updates == s / 2 + 1);
                const char which[2] = {'K', 'C'};
                const size_t d[2] = {dK[l], dC[l]};
                const float got_tr[2] = {h.trace_K, h.trace_C}, got_nr[2] = {h.norm_K, h.norm_C};
                for (int f = 0; f < 2; f++) {
                    float F[49];
                    CHECK(ngd_optim_factor_dense(o, ids[l], which[f], F, d[f]) == NGD_OK);
                    double tr = 0, nn = 0, off = 0;
                    for (size_t i = 0; i < d[f]; i++)
                        tr += (double)F[i * d[f] + i];
                    for (size_t i = 0; i < d[f] * d[f]; i++)
                        nn += (double)F[i] * (double)F[i];
                    for (size_t i = 0; i < d[f]; i++)
                        off = fmax(off, fabs((double)F[i * d[f] + i] - 1.0));
                    tr /= (double)d[f], nn = sqrt(nn);
                    CHECK_MSG(fabs((double)got_tr[f] - tr) <= 1e-5 * fabs(tr) &&
                                  fabs((double)got_nr[f] - nn) <= 1e-5 * nn,
                              "%s/%s layer %d factor %c step %zu: trace %.8g norm %.8g, want "
                              "%.8g %.8g",
                              pairs[k][0], pairs[k][1], l, which[f], s, (double)got_tr[f],
                              (double)got_nr[f], tr, nn);
                    CHECK(off > 1e-4); // the factor moved off I: the readout is not trivial
                }
            }
        }
        ngd_optim_free(o);
        tp_free(&p);
    }
}

// A layer large enough that the step's gradient check (Σ g², the health's grad_norm) is
// shared by the threads, over more than one group of 4096 blocks of 1024: the same bits at
// 1 and 2 threads, the f64 norm to 1e-6, and a NaN in the last block still skips the step.
// #loss-scale: init_grad_scale is s₋₁ only (step 0's statistics); a step whose scale is never
// set has s_t = 1 (the official package: "the scale supplied for this step, or 1"). It was
// taken for every step's s_t: SGD's gradients divided by 4 at every step, SINGD's P by 4 and
// H_C by 1/16. A run that never sets the scale equals one that sets 1 at every step.
static void init_grad_scale_should_be_the_previous_scale_only(void) {
    const ngd_method ms[] = {NGD_METHOD_SGD, NGD_METHOD_ADAMW, NGD_METHOD_SINGD, NGD_METHOD_KFAC,
                             NGD_METHOD_BKFAC};
    for (size_t k = 0; k < sizeof ms / sizeof ms[0]; k++) {
        ngd_config c = ngd_config_default(ms[k]);
        c.init_grad_scale = 4.0f, c.T = 1, c.kfac.T_u = 1, c.kfac.T_i = 2, c.kfac.rank = 8;
        tp_problem p[2];
        ngd_optim *o[2];
        for (int v = 0; v < 2; v++) {
            tp_init(&p[v], 4, 30, 20, 5, 9);
            CHECK(ngd_optim_create(&c, &o[v]) == NGD_OK && tp_register(&p[v], o[v]) == NGD_OK);
        }
        for (size_t st = 0; st < 6; st++)
            for (int v = 0; v < 2; v++) {
                tp_forward_backward(&p[v], o[v], st % 3, 1.0f);
                if (v) CHECK(ngd_optim_set_grad_scale(o[v], 1.0f) == NGD_OK);
                CHECK(ngd_optim_step(o[v]) == NGD_OK);
            }
        CHECK_MSG(memcmp(p[0].W1, p[1].W1, 20 * 30 * sizeof(float)) == 0 &&
                      memcmp(p[0].W2, p[1].W2, 5 * 20 * sizeof(float)) == 0,
                  "%s: init_grad_scale 4, the scale never set, differs from s_t = 1",
                  ngd_method_name(ms[k]));
        for (int v = 0; v < 2; v++)
            ngd_optim_free(o[v]), tp_free(&p[v]);
    }
}

static void grad_norm_of_a_large_layer_should_not_depend_on_threads(void) {
    enum { DOUT = 2053 };
    const size_t dout = DOUT, din = 2047, nw = dout * din; // 4,202,491 weights: 2 groups
    float *W = malloc(nw * sizeof *W), *gW = malloc(nw * sizeof *gW), b[DOUT], gb[DOUT];
    ref_rng r = {91};
    float norms[2];
    const int nthr0 = th_set_threads(0);
    for (int run = 0; run < 2; run++) {
        th_set_threads(run ? 2 : 1);
        r.s = 91;
        for (size_t i = 0; i < nw; i++)
            W[i] = (float)ref_uniform(&r, -0.1, 0.1), gW[i] = (float)ref_uniform(&r, -0.5, 0.5);
        for (size_t i = 0; i < dout; i++)
            b[i] = 0.0f, gb[i] = (float)ref_uniform(&r, -1.0, 1.0);
        ngd_config c = ngd_config_default(NGD_METHOD_SGD);
        ngd_optim *o;
        int id;
        ngd_layer l = {.name = "big",
                       .weight = W,
                       .weight_grad = gW,
                       .d_out = dout,
                       .d_in = din,
                       .bias = b,
                       .bias_grad = gb};
        CHECK(ngd_optim_create(&c, &o) == NGD_OK && ngd_optim_add_layer(o, &l, &id) == NGD_OK);
        const double want = norm_f64(gW, nw, gb, dout, 1.0);
        CHECK(ngd_optim_step(o) == NGD_OK);
        ngd_layer_health h;
        CHECK(ngd_optim_layer_health(o, id, &h) == NGD_OK);
        norms[run] = h.grad_norm;
        CHECK_MSG(fabs((double)h.grad_norm - want) <= 1e-6 * want, "grad norm %.9g, want %.9g",
                  (double)h.grad_norm, want);
        gW[nw - 3] = NAN; // in the last, partial block of the second group
        CHECK(ngd_optim_step(o) == NGD_SKIPPED);
        CHECK(ngd_optim_layer_health(o, id, &h) == NGD_OK && h.skips == 1);
        ngd_optim_free(o);
    }
    th_set_threads(nthr0);
    CHECK(memcmp(&norms[0], &norms[1], sizeof(float)) == 0);
    free(W), free(gW);
}

// ngd_optim_skip (a frozen parameter, as torch.optim skips one whose grad is None): the
// skipped entry keeps its weights, its state and its update count, needs no statistics, and
// a NaN in its gradient does not skip the step; the others step as they would alone. AdamW:
// a parameter skipped at step 2 follows an optimizer that stepped it at 1 and 3 only (its
// bias correction counts its own updates). SINGD: a layer skipped at an update step without
// statistics keeps its factors, and the step is no error.
static void skip_should_leave_an_entry_as_it_is(void) {
    enum { DO = 3, DI = 4, NP = 6, STEPS = 3 };
    float grads[STEPS][DO * DI + NP];
    for (int s = 0; s < STEPS; s++)
        for (int i = 0; i < DO * DI + NP; i++)
            grads[s][i] = 0.1f * (float)((s * 7 + i * 3) % 11) - 0.5f;
    // A: a layer and a parameter, the parameter skipped at step 2 (its gradient NaN then)
    ngd_config c = ngd_config_default(NGD_METHOD_ADAMW);
    c.weight_decay = 0.1f;
    ngd_optim *a = NULL, *bl = NULL, *bp = NULL;
    CHECK(ngd_optim_create(&c, &a) == NGD_OK && ngd_optim_create(&c, &bl) == NGD_OK &&
          ngd_optim_create(&c, &bp) == NGD_OK);
    float wa[DO * DI], ga[DO * DI], pa[NP], gpa[NP], wb[DO * DI], gb[DO * DI], pb[NP], gpb[NP];
    for (int i = 0; i < DO * DI; i++)
        wa[i] = wb[i] = 0.05f * (float)i;
    for (int i = 0; i < NP; i++)
        pa[i] = pb[i] = 1.0f - 0.1f * (float)i;
    ngd_layer la = {"fc", wa, ga, DO, DI, NULL, NULL, NULL},
              lb = {"fc", wb, gb, DO, DI, NULL, NULL, NULL};
    int ida = -1, idp = -1, id = -1;
    CHECK(ngd_optim_add_layer(a, &la, &ida) == NGD_OK);
    CHECK(ngd_optim_add_param(a, "p", pa, gpa, NP, NULL, &idp) == NGD_OK);
    CHECK(ngd_optim_add_layer(bl, &lb, &id) == NGD_OK);
    CHECK(ngd_optim_add_param(bp, "p", pb, gpb, NP, NULL, &id) == NGD_OK);
    CHECK(ngd_optim_skip(a, 7) == NGD_ERR_LAYER && ngd_optim_skip(a, -1) == NGD_ERR_LAYER);
    for (int s = 0; s < STEPS; s++) {
        memcpy(ga, grads[s], sizeof ga), memcpy(gb, grads[s], sizeof gb);
        memcpy(gpa, grads[s] + DO * DI, sizeof gpa), memcpy(gpb, grads[s] + DO * DI, sizeof gpb);
        float before[NP];
        memcpy(before, pa, sizeof before);
        if (s == 1) {
            gpa[2] = NAN; // (not read: the step is not skipped for it)
            CHECK(ngd_optim_skip(a, idp) == NGD_OK);
        }
        CHECK(ngd_optim_step(a) == NGD_OK);
        CHECK(ngd_optim_step(bl) == NGD_OK);
        if (s != 1) CHECK(ngd_optim_step(bp) == NGD_OK);
        CHECK(memcmp(wa, wb, sizeof wa) == 0);
        CHECK(memcmp(pa, pb, sizeof pa) == 0);
        if (s == 1) CHECK(memcmp(pa, before, sizeof pa) == 0);
    }
    ngd_optim_free(a), ngd_optim_free(bl), ngd_optim_free(bp);
    // SINGD, T = 1: layer 1 skipped at an update step without statistics
    ngd_config sc = ngd_config_default(NGD_METHOD_SINGD);
    sc.T = 1;
    ngd_optim *o = NULL;
    CHECK(ngd_optim_create(&sc, &o) == NGD_OK);
    float w[2][DO * DI], g[2][DO * DI], A[8 * DI], G[8 * DO];
    for (int i = 0; i < DO * DI; i++)
        w[0][i] = w[1][i] = 0.01f * (float)i, g[0][i] = g[1][i] = grads[0][i];
    for (int i = 0; i < 8 * DI; i++)
        A[i] = 0.1f * (float)(i % 5) - 0.2f;
    for (int i = 0; i < 8 * DO; i++)
        G[i] = 0.1f * (float)(i % 3) - 0.1f;
    int l[2];
    for (int k = 0; k < 2; k++) {
        ngd_layer L = {k ? "l1" : "l0", w[k], g[k], DO, DI, NULL, NULL, NULL};
        CHECK(ngd_optim_add_layer(o, &L, &l[k]) == NGD_OK);
    }
    for (int k = 0; k < 2; k++)
        CHECK(ngd_optim_observe(o, l[k], 8, ngd_matrix_f32(A, 8, DI), ngd_matrix_f32(G, 8, DO)) ==
              NGD_OK);
    CHECK(ngd_optim_step(o) == NGD_OK);
    float K0[DI * DI], K1[DI * DI], w1[DO * DI], w0[DO * DI];
    CHECK(ngd_optim_factor_dense(o, l[1], 'K', K0, DI) == NGD_OK);
    memcpy(w1, w[1], sizeof w1), memcpy(w0, w[0], sizeof w0);
    CHECK(ngd_optim_observe(o, l[0], 8, ngd_matrix_f32(A, 8, DI), ngd_matrix_f32(G, 8, DO)) ==
          NGD_OK);
    CHECK(ngd_optim_step(o) == NGD_ERR_STATE); // (l1 wants statistics: refused, nothing changed)
    CHECK(ngd_optim_skip(o, l[1]) == NGD_OK);
    CHECK_MSG(ngd_optim_step(o) == NGD_OK, "%s", ngd_optim_errmsg(o));
    CHECK(ngd_optim_factor_dense(o, l[1], 'K', K1, DI) == NGD_OK);
    CHECK(memcmp(K0, K1, sizeof K0) == 0 && memcmp(w1, w[1], sizeof w1) == 0);
    CHECK(memcmp(w0, w[0], sizeof w0) != 0); // (l0 stepped)
    // the skip was for that step only: the next one wants l1's statistics again
    CHECK(ngd_optim_observe(o, l[0], 8, ngd_matrix_f32(A, 8, DI), ngd_matrix_f32(G, 8, DO)) ==
          NGD_OK);
    CHECK(ngd_optim_step(o) == NGD_ERR_STATE);
    ngd_optim_free(o);
}

// ---- gradient accumulation (ngd_optim_set_micro_batches) ----

typedef struct {
    const char *name;
    ngd_method m;
    const char *structure;
    ngd_loss_average avg;
    size_t R; // rows a sample (a sequence's positions)
    bool reduce, factored, bf16;
} mb_case;

// Steps of one layer (6 x 5 plus bias) on fixed random data: the batch's N*R rows handed over
// in one observe of N samples (parts = 1), or in `parts` observes of N/parts samples with the
// optimizer told `micro` micro-batches. The gradient is the same in both. W out.
static void mb_run(const mb_case *k, size_t parts, size_t micro, float *W) {
    const size_t N = 12, din = 5, dout = 6, R = k->R, rows = N * R;
    ngd_config c = ngd_config_default(k->m);
    c.T = 2, c.kfac.T_u = 1, c.kfac.T_i = 2, c.lr = 0.05f, c.damping = 1e-2f;
    c.loss_average = k->avg;
    c.kfac_approx = k->reduce ? NGD_KFAC_REDUCE : NGD_KFAC_EXPAND;
    c.kfac.factored_apply = k->factored;
    if (k->structure) {
        CHECK(ngd_structure_parse(k->structure, &c.structure_K) == NGD_OK);
        c.structure_C = c.structure_K;
    }
    if (k->bf16) c.factor_compute = c.structure_K.dtype = c.structure_C.dtype = NGD_BF16;
    float *w = W, dw[30], b[6] = {0}, db[6], a[24 * 5], g[24 * 6];
    ref_rng r = {4242};
    for (size_t i = 0; i < dout * din; i++)
        w[i] = (float)ref_uniform(&r, -0.5, 0.5);
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
    CHECK(ngd_optim_micro_batches(o) == 1);
    CHECK(ngd_optim_set_micro_batches(o, micro) == NGD_OK);
    CHECK(ngd_optim_micro_batches(o) == micro);
    for (int s = 0; s < 7; s++) {
        for (size_t i = 0; i < rows * din; i++)
            a[i] = (float)ref_uniform(&r, -1, 1);
        for (size_t i = 0; i < rows * dout; i++)
            g[i] = (float)ref_uniform(&r, -1, 1) / (k->avg == NGD_LOSS_SUM ? 1.0f : (float)N);
        for (size_t i = 0; i < dout * din; i++)
            dw[i] = (float)ref_uniform(&r, -0.1, 0.1);
        for (size_t i = 0; i < dout; i++)
            db[i] = (float)ref_uniform(&r, -0.1, 0.1);
        const size_t n = N / parts;
        for (size_t p = 0; p < parts && ngd_optim_wants_stats(o); p++)
            CHECK(ngd_optim_observe(o, id, n, ngd_matrix_f32(a + p * n * R * din, n * R, din),
                                    ngd_matrix_f32(g + p * n * R * dout, n * R, dout)) == NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
    }
    ngd_optim_free(o);
}

static void micro_batches_should_take_the_whole_batchs_step(void) {
    const mb_case cases[] = {
        {"ikfac", NGD_METHOD_IKFAC, NULL, NGD_LOSS_BATCH, 1, false, false, false},
        {"ingd", NGD_METHOD_INGD, NULL, NGD_LOSS_BATCH, 1, false, false, false},
        {"singd diagonal sum", NGD_METHOD_SINGD, "diagonal", NGD_LOSS_SUM, 1, false, false, false},
        {"ikfac sequence", NGD_METHOD_IKFAC, NULL, NGD_LOSS_BATCH_SEQUENCE, 2, false, false, false},
        {"ikfac reduce", NGD_METHOD_IKFAC, NULL, NGD_LOSS_BATCH, 2, true, false, false},
        {"singd block sum", NGD_METHOD_SINGD, "block2diagonal", NGD_LOSS_SUM, 2, false, false,
         false},
        {"kfac", NGD_METHOD_KFAC, NULL, NGD_LOSS_BATCH, 1, false, false, false},
        {"kfac sequence", NGD_METHOD_KFAC, NULL, NGD_LOSS_BATCH_SEQUENCE, 2, false, false, false},
        {"rskfac", NGD_METHOD_RSKFAC, NULL, NGD_LOSS_BATCH, 1, false, false, false},
        {"srekfac", NGD_METHOD_SREKFAC, NULL, NGD_LOSS_BATCH, 1, false, false, false},
        {"bkfac", NGD_METHOD_BKFAC, NULL, NGD_LOSS_BATCH, 1, false, false, false},
        {"brkfac", NGD_METHOD_BRKFAC, NULL, NGD_LOSS_BATCH, 2, true, false, false},
        {"brckfac", NGD_METHOD_BRCKFAC, NULL, NGD_LOSS_BATCH, 1, false, false, false},
        {"kfac factored", NGD_METHOD_KFAC, NULL, NGD_LOSS_BATCH, 1, false, true, false},
        {"bkfac factored", NGD_METHOD_BKFAC, NULL, NGD_LOSS_BATCH, 1, false, true, false},
        {"ikfac bf16", NGD_METHOD_IKFAC, NULL, NGD_LOSS_BATCH, 1, false, false, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const mb_case *k = &cases[i];
        float whole[30], micro[30], plain[30];
        mb_run(k, 1, 1, whole);
        mb_run(k, 3, 3, micro);
        mb_run(k, 3, 1, plain); // (three observes that each say they are the whole batch)
        double e = 0, ep = 0, ref = 0;
        for (size_t j = 0; j < 30; j++) {
            e = fmax(e, fabs((double)micro[j] - (double)whole[j]));
            ep = fmax(ep, fabs((double)plain[j] - (double)whole[j]));
            ref = fmax(ref, fabs((double)whole[j]));
        }
        // (the test can tell: without the setting, the parts' statistics add up otherwise,
        // except for the methods that are invariant to it, INGD and SINGD on mean losses)
        const bool differs = k->avg == NGD_LOSS_SUM || k->m != NGD_METHOD_INGD;
        if (!(e <= 2e-5 * ref) || (differs && !(ep > 2e-4 * ref)))
            fprintf(stderr, "  %s: micro-batches off by %.3g, plain observes by %.3g (|W| %.3g)\n",
                    k->name, e, ep, ref);
        CHECK(e <= 2e-5 * ref);
        if (differs) CHECK(ep > 2e-4 * ref);
    }
    ngd_optim *o = NULL;
    ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    CHECK(ngd_optim_set_micro_batches(o, 0) == NGD_ERR_ARG);
    CHECK(ngd_optim_micro_batches(o) == 1);
    // a change between a step's observes is refused (its first observe was scaled for the
    // other number); the step still takes what was observed, and the next step the new one
    {
        float w[6] = {0}, dw[6] = {0.1f, 0.2f, 0.3f, 0.1f, 0.2f, 0.3f}, a[4] = {1, 2, 3, 4},
              g[6] = {0.1f, -0.2f, 0.3f, 0.2f, 0.1f, -0.1f};
        ngd_layer L = {.name = "fc", .weight = w, .weight_grad = dw, .d_out = 3, .d_in = 2};
        int id;
        CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_OK);
        const ngd_matrix am = ngd_matrix_f32(a, 2, 2), gm = ngd_matrix_f32(g, 2, 3);
        CHECK(ngd_optim_observe(o, id, 2, am, gm) == NGD_OK);
        CHECK(ngd_optim_set_micro_batches(o, 3) == NGD_OK);
        CHECK(ngd_optim_observe(o, id, 2, am, gm) == NGD_ERR_STATE);
        CHECK(strstr(ngd_optim_errmsg(o), "changed from 1 to 3") != NULL);
        CHECK(ngd_optim_step(o) == NGD_OK);
        for (int k = 0; k < 3; k++)
            CHECK(ngd_optim_observe(o, id, 2, am, gm) == NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
    }
    CHECK(ngd_optim_set_micro_batches(NULL, 2) == NGD_ERR_ARG);
    CHECK(ngd_optim_micro_batches(NULL) == 0);
    ngd_optim_free(o);
}

static const test_case TESTS[] = {
    TEST(micro_batches_should_take_the_whole_batchs_step),
    TEST(unfold_should_match_a_naive_loop),
    TEST(observe_conv_should_equal_observe_of_the_unfolded_matrix),
    TEST(observe_conv_should_fit_a_block_of_the_narrower_side),
    TEST(singd_from_conv_images_should_equal_the_gradient_path),
    TEST(observe_conv_should_refuse_bad_input),
    TEST(observe_conv_should_refuse_sizes_that_overflow),
    TEST(overrides_should_equal_separate_optimizers),
    TEST(lr_cov_schedule_should_drive_the_factor_step),
    TEST(singd_should_refuse_non_finite_statistics),
    TEST(kfac_like_alpha1_should_be_logged),
    TEST(params_should_take_adamw_or_sgd_under_any_method),
    TEST(health_norms_should_match_f64),
    TEST(first_order_update_norms_should_be_the_gradient_norms),
    TEST(singd_cached_products_should_follow_loads_and_match_the_plain_path),
    TEST(singd_wide_dense_panels_should_match_the_plain_path),
    TEST(adamw_and_sgd_should_follow_their_f64_rules),
    TEST(singd_health_should_match_the_dense_factors),
    TEST(grad_norm_of_a_large_layer_should_not_depend_on_threads),
    TEST(init_grad_scale_should_be_the_previous_scale_only),
    TEST(skip_should_leave_an_entry_as_it_is),
};
int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
