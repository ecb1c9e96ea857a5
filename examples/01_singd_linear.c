/*
 * 01_singd_linear.c — the smallest complete use of libngd: a hand-written training loop
 * (softmax regression on a synthetic 3-class problem) trained with SINGD, showing the
 * "statistics in, update out" calls: add_layer once; each step wants_stats -> observe ->
 * step. Exits non-zero if the loss does not fall, so `make test` checks it still works.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ngd.h"

enum { N = 64, DIN = 8, DOUT = 3, STEPS = 200 };

int main(void) {
    static float x[N * DIN], W[DOUT * DIN], b[DOUT], dW[DOUT * DIN], db[DOUT], dy[N * DOUT];
    static int label[N];
    unsigned s = 12345;
    for (int n = 0; n < N; n++) { // three Gaussian-ish blobs
        label[n] = n % DOUT;
        for (int j = 0; j < DIN; j++) {
            s = s * 1103515245u + 12345u;
            float noise = (float)((s >> 8) & 0xffff) / 65536.0f - 0.5f;
            x[n * DIN + j] = noise + (j % DOUT == label[n] ? 1.0f : 0.0f);
        }
    }
    ngd_config cfg = ngd_config_default(NGD_METHOD_SINGD); // INGD with dense factors
    cfg.lr = 0.05f;
    cfg.T = 1;
    ngd_optim *opt;
    ngd_status st = ngd_optim_create(&cfg, &opt);
    if (st != NGD_OK) {
        fprintf(stderr, "ngd_optim_create: %s\n", ngd_status_str(st));
        return 1;
    }
    ngd_layer fc = {.name = "fc",
                    .weight = W,
                    .weight_grad = dW,
                    .d_out = DOUT,
                    .d_in = DIN,
                    .bias = b,
                    .bias_grad = db};
    int id;
    if (ngd_optim_add_layer(opt, &fc, &id) != NGD_OK) {
        fprintf(stderr, "%s\n", ngd_optim_errmsg(opt));
        return 1;
    }
    double first = 0, loss = 0;
    for (int step = 0; step < STEPS; step++) {
        loss = 0; // forward: logits = x Wᵀ + b, softmax cross-entropy (mean over the batch)
        for (int n = 0; n < N; n++) {
            float z[DOUT], m = -INFINITY, sum = 0;
            for (int i = 0; i < DOUT; i++) {
                z[i] = b[i];
                for (int j = 0; j < DIN; j++)
                    z[i] += W[i * DIN + j] * x[n * DIN + j];
                m = fmaxf(m, z[i]);
            }
            for (int i = 0; i < DOUT; i++)
                sum += expf(z[i] - m);
            for (int i = 0; i < DOUT; i++) {
                float p = expf(z[i] - m) / sum;
                dy[n * DOUT + i] = (p - (i == label[n] ? 1.0f : 0.0f)) / N; // ∂loss/∂logits
            }
            loss -= (double)(z[label[n]] - m - logf(sum)) / N;
        }
        for (int i = 0; i < DOUT; i++) { // backward: dW = dyᵀ x, db = Σ dy
            db[i] = 0;
            for (int j = 0; j < DIN; j++)
                dW[i * DIN + j] = 0;
            for (int n = 0; n < N; n++) {
                db[i] += dy[n * DOUT + i];
                for (int j = 0; j < DIN; j++)
                    dW[i * DIN + j] += dy[n * DOUT + i] * x[n * DIN + j];
            }
        }
        if (ngd_optim_wants_stats(opt) && // the one line where a training loop meets libngd
            ngd_optim_observe(opt, id, N, ngd_matrix_f32(x, N, DIN), ngd_matrix_f32(dy, N, DOUT)) !=
                NGD_OK) {
            fprintf(stderr, "observe failed: %s\n", ngd_optim_errmsg(opt));
            return 1;
        }
        if (ngd_optim_step(opt) != NGD_OK) {
            fprintf(stderr, "step failed: %s\n", ngd_optim_errmsg(opt));
            return 1;
        }
        if (step == 0) first = loss;
    }
    printf("SINGD softmax regression: loss %.4f -> %.4f after %d steps\n", first, loss, STEPS);
    ngd_optim_free(opt);
    return loss < 0.5 * first ? 0 : 1;
}
