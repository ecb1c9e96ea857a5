/*
 * unfold.c — im2col for statistics of Conv2d layers (docs/algorithms.md#conv2d-inputs): channels
 * averaged over groups (channel = g·(C_in/G) + c), then one row per (n, o1, o2) holding the
 * patch x̄[n, c, o1·s1 − p1 + k1·δ1, o2·s2 − p2 + k2·δ2] (zero outside the image), columns
 * ordered (c, k1, k2) like the flattened weight. `reduce` returns the mean over locations.
 */
#include <string.h>

#include "bf16.h"
#include "method.h"

static size_t out_size(size_t in, size_t k, size_t s, size_t p, size_t dil) {
    if (s == 0 || dil == 0 || k == 0) return 0;
    size_t span = dil * (k - 1) + 1;
    if (in + 2 * p < span) return 0;
    return (in + 2 * p - span) / s + 1;
}

size_t ngd_conv_out_h(const ngd_conv_geom *g) {
    return g ? out_size(g->h, g->k1, g->s1, g->p1, g->dil1) : 0;
}
size_t ngd_conv_out_w(const ngd_conv_geom *g) {
    return g ? out_size(g->w, g->k2, g->s2, g->p2, g->dil2) : 0;
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

static bool geom_ok(const ngd_conv_geom *g) {
    return g && g->groups != 0 && g->c_in != 0 && g->c_in % g->groups == 0 &&
           ngd_conv_out_h(g) != 0 && ngd_conv_out_w(g) != 0;
}

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
    if (!geom_ok(g) || batch == 0 || !x.data || x.rows != batch ||
        (x.dtype != NGD_F32 && x.dtype != NGD_BF16) || x.cols != g->c_in * g->h * g->w ||
        x.ld < x.cols)
        return false;
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
