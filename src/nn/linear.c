/*
 * linear.c — fully connected layer y = x Wᵀ + b (PyTorch nn.Linear), forward and backward,
 * as two / three GEMMs. Kronecker-factored for libngd: a = x, g = dy. Rows are whatever
 * the caller batches (samples, or B*T tokens); the layer does not know the difference.
 * No buffers of its own: the input and the output gradient are borrowed. In bf16 mode
 * (nn_linear_use_bf16) it keeps bf16 copies of W, x and dy: the operands of its bf16 GEMMs,
 * and the statistics libngd reads.
 */
#include <math.h>
#include <string.h>

#include "nn.h"

nn_status nn_linear_init(nn_linear *l, size_t d_in, size_t d_out, bool bias, nn_rng *rng) {
    memset(l, 0, sizeof *l);
    if (d_in == 0 || d_out == 0 || !rng) return NN_ERR_ARG;
    l->d_in = d_in;
    l->d_out = d_out;
    l->w = nn_malloc(nn_mul(d_out, d_in), sizeof(float));
    l->dw = nn_calloc(nn_mul(d_out, d_in), sizeof(float));
    if (bias) {
        l->b = nn_malloc(d_out, sizeof(float));
        l->db = nn_calloc(d_out, sizeof(float));
    }
    if (!l->w || !l->dw || (bias && (!l->b || !l->db))) {
        nn_linear_free(l);
        return NN_ERR_NOMEM;
    }
    // PyTorch: kaiming_uniform(a=√5) gives bound 1/√fan_in for W, and the bias uses the same
    const float bound = 1.0f / sqrtf((float)d_in);
    nn_rng_fill_uniform(rng, l->w, d_out * d_in, -bound, bound);
    if (bias) nn_rng_fill_uniform(rng, l->b, d_out, -bound, bound);
    return NN_OK;
}

void nn_linear_free(nn_linear *l) {
    free(l->w);
    free(l->dw);
    free(l->b);
    free(l->db);
    free(l->w16);
    free(l->x16);
    free(l->dy16);
    memset(l, 0, sizeof *l);
}

// y = x Wᵀ + b, the bias added by the GEMM (nn_sgemm_bias); in bf16 mode from x16, which the
// caller filled
static void forward(nn_linear *l, const float *x, float *y, size_t rows) {
    const size_t din = l->d_in, dout = l->d_out;
    l->x = x;
    l->rows = rows;
    l->dy = NULL;
    if (l->max_rows16) {
        nn_bf16_encode(l->w, l->w16, dout * din);
        nn_gemm_bf16_bias(false, true, rows, dout, din, l->x16, din, l->w16, din, l->b, y, dout);
        return;
    }
    // y (rows, dout) = x (rows, din) · Wᵀ (din, dout) + b
    nn_sgemm_bias(false, true, rows, dout, din, x, din, l->w, din, l->b, y, dout);
}

void nn_linear_forward(nn_linear *l, const float *x, float *y, size_t rows) {
    NN_ASSERT(x && y && rows <= (l->max_rows16 ? l->max_rows16 : rows));
    if (l->max_rows16) nn_bf16_encode(x, l->x16, rows * l->d_in);
    forward(l, x, y, rows);
}

uint16_t *nn_linear_in16(nn_linear *l) { return l->max_rows16 ? l->x16 : NULL; }

void nn_linear_forward_in16(nn_linear *l, float *y, size_t rows) {
    NN_ASSERT(y && l->max_rows16 && rows <= l->max_rows16);
    forward(l, NULL, y, rows);
}

