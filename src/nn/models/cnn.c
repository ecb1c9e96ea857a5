/*
 * cnn.c — a small VGG-style network with batch normalisation:
 *   [Conv3x3 -> BN -> ReLU -> Conv3x3 -> BN -> ReLU -> MaxPool2] per stage (default channels
 *   32, 64), flatten, Linear -> ReLU (128) -> Linear (classes).
 * Convolutions and Linears are Kronecker-factored layers; BN scales/shifts are registered as
 * plain parameters. Forward in order; backward in reverse. BN and ReLU run as one pass
 * (nn_batchnorm_relu_*), and every backward writes its input gradient, so no activation
 * gradient is cleared per step; the gradients of the block outputs share one buffer.
 */
#include <stdio.h>
#include <string.h>

#include "model.h"

#define CNN_MAX_STAGES 4
#define CNN_CONVS      (2 * CNN_MAX_STAGES)
#define CNN_HIDDEN     128

typedef struct {
    size_t nstages, nconv;
    nn_conv2d conv[CNN_CONVS];
    nn_batchnorm bn[CNN_CONVS];
    nn_relu relu_fc;
    nn_maxpool2d pool[CNN_MAX_STAGES];
    nn_linear fc1, fc2;
    int conv_id[CNN_CONVS], fc1_id, fc2_id;
    // activations, each (B, C, H, W) of its layer; x_k is the input of conv k
    float *cz[CNN_CONVS];      // conv output (BN's borrowed input)
    uint16_t *cz16[CNN_CONVS]; // bf16 mode: the same rounded, instead
    float *ra[CNN_CONVS];      // BN-ReLU output (of a stage's first block; NULL for the second)
    float *po[CNN_MAX_STAGES]; // pool output
    // bf16 mode: the activations a conv reads are kept in bf16 (the conv would round them
    // anyway): ra16 instead of ra for the first block of a stage, po16 instead of po before
    // the last stage (NULL otherwise)
    uint16_t *ra16[CNN_CONVS], *po16[CNN_MAX_STAGES];
    float *h1, *a1; // (B, 128) fc1 output, ReLU output
    // gradients, same shapes; dcz is the conv's `g` (kept for observe)
    float *dcz[CNN_CONVS], *dpo[CNN_MAX_STAGES];
    uint16_t *dcz16[CNN_CONVS]; // bf16 mode: dcz in bf16 instead (NULL otherwise)
    float *gs;                  // (B, max C·H·W) gradient of the block output being worked on
    uint16_t *gs16;             // bf16 mode: the same in bf16, instead
    float *dz;                  // (B, max C·H·W) every dcz[k] when cfg->no_stats (else NULL)
    uint16_t *dz16;             // the same for dcz16 in bf16 mode
    float *dh1, *da1;
    size_t flat; // features entering fc1
} cnn;

static void cnn_destroy(nn_model *m) {
    cnn *p = m->impl;
    for (size_t k = 0; k < p->nconv; k++) {
        nn_conv2d_free(&p->conv[k]);
        nn_batchnorm_free(&p->bn[k]);
        free(p->cz[k]), free(p->cz16[k]), free(p->ra[k]), free(p->ra16[k]);
        if (!p->dz && !p->dz16) free(p->dcz[k]), free(p->dcz16[k]);
    }
    for (size_t s = 0; s < p->nstages; s++) {
        nn_maxpool2d_free(&p->pool[s]);
        free(p->po[s]), free(p->po16[s]), free(p->dpo[s]);
    }
    nn_linear_free(&p->fc1);
    nn_linear_free(&p->fc2);
    free(p->h1), free(p->a1), free(p->dh1), free(p->da1), free(p->gs), free(p->gs16), free(p->dz),
        free(p->dz16);
    free(p);
    m->impl = NULL;
}

static float *buf(size_t n) { return nn_malloc(n, sizeof(float)); }

