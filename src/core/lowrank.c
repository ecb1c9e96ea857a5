/*
 * lowrank.c — the numerical kernels of the K-FAC family (docs/algorithms.md#low-rank-inverse,
 * #k-fac, #rsvd, #sre-kfac, #brand-update, #factored-application, #brc-kfac); the contract of
 * each is in lowrank.h.
 *
 * float32 throughout; float64 only where docs/algorithms.md says so or where it is a small
 * (r+n)², r², s² or n² side computation whose accuracy decides the orthogonality of a
 * kept basis (each such place says why). No allocation: every buffer is carved out of the
 * caller's workspace by a *_layout function that both the *_ws query and the kernel run, so
 * the two cannot disagree. LAPACK goes through blas.c's column-major *_work wrappers, which
 * allocate nothing; that is why the tall d x k bases inside the kernels are kept
 * column-major (a k x d row-major buffer), and GEMM reads them through transposed views.
 *
 * Deliberately not here: the EA of the dense factors, damping schedules, counters, periods,
 * track bookkeeping and health counting (all the optimizer's, src/optim), and any dense
 * d x d reference (tests/).
 * Legend: d factor size, r rank, n columns of C / samples, ℓ sketch width, s corrected
 * columns, N = r + n (Brand's small problem).
 */
#include "lowrank.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "impl.h"

// ---- workspace carving ----

#define WS_ALIGN 64
// Rows per block when a d x k basis is rotated in place (U⁺ = [U Q] W): bounds the temporary
// to WS_ROWS x k floats whatever d is (1024 x 476 floats = 1.9 MB at the paper setup's r + n),
// while keeping the number of GEMM calls at d/1024.
#define WS_ROWS 1024

typedef struct {
    unsigned char *base; // NULL: only count
    size_t used, cap;
    bool ok;
} wsbuf;

static wsbuf ws_begin(void *base, size_t cap) {
    wsbuf w = {(unsigned char *)base, 0, cap, true};
    return w;
}

// Takes count elements of elsize bytes, 64-byte aligned (base == NULL: only counts). The
// count always reserves the worst-case padding, so the query does not depend on the
// address of the workspace.
static void *ws_take(wsbuf *w, size_t count, size_t elsize) {
    int ok = 1;
    size_t bytes = ngd_mul_size(count, elsize, &ok);
    if (!ok || !w->ok || bytes > SIZE_MAX - WS_ALIGN - w->used) {
        w->ok = false;
        return NULL;
    }
    void *p = NULL;
    if (w->base) {
        uintptr_t a = (uintptr_t)(w->base + w->used);
        size_t pad = (size_t)((WS_ALIGN - a % WS_ALIGN) % WS_ALIGN);
        p = w->base + w->used + pad;
    }
    w->used += bytes + WS_ALIGN;
    if (w->base && w->used > w->cap) {
        w->ok = false;
        return NULL;
    }
    return p;
}

static size_t ws_total(const wsbuf *w) { return w->ok ? w->used : 0; }

// ---- small helpers ----

static bool finite_view(ngd_cview X) {
    for (size_t i = 0; i < X.rows; i++)
        for (size_t j = 0; j < X.cols; j++)
            if (!isfinite(NGD_AT(X, i, j))) return false;
    return true;
}

static bool finitef(float x) { return isfinite(x) != 0; }

// Y = s X for views of the same shape, looping in Y's memory order.
static bool same_view(ngd_cview X, ngd_view Y) {
    return X.p == Y.p && X.rs == Y.rs && X.cs == Y.cs;
}

// Do the address ranges [first, last element] of two views intersect? Conservative: two
// interleaved views that share no element still count (addresses compared as integers,
// since the views may belong to different objects).
static bool spans_overlap(ngd_cview X, ngd_view Y) {
    if (X.rows == 0 || X.cols == 0 || Y.rows == 0 || Y.cols == 0) return false;
    const float *x1 = X.p + (ptrdiff_t)(X.rows - 1) * X.rs + (ptrdiff_t)(X.cols - 1) * X.cs;
    const float *y1 = Y.p + (ptrdiff_t)(Y.rows - 1) * Y.rs + (ptrdiff_t)(Y.cols - 1) * Y.cs;
    uintptr_t a0 = (uintptr_t)X.p, a1 = (uintptr_t)x1, b0 = (uintptr_t)Y.p, b1 = (uintptr_t)y1;
    return !(a1 < b0 || b1 < a0);
}

// A usable view for GEMM: rows/cols and a unit stride in one dimension (or a single row
// or column). Other strides would silently take ngd_gemm's slow loop; reject them.
static bool view_ok(const float *p, size_t rows, size_t cols, ptrdiff_t rs, ptrdiff_t cs) {
    if (rows == 0 || cols == 0) return true;
    if (!p) return false;
    return (cs == 1 && rs >= (ptrdiff_t)cols) || (rs == 1 && cs >= (ptrdiff_t)rows) ||
           (rows == 1 && cs >= 1) || (cols == 1 && rs >= 1);
}
static bool cview_ok(ngd_cview v) { return view_ok(v.p, v.rows, v.cols, v.rs, v.cs); }
static bool mview_ok(ngd_view v) { return view_ok(v.p, v.rows, v.cols, v.rs, v.cs); }

static bool lowrank_ok(const ngd_lowrank *F) {
    if (!F || F->r > F->cap || F->r > F->d) return false;
    if (F->cap > 0 && (!F->U || !F->D)) return false;
    return true;
}

// The column-major d x k view of a k x d row-major buffer.
static ngd_view cm_view(float *p, size_t d, size_t k) {
    ngd_view v = {p, d, k, 1, (ptrdiff_t)d};
    return v;
}

// Out[:, :k] = A·TA + B·TB by blocks of WS_ROWS rows (A: d x a, TA: a x k, B: d x b, TB:
// b x k; a or b may be 0). Row i of the result depends only on row i of A and B, so Out may
// be A itself (same rows), as long as Out does not overlap B. tmp: WS_ROWS x k floats.
static void rotate_rows(ngd_cview A, ngd_cview TA, ngd_cview B, ngd_cview TB, ngd_view Out,
                        float *tmp) {
    size_t d = Out.rows, k = Out.cols;
    for (size_t i0 = 0; i0 < d; i0 += WS_ROWS) {
        size_t nb = NGD_MIN((size_t)WS_ROWS, d - i0);
        ngd_view T = ngd_view_rm(tmp, nb, k, k);
        float beta = 0.0f;
        if (A.cols > 0) {
            ngd_gemm(1.0f, ngd_cview_sub(A, i0, nb, 0, A.cols), TA, 0.0f, T);
            beta = 1.0f;
        }
        if (B.cols > 0) ngd_gemm(1.0f, ngd_cview_sub(B, i0, nb, 0, B.cols), TB, beta, T);
        if (A.cols == 0 && B.cols == 0) ngd_view_zero(T);
        ngd_view_copy(ngd_cv(T), ngd_view_sub(Out, i0, nb, 0, k));
    }
}

// w (n, ascending) and the columns of the n x n row-major v -> the first k in descending
// order, as float: vd (n x k row-major), wd (k). Eigenvalues <= tol become 0 (tol < 0: only
// negative ones, i.e. the PSD clamp).
static void desc_from_asc_d(size_t n, const double *v, const double *w, size_t k, float *vd,
                            float *wd, double tol) {
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < k; j++)
            vd[i * k + j] = (float)v[i * n + (n - 1 - j)];
    for (size_t j = 0; j < k; j++) {
        double x = w[n - 1 - j];
        wd[j] = (x <= tol || x < 0) ? 0.0f : (float)x;
    }
    if (ngd_bf16_emul()) { // emulated bf16: the decomposition's outputs rounded
        ngd_bf16_round(vd, n * k);
        ngd_bf16_round(wd, k);
    }
}

// The small symmetric EVDs (N = r+n, n, r, s, ℓ: at most a few hundred) run single-threaded:
// OpenBLAS opens a parallel region for each of the N dsymv calls inside dsytrd, which costs
// more than the work at these sizes (blas.h, ngd_blas_serial_begin).
static int small_dsyevd(size_t n, double *a, double *w, double *work, size_t lwork, int *iw,
                        size_t liw) {
    int saved = ngd_blas_serial_begin();
    int info = ngd_dsyevd_work(n, a, n, w, work, lwork, iw, liw);
    ngd_blas_serial_end(saved);
    return info;
}

static int small_ssyevd(size_t n, float *a, float *w, float *work, size_t lwork, int *iw,
                        size_t liw) {
    int saved = ngd_blas_serial_begin();
    int info = ngd_ssyevd_work(n, a, n, w, work, lwork, iw, liw);
    ngd_blas_serial_end(saved);
    return info;
}

// ---- LR+I inverse, #low-rank-inverse ----

size_t ngd_lri_apply_ws(size_t r, size_t m) {
    int ok = 1;
    size_t rm = ngd_mul_size(r, m, &ok);
    if (!ok) return 0;
    wsbuf w = ws_begin(NULL, 0);
    ws_take(&w, rm, sizeof(float)); // (r, m) T
    return ws_total(&w);
}

