/*
 * blas.c — the single door to the GEMM backend (oneDNN's dnnl_sgemm: the fastest f32 GEMM
 * on this machine, docs/design.md) and to LAPACKE (OpenBLAS, OpenMP flavour) for
 * decompositions. Views with a unit stride in either dimension map onto row-major GEMM with
 * transpose flags; anything else takes the plain loop. Int ranges are checked here.
 */
#define _DEFAULT_SOURCE // syscall(2): cpu_has_amx
#include "blas.h"

#include <dnnl.h>
#include <lapacke.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define NGD_HAVE_TR16 1 // AVX-512 code for the tiles of mirror_lower, chosen at run time
#endif

#include "bf16.h"
#include "impl.h"

// A view as (trans flag, leading dimension) of a row-major GEMM operand; 0 if impossible.
static int as_gemm_operand(size_t rows, size_t cols, ptrdiff_t rs, ptrdiff_t cs, char *trans,
                           int64_t *ld) {
    if (cs == 1 && rs >= 1 && (rows <= 1 || (size_t)rs >= cols)) {
        *trans = 'N';
        *ld = (int64_t)NGD_MAX((size_t)rs, NGD_MAX(cols, (size_t)1));
        return 1;
    }
    if (rs == 1 && cs >= 1 && (cols <= 1 || (size_t)cs >= rows)) {
        *trans = 'T';
        *ld = (int64_t)NGD_MAX((size_t)cs, NGD_MAX(rows, (size_t)1));
        return 1;
    }
    return 0;
}

void ngd_gemm_ref(float alpha, ngd_cview A, ngd_cview B, float beta, ngd_view C) {
    for (size_t i = 0; i < C.rows; i++)
        for (size_t j = 0; j < C.cols; j++) {
            double s = 0;
            for (size_t k = 0; k < A.cols; k++)
                s += (double)NGD_AT(A, i, k) * (double)NGD_AT(B, k, j);
            double c = beta == 0.0f ? 0.0 : (double)beta * (double)NGD_AT(C, i, j);
            NGD_AT(C, i, j) = (float)((double)alpha * s + c);
        }
}

// Below this many multiply-adds a plain loop beats a oneDNN call (~10 us of dispatch and a
// thread-pool wake-up per call: block-diagonal factors with small blocks make many such).
#define SMALL_GEMM_MACS 16384

static void gemm_small(float alpha, ngd_cview A, ngd_cview B, ngd_view C) {
    // C already holds beta*C; C += alpha A B, k outer to stream rows of B
    for (size_t i = 0; i < C.rows; i++)
        for (size_t l = 0; l < A.cols; l++) {
            const float a = alpha * NGD_AT(A, i, l);
            if (B.cs == 1 && C.cs == 1) {
                const float *b = B.p + (ptrdiff_t)l * B.rs;
                float *c = C.p + (ptrdiff_t)i * C.rs;
                for (size_t j = 0; j < C.cols; j++)
                    c[j] += a * b[j];
            } else {
                for (size_t j = 0; j < C.cols; j++)
                    NGD_AT(C, i, j) += a * NGD_AT(B, l, j);
            }
        }
}

// oneDNN 2.6 splits a product for omp_get_max_threads() threads and computes only the parts
// of the threads it gets: under OMP_DYNAMIC=true, an OMP_THREAD_LIMIT below the thread count
// or OMP_MAX_ACTIVE_LEVELS=0, a smaller team left parts of C unwritten (half of it, in a
// review's program, 2026-12-05). So a product outside a parallel region runs with dynamic
// adjustment off and at most the thread limit's threads (one where no region may be active),
// the caller's settings restored after. (Several threads of
// the caller sharing a thread limit can still get smaller teams: ngd.h says so.)
typedef struct {
    bool dyn;
    int nthr; // the caller's thread count to restore, 0: unchanged
} team_guard;

static team_guard team_begin(void) {
    team_guard g = {false, 0};
#ifdef _OPENMP
    if (omp_in_parallel()) return g;
    if (omp_get_dynamic()) {
        g.dyn = true;
        omp_set_dynamic(0);
    }
    // (OMP_MAX_ACTIVE_LEVELS=0: every parallel region inactive, a team of one)
    const int mx = omp_get_max_threads();
    const int lim =
        omp_get_active_level() >= omp_get_max_active_levels() ? 1 : omp_get_thread_limit();
    if (lim < mx) {
        g.nthr = mx;
        omp_set_num_threads(lim);
    }
#endif
    return g;
}

static void team_end(team_guard g) {
#ifdef _OPENMP
    if (g.nthr) omp_set_num_threads(g.nthr);
    if (g.dyn) omp_set_dynamic(1);
#else
    NGD_UNUSED(g);
#endif
}

static atomic_uint_fast64_t gemm_flops; // ngd_gemm_flop_count

uint64_t ngd_gemm_flop_count(void) { return (uint64_t)atomic_load(&gemm_flops); }
void ngd_gemm_flops_add(uint64_t flops) {
    atomic_fetch_add_explicit(&gemm_flops, (uint_fast64_t)flops, memory_order_relaxed);
}

static bool matmul(bool f32, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                   const void *A, size_t lda, const void *B, size_t ldb, float beta, float *C,
                   size_t ldc, const float *bias, uint16_t *C16);

// Whether an f32 product goes through the matmul primitive rather than dnnl_sgemm: B
// transposed, A not, 8 rows of C or more, a reduction of 256 or more, and not inside a
// parallel region (there the small per-thread products of attention heads came out 1.6 %
// slower on the vit's step). Measured (oneDNN 2.6, AMD Zen 5, 2 threads, best of 200, us,
// sgemm -> matmul): m x n x k = 128 x 512 x 784 358 -> 294, 128 x 512 x 512 315 -> 204,
// 33 x 512 x 512 188 -> 64, 256 x 4608 x 512 4445 -> 3372, 512 x 785 x 785 2013 -> 1814,
// 8192 x 128 x 512 3559 -> 2964, 1024^3 even; but with k = 128 (8192 x 384 x 128 2208 ->
// 2556; in B-KFAC's step 512 x 785 x 128 337 -> 358), with m = 1 (9 -> 22) and for N-N and
// T-N products mostly slower (64 x 2048 x 288 N-N 223 -> 291). NGD_F32_GEMM=sgemm in the
// environment keeps every product on dnnl_sgemm (side-by-side benchmarks). A thread between
// ngd_blas_serial_begin and _end chooses as a one-thread run does, in a parallel region too
// (the K-FAC family's layers maintained side by side: the same bits as at one thread).
// With a bias row (a layer's forward, ngd_f32_gemm_bias) from a reduction of 32: dnnl_sgemm
// needs C's rows set to the bias first and reads them back, which cost more than the
// primitive's slower kernel at k of 64 and 128 (Intel Xeon 6/207, 2 threads, best of 30, us,
// rows set + sgemm -> matmul: 8192 x 192 x 64 1000-1046 -> 751-845, 8192 x 256 x 64
// 1105-1436 -> 929-1111, 512 x 785 x 128 410-516 -> 326-401, 64 x 128 x 128 19-21 -> 11;
// the forward of chargpt's step 18.0 -> 16.0 ms, the vit's 18.7 -> 15.8).
static _Thread_local int serial_depth; // ngd_blas_serial_begin minus _end on this thread
static _Thread_local bool sgemm_only;  // syrk32_blocks' products: dnnl_sgemm on every team

static bool matmul_f32_pays(char ta, char tb, size_t m, size_t k, bool bias) {
    static _Atomic int off = -1;
    int o = atomic_load_explicit(&off, memory_order_relaxed);
    if (o < 0) {
        const char *e = getenv("NGD_F32_GEMM");
        o = e && !strcmp(e, "sgemm");
        atomic_store_explicit(&off, o, memory_order_relaxed);
    }
#ifdef _OPENMP
    if (omp_in_parallel() && serial_depth == 0) return false;
#endif
    if (sgemm_only) return false;
    return !o && ta == 'N' && tb == 'T' && m >= 8 && k >= (bias ? 32 : 256);
}

static void gemm(float alpha, ngd_cview A, ngd_cview B, float beta, ngd_view C) {
    size_t m = C.rows, n = C.cols, k = A.cols;
    if (k == 0 || alpha == 0.0f) {
        if (beta == 0.0f)
            ngd_view_zero(C);
        else if (beta != 1.0f)
            ngd_view_scale(C, beta);
        return;
    }
    if (m * n * k <= SMALL_GEMM_MACS) {
        if (beta == 0.0f)
            ngd_view_zero(C);
        else if (beta != 1.0f)
            ngd_view_scale(C, beta);
        gemm_small(alpha, A, B, C);
        return;
    }
    char ta, tb, tc;
    int64_t lda, ldb, ldc;
    int ok_c = as_gemm_operand(C.rows, C.cols, C.rs, C.cs, &tc, &ldc);
    if (ok_c && tc == 'T') { // column-major C: compute Cᵀ = Bᵀ Aᵀ in row-major
        gemm(alpha, ngd_cview_t(B), ngd_cview_t(A), beta, ngd_view_t(C));
        return;
    }
    if (!ok_c || !as_gemm_operand(A.rows, A.cols, A.rs, A.cs, &ta, &lda) ||
        !as_gemm_operand(B.rows, B.cols, B.rs, B.cs, &tb, &ldb)) {
        ngd_gemm_ref(alpha, A, B, beta, C);
        return;
    }
    // beta = 0: oneDNN never reads C (NaN there stays out: test_core), so no clearing pass
    if (matmul_f32_pays(ta, tb, m, k, false) &&
        matmul(true, ta == 'T', tb == 'T', m, n, k, alpha, A.p, (size_t)lda, B.p, (size_t)ldb, beta,
               C.p, (size_t)ldc, NULL, NULL))
        return;
    dnnl_status_t st = dnnl_sgemm(ta, tb, (dnnl_dim_t)m, (dnnl_dim_t)n, (dnnl_dim_t)k, alpha, A.p,
                                  lda, B.p, ldb, beta, C.p, ldc);
    if (st != dnnl_success) ngd_gemm_ref(alpha, A, B, beta, C);
}

void ngd_gemm(float alpha, ngd_cview A, ngd_cview B, float beta, ngd_view C) {
    NGD_ASSERT(A.rows == C.rows && B.cols == C.cols && A.cols == B.rows);
    if (C.rows == 0 || C.cols == 0) return;
    atomic_fetch_add_explicit(&gemm_flops, 2 * (uint_fast64_t)C.rows * C.cols * A.cols,
                              memory_order_relaxed);
    const team_guard g = team_begin();
    gemm(alpha, A, B, beta, C);
    team_end(g);
    if (ngd_bf16_emul()) ngd_view_round_bf16(C); // (one test per product, not per element)
}

