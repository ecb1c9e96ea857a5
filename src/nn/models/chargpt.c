/*
 * chargpt.c — a small causal character transformer (GPT-2 layout, llm.c style):
 *   x = wte[ids] + wpe[t]                                  (B, T, C)
 *   N pre-norm blocks:  x += attn(ln1(x))                  causal multi-head attention
 *                       x += proj(gelu_tanh(fc(ln2(x))))   C -> 4C -> C
 *   logits = head(lnf(x))                                  (B·T, V)
 * Sizes from cfg->widths: [0] = C (64), [1] = depth (2), [2] = heads (4); cfg->in_h is the
 * context length T, cfg->classes the vocabulary V. Every Linear (attention qkv and proj,
 * fc, proj, head) is a Kronecker-factored layer whose weights are shared over the T tokens:
 * observe hands libngd batch = B with B·T rows, and the loss is the mean over batch and
 * sequence (loss_average = NGD_LOSS_BATCH_SEQUENCE). Embeddings and LayerNorm scales and
 * shifts are plain parameters. Initialisation: PyTorch defaults for Linear, N(0, 0.02²) for
 * the embeddings (no weight tying, no dropout).
 *
 * Backward keeps every gradient that is some Linear's output gradient `g` (dres, dmid,
 * dfch per block) in its own buffer, because observe reads them after the whole backward.
 */
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "tblock.h"

#define GPT_MAX_DEPTH 16

typedef struct {
    size_t C, depth, nh, T, V, maxB;
    nn_embedding wte;
    nn_posembed wpe;
    nn_tblock blk[GPT_MAX_DEPTH];
    nn_layernorm lnf;
    nn_linear head;
    int head_id;
    float *res[GPT_MAX_DEPTH + 1];  // (BT, C) the residual stream entering block l (and after)
    float *dres[GPT_MAX_DEPTH + 1]; // (BT, C) its gradient (proj's output gradient `g`)
    float *lnfo;                    // (BT, C)
    float *dln, *dgel;              // (BT, C), (BT, 4C) scratch
    size_t B, t;                    // batch and length of the last forward
} chargpt;

static void gpt_destroy(nn_model *m) {
    chargpt *p = m->impl;
    nn_embedding_free(&p->wte);
    nn_posembed_free(&p->wpe);
    for (size_t l = 0; l < p->depth; l++)
        nn_tblock_free(&p->blk[l]);
    for (size_t l = 0; l <= p->depth; l++)
        free(p->res[l]), free(p->dres[l]);
    nn_layernorm_free(&p->lnf);
    nn_linear_free(&p->head);
    free(p->lnfo), free(p->dln), free(p->dgel);
    free(p);
    m->impl = NULL;
}

static nn_status gpt_create(nn_model *m, const nn_model_cfg *cfg, char *err, size_t cap) {
    const size_t C = cfg->nwidths > 0 ? cfg->widths[0] : 64;
    const size_t depth = cfg->nwidths > 1 ? cfg->widths[1] : 2;
    const size_t nh = cfg->nwidths > 2 ? cfg->widths[2] : 4;
    if (cfg->nwidths > 3) {
        snprintf(err, cap, "chargpt: --widths C,DEPTH,HEADS takes at most 3 values (got %zu)",
                 cfg->nwidths);
        return NN_ERR_ARG;
    }
    nn_model_set_widths(m, (const size_t[]){C, depth, nh}, 3);
    if (C == 0 || depth == 0 || depth > GPT_MAX_DEPTH || nh == 0 || C % nh) {
        snprintf(err, cap,
                 "chargpt: --widths C,DEPTH,HEADS needs C divisible by HEADS and "
                 "1 <= DEPTH <= %d (got %zu,%zu,%zu)",
                 GPT_MAX_DEPTH, C, depth, nh);
        return NN_ERR_ARG;
    }
    if (cfg->in_c != 1 || cfg->in_w != 1) {
        snprintf(err, cap, "chargpt: takes token ids (in_c = in_w = 1, in_h = context)");
        return NN_ERR_ARG;
    }
    chargpt *p = nn_calloc(1, sizeof *p);
    if (!p) goto oom;
    m->impl = p;
    p->C = C, p->depth = depth, p->nh = nh, p->T = cfg->in_h, p->V = cfg->classes;
    p->maxB = cfg->max_batch;
    const size_t BT = nn_mul(p->maxB, p->T), C4 = nn_mul(4, C);
    nn_rng rng;
    nn_rng_seed(&rng, cfg->seed);
    nn_param ps[2];
    if (nn_embedding_init(&p->wte, p->V, C, &rng) != NN_OK ||
        nn_posembed_init(&p->wpe, p->T, C, &rng) != NN_OK)
        goto oom;
    nn_model_add_params(m, ps, nn_embedding_params(&p->wte, ps));
    nn_model_add_params(m, ps, nn_posembed_params(&p->wpe, ps));
    for (size_t l = 0; l < depth; l++)
        if (nn_tblock_init(&p->blk[l], m, C, nh, true, NN_GELU_TANH, p->maxB, p->T, &rng) != NN_OK)
            goto oom;
    if (nn_layernorm_init(&p->lnf, C, BT) != NN_OK ||
        nn_linear_init(&p->head, C, p->V, true, &rng) != NN_OK)
        goto oom;
    nn_model_add_params(m, ps, nn_layernorm_params(&p->lnf, ps));
    nn_model_add_params(m, ps, nn_linear_params(&p->head, ps));
    for (size_t l = 0; l <= depth; l++) {
        p->res[l] = nn_malloc(nn_mul(BT, C), sizeof(float));
        p->dres[l] = nn_malloc(nn_mul(BT, C), sizeof(float));
        if (!p->res[l] || !p->dres[l]) goto oom;
    }
    p->lnfo = nn_malloc(nn_mul(BT, C), sizeof(float));
    p->dln = nn_malloc(nn_mul(BT, C), sizeof(float));
    p->dgel = nn_malloc(nn_mul(BT, C4), sizeof(float));
    if (!p->lnfo || !p->dln || !p->dgel) goto oom;
    if (cfg->bf16) {
        for (size_t l = 0; l < depth; l++)
            if (nn_tblock_use_bf16(&p->blk[l], BT) != NN_OK) goto oom;
        if (nn_linear_use_bf16(&p->head, BT) != NN_OK) goto oom;
        free(p->lnfo); // (the final LayerNorm writes the head's bf16 input)
        p->lnfo = NULL;
    }
    return NN_OK;
oom:
    snprintf(err, cap, "chargpt: out of memory");
    return NN_ERR_NOMEM;
}