static bool lri_args_ok(const ngd_lowrank *F, float lambda, float mu) {
    if (!lowrank_ok(F) || !finitef(lambda) || !finitef(mu) || !(lambda > 0) || !(mu >= 0))
        return false;
    for (size_t i = 0; i < F->r; i++)
        if (!(F->D[i] + lambda > 0) || !finitef(F->D[i])) return false;
    return true;
}

// #low-rank-inverse: APPLY_LRI(U, D, λ, μ, X): T := Uᵀ X ;
// T := diag(1/(δ+λ) − 1/(μ+λ)) T ; return U T + X/(μ+λ). X, Y: d x m; T: r x m.
static void lri_core(const ngd_lowrank *F, float lambda, float mu, ngd_cview X, ngd_view Y,
                     float *T) {
    size_t r = F->r, m = X.cols;
    ngd_cview U = ngd_lowrank_u(F);
    ngd_view Tv = ngd_view_rm(T, r, m, m); // (r, m) row-major
    const bool em = ngd_bf16_emul();       // emulated bf16: each element-wise result rounded
    if (r > 0) {
        ngd_gemm(1.0f, ngd_cview_t(U), X, 0.0f, Tv);
#pragma omp parallel for schedule(static) if (r * m >= NGD_PAR_MIN)
        for (size_t i = 0; i < r; i++) {
            // 1/(δ+λ) − 1/(μ+λ) = (μ − δ)/((δ+λ)(μ+λ)): no cancellation when δ ≈ μ, and
            // divided in two steps so the product cannot overflow.
            float c = ((mu - F->D[i]) / (F->D[i] + lambda)) / (mu + lambda);
            if (em)
                c = ngd_bf16_round1(ngd_bf16_round1(ngd_bf16_round1(mu - F->D[i]) /
                                                    ngd_bf16_round1(F->D[i] + lambda)) /
                                    ngd_bf16_round1(mu + lambda));
            for (size_t j = 0; j < m; j++)
                T[i * m + j] *= c;
            if (em) ngd_bf16_round(T + i * m, m);
        }
    }
    float inv_tail = 1.0f / (mu + lambda);
    if (em) inv_tail = ngd_bf16_round1(1.0f / ngd_bf16_round1(mu + lambda));
    if (same_view(X, Y))
        ngd_view_scale(Y, inv_tail); // (rounds under emulation)
    else
        ngd_view_scale_copy(X, Y, inv_tail);
    if (em && !same_view(X, Y)) ngd_view_round_bf16(Y);
    if (r > 0) ngd_gemm(1.0f, U, ngd_cv(Tv), 1.0f, Y);
}

static ngd_status lri_checked(const ngd_lowrank *F, float lambda, float mu, ngd_cview X, ngd_view Y,
                              void *ws, size_t ws_bytes) {
    if (!lri_args_ok(F, lambda, mu)) return NGD_ERR_ARG;
    if (X.rows != F->d || Y.rows != F->d || X.cols != Y.cols) return NGD_ERR_SHAPE;
    if (!cview_ok(X) || !mview_ok(Y)) return NGD_ERR_ARG;
    if (!same_view(X, Y) && spans_overlap(X, Y)) return NGD_ERR_ARG;
    size_t need = ngd_lri_apply_ws(F->r, X.cols);
    if (need == 0 || !ws || ws_bytes < need) return NGD_ERR_ARG;
    wsbuf w = ws_begin(ws, ws_bytes);
    float *T = ws_take(&w, F->r * X.cols, sizeof(float)); // (r, m)
    lri_core(F, lambda, mu, X, Y, T);
    return NGD_OK;
}

ngd_status ngd_lri_apply(const ngd_lowrank *F, float lambda, float mu, ngd_cview X, ngd_view Y,
                         void *ws, size_t ws_bytes) {
    return lri_checked(F, lambda, mu, X, Y, ws, ws_bytes);
}

// X (…)^{-1} = ((…)^{-1} Xᵀ)ᵀ: the same kernel on the transposed views, so T = Uᵀ Xᵀ and
// Y += U T are GEMMs on the caller's row-major memory with transpose flags, no copies.
ngd_status ngd_lri_apply_right(const ngd_lowrank *F, float lambda, float mu, ngd_cview X,
                               ngd_view Y, void *ws, size_t ws_bytes) {
    return lri_checked(F, lambda, mu, ngd_cview_t(X), ngd_view_t(Y), ws, ws_bytes);
}

size_t ngd_lri_apply2_ws(size_t d_G, size_t r_G, size_t d_A, size_t r_A) {
    int ok = 1;
    size_t a = ngd_mul_size(r_G, d_A, &ok), b = ngd_mul_size(d_G, r_A, &ok);
    return ok ? ngd_lri_apply_ws(NGD_MAX(a, b), 1) : 0;
}

// PRECONDITION (#rs-kfac): S := APPLY_LRI_G(J) ; S := APPLY_LRI_A(Sᵀ)ᵀ (the right variant).
ngd_status ngd_lri_apply2(const ngd_lowrank *G, float lambda_G, float mu_G, const ngd_lowrank *A,
                          float lambda_A, float mu_A, ngd_cview J, ngd_view S, void *ws,
                          size_t ws_bytes) {
    if (!lri_args_ok(G, lambda_G, mu_G) || !lri_args_ok(A, lambda_A, mu_A)) return NGD_ERR_ARG;
    if (J.rows != G->d || J.cols != A->d || S.rows != J.rows || S.cols != J.cols)
        return NGD_ERR_SHAPE;
    ngd_status st = ngd_lri_apply(G, lambda_G, mu_G, J, S, ws, ws_bytes);
    if (st != NGD_OK) return st;
    return ngd_lri_apply_right(A, lambda_A, mu_A, ngd_cv(S), S, ws, ws_bytes);
}

// ---- randomized eigendecompositions, #rsvd, #sre-kfac ----

typedef struct {
    float *Qa, *Qb; // (ℓ, d) each: column-major d x ℓ bases / products
    float *s;       // (ℓ) singular values or eigenvalues
    float *V;       // (ℓ, ℓ) right singular vectors (RSVD) or Tm, then eigenvectors (SREVD)
    float *Vr;      // (ℓ, r) the kept columns in descending order
    float *qrw;     // QR work (tau included)
    size_t lqr;
    float *lw; // SVD (RSVD) or ssyevd (SREVD) work
    size_t llw;
    int *iw; // ssyevd int work (SREVD)
    size_t liw;
} rand_ws;

static size_t rand_layout(size_t d, size_t r, size_t p, bool srevd, void *base, size_t cap,
                          rand_ws *b) {
    if (d == 0 || r == 0 || r > d || p > SIZE_MAX - r) return 0;
    size_t l = NGD_MIN(r + p, d);
    int ok = 1;
    size_t ld = ngd_mul_size(l, d, &ok);
    if (!ok) return 0;
    wsbuf w = ws_begin(base, cap);
    rand_ws z;
    z.Qa = ws_take(&w, ld, sizeof(float));
    z.Qb = ws_take(&w, ld, sizeof(float));
    z.s = ws_take(&w, l, sizeof(float));
    z.V = ws_take(&w, l * l, sizeof(float));
    z.Vr = ws_take(&w, l * r, sizeof(float));
    z.lqr = ngd_sqr_thin_cm_lwork(d, l);
    if (z.lqr == 0) return 0;
    z.qrw = ws_take(&w, z.lqr, sizeof(float));
    z.liw = 0;
    z.iw = NULL;
    if (srevd) {
        z.llw = ngd_ssyevd_lwork(l, &z.liw);
        if (z.llw == 0) return 0;
        z.iw = ws_take(&w, z.liw, sizeof(int));
    } else {
        z.llw = ngd_sgesvd_cm_v_lwork(d, l);
        if (z.llw == 0) return 0;
    }
    z.lw = ws_take(&w, z.llw, sizeof(float));
    if (b) *b = z;
    return ws_total(&w);
}

size_t ngd_rsvd_sym_ws(size_t d, size_t r, size_t p) {
    return rand_layout(d, r, p, false, NULL, 0, NULL);
}
size_t ngd_srevd_ws(size_t d, size_t r, size_t p) {
    return rand_layout(d, r, p, true, NULL, 0, NULL);
}

static ngd_status rand_check(ngd_cview X, size_t r, float tol, const ngd_rng *rng,
                             const ngd_lowrank *out) {
    if (!rng || !lowrank_ok(out) || !cview_ok(X) || !finitef(tol)) return NGD_ERR_ARG;
    if (X.rows != X.cols || out->d != X.rows) return NGD_ERR_SHAPE;
    if (r == 0 || r > X.rows || r > out->cap) return NGD_ERR_ARG;
    // a non-finite matrix is a numerical event, as in ngd_sym_eig: LAPACK is not called on it
    // (sgesvd never returned on a NaN that the QR steps carried through)
    return finite_view(X) ? NGD_OK : NGD_ERR_NUMERIC;
}

