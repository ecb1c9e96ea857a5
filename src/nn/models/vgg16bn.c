/*
 * vgg16bn.c — the CIFAR VGG16-BN of the RS-KFAC runs (docs/algorithms.md#rs-kfac-paper-setup):
 *   config D = [64,64,M, 128,128,M, 256,256,256,M, 512,512,512,M, 512,512,512,M]
 *   each number: Conv3x3 (bias, padding 1) -> BatchNorm2d -> ReLU; M: MaxPool 2x2 stride 2
 *   classifier: flatten -> Linear(512, 512) -> ReLU -> Dropout(0.5) -> Linear(512, classes)
 * On 3x32x32 inputs with 10 classes this is the paper's 14,990,922-parameter network.
 *
 * Width multiplier: cfg->widths[0] = d (default 1) divides every channel count and the
 * classifier's hidden width (64/d, ..., 512/d), so d = 4 or 8 trains on a laptop.
 * Inputs smaller than 32x32 skip the pools that would shrink the map below 1x1 (28x28
 * skips the last one), and the classifier takes whatever the last stage leaves
 * (c·h·w features). A map the pools cannot halve that is not 1x1 (a 1x784 "image") is
 * refused: every later stage would run at its full size (minutes per step). cfg->dropout
 * sets the dropout probability (0 = the paper's 0.5).
 *
 * Initialisation (#rs-kfac-paper-setup): conv weights N(0, 2/(9·c_out)) (Kaiming, fan-out), conv
 * biases 0; BN γ = 1, β = 0; the classifier keeps PyTorch's default Linear init. All 13 Conv2d and
 * both Linears are Kronecker-factored layers; BN scales/shifts are plain parameters, BN
 * running statistics are model buffers (saved in checkpoints), the dropout stream is a
 * model rng. Forward in order, backward in reverse; buffers planned at create. BN and ReLU
 * run as one pass (nn_batchnorm_relu_*), and the blocks' backwards write their input
 * gradients, so no activation gradient is cleared per step; the gradients of the block
 * outputs share one buffer.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

#define VGG_CONVS  13
#define VGG_STAGES 5
static const size_t STAGE_CONVS[VGG_STAGES] = {2, 2, 3, 3, 3};
static const size_t STAGE_CHANS[VGG_STAGES] = {64, 128, 256, 512, 512};
#define VGG_HIDDEN 512

typedef struct {
    size_t div, hidden, flat, maxN;
    nn_conv2d conv[VGG_CONVS];
    nn_batchnorm bn[VGG_CONVS];
    nn_relu relu_fc;
    nn_maxpool2d pool[VGG_STAGES];
    bool pooled[VGG_STAGES]; // the stage ends with a pool (false: map already 1 wide)
    nn_linear fc1, fc2;
    nn_dropout drop;
    int conv_id[VGG_CONVS], fc1_id, fc2_id;
    // activations, each (N, C, H, W) of its layer
    float *cz[VGG_CONVS];      // conv output (BN's borrowed input)
    uint16_t *cz16[VGG_CONVS]; // bf16 mode: the same rounded, instead
    float *ra[VGG_CONVS];      // BN-ReLU output (the next conv's input; NULL before a pool)
    float *po[VGG_STAGES];     // pool output (NULL when the stage is not pooled)
    // bf16 mode: the activations a conv reads are kept in bf16 (the conv would round them
    // anyway): ra16 / po16 instead of ra / po where a conv is the consumer (NULL otherwise)
    uint16_t *ra16[VGG_CONVS], *po16[VGG_STAGES];
    float *h1, *a1, *d1; // (N, hidden) fc1 output, ReLU output, dropout output
    // gradients
    float *dcz[VGG_CONVS];      // conv output gradient: the conv's `g`, kept for observe
    uint16_t *dcz16[VGG_CONVS]; // bf16 mode: dcz in bf16 instead (NULL otherwise)
    float *dpo[VGG_STAGES];     // pool output gradient
    float *gs;                  // (N, max C·H·W) gradient of the block output being worked on
    uint16_t *gs16;             // bf16 mode, every stage pooled: the same in bf16, instead
    float *dz;                  // (N, max C·H·W) every dcz[k] when cfg->no_stats (else NULL)
    uint16_t *dz16;             // the same for dcz16 in bf16 mode
    float *dh1, *da1, *dd1;     // (N, hidden); dh1 is fc1's `g`
    size_t N;                   // batch of the last forward
} vgg;

static void vgg_destroy(nn_model *m) {
    vgg *p = m->impl;
    for (size_t k = 0; k < VGG_CONVS; k++) {
        nn_conv2d_free(&p->conv[k]);
        nn_batchnorm_free(&p->bn[k]);
        free(p->cz[k]), free(p->cz16[k]), free(p->ra[k]), free(p->ra16[k]);
        if (!p->dz && !p->dz16) free(p->dcz[k]), free(p->dcz16[k]);
    }
    for (size_t s = 0; s < VGG_STAGES; s++) {
        nn_maxpool2d_free(&p->pool[s]);
        free(p->po[s]), free(p->po16[s]), free(p->dpo[s]);
    }
    nn_linear_free(&p->fc1);
    nn_linear_free(&p->fc2);
    nn_dropout_free(&p->drop);
    free(p->gs), free(p->gs16), free(p->dz), free(p->dz16);
    free(p->h1), free(p->a1), free(p->d1), free(p->dh1), free(p->da1), free(p->dd1);
    free(p);
    m->impl = NULL;
}

static float *buf(size_t n, size_t per) { return nn_malloc(nn_mul(n, per), sizeof(float)); }

static nn_status vgg_create(nn_model *m, const nn_model_cfg *cfg, char *err, size_t cap) {
    const size_t div = cfg->nwidths > 0 ? cfg->widths[0] : 1;
    if (cfg->nwidths > 1 || div == 0 || div > 64) {
        snprintf(err, cap, "vgg16bn: --widths D divides the channels (1 <= D <= 64, e.g. 4 or 8)");
        return NN_ERR_ARG;
    }
    nn_model_set_widths(m, &div, 1);
    if (!(cfg->dropout >= 0.0f && cfg->dropout < 1.0f)) {
        snprintf(err, cap, "vgg16bn: dropout must be in [0, 1)");
        return NN_ERR_ARG;
    }
    vgg *p = nn_calloc(1, sizeof *p);
    if (!p) goto oom;
    m->impl = p;
    p->div = div, p->hidden = VGG_HIDDEN / div, p->maxN = cfg->max_batch;
    const size_t N = p->maxN;
    nn_rng rng;
    nn_rng_seed(&rng, cfg->seed);
    size_t c = cfg->in_c, h = cfg->in_h, w = cfg->in_w, k = 0, maxact = 0;
    nn_param ps[2];
    for (size_t s = 0; s < VGG_STAGES; s++) {
        const size_t co = STAGE_CHANS[s] / div;
        const bool pools = h >= 2 && w >= 2, last = s + 1 == VGG_STAGES;
        for (size_t j = 0; j < STAGE_CONVS[s]; j++, k++) {
            const ngd_conv_geom g = {c, h, w, 3, 3, 1, 1, 1, 1, 1, 1, 1};
            if (nn_conv2d_init(&p->conv[k], &g, co, true, N, &rng) != NN_OK ||
                (cfg->bf16 && nn_conv2d_use_bf16(&p->conv[k]) != NN_OK) ||
                nn_batchnorm_init(&p->bn[k], co, h * w, N) != NN_OK)
                goto oom;
            // #rs-kfac-paper-setup: conv weights N(0, 2/(9 c_out)), biases 0 (not PyTorch's init)
            nn_rng_fill_normal(&rng, p->conv[k].w, co * p->conv[k].d_in, 0.0f,
                               sqrtf(2.0f / (9.0f * (float)co)));
            memset(p->conv[k].b, 0, co * sizeof(float));
            c = co;
            const size_t act = c * h * w;
            maxact = act > maxact ? act : maxact;
            if (cfg->bf16)
                p->cz16[k] = nn_malloc(nn_mul(N, act), sizeof(uint16_t));
            else
                p->cz[k] = buf(N, act);
            // read by a conv: the next in the stage, or the next stage's first (no pool); a
            // stage's last block before a pool stores none (nn_conv_bn_relu_pool_forward)
            const bool stored = j + 1 < STAGE_CONVS[s] || !pools;
            if (cfg->bf16 && (j + 1 < STAGE_CONVS[s] || (!pools && !last)))
                p->ra16[k] = nn_malloc(nn_mul(N, act), sizeof(uint16_t));
            else if (stored)
                p->ra[k] = buf(N, act);
            if (!cfg->no_stats && cfg->bf16)
                p->dcz16[k] = nn_malloc(nn_mul(N, act), sizeof(uint16_t));
            else if (!cfg->no_stats)
                p->dcz[k] = buf(N, act);
            if ((!p->cz[k] && !p->cz16[k]) || (stored && !p->ra[k] && !p->ra16[k]) ||
                (!cfg->no_stats && !p->dcz[k] && !p->dcz16[k]))
                goto oom;
            nn_model_add_params(m, ps, nn_conv2d_params(&p->conv[k], ps));
            nn_model_add_params(m, ps, nn_batchnorm_params(&p->bn[k], ps));
            nn_model_add_buffer(m, "running_mean", p->bn[k].running_mean, co);
            nn_model_add_buffer(m, "running_var", p->bn[k].running_var, co);
        }
        p->pooled[s] = h >= 2 && w >= 2;
        if (!p->pooled[s] && h * w > 1) { // a 1xW or Hx1 map: every later stage at full size
            snprintf(err, cap,
                     "vgg16bn: its 2x2 pools cannot halve a %zux%zu map (the input is "
                     "%zux%zux%zu): it takes images of at least 2x2 pixels per pool, e.g. "
                     "28x28 or 32x32 (a flat image: --model mlp)",
                     h, w, cfg->in_c, cfg->in_h, cfg->in_w);
            return NN_ERR_ARG;
        }
        if (p->pooled[s]) {
            if (nn_maxpool2d_init(&p->pool[s], c, h, w, 2, 2, 0, N) != NN_OK) goto oom;
            h /= 2, w /= 2;
            if (cfg->bf16 && !last)
                p->po16[s] = nn_malloc(nn_mul(N, c * h * w), sizeof(uint16_t));
            else
                p->po[s] = buf(N, c * h * w);
            p->dpo[s] = buf(N, c * h * w);
            if ((!p->po[s] && !p->po16[s]) || !p->dpo[s]) goto oom;
        }
    }
    p->flat = c * h * w;
    if (nn_linear_init(&p->fc1, p->flat, p->hidden, true, &rng) != NN_OK ||
        nn_linear_init(&p->fc2, p->hidden, cfg->classes, true, &rng) != NN_OK ||
        nn_dropout_init(&p->drop, cfg->dropout > 0.0f ? cfg->dropout : 0.5f, nn_mul(N, p->hidden),
                        cfg->seed ^ 0x5eedd40b0u) != NN_OK)
        goto oom;
    if (cfg->bf16 &&
        (nn_linear_use_bf16(&p->fc1, N) != NN_OK || nn_linear_use_bf16(&p->fc2, N) != NN_OK))
        goto oom;
    nn_model_add_params(m, ps, nn_linear_params(&p->fc1, ps));
    nn_model_add_params(m, ps, nn_linear_params(&p->fc2, ps));
    nn_model_add_rng(m, &p->drop.rng);
    // (a stage without a pool takes its gradient in gs from the next stage or from fc1, in f32)
    bool all_pooled = true;
    for (size_t s = 0; s < VGG_STAGES; s++)
        all_pooled = all_pooled && p->pooled[s];
    if (cfg->bf16 && all_pooled)
        p->gs16 = nn_malloc(nn_mul(N, maxact), sizeof(uint16_t));
    else
        p->gs = buf(N, maxact);
    if (cfg->no_stats && cfg->bf16) {
        if (!(p->dz16 = nn_malloc(nn_mul(N, maxact), sizeof(uint16_t)))) goto oom;
        for (size_t j = 0; j < VGG_CONVS; j++)
            p->dcz16[j] = p->dz16;
    } else if (cfg->no_stats) {
        if (!(p->dz = buf(N, maxact))) goto oom;
        for (size_t j = 0; j < VGG_CONVS; j++)
            p->dcz[j] = p->dz;
    }
    p->h1 = buf(N, p->hidden), p->a1 = buf(N, p->hidden), p->d1 = buf(N, p->hidden);
    p->dh1 = buf(N, p->hidden), p->da1 = buf(N, p->hidden), p->dd1 = buf(N, p->hidden);
    if ((!p->gs && !p->gs16) || !p->h1 || !p->a1 || !p->d1 || !p->dh1 || !p->da1 || !p->dd1)
        goto oom;
    return NN_OK;
oom:
    snprintf(err, cap, "vgg16bn: out of memory");
    return NN_ERR_NOMEM;
}

// x (N, c, h, w) -> m->logits (N, classes)
static void vgg_forward(nn_model *m, const float *x, size_t N, bool train) {
    vgg *p = m->impl;
    NN_ASSERT(x && N >= 1 && N <= p->maxN);
    p->N = N;
    m->N = N;
    nn_act in = {x, NULL};
    size_t k = 0;
    for (size_t s = 0; s < VGG_STAGES; s++) {
        for (size_t j = 0; j < STAGE_CONVS[s]; j++, k++)
            if (p->pooled[s] && j + 1 == STAGE_CONVS[s])
                in = nn_conv_bn_relu_pool_forward(&p->conv[k], &p->bn[k], &p->pool[s], in, p->cz[k],
                                                  p->cz16[k], p->po[s], p->po16[s], N, train);
            else
                in = nn_conv_bn_relu_forward(&p->conv[k], &p->bn[k], in, p->cz[k], p->cz16[k],
                                             p->ra[k], p->ra16[k], N, train);
    }
    // flatten: NCHW memory is already (N, C·H·W)
    nn_linear_forward(&p->fc1, in.f, p->h1, N);
    nn_relu_forward(&p->relu_fc, p->h1, p->a1, N * p->hidden);
    nn_dropout_forward(&p->drop, p->a1, p->d1, N * p->hidden, train);
    nn_linear_forward(&p->fc2, p->d1, m->logits, N);
}

// The gradient buffer of stage s's output: its pool's, or (not pooled) the block output
// gradient buffer.
static float *stage_grad(vgg *p, size_t s) { return p->pooled[s] ? p->dpo[s] : p->gs; }

// dlogits (N, classes), borrowed until observe (it is fc2's `g`)
static void vgg_backward(nn_model *m, const float *dlogits) {
    vgg *p = m->impl;
    const size_t N = p->N, nh = N * p->hidden * sizeof(float);
    nn_linear_backward_set(&p->fc2, dlogits, p->dd1); // (written: nothing to clear)
    memset(p->da1, 0, nh);
    nn_dropout_backward(&p->drop, p->dd1, p->da1);
    nn_relu_backward_set(&p->relu_fc, p->da1, p->dh1);
    float *dflat = stage_grad(p, VGG_STAGES - 1);
    nn_linear_backward_set(&p->fc1, p->dh1, dflat);
    size_t k = VGG_CONVS; // one past the last conv of stage s
    for (size_t s = VGG_STAGES; s-- > 0;) {
        const size_t first = k - STAGE_CONVS[s];
        // gs <- the gradient of the stage's last block output (already there if not pooled)
        if (p->gs16)
            nn_maxpool2d_backward_set_bf16(&p->pool[s], p->dpo[s], p->gs16);
        else if (p->pooled[s])
            nn_maxpool2d_backward_set(&p->pool[s], p->dpo[s], p->gs);
        while (k-- > first) {
            // the conv's input gradient: the previous block's output (into gs or gs16,
            // whichever there is, now free) or the previous stage's; the image needs none
            float *dx = k == 0 ? NULL : k == first ? stage_grad(p, s - 1) : p->gs;
            nn_conv_bn_relu_backward(&p->conv[k], &p->bn[k], p->gs, p->gs16, p->dcz[k], p->dcz16[k],
                                     dx, k != first ? p->gs16 : NULL);
        }
        k = first;
    }
}

static ngd_status vgg_attach(nn_model *m, ngd_optim *o) {
    vgg *p = m->impl;
    ngd_status st;
    char name[32];
    nn_param ps[2];
    for (size_t k = 0; k < VGG_CONVS; k++) {
        snprintf(name, sizeof name, "conv%zu", k + 1);
        if ((st = nn_attach_conv2d(o, &p->conv[k], name, &p->conv_id[k]))) return st;
        snprintf(name, sizeof name, "bn%zu", k + 1);
        if ((st = nn_attach_params(o, m->param_override, ps, nn_batchnorm_params(&p->bn[k], ps),
                                   name)))
            return st;
    }
    if ((st = nn_attach_linear(o, &p->fc1, "fc1", &p->fc1_id))) return st;
    return nn_attach_linear(o, &p->fc2, "fc2", &p->fc2_id);
}

static ngd_status vgg_observe(nn_model *m, ngd_optim *o) {
    vgg *p = m->impl;
    ngd_status st;
    if (p->dz || p->dz16) return NGD_ERR_STATE; // created with no_stats: the gradients are gone
    for (size_t k = 0; k < VGG_CONVS; k++)
        if ((st = nn_observe_conv2d(o, m, &p->conv[k], p->conv_id[k], p->N))) return st;
    if ((st = nn_observe_linear(o, &p->fc1, p->fc1_id, p->N))) return st;
    return nn_observe_linear(o, &p->fc2, p->fc2_id, p->N);
}

const nn_model_ops nn_vgg16bn_ops = {
    .name = "vgg16bn",
    .help = "CIFAR VGG16-BN (13 conv3x3-BN-ReLU, 5 maxpools, FC 512-ReLU-dropout-FC); "
            "--widths D divides the channels (1)",
    .create = vgg_create,
    .forward = vgg_forward,
    .backward = vgg_backward,
    .attach = vgg_attach,
    .observe = vgg_observe,
    .destroy = vgg_destroy,
};
