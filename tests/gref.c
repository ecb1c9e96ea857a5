/* gref.c — float64 dense reference of one SINGD layer (see gref.h). */
#include "gref.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "structure.h"

// ---- patterns and the projection Π (docs/algorithms.md#projection) ----

int gref_pattern_init(gref_pattern *p, const ngd_factor_spec *spec, size_t d, bool quirk) {
    memset(p, 0, sizeof *p);
    ngd_sdesc s;
    const ngd_structure_ops *ops = ngd_structure_get(spec->kind);
    if (!ops || ngd_sdesc_init(&s, spec, d, quirk) != NGD_OK) return -1;
    p->d = d;
    p->n = s.n;
    p->idx = malloc(d * d * sizeof *p->idx);
    if (!p->idx) return -1;
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            size_t e = ops->entry(&s, i, j);
            p->idx[i * d + j] = e == NGD_NO_ENTRY ? GREF_NONE : e;
        }
    return 0;
}

void gref_pattern_free(gref_pattern *p) {
    free(p->idx);
    p->idx = NULL;
}

void gref_project(const gref_pattern *p, const double *S, double *out) {
    const size_t d = p->d;
    double *sum = calloc(p->n ? p->n : 1, sizeof *sum);
    size_t *cnt = calloc(p->n ? p->n : 1, sizeof *cnt);
    if (!sum || !cnt) abort();
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            size_t e = p->idx[i * d + j];
            if (e == GREF_NONE) continue;
            bool mirror = p->idx[j * d + i] != GREF_NONE;
            sum[e] += mirror ? S[i * d + j] : S[i * d + j] + S[j * d + i];
            cnt[e]++;
        }
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            size_t e = p->idx[i * d + j];
            out[i * d + j] = e == GREF_NONE ? 0.0 : sum[e] / (double)cnt[e];
        }
    free(sum);
    free(cnt);
}

double gref_off_pattern(const gref_pattern *p, const double *M) {
    const size_t d = p->d;
    double worst = 0;
    double *first = malloc((p->n ? p->n : 1) * sizeof *first);
    bool *seen = calloc(p->n ? p->n : 1, sizeof *seen);
    if (!first || !seen) abort();
    for (size_t i = 0; i < d * d; i++) {
        size_t e = p->idx[i];
        if (e == GREF_NONE) {
            worst = fmax(worst, fabs(M[i]));
        } else if (!seen[e]) {
            seen[e] = true;
            first[e] = M[i];
        } else {
            worst = fmax(worst, fabs(M[i] - first[e]));
        }
    }
    free(first);
    free(seen);
    return worst;
}

// ---- dense helpers ----

// C (m x n) = op(A) op(B), op(X) = X or Xᵀ; A is m x k (or k x m), B is k x n (or n x k)
static void mm(size_t m, size_t k, size_t n, const double *A, bool ta, const double *B, bool tb,
               double *C) {
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0;
            for (size_t l = 0; l < k; l++)
                s += (ta ? A[l * m + i] : A[i * k + l]) * (tb ? B[j * k + l] : B[l * n + j]);
            C[i * n + j] = s;
        }
}

static double trace(size_t d, const double *A) {
    double s = 0;
    for (size_t i = 0; i < d; i++)
        s += A[i * d + i];
    return s;
}

static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof *p);
    if (!p) abort();
    return p;
}

double gref_bf16_round(double x) {
    float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u); // ties to even (inputs here are finite)
    u &= 0xffff0000u;
    memcpy(&f, &u, sizeof f);
    return (double)f;
}

static void round_bf16_all(double *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = gref_bf16_round(x[i]);
}

// ---- the layer ----

