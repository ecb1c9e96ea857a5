/*
 * lowrank.h — numerical kernels of the K-FAC family (docs/algorithms.md#k-fac-family): the
 * "low-rank + scaled identity" inverse (#low-rank-inverse), randomized eigendecompositions
 * (#rsvd, #sre-kfac), the Brand update and its re-orthonormalisation (#brand-update), the
 * Rayleigh–Ritz correction (#brc-kfac), K-FAC's eigenbasis preconditioners (#k-fac) and the
 * factored linear-cost application for FC layers (#factored-application). Internal to libngd
 * (never installed).
 *
 * Conventions, everywhere in this file:
 * - float32, row-major; eigenvalues DESCENDING (LAPACK's ascending order is reversed here).
 * - A factor's eigen-representation is an ngd_lowrank: F̂ = U diag(D) Uᵀ, U orthonormal.
 * - No kernel allocates. Each takes `void *ws, size_t ws_bytes`, a caller-owned workspace
 *   whose size comes from the matching *_ws query (bytes; 0 = invalid sizes / overflow /
 *   LAPACK query failure). The query depends only on sizes, so an optimizer plans once.
 *   Workspaces need no alignment (the kernels align inside; the query includes the slack).
 * - Status: NGD_ERR_ARG for NULL / bad values / too small a workspace, NGD_ERR_SHAPE for
 *   mismatched views, NGD_ERR_NUMERIC when LAPACK fails. On any error the outputs and the
 *   state passed in are unchanged unless the function says otherwise.
 * - Not thread-safe on a shared workspace or ngd_lowrank; otherwise reentrant.
 * Legend: d factor size, r kept rank, n batch columns (Brand) or samples (#factored-application), p
 * oversampling, q power iterations, ℓ = min(r + p, d), s corrected columns (#brc-kfac).
 */
#ifndef NGD_LOWRANK_H
#define NGD_LOWRANK_H

#include <stdbool.h>
#include <stddef.h>

#include "blas.h"
#include "ngd.h"
#include "rng.h"

// ====== Low-rank eigen-representation ======

// F̂ = U diag(D) Uᵀ of a d x d symmetric PSD factor (#low-rank-inverse). Borrowed storage: the
// kernels read and write U and D in place but never allocate or free them.
typedef struct {
    float *U;   // (d, cap) row-major, ld = cap: orthonormal columns, the first r are valid
    float *D;   // (cap) eigenvalues, descending, >= 0; the first r are valid
    size_t d;   // size of the factor
    size_t r;   // current rank (r <= cap, r <= d)
    size_t cap; // columns of U and length of D
} ngd_lowrank;

// The valid part of U as a view: d x r, leading dimension cap.
static inline ngd_cview ngd_lowrank_u(const ngd_lowrank *F) {
    return ngd_cview_rm(F->U, F->d, F->r, F->cap);
}

// ====== LR+I inverse application (#low-rank-inverse) ======

// Y = (U D Uᵀ + mu (I − U Uᵀ) + lambda I)^{-1} X for X, Y d x m (any views with a unit
// stride). lambda > 0, mu >= 0, F->D[i] + lambda > 0. Y may be X itself (same pointer and
// strides); otherwise their address ranges must be disjoint (checked conservatively, so two
// interleaved views are refused too). Cost 4 d r m flops. Workspace: ngd_lri_apply_ws(F->r,
// m).
size_t ngd_lri_apply_ws(size_t r, size_t m);
ngd_status ngd_lri_apply(const ngd_lowrank *F, float lambda, float mu, ngd_cview X, ngd_view Y,
                         void *ws, size_t ws_bytes);
// The right-side variant Y = X (…)^{-1} for X, Y m x d (row-major J needs no transposed
// copy: T = X U, Y = X/(mu+lambda) + T diag(c) Uᵀ). Same aliasing rule and workspace.
ngd_status ngd_lri_apply_right(const ngd_lowrank *F, float lambda, float mu, ngd_cview X,
                               ngd_view Y, void *ws, size_t ws_bytes);