// Exported by oneDNN 2.6 but not declared in its header (DEPS.md): dnnl_sgemm's contract
// with bf16 A and B.
extern dnnl_status_t dnnl_gemm_bf16bf16f32(char transa, char transb, dnnl_dim_t M, dnnl_dim_t N,
                                           dnnl_dim_t K, float alpha, const uint16_t *A,
                                           dnnl_dim_t lda, const uint16_t *B, dnnl_dim_t ldb,
                                           float beta, float *C, dnnl_dim_t ldc);

// ---- products through oneDNN's matmul primitive ----
// dnnl_gemm_bf16bf16f32 runs AVX512-BF16 kernels only; the matmul primitive also takes AMX
// tiles (brgemm) where the CPU has them (docs/benchmarks.md: 1.1-1.4x per product, SINGD's
// bf16 mlp step 1.4x at one thread). In f32 its brgemm kernels beat dnnl_sgemm on products
// with a transposed B and few rows (matmul_f32_pays). A primitive is made for one shape (and
// type), so each thread keeps
// those of its last MM_SLOTS shapes (least recently used goes; vgg16bn's bf16 step has 24),
// each with its memory objects, and one scratchpad for all of them (a thread runs one at a
// time; no scratchpad is shared between threads). A call inside an OpenMP parallel region
// runs on the calling thread alone, and oneDNN splits a product for the thread count it sees
// when the primitive is made, so both are part of the key. The caches stay until the
// process ends, reachable from mm_all.
#define MM_SLOTS 64

typedef struct {
    bool f32, ta, tb, inpar; // f32: A and B float32, else bf16
    bool bias;               // a bias row (n floats) added to every row of C
    bool c16;                // C bf16 (rounded from the f32 sums; beta 0), else float32
    int nthr;                // OpenMP's thread count when made (oneDNN plans its split for it)
    size_t m, n, k, lda, ldb, ldc;
    float alpha, beta;
    dnnl_primitive_t p;
    dnnl_memory_t a, b, c, sp, bm; // sp: the thread's scratchpad, as this primitive's; bm the bias
    size_t sp_bytes;
    uint64_t last; // 0: empty
} mm_slot;

typedef struct mm_cache {
    dnnl_stream_t strm;
    void *scratch; // the largest scratchpad of the slots
    size_t scratch_bytes;
    float *conv; // the bf16 convert path's f32 operands (convert_buf), conv_n floats
    size_t conv_n;
    mm_slot s[MM_SLOTS];
    uint64_t tick;
    struct mm_cache *next;
} mm_cache;

static dnnl_engine_t mm_engine;
static pthread_once_t mm_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t mm_lock = PTHREAD_MUTEX_INITIALIZER;
static mm_cache *mm_all; // every thread's cache
static _Thread_local mm_cache *mm_mine;
static _Atomic int bf16_path = -1; // ngd_gemm_bf16_path; -1: not chosen yet

static void mm_thread_exit(void *p);
static pthread_key_t mm_key; // its destructor frees an exiting thread's cache
static bool mm_key_ok;

static void mm_init(void) {
    if (dnnl_engine_create(&mm_engine, dnnl_cpu, 0) != dnnl_success) mm_engine = NULL;
    mm_key_ok = pthread_key_create(&mm_key, mm_thread_exit) == 0;
}

static void mm_slot_free(mm_slot *e) {
    dnnl_primitive_destroy(e->p); // (each takes NULL)
    dnnl_memory_destroy(e->a), dnnl_memory_destroy(e->b), dnnl_memory_destroy(e->c);
    dnnl_memory_destroy(e->sp), dnnl_memory_destroy(e->bm);
    memset(e, 0, sizeof *e);
}

// The primitive of e's key, with its memory objects; false (e cleared) if oneDNN has none
static bool mm_make(mm_slot *e) {
    dnnl_memory_desc_t da, db, dc, dbias;
    const dnnl_dim_t m = (dnnl_dim_t)e->m, n = (dnnl_dim_t)e->n, k = (dnnl_dim_t)e->k;
    const dnnl_dim_t lda = (dnnl_dim_t)e->lda, ldb = (dnnl_dim_t)e->ldb;
    const dnnl_dims_t sa = {m, k}, sb = {k, n}, sc = {m, n}, tc = {(dnnl_dim_t)e->ldc, 1},
                      sbias = {1, n}, tbias = {n, 1};
    const dnnl_dims_t ta = {e->ta ? 1 : lda, e->ta ? lda : 1},
                      tb = {e->tb ? 1 : ldb, e->tb ? ldb : 1};
    dnnl_matmul_desc_t md;
    dnnl_primitive_attr_t at = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    bool ok =
        dnnl_memory_desc_init_by_strides(&da, 2, sa, e->f32 ? dnnl_f32 : dnnl_bf16, ta) ==
            dnnl_success &&
        dnnl_memory_desc_init_by_strides(&db, 2, sb, e->f32 ? dnnl_f32 : dnnl_bf16, tb) ==
            dnnl_success &&
        dnnl_memory_desc_init_by_strides(&dc, 2, sc, e->c16 ? dnnl_bf16 : dnnl_f32, tc) ==
            dnnl_success &&
        dnnl_memory_desc_init_by_strides(&dbias, 2, sbias, dnnl_f32, tbias) == dnnl_success &&
        dnnl_matmul_desc_init(&md, &da, &db, e->bias ? &dbias : NULL, &dc) == dnnl_success &&
        dnnl_primitive_attr_create(&at) == dnnl_success &&
        dnnl_primitive_attr_set_scratchpad_mode(at, dnnl_scratchpad_mode_user) == dnnl_success;
    // C = alpha·AB + beta·C: alpha an output scale, beta a sum post-op (absent: C not read)
    if (ok && e->alpha != 1.0f)
        ok = dnnl_primitive_attr_set_output_scales(at, 1, 0, &e->alpha) == dnnl_success;
    if (ok && e->beta != 0.0f)
        ok = dnnl_post_ops_create(&po) == dnnl_success &&
             dnnl_post_ops_append_sum(po, e->beta) == dnnl_success &&
             dnnl_primitive_attr_set_post_ops(at, po) == dnnl_success;
    ok = ok && dnnl_primitive_desc_create(&pd, &md, at, mm_engine, NULL) == dnnl_success;
    const dnnl_memory_desc_t *spd =
        ok ? dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0) : NULL;
    ok = ok && spd && dnnl_primitive_create(&e->p, pd) == dnnl_success &&
         dnnl_memory_create(&e->sp, spd, mm_engine, DNNL_MEMORY_NONE) == dnnl_success &&
         dnnl_memory_create(&e->a, &da, mm_engine, DNNL_MEMORY_NONE) == dnnl_success &&
         dnnl_memory_create(&e->b, &db, mm_engine, DNNL_MEMORY_NONE) == dnnl_success &&
         dnnl_memory_create(&e->c, &dc, mm_engine, DNNL_MEMORY_NONE) == dnnl_success &&
         (!e->bias ||
          dnnl_memory_create(&e->bm, &dbias, mm_engine, DNNL_MEMORY_NONE) == dnnl_success);
    if (ok) e->sp_bytes = dnnl_memory_desc_get_size(spd);
    if (!ok) mm_slot_free(e);
    dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(at);
    dnnl_primitive_desc_destroy(pd);
    return ok;
}

// A thread that ends (a client's worker pthread) takes its cache with it: unlinked and freed
// (the primitives, memory objects, stream and scratchpad), so that threads made and joined
// one after another do not grow the process. Caches of threads that never end (the OpenMP
// workers, the main thread) stay reachable from mm_all until the process ends.
static void mm_thread_exit(void *p) {
    mm_cache *c = p;
    pthread_mutex_lock(&mm_lock);
    for (mm_cache **q = &mm_all; *q; q = &(*q)->next)
        if (*q == c) {
            *q = c->next;
            break;
        }
    pthread_mutex_unlock(&mm_lock);
    for (int i = 0; i < MM_SLOTS; i++)
        mm_slot_free(&c->s[i]);
    dnnl_stream_destroy(c->strm);
    free(c->scratch);
    free(c->conv);
    free(c);
    mm_mine = NULL;
}

size_t ngd_blas_thread_caches(void) {
    size_t n = 0;
    pthread_mutex_lock(&mm_lock);
    for (const mm_cache *c = mm_all; c; c = c->next)
        n++;
    pthread_mutex_unlock(&mm_lock);
    return n;
}

// A client that unloads libngd (dlclose) and then ends a thread would call a destructor that
// is no longer mapped: the key goes with the library (the caches of live threads are then
// left, as before the key existed).
__attribute__((destructor)) static void mm_unload(void) {
    if (mm_key_ok) pthread_key_delete(mm_key);
    mm_key_ok = false;
}

static mm_cache *mm_thread_cache(void) {
    if (mm_mine) return mm_mine;
    pthread_once(&mm_once, mm_init);
    mm_cache *c = mm_engine ? calloc(1, sizeof *c) : NULL;
    if (!c) return NULL;
    if (dnnl_stream_create(&c->strm, mm_engine, dnnl_stream_default_flags) != dnnl_success) {
        free(c);
        return NULL;
    }
    pthread_mutex_lock(&mm_lock);
    c->next = mm_all, mm_all = c;
    pthread_mutex_unlock(&mm_lock);
    if (mm_key_ok) pthread_setspecific(mm_key, c);
    return mm_mine = c;
}

