/*
 * singd.c — SINGD (structured inverse-free natural gradient), and with it INGD (dense
 * factors) and IKFAC (kfac_like): docs/algorithms.md#singd-statistics, #singd-update (factor
 * update), #natural-gradient. The first-order part (coupled weight decay, momentum,
 * learning rate; #singd-step) is SGD's rule (sgd.c, ngd_rule_sgd).
 *
 * Per layer: K (d_K x d_K, input side) and C (d_C x d_C, output side) in their structure
 * classes, stored in f32 or bf16; momenta m_K, m_C only if alpha1 != 0; pending statistics
 * H_K, H_C in f32. All structured arithmetic goes through the structure table
 * (src/structures/), so no factor is ever densified. bf16 factors are decoded into the
 * shared f32 scratch for each use and rounded back after each update.
 *
 * bf16 compute (structure_K/C.compute = BF16, both factors dense and stored in bf16): the
 * products of observe (K-side (a K)ᵀ(a K) or Kᵀ(aᵀa)K, likewise C), of the update (KᵀK,
 * K·m) and of the preconditioning ((C Cᵀ) Ĝ (K Kᵀ) with the cached products rounded to
 * bf16, or from the step's rows, (𝒢 (C Cᵀ))ᵀ (𝒜 (K Kᵀ))) take bf16 operands with f32
 * accumulation (ngd_gemm_bf16); intermediate products are rounded to bf16 before they are
 * multiplied again; H_K, H_C, the element-wise update arithmetic and the traces stay f32.
 * bf16 statistics (ngd_matrix_bf16) are read as they are, with no f32 copy.
 */
#include <math.h>
#include <string.h>

#include "bf16.h"
#include "method.h"
#include "structure.h"

typedef struct {
    ngd_sdesc sK, sC;
    const ngd_structure_ops *oK, *oC;
    ngd_dtype dtK, dtC;
    void *K, *C;    // (sK.n) / (sC.n) stored numbers, dtype dtK / dtC
    void *mK, *mC;  // momenta, same shapes; NULL when alpha1 == 0 (#singd-state)
    float *HK, *HC; // pending statistics, f32
    uint8_t has_H;
    float beta1; // the factor step size β1 of this step's update (singd_check_step)
    // Dense f32 factors: K Kᵀ and C Cᵀ, formed once per preconditioner update (or after a
    // load), so that a step preconditions with 2 products, not 4 (#natural-gradient in another
    // order: P = (C Cᵀ) Ĝ (K Kᵀ)). NULL for other structures, for bf16 factors, and where
    // forming them costs more than they save (singd_init).
    float *KKt, *CCt;
    bool cache_ok;
    uint32_t cache_loads; // e->loads when the cache was formed
    // bf16 compute (see the header): the cached K Kᵀ, C Cᵀ in bf16 (each where it pays, as
    // KKt and CCt) and two bf16 scratch buffers of n16 values each; NULL otherwise
    bool bfc;
    uint16_t *KKt16, *CCt16, *s16a, *s16b;
    size_t n16;
    // The step's rows (kfac.factored_apply; #natural-gradient from the rows): a fully connected
    // layer with both products cached (in f32, or in bf16 under bf16 compute) keeps this step's
    // processed rows, 𝒜 (n x d_K) and 𝒢 (n x d_C, times c over the loss scale), so that
    // P = (1/c)(𝒢 C Cᵀ)ᵀ(𝒜 K Kᵀ) where that costs less. fact: -1 undecided (before the first
    // statistics), 0 no, 1 yes. The rows are not saved: a step is taken from them only when they
    // were observed once since the last step or load (robs == 1, rloads == e->loads), else through
    // Ĝ. rA and rG: float, or under bf16 compute the bf16 rows (𝒢 not multiplied by c: the
    // product that takes them scales by it).
    // A convolution (observed through ngd_optim_observe_conv, one group, expand, f32 products)
    // keeps its images instead of 𝒜 (rconv; rA: ngd_unfold_nhwc's batch·h·w·c_in floats, its
    // geometry in cg) where the rows pay counting only the taps inside the image (small
    // images: a 2x2 one's unfolded rows are 5/9 zeros): 𝒜 K Kᵀ skips the padding's zeros.
    int8_t fact;
    bool rconv;
    ngd_conv_geom cg;
    size_t rbatch;
    void *rA, *rG;
    size_t rcap, racap, nrows, robs;
    // A dense K side of a convolution seeing fewer rows than its width (vgg16bn's 4x4 and 2x2
    // images) takes Π(Kᵀ X Xᵀ K) from its images (NHWC, ngd_unfold_nhwc) by
    // ngd_unfold_times_at, skipping the padding's zeros: xt, xtcap floats (or rA, when the
    // step's rows kept them)
    float *xt;
    size_t xtcap;
    double rc;
    uint32_t rloads;
    // the factors' structures as resolved for this layer (kind, block, k1, k2 of K, then of
    // C): a checkpoint's "?structure", which a load must match (equal counts of numbers did
    // not tell a diagonal factor from a Toeplitz one)
    uint64_t stag[8];
} singd_state;

static size_t elsize(ngd_dtype dt) { return dt == NGD_BF16 ? 2 : 4; }

// The f32 values of a stored factor: the storage itself for f32, else decoded into scratch.
static float *fload(void *store, ngd_dtype dt, size_t n, float *scratch) {
    if (dt == NGD_F32) return store;
    ngd_bf16_decode(store, scratch, n);
    return scratch;
}

// Writes f32 values back into a stored factor (no-op when f points at f32 storage).
static void fstore(void *store, ngd_dtype dt, size_t n, const float *f) {
    if (dt == NGD_F32) {
        if (store != f) memcpy(store, f, n * sizeof(float));
    } else {
        ngd_bf16_encode(f, store, n);
    }
}

static void *falloc(size_t n, ngd_dtype dt) { return ngd_calloc(n, elsize(dt)); }

static void singd_free(ngd_entry *e) {
    singd_state *s = e->ms;
    if (!s) return;
    ngd_free(s->K), ngd_free(s->C), ngd_free(s->mK), ngd_free(s->mC);
    ngd_free(s->HK), ngd_free(s->HC);
    ngd_free(s->KKt), ngd_free(s->CCt);
    ngd_free(s->KKt16), ngd_free(s->CCt16), ngd_free(s->s16a), ngd_free(s->s16b);
    ngd_free(s->rA), ngd_free(s->rG), ngd_free(s->xt);
    ngd_free(s);
    e->ms = NULL;
}

// K = I, C = I, their momenta 0 (#singd-state): a layer's factors as they start. tK, tC:
// float scratch of K's and C's stored sizes (they may be the same).
static void factors_eye(singd_state *s, float *tK, float *tC) {
    s->oK->eye(&s->sK, tK);
    fstore(s->K, s->dtK, s->sK.n, tK);
    s->oC->eye(&s->sC, tC);
    fstore(s->C, s->dtC, s->sC.n, tC);
    if (s->mK) memset(s->mK, 0, s->sK.n * elsize(s->dtK));
    if (s->mC) memset(s->mC, 0, s->sC.n * elsize(s->dtC));
}

