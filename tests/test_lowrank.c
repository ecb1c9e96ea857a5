/* test_lowrank.c — the K-FAC family's numerical kernels (src/core/lowrank.c) against float64
 * references, as the testable properties P1–P16 of docs/algorithms.md#k-fac-family-test-properties
 * (the kernel-level ones; method-level P16 parts belong to the optimizer's tests).
 *
 * The tolerances listed there are for f64 kernels. Ours are f32, so every bound here is an f32
 * one, named below with its reason: eps32 = 6e-8 (unit roundoff) times the growth the
 * computation allows (a condition number, sqrt of a summation length, an update count).
 * Run with -v to print every observed error next to its bound.
 */
#include <float.h>

#include <lapacke.h>
#undef I // <complex.h>, included by lapacke.h: I is a matrix name here
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "harness.h"
#include "impl.h"
#include "kfac.h" // the K-FAC policy of π-damping and the track choice
#include "lowrank.h"
#include "lrref.h"
#include "ref.h"
#include "rng.h"

// ---- tolerances (f32 kernels vs f64 references) ----

// LR+I inverse, relative to max |ref|: eps32 × κ = (δmax+λ)/λ = 11 (λ = 0.1 δmax) × the
// sqrt(r) growth of two GEMMs ≈ 3e-6 (observed ~2e-7).
#define TOL_LRI 3e-6
// LR+I at r = d with μ = 0 (P16): U diag(1/(δ+λ) − 1/λ) Uᵀ X + X/λ cancels to a factor
// (δmax+λ)/λ = 11 on top of TOL_LRI's terms, and U is an RSVD basis (orthonormal to
// ~eps32·sqrt(d)): 1e-5 (observed ~1e-6).
#define TOL_LRI_FULL 1e-5
// Brand exactness (P1/P2/P14), reconstruction relative in Frobenius: each entry of P, R,
// Q carries ~eps32·sqrt(d) (d-term f32 sums) ⇒ ~1e-6 for d ≤ 200 (observed <= 4e-7).
#define TOL_BRAND_REC 4e-6
// Orthonormality of U⁺ (max |UᵀU − I|): U's own f32 defect (~eps32·sqrt(d)) plus one
// rotation; 2e-6 is ~30 eps32.
#define TOL_ORTH 2e-6
// Eigenvalues of Brand / RR / reorth / ssyevd vs the dense f64 EVD, relative to the
// largest: the f32 EVD's backward error is ~d·eps32·‖A‖ = 4e-6 at d = 70; Brand's come from
// an f64 EVD of f32 data, ~TOL_BRAND_REC (observed <= 4e-7).
#define TOL_EIG 1e-5
// Truncated stream (P4/P5), relative to ‖F̄‖₂ or tr(F̄): ~20 effective updates (1/(1−ρ))
// of ~eps32·sqrt(d) each, plus the f32 storage of U and D.
#define TOL_STREAM 2e-5
// P5's trace identity, relative to tr(F̄): tr(M) = ρ tr(D) + ‖P‖² + ‖R‖² is exact up to the
// f32 rounding of P, R and D (~eps32 per update), ~20 effective updates: 2e-6 (observed 7e-8).
#define TOL_TRACE 2e-6
// K-FAC eigen-preconditioners (P10/P13/P16), relative to max |ref|: eps32 × κ(kron + λ)
// ≤ 11 × the f32 EVD's backward error growth (~sqrt(d)); 2e-5 for d ≤ 70 (observed 2e-6).
#define TOL_KFAC 2e-5
// RSVD / SREVD eigenvalue error at q = 4 on clean decay, relative to σ1 (spec 1e-9 in f64):
// the f32 floor is the rounding of X and of 10 products, ~eps32·sqrt(d)·σ1 ≈ 1e-6.
#define TOL_RSVD_EIG_Q4 1e-5
// Spectral-error ratio slack for f32: the f32 floor ~1e-6 relative to σ_{r+1} = 0.12 is 1e-5.
#define TOL_RATIO_F32 1e-4
// RR correction: "never increases ‖F̄ − UDUᵀ‖_F" up to f32 rounding of the rotation,
// relative to ‖F̄‖_F.
#define TOL_RR_MONO 1e-6
// Factored application (P7) vs the two-sided f64 reference: TOL_LRI on each side, and the
// Gram-matrix norm / inner product (n² f32 Gram entries summed in f64).
#define TOL_FACT 1e-5

// ---- helpers ----

static double *dalloc(size_t n) { return calloc(n ? n : 1, sizeof(double)); }
static float *falloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

static ngd_lowrank lr_make(size_t d, size_t cap) {
    ngd_lowrank F = {falloc(d * cap), falloc(cap), d, 0, cap};
    return F;
}
static void lr_free(ngd_lowrank *F) {
    free(F->U);
    free(F->D);
}
// F := (U, D) from f64 U (d x r) and D (r)
static void lr_set(ngd_lowrank *F, const double *U, const double *D, size_t r) {
    for (size_t i = 0; i < F->d; i++)
        for (size_t j = 0; j < r; j++)
            F->U[i * F->cap + j] = (float)U[i * r + j];
    for (size_t j = 0; j < r; j++)
        F->D[j] = (float)D[j];
    F->r = r;
}
static void lr_copy(ngd_lowrank *dst, const ngd_lowrank *src) {
    memcpy(dst->U, src->U, src->d * src->cap * sizeof(float));
    memcpy(dst->D, src->D, src->cap * sizeof(float));
    dst->r = src->r;
}
static void lr_dense(const ngd_lowrank *F, double *out) {
    lrref_lowrank_dense(F->d, F->r, F->U, F->cap, F->D, out);
}
static void *wsa(size_t bytes) {
    CHECK(bytes > 0);
    return malloc(bytes ? bytes : 1);
}
// max |got − want| / max |want|
static double rel_err(const float *got, const double *want, size_t n) {
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double x = fabs((double)got[i] - want[i]);
        e = (x > e || x != x) ? x : e;
        m = fmax(m, fabs(want[i]));
    }
    return m > 0 ? e / m : e;
}
static bool all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return false;
    return true;
}
// dense (U D Uᵀ + μ(I − UUᵀ) + λI) in f64 from the f32 representation
static void lri_dense_matrix(const ngd_lowrank *F, double lambda, double mu, double *M) {
    size_t d = F->d;
    lr_dense(F, M);
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            double uu = 0;
            for (size_t k = 0; k < F->r; k++)
                uu += (double)F->U[i * F->cap + k] * (double)F->U[j * F->cap + k];
            M[i * d + j] += mu * ((i == j ? 1.0 : 0.0) - uu) + (i == j ? lambda : 0.0);
        }
}
// random PSD (f64) d x d: B Bᵀ/k with B d x k Gaussian
static void random_psd(ref_rng *g, size_t d, size_t k, double *A) {
    double *B = dalloc(d * k);
    lrref_gauss(g, B, d * k);
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j <= i; j++) {
            double s = 0;
            for (size_t l = 0; l < k; l++)
                s += B[i * k + l] * B[j * k + l];
            A[i * d + j] = A[j * d + i] = s / (double)k;
        }
    free(B);
}
// f64 symmetric matrix rounded to f32, and back (so the reference sees the f32 input)
static float *round_sym(double *A, size_t d) {
    float *a = falloc(d * d);
    ref_to_float(A, a, d * d);
    ref_to_double(a, A, d * d);
    return a;
}
// descending spectrum of a random decaying PSD: σ_i = exp(−i/τ)
static void decay_spectrum(double *s, size_t d, double tau) {
    for (size_t i = 0; i < d; i++)
        s[i] = exp(-(double)(i + 1) / tau);
}

// ==== the references themselves ====

// The plain-C eigenvalue reference (tridiagonal + bisection) agrees with LAPACK's dsyevd on
// an indefinite matrix with a repeated eigenvalue, to f64 rounding (1e-13 of the norm).
static void reference_eigvals_should_match_lapack(void) {
    ref_rng g = {1};
    const size_t d = 90;
    double *s = dalloc(d), *A = dalloc(d * d), *w = dalloc(d), *wl = dalloc(d);
    double *V = dalloc(d * d);
    for (size_t i = 0; i < d; i++)
        s[i] = i < 5 ? 2.0 : cos((double)i); // 2.0 five times
    lrref_sym_from_spectrum(&g, d, s, A);
    lrref_sym_eig(d, A, w, NULL);
    lrref_sym_eig(d, A, wl, V);
    double e = 0;
    for (size_t i = 0; i < d; i++)
        e = fmax(e, fabs(w[i] - wl[i]));
    NOTE("reference eigvals vs LAPACK: %.2e", e);
    CHECK(e <= 1e-13 * 2.0);
    CHECK(fabs(w[0] - 2.0) <= 1e-13 && fabs(w[4] - 2.0) <= 1e-13);
    CHECK_CLOSE(lrref_sym_norm2(d, A), 2.0, 1e-13, 0);
    CHECK_CLOSE(lrref_sym_min_eig(d, A), wl[d - 1], 0, 1e-13);
    free(s), free(A), free(w), free(wl), free(V);
}

// ==== #low-rank-inverse ====

// P6 (first half): #low-rank-inverse vs a dense solve, μ = 0 and μ = δ_min, left, right, in place.
static void lri_should_match_dense_solve(void) {
    ref_rng g = {11};
    const size_t d = 120, r = 15, m = 9;
    double *U = dalloc(d * r), *D = dalloc(r);
    lrref_random_orthonormal(&g, d, r, U);
    for (size_t i = 0; i < r; i++)
        D[i] = 2.0 * exp(-(double)i / 4.0);
    ngd_lowrank F = lr_make(d, r + 3);
    lr_set(&F, U, D, r);
    double *X = dalloc(d * m), *M = dalloc(d * d), *Y = dalloc(d * m), *Yt = dalloc(m * d);
    lrref_gauss(&g, X, d * m);
    float *x = falloc(d * m), *y = falloc(d * m), *xt = falloc(m * d), *yt = falloc(m * d);
    ref_to_float(X, x, d * m);
    ref_to_double(x, X, d * m);
    size_t wsb = ngd_lri_apply_ws(r, m);
    void *ws = wsa(wsb);
    for (int tail = 0; tail < 2; tail++) {
        float lambda = 0.1f * F.D[0], mu = tail ? F.D[r - 1] : 0.0f;
        lri_dense_matrix(&F, (double)lambda, (double)mu, M);
        memcpy(Y, X, d * m * sizeof *Y);
        CHECK(lrref_solve(d, M, m, Y) == 0);
        // left
        CHECK(ngd_lri_apply(&F, lambda, mu, ngd_cview_rm(x, d, m, m), ngd_view_rm(y, d, m, m), ws,
                            wsb) == NGD_OK);
        double e = rel_err(y, Y, d * m);
        NOTE("P6 lri left mu=%g: rel err %.2e (tol %.0e)", (double)mu, e, TOL_LRI);
        CHECK(e <= TOL_LRI);
        // left, in place
        memcpy(y, x, d * m * sizeof *y);
        CHECK(ngd_lri_apply(&F, lambda, mu, ngd_cview_rm(y, d, m, m), ngd_view_rm(y, d, m, m), ws,
                            wsb) == NGD_OK);
        CHECK(rel_err(y, Y, d * m) <= TOL_LRI);
        // right: X (m x d) row-major, Y = X (…)^{-1} = ((…)^{-1} Xᵀ)ᵀ
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < m; j++) {
                xt[j * d + i] = x[i * m + j];
                Yt[j * d + i] = Y[i * m + j];
            }
        CHECK(ngd_lri_apply_right(&F, lambda, mu, ngd_cview_rm(xt, m, d, d),
                                  ngd_view_rm(yt, m, d, d), ws, wsb) == NGD_OK);
        e = rel_err(yt, Yt, d * m);
        NOTE("P6 lri right mu=%g: rel err %.2e", (double)mu, e);
        CHECK(e <= TOL_LRI);
    }
    free(ws);
    free(U), free(D), free(X), free(M), free(Y), free(Yt), free(x), free(y), free(xt), free(yt);
    lr_free(&F);
}

