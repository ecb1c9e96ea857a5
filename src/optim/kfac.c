/*
 * kfac.c — the K-FAC family's common layer machinery and K-FAC itself
 * (docs/algorithms.md#k-fac-family); the layer state and the tracks are described in kfac.h.
 *
 * Statistics (#k-fac-statistics, the author's scaling): for a step with n samples and R rows per
 * sample (R = 1 for fully connected layers and for kfac_approx = reduce),
 *     A_b = 1/(n R²) Σ_rows ā āᵀ        Γ_b = R/n Σ_rows g̃ g̃ᵀ,   g̃ = c·g / s
 * where c converts the caller's batch-averaged gradient into per-sample gradients (c = n
 * for loss_average BATCH and BATCH_SEQUENCE, 1 for SUM) and s is the loss scale. Each row
 * is scaled once (a by 1/R, g by c·sqrt(R)/s) and then either folded into a dense pending
 * sum (EA tracks) or kept as a column of the Brand update's C (Brand track).
 * EA (#exponential-average, zero start; #identity-init): F̄ := ρ F̄ + (1−ρ) F_b; the identity
 * start is the ρ^k term added to the damping (identity_init = in_damping, the default), or the
 * factor starts at I (in_factor; K-FAC, RS-KFAC and SRE-KFAC only).
 * Preconditioning (#preconditioned-step): S = (Γ̄ + λ_G)^{-1} J (Ā + λ_A)^{-1}; K-FAC with full
 * eigendecompositions uses #k-fac (exact damping λ_K = λ_rel·max γ·max α, or factored
 * π-damping); every other combination the low-rank + scaled identity inverse (#low-rank-inverse)
 * with λ_F = λ_rel·max D_F (+ ρ^k) and the tail model μ; with kfac.factored_apply, fully
 * connected layers apply it to 𝒜ᵀ and 𝒢ᵀ instead of J (#factored-application, `factored` below).
 * Clipping, decoupled weight decay from wd_start, momentum and the step are the driver's
 * (optim.c, NGD_RULE_KFAC).
 */
#include <math.h>
#include <string.h>

#include "bf16.h"
#include "kfac.h"

bool kf_is_b_family(ngd_method m) {
    return m == NGD_METHOD_BKFAC || m == NGD_METHOD_BRKFAC || m == NGD_METHOD_BRCKFAC;
}

void *kf_scratch(ngd_optim *o, size_t bytes) {
    if (bytes > o->scratch_n) {
        void *p = ngd_malloc(bytes, 1);
        if (!p) return NULL;
        ngd_free(o->scratch);
        o->scratch = p;
        o->scratch_n = bytes;
    }
    return o->scratch;
}

bool kf_factor_alloc(kf_factor *f, kf_track track, bool keep_ea, size_t cap, size_t rows_cap) {
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
    if (rows_cap) { // Brand columns, or the factored application's rows (kf_apply_tracks)
        f->rows = ngd_calloc(rows_cap * d, sizeof(float));
        if (!f->rows) return false;
        f->rows_cap = rows_cap;
    }
    return true;
}

static void factor_free(kf_factor *f) {
    ngd_free(f->ea), ngd_free(f->pend), ngd_free(f->rows), ngd_free(f->U), ngd_free(f->D);
    memset(f, 0, sizeof *f);
}

static void kfac_free(ngd_entry *e) {
    kf_state *s = e->ms;
    if (!s) return;
    factor_free(&s->f[KF_A]);
    factor_free(&s->f[KF_G]);
    ngd_free(s);
    e->ms = NULL;
}

// Sets the EA to I for identity_init = in_factor (#identity-init, the [C-RS] start).
static void ea_identity(kf_factor *f) {
    if (!f->ea) return;
    for (size_t i = 0; i < f->d; i++)
        f->ea[i * f->d + i] = 1.0f;
}

