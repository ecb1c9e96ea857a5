/*
 * corner.c — the four triangular "corner-diagonal" structures (docs/algorithms.md#corner-diagonal),
 * one file because all four are the same family: a diagonal D plus one dense line at index p,
 *   row type:    L = D + e_p rᵀ   (dense row p)       column type:  L = D + r e_pᵀ
 *   TrilTopLeft     row p = d−1   [[diag, 0],[rᵀ, c]]   TrilBottomRight  column p = 0
 *   TriuBottomRight row p = 0     [[a, rᵀ],[0, diag]]   TriuTopLeft      column p = d−1
 * and the transpose of a row type is the column type with the same p and r.
 * Storage (2d−1 floats): D (d), then the d−1 line entries r_j for j ≠ p in increasing j.
 * d = 1 stores the single entry D_0.
 *
 * Every operation is O(storage · n) from the closed forms below (e_pᵀ r = r_p = 0):
 *   row:    (D + e_p rᵀ)(D' + e_p r'ᵀ) = DD' + e_p (D_p r' + D' ⊙ r)ᵀ
 *   column: (D + r e_pᵀ)(D' + r' e_pᵀ) = DD' + (D ⊙ r' + D'_p r) e_pᵀ
 * The official code goes through the dense d x d form; this file never does.
 * Legend: d = dimension, p = index of the dense line, n = columns of M / X.
 */
#include <string.h>

#include "impl.h"
#include "structure.h"

typedef struct {
    size_t p;      // index of the dense line
    bool row;      // the line is row p (else column p)
    size_t j0, j1; // the line's off-diagonal indices are [j0, j1) = every index but p
} corner_shape;

static corner_shape corner_of(const ngd_sdesc *s) {
    corner_shape c;
    const bool last = s->kind == NGD_STRUCT_TRIL_TOPLEFT || s->kind == NGD_STRUCT_TRIU_TOPLEFT;
    c.p = last ? s->d - 1 : 0;
    c.row = s->kind == NGD_STRUCT_TRIL_TOPLEFT || s->kind == NGD_STRUCT_TRIU_BOTRIGHT;
    c.j0 = c.p == 0 ? 1 : 0;
    c.j1 = c.j0 + s->d - 1;
    return c;
}

// the line's entries indexed by position: r[j] for j in [j0, j1) (r[p] does not exist)
static float *line_of(const ngd_sdesc *s, const corner_shape *c, float *p) {
    return p + s->d - c->j0;
}
static const float *cline_of(const ngd_sdesc *s, const corner_shape *c, const float *p) {
    return p + s->d - c->j0;
}

static size_t corner_count(const ngd_sdesc *s) { return 2 * s->d - 1; }

static size_t corner_entry(const ngd_sdesc *s, size_t i, size_t j) {
    corner_shape c = corner_of(s);
    if (i == j) return i;
    if (c.row && i == c.p) return s->d + j - c.j0;
    if (!c.row && j == c.p) return s->d + i - c.j0;
    return NGD_NO_ENTRY;
}

static void corner_eye(const ngd_sdesc *s, float *p) {
    memset(p, 0, s->n * sizeof(float));
    for (size_t i = 0; i < s->d; i++)
        p[i] = 1.0f;
}

// #corner-diagonal / structure.h rule: D_i = S_ii; the line's mirror is never in the pattern, so
// r_j = S_pj + S_jp (row or column alike). Right for non-symmetric S too.
static void corner_project(const ngd_sdesc *s, ngd_cview S, float *p) {
    corner_shape c = corner_of(s);
    float *r = line_of(s, &c, p);
    for (size_t i = 0; i < s->d; i++)
        p[i] = NGD_AT(S, i, i);
    for (size_t j = c.j0; j < c.j1; j++)
        r[j] = NGD_AT(S, c.p, j) + NGD_AT(S, j, c.p);
}

static void corner_diag_add(const ngd_sdesc *s, float *p, float v) {
    for (size_t i = 0; i < s->d; i++)
        p[i] += v;
}

static double corner_trace(const ngd_sdesc *s, const float *p) {
    double t = 0;
    for (size_t i = 0; i < s->d; i++)
        t += (double)p[i];
    return t;
}

// row: r'' = D_p r' + D' ⊙ r; column: r'' = D ⊙ r' + D'_p r (file header).
static void corner_mul(const ngd_sdesc *s, const float *a, const float *b, float *out) {
    corner_shape c = corner_of(s);
    const float *ra = cline_of(s, &c, a), *rb = cline_of(s, &c, b);
    float *ro = line_of(s, &c, out);
    for (size_t j = c.j0; j < c.j1; j++)
        ro[j] = c.row ? a[c.p] * rb[j] + b[j] * ra[j] : a[j] * rb[j] + b[c.p] * ra[j];
    for (size_t i = 0; i < s->d; i++)
        out[i] = a[i] * b[i];
}

// One contiguous column of out = L M: o = D m, then the line: effective row type
// o_p += Σ_j r_j m_j; column type o_j += r_j m_p.
static void corner_col(const float *D, const float *r, const corner_shape *c, bool row, size_t d,
                       const float *m, float *o) {
    for (size_t i = 0; i < d; i++)
        o[i] = D[i] * m[i];
    if (row) {
        float acc = 0.0f;
        for (size_t j = c->j0; j < c->j1; j++)
            acc += r[j] * m[j];
        o[c->p] += acc;
    } else {
        const float mp = m[c->p];
        for (size_t j = c->j0; j < c->j1; j++)
            o[j] += r[j] * mp;
    }
}

