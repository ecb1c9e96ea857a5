/*
 * conv2d.c — 2-d convolution (PyTorch nn.Conv2d: stride, zero padding, dilation, groups,
 * optional bias) as im2col + one GEMM per group, forward and backward.
 *
 * The im2col matrix is kept from forward to backward: it is both the operand of the
 * weight gradient and the K-FAC input `a` (rows (n, o1, o2), columns (c, k1, k2), exactly
 * ngd_unfold's layout), so the layer trades memory (N*L*d_in floats per group) for not
 * recomputing it. Output-gradients are permuted once to (N*L, c_out), which is both the
 * GEMM operand and the K-FAC `g`. No transposed convolution, no non-zero padding modes.
 */
#include <math.h>
#include <string.h>

#include "nn.h"

// rows of dcol processed per backward GEMM: enough for the GEMM to run near its peak
#define NN_CONV_CHUNK_ROWS 512

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
    const size_t L = oh * ow, nl = nn_mul(max_batch, L);
    l->chunk = L >= NN_CONV_CHUNK_ROWS ? 1 : NN_CONV_CHUNK_ROWS / L;
    if (l->chunk > max_batch) l->chunk = max_batch;
    l->w = nn_malloc(nn_mul(c_out, l->d_in), sizeof(float));
    l->dw = nn_calloc(nn_mul(c_out, l->d_in), sizeof(float));
    if (bias) {
        l->b = nn_malloc(c_out, sizeof(float));
        l->db = nn_calloc(c_out, sizeof(float));
    }
    l->col = nn_malloc(nn_mul(geom->groups, nn_mul(nl, l->d_in)), sizeof(float));
    l->yg = nn_malloc(nn_mul(nl, c_out), sizeof(float));
    l->dcol = nn_malloc(nn_mul(l->chunk * L, l->d_in), sizeof(float));
    if (!l->w || !l->dw || (bias && (!l->b || !l->db)) || !l->col || !l->yg || !l->dcol) {
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
    free(l->col);
    free(l->yg);
    free(l->dcol);
    free(l->amean);
    memset(l, 0, sizeof *l);
}

// ---- im2col / col2im of one sample and one group ----

// col (L, d_in) <- patches of x's channels [g*cg, (g+1)*cg); x is one sample (c_in, h, w)
static void im2col(const nn_conv2d *l, const float *x, size_t g, float *col) {
    const ngd_conv_geom *G = &l->geom;
    const size_t cg = G->c_in / G->groups, H = G->h, W = G->w, kk = G->k1 * G->k2;
    for (size_t o1 = 0; o1 < l->oh; o1++)
        for (size_t o2 = 0; o2 < l->ow; o2++) {
            float *row = col + (o1 * l->ow + o2) * l->d_in;
            for (size_t c = 0; c < cg; c++) {
                const float *xc = x + (g * cg + c) * H * W;
                for (size_t k1 = 0; k1 < G->k1; k1++) {
                    // signed input coordinates: outside the image reads the zero padding
                    ptrdiff_t i1 = (ptrdiff_t)(o1 * G->s1 + k1 * G->dil1) - (ptrdiff_t)G->p1;
                    float *dst = row + c * kk + k1 * G->k2;
                    if (i1 < 0 || (size_t)i1 >= H) {
                        memset(dst, 0, G->k2 * sizeof(float));
                        continue;
                    }
                    const float *xr = xc + (size_t)i1 * W;
                    for (size_t k2 = 0; k2 < G->k2; k2++) {
                        ptrdiff_t i2 = (ptrdiff_t)(o2 * G->s2 + k2 * G->dil2) - (ptrdiff_t)G->p2;
                        dst[k2] = (i2 < 0 || (size_t)i2 >= W) ? 0.0f : xr[i2];
                    }
                }
            }
        }
}

// dx's channels [g*cg, (g+1)*cg) += the patches of dcol (L, d_in) put back in place
static void col2im_add(const nn_conv2d *l, const float *dcol, size_t g, float *dx) {
    const ngd_conv_geom *G = &l->geom;
    const size_t cg = G->c_in / G->groups, H = G->h, W = G->w, kk = G->k1 * G->k2;
    for (size_t o1 = 0; o1 < l->oh; o1++)
        for (size_t o2 = 0; o2 < l->ow; o2++) {
            const float *row = dcol + (o1 * l->ow + o2) * l->d_in;
            for (size_t c = 0; c < cg; c++) {
                float *dxc = dx + (g * cg + c) * H * W;
                for (size_t k1 = 0; k1 < G->k1; k1++) {
                    ptrdiff_t i1 = (ptrdiff_t)(o1 * G->s1 + k1 * G->dil1) - (ptrdiff_t)G->p1;
                    if (i1 < 0 || (size_t)i1 >= H) continue;
                    const float *src = row + c * kk + k1 * G->k2;
                    float *dr = dxc + (size_t)i1 * W;
                    for (size_t k2 = 0; k2 < G->k2; k2++) {
                        ptrdiff_t i2 = (ptrdiff_t)(o2 * G->s2 + k2 * G->dil2) - (ptrdiff_t)G->p2;
                        if (i2 >= 0 && (size_t)i2 < W) dr[i2] += src[k2];
                    }
                }
            }
        }
}