// C = alpha op(A) op(B) + beta C (+ the row bias, n floats, in every row: alpha 1, beta 0 then)
// by this thread's primitive of the shape, A and B float32 (f32) or bf16; false: not done.
// C16 given (C unused, beta 0): the result rounded to bf16 there instead.
static bool matmul(bool f32, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                   const void *A, size_t lda, const void *B, size_t ldb, float beta, float *C,
                   size_t ldc, const float *bias, uint16_t *C16) {
    mm_cache *c = mm_thread_cache();
    if (!c) return false;
#ifdef _OPENMP
    const bool inpar = omp_in_parallel();
    const int nthr = omp_get_max_threads();
#else
    const bool inpar = false;
    const int nthr = 1;
#endif
    mm_slot *e = NULL, *lru = &c->s[0];
    for (int i = 0; i < MM_SLOTS && !e; i++) {
        mm_slot *s = &c->s[i];
        if (s->last && s->f32 == f32 && s->ta == ta && s->tb == tb && s->inpar == inpar &&
            s->bias == (bias != NULL) && s->c16 == (C16 != NULL) && s->nthr == nthr && s->m == m &&
            s->n == n && s->k == k && s->lda == lda && s->ldb == ldb && s->ldc == ldc &&
            s->alpha == alpha && s->beta == beta)
            e = s;
        else if (s->last < lru->last)
            lru = s;
    }
    if (!e) {
        mm_slot_free(lru);
        *lru = (mm_slot){.f32 = f32,
                         .ta = ta,
                         .tb = tb,
                         .inpar = inpar,
                         .nthr = nthr,
                         .m = m,
                         .n = n,
                         .k = k,
                         .lda = lda,
                         .ldb = ldb,
                         .ldc = ldc,
                         .alpha = alpha,
                         .beta = beta,
                         .bias = bias != NULL,
                         .c16 = C16 != NULL};
        if (!mm_make(lru)) return false;
        e = lru;
        if (e->sp_bytes > c->scratch_bytes) {
            void *p = aligned_alloc(64, (e->sp_bytes + 63) / 64 * 64);
            if (!p) {
                mm_slot_free(e);
                return false;
            }
            free(c->scratch);
            c->scratch = p, c->scratch_bytes = e->sp_bytes;
        }
    }
    e->last = ++c->tick;
    const dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, e->a},
                                     {DNNL_ARG_WEIGHTS, e->b},
                                     {DNNL_ARG_DST, e->c},
                                     {DNNL_ARG_SCRATCHPAD, e->sp},
                                     {DNNL_ARG_BIAS, e->bm}};
    return (!bias || dnnl_memory_set_data_handle(e->bm, (void *)(uintptr_t)bias) == dnnl_success) &&
           dnnl_memory_set_data_handle(e->a, (void *)(uintptr_t)A) == dnnl_success &&
           dnnl_memory_set_data_handle(e->b, (void *)(uintptr_t)B) == dnnl_success &&
           dnnl_memory_set_data_handle(e->c, C16 ? (void *)C16 : (void *)C) == dnnl_success &&
           dnnl_memory_set_data_handle(e->sp, c->scratch) == dnnl_success &&
           dnnl_primitive_execute(e->p, c->strm, bias ? 5 : 4, args) == dnnl_success;
}

// Whether oneDNN can take the tile unit: AMX-BF16 and AMX-TILE, and (Linux 5.16+) the tile
// data state granted to this process, which oneDNN asks for itself (else it runs AVX512-BF16,
// which ngd_bf16_dot_slow must then judge). Asked once.
static bool cpu_has_amx(void) {
    static _Atomic int state = -1;
    int s = atomic_load_explicit(&state, memory_order_relaxed);
    if (s < 0) {
        s = 0;
#if defined(__x86_64__) && defined(__GNUC__)
        unsigned a, b, c, d;
        s = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 22)) && (d & (1u << 24));
#if defined(__linux__)
        s = s && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                         18 /* XFEATURE_XTILEDATA */) == 0;
#endif
#endif
        atomic_store_explicit(&state, s, memory_order_relaxed);
    }
    return s == 1;
}

bool ngd_bf16_dot_slow(double *ratio) {
    const double r = ngd_bf16_dot_ratio();
    if (ratio) *ratio = r;
    return r > 0.0 && r < NGD_BF16_SLOW && !cpu_has_amx();
}

void ngd_gemm_bf16_path(ngd_bf16_path p) { atomic_store(&bf16_path, (int)p); }

// The path in use: set by ngd_gemm_bf16_path, else NGD_BF16_GEMM=matmul|gemm|convert from the
// environment (side-by-side benchmarks), else the matmul primitive, or f32 copies and sgemm
// where the CPU's bf16 dot products are slower than its f32 FMAs (ngd_bf16_dot_slow). At 2
// threads on the Xeon of ngd_bf16_dot_ratio, GFLOP/s, the matmul primitive -> f32 copies
// (sgemm on the same f32 values): 128 x 512 x 784 with B transposed 163 -> 239 (294); 785³
// A B 150 -> 250 (302), Aᵀ A 160 -> 250 (283); 785 x 785 x 128 Aᵀ A 164 -> 248 (297). The
// copies made by one thread, row by row, into a fresh allocation gave 163, 193 and 180.
ngd_bf16_path ngd_gemm_bf16_path_default(void) {
    const char *e = getenv("NGD_BF16_GEMM");
    return e && !strcmp(e, "gemm")      ? NGD_BF16_PATH_GEMM
           : e && !strcmp(e, "convert") ? NGD_BF16_PATH_CONVERT
           : e && !strcmp(e, "matmul")  ? NGD_BF16_PATH_MATMUL
           : ngd_bf16_dot_slow(NULL)    ? NGD_BF16_PATH_CONVERT
                                        : NGD_BF16_PATH_MATMUL;
}

static ngd_bf16_path bf16_path_now(void) {
    int p = atomic_load_explicit(&bf16_path, memory_order_relaxed);
    if (p < 0) {
        p = (int)ngd_gemm_bf16_path_default();
        int want = -1;
        atomic_compare_exchange_strong(&bf16_path, &want, p);
    }
    return (ngd_bf16_path)p;
}

// The convert path's f32 copies of op(A) and op(B), n floats: this thread's buffer, kept
// between calls (its cache's conv) up to CONVERT_KEEP floats, or a fresh one that *own says to
// free. Larger products go by panels of the reduction that fit it (convert_panel): a
// 4609-wide SINGD factor's products would otherwise keep 170 MB per thread, and copies made
// per product cost the cnn's bf16 SINGD step (4097-wide fc1: preconditioning 47 -> 72 ms,
// update 85 -> 95, alternated on the Xeon without AMX: each 134 MB mapped afresh).
#define CONVERT_KEEP  ((size_t)16 << 20)
#define CONVERT_PANEL 256 // the smallest reduction panel taken (below: one copy per product)

static float *convert_buf(size_t n, bool *own) {
    mm_cache *c = n <= CONVERT_KEEP ? mm_thread_cache() : NULL;
    *own = false;
    if (c && c->conv_n < n) {
        float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
        if (p) free(c->conv), c->conv = p, c->conv_n = n;
    }
    if (c && c->conv_n >= n) return c->conv;
    *own = true;
    return ngd_malloc(n, sizeof(float));
}

