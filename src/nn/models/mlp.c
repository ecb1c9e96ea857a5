/*
 * mlp.c — the multi-layer perceptron: flatten -> [Linear -> ReLU] x H -> Linear.
 * Default widths 512, 512 (784-512-512-10 on 28x28 images). Every Linear is a
 * Kronecker-factored layer. Written out in order: forward, then backward in reverse.
 */
#include <stdio.h>
#include <string.h>

#include "model.h"

typedef struct {
    size_t nl; // number of Linear layers (hidden + 1)
    nn_linear lin[NN_MODEL_MAX_WIDTHS + 1];
    nn_relu relu[NN_MODEL_MAX_WIDTHS];
    int id[NN_MODEL_MAX_WIDTHS + 1]; // libngd layer ids
    float *z[NN_MODEL_MAX_WIDTHS];   // (B, width_i) pre-activations of hidden i
    float *h[NN_MODEL_MAX_WIDTHS];   // (B, width_i) activations (NULL in bf16 mode)
    float *dh[NN_MODEL_MAX_WIDTHS];  // (B, width_i) gradient of h (then of z, in place)
    float *dz[NN_MODEL_MAX_WIDTHS];  // (B, width_i)
} mlp;

static void mlp_destroy(nn_model *m) {
    mlp *p = m->impl;
    for (size_t i = 0; i < p->nl; i++)
        nn_linear_free(&p->lin[i]);
    for (size_t i = 0; i + 1 < p->nl; i++)
        free(p->z[i]), free(p->h[i]), free(p->dh[i]), free(p->dz[i]);
    free(p);
    m->impl = NULL;
}

static nn_status mlp_create(nn_model *m, const nn_model_cfg *cfg, char *err, size_t cap) {
    mlp *p = nn_calloc(1, sizeof *p);
    if (!p) return NN_ERR_NOMEM;
    m->impl = p;
    size_t widths[NN_MODEL_MAX_WIDTHS] = {512, 512};
    size_t nh = cfg->nwidths ? cfg->nwidths : 2;
    if (cfg->nwidths) memcpy(widths, cfg->widths, nh * sizeof widths[0]);
    nn_model_set_widths(m, widths, nh);
    nn_rng rng;
    nn_rng_seed(&rng, cfg->seed);
    size_t din = cfg->in_c * cfg->in_h * cfg->in_w, B = cfg->max_batch;
    p->nl = nh + 1;
    for (size_t i = 0; i < p->nl; i++) {
        size_t dout = i < nh ? widths[i] : cfg->classes;
        if (!dout) {
            snprintf(err, cap, "mlp: width %zu is 0", i);
            return NN_ERR_ARG;
        }
        if (nn_linear_init(&p->lin[i], din, dout, true, &rng) != NN_OK) goto oom;
        if (cfg->bf16 && nn_linear_use_bf16(&p->lin[i], B) != NN_OK) goto oom;
        nn_param ps[2];
        size_t k = nn_linear_params(&p->lin[i], ps);
        nn_model_add_params(m, ps, k);
        if (i < nh) {
            p->z[i] = nn_malloc(B * dout, sizeof(float));
            // (bf16: the ReLU writes the next Linear's bf16 input, and no f32 activation)
            p->h[i] = cfg->bf16 ? NULL : nn_malloc(B * dout, sizeof(float));
            p->dh[i] = nn_malloc(B * dout, sizeof(float));
            p->dz[i] = nn_malloc(B * dout, sizeof(float));
            if (!p->z[i] || (!cfg->bf16 && !p->h[i]) || !p->dh[i] || !p->dz[i]) goto oom;
        }
        din = dout;
    }
    return NN_OK;
oom:
    snprintf(err, cap, "mlp: out of memory");
    return NN_ERR_NOMEM;
}

static void mlp_forward(nn_model *m, const float *x, size_t N, bool train) {
    (void)train;
    mlp *p = m->impl;
    m->N = N;
    const float *in = x; // (N, c*h*w): flatten is the identity on NCHW memory
    for (size_t i = 0; i < p->nl; i++) {
        float *y = i + 1 < p->nl ? p->z[i] : m->logits;
        if (in)
            nn_linear_forward(&p->lin[i], in, y, N);
        else // (bf16: the ReLU wrote this input rounded)
            nn_linear_forward_in16(&p->lin[i], y, N);
        if (i + 1 == p->nl) break;
        uint16_t *next16 = nn_linear_in16(&p->lin[i + 1]);
        if (next16)
            nn_relu_forward16(&p->relu[i], y, next16, N * p->lin[i].d_out), in = NULL;
        else
            nn_relu_forward(&p->relu[i], y, p->h[i], N * p->lin[i].d_out), in = p->h[i];
    }
}

static void mlp_backward(nn_model *m, const float *dlogits) {
    mlp *p = m->impl;
    const float *dy = dlogits;
    bool in16 = false; // (bf16: the ReLU's backward wrote the next layer's dy rounded too)
    for (size_t i = p->nl; i-- > 0;) {
        float *dx = i > 0 ? p->dh[i - 1] : NULL; // the input of layer 0 needs no gradient
        if (in16)                                // (dx written: nothing to clear)
            nn_linear_backward_set_in16(&p->lin[i], dy, dx);
        else
            nn_linear_backward_set(&p->lin[i], dy, dx);
        if (i > 0) {
            uint16_t *d16 = nn_linear_dy16(&p->lin[i - 1]);
            if (d16)
                nn_relu_backward_set16(&p->relu[i - 1], p->dh[i - 1], p->dz[i - 1], d16);
            else
                nn_relu_backward_set(&p->relu[i - 1], p->dh[i - 1], p->dz[i - 1]);
            in16 = d16 != NULL;
            dy = p->dz[i - 1];
        }
    }
}

static ngd_status mlp_attach(nn_model *m, ngd_optim *o) {
    mlp *p = m->impl;
    for (size_t i = 0; i < p->nl; i++) {
        char name[32];
        snprintf(name, sizeof name, "fc%zu", i + 1);
        ngd_status s = nn_attach_linear(o, &p->lin[i], name, &p->id[i]);
        if (s != NGD_OK) return s;
    }
    return NGD_OK;
}

static ngd_status mlp_observe(nn_model *m, ngd_optim *o) {
    mlp *p = m->impl;
    for (size_t i = 0; i < p->nl; i++) {
        ngd_status s = nn_observe_linear(o, &p->lin[i], p->id[i], m->N);
        if (s != NGD_OK) return s;
    }
    return NGD_OK;
}

const nn_model_ops nn_mlp_ops = {
    .name = "mlp",
    .help = "multi-layer perceptron, ReLU; --widths sets the hidden widths (default 512,512)",
    .create = mlp_create,
    .forward = mlp_forward,
    .backward = mlp_backward,
    .attach = mlp_attach,
    .observe = mlp_observe,
    .destroy = mlp_destroy,
    .linear_only = true,
};