// P6 (second half): F̂ ⪯ F̄ ⇒ (F̂+λI)^{-1} ⪰ (F̄+λI)^{-1} and
// ‖(F̂+λI)^{-1} − (F̄+λI)^{-1}‖₂ ≤ ‖F̄ − F̂‖₂/λ², with F̂ the best rank-r part of F̄.
static void lri_should_obey_loewner_order(void) {
    ref_rng g = {12};
    const size_t d = 80, r = 10;
    double *s = dalloc(d), *Fb = dalloc(d * d), *w = dalloc(d), *V = dalloc(d * d);
    decay_spectrum(s, d, 6.0);
    lrref_sym_from_spectrum(&g, d, s, Fb);
    lrref_sym_eig(d, Fb, w, V);
    ngd_lowrank F = lr_make(d, r);
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < r; j++)
            F.U[i * r + j] = (float)V[i * d + j];
    for (size_t j = 0; j < r; j++)
        F.D[j] = (float)w[j];
    F.r = r;
    float lambda = 0.05f * F.D[0];
    // (F̂+λI)^{-1} by applying the kernel to I
    float *I = falloc(d * d), *inv = falloc(d * d);
    for (size_t i = 0; i < d; i++)
        I[i * d + i] = 1.0f;
    size_t wsb = ngd_lri_apply_ws(r, d);
    void *ws = wsa(wsb);
    CHECK(ngd_lri_apply(&F, lambda, 0.0f, ngd_cview_rm(I, d, d, d), ngd_view_rm(inv, d, d, d), ws,
                        wsb) == NGD_OK);
    // (F̄+λI)^{-1} in f64, and the difference
    double *B = dalloc(d * d), *E = dalloc(d * d), *Fh = dalloc(d * d);
    for (size_t i = 0; i < d; i++)
        B[i * d + i] = 1.0;
    double *A = dalloc(d * d);
    memcpy(A, Fb, d * d * sizeof *A);
    for (size_t i = 0; i < d; i++)
        A[i * d + i] += (double)lambda;
    CHECK(lrref_solve(d, A, d, B) == 0);
    for (size_t i = 0; i < d * d; i++)
        E[i] = (double)inv[i] - B[i];
    for (size_t i = 0; i < d; i++) // symmetrise the f32 rounding out of the Loewner test
        for (size_t j = 0; j < i; j++)
            E[i * d + j] = E[j * d + i] = 0.5 * (E[i * d + j] + E[j * d + i]);
    lr_dense(&F, Fh);
    for (size_t i = 0; i < d * d; i++)
        Fh[i] = Fb[i] - Fh[i];
    double inv_norm = 1.0 / (double)lambda; // ‖(F̄+λI)^{-1}‖₂
    double lmin = lrref_sym_min_eig(d, E), nE = lrref_sym_norm2(d, E);
    double bound = lrref_sym_norm2(d, Fh) / ((double)lambda * (double)lambda);
    NOTE("P6 loewner: lmin %.3e (>= -%.1e), |diff| %.4g <= %.4g", lmin, TOL_LRI * inv_norm, nE,
         bound);
    CHECK(lmin >= -TOL_LRI * inv_norm);
    CHECK(nE <= bound + TOL_LRI * inv_norm);
    free(ws);
    free(s), free(Fb), free(w), free(V), free(I), free(inv), free(B), free(E), free(Fh), free(A);
    lr_free(&F);
}

// P11 as the kernels use it: the identity init moved into the damping. An EA from I plus λI
// equals (EA from 0) + (λ + ρ^k) I, so LRI of the EA-from-0 representation (built by Brand
// updates from zero, exact at this rank) with λ' = λ + ρ^k solves against the EA from I.
static void identity_init_should_move_into_damping(void) {
    ref_rng g = {13};
    const size_t d = 60, n = 3, steps = 5, m = 4;
    const float rho = 0.9f;
    const double rh = (double)rho;
    double *EI = dalloc(d * d), *C = dalloc(d * n);
    for (size_t i = 0; i < d; i++)
        EI[i * d + i] = 1.0; // Ā_0 = I
    ngd_lowrank F = lr_make(d, n * steps);
    size_t wsb = ngd_brand_update_ws(d, n * steps, n);
    void *ws = wsa(wsb);
    float *c = falloc(d * n);
    for (size_t k = 0; k < steps; k++) {
        lrref_gauss(&g, C, d * n);
        for (size_t i = 0; i < d * n; i++)
            C[i] *= sqrt((1.0 - rh) / (double)n);
        ref_to_float(C, c, d * n);
        ref_to_double(c, C, d * n);
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++) {
                double s = 0;
                for (size_t l = 0; l < n; l++)
                    s += C[i * n + l] * C[j * n + l];
                EI[i * d + j] = rh * EI[i * d + j] + s;
            }
        CHECK(ngd_brand_update(&F, rho, ngd_cview_rm(c, d, n, n), 1.0f, n * steps, NULL, NULL, ws,
                               wsb) == NGD_OK);
    }
    CHECK(F.r == n * steps);
    double rk = pow(rh, (double)steps);
    float lambda = 0.1f;
    double *A = dalloc(d * d), *X = dalloc(d * m);
    memcpy(A, EI, d * d * sizeof *A);
    for (size_t i = 0; i < d; i++)
        A[i * d + i] += (double)lambda;
    lrref_gauss(&g, X, d * m);
    float *x = falloc(d * m), *y = falloc(d * m);
    ref_to_float(X, x, d * m);
    ref_to_double(x, X, d * m);
    CHECK(lrref_solve(d, A, m, X) == 0);
    size_t wl = ngd_lri_apply_ws(F.r, m);
    void *wsl = wsa(wl);
    CHECK(ngd_lri_apply(&F, lambda + (float)rk, 0.0f, ngd_cview_rm(x, d, m, m),
                        ngd_view_rm(y, d, m, m), wsl, wl) == NGD_OK);
    double e = rel_err(y, X, d * m);
    NOTE("P11 identity in damping: rel err %.2e (rho^k = %.3f)", e, rk);
    CHECK(e <= TOL_LRI);
    free(ws), free(wsl), free(EI), free(C), free(c), free(A), free(X), free(x), free(y);
    lr_free(&F);
}

// ==== #rsvd, #sre-kfac: randomized eigendecompositions ====

typedef ngd_status (*rand_fn)(ngd_cview, size_t, size_t, size_t, float, ngd_rng *, ngd_lowrank *,
                              void *, size_t);

// ‖X − U D Uᵀ‖₂ / σ_{r+1} and max_{i≤r} |D_i − σ_i| / σ_1 for one run
static void rand_run(rand_fn fn, size_t wsb, const float *x, const double *X, const double *s,
                     size_t d, size_t r, size_t p, size_t q, uint64_t seed, double *ratio,
                     double *eig_err) {
    ngd_lowrank F = lr_make(d, r);
    ngd_rng rng;
    ngd_rng_seed(&rng, seed, 0);
    void *ws = wsa(wsb);
    CHECK(fn(ngd_cview_rm(x, d, d, d), r, p, q, 1e-10f, &rng, &F, ws, wsb) == NGD_OK);
    CHECK(F.r == r);
    CHECK(all_finite(F.U, d * r) && all_finite(F.D, r));
    for (size_t i = 1; i < r; i++)
        CHECK(F.D[i] <= F.D[i - 1]); // descending
    double *E = dalloc(d * d);
    lr_dense(&F, E);
    for (size_t i = 0; i < d * d; i++)
        E[i] = X[i] - E[i];
    *ratio = lrref_sym_norm2(d, E) / s[r];
    double m = 0;
    for (size_t i = 0; i < r; i++)
        m = fmax(m, fabs((double)F.D[i] - s[i]));
    *eig_err = m / s[0];
    free(E);
    free(ws);
    lr_free(&F);
}

// P9, clean decay σ_i = exp(−i/10), d = 300, r = 20, p = 10: RSVD at q = 4, 1, 0 (bounds
// of the spec, f32 floors), SREVD at q ≥ 1, and the Halko expectation bound at q = 0.
static void rsvd_should_capture_clean_decay(void) {
    ref_rng g = {21};
    const size_t d = 300, r = 20, p = 10;
    double *s = dalloc(d), *X = dalloc(d * d);
    decay_spectrum(s, d, 10.0);
    lrref_sym_from_spectrum(&g, d, s, X);
    float *x = round_sym(X, d);
    size_t w1 = ngd_rsvd_sym_ws(d, r, p), w2 = ngd_srevd_ws(d, r, p);
    double ratio, ee;
    rand_run(ngd_rsvd_sym, w1, x, X, s, d, r, p, 4, 1, &ratio, &ee);
    NOTE("P9 rsvd q=4: ratio %.6f (<= 1.001), eig err %.2e (tol %.0e)", ratio, ee, TOL_RSVD_EIG_Q4);
    CHECK(ratio <= 1.001 + TOL_RATIO_F32);
    CHECK(ee <= TOL_RSVD_EIG_Q4);
    rand_run(ngd_rsvd_sym, w1, x, X, s, d, r, p, 1, 2, &ratio, &ee);
    NOTE("P9 rsvd q=1: ratio %.6f (<= 1.01), eig err %.2e (<= 1e-3)", ratio, ee);
    CHECK(ratio <= 1.01 + TOL_RATIO_F32);
    CHECK(ee <= 1e-3);
    // Halko et al. (2011) expectation bound for q = 0, loosened 3x for a single draw
    double tail = 0;
    for (size_t j = r; j < d; j++)
        tail += s[j] * s[j];
    double halko = (1.0 + sqrt((double)r / (double)(p - 1))) * s[r] +
                   (exp(1.0) * sqrt((double)(r + p)) / (double)p) * sqrt(tail);
    for (uint64_t seed = 3; seed < 6; seed++) {
        rand_run(ngd_rsvd_sym, w1, x, X, s, d, r, p, 0, seed, &ratio, &ee);
        NOTE("P9 rsvd q=0 seed %d: ratio %.4f (<= 2.5), err %.4f (halko x3 %.4f)", (int)seed, ratio,
             ratio * s[r], 3 * halko);
        CHECK(ratio <= 2.5);
        CHECK(ratio * s[r] <= 3.0 * halko);
    }
    // SREVD at q makes q + 1 products with X, RSVD 2q + 2, and SREVD at q = 1 works in
    // span(XΩ), the subspace of RSVD at q = 0. So the spec's "same bounds for q >= 1" holds
    // at equal product counts: q = 1 meets RSVD q = 0's ratio bound, q = 2 (3 products)
    // the q = 1 ratio bound, q = 4 the q = 4 ratio bound with eigenvalue error <= 1e-4
    // (5 products; observed ~1e-5), and q = 9 (10 products) all RSVD q = 4 bounds.
    const size_t sq[] = {1, 2, 4, 9};
    const double ratio_max[] = {2.5, 1.01, 1.001, 1.001},
                 eig_max[] = {1, 1e-2, 1e-4, TOL_RSVD_EIG_Q4};
    for (size_t k = 0; k < 4; k++) {
        rand_run(ngd_srevd, w2, x, X, s, d, r, p, sq[k], 7 + sq[k], &ratio, &ee);
        NOTE("P9 srevd q=%zu: ratio %.6f (<= %g), eig err %.2e (<= %.0e)", sq[k], ratio,
             ratio_max[k], ee, eig_max[k]);
        CHECK(ratio <= ratio_max[k] + TOL_RATIO_F32);
        CHECK(ee <= eig_max[k]);
    }
    free(s), free(X), free(x);
}

// P9, clustered gap-free spectrum σ_i = 0.95^⌊i/8⌋ (an EA of rank-8 terms): spectral ratio
// <= 1.1 for q >= 1, RSVD and SREVD. Eigenvalue errors are not asserted (spec).
static void rsvd_should_bound_error_on_clustered_spectrum(void) {
    ref_rng g = {22};
    const size_t d = 300, r = 20, p = 10;
    double *s = dalloc(d), *X = dalloc(d * d);
    for (size_t i = 0; i < d; i++)
        s[i] = pow(0.95, (double)(i / 8));
    lrref_sym_from_spectrum(&g, d, s, X);
    float *x = round_sym(X, d);
    size_t w1 = ngd_rsvd_sym_ws(d, r, p), w2 = ngd_srevd_ws(d, r, p);
    const size_t qs[] = {1, 2, 4};
    for (size_t k = 0; k < 3; k++) {
        double ratio, ee;
        rand_run(ngd_rsvd_sym, w1, x, X, s, d, r, p, qs[k], 30 + k, &ratio, &ee);
        NOTE("P9 clustered rsvd q=%zu: ratio %.4f (<= 1.1)", qs[k], ratio);
        CHECK(ratio <= 1.1);
        rand_run(ngd_srevd, w2, x, X, s, d, r, p, qs[k], 40 + k, &ratio, &ee);
        NOTE("P9 clustered srevd q=%zu: ratio %.4f (<= 1.1)", qs[k], ratio);
        CHECK(ratio <= 1.1);
    }
    free(s), free(X), free(x);
}

