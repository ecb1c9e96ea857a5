/*
 * conv_amx.c — a 3x3 'same' convolution (stride 1, padding 1, no groups) of one bf16 image
 * by Intel AMX tiles, without im2col: the bf16 mode's path for the layers whose channel
 * counts are multiples of 32 and whose images have an even width and 16k pixels (the cnn's
 * convolutions after the first; vgg16bn's down to 4x4).
 *
 * Why: through oneDNN's matmul, the im2col GEMM of a 32-channel layer has M = 32 output
 * channels and runs at 150-250 GFLOP/s on a core (the primitive reorders the whole im2col
 * into its blocked layout on every call). Here each 16x16 output tile (16 channels x 16
 * consecutive pixels) is summed over the 9 taps and the input channels straight from a copy
 * of the image laid out for the tile unit: pairs of channels interleaved (the bf16 dot
 * product takes its K in pairs), three copies shifted by the tap column so that the 16
 * pixels a tile row reads are consecutive. The weights are packed once per pass into whole
 * 1 KiB tiles. The tile loads bound it: on this machine's AMX a load costs about as much
 * as a tile product, and this blocking (2 x 2 output tiles) loads one tile per product.
 *
 * dW is the same unit's work with the sum over pixels: for each tap, dW_tap (c_out x c_in) =
 * dy (c_out x pixels) times the input shifted by the tap (pixels x c_in). Both run over the
 * image's rows padded to w+2 columns (dy is zero on the two extra ones), so that every tap's
 * shift is one offset into a flat array: the input goes to pairs of pixels with the
 * channels innermost, once for even and once for odd offsets.
 *
 * Each product is of two bf16 values, exact in float32, summed in float32 tiles: the same
 * contract as nn_gemm_bf16, in another order (tested against it and against float64). (In
 * dW, an infinite input value also meets the zeros of dy's extra columns: NaN instead of
 * an infinity, non-finite either way.)
 * Requires AMX-BF16 and the kernel's permission for the tile state (nn_amx_usable).
 */
#define _DEFAULT_SOURCE // syscall(2)
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define NN_HAVE_AMX_CODE 1
#endif
#include <stdatomic.h>

#include "nn.h"

#define TILE 16 // rows of a tile; 64 bytes a row: 32 bf16 or 16 f32

// ---- is it there ----

#ifdef NN_HAVE_AMX_CODE
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA  18

static bool amx_probe(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool bf16 = d & (1u << 22), tile = d & (1u << 24);
    // the kernel must grant the tile data state to this process (Linux 5.16+)
    return bf16 && tile && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}
#endif

bool nn_amx_usable(void) {
    static atomic_int state; // 0 unknown, 1 usable, 2 not
    int s = atomic_load_explicit(&state, memory_order_acquire);
    if (s == 0) {
        const char *e = getenv("NGD_CONV_AMX");
        bool ok = !(e && !strcmp(e, "0"));
#ifdef NN_HAVE_AMX_CODE
        ok = ok && amx_probe();
#else
        ok = false;
#endif
        s = ok ? 1 : 2;
        atomic_store_explicit(&state, s, memory_order_release);
    }
    return s == 1;
}

bool nn_conv3x3_amx_fits(size_t c, size_t h, size_t w, size_t co) {
    return c && co && h && c % 32 == 0 && co % 32 == 0 && w % 2 == 0 && w <= NN_AMX_MAX_W &&
           (h * w) % TILE == 0;
}

size_t nn_conv3x3_amx_pairs_n(size_t c, size_t h, size_t w) { return 3 * (c / 2) * (h + 2) * w; }

// ---- layouts ----

// wt: tiles [co/16][tap][c/32] of 16 rows (output channels) x 32 bf16 (input channels)
void nn_conv3x3_amx_pack(const float *w, size_t co, size_t c, uint16_t *wt) {
    const size_t nc = c / 32;
    for (size_t o = 0; o < co; o++)
        for (size_t ci = 0; ci < c; ci++)
            for (size_t k = 0; k < 9; k++)
                wt[(((o / TILE) * 9 + k) * nc + ci / 32) * 512 + (o % TILE) * 32 + ci % 32] =
                    nn_to_bf16(w[(o * c + ci) * 9 + k]);
}