int gref_layer_init(gref_layer *L, const ngd_config *c, size_t dK, size_t dC, const double *W0) {
    memset(L, 0, sizeof *L);
    L->dK = dK, L->dC = dC, L->T = c->T;
    L->quirkK = c->official_blockdiag_quirk && c->structure_K.kind == NGD_STRUCT_BLOCKDIAG;
    L->quirkC = c->official_blockdiag_quirk && c->structure_C.kind == NGD_STRUCT_BLOCKDIAG;
    if (gref_pattern_init(&L->pK, &c->structure_K, dK, false) ||
        gref_pattern_init(&L->pC, &c->structure_C, dC, false)) {
        gref_layer_free(L);
        return -1;
    }
    L->bf16K = c->structure_K.dtype == NGD_BF16;
    L->bf16C = c->structure_C.dtype == NGD_BF16;
    L->lr = (double)c->lr, L->momentum = (double)c->momentum, L->damping = (double)c->damping;
    L->kfac_like = c->kfac_like;
    L->alpha1 = c->kfac_like ? 0.0 : (double)c->alpha1; // README: kfac_like forces α1 = 0
    L->wd = (double)c->weight_decay, L->lr_cov = (double)c->lr_cov;
    L->normalize = c->normalize_lr_cov;
    L->K = dalloc(dK * dK), L->mK = dalloc(dK * dK), L->HK = dalloc(dK * dK);
    L->C = dalloc(dC * dC), L->mC = dalloc(dC * dC), L->HC = dalloc(dC * dC);
    L->W = dalloc(dC * dK), L->buf = dalloc(dC * dK), L->P = dalloc(dC * dK);
    for (size_t i = 0; i < dK; i++)
        L->K[i * dK + i] = 1; // K = I, C = I
    for (size_t i = 0; i < dC; i++)
        L->C[i * dC + i] = 1;
    memcpy(L->W, W0, dC * dK * sizeof *W0);
    return 0;
}

void gref_layer_free(gref_layer *L) {
    gref_pattern_free(&L->pK), gref_pattern_free(&L->pC);
    free(L->K), free(L->mK), free(L->HK), free(L->C), free(L->mC), free(L->HC);
    free(L->W), free(L->buf), free(L->P);
    memset(L, 0, sizeof *L);
}

bool gref_wants(const gref_layer *L) { return L->t % L->T == 0; }

// H += Π((Fᵀ Xᵀ)(Fᵀ Xᵀ)ᵀ) for X (rows x d); quirk: F instead of Fᵀ
static void accum_H(const gref_pattern *p, const double *F, bool quirk, size_t rows,
                    const double *X, double *H) {
    const size_t d = p->d;
    double *S = dalloc(d * rows), *SS = dalloc(d * d), *Pj = dalloc(d * d);
    mm(d, d, rows, F, !quirk, X, true, S); // S = Fᵀ Xᵀ  (quirk: F Xᵀ)
    mm(d, rows, d, S, false, S, true, SS); // S Sᵀ
    gref_project(p, SS, Pj);
    for (size_t i = 0; i < d * d; i++)
        H[i] += Pj[i];
    free(S), free(SS), free(Pj);
}

void gref_observe(gref_layer *L, size_t rows_a, const double *a, size_t rows_g, const double *g) {
    if (!gref_wants(L)) return;
    if (!L->hasH) {
        memset(L->HK, 0, L->dK * L->dK * sizeof *L->HK);
        memset(L->HC, 0, L->dC * L->dC * sizeof *L->HC);
    }
    accum_H(&L->pK, L->K, L->quirkK, rows_a, a, L->HK);
    accum_H(&L->pC, L->C, L->quirkC, rows_g, g, L->HC);
    L->hasH = true;
}

// m' = c·(cH·H + cD·FtF − I) (+ α1·m); β = β1 / max(1, max|m'|) if normalising; F ← F − β F m'
static double update_side(size_t d, double *F, double *m, const double *H, const double *FtF,
                          double cH, double cD, double c, double alpha1, double beta1,
                          bool normalize, bool bf16) {
    double *mn = dalloc(d * d), *Fm = dalloc(d * d);
    double mx = 0;
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            size_t k = i * d + j;
            mn[k] = c * (cH * H[k] + cD * FtF[k] - (i == j ? 1.0 : 0.0));
            if (alpha1 != 0) mn[k] += alpha1 * m[k];
            mx = fmax(mx, fabs(mn[k]));
        }
    double beta = normalize ? beta1 / fmax(1.0, mx) : beta1;
    mm(d, d, d, F, false, mn, false, Fm);
    for (size_t k = 0; k < d * d; k++)
        F[k] -= beta * Fm[k];
    memcpy(m, mn, d * d * sizeof *m);
    if (bf16) { // the stored factor and momentum are rounded; this step used the exact m'
        round_bf16_all(F, d * d);
        round_bf16_all(m, d * d);
    }
    free(mn), free(Fm);
    return beta;
}