// The sketch comes from the library RNG: the same (seed, stream) gives the same bits; the
// eigenvalues below eig_zero_tol are zeroed; r = d and a zero matrix are handled.
static void rsvd_should_be_reproducible_and_handle_edges(void) {
    ref_rng g = {23};
    const size_t d = 40, r = 8, p = 5;
    double *s = dalloc(d), *X = dalloc(d * d);
    for (size_t i = 0; i < d; i++)
        s[i] = i < 5 ? 1.0 / (double)(i + 1) : 0.0; // rank 5
    lrref_sym_from_spectrum(&g, d, s, X);
    float *x = round_sym(X, d);
    ngd_lowrank A = lr_make(d, d), B = lr_make(d, d);
    size_t wsb = ngd_rsvd_sym_ws(d, d, p);
    void *ws = wsa(wsb);
    for (int srevd = 0; srevd < 2; srevd++) {
        rand_fn fn = srevd ? ngd_srevd : ngd_rsvd_sym;
        size_t wr = srevd ? ngd_srevd_ws(d, r, p) : ngd_rsvd_sym_ws(d, r, p);
        void *w2 = wsa(wr);
        ngd_rng r1, r2;
        ngd_rng_seed(&r1, 5, 1);
        ngd_rng_seed(&r2, 5, 1);
        CHECK(fn(ngd_cview_rm(x, d, d, d), r, p, 2, 1e-5f, &r1, &A, w2, wr) == NGD_OK);
        CHECK(fn(ngd_cview_rm(x, d, d, d), r, p, 2, 1e-5f, &r2, &B, w2, wr) == NGD_OK);
        CHECK(memcmp(A.U, B.U, d * d * sizeof(float)) == 0 && memcmp(A.D, B.D, r * 4) == 0);
        // rank 5: D[5..7] are O(eps) and must be zeroed by the tolerance 1e-5
        for (size_t i = 5; i < r; i++)
            CHECK(A.D[i] == 0.0f);
        for (size_t i = 0; i < 5; i++)
            CHECK_CLOSE(A.D[i], s[i], 1e-5, 0);
        // zero matrix: D = 0, no NaN
        float *z = falloc(d * d);
        CHECK(fn(ngd_cview_rm(z, d, d, d), r, p, 1, 1e-10f, &r1, &A, w2, wr) == NGD_OK);
        CHECK(all_finite(A.U, d * d));
        for (size_t i = 0; i < r; i++)
            CHECK(A.D[i] == 0.0f);
        // a NaN or an infinity anywhere: a numerical failure, A as it was (LAPACK's sgesvd
        // never returned on the NaN the sketch carried to it)
        memcpy(B.U, A.U, d * d * sizeof(float)), memcpy(B.D, A.D, d * sizeof(float));
        B.r = A.r;
        const float bad[2] = {NAN, INFINITY};
        for (int k = 0; k < 2; k++) {
            memcpy(z, x, d * d * sizeof(float));
            z[(size_t)k * 7 * d + 3] = bad[k];
            CHECK(fn(ngd_cview_rm(z, d, d, d), r, p, 2, 1e-5f, &r1, &A, w2, wr) == NGD_ERR_NUMERIC);
            CHECK(A.r == B.r && memcmp(A.U, B.U, d * d * sizeof(float)) == 0 &&
                  memcmp(A.D, B.D, d * sizeof(float)) == 0);
        }
        free(z);
        free(w2);
    }
    // ... and at 5 x 5 with the NaN or infinity at (0, 0), r = 2, ℓ = d, q = 4: where sgesvd
    // spun for good
    for (int k = 0; k < 4; k++) {
        const size_t d5 = 5;
        float x5[25], U5[10], D5[2] = {7.0f, 7.0f};
        for (size_t i = 0; i < 25; i++)
            x5[i] = i % 6 == 0 ? 1.0f : 0.1f;
        x5[0] = k & 1 ? INFINITY : NAN;
        ngd_lowrank L5 = {U5, D5, d5, 0, 2};
        ngd_rng r5;
        ngd_rng_seed(&r5, 0, 0);
        rand_fn fn = k & 2 ? ngd_srevd : ngd_rsvd_sym;
        const size_t w5b = k & 2 ? ngd_srevd_ws(d5, 2, 10) : ngd_rsvd_sym_ws(d5, 2, 10);
        void *w5 = wsa(w5b);
        CHECK(fn(ngd_cview_rm(x5, d5, d5, d5), 2, 10, 4, 1e-10f, &r5, &L5, w5, w5b) ==
              NGD_ERR_NUMERIC);
        CHECK(L5.r == 0 && D5[0] == 7.0f && D5[1] == 7.0f);
        free(w5);
    }
    // r = d (ℓ = d): exact eigendecomposition up to f32
    for (int srevd = 0; srevd < 2; srevd++) {
        rand_fn fn = srevd ? ngd_srevd : ngd_rsvd_sym;
        size_t wr = srevd ? ngd_srevd_ws(d, d, p) : wsb;
        void *w2 = wsa(wr);
        ngd_rng r1;
        ngd_rng_seed(&r1, 6, 0);
        CHECK(fn(ngd_cview_rm(x, d, d, d), d, p, 1, 1e-10f, &r1, &A, w2, wr) == NGD_OK);
        double *E = dalloc(d * d);
        lr_dense(&A, E);
        CHECK(rel_err(x, E, d * d) <= TOL_EIG);
        CHECK(lrref_orth_defect(d, d, A.U, d) <= 1e-5);
        free(E);
        free(w2);
    }
    free(ws), free(s), free(X), free(x);
    lr_free(&A), lr_free(&B);
}

// ==== #brand-update ====

// Checks one Brand result against the dense f64 truth T (d x d) = ρ·U D Uᵀ + C Cᵀ:
// reconstruction (relative Frobenius), orthonormality, kept eigenvalues vs T's top ones.
static void check_brand_exact(const ngd_lowrank *F, const double *T, size_t d, const char *what) {
    double *R = dalloc(d * d), *w = dalloc(d);
    CHECK(all_finite(F->U, d * F->cap) && all_finite(F->D, F->r));
    lr_dense(F, R);
    for (size_t i = 0; i < d * d; i++)
        R[i] -= T[i];
    double rec = lrref_fro(R, d * d) / fmax(lrref_fro(T, d * d), 1e-300);
    double orth = lrref_orth_defect(d, F->r, F->U, F->cap);
    lrref_sym_eig(d, T, w, NULL);
    double ee = 0;
    for (size_t i = 0; i < F->r; i++)
        ee = fmax(ee, fabs((double)F->D[i] - w[i]));
    ee /= fmax(w[0], 1e-300);
    for (size_t i = 1; i < F->r; i++)
        CHECK(F->D[i] <= F->D[i - 1] && F->D[i] >= 0);
    NOTE("%s: rec %.2e (tol %.0e), orth %.2e (tol %.0e), eig %.2e (tol %.0e)", what, rec,
         TOL_BRAND_REC, orth, TOL_ORTH, ee, TOL_EIG);
    CHECK_MSG(rec <= TOL_BRAND_REC, "%s rec %.3g", what, rec);
    CHECK_MSG(orth <= TOL_ORTH, "%s orth %.3g", what, orth);
    CHECK_MSG(ee <= TOL_EIG, "%s eig %.3g", what, ee);
    free(R), free(w);
}

// T = ρ U D Uᵀ + (c C)(c C)ᵀ in f64 from the f32 inputs (C d x n, leading dimension ldc)
static void brand_truth(const ngd_lowrank *F, float rho, const float *C, size_t n, size_t ldc,
                        float c, double *T) {
    size_t d = F->d;
    lr_dense(F, T);
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            double s = 0;
            for (size_t l = 0; l < n; l++)
                s += (double)C[i * ldc + l] * (double)C[j * ldc + l];
            T[i * d + j] = (double)rho * T[i * d + j] + (double)c * (double)c * s;
        }
}

// P1: no truncation, random orthonormal U, D >= 0, C (EA form: d_scale = ρ, c_scale).
static void brand_should_be_exact_without_truncation(void) {
    ref_rng g = {31};
    const size_t dims[][3] = {{150, 20, 10}, {200, 30, 16}, {60, 8, 4}, {64, 0, 16}};
    for (size_t t = 0; t < 4; t++) {
        size_t d = dims[t][0], r = dims[t][1], n = dims[t][2];
        double *U = dalloc(d * r), *D = dalloc(r + 1), *C = dalloc(d * n), *T = dalloc(d * d);
        if (r) lrref_random_orthonormal(&g, d, r, U);
        for (size_t i = 0; i < r; i++)
            D[i] = 3.0 * exp(-(double)i / 5.0);
        lrref_gauss(&g, C, d * n);
        float *c = falloc(d * n);
        ref_to_float(C, c, d * n);
        ngd_lowrank F = lr_make(d, r + n);
        lr_set(&F, U, D, r);
        const float rho = 0.95f, cs = 0.3f;
        brand_truth(&F, rho, c, n, n, cs, T);
        size_t wsb = ngd_brand_update_ws(d, r, n);
        void *ws = wsa(wsb);
        size_t nd = 99;
        CHECK(ngd_brand_update(&F, rho, ngd_cview_rm(c, d, n, n), cs, r + n, NULL, &nd, ws, wsb) ==
              NGD_OK);
        CHECK(F.r == r + n && nd == 0);
        check_brand_exact(&F, T, d, "P1 brand exact");
        free(ws), free(U), free(D), free(C), free(T), free(c);
        lr_free(&F);
    }
}

// P2: from zero (U = I[:, :r], D = 0): the top-r eigenpairs of C Cᵀ (n <= r); also from r = 0.
static void brand_should_start_from_zero(void) {
    ref_rng g = {32};
    const size_t d = 100, r = 16, n = 12;
    double *C = dalloc(d * n), *T = dalloc(d * d);
    lrref_gauss(&g, C, d * n);
    float *c = falloc(d * n);
    ref_to_float(C, c, d * n);
    for (int from_empty = 0; from_empty < 2; from_empty++) {
        ngd_lowrank F = lr_make(d, r + n);
        if (!from_empty) {
            for (size_t i = 0; i < r; i++)
                F.U[i * F.cap + i] = 1.0f;
            F.r = r;
        }
        brand_truth(&F, 1.0f, c, n, n, 1.0f, T);
        size_t wsb = ngd_brand_update_ws(d, F.r, n);
        void *ws = wsa(wsb);
        CHECK(ngd_brand_update(&F, 0.95f, ngd_cview_rm(c, d, n, n), 1.0f, r, NULL, NULL, ws, wsb) ==
              NGD_OK);
        CHECK(F.r == (from_empty ? n : r));
        check_brand_exact(&F, T, d, from_empty ? "P2 from r=0" : "P2 from I[:, :r], D=0");
        for (size_t i = n; i < F.r; i++)
            CHECK(F.D[i] <= 1e-6f * F.D[0]); // rank n
        free(ws);
        lr_free(&F);
    }
    free(C), free(T), free(c);
}

// P3: one truncated step is optimal: spectral error = θ_{r_keep+1}, Frobenius error =
// sqrt(Σ dropped²), and the dropped values are θ_{r_keep+1..r+n}.
static void brand_truncation_should_be_optimal(void) {
    ref_rng g = {33};
    const size_t d = 120, r = 20, n = 8, keep = 14;
    double *U = dalloc(d * r), *D = dalloc(r), *C = dalloc(d * n), *T = dalloc(d * d);
    lrref_random_orthonormal(&g, d, r, U);
    for (size_t i = 0; i < r; i++)
        D[i] = exp(-(double)i / 6.0);
    lrref_gauss(&g, C, d * n);
    for (size_t i = 0; i < d * n; i++)
        C[i] *= 0.2;
    float *c = falloc(d * n), dropped[64];
    ref_to_float(C, c, d * n);
    ngd_lowrank F = lr_make(d, r);
    lr_set(&F, U, D, r);
    brand_truth(&F, 0.95f, c, n, n, 1.0f, T);
    double *th = dalloc(d), *E = dalloc(d * d);
    lrref_sym_eig(d, T, th, NULL);
    size_t wsb = ngd_brand_update_ws(d, r, n), nd = 0;
    void *ws = wsa(wsb);
    CHECK(ngd_brand_update(&F, 0.95f, ngd_cview_rm(c, d, n, n), 1.0f, keep, dropped, &nd, ws,
                           wsb) == NGD_OK);
    CHECK(F.r == keep && nd == r + n - keep);
    double sq = 0, ed = 0;
    for (size_t j = 0; j < nd; j++) {
        sq += (double)dropped[j] * (double)dropped[j];
        ed = fmax(ed, fabs((double)dropped[j] - th[keep + j]));
    }
    lr_dense(&F, E);
    for (size_t i = 0; i < d * d; i++)
        E[i] = T[i] - E[i];
    double spec = lrref_sym_norm2(d, E), fro = lrref_fro(E, d * d);
    NOTE("P3: spectral %.6g vs theta %.6g, fro %.6g vs %.6g, dropped err %.2e", spec, th[keep], fro,
         sqrt(sq), ed / th[0]);
    CHECK(fabs(spec - th[keep]) <= TOL_EIG * th[0]);
    CHECK(fabs(fro - sqrt(sq)) <= TOL_EIG * th[0] * sqrt((double)nd));
    CHECK(ed <= TOL_EIG * th[0]);
    CHECK(lrref_orth_defect(d, keep, F.U, F.cap) <= TOL_ORTH);
    free(ws), free(U), free(D), free(C), free(T), free(c), free(th), free(E);
    lr_free(&F);
}

