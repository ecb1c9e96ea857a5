/* tproblem.c — see tproblem.h. */
#include "tproblem.h"

#include <stdlib.h>
#include <string.h>

#include "ref.h"

void tp_init(tp_problem *p, size_t N, size_t din, size_t dhid, size_t dout,
             unsigned long long seed) {
    memset(p, 0, sizeof *p);
    p->N = N, p->din = din, p->dhid = dhid, p->dout = dout, p->seed = seed;
    p->W1 = calloc(dhid * din, 4), p->b1 = calloc(dhid, 4), p->W2 = calloc(dout * dhid, 4);
    p->b2 = calloc(dout, 4);
    p->gW1 = calloc(dhid * din, 4), p->gb1 = calloc(dhid, 4), p->gW2 = calloc(dout * dhid, 4);
    p->gb2 = calloc(dout, 4);
    p->x = calloc(N * din, 4), p->h = calloc(N * dhid, 4), p->y = calloc(N * dout, 4);
    p->t = calloc(N * dout, 4), p->dy = calloc(N * dout, 4), p->dh = calloc(N * dhid, 4);
    ref_rng r = {seed};
    for (size_t i = 0; i < dhid * din; i++)
        p->W1[i] = (float)ref_uniform(&r, -0.3, 0.3);
    for (size_t i = 0; i < dout * dhid; i++)
        p->W2[i] = (float)ref_uniform(&r, -0.3, 0.3);
    for (size_t i = 0; i < dhid; i++)
        p->b1[i] = (float)ref_uniform(&r, -0.1, 0.1);
    for (size_t i = 0; i < dout; i++)
        p->b2[i] = (float)ref_uniform(&r, -0.1, 0.1);
}

void tp_free(tp_problem *p) {
    float *bufs[] = {p->W1,  p->b1, p->W2, p->b2, p->gW1, p->gb1, p->gW2,
                     p->gb2, p->x,  p->h,  p->y,  p->t,   p->dy,  p->dh};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    memset(p, 0, sizeof *p);
}

ngd_status tp_register(tp_problem *p, ngd_optim *o) {
    ngd_layer l1 = {.name = "fc1",
                    .weight = p->W1,
                    .weight_grad = p->gW1,
                    .d_out = p->dhid,
                    .d_in = p->din,
                    .bias = p->b1,
                    .bias_grad = p->gb1};
    ngd_layer l2 = {.name = "fc2",
                    .weight = p->W2,
                    .weight_grad = p->gW2,
                    .d_out = p->dout,
                    .d_in = p->dhid,
                    .bias = p->b2,
                    .bias_grad = p->gb2};
    ngd_status s = ngd_optim_add_layer(o, &l1, &p->id1);
    if (s == NGD_OK) s = ngd_optim_add_layer(o, &l2, &p->id2);
    return s;
}

// y = x Wᵀ + b for row-major x (N x din), W (dout x din)
static void lin_fwd(const float *x, const float *W, const float *b, float *y, size_t N, size_t din,
                    size_t dout) {
    for (size_t n = 0; n < N; n++)
        for (size_t i = 0; i < dout; i++) {
            double s = (double)b[i];
            for (size_t j = 0; j < din; j++)
                s += (double)W[i * din + j] * (double)x[n * din + j];
            y[n * dout + i] = (float)s;
        }
}

// gW = dyᵀ x, gb = Σ dy, dx = dy W
void tp_lin_bwd(const float *x, const float *W, const float *dy, float *gW, float *gb, float *dx,
                size_t N, size_t din, size_t dout) {
    for (size_t i = 0; i < dout; i++) {
        double sb = 0;
        for (size_t n = 0; n < N; n++)
            sb += (double)dy[n * dout + i];
        gb[i] = (float)sb;
        for (size_t j = 0; j < din; j++) {
            double s = 0;
            for (size_t n = 0; n < N; n++)
                s += (double)dy[n * dout + i] * (double)x[n * din + j];
            gW[i * din + j] = (float)s;
        }
    }
    if (dx)
        for (size_t n = 0; n < N; n++)
            for (size_t j = 0; j < din; j++) {
                double s = 0;
                for (size_t i = 0; i < dout; i++)
                    s += (double)dy[n * dout + i] * (double)W[i * din + j];
                dx[n * din + j] = (float)s;
            }
}

double tp_forward_backward(tp_problem *p, ngd_optim *o, size_t step, float loss_scale) {
    ref_rng r = {p->seed * 1000003ull + step + 1};
    for (size_t i = 0; i < p->N * p->din; i++)
        p->x[i] = (float)ref_uniform(&r, -1, 1);
    for (size_t i = 0; i < p->N * p->dout; i++)
        p->t[i] = (float)ref_uniform(&r, -1, 1);
    lin_fwd(p->x, p->W1, p->b1, p->h, p->N, p->din, p->dhid);
    lin_fwd(p->h, p->W2, p->b2, p->y, p->N, p->dhid, p->dout);
    double loss = 0;
    for (size_t i = 0; i < p->N * p->dout; i++) {
        double d = (double)p->y[i] - (double)p->t[i];
        loss += 0.5 * d * d / (double)p->N;
        p->dy[i] = (float)(d / (double)p->N * (double)loss_scale);
    }
    tp_lin_bwd(p->h, p->W2, p->dy, p->gW2, p->gb2, p->dh, p->N, p->dhid, p->dout);
    tp_lin_bwd(p->x, p->W1, p->dh, p->gW1, p->gb1, NULL, p->N, p->din, p->dhid);
    if (o && ngd_optim_wants_stats(o)) {
        ngd_optim_observe(o, p->id1, p->N, ngd_matrix_f32(p->x, p->N, p->din),
                          ngd_matrix_f32(p->dh, p->N, p->dhid));
        ngd_optim_observe(o, p->id2, p->N, ngd_matrix_f32(p->h, p->N, p->dhid),
                          ngd_matrix_f32(p->dy, p->N, p->dout));
    }
    return loss;
}

ngd_status tp_step(tp_problem *p, ngd_optim *o, size_t step) {
    tp_forward_backward(p, o, step, 1.0f);
    return ngd_optim_step(o);
}