static ngd_status kfac_init(ngd_optim *o, ngd_entry *e) {
    const ngd_config *c = &e->cfg;
    const bool bfam = kf_is_b_family(c->method); // (ngd_config_validate checked the rest)
    kf_state *s = ngd_calloc(1, sizeof *s);
    if (!s) return ngd_optim_fail(o, NGD_ERR_NOMEM, "layer '%s': out of memory", e->name);
    e->ms = s;
    s->id = o->n;
    ngd_rng_seed(&s->rng, c->kfac.seed, (uint64_t)s->id);
    s->f[KF_A].d = e->d_K;
    s->f[KF_G].d = e->d_out;
    if (bfam) return NGD_OK; // tracks decided at the first observe (kf_decide)
    s->meta[0] = 1;
    for (int k = 0; k < 2; k++) {
        kf_factor *f = &s->f[k];
        const bool evd = c->method == NGD_METHOD_KFAC || c->kfac.rank >= f->d;
        const size_t cap = evd ? f->d : c->kfac.rank;
        s->meta[3 + k] = evd ? KF_EVD : KF_RSVD;
        if (!kf_factor_alloc(f, evd ? KF_EVD : KF_RSVD, true, cap, 0)) {
            kfac_free(e);
            return ngd_optim_fail(o, NGD_ERR_NOMEM,
                                  "layer '%s': out of memory for the "
                                  "factors (%zu and %zu wide)",
                                  e->name, e->d_K, e->d_out);
        }
        if (c->kfac.identity_init == NGD_IDINIT_IN_FACTOR) ea_identity(f);
    }
    return NGD_OK;
}

// Statistics steps; every step for the factored application (it needs this step's 𝒜, 𝒢).
static bool kfac_wants(const ngd_entry *e, size_t t) {
    return t % e->cfg.kfac.T_u == 0 || e->cfg.kfac.factored_apply;
}

// Bytes of scratch needed by observe: one chunk of processed rows.
static size_t observe_ws(const ngd_entry *e) {
    return (size_t)NGD_STATS_CHUNK * NGD_MAX(e->d_K, e->d_out) * sizeof(float);
}

static ngd_status kfac_observe(ngd_optim *o, ngd_entry *e, size_t batch, const ngd_matrix *a,
                               const ngd_matrix *g) {
    kf_state *s = e->ms;
    const size_t rows = ngd_stats_rows(e, batch, g);
    const size_t R = rows / batch; // 1 for fully connected layers and for reduce
    const bool stats = o->steps % e->cfg.kfac.T_u == 0;
    ngd_status st;
    if (s->meta[1] == 0) { // the layer's first statistics
        // #factored-application: fully connected layers keep both factors' rows
        if (e->cfg.kfac.factored_apply && R == 1) s->meta[5] = 1;
        // a data-parallel run decides for the global batch (equal shards; combine gathers
        // every rank's rows into the buffers)
        const size_t grows = rows * ngd_optim_world(o);
        if (!s->meta[0]) {
            if ((st = kf_decide(o, e, R == 1, grows)) != NGD_OK) return st; // B methods
        } else {
            s->meta[1] = grows;
            if (s->meta[5] && (st = kf_grow_rows(o, e, grows)) != NGD_OK) return st;
        }
    }
    const bool brand = s->f[KF_A].track == KF_BRAND || s->f[KF_G].track == KF_BRAND;
    const bool keep_rows = s->meta[5] || (brand && stats);
    if (!stats && !keep_rows) return NGD_OK; // a factored_apply step of a layer without it
    if (keep_rows && s->pend[1] + rows > s->meta[2] &&
        (st = kf_grow_rows(o, e, (size_t)s->pend[1] + rows)) != NGD_OK)
        return st;
    float *chunk = kf_scratch(o, observe_ws(e));
    if (!chunk) return ngd_optim_fail(o, NGD_ERR_NOMEM, "layer '%s': out of memory", e->name);
    const double c = e->cfg.loss_average == NGD_LOSS_SUM ? 1.0 : (double)batch;
    const float wa = (float)(1.0 / (double)R);
    const float wg = (float)(c * sqrt((double)R) / (double)o->scale_cur);
    for (size_t r0 = 0; r0 < rows; r0 += NGD_STATS_CHUNK) {
        const size_t nr = NGD_MIN((size_t)NGD_STATS_CHUNK, rows - r0);
        const float beta = (s->has_pend || r0 > 0) ? 1.0f : 0.0f;
        for (int k = 0; k < 2; k++) {
            kf_factor *f = &s->f[k];
            const size_t d = f->d;
            if (k == KF_A)
                ngd_stats_a_rows(e, batch, a, g, r0, nr, chunk);
            else
                ngd_stats_g_rows(e, batch, g, r0, nr, chunk);
            const float w = k == KF_A ? wa : wg;
            if (w != 1.0f)
                for (size_t i = 0; i < nr * d; i++)
                    chunk[i] *= w;
            if (stats && f->pend) { // pend (+)= Xᵀ X, X = the nr x d chunk (seen as d x nr)
                ngd_cview Xt = {chunk, d, nr, 1, (ptrdiff_t)d};
                ngd_syrk_full(1.0f, Xt, beta, ngd_view_rm(f->pend, d, d, d));
            }
            if (keep_rows && f->rows)
                memcpy(f->rows + (size_t)(s->pend[1] + r0) * d, chunk, nr * d * sizeof(float));
        }
    }
    if (stats) {
        s->pend[0] += batch;
        s->has_pend = 1;
    }
    if (keep_rows) {
        s->pend[1] += rows;
        s->pend[2] = (uint64_t)c;
    }
    return NGD_OK;
}

