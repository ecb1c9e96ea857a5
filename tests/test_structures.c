/*
 * test_structures.c — every structure class of docs/algorithms.md#structures × every operation
 * against the float64 dense reference of tests/sref.c (Π from the class's entry pattern, plain
 * dense products), on non-symmetric class members K = Π(S1)·Π(S2) (#singd-test-plan), at the sizes
 * of every regime (block: 1, b−1, b, b+1, 2b+5; hierarchical: d ≤ k1, ≤ k1+k2, >), with M / out / X
 * in row-major, column-major and non-unit-stride layouts. Then the worked examples of
 * #hierarchical, #toeplitz, #corner-diagonal and the replay of ../shared/oracle/structures.json
 * (the official SINGD primitives in float64, 54 cases) in float32.
 * Legend: d = dimension, n = columns of M / X, K = the structured operand.
 */
#include <cjson/cJSON.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "impl.h"
#include "ref.h"
#include "sref.h"
#include "structure.h"

// ---- tolerances ----
// f32 kernels vs the f64 reference on the same f32-representable inputs: rounding grows
// like sqrt(#terms)·eps·|terms|; with d ≤ 65, O(1) entries and at most three chained
// products (K = P1 P2, S = Kᵀ X, S Sᵀ) the worst error measured is ~4e-7 of the largest
// reference magnitude, so 1e-5 of max|ref| keeps > 20x headroom yet catches any wrong term.
#define TOL_REL 1e-5
// scalars summed in double from the same f32 numbers (trace, ‖·‖_F): only the summation
// order differs from the reference, ~d·1e-16 relative to the sum of magnitudes
#define TOL_SUM 1e-12
// oracle: the official results are float64 from float64 inputs; ours start from inputs
// rounded to f32 (6e-8 relative) and run in f32 with ≤ 3 chained products over d ≤ 65
// terms, which gives errors of a few 1e-7 of max|ref| (printed below); 1e-5 keeps headroom.
#define ORACLE_TOL 1e-5

// ---- the classes under test ----
typedef struct {
    const char *label;
    ngd_structure kind;
    size_t b, k1, k2;
    bool quirk;
    size_t dims[12]; // 0-terminated
} sclass;

#define STD_DIMS                                                                                   \
    { 1, 2, 4, 5, 7, 8, 13, 31, 65, 0 }
#define TZ_DIMS                                                                                    \
    { 1, 2, 4, 5, 7, 8, 13, 31, 65, 200, 0 }
static const sclass CLASSES[] = {
    {"dense", NGD_STRUCT_DENSE, 0, 0, 0, false, STD_DIMS},
    {"diagonal", NGD_STRUCT_DIAG, 0, 0, 0, false, STD_DIMS},
    {"block3", NGD_STRUCT_BLOCKDIAG, 3, 0, 0, false, {1, 2, 3, 4, 11, 0}},
    {"block7", NGD_STRUCT_BLOCKDIAG, 7, 0, 0, false, {1, 6, 7, 8, 19, 0}},
    {"block30", NGD_STRUCT_BLOCKDIAG, 30, 0, 0, false, {1, 29, 30, 31, 65, 0}},
    {"block1", NGD_STRUCT_BLOCKDIAG, 1, 0, 0, false, {1, 2, 5, 0}},
    {"block3-quirk", NGD_STRUCT_BLOCKDIAG, 3, 0, 0, true, {1, 2, 3, 4, 11, 0}},
    {"block30-quirk", NGD_STRUCT_BLOCKDIAG, 30, 0, 0, true, {1, 29, 30, 31, 65, 0}},
    {"hier3_2", NGD_STRUCT_HIER, 0, 3, 2, false, {1, 2, 3, 4, 5, 6, 9, 0}},
    {"hier15_15", NGD_STRUCT_HIER, 0, 15, 15, false, {1, 8, 15, 16, 30, 31, 47, 0}},
    {"hier4_1", NGD_STRUCT_HIER, 0, 4, 1, false, {3, 4, 5, 6, 11, 0}},
    {"hier1_3", NGD_STRUCT_HIER, 0, 1, 3, false, {1, 2, 4, 5, 9, 0}},
    // d = 200 with n = 70 columns crosses the OpenMP threshold of the Toeplitz kernels
    {"triltoeplitz", NGD_STRUCT_TRIL_TOEPLITZ, 0, 0, 0, false, TZ_DIMS},
    {"triutoeplitz", NGD_STRUCT_TRIU_TOEPLITZ, 0, 0, 0, false, TZ_DIMS},
    {"tril_topleft", NGD_STRUCT_TRIL_TOPLEFT, 0, 0, 0, false, STD_DIMS},
    {"tril_botright", NGD_STRUCT_TRIL_BOTRIGHT, 0, 0, 0, false, STD_DIMS},
    {"triu_topleft", NGD_STRUCT_TRIU_TOPLEFT, 0, 0, 0, false, STD_DIMS},
    {"triu_botright", NGD_STRUCT_TRIU_BOTRIGHT, 0, 0, 0, false, STD_DIMS},
};
#define NCLASSES (sizeof CLASSES / sizeof CLASSES[0])

static bool make_desc(const sclass *c, size_t d, ngd_sdesc *s) {
    ngd_factor_spec f = {c->kind, c->b, c->k1, c->k2, NGD_F32};
    ngd_status st = ngd_sdesc_init(s, &f, d, c->quirk);
    CHECK_MSG(st == NGD_OK, "%s d=%zu: ngd_sdesc_init failed", c->label, d);
    return st == NGD_OK;
}

// Independent description of each pattern (#structures), not derived from entry().
static bool in_pattern(const ngd_sdesc *s, size_t i, size_t j) {
    const size_t d = s->d;
    switch (s->kind) {
    case NGD_STRUCT_DENSE: return true;
    case NGD_STRUCT_DIAG: return i == j;
    case NGD_STRUCT_BLOCKDIAG: return i / s->b == j / s->b;
    case NGD_STRUCT_HIER: {
        const size_t t = s->k1, b0 = s->k1 + s->m; // top [0,t), middle [t,b0), bottom [b0,d)
        if (i < t) return true;
        if (i < b0) return i == j;
        return j >= t;
    }
    case NGD_STRUCT_TRIL_TOEPLITZ: return i >= j;
    case NGD_STRUCT_TRIU_TOEPLITZ: return j >= i;
    case NGD_STRUCT_TRIL_TOPLEFT: return i == j || i == d - 1;
    case NGD_STRUCT_TRIL_BOTRIGHT: return i == j || j == 0;
    case NGD_STRUCT_TRIU_TOPLEFT: return i == j || j == d - 1;
    case NGD_STRUCT_TRIU_BOTRIGHT: return i == j || i == 0;
    default: return false;
    }
}

// ---- helpers ----
static double g_worst_rel; // worst max|got − ref| / max|ref| over the unit tests

