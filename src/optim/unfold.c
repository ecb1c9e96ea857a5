/*
 * unfold.c — im2col for statistics of Conv2d layers (docs/algorithms.md#conv2d-inputs): channels
 * averaged over groups (channel = g·(C_in/G) + c), then one row per (n, o1, o2) holding the
 * patch x̄[n, c, o1·s1 − p1 + k1·δ1, o2·s2 − p2 + k2·δ2] (zero outside the image), columns
 * ordered (c, k1, k2) like the flattened weight. `reduce` returns the mean over locations.
 * At the end: a 3x3 "same" convolution's Gram matrix of those rows, from shifts of the image
 * instead (ngd_unfold_gram_shifts, AVX-512; docs/algorithms.md#conv2d-inputs).
 */
#include <stdatomic.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GS_CODE 1 // (the Gram matrix by shifts: AVX-512 kernels)
#endif

#include "bf16.h"
#include "blas.h"
#include "method.h"

// (sizes past 2^30 are refused as invalid: in + 2p and dil·(k − 1) wrapped, so a padding of
// SIZE_MAX/2 gave an output size of 1)
#define GEOM_MAX ((size_t)1 << 30)
static size_t out_size(size_t in, size_t k, size_t s, size_t p, size_t dil) {
    if (s == 0 || dil == 0 || k == 0) return 0;
    if (in > GEOM_MAX || k > GEOM_MAX || s > GEOM_MAX || p > GEOM_MAX || dil > GEOM_MAX) return 0;
    size_t span = dil * (k - 1) + 1;
    if (in + 2 * p < span) return 0;
    return (in + 2 * p - span) / s + 1;
}

// A geometry the header allows (groups >= 1 dividing c_in >= 1, outputs of at least one
// pixel), with c_in and groups bounded as out_size bounds the rest, so that c_in·h·w,
// c_in·k1·k2 and oh·ow are sizes without overflow
static bool geom_valid(const ngd_conv_geom *g) {
    if (!g || g->groups == 0 || g->c_in == 0 || g->c_in > GEOM_MAX || g->c_in % g->groups)
        return false;
    const size_t oh = out_size(g->h, g->k1, g->s1, g->p1, g->dil1);
    const size_t ow = out_size(g->w, g->k2, g->s2, g->p2, g->dil2);
    int ok = 1;
    (void)ngd_mul_size(ngd_mul_size(g->c_in, g->h, &ok), g->w, &ok);
    (void)ngd_mul_size(ngd_mul_size(g->c_in, g->k1, &ok), g->k2, &ok);
    (void)ngd_mul_size(oh, ow, &ok);
    return oh && ow && ok;
}

size_t ngd_conv_out_h(const ngd_conv_geom *g) {
    return geom_valid(g) ? out_size(g->h, g->k1, g->s1, g->p1, g->dil1) : 0;
}
size_t ngd_conv_out_w(const ngd_conv_geom *g) {
    return geom_valid(g) ? out_size(g->w, g->k2, g->s2, g->p2, g->dil2) : 0;
}

// Input value i of sample xn, f32 or bf16 (exact: bf16 widens to f32 without rounding)
static inline float xval(const void *xn, bool b16, size_t i) {
    return b16 ? ngd_bf16_to_f32(((const uint16_t *)xn)[i]) : ((const float *)xn)[i];
}

// Patch value of channel c at input (i1, i2) of sample xn: the group average, 0 outside the
// image (zero padding). (0 + x)·1 for one group, as the sum it is.
static inline float patch_value(const ngd_conv_geom *g, const void *xn, bool b16, size_t cg,
                                size_t hw, float ginv, size_t c, ptrdiff_t i1, ptrdiff_t i2) {
    float v = 0.0f;
    if (i1 >= 0 && i2 >= 0 && (size_t)i1 < g->h && (size_t)i2 < g->w) {
        const size_t pix = (size_t)i1 * g->w + (size_t)i2;
        for (size_t gr = 0; gr < g->groups; gr++)
            v += xval(xn, b16, (gr * cg + c) * hw + pix);
        v *= ginv;
    }
    return v;
}