static void kfac_discard(ngd_entry *e) {
    kf_state *s = e->ms;
    s->has_pend = 0;
    s->pend[0] = s->pend[1] = s->pend[2] = 0;
}

// F̄ := ρ F̄ + (1−ρ)/n · pend (#exponential-average); with bf16 averages each result is
// rounded to bf16.
static void ea_update(kf_factor *f, float rho, double n, bool bf16) {
    const size_t dd = f->d * f->d;
    const float a = rho, b = (float)((1.0 - (double)rho) / n);
    float *ea = f->ea;
    const float *p = f->pend;
#pragma omp parallel for schedule(static) if (dd > NGD_PAR_MIN)
    for (size_t i = 0; i < dd; i++) {
        const float v = a * ea[i] + b * p[i];
        ea[i] = bf16 ? ngd_bf16_to_f32(ngd_f32_to_bf16(v)) : v;
    }
    f->cnt[0]++;
}

ngd_status kf_refresh_evd(ngd_optim *o, ngd_entry *e, kf_factor *f) {
    const size_t d = f->d;
    const size_t bytes = ngd_sym_eig_ws(d, NGD_EIG_F32_THEN_F64);
    void *ws = bytes ? kf_scratch(o, bytes) : NULL;
    if (!ws)
        return ngd_optim_fail(o, NGD_ERR_NOMEM,
                              "layer '%s': out of memory for a %zu x %zu "
                              "eigendecomposition",
                              e->name, d, d);
    ngd_lowrank L = kf_rep(f);
    ngd_eig_outcome out;
    ngd_status st = ngd_sym_eig(ngd_cview_rm(f->ea, d, d, d), e->cfg.kfac.eig_zero_tol,
                                NGD_EIG_F32_THEN_F64, &L, &out, ws, bytes);
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
    f->cnt[2] = L.r;
    f->cnt[3] = f->cnt[0];
    return NGD_OK;
}

static void factor_health(const kf_factor *f, float *trace, float *norm) {
    double tr = 0, nn = 0;
    if (f->ea) {
        for (size_t i = 0; i < f->d; i++)
            tr += (double)f->ea[i * f->d + i];
        for (size_t i = 0; i < f->d * f->d; i++)
            nn += (double)f->ea[i] * (double)f->ea[i];
    } else {
        for (size_t i = 0; i < f->cnt[2]; i++) {
            tr += (double)f->D[i];
            nn += (double)f->D[i] * (double)f->D[i];
        }
    }
    *trace = (float)(tr / (double)f->d);
    *norm = (float)sqrt(nn);
}

