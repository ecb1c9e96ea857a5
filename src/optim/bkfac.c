/*
 * bkfac.c — B-KFAC, B-R-KFAC and BRC-KFAC (docs/algorithms.md#b-kfac to #brc-kfac): the Brand
 * track and the track selection (kfac.h; called by kfac_family.c, calls rskfac.c's refresh).
 *
 * Track choice (#track-selection), per factor, at the layer's first statistics: Brand iff it is
 * fully connected (one statistics row per sample) and r_B + n < d, n = the rows of that
 * first step; every other factor takes the RSVD track of rskfac.c (or the exact EVD when
 * d <= rank). A Brand-track factor keeps (U, D) only (B-KFAC: no d x d array ever exists)
 * or also the dense EA (B-R / BRC, for their refresh and correction).
 *
 * One statistics step of a Brand-track factor (#b-kfac): if t is a Brand step (t mod m_B·T_u
 * = 0; other batches are skipped for this factor, #reading-choices) and not a B-R/BRC refresh step,
 *     (U, D) := BRAND_UPDATE(U, ρ·D, sqrt((1−ρ)/n)·𝒳ᵀ, r_B)        (core/lowrank.c)
 * in chunks of at most n columns (a step that brings more rows, e.g. several micro-batches,
 * is fed as consecutive updates, the later ones with d_scale = 1: the same sum). Then every
 * reorth_every updates the basis is re-orthonormalised (#brand-update), and BRC corrects a random
 * φ-fraction of the pairs by Rayleigh–Ritz against the CURRENT dense EA every m_C Brand
 * steps (#brc-kfac, without the research code's one-step lag). B-R / BRC replace (U, D) by an RSVD
 * of the dense EA at steps t mod m_BR·T_i = 0, t > T_i (#b-r-kfac).
 * Truncation after each update (default) or before the next (the last update's r_B + n
 * pairs are used until then; #brand-update).
 */
#include <math.h>
#include <string.h>

#include "bf16.h"
#include "kfac.h"

size_t ngd_kf_brand_rank(const ngd_config *c) {
    return c->kfac.brand_rank ? c->kfac.brand_rank : c->kfac.rank;
}

bool ngd_kf_brand_track_ok(bool fully_connected, size_t r_B, size_t n, size_t d) {
    // #track-selection: Brand-track ⇔ FC and r_B + n < d (written so that it cannot overflow)
    return fully_connected && n < d && r_B < d - n;
}

ngd_status ngd_kf_apply_tracks(ngd_optim *o, ngd_entry *e) {
    kf_state *s = e->ms;
    const ngd_config *c = &e->cfg;
    const size_t rB = ngd_kf_brand_rank(c), n = (size_t)s->meta.cols;
    for (int k = 0; k < 2; k++) {
        kf_factor *f = &s->f[k];
        const kf_track tr = (kf_track)s->meta.track[k];
        size_t cap = tr == KF_EVD ? f->d : NGD_MIN(c->kfac.rank, f->d);
        if (tr == KF_BRAND)
            cap =
                NGD_MIN(f->d, c->kfac.brand_truncate == NGD_BRAND_TRUNC_BEFORE_NEXT ? rB + n : rB);
        const bool keep_ea = tr != KF_BRAND || c->method != NGD_METHOD_BKFAC;
        const bool rows = tr == KF_BRAND || s->meta.factored;
        if (!ngd_kf_factor_alloc(f, tr, keep_ea, cap, rows ? (size_t)s->meta.rows_cap : 0)) {
            ngd_kf_factors_undecided(s); // all or nothing: the layer stays undecided
            return ngd_optim_fail(o, NGD_ERR_NOMEM, "layer '%s': out of memory for the factors",
                                  e->name);
        }
    }
    s->meta.decided = 1;
    o->planned = false; // the preconditioner's workspace depends on the ranks
    return NGD_OK;
}

ngd_status ngd_kf_decide(ngd_optim *o, ngd_entry *e, bool fully_connected, size_t rows) {
    kf_state *s = e->ms;
    const ngd_config *c = &e->cfg;
    const size_t rB = ngd_kf_brand_rank(c);
    bool any = false;
    for (int k = 0; k < 2; k++) {
        const size_t d = s->f[k].d;
        kf_track tr = c->kfac.rank >= d ? KF_EVD : KF_RSVD;
        if (ngd_kf_brand_track_ok(fully_connected, rB, rows, d)) tr = KF_BRAND, any = true;
        s->meta.track[k] = tr;
    }
    s->meta.cols = rows;
    s->meta.rows_cap = any || s->meta.factored ? rows : 0;
    ngd_optim_log(o, "layer '%s': factor A (%zu) on the %s track, G (%zu) on the %s track", e->name,
                  s->f[KF_A].d,
                  s->meta.track[0] == KF_BRAND ? "Brand"
                  : s->meta.track[0] == KF_EVD ? "EVD"
                                               : "RSVD",
                  s->f[KF_G].d,
                  s->meta.track[1] == KF_BRAND ? "Brand"
                  : s->meta.track[1] == KF_EVD ? "EVD"
                                               : "RSVD");
    return ngd_kf_apply_tracks(o, e);
}

static bool refresh_step(const ngd_config *c, size_t t) {
    if (c->method != NGD_METHOD_BRKFAC && c->method != NGD_METHOD_BRCKFAC) return false;
    return t % (c->kfac.refresh_mult * c->kfac.T_i) == 0 && t > c->kfac.T_i;
}

