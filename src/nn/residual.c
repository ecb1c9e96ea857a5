/*
 * residual.c — the residual (skip) connection y = a + b and its backward, which sends dy
 * unchanged to both branches. Stateless: no struct, nothing kept. y may alias a or b.
 */
#include "nn.h"

void nn_residual_forward(const float *a, const float *b, float *y, size_t n) {
    NN_ASSERT(a && b && y);
    NN_OMP_FOR(n)
    for (size_t i = 0; i < n; i++)
        y[i] = a[i] + b[i];
}

void nn_residual_backward(const float *dy, float *da, float *db, size_t n) {
    NN_ASSERT(dy && da != dy && db != dy);
    if (da) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            da[i] += dy[i];
    }
    if (db) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            db[i] += dy[i];
    }
}
