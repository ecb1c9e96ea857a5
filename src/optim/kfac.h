/*
 * kfac.h — the K-FAC family's shared layer state (docs/algorithms.md#k-fac-family), internal to
 * src/optim. The files, each calling only those below it (no cycles):
 *   kfac_family.c  the six methods' ngd_method_ops: statistics, exponential averages, the
 *                  step's maintenance (calling the tracks), the low-rank preconditioner and the
 *                  factored application, checkpoints, data-parallel runs, introspection
 *   bkfac.c        the Brand track (B-KFAC, B-R-KFAC, BRC-KFAC) and the track selection
 *   rskfac.c       the RSVD / SREVD track (RS-KFAC, SRE-KFAC; B-R/BRC refreshes)
 *   kfac.c         the EVD track and K-FAC's eigenbasis preconditioner (exact or π-damping)
 *   kfac_common.c  what the tracks share: state allocation, the scratch, row buffers,
 *                  the identity shift, health readouts
 * and kfac_rule.c, the family's first-order rule (clips, decay, momentum; method.h's ngd_rule).
 *
 * Each layer has two K-factors: f[KF_A] (input side, d_K = d_in (+1)) and f[KF_G] (output
 * side, d_out). Each factor is on one track:
 *   KF_EVD    dense EA + full eigendecomposition every T_i (K-FAC; any factor with d <= rank)
 *   KF_RSVD   dense EA + randomized low-rank eigendecomposition every T_i (#rsvd, #sre-kfac)
 *   KF_BRAND  Brand-updated low-rank eigendecomposition (#brand-update); dense EA only for B-R/BRC
 * The tracks of the B methods depend on the statistics (fully connected? rows per step?),
 * so they are decided at the first observe (#track-selection); the "#meta" checkpoint array lets a
 * checkpoint re-create the decision before its other arrays are read.
 *
 * The counters, the meta record and the pending counts are structs of uint64_t fields, saved
 * as the U64 arrays "A.cnt"/"G.cnt", "#meta" and "~pend" in field order (the checkpoint
 * layout: do not reorder, insert or remove fields).
 */
#ifndef NGD_KFAC_H
#define NGD_KFAC_H

#include "lowrank.h"
#include "method.h"
#include "rng.h"

enum { KF_A = 0, KF_G = 1 };
typedef enum { KF_UNDECIDED = 0, KF_EVD = 1, KF_RSVD = 2, KF_BRAND = 3 } kf_track;

// A factor's counters (saved as "A.cnt" / "G.cnt", 4 x U64 in this order).
typedef struct {
    uint64_t ea_updates;   // k: EA updates so far (the ρ^k identity term)
    uint64_t since_reorth; // Brand updates since the last re-orthonormalisation
    uint64_t rank;         // current rank r of (U, D)
    uint64_t rep_k;        // the k that (U, D) represents (a refresh of the EA at update k;
                           // Brand updates keep it current)
} kf_counts;

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
    kf_counts cnt;
} kf_factor;

// The layer's decisions (saved first, as "#meta", 6 x U64 in this order, so that a checkpoint
// re-creates the same shapes before its arrays are read).
typedef struct {
    uint64_t decided;  // 1 once the tracks are decided
    uint64_t cols;     // columns per Brand update (the n of #track-selection); 0 before the
                       // first statistics
    uint64_t rows_cap; // rows the row buffers hold
    uint64_t track[2]; // kf_track of A and of G
    uint64_t factored; // 1 when the layer uses the factored application (#factored-application:
                       // FC, factored_apply)
} kf_meta;

// This step's pending statistics (saved as the transient "~pend", 3 x U64 in this order).
typedef struct {
    uint64_t samples; // samples in the pending EA statistics
    uint64_t rows;    // rows held in the row buffers (Brand updates, factored application)
    uint64_t c;       // the per-sample conversion c of those rows
} kf_pending;

_Static_assert(sizeof(kf_counts) == 4 * sizeof(uint64_t), "A.cnt is 4 U64");
_Static_assert(sizeof(kf_meta) == 6 * sizeof(uint64_t), "#meta is 6 U64");
_Static_assert(sizeof(kf_pending) == 3 * sizeof(uint64_t), "~pend is 3 U64");

