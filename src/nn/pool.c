/*
 * pool.c — pooling, forward and backward: max pooling 2d (PyTorch nn.MaxPool2d: square
 * kernel, stride, -inf padding, no dilation, no ceil_mode), average pooling 2d
 * (nn.AvgPool2d: zero padding counted in the divisor, count_include_pad=True), global
 * average pooling over (H, W), and the mean over the tokens of a sequence.
 */
#include <math.h>
#include <string.h>

#include "nn.h"

static size_t pool_out(size_t in, size_t k, size_t s, size_t p) {
    if (k == 0 || s == 0 || in + 2 * p < k) return 0;
    return (in + 2 * p - k) / s + 1;
}

// ---- max pooling ----

nn_status nn_maxpool2d_init(nn_maxpool2d *l, size_t c, size_t h, size_t w, size_t k, size_t s,
                            size_t p, size_t max_batch) {
    memset(l, 0, sizeof *l);
    if (c == 0 || max_batch == 0 || 2 * p > k) return NN_ERR_ARG;
    const size_t oh = pool_out(h, k, s, p), ow = pool_out(w, k, s, p);
    if (oh == 0 || ow == 0 || h * w > INT32_MAX) return NN_ERR_ARG;
    *l = (nn_maxpool2d){
        .c = c, .h = h, .w = w, .k = k, .s = s, .p = p, .oh = oh, .ow = ow, .max_batch = max_batch};
    l->argmax = nn_malloc(nn_mul(max_batch, nn_mul(c, oh * ow)), sizeof(int32_t));
    return l->argmax ? NN_OK : NN_ERR_NOMEM;
}

void nn_maxpool2d_free(nn_maxpool2d *l) {
    free(l->argmax);
    memset(l, 0, sizeof *l);
}

// Takes v at `at` when it beats the best so far (a NaN always does: NaNs propagate, the
// last one wins), the rule of the window scan below.
#define MAXPOOL_TAKE(v, at)                                                                        \
    do {                                                                                           \
        if ((v) > best || isnan(v)) best = (v), arg = (int32_t)(at);                               \
    } while (0)

// 2x2 windows of stride 2 without padding (every CNN here): two input rows at a time
static void maxpool_2x2(nn_maxpool2d *l, const float *x, float *y, uint16_t *y16, size_t planes) {
    const size_t W = l->w, OH = l->oh, OW = l->ow, HW = l->h * l->w;
    NN_OMP_FOR(planes * HW)
    for (size_t pl = 0; pl < planes; pl++) {
        const float *xp = x + pl * HW;
        const size_t yo = pl * OH * OW;
        for (size_t o1 = 0; o1 < OH; o1++) {
            const size_t r0 = 2 * o1 * W, o = yo + o1 * OW;
            nn_maxpool2x2_row(xp + r0, xp + r0 + W, OW, (int32_t)r0, (int32_t)(r0 + W),
                              y16 ? NULL : y + o, y16 ? y16 + o : NULL, l->argmax + o);
        }
    }
}

// x (N, C, H, W) -> y (N, C, OH, OW), or y16 rounded
static void maxpool_forward(nn_maxpool2d *l, const float *x, float *y, uint16_t *y16, size_t N) {
    NN_ASSERT(x && (y || y16) && N >= 1 && N <= l->max_batch);
    const size_t H = l->h, W = l->w, OH = l->oh, OW = l->ow, planes = N * l->c;
    l->n = N;
    if (l->k == 2 && l->s == 2 && l->p == 0) {
        maxpool_2x2(l, x, y, y16, planes);
        return;
    }
    NN_OMP_FOR(planes * l->oh * l->ow * l->k * l->k)
    for (size_t pl = 0; pl < planes; pl++) {
        const float *xp = x + pl * H * W;
        for (size_t o1 = 0; o1 < OH; o1++)
            for (size_t o2 = 0; o2 < OW; o2++) {
                float best = -INFINITY;
                int32_t arg = -1;
                for (size_t k1 = 0; k1 < l->k; k1++) {
                    ptrdiff_t i1 = (ptrdiff_t)(o1 * l->s + k1) - (ptrdiff_t)l->p;
                    if (i1 < 0 || (size_t)i1 >= H) continue;
                    for (size_t k2 = 0; k2 < l->k; k2++) {
                        ptrdiff_t i2 = (ptrdiff_t)(o2 * l->s + k2) - (ptrdiff_t)l->p;
                        if (i2 < 0 || (size_t)i2 >= W) continue;
                        const size_t at = (size_t)i1 * W + (size_t)i2;
                        // `arg < 0` takes the first element even when it is -inf or NaN
                        if (arg < 0)
                            best = xp[at], arg = (int32_t)at;
                        else
                            MAXPOOL_TAKE(xp[at], at);
                    }
                }
                // p <= k/2 guarantees every window holds at least one input element
                const size_t o = pl * OH * OW + o1 * OW + o2;
                if (y16)
                    y16[o] = nn_to_bf16(best);
                else
                    y[o] = best;
                l->argmax[o] = arg;
            }
    }
}