// columns per tile of the mixed-layout path of corner_mm (one 64-byte line of a row)
#define CORNER_TILE 16

// K M or Kᵀ M (Kᵀ swaps row and column type). Effective row type (L = D + e_p rᵀ):
// out = D M, then out_p += Σ_j r_j M_j. Effective column type (L = D + r e_pᵀ): out = D M,
// then out_j += r_j M_p. Row-major views work on contiguous rows, column-major ones column
// by column; mixed layouts go row by row over tiles of CORNER_TILE columns, so that both the
// strided reads and the writes stay within a few cache lines per row.
static void corner_mm(const ngd_sdesc *s, const float *p, bool trans, ngd_cview M, ngd_view out) {
    corner_shape c = corner_of(s);
    const float *r = cline_of(s, &c, p);
    const bool row = c.row != trans;
    const size_t d = s->d, n = M.cols;
    if (M.rs == 1 && out.rs == 1 && !(M.cs == 1 && out.cs == 1)) {
        for (size_t k = 0; k < n; k++)
            corner_col(p, r, &c, row, d, M.p + (ptrdiff_t)k * M.cs, out.p + (ptrdiff_t)k * out.cs);
        return;
    }
    const size_t tile = M.cs == 1 && out.cs == 1 ? n : CORNER_TILE; // row-major: whole rows
    for (size_t k0 = 0; k0 < n; k0 += tile) {
        const size_t nk = NGD_MIN(tile, n - k0);
        for (size_t i = 0; i < d; i++)
            for (size_t k = k0; k < k0 + nk; k++)
                NGD_AT(out, i, k) = p[i] * NGD_AT(M, i, k);
        for (size_t j = c.j0; j < c.j1; j++) {
            const size_t dst = row ? c.p : j, src = row ? j : c.p;
            for (size_t k = k0; k < k0 + nk; k++)
                NGD_AT(out, dst, k) += r[j] * NGD_AT(M, src, k);
        }
    }
}

// out = beta·out + alpha·Π(Kᵀ X Xᵀ K): with S = Kᵀ X (d x n in ws), D_i = ‖S_i‖² and
// r_j = 2⟨S_p, S_j⟩. No X, Π(KᵀK) in closed form:
//   row type  KᵀK = D² + D_p(e_p rᵀ + r e_pᵀ) + r rᵀ:  D''_i = D_i² + r_i², r''_j = 2 D_p r_j;
//   column    KᵀK = D² + D r e_pᵀ + e_p rᵀ D + ‖r‖² e_p e_pᵀ:  D''_p = D_p² + ‖r‖²,
//             r''_i = 2 D_i r_i.
static void corner_from_inner(const ngd_sdesc *s, const float *k, ngd_cview X, float alpha,
                              float beta, float *out, float *ws) {
    corner_shape c = corner_of(s);
    const size_t d = s->d;
    float *ro = line_of(s, &c, out);
    if (X.p) {
        const size_t n = X.cols;
        corner_mm(s, k, true, X, ngd_view_rm(ws, d, n, n)); // S = Kᵀ X, (d, n) row-major
        const float *Sp = ws + c.p * n;                     // row p of S
        for (size_t i = 0; i < d; i++)
            ngd_s_accum(&out[i], alpha, beta, (double)ngd_s_dot(ws + i * n, ws + i * n, n));
        for (size_t j = c.j0; j < c.j1; j++)
            ngd_s_accum(&ro[j], alpha, beta, 2.0 * (double)ngd_s_dot(Sp, ws + j * n, n));
        return;
    }
    const float *r = cline_of(s, &c, k);
    double rr = 0; // ‖r‖²
    for (size_t j = c.j0; j < c.j1; j++)
        rr += (double)r[j] * (double)r[j];
    for (size_t i = 0; i < d; i++) {
        double v = (double)k[i] * (double)k[i];
        if (c.row && i != c.p) v += (double)r[i] * (double)r[i];
        if (!c.row && i == c.p) v += rr;
        ngd_s_accum(&out[i], alpha, beta, v);
    }
    for (size_t j = c.j0; j < c.j1; j++) {
        const double D = (double)k[c.row ? c.p : j]; // row type: D_p; column type: D_j
        ngd_s_accum(&ro[j], alpha, beta, 2.0 * D * (double)r[j]);
    }
}

static size_t corner_ws(const ngd_sdesc *s, size_t n) { return s->d * n; }

#define CORNER_OPS(NAME)                                                                           \
    {                                                                                              \
        .name = NAME, .count = corner_count, .entry = corner_entry, .eye = corner_eye,             \
        .project = corner_project, .diag_add = corner_diag_add, .trace = corner_trace,             \
        .frob2 = NULL, .mul = corner_mul, .mm = corner_mm, .from_inner = corner_from_inner,        \
        .ws_from_inner = corner_ws,                                                                \
    }
const ngd_structure_ops ngd_tril_topleft_ops = CORNER_OPS("tril_topleft_diag");
const ngd_structure_ops ngd_tril_botright_ops = CORNER_OPS("tril_bottomright_diag");
const ngd_structure_ops ngd_triu_topleft_ops = CORNER_OPS("triu_topleft_diag");
const ngd_structure_ops ngd_triu_botright_ops = CORNER_OPS("triu_bottomright_diag");
