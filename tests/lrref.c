/* lrref.c — float64 references for test_lowrank.c (see lrref.h).
 *
 * Eigenvalues come from a plain-C path independent of LAPACK: Householder reduction to
 * tridiagonal form, then Sturm-sequence bisection (each eigenvalue to the last bit of its
 * bracket). It avoids LAPACK's threaded level-2 BLAS calls, which cost a scheduler time slice
 * each when the machine is oversubscribed, and it makes the references independent of the
 * library the kernels call. Eigenvectors (few, small calls) still come from LAPACK dsyevd,
 * run single-threaded.
 */
#include "lrref.h"

#include <lapacke.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"

void lrref_gauss(ref_rng *r, double *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double u1 = ref_uniform(r, 0, 1), u2 = ref_uniform(r, 0, 1);
        if (u1 < 1e-300) u1 = 1e-300;
        x[i] = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
    }
}

// Gram–Schmidt, each column twice against the previous ones ("twice is enough"), plain C
void lrref_random_orthonormal(ref_rng *r, size_t d, size_t k, double *U) {
    lrref_gauss(r, U, d * k);
    double *c = malloc((k ? k : 1) * sizeof *c);
    for (size_t j = 0; j < k; j++) {
        for (int pass = 0; pass < 2; pass++) {
            for (size_t l = 0; l < j; l++) {
                double s = 0;
                for (size_t i = 0; i < d; i++)
                    s += U[i * k + l] * U[i * k + j];
                c[l] = s;
            }
            for (size_t i = 0; i < d; i++) {
                double s = U[i * k + j];
                for (size_t l = 0; l < j; l++)
                    s -= c[l] * U[i * k + l];
                U[i * k + j] = s;
            }
        }
        double nrm = 0;
        for (size_t i = 0; i < d; i++)
            nrm += U[i * k + j] * U[i * k + j];
        nrm = sqrt(nrm);
        if (!(nrm > 0)) abort();
        for (size_t i = 0; i < d; i++)
            U[i * k + j] /= nrm;
    }
    free(c);
}

// Householder tridiagonalisation of the symmetric n x n a (destroyed): diagonal dg (n),
// off-diagonal off (n-1, off[i] couples i and i+1). Step k reflects x = a[k+1.., k] onto
// α e_1 with H = I − 2vvᵀ and updates the trailing block as A − 2vqᵀ − 2qvᵀ, where p = Av
// and q = p − (vᵀp) v.
static void tridiagonalize(size_t n, double *a, double *dg, double *off) {
    double *v = malloc((n ? n : 1) * sizeof *v), *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t k = 0; k + 2 < n; k++) {
        size_t m = n - k - 1; // trailing size
        double nx = 0;
        for (size_t i = 0; i < m; i++)
            nx += a[(k + 1 + i) * n + k] * a[(k + 1 + i) * n + k];
        nx = sqrt(nx);
        double x0 = a[(k + 1) * n + k];
        double alpha = x0 > 0 ? -nx : nx;
        off[k] = alpha;
        if (nx == 0) continue;
        for (size_t i = 0; i < m; i++)
            v[i] = a[(k + 1 + i) * n + k];
        v[0] -= alpha;
        double nv = 0;
        for (size_t i = 0; i < m; i++)
            nv += v[i] * v[i];
        nv = sqrt(nv);
        if (nv == 0) continue;
        for (size_t i = 0; i < m; i++)
            v[i] /= nv;
        double K = 0;
        for (size_t i = 0; i < m; i++) {
            double s = 0;
            for (size_t j = 0; j < m; j++)
                s += a[(k + 1 + i) * n + (k + 1 + j)] * v[j];
            p[i] = s;
            K += v[i] * s;
        }
        for (size_t i = 0; i < m; i++)
            p[i] -= K * v[i];
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < m; j++)
                a[(k + 1 + i) * n + (k + 1 + j)] -= 2 * (v[i] * p[j] + p[i] * v[j]);
    }
    for (size_t i = 0; i < n; i++)
        dg[i] = a[i * n + i];
    if (n >= 2) off[n - 2] = a[(n - 1) * n + (n - 2)];
    free(v);
    free(p);
}

// Number of eigenvalues of the tridiagonal (dg, off) below x (Sturm count of the LDLᵀ
// pivots; a zero pivot is nudged to a tiny value, which moves x by a negligible amount).
static size_t sturm_count(size_t n, const double *dg, const double *off, double x) {
    size_t cnt = 0;
    double q = 1;
    for (size_t i = 0; i < n; i++) {
        double b2 = i ? off[i - 1] * off[i - 1] : 0;
        q = (dg[i] - x) - (i ? b2 / q : 0);
        if (q == 0) q = -1e-300;
        if (q < 0) cnt++;
    }
    return cnt;
}

// The eigenvalues of the tridiagonal (dg, off), ascending, by bisection inside Gershgorin.
static void tridiag_eigvals(size_t n, const double *dg, const double *off, size_t k0, size_t k1,
                            double *w) {
    double lo = 0, hi = 0;
    for (size_t i = 0; i < n; i++) {
        double rad = (i ? fabs(off[i - 1]) : 0) + (i + 1 < n ? fabs(off[i]) : 0);
        lo = i ? fmin(lo, dg[i] - rad) : dg[i] - rad;
        hi = i ? fmax(hi, dg[i] + rad) : dg[i] + rad;
    }
    double pad = 1e-14 * fmax(fabs(lo), fabs(hi)) + 1e-300;
    lo -= pad, hi += pad;
    for (size_t k = k0; k < k1; k++) { // k-th smallest: the x where count(x) passes k
        double a = lo, b = hi;
        for (int it = 0; it < 200; it++) {
            double mid = 0.5 * (a + b);
            if (mid <= a || mid >= b) break;
            if (sturm_count(n, dg, off, mid) > k)
                b = mid;
            else
                a = mid;
        }
        w[k - k0] = 0.5 * (a + b);
    }
}

