/*
 * batchnorm.c — batch normalization (PyTorch nn.BatchNorm1d on (N, C) and nn.BatchNorm2d on
 * (N, C, H, W), affine, track_running_stats): one implementation over (N, C, HW), alone or
 * followed by a ReLU in the same pass (the conv-BN-ReLU blocks of the CNNs).
 * Training normalizes with the batch mean and biased variance and updates the running
 * statistics (unbiased variance, momentum 0.1); evaluation normalizes with the running
 * statistics. Statistics are two passes (mean, then squared deviations: no cancellation),
 * each summed in float over one (sample, channel) plane and in float64 across planes; or,
 * in a conv-BN-ReLU block, combined in float64 from the moments the conv took of each plane
 * about the plane's own mean (one pass over x). A stage's last BN-ReLU can pool 2x2 as it
 * goes (nn_batchnorm_relu_maxpool_forward), so its output is never stored.
 * The layer stores no normalized copy of its input: x is borrowed and x̂ recomputed in
 * backward, and the fused ReLU's mask is recomputed the same way. No synchronized
 * (multi-process) batch norm.
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
    l->mean = nn_malloc(c, sizeof(float));
    l->invstd = nn_malloc(c, sizeof(float));
    l->dxsum = nn_malloc(c, sizeof(double));
    if (!l->w || !l->dw || !l->b || !l->db || !l->running_mean || !l->running_var || !l->mean ||
        !l->invstd || !l->dxsum) {
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
    free(l->mean);
    free(l->invstd);
    free(l->dxsum);
    memset(l, 0, sizeof *l);
}

// Σ x over channel c's planes, and Σ (x − mu)² about the float mean mu
static double plane_sum(const float *x, size_t N, size_t C, size_t HW, size_t c) {
    double s = 0;
    for (size_t n = 0; n < N; n++)
        s += (double)nn_plane_sum(x + (n * C + c) * HW, HW);
    return s;
}
static double plane_sqdev(const float *x, size_t N, size_t C, size_t HW, size_t c, float mu) {
    double s = 0;
    for (size_t n = 0; n < N; n++) {
        const float *xc = x + (n * C + c) * HW;
        float r = 0.0f;
        NN_SIMD_SUM(r)
        for (size_t p = 0; p < HW; p++) {
            const float d = xc[p] - mu;
            r += d * d;
        }
        s += (double)r;
    }
    return s;
}

// Channel c's Σ x and Σ (x − mu)² (mu = the first / M) from its planes' moments: a plane
// sums to HW a + r, and Σ (x − mu)² = q + 2 (a − mu) r + HW (a − mu)² exactly
static void channel_from_moments(const float *mom, size_t N, size_t C, size_t HW, size_t c,
                                 double *sum, double *ss) {
    double s = 0;
    for (size_t n = 0; n < N; n++) {
        const float *m = mom + NN_MOMENTS * (n * C + c);
        s += (double)HW * (double)m[0] + (double)m[1];
    }
    const double mu = s / (double)(N * HW);
    double q = 0;
    for (size_t n = 0; n < N; n++) {
        const float *m = mom + NN_MOMENTS * (n * C + c);
        const double da = (double)m[0] - mu;
        q += (double)m[2] + 2.0 * da * (double)m[1] + (double)HW * da * da;
    }
    *sum = s, *ss = q;
}

// Channel c's mean and 1/sqrt(var + eps) for a forward, into l->mean and l->invstd: in
// training the batch's (from the planes' moments when mom is set, else by two passes over
// x), with the running statistics updated; in evaluation the running ones
static void channel_stats(nn_batchnorm *l, const float *x, const float *mom, size_t N, size_t c,
                          bool train) {
    const size_t C = l->c, HW = l->hw, M = N * HW;
    float mean, invstd;
    if (train) {
        double mu, ss;
        if (mom) {
            channel_from_moments(mom, N, C, HW, c, &mu, &ss);
            mu /= (double)M;
            mean = (float)mu;
        } else {
            mu = plane_sum(x, N, C, HW, c) / (double)M;
            mean = (float)mu;
            // deviations about the float mean, corrected to the exact one
            const double dm = mu - (double)mean;
            ss = plane_sqdev(x, N, C, HW, c, mean) - (double)M * dm * dm;
        }
        // (rounding can leave ss a little below 0; a NaN or Inf stays, as in the mean: a
        // variance of 0 there had kept running_var finite beside a NaN running_mean)
        const double var = ss < 0 ? 0.0 : ss / (double)M;
        invstd = (float)(1.0 / sqrt(var + (double)l->eps));
        const float m = l->momentum;
        l->running_mean[c] = (1.0f - m) * l->running_mean[c] + m * mean;
        l->running_var[c] =
            (1.0f - m) * l->running_var[c] + m * (float)(var * (double)M / (double)(M - 1));
    } else {
        mean = l->running_mean[c];
        invstd = 1.0f / sqrtf(l->running_var[c] + l->eps);
    }
    l->mean[c] = mean;
    l->invstd[c] = invstd;
}

// One plane of BN-ReLU, max(0, γ x̂ + β), pooled over 2x2 windows of stride 2 by
// nn_maxpool2d's own 2x2 row kernel: y (or y16 rounded) and argmax of the (OH, OW)
// outputs. The ReLU outputs go through a buffer of BNP_COLS floats, in vector code: the
// whole plane at once when it fits (rows of 8 or 16 floats leave a loop per row mostly
// scalar), else a pair of rows of at most BNP_COLS / 2 columns at a time.
#define BNP_COLS 1024
// Element p of a plane held in f32 (f) or, where the constant b is true, in bf16 (h): each
// inlined copy of a loop reads one type, a bf16 one converting as it loads. (Each bf16 plane
// decoded into a buffer first made the bf16 passes 1.1-1.5x slower: 32 channels of 128
// 32x32 planes, 2 threads, forward 0.65 -> 0.43 ms, pooled 0.67 -> 0.60, backward 1.40 ->
// 1.13.)
#define BN_AT(f, h, b, p) ((b) ? nn_from_bf16((h)[p]) : (f)[p])
// BODY for p in [0, n) with x_ element p of the plane f, or of the bf16 plane h where b: two
// plain loops, the type chosen outside them. (The functions that use it are not inlined:
// inlined into the channel loop with a constant b, GCC kept a dead store of each f32 vector
// and the f32 forward took 1.3x longer.)
#define BN_EACH(f, h, b, n, x_, BODY)                                                              \
    do {                                                                                           \
        if (b) {                                                                                   \
            for (size_t p = 0; p < (n); p++) {                                                     \
                const float x_ = nn_from_bf16((h)[p]);                                             \
                BODY                                                                               \
            }                                                                                      \
        } else {                                                                                   \
            for (size_t p = 0; p < (n); p++) {                                                     \
                const float x_ = (f)[p];                                                           \
                BODY                                                                               \
            }                                                                                      \
        }                                                                                          \
    } while (0)
#define BN_INLINE static inline __attribute__((always_inline))

// 16 floats (or their mask, or 16 bf16 to be widened) as GCC vectors: SSE, AVX or AVX-512
// code as the build allows, with the same lanes in every build
typedef float bn_vf __attribute__((vector_size(64)));
typedef int32_t bn_vi __attribute__((vector_size(64)));
typedef uint32_t bn_vu __attribute__((vector_size(64)));
typedef uint16_t bn_vh __attribute__((vector_size(32)));

// *r = the 16 values of a plane from element p, in f32 (f) or, where b, in bf16 (h). (Through
// a pointer: a returned 64-byte vector changes the ABI where AVX-512 is not enabled.)
BN_INLINE void bn_load16(bn_vf *r, const float *f, const uint16_t *h, bool b, size_t p) {
    if (b) {
        bn_vh v;
        memcpy(&v, h + p, sizeof v);
        const bn_vu u = __builtin_convertvector(v, bn_vu) << 16;
        memcpy(r, &u, sizeof *r);
    } else {
        memcpy(r, f + p, sizeof *r);
    }
}

// The moments of a plane in f32 (f) or, where b, in bf16 (h), in 16 lanes (element p into
// lane p mod 16, then the lanes in order): the same sums whatever the type and the build, so
// that a bf16 plane's moments are those of its decoded values
BN_INLINE void plane_moments(const float *f, const uint16_t *h, bool b, size_t n, float *out) {
    const size_t n16 = n / 16 * 16;
    bn_vf s = {0}, r = {0}, q = {0};
    for (size_t p = 0; p < n16; p += 16) {
        bn_vf v;
        bn_load16(&v, f, h, b, p);
        s += v;
    }
    for (size_t p = n16; p < n; p++)
        s[p - n16] += BN_AT(f, h, b, p);
    float t = 0.0f;
    for (int i = 0; i < 16; i++)
        t += s[i];
    const float a = t / (float)n;
    for (size_t p = 0; p < n16; p += 16) {
        bn_vf v;
        bn_load16(&v, f, h, b, p);
        const bn_vf d = v - a;
        r += d;
        q += d * d;
    }
    for (size_t p = n16; p < n; p++) {
        const float d = BN_AT(f, h, b, p) - a;
        r[p - n16] += d;
        q[p - n16] += d * d;
    }
    float tr = 0.0f, tq = 0.0f;
    for (int i = 0; i < 16; i++)
        tr += r[i], tq += q[i];
    out[0] = a, out[1] = tr, out[2] = tq;
}
void nn_plane_moments(const float *v, size_t n, float *out) {
    plane_moments(v, NULL, false, n, out);
}
void nn_plane_moments_bf16(const uint16_t *v, size_t n, float *out) {
    plane_moments(NULL, v, true, n, out);
}

static void relu_pool_plane(const float *xf, const uint16_t *xh, bool xb, float w, float b,
                            float mean, float invstd, size_t W, size_t OH, size_t OW, float *y,
                            uint16_t *y16, int32_t *ap) {
    float t[BNP_COLS];
    if (2 * OH * W <= BNP_COLS) {
        const size_t n = 2 * OH * W; // (an odd last row is not pooled)
        BN_EACH(xf, xh, xb, n, x_, {
            const float v = w * ((x_ - mean) * invstd) + b;
            t[p] = NN_RELU(v);
        });
        for (size_t o1 = 0; o1 < OH; o1++) {
            const size_t r0 = 2 * o1 * W, o = o1 * OW;
            nn_maxpool2x2_row(t + r0, t + r0 + W, OW, (int32_t)r0, (int32_t)(r0 + W),
                              y ? y + o : NULL, y16 ? y16 + o : NULL, ap + o);
        }
        return;
    }
    for (size_t o1 = 0; o1 < OH; o1++)
        for (size_t q0 = 0; q0 < OW; q0 += BNP_COLS / 4) {
            const size_t nq = OW - q0 < BNP_COLS / 4 ? OW - q0 : BNP_COLS / 4;
            for (int r = 0; r < 2; r++) {
                const size_t r0 = (2 * o1 + (size_t)r) * W + 2 * q0;
                const float *xr = xb ? NULL : xf + r0;
                const uint16_t *hr = xb ? xh + r0 : NULL;
                float *tr = t + (size_t)r * (BNP_COLS / 2);
                for (size_t p = 0; p < 2 * nq; p++) {
                    const float v = w * ((BN_AT(xr, hr, xb, p) - mean) * invstd) + b;
                    tr[p] = NN_RELU(v);
                }
            }
            // the pool's own row kernel (a NaN wins its window, as in nn_maxpool2d)
            const size_t r0 = 2 * o1 * W + 2 * q0, o = o1 * OW + q0;
            nn_maxpool2x2_row(t, t + BNP_COLS / 2, nq, (int32_t)r0, (int32_t)(r0 + W),
                              y ? y + o : NULL, y16 ? y16 + o : NULL, ap + o);
        }
}

#define BN_PREFETCH 2 // planes ahead (forward and backward)
// The cache lines of the plane at element off of x or x16 (one of them set), asked for
// ahead: a channel's planes lie a whole image apart, so each is a fresh run of lines (and
// pages) that the hardware prefetcher would only pick up after its first misses
static inline void prefetch_plane(const float *x, const uint16_t *x16, size_t off, size_t HW) {
    const char *p = x16 ? (const char *)(x16 + off) : (const char *)(x + off);
    const size_t bytes = HW * (x16 ? sizeof *x16 : sizeof *x);
    for (size_t b = 0; b < bytes; b += 64)
        __builtin_prefetch(p + b, 0, 3);
}

// One plane of the forward (not pooled): y, or y16 rounded (relu only)
static void fwd_plane(const float *xf, const uint16_t *xh, bool xb, size_t HW, float w, float b,
                      float mean, float invstd, bool relu, float *y, uint16_t *y16) {
    if (y16) {
        BN_EACH(xf, xh, xb, HW, x_, {
            const float v = w * ((x_ - mean) * invstd) + b;
            y16[p] = nn_to_bf16(NN_RELU(v));
        });
    } else if (relu) {
        BN_EACH(xf, xh, xb, HW, x_, {
            const float v = w * ((x_ - mean) * invstd) + b;
            y[p] = NN_RELU(v);
        });
    } else {
        BN_EACH(xf, xh, xb, HW, x_, { y[p] = w * ((x_ - mean) * invstd) + b; });
    }
}

// One plane of x, held in f32 (x) or bf16 (x16), as the (xf, xh) pair of the functions above

// x (N, C, HW) -> y (N, C, HW), y = γ x̂ + β, then max(0, ·) when relu; into y16 rounded to
// bf16 instead when y16 is set (relu only). With pool (relu only, 2x2 windows of stride 2),
// y / y16 receive the pooled (N, C, OH, OW) instead, and pool its argmax. Training
// statistics from the planes' moments when mom is set (relu only), else by two passes.
// x16 instead of x: a bf16 x, converted as it is read (relu only; training needs mom).
static void forward(nn_batchnorm *l, const float *x, const uint16_t *x16, const float *mom,
                    float *y, uint16_t *y16, nn_maxpool2d *pool, size_t N, bool train, bool relu) {
    NN_ASSERT(!x != !x16 && (y || (y16 && relu)) && N >= 1 && N <= l->max_batch);
    NN_ASSERT(!train || N * l->hw > 1); // a batch variance needs two values per channel
    NN_ASSERT(!x16 || (relu && (mom || !train)));
    const size_t C = l->c, HW = l->hw;
    l->x = x;
    l->x16 = x16;
    l->n = N;
    l->train = train;
    l->relu = relu;
    if (pool) {
        NN_ASSERT(relu && pool->k == 2 && pool->s == 2 && pool->p == 0 && pool->c == C &&
                  pool->h * pool->w == HW && N <= pool->max_batch);
        pool->n = N;
    }
    NN_OMP_FOR(N * C * HW)
    for (size_t c = 0; c < C; c++) {
        channel_stats(l, x, mom, N, c, train);
        const float mean = l->mean[c], invstd = l->invstd[c];
        // y = γ x̂ + β with x̂ = (x − mean) invstd (not a x + s with s = β − γ invstd mean: that
        // cancels when the mean is large against the spread)
        const float w = l->w[c], b = l->b[c];
        for (size_t n = 0; n < N; n++) {
            const size_t off = (n * C + c) * HW;
            if (n + BN_PREFETCH < N) prefetch_plane(x, x16, off + BN_PREFETCH * C * HW, HW);
            if (pool) {
                const size_t L = pool->oh * pool->ow, o = (n * C + c) * L;
                float *yo = y16 ? NULL : y + o;
                uint16_t *yo16 = y16 ? y16 + o : NULL;
                if (x16)
                    relu_pool_plane(NULL, x16 + off, true, w, b, mean, invstd, pool->w, pool->oh,
                                    pool->ow, yo, yo16, pool->argmax + o);
                else
                    relu_pool_plane(x + off, NULL, false, w, b, mean, invstd, pool->w, pool->oh,
                                    pool->ow, yo, yo16, pool->argmax + o);
                continue;
            }
            float *yo = y16 ? NULL : y + off;
            uint16_t *yo16 = y16 ? y16 + off : NULL;
            if (x16)
                fwd_plane(NULL, x16 + off, true, HW, w, b, mean, invstd, relu, yo, yo16);
            else
                fwd_plane(x + off, NULL, false, HW, w, b, mean, invstd, relu, yo, yo16);
        }
    }
}

void nn_batchnorm_forward(nn_batchnorm *l, const float *x, float *y, size_t N, bool train) {
    forward(l, x, NULL, NULL, y, NULL, NULL, N, train, false);
}
void nn_batchnorm_relu_forward(nn_batchnorm *l, const float *x, float *y, size_t N, bool train) {
    forward(l, x, NULL, NULL, y, NULL, NULL, N, train, true);
}
void nn_batchnorm_relu_forward_bf16(nn_batchnorm *l, const float *x, uint16_t *y, size_t N,
                                    bool train) {
    forward(l, x, NULL, NULL, NULL, y, NULL, N, train, true);
}
void nn_batchnorm_relu_forward_moments(nn_batchnorm *l, const float *x, const float *mom, float *y,
                                       uint16_t *y16, size_t N) {
    NN_ASSERT(mom);
    forward(l, x, NULL, mom, y16 ? NULL : y, y16, NULL, N, true, true);
}
void nn_batchnorm_relu_maxpool_forward(nn_batchnorm *l, nn_maxpool2d *pool, const float *x,
                                       const float *mom, float *y, uint16_t *y16, size_t N,
                                       bool train) {
    NN_ASSERT(!mom || train);
    forward(l, x, NULL, mom, y16 ? NULL : y, y16, pool, N, train, true);
}
void nn_batchnorm_relu_forward16(nn_batchnorm *l, const uint16_t *x, const float *mom, float *y,
                                 uint16_t *y16, nn_maxpool2d *pool, size_t N, bool train) {
    NN_ASSERT(!mom || train);
    forward(l, NULL, x, mom, y16 ? NULL : y, y16, pool, N, train, true);
}

// Σ g and Σ g·x̂ of one plane into s1, s2 (x and dy each in f32 or, where xb / db16, in bf16:
// BN_AT), g = dy or, with relu, dy where γ x̂ + β > 0. Summed in 16 lanes (element p into lane
// p mod 16), then the lanes in order: the same sums whatever the types and the build (an
// `omp simd` reduction took another order for bf16 planes than for f32 ones)
BN_INLINE void bwd_sums(const float *xf, const uint16_t *xh, bool xb, const float *df,
                        const uint16_t *dh, bool db16, size_t HW, float mean, float invstd, float w,
                        float b, bool relu, float *s1, float *s2) {
    bn_vf r1 = {0}, r2 = {0};
    const size_t n16 = HW / 16 * 16;
    for (size_t p = 0; p < n16; p += 16) {
        bn_vf xv, g;
        bn_load16(&xv, xf, xh, xb, p);
        bn_load16(&g, df, dh, db16, p);
        const bn_vf xh_ = (xv - mean) * invstd;
        if (relu) { // (dy where γ x̂ + β > 0, else +0; a NaN is not > 0)
            const bn_vi on = w * xh_ + b > 0.0f;
            bn_vi gi;
            memcpy(&gi, &g, sizeof gi);
            gi &= on;
            memcpy(&g, &gi, sizeof g);
        }
        r1 += g;
        r2 += g * xh_;
    }
    for (size_t p = n16; p < HW; p++) { // (the last elements into lanes 0, 1, ...)
        const float xh_ = (BN_AT(xf, xh, xb, p) - mean) * invstd, d = BN_AT(df, dh, db16, p);
        const float g = !relu || w * xh_ + b > 0.0f ? d : 0.0f;
        r1[p - n16] += g;
        r2[p - n16] += g * xh_;
    }
    float t1 = 0.0f, t2 = 0.0f;
    for (int i = 0; i < 16; i++)
        t1 += r1[i], t2 += r2[i];
    *s1 = t1, *s2 = t2;
}

// One plane of dx = k (g − mdy − x̂ mdyx): written rounded into o16, or into o (added to
// unless set)
BN_INLINE void bwd_dx(const float *xf, const uint16_t *xh, bool xb, const float *df,
                      const uint16_t *dh, bool db16, size_t HW, float mean, float invstd, float w,
                      float b, bool relu, float k, float mdy, float mdyx, float *o, uint16_t *o16,
                      bool set) {
    if (o16) {
        for (size_t p = 0; p < HW; p++) {
            const float xh_ = (BN_AT(xf, xh, xb, p) - mean) * invstd;
            const float g = !relu || w * xh_ + b > 0.0f ? BN_AT(df, dh, db16, p) : 0.0f;
            o16[p] = nn_to_bf16(k * (g - mdy - xh_ * mdyx));
        }
        return;
    }
    for (size_t p = 0; p < HW; p++) {
        const float xh_ = (BN_AT(xf, xh, xb, p) - mean) * invstd;
        const float g = !relu || w * xh_ + b > 0.0f ? BN_AT(df, dh, db16, p) : 0.0f;
        const float v = k * (g - mdy - xh_ * mdyx);
        o[p] = set ? v : o[p] + v;
    }
}

// f(x's plane at off, dy's plane at off, ...) with each of x and dy in f32 or in bf16 (the
// other one NULL): one inlined copy of f per pair of types
#define BN_BY_TYPES(f, x, x16, dy, dy16, off, ...)                                                 \
    do {                                                                                           \
        if ((x16) && (dy16))                                                                       \
            f(NULL, (x16) + (off), true, NULL, (dy16) + (off), true, __VA_ARGS__);                 \
        else if (x16)                                                                              \
            f(NULL, (x16) + (off), true, (dy) + (off), NULL, false, __VA_ARGS__);                  \
        else if (dy16)                                                                             \
            f((x) + (off), NULL, false, NULL, (dy16) + (off), true, __VA_ARGS__);                  \
        else                                                                                       \
            f((x) + (off), NULL, false, (dy) + (off), NULL, false, __VA_ARGS__);                   \
    } while (0)

// With g = dy (or dy masked by the ReLU: where γ x̂ + β > 0, recomputed exactly as forward):
// train:  dx = γ·invstd/M · (M·g − Σg − x̂·Σ(g·x̂))   (the batch statistics depend on x)
// eval:   dx = γ·invstd · g
// and in both: dγ += Σ g·x̂, dβ += Σ g. dx is added to, or written when `set`. dy16 instead
// of dy: a bf16 dy, converted as it is read, like a bf16 x.
static void backward(nn_batchnorm *l, const float *dy, const uint16_t *dy16, float *dx,
                     uint16_t *dx16, bool set) {
    NN_ASSERT(!dy != !dy16 && (l->x || l->x16) && l->n >= 1);
    const size_t C = l->c, HW = l->hw, N = l->n, M = N * HW;
    const float *x = l->x;
    const uint16_t *x16 = l->x16;
    const bool relu = l->relu;
    NN_OMP_FOR(N * C * HW)
    for (size_t c = 0; c < C; c++) {
        const float mean = l->mean[c], invstd = l->invstd[c], w = l->w[c], b = l->b[c];
        double sdy = 0, sdyx = 0;
        for (size_t n = 0; n < N; n++) {
            const size_t off = (n * C + c) * HW;
            if (n + BN_PREFETCH < N) {
                prefetch_plane(x, x16, off + BN_PREFETCH * C * HW, HW);
                prefetch_plane(dy, dy16, off + BN_PREFETCH * C * HW, HW);
            }
            float r1, r2;
            BN_BY_TYPES(bwd_sums, x, x16, dy, dy16, off, HW, mean, invstd, w, b, relu, &r1, &r2);
            sdy += (double)r1;
            sdyx += (double)r2;
        }
        l->dw[c] += (float)sdyx;
        l->db[c] += (float)sdy;
        if (!dx && !dx16) continue;
        const float k = w * invstd;
        const float mdy = l->train ? (float)(sdy / (double)M) : 0.0f;
        const float mdyx = l->train ? (float)(sdyx / (double)M) : 0.0f;
        double dsum = 0.0; // (want_dxsum) Σ dx, as nn_conv2d's bias gradient sums its dy
        for (size_t n = 0; n < N; n++) {
            const size_t off = (n * C + c) * HW;
            float *o = dx16 ? NULL : dx + off;
            uint16_t *o16 = dx16 ? dx16 + off : NULL;
            BN_BY_TYPES(bwd_dx, x, x16, dy, dy16, off, HW, mean, invstd, w, b, relu, k, mdy, mdyx,
                        o, o16, set);
            if (l->want_dxsum)
                dsum += (double)(o16 ? nn_plane_sum_bf16(o16, HW) : nn_plane_sum(o, HW));
        }
        l->dxsum[c] = dsum;
    }
}

void nn_batchnorm_backward(nn_batchnorm *l, const float *dy, float *dx) {
    NN_ASSERT(!l->relu);
    backward(l, dy, NULL, dx, NULL, false);
}
void nn_batchnorm_relu_backward(nn_batchnorm *l, const float *dy, float *dx) {
    NN_ASSERT(l->relu);
    backward(l, dy, NULL, dx, NULL, true);
}
void nn_batchnorm_relu_backward_bf16(nn_batchnorm *l, const float *dy, uint16_t *dx) {
    NN_ASSERT(l->relu && dx);
    backward(l, dy, NULL, NULL, dx, true);
}
void nn_batchnorm_relu_backward16(nn_batchnorm *l, const uint16_t *dy, uint16_t *dx) {
    NN_ASSERT(l->relu && dx);
    backward(l, NULL, dy, NULL, dx, true);
}

size_t nn_batchnorm_params(const nn_batchnorm *l, nn_param *out) {
    if (out) {
        out[0] = (nn_param){"weight", l->w, l->dw, l->c, NULL};
        out[1] = (nn_param){"bias", l->b, l->db, l->c, NULL};
    }
    return 2;
}
