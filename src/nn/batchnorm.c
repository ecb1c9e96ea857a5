/*
 * batchnorm.c — batch normalization (PyTorch nn.BatchNorm1d on (N, C) and nn.BatchNorm2d on
 * (N, C, H, W), affine, track_running_stats): one implementation over (N, C, HW).
 * Training normalizes with the batch mean and biased variance and updates the running
 * statistics (unbiased variance, momentum 0.1); evaluation normalizes with the running
 * statistics. Statistics are summed in float64. No synchronized (multi-process) batch norm.
 */
#include <math.h>
#include <string.h>

#include "nn.h"

nn_status nn_batchnorm_init(nn_batchnorm *l, size_t c, size_t hw, size_t max_batch) {
    memset(l, 0, sizeof *l);
    if (c == 0 || hw == 0 || max_batch == 0) return NN_ERR_ARG;
    l->c = c;
    l->hw = hw;
    l->max_batch = max_batch;
    l->eps = 1e-5f;
    l->momentum = 0.1f;
    l->w = nn_malloc(c, sizeof(float));
    l->dw = nn_calloc(c, sizeof(float));
    l->b = nn_calloc(c, sizeof(float));
    l->db = nn_calloc(c, sizeof(float));
    l->running_mean = nn_calloc(c, sizeof(float));
    l->running_var = nn_malloc(c, sizeof(float));
    l->invstd = nn_malloc(c, sizeof(float));
    l->xhat = nn_malloc(nn_mul(max_batch, nn_mul(c, hw)), sizeof(float));
    if (!l->w || !l->dw || !l->b || !l->db || !l->running_mean || !l->running_var || !l->invstd ||
        !l->xhat) {
        nn_batchnorm_free(l);
        return NN_ERR_NOMEM;
    }
    for (size_t i = 0; i < c; i++)
        l->w[i] = l->running_var[i] = 1.0f;
    return NN_OK;
}

void nn_batchnorm_free(nn_batchnorm *l) {
    free(l->w);
    free(l->dw);
    free(l->b);
    free(l->db);
    free(l->running_mean);
    free(l->running_var);
    free(l->invstd);
    free(l->xhat);
    memset(l, 0, sizeof *l);
}

// x (N, C, HW) -> y (N, C, HW)
void nn_batchnorm_forward(nn_batchnorm *l, const float *x, float *y, size_t N, bool train) {
    NN_ASSERT(x && y && N >= 1 && N <= l->max_batch);
    NN_ASSERT(!train || N * l->hw > 1); // a batch variance needs two values per channel
    const size_t C = l->c, HW = l->hw, M = N * HW;
    l->n = N;
    l->train = train;
    NN_OMP_FOR(N * C * HW)
    for (size_t c = 0; c < C; c++) {
        float mean, invstd;
        if (train) {
            double s = 0, ss = 0;
            for (size_t n = 0; n < N; n++) {
                const float *xc = x + (n * C + c) * HW;
                for (size_t p = 0; p < HW; p++)
                    s += (double)xc[p];
            }
            const double mu = s / (double)M;
            for (size_t n = 0; n < N; n++) {
                const float *xc = x + (n * C + c) * HW;
                for (size_t p = 0; p < HW; p++) {
                    double d = (double)xc[p] - mu;
                    ss += d * d;
                }
            }
            const double var = ss / (double)M; // two passes: no cancellation
            mean = (float)mu;
            invstd = (float)(1.0 / sqrt(var + (double)l->eps));
            const float m = l->momentum;
            l->running_mean[c] = (1.0f - m) * l->running_mean[c] + m * mean;
            l->running_var[c] = (1.0f - m) * l->running_var[c] + m * (float)(ss / (double)(M - 1));
        } else {
            mean = l->running_mean[c];
            invstd = 1.0f / sqrtf(l->running_var[c] + l->eps);
        }
        l->invstd[c] = invstd;
        const float w = l->w[c], b = l->b[c];
        for (size_t n = 0; n < N; n++) {
            const size_t off = (n * C + c) * HW;
            for (size_t p = 0; p < HW; p++) {
                float xh = (x[off + p] - mean) * invstd;
                l->xhat[off + p] = xh;
                y[off + p] = w * xh + b;
            }
        }
    }
}

// train:  dx = γ·invstd/M · (M·dy − Σdy − x̂·Σ(dy·x̂))   (the batch statistics depend on x)
// eval:   dx = γ·invstd · dy
// and in both: dγ += Σ dy·x̂, dβ += Σ dy.
void nn_batchnorm_backward(nn_batchnorm *l, const float *dy, float *dx) {
    NN_ASSERT(dy && l->n >= 1);
    const size_t C = l->c, HW = l->hw, N = l->n, M = N * HW;
    NN_OMP_FOR(N * C * HW)
    for (size_t c = 0; c < C; c++) {
        double sdy = 0, sdyx = 0;
        for (size_t n = 0; n < N; n++) {
            const size_t off = (n * C + c) * HW;
            for (size_t p = 0; p < HW; p++) {
                sdy += (double)dy[off + p];
                sdyx += (double)dy[off + p] * (double)l->xhat[off + p];
            }
        }
        l->dw[c] += (float)sdyx;
        l->db[c] += (float)sdy;
        if (!dx) continue;
        const float k = l->w[c] * l->invstd[c];
        if (l->train) {
            const float mdy = (float)(sdy / (double)M), mdyx = (float)(sdyx / (double)M);
            for (size_t n = 0; n < N; n++) {
                const size_t off = (n * C + c) * HW;
                for (size_t p = 0; p < HW; p++)
                    dx[off + p] += k * (dy[off + p] - mdy - l->xhat[off + p] * mdyx);
            }
        } else {
            for (size_t n = 0; n < N; n++) {
                const size_t off = (n * C + c) * HW;
                for (size_t p = 0; p < HW; p++)
                    dx[off + p] += k * dy[off + p];
            }
        }
    }
}

size_t nn_batchnorm_params(const nn_batchnorm *l, nn_param *out) {
    if (out) {
        out[0] = (nn_param){"weight", l->w, l->dw, l->c};
        out[1] = (nn_param){"bias", l->b, l->db, l->c};
    }
    return 2;
}
