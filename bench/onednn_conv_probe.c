/*
 * onednn_conv_probe.c — measures oneDNN 2.6's convolution primitives against the engine's
 * im2col + GEMM convolution (nn_conv2d) on the cnn's four 3x3 'same' convolutions (or, with
 * VGG=1 in the environment, four vgg16bn-sized ones), forward + backward-data +
 * backward-weights, batch 128 (NB=...), interleaved round by round. No part of ngd: the
 * evidence behind docs/benchmarks.md's "oneDNN convolution primitives" section. `make bench`
 * builds it (build/bench/onednn_conv_probe); run it with argument 1: 0 = f32, 1 = bf16, and
 * argument 2: rounds:
 *
 *   OMP_NUM_THREADS=2 build/bench/onednn_conv_probe 0 3   # ONEDNN_VERBOSE=1: per-primitive times
 *   NGD_CONV_WINOGRAD=0 WINO=1 PERLAYER=1 OMP_NUM_THREADS=2 build/bench/onednn_conv_probe 0 5
 *
 * WINO=1 asks oneDNN for Winograd in the "any" set-up; PERLAYER=1 times one layer at a time
 * over the cnn's and vgg16bn's shapes (NGD_CONV_WINOGRAD=0: nn_conv2d's own kernels, as the
 * engine ran before conv_wino.c; the 2x2 layer is nn_conv2d's dense map since 1450b4f).
 *
 * Two oneDNN set-ups per layer: "nchw" (plain NCHW activations and OIHW weights, what the
 * engine holds: oneDNN 2.6 answers with its gemm-based x64:gemm:jit) and "any" (the
 * primitive chooses its layouts: blocked nChw16c, jit:avx512_core in f32 and
 * AMX brgconv/jit in bf16), the latter with the reorders from and to the engine's NCHW
 * that a model keeping NCHW activations would pay. bf16: src, weights and diff_dst bf16,
 * dst, diff_src and diff_weights f32. Each primitive gets its own scratchpad memory.
 */
#include <dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nn.h"

