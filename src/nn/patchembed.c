/*
 * patchembed.c — ViT patch embedding: an image (N, C, H, W) cut into non-overlapping p x p
 * patches, each flattened (c, ky, kx) and projected by a Linear layer to width D. This is
 * a convolution with kernel = stride = p written as "patches, then Linear", so the
 * projection is an ordinary Kronecker-factored Linear whose input rows are the patches
 * (the same rows as ngd_unfold with k = s = p). No class token (models pool the tokens).
 */
#include <string.h>

#include "nn.h"

nn_status nn_patchembed_init(nn_patchembed *l, size_t c, size_t h, size_t w, size_t p, size_t d,
                             size_t max_batch, nn_rng *rng) {
    memset(l, 0, sizeof *l);
    if (c == 0 || p == 0 || d == 0 || max_batch == 0 || h == 0 || w == 0 || h % p || w % p || !rng)
        return NN_ERR_ARG;
    *l = (nn_patchembed){
        .c = c, .h = h, .w = w, .p = p, .d = d, .np = (h / p) * (w / p), .max_batch = max_batch};
    nn_status st = nn_linear_init(&l->proj, c * p * p, d, true, rng);
    if (st != NN_OK) {
        memset(l, 0, sizeof *l);
        return st;
    }
    l->patches = nn_malloc(nn_mul(max_batch * l->np, c * p * p), sizeof(float));
    if (!l->patches) {
        nn_patchembed_free(l);
        return NN_ERR_NOMEM;
    }
    return NN_OK;
}

void nn_patchembed_free(nn_patchembed *l) {
    nn_linear_free(&l->proj);
    free(l->patches);
    free(l->dpatches);
    memset(l, 0, sizeof *l);
}

// x (N, C, H, W) -> patches (N*P, C*p*p) -> y (N, P, D)
void nn_patchembed_forward(nn_patchembed *l, const float *x, float *y, size_t N) {
    NN_ASSERT(x && y && N >= 1 && N <= l->max_batch);
    const size_t C = l->c, H = l->h, W = l->w, p = l->p, gw = W / p, pd = C * p * p;
    l->n = N;
    NN_OMP_FOR(N * l->np * pd)
    for (size_t n = 0; n < N; n++)
        for (size_t q = 0; q < l->np; q++) {
            const size_t py = q / gw, px = q % gw;
            float *row = l->patches + (n * l->np + q) * pd;
            for (size_t c = 0; c < C; c++)
                for (size_t ky = 0; ky < p; ky++)
                    memcpy(row + (c * p + ky) * p, x + ((n * C + c) * H + py * p + ky) * W + px * p,
                           p * sizeof(float));
        }
    nn_linear_forward(&l->proj, l->patches, y, N * l->np);
}

nn_status nn_patchembed_backward(nn_patchembed *l, const float *dy, float *dx) {
    NN_ASSERT(dy && l->n >= 1);
    const size_t C = l->c, H = l->h, W = l->w, p = l->p, gw = W / p, pd = C * p * p, N = l->n;
    if (!dx) {
        nn_linear_backward(&l->proj, dy, NULL);
        return NN_OK;
    }
    if (!l->dpatches) {
        l->dpatches = nn_malloc(nn_mul(l->max_batch * l->np, pd), sizeof(float));
        if (!l->dpatches) return NN_ERR_NOMEM;
    }
    memset(l->dpatches, 0, N * l->np * pd * sizeof(float));
    nn_linear_backward(&l->proj, dy, l->dpatches);
    NN_OMP_FOR(N * l->np * pd)
    for (size_t n = 0; n < N; n++)
        for (size_t q = 0; q < l->np; q++) {
            const size_t py = q / gw, px = q % gw;
            const float *row = l->dpatches + (n * l->np + q) * pd;
            for (size_t c = 0; c < C; c++)
                for (size_t ky = 0; ky < p; ky++) {
                    float *d = dx + ((n * C + c) * H + py * p + ky) * W + px * p;
                    const float *s = row + (c * p + ky) * p;
                    for (size_t kx = 0; kx < p; kx++)
                        d[kx] += s[kx];
                }
        }
    return NN_OK;
}