static ngd_status singd_init(ngd_optim *o, ngd_entry *e) {
    singd_state *s = ngd_calloc(1, sizeof *s);
    if (!s) return ngd_optim_fail(o, NGD_ERR_NOMEM, "layer '%s': out of memory", e->name);
    e->ms = s;
    const ngd_config *c = &e->cfg;
    if (ngd_sdesc_init(&s->sK, &c->structure_K, e->d_K, c->official_blockdiag_quirk) ||
        ngd_sdesc_init(&s->sC, &c->structure_C, e->d_out, c->official_blockdiag_quirk)) {
        singd_free(e);
        return ngd_optim_fail(o, NGD_ERR_ARG, "layer '%s': structure not available", e->name);
    }
    s->oK = ngd_structure_get(s->sK.kind);
    s->oC = ngd_structure_get(s->sC.kind);
    const ngd_sdesc *sds[2] = {&s->sK, &s->sC};
    for (int k = 0; k < 2; k++) {
        const ngd_sdesc *d = sds[k];
        const bool bd = d->kind == NGD_STRUCT_BLOCKDIAG, hi = d->kind == NGD_STRUCT_HIER;
        s->stag[4 * k] = (uint64_t)d->kind;
        s->stag[4 * k + 1] = bd ? d->b : 0;
        s->stag[4 * k + 2] = hi ? d->k1 : 0;
        s->stag[4 * k + 3] = hi ? d->k2 : 0;
    }
    s->fact = c->kfac.factored_apply ? -1 : 0;
    s->dtK = c->structure_K.dtype;
    s->dtC = c->structure_C.dtype;
    size_t nK = s->sK.n, nC = s->sC.n;
    s->K = falloc(nK, s->dtK);
    s->C = falloc(nC, s->dtC);
    s->HK = ngd_calloc(nK, sizeof(float));
    s->HC = ngd_calloc(nC, sizeof(float));
    bool ok = s->K && s->C && s->HK && s->HC;
    // momenta are kept only if alpha1 != 0 (#singd-state), or for inspection (keep_last_update)
    if (ok && (c->alpha1 != 0.0f || c->keep_last_update)) {
        s->mK = falloc(nK, s->dtK);
        s->mC = falloc(nC, s->dtC);
        ok = s->mK && s->mC;
    }
    // K Kᵀ costs about d_K³ per update (ngd_syrk_full's half product) and turns a step's two
    // products of 2 d_K² d_C into one: kept when that pays within the T steps of an update
    // (d_K < 2 T d_C); likewise C Cᵀ
    const size_t dK = e->d_K, dC = e->d_out, T2 = 2 * (c->T ? c->T : 1);
    s->bfc = s->sK.kind == NGD_STRUCT_DENSE && s->sC.kind == NGD_STRUCT_DENSE &&
             s->dtK == NGD_BF16 && s->dtC == NGD_BF16 && c->factor_compute == NGD_BF16;
    if (ok && s->bfc) {
        s->n16 = NGD_MAX(NGD_MAX(nK, nC), NGD_MAX(dK * dC, NGD_STATS_CHUNK * NGD_MAX(dK, dC)));
        // (the same rule as f32's below: K Kᵀ of the cnn's 4097 x 128 fc1 took about 160 ms an
        // update and saved one 128 x 4097 x 4097 product, 9-10 ms, a step)
        s->KKt16 = dK < T2 * dC ? ngd_malloc(nK, sizeof(uint16_t)) : NULL;
        s->CCt16 = dC < T2 * dK ? ngd_malloc(nC, sizeof(uint16_t)) : NULL;
        s->s16a = ngd_malloc(s->n16, sizeof(uint16_t));
        s->s16b = ngd_malloc(s->n16, sizeof(uint16_t));
        ok = (s->KKt16 || dK >= T2 * dC) && (s->CCt16 || dC >= T2 * dK) && s->s16a && s->s16b;
    }
    if (ok && s->sK.kind == NGD_STRUCT_DENSE && s->dtK == NGD_F32 && dK < T2 * dC)
        ok = (s->KKt = ngd_malloc(nK, sizeof(float))) != NULL;
    if (ok && s->sC.kind == NGD_STRUCT_DENSE && s->dtC == NGD_F32 && dC < T2 * dK)
        ok = (s->CCt = ngd_malloc(nC, sizeof(float))) != NULL;
    // f32 factors are written in place; bf16 ones go through f32 scratch (an f32 copy of
    // vgg16bn's 4609-wide K was 85 MB more to allocate and fault in: 0.67 s a layer at start)
    const bool f32K = s->dtK == NGD_F32, f32C = s->dtC == NGD_F32;
    float *tmp = ok && !(f32K && f32C) ? ngd_malloc(NGD_MAX(nK, nC), sizeof(float)) : NULL;
    if (!ok || (!tmp && !(f32K && f32C))) {
        singd_free(e);
        return ngd_optim_fail(o, NGD_ERR_NOMEM, "layer '%s': out of memory for factors", e->name);
    }
    factors_eye(s, f32K ? (float *)s->K : tmp, f32C ? (float *)s->C : tmp);
    ngd_free(tmp);
    return NGD_OK;
}

// ---- the shared scratch of one layer ----
// A side's slots: [0] its decoded factor, [1] Π(LᵀL), [2] the new momentum (update) or Σ x xᵀ
// (observe), each of its n stored numbers, and [3] a product: n numbers, or for a dense side a
// panel of panel_rows(d) rows (f32 statistics' Lᵀ (X Xᵀ) by row panels; the update's L·m_new goes
// into H). [2] is [1]: m_new is formed in place of Π(LᵀL), element by element, and observe uses
// no Π(LᵀL). [0] has a slot of its own only for bf16 storage in f32 compute, where the decoded L
// and Π(LᵀL) meet in the update: f32 storage is read in place, and bf16 compute decodes only for
// the health readouts after an update, into [1]. So a dense side of d > 1024 holds d² floats and
// a panel, where it held 4 d² (the cnn's 4097-wide fc1: 197 MB less allocated, 130 MB less peak
// RSS, as the unused [0] was never written).
typedef struct {
    float *fK[4], *fC[4]; // the slots, as above
    float *chunk;         // ngd_stats_observe_scratch: processed statistics rows
    float *fi;            // from_inner workspace
    float *X, *Y;         // 2 x d_out*d_K: natural-gradient ping-pong
} singd_ws;

static size_t fi_need(const singd_state *s) {
    return NGD_MAX(s->oK->ws_from_inner(&s->sK, NGD_STATS_CHUNK),
                   s->oC->ws_from_inner(&s->sC, NGD_STATS_CHUNK));
}

// A dense side's statistics products (gram_sandwich) go by row panels of at least
// NGD_STATS_CHUNK rows and about 1 M floats (slot [3]): the whole d x d product for d up to
// 1024, 16 panels of 256 rows at 4097 (67 MB of scratch less)
static size_t panel_rows(size_t d) {
    const size_t r = NGD_MAX(((size_t)1 << 20) / d, (size_t)NGD_STATS_CHUNK);
    return NGD_MIN(r, d);
}

static size_t slot3_n(const ngd_sdesc *sd) {
    if (sd->kind != NGD_STRUCT_DENSE) return sd->n;
    return panel_rows(sd->d) * sd->d;
}

// Whether a side's slot [0] is its own (bf16 storage decoded for f32 compute)
static bool own_decode(const singd_state *s, ngd_dtype dt) { return dt == NGD_BF16 && !s->bfc; }

static size_t side_floats(const singd_state *s, ngd_dtype dt, const ngd_sdesc *sd) {
    return (own_decode(s, dt) ? 2 : 1) * sd->n + slot3_n(sd);
}

static size_t singd_ws_size(const ngd_entry *e) {
    const singd_state *s = e->ms;
    return side_floats(s, s->dtK, &s->sK) + side_floats(s, s->dtC, &s->sC) +
           ngd_stats_observe_scratch(e) + fi_need(s) + 2 * e->n;
}

static float *side_layout(const singd_state *s, ngd_dtype dt, const ngd_sdesc *sd, float *p,
                          float *f[4]) {
    const size_t n = sd->n;
    f[1] = f[2] = p, p += n;
    f[3] = p, p += slot3_n(sd);
    f[0] = f[1];
    if (own_decode(s, dt)) f[0] = p, p += n;
    return p;
}

static singd_ws ws_layout(const ngd_entry *e, float *p) {
    const singd_state *s = e->ms;
    singd_ws w;
    p = side_layout(s, s->dtK, &s->sK, p, w.fK);
    p = side_layout(s, s->dtC, &s->sC, p, w.fC);
    w.chunk = p, p += ngd_stats_observe_scratch(e);
    w.fi = p, p += fi_need(s);
    w.X = p, p += e->n;
    w.Y = p;
    return w;
}

// Preconditioner update steps
static bool update_step(const ngd_entry *e, size_t t) { return t % e->cfg.T == 0; }

// Statistics steps: the update steps; with the step's rows (fact), every step
static bool singd_wants(const ngd_entry *e, size_t t) {
    const singd_state *s = e->ms;
    return update_step(e, t) || s->fact != 0;
}

// Whether the rows pay: (𝒢 C Cᵀ, 𝒜 K Kᵀ, their product) n (d_C² + d_K² + d_C d_K) against
// C Cᵀ Ĝ K Kᵀ's d_C d_K (d_C + d_K) multiply-adds. Where they do, X (n x d_C) and Y (n x d_K)
// fit in the ping-pong buffers' 2 d_C d_K floats.
static bool rows_pay(size_t n, size_t dC, size_t dK) {
    return (double)n * ((double)dC * dC + (double)dK * dK + (double)dC * dK) <
           (double)dC * dK * ((double)dC + dK);
}

// The same for a convolution's n = batch·oh·ow rows through ngd_unfold_times: 𝒜 K Kᵀ costs
// batch·taps·c_in·d_K (the taps inside the image) instead of n·d_K². X and Y must fit in the
// ping-pong buffers (no longer implied where few taps are inside).
static bool conv_rows_pay(const ngd_conv_geom *g, size_t batch, size_t n, size_t dC, size_t dK) {
    const double taps = (double)ngd_unfold_taps(g);
    return (double)n * ((double)dC * dC + (double)dC * dK) +
                   (double)batch * taps * (double)g->c_in * dK <
               (double)dC * dK * ((double)dC + dK) &&
           (double)n * ((double)dC + dK) <= 2.0 * dC * dK;
}

// A convolution's statistics that ngd_unfold_times can take from its images (observed through
// ngd_optim_observe_conv, one group, expand, the layer's own columns): its source, else NULL
static const ngd_unfold_src *conv_images_src(const ngd_entry *e, const ngd_matrix *a) {
    if (a->dtype != NGD_DT_UNFOLD || e->cfg.kfac_approx == NGD_KFAC_REDUCE) return NULL;
    const ngd_unfold_src *u = a->data;
    return u->g.groups == 1 && (e->d_K == u->cols || e->d_K == u->cols + 1) ? u : NULL;
}

// Whether a convolution's rows can be kept as its images (f32, both products cached)
static bool conv_rows_ok(const ngd_entry *e, const singd_state *s, const ngd_matrix *a) {
    return !s->bfc && s->KKt && s->CCt && conv_images_src(e, a);
}

// Whether this step's rows are there for the preconditioning (taken once since the last step
// or load)
static bool rows_ready(const ngd_entry *e) {
    const singd_state *s = e->ms;
    return s->nrows > 0 && s->robs == 1 && s->rloads == e->loads;
}

