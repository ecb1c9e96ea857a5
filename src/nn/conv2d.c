/*
 * conv2d.c — 2-d convolution (PyTorch nn.Conv2d: stride, zero padding, dilation, groups,
 * optional bias) as im2col + GEMM, forward and backward.
 *
 * With NCHW images and OIHW weights the natural im2col is the transposed one (Caffe's):
 * rows (c, k1, k2), columns (n, o1, o2). Its rows are runs of input rows, so it is built
 * with memcpy-length copies, and y = W · colᵀ lands directly in NCHW order. It is built
 * for a chunk of samples at a time (about 1024 columns: the GEMM runs near its peak and the
 * chunk stays in cache) and rebuilt in backward instead of being kept, so the layer holds
 * no batch-sized activations: x and dy are borrowed. The K-FAC matrices (a: rows (n, o1,
 * o2) x columns (c, k1, k2), ngd_unfold's layout; g: dy as (N*L, c_out)) are only built
 * when nn_conv2d_stats asks for them. No transposed convolution, no padding modes other
 * than zeros.
 */
#include <math.h>
#include <string.h>

#include "nn.h"

#define NN_CONV_CHUNK_COLS 1024 // target GEMM width (chunk * L)

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
    l->chunk = L >= NN_CONV_CHUNK_COLS ? 1 : NN_CONV_CHUNK_COLS / L;
    if (l->chunk > max_batch) l->chunk = max_batch;
    const size_t ncol = l->chunk * L;
    l->w = nn_malloc(nn_mul(c_out, l->d_in), sizeof(float));
    l->dw = nn_calloc(nn_mul(c_out, l->d_in), sizeof(float));
    if (bias) {
        l->b = nn_malloc(c_out, sizeof(float));
        l->db = nn_calloc(c_out, sizeof(float));
    }
    l->colt = nn_malloc(nn_mul(l->d_in, ncol), sizeof(float));
    l->dcolt = nn_malloc(nn_mul(l->d_in, ncol), sizeof(float));
    l->ybuf = nn_malloc(nn_mul(c_out, ncol), sizeof(float));
    if (!l->w || !l->dw || (bias && (!l->b || !l->db)) || !l->colt || !l->dcolt || !l->ybuf) {
        nn_conv2d_free(l);
        return NN_ERR_NOMEM;
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
    free(l->abuf);
    free(l->gbuf);
    memset(l, 0, sizeof *l);
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

// colt (d_in, nb*L) <- patches of samples x[0..nb) (each (c_in, h, w)), channels of group g:
// row (c, k1, k2), column (i, o1, o2)
static void im2col_t(const nn_conv2d *l, const float *x, size_t nb, size_t g, float *colt) {
    const ngd_conv_geom *G = &l->geom;
    const size_t cg = G->c_in / G->groups, H = G->h, W = G->w, OH = l->oh, OW = l->ow;
    const size_t L = OH * OW, ncol = nb * L, K1 = G->k1, K2 = G->k2, xs = G->c_in * H * W;
    NN_OMP_FOR(nb * l->d_in * L)
    for (size_t ic = 0; ic < nb * cg; ic++) {
        const size_t i = ic / cg, c = ic % cg;
        const float *xc = x + i * xs + (g * cg + c) * H * W;
        for (size_t k1 = 0; k1 < K1; k1++)
            for (size_t k2 = 0; k2 < K2; k2++) {
                size_t lo, hi;
                const ptrdiff_t off = col_range(l, k2, &lo, &hi);
                float *dst = colt + ((c * K1 + k1) * K2 + k2) * ncol + i * L;
                for (size_t o1 = 0; o1 < OH; o1++) {
                    float *d = dst + o1 * OW;
                    const ptrdiff_t i1 = (ptrdiff_t)(o1 * G->s1 + k1 * G->dil1) - (ptrdiff_t)G->p1;
                    if (i1 < 0 || (size_t)i1 >= H) {
                        memset(d, 0, OW * sizeof(float));
                        continue;
                    }
                    const float *src = xc + (size_t)i1 * W;
                    for (size_t o2 = 0; o2 < lo; o2++)
                        d[o2] = 0.0f;
                    if (G->s2 == 1) {
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

// dx's channels of group g, samples [0..nb) += the patches of dcolt (d_in, nb*L) put back
static void col2im_t_add(const nn_conv2d *l, const float *dcolt, size_t nb, size_t g, float *dx) {
    const ngd_conv_geom *G = &l->geom;
    const size_t cg = G->c_in / G->groups, H = G->h, W = G->w, OH = l->oh, OW = l->ow;
    const size_t L = OH * OW, ncol = nb * L, K1 = G->k1, K2 = G->k2, xs = G->c_in * H * W;
    // one (sample, channel) plane per item: items never write the same memory
    NN_OMP_FOR(nb * l->d_in * L)
    for (size_t ic = 0; ic < nb * cg; ic++) {
        const size_t i = ic / cg, c = ic % cg;
        float *dxc = dx + i * xs + (g * cg + c) * H * W;
        for (size_t k1 = 0; k1 < K1; k1++)
            for (size_t k2 = 0; k2 < K2; k2++) {
                size_t lo, hi;
                const ptrdiff_t off = col_range(l, k2, &lo, &hi);
                const float *src = dcolt + ((c * K1 + k1) * K2 + k2) * ncol + i * L;
                for (size_t o1 = 0; o1 < OH; o1++) {
                    const ptrdiff_t i1 = (ptrdiff_t)(o1 * G->s1 + k1 * G->dil1) - (ptrdiff_t)G->p1;
                    if (i1 < 0 || (size_t)i1 >= H) continue;
                    float *dr = dxc + (size_t)i1 * W;
                    const float *s = src + o1 * OW;
                    for (size_t o2 = lo; o2 < hi; o2++)
                        dr[(ptrdiff_t)(o2 * G->s2) + off] += s[o2];
                }
            }
    }
}

// ---- forward / backward ----

void nn_conv2d_forward(nn_conv2d *l, const float *x, float *y, size_t N) {
    NN_ASSERT(x && y && N >= 1 && N <= l->max_batch);
    const ngd_conv_geom *G = &l->geom;
    const size_t L = l->oh * l->ow, din = l->d_in, cout = l->c_out, groups = G->groups;
    const size_t cog = cout / groups, xs = G->c_in * G->h * G->w;
    l->x = x;
    l->dy = NULL;
    l->n = N;
    for (size_t n0 = 0; n0 < N; n0 += l->chunk) {
        const size_t nb = N - n0 < l->chunk ? N - n0 : l->chunk, ncol = nb * L;
        for (size_t g = 0; g < groups; g++) {
            im2col_t(l, x + n0 * xs, nb, g, l->colt);
            // ybuf rows of group g (cog, ncol) = W_g (cog, d_in) · colt (d_in, ncol)
            nn_sgemm(false, false, cog, ncol, din, 1.0f, l->w + g * cog * din, din, l->colt, ncol,
                     0.0f, l->ybuf + g * cog * ncol, ncol);
        }
        // y[n0 + i, co, :] = ybuf[co, i*L : (i+1)*L] + b[co]
        NN_OMP_FOR(nb * cout * L)
        for (size_t ic = 0; ic < nb * cout; ic++) {
            const size_t i = ic / cout, co = ic % cout;
            const float *src = l->ybuf + co * ncol + i * L;
            float *dst = y + ((n0 + i) * cout + co) * L;
            const float bo = l->b ? l->b[co] : 0.0f;
            for (size_t p = 0; p < L; p++)
                dst[p] = src[p] + bo;
        }
    }
}

void nn_conv2d_backward(nn_conv2d *l, const float *dy, float *dx) {
    NN_ASSERT(dy && l->x && l->n >= 1);
    const ngd_conv_geom *G = &l->geom;
    const size_t N = l->n, L = l->oh * l->ow, din = l->d_in, cout = l->c_out;
    const size_t groups = G->groups, cog = cout / groups, xs = G->c_in * G->h * G->w;
    l->dy = dy;
    if (l->db) {
        for (size_t n = 0; n < N; n++)
            for (size_t o = 0; o < cout; o++) {
                const float *src = dy + (n * cout + o) * L;
                float s = 0.0f;
                for (size_t p = 0; p < L; p++)
                    s += src[p];
                l->db[o] += s;
            }
    }
    for (size_t n0 = 0; n0 < N; n0 += l->chunk) {
        const size_t nb = N - n0 < l->chunk ? N - n0 : l->chunk, ncol = nb * L;
        // ybuf (cout, ncol) <- dy of the chunk, samples side by side
        for (size_t i = 0; i < nb; i++)
            for (size_t co = 0; co < cout; co++)
                memcpy(l->ybuf + co * ncol + i * L, dy + ((n0 + i) * cout + co) * L,
                       L * sizeof(float));
        for (size_t g = 0; g < groups; g++) {
            const float *yg = l->ybuf + g * cog * ncol; // (cog, ncol)
            im2col_t(l, l->x + n0 * xs, nb, g, l->colt);
            // dW_g (cog, d_in) += dy_g (cog, ncol) · coltᵀ (ncol, d_in)
            nn_sgemm(false, true, cog, din, ncol, 1.0f, yg, ncol, l->colt, ncol, 1.0f,
                     l->dw + g * cog * din, din);
            if (!dx) continue;
            // dcolt (d_in, ncol) = W_gᵀ (d_in, cog) · dy_g (cog, ncol), then back to images
            nn_sgemm(true, false, din, ncol, cog, 1.0f, l->w + g * cog * din, din, yg, ncol, 0.0f,
                     l->dcolt, ncol);
            col2im_t_add(l, l->dcolt, nb, g, dx + n0 * xs);
        }
    }
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

nn_status nn_conv2d_stats(nn_conv2d *l, ngd_matrix *a, ngd_matrix *g) {
    NN_ASSERT(l->x && l->dy && l->n >= 1);
    const size_t N = l->n, L = l->oh * l->ow, cout = l->c_out;
    if (!l->abuf) l->abuf = nn_malloc(nn_mul(l->max_batch * L, l->d_in), sizeof(float));
    if (!l->gbuf) l->gbuf = nn_malloc(nn_mul(l->max_batch * L, cout), sizeof(float));
    if (!l->abuf || !l->gbuf) return NN_ERR_NOMEM;
    // a: libngd's own unfold (rows (n, o1, o2), columns (c, k1, k2), group-averaged), so the
    // matrix is by construction the one its documentation describes
    if (ngd_unfold(&l->geom, N, l->x, false, l->abuf) != NGD_OK) return NN_ERR_ARG;
    // g (N*L, cout) <- dy (N, cout, L), one sample's transpose at a time
    NN_OMP_FOR(N * L * cout)
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < cout; o++) {
            const float *src = l->dy + (n * cout + o) * L;
            float *dst = l->gbuf + n * L * cout + o;
            for (size_t p = 0; p < L; p++)
                dst[p * cout] = src[p];
        }
    *a = ngd_matrix_f32(l->abuf, N * L, l->d_in);
    *g = ngd_matrix_f32(l->gbuf, N * L, cout);
    return NN_OK;
}

size_t nn_conv2d_params(const nn_conv2d *l, nn_param *out) {
    size_t k = 0;
    if (out) out[k] = (nn_param){"weight", l->w, l->dw, l->c_out * l->d_in};
    k++;
    if (l->b) {
        if (out) out[k] = (nn_param){"bias", l->b, l->db, l->c_out};
        k++;
    }
    return k;
}
