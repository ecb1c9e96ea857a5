/*
 * kfac.c — K-FAC (docs/algorithms.md#k-fac): the EVD track — the dense exponential average
 * of a factor decomposed in full every T_i steps (float32, float64 retry; a failure keeps the
 * last good decomposition) — and K-FAC's preconditioner on the two full eigendecompositions,
 * S = Q_G [(Q_Gᵀ J Q_A) ⊘ denominators] Q_Aᵀ with exact damping (λ_K = λ_rel·max γ·max α on
 * the Kronecker product) or factored π-damping. The family's shared machinery (statistics,
 * averages, the low-rank preconditioner of every other case) is kfac_family.c's; the EVD
 * track also serves any factor no wider than the rank under the other methods (kfac.h).
 */
#include <math.h>

#include "bf16.h"
#include "kfac.h"

size_t ngd_kf_refresh_evd_ws(size_t d) { return ngd_sym_eig_ws(d, NGD_EIG_F32_THEN_F64); }

ngd_status ngd_kf_refresh_evd(ngd_optim *o, ngd_entry *e, kf_factor *f) {
    const size_t d = f->d;
    const size_t bytes = ngd_kf_refresh_evd_ws(d);
    void *ws = ngd_kf_scratch(o, bytes);
    if (!ws)
        return ngd_optim_fail(o, NGD_ERR_INTERNAL,
                              "layer '%s': no planned workspace for a %zu x %zu "
                              "eigendecomposition",
                              e->name, d, d);
    ngd_lowrank L = kf_rep(f);
    ngd_eig_outcome out;
    // emulated bf16 arithmetic: no float64 retry (it would hide the failure); the f32
    // LAPACK call's outputs are rounded to bf16 (blas.c)
    const ngd_eig_mode mode =
        e->cfg.kfac.factor_arith == NGD_BF16 ? NGD_EIG_F32 : NGD_EIG_F32_THEN_F64;
    ngd_status st = ngd_sym_eig(ngd_cview_rm(f->ea, d, d, d), e->cfg.kfac.eig_zero_tol, mode, &L,
                                &out, ws, bytes);
    if (st) return ngd_optim_fail(o, st, "layer '%s': eigendecomposition: bad arguments", e->name);
    if (out == NGD_EIG_FAILED) { // keep the last good decomposition (#k-fac)
        e->h.decomp_failures++;
        ngd_optim_log(o,
                      "layer '%s': eigendecomposition of a %zu-wide factor failed; the "
                      "previous one is kept",
                      e->name, d);
        return NGD_OK;
    }
    if (out == NGD_EIG_RETRIED) e->h.decomp_retries++;
    f->cnt.rank = L.r;
    f->cnt.rep_k = f->cnt.ea_updates;
    return NGD_OK;
}

float ngd_kf_pi(double tr_A, size_t d_A, double tr_G, size_t d_G) {
    if (d_A == 0 || d_G == 0 || !(tr_A > 0) || !(tr_G > 0) || !isfinite(tr_A) || !isfinite(tr_G))
        return 1.0f;
    double pi = sqrt((tr_A / (double)d_A) / (tr_G / (double)d_G));
    return isfinite(pi) && pi > 0 ? (float)pi : 1.0f;
}

bool ngd_kf_eigenbasis_ok(const ngd_entry *e) {
    const kf_state *s = e->ms;
    return e->cfg.method == NGD_METHOD_KFAC && s->f[KF_A].cnt.rank == e->d_K &&
           s->f[KF_G].cnt.rank == e->d_out;
}

// ngd_kf_precond_eigenbasis under emulated bf16 arithmetic (kfac.factor_arith), once the shifted
// eigenvalues are rounded: λ_K = λ_rel·γ_max·α_max (two products), and for π-damping the
// traces' quotient, its square root and the scalings, each rounded to bf16 (the traces are
// reductions: accumulated wide, the result rounded). The kernels round the rest (lowrank.c).
static ngd_status precond_bf16(const ngd_kfac_options *k, const ngd_lowrank *LG,
                               const ngd_lowrank *LA, double trA, double trG, ngd_cview J,
                               ngd_view S, void *kws, size_t kbytes) {
    const float *DA = LA->D, *DG = LG->D;
    float lk = ngd_bf16_round1(ngd_bf16_round1(ngd_bf16_round1(k->damping_rel) * DA[0]) * DG[0]);
    if (!(lk > 0)) lk = 1e-30f;
    if (k->damping_kind == NGD_KFAC_DAMP_FACTORED_PI) {
        const float pi = ngd_bf16_round1(ngd_kf_pi((double)ngd_bf16_round1((float)trA), LA->d,
                                                   (double)ngd_bf16_round1((float)trG), LG->d));
        const float gp = ngd_bf16_round1(sqrtf(lk));
        return ngd_kfac_precond_factored(LG, LA, kf_lam_floor(ngd_bf16_round1(gp / pi)),
                                         kf_lam_floor(ngd_bf16_round1(pi * gp)), J, NULL, S, kws,
                                         kbytes);
    }
    return ngd_kfac_precond_exact(LG, LA, lk, J, NULL, S, kws, kbytes);
}

