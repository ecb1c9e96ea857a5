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

#define GPT_MAX_DEPTH 16

typedef struct {
    nn_layernorm ln1, ln2;
    nn_attention attn;
    nn_linear fc, proj;
    nn_gelu gelu;
    int qkv_id, aproj_id, fc_id, proj_id;
    // activations (B·T rows)
    float *ln1o, *mid, *ln2o, *fch, *gel; // (BT, C), (BT, C), (BT, C), (BT, 4C), (BT, 4C)
    float *atto, *mlpo;                   // (BT, C) attention and MLP branch outputs
    float *dmid, *dfch;                   // (BT, C), (BT, 4C): output gradients kept for observe
} gpt_block;

typedef struct {
    size_t C, depth, nh, T, V, maxB;
    nn_embedding wte;
    nn_posembed wpe;
    gpt_block blk[GPT_MAX_DEPTH];
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
    for (size_t l = 0; l < p->depth; l++) {
        gpt_block *b = &p->blk[l];
        nn_layernorm_free(&b->ln1);
        nn_layernorm_free(&b->ln2);
        nn_attention_free(&b->attn);
        nn_linear_free(&b->fc);
        nn_linear_free(&b->proj);
        free(b->ln1o), free(b->mid), free(b->ln2o), free(b->fch), free(b->gel);
        free(b->atto), free(b->mlpo), free(b->dmid), free(b->dfch);
    }
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
    if (cfg->nwidths > 3 || C == 0 || depth == 0 || depth > GPT_MAX_DEPTH || nh == 0 || C % nh) {
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
    for (size_t l = 0; l < depth; l++) {
        gpt_block *b = &p->blk[l];
        b->gelu.kind = NN_GELU_TANH;
        if (nn_layernorm_init(&b->ln1, C, BT) != NN_OK ||
            nn_attention_init(&b->attn, C, nh, true, p->maxB, p->T, &rng) != NN_OK ||
            nn_layernorm_init(&b->ln2, C, BT) != NN_OK ||
            nn_linear_init(&b->fc, C, C4, true, &rng) != NN_OK ||
            nn_linear_init(&b->proj, C4, C, true, &rng) != NN_OK)
            goto oom;
        nn_model_add_params(m, ps, nn_layernorm_params(&b->ln1, ps));
        nn_model_add_params(m, ps, nn_linear_params(&b->attn.qkv, ps));
        nn_model_add_params(m, ps, nn_linear_params(&b->attn.proj, ps));
        nn_model_add_params(m, ps, nn_layernorm_params(&b->ln2, ps));
        nn_model_add_params(m, ps, nn_linear_params(&b->fc, ps));
        nn_model_add_params(m, ps, nn_linear_params(&b->proj, ps));
        b->ln1o = nn_malloc(nn_mul(BT, C), sizeof(float));
        b->mid = nn_malloc(nn_mul(BT, C), sizeof(float));
        b->ln2o = nn_malloc(nn_mul(BT, C), sizeof(float));
        b->fch = nn_malloc(nn_mul(BT, C4), sizeof(float));
        b->gel = nn_malloc(nn_mul(BT, C4), sizeof(float));
        b->atto = nn_malloc(nn_mul(BT, C), sizeof(float));
        b->mlpo = nn_malloc(nn_mul(BT, C), sizeof(float));
        b->dmid = nn_malloc(nn_mul(BT, C), sizeof(float));
        b->dfch = nn_malloc(nn_mul(BT, C4), sizeof(float));
        if (!b->ln1o || !b->mid || !b->ln2o || !b->fch || !b->gel || !b->atto || !b->mlpo ||
            !b->dmid || !b->dfch)
            goto oom;
    }
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
    return NN_OK;
oom:
    snprintf(err, cap, "chargpt: out of memory");
    return NN_ERR_NOMEM;
}

static void gpt_forward_tokens(nn_model *m, const int32_t *ids, size_t B, size_t T, bool train) {
    (void)train; // no dropout, no batch statistics
    chargpt *p = m->impl;
    NN_ASSERT(ids && B >= 1 && B <= p->maxB && T >= 1 && T <= p->T);
    const size_t BT = B * T, C = p->C;
    p->B = B, p->t = T;
    m->N = BT;
    nn_embedding_forward(&p->wte, ids, p->res[0], BT);
    nn_posembed_forward(&p->wpe, p->res[0], p->res[0], B, T);
    for (size_t l = 0; l < p->depth; l++) {
        gpt_block *b = &p->blk[l];
        nn_layernorm_forward(&b->ln1, p->res[l], b->ln1o, BT);
        nn_attention_forward(&b->attn, b->ln1o, b->atto, B, T);
        nn_residual_forward(p->res[l], b->atto, b->mid, BT * C);
        nn_layernorm_forward(&b->ln2, b->mid, b->ln2o, BT);
        nn_linear_forward(&b->fc, b->ln2o, b->fch, BT);
        nn_gelu_forward(&b->gelu, b->fch, b->gel, BT * 4 * C);
        nn_linear_forward(&b->proj, b->gel, b->mlpo, BT);
        nn_residual_forward(b->mid, b->mlpo, p->res[l + 1], BT * C);
    }
    nn_layernorm_forward(&p->lnf, p->res[p->depth], p->lnfo, BT);
    nn_linear_forward(&p->head, p->lnfo, m->logits, BT);
}

static void gpt_backward(nn_model *m, const float *dlogits) {
    chargpt *p = m->impl;
    const size_t BT = p->B * p->t, C = p->C;
    const size_t nC = BT * C * sizeof(float), n4C = BT * 4 * C * sizeof(float);
    memset(p->dln, 0, nC);
    nn_linear_backward(&p->head, dlogits, p->dln);
    memset(p->dres[p->depth], 0, nC);
    nn_layernorm_backward(&p->lnf, p->dln, p->dres[p->depth]);
    for (size_t l = p->depth; l-- > 0;) {
        gpt_block *b = &p->blk[l];
        const float *dout = p->dres[l + 1]; // res[l+1] = mid + mlpo
        memcpy(b->dmid, dout, nC);          // the residual path
        memset(p->dgel, 0, n4C);
        nn_linear_backward(&b->proj, dout, p->dgel);
        memset(b->dfch, 0, n4C);
        nn_gelu_backward(&b->gelu, p->dgel, b->dfch);
        memset(p->dln, 0, nC);
        nn_linear_backward(&b->fc, b->dfch, p->dln);
        nn_layernorm_backward(&b->ln2, p->dln, b->dmid);
        memcpy(p->dres[l], b->dmid, nC); // mid = res[l] + atto
        memset(p->dln, 0, nC);
        nn_attention_backward(&b->attn, b->dmid, p->dln);
        nn_layernorm_backward(&b->ln1, p->dln, p->dres[l]);
    }
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
        gpt_block *b = &p->blk[l];
        snprintf(name, sizeof name, "h%zu.ln1", l);
        s = nn_attach_params(o, m->param_override, ps, nn_layernorm_params(&b->ln1, ps), name);
        snprintf(name, sizeof name, "h%zu.attn.qkv", l);
        if (s == NGD_OK) s = nn_attach_linear(o, &b->attn.qkv, name, &b->qkv_id);
        snprintf(name, sizeof name, "h%zu.attn.proj", l);
        if (s == NGD_OK) s = nn_attach_linear(o, &b->attn.proj, name, &b->aproj_id);
        snprintf(name, sizeof name, "h%zu.ln2", l);
        if (s == NGD_OK)
            s = nn_attach_params(o, m->param_override, ps, nn_layernorm_params(&b->ln2, ps), name);
        snprintf(name, sizeof name, "h%zu.mlp.fc", l);
        if (s == NGD_OK) s = nn_attach_linear(o, &b->fc, name, &b->fc_id);
        snprintf(name, sizeof name, "h%zu.mlp.proj", l);
        if (s == NGD_OK) s = nn_attach_linear(o, &b->proj, name, &b->proj_id);
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
    for (size_t l = 0; l < p->depth && s == NGD_OK; l++) {
        gpt_block *b = &p->blk[l];
        s = nn_observe_linear(o, &b->attn.qkv, b->qkv_id, B);
        if (s == NGD_OK) s = nn_observe_linear(o, &b->attn.proj, b->aproj_id, B);
        if (s == NGD_OK) s = nn_observe_linear(o, &b->fc, b->fc_id, B);
        if (s == NGD_OK) s = nn_observe_linear(o, &b->proj, b->proj_id, B);
    }
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
