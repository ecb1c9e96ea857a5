/*
 * conv_direct.c — a 3x3 'same' convolution (stride 1, padding 1, no groups) of one f32 image
 * by AVX-512 FMAs, without im2col: the f32 mode's forward and input gradient (the transposed
 * convolution, on the flipped weights) for layers with a multiple of 8 output channels, at
 * most 128 input channels and images of 256 pixels or more.
 *
 * Why: im2col copies each input value 9 times before its GEMM (13 % of the f32 cnn step in
 * perf, most of it libc's memmove), and the GEMMs of a 32- or 64-channel layer run at
 * 85-90 % of a core's FMA rate. Here the image is copied once into zero-bordered planes of
 * w+2 columns, and the output is computed over the same padded grid (the two extra columns
 * of each row are computed and dropped): every tap is then one offset into a flat plane, so
 * 16 consecutive outputs read 16 consecutive inputs. A block of 8 output channels x 48
 * positions stays in 24 registers while the sum runs over the input channels and the taps:
 * 3 input loads and 8 weight broadcasts feed 24 FMAs.
 *
 * Each output is Σ over (c, tap) of w·x in f32, in c-major then tap order: the same terms as
 * the im2col GEMM's, summed in another order (tested against float64 and that path).
 * Requires AVX-512F (nn_conv3x3_direct_usable; NGD_CONV_DIRECT=0 in the environment turns it
 * off).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define NN_HAVE_DIRECT_CODE 1
#endif

#include "nn.h"

#define CB    8 // output channels of a block
#define PV    3 // 16-wide vectors of positions of a block
#define SLACK 64
// Where it pays (vgg16bn, f32, interleaved): on images of fewer pixels a 48-position block is
// mostly padding (a 2x2 image: 8 of 48 used) and the im2col GEMM of a chunk of images shares
// its weights, and with many input channels a block's weights (8 x c x 9 floats) leave L1.
// With every 3x3 layer on this path vgg16bn's forward went 273 -> 565 ms; with these limits
// it is as before (the cnn's layers all pass).
#define DIRECT_MIN_HW 256
#define DIRECT_MAX_C                                                                               \
    128 // floats after each padded plane: a block's last vectors read past the grid

bool nn_conv3x3_direct_usable(void) {
    static atomic_int state; // 0 unknown, 1 usable, 2 not
    int s = atomic_load_explicit(&state, memory_order_relaxed);
    if (s == 0) {
        bool ok = false;
#ifdef NN_HAVE_DIRECT_CODE
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx512f");
#endif
        const char *e = getenv("NGD_CONV_DIRECT");
        if (e && !strcmp(e, "0")) ok = false;
        s = ok ? 1 : 2;
        atomic_store_explicit(&state, s, memory_order_relaxed);
    }
    return s == 1;
}

bool nn_conv3x3_direct_fits(size_t c, size_t h, size_t w, size_t co) {
    return c >= 1 && co % CB == 0 && h >= 1 && w >= 1 && h <= 4096 && w <= 4096 &&
           h * w >= DIRECT_MIN_HW && c <= DIRECT_MAX_C;
}

// floats of one padded plane and its slack
static size_t plane_n(size_t h, size_t w) { return (h + 2) * (w + 2) + SLACK; }

size_t nn_conv3x3_direct_pad_n(size_t c, size_t h, size_t w) { return c * plane_n(h, w); }

void nn_conv3x3_direct_pad_init(float *xp, size_t c, size_t h, size_t w) {
    memset(xp, 0, nn_conv3x3_direct_pad_n(c, h, w) * sizeof(float));
}

#ifdef NN_HAVE_DIRECT_CODE
// The lanes of the 16 positions from q whose column is inside the image (q < nq)
static __mmask16 valid_lanes(size_t q, size_t pw, size_t w, size_t nq) {
    unsigned m = 0;
    for (unsigned i = 0; i < 16; i++)
        if (q + i < nq && (q + i) % pw < w) m |= 1u << i;
    return (__mmask16)m;
}

// The block of positions from q0: each vector's valid lanes, and the output index of its
// first valid lane (the valid lanes are consecutive outputs: a row's end, the next's start)
static void block_lanes(size_t q0, size_t pw, size_t w, size_t nq, __mmask16 mk[PV],
                        size_t at[PV]) {
    for (int v = 0; v < PV; v++) {
        const size_t q = q0 + 16 * (size_t)v;
        mk[v] = valid_lanes(q, pw, w, nq);
        size_t f = q; // first valid position at or after q (if any lane is valid)
        if (f % pw >= w) f += pw - f % pw;
        at[v] = f / pw * w + f % pw;
    }
}

// y's planes o0.. (of hw outputs each) get the block's valid lanes, written or added, then
// the bias of each plane added (b: the block's, or NULL)
__attribute__((target("avx512f"), always_inline)) static inline void
block_store(__m512 acc[CB][PV], float *y, size_t hw, const __mmask16 mk[PV], const size_t at[PV],
            bool add, const float *b) {
    for (int i = 0; i < CB; i++) {
        float *yo = y + (size_t)i * hw;
        for (int v = 0; v < PV; v++) {
            if (!mk[v]) continue;
            __m512 r = acc[i][v];
            if (add) r = _mm512_add_ps(_mm512_maskz_expandloadu_ps(mk[v], yo + at[v]), r);
            if (b) r = _mm512_add_ps(r, _mm512_set1_ps(b[i]));
            _mm512_mask_compressstoreu_ps(yo + at[v], mk[v], r);
        }
    }
}

// The same into bf16 planes (written, not added): each value rounded as nn_to_bf16 does (to
// nearest even, a NaN kept quiet; vcvtneps2bf16 would flush subnormals to zero), packed to
// 16 bits and stored, a partial vector's valid lanes compressed to the front first
__attribute__((target("avx512f"), always_inline)) static inline void
block_store16(__m512 acc[CB][PV], uint16_t *y, size_t hw, const __mmask16 mk[PV],
              const size_t at[PV], const float *b) {
    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff);
    const __m512i quiet = _mm512_set1_epi32(0x40), abs = _mm512_set1_epi32(0x7fffffff);
    const __m512i inf = _mm512_set1_epi32(0x7f800000);
    for (int i = 0; i < CB; i++) {
        uint16_t *yo = y + (size_t)i * hw;
        for (int v = 0; v < PV; v++) {
            if (!mk[v]) continue;
            __m512 r = acc[i][v];
            if (b) r = _mm512_add_ps(r, _mm512_set1_ps(b[i]));
            const __m512i u = _mm512_castps_si512(r), hi = _mm512_srli_epi32(u, 16);
            const __m512i rn = _mm512_srli_epi32(
                _mm512_add_epi32(_mm512_add_epi32(u, half), _mm512_and_si512(hi, one)), 16);
            const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs), inf);
            __m512i h = _mm512_mask_or_epi32(rn, nan, hi, quiet);
            if (mk[v] == (__mmask16)0xffff) {
                _mm256_storeu_si256((__m256i *)(void *)(yo + at[v]), _mm512_cvtepi32_epi16(h));
            } else {
                h = _mm512_maskz_compress_epi32(mk[v], h);
                const int n = __builtin_popcount(mk[v]);
                _mm512_mask_cvtepi32_storeu_epi16(yo + at[v], (__mmask16)((1u << n) - 1u), h);
            }
        }
    }
}

// A block's vectors: the first padded position of each (src), its output index (at) and
// valid lanes (mk); nv of them (the rest: no lanes). Linear blocks walk the padded positions
// 16 at a time (the two padding columns of each row computed and dropped); where w is a
// multiple of 16 each vector is 16 outputs of one row instead, and no lane is wasted (1/8 of
// the products of a 16-wide plane, 1/16 of a 32-wide one).
typedef struct {
    size_t src[PV], at[PV];
    __mmask16 mk[PV];
    int nv;
} blk;

static blk block_at(size_t j0, size_t pw, size_t h, size_t w) {
    blk k;
    if (w % 16 == 0) { // row-aligned: vectors j0.. of the h * w/16
        const size_t spr = w / 16, nvec = h * spr;
        k.nv = (int)(nvec - j0 < PV ? nvec - j0 : PV);
        for (int v = 0; v < PV; v++) {
            const size_t j = v < k.nv ? j0 + (size_t)v : j0;
            k.src[v] = j / spr * pw + j % spr * 16;
            k.at[v] = j * 16;
            k.mk[v] = v < k.nv ? (__mmask16)0xffff : 0;
        }
        return k;
    }
    block_lanes(j0 * 16, pw, w, h * pw, k.mk, k.at);
    for (int v = 0; v < PV; v++)
        k.src[v] = j0 * 16 + 16 * (size_t)v;
    k.nv = PV;
    return k;
}

// vectors per plane for block_at: row-aligned ones, or 16 padded positions each
static size_t block_vectors(size_t h, size_t w) {
    return w % 16 == 0 ? h * (w / 16) : (h * (w + 2) + 15) / 16;
}

// The block's sums over the input channels and taps. The weights come packed (wpk: for each
// block of CB output channels, [c][tap][CB]), so the CB broadcasts of a tap read one
// pointer at constant offsets; the taps are unrolled, each a constant offset from the
// vectors' own pointers. (Reading W (co, c, 3, 3) in place took CB weight pointers and a
// table of tap offsets: the compiler spilled the vectors' indices to vector registers and
// moved them back on the FMA port every tap. One core of an Intel Xeon (family 6 model 207),
// 32 -> 32 channels at 32x32, best of 20 interleaved rounds: 127 -> 163 GFLOP/s, FMA peak 178.)
__attribute__((target("avx512f"), always_inline)) static inline void
direct_block(const float *xp, size_t c, size_t pp, size_t pw, const blk *k, const int nv,
             const float *wb, size_t o0, float *y, size_t hw, const float *b, bool add) {
    __m512 acc[CB][PV];
    for (int i = 0; i < CB; i++)
        for (int v = 0; v < PV; v++)
            acc[i][v] = _mm512_setzero_ps();
    const float *src[PV];
    for (int v = 0; v < PV; v++)
        src[v] = xp + k->src[v];
    for (size_t ci = 0; ci < c; ci++) {
        const float *wc = wb + ci * 9 * CB;
#pragma GCC unroll 9
        for (int t = 0; t < 9; t++) {
            const size_t o = ci * pp + (size_t)(t / 3) * pw + (size_t)(t % 3);
            __m512 xv[PV];
            for (int v = 0; v < nv; v++)
                xv[v] = _mm512_loadu_ps(src[v] + o);
            for (int i = 0; i < CB; i++) {
                const __m512 wv = _mm512_set1_ps(wc[t * CB + i]);
                for (int v = 0; v < nv; v++)
                    acc[i][v] = _mm512_fmadd_ps(wv, xv[v], acc[i][v]);
            }
        }
    }
    block_store(acc, y + o0 * hw, hw, k->mk, k->at, add, b ? b + o0 : NULL);
}

__attribute__((target("avx512f"))) static void direct(const float *xp, size_t c, size_t h, size_t w,
                                                      const float *wpk, size_t co, float *y,
                                                      const float *b, bool add) {
    const size_t pw = w + 2, pp = plane_n(h, w), nvec = block_vectors(h, w);
    for (size_t j0 = 0; j0 < nvec; j0 += PV) {
        const blk k = block_at(j0, pw, h, w);
        for (size_t o0 = 0; o0 < co; o0 += CB) {
            const float *wb = wpk + o0 * c * 9;
            if (k.nv == PV)
                direct_block(xp, c, pp, pw, &k, PV, wb, o0, y, h * w, b, add);
            else if (k.nv == 2)
                direct_block(xp, c, pp, pw, &k, 2, wb, o0, y, h * w, b, add);
            else
                direct_block(xp, c, pp, pw, &k, 1, wb, o0, y, h * w, b, add);
        }
    }
}

// The same on bf16 pairs: xp holds pairs of channels (2cp, 2cp+1) interleaved, one uint32
// per position; wp the weights' pairs, packed as direct_block's weights (for each block of CB
// output channels, [pair][tap][CB]); vdpbf16ps sums each pair's two products into the f32
// lane.
__attribute__((target("avx512f,avx512bf16"), always_inline)) static inline void
direct16_block(const uint32_t *xp, size_t np, size_t pp, size_t pw, const blk *k, const int nv,
               const uint32_t *wb, size_t o0, float *y, uint16_t *y16, size_t hw, const float *b,
               bool add) {
    __m512 acc[CB][PV];
    for (int i = 0; i < CB; i++)
        for (int v = 0; v < PV; v++)
            acc[i][v] = _mm512_setzero_ps();
    const uint32_t *src[PV];
    for (int v = 0; v < PV; v++)
        src[v] = xp + k->src[v];
    for (size_t cp = 0; cp < np; cp++) {
        const uint32_t *wc = wb + cp * 9 * CB;
#pragma GCC unroll 9
        for (int t = 0; t < 9; t++) {
            const size_t o = cp * pp + (size_t)(t / 3) * pw + (size_t)(t % 3);
            __m512bh xv[PV];
            for (int v = 0; v < nv; v++)
                xv[v] = (__m512bh)_mm512_loadu_si512(src[v] + o);
            for (int i = 0; i < CB; i++) {
                const __m512bh wv = (__m512bh)_mm512_set1_epi32((int)wc[t * CB + i]);
                for (int v = 0; v < nv; v++)
                    acc[i][v] = _mm512_dpbf16_ps(acc[i][v], wv, xv[v]);
            }
        }
    }
    if (y16)
        block_store16(acc, y16 + o0 * hw, hw, k->mk, k->at, b ? b + o0 : NULL);
    else
        block_store(acc, y + o0 * hw, hw, k->mk, k->at, add, b ? b + o0 : NULL);
}

__attribute__((target("avx512f,avx512bf16"))) static void
direct16(const uint32_t *xp, size_t np, size_t h, size_t w, const uint32_t *wp, size_t co, float *y,
         uint16_t *y16, const float *b, bool add) {
    const size_t pw = w + 2, pp = plane_n(h, w), nvec = block_vectors(h, w);
    for (size_t j0 = 0; j0 < nvec; j0 += PV) {
        const blk k = block_at(j0, pw, h, w);
        for (size_t o0 = 0; o0 < co; o0 += CB) {
            const uint32_t *wb = wp + o0 * np * 9;
            if (k.nv == PV)
                direct16_block(xp, np, pp, pw, &k, PV, wb, o0, y, y16, h * w, b, add);
            else if (k.nv == 2)
                direct16_block(xp, np, pp, pw, &k, 2, wb, o0, y, y16, h * w, b, add);
            else
                direct16_block(xp, np, pp, pw, &k, 1, wb, o0, y, y16, h * w, b, add);
        }
    }
}
#endif

// The interiors of c bordered planes of (h+2) x (w+2) elements of es bytes, pb bytes apart
// (the borders stay zero)
// (rows of a constant 32, 64 or 128 bytes, the cnn's and vgg16bn's, copy inline: through
// libc, a call per row of 64 bytes was 1.3 % of the bf16 cnn step in perf)
static inline __attribute__((always_inline)) void interiors_rows(char *xp, const char *x, size_t es,
                                                                 size_t pb, size_t c, size_t h,
                                                                 size_t w, size_t rb) {
    for (size_t ci = 0; ci < c; ci++)
        for (size_t r = 0; r < h; r++)
            memcpy(xp + ci * pb + ((r + 1) * (w + 2) + 1) * es, x + (ci * h + r) * w * es, rb);
}
static void bordered_interiors(char *xp, const char *x, size_t es, size_t pb, size_t c, size_t h,
                               size_t w) {
    const size_t rb = w * es;
    if (rb == 32)
        interiors_rows(xp, x, es, pb, c, h, w, 32);
    else if (rb == 64)
        interiors_rows(xp, x, es, pb, c, h, w, 64);
    else if (rb == 128)
        interiors_rows(xp, x, es, pb, c, h, w, 128);
    else
        interiors_rows(xp, x, es, pb, c, h, w, rb);
}

size_t nn_conv3x3_direct_wpk_n(size_t co, size_t c) { return co * c * 9; }

void nn_conv3x3_direct_pack(const float *wt, size_t co, size_t c, float *wpk) {
    for (size_t o = 0; o < co; o++)
        for (size_t ci = 0; ci < c; ci++)
            for (size_t t = 0; t < 9; t++)
                wpk[((o / CB * c + ci) * 9 + t) * CB + o % CB] = wt[(o * c + ci) * 9 + t];
}

void nn_conv3x3_direct(const float *x, size_t c, size_t h, size_t w, const float *wpk, size_t co,
                       float *y, const float *b, bool add, float *xp) {
    NN_ASSERT(nn_conv3x3_direct_usable() && nn_conv3x3_direct_fits(c, h, w, co));
    // (the borders and slack stay zero)
    bordered_interiors((char *)xp, (const char *)x, sizeof *x, plane_n(h, w) * sizeof *x, c, h, w);
#ifdef NN_HAVE_DIRECT_CODE
    direct(xp, c, h, w, wpk, co, y, b, add);
    nn_flop_add(2 * (uint64_t)(h * w) * co * 9 * c); // (not the padding columns' products)
#else
    (void)wpk, (void)co, (void)y, (void)b, (void)add;
#endif
}

// ---- bf16 pairs ----

bool nn_conv3x3_direct16_usable(void) {
    static atomic_int state; // 0 unknown, 1 usable, 2 not
    int s = atomic_load_explicit(&state, memory_order_relaxed);
    if (s == 0) {
        bool ok = nn_conv3x3_direct_usable();
#ifdef NN_HAVE_DIRECT_CODE
        ok = ok && __builtin_cpu_supports("avx512bf16");
#endif
        s = ok ? 1 : 2;
        atomic_store_explicit(&state, s, memory_order_relaxed);
    }
    return s == 1;
}

bool nn_conv3x3_direct16_pays(void) {
    return nn_conv3x3_direct16_usable() && !ngd_bf16_dot_slow(NULL);
}

size_t nn_conv3x3_direct16_pad_n(size_t c, size_t h, size_t w) {
    return (c + 1) / 2 * plane_n(h, w);
}

size_t nn_conv3x3_direct16_wp_n(size_t co, size_t c) { return co * ((c + 1) / 2) * 9; }

void nn_conv3x3_direct16_pack(const float *wt, size_t co, size_t c, uint32_t *wp) {
    const size_t np = (c + 1) / 2;
    for (size_t o = 0; o < co; o++)
        for (size_t cp = 0; cp < np; cp++)
            for (size_t t = 0; t < 9; t++) {
                const uint32_t lo = nn_to_bf16(wt[(o * c + 2 * cp) * 9 + t]);
                const uint32_t hi =
                    2 * cp + 1 < c ? nn_to_bf16(wt[(o * c + 2 * cp + 1) * 9 + t]) : 0;
                wp[((o / CB * np + cp) * 9 + t) * CB + o % CB] = lo | hi << 16;
            }
}

void nn_conv3x3_direct16(const uint16_t *x, size_t c, size_t h, size_t w, const uint32_t *wp,
                         size_t co, float *y, uint16_t *y16, const float *b, bool add,
                         uint32_t *xp) {
    NN_ASSERT(nn_conv3x3_direct16_usable() && nn_conv3x3_direct_fits(c, h, w, co));
    NN_ASSERT(!y != !y16 && (!y16 || !add));
    const size_t pw = w + 2, pp = plane_n(h, w), np = (c + 1) / 2, hw = h * w;
    for (size_t cp = 0; cp < np; cp++) { // the interiors: channels 2cp and 2cp+1 interleaved
        const uint16_t *lo = x + 2 * cp * hw, *hi = 2 * cp + 1 < c ? lo + hw : NULL;
        for (size_t r = 0; r < h; r++) {
            uint32_t *o = xp + cp * pp + (r + 1) * pw + 1;
            const uint16_t *ar = lo + r * w;
            if (hi) {
                const uint16_t *br = hi + r * w;
                for (size_t i = 0; i < w; i++)
                    o[i] = (uint32_t)ar[i] | (uint32_t)br[i] << 16;
            } else {
                for (size_t i = 0; i < w; i++)
                    o[i] = ar[i];
            }
        }
    }
#ifdef NN_HAVE_DIRECT_CODE
    direct16(xp, np, h, w, wp, co, y, y16, b, add);
    nn_flop_add(2 * (uint64_t)hw * co * 9 * c);
#else
    (void)wp, (void)co, (void)y, (void)y16, (void)b, (void)add;
#endif
}

// ---- bf16 weight gradient ----
//
// dW of one image without im2col: dwt[(c, tap)][o] += Σ over pixels p of dy[o][p] ·
// x[c][p + tap], x zero-bordered. The lanes are 16 output channels and vdpbf16ps sums over
// pairs of horizontally adjacent pixels: dy goes in as its planes' transpose taken as 32-bit
// words (a pixel pair's 16 channels in one vector), and each x pair is one broadcast 32-bit
// load from the bordered plane at the tap's offset (2-byte aligned). A tile of 9 taps of one
// input channel by 16·M output channels keeps 9·M sums in registers over the whole image:
// M dy vectors and 9 broadcasts feed 9·M vdpbf16ps. Measured (one thread, an image of
// 32x32, 32 -> 32 channels) 320-380 GFLOP/s against 420 for vdpbf16ps alone. One layer's dW
// of 128 images on 2 threads, im2col + oneDNN's bf16 GEMM -> this (interleaved in one
// process, ms): 3 -> 32 channels at 32x32 0.72 -> 0.56, 32 -> 32 at 32x32 4.35 -> 3.59,
// 32 -> 64 at 16x16 1.90 -> 1.73, 64 -> 64 at 16x16 3.72 -> 3.54.

// Elements of a bordered plane of dW's kernels (bf16: w even, so every plane starts 4-byte
// aligned)
static size_t dw_plane(size_t h, size_t w) { return (h + 2) * (w + 2); }

bool nn_conv3x3_dw16_fits(size_t c, size_t h, size_t w, size_t co) {
    return nn_conv3x3_direct16_usable() && w % 2 == 0 && nn_conv3x3_dw_fits(c, h, w, co);
}

size_t nn_conv3x3_dw16_buf_n(size_t c, size_t h, size_t w, size_t co) {
    // dy's pixel pairs, then the bordered planes, then an f32 dy's rounding
    return co * (h * w / 2) + (c * dw_plane(h, w) + 1) / 2 + co * (h * w / 2);
}

#ifdef NN_HAVE_DIRECT_CODE
// dwt[t][16m + lane] += acc[m][t]: a tile's sums onto the thread's dW part (rows of co)
__attribute__((target("avx512f"), always_inline)) static inline void
dw_tile_add(float *dwt, size_t co, int M, __m512 acc[][9]) {
    for (int t = 0; t < 9; t++)
        for (int m = 0; m < M; m++) {
            float *o = dwt + (size_t)t * co + 16 * (size_t)m;
            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), acc[m][t]));
        }
}

// The 9 taps of the plane xc by 16·M output channels from column o0 of dyp (pairs, co a row)
#define DW16_TILE(M)                                                                               \
    __attribute__((target("avx512f,avx512bf16"))) static void dw16_tile##M(                        \
        const void *dyv, size_t co, const void *xcv, size_t h, size_t w, float *dwt) {             \
        const uint32_t *dyp = dyv;                                                                 \
        const uint16_t *xc = xcv;                                                                  \
        const size_t pw = w + 2;                                                                   \
        __m512 acc[M][9];                                                                          \
        memset(acc, 0, sizeof acc);                                                                \
        for (size_t r = 0; r < h; r++) {                                                           \
            const uint32_t *dr = dyp + r * (w / 2) * co;                                           \
            const uint16_t *xr = xc + r * pw;                                                      \
            for (size_t j = 0; j < w; j += 2, dr += co) {                                          \
                __m512bh d[M];                                                                     \
                for (int m = 0; m < M; m++)                                                        \
                    d[m] = (__m512bh)_mm512_loadu_si512(dr + 16 * m);                              \
                for (int t = 0; t < 9; t++) {                                                      \
                    uint32_t v;                                                                    \
                    memcpy(&v, xr + (size_t)(t / 3) * pw + j + (size_t)(t % 3), sizeof v);         \
                    const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)v);                       \
                    for (int m = 0; m < M; m++)                                                    \
                        acc[m][t] = _mm512_dpbf16_ps(acc[m][t], d[m], xv);                         \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        dw_tile_add(dwt, co, M, acc);                                                              \
    }
DW16_TILE(1)
DW16_TILE(2)
DW16_TILE(3)

// dyp (n, co) <- dy (co, n), 16x16 at a time (32-bit values)
__attribute__((target("avx512f"))) static void dw_pixel_major(const uint32_t *d, size_t co,
                                                              size_t n, uint32_t *dyp) {
    const size_t n16 = n / 16 * 16;
    for (size_t o0 = 0; o0 < co; o0 += 16) {
        for (size_t p0 = 0; p0 < n16; p0 += 16) {
            __m512i v[16];
            for (int i = 0; i < 16; i++)
                v[i] = _mm512_loadu_si512(d + (o0 + (size_t)i) * n + p0);
            nn_transpose16x32(v);
            for (int j = 0; j < 16; j++)
                _mm512_storeu_si512(dyp + (p0 + (size_t)j) * co + o0, v[j]);
        }
        for (size_t p = n16; p < n; p++)
            for (size_t o = o0; o < o0 + 16; o++)
                dyp[p * co + o] = d[o * n + p];
    }
}

// One image's dW by tiles: output channels in blocks of 48, 32 or 16 (tile[2], [1], [0]; 64 as
// two of 32), each by every input channel's 9 taps. dyp: 4-byte elements, co a row; the
// bordered planes pb bytes apart.
typedef void (*dw_tile_fn)(const void *dyp, size_t co, const void *xc, size_t h, size_t w,
                           float *dwt);
static void dw_tiles(const dw_tile_fn tile[3], const uint32_t *dyp, const char *xp, size_t pb,
                     size_t c, size_t h, size_t w, size_t co, float *dwt) {
    for (size_t o0 = 0; o0 < co;) {
        const size_t m = co - o0 >= 48 && co - o0 != 64 ? 3 : co - o0 >= 32 ? 2 : 1;
        for (size_t ci = 0; ci < c; ci++)
            tile[m - 1](dyp + o0, co, xp + ci * pb, h, w, dwt + ci * 9 * co + o0);
        o0 += 16 * m;
    }
    nn_flop_add(2 * (uint64_t)(h * w) * co * 9 * c);
}
#endif

void nn_conv3x3_dw16(const uint16_t *x, const uint16_t *dy16, const float *dy, size_t c, size_t h,
                     size_t w, size_t co, float *dwt, uint32_t *buf) {
    NN_ASSERT(nn_conv3x3_dw16_fits(c, h, w, co) && !dy16 != !dy);
    const size_t ps = dw_plane(h, w), hw = h * w, pairs = hw / 2;
    uint32_t *dyp = buf;
    char *xp = (char *)(buf + co * pairs);
    uint16_t *dyr = (uint16_t *)(void *)(buf + co * pairs + (c * ps + 1) / 2);
    bordered_interiors(xp, (const char *)x, sizeof *x, ps * sizeof *x, c, h, w);
    if (dy) { // an f32 dy, rounded as the GEMM paths round it
        nn_bf16_encode(dy, dyr, co * hw);
        dy16 = dyr;
    }
#ifdef NN_HAVE_DIRECT_CODE
    static const dw_tile_fn tiles[3] = {dw16_tile1, dw16_tile2, dw16_tile3};
    dw_pixel_major((const uint32_t *)(const void *)dy16, co, pairs, dyp); // (pairs as words)
    dw_tiles(tiles, dyp, xp, ps * sizeof *x, c, h, w, co, dwt);
#else
    (void)dyp, (void)dwt;
#endif
}

// ---- f32 weight gradient ----
//
// The same sum in f32 by FMAs: dy transposed pixel-major (a pixel's 16 channels in one
// vector), each x broadcast from the zero-bordered plane at the tap's offset; per pixel M dy
// vectors and 9 broadcasts feed 9·M FMAs.

bool nn_conv3x3_dw_fits(size_t c, size_t h, size_t w, size_t co) {
    return nn_conv3x3_direct_usable() && c >= 1 && co >= 16 && co % 16 == 0 && h >= 1 &&
           h <= 4096 && w <= 4096 && h * w >= DIRECT_MIN_HW;
}

size_t nn_conv3x3_dw_buf_n(size_t c, size_t h, size_t w, size_t co) {
    return co * h * w + c * dw_plane(h, w); // dy pixel-major, then the bordered planes
}

#ifdef NN_HAVE_DIRECT_CODE
#define DW32_TILE(M)                                                                               \
    __attribute__((target("avx512f"))) static void dw32_tile##M(                                   \
        const void *dyv, size_t co, const void *xcv, size_t h, size_t w, float *dwt) {             \
        const float *dyp = dyv, *xc = xcv;                                                         \
        const size_t pw = w + 2;                                                                   \
        __m512 acc[M][9];                                                                          \
        memset(acc, 0, sizeof acc);                                                                \
        for (size_t r = 0; r < h; r++) {                                                           \
            const float *dr = dyp + r * w * co, *xr = xc + r * pw;                                 \
            for (size_t j = 0; j < w; j++, dr += co) {                                             \
                __m512 d[M];                                                                       \
                for (int m = 0; m < M; m++)                                                        \
                    d[m] = _mm512_loadu_ps(dr + 16 * m);                                           \
                for (int t = 0; t < 9; t++) {                                                      \
                    const __m512 xv =                                                              \
                        _mm512_set1_ps(xr[(size_t)(t / 3) * pw + j + (size_t)(t % 3)]);            \
                    for (int m = 0; m < M; m++)                                                    \
                        acc[m][t] = _mm512_fmadd_ps(d[m], xv, acc[m][t]);                          \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        dw_tile_add(dwt, co, M, acc);                                                              \
    }
DW32_TILE(1)
DW32_TILE(2)
DW32_TILE(3)

#endif

void nn_conv3x3_dw(const float *x, const float *dy, size_t c, size_t h, size_t w, size_t co,
                   float *dwt, float *buf) {
    NN_ASSERT(nn_conv3x3_dw_fits(c, h, w, co));
    const size_t ps = dw_plane(h, w), hw = h * w;
    uint32_t *dyp = (uint32_t *)(void *)buf;
    char *xp = (char *)(buf + co * hw);
    bordered_interiors(xp, (const char *)x, sizeof *x, ps * sizeof *x, c, h, w);
#ifdef NN_HAVE_DIRECT_CODE
    static const dw_tile_fn tiles[3] = {dw32_tile1, dw32_tile2, dw32_tile3};
    dw_pixel_major((const uint32_t *)(const void *)dy, co, hw, dyp);
    dw_tiles(tiles, dyp, xp, ps * sizeof *x, c, h, w, co, dwt);
#else
    (void)dy, (void)dyp, (void)dwt;
#endif
}