// Keeps the step's processed rows (fact: a fully connected layer, i.e. one observed row a
// sample, not a sequence's rows reduced to one; both products cached, one process; decided at
// its first statistics): 𝒜 as the statistics take it, 𝒢 times c / s_t,
// c = the batch (a mean loss) or 1, so that Ĝ = (1/c) 𝒢ᵀ𝒜.
static void rows16(const ngd_entry *e, size_t batch, const ngd_matrix *a, const ngd_matrix *g,
                   bool kside, size_t r0, size_t nr, float *f32, uint16_t *out);

// chunk: f32 scratch of NGD_STATS_CHUNK rows (bf16 compute's rows from f32 matrices)
static void keep_rows(ngd_optim *o, ngd_entry *e, singd_state *s, size_t batch, const ngd_matrix *a,
                      const ngd_matrix *g, float *chunk) {
    const size_t rows = ngd_stats_rows(e, batch, g), dK = e->d_K, dC = e->d_out;
    const bool conv = conv_rows_ok(e, s, a); // (a convolution's images, not its rows)
    const ngd_conv_geom *cg = conv ? &((const ngd_unfold_src *)a->data)->g : NULL;
    if (s->fact < 0) // (a convolution: where its rows pay at this batch, as they are every step)
        s->fact = (g->rows == batch || (conv && conv_rows_pay(cg, batch, rows, dC, dK))) &&
                  ((s->KKt && s->CCt) || (s->KKt16 && s->CCt16)) && ngd_optim_world(o) == 1;
    s->nrows = 0;
    if (s->fact <= 0 || ngd_optim_world(o) != 1) return; // (data-parallel: the rows are local)
    if (o->micro > 1) return; // (micro-batches: no one observe's rows make the gradient)
    // (a later batch of several rows a sample, reduced: their mean a and summed g do not make
    // the gradient, so Ĝ this step, as the K-FAC family does)
    if (g->rows != batch && !conv) return;
    s->robs = s->rloads == e->loads ? s->robs + 1 : 1;
    s->rloads = e->loads;
    if (s->robs > 1 || !(conv ? conv_rows_pay(cg, batch, rows, dC, dK) : rows_pay(rows, dC, dK)))
        return; // (Ĝ this step)
    const size_t el = s->bfc ? sizeof(uint16_t) : sizeof(float);
    // (a convolution keeps batch·h·w·c_in floats of images in place of the n x d_K rows)
    const size_t acap = conv ? batch * cg->h * cg->w * cg->c_in : rows * dK;
    if (rows > s->rcap || acap > s->racap) { // the first statistics, or a larger batch
        ngd_free(s->rA), ngd_free(s->rG);
        s->rA = ngd_malloc(acap, el);
        s->rG = ngd_malloc(rows, dC * el);
        s->rcap = s->rA && s->rG ? rows : 0;
        s->racap = s->rcap ? acap : 0;
        if (!s->rcap) return; // (out of memory: Ĝ, as without the option)
    }
    s->rconv = conv;
    // (the loss scale divides P at the step, singd_precondition: a client may set this step's
    // scale after its observe calls, ngd.torch's order, and scale_cur is still the last one's)
    const double c = e->cfg.loss_average == NGD_LOSS_SUM ? 1.0 : (double)batch;
    const float wg = (float)c;
    if (s->bfc) { // bf16 rows as they come (bf16 matrices copied, others rounded)
        uint16_t *A16 = s->rA, *G16 = s->rG;
        for (size_t r0 = 0; r0 < rows; r0 += NGD_STATS_CHUNK) {
            const size_t nr = NGD_MIN((size_t)NGD_STATS_CHUNK, rows - r0);
            rows16(e, batch, a, g, true, r0, nr, chunk, A16 + r0 * dK);
            rows16(e, batch, a, g, false, r0, nr, chunk, G16 + r0 * dC);
        }
        if (!ngd_bf16_all_finite(A16, rows * dK) || !ngd_bf16_all_finite(G16, rows * dC)) return;
        s->nrows = rows;
        s->rc = c;
        return;
    }
    float *rA = s->rA, *rG = s->rG;
    if (conv) {
        ngd_unfold_nhwc(a->data, batch, rA);
        s->cg = *cg, s->rbatch = batch;
    }
    for (size_t r0 = 0; r0 < rows; r0 += NGD_STATS_CHUNK) {
        const size_t nr = NGD_MIN((size_t)NGD_STATS_CHUNK, rows - r0);
        if (!conv) ngd_stats_a_rows(e, batch, a, g, r0, nr, rA + r0 * dK);
        ngd_stats_g_rows(e, batch, g, r0, nr, rG + r0 * dC);
    }
    ngd_view_scale_f32(ngd_view_rm(rG, rows, dC, dC), wg);
    // (non-finite rows would make P NaN while Ĝ is finite: Ĝ then, as the update refuses
    //  such statistics)
    if (!ngd_all_finite(rA, conv ? acap : rows * dK) || !ngd_all_finite(rG, rows * dC)) return;
    s->nrows = rows;
    s->rc = c;
}

// #singd-statistics: H_K += Π_K(Kᵀ aᵀa K) with a = processed inputs / sqrt(rows), and
// H_C += Π_C(Cᵀ gᵀg C) with g = processed output-gradients · σ / sqrt(s_{t-1}).
// ---- bf16 compute (dense K and C) ----

// Rows [r0, r0+nr) of the processed statistics of one side, in bf16: a bf16 matrix that
// needs no reduction is copied as it is (plus the bias column's 1), anything else goes
// through the f32 rows of stats.c and is rounded.
static void rows16(const ngd_entry *e, size_t batch, const ngd_matrix *a, const ngd_matrix *g,
                   bool kside, size_t r0, size_t nr, float *f32, uint16_t *out) {
    const bool reduce = e->cfg.kfac_approx == NGD_KFAC_REDUCE;
    const ngd_matrix *m = kside ? a : g;
    const size_t d = kside ? e->d_K : e->d_out, dm = kside ? e->d_in : e->d_out;
    if (m->dtype == NGD_BF16 && (!reduce || m->rows == batch)) {
        for (size_t r = 0; r < nr; r++) {
            memcpy(out + r * d, (const uint16_t *)m->data + (r0 + r) * m->ld,
                   dm * sizeof(uint16_t));
            if (d > dm) out[r * d + dm] = 0x3f80u; // 1.0: the bias column
        }
        return;
    }
    if (kside)
        ngd_stats_a_rows(e, batch, a, g, r0, nr, f32);
    else
        ngd_stats_g_rows(e, batch, g, r0, nr, f32);
    ngd_bf16_encode(f32, out, nr * d);
}

// H = beta0 H + alpha Lᵀ (Σ_rows x xᵀ) L for one dense side in bf16 (L: the stored factor).
// f2: d x d f32 scratch.
static void observe_side16(const ngd_entry *e, singd_state *s, size_t batch, const ngd_matrix *a,
                           const ngd_matrix *g, bool kside, float alpha, float *chunk, float *f2) {
    const size_t rows = ngd_stats_rows(e, batch, g), d = kside ? e->d_K : e->d_out;
    const uint16_t *L = kside ? s->K : s->C;
    float *H = kside ? s->HK : s->HC;
    const float beta0 = s->has_H ? 1.0f : 0.0f;
    const bool gram = rows > d; // as the f32 path: Σ x xᵀ first when that is cheaper
    // a layer's bf16 rows (more than the width: vit's and chargpt's 8192 tokens) go to one
    // Xᵀ X product with no copy, the bias column's entries summed apart (ngd_stats_gram); they
    // were copied by chunks of 256 rows, one product each (observe 4.0 ms a step against f32's
    // 2.2, which took that way from the start)
    // So do a convolution's rows from bf16 images (their values, unrounded, are bf16 already):
    // a 3x3 one's by the shifts of ngd_unfold_gram_shifts
    const ngd_matrix *m = kside ? a : g;
    const bool b16rows =
        m->dtype == NGD_BF16 ||
        (m->dtype == NGD_DT_UNFOLD && ((const ngd_unfold_src *)m->data)->x.dtype == NGD_BF16);
    const bool direct =
        gram && b16rows && ngd_stats_gram(e, batch, m, kside, 1.0f, 0.0f, f2, chunk);
    // Blocks of 256 rows, rounded into s16a; a convolution's Gram (its scratch holds a Gram
    // block of 16 MB) takes as many rows as fit in the scratch's first two thirds, rounded into
    // its last third: the cnn's 131072 rows went by 512 products of 256 rows a side and layer
    size_t br = NGD_STATS_CHUNK;
    uint16_t *x16 = s->s16a;
    if (gram && e->unfolded) {
        const size_t big = ngd_stats_block16_rows(ngd_stats_observe_scratch(e), d);
        if (big > br) br = big, x16 = (uint16_t *)(void *)(chunk + big * d);
    }
    // H (+)= Tᵀ T of a factor of 2048+ rows by block rows of its lower triangle, mirrored once
    // after the chunks: d = 4609, 256 rows, 13.6 -> 8.0-8.7 ms a chunk (ngd_syrk_bf16_lower)
    const bool lower = !gram && d >= 2048 && NGD_MIN(br, rows) >= 128;
    for (size_t r0 = 0; r0 < rows && !direct; r0 += br) {
        const size_t nr = NGD_MIN(br, rows - r0);
        rows16(e, batch, a, g, kside, r0, nr, chunk, x16); // X (nr x d)
        if (gram) {                                        // f2 (+)= Xᵀ X
            ngd_gemm_bf16(true, false, d, d, nr, 1.0f, x16, d, x16, d, r0 ? 1.0f : 0.0f, f2, d);
        } else { // T = X L (nr x d, nr <= rows <= d), H (+)= alpha Tᵀ T
            ngd_gemm_bf16_16(false, false, nr, d, d, 1.0f, x16, d, L, d, s->s16b, d);
            if (lower)
                ngd_syrk_bf16_lower(true, d, nr, alpha, s->s16b, d, r0 ? 1.0f : beta0, H, d);
            else
                ngd_gemm_bf16(true, false, d, d, nr, alpha, s->s16b, d, s->s16b, d,
                              r0 ? 1.0f : beta0, H, d);
        }
    }
    if (lower) ngd_mirror_lower(ngd_view_rm(H, d, d, d));
    if (gram) { // H = beta0 H + alpha (Lᵀ G16) L, Lᵀ G16 by row panels (as the f32 path)
        ngd_bf16_encode(f2, s->s16a, d * d);
        const size_t pr = panel_rows(d);
        for (size_t r0 = 0; r0 < d; r0 += pr) {
            const size_t nr = NGD_MIN(pr, d - r0);
            ngd_gemm_bf16_16(true, false, nr, d, d, 1.0f, L + r0, d, s->s16a, d, s->s16b + r0 * d,
                             d);
        }
        ngd_gemm_bf16(false, false, d, d, d, alpha, s->s16b, d, L, d, beta0, H, d);
    }
}

