/*
 * kfac_rule.c — the K-FAC family's first-order rule (docs/algorithms.md#k-fac-step-driver,
 * steps 4-5), shared by its six methods (kfac.c, rskfac.c, bkfac.c and kfac_family.c hold
 * their preconditioners): the step clip — per layer on the RMS of P (clip = rms), or global
 * on the KL estimate Σ lr²·|⟨P, Ĝ⟩| over every layer (clip = kl) — then decoupled weight
 * decay from step wd_start, momentum and the step. The driver (optim.c) calls it row by row;
 * for the global clip it preconditions every layer first and asks ngd_rule_kfac for ν.
 */
#include <math.h>

#include "method.h"

// ν of the clip, the decay switch; Σ P² when the RMS clip computed it (the health's norm).
static void kfac_prepare(const ngd_entry *e, const float *P, size_t t, float nu_kl,
                         ngd_rule_args *a, double *pss) {
    if (nu_kl >= 0.0f) {
        a->nu = nu_kl;
    } else if (e->cfg.kfac.clip == NGD_CLIP_RMS) {
        *pss = ngd_sumsq(P, e->n);
        double rms = sqrt(*pss / (double)e->n);
        if (rms > 0.0 && (double)e->cfg.kfac.clip_kappa < rms)
            a->nu = (float)((double)e->cfg.kfac.clip_kappa / rms);
    }
    a->decay = t >= e->cfg.kfac.wd_start;
}

// Clip factor ν, decoupled weight decay (from wd_start), (Nesterov) momentum, step. (Nesterov
// was accepted and ignored here: SGD's rule had it, this one did not.)
static void kfac_row(const ngd_entry *e, const ngd_rule_args *a, const float *p_row, float *w,
                     float *buf, float *buf2, size_t n) {
    NGD_UNUSED(buf2);
    const float lr = a->lr, nu = a->nu;
    const float wd = a->decay ? e->cfg.weight_decay : 0.0f, mom = e->cfg.momentum;
    const bool nest = e->cfg.nesterov;
    for (size_t j = 0; j < n; j++) {
        float u = nu * p_row[j] + wd * w[j];
        if (mom != 0.0f) {
            buf[j] = mom * buf[j] + u;
            u = nest ? u + mom * buf[j] : buf[j];
        }
        w[j] -= lr * u;
    }
}

static bool kfac_global(const ngd_config *c) { return c->kfac.clip == NGD_CLIP_KL; }

// One layer's term of the KL estimate: lr²·|⟨P, Ĝ⟩|, lr = the layer's effective rate.
static double kfac_global_term(const ngd_entry *e, float lr_scale, const float *P, const float *G) {
    double dot = 0.0;
    for (size_t j = 0; j < e->n; j++)
        dot += (double)P[j] * (double)G[j];
    const double lr = (double)e->cfg.lr * (double)lr_scale;
    return lr * lr * fabs(dot);
}

// ν = min(1, sqrt(κ / Σ)), 1 when the sum is 0.
static float kfac_global_scale(const ngd_config *c, double sum) {
    double nu = 1.0;
    if (sum > 0.0) nu = fmin(1.0, sqrt((double)c->kfac.clip_kappa / sum));
    return (float)nu;
}

const ngd_rule ngd_rule_kfac = {
    .name = "kfac",
    .prepare = kfac_prepare,
    .row = kfac_row,
    .global = kfac_global,
    .global_term = kfac_global_term,
    .global_scale = kfac_global_scale,
};