static const char *lbl(const char *fmt, ...) {
    static char buf[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

static double maxabs_d(const double *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}

// |got − want| <= tol · scale element-wise, scale = max|want| unless given (> 0: the
// magnitude of the operands where the result may cancel); records the worst ratio
static int check_rel_impl(const char *file, int line, const void *got, int got_d,
                          const double *want, size_t n, double tol, double scale,
                          const char *label) {
    double err = 0;
    if (!(scale > 0)) scale = maxabs_d(want, n);
    for (size_t i = 0; i < n; i++) {
        double g = got_d ? ((const double *)got)[i] : (double)((const float *)got)[i];
        double e = fabs(g - want[i]);
        err = e > err || e != e ? e : err;
    }
    if (scale > 0 && !(err / scale <= g_worst_rel)) g_worst_rel = err / scale;
    return th_check_tensor(file, line, label, got, got_d, want, 1, n, 0.0, tol * scale);
}
#define CHECK_REL(got, want, n, tol, label)                                                        \
    check_rel_impl(__FILE__, __LINE__, (got), TH_IS_DOUBLE(got), (want), (size_t)(n), (tol), 0.0,  \
                   (label))
#define CHECK_REL_SCALED(got, want, n, tol, scale, label)                                          \
    check_rel_impl(__FILE__, __LINE__, (got), TH_IS_DOUBLE(got), (want), (size_t)(n), (tol),       \
                   (scale), (label))

// uniform [-1, 1) values, stored as float and as the same values in double
static void rand_fd(ref_rng *r, float *f, double *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        f[i] = (float)ref_uniform(r, -1, 1);
        x[i] = (double)f[i];
    }
}

// A d x n matrix in one of three layouts over a buffer of 2·d·n floats:
// 0 row-major, 1 column-major, 2 no unit stride (rs = 2n, cs = 2).
#define NLAYOUTS 3
static ngd_view layout_view(float *buf, size_t rows, size_t cols, int layout) {
    ngd_view v = {buf, rows, cols, (ptrdiff_t)cols, 1};
    if (layout == 1) v.rs = 1, v.cs = (ptrdiff_t)rows;
    if (layout == 2) v.rs = 2 * (ptrdiff_t)cols, v.cs = 2;
    return v;
}
static void view_from(ngd_view v, const float *rm) {
    for (size_t i = 0; i < v.rows; i++)
        for (size_t j = 0; j < v.cols; j++)
            NGD_AT(v, i, j) = rm[i * v.cols + j];
}
static void view_to(ngd_view v, float *rm) {
    for (size_t i = 0; i < v.rows; i++)
        for (size_t j = 0; j < v.cols; j++)
            rm[i * v.cols + j] = NGD_AT(v, i, j);
}

// The operands of one (class, d): random non-symmetric S1, S2 and symmetric S3 (f32 values,
// row-major d x d), P1 = Π(S1), P2 = Π(S2), K = P1 P2 (non-symmetric in general), and dense
// f64 forms of P1, P2, K.
typedef struct {
    const sclass *c;
    ngd_sdesc s;
    const ngd_structure_ops *ops;
    size_t d, n;
    float *S1f, *S2f, *S3f, *P1, *P2, *K;
    double *S1, *S2, *S3, *P1d, *P2d, *Kd;
} operands;

static void ops_free(operands *o) {
    free(o->S1f), free(o->S2f), free(o->S3f), free(o->P1), free(o->P2), free(o->K);
    free(o->S1), free(o->S2), free(o->S3), free(o->P1d), free(o->P2d), free(o->Kd);
}

static bool ops_make(operands *o, const sclass *c, size_t d, ref_rng *r) {
    memset(o, 0, sizeof *o);
    if (!make_desc(c, d, &o->s)) return false;
    o->c = c, o->d = d, o->n = o->s.n;
    o->ops = ngd_structure_get(c->kind);
    const size_t dd = d * d, n = o->n;
    o->S1f = malloc(dd * sizeof(float)), o->S2f = malloc(dd * sizeof(float));
    o->S3f = malloc(dd * sizeof(float));
    o->S1 = malloc(dd * sizeof(double)), o->S2 = malloc(dd * sizeof(double));
    o->S3 = malloc(dd * sizeof(double));
    o->P1 = malloc(n * sizeof(float)), o->P2 = malloc(n * sizeof(float));
    o->K = malloc(n * sizeof(float));
    o->P1d = malloc(dd * sizeof(double)), o->P2d = malloc(dd * sizeof(double));
    o->Kd = malloc(dd * sizeof(double));
    rand_fd(r, o->S1f, o->S1, dd);
    rand_fd(r, o->S2f, o->S2, dd);
    rand_fd(r, o->S3f, o->S3, dd);
    for (size_t i = 0; i < d; i++) // S3 symmetric
        for (size_t j = 0; j < i; j++) {
            o->S3f[j * d + i] = o->S3f[i * d + j];
            o->S3[j * d + i] = o->S3[i * d + j];
        }
    o->ops->project(&o->s, ngd_cview_rm(o->S1f, d, d, d), o->P1);
    o->ops->project(&o->s, ngd_cview_rm(o->S2f, d, d, d), o->P2);
    o->ops->mul(&o->s, o->P1, o->P2, o->K);
    sref_to_dense(&o->s, o->P1, o->P1d);
    sref_to_dense(&o->s, o->P2, o->P2d);
    sref_to_dense(&o->s, o->K, o->Kd);
    return true;
}

typedef void (*class_body)(operands *o, ref_rng *r);

// Runs body on the operands of every class at every dimension.
static void for_each_class(class_body body) {
    ref_rng r = {2024};
    for (size_t c = 0; c < NCLASSES; c++)
        for (const size_t *d = CLASSES[c].dims; *d; d++) {
            operands o;
            if (ops_make(&o, &CLASSES[c], *d, &r)) body(&o, &r);
            ops_free(&o);
        }
}

// ---- counts and patterns ----

static void counts_should_match_spec_table(void) {
    // #state-memory (and the #block-diagonal / #hierarchical sizes): stored numbers per factor
    static const struct {
        ngd_structure kind;
        size_t b, k1, k2, d, want;
    } T[] = {
        {NGD_STRUCT_DENSE, 0, 0, 0, 31, 961},
        {NGD_STRUCT_DIAG, 0, 0, 0, 433, 433},
        {NGD_STRUCT_BLOCKDIAG, 30, 0, 0, 10, 100},
        {NGD_STRUCT_BLOCKDIAG, 30, 0, 0, 29, 841},
        {NGD_STRUCT_BLOCKDIAG, 30, 0, 0, 30, 900},
        {NGD_STRUCT_BLOCKDIAG, 30, 0, 0, 31, 901},
        {NGD_STRUCT_BLOCKDIAG, 30, 0, 0, 65, 1825},
        {NGD_STRUCT_BLOCKDIAG, 30, 0, 0, 433, 12769},
        {NGD_STRUCT_BLOCKDIAG, 30, 0, 0, 1024, 30616},
        // a block of SIZE_MAX is one dense block (its count wrapped to 0 blocks: K = 0)
        {NGD_STRUCT_BLOCKDIAG, SIZE_MAX, 0, 0, 31, 961},
        {NGD_STRUCT_BLOCKDIAG, SIZE_MAX - 29, 0, 0, 31, 961},
        {NGD_STRUCT_HIER, 0, 15, 15, 10, 100},
        {NGD_STRUCT_HIER, 0, 15, 15, 16, 241},
        {NGD_STRUCT_HIER, 0, 15, 15, 31, 706},
        {NGD_STRUCT_HIER, 0, 15, 15, 65, 1760},
        {NGD_STRUCT_HIER, 0, 15, 15, 433, 13168},
        {NGD_STRUCT_HIER, 0, 15, 15, 1024, 31489},
        // k1 + k2 past SIZE_MAX is (k1, 0, d - k1), as any k2 >= d - k1 (the sum wrapped: a
        // middle block of about d + 2 numbers, a count too small for it)
        {NGD_STRUCT_HIER, 0, 1, SIZE_MAX, 31, 931},
        {NGD_STRUCT_HIER, 0, 1, 30, 31, 931},
        {NGD_STRUCT_TRIL_TOEPLITZ, 0, 0, 0, 65, 65},
        {NGD_STRUCT_TRIU_TOEPLITZ, 0, 0, 0, 1024, 1024},
        {NGD_STRUCT_TRIL_TOPLEFT, 0, 0, 0, 10, 19},
        {NGD_STRUCT_TRIL_BOTRIGHT, 0, 0, 0, 31, 61},
        {NGD_STRUCT_TRIU_TOPLEFT, 0, 0, 0, 65, 129},
        {NGD_STRUCT_TRIU_BOTRIGHT, 0, 0, 0, 1024, 2047},
        {NGD_STRUCT_TRIU_BOTRIGHT, 0, 0, 0, 1, 1},
    };
    for (size_t t = 0; t < sizeof T / sizeof T[0]; t++) {
        ngd_factor_spec f = {T[t].kind, T[t].b, T[t].k1, T[t].k2, NGD_F32};
        ngd_sdesc s;
        CHECK(ngd_sdesc_init(&s, &f, T[t].d, false) == NGD_OK);
        CHECK_MSG(s.n == T[t].want, "kind %d d=%zu: count %zu, want %zu", (int)T[t].kind, T[t].d,
                  s.n, T[t].want);
        // and its identity is the d x d identity (a wrapped block count made it zero)
        float *p = calloc(s.n, sizeof(float)), *D = calloc(T[t].d * T[t].d, sizeof(float));
        ngd_structure_get(s.kind)->eye(&s, p);
        ngd_s_to_dense(&s, p, ngd_view_rm(D, T[t].d, T[t].d, T[t].d));
        double off = 0;
        for (size_t i = 0; i < T[t].d; i++)
            for (size_t j = 0; j < T[t].d; j++)
                off = fmax(off, fabs((double)D[i * T[t].d + j] - (i == j ? 1.0 : 0.0)));
        CHECK_MSG(off == 0, "kind %d d=%zu: eye is not the identity (off by %g)", (int)T[t].kind,
                  T[t].d, off);
        free(p), free(D);
    }
    // every class is in the table, and bad descriptors are refused
    for (int k = 0; k < NGD_STRUCT_COUNT; k++)
        CHECK(ngd_structure_get((ngd_structure)k) != NULL);
    ngd_sdesc s;
    ngd_factor_spec bad = {NGD_STRUCT_BLOCKDIAG, 0, 0, 0, NGD_F32};
    CHECK(ngd_sdesc_init(&s, &bad, 5, false) == NGD_ERR_ARG);
}

static void entry_body(operands *o, ref_rng *r) {
    NGD_UNUSED(r);
    const ngd_sdesc *s = &o->s;
    const size_t d = o->d;
    size_t *hits = calloc(o->n, sizeof *hits);
    bool ok = true;
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            size_t e = o->ops->entry(s, i, j);
            ok &= (e != NGD_NO_ENTRY) == in_pattern(s, i, j);
            if (e == NGD_NO_ENTRY) continue;
            ok &= e < o->n;
            if (e < o->n) hits[e]++;
            bool tz = s->kind == NGD_STRUCT_TRIL_TOEPLITZ || s->kind == NGD_STRUCT_TRIU_TOEPLITZ;
            if (tz) ok &= e == (i > j ? i - j : j - i); // tied along the diagonals
        }
    for (size_t e = 0; e < o->n; e++) {
        bool tz = s->kind == NGD_STRUCT_TRIL_TOEPLITZ || s->kind == NGD_STRUCT_TRIU_TOEPLITZ;
        ok &= tz ? hits[e] == d - e : hits[e] == 1; // every number is used, untied once
    }
    CHECK_MSG(ok, "%s d=%zu: entry map does not match the pattern", o->c->label, d);
    free(hits);
}
static void entry_map_should_match_pattern(void) { for_each_class(entry_body); }