// P4 + P5: a truncated stream of 200 EA updates (ρ = 0.95) against the dense f64 EA:
// λ_min(F̄ − F̂) >= −tol‖F̄‖ (Loewner), Weyl δ_i <= λ_i(F̄), the trace identity
// tr(F̄ − F̂) = Σ_j ρ^{k−j} Σ dropped_j, and ‖F̄ − F̂‖₂ <= Σ_j ρ^{k−j} max dropped_j.
// Re-orthonormalisation every 50 updates (reorth_every, #brand-update) is part of the stream.
static void brand_stream_should_stay_below_dense_ea(void) {
    ref_rng g = {34};
    const size_t d = 100, r = 12, n = 6, steps = 200;
    const float rho = 0.95f;
    const double rh = (double)rho;
    // samples x = Q diag(sqrt σ) z: a decaying covariance, so truncation drops real mass
    double *s = dalloc(d), *Q = dalloc(d * d), *Fb = dalloc(d * d), *Fh = dalloc(d * d);
    double *E = dalloc(d * d), *w = dalloc(d), *z = dalloc(n * d), *C = dalloc(d * n);
    decay_spectrum(s, d, 10.0);
    lrref_random_orthonormal(&g, d, d, Q);
    float *c = falloc(d * n), dropped[32];
    ngd_lowrank F = lr_make(d, r);
    size_t wsb = ngd_brand_update_ws(d, r, n), wro = ngd_brand_reorth_ws(d, r);
    void *ws = wsa(wsb), *wsr = wsa(wro);
    // worst margins, relative: negative = the property holds with room
    double acc_tr = 0, acc_max = 0, worst_l = -HUGE_VAL, worst_w = -HUGE_VAL, worst_tr = 0;
    double worst_sp = -HUGE_VAL;
    double worst_orth = 0;
    for (size_t k = 1; k <= steps; k++) {
        lrref_gauss(&g, z, n * d);
        for (size_t i = 0; i < d; i++)
            for (size_t l = 0; l < n; l++) {
                double x = 0;
                for (size_t j = 0; j < d; j++)
                    x += Q[i * d + j] * sqrt(s[j]) * z[l * d + j];
                C[i * n + l] = x * sqrt((1.0 - rh) / (double)n);
            }
        ref_to_float(C, c, d * n);
        ref_to_double(c, C, d * n);
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++) {
                double x = 0;
                for (size_t l = 0; l < n; l++)
                    x += C[i * n + l] * C[j * n + l];
                Fb[i * d + j] = rh * Fb[i * d + j] + x;
            }
        size_t nd = 0;
        CHECK(ngd_brand_update(&F, rho, ngd_cview_rm(c, d, n, n), 1.0f, r, dropped, &nd, ws, wsb) ==
              NGD_OK);
        double sd = 0, md = 0;
        for (size_t j = 0; j < nd; j++)
            sd += (double)dropped[j], md = fmax(md, (double)dropped[j]);
        acc_tr = rh * acc_tr + sd;
        acc_max = rh * acc_max + md;
        if (k % 50 == 0) {
            worst_orth = fmax(worst_orth, lrref_orth_defect(d, F.r, F.U, F.cap));
            CHECK(ngd_brand_reorth(&F, wsr, wro) == NGD_OK);
        }
        if (k % 40 == 0 || k == steps) {
            lr_dense(&F, Fh);
            for (size_t i = 0; i < d * d; i++)
                E[i] = Fb[i] - Fh[i];
            lrref_sym_eig(d, Fb, w, NULL);
            double nF = w[0], trF = lrref_trace(d, Fb);
            worst_l = fmax(worst_l, -lrref_sym_min_eig(d, E) / nF);
            for (size_t i = 0; i < F.r; i++)
                worst_w = fmax(worst_w, ((double)F.D[i] - w[i]) / nF);
            worst_tr = fmax(worst_tr, fabs(lrref_trace(d, E) - acc_tr) / trF);
            worst_sp = fmax(worst_sp, (lrref_sym_norm2(d, E) - acc_max) / nF);
            NOTE("P5 k=%zu: tr(F-Fh) %.6g vs sum rho^(k-j) dropped %.6g (rel to tr(F) %.1e)", k,
                 lrref_trace(d, E), acc_tr, fabs(lrref_trace(d, E) - acc_tr) / trF);
        }
    }
    NOTE("P4: max -lmin(F-Fh)/|F| %.2e, max (delta_i - lambda_i)/|F| %.2e (tol %.0e); P5 "
         "trace %.2e (tol %.0e), max (|F-Fh| - sum rho^(k-j) max dropped)/|F| %.2e; orth "
         "before reorth %.2e",
         worst_l, worst_w, TOL_STREAM, worst_tr, TOL_TRACE, worst_sp, worst_orth);
    CHECK(worst_l <= TOL_STREAM);
    CHECK(worst_w <= TOL_STREAM);
    CHECK(worst_tr <= TOL_TRACE);
    CHECK(worst_sp <= TOL_STREAM);
    CHECK(worst_orth <= 1e-4); // the #brand-update reorth trigger is never reached between reorths
    CHECK(acc_tr > 0.05 * lrref_trace(d, Fb)); // truncation did drop real mass
    free(ws), free(wsr), free(s), free(Q), free(Fb), free(Fh), free(E), free(w), free(z);
    free(C), free(c);
    lr_free(&F);
}

// P14: degenerate C — columns in span(U) (exactly, and up to rounding), duplicated columns,
// zero columns, C = 0, and Z exactly 0 with D = 0: no NaN, and P1 still holds.
static void brand_should_survive_degenerate_input(void) {
    ref_rng g = {35};
    const size_t d = 90, r = 12, n = 8;
    double *U = dalloc(d * r), *D = dalloc(r), *B = dalloc(r * n), *T = dalloc(d * d);
    double *Cg = dalloc(d * n);
    float *c = falloc(d * n);
    const char *names[] = {"P14 C in span(I[:, :r])",
                           "P14 C = U B (f32 rounding off span)",
                           "P14 duplicated columns",
                           "P14 zero columns",
                           "P14 C = 0",
                           "P14 Z = 0 and D = 0",
                           "P14 C = [U-span | dup | fresh]"};
    for (int kase = 0; kase < 7; kase++) {
        ngd_lowrank F = lr_make(d, r + n);
        lrref_random_orthonormal(&g, d, r, U);
        for (size_t i = 0; i < r; i++)
            D[i] = kase == 5 ? 0.0 : exp(-(double)i / 3.0);
        if (kase == 0 || kase == 5) { // U = I[:, :r]: span is exact in f32
            memset(U, 0, d * r * sizeof *U);
            for (size_t i = 0; i < r; i++)
                U[i * r + i] = 1.0;
        }
        lr_set(&F, U, D, r);
        lrref_gauss(&g, B, r * n);
        lrref_gauss(&g, Cg, d * n);
        for (size_t i = 0; i < d; i++)
            for (size_t l = 0; l < n; l++) {
                double x = 0;
                for (size_t k = 0; k < r; k++)
                    x += (double)F.U[i * F.cap + k] * B[k * n + l];
                double v;
                switch (kase) {
                case 0:
                case 1:
                case 5: v = x; break;
                case 2: v = Cg[i * n + (l / 2) * 2]; break; // pairs of equal columns
                case 3: v = (l % 3 == 0) ? 0.0 : Cg[i * n + l]; break;
                case 4: v = 0.0; break;
                default: v = l < 3 ? x : (l < 5 ? Cg[i * n + 3] : Cg[i * n + l]); break;
                }
                c[i * n + l] = (float)v;
            }
        brand_truth(&F, 0.9f, c, n, n, 1.0f, T);
        size_t wsb = ngd_brand_update_ws(d, r, n);
        void *ws = wsa(wsb);
        CHECK(ngd_brand_update(&F, 0.9f, ngd_cview_rm(c, d, n, n), 1.0f, r + n, NULL, NULL, ws,
                               wsb) == NGD_OK);
        CHECK(F.r == r + n);
        CHECK_MSG(all_finite(F.U, d * F.cap) && all_finite(F.D, F.r), "%s", names[kase]);
        if (lrref_fro(T, d * d) > 0)
            check_brand_exact(&F, T, d, names[kase]);
        else
            CHECK(lrref_orth_defect(d, F.r, F.U, F.cap) <= TOL_ORTH);
        free(ws);
        lr_free(&F);
    }
    free(U), free(D), free(B), free(T), free(Cg), free(c);
}

// #brand-update: reorth restores orthonormality and leaves U D Uᵀ unchanged.
static void brand_reorth_should_keep_the_matrix(void) {
    ref_rng g = {36};
    const size_t d = 80, r = 10;
    double *U = dalloc(d * r), *D = dalloc(r), *A = dalloc(d * d), *B = dalloc(d * d);
    double *w = dalloc(d);
    lrref_random_orthonormal(&g, d, r, U);
    for (size_t i = 0; i < d * r; i++)
        U[i] += 1e-3 * ref_uniform(&g, -1, 1); // drift
    for (size_t i = 0; i < r; i++)
        D[i] = 1.0 / (double)(i + 1);
    D[r - 1] = 0.0; // a zero eigenvalue is kept as a valid column
    ngd_lowrank F = lr_make(d, r);
    lr_set(&F, U, D, r);
    lr_dense(&F, A);
    double before = lrref_orth_defect(d, r, F.U, F.cap);
    size_t wsb = ngd_brand_reorth_ws(d, r);
    void *ws = wsa(wsb);
    CHECK(ngd_brand_reorth(&F, ws, wsb) == NGD_OK);
    lr_dense(&F, B);
    double after = lrref_orth_defect(d, r, F.U, F.cap);
    for (size_t i = 0; i < d * d; i++)
        B[i] -= A[i];
    double rec = lrref_fro(B, d * d) / lrref_fro(A, d * d);
    lrref_sym_eig(d, A, w, NULL);
    double ee = 0;
    for (size_t i = 0; i < r; i++)
        ee = fmax(ee, fabs((double)F.D[i] - w[i]) / w[0]);
    NOTE("reorth: defect %.2e -> %.2e, rec %.2e, eig %.2e", before, after, rec, ee);
    CHECK(before > 1e-4 && after <= TOL_ORTH);
    CHECK(rec <= TOL_BRAND_REC && ee <= TOL_EIG);
    free(ws), free(U), free(D), free(A), free(B), free(w);
    lr_free(&F);
}

// P15: Brand-track iff FC and r_B + n < d, at the boundaries d = r_B + n and r_B + n + 1.
static void brand_track_should_follow_the_rule(void) {
    CHECK(!ngd_kf_brand_track_ok(true, 220, 256, 476));
    CHECK(ngd_kf_brand_track_ok(true, 220, 256, 477));
    CHECK(!ngd_kf_brand_track_ok(false, 220, 256, 16385)); // conv: never
    CHECK(ngd_kf_brand_track_ok(true, 180, 128, 16385));
    CHECK(!ngd_kf_brand_track_ok(true, 180, 128, 10));   // the 10-class output Γ
    CHECK(!ngd_kf_brand_track_ok(true, SIZE_MAX, 2, 5)); // no overflow
    CHECK(!ngd_kf_brand_track_ok(true, 0, 5, 5));
}

// ==== #brc-kfac: Rayleigh–Ritz correction ====