typedef struct {
    kf_factor f[2];
    kf_meta meta;
    ngd_rng rng; // the layer's random stream (sketches, correction subsets)
    kf_pending pend;
    uint8_t has_pend;
    uint8_t pub;      // data-parallel runs: bit k set when factor k's (U, D) changed this step
                      // (its owner broadcasts it; not saved)
    uint8_t redecide; // loaded without the batch's rows into an optimizer with factored_apply:
                      // decided at its next statistics, as the first ones would (not saved)
    size_t id;        // the layer's id (seeds its stream)
    // K-FAC with factored π-damping (ngd_kf_inv_wanted): each factor's inverse operator
    // (F + λ_F I)⁻¹ (d x d), formed from (U, D) by the first preconditioning after a
    // refresh (NULL otherwise). Derived, so not saved: inv_ok is cleared at each refresh step;
    // inv_loads (e->loads) and inv_lam (the λ_F) are those they were formed with.
    float *inv[2];
    float inv_lam[2];
    uint32_t inv_loads;
    uint8_t inv_ok;
    // A load of a checkpoint saved before the layer's tracks were decided, into a layer that
    // has decided them: the checking pass sets the layer undecided and keeps its factors and
    // #meta here, for kfac_load_undo to put back if the load fails, kfac_load_commit to free
    // once it succeeded (never kept past the load)
    kf_factor stash[2];
    kf_meta stash_meta;
    uint8_t stashed;
} kf_state;

// A side's damping is at least this (1/λ of both sides then stays below float's 3.4e38): a
// factor without curvature (dead inputs, zero output gradients) has λ = ρ^k alone, which
// underflows after ~1700 statistics steps at ρ = 0.95, and 0·(1/λ) = 0·Inf made P NaN.
#define KF_LAMBDA_MIN 1e-19f
static inline float kf_lam_floor(float l) { return l < KF_LAMBDA_MIN ? KF_LAMBDA_MIN : l; }

static inline ngd_lowrank kf_rep(const kf_factor *f) {
    ngd_lowrank L = {f->U, f->D, f->d, (size_t)f->cnt.rank, f->cap};
    return L;
}

// ---- kfac_common.c: what every track shares ----
// Method traits (from the effective config's method).
bool ngd_kf_is_b_family(ngd_method m);
// The optimizer's byte scratch when it holds `bytes` (planned by the driver from
// kfac_scratch_bytes, or reserved by ngd_kf_grow_rows); NULL otherwise — a broken invariant
// (callers fail with NGD_ERR_INTERNAL): nothing allocates once planned.
void *ngd_kf_scratch(ngd_optim *o, size_t bytes);
// Bytes of scratch of the factored application of m rows (0 when the layer has none).
size_t ngd_kf_factored_ws(const ngd_entry *e, size_t m);
// Allocates the state of factor f for its (decided) track; false when out of memory.
bool ngd_kf_factor_alloc(kf_factor *f, kf_track track, bool keep_ea, size_t cap, size_t rows_cap);
void ngd_kf_factor_free(kf_factor *f);
// Frees both factors' state, keeping their sizes: the state of an undecided layer
void ngd_kf_factors_undecided(kf_state *s);
// Grows the row buffers (Brand-track factors, or both factors of a factored layer) to hold
// `rows` rows, and the scratch to what their factored application needs; all or nothing
// (NGD_ERR_NOMEM leaves every buffer as it was).
ngd_status ngd_kf_grow_rows(ngd_optim *o, ngd_entry *e, size_t rows);
// The identity term of #identity-init for the representation of f: ρ^k (in_damping) or 0.
float ngd_kf_id_shift(const ngd_entry *e, const kf_factor *f);
// Health readouts of both factors (traces, norms, ranks).
void ngd_kf_health(ngd_entry *e);

