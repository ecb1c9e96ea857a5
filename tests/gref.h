/*
 * gref.h — an independent float64 DENSE reference of one SINGD layer, written from the "Exact
 * update equations of the official implementation" of shared/oracle/README.md
 * (docs/algorithms.md#singd-statistics to #structures). The only thing taken from libngd is each
 * structure's PATTERN (the `entry` map: which dense positions are stored, which positions are
 * tied); the projection Π is built from it by the rule of #projection, and everything else — every
 * product, trace, norm and update — is plain dense f64 arithmetic on d x d arrays. No structured
 * operation of the library is called.
 *
 * Conventions: W is the d_C x d_K matrix [weight | bias column], row-major; statistics are
 * the PROCESSED a (rows x d_K, bias column and 1/sqrt(rows) included) and g (rows x d_C,
 * σ included), built by gref_process_* from raw rows.
 */
#ifndef NGD_TEST_GREF_H
#define NGD_TEST_GREF_H
#include <stdbool.h>
#include <stddef.h>

#include "ngd.h"

// A structure's pattern: idx[i*d + j] = stored index of dense (i, j) or GREF_NONE.
#define GREF_NONE ((size_t)-1)
typedef struct {
    size_t d, n; // dimension, stored-number count
    size_t *idx; // d*d
} gref_pattern;

// Builds the pattern from the library's entry map (ngd_sdesc_init + ops->entry).
// Returns 0 on success, -1 if the structure is unavailable.
int gref_pattern_init(gref_pattern *p, const ngd_factor_spec *spec, size_t d, bool quirk);
void gref_pattern_free(gref_pattern *p);
// Π(S) as a dense d x d matrix: a pattern position (i,j) whose mirror is in the pattern
// takes S_ij, one whose mirror is not takes S_ij + S_ji; positions sharing a stored index
// are averaged; positions outside the pattern are 0. out must not alias S.
void gref_project(const gref_pattern *p, const double *S, double *out);
// max |M_ij| over positions outside the pattern, plus the largest spread between tied
// positions: 0 exactly when M lies in the class (a self-check of the reference's closure).
double gref_off_pattern(const gref_pattern *p, const double *M);

// One layer of the reference optimizer.
typedef struct {
    size_t dK, dC, T, t;
    gref_pattern pK, pC;
    bool quirkK, quirkC; // official block-diagonal transpose quirk, per factor
    bool bf16K, bf16C;   // emulate bf16 storage of K, m_K (C, m_C): round after each update
    double lr, momentum, damping, alpha1, wd, lr_cov; // alpha1: effective (0 if kfac_like)
    bool normalize, kfac_like;
    double *K, *C, *mK, *mC, *HK, *HC, *W, *buf, *P; // P = last natural gradient
    bool hasH;
    double betaK, betaC; // step sizes of the last factor update
} gref_layer;

// Reads the hyper-parameters of c (converted to double), the structures (patterns from the
// library's entry map, quirk from c->official_blockdiag_quirk for block-diagonal factors)
// and the dtypes; W0 is d_C x d_K ([weight | bias]). Returns 0 or -1.
int gref_layer_init(gref_layer *L, const ngd_config *c, size_t dK, size_t dC, const double *W0);
void gref_layer_free(gref_layer *L);
// True when step t = L->t updates the preconditioner (t % T == 0).
bool gref_wants(const gref_layer *L);
// Adds Π_K(Kᵀ aᵀ a K) to H_K and Π_C(Cᵀ gᵀ g C) to H_C (quirk: K instead of Kᵀ).
void gref_observe(gref_layer *L, size_t rows_a, const double *a, size_t rows_g, const double *g);
// One optimizer step with the gradient G (d_C x d_K): preconditioner update when due, natural
// gradient, coupled weight decay, momentum, lr.
void gref_step(gref_layer *L, const double *G);

// Processing of #singd-statistics from raw rows (N samples x R positions, row index
// n*R + r). a_raw: N*R x d_in -> out N*R x (d_in+1) (expand) or N x (d_in+1) (reduce), bias
// column 1, divided by sqrt(rows). g_raw: N*R x d_out -> out N*R x d_out (expand) or N x d_out
// (reduce: summed over positions), times σ = sqrt(1 | N | N*R). Returns the row count.
size_t gref_process_a(ngd_kfac_approx ap, size_t N, size_t R, size_t din, const double *a_raw,
                      double *out);
size_t gref_process_g(ngd_kfac_approx ap, ngd_loss_average la, size_t N, size_t R, size_t dout,
                      const double *g_raw, double *out);

// Rounds x to the nearest bfloat16 (via float32, ties to even), returned as double.
double gref_bf16_round(double x);
#endif