bool ngd_kf_inv_wanted(const ngd_entry *e) {
    const ngd_config *c = &e->cfg;
    if (c->method != NGD_METHOD_KFAC || c->kfac.damping_kind != NGD_KFAC_DAMP_FACTORED_PI ||
        c->kfac.factor_arith == NGD_BF16)
        return false;
    // each step saves one pair of products, d_G d_A (d_G + d_A) multiply-adds; forming the
    // operators costs d_G³ + d_A³ once per decomposition (every T_i steps)
    const double dG = (double)e->d_out, dA = (double)e->d_K;
    return (dG * dG * dG + dA * dA * dA) / (double)c->kfac.T_i < dG * dA * (dG + dA);
}

// Factored damping as S = G⁻¹ J A⁻¹ (ngd_kfac_precond_inv), the operators formed again when
// a refresh, a checkpoint's load (e->loads) or the damping changed them
static ngd_status precond_inv(const ngd_entry *e, kf_state *s, const ngd_lowrank *LG, float lg,
                              const ngd_lowrank *LA, float la, ngd_cview J,
                              const ngd_kfac_rows *rows, ngd_view S, void *kws, size_t kbytes) {
    const ngd_lowrank *L[2] = {LA, LG};
    const float lam[2] = {la, lg};
    if (!s->inv_ok || s->inv_loads != e->loads || s->inv_lam[KF_A] != la ||
        s->inv_lam[KF_G] != lg) {
        for (int i = 0; i < 2; i++) {
            const size_t d = L[i]->d;
            ngd_status st =
                ngd_kfac_inv(L[i], lam[i], ngd_view_rm(s->inv[i], d, d, d), kws, kbytes);
            if (st) {
                s->inv_ok = 0;
                return st;
            }
            s->inv_lam[i] = lam[i];
        }
        s->inv_ok = 1;
        s->inv_loads = e->loads;
    }
    const size_t dA = LA->d, dG = LG->d;
    return ngd_kfac_precond_inv(ngd_cview_rm(s->inv[KF_G], dG, dG, dG),
                                ngd_cview_rm(s->inv[KF_A], dA, dA, dA), J, rows, S, kws, kbytes);
}

ngd_status ngd_kf_precond_eigenbasis(ngd_entry *e, ngd_cview J, const ngd_kfac_rows *rows,
                                     ngd_view S, float *DA, float *DG, void *kws, size_t kbytes) {
    kf_state *s = e->ms;
    const ngd_kfac_options *k = &e->cfg.kfac;
    const size_t dA = e->d_K, dG = e->d_out;
    const kf_factor *fA = &s->f[KF_A], *fG = &s->f[KF_G];
    // eigenvalues shifted by the identity term
    const float sA = ngd_kf_id_shift(e, fA), sG = ngd_kf_id_shift(e, fG);
    double trA = 0, trG = 0;
    const bool em = k->factor_arith == NGD_BF16;
    if (em) { // emulated bf16: the shift and each sum rounded
        const float rA = ngd_bf16_round1(sA), rG = ngd_bf16_round1(sG);
        for (size_t i = 0; i < dA; i++)
            DA[i] = ngd_bf16_round1(fA->D[i] + rA), trA += (double)DA[i];
        for (size_t i = 0; i < dG; i++)
            DG[i] = ngd_bf16_round1(fG->D[i] + rG), trG += (double)DG[i];
    } else {
        for (size_t i = 0; i < dA; i++)
            DA[i] = fA->D[i] + sA, trA += (double)DA[i];
        for (size_t i = 0; i < dG; i++)
            DG[i] = fG->D[i] + sG, trG += (double)DG[i];
    }
    ngd_lowrank LA = {fA->U, DA, dA, dA, fA->cap}, LG = {fG->U, DG, dG, dG, fG->cap};
    if (em) // emulated bf16: each damping operation rounded
        return precond_bf16(k, &LG, &LA, trA, trG, J, S, kws, kbytes);
    const double lk = (double)k->damping_rel * (double)DA[0] * (double)DG[0];
    if (k->damping_kind == NGD_KFAC_DAMP_FACTORED_PI) {
        const double pi = (double)ngd_kf_pi(trA, dA, trG, dG);
        const double gp = sqrt(lk > 0 ? lk : 1e-30);
        const float lg = kf_lam_floor((float)(gp / pi)), la = kf_lam_floor((float)(pi * gp));
        if (s->inv[KF_A] && s->inv[KF_G])
            return precond_inv(e, s, &LG, lg, &LA, la, J, rows, S, kws, kbytes);
        return ngd_kfac_precond_factored(&LG, &LA, lg, la, J, rows, S, kws, kbytes);
    }
    return ngd_kfac_precond_exact(&LG, &LA, (float)(lk > 0 ? lk : 1e-30), J, rows, S, kws, kbytes);
}