// ---- eye and projection ----

static void eye_body(operands *o, ref_rng *r) {
    NGD_UNUSED(r);
    const size_t d = o->d, dd = d * d;
    float *p = malloc(o->n * sizeof(float)), *q = malloc(o->n * sizeof(float));
    float *I = calloc(dd, sizeof(float));
    double *got = malloc(dd * sizeof(double)), *want = calloc(dd, sizeof(double));
    for (size_t i = 0; i < d; i++)
        I[i * d + i] = 1.0f, want[i * d + i] = 1.0;
    o->ops->eye(&o->s, p);
    sref_to_dense(&o->s, p, got);
    CHECK_TENSOR(got, want, dd, 0.0, 0.0, lbl("eye %s d=%zu", o->c->label, d));
    o->ops->project(&o->s, ngd_cview_rm(I, d, d, d), q); // Π(I) = I (#projection)
    CHECK_TENSOR(q, p, o->n, 0.0, 0.0, lbl("proj(I) %s d=%zu", o->c->label, d));
    free(p), free(q), free(I), free(got), free(want);
}
static void eye_should_be_identity_and_fixed_by_projection(void) { for_each_class(eye_body); }

// Π(S) vs the pattern rule for non-symmetric and symmetric S, in row- and column-major views;
// avgtr(Π S) = avgtr(S); Π idempotent on (non-symmetric) members; residual orthogonality.
static void project_body(operands *o, ref_rng *r) {
    NGD_UNUSED(r);
    const ngd_sdesc *s = &o->s;
    const size_t d = o->d, dd = d * d, n = o->n;
    float *p = malloc(n * sizeof(float)), *q = malloc(n * sizeof(float));
    float *Kdf = malloc(dd * sizeof(float));
    double *want = malloc(n * sizeof(double));
    const float *Sf[2] = {o->S1f, o->S3f};
    const double *Sd[2] = {o->S1, o->S3};
    for (int v = 0; v < 2; v++) {
        sref_project(s, Sd[v], want);
        o->ops->project(s, ngd_cview_rm(Sf[v], d, d, d), p);
        CHECK_REL(p, want, n, TOL_REL, lbl("proj %s d=%zu sym=%d", o->c->label, d, v));
        // the same matrix seen through a column-major view of its transpose's memory
        ngd_cview T = ngd_cview_t(ngd_cview_rm(Kdf, d, d, d));
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++)
                Kdf[j * d + i] = Sf[v][i * d + j];
        o->ops->project(s, T, q);
        CHECK_TENSOR(q, p, n, 0.0, 0.0, lbl("proj colmajor %s d=%zu", o->c->label, d));
        // avgtr(Π S) = tr(S)/d
        double tr = 0, trabs = 0;
        for (size_t i = 0; i < d; i++)
            tr += Sd[v][i * d + i], trabs += fabs(Sd[v][i * d + i]);
        CHECK_CLOSE(ngd_s_avgtrace(s, p), tr / (double)d, 0.0, 1e-6 * (trabs + 1) / (double)d);
        // residual R = S − sym(Π S) ⟂ sym(E_e) for every basis direction e: the sum over e's
        // positions of (R_ij + R_ji)/2 vanishes
        double *res = calloc(n, sizeof(double)), *mag = calloc(n, sizeof(double));
        double *Pd = malloc(dd * sizeof(double));
        sref_to_dense(s, p, Pd);
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++) {
                size_t e = o->ops->entry(s, i, j);
                if (e == NGD_NO_ENTRY) continue;
                double sij = 0.5 * (Sd[v][i * d + j] + Sd[v][j * d + i]);
                double pij = 0.5 * (Pd[i * d + j] + Pd[j * d + i]);
                res[e] += sij - pij;
                mag[e] += fabs(sij) + fabs(pij);
            }
        bool orth = true;
        for (size_t e = 0; e < n; e++)
            orth &= fabs(res[e]) <= TOL_REL * (mag[e] + 1e-30);
        CHECK_MSG(orth, "%s d=%zu: residual of the projection not orthogonal", o->c->label, d);
        free(res), free(mag), free(Pd);
    }
    // idempotence: Π(to_dense(K)) = K exactly for the non-symmetric member K (the values are
    // copied, added to exact zeros, or averaged over equal copies)
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++)
            Kdf[i * d + j] = (float)o->Kd[i * d + j];
    o->ops->project(s, ngd_cview_rm(Kdf, d, d, d), q);
    CHECK_TENSOR(q, o->K, n, 0.0, 0.0, lbl("idempotent %s d=%zu", o->c->label, d));
    free(p), free(q), free(Kdf), free(want);
}
static void project_should_follow_rule_and_invariants(void) { for_each_class(project_body); }