bool ngd_kf_refresh_due(const ngd_config *c, size_t t) { return refresh_step(c, t); }

bool ngd_kf_brand_due(const ngd_config *c, size_t t) {
    return t % (c->kfac.brand_mult * c->kfac.T_u) == 0 && !refresh_step(c, t);
}

size_t ngd_kf_brand_ws(const ngd_entry *e, const kf_factor *f) {
    const ngd_config *c = &e->cfg;
    const kf_state *s = e->ms;
    const size_t d = f->d, rB = ngd_kf_brand_rank(c), n = (size_t)s->meta.cols;
    size_t bytes = NGD_MAX(ngd_brand_update_ws(d, rB, n), ngd_brand_reorth_ws(d, f->cap));
    if (c->method == NGD_METHOD_BRCKFAC) {
        const size_t sub = ngd_rr_subset_size(f->cap, c->kfac.corr_frac);
        bytes = NGD_MAX(bytes, ngd_rr_correct_ws(d, f->cap, sub));
    }
    if (c->method == NGD_METHOD_BRKFAC || c->method == NGD_METHOD_BRCKFAC) // their refresh
        bytes = NGD_MAX(bytes, ngd_kf_refresh_randomized_ws(e, f, rB));
    return bytes;
}

ngd_status ngd_kf_brand_step(ngd_optim *o, ngd_entry *e, kf_factor *f, size_t t) {
    kf_state *s = e->ms;
    const ngd_config *c = &e->cfg;
    const ngd_kfac_options *k = &c->kfac;
    const size_t T_B = k->brand_mult * k->T_u;
    if (t % T_B != 0 || refresh_step(c, t)) return NGD_OK;
    const size_t d = f->d, rB = ngd_kf_brand_rank(c), n = (size_t)s->meta.cols;
    const size_t rows = (size_t)s->pend.rows;
    const size_t sub = ngd_rr_subset_size(f->cap, k->corr_frac);
    size_t bytes = NGD_MAX(ngd_brand_update_ws(d, rB, n), ngd_brand_reorth_ws(d, f->cap));
    if (c->method == NGD_METHOD_BRCKFAC) bytes = NGD_MAX(bytes, ngd_rr_correct_ws(d, f->cap, sub));
    void *ws = ngd_kf_scratch(o, bytes);
    if (!ws)
        return ngd_optim_fail(o, NGD_ERR_INTERNAL,
                              "layer '%s': no planned workspace for a Brand "
                              "update",
                              e->name);
    // non-finite statistics (the gradients were finite): this batch is lost for the factor,
    // as when the update fails numerically, instead of an error after other layers changed
    if (!ngd_all_finite(f->rows, rows * d)) {
        e->h.decomp_failures++;
        ngd_optim_log(o, "layer '%s': non-finite statistics at step %zu; Brand update skipped",
                      e->name, t);
        return NGD_OK;
    }
    ngd_lowrank L = kf_rep(f);
    float cs = sqrtf((1.0f - k->rho) / (float)s->pend.samples);
    if (k->factor_arith == NGD_BF16) cs = ngd_bf16_round1(cs); // (a bf16 operand)
    ngd_status st = NGD_OK;
    for (size_t j0 = 0; j0 < rows && st == NGD_OK; j0 += n) {
        const size_t nc = NGD_MIN(n, rows - j0);
        size_t keep = rB;
        if (k->brand_truncate == NGD_BRAND_TRUNC_BEFORE_NEXT) {
            L.r = NGD_MIN(L.r, rB);
            keep = rB + nc;
        }
        ngd_cview C = {f->rows + j0 * d, d, nc, 1, (ptrdiff_t)d}; // column j = row j0 + j
        st = ngd_brand_update(&L, j0 == 0 ? k->rho : 1.0f, C, cs, keep, NULL, NULL, ws, bytes);
    }
    if (st == NGD_ERR_NUMERIC) { // this batch is lost for the factor; the basis is intact
        e->h.decomp_failures++;
        ngd_optim_log(o, "layer '%s': Brand update failed at step %zu", e->name, t);
        f->cnt.rank = L.r;
        return NGD_OK;
    }
    if (st) return ngd_optim_fail(o, st, "layer '%s': Brand update: bad arguments", e->name);
    if (!f->ea) f->cnt.ea_updates++; // B-KFAC: the Brand representation is the EA (k of ρ^k)
    f->cnt.rep_k = f->cnt.ea_updates;
    if (k->reorth_every && ++f->cnt.since_reorth >= k->reorth_every) {
        if ((st = ngd_brand_reorth(&L, ws, bytes)) == NGD_ERR_NUMERIC) e->h.decomp_failures++;
        f->cnt.since_reorth = 0;
    }
    if (c->method == NGD_METHOD_BRCKFAC && (t / T_B) % k->corr_mult == 0 && L.r > 0) {
        st = ngd_rr_correct(&L, ngd_cview_rm(f->ea, d, d, d), k->corr_frac, &s->rng, ws, bytes);
        if (st == NGD_ERR_NUMERIC) e->h.decomp_failures++;
    }
    f->cnt.rank = L.r;
    return NGD_OK;
}

ngd_status ngd_kf_brand_maintain(ngd_optim *o, ngd_entry *e, kf_factor *f, size_t t) {
    if (!refresh_step(&e->cfg, t)) return NGD_OK;
    return ngd_kf_refresh_randomized(o, e, f, ngd_kf_brand_rank(&e->cfg), false);
}
