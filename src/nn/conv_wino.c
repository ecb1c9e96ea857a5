/*
 * conv_wino.c — 3x3 'same' stride-1 convolutions (no groups, no dilation) in float32 by
 * oneDNN's Winograd F(4x4, 3x3) primitives (jit_wino_4x3): forward, backward-data and
 * backward-weights, a sub-batch at a time, on oneDNN's blocked layouts (nChw16c
 * activations), with reorders from and to the engine's NCHW activations and OIHW weights (in
 * bf16 mode from and to bf16 ones: nn_conv_wino_use_bf16).
 *
 * Why: a 6x6 input tile makes a 4x4 output tile with 36 multiplications per channel pair
 * where the direct convolution takes 144, so the three passes of vgg16bn's 64- to
 * 512-channel layers ran 1.8-2.5x faster than the engine's direct / im2col + GEMM kernels,
 * reorders included, and the cnn's 32- and 64-channel layers 1.2-1.8x
 * (docs/benchmarks.md, "Winograd convolutions"). Images of 2x2 (one tile for 4 outputs) ran
 * 0.7x: nn_conv2d keeps those (as dense GEMMs), batches the sub-batch does not divide, and bf16
 * mode where the CPU's bf16 kernels pay, on its own kernels.
 *
 * The arithmetic is not the direct sum's: inputs, weights and products go through the
 * transforms, so results differ from the direct convolution's by a few float32 roundings of
 * the sums' magnitude (test_nn_grad bounds it against float64). The same inputs give the same
 * bits for the same thread count.
 *
 * Sub-batches: each layer's primitives take s images at a time (the least divisor of the
 * planned batch with s·h·w >= 16384 pixels, else the whole batch), so their buffers stay a few
 * MB and cache-sized: vgg16bn's 32x32 layers ran as fast 32 images at a time as 128, and
 * its 4x4 layers (512 channels, weights transformed each call) twice as slow. A batch that
 * s does not divide is the caller's to run otherwise (nn_conv2d: its own kernels).
 *
 * Memory: every buffer is in one arena shared by all layers (layers run one at a time; calls
 * hold a lock), sized for the largest and freed with the last layer: a sub-batch's input,
 * output (or output gradient) and input gradient blocked, the weights blocked for forward
 * and backward-data, dW blocked, and the scratchpad. Backward-weights reorders the input
 * again rather than keeping the forward's copy (the cnn's peak RSS 155 -> 224 MiB with full
 * batches and kept copies).
 */
#include <dnnl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"

// the arena's parts: a sub-batch's x, y or dy, dx (blocked), the weights blocked for forward
// and backward-data, dW blocked, the scratchpad; in bf16 mode an f32 x or dy rounded (NCHW)
enum { P_X, P_Y, P_DX, P_WF, P_WD, P_DW, P_SP, P_H, NPARTS };

struct nn_conv_wino {
    size_t n, c, h, w, co;
    bool bias;
    dnnl_primitive_t f, bd, bw;
    // reorders: x -> xb, w -> wf (forward's weights), yb -> y, dy -> dyb, w -> wd (backward
    // data's weights), dxb -> dx (written), dxb -> dx (added), dwb -> dw (added)
    dnnl_primitive_t rx, rw, ry, rdy, rwd, rdx, rdxa, rdw;
    // the engine's arrays (handles set per call) and the primitives' (blocked)
    dnnl_memory_t ux, uw, uy, udy, udx, udw, ub;
    dnnl_memory_t bx, bwf, bwd, by, bdy, bdx, bdw;
    dnnl_memory_t spf, spd, spw; // each primitive's scratchpad (all in the arena)
    // bf16 mode (nn_conv_wino_use_bf16; NULL before): x, w, y, dy, dx as bf16 NCHW / OIHW,
    // converted by the reorders (f32 to bf16: rounded to nearest even); an f32 x or dy is
    // rounded first (h2x, h2dy into the arena's P_H), so that it gives its bf16 values' bits
    dnnl_memory_t hx, hw, hy, hdy, hdx;
    dnnl_primitive_t hrx, hrw, hry, hrdy, hrwd, hrdx, h2x, h2dy;
    size_t s;            // images per sub-batch
    size_t need[NPARTS]; // bytes of each arena part
    size_t xs, ys;       // elements of one image's input, output
};