// H = β0 H + α Lᵀ G L (dense, d x d), by row panels of Lᵀ G through t (slot [3]). With more
// than one panel, each forms only its rows' columns up to its diagonal block (H is symmetric:
// the rest is mirrored from them), so the second product costs about half: d = 2305, 2
// threads, 150 -> 115 ms (vgg16bn's block-3 convolutions, rows > d).
static void gram_sandwich(size_t d, const float *L, const float *G, float alpha, float beta0,
                          float *H, float *t) {
    const ngd_cview Lv = ngd_cview_rm(L, d, d, d), Lt = ngd_cview_t(Lv);
    const size_t pr = panel_rows(d);
    for (size_t r0 = 0; r0 < d; r0 += pr) {
        const size_t nr = NGD_MIN(pr, d - r0), nc = pr < d ? r0 + nr : d;
        ngd_gemm(1.0f, ngd_cview_sub(Lt, r0, nr, 0, d), ngd_cview_rm(G, d, d, d), 0.0f,
                 ngd_view_rm(t, nr, d, d));
        ngd_gemm(alpha, ngd_cview_rm(t, nr, d, d), ngd_cview_sub(Lv, 0, d, 0, nc), beta0,
                 ngd_view_rm(H + r0 * d, nr, nc, d));
    }
    if (pr < d) ngd_mirror_lower(ngd_view_rm(H, d, d, d));
}

// The images of a convolution whose dense K side sees fewer rows than its width, for
// Sᵀ = X K skipping the padding's zeros where that has fewer multiply-adds (taps inside the
// image against every position's k1·k2): the step's kept images (rA) or xt; NULL otherwise
// (then the unfolded rows, as before; also without memory for xt)
static const float *stat_images(const ngd_entry *e, singd_state *s, size_t batch,
                                const ngd_matrix *a) {
    const ngd_unfold_src *u = s->sK.kind == NGD_STRUCT_DENSE ? conv_images_src(e, a) : NULL;
    if (!u || ngd_unfold_taps(&u->g) >= u->oh * u->ow * u->g.k1 * u->g.k2) return NULL;
    const ngd_conv_geom *g = &u->g;
    if (s->rconv && s->nrows > 0) return s->rA; // (keep_rows made them this step)
    const size_t n = batch * g->h * g->w * g->c_in;
    if (n > s->xtcap) {
        ngd_free(s->xt);
        s->xt = ngd_malloc(n, sizeof(float));
        s->xtcap = s->xt ? n : 0;
        if (!s->xt) return NULL;
    }
    ngd_unfold_nhwc(u, batch, s->xt);
    return s->xt;
}

// H_K = beta·H_K + alpha·Π(Kᵀ X Xᵀ K) (dense: S Sᵀ) of a convolution's rows from its images
// xt: Sᵀ = X K for blocks of at most NGD_STATS_CHUNK rows (whole positions of a block of
// samples) into ws, then S Sᵀ, as dense from_inner does with the unfolded rows
static void stat_from_images(const ngd_entry *e, singd_state *s, size_t batch, const ngd_matrix *a,
                             const float *xt, const float *Kf, float alpha, float *ws) {
    const ngd_unfold_src *u = a->data;
    const ngd_conv_geom *g = &u->g;
    const size_t dK = e->d_K, L = u->oh * u->ow, xs = g->h * g->w * g->c_in;
    const size_t nb = NGD_MIN(batch, (size_t)NGD_STATS_CHUNK), per = NGD_STATS_CHUNK / nb;
    bool first = !s->has_H;
    for (size_t n0 = 0; n0 < batch; n0 += nb) {
        const size_t bn = NGD_MIN(nb, batch - n0);
        for (size_t l0 = 0; l0 < L; l0 += per) {
            const size_t np = NGD_MIN(per, L - l0);
            for (size_t p = 0; p < np; p++)
                ngd_unfold_times_at(g, bn, xt + n0 * xs, dK, Kf, dK, l0 + p, ws + p * bn * dK, dK);
            ngd_syrk_full(alpha, ngd_cview_t(ngd_cview_rm(ws, np * bn, dK, dK)),
                          first ? 0.0f : 1.0f, ngd_view_rm(s->HK, dK, dK, dK));
            first = false;
        }
    }
}

static ngd_status singd_observe(ngd_optim *o, ngd_entry *e, size_t batch, const ngd_matrix *a,
                                const ngd_matrix *g) {
    singd_state *s = e->ms;
    if (s->fact != 0) {
        keep_rows(o, e, s, batch, a, g, ws_layout(e, ngd_optim_method_ws(o)).chunk);
        if (!update_step(e, o->steps)) return NGD_OK; // between updates: the rows only
    }
    singd_ws w = ws_layout(e, ngd_optim_method_ws(o));
    if (s->bfc) {
        const size_t rows = ngd_stats_rows(e, batch, g);
        const float alpha_K = (float)(1.0 / ((double)rows * (double)o->micro));
        const float alpha_C =
            (float)(ngd_stats_sigma2(e, batch, g, o->micro) / (double)o->scale_prev);
        observe_side16(e, s, batch, a, g, true, alpha_K, w.chunk, w.fK[2]);
        observe_side16(e, s, batch, a, g, false, alpha_C, w.chunk, w.fC[2]);
        s->has_H = 1;
        return NGD_OK;
    }
    const size_t rows = ngd_stats_rows(e, batch, g);
    const float *Kf = fload(s->K, s->dtK, s->sK.n, w.fK[0]);
    const float *Cf = fload(s->C, s->dtC, s->sC.n, w.fC[0]);
    // (1/rows and σ of the whole batch: micro observes of `batch` samples each make a step's)
    const float alpha_K = (float)(1.0 / ((double)rows * (double)o->micro));
    const float alpha_C = (float)(ngd_stats_sigma2(e, batch, g, o->micro) / (double)o->scale_prev);
    // A dense factor seeing more rows than its width (convolutions: N·L rows) sums the Gram
    // matrix X Xᵀ over the chunks and multiplies by K once: Kᵀ (X Xᵀ) K costs 2d²·rows + 4d³
    // instead of the 4d²·rows of (Kᵀ X)(Kᵀ X)ᵀ chunk by chunk (the same sum in another order)
    const size_t dK = e->d_K, dC = e->d_out;
    const bool gramK = s->sK.kind == NGD_STRUCT_DENSE && rows > dK;
    const bool gramC = s->sC.kind == NGD_STRUCT_DENSE && rows > dC;
    bool inK = gramK && ngd_stats_gram(e, batch, a, true, 1.0f, 0.0f, w.fK[2], w.chunk);
    const bool inC = gramC && ngd_stats_gram(e, batch, g, false, 1.0f, 0.0f, w.fC[2], w.chunk);
    const float *xt = gramK ? NULL : stat_images(e, s, batch, a);
    if (xt) { // (a convolution's images: the padding's zeros skipped)
        stat_from_images(e, s, batch, a, xt, Kf, alpha_K, w.fi);
        inK = true;
    }
    for (size_t r0 = 0; r0 < rows && !(inK && inC); r0 += NGD_STATS_CHUNK) {
        size_t nr = NGD_MIN((size_t)NGD_STATS_CHUNK, rows - r0);
        float beta = (s->has_H || r0 > 0) ? 1.0f : 0.0f;
        if (!inK) {
            ngd_stats_a_rows(e, batch, a, g, r0, nr, w.chunk);
            // X = chunkᵀ: d_K x nr, a column-major view of the row-major chunk
            ngd_cview X = {w.chunk, dK, nr, 1, (ptrdiff_t)dK};
            if (gramK)
                ngd_syrk_full(1.0f, X, r0 ? 1.0f : 0.0f, ngd_view_rm(w.fK[2], dK, dK, dK));
            else
                s->oK->from_inner(&s->sK, Kf, X, alpha_K, beta, s->HK, w.fi);
        }
        if (!inC) {
            ngd_stats_g_rows(e, batch, g, r0, nr, w.chunk);
            ngd_cview Y = {w.chunk, dC, nr, 1, (ptrdiff_t)dC};
            if (gramC)
                ngd_syrk_full(1.0f, Y, r0 ? 1.0f : 0.0f, ngd_view_rm(w.fC[2], dC, dC, dC));
            else
                s->oC->from_inner(&s->sC, Cf, Y, alpha_C, beta, s->HC, w.fi);
        }
    }
    const float beta0 = s->has_H ? 1.0f : 0.0f;
    if (gramK) // H_K = β0 H_K + α Kᵀ (X Xᵀ) K
        gram_sandwich(dK, Kf, w.fK[2], alpha_K, beta0, s->HK, w.fK[3]);
    if (gramC) gram_sandwich(dC, Cf, w.fC[2], alpha_C, beta0, s->HC, w.fC[3]);
    s->has_H = 1;
    return NGD_OK;
}