// f (rows x cols, row-major, dense) = the bf16 operand X (rows x cols stored with leading
// dimension ld), decoded: one pass over the threads
static void decode_op(const uint16_t *X, size_t rows, size_t cols, size_t ld, float *f) {
    if (ld == cols) {
        ngd_bf16_decode(X, f, rows * cols);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (rows * cols > NGD_PAR_MIN && !omp_in_parallel())
#endif
    for (size_t i = 0; i < rows; i++)
        ngd_bf16_decode(X + i * ld, f + i * cols, cols);
}

// Two threads, no AMX: a bf16 product of 64 rows or more and 2^21 multiply-adds or more goes
// to the threads as two halves of C's rows, each a one-thread matmul, rather than as one
// matmul that oneDNN splits: oneDNN 2.6's AVX512-BF16 kernels ran at 1.3-1.4x their one-thread
// speed on two threads, the halves at 1.6-1.9x (AMD Zen 5, medians of 300 calls, us, oneDNN's
// split -> halves: 128 x 512 x 784 with B transposed 203 -> 156, 785 x 785 x 785 Aᵀ A 1957 ->
// 1442, A Aᵀ 1899 -> 1462, A B 1678 -> 1473, 785 x 785 x 128 Aᵀ A 348 -> 249, 785 x 128 x 785
// with B transposed 265 -> 230; docs/benchmarks.md, twenty-second session). With AMX oneDNN's
// own split is kept (not measured here), as at other thread counts. Every row of C is its own
// sums, in the order of the one-thread kernel for its half's shape: with A transposed that
// order can differ from the whole product's (AᵀA then symmetric to within float32 rounding,
// not exactly; with A as it is, the same bits as one thread at the shapes tried).
// NGD_BF16_SPLIT=0 in the environment turns it off (side-by-side runs).
#ifdef _OPENMP
#define SPLIT16_ROWS 64
#define SPLIT16_MACS ((size_t)1 << 21)

// Set around the public ngd_bf16_gemm: the engine's Linear layers (and clients) keep
// oneDNN's own split. In the step the halves lost there what they won in isolation (mlp SGD
// bf16, 8 alternated rounds: 1.15 -> 1.28 ms a step): each half reads all of W, which the
// other thread rounded, where oneDNN's split reads the half it rounded itself.
static _Thread_local bool public_call;

static bool split_rows(size_t m, size_t n, size_t k) {
    static _Atomic int on = -1;
    int o = atomic_load_explicit(&on, memory_order_relaxed);
    if (o < 0) {
        const char *e = getenv("NGD_BF16_SPLIT");
        o = !(e && !strcmp(e, "0")) && !cpu_has_amx();
        atomic_store_explicit(&on, o, memory_order_relaxed);
    }
    return o && !public_call && m >= SPLIT16_ROWS && m * n * k >= SPLIT16_MACS &&
           !omp_in_parallel() && serial_depth == 0 && omp_get_max_threads() == 2;
}

// The first half's rows: half of m rounded up to 16
static size_t split_at(size_t m) { return (m / 2 + 15) / 16 * 16; }
#endif

// Whether a bf16 product on the matmul primitive computes its last column apart: oneDNN 2.6
// ran some products whose n leaves 1 by 32 far slower than their first n - 1 columns, others
// not, and the column apart costs a call (2 threads, us, one product -> the column apart,
// B as it is: 128 x 4097 x 4097 16767 -> 9009, 512 x 4609 x 4609 44231 -> 34470, 512 x 2305
// x 2305 11311 -> 9552, 256 x 1153 x 1153 1336 -> 1162, 128 x 1025 x 1025 519 -> 435, 128 x 513
// x 513 129 -> 114; but 512 x 1025 x 1025 1680 -> 2986, 64 x 257 x 257 21 -> 31, 192 x 65 x 65
// 13 -> 52, 32 x 289 x 289 22 -> 55, and 128 x 577 x 577 even)
static bool split_col(size_t m, size_t n) {
    return n % 32 == 1 && (n >= 1153 || (n >= 513 && m <= 128));
}

// ngd_bf16_gemm's and ngd_gemm_bf16_16's work (not counted): C (f32) = alpha op(A) op(B) +
// beta C, or, C16 given (C NULL, beta 0), C16 = that product rounded to bf16. Small products
// by a plain loop, then the matmul primitive, oneDNN's bf16 GEMM, or (no bf16 kernel for this
// CPU) f32 copies of op(A), op(B) and sgemm; element by element if those copies cannot be
// allocated. A bf16 C16 comes from the matmul primitive (its f32 sums rounded as
// ngd_bf16_encode rounds, in its store), or from any other path's f32 result and
// ngd_bf16_encode: the same bits either way.
static void gemm16(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const uint16_t *A,
                   size_t lda, const uint16_t *B, size_t ldb, float beta, float *C, uint16_t *C16,
                   size_t ldc) {
    const bool small = k == 0 || alpha == 0.0f || m * n * k <= SMALL_GEMM_MACS;
    const bool mm = !small && bf16_path_now() == NGD_BF16_PATH_MATMUL;
#define SUB_C(i, j) (C ? C + (i)*ldc + (j) : NULL), (C16 ? C16 + (i)*ldc + (j) : NULL)
    // oneDNN 2.6's matmul runs a product whose m leaves 1 by 32 at a third of its speed (m =
    // 513 by 513 x 513, 2 threads: 110-220 GFLOP/s; its first 512 rows alone 370-640; other
    // remainders measured 4-17 made no such difference): SINGD's 513- and 4097-wide dense
    // factors and their syrk panels. The last row goes apart (each row of C is its own sums).
    if (mm && m > 32 && m % 32 == 1) {
        gemm16(ta, tb, m - 1, n, k, alpha, A, lda, B, ldb, beta, SUB_C(0, 0), ldc);
        gemm16(ta, tb, 1, n, k, alpha, ta ? A + (m - 1) : A + (m - 1) * lda, lda, B, ldb, beta,
               SUB_C(m - 1, 0), ldc);
        return;
    }
    // So, at some shapes, does one whose n leaves 1 by 32: the last column goes apart (each
    // element its own sums) where that measured faster (split_col)
    if (mm && split_col(m, n)) {
        gemm16(ta, tb, m, n - 1, k, alpha, A, lda, B, ldb, beta, SUB_C(0, 0), ldc);
        gemm16(ta, tb, m, 1, k, alpha, A, lda, tb ? B + (n - 1) * ldb : B + (n - 1), ldb, beta,
               SUB_C(0, n - 1), ldc);
        return;
    }
    // oneDNN 2.6's AMX matmul kernel executes an illegal instruction (SIGILL) for some shapes
    // whose k leaves 31 by 32 (43x77 by 63, 70x260 by 2047, mostly at one thread; found by
    // test_bf16's cache test). Scanned here: k 1-300 on 36 (m, n) pairs and every transpose,
    // k 1-160 on 90 more, up to 2100 on three: only k % 32 == 31 failed. Those k take the
    // AVX512-BF16 GEMM.
    const bool prim = mm && k % 32 != 31;
#ifdef _OPENMP
    if (prim && split_rows(m, n, k)) {
        // each thread its half of C's rows, by a one-thread product (the same path below)
        const size_t h = split_at(m);
#pragma omp parallel num_threads(2)
        for (int p = omp_get_thread_num(); p < 2; p += omp_get_num_threads()) { // (any team)
            const size_t r0 = p ? h : 0, nr = p ? m - h : h;
            gemm16(ta, tb, nr, n, k, alpha, ta ? A + r0 : A + r0 * lda, lda, B, ldb, beta,
                   SUB_C(r0, 0), ldc);
        }
        return;
    }
#endif
#undef SUB_C
    if (prim && matmul(false, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, NULL, C16))
        return;
    if (C16) { // through f32
        float *f = ngd_malloc(m * n, sizeof(float));
        if (f) {
            gemm16(ta, tb, m, n, k, alpha, A, lda, B, ldb, 0.0f, f, NULL, n);
            if (ldc == n)
                ngd_bf16_encode(f, C16, m * n);
            else
                for (size_t i = 0; i < m; i++)
                    ngd_bf16_encode(f + i * n, C16 + i * ldc, n);
            ngd_free(f);
            return;
        }
        for (size_t i = 0; i < m; i++) // out of memory: element by element
            for (size_t j = 0; j < n; j++) {
                float c;
                gemm16(ta, tb, 1, 1, k, alpha, ta ? A + i : A + i * lda, lda,
                       tb ? B + j * ldb : B + j, ldb, 0.0f, &c, NULL, 1);
                C16[i * ldc + j] = ngd_f32_to_bf16_vec(c);
            }
        return;
    }
    ngd_view Cv = ngd_view_rm(C, m, n, ldc);
    if (small) { // the plain loop (products of bf16 values are exact in f32)
        if (beta == 0.0f)
            ngd_view_zero(Cv);
        else if (beta != 1.0f)
            ngd_view_scale(Cv, beta);
        for (size_t i = 0; i < m && alpha != 0.0f; i++)
            for (size_t p = 0; p < k; p++) {
                const float a = alpha * ngd_bf16_to_f32(ta ? A[p * lda + i] : A[i * lda + p]);
                for (size_t j = 0; j < n; j++)
                    C[i * ldc + j] += a * ngd_bf16_to_f32(tb ? B[j * ldb + p] : B[p * ldb + j]);
            }
        return;
    }
    // beta = 0 never reads C (tested with NaN in C, test_bf16)
    if (bf16_path_now() != NGD_BF16_PATH_CONVERT &&
        dnnl_gemm_bf16bf16f32(ta ? 'T' : 'N', tb ? 'T' : 'N', (dnnl_dim_t)m, (dnnl_dim_t)n,
                              (dnnl_dim_t)k, alpha, A, (dnnl_dim_t)lda, B, (dnnl_dim_t)ldb, beta, C,
                              (dnnl_dim_t)ldc) == dnnl_success)
        return;
    // by panels of kb of the k products where the copies of the whole would not fit the kept
    // buffer (C = alpha op(A)[:, panel] op(B)[panel, :] + beta C, then + 1 C for the rest)
    size_t kb = k;
    if ((m + n) * k > CONVERT_KEEP && CONVERT_KEEP / (m + n) >= CONVERT_PANEL) {
        const size_t np = (k * (m + n) + CONVERT_KEEP - 1) / CONVERT_KEEP; // panels
        kb = ((k + np - 1) / np + 15) / 16 * 16;
        // (rounded up, the panel could pass the kept buffer: a fresh one every call)
        if ((m + n) * kb > CONVERT_KEEP) kb = CONVERT_KEEP / (m + n) / 16 * 16;
    }
    bool own;
    float *fa = convert_buf((m + n) * kb, &own);
    if (fa) {
        // (under the thread limit's team: a caller's inactive region, ngd_syrk_bf16's
        // blocks under OMP_THREAD_LIMIT=1, still sees --threads as its thread count)
        const team_guard g = team_begin();
        for (size_t p0 = 0; p0 < k; p0 += kb) {
            const size_t kp = NGD_MIN(kb, k - p0);
            const size_t ar = ta ? kp : m, ac = ta ? m : kp, br = tb ? n : kp, bc = tb ? kp : n;
            float *fb = fa + ar * ac;
            decode_op(ta ? A + p0 * lda : A + p0, ar, ac, lda, fa);
            decode_op(tb ? B + p0 : B + p0 * ldb, br, bc, ldb, fb);
            const ngd_cview Av = ngd_cview_rm(fa, ar, ac, ac), Bv = ngd_cview_rm(fb, br, bc, bc);
            gemm(alpha, ta ? ngd_cview_t(Av) : Av, tb ? ngd_cview_t(Bv) : Bv, p0 == 0 ? beta : 1.0f,
                 Cv);
        }
        team_end(g);
    } else { // out of memory
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < n; j++) {
                double s = 0;
                for (size_t p = 0; p < k; p++)
                    s += (double)ngd_bf16_to_f32(ta ? A[p * lda + i] : A[i * lda + p]) *
                         (double)ngd_bf16_to_f32(tb ? B[j * ldb + p] : B[p * ldb + j]);
                const double c = beta == 0.0f ? 0.0 : (double)beta * (double)C[i * ldc + j];
                C[i * ldc + j] = (float)((double)alpha * s + c);
            }
    }
    if (own) ngd_free(fa);
}

static void gemm_bf16(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                      const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, float beta,
                      float *C, size_t ldc) {
    gemm16(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, NULL, ldc);
}

void ngd_gemm_bf16(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const uint16_t *A,
                   size_t lda, const uint16_t *B, size_t ldb, float beta, float *C, size_t ldc) {
    if (m == 0 || n == 0) return;
    NGD_ASSERT(lda >= (ta ? m : k) && ldb >= (tb ? k : n) && ldc >= n);
    atomic_fetch_add_explicit(&gemm_flops, 2 * (uint_fast64_t)m * n * k, memory_order_relaxed);
    const team_guard g = team_begin();
    gemm_bf16(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    team_end(g);
}

void ngd_gemm_bf16_16(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                      const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, uint16_t *C,
                      size_t ldc) {
    if (m == 0 || n == 0) return;
    NGD_ASSERT(lda >= (ta ? m : k) && ldb >= (tb ? k : n) && ldc >= n);
    atomic_fetch_add_explicit(&gemm_flops, 2 * (uint_fast64_t)m * n * k, memory_order_relaxed);
    const team_guard g = team_begin();
    gemm16(ta, tb, m, n, k, alpha, A, lda, B, ldb, 0.0f, NULL, C, ldc);
    team_end(g);
}

// The public GEMMs' argument checks (ngd.h): true when the arguments are acceptable
static bool gemm_args_ok(bool ta, bool tb, size_t m, size_t n, size_t k, const void *A, size_t lda,
                         const void *B, size_t ldb, const float *C, size_t ldc) {
    return C && (!k || (A && B)) && lda >= (ta ? m : k) && ldb >= (tb ? k : n) && ldc >= n &&
           m <= (size_t)INT64_MAX && n <= (size_t)INT64_MAX && k <= (size_t)INT64_MAX &&
           lda <= (size_t)INT64_MAX && ldb <= (size_t)INT64_MAX && ldc <= (size_t)INT64_MAX;
}

// ---- products with a bias row (ngd.h: a layer's forward, y = x Wᵀ + b) ----
// The matmul primitive adds the bias in its kernel, so C is written once and never read:
// without it the rows of C were set to the bias and the product added onto them (a pass over
// C, and the product reading C back: 8192 x 256 x 64 in bf16 571 -> 423 us with beta 0 at 2
// threads). Where the primitive is not used (f32 products that dnnl_sgemm runs faster, the
// small ones, a CPU without bf16 kernels) it is done that way still. The primitive adds the
// bias at a point of its sums of its own (at k = 784 a third of the elements differ from the
// sum post-op's in the last bits; test_bf16): equal to float32 rounding.
static void rows_set(float *C, size_t m, size_t n, size_t ldc, const float *bias) {
#pragma omp parallel for schedule(static) if (m * n > NGD_PAR_MIN)
    for (size_t i = 0; i < m; i++)
        memcpy(C + i * ldc, bias, n * sizeof(float));
}

// The public bf16 GEMM, with the bias row or without (bias NULL): the layers' and clients'
// products keep oneDNN's own split over the threads (public_call)
static ngd_status bf16_public(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                              const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb,
                              float beta, float *C, size_t ldc, const float *bias) {
    if (m == 0 || n == 0) return NGD_OK;
    if (!gemm_args_ok(ta, tb, m, n, k, A, lda, B, ldb, C, ldc)) return NGD_ERR_ARG;
    const team_guard g = team_begin();
#ifdef _OPENMP
    public_call = true;
#endif
    // (with a bias: the shapes gemm_bf16 sends elsewhere than the matmul primitive set the
    // rows and go its way)
    const bool mm = bias && bf16_path_now() == NGD_BF16_PATH_MATMUL && k % 32 != 31 &&
                    m * n * k > SMALL_GEMM_MACS && !(m > 32 && m % 32 == 1) && !split_col(m, n);
    if (!(mm && matmul(false, ta, tb, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, ldc, bias, NULL))) {
        if (bias) rows_set(C, m, n, ldc, bias);
        gemm_bf16(ta, tb, m, n, k, alpha, A, lda, B, ldb, bias ? 1.0f : beta, C, ldc);
    }
#ifdef _OPENMP
    public_call = false;
#endif
    team_end(g);
    return NGD_OK;
}

ngd_status ngd_bf16_gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                         const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, float beta,
                         float *C, size_t ldc) {
    return bf16_public(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
}

ngd_status ngd_bf16_gemm_bias(bool ta, bool tb, size_t m, size_t n, size_t k, const uint16_t *A,
                              size_t lda, const uint16_t *B, size_t ldb, const float *bias,
                              float *C, size_t ldc) {
    return bf16_public(ta, tb, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, ldc, bias);
}

ngd_status ngd_f32_gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float *A,
                        size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc) {
    if (m == 0 || n == 0) return NGD_OK;
    if (!gemm_args_ok(ta, tb, m, n, k, A, lda, B, ldb, C, ldc)) return NGD_ERR_ARG;
    const ngd_cview Av = ngd_cview_rm(A, ta ? k : m, ta ? m : k, lda);
    const ngd_cview Bv = ngd_cview_rm(B, tb ? n : k, tb ? k : n, ldb);
    const team_guard g = team_begin();
    gemm(alpha, ta ? ngd_cview_t(Av) : Av, tb ? ngd_cview_t(Bv) : Bv, beta,
         ngd_view_rm(C, m, n, ldc));
    team_end(g);
    return NGD_OK;
}