static nn_status cnn_create(nn_model *m, const nn_model_cfg *cfg, char *err, size_t cap) {
    cnn *p = nn_calloc(1, sizeof *p);
    if (!p) return NN_ERR_NOMEM;
    m->impl = p;
    size_t chans[CNN_MAX_STAGES] = {32, 64};
    const size_t ns = cfg->nwidths ? cfg->nwidths : 2;
    if (ns > CNN_MAX_STAGES) { // (before nstages: cnn_destroy walks the stages it says)
        snprintf(err, cap, "cnn: at most %d stages (--widths)", CNN_MAX_STAGES);
        return NN_ERR_ARG;
    }
    p->nstages = ns;
    if (cfg->nwidths) memcpy(chans, cfg->widths, p->nstages * sizeof chans[0]);
    nn_model_set_widths(m, chans, p->nstages);
    nn_rng rng;
    nn_rng_seed(&rng, cfg->seed);
    const size_t B = cfg->max_batch;
    size_t c = cfg->in_c, h = cfg->in_h, w = cfg->in_w, maxact = 0;
    for (size_t s = 0; s < p->nstages; s++) {
        for (int j = 0; j < 2; j++) {
            size_t k = p->nconv++;
            ngd_conv_geom g = {c, h, w, 3, 3, 1, 1, 1, 1, 1, 1, 1};
            if (!chans[s]) goto bad;
            // (a failure past the shape checks is memory: --widths 100000 was said to be
            //  "input too small", a usage error)
            const nn_status cs = nn_conv2d_init(&p->conv[k], &g, chans[s], true, B, &rng);
            if (cs == NN_ERR_NOMEM) goto oom;
            if (cs != NN_OK) goto bad;
            if ((cfg->bf16 && nn_conv2d_use_bf16(&p->conv[k]) != NN_OK) ||
                nn_batchnorm_init(&p->bn[k], chans[s], h * w, B) != NN_OK)
                goto oom;
            c = chans[s];
            size_t n = B * c * h * w;
            maxact = n > maxact ? n : maxact;
            if (cfg->bf16)
                p->cz16[k] = nn_malloc(n, sizeof(uint16_t));
            else
                p->cz[k] = buf(n);
            // the first block's output (the second's goes straight into the pool)
            if (j == 0 && cfg->bf16)
                p->ra16[k] = nn_malloc(n, sizeof(uint16_t));
            else if (j == 0)
                p->ra[k] = buf(n);
            if (!cfg->no_stats && cfg->bf16)
                p->dcz16[k] = nn_malloc(n, sizeof(uint16_t));
            else if (!cfg->no_stats)
                p->dcz[k] = buf(n);
            if ((!p->cz[k] && !p->cz16[k]) || (j == 0 && !p->ra[k] && !p->ra16[k]) ||
                (!cfg->no_stats && !p->dcz[k] && !p->dcz16[k]))
                goto oom;
            nn_param ps[2];
            size_t np = nn_conv2d_params(&p->conv[k], ps);
            nn_model_add_params(m, ps, np);
            np = nn_batchnorm_params(&p->bn[k], ps);
            nn_model_add_params(m, ps, np);
            nn_model_add_buffer(m, "running_mean", p->bn[k].running_mean, chans[s]);
            nn_model_add_buffer(m, "running_var", p->bn[k].running_var, chans[s]);
        }
        if (h < 2 || w < 2 || nn_maxpool2d_init(&p->pool[s], c, h, w, 2, 2, 0, B) != NN_OK)
            goto bad;
        h /= 2, w /= 2;
        if (cfg->bf16 && s + 1 < p->nstages)
            p->po16[s] = nn_malloc(B * c * h * w, sizeof(uint16_t));
        else
            p->po[s] = buf(B * c * h * w);
        p->dpo[s] = buf(B * c * h * w);
        if ((!p->po[s] && !p->po16[s]) || !p->dpo[s]) goto oom;
    }
    p->flat = c * h * w;
    if (nn_linear_init(&p->fc1, p->flat, CNN_HIDDEN, true, &rng) != NN_OK ||
        nn_linear_init(&p->fc2, CNN_HIDDEN, cfg->classes, true, &rng) != NN_OK)
        goto oom;
    if (cfg->bf16 &&
        (nn_linear_use_bf16(&p->fc1, B) != NN_OK || nn_linear_use_bf16(&p->fc2, B) != NN_OK))
        goto oom;
    nn_param ps[2];
    size_t np = nn_linear_params(&p->fc1, ps);
    nn_model_add_params(m, ps, np);
    np = nn_linear_params(&p->fc2, ps);
    nn_model_add_params(m, ps, np);
    p->h1 = buf(B * CNN_HIDDEN), p->a1 = buf(B * CNN_HIDDEN);
    p->dh1 = buf(B * CNN_HIDDEN), p->da1 = buf(B * CNN_HIDDEN);
    if (cfg->bf16)
        p->gs16 = nn_malloc(maxact, sizeof(uint16_t));
    else
        p->gs = buf(maxact);
    if (!p->h1 || !p->a1 || !p->dh1 || !p->da1 || (!p->gs && !p->gs16)) goto oom;
    if (cfg->no_stats && cfg->bf16) {
        if (!(p->dz16 = nn_malloc(maxact, sizeof(uint16_t)))) goto oom;
        for (size_t k = 0; k < p->nconv; k++)
            p->dcz16[k] = p->dz16;
    } else if (cfg->no_stats) {
        if (!(p->dz = buf(maxact))) goto oom;
        for (size_t k = 0; k < p->nconv; k++)
            p->dcz[k] = p->dz;
    }
    return NN_OK;
bad:
    snprintf(err, cap, "cnn: input %zux%zux%zu too small for %zu stages (or a zero width)",
             cfg->in_c, cfg->in_h, cfg->in_w, p->nstages);
    return NN_ERR_ARG;
oom:
    snprintf(err, cap, "cnn: out of memory");
    return NN_ERR_NOMEM;
}