static void singd_discard(ngd_entry *e) {
    singd_state *s = e->ms;
    s->has_H = 0;
    s->nrows = s->robs = 0;
}

// One side of #singd-update: m_new = sc·(cH·H + cD·Π(LᵀL) − I) (+ α1·m_old); L ← L − β·L·m_new.
// f[0] holds the decoded L (or L is f32 storage), f[1] = Π(LᵀL) (already computed), which
// m_new replaces in place (f[2] is f[1]), f[3] is scratch. H, used up once m_new is formed,
// takes a dense side's product L·m_new (a checkpoint's "~H_K" then holds it: has_H is 0, and the
// next statistics overwrite it unread). Returns the step size β actually used.
// m_new's element-wise steps keep the official order per element (zeros; + cH·H; + cD·LᵀL;
// − I; · sc; + α1·m_old), fused into two threaded passes around diag_add: they were six
// serial sweeps of n floats (the maximum and L's update are the structure layer's threaded
// ngd_s_maxabs and ngd_s_axpy).
static float update_side(const ngd_sdesc *sd, const ngd_structure_ops *ops, ngd_dtype dt, void *L,
                         void *m, float *H, float cH, float cD, float sc, float alpha1, float beta1,
                         bool normalize, float *const f[4]) {
    float *Lf = dt == NGD_F32 ? (float *)L : f[0];
    float *mn = f[2]; // (in place of Π(LᵀL): each element reads its own q[i] first)
    const size_t n = sd->n;
    NGD_ASSERT(mn == f[1] && Lf != mn && Lf != f[3]);
    // (the old momentum read in the pass: bf16 widened as ngd_bf16_decode does)
    const bool mom = m && alpha1 != 0.0f;
    const float *mo = mom && dt == NGD_F32 ? (const float *)m : NULL;
    const uint16_t *mo16 = mom && dt == NGD_BF16 ? (const uint16_t *)m : NULL;
    float *mf = m && dt == NGD_F32 ? (float *)m : NULL; // f32 momentum: stored in the pass
    float mx = 0.0f;                                    // max |m_new| (normalize)
    if (sd->kind == NGD_STRUCT_DENSE) {
        // One pass by rows, the diagonal's − I in it, and the maximum's bits (ngd_s_maxabs's):
        // the same arithmetic as the passes below, 2 of 4 sweeps of d² floats fewer (the cnn's
        // fc1, d = 4097: 67 MB each)
        const size_t d = sd->d;
        uint32_t mb = 0;
#pragma omp parallel for schedule(static) reduction(max : mb) if (n > NGD_PAR_MIN)
        for (size_t r = 0; r < d; r++)
            for (size_t i = r * d; i < r * d + d; i++) {
                float t = (0.0f + cH * H[i]) + cD * mn[i];
                if (i == r * d + r) t += -1.0f;
                float v = t * sc;
                if (mo) v += alpha1 * mo[i];
                if (mo16) v += alpha1 * ngd_bf16_to_f32(mo16[i]);
                mn[i] = v;
                if (mf) mf[i] = v;
                uint32_t a;
                memcpy(&a, &v, sizeof a);
                a &= 0x7fffffffu;
                mb = a > mb ? a : mb;
            }
        memcpy(&mx, &mb, sizeof mx);
    } else {
#pragma omp parallel for schedule(static) if (n > NGD_PAR_MIN)
        for (size_t i = 0; i < n; i++)
            mn[i] = (0.0f + cH * H[i]) + cD * mn[i];
        ops->diag_add(sd, mn, -1.0f);
#pragma omp parallel for schedule(static) if (n > NGD_PAR_MIN)
        for (size_t i = 0; i < n; i++) {
            float v = mn[i] * sc;
            if (mo) v += alpha1 * mo[i];
            if (mo16) v += alpha1 * ngd_bf16_to_f32(mo16[i]);
            mn[i] = v;
            if (mf) mf[i] = v;
        }
        if (normalize) mx = ngd_s_maxabs(sd, mn);
    }
    if (m && !mf) fstore(m, dt, n, mn);
    float beta = beta1; // (a NaN in m_new: fmaxf gives 1)
    if (normalize) beta = beta1 / fmaxf(1.0f, mx);
    if (sd->kind == NGD_STRUCT_DENSE) { // L·m_new as one product, into H (used up by m_new)
        // (it went by row panels of f[3]; one product ran 1.10-1.15x faster at the cnn's and
        // vgg16bn's 4097 and 4609, Intel Xeon, 2 threads, with no memory of its own)
        const size_t d = sd->d, nn = d * d;
        ngd_gemm(1.0f, ngd_cview_rm(Lf, d, d, d), ngd_cview_rm(mn, d, d, d), 0.0f,
                 ngd_view_rm(H, d, d, d));
#pragma omp parallel for schedule(static) if (nn > NGD_PAR_MIN)
        for (size_t i = 0; i < nn; i++) // (ngd_s_axpy's arithmetic)
            Lf[i] += -beta * H[i];
    } else {
        ops->mul(sd, Lf, mn, f[3]); // L·m_new, exactly in the class (closure)
        ngd_s_axpy(sd, -beta, f[3], Lf);
    }
    fstore(L, dt, n, Lf);
    return beta;
}

// Row i of m_new (update_side16), rounded into mo: zeros; + cH·H; + cD·LᵀL; − I (j = i); · sc;
// + α1·m_old read from mo (α1 = 0: none), the f32 path's order; returns max_j |m_new[i][j]|
// over the numbers (NaN skipped, as fmaxf does). The runs before and after the diagonal
// vectorise: the maximum is taken on the bits of |m_new| (ordered as the floats are).
static float m_new_row(size_t d, size_t i, const float *restrict h, const float *restrict q,
                       float cH, float cD, float sc, float alpha1, uint16_t *restrict mo) {
    uint32_t mx = 0;
#define M_NEW(j, diag)                                                                             \
    do {                                                                                           \
        float v = 0.0f + cH * h[j] + cD * q[j];                                                    \
        if (diag) v += -1.0f;                                                                      \
        v *= sc;                                                                                   \
        if (alpha1 != 0.0f) v += alpha1 * ngd_bf16_to_f32(mo[j]);                                  \
        mo[j] = ngd_f32_to_bf16_vec(v);                                                            \
        uint32_t a;                                                                                \
        memcpy(&a, &v, sizeof a);                                                                  \
        a &= 0x7fffffffu;                                                                          \
        a &= -(uint32_t)(a <= 0x7f800000u); /* NaN: 0 (a select here stops the vectoriser) */      \
        mx = a > mx ? a : mx;                                                                      \
    } while (0)
    for (size_t j = 0; j < i; j++)
        M_NEW(j, false);
    M_NEW(i, true);
    for (size_t j = i + 1; j < d; j++)
        M_NEW(j, false);
#undef M_NEW
    float f;
    memcpy(&f, &mx, sizeof f);
    return f;
}

// update_side in bf16 compute (dense, bf16 storage): f[1] = LᵀL already holds the bf16
// product; L·m_new multiplies the stored (rounded) momentum, or m_new rounded into s16. The
// f32 path's element-wise steps in its order, fused into two passes over the threads (each
// pass was a serial sweep of d² floats: 3.3 ms an update of the bf16 mlp, 2 threads).
static float update_side16(size_t d, uint16_t *L, uint16_t *m, float *H, float cH, float cD,
                           float sc, float alpha1, float beta1, bool normalize, float *const f[4],
                           uint16_t *s16) {
    const bool mom = m && alpha1 != 0.0f;
    uint16_t *m16 = m ? m : s16; // m_new, rounded: the stored momentum or the scratch
    float mx = 0.0f;
#pragma omp parallel for schedule(static) reduction(max : mx) if (d * d > NGD_PAR_MIN)
    for (size_t i = 0; i < d; i++) {
        const float r =
            m_new_row(d, i, H + i * d, f[1] + i * d, cH, cD, sc, mom ? alpha1 : 0.0f, m16 + i * d);
        mx = mx > r ? mx : r;
    }
    const float beta = normalize ? beta1 / fmaxf(1.0f, mx) : beta1;
    // L·m_new as one product into H (used up by m_new), as the f32 path does
    const size_t nn = d * d;
    ngd_gemm_bf16(false, false, d, d, d, 1.0f, L, d, m16, d, 0.0f, H, d);
#pragma omp parallel for schedule(static) if (nn > NGD_PAR_MIN)
    for (size_t i = 0; i < nn; i++)
        L[i] = ngd_f32_to_bf16_vec(ngd_bf16_to_f32(L[i]) + -beta * H[i]);
    return beta;
}