// Rows o2 in [o2a, o2b) of output row o1 of sample xn, row o2 at dst + (o2 - o2a)·ld (or, when
// reduce, the sample's one row at dst, +=): column by column (c, k1, k2), each over o2, so
// that a column reads its input row in order. The additions into a reduced column come in
// (o1, o2) order, as a row-by-row scan makes them.
static void unfold_seg(const ngd_conv_geom *g, const void *xn, bool b16, size_t oh_row, size_t o2a,
                       size_t o2b, size_t ld, bool reduce, float *dst) {
    const size_t cg = g->c_in / g->groups, hw = g->h * g->w;
    const float ginv = 1.0f / (float)g->groups;
    const ptrdiff_t i1_0 = (ptrdiff_t)(oh_row * g->s1) - (ptrdiff_t)g->p1;
    for (size_t c = 0; c < cg; c++)
        for (size_t k1 = 0; k1 < g->k1; k1++) {
            const ptrdiff_t i1 = i1_0 + (ptrdiff_t)(k1 * g->dil1);
            for (size_t k2 = 0; k2 < g->k2; k2++) {
                const size_t col = (c * g->k1 + k1) * g->k2 + k2;
                const ptrdiff_t off = (ptrdiff_t)(k2 * g->dil2) - (ptrdiff_t)g->p2;
                if (g->groups == 1 && !reduce) { // the common case, without a test per element
                    // o2 in [lo, hi) read input columns inside [0, w); the rest are padding
                    const ptrdiff_t s2 = (ptrdiff_t)g->s2, last = (ptrdiff_t)g->w - 1 - off;
                    size_t lo = off >= 0 ? 0 : (size_t)((-off + s2 - 1) / s2);
                    size_t hi = last < 0 ? 0 : (size_t)(last / s2 + 1);
                    hi = hi < o2b ? hi : o2b, lo = lo < hi ? lo : hi;
                    const bool row_in = i1 >= 0 && (size_t)i1 < g->h;
                    if (!row_in) lo = hi = 0;
                    lo = lo > o2a ? lo : o2a, hi = hi > lo ? hi : lo;
                    const size_t xr = row_in ? c * hw + (size_t)i1 * g->w : 0;
                    for (size_t o2 = o2a; o2 < lo; o2++)
                        dst[(o2 - o2a) * ld + col] = 0.0f;
                    // (0 + x)·1: patch_value's arithmetic
                    if (b16) {
                        const uint16_t *x = (const uint16_t *)xn + xr;
                        for (size_t o2 = lo; o2 < hi; o2++)
                            dst[(o2 - o2a) * ld + col] =
                                (0.0f + ngd_bf16_to_f32(x[(ptrdiff_t)(o2 * g->s2) + off])) * ginv;
                    } else {
                        const float *x = (const float *)xn + xr;
                        for (size_t o2 = lo; o2 < hi; o2++)
                            dst[(o2 - o2a) * ld + col] =
                                (0.0f + x[(ptrdiff_t)(o2 * g->s2) + off]) * ginv;
                    }
                    for (size_t o2 = hi; o2 < o2b; o2++)
                        dst[(o2 - o2a) * ld + col] = 0.0f;
                    continue;
                }
                for (size_t o2 = o2a; o2 < o2b; o2++) {
                    const ptrdiff_t i2 = (ptrdiff_t)(o2 * g->s2) + off;
                    const float v = patch_value(g, xn, b16, cg, hw, ginv, c, i1, i2);
                    if (reduce)
                        dst[col] += v;
                    else
                        dst[(o2 - o2a) * ld + col] = v;
                }
            }
        }
}

// The mean over the locations of sample n's rows, into its one row (cols floats)
static void unfold_mean(const ngd_conv_geom *g, const void *xn, bool b16, size_t oh, size_t ow,
                        size_t cols, float *row) {
    memset(row, 0, cols * sizeof(float));
    for (size_t o1 = 0; o1 < oh; o1++)
        unfold_seg(g, xn, b16, o1, 0, ow, cols, true, row);
    const float inv = 1.0f / (float)(oh * ow);
    for (size_t j = 0; j < cols; j++)
        row[j] *= inv;
}

static bool geom_ok(const ngd_conv_geom *g) { return geom_valid(g); }

ngd_status ngd_unfold(const ngd_conv_geom *g, size_t batch, const float *x, bool reduce,
                      float *out) {
    if (!g || !x || !out || batch == 0 || !geom_ok(g)) return NGD_ERR_ARG;
    const size_t oh = ngd_conv_out_h(g), ow = ngd_conv_out_w(g);
    const size_t cols = g->c_in / g->groups * g->k1 * g->k2, L = oh * ow,
                 xs = g->c_in * g->h * g->w;
    // threads over samples (reduce: each sample's row is one thread's) or over output rows
    if (reduce) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (batch * L * cols > NGD_PAR_MIN)
#endif
        for (size_t n = 0; n < batch; n++)
            unfold_mean(g, x + n * xs, false, oh, ow, cols, out + n * cols);
        return NGD_OK;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (batch * L * cols > NGD_PAR_MIN)
#endif
    for (size_t r = 0; r < batch * oh; r++) {
        const size_t n = r / oh, o1 = r % oh;
        unfold_seg(g, x + n * xs, false, o1, 0, ow, cols, false, out + (n * L + o1 * ow) * cols);
    }
    return NGD_OK;
}