// ---- products ----

// closure: K = P1 P2 (computed in ops_make) equals the dense product, zero outside the
// pattern and equal along tied positions
static void mul_body(operands *o, ref_rng *r) {
    NGD_UNUSED(r);
    const size_t d = o->d, dd = d * d;
    double *want = malloc(dd * sizeof(double)), *got = malloc(dd * sizeof(double));
    ref_matmul(d, d, d, o->P1d, o->P2d, want);
    sref_to_dense(&o->s, o->K, got);
    CHECK_REL(got, want, dd, TOL_REL, lbl("mul %s d=%zu", o->c->label, d));
    // and the product of the non-symmetric K with itself
    float *K2 = malloc(o->n * sizeof(float));
    o->ops->mul(&o->s, o->K, o->K, K2);
    ref_matmul(d, d, d, o->Kd, o->Kd, want);
    sref_to_dense(&o->s, K2, got);
    CHECK_REL(got, want, dd, TOL_REL, lbl("mul KK %s d=%zu", o->c->label, d));
    free(want), free(got), free(K2);
}
static void mul_should_close_and_match_dense(void) { for_each_class(mul_body); }

// the dense operator the class applies for mm(trans) (quirk: K for both)
static void ref_op(const operands *o, bool trans, double *L) {
    if (trans && !o->s.quirk)
        ref_transpose(o->d, o->d, o->Kd, L);
    else
        memcpy(L, o->Kd, o->d * o->d * sizeof(double));
}

static void mm_body(operands *o, ref_rng *r) {
    const size_t d = o->d, dd = d * d;
    static const size_t NS[] = {5, 70};
    double *L = malloc(dd * sizeof(double));
    for (size_t t = 0; t < 2; t++) {
        const size_t n = NS[t];
        float *Mf = malloc(d * n * sizeof(float)), *got = malloc(d * n * sizeof(float));
        double *Md = malloc(d * n * sizeof(double)), *want = malloc(d * n * sizeof(double));
        float *mbuf = malloc(2 * d * n * sizeof(float)), *obuf = malloc(2 * d * n * sizeof(float));
        rand_fd(r, Mf, Md, d * n);
        for (int trans = 0; trans < 2; trans++) {
            ref_op(o, trans, L);
            ref_matmul(d, d, n, L, Md, want);
            for (int lm = 0; lm < NLAYOUTS; lm++)
                for (int lo = 0; lo < NLAYOUTS; lo++) {
                    if (n > 5 && (lm == 2 || lo == 2)) continue; // strided: small n is enough
                    ngd_view M = layout_view(mbuf, d, n, lm), out = layout_view(obuf, d, n, lo);
                    view_from(M, Mf);
                    for (size_t i = 0; i < 2 * d * n; i++)
                        obuf[i] = NAN; // out is written
                    o->ops->mm(&o->s, o->K, trans, ngd_cv(M), out);
                    view_to(out, got);
                    CHECK_REL(got, want, d * n, TOL_REL,
                              lbl("mm %s d=%zu n=%zu trans=%d layouts %d%d", o->c->label, d, n,
                                  trans, lm, lo));
                }
        }
        free(Mf), free(got), free(Md), free(want), free(mbuf), free(obuf);
    }
    free(L);
}
static void mm_should_match_dense_for_all_layouts(void) { for_each_class(mm_body); }

// from_inner: out = beta·out + alpha·Π((Op X)(Op X)ᵀ) with Op = Kᵀ (quirk: K), and with no X
// Π(Op Opᵀ); beta = 0 must not read out (NaN there). X in every layout, 6 and 70 columns.
static void from_inner_body(operands *o, ref_rng *r) {
    const ngd_sdesc *s = &o->s;
    const size_t d = o->d, dd = d * d, n = o->n;
    static const size_t NX[] = {6, 70};
    const float alpha = 0.7f, betas[2] = {0.0f, 1.3f};
    double *Op = malloc(dd * sizeof(double)), *OpT = malloc(dd * sizeof(double));
    double *G = malloc(dd * sizeof(double)), *pi = malloc(n * sizeof(double));
    double *want = calloc(n, sizeof(double));
    float *out = malloc(n * sizeof(float));
    ref_op(o, true, Op); // the operator applied to X: Kᵀ (quirk: K)
    ref_transpose(d, d, Op, OpT);
    // beta != 0 adds onto what an optimizer accumulates there: the class's member of a
    // symmetric matrix (structure.h; the dense class's symmetric products read only its
    // lower triangle, and come out exactly symmetric)
    double *S2 = malloc(dd * sizeof(double)), *acc = malloc(n * sizeof(double));
    float *accf = malloc(n * sizeof(float));
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j <= i; j++)
            S2[i * d + j] = S2[j * d + i] = ref_uniform(r, -1, 1);
    sref_project(s, S2, acc);
    for (size_t e = 0; e < n; e++)
        accf[e] = (float)acc[e], acc[e] = (double)accf[e];
    for (size_t t = 0; t < 3; t++) {
        // t = 0, 1: X of n = 6 / 70 columns; t = 2: no X
        const size_t nx = t < 2 ? NX[t] : 0;
        float *Xf = malloc((d * nx + 1) * sizeof(float));
        double *Xd = malloc((d * nx + 1) * sizeof(double));
        double *T = malloc((d * nx + 1) * sizeof(double));
        double *Tt = malloc((d * nx + 1) * sizeof(double));
        float *xbuf = malloc((2 * d * nx + 1) * sizeof(float));
        float *ws = malloc((o->ops->ws_from_inner(s, nx) + 1) * sizeof(float));
        rand_fd(r, Xf, Xd, d * nx);
        if (t < 2) { // G = T Tᵀ with T = Op X
            ref_matmul(d, d, nx, Op, Xd, T);
            ref_transpose(d, nx, T, Tt);
            ref_matmul(d, nx, d, T, Tt, G);
        } else { // G = Op Opᵀ: Kᵀ K (quirk: K Kᵀ)
            ref_matmul(d, d, d, Op, OpT, G);
        }
        sref_project(s, G, pi);
        for (int bi = 0; bi < 2; bi++) {
            const float beta = betas[bi];
            for (size_t e = 0; e < n; e++)
                want[e] = (double)alpha * pi[e] + (beta == 0.0f ? 0.0 : (double)beta * acc[e]);
            for (int lx = 0; lx < (t < 2 ? NLAYOUTS : 1); lx++) {
                ngd_cview X = {NULL, 0, 0, 0, 0};
                if (t < 2) {
                    ngd_view Xv = layout_view(xbuf, d, nx, lx);
                    view_from(Xv, Xf);
                    X = ngd_cv(Xv);
                }
                for (size_t e = 0; e < n; e++)
                    out[e] = beta == 0.0f ? NAN : accf[e];
                o->ops->from_inner(s, o->K, X, alpha, beta, out, ws);
                CHECK_REL(out, want, n, TOL_REL,
                          lbl("from_inner %s d=%zu nx=%zu beta=%g layout %d", o->c->label, d, nx,
                              (double)beta, lx));
            }
        }
        free(Xf), free(Xd), free(T), free(Tt), free(xbuf), free(ws);
    }
    free(Op), free(OpT), free(G), free(pi), free(want), free(out), free(S2), free(acc), free(accf);
}
static void from_inner_should_match_dense_projection(void) { for_each_class(from_inner_body); }