// Y (col-major d x ℓ) := X · Q (col-major d x ℓ), then orth(Y) by Householder QR in place.
static int product_orth(ngd_cview X, float *Q, float *Y, size_t d, size_t l, rand_ws *b) {
    ngd_gemm(1.0f, X, ngd_cv(cm_view(Q, d, l)), 0.0f, cm_view(Y, d, l));
    return ngd_sqr_thin_cm_work(d, l, Y, d, NULL, 0, b->qrw, b->lqr);
}

// RSVD (#rsvd)
ngd_status ngd_rsvd_sym(ngd_cview X, size_t r, size_t p, size_t q, float eig_zero_tol, ngd_rng *rng,
                        ngd_lowrank *out, void *ws, size_t ws_bytes) {
    ngd_status st = rand_check(X, r, eig_zero_tol, rng, out);
    if (st != NGD_OK) return st;
    size_t d = X.rows, l = NGD_MIN(r + p, d);
    rand_ws b;
    size_t need = rand_layout(d, r, p, false, ws, ws_bytes, &b);
    if (need == 0 || !ws || ws_bytes < need) return NGD_ERR_ARG;

    // Ω := standard Gaussian d x ℓ (rng), drawn column after column
    ngd_rng_normal_f32(rng, b.Qa, l * d);
    float *Q = b.Qa, *Y = b.Qb, *t;
    // Q := orth(X Ω)
    if (product_orth(X, Q, Y, d, l, &b) != 0) return NGD_ERR_NUMERIC;
    t = Q, Q = Y, Y = t;
    // repeat q times: Q := orth(Xᵀ Q) ; Q := orth(X Q)   (Xᵀ = X)
    for (size_t it = 0; it < 2 * q; it++) {
        if (product_orth(X, Q, Y, d, l, &b) != 0) return NGD_ERR_NUMERIC;
        t = Q, Q = Y, Y = t;
    }
    // Bt := X Q (d x ℓ); (Ũ, Σ, Wᵀ) := thin SVD of Bt, keeping only Σ and W
    ngd_gemm(1.0f, X, ngd_cv(cm_view(Q, d, l)), 0.0f, cm_view(Y, d, l));
    if (ngd_sgesvd_cm_v_work(d, l, Y, d, b.s, b.V, l, b.lw, b.llw) != 0) return NGD_ERR_NUMERIC;
    for (size_t i = 0; i < l; i++)
        if (!finitef(b.s[i])) return NGD_ERR_NUMERIC;
    // U := (Q W)[:, 1..r] ; D := Σ[1..r] ; D_i := 0 where D_i <= tol
    ngd_gemm(1.0f, ngd_cv(cm_view(Q, d, l)), ngd_cview_rm(b.V, l, r, l), 0.0f,
             ngd_view_rm(out->U, d, r, out->cap));
    for (size_t i = 0; i < r; i++)
        out->D[i] = b.s[i] <= eig_zero_tol ? 0.0f : b.s[i];
    out->r = r;
    return NGD_OK;
}

// SREVD (#sre-kfac), with the orthonormalisation between products
ngd_status ngd_srevd(ngd_cview X, size_t r, size_t p, size_t q, float eig_zero_tol, ngd_rng *rng,
                     ngd_lowrank *out, void *ws, size_t ws_bytes) {
    ngd_status st = rand_check(X, r, eig_zero_tol, rng, out);
    if (st != NGD_OK) return st;
    size_t d = X.rows, l = NGD_MIN(r + p, d);
    rand_ws b;
    size_t need = rand_layout(d, r, p, true, ws, ws_bytes, &b);
    if (need == 0 || !ws || ws_bytes < need) return NGD_ERR_ARG;

    ngd_rng_normal_f32(rng, b.Qa, l * d); // Y := Gaussian d x ℓ
    float *Q = b.Qa, *Y = b.Qb, *t;
    for (size_t it = 0; it < q; it++) { // Y := X Y ; Y := orth(Y)
        if (product_orth(X, Q, Y, d, l, &b) != 0) return NGD_ERR_NUMERIC;
        t = Q, Q = Y, Y = t;
    }
    // Q := orth(Y): already orthonormal after a power step, so only needed when q == 0
    if (q == 0 && ngd_sqr_thin_cm_work(d, l, Q, d, NULL, 0, b.qrw, b.lqr) != 0)
        return NGD_ERR_NUMERIC;
    // Tm := Qᵀ X Q (ℓ x ℓ), symmetrised against GEMM rounding
    ngd_gemm(1.0f, X, ngd_cv(cm_view(Q, d, l)), 0.0f, cm_view(Y, d, l));
    ngd_gemm(1.0f, ngd_cview_t(ngd_cv(cm_view(Q, d, l))), ngd_cv(cm_view(Y, d, l)), 0.0f,
             ngd_view_rm(b.V, l, l, l));
    for (size_t i = 0; i < l; i++)
        for (size_t j = i + 1; j < l; j++) {
            float m = 0.5f * (b.V[i * l + j] + b.V[j * l + i]);
            b.V[i * l + j] = b.V[j * l + i] = m;
        }
    // (Θ, W) := symmetric EVD of Tm in f32 (ℓ is small and Tm itself carries f32 rounding)
    if (small_ssyevd(l, b.V, b.s, b.lw, b.llw, b.iw, b.liw) != 0) return NGD_ERR_NUMERIC;
    for (size_t i = 0; i < l; i++)
        if (!finitef(b.s[i])) return NGD_ERR_NUMERIC;
    // descending: column j of Vr is eigenvector ℓ−1−j
    for (size_t i = 0; i < l; i++)
        for (size_t j = 0; j < r; j++)
            b.Vr[i * r + j] = b.V[i * l + (l - 1 - j)];
    ngd_gemm(1.0f, ngd_cv(cm_view(Q, d, l)), ngd_cview_rm(b.Vr, l, r, r), 0.0f,
             ngd_view_rm(out->U, d, r, out->cap));
    for (size_t j = 0; j < r; j++) {
        float x = b.s[l - 1 - j];
        out->D[j] = x <= eig_zero_tol || x < 0 ? 0.0f : x;
    }
    out->r = r;
    return NGD_OK;
}

// ---- Brand update, #brand-update ----

typedef struct {
    float *B;   // (N, n) row-major: rows [0, r) = P = UᵀC, rows [r, N) = R
    float *P2;  // (r, n) second Gram–Schmidt pass, then UᵀQ
    float *Z;   // (n, d): Z, then Q, column-major d x n
    float *qrw; // QR work (tau included)
    size_t lqr;
    double *M;  // (N, N) the small symmetric matrix, then its eigenvectors
    double *th; // (N) its eigenvalues, ascending
    double *ew; // dsyevd work (for N and for n)
    size_t lew;
    int *iw;
    size_t liw;
    float *W;   // (N, N) row-major: the kept eigenvectors, descending, f32 (ld = r⁺)
    float *tmp; // (WS_ROWS, N) row block for the in-place rotations
    float *G;   // (n, n) repair: Gram of Q, then the rotation T
    float *Rt;  // (n, n) repair: the new R
    float *h;   // (r + n) repair: projection coefficients; then the kept Θ (f32)
} brand_ws;

static size_t brand_layout(size_t d, size_t r, size_t n, void *base, size_t cap, brand_ws *b) {
    if (d == 0 || n > d || r > d - n) return 0; // r + n <= d
    size_t N = r + n;
    int ok = 1;
    size_t dn = ngd_mul_size(d, n, &ok), NN = ngd_mul_size(N, N, &ok);
    size_t rows = ngd_mul_size(WS_ROWS, N, &ok);
    if (!ok) return 0;
    wsbuf w = ws_begin(base, cap);
    brand_ws z;
    z.B = ws_take(&w, N * n, sizeof(float));
    z.P2 = ws_take(&w, r * n, sizeof(float));
    z.Z = ws_take(&w, dn, sizeof(float));
    z.lqr = ngd_sqr_thin_cm_lwork(d, n);
    if (z.lqr == 0) return 0;
    z.qrw = ws_take(&w, z.lqr, sizeof(float));
    z.M = ws_take(&w, NN, sizeof(double));
    z.th = ws_take(&w, N, sizeof(double));
    size_t li1 = 0, li2 = 0;
    size_t l1 = ngd_dsyevd_lwork(N, &li1), l2 = ngd_dsyevd_lwork(n, &li2);
    if (l1 == 0 || l2 == 0) return 0;
    z.lew = NGD_MAX(l1, l2);
    z.liw = NGD_MAX(li1, li2);
    z.ew = ws_take(&w, z.lew, sizeof(double));
    z.iw = ws_take(&w, z.liw, sizeof(int));
    z.W = ws_take(&w, NN, sizeof(float));
    z.tmp = ws_take(&w, rows, sizeof(float));
    z.G = ws_take(&w, n * n, sizeof(float));
    z.Rt = ws_take(&w, n * n, sizeof(float));
    z.h = ws_take(&w, N, sizeof(float));
    if (b) *b = z;
    return ws_total(&w);
}