// Both sides (RS-KFAC's PRECONDITION, #rs-kfac): S = LRI_G(J) · LRI_A for J, S d_G x d_A,
// S == J allowed. Workspace: ngd_lri_apply2_ws(d_G, r_G, d_A, r_A).
size_t ngd_lri_apply2_ws(size_t d_G, size_t r_G, size_t d_A, size_t r_A);
ngd_status ngd_lri_apply2(const ngd_lowrank *G, float lambda_G, float mu_G, const ngd_lowrank *A,
                          float lambda_A, float mu_A, ngd_cview J, ngd_view S, void *ws,
                          size_t ws_bytes);

// ====== Randomized eigendecompositions (#rsvd, #sre-kfac) ======

// RSVD (HMT subspace iteration, as torch.svd_lowrank): X d x d symmetric PSD, 1 <= r <= d
// (the caller clamps r to d), ℓ = min(r + p, d), q power iterations (2q + 2 products with
// X). Keeps the basis U = (Q W)[:, :r] of #rsvd and D = Σ[:r]; D_i <= eig_zero_tol -> 0.
// The Gaussian sketch Ω (d x ℓ, column after column) is drawn from rng, which advances.
// Writes out->U, out->D and sets out->r = r (out->d == d, out->cap >= r required).
// NGD_ERR_NUMERIC if X is not finite (checked first: rng not advanced, no LAPACK call) or a QR
// or the SVD fails (out unchanged). Workspace: ngd_rsvd_sym_ws.
size_t ngd_rsvd_sym_ws(size_t d, size_t r, size_t p);
ngd_status ngd_rsvd_sym(ngd_cview X, size_t r, size_t p, size_t q, float eig_zero_tol, ngd_rng *rng,
                        ngd_lowrank *out, void *ws, size_t ws_bytes);
// SREVD (#sre-kfac): Y = Ω; q times Y = orth(X Y); Q = orth(Y); EVD of Qᵀ X Q (ℓ x ℓ, f32);
// U = (Q W)[:, :r], D = Θ[:r] (descending, <= eig_zero_tol -> 0). q + 1 products with X.
// The orthonormalisation between products is our choice (span unchanged, keeps the small
// directions in f32). Same contract as ngd_rsvd_sym.
size_t ngd_srevd_ws(size_t d, size_t r, size_t p);
ngd_status ngd_srevd(ngd_cview X, size_t r, size_t p, size_t q, float eig_zero_tol, ngd_rng *rng,
                     ngd_lowrank *out, void *ws, size_t ws_bytes);

// ====== Brand update (#brand-update) ======

// F̂⁺ = d_scale·F̂ + (c_scale·C)(c_scale·C)ᵀ, truncated to r⁺ = min(r_keep, r + n) pairs.
// C: d x n, any view with a unit stride (for the EA form pass C = 𝒳ᵀ, c_scale =
// sqrt((1−ρ)/n), d_scale = ρ; #brand-update). Requires r + n <= d, 1 <= r_keep and
// r⁺ <= F->cap; F->r may be 0 (start from zero: any U, D = 0 works as well, #brand-update).
// Two Gram–Schmidt passes, Householder QR, M in f64, f64 symmetric EVD sorted descending,
// U⁺ = [U Q] W[:, :r⁺] written in place over F->U. The dropped eigenvalues (descending,
// clamped at 0, r + n − r⁺ of them) go to `dropped` if not NULL, their count to *n_dropped
// if not NULL. Degenerate C (columns in span(U), duplicated or zero columns) is handled: Q
// is repaired to stay orthonormal and ⟂ U (see lowrank.c). "Truncate before the next
// update" (#brand-update) is done by the caller setting F->r = r_B before the call.
// Errors: NGD_ERR_ARG (non-finite C or scales, r + n > d, cap too small, workspace),
// NGD_ERR_SHAPE, NGD_ERR_NUMERIC (QR / EVD failure; F unchanged).
size_t ngd_brand_update_ws(size_t d, size_t r, size_t n);
ngd_status ngd_brand_update(ngd_lowrank *F, float d_scale, ngd_cview C, float c_scale,
                            size_t r_keep, float *dropped, size_t *n_dropped, void *ws,
                            size_t ws_bytes);