static void cnn_forward(nn_model *m, const float *x, size_t N, bool train) {
    cnn *p = m->impl;
    m->N = N;
    nn_act in = {x, NULL};
    for (size_t s = 0; s < p->nstages; s++) {
        const size_t k = 2 * s;
        in = nn_conv_bn_relu_forward(&p->conv[k], &p->bn[k], in, p->cz[k], p->cz16[k], p->ra[k],
                                     p->ra16[k], N, train);
        in = nn_conv_bn_relu_pool_forward(&p->conv[k + 1], &p->bn[k + 1], &p->pool[s], in,
                                          p->cz[k + 1], p->cz16[k + 1], p->po[s], p->po16[s], N,
                                          train);
    }
    nn_linear_forward(&p->fc1, in.f, p->h1, N); // flatten: NCHW memory is already (N, C*H*W)
    nn_relu_forward(&p->relu_fc, p->h1, p->a1, N * CNN_HIDDEN);
    nn_linear_forward(&p->fc2, p->a1, m->logits, N);
}

static void cnn_backward(nn_model *m, const float *dlogits) {
    cnn *p = m->impl;
    // (the _set variants write their gradients: nothing to clear)
    nn_linear_backward_set(&p->fc2, dlogits, p->da1);
    nn_relu_backward_set(&p->relu_fc, p->da1, p->dh1);
    float *dpo_last = p->dpo[p->nstages - 1];
    nn_linear_backward_set(&p->fc1, p->dh1, dpo_last);
    for (size_t s = p->nstages; s-- > 0;) {
        if (p->gs16)
            nn_maxpool2d_backward_set_bf16(&p->pool[s], p->dpo[s], p->gs16);
        else
            nn_maxpool2d_backward_set(&p->pool[s], p->dpo[s], p->gs);
        for (size_t j = 2; j-- > 0;) {
            size_t k = 2 * s + j;
            // the gradient of the conv's input: the previous block's output (into gs or gs16,
            // whichever there is, now free) or the previous pool's; the image needs none
            float *dx = k == 0 ? NULL : j == 1 ? p->gs : p->dpo[s - 1];
            nn_conv_bn_relu_backward(&p->conv[k], &p->bn[k], p->gs, p->gs16, p->dcz[k], p->dcz16[k],
                                     dx, j == 1 ? p->gs16 : NULL);
        }
    }
}

static ngd_status cnn_attach(nn_model *m, ngd_optim *o) {
    cnn *p = m->impl;
    ngd_status st;
    for (size_t k = 0; k < p->nconv; k++) {
        char name[32];
        snprintf(name, sizeof name, "conv%zu", k + 1);
        if ((st = nn_attach_conv2d(o, &p->conv[k], name, &p->conv_id[k]))) return st;
        nn_param ps[2];
        size_t np = nn_batchnorm_params(&p->bn[k], ps);
        snprintf(name, sizeof name, "bn%zu", k + 1);
        if ((st = nn_attach_params(o, m->param_override, ps, np, name))) return st;
    }
    if ((st = nn_attach_linear(o, &p->fc1, "fc1", &p->fc1_id))) return st;
    return nn_attach_linear(o, &p->fc2, "fc2", &p->fc2_id);
}

static ngd_status cnn_observe(nn_model *m, ngd_optim *o) {
    cnn *p = m->impl;
    ngd_status st;
    if (p->dz || p->dz16) return NGD_ERR_STATE; // created with no_stats: the gradients are gone
    for (size_t k = 0; k < p->nconv; k++)
        if ((st = nn_observe_conv2d(o, m, &p->conv[k], p->conv_id[k], m->N))) return st;
    if ((st = nn_observe_linear(o, &p->fc1, p->fc1_id, m->N))) return st;
    return nn_observe_linear(o, &p->fc2, p->fc2_id, m->N);
}

const nn_model_ops nn_cnn_ops = {
    .name = "cnn",
    .help = "VGG-style: [conv3x3-BN-ReLU x2, maxpool] per stage (--widths, default 32,64), "
            "FC 128, FC",
    .create = cnn_create,
    .forward = cnn_forward,
    .backward = cnn_backward,
    .attach = cnn_attach,
    .observe = cnn_observe,
    .destroy = cnn_destroy,
};