// eigenvalues k0..k1-1 (ascending index) of the symmetric A into w
static void sym_eigvals_range(size_t n, const double *A, size_t k0, size_t k1, double *w) {
    double *a = malloc(n * n * sizeof *a), *dg = malloc(n * sizeof *dg);
    double *off = malloc(n * sizeof *off);
    memcpy(a, A, n * n * sizeof *a);
    tridiagonalize(n, a, dg, off);
    tridiag_eigvals(n, dg, off, k0, k1, w);
    free(a), free(dg), free(off);
}

void lrref_sym_from_spectrum(ref_rng *r, size_t d, const double *sigma, double *X) {
    double *Q = malloc(d * d * sizeof *Q);
    lrref_random_orthonormal(r, d, d, Q);
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j <= i; j++) {
            double s = 0;
            for (size_t k = 0; k < d; k++)
                s += Q[i * d + k] * sigma[k] * Q[j * d + k];
            X[i * d + j] = X[j * d + i] = s;
        }
    free(Q);
}

void lrref_sym_eig(size_t n, const double *A, double *w, double *V) {
    if (!V) { // plain C: tridiagonal + bisection
        double *wa = malloc(n * sizeof *wa);
        sym_eigvals_range(n, A, 0, n, wa);
        for (size_t j = 0; j < n; j++)
            w[j] = wa[n - 1 - j];
        free(wa);
        return;
    }
    double *a = malloc(n * n * sizeof *a), *wa = malloc(n * sizeof *wa);
    memcpy(a, A, n * n * sizeof *a);
    int saved = ngd_blas_serial_begin(); // small: see blas.h
    // row-major 'U' is LAPACK's column-major 'L' of the same symmetric matrix
    if (LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', (lapack_int)n, a, (lapack_int)n, wa) != 0)
        abort();
    ngd_blas_serial_end(saved);
    for (size_t j = 0; j < n; j++)
        w[j] = wa[n - 1 - j];
    if (V)
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++)
                V[i * n + j] = a[i * n + (n - 1 - j)];
    free(a);
    free(wa);
}

double lrref_sym_norm2(size_t n, const double *A) {
    double *a = malloc(n * n * sizeof *a), *dg = malloc(n * sizeof *dg);
    double *off = malloc(n * sizeof *off), lo, hi;
    memcpy(a, A, n * n * sizeof *a);
    tridiagonalize(n, a, dg, off);
    tridiag_eigvals(n, dg, off, 0, 1, &lo);
    tridiag_eigvals(n, dg, off, n - 1, n, &hi);
    free(a), free(dg), free(off);
    return fmax(fabs(lo), fabs(hi));
}

double lrref_sym_min_eig(size_t n, const double *A) {
    double m;
    sym_eigvals_range(n, A, 0, 1, &m);
    return m;
}

double lrref_fro(const double *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i] * x[i];
    return sqrt(s);
}

double lrref_trace(size_t n, const double *A) {
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += A[i * n + i];
    return s;
}

void lrref_lowrank_dense(size_t d, size_t r, const float *U, size_t ldu, const float *D,
                         double *out) {
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j <= i; j++) {
            double s = 0;
            for (size_t k = 0; k < r; k++)
                s += (double)U[i * ldu + k] * (double)D[k] * (double)U[j * ldu + k];
            out[i * d + j] = out[j * d + i] = s;
        }
}

double lrref_orth_defect(size_t d, size_t r, const float *U, size_t ldu) {
    double m = 0;
    for (size_t a = 0; a < r; a++)
        for (size_t b = 0; b <= a; b++) {
            double s = 0;
            for (size_t i = 0; i < d; i++)
                s += (double)U[i * ldu + a] * (double)U[i * ldu + b];
            m = fmax(m, fabs(s - (a == b ? 1.0 : 0.0)));
        }
    return m;
}

int lrref_solve(size_t n, const double *A, size_t m, double *B) {
    double *a = malloc(n * n * sizeof *a);
    memcpy(a, A, n * n * sizeof *a);
    int rc = 0;
    for (size_t k = 0; k < n && rc == 0; k++) {
        size_t p = k;
        for (size_t i = k + 1; i < n; i++)
            if (fabs(a[i * n + k]) > fabs(a[p * n + k])) p = i;
        if (a[p * n + k] == 0) {
            rc = -1;
            break;
        }
        if (p != k) {
            for (size_t j = 0; j < n; j++) {
                double t = a[k * n + j];
                a[k * n + j] = a[p * n + j];
                a[p * n + j] = t;
            }
            for (size_t j = 0; j < m; j++) {
                double t = B[k * m + j];
                B[k * m + j] = B[p * m + j];
                B[p * m + j] = t;
            }
        }
        for (size_t i = k + 1; i < n; i++) {
            double f = a[i * n + k] / a[k * n + k];
            if (f == 0) continue;
            for (size_t j = k; j < n; j++)
                a[i * n + j] -= f * a[k * n + j];
            for (size_t j = 0; j < m; j++)
                B[i * m + j] -= f * B[k * m + j];
        }
    }
    for (size_t kk = n; kk-- > 0 && rc == 0;)
        for (size_t j = 0; j < m; j++) {
            double s = B[kk * m + j];
            for (size_t c = kk + 1; c < n; c++)
                s -= a[kk * n + c] * B[c * m + j];
            B[kk * m + j] = s / a[kk * n + kk];
        }
    free(a);
    return rc;
}

double lrref_max_abs(const double *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}
