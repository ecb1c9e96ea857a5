/*
 * unfold.c — im2col for statistics of Conv2d layers (docs/algorithms.md#conv2d-inputs): channels
 * averaged over groups (channel = g·(C_in/G) + c), then one row per (n, o1, o2) holding the
 * patch x̄[n, c, o1·s1 − p1 + k1·δ1, o2·s2 − p2 + k2·δ2] (zero outside the image), columns
 * ordered (c, k1, k2) like the flattened weight. `reduce` returns the mean over locations.
 */
#include <string.h>

#include "impl.h"

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

// Patch value of channel c at input (i1, i2) of sample xn: the group average, 0 outside the
// image (zero padding). (0 + x)·1 for one group, as the sum it is.
static inline float patch_value(const ngd_conv_geom *g, const float *xn, size_t cg, size_t hw,
                                float ginv, size_t c, ptrdiff_t i1, ptrdiff_t i2) {
    float v = 0.0f;
    if (i1 >= 0 && i2 >= 0 && (size_t)i1 < g->h && (size_t)i2 < g->w) {
        const size_t pix = (size_t)i1 * g->w + (size_t)i2;
        for (size_t gr = 0; gr < g->groups; gr++)
            v += xn[(gr * cg + c) * hw + pix];
        v *= ginv;
    }
    return v;
}

// Rows of output row o1 of sample n (ow rows of cols, or the sample's one row += when
// reduce): column by column (c, k1, k2), each over o2, so that a column reads its input row
// in order. The additions into a reduced column come in (o1, o2) order, as a row-by-row scan
// makes them.
static void unfold_row(const ngd_conv_geom *g, const float *xn, size_t oh_row, size_t ow,
                       size_t cols, bool reduce, float *dst) {
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
                    hi = hi < ow ? hi : ow, lo = lo < hi ? lo : hi;
                    const bool row_in = i1 >= 0 && (size_t)i1 < g->h;
                    if (!row_in) lo = hi = 0;
                    const float *xr = row_in ? xn + c * hw + (size_t)i1 * g->w : xn;
                    for (size_t o2 = 0; o2 < lo; o2++)
                        dst[o2 * cols + col] = 0.0f;
                    for (size_t o2 = lo; o2 < hi; o2++) // (0 + x)·1: patch_value's arithmetic
                        dst[o2 * cols + col] = (0.0f + xr[(ptrdiff_t)(o2 * g->s2) + off]) * ginv;
                    for (size_t o2 = hi; o2 < ow; o2++)
                        dst[o2 * cols + col] = 0.0f;
                    continue;
                }
                for (size_t o2 = 0; o2 < ow; o2++) {
                    const ptrdiff_t i2 = (ptrdiff_t)(o2 * g->s2) + off;
                    const float v = patch_value(g, xn, cg, hw, ginv, c, i1, i2);
                    if (reduce)
                        dst[col] += v;
                    else
                        dst[o2 * cols + col] = v;
                }
            }
        }
}

ngd_status ngd_unfold(const ngd_conv_geom *g, size_t batch, const float *x, bool reduce,
                      float *out) {
    if (!g || !x || !out || batch == 0) return NGD_ERR_ARG;
    if (g->groups == 0 || g->c_in == 0 || g->c_in % g->groups != 0) return NGD_ERR_ARG;
    size_t oh = ngd_conv_out_h(g), ow = ngd_conv_out_w(g);
    if (oh == 0 || ow == 0) return NGD_ERR_ARG;
    const size_t cols = g->c_in / g->groups * g->k1 * g->k2, L = oh * ow,
                 xs = g->c_in * g->h * g->w;
    // threads over samples (reduce: each sample's row is one thread's) or over output rows
    if (reduce) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (batch * L * cols > NGD_PAR_MIN)
#endif
        for (size_t n = 0; n < batch; n++) {
            float *row = out + n * cols;
            memset(row, 0, cols * sizeof(float));
            for (size_t o1 = 0; o1 < oh; o1++)
                unfold_row(g, x + n * xs, o1, ow, cols, true, row);
            const float inv = 1.0f / (float)L;
            for (size_t j = 0; j < cols; j++)
                row[j] *= inv;
        }
        return NGD_OK;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (batch * L * cols > NGD_PAR_MIN)
#endif
    for (size_t r = 0; r < batch * oh; r++) {
        const size_t n = r / oh, o1 = r % oh;
        unfold_row(g, x + n * xs, o1, ow, cols, false, out + (n * L + o1 * ow) * cols);
    }
    return NGD_OK;
}
