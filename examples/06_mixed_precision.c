/*
 * 06_mixed_precision.c — mixed-precision training around libngd: a 32-64-64-8 ReLU MLP
 * (forward and backward by hand, softmax cross-entropy averaged over the batch) on a synthetic
 * 8-class problem (labels of a random "teacher" network), trained with SINGD (dense K, C) and
 * K-FAC, each
 *  - in float32: f32 products, f32 statistics, f32 factors, no loss scale, and
 *  - in mixed precision: every forward and backward product on bf16 operands with float32
 *    accumulation (ngd_bf16_gemm_bias / ngd_bf16_gemm; operands rounded here, to nearest
 *    even), the statistics handed over as bf16 matrices (ngd_matrix_bf16: the operands those
 *    products read), SINGD's K, C stored in bf16 with bf16 products (factor_compute), K-FAC's
 *    averages and factor arithmetic in bf16 (kfac.ea_dtype, kfac.factor_arith), and dynamic
 *    loss scaling as a user does it: the loss times s, ngd_optim_set_grad_scale(o, s) every
 *    step (libngd unscales gradients and statistics itself), s halved when ngd_optim_step
 *    returns NGD_SKIPPED (a non-finite gradient), doubled after GROW good steps.
 * bf16 has float32's exponent range: no gradient here overflows even at s = 2^127, so the two
 * overflows are planted (an Inf in a logit's gradient at a statistics step, which spreads
 * through the backward into gradients and statistics, and an Inf in one weight gradient). The
 * scale starts at 2^40 and is kept below MAX_SCALE (2^48): from s·max|g| = 2^64 on SINGD's
 * statistics, squared before they are unscaled, overflow and its factor updates are refused
 * (ngd_optim_set_grad_scale, docs/algorithms.md#loss-scale).
 * Checks (exit 0 only if all pass): ngd_bf16_gemm equals the exact products of the rounded
 * operands up to the order of float32 sums; a step is skipped exactly when a gradient is not
 * finite, and a skip leaves the weights, fc2's factors and momenta as they were (its pending
 * statistics never reach a factor: no refused update in any layer's health); the
 * mixed-precision runs reach the f32 runs' loss (within 0.02 + 25 %: bf16 rounding moves the
 * trajectory, which SINGD's f32-vs-bf16 runs showed as 0.01-0.03 of final loss over several
 * settings, and two of 200 steps are skipped) and all runs train (a quarter of the initial
 * loss or less); a constant scale s = 2^16 gives the bit-identical weights of s = 1 (f32 and
 * bf16: power-of-two scaling commutes with rounding); s = 2^15, s = 3, a scale changing every
 * step and setting the scale after the observe calls instead of before agree within 1e-4.
 * On a CPU without AVX512-BF16 libngd runs the same bf16 products in float32 (exact; only the
 * order of the sums differs), so the losses move by rounding and the checks still hold
 * (NGD_BF16_GEMM=convert in the environment takes that path here).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ngd.h"

enum { DIN = 32, H = 64, DOUT = 8, NDATA = 1024, BATCH = 64, STEPS = 200, TSTEPS = 60 };
enum { GROW = 20, BLOW = 100, POISON = 151, CHK = 1 }; // CHK: the layer whose factors we read
#define MAX_SCALE    0x1p48f                           // see the note at the top
#define LOSS_TOL_ABS 0.02
#define LOSS_TOL_REL 0.25

typedef struct { // every trainable parameter (and, in a second copy, its gradient)
    float W1[H * DIN], b1[H], W2[H * H], b2[H], W3[DOUT * H], b3[DOUT];
} net;
#define NPAR (sizeof(net) / sizeof(float))
static const size_t D_IN[3] = {DIN, H, H}, D_OUT[3] = {H, H, DOUT};

typedef struct { // one batch's activations, output gradients and their bf16 copies
    float z1[BATCH * H], h1[BATCH * H], z2[BATCH * H], h2[BATCH * H], dz3[BATCH * DOUT];
    float dh[BATCH * H], dz2[BATCH * H], dz1[BATCH * H];
    uint16_t xb[BATCH * DIN], h1b[BATCH * H], h2b[BATCH * H];
    uint16_t dz1b[BATCH * H], dz2b[BATCH * H], dz3b[BATCH * DOUT];
    uint16_t W1b[H * DIN], W2b[H * H], W3b[DOUT * H];
} acts;

static float X[NDATA * DIN];
static int Y[NDATA];
static unsigned lcg;

static float uniform(void) { // in [-1, 1)
    lcg = lcg * 1103515245u + 12345u;
    return (float)((lcg >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void make_data(void) { // y = argmax V tanh(U x), U 16 x 32, V 8 x 16 random
    static float U[16 * DIN], V[DOUT * 16];
    lcg = 2024;
    for (int i = 0; i < 16 * DIN; i++)
        U[i] = uniform() * 0.6f;
    for (int i = 0; i < DOUT * 16; i++)
        V[i] = uniform();
    for (int n = 0; n < NDATA; n++) {
        float *x = X + n * DIN, t[16], best = -1e30f;
        for (int j = 0; j < DIN; j++)
            x[j] = uniform();
        for (int k = 0; k < 16; k++) {
            float acc = 0;
            for (int j = 0; j < DIN; j++)
                acc += U[k * DIN + j] * x[j];
            t[k] = tanhf(acc);
        }
        for (int c = 0; c < DOUT; c++) {
            float acc = 0;
            for (int k = 0; k < 16; k++)
                acc += V[c * 16 + k] * t[k];
            if (acc > best) best = acc, Y[n] = c;
        }
    }
}

static void init_net(net *p) { // He-uniform weights, zero biases; the same every time
    memset(p, 0, sizeof *p);
    lcg = 777;
    float *w[3] = {p->W1, p->W2, p->W3};
    for (int l = 0; l < 3; l++)
        for (size_t i = 0; i < D_OUT[l] * D_IN[l]; i++)
            w[l][i] = uniform() * sqrtf(6.0f / (float)D_IN[l]);
}

static float f32(uint16_t h) { // bf16 -> float32 (exact; ngd_bf16_decode for arrays)
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
// float32 -> bf16, round to nearest even, as libngd rounds
static void round_all(const float *x, size_t n, uint16_t *out) { ngd_bf16_encode(x, out, n); }

// z (BATCH x dout) = a Wᵀ + b: in f32 by a plain loop, or on bf16 operands (ab: a rounded;
// W rounded into wb here, as a mixed-precision layer rounds its master weights once per pass).
static ngd_status fc_fwd(int bf, const float *a, const uint16_t *ab, const float *W, uint16_t *wb,
                         const float *b, size_t din, size_t dout, float *z) {
    if (bf) {
        round_all(W, din * dout, wb);
        return ngd_bf16_gemm_bias(false, true, BATCH, dout, din, ab, din, wb, din, b, z, dout);
    }
    for (size_t s = 0; s < BATCH; s++)
        for (size_t i = 0; i < dout; i++) {
            float acc = b[i];
            for (size_t j = 0; j < din; j++)
                acc += W[i * din + j] * a[s * din + j];
            z[s * dout + i] = acc;
        }
    return NGD_OK;
}

// dW = dzᵀ a, db = Σ dz (f32), da = dz W (da NULL: not wanted); bf: dz rounded into dzb and
// the products on the bf16 operands.
static ngd_status fc_bwd(int bf, const float *a, const uint16_t *ab, const float *dz, uint16_t *dzb,
                         const float *W, const uint16_t *wb, size_t din, size_t dout, float *dW,
                         float *db, float *da) {
    for (size_t i = 0; i < dout; i++) {
        db[i] = 0;
        for (size_t s = 0; s < BATCH; s++)
            db[i] += dz[s * dout + i];
    }
    if (bf) {
        round_all(dz, BATCH * dout, dzb);
        ngd_status st =
            ngd_bf16_gemm(true, false, dout, din, BATCH, 1, dzb, dout, ab, din, 0, dW, din);
        if (st == NGD_OK && da)
            st = ngd_bf16_gemm(false, false, BATCH, din, dout, 1, dzb, dout, wb, din, 0, da, din);
        return st;
    }
    memset(dW, 0, sizeof(float) * dout * din);
    if (da) memset(da, 0, sizeof(float) * BATCH * din);
    for (size_t s = 0; s < BATCH; s++)
        for (size_t i = 0; i < dout; i++) {
            float d = dz[s * dout + i];
            for (size_t j = 0; j < din; j++) {
                dW[i * din + j] += d * a[s * din + j];
                if (da) da[s * din + j] += d * W[i * din + j];
            }
        }
    return NGD_OK;
}

// Forward of BATCH samples; returns their summed cross-entropy (*st: the products' status). If
// g != NULL, backward too: gradients of s · (mean cross-entropy), s the loss scale (blow: one
// logit's gradient made Inf, as an overflow would).
static double pass(int bf, const net *p, net *g, const float *x, const int *y, float s, int blow,
                   acts *A, ngd_status *st) {
    double loss = 0;
    if (bf) round_all(x, BATCH * DIN, A->xb);
    *st = fc_fwd(bf, x, A->xb, p->W1, A->W1b, p->b1, DIN, H, A->z1);
    for (int i = 0; i < BATCH * H; i++)
        A->h1[i] = fmaxf(A->z1[i], 0.0f);
    if (bf) round_all(A->h1, BATCH * H, A->h1b);
    if (*st == NGD_OK) *st = fc_fwd(bf, A->h1, A->h1b, p->W2, A->W2b, p->b2, H, H, A->z2);
    for (int i = 0; i < BATCH * H; i++)
        A->h2[i] = fmaxf(A->z2[i], 0.0f);
    if (bf) round_all(A->h2, BATCH * H, A->h2b);
    if (*st == NGD_OK) *st = fc_fwd(bf, A->h2, A->h2b, p->W3, A->W3b, p->b3, H, DOUT, A->dz3);
    for (int n = 0; n < BATCH; n++) { // logits -> s · ∂(mean CE)/∂logits, in place
        float *z = A->dz3 + n * DOUT, m = z[0], sum = 0;
        for (int i = 1; i < DOUT; i++)
            m = fmaxf(m, z[i]);
        for (int i = 0; i < DOUT; i++)
            sum += expf(z[i] - m);
        loss -= (double)(z[y[n]] - m - logf(sum));
        for (int i = 0; i < DOUT; i++)
            z[i] = (expf(z[i] - m) / sum - (i == y[n] ? 1.0f : 0.0f)) * (s / BATCH);
    }
    if (!g || *st != NGD_OK) return loss;
    if (blow) A->dz3[3] = INFINITY; // an overflow in the backward: Inf and NaN flow from here on
    *st = fc_bwd(bf, A->h2, A->h2b, A->dz3, A->dz3b, p->W3, A->W3b, H, DOUT, g->W3, g->b3, A->dh);
    for (int i = 0; i < BATCH * H; i++)
        A->dz2[i] = A->z2[i] > 0 ? A->dh[i] : 0.0f;
    if (*st == NGD_OK)
        *st = fc_bwd(bf, A->h1, A->h1b, A->dz2, A->dz2b, p->W2, A->W2b, H, H, g->W2, g->b2, A->dh);
    for (int i = 0; i < BATCH * H; i++)
        A->dz1[i] = A->z1[i] > 0 ? A->dh[i] : 0.0f;
    if (*st == NGD_OK)
        *st = fc_bwd(bf, x, A->xb, A->dz1, A->dz1b, p->W1, A->W1b, DIN, H, g->W1, g->b1, NULL);
    return loss;
}

static double evaluate(const net *p, acts *A) { // mean cross-entropy over the data set, in f32
    double loss = 0;
    ngd_status st;
    for (int b = 0; b < NDATA; b += BATCH)
        loss += pass(0, p, NULL, X + b * DIN, Y + b, 1, 0, A, &st);
    return loss / NDATA;
}

typedef struct {
    ngd_method method; // NGD_METHOD_SINGD (dense K and C) or NGD_METHOD_KFAC
    int bf;            // mixed precision: bf16 products, statistics, factors
    float s0;          // the loss scale (the first one, for a dynamic scale)
    int sched;         // 0: s0 throughout; 1: dynamic (halved on a skip, doubled after GROW good
                       // steps); 2: s = 2^(10 + 3 (t mod 5)), changing every step, no overflow
    int set_after;     // ngd_optim_set_grad_scale after the step's observe calls, not before
    int inject;        // overflows at steps BLOW (in the backward) and POISON (in a gradient)
    int steps;
} spec;
typedef struct {
    double loss; // the final mean loss over the data set
    int skips;
    float s_min, s_max;
} result;

static net P, G, Before, W32[2], Wmp[2], Wbf1[2];
static acts A;
static float F0[4][(H + 1) * (H + 1)], F1[4][(H + 1) * (H + 1)];
static const size_t FD[4] = {H + 1, H, H + 1, H}; // fc2's 'K', 'C', 'k', 'c': d_in + bias, d_out

static int read_factors(const ngd_optim *o, int id, float out[4][(H + 1) * (H + 1)]) {
    int mask = 0; // a factor not there yet (no statistics so far) answers NGD_ERR_STATE
    for (int f = 0; f < 4; f++)
        if (ngd_optim_factor_dense(o, id, "KCkc"[f], out[f], FD[f]) == NGD_OK) mask |= 1 << f;
    return mask;
}

static ngd_optim *make_optim(const spec *sp, int ids[3]) {
    ngd_config c = ngd_config_default(sp->method);
    if (sp->method == NGD_METHOD_SINGD) {
        c.lr = 5e-3f, c.damping = 1e-3f, c.T = 2;
        if (sp->bf) { // K, C and momenta stored in bf16; observe, update, precondition in bf16
            c.structure_K.dtype = c.structure_C.dtype = NGD_BF16;
            c.factor_compute = NGD_BF16;
        }
    } else {
        c.kfac.T_u = 2, c.kfac.T_i = 10;
        if (sp->bf) c.kfac.ea_dtype = c.kfac.factor_arith = NGD_BF16; // bf16 averages, arithmetic
    }
    c.init_grad_scale = sp->s0; // the scale of step 0's backward
    ngd_optim *o;
    if (ngd_optim_create(&c, &o) != NGD_OK) return NULL;
    float *W[3] = {P.W1, P.W2, P.W3}, *dW[3] = {G.W1, G.W2, G.W3};
    float *b[3] = {P.b1, P.b2, P.b3}, *db[3] = {G.b1, G.b2, G.b3};
    for (int l = 0; l < 3; l++) {
        ngd_layer fc = {.weight = W[l],
                        .weight_grad = dW[l],
                        .d_out = D_OUT[l],
                        .d_in = D_IN[l],
                        .bias = b[l],
                        .bias_grad = db[l]};
        if (ngd_optim_add_layer(o, &fc, &ids[l]) != NGD_OK) {
            fprintf(stderr, "add_layer: %s\n", ngd_optim_errmsg(o));
            ngd_optim_free(o);
            return NULL;
        }
    }
    return o;
}

// Trains sp->steps steps from the same start; the final weights go to *out. Returns 0 if a call
// fails, a skip changed anything, a step was skipped (or not) wrongly or a layer's health shows
// a refused preconditioner update.
static int train(const spec *sp, result *r, net *out) {
    int ids[3], ok = 1, good = 0;
    float s = sp->s0;
    init_net(&P);
    *r = (result){.s_min = s, .s_max = s};
    ngd_optim *o = make_optim(sp, ids);
    if (!o) return 0;
    for (int t = 0; t < sp->steps && ok; t++) {
        if (sp->sched == 2) s = ldexpf(1.0f, 10 + 3 * (t % 5));
        int first = (t % (NDATA / BATCH)) * BATCH;
        const float *x = X + first * DIN;
        ngd_status st = sp->set_after ? NGD_OK : ngd_optim_set_grad_scale(o, s);
        if (st == NGD_OK) pass(sp->bf, &P, &G, x, Y + first, s, sp->inject && t == BLOW, &A, &st);
        if (sp->inject && t == POISON) G.W2[5] = INFINITY;
        int finite = 1;
        for (size_t i = 0; i < NPAR; i++)
            finite &= isfinite(((const float *)&G)[i]);
        if (ngd_optim_wants_stats(o)) { // the operands the backward products read
            const float *a[3] = {x, A.h1, A.h2}, *g[3] = {A.dz1, A.dz2, A.dz3};
            const uint16_t *ab[3] = {A.xb, A.h1b, A.h2b}, *gb[3] = {A.dz1b, A.dz2b, A.dz3b};
            for (int l = 0; l < 3 && st == NGD_OK; l++)
                st = ngd_optim_observe(o, ids[l], BATCH,
                                       sp->bf ? ngd_matrix_bf16(ab[l], BATCH, D_IN[l])
                                              : ngd_matrix_f32(a[l], BATCH, D_IN[l]),
                                       sp->bf ? ngd_matrix_bf16(gb[l], BATCH, D_OUT[l])
                                              : ngd_matrix_f32(g[l], BATCH, D_OUT[l]));
        }
        if (st == NGD_OK && sp->set_after) st = ngd_optim_set_grad_scale(o, s);
        Before = P;
        int mask = st == NGD_OK && !finite ? read_factors(o, ids[CHK], F0) : 0;
        if (st == NGD_OK) st = ngd_optim_step(o);
        if (st == NGD_SKIPPED) { // nothing may have changed; the user lowers the scale
            ngd_layer_health h;
            r->skips++;
            int same = !finite && !memcmp(&Before, &P, sizeof P) &&
                       mask == read_factors(o, ids[CHK], F1) &&
                       ngd_optim_layer_health(o, ids[CHK], &h) == NGD_OK &&
                       h.skips == (size_t)r->skips;
            for (int f = 0; f < 4; f++)
                same &= !(mask >> f & 1) || !memcmp(F0[f], F1[f], sizeof(float) * FD[f] * FD[f]);
            if (!same) printf("  step %d: skipped, but finite or something changed\n", t);
            ok &= same;
            if (sp->sched == 1) s *= 0.5f, good = 0;
        } else if (st == NGD_OK) {
            if (!finite) printf("  step %d: a non-finite gradient was not skipped\n", t);
            ok &= finite;
            if (sp->sched == 1 && ++good == GROW && s < MAX_SCALE) s *= 2.0f, good = 0;
        } else {
            printf("  step %d: %s: %s\n", t, ngd_status_str(st), ngd_optim_errmsg(o));
            ok = 0;
        }
        r->s_min = fminf(r->s_min, s), r->s_max = fmaxf(r->s_max, s);
    }
    for (int l = 0; l < 3; l++) { // the discarded statistics of a skip must not reach a factor
        ngd_layer_health h;
        ok &= ngd_optim_layer_health(o, ids[l], &h) == NGD_OK && h.decomp_failures == 0;
    }
    ngd_optim_free(o);
    r->loss = evaluate(&P, &A);
    *out = P;
    return ok;
}

// max |a - b| / max |b| over all parameters, and how many differ in any bit
static double weight_diff(const net *a, const net *b, int *ndiff) {
    const float *x = (const float *)a, *y = (const float *)b;
    float d = 0, m = 0;
    *ndiff = 0;
    for (size_t i = 0; i < NPAR; i++) {
        d = fmaxf(d, fabsf(x[i] - y[i])), m = fmaxf(m, fabsf(y[i]));
        *ndiff += memcmp(&x[i], &y[i], sizeof(float)) != 0;
    }
    return (double)(d / m);
}

// ngd_bf16_gemm against the exact (float64) sums of the same bf16 products: the products of
// bf16 values are exact in f32, so only the f32 sums' rounding may differ, at most about
// DIN · 2^-24 of the sum of the terms' magnitudes.
static int gemm_check(void) {
    init_net(&P);
    round_all(X, BATCH * DIN, A.xb), round_all(P.W1, H * DIN, A.W1b);
    if (ngd_bf16_gemm(false, true, BATCH, H, DIN, 1, A.xb, DIN, A.W1b, DIN, 0, A.z1, H) != NGD_OK)
        return 0;
    double worst = 0, ratio;
    for (int n = 0; n < BATCH; n++)
        for (int i = 0; i < H; i++) {
            double acc = 0, mag = 0;
            for (int j = 0; j < DIN; j++) {
                double t = (double)f32(A.xb[n * DIN + j]) * (double)f32(A.W1b[i * DIN + j]);
                acc += t, mag += fabs(t);
            }
            worst = fmax(worst, fabs((double)A.z1[n * H + i] - acc) / (mag * DIN * 0x1p-24));
        }
    bool slow = ngd_bf16_dot_slow(&ratio);
    printf("ngd_bf16_gemm: error %.3f of the f32 sums' bound (bf16 dots %.2fx f32 FMAs%s)\n", worst,
           ratio, slow ? ": run as f32 products of the decoded values" : "");
    return worst <= 1.0;
}

int main(void) {
    make_data();
    int ok = gemm_check(), nd;
    init_net(&P);
    double L0 = evaluate(&P, &A);
    printf("initial loss %.4f\n", L0);
    const ngd_method methods[2] = {NGD_METHOD_SINGD, NGD_METHOD_KFAC};
    for (int m = 0; m < 2; m++) {
        ngd_method me = methods[m];
        result r32, rmp, rx;
        spec f32run = {.method = me, .s0 = 1, .steps = STEPS};
        spec mp = {.method = me, .bf = 1, .s0 = 0x1p40f, .sched = 1, .inject = 1, .steps = STEPS};
        int ok32 = train(&f32run, &r32, &W32[m]), okmp = train(&mp, &rmp, &Wmp[m]);
        double tol = LOSS_TOL_ABS + LOSS_TOL_REL * r32.loss;
        int good = ok32 && okmp && r32.loss <= 0.25 * L0 && rmp.loss <= 0.25 * L0 &&
                   fabs(rmp.loss - r32.loss) <= tol && rmp.skips == 2;
        printf("%s: f32 loss %.4f; bf16 + loss scale %.4f (|diff| %.4f <= %.4f), %d steps "
               "skipped, scale 2^%d..2^%d  %s\n",
               ngd_method_name(me), r32.loss, rmp.loss, fabs(rmp.loss - r32.loss), tol, rmp.skips,
               (int)log2f(rmp.s_min), (int)log2f(rmp.s_max), good ? "ok" : "FAILED");
        ok &= good;
        // Loss-scale transparency: weights against those of the same training without a scale.
        spec bf1 = {.method = me, .bf = 1, .s0 = 1, .steps = TSTEPS};
        ok &= train(&bf1, &rx, &Wbf1[m]);
        spec t32 = f32run;
        t32.steps = TSTEPS;
        ok &= train(&t32, &rx, &W32[m]); // the f32 reference, TSTEPS steps
        const struct {
            const char *what;
            spec sp;
            const net *ref;
            int exact;
        } cases[] = {
            // reference: the same run at s = 1, or with the scale set before observe
            {"f32, s = 2^16", {me, 0, 0x1p16f, 0, 0, 0, TSTEPS}, &W32[m], 1},
            {"f32, s = 2^15", {me, 0, 0x1p15f, 0, 0, 0, TSTEPS}, &W32[m], 0},
            {"f32, s = 3", {me, 0, 3, 0, 0, 0, TSTEPS}, &W32[m], 0},
            {"f32, s = 2^(10 + 3 (t mod 5))", {me, 0, 0x1p10f, 2, 0, 0, TSTEPS}, &W32[m], 0},
            {"bf16, s = 2^16", {me, 1, 0x1p16f, 0, 0, 0, TSTEPS}, &Wbf1[m], 1},
            {"bf16 dynamic, set after observe", {me, 1, 0x1p40f, 1, 1, 1, STEPS}, &Wmp[m], 0},
        };
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            net W;
            int okc = train(&cases[c].sp, &rx, &W);
            double d = weight_diff(&W, cases[c].ref, &nd);
            okc &= cases[c].exact ? nd == 0 : d <= 1e-4;
            printf("  %-32s %4d of %zu weights differ from the reference's, max %.1e  %s\n",
                   cases[c].what, nd, NPAR, d, okc ? "ok" : "FAILED");
            ok &= okc;
        }
    }
    printf("%s\n", ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
