/*
 * toeplitz.c — the triangular Toeplitz structures (docs/algorithms.md#toeplitz), both in one file
 * because they share everything but the orientation: θ ∈ R^d,
 *   tril: L_ij = θ_{i−j} for i ≥ j;   triu: U_ij = θ_{j−i} for j ≥ i;   triu(θ) = tril(θ)ᵀ.
 * Storage: θ (d floats), θ_0 on the diagonal, θ_k on the k-th sub- (tril) or super- (triu)
 * diagonal.
 *
 * Products are truncated convolutions (O(d²) for two structured matrices, O(d² n) for K·M:
 * GEMMs with lag blocks of θ from d = 128, contiguous row or column axpys below). from_inner never
 * forms a d x d matrix: Π only needs the sums of the diagonals of S Sᵀ, which are lagged inner
 * products of the rows of S = Kᵀ X; Π(KᵀK) has a closed form in θ. Sums over many terms accumulate
 * in double. Legend: d = dimension, k = diagonal offset (lag), n = columns of M / X.
 */
#include <string.h>

#include "impl.h"
#include "structure.h"

// true when the matrix (not its transpose) is lower triangular
static bool tz_lower(const ngd_sdesc *s) { return s->kind == NGD_STRUCT_TRIL_TOEPLITZ; }

static size_t tz_count(const ngd_sdesc *s) { return s->d; }

static size_t tz_entry(const ngd_sdesc *s, size_t i, size_t j) {
    if (tz_lower(s)) return i >= j ? i - j : NGD_NO_ENTRY;
    return j >= i ? j - i : NGD_NO_ENTRY;
}

static void tz_eye(const ngd_sdesc *s, float *p) {
    memset(p, 0, s->d * sizeof(float));
    p[0] = 1.0f;
}

// #toeplitz: θ_0 = tr(S)/d; θ_k = (Σ_i S_{i+k,i} + Σ_i S_{i,i+k})/(d−k). This is the rule of
// structure.h for any S: the k-th diagonal's positions are tied and their mirrors are not in
// the pattern (k ≥ 1). tril and triu get the same θ.
static void tz_project(const ngd_sdesc *s, ngd_cview S, float *p) {
    const size_t d = s->d;
    for (size_t k = 0; k < d; k++) {
        double acc = 0;
        for (size_t i = 0; i + k < d; i++) {
            acc += (double)NGD_AT(S, i + k, i);
            if (k) acc += (double)NGD_AT(S, i, i + k);
        }
        p[k] = (float)(acc / (double)(d - k));
    }
}

static void tz_diag_add(const ngd_sdesc *s, float *p, float v) {
    NGD_UNUSED(s);
    p[0] += v;
}

static double tz_trace(const ngd_sdesc *s, const float *p) { return (double)s->d * (double)p[0]; }

// ‖L‖_F² = Σ_k (d−k) θ_k²: θ_k appears d−k times.
static double tz_frob2(const ngd_sdesc *s, const float *p) {
    double acc = 0;
    for (size_t k = 0; k < s->d; k++)
        acc += (double)(s->d - k) * (double)p[k] * (double)p[k];
    return acc;
}

// #toeplitz: θ''_k = Σ_{j=0}^{k} θ_j θ'_{k−j} (truncated convolution; same for tril and triu).
static void tz_mul(const ngd_sdesc *s, const float *a, const float *b, float *out) {
    for (size_t k = 0; k < s->d; k++) {
        double acc = 0;
        for (size_t j = 0; j <= k; j++)
            acc += (double)a[j] * (double)b[k - j];
        out[k] = (float)acc;
    }
}

// One column: o_i = Σ_k θ_k m_{i−k} (lower) or Σ_k θ_k m_{i+k} (upper), strides ms / os.
// Called with constant unit strides for contiguous columns, so the axpys vectorise.
static inline void tz_apply_col(const float *th, size_t d, bool lower, const float *m, ptrdiff_t ms,
                                float *o, ptrdiff_t os) {
    for (size_t i = 0; i < d; i++)
        o[(ptrdiff_t)i * os] = th[0] * m[(ptrdiff_t)i * ms];
    for (size_t k = 1; k < d; k++) {
        const float t = th[k];
        float *ok = lower ? o + (ptrdiff_t)k * os : o;
        const float *mk = lower ? m : m + (ptrdiff_t)k * ms;
        for (size_t i = 0; i < d - k; i++)
            ok[(ptrdiff_t)i * os] += t * mk[(ptrdiff_t)i * ms];
    }
}