// P8: U stays orthonormal, ‖F̄ − UDUᵀ‖_F never increases for any subset; φ = 1 gives
// D = eig(UᵀF̄U) (descending). The representation starts as a perturbed subspace with wrong
// eigenvalues, as truncated Brand updates leave it.
static void rr_correct_should_never_increase_error(void) {
    ref_rng g = {41};
    const size_t d = 100, r = 20;
    double *s = dalloc(d), *Fb = dalloc(d * d), *w = dalloc(d), *V = dalloc(d * d);
    double *U = dalloc(d * r), *D = dalloc(r), *E = dalloc(d * d), *H = dalloc(r * r);
    decay_spectrum(s, d, 8.0);
    lrref_sym_from_spectrum(&g, d, s, Fb);
    float *fb = round_sym(Fb, d);
    lrref_sym_eig(d, Fb, w, V);
    // U: the top-r eigenvectors, perturbed and re-orthonormalised; D: 70% of the truth
    lrref_gauss(&g, U, d * r);
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < r; j++)
            U[i * r + j] = V[i * d + j] + 0.05 * U[i * r + j];
    double tau[20]; // U <- Q of its thin QR (LAPACK, row-major)
    CHECK(r <= 20 && LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, (lapack_int)d, (lapack_int)r, U,
                                    (lapack_int)r, tau) == 0);
    CHECK(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, (lapack_int)d, (lapack_int)r, (lapack_int)r, U,
                         (lapack_int)r, tau) == 0);
    for (size_t j = 0; j < r; j++)
        D[j] = 0.7 * w[j];
    ngd_lowrank F = lr_make(d, r);
    lr_set(&F, U, D, r);
    ngd_rng rng;
    ngd_rng_seed(&rng, 99, 3);
    double nF = lrref_fro(Fb, d * d);
    const float phis[] = {0.2f, 0.2f, 0.5f, 0.0f, 0.2f, 0.7f};
    double prev;
    lr_dense(&F, E);
    for (size_t i = 0; i < d * d; i++)
        E[i] = Fb[i] - E[i];
    prev = lrref_fro(E, d * d);
    double first = prev;
    for (size_t t = 0; t < 6; t++) {
        size_t s_ = ngd_rr_subset_size(r, phis[t]);
        size_t wsb = ngd_rr_correct_ws(d, r, s_);
        void *ws = wsa(wsb);
        CHECK(ngd_rr_correct(&F, ngd_cview_rm(fb, d, d, d), phis[t], &rng, ws, wsb) == NGD_OK);
        free(ws);
        lr_dense(&F, E);
        for (size_t i = 0; i < d * d; i++)
            E[i] = Fb[i] - E[i];
        double now = lrref_fro(E, d * d);
        NOTE("P8 phi=%.1f (s=%zu): |F - UDU'|_F %.6g -> %.6g", (double)phis[t], s_, prev, now);
        CHECK(now <= prev + TOL_RR_MONO * nF);
        prev = now;
        CHECK(lrref_orth_defect(d, r, F.U, F.cap) <= TOL_ORTH);
        for (size_t i = 1; i < r; i++)
            CHECK(F.D[i] <= F.D[i - 1]);
    }
    CHECK(prev < first); // the corrections did something
    // φ = 1: D = eig(UᵀF̄U) of the current U, to f32 accuracy
    for (size_t a = 0; a < r; a++)
        for (size_t b = 0; b < r; b++) {
            double x = 0;
            for (size_t i = 0; i < d; i++)
                for (size_t j = 0; j < d; j++)
                    x += (double)F.U[i * r + a] * Fb[i * d + j] * (double)F.U[j * r + b];
            H[a * r + b] = x;
        }
    double *hw = dalloc(r);
    lrref_sym_eig(r, H, hw, NULL);
    size_t wsb = ngd_rr_correct_ws(d, r, r);
    void *ws = wsa(wsb);
    CHECK(ngd_rr_subset_size(r, 1.0f) == r);
    CHECK(ngd_rr_correct(&F, ngd_cview_rm(fb, d, d, d), 1.0f, &rng, ws, wsb) == NGD_OK);
    double ee = 0;
    for (size_t i = 0; i < r; i++)
        ee = fmax(ee, fabs((double)F.D[i] - hw[i]) / hw[0]);
    NOTE("P8 phi=1: max |D - eig(U'FU)| / max %.2e (tol %.0e)", ee, TOL_EIG);
    CHECK(ee <= TOL_EIG);
    // the subset variant: bad subsets are rejected and leave F alone
    size_t bad[3] = {1, 4, 1}, far[2] = {0, r};
    ngd_lowrank G = lr_make(d, r);
    lr_copy(&G, &F);
    CHECK(ngd_rr_correct_subset(&F, ngd_cview_rm(fb, d, d, d), bad, 3, ws, wsb) == NGD_ERR_ARG);
    CHECK(ngd_rr_correct_subset(&F, ngd_cview_rm(fb, d, d, d), far, 2, ws, wsb) == NGD_ERR_ARG);
    CHECK(memcmp(F.U, G.U, d * r * sizeof(float)) == 0);
    size_t good[2] = {3, 0};
    CHECK(ngd_rr_correct_subset(&F, ngd_cview_rm(fb, d, d, d), good, 2, ws, wsb) == NGD_OK);
    free(ws), free(hw), free(s), free(Fb), free(fb), free(w), free(V), free(U), free(D), free(E);
    free(H);
    lr_free(&F), lr_free(&G);
}

static void rr_subset_size_should_round(void) {
    CHECK(ngd_rr_subset_size(220, 0.2f) == 45); // round(44 + 1)
    CHECK(ngd_rr_subset_size(10, 0.25f) == 4);  // round(3.5) = 4 (half up)
    CHECK(ngd_rr_subset_size(10, 0.0f) == 1);
    CHECK(ngd_rr_subset_size(10, 1.0f) == 10);
    CHECK(ngd_rr_subset_size(0, 0.5f) == 0);
}

// ==== #k-fac: eigen-preconditioning ====

// full EVD of the f32 factor a (d x d) into a new ngd_lowrank
static ngd_lowrank eig_of(const float *a, size_t d, ngd_eig_mode mode) {
    ngd_lowrank F = lr_make(d, d);
    size_t wsb = ngd_sym_eig_ws(d, mode);
    void *ws = wsa(wsb);
    ngd_eig_outcome oc = NGD_EIG_FAILED;
    CHECK(ngd_sym_eig(ngd_cview_rm(a, d, d, d), 1e-10f, mode, &F, &oc, ws, wsb) == NGD_OK);
    CHECK(oc == NGD_EIG_OK && F.r == d);
    free(ws);
    return F;
}

// P10: exact damping equals solve(kron(Γ̄, Ā) + λI, vec_r(J)) (row-major kron order), and
// factored damping equals (Γ̄ + λ_G I)^{-1} J (Ā + λ_A I)^{-1}; d in [5, 7].
static void kfac_damping_should_match_kron_solve(void) {
    ref_rng g = {51};
    const size_t sizes[][2] = {{5, 7}, {7, 5}, {6, 6}};
    for (size_t t = 0; t < 3; t++) {
        size_t dG = sizes[t][0], dA = sizes[t][1], N = dG * dA;
        double *Gm = dalloc(dG * dG), *Am = dalloc(dA * dA), *J = dalloc(N), *K = dalloc(N * N);
        random_psd(&g, dG, 3, Gm); // rank-deficient: damping matters
        random_psd(&g, dA, 4, Am);
        lrref_gauss(&g, J, N);
        float *gf = round_sym(Gm, dG), *af = round_sym(Am, dA), *jf = falloc(N), *S = falloc(N);
        ref_to_float(J, jf, N);
        ref_to_double(jf, J, N);
        ngd_lowrank FG = eig_of(gf, dG, NGD_EIG_F32), FA = eig_of(af, dA, NGD_EIG_F32);
        float lamK = 0.1f * FG.D[0] * FA.D[0];
        // K = kron(Γ̄, Ā) + λI: K[(i,a),(j,b)] = Γ̄_ij Ā_ab
        for (size_t i = 0; i < dG; i++)
            for (size_t a = 0; a < dA; a++)
                for (size_t j = 0; j < dG; j++)
                    for (size_t b = 0; b < dA; b++)
                        K[(i * dA + a) * N + j * dA + b] =
                            Gm[i * dG + j] * Am[a * dA + b] + (i == j && a == b ? (double)lamK : 0);
        double *x = dalloc(N);
        memcpy(x, J, N * sizeof *x);
        CHECK(lrref_solve(N, K, 1, x) == 0);
        size_t wsb = ngd_kfac_precond_ws(dG, dA);
        void *ws = wsa(wsb);
        CHECK(ngd_kfac_precond_exact(&FG, &FA, lamK, ngd_cview_rm(jf, dG, dA, dA), NULL,
                                     ngd_view_rm(S, dG, dA, dA), ws, wsb) == NGD_OK);
        double e = rel_err(S, x, N);
        NOTE("P10 exact %zux%zu: rel err %.2e (tol %.0e)", dG, dA, e, TOL_KFAC);
        CHECK(e <= TOL_KFAC);
        // factored: (Γ̄ + λ_G)^{-1} J (Ā + λ_A)^{-1}, π-damping with γ_π = 0.3
        double trA = 0, trG = 0;
        for (size_t i = 0; i < dA; i++)
            trA += Am[i * dA + i];
        for (size_t i = 0; i < dG; i++)
            trG += Gm[i * dG + i];
        float pi = ngd_kf_pi(trA, dA, trG, dG), gp = 0.3f;
        CHECK_CLOSE(pi, sqrt((trA / (double)dA) / (trG / (double)dG)), 1e-6, 0);
        float lG = gp / pi, lA = gp * pi;
        double *Gd = dalloc(dG * dG), *Ad = dalloc(dA * dA), *Y = dalloc(N), *Yt = dalloc(N);
        memcpy(Gd, Gm, dG * dG * sizeof *Gd);
        memcpy(Ad, Am, dA * dA * sizeof *Ad);
        for (size_t i = 0; i < dG; i++)
            Gd[i * dG + i] += (double)lG;
        for (size_t i = 0; i < dA; i++)
            Ad[i * dA + i] += (double)lA;
        memcpy(Y, J, N * sizeof *Y);
        CHECK(lrref_solve(dG, Gd, dA, Y) == 0); // Y = (Γ̄+λ_G)^{-1} J
        ref_transpose(dG, dA, Y, Yt);           // Yᵀ (dA x dG)
        CHECK(lrref_solve(dA, Ad, dG, Yt) == 0);
        ref_transpose(dA, dG, Yt, Y);
        memcpy(S, jf, N * sizeof *S); // in place: S == J
        CHECK(ngd_kfac_precond_factored(&FG, &FA, lG, lA, ngd_cview_rm(S, dG, dA, dA), NULL,
                                        ngd_view_rm(S, dG, dA, dA), ws, wsb) == NGD_OK);
        e = rel_err(S, Y, N);
        NOTE("P10 factored %zux%zu: rel err %.2e", dG, dA, e);
        CHECK(e <= TOL_KFAC);
        free(ws), free(Gm), free(Am), free(J), free(K), free(gf), free(af), free(jf), free(S);
        free(x), free(Gd), free(Ad), free(Y), free(Yt);
        lr_free(&FG), lr_free(&FA);
    }
}

// F⁻¹ = Q diag(1/(d + λ)) Qᵀ in f64 from the f32 (Q, d) of a full decomposition
static void inv_op_f64(const ngd_lowrank *F, double lambda, double *out) {
    const size_t d = F->d;
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            double s = 0;
            for (size_t k = 0; k < d; k++)
                s += (double)F->U[i * F->cap + k] * (double)F->U[j * F->cap + k] /
                     ((double)F->D[k] + lambda);
            out[i * d + j] = s;
        }
}