// The arena's parts and the engine, process-wide
static struct {
    pthread_mutex_t lock;
    dnnl_engine_t eng;
    dnnl_stream_t st;
    int refs;
    void *p[NPARTS];
    size_t n[NPARTS];
} A = {.lock = PTHREAD_MUTEX_INITIALIZER};

#define WINO_SUB_PIXELS 16384 // least pixels of a sub-batch (images x h x w)

static bool ok(dnnl_status_t s) { return s == dnnl_success; }

// (oneDNN reads src through a non-const handle)
static void *mut(const void *p) { return (void *)(uintptr_t)p; }

static void *alloc(size_t bytes) {
    void *p = NULL;
    return posix_memalign(&p, 64, bytes ? bytes : 64) ? NULL : p;
}

// grows one part of the arena to at least n bytes (under the lock)
static bool grow(void **p, size_t *have, size_t n) {
    if (n <= *have) return true;
    void *q = alloc(n);
    if (!q) return false;
    free(*p);
    *p = q;
    *have = n;
    return true;
}

static dnnl_memory_t mem(const dnnl_memory_desc_t *md) {
    dnnl_memory_t m = NULL;
    return ok(dnnl_memory_create(&m, md, A.eng, DNNL_MEMORY_NONE)) ? m : NULL;
}

static const dnnl_memory_desc_t *md_of(dnnl_memory_t m) {
    const dnnl_memory_desc_t *d = NULL;
    return m && ok(dnnl_memory_get_memory_desc(m, &d)) ? d : NULL;
}

// reorder a -> b (added into b where add)
static dnnl_primitive_t reorder(dnnl_memory_t a, dnnl_memory_t b, bool add) {
    const dnnl_memory_desc_t *da = md_of(a), *db = md_of(b);
    if (!da || !db) return NULL;
    dnnl_primitive_attr_t at = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t p = NULL;
    bool good = true;
    if (add)
        good = ok(dnnl_primitive_attr_create(&at)) && ok(dnnl_post_ops_create(&po)) &&
               ok(dnnl_post_ops_append_sum(po, 1.0f)) &&
               ok(dnnl_primitive_attr_set_post_ops(at, po));
    if (good && ok(dnnl_reorder_primitive_desc_create(&pd, da, A.eng, db, A.eng, at)))
        good = ok(dnnl_primitive_create(&p, pd));
    dnnl_primitive_desc_destroy(pd);
    dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(at);
    return good ? p : NULL;
}

void nn_conv_wino_free(nn_conv_wino *c) {
    if (!c) return;
    dnnl_primitive_t *ps[] = {&c->f,    &c->bd,   &c->bw,   &c->rx,  &c->rw,  &c->ry,  &c->rdy,
                              &c->rwd,  &c->rdx,  &c->rdxa, &c->rdw, &c->hrx, &c->hrw, &c->hry,
                              &c->hrdy, &c->hrwd, &c->hrdx, &c->h2x, &c->h2dy};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        dnnl_primitive_destroy(*ps[i]);
    dnnl_memory_t ms[] = {c->ux,  c->uw,  c->uy, c->udy, c->udx, c->udw, c->ub,  c->bx,
                          c->bwf, c->bwd, c->by, c->bdy, c->bdx, c->bdw, c->spf, c->spd,
                          c->spw, c->hx,  c->hw, c->hy,  c->hdy, c->hdx};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
        dnnl_memory_destroy(ms[i]);
    pthread_mutex_lock(&A.lock);
    if (--A.refs == 0)
        for (int k = 0; k < NPARTS; k++)
            free(A.p[k]), A.p[k] = NULL, A.n[k] = 0;
    pthread_mutex_unlock(&A.lock);
    free(c);
}