ngd_status ngd_f32_gemm_bias(bool ta, bool tb, size_t m, size_t n, size_t k, const float *A,
                             size_t lda, const float *B, size_t ldb, const float *bias, float *C,
                             size_t ldc) {
    if (!bias) return ngd_f32_gemm(ta, tb, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
    if (m == 0 || n == 0) return NGD_OK;
    if (!gemm_args_ok(ta, tb, m, n, k, A, lda, B, ldb, C, ldc)) return NGD_ERR_ARG;
    const team_guard g = team_begin();
    if (!(k > 0 && m * n * k > SMALL_GEMM_MACS &&
          matmul_f32_pays(ta ? 'T' : 'N', tb ? 'T' : 'N', m, k, true) &&
          matmul(true, ta, tb, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, ldc, bias, NULL))) {
        rows_set(C, m, n, ldc, bias);
        const ngd_cview Av = ngd_cview_rm(A, ta ? k : m, ta ? m : k, lda);
        const ngd_cview Bv = ngd_cview_rm(B, tb ? n : k, tb ? k : n, ldb);
        gemm(1.0f, ta ? ngd_cview_t(Av) : Av, tb ? ngd_cview_t(Bv) : Bv, 1.0f,
             ngd_view_rm(C, m, n, ldc));
    }
    team_end(g);
    return NGD_OK;
}

// Below SYRK_MIN rows (or for A with fewer than half as many columns as rows) the whole square
// is one GEMM; above, block rows of about SYRK_PANEL. At 2 threads, against one GEMM: d x d
// squares (K Kᵀ, KᵀK) 1.1-1.25x faster at d = 513-1024 and 1.4x at d = 4097; A of 128-256
// columns 0.35-1.0x below d = 1153 (the products are small or bound by writing C).
#define SYRK_MIN   384
#define SYRK_PANEL 320
// Long products (k at least SYRK_LONG_K·m: a convolution's Gram matrix over N·L rows) go in
// block rows of about SYRK_LONG_PANEL from SYRK_LONG_MIN rows. 2 threads, ms, one GEMM or
// the old panels -> these: m = 288, k = 131072 57-58 -> 45-46 (3 panels); m = 576, k = 32768
// 43.4 (2 panels) -> 36.4-36.9 (6 panels); at m = 128 one GEMM stays the faster (12.3 ms
// against 13.0-14.9).
#define SYRK_LONG_MIN   256
#define SYRK_LONG_K     8
#define SYRK_LONG_PANEL 96
// f32 squares from SYRK_BIG_MIN rows and SYRK_BIG_K columns (K Kᵀ, KᵀK, the statistics' S Sᵀ
// of a wide factor) go by halves (syrk_halves): most of their multiply-adds are in a few large
// GEMMs (m = 4609: 2305 x 2304, then two of 1153 x 1152, ...), the diagonal blocks of at most
// SYRK_PANEL rows. Before, block rows: A Aᵀ of a row-major A by panels of at most 1040 rows
// (the 320-row panels ran at 60-70 % of one GEMM's rate there on an AMD Zen 5: m = k = 4609
// 506-532 -> 349-362 ms), Aᵀ A by the 320-row panels. The halves, 2 threads, Intel Xeon (family
// 6 model 207), best of 3, alternated twice, ms, block rows -> halves: m = k = 4609 A Aᵀ
// 392-410 -> 339-350, Aᵀ A 378-393 -> 347-352; 4097 290-292 -> 250-251, 270-271 -> 248-255;
// 2305 59-60 -> 48-51, 53-64 -> 51-52; m = 4609, k = 2048 184-189 -> 170-175 (A Aᵀ), 190-198 ->
// 166 (Aᵀ A); k = 256 and 512 within the noise (30-59 ms both ways).
#define SYRK_BIG_MIN 2048
#define SYRK_BIG_K   128
#define SYRK_TILE    16
#define SYRK16_MIN   1024 // ngd_syrk_bf16's threshold (see there)

// C's strictly upper triangle = the transpose of its strictly lower one, 16 x 16 tiles at a
// time: each tile below the diagonal is read row by row and written row by row above it, so
// every cache line is touched once per tile (a column walk at a row stride near a power of
// two, d = 4097, keeps evicting its own lines). Row-major C (every caller's) transposes whole
// tiles in AVX-512 registers where the CPU has them (2x the scalar tile at d = 513-4097,
// 2 threads); other tiles go through a local buffer. Tile rows are shared by the threads.
#ifdef NGD_HAVE_TR16
// d[j * ldd + i] = s[i * lds + j] for a 16 x 16 f32 tile (unaligned rows)
__attribute__((target("avx512f"))) static void transpose16_f32(const float *s, size_t lds, float *d,
                                                               size_t ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++)
        r[i] = _mm512_loadu_ps(s + (size_t)i * lds);
    for (int i = 0; i < 16; i += 2) { // pairs of rows, 32-bit interleave
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { // quads, 64-bit interleave
        const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]),
                      c = _mm512_castps_pd(t[i + 2]), e = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
    }
    for (int i = 0; i < 4; i++) { // 128-bit lanes
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
    for (int i = 0; i < 16; i++)
        _mm512_storeu_ps(d + (size_t)i * ldd, r[i]);
}

static bool have_avx512f(void) {
    static _Atomic int have = -1;
    int h = atomic_load_explicit(&have, memory_order_relaxed);
    if (h < 0) {
        __builtin_cpu_init();
        h = __builtin_cpu_supports("avx512f") ? 1 : 0;
        atomic_store_explicit(&have, h, memory_order_relaxed);
    }
    return h;
}
#endif

static void mirror_lower(ngd_view C) {
    const size_t m = C.rows, nt = (m + SYRK_TILE - 1) / SYRK_TILE;
    bool vec = false;
#ifdef NGD_HAVE_TR16
    vec = C.cs == 1 && have_avx512f();
#endif
#pragma omp parallel for schedule(dynamic, 1) if (m >= 512)
    for (size_t ti = 0; ti < nt; ti++) { // source tiles (ti, tj), tj <= ti, of the lower part
        const size_t i0 = ti * SYRK_TILE, ni = NGD_MIN(SYRK_TILE, m - i0);
        float buf[SYRK_TILE][SYRK_TILE];
        for (size_t j0 = 0; j0 < i0; j0 += SYRK_TILE) { // whole tiles below the diagonal
#ifdef NGD_HAVE_TR16
            if (vec && ni == SYRK_TILE) {
                transpose16_f32(&NGD_AT(C, i0, j0), (size_t)C.rs, &NGD_AT(C, j0, i0), (size_t)C.rs);
                continue;
            }
#endif
            for (size_t i = 0; i < ni; i++)
                for (size_t j = 0; j < SYRK_TILE; j++)
                    buf[j][i] = NGD_AT(C, i0 + i, j0 + j);
            for (size_t j = 0; j < SYRK_TILE; j++)
                for (size_t i = 0; i < ni; i++)
                    NGD_AT(C, j0 + j, i0 + i) = buf[j][i];
        }
        for (size_t i = 1; i < ni; i++) // the diagonal tile
            for (size_t j = 0; j < i; j++)
                NGD_AT(C, i0 + j, i0 + i) = NGD_AT(C, i0 + i, i0 + j);
    }
}

void ngd_mirror_lower(ngd_view C) {
    NGD_ASSERT(C.rows == C.cols);
    mirror_lower(C);
}

#ifdef _OPENMP
// C[j][i] = C[i][j] for rows i in [r0, r0 + nr) and columns j < h (h <= r0), by 16 x 16 tiles
// (a column walk at a power-of-two ldc would keep to a few cache sets; the blocks' mirror)
static void mirror_rows(float *C, size_t ldc, size_t r0, size_t nr, size_t h) {
    float buf[SYRK_TILE][SYRK_TILE];
    for (size_t i0 = r0; i0 < r0 + nr; i0 += SYRK_TILE) {
        const size_t ni = NGD_MIN((size_t)SYRK_TILE, r0 + nr - i0);
        for (size_t j0 = 0; j0 < h; j0 += SYRK_TILE) {
            const size_t nj = NGD_MIN((size_t)SYRK_TILE, h - j0);
            for (size_t i = 0; i < ni; i++)
                for (size_t j = 0; j < nj; j++)
                    buf[j][i] = C[(i0 + i) * ldc + j0 + j];
            for (size_t j = 0; j < nj; j++)
                for (size_t i = 0; i < ni; i++)
                    C[(j0 + j) * ldc + i0 + i] = buf[j][i];
        }
    }
}

// ngd_syrk_full's 2 x 2 blocks (syrk32_blocks) from SYRK32_BLOCKS_MIN to SYRK32_BLOCKS_MAX rows
#define SYRK32_BLOCKS_MIN 384
#define SYRK32_BLOCKS_MAX 1024
#endif