// The inverse operators of K-FAC's factored damping: ngd_kfac_inv against F⁻¹ formed in f64
// from the same f32 (Q, d) (300 wide: two blocks of rows); ngd_kfac_precond_inv from J (in
// place) and from J's rows (where they pay, and where they do not) against the f64 product
// G⁻¹ J A⁻¹ of those operators, and against the eigenbasis route
// (ngd_kfac_precond_factored). Tolerance TOL_KFAC: the f32 rounding of d-term sums with
// κ(F + λ) ≤ 11 (observed about 1e-6). Then the argument checks.
static void kfac_inverse_operators_should_match_f64(void) {
    ref_rng g = {57};
    const size_t sizes[][3] = {{5, 7, 2}, {5, 7, 4}, {40, 300, 8}, {300, 12, 3}}; // dG, dA, n
    for (size_t t = 0; t < 4; t++) {
        const size_t dG = sizes[t][0], dA = sizes[t][1], n = sizes[t][2], N = dG * dA;
        double *Gm = dalloc(dG * dG), *Am = dalloc(dA * dA), *Gi = dalloc(dG * dG);
        double *Ai = dalloc(dA * dA), *J = dalloc(N), *T = dalloc(N), *ref = dalloc(N);
        double *GJ = dalloc(N);
        random_psd(&g, dG, dG / 2 + 1, Gm); // rank-deficient: the damping matters
        random_psd(&g, dA, dA / 2 + 1, Am);
        float *gf = round_sym(Gm, dG), *af = round_sym(Am, dA);
        ngd_lowrank FG = eig_of(gf, dG, NGD_EIG_F32), FA = eig_of(af, dA, NGD_EIG_F32);
        const float lG = 0.1f * FG.D[0], lA = 0.1f * FA.D[0];
        float *gi = falloc(dG * dG), *ai = falloc(dA * dA);
        size_t wi = ngd_kfac_inv_ws(NGD_MAX(dG, dA)), wk = ngd_kfac_precond_ws(dG, dA);
        void *ws = wsa(NGD_MAX(wi, wk));
        CHECK(ngd_kfac_inv(&FG, lG, ngd_view_rm(gi, dG, dG, dG), ws, wi) == NGD_OK);
        CHECK(ngd_kfac_inv(&FA, lA, ngd_view_rm(ai, dA, dA, dA), ws, wi) == NGD_OK);
        inv_op_f64(&FG, lG, Gi);
        inv_op_f64(&FA, lA, Ai);
        double e = fmax(rel_err(gi, Gi, dG * dG), rel_err(ai, Ai, dA * dA));
        NOTE("F^-1 %zu, %zu: rel err %.2e (tol %.0e)", dG, dA, e, TOL_KFAC);
        CHECK(e <= TOL_KFAC);
        // J's rows: J = (1/n) 𝒢ᵀ𝒜, the f32 J rounded from the f64 product
        float *gc = falloc(n * dG), *ac = falloc(n * dA), *jf = falloc(N), *S = falloc(N);
        float *S2 = falloc(N), *X = falloc(n * dG), *Y = falloc(n * dA);
        double *gd = dalloc(n * dG), *ad = dalloc(n * dA);
        lrref_gauss(&g, gd, n * dG);
        lrref_gauss(&g, ad, n * dA);
        ref_to_float(gd, gc, n * dG);
        ref_to_double(gc, gd, n * dG);
        ref_to_float(ad, ac, n * dA);
        ref_to_double(ac, ad, n * dA);
        double *gt = dalloc(dG * n); // 𝒢ᵀ
        ref_transpose(n, dG, gd, gt);
        ref_matmul(dG, n, dA, gt, ad, J);
        for (size_t i = 0; i < N; i++)
            J[i] /= (double)n;
        free(gt);
        ref_to_float(J, jf, N);
        ngd_kfac_rows R = {ngd_cview_rm(gc, n, dG, dG), ngd_cview_rm(ac, n, dA, dA),
                           (float)(1.0 / (double)n), ngd_view_rm(X, n, dG, dG),
                           ngd_view_rm(Y, n, dA, dA)};
        for (int rows = 0; rows < 2; rows++) {
            if (!rows) ref_to_double(jf, T, N); // the kernel's J: the f32 one, or the rows
            const double *Jr = rows ? J : T;
            // ref = G⁻¹ J A⁻¹ (f64; GJ holds G⁻¹ J)
            ref_matmul(dG, dG, dA, Gi, Jr, GJ);
            ref_matmul(dG, dA, dA, GJ, Ai, ref);
            memcpy(S, jf, N * sizeof *S); // without rows: in place, S == J
            CHECK(ngd_kfac_precond_inv(ngd_cview_rm(gi, dG, dG, dG), ngd_cview_rm(ai, dA, dA, dA),
                                       ngd_cview_rm(S, dG, dA, dA), rows ? &R : NULL,
                                       ngd_view_rm(S, dG, dA, dA), ws, wk) == NGD_OK);
            e = rel_err(S, ref, N);
            NOTE("G^-1 J A^-1 %zux%zu, n %zu, rows %d: rel err %.2e", dG, dA, n, rows, e);
            CHECK(e <= TOL_KFAC);
            CHECK(ngd_kfac_precond_factored(&FG, &FA, lG, lA, ngd_cview_rm(jf, dG, dA, dA),
                                            rows ? &R : NULL, ngd_view_rm(S2, dG, dA, dA), ws,
                                            wk) == NGD_OK);
            ref_to_double(S2, GJ, N);
            e = rel_err(S, GJ, N);
            NOTE("  against the eigenbasis route: rel err %.2e", e);
            CHECK(e <= TOL_KFAC);
        }
        if (t == 0) { // arguments
            ngd_view gv = ngd_view_rm(gi, dG, dG, dG);
            CHECK(ngd_kfac_inv(&FG, 0.0f, gv, ws, wi) == NGD_ERR_ARG);
            CHECK(ngd_kfac_inv(&FG, NAN, gv, ws, wi) == NGD_ERR_ARG);
            CHECK(ngd_kfac_inv(&FG, lG, gv, ws, ngd_kfac_inv_ws(dG) - 1) == NGD_ERR_ARG);
            CHECK(ngd_kfac_inv(&FG, lG, ngd_view_rm(FG.U, dG, dG, dG), ws, wi) == NGD_ERR_ARG);
            CHECK(ngd_kfac_inv(&FG, lG, ngd_view_rm(gi, dG - 1, dG, dG), ws, wi) == NGD_ERR_SHAPE);
            FG.r--;
            CHECK(ngd_kfac_inv(&FG, lG, gv, ws, wi) == NGD_ERR_SHAPE);
            FG.r++;
            ngd_cview gc2 = ngd_cview_rm(gi, dG, dG, dG), ac2 = ngd_cview_rm(ai, dA, dA, dA);
            CHECK(ngd_kfac_precond_inv(gc2, ac2, ngd_cview_rm(jf, dG, dA, dA), NULL,
                                       ngd_view_rm(gi, dG, dA, dA), ws, wk) == NGD_ERR_ARG);
            CHECK(ngd_kfac_precond_inv(ac2, gc2, ngd_cview_rm(jf, dG, dA, dA), NULL,
                                       ngd_view_rm(S, dG, dA, dA), ws, wk) == NGD_ERR_SHAPE);
            CHECK(ngd_kfac_precond_inv(gc2, ac2, ngd_cview_rm(jf, dG, dA, dA), NULL,
                                       ngd_view_rm(S, dG, dA, dA), ws, wk - 1) == NGD_ERR_ARG);
        }
        free(ws), free(Gm), free(Am), free(Gi), free(Ai), free(J), free(T), free(ref), free(GJ);
        free(gf), free(af), free(gi), free(ai), free(gc), free(ac), free(jf), free(S), free(S2);
        free(X), free(Y), free(gd), free(ad);
        lr_free(&FG), lr_free(&FA);
    }
}

// The symmetric EVD helper: descending order, f32 vs f64 agreement, zero tolerance, and a
// non-finite factor reported as FAILED with the previous decomposition left in place.
static void sym_eig_should_sort_retry_and_keep_previous(void) {
    ref_rng g = {52};
    const size_t d = 70;
    double *A = dalloc(d * d), *w = dalloc(d);
    random_psd(&g, d, 30, A); // rank 30: 40 zero eigenvalues
    float *a = round_sym(A, d);
    lrref_sym_eig(d, A, w, NULL);
    ngd_lowrank F32 = eig_of(a, d, NGD_EIG_F32), F64 = eig_of(a, d, NGD_EIG_F64);
    ngd_lowrank FB = eig_of(a, d, NGD_EIG_F32_THEN_F64);
    double e32 = 0, e64 = 0;
    for (size_t i = 0; i < d; i++) {
        CHECK(i == 0 || (F32.D[i] <= F32.D[i - 1] && F64.D[i] <= F64.D[i - 1]));
        e32 = fmax(e32, fabs((double)F32.D[i] - w[i]) / w[0]);
        e64 = fmax(e64, fabs((double)F64.D[i] - w[i]) / w[0]);
    }
    NOTE("sym_eig: f32 eig err %.2e, f64 eig err %.2e", e32, e64);
    CHECK(e32 <= TOL_EIG && e64 <= 1e-7); // f64 result rounded to f32: 1e-7
    CHECK(memcmp(F32.D, FB.D, d * sizeof(float)) == 0);
    // eigenvalues below the tolerance (the 40 zero ones, |θ| ~ eps32·‖A‖) are set to 0 with
    // a tolerance above that floor
    size_t wsb = ngd_sym_eig_ws(d, NGD_EIG_F32_THEN_F64);
    void *ws = wsa(wsb);
    ngd_eig_outcome oc;
    CHECK(ngd_sym_eig(ngd_cview_rm(a, d, d, d), 1e-4f, NGD_EIG_F32_THEN_F64, &F32, &oc, ws, wsb) ==
          NGD_OK);
    CHECK(oc == NGD_EIG_OK);
    for (size_t i = 30; i < d; i++)
        CHECK(F32.D[i] == 0.0f);
    CHECK(F32.D[29] > 0.0f);
    // columns are eigenvectors: A u_i = θ_i u_i
    double res = 0;
    for (size_t j = 0; j < 30; j++)
        for (size_t i = 0; i < d; i++) {
            double x = 0;
            for (size_t k = 0; k < d; k++)
                x += A[i * d + k] * (double)F32.U[k * d + j];
            res = fmax(res, fabs(x - (double)F32.D[j] * (double)F32.U[i * d + j]) / w[0]);
        }
    CHECK(res <= TOL_EIG);
    // NaN in the factor: FAILED, previous decomposition untouched
    ngd_lowrank keep = lr_make(d, d);
    lr_copy(&keep, &F32);
    a[5 * d + 7] = NAN;
    oc = NGD_EIG_OK;
    CHECK(ngd_sym_eig(ngd_cview_rm(a, d, d, d), 1e-10f, NGD_EIG_F32_THEN_F64, &F32, &oc, ws, wsb) ==
          NGD_OK);
    CHECK(oc == NGD_EIG_FAILED);
    CHECK(memcmp(keep.U, F32.U, d * d * sizeof(float)) == 0 && keep.r == F32.r);
    a[5 * d + 7] = INFINITY;
    CHECK(ngd_sym_eig(ngd_cview_rm(a, d, d, d), 1e-10f, NGD_EIG_F32, &F32, &oc, ws, wsb) == NGD_OK);
    CHECK(oc == NGD_EIG_FAILED);
    CHECK(memcmp(keep.D, F32.D, d * sizeof(float)) == 0);
    free(ws), free(A), free(w), free(a);
    lr_free(&F32), lr_free(&F64), lr_free(&FB), lr_free(&keep);
}

// P13: with relative damping (and no ρ^k term), Precondition(cĀ, Γ̄) = Precondition(Ā, Γ̄)/c,
// for K-FAC's exact damping and for RS-KFAC's two-sided LR+I with λ_F = λ_rel·max δ_F.
static void preconditioners_should_be_scale_invariant(void) {
    ref_rng g = {53};
    const size_t dG = 30, dA = 45, r = 10;
    const float c = 3.0f, lrel = 0.1f;
    double *Gm = dalloc(dG * dG), *Am = dalloc(dA * dA), *J = dalloc(dG * dA);
    random_psd(&g, dG, 40, Gm);
    random_psd(&g, dA, 60, Am);
    lrref_gauss(&g, J, dG * dA);
    float *gf = round_sym(Gm, dG), *af = round_sym(Am, dA), *jf = falloc(dG * dA);
    float *acf = falloc(dA * dA), *S1 = falloc(dG * dA), *S2 = falloc(dG * dA);
    ref_to_float(J, jf, dG * dA);
    for (size_t i = 0; i < dA * dA; i++)
        acf[i] = c * af[i];
    double *ref = dalloc(dG * dA);
    // K-FAC exact damping, λ_K = λ_rel · max γ · max α
    ngd_lowrank FG = eig_of(gf, dG, NGD_EIG_F32), FA = eig_of(af, dA, NGD_EIG_F32);
    ngd_lowrank FC = eig_of(acf, dA, NGD_EIG_F32);
    size_t wsb = ngd_kfac_precond_ws(dG, dA);
    void *ws = wsa(wsb);
    CHECK(ngd_kfac_precond_exact(&FG, &FA, lrel * FG.D[0] * FA.D[0], ngd_cview_rm(jf, dG, dA, dA),
                                 NULL, ngd_view_rm(S1, dG, dA, dA), ws, wsb) == NGD_OK);
    CHECK(ngd_kfac_precond_exact(&FG, &FC, lrel * FG.D[0] * FC.D[0], ngd_cview_rm(jf, dG, dA, dA),
                                 NULL, ngd_view_rm(S2, dG, dA, dA), ws, wsb) == NGD_OK);
    for (size_t i = 0; i < dG * dA; i++)
        ref[i] = (double)S1[i] / (double)c;
    double e = rel_err(S2, ref, dG * dA);
    NOTE("P13 kfac exact: rel err %.2e", e);
    CHECK(e <= TOL_KFAC);
    free(ws);
    // RS-KFAC: RSVD with the same sketch for Ā and cĀ, λ_F = λ_rel · max δ_F, tail zero
    ngd_lowrank LG = lr_make(dG, r), LA = lr_make(dA, r), LC = lr_make(dA, r);
    size_t wr = ngd_rsvd_sym_ws(dA, r, 5);
    void *wsr = wsa(wr);
    ngd_rng r1;
    ngd_rng_seed(&r1, 1, 0);
    CHECK(ngd_rsvd_sym(ngd_cview_rm(gf, dG, dG, dG), r, 5, 2, 1e-10f, &r1, &LG, wsr, wr) == NGD_OK);
    ngd_rng_seed(&r1, 2, 0);
    CHECK(ngd_rsvd_sym(ngd_cview_rm(af, dA, dA, dA), r, 5, 2, 1e-10f, &r1, &LA, wsr, wr) == NGD_OK);
    ngd_rng_seed(&r1, 2, 0);
    CHECK(ngd_rsvd_sym(ngd_cview_rm(acf, dA, dA, dA), r, 5, 2, 1e-10f, &r1, &LC, wsr, wr) ==
          NGD_OK);
    size_t w2 = ngd_lri_apply2_ws(dG, r, dA, r);
    void *ws2 = wsa(w2);
    CHECK(ngd_lri_apply2(&LG, lrel * LG.D[0], 0.0f, &LA, lrel * LA.D[0], 0.0f,
                         ngd_cview_rm(jf, dG, dA, dA), ngd_view_rm(S1, dG, dA, dA), ws2,
                         w2) == NGD_OK);
    CHECK(ngd_lri_apply2(&LG, lrel * LG.D[0], 0.0f, &LC, lrel * LC.D[0], 0.0f,
                         ngd_cview_rm(jf, dG, dA, dA), ngd_view_rm(S2, dG, dA, dA), ws2,
                         w2) == NGD_OK);
    for (size_t i = 0; i < dG * dA; i++)
        ref[i] = (double)S1[i] / (double)c;
    e = rel_err(S2, ref, dG * dA);
    NOTE("P13 rs-kfac lri: rel err %.2e", e);
    CHECK(e <= TOL_KFAC);
    free(wsr), free(ws2), free(Gm), free(Am), free(J), free(gf), free(af), free(jf), free(acf);
    free(S1), free(S2), free(ref);
    lr_free(&FG), lr_free(&FA), lr_free(&FC), lr_free(&LG), lr_free(&LA), lr_free(&LC);
}

