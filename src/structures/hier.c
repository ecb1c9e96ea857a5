/*
 * hier.c — the hierarchical structure (docs/algorithms.md#hierarchical) with resolved block sizes
 * (K1, m, K2) = (desc->k1, desc->m, desc->k2), K1 + m + K2 = d (see ngd_sdesc_init):
 *
 *       [ A   B_m   B_b ]      rows/cols: top t = [0, K1), middle m = [K1, K1+m),
 *       [ 0   diag(c) 0 ]                 bottom b = [K1+m, d)
 *       [ 0   D     E   ]
 *
 * Storage (one flat array, in this order; every matrix row-major):
 *   A (K1, K1) | B = [B_m | B_b] (K1, m+K2) | c (m) | D (K2, m) | E (K2, K2)
 * Count K1² + K1(m+K2) + m + K2·m + K2².
 *
 * Every operation uses the block formulas of #hierarchical on sub-views through ngd_gemm; nothing
 * goes through the dense d x d form (the official to_dense→from_dense round trip doubles
 * B and D). Π follows the general rule of structure.h, so it is right for any square S.
 * Legend: d = dimension, K1, m, K2 = block sizes, n = columns of M / X.
 */
#include <string.h>

#include "impl.h"
#include "structure.h"

// The five parameter blocks of one hierarchical matrix, as views into its storage.
typedef struct {
    ngd_view A, B, Bm, Bb, D, E; // (K1,K1) (K1,m+K2) (K1,m) (K1,K2) (K2,m) (K2,K2)
    float *c;                    // (m)
} hier_blocks;

typedef struct {
    ngd_cview A, B, Bm, Bb, D, E;
    const float *c;
} hier_cblocks;

static hier_blocks hier_split(const ngd_sdesc *s, float *p) {
    const size_t K1 = s->k1, m = s->m, K2 = s->k2;
    hier_blocks h;
    h.A = ngd_view_rm(p, K1, K1, K1);
    p += K1 * K1;
    h.B = ngd_view_rm(p, K1, m + K2, m + K2);
    h.Bm = ngd_view_sub(h.B, 0, K1, 0, m);
    h.Bb = ngd_view_sub(h.B, 0, K1, m, K2);
    p += K1 * (m + K2);
    h.c = p;
    p += m;
    h.D = ngd_view_rm(p, K2, m, m);
    p += K2 * m;
    h.E = ngd_view_rm(p, K2, K2, K2);
    return h;
}

static hier_cblocks hier_csplit(const ngd_sdesc *s, const float *p) {
    // the same split, read-only: the cast drops const only to share hier_split
    hier_blocks h = hier_split(s, (float *)(uintptr_t)p);
    hier_cblocks c = {ngd_cv(h.A), ngd_cv(h.B), ngd_cv(h.Bm), ngd_cv(h.Bb),
                      ngd_cv(h.D), ngd_cv(h.E), h.c};
    return c;
}

static size_t hier_count(const ngd_sdesc *s) {
    const size_t K1 = s->k1, m = s->m, K2 = s->k2;
    return K1 * K1 + K1 * (m + K2) + m + K2 * m + K2 * K2;
}

static size_t hier_entry(const ngd_sdesc *s, size_t i, size_t j) {
    const size_t K1 = s->k1, m = s->m, K2 = s->k2, b0 = K1 + m;
    const size_t oB = K1 * K1, oc = oB + K1 * (m + K2), oD = oc + m, oE = oD + K2 * m;
    if (i < K1) return j < K1 ? i * K1 + j : oB + i * (m + K2) + (j - K1);
    if (i < b0) return i == j ? oc + (i - K1) : NGD_NO_ENTRY;
    if (j < K1) return NGD_NO_ENTRY;
    return j < b0 ? oD + (i - b0) * m + (j - K1) : oE + (i - b0) * K2 + (j - b0);
}