#define CK(x)                                                                                      \
    do {                                                                                           \
        dnnl_status_t s_ = (x);                                                                    \
        if (s_ != dnnl_success) {                                                                  \
            fprintf(stderr, "%s:%d: oneDNN status %d\n", __FILE__, __LINE__, (int)s_);             \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static dnnl_engine_t eng;
static dnnl_stream_t st;
static dnnl_primitive_attr_t attr;

typedef struct {
    dnnl_primitive_desc_t fpd, bdpd, bwpd;
    dnnl_primitive_t f, bd, bw;
    dnnl_memory_t sf, sbd, sbw;                      // scratchpads
    dnnl_memory_t x, w, b, y, dy, dx, dw, db;        // the engine's NCHW / OIHW
    dnnl_memory_t xi, wi, yi, dyi, dxi, dwi, wbi;    // the primitives' (the same when no reorder)
    dnnl_primitive_t rx, rw, ry, rdy, rdx, rdw, rwb; // reorders (NULL when none)
} conv;

static dnnl_memory_t mk(const dnnl_memory_desc_t *md) {
    dnnl_memory_t m;
    CK(dnnl_memory_create(&m, md, eng, DNNL_MEMORY_ALLOCATE));
    return m;
}

static const dnnl_memory_desc_t *mdof(dnnl_memory_t m) {
    const dnnl_memory_desc_t *d;
    CK(dnnl_memory_get_memory_desc(m, &d));
    return d;
}

static dnnl_primitive_t reorder(dnnl_memory_t a, dnnl_memory_t b) {
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t p;
    CK(dnnl_reorder_primitive_desc_create(&pd, mdof(a), eng, mdof(b), eng, NULL));
    CK(dnnl_primitive_create(&p, pd));
    return p;
}

static void run_reorder(dnnl_primitive_t p, dnnl_memory_t a, dnnl_memory_t b) {
    if (!p) return;
    dnnl_exec_arg_t g[2] = {{DNNL_ARG_FROM, a}, {DNNL_ARG_TO, b}};
    CK(dnnl_primitive_execute(p, st, 2, g));
}

// the primitive's memory for argument q, with the reorder from (or to) the engine's
static dnnl_memory_t inner(const_dnnl_primitive_desc_t pd, dnnl_query_t q, dnnl_memory_t user,
                           dnnl_primitive_t *r, int to_user) {
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, q, 0);
    if (dnnl_memory_desc_equal(md, mdof(user))) {
        *r = NULL;
        return user;
    }
    dnnl_memory_t m = mk(md);
    *r = to_user ? reorder(m, user) : reorder(user, m);
    return m;
}

static void fill(dnnl_memory_t m, size_t n, int mod) {
    float *q;
    CK(dnnl_memory_get_data_handle(m, (void **)&q));
    for (size_t i = 0; i < n; i++)
        q[i] = (float)(i % (size_t)mod) * 0.1f;
}

static void setup(conv *c, int N, int C, int H, int W, int O, int bf16, int any) {
    dnnl_dims_t xd = {N, C, H, W}, wd = {O, C, 3, 3}, bd = {O}, yd = {N, O, H, W};
    dnnl_dims_t s = {1, 1}, d = {0, 0}, p = {1, 1};
    const dnnl_format_tag_t tag = any ? dnnl_format_tag_any : dnnl_nchw;
    const dnnl_format_tag_t wtag = any ? dnnl_format_tag_any : dnnl_oihw;
    const dnnl_data_type_t t = bf16 ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_t xm, wm, bm, ym, xa, wa, ya, dya, dxa, dwa;
    CK(dnnl_memory_desc_init_by_tag(&xm, 4, xd, dnnl_f32, dnnl_nchw));
    CK(dnnl_memory_desc_init_by_tag(&wm, 4, wd, dnnl_f32, dnnl_oihw));
    CK(dnnl_memory_desc_init_by_tag(&bm, 1, bd, dnnl_f32, dnnl_a));
    CK(dnnl_memory_desc_init_by_tag(&ym, 4, yd, dnnl_f32, dnnl_nchw));
    CK(dnnl_memory_desc_init_by_tag(&xa, 4, xd, t, tag));
    CK(dnnl_memory_desc_init_by_tag(&wa, 4, wd, t, wtag));
    CK(dnnl_memory_desc_init_by_tag(&ya, 4, yd, dnnl_f32, tag));
    CK(dnnl_memory_desc_init_by_tag(&dya, 4, yd, t, tag));
    CK(dnnl_memory_desc_init_by_tag(&dxa, 4, xd, dnnl_f32, tag));
    CK(dnnl_memory_desc_init_by_tag(&dwa, 4, wd, dnnl_f32, wtag));
    dnnl_convolution_desc_t cd;
    // WINO=1: the "any" set-up asks for Winograd F(4x4, 3x3) (jit_wino_4x3) instead
    const dnnl_alg_kind_t alg =
        any && getenv("WINO") ? dnnl_convolution_winograd : dnnl_convolution_direct;
    CK(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_training, alg, &xa, &wa, &bm,
                                                  &ya, s, d, p, p));
    CK(dnnl_primitive_desc_create(&c->fpd, &cd, attr, eng, NULL));
    CK(dnnl_dilated_convolution_backward_data_desc_init(&cd, alg, &dxa, &wa, &dya, s, d, p, p));
    CK(dnnl_primitive_desc_create(&c->bdpd, &cd, attr, eng, c->fpd));
    CK(dnnl_dilated_convolution_backward_weights_desc_init(&cd, alg, &xa, &dwa, &bm, &dya, s, d, p,
                                                           p));
    CK(dnnl_primitive_desc_create(&c->bwpd, &cd, attr, eng, c->fpd));
    CK(dnnl_primitive_create(&c->f, c->fpd));
    CK(dnnl_primitive_create(&c->bd, c->bdpd));
    CK(dnnl_primitive_create(&c->bw, c->bwpd));
    c->sf = mk(dnnl_primitive_desc_query_md(c->fpd, dnnl_query_scratchpad_md, 0));
    c->sbd = mk(dnnl_primitive_desc_query_md(c->bdpd, dnnl_query_scratchpad_md, 0));
    c->sbw = mk(dnnl_primitive_desc_query_md(c->bwpd, dnnl_query_scratchpad_md, 0));
    c->x = mk(&xm), c->w = mk(&wm), c->b = mk(&bm), c->y = mk(&ym);
    c->dy = mk(&ym), c->dx = mk(&xm), c->dw = mk(&wm), c->db = mk(&bm);
    fill(c->x, (size_t)N * C * H * W, 7);
    fill(c->dy, (size_t)N * O * H * W, 5);
    fill(c->w, (size_t)O * C * 9, 3);
    fill(c->b, (size_t)O, 3);
    c->xi = inner(c->fpd, dnnl_query_src_md, c->x, &c->rx, 0);
    c->wi = inner(c->fpd, dnnl_query_weights_md, c->w, &c->rw, 0);
    c->yi = inner(c->fpd, dnnl_query_dst_md, c->y, &c->ry, 1);
    c->dyi = inner(c->bdpd, dnnl_query_diff_dst_md, c->dy, &c->rdy, 0);
    c->dxi = inner(c->bdpd, dnnl_query_diff_src_md, c->dx, &c->rdx, 1);
    c->wbi = inner(c->bdpd, dnnl_query_weights_md, c->w, &c->rwb, 0);
    c->dwi = inner(c->bwpd, dnnl_query_diff_weights_md, c->dw, &c->rdw, 1);
    const char *f, *b, *w;
    CK(dnnl_primitive_desc_query(c->fpd, dnnl_query_impl_info_str, 0, &f));
    CK(dnnl_primitive_desc_query(c->bdpd, dnnl_query_impl_info_str, 0, &b));
    CK(dnnl_primitive_desc_query(c->bwpd, dnnl_query_impl_info_str, 0, &w));
    printf("%s %dx%dx%d->%d: forward %s, backward-data %s, backward-weights %s\n",
           any ? "any " : "nchw", C, H, W, O, f, b, w);
}