// P12: for an EA of rank-m PSD terms with ‖A_j‖ <= c, λ_{Mm+1}(Ā) <= c ρ^M (eigenvalues from
// the kernel's f32 EVD).
static void ea_spectrum_should_decay(void) {
    ref_rng g = {54};
    const size_t d = 60, m = 4, steps = 40;
    const double rho = 0.8, cbound = 2.0;
    double *A = dalloc(d * d), *B = dalloc(d * m), *Aj = dalloc(d * d);
    for (size_t k = 0; k < steps; k++) {
        lrref_gauss(&g, B, d * m);
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++) {
                double s = 0;
                for (size_t l = 0; l < m; l++)
                    s += B[i * m + l] * B[j * m + l];
                Aj[i * d + j] = s;
            }
        double nj = lrref_sym_norm2(d, Aj), sc = cbound * ref_uniform(&g, 0.5, 1.0) / nj;
        for (size_t i = 0; i < d * d; i++)
            A[i] = rho * A[i] + (1 - rho) * sc * Aj[i];
    }
    float *a = round_sym(A, d);
    ngd_lowrank F = eig_of(a, d, NGD_EIG_F32);
    double worst = -1;
    for (size_t M = 0; M * m < d; M++) {
        double bound = cbound * pow(rho, (double)M);
        worst = fmax(worst, (double)F.D[M * m] - bound);
        CHECK_MSG((double)F.D[M * m] <= bound + TOL_EIG * cbound, "M=%zu: %g > %g", M,
                  (double)F.D[M * m], bound);
    }
    NOTE("P12: max(lambda_{Mm+1} - c rho^M) = %.3g", worst);
    free(A), free(B), free(Aj), free(a);
    lr_free(&F);
}

// P16 (kernel level): RS-KFAC with r >= d and the zero tail equals K-FAC's factored path with
// per-factor damping λ_rel·max; B-KFAC without truncation equals the dense-EA solve.
static void limits_should_match_dense_paths(void) {
    ref_rng g = {55};
    {
        const size_t dG = 12, dA = 18;
        double *Gm = dalloc(dG * dG), *Am = dalloc(dA * dA), *J = dalloc(dG * dA);
        random_psd(&g, dG, 20, Gm);
        random_psd(&g, dA, 30, Am);
        lrref_gauss(&g, J, dG * dA);
        float *gf = round_sym(Gm, dG), *af = round_sym(Am, dA), *jf = falloc(dG * dA);
        float *S1 = falloc(dG * dA), *S2 = falloc(dG * dA);
        double *ref = dalloc(dG * dA);
        ref_to_float(J, jf, dG * dA);
        ngd_lowrank LG = lr_make(dG, dG), LA = lr_make(dA, dA);
        ngd_rng r1;
        ngd_rng_seed(&r1, 9, 0);
        size_t wg = ngd_rsvd_sym_ws(dG, dG, 10), wa = ngd_rsvd_sym_ws(dA, dA, 10);
        void *ws = wsa(NGD_MAX(wg, wa));
        CHECK(ngd_rsvd_sym(ngd_cview_rm(gf, dG, dG, dG), dG, 10, 1, 1e-10f, &r1, &LG, ws, wg) ==
              NGD_OK);
        CHECK(ngd_rsvd_sym(ngd_cview_rm(af, dA, dA, dA), dA, 10, 1, 1e-10f, &r1, &LA, ws, wa) ==
              NGD_OK);
        free(ws);
        ngd_lowrank FG = eig_of(gf, dG, NGD_EIG_F32), FA = eig_of(af, dA, NGD_EIG_F32);
        float lG = 0.1f * FG.D[0], lA = 0.1f * FA.D[0];
        size_t w2 = ngd_lri_apply2_ws(dG, dG, dA, dA), wk = ngd_kfac_precond_ws(dG, dA);
        ws = wsa(NGD_MAX(w2, wk));
        CHECK(ngd_lri_apply2(&LG, lG, 0.0f, &LA, lA, 0.0f, ngd_cview_rm(jf, dG, dA, dA),
                             ngd_view_rm(S1, dG, dA, dA), ws, w2) == NGD_OK);
        CHECK(ngd_kfac_precond_factored(&FG, &FA, lG, lA, ngd_cview_rm(jf, dG, dA, dA), NULL,
                                        ngd_view_rm(S2, dG, dA, dA), ws, wk) == NGD_OK);
        ref_to_double(S2, ref, dG * dA);
        double e = rel_err(S1, ref, dG * dA);
        NOTE("P16 rs-kfac r>=d vs kfac factored: rel err %.2e (tol %.0e)", e, TOL_LRI_FULL);
        CHECK(e <= TOL_LRI_FULL);
        free(ws), free(Gm), free(Am), free(J), free(gf), free(af), free(jf), free(S1), free(S2);
        free(ref);
        lr_free(&LG), lr_free(&LA), lr_free(&FG), lr_free(&FA);
    }
    {
        // B-KFAC without truncation: Brand-track factors from zero, rank n·steps < d − n
        const size_t dG = 40, dA = 60, n = 4, steps = 6;
        const float rho = 0.95f;
        const double rh = (double)rho;
        double *FGd = dalloc(dG * dG), *FAd = dalloc(dA * dA), *J = dalloc(dG * dA);
        double *C = dalloc(dA * n);
        float *c = falloc(dA * n), *jf = falloc(dG * dA), *S = falloc(dG * dA);
        ngd_lowrank G = lr_make(dG, n * steps), A = lr_make(dA, n * steps);
        void *ws = wsa(ngd_brand_update_ws(dA, n * steps, n));
        for (size_t k = 0; k < steps; k++)
            for (int side = 0; side < 2; side++) {
                size_t d = side ? dA : dG;
                double *Fd = side ? FAd : FGd;
                ngd_lowrank *F = side ? &A : &G;
                lrref_gauss(&g, C, d * n);
                for (size_t i = 0; i < d * n; i++)
                    C[i] *= sqrt((1 - rh) / (double)n);
                ref_to_float(C, c, d * n);
                ref_to_double(c, C, d * n);
                for (size_t i = 0; i < d; i++)
                    for (size_t j = 0; j < d; j++) {
                        double s = 0;
                        for (size_t l = 0; l < n; l++)
                            s += C[i * n + l] * C[j * n + l];
                        Fd[i * d + j] = rh * Fd[i * d + j] + s;
                    }
                CHECK(ngd_brand_update(F, rho, ngd_cview_rm(c, d, n, n), 1.0f, n * steps, NULL,
                                       NULL, ws, ngd_brand_update_ws(d, F->r, n)) == NGD_OK);
            }
        free(ws);
        lrref_gauss(&g, J, dG * dA);
        ref_to_float(J, jf, dG * dA);
        ref_to_double(jf, J, dG * dA);
        float lG = 0.1f * G.D[0], lA = 0.1f * A.D[0];
        for (size_t i = 0; i < dG; i++)
            FGd[i * dG + i] += (double)lG;
        for (size_t i = 0; i < dA; i++)
            FAd[i * dA + i] += (double)lA;
        double *Y = dalloc(dG * dA), *Yt = dalloc(dG * dA);
        memcpy(Y, J, dG * dA * sizeof *Y);
        CHECK(lrref_solve(dG, FGd, dA, Y) == 0);
        ref_transpose(dG, dA, Y, Yt);
        CHECK(lrref_solve(dA, FAd, dG, Yt) == 0);
        ref_transpose(dA, dG, Yt, Y);
        size_t w2 = ngd_lri_apply2_ws(dG, G.r, dA, A.r);
        ws = wsa(w2);
        memcpy(S, jf, dG * dA * sizeof *S);
        CHECK(ngd_lri_apply2(&G, lG, 0.0f, &A, lA, 0.0f, ngd_cview_rm(S, dG, dA, dA),
                             ngd_view_rm(S, dG, dA, dA), ws, w2) == NGD_OK); // in place
        double e = rel_err(S, Y, dG * dA);
        NOTE("P16 b-kfac untruncated vs dense EA solve: rel err %.2e (tol %.0e)", e, TOL_LRI);
        CHECK(e <= TOL_LRI);
        free(ws), free(FGd), free(FAd), free(J), free(C), free(c), free(jf), free(S), free(Y);
        free(Yt);
        lr_free(&G), lr_free(&A);
    }
}

// ==== #factored-application ====

// P7: (1/n) X Yᵀ equals the two-sided dense LR+I result for J = (1/n) 𝒢ᵀ𝒜, the Gram-matrix
// Frobenius norm equals ‖S‖_F, ⟨S, J⟩ likewise, and the rank-n update is W := βW + αXYᵀ.
static void factored_should_equal_dense(void) {
    ref_rng g = {61};
    const size_t n = 8, dG = 40, dA = 71, rG = 6, rA = 10;
    double *UG = dalloc(dG * rG), *UA = dalloc(dA * rA), *DG = dalloc(rG), *DA = dalloc(rA);
    lrref_random_orthonormal(&g, dG, rG, UG);
    lrref_random_orthonormal(&g, dA, rA, UA);
    for (size_t i = 0; i < rG; i++)
        DG[i] = 2.0 / (double)(i + 1);
    for (size_t i = 0; i < rA; i++)
        DA[i] = exp(-(double)i / 3.0);
    ngd_lowrank G = lr_make(dG, rG), A = lr_make(dA, rA);
    lr_set(&G, UG, DG, rG);
    lr_set(&A, UA, DA, rA);
    double *Gc = dalloc(n * dG), *Ac = dalloc(n * dA);
    lrref_gauss(&g, Gc, n * dG);
    lrref_gauss(&g, Ac, n * dA);
    for (size_t i = 0; i < n; i++)
        Ac[i * dA + dA - 1] = 1.0; // bias column
    float *gc = falloc(n * dG), *ac = falloc(n * dA), *X = falloc(dG * n), *Y = falloc(dA * n);
    ref_to_float(Gc, gc, n * dG);
    ref_to_float(Ac, ac, n * dA);
    float lG = 0.1f * G.D[0], lA = 0.1f * A.D[0], mG = G.D[rG - 1], mA = 0.0f; // both tails
    size_t wsb = ngd_factored_precond_ws(rG, rA, n);
    void *ws = wsa(wsb);
    CHECK(ngd_factored_precond(&G, lG, mG, &A, lA, mA, ngd_cview_rm(gc, n, dG, dG),
                               ngd_cview_rm(ac, n, dA, dA), ngd_view_rm(X, dG, n, n),
                               ngd_view_rm(Y, dA, n, n), ws, wsb) == NGD_OK);
    // dense: J = (1/n) 𝒢ᵀ𝒜 (f32), S_ref = M_G^{-1} J M_A^{-1} in f64
    float *jf = falloc(dG * dA);
    double *J = dalloc(dG * dA), *MG = dalloc(dG * dG), *MA = dalloc(dA * dA);
    double *Sd = dalloc(dG * dA), *St = dalloc(dG * dA);
    for (size_t i = 0; i < dG; i++)
        for (size_t j = 0; j < dA; j++) {
            double s = 0;
            for (size_t l = 0; l < n; l++)
                s += (double)gc[l * dG + i] * (double)ac[l * dA + j];
            J[i * dA + j] = s / (double)n;
        }
    lri_dense_matrix(&G, (double)lG, (double)mG, MG);
    lri_dense_matrix(&A, (double)lA, (double)mA, MA);
    memcpy(Sd, J, dG * dA * sizeof *Sd);
    CHECK(lrref_solve(dG, MG, dA, Sd) == 0);
    ref_transpose(dG, dA, Sd, St);
    CHECK(lrref_solve(dA, MA, dG, St) == 0);
    ref_transpose(dA, dG, St, Sd);
    // (1/n) X Yᵀ in f64 from the kernel's X, Y
    float *Sf = falloc(dG * dA);
    for (size_t i = 0; i < dG; i++)
        for (size_t j = 0; j < dA; j++) {
            double s = 0;
            for (size_t l = 0; l < n; l++)
                s += (double)X[i * n + l] * (double)Y[j * n + l];
            Sf[i * dA + j] = (float)(s / (double)n);
        }
    double e = rel_err(Sf, Sd, dG * dA);
    NOTE("P7 factored vs dense: rel err %.2e (tol %.0e)", e, TOL_FACT);
    CHECK(e <= TOL_FACT);
    // the rank-n update W := βW + αXYᵀ
    float *W = falloc(dG * dA);
    double *Wr = dalloc(dG * dA);
    for (size_t i = 0; i < dG * dA; i++)
        W[i] = (float)ref_uniform(&g, -1, 1);
    const float beta = 1.0f - 0.1f * 7e-4f, alpha = -0.1f / (float)n;
    for (size_t i = 0; i < dG * dA; i++)
        Wr[i] = (double)beta * (double)W[i] + (double)alpha * (double)n * (double)Sf[i];
    CHECK(ngd_factored_update(ngd_view_rm(W, dG, dA, dA), beta, alpha, ngd_cview_rm(X, dG, n, n),
                              ngd_cview_rm(Y, dA, n, n)) == NGD_OK);
    CHECK(rel_err(W, Wr, dG * dA) <= 1e-6); // one GEMM with k = n = 8 terms
    free(ws), free(UG), free(UA), free(DG), free(DA), free(Gc), free(Ac), free(gc);
    free(ac), free(X), free(Y), free(jf), free(J), free(MG), free(MA), free(Sd), free(St);
    free(Sf), free(W), free(Wr);
    lr_free(&G), lr_free(&A);
}