// Blocked T M for d >= TZ_BLOCKED_MIN: with rows split into blocks of B, block (I, J) of a
// Toeplitz matrix depends only on the lag L = |I − J|, so each of the d/B lag blocks T_L
// (B x B, from θ: O(d B) work, never a d x d array) is formed once on the stack and applied
// by GEMM to every block of M it meets: the O(d² n) work runs at GEMM speed instead of as
// axpys (which made the Toeplitz structures slower than dense). Partial last blocks use the
// top-left corner of T_L.
enum { TZ_B = 64, TZ_BLOCKED_MIN = 2 * TZ_B };

static void tz_apply_blocked(const float *th, size_t d, bool lower, ngd_cview M, ngd_view out) {
    const size_t nb = (d + TZ_B - 1) / TZ_B, n = M.cols;
    float T[TZ_B * TZ_B];
    for (size_t L = 0; L < nb; L++) {
        // lower: T_L(r, c) = θ_{L·B + r − c};  upper: T_L(r, c) = θ_{L·B + c − r}; 0 outside
        for (size_t r = 0; r < TZ_B; r++)
            for (size_t c = 0; c < TZ_B; c++) {
                const ptrdiff_t k = (ptrdiff_t)(L * TZ_B) + (lower ? (ptrdiff_t)r - (ptrdiff_t)c
                                                                   : (ptrdiff_t)c - (ptrdiff_t)r);
                T[r * TZ_B + c] = k >= 0 && k < (ptrdiff_t)d ? th[k] : 0.0f;
            }
        for (size_t I = lower ? L : 0; I < (lower ? nb : nb - L); I++) {
            const size_t J = lower ? I - L : I + L;
            const size_t bI = NGD_MIN((size_t)TZ_B, d - I * TZ_B);
            const size_t bJ = NGD_MIN((size_t)TZ_B, d - J * TZ_B);
            ngd_gemm(1.0f, ngd_cview_rm(T, bI, bJ, TZ_B), ngd_cview_sub(M, J * TZ_B, bJ, 0, n),
                     L == 0 ? 0.0f : 1.0f, ngd_view_sub(out, I * TZ_B, bI, 0, n));
        }
    }
}

// out = T M for the triangular Toeplitz T(θ) (lower or upper); M and out d x n, any strides.
// #toeplitz: lower (K M)_i = Σ_{j≤i} θ_{i−j} M_j; upper (K M)_i = Σ_{j≥i} θ_{j−i} M_j.
static void tz_apply(const float *th, size_t d, bool lower, ngd_cview M, ngd_view out) {
    if (d >= TZ_BLOCKED_MIN && (M.cs == 1 || M.rs == 1) && (out.cs == 1 || out.rs == 1)) {
        tz_apply_blocked(th, d, lower, M, out);
        return;
    }
    const size_t n = M.cols;
    const bool par = d * d * n > 64 * (size_t)NGD_PAR_MIN;
    NGD_UNUSED(par); // (serial builds)
    if (M.cs == 1 && out.cs == 1) {
        // row-major: out row i is a sum of scaled rows of M (contiguous axpys of length n)
#pragma omp parallel for schedule(dynamic, 8) if (par)
        for (size_t i = 0; i < d; i++) {
            float *o = out.p + (ptrdiff_t)i * out.rs;
            const float *m0 = M.p + (ptrdiff_t)i * M.rs;
            for (size_t j = 0; j < n; j++)
                o[j] = th[0] * m0[j];
            const size_t kmax = lower ? i : d - 1 - i;
            for (size_t k = 1; k <= kmax; k++) {
                const float *mk = M.p + (ptrdiff_t)(lower ? i - k : i + k) * M.rs;
                const float t = th[k];
                for (size_t j = 0; j < n; j++)
                    o[j] += t * mk[j];
            }
        }
    } else if (M.rs == 1 && out.rs == 1) {
        // column-major: each column is a 1-D convolution over contiguous memory
#pragma omp parallel for schedule(static) if (par)
        for (size_t c = 0; c < n; c++)
            tz_apply_col(th, d, lower, M.p + (ptrdiff_t)c * M.cs, 1, out.p + (ptrdiff_t)c * out.cs,
                         1);
    } else {
        for (size_t c = 0; c < n; c++)
            tz_apply_col(th, d, lower, M.p + (ptrdiff_t)c * M.cs, M.rs,
                         out.p + (ptrdiff_t)c * out.cs, out.rs);
    }
}

