/*
 * vit.c — a small vision transformer (ViT, Dosovitskiy et al. 2021) for image
 * classification, written out in order (llm.c style):
 *   x = patches(image) Wpᵀ + bp + pos                      (N, P, C)   P = (H/p)(W/p)
 *   depth pre-norm blocks:  x += attn(ln1(x))               non-causal multi-head attention
 *                           x += proj(gelu(fc(ln2(x))))     C -> 4C -> C, exact (erf) GELU
 *   logits = head(mean_tokens(lnf(x)))                      (N, classes)
 * Sizes from cfg->widths: [0] = C (64), [1] = depth (2), [2] = heads (4), [3] = patch size p
 * (4: 28x28 -> 49 tokens, 32x32 -> 64 tokens); p must divide the image. No class token
 * (mean pooling), no dropout.
 *
 * Every Linear (patch projection, attention qkv and proj, MLP fc and proj, head) is a
 * Kronecker-factored layer. All but the head are applied to every token, so their
 * statistics have N·P rows for a batch of N (weights shared over tokens): observe hands
 * libngd batch = N and libngd's expand/reduce handles the sharing. The loss is the mean over
 * the N images, so the default loss_average (NGD_LOSS_BATCH) is the right one. LayerNorm
 * scales/shifts and the positional embedding are plain parameters (nn_attach_params).
 * Initialisation: PyTorch defaults for Linear, N(0, 0.02²) for the positional embedding.
 *
 * Backward keeps every gradient that is some Linear's output gradient `g` in its own buffer
 * (dres, dmid, dfch), because observe reads them after the whole backward pass.
 */
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "tblock.h"

#define VIT_MAX_DEPTH 16

typedef struct {
    size_t C, depth, nh, patch, P, maxN;
    nn_patchembed pe; // its proj: (C, c·p·p)
    nn_posembed pos;  // (P, C)
    nn_tblock blk[VIT_MAX_DEPTH];
    nn_layernorm lnf;
    nn_linear head; // (classes, C)
    int pe_id, head_id;
    float *res[VIT_MAX_DEPTH + 1];  // (NP, C) the residual stream entering block l
    float *dres[VIT_MAX_DEPTH + 1]; // (NP, C) its gradient (a Linear's `g`: pe / proj)
    float *lnfo;                    // (NP, C)
    float *pooled, *dpooled;        // (N, C) mean over tokens and its gradient
    float *dln, *dgel;              // (NP, C), (NP, 4C) scratch
    size_t N;                       // batch of the last forward
} vit;

static void vit_destroy(nn_model *m) {
    vit *p = m->impl;
    nn_patchembed_free(&p->pe);
    nn_posembed_free(&p->pos);
    for (size_t l = 0; l < p->depth; l++)
        nn_tblock_free(&p->blk[l]);
    for (size_t l = 0; l <= p->depth; l++)
        free(p->res[l]), free(p->dres[l]);
    nn_layernorm_free(&p->lnf);
    nn_linear_free(&p->head);
    free(p->lnfo), free(p->pooled), free(p->dpooled), free(p->dln), free(p->dgel);
    free(p);
    m->impl = NULL;
}

static float *buf(size_t rows, size_t cols) { return nn_malloc(nn_mul(rows, cols), sizeof(float)); }

static nn_status vit_create(nn_model *m, const nn_model_cfg *cfg, char *err, size_t cap) {
    const size_t C = cfg->nwidths > 0 ? cfg->widths[0] : 64;
    const size_t depth = cfg->nwidths > 1 ? cfg->widths[1] : 2;
    const size_t nh = cfg->nwidths > 2 ? cfg->widths[2] : 4;
    const size_t patch = cfg->nwidths > 3 ? cfg->widths[3] : 4;
    if (cfg->nwidths > 4) {
        snprintf(err, cap, "vit: --widths C,DEPTH,HEADS[,PATCH] takes at most 4 values (got %zu)",
                 cfg->nwidths);
        return NN_ERR_ARG;
    }
    nn_model_set_widths(m, (const size_t[]){C, depth, nh, patch}, 4);
    if (C == 0 || depth == 0 || depth > VIT_MAX_DEPTH || nh == 0 || C % nh) {
        snprintf(err, cap,
                 "vit: --widths C,DEPTH,HEADS[,PATCH] needs C divisible by HEADS and "
                 "1 <= DEPTH <= %d (got %zu,%zu,%zu)",
                 VIT_MAX_DEPTH, C, depth, nh);
        return NN_ERR_ARG;
    }
    if (patch == 0 || cfg->in_h % patch || cfg->in_w % patch) {
        snprintf(err, cap,
                 "vit: the patch size %zu must divide the image (%zux%zu); give it as "
                 "the 4th --widths entry",
                 patch, cfg->in_h, cfg->in_w);
        return NN_ERR_ARG;
    }
    vit *p = nn_calloc(1, sizeof *p);
    if (!p) goto oom;
    m->impl = p;
    p->C = C, p->depth = depth, p->nh = nh, p->patch = patch, p->maxN = cfg->max_batch;
    p->P = (cfg->in_h / patch) * (cfg->in_w / patch);
    const size_t NP = nn_mul(p->maxN, p->P), C4 = nn_mul(4, C);
    nn_rng rng;
    nn_rng_seed(&rng, cfg->seed);
    nn_param ps[2];
    if (nn_patchembed_init(&p->pe, cfg->in_c, cfg->in_h, cfg->in_w, patch, C, p->maxN, &rng) !=
            NN_OK ||
        nn_posembed_init(&p->pos, p->P, C, &rng) != NN_OK)
        goto oom;
    nn_model_add_params(m, ps, nn_linear_params(&p->pe.proj, ps));
    nn_model_add_params(m, ps, nn_posembed_params(&p->pos, ps));
    for (size_t l = 0; l < depth; l++)
        if (nn_tblock_init(&p->blk[l], m, C, nh, false, NN_GELU_ERF, p->maxN, p->P, &rng) != NN_OK)
            goto oom;
    if (nn_layernorm_init(&p->lnf, C, NP) != NN_OK ||
        nn_linear_init(&p->head, C, cfg->classes, true, &rng) != NN_OK)
        goto oom;
    nn_model_add_params(m, ps, nn_layernorm_params(&p->lnf, ps));
    nn_model_add_params(m, ps, nn_linear_params(&p->head, ps));
    for (size_t l = 0; l <= depth; l++) {
        p->res[l] = buf(NP, C), p->dres[l] = buf(NP, C);
        if (!p->res[l] || !p->dres[l]) goto oom;
    }
    p->lnfo = buf(NP, C), p->dln = buf(NP, C), p->dgel = buf(NP, C4);
    p->pooled = buf(p->maxN, C), p->dpooled = buf(p->maxN, C);
    if (!p->lnfo || !p->dln || !p->dgel || !p->pooled || !p->dpooled) goto oom;
    if (cfg->bf16) {
        if (nn_linear_use_bf16(&p->pe.proj, NP) != NN_OK) goto oom;
        for (size_t l = 0; l < depth; l++)
            if (nn_tblock_use_bf16(&p->blk[l], NP) != NN_OK) goto oom;
        if (nn_linear_use_bf16(&p->head, p->maxN) != NN_OK) goto oom;
    }
    return NN_OK;
oom:
    snprintf(err, cap, "vit: out of memory");
    return NN_ERR_NOMEM;
}

