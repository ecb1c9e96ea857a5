/*
 * method.h — the optimizer's internals: the handle, per-entry state, the table of
 * operations each method fills in (sgd.c adamw.c singd.c kfac_family.c ...) and the table of
 * a first-order rule (sgd.c adamw.c kfac_rule.c). optim.c is the shared driver:
 * registration, the step schedule, non-finite skipping, grad scales, health, calling the
 * tables; checkpoint.c saves and loads through the `arrays` entry.
 *
 * Legend: d_out = rows of W, d_in = columns of W, d_K = d_in + (bias ? 1 : 0) (input factor
 * size), d_C = d_out. Ĝ = [∇W | ∇b] is d_out x d_K row-major; P (the preconditioned
 * gradient) has the same shape.
 */
#ifndef NGD_METHOD_H
#define NGD_METHOD_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "impl.h"
#include "ngd.h"

typedef enum { NGD_ENTRY_LAYER = 0, NGD_ENTRY_PARAM = 1 } ngd_entry_kind;

// One named state array of an entry, for checkpoints (checkpoint.c) and state bytes.
// `bytes` of memory at `p`; dtype tells how to byte-swap (f32/bf16 elements, or raw u8).
typedef enum { NGD_ARR_F32 = 0, NGD_ARR_BF16 = 1, NGD_ARR_U8 = 2, NGD_ARR_U64 = 3 } ngd_arr_type;
typedef struct {
    const char *name;
    void *p;
    size_t count; // elements
    ngd_arr_type type;
} ngd_state_array;

#define NGD_MAX_ARRAYS 24

typedef struct ngd_entry {
    char *name;
    ngd_entry_kind kind;
    ngd_config cfg; // effective hyper-parameters (the optimizer's, or the override)
    // borrowed buffers
    float *w;        // LAYER: d_out x d_in; PARAM: n
    const float *gw; // same shape
    float *b;        // d_out or NULL
    const float *gb;
    size_t d_out, d_in, d_K, n; // PARAM: n elements (d_out = 1, d_in = n, d_K = n)
    // first-order state (d_out x d_K layout for layers, n for params)
    float *buf;         // momentum buffer (SGD / SINGD / K-FAC family), or Adam m
    float *buf2;        // Adam v
    uint64_t n_updates; // applied updates (Adam bias correction)
    uint32_t loads; // checkpoints loaded into the entry, and communicators set (methods' derived
                    // caches go stale when it changes)
    // statistics bookkeeping
    bool got_stats; // observe() ran at least once for the coming step
    bool skip;      // ngd_optim_skip: the coming step leaves this entry as it is
    bool unfolded;  // observed through ngd_optim_observe_conv: the observe scratch holds a Gram
                    // block (ngd_stats_observe_scratch); set, and the workspace planned again,
                    // at its first such call
    // method state (owned by the method)
    void *ms;
    // retained preconditioned gradient when cfg.keep_last_update
    float *last;
    // the preconditioned gradient kept between the two passes of the KL clip
    float *pk;
    ngd_layer_health h;
    double grad_ss; // Σ of the step's squared gradients (unscaled), from the step's first pass
    // data-parallel runs: the rank that does this layer's preconditioner maintenance and
    // broadcasts it (-1: every rank does it; optim.c plan_owners)
    int owner;
} ngd_entry;