// forward, backward-data, backward-weights of one layer, with the reorders
static void step(conv *c) {
    run_reorder(c->rx, c->x, c->xi);
    run_reorder(c->rw, c->w, c->wi);
    dnnl_exec_arg_t a[5] = {{DNNL_ARG_SCRATCHPAD, c->sf},
                            {DNNL_ARG_SRC, c->xi},
                            {DNNL_ARG_WEIGHTS, c->wi},
                            {DNNL_ARG_BIAS, c->b},
                            {DNNL_ARG_DST, c->yi}};
    CK(dnnl_primitive_execute(c->f, st, 5, a));
    run_reorder(c->ry, c->yi, c->y);
    run_reorder(c->rdy, c->dy, c->dyi);
    run_reorder(c->rwb, c->w, c->wbi);
    dnnl_exec_arg_t b[4] = {{DNNL_ARG_SCRATCHPAD, c->sbd},
                            {DNNL_ARG_DIFF_DST, c->dyi},
                            {DNNL_ARG_WEIGHTS, c->wbi},
                            {DNNL_ARG_DIFF_SRC, c->dxi}};
    CK(dnnl_primitive_execute(c->bd, st, 4, b));
    run_reorder(c->rdx, c->dxi, c->dx);
    dnnl_exec_arg_t e[5] = {{DNNL_ARG_SCRATCHPAD, c->sbw},
                            {DNNL_ARG_DIFF_DST, c->dyi},
                            {DNNL_ARG_SRC, c->xi},
                            {DNNL_ARG_DIFF_WEIGHTS, c->dwi},
                            {DNNL_ARG_DIFF_BIAS, c->db}};
    CK(dnnl_primitive_execute(c->bw, st, 5, e));
    run_reorder(c->rdw, c->dwi, c->dw);
    CK(dnnl_stream_wait(st));
}

