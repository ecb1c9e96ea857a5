/*
 * ref.h — plain float64 dense reference kernels: the truth every kernel is compared to
 * (llm.c's *_naive functions, BLIS ref_kernels). Row-major, no BLAS, no tricks.
 */
#ifndef NGD_TEST_REF_H
#define NGD_TEST_REF_H
#include <stddef.h>
#include <stdint.h>

// C (m x n) = A (m x k) B (k x n), all row-major float64.
void ref_matmul(size_t m, size_t k, size_t n, const double *A, const double *B, double *C);
// B (n x m) = Aᵀ for A (m x n)
void ref_transpose(size_t m, size_t n, const double *A, double *B);
// deterministic test RNG (splitmix64): uniform in [lo, hi)
typedef struct {
    uint64_t s;
} ref_rng;
double ref_uniform(ref_rng *r, double lo, double hi);
void ref_fill(ref_rng *r, double *x, size_t n, double lo, double hi);
void ref_to_float(const double *x, float *y, size_t n);
void ref_to_double(const float *x, double *y, size_t n);
#endif