static ngd_status kfac_update(ngd_optim *o, ngd_entry *e, size_t t) {
    kf_state *s = e->ms;
    const ngd_kfac_options *k = &e->cfg.kfac;
    bool did = false;
    ngd_status st;
    // a data-parallel run: the exponential averages on every rank (cheap, and they keep each
    // rank's state whole), decompositions and Brand updates by the layer's owner only, which
    // broadcasts the new (U, D) in kfac_publish (bits of s->pub)
    const bool mine = ngd_optim_mine(o, e);
    s->pub = 0;
    if (s->has_pend) {
        for (int i = 0; i < 2; i++) {
            kf_factor *f = &s->f[i];
            if (f->ea) ea_update(f, k->rho, (double)s->pend[0], k->ea_dtype == NGD_BF16);
            if (f->track == KF_BRAND && kf_brand_due(&e->cfg, t)) {
                s->pub |= (uint8_t)(1u << i);
                if (mine && (st = kf_brand_step(o, e, f, t)) != NGD_OK) return st;
            }
        }
        s->has_pend = 0; // the rows stay for the factored application of this step
        s->pend[0] = 0;
        did = true;
    }
    if (s->meta[0] && t % k->T_i == 0) {
        for (int i = 0; i < 2; i++) {
            kf_factor *f = &s->f[i];
            if (f->track != KF_BRAND || kf_refresh_due(&e->cfg, t)) s->pub |= (uint8_t)(1u << i);
            if (!mine) continue;
            switch (f->track) {
            case KF_EVD: st = kf_refresh_evd(o, e, f); break;
            case KF_RSVD:
                st = kf_refresh_randomized(o, e, f, NGD_MIN(k->rank, f->d),
                                           e->cfg.method == NGD_METHOD_SREKFAC);
                break;
            case KF_BRAND: st = kf_brand_maintain(o, e, f, t); break;
            default: st = NGD_OK; break;
            }
            if (st) return st;
        }
        did = true;
    }
    if (did) {
        e->h.updates++;
        factor_health(&s->f[KF_A], &e->h.trace_K, &e->h.norm_K);
        factor_health(&s->f[KF_G], &e->h.trace_C, &e->h.norm_C);
        e->h.rank_A = (size_t)s->f[KF_A].cnt[2];
        e->h.rank_G = (size_t)s->f[KF_G].cnt[2];
    }
    return NGD_OK;
}

// ---- data-parallel runs ----

// The pending sums Σ x xᵀ and the sample count add up over the ranks (each rank scaled its
// rows to per-sample statistics, so the global batch's are the sums); the rows kept for Brand
// updates and the factored application are gathered in rank order, which is the global
// batch's row order (equal shards, rank r's the r-th).
static ngd_status kfac_combine(ngd_optim *o, ngd_entry *e) {
    kf_state *s = e->ms;
    ngd_status st;
    const size_t P = ngd_optim_world(o);
    if (s->has_pend) {
        for (int k = 0; k < 2; k++) {
            kf_factor *f = &s->f[k];
            if (f->pend && (st = ngd_comm_allreduce(o, f->pend, f->d * f->d)) != NGD_OK) return st;
        }
        s->pend[0] *= P;
    }
    const size_t nloc = (size_t)s->pend[1];
    if (nloc == 0) return NGD_OK;
    if ((st = kf_grow_rows(o, e, nloc * P)) != NGD_OK) return st;
    const size_t rank = (size_t)o->comm.rank;
    for (int k = 0; k < 2; k++) {
        kf_factor *f = &s->f[k];
        if (!f->rows) continue;
        const size_t block = nloc * f->d;
        if (rank) memmove(f->rows + rank * block, f->rows, block * sizeof(float));
        if ((st = ngd_comm_allgather(o, f->rows, block * sizeof(float))) != NGD_OK) return st;
    }
    s->pend[1] = nloc * P;
    // the factored application's J = (1/c) 𝒢ᵀ𝒜: c = the global batch for a batch mean
    if (e->cfg.loss_average != NGD_LOSS_SUM) s->pend[2] *= P;
    return NGD_OK;
}