// bf16 compute: K Kᵀ and C Cᵀ of the stored bf16 factors (f32 accumulation), rounded, where
// kept. tK, tC: dK² and dC² f32 scratch.
static void cache16_refresh(const ngd_entry *e, singd_state *s, float *tK, float *tC) {
    if (s->cache_ok && s->cache_loads == e->loads) return;
    const size_t dK = e->d_K, dC = e->d_out;
    if (s->KKt16) {
        ngd_syrk_bf16(false, dK, dK, 1.0f, s->K, dK, 0.0f, tK, dK);
        ngd_bf16_encode(tK, s->KKt16, dK * dK);
    }
    if (s->CCt16) {
        ngd_syrk_bf16(false, dC, dC, 1.0f, s->C, dC, 0.0f, tC, dC);
        ngd_bf16_encode(tC, s->CCt16, dC * dC);
    }
    s->cache_ok = true;
    s->cache_loads = e->loads;
}

// Forms the products of the dense f32 factors (K Kᵀ, C Cᵀ) if they are stale.
static void cache_refresh(const ngd_entry *e, singd_state *s) {
    if (s->cache_ok && s->cache_loads == e->loads) return;
    const size_t dK = e->d_K, dC = e->d_out;
    if (s->KKt)
        ngd_syrk_full(1.0f, ngd_cview_rm(s->K, dK, dK, dK), 0.0f, ngd_view_rm(s->KKt, dK, dK, dK));
    if (s->CCt)
        ngd_syrk_full(1.0f, ngd_cview_rm(s->C, dC, dC, dC), 0.0f, ngd_view_rm(s->CCt, dC, dC, dC));
    s->cache_ok = true;
    s->cache_loads = e->loads;
}

// (the cached products, bf16 compute's scratch and the step's rows)
static size_t singd_cache_bytes(const ngd_entry *e) {
    const singd_state *s = e->ms;
    const size_t el = s->bfc ? sizeof(uint16_t) : sizeof(float);
    return ((s->KKt ? s->sK.n : 0) + (s->CCt ? s->sC.n : 0)) * sizeof(float) +
           ((s->KKt16 ? s->sK.n : 0) + (s->CCt16 ? s->sC.n : 0) + (s->s16a ? 2 * s->n16 : 0)) *
               sizeof(uint16_t) +
           s->rcap * (e->d_K + e->d_out) * el;
}

// The health readouts of the factors (tK, tC: scratch of their sizes, for bf16 storage)
static void readouts(ngd_entry *e, const singd_state *s, float *tK, float *tC) {
    const float *Kn = fload(s->K, s->dtK, s->sK.n, tK);
    e->h.trace_K = (float)ngd_s_avgtrace(&s->sK, Kn);
    e->h.norm_K = (float)ngd_s_frob(&s->sK, Kn);
    const float *Cn = fload(s->C, s->dtC, s->sC.n, tC);
    e->h.trace_C = (float)ngd_s_avgtrace(&s->sC, Cn);
    e->h.norm_C = (float)ngd_s_frob(&s->sC, Cn);
}

// After new factors: the cached products and the health readouts.
static void after_update(ngd_optim *o, ngd_entry *e, singd_state *s) {
    singd_ws w = ws_layout(e, ngd_optim_method_ws(o));
    s->cache_ok = false; // formed here, so that a step's preconditioning stays 2 products
    if (s->bfc) cache16_refresh(e, s, w.fK[1], w.fC[1]);
    if (s->KKt || s->CCt) cache_refresh(e, s);
    readouts(e, s, w.fK[0], w.fC[0]);
}

// After a load: the readouts of the loaded factors (no workspace may be planned yet)
static void singd_loaded(ngd_entry *e) {
    const singd_state *s = e->ms;
    const bool b16 = s->dtK == NGD_BF16 || s->dtC == NGD_BF16;
    float *t = b16 ? ngd_malloc(NGD_MAX(s->sK.n, s->sC.n), sizeof(float)) : NULL;
    if (b16 && !t) return; // (out of memory: the readouts stay as they were)
    readouts(e, s, t, t);
    ngd_free(t);
}

// β1 of an update step, read once per layer and step before the step changes anything: a
// schedule's NaN, Inf or negative value (or, from Python, its exception) fails the step
static ngd_status singd_check_step(ngd_optim *o, ngd_entry *e, size_t t) {
    singd_state *s = e->ms;
    const ngd_config *c = &e->cfg;
    if (!update_step(e, t)) return NGD_OK;
    s->beta1 = c->lr_cov_fn ? c->lr_cov_fn(t, c->lr_cov_user) : c->lr_cov;
    if (!(s->beta1 >= 0.0f) || !isfinite(s->beta1))
        return ngd_optim_fail(o, NGD_ERR_ARG,
                              "step %zu: layer '%s': lr_cov_fn returned %g (a step size must be "
                              "finite and >= 0); nothing was changed",
                              t, e->name, (double)s->beta1);
    return NGD_OK;
}

static ngd_status singd_update(ngd_optim *o, ngd_entry *e, size_t t) {
    if (!update_step(e, t)) return NGD_OK;
    singd_state *s = e->ms;
    if (!ngd_optim_mine(o, e)) { // another rank's layer: its owner broadcasts the factors
        if (!s->has_H)
            return ngd_optim_fail(o, NGD_ERR_STATE, "layer '%s': no statistics at step %zu",
                                  e->name, t);
        s->has_H = 0;
        e->h.updates++;
        return NGD_OK;
    }
    const ngd_config *c = &e->cfg;
    if (!s->has_H)
        return ngd_optim_fail(o, NGD_ERR_STATE,
                              "layer '%s': no statistics for the update at "
                              "step %zu",
                              e->name, t);
    if (!ngd_all_finite(s->HK, s->sK.n) || !ngd_all_finite(s->HC, s->sC.n)) {
        // non-finite statistics with finite gradients (an Inf in a layer's input, say): the
        // update would make K and C NaN for good, so it is refused and counted, the factors
        // kept, as the K-FAC family keeps its last good decomposition
        s->has_H = 0;
        e->h.decomp_failures++;
        ngd_optim_log(o,
                      "step %zu: layer '%s': non-finite curvature statistics, factor update "
                      "refused (K and C kept)",
                      t, e->name);
        return NGD_OK;
    }
    singd_ws w = ws_layout(e, ngd_optim_method_ws(o));
    const size_t dK = e->d_K, dC = e->d_out;
    if (s->bfc) { // Π(KᵀK) = KᵀK of the stored bf16 factors, f32 accumulation
        ngd_syrk_bf16(true, dK, dK, 1.0f, s->K, dK, 0.0f, w.fK[1], dK);
        ngd_syrk_bf16(true, dC, dC, 1.0f, s->C, dC, 0.0f, w.fC[1], dC);
    } else {
        const float *Kf = fload(s->K, s->dtK, s->sK.n, w.fK[0]);
        const float *Cf = fload(s->C, s->dtC, s->sC.n, w.fC[0]);
        ngd_cview none = {NULL, 0, 0, 0, 0};
        s->oK->from_inner(&s->sK, Kf, none, 1.0f, 0.0f, w.fK[1], w.fi); // Π_K(KᵀK)
        s->oC->from_inner(&s->sC, Cf, none, 1.0f, 0.0f, w.fC[1], w.fi); // Π_C(CᵀC)
    }
    // #loss-scale: u = s_{t-1} / s_t² multiplies every use of H_C
    // (in double: s_t² passes float32's range from s_t = 2^64, and u = 0 then trained silently
    //  without the statistics)
    const float u = (float)((double)o->scale_prev / ((double)o->scale_cur * (double)o->scale_cur));
    const float lam = c->damping, a1 = c->alpha1;
    const float sc = c->normalize_lr_cov ? 0.5f * (1.0f - a1) : 0.5f;
    float cKH, cKD, cCH, cCD;
    if (c->kfac_like) { // IKFAC (#singd-update)
        cKH = 1.0f, cKD = lam, cCH = u, cCD = lam;
    } else { // INGD / SINGD: traces use the other factor's dimension (#singd-update)
        cKH = u * (float)ngd_s_avgtrace(&s->sC, s->HC);
        cKD = lam * (float)ngd_s_avgtrace(&s->sC, w.fC[1]);
        cCH = u * (float)ngd_s_avgtrace(&s->sK, s->HK);
        cCD = lam * (float)ngd_s_avgtrace(&s->sK, w.fK[1]);
    }
    const float beta1 = s->beta1; // (singd_check_step: lr_cov, or lr_cov_fn(t))
    if (s->bfc) {
        e->h.beta1_K = update_side16(dK, s->K, s->mK, s->HK, cKH, cKD, sc, a1, beta1,
                                     c->normalize_lr_cov, w.fK, s->s16a);
        e->h.beta1_C = update_side16(dC, s->C, s->mC, s->HC, cCH, cCD, sc, a1, beta1,
                                     c->normalize_lr_cov, w.fC, s->s16a);
    } else {
        e->h.beta1_K = update_side(&s->sK, s->oK, s->dtK, s->K, s->mK, s->HK, cKH, cKD, sc, a1,
                                   beta1, c->normalize_lr_cov, w.fK);
        e->h.beta1_C = update_side(&s->sC, s->oC, s->dtC, s->C, s->mC, s->HC, cCH, cCD, sc, a1,
                                   beta1, c->normalize_lr_cov, w.fC);
    }
    s->has_H = 0;
    e->h.updates++;
    after_update(o, e, s);
    return NGD_OK;
}

