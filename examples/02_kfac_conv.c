/*
 * 02_kfac_conv.c — K-FAC on a hand-written convolutional classifier, and a bit-identical
 * resume from an in-memory checkpoint.
 *
 * The model (forward and backward written out below): 8x8 one-channel images ->
 * Conv2d(1 -> 8, 3x3, padding 1, bias) -> ReLU -> global average pooling -> Linear(8 -> 3,
 * bias) -> softmax cross-entropy, mean over the batch (loss_average = NGD_LOSS_BATCH). The
 * three classes are horizontal stripes, vertical stripes and a checkerboard, with a random
 * phase and noise, from a deterministic LCG.
 *
 * What it shows of libngd:
 *  - a Conv2d registered as the d_out x d_in matrix its [C_out, C_in, k1, k2] weight already
 *    is (d_in = C_in*k1*k2), and its statistics given from the images themselves with
 *    ngd_optim_observe_conv (the output gradient as (n, o1, o2) rows of C_out values, which is
 *    how this example stores the conv output anyway); the forward pass uses ngd_unfold's
 *    im2col rows, in the same (n, o1, o2) x (c, k1, k2) order;
 *  - K-FAC statistics only on the steps that want them (ngd_optim_layer_wants_stats);
 *  - ngd_optim_save_mem half-way, then a fresh optimizer that ngd_optim_load_mem's that state
 *    and replays the second half from the saved weights: its final weights must equal the
 *    uninterrupted run's bit for bit (the weights belong to the caller: they are not in the
 *    optimizer's state, so the example copies them itself).
 * Exits 0 only if the loss over the whole data set fell to at most half its starting value,
 * K-FAC updated both preconditioners, and the resume was bit-identical.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngd.h"

enum {
    NDATA = 96,       // images in the data set
    BATCH = 32,       // images per step (the batches cycle through the data set)
    IMG = 8,          // image side; padding 1 keeps the conv output 8x8
    POS = IMG * IMG,  // weight-sharing positions of the conv (R)
    CO = 8,           // conv output channels
    KK = 9,           // conv d_in = C_in * 3 * 3
    NCLS = 3,         // classes
    STEPS = 60,       // training steps
    HALF = STEPS / 2, // the checkpoint is taken before this step
};

typedef struct { // the parameters and their gradients (registered with the optimizer)
    float wc[CO * KK], bc[CO], wf[NCLS * CO], bf[NCLS];
    float dwc[CO * KK], dbc[CO], dwf[NCLS * CO], dbf[NCLS];
} model;

static float images[NDATA * POS];
static int labels[NDATA];
static float patches[NDATA * POS * KK]; // im2col rows, (n, o1, o2) x (c, k1, k2)
static float act[NDATA * POS * CO];     // conv output before ReLU, (n, o1, o2) x channel
static float dact[NDATA * POS * CO];    // ∂loss/∂(conv output), same layout
static float pooled[NDATA * CO], dlogits[NDATA * NCLS];

static const ngd_conv_geom geom = {.c_in = 1,
                                   .h = IMG,
                                   .w = IMG,
                                   .k1 = 3,
                                   .k2 = 3,
                                   .s1 = 1,
                                   .s2 = 1,
                                   .p1 = 1,
                                   .p2 = 1,
                                   .dil1 = 1,
                                   .dil2 = 1,
                                   .groups = 1};

static unsigned lcg_state = 2024u;
static float uniform(void) { // in [-0.5, 0.5)
    lcg_state = lcg_state * 1103515245u + 12345u;
    return (float)((lcg_state >> 8) & 0xffff) / 65536.0f - 0.5f;
}

// Mean cross-entropy of n images from x (labels y), *correct (if not NULL) the images whose
// largest logit is their label's; with grads, fills the model's gradients and the statistics
// buffers act/dact (conv) and pooled/dlogits (fc) for those images.
static double forward_backward(model *m, const float *x, const int *y, size_t n, bool grads,
                               int *correct) {
    if (ngd_unfold(&geom, n, x, false, patches) != NGD_OK) return NAN;
    for (size_t r = 0; r < n * POS; r++) // conv: one output row per (image, position)
        for (int c = 0; c < CO; c++) {
            float s = m->bc[c];
            for (int k = 0; k < KK; k++)
                s += m->wc[c * KK + k] * patches[r * KK + k];
            act[r * CO + c] = s;
        }
    double loss = 0;
    for (size_t i = 0; i < n; i++) {
        float *f = pooled + i * CO, z[NCLS], mx = -INFINITY, sum = 0;
        for (int c = 0; c < CO; c++) { // ReLU, then the mean over the 64 positions
            f[c] = 0;
            for (int p = 0; p < POS; p++)
                f[c] += fmaxf(act[(i * POS + p) * CO + c], 0.0f) / POS;
        }
        for (int k = 0; k < NCLS; k++) { // logits = f Wfᵀ + bf
            z[k] = m->bf[k];
            for (int c = 0; c < CO; c++)
                z[k] += m->wf[k * CO + c] * f[c];
            mx = fmaxf(mx, z[k]);
        }
        if (correct) *correct += z[y[i]] == mx;
        for (int k = 0; k < NCLS; k++)
            sum += expf(z[k] - mx);
        loss -= (double)(z[y[i]] - mx - logf(sum)) / (double)n;
        for (int k = 0; k < NCLS; k++) // ∂(mean loss)/∂logits
            dlogits[i * NCLS + k] = (expf(z[k] - mx) / sum - (k == y[i] ? 1.0f : 0.0f)) / (float)n;
    }
    if (!grads) return loss;
    memset(m->dwc, 0, sizeof m->dwc), memset(m->dbc, 0, sizeof m->dbc);
    memset(m->dwf, 0, sizeof m->dwf), memset(m->dbf, 0, sizeof m->dbf);
    for (size_t i = 0; i < n; i++) {
        float df[CO] = {0};
        for (int k = 0; k < NCLS; k++) { // fc: dWf = dlogitsᵀ f, dbf = Σ dlogits, df = dz Wf
            float dz = dlogits[i * NCLS + k];
            m->dbf[k] += dz;
            for (int c = 0; c < CO; c++) {
                m->dwf[k * CO + c] += dz * pooled[i * CO + c];
                df[c] += dz * m->wf[k * CO + c];
            }
        }
        for (int p = 0; p < POS; p++) { // pooling and ReLU back to the conv output
            size_t r = i * POS + (size_t)p;
            for (int c = 0; c < CO; c++) {
                float d = act[r * CO + c] > 0 ? df[c] / POS : 0.0f;
                dact[r * CO + c] = d;
                m->dbc[c] += d;
                for (int k = 0; k < KK; k++) // conv: dWc = dactᵀ patches
                    m->dwc[c * KK + k] += d * patches[r * KK + k];
            }
        }
    }
    return loss;
}

// Steps [from, to) of the run; step s trains on batch s % 3 of the data set (the order
// depends on the step alone, so a resumed run sees the same batches).
static int train(ngd_optim *opt, model *m, const int id[2], int from, int to) {
    for (int step = from; step < to; step++) {
        size_t first = (size_t)(step % (NDATA / BATCH)) * BATCH;
        const float *x = images + first * POS;
        forward_backward(m, x, labels + first, BATCH, true, NULL);
        ngd_status st = NGD_OK;
        if (ngd_optim_layer_wants_stats(opt, id[0])) // conv: the images and (n o1 o2) x C_out
            st = ngd_optim_observe_conv(opt, id[0], BATCH, &geom, ngd_matrix_f32(x, BATCH, POS),
                                        ngd_matrix_f32(dact, BATCH * POS, CO));
        if (st == NGD_OK && ngd_optim_layer_wants_stats(opt, id[1])) // fc: a = pooled
            st = ngd_optim_observe(opt, id[1], BATCH, ngd_matrix_f32(pooled, BATCH, CO),
                                   ngd_matrix_f32(dlogits, BATCH, NCLS));
        if (st == NGD_OK) st = ngd_optim_step(opt);
        if (st != NGD_OK) {
            fprintf(stderr, "step %d: %s: %s\n", step, ngd_status_str(st), ngd_optim_errmsg(opt));
            return 1;
        }
    }
    return 0;
}

// A K-FAC optimizer with the conv (id[0]) and the fc layer (id[1]) of m registered.
static ngd_optim *make_optim(model *m, int id[2]) {
    ngd_config cfg = ngd_config_default(NGD_METHOD_KFAC);
    cfg.lr = 0.3f;
    cfg.loss_average = NGD_LOSS_BATCH; // the mean over the batch (and the sum over positions)
    cfg.kfac.T_u = 2;                  // statistics every other step
    cfg.kfac.T_i = 10;                 // eigendecompositions every 10 steps
    ngd_optim *opt;
    if (ngd_optim_create(&cfg, &opt) != NGD_OK) return NULL;
    ngd_layer conv = {.name = "conv",
                      .weight = m->wc,
                      .weight_grad = m->dwc,
                      .d_out = CO,
                      .d_in = KK,
                      .bias = m->bc,
                      .bias_grad = m->dbc};
    ngd_layer fc = {.name = "fc",
                    .weight = m->wf,
                    .weight_grad = m->dwf,
                    .d_out = NCLS,
                    .d_in = CO,
                    .bias = m->bf,
                    .bias_grad = m->dbf};
    if (ngd_optim_add_layer(opt, &conv, &id[0]) != NGD_OK ||
        ngd_optim_add_layer(opt, &fc, &id[1]) != NGD_OK) {
        fprintf(stderr, "add_layer: %s\n", ngd_optim_errmsg(opt));
        ngd_optim_free(opt);
        return NULL;
    }
    return opt;
}

int main(void) {
    for (int n = 0; n < NDATA; n++) { // stripes across, stripes down, checkerboard
        int cls = n % NCLS, phase = uniform() >= 0.0f;
        labels[n] = cls;
        for (int i = 0; i < IMG; i++)
            for (int j = 0; j < IMG; j++) {
                int on = cls == 0 ? i : cls == 1 ? j : i + j;
                images[n * POS + i * IMG + j] = (float)((on + phase) % 2) + 0.6f * uniform();
            }
    }
    static model m, half, final; // the live weights; their copies at step HALF and at the end
    for (int i = 0; i < CO * KK; i++)
        m.wc[i] = 0.6f * uniform();
    for (int i = 0; i < NCLS * CO; i++)
        m.wf[i] = 0.6f * uniform();
    double loss0 = forward_backward(&m, images, labels, NDATA, false, NULL);

    int id[2], ok = 1;
    ngd_optim *opt = make_optim(&m, id);
    void *ckpt = NULL; // what ngd_optim_save_mem allocates; ours to free()
    size_t ckpt_len = 0;
    if (!opt) return 1;
    int failed = train(opt, &m, id, 0, HALF) || ngd_optim_save_mem(opt, &ckpt, &ckpt_len);
    half = m; // the weights that go with the saved state
    failed = failed || train(opt, &m, id, HALF, STEPS);
    if (failed) {
        fprintf(stderr, "first run failed: %s\n", ngd_optim_errmsg(opt));
        ngd_optim_free(opt);
        free(ckpt); // NULL unless save_mem succeeded
        return 1;
    }
    final = m;
    for (int l = 0; l < 2; l++) { // K-FAC must have updated both preconditioners
        ngd_layer_health h;
        if (ngd_optim_layer_health(opt, id[l], &h) != NGD_OK || h.updates == 0) ok = 0;
    }
    ngd_optim_free(opt);
    int correct = 0;
    double loss1 = forward_backward(&m, images, labels, NDATA, false, &correct);

    m = half; // the resume: saved weights, a fresh optimizer, the saved optimizer state
    opt = make_optim(&m, id);
    if (!opt || ngd_optim_load_mem(opt, ckpt, ckpt_len) != NGD_OK) {
        fprintf(stderr, "load_mem: %s\n", opt ? ngd_optim_errmsg(opt) : "create failed");
        ngd_optim_free(opt);
        free(ckpt);
        return 1;
    }
    free(ckpt);
    int resumed = ngd_optim_steps(opt) == HALF && train(opt, &m, id, HALF, STEPS) == 0;
    ngd_optim_free(opt);
    resumed = resumed && memcmp(m.wc, final.wc, sizeof m.wc) == 0 &&
              memcmp(m.bc, final.bc, sizeof m.bc) == 0 &&
              memcmp(m.wf, final.wf, sizeof m.wf) == 0 && memcmp(m.bf, final.bf, sizeof m.bf) == 0;

    ok = ok && isfinite(loss1) && loss1 <= 0.5 * loss0 && resumed;
    printf("K-FAC conv classifier: loss %.4f -> %.4f after %d steps, accuracy %d/%d, "
           "resume at step %d %s (checkpoint %zu bytes)\n",
           loss0, loss1, STEPS, correct, NDATA, HALF, resumed ? "bit-identical" : "DIFFERS",
           ckpt_len);
    return ok ? 0 : 1;
}