static size_t sp_size(dnnl_primitive_desc_t pd) {
    const dnnl_memory_desc_t *m = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    return m ? dnnl_memory_desc_get_size(m) : 0;
}

static dnnl_memory_t sp_mem(dnnl_primitive_desc_t pd) {
    const dnnl_memory_desc_t *m = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    return m ? mem(m) : NULL;
}

// Builds the primitives (false: oneDNN has no Winograd implementation for the shape here)
static bool build(nn_conv_wino *c) {
    const dnnl_dim_t N = (dnnl_dim_t)c->s, C = (dnnl_dim_t)c->c, H = (dnnl_dim_t)c->h,
                     W = (dnnl_dim_t)c->w, O = (dnnl_dim_t)c->co;
    const dnnl_dims_t xd = {N, C, H, W}, wd = {O, C, 3, 3}, bd = {O}, yd = {N, O, H, W};
    const dnnl_dims_t s = {1, 1}, d = {0, 0}, p = {1, 1};
    dnnl_memory_desc_t xm, wm, bm, ym, xa, wa, ya;
    dnnl_convolution_desc_t cd;
    dnnl_primitive_attr_t at = NULL;
    dnnl_primitive_desc_t fpd = NULL, bdpd = NULL, bwpd = NULL;
    bool good =
        ok(dnnl_memory_desc_init_by_tag(&xm, 4, xd, dnnl_f32, dnnl_nchw)) &&
        ok(dnnl_memory_desc_init_by_tag(&wm, 4, wd, dnnl_f32, dnnl_oihw)) &&
        ok(dnnl_memory_desc_init_by_tag(&bm, 1, bd, dnnl_f32, dnnl_a)) &&
        ok(dnnl_memory_desc_init_by_tag(&ym, 4, yd, dnnl_f32, dnnl_nchw)) &&
        ok(dnnl_memory_desc_init_by_tag(&xa, 4, xd, dnnl_f32, dnnl_format_tag_any)) &&
        ok(dnnl_memory_desc_init_by_tag(&wa, 4, wd, dnnl_f32, dnnl_format_tag_any)) &&
        ok(dnnl_memory_desc_init_by_tag(&ya, 4, yd, dnnl_f32, dnnl_format_tag_any)) &&
        ok(dnnl_primitive_attr_create(&at)) &&
        ok(dnnl_primitive_attr_set_scratchpad_mode(at, dnnl_scratchpad_mode_user)) &&
        ok(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_training,
                                                      dnnl_convolution_winograd, &xa, &wa,
                                                      c->bias ? &bm : NULL, &ya, s, d, p, p)) &&
        ok(dnnl_primitive_desc_create(&fpd, &cd, at, A.eng, NULL)) &&
        ok(dnnl_dilated_convolution_backward_data_desc_init(&cd, dnnl_convolution_winograd, &xa,
                                                            &wa, &ya, s, d, p, p)) &&
        ok(dnnl_primitive_desc_create(&bdpd, &cd, at, A.eng, fpd)) &&
        ok(dnnl_dilated_convolution_backward_weights_desc_init(&cd, dnnl_convolution_winograd, &xa,
                                                               &wa, NULL, &ya, s, d, p, p)) &&
        ok(dnnl_primitive_desc_create(&bwpd, &cd, at, A.eng, fpd)) &&
        ok(dnnl_primitive_create(&c->f, fpd)) && ok(dnnl_primitive_create(&c->bd, bdpd)) &&
        ok(dnnl_primitive_create(&c->bw, bwpd));
    if (good) {
        // the primitives' layouts (backward-weights reads its input and output gradient
        // through forward's and backward-data's memories: they must be theirs)
        const dnnl_memory_desc_t *fx = dnnl_primitive_desc_query_md(fpd, dnnl_query_src_md, 0),
                                 *fw = dnnl_primitive_desc_query_md(fpd, dnnl_query_weights_md, 0),
                                 *fy = dnnl_primitive_desc_query_md(fpd, dnnl_query_dst_md, 0),
                                 *ddy =
                                     dnnl_primitive_desc_query_md(bdpd, dnnl_query_diff_dst_md, 0),
                                 *dw = dnnl_primitive_desc_query_md(bdpd, dnnl_query_weights_md, 0),
                                 *ddx =
                                     dnnl_primitive_desc_query_md(bdpd, dnnl_query_diff_src_md, 0),
                                 *wx = dnnl_primitive_desc_query_md(bwpd, dnnl_query_src_md, 0),
                                 *wdy =
                                     dnnl_primitive_desc_query_md(bwpd, dnnl_query_diff_dst_md, 0),
                                 *wdw = dnnl_primitive_desc_query_md(bwpd,
                                                                     dnnl_query_diff_weights_md, 0);
        good = fx && fw && fy && ddy && dw && ddx && wx && wdy && wdw &&
               dnnl_memory_desc_equal(fx, wx) && dnnl_memory_desc_equal(ddy, wdy);
        if (good) {
            c->ux = mem(&xm), c->uw = mem(&wm), c->uy = mem(&ym), c->udy = mem(&ym);
            c->udx = mem(&xm), c->udw = mem(&wm), c->ub = mem(&bm);
            c->bx = mem(fx), c->bwf = mem(fw), c->by = mem(fy), c->bdy = mem(ddy);
            c->bwd = mem(dw), c->bdx = mem(ddx), c->bdw = mem(wdw);
            c->need[P_X] = dnnl_memory_desc_get_size(fx);
            c->need[P_Y] = dnnl_memory_desc_get_size(fy);
            if (dnnl_memory_desc_get_size(ddy) > c->need[P_Y])
                c->need[P_Y] = dnnl_memory_desc_get_size(ddy);
            c->need[P_DX] = dnnl_memory_desc_get_size(ddx);
            c->need[P_WF] = dnnl_memory_desc_get_size(fw);
            c->need[P_WD] = dnnl_memory_desc_get_size(dw);
            c->need[P_DW] = dnnl_memory_desc_get_size(wdw);
            c->need[P_SP] = sp_size(fpd);
            if (sp_size(bdpd) > c->need[P_SP]) c->need[P_SP] = sp_size(bdpd);
            if (sp_size(bwpd) > c->need[P_SP]) c->need[P_SP] = sp_size(bwpd);
            c->spf = sp_mem(fpd), c->spd = sp_mem(bdpd), c->spw = sp_mem(bwpd);
            good = c->ux && c->uw && c->uy && c->udy && c->udx && c->udw && c->ub && c->bx &&
                   c->bwf && c->by && c->bdy && c->bwd && c->bdx && c->bdw && c->spf && c->spd &&
                   c->spw;
        }
        if (good) {
            c->rx = reorder(c->ux, c->bx, false), c->rw = reorder(c->uw, c->bwf, false);
            c->ry = reorder(c->by, c->uy, false), c->rdy = reorder(c->udy, c->bdy, false);
            c->rwd = reorder(c->uw, c->bwd, false), c->rdx = reorder(c->bdx, c->udx, false);
            c->rdxa = reorder(c->bdx, c->udx, true), c->rdw = reorder(c->bdw, c->udw, true);
            good = c->rx && c->rw && c->ry && c->rdy && c->rwd && c->rdx && c->rdxa && c->rdw;
        }
    }
    dnnl_primitive_desc_destroy(fpd);
    dnnl_primitive_desc_destroy(bdpd);
    dnnl_primitive_desc_destroy(bwpd);
    dnnl_primitive_attr_destroy(at);
    return good;
}