// The pair layout: xs[k2] + r·PR + p·PP + j (p < c/2 channel pairs, r < h+2 padded rows,
// j < w) holds the pair of channels (2p, 2p+1) at padded row r, padded column j + k2 (row 0,
// row h+1 and the columns outside the image are zeros), low half the even channel. Rows of
// 16k pixels: rows outermost (PR = c/2·w, PP = w), so a tile's 16 pairs lie 64·w/16 bytes
// apart. Other widths: planes outermost (PR = w, PP = (h+2)·w), so that output pixel
// q = o1·w + o2 reads tap (k1, k2) at xs[k2] + p·PP + k1·w + q: any 16 consecutive pixels,
// across rows too, are 16 consecutive pairs.
typedef struct {
    size_t PR, PP, KS; // uint32 between rows, pairs, and the k2 copies
} pair_layout;

static pair_layout layout_of(size_t c, size_t h, size_t w) {
    const bool rows = w % TILE == 0;
    return (pair_layout){
        .PR = rows ? (c / 2) * w : w, .PP = rows ? w : (h + 2) * w, .KS = (c / 2) * (h + 2) * w};
}

void nn_conv3x3_amx_pairs(const uint16_t *x, size_t c, size_t h, size_t w, uint32_t *xs) {
    const pair_layout Y = layout_of(c, h, w);
    const size_t L = h * w;
    uint32_t row[NN_AMX_MAX_W + 2];
    for (size_t p = 0; p < c / 2; p++) {
        for (size_t k2 = 0; k2 < 3; k2++) {
            uint32_t *d = xs + k2 * Y.KS + p * Y.PP;
            memset(d, 0, w * sizeof(uint32_t));
            memset(d + (h + 1) * Y.PR, 0, w * sizeof(uint32_t));
        }
        for (size_t r = 0; r < h; r++) {
            const uint16_t *a = x + 2 * p * L + r * w, *b = a + L;
            row[0] = row[w + 1] = 0;
            for (size_t j = 0; j < w; j++)
                row[j + 1] = (uint32_t)a[j] | (uint32_t)b[j] << 16;
            for (size_t k2 = 0; k2 < 3; k2++)
                memcpy(xs + k2 * Y.KS + (r + 1) * Y.PR + p * Y.PP, row + k2, w * sizeof(uint32_t));
        }
    }
}

// ---- dW's layouts ----

size_t nn_conv3x3_amx_dw_q(size_t h, size_t w) { return (h * (w + 2) + 31) / 32 * 32; }

// pairs of one parity's layout (the largest pair index read, plus one, and a tile's slack)
static size_t z_pairs(size_t h, size_t w) { return nn_conv3x3_amx_dw_q(h, w) / 2 + (w + 2) + 16; }

size_t nn_conv3x3_amx_z_n(size_t c, size_t h, size_t w) { return 2 * z_pairs(h, w) * c; }

#ifdef NN_HAVE_AMX_CODE
// d[i][j] = the j-th row's i-th uint32 for 16 rows from s, lds uint16 apart (unaligned)
__attribute__((target("avx512f"))) static void transpose16(const uint16_t *s, size_t lds,
                                                           uint32_t d[16][16]) {
    __m512i r[16];
    for (int i = 0; i < 16; i++)
        r[i] = _mm512_loadu_si512(s + i * lds);
    nn_transpose16x32(r);
    for (int i = 0; i < 16; i++)
        _mm512_storeu_si512(d[i], r[i]);
}
#endif

// z[par][m][ci] = (f[ci][2m+par], f[ci][2m+par+1]), f the image padded by one row and column
// on each side, flat with rows of w+2. Per image row and 16 channels: the padded rows side by
// side, read as pairs at the parity's offset and transposed 16 pairs at a time.
void nn_conv3x3_amx_zpairs(const uint16_t *x, size_t c, size_t h, size_t w, uint32_t *z) {
    NN_ASSERT(nn_amx_usable()); // (AVX-512 transposes: every AMX CPU has AVX-512)
    const size_t PW = w + 2, Mz = z_pairs(h, w), L = h * w, half = PW / 2;
    for (size_t par = 0; par < 2; par++) { // the padding rows and what lies past them
        uint32_t *zp = z + par * Mz * c;
        memset(zp, 0, half * c * sizeof(uint32_t));
        memset(zp + (h + 1) * half * c, 0, (Mz - (h + 1) * half) * c * sizeof(uint32_t));
    }
    // a row: its padding, the image row, the padding, and zeros that the last transposed
    // block reads past the row (not stored)
    enum { RW = NN_AMX_MAX_W + 36 };
    static _Thread_local uint16_t rows[16][RW];
    for (size_t cc = 0; cc < 16; cc++)
        memset(&rows[cc][w + 1], 0, (RW - w - 1) * sizeof(uint16_t));
    for (size_t r = 0; r < h; r++) {
        const size_t mb = (r + 1) * half; // the row's first pair
        for (size_t cb = 0; cb < c; cb += 16) {
            for (size_t cc = 0; cc < 16; cc++) {
                rows[cc][0] = 0;
                memcpy(&rows[cc][1], x + (cb + cc) * L + r * w, w * sizeof(uint16_t));
            }
            for (size_t par = 0; par < 2; par++) {
                uint32_t *zp = z + par * Mz * c;
                for (size_t i = 0; i < half; i += 16) {
                    const size_t ni = half - i < 16 ? half - i : 16;
                    uint32_t t[16][16];
#ifdef NN_HAVE_AMX_CODE
                    transpose16(&rows[0][2 * i + par], RW, t);
#else
                    for (size_t cc = 0; cc < 16; cc++)
                        for (size_t ii = 0; ii < 16; ii++) {
                            const size_t j = 2 * (i + ii) + par;
                            t[ii][cc] = (uint32_t)rows[cc][j] | (uint32_t)rows[cc][j + 1] << 16;
                        }
#endif
                    for (size_t ii = 0; ii < ni; ii++)
                        memcpy(zp + (mb + i + ii) * c + cb, t[ii], sizeof t[ii]);
                }
            }
        }
    }
}