// ---- a convolution's rows unfolded as they are read (ngd_optim_observe_conv) ----

bool ngd_unfold_src_init(ngd_unfold_src *u, const ngd_conv_geom *g, size_t batch, ngd_matrix x) {
    int ok = 1; // (batch·oh·ow, the statistics' rows, is a size too)
    if (!geom_ok(g) || batch == 0 || !x.data || x.rows != batch ||
        (x.dtype != NGD_F32 && x.dtype != NGD_BF16) || x.cols != g->c_in * g->h * g->w ||
        x.ld < x.cols)
        return false;
    (void)ngd_mul_size(batch, ngd_conv_out_h(g) * ngd_conv_out_w(g), &ok);
    if (!ok) return false;
    u->g = *g;
    u->x = x;
    u->oh = ngd_conv_out_h(g), u->ow = ngd_conv_out_w(g);
    u->cols = g->c_in / g->groups * g->k1 * g->k2;
    return true;
}

static const void *sample(const ngd_unfold_src *u, size_t n) {
    const size_t es = u->x.dtype == NGD_BF16 ? 2 : 4;
    return (const char *)u->x.data + n * u->x.ld * es;
}

void ngd_unfold_rows(const ngd_unfold_src *u, size_t r0, size_t nr, float *out, size_t ldo) {
    if (nr == 0) return;
    const size_t ow = u->ow, L = u->oh * ow, s0 = r0 / ow, s1 = (r0 + nr - 1) / ow;
    const bool b16 = u->x.dtype == NGD_BF16;
    // threads over the output rows (n, o1) the range meets, each clipped to the range
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (nr * u->cols > NGD_PAR_MIN)
#endif
    for (size_t s = s0; s <= s1; s++) {
        const size_t first = s * ow, a = first > r0 ? first : r0;
        const size_t b = first + ow < r0 + nr ? first + ow : r0 + nr;
        const size_t n = first / L, o1 = (first % L) / ow;
        unfold_seg(&u->g, sample(u, n), b16, o1, a - first, b - first, ldo, false,
                   out + (a - r0) * ldo);
    }
}

void ngd_unfold_mean_row(const ngd_unfold_src *u, size_t n, float *out) {
    unfold_mean(&u->g, sample(u, n), u->x.dtype == NGD_BF16, u->oh, u->ow, u->cols, out);
}

// ---- the Gram matrix of a 3x3 "same" convolution's rows, by shifts ----
// In padded coordinates (the image at rows 1..H, columns 1..W, zeros around it), feature
// (c, k1, k2) of output (n, o1, o2) reads x_c(n, o1 + k1, o2 + k2). The Gram entry of features
// (c, k) and (c', k') is then Σ x_c(n, q) x_c'(n, q + δ), δ = k' − k, over the positions q of
// the box [k1, k1 + H) x [k2, k2 + W): that is the sum over every q, F(δ) (the zeros keep it to
// the image), less the image's row H when k1 = 0 and its row 1 when k1 = 2 (only where δ1 = 0:
// elsewhere the partner of that row lies outside the image), less the image's column W or 1
// likewise where δ2 = 0, plus the corner both took away. F(−δ) = F(δ)ᵀ, so 13 shifts make the
// 81 blocks: about 13 / 40.5 of the multiply-adds of the unfolded rows' symmetric product
// (a little more: the padded rows are longer), and no unfolded rows to write and read.
// x is copied per chunk of samples, channel-major and zero-padded: X[c][q1][n][q2] (q1 < H + 2,
// q2 < W + 2), so that a shift δ is the pointer offset δ1·row + δ2 (row: a padded image row of
// the chunk's samples) and F(δ) a product of the channels' rows with the same rows offset
// (gs_corr, all 3 or 5 shifts of a δ1 at once); the two edge columns again column by column,
// Y[c][j][q1][n], for their corrections. A bias column (the ones of every row) is one more
// channel, of ones on the image, read at k = (1, 1). Inputs with an Inf give NaN where the
// unfolded rows give Inf (either way the statistics are not finite and refused). An entry
// with an edge correction is a difference of f32 sums, so its rounding error is relative to
// the whole image's sum F(δ): where an edge row or column is orders of magnitude larger than
// the rest (1000 against 1e-3), entries that leave it out lose digits the unfolded rows keep,
// and values near 1e19 can overflow F where the box's sum does not (then refused).
#ifdef GS_CODE
#define GS_NF 13                      // F(δ) kept: δ1 > 0, or δ1 = 0 and δ2 >= 0
#define GS_NS (GS_NF + 6 + 6 + 4 + 2) // (+ 2: F(0, 1), F(0, 2) transposed, gs_chunk)
// Where the shifts are taken (smaller images keep the unfolded rows). Any number of channels:
// the cnn's 3-channel first layer's K-side statistics took 7.4-8.1 ms from the rows, 3.1-3.3 so
#define GS_MIN_HW 8

