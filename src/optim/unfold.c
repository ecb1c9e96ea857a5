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

ngd_status ngd_unfold(const ngd_conv_geom *g, size_t batch, const float *x, bool reduce,
                      float *out) {
    if (!g || !x || !out || batch == 0) return NGD_ERR_ARG;
    if (g->groups == 0 || g->c_in == 0 || g->c_in % g->groups != 0) return NGD_ERR_ARG;
    size_t oh = ngd_conv_out_h(g), ow = ngd_conv_out_w(g);
    if (oh == 0 || ow == 0) return NGD_ERR_ARG;
    const size_t cg = g->c_in / g->groups, kk = g->k1 * g->k2, cols = cg * kk;
    const size_t L = oh * ow, hw = g->h * g->w;
    const float ginv = 1.0f / (float)g->groups;
    if (reduce) memset(out, 0, batch * cols * sizeof(float));
    for (size_t n = 0; n < batch; n++) {
        const float *xn = x + n * g->c_in * hw;
        for (size_t o1 = 0; o1 < oh; o1++)
            for (size_t o2 = 0; o2 < ow; o2++) {
                float *row = reduce ? out + n * cols : out + (n * L + o1 * ow + o2) * cols;
                for (size_t c = 0; c < cg; c++)
                    for (size_t k1 = 0; k1 < g->k1; k1++) {
                        // signed input row; outside the image contributes 0 (zero padding)
                        ptrdiff_t i1 = (ptrdiff_t)(o1 * g->s1 + k1 * g->dil1) - (ptrdiff_t)g->p1;
                        for (size_t k2 = 0; k2 < g->k2; k2++) {
                            ptrdiff_t i2 =
                                (ptrdiff_t)(o2 * g->s2 + k2 * g->dil2) - (ptrdiff_t)g->p2;
                            float v = 0.0f;
                            if (i1 >= 0 && i2 >= 0 && (size_t)i1 < g->h && (size_t)i2 < g->w) {
                                size_t pix = (size_t)i1 * g->w + (size_t)i2;
                                for (size_t gr = 0; gr < g->groups; gr++)
                                    v += xn[(gr * cg + c) * hw + pix];
                                v *= ginv;
                            }
                            size_t col = c * kk + k1 * g->k2 + k2;
                            if (reduce)
                                row[col] += v;
                            else
                                row[col] = v;
                        }
                    }
            }
        if (reduce) {
            const float inv = 1.0f / (float)L;
            for (size_t j = 0; j < cols; j++)
                out[n * cols + j] *= inv;
        }
    }
    return NGD_OK;
}
