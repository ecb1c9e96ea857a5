/*
 * 03_handwritten_loop.c — a realistic hand-written training loop around libngd: a
 * 16-32-32-4 ReLU MLP (forward and backward by hand) on a synthetic, non-linearly separable
 * 4-class problem, trained with SINGD. It shows
 *  - per-layer factor structures through ngd_layer.override (dense fc1, diagonal fc2,
 *    block-diagonal K / dense C for fc3; ngd_structure_parse or a hand-filled spec),
 *  - a plain parameter (a gain vector after fc2's ReLU) registered with ngd_optim_add_param
 *    and updated by the AdamW rule of its override,
 *  - gradient accumulation: every batch of 64 in 2 micro-batches (ngd_optim_set_micro_batches),
 *    each micro-batch's mean loss divided by 2, gradients summed, one ngd_optim_step a batch,
 *  - a warm-up + cosine learning-rate schedule through ngd_optim_set_lr_scale,
 *  - ngd_optim_layer_health and ngd_optim_state_bytes at the end.
 * It first checks that 2 micro-batches take the whole batch's steps (weights equal to 1e-4),
 * then trains. Exits non-zero if the check fails, the loss does not halve, the training
 * accuracy stays below 90 % or a layer's health reports a problem.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ngd.h"

enum { DIN = 16, H1 = 32, H2 = 32, DOUT = 4, NDATA = 512, BATCH = 64, MICRO = 2, STEPS = 240 };
enum { WARMUP = 20, CHECK_STEPS = 6 };

static const size_t D_IN[3] = {DIN, H1, H2}, D_OUT[3] = {H1, H2, DOUT}; // fc1, fc2, fc3

typedef struct { // every trainable parameter (and, in a second copy, its gradient)
    float W1[H1 * DIN], b1[H1], W2[H2 * H1], b2[H2], gain[H2], W3[DOUT * H2], b3[DOUT];
} net;

typedef struct { // activations of at most BATCH samples
    float z1[BATCH * H1], h1[BATCH * H1], dz1[BATCH * H1];
    float z2[BATCH * H2], r2[BATCH * H2], h2[BATCH * H2], dz2[BATCH * H2];
    float dz3[BATCH * DOUT];
} acts;

static float X[NDATA * DIN];
static int Y[NDATA];
static unsigned lcg = 12345;

static float uniform(void) { // in [-1, 1)
    lcg = lcg * 1103515245u + 12345u;
    return (float)((lcg >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void make_data(void) { // label: XOR of two half-spaces, plus "far from the origin"
    for (int n = 0; n < NDATA; n++) {
        float *x = X + n * DIN, r = 0;
        for (int j = 0; j < DIN; j++)
            x[j] = uniform();
        for (int j = 6; j < 12; j++)
            r += x[j] * x[j];
        Y[n] = ((x[0] + x[1] - x[2] > 0) ^ (x[3] - x[4] + x[5] > 0)) + 2 * (r > 2.0f);
    }
}

static void init_net(net *p) { // He-uniform weights, zero biases, unit gain; the same each time
    memset(p, 0, sizeof *p);
    lcg = 777;
    float *w[3] = {p->W1, p->W2, p->W3};
    const int size[3] = {H1 * DIN, H2 * H1, DOUT * H2}, fan_in[3] = {DIN, H1, H2};
    for (int l = 0; l < 3; l++)
        for (int i = 0; i < size[l]; i++)
            w[l][i] = uniform() * sqrtf(6.0f / (float)fan_in[l]);
    for (int i = 0; i < H2; i++)
        p->gain[i] = 1.0f;
}

// z (n x dout) = a (n x din) Wᵀ + b
static void fc_fwd(const float *a, int n, int din, int dout, const float *W, const float *b,
                   float *z) {
    for (int s = 0; s < n; s++)
        for (int i = 0; i < dout; i++) {
            float acc = b[i];
            for (int j = 0; j < din; j++)
                acc += W[i * din + j] * a[s * din + j];
            z[s * dout + i] = acc;
        }
}

// dW += dzᵀ a, db += Σ dz (accumulated: micro-batches add up); da = dz W (if da != NULL)
static void fc_bwd(const float *a, const float *dz, int n, int din, int dout, const float *W,
                   float *dW, float *db, float *da) {
    if (da) memset(da, 0, sizeof(float) * (size_t)(n * din));
    for (int s = 0; s < n; s++)
        for (int i = 0; i < dout; i++) {
            float d = dz[s * dout + i];
            db[i] += d;
            for (int j = 0; j < din; j++) {
                dW[i * din + j] += d * a[s * din + j];
                if (da) da[s * din + j] += d * W[i * din + j];
            }
        }
}

// Forward (and, if g != NULL, backward) of samples x[0..n): returns the summed cross-entropy,
// counts correct predictions into *correct. The gradients added to g are those of the loss
// Σ_n CE_n · scale (scale = 1/BATCH: each micro-batch's mean loss divided by MICRO).
static double pass(const net *p, net *g, const float *x, const int *y, int n, float scale, acts *A,
                   int *correct) {
    double loss = 0;
    fc_fwd(x, n, DIN, H1, p->W1, p->b1, A->z1);
    for (int i = 0; i < n * H1; i++)
        A->h1[i] = fmaxf(A->z1[i], 0.0f);
    fc_fwd(A->h1, n, H1, H2, p->W2, p->b2, A->z2);
    for (int i = 0; i < n * H2; i++) {
        A->r2[i] = fmaxf(A->z2[i], 0.0f);
        A->h2[i] = A->r2[i] * p->gain[i % H2];
    }
    fc_fwd(A->h2, n, H2, DOUT, p->W3, p->b3, A->dz3); // logits, turned into dz3 below
    for (int s = 0; s < n; s++) {
        float *z = A->dz3 + s * DOUT, m = z[0], sum = 0;
        int arg = 0;
        for (int i = 1; i < DOUT; i++)
            if (z[i] > m) m = z[i], arg = i;
        for (int i = 0; i < DOUT; i++)
            sum += expf(z[i] - m);
        loss -= (double)(z[y[s]] - m - logf(sum));
        *correct += arg == y[s];
        for (int i = 0; i < DOUT; i++)
            z[i] = (expf(z[i] - m) / sum - (i == y[s] ? 1.0f : 0.0f)) * scale;
    }
    if (!g) return loss;
    float *dh2 = A->dz2; // dh2, then dz2 in place
    fc_bwd(A->h2, A->dz3, n, H2, DOUT, p->W3, g->W3, g->b3, dh2);
    for (int i = 0; i < n * H2; i++) {
        g->gain[i % H2] += dh2[i] * A->r2[i];
        A->dz2[i] = A->z2[i] > 0 ? dh2[i] * p->gain[i % H2] : 0.0f;
    }
    fc_bwd(A->h1, A->dz2, n, H1, H2, p->W2, g->W2, g->b2, A->dz1);
    for (int i = 0; i < n * H1; i++)
        if (A->z1[i] <= 0) A->dz1[i] = 0;
    fc_bwd(x, A->dz1, n, DIN, H1, p->W1, g->W1, g->b1, NULL);
    return loss;
}

// SINGD with a structure per layer (overrides: whole configs, copied at registration) and
// AdamW for the gain vector. ids[0..2]: fc1..fc3, ids[3]: the gain.
static ngd_optim *make_optim(net *p, net *g, size_t micro, int ids[4]) {
    ngd_config cfg = ngd_config_default(NGD_METHOD_SINGD); // dense K and C: fc1 is INGD
    cfg.lr = 0.02f;
    cfg.damping = 1e-2f;
    cfg.T = 2; // curvature statistics every second step
    ngd_config diag = cfg, blk = cfg, adamw = ngd_config_default(NGD_METHOD_ADAMW);
    if (ngd_structure_parse("diagonal", &diag.structure_K) != NGD_OK) return NULL;
    diag.structure_C = diag.structure_K;
    // fc3's K (d_in + bias = 33): four 8x8 blocks and a 1x1; its C (4x4) stays dense
    blk.structure_K = (ngd_factor_spec){.kind = NGD_STRUCT_BLOCKDIAG, .block = 8, .dtype = NGD_F32};
    adamw.lr = 1e-2f;
    adamw.weight_decay = 0;
    float *W[3] = {p->W1, p->W2, p->W3}, *dW[3] = {g->W1, g->W2, g->W3};
    float *b[3] = {p->b1, p->b2, p->b3}, *db[3] = {g->b1, g->b2, g->b3};
    const ngd_config *override[3] = {NULL, &diag, &blk}; // fc1: the optimizer's own config
    const char *name[3] = {"fc1", "fc2", "fc3"};
    ngd_optim *o;
    if (ngd_optim_create(&cfg, &o) != NGD_OK) {
        fprintf(stderr, "ngd_optim_create failed\n");
        return NULL;
    }
    for (int l = 0; l < 3; l++) {
        ngd_layer fc = {.name = name[l],
                        .weight = W[l],
                        .weight_grad = dW[l],
                        .d_out = D_OUT[l],
                        .d_in = D_IN[l],
                        .bias = b[l],
                        .bias_grad = db[l],
                        .override = override[l]};
        if (ngd_optim_add_layer(o, &fc, &ids[l]) != NGD_OK) goto fail;
    }
    if (ngd_optim_add_param(o, "gain", p->gain, g->gain, H2, &adamw, &ids[3]) != NGD_OK ||
        ngd_optim_set_micro_batches(o, micro) != NGD_OK)
        goto fail;
    return o;
fail:
    fprintf(stderr, "setup: %s\n", ngd_optim_errmsg(o));
    ngd_optim_free(o);
    return NULL;
}

// One optimizer step on the step's batch (the data set's NDATA / BATCH batches in turn) in
// `micro` parts, as the optimizer was told; returns the batch's mean loss. Each part is
// observed with its own size as `batch` and g = ∂(its mean loss / micro)/∂(layer output):
// the loss whose gradients, summed over the parts, are the whole batch's mean-loss gradient.
static double train_step(ngd_optim *o, const int ids[4], net *p, net *g, size_t micro, int step,
                         acts *A, ngd_status *st) {
    float t = (float)step / STEPS, c = 0.5f * (1.0f + cosf(3.14159265f * t));
    float scale = step < WARMUP ? (step + 1.0f) / WARMUP : 0.05f + 0.95f * c;
    *st = ngd_optim_set_lr_scale(o, scale);
    memset(g, 0, sizeof *g); // the step reads the gradient of the whole batch: zero, then add
    int n = BATCH / (int)micro, first = (step % (NDATA / BATCH)) * BATCH, correct = 0;
    double loss = 0;
    for (size_t m = 0; m < micro && *st == NGD_OK; m++) {
        const float *x = X + (first + (int)m * n) * DIN;
        loss += pass(p, g, x, Y + first + (int)m * n, n, 1.0f / BATCH, A, &correct);
        if (!ngd_optim_wants_stats(o)) continue; // the same answer for every part of a step
        const float *in[3] = {x, A->h1, A->h2}, *out[3] = {A->dz1, A->dz2, A->dz3};
        for (int l = 0; l < 3 && *st == NGD_OK; l++)
            *st = ngd_optim_observe(o, ids[l], n, ngd_matrix_f32(in[l], n, D_IN[l]),
                                    ngd_matrix_f32(out[l], n, D_OUT[l]));
    }
    if (*st == NGD_OK) *st = ngd_optim_step(o);
    return loss / BATCH;
}

static double evaluate(const net *p, acts *A, double *acc) { // mean loss over the data set
    double loss = 0;
    int correct = 0;
    for (int b = 0; b < NDATA; b += BATCH)
        loss += pass(p, NULL, X + b * DIN, Y + b, BATCH, 0, A, &correct);
    *acc = (double)correct / NDATA;
    return loss / NDATA;
}

static acts A;
static net P, G, P1, G1; // buffers registered with an optimizer must outlive it

int main(void) {
    make_data();
    // 1. Micro-batch check: CHECK_STEPS steps in 2 micro-batches against whole batches, from
    // the same start. (SINGD's step does not even depend on how the statistics are split:
    // this checks the summed gradients; IKFAC's and the K-FAC family's steps also need the
    // ngd_optim_set_micro_batches call to agree.)
    int ids[4], ids1[4];
    ngd_status st = NGD_OK, st1 = NGD_OK;
    init_net(&P), init_net(&P1);
    ngd_optim *o = make_optim(&P, &G, MICRO, ids), *o1 = make_optim(&P1, &G1, 1, ids1);
    if (!o || !o1) st = NGD_ERR_ARG;
    for (int s = 0; s < CHECK_STEPS && st == NGD_OK && st1 == NGD_OK; s++) {
        train_step(o, ids, &P, &G, MICRO, s, &A, &st);
        train_step(o1, ids1, &P1, &G1, 1, s, &A, &st1);
    }
    ngd_optim_free(o), ngd_optim_free(o1);
    if (st != NGD_OK || st1 != NGD_OK) {
        fprintf(stderr, "check failed: %s / %s\n", ngd_status_str(st), ngd_status_str(st1));
        return 1;
    }
    const float *a = (const float *)&P, *b = (const float *)&P1;
    float diff = 0, mag = 0;
    for (size_t i = 0; i < sizeof P / sizeof(float); i++)
        diff = fmaxf(diff, fabsf(a[i] - b[i])), mag = fmaxf(mag, fabsf(b[i]));
    printf("micro-batch check: %d steps, max |W(2 parts) - W(1 part)| / max |W| = %.2e\n",
           CHECK_STEPS, (double)(diff / mag));
    int ok = diff <= 1e-4f * mag;

    // 2. Training: STEPS batches of 64, each in 2 micro-batches.
    init_net(&P);
    if (!(o = make_optim(&P, &G, MICRO, ids))) return 1;
    double acc0, loss0 = evaluate(&P, &A, &acc0), acc, batch_loss = 0;
    for (int s = 0; s < STEPS && st == NGD_OK; s++)
        batch_loss = train_step(o, ids, &P, &G, MICRO, s, &A, &st);
    if (st != NGD_OK) {
        fprintf(stderr, "step failed (%s): %s\n", ngd_status_str(st), ngd_optim_errmsg(o));
        ngd_optim_free(o);
        return 1;
    }
    double loss = evaluate(&P, &A, &acc);
    printf("SINGD, %d steps: loss %.4f -> %.4f (last batch %.4f), accuracy %.1f%% -> %.1f%%\n",
           STEPS, loss0, loss, batch_loss, 100 * acc0, 100 * acc);
    for (size_t id = 0; id < ngd_optim_count(o); id++) { // the layers, then the gain
        ngd_layer_health h = {.name = "?"};
        int bad = ngd_optim_layer_health(o, (int)id, &h) != NGD_OK || h.skips ||
                  h.decomp_failures || !isfinite(h.grad_norm) || !isfinite(h.update_norm) ||
                  !isfinite(h.trace_K) || !isfinite(h.trace_C) || (id < 3 && h.updates == 0);
        printf("  %-4s updates %3zu  |grad| %.3e  |update| %.3e  tr K %.3f  tr C %.3f%s\n", h.name,
               h.updates, (double)h.grad_norm, (double)h.update_norm, (double)h.trace_K,
               (double)h.trace_C, bad ? "  <- PROBLEM" : "");
        ok &= !bad;
    }
    printf("optimizer state %zu bytes, workspace %zu bytes\n", ngd_optim_state_bytes(o),
           ngd_optim_workspace_bytes(o));
    ngd_optim_free(o);
    ok &= loss <= 0.5 * loss0 && acc >= 0.9;
    printf("%s\n", ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
