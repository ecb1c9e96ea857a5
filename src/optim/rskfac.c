/*
 * rskfac.c — RS-KFAC and SRE-KFAC (docs/algorithms.md#rs-kfac): the dense exponential averages
 * of kfac_family.c are refreshed every T_i steps into a rank-r eigen-representation by randomized
 * subspace iteration (RSVD, #rsvd, the basis Q·W of torch.svd_lowrank) or by the symmetric
 * randomized EVD (SREVD, #sre-kfac), and applied as a low-rank + scaled identity inverse
 * (#low-rank-inverse, kfac_family.c): the RSVD track of kfac.h. Factors no wider than the rank
 * take the exact eigendecomposition of the EVD track (#rs-kfac, kfac.c). The same refresh serves
 * the RSVD track of the B methods and B-R/BRC's periodic refresh of their Brand-track factors
 * (bkfac.c). Sketches come from the layer's own random stream (seeded by kfac.seed and the layer
 * id; saved in checkpoints), so runs are reproducible.
 */
#include "kfac.h"

size_t ngd_kf_randomized_ws(size_t d, size_t r, size_t p) {
    return NGD_MAX(ngd_rsvd_sym_ws(d, r, p), ngd_srevd_ws(d, r, p));
}

size_t ngd_kf_refresh_randomized_ws(const ngd_entry *e, const kf_factor *f, size_t r) {
    return r >= f->d ? ngd_kf_refresh_evd_ws(f->d)
                     : ngd_kf_randomized_ws(f->d, r, e->cfg.kfac.oversample);
}

ngd_status ngd_kf_refresh_randomized(ngd_optim *o, ngd_entry *e, kf_factor *f, size_t r, bool sre) {
    kf_state *s = e->ms;
    const ngd_kfac_options *k = &e->cfg.kfac;
    const size_t d = f->d;
    if (r >= d) return ngd_kf_refresh_evd(o, e, f);
    const size_t bytes = ngd_kf_randomized_ws(d, r, k->oversample);
    void *ws = ngd_kf_scratch(o, bytes);
    if (!ws)
        return ngd_optim_fail(o, NGD_ERR_INTERNAL,
                              "layer '%s': no planned workspace for a rank-%zu "
                              "sketch of a %zu-wide factor",
                              e->name, r, d);
    ngd_lowrank L = kf_rep(f);
    ngd_cview X = ngd_cview_rm(f->ea, d, d, d);
    ngd_status st = sre ? ngd_srevd(X, r, k->oversample, k->power_iters, k->eig_zero_tol, &s->rng,
                                    &L, ws, bytes)
                        : ngd_rsvd_sym(X, r, k->oversample, k->power_iters, k->eig_zero_tol,
                                       &s->rng, &L, ws, bytes);
    if (st == NGD_ERR_NUMERIC) { // keep the previous representation, count it
        e->h.decomp_failures++;
        ngd_optim_log(o,
                      "layer '%s': randomized eigendecomposition failed; the previous one is "
                      "kept",
                      e->name);
        return NGD_OK;
    }
    if (st)
        return ngd_optim_fail(o, st,
                              "layer '%s': randomized eigendecomposition: bad "
                              "arguments",
                              e->name);
    f->cnt.rank = L.r;
    f->cnt.rep_k = f->cnt.ea_updates;
    return NGD_OK;
}
