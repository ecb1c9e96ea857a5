/*
 * dropout.c — inverted dropout (PyTorch nn.Dropout): in training each element is kept with
 * probability 1-p and scaled by 1/(1-p); in evaluation it is the identity. The mask comes
 * from the layer's own seeded PRNG, so a run is reproducible; the mask of the last
 * training forward is kept for backward (one byte per element, planned at init).
 */
#include <string.h>

#include "nn.h"

nn_status nn_dropout_init(nn_dropout *l, float p, size_t max_n, uint64_t seed) {
    memset(l, 0, sizeof *l);
    if (!(p >= 0.0f && p < 1.0f) || max_n == 0) return NN_ERR_ARG;
    l->p = p;
    l->max_n = max_n;
    nn_rng_seed(&l->rng, seed);
    l->keep = nn_malloc(max_n, 1);
    if (!l->keep) return NN_ERR_NOMEM;
    return NN_OK;
}

void nn_dropout_free(nn_dropout *l) {
    free(l->keep);
    memset(l, 0, sizeof *l);
}

void nn_dropout_forward(nn_dropout *l, const float *x, float *y, size_t n, bool train) {
    NN_ASSERT(x && y && n <= l->max_n);
    l->n = n;
    l->train = train && l->p > 0.0f;
    if (!l->train) {
        if (y != x) memcpy(y, x, n * sizeof(float));
        return;
    }
    const float scale = 1.0f / (1.0f - l->p);
    // serial: the mask must not depend on the thread count
    for (size_t i = 0; i < n; i++) {
        l->keep[i] = nn_rng_uniform(&l->rng) >= l->p;
        y[i] = l->keep[i] ? x[i] * scale : 0.0f;
    }
}

void nn_dropout_backward(nn_dropout *l, const float *dy, float *dx) {
    NN_ASSERT(dy);
    if (!dx) return;
    const size_t n = l->n;
    if (!l->train) {
        for (size_t i = 0; i < n; i++)
            dx[i] += dy[i];
        return;
    }
    const float scale = 1.0f / (1.0f - l->p);
    for (size_t i = 0; i < n; i++)
        if (l->keep[i]) dx[i] += dy[i] * scale;
}