// Flops of one maintenance of each factor: ~9d³ for a full eigendecomposition, ~(2q+3)·2d²(r+p)
// for a randomized one, ~4d(r+n)² for a Brand update. An owner always pays: what it
// broadcasts ((U, D): d² or d·r numbers) is no more than the d² sums every rank already
// all-reduces, while the work is O(d³) or O(d(r+n)²).
static double kfac_work(const ngd_entry *e, bool *owner_pays) {
    const kf_state *s = e->ms;
    const ngd_kfac_options *k = &e->cfg.kfac;
    double flops = 0.0;
    for (int i = 0; i < 2; i++) {
        const kf_factor *f = &s->f[i];
        const double d = (double)f->d, r = (double)NGD_MIN(k->rank, f->d);
        switch (f->track) {
        case KF_EVD: flops += 9.0 * d * d * d; break;
        case KF_RSVD:
            flops +=
                (2.0 * (double)k->power_iters + 3.0) * 2.0 * d * d * (r + (double)k->oversample);
            break;
        case KF_BRAND: {
            const double rn = (double)kf_brand_rank(&e->cfg) + (double)s->meta[1];
            flops += 4.0 * d * rn * rn;
            break;
        }
        default: break;
        }
    }
    *owner_pays = true;
    return flops;
}

static ngd_status kfac_publish(ngd_optim *o, ngd_entry *e) {
    kf_state *s = e->ms;
    if (!s->pub) return NGD_OK;
    const int root = e->owner;
    ngd_status st;
    for (int i = 0; i < 2; i++) {
        kf_factor *f = &s->f[i];
        if (!(s->pub & (1u << i))) continue;
        if ((st = ngd_comm_bcast(o, f->U, f->d * f->cap * sizeof(float), root)) != NGD_OK ||
            (st = ngd_comm_bcast(o, f->D, f->cap * sizeof(float), root)) != NGD_OK ||
            (st = ngd_comm_bcast(o, f->cnt, sizeof f->cnt, root)) != NGD_OK)
            return st;
    }
    uint64_t extra[6] = {e->h.decomp_failures, e->h.decomp_retries, s->rng.s[0],
                         s->rng.s[1],          s->rng.s[2],         s->rng.s[3]};
    if ((st = ngd_comm_bcast(o, extra, sizeof extra, root)) != NGD_OK) return st;
    s->pub = 0;
    if (ngd_optim_mine(o, e)) return NGD_OK;
    e->h.decomp_failures = (size_t)extra[0], e->h.decomp_retries = (size_t)extra[1];
    memcpy(s->rng.s, extra + 2, sizeof s->rng.s);
    factor_health(&s->f[KF_A], &e->h.trace_K, &e->h.norm_K);
    factor_health(&s->f[KF_G], &e->h.trace_C, &e->h.norm_C);
    e->h.rank_A = (size_t)s->f[KF_A].cnt[2];
    e->h.rank_G = (size_t)s->f[KF_G].cnt[2];
    return NGD_OK;
}

// ---- preconditioning ----

// The identity term of #identity-init for the representation of f: ρ^k (in_damping) or 0.
static float id_shift(const ngd_entry *e, const kf_factor *f) {
    if (e->cfg.kfac.identity_init != NGD_IDINIT_IN_DAMPING) return 0.0f;
    return (float)pow((double)e->cfg.kfac.rho, (double)f->cnt[3]);
}

static size_t kfac_precond_bytes(const ngd_entry *e) {
    const kf_state *s = e->ms;
    const size_t dA = e->d_K, dG = e->d_out;
    // before the B tracks are decided, the largest rank they can take
    const size_t cA = s->meta[0] ? s->f[KF_A].cap : dA, cG = s->meta[0] ? s->f[KF_G].cap : dG;
    size_t b = ngd_lri_apply2_ws(dG, cG, dA, cA);
    if (e->cfg.method == NGD_METHOD_KFAC) b = NGD_MAX(b, ngd_kfac_precond_ws(dG, dA));
    return b;
}

static size_t kfac_precond_ws(const ngd_entry *e) {
    return e->d_K + e->d_out + (kfac_precond_bytes(e) + sizeof(float) - 1) / sizeof(float);
}

