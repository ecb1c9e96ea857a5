/*
 * blas.h — strided matrix views and the only door to BLAS/LAPACK (blas.c is the only file
 * that includes dnnl.h / cblas.h / lapacke.h).
 *
 * A view addresses element (i, j) at p[i*rs + j*cs]. Row-major d x n: (rs, cs) = (n, 1);
 * its transpose is the same memory with rows/cols and rs/cs swapped (ngd_view_t). GEMM
 * accepts any view with a unit stride in one dimension (row- or column-major); others fall
 * back to a plain loop. Dimensions are size_t; the int range of LAPACK is checked here.
 */
#ifndef NGD_BLAS_H
#define NGD_BLAS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    float *p;
    size_t rows, cols;
    ptrdiff_t rs, cs;
} ngd_view;

typedef struct {
    const float *p;
    size_t rows, cols;
    ptrdiff_t rs, cs;
} ngd_cview;

static inline ngd_view ngd_view_rm(float *p, size_t rows, size_t cols, size_t ld) {
    ngd_view v = {p, rows, cols, (ptrdiff_t)ld, 1};
    return v;
}
static inline ngd_cview ngd_cview_rm(const float *p, size_t rows, size_t cols, size_t ld) {
    ngd_cview v = {p, rows, cols, (ptrdiff_t)ld, 1};
    return v;
}
static inline ngd_cview ngd_cv(ngd_view v) {
    ngd_cview c = {v.p, v.rows, v.cols, v.rs, v.cs};
    return c;
}
static inline ngd_view ngd_view_t(ngd_view v) {
    ngd_view t = {v.p, v.cols, v.rows, v.cs, v.rs};
    return t;
}
static inline ngd_cview ngd_cview_t(ngd_cview v) {
    ngd_cview t = {v.p, v.cols, v.rows, v.cs, v.rs};
    return t;
}
// rows [r0, r0+nr) and cols [c0, c0+nc)
static inline ngd_view ngd_view_sub(ngd_view v, size_t r0, size_t nr, size_t c0, size_t nc) {
    ngd_view s = {v.p + (ptrdiff_t)r0 * v.rs + (ptrdiff_t)c0 * v.cs, nr, nc, v.rs, v.cs};
    return s;
}
static inline ngd_cview ngd_cview_sub(ngd_cview v, size_t r0, size_t nr, size_t c0, size_t nc) {
    ngd_cview s = {v.p + (ptrdiff_t)r0 * v.rs + (ptrdiff_t)c0 * v.cs, nr, nc, v.rs, v.cs};
    return s;
}
#define NGD_AT(v, i, j) ((v).p[(ptrdiff_t)(i) * (v).rs + (ptrdiff_t)(j) * (v).cs])

// C = alpha * A B + beta * C   (A m x k, B k x n, C m x n). With beta == 0, C is not read.
// C must not overlap A or B.
void ngd_gemm(float alpha, ngd_cview A, ngd_cview B, float beta, ngd_view C);
// The plain-loop reference of ngd_gemm (accumulates in double); used by tests and as the
// fallback for views without a unit stride.
void ngd_gemm_ref(float alpha, ngd_cview A, ngd_cview B, float beta, ngd_view C);
// Adds to ngd_gemm_flop_count the FLOPs of products made outside the GEMMs (the shift kernels
// of a convolution's Gram matrix, unfold.c)
void ngd_gemm_flops_add(uint64_t flops);
// bf16 GEMM: ngd_bf16_gemm's contract (ngd.h), arguments asserted, counted in
// ngd_gemm_flop_count. The bf16 arithmetic of libngd (SINGD's bf16 compute) runs here.
void ngd_gemm_bf16(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const uint16_t *A,
                   size_t lda, const uint16_t *B, size_t ldb, float beta, float *C, size_t ldc);
// The same with C bf16 (row-major, ldc) and beta 0: each element the f32 sum rounded as
// ngd_bf16_encode rounds it (no f32 C written and read back for rounding)
void ngd_gemm_bf16_16(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                      const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, uint16_t *C,
                      size_t ldc);
// Which kernels the bf16 GEMM runs (tests, benchmarks), for every thread: oneDNN's matmul
// primitive (AMX where the CPU has it), oneDNN's bf16 GEMM (AVX512-BF16), or f32 copies and
// sgemm (as on a CPU without bf16 kernels: the products of bf16 values are exact in f32, so
// only the order of the f32 sums differs). Unset, NGD_BF16_GEMM=matmul, gemm or convert in
// the environment chooses; without it, the matmul primitive, or the f32 copies where
// ngd_bf16_dot_slow.
typedef enum { NGD_BF16_PATH_MATMUL, NGD_BF16_PATH_GEMM, NGD_BF16_PATH_CONVERT } ngd_bf16_path;
void ngd_gemm_bf16_path(ngd_bf16_path p);
// The path taken where ngd_gemm_bf16_path was never called (read once, at the first product)
ngd_bf16_path ngd_gemm_bf16_path_default(void);
// ngd_bf16_dot_slow (ngd.h): no AMX, and ngd_bf16_dot_ratio (bf16.h) in (0, NGD_BF16_SLOW).
// Measured 0.49 on an Intel Xeon without AMX and about 2 on an AMD Zen 5; the f32 copies
// cost a pass over each operand.
#define NGD_BF16_SLOW 0.75
// C's strictly upper triangle = the transpose of its strictly lower one (C square)
void ngd_mirror_lower(ngd_view C);