void nn_maxpool2d_forward(nn_maxpool2d *l, const float *x, float *y, size_t N) {
    maxpool_forward(l, x, y, NULL, N);
}
void nn_maxpool2d_forward_bf16(nn_maxpool2d *l, const float *x, uint16_t *y, size_t N) {
    maxpool_forward(l, x, NULL, y, N);
}

void nn_maxpool2d_backward(nn_maxpool2d *l, const float *dy, float *dx) {
    NN_ASSERT(dy && l->n >= 1);
    if (!dx) return;
    const size_t HW = l->h * l->w, L = l->oh * l->ow, planes = l->n * l->c;
    NN_OMP_FOR(planes * L)
    for (size_t pl = 0; pl < planes; pl++)
        for (size_t o = 0; o < L; o++)
            dx[pl * HW + (size_t)l->argmax[pl * L + o]] += dy[pl * L + o];
}

void nn_maxpool2d_backward_set(nn_maxpool2d *l, const float *dy, float *dx) {
    NN_ASSERT(dy && l->n >= 1);
    if (!dx) return;
    const size_t H = l->h, W = l->w, OH = l->oh, OW = l->ow, HW = H * W, L = OH * OW;
    const size_t planes = l->n * l->c;
    if (!(l->k == 2 && l->s == 2 && l->p == 0 && H == 2 * OH && W == 2 * OW)) {
        memset(dx, 0, planes * HW * sizeof(float)); // windows do not tile the input
        nn_maxpool2d_backward(l, dy, dx);
        return;
    }
    // the windows tile the input: write each window whole, dy at its argmax, 0 elsewhere
    NN_OMP_FOR(planes * HW)
    for (size_t pl = 0; pl < planes; pl++) {
        float *dp = dx + pl * HW;
        const float *gp = dy + pl * L;
        const int32_t *ap = l->argmax + pl * L;
        for (size_t o1 = 0; o1 < OH; o1++) {
            float *r0 = dp + 2 * o1 * W, *r1 = r0 + W;
            for (size_t o2 = 0; o2 < OW; o2++)
                r0[2 * o2] = r0[2 * o2 + 1] = r1[2 * o2] = r1[2 * o2 + 1] = 0.0f;
            for (size_t o2 = 0; o2 < OW; o2++)
                dp[ap[o1 * OW + o2]] = gp[o1 * OW + o2];
        }
    }
}

void nn_maxpool2d_backward_set_bf16(nn_maxpool2d *l, const float *dy, uint16_t *dx) {
    NN_ASSERT(dy && dx && l->n >= 1 && l->k == l->s && l->p == 0);
    const size_t HW = l->h * l->w, L = l->oh * l->ow, planes = l->n * l->c;
    // windows that do not overlap: each input is at most one window's argmax
    NN_OMP_FOR(planes * HW)
    for (size_t pl = 0; pl < planes; pl++) {
        uint16_t *dp = dx + pl * HW;
        const float *gp = dy + pl * L;
        const int32_t *ap = l->argmax + pl * L;
        memset(dp, 0, HW * sizeof *dp);
        for (size_t o = 0; o < L; o++)
            dp[ap[o]] = nn_to_bf16(gp[o]);
    }
}

// ---- average pooling ----

nn_status nn_avgpool2d_init(nn_avgpool2d *l, size_t c, size_t h, size_t w, size_t k, size_t s,
                            size_t p) {
    memset(l, 0, sizeof *l);
    if (c == 0 || 2 * p > k) return NN_ERR_ARG;
    const size_t oh = pool_out(h, k, s, p), ow = pool_out(w, k, s, p);
    if (oh == 0 || ow == 0) return NN_ERR_ARG;
    *l = (nn_avgpool2d){.c = c, .h = h, .w = w, .k = k, .s = s, .p = p, .oh = oh, .ow = ow};
    return NN_OK;
}