// The block-row height for an m x m product of m x k operands in at most max_np panels
// (a multiple of 16), or 0 where one GEMM of the whole square is the better choice.
static size_t syrk_panel(size_t m, size_t k, size_t max_np) {
    if (m >= SYRK_LONG_MIN && k >= SYRK_LONG_K * m && max_np >= 2) { // (np >= 2 here too)
        const size_t np = NGD_MIN(max_np, (m + SYRK_LONG_PANEL / 2) / SYRK_LONG_PANEL);
        return ((m + np - 1) / np + 15) / 16 * 16;
    }
    if (m < SYRK_MIN || 2 * k < m) return 0; // (tall A: the panels and the copy would not pay)
    const size_t np = NGD_MIN(max_np, (m + SYRK_PANEL / 2) / SYRK_PANEL); // >= 2 here
    return ((m + np - 1) / np + 15) / 16 * 16;
}

#ifdef _OPENMP
// ngd_syrk_full's 2 x 2 blocks on two threads (syrk16_blocks' scheme below, one-thread sgemm):
// 2 threads, AMD Zen 5, medians of 31 calls, one product / syrk: 512 rows 1.10-1.19, 513
// 1.17-1.24, 785 1.30-1.35, where the block rows gave 0.79-1.16; at 1025 both about 1.2, so
// the block rows stay from 1024. NGD_SYRK_BLOCKS=0 in the environment turns the blocks off
// (f32 and bf16). In f32 the blocks are taken at every thread count, in a parallel region too
// (then one thread does both halves, in the same one-thread dnnl_sgemm products), so that
// K Kᵀ and KᵀK of 384-1023 rows have the same bits at any --threads: at one thread the
// whole product had rounded differently (the mlp's dense SINGD, widths 300-512).
static bool syrk_blocks_env(void) {
    static _Atomic int on = -1;
    int o = atomic_load_explicit(&on, memory_order_relaxed);
    if (o < 0) {
        const char *e = getenv("NGD_SYRK_BLOCKS");
        o = !(e && !strcmp(e, "0"));
        atomic_store_explicit(&on, o, memory_order_relaxed);
    }
    return o;
}

static bool syrk32_blocks_on(size_t m, size_t k) {
    return syrk_blocks_env() && m >= SYRK32_BLOCKS_MIN && m < SYRK32_BLOCKS_MAX && 2 * k >= m;
}

// The multiply-adds of syrk32_blocks and syrk16_blocks (their one-thread products go past
// the counting doors), counted as the products they make
static void count_blocks(size_t n, size_t k) {
    const size_t h = (n / 2 + 15) / 16 * 16, n2 = n - h;
    atomic_fetch_add_explicit(&gemm_flops, 2 * (uint_fast64_t)k * (h * h + n2 * n2 + n2 * h),
                              memory_order_relaxed);
}

static void syrk32_blocks(float alpha, ngd_cview A, float beta, ngd_view C) {
    const size_t n = A.rows, k = A.cols, h = (n / 2 + 15) / 16 * 16, n2 = n - h, q = (n2 + 1) / 2;
    const int nthr = omp_get_max_threads() >= 2 ? 2 : 1; // (--threads 1: one thread)
#pragma omp parallel num_threads(nthr)
    for (int p = omp_get_thread_num(); p < 2; p += omp_get_num_threads()) { // (any team)
        const size_t d0 = p ? h : 0, nd = p ? n2 : h;                       // its diagonal block
        const size_t r0 = p ? h + q : h, nr = p ? n2 - q : q;               // its rows of C21
        const bool was = sgemm_only;
        sgemm_only = true; // (a team of one is no parallel region: the same kernel anyway)
        const ngd_cview Ad = ngd_cview_sub(A, d0, nd, 0, k);
        const ngd_view Cd = ngd_view_sub(C, d0, nd, d0, nd);
        gemm(alpha, Ad, ngd_cview_t(Ad), beta, Cd);
        mirror_lower(Cd);
        if (nr) {
            gemm(alpha, ngd_cview_sub(A, r0, nr, 0, k), ngd_cview_t(ngd_cview_sub(A, 0, h, 0, k)),
                 beta, ngd_view_sub(C, r0, nr, 0, h));
            mirror_rows(C.p, (size_t)C.rs, r0, nr, h);
        }
        sgemm_only = was;
    }
}
#endif

// Rows [r0, r0 + n) of C's lower triangle and diagonal blocks, by halves: the block below the
// diagonal is one GEMM, each half the same again, down to diagonal blocks of at most
// SYRK_PANEL rows (one GEMM each, both their triangles)
static void syrk_halves(float alpha, ngd_cview A, float beta, ngd_view C, size_t r0, size_t n) {
    const size_t k = A.cols;
    if (n <= SYRK_PANEL) {
        const ngd_cview Ad = ngd_cview_sub(A, r0, n, 0, k);
        ngd_gemm(alpha, Ad, ngd_cview_t(Ad), beta, ngd_view_sub(C, r0, n, r0, n));
        return;
    }
    const size_t h = (n / 2 + 15) / 16 * 16;
    syrk_halves(alpha, A, beta, C, r0, h);
    ngd_gemm(alpha, ngd_cview_sub(A, r0 + h, n - h, 0, k),
             ngd_cview_t(ngd_cview_sub(A, r0, h, 0, k)), beta,
             ngd_view_sub(C, r0 + h, n - h, r0, h));
    syrk_halves(alpha, A, beta, C, r0 + h, n - h);
}

// C = beta C + alpha A Aᵀ. Squares of SYRK_BIG_MIN rows or more go by halves (syrk_halves),
// smaller large ones by block rows: row panel [r0, r1) gets C[r0:r1, 0:r1] from one GEMM (the
// columns up to the panel's diagonal block); then the strictly upper triangle is copied from
// the lower one: (1 + 1/panels)/2 of the FLOPs of the
// full product, and C comes out exactly symmetric. With beta != 0 only C's lower triangle and
// diagonal blocks are read, so C must be symmetric on entry (every caller accumulates
// products made here, or their averages).
void ngd_syrk_full(float alpha, ngd_cview A, float beta, ngd_view C) {
    NGD_ASSERT(C.rows == A.rows && C.cols == A.rows);
    const size_t m = A.rows, k = A.cols;
    if (m >= SYRK_BIG_MIN && k >= SYRK_BIG_K) {
        syrk_halves(alpha, A, beta, C, 0, m);
        mirror_lower(C);
        return;
    }
    const size_t b = syrk_panel(m, k, m);
#ifdef _OPENMP
    if (C.cs == 1 && C.rs > 0 && syrk32_blocks_on(m, k)) {
        count_blocks(m, k);
        const team_guard g = team_begin();
        syrk32_blocks(alpha, A, beta, C);
        team_end(g);
        if (ngd_bf16_emul()) ngd_view_round_bf16(C); // (as ngd_gemm does; still symmetric)
        return;
    }
#endif
    if (!b) { // (alpha folds into one operand: mirrored, C[i][j] and C[j][i] could differ)
        ngd_gemm(alpha, A, ngd_cview_t(A), beta, C);
        if (m > 1) mirror_lower(C);
        return;
    }
    for (size_t r0 = 0; r0 < m; r0 += b) {
        const size_t nr = NGD_MIN(b, m - r0), r1 = r0 + nr;
        ngd_gemm(alpha, ngd_cview_sub(A, r0, nr, 0, k), ngd_cview_t(ngd_cview_sub(A, 0, r1, 0, k)),
                 beta, ngd_view_sub(C, r0, nr, 0, r1));
    }
    mirror_lower(C);
}

#ifdef _OPENMP
// Two threads, no AMX (split_rows' conditions), n from SYRK16_BLOCKS_MIN to SYRK16_BLOCKS_MAX: C in
// 2 x 2 blocks at h = n/2 (rounded to 16), the upper right one not computed: thread 0 takes C11
// and the first half of C21's rows, thread 1 C22 and the rest, each by one-thread products,
// and each mirrors its rows of C21 into C12 and its block's lower triangle: three quarters of
// the multiply-adds of one product, exactly symmetric, every element a sum over k as a
// one-thread product sums it. 2 threads, AMD Zen 5, medians of 61 calls alternated, one
// product / blocks: 1.13-1.22 at n = k = 640, 785, 900 and 1000 (AᵀA and A Aᵀ). Below 640 the
// one product's mirror_lower is what costs (a pass over tiles of C whose lines the other
// core's half of the product wrote: 35-40 % of perf's samples of ngd_syrk_bf16 at 512), so the
// blocks start at 256 (Zen 5, medians of 31, ms, one product -> blocks, A Aᵀ: 256 0.061 ->
// 0.053, 384 0.170 -> 0.142, 448 0.285 -> 0.214, 512 0.614 -> 0.322, 513 0.560 -> 0.333, 600
// 0.808 -> 0.473; AᵀA at 512 0.614 -> 0.339). The mlp's dense bf16 SINGD update (factors of
// 512 and 513) took 1.21 -> 1.00 ms a step (T = 10).
#define SYRK16_BLOCKS_MIN 256
// and up to 1600, past the block rows' threshold: Zen 5, medians of 7, ms, block rows ->
// blocks, A Aᵀ: 1024 3.19 -> 2.36, 1153 3.61 -> 3.16, 1537 8.00 -> 7.55 (at 2049 and more
// the block rows won: 17.4 -> 18.8 at 2049, 119 -> 138 at 4097). On the convert path (f32
// copies, then sgemm: the default where bf16 dot products are slow), measured on the same
// Zen 5 with NGD_BF16_GEMM=convert, one product -> blocks: 384 0.401 -> 0.319, 512 1.080 ->
// 0.709, 513 1.098 -> 0.731 (not measured on a CPU whose default that path is).
#define SYRK16_BLOCKS_MAX 1600

static void syrk16_blocks(bool ta, size_t n, size_t k, float alpha, const uint16_t *A, size_t lda,
                          float beta, float *C, size_t ldc) {
    const size_t h = (n / 2 + 15) / 16 * 16, n2 = n - h, q = (n2 + 1) / 2;
#define COLS(c0) (ta ? A + (c0) : A + (c0)*lda) // A's rows (columns, ta) from c0
#pragma omp parallel num_threads(2)
    for (int p = omp_get_thread_num(); p < 2; p += omp_get_num_threads()) { // (any team)
        const size_t d0 = p ? h : 0, nd = p ? n2 : h;                       // its diagonal block
        const size_t r0 = p ? h + q : h, nr = p ? n2 - q : q;               // its rows of C21
        gemm_bf16(ta, !ta, nd, nd, k, alpha, COLS(d0), lda, COLS(d0), lda, beta, C + d0 * ldc + d0,
                  ldc);
        mirror_lower(ngd_view_rm(C + d0 * ldc + d0, nd, nd, ldc)); // (a product's rows
        // and columns may sum in other orders: m = 32j + 1's last row goes apart)
        if (nr) {
            gemm_bf16(ta, !ta, nr, h, k, alpha, COLS(r0), lda, A, lda, beta, C + r0 * ldc, ldc);
            mirror_rows(C, ldc, r0, nr, h); // C12's columns r0.. from C21's rows
        }
    }
#undef COLS
}
#endif