static size_t gs_index(int d1, int d2) {
    return d1 == 0 ? (size_t)d2 : (size_t)(3 + (d1 - 1) * 5 + (d2 + 2));
}

// A chunk of nb samples in the scratch: X[c][q1][n][q2] with rows of `row` floats (nb·(W + 2),
// rounded up to 16: every row starts on a cache line, as X does, so that a tile's loads are
// aligned), a channel's block `bs` floats; then Y[c][j][q1][n], n padded to nbp (16s) with
// zeros; each with a margin of zeros for the shifts' reads past its end
typedef struct {
    size_t Hp, Wp, row, bs, nbp, ldy, xf, total;
} gs_layout;

static size_t gs_up16(size_t n) { return (n + 15) / 16 * 16; }

static gs_layout gs_lay(size_t cb, size_t H, size_t W, size_t nb) {
    gs_layout l;
    l.Hp = H + 2, l.Wp = W + 2, l.row = gs_up16(nb * l.Wp), l.bs = l.Hp * l.row;
    l.nbp = gs_up16(nb), l.ldy = 2 * l.Hp * l.nbp;
    l.xf = gs_up16(cb * l.bs + l.row + 2);
    l.total = 15 + l.xf + 2 * cb * l.Hp * l.nbp + l.nbp; // (15: X aligned to 64 bytes)
    return l;
}

// out[s][c·cb + e] (+)= Σ_{i < L} a_c[i] · a_e[i + off[s]], a_c = A + c·ld, for the ns <= 5
// offsets (all >= 0), every pair of the cb channels: the products of every shift at once, by
// tiles of 4 rows a_c (8 at 3 shifts or 1) against one row a_e (4·5 accumulators: 4 + 5 loads
// a vector of 16 for 20 FMAs), over blocks of L that keep every row's block in L2 and a tile's in
// L1. Threads take the (tile, e) pairs; each sum is added block by block in the order of L on any
// number of threads. oneDNN's sgemm ran these 33 x 33 products of 139 k at 70 GFLOP/s on a thread.
#define GS_MAXA 8 // rows a tile: 4 at 5 shifts, 8 at 3 or 1 (4·5 or 8·3 accumulators)
#define GS_MAXS 5

__attribute__((target("avx512f"), always_inline)) static inline void
gs_tile(const float *A, size_t ld, size_t c0, size_t e, size_t k0, size_t kn, const ptrdiff_t *off,
        const int na, const int ns, float *const *out, size_t cb) {
    __m512 acc[GS_MAXA][GS_MAXS];
    for (int a = 0; a < na; a++)
        for (int s = 0; s < ns; s++)
            acc[a][s] = _mm512_setzero_ps();
    const float *b = A + e * ld + k0;
    const float *ar[GS_MAXA];
    for (int a = 0; a < na; a++)
        ar[a] = A + (c0 + (size_t)a) * ld + k0;
    for (size_t i = 0; i < kn; i += 16) { // (kn: a multiple of 16, as every row length is)
        __m512 bv[GS_MAXS];
        for (int s = 0; s < ns; s++)
            bv[s] = _mm512_loadu_ps(b + (ptrdiff_t)i + off[s]);
        for (int a = 0; a < na; a++) {
            const __m512 av = _mm512_loadu_ps(ar[a] + i);
            for (int s = 0; s < ns; s++)
                acc[a][s] = _mm512_fmadd_ps(av, bv[s], acc[a][s]);
        }
    }
    for (int a = 0; a < na; a++)
        for (int s = 0; s < ns; s++)
            out[s][(c0 + (size_t)a) * cb + e] += _mm512_reduce_add_ps(acc[a][s]);
}

#define GS_CASE(NA, NS)                                                                            \
    case (NA)*8 + (NS):                                                                            \
        gs_tile(A, ld, c0, e, k0, kn, off, NA, NS, out, cb);                                       \
        return
#define GS_CASES(NS)                                                                               \
    GS_CASE(1, NS);                                                                                \
    GS_CASE(2, NS);                                                                                \
    GS_CASE(3, NS);                                                                                \
    GS_CASE(4, NS)
#define GS_CASES8(NS)                                                                              \
    GS_CASES(NS);                                                                                  \
    GS_CASE(5, NS);                                                                                \
    GS_CASE(6, NS);                                                                                \
    GS_CASE(7, NS);                                                                                \
    GS_CASE(8, NS)