struct ngd_optim {
    ngd_config cfg;
    const struct ngd_method_ops *ops;
    ngd_entry *e;
    size_t n, cap;
    size_t steps;     // completed steps t
    float scale_prev; // s_{t-1}, loss scale of the last backward (docs/algorithms.md#loss-scale)
    float scale_cur;  // s_t
    float lr_scale;   // multiplies every β2
    size_t micro;     // observes a step's batch comes in (ngd_optim_set_micro_batches; 1)
    size_t obs_micro; // the micro of this step's observes so far (0: none, or loaded)
    size_t load_len;  // the bytes of the checkpoint being checked (its checking pass), else 0
    bool planned;     // workspaces allocated (first step / first observe; again after a change
                      // of shapes: registration, a B layer's tracks, a load)
    // shared workspace (planned once): Ĝ and two ping-pong buffers of the largest layer
    float *ws;
    size_t ws_n;
    // a byte scratch of the methods (ngd_kf_scratch), sized by their scratch_bytes queries when
    // planned (ngd_optim_reserve_scratch when a method's shapes grow in observe): scratch_slots
    // slots of scratch_n bytes, one per thread that runs layers' updates side by side
    // (update_heavy; slot 0 outside them)
    void *scratch;
    size_t scratch_n, scratch_slots;
    // the side-by-side updates' order and results (planned with the entries: o->n each)
    size_t *upd_idx;
    ngd_status *upd_st;
    double time_update; // the last step's maintenance, wall time (ngd_optim_update_time)
    size_t gp;          // floats of the Ĝ and P buffers (largest entry)
    // data-parallel runs (ngd_optim_set_comm): the communicator (size 1: none), the sharing
    // policy, whether owners are chosen, and the bytes handed to the communicator
    ngd_comm comm;
    ngd_share share;
    bool owners_planned;
    uint64_t comm_bytes;
    char err[512];
    // one message at a time (err, and the log callback): recursive, the handle's own (a
    // callback of one handle may wait on threads that log through another)
    pthread_mutex_t msg_lock;
};

// ---- first-order rules: P (the preconditioned gradient) -> the parameter update ----
// Per-entry constants of one update, set by the rule's prepare (zero-initialised but for
// lr = cfg.lr · lr_scale and nu = 1).
typedef struct {
    float lr;        // effective learning rate
    float bc1, bc2s; // AdamW: 1 − β1^t, sqrt(1 − β2^t)
    float nu;        // K-FAC family: the clip factor ν
    bool decay;      // K-FAC family: weight decay active (t >= wd_start)
} ngd_rule_args;

typedef struct ngd_rule {
    const char *name;
    // 2: the rule keeps two moments, buf and buf2, always (AdamW); 0: one momentum buffer,
    // buf, only when cfg.momentum != 0
    unsigned moments;
    // the constants of this entry's update at step t (e->n_updates already counts it); P is
    // the whole d_out x d_K (or n) update; nu_kl >= 0 is a global clip's ν. May set *pss to
    // Σ P² when it computes it anyway (the driver then skips its own sum).
    void (*prepare)(const ngd_entry *e, const float *P, size_t t, float nu_kl, ngd_rule_args *a,
                    double *pss);
    // one row: w[0..n) updated from p[0..n); buf, buf2 the same row of the moments (NULL
    // when not kept)
    void (*row)(const ngd_entry *e, const ngd_rule_args *a, const float *p, float *w, float *buf,
                float *buf2, size_t n);
    // (optional) a global clip: when global(optimizer config), the driver preconditions every
    // layer first (into e->pk), sums global_term over the layers (lr_scale: the optimizer's),
    // and updates every layer with nu_kl = global_scale(config, sum)
    bool (*global)(const ngd_config *c);
    double (*global_term)(const ngd_entry *e, float lr_scale, const float *P, const float *G);
    float (*global_scale)(const ngd_config *c, double sum);
} ngd_rule;

extern const ngd_rule ngd_rule_sgd, ngd_rule_adamw, ngd_rule_kfac;