static void hier_eye(const ngd_sdesc *s, float *p) {
    memset(p, 0, s->n * sizeof(float));
    hier_blocks h = hier_split(s, p);
    for (size_t i = 0; i < s->k1; i++)
        NGD_AT(h.A, i, i) = 1.0f;
    for (size_t i = 0; i < s->m; i++)
        h.c[i] = 1.0f;
    for (size_t i = 0; i < s->k2; i++)
        NGD_AT(h.E, i, i) = 1.0f;
}

// out += X + Yᵀ element-wise (X, Y and out the same shape after the transpose)
static void add_plus_transpose(ngd_cview X, ngd_cview Yt, ngd_view out) {
    for (size_t i = 0; i < out.rows; i++)
        for (size_t j = 0; j < out.cols; j++)
            NGD_AT(out, i, j) = NGD_AT(X, i, j) + NGD_AT(Yt, j, i);
}

// #hierarchical / structure.h rule: A = S_tt, E = S_bb (mirror in the pattern);
// B = S_t,(m∪b) + S_(m∪b),tᵀ and D = S_bm + S_mbᵀ (mirror not in the pattern); c = diag S_mm.
static void hier_project(const ngd_sdesc *s, ngd_cview S, float *p) {
    const size_t K1 = s->k1, m = s->m, K2 = s->k2, b0 = K1 + m, d = s->d;
    hier_blocks h = hier_split(s, p);
    ngd_view_copy(ngd_cview_sub(S, 0, K1, 0, K1), h.A);
    add_plus_transpose(ngd_cview_sub(S, 0, K1, K1, d - K1), ngd_cview_sub(S, K1, d - K1, 0, K1),
                       h.B);
    for (size_t i = 0; i < m; i++)
        h.c[i] = NGD_AT(S, K1 + i, K1 + i);
    add_plus_transpose(ngd_cview_sub(S, b0, K2, K1, m), ngd_cview_sub(S, K1, m, b0, K2), h.D);
    ngd_view_copy(ngd_cview_sub(S, b0, K2, b0, K2), h.E);
}

static void hier_diag_add(const ngd_sdesc *s, float *p, float v) {
    hier_blocks h = hier_split(s, p);
    for (size_t i = 0; i < s->k1; i++)
        NGD_AT(h.A, i, i) += v;
    for (size_t i = 0; i < s->m; i++)
        h.c[i] += v;
    for (size_t i = 0; i < s->k2; i++)
        NGD_AT(h.E, i, i) += v;
}

static double hier_trace(const ngd_sdesc *s, const float *p) {
    hier_cblocks h = hier_csplit(s, p);
    double t = 0;
    for (size_t i = 0; i < s->k1; i++)
        t += (double)NGD_AT(h.A, i, i);
    for (size_t i = 0; i < s->m; i++)
        t += (double)h.c[i];
    for (size_t i = 0; i < s->k2; i++)
        t += (double)NGD_AT(h.E, i, i);
    return t;
}

// out(i, :) = beta_out·out(i, :) + v_i · M(i, :) for every row i; beta_out is 0 or 1 (0: out is
// not read). Loop order follows out's unit stride.
static void rows_scale(const float *v, ngd_cview M, float beta_out, ngd_view out) {
    if (out.cs == 1) {
        for (size_t i = 0; i < out.rows; i++)
            for (size_t j = 0; j < out.cols; j++) {
                float x = v[i] * NGD_AT(M, i, j);
                NGD_AT(out, i, j) = beta_out == 0.0f ? x : NGD_AT(out, i, j) + x;
            }
    } else {
        for (size_t j = 0; j < out.cols; j++)
            for (size_t i = 0; i < out.rows; i++) {
                float x = v[i] * NGD_AT(M, i, j);
                NGD_AT(out, i, j) = beta_out == 0.0f ? x : NGD_AT(out, i, j) + x;
            }
    }
}