// Re-orthonormalises F without changing F̂ (#brand-update): U = Q_U R_U,
// EVD(R_U D R_Uᵀ) = W Θ Wᵀ (f64), U <- Q_U W, D <- Θ (descending, clamped at 0).
size_t ngd_brand_reorth_ws(size_t d, size_t r);
ngd_status ngd_brand_reorth(ngd_lowrank *F, void *ws, size_t ws_bytes);

// ====== Rayleigh–Ritz correction (#brc-kfac) ======

// s = round(φ r + 1), clamped to [1, r] (0 when r = 0).
size_t ngd_rr_subset_size(size_t r, float phi);
// Draws s = ngd_rr_subset_size(F->r, phi) distinct columns uniformly from rng (which
// advances), then ngd_rr_correct_subset. Fbar is the CURRENT dense EA factor (d x d,
// symmetric; #reading-choices); NGD_ERR_NUMERIC if it is not finite (F unchanged, rng not
// advanced). Workspace: ngd_rr_correct_ws(d, r, ngd_rr_subset_size(r, phi)).
size_t ngd_rr_correct_ws(size_t d, size_t r, size_t s);
ngd_status ngd_rr_correct(ngd_lowrank *F, ngd_cview Fbar, float phi, ngd_rng *rng, void *ws,
                          size_t ws_bytes);
// H = U_Sᵀ Fbar U_S (s x s, accumulated in f64), H = W Θ Wᵀ (f64 EVD), U_S <- U_S W,
// D_S <- Θ (clamped at 0), then (U, D) re-sorted descending. S: s distinct indices < F->r.
// Workspace: ngd_rr_correct_ws(d, r, s).
ngd_status ngd_rr_correct_subset(ngd_lowrank *F, ngd_cview Fbar, const size_t *S, size_t s,
                                 void *ws, size_t ws_bytes);

// ====== K-FAC eigenbasis preconditioning (#k-fac) ======

typedef enum {
    NGD_EIG_F32_THEN_F64 = 0, // ssyevd; on failure (info != 0 or non-finite) dsyev in f64
    NGD_EIG_F32 = 1,          // ssyevd only
    NGD_EIG_F64 = 2,          // dsyev in f64 only (an accuracy reference)
} ngd_eig_mode;
typedef enum {
    NGD_EIG_OK = 0,      // the first attempt succeeded
    NGD_EIG_RETRIED = 1, // f32 failed, the f64 retry succeeded (count it in health)
    NGD_EIG_FAILED = 2,  // no attempt succeeded, or F is not finite: `out` was NOT touched,
                         // the caller keeps its previous decomposition
} ngd_eig_outcome;
// Full symmetric EVD of F (d x d; the upper triangle is read) into out (out->d == d,
// out->cap >= d; out->r = d on success), descending, eigenvalues <= zero_tol set to 0.
// Numerical failure is not an error: NGD_OK is returned with *outcome saying what happened.
size_t ngd_sym_eig_ws(size_t d, ngd_eig_mode mode);
ngd_status ngd_sym_eig(ngd_cview F, float zero_tol, ngd_eig_mode mode, ngd_lowrank *out,
                       ngd_eig_outcome *outcome, void *ws, size_t ws_bytes);