// ==== argument checking and workspaces ====

static void kernels_should_reject_bad_arguments(void) {
    const size_t d = 20, r = 4, n = 3;
    ngd_lowrank F = lr_make(d, r + n);
    for (size_t i = 0; i < r; i++)
        F.U[i * F.cap + i] = 1.0f, F.D[i] = 1.0f;
    F.r = r;
    float x[20 * 3] = {0}, y[20 * 3];
    size_t wl = ngd_lri_apply_ws(r, n);
    void *ws = wsa(1 << 20);
    ngd_cview X = ngd_cview_rm(x, d, n, n);
    ngd_view Y = ngd_view_rm(y, d, n, n);
    CHECK(ngd_lri_apply(&F, 0.0f, 0.0f, X, Y, ws, wl) == NGD_ERR_ARG);  // λ = 0
    CHECK(ngd_lri_apply(&F, 1.0f, -1.0f, X, Y, ws, wl) == NGD_ERR_ARG); // μ < 0
    CHECK(ngd_lri_apply(&F, NAN, 0.0f, X, Y, ws, wl) == NGD_ERR_ARG);
    CHECK(ngd_lri_apply(&F, 1.0f, 0.0f, X, Y, ws, wl - 1) == NGD_ERR_ARG); // workspace
    CHECK(ngd_lri_apply(&F, 1.0f, 0.0f, X, Y, NULL, wl) == NGD_ERR_ARG);
    CHECK(ngd_lri_apply(NULL, 1.0f, 0.0f, X, Y, ws, wl) == NGD_ERR_ARG);
    CHECK(ngd_lri_apply(&F, 1.0f, 0.0f, ngd_cview_rm(x, d - 1, n, n), Y, ws, wl) == NGD_ERR_SHAPE);
    CHECK(ngd_lri_apply(&F, 1.0f, 0.0f, X, ngd_view_rm(x + 1, d, n, n), ws, wl) ==
          NGD_ERR_ARG); // partial overlap
    CHECK(ngd_lri_apply(&F, 1.0f, 0.0f, X, Y, ws, wl) == NGD_OK);
    F.D[1] = -5.0f; // δ + λ <= 0
    CHECK(ngd_lri_apply(&F, 1.0f, 0.0f, X, Y, ws, wl) == NGD_ERR_ARG);
    F.D[1] = 1.0f;
    // Brand
    float c[20 * 17] = {0};
    size_t wb = ngd_brand_update_ws(d, r, n);
    CHECK(wb > 0 && ngd_brand_update_ws(d, r, d - r + 1) == 0); // r + n > d
    CHECK(ngd_brand_update(&F, 0.9f, ngd_cview_rm(c, d, 17, 17), 1.0f, r, NULL, NULL, ws,
                           1 << 20) == NGD_ERR_ARG); // r + n > d
    CHECK(ngd_brand_update(&F, 0.9f, ngd_cview_rm(c, d + 1, n, n), 1.0f, r, NULL, NULL, ws, wb) ==
          NGD_ERR_SHAPE);
    CHECK(ngd_brand_update(&F, -0.9f, ngd_cview_rm(c, d, n, n), 1.0f, r, NULL, NULL, ws, wb) ==
          NGD_ERR_ARG);
    CHECK(ngd_brand_update(&F, 0.9f, ngd_cview_rm(c, d, n, n), 1.0f, 0, NULL, NULL, ws, wb) ==
          NGD_ERR_ARG); // r_keep = 0
    CHECK(ngd_brand_update(&F, 0.9f, ngd_cview_rm(c, d, n, n), 1.0f, r + n + 5, NULL, NULL, ws,
                           wb) == NGD_OK); // r⁺ = r + n = cap: fits
    F.r = r;
    F.cap = r + 1; // r⁺ = r + n > cap
    CHECK(ngd_brand_update(&F, 0.9f, ngd_cview_rm(c, d, n, n), 1.0f, r + n, NULL, NULL, ws, wb) ==
          NGD_ERR_ARG);
    F.cap = r + n;
    c[5] = NAN; // non-finite statistics: rejected, F unchanged
    float U0[20 * 7];
    memcpy(U0, F.U, sizeof U0);
    CHECK(ngd_brand_update(&F, 0.9f, ngd_cview_rm(c, d, n, n), 1.0f, r, NULL, NULL, ws, wb) ==
          NGD_ERR_ARG);
    CHECK(memcmp(U0, F.U, sizeof U0) == 0 && F.r == r);
    CHECK(ngd_brand_update(&F, 0.9f, ngd_cview_rm(c, d, n, n), 1.0f, r, NULL, NULL, ws, wb - 1) ==
          NGD_ERR_ARG);
    // randomized
    ngd_rng rng;
    ngd_rng_seed(&rng, 1, 1);
    float a[20 * 20] = {0};
    size_t wr = ngd_rsvd_sym_ws(d, r, 2);
    CHECK(ngd_rsvd_sym_ws(d, d + 1, 2) == 0 && ngd_rsvd_sym_ws(d, 0, 2) == 0);
    CHECK(ngd_rsvd_sym(ngd_cview_rm(a, d, d - 1, d), r, 2, 1, 0, &rng, &F, ws, wr) ==
          NGD_ERR_SHAPE);
    CHECK(ngd_rsvd_sym(ngd_cview_rm(a, d, d, d), r, 2, 1, 0, NULL, &F, ws, wr) == NGD_ERR_ARG);
    CHECK(ngd_rsvd_sym(ngd_cview_rm(a, d, d, d), r + n + 1, 2, 1, 0, &rng, &F, ws, 1 << 20) ==
          NGD_ERR_ARG); // r > cap
    CHECK(ngd_srevd(ngd_cview_rm(a, d, d, d), r, 2, 1, 0, &rng, &F, ws, 16) == NGD_ERR_ARG);
    // K-FAC: truncated representations are refused by the full-EVD formulas
    float j[20 * 20] = {0};
    CHECK(ngd_kfac_precond_exact(&F, &F, 1.0f, ngd_cview_rm(j, d, d, d), NULL,
                                 ngd_view_rm(a, d, d, d), ws, 1 << 20) == NGD_ERR_SHAPE);
    ngd_eig_outcome oc;
    CHECK(ngd_sym_eig(ngd_cview_rm(a, d, d, d), 0, NGD_EIG_F32, &F, &oc, ws, 1 << 20) ==
          NGD_ERR_ARG); // cap < d
    CHECK(ngd_sym_eig(ngd_cview_rm(a, d, d, d), 0, (ngd_eig_mode)7, &F, &oc, ws, 1 << 20) ==
          NGD_ERR_ARG);
    // factored
    CHECK(ngd_factored_update(ngd_view_rm(y, d, n, n), 1.0f, 1.0f, X, X) == NGD_ERR_SHAPE);
    CHECK(ngd_kf_pi(0.0, 3, 1.0, 3) == 1.0f && ngd_kf_pi(4.0, 1, 1.0, 1) == 2.0f);
    free(ws);
    lr_free(&F);
}

// Workspaces: the queried size is enough at any address (the kernels align inside), and
// nothing is written outside it (a guard pattern around it stays intact).
static void workspaces_should_be_enough_at_any_alignment(void) {
    ref_rng g = {71};
    const size_t d = 50, r = 6, n = 5;
    double *C = dalloc(d * n), *X = dalloc(d * d);
    lrref_gauss(&g, C, d * n);
    random_psd(&g, d, 20, X);
    float *c = falloc(d * n), *x = round_sym(X, d);
    ref_to_float(C, c, d * n);
    for (size_t off = 0; off < 8; off++) {
        ngd_lowrank F = lr_make(d, d);
        size_t sizes[4] = {ngd_brand_update_ws(d, 0, n), ngd_rsvd_sym_ws(d, r, 4),
                           ngd_srevd_ws(d, r, 4), ngd_sym_eig_ws(d, NGD_EIG_F32_THEN_F64)};
        size_t mx = 0;
        for (int i = 0; i < 4; i++)
            mx = NGD_MAX(mx, sizes[i]);
        unsigned char *buf = malloc(mx + 64 + off);
        memset(buf, 0xA5, mx + 64 + off);
        unsigned char *w = buf + off;
        ngd_rng rng;
        ngd_rng_seed(&rng, off, 0);
        ngd_eig_outcome oc;
        CHECK(ngd_brand_update(&F, 1.0f, ngd_cview_rm(c, d, n, n), 1.0f, n, NULL, NULL, w,
                               sizes[0]) == NGD_OK);
        CHECK(ngd_rsvd_sym(ngd_cview_rm(x, d, d, d), r, 4, 1, 0, &rng, &F, w, sizes[1]) == NGD_OK);
        CHECK(ngd_srevd(ngd_cview_rm(x, d, d, d), r, 4, 1, 0, &rng, &F, w, sizes[2]) == NGD_OK);
        CHECK(ngd_sym_eig(ngd_cview_rm(x, d, d, d), 0, NGD_EIG_F32_THEN_F64, &F, &oc, w,
                          sizes[3]) == NGD_OK &&
              oc == NGD_EIG_OK);
        CHECK(ngd_sym_eig(ngd_cview_rm(x, d, d, d), 0, NGD_EIG_F64, &F, &oc, w, sizes[3]) ==
                  NGD_OK &&
              oc == NGD_EIG_OK);
        size_t guard_ok = 1;
        for (size_t i = 0; i < off; i++)
            guard_ok &= buf[i] == 0xA5;
        for (size_t i = off + mx; i < off + mx + 64; i++)
            guard_ok &= buf[i] == 0xA5;
        CHECK(guard_ok);
        free(buf);
        lr_free(&F);
    }
    free(C), free(X), free(c), free(x);
}

static const test_case TESTS[] = {
    TEST(reference_eigvals_should_match_lapack),
    TEST(lri_should_match_dense_solve),
    TEST(lri_should_obey_loewner_order),
    TEST(identity_init_should_move_into_damping),
    TEST(rsvd_should_capture_clean_decay),
    TEST(rsvd_should_bound_error_on_clustered_spectrum),
    TEST(rsvd_should_be_reproducible_and_handle_edges),
    TEST(brand_should_be_exact_without_truncation),
    TEST(brand_should_start_from_zero),
    TEST(brand_truncation_should_be_optimal),
    TEST(brand_stream_should_stay_below_dense_ea),
    TEST(brand_should_survive_degenerate_input),
    TEST(brand_reorth_should_keep_the_matrix),
    TEST(brand_track_should_follow_the_rule),
    TEST(rr_correct_should_never_increase_error),
    TEST(rr_subset_size_should_round),
    TEST(kfac_damping_should_match_kron_solve),
    TEST(kfac_inverse_operators_should_match_f64),
    TEST(sym_eig_should_sort_retry_and_keep_previous),
    TEST(preconditioners_should_be_scale_invariant),
    TEST(ea_spectrum_should_decay),
    TEST(limits_should_match_dense_paths),
    TEST(factored_should_equal_dense),
    TEST(kernels_should_reject_bad_arguments),
    TEST(workspaces_should_be_enough_at_any_alignment),
};

int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
