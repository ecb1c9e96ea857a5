/*
 * layernorm.c — layer normalization over the last dimension (PyTorch nn.LayerNorm(C),
 * elementwise affine, eps 1e-5), forward and backward. Row statistics in float64; the
 * backward recomputes x̂ from the borrowed input and the saved mean / rstd (llm.c).
 */
#include <math.h>
#include <string.h>

#include "nn.h"

nn_status nn_layernorm_init(nn_layernorm *l, size_t c, size_t max_rows) {
    memset(l, 0, sizeof *l);
    if (c == 0 || max_rows == 0) return NN_ERR_ARG;
    l->c = c;
    l->max_rows = max_rows;
    l->eps = 1e-5f;
    l->w = nn_malloc(c, sizeof(float));
    l->dw = nn_calloc(c, sizeof(float));
    l->b = nn_calloc(c, sizeof(float));
    l->db = nn_calloc(c, sizeof(float));
    l->mean = nn_malloc(max_rows, sizeof(float));
    l->rstd = nn_malloc(max_rows, sizeof(float));
    if (!l->w || !l->dw || !l->b || !l->db || !l->mean || !l->rstd) {
        nn_layernorm_free(l);
        return NN_ERR_NOMEM;
    }
    for (size_t i = 0; i < c; i++)
        l->w[i] = 1.0f;
    return NN_OK;
}

void nn_layernorm_free(nn_layernorm *l) {
    free(l->w);
    free(l->dw);
    free(l->b);
    free(l->db);
    free(l->mean);
    free(l->rstd);
    memset(l, 0, sizeof *l);
}

// x (rows, C) -> y (rows, C) = (x - mean) * rstd * w + b, or y16 its bf16 rounding
static void forward(nn_layernorm *l, const float *x, float *y, uint16_t *y16, size_t rows) {
    NN_ASSERT(x && (y || y16) && rows <= l->max_rows);
    const size_t C = l->c;
    l->x = x;
    l->rows = rows;
    NN_OMP_FOR(rows * C)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        double s = 0, ss = 0; // (float64 sums in vector lanes: a 64-wide row's serial sum
                              // was one dependent add per element)
        NN_SIMD_SUM(s)
        for (size_t i = 0; i < C; i++)
            s += (double)xr[i];
        const double mu = s / (double)C;
        NN_SIMD_SUM(ss)
        for (size_t i = 0; i < C; i++)
            ss += ((double)xr[i] - mu) * ((double)xr[i] - mu);
        const float mean = (float)mu, rstd = (float)(1.0 / sqrt(ss / (double)C + (double)l->eps));
        l->mean[r] = mean;
        l->rstd[r] = rstd;
        if (y) {
            float *yr = y + r * C;
            for (size_t i = 0; i < C; i++)
                yr[i] = (xr[i] - mean) * rstd * l->w[i] + l->b[i];
        } else {
            uint16_t *yr = y16 + r * C;
            for (size_t i = 0; i < C; i++)
                yr[i] = nn_to_bf16((xr[i] - mean) * rstd * l->w[i] + l->b[i]);
        }
    }
}

void nn_layernorm_forward(nn_layernorm *l, const float *x, float *y, size_t rows) {
    forward(l, x, y, NULL, rows);
}
void nn_layernorm_forward16(nn_layernorm *l, const float *x, uint16_t *y16, size_t rows) {
    forward(l, x, NULL, y16, rows);
}

typedef float ln_v8f __attribute__((vector_size(32)));
typedef double ln_v8d __attribute__((vector_size(64)));
typedef float ln_v16 __attribute__((vector_size(64)));