// dx (rows, din) = dy W + beta dx: beta 1 adds, beta 0 writes (dx never read then);
// in16: dy16 already holds dy rounded (bf16 mode)
static void backward(nn_linear *l, const float *dy, float *dx, float beta, bool in16) {
    NN_ASSERT(dy && (l->x || (l->max_rows16 && l->rows))); // (after a forward)
    const size_t din = l->d_in, dout = l->d_out, rows = l->rows;
    l->dy = dy;
    const float bw = l->dw_zeroed ? 0.0f : 1.0f; // (dW zero: written, not read)
    l->dw_zeroed = false;
    if (l->max_rows16) {
        if (!in16) nn_bf16_encode(dy, l->dy16, rows * dout);
        nn_gemm_bf16(true, false, dout, din, rows, 1.0f, l->dy16, dout, l->x16, din, bw, l->dw,
                     din);
    } else {
        // dW (dout, din) (+)= dyᵀ (dout, rows) · x (rows, din)
        nn_sgemm(true, false, dout, din, rows, 1.0f, dy, dout, l->x, din, bw, l->dw, din);
    }
    if (l->db) nn_colsum_add(dy, rows, dout, dout, l->db); // (the bias gradient sums the f32 dy)
    // dx (rows, din) (+)= dy (rows, dout) · W (dout, din)
    if (dx && l->max_rows16)
        nn_gemm_bf16(false, false, rows, din, dout, 1.0f, l->dy16, dout, l->w16, din, beta, dx,
                     din);
    else if (dx)
        nn_sgemm(false, false, rows, din, dout, 1.0f, dy, dout, l->w, din, beta, dx, din);
}

void nn_linear_backward(nn_linear *l, const float *dy, float *dx) {
    backward(l, dy, dx, 1.0f, false);
}
void nn_linear_backward_set(nn_linear *l, const float *dy, float *dx) {
    backward(l, dy, dx, 0.0f, false);
}

uint16_t *nn_linear_dy16(nn_linear *l) { return l->max_rows16 ? l->dy16 : NULL; }

void nn_linear_backward_set_in16(nn_linear *l, const float *dy, float *dx) {
    NN_ASSERT(l->max_rows16);
    backward(l, dy, dx, 0.0f, true);
}

nn_status nn_linear_use_bf16(nn_linear *l, size_t max_rows) {
    if (max_rows == 0) return NN_ERR_ARG;
    if (l->max_rows16 >= max_rows) return NN_OK;
    free(l->w16), free(l->x16), free(l->dy16);
    l->w16 = nn_malloc(nn_mul(l->d_out, l->d_in), sizeof(uint16_t));
    l->x16 = nn_malloc(nn_mul(max_rows, l->d_in), sizeof(uint16_t));
    l->dy16 = nn_malloc(nn_mul(max_rows, l->d_out), sizeof(uint16_t));
    l->max_rows16 = 0;
    if (!l->w16 || !l->x16 || !l->dy16) {
        free(l->w16), free(l->x16), free(l->dy16);
        l->w16 = l->x16 = l->dy16 = NULL;
        return NN_ERR_NOMEM;
    }
    l->max_rows16 = max_rows;
    return NN_OK;
}

ngd_layer nn_linear_ngd_layer(const nn_linear *l, const char *name) {
    ngd_layer L = {.name = name,
                   .weight = l->w,
                   .weight_grad = l->dw,
                   .d_out = l->d_out,
                   .d_in = l->d_in,
                   .bias = l->b,
                   .bias_grad = l->db};
    return L;
}

void nn_linear_stats(const nn_linear *l, ngd_matrix *a, ngd_matrix *g) {
    NN_ASSERT(l->dy && (l->x || l->max_rows16)); // (bf16: x16 may be all there is)
    if (l->max_rows16) {                         // the bf16 operands themselves: no f32 copy
        *a = ngd_matrix_bf16(l->x16, l->rows, l->d_in);
        *g = ngd_matrix_bf16(l->dy16, l->rows, l->d_out);
        return;
    }
    *a = ngd_matrix_f32(l->x, l->rows, l->d_in);
    *g = ngd_matrix_f32(l->dy, l->rows, l->d_out);
}

size_t nn_linear_params(nn_linear *l, nn_param *out) {
    size_t k = 0;
    if (out) out[k] = (nn_param){"weight", l->w, l->dw, l->d_out * l->d_in, &l->dw_zeroed};
    k++;
    if (l->b) {
        if (out) out[k] = (nn_param){"bias", l->b, l->db, l->d_out, NULL};
        k++;
    }
    return k;
}