static void engine_once(void) {
    if (!ok(dnnl_engine_create(&A.eng, dnnl_cpu, 0))) A.eng = NULL;
    if (A.eng && !ok(dnnl_stream_create(&A.st, A.eng, dnnl_stream_default_flags))) A.st = NULL;
}

nn_conv_wino *nn_conv_wino_new(size_t n, size_t c_in, size_t h, size_t w, size_t c_out, bool bias) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, engine_once);
    if (!A.eng || !A.st || n == 0 || c_in == 0 || c_out == 0 || h == 0 || w == 0) return NULL;
    nn_conv_wino *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    *c = (nn_conv_wino){.n = n, .c = c_in, .h = h, .w = w, .co = c_out, .bias = bias};
    c->s = n;
    for (size_t d = 1; d <= n; d++)
        if (n % d == 0 && d * h * w >= WINO_SUB_PIXELS) {
            c->s = d;
            break;
        }
    c->xs = c_in * h * w, c->ys = c_out * h * w;
    pthread_mutex_lock(&A.lock);
    A.refs++;
    pthread_mutex_unlock(&A.lock);
    if (!build(c)) {
        nn_conv_wino_free(c);
        return NULL;
    }
    pthread_mutex_lock(&A.lock);
    bool got = true;
    for (int k = 0; k < NPARTS && got; k++)
        got = grow(&A.p[k], &A.n[k], c->need[k]);
    pthread_mutex_unlock(&A.lock);
    if (!got) {
        nn_conv_wino_free(c);
        return NULL;
    }
    return c;
}