// K M or Kᵀ M: the transpose of tril(θ) is triu(θ), so only the orientation changes.
static void tz_mm(const ngd_sdesc *s, const float *p, bool trans, ngd_cview M, ngd_view out) {
    tz_apply(p, s->d, tz_lower(s) != trans, M, out);
}

// Σ_i ⟨S_{i+k,:}, S_{i,:}⟩ for one lag k: the sum of the k-th sub-diagonal of S Sᵀ (which
// equals the sum of its k-th super-diagonal). Float dots over the contiguous axis, summed
// in double. S has a unit stride in one dimension (tz_from_inner lays it out so).
static double lag_sum(ngd_cview S, size_t k) {
    const size_t d = S.rows, n = S.cols;
    double acc = 0;
    if (S.cs == 1) { // rows contiguous
        for (size_t i = 0; i + k < d; i++)
            acc += (double)ngd_s_dot(S.p + (ptrdiff_t)(i + k) * S.rs, S.p + (ptrdiff_t)i * S.rs, n);
    } else { // columns contiguous (rs == 1): a lagged autocorrelation per column
        for (size_t c = 0; c < n; c++) {
            const float *col = S.p + (ptrdiff_t)c * S.cs;
            acc += (double)ngd_s_dot(col + k, col, d - k);
        }
    }
    return acc;
}

// out = beta·out + alpha·Π(Kᵀ X Xᵀ K). With S = Kᵀ X (d x n in ws, laid out like X so the
// products run on contiguous memory): #toeplitz Π of the symmetric S Sᵀ is
// θ_0 = ‖S‖²/d, θ_k = 2 Σ_i ⟨S_{i+k,:}, S_{i,:}⟩/(d−k). No X: Π(KᵀK), whose k-th diagonal
// sum is Σ_{u=0}^{d−1−k} (d−k−u) θ_u θ_{u+k} for tril and triu alike (LᵀL and L Lᵀ have the
// same diagonal sums), so θ''_k = (k ? 2 : 1)·Σ_u (d−k−u) θ_u θ_{u+k} / (d−k).
static void tz_from_inner(const ngd_sdesc *s, const float *th, ngd_cview X, float alpha, float beta,
                          float *out, float *ws) {
    const size_t d = s->d;
    if (X.p) {
        const size_t n = X.cols;
        ngd_view S =
            X.cs == 1 ? ngd_view_rm(ws, d, n, n) : (ngd_view){ws, d, n, 1, (ptrdiff_t)d}; // (d, n)
        tz_mm(s, th, true, X, S); // S = Kᵀ X
        const bool par = d * d * n > 64 * (size_t)NGD_PAR_MIN;
        NGD_UNUSED(par); // (serial builds)
#pragma omp parallel for schedule(dynamic, 4) if (par)
        for (size_t k = 0; k < d; k++) {
            double v = (k ? 2.0 : 1.0) * lag_sum(ngd_cv(S), k) / (double)(d - k);
            ngd_s_accum(&out[k], alpha, beta, v);
        }
        return;
    }
    for (size_t k = 0; k < d; k++) {
        double acc = 0;
        for (size_t u = 0; u + k < d; u++)
            acc += (double)(d - k - u) * (double)th[u] * (double)th[u + k];
        ngd_s_accum(&out[k], alpha, beta, (k ? 2.0 : 1.0) * acc / (double)(d - k));
    }
}

static size_t tz_ws(const ngd_sdesc *s, size_t n) { return s->d * n; }

const ngd_structure_ops ngd_tril_toeplitz_ops = {
    .name = "triltoeplitz",
    .count = tz_count,
    .entry = tz_entry,
    .eye = tz_eye,
    .project = tz_project,
    .diag_add = tz_diag_add,
    .trace = tz_trace,
    .frob2 = tz_frob2,
    .mul = tz_mul,
    .mm = tz_mm,
    .from_inner = tz_from_inner,
    .ws_from_inner = tz_ws,
};

const ngd_structure_ops ngd_triu_toeplitz_ops = {
    .name = "triutoeplitz",
    .count = tz_count,
    .entry = tz_entry,
    .eye = tz_eye,
    .project = tz_project,
    .diag_add = tz_diag_add,
    .trace = tz_trace,
    .frob2 = tz_frob2,
    .mul = tz_mul,
    .mm = tz_mm,
    .from_inner = tz_from_inner,
    .ws_from_inner = tz_ws,
};
