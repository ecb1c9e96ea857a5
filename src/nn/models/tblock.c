/*
 * tblock.c — the pre-norm transformer block of chargpt and vit (see tblock.h), forward and
 * backward side by side, llm.c style.
 */
#include "tblock.h"

#include <stdio.h>
#include <string.h>

static float *rows_of(size_t rows, size_t cols) {
    return nn_malloc(nn_mul(rows, cols), sizeof(float));
}

nn_status nn_tblock_init(nn_tblock *b, nn_model *m, size_t C, size_t nh, bool causal,
                         nn_gelu_kind gelu, size_t max_b, size_t T, nn_rng *rng) {
    const size_t R = nn_mul(max_b, T), C4 = nn_mul(4, C);
    memset(b, 0, sizeof *b);
    b->C = C;
    b->gelu.kind = gelu;
    if (nn_layernorm_init(&b->ln1, C, R) != NN_OK ||
        nn_attention_init(&b->attn, C, nh, causal, max_b, T, rng) != NN_OK ||
        nn_layernorm_init(&b->ln2, C, R) != NN_OK ||
        nn_linear_init(&b->fc, C, C4, true, rng) != NN_OK ||
        nn_linear_init(&b->proj, C4, C, true, rng) != NN_OK)
        return NN_ERR_NOMEM;
    nn_param ps[2];
    nn_model_add_params(m, ps, nn_layernorm_params(&b->ln1, ps));
    nn_model_add_params(m, ps, nn_linear_params(&b->attn.qkv, ps));
    nn_model_add_params(m, ps, nn_linear_params(&b->attn.proj, ps));
    nn_model_add_params(m, ps, nn_layernorm_params(&b->ln2, ps));
    nn_model_add_params(m, ps, nn_linear_params(&b->fc, ps));
    nn_model_add_params(m, ps, nn_linear_params(&b->proj, ps));
    b->ln1o = rows_of(R, C), b->atto = rows_of(R, C), b->mid = rows_of(R, C);
    b->ln2o = rows_of(R, C), b->fch = rows_of(R, C4), b->gel = rows_of(R, C4);
    b->mlpo = rows_of(R, C), b->dmid = rows_of(R, C), b->dfch = rows_of(R, C4);
    if (!b->ln1o || !b->atto || !b->mid || !b->ln2o || !b->fch || !b->gel || !b->mlpo || !b->dmid ||
        !b->dfch)
        return NN_ERR_NOMEM;
    return NN_OK;
}

void nn_tblock_free(nn_tblock *b) {
    nn_layernorm_free(&b->ln1);
    nn_layernorm_free(&b->ln2);
    nn_attention_free(&b->attn);
    nn_linear_free(&b->fc);
    nn_linear_free(&b->proj);
    free(b->ln1o), free(b->atto), free(b->mid), free(b->ln2o), free(b->fch), free(b->gel);
    free(b->mlpo), free(b->dmid), free(b->dfch);
    memset(b, 0, sizeof *b);
}

void nn_tblock_forward(nn_tblock *b, const float *x, float *y, size_t B, size_t T) {
    const size_t R = B * T, C = b->C;
    if (b->fc.max_rows16) { // bf16: LayerNorm and GELU write their Linears' inputs rounded
        nn_layernorm_forward16(&b->ln1, x, nn_linear_in16(&b->attn.qkv), R);
        nn_attention_forward_in16(&b->attn, b->atto, B, T);
        nn_residual_forward(x, b->atto, b->mid, R * C);
        nn_layernorm_forward16(&b->ln2, b->mid, nn_linear_in16(&b->fc), R);
        nn_linear_forward_in16(&b->fc, b->fch, R);
        nn_gelu_forward_grad(&b->gelu, b->fch, NULL, nn_linear_in16(&b->proj), R * 4 * C);
        nn_linear_forward_in16(&b->proj, b->mlpo, R);
    } else {
        nn_layernorm_forward(&b->ln1, x, b->ln1o, R);
        nn_attention_forward(&b->attn, b->ln1o, b->atto, B, T);
        nn_residual_forward(x, b->atto, b->mid, R * C);
        nn_layernorm_forward(&b->ln2, b->mid, b->ln2o, R);
        nn_linear_forward(&b->fc, b->ln2o, b->fch, R);
        nn_gelu_forward_grad(&b->gelu, b->fch, b->gel, NULL, R * 4 * C);
        nn_linear_forward(&b->proj, b->gel, b->mlpo, R);
    }
    nn_residual_forward(b->mid, b->mlpo, y, R * C);
}

