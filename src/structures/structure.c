/*
 * structure.c — the structure table, descriptors, and the operations that are the same for
 * every class (element-wise on the stored numbers). docs/algorithms.md#projection.
 */
#include "structure.h"

#include <math.h>
#include <string.h>

#include "impl.h"

const ngd_structure_ops *ngd_structure_get(ngd_structure kind) {
    const ngd_structure_ops *t = NULL;
    switch (kind) {
    case NGD_STRUCT_DENSE: t = &ngd_dense_ops; break;
    case NGD_STRUCT_DIAG: t = &ngd_diag_ops; break;
    case NGD_STRUCT_BLOCKDIAG: t = &ngd_blockdiag_ops; break;
    case NGD_STRUCT_HIER: t = &ngd_hier_ops; break;
    case NGD_STRUCT_TRIL_TOEPLITZ: t = &ngd_tril_toeplitz_ops; break;
    case NGD_STRUCT_TRIU_TOEPLITZ: t = &ngd_triu_toeplitz_ops; break;
    case NGD_STRUCT_TRIL_TOPLEFT: t = &ngd_tril_topleft_ops; break;
    case NGD_STRUCT_TRIL_BOTRIGHT: t = &ngd_tril_botright_ops; break;
    case NGD_STRUCT_TRIU_TOPLEFT: t = &ngd_triu_topleft_ops; break;
    case NGD_STRUCT_TRIU_BOTRIGHT: t = &ngd_triu_botright_ops; break;
    default: return NULL;
    }
    return t;
}

ngd_status ngd_sdesc_init(ngd_sdesc *s, const ngd_factor_spec *spec, size_t d, bool quirk) {
    memset(s, 0, sizeof *s);
    const ngd_structure_ops *ops = ngd_structure_get(spec->kind);
    if (!ops || d == 0) return NGD_ERR_ARG;
    s->kind = spec->kind;
    s->d = d;
    s->quirk = quirk && spec->kind == NGD_STRUCT_BLOCKDIAG;
    if (spec->kind == NGD_STRUCT_BLOCKDIAG) {
        if (spec->block == 0) return NGD_ERR_ARG;
        s->b = NGD_MIN(spec->block, d); // (a block of d or more: one dense d x d block)
    }
    if (spec->kind == NGD_STRUCT_HIER) {
        if (spec->k1 == 0 || spec->k2 == 0) return NGD_ERR_ARG;
        // #hierarchical: (d,0,0) if d <= k1; (k1,0,d-k1) if d <= k1+k2; else (k1,d-k1-k2,k2)
        if (d <= spec->k1) {
            s->k1 = d, s->m = 0, s->k2 = 0;
        } else if (d - spec->k1 <= spec->k2) { // (d <= k1 + k2, without the sum's overflow)
            s->k1 = spec->k1, s->m = 0, s->k2 = d - spec->k1;
        } else {
            s->k1 = spec->k1, s->m = d - spec->k1 - spec->k2, s->k2 = spec->k2;
        }
    }
    s->n = ops->count(s);
    return NGD_OK;
}

void ngd_s_zero(const ngd_sdesc *s, float *p) { memset(p, 0, s->n * sizeof(float)); }

// The element-wise operations run over the threads for large factors (the same bits: each
// element on its own; the maximum is exact in any order).
void ngd_s_axpy(const ngd_sdesc *s, float alpha, const float *x, float *y) {
    const size_t n = s->n;
#pragma omp parallel for schedule(static) if (n > NGD_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

void ngd_s_scale(const ngd_sdesc *s, float *p, float v) {
    const size_t n = s->n;
#pragma omp parallel for schedule(static) if (n > NGD_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        p[i] *= v;
}

// max |p_i| on the bits of |p_i| (ordered as the numbers are, a NaN's above them all, so a
// NaN anywhere propagates), which vectorises and reduces over the threads
float ngd_s_maxabs(const ngd_sdesc *s, const float *p) {
    const size_t n = s->n;
    uint32_t mx = 0;
#pragma omp parallel for schedule(static) reduction(max : mx) if (n > NGD_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        uint32_t a;
        memcpy(&a, &p[i], sizeof a);
        a &= 0x7fffffffu;
        mx = a > mx ? a : mx;
    }
    float m;
    memcpy(&m, &mx, sizeof m);
    return m;
}

#define FROB_LANES  16
#define FROB_BLOCK  65536 // least numbers a block: its lanes summed, then the blocks in order
#define FROB_BLOCKS 1024  // most blocks (larger ones past FROB_BLOCK·FROB_BLOCKS numbers)

// Σ p_i² of n numbers in FROB_LANES partial sums in a fixed order, which the compiler
// vectorises (one running sum waited 4 cycles an element: 0.8 ms of a 785-wide K, per
// preconditioner update)
static double frob_block(const float *p, size_t n) {
    double lane[FROB_LANES] = {0}, acc = 0;
    size_t i = 0;
    for (; i + FROB_LANES <= n; i += FROB_LANES)
        for (size_t l = 0; l < FROB_LANES; l++)
            lane[l] += (double)p[i + l] * (double)p[i + l];
    for (; i < n; i++)
        acc += (double)p[i] * (double)p[i];
    for (size_t l = 0; l < FROB_LANES; l++)
        acc += lane[l];
    return acc;
}

double ngd_s_frob(const ngd_sdesc *s, const float *p) {
    const ngd_structure_ops *ops = ngd_structure_get(s->kind);
    if (ops->frob2) return sqrt(ops->frob2(s, p));
    // by blocks over the threads, added in order: the same sum at any thread count (one
    // thread took 8 ms an update for the cnn's 4097-wide K, read once for its health readout)
    const size_t n = s->n;
    const size_t bs = NGD_MAX((size_t)FROB_BLOCK, (n + FROB_BLOCKS - 1) / FROB_BLOCKS);
    const size_t nb = (n + bs - 1) / bs;
    double part[FROB_BLOCKS];
#pragma omp parallel for schedule(static) if (n > NGD_PAR_MIN)
    for (size_t b = 0; b < nb; b++)
        part[b] = frob_block(p + b * bs, NGD_MIN(bs, n - b * bs));
    double acc = 0;
    for (size_t b = 0; b < nb; b++)
        acc += part[b];
    return sqrt(acc);
}

double ngd_s_avgtrace(const ngd_sdesc *s, const float *p) {
    return ngd_structure_get(s->kind)->trace(s, p) / (double)s->d;
}

// partial sums of ngd_s_dot: DOT_LANES independent lanes let the compiler vectorise without
// reassociating (-ffast-math is banned), and the fixed order keeps the result deterministic
#define DOT_LANES 16

float ngd_s_dot(const float *a, const float *b, size_t n) {
    float lane[DOT_LANES] = {0};
    size_t i = 0;
    for (; i + DOT_LANES <= n; i += DOT_LANES)
        for (size_t l = 0; l < DOT_LANES; l++)
            lane[l] += a[i + l] * b[i + l];
    float acc = 0.0f;
    for (; i < n; i++)
        acc += a[i] * b[i];
    for (size_t l = 0; l < DOT_LANES; l++)
        acc += lane[l];
    return acc;
}

void ngd_s_to_dense(const ngd_sdesc *s, const float *p, ngd_view out) {
    const ngd_structure_ops *ops = ngd_structure_get(s->kind);
    for (size_t i = 0; i < s->d; i++)
        for (size_t j = 0; j < s->d; j++) {
            size_t e = ops->entry(s, i, j);
            NGD_AT(out, i, j) = e == NGD_NO_ENTRY ? 0.0f : p[e];
        }
}