__attribute__((target("avx512f"))) static void gs_tile_any(const float *A, size_t ld, size_t c0,
                                                           size_t e, size_t k0, size_t kn,
                                                           const ptrdiff_t *off, int na, int ns,
                                                           float *const *out, size_t cb) {
    switch (na * 8 + ns) {
        GS_CASES(5);
        GS_CASES8(3);
        GS_CASES8(1);
    default: NGD_ASSERT(0 && "gs_tile_any: 1-4 rows at 5 shifts, 1-8 at 3 or 1");
    }
}

// One set of shifts for gs_corr: ns offsets, the sums' arrays
typedef struct {
    int ns;
    bool tri; // only the pairs with e at or past the tile's first row
    ptrdiff_t off[GS_MAXS];
    float *out[GS_MAXS];
} gs_pass;

// gs_corr's sums for np passes over the same rows, by blocks of L, every pass of a block before
// the next block: the three passes of F read rows up to 2 image rows ahead of the block, which
// are still in L2 when the block that starts there comes (2 threads, C 32 at 32x32: 24.7 ms a
// Gram when each pass went over the whole chunk)
static void gs_corr(const float *A, size_t ld, size_t cb, size_t L, int npass, const gs_pass *ps,
                    float beta) {
    const size_t c2 = cb * cb;
    for (int q = 0; q < npass; q++) {
        for (int s = 0; s < ps[q].ns; s++)
            for (size_t i = 0; i < c2; i++)
                ps[q].out[s][i] = beta == 0.0f ? 0.0f : beta * ps[q].out[s][i];
        ngd_gemm_flops_add(2 * (uint64_t)ps[q].ns * c2 * L); // (counted as the products they are)
    }
    // blocks of L: every row's block within 1 MB (L2), a tile's within 32 KB (L1); L and the
    // blocks are multiples of 16 (the layout's rows, nbp), so the tiles need no masked tail
    NGD_ASSERT(L % 16 == 0);
    size_t kb = ((size_t)1 << 18) / cb / 16 * 16;
    kb = kb > 2048 ? 2048 : kb < 256 ? 256 : kb;
#pragma omp parallel if (cb * cb * L > NGD_PAR_MIN)
    for (size_t k0 = 0; k0 < L; k0 += kb) {
        const size_t kn = L - k0 < kb ? L - k0 : kb;
        for (int q = 0; q < npass; q++) {
            const int ns = ps[q].ns;
            const size_t ta = ns == 5 ? 4 : 8, nt = (cb + ta - 1) / ta;
            const size_t np = ps[q].tri ? nt * cb - ta * nt * (nt - 1) / 2 : nt * cb;
#pragma omp for schedule(static) nowait
            for (size_t p = 0; p < np; p++) {
                size_t c0 = 0, e = p; // pair p: tile of rows c0.., row e (tri: e >= c0)
                if (ps[q].tri)
                    while (e >= cb - c0)
                        e -= cb - c0, c0 += ta;
                else
                    c0 = p / cb * ta, e = p % cb;
                if (ps[q].tri) e += c0;
                const int na = (int)(cb - c0 < ta ? cb - c0 : ta);
                gs_tile_any(A, ld, c0, e, k0, kn, ps[q].off, na, ns, ps[q].out, cb);
            }
        }
    }
}

// The sums of one chunk added to S (beta 0 on the first chunk): F, then the rows 1 and H at
// δ = (0, 0..2), the columns 1 and W at δ = (0..2, 0), and the 4 corners at δ = 0
static void gs_chunk(size_t cb, size_t H, const gs_layout *l, const float *X, const float *Y,
                     float beta, float *S) {
    const size_t Hp = l->Hp, row = l->row, bs = l->bs, nb = l->nbp, ldy = l->ldy;
    const size_t c2 = cb * cb;
    float *F = S, *R = S + GS_NF * c2, *Cl = R + 6 * c2, *P = Cl + 6 * c2, *T = P + 4 * c2;
    gs_pass pf[3], pr[2], pc[2], pp[2];
    // F(d1, d2) at d2 = -2..2. At d1 = 0 only the pairs (c, e) with e past c's tile start: the
    // shifts -1 and -2 give F(0, 1) and F(0, 2) transposed (into T, gs_unfold0), the rest is
    // F(0, 0)'s mirror; so the 5-shift tiles, which ran at twice the rate of 3-shift ones
    for (int d1 = 0; d1 <= 2; d1++) {
        pf[d1].ns = 5, pf[d1].tri = d1 == 0;
        for (int s = 0; s < 5; s++) {
            pf[d1].off[s] = (ptrdiff_t)d1 * (ptrdiff_t)row - 2 + s;
            pf[d1].out[s] = d1 == 0 && s < 2 ? T + (size_t)s * c2 : F + gs_index(d1, s - 2) * c2;
        }
    }
    gs_corr(X + row, bs, cb, H * row, 3, pf, beta);
    for (size_t r = 0; r < 2; r++) { // rows 1 and H at d2 0..2, columns 1 and W at d1 0..2
        pr[r].ns = pc[r].ns = 3, pr[r].tri = pc[r].tri = false;
        for (int s = 0; s < 3; s++) {
            pr[r].off[s] = s, pr[r].out[s] = R + (r * 3 + (size_t)s) * c2;
            pc[r].off[s] = s * (ptrdiff_t)nb, pc[r].out[s] = Cl + (r * 3 + (size_t)s) * c2;
        }
        gs_corr(X + (r ? H : 1) * row, bs, cb, row, 1, &pr[r], beta);
        gs_corr(Y + r * Hp * nb + nb, ldy, cb, H * nb, 1, &pc[r], beta);
    }
    for (size_t r = 0; r < 2; r++) // the corners (rows 1 and H of columns 1 and W) at δ = 0
        for (size_t j = 0; j < 2; j++) {
            pp[j].ns = 1, pp[j].tri = false, pp[j].off[0] = 0, pp[j].out[0] = P + (r * 2 + j) * c2;
            gs_corr(Y + j * Hp * nb + (r ? H : 1) * nb, ldy, cb, nb, 1, &pp[j], beta);
        }
}

