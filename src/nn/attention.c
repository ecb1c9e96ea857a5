/*
 * attention.c — multi-head self-attention on (B, T, C), forward and backward:
 *   qkv = x Wqkvᵀ + bqkv          Linear C -> 3C, columns [q | k | v], head h at h*hs
 *   att = softmax(q kᵀ / √hs)     per (b, h), (T, T); causal: key j <= query i only
 *   out = att v                   heads concatenated back to (B, T, C)
 *   y   = out Wprojᵀ + bproj      Linear C -> C
 * The two projections are nn_linear layers, so they register with libngd like any other
 * Linear (a = x or out, g = their output gradients). The per-head products are GEMMs on
 * strided views of qkv; the softmax probabilities are kept for backward. No attention
 * dropout, no masks other than causal, no key/value caching.
 */
#include <math.h>
#include <string.h>

#include "nn.h"

nn_status nn_attention_init(nn_attention *l, size_t c, size_t nh, bool causal, size_t max_b,
                            size_t max_t, nn_rng *rng) {
    memset(l, 0, sizeof *l);
    if (c == 0 || nh == 0 || c % nh || max_b == 0 || max_t == 0 || !rng) return NN_ERR_ARG;
    l->c = c;
    l->nh = nh;
    l->hs = c / nh;
    l->causal = causal;
    l->max_b = max_b;
    l->max_t = max_t;
    nn_status st = nn_linear_init(&l->qkv, c, 3 * c, true, rng);
    if (st == NN_OK) st = nn_linear_init(&l->proj, c, c, true, rng);
    if (st != NN_OK) {
        nn_attention_free(l);
        return st;
    }
    const size_t bt = nn_mul(max_b, max_t);
    l->qkvbuf = nn_malloc(nn_mul(bt, 3 * c), sizeof(float));
    l->dqkv = nn_malloc(nn_mul(bt, 3 * c), sizeof(float));
    l->att = nn_malloc(nn_mul(nn_mul(max_b, nh), nn_mul(max_t, max_t)), sizeof(float));
    l->atty = nn_malloc(nn_mul(bt, c), sizeof(float));
    l->datty = nn_malloc(nn_mul(bt, c), sizeof(float));
    l->datt = nn_malloc(nn_mul(max_t, max_t), sizeof(float));
    if (!l->qkvbuf || !l->dqkv || !l->att || !l->atty || !l->datty || !l->datt) {
        nn_attention_free(l);
        return NN_ERR_NOMEM;
    }
    return NN_OK;
}

void nn_attention_free(nn_attention *l) {
    nn_linear_free(&l->qkv);
    nn_linear_free(&l->proj);
    free(l->qkvbuf);
    free(l->dqkv);
    free(l->att);
    free(l->atty);
    free(l->datty);
    free(l->datt);
    memset(l, 0, sizeof *l);
}

// x (B, T, C) -> y (B, T, C)
void nn_attention_forward(nn_attention *l, const float *x, float *y, size_t B, size_t T) {
    NN_ASSERT(x && y && B >= 1 && T >= 1 && B <= l->max_b && T <= l->max_t);
    const size_t C = l->c, C3 = 3 * C, nh = l->nh, hs = l->hs;
    const float scale = 1.0f / sqrtf((float)hs);
    l->b = B;
    l->t = T;
    nn_linear_forward(&l->qkv, x, l->qkvbuf, B * T); // (B*T, 3C)
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < nh; h++) {
            const float *q = l->qkvbuf + b * T * C3 + h * hs; // (T, hs) with row stride 3C
            const float *k = q + C, *v = q + 2 * C;
            float *att = l->att + (b * nh + h) * T * T; // (T, T)
            // att = scale · q kᵀ
            nn_sgemm(false, true, T, T, hs, scale, q, C3, k, C3, 0.0f, att, T);
            // row softmax over the allowed keys; masked entries become exactly 0
            for (size_t i = 0; i < T; i++) {
                float *row = att + i * T;
                const size_t nj = l->causal ? i + 1 : T;
                float mx = row[0];
                for (size_t j = 1; j < nj; j++)
                    mx = row[j] > mx ? row[j] : mx;
                float s = 0.0f;
                for (size_t j = 0; j < nj; j++) {
                    row[j] = expf(row[j] - mx);
                    s += row[j];
                }
                const float inv = 1.0f / s;
                for (size_t j = 0; j < nj; j++)
                    row[j] *= inv;
                for (size_t j = nj; j < T; j++)
                    row[j] = 0.0f;
            }
            // out (T, hs) = att v, written into the head's columns of atty
            nn_sgemm(false, false, T, hs, T, 1.0f, att, T, v, C3, 0.0f,
                     l->atty + b * T * C + h * hs, C);
        }
    nn_linear_forward(&l->proj, l->atty, y, B * T);
}

void nn_attention_backward(nn_attention *l, const float *dy, float *dx) {
    NN_ASSERT(dy && l->b >= 1);
    const size_t B = l->b, T = l->t, C = l->c, C3 = 3 * C, nh = l->nh, hs = l->hs;
    const float scale = 1.0f / sqrtf((float)hs);
    // the internal gradient buffers accumulate like everything else: start them at zero
    memset(l->datty, 0, B * T * C * sizeof(float));
    memset(l->dqkv, 0, B * T * C3 * sizeof(float));
    nn_linear_backward(&l->proj, dy, l->datty);
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < nh; h++) {
            const size_t off = b * T * C3 + h * hs;
            const float *q = l->qkvbuf + off, *k = q + C, *v = q + 2 * C;
            float *dq = l->dqkv + off, *dk = dq + C, *dv = dq + 2 * C;
            const float *att = l->att + (b * nh + h) * T * T;
            const float *dout = l->datty + b * T * C + h * hs; // (T, hs), row stride C
            float *datt = l->datt;                             // (T, T)
            // datt = dout vᵀ ; dv += attᵀ dout
            nn_sgemm(false, true, T, T, hs, 1.0f, dout, C, v, C3, 0.0f, datt, T);
            nn_sgemm(true, false, T, hs, T, 1.0f, att, T, dout, C, 1.0f, dv, C3);
            // softmax backward, in place: dpre_ij = att_ij (datt_ij − Σ_j' att_ij' datt_ij')
            for (size_t i = 0; i < T; i++) {
                const float *a = att + i * T;
                float *d = datt + i * T;
                float s = 0.0f;
                for (size_t j = 0; j < T; j++)
                    s += a[j] * d[j];
                for (size_t j = 0; j < T; j++)
                    d[j] = a[j] * (d[j] - s);
            }
            // dq += scale · dpre k ; dk += scale · dpreᵀ q
            nn_sgemm(false, false, T, hs, T, scale, datt, T, k, C3, 1.0f, dq, C3);
            nn_sgemm(true, false, T, hs, T, scale, datt, T, q, C3, 1.0f, dk, C3);
        }
    nn_linear_backward(&l->qkv, l->dqkv, dx);
}