size_t ngd_brand_update_ws(size_t d, size_t r, size_t n) {
    return brand_layout(d, r, n, NULL, 0, NULL);
}

static float max_abs(const float *x, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++)
        m = NGD_MAX(m, fabsf(x[i]));
    return m;
}

// q (a d-vector, column of the column-major Q buffer) := q − U(Uᵀq) − Q_k(Q_kᵀq), twice;
// returns the norm after. h: (r + k) coefficients.
static float project_out(ngd_cview U, ngd_cview Qk, ngd_view q, float *h) {
    size_t r = U.cols, k = Qk.cols;
    for (int pass = 0; pass < 2; pass++) {
        if (r > 0) {
            ngd_view hu = ngd_view_rm(h, r, 1, 1);
            ngd_gemm(1.0f, ngd_cview_t(U), ngd_cv(q), 0.0f, hu);
            ngd_gemm(-1.0f, U, ngd_cv(hu), 1.0f, q);
        }
        if (k > 0) {
            ngd_view hq = ngd_view_rm(h + r, k, 1, 1);
            ngd_gemm(1.0f, ngd_cview_t(Qk), ngd_cv(q), 0.0f, hq);
            ngd_gemm(-1.0f, Qk, ngd_cv(hq), 1.0f, q);
        }
    }
    double s = 0;
    for (size_t i = 0; i < q.rows; i++)
        s += (double)NGD_AT(q, i, 0) * (double)NGD_AT(q, i, 0);
    return (float)sqrt(s);
}

// Makes Q (col-major d x n, from the Householder QR of Z ⟂ U) orthonormal AND ⟂ U while
// keeping Z = Q R. Needed when R is (nearly) singular: columns of C in span(U), duplicated
// or zero columns. Householder then still returns an orthonormal Q, but its columns that
// multiply R's null space are arbitrary and need not be ⟂ U, which would break [U Q]'s
// orthonormality (#brand-update "degenerate input" holds for Q alone, not for [U Q]).
// Method (an SVQB orthonormalisation): Q1 = (I − UUᵀ)Q (two passes), Q1ᵀQ1 = V diag(σ²) Vᵀ;
// directions with σ >= 1/2 become Q1 V/σ with R̃ = diag(σ) Vᵀ R; the others are junk: since
// UᵀZ ≈ 0, their rows of VᵀR are O(eps‖Z‖) and are dropped (R̃ rows = 0), and their columns
// are replaced by deterministic pseudo-random unit vectors ⟂ U and the kept columns.
static ngd_status brand_repair_q(ngd_cview U, float *Z, size_t d, size_t n, float *R, brand_ws *b) {
    size_t r = U.cols;
    ngd_view Q = cm_view(Z, d, n);
    ngd_view G = ngd_view_rm(b->P2, r, n, n);
    // Q1 := Q − U (UᵀQ), twice ("twice is enough"); b->P2 holds UᵀQ on entry
    ngd_gemm(-1.0f, U, ngd_cv(G), 1.0f, Q);
    ngd_gemm(1.0f, ngd_cview_t(U), ngd_cv(Q), 0.0f, G);
    ngd_gemm(-1.0f, U, ngd_cv(G), 1.0f, Q);
    // Gram Q1ᵀQ1 (n x n) in f32, its EVD in f64: σ² decides which columns are kept, and the
    // f64 eigenvectors keep the rotation orthonormal to f64 accuracy
    ngd_gemm(1.0f, ngd_cview_t(ngd_cv(Q)), ngd_cv(Q), 0.0f, ngd_view_rm(b->G, n, n, n));
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            b->M[i * n + j] = 0.5 * ((double)b->G[i * n + j] + (double)b->G[j * n + i]);
    if (small_dsyevd(n, b->M, b->th, b->ew, b->lew, b->iw, b->liw) != 0) return NGD_ERR_NUMERIC;
    // kept directions, in descending σ: T[:, k] = V[:, j]/σ_j, R̃[k, :] = σ_j V[:, j]ᵀ R
    size_t kept = 0;
    float *T = b->G; // (n, n) row-major, the Gram is no longer needed
    for (size_t jj = 0; jj < n; jj++) {
        size_t j = n - 1 - jj;
        double e = b->th[j];
        if (!(e >= 0.25)) break;
        double sg = sqrt(e);
        for (size_t i = 0; i < n; i++)
            T[i * n + kept] = (float)(b->M[i * n + j] / sg);
        for (size_t c = 0; c < n; c++) {
            double acc = 0;
            for (size_t i = 0; i < n; i++)
                acc += b->M[i * n + j] * (double)R[i * n + c];
            b->Rt[kept * n + c] = (float)(sg * acc);
        }
        kept++;
    }
    for (size_t k = kept; k < n; k++)
        for (size_t c = 0; c < n; c++)
            b->Rt[k * n + c] = 0.0f;
    // Q[:, :kept] := Q1 T[:, :kept], in place by row blocks
    if (kept > 0)
        rotate_rows(ngd_cv(Q), ngd_cview_rm(T, n, kept, n), ngd_cview_rm(NULL, d, 0, 1),
                    ngd_cview_rm(NULL, 0, kept, kept), ngd_view_sub(Q, 0, d, 0, kept), b->tmp);
    // junk columns: pseudo-random unit vectors ⟂ U and ⟂ the columns before them
    for (size_t k = kept; k < n; k++) {
        ngd_view qk = ngd_view_sub(Q, 0, d, k, 1);
        bool done = false;
        for (uint64_t attempt = 0; attempt < 8 && !done; attempt++) {
            ngd_rng g;
            ngd_rng_seed(&g, 0x6272616e64ull /* "brand" */, (uint64_t)k + attempt * n);
            ngd_rng_normal_f32(&g, Z + k * d, d);
            double s0 = 0;
            for (size_t i = 0; i < d; i++)
                s0 += (double)Z[k * d + i] * (double)Z[k * d + i];
            float nrm = project_out(U, ngd_cv(ngd_view_sub(Q, 0, d, 0, k)), qk, b->h);
            // a Gaussian keeps about sqrt((d−r−k)/d) of its norm; retry if it kept < 1%
            if (nrm > 0.01f * (float)sqrt(s0)) {
                float inv = 1.0f / nrm;
                for (size_t i = 0; i < d; i++)
                    Z[k * d + i] *= inv;
                done = true;
            }
        }
        if (!done) return NGD_ERR_NUMERIC; // d >= r + n leaves room: not expected
    }
    memcpy(R, b->Rt, n * n * sizeof(float));
    return NGD_OK;
}

// Σ a[k] b[k] in f64, in DOT_LANES partial sums of a fixed order that the compiler
// vectorises (one running sum waits 4 cycles a term: B Bᵀ of a rank-220 B-KFAC update with
// 128 new columns took 7.8 M of them, about 8 ms a factor, serial)
#define DOT_LANES 8
static double dot_f64(const float *a, const float *b, size_t n) {
    double lane[DOT_LANES] = {0}, s = 0;
    size_t k = 0;
    for (; k + DOT_LANES <= n; k += DOT_LANES)
        for (size_t l = 0; l < DOT_LANES; l++)
            lane[l] += (double)a[k + l] * (double)b[k + l];
    for (; k < n; k++)
        s += (double)a[k] * (double)b[k];
    for (size_t l = 0; l < DOT_LANES; l++)
        s += lane[l];
    return s;
}