// The factored application of #factored-application for a fully connected layer: X = LRI_G(𝒢ᵀ) and
// Y = LRI_A(𝒜ᵀ) cost O(n (d_G r_G + d_A r_A)); then S = (1/c) X Yᵀ, the rank-n product the
// parameter update needs (O(d_G d_A n), what forming the gradient itself costs). J is taken
// to be (1/c) 𝒢ᵀ𝒜 of this step's rows (c = n for a batch-mean loss) — the caller's
// gradient when the loss has no L2 term and the batch was observed once.
static ngd_status factored(ngd_optim *o, ngd_entry *e, const ngd_lowrank *LG, float lG, float mG,
                           const ngd_lowrank *LA, float lA, float mA, ngd_view S) {
    kf_state *s = e->ms;
    const size_t m = (size_t)s->pend[1], dA = e->d_K, dG = e->d_out;
    const size_t kb = ngd_factored_precond_ws(LG->r, LA->r, m);
    const size_t xy = (dG + dA) * m;
    if (!kb || !s->pend[2]) return NGD_ERR_ARG;
    float *X = kf_scratch(o, xy * sizeof(float) + kb);
    if (!X) return NGD_ERR_NOMEM;
    float *Y = X + dG * m;
    ngd_view Xv = ngd_view_rm(X, dG, m, m), Yv = ngd_view_rm(Y, dA, m, m);
    ngd_status st =
        ngd_factored_precond(LG, lG, mG, LA, lA, mA, ngd_cview_rm(s->f[KF_G].rows, m, dG, dG),
                             ngd_cview_rm(s->f[KF_A].rows, m, dA, dA), Xv, Yv, X + xy, kb);
    if (st) return st;
    return ngd_factored_update(S, 0.0f, (float)(1.0 / (double)s->pend[2]), ngd_cv(Xv), ngd_cv(Yv));
}

static void kfac_precondition(ngd_optim *o, ngd_entry *e, const float *G, float *P, float *ws) {
    kf_state *s = e->ms;
    const ngd_kfac_options *k = &e->cfg.kfac;
    const size_t dA = e->d_K, dG = e->d_out;
    const kf_factor *fA = &s->f[KF_A], *fG = &s->f[KF_G];
    if (!s->meta[0] ||
        (fA->cnt[2] == 0 && fG->cnt[2] == 0 && k->identity_init == NGD_IDINIT_IN_FACTOR)) {
        memcpy(P, G, e->n * sizeof(float)); // no curvature yet
        s->pend[1] = s->pend[2] = 0;
        return;
    }
    float *DA = ws, *DG = ws + dA;
    void *kws = ws + dA + dG;
    const size_t kbytes = kfac_precond_bytes(e);
    ngd_cview J = ngd_cview_rm(G, dG, dA, dA);
    ngd_view S = ngd_view_rm(P, dG, dA, dA);
    ngd_status st;
    if (e->cfg.method == NGD_METHOD_KFAC && fA->cnt[2] == dA && fG->cnt[2] == dG) {
        // #k-fac on the full eigendecompositions, eigenvalues shifted by the identity term
        const float sA = id_shift(e, fA), sG = id_shift(e, fG);
        double trA = 0, trG = 0;
        for (size_t i = 0; i < dA; i++)
            DA[i] = fA->D[i] + sA, trA += (double)DA[i];
        for (size_t i = 0; i < dG; i++)
            DG[i] = fG->D[i] + sG, trG += (double)DG[i];
        ngd_lowrank LA = {fA->U, DA, dA, dA, fA->cap}, LG = {fG->U, DG, dG, dG, fG->cap};
        const double lk = (double)k->damping_rel * (double)DA[0] * (double)DG[0];
        if (k->damping_kind == NGD_KFAC_DAMP_FACTORED_PI) {
            const double pi = (double)ngd_kfac_pi(trA, dA, trG, dG);
            const double gp = sqrt(lk > 0 ? lk : 1e-30);
            st = ngd_kfac_precond_factored(&LG, &LA, (float)(gp / pi), (float)(pi * gp), J, S, kws,
                                           kbytes);
        } else {
            st = ngd_kfac_precond_exact(&LG, &LA, (float)(lk > 0 ? lk : 1e-30), J, S, kws, kbytes);
        }
    } else {
        // #low-rank-inverse on both sides: λ_F = λ_rel·max D_F + ρ^k, μ by the tail model
        float lam[2], mu[2];
        const kf_factor *fs[2] = {fA, fG};
        for (int i = 0; i < 2; i++) {
            const kf_factor *f = fs[i];
            const float dmax = f->cnt[2] ? f->D[0] : 0.0f;
            lam[i] = k->damping_rel * dmax + id_shift(e, f);
            if (!(lam[i] > 0.0f)) lam[i] = 1.0f; // nothing to scale against: plain gradient
            mu[i] = (k->tail == NGD_TAIL_MIN_KEPT && f->cnt[2]) ? f->D[f->cnt[2] - 1] : 0.0f;
        }
        ngd_lowrank LA = kf_rep(fA), LG = kf_rep(fG);
        st = NGD_ERR_STATE;
        if (s->meta[5] && s->pend[1] > 0 && LA.r > 0 && LG.r > 0)
            st = factored(o, e, &LG, lam[KF_G], mu[KF_G], &LA, lam[KF_A], mu[KF_A], S);
        if (st != NGD_OK)
            st = ngd_lri_apply2(&LG, lam[KF_G], mu[KF_G], &LA, lam[KF_A], mu[KF_A], J, S, kws,
                                kbytes);
    }
    s->pend[1] = s->pend[2] = 0; // this step's rows are used up
    if (st) { // cannot happen with the planned workspace; never leave P undefined
        ngd_optim_log(o, "layer '%s': preconditioning failed (%d); plain gradient used", e->name,
                      (int)st);
        memcpy(P, G, e->n * sizeof(float));
    }
}