// P of a finite gradient was not finite in some rows (the driver used the gradient's there):
// K or C overflowed, or grew past float's range for the products (K ~ 1e27 after inputs of
// 1e15). Such factors never recover (their statistics Kᵀ A K overflow too, so every update is
// refused), so the layer's preconditioner restarts: K = C = I, momenta 0.
static const char *singd_restart(ngd_optim *o, ngd_entry *e) {
    singd_state *s = e->ms;
    singd_ws w = ws_layout(e, ngd_optim_method_ws(o));
    factors_eye(s, w.fK[1], w.fC[1]);
    after_update(o, e, s);
    return "K and C reset to I and their momenta to 0";
}

// Data-parallel runs. The pending statistics are means over the rows of each rank's shard
// (H_K: 1/rows; H_C: σ² of the caller's reduction): with equal shards, the global batch's are
// their mean over the ranks, except H_C of a summed loss (σ² = 1), which is their sum.
static ngd_status singd_combine(ngd_optim *o, ngd_entry *e) {
    singd_state *s = e->ms;
    ngd_status st;
    if (!update_step(e, o->steps)) return NGD_OK; // (a rows-only observe: nothing to combine)
    if ((st = ngd_comm_allreduce(o, s->HK, s->sK.n)) != NGD_OK ||
        (st = ngd_comm_allreduce(o, s->HC, s->sC.n)) != NGD_OK)
        return st;
    const float inv = 1.0f / (float)ngd_optim_world(o);
    for (size_t i = 0; i < s->sK.n; i++)
        s->HK[i] *= inv;
    if (e->cfg.loss_average != NGD_LOSS_SUM)
        for (size_t i = 0; i < s->sC.n; i++)
            s->HC[i] *= inv;
    return NGD_OK;
}

// One factor update costs about 4·n²/d flops per side (n stored numbers of a d-wide factor:
// 4d³ dense, 4d·b² block-diagonal, 4d diagonal) and an owner broadcasts its n numbers (and
// the momenta's). It pays where an update does at least 64 flops per number it would send
// (4n/d >= 64: dense factors and blocks 16 wide or more); the cheaper structures are replicated.
static double singd_work(const ngd_entry *e, bool *owner_pays) {
    const singd_state *s = e->ms;
    const double nK = (double)s->sK.n, nC = (double)s->sC.n;
    const double flops = 4.0 * (nK * nK / (double)e->d_K + nC * nC / (double)e->d_out);
    *owner_pays = flops >= 64.0 * (nK + nC);
    return flops;
}

static ngd_status singd_publish(ngd_optim *o, ngd_entry *e) {
    if (!update_step(e, o->steps)) return NGD_OK;
    singd_state *s = e->ms;
    const int root = e->owner;
    ngd_status st;
    float betas[2] = {e->h.beta1_K, e->h.beta1_C};
    if ((st = ngd_comm_bcast(o, s->K, s->sK.n * elsize(s->dtK), root)) != NGD_OK ||
        (st = ngd_comm_bcast(o, s->C, s->sC.n * elsize(s->dtC), root)) != NGD_OK ||
        (s->mK && (st = ngd_comm_bcast(o, s->mK, s->sK.n * elsize(s->dtK), root)) != NGD_OK) ||
        (s->mC && (st = ngd_comm_bcast(o, s->mC, s->sC.n * elsize(s->dtC), root)) != NGD_OK) ||
        (st = ngd_comm_bcast(o, betas, sizeof betas, root)) != NGD_OK)
        return st;
    if (ngd_optim_mine(o, e)) return NGD_OK;
    e->h.beta1_K = betas[0], e->h.beta1_C = betas[1];
    after_update(o, e, s);
    return NGD_OK;
}

// #natural-gradient: P = C Cᵀ Ĝ K Kᵀ, computed as N1 = (K (Kᵀ Ĝᵀ))ᵀ, P = C (Cᵀ N1); a dense f32
// side multiplies by its cached product instead (N1 = Ĝ (K Kᵀ), P = (C Cᵀ) N1). Every
// intermediate keeps Ĝ's memory layout (d_C x d_K row-major): the K-side products see it as
// the column-major d_K x d_C matrix Ĝᵀ, so no pass ever transposes data. K Kᵀ is exactly
// symmetric (ngd_syrk_full mirrors it), so Ĝ (K Kᵀ) reads it row-major: oneDNN's NN kernel
// ran that product 10-15 % faster than Ĝ (K Kᵀ)ᵀ at the mlp's 512 x 785.
static void singd_precondition(ngd_optim *o, ngd_entry *e, const float *G, float *P, float *wsp) {
    singd_state *s = e->ms;
    const float inv_cs = (float)(1.0 / (s->rc * (double)o->scale_cur)); // rows: 1 / (c s_t)
    singd_ws w = ws_layout(e, wsp);
    const size_t dK = e->d_K, dC = e->d_out;
    const size_t n = s->nrows;
    const bool rows = rows_ready(e);
    s->nrows = s->robs = 0;      // this step's rows are used up
    NGD_ASSERT(!s->bfc || rows); // (bf16 compute without them: singd_precondition_raw)
    if (s->bfc) cache16_refresh(e, s, w.fK[1], w.fC[1]); // (after a load: formed once)
    if (s->bfc && rows) { // P = (1/c) ((C Cᵀ)₁₆ 𝒢₁₆ᵀ)₁₆ ((K Kᵀ)₁₆ 𝒜₁₆ᵀ)₁₆ᵀ, f32 accumulation
        // (rows_pay keeps n below d_C and d_K: n x d_C and n x d_K fit in d_C d_K values).
        // (C Cᵀ)₁₆ is symmetric to its product's rounding (exactly, at the sizes tried, with
        // oneDNN's kernel: the same sums), so (C Cᵀ)₁₆ 𝒢ᵀ is (𝒢 (C Cᵀ)₁₆)ᵀ to that rounding: the
        // d x n products with the rows as B transposed ran 1.2x faster than the n x d ones at
        // the mlp's d = 513-785, n = 128 (oneDNN's bf16 matmul, 2 threads), and so did the
        // last product as NT (docs/benchmarks.md, twenty-first session).
        // The rows are kept in bf16 and the first two products write bf16 (the f32 sums
        // rounded in oneDNN's store): four serial rounding passes fewer (𝒢 times c there, as
        // in the f32 rows)
        ngd_gemm_bf16_16(false, true, dC, n, dC, (float)s->rc, s->CCt16, dC, s->rG, dC, s->s16a, n);
        ngd_gemm_bf16_16(false, true, dK, n, dK, 1.0f, s->KKt16, dK, s->rA, dK, s->s16b, n);
        ngd_gemm_bf16(false, true, dC, dK, n, inv_cs, s->s16a, n, s->s16b, n, 0.0f, P, dK);
        return;
    }
    if (s->KKt || s->CCt) cache_refresh(e, s); // (after a load: formed once)
    if (rows) { // P = (1/c) (𝒢 C Cᵀ)ᵀ (𝒜 K Kᵀ): keep_rows took them where that pays
        ngd_view X = ngd_view_rm(w.X, n, dC, dC), Y = ngd_view_rm(w.X + n * dC, n, dK, dK);
        ngd_gemm(1.0f, ngd_cview_rm(s->rG, n, dC, dC), ngd_cview_rm(s->CCt, dC, dC, dC), 0.0f, X);
        if (s->rconv) // (a convolution's images: the unfolded rows' products, less the padding)
            ngd_unfold_times(&s->cg, s->rbatch, s->rA, dK, s->KKt, dK, Y.p);
        else
            ngd_gemm(1.0f, ngd_cview_rm(s->rA, n, dK, dK), ngd_cview_rm(s->KKt, dK, dK, dK), 0.0f,
                     Y);
        ngd_gemm(inv_cs, ngd_cview_t(ngd_cv(X)), ngd_cv(Y), 0.0f, ngd_view_rm(P, dC, dK, dK));
        return;
    }
    // (diagonal x diagonal never gets here: singd_precondition_raw)
    ngd_cview Gt = {G, dK, dC, 1, (ptrdiff_t)dK};  // Ĝᵀ, column-major d_K x d_C
    ngd_view T2 = {w.Y, dK, dC, 1, (ptrdiff_t)dK}; // K Kᵀ Ĝᵀ = N1ᵀ (memory: N1)
    ngd_cview N1 = ngd_cview_rm(w.Y, dC, dK, dK);  // N1 = Ĝ K Kᵀ, row-major d_C x d_K
    if (s->KKt) {
        ngd_gemm(1.0f, ngd_cview_rm(G, dC, dK, dK), ngd_cview_rm(s->KKt, dK, dK, dK), 0.0f,
                 ngd_view_rm(w.Y, dC, dK, dK));
    } else if (s->sK.kind == NGD_STRUCT_DENSE) {
        // Ĝ K, then N1ᵀ = K (Ĝ K)ᵀ row-major (d_K x d_C): oneDNN's NT kernel ran the tall
        // 4097 x 128 x 4097 product at 287 GFLOP/s, the wide 128 x 4097 x 4097 one (N1 = (Ĝ K)
        // Kᵀ) at 252-266 (2 threads, Intel Xeon; the cnn's fc1, whose K Kᵀ is not cached)
        const float *Kf = fload(s->K, s->dtK, s->sK.n, w.fK[0]);
        ngd_gemm(1.0f, ngd_cview_rm(G, dC, dK, dK), ngd_cview_rm(Kf, dK, dK, dK), 0.0f,
                 ngd_view_rm(w.X, dC, dK, dK));
        ngd_gemm(1.0f, ngd_cview_rm(Kf, dK, dK, dK), ngd_cview_t(ngd_cview_rm(w.X, dC, dK, dK)),
                 0.0f, ngd_view_rm(w.Y, dK, dC, dC));
        N1 = ngd_cview_t(ngd_cview_rm(w.Y, dK, dC, dC));
    } else {
        const float *Kf = fload(s->K, s->dtK, s->sK.n, w.fK[0]);
        ngd_view T1 = {w.X, dK, dC, 1, (ptrdiff_t)dK}; // Kᵀ Ĝᵀ (memory: Ĝ K)
        s->oK->mm(&s->sK, Kf, true, Gt, T1);
        s->oK->mm(&s->sK, Kf, false, ngd_cv(T1), T2);
    }
    ngd_view Pv = ngd_view_rm(P, dC, dK, dK);
    if (s->CCt) {
        ngd_gemm(1.0f, ngd_cview_rm(s->CCt, dC, dC, dC), N1, 0.0f, Pv);
    } else {
        const float *Cf = fload(s->C, s->dtC, s->sC.n, w.fC[0]);
        ngd_view T3 = ngd_view_rm(w.X, dC, dK, dK); // Cᵀ N1
        s->oC->mm(&s->sC, Cf, true, N1, T3);
        s->oC->mm(&s->sC, Cf, false, ngd_cv(T3), Pv); // C Cᵀ N1
    }
}