static void gpt_forward_tokens(nn_model *m, const int32_t *ids, size_t B, size_t T, bool train) {
    (void)train; // no dropout, no batch statistics
    chargpt *p = m->impl;
    NN_ASSERT(ids && B >= 1 && B <= p->maxB && T >= 1 && T <= p->T);
    const size_t BT = B * T;
    p->B = B, p->t = T;
    m->N = BT;
    nn_embedding_forward(&p->wte, ids, p->res[0], BT);
    nn_posembed_forward(&p->wpe, p->res[0], p->res[0], B, T);
    for (size_t l = 0; l < p->depth; l++)
        nn_tblock_forward(&p->blk[l], p->res[l], p->res[l + 1], B, T);
    uint16_t *head16 = nn_linear_in16(&p->head); // (bf16: the final LayerNorm rounds its output)
    if (head16) {
        nn_layernorm_forward16(&p->lnf, p->res[p->depth], head16, BT);
        nn_linear_forward_in16(&p->head, m->logits, BT);
    } else {
        nn_layernorm_forward(&p->lnf, p->res[p->depth], p->lnfo, BT);
        nn_linear_forward(&p->head, p->lnfo, m->logits, BT);
    }
}

static void gpt_backward(nn_model *m, const float *dlogits) {
    chargpt *p = m->impl;
    const size_t BT = p->B * p->t;
    nn_linear_backward_set(&p->head, dlogits, p->dln);
    nn_layernorm_backward_set(&p->lnf, p->dln, p->dres[p->depth]);
    for (size_t l = p->depth; l-- > 0;) // res[l+1] = block(res[l])
        nn_tblock_backward(&p->blk[l], p->dres[l + 1], p->dres[l], p->dln, p->dgel, BT);
    nn_posembed_backward(&p->wpe, p->dres[0], NULL); // res[0] = wte[ids] + wpe
    nn_embedding_backward(&p->wte, p->dres[0]);
}

static ngd_status gpt_attach(nn_model *m, ngd_optim *o) {
    chargpt *p = m->impl;
    nn_param ps[2];
    char name[48];
    ngd_status s =
        nn_attach_params(o, m->param_override, ps, nn_embedding_params(&p->wte, ps), "wte");
    if (s == NGD_OK)
        s = nn_attach_params(o, m->param_override, ps, nn_posembed_params(&p->wpe, ps), "wpe");
    for (size_t l = 0; l < p->depth && s == NGD_OK; l++) {
        snprintf(name, sizeof name, "h%zu", l);
        s = nn_tblock_attach(&p->blk[l], o, m->param_override, name);
    }
    if (s == NGD_OK)
        s = nn_attach_params(o, m->param_override, ps, nn_layernorm_params(&p->lnf, ps), "lnf");
    if (s == NGD_OK) s = nn_attach_linear(o, &p->head, "head", &p->head_id);
    return s;
}

static ngd_status gpt_observe(nn_model *m, ngd_optim *o) {
    chargpt *p = m->impl;
    const size_t B = p->B; // each Linear saw B·T rows: T weight-sharing positions per sample
    ngd_status s = NGD_OK;
    for (size_t l = 0; l < p->depth && s == NGD_OK; l++)
        s = nn_tblock_observe(&p->blk[l], o, B);
    if (s == NGD_OK) s = nn_observe_linear(o, &p->head, p->head_id, B);
    return s;
}

const nn_model_ops nn_chargpt_ops = {
    .name = "chargpt",
    .help = "causal character transformer (text data); --widths C,DEPTH,HEADS (64,2,4), "
            "--context T",
    .create = gpt_create,
    .forward = NULL,
    .backward = gpt_backward,
    .attach = gpt_attach,
    .observe = gpt_observe,
    .destroy = gpt_destroy,
    .forward_tokens = gpt_forward_tokens,
};
