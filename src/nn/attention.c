/*
 * attention.c — multi-head self-attention on (B, T, C), forward and backward:
 *   qkv = x Wqkvᵀ + bqkv          Linear C -> 3C, columns [q | k | v], head h at h*hs
 *   att = softmax(q kᵀ / √hs)     per (b, h), (T, T); causal: key j <= query i only
 *   out = att v                   heads concatenated back to (B, T, C)
 *   y   = out Wprojᵀ + bproj      Linear C -> C
 * The two projections are nn_linear layers, so they register with libngd like any other
 * Linear (a = x or out, g = their output gradients). The per-head products are GEMMs on
 * strided views of qkv, the (b, h) heads side by side on the threads; the softmax
 * probabilities are kept for backward. No attention
 * dropout, no masks other than causal, no key/value caching.
 */
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

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
#ifdef _OPENMP
    l->nthr = omp_get_max_threads() > 1 ? (size_t)omp_get_max_threads() : 1;
#else
    l->nthr = 1;
#endif
    l->datt = nn_malloc(nn_mul(l->nthr, nn_mul(max_t, max_t)), sizeof(float));
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

// The threads of the heads' loops: the planned ones (one datt each), at most the runtime's;
// one when the work is small (a parallel region costs more than it saves)
static int heads_team(const nn_attention *l, size_t B, size_t T) {
#ifdef _OPENMP
    const size_t t = (size_t)omp_get_max_threads();
    if (B * l->nh * T * T * l->hs < 32768) return 1;
    return (int)(t < l->nthr ? t : l->nthr);
#else
    (void)l, (void)B, (void)T;
    return 1;
#endif
}

// att = softmax(scale · q kᵀ) of head h of sequence b (row i over the allowed keys; masked
// entries exactly 0), and its output att v into the head's columns of atty
static void head_forward(nn_attention *l, size_t b, size_t h, size_t T, float scale) {
    const size_t C = l->c, C3 = 3 * C, nh = l->nh, hs = l->hs;
    const float *q = l->qkvbuf + b * T * C3 + h * hs; // (T, hs) with row stride 3C
    const float *k = q + C, *v = q + 2 * C;
    float *att = l->att + (b * nh + h) * T * T; // (T, T)
    nn_sgemm(false, true, T, T, hs, scale, q, C3, k, C3, 0.0f, att, T);
    for (size_t i = 0; i < T; i++) {
        float *row = att + i * T;
        const size_t nj = l->causal ? i + 1 : T;
        float mx = row[0], chk = 0.0f; // chk: NaN when a score is not finite (0·±inf, 0·NaN)
        NN_SIMD_MAX(mx)
        for (size_t j = 1; j < nj; j++)
            mx = row[j] > mx ? row[j] : mx;
        NN_SIMD_SUM(chk)
        for (size_t j = 0; j < nj; j++)
            chk += 0.0f * row[j];
        for (size_t j = 0; j < nj; j++)
            row[j] = nn_exp_fast(row[j] - mx);
        float s = 0.0f;
        NN_SIMD_SUM(s)
        for (size_t j = 0; j < nj; j++)
            s += row[j];
        // (nn_exp_fast clamps NaN to a finite value: a row with a non-finite score becomes
        // NaN, so a diverging run still reaches the optimizer's non-finite check)
        if (chk != 0.0f) s = chk;
        const float inv = 1.0f / s;
        for (size_t j = 0; j < nj; j++)
            row[j] *= inv;
        for (size_t j = nj; j < T; j++)
            row[j] = 0.0f;
    }
    nn_sgemm(false, false, T, hs, T, 1.0f, att, T, v, C3, 0.0f, l->atty + b * T * C + h * hs, C);
}