// C = beta*C + alpha * A Aᵀ (full square, both triangles written, exactly symmetric); A is
// m x k. Large m computes the lower block rows only (about half the FLOPs of ngd_gemm) and
// mirrors them, so with beta != 0 C must be symmetric on entry.
void ngd_syrk_full(float alpha, ngd_cview A, float beta, ngd_view C);
// The same for bf16 operands, f32 accumulation: C (n x n, row-major, ldc) = beta C +
// alpha op(A) op(A)ᵀ with op(A) = A (n x k, lda) or, ta, the transpose of A (k x n, lda).
void ngd_syrk_bf16(bool ta, size_t n, size_t k, float alpha, const uint16_t *A, size_t lda,
                   float beta, float *C, size_t ldc);
// The same by block rows of about 336, each up to and including its diagonal block: the rest
// of the upper triangle is neither read nor written, for a caller that sums several such
// products and mirrors once (ngd_mirror_lower).
void ngd_syrk_bf16_lower(bool ta, size_t n, size_t k, float alpha, const uint16_t *A, size_t lda,
                         float beta, float *C, size_t ldc);

// v *= s; y += a*x; sum of squares (in double); max |x|
void ngd_view_scale(ngd_view v, float s);     // (result rounded under ngd_bf16_emul, bf16.h)
void ngd_view_scale_f32(ngd_view v, float s); // never rounded
// y = s x element-wise (same shapes, any strides; never rounded)
void ngd_view_scale_copy(ngd_cview x, ngd_view y, float s);
void ngd_view_round_bf16(ngd_view v); // every element rounded to bf16
void ngd_view_copy(ngd_cview src, ngd_view dst);
void ngd_view_zero(ngd_view v);

// ---- LAPACK without allocation: workspace planned once by the caller ----
// These call LAPACK in column-major form, so LAPACKE makes no transposed copy and allocates
// nothing (LAPACKE's row-major entry points would allocate inside). Each returns LAPACK's
// info (0 = ok, > 0 = no convergence, < 0 = bad argument, or -1000 for an int overflow). Each
// *_lwork query returns the workspace in elements (0 if a size does not fit LAPACK's int or the
// query failed); it calls LAPACK with lwork = -1 and allocates nothing either. iwork is LAPACK's
// int (blas.c checks that it is int).

// Symmetric EVD (row-major n x n in, eigenvalues ascending in
// w, eigenvectors in the COLUMNS of a, only the upper triangle of the row-major input is
// read), divide and conquer. *liwork receives the int workspace.
size_t ngd_ssyevd_lwork(size_t n, size_t *liwork);
int ngd_ssyevd_work(size_t n, float *a, size_t lda, float *w, float *work, size_t lwork, int *iwork,
                    size_t liwork);
size_t ngd_dsyevd_lwork(size_t n, size_t *liwork);
int ngd_dsyevd_work(size_t n, double *a, size_t lda, double *w, double *work, size_t lwork,
                    int *iwork, size_t liwork);
// The same with the QR algorithm (dsyev): O(n) workspace instead of O(n^2), slower; a
// different algorithm for retries after a failure of the divide-and-conquer one.
size_t ngd_dsyev_lwork(size_t n);
int ngd_dsyev_work(size_t n, double *a, size_t lda, double *w, double *work, size_t lwork);
// Thin Householder QR of a COLUMN-major m x n matrix (m >= n): element (i, j) at
// a[i + j*lda], lda >= m; that is the n x m row-major buffer holding aᵀ. a is overwritten
// by Q (same layout); r (n x n row-major, upper, zeros below) receives R if not NULL.
// The lwork query counts tau too.
size_t ngd_sqr_thin_cm_lwork(size_t m, size_t n);
int ngd_sqr_thin_cm_work(size_t m, size_t n, float *a, size_t lda, float *r, size_t ldr,
                         float *work, size_t lwork);
// Singular values (descending, in s) and right singular vectors of a COLUMN-major m x n
// matrix (m >= n, layout as above); a is destroyed. v (n x n row-major, ldv >= n) receives
// V: its column j is the j-th right singular vector.
size_t ngd_sgesvd_cm_v_lwork(size_t m, size_t n);
int ngd_sgesvd_cm_v_work(size_t m, size_t n, float *a, size_t lda, float *s, float *v, size_t ldv,
                         float *work, size_t lwork);

// Makes this thread's following BLAS/LAPACK calls single-threaded until ngd_blas_serial_end
// (the OpenMP nthreads ICV of the calling thread, which oneDNN and OpenBLAS follow). For
// small decompositions: OpenBLAS opens a parallel region for every dsymv inside dsytrd even
// at n = 18, which costs more than the work, and a scheduler time slice each when the
// machine is oversubscribed. Inside a parallel region the products then take the same
// kernels as a one-thread run's (the same bits). Returns the setting to restore.
int ngd_blas_serial_begin(void);
void ngd_blas_serial_end(int saved);

// The oneDNN primitive caches of live threads (one per thread that ran a matmul product; a
// thread that ends frees its own): for tests.
size_t ngd_blas_thread_caches(void);

#endif