// out(:, j) += X(:, j) · v_j   (X diag(v))
static void cols_scale_add(ngd_cview X, const float *v, ngd_view out) {
    for (size_t i = 0; i < out.rows; i++)
        for (size_t j = 0; j < out.cols; j++)
            NGD_AT(out, i, j) += NGD_AT(X, i, j) * v[j];
}

// #hierarchical product (closed): A'' = A A'; B''_m = A B'_m + B_m diag(c') + B_b D';
// B''_b = A B'_b + B_b E'; c'' = c ⊙ c'; D'' = D diag(c') + E D'; E'' = E E'.
static void hier_mul(const ngd_sdesc *s, const float *a, const float *b, float *out) {
    hier_cblocks x = hier_csplit(s, a), y = hier_csplit(s, b);
    hier_blocks o = hier_split(s, out);
    ngd_gemm(1.0f, x.A, y.A, 0.0f, o.A);
    ngd_gemm(1.0f, x.A, y.B, 0.0f, o.B);   // A [B'_m | B'_b]
    ngd_gemm(1.0f, x.Bb, y.D, 1.0f, o.Bm); // + B_b D'
    cols_scale_add(x.Bm, y.c, o.Bm);       // + B_m diag(c')
    ngd_gemm(1.0f, x.Bb, y.E, 1.0f, o.Bb); // + B_b E'
    for (size_t i = 0; i < s->m; i++)
        o.c[i] = x.c[i] * y.c[i];
    ngd_gemm(1.0f, x.E, y.D, 0.0f, o.D); // E D'
    cols_scale_add(x.D, y.c, o.D);       // + D diag(c')
    ngd_gemm(1.0f, x.E, y.E, 0.0f, o.E);
}

// #hierarchical: K M: top = A M_t + B M_(m∪b); mid = c ⊙ M_m; bot = D M_m + E M_b.
// Kᵀ M: top = Aᵀ M_t; mid = B_mᵀ M_t + c ⊙ M_m + Dᵀ M_b; bot = B_bᵀ M_t + Eᵀ M_b.
static void hier_mm(const ngd_sdesc *s, const float *p, bool trans, ngd_cview M, ngd_view out) {
    const size_t K1 = s->k1, m = s->m, K2 = s->k2, b0 = K1 + m, d = s->d, n = M.cols;
    hier_cblocks h = hier_csplit(s, p);
    ngd_cview Mt = ngd_cview_sub(M, 0, K1, 0, n), Mm = ngd_cview_sub(M, K1, m, 0, n);
    ngd_cview Mb = ngd_cview_sub(M, b0, K2, 0, n), Mmb = ngd_cview_sub(M, K1, d - K1, 0, n);
    ngd_view Ot = ngd_view_sub(out, 0, K1, 0, n), Om = ngd_view_sub(out, K1, m, 0, n);
    ngd_view Ob = ngd_view_sub(out, b0, K2, 0, n), Omb = ngd_view_sub(out, K1, d - K1, 0, n);
    if (!trans) {
        ngd_gemm(1.0f, h.A, Mt, 0.0f, Ot);
        ngd_gemm(1.0f, h.B, Mmb, 1.0f, Ot);
        rows_scale(h.c, Mm, 0.0f, Om);
        ngd_gemm(1.0f, h.D, Mm, 0.0f, Ob);
        ngd_gemm(1.0f, h.E, Mb, 1.0f, Ob);
    } else {
        ngd_gemm(1.0f, ngd_cview_t(h.A), Mt, 0.0f, Ot);
        ngd_gemm(1.0f, ngd_cview_t(h.B), Mt, 0.0f, Omb); // [B_mᵀ; B_bᵀ] M_t
        rows_scale(h.c, Mm, 1.0f, Om);
        ngd_gemm(1.0f, ngd_cview_t(h.D), Mb, 1.0f, Om);
        ngd_gemm(1.0f, ngd_cview_t(h.E), Mb, 1.0f, Ob);
    }
}

