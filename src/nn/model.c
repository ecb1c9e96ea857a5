/*
 * model.c — the model table, creation/teardown, and the glue every model uses to register
 * its layers with libngd and hand over their statistics.
 */
#include "model.h"

#include <stdio.h>
#include <string.h>

extern const nn_model_ops nn_mlp_ops, nn_cnn_ops, nn_chargpt_ops, nn_vit_ops, nn_vgg16bn_ops;

static const nn_model_ops *const MODELS[] = {&nn_mlp_ops, &nn_cnn_ops, &nn_chargpt_ops, &nn_vit_ops,
                                             &nn_vgg16bn_ops};

const nn_model_ops *nn_model_list(size_t i) {
    return i < sizeof MODELS / sizeof MODELS[0] ? MODELS[i] : NULL;
}

const nn_model_ops *nn_model_find(const char *name) {
    for (size_t i = 0; nn_model_list(i); i++)
        if (!strcmp(nn_model_list(i)->name, name)) return nn_model_list(i);
    return NULL;
}

nn_status nn_model_create(nn_model *m, const nn_model_cfg *cfg, char *err, size_t cap) {
    memset(m, 0, sizeof *m);
    const nn_model_ops *ops = nn_model_find(cfg->name);
    if (!ops) {
        size_t n = (size_t)snprintf(err, cap, "unknown model '%s' (models:", cfg->name);
        for (size_t i = 0; nn_model_list(i) && n < cap; i++)
            n += (size_t)snprintf(err + n, cap - n, " %s", nn_model_list(i)->name);
        if (n < cap) snprintf(err + n, cap - n, ")");
        return NN_ERR_ARG;
    }
    m->ops = ops;
    m->cfg = *cfg;
    if (!cfg->classes || !cfg->max_batch || !cfg->in_c || !cfg->in_h || !cfg->in_w) {
        snprintf(err, cap, "model %s: input shape, classes and batch must be non-zero", cfg->name);
        return NN_ERR_ARG;
    }
    const size_t rows = nn_mul(cfg->max_batch, ops->forward_tokens ? cfg->in_h : 1);
    m->logits = nn_malloc(nn_mul(rows, cfg->classes), sizeof(float));
    if (!m->logits) {
        snprintf(err, cap, "model %s: out of memory", cfg->name);
        return NN_ERR_NOMEM;
    }
    nn_status s = ops->create(m, cfg, err, cap);
    if (s != NN_OK) nn_model_free(m);
    return s;
}

void nn_model_set_widths(nn_model *m, const size_t *w, size_t n) {
    m->nwidths = n < NN_MODEL_MAX_WIDTHS ? n : NN_MODEL_MAX_WIDTHS;
    memcpy(m->widths, w, m->nwidths * sizeof w[0]);
}

void nn_model_free(nn_model *m) {
    if (!m) return;
    if (m->ops && m->impl) m->ops->destroy(m);
    free(m->logits);
    free(m->stats_buf);
    memset(m, 0, sizeof *m);
}

void nn_model_zero_grad(nn_model *m) { nn_zero_grads(m->params, m->nparams); }

size_t nn_model_param_count(const nn_model *m) { return nn_param_count(m->params, m->nparams); }

void nn_model_add_params(nn_model *m, const nn_param *ps, size_t n) {
    for (size_t i = 0; i < n && m->nparams < NN_MODEL_MAX_PARAMS; i++)
        m->params[m->nparams++] = ps[i];
}

ngd_status nn_attach_linear(ngd_optim *o, const nn_linear *l, const char *name, int *id) {
    ngd_layer L = nn_linear_ngd_layer(l, name);
    return ngd_optim_add_layer(o, &L, id);
}

ngd_status nn_attach_conv2d(ngd_optim *o, const nn_conv2d *l, const char *name, int *id) {
    ngd_layer L = nn_conv2d_ngd_layer(l, name);
    return ngd_optim_add_layer(o, &L, id);
}

ngd_status nn_attach_params(ngd_optim *o, const ngd_config *ov, const nn_param *ps, size_t n,
                            const char *prefix) {
    for (size_t i = 0; i < n; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s.%s", prefix, ps[i].name);
        int id;
        ngd_status s = ngd_optim_add_param(o, name, ps[i].p, ps[i].g, ps[i].n, ov, &id);
        if (s != NGD_OK) return s;
    }
    return NGD_OK;
}

ngd_status nn_observe_linear(ngd_optim *o, const nn_linear *l, int id, size_t batch) {
    ngd_matrix a, g;
    nn_linear_stats(l, &a, &g);
    return ngd_optim_observe(o, id, batch, a, g);
}

// The conv of a conv-BN block from `in` into cz, or cz16 rounded (bf16 mode); in training
// also its planes' moments for the BN (returned; NULL otherwise), so that BN reads cz once,
// not three times
static const float *conv_for_bn(nn_conv2d *c, const nn_batchnorm *bn, nn_act in, float *cz,
                                uint16_t *cz16, size_t N, bool train) {
    c->moments_on = train && bn->hw == c->oh * c->ow && bn->c == c->c_out;
    NN_ASSERT(!cz16 || !train || c->moments_on); // (the BN of a bf16 x takes them)
    if (cz16)
        nn_conv2d_forward16(c, in.f, in.h, cz16, N);
    else if (in.h)
        nn_conv2d_forward_bf16(c, in.h, cz, N);
    else
        nn_conv2d_forward(c, in.f, cz, N);
    const bool mom = c->moments_on;
    c->moments_on = false;
    return mom ? c->moments : NULL;
}

