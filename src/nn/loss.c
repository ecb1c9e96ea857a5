/*
 * loss.c — softmax cross-entropy over rows of logits (PyTorch F.cross_entropy with
 * reduction='mean' and label_smoothing), fused with its gradient, plus the accuracy
 * count. Log-sum-exp per row in float64 for the loss value, over exponentials by
 * nn_exp_fast (relative error 2e-7 per term, vectorised; libm's exp was a scalar call per
 * logit). No class weights, no ignore index (every row counts).
 */
#include <math.h>
#include <string.h>

#include "nn.h"

// Row i's loss term (and its dlogits row, scaled by f = scale / N, when d is not NULL)
static double xent_row(const float *z, int32_t y, size_t K, double eps, double uni, double f,
                       float *d) {
    NN_ASSERT(y >= 0 && (size_t)y < K);
    float mx = z[0];
    for (size_t j = 1; j < K; j++)
        mx = z[j] > mx ? z[j] : mx;
    double s = 0.0, zsum = 0.0;
    NN_SIMD_SUM(s, zsum)
    for (size_t j = 0; j < K; j++) {
        s += (double)nn_exp_fast(z[j] - mx); // each term to 2e-7, summed in float64
        zsum += (double)z[j];
    }
    const double lse = (double)mx + log(s);
    // -Σ_j target_j log p_j with target = (1-ε) onehot + ε/K and Σ target = 1, the smoothing
    // term only with ε > 0 (a -inf logit, a probability of 0, made it 0 · inf = NaN). A NaN or
    // +inf logit (zsum NaN or +inf) makes the row's loss NaN: the max and nn_exp_fast skip NaN,
    // so lse alone stayed finite. A non-finite loss gives a NaN gradient row, not finite
    // numbers a step would take.
    const bool bad = isnan(zsum) || zsum == (double)INFINITY;
    const double loss = bad ? (double)NAN
                            : (1.0 - eps) * (lse - (double)z[y]) +
                                  (uni > 0.0 ? uni * ((double)K * lse - zsum) : 0.0);
    if (d && !isfinite(loss)) {
        for (size_t j = 0; j < K; j++)
            d[j] = NAN;
    } else if (d) {
        for (size_t j = 0; j < K; j++) {
            const double p = (double)nn_exp_fast((float)((double)z[j] - lse));
            const double t = uni + ((size_t)y == j ? 1.0 - eps : 0.0);
            d[j] = (float)(f * (p - t));
        }
    }
    return loss;
}

// The rows in blocks: each block's row terms on the threads into a buffer, then added to the
// total in row order, as a serial loop would (the same bits on any thread count; a text
// model's 8192 rows ran on one thread while the other waited)
#define XENT_BLOCK 1024
float nn_xent_forward(const float *logits, const int32_t *labels, size_t N, size_t K,
                      float smoothing, float scale, float *dlogits) {
    NN_ASSERT(logits && labels && N >= 1 && K >= 1 && smoothing >= 0.0f && smoothing <= 1.0f);
    const double eps = (double)smoothing, uni = eps / (double)K, f = (double)scale / (double)N;
    double total = 0.0, term[XENT_BLOCK];
    for (size_t i0 = 0; i0 < N; i0 += XENT_BLOCK) {
        const size_t nb = N - i0 < XENT_BLOCK ? N - i0 : XENT_BLOCK;
        NN_OMP_FOR(nb * K)
        for (size_t i = 0; i < nb; i++)
            term[i] = xent_row(logits + (i0 + i) * K, labels[i0 + i], K, eps, uni, f,
                               dlogits ? dlogits + (i0 + i) * K : NULL);
        for (size_t i = 0; i < nb; i++)
            total += term[i];
    }
    return (float)(total / (double)N);
}

size_t nn_xent_correct(const float *logits, const int32_t *labels, size_t N, size_t K) {
    NN_ASSERT(logits && labels && K >= 1);
    size_t correct = 0; // (a count: any order of the threads gives the same)
#ifdef _OPENMP
#pragma omp parallel for schedule(static) reduction(+ : correct) if (N * K >= 32768)
#endif
    for (size_t i = 0; i < N; i++) {
        const float *z = logits + i * K;
        size_t best = 0;
        for (size_t j = 1; j < K; j++)
            if (z[j] > z[best]) best = j;
        correct += best == (size_t)labels[i];
    }
    return correct;
}
