/*
 * act.c — elementwise activations, forward and backward: ReLU, and GELU in both forms
 * (exact erf form = PyTorch nn.GELU(); tanh approximation = GPT-2 / llm.c). Both keep a
 * borrowed pointer to their input for the backward pass. ReLU may run in place (y == x):
 * relu(x) > 0 exactly when x > 0, so the overwritten input still gives the right mask.
 * GELU may not (its derivative needs x).
 */
#include <math.h>

#include "nn.h"

// ---- ReLU ----

void nn_relu_forward(nn_relu *l, const float *x, float *y, size_t n) {
    NN_ASSERT(x && y);
    l->x = x;
    l->n = n;
    NN_OMP_FOR(n)
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void nn_relu_backward(nn_relu *l, const float *dy, float *dx) {
    NN_ASSERT(dy && l->x);
    if (!dx) return;
    const float *x = l->x;
    NN_OMP_FOR(l->n)
    for (size_t i = 0; i < l->n; i++)
        if (x[i] > 0.0f) dx[i] += dy[i];
}

// ---- GELU ----

#define NN_SQRT_2_OVER_PI 0.7978845608028654f // √(2/π)
#define NN_INV_SQRT_2     0.7071067811865476f // 1/√2
#define NN_INV_SQRT_2PI   0.3989422804014327f // 1/√(2π)
#define NN_GELU_C         0.044715f

void nn_gelu_forward(nn_gelu *l, const float *x, float *y, size_t n) {
    NN_ASSERT(x && y && x != y); // backward needs the input
    l->x = x;
    l->n = n;
    if (l->kind == NN_GELU_TANH) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++) {
            const float v = x[i], u = NN_SQRT_2_OVER_PI * (v + NN_GELU_C * v * v * v);
            y[i] = 0.5f * v * (1.0f + tanhf(u));
        }
    } else {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * NN_INV_SQRT_2));
    }
}

void nn_gelu_backward(nn_gelu *l, const float *dy, float *dx) {
    NN_ASSERT(dy && l->x);
    if (!dx) return;
    const float *x = l->x;
    if (l->kind == NN_GELU_TANH) {
        NN_OMP_FOR(l->n)
        for (size_t i = 0; i < l->n; i++) {
            const float v = x[i], u = NN_SQRT_2_OVER_PI * (v + NN_GELU_C * v * v * v);
            const float t = tanhf(u);
            const float du = NN_SQRT_2_OVER_PI * (1.0f + 3.0f * NN_GELU_C * v * v);
            dx[i] += dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
        }
    } else {
        // d/dx x Φ(x) = Φ(x) + x φ(x)
        NN_OMP_FOR(l->n)
        for (size_t i = 0; i < l->n; i++) {
            const float v = x[i];
            const float cdf = 0.5f * (1.0f + erff(v * NN_INV_SQRT_2));
            const float pdf = NN_INV_SQRT_2PI * expf(-0.5f * v * v);
            dx[i] += dy[i] * (cdf + v * pdf);
        }
    }
}