size_t nn_conv_wino_sub(const nn_conv_wino *c) { return c->s; }

bool nn_conv_wino_use_bf16(nn_conv_wino *c) {
    if (c->hx) return true;
    const dnnl_dim_t N = (dnnl_dim_t)c->s, C = (dnnl_dim_t)c->c, H = (dnnl_dim_t)c->h,
                     W = (dnnl_dim_t)c->w, O = (dnnl_dim_t)c->co;
    const dnnl_dims_t xd = {N, C, H, W}, wd = {O, C, 3, 3}, yd = {N, O, H, W};
    dnnl_memory_desc_t xm, wm, ym;
    if (!ok(dnnl_memory_desc_init_by_tag(&xm, 4, xd, dnnl_bf16, dnnl_nchw)) ||
        !ok(dnnl_memory_desc_init_by_tag(&wm, 4, wd, dnnl_bf16, dnnl_oihw)) ||
        !ok(dnnl_memory_desc_init_by_tag(&ym, 4, yd, dnnl_bf16, dnnl_nchw)))
        return false;
    c->hx = mem(&xm), c->hw = mem(&wm), c->hy = mem(&ym), c->hdy = mem(&ym), c->hdx = mem(&xm);
    if (c->hx && c->hw && c->hy && c->hdy && c->hdx) {
        c->hrx = reorder(c->hx, c->bx, false), c->hrw = reorder(c->hw, c->bwf, false);
        c->hry = reorder(c->by, c->hy, false), c->hrdy = reorder(c->hdy, c->bdy, false);
        c->hrwd = reorder(c->hw, c->bwd, false), c->hrdx = reorder(c->bdx, c->hdx, false);
        c->h2x = reorder(c->ux, c->hx, false), c->h2dy = reorder(c->udy, c->hdy, false);
    }
    const size_t hn = (c->xs > c->ys ? c->xs : c->ys) * c->s * sizeof(uint16_t);
    pthread_mutex_lock(&A.lock);
    const bool got = grow(&A.p[P_H], &A.n[P_H], hn);
    pthread_mutex_unlock(&A.lock);
    if (got && c->hrx && c->hrw && c->hry && c->hrdy && c->hrwd && c->hrdx && c->h2x && c->h2dy)
        return true;
    dnnl_memory_t *ms[] = {&c->hx, &c->hw, &c->hy, &c->hdy, &c->hdx};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
        dnnl_memory_destroy(*ms[i]), *ms[i] = NULL;
    dnnl_primitive_t *ps[] = {&c->hrx,  &c->hrw,  &c->hry, &c->hrdy,
                              &c->hrwd, &c->hrdx, &c->h2x, &c->h2dy};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        dnnl_primitive_destroy(*ps[i]), *ps[i] = NULL;
    return false;
}