static double sq(float x) { return (double)x * (double)x; }

// #hierarchical from_inner. With S = Kᵀ X (d x n, in ws) split by rows into S_t, S_m, S_b:
// A = S_t S_tᵀ; B = 2 S_t S_(m∪b)ᵀ; c_i = ‖(S_m)_i‖²; D = 2 S_b S_mᵀ; E = S_b S_bᵀ.
// No X, Π(Kᵀ K): A = AᵀA; B = 2AᵀB; c = c⊙c + colsumsq(B_m) + colsumsq(D);
// D = 2(B_bᵀ B_m + Eᵀ D); E = EᵀE + B_bᵀ B_b. All as out = beta·out + alpha·(...).
static void hier_from_inner(const ngd_sdesc *s, const float *k, ngd_cview X, float alpha,
                            float beta, float *out, float *ws) {
    const size_t K1 = s->k1, m = s->m, K2 = s->k2, b0 = K1 + m, d = s->d;
    hier_blocks o = hier_split(s, out);
    const float a2 = 2.0f * alpha;
    if (!X.p) {
        hier_cblocks h = hier_csplit(s, k);
        ngd_gemm(alpha, ngd_cview_t(h.A), h.A, beta, o.A);
        ngd_gemm(a2, ngd_cview_t(h.A), h.B, beta, o.B);
        for (size_t i = 0; i < m; i++) {
            double v = sq(h.c[i]); // f64 accumulation of the column sums of squares
            for (size_t r = 0; r < K1; r++)
                v += sq(NGD_AT(h.Bm, r, i));
            for (size_t r = 0; r < K2; r++)
                v += sq(NGD_AT(h.D, r, i));
            ngd_s_accum(&o.c[i], alpha, beta, v);
        }
        ngd_gemm(a2, ngd_cview_t(h.Bb), h.Bm, beta, o.D);
        ngd_gemm(a2, ngd_cview_t(h.E), h.D, 1.0f, o.D);
        ngd_gemm(alpha, ngd_cview_t(h.E), h.E, beta, o.E);
        ngd_gemm(alpha, ngd_cview_t(h.Bb), h.Bb, 1.0f, o.E);
        return;
    }
    const size_t n = X.cols;
    ngd_view S = ngd_view_rm(ws, d, n, n); // (d, n) row-major
    hier_mm(s, k, true, X, S);             // S = Kᵀ X
    ngd_cview St = ngd_cview_rm(ws, K1, n, n), Sm = ngd_cview_rm(ws + K1 * n, m, n, n);
    ngd_cview Sb = ngd_cview_rm(ws + b0 * n, K2, n, n);
    ngd_cview Smb = ngd_cview_rm(ws + K1 * n, d - K1, n, n);
    ngd_syrk_full(alpha, St, beta, o.A);
    ngd_gemm(a2, St, ngd_cview_t(Smb), beta, o.B);
    for (size_t i = 0; i < m; i++) { // ‖row i of S_m‖², S row-major
        const float *row = ws + (K1 + i) * n;
        ngd_s_accum(&o.c[i], alpha, beta, (double)ngd_s_dot(row, row, n));
    }
    ngd_gemm(a2, Sb, ngd_cview_t(Sm), beta, o.D);
    ngd_syrk_full(alpha, Sb, beta, o.E);
}

static size_t hier_ws(const ngd_sdesc *s, size_t n) { return s->d * n; }

const ngd_structure_ops ngd_hier_ops = {
    .name = "hierarchical",
    .count = hier_count,
    .entry = hier_entry,
    .eye = hier_eye,
    .project = hier_project,
    .diag_add = hier_diag_add,
    .trace = hier_trace,
    .frob2 = NULL, // every stored number is one dense entry
    .mul = hier_mul,
    .mm = hier_mm,
    .from_inner = hier_from_inner,
    .ws_from_inner = hier_ws,
};