// BRAND_UPDATE (#brand-update)
ngd_status ngd_brand_update(ngd_lowrank *F, float d_scale, ngd_cview C, float c_scale,
                            size_t r_keep, float *dropped, size_t *n_dropped, void *ws,
                            size_t ws_bytes) {
    if (!lowrank_ok(F) || !cview_ok(C) || !finitef(d_scale) || !(d_scale >= 0) ||
        !finitef(c_scale) || r_keep == 0)
        return NGD_ERR_ARG;
    if (C.rows != F->d) return NGD_ERR_SHAPE;
    size_t d = F->d, r = F->r, n = C.cols;
    if (n > d || r > d - n) return NGD_ERR_ARG; // [U Q] needs r + n <= d columns
    size_t N = r + n, rp = NGD_MIN(r_keep, N);
    if (rp > F->cap) return NGD_ERR_ARG;
    brand_ws b;
    size_t need = brand_layout(d, r, n, ws, ws_bytes, &b);
    if (need == 0 || !ws || ws_bytes < need) return NGD_ERR_ARG;
    if (!finite_view(C)) return NGD_ERR_ARG;
    for (size_t i = 0; i < r; i++)
        if (!finitef(F->D[i])) return NGD_ERR_ARG;

    ngd_cview U = ngd_lowrank_u(F);
    ngd_view Z = cm_view(b.Z, d, n);
    ngd_view P = ngd_view_rm(b.B, r, n, n);
    ngd_view P2 = ngd_view_rm(b.P2, r, n, n);
    float *R = b.B + r * n; // (n, n) row-major, below P in B
    // Z := c·C ; P := Uᵀ Z ; Z := Z − U P
    ngd_view_scale_copy(C, Z, c_scale);
    if (r > 0) {
        ngd_gemm(1.0f, ngd_cview_t(U), ngd_cv(Z), 0.0f, P);
        ngd_gemm(-1.0f, U, ngd_cv(P), 1.0f, Z);
        // [R] second Gram–Schmidt pass: P₂ := Uᵀ Z ; Z := Z − U P₂ ; P := P + P₂
        ngd_gemm(1.0f, ngd_cview_t(U), ngd_cv(Z), 0.0f, P2);
        ngd_gemm(-1.0f, U, ngd_cv(P2), 1.0f, Z);
        for (size_t i = 0; i < r * n; i++)
            b.B[i] += b.P2[i];
    }
    // (Q, R) := thin Householder QR of Z; Q overwrites Z
    if (n > 0 && ngd_sqr_thin_cm_work(d, n, b.Z, d, R, n, b.qrw, b.lqr) != 0)
        return NGD_ERR_NUMERIC;
    // Q must be ⟂ U for [U Q] to be orthonormal. Check UᵀQ; its f32 GEMM floor is about
    // eps·sqrt(d), so 16·eps·sqrt(d) flags only real loss (degenerate or ill-conditioned Z).
    if (r > 0 && n > 0) {
        ngd_gemm(1.0f, ngd_cview_t(U), ngd_cv(Z), 0.0f, P2);
        float tol = 16.0f * FLT_EPSILON * sqrtf((float)d);
        if (!(max_abs(b.P2, r * n) <= tol)) {
            ngd_status st = brand_repair_q(U, b.Z, d, n, R, &b);
            if (st != NGD_OK) return st;
        }
    }
    // M := [[diag(Dρ) + P Pᵀ, P Rᵀ], [R Pᵀ, R Rᵀ]] = B Bᵀ + diag(Dρ, 0), B = [P; R].
    // [R] in f64: accumulated in f64 from the f32 P and R, so M adds no rounding of its own
    // and the f64 eigenvectors W are orthonormal to f64 accuracy; U⁺ = [U Q] W then loses
    // only what [U Q] had (#brand-update: M in f64). Cost O(N² n + N³), no d in it.
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j <= i; j++) {
            const double s = dot_f64(b.B + i * n, b.B + j * n, n);
            b.M[i * N + j] = b.M[j * N + i] = s;
        }
    for (size_t i = 0; i < r; i++)
        b.M[i * N + i] += (double)d_scale * (double)F->D[i];
    // (Θ, W) := symmetric EVD of M, sorted descending; Θ := max(Θ, 0)
    if (small_dsyevd(N, b.M, b.th, b.ew, b.lew, b.iw, b.liw) != 0) return NGD_ERR_NUMERIC;
    for (size_t i = 0; i < N; i++)
        if (!isfinite(b.th[i])) return NGD_ERR_NUMERIC;
    // r⁺ := min(r_keep, r+n) ; U⁺ := [U | Q] W[:, 1..r⁺] (only the kept columns are rotated)
    desc_from_asc_d(N, b.M, b.th, rp, b.W, b.h, -1.0); // W (N x r⁺), b.h = Θ[1..r⁺] ≥ 0
    ngd_cview Wt = ngd_cview_rm(b.W, r, rp, rp), Wb = ngd_cview_rm(b.W + r * rp, n, rp, rp);
    rotate_rows(U, Wt, ngd_cv(Z), Wb, ngd_view_rm(F->U, d, rp, F->cap), b.tmp);
    // D⁺ := Θ[1..r⁺] ; dropped := Θ[r⁺+1 .. r+n]
    memcpy(F->D, b.h, rp * sizeof(float));
    if (dropped)
        for (size_t j = rp; j < N; j++)
            dropped[j - rp] = NGD_MAX((float)b.th[N - 1 - j], 0.0f);
    if (n_dropped) *n_dropped = N - rp;
    F->r = rp;
    return NGD_OK;
}

// ---- re-orthonormalisation, #brand-update ----

typedef struct {
    float *A; // (r, d): U copied column-major, then Q_U
    float *R; // (r, r) row-major R_U
    float *qrw;
    size_t lqr;
    double *K;  // (r, r) R_U D R_Uᵀ, then its eigenvectors
    double *th; // (r)
    double *ew;
    size_t lew;
    int *iw;
    size_t liw;
    float *W; // (r, r) descending eigenvectors, f32
    float *w; // (r) descending eigenvalues
} reorth_ws;

static size_t reorth_layout(size_t d, size_t r, void *base, size_t cap, reorth_ws *b) {
    if (d == 0 || r > d) return 0;
    int ok = 1;
    size_t dr = ngd_mul_size(d, r, &ok);
    ngd_mul_size(r, r, &ok);
    if (!ok) return 0;
    wsbuf w = ws_begin(base, cap);
    reorth_ws z;
    z.A = ws_take(&w, dr, sizeof(float));
    z.R = ws_take(&w, r * r, sizeof(float));
    z.lqr = ngd_sqr_thin_cm_lwork(d, r);
    z.lew = ngd_dsyevd_lwork(r, &z.liw);
    if (z.lqr == 0 || z.lew == 0) return 0;
    z.qrw = ws_take(&w, z.lqr, sizeof(float));
    z.K = ws_take(&w, r * r, sizeof(double));
    z.th = ws_take(&w, r, sizeof(double));
    z.ew = ws_take(&w, z.lew, sizeof(double));
    z.iw = ws_take(&w, z.liw, sizeof(int));
    z.W = ws_take(&w, r * r, sizeof(float));
    z.w = ws_take(&w, r + 1, sizeof(float));
    if (b) *b = z;
    return ws_total(&w);
}

size_t ngd_brand_reorth_ws(size_t d, size_t r) { return reorth_layout(d, r, NULL, 0, NULL); }

ngd_status ngd_brand_reorth(ngd_lowrank *F, void *ws, size_t ws_bytes) {
    if (!lowrank_ok(F)) return NGD_ERR_ARG;
    size_t d = F->d, r = F->r;
    reorth_ws b;
    size_t need = reorth_layout(d, r, ws, ws_bytes, &b);
    if (need == 0 || !ws || ws_bytes < need) return NGD_ERR_ARG;
    if (r == 0) return NGD_OK;
    // U = Q_U R_U
    ngd_view A = cm_view(b.A, d, r);
    ngd_view_copy(ngd_lowrank_u(F), A);
    if (ngd_sqr_thin_cm_work(d, r, b.A, d, b.R, r, b.qrw, b.lqr) != 0) return NGD_ERR_NUMERIC;
    // K = R_U D R_Uᵀ in f64: r x r, so cheap, and its f64 eigenvectors keep U orthonormal to
    // the QR's accuracy (an f32 EVD would add its own O(r·eps) loss, defeating the purpose)
    for (size_t i = 0; i < r; i++)
        for (size_t j = 0; j <= i; j++) {
            double s = 0;
            for (size_t k = NGD_MAX(i, j); k < r; k++) // R_U is upper triangular
                s += (double)b.R[i * r + k] * (double)F->D[k] * (double)b.R[j * r + k];
            b.K[i * r + j] = b.K[j * r + i] = s;
        }
    if (small_dsyevd(r, b.K, b.th, b.ew, b.lew, b.iw, b.liw) != 0) return NGD_ERR_NUMERIC;
    for (size_t i = 0; i < r; i++)
        if (!isfinite(b.th[i])) return NGD_ERR_NUMERIC;
    desc_from_asc_d(r, b.K, b.th, r, b.W, b.w, -1.0);
    // U <- Q_U W ; D <- Θ
    ngd_gemm(1.0f, ngd_cv(A), ngd_cview_rm(b.W, r, r, r), 0.0f, ngd_view_rm(F->U, d, r, F->cap));
    memcpy(F->D, b.w, r * sizeof(float));
    return NGD_OK;
}

// ---- Rayleigh–Ritz correction, #brc-kfac ----

size_t ngd_rr_subset_size(size_t r, float phi) {
    if (r == 0) return 0;
    double x = (double)phi * (double)r + 1.0; // s := round(φ·r + 1)
    if (!(x >= 1.0)) return 1;
    if (x >= (double)r) return r;
    size_t s = (size_t)floor(x + 0.5);
    return NGD_MAX((size_t)1, NGD_MIN(s, r));
}

typedef struct {
    size_t *idx;       // (r) index pool (draw), then the permutation of the re-sort
    unsigned char *mk; // (r) marks: validation of S
    float *Us;         // (d, s) row-major U_S, later the rotated U_S
    float *T;          // (d, s) row-major Fbar U_S
    double *H;         // (s, s) U_Sᵀ Fbar U_S, then its eigenvectors
    double *th;        // (s)
    double *ew;
    size_t lew;
    int *iw;
    size_t liw;
    float *W;   // (s, s) descending eigenvectors, f32
    float *w;   // (s) descending eigenvalues
    float *row; // (r) one row of U during the permutation; also D's copy
    float *Dc;  // (r)
} rr_ws;