// ---- element-wise and scalar operations ----

static void elementwise_body(operands *o, ref_rng *r) {
    NGD_UNUSED(r);
    const ngd_sdesc *s = &o->s;
    const size_t d = o->d, dd = d * d, n = o->n;
    float *p = malloc(n * sizeof(float)), *Df = malloc(dd * sizeof(float));
    double *got = malloc(dd * sizeof(double)), *want = malloc(dd * sizeof(double));
    // to_dense through the library into a column-major view
    ngd_s_to_dense(s, o->K, ngd_view_t(ngd_view_rm(Df, d, d, d)));
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++)
            got[i * d + j] = (double)Df[j * d + i];
    CHECK_TENSOR(got, o->Kd, dd, 0.0, 0.0, lbl("to_dense %s d=%zu", o->c->label, d));
    // trace, Frobenius norm, max-abs
    double tr = 0, trabs = 0, f2 = 0, mx = 0;
    for (size_t i = 0; i < d; i++)
        tr += o->Kd[i * d + i], trabs += fabs(o->Kd[i * d + i]);
    for (size_t i = 0; i < dd; i++)
        f2 += o->Kd[i] * o->Kd[i], mx = fmax(mx, fabs(o->Kd[i]));
    CHECK_CLOSE(o->ops->trace(s, o->K), tr, 0.0, TOL_SUM * (trabs + 1e-300));
    CHECK_CLOSE(ngd_s_avgtrace(s, o->K), tr / (double)d, 0.0, TOL_SUM * (trabs + 1e-300));
    CHECK_CLOSE(ngd_s_frob(s, o->K), sqrt(f2), TOL_SUM, 0.0);
    CHECK((double)ngd_s_maxabs(s, o->K) == mx);
    // diag_add(0.7)
    memcpy(p, o->K, s->n * sizeof(float));
    o->ops->diag_add(s, p, 0.7f);
    memcpy(want, o->Kd, dd * sizeof(double));
    for (size_t i = 0; i < d; i++)
        want[i * d + i] += (double)0.7f;
    sref_to_dense(s, p, got);
    CHECK_REL(got, want, dd, TOL_REL, lbl("diag_add %s d=%zu", o->c->label, d));
    // axpy: K − 0.3 P1; scale: −1.23 K; zero
    memcpy(p, o->K, s->n * sizeof(float));
    ngd_s_axpy(s, -0.3f, o->P1, p);
    double mag = 0; // K − 0.3 P1 may cancel: scale by the operands
    for (size_t i = 0; i < dd; i++) {
        want[i] = o->Kd[i] - (double)0.3f * o->P1d[i];
        mag = fmax(mag, fabs(o->Kd[i]) + 0.3 * fabs(o->P1d[i]));
    }
    sref_to_dense(s, p, got);
    CHECK_REL_SCALED(got, want, dd, TOL_REL, mag, lbl("axpy %s d=%zu", o->c->label, d));
    memcpy(p, o->K, s->n * sizeof(float));
    ngd_s_scale(s, p, -1.23f);
    for (size_t i = 0; i < dd; i++)
        want[i] = (double)-1.23f * o->Kd[i];
    sref_to_dense(s, p, got);
    CHECK_REL(got, want, dd, TOL_REL, lbl("scale %s d=%zu", o->c->label, d));
    ngd_s_zero(s, p);
    CHECK(ngd_s_maxabs(s, p) == 0.0f);
    p[s->n / 2] = -INFINITY; // the maximum sees an infinity, and a NaN anywhere propagates
    CHECK(ngd_s_maxabs(s, p) == INFINITY);
    p[s->n - 1] = NAN;
    CHECK(isnan(ngd_s_maxabs(s, p)));
    free(p), free(Df), free(got), free(want);
}
static void elementwise_ops_should_match_dense(void) { for_each_class(elementwise_body); }

// ---- the block-diagonal quirk is visible only for non-symmetric blocks (#block-diagonal) ----

static void blockdiag_quirk_should_differ_only_for_nonsymmetric_blocks(void) {
    ref_rng r = {5};
    const sclass *plain = &CLASSES[2], *quirk = &CLASSES[6]; // block3, block3-quirk
    CHECK(plain->b == 3 && !plain->quirk && quirk->b == 3 && quirk->quirk);
    const size_t d = 11, nx = 4;
    operands a = {0}, b = {0};
    ref_rng r2 = r;
    bool ok = ops_make(&a, plain, d, &r) && ops_make(&b, quirk, d, &r2); // same operands
    if (ok) {
        float X[11 * 4], out_a[11 * 4], out_b[11 * 4], ws[11 * 4];
        for (size_t i = 0; i < d * nx; i++)
            X[i] = (float)ref_uniform(&r, -1, 1);
        ngd_cview Xv = ngd_cview_rm(X, d, nx, nx);
        ngd_view Oa = ngd_view_rm(out_a, d, nx, nx), Ob = ngd_view_rm(out_b, d, nx, nx);
        double diff = 0, mag = 0;
        // non-symmetric K: Kᵀ M ≠ K M
        a.ops->mm(&a.s, a.K, true, Xv, Oa);
        b.ops->mm(&b.s, b.K, true, Xv, Ob);
        for (size_t i = 0; i < d * nx; i++)
            diff = fmax(diff, fabsf(out_a[i] - out_b[i])), mag = fmax(mag, fabsf(out_a[i]));
        CHECK_MSG(diff > 0.05 * mag, "quirk invisible for non-symmetric K: %g of %g", diff, mag);
        float Ha[200], Hb[200];
        CHECK(a.n <= 200);
        a.ops->from_inner(&a.s, a.K, Xv, 1.0f, 0.0f, Ha, ws);
        b.ops->from_inner(&b.s, b.K, Xv, 1.0f, 0.0f, Hb, ws);
        diff = 0, mag = 0;
        for (size_t i = 0; i < a.n; i++)
            diff = fmax(diff, fabsf(Ha[i] - Hb[i])), mag = fmax(mag, fabsf(Ha[i]));
        CHECK_MSG(diff > 0.05 * mag, "from_inner quirk invisible: %g of %g", diff, mag);
        // symmetric blocks (Π of a symmetric S): both modes agree, which is why the official
        // tests cannot see the quirk
        float P[200];
        a.ops->project(&a.s, ngd_cview_rm(a.S3f, d, d, d), P);
        a.ops->mm(&a.s, P, true, Xv, Oa);
        b.ops->mm(&b.s, P, true, Xv, Ob);
        CHECK_TENSOR(out_a, out_b, d * nx, 0.0, 0.0, "quirk on symmetric blocks");
    }
    ops_free(&a);
    ops_free(&b);
}

