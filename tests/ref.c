/* ref.c — float64 reference kernels for the tests (see ref.h). */
#include "ref.h"

void ref_matmul(size_t m, size_t k, size_t n, const double *A, const double *B, double *C) {
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0;
            for (size_t l = 0; l < k; l++)
                s += A[i * k + l] * B[l * n + j];
            C[i * n + j] = s;
        }
}

void ref_transpose(size_t m, size_t n, const double *A, double *B) {
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++)
            B[j * m + i] = A[i * n + j];
}

double ref_uniform(ref_rng *r, double lo, double hi) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return lo + (hi - lo) * ((double)(z >> 11) * 0x1.0p-53);
}

void ref_fill(ref_rng *r, double *x, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++)
        x[i] = ref_uniform(r, lo, hi);
}

void ref_to_float(const double *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] = (float)x[i];
}

void ref_to_double(const float *x, double *y, size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] = (double)x[i];
}
