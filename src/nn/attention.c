/*
 * attention.c — multi-head self-attention on (B, T, C), forward and backward:
 *   qkv = x Wqkvᵀ + bqkv          Linear C -> 3C, columns [q | k | v], head h at h*hs
 *   att = softmax(q kᵀ / √hs)     per (b, h), (T, T); causal: key j <= query i only
 *   out = att v                   heads concatenated back to (B, T, C)
 *   y   = out Wprojᵀ + bproj      Linear C -> C
 * The two projections are nn_linear layers, so they register with libngd like any other
 * Linear (a = x or out, g = their output gradients). Each (b, h) head is one pass of the
 * heads' AVX-512 kernels below (scores, softmax and att v; or their gradients), or of
 * per-head GEMMs and plain loops (larger heads without a mask; CPUs without AVX-512: see
 * use_kernels); the heads run side by side on the
 * threads, and the softmax probabilities are kept, transposed, for backward. No attention
 * dropout, no masks other than causal, no key/value caching.
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "nn.h"

// ---- the heads' AVX-512 kernels ----
// Each head's products are small (chargpt: T 64, hs 16: 65k multiply-adds each), so per-head
// GEMM calls cost more in dispatch than in arithmetic, and a softmax along rows of 1..T
// scores spends its time in loop ends and horizontal reductions. Here a head's forward or
// backward is one pass over L1-resident scratch:
// - scores for 16 queries at a time, one query per lane of a 16-float vector (GCC's vector
//   extension, compiled for AVX-512 whatever the build's -march: one register), key by key:
//   s[j][t] =
//   q[i0+t]·k[j]. The softmax over j is then lane-wise (maxima and sums down the keys, no
//   reduction across lanes), and the causal mask is a lane test on the diagonal block only;
// - the probabilities are kept transposed, att[j][i] (rows of tp = T rounded up to 16,
//   lanes past T zero), so each 16-query block writes whole vectors;
// - the products with v, k, q and dout take 16 queries (or, for dv and dk, 16 keys) in lanes
//   too, 16 columns of the head at a time in 16 accumulators, each multiply-add with one
//   broadcast element of v, k, q or dout (read in place, or from zero-padded copies of
//   hp = hs rounded up to 16 floats); the 16 x 16 result is transposed back into rows.
// Sums run in another order than a GEMM's: tested against float64 (test_nn_grad), where
// the per-head GEMM path (CPUs without AVX-512, larger heads without a mask: use_kernels) is
// too.
#if defined(__x86_64__) && defined(__GNUC__)
#define NN_HAVE_HEAD_KERNELS 1
#endif
static size_t round16(size_t n) { return (n + 15) / 16 * 16; }

// floats of one thread's scratch: a transposed block (hp x tp), three padded row blocks
// (tp x hp each), the gradient of the scores (tp x tp), one block of 16-lane scores and the
// backward's two strips of 16-wide rows (tp x 16 each)
static size_t scratch_floats(size_t hs, size_t max_t) {
    const size_t hp = round16(hs), tp = round16(max_t);
    return nn_mul(nn_mul(4, hp), tp) + nn_mul(tp, tp) + nn_mul(3 * 16, tp);
}

#ifdef NN_HAVE_HEAD_KERNELS
static size_t minz(size_t a, size_t b) { return a < b ? a : b; }

// dst rows (n of them, stride hp) = src rows (stride lds, hs floats), zero-padded to hp
static void pad_rows(float *dst, size_t hp, const float *src, size_t lds, size_t hs, size_t n) {
    for (size_t j = 0; j < n; j++) {
        memcpy(dst + j * hp, src + j * lds, hs * sizeof(float));
        memset(dst + j * hp + hs, 0, (hp - hs) * sizeof(float));
    }
}

// Rows of a head's q, k, v or dout for lanes_comb (n rows, stride lds, hs floats): in place
// when hs is a multiple of 16 (*ld = lds), else copied into dst with zero padding to hp
// floats (a vector past a row's hs could read past the buffer's end); returns the rows
static const float *head_rows(float *dst, size_t hp, const float *src, size_t lds, size_t hs,
                              size_t n, size_t *ld) {
    if (hs == hp) {
        *ld = lds;
        return src;
    }
    pad_rows(dst, hp, src, lds, hs, n);
    *ld = hp;
    return dst;
}

typedef float att_v16 __attribute__((vector_size(64)));
#define ATT_LD(v, p) memcpy(&(v), (p), sizeof(att_v16))
#define ATT_ST(p, v) memcpy((p), &(v), sizeof(att_v16))
// x·u + acc (x a float, broadcast) in one fused multiply-add: the build's ISO C mode keeps
// GCC from contracting `acc += x * u` (which ran at half the rate)
#define ATT_FMA(x, u, acc) ((att_v16)_mm512_fmadd_ps(_mm512_set1_ps(x), (__m512)(u), (__m512)(acc)))
// helpers inlined into the two kernels (each compiled for AVX-512)
#define ATT_KI __attribute__((target("avx512f"), always_inline)) static inline
#define ATT_K  __attribute__((target("avx512f"))) static

// r[i][j] <-> r[j][i] for a 16 x 16 block in registers (nn.h's nn_transpose16x32)
ATT_KI void tr16(att_v16 *r) {
    __m512i t[16];
    for (int i = 0; i < 16; i++)
        t[i] = (__m512i)r[i];
    nn_transpose16x32(t);
    for (int i = 0; i < 16; i++)
        r[i] = (att_v16)t[i];
}

// dst (hs x tp) = srcᵀ for src's n rows (stride lds, hs floats), columns n..tp zero; whole
// 16 x 16 blocks through registers (16 loads and 16 stores a block, where element by element
// took 256 strided loads and as many stores)
ATT_KI void transpose_rows(float *dst, size_t tp, const float *src, size_t lds, size_t hs,
                           size_t n) {
    const size_t nb = n / 16 * 16, db = hs / 16 * 16;
    for (size_t d0 = 0; d0 < db; d0 += 16)
        for (size_t j0 = 0; j0 < nb; j0 += 16) {
            att_v16 r[16];
            for (int i = 0; i < 16; i++)
                ATT_LD(r[i], src + (j0 + (size_t)i) * lds + d0);
            tr16(r);
            for (int i = 0; i < 16; i++)
                ATT_ST(dst + (d0 + (size_t)i) * tp + j0, r[i]);
        }
    for (size_t d = 0; d < hs; d++) {
        float *r = dst + d * tp;
        for (size_t j = d < db ? nb : 0; j < n; j++)
            r[j] = src[j * lds + d];
        for (size_t j = n; j < tp; j++)
            r[j] = 0.0f;
    }
}

// Rows i0 .. i0 + m of out (m <= 16, stride ldo, hs floats) = scale · Σ_{j<n} A[j][i] · R[j]:
// the 16 rows in lanes, A's rows (stride lda) read 16 at a time at column i0, R's rows
// (stride ldr) 16 floats from each block of columns (readable: head_rows), every FMA with a
// broadcast element of R; the 16 x 16 result transposed back into rows
ATT_KI void lanes_comb(const float *A, size_t lda, size_t i0, size_t n, const float *R, size_t ldr,
                       size_t hs, float scale, float *out, size_t ldo, size_t m) {
    for (size_t d0 = 0; d0 < hs; d0 += 16) {
        att_v16 acc[16], a;
        for (int t = 0; t < 16; t++)
            acc[t] = (att_v16){0};
        for (size_t j = 0; j < n; j++) {
            ATT_LD(a, A + j * lda + i0);
            const float *rj = R + j * ldr + d0;
            for (int t = 0; t < 16; t++)
                acc[t] = ATT_FMA(rj[t], a, acc[t]);
        }
        for (int t = 0; t < 16; t++)
            acc[t] *= scale;
        tr16(acc);
        const size_t w = hs - d0 < 16 ? hs - d0 : 16;
        for (size_t t = 0; t < m; t++) {
            if (w == 16) {
                ATT_ST(out + (i0 + t) * ldo + d0, acc[t]);
            } else {
                float tmp[16];
                ATT_ST(tmp, acc[t]);
                memcpy(out + (i0 + t) * ldo + d0, tmp, w * sizeof(float));
            }
        }
    }
}

// s[j][t] = scale · Σ_{d<hs} y[j][d] · xt[d][t] for j < n, t < 16: rows y (stride ldy)
// against 16 columns of xt (stride ldx), four rows at a time
ATT_KI void lanes_dot(const float *y, size_t ldy, size_t hs, const float *xt, size_t ldx, size_t n,
                      float scale, float *s) {
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const float *y0 = y + j * ldy, *y1 = y0 + ldy, *y2 = y1 + ldy, *y3 = y2 + ldy;
        att_v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, u;
        for (size_t d = 0; d < hs; d++) {
            ATT_LD(u, xt + d * ldx);
            a0 = ATT_FMA(y0[d], u, a0);
            a1 = ATT_FMA(y1[d], u, a1);
            a2 = ATT_FMA(y2[d], u, a2);
            a3 = ATT_FMA(y3[d], u, a3);
        }
        a0 *= scale, a1 *= scale, a2 *= scale, a3 *= scale;
        ATT_ST(s + j * 16, a0);
        ATT_ST(s + j * 16 + 16, a1);
        ATT_ST(s + j * 16 + 32, a2);
        ATT_ST(s + j * 16 + 48, a3);
    }
    for (; j < n; j++) {
        const float *y0 = y + j * ldy;
        att_v16 a0 = {0}, u;
        for (size_t d = 0; d < hs; d++) {
            ATT_LD(u, xt + d * ldx);
            a0 = ATT_FMA(y0[d], u, a0);
        }
        a0 *= scale;
        ATT_ST(s + j * 16, a0);
    }
}

// strip[i - i0][t] = src[j0 + t][i] for i0 <= i < tp, t < 16 (src: rows of tp, those from
// T on read as 0): 16 rows of src turned into a strip of 16-wide rows, block by block in
// registers
ATT_KI void transpose_strip(const float *src, size_t tp, size_t T, size_t j0, size_t i0,
                            float *strip) {
    for (size_t ib = i0; ib < tp; ib += 16) {
        att_v16 r[16];
        for (size_t t = 0; t < 16; t++)
            if (j0 + t < T)
                ATT_LD(r[t], src + (j0 + t) * tp + ib);
            else
                r[t] = (att_v16){0};
        tr16(r);
        for (size_t t = 0; t < 16; t++)
            ATT_ST(strip + (ib - i0 + t) * 16, r[t]);
    }
}

// The softmax of 16 queries' scores s[j][t] (j < n keys; query i0 + t) down the keys, written
// transposed into P[j·tp + i0 + t]: key j of query i is allowed when i < T and, causal,
// j <= i; masked entries exactly 0. s is overwritten. Maxima, checks and sums are vectors
// held across the keys (an array there went through memory every key).
ATT_KI void softmax_lanes(float *s, size_t n, size_t i0, size_t T, bool causal, float *P,
                          size_t tp) {
    typedef int att_i16 __attribute__((vector_size(64)));
    att_i16 lane;
    for (int t = 0; t < 16; t++)
        lane[t] = t;
    att_v16 mx = {0}, chk = {0}, sum = {0}, r;
    mx -= 3.40282347e38f;
    // (keys below i0 are allowed in every lane: the mask tests only the diagonal block)
    const size_t nfull = causal ? minz(i0, n) : n;
    for (size_t j = 0; j < n; j++) {
        ATT_LD(r, s + j * 16);
        att_i16 ok = r > mx; // (false for NaN: as the scalar `r > mx ? r : mx`)
        if (j >= nfull) ok &= (int)(j - i0) <= lane;
        mx = (att_v16)(((att_i16)r & ok) | ((att_i16)mx & ~ok));
        const att_v16 z = 0.0f * r; // NaN when a score is not finite (0·±inf, 0·NaN)
        chk += j >= nfull ? (att_v16)((att_i16)z & ((int)(j - i0) <= lane)) : z;
    }
    float mxa[16], e[16];
    ATT_ST(mxa, mx);
    for (size_t j = 0; j < n; j++) {
        float *rj = s + j * 16;
        for (int t = 0; t < 16; t++)
            e[t] = nn_exp_fast(rj[t] - mxa[t]);
        att_v16 ev;
        ATT_LD(ev, e);
        if (j >= nfull) ev = (att_v16)((att_i16)ev & ((int)(j - i0) <= lane));
        sum += ev;
        ATT_ST(rj, ev);
    }
    // (nn_exp_fast clamps NaN to a finite value: a row with a non-finite score becomes NaN,
    // so a diverging run still reaches the optimizer's non-finite check)
    float c[16], sm[16], inv[16];
    ATT_ST(c, chk);
    ATT_ST(sm, sum);
    for (int t = 0; t < 16; t++)
        inv[t] = i0 + (size_t)t < T ? 1.0f / (c[t] != 0.0f ? c[t] : sm[t]) : 0.0f;
    att_v16 iv;
    ATT_LD(iv, inv);
    for (size_t j = 0; j < n; j++) { // (masked entries 0 again: a NaN inv made them NaN)
        ATT_LD(r, s + j * 16);
        r *= iv;
        if (j >= nfull) r = (att_v16)((att_i16)r & ((int)(j - i0) <= lane));
        ATT_ST(P + j * tp + i0, r);
    }
}

// att = softmax(scale · q kᵀ) of head h of sequence b, kept transposed (row j: key j's
// probability for every query; causal: masked entries exactly 0), and its output att v into
// the head's columns of atty; scr: the thread's scratch (scratch_floats)
ATT_K void head_forward(nn_attention *l, size_t b, size_t h, size_t T, float scale, float *scr) {
    const size_t C = l->c, C3 = 3 * C, nh = l->nh, hs = l->hs, hp = round16(hs), tp = round16(T);
    const float *q = l->qkvbuf + b * T * C3 + h * hs; // (T, hs) with row stride 3C
    const float *k = q + C, *v = q + 2 * C;
    float *P = l->att + (b * nh + h) * T * tp; // (T, tp): P[j][i]
    float *qt = scr, *vp = scr + hp * tp, *s = scr + 4 * hp * tp + tp * tp;
    size_t ldv;
    transpose_rows(qt, tp, q, C3, hs, T);
    const float *vr = head_rows(vp, hp, v, C3, hs, T, &ldv);
    const att_v16 zero = {0};
    for (size_t i0 = 0; i0 < T; i0 += 16) {
        const size_t n = l->causal ? minz(T, i0 + 16) : T;
        lanes_dot(k, C3, hs, qt + i0, tp, n, scale, s);
        softmax_lanes(s, n, i0, T, l->causal, P, tp);
        for (size_t j = n; j < T; j++) // (causal: keys after the block's queries)
            ATT_ST(P + j * tp + i0, zero);
        lanes_comb(P, tp, i0, n, vr, ldv, hs, 1.0f, l->atty + b * T * C + h * hs, C,
                   minz(16, T - i0));
    }
}

// Head h of sequence b, 16 queries at a time: datt = dout vᵀ, the softmax's backward dpre =
// att ⊙ (datt − Σ_j att datt) (kept transposed in scr's tp x tp matrix) and dq = scale · dpre
// k; then 16 keys j at a time, dv = attᵀ dout and dk = scale · dpreᵀ q (the head's own
// columns of dqkv; causal: queries i >= j only)
ATT_K void head_backward(nn_attention *l, size_t b, size_t h, size_t T, float scale, float *scr) {
    const size_t C = l->c, C3 = 3 * C, nh = l->nh, hs = l->hs, hp = round16(hs), tp = round16(T);
    const size_t off = b * T * C3 + h * hs;
    const float *q = l->qkvbuf + off, *k = q + C, *v = q + 2 * C;
    float *dq = l->dqkv + off, *dk = dq + C, *dv = dq + 2 * C;
    const float *P = l->att + (b * nh + h) * T * tp;
    const float *dout = l->datty + b * T * C + h * hs; // (T, hs), row stride C
    float *dot = scr, *qp = scr + hp * tp, *kp = qp + tp * hp, *dop = kp + tp * hp;
    float *dp = scr + 4 * hp * tp, *s = dp + tp * tp; // dp[j][i] = dpre_ij
    float *Pt = s + 16 * tp, *dpt = Pt + 16 * tp;     // strips: Pt[i][t] = att_{i,j0+t}, dpt dpre
    size_t ldq, ldk, ldo;
    transpose_rows(dot, tp, dout, C, hs, T);
    const float *qr = head_rows(qp, hp, q, C3, hs, T, &ldq);
    const float *kr = head_rows(kp, hp, k, C3, hs, T, &ldk);
    const float *dor = head_rows(dop, hp, dout, C, hs, T, &ldo);
    for (size_t i0 = 0; i0 < T; i0 += 16) {
        const size_t n = l->causal ? minz(T, i0 + 16) : T;
        lanes_dot(v, C3, hs, dot + i0, tp, n, 1.0f, s); // s[j][t] = datt_{i0+t, j}
        att_v16 sd0 = {0}, sd1 = {0}, a, x;             // (two chains: one waited on every add)
        size_t j = 0;
        for (; j + 2 <= n; j += 2) {
            ATT_LD(a, P + j * tp + i0);
            ATT_LD(x, s + j * 16);
            sd0 += a * x;
            ATT_LD(a, P + (j + 1) * tp + i0);
            ATT_LD(x, s + (j + 1) * 16);
            sd1 += a * x;
        }
        if (j < n) {
            ATT_LD(a, P + j * tp + i0);
            ATT_LD(x, s + j * 16);
            sd0 += a * x;
        }
        const att_v16 sd = sd0 + sd1;
        for (j = 0; j < n; j++) {
            ATT_LD(a, P + j * tp + i0);
            ATT_LD(x, s + j * 16);
            x = a * (x - sd);
            ATT_ST(dp + j * tp + i0, x);
        }
        lanes_comb(dp, tp, i0, n, kr, ldk, hs, scale, dq, C3, minz(16, T - i0));
    }
    // dv, dk for 16 keys at a time, in lanes: the block's rows of the probabilities and of
    // dpre turned into strips whose rows hold the 16 keys side by side, one a query (causal:
    // queries from the block's first key on)
    for (size_t j0 = 0; j0 < T; j0 += 16) {
        const size_t i0 = l->causal ? j0 : 0, m = minz(16, T - j0);
        transpose_strip(P, tp, T, j0, i0, Pt);
        transpose_strip(dp, tp, T, j0, i0, dpt);
        lanes_comb(Pt, 16, 0, T - i0, dor + i0 * ldo, ldo, hs, 1.0f, dv + j0 * C3, C3, m);
        lanes_comb(dpt, 16, 0, T - i0, qr + i0 * ldq, ldq, hs, scale, dk + j0 * C3, C3, m);
    }
}

#endif // NN_HAVE_HEAD_KERNELS

// ---- the per-head GEMM path (larger heads without a mask; CPUs without AVX-512) ----
// The same layout: P[j][i] = att_ij in rows of tp. Forward: P = scale · k qᵀ, the softmax
// down each column (the loops run along a key's row, over the queries), out = Pᵀ v.
static void head_forward_gemm(nn_attention *l, size_t b, size_t h, size_t T, float scale,
                              float *scr) {
    const size_t C = l->c, C3 = 3 * C, nh = l->nh, hs = l->hs, tp = round16(T);
    const float *q = l->qkvbuf + b * T * C3 + h * hs, *k = q + C, *v = q + 2 * C;
    float *P = l->att + (b * nh + h) * T * tp;
    float *mx = scr, *chk = mx + tp, *sum = chk + tp;
    nn_sgemm(false, true, T, T, hs, scale, k, C3, q, C3, 0.0f, P, tp);
    for (size_t i = 0; i < T; i++)
        mx[i] = -3.40282347e38f, chk[i] = 0.0f, sum[i] = 0.0f;
    for (size_t j = 0; j < T; j++) { // (causal: key j is allowed for queries i >= j)
        const float *r = P + j * tp;
        for (size_t i = l->causal ? j : 0; i < T; i++) {
            mx[i] = r[i] > mx[i] ? r[i] : mx[i];
            chk[i] += 0.0f * r[i]; // NaN when a score is not finite (0·±inf, 0·NaN)
        }
    }
    for (size_t j = 0; j < T; j++) {
        float *r = P + j * tp;
        const size_t i0 = l->causal ? j : 0;
        for (size_t i = 0; i < i0; i++)
            r[i] = 0.0f;
        for (size_t i = i0; i < T; i++) {
            r[i] = nn_exp_fast(r[i] - mx[i]);
            sum[i] += r[i];
        }
        for (size_t i = T; i < tp; i++)
            r[i] = 0.0f;
    }
    for (size_t i = 0; i < T; i++) // (a non-finite score: the query's column NaN)
        mx[i] = 1.0f / (chk[i] != 0.0f ? chk[i] : sum[i]);
    for (size_t j = 0; j < T; j++) {
        float *r = P + j * tp;
        for (size_t i = l->causal ? j : 0; i < T; i++)
            r[i] *= mx[i];
    }
    nn_sgemm(true, false, T, hs, T, 1.0f, P, tp, v, C3, 0.0f, l->atty + b * T * C + h * hs, C);
}

// Backward: D = v doutᵀ (D[j][i] = datt_ij), dpre = P ⊙ (D − Σ_j P D) in place, dq = scale ·
// dpreᵀ k, dk = scale · dpre q, dv = P dout (as rows of D and P: key j's row)
static void head_backward_gemm(nn_attention *l, size_t b, size_t h, size_t T, float scale,
                               float *scr) {
    const size_t C = l->c, C3 = 3 * C, nh = l->nh, hs = l->hs, tp = round16(T);
    const size_t off = b * T * C3 + h * hs;
    const float *q = l->qkvbuf + off, *k = q + C, *v = q + 2 * C;
    float *dq = l->dqkv + off, *dk = dq + C, *dv = dq + 2 * C;
    const float *P = l->att + (b * nh + h) * T * tp;
    const float *dout = l->datty + b * T * C + h * hs;
    float *D = scr, *sd = D + T * tp;
    nn_sgemm(false, true, T, T, hs, 1.0f, v, C3, dout, C, 0.0f, D, tp);
    for (size_t i = 0; i < T; i++)
        sd[i] = 0.0f;
    for (size_t j = 0; j < T; j++)
        for (size_t i = 0; i < T; i++)
            sd[i] += P[j * tp + i] * D[j * tp + i];
    for (size_t j = 0; j < T; j++)
        for (size_t i = 0; i < T; i++)
            D[j * tp + i] = P[j * tp + i] * (D[j * tp + i] - sd[i]);
    nn_sgemm(true, false, T, hs, T, scale, D, tp, k, C3, 0.0f, dq, C3);
    nn_sgemm(false, false, T, hs, T, scale, D, tp, q, C3, 0.0f, dk, C3);
    nn_sgemm(false, false, T, hs, T, 1.0f, P, tp, dout, C, 0.0f, dv, C3);
}

// Whether a pass takes the AVX-512 kernels (where the CPU has AVX-512). They pay where a
// head's products are small or half masked: causal heads, and the forward of heads of
// T·T·hs <= 65536 (chargpt's and the vit's T 64, hs 16). Larger heads without a mask run
// their per-head GEMMs faster (Intel Xeon 6/207, 2 threads, bench/attention_probe, ms
// forward / backward, GEMMs against kernels: T 128 hs 16 2.0 / 2.75 against 2.1 / 3.5; T 64
// hs 32 3.0 / 5.4 against 3.15 / 6.2; T 64 hs 16 3.4 / 4.7 against 2.6 / 4.7); causal ones
// (T 64 hs 64 6.1 / 11.7 against 4.7 / 8.9) not. nn_attention_set_kernels sets the mode
// for the tests: NN_ATT_AUTO (this rule), NN_ATT_GEMM or NN_ATT_KERNELS (every pass).
static atomic_int kernels_mode = NN_ATT_AUTO;
void nn_attention_set_kernels(int mode) { atomic_store(&kernels_mode, mode); }
static bool use_kernels(const nn_attention *l, size_t T, bool bwd) {
#ifdef NN_HAVE_HEAD_KERNELS
    const int mode = atomic_load(&kernels_mode); // (the CPU: libgcc's model, read at start-up)
    if (!__builtin_cpu_supports("avx512f") || mode == NN_ATT_GEMM) return false;
    return mode == NN_ATT_KERNELS || l->causal || (!bwd && T * T * l->hs <= 65536);
#else
    (void)l, (void)T, (void)bwd;
    return false;
#endif
}

nn_status nn_attention_init(nn_attention *l, size_t c, size_t nh, bool causal, size_t max_b,
                            size_t max_t, nn_rng *rng) {
    memset(l, 0, sizeof *l);
    if (c == 0 || nh == 0 || c % nh || max_b == 0 || max_t == 0 || !rng) return NN_ERR_ARG;
    l->c = c;
    l->nh = nh;
    l->hs = c / nh;
    l->causal = causal;
    l->max_b = max_b;
    l->max_t = max_t;
    nn_status st = nn_linear_init(&l->qkv, c, 3 * c, true, rng);
    if (st == NN_OK) st = nn_linear_init(&l->proj, c, c, true, rng);
    if (st != NN_OK) {
        nn_attention_free(l);
        return st;
    }
    const size_t bt = nn_mul(max_b, max_t);
    l->qkvbuf = nn_malloc(nn_mul(bt, 3 * c), sizeof(float));
    l->dqkv = nn_malloc(nn_mul(bt, 3 * c), sizeof(float));
    l->att = nn_malloc(nn_mul(nn_mul(max_b, nh), nn_mul(max_t, round16(max_t))), sizeof(float));
    l->atty = nn_malloc(nn_mul(bt, c), sizeof(float));
    l->datty = nn_malloc(nn_mul(bt, c), sizeof(float));
#ifdef _OPENMP
    l->nthr = omp_get_max_threads() > 1 ? (size_t)omp_get_max_threads() : 1;
#else
    l->nthr = 1;
#endif
    l->scr_n = scratch_floats(l->hs, max_t);
    l->scr = nn_malloc(nn_mul(l->nthr, l->scr_n), sizeof(float));
    if (!l->qkvbuf || !l->dqkv || !l->att || !l->atty || !l->datty || !l->scr) {
        nn_attention_free(l);
        return NN_ERR_NOMEM;
    }
    return NN_OK;
}

void nn_attention_free(nn_attention *l) {
    nn_linear_free(&l->qkv);
    nn_linear_free(&l->proj);
    free(l->qkvbuf);
    free(l->dqkv);
    free(l->att);
    free(l->atty);
    free(l->datty);
    free(l->scr);
    memset(l, 0, sizeof *l);
}

// The threads of the heads' loops: the planned ones (one scratch block each), at most the
// runtime's; one when the work is small (a parallel region costs more than it saves)
static int heads_team(const nn_attention *l, size_t B, size_t T) {
#ifdef _OPENMP
    const size_t t = (size_t)omp_get_max_threads();
    if (B * l->nh * T * T * l->hs < 32768) return 1;
    return (int)(t < l->nthr ? t : l->nthr);
#else
    (void)l, (void)B, (void)T;
    return 1;
#endif
}

// x (B, T, C) -> y (B, T, C). The heads run side by side (each thread a (b, h) at a time,
// its GEMMs single-threaded: no thread wake-up per small GEMM), each writing only its own
// att and atty columns.
// x NULL: the input is already in nn_linear_in16(&l->qkv)
static void forward(nn_attention *l, const float *x, float *y, size_t B, size_t T) {
    NN_ASSERT(y && B >= 1 && T >= 1 && B <= l->max_b && T <= l->max_t);
    const size_t nh = l->nh;
    const float scale = 1.0f / sqrtf((float)l->hs);
    l->b = B;
    l->t = T;
    if (x)
        nn_linear_forward(&l->qkv, x, l->qkvbuf, B * T); // (B*T, 3C)
    else
        nn_linear_forward_in16(&l->qkv, l->qkvbuf, B * T);
    void (*head)(nn_attention *, size_t, size_t, size_t, float, float *) = head_forward_gemm;
    if (use_kernels(l, T, false)) {
#ifdef NN_HAVE_HEAD_KERNELS
        head = head_forward;
        // (counted as the two T x T x hs GEMMs per head they replace, masked half included:
        // the same figures as the GEMM path's)
        nn_flop_add(2 * 2 * (uint64_t)B * nh * T * T * l->hs);
#endif
    }
    const int nt = heads_team(l, B, T);
    if (nt == 1) {
        for (size_t bh = 0; bh < B * nh; bh++)
            head(l, bh / nh, bh % nh, T, scale, l->scr);
    } else {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
        for (size_t bh = 0; bh < B * nh; bh++)
            head(l, bh / nh, bh % nh, T, scale, l->scr + (size_t)nn_thread_num() * l->scr_n);
    }
    nn_linear_forward(&l->proj, l->atty, y, B * T);
}

void nn_attention_forward(nn_attention *l, const float *x, float *y, size_t B, size_t T) {
    NN_ASSERT(x);
    forward(l, x, y, B, T);
}
void nn_attention_forward_in16(nn_attention *l, float *y, size_t B, size_t T) {
    forward(l, NULL, y, B, T);
}

// dx += (or, where set, =) the input gradient
static void backward(nn_attention *l, const float *dy, float *dx, bool set) {
    NN_ASSERT(dy && l->b >= 1);
    const size_t B = l->b, T = l->t, nh = l->nh;
    const float scale = 1.0f / sqrtf((float)l->hs);
    // proj's backward writes datty; every (b, h) writes its own columns of dqkv once (no
    // clearing)
    nn_linear_backward_set(&l->proj, dy, l->datty);
    void (*head)(nn_attention *, size_t, size_t, size_t, float, float *) = head_backward_gemm;
    if (use_kernels(l, T, true)) {
#ifdef NN_HAVE_HEAD_KERNELS
        head = head_backward;
        nn_flop_add(4 * 2 * (uint64_t)B * nh * T * T * l->hs); // (four products; see forward)
#endif
    }
    const int nt = heads_team(l, B, T);
    if (nt == 1) {
        for (size_t bh = 0; bh < B * nh; bh++)
            head(l, bh / nh, bh % nh, T, scale, l->scr);
    } else {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
        for (size_t bh = 0; bh < B * nh; bh++)
            head(l, bh / nh, bh % nh, T, scale, l->scr + (size_t)nn_thread_num() * l->scr_n);
    }
    if (set)
        nn_linear_backward_set(&l->qkv, l->dqkv, dx);
    else
        nn_linear_backward(&l->qkv, l->dqkv, dx);
}

void nn_attention_backward(nn_attention *l, const float *dy, float *dx) {
    backward(l, dy, dx, false);
}
void nn_attention_backward_set(nn_attention *l, const float *dy, float *dx) {
    backward(l, dy, dx, true);
}
