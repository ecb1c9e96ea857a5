/*
 * embedding.c — learned lookup tables, forward and backward: the token embedding
 * (PyTorch nn.Embedding: idx -> row of a (V, C) table) and the learned positional
 * embedding added to a (B, T, C) sequence (GPT-2's wpe, ViT's pos_embed). Both tables are
 * plain parameters for ngd_optim_add_param (not Kronecker-factored). No padding index,
 * no max_norm, no class token.
 */
#include <string.h>

#include "nn.h"

#define NN_EMBED_INIT_STD 0.02f // GPT-2 and timm ViT initialise both tables with std 0.02

// ---- token embedding ----

nn_status nn_embedding_init(nn_embedding *l, size_t v, size_t c, nn_rng *rng) {
    memset(l, 0, sizeof *l);
    if (v == 0 || c == 0 || v > INT32_MAX || !rng) return NN_ERR_ARG;
    l->v = v;
    l->c = c;
    l->w = nn_malloc(nn_mul(v, c), sizeof(float));
    l->dw = nn_calloc(nn_mul(v, c), sizeof(float));
    if (!l->w || !l->dw) {
        nn_embedding_free(l);
        return NN_ERR_NOMEM;
    }
    nn_rng_fill_normal(rng, l->w, v * c, 0.0f, NN_EMBED_INIT_STD);
    return NN_OK;
}

void nn_embedding_free(nn_embedding *l) {
    free(l->w);
    free(l->dw);
    memset(l, 0, sizeof *l);
}

// idx (n) -> y (n, C)
void nn_embedding_forward(nn_embedding *l, const int32_t *idx, float *y, size_t n) {
    NN_ASSERT(idx && y);
    l->idx = idx;
    l->n = n;
    for (size_t i = 0; i < n; i++) {
        NN_ASSERT(idx[i] >= 0 && (size_t)idx[i] < l->v);
        memcpy(y + i * l->c, l->w + (size_t)idx[i] * l->c, l->c * sizeof(float));
    }
}

// dW[idx[i]] += dy[i]; serial, since two rows may share a token
void nn_embedding_backward(nn_embedding *l, const float *dy) {
    NN_ASSERT(dy && l->idx);
    for (size_t i = 0; i < l->n; i++) {
        float *dw = l->dw + (size_t)l->idx[i] * l->c;
        const float *d = dy + i * l->c;
        for (size_t j = 0; j < l->c; j++)
            dw[j] += d[j];
    }
}

size_t nn_embedding_params(const nn_embedding *l, nn_param *out) {
    if (out) out[0] = (nn_param){"weight", l->w, l->dw, l->v * l->c, NULL};
    return 1;
}

// ---- learned positional embedding ----

nn_status nn_posembed_init(nn_posembed *l, size_t max_t, size_t c, nn_rng *rng) {
    memset(l, 0, sizeof *l);
    if (max_t == 0 || c == 0 || !rng) return NN_ERR_ARG;
    l->max_t = max_t;
    l->c = c;
    l->w = nn_malloc(nn_mul(max_t, c), sizeof(float));
    l->dw = nn_calloc(nn_mul(max_t, c), sizeof(float));
    if (!l->w || !l->dw) {
        nn_posembed_free(l);
        return NN_ERR_NOMEM;
    }
    nn_rng_fill_normal(rng, l->w, max_t * c, 0.0f, NN_EMBED_INIT_STD);
    return NN_OK;
}

void nn_posembed_free(nn_posembed *l) {
    free(l->w);
    free(l->dw);
    memset(l, 0, sizeof *l);
}

// x (B, T, C) -> y (B, T, C) = x + pos[t]
void nn_posembed_forward(nn_posembed *l, const float *x, float *y, size_t B, size_t T) {
    NN_ASSERT(x && y && T <= l->max_t);
    const size_t C = l->c;
    l->b = B;
    l->t = T;
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++) {
            const float *xr = x + (b * T + t) * C, *pr = l->w + t * C;
            float *yr = y + (b * T + t) * C;
            for (size_t c = 0; c < C; c++)
                yr[c] = xr[c] + pr[c];
        }
}

// dW[t] += Σ_b dy[b, t] in b's order: the threads take positions t (rows of dW of their own)
void nn_posembed_backward(nn_posembed *l, const float *dy, float *dx) {
    NN_ASSERT(dy);
    const size_t C = l->c, B = l->b, T = l->t;
    NN_OMP_FOR(B * T * C)
    for (size_t t = 0; t < T; t++)
        for (size_t b = 0; b < B; b++) {
            const float *restrict d = dy + (b * T + t) * C;
            float *restrict dp = l->dw + t * C;
            for (size_t c = 0; c < C; c++)
                dp[c] += d[c];
            if (dx) {
                float *restrict dxr = dx + (b * T + t) * C;
                for (size_t c = 0; c < C; c++)
                    dxr[c] += d[c];
            }
        }
}

size_t nn_posembed_params(const nn_posembed *l, nn_param *out) {
    if (out) out[0] = (nn_param){"weight", l->w, l->dw, l->max_t * l->c, NULL};
    return 1;
}