static size_t rr_layout(size_t d, size_t r, size_t s, void *base, size_t cap, rr_ws *b) {
    if (d == 0 || r == 0 || r > d || s == 0 || s > r) return 0;
    int ok = 1;
    size_t ds = ngd_mul_size(d, s, &ok);
    ngd_mul_size(s, s, &ok);
    if (!ok) return 0;
    wsbuf w = ws_begin(base, cap);
    rr_ws z;
    z.idx = ws_take(&w, r, sizeof(size_t));
    z.mk = ws_take(&w, r, 1);
    z.Us = ws_take(&w, ds, sizeof(float));
    z.T = ws_take(&w, ds, sizeof(float));
    z.H = ws_take(&w, s * s, sizeof(double));
    z.th = ws_take(&w, s, sizeof(double));
    z.lew = ngd_dsyevd_lwork(s, &z.liw);
    if (z.lew == 0) return 0;
    z.ew = ws_take(&w, z.lew, sizeof(double));
    z.iw = ws_take(&w, z.liw, sizeof(int));
    z.W = ws_take(&w, s * s, sizeof(float));
    z.w = ws_take(&w, s, sizeof(float));
    z.row = ws_take(&w, r, sizeof(float));
    z.Dc = ws_take(&w, r, sizeof(float));
    if (b) *b = z;
    return ws_total(&w);
}

size_t ngd_rr_correct_ws(size_t d, size_t r, size_t s) { return rr_layout(d, r, s, NULL, 0, NULL); }

static ngd_status rr_core(ngd_lowrank *F, ngd_cview Fbar, const size_t *S, size_t s, rr_ws *b) {
    size_t d = F->d, r = F->r;
    ngd_view Us = ngd_view_rm(b->Us, d, s, s), T = ngd_view_rm(b->T, d, s, s);
    // U_S: gather the selected columns
    for (size_t i = 0; i < d; i++)
        for (size_t k = 0; k < s; k++)
            b->Us[i * s + k] = F->U[i * F->cap + S[k]];
    // H := U_Sᵀ F̄ U_S: T = F̄ U_S in f32 GEMM (the 2d²s part); the s x s product summed in
    // f64 so that H's symmetry and small entries are not lost to a d-term f32 sum
    ngd_gemm(1.0f, Fbar, ngd_cv(Us), 0.0f, T);
    for (size_t a = 0; a < s; a++)
        for (size_t c = 0; c <= a; c++) {
            double x = 0, y = 0;
            for (size_t i = 0; i < d; i++) {
                x += (double)b->Us[i * s + a] * (double)b->T[i * s + c];
                y += (double)b->Us[i * s + c] * (double)b->T[i * s + a];
            }
            b->H[a * s + c] = b->H[c * s + a] = 0.5 * (x + y);
        }
    // (Θ, W) := symmetric EVD of H in f64 (s x s: cheap; f64 W keeps U_S W orthonormal)
    if (small_dsyevd(s, b->H, b->th, b->ew, b->lew, b->iw, b->liw) != 0) return NGD_ERR_NUMERIC;
    for (size_t i = 0; i < s; i++)
        if (!isfinite(b->th[i])) return NGD_ERR_NUMERIC;
    desc_from_asc_d(s, b->H, b->th, s, b->W, b->w, -1.0);
    // U_S := U_S W (into T) ; D_S := Θ ; scatter back
    ngd_gemm(1.0f, ngd_cv(Us), ngd_cview_rm(b->W, s, s, s), 0.0f, T);
    for (size_t i = 0; i < d; i++)
        for (size_t k = 0; k < s; k++)
            F->U[i * F->cap + S[k]] = b->T[i * s + k];
    for (size_t k = 0; k < s; k++)
        F->D[S[k]] = b->w[k];
    // re-sort (U, D) by eigenvalue, descending (insertion sort on indices: stable, r small)
    size_t *perm = b->idx;
    for (size_t j = 0; j < r; j++)
        perm[j] = j;
    for (size_t j = 1; j < r; j++) {
        size_t x = perm[j], i = j;
        while (i > 0 && F->D[perm[i - 1]] < F->D[x]) {
            perm[i] = perm[i - 1];
            i--;
        }
        perm[i] = x;
    }
    for (size_t j = 0; j < r; j++)
        b->Dc[j] = F->D[perm[j]];
    memcpy(F->D, b->Dc, r * sizeof(float));
    for (size_t i = 0; i < d; i++) {
        float *u = F->U + i * F->cap;
        for (size_t j = 0; j < r; j++)
            b->row[j] = u[perm[j]];
        memcpy(u, b->row, r * sizeof(float));
    }
    return NGD_OK;
}

static ngd_status rr_check(const ngd_lowrank *F, ngd_cview Fbar) {
    if (!lowrank_ok(F) || !cview_ok(Fbar)) return NGD_ERR_ARG;
    if (Fbar.rows != F->d || Fbar.cols != F->d) return NGD_ERR_SHAPE;
    return finite_view(Fbar) ? NGD_OK : NGD_ERR_NUMERIC; // (no LAPACK call on non-finite F̄)
}

ngd_status ngd_rr_correct_subset(ngd_lowrank *F, ngd_cview Fbar, const size_t *S, size_t s,
                                 void *ws, size_t ws_bytes) {
    ngd_status st = rr_check(F, Fbar);
    if (st != NGD_OK) return st;
    if (!S || s == 0 || s > F->r) return NGD_ERR_ARG;
    rr_ws b;
    size_t need = rr_layout(F->d, F->r, s, ws, ws_bytes, &b);
    if (need == 0 || !ws || ws_bytes < need) return NGD_ERR_ARG;
    memset(b.mk, 0, F->r);
    for (size_t k = 0; k < s; k++) {
        if (S[k] >= F->r || b.mk[S[k]]) return NGD_ERR_ARG; // out of range or repeated
        b.mk[S[k]] = 1;
    }
    return rr_core(F, Fbar, S, s, &b);
}

// CORRECT (#brc-kfac)
ngd_status ngd_rr_correct(ngd_lowrank *F, ngd_cview Fbar, float phi, ngd_rng *rng, void *ws,
                          size_t ws_bytes) {
    ngd_status st = rr_check(F, Fbar);
    if (st != NGD_OK) return st;
    if (!rng || !finitef(phi) || !(phi >= 0)) return NGD_ERR_ARG;
    if (F->r == 0) return NGD_OK;
    size_t r = F->r, s = ngd_rr_subset_size(r, phi);
    rr_ws b;
    size_t need = rr_layout(F->d, r, s, ws, ws_bytes, &b);
    if (need == 0 || !ws || ws_bytes < need) return NGD_ERR_ARG;
    // S := s distinct indices drawn uniformly without replacement (partial Fisher–Yates):
    // the pool's first s entries. rr_core overwrites idx with its sort permutation only
    // after its last use of S.
    for (size_t j = 0; j < r; j++)
        b.idx[j] = j;
    for (size_t k = 0; k < s; k++) {
        size_t j = k + (size_t)(ngd_rng_uniform(rng) * (double)(r - k));
        if (j >= r) j = r - 1;
        size_t t = b.idx[k];
        b.idx[k] = b.idx[j];
        b.idx[j] = t;
    }
    return rr_core(F, Fbar, b.idx, s, &b);
}

// ---- K-FAC eigen-preconditioning, #k-fac ----

typedef struct {
    void *A; // (d, d) the copy decomposed (float or double)
    void *w; // (d)
    void *work;
    size_t lwork;
    int *iw;
    size_t liw;
} eig_ws;

static size_t eig_layout(size_t d, bool f64, void *base, size_t cap, eig_ws *b) {
    if (d == 0) return 0;
    int ok = 1;
    size_t dd = ngd_mul_size(d, d, &ok);
    if (!ok) return 0;
    wsbuf w = ws_begin(base, cap);
    eig_ws z;
    size_t el = f64 ? sizeof(double) : sizeof(float);
    z.A = ws_take(&w, dd, el);
    z.w = ws_take(&w, d, el);
    z.liw = 0;
    z.iw = NULL;
    if (f64) {
        z.lwork = ngd_dsyev_lwork(d);
    } else {
        z.lwork = ngd_ssyevd_lwork(d, &z.liw);
        z.iw = ws_take(&w, z.liw, sizeof(int));
    }
    if (z.lwork == 0) return 0;
    z.work = ws_take(&w, z.lwork, el);
    if (b) *b = z;
    return ws_total(&w);
}

size_t ngd_sym_eig_ws(size_t d, ngd_eig_mode mode) {
    size_t a = eig_layout(d, false, NULL, 0, NULL), b = eig_layout(d, true, NULL, 0, NULL);
    if (a == 0 || b == 0) return 0;
    switch (mode) {
    case NGD_EIG_F32: return a;
    case NGD_EIG_F64: return b;
    case NGD_EIG_F32_THEN_F64: return NGD_MAX(a, b); // the attempts share the memory
    }
    return 0;
}