// F(0, ·) at the pairs gs_chunk left out (e before the start of c's 4-row tile): F(0, 0) by
// symmetry, F(0, 1) and F(0, 2) from the -1 and -2 shifts (T[s][e][c] = F(0, 2 - s)[c][e])
static void gs_unfold0(size_t cb, float *S) {
    const size_t c2 = cb * cb;
    float *F00 = S + gs_index(0, 0) * c2, *F01 = S + gs_index(0, 1) * c2;
    float *F02 = S + gs_index(0, 2) * c2, *T = S + (GS_NF + 16) * c2;
    for (size_t c = 0; c < cb; c++)
        for (size_t e = 0; e < c / 4 * 4; e++) {
            F00[c * cb + e] = F00[e * cb + c];
            F01[c * cb + e] = T[c2 + e * cb + c];
            F02[c * cb + e] = T[e * cb + c];
        }
}

// The Gram entry of features (c, k1, k2) and (e, l1, l2) from the sums S
static double gs_value(const float *S, size_t cb, size_t c, int k1, int k2, size_t e, int l1,
                       int l2) {
    const size_t c2 = cb * cb;
    const float *R = S + GS_NF * c2, *Cl = R + 6 * c2, *P = Cl + 6 * c2;
    const int d1 = l1 - k1, d2 = l2 - k2;
    const bool fl = d1 < 0 || (d1 == 0 && d2 < 0); // F(δ)[c][e] = F(−δ)[e][c]
    const size_t i = fl ? e : c, j = fl ? c : e;
    double v = (double)S[gs_index(fl ? -d1 : d1, fl ? -d2 : d2) * c2 + i * cb + j];
    if (d1 == 0 && k1 != 1) { // row H (k1 = 0) or row 1 (k1 = 2) is not in the box
        const size_t r = k1 == 0 ? 1 : 0, d = (size_t)(d2 < 0 ? -d2 : d2);
        v -= (double)R[(r * 3 + d) * c2 + (d2 < 0 ? e * cb + c : c * cb + e)];
    }
    if (d2 == 0 && k2 != 1) { // column W or 1
        const size_t r = k2 == 0 ? 1 : 0, d = (size_t)(d1 < 0 ? -d1 : d1);
        v -= (double)Cl[(r * 3 + d) * c2 + (d1 < 0 ? e * cb + c : c * cb + e)];
    }
    if (d1 == 0 && d2 == 0 && k1 != 1 && k2 != 1) // the corner taken away twice
        v += (double)P[((k1 == 0 ? 1 : 0) * 2 + (k2 == 0 ? 1 : 0)) * c2 + c * cb + e];
    return v;
}

// 1 where the CPU runs the kernels (AVX-512), else 2 (then the unfolded rows)
static int gs_cpu(void) {
    static atomic_int avx; // 0 unknown
    int av = atomic_load_explicit(&avx, memory_order_relaxed);
    if (av == 0) {
        __builtin_cpu_init();
        av = __builtin_cpu_supports("avx512f") ? 1 : 2;
        atomic_store_explicit(&avx, av, memory_order_relaxed);
    }
    return av;
}

size_t ngd_unfold_gram_shifts_floats(const ngd_unfold_src *u, size_t d, size_t nb) {
    if (gs_cpu() != 1) return 0;
    return gs_lay(u->g.c_in + (d > 9 * u->g.c_in), u->g.h, u->g.w, nb).total;
}