// 2 threads, AMD Zen 5, n = 4609, k = 256 (Aᵀ A): one product 13.6 ms, these block rows 8.0-8.7
// (336-1152 rows alike); n = 2305: 3.3 -> 2.1-2.6
#define SYRK16_LOWER_PANEL 336

// C's block rows of b rows, each up to and including its diagonal block (bf16 operands)
static void syrk16_rows(bool ta, size_t n, size_t k, float alpha, const uint16_t *A, size_t lda,
                        float beta, float *C, size_t ldc, size_t b) {
    for (size_t r0 = 0; r0 < n; r0 += b) {
        const size_t nr = NGD_MIN(b, n - r0), r1 = r0 + nr;
        ngd_gemm_bf16(ta, !ta, nr, r1, k, alpha, ta ? A + r0 : A + r0 * lda, lda, A, lda, beta,
                      C + r0 * ldc, ldc);
    }
}

void ngd_syrk_bf16_lower(bool ta, size_t n, size_t k, float alpha, const uint16_t *A, size_t lda,
                         float beta, float *C, size_t ldc) {
    if (n == 0) return;
    const size_t np = (n + SYRK16_LOWER_PANEL - 1) / SYRK16_LOWER_PANEL;
    syrk16_rows(ta, n, k, alpha, A, lda, beta, C, ldc, ((n + np - 1) / np + 15) / 16 * 16);
}

// ngd_syrk_full's block rows for bf16 operands (f32 C): op(A) = A (n x k) or, ta, Aᵀ of the
// k x n A.
void ngd_syrk_bf16(bool ta, size_t n, size_t k, float alpha, const uint16_t *A, size_t lda,
                   float beta, float *C, size_t ldc) {
    // At most 4 panels: each shape is a matmul primitive of its own (JIT code, kept per
    // thread). Below SYRK16_MIN rows one product is as fast or faster (2 threads, against the
    // panels with their copy: 1.5x at 512-513, 1.0-1.1x at 785 and 1025; the panels 1.1x at
    // 1153, 1.3x at 2049), and oneDNN's matmul gave an exactly symmetric C at 513-1025 (A Aᵀ;
    // AᵀA split over two threads, gemm_bf16, is symmetric to within float32 rounding).
#ifdef _OPENMP
    if (n >= SYRK16_BLOCKS_MIN && n < SYRK16_BLOCKS_MAX && 2 * k >= n && syrk_blocks_env() &&
        split_rows(n, n, k)) { // (k = 128 at n = 785: 0.82x)
        count_blocks(n, k);
        const team_guard g = team_begin();
        syrk16_blocks(ta, n, k, alpha, A, lda, beta, C, ldc);
        team_end(g);
        return;
    }
#endif
    const size_t b = n < SYRK16_MIN ? 0 : syrk_panel(n, k, 4);
    if (!b) { // (mirrored: see ngd_syrk_full)
        ngd_gemm_bf16(ta, !ta, n, n, k, alpha, A, lda, A, lda, beta, C, ldc);
        if (n > 1) mirror_lower(ngd_view_rm(C, n, n, ldc));
        return;
    }
    syrk16_rows(ta, n, k, alpha, A, lda, beta, C, ldc, b);
    mirror_lower(ngd_view_rm(C, n, n, ldc));
}

// Element-wise loops walk a view in memory order: row by row for a row-major view, column
// by column for a column-major (transposed) one, so a d x d view never strides by d per
// element (at power-of-two d that also thrashes one cache set). Same values either way.
static bool by_columns(ptrdiff_t rs, ptrdiff_t cs) {
    return (cs < 0 ? -cs : cs) > (rs < 0 ? -rs : rs);
}

void ngd_view_round_bf16(ngd_view v) {
    if (by_columns(v.rs, v.cs)) {
        for (size_t j = 0; j < v.cols; j++)
            for (size_t i = 0; i < v.rows; i++)
                NGD_AT(v, i, j) = ngd_bf16_round1(NGD_AT(v, i, j));
        return;
    }
    for (size_t i = 0; i < v.rows; i++)
        for (size_t j = 0; j < v.cols; j++)
            NGD_AT(v, i, j) = ngd_bf16_round1(NGD_AT(v, i, j));
}

void ngd_view_scale(ngd_view v, float s) {
    ngd_view_scale_f32(v, s);
    if (ngd_bf16_emul()) ngd_view_round_bf16(v);
}

void ngd_view_scale_f32(ngd_view v, float s) { ngd_view_scale_copy(ngd_cv(v), v, s); }

// Along y's lines (its columns or rows, whichever has the smaller stride), over the threads
// for large views; unit-stride lines as plain arrays, which vectorise (with the strides
// unknown at compile time they did not: K-FAC's low-rank application scaled a 512 x 785
// gradient on one thread, one element at a time). x may be y itself.
// y's lines [a0, a0 + 16) from x in the other orientation (element b of line a at
// x[a + b·xe]): 16 x 16 tiles transposed in registers, then scaled in place (the same
// product s·x as the line loop); the tail elements one at a time
#ifdef NGD_HAVE_TR16
static void scale_copy_t16(const float *x, size_t xe, float *y, size_t yl, size_t a0, size_t len,
                           float s) {
    size_t b0 = 0;
    for (; b0 + 16 <= len; b0 += 16) {
        float *d = y + a0 * yl + b0;
        transpose16_f32(x + a0 + b0 * xe, xe, d, yl);
        if (s != 1.0f)
            for (size_t i = 0; i < 16; i++)
                for (size_t j = 0; j < 16; j++)
                    d[i * yl + j] *= s;
    }
    for (size_t a = a0; a < a0 + 16; a++)
        for (size_t b = b0; b < len; b++)
            y[a * yl + b] = s * x[a + b * xe];
}
#endif

void ngd_view_scale_copy(ngd_cview x, ngd_view y, float s) {
    NGD_ASSERT(x.rows == y.rows && x.cols == y.cols);
    const bool bc = by_columns(y.rs, y.cs);
    const size_t nl = bc ? y.cols : y.rows, len = bc ? y.rows : y.cols;
    const ptrdiff_t yl = bc ? y.cs : y.rs, ye = bc ? y.rs : y.cs;
    const ptrdiff_t xl = bc ? x.cs : x.rs, xe = bc ? x.rs : x.cs;
#ifdef NGD_HAVE_TR16
    // x transposed against y (a K-FAC-family LRI's (1/(μ+λ)) 𝒢ᵀ of a batch's rows): whole
    // tiles of 16 lines instead of a gather at x's stride per element
    if (ye == 1 && xl == 1 && xe > 1 && yl > 0 && nl >= 16 && len >= 16 && have_avx512f()) {
        const size_t nt = nl / 16;
#pragma omp parallel for schedule(static) if (nl * len >= NGD_PAR_MIN && nt > 1)
        for (size_t t = 0; t < nt; t++)
            scale_copy_t16(x.p, (size_t)xe, y.p, (size_t)yl, 16 * t, len, s);
        for (size_t a = 16 * nt; a < nl; a++) // the last lines
            for (size_t b = 0; b < len; b++)
                y.p[(ptrdiff_t)a * yl + (ptrdiff_t)b] = s * x.p[(ptrdiff_t)a + (ptrdiff_t)b * xe];
        return;
    }
#endif
#pragma omp parallel for schedule(static) if (nl * len >= NGD_PAR_MIN && nl > 1)
    for (size_t a = 0; a < nl; a++) {
        float *q = y.p + (ptrdiff_t)a * yl;
        const float *p = x.p + (ptrdiff_t)a * xl;
        if (ye == 1 && xe == 1) {
            for (size_t b = 0; b < len; b++)
                q[b] = s * p[b];
        } else {
            for (size_t b = 0; b < len; b++)
                q[(ptrdiff_t)b * ye] = s * p[(ptrdiff_t)b * xe];
        }
    }
}

void ngd_view_copy(ngd_cview src, ngd_view dst) {
    NGD_ASSERT(src.rows == dst.rows && src.cols == dst.cols);
    if (by_columns(dst.rs, dst.cs)) {
        for (size_t j = 0; j < src.cols; j++)
            for (size_t i = 0; i < src.rows; i++)
                NGD_AT(dst, i, j) = NGD_AT(src, i, j);
    } else {
        for (size_t i = 0; i < src.rows; i++)
            for (size_t j = 0; j < src.cols; j++)
                NGD_AT(dst, i, j) = NGD_AT(src, i, j);
    }
    if (ngd_bf16_emul()) ngd_view_round_bf16(dst);
}

void ngd_view_zero(ngd_view v) {
    if (v.cs == 1 && (size_t)v.rs == v.cols) {
        memset(v.p, 0, v.rows * v.cols * sizeof(float));
        return;
    }
    if (by_columns(v.rs, v.cs)) { // (not a scale by 0: that would keep NaNs)
        for (size_t j = 0; j < v.cols; j++)
            for (size_t i = 0; i < v.rows; i++)
                NGD_AT(v, i, j) = 0.0f;
        return;
    }
    for (size_t i = 0; i < v.rows; i++)
        for (size_t j = 0; j < v.cols; j++)
            NGD_AT(v, i, j) = 0.0f;
}

// ---- LAPACK without allocation (column-major calls; see blas.h) ----
static int fits_int(size_t a) { return a <= (size_t)INT_MAX; }

_Static_assert(sizeof(lapack_int) == sizeof(int), "ngd's *_work wrappers expect a 32-bit "
                                                  "lapack_int (LP64 LAPACKE)");

// A LAPACK workspace query answer (a float holding an integer) as a count, with headroom
// for the rounding of large values to float.
static size_t lwork_from(double q) {
    if (!(q >= 0) || q > (double)INT_MAX) return 0;
    size_t n = (size_t)q;
    return n + n / 1024 + 1;
}

// In-place transpose of the n x n row-major a (lda >= n).
static void transpose_sq_f(size_t n, float *a, size_t lda) {
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            float t = a[i * lda + j];
            a[i * lda + j] = a[j * lda + i];
            a[j * lda + i] = t;
        }
}
static void transpose_sq_d(size_t n, double *a, size_t lda) {
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            double t = a[i * lda + j];
            a[i * lda + j] = a[j * lda + i];
            a[j * lda + i] = t;
        }
}

