/*
 * structure.h — one table of operations for the Kronecker-factor structures of SINGD
 * (docs/algorithms.md#structures). A structured d x d matrix is a descriptor (ngd_sdesc: kind, d,
 * block sizes) plus a flat float array of its stored numbers (`count` of them). Every operation
 * works in memory proportional to that storage; nothing is densified except by to_dense.
 *
 * Semantics (dense reference in tests/sref.c; dense.c is the reference structure):
 *   entry(i, j)        index of the stored number at dense position (i, j), or NGD_NO_ENTRY
 *                      (tied positions of Toeplitz classes share an index)
 *   project(S)         Π(S) of #projection for any square S: a position whose mirror is in the
 *                      pattern takes S_ij, one whose mirror is not takes S_ij + S_ji, tied
 *                      positions average. For symmetric S this is the official from_dense.
 *   mm(K, trans, M)    out = K M or Kᵀ M, M is d x n (any strides, out must not alias M)
 *   mul(A, B)          out = A B, exactly in the class (closure); out aliases neither
 *   from_inner(K, X)   out = beta*out + alpha * Π(Kᵀ X Xᵀ K), X is d x n; with X.p == NULL:
 *                      Π(Kᵀ K). ws has ws_from_inner(s, n) floats. With beta != 0, out must
 *                      hold the class's member of a symmetric matrix (what the optimizers
 *                      accumulate): the dense class's symmetric products read its lower
 *                      triangle only (ngd_syrk_full).
 *   diag_add(v)        L += v I
 *   trace(L)           tr(L) (avgtr = trace / d)
 *   frob2(L)           ‖L‖_F² (optional: NULL means "sum of squares of the stored numbers")
 * Element-wise add / scale / max-abs are the same for every class (ngd_s_axpy etc. below):
 * every stored number is an entry of the dense matrix, so max|param| = ‖L‖∞ (vector norm).
 *
 * The official block-diagonal class transposes wrongly (#block-diagonal); quirk = true reproduces
 * it in mm (trans ignored) and from_inner (K instead of Kᵀ). Other classes ignore the flag.
 */
#ifndef NGD_STRUCTURE_H
#define NGD_STRUCTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blas.h"
#include "ngd.h"

#define NGD_NO_ENTRY SIZE_MAX

typedef struct {
    ngd_structure kind;
    size_t d;         // dimension
    size_t b;         // block-diagonal: block size (>= 1)
    size_t k1, m, k2; // hierarchical: resolved (K1, m, K2) with K1 + m + K2 = d
    size_t n;         // number of stored floats
    bool quirk;       // official block-diagonal transpose quirk
} ngd_sdesc;

typedef struct ngd_structure_ops {
    const char *name;
    size_t (*count)(const ngd_sdesc *s);
    size_t (*entry)(const ngd_sdesc *s, size_t i, size_t j);
    void (*eye)(const ngd_sdesc *s, float *p);
    void (*project)(const ngd_sdesc *s, ngd_cview S, float *p);
    void (*diag_add)(const ngd_sdesc *s, float *p, float v);
    double (*trace)(const ngd_sdesc *s, const float *p);
    double (*frob2)(const ngd_sdesc *s, const float *p); // (optional)
    void (*mul)(const ngd_sdesc *s, const float *a, const float *b, float *out);
    void (*mm)(const ngd_sdesc *s, const float *p, bool trans, ngd_cview M, ngd_view out);
    void (*from_inner)(const ngd_sdesc *s, const float *k, ngd_cview X, float alpha, float beta,
                       float *out, float *ws);
    size_t (*ws_from_inner)(const ngd_sdesc *s, size_t n);
} ngd_structure_ops;

// The table, indexed by ngd_structure; NULL where a class is not built in.
const ngd_structure_ops *ngd_structure_get(ngd_structure kind);

// Fills a descriptor for dimension d from a factor spec (block / k1 / k2 read from spec).
// Returns NGD_ERR_ARG for an unknown kind or a zero block size.
ngd_status ngd_sdesc_init(ngd_sdesc *s, const ngd_factor_spec *spec, size_t d, bool quirk);

// ---- generic operations (same for every class) ----
void ngd_s_zero(const ngd_sdesc *s, float *p);
void ngd_s_axpy(const ngd_sdesc *s, float alpha, const float *x, float *y); // y += alpha x
void ngd_s_scale(const ngd_sdesc *s, float *p, float v);                    // p *= v
float ngd_s_maxabs(const ngd_sdesc *s, const float *p);                     // ‖L‖∞ (vector)
double ngd_s_frob(const ngd_sdesc *s, const float *p);                      // ‖L‖_F
double ngd_s_avgtrace(const ngd_sdesc *s, const float *p);                  // tr / d
// Dense d x d form through `entry` (out fully written).
void ngd_s_to_dense(const ngd_sdesc *s, const float *p, ngd_view out);

// ⟨a, b⟩ over n contiguous floats, vectorised through fixed partial sums (deterministic).
float ngd_s_dot(const float *a, const float *b, size_t n);
// For from_inner implementations: *o = beta·*o + alpha·v, never reading *o when beta == 0
// (v is a value accumulated in double).
static inline void ngd_s_accum(float *o, float alpha, float beta, double v) {
    float x = (float)((double)alpha * v);
    *o = beta == 0.0f ? x : beta * *o + x;
}

// Per-class implementations: dense.c, diag.c, blockdiag.c, hier.c, toeplitz.c (tril and
// triu), corner.c (the four corner-diagonal classes).
extern const ngd_structure_ops ngd_dense_ops, ngd_diag_ops, ngd_blockdiag_ops, ngd_hier_ops,
    ngd_tril_toeplitz_ops, ngd_triu_toeplitz_ops, ngd_tril_topleft_ops, ngd_tril_botright_ops,
    ngd_triu_topleft_ops, ngd_triu_botright_ops;
#endif