bool ngd_unfold_gram_shifts(const ngd_unfold_src *u, size_t d, float alpha, float beta, float *G,
                            float *scratch, size_t floats) {
    const ngd_conv_geom *g = &u->g;
    const size_t C = g->c_in, H = g->h, W = g->w, N = u->x.rows;
    const int av = gs_cpu();
    if (av != 1 || ngd_bf16_emul() || g->k1 != 3 || g->k2 != 3 || g->s1 != 1 || g->s2 != 1 ||
        g->p1 != 1 || g->p2 != 1 || g->dil1 != 1 || g->dil2 != 1 || g->groups != 1 ||
        H < GS_MIN_HW || W < GS_MIN_HW || (d != 9 * C && d != 9 * C + 1))
        return false;
    const size_t cb = C + (d > 9 * C), Hp = H + 2, Wp = W + 2;
    float *X = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    size_t nbmax = 0;
    while (nbmax < N && gs_lay(cb, H, W, nbmax + 1).total <= floats)
        nbmax++;
    if (nbmax == 0) return false;
    float *S = ngd_malloc(GS_NS * cb * cb, sizeof(float));
    if (!S) return false;
    const size_t nch = (N + nbmax - 1) / nbmax;
    const bool b16 = u->x.dtype == NGD_BF16; // (bf16 values widen exactly: the same products)
    const size_t hw = H * W, ld = u->x.ld;
    for (size_t ch = 0, n0 = 0; ch < nch; ch++) {
        const size_t nb = (N - n0 + (nch - ch) - 1) / (nch - ch);
        const gs_layout l = gs_lay(cb, H, W, nb);
        const size_t row = l.row, bs = l.bs, nbp = l.nbp;
        float *Y = X + l.xf;
#pragma omp parallel for schedule(static) if (cb * bs > NGD_PAR_MIN)
        for (size_t cr = 0; cr < cb * Hp; cr++) {
            const size_t c = cr / Hp, q1 = cr % Hp;
            float *o = X + c * bs + q1 * row;
            if (q1 == 0 || q1 == H + 1) {
                memset(o, 0, row * sizeof(float));
                continue;
            }
            memset(o + nb * Wp, 0, (row - nb * Wp) * sizeof(float));
            for (size_t n = 0; n < nb; n++, o += Wp) {
                o[0] = o[W + 1] = 0.0f;
                if (c == C)
                    for (size_t q2 = 1; q2 <= W; q2++)
                        o[q2] = 1.0f;
                else if (b16)
                    ngd_bf16_decode((const uint16_t *)u->x.data + (n0 + n) * ld + c * hw +
                                        (q1 - 1) * W,
                                    o + 1, W);
                else
                    memcpy(o + 1, (const float *)u->x.data + (n0 + n) * ld + c * hw + (q1 - 1) * W,
                           W * sizeof(float));
            }
        }
        memset(X + cb * bs, 0, (l.xf - cb * bs) * sizeof(float));
#pragma omp parallel for schedule(static) if (cb * bs > NGD_PAR_MIN)
        for (size_t cj = 0; cj < 2 * cb; cj++) {
            const size_t c = cj / 2, q2 = cj % 2 ? W : 1;
            float *y = Y + cj * Hp * nbp;
            for (size_t q1 = 0; q1 < Hp; q1++) {
                for (size_t n = 0; n < nb; n++)
                    y[q1 * nbp + n] = X[c * bs + q1 * row + n * Wp + q2];
                for (size_t n = nb; n < nbp; n++)
                    y[q1 * nbp + n] = 0.0f;
            }
        }
        memset(Y + 2 * cb * Hp * nbp, 0, nbp * sizeof(float));
        gs_chunk(cb, H, &l, X, Y, ch ? 1.0f : 0.0f, S);
        n0 += nb;
    }
    gs_unfold0(cb, S);
    // G's lower triangle (feature i >= j) from the sums, then mirrored: exactly symmetric
    const size_t nf = 9 * C;
#pragma omp parallel for schedule(dynamic, 16) if (d * d > NGD_PAR_MIN)
    for (size_t i = 0; i < d; i++) {
        const size_t c = i < nf ? i / 9 : C;
        const int k1 = i < nf ? (int)(i % 9 / 3) : 1, k2 = i < nf ? (int)(i % 3) : 1;
        for (size_t j = 0; j <= i; j++) {
            const size_t e = j < nf ? j / 9 : C;
            const int l1 = j < nf ? (int)(j % 9 / 3) : 1, l2 = j < nf ? (int)(j % 3) : 1;
            const float v = alpha * (float)gs_value(S, cb, c, k1, k2, e, l1, l2);
            G[i * d + j] = beta == 0.0f ? v : v + beta * G[i * d + j];
        }
    }
    ngd_mirror_lower(ngd_view_rm(G, d, d, d));
    ngd_free(S);
    return true;
}
#else
size_t ngd_unfold_gram_shifts_floats(const ngd_unfold_src *u, size_t d, size_t nb) {
    (void)u, (void)d, (void)nb;
    return 0;
}
bool ngd_unfold_gram_shifts(const ngd_unfold_src *u, size_t d, float alpha, float beta, float *G,
                            float *scratch, size_t floats) {
    (void)u, (void)d, (void)alpha, (void)beta, (void)G, (void)scratch, (void)floats;
    return false;
}
#endif