// ---- forward / backward ----

void nn_conv2d_forward(nn_conv2d *l, const float *x, float *y, size_t N) {
    NN_ASSERT(x && y && N >= 1 && N <= l->max_batch);
    const ngd_conv_geom *G = &l->geom;
    const size_t L = l->oh * l->ow, nl = N * L, din = l->d_in, cout = l->c_out;
    const size_t groups = G->groups, cog = cout / groups, xs = G->c_in * G->h * G->w;
    const size_t gstride = N * L * din; // group blocks of col are packed for this batch
    l->n = N;
    l->has_grad = false;
    // col (groups, N*L, d_in): one (L, d_in) block per (group, sample)
    NN_OMP_FOR(N * L * din * groups)
    for (size_t n = 0; n < N; n++)
        for (size_t g = 0; g < groups; g++)
            im2col(l, x + n * xs, g, l->col + g * gstride + n * L * din);
    // yg (N*L, cout): columns of group g = col_g (N*L, d_in) · W_gᵀ (d_in, cog)
    for (size_t g = 0; g < groups; g++)
        nn_sgemm(false, true, nl, cog, din, 1.0f, l->col + g * gstride, din, l->w + g * cog * din,
                 din, 0.0f, l->yg + g * cog, cout);
    // y (N, cout, L) = yg permuted + bias
    NN_OMP_FOR(N * L * cout)
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < cout; o++) {
            const float bo = l->b ? l->b[o] : 0.0f;
            float *yo = y + (n * cout + o) * L;
            const float *src = l->yg + n * L * cout + o;
            for (size_t p = 0; p < L; p++)
                yo[p] = src[p * cout] + bo;
        }
}

void nn_conv2d_backward(nn_conv2d *l, const float *dy, float *dx) {
    NN_ASSERT(dy && l->n >= 1);
    const ngd_conv_geom *G = &l->geom;
    const size_t N = l->n, L = l->oh * l->ow, nl = N * L, din = l->d_in, cout = l->c_out;
    const size_t groups = G->groups, cog = cout / groups, xs = G->c_in * G->h * G->w;
    const size_t gstride = N * L * din;
    // yg (N*L, cout) <- dy (N, cout, L) permuted: rows (n, o1, o2), the K-FAC `g`
    NN_OMP_FOR(N * L * cout)
    for (size_t n = 0; n < N; n++)
        for (size_t o = 0; o < cout; o++) {
            const float *src = dy + (n * cout + o) * L;
            float *dst = l->yg + n * L * cout + o;
            for (size_t p = 0; p < L; p++)
                dst[p * cout] = src[p];
        }
    l->has_grad = true;
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
    // dW_g (cog, d_in) += yg_gᵀ (cog, N*L) · col_g (N*L, d_in)
    for (size_t g = 0; g < groups; g++)
        nn_sgemm(true, false, cog, din, nl, 1.0f, l->yg + g * cog, cout, l->col + g * gstride, din,
                 1.0f, l->dw + g * cog * din, din);
    if (!dx) return;
    // dx += col2im(dcol) with dcol_g (rows, d_in) = yg_g (rows, cog) · W_g (cog, d_in),
    // a chunk of samples at a time so the scratch stays small
    for (size_t n0 = 0; n0 < N; n0 += l->chunk) {
        const size_t nb = N - n0 < l->chunk ? N - n0 : l->chunk;
        for (size_t g = 0; g < groups; g++) {
            nn_sgemm(false, false, nb * L, din, cog, 1.0f, l->yg + n0 * L * cout + g * cog, cout,
                     l->w + g * cog * din, din, 0.0f, l->dcol, din);
            NN_OMP_FOR(nb * L * din)
            for (size_t i = 0; i < nb; i++)
                col2im_add(l, l->dcol + i * L * din, g, dx + (n0 + i) * xs);
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
    NN_ASSERT(l->n >= 1 && l->has_grad);
    const size_t nl = l->n * l->oh * l->ow, din = l->d_in, groups = l->geom.groups;
    *g = ngd_matrix_f32(l->yg, nl, l->c_out);
    if (groups == 1) {
        *a = ngd_matrix_f32(l->col, nl, din);
        return NN_OK;
    }
    if (!l->amean) {
        l->amean = nn_malloc(nn_mul(l->max_batch * l->oh * l->ow, din), sizeof(float));
        if (!l->amean) return NN_ERR_NOMEM;
    }
    // channels averaged over groups (libngd's convention for grouped convolutions)
    const float inv = 1.0f / (float)groups;
    const size_t m = nl * din;
    for (size_t i = 0; i < m; i++) {
        float s = 0.0f;
        for (size_t gr = 0; gr < groups; gr++)
            s += l->col[gr * m + i];
        l->amean[i] = s * inv;
    }
    *a = ngd_matrix_f32(l->amean, nl, din);
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
