/*
 * kfac_family.c — the K-FAC family's methods (K-FAC, RS-KFAC, SRE-KFAC, B-KFAC, B-R-KFAC,
 * BRC-KFAC; docs/algorithms.md#k-fac-family): their ngd_method_ops, one table for the six,
 * calling the tracks (kfac.c EVD, rskfac.c RSVD, bkfac.c Brand) for the maintenance of each
 * factor. The layer state, the tracks and the files are described in kfac.h.
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
 * eigendecompositions uses #k-fac (kfac.c: exact damping λ_K = λ_rel·max γ·max α, or factored
 * π-damping); every other combination the low-rank + scaled identity inverse (#low-rank-inverse)
 * with λ_F = λ_rel·max D_F (+ ρ^k) and the tail model μ; with kfac.factored_apply, fully
 * connected layers apply it to 𝒜ᵀ and 𝒢ᵀ instead of J (#factored-application, `factored` below).
 * Clipping, decoupled weight decay from wd_start, momentum and the step are the family's
 * first-order rule (kfac_rule.c, ngd_rule_kfac), which the driver applies.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "bf16.h"
#include "kfac.h"

static void kfac_free(ngd_entry *e) {
    kf_state *s = e->ms;
    if (!s) return;
    ngd_kf_factor_free(&s->f[KF_A]);
    ngd_kf_factor_free(&s->f[KF_G]);
    if (s->stashed) ngd_kf_factor_free(&s->stash[KF_A]), ngd_kf_factor_free(&s->stash[KF_G]);
    ngd_free(s->inv[KF_A]);
    ngd_free(s->inv[KF_G]);
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
    const bool bfam = ngd_kf_is_b_family(c->method); // (ngd_config_validate checked the rest)
    kf_state *s = ngd_calloc(1, sizeof *s);
    if (!s) return ngd_optim_fail(o, NGD_ERR_NOMEM, "layer '%s': out of memory", e->name);
    e->ms = s;
    s->id = o->n;
    ngd_rng_seed(&s->rng, c->kfac.seed, (uint64_t)s->id);
    s->f[KF_A].d = e->d_K;
    s->f[KF_G].d = e->d_out;
    if (bfam) return NGD_OK; // tracks decided at the first observe (ngd_kf_decide)
    s->meta.decided = 1;
    for (int k = 0; k < 2; k++) {
        kf_factor *f = &s->f[k];
        const bool evd = c->method == NGD_METHOD_KFAC || c->kfac.rank >= f->d;
        const size_t cap = evd ? f->d : c->kfac.rank;
        s->meta.track[k] = evd ? KF_EVD : KF_RSVD;
        if (!ngd_kf_factor_alloc(f, evd ? KF_EVD : KF_RSVD, true, cap, 0)) {
            kfac_free(e);
            return ngd_optim_fail(o, NGD_ERR_NOMEM,
                                  "layer '%s': out of memory for the "
                                  "factors (%zu and %zu wide)",
                                  e->name, e->d_K, e->d_out);
        }
        if (c->kfac.identity_init == NGD_IDINIT_IN_FACTOR) ea_identity(f);
        if (ngd_kf_inv_wanted(e) && !(s->inv[k] = ngd_malloc(f->d * f->d, sizeof(float)))) {
            kfac_free(e);
            return ngd_optim_fail(o, NGD_ERR_NOMEM,
                                  "layer '%s': out of memory for the inverse operators", e->name);
        }
    }
    return NGD_OK;
}

// Statistics steps; every step for the factored application (it needs this step's 𝒜, 𝒢),
// until the layer's first statistics show it does not take it (a convolution, a sequence)
static bool kfac_wants(const ngd_entry *e, size_t t) {
    const kf_state *s = e->ms;
    return t % e->cfg.kfac.T_u == 0 ||
           (e->cfg.kfac.factored_apply && (s->meta.cols == 0 || s->meta.factored));
}

// Bytes of scratch needed by observe: one chunk (or a Gram block) of processed rows.
static size_t observe_ws(const ngd_entry *e) {
    return ngd_stats_observe_scratch(e) * sizeof(float);
}

// #factored-application: whether n rows cost fewer multiply-adds than the gradient, with
// sides of rank rG, rA (low-rank inverses on both sides: 2n(d_G r_G + d_A r_A) + n d_G d_A
// against 2 d_G d_A (r_G + r_A)); for K-FAC's eigenbases or inverse operators (full rank) the
// first half's n(d_G² + d_A² + d_G d_A) against d_G d_A (d_G + d_A), as ngd_kfac_precond_exact
// decides. At a large batch the gradient costs less.
static bool factored_pays(const ngd_entry *e, size_t n, size_t rG, size_t rA) {
    if (e->cfg.method == NGD_METHOD_KFAC && rG >= e->d_out && rA >= e->d_K)
        return ngd_kfac_rows_pay(n, e->d_out, e->d_K);
    const double N = (double)n, dG = (double)e->d_out, dA = (double)e->d_K;
    return N * (2.0 * (dG * (double)rG + dA * (double)rA) + dG * dA) <
           2.0 * dG * dA * ((double)rG + (double)rA);
}

// The ranks a layer's sides are configured for (K-FAC: full; Brand track: r_B; else r)
static bool factored_pays_cfg(const ngd_entry *e, size_t n) {
    const ngd_config *c = &e->cfg;
    if (c->method == NGD_METHOD_KFAC) return factored_pays(e, n, e->d_out, e->d_K);
    const size_t r = NGD_MAX(c->kfac.rank, ngd_kf_brand_rank(c));
    return factored_pays(e, n, NGD_MIN(r, e->d_out), NGD_MIN(r, e->d_K));
}

// #loss-scale: the G statistics and rows are divided by the loss scale set when they are
// observed, and a client may set this step's scale only after its observe calls (ngd.torch's
// order, from a GradScaler): the pending G Gram is then rescaled by (s0/s1)², its rows by
// s0/s1, so that the pending statistics are always those of the scale now set (and a
// checkpoint saved mid-step holds them with its s_t).
static void kfac_rescale(ngd_entry *e, float s0, float s1) {
    kf_state *st = e->ms;
    if (!st || (!st->has_pend && !st->pend.rows)) return;
    const double r = (double)s0 / (double)s1;
    kf_factor *f = &st->f[KF_G];
    const bool em = e->cfg.kfac.factor_arith == NGD_BF16; // (emulated bf16: operands stay bf16)
    if (st->has_pend && f->pend) {
        ngd_view_scale_f32(ngd_view_rm(f->pend, f->d, f->d, f->d), (float)(r * r));
        if (em) ngd_bf16_round(f->pend, f->d * f->d);
    }
    if (st->pend.rows && f->rows) {
        ngd_view_scale_f32(ngd_view_rm(f->rows, (size_t)st->pend.rows, f->d, f->d), (float)r);
        if (em) ngd_bf16_round(f->rows, (size_t)st->pend.rows * f->d);
    }
}

static ngd_status kfac_observe(ngd_optim *o, ngd_entry *e, size_t batch, const ngd_matrix *a,
                               const ngd_matrix *g) {
    kf_state *s = e->ms;
    const size_t rows = ngd_stats_rows(e, batch, g);
    const size_t R = rows / batch; // 1 for fully connected layers and for reduce
    const bool stats = o->steps % e->cfg.kfac.T_u == 0;
    ngd_status st;
    if (s->meta.cols == 0) {        // the layer's first statistics
        const kf_meta m0 = s->meta; // restored when out of memory (all or nothing)
        // a data-parallel run decides for the global batch (equal shards; combine gathers
        // every rank's rows into the buffers), micro-batches for the step's
        const size_t grows = rows * ngd_optim_world(o) * o->micro;
        // #factored-application: fully connected layers keep both factors' rows (one row a
        // sample as observed: a sequence's rows reduced to one a sample are not ones whose
        // product is the gradient), where they cost less than the gradient
        if (e->cfg.kfac.factored_apply && g->rows == batch && factored_pays_cfg(e, grows))
            s->meta.factored = 1;
        if (!s->meta.decided) {
            st = ngd_kf_decide(o, e, R == 1, grows); // B methods
        } else {
            s->meta.cols = grows;
            st = s->meta.factored ? ngd_kf_grow_rows(o, e, grows) : NGD_OK;
        }
        if (st != NGD_OK) {
            s->meta = m0;
            return st;
        }
    }
    // (a checkpoint of a build that took a sequence's reduced rows for a fully connected
    // layer's: the gradient from here on)
    if (s->meta.factored && g->rows != batch) s->meta.factored = 0;
    // a layer loaded without the rows, now with factored_apply (--factored, or ngd train's
    // default, on a checkpoint of --no-factored or of an earlier build): decided as its first
    // statistics would have
    if (s->redecide) {
        s->redecide = 0;
        if (g->rows == batch && factored_pays_cfg(e, (size_t)s->meta.cols)) {
            s->meta.factored = 1;
            if ((st = ngd_kf_grow_rows(o, e, (size_t)s->meta.cols)) != NGD_OK) {
                s->meta.factored = 0;
                return st;
            }
            o->planned = false; // (the workspace of the factored application)
        }
    }
    const bool brand = s->f[KF_A].track == KF_BRAND || s->f[KF_G].track == KF_BRAND;
    const bool keep_rows = s->meta.factored || (brand && stats);
    if (!stats && !keep_rows) return NGD_OK; // a factored_apply step of a layer without it
    // (room checked against each kept buffer: a loaded meta.rows_cap may exceed a buffer the
    // redecide path above sized for meta.cols rows)
    bool room = s->pend.rows + rows <= s->meta.rows_cap;
    for (int k = 0; k < 2; k++)
        room &= !s->f[k].rows || s->pend.rows + rows <= s->f[k].rows_cap;
    if (keep_rows && !room && (st = ngd_kf_grow_rows(o, e, (size_t)s->pend.rows + rows)) != NGD_OK)
        return st;
    float *chunk = ngd_kf_scratch(o, observe_ws(e));
    if (!chunk)
        return ngd_optim_fail(o, NGD_ERR_INTERNAL, "layer '%s': no planned workspace", e->name);
    // (micro-batches: c is the whole batch's, the observes' batches times o->micro)
    const double c = e->cfg.loss_average == NGD_LOSS_SUM ? 1.0 : (double)batch * (double)o->micro;
    // emulated bf16 (kfac.factor_arith): the rows, their scaling and the products rounded
    const bool em = e->cfg.kfac.factor_arith == NGD_BF16;
    float wa = (float)(1.0 / (double)R);
    float wg = (float)(c * sqrt((double)R) / (double)o->scale_cur);
    if (em) wa = ngd_bf16_round1(wa), wg = ngd_bf16_round1(wg);
    const bool was = ngd_bf16_emul_set(em);
    // pend (+)= w² Σ x xᵀ in place, all rows at once, where no rows are kept and the rounding
    // is not emulated (a convolution's N·L rows; the same sums, scaled after)
    bool inplace[2] = {false, false};
    for (int k = 0; k < 2 && stats && !keep_rows && !em; k++) {
        const float w = k == KF_A ? wa : wg;
        inplace[k] = s->f[k].pend && rows > NGD_STATS_CHUNK &&
                     ngd_stats_gram(e, batch, k == KF_A ? a : g, k == KF_A, w * w,
                                    s->has_pend ? 1.0f : 0.0f, s->f[k].pend, chunk);
    }
    for (size_t r0 = 0; r0 < rows && !(inplace[0] && inplace[1]); r0 += NGD_STATS_CHUNK) {
        const size_t nr = NGD_MIN((size_t)NGD_STATS_CHUNK, rows - r0);
        const float beta = (s->has_pend || r0 > 0) ? 1.0f : 0.0f;
        for (int k = 0; k < 2; k++) {
            kf_factor *f = &s->f[k];
            if (inplace[k]) continue;
            const size_t d = f->d;
            if (k == KF_A)
                ngd_stats_a_rows(e, batch, a, g, r0, nr, chunk);
            else
                ngd_stats_g_rows(e, batch, g, r0, nr, chunk);
            if (em) ngd_bf16_round(chunk, nr * d); // bf16 operands
            const float w = k == KF_A ? wa : wg;
            if (w != 1.0f) {
                for (size_t i = 0; i < nr * d; i++)
                    chunk[i] *= w;
                if (em) ngd_bf16_round(chunk, nr * d);
            }
            if (stats && f->pend) { // pend (+)= Xᵀ X, X = the nr x d chunk (seen as d x nr)
                ngd_cview Xt = {chunk, d, nr, 1, (ptrdiff_t)d};
                ngd_syrk_full(1.0f, Xt, beta, ngd_view_rm(f->pend, d, d, d));
            }
            if (keep_rows && f->rows)
                memcpy(f->rows + (size_t)(s->pend.rows + r0) * d, chunk, nr * d * sizeof(float));
        }
    }
    ngd_bf16_emul_set(was);
    if (stats) {
        s->pend.samples += batch;
        s->has_pend = 1;
    }
    if (keep_rows) {
        s->pend.rows += rows;
        s->pend.c = (uint64_t)c;
    }
    return NGD_OK;
}

static void kfac_discard(ngd_entry *e) {
    kf_state *s = e->ms;
    s->has_pend = 0;
    s->pend.samples = s->pend.rows = s->pend.c = 0;
}

// F̄ := ρ F̄ + (1−ρ)/n · pend (#exponential-average); with bf16 averages each result is
// rounded to bf16; with emulated bf16 arithmetic (em) each operation's result: ρ·F̄,
// (1−ρ)/n · pend (one scaling, the scalar rounded) and their sum.
static void ea_update(kf_factor *f, float rho, double n, bool bf16, bool em) {
    const size_t dd = f->d * f->d;
    float a = rho, b = (float)((1.0 - (double)rho) / n);
    float *ea = f->ea;
    const float *p = f->pend;
    if (em) {
        a = ngd_bf16_round1(a), b = ngd_bf16_round1(b);
#pragma omp parallel for schedule(static) if (dd > NGD_PAR_MIN)
        for (size_t i = 0; i < dd; i++)
            ea[i] = ngd_bf16_round1(ngd_bf16_round1(a * ea[i]) + ngd_bf16_round1(b * p[i]));
        f->cnt.ea_updates++;
        return;
    }
#pragma omp parallel for schedule(static) if (dd > NGD_PAR_MIN)
    for (size_t i = 0; i < dd; i++) {
        const float v = a * ea[i] + b * p[i];
        ea[i] = bf16 ? ngd_bf16_to_f32(ngd_f32_to_bf16(v)) : v;
    }
    f->cnt.ea_updates++;
}

// Emulated bf16 (kfac.factor_arith): a decomposition's outputs rounded as they are stored.
static void round_rep(const ngd_entry *e, kf_factor *f) {
    if (e->cfg.kfac.factor_arith != NGD_BF16) return;
    ngd_bf16_round(f->U, f->d * f->cap);
    ngd_bf16_round(f->D, f->cap);
}

// Whether this step's pending statistics are finite: the dense sums of the averaged factors,
// and a Brand factor's rows, whose squares must stay below FLT_MAX (every product of the
// update is bounded by their sum; 1e20 rows are finite, their products not)
static bool pend_finite(const kf_state *s) {
    for (int i = 0; i < 2; i++) {
        const kf_factor *f = &s->f[i];
        if (f->ea && !ngd_all_finite(f->pend, f->d * f->d)) return false;
        if (f->track == KF_BRAND && f->rows && s->pend.rows &&
            !(ngd_sumsq(f->rows, (size_t)s->pend.rows * f->d) < (double)FLT_MAX))
            return false;
    }
    return true;
}

static ngd_status update_core(ngd_optim *o, ngd_entry *e, size_t t) {
    kf_state *s = e->ms;
    const ngd_kfac_options *k = &e->cfg.kfac;
    bool did = false;
    ngd_status st;
    // a data-parallel run: the exponential averages on every rank (cheap, and they keep each
    // rank's state whole), decompositions and Brand updates by the layer's owner only, which
    // broadcasts the new (U, D) in kfac_publish (bits of s->pub)
    const bool mine = ngd_optim_mine(o, e);
    s->pub = 0;
    if (s->has_pend && !pend_finite(s)) {
        // non-finite statistics with finite gradients (an overflowing square of a large
        // input, say): folded in, they would leave the averages non-finite for good, every
        // later decomposition failing; refused and counted, averages and decompositions kept,
        // as SINGD refuses its factor update
        s->has_pend = 0;
        s->pend.samples = 0;
        e->h.decomp_failures++;
        ngd_optim_log(o,
                      "step %zu: layer '%s': non-finite curvature statistics, not averaged "
                      "(the factors kept)",
                      t, e->name);
    }
    if (s->has_pend) {
        for (int i = 0; i < 2; i++) {
            kf_factor *f = &s->f[i];
            if (f->ea)
                ea_update(f, k->rho, (double)s->pend.samples, k->ea_dtype == NGD_BF16,
                          k->factor_arith == NGD_BF16);
            if (f->track == KF_BRAND && ngd_kf_brand_due(&e->cfg, t)) {
                s->pub |= (uint8_t)(1u << i);
                if (mine && (st = ngd_kf_brand_step(o, e, f, t)) != NGD_OK) return st;
                if (mine) round_rep(e, f);
            }
        }
        s->has_pend = 0; // the rows stay for the factored application of this step
        s->pend.samples = 0;
        did = true;
    }
    if (s->meta.decided && t % k->T_i == 0) {
        s->inv_ok = 0; // (U, D) change, here or by the owner's broadcast
        for (int i = 0; i < 2; i++) {
            kf_factor *f = &s->f[i];
            if (f->track != KF_BRAND || ngd_kf_refresh_due(&e->cfg, t))
                s->pub |= (uint8_t)(1u << i);
            if (!mine) continue;
            switch (f->track) {
            case KF_EVD: st = ngd_kf_refresh_evd(o, e, f); break;
            case KF_RSVD:
                st = ngd_kf_refresh_randomized(o, e, f, NGD_MIN(k->rank, f->d),
                                               e->cfg.method == NGD_METHOD_SREKFAC);
                break;
            case KF_BRAND: st = ngd_kf_brand_maintain(o, e, f, t); break;
            default: st = NGD_OK; break;
            }
            if (st) return st;
            round_rep(e, f);
        }
        did = true;
    }
    if (did) {
        e->h.updates++;
        ngd_kf_health(e);
    }
    return NGD_OK;
}

// The factor maintenance, under emulated bf16 arithmetic when kfac.factor_arith asks for it.
static ngd_status kfac_update(ngd_optim *o, ngd_entry *e, size_t t) {
    const bool was = ngd_bf16_emul_set(e->cfg.kfac.factor_arith == NGD_BF16);
    const ngd_status st = update_core(o, e, t);
    ngd_bf16_emul_set(was);
    return st;
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
        s->pend.samples *= P;
    }
    const size_t nloc = (size_t)s->pend.rows;
    if (nloc == 0) return NGD_OK;
    if ((st = ngd_kf_grow_rows(o, e, nloc * P)) != NGD_OK) return st;
    const size_t rank = (size_t)o->comm.rank;
    for (int k = 0; k < 2; k++) {
        kf_factor *f = &s->f[k];
        if (!f->rows) continue;
        const size_t block = nloc * f->d;
        if (rank) memmove(f->rows + rank * block, f->rows, block * sizeof(float));
        if ((st = ngd_comm_allgather(o, f->rows, block * sizeof(float))) != NGD_OK) return st;
    }
    s->pend.rows = nloc * P;
    // the factored application's J = (1/c) 𝒢ᵀ𝒜: c = the global batch for a batch mean
    if (e->cfg.loss_average != NGD_LOSS_SUM) s->pend.c *= P;
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
            const double rn = (double)ngd_kf_brand_rank(&e->cfg) + (double)s->meta.cols;
            flops += 4.0 * d * rn * rn;
            break;
        }
        default: break;
        }
    }
    *owner_pays = true;
    return flops;
}

// Serial-heavy maintenance at step t (the driver's update_heavy): a Brand update of pending
// rows, or a refresh step's decompositions
static bool kfac_heavy(const ngd_entry *e, size_t t) {
    const kf_state *s = e->ms;
    if (s->meta.decided && t % e->cfg.kfac.T_i == 0) return true;
    if (!s->has_pend) return false;
    for (int i = 0; i < 2; i++)
        if (s->f[i].track == KF_BRAND && ngd_kf_brand_due(&e->cfg, t)) return true;
    return false;
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
            (st = ngd_comm_bcast(o, &f->cnt, sizeof f->cnt, root)) != NGD_OK)
            return st;
    }
    uint64_t extra[6] = {e->h.decomp_failures, e->h.decomp_retries, s->rng.s[0],
                         s->rng.s[1],          s->rng.s[2],         s->rng.s[3]};
    if ((st = ngd_comm_bcast(o, extra, sizeof extra, root)) != NGD_OK) return st;
    s->pub = 0;
    if (ngd_optim_mine(o, e)) return NGD_OK;
    e->h.decomp_failures = (size_t)extra[0], e->h.decomp_retries = (size_t)extra[1];
    memcpy(s->rng.s, extra + 2, sizeof s->rng.s);
    ngd_kf_health(e);
    return NGD_OK;
}

// ---- preconditioning ----

static size_t kfac_precond_bytes(const ngd_entry *e) {
    const kf_state *s = e->ms;
    const size_t dA = e->d_K, dG = e->d_out;
    // before the B tracks are decided, the largest rank they can take
    const size_t cA = s->meta.decided ? s->f[KF_A].cap : dA,
                 cG = s->meta.decided ? s->f[KF_G].cap : dG;
    size_t b = ngd_lri_apply2_ws(dG, cG, dA, cA);
    if (e->cfg.method == NGD_METHOD_KFAC) b = NGD_MAX(b, ngd_kfac_precond_ws(dG, dA));
    if (ngd_kf_inv_wanted(e)) b = NGD_MAX(b, ngd_kfac_inv_ws(NGD_MAX(dG, dA)));
    return b;
}

// The work-size query of the byte scratch (method.h scratch_bytes): observe's chunk, each
// factor's maintenance on its track, the factored application of rows_cap rows.
static size_t kfac_scratch_bytes(const ngd_entry *e) {
    const kf_state *s = e->ms;
    size_t b = observe_ws(e);
    if (!s->meta.decided) return b; // the tracks' needs are planned once decided
    for (int i = 0; i < 2; i++) {
        const kf_factor *f = &s->f[i];
        switch (f->track) {
        case KF_EVD: b = NGD_MAX(b, ngd_kf_refresh_evd_ws(f->d)); break;
        case KF_RSVD:
            b = NGD_MAX(b, ngd_kf_refresh_randomized_ws(e, f, NGD_MIN(e->cfg.kfac.rank, f->d)));
            break;
        case KF_BRAND: b = NGD_MAX(b, ngd_kf_brand_ws(e, f)); break;
        default: break;
        }
    }
    return NGD_MAX(b, ngd_kf_factored_ws(e, (size_t)s->meta.rows_cap));
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
    const size_t m = (size_t)s->pend.rows, dA = e->d_K, dG = e->d_out;
    const size_t kb = ngd_factored_precond_ws(LG->r, LA->r, m);
    const size_t xy = (dG + dA) * m;
    if (!kb || !s->pend.c) return NGD_ERR_ARG;
    float *X = ngd_kf_scratch(o, xy * sizeof(float) + kb);
    if (!X) return NGD_ERR_INTERNAL; // (planned: ngd_kf_factored_ws)
    float *Y = X + dG * m;
    ngd_view Xv = ngd_view_rm(X, dG, m, m), Yv = ngd_view_rm(Y, dA, m, m);
    ngd_status st =
        ngd_factored_precond(LG, lG, mG, LA, lA, mA, ngd_cview_rm(s->f[KF_G].rows, m, dG, dG),
                             ngd_cview_rm(s->f[KF_A].rows, m, dA, dA), Xv, Yv, X + xy, kb);
    if (st) return st;
    return ngd_factored_update(S, 0.0f, (float)(1.0 / (double)s->pend.c), ngd_cv(Xv), ngd_cv(Yv));
}

static void precondition_core(ngd_optim *o, ngd_entry *e, const float *G, float *P, float *ws) {
    kf_state *s = e->ms;
    const ngd_kfac_options *k = &e->cfg.kfac;
    const size_t dA = e->d_K, dG = e->d_out;
    const kf_factor *fA = &s->f[KF_A], *fG = &s->f[KF_G];
    if (!s->meta.decided ||
        (fA->cnt.rank == 0 && fG->cnt.rank == 0 && k->identity_init == NGD_IDINIT_IN_FACTOR)) {
        memcpy(P, G, e->n * sizeof(float)); // no curvature yet
        s->pend.rows = s->pend.c = 0;
        return;
    }
    float *DA = ws, *DG = ws + dA;
    void *kws = ws + dA + dG;
    const size_t kbytes = kfac_precond_bytes(e);
    ngd_cview J = ngd_cview_rm(G, dG, dA, dA);
    ngd_view S = ngd_view_rm(P, dG, dA, dA);
    const bool em = k->factor_arith == NGD_BF16;
    if (em) { // bf16 operand: the gradient rounded into P (the kernels allow S = J)
        for (size_t i = 0; i < e->n; i++)
            P[i] = ngd_bf16_round1(G[i]);
        J = ngd_cv(S);
    }
    ngd_status st;
    if (ngd_kf_eigenbasis_ok(e)) { // #k-fac (kfac.c); from this step's rows where they pay
        const size_t m = (size_t)s->pend.rows;
        float *X = s->meta.factored && m > 0 && s->pend.c && !em
                       ? ngd_kf_scratch(o, (dG + dA) * m * sizeof(float))
                       : NULL; // (planned: ngd_kf_factored_ws)
        ngd_kfac_rows rows = {0};
        if (X)
            rows = (ngd_kfac_rows){ngd_cview_rm(s->f[KF_G].rows, m, dG, dG),
                                   ngd_cview_rm(s->f[KF_A].rows, m, dA, dA),
                                   (float)(1.0 / (double)s->pend.c), ngd_view_rm(X, m, dG, dG),
                                   ngd_view_rm(X + dG * m, m, dA, dA)};
        st = ngd_kf_precond_eigenbasis(e, J, X ? &rows : NULL, S, DA, DG, kws, kbytes);
    } else {
        // #low-rank-inverse on both sides: λ_F = λ_rel·max D_F + ρ^k, μ by the tail model
        float lam[2], mu[2];
        const kf_factor *fs[2] = {fA, fG};
        for (int i = 0; i < 2; i++) {
            const kf_factor *f = fs[i];
            const float dmax = f->cnt.rank ? f->D[0] : 0.0f;
            lam[i] = k->damping_rel * dmax + ngd_kf_id_shift(e, f);
            if (em) // the damping's product and sum rounded
                lam[i] = ngd_bf16_round1(ngd_bf16_round1(ngd_bf16_round1(k->damping_rel) * dmax) +
                                         ngd_bf16_round1(ngd_kf_id_shift(e, f)));
            if (!(lam[i] > 0.0f)) lam[i] = 1.0f; // nothing to scale against: plain gradient
            lam[i] = kf_lam_floor(lam[i]);
            mu[i] = (k->tail == NGD_TAIL_MIN_KEPT && f->cnt.rank) ? f->D[f->cnt.rank - 1] : 0.0f;
        }
        ngd_lowrank LA = kf_rep(fA), LG = kf_rep(fG);
        st = NGD_ERR_STATE;
        if (s->meta.factored && s->pend.rows > 0 && LA.r > 0 && LG.r > 0 &&
            factored_pays(e, (size_t)s->pend.rows, LG.r, LA.r))
            st = factored(o, e, &LG, lam[KF_G], mu[KF_G], &LA, lam[KF_A], mu[KF_A], S);
        if (st != NGD_OK)
            st = ngd_lri_apply2(&LG, lam[KF_G], mu[KF_G], &LA, lam[KF_A], mu[KF_A], J, S, kws,
                                kbytes);
    }
    s->pend.rows = s->pend.c = 0; // this step's rows are used up
    if (st) { // cannot happen with the planned workspace; never leave P undefined
        ngd_optim_log(o, "layer '%s': preconditioning failed (%d); plain gradient used", e->name,
                      (int)st);
        memcpy(P, G, e->n * sizeof(float));
    }
}

// The preconditioning, under emulated bf16 arithmetic when kfac.factor_arith asks for it.
static void kfac_precondition(ngd_optim *o, ngd_entry *e, const float *G, float *P, float *ws) {
    const bool was = ngd_bf16_emul_set(e->cfg.kfac.factor_arith == NGD_BF16);
    precondition_core(o, e, G, P, ws);
    ngd_bf16_emul_set(was);
}

// ---- checkpoints and introspection ----

static size_t kfac_arrays(ngd_entry *e, ngd_state_array *out, size_t cap) {
    kf_state *s = e->ms;
    kf_factor *A = &s->f[KF_A], *G = &s->f[KF_G];
#define EA_N(f) ((f)->ea ? (f)->d * (f)->d : 0)
    ngd_state_array a[] = {
        {"#meta", &s->meta, 6, NGD_ARR_U64},
        {"A.ea", A->ea, EA_N(A), NGD_ARR_F32},
        {"A.U", A->U, A->U ? A->d * A->cap : 0, NGD_ARR_F32},
        {"A.D", A->D, A->D ? A->cap : 0, NGD_ARR_F32},
        {"A.cnt", &A->cnt, 4, NGD_ARR_U64},
        {"G.ea", G->ea, EA_N(G), NGD_ARR_F32},
        {"G.U", G->U, G->U ? G->d * G->cap : 0, NGD_ARR_F32},
        {"G.D", G->D, G->D ? G->cap : 0, NGD_ARR_F32},
        {"G.cnt", &G->cnt, 4, NGD_ARR_U64},
        {"rng", s->rng.s, 4, NGD_ARR_U64},
        {"~A.pend", A->pend, EA_N(A), NGD_ARR_F32}, // '~': transient (not state bytes)
        {"~G.pend", G->pend, EA_N(G), NGD_ARR_F32},
        {"~A.rows", A->rows, A->rows_cap * A->d, NGD_ARR_F32},
        {"~G.rows", G->rows, G->rows_cap * G->d, NGD_ARR_F32},
        {"~pend", &s->pend, 3, NGD_ARR_U64},
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
    kf_meta m;
    if (n != 6) return ngd_optim_fail(o, NGD_ERR_FORMAT, "'%s': bad #meta", e->name);
    memcpy(&m, v, sizeof m);
    // (the state of a layer taken from its rows has their buffers: it needs factored_apply)
    if (m.factored == 1 && !e->cfg.kfac.factored_apply)
        return ngd_optim_fail(o, NGD_ERR_FORMAT,
                              "'%s': saved from the batch's rows (kfac.factored_apply): load it "
                              "with kfac.factored_apply on",
                              e->name);
    // (row buffers hold rows_cap rows of each kept factor, which the file holds as f32
    // numbers too: a larger rows_cap is no file's, and would size buffers of GBs)
    const uint64_t dmin = NGD_MIN(s->f[KF_A].d, s->f[KF_G].d);
    if (m.decided > 1 || m.factored > 1 || m.cols > ((uint64_t)1 << 32) ||
        m.rows_cap > ((uint64_t)1 << 32) || (o->load_len && m.rows_cap > o->load_len / 4 / dmin) ||
        (m.decided && (m.track[0] < KF_EVD || m.track[0] > KF_BRAND || m.track[1] < KF_EVD ||
                       m.track[1] > KF_BRAND)))
        return ngd_optim_fail(o, NGD_ERR_FORMAT, "'%s': bad #meta", e->name);
    s->redecide = m.decided && !m.factored && e->cfg.kfac.factored_apply;
    // a saved Brand track must be one the layer's first statistics could have chosen
    // (#track-selection: r_B + cols < d; one that does not hold failed every later step),
    // for a layer that takes the saved tracks (undecided) and for one that keeps its own (the
    // columns are the file's); the other tracks' shapes are the arrays' to compare
    for (int k = 0; k < 2 && m.decided; k++) {
        const size_t d = s->f[k].d, rB = ngd_kf_brand_rank(&e->cfg);
        if (m.track[k] == KF_BRAND &&
            !(m.cols >= 1 && ngd_kf_brand_track_ok(true, rB, (size_t)m.cols, d)))
            return ngd_optim_fail(o, NGD_ERR_FORMAT,
                                  "'%s': saved with factor %c on the Brand track at %llu columns "
                                  "a step, which r_B = %zu and its width %zu do not allow",
                                  e->name, k ? 'G' : 'A', (unsigned long long)m.cols, rB, d);
    }
    if (!s->meta.decided && m.decided) { // an undecided B layer takes the saved tracks
        s->meta = m;
        s->meta.decided = 0; // ngd_kf_apply_tracks sets it once the state is allocated
        return ngd_kf_apply_tracks(o, e);
    }
    if (s->meta.decided && !m.decided && !s->stashed) {
        // saved before its first statistics (a B layer's tracks are chosen there): the layer
        // becomes undecided as it was then, and decides again at its next statistics; its
        // factors are kept aside until the load has succeeded (kfac_load_undo, _commit)
        for (int j = 0; j < 2; j++) {
            s->stash[j] = s->f[j];
            memset(&s->f[j], 0, sizeof s->f[j]);
            s->f[j].d = s->stash[j].d;
        }
        s->stash_meta = s->meta;
        s->stashed = 1;
        s->meta = m;
        ngd_free(s->inv[KF_A]), ngd_free(s->inv[KF_G]); // (derived: formed again when needed)
        s->inv[KF_A] = s->inv[KF_G] = NULL;
        s->inv_ok = 0;
        o->planned = false;
        return NGD_OK;
    }
    if (s->meta.decided != m.decided ||
        (m.decided && (s->meta.track[0] != m.track[0] || s->meta.track[1] != m.track[1])))
        return ngd_optim_fail(o, NGD_ERR_FORMAT,
                              "'%s': saved with other factor tracks (%llu/%llu, "
                              "this optimizer has %llu/%llu)",
                              e->name, (unsigned long long)m.track[0],
                              (unsigned long long)m.track[1], (unsigned long long)s->meta.track[0],
                              (unsigned long long)s->meta.track[1]);
    if (m.factored) s->meta.factored = 1;
    if (!s->meta.cols) s->meta.cols = m.cols;
    if (m.rows_cap > s->meta.rows_cap) return ngd_kf_grow_rows(o, e, (size_t)m.rows_cap);
    return NGD_OK;
}

// A checkpoint's counters, checked before they are loaded (the file's CRC says only that it
// was not damaged): a factor's rank within its (U, D) (a rank of 1000 for a 4-wide factor
// read past D), the pending rows within the row buffers as load_meta left them (a count near
// 2^64 wrapped the next observe's room check, which then wrote past the buffer), and the
// sample and row counts that divide the statistics nonzero where statistics are pending
static ngd_status kfac_check_u64(ngd_optim *o, ngd_entry *e, const char *name, const uint64_t *v,
                                 size_t n) {
    const kf_state *s = e->ms;
    if ((!strcmp(name, "A.cnt") || !strcmp(name, "G.cnt")) && n == 4) {
        const kf_factor *f = &s->f[name[0] == 'A' ? KF_A : KF_G];
        kf_counts c;
        memcpy(&c, v, sizeof c);
        const size_t held = f->U && f->D ? NGD_MIN(f->cap, f->d) : 0;
        if (c.rank > held)
            return ngd_optim_fail(o, NGD_ERR_FORMAT,
                                  "'%s': factor %c has rank %llu, its representation holds %zu",
                                  e->name, name[0], (unsigned long long)c.rank, held);
        return NGD_OK;
    }
    if (!strcmp(name, "~pend") && n == 3) {
        kf_pending p;
        memcpy(&p, v, sizeof p);
        uint64_t room = UINT64_MAX;
        bool kept = false;
        for (int k = 0; k < 2; k++)
            if (s->f[k].rows) room = NGD_MIN(room, (uint64_t)s->f[k].rows_cap), kept = true;
        if (!kept) room = 0;
        if (p.rows > room || (p.rows && !p.c) || p.samples > ((uint64_t)1 << 48))
            return ngd_optim_fail(o, NGD_ERR_FORMAT,
                                  "'%s': pending statistics of %llu samples and %llu rows (c %llu) "
                                  "do not fit its row buffers of %llu rows",
                                  e->name, (unsigned long long)p.samples,
                                  (unsigned long long)p.rows, (unsigned long long)p.c,
                                  (unsigned long long)room);
    }
    return NGD_OK;
}

// A successful load: factors kept aside for an undo are freed
static void kfac_load_commit(ngd_entry *e) {
    kf_state *s = e->ms;
    if (!s || !s->stashed) return;
    ngd_kf_factor_free(&s->stash[KF_A]), ngd_kf_factor_free(&s->stash[KF_G]);
    s->stashed = 0;
}

// A failed load's undo: a layer that took the saved tracks goes back to undecided (its
// factors freed, as ngd_kf_apply_tracks leaves them on failure); a decided one gets back its
// flags (row buffers it grew keep their capacity, which changes no result)
static void kfac_load_undo(ngd_optim *o, ngd_entry *e, const uint64_t *before) {
    kf_state *s = e->ms;
    kf_meta b;
    memcpy(&b, before, sizeof b);
    s->redecide = 0;
    if (s->stashed) { // (made undecided by this load: its factors back, as they were)
        ngd_kf_factors_undecided(s);
        s->f[KF_A] = s->stash[KF_A], s->f[KF_G] = s->stash[KF_G];
        s->meta = s->stash_meta;
        s->stashed = 0;
        o->planned = false;
        return;
    }
    if (!b.decided && s->meta.decided) {
        ngd_kf_factors_undecided(s);
        s->meta = b;
        o->planned = false;
        return;
    }
    s->meta.factored = b.factored;
    s->meta.cols = b.cols;
}

// 'K' / 'C': the dense EA (zero start, without the identity term; started at I under
// identity_init = in_factor) or, on the B-KFAC Brand track, U D Uᵀ; 'k' / 'c': U D Uᵀ, the
// representation the preconditioner uses.
static ngd_status kfac_factor_dense(const ngd_optim *o, const ngd_entry *e, char which,
                                    float *out) {
    ngd_optim *mo = (ngd_optim *)(uintptr_t)o;
    const kf_state *s = e->ms;
    const kf_factor *f = &s->f[(which == 'K' || which == 'k') ? KF_A : KF_G];
    const size_t d = f->d;
    if (!s->meta.decided || f->cnt.ea_updates == 0) // (K-FAC and RS-KFAC decide at the start)
        return ngd_optim_fail(mo, NGD_ERR_STATE, "layer '%s': no statistics yet", e->name);
    if ((which == 'K' || which == 'C') && f->ea) {
        memcpy(out, f->ea, d * d * sizeof(float));
        return NGD_OK;
    }
    const size_t r = (size_t)f->cnt.rank;
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
        .precondition = kfac_precondition, .precond_ws = kfac_precond_ws,                          \
        .scratch_bytes = kfac_scratch_bytes, .rule = &ngd_rule_kfac, .arrays = kfac_arrays,        \
        .loaded = ngd_kf_health, .rescale = kfac_rescale, .load_meta = kfac_load_meta,             \
        .load_undo = kfac_load_undo, .load_commit = kfac_load_commit, .check_u64 = kfac_check_u64, \
        .factor_dense = kfac_factor_dense, .combine = kfac_combine, .work = kfac_work,             \
        .publish = kfac_publish, .update_heavy = kfac_heavy,                                       \
    }

const ngd_method_ops ngd_kfac_ops = KFAC_OPS("kfac");
const ngd_method_ops ngd_rskfac_ops = KFAC_OPS("rskfac");
const ngd_method_ops ngd_srekfac_ops = KFAC_OPS("srekfac");
const ngd_method_ops ngd_bkfac_ops = KFAC_OPS("bkfac");
const ngd_method_ops ngd_brkfac_ops = KFAC_OPS("brkfac");
const ngd_method_ops ngd_brckfac_ops = KFAC_OPS("brckfac");