static void set(dnnl_memory_t m, const void *p) {
    NN_ASSERT(ok(dnnl_memory_set_data_handle(m, mut(p))));
}

static void run(dnnl_primitive_t p, int n, const dnnl_exec_arg_t *args) {
    NN_ASSERT(ok(dnnl_primitive_execute(p, A.st, n, args)));
}

static void run_reorder(dnnl_primitive_t p, dnnl_memory_t from, dnnl_memory_t to) {
    const dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    run(p, 2, a);
}

// The direct convolution's FLOPs of one pass (what the bench's rates count: Winograd's own
// are fewer, so its GFLOP/s is the direct-equivalent rate)
static uint64_t pass_flops(const nn_conv_wino *c, size_t n) {
    return 2 * (uint64_t)n * c->co * c->c * 9 * c->h * c->w;
}

// A sub-batch's x or dy (f32 at f, else bf16 at h) into its blocked memory b: through the
// f32 reorder r, or the bf16 one hr, after rounding into the arena (h2) in bf16 mode
static void load(const nn_conv_wino *c, const float *f, const uint16_t *h, dnnl_memory_t uf,
                 dnnl_memory_t uh, dnnl_primitive_t r, dnnl_primitive_t hr, dnnl_primitive_t h2,
                 dnnl_memory_t b) {
    if (f && !c->hx) {
        set(uf, f);
        run_reorder(r, uf, b);
        return;
    }
    if (f) {
        set(uf, f), set(uh, A.p[P_H]);
        run_reorder(h2, uf, uh);
    } else {
        set(uh, h);
    }
    run_reorder(hr, uh, b);
}

// The moments (nn_plane_moments) of np output planes from plane i0, into mom by plane
static void sub_moments(const nn_conv_wino *c, const float *y, const uint16_t *y16, size_t i0,
                        size_t np, float *mom) {
    const size_t L = c->h * c->w;
    NN_OMP_FOR(np * L)
    for (size_t i = i0; i < i0 + np; i++) {
        if (y16)
            nn_plane_moments_bf16(y16 + i * L, L, mom + NN_MOMENTS * i);
        else
            nn_plane_moments(y + i * L, L, mom + NN_MOMENTS * i);
    }
}

void nn_conv_wino_forward(nn_conv_wino *c, const float *x, const uint16_t *x16, const float *w,
                          const uint16_t *w16, const float *b, float *y, uint16_t *y16, size_t n,
                          float *mom) {
    NN_ASSERT(c && !x != !x16 && !w != !w16 && !y != !y16 && (!c->bias || b) && n >= 1 &&
              n <= c->n && n % c->s == 0 && (c->hx || (!x16 && !w16 && !y16)));
    nn_flop_add(pass_flops(c, n));
    pthread_mutex_lock(&A.lock);
    dnnl_memory_t uw = w ? c->uw : c->hw, uy = y ? c->uy : c->hy;
    set(uw, w ? (const void *)w : (const void *)w16), set(c->bwf, A.p[P_WF]);
    run_reorder(w ? c->rw : c->hrw, uw, c->bwf);
    set(c->bx, A.p[P_X]), set(c->by, A.p[P_Y]), set(c->spf, A.p[P_SP]);
    if (c->bias) set(c->ub, b);
    for (size_t i = 0; i < n; i += c->s) {
        set(uy, y ? (void *)(y + i * c->ys) : (void *)(y16 + i * c->ys));
        load(c, x ? x + i * c->xs : NULL, x ? NULL : x16 + i * c->xs, c->ux, c->hx, c->rx, c->hrx,
             c->h2x, c->bx);
        const dnnl_exec_arg_t a[5] = {{DNNL_ARG_SCRATCHPAD, c->spf},
                                      {DNNL_ARG_SRC, c->bx},
                                      {DNNL_ARG_WEIGHTS, c->bwf},
                                      {DNNL_ARG_DST, c->by},
                                      {DNNL_ARG_BIAS, c->ub}};
        run(c->f, c->bias ? 5 : 4, a);
        run_reorder(y ? c->ry : c->hry, c->by, uy);
        // (the sub-batch's planes while they are in cache: from the whole output after the
        // loop, they came back from memory, 2.2 ms of the cnn's 66 ms SGD step)
        if (mom) {
            NN_ASSERT(ok(dnnl_stream_wait(A.st)));
            sub_moments(c, y, y16, i * c->co, c->s * c->co, mom);
        }
    }
    NN_ASSERT(ok(dnnl_stream_wait(A.st)));
    pthread_mutex_unlock(&A.lock);
}