void nn_tblock_backward(nn_tblock *b, const float *dy, float *dx, float *dln, float *dgel,
                        size_t rows) {
    NN_ASSERT(rows == b->ln2.rows && rows == b->ln1.rows); // (the forward's)
    nn_linear_backward_set(&b->proj, dy, dgel); // (the _set variants write: nothing to clear)
    uint16_t *d16 = nn_linear_dy16(&b->fc);     // (bf16: GELU's backward writes it rounded too)
    if (d16) {
        nn_gelu_backward_set16(&b->gelu, dgel, b->dfch, d16);
        nn_linear_backward_set_in16(&b->fc, b->dfch, dln);
    } else {
        nn_gelu_backward_set(&b->gelu, dgel, b->dfch);
        nn_linear_backward_set(&b->fc, b->dfch, dln);
    }
    nn_layernorm_backward_add(&b->ln2, dln, dy, b->dmid); // y = mid + mlpo: dy + LN2's
    nn_attention_backward_set(&b->attn, b->dmid, dln);
    nn_layernorm_backward_add(&b->ln1, dln, b->dmid, dx); // mid = x + atto: dmid + LN1's
}

ngd_status nn_tblock_attach(nn_tblock *b, ngd_optim *o, const ngd_config *param_override,
                            const char *prefix) {
    nn_param ps[2];
    char name[64];
    snprintf(name, sizeof name, "%s.ln1", prefix);
    ngd_status s = nn_attach_params(o, param_override, ps, nn_layernorm_params(&b->ln1, ps), name);
    snprintf(name, sizeof name, "%s.attn.qkv", prefix);
    if (s == NGD_OK) s = nn_attach_linear(o, &b->attn.qkv, name, &b->qkv_id);
    snprintf(name, sizeof name, "%s.attn.proj", prefix);
    if (s == NGD_OK) s = nn_attach_linear(o, &b->attn.proj, name, &b->aproj_id);
    snprintf(name, sizeof name, "%s.ln2", prefix);
    if (s == NGD_OK)
        s = nn_attach_params(o, param_override, ps, nn_layernorm_params(&b->ln2, ps), name);
    snprintf(name, sizeof name, "%s.mlp.fc", prefix);
    if (s == NGD_OK) s = nn_attach_linear(o, &b->fc, name, &b->fc_id);
    snprintf(name, sizeof name, "%s.mlp.proj", prefix);
    if (s == NGD_OK) s = nn_attach_linear(o, &b->proj, name, &b->proj_id);
    return s;
}

ngd_status nn_tblock_observe(const nn_tblock *b, ngd_optim *o, size_t batch) {
    ngd_status s = nn_observe_linear(o, &b->attn.qkv, b->qkv_id, batch);
    if (s == NGD_OK) s = nn_observe_linear(o, &b->attn.proj, b->aproj_id, batch);
    if (s == NGD_OK) s = nn_observe_linear(o, &b->fc, b->fc_id, batch);
    if (s == NGD_OK) s = nn_observe_linear(o, &b->proj, b->proj_id, batch);
    return s;
}

nn_status nn_tblock_use_bf16(nn_tblock *b, size_t rows) {
    nn_linear *ls[4] = {&b->attn.qkv, &b->attn.proj, &b->fc, &b->proj};
    for (int i = 0; i < 4; i++) {
        nn_status s = nn_linear_use_bf16(ls[i], rows);
        if (s != NN_OK) return s;
    }
    // the LayerNorms and GELU now write their Linears' bf16 inputs: no f32 outputs to keep
    free(b->ln1o), free(b->ln2o), free(b->gel);
    b->ln1o = b->ln2o = b->gel = NULL;
    return NN_OK;
}