// ---- worked examples of the spec ----

static void hier_should_match_worked_projection(void) {
    // #hierarchical: Hierarchical3_2, d = 4 → (K1, m, K2) = (3, 0, 1)
    const float S[16] = {0, 5, 10, 15, 5, 10, 15, 20, 10, 15, 20, 25, 15, 20, 25, 30};
    const float want[16] = {0, 5, 10, 30, 5, 10, 15, 40, 10, 15, 20, 50, 0, 0, 0, 30};
    ngd_factor_spec f = {NGD_STRUCT_HIER, 0, 3, 2, NGD_F32};
    ngd_sdesc s;
    CHECK(ngd_sdesc_init(&s, &f, 4, false) == NGD_OK);
    CHECK(s.k1 == 3 && s.m == 0 && s.k2 == 1);
    float p[16], D[16];
    ngd_hier_ops.project(&s, ngd_cview_rm(S, 4, 4, 4), p);
    ngd_s_to_dense(&s, p, ngd_view_rm(D, 4, 4, 4));
    CHECK_TENSOR(D, want, 16, 0.0, 0.0, "hier3_2 worked example");
    // the regimes of #hierarchical
    CHECK(ngd_sdesc_init(&s, &f, 9, false) == NGD_OK);
    CHECK(s.k1 == 3 && s.m == 4 && s.k2 == 2);
}

static void toeplitz_should_match_worked_examples(void) {
    // #toeplitz: arange(16) as 4x4 → θ = (7.5, 15, 15, 15); S + Sᵀ → (15, 30, 30, 30);
    // (1,2,3,4)∘(5,6,7,8) = (5,16,34,60) for tril and triu
    float S[16], S2[16], th[4];
    for (int i = 0; i < 16; i++)
        S[i] = (float)i;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            S2[i * 4 + j] = S[i * 4 + j] + S[j * 4 + i];
    const float w1[4] = {7.5f, 15, 15, 15}, w2[4] = {15, 30, 30, 30}, w3[4] = {5, 16, 34, 60};
    const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
    for (int k = NGD_STRUCT_TRIL_TOEPLITZ; k <= NGD_STRUCT_TRIU_TOEPLITZ; k++) {
        ngd_factor_spec f = {(ngd_structure)k, 0, 0, 0, NGD_F32};
        ngd_sdesc s;
        CHECK(ngd_sdesc_init(&s, &f, 4, false) == NGD_OK);
        const ngd_structure_ops *ops = ngd_structure_get(s.kind);
        ops->project(&s, ngd_cview_rm(S, 4, 4, 4), th);
        CHECK_TENSOR(th, w1, 4, 0.0, 0.0, "toeplitz arange");
        ops->project(&s, ngd_cview_rm(S2, 4, 4, 4), th);
        CHECK_TENSOR(th, w2, 4, 0.0, 0.0, "toeplitz arange sym");
        ops->mul(&s, a, b, th);
        CHECK_TENSOR(th, w3, 4, 0.0, 0.0, "toeplitz product");
    }
}

static void corner_should_match_worked_projection(void) {
    // #corner-diagonal with S = arange(9) as 3x3 (non-symmetric): the line is S_low + S_upᵀ
    float S[9], D[9];
    for (int i = 0; i < 9; i++)
        S[i] = (float)i;
    static const struct {
        ngd_structure k;
        float want[9];
    } T[] = {
        {NGD_STRUCT_TRIL_TOPLEFT, {0, 0, 0, 0, 4, 0, 8, 12, 8}}, // last row r_j = S_2j + S_j2
        {NGD_STRUCT_TRIL_BOTRIGHT, {0, 0, 0, 4, 4, 0, 8, 0, 8}}, // first column S_i0 + S_0i
        {NGD_STRUCT_TRIU_TOPLEFT, {0, 0, 8, 0, 4, 12, 0, 0, 8}}, // last column
        {NGD_STRUCT_TRIU_BOTRIGHT, {0, 4, 8, 0, 4, 0, 0, 0, 8}}, // first row
    };
    for (size_t t = 0; t < 4; t++) {
        ngd_factor_spec f = {T[t].k, 0, 0, 0, NGD_F32};
        ngd_sdesc s;
        CHECK(ngd_sdesc_init(&s, &f, 3, false) == NGD_OK);
        float p[5];
        ngd_structure_get(s.kind)->project(&s, ngd_cview_rm(S, 3, 3, 3), p);
        ngd_s_to_dense(&s, p, ngd_view_rm(D, 3, 3, 3));
        CHECK_TENSOR(D, T[t].want, 9, 0.0, 0.0, ngd_structure_get(s.kind)->name);
    }
}

// ---- oracle replay: ../shared/oracle/structures.json ----

static const struct {
    const char *structure, *cls;
    ngd_structure kind;
    size_t b, k1, k2;
    bool quirk; // the official block-diagonal classes transpose wrongly (#block-diagonal)
} ORACLE_CLASSES[] = {
    {"dense", "DenseMatrix", NGD_STRUCT_DENSE, 0, 0, 0, false},
    {"diagonal", "DiagonalMatrix", NGD_STRUCT_DIAG, 0, 0, 0, false},
    {"block30diagonal", "Block30DiagonalMatrix", NGD_STRUCT_BLOCKDIAG, 30, 0, 0, true},
    {"block3diagonal", "Block3DiagonalMatrix", NGD_STRUCT_BLOCKDIAG, 3, 0, 0, true},
    {"hierarchical15_15", "Hierarchical15_15Matrix", NGD_STRUCT_HIER, 0, 15, 15, false},
    {"hierarchical3_2", "Hierarchical3_2Matrix", NGD_STRUCT_HIER, 0, 3, 2, false},
    {"triltoeplitz", "TrilToeplitzMatrix", NGD_STRUCT_TRIL_TOEPLITZ, 0, 0, 0, false},
    {"triutoeplitz", "TriuToeplitzMatrix", NGD_STRUCT_TRIU_TOEPLITZ, 0, 0, 0, false},
    {"triltopleftdiagonal", "TrilTopLeftDiagonalMatrix", NGD_STRUCT_TRIL_TOPLEFT, 0, 0, 0, false},
    {"trilbottomrightdiagonal", "TrilBottomRightDiagonalMatrix", NGD_STRUCT_TRIL_BOTRIGHT, 0, 0, 0,
     false},
    {"triutopleftdiagonal", "TriuTopLeftDiagonalMatrix", NGD_STRUCT_TRIU_TOPLEFT, 0, 0, 0, false},
    {"triubottomrightdiagonal", "TriuBottomRightDiagonalMatrix", NGD_STRUCT_TRIU_BOTRIGHT, 0, 0, 0,
     false},
};