void nn_conv_wino_backward(nn_conv_wino *c, const float *x, const uint16_t *x16, const float *dy,
                           const uint16_t *dy16, const float *w, const uint16_t *w16, float *dx,
                           uint16_t *dx16, bool set_dx, float *dw, size_t n) {
    NN_ASSERT(c && !x != !x16 && !dy != !dy16 && !w != !w16 && !(dx && dx16) && dw && n >= 1 &&
              n <= c->n && n % c->s == 0 && (!dx16 || set_dx) &&
              (c->hx || (!x16 && !dy16 && !w16 && !dx16)));
    const bool gx = dx || dx16;
    nn_flop_add(pass_flops(c, n) * (gx ? 2 : 1));
    pthread_mutex_lock(&A.lock);
    dnnl_memory_t uw = w ? c->uw : c->hw, udx = dx16 ? c->hdx : c->udx;
    set(c->bx, A.p[P_X]), set(c->bdy, A.p[P_Y]), set(c->bdx, A.p[P_DX]);
    set(c->spw, A.p[P_SP]), set(c->spd, A.p[P_SP]);
    set(c->bdw, A.p[P_DW]), set(c->udw, dw);
    if (gx) {
        set(uw, w ? (const void *)w : (const void *)w16), set(c->bwd, A.p[P_WD]);
        run_reorder(w ? c->rwd : c->hrwd, uw, c->bwd);
    }
    for (size_t i = 0; i < n; i += c->s) {
        load(c, x ? x + i * c->xs : NULL, x ? NULL : x16 + i * c->xs, c->ux, c->hx, c->rx, c->hrx,
             c->h2x, c->bx);
        load(c, dy ? dy + i * c->ys : NULL, dy ? NULL : dy16 + i * c->ys, c->udy, c->hdy, c->rdy,
             c->hrdy, c->h2dy, c->bdy);
        const dnnl_exec_arg_t aw[4] = {{DNNL_ARG_SCRATCHPAD, c->spw},
                                       {DNNL_ARG_SRC, c->bx},
                                       {DNNL_ARG_DIFF_DST, c->bdy},
                                       {DNNL_ARG_DIFF_WEIGHTS, c->bdw}};
        run(c->bw, 4, aw);
        run_reorder(c->rdw, c->bdw, c->udw); // dW += (the sum post-op), sub-batch by sub-batch
        if (!gx) continue;
        set(udx, dx ? (void *)(dx + i * c->xs) : (void *)(dx16 + i * c->xs));
        const dnnl_exec_arg_t ad[4] = {{DNNL_ARG_SCRATCHPAD, c->spd},
                                       {DNNL_ARG_DIFF_DST, c->bdy},
                                       {DNNL_ARG_WEIGHTS, c->bwd},
                                       {DNNL_ARG_DIFF_SRC, c->bdx}};
        run(c->bd, 4, ad);
        run_reorder(dx16 ? c->hrdx : set_dx ? c->rdx : c->rdxa, c->bdx, udx);
    }
    NN_ASSERT(ok(dnnl_stream_wait(A.st)));
    pthread_mutex_unlock(&A.lock);
}
