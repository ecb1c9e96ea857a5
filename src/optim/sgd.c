/*
 * sgd.c — SGD (torch.optim.SGD semantics: coupled weight decay, momentum with zero-start
 * buffer and no dampening, optional Nesterov). No preconditioner: P = Ĝ. Its rule,
 * ngd_rule_sgd, is also SINGD's (#singd-step) and that of every plain parameter not
 * configured for AdamW; the driver (optim.c) calls it row by row.
 */
#include "method.h"

// Nothing per entry: the learning rate is the driver's.
static void sgd_prepare(const ngd_entry *e, const float *P, size_t t, float nu_kl, ngd_rule_args *a,
                        double *pss) {
    NGD_UNUSED(e), NGD_UNUSED(P), NGD_UNUSED(t), NGD_UNUSED(nu_kl), NGD_UNUSED(a), NGD_UNUSED(pss);
}

// Coupled weight decay, (Nesterov) momentum, step: SGD and SINGD (#singd-step).
static void sgd_row(const ngd_entry *e, const ngd_rule_args *a, const float *p_row, float *w,
                    float *buf, float *buf2, size_t n) {
    NGD_UNUSED(buf2);
    const float lr = a->lr, wd = e->cfg.weight_decay, mom = e->cfg.momentum;
    const bool nest = e->cfg.nesterov;
    for (size_t j = 0; j < n; j++) {
        float u = p_row[j] + wd * w[j];
        if (mom != 0.0f) {
            buf[j] = mom * buf[j] + u;
            u = nest ? u + mom * buf[j] : buf[j];
        }
        w[j] -= lr * u;
    }
}

const ngd_rule ngd_rule_sgd = {.name = "sgd", .prepare = sgd_prepare, .row = sgd_row};

const ngd_method_ops ngd_sgd_ops = {
    .name = "sgd",
    .rule = &ngd_rule_sgd,
};