nn_act nn_conv_bn_relu_forward(nn_conv2d *c, nn_batchnorm *bn, nn_act in, float *cz, uint16_t *cz16,
                               float *ra, uint16_t *ra16, size_t N, bool train) {
    const float *mom = conv_for_bn(c, bn, in, cz, cz16, N, train);
    if (cz16)
        nn_batchnorm_relu_forward16(bn, cz16, mom, ra, ra16, NULL, N, train);
    else if (mom)
        nn_batchnorm_relu_forward_moments(bn, cz, mom, ra, ra16, N);
    else if (ra16)
        nn_batchnorm_relu_forward_bf16(bn, cz, ra16, N, train);
    else
        nn_batchnorm_relu_forward(bn, cz, ra, N, train);
    return (nn_act){ra16 ? NULL : ra, ra16};
}

void nn_conv_bn_relu_backward(nn_conv2d *c, nn_batchnorm *bn, const float *dy, const uint16_t *dy16,
                              float *dcz, uint16_t *dcz16, float *dx, uint16_t *dx16) {
    NN_ASSERT(!dy != !dy16 && !(dx && dx16) && (dcz16 || (!dy16 && !dx16)));
    // the conv's bias gradient from BN's sums of the dcz it writes (no pass over dcz for it)
    bn->want_dxsum = c->db != NULL && bn->c == c->c_out && bn->hw == c->oh * c->ow;
    c->dbsum = bn->want_dxsum ? bn->dxsum : NULL;
    if (dcz16) {
        if (dy16)
            nn_batchnorm_relu_backward16(bn, dy16, dcz16);
        else
            nn_batchnorm_relu_backward_bf16(bn, dy, dcz16);
        if (dx16)
            nn_conv2d_backward16(c, dcz16, dx16);
        else
            nn_conv2d_backward_set_bf16(c, dcz16, dx);
    } else {
        nn_batchnorm_relu_backward(bn, dy, dcz);
        nn_conv2d_backward_set(c, dcz, dx);
    }
    bn->want_dxsum = false;
    c->dbsum = NULL;
}

nn_act nn_conv_bn_relu_pool_forward(nn_conv2d *c, nn_batchnorm *bn, nn_maxpool2d *pool, nn_act in,
                                    float *cz, uint16_t *cz16, float *po, uint16_t *po16, size_t N,
                                    bool train) {
    const float *mom = conv_for_bn(c, bn, in, cz, cz16, N, train);
    if (cz16)
        nn_batchnorm_relu_forward16(bn, cz16, mom, po, po16, pool, N, train);
    else
        nn_batchnorm_relu_maxpool_forward(bn, pool, cz, mom, po, po16, N, train);
    return (nn_act){po16 ? NULL : po, po16};
}

nn_act nn_maxpool2d_forward_act(nn_maxpool2d *l, const float *x, float *y, uint16_t *y16,
                                size_t N) {
    if (y16)
        nn_maxpool2d_forward_bf16(l, x, y16, N);
    else
        nn_maxpool2d_forward(l, x, y, N);
    return (nn_act){y16 ? NULL : y, y16};
}

// (A layer that wants no statistics this step is skipped before its rows are unfolded: the
// optimizer wants them every step from fully connected layers of the factored application,
// and the convolutions' unfold is most of an observe.)
ngd_status nn_observe_conv2d(ngd_optim *o, nn_model *m, const nn_conv2d *l, int id, size_t batch) {
    if (!ngd_optim_layer_wants_stats(o, id)) return NGD_OK;
    const size_t need = nn_conv2d_stats_g_size(l);
    if (need > m->stats_n) { // grown to the largest layer's, on the first statistics step
        float *p = nn_malloc(need, sizeof(float));
        if (!p) return NGD_ERR_NOMEM;
        free(m->stats_buf);
        m->stats_buf = p, m->stats_n = need;
    }
    // (the input's rows are unfolded by libngd as it reads them: the unfolded matrix, the
    //  largest buffer of a convolution's statistics, is never formed)
    ngd_matrix x, g;
    if (nn_conv2d_stats_xg(l, m->stats_buf, &x, &g) != NN_OK) return NGD_ERR_ARG;
    return ngd_optim_observe_conv(o, id, batch, &l->geom, x, g);
}

void nn_model_add_buffer(nn_model *m, const char *name, float *p, size_t n) {
    if (m->nbuffers < NN_MODEL_MAX_PARAMS)
        m->buffers[m->nbuffers++] = (nn_param){name, p, NULL, n, NULL};
}

size_t nn_model_buffers(const nn_model *m, nn_param *out) {
    memcpy(out, m->buffers, m->nbuffers * sizeof *out);
    return m->nbuffers;
}

void nn_model_add_rng(nn_model *m, nn_rng *r) {
    if (m->nrngs < NN_MODEL_MAX_PARAMS) m->rngs[m->nrngs++] = r;
}
