/*
 * 00_sgd_minimal.c — the fewest calls that train with libngd: least-squares regression of
 * y = W* x + b* by SGD with momentum. A first-order method never asks for statistics
 * (ngd_optim_wants_stats stays false), so the loop is: compute the gradients, then
 * ngd_optim_step. Switching to a second-order method is the same loop plus the observe call
 * of 01_singd_linear.c. Exits non-zero unless W and b come within 1e-3 of W* and b*, so
 * `make test` checks it still works.
 */
#include <math.h>
#include <stdio.h>

#include "ngd.h"

enum { N = 32, DIN = 4, DOUT = 2, STEPS = 300 };

int main(void) {
    static const float W_true[DOUT * DIN] = {1, -2, 0.5f, 3, -1, 0, 2, 0.25f};
    static const float b_true[DOUT] = {0.5f, -1};
    static float x[N * DIN], W[DOUT * DIN], b[DOUT], dW[DOUT * DIN], db[DOUT];
    unsigned s = 12345;
    for (int k = 0; k < N * DIN; k++) { // fixed pseudo-random inputs in [-1, 1)
        s = s * 1103515245u + 12345u;
        x[k] = (float)((s >> 8) & 0xffff) / 32768.0f - 1.0f;
    }

    ngd_config cfg = ngd_config_default(NGD_METHOD_SGD);
    cfg.lr = 0.1f;
    cfg.momentum = 0.9f;
    ngd_optim *opt;
    if (ngd_optim_create(&cfg, &opt) != NGD_OK) return 1;
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
        ngd_optim_free(opt);
        return 1;
    }
    double loss = 0;
    for (int step = 0; step < STEPS; step++) {
        // loss = (1/2N) Σ_n |W x_n + b - (W* x_n + b*)|², and its gradients dW, db
        loss = 0;
        for (int i = 0; i < DOUT; i++) {
            db[i] = 0;
            for (int j = 0; j < DIN; j++)
                dW[i * DIN + j] = 0;
        }
        for (int n = 0; n < N; n++)
            for (int i = 0; i < DOUT; i++) {
                float r = b[i] - b_true[i];
                for (int j = 0; j < DIN; j++)
                    r += (W[i * DIN + j] - W_true[i * DIN + j]) * x[n * DIN + j];
                loss += 0.5 * (double)r * (double)r / N;
                db[i] += r / N;
                for (int j = 0; j < DIN; j++)
                    dW[i * DIN + j] += r * x[n * DIN + j] / N;
            }
        if (ngd_optim_wants_stats(opt)) { // never for SGD or AdamW
            fprintf(stderr, "SGD asked for statistics\n");
            ngd_optim_free(opt);
            return 1;
        }
        ngd_status st = ngd_optim_step(opt); // W -= lr * (momentum-averaged dW), b likewise
        if (st != NGD_OK) {
            fprintf(stderr, "step %d: %s: %s\n", step, ngd_status_str(st), ngd_optim_errmsg(opt));
            ngd_optim_free(opt);
            return 1;
        }
    }
    ngd_optim_free(opt);
    double err = 0;
    for (int k = 0; k < DOUT * DIN; k++)
        err = fmax(err, fabs((double)W[k] - (double)W_true[k]));
    for (int i = 0; i < DOUT; i++)
        err = fmax(err, fabs((double)b[i] - (double)b_true[i]));
    printf("SGD least squares: loss %.3g, largest parameter error %.3g after %d steps\n", loss, err,
           STEPS);
    return err < 1e-3 ? 0 : 1;
}
