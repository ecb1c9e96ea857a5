/*
 * kfac_common.c — what the K-FAC family's tracks share (kfac.h): the layer state's
 * allocation, the optimizer's byte scratch, the row buffers, the identity shift of
 * #identity-init and the factor health readouts. Calls nothing of the tracks.
 */
#include <math.h>
#include <string.h>

#include "kfac.h"

bool ngd_kf_is_b_family(ngd_method m) {
    return m == NGD_METHOD_BKFAC || m == NGD_METHOD_BRKFAC || m == NGD_METHOD_BRCKFAC;
}

void *ngd_kf_scratch(ngd_optim *o, size_t bytes) {
    // this thread's slot inside the driver's side-by-side updates, 0 anywhere else (a client
    // calling from its own parallel region, each thread its own optimizer: its thread number
    // is not a slot of that optimizer's scratch)
    const size_t slot = ngd_update_slot;
    if (!bytes || bytes > o->scratch_n || slot >= o->scratch_slots) return NULL;
    return (char *)o->scratch + slot * o->scratch_n;
}

size_t ngd_kf_factored_ws(const ngd_entry *e, size_t m) {
    const kf_state *s = e->ms;
    if (!s->meta.factored || m == 0) return 0;
    const size_t rG = s->f[KF_G].cap, rA = s->f[KF_A].cap;
    return (e->d_out + e->d_K) * m * sizeof(float) +
           ngd_factored_precond_ws(NGD_MAX(rG, rA), NGD_MAX(rG, rA), m);
}

bool ngd_kf_factor_alloc(kf_factor *f, kf_track track, bool keep_ea, size_t cap, size_t rows_cap) {
    const size_t d = f->d;
    f->track = track;
    f->cap = cap;
    if (keep_ea) {
        f->ea = ngd_calloc(d * d, sizeof(float));
        f->pend = ngd_calloc(d * d, sizeof(float));
        if (!f->ea || !f->pend) return false;
    }
    f->U = ngd_calloc(d * cap, sizeof(float));
    f->D = ngd_calloc(cap, sizeof(float));
    if (!f->U || !f->D) return false;
    // Brand updates may start from zero with any orthonormal basis (#brand-update): I[:, :cap]
    for (size_t i = 0; i < NGD_MIN(d, cap); i++)
        f->U[i * cap + i] = 1.0f;
    if (rows_cap) { // Brand columns, or the factored application's rows (ngd_kf_apply_tracks)
        f->rows = ngd_calloc(rows_cap * d, sizeof(float));
        if (!f->rows) return false;
        f->rows_cap = rows_cap;
    }
    return true;
}

void ngd_kf_factor_free(kf_factor *f) {
    ngd_free(f->ea), ngd_free(f->pend), ngd_free(f->rows), ngd_free(f->U), ngd_free(f->D);
    memset(f, 0, sizeof *f);
}

void ngd_kf_factors_undecided(kf_state *s) {
    for (int j = 0; j < 2; j++) {
        const size_t d = s->f[j].d;
        ngd_kf_factor_free(&s->f[j]);
        s->f[j].d = d;
    }
}

ngd_status ngd_kf_grow_rows(ngd_optim *o, ngd_entry *e, size_t rows) {
    kf_state *s = e->ms;
    // both buffers and the scratch the factored application will need first, then commit
    float *p[2] = {NULL, NULL};
    bool ok = true;
    for (int k = 0; k < 2 && ok; k++) {
        kf_factor *f = &s->f[k];
        if ((f->track != KF_BRAND && !s->meta.factored) || rows <= f->rows_cap) continue;
        ok = (p[k] = ngd_calloc(rows * f->d, sizeof(float))) != NULL;
    }
    if (!ok || ngd_optim_reserve_scratch(o, ngd_kf_factored_ws(e, rows)) != NGD_OK) {
        ngd_free(p[0]), ngd_free(p[1]);
        return ngd_optim_fail(o, NGD_ERR_NOMEM,
                              "layer '%s': out of memory for %zu "
                              "statistics rows",
                              e->name, rows);
    }
    for (int k = 0; k < 2; k++) {
        kf_factor *f = &s->f[k];
        if (!p[k]) continue;
        if (f->rows) memcpy(p[k], f->rows, f->rows_cap * f->d * sizeof(float));
        ngd_free(f->rows);
        f->rows = p[k];
        f->rows_cap = rows;
    }
    if (rows > s->meta.rows_cap) s->meta.rows_cap = rows;
    return NGD_OK;
}

float ngd_kf_id_shift(const ngd_entry *e, const kf_factor *f) {
    if (e->cfg.kfac.identity_init != NGD_IDINIT_IN_DAMPING) return 0.0f;
    return (float)pow((double)e->cfg.kfac.rho, (double)f->cnt.rep_k);
}

// Mean eigenvalue (trace / d) and Frobenius norm of the dense EA, or of U D Uᵀ without one.
static void factor_health(const kf_factor *f, float *trace, float *norm) {
    double tr = 0, nn = 0;
    if (f->ea) {
        for (size_t i = 0; i < f->d; i++)
            tr += (double)f->ea[i * f->d + i];
        for (size_t i = 0; i < f->d * f->d; i++)
            nn += (double)f->ea[i] * (double)f->ea[i];
    } else {
        for (size_t i = 0; i < f->cnt.rank; i++) {
            tr += (double)f->D[i];
            nn += (double)f->D[i] * (double)f->D[i];
        }
    }
    *trace = (float)(tr / (double)f->d);
    *norm = (float)sqrt(nn);
}

void ngd_kf_health(ngd_entry *e) {
    const kf_state *s = e->ms;
    factor_health(&s->f[KF_A], &e->h.trace_K, &e->h.norm_K);
    factor_health(&s->f[KF_G], &e->h.trace_C, &e->h.norm_C);
    e->h.rank_A = (size_t)s->f[KF_A].cnt.rank;
    e->h.rank_G = (size_t)s->f[KF_G].cnt.rank;
}
