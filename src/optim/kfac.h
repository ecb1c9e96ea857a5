/*
 * kfac.h — the K-FAC family's shared layer state (docs/algorithms.md#k-fac-family), internal to
 * src/optim. kfac.c holds the common machinery (statistics, exponential averages, the
 * preconditioner application, checkpoint arrays, health) and K-FAC itself (#k-fac); rskfac.c
 * the randomized refreshes of RS-KFAC / SRE-KFAC (#rs-kfac); bkfac.c the Brand track of B-KFAC,
 * B-R-KFAC and BRC-KFAC (#brand-update to #brc-kfac).
 *
 * Each layer has two K-factors: f[KF_A] (input side, d_K = d_in (+1)) and f[KF_G] (output
 * side, d_out). Each factor is on one track:
 *   KF_EVD    dense EA + full eigendecomposition every T_i (K-FAC; any factor with d <= rank)
 *   KF_RSVD   dense EA + randomized low-rank eigendecomposition every T_i (#rsvd, #sre-kfac)
 *   KF_BRAND  Brand-updated low-rank eigendecomposition (#brand-update); dense EA only for B-R/BRC
 * The tracks of the B methods depend on the statistics (fully connected? rows per step?),
 * so they are decided at the first observe (#track-selection); the "#meta" checkpoint array lets a
 * checkpoint re-create the decision before its other arrays are read.
 */
#ifndef NGD_KFAC_H
#define NGD_KFAC_H

#include "lowrank.h"
#include "method.h"
#include "rng.h"

enum { KF_A = 0, KF_G = 1 };
typedef enum { KF_UNDECIDED = 0, KF_EVD = 1, KF_RSVD = 2, KF_BRAND = 3 } kf_track;

typedef struct {
    size_t d;   // factor size
    size_t cap; // columns of U (kept rank bound)
    kf_track track;
    float *ea;   // d x d dense exponential average (zero start; NULL if not kept)
    float *pend; // d x d pending Σ x xᵀ of this step's (scaled) rows (with ea)
    float *rows; // this step's scaled rows (rows_cap x d): the columns of the Brand update's
                 // C, and 𝒜 / 𝒢 of the factored application
    size_t rows_cap;
    float *U, *D; // the eigen-representation (d x cap, cap)
    // counters, saved: [0] k = EA updates (ρ^k identity term), [1] Brand updates since the
    // last re-orthonormalisation, [2] current rank r of (U, D), [3] the k that (U, D)
    // represents (a refresh of the EA at update k; Brand updates keep it current)
    uint64_t cnt[4];
} kf_factor;

typedef struct {
    kf_factor f[2];
    // [0] 1 once the tracks are decided, [1] columns per Brand update (the n of #track-selection),
    // [2] rows the row buffers hold, [3] track of A, [4] track of G, [5] 1 when the layer
    // uses the factored application (#factored-application: FC, factored_apply); saved first as
    // "#meta" so that a checkpoint re-creates the same shapes before its arrays are read
    uint64_t meta[6];
    ngd_rng rng; // the layer's random stream (sketches, correction subsets)
    // [0] samples in the pending EA statistics, [1] rows held in the row buffers (Brand
    // updates, factored application), [2] the per-sample conversion c of those rows
    uint64_t pend[3];
    uint8_t has_pend;
    uint8_t pub; // data-parallel runs: bit k set when factor k's (U, D) changed this step
                 // (its owner broadcasts it; not saved)
    size_t id;   // the layer's id (seeds its stream)
} kf_state;

static inline ngd_lowrank kf_rep(const kf_factor *f) {
    ngd_lowrank L = {f->U, f->D, f->d, (size_t)f->cnt[2], f->cap};
    return L;
}

// Method traits (from the effective config's method).
bool kf_is_b_family(ngd_method m);

// ---- kfac.c: shared pieces used by rskfac.c / bkfac.c ----
// A byte workspace of at least `bytes` owned by the optimizer (grown on demand; allocation
// happens only while shapes grow, i.e. on the first steps). NULL when out of memory.
void *kf_scratch(ngd_optim *o, size_t bytes);
// Allocates the state of factor f for its (decided) track; false when out of memory.
bool kf_factor_alloc(kf_factor *f, kf_track track, bool keep_ea, size_t cap, size_t rows_cap);
// Full eigendecomposition of the dense EA into (U, D) (float32, float64 retry) with health
// counting; keeps the last good decomposition on failure.
ngd_status kf_refresh_evd(ngd_optim *o, ngd_entry *e, kf_factor *f);

// ---- rskfac.c ----
// Randomized refresh of (U, D) from the dense EA at rank min(r, d): RSVD, or SREVD when
// `sre`. Numerical failure keeps the previous representation and is counted in health.
ngd_status kf_refresh_randomized(ngd_optim *o, ngd_entry *e, kf_factor *f, size_t r, bool sre);
size_t kf_randomized_ws(size_t d, size_t r, size_t p);

// ---- bkfac.c ----
// Decides both tracks of a B-family layer from its first statistics (#track-selection); allocates.
ngd_status kf_decide(ngd_optim *o, ngd_entry *e, bool fully_connected, size_t rows);
// Allocates the state for decided tracks (meta[1..4] set); used by kf_decide and on load.
ngd_status kf_apply_tracks(ngd_optim *o, ngd_entry *e);
// Grows the row buffers (Brand-track factors, or both factors of a factored layer) to hold
// `rows` rows.
ngd_status kf_grow_rows(ngd_optim *o, ngd_entry *e, size_t rows);
// The Brand-track part of one statistics step (#b-kfac, #b-r-kfac, #brc-kfac) for factor f.
ngd_status kf_brand_step(ngd_optim *o, ngd_entry *e, kf_factor *f, size_t t);
// Whether kf_brand_step changes the factor at step t (a Brand step that is not a refresh).
bool kf_brand_due(const ngd_config *c, size_t t);
// Whether kf_brand_maintain refreshes it at step t (B-R / BRC).
bool kf_refresh_due(const ngd_config *c, size_t t);
// Brand-track maintenance (B-R / BRC refresh) at step t.
ngd_status kf_brand_maintain(ngd_optim *o, ngd_entry *e, kf_factor *f, size_t t);
size_t kf_brand_rank(const ngd_config *c);

#endif