// x (B, T, C) -> y (B, T, C). The heads run side by side (each thread a (b, h) at a time,
// its GEMMs single-threaded: no thread wake-up per small GEMM), each writing only its own
// att and atty columns.
// x NULL: the input is already in nn_linear_in16(&l->qkv)
static void forward(nn_attention *l, const float *x, float *y, size_t B, size_t T) {
    NN_ASSERT(y && B >= 1 && T >= 1 && B <= l->max_b && T <= l->max_t);
    const size_t nh = l->nh;
    const float scale = 1.0f / sqrtf((float)l->hs);
    l->b = B;
    l->t = T;
    if (x)
        nn_linear_forward(&l->qkv, x, l->qkvbuf, B * T); // (B*T, 3C)
    else
        nn_linear_forward_in16(&l->qkv, l->qkvbuf, B * T);
    const int nt = heads_team(l, B, T);
    if (nt == 1) {
        for (size_t bh = 0; bh < B * nh; bh++)
            head_forward(l, bh / nh, bh % nh, T, scale);
    } else {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
        for (size_t bh = 0; bh < B * nh; bh++)
            head_forward(l, bh / nh, bh % nh, T, scale);
    }
    nn_linear_forward(&l->proj, l->atty, y, B * T);
}

void nn_attention_forward(nn_attention *l, const float *x, float *y, size_t B, size_t T) {
    NN_ASSERT(x);
    forward(l, x, y, B, T);
}
void nn_attention_forward_in16(nn_attention *l, float *y, size_t B, size_t T) {
    forward(l, NULL, y, B, T);
}

// Head h of sequence b: dv = attᵀ dout, the softmax's backward into datt (the thread's
// (T, T) scratch), dq = scale · dpre k, dk = scale · dpreᵀ q (the head's own columns)
static void head_backward(nn_attention *l, size_t b, size_t h, size_t T, float scale, float *datt) {
    const size_t C = l->c, C3 = 3 * C, nh = l->nh, hs = l->hs;
    const size_t off = b * T * C3 + h * hs;
    const float *q = l->qkvbuf + off, *k = q + C, *v = q + 2 * C;
    float *dq = l->dqkv + off, *dk = dq + C, *dv = dq + 2 * C;
    const float *att = l->att + (b * nh + h) * T * T;
    const float *dout = l->datty + b * T * C + h * hs; // (T, hs), row stride C
    // datt = dout vᵀ ; dv = attᵀ dout
    nn_sgemm(false, true, T, T, hs, 1.0f, dout, C, v, C3, 0.0f, datt, T);
    nn_sgemm(true, false, T, hs, T, 1.0f, att, T, dout, C, 0.0f, dv, C3);
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
    nn_sgemm(false, false, T, hs, T, scale, datt, T, k, C3, 0.0f, dq, C3);
    nn_sgemm(true, false, T, hs, T, scale, datt, T, q, C3, 0.0f, dk, C3);
}

// dx += (or, where set, =) the input gradient
static void backward(nn_attention *l, const float *dy, float *dx, bool set) {
    NN_ASSERT(dy && l->b >= 1);
    const size_t B = l->b, T = l->t, nh = l->nh;
    const float scale = 1.0f / sqrtf((float)l->hs);
    // proj's backward writes datty; every (b, h) writes its own columns of dqkv once (no
    // clearing)
    nn_linear_backward_set(&l->proj, dy, l->datty);
    const int nt = heads_team(l, B, T);
    if (nt == 1) {
        for (size_t bh = 0; bh < B * nh; bh++)
            head_backward(l, bh / nh, bh % nh, T, scale, l->datt);
    } else {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
        for (size_t bh = 0; bh < B * nh; bh++)
            head_backward(l, bh / nh, bh % nh, T, scale,
                          l->datt + (size_t)nn_thread_num() * l->max_t * l->max_t);
    }
    if (set)
        nn_linear_backward_set(&l->qkv, l->dqkv, dx);
    else
        nn_linear_backward(&l->qkv, l->dqkv, dx);
}

void nn_attention_backward(nn_attention *l, const float *dy, float *dx) {
    backward(l, dy, dx, false);
}
void nn_attention_backward_set(nn_attention *l, const float *dy, float *dx) {
    backward(l, dy, dx, true);
}