static void update_preconditioner(gref_layer *L) {
    const size_t dK = L->dK, dC = L->dC;
    double *KtK = dalloc(dK * dK), *CtC = dalloc(dC * dC), *tmpK = dalloc(dK * dK),
           *tmpC = dalloc(dC * dC);
    // KtK = Π(KᵀK)  (quirk: Π(K Kᵀ))
    if (L->quirkK)
        mm(dK, dK, dK, L->K, false, L->K, true, tmpK);
    else
        mm(dK, dK, dK, L->K, true, L->K, false, tmpK);
    gref_project(&L->pK, tmpK, KtK);
    if (L->quirkC)
        mm(dC, dC, dC, L->C, false, L->C, true, tmpC);
    else
        mm(dC, dC, dC, L->C, true, L->C, false, tmpC);
    gref_project(&L->pC, tmpC, CtC);
    const double c = L->normalize ? 0.5 * (1.0 - L->alpha1) : 0.5;
    const double lam = L->damping;
    double cKH = 1, cKD = lam, cCH = 1, cCD = lam;
    if (!L->kfac_like) {
        cKH = trace(dC, L->HC) / (double)dC;
        cKD = lam * trace(dC, CtC) / (double)dC;
        cCH = trace(dK, L->HK) / (double)dK;
        cCD = lam * trace(dK, KtK) / (double)dK;
    }
    L->betaK = update_side(dK, L->K, L->mK, L->HK, KtK, cKH, cKD, c, L->alpha1, L->lr_cov,
                           L->normalize, L->bf16K);
    L->betaC = update_side(dC, L->C, L->mC, L->HC, CtC, cCH, cCD, c, L->alpha1, L->lr_cov,
                           L->normalize, L->bf16C);
    L->hasH = false;
    free(KtK), free(CtC), free(tmpK), free(tmpC);
}

void gref_step(gref_layer *L, const double *G) {
    const size_t dK = L->dK, dC = L->dC, n = dC * dK;
    if (gref_wants(L)) update_preconditioner(L);
    // P = C Cᵀ G K Kᵀ  (quirk: C C on the C side, G Kᵀ Kᵀ on the K side)
    double *KK = dalloc(dK * dK), *CC = dalloc(dC * dC), *T1 = dalloc(n);
    mm(dK, dK, dK, L->K, L->quirkK, L->K, true, KK);   // K Kᵀ (quirk: Kᵀ Kᵀ)
    mm(dC, dC, dC, L->C, false, L->C, !L->quirkC, CC); // C Cᵀ (quirk: C C)
    mm(dC, dK, dK, G, false, KK, false, T1);
    mm(dC, dC, dK, CC, false, T1, false, L->P);
    for (size_t k = 0; k < n; k++) {
        double s = L->P[k] + L->wd * L->W[k];
        L->buf[k] = L->momentum * L->buf[k] + s;
        L->W[k] -= L->lr * L->buf[k];
    }
    free(KK), free(CC), free(T1);
    L->t++;
}

// ---- processing (#singd-statistics) ----

size_t gref_process_a(ngd_kfac_approx ap, size_t N, size_t R, size_t din, const double *a_raw,
                      double *out) {
    const size_t dK = din + 1;
    size_t rows = ap == NGD_KFAC_REDUCE ? N : N * R;
    const double s = 1.0 / sqrt((double)rows);
    for (size_t r = 0; r < rows; r++) {
        for (size_t j = 0; j < din; j++) {
            double v;
            if (ap == NGD_KFAC_REDUCE) {
                v = 0;
                for (size_t p = 0; p < R; p++)
                    v += a_raw[(r * R + p) * din + j];
                v /= (double)R;
            } else {
                v = a_raw[r * din + j];
            }
            out[r * dK + j] = v * s;
        }
        out[r * dK + din] = s;
    }
    return rows;
}

size_t gref_process_g(ngd_kfac_approx ap, ngd_loss_average la, size_t N, size_t R, size_t dout,
                      const double *g_raw, double *out) {
    const double L = la == NGD_LOSS_SUM ? 1.0 : la == NGD_LOSS_BATCH ? (double)N : (double)(N * R);
    const double sigma = sqrt(L);
    size_t rows = ap == NGD_KFAC_REDUCE ? N : N * R;
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < dout; j++) {
            double v;
            if (ap == NGD_KFAC_REDUCE) {
                v = 0;
                for (size_t p = 0; p < R; p++)
                    v += g_raw[(r * R + p) * dout + j];
            } else {
                v = g_raw[r * dout + j];
            }
            out[r * dout + j] = v * sigma;
        }
    return rows;
}
