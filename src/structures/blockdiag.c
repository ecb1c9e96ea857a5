/*
 * blockdiag.c — the block-diagonal structure (docs/algorithms.md#block-diagonal): ⌊d/b⌋ dense b x b
 * blocks plus a trailing r x r block, r = d mod b (r = 0: no trailing block; d < b: one
 * dense d x d block). Blocks are general matrices (no symmetry assumed).
 *
 * Storage: the blocks one after another, each row-major. Block i covers rows and columns
 * [i·b, i·b + sz) with sz = min(b, d − i·b) and starts at offset i·b²; count ⌊d/b⌋·b² + r².
 * Every product (block·block, K·M, Kᵀ·M, S Sᵀ) goes block by block through ngd_gemm on
 * sub-views, so any view layout of M / out / X works.
 *
 * desc->quirk reproduces the official transpose quirk (#block-diagonal): mm returns K·M for
 * trans = true, from_inner(X) returns Π(K X Xᵀ Kᵀ) and from_inner() Π(K Kᵀ). With
 * quirk = false every operation is the mathematically consistent one.
 * Legend: d = dimension, b = block size, sz = size of the current block, n = columns of M/X.
 */
#include <string.h>

#include "impl.h"
#include "structure.h"

static size_t bd_nblocks(const ngd_sdesc *s) { return (s->d + s->b - 1) / s->b; }
static size_t bd_size(const ngd_sdesc *s, size_t i) { return NGD_MIN(s->b, s->d - i * s->b); }
static size_t bd_offset(const ngd_sdesc *s, size_t i) { return i * s->b * s->b; }

// block i of the stored numbers as a (sz, sz) row-major view
static ngd_view bd_block(const ngd_sdesc *s, float *p, size_t i) {
    size_t sz = bd_size(s, i);
    return ngd_view_rm(p + bd_offset(s, i), sz, sz, sz);
}
static ngd_cview bd_cblock(const ngd_sdesc *s, const float *p, size_t i) {
    size_t sz = bd_size(s, i);
    return ngd_cview_rm(p + bd_offset(s, i), sz, sz, sz);
}

static size_t bd_count(const ngd_sdesc *s) {
    size_t r = s->d % s->b;
    return (s->d / s->b) * s->b * s->b + r * r;
}

static size_t bd_entry(const ngd_sdesc *s, size_t i, size_t j) {
    size_t bi = i / s->b;
    if (j / s->b != bi) return NGD_NO_ENTRY;
    size_t o = bi * s->b;
    return bd_offset(s, bi) + (i - o) * bd_size(s, bi) + (j - o);
}

static void bd_eye(const ngd_sdesc *s, float *p) {
    memset(p, 0, s->n * sizeof(float));
    for (size_t i = 0; i < bd_nblocks(s); i++) {
        ngd_view B = bd_block(s, p, i);
        for (size_t k = 0; k < B.rows; k++)
            NGD_AT(B, k, k) = 1.0f;
    }
}

// #block-diagonal: Π(S) copies the diagonal blocks (every pattern position has its mirror in
// the pattern, so S_ij is kept even for non-symmetric S).
static void bd_project(const ngd_sdesc *s, ngd_cview S, float *p) {
    for (size_t i = 0; i < bd_nblocks(s); i++) {
        size_t o = i * s->b, sz = bd_size(s, i);
        ngd_view_copy(ngd_cview_sub(S, o, sz, o, sz), bd_block(s, p, i));
    }
}

static void bd_diag_add(const ngd_sdesc *s, float *p, float v) {
    for (size_t i = 0; i < bd_nblocks(s); i++) {
        ngd_view B = bd_block(s, p, i);
        for (size_t k = 0; k < B.rows; k++)
            NGD_AT(B, k, k) += v;
    }
}

static double bd_trace(const ngd_sdesc *s, const float *p) {
    double t = 0;
    for (size_t i = 0; i < bd_nblocks(s); i++) {
        ngd_cview B = bd_cblock(s, p, i);
        for (size_t k = 0; k < B.rows; k++)
            t += (double)NGD_AT(B, k, k);
    }
    return t;
}

// #block-diagonal: the product is block by block, (A B)_i = A_i B_i.
static void bd_mul(const ngd_sdesc *s, const float *a, const float *b, float *out) {
    for (size_t i = 0; i < bd_nblocks(s); i++)
        ngd_gemm(1.0f, bd_cblock(s, a, i), bd_cblock(s, b, i), 0.0f, bd_block(s, out, i));
}

// out rows [o, o+sz) = K_i M[o:o+sz, :] (or K_iᵀ ...; the quirk keeps K_i, #block-diagonal).
static void bd_mm(const ngd_sdesc *s, const float *p, bool trans, ngd_cview M, ngd_view out) {
    const bool t = trans && !s->quirk;
    const size_t n = M.cols;
    for (size_t i = 0; i < bd_nblocks(s); i++) {
        size_t o = i * s->b, sz = bd_size(s, i);
        ngd_cview K = bd_cblock(s, p, i);
        ngd_gemm(1.0f, t ? ngd_cview_t(K) : K, ngd_cview_sub(M, o, sz, 0, n), 0.0f,
                 ngd_view_sub(out, o, sz, 0, n));
    }
}

// out = beta·out + alpha·Π(Kᵀ X Xᵀ K): with S = Kᵀ X (d x n, in ws), block i is S_i S_iᵀ
// where S_i = S[o:o+sz, :]. No X: block i is K_iᵀ K_i. Quirk: S = K X and K_i K_iᵀ.
static void bd_from_inner(const ngd_sdesc *s, const float *k, ngd_cview X, float alpha, float beta,
                          float *out, float *ws) {
    if (!X.p) {
        for (size_t i = 0; i < bd_nblocks(s); i++) {
            ngd_cview K = bd_cblock(s, k, i);
            ngd_cview L = s->quirk ? K : ngd_cview_t(K); // Π(K Kᵀ) (quirk) or Π(Kᵀ K)
            ngd_gemm(alpha, L, ngd_cview_t(L), beta, bd_block(s, out, i));
        }
        return;
    }
    const size_t n = X.cols;
    ngd_view S = ngd_view_rm(ws, s->d, n, n); // (d, n) row-major
    bd_mm(s, k, true, X, S);                  // S = Kᵀ X (quirk: K X)
    for (size_t i = 0; i < bd_nblocks(s); i++) {
        size_t o = i * s->b, sz = bd_size(s, i);
        ngd_syrk_full(alpha, ngd_cv(ngd_view_sub(S, o, sz, 0, n)), beta, bd_block(s, out, i));
    }
}

static size_t bd_ws(const ngd_sdesc *s, size_t n) { return s->d * n; }

const ngd_structure_ops ngd_blockdiag_ops = {
    .name = "blockdiag",
    .count = bd_count,
    .entry = bd_entry,
    .eye = bd_eye,
    .project = bd_project,
    .diag_add = bd_diag_add,
    .trace = bd_trace,
    .frob2 = NULL, // every stored number is one dense entry
    .mul = bd_mul,
    .mm = bd_mm,
    .from_inner = bd_from_inner,
    .ws_from_inner = bd_ws,
};
