/*
 * test_kfac.c — the K-FAC family through the public API
 * (docs/algorithms.md#k-fac-family-test-properties), each step checked against a float64 reference
 * written here from those equations:
 *   A_b = (1/n) Σ āāᵀ (ā = [a, 1]), Γ_b = (1/n) Σ g̃g̃ᵀ with g̃ = n·g (batch-mean loss);
 *   F̄ := ρF̄ + (1−ρ)F_b from zero, identity term ρ^k (#exponential-average, #identity-init);
 *   K-FAC exact damping = solve(kron(Γ̄', Ā') + λ_K I, vec_r(J)) (#k-fac, P10);
 *   low-rank methods S = (Γ̄ + λ_G)^{-1} J (Ā + λ_A)^{-1}, λ_F = λ_rel·λ_max(F̄) + ρ^k
 *   (#low-rank-inverse).
 * The kernels themselves are tested in test_lowrank.c; here the optimizer's statistics
 * scaling, schedules (stale decompositions between T_i steps), tracks, clipping, weight
 * decay and health readouts are.
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bf16.h"
#include "harness.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#include "lrref.h"
#include "method.h"
#include "ngd.h"
#include "ref.h"
#include "tproblem.h"

// ---- a single layer driven by hand, with its f64 shadow ----
typedef struct {
    size_t n, din, dA, dG;
    size_t batch; // samples the n rows belong to (0: n, a fully connected layer's)
    float *W, *b, *gW, *gb, *a, *g, *P;
    double *EA, *EG; // f64 exponential averages from zero (A: dA², G: dG²)
    size_t k;        // EA updates
    ref_rng rng;
} layer_t;

static void layer_init(layer_t *L, size_t n, size_t din, size_t dout, unsigned long long seed) {
    memset(L, 0, sizeof *L);
    L->n = n, L->din = din, L->dA = din + 1, L->dG = dout;
    L->W = calloc(dout * din, 4), L->gW = calloc(dout * din, 4);
    L->b = calloc(dout, 4), L->gb = calloc(dout, 4);
    L->a = calloc(n * din, 4), L->g = calloc(n * dout, 4);
    L->P = calloc(dout * L->dA, 4);
    L->EA = calloc(L->dA * L->dA, 8), L->EG = calloc(dout * dout, 8);
    L->rng.s = seed;
}

static void layer_free(layer_t *L) {
    free(L->W), free(L->gW), free(L->b), free(L->gb), free(L->a), free(L->g), free(L->P);
    free(L->EA), free(L->EG);
}

static int layer_add(layer_t *L, ngd_optim *o) {
    ngd_layer l = {"fc", L->W, L->gW, L->dG, L->din, L->b, L->gb, NULL};
    int id = -1;
    CHECK(ngd_optim_add_layer(o, &l, &id) == NGD_OK);
    return id;
}

// New random statistics and gradient; folds them into the f64 EAs when `stats`.
static void layer_draw(layer_t *L, double rho, bool stats) {
    double *t = malloc(sizeof(double) * (L->n * (L->din + L->dG) + L->dG * L->dA));
    double *ta = t, *tg = t + L->n * L->din, *tj = tg + L->n * L->dG;
    ref_fill(&L->rng, ta, L->n * L->din, -1, 1);
    ref_fill(&L->rng, tg, L->n * L->dG, -0.2, 0.2);
    ref_fill(&L->rng, tj, L->dG * L->dA, -1, 1);
    ref_to_float(ta, L->a, L->n * L->din);
    ref_to_float(tg, L->g, L->n * L->dG);
    for (size_t i = 0; i < L->dG; i++) {
        for (size_t j = 0; j < L->din; j++)
            L->gW[i * L->din + j] = (float)tj[i * L->dA + j];
        L->gb[i] = (float)tj[i * L->dA + L->din];
    }
    free(t);
    if (!stats) return;
    const double nn = (double)L->n;
    for (size_t x = 0; x < L->dA * L->dA; x++)
        L->EA[x] *= rho;
    for (size_t x = 0; x < L->dG * L->dG; x++)
        L->EG[x] *= rho;
    for (size_t r = 0; r < L->n; r++) {
        for (size_t i = 0; i < L->dA; i++) {
            double ai = i < L->din ? (double)L->a[r * L->din + i] : 1.0;
            for (size_t j = 0; j < L->dA; j++) {
                double aj = j < L->din ? (double)L->a[r * L->din + j] : 1.0;
                L->EA[i * L->dA + j] += (1 - rho) / nn * ai * aj;
            }
        }
        for (size_t i = 0; i < L->dG; i++)
            for (size_t j = 0; j < L->dG; j++)
                L->EG[i * L->dG + j] += (1 - rho) / nn * (nn * (double)L->g[r * L->dG + i]) *
                                        (nn * (double)L->g[r * L->dG + j]);
    }
    L->k++;
}

static void layer_observe(layer_t *L, ngd_optim *o, int id) {
    if (ngd_optim_layer_wants_stats(o, id))
        CHECK(ngd_optim_observe(o, id, L->batch ? L->batch : L->n,
                                ngd_matrix_f32(L->a, L->n, L->din),
                                ngd_matrix_f32(L->g, L->n, L->dG)) == NGD_OK);
}

// J as the f64 d_G x d_A matrix [∇W | ∇b].
static void layer_J(const layer_t *L, double *J) {
    for (size_t i = 0; i < L->dG; i++) {
        for (size_t j = 0; j < L->din; j++)
            J[i * L->dA + j] = (double)L->gW[i * L->din + j];
        J[i * L->dA + L->din] = (double)L->gb[i];
    }
}

// X := (F + lam I)^{-1} X for X d x m (column-wise solve).
static void solve_shift(size_t d, const double *F, double lam, size_t m, double *X) {
    double *A = malloc(sizeof(double) * d * d);
    memcpy(A, F, sizeof(double) * d * d);
    for (size_t i = 0; i < d; i++)
        A[i * d + i] += lam;
    CHECK(lrref_solve(d, A, m, X) == 0);
    free(A);
}

// Per-factor reference: S = (EG + lG)^{-1} J (EA + lA)^{-1} for the factors EA, EG.
static void ref_per_factor(const layer_t *L, const double *EA, const double *EG, double lA,
                           double lG, double *S) {
    const size_t dA = L->dA, dG = L->dG;
    double *J = malloc(sizeof(double) * dG * dA), *Jt = malloc(sizeof(double) * dG * dA);
    layer_J(L, J);
    solve_shift(dG, EG, lG, dA, J);  // (EG + lG)^{-1} J
    ref_transpose(dG, dA, J, Jt);    // dA x dG
    solve_shift(dA, EA, lA, dG, Jt); // (EA + lA)^{-1} Jᵀ  (EA symmetric)
    ref_transpose(dA, dG, Jt, S);
    free(J), free(Jt);
}

static double max_eig(size_t d, const double *F) { return lrref_sym_norm2(d, F); }

static ngd_config kcfg(ngd_method m) {
    ngd_config c = ngd_config_default(m);
    c.kfac.T_u = 1, c.kfac.T_i = 1, c.kfac.clip = NGD_CLIP_NONE;
    c.kfac.rho = 0.9f;
    c.weight_decay = 0.0f;
    c.keep_last_update = true;
    return c;
}

static double rel_err(const float *got, const double *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d, den += want[i] * want[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

// Runs `steps` steps of method cfg on one layer; after each, compares the preconditioned
// gradient with the reference picked by `kind` (0 per-factor, 1 K-FAC exact, 2 π-damping).
// Statistics arrive every T_u steps; the decompositions (and so the factors and the identity
// term ρ^k the preconditioner sees) are those of the last step t with t mod T_i == 0: between
// them the reference keeps a snapshot of the averages and of k, and applies it to the
// current gradient.
static double run_vs_reference(ngd_config c, size_t n, size_t din, size_t dout, size_t steps,
                               int kind, bool id_in_factor) {
    layer_t L;
    layer_init(&L, n, din, dout, 42 + (unsigned long long)c.method);
    if (id_in_factor) {
        c.kfac.identity_init = NGD_IDINIT_IN_FACTOR;
        for (size_t i = 0; i < L.dA; i++)
            L.EA[i * L.dA + i] = 1;
        for (size_t i = 0; i < L.dG; i++)
            L.EG[i * L.dG + i] = 1;
    }
    ngd_optim *o;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    int id = layer_add(&L, o);
    const size_t dA = L.dA, dG = L.dG;
    double *S = malloc(sizeof(double) * dA * dG), worst = 0;
    double *SA = malloc(sizeof(double) * dA * dA), *SG = malloc(sizeof(double) * dG * dG);
    size_t ks = 0; // k of the snapshot
    for (size_t t = 0; t < steps; t++) {
        layer_draw(&L, (double)c.kfac.rho, t % c.kfac.T_u == 0);
        if (t % c.kfac.T_i == 0) { // a decomposition step: the preconditioner's new factors
            memcpy(SA, L.EA, sizeof(double) * dA * dA);
            memcpy(SG, L.EG, sizeof(double) * dG * dG);
            ks = L.k;
        }
        layer_observe(&L, o, id);
        CHECK(ngd_optim_step(o) == NGD_OK);
        CHECK(ngd_optim_last_update(o, id, L.P, dG * dA) == NGD_OK);
        const double sh = id_in_factor ? 0.0 : pow((double)c.kfac.rho, (double)ks);
        const double lr = (double)c.kfac.damping_rel;
        if (kind == 0) {
            ref_per_factor(&L, SA, SG, lr * max_eig(dA, SA) + sh, lr * max_eig(dG, SG) + sh, S);
        } else {
            // shifted factors A' = SA + sh I, G' = SG + sh I
            for (size_t i = 0; i < dA; i++)
                SA[i * dA + i] += sh;
            for (size_t i = 0; i < dG; i++)
                SG[i * dG + i] += sh;
            const double mA = max_eig(dA, SA), mG = max_eig(dG, SG), lk = lr * mA * mG;
            if (kind == 1) {
                // P10: solve(kron(G', A') + λ_K I, vec_r(J))
                const size_t N = dA * dG;
                double *K = calloc(N * N, sizeof(double));
                for (size_t i = 0; i < dG; i++)
                    for (size_t j = 0; j < dA; j++)
                        for (size_t p = 0; p < dG; p++)
                            for (size_t q = 0; q < dA; q++)
                                K[(i * dA + j) * N + p * dA + q] =
                                    SG[i * dG + p] * SA[j * dA + q] + (i == p && j == q ? lk : 0);
                layer_J(&L, S);
                CHECK(lrref_solve(N, K, 1, S) == 0);
                free(K);
            } else {
                const double pi =
                    sqrt((lrref_trace(dA, SA) / (double)dA) / (lrref_trace(dG, SG) / (double)dG));
                const double gp = sqrt(lk);
                // (G' + gp/π)^{-1} J (A' + π gp)^{-1}: per-factor with those dampings
                ref_per_factor(&L, SA, SG, pi * gp, gp / pi, S);
            }
            for (size_t i = 0; i < dA; i++)
                SA[i * dA + i] -= sh;
            for (size_t i = 0; i < dG; i++)
                SG[i * dG + i] -= sh;
        }
        double e = rel_err(L.P, S, dA * dG);
        if (e > worst) worst = e;
    }
    free(S), free(SA), free(SG);
    ngd_optim_free(o);
    layer_free(&L);
    return worst;
}

static void kfac_exact_damping_should_match_the_kronecker_solve(void) {
    double e = run_vs_reference(kcfg(NGD_METHOD_KFAC), 3, 5, 4, 5, 1, false);
    CHECK_MSG(e < 2e-4, "K-FAC exact damping vs kron solve: rel err %.3g", e);
    // the identity inside the factor (the [C-RS] start) is the same operator (P11)
    e = run_vs_reference(kcfg(NGD_METHOD_KFAC), 3, 5, 4, 5, 1, true);
    CHECK_MSG(e < 2e-4, "K-FAC, identity in factor: rel err %.3g", e);
    // more samples than outputs, a wider input than output
    e = run_vs_reference(kcfg(NGD_METHOD_KFAC), 6, 7, 3, 4, 1, false);
    CHECK_MSG(e < 2e-4, "K-FAC n=6 7->3: rel err %.3g", e);
}

// Statistics every 2 steps, decompositions every 3 (T_u != T_i, both != 1, as in the spec's
// defaults 10 / 50): between decompositions the preconditioner applies the factors, and the
// identity term ρ^k, of the last decomposition to each new gradient, while k (the EA updates)
// has moved on. Exact damping, π-damping, and the per-factor path of RS-KFAC at full rank;
// with the identity in the damping (the default) and inside the factor.
static void stale_decompositions_should_match_the_reference(void) {
    for (int v = 0; v < 5; v++) {
        const ngd_method m = v < 3 ? NGD_METHOD_KFAC : NGD_METHOD_RSKFAC;
        ngd_config c = kcfg(m);
        c.kfac.T_u = 2, c.kfac.T_i = 3, c.kfac.rank = 16;
        if (v == 1) c.kfac.damping_kind = NGD_KFAC_DAMP_FACTORED_PI;
        const int kind = v == 0 || v == 2 ? 1 : v == 1 ? 2 : 0;
        const bool in_factor = v == 2 || v == 4;
        const double e = run_vs_reference(c, 3, 5, 4, 10, kind, in_factor);
        CHECK_MSG(e < 2e-4, "%s (case %d), T_u 2, T_i 3: rel err %.3g", ngd_method_name(m), v, e);
    }
}

static void kfac_pi_damping_should_match_its_factored_solve(void) {
    ngd_config c = kcfg(NGD_METHOD_KFAC);
    c.kfac.damping_kind = NGD_KFAC_DAMP_FACTORED_PI;
    double e = run_vs_reference(c, 3, 5, 4, 5, 2, false);
    CHECK_MSG(e < 2e-4, "K-FAC π-damping: rel err %.3g", e);
}

// P16: RS-KFAC with r >= d is K-FAC's per-factor damping path.
static void rskfac_at_full_rank_should_match_per_factor_damping(void) {
    ngd_config c = kcfg(NGD_METHOD_RSKFAC);
    c.kfac.rank = 16;
    double e = run_vs_reference(c, 3, 5, 4, 5, 0, false);
    CHECK_MSG(e < 2e-4, "RS-KFAC r >= d: rel err %.3g", e);
    e = run_vs_reference(c, 3, 5, 4, 5, 0, true);
    CHECK_MSG(e < 2e-4, "RS-KFAC r >= d, identity in factor: rel err %.3g", e);
}

// Statistics of rank <= 9 < r = 10: the randomized eigendecompositions are exact, so the
// low-rank + identity inverse (tail zero) is the exact damped inverse.
static void randomized_methods_should_be_exact_on_low_rank_statistics(void) {
    const ngd_method ms[2] = {NGD_METHOD_RSKFAC, NGD_METHOD_SREKFAC};
    for (int i = 0; i < 2; i++) {
        ngd_config c = kcfg(ms[i]);
        c.kfac.rank = 10;
        double e = run_vs_reference(c, 3, 30, 25, 3, 0, false);
        CHECK_MSG(e < 1e-3, "%s on rank-9 statistics: rel err %.3g", ngd_method_name(ms[i]), e);
    }
}

// P16: without truncation (r_B >= accumulated rank) every B method is the dense EA.
static void brand_methods_without_truncation_should_match_the_dense_average(void) {
    for (int m = NGD_METHOD_BKFAC; m <= NGD_METHOD_BRCKFAC; m++) {
        ngd_config c = kcfg((ngd_method)m);
        c.kfac.rank = 12, c.kfac.reorth_every = 2, c.kfac.corr_mult = 1, c.kfac.corr_frac = 1;
        double e = run_vs_reference(c, 3, 30, 25, 4, 0, false); // 12 rows in all
        CHECK_MSG(e < 1e-3, "%s untruncated: rel err %.3g", ngd_method_name((ngd_method)m), e);
    }
}

// P4 / P5 at method level: with truncation the kept matrix never exceeds the average.
static void truncated_brand_factor_should_stay_below_the_average(void) {
    ngd_config c = kcfg(NGD_METHOD_BKFAC);
    c.kfac.rank = 6, c.kfac.reorth_every = 5;
    layer_t L;
    layer_init(&L, 3, 30, 25, 5);
    ngd_optim *o;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    int id = layer_add(&L, o);
    for (size_t t = 0; t < 40; t++) {
        layer_draw(&L, (double)c.kfac.rho, true);
        layer_observe(&L, o, id);
        CHECK(ngd_optim_step(o) == NGD_OK);
    }
    ngd_layer_health h;
    CHECK(ngd_optim_layer_health(o, id, &h) == NGD_OK);
    CHECK(h.rank_A == 6 && h.rank_G == 6 && h.decomp_failures == 0);
    const size_t dA = L.dA, dG = L.dG;
    float *F = malloc(sizeof(float) * dA * dA);
    double *Dd = malloc(sizeof(double) * dA * dA);
    const size_t ds[2] = {dA, dG};
    const char which[2] = {'k', 'c'};
    const double *ref[2] = {L.EA, L.EG};
    for (int s = 0; s < 2; s++) {
        const size_t d = ds[s];
        CHECK(ngd_optim_factor_dense(o, id, which[s], F, d) == NGD_OK);
        // the B-KFAC Brand track keeps no dense EA: 'K' is the representation too
        for (size_t x = 0; x < d * d; x++)
            Dd[x] = ref[s][x] - (double)F[x];
        const double nrm = lrref_sym_norm2(d, ref[s]);
        const double lmin = lrref_sym_min_eig(d, Dd);
        CHECK_MSG(lmin > -1e-4 * nrm, "factor %c: λ_min(F̄ − F̂) = %.3g (‖F̄‖ %.3g)", which[s], lmin,
                  nrm);
        // Weyl (P4): every kept eigenvalue is at most the matching one of the average, and
        // the kept top eigenvalue is not far below it
        double *w = malloc(sizeof(double) * d), *V = malloc(sizeof(double) * d * d);
        double *Fd = malloc(sizeof(double) * d * d), *wf = malloc(sizeof(double) * d);
        ref_to_double(F, Fd, d * d);
        lrref_sym_eig(d, ref[s], w, V); // descending
        lrref_sym_eig(d, Fd, wf, V);
        for (size_t i = 0; i < 6; i++)
            CHECK_MSG(wf[i] <= w[i] + 1e-5 * nrm, "factor %c: δ_%zu %.6g > λ_%zu %.6g", which[s],
                      i + 1, wf[i], i + 1, w[i]);
        CHECK_MSG(wf[0] >= 0.5 * w[0], "factor %c: δ_1 %.4g, λ_1 %.4g", which[s], wf[0], w[0]);
        free(Fd), free(wf);
        free(w), free(V);
    }
    free(F), free(Dd);
    ngd_optim_free(o);
    layer_free(&L);
}

static char g_log[4096];
static void capture(void *user, const char *msg) {
    (void)user;
    strncat(g_log, msg, sizeof g_log - strlen(g_log) - 2);
    strcat(g_log, "\n");
}

// P15 at method level: Brand iff fully connected and r_B + n < d.
static void tracks_should_follow_the_brand_rule(void) {
    struct {
        size_t n, R, din, dout;
        const char *want;
    } cases[] = {
        // r_B + n = 12 + 4 = 16: d = 16 is not Brand (RSVD, 12 < 16), d = 17 is
        {4, 1, 15, 17, "A (16) on the RSVD track, G (17) on the Brand track"},
        {4, 1, 30, 15, "A (31) on the Brand track, G (15) on the RSVD track"},
        {4, 1, 30, 12, "A (31) on the Brand track, G (12) on the EVD track"}, // d <= rank
        {2, 4, 30, 25, "A (31) on the RSVD track, G (25) on the RSVD track"}, // conv-like
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ngd_config c = kcfg(NGD_METHOD_BKFAC);
        c.kfac.rank = 12;
        c.log_fn = capture;
        g_log[0] = 0;
        const size_t n = cases[i].n, R = cases[i].R, din = cases[i].din, dout = cases[i].dout;
        layer_t L;
        layer_init(&L, n * R, din, dout, 9);
        ngd_optim *o;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        int id = layer_add(&L, o);
        layer_draw(&L, 0.9, false);
        CHECK(ngd_optim_observe(o, id, n, ngd_matrix_f32(L.a, n * R, din),
                                ngd_matrix_f32(L.g, n * R, dout)) == NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
        CHECK_MSG(strstr(g_log, cases[i].want) != NULL, "case %zu: log '%s', want '%s'", i, g_log,
                  cases[i].want);
        ngd_optim_free(o);
        layer_free(&L);
    }
}

// The K-FAC rule: P scaled by the clip factor, decoupled weight decay from wd_start.
static void clips_and_weight_decay_should_follow_the_spec(void) {
    for (int kind = 0; kind < 3; kind++) { // 0 rms, 1 kl, 2 none + weight decay
        ngd_config c = kcfg(NGD_METHOD_KFAC);
        c.lr = 0.5f;
        c.kfac.clip = kind == 0 ? NGD_CLIP_RMS : kind == 1 ? NGD_CLIP_KL : NGD_CLIP_NONE;
        c.kfac.clip_kappa = kind == 0 ? 1e-3f : 1e-6f;
        c.weight_decay = kind == 2 ? 0.1f : 0.0f;
        c.kfac.wd_start = 2;
        layer_t L;
        layer_init(&L, 3, 5, 4, 17);
        ref_fill(&L.rng, L.EA, 1, 0, 1); // (advance the stream; EA itself is unused)
        for (size_t x = 0; x < L.dG * L.din; x++)
            L.W[x] = 0.1f * (float)((int)(x % 7) - 3);
        ngd_optim *o;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        int id = layer_add(&L, o);
        float *W0 = malloc(sizeof(float) * L.dG * L.din);
        double *J = malloc(sizeof(double) * L.dG * L.dA);
        for (size_t t = 0; t < 4; t++) {
            memcpy(W0, L.W, sizeof(float) * L.dG * L.din);
            layer_draw(&L, 0.9, true);
            layer_observe(&L, o, id);
            CHECK(ngd_optim_step(o) == NGD_OK);
            CHECK(ngd_optim_last_update(o, id, L.P, L.dG * L.dA) == NGD_OK);
            layer_J(&L, J);
            double ss = 0, dot = 0;
            for (size_t x = 0; x < L.dG * L.dA; x++)
                ss += (double)L.P[x] * (double)L.P[x], dot += (double)L.P[x] * J[x];
            double nu = 1.0;
            if (kind == 0) nu = fmin(1.0, 1e-3 / sqrt(ss / (double)(L.dG * L.dA)));
            if (kind == 1) nu = fmin(1.0, sqrt(1e-6 / (0.25 * fabs(dot))));
            CHECK(nu < 1.0 || kind == 2); // the clip is active in this test
            const double wd = (kind == 2 && t >= 2) ? 0.1 : 0.0;
            double worst = 0;
            for (size_t i = 0; i < L.dG; i++)
                for (size_t j = 0; j < L.din; j++) {
                    const double w0 = (double)W0[i * L.din + j];
                    const double want = w0 - 0.5 * (nu * (double)L.P[i * L.dA + j] + wd * w0);
                    worst = fmax(worst, fabs((double)L.W[i * L.din + j] - want));
                }
            CHECK_MSG(worst < 1e-6, "clip kind %d step %zu: |W − want| = %.3g (‖P‖² %.3g)", kind, t,
                      worst, ss);
        }
        free(W0), free(J);
        ngd_optim_free(o);
        layer_free(&L);
    }
}

// Every method trains the small linear problem (MSE falls well below its start).
static void every_method_should_reduce_the_training_loss(void) {
    for (int m = NGD_METHOD_KFAC; m <= NGD_METHOD_BRCKFAC; m++) {
        ngd_config c = ngd_config_default((ngd_method)m);
        c.lr = 0.05f, c.kfac.T_u = 2, c.kfac.T_i = 4, c.kfac.rank = 8, c.kfac.wd_start = 1000;
        tp_problem p;
        tp_init(&p, 4, 30, 20, 5, 3);
        ngd_optim *o;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        CHECK(tp_register(&p, o) == NGD_OK);
        double first = 0, last = 0;
        for (size_t s = 0; s < 60; s++) {
            double l = tp_forward_backward(&p, o, s % 4, 1.0f);
            CHECK(ngd_optim_step(o) == NGD_OK);
            if (s < 4) first += l;
            if (s >= 56) last += l;
        }
        CHECK_MSG(last < 0.5 * first, "%s: loss %.4g -> %.4g", ngd_method_name((ngd_method)m),
                  first / 4, last / 4);
        ngd_optim_free(o);
        tp_free(&p);
    }
}

// #loss-scale: training with a loss scale that changes every step (powers of two, from 2^16
// at step 0 with the default init_grad_scale of 1, as a GradScaler starts) equals unscaled
// training, whether the scale is set before the step's observe calls or only after them
// (ngd.torch's order: a GradScaler's scale reaches libngd at step()), for every method of
// the family, with and without the factored application from the batch's rows.
static void every_method_should_be_invariant_to_when_the_scale_is_set(void) {
    const float scales[10] = {65536, 65536, 1024, 4096, 1, 256, 256, 8, 32768, 2};
    for (int m = NGD_METHOD_KFAC; m <= NGD_METHOD_BRCKFAC; m++)
        for (int fa = 0; fa < 2; fa++) {
            ngd_config c = ngd_config_default((ngd_method)m);
            c.lr = 0.05f, c.kfac.T_u = 2, c.kfac.T_i = 3, c.kfac.rank = 8, c.kfac.wd_start = 1000;
            c.kfac.factored_apply = fa;
            tp_problem p[3];
            ngd_optim *o[3];
            for (int v = 0; v < 3; v++) { // unscaled, scale set before observe, after observe
                tp_init(&p[v], 4, 30, 20, 5, 3);
                CHECK(ngd_optim_create(&c, &o[v]) == NGD_OK);
                CHECK(tp_register(&p[v], o[v]) == NGD_OK);
            }
            for (size_t st = 0; st < 10; st++) {
                tp_forward_backward(&p[0], o[0], st % 4, 1.0f);
                CHECK(ngd_optim_step(o[0]) == NGD_OK);
                CHECK(ngd_optim_set_grad_scale(o[1], scales[st]) == NGD_OK);
                tp_forward_backward(&p[1], o[1], st % 4, scales[st]);
                CHECK(ngd_optim_step(o[1]) == NGD_OK);
                tp_forward_backward(&p[2], o[2], st % 4, scales[st]);
                CHECK(ngd_optim_set_grad_scale(o[2], scales[st]) == NGD_OK);
                CHECK(ngd_optim_step(o[2]) == NGD_OK);
            }
            // (the same arithmetic up to the f32 roundings of the scaled statistics and their
            //  decompositions; a statistic off by (s_t/s_{t-1})² moves W by O(0.1))
            for (int v = 1; v < 3; v++) {
                char what[96];
                snprintf(what, sizeof what, "%s factored %d, scale set %s observe: W1",
                         ngd_method_name((ngd_method)m), fa, v == 1 ? "before" : "after");
                CHECK_TENSOR(p[v].W1, p[0].W1, 20 * 30, 2e-3, 1e-4, what);
                what[strlen(what) - 1] = '2';
                CHECK_TENSOR(p[v].W2, p[0].W2, 5 * 20, 2e-3, 1e-4, what);
                // the G factors themselves (the average, or the kept low-rank form): B-KFAC's
                // steps here barely use them, the statistics must still be unscaled
                const int ids[2] = {p[0].id1, p[0].id2};
                const size_t dG[2] = {20, 5};
                for (int l = 0; l < 2; l++) {
                    float G0[400], Gv[400];
                    CHECK(ngd_optim_factor_dense(o[0], ids[l], 'C', G0, dG[l]) == NGD_OK &&
                          ngd_optim_factor_dense(o[v], ids[l], 'C', Gv, dG[l]) == NGD_OK);
                    double mx = 0;
                    for (size_t i = 0; i < dG[l] * dG[l]; i++)
                        mx = fmax(mx, fabs((double)G0[i]));
                    snprintf(what, sizeof what, "%s factored %d, scale set %s observe: layer %d G",
                             ngd_method_name((ngd_method)m), fa, v == 1 ? "before" : "after", l);
                    CHECK_TENSOR(Gv, G0, dG[l] * dG[l], 1e-3, 1e-3 * mx, what);
                }
            }
            for (int v = 0; v < 3; v++)
                ngd_optim_free(o[v]), tp_free(&p[v]);
        }
}

// A factor without curvature (a layer whose inputs are all 0: dead units upstream, no bias;
// or whose output gradients are all 0): its damping is the identity term ρ^k alone, which
// underflowed (ρ = 0.5: within 130 statistics steps; the default 0.95: ~1700), and 0·(1/λ) =
// NaN went into the weights with NGD_OK. Every method, π-damping too: the weights stay as
// they are (a zero gradient) and finite, nothing counted.
static void a_factor_without_curvature_should_keep_the_weights_finite(void) {
    enum { DI = 6, DO = 4, N = 8 };
    for (int m = NGD_METHOD_KFAC; m <= NGD_METHOD_BRCKFAC + 1; m++)
        for (int dead = 0; dead < 2; dead++) { // dead inputs, or zero output gradients
            const bool pi = m > NGD_METHOD_BRCKFAC;
            ngd_config c = ngd_config_default(pi ? NGD_METHOD_KFAC : (ngd_method)m);
            c.kfac.T_u = 1, c.kfac.T_i = 1, c.kfac.rho = 0.5f, c.kfac.rank = 2;
            c.weight_decay = 0.0f;
            if (pi) c.kfac.damping_kind = NGD_KFAC_DAMP_FACTORED_PI;
            float W[DO * DI], W0[DO * DI], gW[DO * DI] = {0}, a[N * DI] = {0}, g[N * DO] = {0};
            for (int i = 0; i < DO * DI; i++)
                W[i] = W0[i] = 0.1f * (float)(i % 7 - 3);
            for (int i = 0; i < N * (dead ? DO : DI); i++)
                (dead ? g : a)[i] = (float)cos(i * 0.7) / N; // (the other side stays 0)
            ngd_optim *o;
            CHECK(ngd_optim_create(&c, &o) == NGD_OK);
            ngd_layer l = {"fc", W, gW, DO, DI, NULL, NULL, NULL};
            int id;
            CHECK(ngd_optim_add_layer(o, &l, &id) == NGD_OK);
            bool ok = true;
            for (int t = 0; t < 300 && ok; t++) {
                if (ngd_optim_wants_stats(o))
                    CHECK(ngd_optim_observe(o, id, N, ngd_matrix_f32(a, N, DI),
                                            ngd_matrix_f32(g, N, DO)) == NGD_OK);
                ok = ngd_optim_step(o) == NGD_OK && memcmp(W, W0, sizeof W) == 0;
            }
            ngd_layer_health h;
            CHECK(ngd_optim_layer_health(o, id, &h) == NGD_OK);
            CHECK_MSG(ok && h.decomp_failures == 0,
                      "%s%s, %s: W moved or not finite (W[0] %g), %zu "
                      "failures",
                      ngd_method_name(c.method), pi ? " (pi)" : "",
                      dead ? "dead inputs" : "zero output gradients", (double)W[0],
                      h.decomp_failures);
            ngd_optim_free(o);
        }
}

// A finite gradient so large that Σ P² overflowed float (|P| ~ 1e20): the RMS clip's ν was 0
// and the step did nothing; now it is taken, clipped, and its update norm is finite
static void a_huge_finite_gradient_should_still_be_clipped_and_taken(void) {
    enum { DI = 5, DO = 3, N = 4 };
    for (int k = 0; k < 2; k++) {
        const float gs = k ? 1e20f : 1e2f;
        ngd_config c = ngd_config_default(NGD_METHOD_KFAC);
        c.kfac.T_u = 1, c.kfac.T_i = 1, c.weight_decay = 0.0f;
        float W[DO * DI], W0[DO * DI], gW[DO * DI], b[DO] = {0}, gb[DO], a[N * DI], g[N * DO];
        for (int i = 0; i < DO * DI; i++)
            W[i] = W0[i] = 0.1f * (float)(i % 7 - 3), gW[i] = gs * (float)sin(i * 1.1);
        for (int i = 0; i < DO; i++)
            gb[i] = gs * (float)cos(i * 0.3);
        for (int i = 0; i < N * DI; i++)
            a[i] = (float)sin(i * 0.9);
        for (int i = 0; i < N * DO; i++)
            g[i] = (float)cos(i * 0.4);
        ngd_optim *o;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        ngd_layer l = {"fc", W, gW, DO, DI, b, gb, NULL};
        int id;
        CHECK(ngd_optim_add_layer(o, &l, &id) == NGD_OK);
        CHECK(ngd_optim_observe(o, id, N, ngd_matrix_f32(a, N, DI), ngd_matrix_f32(g, N, DO)) ==
              NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
        ngd_layer_health h;
        CHECK(ngd_optim_layer_health(o, id, &h) == NGD_OK);
        double moved = 0;
        for (int i = 0; i < DO * DI; i++)
            moved += fabs((double)W[i] - (double)W0[i]);
        // the clip bounds the step by κ·lr whatever the scale: the same order at both scales
        CHECK_MSG(moved > 1e-4 && isfinite(h.update_norm) && isfinite(h.grad_norm),
                  "gradient scale %g: Σ|ΔW| %g, update norm %g, grad norm %g", (double)gs, moved,
                  (double)h.update_norm, (double)h.grad_norm);
        ngd_optim_free(o);
    }
}

// Layers' serial-heavy maintenance (decompositions, Brand updates) runs side by side, a
// layer per thread, with their GEMMs single-threaded (optim.c update_all): on two threads
// the same parameters, bit for bit, as on one, for every method of the family, over steps
// with Brand updates, refreshes and the steps between; the second thread has its own
// scratch slot (a shared one would mix the layers' work)
static void side_by_side_updates_should_equal_the_serial_ones(void) {
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    for (int m = NGD_METHOD_KFAC; m <= NGD_METHOD_BRCKFAC; m++) {
        float *got[2][4];
        size_t ws[2];
        tp_problem p[2];
        for (int v = 0; v < 2; v++) {
            omp_set_num_threads(v + 1);
            ngd_config c = ngd_config_default((ngd_method)m);
            c.lr = 0.05f, c.kfac.T_u = 2, c.kfac.T_i = 4, c.kfac.rank = 12;
            c.kfac.wd_start = 1000;
            tp_init(&p[v], 24, 60, 40, 30, 11);
            ngd_optim *o;
            CHECK(ngd_optim_create(&c, &o) == NGD_OK);
            CHECK(tp_register(&p[v], o) == NGD_OK);
            for (size_t st = 0; st < 21; st++) {
                tp_forward_backward(&p[v], o, st, 1.0f);
                CHECK(ngd_optim_step(o) == NGD_OK);
            }
            ws[v] = ngd_optim_workspace_bytes(o);
            // step 20 refreshed both layers: the step's maintenance took at least each one's
            ngd_layer_health h1, h2;
            CHECK(ngd_optim_layer_health(o, p[v].id1, &h1) == NGD_OK &&
                  ngd_optim_layer_health(o, p[v].id2, &h2) == NGD_OK);
            const double tu = ngd_optim_update_time(o);
            CHECK(h1.time_update > 0 && h2.time_update > 0 && tu >= h1.time_update &&
                  tu >= h2.time_update && tu < 1.0);
            got[v][0] = p[v].W1, got[v][1] = p[v].b1, got[v][2] = p[v].W2, got[v][3] = p[v].b2;
            ngd_optim_free(o);
        }
        const size_t n[4] = {p[0].dhid * p[0].din, p[0].dhid, p[0].dout * p[0].dhid, p[0].dout};
        for (int k = 0; k < 4; k++)
            CHECK_MSG(memcmp(got[0][k], got[1][k], n[k] * sizeof(float)) == 0, "%s: array %d",
                      ngd_method_name((ngd_method)m), k);
        CHECK(ws[1] > ws[0]); // (two scratch slots)
        tp_free(&p[0]), tp_free(&p[1]);
    }
    omp_set_num_threads(saved);
#endif
}

// One run of method m on the two-layer problem (big: 320 inputs, 288 hidden, 64 outputs, 128
// rows, whose products oneDNN splits by thread; else 60, 40, 30 and 24), 9 steps (refreshes at
// 4 and 8); threads[s]: the thread count of step s (0: as it is). The parameters into out
// (W1, b1, W2, b2 in turn).
static bool run_steps(int m, bool big, const int threads[9], float *out) {
    ngd_config c = ngd_config_default((ngd_method)m);
    c.lr = 0.05f, c.kfac.T_u = 2, c.kfac.T_i = 4, c.kfac.rank = 12, c.kfac.wd_start = 1000;
    tp_problem p;
    if (big)
        tp_init(&p, 128, 320, 288, 64, 11);
    else
        tp_init(&p, 24, 60, 40, 30, 11);
    ngd_optim *o;
    bool ok = ngd_optim_create(&c, &o) == NGD_OK && tp_register(&p, o) == NGD_OK;
    for (size_t st = 0; st < 9 && ok; st++) {
#ifdef _OPENMP
        if (threads && threads[st]) omp_set_num_threads(threads[st]);
#endif
        tp_forward_backward(&p, o, st, 1.0f);
        ok = ngd_optim_step(o) == NGD_OK;
    }
    const size_t n[4] = {p.dhid * p.din, p.dhid, p.dout * p.dhid, p.dout};
    const float *a[4] = {p.W1, p.b1, p.W2, p.b2};
    for (int k = 0; k < 4; k++, out += n[k - 1])
        memcpy(out, a[k], n[k] * sizeof(float));
    ngd_optim_free(o);
    tp_free(&p);
    return ok;
}
#define RUN_FLOATS (40 * 60 + 40 + 30 * 40 + 30)     // (small)
#define BIG_FLOATS (288 * 320 + 288 + 64 * 288 + 64) // (big)

// A run whose first step (when the scratch is planned) was at one thread and the later ones at
// two: its layers' maintenance has one scratch slot, and runs one layer after another with a
// one-thread run's products, the same bits as at one thread throughout (RS-KFAC and B-KFAC
// took both threads' products there: other bits, a review's program)
static void a_thread_count_grown_after_planning_should_keep_the_bits(void) {
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    const int one[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, grown[9] = {1, 2, 2, 2, 2, 2, 2, 2, 2};
    float *a = malloc(BIG_FLOATS * sizeof(float)), *b = malloc(BIG_FLOATS * sizeof(float));
    for (int m = NGD_METHOD_KFAC; m <= NGD_METHOD_BRCKFAC; m++) {
        CHECK(run_steps(m, true, one, a) && run_steps(m, true, grown, b));
        CHECK_MSG(memcmp(a, b, BIG_FLOATS * sizeof(float)) == 0, "%s",
                  ngd_method_name((ngd_method)m));
    }
    free(a), free(b);
    omp_set_num_threads(saved);
#endif
}

// A client's own parallel region, each thread its own optimizer: the K-FAC family's scratch
// slot is this optimizer's first, not the client thread's number (thread 2 of 3 found no
// planned workspace and failed), and each thread's run is the same bits as the same run made
// outside the region (its products on its thread alone, as a one-thread run's)
static void each_thread_of_a_client_region_should_run_its_own_optimizer(void) {
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    float *want = malloc(RUN_FLOATS * sizeof(float)), *got = malloc(3 * RUN_FLOATS * sizeof(float));
    for (int m = NGD_METHOD_KFAC; m <= NGD_METHOD_BRCKFAC; m++) {
        CHECK(run_steps(m, false, NULL, want));
        int ok[3] = {0, 0, 0};
        omp_set_num_threads(3);
#pragma omp parallel num_threads(3)
        {
            const int t = omp_get_thread_num();
            if (t < 3) ok[t] = run_steps(m, false, NULL, got + (size_t)t * RUN_FLOATS);
        }
        omp_set_num_threads(1);
        for (int t = 0; t < 3; t++) {
            CHECK_MSG(ok[t], "%s: thread %d failed", ngd_method_name((ngd_method)m), t);
            CHECK_MSG(memcmp(want, got + (size_t)t * RUN_FLOATS, RUN_FLOATS * sizeof(float)) == 0,
                      "%s: thread %d", ngd_method_name((ngd_method)m), t);
        }
    }
    free(want), free(got);
    omp_set_num_threads(saved);
#endif
}

// libngd's messages (an error, a log line) take a lock of libngd's own: they were an unnamed
// OpenMP critical section, the same lock as every unnamed critical section of the program, so
// an error raised inside the client's own critical section, or a log callback that wrote
// through one, waited on itself for ever. (A hang here ends the binary by SIGALRM.)
static int crit_logs;
static void crit_log(void *user, const char *msg) {
    (void)user, (void)msg;
#ifdef _OPENMP
#pragma omp critical
#endif
    crit_logs++;
}

// A callback of one handle that waits for a thread failing on another handle: each handle
// has its lock (one lock for all handles, held through the callback, hung the thread)
static ngd_optim *other_optim;
static ngd_status other_status;
static void *fail_on_other(void *arg) {
    (void)arg;
    ngd_layer_health h;
    other_status = ngd_optim_layer_health(other_optim, 77, &h);
    return NULL;
}
static void wait_for_other(void *user, const char *msg) {
    (void)user, (void)msg;
    pthread_t th;
    if (pthread_create(&th, NULL, fail_on_other, NULL) == 0) pthread_join(th, NULL);
}

static void messages_should_not_wait_on_the_clients_critical_sections(void) {
    alarm(120);
    ngd_config c = ngd_config_default(NGD_METHOD_KFAC);
    c.log_fn = crit_log;
    tp_problem p;
    tp_init(&p, 8, 6, 5, 4, 3);
    ngd_optim *o;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK && tp_register(&p, o) == NGD_OK);
    ngd_layer_health h;
    ngd_status st = NGD_OK;
#ifdef _OPENMP
#pragma omp critical
#endif
    st = ngd_optim_layer_health(o, 99, &h); // an error inside the client's critical section
    CHECK(st == NGD_ERR_LAYER && strstr(ngd_optim_errmsg(o), "unknown id 99"));
    crit_logs = 0;
    tp_forward_backward(&p, o, 0, 1.0f);
    p.gW1[0] = NAN; // a non-finite gradient: the step is skipped, and logged
    CHECK(ngd_optim_step(o) == NGD_SKIPPED && crit_logs == 1);
    ngd_optim_free(o);
    // a log callback of o waiting for a thread that fails on another handle
    ngd_config c2 = ngd_config_default(NGD_METHOD_SGD);
    c.log_fn = wait_for_other;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK && tp_register(&p, o) == NGD_OK);
    CHECK(ngd_optim_create(&c2, &other_optim) == NGD_OK);
    other_status = NGD_OK;
    tp_forward_backward(&p, o, 1, 1.0f);
    p.gW1[0] = NAN;
    CHECK(ngd_optim_step(o) == NGD_SKIPPED && other_status == NGD_ERR_LAYER);
    ngd_optim_free(other_optim);
    ngd_optim_free(o);
    tp_free(&p);
    alarm(0);
}

// Two runs on the same draws: f = 0 with c as it is and f = 1 with kfac.factored_apply, on a
// 25 x 31 layer of n rows
static void factored_pair_init(const ngd_config *c, size_t n, unsigned long long seed, layer_t L[2],
                               ngd_optim *o[2], int id[2]) {
    for (int f = 0; f < 2; f++) {
        ngd_config cf = *c;
        cf.kfac.factored_apply = f == 1;
        layer_init(&L[f], n, 30, 25, seed);
        CHECK(ngd_optim_create(&cf, &o[f]) == NGD_OK);
        id[f] = layer_add(&L[f], o[f]);
    }
}

// #factored-application / P7 at method level: with J = (1/n) 𝒢ᵀ𝒜 (the batch-mean gradient the
// statistics describe), the factored application gives the dense-J result, on statistics steps and
// between them (T_u = 2), for the RSVD and the Brand tracks, and for K-FAC's eigenbasis (Q_Gᵀ J Q_A
// from the rows: 3 rows of a 25 x 31 layer pay) with both dampings.
// Seven steps of two runs on the same draws, f = 0 from Ĝ and f = 1 with kfac.factored_apply,
// the gradient J = Σ_r g_r [a_r, 1]ᵀ (a fully connected layer's), statistics every 2 steps
// (every step for f = 1); returns the largest relative difference of their P, and in *moved
// (if set) the largest of run 0's P against its J (the preconditioner is not the identity).
static double factored_pair_steps(layer_t L[2], ngd_optim *o[2], const int id[2], size_t steps,
                                  double *moved) {
    double worst = 0;
    for (size_t t = 0; t < steps; t++) {
        for (int f = 0; f < 2; f++) {
            layer_t *l = &L[f];
            layer_draw(l, 0.9, false);
            for (size_t a = 0; a < l->dG; a++) { // J = Σ_r g_r [a_r, 1]ᵀ
                double sb = 0;
                for (size_t b = 0; b < l->din; b++) {
                    double sum = 0;
                    for (size_t r = 0; r < l->n; r++)
                        sum += (double)l->g[r * l->dG + a] * (double)l->a[r * l->din + b];
                    l->gW[a * l->din + b] = (float)sum;
                }
                for (size_t r = 0; r < l->n; r++)
                    sb += (double)l->g[r * l->dG + a];
                l->gb[a] = (float)sb;
            }
            // (every step for f = 1, unless the first statistics showed a sequence layer)
            CHECK(ngd_optim_layer_wants_stats(o[f], id[f]) ==
                  ((f == 1 && (t == 0 || !l->batch)) || t % 2 == 0));
            layer_observe(l, o[f], id[f]);
            CHECK(ngd_optim_step(o[f]) == NGD_OK);
            CHECK(ngd_optim_last_update(o[f], id[f], l->P, l->dG * l->dA) == NGD_OK);
        }
        const size_t n = L[0].dG * L[0].dA;
        double *ref = malloc(sizeof(double) * n);
        ref_to_double(L[0].P, ref, n);
        worst = fmax(worst, rel_err(L[1].P, ref, n));
        if (moved) {
            layer_J(&L[0], ref);
            *moved = fmax(*moved, rel_err(L[0].P, ref, n));
        }
        free(ref);
    }
    return worst;
}

static void factored_application_should_equal_the_dense_one(void) {
    const ngd_method ms[5] = {NGD_METHOD_RSKFAC, NGD_METHOD_BKFAC, NGD_METHOD_BRCKFAC,
                              NGD_METHOD_KFAC, NGD_METHOD_KFAC};
    for (int i = 0; i < 5; i++) {
        layer_t L[2];
        ngd_optim *o[2];
        int id[2];
        ngd_config c = kcfg(ms[i]);
        c.kfac.T_u = 2, c.kfac.T_i = 3, c.kfac.rank = 10, c.momentum = 0.5f, c.lr = 0.1f;
        if (i == 4) c.kfac.damping_kind = NGD_KFAC_DAMP_FACTORED_PI;
        factored_pair_init(&c, 3, 77, L, o, id);
        double worst = factored_pair_steps(L, o, id, 7, NULL);
        CHECK_MSG(worst < 1e-4, "%s: factored vs dense application: rel err %.3g",
                  ngd_method_name(ms[i]), worst);
        double *w0 = malloc(sizeof(double) * L[0].dG * L[0].din);
        ref_to_double(L[0].W, w0, L[0].dG * L[0].din);
        CHECK_MSG(rel_err(L[1].W, w0, L[0].dG * L[0].din) < 1e-4, "%s: weights differ",
                  ngd_method_name(ms[i]));
        free(w0);
        for (int f = 0; f < 2; f++)
            ngd_optim_free(o[f]), layer_free(&L[f]);
    }
}

// SINGD with kfac.factored_apply (dense K and C, both products cached): P = (1/c)(𝒢 C Cᵀ)ᵀ
// (𝒜 K Kᵀ) from the step's rows, on this file's factored-application harness (J = Σ_r g_r
// [a_r, 1]ᵀ, as a fully connected layer's gradient is), against C Cᵀ Ĝ K Kᵀ over 7 steps with
// factor updates every 2: each step's P and the final weights within float32 rounding. Under
// bf16 compute (bf16 factors, products of bf16 operands, intermediates rounded to bf16) the
// two orders round different intermediates: within a few bf16 roundings (2^-8 each).
static void singd_from_rows_should_equal_the_dense_product(void) {
    for (int bf = 0; bf < 2; bf++) {
        layer_t L[2];
        ngd_optim *o[2];
        int id[2];
        ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
        ngd_structure_parse("dense", &c.structure_K);
        ngd_structure_parse("dense", &c.structure_C);
        if (bf) c.structure_K.dtype = c.structure_C.dtype = NGD_BF16, c.factor_compute = NGD_BF16;
        c.T = 2, c.lr = 0.05f, c.lr_cov = 0.05f, c.keep_last_update = true;
        factored_pair_init(&c, 3, 78, L, o, id);
        const double tol = bf ? 2e-2 : 1e-5;
        double moved = 0, worst = factored_pair_steps(L, o, id, 7, &moved);
        CHECK_MSG(worst < tol, "SINGD (bf16 %d) from the rows vs C Cᵀ Ĝ K Kᵀ: rel err %.3g", bf,
                  worst);
        CHECK_MSG(moved > 1e-2, "SINGD: P stayed Ĝ (rel %.3g): the products are trivial", moved);
        double *w0 = malloc(sizeof(double) * L[0].dG * L[0].din);
        ref_to_double(L[0].W, w0, L[0].dG * L[0].din);
        CHECK_MSG(rel_err(L[1].W, w0, L[0].dG * L[0].din) < tol,
                  "SINGD (bf16 %d) from the rows: weights differ", bf);
        free(w0);
        for (int f = 0; f < 2; f++)
            ngd_optim_free(o[f]), layer_free(&L[f]);
    }
}

// A sequence layer (3 samples of 4 positions: 12 rows) under kfac_approx = reduce: the statistics
// take one reduced row per sample, but the gradient is Σ over all 12 rows, not (1/n) 𝒢ᵀ𝒜 of the
// reduced rows, so factored_apply must leave the layer on its gradient: the same P as without it
// (within float32 rounding). It took the reduced rows' product instead (a 1e-1-sized difference).
static void factored_apply_should_skip_reduced_sequence_layers(void) {
    const ngd_method ms[4] = {NGD_METHOD_KFAC, NGD_METHOD_RSKFAC, NGD_METHOD_BKFAC,
                              NGD_METHOD_SINGD};
    for (int i = 0; i < 4; i++) {
        layer_t L[2];
        ngd_optim *o[2];
        int id[2];
        ngd_config c = kcfg(ms[i]);
        if (ms[i] == NGD_METHOD_SINGD) {
            c = ngd_config_default(NGD_METHOD_SINGD);
            c.T = 2, c.lr = 0.05f, c.lr_cov = 0.05f, c.keep_last_update = true;
        } else {
            c.kfac.T_u = 2, c.kfac.T_i = 3, c.kfac.rank = 10, c.momentum = 0.5f, c.lr = 0.1f;
        }
        c.kfac_approx = NGD_KFAC_REDUCE;
        factored_pair_init(&c, 12, 79, L, o, id);
        L[0].batch = L[1].batch = 3;
        double moved = 0, worst = factored_pair_steps(L, o, id, 5, &moved);
        CHECK_MSG(worst < 1e-5, "%s, reduce, 4 rows a sample: factored vs plain: rel err %.3g",
                  ngd_method_name(ms[i]), worst);
        CHECK_MSG(moved > 1e-2, "%s: P stayed J (rel %.3g)", ngd_method_name(ms[i]), moved);
        for (int f = 0; f < 2; f++)
            ngd_optim_free(o[f]), layer_free(&L[f]);
    }
}

// The factored application only where it pays, and only from one row a sample:
// - 200 rows of a 25 x 31 layer cost more than its gradient: the layer is not factored (it
//   wants statistics on T_u steps only) and P is the plain run's;
// - a layer factored at first (12 rows of 12 samples) whose later steps observe a sequence's
//   rows (12 rows of 3 samples, reduce), as a checkpoint of a build that took those for a fully
//   connected layer's would: it drops to the gradient, the plain run's P;
// - a checkpoint saved factored is refused by an optimizer without factored_apply, naming it;
// - a checkpoint saved without the rows, loaded by a new optimizer with factored_apply, takes
//   them from its next statistics (it stayed on the gradient, --factored silently ignored).
static void factored_apply_should_pay_and_follow_the_rows(void) {
    const ngd_method ms[2] = {NGD_METHOD_KFAC, NGD_METHOD_RSKFAC};
    for (int i = 0; i < 2; i++) {
        for (int c2 = 0; c2 < 3; c2++) {
            layer_t L[2];
            ngd_optim *o[2];
            int id[2];
            ngd_config c = kcfg(ms[i]);
            c.kfac.T_u = 2, c.kfac.T_i = 3, c.kfac.rank = 10, c.lr = 0.1f;
            c.kfac_approx = NGD_KFAC_REDUCE;
            factored_pair_init(&c, c2 == 0 ? 200 : 12, 80, L, o, id);
            double worst = 0;
            if (c2 == 0) { // (the harness expects f = 1 to want rows every step: checked here)
                for (size_t t = 0; t < 4; t++)
                    for (int f = 0; f < 2; f++) {
                        layer_draw(&L[f], 0.9, false);
                        CHECK(ngd_optim_layer_wants_stats(o[f], id[f]) == (t % 2 == 0 || t == 0));
                        layer_observe(&L[f], o[f], id[f]);
                        CHECK(ngd_optim_step(o[f]) == NGD_OK);
                        CHECK(ngd_optim_last_update(o[f], id[f], L[f].P, L[f].dG * L[f].dA) ==
                              NGD_OK);
                    }
                double *ref = malloc(sizeof(double) * L[0].dG * L[0].dA);
                ref_to_double(L[0].P, ref, L[0].dG * L[0].dA);
                worst = rel_err(L[1].P, ref, L[0].dG * L[0].dA);
                free(ref);
            } else if (c2 == 2) {
                factored_pair_steps(L, o, id, 2, NULL);
                // run 0's state (no rows) into a new optimizer with factored_apply: loaded, and
                // from its next statistics (step 2) it wants the rows every step (the harness
                // checks that for f = 1) and gives the plain run's P
                char path[] = "/tmp/ngd_test_kfac_fac_XXXXXX";
                int fd = mkstemp(path);
                CHECK(fd >= 0);
                close(fd);
                CHECK(ngd_optim_save(o[0], path) == NGD_OK);
                ngd_config cf = c;
                cf.kfac.factored_apply = true;
                ngd_optim *o2;
                CHECK(ngd_optim_create(&cf, &o2) == NGD_OK);
                const int id2 = layer_add(&L[1], o2);
                CHECK_MSG(ngd_optim_load(o2, path) == NGD_OK, "load: %s", ngd_optim_errmsg(o2));
                remove(path);
                ngd_optim_free(o[1]);
                o[1] = o2, id[1] = id2;
                worst = factored_pair_steps(L, o, id, 4, NULL);
            } else {
                factored_pair_steps(L, o, id, 2, NULL); // 12 samples: factored
                // saved factored, loaded without factored_apply: refused with the reason
                char path[] = "/tmp/ngd_test_kfac_fac_XXXXXX";
                int fd = mkstemp(path);
                CHECK(fd >= 0);
                close(fd);
                CHECK(ngd_optim_save(o[1], path) == NGD_OK);
                CHECK(ngd_optim_load(o[0], path) == NGD_ERR_FORMAT &&
                      strstr(ngd_optim_errmsg(o[0]), "factored_apply"));
                remove(path);
                L[0].batch = L[1].batch = 3; // then 3 samples of 4 rows
                worst = factored_pair_steps(L, o, id, 4, NULL);
            }
            CHECK_MSG(worst < 1e-5, "%s case %d: factored_apply vs plain: rel err %.3g",
                      ngd_method_name(ms[i]), c2, worst);
            for (int f = 0; f < 2; f++)
                ngd_optim_free(o[f]), layer_free(&L[f]);
        }
    }
}

static void bad_settings_should_be_refused_with_a_reason(void) {
    layer_t L;
    layer_init(&L, 3, 5, 4, 1);
    ngd_layer l = {"fc", L.W, L.gW, L.dG, L.din, L.b, L.gb, NULL};
    int id;
    ngd_optim *o;
    char msg[256];
    ngd_config c = ngd_config_default(NGD_METHOD_BKFAC);
    c.kfac.identity_init = NGD_IDINIT_IN_FACTOR;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "in_factor"));
    CHECK(ngd_optim_create(&c, &o) == NGD_ERR_ARG);
    c = ngd_config_default(NGD_METHOD_KFAC);
    c.kfac.corr_frac = 0.0f;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "corr_frac"));
    // the same through a per-layer override
    ngd_config base = ngd_config_default(NGD_METHOD_KFAC);
    CHECK(ngd_optim_create(&base, &o) == NGD_OK);
    l.override = &c;
    CHECK(ngd_optim_add_layer(o, &l, &id) == NGD_ERR_ARG);
    CHECK(strstr(ngd_optim_errmsg(o), "corr_frac") != NULL);
    ngd_optim_free(o);
    c = ngd_config_default(NGD_METHOD_BRKFAC);
    c.kfac.brand_mult = 2;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "brand_mult"));
    // λ_rel = 0: the low-rank methods' complement would be scaled by 1/ρ^k without bound;
    // K-FAC's exact inverse takes it
    for (int m = NGD_METHOD_KFAC; m <= NGD_METHOD_BRCKFAC; m++) {
        c = ngd_config_default((ngd_method)m);
        c.kfac.damping_rel = 0.0f;
        const ngd_status want = m == NGD_METHOD_KFAC ? NGD_OK : NGD_ERR_ARG;
        CHECK_MSG(ngd_config_validate(&c, msg, sizeof msg) == want &&
                      (want == NGD_OK || strstr(msg, "damping_rel must be > 0")),
                  "%s damping_rel 0: %s", ngd_method_name((ngd_method)m), msg);
    }
    c = ngd_config_default(NGD_METHOD_RSKFAC);
    c.kfac.T_i = 0;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "T_i") &&
          !strstr(msg, "T_u"));
    // periods whose product wraps (a division by 0 in the step), and sketches past any use
    c = ngd_config_default(NGD_METHOD_BKFAC);
    c.kfac.T_u = 2, c.kfac.brand_mult = (SIZE_MAX >> 1) + 1;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "brand_mult"));
    c.kfac.brand_mult = SIZE_MAX / 2; // the largest that fits
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_OK);
    c = ngd_config_default(NGD_METHOD_BRKFAC);
    c.kfac.T_i = 2, c.kfac.refresh_mult = (SIZE_MAX >> 1) + 1;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "refresh_mult"));
    c = ngd_config_default(NGD_METHOD_RSKFAC);
    c.kfac.oversample = SIZE_MAX;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "oversample"));
    c = ngd_config_default(NGD_METHOD_RSKFAC);
    c.kfac.power_iters = 1001;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "power_iters"));
    layer_free(&L);
}

// Conv layers (#k-fac-statistics, the author's KFC split): with |T| positions per sample the
// observe gets n·|T| rows and the factors are A_b = 1/(n|T|²) Σ āāᵀ and
// Γ_b = |T|/n Σ g̃g̃ᵀ (g̃ = n·g), folded into EAs from zero; checked after three updates
// for K-FAC and RS-KFAC (both keep the dense average, read back as 'K' / 'C').
static double max_rel(const double *x, const double *ref, size_t n) {
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(x[i] - ref[i]));
        m = fmax(m, fabs(ref[i]));
    }
    return e / m;
}

// T positions per sample: 4 (12 rows, chunk by chunk) and 90 (270 rows: more than a chunk,
// so the f32 statistics are summed in place, ngd_stats_gram)
static void conv_stats_case(size_t T) {
    enum { N = 3, DIN = 5, DA = DIN + 1, DG = 3 };
    const size_t R = N * T;
    const ngd_method ms[2] = {NGD_METHOD_KFAC, NGD_METHOD_RSKFAC};
    for (int mi = 0; mi < 2; mi++) {
        ngd_config c = ngd_config_default(ms[mi]);
        c.kfac.T_u = 1, c.kfac.T_i = 1, c.kfac.rank = 4;
        ngd_optim *o;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        float W[DG * DIN] = {0}, gW[DG * DIN], b[DG] = {0}, gb[DG];
        float *a = malloc(R * DIN * sizeof *a), *g = malloc(R * DG * sizeof *g);
        double *t = malloc((R * (DIN + DG) + DG * DA) * sizeof *t);
        ngd_layer l = {"conv", W, gW, DG, DIN, b, gb, NULL};
        int id;
        CHECK(ngd_optim_add_layer(o, &l, &id) == NGD_OK);
        double EA[DA * DA] = {0}, EG[DG * DG] = {0};
        const double rho = (double)c.kfac.rho;
        ref_rng rng = {.s = 77 + (unsigned long long)mi + T};
        for (int step = 0; step < 3; step++) {
            ref_fill(&rng, t, R * (DIN + DG) + DG * DA, -1, 1);
            for (size_t i = 0; i < R * DIN; i++)
                a[i] = (float)t[i];
            for (size_t i = 0; i < R * DG; i++)
                g[i] = (float)(0.1 * t[R * DIN + i]);
            for (size_t i = 0; i < DG * DIN; i++)
                gW[i] = (float)t[R * (DIN + DG) + i];
            for (size_t i = 0; i < DG; i++)
                gb[i] = (float)t[R * (DIN + DG) + DG * DIN + i];
            for (size_t x = 0; x < DA * DA; x++)
                EA[x] *= rho;
            for (size_t x = 0; x < DG * DG; x++)
                EG[x] *= rho;
            for (size_t r = 0; r < R; r++) {
                for (size_t i = 0; i < DA; i++)
                    for (size_t j = 0; j < DA; j++) {
                        double ai = i < DIN ? (double)a[r * DIN + i] : 1.0;
                        double aj = j < DIN ? (double)a[r * DIN + j] : 1.0;
                        EA[i * DA + j] += (1 - rho) / ((double)N * T * T) * ai * aj;
                    }
                for (size_t i = 0; i < DG; i++)
                    for (size_t j = 0; j < DG; j++)
                        EG[i * DG + j] += (1 - rho) * (double)T / N * (N * (double)g[r * DG + i]) *
                                          (N * (double)g[r * DG + j]);
            }
            CHECK(ngd_optim_layer_wants_stats(o, id));
            CHECK(ngd_optim_observe(o, id, N, ngd_matrix_f32(a, R, DIN),
                                    ngd_matrix_f32(g, R, DG)) == NGD_OK);
            CHECK(ngd_optim_step(o) == NGD_OK);
        }
        float FA[DA * DA], FG[DG * DG];
        // (K-FAC decides its tracks at the start: its all-zero factors were returned before
        // the first statistics, a QA pass found)
        ngd_optim *o0;
        CHECK(ngd_optim_create(&c, &o0) == NGD_OK);
        int id0;
        CHECK(ngd_optim_add_layer(o0, &l, &id0) == NGD_OK);
        CHECK(ngd_optim_factor_dense(o0, id0, 'K', FA, DA) == NGD_ERR_STATE &&
              strstr(ngd_optim_errmsg(o0), "no statistics yet"));
        ngd_optim_free(o0);
        CHECK(ngd_optim_factor_dense(o, id, 'K', FA, DA) == NGD_OK);
        CHECK(ngd_optim_factor_dense(o, id, 'C', FG, DG) == NGD_OK);
        double fa[DA * DA], fg[DG * DG];
        ref_to_double(FA, fa, DA * DA);
        ref_to_double(FG, fg, DG * DG);
        CHECK_MSG(max_rel(fa, EA, DA * DA) < 1e-5, "%s T=%zu: A factor off by %.3g",
                  ngd_method_name(ms[mi]), T, max_rel(fa, EA, DA * DA));
        CHECK_MSG(max_rel(fg, EG, DG * DG) < 1e-5, "%s T=%zu: G factor off by %.3g",
                  ngd_method_name(ms[mi]), T, max_rel(fg, EG, DG * DG));
        ngd_optim_free(o);
        free(a), free(g), free(t);
    }
}

static void conv_statistics_should_use_the_kfc_split(void) {
    conv_stats_case(4);
    conv_stats_case(90);
}

// n uniform values in [lo, hi) truncated to bf16 values: x holds them in f32, x16 in bf16
static void uniform_bf16_values(ref_rng *r, double lo, double hi, float *x, uint16_t *x16,
                                size_t n) {
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)ref_uniform(r, lo, hi);
        uint32_t b;
        memcpy(&b, &x[i], 4);
        b &= 0xffff0000u;
        memcpy(&x[i], &b, 4);
        x16[i] = (uint16_t)(b >> 16);
    }
}

// ngd_stats_gram (the in-place Gram matrix of many rows) against float64: G = beta G + alpha
// Σ x xᵀ with x a row of the f32 or bf16 matrix and, with a bias, a trailing 1; over a
// symmetric G (beta 1.3) and over NaN (beta 0: not read); the a side with and without a bias
// column, the g side, and 20 columns with a bias (the column sums in two blocks on the
// threads, the second partial); reduce with positions is left to the chunked path.
static void stats_gram_should_match_float64(void) {
    const size_t rows = 2000, ld = 21;
    ref_rng r = {5};
    double *t = malloc(rows * ld * sizeof *t);
    float *m = malloc(rows * ld * sizeof *m);
    ref_fill(&r, t, rows * ld, -1, 1);
    for (size_t i = 0; i < rows * ld; i++)
        m[i] = (float)t[i];
    // the same values once more as a bf16 matrix (m16) and as f32 (mb), cut to bf16
    uint16_t *m16 = malloc(rows * ld * sizeof *m16);
    float *mb = malloc(rows * ld * sizeof *mb);
    for (size_t i = 0; i < rows * ld; i++) {
        uint32_t u;
        memcpy(&u, &m[i], 4);
        m16[i] = (uint16_t)(u >> 16);
        u &= 0xffff0000u;
        memcpy(&mb[i], &u, 4);
    }
    // a with a bias, a without, g; a of 20 columns with a bias; each from f32 and bf16 rows
    for (int vb = 0; vb < 8; vb++) {
        const int v = vb % 4;
        const bool b16 = vb >= 4;
        const float *mv = b16 ? mb : m; // (the values the product sees)
        ngd_entry e;
        memset(&e, 0, sizeof e);
        e.cfg = ngd_config_default(NGD_METHOD_KFAC);
        e.d_in = v == 3 ? 20 : 7, e.d_out = 6, e.d_K = v == 0 || v == 3 ? e.d_in + 1 : e.d_in;
        const bool kside = v != 2;
        const size_t dm = kside ? e.d_in : e.d_out, d = kside ? e.d_K : e.d_out;
        const ngd_matrix mat = b16 ? (ngd_matrix){m16, rows, dm, ld, NGD_BF16}
                                   : (ngd_matrix){m, rows, dm, ld, NGD_F32};
        for (int bi = 0; bi < 2; bi++) {
            const float alpha = 0.7f, beta = bi ? 1.3f : 0.0f;
            float G[441];
            double G0[441], want[441];
            for (size_t i = 0; i < d; i++) // a symmetric G0
                for (size_t j = 0; j <= i; j++)
                    G0[i * d + j] = G0[j * d + i] = ref_uniform(&r, -1, 1);
            for (size_t i = 0; i < d * d; i++) {
                G[i] = bi ? (float)G0[i] : NAN;
                want[i] = bi ? (double)beta * (double)(float)G0[i] : 0.0;
            }
            for (size_t q = 0; q < rows; q++)
                for (size_t i = 0; i < d; i++)
                    for (size_t j = 0; j < d; j++) {
                        const double xi = i < dm ? (double)mv[q * ld + i] : 1.0;
                        const double xj = j < dm ? (double)mv[q * ld + j] : 1.0;
                        want[i * d + j] += (double)alpha * xi * xj;
                    }
            CHECK(ngd_stats_gram(&e, 4, &mat, kside, alpha, beta, G, NULL));
            double err = 0, big = 0;
            for (size_t i = 0; i < d * d; i++)
                err = fmax(err, fabs((double)G[i] - want[i])), big = fmax(big, fabs(want[i]));
            CHECK_MSG(err <= 1e-5 * big, "case %d%s beta %g: off by %.3g of %.3g", v,
                      b16 ? " bf16" : "", (double)beta, err, big);
        }
    }
    free(m16), free(mb);
    // not in place: a reduced g (positions summed per sample)
    ngd_entry e;
    memset(&e, 0, sizeof e);
    e.cfg = ngd_config_default(NGD_METHOD_KFAC);
    e.d_in = 7, e.d_out = 6, e.d_K = 8;
    float G[64] = {0};
    e.cfg.kfac_approx = NGD_KFAC_REDUCE;
    const ngd_matrix gm = {m, rows, 6, ld, NGD_F32};
    CHECK(!ngd_stats_gram(&e, 4, &gm, false, 1.0f, 0.0f, G, NULL));
    // a convolution's rows unfolded as read (ngd_optim_observe_conv), in two blocks of
    // ngd_stats_block_rows with the bias column's ones in them, from f32 and from bf16 images,
    // against float64 sums of ngd_unfold's rows; reduce is left to the chunked path
    const ngd_conv_geom geom = {2, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1}; // 256 rows an image, 18 cols
    const size_t N = 900, xs = 2 * 16 * 16, urows = N * 256;
    e.cfg.kfac_approx = NGD_KFAC_EXPAND;
    e.d_in = 18, e.d_out = 4, e.d_K = 19;
    e.unfolded = true; // (as ngd_optim_observe_conv marks its layers)
    CHECK(urows > ngd_stats_block_rows(19) && urows < 2 * ngd_stats_block_rows(19));
    float *x = malloc(N * xs * sizeof *x), *un = malloc(urows * 18 * sizeof *un);
    float *scratch = malloc(ngd_stats_observe_scratch(&e) * sizeof *scratch);
    uint16_t *x16 = malloc(N * xs * sizeof *x16);
    uniform_bf16_values(&r, -1, 1, x, x16, N * xs); // (both inputs hold the same values)
    CHECK(ngd_unfold(&geom, N, x, false, un) == NGD_OK);
    double want[19 * 19] = {0};
    for (size_t q = 0; q < urows; q++)
        for (size_t i = 0; i < 19; i++)
            for (size_t j = 0; j < 19; j++)
                want[i * 19 + j] += 0.5 * (i < 18 ? (double)un[q * 18 + i] : 1.0) *
                                    (j < 18 ? (double)un[q * 18 + j] : 1.0);
    for (int b16 = 0; b16 < 2; b16++) {
        ngd_unfold_src u;
        CHECK(ngd_unfold_src_init(&u, &geom, N,
                                  b16 ? ngd_matrix_bf16(x16, N, xs) : ngd_matrix_f32(x, N, xs)));
        const ngd_matrix um = {&u, urows, 18, 18, NGD_DT_UNFOLD};
        float Gu[19 * 19];
        for (size_t i = 0; i < 19 * 19; i++)
            Gu[i] = NAN; // (beta 0: not read)
        CHECK(ngd_stats_gram(&e, N, &um, true, 0.5f, 0.0f, Gu, scratch));
        double err = 0, big = 0;
        for (size_t i = 0; i < 19 * 19; i++)
            err = fmax(err, fabs((double)Gu[i] - want[i])), big = fmax(big, fabs(want[i]));
        CHECK_MSG(err <= 1e-5 * big, "unfolded rows (%s): off by %.3g of %.3g",
                  b16 ? "bf16" : "f32", err, big);
        e.cfg.kfac_approx = NGD_KFAC_REDUCE;
        CHECK(!ngd_stats_gram(&e, N, &um, true, 0.5f, 0.0f, Gu, scratch));
        e.cfg.kfac_approx = NGD_KFAC_EXPAND;
    }
    free(x), free(x16), free(un), free(scratch);
    free(t), free(m);
}

// ngd_unfold_gram_shifts (a 3x3 "same" convolution's Gram matrix by shifts of the image)
// against float64 sums of ngd_unfold's rows: with and without the bias column, H != W, beta 0
// and 1.3, chunks of one, two and all samples; exactly symmetric; and the geometries, dtypes
// and scratch sizes it leaves to the unfolded rows (false, G untouched)
static void gram_by_shifts_should_match_the_unfolded_rows(void) {
    ref_rng r = {77};
    const struct {
        size_t c, h, w, n;
        bool bias;
    } cs[] = {{5, 8, 11, 7, true},
              {4, 9, 8, 5, false},
              {6, 12, 10, 3, true},
              {1, 8, 8, 4, true},
              {3, 10, 9, 2, false},
              {2, 8, 14, 8, true}, // (rows of 16 x 8: no padding)
              // tiles of 5-8 rows, the threads, rows longer than a block (2048 floats)
              {12, 32, 32, 4, true}};
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
        const size_t C = cs[ci].c, H = cs[ci].h, W = cs[ci].w, N = cs[ci].n;
        const size_t nf = 9 * C, d = nf + cs[ci].bias, rows = N * H * W;
        const ngd_conv_geom geom = {C, H, W, 3, 3, 1, 1, 1, 1, 1, 1, 1};
        float *x = malloc(N * C * H * W * sizeof *x), *un = malloc(rows * nf * sizeof *un);
        float *G = malloc(d * d * sizeof *G);
        double *G0 = malloc(d * d * sizeof *G0), *want = malloc(d * d * sizeof *want);
        uint16_t *x16 = malloc(N * C * H * W * sizeof *x16);
        uniform_bf16_values(&r, -1, 2, x, x16, N * C * H * W); // (mostly positive, as after ReLU)
        CHECK(ngd_unfold(&geom, N, x, false, un) == NGD_OK);
        ngd_unfold_src u, u16;
        CHECK(ngd_unfold_src_init(&u, &geom, N, ngd_matrix_f32(x, N, C * H * W)));
        CHECK(ngd_unfold_src_init(&u16, &geom, N, ngd_matrix_bf16(x16, N, C * H * W)));
        // the scratch of one sample's chunk, of two, and of all (one chunk)
        const size_t sizes[3] = {ngd_unfold_gram_shifts_floats(&u, d, 1),
                                 ngd_unfold_gram_shifts_floats(&u, d, 2),
                                 ngd_unfold_gram_shifts_floats(&u, d, N)};
        if (!sizes[0]) { // (no AVX-512: the shifts are never taken)
            printf("  (gram by shifts: not on this CPU, no AVX-512)\n");
            CHECK(!ngd_unfold_gram_shifts(&u, d, 1.0f, 0.0f, G, un, rows * nf));
            free(x), free(x16), free(un), free(G), free(G0), free(want);
            return;
        }
        float *scratch = malloc(sizes[2] * sizeof *scratch);
        CHECK(sizes[0] < sizes[1] && sizes[1] <= sizes[2]);
        // Σ x xᵀ over the unfolded rows (the bias: 1), and the largest product
        double *xtx = calloc(d * d, sizeof *xtx), xbig = 0;
        for (size_t q = 0; q < rows; q++)
            for (size_t i = 0; i < d; i++) {
                const double xi = i < nf ? (double)un[q * nf + i] : 1.0;
                for (size_t j = 0; j < d; j++) {
                    const double p = xi * (j < nf ? (double)un[q * nf + j] : 1.0);
                    xtx[i * d + j] += p;
                    xbig = fmax(xbig, fabs(p));
                }
            }
        for (int bi = 0; bi < 4; bi++) // beta 0, 1.3; f32 images, bf16 images
            for (int si = 0; si < 3; si++) {
                const float alpha = 0.7f, beta = bi % 2 ? 1.3f : 0.0f;
                for (size_t i = 0; i < d; i++)
                    for (size_t j = 0; j <= i; j++)
                        G0[i * d + j] = G0[j * d + i] = ref_uniform(&r, -1, 1);
                for (size_t i = 0; i < d * d; i++) {
                    G[i] = bi % 2 ? (float)G0[i] : NAN;
                    want[i] = bi % 2 ? (double)beta * (double)(float)G0[i] : 0.0;
                }
                for (size_t i = 0; i < d * d; i++)
                    want[i] += (double)alpha * xtx[i];
                const double big = (double)alpha * xbig;
                float *G1 = malloc(d * d * sizeof *G1);
                memcpy(G1, G, d * d * sizeof *G1);
#ifdef _OPENMP
                const int nt = omp_get_max_threads();
                omp_set_num_threads(2);
#endif
                CHECK(ngd_unfold_gram_shifts(bi < 2 ? &u : &u16, d, alpha, beta, G, scratch,
                                             sizes[si]));
#ifdef _OPENMP // one thread: the same bits (every sum in one order)
                omp_set_num_threads(1);
                CHECK(ngd_unfold_gram_shifts(bi < 2 ? &u : &u16, d, alpha, beta, G1, scratch,
                                             sizes[si]));
                omp_set_num_threads(nt);
                CHECK(!memcmp(G, G1, d * d * sizeof *G));
#endif
                free(G1);
                double err = 0;
                bool sym = true;
                for (size_t i = 0; i < d; i++)
                    for (size_t j = 0; j < d; j++) {
                        err = fmax(err, fabs((double)G[i * d + j] - want[i * d + j]));
                        sym = sym && G[i * d + j] == G[j * d + i];
                    }
                // a sum of `rows` products (each at most `big`) in float32: a few ulps of rows·big
                CHECK_MSG(
                    err <= 4e-6 * (double)rows * big + 1e-6,
                    "C %zu %zux%zu bias %d beta %g%s scratch %d: off by %.3g (rows x big %.3g)", C,
                    H, W, (int)cs[ci].bias, (double)beta, bi < 2 ? "" : " bf16", si, err,
                    (double)rows * big);
                CHECK(sym);
            }
        // left to the unfolded rows: G untouched
        for (size_t i = 0; i < d * d; i++)
            G[i] = 5.0f;
        ngd_conv_geom bad[5] = {geom, geom, geom, geom, geom};
        bad[0].s1 = 2, bad[1].p2 = 0, bad[2].k1 = 5, bad[3].dil2 = 2, bad[4].h = 7;
        for (int b = 0; b < 5; b++) {
            ngd_unfold_src ub;
            if (!ngd_unfold_src_init(&ub, &bad[b], N, ngd_matrix_f32(x, N, C * bad[b].h * W)))
                continue;
            CHECK(!ngd_unfold_gram_shifts(&ub, d, 1.0f, 0.0f, G, scratch, sizes[2]));
        }
        CHECK(
            !ngd_unfold_gram_shifts(&u, d, 1.0f, 0.0f, G, scratch, sizes[0] - 1)); // no sample fits
        CHECK(!ngd_unfold_gram_shifts(&u, nf + 2, 1.0f, 0.0f, G, scratch, sizes[2])); // width
        const bool was = ngd_bf16_emul_set(true); // (the K-FAC family's emulated bf16 rounding)
        CHECK(!ngd_unfold_gram_shifts(&u, d, 1.0f, 0.0f, G, scratch, sizes[2]));
        ngd_bf16_emul_set(was);
        bool same = true;
        for (size_t i = 0; i < d * d; i++)
            same = same && G[i] == 5.0f;
        CHECK(same);
        free(x16), free(x), free(un), free(G), free(G0), free(want), free(scratch), free(xtx);
    }
}

// A statistics step whose input holds a finite 1e20 (its square overflows float32), the
// gradients finite: every method refuses those statistics and counts one failure, its factors
// stay finite and keep training. The K-FAC family folded them into its averages (non-finite
// for good, every later refresh failing), and RS-KFAC, B-R-KFAC and BRC-KFAC then never
// returned: LAPACK's sgesvd spun on the NaN of the RSVD. At 30 inputs the B methods keep A on
// the Brand track, whose rows B-KFAC took (its trace then inf, every later step an error).
// Nesterov momentum in the K-FAC family's rule (`ngd train --nesterov` promised it, and the
// rule read only `momentum`: the same weights with and without): w -= lr (u + μ b) with
// b = μ b + u, u the preconditioned step (clip none, no decay), for every method.
static void nesterov_should_reach_the_kfac_rule(void) {
    const ngd_method ms[] = {NGD_METHOD_KFAC, NGD_METHOD_RSKFAC, NGD_METHOD_BKFAC};
    for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
        ngd_config c = kcfg(ms[mi]);
        c.momentum = 0.9f, c.nesterov = true, c.lr = 0.05f, c.kfac.rank = 3;
        layer_t L;
        layer_init(&L, 8, 5, 4, 77);
        ngd_optim *o;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        int id = layer_add(&L, o);
        const size_t nw = L.dG * L.din;
        double *W = calloc(nw, sizeof(double)), *B = calloc(L.dG * L.dA, sizeof(double));
        double worst = 0;
        for (size_t t = 0; t < 5; t++) {
            layer_draw(&L, (double)c.kfac.rho, true);
            layer_observe(&L, o, id);
            for (size_t i = 0; i < nw; i++)
                W[i] = L.W[i];
            CHECK(ngd_optim_step(o) == NGD_OK);
            CHECK(ngd_optim_last_update(o, id, L.P, L.dG * L.dA) == NGD_OK);
            for (size_t r = 0; r < L.dG; r++)
                for (size_t j = 0; j < L.din; j++) { // (P's rows: d_in weights, then the bias)
                    const size_t pj = r * L.dA + j;
                    B[pj] = 0.9 * B[pj] + (double)L.P[pj];
                    const double want = W[r * L.din + j] - 0.05 * ((double)L.P[pj] + 0.9 * B[pj]);
                    worst =
                        fmax(worst, fabs((double)L.W[r * L.din + j] - want) / (fabs(want) + 1e-3));
                }
        }
        CHECK(worst < 1e-5);
        ngd_optim_free(o);
        layer_free(&L);
        free(W), free(B);
    }
}

// An override may not ask for the global KL clip under a per-layer one (its layer went
// unclipped), nor change the clip or κ under it (ignored)
static void kl_clip_overrides_should_be_refused(void) {
    layer_t L;
    layer_init(&L, 8, 5, 4, 78);
    for (int opt_kl = 0; opt_kl < 2; opt_kl++) {
        ngd_config c = ngd_config_default(NGD_METHOD_KFAC);
        c.kfac.clip = opt_kl ? NGD_CLIP_KL : NGD_CLIP_RMS;
        ngd_optim *o;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        ngd_config ov = c;
        ngd_layer l = {"fc", L.W, L.gW, L.dG, L.din, L.b, L.gb, &ov};
        int id;
        ov.kfac.clip = opt_kl ? NGD_CLIP_RMS : NGD_CLIP_KL;
        CHECK(ngd_optim_add_layer(o, &l, &id) == NGD_ERR_ARG);
        CHECK(strstr(ngd_optim_errmsg(o), "the KL clip is global") != NULL);
        ov = c, ov.kfac.clip_kappa = 0.5f; // under KL refused; under RMS a layer's own κ
        CHECK(ngd_optim_add_layer(o, &l, &id) == (opt_kl ? NGD_ERR_ARG : NGD_OK));
        ov = c, ov.lr = 0.5f; // other fields stay per layer
        l.name = "fc2";
        CHECK(ngd_optim_add_layer(o, &l, &id) == NGD_OK);
        ngd_optim_free(o);
    }
    layer_free(&L);
}

static void overflowing_statistics_should_be_refused_and_counted(void) {
    const ngd_method ms[] = {NGD_METHOD_SINGD,   NGD_METHOD_KFAC,  NGD_METHOD_RSKFAC,
                             NGD_METHOD_SREKFAC, NGD_METHOD_BKFAC, NGD_METHOD_BRKFAC,
                             NGD_METHOD_BRCKFAC};
    enum { MAXIN = 30, DOUT = 3, N = 4, MAXA = MAXIN + 1 };
    for (size_t mi = 0; mi < 2 * sizeof ms / sizeof ms[0]; mi++) {
        const size_t DIN = mi % 2 ? MAXIN : 4, DA = DIN + 1;
        ngd_config c = ngd_config_default(ms[mi / 2]);
        c.T = 1, c.kfac.T_u = 1, c.kfac.T_i = 1, c.kfac.rank = 2;
        float W[DOUT * MAXIN], b[DOUT], gW[DOUT * MAXIN], gb[DOUT], a[N * MAXIN], g[N * DOUT];
        float F1[MAXA * MAXA], F2[MAXA * MAXA];
        ref_rng r = {5};
        for (size_t i = 0; i < DOUT * DIN; i++)
            W[i] = (float)ref_uniform(&r, -0.5, 0.5);
        for (size_t i = 0; i < DOUT; i++)
            b[i] = (float)ref_uniform(&r, -0.5, 0.5);
        ngd_optim *o = NULL;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        ngd_layer L = {.name = "l",
                       .weight = W,
                       .weight_grad = gW,
                       .d_out = DOUT,
                       .d_in = DIN,
                       .bias = b,
                       .bias_grad = gb};
        int id = -1;
        CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_OK);
        for (int st = 0; st < 8; st++) {
            for (size_t i = 0; i < N * DIN; i++)
                a[i] = (float)ref_uniform(&r, -0.5, 0.5);
            if (st == 2) a[0] = 1e20f;
            for (size_t i = 0; i < N * DOUT; i++)
                g[i] = (float)ref_uniform(&r, -0.5, 0.5) / N;
            for (size_t i = 0; i < DOUT; i++) { // the gradient of these rows (finite)
                double sb = 0;
                for (size_t j = 0; j < DIN; j++) {
                    double sw = 0;
                    for (size_t n = 0; n < N; n++)
                        sw += (double)g[n * DOUT + i] * (double)a[n * DIN + j];
                    gW[i * DIN + j] = (float)sw;
                }
                for (size_t n = 0; n < N; n++)
                    sb += (double)g[n * DOUT + i];
                gb[i] = (float)sb;
            }
            CHECK(ngd_optim_observe(o, id, N, ngd_matrix_f32(a, N, DIN),
                                    ngd_matrix_f32(g, N, DOUT)) == NGD_OK);
            CHECK(ngd_optim_step(o) == NGD_OK);
            float *F = st == 1 ? F1 : F2;
            CHECK(ngd_optim_factor_dense(o, id, 'K', F, DA) == NGD_OK);
            if (st == 2 && ms[mi / 2] != NGD_METHOD_SINGD) // (SINGD's K moves with its momentum)
                CHECK(memcmp(F1, F2, DA * DA * sizeof(float)) ==
                      0); // the refused step left the factor
        }
        ngd_layer_health h;
        CHECK(ngd_optim_layer_health(o, id, &h) == NGD_OK);
        CHECK(h.decomp_failures == 1);
        CHECK(isfinite(h.trace_K) && isfinite(h.trace_C));
        for (size_t i = 0; i < DA * DA; i++)
            CHECK(isfinite(F2[i]));
        for (size_t i = 0; i < DOUT * DIN; i++)
            CHECK(isfinite(W[i]));
        ngd_optim_free(o);
    }
}

// The factor health of the K-FAC family against the factors: trace_K/C = tr(F)/d and
// norm_K/C = ‖F‖_F of the average the layer keeps ('K' / 'C': the dense EA, or U D Uᵀ on the
// B-KFAC Brand track), in float64 after every step; rank_A/G = the ranks kept (d for the
// full eigendecompositions, r for RS-KFAC, min(r, rows seen) for the Brand track).
static void kfac_health_should_match_the_factors(void) {
    const ngd_method ms[3] = {NGD_METHOD_KFAC, NGD_METHOD_RSKFAC, NGD_METHOD_BKFAC};
    enum { N = 3, DIN = 30, DOUT = 25, RANK = 8 };
    for (int mi = 0; mi < 3; mi++) {
        ngd_config c = kcfg(ms[mi]);
        c.kfac.T_u = 2, c.kfac.T_i = 3, c.kfac.rank = RANK;
        layer_t L;
        layer_init(&L, N, DIN, DOUT, 21);
        ngd_optim *o;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        int id = layer_add(&L, o);
        float *F = malloc(sizeof(float) * L.dA * L.dA);
        for (size_t t = 0; t < 7; t++) {
            layer_draw(&L, (double)c.kfac.rho, t % 2 == 0);
            layer_observe(&L, o, id);
            CHECK(ngd_optim_step(o) == NGD_OK);
            ngd_layer_health h;
            CHECK(ngd_optim_layer_health(o, id, &h) == NGD_OK);
            const size_t d[2] = {L.dA, L.dG};
            const char which[2] = {'K', 'C'};
            const double tr_got[2] = {(double)h.trace_K, (double)h.trace_C};
            const double nr_got[2] = {(double)h.norm_K, (double)h.norm_C};
            const size_t rank_got[2] = {h.rank_A, h.rank_G};
            const double tol = ms[mi] == NGD_METHOD_BKFAC ? 1e-4 : 1e-5; // UᵀU ≈ I there
            for (int f = 0; f < 2; f++) {
                CHECK(ngd_optim_factor_dense(o, id, which[f], F, d[f]) == NGD_OK);
                double tr = 0, nn = 0;
                for (size_t i = 0; i < d[f]; i++)
                    tr += (double)F[i * d[f] + i];
                for (size_t i = 0; i < d[f] * d[f]; i++)
                    nn += (double)F[i] * (double)F[i];
                tr /= (double)d[f], nn = sqrt(nn);
                CHECK_MSG(tr > 0 && fabs(tr_got[f] - tr) <= tol * tr &&
                              fabs(nr_got[f] - nn) <= tol * nn,
                          "%s factor %c step %zu: trace %.8g norm %.8g, want %.8g %.8g",
                          ngd_method_name(ms[mi]), which[f], t, tr_got[f], nr_got[f], tr, nn);
                const size_t seen = N * L.k; // rows folded in so far
                const size_t want = ms[mi] == NGD_METHOD_KFAC     ? d[f]
                                    : ms[mi] == NGD_METHOD_RSKFAC ? RANK
                                                                  : (seen < RANK ? seen : RANK);
                CHECK_MSG(rank_got[f] == want, "%s factor %c step %zu: rank %zu, want %zu",
                          ngd_method_name(ms[mi]), which[f], t, rank_got[f], want);
            }
        }
        free(F);
        ngd_optim_free(o);
        layer_free(&L);
    }
}

// The finiteness check of a large buffer goes over the threads: an Inf or a NaN anywhere
// (first, last, in any thread's half) is found at 1 and 2 threads; finite extremes are not
// flagged.
static void all_finite_should_find_any_inf_or_nan(void) {
    const size_t n = 300001;
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = i % 3 ? FLT_MAX : -FLT_MIN;
    const size_t at[] = {0, 1, n / 2, n / 2 + 1, n - 1};
    const float bad[] = {INFINITY, -INFINITY, NAN};
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
#endif
    for (int v = 0; v < 2; v++) {
#ifdef _OPENMP
        omp_set_num_threads(v + 1);
#endif
        CHECK(ngd_all_finite(x, n));
        for (size_t a = 0; a < sizeof at / sizeof at[0]; a++)
            for (size_t b = 0; b < 3; b++) {
                const float keep = x[at[a]];
                x[at[a]] = bad[b];
                CHECK_MSG(!ngd_all_finite(x, n), "%g at %zu, %d threads", (double)bad[b], at[a],
                          v + 1);
                x[at[a]] = keep;
            }
    }
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
    free(x);
}

static const test_case TESTS[] = {
    TEST(all_finite_should_find_any_inf_or_nan),
    TEST(kfac_exact_damping_should_match_the_kronecker_solve),
    TEST(kfac_pi_damping_should_match_its_factored_solve),
    TEST(stale_decompositions_should_match_the_reference),
    TEST(rskfac_at_full_rank_should_match_per_factor_damping),
    TEST(randomized_methods_should_be_exact_on_low_rank_statistics),
    TEST(brand_methods_without_truncation_should_match_the_dense_average),
    TEST(truncated_brand_factor_should_stay_below_the_average),
    TEST(tracks_should_follow_the_brand_rule),
    TEST(clips_and_weight_decay_should_follow_the_spec),
    TEST(every_method_should_reduce_the_training_loss),
    TEST(factored_application_should_equal_the_dense_one),
    TEST(singd_from_rows_should_equal_the_dense_product),
    TEST(factored_apply_should_skip_reduced_sequence_layers),
    TEST(factored_apply_should_pay_and_follow_the_rows),
    TEST(every_method_should_be_invariant_to_when_the_scale_is_set),
    TEST(a_factor_without_curvature_should_keep_the_weights_finite),
    TEST(a_huge_finite_gradient_should_still_be_clipped_and_taken),
    TEST(side_by_side_updates_should_equal_the_serial_ones),
    TEST(a_thread_count_grown_after_planning_should_keep_the_bits),
    TEST(each_thread_of_a_client_region_should_run_its_own_optimizer),
    TEST(messages_should_not_wait_on_the_clients_critical_sections),
    TEST(bad_settings_should_be_refused_with_a_reason),
    TEST(conv_statistics_should_use_the_kfc_split),
    TEST(stats_gram_should_match_float64),
    TEST(gram_by_shifts_should_match_the_unfolded_rows),
    TEST(kfac_health_should_match_the_factors),
    TEST(overflowing_statistics_should_be_refused_and_counted),
    TEST(nesterov_should_reach_the_kfac_rule),
    TEST(kl_clip_overrides_should_be_refused),
};

int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