// ---- kfac.c: the EVD track and K-FAC's eigenbasis preconditioner ----
// Full eigendecomposition of the dense EA into (U, D) (float32, float64 retry) with health
// counting; keeps the last good decomposition on failure.
ngd_status ngd_kf_refresh_evd(ngd_optim *o, ngd_entry *e, kf_factor *f);
size_t ngd_kf_refresh_evd_ws(size_t d);
// Whether K-FAC's eigenbasis preconditioner applies (K-FAC, both decompositions full).
bool ngd_kf_eigenbasis_ok(const ngd_entry *e);
// #k-fac on the full eigendecompositions: S = precondition(J); DA, DG scratch of d_K and
// d_out floats; kws of kbytes (at least ngd_kfac_precond_ws(d_out, d_K)); rows: NULL, or
// J's rows (the factored application, ngd_kfac_precond_exact; not under emulated bf16).
ngd_status ngd_kf_precond_eigenbasis(ngd_entry *e, ngd_cview J, const ngd_kfac_rows *rows,
                                     ngd_view S, float *DA, float *DG, void *kws, size_t kbytes);
// Whether the layer keeps inverse operators: K-FAC with factored π-damping (not under emulated
// bf16), where forming them every T_i steps costs less than the products they save; kws must
// then also hold ngd_kfac_inv_ws of the wider factor.
bool ngd_kf_inv_wanted(const ngd_entry *e);
// π of factored π-damping (#k-fac, [MG15]): sqrt((tr_A / d_A) / (tr_G / d_G)); 1 when a trace
// is not positive or the result not finite.
float ngd_kf_pi(double tr_A, size_t d_A, double tr_G, size_t d_G);

// ---- rskfac.c: the RSVD track ----
// Randomized refresh of (U, D) from the dense EA at rank min(r, d): RSVD, or SREVD when
// `sre` (r >= d: the EVD track's refresh). Numerical failure keeps the previous
// representation and is counted in health.
ngd_status ngd_kf_refresh_randomized(ngd_optim *o, ngd_entry *e, kf_factor *f, size_t r, bool sre);
size_t ngd_kf_randomized_ws(size_t d, size_t r, size_t p);
// Scratch bytes of ngd_kf_refresh_randomized(.., f, r, ..).
size_t ngd_kf_refresh_randomized_ws(const ngd_entry *e, const kf_factor *f, size_t r);

// ---- bkfac.c: the Brand track and the track selection ----
size_t ngd_kf_brand_rank(const ngd_config *c);
// Track selection (#track-selection): Brand-track iff fully connected and r_B + n < d.
bool ngd_kf_brand_track_ok(bool fully_connected, size_t r_B, size_t n, size_t d);
// Decides both tracks of a B-family layer from its first statistics (#track-selection); allocates.
ngd_status ngd_kf_decide(ngd_optim *o, ngd_entry *e, bool fully_connected, size_t rows);
// Allocates the state for decided tracks (meta.cols, rows_cap, track set); used by ngd_kf_decide
// and on load. NGD_ERR_NOMEM frees what it allocated (the layer stays undecided).
ngd_status ngd_kf_apply_tracks(ngd_optim *o, ngd_entry *e);
// The Brand-track part of one statistics step (#b-kfac, #b-r-kfac, #brc-kfac) for factor f.
ngd_status ngd_kf_brand_step(ngd_optim *o, ngd_entry *e, kf_factor *f, size_t t);
// Whether ngd_kf_brand_step changes the factor at step t (a Brand step that is not a refresh).
bool ngd_kf_brand_due(const ngd_config *c, size_t t);
// Whether ngd_kf_brand_maintain refreshes it at step t (B-R / BRC).
bool ngd_kf_refresh_due(const ngd_config *c, size_t t);
// Brand-track maintenance (B-R / BRC refresh) at step t.
ngd_status ngd_kf_brand_maintain(ngd_optim *o, ngd_entry *e, kf_factor *f, size_t t);
// Scratch bytes of ngd_kf_brand_step and ngd_kf_brand_maintain for a Brand-track factor.
size_t ngd_kf_brand_ws(const ngd_entry *e, const kf_factor *f);

#endif