// x (N, c, h, w) -> m->logits (N, classes)
static void vit_forward(nn_model *m, const float *x, size_t N, bool train) {
    (void)train; // no dropout, no batch statistics
    vit *p = m->impl;
    NN_ASSERT(x && N >= 1 && N <= p->maxN);
    const size_t P = p->P, NP = N * P, C = p->C;
    p->N = N;
    m->N = N;
    nn_patchembed_forward(&p->pe, x, p->res[0], N);           // (N, P, C)
    nn_posembed_forward(&p->pos, p->res[0], p->res[0], N, P); // += pos, in place
    for (size_t l = 0; l < p->depth; l++)
        nn_tblock_forward(&p->blk[l], p->res[l], p->res[l + 1], N, P);
    nn_layernorm_forward(&p->lnf, p->res[p->depth], p->lnfo, NP);
    nn_tokenpool_forward(p->lnfo, p->pooled, N, P, C); // (N, C)
    nn_linear_forward(&p->head, p->pooled, m->logits, N);
}

// dlogits (N, classes), borrowed until observe (it is the head's `g`)
static void vit_backward(nn_model *m, const float *dlogits) {
    vit *p = m->impl;
    const size_t N = p->N, P = p->P, NP = N * P, C = p->C;
    // (the _set variants write their gradients: nothing to clear)
    nn_linear_backward_set(&p->head, dlogits, p->dpooled);
    nn_tokenpool_backward_set(p->dpooled, p->dln, N, P, C);
    nn_layernorm_backward_set(&p->lnf, p->dln, p->dres[p->depth]);
    for (size_t l = p->depth; l-- > 0;) // res[l+1] = block(res[l])
        nn_tblock_backward(&p->blk[l], p->dres[l + 1], p->dres[l], p->dln, p->dgel, NP);
    nn_posembed_backward(&p->pos, p->dres[0], NULL); // res[0] = patches Wpᵀ + bp + pos
    nn_status s = nn_patchembed_backward(&p->pe, p->dres[0], NULL); // no image gradient
    NN_ASSERT(s == NN_OK); // only an input gradient can need memory
}

static ngd_status vit_attach(nn_model *m, ngd_optim *o) {
    vit *p = m->impl;
    nn_param ps[2];
    char name[48];
    ngd_status s = nn_attach_linear(o, &p->pe.proj, "patch", &p->pe_id);
    if (s == NGD_OK)
        s = nn_attach_params(o, m->param_override, ps, nn_posembed_params(&p->pos, ps), "pos");
    for (size_t l = 0; l < p->depth && s == NGD_OK; l++) {
        snprintf(name, sizeof name, "b%zu", l);
        s = nn_tblock_attach(&p->blk[l], o, m->param_override, name);
    }
    if (s == NGD_OK)
        s = nn_attach_params(o, m->param_override, ps, nn_layernorm_params(&p->lnf, ps), "lnf");
    if (s == NGD_OK) s = nn_attach_linear(o, &p->head, "head", &p->head_id);
    return s;
}

static ngd_status vit_observe(nn_model *m, ngd_optim *o) {
    vit *p = m->impl;
    const size_t N = p->N; // token Linears saw N·P rows: P weight-sharing positions per image
    ngd_status s = nn_observe_linear(o, &p->pe.proj, p->pe_id, N);
    for (size_t l = 0; l < p->depth && s == NGD_OK; l++)
        s = nn_tblock_observe(&p->blk[l], o, N);
    if (s == NGD_OK) s = nn_observe_linear(o, &p->head, p->head_id, N);
    return s;
}

const nn_model_ops nn_vit_ops = {
    .name = "vit",
    .help = "vision transformer: 4x4 patches, pre-norm blocks, mean pool; --widths "
            "C,DEPTH,HEADS[,PATCH] (64,2,4,4)",
    .create = vit_create,
    .forward = vit_forward,
    .backward = vit_backward,
    .attach = vit_attach,
    .observe = vit_observe,
    .destroy = vit_destroy,
};