// The rows J is made of, J = scale·𝒢ᵀ𝒜 (𝒢: n x d_G, 𝒜: n x d_A; #factored-application),
// and the caller's n x d_G and n x d_A work matrices X, Y (not overlapping each other).
typedef struct {
    ngd_cview Gcal, Acal;
    float scale;
    ngd_view X, Y;
} ngd_kfac_rows;
// Exact damping: S = Q_G [(Q_Gᵀ J Q_A) ⊘ (γ αᵀ + lambda_K)] Q_Aᵀ, where G = (Q_G, γ) and
// A = (Q_A, α) are FULL eigendecompositions (r == d), lambda_K > 0 (the λ_rel·maxγ·
// maxα is the caller's). J, S d_G x d_A; S == J allowed. Four GEMMs. rows: NULL, or J's
// rows: where that costs less (n (d_G² + d_A² + d_G d_A) < d_G d_A (d_G + d_A)), Q_Gᵀ J Q_A is
// scale·(𝒢 Q_G)ᵀ(𝒜 Q_A) and J is not read.
size_t ngd_kfac_precond_ws(size_t d_G, size_t d_A);
// Whether n rows pay for Q_Gᵀ J Q_A (that rule; the K-FAC family's layers decide with it too)
bool ngd_kfac_rows_pay(size_t n, size_t dG, size_t dA);
ngd_status ngd_kfac_precond_exact(const ngd_lowrank *G, const ngd_lowrank *A, float lambda_K,
                                  ngd_cview J, const ngd_kfac_rows *rows, ngd_view S, void *ws,
                                  size_t ws_bytes);
// Factored damping: denominator (γ_i + lambda_G)(α_j + lambda_A); π-damping is
// lambda_G = γ_π/π, lambda_A = π γ_π (both > 0; π is K-FAC's policy, src/optim/kfac.c).
ngd_status ngd_kfac_precond_factored(const ngd_lowrank *G, const ngd_lowrank *A, float lambda_G,
                                     float lambda_A, ngd_cview J, const ngd_kfac_rows *rows,
                                     ngd_view S, void *ws, size_t ws_bytes);
// The same through inverse operators formed once per decomposition: the denominator is the
// product of the two sides', so S = G⁻¹ J A⁻¹ with F⁻¹ = Q_F diag(1/(d_F + lambda_F)) Q_Fᵀ.
// ngd_kfac_inv forms F⁻¹ (d x d, F a FULL eigendecomposition, lambda > 0), a block of rows at
// a time; ngd_kfac_precond_inv applies them: two GEMMs (J, S, ws as ngd_kfac_precond_exact),
// or with rows where they pay, scale·(𝒢 G⁻¹)ᵀ(𝒜 A⁻¹): no product with a d_G x d_A matrix.
size_t ngd_kfac_inv_ws(size_t d);
ngd_status ngd_kfac_inv(const ngd_lowrank *F, float lambda, ngd_view Finv, void *ws,
                        size_t ws_bytes);
ngd_status ngd_kfac_precond_inv(ngd_cview Ginv, ngd_cview Ainv, ngd_cview J,
                                const ngd_kfac_rows *rows, ngd_view S, void *ws, size_t ws_bytes);

// ====== Factored linear-cost application for FC layers (#factored-application) ======

// X = LRI_G(𝒢ᵀ) (d_G x n), Y = LRI_A(𝒜ᵀ) (d_A x n) for 𝒢 (n x d_G), 𝒜 (n x d_A). Then
// S = (1/n) X Yᵀ is the preconditioned step (formed by ngd_factored_update: the clip and
// the driver's rule read it like any other). Workspace: _ws(r_G, r_A, n).
size_t ngd_factored_precond_ws(size_t r_G, size_t r_A, size_t n);
ngd_status ngd_factored_precond(const ngd_lowrank *G, float lambda_G, float mu_G,
                                const ngd_lowrank *A, float lambda_A, float mu_A, ngd_cview Gcal,
                                ngd_cview Acal, ngd_view X, ngd_view Y, void *ws, size_t ws_bytes);
// W := beta W + alpha X Yᵀ (the rank-n weight update; W d_G x d_A, X d_G x n, Y d_A x n).
ngd_status ngd_factored_update(ngd_view W, float beta, float alpha, ngd_cview X, ngd_cview Y);

#endif