// The table of operations of one method. Entries marked (optional) may be NULL.
typedef struct ngd_method_ops {
    const char *name;
    // allocate method state for a LAYER entry (PARAM entries have none)
    ngd_status (*layer_init)(ngd_optim *o, ngd_entry *e);
    void (*layer_free)(ngd_entry *e);
    // does this layer need statistics at step t? (optional: NULL = never)
    bool (*wants_stats)(const ngd_entry *e, size_t t);
    // fold statistics into the pending accumulators (only called when wants_stats)
    ngd_status (*observe)(ngd_optim *o, ngd_entry *e, size_t batch, const ngd_matrix *a,
                          const ngd_matrix *g);
    void (*discard)(ngd_entry *e); // drop pending statistics (optional)
    // (optional) the loss scale changes from s0 to s1 (ngd_optim_set_grad_scale): pending
    // statistics divided by s0 are brought to s1
    void (*rescale)(ngd_entry *e, float s0, float s1);
    // (optional) a layer's last check before step t changes anything (after the statistics
    // check): what can fail must fail here, with a message, for the step to be all-or-nothing
    ngd_status (*check_step)(ngd_optim *o, ngd_entry *e, size_t t);
    // preconditioner maintenance for step t (called for every layer before precondition)
    ngd_status (*update)(ngd_optim *o, ngd_entry *e, size_t t);
    // (optional) whether e's update at step t does serial-heavy work (LAPACK
    // decompositions, Brand updates): in a single-process run with several threads the
    // driver then runs such layers' updates side by side, one thread each (largest `work`
    // first; their GEMMs then single-threaded), so update must touch only e's state and the
    // calling thread's scratch slot (ngd_kf_scratch)
    bool (*update_heavy)(const ngd_entry *e, size_t t);
    // P = preconditioned gradient of G (both d_out x d_K); ws has method_ws floats
    void (*precondition)(ngd_optim *o, ngd_entry *e, const float *G, float *P, float *ws);
    size_t (*precond_ws)(const ngd_entry *e); // floats of ws needed by precondition
    // (optional) bytes of the optimizer's byte scratch (o->scratch) that any of e's
    // operations needs with its current shapes (the LAPACK-style work-size query: the driver
    // allocates the largest once, when planned, so that a step never allocates)
    size_t (*scratch_bytes)(const ngd_entry *e);
    // optional fast path: when raw_ok(e), precondition_raw writes P straight from the
    // layer's gradient buffers (scaled by inv_scale), the same products as gathering Ĝ and
    // calling precondition, and the driver skips the gather (a pass over G saved)
    bool (*raw_ok)(const ngd_entry *e);
    void (*precondition_raw)(ngd_optim *o, ngd_entry *e, float inv_scale, float *P);
    // (optional) true when precondition will not read G at this step (SINGD from the step's
    // rows): the driver then skips the gather, unless a global rule reads G too
    bool (*grad_unused)(const ngd_entry *e);
    // (optional) P of a finite gradient was not finite in some of e's rows at this step (the
    // driver used the gradient's rows there): the method may restart the layer's
    // preconditioner; returns what it did, for the log, or NULL
    const char *(*restart)(ngd_optim *o, ngd_entry *e);
    // the first-order rule that turns P into the layers' update
    const ngd_rule *rule;
    // checkpoint arrays of the method state; returns the count (<= cap)
    size_t (*arrays)(ngd_entry *e, ngd_state_array *out, size_t cap);
    // checkpoints (optional): called with the values of a U64 array whose name starts with
    // '#' as soon as it is read, before the entry's other arrays are compared, so a method
    // can re-create shapes decided at run time (the K-FAC family's tracks). May allocate.
    ngd_status (*load_meta)(ngd_optim *o, ngd_entry *e, const uint64_t *v, size_t n);
    // undoes what load_meta changed when the load fails after it (the checking pass found a
    // later mismatch): `before` holds the '#' array's values from before the load
    void (*load_undo)(ngd_optim *o, ngd_entry *e, const uint64_t *before);
    // (optional) checkpoints: the values of each other U64 array in the checking pass (after
    // load_meta), which a method refuses (NGD_ERR_FORMAT, its message set) where they do not
    // fit the state they will index (counters past the buffers a file's CRC cannot vouch for)
    ngd_status (*check_u64)(ngd_optim *o, ngd_entry *e, const char *name, const uint64_t *v,
                            size_t n);
    // (optional) after a successful load, for every layer: drops what load_meta kept for an
    // undo
    void (*load_commit)(ngd_entry *e);
    // (optional) after a successful load: the health readouts that derive from the state (the
    // factors' traces, norms and ranks), as the update that made it left them, so that a
    // resumed run reports what an uninterrupted one does. May allocate; on failure leaves them.
    void (*loaded)(ngd_entry *e);
    // bytes of derived caches kept beside the state (optional; not saved, not state bytes)
    size_t (*cache_bytes)(const ngd_entry *e);
    // data-parallel runs (optional; docs/distributed.md). combine: make the pending statistics
    // of this step those of the global batch (called on every rank after every rank's
    // observe, before update). work: flops of one preconditioner maintenance of the layer,
    // and whether an owner that broadcasts the result pays off (NGD_SHARE_AUTO). update runs
    // on every rank and does the costly part only where ngd_optim_mine(); publish then
    // broadcasts from the owner what that part changed (every rank calls it, in layer order).
    ngd_status (*combine)(ngd_optim *o, ngd_entry *e);
    double (*work)(const ngd_entry *e, bool *owner_pays);
    ngd_status (*publish)(ngd_optim *o, ngd_entry *e);
    // dense forms for introspection (optional)
    ngd_status (*factor_dense)(const ngd_optim *o, const ngd_entry *e, char which, float *out);
} ngd_method_ops;

