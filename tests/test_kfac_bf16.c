/*
 * test_kfac_bf16.c — the K-FAC family's emulated bf16 factor-path arithmetic
 * (kfac.factor_arith = NGD_BF16, issue 11 setting (b)).
 *
 * The reference (kfac_step_should_match_the_rounded_float64_reference) does K-FAC's
 * operations in float64 and rounds each operation's result to bf16, as the mode's contract
 * says (include/ngd.h; docs/algorithms.md#bf16-factor-arithmetic): the statistics products,
 * the three operations of the average, the eigendecomposition's outputs, the damping and
 * every product and element-wise step of the preconditioning. Error bound: the library and
 * the reference round the same operations, so they differ only where a result lies within
 * the other's accumulation error (f32 against f64: ~k·2^-24 relative, k <= 16 here) of a
 * bf16 rounding boundary: a chance of ~k·2^-16 per value, well under one such flip per run
 * on average. A flip moves one intermediate value by one bf16 unit (u = 2^-8 relative); the
 * stages after it are orthogonal transforms (norm-preserving) and divisions by damped
 * eigenvalue products, so S moves by about u·‖S‖_F at most. 4u·‖S‖_F allows a few flips,
 * and at most a tenth of the entries may differ at all (a flip is rare; a rounding missing
 * from one stage changes most entries by a bf16 unit, which the norm bound alone allows). The
 * f32 run differs from the bf16 one by about one bf16 unit per stage; the second check
 * demands that difference be far outside f32 rounding (so the option cannot be ignored).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "harness.h"
#include "kfac.h"
#include "lowrank.h"
#include "lrref.h"
#include "ngd.h"

// x rounded to bf16 (through float; a float64 value within 2^-24 relative of a bf16 tie may
// round the other way than a direct rounding would: one of the flips the bound covers)
static double rb(double x) { return (double)ngd_bf16_round1((float)x); }

// entries of x that are not bf16 values (low 16 bits set) or not finite
static size_t not_bf16(const float *x, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += (f_bits(x[i]) & 0xffffu) != 0 || !isfinite(x[i]);
    return bad;
}

// C (m x n) = rb(A B), A m x k, B k x n, row-major, each with a transpose flag
static void mm_rb(bool ta, const double *A, bool tb, const double *B, size_t m, size_t n, size_t k,
                  double *C) {
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0;
            for (size_t p = 0; p < k; p++)
                s += (ta ? A[p * m + i] : A[i * k + p]) * (tb ? B[j * k + p] : B[p * n + j]);
            C[i * n + j] = rb(s);
        }
}

enum { DIN = 12, DOUT = 5, NB = 16, STEPS = 2 };

// One run of K-FAC (T_u = T_i = 1, exact or π-damping, no bias, sum loss) over STEPS batches;
// returns the last preconditioned gradient in P (DOUT x DIN).
static void kfac_run(ngd_dtype arith, bool pi, const float *a, const float *g, const float *dw0,
                     float *P) {
    float *w = calloc(DOUT * DIN, 4), *dw = calloc(DOUT * DIN, 4);
    ngd_config c = ngd_config_default(NGD_METHOD_KFAC);
    c.kfac.T_u = 1, c.kfac.T_i = 1;
    c.kfac.factor_arith = arith;
    c.kfac.damping_kind = pi ? NGD_KFAC_DAMP_FACTORED_PI : NGD_KFAC_DAMP_EXACT_REL;
    c.loss_average = NGD_LOSS_SUM;
    c.keep_last_update = true;
    ngd_optim *o = NULL;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    ngd_layer L = {.name = "fc", .weight = w, .weight_grad = dw, .d_out = DOUT, .d_in = DIN};
    int id;
    CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_OK);
    for (int s = 0; s < STEPS; s++) {
        memcpy(dw, dw0 + (size_t)s * DOUT * DIN, DOUT * DIN * 4);
        CHECK(ngd_optim_observe(o, id, NB, ngd_matrix_f32(a + (size_t)s * NB * DIN, NB, DIN),
                                ngd_matrix_f32(g + (size_t)s * NB * DOUT, NB, DOUT)) == NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
    }
    CHECK(ngd_optim_last_update(o, id, P, DOUT * DIN) == NGD_OK);
    ngd_layer_health h;
    CHECK(ngd_optim_layer_health(o, id, &h) == NGD_OK);
    CHECK(h.decomp_failures == 0 && h.decomp_retries == 0);
    ngd_optim_free(o);
    free(w), free(dw);
}

// The float64 reference of the emulated run: the same operations, each result rounded.
static void kfac_reference(bool pi, const float *a, const float *g, const float *dw0, double *S,
                           double *den_min) {
    const ngd_config c = ngd_config_default(NGD_METHOD_KFAC);
    const float rho = c.kfac.rho;
    const double ra = rb(rho), rbn = rb((float)((1.0 - (double)rho) / NB));
    double eaA[DIN * DIN] = {0}, eaG[DOUT * DOUT] = {0};
    double X[NB * DIN], Y[NB * DOUT], pA[DIN * DIN], pG[DOUT * DOUT];
    for (int s = 0; s < STEPS; s++) {
        for (size_t i = 0; i < NB * DIN; i++)
            X[i] = rb(a[(size_t)s * NB * DIN + i]);
        for (size_t i = 0; i < NB * DOUT; i++)
            Y[i] = rb(g[(size_t)s * NB * DOUT + i]);
        mm_rb(true, X, false, X, DIN, DIN, NB, pA); // Σ a aᵀ
        mm_rb(true, Y, false, Y, DOUT, DOUT, NB, pG);
        for (size_t i = 0; i < DIN * DIN; i++)
            eaA[i] = rb(rb(ra * eaA[i]) + rb(rbn * pA[i]));
        for (size_t i = 0; i < DOUT * DOUT; i++)
            eaG[i] = rb(rb(ra * eaG[i]) + rb(rbn * pG[i]));
    }
    // eigendecompositions (descending), outputs rounded; identity shift ρ^k added, rounded
    double QA[DIN * DIN], QG[DOUT * DOUT], wA[DIN], wG[DOUT];
    lrref_sym_eig(DIN, eaA, wA, QA);
    lrref_sym_eig(DOUT, eaG, wG, QG);
    const double sh = rb((float)pow((double)rho, (double)STEPS));
    for (size_t i = 0; i < DIN * DIN; i++)
        QA[i] = rb(QA[i]);
    for (size_t i = 0; i < DOUT * DOUT; i++)
        QG[i] = rb(QG[i]);
    for (size_t i = 0; i < DIN; i++) {
        double x = rb(wA[i]);
        wA[i] = rb((x <= (double)c.kfac.eig_zero_tol ? 0.0 : x) + sh);
    }
    for (size_t i = 0; i < DOUT; i++) {
        double x = rb(wG[i]);
        wG[i] = rb((x <= (double)c.kfac.eig_zero_tol ? 0.0 : x) + sh);
    }
    const double lk = rb(rb(rb(c.kfac.damping_rel) * wA[0]) * wG[0]);
    // π-damping: π from the traces (sums of the shifted eigenvalues, rounded), γ_π = sqrt(λ_K),
    // the two scalings; then each denominator (γ_i + γ_π/π)(α_j + π γ_π): two sums, a product
    double trA = 0, trG = 0;
    for (size_t i = 0; i < DIN; i++)
        trA += wA[i];
    for (size_t i = 0; i < DOUT; i++)
        trG += wG[i];
    const float piv = ngd_bf16_round1(ngd_kf_pi(rb(trA), DIN, rb(trG), DOUT));
    const float gp = ngd_bf16_round1(sqrtf((float)lk));
    const double lg = rb(gp / piv), la = rb(piv * gp);
    double J[DOUT * DIN], T[DOUT * DIN];
    for (size_t i = 0; i < DOUT * DIN; i++)
        J[i] = rb(dw0[(size_t)(STEPS - 1) * DOUT * DIN + i]);
    mm_rb(true, QG, false, J, DOUT, DIN, DOUT, T); // Q_Gᵀ J
    mm_rb(false, T, false, QA, DOUT, DIN, DIN, S); // · Q_A
    *den_min = INFINITY;
    for (size_t i = 0; i < DOUT; i++)
        for (size_t j = 0; j < DIN; j++) {
            const double den =
                pi ? rb(rb(wG[i] + lg) * rb(wA[j] + la)) : rb(rb(wG[i] * wA[j]) + lk);
            *den_min = fmin(*den_min, den);
            S[i * DIN + j] = rb(S[i * DIN + j] / den);
        }
    mm_rb(false, QG, false, S, DOUT, DIN, DOUT, T); // Q_G ·
    mm_rb(false, T, true, QA, DOUT, DIN, DIN, S);   // · Q_Aᵀ
}

static void make_batches(trng *r, float *a, float *g, float *dw) {
    // statistics large against the identity shift ρ^k (which would dominate otherwise)
    tfill(r, a, STEPS * NB * DIN, -30, 30);
    tfill(r, g, STEPS * NB * DOUT, -20, 20);
    tfill(r, dw, STEPS * DOUT * DIN, -1, 1);
}

static void kfac_step_should_match_the_rounded_float64_reference(void) {
    const double u = ldexp(1.0, -8);
    for (unsigned seed = 1; seed <= 6; seed++) {
        const bool pi = seed > 4; // seeds 5, 6: π-damping
        trng r = {seed * 7919u};
        float a[STEPS * NB * DIN], g[STEPS * NB * DOUT], dw[STEPS * DOUT * DIN];
        float P16[DOUT * DIN], P32[DOUT * DIN];
        double S[DOUT * DIN], den_min;
        make_batches(&r, a, g, dw);
        kfac_run(NGD_BF16, pi, a, g, dw, P16);
        kfac_run(NGD_F32, pi, a, g, dw, P32);
        kfac_reference(pi, a, g, dw, S, &den_min);
        CHECK_MSG(not_bf16(P16, DOUT * DIN) == 0, "seed %u: S has non-bf16 entries", seed);
        double e16 = 0, e32 = 0, sn = 0;
        size_t differ = 0; // entries not equal to the reference's, bit for bit
        for (size_t i = 0; i < DOUT * DIN; i++) {
            differ += (double)P16[i] != S[i];
            e16 += ((double)P16[i] - S[i]) * ((double)P16[i] - S[i]);
            e32 += ((double)P32[i] - (double)P16[i]) * ((double)P32[i] - (double)P16[i]);
            sn += S[i] * S[i];
        }
        e16 = sqrt(e16), e32 = sqrt(e32), sn = sqrt(sn);
        const double tol = 4.0 * u * sn;
        NOTE("seed %u: |S - ref| %.3g (bound %.3g), |S_f32 - S| %.3g, |S| %.3g, min den %.3g", seed,
             e16, tol, e32, sn, den_min);
        CHECK_MSG(e16 <= tol, "seed %u: bf16 step %g from the reference (bound %g)", seed, e16,
                  tol);
        // the same operations rounded the same way give the same bits but where a flip (rare,
        // see above) moved some: at most a tenth of the entries (a rounding left out of, or
        // added to, one stage of the library changes most of them)
        CHECK_MSG(differ <= DOUT * DIN / 10, "seed %u: %zu of %d entries differ from the reference",
                  seed, differ, DOUT * DIN);
        // the mode is not ignored: the f32 step is further from it than f32 rounding
        // (k·2^-24 per stage, k <= 16, six stages) could explain
        CHECK_MSG(e32 > 6.0 * 16.0 * ldexp(1.0, -24) * 100.0 * sn,
                  "seed %u: f32 and bf16 steps differ by only %g (|S| %g)", seed, e32, sn);
    }
}

// Every stored factor quantity of each of the six methods (dense averages, the eigen- or
// low-rank representation U, D and the Brand rows) is a bf16 value after steps that ran
// statistics, decompositions, Brand updates, refreshes and corrections; so is the step.
static void stored_factor_state_should_be_bf16_values(void) {
    static const ngd_method M[] = {NGD_METHOD_KFAC,  NGD_METHOD_RSKFAC, NGD_METHOD_SREKFAC,
                                   NGD_METHOD_BKFAC, NGD_METHOD_BRKFAC, NGD_METHOD_BRCKFAC};
    const size_t din = 40, dout = 30, N = 16;
    for (size_t mi = 0; mi < sizeof M / sizeof M[0]; mi++) {
        trng r = {101 + mi};
        float *w = calloc(dout * din, 4), *dw = calloc(dout * din, 4), *b = calloc(dout, 4),
              *db = calloc(dout, 4), *a = malloc(N * din * 4), *g = malloc(N * dout * 4);
        float *P = malloc(dout * (din + 1) * 4);
        ngd_config c = ngd_config_default(M[mi]);
        c.kfac.T_u = 1, c.kfac.T_i = 2, c.kfac.rank = 8, c.kfac.oversample = 4;
        c.kfac.corr_mult = 1, c.kfac.reorth_every = 2;
        c.kfac.factor_arith = NGD_BF16;
        c.keep_last_update = true;
        ngd_optim *o = NULL;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        ngd_layer L = {.name = "fc",
                       .weight = w,
                       .weight_grad = dw,
                       .d_out = dout,
                       .d_in = din,
                       .bias = b,
                       .bias_grad = db};
        int id;
        CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_OK);
        for (int s = 0; s < 7; s++) {
            tfill(&r, a, N * din, -1, 1);
            tfill(&r, g, N * dout, -1, 1);
            tfill(&r, dw, dout * din, -0.01, 0.01);
            tfill(&r, db, dout, -0.01, 0.01);
            CHECK(ngd_optim_observe(o, id, N, ngd_matrix_f32(a, N, din),
                                    ngd_matrix_f32(g, N, dout)) == NGD_OK);
            CHECK(ngd_optim_step(o) == NGD_OK);
        }
        const kf_state *st = o->e[id].ms;
        size_t bad = 0, checked = 0;
        for (int k = 0; k < 2; k++) {
            const kf_factor *f = &st->f[k];
            CHECK(f->cnt.rank > 0);
            if (f->ea) bad += not_bf16(f->ea, f->d * f->d), checked += f->d * f->d;
            bad += not_bf16(f->U, f->d * f->cap) + not_bf16(f->D, f->cap);
            checked += f->d * f->cap + f->cap;
            if (f->rows) bad += not_bf16(f->rows, f->rows_cap * f->d);
        }
        CHECK(ngd_optim_last_update(o, id, P, dout * (din + 1)) == NGD_OK);
        bad += not_bf16(P, dout * (din + 1));
        CHECK_MSG(bad == 0, "%s: %zu of %zu stored values are not bf16 values",
                  ngd_method_name(M[mi]), bad, checked);
        ngd_layer_health h;
        CHECK(ngd_optim_layer_health(o, id, &h) == NGD_OK);
        CHECK_MSG(h.decomp_retries == 0, "%s: float64 retries in bf16 mode",
                  ngd_method_name(M[mi]));
        ngd_optim_free(o);
        free(w), free(dw), free(b), free(db), free(a), free(g), free(P);
    }
}

// Non-finite statistics under bf16 arithmetic (an overflowing row): counted, never a crash
// or an error; the step stays finite (the previous decomposition is kept).
static void nonfinite_statistics_should_be_counted(void) {
    const size_t din = 6, dout = 4, N = 8;
    float w[24] = {0}, dw[24], a[48], g[32], P[24];
    trng r = {5};
    ngd_config c = ngd_config_default(NGD_METHOD_KFAC);
    c.kfac.T_u = 1, c.kfac.T_i = 1, c.kfac.factor_arith = NGD_BF16, c.keep_last_update = true;
    ngd_optim *o = NULL;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    ngd_layer L = {.name = "fc", .weight = w, .weight_grad = dw, .d_out = dout, .d_in = din};
    int id;
    CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_OK);
    for (int s = 0; s < 3; s++) {
        tfill(&r, a, N * din, -1, 1);
        tfill(&r, g, N * dout, -1, 1);
        tfill(&r, dw, dout * din, -0.01, 0.01);
        if (s == 2) a[3] = 3e38f; // its square overflows: Inf in the average
        CHECK(ngd_optim_observe(o, id, N, ngd_matrix_f32(a, N, din), ngd_matrix_f32(g, N, dout)) ==
              NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
    }
    ngd_layer_health h;
    CHECK(ngd_optim_layer_health(o, id, &h) == NGD_OK);
    CHECK_MSG(h.decomp_failures >= 1, "failures %zu", h.decomp_failures);
    CHECK(h.decomp_retries == 0);
    CHECK(ngd_optim_last_update(o, id, P, dout * din) == NGD_OK);
    for (size_t i = 0; i < dout * din; i++)
        CHECK(isfinite(P[i]));
    ngd_optim_free(o);
}

// The low-rank application of RS-KFAC, SRE-KFAC and the B methods (ngd_lri_apply, one side)
// under emulated bf16 arithmetic, against the float64 reference of the same operations each
// rounded: T = Uᵀ X; the coefficient ((μ − δ)/(δ + λ))/(μ + λ) step by step; T scaled by it;
// Y = X·(1/(μ + λ)); Y = U T + Y (one GEMM with accumulation). Bound as in the K-FAC test
// (reductions of length d = 24 or r = 6); with the mode off the same call must differ.
static void lowrank_application_should_match_the_rounded_reference(void) {
    enum { D = 24, R = 6, M = 10 };
    const double u = ldexp(1.0, -8);
    for (unsigned seed = 1; seed <= 4; seed++) {
        trng r = {seed * 104729u};
        float U[D * R], Dv[R], X[D * M], Y16[D * M], Y32[D * M];
        tfill(&r, U, D * R, -0.5, 0.5);
        tfill(&r, X, D * M, -1, 1);
        for (size_t i = 0; i < R; i++)
            Dv[i] = (float)(8.0 - (double)i - tu(&r)); // descending, positive
        ngd_bf16_round(U, D * R), ngd_bf16_round(X, D * M), ngd_bf16_round(Dv, R);
        const float lam = ngd_bf16_round1(0.37f), mu = seed % 2 ? 0.0f : ngd_bf16_round1(1.3f);
        ngd_lowrank F = {U, Dv, D, R, R};
        size_t wsb = ngd_lri_apply_ws(R, M);
        void *ws = malloc(wsb);
        for (int em = 0; em < 2; em++) {
            const bool was = ngd_bf16_emul_set(em == 1);
            CHECK(ngd_lri_apply(&F, lam, mu, ngd_cview_rm(X, D, M, M),
                                ngd_view_rm(em ? Y16 : Y32, D, M, M), ws, wsb) == NGD_OK);
            ngd_bf16_emul_set(was);
        }
        free(ws);
        double T[R * M], Y[D * M];
        for (size_t k = 0; k < R; k++) {
            const double c =
                rb(rb(rb((double)mu - (double)Dv[k]) / rb((double)Dv[k] + (double)lam)) /
                   rb((double)mu + (double)lam));
            for (size_t j = 0; j < M; j++) {
                double t = 0;
                for (size_t i = 0; i < D; i++)
                    t += (double)U[i * R + k] * (double)X[i * M + j];
                T[k * M + j] = rb(rb(t) * c);
            }
        }
        const double inv = rb(1.0 / rb((double)mu + (double)lam));
        double yn = 0, e16 = 0, e32 = 0;
        size_t differ = 0;
        for (size_t i = 0; i < D; i++)
            for (size_t j = 0; j < M; j++) {
                double y = rb((double)X[i * M + j] * inv);
                for (size_t k = 0; k < R; k++)
                    y += (double)U[i * R + k] * T[k * M + j];
                Y[i * M + j] = rb(y);
            }
        for (size_t i = 0; i < D * M; i++) {
            differ += (double)Y16[i] != Y[i];
            e16 += ((double)Y16[i] - Y[i]) * ((double)Y16[i] - Y[i]);
            e32 += ((double)Y32[i] - Y[i]) * ((double)Y32[i] - Y[i]);
            yn += Y[i] * Y[i];
        }
        e16 = sqrt(e16), e32 = sqrt(e32), yn = sqrt(yn);
        NOTE("seed %u: |Y - ref| %.3g, %zu of %d differ; f32 call %.3g from it; |Y| %.3g", seed,
             e16, differ, D * M, e32, yn);
        CHECK_MSG(e16 <= 4.0 * u * yn && differ <= D * M / 10,
                  "seed %u: %zu entries differ, |Y - ref| %g (|Y| %g)", seed, differ, e16, yn);
        CHECK_MSG(e32 > 100.0 * 16.0 * ldexp(1.0, -24) * yn, "seed %u: the switch changed nothing",
                  seed);
    }
}

static void config_should_refuse_a_bad_factor_arith(void) {
    ngd_config c = ngd_config_default(NGD_METHOD_RSKFAC);
    char msg[256] = "";
    c.kfac.factor_arith = (ngd_dtype)7;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG);
    CHECK_MSG(strstr(msg, "kfac.factor_arith") != NULL, "message: %s", msg);
    c.kfac.factor_arith = NGD_BF16;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_OK);
}

static const test_case TESTS[] = {
    TEST(kfac_step_should_match_the_rounded_float64_reference),
    TEST(stored_factor_state_should_be_bf16_values),
    TEST(nonfinite_statistics_should_be_counted),
    TEST(lowrank_application_should_match_the_rounded_reference),
    TEST(config_should_refuse_a_bad_factor_arith),
};

int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