size_t ngd_ssyevd_lwork(size_t n, size_t *liwork) {
    *liwork = 1;
    if (n == 0) return 1;
    if (!fits_int(n)) return 0;
    float q = 0, a = 0, w = 0;
    lapack_int iq = 0;
    // row-major upper == column-major lower of the same symmetric matrix
    int info = LAPACKE_ssyevd_work(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)n, &a, (lapack_int)n, &w,
                                   &q, -1, &iq, -1);
    if (info != 0 || iq < 0) return 0;
    *liwork = (size_t)iq;
    return lwork_from((double)q);
}

static int ngd_ssyevd_work_impl(size_t n, float *a, size_t lda, float *w, float *work, size_t lwork,
                                int *iwork, size_t liwork) {
    if (!fits_int(n) || !fits_int(lda) || lda < n) return -1000;
    if (n == 0) return 0;
    int info = LAPACKE_ssyevd_work(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)n, a, (lapack_int)lda, w,
                                   work, (lapack_int)NGD_MIN(lwork, INT_MAX), iwork,
                                   (lapack_int)NGD_MIN(liwork, INT_MAX));
    // column-major eigenvectors are the rows of the row-major buffer: make them columns
    if (info == 0) transpose_sq_f(n, a, lda);
    if (info == 0 && ngd_bf16_emul()) { // emulated bf16: the outputs rounded
        ngd_bf16_round(w, n);
        ngd_view_round_bf16(ngd_view_rm(a, n, n, lda));
    }
    return info;
}

// (with full OpenMP teams: OpenBLAS, as oneDNN, plans for omp_get_max_threads() threads
//  and spun for ever when a team came smaller; team_begin)
int ngd_ssyevd_work(size_t n, float *a, size_t lda, float *w, float *work, size_t lwork, int *iwork,
                    size_t liwork) {
    const team_guard g = team_begin();
    const int info = ngd_ssyevd_work_impl(n, a, lda, w, work, lwork, iwork, liwork);
    team_end(g);
    return info;
}

size_t ngd_dsyevd_lwork(size_t n, size_t *liwork) {
    *liwork = 1;
    if (n == 0) return 1;
    if (!fits_int(n)) return 0;
    double q = 0, a = 0, w = 0;
    lapack_int iq = 0;
    int info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)n, &a, (lapack_int)n, &w,
                                   &q, -1, &iq, -1);
    if (info != 0 || iq < 0) return 0;
    *liwork = (size_t)iq;
    return lwork_from(q);
}

static int ngd_dsyevd_work_impl(size_t n, double *a, size_t lda, double *w, double *work,
                                size_t lwork, int *iwork, size_t liwork) {
    if (!fits_int(n) || !fits_int(lda) || lda < n) return -1000;
    if (n == 0) return 0;
    int info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)n, a, (lapack_int)lda, w,
                                   work, (lapack_int)NGD_MIN(lwork, INT_MAX), iwork,
                                   (lapack_int)NGD_MIN(liwork, INT_MAX));
    if (info == 0) transpose_sq_d(n, a, lda);
    return info;
}

int ngd_dsyevd_work(size_t n, double *a, size_t lda, double *w, double *work, size_t lwork,
                    int *iwork, size_t liwork) {
    const team_guard g = team_begin();
    const int info = ngd_dsyevd_work_impl(n, a, lda, w, work, lwork, iwork, liwork);
    team_end(g);
    return info;
}

size_t ngd_dsyev_lwork(size_t n) {
    if (!fits_int(n)) return 0;
    if (n == 0) return 1;
    double q = 0, a = 0, w = 0;
    int info = LAPACKE_dsyev_work(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)n, &a, (lapack_int)n, &w,
                                  &q, -1);
    return info == 0 ? lwork_from(q) : 0;
}

static int ngd_dsyev_work_impl(size_t n, double *a, size_t lda, double *w, double *work,
                               size_t lwork) {
    if (!fits_int(n) || !fits_int(lda) || lda < n) return -1000;
    if (n == 0) return 0;
    int info = LAPACKE_dsyev_work(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)n, a, (lapack_int)lda, w,
                                  work, (lapack_int)NGD_MIN(lwork, INT_MAX));
    if (info == 0) transpose_sq_d(n, a, lda);
    return info;
}

int ngd_dsyev_work(size_t n, double *a, size_t lda, double *w, double *work, size_t lwork) {
    const team_guard g = team_begin();
    const int info = ngd_dsyev_work_impl(n, a, lda, w, work, lwork);
    team_end(g);
    return info;
}

size_t ngd_sqr_thin_cm_lwork(size_t m, size_t n) {
    if (!fits_int(m) || !fits_int(n) || m < n) return 0;
    if (n == 0) return 1;
    float q1 = 0, q2 = 0, a = 0, tau = 0;
    int info = LAPACKE_sgeqrf_work(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)n, &a,
                                   (lapack_int)m, &tau, &q1, -1);
    if (info == 0)
        info = LAPACKE_sorgqr_work(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)n, (lapack_int)n,
                                   &a, (lapack_int)m, &tau, &q2, -1);
    if (info != 0) return 0;
    size_t l1 = lwork_from((double)q1), l2 = lwork_from((double)q2);
    if (l1 == 0 || l2 == 0) return 0;
    return n + NGD_MAX(l1, l2);
}

static int ngd_sqr_thin_cm_work_impl(size_t m, size_t n, float *a, size_t lda, float *r, size_t ldr,
                                     float *work, size_t lwork) {
    if (!fits_int(m) || !fits_int(n) || !fits_int(lda) || m < n || lda < m) return -1000;
    if (n == 0) return 0;
    if (lwork < n + 1) return -1000;
    float *tau = work, *w = work + n;
    lapack_int lw = (lapack_int)NGD_MIN(lwork - n, INT_MAX);
    int info = LAPACKE_sgeqrf_work(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)n, a,
                                   (lapack_int)lda, tau, w, lw);
    if (info == 0 && r) {
        // column-major R(i, j) = a[i + j*lda] for j >= i
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++)
                r[i * ldr + j] = j >= i ? a[i + j * lda] : 0.0f;
    }
    if (info == 0)
        info = LAPACKE_sorgqr_work(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)n, (lapack_int)n, a,
                                   (lapack_int)lda, tau, w, lw);
    if (info == 0 && ngd_bf16_emul()) {                 // emulated bf16: Q and R rounded
        ngd_view_round_bf16(ngd_view_rm(a, n, m, lda)); // (column-major m x n)
        if (r) ngd_view_round_bf16(ngd_view_rm(r, n, n, ldr));
    }
    return info;
}

int ngd_sqr_thin_cm_work(size_t m, size_t n, float *a, size_t lda, float *r, size_t ldr,
                         float *work, size_t lwork) {
    const team_guard g = team_begin();
    const int info = ngd_sqr_thin_cm_work_impl(m, n, a, lda, r, ldr, work, lwork);
    team_end(g);
    return info;
}

// Thin SVD of a tall column-major m x n matrix, keeping Σ and V. Done as LAPACK would for
// m >> n (QR, then the SVD of R), but with R copied to a compact n x n array first: left
// inside A its column stride is lda = m, and at power-of-two m the plane rotations of the
// bidiagonal SVD then hit one cache set (10x slower at m = 1024, n = 230).
static size_t gesvd_v_lwork(size_t m, size_t n) {
    float q = 0, a = 0, s = 0, u = 0, vt = 0;
    int info = LAPACKE_sgesvd_work(LAPACK_COL_MAJOR, 'N', 'S', (lapack_int)m, (lapack_int)n, &a,
                                   (lapack_int)m, &s, &u, 1, &vt, (lapack_int)n, &q, -1);
    return info == 0 ? lwork_from((double)q) : 0;
}

size_t ngd_sgesvd_cm_v_lwork(size_t m, size_t n) {
    if (!fits_int(m) || !fits_int(n) || m < n) return 0;
    if (n == 0) return 1;
    float q = 0, a = 0, tau = 0;
    if (LAPACKE_sgeqrf_work(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)n, &a, (lapack_int)m, &tau,
                            &q, -1) != 0)
        return 0;
    size_t lqr = lwork_from((double)q), lsvd = gesvd_v_lwork(n, n);
    int ok = 1;
    size_t nn = ngd_mul_size(n, n, &ok);
    if (lqr == 0 || lsvd == 0 || !ok) return 0;
    return n + nn + NGD_MAX(lqr, lsvd); // tau, R, the larger of the two workspaces
}

static int ngd_sgesvd_cm_v_work_impl(size_t m, size_t n, float *a, size_t lda, float *s, float *v,
                                     size_t ldv, float *work, size_t lwork) {
    if (!fits_int(m) || !fits_int(n) || !fits_int(lda) || !fits_int(ldv) || m < n || lda < m ||
        ldv < n)
        return -1000;
    if (n == 0) return 0;
    if (lwork < n + n * n + 1) return -1000;
    float *tau = work, *R = work + n, *w = R + n * n;
    lapack_int lw = (lapack_int)NGD_MIN(lwork - n - n * n, INT_MAX);
    int info = LAPACKE_sgeqrf_work(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)n, a,
                                   (lapack_int)lda, tau, w, lw);
    if (info != 0) return info;
    for (size_t j = 0; j < n; j++) // column-major R (upper triangle), leading dimension n
        for (size_t i = 0; i < n; i++)
            R[i + j * n] = i <= j ? a[i + j * lda] : 0.0f;
    float u = 0;
    // Σ and Vᵀ of R are those of A; column-major Vᵀ (leading dimension ldv) read row-major is V
    info = LAPACKE_sgesvd_work(LAPACK_COL_MAJOR, 'N', 'S', (lapack_int)n, (lapack_int)n, R,
                               (lapack_int)n, s, &u, 1, v, (lapack_int)ldv, w, lw);
    if (info == 0 && ngd_bf16_emul()) { // emulated bf16: Σ and V rounded
        ngd_bf16_round(s, n);
        ngd_view_round_bf16(ngd_view_rm(v, n, n, ldv));
    }
    return info;
}

int ngd_sgesvd_cm_v_work(size_t m, size_t n, float *a, size_t lda, float *s, float *v, size_t ldv,
                         float *work, size_t lwork) {
    const team_guard g = team_begin();
    const int info = ngd_sgesvd_cm_v_work_impl(m, n, a, lda, s, v, ldv, work, lwork);
    team_end(g);
    return info;
}

int ngd_blas_serial_begin(void) {
    serial_depth++;
#ifdef _OPENMP
    int saved = omp_get_max_threads();
    if (saved != 1) omp_set_num_threads(1);
    return saved;
#else
    return 1;
#endif
}

void ngd_blas_serial_end(int saved) {
    serial_depth--;
#ifdef _OPENMP
    if (saved != 1 && saved > 0) omp_set_num_threads(saved);
#else
    NGD_UNUSED(saved);
#endif
}