// The scratch slot of the calling thread inside the driver's side-by-side updates
// (update_all sets it around each layer's update; 0 on every other thread and call)
extern _Thread_local size_t ngd_update_slot;

extern const ngd_method_ops ngd_sgd_ops, ngd_adamw_ops, ngd_singd_ops;
extern const ngd_method_ops ngd_kfac_ops, ngd_rskfac_ops, ngd_srekfac_ops, ngd_bkfac_ops,
    ngd_brkfac_ops, ngd_brckfac_ops;

// ---- driver helpers for methods (optim.c) ----
// The method's part of the shared workspace (precond_ws floats; valid once planned).
float *ngd_optim_method_ws(ngd_optim *o);
// Grows the byte scratch to at least `bytes` now (a method whose shapes grew in observe);
// NGD_ERR_NOMEM leaves the old scratch in place.
ngd_status ngd_optim_reserve_scratch(ngd_optim *o, size_t bytes);
ngd_status ngd_optim_fail(ngd_optim *o, ngd_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void ngd_optim_log(const ngd_optim *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Σ x² in a fixed order (the same bits on every build and thread count), for health and clips.
double ngd_sumsq(const float *x, size_t n);
// Whether no x[i] is Inf or NaN (an exact scan that vectorises)
bool ngd_all_finite(const float *x, size_t n);
bool ngd_bf16_all_finite(const uint16_t *x, size_t n); // the same for bf16 values

// ---- data-parallel helpers (optim.c): collectives that count the bytes they hand over ----
// Ranks of the run (1 without a communicator).
size_t ngd_optim_world(const ngd_optim *o);
// Whether this rank does e's preconditioner maintenance (always without a communicator).
bool ngd_optim_mine(const ngd_optim *o, const ngd_entry *e);
ngd_status ngd_comm_allreduce(ngd_optim *o, float *buf, size_t n);
ngd_status ngd_comm_bcast(ngd_optim *o, void *buf, size_t bytes, int root);
ngd_status ngd_comm_allgather(ngd_optim *o, void *buf, size_t bytes);

// ---- statistics processing (stats.c; docs/algorithms.md#singd-statistics) ----
// Rows of the processed statistics of one observe call:
//   a: expand -> a->rows (= g->rows), reduce -> batch; g: expand -> g->rows, reduce -> batch.
// Validates shapes against the layer; fills the error message on failure.
ngd_status ngd_stats_check(ngd_optim *o, const ngd_entry *e, size_t batch, const ngd_matrix *a,
                           const ngd_matrix *g);
size_t ngd_stats_rows(const ngd_entry *e, size_t batch, const ngd_matrix *g);
// Writes processed rows [r0, r0+nr) of the input statistics (bias column of ones appended,
// reduce = mean over each sample's positions, bf16 decoded; NOT scaled) into out
// (nr x d_K row-major).
void ngd_stats_a_rows(const ngd_entry *e, size_t batch, const ngd_matrix *a, const ngd_matrix *g,
                      size_t r0, size_t nr, float *out);
// The same for the output gradients (reduce = sum over positions; NOT multiplied by σ):
// out is nr x d_out.
void ngd_stats_g_rows(const ngd_entry *e, size_t batch, const ngd_matrix *g, size_t r0, size_t nr,
                      float *out);
// G (d x d, d = d_K or d_out) = beta G + alpha Σ x xᵀ over one side's processed rows (kside:
// a's, else g's), read in place from the layer's f32 or bf16 matrix m (bf16: products of its
// values summed in f32, ngd_syrk_bf16) where processing them is a copy
// (no reduction; a bias column of ones enters as m's column sums and the row count): one
// product over all rows instead of one per chunk through a scratch (a conv layer's 131072
// rows of 288: 90-130 ms chunk by chunk, 61-66 in place). With beta != 0, G is symmetric on
// entry. A convolution's unfolded a (NGD_DT_UNFOLD) is taken a block of ngd_stats_block_rows
// rows at a time through scratch (ngd_stats_scratch(d) floats). False, G untouched, where the
// rows need more than a copy.
bool ngd_stats_gram(const ngd_entry *e, size_t batch, const ngd_matrix *m, bool kside, float alpha,
                    float beta, float *G, float *scratch);
// σ² of docs/algorithms.md#output-gradients (1, N, or N·R), from the unreduced g.
double ngd_stats_sigma2(const ngd_entry *e, size_t batch, const ngd_matrix *g, size_t micro);

// Row chunk used by streamed statistics (bounds the workspace).
#define NGD_STATS_CHUNK 256
// A Gram product over a convolution's rows unfolded as they are read (ngd_optim_observe_conv)
// takes them a block of about this many floats at a time (16 MB: 14513 rows of 289, so that
// the products stay long), at least NGD_STATS_CHUNK rows. (The cnn's dense-SINGD observe, ms a
// step: 17.5-18.5 from the whole unfolded matrix; blocks of 1 MB 23.6-25.5, 4 MB 20.4-21.2,
// 16 MB 18.5-20.2.)
#define NGD_STATS_BLOCK_FLOATS ((size_t)1 << 22)
static inline size_t ngd_stats_block_rows(size_t d) {
    const size_t r = NGD_STATS_BLOCK_FLOATS / (d ? d : 1);
    return r > NGD_STATS_CHUNK ? r : NGD_STATS_CHUNK;
}
// The floats of a row scratch that holds a chunk of rows, or a Gram block, of any width up to d
// (a block of width w < d takes ngd_stats_block_rows(w)·w <= max(BLOCK, CHUNK·w) floats)
static inline size_t ngd_stats_scratch(size_t d) {
    const size_t c = (size_t)NGD_STATS_CHUNK * d;
    return c > NGD_STATS_BLOCK_FLOATS ? c : NGD_STATS_BLOCK_FLOATS;
}
// The rows of width d that fit in a scratch of `floats` together with their bf16 copy, which
// goes in after them (at scratch + rows·d): a Gram block taken in f32 and rounded for the bf16
// kernels (a convolution's unfolded rows)
static inline size_t ngd_stats_block16_rows(size_t floats, size_t d) {
    return floats * 2 / (3 * (d ? d : 1));
}
// An observe's row scratch for entry e's statistics: chunks of 256 rows of its widths, or
// for a convolution observed through ngd_optim_observe_conv (e->unfolded) a Gram block too
static inline size_t ngd_stats_observe_scratch(const struct ngd_entry *e) {
    const size_t d = e->d_K > e->d_out ? e->d_K : e->d_out;
    return e->unfolded ? ngd_stats_scratch(d) : (size_t)NGD_STATS_CHUNK * d;
}

// ---- a convolution's input, unfolded as it is read (unfold.c) ----
// ngd_optim_observe_conv hands the methods `a` as a matrix of this internal dtype, whose data
// is a const ngd_unfold_src *: its rows are those of ngd_unfold (rows (n, o1, o2), columns
// (c, k1, k2)), never formed whole. ngd_stats_a_rows and ngd_stats_gram read it.
#define NGD_DT_UNFOLD ((ngd_dtype)0x55)
typedef struct {
    ngd_conv_geom g;
    ngd_matrix x; // batch rows of c_in·h·w (an image each), f32 or bf16
    size_t oh, ow, cols;
} ngd_unfold_src;
// False where the geometry or x does not fit (see ngd_optim_observe_conv)
bool ngd_unfold_src_init(ngd_unfold_src *u, const ngd_conv_geom *g, size_t batch, ngd_matrix x);
// Rows [r0, r0+nr) of the unfolded matrix into out (row r at out + (r - r0)·ldo, cols floats)
void ngd_unfold_rows(const ngd_unfold_src *u, size_t r0, size_t nr, float *out, size_t ldo);
// G (d x d, row-major) = beta·G + alpha·Xᵀ X of the unfolded rows X (a bias column of ones
// after them where d = cols + 1), for 3x3 convolutions of stride 1, padding 1, dilation 1, one
// group, f32 or bf16 images (the products of bf16 values are exact in f32), at least 8x8, not
// under bf16 emulation, computed by shifts of the image (unfold.c)
// in chunks of samples that fit `floats` of scratch. With beta != 0, G's lower triangle is read
// (G symmetric on entry). False, with G untouched, where it does not apply.
bool ngd_unfold_gram_shifts(const ngd_unfold_src *u, size_t d, float alpha, float beta, float *G,
                            float *scratch, size_t floats);
// The scratch floats ngd_unfold_gram_shifts needs for chunks of nb samples; 0 on a CPU without
// AVX-512 (there it always leaves the Gram matrix to the unfolded rows)
size_t ngd_unfold_gram_shifts_floats(const ngd_unfold_src *u, size_t d, size_t nb);
// The mean of sample n's rows (ngd_unfold's reduce row), cols floats
void ngd_unfold_mean_row(const ngd_unfold_src *u, size_t n, float *out);
// The (output position, kernel tap) pairs whose tap lies inside the image: the nonzero blocks
// of an unfolded row, summed over a sample's rows (oh·ow·k1·k2 without padding)
size_t ngd_unfold_taps(const ngd_conv_geom *g);
// The batch's images as [n][h][w][c] f32 (batch·h·w·c_in floats), for ngd_unfold_times
void ngd_unfold_nhwc(const ngd_unfold_src *u, size_t batch, float *xt);
// Y (batch·oh·ow x dn, row-major, rows (n, o1, o2)) = X M for the unfolded rows X of one
// group's images xt (ngd_unfold_nhwc) with a bias column of ones last where d = cols + 1, and
// M (d x dn, row-major), skipping the padding's zeros: one product a (position, tap) inside
// the image, of the batch's channel vectors there with M's rows of that tap (ngd_unfold_taps
// of them, each batch x c_in x dn). The same sums as the dense product up to float32 rounding
// (taps added one after another, after the bias row).
void ngd_unfold_times(const ngd_conv_geom *g, size_t batch, const float *xt, size_t d,
                      const float *M, size_t dn, float *Y);
// Output position l's rows of that product alone (l = o1·ow + o2), sample n's at Y + n·ldy
void ngd_unfold_times_at(const ngd_conv_geom *g, size_t batch, const float *xt, size_t d,
                         const float *M, size_t dn, size_t l, float *Y, size_t ldy);
#endif
