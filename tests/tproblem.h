/*
 * tproblem.h — a small, deterministic two-layer training problem for optimizer tests:
 * Linear(d_in -> d_hid) -> Linear(d_hid -> d_out) (no activation, so gradients are exact
 * and cheap), MSE loss averaged over the batch, fixed random data per step.
 */
#ifndef NGD_TPROBLEM_H
#define NGD_TPROBLEM_H
#include <stddef.h>

#include "ngd.h"

typedef struct {
    size_t N, din, dhid, dout;
    float *W1, *b1, *W2, *b2;       // parameters
    float *gW1, *gb1, *gW2, *gb2;   // gradients
    float *x, *h, *y, *t, *dy, *dh; // activations (N x ...)
    int id1, id2;
    unsigned long long seed;
} tp_problem;

// Allocates and initialises (weights ~ U(-0.3, 0.3) from seed). Free with tp_free.
void tp_init(tp_problem *p, size_t N, size_t din, size_t dhid, size_t dout,
             unsigned long long seed);
void tp_free(tp_problem *p);
// Registers both layers with the optimizer (ids stored in p).
ngd_status tp_register(tp_problem *p, ngd_optim *o);
// Forward + backward for step `step` (data drawn from (seed, step)); gradients of
// loss * loss_scale; observes statistics when wanted. Returns the (unscaled) loss.
double tp_forward_backward(tp_problem *p, ngd_optim *o, size_t step, float loss_scale);
// One full step: forward/backward, observe, ngd_optim_step. Returns the status of the step.
ngd_status tp_step(tp_problem *p, ngd_optim *o, size_t step);
// A Linear layer's backward in float64 sums: gW = dyᵀ x, gb = Σ_n dy, dx = dy W (dx may be
// NULL); x (N, din), W and gW (dout, din), dy (N, dout).
void tp_lin_bwd(const float *x, const float *W, const float *dy, float *gW, float *gb, float *dx,
                size_t N, size_t din, size_t dout);
#endif