// PERLAYER=1: one layer at a time over the cnn's and vgg16bn's 3x3 shapes, best of the rounds
// of nn_conv2d (forward + backward_set) against the "any" set-up with its reorders
static int per_layer(int N, int R) {
    static const int geo[][4] = {{32, 32, 32, 32}, {32, 16, 16, 64},  {64, 16, 16, 64},
                                 {64, 32, 32, 64}, {64, 16, 16, 128}, {128, 16, 16, 128},
                                 {128, 8, 8, 256}, {256, 8, 8, 256},  {256, 4, 4, 512},
                                 {512, 4, 4, 512}, {512, 2, 2, 512}};
    nn_rng rng;
    nn_rng_seed(&rng, 1);
    for (size_t l = 0; l < sizeof geo / sizeof geo[0]; l++) {
        nn_conv2d L;
        const ngd_conv_geom g = {
            (size_t)geo[l][0], (size_t)geo[l][1], (size_t)geo[l][2], 3, 3, 1, 1, 1, 1, 1, 1, 1};
        if (nn_conv2d_init(&L, &g, (size_t)geo[l][3], true, (size_t)N, &rng) != NN_OK) return 1;
        const size_t xn = (size_t)N * geo[l][0] * geo[l][1] * geo[l][2];
        const size_t yn = (size_t)N * geo[l][3] * geo[l][1] * geo[l][2];
        float *x = calloc(xn, 4), *y = calloc(yn, 4), *dx = calloc(xn, 4);
        if (!x || !y || !dx) return 1;
        for (size_t i = 0; i < xn; i++)
            x[i] = (float)(i % 7) * 0.1f;
        static conv c;
        setup(&c, N, geo[l][0], geo[l][1], geo[l][2], geo[l][3], 0, 1);
        double best[2] = {1e30, 1e30};
        for (int r = 0; r < R; r++) {
            double t0 = now();
            nn_conv2d_forward(&L, x, y, (size_t)N);
            nn_conv2d_backward_set(&L, y, dx);
            const double t1 = now();
            step(&c);
            const double t2 = now();
            best[0] = t1 - t0 < best[0] ? t1 - t0 : best[0];
            best[1] = t2 - t1 < best[1] ? t2 - t1 : best[1];
        }
        printf("%3d@%2dx%2d->%3d  nn_conv2d %7.2f  oneDNN any+reorders %7.2f ms  ratio %.2f\n",
               geo[l][0], geo[l][1], geo[l][2], geo[l][3], best[0] * 1e3, best[1] * 1e3,
               best[0] / best[1]);
        nn_conv2d_free(&L), free(x), free(y), free(dx);
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    const int bf16 = argc > 1 ? atoi(argv[1]) : 0, R = argc > 2 ? atoi(argv[2]) : 3;
    const int N = getenv("NB") ? atoi(getenv("NB")) : 128;
    int geo[4][4] = {{3, 32, 32, 32}, {32, 32, 32, 32}, {32, 16, 16, 64}, {64, 16, 16, 64}};
    const int vgg[4][4] = {
        {128, 16, 16, 128}, {256, 8, 8, 256}, {512, 4, 4, 512}, {512, 2, 2, 512}};
    if (getenv("VGG")) memcpy(geo, vgg, sizeof geo);
    if (N < 1 || R < 1 || R > 64) return 2;
    CK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CK(dnnl_stream_create(&st, eng, dnnl_stream_default_flags));
    CK(dnnl_primitive_attr_create(&attr));
    CK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (getenv("PERLAYER")) return per_layer(N, R);
    static conv cs[2][4];
    nn_conv2d L[4];
    nn_rng rng;
    nn_rng_seed(&rng, 1);
    float *xs[4], *ys[4], *dxs[4];
    for (int l = 0; l < 4; l++) {
        ngd_conv_geom g = {
            (size_t)geo[l][0], (size_t)geo[l][1], (size_t)geo[l][2], 3, 3, 1, 1, 1, 1, 1, 1, 1};
        if (nn_conv2d_init(&L[l], &g, (size_t)geo[l][3], true, (size_t)N, &rng) != NN_OK ||
            (bf16 && nn_conv2d_use_bf16(&L[l]) != NN_OK))
            return 1;
        const size_t xn = (size_t)N * geo[l][0] * geo[l][1] * geo[l][2];
        const size_t yn = (size_t)N * geo[l][3] * geo[l][1] * geo[l][2];
        xs[l] = calloc(xn, sizeof(float)), ys[l] = calloc(yn, sizeof(float));
        dxs[l] = calloc(xn, sizeof(float));
        if (!xs[l] || !ys[l] || !dxs[l]) return 1;
        for (size_t i = 0; i < xn; i++)
            xs[l][i] = (float)(i % 7) * 0.1f;
    }
    for (int k = 0; k < 2; k++)
        for (int l = 0; l < 4; l++)
            setup(&cs[k][l], N, geo[l][0], geo[l][1], geo[l][2], geo[l][3], bf16, k);
    double tm[3][64];
    for (int r = 0; r < R; r++) {
        double t0 = now();
        for (int l = 0; l < 4; l++) { // the first layer's dx is not needed (as in the cnn)
            nn_conv2d_forward(&L[l], xs[l], ys[l], (size_t)N);
            nn_conv2d_backward_set(&L[l], ys[l], l ? dxs[l] : NULL);
        }
        tm[0][r] = now() - t0;
        for (int k = 0; k < 2; k++) {
            t0 = now();
            for (int l = 0; l < 4; l++)
                step(&cs[k][l]);
            tm[k + 1][r] = now() - t0;
        }
    }
    const char *name[3] = {"ngd (im2col+GEMM)", "oneDNN nchw", "oneDNN any+reorders"};
    for (int k = 0; k < 3; k++) {
        printf("%-20s", name[k]);
        for (int r = 0; r < R; r++)
            printf(" %8.1f", tm[k][r] * 1e3);
        printf(" ms per round (4 layers, fwd+bwd)\n");
    }
    for (int l = 0; l < 4; l++)
        nn_conv2d_free(&L[l]), free(xs[l]), free(ys[l]), free(dxs[l]);
    return 0;
}
