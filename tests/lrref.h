/*
 * lrref.h — float64 dense references for the low-rank kernels' tests (test_lowrank.c):
 * symmetric EVD (LAPACK dsyevd through blas.c, descending), Gaussian draws, random
 * orthonormal bases, dense solves, norms. Plain and slow on purpose: the truth the f32
 * kernels of src/core/lowrank.c are compared to.
 */
#ifndef NGD_TEST_LRREF_H
#define NGD_TEST_LRREF_H
#include <stddef.h>

#include "ref.h"

// Standard normal draws (Box–Muller on ref_uniform).
void lrref_gauss(ref_rng *r, double *x, size_t n);
// U (d x k row-major) with orthonormal columns: Gram–Schmidt (twice) of a Gaussian d x k.
void lrref_random_orthonormal(ref_rng *r, size_t d, size_t k, double *U);
// X = Q0 diag(sigma) Q0ᵀ (d x d) for a random orthogonal Q0.
void lrref_sym_from_spectrum(ref_rng *r, size_t d, const double *sigma, double *X);
// Eigenvalues of the symmetric n x n A, descending, in w; eigenvectors (columns, same order)
// in V if not NULL. A is not modified. Without V: plain C (Householder tridiagonalisation +
// Sturm bisection, no LAPACK); with V: LAPACK dsyevd.
void lrref_sym_eig(size_t n, const double *A, double *w, double *V);
double lrref_sym_norm2(size_t n, const double *A);   // max |eigenvalue|
double lrref_sym_min_eig(size_t n, const double *A); // smallest eigenvalue
double lrref_fro(const double *x, size_t n);         // sqrt(Σ x²)
double lrref_trace(size_t n, const double *A);
// out (d x d) = U diag(D) Uᵀ for the f32 U (d x r, leading dimension ldu) and D.
void lrref_lowrank_dense(size_t d, size_t r, const float *U, size_t ldu, const float *D,
                         double *out);
// max |UᵀU − I| in f64 for the f32 U (d x r, leading dimension ldu).
double lrref_orth_defect(size_t d, size_t r, const float *U, size_t ldu);
// Solves A X = B (A n x n, B n x m, overwritten by X) by LU with partial pivoting; A is
// copied. Returns 0, or -1 for a singular matrix.
int lrref_solve(size_t n, const double *A, size_t m, double *B);
// max |x| over n entries.
double lrref_max_abs(const double *x, size_t n);
#endif