void nn_avgpool2d_forward(nn_avgpool2d *l, const float *x, float *y, size_t N) {
    NN_ASSERT(x && y);
    const size_t H = l->h, W = l->w, OH = l->oh, OW = l->ow, planes = N * l->c;
    const float inv = 1.0f / (float)(l->k * l->k);
    l->n = N;
    NN_OMP_FOR(planes * OH * OW * l->k * l->k)
    for (size_t pl = 0; pl < planes; pl++) {
        const float *xp = x + pl * H * W;
        for (size_t o1 = 0; o1 < OH; o1++)
            for (size_t o2 = 0; o2 < OW; o2++) {
                float s = 0.0f;
                for (size_t k1 = 0; k1 < l->k; k1++) {
                    ptrdiff_t i1 = (ptrdiff_t)(o1 * l->s + k1) - (ptrdiff_t)l->p;
                    if (i1 < 0 || (size_t)i1 >= H) continue;
                    for (size_t k2 = 0; k2 < l->k; k2++) {
                        ptrdiff_t i2 = (ptrdiff_t)(o2 * l->s + k2) - (ptrdiff_t)l->p;
                        if (i2 >= 0 && (size_t)i2 < W) s += xp[(size_t)i1 * W + (size_t)i2];
                    }
                }
                y[pl * OH * OW + o1 * OW + o2] = s * inv;
            }
    }
}

void nn_avgpool2d_backward(nn_avgpool2d *l, const float *dy, float *dx) {
    NN_ASSERT(dy);
    if (!dx) return;
    const size_t H = l->h, W = l->w, OH = l->oh, OW = l->ow, planes = l->n * l->c;
    const float inv = 1.0f / (float)(l->k * l->k);
    NN_OMP_FOR(planes * OH * OW * l->k * l->k)
    for (size_t pl = 0; pl < planes; pl++) {
        float *dxp = dx + pl * H * W;
        for (size_t o1 = 0; o1 < OH; o1++)
            for (size_t o2 = 0; o2 < OW; o2++) {
                const float g = dy[pl * OH * OW + o1 * OW + o2] * inv;
                for (size_t k1 = 0; k1 < l->k; k1++) {
                    ptrdiff_t i1 = (ptrdiff_t)(o1 * l->s + k1) - (ptrdiff_t)l->p;
                    if (i1 < 0 || (size_t)i1 >= H) continue;
                    for (size_t k2 = 0; k2 < l->k; k2++) {
                        ptrdiff_t i2 = (ptrdiff_t)(o2 * l->s + k2) - (ptrdiff_t)l->p;
                        if (i2 >= 0 && (size_t)i2 < W) dxp[(size_t)i1 * W + (size_t)i2] += g;
                    }
                }
            }
    }
}

// ---- global average pooling: x (N, C, HW) -> y (N, C) ----

void nn_gap_forward(const float *x, float *y, size_t N, size_t C, size_t HW) {
    NN_ASSERT(x && y && HW >= 1);
    const float inv = 1.0f / (float)HW;
    NN_OMP_FOR(N * C * HW)
    for (size_t i = 0; i < N * C; i++) {
        float s = 0.0f;
        for (size_t p = 0; p < HW; p++)
            s += x[i * HW + p];
        y[i] = s * inv;
    }
}

void nn_gap_backward(const float *dy, float *dx, size_t N, size_t C, size_t HW) {
    NN_ASSERT(dy && HW >= 1);
    if (!dx) return;
    const float inv = 1.0f / (float)HW;
    NN_OMP_FOR(N * C * HW)
    for (size_t i = 0; i < N * C; i++) {
        const float g = dy[i] * inv;
        for (size_t p = 0; p < HW; p++)
            dx[i * HW + p] += g;
    }
}

// ---- mean over tokens: x (B, T, C) -> y (B, C) ----

void nn_tokenpool_forward(const float *x, float *y, size_t B, size_t T, size_t C) {
    NN_ASSERT(x && y && T >= 1);
    const float inv = 1.0f / (float)T;
    for (size_t b = 0; b < B; b++) {
        float *yb = y + b * C;
        memset(yb, 0, C * sizeof(float));
        for (size_t t = 0; t < T; t++) {
            const float *xt = x + (b * T + t) * C;
            for (size_t c = 0; c < C; c++)
                yb[c] += xt[c];
        }
        for (size_t c = 0; c < C; c++)
            yb[c] *= inv;
    }
}

// dx += (or, where set, =) dy / T at every token
static void tokenpool_backward(const float *dy, float *dx, size_t B, size_t T, size_t C, bool set) {
    NN_ASSERT(dy && T >= 1);
    if (!dx) return;
    const float inv = 1.0f / (float)T;
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++) {
            float *dxt = dx + (b * T + t) * C;
            for (size_t c = 0; c < C; c++)
                dxt[c] = (set ? 0.0f : dxt[c]) + dy[b * C + c] * inv;
        }
}

void nn_tokenpool_backward(const float *dy, float *dx, size_t B, size_t T, size_t C) {
    tokenpool_backward(dy, dx, B, T, C, false);
}
void nn_tokenpool_backward_set(const float *dy, float *dx, size_t B, size_t T, size_t C) {
    tokenpool_backward(dy, dx, B, T, C, true);
}