// ---- checkpoints and introspection ----

static size_t kfac_arrays(ngd_entry *e, ngd_state_array *out, size_t cap) {
    kf_state *s = e->ms;
    kf_factor *A = &s->f[KF_A], *G = &s->f[KF_G];
#define EA_N(f) ((f)->ea ? (f)->d * (f)->d : 0)
    ngd_state_array a[] = {
        {"#meta", s->meta, 6, NGD_ARR_U64},
        {"A.ea", A->ea, EA_N(A), NGD_ARR_F32},
        {"A.U", A->U, A->U ? A->d * A->cap : 0, NGD_ARR_F32},
        {"A.D", A->D, A->D ? A->cap : 0, NGD_ARR_F32},
        {"A.cnt", A->cnt, 4, NGD_ARR_U64},
        {"G.ea", G->ea, EA_N(G), NGD_ARR_F32},
        {"G.U", G->U, G->U ? G->d * G->cap : 0, NGD_ARR_F32},
        {"G.D", G->D, G->D ? G->cap : 0, NGD_ARR_F32},
        {"G.cnt", G->cnt, 4, NGD_ARR_U64},
        {"rng", s->rng.s, 4, NGD_ARR_U64},
        {"~A.pend", A->pend, EA_N(A), NGD_ARR_F32}, // '~': transient (not state bytes)
        {"~G.pend", G->pend, EA_N(G), NGD_ARR_F32},
        {"~A.rows", A->rows, A->rows_cap * A->d, NGD_ARR_F32},
        {"~G.rows", G->rows, G->rows_cap * G->d, NGD_ARR_F32},
        {"~pend", s->pend, 3, NGD_ARR_U64},
        {"~has_pend", &s->has_pend, 1, NGD_ARR_U8},
    };
#undef EA_N
    size_t n = sizeof a / sizeof a[0];
    if (n > cap) n = cap;
    memcpy(out, a, n * sizeof a[0]);
    return n;
}

