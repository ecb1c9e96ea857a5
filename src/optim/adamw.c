/*
 * adamw.c — AdamW (torch.optim.AdamW semantics: decoupled weight decay p *= 1 - lr·wd,
 * bias-corrected first and second moments, eps outside the square root). No
 * preconditioner: P = Ĝ. Its rule, ngd_rule_adamw, also serves plain parameters configured
 * for AdamW under any method; the driver (optim.c) calls it row by row.
 */
#include <math.h>

#include "method.h"

// Bias corrections 1 − β1^t and sqrt(1 − β2^t), t = the entry's applied updates.
static void adamw_prepare(const ngd_entry *e, const float *P, size_t t, float nu_kl,
                          ngd_rule_args *a, double *pss) {
    NGD_UNUSED(P), NGD_UNUSED(t), NGD_UNUSED(nu_kl), NGD_UNUSED(pss);
    a->bc1 = 1.0f - powf(e->cfg.beta1, (float)e->n_updates);
    a->bc2s = sqrtf(1.0f - powf(e->cfg.beta2, (float)e->n_updates));
}

static void adamw_row(const ngd_entry *e, const ngd_rule_args *a, const float *g, float *w,
                      float *m, float *v, size_t n) {
    const float lr = a->lr, bc1 = a->bc1, bc2s = a->bc2s;
    const float b1 = e->cfg.beta1, b2 = e->cfg.beta2, eps = e->cfg.eps;
    const float decay = 1.0f - lr * e->cfg.weight_decay, step = lr / bc1;
    for (size_t j = 0; j < n; j++) {
        w[j] *= decay;
        m[j] = b1 * m[j] + (1.0f - b1) * g[j];
        v[j] = b2 * v[j] + (1.0f - b2) * g[j] * g[j];
        w[j] -= step * m[j] / (sqrtf(v[j]) / bc2s + eps);
    }
}

const ngd_rule ngd_rule_adamw = {
    .name = "adamw", .prepare = adamw_prepare, .row = adamw_row, .moments = 2};

const ngd_method_ops ngd_adamw_ops = {
    .name = "adamw",
    .rule = &ngd_rule_adamw,
};