// Factors up to this size are decomposed single-threaded (see small_dsyevd): below it a
// dsymv (d² multiply-adds) is cheaper than opening a parallel region for it.
#define EIG_SERIAL_MAX 256

// One attempt; on success writes out (descending, zero_tol) and returns true.
static bool eig_attempt(ngd_cview F, float zero_tol, bool f64, ngd_lowrank *out, void *ws,
                        size_t ws_bytes) {
    size_t d = F.rows;
    eig_ws b;
    if (eig_layout(d, f64, ws, ws_bytes, &b) == 0) return false;
    int info, saved = d <= EIG_SERIAL_MAX ? ngd_blas_serial_begin() : 0;
    if (f64) {
        double *A = b.A, *w = b.w;
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++)
                A[i * d + j] = (double)NGD_AT(F, i, j);
        info = ngd_dsyev_work(d, A, d, w, b.work, b.lwork);
        if (d <= EIG_SERIAL_MAX) ngd_blas_serial_end(saved);
        if (info != 0) return false;
        for (size_t i = 0; i < d; i++)
            if (!isfinite(w[i])) return false;
        for (size_t i = 0; i < d * d; i++)
            if (!isfinite(A[i])) return false;
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++)
                out->U[i * out->cap + j] = (float)A[i * d + d - 1 - j];
        for (size_t j = 0; j < d; j++) {
            float x = (float)w[d - 1 - j];
            out->D[j] = x <= zero_tol ? 0.0f : x;
        }
    } else {
        float *A = b.A, *w = b.w;
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++)
                A[i * d + j] = NGD_AT(F, i, j);
        info = ngd_ssyevd_work(d, A, d, w, b.work, b.lwork, b.iw, b.liw);
        if (d <= EIG_SERIAL_MAX) ngd_blas_serial_end(saved);
        if (info != 0) return false;
        for (size_t i = 0; i < d; i++)
            if (!finitef(w[i])) return false;
        for (size_t i = 0; i < d * d; i++)
            if (!finitef(A[i])) return false;
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++)
                out->U[i * out->cap + j] = A[i * d + d - 1 - j];
        for (size_t j = 0; j < d; j++) {
            float x = w[d - 1 - j];
            out->D[j] = x <= zero_tol ? 0.0f : x;
        }
    }
    out->r = d;
    return true;
}

ngd_status ngd_sym_eig(ngd_cview F, float zero_tol, ngd_eig_mode mode, ngd_lowrank *out,
                       ngd_eig_outcome *outcome, void *ws, size_t ws_bytes) {
    if (!outcome || !lowrank_ok(out) || !cview_ok(F) || !finitef(zero_tol)) return NGD_ERR_ARG;
    if (mode != NGD_EIG_F32 && mode != NGD_EIG_F64 && mode != NGD_EIG_F32_THEN_F64)
        return NGD_ERR_ARG;
    if (F.rows != F.cols || out->d != F.rows) return NGD_ERR_SHAPE;
    size_t d = F.rows;
    if (out->cap < d) return NGD_ERR_ARG;
    size_t need = ngd_sym_eig_ws(d, mode);
    if (need == 0 || !ws || ws_bytes < need) return NGD_ERR_ARG;
    // a non-finite factor is a numerical event: LAPACK is not called on it
    if (!finite_view(F)) {
        *outcome = NGD_EIG_FAILED;
        return NGD_OK;
    }
    // The decomposition is written into `out` only by a successful attempt, so a failure
    // leaves the caller's previous one in place (#k-fac: count and keep).
    if (mode == NGD_EIG_F64) {
        *outcome = eig_attempt(F, zero_tol, true, out, ws, ws_bytes) ? NGD_EIG_OK : NGD_EIG_FAILED;
        return NGD_OK;
    }
    if (eig_attempt(F, zero_tol, false, out, ws, ws_bytes)) {
        *outcome = NGD_EIG_OK;
        return NGD_OK;
    }
    // f64 retry (#k-fac: decomposition failure is a numerical event, retried in f64),
    // with the QR algorithm rather than divide and conquer
    if (mode == NGD_EIG_F32_THEN_F64 && eig_attempt(F, zero_tol, true, out, ws, ws_bytes)) {
        *outcome = NGD_EIG_RETRIED;
        return NGD_OK;
    }
    *outcome = NGD_EIG_FAILED;
    return NGD_OK;
}

size_t ngd_kfac_precond_ws(size_t d_G, size_t d_A) {
    int ok = 1;
    size_t n = ngd_mul_size(d_G, d_A, &ok);
    if (!ok) return 0;
    wsbuf w = ws_begin(NULL, 0);
    ws_take(&w, n, sizeof(float));
    return ws_total(&w);
}

// Whether the rows pay (#factored-application in the eigenbasis): (1/c)(𝒢 Q_G)ᵀ(𝒜 Q_A) costs
// 2n (d_G² + d_A² + d_G d_A) multiply-adds, Q_Gᵀ J Q_A 2 d_G d_A (d_G + d_A).
bool ngd_kfac_rows_pay(size_t n, size_t dG, size_t dA) {
    return (double)n * ((double)dG * dG + (double)dA * dA + (double)dG * dA) <
           (double)dG * dA * ((double)dG + dA);
}

static bool kfac_rows_ok(const ngd_kfac_rows *R, size_t dG, size_t dA) {
    const size_t n = R->Gcal.rows;
    return cview_ok(R->Gcal) && cview_ok(R->Acal) && mview_ok(R->X) && mview_ok(R->Y) && n > 0 &&
           R->Gcal.cols == dG && R->Acal.rows == n && R->Acal.cols == dA && R->X.rows == n &&
           R->X.cols == dG && R->Y.rows == n && R->Y.cols == dA && finitef(R->scale) &&
           !spans_overlap(ngd_cv(R->X), R->Y);
}

// S = Q_G [(Q_Gᵀ J Q_A) ⊘ den] Q_Aᵀ with den_ij = (γ_i + lg)(α_j + la) (factored) or
// γ_i α_j + lk (exact). T: (d_G, d_A). Order: T = Q_Gᵀ J; S = T Q_A; S ⊘= den; T = Q_G S;
// S = T Q_Aᵀ — J is read only by the first product, so S may be J. With rows (J = scale·𝒢ᵀ𝒜)
// where they pay, the first two products are X = 𝒢 Q_G, Y = 𝒜 Q_A, S = scale·Xᵀ Y instead.
static ngd_status kfac_eig_apply(const ngd_lowrank *G, const ngd_lowrank *A, bool exact, float lk,
                                 float lg, float la, ngd_cview J, const ngd_kfac_rows *R,
                                 ngd_view S, void *ws, size_t ws_bytes) {
    if (!lowrank_ok(G) || !lowrank_ok(A) || !cview_ok(J) || !mview_ok(S)) return NGD_ERR_ARG;
    if (G->r != G->d || A->r != A->d) return NGD_ERR_SHAPE; // full EVDs only
    size_t dG = G->d, dA = A->d;
    if (J.rows != dG || J.cols != dA || S.rows != dG || S.cols != dA) return NGD_ERR_SHAPE;
    if (!same_view(J, S) && spans_overlap(J, S)) return NGD_ERR_ARG;
    if (R && !kfac_rows_ok(R, dG, dA)) return NGD_ERR_ARG;
    size_t need = ngd_kfac_precond_ws(dG, dA);
    if (need == 0 || !ws || ws_bytes < need) return NGD_ERR_ARG;
    wsbuf w = ws_begin(ws, ws_bytes);
    float *Tp = ws_take(&w, dG * dA, sizeof(float)); // (d_G, d_A)
    ngd_view T = ngd_view_rm(Tp, dG, dA, dA);
    ngd_cview QG = ngd_lowrank_u(G), QA = ngd_lowrank_u(A);
    if (R && ngd_kfac_rows_pay(R->Gcal.rows, dG, dA)) {
        ngd_gemm(1.0f, R->Gcal, QG, 0.0f, R->X); // 𝒢 Q_G (n x d_G)
        ngd_gemm(1.0f, R->Acal, QA, 0.0f, R->Y); // 𝒜 Q_A (n x d_A)
        ngd_gemm(R->scale, ngd_cview_t(ngd_cv(R->X)), ngd_cv(R->Y), 0.0f, S);
    } else {
        ngd_gemm(1.0f, ngd_cview_t(QG), J, 0.0f, T);
        ngd_gemm(1.0f, ngd_cv(T), QA, 0.0f, S);
    }
    if (ngd_bf16_emul()) { // each element-wise result rounded to bf16: product, sum, quotient
        for (size_t i = 0; i < dG; i++)
            for (size_t j = 0; j < dA; j++) {
                float den = exact ? ngd_bf16_round1(ngd_bf16_round1(G->D[i] * A->D[j]) + lk)
                                  : ngd_bf16_round1(ngd_bf16_round1(G->D[i] + lg) *
                                                    ngd_bf16_round1(A->D[j] + la));
                NGD_AT(S, i, j) = ngd_bf16_round1(NGD_AT(S, i, j) / den);
            }
    } else { // rows over the threads; a unit-stride row as a plain array, which vectorises
             // (the division is exact, so the same bits: it was one thread, an element a time)
        const float *da = A->D;
#pragma omp parallel for schedule(static) if (dG * dA >= NGD_PAR_MIN)
        for (size_t i = 0; i < dG; i++) {
            const float gi = G->D[i];
            if (S.cs == 1) {
                float *restrict srow = S.p + (ptrdiff_t)i * S.rs;
                if (exact)
                    for (size_t j = 0; j < dA; j++)
                        srow[j] /= gi * da[j] + lk;
                else
                    for (size_t j = 0; j < dA; j++)
                        srow[j] /= (gi + lg) * (da[j] + la);
            } else {
                for (size_t j = 0; j < dA; j++)
                    NGD_AT(S, i, j) /= exact ? gi * da[j] + lk : (gi + lg) * (da[j] + la);
            }
        }
    }
    ngd_gemm(1.0f, QG, ngd_cv(S), 0.0f, T);
    ngd_gemm(1.0f, ngd_cv(T), ngd_cview_t(QA), 0.0f, S);
    return NGD_OK;
}