// dyp (co, q): dy's rows with two zero columns after each, zeros up to q (bf16 dyb, or dyf
// rounded)
void nn_conv3x3_amx_dypad(const uint16_t *dyb, const float *dyf, size_t co, size_t h, size_t w,
                          uint16_t *dyp) {
    const size_t PW = w + 2, Q = nn_conv3x3_amx_dw_q(h, w), L = h * w;
    for (size_t o = 0; o < co; o++) {
        uint16_t *d = dyp + o * Q;
        for (size_t r = 0; r < h; r++) {
            if (dyb)
                memcpy(d + r * PW, dyb + o * L + r * w, w * sizeof(uint16_t));
            else
                nn_bf16_encode(dyf + o * L + r * w, d + r * PW, w);
            d[r * PW + w] = d[r * PW + w + 1] = 0;
        }
        memset(d + h * PW, 0, (Q - h * PW) * sizeof(uint16_t));
    }
}

// ---- the kernel ----

#ifdef NN_HAVE_AMX_CODE
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

// Every tile 16 rows of 64 bytes. (The tile instructions are asm statements without memory
// operands: the barriers keep the compiler from moving loads and stores across a kernel.)
__attribute__((target("amx-tile"))) static void tiles_on(void) {
    _Alignas(64) tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++)
        cfg.rows[i] = TILE, cfg.colsb[i] = 64;
    __asm__ volatile("" ::: "memory");
    _tile_loadconfig(&cfg);
}

// Tiles 0-3: the sums of 2 channel blocks x 2 pixel segments (a last odd segment: tiles 0
// and 2 only); 4-5 the weights, 6-7 the image. Every tile is 16 rows of 64 bytes.
__attribute__((target("amx-tile,amx-bf16"))) static void amx_image(const uint32_t *xs,
                                                                   const uint16_t *wt, size_t c,
                                                                   size_t h, size_t w, size_t co,
                                                                   float *y, bool add) {
    const pair_layout Y = layout_of(c, h, w);
    const size_t L = h * w, nc = c / 32, nseg = L / TILE;
    tiles_on();
    for (size_t s = 0; s < nseg; s += 2) { // pixels [16 s, 16 s + 32) of the output
        const bool two = s + 1 < nseg;
        // (with rows outermost, both segments lie in one row: w is a multiple of 32, or they
        // are rows of 16; with planes outermost, pixel q is at q)
        const size_t pix = (s * TILE / w) * Y.PR + s * TILE % w;
        const size_t pix1 = ((s + 1) * TILE / w) * Y.PR + (s + 1) * TILE % w;
        for (size_t o = 0; o < co; o += 2 * TILE) {
            float *y00 = y + o * L + s * TILE, *y01 = y00 + TILE;
            float *y10 = y00 + TILE * L, *y11 = y10 + TILE;
            if (add) {
                _tile_loadd(0, y00, L * 4);
                _tile_loadd(2, y10, L * 4);
                if (two) {
                    _tile_loadd(1, y01, L * 4);
                    _tile_loadd(3, y11, L * 4);
                }
            } else {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
            }
            const uint16_t *w0 = wt + (o / TILE) * 9 * nc * 512, *w1 = w0 + 9 * nc * 512;
            for (size_t k1 = 0; k1 < 3; k1++)
                for (size_t k2 = 0; k2 < 3; k2++) {
                    const size_t t = k1 * 3 + k2;
                    const uint32_t *ba = xs + k2 * Y.KS + k1 * Y.PR + pix;
                    const uint32_t *bb = xs + k2 * Y.KS + k1 * Y.PR + pix1;
                    for (size_t b = 0; b < nc; b++) {
                        _tile_loadd(4, w0 + (t * nc + b) * 512, 64);
                        _tile_loadd(5, w1 + (t * nc + b) * 512, 64);
                        _tile_loadd(6, ba + b * TILE * Y.PP, Y.PP * 4);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_dpbf16ps(2, 5, 6);
                        if (two) {
                            _tile_loadd(7, bb + b * TILE * Y.PP, Y.PP * 4);
                            _tile_dpbf16ps(1, 4, 7);
                            _tile_dpbf16ps(3, 5, 7);
                        }
                    }
                }
            _tile_stored(0, y00, L * 4);
            _tile_stored(2, y10, L * 4);
            if (two) {
                _tile_stored(1, y01, L * 4);
                _tile_stored(3, y11, L * 4);
            }
        }
    }
    _tile_release();
    __asm__ volatile("" ::: "memory");
}