// dx = rstd · (d − mean(d) − x̂·mean(d·x̂)) with d = dy·w; dw += Σ dy·x̂, db += Σ dy.
// dx = base + the input gradient, or (base NULL) the gradient alone; base may be dx
static void backward(nn_layernorm *l, const float *dy, const float *base, float *dx) {
    NN_ASSERT(dy && l->x);
    const size_t C = l->c, rows = l->rows;
    // parameter gradients: sums over the rows, each column's in row order (nn_colsum_add's
    // blocks of columns over the threads)
    const size_t nb = nn_col_blocks(C);
    NN_OMP_FOR(rows * C)
    for (size_t b = 0; b < nb; b++) {
        const size_t i0 = b * NN_COL_BLOCK, w = nn_col_width(b, C);
        if (w == NN_COL_BLOCK) {   // (the sums in vector registers, the same arithmetic: as
            ln_v16 dw, db, xv, gv; //  arrays they went through the stack every row)
            memcpy(&dw, l->dw + i0, sizeof dw);
            memcpy(&db, l->db + i0, sizeof db);
            for (size_t r = 0; r < rows; r++) {
                memcpy(&xv, l->x + r * C + i0, sizeof xv);
                memcpy(&gv, dy + r * C + i0, sizeof gv);
                dw += gv * (xv - l->mean[r]) * l->rstd[r];
                db += gv;
            }
            memcpy(l->dw + i0, &dw, sizeof dw);
            memcpy(l->db + i0, &db, sizeof db);
            continue;
        }
        float dw[NN_COL_BLOCK], db[NN_COL_BLOCK]; // (on the thread's stack, as nn_colsum_add)
        memcpy(dw, l->dw + i0, w * sizeof *dw);
        memcpy(db, l->db + i0, w * sizeof *db);
        for (size_t r = 0; r < rows; r++) {
            const float *restrict xr = l->x + r * C + i0, *restrict dyr = dy + r * C + i0;
            const float mean = l->mean[r], rstd = l->rstd[r];
            for (size_t i = 0; i < w; i++) {
                dw[i] += dyr[i] * (xr[i] - mean) * rstd;
                db[i] += dyr[i];
            }
        }
        memcpy(l->dw + i0, dw, w * sizeof *dw);
        memcpy(l->db + i0, db, w * sizeof *db);
    }
    if (!dx) return;
    NN_OMP_FOR(rows * C)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = l->x + r * C, *dyr = dy + r * C;
        const float mean = l->mean[r], rstd = l->rstd[r];
        // Σ d and Σ d·x̂ in float64, 8 lanes each (element i in lane i mod 8, the tail in lane
        // 0, the lanes added in order): GCC left the `omp simd` loop scalar, one dependent
        // add per element (5 % of a chargpt step)
        ln_v8d sd8 = {0}, sdx8 = {0};
        size_t i8 = 0;
        for (; i8 + 8 <= C; i8 += 8) {
            ln_v8f dy8, w8, x8;
            memcpy(&dy8, dyr + i8, sizeof dy8);
            memcpy(&w8, l->w + i8, sizeof w8);
            memcpy(&x8, xr + i8, sizeof x8);
            const ln_v8d d =
                __builtin_convertvector(dy8, ln_v8d) * __builtin_convertvector(w8, ln_v8d);
            sd8 += d;
            sdx8 += d * __builtin_convertvector((x8 - mean) * rstd, ln_v8d);
        }
        for (; i8 < C; i8++) {
            const double d = (double)dyr[i8] * (double)l->w[i8];
            sd8[0] += d;
            sdx8[0] += d * (double)((xr[i8] - mean) * rstd);
        }
        double sd = 0, sdx = 0;
        for (int k = 0; k < 8; k++)
            sd += sd8[k], sdx += sdx8[k];
        const float md = (float)(sd / (double)C), mdx = (float)(sdx / (double)C);
        float *dxr = dx + r * C;
        if (!base) { // (two loops: one flag inside a loop can leave it scalar)
            for (size_t i = 0; i < C; i++) {
                const float xh = (xr[i] - mean) * rstd;
                dxr[i] = rstd * (dyr[i] * l->w[i] - md - xh * mdx);
            }
        } else {
            const float *br = base + r * C;
            for (size_t i = 0; i < C; i++) {
                const float xh = (xr[i] - mean) * rstd;
                dxr[i] = br[i] + rstd * (dyr[i] * l->w[i] - md - xh * mdx);
            }
        }
    }
}

void nn_layernorm_backward(nn_layernorm *l, const float *dy, float *dx) { backward(l, dy, dx, dx); }
void nn_layernorm_backward_set(nn_layernorm *l, const float *dy, float *dx) {
    backward(l, dy, NULL, dx);
}
void nn_layernorm_backward_add(nn_layernorm *l, const float *dy, const float *base, float *dx) {
    NN_ASSERT(base);
    backward(l, dy, base, dx);
}

size_t nn_layernorm_params(const nn_layernorm *l, nn_param *out) {
    if (out) {
        out[0] = (nn_param){"weight", l->w, l->dw, l->c, NULL};
        out[1] = (nn_param){"bias", l->b, l->db, l->c, NULL};
    }
    return 2;
}
