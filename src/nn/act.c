/*
 * act.c — elementwise activations, forward and backward: ReLU, and GELU in both forms
 * (exact erf form = PyTorch nn.GELU(); tanh approximation = GPT-2 / llm.c). Both keep a
 * borrowed pointer to their input for the backward pass. ReLU may run in place (y == x):
 * relu(x) > 0 exactly when x > 0, so the overwritten input still gives the right mask.
 * GELU may not (its derivative needs x).
 *
 * GELU evaluates tanh, erf and exp through the vectorisable approximations below (absolute
 * errors under 4e-7, tested against float64) rather than libm's scalar calls, which took
 * half of a character transformer's training step.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "nn.h"

// tanh u = 1 − 2/(e^{2u} + 1): no cancellation in the absolute error, ±1 at the ends
static inline float tanh_fast(float u) { return 1.0f - 2.0f / (nn_exp_fast(2.0f * u) + 1.0f); }

// erf, odd in x: its Taylor series to x^11 below |x| = 0.5 (remainder < 2e-8), else
// Abramowitz & Stegun 7.1.26 (1.5e-7), whose 1 − p·t·e^{-x²} cancels near 0
static inline float erf_fast(float x) {
    const float a = fabsf(x), t = 1.0f / (1.0f + 0.3275911f * a);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    const float big = 1.0f - p * t * nn_exp_fast(-a * a);
    // the series at min(a, 0.5): beyond that its weight is 0, and at |x| above ~6000 its
    // value overflowed to -inf, which the 0 weight made NaN (GELU(1e4) was NaN)
    const float as = a < 0.5f ? a : 0.5f;
    const float z = as * as; // 2/√π (a − a³/3 + a⁵/10 − a⁷/42 + a⁹/216 − a¹¹/1320)
    float q = -1.0f / 1320.0f;
    q = q * z + 1.0f / 216.0f;
    q = q * z - 1.0f / 42.0f;
    q = q * z + 1.0f / 10.0f;
    q = q * z - 1.0f / 3.0f;
    q = q * z + 1.0f;
    // the two branches blended by a 0/1 weight and the sign put back through the bits: no
    // control flow, so GCC vectorises the loops that call this
    const float w = (float)(a < 0.5f);
    const float e = w * (1.1283791670955126f * as * q) + (1.0f - w) * big;
    uint32_t ue, ux;
    memcpy(&ue, &e, sizeof ue);
    memcpy(&ux, &x, sizeof ux);
    ue |= ux & 0x80000000u;
    float r;
    memcpy(&r, &ue, sizeof r);
    return r;
}

float nn_tanh_approx(float u) { return tanh_fast(u); }
float nn_erf_approx(float x) { return erf_fast(x); }
float nn_exp_approx(float x) { return nn_exp_fast(x); }

// ---- ReLU ----

// y = max(x, 0), or y16 its bf16 rounding (a loop each: see gelu_backward)
static void relu_forward(nn_relu *l, const float *x, float *y, uint16_t *y16, size_t n) {
    NN_ASSERT(x && (y || y16));
    l->x = x;
    l->n = n;
    if (y) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y[i] = NN_RELU(x[i]);
    } else {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y16[i] = nn_to_bf16(NN_RELU(x[i]));
    }
}

void nn_relu_forward(nn_relu *l, const float *x, float *y, size_t n) {
    relu_forward(l, x, y, NULL, n);
}
void nn_relu_forward16(nn_relu *l, const float *x, uint16_t *y16, size_t n) {
    relu_forward(l, x, NULL, y16, n);
}

void nn_relu_backward(nn_relu *l, const float *dy, float *dx) {
    NN_ASSERT(dy && l->x);
    if (!dx) return;
    const float *x = l->x;
    NN_OMP_FOR(l->n)
    for (size_t i = 0; i < l->n; i++)
        if (x[i] > 0.0f) dx[i] += dy[i];
}

void nn_relu_backward_set(nn_relu *l, const float *dy, float *dx) {
    NN_ASSERT(dy && dx && l->x);
    const float *x = l->x;
    NN_OMP_FOR(l->n)
    for (size_t i = 0; i < l->n; i++)
        dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

void nn_relu_backward_set16(nn_relu *l, const float *dy, float *dx, uint16_t *dx16) {
    NN_ASSERT(dy && dx && dx16 && l->x);
    const float *x = l->x;
    NN_OMP_FOR(l->n)
    for (size_t i = 0; i < l->n; i++) {
        const float v = x[i] > 0.0f ? dy[i] : 0.0f;
        dx[i] = v;
        dx16[i] = nn_to_bf16(v);
    }
}

// ---- GELU ----

#define NN_SQRT_2_OVER_PI 0.7978845608028654f // √(2/π)
#define NN_INV_SQRT_2     0.7071067811865476f // 1/√2
#define NN_INV_SQRT_2PI   0.3989422804014327f // 1/√(2π)
#define NN_GELU_C         0.044715f

static inline float gelu(bool tanh_kind, float v) {
    if (tanh_kind) {
        const float u = NN_SQRT_2_OVER_PI * (v + NN_GELU_C * v * v * v);
        return 0.5f * v * (1.0f + tanh_fast(u));
    }
    return 0.5f * v * (1.0f + erf_fast(v * NN_INV_SQRT_2));
}

// y = GELU(x), or y16 its bf16 rounding: a plain loop per kind and output (see gelu_backward)
static void gelu_forward(nn_gelu *l, const float *x, float *y, uint16_t *y16, size_t n) {
    NN_ASSERT(x && (y || y16) && x != y); // backward needs the input
    l->x = x;
    l->n = n;
    const bool tk = l->kind == NN_GELU_TANH;
    if (tk && y) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y[i] = gelu(true, x[i]);
    } else if (y) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y[i] = gelu(false, x[i]);
    } else if (tk) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y16[i] = nn_to_bf16(gelu(true, x[i]));
    } else {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y16[i] = nn_to_bf16(gelu(false, x[i]));
    }
}

void nn_gelu_forward(nn_gelu *l, const float *x, float *y, size_t n) {
    gelu_forward(l, x, y, NULL, n);
}
void nn_gelu_forward16(nn_gelu *l, const float *x, uint16_t *y16, size_t n) {
    gelu_forward(l, x, NULL, y16, n);
}

// GELU'(v): tanh form 0.5 (1 + t) + 0.5 v (1 − t²) du; erf form Φ(v) + v φ(v). The second
// terms take v clamped to ±1e4, where they are 0 to float precision: unclamped, du overflowed
// past |v| ~ 1.8e19 (0 · inf: NaN) and v φ(v) kept nn_exp_fast's floor e⁻⁸⁷ times v (GELU'
// of 3e38 was 2.97). A NaN v stays NaN.
static inline float gelu_grad(bool tanh_kind, float v) {
    const float vc = v > 1e4f ? 1e4f : (v < -1e4f ? -1e4f : v);
    if (tanh_kind) {
        // 1 + t and 1 − t² = sech² u from e = exp(−2|u|), without the cancellation of 1 − t·t
        // near |t| = 1 (2e-6 off float64 at |x| ~ 5; now 1e-6, PyTorch's float32 figure)
        const float u = NN_SQRT_2_OVER_PI * (v + NN_GELU_C * v * v * v);
        // (past e⁻⁸⁷, nn_exp_fast's floor, sech² u is 0; no branch and no fminf: the loops
        // vectorise)
        const float a2 = 2.0f * fabsf(u);
        const float e = nn_exp_fast(-a2) * (float)(a2 < 87.0f), r = 1.0f / (1.0f + e);
        const float onept = 1.0f + copysignf((1.0f - e) * r, u);
        const float du = NN_SQRT_2_OVER_PI * (1.0f + 3.0f * NN_GELU_C * vc * vc);
        return 0.5f * onept + 0.5f * vc * (4.0f * e * r * r) * du;
    }
    const float cdf = 0.5f * (1.0f + erf_fast(v * NN_INV_SQRT_2));
    const float pdf = NN_INV_SQRT_2PI * nn_exp_fast(-0.5f * vc * vc);
    return cdf + vc * pdf;
}

// dx += (or, where set, =) dy · GELU'(x), and dx16 = dx rounded where given (set only): plain
// loops (one flag inside a loop, GCC left it scalar: chargpt's step 50 -> 78 ms)
static void gelu_backward(nn_gelu *l, const float *dy, float *dx, uint16_t *dx16, bool set) {
    NN_ASSERT(dy && l->x && (!dx16 || (set && dx)));
    if (!dx) return;
    const float *x = l->x;
    const size_t n = l->n;
    if (dx16 && l->kind == NN_GELU_TANH) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++) {
            const float v = dy[i] * gelu_grad(true, x[i]);
            dx[i] = v;
            dx16[i] = nn_to_bf16(v);
        }
    } else if (dx16) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++) {
            const float v = dy[i] * gelu_grad(false, x[i]);
            dx[i] = v;
            dx16[i] = nn_to_bf16(v);
        }
    } else if (l->kind == NN_GELU_TANH && set) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            dx[i] = dy[i] * gelu_grad(true, x[i]);
    } else if (l->kind == NN_GELU_TANH) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            dx[i] += dy[i] * gelu_grad(true, x[i]);
    } else if (set) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            dx[i] = dy[i] * gelu_grad(false, x[i]);
    } else {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            dx[i] += dy[i] * gelu_grad(false, x[i]);
    }
}

void nn_gelu_backward(nn_gelu *l, const float *dy, float *dx) {
    gelu_backward(l, dy, dx, NULL, false);
}
void nn_gelu_backward_set(nn_gelu *l, const float *dy, float *dx) {
    gelu_backward(l, dy, dx, NULL, true);
}
void nn_gelu_backward_set16(nn_gelu *l, const float *dy, float *dx, uint16_t *dx16) {
    gelu_backward(l, dy, dx, dx16, true);
}