static char *read_file_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long len = ftell(f);
        if (len >= 0 && fseek(f, 0, SEEK_SET) == 0) {
            buf = malloc((size_t)len + 1);
            if (buf && fread(buf, 1, (size_t)len, f) == (size_t)len)
                buf[len] = '\0';
            else
                free(buf), buf = NULL;
        }
    }
    if (fclose(f) != 0) free(buf), buf = NULL;
    return buf;
}

// reads {"shape": [rows, cols], "data": [...]} (row-major) into out; false on a mismatch
static bool json_matrix(const cJSON *m, size_t rows, size_t cols, double *out) {
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(m, "shape");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(m, "data");
    if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) != 2 || !cJSON_IsArray(data))
        return false;
    if ((size_t)cJSON_GetArrayItem(shape, 0)->valuedouble != rows ||
        (size_t)cJSON_GetArrayItem(shape, 1)->valuedouble != cols ||
        (size_t)cJSON_GetArraySize(data) != rows * cols)
        return false;
    size_t i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, data) {
        if (!cJSON_IsNumber(x)) return false;
        out[i++] = x->valuedouble;
    }
    return true;
}

typedef struct {
    double worst;          // worst max|got − ref| / max|ref|
    char where[160];       // case and output of the worst error
    size_t outputs, cases; // counts checked
} oracle_stats;

// max|entry| of a d x d reference output of the case (0 if absent)
static double oracle_matrix_scale(const cJSON *outputs, const char *name, size_t d) {
    double *m = malloc(d * d * sizeof(double)), sc = 0;
    if (json_matrix(cJSON_GetObjectItemCaseSensitive(outputs, name), d, d, m))
        sc = maxabs_d(m, d * d);
    free(m);
    return sc;
}

// Compares one output (n numbers, row-major) with the case's reference: max|got − ref| <=
// ORACLE_TOL · scale, scale = max(max|ref|, extra_scale). extra_scale is the magnitude of
// the entries a scalar is averaged from (the trace can cancel; its error is that of the
// entries).
static void oracle_check(oracle_stats *st, const char *case_label, const cJSON *outputs,
                         const char *name, const double *got, size_t rows, size_t cols,
                         double extra_scale) {
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(outputs, name);
    const size_t n = rows * cols;
    double *want = malloc(n * sizeof(double));
    bool ok = ref && (cJSON_IsNumber(ref) ? (n == 1 && (want[0] = ref->valuedouble, true))
                                          : json_matrix(ref, rows, cols, want));
    CHECK_MSG(ok, "oracle %s: output '%s' missing or of the wrong shape", case_label, name);
    if (ok) {
        double scale = fmax(maxabs_d(want, n), extra_scale), err = 0;
        for (size_t i = 0; i < n; i++) {
            double e = fabs(got[i] - want[i]);
            err = e > err || e != e ? e : err;
        }
        double rel = scale > 0 ? err / scale : err;
        if (!(rel <= st->worst)) {
            st->worst = rel;
            snprintf(st->where, sizeof st->where, "%s %s", case_label, name);
        }
        th_check_tensor(__FILE__, __LINE__, lbl("oracle %s %s", case_label, name), got, 1, want, 1,
                        n, 0.0, ORACLE_TOL * scale);
        st->outputs++;
    }
    free(want);
}

static void f2d(const float *x, double *y, size_t n) { ref_to_double(x, y, n); }

// One case: build A = Π(S1), B = Π(S2), AB = A B and check every output of oracle README 3b.
static void oracle_case(oracle_stats *st, const cJSON *cs) {
    const cJSON *jstruct = cJSON_GetObjectItemCaseSensitive(cs, "structure");
    const cJSON *jcls = cJSON_GetObjectItemCaseSensitive(cs, "class");
    const cJSON *jdim = cJSON_GetObjectItemCaseSensitive(cs, "dim");
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(cs, "inputs");
    const cJSON *out = cJSON_GetObjectItemCaseSensitive(cs, "outputs");
    const char *sname = cJSON_IsString(jstruct) ? jstruct->valuestring : "";
    const char *cname = cJSON_IsString(jcls) ? jcls->valuestring : "";
    size_t k = 0, nk = sizeof ORACLE_CLASSES / sizeof ORACLE_CLASSES[0];
    while (k < nk && strcmp(sname, ORACLE_CLASSES[k].structure) != 0 &&
           strcmp(cname, ORACLE_CLASSES[k].cls) != 0)
        k++;
    CHECK_MSG(k < nk, "oracle: unknown class '%s' / '%s'", sname, cname);
    CHECK_MSG(cJSON_IsNumber(jdim) && jdim->valuedouble >= 1, "oracle: bad dim");
    if (k == nk || !cJSON_IsNumber(jdim) || jdim->valuedouble < 1 || !in || !out) return;
    const size_t d = (size_t)jdim->valuedouble, dd = d * d, nx = 4, nm = 3;
    char case_label[64];
    snprintf(case_label, sizeof case_label, "%s d=%zu", sname, d);
    ngd_factor_spec f = {ORACLE_CLASSES[k].kind, ORACLE_CLASSES[k].b, ORACLE_CLASSES[k].k1,
                         ORACLE_CLASSES[k].k2, NGD_F32};
    ngd_sdesc s;
    const ngd_structure_ops *ops = ngd_structure_get(f.kind);
    CHECK_MSG(ops && ngd_sdesc_init(&s, &f, d, ORACLE_CLASSES[k].quirk) == NGD_OK,
              "oracle %s: class not available", case_label);
    if (!ops || s.n == 0) return;
    const size_t n = s.n;
    double *S1 = malloc(dd * sizeof(double)), *S2 = malloc(dd * sizeof(double));
    double *X = malloc(d * nx * sizeof(double)), *M = malloc(d * nm * sizeof(double));
    bool ok = json_matrix(cJSON_GetObjectItemCaseSensitive(in, "S1"), d, d, S1) &&
              json_matrix(cJSON_GetObjectItemCaseSensitive(in, "S2"), d, d, S2) &&
              json_matrix(cJSON_GetObjectItemCaseSensitive(in, "X"), d, nx, X) &&
              json_matrix(cJSON_GetObjectItemCaseSensitive(in, "M"), d, nm, M);
    CHECK_MSG(ok, "oracle %s: bad inputs", case_label);
    float *S1f = malloc(dd * sizeof(float)), *S2f = malloc(dd * sizeof(float));
    float *Xf = malloc(d * nx * sizeof(float)), *Mf = malloc(d * nm * sizeof(float));
    float *A = malloc(n * sizeof(float)), *B = malloc(n * sizeof(float));
    float *AB = malloc(n * sizeof(float)), *T = malloc(n * sizeof(float));
    float *Df = malloc(dd * sizeof(float)), *Rf = malloc(d * nm * sizeof(float));
    float *ws = malloc(ops->ws_from_inner(&s, nx) * sizeof(float) + sizeof(float));
    double *got = malloc((dd + d * nm) * sizeof(double)); // a d x d or a d x 3 output
    if (ok) {
        ref_to_float(S1, S1f, dd), ref_to_float(S2, S2f, dd);
        ref_to_float(X, Xf, d * nx), ref_to_float(M, Mf, d * nm);
        ngd_cview Xv = ngd_cview_rm(Xf, d, nx, nx), Mv = ngd_cview_rm(Mf, d, nm, nm);
        ngd_cview none = {NULL, 0, 0, 0, 0};
        ops->project(&s, ngd_cview_rm(S1f, d, d, d), A);
        ops->project(&s, ngd_cview_rm(S2f, d, d, d), B);
        ops->mul(&s, A, B, AB);
#define DENSE_OUT(name, p)                                                                         \
    do {                                                                                           \
        ngd_s_to_dense(&s, (p), ngd_view_rm(Df, d, d, d));                                         \
        f2d(Df, got, dd);                                                                          \
        oracle_check(st, case_label, out, (name), got, d, d, 0.0);                                 \
    } while (0)
#define MM_OUT(name, p, trans)                                                                     \
    do {                                                                                           \
        ops->mm(&s, (p), (trans), Mv, ngd_view_rm(Rf, d, nm, nm));                                 \
        f2d(Rf, got, d *nm);                                                                       \
        oracle_check(st, case_label, out, (name), got, d, nm, 0.0);                                \
    } while (0)
#define SCALAR_OUT(name, v, matrix)                                                                \
    do {                                                                                           \
        got[0] = (v);                                                                              \
        double sc_ = (matrix) ? oracle_matrix_scale(out, (matrix), d) : 0.0;                       \
        oracle_check(st, case_label, out, (name), got, 1, 1, sc_);                                 \
    } while (0)
        DENSE_OUT("from_dense_S1", A);
        DENSE_OUT("from_dense_S2", B);
        DENSE_OUT("product_A_B", AB);
        memcpy(T, A, s.n * sizeof(float));
        ngd_s_axpy(&s, 1.0f, B, T);
        DENSE_OUT("sum_A_B", T);
        MM_OUT("A_matmul_M", A, false);
        MM_OUT("AB_matmul_M", AB, false);
        MM_OUT("AB_rmatmat_M", AB, true);
        ops->from_inner(&s, A, Xv, 1.0f, 0.0f, T, ws);
        DENSE_OUT("A_from_inner_X", T);
        ops->from_inner(&s, AB, Xv, 1.0f, 0.0f, T, ws);
        DENSE_OUT("AB_from_inner_X", T);
        ops->from_inner(&s, AB, none, 1.0f, 0.0f, T, ws);
        DENSE_OUT("AB_from_inner_none", T);
        float *I = B; // B is no longer needed: Π(X Xᵀ) = from_inner with K = I
        ops->eye(&s, I);
        ops->from_inner(&s, I, Xv, 1.0f, 0.0f, T, ws);
        DENSE_OUT("from_mat_inner_X", T);
        SCALAR_OUT("A_average_trace", ngd_s_avgtrace(&s, A), "from_dense_S1");
        SCALAR_OUT("AB_average_trace", ngd_s_avgtrace(&s, AB), "product_A_B");
        SCALAR_OUT("AB_infinity_vector_norm", (double)ngd_s_maxabs(&s, AB), NULL);
        SCALAR_OUT("AB_frobenius_norm", ngd_s_frob(&s, AB), NULL);
        memcpy(T, A, s.n * sizeof(float));
        ops->diag_add(&s, T, 0.7f);
        DENSE_OUT("A_diag_add_0p7", T);
        memcpy(T, AB, s.n * sizeof(float));
        ngd_s_axpy(&s, -0.3f, A, T);
        DENSE_OUT("AB_add_A_alpha_m0p3", T);
        ops->eye(&s, T);
        DENSE_OUT("eye", T);
        ngd_s_zero(&s, T);
        DENSE_OUT("zeros", T);
#undef DENSE_OUT
#undef MM_OUT
#undef SCALAR_OUT
        st->cases++;
    }
    free(S1), free(S2), free(X), free(M), free(S1f), free(S2f), free(Xf), free(Mf);
    free(A), free(B), free(AB), free(T), free(Df), free(Rf), free(ws), free(got);
}

