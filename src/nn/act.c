/*
 * act.c — elementwise activations, forward and backward: ReLU, and GELU in both forms
 * (exact erf form = PyTorch nn.GELU(); tanh approximation = GPT-2 / llm.c). Both keep a
 * borrowed pointer to their input for the backward pass. ReLU may run in place (y == x):
 * relu(x) > 0 exactly when x > 0, so the overwritten input still gives the right mask.
 * GELU may not (its derivative needs x).
 *
 * GELU evaluates tanh, erf and exp through the vectorisable approximations below (absolute
 * errors under 4e-7, tested against float64) rather than libm's scalar calls, which took
 * half of a character transformer's training step.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "nn.h"

// tanh u = 1 − 2/(e^{2u} + 1): no cancellation in the absolute error, ±1 at the ends
static inline float tanh_fast(float u) { return 1.0f - 2.0f / (nn_exp_fast(2.0f * u) + 1.0f); }

// erf, odd in x: its Taylor series to x^11 below |x| = 0.5 (remainder < 2e-8), else
// Abramowitz & Stegun 7.1.26 (1.5e-7), whose 1 − p·t·e^{-x²} cancels near 0
static inline float erf_fast(float x) {
    const float a = fabsf(x), t = 1.0f / (1.0f + 0.3275911f * a);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    const float big = 1.0f - p * t * nn_exp_fast(-a * a);
    // the series at min(a, 0.5): beyond that its weight is 0, and at |x| above ~6000 its
    // value overflowed to -inf, which the 0 weight made NaN (GELU(1e4) was NaN)
    const float as = a < 0.5f ? a : 0.5f;
    const float z = as * as; // 2/√π (a − a³/3 + a⁵/10 − a⁷/42 + a⁹/216 − a¹¹/1320)
    float q = -1.0f / 1320.0f;
    q = q * z + 1.0f / 216.0f;
    q = q * z - 1.0f / 42.0f;
    q = q * z + 1.0f / 10.0f;
    q = q * z - 1.0f / 3.0f;
    q = q * z + 1.0f;
    // the two branches blended by a 0/1 weight and the sign put back through the bits: no
    // control flow, so GCC vectorises the loops that call this
    const float w = (float)(a < 0.5f);
    const float e = w * (1.1283791670955126f * as * q) + (1.0f - w) * big;
    uint32_t ue, ux;
    memcpy(&ue, &e, sizeof ue);
    memcpy(&ux, &x, sizeof ux);
    ue |= ux & 0x80000000u;
    float r;
    memcpy(&r, &ue, sizeof r);
    return r;
}

float nn_tanh_approx(float u) { return tanh_fast(u); }
float nn_erf_approx(float x) { return erf_fast(x); }
float nn_exp_approx(float x) { return nn_exp_fast(x); }

// ---- ReLU ----

// y = max(x, 0), or y16 its bf16 rounding (a loop each: see gelu_backward)
static void relu_forward(nn_relu *l, const float *x, float *y, uint16_t *y16, size_t n) {
    NN_ASSERT(x && (y || y16));
    l->x = x;
    l->n = n;
    if (y) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y[i] = NN_RELU(x[i]);
    } else {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y16[i] = nn_to_bf16(NN_RELU(x[i]));
    }
}

void nn_relu_forward(nn_relu *l, const float *x, float *y, size_t n) {
    relu_forward(l, x, y, NULL, n);
}
void nn_relu_forward16(nn_relu *l, const float *x, uint16_t *y16, size_t n) {
    relu_forward(l, x, NULL, y16, n);
}

void nn_relu_backward(nn_relu *l, const float *dy, float *dx) {
    NN_ASSERT(dy && l->x);
    if (!dx) return;
    const float *x = l->x;
    NN_OMP_FOR(l->n)
    for (size_t i = 0; i < l->n; i++)
        if (x[i] > 0.0f) dx[i] += dy[i];
}

void nn_relu_backward_set(nn_relu *l, const float *dy, float *dx) {
    NN_ASSERT(dy && dx && l->x);
    const float *x = l->x;
    NN_OMP_FOR(l->n)
    for (size_t i = 0; i < l->n; i++)
        dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

void nn_relu_backward_set16(nn_relu *l, const float *dy, float *dx, uint16_t *dx16) {
    NN_ASSERT(dy && dx && dx16 && l->x);
    const float *x = l->x;
    NN_OMP_FOR(l->n)
    for (size_t i = 0; i < l->n; i++) {
        const float v = x[i] > 0.0f ? dy[i] : 0.0f;
        dx[i] = v;
        dx16[i] = nn_to_bf16(v);
    }
}

// ---- GELU ----

#define NN_SQRT_2_OVER_PI 0.7978845608028654f // √(2/π)
#define NN_INV_SQRT_2     0.7071067811865476f // 1/√2
#define NN_INV_SQRT_2PI   0.3989422804014327f // 1/√(2π)
#define NN_GELU_C         0.044715f

static inline float gelu(bool tanh_kind, float v) {
    if (tanh_kind) {
        const float u = NN_SQRT_2_OVER_PI * (v + NN_GELU_C * v * v * v);
        return 0.5f * v * (1.0f + tanh_fast(u));
    }
    return 0.5f * v * (1.0f + erf_fast(v * NN_INV_SQRT_2));
}

// ---- GELU in AVX-512 ----
// The same functions 16 lanes at a time, each step as the scalar code takes it, except each
// division: GCC's vectorised loops spent 40 % of GELU's time waiting on `vdivps` (one every
// 16 cycles), so 1/d here is rcp14's estimate and one Newton step (d >= 1; relative error
// about 2^-28 before rounding: the result is within an ulp of the division's). Tested
// through the layer against float64 (test_nn_grad).
#if defined(__x86_64__) && defined(__GNUC__)
#define NN_HAVE_GELU16 1
#define G16            __attribute__((target("avx512f"), always_inline)) static inline

G16 __m512 g16_set(float v) { return _mm512_set1_ps(v); }

// nn_exp_fast: the magnitude's bits clamped to 87, k = round(x log2 e) by a truncating
// conversion, Cody–Waite r, the degree-7 polynomial, 2^k through the exponent bits
G16 __m512 exp16(__m512 x) {
    __m512i ux = _mm512_castps_si512(x);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    const __m512i ax =
        _mm512_min_epu32(_mm512_andnot_si512(sign, ux), _mm512_set1_epi32(0x42ae0000));
    ux = _mm512_or_si512(_mm512_and_si512(ux, sign), ax);
    x = _mm512_castsi512_ps(ux);
    const __m512 z = _mm512_mul_ps(x, g16_set(1.44269504088896341f));
    const __m512 half = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GE_OQ),
                                             g16_set(-0.5f), g16_set(0.5f));
    const __m512i ki = _mm512_cvttps_epi32(_mm512_add_ps(z, half));
    const __m512 k = _mm512_cvtepi32_ps(ki);
    const __m512 r = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(k, g16_set(0.693145751953125f))),
                                   _mm512_mul_ps(k, g16_set(1.428606765330187045e-6f)));
    __m512 p = g16_set(1.0f / 5040.0f);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), g16_set(1.0f / 720.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), g16_set(1.0f / 120.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), g16_set(1.0f / 24.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), g16_set(1.0f / 6.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), g16_set(0.5f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), g16_set(1.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), g16_set(1.0f));
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(ki, _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

// 1/d for d >= 1 (finite or a NaN)
G16 __m512 recip16(__m512 d) {
    const __m512 r = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, g16_set(2.0f)));
}

// tanh_fast: 1 − 2/(e^{2u} + 1)
G16 __m512 tanh16(__m512 u) {
    const __m512 e = exp16(_mm512_mul_ps(g16_set(2.0f), u));
    return _mm512_sub_ps(g16_set(1.0f),
                         _mm512_mul_ps(g16_set(2.0f), recip16(_mm512_add_ps(e, g16_set(1.0f)))));
}

// erf_fast: the series below |x| = 0.5, Abramowitz & Stegun above, blended by a 0/1 weight,
// the sign put back through the bits. 1/(1 + 0.3275911 a) takes a at most 1e4 (erf is ±1 to
// float precision long before; an infinite a gave rcp14's 0 times inf, NaN; min keeps a NaN)
G16 __m512 erf16x(__m512 x, __m512 *ex) {
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    const __m512 a = _mm512_castsi512_ps(_mm512_andnot_si512(sign, _mm512_castps_si512(x)));
    const __m512 ac = _mm512_min_ps(g16_set(1e4f), a);
    const __m512 t = recip16(_mm512_add_ps(g16_set(1.0f), _mm512_mul_ps(g16_set(0.3275911f), ac)));
    __m512 p = g16_set(1.061405429f);
    p = _mm512_sub_ps(_mm512_mul_ps(p, t), g16_set(1.453152027f));
    p = _mm512_add_ps(_mm512_mul_ps(p, t), g16_set(1.421413741f));
    p = _mm512_sub_ps(_mm512_mul_ps(p, t), g16_set(0.284496736f));
    p = _mm512_add_ps(_mm512_mul_ps(p, t), g16_set(0.254829592f));
    const __m512 na2 = _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a); // (−a)·a
    const __m512 en = exp16(na2); // e^(−x²) (x's magnitude clamped to 87 by exp16)
    if (ex) *ex = en;
    const __m512 big = _mm512_sub_ps(g16_set(1.0f), _mm512_mul_ps(_mm512_mul_ps(p, t), en));
    const __mmask16 small = _mm512_cmp_ps_mask(a, g16_set(0.5f), _CMP_LT_OQ);
    const __m512 as = _mm512_mask_blend_ps(small, g16_set(0.5f), a);
    const __m512 z = _mm512_mul_ps(as, as);
    __m512 q = g16_set(-1.0f / 1320.0f);
    q = _mm512_add_ps(_mm512_mul_ps(q, z), g16_set(1.0f / 216.0f));
    q = _mm512_sub_ps(_mm512_mul_ps(q, z), g16_set(1.0f / 42.0f));
    q = _mm512_add_ps(_mm512_mul_ps(q, z), g16_set(1.0f / 10.0f));
    q = _mm512_sub_ps(_mm512_mul_ps(q, z), g16_set(1.0f / 3.0f));
    q = _mm512_add_ps(_mm512_mul_ps(q, z), g16_set(1.0f));
    const __m512 w = _mm512_maskz_mov_ps(small, g16_set(1.0f));
    const __m512 ser = _mm512_mul_ps(_mm512_mul_ps(g16_set(1.1283791670955126f), as), q);
    const __m512 e =
        _mm512_add_ps(_mm512_mul_ps(w, ser), _mm512_mul_ps(_mm512_sub_ps(g16_set(1.0f), w), big));
    return _mm512_castsi512_ps(
        _mm512_or_si512(_mm512_castps_si512(e), _mm512_and_si512(_mm512_castps_si512(x), sign)));
}

G16 __m512 erf16(__m512 x) { return erf16x(x, NULL); }

// gelu(tanh_kind, v), 16 lanes
G16 __m512 gelu16(bool tk, __m512 v) {
    const __m512 hv = _mm512_mul_ps(g16_set(0.5f), v);
    if (tk) {
        const __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(g16_set(NN_GELU_C), v), v), v);
        const __m512 u = _mm512_mul_ps(g16_set(NN_SQRT_2_OVER_PI), _mm512_add_ps(v, v3));
        return _mm512_mul_ps(hv, _mm512_add_ps(g16_set(1.0f), tanh16(u)));
    }
    return _mm512_mul_ps(
        hv, _mm512_add_ps(g16_set(1.0f), erf16(_mm512_mul_ps(v, g16_set(NN_INV_SQRT_2)))));
}

// GELU(v) into *y and GELU'(v) into *g, 16 lanes (v clamped to ±1e4 by compares for GELU''s
// second term: a NaN stays), sharing their exponential: the tanh form's tanh(u) is
// copysign((1 − e)/(1 + e), u) with e = exp(−2|u|), the erf form's φ(v) the e^(−v²/2) inside
// erf16. GELU is gelu16's to float32 rounding; one exponential instead of two
// (nn_gelu_forward_grad: the backward then multiplies).
G16 void gelu_pair16(bool tk, __m512 v, __m512 *y, __m512 *g) {
    const __m512 hv = _mm512_mul_ps(g16_set(0.5f), v);
    __m512 vc =
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, g16_set(1e4f), _CMP_GT_OQ), v, g16_set(1e4f));
    vc =
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, g16_set(-1e4f), _CMP_LT_OQ), vc, g16_set(-1e4f));
    if (tk) {
        const __m512 vc2 = _mm512_mul_ps(vc, vc);
        const __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(g16_set(NN_GELU_C), v), v), v);
        const __m512 u = _mm512_mul_ps(g16_set(NN_SQRT_2_OVER_PI), _mm512_add_ps(v, v3));
        const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
        const __m512 a2 = _mm512_mul_ps(
            g16_set(2.0f), _mm512_castsi512_ps(_mm512_andnot_si512(sign, _mm512_castps_si512(u))));
        const __mmask16 in = _mm512_cmp_ps_mask(a2, g16_set(87.0f), _CMP_LT_OQ);
        const __m512 e = _mm512_maskz_mov_ps(in, exp16(_mm512_sub_ps(_mm512_setzero_ps(), a2)));
        const __m512 r = recip16(_mm512_add_ps(g16_set(1.0f), e));
        const __m512 m = _mm512_mul_ps(_mm512_sub_ps(g16_set(1.0f), e), r);
        const __m512 sm =
            _mm512_castsi512_ps(_mm512_or_si512(_mm512_andnot_si512(sign, _mm512_castps_si512(m)),
                                                _mm512_and_si512(_mm512_castps_si512(u), sign)));
        const __m512 onept = _mm512_add_ps(g16_set(1.0f), sm); // 1 + tanh(u)
        const __m512 du = _mm512_mul_ps(
            g16_set(NN_SQRT_2_OVER_PI),
            _mm512_add_ps(g16_set(1.0f), _mm512_mul_ps(g16_set(3.0f * NN_GELU_C), vc2)));
        const __m512 ser = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(g16_set(4.0f), e), r), r);
        const __m512 t2 = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(g16_set(0.5f), vc), ser), du);
        *y = _mm512_mul_ps(hv, onept);
        *g = _mm512_add_ps(_mm512_mul_ps(g16_set(0.5f), onept), t2);
        return;
    }
    __m512 ex;
    const __m512 onepe =
        _mm512_add_ps(g16_set(1.0f), erf16x(_mm512_mul_ps(v, g16_set(NN_INV_SQRT_2)), &ex));
    *y = _mm512_mul_ps(hv, onepe);
    const __m512 cdf = _mm512_mul_ps(g16_set(0.5f), onepe);
    *g = _mm512_add_ps(cdf, _mm512_mul_ps(vc, _mm512_mul_ps(g16_set(NN_INV_SQRT_2PI), ex)));
}

// gelu_grad(tanh_kind, v), 16 lanes: gelu_pair16's GELU' (its GELU unused, dropped by the
// compiler)
G16 __m512 gelu_grad16(bool tk, __m512 v) {
    __m512 y, g;
    gelu_pair16(tk, v, &y, &g);
    return g;
}

// The 16 lanes of v into y (f32) or y16 (rounded as nn_to_bf16 does), m of them
G16 void g16_store(__m512 v, float *y, uint16_t *y16, size_t m) {
    float t[16];
    _mm512_storeu_ps(t, v);
    if (y) memcpy(y, t, m * sizeof(float));
    if (y16)
        for (size_t j = 0; j < m; j++)
            y16[j] = nn_to_bf16(t[j]);
}

// y[i] (or y16[i], rounded) = GELU(x[i]) for i < n
__attribute__((target("avx512f"))) static void gelu_fwd16(bool tk, const float *x, float *y,
                                                          uint16_t *y16, size_t n) {
    size_t i = 0;
    if (!y16)
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(y + i, gelu16(tk, _mm512_loadu_ps(x + i)));
    for (; i < n; i += 16) {
        const size_t m = n - i < 16 ? n - i : 16;
        const __mmask16 k = (__mmask16)((1u << m) - 1u);
        g16_store(gelu16(tk, _mm512_maskz_loadu_ps(k, x + i)), y ? y + i : NULL,
                  y16 ? y16 + i : NULL, m);
    }
}

// y[i] (or y16[i], rounded) = GELU(x[i]) and x[i] = GELU'(x[i]) for i < n
__attribute__((target("avx512f"))) static void gelu_fwdg16(bool tk, float *x, float *y,
                                                           uint16_t *y16, size_t n) {
    size_t i = 0;
    if (!y16)
        for (; i + 16 <= n; i += 16) {
            __m512 gy, gg;
            gelu_pair16(tk, _mm512_loadu_ps(x + i), &gy, &gg);
            _mm512_storeu_ps(x + i, gg);
            _mm512_storeu_ps(y + i, gy);
        }
    for (; i < n; i += 16) {
        const size_t m = n - i < 16 ? n - i : 16;
        const __mmask16 k = (__mmask16)((1u << m) - 1u);
        __m512 gy, gg;
        gelu_pair16(tk, _mm512_maskz_loadu_ps(k, x + i), &gy, &gg);
        _mm512_mask_storeu_ps(x + i, k, gg);
        if (y16)
            g16_store(gy, NULL, y16 + i, m);
        else
            _mm512_mask_storeu_ps(y + i, k, gy);
    }
}

// dx[i] (+)= dy[i] · g[i] (GELU' stored by the forward); dx16 (set only): dx rounded too
__attribute__((target("avx512f"))) static void
gelu_bwdg16(const float *dy, const float *g, float *dx, uint16_t *dx16, bool set, size_t n) {
    size_t i = 0;
    if (!dx16)
        for (; i + 16 <= n; i += 16) {
            __m512 v = _mm512_mul_ps(_mm512_loadu_ps(dy + i), _mm512_loadu_ps(g + i));
            if (!set) v = _mm512_add_ps(_mm512_loadu_ps(dx + i), v);
            _mm512_storeu_ps(dx + i, v);
        }
    for (; i < n; i += 16) {
        const size_t m = n - i < 16 ? n - i : 16;
        const __mmask16 k = (__mmask16)((1u << m) - 1u);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + i), _mm512_maskz_loadu_ps(k, g + i));
        if (!set) v = _mm512_add_ps(_mm512_maskz_loadu_ps(k, dx + i), v);
        if (dx16)
            g16_store(v, dx + i, dx16 + i, m);
        else
            _mm512_mask_storeu_ps(dx + i, k, v);
    }
}

// dx[i] (+)= dy[i] · GELU'(x[i]) for i < n; dx16 (set only): dx rounded too
__attribute__((target("avx512f"))) static void gelu_bwd16(bool tk, const float *dy, const float *x,
                                                          float *dx, uint16_t *dx16, bool set,
                                                          size_t n) {
    size_t i = 0;
    if (!dx16)
        for (; i + 16 <= n; i += 16) {
            __m512 v =
                _mm512_mul_ps(_mm512_loadu_ps(dy + i), gelu_grad16(tk, _mm512_loadu_ps(x + i)));
            if (!set) v = _mm512_add_ps(_mm512_loadu_ps(dx + i), v);
            _mm512_storeu_ps(dx + i, v);
        }
    for (; i < n; i += 16) {
        const size_t m = n - i < 16 ? n - i : 16;
        const __mmask16 k = (__mmask16)((1u << m) - 1u);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + i),
                                 gelu_grad16(tk, _mm512_maskz_loadu_ps(k, x + i)));
        if (!set) v = _mm512_add_ps(_mm512_maskz_loadu_ps(k, dx + i), v);
        g16_store(v, dx + i, dx16 ? dx16 + i : NULL, m);
    }
}

// Whether GELU takes the AVX-512 versions: the CPU has AVX-512F (libgcc's CPU model, read
// once at start-up) and the tests have not turned them off (nn_gelu_set_vector)
static _Atomic bool gelu16_off;
static bool gelu16_ok(void) { return __builtin_cpu_supports("avx512f") && !gelu16_off; }
void nn_gelu_set_vector(bool on) { gelu16_off = !on; }
#else
void nn_gelu_set_vector(bool on) { (void)on; }
#endif

// Blocks of GELU16_BLOCK values, on the threads where the array is long (NN_OMP_FOR's bound)
#define GELU16_BLOCK 4096
// CALL for each block [o, o + m) of GELU16_BLOCK values of n, over the threads where n is long
#define GELU16_BLOCKS(n, CALL)                                                                     \
    do {                                                                                           \
        const size_t nb_ = ((n) + GELU16_BLOCK - 1) / GELU16_BLOCK;                                \
        NN_OMP_FOR(n)                                                                              \
        for (size_t b_ = 0; b_ < nb_; b_++) {                                                      \
            const size_t o = b_ * GELU16_BLOCK, m = (n)-o < GELU16_BLOCK ? (n)-o : GELU16_BLOCK;   \
            CALL;                                                                                  \
        }                                                                                          \
    } while (0)

// y = GELU(x), or y16 its bf16 rounding: a plain loop per kind and output (see gelu_backward)
static void gelu_forward(nn_gelu *l, const float *x, float *y, uint16_t *y16, size_t n) {
    NN_ASSERT(x && (y || y16) && x != y); // backward needs the input
    l->x = x;
    l->g = NULL;
    l->n = n;
    const bool tk = l->kind == NN_GELU_TANH;
#ifdef NN_HAVE_GELU16
    if (gelu16_ok()) {
        GELU16_BLOCKS(n, gelu_fwd16(tk, x + o, y ? y + o : NULL, y16 ? y16 + o : NULL, m));
        return;
    }
#endif
    if (tk && y) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y[i] = gelu(true, x[i]);
    } else if (y) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y[i] = gelu(false, x[i]);
    } else if (tk) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y16[i] = nn_to_bf16(gelu(true, x[i]));
    } else {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            y16[i] = nn_to_bf16(gelu(false, x[i]));
    }
}

void nn_gelu_forward(nn_gelu *l, const float *x, float *y, size_t n) {
    gelu_forward(l, x, y, NULL, n);
}
void nn_gelu_forward16(nn_gelu *l, const float *x, uint16_t *y16, size_t n) {
    gelu_forward(l, x, NULL, y16, n);
}

static inline float gelu_grad(bool tanh_kind, float v);

// y (or y16) = GELU(x), and x = GELU'(x) for the backward, which then multiplies: one pass of
// the exponentials in place of two (gelu_pair16), the same values to float32 rounding
void nn_gelu_forward_grad(nn_gelu *l, float *x, float *y, uint16_t *y16, size_t n) {
    NN_ASSERT(x && (!y != !y16) && x != y);
    const bool tk = l->kind == NN_GELU_TANH;
    l->x = NULL;
    l->g = x;
    l->n = n;
#ifdef NN_HAVE_GELU16
    if (gelu16_ok()) {
        GELU16_BLOCKS(n, gelu_fwdg16(tk, x + o, y ? y + o : NULL, y16 ? y16 + o : NULL, m));
        return;
    }
#endif
    NN_OMP_FOR(n)
    for (size_t i = 0; i < n; i++) {
        const float v = x[i], gy = gelu(tk, v);
        x[i] = gelu_grad(tk, v);
        if (y16)
            y16[i] = nn_to_bf16(gy);
        else
            y[i] = gy;
    }
}

// GELU'(v): tanh form 0.5 (1 + t) + 0.5 v (1 − t²) du; erf form Φ(v) + v φ(v). The second
// terms take v clamped to ±1e4, where they are 0 to float precision: unclamped, du overflowed
// past |v| ~ 1.8e19 (0 · inf: NaN) and v φ(v) kept nn_exp_fast's floor e⁻⁸⁷ times v (GELU'
// of 3e38 was 2.97). A NaN v stays NaN.
static inline float gelu_grad(bool tanh_kind, float v) {
    const float vc = v > 1e4f ? 1e4f : (v < -1e4f ? -1e4f : v);
    if (tanh_kind) {
        // 1 + t and 1 − t² = sech² u from e = exp(−2|u|), without the cancellation of 1 − t·t
        // near |t| = 1 (2e-6 off float64 at |x| ~ 5; now 1e-6, PyTorch's float32 figure)
        const float u = NN_SQRT_2_OVER_PI * (v + NN_GELU_C * v * v * v);
        // (past e⁻⁸⁷, nn_exp_fast's floor, sech² u is 0; no branch and no fminf: the loops
        // vectorise)
        const float a2 = 2.0f * fabsf(u);
        const float e = nn_exp_fast(-a2) * (float)(a2 < 87.0f), r = 1.0f / (1.0f + e);
        const float onept = 1.0f + copysignf((1.0f - e) * r, u);
        const float du = NN_SQRT_2_OVER_PI * (1.0f + 3.0f * NN_GELU_C * vc * vc);
        return 0.5f * onept + 0.5f * vc * (4.0f * e * r * r) * du;
    }
    const float cdf = 0.5f * (1.0f + erf_fast(v * NN_INV_SQRT_2));
    const float pdf = NN_INV_SQRT_2PI * nn_exp_fast(-0.5f * vc * vc);
    return cdf + vc * pdf;
}

// dx += (or, where set, =) dy · GELU'(x), and dx16 = dx rounded where given (set only): plain
// loops (one flag inside a loop, GCC left it scalar: chargpt's step 50 -> 78 ms)
static void gelu_backward(nn_gelu *l, const float *dy, float *dx, uint16_t *dx16, bool set) {
    NN_ASSERT(dy && (l->x || l->g) && (!dx16 || (set && dx)));
    if (!dx) return;
    if (l->g) { // GELU' stored by nn_gelu_forward_grad
        const float *g = l->g;
        const size_t n = l->n;
#ifdef NN_HAVE_GELU16
        if (gelu16_ok()) {
            GELU16_BLOCKS(n, gelu_bwdg16(dy + o, g + o, dx + o, dx16 ? dx16 + o : NULL, set, m));
            return;
        }
#endif
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++) {
            const float v = dy[i] * g[i] + (set ? 0.0f : dx[i]);
            dx[i] = v;
            if (dx16) dx16[i] = nn_to_bf16(v);
        }
        return;
    }
    const float *x = l->x;
    const size_t n = l->n;
#ifdef NN_HAVE_GELU16
    if (gelu16_ok()) {
        const bool tk = l->kind == NN_GELU_TANH;
        GELU16_BLOCKS(n, gelu_bwd16(tk, dy + o, x + o, dx + o, dx16 ? dx16 + o : NULL, set, m));
        return;
    }
#endif
    if (dx16 && l->kind == NN_GELU_TANH) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++) {
            const float v = dy[i] * gelu_grad(true, x[i]);
            dx[i] = v;
            dx16[i] = nn_to_bf16(v);
        }
    } else if (dx16) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++) {
            const float v = dy[i] * gelu_grad(false, x[i]);
            dx[i] = v;
            dx16[i] = nn_to_bf16(v);
        }
    } else if (l->kind == NN_GELU_TANH && set) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            dx[i] = dy[i] * gelu_grad(true, x[i]);
    } else if (l->kind == NN_GELU_TANH) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            dx[i] += dy[i] * gelu_grad(true, x[i]);
    } else if (set) {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            dx[i] = dy[i] * gelu_grad(false, x[i]);
    } else {
        NN_OMP_FOR(n)
        for (size_t i = 0; i < n; i++)
            dx[i] += dy[i] * gelu_grad(false, x[i]);
    }
}

void nn_gelu_backward(nn_gelu *l, const float *dy, float *dx) {
    gelu_backward(l, dy, dx, NULL, false);
}
void nn_gelu_backward_set(nn_gelu *l, const float *dy, float *dx) {
    gelu_backward(l, dy, dx, NULL, true);
}
void nn_gelu_backward_set16(nn_gelu *l, const float *dy, float *dx, uint16_t *dx16) {
    gelu_backward(l, dy, dx, dx16, true);
}