// ---- the unfolded rows times a matrix, without the padding's zeros ----

// Whether input position o·s − p + k·dil lies in [0, in); its index in *i
static bool tap_in(size_t o, size_t k, size_t s, size_t p, size_t dil, size_t in, size_t *i) {
    const ptrdiff_t v = (ptrdiff_t)(o * s + k * dil) - (ptrdiff_t)p;
    if (v < 0 || (size_t)v >= in) return false;
    *i = (size_t)v;
    return true;
}

size_t ngd_unfold_taps(const ngd_conv_geom *g) {
    if (!geom_ok(g)) return 0;
    const size_t oh = ngd_conv_out_h(g), ow = ngd_conv_out_w(g);
    size_t n = 0, i;
    for (size_t o1 = 0; o1 < oh; o1++)
        for (size_t k1 = 0; k1 < g->k1; k1++)
            if (tap_in(o1, k1, g->s1, g->p1, g->dil1, g->h, &i))
                for (size_t o2 = 0; o2 < ow; o2++)
                    for (size_t k2 = 0; k2 < g->k2; k2++)
                        n += tap_in(o2, k2, g->s2, g->p2, g->dil2, g->w, &i);
    return n;
}

void ngd_unfold_nhwc(const ngd_unfold_src *u, size_t batch, float *xt) {
    const ngd_conv_geom *g = &u->g;
    const size_t C = g->c_in, hw = g->h * g->w;
    const bool b16 = u->x.dtype == NGD_BF16;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (batch * C * hw > NGD_PAR_MIN)
#endif
    for (size_t n = 0; n < batch; n++) {
        const void *xn = sample(u, n);
        float *o = xt + n * hw * C;
        for (size_t c = 0; c < C; c++)
            for (size_t p = 0; p < hw; p++)
                o[p * C + c] = xval(xn, b16, c * hw + p);
    }
}

void ngd_unfold_times_at(const ngd_conv_geom *g, size_t batch, const float *xt, size_t d,
                         const float *M, size_t dn, size_t l, float *Y, size_t ldy) {
    const size_t ow = ngd_conv_out_w(g), o1 = l / ow, o2 = l % ow;
    const size_t C = g->c_in, KK = g->k1 * g->k2, cols = C * KK, xs = g->h * g->w * C;
    NGD_ASSERT(g->groups == 1 && (d == cols || d == cols + 1));
    // the bias row of M where there is a bias column (a row of ones), else zeros; then each
    // tap inside the image
    const ngd_view Yl = {Y, batch, dn, (ptrdiff_t)ldy, 1};
    for (size_t n = 0; n < batch; n++) {
        if (d > cols)
            memcpy(Y + n * ldy, M + cols * dn, dn * sizeof(float));
        else
            memset(Y + n * ldy, 0, dn * sizeof(float));
    }
    size_t i1, i2;
    for (size_t k1 = 0; k1 < g->k1; k1++) {
        if (!tap_in(o1, k1, g->s1, g->p1, g->dil1, g->h, &i1)) continue;
        for (size_t k2 = 0; k2 < g->k2; k2++) {
            if (!tap_in(o2, k2, g->s2, g->p2, g->dil2, g->w, &i2)) continue;
            // the batch's channel vectors at input (i1, i2): batch x C, a row a sample
            const ngd_cview A = {xt + (i1 * g->w + i2) * C, batch, C, (ptrdiff_t)xs, 1};
            // M's rows (c, k1, k2) for c = 0..C-1: C x dn, KK rows apart
            const ngd_cview B = {M + (k1 * g->k2 + k2) * dn, C, dn, (ptrdiff_t)(KK * dn), 1};
            ngd_gemm(1.0f, A, B, 1.0f, Yl);
        }
    }
}

void ngd_unfold_times(const ngd_conv_geom *g, size_t batch, const float *xt, size_t d,
                      const float *M, size_t dn, float *Y) {
    const size_t L = ngd_conv_out_h(g) * ngd_conv_out_w(g);
    for (size_t l = 0; l < L; l++) // (position l's rows: one a sample, L rows apart)
        ngd_unfold_times_at(g, batch, xt, d, M, dn, l, Y + l * dn, L * dn);
}