static ngd_status kfac_load_meta(ngd_optim *o, ngd_entry *e, const uint64_t *v, size_t n) {
    kf_state *s = e->ms;
    if (n != 6 || v[0] > 1 || v[5] > 1 || v[1] > ((uint64_t)1 << 32) ||
        v[2] > ((uint64_t)1 << 32) ||
        (v[0] && (v[3] < KF_EVD || v[3] > KF_BRAND || v[4] < KF_EVD || v[4] > KF_BRAND)))
        return ngd_optim_fail(o, NGD_ERR_FORMAT, "'%s': bad #meta", e->name);
    if (v[5] && !e->cfg.kfac.factored_apply)
        return ngd_optim_fail(o, NGD_ERR_FORMAT, "'%s': saved with kfac.factored_apply", e->name);
    if (!s->meta[0] && v[0]) { // an undecided B layer takes the saved tracks
        memcpy(s->meta + 1, v + 1, 5 * sizeof *v);
        return kf_apply_tracks(o, e);
    }
    if (s->meta[0] != v[0] || (v[0] && (s->meta[3] != v[3] || s->meta[4] != v[4])))
        return ngd_optim_fail(o, NGD_ERR_FORMAT,
                              "'%s': saved with other factor tracks (%llu/%llu, "
                              "this optimizer has %llu/%llu)",
                              e->name, (unsigned long long)v[3], (unsigned long long)v[4],
                              (unsigned long long)s->meta[3], (unsigned long long)s->meta[4]);
    if (v[5]) s->meta[5] = 1;
    if (!s->meta[1]) s->meta[1] = v[1];
    if (v[2] > s->meta[2]) return kf_grow_rows(o, e, (size_t)v[2]);
    return NGD_OK;
}

// 'K' / 'C': the dense EA (zero start, without the identity term) or, on the B-KFAC Brand
// track, U D Uᵀ; 'k' / 'c': U D Uᵀ, the representation the preconditioner uses.
static ngd_status kfac_factor_dense(const ngd_optim *o, const ngd_entry *e, char which,
                                    float *out) {
    ngd_optim *mo = (ngd_optim *)(uintptr_t)o;
    const kf_state *s = e->ms;
    const kf_factor *f = &s->f[(which == 'K' || which == 'k') ? KF_A : KF_G];
    const size_t d = f->d;
    if (!s->meta[0])
        return ngd_optim_fail(mo, NGD_ERR_STATE, "layer '%s': no statistics yet", e->name);
    if ((which == 'K' || which == 'C') && f->ea) {
        memcpy(out, f->ea, d * d * sizeof(float));
        return NGD_OK;
    }
    const size_t r = (size_t)f->cnt[2];
    float *T = ngd_malloc(d * (r ? r : 1), sizeof(float));
    if (!T) return ngd_optim_fail(mo, NGD_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < r; j++)
            T[i * r + j] = f->U[i * f->cap + j] * f->D[j];
    ngd_view O = ngd_view_rm(out, d, d, d);
    if (r) {
        ngd_gemm(1.0f, ngd_cview_rm(T, d, r, r), ngd_cview_t(ngd_cview_rm(f->U, d, r, f->cap)),
                 0.0f, O);
    } else {
        ngd_view_zero(O);
    }
    ngd_free(T);
    return NGD_OK;
}

#define KFAC_OPS(NAME)                                                                             \
    {                                                                                              \
        .name = NAME, .layer_init = kfac_init, .layer_free = kfac_free, .wants_stats = kfac_wants, \
        .observe = kfac_observe, .discard = kfac_discard, .update = kfac_update,                   \
        .precondition = kfac_precondition, .precond_ws = kfac_precond_ws, .rule = NGD_RULE_KFAC,   \
        .arrays = kfac_arrays, .load_meta = kfac_load_meta, .factor_dense = kfac_factor_dense,     \
        .combine = kfac_combine, .work = kfac_work, .publish = kfac_publish,                       \
    }

const ngd_method_ops ngd_kfac_ops = KFAC_OPS("kfac");
const ngd_method_ops ngd_rskfac_ops = KFAC_OPS("rskfac");
const ngd_method_ops ngd_srekfac_ops = KFAC_OPS("srekfac");
const ngd_method_ops ngd_bkfac_ops = KFAC_OPS("bkfac");
const ngd_method_ops ngd_brkfac_ops = KFAC_OPS("brkfac");
const ngd_method_ops ngd_brckfac_ops = KFAC_OPS("brckfac");