static void structures_should_match_official_oracle(void) {
    const char *shared = getenv("NGD_SHARED");
    char path[1024];
    snprintf(path, sizeof path, "%s/oracle/structures.json", shared ? shared : "../shared");
    char *text = read_file_text(path);
    CHECK_MSG(text != NULL, "cannot read %s (run from the repo root or set NGD_SHARED)", path);
    if (!text) return;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    CHECK_MSG(cJSON_IsArray(cases), "%s: no 'cases' array", path);
    oracle_stats st = {0, "", 0, 0};
    const cJSON *cs;
    cJSON_ArrayForEach(cs, cases) oracle_case(&st, cs);
    CHECK_MSG(st.cases == 54, "oracle: %zu cases replayed, want 54", st.cases);
    CHECK_MSG(st.outputs == 19 * st.cases, "oracle: %zu outputs checked, want %zu", st.outputs,
              19 * st.cases);
    printf("structures oracle: %zu cases, %zu outputs, largest error %.2e of max|ref| (%s), "
           "tolerance %.0e\n",
           st.cases, st.outputs, st.worst, st.where, ORACLE_TOL);
    printf("structures unit tests: largest error %.2e of max|ref|, tolerance %.0e\n", g_worst_rel,
           TOL_REL);
    cJSON_Delete(root);
}

// The Frobenius norm of a large factor goes by blocks of 65536 numbers over the threads: it
// must match float64 (every square is exact in double; the sum of n terms within n·ε), give
// the same bits at 1 and 2 threads, and cover a last block of a few numbers.
static void frob_should_match_float64_by_blocks_at_any_thread_count(void) {
    ref_rng r = {77};
    const size_t ds[] = {257, 1000, 3};
    for (size_t t = 0; t < sizeof ds / sizeof ds[0]; t++) {
        const size_t d = ds[t];
        ngd_factor_spec f = {NGD_STRUCT_DENSE, 0, 0, 0, NGD_F32};
        ngd_sdesc s;
        CHECK(ngd_sdesc_init(&s, &f, d, false) == NGD_OK && s.n == d * d);
        float *p = malloc(s.n * sizeof *p);
        double want = 0;
        for (size_t i = 0; i < s.n; i++) {
            p[i] = (float)ref_uniform(&r, -2.0, 2.0) * (i % 7 == 0 ? 1e3f : 1.0f);
            want += (double)p[i] * (double)p[i];
        }
        double got[2];
#ifdef _OPENMP
        const int saved = omp_get_max_threads();
        for (int v = 0; v < 2; v++) {
            omp_set_num_threads(v + 1);
            got[v] = ngd_s_frob(&s, p);
        }
        omp_set_num_threads(saved);
#else
        got[0] = got[1] = ngd_s_frob(&s, p);
#endif
        CHECK_CLOSE(got[0], sqrt(want), 1e-13, 0.0);
        CHECK(memcmp(&got[0], &got[1], sizeof got[0]) == 0);
        free(p);
    }
}

static const test_case TESTS[] = {
    TEST(frob_should_match_float64_by_blocks_at_any_thread_count),
    TEST(counts_should_match_spec_table),
    TEST(entry_map_should_match_pattern),
    TEST(eye_should_be_identity_and_fixed_by_projection),
    TEST(project_should_follow_rule_and_invariants),
    TEST(mul_should_close_and_match_dense),
    TEST(mm_should_match_dense_for_all_layouts),
    TEST(from_inner_should_match_dense_projection),
    TEST(elementwise_ops_should_match_dense),
    TEST(blockdiag_quirk_should_differ_only_for_nonsymmetric_blocks),
    TEST(hier_should_match_worked_projection),
    TEST(toeplitz_should_match_worked_examples),
    TEST(corner_should_match_worked_projection),
    TEST(structures_should_match_official_oracle),
};
int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