static bool eigs_nonneg(const ngd_lowrank *F) {
    if (!lowrank_ok(F)) return false;
    for (size_t i = 0; i < F->r; i++)
        if (!(F->D[i] >= 0) || !finitef(F->D[i])) return false;
    return true;
}

// #k-fac exact damping: S = Q_G[(Q_Gᵀ J Q_A) ⊘ (γαᵀ + λ_K)]Q_Aᵀ
ngd_status ngd_kfac_precond_exact(const ngd_lowrank *G, const ngd_lowrank *A, float lambda_K,
                                  ngd_cview J, const ngd_kfac_rows *rows, ngd_view S, void *ws,
                                  size_t ws_bytes) {
    if (!finitef(lambda_K) || !(lambda_K > 0) || !eigs_nonneg(G) || !eigs_nonneg(A))
        return NGD_ERR_ARG;
    return kfac_eig_apply(G, A, true, lambda_K, 0.0f, 0.0f, J, rows, S, ws, ws_bytes);
}

// #k-fac factored damping: denominator (γ + γ_π/π)(α + π γ_π)ᵀ
ngd_status ngd_kfac_precond_factored(const ngd_lowrank *G, const ngd_lowrank *A, float lambda_G,
                                     float lambda_A, ngd_cview J, const ngd_kfac_rows *rows,
                                     ngd_view S, void *ws, size_t ws_bytes) {
    if (!finitef(lambda_G) || !finitef(lambda_A) || !(lambda_G > 0) || !(lambda_A > 0) ||
        !eigs_nonneg(G) || !eigs_nonneg(A))
        return NGD_ERR_ARG;
    return kfac_eig_apply(G, A, false, 0.0f, lambda_G, lambda_A, J, rows, S, ws, ws_bytes);
}

// ---- K-FAC's factored damping through inverse operators, #k-fac ----

#define INV_ROWS 256 // rows of F⁻¹ formed per product

size_t ngd_kfac_inv_ws(size_t d) {
    int ok = 1;
    size_t n = ngd_mul_size(NGD_MIN(d, INV_ROWS), d, &ok);
    return ok && n ? n * sizeof(float) : 0;
}

// F⁻¹[i0 : i0 + m, :] = (Q[i0 : i0 + m, :] diag(1/(d + λ))) Qᵀ
ngd_status ngd_kfac_inv(const ngd_lowrank *F, float lambda, ngd_view Finv, void *ws,
                        size_t ws_bytes) {
    if (!finitef(lambda) || !(lambda > 0) || !eigs_nonneg(F) || !mview_ok(Finv)) return NGD_ERR_ARG;
    const size_t d = F->d;
    if (F->r != d || Finv.rows != d || Finv.cols != d) return NGD_ERR_SHAPE;
    const size_t need = ngd_kfac_inv_ws(d);
    if (need == 0 || !ws || ws_bytes < need) return NGD_ERR_ARG;
    ngd_cview Q = ngd_lowrank_u(F);
    if (spans_overlap(Q, Finv)) return NGD_ERR_ARG;
    float *T = ws;
    for (size_t i0 = 0; i0 < d; i0 += INV_ROWS) {
        const size_t m = NGD_MIN(INV_ROWS, d - i0);
        for (size_t i = 0; i < m; i++)
            for (size_t k = 0; k < d; k++)
                T[i * d + k] = NGD_AT(Q, i0 + i, k) / (F->D[k] + lambda);
        ngd_gemm(1.0f, ngd_cview_rm(T, m, d, d), ngd_cview_t(Q), 0.0f,
                 ngd_view_sub(Finv, i0, m, 0, d));
    }
    return NGD_OK;
}

ngd_status ngd_kfac_precond_inv(ngd_cview Ginv, ngd_cview Ainv, ngd_cview J, const ngd_kfac_rows *R,
                                ngd_view S, void *ws, size_t ws_bytes) {
    if (!cview_ok(Ginv) || !cview_ok(Ainv) || !cview_ok(J) || !mview_ok(S)) return NGD_ERR_ARG;
    const size_t dG = Ginv.rows, dA = Ainv.rows;
    if (Ginv.cols != dG || Ainv.cols != dA || J.rows != dG || J.cols != dA || S.rows != dG ||
        S.cols != dA)
        return NGD_ERR_SHAPE;
    if ((!same_view(J, S) && spans_overlap(J, S)) || spans_overlap(Ginv, S) ||
        spans_overlap(Ainv, S))
        return NGD_ERR_ARG;
    if (R && !kfac_rows_ok(R, dG, dA)) return NGD_ERR_ARG;
    if (R && ngd_kfac_rows_pay(R->Gcal.rows, dG, dA)) {
        ngd_gemm(1.0f, R->Gcal, Ginv, 0.0f, R->X); // 𝒢 G⁻¹ (n x d_G)
        ngd_gemm(1.0f, R->Acal, Ainv, 0.0f, R->Y); // 𝒜 A⁻¹ (n x d_A)
        ngd_gemm(R->scale, ngd_cview_t(ngd_cv(R->X)), ngd_cv(R->Y), 0.0f, S);
        return NGD_OK;
    }
    const size_t need = ngd_kfac_precond_ws(dG, dA);
    if (need == 0 || !ws || ws_bytes < need) return NGD_ERR_ARG;
    ngd_view T = ngd_view_rm(ws, dG, dA, dA);
    ngd_gemm(1.0f, Ginv, J, 0.0f, T); // J is read only here, so S may be J
    ngd_gemm(1.0f, ngd_cv(T), Ainv, 0.0f, S);
    return NGD_OK;
}

// ---- factored application for FC layers, #factored-application ----

size_t ngd_factored_precond_ws(size_t r_G, size_t r_A, size_t n) {
    return ngd_lri_apply_ws(NGD_MAX(r_G, r_A), n);
}

// PRECONDITION_FACTORED (#factored-application): X := APPLY_LRI(U_G, D_G, λ_G, μ_G, 𝒢ᵀ) ;
// Y := APPLY_LRI(U_A, D_A, λ_A, μ_A, 𝒜ᵀ)
ngd_status ngd_factored_precond(const ngd_lowrank *G, float lambda_G, float mu_G,
                                const ngd_lowrank *A, float lambda_A, float mu_A, ngd_cview Gcal,
                                ngd_cview Acal, ngd_view X, ngd_view Y, void *ws, size_t ws_bytes) {
    if (!lri_args_ok(G, lambda_G, mu_G) || !lri_args_ok(A, lambda_A, mu_A)) return NGD_ERR_ARG;
    if (Gcal.rows != Acal.rows || X.cols != Gcal.rows || Y.cols != Acal.rows) return NGD_ERR_SHAPE;
    if (spans_overlap(ngd_cv(X), Y)) return NGD_ERR_ARG;
    ngd_status st = ngd_lri_apply(G, lambda_G, mu_G, ngd_cview_t(Gcal), X, ws, ws_bytes);
    if (st != NGD_OK) return st;
    return ngd_lri_apply(A, lambda_A, mu_A, ngd_cview_t(Acal), Y, ws, ws_bytes);
}

// #factored-application: W := W − lr·(ν·(1/n)·X Yᵀ + wd·W) is beta = 1 − lr·wd, alpha = −lr·ν/n.
ngd_status ngd_factored_update(ngd_view W, float beta, float alpha, ngd_cview X, ngd_cview Y) {
    if (!mview_ok(W) || !cview_ok(X) || !cview_ok(Y) || !finitef(alpha) || !finitef(beta))
        return NGD_ERR_ARG;
    if (X.rows != W.rows || Y.rows != W.cols || X.cols != Y.cols) return NGD_ERR_SHAPE;
    if (spans_overlap(X, W) || spans_overlap(Y, W)) return NGD_ERR_ARG;
    ngd_gemm(alpha, X, ngd_cview_t(Y), beta, W);
    return NGD_OK;
}