// diagonal x diagonal: P = c² ⊙ Ĝ ⊙ k² read straight from [∇W | ∇b], the four products
// fused into one pass in the generic path's order (k, k, c, c), after the same inv_scale
// multiplication optim.c's gather does
//
// bf16 compute without this step's rows: P = (C Cᵀ)₁₆ (Ĝ₁₆ (K Kᵀ)₁₆)₁₆, f32 accumulation, with
// Ĝ₁₆ rounded straight from [∇W | ∇b] · inv_scale (the gather's f32 products, rounded as
// ngd_bf16_encode rounds them: the same bits, and no f32 Ĝ written and read back)
static bool singd_raw_ok(const ngd_entry *e) {
    const singd_state *s = e->ms;
    return (s->sK.kind == NGD_STRUCT_DIAG && s->sC.kind == NGD_STRUCT_DIAG) ||
           (s->bfc && !rows_ready(e));
}

static void singd_precondition_raw(ngd_optim *o, ngd_entry *e, float inv_scale, float *P) {
    singd_state *s = e->ms;
    singd_ws w = ws_layout(e, ngd_optim_method_ws(o));
    const size_t dK = e->d_K, dC = e->d_out, din = e->d_in;
    if (s->bfc) {
        s->nrows = s->robs = 0; // (stale rows, if any, are used up too)
        cache16_refresh(e, s, w.fK[1], w.fC[1]);
        uint16_t *G16 = s->s16a;
#pragma omp parallel for schedule(static) if (e->n > NGD_PAR_MIN)
        for (size_t i = 0; i < dC; i++) {
            const float *g = e->gw + i * din;
            uint16_t *r = G16 + i * dK;
            for (size_t j = 0; j < din; j++)
                r[j] = ngd_f32_to_bf16_vec(g[j] * inv_scale);
            if (e->gb) r[din] = ngd_f32_to_bf16_vec(e->gb[i] * inv_scale);
        }
        // Y = Ĝ K Kᵀ, then P = C Cᵀ Y: by the cached product of a side, or where forming it
        // does not pay, by its factor twice (each product rounded to bf16)
        uint16_t *Y16 = s->s16b;
        if (s->KKt16) {
            ngd_gemm_bf16_16(false, false, dC, dK, dK, 1.0f, G16, dK, s->KKt16, dK, Y16, dK);
        } else {
            ngd_gemm_bf16_16(false, false, dC, dK, dK, 1.0f, G16, dK, s->K, dK, s->s16b, dK);
            ngd_gemm_bf16_16(false, true, dC, dK, dK, 1.0f, s->s16b, dK, s->K, dK, G16, dK);
            Y16 = G16;
        }
        if (s->CCt16) {
            ngd_gemm_bf16(false, false, dC, dK, dC, 1.0f, s->CCt16, dC, Y16, dK, 0.0f, P, dK);
        } else {
            uint16_t *T16 = Y16 == s->s16a ? s->s16b : s->s16a;
            ngd_gemm_bf16_16(true, false, dC, dK, dC, 1.0f, s->C, dC, Y16, dK, T16, dK);
            ngd_gemm_bf16(false, false, dC, dK, dC, 1.0f, s->C, dC, T16, dK, 0.0f, P, dK);
        }
        return;
    }
    const float *Kf = fload(s->K, s->dtK, s->sK.n, w.fK[0]);
    const float *Cf = fload(s->C, s->dtC, s->sC.n, w.fC[0]);
#pragma omp parallel for schedule(static) if (e->n > NGD_PAR_MIN)
    for (size_t i = 0; i < dC; i++) {
        const float *g = e->gw + i * din;
        float *p = P + i * dK, c = Cf[i];
        for (size_t j = 0; j < din; j++)
            p[j] = c * (c * (Kf[j] * (Kf[j] * (g[j] * inv_scale))));
        if (e->gb) p[din] = c * (c * (Kf[din] * (Kf[din] * (e->gb[i] * inv_scale))));
    }
}

static size_t singd_arrays(ngd_entry *e, ngd_state_array *out, size_t cap) {
    singd_state *s = e->ms;
    ngd_arr_type tK = s->dtK == NGD_BF16 ? NGD_ARR_BF16 : NGD_ARR_F32;
    ngd_arr_type tC = s->dtC == NGD_BF16 ? NGD_ARR_BF16 : NGD_ARR_F32;
    ngd_state_array a[] = {
        {"K", s->K, s->sK.n, tK},
        {"C", s->C, s->sC.n, tC},
        {"m_K", s->mK, s->mK ? s->sK.n : 0, tK},
        {"m_C", s->mC, s->mC ? s->sC.n : 0, tC},
        {"~H_K", s->HK, s->sK.n, NGD_ARR_F32}, // '~': transient (not state bytes)
        {"~H_C", s->HC, s->sC.n, NGD_ARR_F32},
        {"~has_H", &s->has_H, 1, NGD_ARR_U8},
        {"?structure", s->stag, 8, NGD_ARR_U64}, // ('?': a check; absent before 2026-12)
    };
    size_t n = sizeof a / sizeof a[0];
    if (n > cap) n = cap;
    memcpy(out, a, n * sizeof a[0]);
    return n;
}

static ngd_status singd_factor_dense(const ngd_optim *o, const ngd_entry *e, char which,
                                     float *out) {
    ngd_optim *mo = (ngd_optim *)(uintptr_t)o;
    const singd_state *s = e->ms;
    bool kside = which == 'K' || which == 'k';
    const ngd_sdesc *sd = kside ? &s->sK : &s->sC;
    ngd_dtype dt = kside ? s->dtK : s->dtC;
    void *store = which == 'K' ? s->K : which == 'C' ? s->C : which == 'k' ? s->mK : s->mC;
    if (!store)
        return ngd_optim_fail(mo, NGD_ERR_ARG,
                              "layer '%s': momentum '%c' is not kept "
                              "(alpha1 = 0)",
                              e->name, which);
    float *tmp = ngd_malloc(sd->n, sizeof(float));
    if (!tmp) return ngd_optim_fail(mo, NGD_ERR_NOMEM, "out of memory");
    const float *f = fload(store, dt, sd->n, tmp);
    ngd_s_to_dense(sd, f, ngd_view_rm(out, sd->d, sd->d, sd->d));
    ngd_free(tmp);
    return NGD_OK;
}

const ngd_method_ops ngd_singd_ops = {
    .name = "singd",
    .layer_init = singd_init,
    .layer_free = singd_free,
    .wants_stats = singd_wants,
    .observe = singd_observe,
    .discard = singd_discard,
    .check_step = singd_check_step,
    .update = singd_update,
    .precondition = singd_precondition,
    .cache_bytes = singd_cache_bytes,
    .precond_ws = singd_ws_size,
    .raw_ok = singd_raw_ok,
    .grad_unused = rows_ready, // (P from the rows: singd_precondition's first branches)
    .restart = singd_restart,
    .precondition_raw = singd_precondition_raw,
    .rule = &ngd_rule_sgd,
    .arrays = singd_arrays,
    .loaded = singd_loaded,
    .factor_dense = singd_factor_dense,
    .combine = singd_combine,
    .work = singd_work,
    .publish = singd_publish,
};