// dwt[k][o][ci] += Σ_q dyp[o][q] · f[ci][q + off_k]: tiles 0-3 the sums of 2 output x 2 input
// channel blocks, 4-5 dy, 6-7 the image
__attribute__((target("amx-tile,amx-bf16"))) static void amx_dw(const uint32_t *z,
                                                                const uint16_t *dyp, size_t c,
                                                                size_t h, size_t w, size_t co,
                                                                float *dwt) {
    const size_t PW = w + 2, Q = nn_conv3x3_amx_dw_q(h, w), Mz = z_pairs(h, w);
    tiles_on();
    for (size_t k = 0; k < 9; k++) {
        const size_t off = (k / 3) * PW + k % 3, par = off & 1, mo = (off - par) / 2;
        const uint32_t *zp = z + par * Mz * c + mo * c;
        for (size_t o = 0; o < co; o += 2 * TILE)
            for (size_t cb = 0; cb < c; cb += 2 * TILE) {
                float *d00 = dwt + (k * co + o) * c + cb, *d01 = d00 + TILE;
                float *d10 = d00 + TILE * c, *d11 = d10 + TILE;
                _tile_loadd(0, d00, c * 4);
                _tile_loadd(1, d01, c * 4);
                _tile_loadd(2, d10, c * 4);
                _tile_loadd(3, d11, c * 4);
                const uint16_t *a0 = dyp + o * Q, *a1 = a0 + TILE * Q;
                for (size_t q = 0; q < Q; q += 32) {
                    _tile_loadd(4, a0 + q, Q * 2);
                    _tile_loadd(5, a1 + q, Q * 2);
                    _tile_loadd(6, zp + (q / 2) * c + cb, c * 4);
                    _tile_loadd(7, zp + (q / 2) * c + cb + TILE, c * 4);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
                _tile_stored(0, d00, c * 4);
                _tile_stored(1, d01, c * 4);
                _tile_stored(2, d10, c * 4);
                _tile_stored(3, d11, c * 4);
            }
    }
    _tile_release();
    __asm__ volatile("" ::: "memory");
}
#endif

void nn_conv3x3_amx_dw(const uint32_t *z, const uint16_t *dyp, size_t c, size_t h, size_t w,
                       size_t co, float *dwt) {
    NN_ASSERT(nn_conv3x3_amx_fits(c, h, w, co) && nn_amx_usable());
    nn_flop_add(2 * (uint64_t)(h * w) * co * 9 * c); // (not the padding columns' products)
#ifdef NN_HAVE_AMX_CODE
    amx_dw(z, dyp, c, h, w, co, dwt);
#else
    (void)z, (void)dyp, (void)dwt;
#endif
}

void nn_conv3x3_amx(const uint32_t *xs, const uint16_t *wt, size_t c, size_t h, size_t w, size_t co,
                    float *y, bool add) {
    NN_ASSERT(nn_conv3x3_amx_fits(c, h, w, co) && nn_amx_usable());
    nn_flop_add(2 * (uint64_t)(h * w) * co * 9 * c);
#ifdef NN_HAVE_AMX_CODE
    amx_image(xs, wt, c, h, w, co, y, add);
#else
    (void)xs, (void)wt, (void)y, (void)add;
#endif
}
