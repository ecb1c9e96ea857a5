/*
 * dense.c — the dense structure (docs/algorithms.md#dense): a general d x d row-major matrix,
 * no symmetry assumed. Π(S) = S. The reference every other class is tested against.
 * Legend: d = dimension, n = columns of X or M.
 */
#include <string.h>

#include "impl.h"
#include "structure.h"

static size_t dense_count(const ngd_sdesc *s) { return s->d * s->d; }

static size_t dense_entry(const ngd_sdesc *s, size_t i, size_t j) { return i * s->d + j; }

static void dense_eye(const ngd_sdesc *s, float *p) {
    memset(p, 0, s->d * s->d * sizeof(float));
    for (size_t i = 0; i < s->d; i++)
        p[i * s->d + i] = 1.0f;
}

// Π(S) = S for the dense class: every position's mirror is in the pattern.
static void dense_project(const ngd_sdesc *s, ngd_cview S, float *p) {
    ngd_view_copy(S, ngd_view_rm(p, s->d, s->d, s->d));
}

static void dense_diag_add(const ngd_sdesc *s, float *p, float v) {
    for (size_t i = 0; i < s->d; i++)
        p[i * s->d + i] += v;
}

static double dense_trace(const ngd_sdesc *s, const float *p) {
    double t = 0;
    for (size_t i = 0; i < s->d; i++)
        t += (double)p[i * s->d + i];
    return t;
}

static void dense_mul(const ngd_sdesc *s, const float *a, const float *b, float *out) {
    size_t d = s->d;
    ngd_gemm(1.0f, ngd_cview_rm(a, d, d, d), ngd_cview_rm(b, d, d, d), 0.0f,
             ngd_view_rm(out, d, d, d));
}

static void dense_mm(const ngd_sdesc *s, const float *p, bool trans, ngd_cview M, ngd_view out) {
    ngd_cview K = ngd_cview_rm(p, s->d, s->d, s->d);
    ngd_gemm(1.0f, trans ? ngd_cview_t(K) : K, M, 0.0f, out);
}

// out = beta*out + alpha*(Kᵀ X)(Kᵀ X)ᵀ; with no X: alpha * Kᵀ K. ws: d x n for S = Kᵀ X.
static void dense_from_inner(const ngd_sdesc *s, const float *k, ngd_cview X, float alpha,
                             float beta, float *out, float *ws) {
    size_t d = s->d;
    ngd_cview K = ngd_cview_rm(k, d, d, d);
    ngd_view O = ngd_view_rm(out, d, d, d);
    if (!X.p) { // Kᵀ K: symmetric, so half the products at large d (ngd_syrk_full)
        ngd_syrk_full(alpha, ngd_cview_t(K), beta, O);
        return;
    }
    // Sᵀ = Xᵀ K (n x d, row-major), then S Sᵀ from it: for the statistics' X (a column-major
    // view of row-major rows) both products read memory in their kernels' faster order. d =
    // 4609, n = 256, 2 threads, ms: Kᵀ X 40-52 -> 32-34; S Sᵀ 31-34 -> 17 (ngd_syrk_full's
    // panels of Aᵀ): vgg16bn's deep convolutions' statistics
    ngd_view St = ngd_view_rm(ws, X.cols, d, d);
    ngd_gemm(1.0f, ngd_cview_t(X), K, 0.0f, St);
    ngd_syrk_full(alpha, ngd_cview_t(ngd_cv(St)), beta, O);
}

static size_t dense_ws(const ngd_sdesc *s, size_t n) { return s->d * n; }

const ngd_structure_ops ngd_dense_ops = {
    .name = "dense",
    .count = dense_count,
    .entry = dense_entry,
    .eye = dense_eye,
    .project = dense_project,
    .diag_add = dense_diag_add,
    .trace = dense_trace,
    .frob2 = NULL,
    .mul = dense_mul,
    .mm = dense_mm,
    .from_inner = dense_from_inner,
    .ws_from_inner = dense_ws,
};
