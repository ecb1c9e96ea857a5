/*
 * conv2d.c — 2-d convolution (PyTorch nn.Conv2d: stride, zero padding, dilation, groups,
 * optional bias) as im2col + GEMM, forward and backward.
 *
 * With NCHW images and OIHW weights the natural im2col is the transposed one (Caffe's):
 * rows (c, k1, k2), columns (n, o1, o2). Its rows are runs of input rows, so it is built
 * with memcpy-length copies, and y = W · colᵀ lands directly in NCHW order. Threads work
 * over the batch, each on its own chunk of samples (about NN_CONV_CHUNK_COLS columns, so the
 * single-threaded GEMM runs near its peak and the chunk stays in the core's cache) in its
 * own buffers: no barrier inside a layer, no GEMM too small to share between cores. A chunk
 * of one sample (images of 16x16 and more) multiplies straight into the output image and
 * reads dy in place. dW is summed per thread and the partial sums are added in thread
 * order (the same result for the same thread count). The chunk's im2col is rebuilt in
 * backward instead of being kept, so the layer holds no batch-sized activations: x and dy
 * are borrowed. The K-FAC matrices (a: rows (n, o1, o2) x columns (c, k1, k2), ngd_unfold's
 * layout; g: dy as (N*L, c_out)) are only built when nn_conv2d_stats asks for them, in
 * the caller's scratch (one per model: its layers are observed one at a time). No
 * transposed convolution, no padding modes other than zeros. In bf16 mode, on a CPU with
 * AMX, 3x3 'same' layers with 32k input and output channels (and 16k pixels) skip im2col:
 * forward, dx and dW run image by image on the tile unit (conv_amx.c).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "nn.h"

#define NN_CONV_CHUNK_COLS 256 // least GEMM width (chunk * L) of a single-threaded GEMM
// bf16 dW of layers of at most this many output channels per group as dWᵀ (d_in, cog) +=
// col · dyᵀ: oneDNN's bf16 kernels ran the cnn's 32- and 64-channel products 1.2-1.3x faster
// with the channels as columns (the 8-step cnn parameter CRCs were unchanged), but vgg16bn's
// backward (up to 512 channels) went 360 -> 411 ms with every layer so
#define NN_CONV_DWT_MAX 64
#ifndef NN_CONV_BF16_BWD_COLS
#define NN_CONV_BF16_BWD_COLS 1024 // bf16 dW blocks: oneDNN's bf16 GEMM wants the longer sum
#endif

static size_t max_threads(void) {
#ifdef _OPENMP
    const int t = omp_get_max_threads();
    return t > 1 ? (size_t)t : 1;
#else
    return 1;
#endif
}

// Output rows per block of a one-sample chunk: about `cols` columns (l->fcols, l->bcols), so
// that the block's im2col (d_in x columns) is written and read while it is in the core's cache.
static size_t block_rows(size_t cols, size_t OW) {
    const size_t r = cols / OW;
    return r ? r : 1;
}

// The columns of one thread's buffers: colt_n (im2col of a block, forward's or backward's),
// dcol_n (its gradient, or the transposed convolution's im2col) and dy16_n (bf16 dy of a
// backward block), from the chunk and the block widths fcols and bcols
static void buffer_sizes(nn_conv2d *l) {
    const ngd_conv_geom *G = &l->geom;
    const size_t L = l->oh * l->ow, ncol = l->chunk * L;
    const size_t fc = l->chunk > 1 ? ncol : block_rows(l->fcols, l->ow) * l->ow;
    const size_t bc = l->chunk > 1 ? ncol : block_rows(l->bcols, l->ow) * l->ow;
    l->colt_n = nn_mul(l->d_in, fc > bc ? fc : bc);
    l->dcol_n = nn_mul(l->d_in, bc);
    if (l->wflip) {
        const size_t tcols =
            l->chunk > 1 ? l->chunk * G->h * G->w : block_rows(l->fcols, G->w) * G->w;
        const size_t tcol = nn_mul(nn_mul(l->c_out, G->k1 * G->k2), tcols);
        if (tcol > l->dcol_n) l->dcol_n = tcol;
    }
    l->dy16_n = nn_mul(l->c_out, bc);
}

nn_status nn_conv2d_init(nn_conv2d *l, const ngd_conv_geom *geom, size_t c_out, bool bias,
                         size_t max_batch, nn_rng *rng) {
    memset(l, 0, sizeof *l);
    if (!geom || !rng || c_out == 0 || max_batch == 0 || geom->groups == 0 || geom->c_in == 0 ||
        geom->c_in % geom->groups || c_out % geom->groups)
        return NN_ERR_ARG;
    const size_t oh = ngd_conv_out_h(geom), ow = ngd_conv_out_w(geom);
    if (oh == 0 || ow == 0) return NN_ERR_ARG;
    l->geom = *geom;
    l->c_out = c_out;
    l->oh = oh;
    l->ow = ow;
    l->max_batch = max_batch;
    l->d_in = geom->c_in / geom->groups * geom->k1 * geom->k2;
    const size_t L = oh * ow;
    l->chunk = (NN_CONV_CHUNK_COLS + L - 1) / L;
    if (l->chunk > max_batch) l->chunk = max_batch;
    const size_t ncol = l->chunk * L, nchunks = (max_batch + l->chunk - 1) / l->chunk;
    l->nthr = max_threads() < nchunks ? max_threads() : nchunks;
    l->w = nn_malloc(nn_mul(c_out, l->d_in), sizeof(float));
    l->dw = nn_calloc(nn_mul(c_out, l->d_in), sizeof(float));
    if (bias) {
        l->b = nn_malloc(c_out, sizeof(float));
        l->db = nn_calloc(c_out, sizeof(float));
    }
    // dx by the transposed convolution: stride 1, no groups, padding at most the kernel's
    // reach (so the flipped kernel's padding (k-1)·dil − p is not negative)
    const bool tconv = geom->s1 == 1 && geom->s2 == 1 && geom->groups == 1 &&
                       geom->p1 <= (geom->k1 - 1) * geom->dil1 &&
                       geom->p2 <= (geom->k2 - 1) * geom->dil2;
    // a one-sample chunk is worked block by block of output rows: buffers of one block
    l->fcols = l->bcols = NN_CONV_CHUNK_COLS;
    if (tconv) {
        l->tgeom = (ngd_conv_geom){c_out,
                                   oh,
                                   ow,
                                   geom->k1,
                                   geom->k2,
                                   1,
                                   1,
                                   (geom->k1 - 1) * geom->dil1 - geom->p1,
                                   (geom->k2 - 1) * geom->dil2 - geom->p2,
                                   geom->dil1,
                                   geom->dil2,
                                   1};
        l->wflip = nn_malloc(nn_mul(c_out, l->d_in), sizeof(float));
    }
    buffer_sizes(l);
    // ybuf: a chunk's outputs side by side, and with tconv its input gradients
    size_t yb = nn_mul(c_out, ncol);
    if (tconv && nn_mul(geom->c_in, l->chunk * geom->h * geom->w) > yb)
        yb = nn_mul(geom->c_in, l->chunk * geom->h * geom->w);
    l->ybuf_n = l->chunk > 1 ? yb : 0;
    l->colt = nn_malloc(nn_mul(l->nthr, l->colt_n), sizeof(float));
    l->dcolt = nn_malloc(nn_mul(l->nthr, l->dcol_n), sizeof(float));
    if (l->chunk > 1) l->ybuf = nn_malloc(nn_mul(l->nthr, yb), sizeof(float));
    l->dwpart = nn_malloc(nn_mul(l->nthr, nn_mul(c_out, l->d_in)), sizeof(float));
    l->moments = nn_malloc(nn_mul(max_batch, c_out), NN_MOMENTS * sizeof(float));
    // small planes of a 'same' stride-1 convolution: zero-bordered copies of a chunk (the
    // transposed convolution's planes have the same shape: its padding (k-1)·dil − p = p)
    const bool padded =
        l->chunk > 1 && geom->s1 == 1 && geom->s2 == 1 && oh == geom->h && ow == geom->w;
    if (padded) {
        const size_t planes = l->chunk * (geom->c_in > c_out ? geom->c_in : c_out);
        l->pad_n = nn_mul(nn_mul(planes, (geom->h + 2 * geom->p1) * (geom->w + 2 * geom->p2)),
                          sizeof(float));
        l->pad = nn_calloc(nn_mul(l->nthr, l->pad_n), 1);
    }
    // f32 3x3 'same' layers without im2col (conv_direct.c): forward and, on wflip, dx
    const bool shape3 = geom->k1 == 3 && geom->k2 == 3 && geom->s1 == 1 && geom->s2 == 1 &&
                        geom->p1 == 1 && geom->p2 == 1 && geom->dil1 == 1 && geom->dil2 == 1 &&
                        geom->groups == 1;
    const bool same3 = shape3 && nn_conv3x3_direct_usable();
    l->direct = same3 && nn_conv3x3_direct_fits(geom->c_in, geom->h, geom->w, c_out);
    l->direct_t = same3 && tconv && nn_conv3x3_direct_fits(c_out, geom->h, geom->w, geom->c_in);
    if (l->direct || l->direct_t) {
        const size_t cmax = l->direct_t && c_out > geom->c_in ? c_out : geom->c_in;
        l->xpd_n = nn_conv3x3_direct_pad_n(cmax, geom->h, geom->w);
        l->xpd = nn_malloc(nn_mul(l->nthr, l->xpd_n), sizeof(float));
        for (size_t t = 0; l->xpd && t < l->nthr; t++)
            nn_conv3x3_direct_pad_init(l->xpd + t * l->xpd_n, cmax, geom->h, geom->w);
        if (l->direct)
            l->wpk = nn_malloc(nn_conv3x3_direct_wpk_n(c_out, geom->c_in), sizeof(float));
        if (l->direct_t)
            l->wpkf = nn_malloc(nn_conv3x3_direct_wpk_n(geom->c_in, c_out), sizeof(float));
    }
    // dW image by image without im2col (conv_direct.c) in one-image chunks of a 3x3 'same'
    // layer; each thread's block of dwb: its part of dW, then the kernel's buffer (sized
    // for nn_conv3x3_dw16 too, which needs less)
    l->dw_direct =
        same3 && l->chunk == 1 && nn_conv3x3_dw_fits(geom->c_in, geom->h, geom->w, c_out);
    if (l->dw_direct) {
        l->dwb_n =
            nn_mul(c_out, l->d_in) + nn_conv3x3_dw_buf_n(geom->c_in, geom->h, geom->w, c_out);
        l->dwb_n = (l->dwb_n + 15) / 16 * 16; // (each block on a cache line)
        l->dwb = nn_calloc(nn_mul(l->nthr, l->dwb_n), sizeof(float));
    }
    if (!l->w || !l->dw || (bias && (!l->b || !l->db)) || !l->colt || !l->dcolt ||
        (l->dw_direct && !l->dwb) || (l->chunk > 1 && !l->ybuf) || !l->dwpart ||
        (tconv && !l->wflip) || (padded && !l->pad) || !l->moments ||
        ((l->direct || l->direct_t) && !l->xpd) || (l->direct && !l->wpk) ||
        (l->direct_t && !l->wpkf)) {
        nn_conv2d_free(l);
        return NN_ERR_NOMEM;
    }
    // batches that its sub-batch divides by Winograd F(4x4, 3x3) (conv_wino.c) where it was
    // measured to pay: 16+ channels in and out (the blocked layouts' width), images of 4x4
    // and more (one 6x6 tile for a 2x2 image ran 0.7x). NULL: oneDNN has none here; the
    // kernels above run. (Not tied to those kernels: NGD_CONV_DIRECT=0 keeps it.)
    if (shape3 && nn_conv_winograd() && geom->c_in >= 16 && c_out >= 16 && geom->h >= 4 &&
        geom->w >= 4)
        l->wino = nn_conv_wino_new(max_batch, geom->c_in, geom->h, geom->w, c_out, bias);
    // 3x3 'same' layers on images of at most 2x2: every output pixel reaches every input
    // pixel, so the layer is a dense map of (c_in·L) -> (c_out·L) values per image, W' (im2col
    // multiplies the padding's zeros: 9 taps where 4 are real at 2x2)
    const bool dense = geom->k1 == 3 && geom->k2 == 3 && geom->s1 == 1 && geom->s2 == 1 &&
                       geom->p1 == 1 && geom->p2 == 1 && geom->dil1 == 1 && geom->dil2 == 1 &&
                       geom->groups == 1 && oh == geom->h && ow == geom->w && geom->h <= 2 &&
                       geom->w <= 2 && nn_mul(c_out * L, geom->c_in * L) <= ((size_t)1 << 24);
    if (dense) {
        l->wd = nn_malloc(nn_mul(c_out * L, geom->c_in * L), sizeof(float));
        l->dwd = nn_malloc(nn_mul(c_out * L, geom->c_in * L), sizeof(float));
        if (bias) l->bd = nn_malloc(c_out * L, sizeof(float));
        if (!l->wd || !l->dwd || (bias && !l->bd)) {
            nn_conv2d_free(l);
            return NN_ERR_NOMEM;
        }
        l->dense = true;
    }
    const float bound = 1.0f / sqrtf((float)l->d_in); // PyTorch default, as for Linear
    nn_rng_fill_uniform(rng, l->w, c_out * l->d_in, -bound, bound);
    if (bias) nn_rng_fill_uniform(rng, l->b, c_out, -bound, bound);
    return NN_OK;
}

void nn_conv2d_free(nn_conv2d *l) {
    free(l->w);
    free(l->dw);
    free(l->b);
    free(l->db);
    free(l->colt);
    free(l->dcolt);
    free(l->ybuf);
    free(l->dwpart);
    free(l->wflip);
    free(l->w16);
    free(l->wflip16);
    free(l->col16);
    free(l->dy16);
    free(l->x16);
    free(l->dyx16);
    free(l->pad);
    free(l->moments);
    free(l->yt);
    free(l->dxt);
    free(l->wt);
    free(l->wtf);
    free(l->xs);
    free(l->dyp);
    free(l->dwt);
    free(l->xpd), free(l->wpk), free(l->wpkf);
    free(l->wp);
    free(l->wpf);
    free(l->dwb);
    free(l->dec);
    nn_conv_wino_free(l->wino);
    free(l->wd), free(l->dwd), free(l->bd);
    memset(l, 0, sizeof *l);
}

// dW on the tile unit too (with l->amx): only for one-sample chunks (images of 256 pixels and
// more). Sample by sample, its sums by tap (c_out·c_in·9 floats) are read and written once per
// image: at vgg16bn's 512 channels and 8x8 images, 9.4 MB per image, which made its backward
// 1.45x slower than im2col + GEMM over the chunk.
static bool amx_dw_on(const nn_conv2d *l) { return l->amx && l->chunk == 1; }

// dW by image without im2col (nn_conv3x3_dw, _dw16) in a backward of bf16 operands or not,
// with a dx or not: not where a dx without wflip needs the im2col blocks anyway
static bool dw_by_image(const nn_conv2d *l, bool bf16, bool dx) {
    return (bf16 ? l->dw16 || l->dw32 : l->dw_direct) && (!dx || l->wflip);
}

static _Atomic bool wino_on = true;
void nn_conv_set_winograd(bool on) { wino_on = on; }
bool nn_conv_winograd(void) {
    const char *e = getenv("NGD_CONV_WINOGRAD");
    return wino_on && !(e && !strcmp(e, "0"));
}

// The layer's own kernels from now on (a forward made on Winograd is not followed by its
// backward there)
static void wino_drop(nn_conv2d *l) {
    nn_conv_wino_free(l->wino);
    l->wino = NULL;
    l->wino_fwd = false;
}

nn_status nn_conv2d_use_bf16(nn_conv2d *l) {
    if (l->w16) return NN_OK;
    // Winograd in bf16 mode only where the bf16 kernels do not pay (a CPU whose bf16 dot
    // products are slower than its FMAs: the f32 kernels run there anyway, on bf16 values).
    // Out of memory below, the layer stays f32 without it (its bf16 mode would round every
    // f32 input)
    if (l->wino && (nn_conv3x3_direct16_pays() || !nn_conv_wino_use_bf16(l->wino))) wino_drop(l);
    free(l->wd), free(l->dwd), free(l->bd); // (the dense map is f32 only)
    l->wd = l->dwd = l->bd = NULL;
    l->dense = false;
    l->dw_t = l->c_out / l->geom.groups <= NN_CONV_DWT_MAX;
    const size_t L = l->oh * l->ow;
    // dW's GEMM over longer blocks (its sum runs over the block's columns); the float
    // buffers follow the new block size
    const size_t bcols0 = l->bcols;
    l->bcols = NN_CONV_BF16_BWD_COLS;
    buffer_sizes(l);
    float *colt = nn_malloc(nn_mul(l->nthr, l->colt_n), sizeof(float));
    float *dcolt = nn_malloc(nn_mul(l->nthr, l->dcol_n), sizeof(float));
    if (!colt || !dcolt) {
        free(colt), free(dcolt);
        l->bcols = bcols0;
        buffer_sizes(l);
        wino_drop(l);
        return NN_ERR_NOMEM;
    }
    free(l->colt), free(l->dcolt);
    l->colt = colt, l->dcolt = dcolt;
    // the zero-bordered planes now hold 2-byte elements: their borders move
    if (l->pad) memset(l->pad, 0, l->nthr * l->pad_n);
    const size_t nc = l->colt_n > l->dcol_n ? l->colt_n : l->dcol_n;
    l->w16 = nn_malloc(nn_mul(l->c_out, l->d_in), sizeof(uint16_t));
    if (l->wflip) l->wflip16 = nn_malloc(nn_mul(l->c_out, l->d_in), sizeof(uint16_t));
    l->col16 = nn_malloc(nn_mul(l->nthr, nc), sizeof(uint16_t));
    l->dy16 = nn_malloc(nn_mul(l->nthr, l->dy16_n), sizeof(uint16_t));
    const ngd_conv_geom *G = &l->geom;
    // per thread: one chunk's samples (x16) and output gradients (dyx16), not the batch's
    l->x16 = nn_malloc(nn_mul(l->nthr, l->chunk * G->c_in * G->h * G->w), sizeof(uint16_t));
    if (l->wflip) l->dyx16 = nn_malloc(nn_mul(l->nthr, l->chunk * l->c_out * L), sizeof(uint16_t));
    // per thread: a chunk's f32 output before nn_conv2d_forward16 rounds it
    l->yt_n = nn_mul(l->chunk * L, l->c_out);
    l->yt = nn_malloc(nn_mul(l->nthr, l->yt_n), sizeof(float));
    // and a chunk's f32 dx before nn_conv2d_backward16 rounds it
    l->dxt_n = nn_mul(l->chunk, G->c_in * G->h * G->w);
    l->dxt = nn_malloc(nn_mul(l->nthr, l->dxt_n), sizeof(float));
    // AMX: a 3x3 'same' layer (conv_amx.c), sample by sample; forward and dW, and dx apart
    const bool same3 = G->k1 == 3 && G->k2 == 3 && G->s1 == 1 && G->s2 == 1 && G->p1 == 1 &&
                       G->p2 == 1 && G->dil1 == 1 && G->dil2 == 1 && G->groups == 1 &&
                       nn_amx_usable();
    l->amx = same3 && nn_conv3x3_amx_fits(G->c_in, G->h, G->w, l->c_out);
    l->amx_t = same3 && l->wflip && nn_conv3x3_amx_fits(l->c_out, G->h, G->w, G->c_in);
    if (l->amx || l->amx_t) {
        const size_t cmax = l->amx_t && l->c_out > G->c_in ? l->c_out : G->c_in;
        l->xs_n = nn_conv3x3_amx_pairs_n(cmax, G->h, G->w);
        // (the same buffer holds dW's pair layout of the input)
        const size_t zn = amx_dw_on(l) ? nn_conv3x3_amx_z_n(G->c_in, G->h, G->w) : 0;
        if (zn > l->xs_n) l->xs_n = zn;
        l->xs = nn_malloc(nn_mul(l->nthr, l->xs_n), sizeof(uint32_t));
        if (l->amx) l->wt = nn_malloc(nn_mul(l->c_out, l->d_in), sizeof(uint16_t));
        if (amx_dw_on(l)) {
            l->dyp_n = nn_mul(l->c_out, nn_conv3x3_amx_dw_q(G->h, G->w));
            l->dyp = nn_malloc(nn_mul(l->nthr, l->dyp_n), sizeof(uint16_t));
            l->dwt = nn_malloc(nn_mul(l->nthr, nn_mul(l->c_out, l->d_in)), sizeof(float));
        }
        if (l->amx_t) l->wtf = nn_malloc(nn_mul(l->c_out, l->d_in), sizeof(uint16_t));
    }
    // without AMX, on AVX512-BF16: the direct layers' bf16 twin (conv_direct.c), in pairs,
    // where it pays (its buffers wherever it is usable: a test may clear amx and set direct16)
    const bool d16 = nn_conv3x3_direct16_usable(), pays = nn_conv3x3_direct16_pays();
    l->direct16 = l->direct && !l->amx && pays;
    l->direct16_t = l->direct_t && !l->amx_t && pays;
    if (l->direct && d16)
        l->wp = nn_malloc(nn_conv3x3_direct16_wp_n(l->c_out, G->c_in), sizeof(uint32_t));
    if (l->direct_t && d16)
        l->wpf = nn_malloc(nn_conv3x3_direct16_wp_n(G->c_in, l->c_out), sizeof(uint32_t));
    if (l->xpd) memset(l->xpd, 0, l->nthr * l->xpd_n * sizeof(float)); // (pair planes now)
    if ((l->direct && d16 && !l->wp) || (l->direct_t && d16 && !l->wpf)) {
        free(l->wp), free(l->wpf);
        l->wp = l->wpf = NULL;
        l->direct16 = l->direct16_t = false;
    }
    // without AMX's dW, on AVX512-BF16: dW image by image (conv_direct.c), in the f32 path's
    // blocks (larger: zeroed again, its planes' borders move)
    l->dw16 = pays && l->dw_direct && !amx_dw_on(l) &&
              nn_conv3x3_dw16_fits(G->c_in, G->h, G->w, l->c_out);
    if (l->dw_direct) memset(l->dwb, 0, l->nthr * l->dwb_n * sizeof(float));
    // where those do not pay, the f32 kernels on decoded bf16 values (their buffers wherever
    // the kernels fit: a test may set dw32 and direct32_t)
    l->direct32 = !pays && l->direct && !l->amx;
    l->dw32 = !pays && l->dw_direct && !amx_dw_on(l);
    l->direct32_t = !pays && l->direct_t && !l->amx_t;
    if (l->direct || l->dw_direct || l->direct_t) {
        l->dec_n = G->c_in * G->h * G->w + l->c_out * L;
        l->dec = nn_malloc(nn_mul(l->nthr, l->dec_n), sizeof(float));
    }
    if ((l->direct || l->dw_direct || l->direct_t) && !l->dec) {
        l->direct32 = l->dw32 = l->direct32_t = false;
    }
    if (!l->w16 || (l->wflip && (!l->wflip16 || !l->dyx16)) || !l->col16 || !l->dy16 || !l->x16 ||
        !l->yt || !l->dxt || ((l->amx || l->amx_t) && !l->xs) || (l->amx && !l->wt) ||
        (amx_dw_on(l) && (!l->dyp || !l->dwt)) || (l->amx_t && !l->wtf)) {
        free(l->w16), free(l->wflip16), free(l->col16), free(l->dy16), free(l->x16), free(l->dyx16);
        free(l->xs), free(l->wt), free(l->wtf), free(l->dyp), free(l->yt);
        free(l->dxt);
        free(l->dwt), l->dwt = NULL;
        l->dyp = NULL;
        l->yt = l->dxt = NULL;
        l->w16 = l->wflip16 = l->col16 = l->dy16 = l->x16 = l->dyx16 = l->wt = l->wtf = NULL;
        l->xs = NULL;
        l->amx = l->amx_t = false;
        wino_drop(l);
        return NN_ERR_NOMEM;
    }
    return NN_OK;
}

// Thread t's pair layout of an image (AMX layers only)
static uint32_t *xs_of(const nn_conv2d *l, size_t t) { return l->xs ? l->xs + t * l->xs_n : NULL; }

// The bf16 column buffer of thread t
static uint16_t *col16_of(const nn_conv2d *l, size_t t) {
    const size_t nc = l->colt_n > l->dcol_n ? l->colt_n : l->dcol_n;
    return l->col16 + t * nc;
}

// The bf16 copies of thread t's chunk: its samples x and (with wflip) its output gradients dy
static uint16_t *x16_of(const nn_conv2d *l, size_t t) {
    return l->x16 + t * l->chunk * l->geom.c_in * l->geom.h * l->geom.w;
}
static uint16_t *dyx16_of(const nn_conv2d *l, size_t t) {
    return l->dyx16 + t * l->chunk * l->c_out * l->oh * l->ow;
}

// Thread t's decoded image and dy (direct32, dw32, direct32_t)
static float *dec_of(const nn_conv2d *l, size_t t) { return l->dec + t * l->dec_n; }

// Thread t's zero-bordered f32 planes of the direct path (NULL for other layers)
static float *xpd_of(const nn_conv2d *l, size_t t) { return l->xpd ? l->xpd + t * l->xpd_n : NULL; }

// The zero-bordered planes of thread t (NULL for layers without them)
static unsigned char *pad_of(const nn_conv2d *l, size_t t) {
    return l->pad ? l->pad + t * l->pad_n : NULL;
}

// ---- transposed im2col / col2im of a chunk and one group ----

// For kernel column k2: output column o2 reads input column o2*s2 + off (off = k2*d2 − p2);
// [*lo, *hi) are the o2 whose input column lies inside [0, W) (the rest read padding).
static ptrdiff_t col_range(const nn_conv2d *l, size_t k2, size_t *lo, size_t *hi) {
    const ngd_conv_geom *G = &l->geom;
    const ptrdiff_t off = (ptrdiff_t)(k2 * G->dil2) - (ptrdiff_t)G->p2, s = (ptrdiff_t)G->s2;
    const ptrdiff_t a = off >= 0 ? 0 : (-off + s - 1) / s;
    const ptrdiff_t last = (ptrdiff_t)G->w - 1 - off; // o2*s2 <= last
    const ptrdiff_t b = last < 0 ? 0 : last / s + 1;
    *lo = (size_t)a;
    *hi = (size_t)(b < (ptrdiff_t)l->ow ? b : (ptrdiff_t)l->ow);
    if (*hi <= *lo) *lo = *hi = 0;
    return off;
}

static size_t clamp_idx(ptrdiff_t v, size_t lo, size_t hi) {
    return v < (ptrdiff_t)lo ? lo : v > (ptrdiff_t)hi ? hi : (size_t)v;
}

// memset of the few bytes at a row's ends (a 3x3 kernel with padding 1 leaves one element
// of 2 or 4 bytes per row and end): fixed-size copies the compiler inlines, instead of a
// libc call per row (the calls were 8 % of the cnn's step in perf)
static inline void zero_bytes(unsigned char *d, size_t n) {
    static const unsigned char z[8] = {0};
    if (n == 0) return;
    if (n == 4)
        memcpy(d, z, 4);
    else if (n == 2)
        memcpy(d, z, 2);
    else if (n == 8)
        memcpy(d, z, 8);
    else
        memset(d, 0, n);
}

// n bytes at d, d + stride, ... (rows of them): a row's end columns. The common sizes (one f32
// or bf16 element, or two) are a loop of fixed-size stores, not a size switch per row.
static void zero_cols(unsigned char *d, size_t stride, size_t rows, size_t n) {
    static const unsigned char z[8] = {0};
    switch (n) {
    case 2:
        for (size_t r = 0; r < rows; r++)
            memcpy(d + r * stride, z, 2);
        break;
    case 4:
        for (size_t r = 0; r < rows; r++)
            memcpy(d + r * stride, z, 4);
        break;
    case 8:
        for (size_t r = 0; r < rows; r++)
            memcpy(d + r * stride, z, 8);
        break;
    default:
        for (size_t r = 0; r < rows; r++)
            memset(d + r * stride, 0, n);
    }
}

// im2col of one (channel, k1, k2) for output rows [r0, r0+R) of a stride-1 convolution whose
// output is as wide as its input (OW == W, 'same'), for elements of es bytes (f32 or bf16;
// zero is all-zero bytes in both): rows are W apart in the plane xc and in dst, so the block's
// valid rows (i1 in [0, H)) are one copy, from the first row's lo to the last row's hi, and
// the columns outside [lo, hi) (the neighbouring rows' ends) are zeroed after it
static void im2col_same_rows(const nn_conv2d *l, const void *xc, size_t es, size_t k1, size_t lo,
                             size_t hi, ptrdiff_t off, size_t r0, size_t R, void *dst) {
    const ngd_conv_geom *G = &l->geom;
    const size_t H = G->h, W = G->w, OW = l->ow;
    unsigned char *d0 = dst;
    const unsigned char *x0 = xc;
    const ptrdiff_t sh = (ptrdiff_t)(k1 * G->dil1) - (ptrdiff_t)G->p1;
    ptrdiff_t a = (ptrdiff_t)r0, b = (ptrdiff_t)(r0 + R);
    if (a + sh < 0) a = -sh;
    if (b + sh > (ptrdiff_t)H) b = (ptrdiff_t)H - sh;
    const size_t oa = clamp_idx(a, r0, r0 + R), ob = clamp_idx(b, oa, r0 + R);
    zero_bytes(d0, (oa - r0) * OW * es);
    zero_bytes(d0 + (ob - r0) * OW * es, (r0 + R - ob) * OW * es);
    if (ob == oa) return;
    if (hi <= lo) {
        zero_bytes(d0 + (oa - r0) * OW * es, (ob - oa) * OW * es);
        return;
    }
    const size_t src0 = (size_t)((ptrdiff_t)((size_t)((ptrdiff_t)oa + sh) * W + lo) + off);
    memcpy(d0 + ((oa - r0) * OW + lo) * es, x0 + src0 * es, ((ob - oa - 1) * OW + hi - lo) * es);
    if (lo > 0) zero_cols(d0 + (oa - r0) * OW * es, OW * es, ob - oa, lo * es);
    if (hi < OW) zero_cols(d0 + ((oa - r0) * OW + hi) * es, OW * es, ob - oa, (OW - hi) * es);
}

// n bytes from s to d: fixed sizes are inlined moves (a small plane's rows are 8 to 64
// bytes; a libc call per row cost more than the copy)
static inline void copy_row(unsigned char *restrict d, const unsigned char *restrict s, size_t n) {
    switch (n) {
    case 4: memcpy(d, s, 4); break;
    case 8: memcpy(d, s, 8); break;
    case 16: memcpy(d, s, 16); break;
    case 32: memcpy(d, s, 32); break;
    case 64: memcpy(d, s, 64); break;
    default: memcpy(d, s, n);
    }
}

// im2col_t of a whole chunk (all output rows) of a stride-1 'same' convolution through the
// zero-bordered planes pad (see nn_conv2d.pad): the chunk's planes of group g copied into
// their interiors, then row (c, k1, k2) of sample i is the plane's window at (k1·d1, k2·d2),
// H copies of one row each. Elements of es bytes (f32 or bf16); the same values as the
// general path (zero where it reads padding).
static void im2col_padded(const ngd_conv_geom *G, const void *x, size_t es, size_t nb, size_t g,
                          unsigned char *pad, void *dst) {
    const size_t cg = G->c_in / G->groups, H = G->h, W = G->w, L = H * W;
    const size_t PW = W + 2 * G->p2, PP = (H + 2 * G->p1) * PW, xs = G->c_in * L, rb = W * es;
    const size_t K1 = G->k1, K2 = G->k2, ncol = nb * L;
    const unsigned char *xb = x;
    unsigned char *db = dst;
    for (size_t ic = 0; ic < nb * cg; ic++) {
        const size_t i = ic / cg, c = ic % cg;
        const unsigned char *src = xb + (i * xs + (g * cg + c) * L) * es;
        unsigned char *plane = pad + (ic * PP + G->p1 * PW + G->p2) * es;
        for (size_t r = 0; r < H; r++)
            copy_row(plane + r * PW * es, src + r * rb, rb);
    }
    for (size_t c = 0; c < cg; c++)
        for (size_t k1 = 0; k1 < K1; k1++)
            for (size_t k2 = 0; k2 < K2; k2++) {
                unsigned char *row = db + ((c * K1 + k1) * K2 + k2) * ncol * es;
                const size_t at = (k1 * G->dil1 * PW + k2 * G->dil2) * es;
                for (size_t i = 0; i < nb; i++) {
                    const unsigned char *plane = pad + (i * cg + c) * PP * es + at;
                    unsigned char *d = row + i * L * es;
                    for (size_t o1 = 0; o1 < H; o1++)
                        copy_row(d + o1 * rb, plane + o1 * PW * es, rb);
                }
            }
}

// colt (d_in, nb*R*OW) <- patches of samples x[0..nb) (each (c_in, h, w)), channels of
// group g, output rows [r0, r0+R): row (c, k1, k2), column (i, o1 - r0, o2). bf16 mode:
// the patches of the bf16 samples x16 into col16 instead (plain copies: the samples were
// rounded once, not each of their k1·k2 copies; x and colt unused). pad: the thread's
// zero-bordered planes (layers with nn_conv2d.pad, whole chunks only) or NULL.
static void im2col_t(const nn_conv2d *l, const float *x, const uint16_t *x16, size_t nb, size_t g,
                     size_t r0, size_t R, float *colt, uint16_t *col16, unsigned char *pad) {
    const ngd_conv_geom *G = &l->geom;
    const size_t cg = G->c_in / G->groups, H = G->h, W = G->w, OW = l->ow;
    if (pad && r0 == 0 && R == l->oh) {
        if (x16)
            im2col_padded(G, x16, sizeof(uint16_t), nb, g, pad, col16);
        else
            im2col_padded(G, x, sizeof(float), nb, g, pad, colt);
        return;
    }
    const size_t Lb = R * OW, ncol = nb * Lb, K1 = G->k1, K2 = G->k2, xs = G->c_in * H * W;
    const bool same = G->s1 == 1 && G->s2 == 1 && OW == W;
    // each k2's column range, once (two integer divisions: a fifth of this function's time
    // when they ran per sample, channel and tap)
    enum { NK2 = 16 };
    size_t klo[NK2], khi[NK2];
    ptrdiff_t koff[NK2];
    for (size_t k2 = 0; k2 < K2 && k2 < NK2; k2++)
        koff[k2] = col_range(l, k2, &klo[k2], &khi[k2]);
    for (size_t ic = 0; ic < nb * cg; ic++) {
        const size_t i = ic / cg, c = ic % cg;
        const float *xc = x16 ? NULL : x + i * xs + (g * cg + c) * H * W;
        const uint16_t *xc16 = x16 ? x16 + i * xs + (g * cg + c) * H * W : NULL;
        for (size_t k1 = 0; k1 < K1; k1++)
            for (size_t k2 = 0; k2 < K2; k2++) {
                size_t lo, hi;
                ptrdiff_t off;
                if (k2 < NK2)
                    lo = klo[k2], hi = khi[k2], off = koff[k2];
                else
                    off = col_range(l, k2, &lo, &hi);
                const size_t at = ((c * K1 + k1) * K2 + k2) * ncol + i * Lb;
                if (x16 && same) {
                    im2col_same_rows(l, xc16, sizeof(uint16_t), k1, lo, hi, off, r0, R, col16 + at);
                    continue;
                }
                if (x16) {
                    for (size_t o1 = r0; o1 < r0 + R; o1++) {
                        uint16_t *d = col16 + at + (o1 - r0) * OW;
                        const ptrdiff_t i1 =
                            (ptrdiff_t)(o1 * G->s1 + k1 * G->dil1) - (ptrdiff_t)G->p1;
                        if (i1 < 0 || (size_t)i1 >= H) {
                            memset(d, 0, OW * sizeof(uint16_t));
                            continue;
                        }
                        const uint16_t *src = xc16 + (size_t)i1 * W;
                        for (size_t o2 = 0; o2 < lo; o2++)
                            d[o2] = 0;
                        if (G->s2 == 1) {
                            if (hi > lo) memcpy(d + lo, src + (ptrdiff_t)lo + off, (hi - lo) * 2);
                        } else {
                            for (size_t o2 = lo; o2 < hi; o2++)
                                d[o2] = src[(ptrdiff_t)(o2 * G->s2) + off];
                        }
                        for (size_t o2 = hi; o2 < OW; o2++)
                            d[o2] = 0;
                    }
                    continue;
                }
                float *dst = colt + at;
                if (same) {
                    im2col_same_rows(l, xc, sizeof(float), k1, lo, hi, off, r0, R, dst);
                    continue;
                }
                for (size_t o1 = r0; o1 < r0 + R; o1++) {
                    float *d = dst + (o1 - r0) * OW;
                    const ptrdiff_t i1 = (ptrdiff_t)(o1 * G->s1 + k1 * G->dil1) - (ptrdiff_t)G->p1;
                    if (i1 < 0 || (size_t)i1 >= H) {
                        memset(d, 0, OW * sizeof(float));
                        continue;
                    }
                    const float *src = xc + (size_t)i1 * W;
                    for (size_t o2 = 0; o2 < lo; o2++)
                        d[o2] = 0.0f;
                    if (G->s2 == 1) { // (libc's small copies beat a loop's scalar tail)
                        if (hi > lo) memcpy(d + lo, src + (ptrdiff_t)lo + off, (hi - lo) * 4);
                    } else {
                        for (size_t o2 = lo; o2 < hi; o2++)
                            d[o2] = src[(ptrdiff_t)(o2 * G->s2) + off];
                    }
                    for (size_t o2 = hi; o2 < OW; o2++)
                        d[o2] = 0.0f;
                }
            }
    }
}

// dx's channels of group g, samples [0..nb) += the patches of dcolt (d_in, nb*R*OW) of
// output rows [r0, r0+R) put back
static void col2im_t_add(const nn_conv2d *l, const float *dcolt, size_t nb, size_t g, size_t r0,
                         size_t R, float *dx) {
    const ngd_conv_geom *G = &l->geom;
    const size_t cg = G->c_in / G->groups, H = G->h, W = G->w, OW = l->ow;
    const size_t Lb = R * OW, ncol = nb * Lb, K1 = G->k1, K2 = G->k2, xs = G->c_in * H * W;
    for (size_t ic = 0; ic < nb * cg; ic++) {
        const size_t i = ic / cg, c = ic % cg;
        float *dxc = dx + i * xs + (g * cg + c) * H * W;
        for (size_t k1 = 0; k1 < K1; k1++)
            for (size_t k2 = 0; k2 < K2; k2++) {
                size_t lo, hi;
                const ptrdiff_t off = col_range(l, k2, &lo, &hi);
                const float *src = dcolt + ((c * K1 + k1) * K2 + k2) * ncol + i * Lb;
                for (size_t o1 = r0; o1 < r0 + R; o1++) {
                    const ptrdiff_t i1 = (ptrdiff_t)(o1 * G->s1 + k1 * G->dil1) - (ptrdiff_t)G->p1;
                    if (i1 < 0 || (size_t)i1 >= H) continue;
                    float *dr = dxc + (size_t)i1 * W;
                    const float *sr = src + (o1 - r0) * OW;
                    for (size_t o2 = lo; o2 < hi; o2++)
                        dr[(ptrdiff_t)(o2 * G->s2) + off] += sr[o2];
                }
            }
    }
}

// ---- forward / backward ----

// The threads of a layer's parallel region: at most the planned ones and the runtime's.
static int team(const nn_conv2d *l) {
    const size_t t = max_threads() < l->nthr ? max_threads() : l->nthr;
    return (int)t;
}

// y of samples [n0, n0+nb) from x into yc (the chunk's (nb, c_out, L) output), on thread
// buffers colt (and ybuf when nb > 1). One sample: block by block of output rows, each GEMM
// writing its rows of the image. With y16 (the batch's output in bf16), each plane of yc is
// rounded there too (yc then holds the rounded values, of which the moments are taken).
static void forward_chunk(nn_conv2d *l, const float *x, float *yc, uint16_t *y16, size_t n0,
                          size_t nb, float *colt, float *ybuf, uint16_t *col16, uint16_t *x16,
                          unsigned char *pad, uint32_t *xsb) {
    // (x NULL: the bf16 input l->xb, read in place)
    const ngd_conv_geom *G = &l->geom;
    const size_t OH = l->oh, OW = l->ow, L = OH * OW, din = l->d_in, cout = l->c_out;
    const size_t groups = G->groups, cog = cout / groups, xs = G->c_in * G->h * G->w;
    const size_t RB = nb == 1 ? block_rows(l->fcols, OW) : OH;
    // bf16: the chunk's samples rounded once for all its blocks' im2col (or the bf16 input)
    const uint16_t *xs16 = !col16 ? NULL : l->xb ? l->xb + n0 * xs : x16;
    if (col16 && !l->xb) nn_bf16_encode(x + n0 * xs, x16, nb * xs);
    const bool amx = col16 && l->amx;
    for (size_t i = 0; amx && i < nb; i++) { // each image on the tile unit, into y
        nn_conv3x3_amx_pairs(xs16 + i * xs, G->c_in, G->h, G->w, xsb);
        nn_conv3x3_amx(xsb, l->wt, G->c_in, G->h, G->w, cout, yc + i * cout * L, false);
    }
    // each image without im2col, into y: f32, bf16 pairs (where AMX is not used), or the f32
    // kernel on the bf16 image decoded (direct32: its output rounded below, as the GEMM's)
    const bool d16 = col16 && l->direct16 && !amx, d32 = col16 && l->direct32 && !amx;
    const bool direct = col16 ? d16 || d32 : l->direct;
    for (size_t i = 0; direct && i < nb; i++) {
        const size_t t = (size_t)nn_thread_num();
        float *xp = xpd_of(l, t), *yi = yc + i * cout * L;
        if (d16) { // (the bias added in the kernel's store; a bf16 output written rounded)
            nn_conv3x3_direct16(xs16 + i * xs, G->c_in, G->h, G->w, l->wp, cout, y16 ? NULL : yi,
                                y16 ? y16 + (n0 + i) * cout * L : NULL, l->b, false,
                                (uint32_t *)xp);
            continue;
        }
        const float *xi = x ? x + (n0 + i) * xs : NULL;
        if (d32) nn_bf16_decode(xs16 + i * xs, dec_of(l, t), xs), xi = dec_of(l, t);
        nn_conv3x3_direct(xi, G->c_in, G->h, G->w, l->wpk, cout, yi, l->b, false, xp);
    }
    for (size_t r0 = 0; r0 < OH && !amx && !direct; r0 += RB) {
        const size_t R = OH - r0 < RB ? OH - r0 : RB, ncol = nb * R * OW;
        // nb = 1: rows [r0, r0+R) of the image (leading dimension L); else the chunk side by side
        float *out = nb == 1 ? yc + r0 * OW : ybuf;
        const size_t ldo = nb == 1 ? L : ncol;
        for (size_t g = 0; g < groups; g++) {
            im2col_t(l, x ? x + n0 * xs : NULL, xs16, nb, g, r0, R, colt, col16, pad);
            // out rows of group g (cog, ncol) = W_g (cog, d_in) · colt (d_in, ncol)
            if (col16) {
                nn_gemm_bf16(false, false, cog, ncol, din, 1.0f, l->w16 + g * cog * din, din, col16,
                             ncol, 0.0f, out + g * cog * ldo, ldo);
                continue;
            }
            nn_sgemm(false, false, cog, ncol, din, 1.0f, l->w + g * cog * din, din, colt, ncol,
                     0.0f, out + g * cog * ldo, ldo);
        }
    }
    if (d16 && y16) { // the kernel wrote y16: only the moments, of its rounded planes
        for (size_t p = 0; l->moments_on && p < nb * cout; p++)
            nn_plane_moments_bf16(y16 + (n0 * cout + p) * L, L,
                                  l->moments + NN_MOMENTS * (n0 * cout + p));
        return;
    }
    // y[n0 + i, co, :] = out[co, i*L : (i+1)*L] + b[co], and the plane's moments
    for (size_t i = 0; i < nb; i++)
        for (size_t co = 0; co < cout; co++) {
            float *dst = yc + (i * cout + co) * L;
            const float bo = l->b ? l->b[co] : 0.0f;
            if (nb == 1 || amx || direct) { // (in place; the direct kernels added it)
                if (l->b && !direct)
                    for (size_t p = 0; p < L; p++)
                        dst[p] += bo;
            } else {
                const float *src = ybuf + co * nb * L + i * L;
                for (size_t p = 0; p < L; p++)
                    dst[p] = src[p] + bo;
            }
            if (y16) { // rounded into y16, and back (in cache) for the moments
                uint16_t *h16 = y16 + ((n0 + i) * cout + co) * L;
                nn_bf16_encode(dst, h16, L);
                nn_bf16_decode(h16, dst, L);
            }
            if (l->moments_on)
                nn_plane_moments(dst, L, l->moments + NN_MOMENTS * ((n0 + i) * cout + co));
        }
}

// The f32 direct kernel's packing of w (co, c, 3, 3), of its bf16 values where r16 (direct32,
// direct32_t: the values w16 and wflip16 hold)
static void direct_pack(const float *w, size_t co, size_t c, bool r16, float *wpk) {
    nn_conv3x3_direct_pack(w, co, c, wpk);
    for (size_t i = 0; r16 && i < co * c * 9; i++)
        wpk[i] = nn_from_bf16(nn_to_bf16(wpk[i]));
}

// The dense layers' taps: tap[p·L + q] of output pixel p from input pixel q (images of at
// most 2x2, L <= 4), the kernel offset (q − p) + 1 in each direction
static void dense_taps(const nn_conv2d *l, unsigned char tap[16]) {
    const size_t W = l->geom.w, L = l->oh * l->ow;
    for (size_t p = 0; p < L; p++)
        for (size_t q = 0; q < L; q++)
            tap[p * L + q] = (unsigned char)((q / W + 1 - p / W) * 3 + (q % W + 1 - p % W));
}

// W'[(co, p)][(c, q)] = W[co][c][tap(p, q)], and the bias per (co, p)
static void dense_expand(nn_conv2d *l) {
    const size_t L = l->oh * l->ow, cin = l->geom.c_in, cout = l->c_out, nq = cin * L;
    unsigned char tap[16];
    dense_taps(l, tap);
    NN_OMP_FOR(cout * L * nq)
    for (size_t r = 0; r < cout * L; r++) {
        const unsigned char *tp = tap + (r % L) * L;
        const float *wr = l->w + (r / L) * l->d_in;
        float *row = l->wd + r * nq;
        for (size_t c = 0; c < cin; c++)
            for (size_t q = 0; q < L; q++)
                row[c * L + q] = wr[c * 9 + tp[q]];
    }
    for (size_t r = 0; l->bd && r < cout * L; r++)
        l->bd[r] = l->b[r / L];
}

// Each output plane's moments (moments_on) after a forward that wrote the whole output (the
// dense map, Winograd): of y, or of the rounded planes of y16
static void plane_moments_all(nn_conv2d *l, const float *y, const uint16_t *y16, size_t N) {
    if (!l->moments_on) return;
    const size_t L = l->oh * l->ow, np = N * l->c_out;
    NN_OMP_FOR(np * L)
    for (size_t i = 0; i < np; i++) {
        if (y16)
            nn_plane_moments_bf16(y16 + i * L, L, l->moments + NN_MOMENTS * i);
        else
            nn_plane_moments(y + i * L, L, l->moments + NN_MOMENTS * i);
    }
}

static void forward(nn_conv2d *l, const float *x, const uint16_t *xb, float *y, uint16_t *y16,
                    size_t N) {
    NN_ASSERT((x || (xb && l->w16)) && (y || (y16 && l->yt)) && N >= 1 && N <= l->max_batch);
    const size_t nchunks = (N + l->chunk - 1) / l->chunk;
    l->x = x;
    l->xb = xb;
    l->dy = NULL;
    l->dyb = NULL;
    l->n = N;
    if (l->dense) { // y = x W'ᵀ (+ bias): images are rows of c_in·L and c_out·L values
        const size_t L = l->oh * l->ow, nq = l->geom.c_in * L, np = l->c_out * L;
        dense_expand(l);
        NN_ASSERT(ngd_f32_gemm_bias(false, true, N, np, nq, x, nq, l->wd, nq, l->bd, y, np) ==
                  NGD_OK);
        nn_flop_add(2 * (uint64_t)N * l->c_out * l->d_in * L); // (the convolution's count)
        plane_moments_all(l, y, NULL, N);
        return;
    }
    l->wino_fwd = l->wino && N % nn_conv_wino_sub(l->wino) == 0;
    if (l->wino_fwd) {
        if (l->w16) nn_bf16_encode(l->w, l->w16, l->c_out * l->d_in);
        nn_conv_wino_forward(l->wino, x, x ? NULL : xb, l->w16 ? NULL : l->w, l->w16, l->b, y, y16,
                             N, l->moments_on ? l->moments : NULL);
        return;
    }
    if (l->w16 && l->amx) // (the AMX layers read their weights packed, not w16)
        nn_conv3x3_amx_pack(l->w, l->c_out, l->geom.c_in, l->wt);
    else if (l->w16)
        nn_bf16_encode(l->w, l->w16, l->c_out * l->d_in);
    if (l->w16 && l->direct16) // (the direct ones read theirs in pairs)
        nn_conv3x3_direct16_pack(l->w, l->c_out, l->geom.c_in, l->wp);
    if (l->direct && (!l->w16 || l->direct32))
        direct_pack(l->w, l->c_out, l->geom.c_in, l->w16 != NULL, l->wpk);
        // (images to whichever thread is free: each output is the same on any thread, and where a
        // core is slowed by its neighbours, as on this 2-core VM, a static half each left the
        // other thread waiting: cnn SGD f32 forward 33.0 -> 28.8 ms, interleaved, 7 rounds)
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(team(l))
#endif
    for (size_t c = 0; c < nchunks; c++) {
        const size_t t = (size_t)nn_thread_num(), n0 = c * l->chunk;
        const size_t nb = N - n0 < l->chunk ? N - n0 : l->chunk;
        float *yc = y16 ? l->yt + t * l->yt_n : y + n0 * l->c_out * l->oh * l->ow;
        forward_chunk(l, x, yc, y16, n0, nb, l->colt + t * l->colt_n,
                      l->ybuf ? l->ybuf + t * l->ybuf_n : NULL, l->w16 ? col16_of(l, t) : NULL,
                      l->w16 ? x16_of(l, t) : NULL, pad_of(l, t), xs_of(l, t));
    }
}

void nn_conv2d_forward(nn_conv2d *l, const float *x, float *y, size_t N) {
    forward(l, x, NULL, y, NULL, N);
}
void nn_conv2d_forward_bf16(nn_conv2d *l, const uint16_t *x, float *y, size_t N) {
    forward(l, NULL, x, y, NULL, N);
}
void nn_conv2d_forward16(nn_conv2d *l, const float *x, const uint16_t *xb, uint16_t *y16,
                         size_t N) {
    NN_ASSERT(!x != !xb && y16);
    forward(l, x, xb, NULL, y16, N);
}

// dx (written when set) of samples [n0, n0+nb) by the transposed convolution, input rows
// [r0, r0+R) (nb = 1) or all of them (then through ybuf); dxc is the chunk's (nb, c_in, h, w)
static void tconv_rows(const nn_conv2d *l, const float *dy, float *dxc, bool set, size_t n0,
                       size_t nb, size_t r0, size_t R, float *tcolt, float *ybuf, uint16_t *col16,
                       const uint16_t *dyx16, unsigned char *pad) {
    const ngd_conv_geom *G = &l->geom;
    const size_t H = G->h, W = G->w, HW = H * W, cout = l->c_out, L = l->oh * l->ow;
    const size_t ncol = nb * R * W, tdin = cout * G->k1 * G->k2, xs = G->c_in * HW;
    const nn_conv2d t = {.geom = l->tgeom, .oh = H, .ow = W};
    im2col_t(&t, col16 ? NULL : dy + n0 * cout * L, col16 ? dyx16 : NULL, nb, 0, r0, R, tcolt,
             col16, pad);
    float *out = nb == 1 ? dxc + r0 * W : ybuf; // (c_in, ncol), leading dim ldo
    const size_t ldo = nb == 1 ? HW : ncol;
    if (col16) {
        nn_gemm_bf16(false, false, G->c_in, ncol, tdin, 1.0f, l->wflip16, tdin, col16, ncol,
                     nb == 1 && !set ? 1.0f : 0.0f, out, ldo);
    } else {
        nn_sgemm(false, false, G->c_in, ncol, tdin, 1.0f, l->wflip, tdin, tcolt, ncol,
                 nb == 1 && !set ? 1.0f : 0.0f, out, ldo);
    }
    if (nb > 1) // samples side by side -> images
        for (size_t i = 0; i < nb; i++)
            for (size_t c = 0; c < G->c_in; c++) {
                const float *src = ybuf + c * ncol + i * HW;
                float *dst = dxc + i * xs + c * HW;
                for (size_t p = 0; p < HW; p++)
                    dst[p] = set ? src[p] : dst[p] + src[p];
            }
}

// dW part += dy colᵀ and dx += col2im(Wᵀ dy) of samples [n0, n0+nb), on thread buffers (dx
// written instead when set; dxc is the chunk's (nb, c_in, h, w), NULL: no dx). One sample:
// block by block of output rows, like forward. dy is f32, or (bf16 mode) dyb, bf16
// (N, cout, L) read in place. dx16c: the chunk's dx in bf16 (set only), which the bf16
// direct kernels write rounded in place of dxc: true when they did.
static bool backward_chunk(nn_conv2d *l, const float *dy, const uint16_t *dyb, float *dxc,
                           uint16_t *dx16c, bool set, size_t n0, size_t nb, float *colt,
                           float *dcolt, float *ybuf, float *dwpart, uint16_t *col16,
                           uint16_t *dy16, uint16_t *x16, uint16_t *dyx16, unsigned char *pad,
                           uint32_t *xsb) {
    const ngd_conv_geom *G = &l->geom;
    const size_t OH = l->oh, OW = l->ow, L = OH * OW, din = l->d_in, cout = l->c_out;
    const size_t groups = G->groups, cog = cout / groups, xs = G->c_in * G->h * G->w;
    const float *dyc = dy ? dy + n0 * cout * L : NULL; // (cout, L) of the sample when nb = 1
    const bool amx = dy16 && amx_dw_on(l);             // (dW by sample, below)
    const bool byimg = dw_by_image(l, dy16 != NULL, dxc != NULL); // (below)
    if (nb > 1 && !amx) { // samples side by side (a bf16 dy into the bf16 block buffer)
        for (size_t i = 0; i < nb; i++)
            for (size_t co = 0; co < cout; co++) {
                const size_t at = ((n0 + i) * cout + co) * L;
                if (dyb)
                    memcpy(dy16 + co * nb * L + i * L, dyb + at, L * sizeof(uint16_t));
                else
                    memcpy(ybuf + co * nb * L + i * L, dy + at, L * sizeof(float));
            }
        dyc = dyb ? NULL : ybuf;
    }
    if (dxc && set && !l->wflip) memset(dxc, 0, nb * xs * sizeof(float));
    // bf16: the chunk's samples rounded again (as forward did: the same values; keeping them
    // from forward would hold a batch of them; a bf16 input is read in place) and, with the
    // transposed convolution, its dy as images (a bf16 dy in place)
    const uint16_t *xs16 = !dy16 ? NULL : l->xb ? l->xb + n0 * xs : x16;
    if (dy16 && !l->xb) nn_bf16_encode(l->x + n0 * xs, x16, nb * xs);
    const uint16_t *dyx = NULL;
    if (dxc && l->wflip && dy16) {
        if (dyb) {
            dyx = dyb + n0 * cout * L;
        } else {
            nn_bf16_encode(dy + n0 * cout * L, dyx16, nb * cout * L);
            dyx = dyx16;
        }
    }
    // AMX: dW image by image on the tile unit, into the thread's dwt
    for (size_t i = 0; amx && i < nb; i++) {
        const size_t t = (size_t)nn_thread_num(), at = (n0 + i) * cout * L;
        uint16_t *dyp = l->dyp + t * l->dyp_n;
        nn_conv3x3_amx_zpairs(xs16 + i * xs, G->c_in, G->h, G->w, xsb);
        nn_conv3x3_amx_dypad(dyb ? dyb + at : NULL, dyb ? NULL : dy + at, cout, OH, OW, dyp);
        nn_conv3x3_amx_dw(xsb, dyp, G->c_in, G->h, G->w, cout, l->dwt + t * cout * din);
    }
    for (size_t i = 0; byimg && i < nb; i++) { // into dwpart (d_in, c_out), then its buffer
        const size_t at = (n0 + i) * cout * L; // (dwpart: the thread's block of dwb)
        if (dy16 && l->dw32) { // the image and dy decoded (an f32 dy rounded), f32 kernel
            float *xf = dec_of(l, (size_t)nn_thread_num()), *df = xf + xs;
            nn_bf16_decode(xs16 + i * xs, xf, xs);
            if (dyb)
                nn_bf16_decode(dyb + at, df, cout * L);
            else
                for (size_t p = 0; p < cout * L; p++)
                    df[p] = nn_from_bf16(nn_to_bf16(dy[at + p]));
            nn_conv3x3_dw(xf, df, G->c_in, G->h, G->w, cout, dwpart, dwpart + cout * din);
        } else if (dy16)
            nn_conv3x3_dw16(xs16 + i * xs, dyb ? dyb + at : NULL, dyb ? NULL : dy + at, G->c_in,
                            G->h, G->w, cout, dwpart, (uint32_t *)(void *)(dwpart + cout * din));
        else
            nn_conv3x3_dw(l->x + (n0 + i) * xs, dy + at, G->c_in, G->h, G->w, cout, dwpart,
                          dwpart + cout * din);
    }
    const size_t RB = nb == 1 ? block_rows(l->bcols, OW) : OH;
    for (size_t r0 = 0; r0 < OH && !amx && !byimg; r0 += RB) {
        const size_t R = OH - r0 < RB ? OH - r0 : RB, ncol = nb * R * OW;
        const size_t ldy = nb == 1 ? L : ncol;
        // bf16: the block's dy (cout, ncol), rounded once for every group, or where it is in
        // bf16 already: one sample's rows (leading dimension L) in dyb or in dyx, or the
        // chunk side by side in dy16
        const uint16_t *dyk = dy16;
        size_t ld16 = ncol;
        if (dy16 && nb == 1 && (dyb || dyx)) {
            dyk = (dyb ? dyb + n0 * cout * L : dyx) + r0 * OW;
            ld16 = L;
        } else if (dy16 && !dyb) {
            nn_bf16_encode_rows(dyc + (nb == 1 ? r0 * OW : 0), ldy, dy16, ncol, cout, ncol);
        }
        for (size_t g = 0; g < groups; g++) {
            im2col_t(l, l->x ? l->x + n0 * xs : NULL, xs16, nb, g, r0, R, colt, dy16 ? col16 : NULL,
                     pad);
            if (dy16) {
                const uint16_t *yg16 = dyk + g * cog * ld16;
                if (l->dw_t) // dW_gᵀ (d_in, cog) += col16 (d_in, ncol) · dy_gᵀ (ncol, cog)
                    nn_gemm_bf16(false, true, din, cog, ncol, 1.0f, col16, ncol, yg16, ld16, 1.0f,
                                 dwpart + g * cog * din, cog);
                else
                    nn_gemm_bf16(false, true, cog, din, ncol, 1.0f, yg16, ld16, col16, ncol, 1.0f,
                                 dwpart + g * cog * din, din);
                if (!dxc || l->wflip) continue;
                nn_gemm_bf16(true, false, din, ncol, cog, 1.0f, l->w16 + g * cog * din, din, yg16,
                             ld16, 0.0f, dcolt, ncol);
                col2im_t_add(l, dcolt, nb, g, r0, R, dxc);
                continue;
            }
            // dW_g (cog, d_in) += dy_g (cog, ncol) · coltᵀ (ncol, d_in)
            const float *yg = dyc + g * cog * ldy + (nb == 1 ? r0 * OW : 0); // (cog, ncol)
            nn_sgemm(false, true, cog, din, ncol, 1.0f, yg, ldy, colt, ncol, 1.0f,
                     dwpart + g * cog * din, din);
            if (!dxc || l->wflip) continue;
            // dcolt (d_in, ncol) = W_gᵀ (d_in, cog) · dy_g (cog, ncol), then back to images
            nn_sgemm(true, false, din, ncol, cog, 1.0f, l->w + g * cog * din, din, yg, ldy, 0.0f,
                     dcolt, ncol);
            col2im_t_add(l, dcolt, nb, g, r0, R, dxc);
        }
    }
    if (!dxc || !l->wflip) return false;
    if (!dy16 && dy && l->direct_t) { // f32: the transposed convolution image by image
        for (size_t i = 0; i < nb; i++)
            nn_conv3x3_direct(dy + (n0 + i) * cout * L, cout, G->h, G->w, l->wpkf, G->c_in,
                              dxc + i * xs, NULL, !set, xpd_of(l, (size_t)nn_thread_num()));
        return false;
    }
    if (dy16 && l->direct32_t) { // the same in f32 on each dy decoded, into dxc
        float *df = dec_of(l, (size_t)nn_thread_num());
        for (size_t i = 0; i < nb; i++) {
            nn_bf16_decode(dyx + i * cout * L, df, cout * L);
            nn_conv3x3_direct(df, cout, G->h, G->w, l->wpkf, G->c_in, dxc + i * xs, NULL, !set,
                              xpd_of(l, (size_t)nn_thread_num()));
        }
        return false;
    }
    if (dy16 && l->direct16_t) { // bf16 pairs: the transposed convolution image by image
        for (size_t i = 0; i < nb; i++)
            nn_conv3x3_direct16(dyx + i * cout * L, cout, G->h, G->w, l->wpf, G->c_in,
                                dx16c ? NULL : dxc + i * xs, dx16c ? dx16c + i * xs : NULL, NULL,
                                !set, (uint32_t *)xpd_of(l, (size_t)nn_thread_num()));
        return dx16c != NULL;
    }
    if (dy16 && l->amx_t) { // the transposed convolution image by image on the tile unit
        for (size_t i = 0; i < nb; i++) {
            nn_conv3x3_amx_pairs(dyx + i * cout * L, cout, G->h, G->w, xsb);
            nn_conv3x3_amx(xsb, l->wtf, cout, G->h, G->w, G->c_in, dxc + i * xs, !set);
        }
        return false;
    }
    // dx by the transposed convolution (its output is the input image: rows of H)
    const size_t H = G->h, RT = nb == 1 ? block_rows(l->fcols, G->w) : H;
    for (size_t r0 = 0; r0 < H; r0 += RT)
        tconv_rows(l, dy, dxc, set, n0, nb, r0, H - r0 < RT ? H - r0 : RT, dcolt, ybuf, col16, dyx,
                   pad);
    return false;
}

static void backward(nn_conv2d *l, const float *dy, const uint16_t *dyb, float *dx, uint16_t *dx16,
                     bool set) {
    NN_ASSERT((dy || (dyb && l->w16)) && (l->x || l->xb) && l->n >= 1);
    NN_ASSERT(!dx16 || (!dx && set && l->dxt));
    const size_t N = l->n, L = l->oh * l->ow, cout = l->c_out, din = l->d_in;
    const size_t nchunks = (N + l->chunk - 1) / l->chunk, nw = cout * din;
    l->dy = dy;
    l->dyb = dyb;
    if (l->db && l->dbsum) {
        for (size_t o = 0; o < cout; o++)
            l->db[o] += (float)l->dbsum[o];
    } else if (l->db) {
        NN_OMP_FOR(N * cout * L)
        for (size_t o = 0; o < cout; o++) { // per plane a vectorised float sum, then double
            double s = 0.0;
            for (size_t n = 0; n < N; n++) {
                const size_t at = (n * cout + o) * L;
                s += (double)(dyb ? nn_plane_sum_bf16(dyb + at, L) : nn_plane_sum(dy + at, L));
            }
            l->db[o] += (float)s;
        }
    }
    if (l->dense) { // dW' = dyᵀ x summed by tap into dW; dx = dy W'
        const size_t cin = l->geom.c_in, nq = cin * L, np = cout * L;
        NN_ASSERT(ngd_f32_gemm(true, false, np, nq, N, 1.0f, dy, np, l->x, nq, 0.0f, l->dwd, nq) ==
                  NGD_OK);
        unsigned char tap[16];
        dense_taps(l, tap);
        NN_OMP_FOR(np * nq)
        for (size_t co = 0; co < cout; co++) {
            float *dwr = l->dw + co * din;
            for (size_t p = 0; p < L; p++) { // (rows in order, each in place: in L passes)
                const float *g = l->dwd + (co * L + p) * nq;
                const unsigned char *tp = tap + p * L;
                for (size_t c = 0; c < cin; c++)
                    for (size_t q = 0; q < L; q++)
                        dwr[c * 9 + tp[q]] += g[c * L + q];
            }
        }
        if (dx)
            NN_ASSERT(ngd_f32_gemm(false, false, N, nq, np, 1.0f, dy, np, l->wd, nq,
                                   set ? 0.0f : 1.0f, dx, nq) == NGD_OK);
        nn_flop_add(2 * (uint64_t)N * cout * din * L * (dx ? 2 : 1));
        return;
    }
    if (l->wino_fwd) {
        nn_conv_wino_backward(l->wino, l->x, l->x ? NULL : l->xb, dy, dy ? NULL : dyb,
                              l->w16 ? NULL : l->w, l->w16, dx, dx16, set, l->dw, N);
        return;
    }
    const int nt = team(l);
    // the threads' dW parts: by tap in dwt (AMX), or in dwpart, or (by image, backward_chunk's
    // byimg) at the start of each thread's block of dwb: within one
    // allocation, the two threads' parts side by side made the 16x16-pixel layers' dW 1.2x
    // slower on 2 threads than blocks of part and buffer (a probe of 128 images, 32 -> 64
    // channels: 2.0 against 1.6 ms; the same layout in two processes ran 1.6)
    const bool bytap = l->w16 && amx_dw_on(l);
    const bool byimg = dw_by_image(l, l->w16 != NULL, dx || dx16);
    const size_t ps = byimg ? l->dwb_n : nw; // (from one thread's part to the next)
    float *parts = bytap ? l->dwt : byimg ? l->dwb : l->dwpart;
    for (int t = 0; t < nt; t++)
        memset(parts + (size_t)t * ps, 0, nw * sizeof(float));
    if ((dx || dx16) && l->wflip) { // wflip[c][(co, a, b)] = W[co][(c, k1-1-a, k2-1-b)]
        const ngd_conv_geom *G = &l->geom;
        const size_t K1 = G->k1, K2 = G->k2, cin = G->c_in;
        NN_OMP_FOR(cout * din) // (rows of wflip written in order, one channel per iteration)
        for (size_t c = 0; c < cin; c++)
            for (size_t co = 0; co < cout; co++)
                for (size_t a = 0; a < K1; a++)
                    for (size_t b = 0; b < K2; b++)
                        l->wflip[c * cout * K1 * K2 + (co * K1 + a) * K2 + b] =
                            l->w[co * din + (c * K1 + (K1 - 1 - a)) * K2 + (K2 - 1 - b)];
        if (l->w16 && l->amx_t)
            nn_conv3x3_amx_pack(l->wflip, cin, cout, l->wtf);
        else if (l->wflip16)
            nn_bf16_encode(l->wflip, l->wflip16, cout * din);
        if (l->w16 && l->direct16_t) nn_conv3x3_direct16_pack(l->wflip, cin, cout, l->wpf);
        if (l->direct_t && (!l->w16 || l->direct32_t))
            direct_pack(l->wflip, cin, cout, l->w16 != NULL, l->wpkf);
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (size_t c = 0; c < nchunks; c++) {
        const size_t t = (size_t)nn_thread_num(), n0 = c * l->chunk;
        const size_t nb = N - n0 < l->chunk ? N - n0 : l->chunk;
        const size_t xs = l->geom.c_in * l->geom.h * l->geom.w;
        float *dxc = dx16 ? l->dxt + t * l->dxt_n : dx ? dx + n0 * xs : NULL;
        uint16_t *dx16c = dx16 ? dx16 + n0 * xs : NULL;
        const bool rounded =
            backward_chunk(l, dy, dyb, dxc, dx16c, set, n0, nb, l->colt + t * l->colt_n,
                           l->dcolt + t * l->dcol_n, l->ybuf ? l->ybuf + t * l->ybuf_n : NULL,
                           parts + t * ps, l->w16 ? col16_of(l, t) : NULL,
                           l->w16 ? l->dy16 + t * l->dy16_n : NULL, l->w16 ? x16_of(l, t) : NULL,
                           l->dyx16 ? dyx16_of(l, t) : NULL, pad_of(l, t), xs_of(l, t));
        if (dx16c && !rounded) nn_bf16_encode(dxc, dx16c, nb * xs); // (in cache)
    }
    // dW += the threads' parts, in thread order
    const size_t cin = l->geom.c_in, cg = cout / l->geom.groups;
    if (bytap || byimg || l->dw_t) {
        // AMX: by tap, dwt[k][o][c] for dW[o][c][k]; by image, and dw_t: each group's
        // transposed, (d_in, cg). 16 rows of dW at a time, so that the parts are read a
        // cache line of consecutive o at a time (element by element, vgg16bn's 2.4 M-weight
        // layers took 18 % longer backward than with untransposed parts)
        NN_OMP_FOR((size_t)nt * nw)
        for (size_t o0 = 0; o0 < cout; o0 += 16) {
            const size_t o1 = o0 + 16 < cout ? o0 + 16 : cout;
            for (size_t k = 0; k < din; k++)
                for (size_t o = o0; o < o1; o++) {
                    const size_t j = !bytap ? (o / cg) * cg * din + k * cg + o % cg
                                            : ((k % 9) * cout + o) * cin + k / 9;
                    float s = 0.0f;
                    for (int t = 0; t < nt; t++)
                        s += parts[(size_t)t * ps + j];
                    l->dw[o * din + k] += s;
                }
        }
        return;
    }
    NN_OMP_FOR((size_t)nt * nw)
    for (size_t i = 0; i < nw; i++) {
        float s = 0.0f;
        for (int t = 0; t < nt; t++)
            s += l->dwpart[(size_t)t * nw + i];
        l->dw[i] += s;
    }
}

void nn_conv2d_backward(nn_conv2d *l, const float *dy, float *dx) {
    backward(l, dy, NULL, dx, NULL, false);
}
void nn_conv2d_backward_set(nn_conv2d *l, const float *dy, float *dx) {
    backward(l, dy, NULL, dx, NULL, true);
}
void nn_conv2d_backward_set_bf16(nn_conv2d *l, const uint16_t *dy, float *dx) {
    backward(l, NULL, dy, dx, NULL, true);
}
void nn_conv2d_backward16(nn_conv2d *l, const uint16_t *dy, uint16_t *dx16) {
    NN_ASSERT(dx16);
    backward(l, NULL, dy, NULL, dx16, true);
}

// ---- libngd ----

ngd_layer nn_conv2d_ngd_layer(const nn_conv2d *l, const char *name) {
    ngd_layer L = {.name = name,
                   .weight = l->w,
                   .weight_grad = l->dw,
                   .d_out = l->c_out,
                   .d_in = l->d_in,
                   .bias = l->b,
                   .bias_grad = l->db};
    return L;
}

size_t nn_conv2d_stats_size(const nn_conv2d *l) {
    // bf16 mode: g's part also holds the f32 input decoded from a bf16 one, for the unfold
    const size_t L = l->oh * l->ow, xs = l->geom.c_in * l->geom.h * l->geom.w;
    const size_t gpart = l->w16 && xs > L * l->c_out ? xs : L * l->c_out;
    return nn_mul(l->max_batch, nn_mul(L, l->d_in) + gpart);
}

size_t nn_conv2d_stats_g_size(const nn_conv2d *l) {
    return nn_mul(l->max_batch, l->oh * l->ow * l->c_out);
}

// g (N*L, cout) <- dy (N, cout, L), one sample's transpose at a time, into gbuf (f32) or, in
// bf16 mode, gbuf16 (rounded on the way: the same values as the GEMMs' dy). By 16 x 16 blocks
// on the threads: one (o, p) element at a time, each write was 4·cout bytes past the last
// (the cnn's conv2, 4 M values: 0.7 % of a dense-SINGD run's samples)
static ngd_matrix stats_g(const nn_conv2d *l, float *gbuf, uint16_t *gbuf16) {
    const size_t N = l->n, L = l->oh * l->ow, cout = l->c_out, nob = (cout + 15) / 16;
    NN_OMP_FOR(N * L * cout)
    for (size_t nb = 0; nb < N * nob; nb++) {
        const size_t n = nb / nob, o0 = nb % nob * 16, o1 = o0 + 16 < cout ? o0 + 16 : cout;
        for (size_t p0 = 0; p0 < L; p0 += 16) {
            const size_t p1 = p0 + 16 < L ? p0 + 16 : L;
            for (size_t o = o0; o < o1; o++) {
                const size_t si = (n * cout + o) * L, di = n * L * cout + o;
                if (l->dyb) { // bf16 already (bf16 mode)
                    for (size_t p = p0; p < p1; p++)
                        gbuf16[di + p * cout] = l->dyb[si + p];
                } else if (gbuf16) {
                    for (size_t p = p0; p < p1; p++)
                        gbuf16[di + p * cout] = nn_to_bf16(l->dy[si + p]);
                } else {
                    for (size_t p = p0; p < p1; p++)
                        gbuf[di + p * cout] = l->dy[si + p];
                }
            }
        }
    }
    return gbuf16 ? ngd_matrix_bf16(gbuf16, N * L, cout) : ngd_matrix_f32(gbuf, N * L, cout);
}

nn_status nn_conv2d_stats(const nn_conv2d *l, float *scratch, ngd_matrix *a, ngd_matrix *g) {
    NN_ASSERT((l->x || l->xb) && (l->dy || l->dyb) && l->n >= 1 && scratch);
    const size_t N = l->n, L = l->oh * l->ow;
    float *abuf = scratch, *gbuf = scratch + N * L * l->d_in;    // the caller's scratch
    uint16_t *gbuf16 = l->w16 ? (uint16_t *)(void *)gbuf : NULL; // bf16 mode: g in bf16
    // a: libngd's own unfold (rows (n, o1, o2), columns (c, k1, k2), group-averaged), so the
    // matrix is by construction the one its documentation describes; a bf16 input is
    // decoded (exactly) into g's part first, which g overwrites after
    const float *x = l->x;
    if (!x) {
        const size_t xs = l->geom.c_in * l->geom.h * l->geom.w;
        NN_OMP_FOR(N * xs)
        for (size_t n = 0; n < N; n++)
            nn_bf16_decode(l->xb + n * xs, gbuf + n * xs, xs);
        x = gbuf;
    }
    if (ngd_unfold(&l->geom, N, x, false, abuf) != NGD_OK) return NN_ERR_ARG;
    *a = ngd_matrix_f32(abuf, N * L, l->d_in);
    *g = stats_g(l, gbuf, gbuf16);
    return NN_OK;
}

nn_status nn_conv2d_stats_xg(const nn_conv2d *l, float *scratch, ngd_matrix *x, ngd_matrix *g) {
    NN_ASSERT((l->x || l->xb) && (l->dy || l->dyb) && l->n >= 1 && scratch);
    const size_t xs = l->geom.c_in * l->geom.h * l->geom.w;
    *x = l->x ? ngd_matrix_f32(l->x, l->n, xs) : ngd_matrix_bf16(l->xb, l->n, xs);
    *g = stats_g(l, scratch, l->w16 ? (uint16_t *)(void *)scratch : NULL);
    return NN_OK;
}

size_t nn_conv2d_params(const nn_conv2d *l, nn_param *out) {
    size_t k = 0;
    if (out) out[k] = (nn_param){"weight", l->w, l->dw, l->c_out * l->d_in, NULL};
    k++;
    if (l->b) {
        if (out) out[k] = (nn_param){"bias", l->b, l->db, l->c_out, NULL};
        k++;
    }
    return k;
}
