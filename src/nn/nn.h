/*
 * nn.h — the training engine's internal header (never installed): layers with forward and
 * backward side by side, the loss, parameter lists, the engine's PRNG and GEMM helper.
 *
 * The engine is a client of libngd through <ngd.h> only. It is written the llm.c way: no
 * graph, no autograd; a model calls nn_<layer>_forward in order and nn_<layer>_backward in
 * reverse order (src/nn/models/).
 *
 * Conventions (every layer follows them; the exceptions are stated where they occur)
 *  - float32, row-major, batch-major. Letters in shape comments: N batch (images), B batch
 *    (sequences), T tokens, C channels / model width, H W image size, OH OW output size,
 *    L = OH*OW output locations, V vocabulary, K classes.
 *  - init plans every buffer once for a maximum batch; forward/backward never allocate.
 *    Two buffers only some runs need are allocated on their first use and kept: the K-FAC
 *    matrices of nn_conv2d_stats and the patch gradient of nn_patchembed_backward (both
 *    report NN_ERR_NOMEM). A batch larger than planned is a caller bug: it trips NN_ASSERT
 *    (abort with file:line), like any other violated precondition.
 *  - forward WRITES its output (=). Its input x (and, where noted, its output y) are
 *    BORROWED: the layer keeps the pointer and reads it again in backward, so the caller
 *    must leave them unchanged until backward has run (llm.c's activation buffers).
 *  - backward ACCUMULATES (+=) into parameter gradients AND into the input gradient dx.
 *    Zeroing is explicit: nn_zero_grads for parameters, a memset of the model's
 *    activation-gradient buffers once per step. A NULL dx skips the input gradient (first
 *    layer). Accumulating dx makes fan-out (residual branches) a plain sum.
 *  - Layers own their parameters, gradients and planned buffers; nn_<layer>_free releases
 *    them (a zero-initialised or already freed struct is fine) and zeroes the struct.
 *  - init returns NN_OK, NN_ERR_ARG (bad sizes) or NN_ERR_NOMEM; on error nothing is
 *    allocated. Default initialisations follow PyTorch (stated per layer).
 *
 * Talking to libngd
 *  - Linear and Conv2d are Kronecker-factored: nn_linear_ngd_layer / nn_conv2d_ngd_layer
 *    give the ngd_layer for ngd_optim_add_layer, and after backward nn_linear_stats /
 *    nn_conv2d_stats give the matrices a (inputs) and g (output gradients) for
 *    ngd_optim_observe. Every other parameter is listed by nn_<layer>_params as
 *    (name, param, grad, n) for ngd_optim_add_param.
 */
#ifndef NN_H
#define NN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ngd.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
// 16 rows of 16 32-bit values transposed in registers: r[j] becomes the rows' j-th values
// (for AVX-512 code: conv_amx.c's pair layouts, conv_direct.c's pixel-major dy)
__attribute__((target("avx512f"), always_inline)) static inline void
nn_transpose16x32(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    }
}
#endif

// ====== Status, asserts, OpenMP ======

typedef enum {
    NN_OK = 0,
    NN_ERR_ARG = 1,    // bad sizes or options
    NN_ERR_NOMEM = 2,  // an allocation failed
    NN_ERR_IO = 3,     // a file could not be opened or read
    NN_ERR_FORMAT = 4, // a file is truncated, foreign or inconsistent
} nn_status;

const char *nn_status_str(nn_status s);

// Preconditions on the caller (batch larger than planned, NULL buffers): abort with
// file:line. Never used for user input (files, options): those return a status.
#define NN_ASSERT(c)                                                                               \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "ngd engine: assertion failed: %s at %s:%d\n", #c, __FILE__,           \
                    __LINE__);                                                                     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

// A parallel loop over independent items, taken only when the loop touches at least 32K
// floats in all (`work`): below that, waking the threads costs more than it saves, and on
// a shared 2-core machine a spinning barrier can cost milliseconds. Never put one around a
// GEMM call (the GEMM is threaded itself).
#define NN_PRAGMA(x) _Pragma(#x)
#ifdef _OPENMP
#define NN_OMP_FOR(work) NN_PRAGMA(omp parallel for schedule(static) if ((work) >= 32768))
#else
#define NN_OMP_FOR(work)
#endif
// A float sum the compiler may vectorise (partial sums in lanes): for a plane's sum, which
// the caller adds up in double across planes. A plain `s += x[i]` is one dependent add per
// element (4 cycles each: a conv's bias gradient took 4 % of the cnn step that way).
#ifdef _OPENMP
#define NN_SIMD_SUM(...) NN_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#define NN_SIMD_MAX(v)   NN_PRAGMA(omp simd reduction(max : v))
#else
#define NN_SIMD_SUM(...)
#define NN_SIMD_MAX(v)
#endif

// The calling thread's number in the enclosing parallel region (0 outside one, or serial)
int nn_thread_num(void);

// ====== Memory and parameter lists (tensor.c) ======

// Overflow-checked allocations of n*size bytes (zeroed for calloc); NULL on failure.
void *nn_malloc(size_t n, size_t size);
void *nn_calloc(size_t n, size_t size);
// Test hook: the k-th nn_malloc from now returns NULL, nn_calloc's of 256 bytes or more
// included (k <= 0: none)
void nn_alloc_fail_at(long k);
// a*b, or SIZE_MAX on overflow (so that a following allocation fails cleanly)
size_t nn_mul(size_t a, size_t b);

// A parameter tensor and its gradient, both owned by a layer.
typedef struct {
    const char *name; // static string: "weight", "bias", ...
    float *p;         // (n)
    float *g;         // (n)
    size_t n;
    bool *zeroed; // (optional) set by nn_zero_grads: g is zero, so the layer's next backward
                  // may write it (beta 0) rather than add to it, and then clears the flag
} nn_param;

// Sets every gradient of the list to zero (and the flags of those that have one).
void nn_zero_grads(const nn_param *ps, size_t count);
// acc[j] += Σ_r x[r·ld + j] for j < cols: every column summed over the rows in row order, so
// the serial row loop's bits on any thread count; blocks of NN_COL_BLOCK columns are shared
// by the threads, each walking all the rows (a bias gradient over 8192 rows ran on one thread
// while the other waited). nn_col_blocks gives the blocks' count for loops written the same way.
#define NN_COL_BLOCK 16
void nn_colsum_add(const float *x, size_t rows, size_t cols, size_t ld, float *acc);
static inline size_t nn_col_blocks(size_t cols) { return (cols + NN_COL_BLOCK - 1) / NN_COL_BLOCK; }
static inline size_t nn_col_width(size_t b, size_t cols) { // block b's number of columns
    return (b + 1) * NN_COL_BLOCK < cols ? NN_COL_BLOCK : cols - b * NN_COL_BLOCK;
}
// Total number of scalars of the list.
size_t nn_param_count(const nn_param *ps, size_t count);

// ====== PRNG (rng.c): splitmix64 seeding + xoshiro256** ======

typedef struct {
    uint64_t s[4];
} nn_rng;

void nn_rng_seed(nn_rng *r, uint64_t seed);
uint64_t nn_rng_u64(nn_rng *r);
float nn_rng_uniform(nn_rng *r);              // [0, 1), 24 random bits
double nn_rng_uniform_f64(nn_rng *r);         // [0, 1), 53 random bits
uint64_t nn_rng_below(nn_rng *r, uint64_t n); // uniform in [0, n) without bias; n >= 1
float nn_rng_normal(nn_rng *r);               // standard normal (Box–Muller)
void nn_rng_fill_uniform(nn_rng *r, float *x, size_t n, float lo, float hi);
void nn_rng_fill_normal(nn_rng *r, float *x, size_t n, float mean, float std);
// Fisher–Yates: perm[0..n) becomes a uniformly random permutation of 0..n-1.
void nn_rng_permutation(nn_rng *r, size_t *perm, size_t n);

// ====== GEMM (gemm.c): the engine's one door to the BLAS ======

// C (m x n) = alpha * op(A) op(B) + beta * C, row-major; op(A) is m x k (A itself k x m and
// stored with lda >= m when ta), op(B) is k x n. beta = 0 never reads C (NaN-safe).
// Backed by libngd's ngd_f32_gemm: oneDNN's dnnl_sgemm (the fastest f32 GEMM on this
// machine, docs/design.md) or its matmul primitive where that is faster, with libngd's
// float64 reference if oneDNN reports an error. Threaded; called from inside an
// OpenMP parallel region it runs on the calling thread alone (oneDNN does not nest), which
// is how layers run one small GEMM per thread (conv2d.c).
void nn_sgemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float *A,
              size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc);
// Floating-point operations of the engine's GEMMs so far (2·m·n·k each), for benchmarks.
uint64_t nn_flop_count(void);
// Adds to it the multiply-adds (x2) of work done outside the GEMMs (the AMX convolutions).
void nn_flop_add(uint64_t flops);
// The plain reference (float64 accumulation) with the same contract.
void nn_sgemm_ref(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float *A,
                  size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc);

// ---- fast elementwise math ----
// e^x for x in float range, relative error about 2e-7 (GELU, softmax, cross-entropy; it
// vectorises, where libm's expf is a scalar call): x = k ln2 + r (Cody–Waite split of ln2,
// |r| <= ln2/2), e^r by its Taylor polynomial to degree 7 (remainder < 5e-9), 2^k through
// the exponent bits. Inputs are clamped to [-87, 87] (no overflow, no subnormals).
static inline float nn_exp_fast(float x) {
    // |x| <= 87 by an integer clamp of the magnitude's bits (a float clamp, or fminf, keeps
    // GCC from vectorising the loops; NaN becomes ±87)
    uint32_t ux;
    memcpy(&ux, &x, sizeof ux);
    uint32_t ax = ux & 0x7fffffffu;
    ax = ax > 0x42ae0000u ? 0x42ae0000u : ax; // 87.0f
    ux = (ux & 0x80000000u) | ax;
    memcpy(&x, &ux, sizeof x);
    const float z = x * 1.44269504088896341f; // k = round(z), by a truncating conversion
    const float k = (float)(int32_t)(z + (z >= 0.0f ? 0.5f : -0.5f)); // (floorf: a call)
    const float r = (x - k * 0.693145751953125f) - k * 1.428606765330187045e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const uint32_t bits = (uint32_t)((int32_t)k + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}

// ---- bf16 (gemm.c): `ngd train --precision bf16` ----
// bfloat16 is stored as uint16_t (the upper half of a float32). Conversions round to
// nearest even and keep NaN (quietened); nn_bf16_encode is libngd's ngd_f32_to_bf16,
// vectorised. Decoding is exact.
// One value (nn_bf16_encode's rounding), for loops that round what they write
static inline float nn_from_bf16(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
// ReLU of one value, as every ReLU of the engine computes it: max(0, v) with a NaN kept (as
// PyTorch's), so a NaN activation reaches the loss rather than being trained on as 0; -0
// gives +0. (Its backward passes dy where v > 0: none through a NaN.)
#define NN_RELU(v) (!((v) <= 0.0f) ? (v) : 0.0f)
static inline uint16_t nn_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, q = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? q : r);
}
// Σ of one plane (n values, f32 or bf16) as a vectorised float sum: the engine sums a
// channel over its planes in double, plane by plane, so that a conv's bias gradient and the
// BatchNorm that hands it its sums (nn_batchnorm.dxsum) add the same way
static inline float nn_plane_sum(const float *x, size_t n) {
    float r = 0.0f;
    NN_SIMD_SUM(r)
    for (size_t p = 0; p < n; p++)
        r += x[p];
    return r;
}
static inline float nn_plane_sum_bf16(const uint16_t *x, size_t n) {
    float r = 0.0f;
    NN_SIMD_SUM(r)
    for (size_t p = 0; p < n; p++)
        r += nn_from_bf16(x[p]);
    return r;
}
void nn_bf16_encode(const float *x, uint16_t *y, size_t n);
void nn_bf16_decode(const uint16_t *x, float *y, size_t n);
// rows x cols of a row-major x (leading dimension lds) into y (leading dimension ldd)
void nn_bf16_encode_rows(const float *x, size_t lds, uint16_t *y, size_t ldd, size_t rows,
                         size_t cols);
// nn_sgemm's contract with bf16 A and B: products of bf16 values summed in f32, C f32.
// libngd's ngd_bf16_gemm (oneDNN's matmul primitive: AMX or AVX512-BF16 kernels; f32
// copies and sgemm where the CPU has none). Counted in nn_flop_count. Callable from a
// parallel region (runs on the calling thread there, as nn_sgemm).
void nn_gemm_bf16(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const uint16_t *A,
                  size_t lda, const uint16_t *B, size_t ldb, float beta, float *C, size_t ldc);
// C = op(A) op(B) + 1 biasᵀ (bias: n floats added to every row; NULL: none), C written and not
// read: libngd's ngd_f32_gemm_bias / ngd_bf16_gemm_bias (a layer's forward). Counted.
void nn_sgemm_bias(bool ta, bool tb, size_t m, size_t n, size_t k, const float *A, size_t lda,
                   const float *B, size_t ldb, const float *bias, float *C, size_t ldc);
void nn_gemm_bf16_bias(bool ta, bool tb, size_t m, size_t n, size_t k, const uint16_t *A,
                       size_t lda, const uint16_t *B, size_t ldb, const float *bias, float *C,
                       size_t ldc);
// The reference: the same bf16 inputs, float64 accumulation.
void nn_gemm_bf16_ref(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                      const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, float beta,
                      float *C, size_t ldc);
// Does this CPU have AVX512-BF16 (the fast path)?
bool nn_bf16_native(void);

// ====== Linear (linear.c): y = x Wᵀ + b ======

typedef struct {
    size_t d_in, d_out;
    float *w, *dw; // (d_out, d_in)  PyTorch init: U(-1/sqrt(d_in), 1/sqrt(d_in))
    float *b, *db; // (d_out), same init; NULL without bias
    // last forward / backward (borrowed)
    const float *x;  // (rows, d_in)   the K-FAC input `a`
    const float *dy; // (rows, d_out)  the K-FAC output gradient `g`
    size_t rows;
    // dW is zero (nn_zero_grads), so backward writes it rather than adds to it: the same
    // numbers, without reading dW (out of cache by then: SINGD's mlp step, the backward's
    // dW products 0.08 ms faster in f32 and bf16, 2 threads)
    bool dw_zeroed;
    // bf16 mode (nn_linear_use_bf16; all NULL / 0 in float32 mode): the GEMMs take bf16
    // operands (f32 accumulation, f32 outputs), the input kept for backward is its bf16
    // copy, and the statistics go to libngd as bf16 matrices. W stays the f32 master.
    size_t max_rows16;
    uint16_t *w16;  // (d_out, d_in) W rounded by each forward (once per step)
    uint16_t *x16;  // (max_rows16, d_in) the input, rounded: backward's and the K-FAC `a`
    uint16_t *dy16; // (max_rows16, d_out) the output gradient, rounded: the K-FAC `g`
} nn_linear;

nn_status nn_linear_init(nn_linear *l, size_t d_in, size_t d_out, bool bias, nn_rng *rng);
// x (rows, d_in) -> y (rows, d_out). x is borrowed until backward.
void nn_linear_forward(nn_linear *l, const float *x, float *y, size_t rows);
// bf16 mode: the buffer (rows x d_in) into which the layer producing this one's input may
// write it already rounded (nn_to_bf16 of its f32 values: nn_relu_forward16, nn_gelu_forward16,
// nn_layernorm_forward16), NULL in float32 mode; nn_linear_forward_in16 then runs on it, with
// no f32 input written and read again and no encode pass. The same bits as nn_linear_forward.
uint16_t *nn_linear_in16(nn_linear *l);
void nn_linear_forward_in16(nn_linear *l, float *y, size_t rows);
// dy (rows, d_out): dW += dyᵀ x (dW = dyᵀ x after nn_zero_grads), db += Σ_rows dy,
// dx (rows, d_in) += dy W (dx may be NULL).
// dy is borrowed until the statistics have been read.
void nn_linear_backward(nn_linear *l, const float *dy, float *dx);
// The same with dx written (= dy W), not added to: no clearing pass before it.
void nn_linear_backward_set(nn_linear *l, const float *dy, float *dx);
// bf16 mode: the buffer (rows x d_out) into which the layer after this one may write the
// output gradient already rounded as it writes dy (nn_relu_backward_set16,
// nn_gelu_backward_set16), NULL in float32 mode; nn_linear_backward_set_in16 then takes it, with
// no encode pass over dy. The same bits as nn_linear_backward_set.
uint16_t *nn_linear_dy16(nn_linear *l);
void nn_linear_backward_set_in16(nn_linear *l, const float *dy, float *dx);
void nn_linear_free(nn_linear *l);
// For ngd_optim_add_layer (name is borrowed by the struct; libngd copies it).
ngd_layer nn_linear_ngd_layer(const nn_linear *l, const char *name);
// After backward: a = x (rows, d_in), g = dy (rows, d_out).
void nn_linear_stats(const nn_linear *l, ngd_matrix *a, ngd_matrix *g);
size_t nn_linear_params(nn_linear *l, nn_param *out); // weight, bias; out may be NULL
// Switches the layer to bf16 GEMMs for at most max_rows rows per forward (allocates its
// bf16 buffers: NN_ERR_NOMEM). Forward then rounds W and x to bf16; backward rounds dy.
nn_status nn_linear_use_bf16(nn_linear *l, size_t max_rows);

// ====== 3x3 'same' convolutions by Winograd F(4x4, 3x3) (conv_wino.c: oneDNN's) ======

// One layer's primitives for batches of up to n images (c_in, h, w) -> (c_out, h, w), stride
// 1, padding 1, no groups or dilation, f32, run nn_conv_wino_sub(c) images at a time (a
// divisor of n). NULL where oneDNN has no Winograd primitive for the shape on this CPU, or
// memory ran out: the caller keeps its own kernels.
typedef struct nn_conv_wino nn_conv_wino;
nn_conv_wino *nn_conv_wino_new(size_t n, size_t c_in, size_t h, size_t w, size_t c_out, bool bias);
size_t nn_conv_wino_sub(const nn_conv_wino *c);
// bf16 mode: the calls below may also take x, w, y, dy and dx as bf16 (their values converted
// to f32 on the way in, results rounded to nearest even on the way out), and an f32 x or dy
// is rounded to bf16 first (the same bits as its bf16 values); false: not here
bool nn_conv_wino_use_bf16(nn_conv_wino *c);
// y = conv(x, w) + b (b NULL without bias) of a batch of n images, n a multiple of the
// sub-batch; of each pair (x, x16), (w, w16), (y, y16) exactly one is given. mom (or NULL):
// each output plane's nn_plane_moments (of y16's values where y16), (n, c_out, NN_MOMENTS),
// taken sub-batch by sub-batch as it is written
void nn_conv_wino_forward(nn_conv_wino *c, const float *x, const uint16_t *x16, const float *w,
                          const uint16_t *w16, const float *b, float *y, uint16_t *y16, size_t n,
                          float *mom);
// dw += dW (OIHW) and dx = (set) or += the input gradient (dx16: = rounded; neither: none),
// of a batch of n (as in forward), x the forward's input
void nn_conv_wino_backward(nn_conv_wino *c, const float *x, const uint16_t *x16, const float *dy,
                           const uint16_t *dy16, const float *w, const uint16_t *w16, float *dx,
                           uint16_t *dx16, bool set, float *dw, size_t n);
void nn_conv_wino_free(nn_conv_wino *c);
// Whether Conv2d layers initialised from now on may take Winograd primitives: yes unless
// cleared here or the environment says NGD_CONV_WINOGRAD=0 (NGD_CONV_DIRECT=0, which turns the
// direct kernels off, leaves it)
void nn_conv_set_winograd(bool on);
bool nn_conv_winograd(void);

// ====== Conv2d (conv2d.c): im2col + GEMM ======

// Threads over the batch: each thread builds the transposed im2col of its own chunk of
// samples in its own buffer and multiplies it by a single-threaded GEMM (a chunk of a
// 32x32 image is one sample: its GEMM writes the output image in place). The layer keeps
// no batch-sized activations of its own: x and dy are borrowed instead, and the K-FAC
// matrices are built from them only when asked for (nn_conv2d_stats).
typedef struct {
    ngd_conv_geom geom; // c_in, h, w, kernel, stride, padding, dilation, groups
    size_t c_out, oh, ow, max_batch;
    size_t d_in;         // (c_in/groups)*k1*k2: columns of the im2col matrix
    float *w, *dw;       // (c_out, c_in/groups, k1, k2) = row-major (c_out, d_in)
    float *b, *db;       // (c_out) or NULL; init as PyTorch: U(-1/sqrt(d_in), 1/sqrt(d_in))
    size_t chunk;        // samples per GEMM
    size_t fcols, bcols; // columns per block of a one-sample chunk: forward and the transposed
                         // convolution (fcols), dW and col2im (bcols; longer in bf16 mode)
    size_t nthr;         // threads planned for (each has its own buffers below)
    size_t colt_n, dcol_n, ybuf_n; // floats of one thread's colt, dcolt and ybuf
    float *colt;   // nthr x (d_in, chunk*L) transposed im2col of one group and one chunk
                   // (chunk = 1: of one block of output rows)
    float *dcolt;  // nthr x (d_in, chunk*L) its gradient (with wflip: the transposed
                   // convolution's im2col of dy, (c_out·k1·k2, chunk*h*w))
    float *ybuf;   // nthr x (c_out, chunk*L) outputs / output gradients of one chunk
                   // (unused when chunk = 1: the GEMM reads and writes the images)
    float *dwpart; // nthr x (c_out, d_in) each thread's share of dW, summed in thread order
                   // (dw_t: per group (d_in, c_out / groups), transposed)
    bool dw_t;     // bf16 mode, few output channels: dW's GEMM computes the transpose
    // Stride-1 convolutions without groups take dx as the convolution of dy with the flipped
    // kernel (geometry tgeom, output h x w): one GEMM of depth c_out·k1·k2 instead of a
    // depth-c_out GEMM and a scatter (col2im). wflip: (c_in, c_out·k1·k2), NULL otherwise.
    ngd_conv_geom tgeom;
    float *wflip;
    const float *x;      // (N, c_in, h, w) borrowed from forward (NULL after forward_bf16)
    const uint16_t *xb;  // (N, c_in, h, w) bf16, borrowed from nn_conv2d_forward_bf16 (or NULL)
    const float *dy;     // (N, c_out, oh, ow) borrowed from backward
    const uint16_t *dyb; // the same in bf16, borrowed from nn_conv2d_backward_set_bf16 (or NULL)
    size_t n;            // batch of the last forward
    // bf16 mode (nn_conv2d_use_bf16; NULL otherwise): each chunk's im2col (and the
    // transposed convolution's) is rounded into col16 and multiplied by bf16 GEMMs with
    // f32 accumulation; dy is rounded block by block into dy16; W (and wflip) are rounded
    // once per forward (backward). The K-FAC `g` is handed over in bf16 (in the scratch).
    uint16_t *w16, *wflip16; // (c_out, d_in), (c_in, c_out·k1·k2)
    uint16_t *col16;         // nthr x max(colt_n, dcol_n)
    uint16_t *dy16;          // nthr x dy16_n: a chunk's dy (c_out, columns)
    size_t dy16_n;
    uint16_t *x16;   // nthr x (chunk, c_in, h, w): a chunk's input rounded (by forward, and
                     // again by backward: no batch of them is kept), the source of its im2col
    uint16_t *dyx16; // nthr x (chunk, c_out, oh, ow): a chunk's dy rounded (with wflip only),
                     // the source of the transposed convolution's im2col
    // Chunks of several samples (small planes) of a stride-1 'same' convolution: each
    // thread's chunk copied into zero-bordered planes ((h+2p1) x (w+2p2), borders written
    // once, never overwritten), so that every im2col row is a run of fixed-size row copies
    // (pad_n bytes per thread; NULL for other layers)
    unsigned char *pad;
    size_t pad_n;
    // Set before a forward (by nn_conv_bn_relu_forward in training): forward also writes
    // each output plane's moments (nn_plane_moments, with the bias added) into moments,
    // (max_batch, c_out, NN_MOMENTS), while the plane is in cache, for the BatchNorm after it
    bool moments_on;
    float *moments;
    // bf16 mode: each thread's chunk output in f32 (nthr x yt_n) before nn_conv2d_forward16
    // rounds it into its bf16 output
    float *yt;
    size_t yt_n;
    // and each thread's chunk dx in f32 (nthr x dxt_n) before nn_conv2d_backward16 rounds it
    float *dxt;
    size_t dxt_n;
    // bf16 mode, 3x3 'same' layers that nn_conv3x3_amx fits, on a CPU with AMX: forward (amx)
    // and the transposed convolution for dx (amx_t) run image by image on the tile unit from
    // the image's pair layout (xs: nthr x xs_n) and the packed weights wt (wflip's: wtf),
    // instead of w16 / wflip16. amx / amx_t may be cleared to take the im2col path instead.
    bool amx, amx_t;
    uint16_t *wt, *wtf;
    uint32_t *xs;
    size_t xs_n;
    // with amx and one-image chunks, dW too: each thread's dy padded (dyp: nthr x dyp_n) and
    // its share of dW by tap (dwt: nthr x (9, c_out, c_in), summed in thread order into dw)
    uint16_t *dyp;
    size_t dyp_n;
    float *dwt;
    // f32 mode, 3x3 'same' layers that nn_conv3x3_direct fits, on a CPU with AVX-512: forward
    // (direct) and the transposed convolution for dx (direct_t, on wflip) run image by image
    // without im2col, through each thread's zero-bordered planes (xpd: nthr x xpd_n floats)
    // (wpk / wpkf: w's / wflip's packing for the kernel, nn_conv3x3_direct_pack, each pass;
    // in bf16 mode, of their bf16 values for direct32 and direct32_t)
    bool direct, direct_t;
    float *xpd, *wpk, *wpkf;
    size_t xpd_n;
    // bf16 mode, the same layers where AMX is not used and the CPU has AVX512-BF16
    // (nn_conv3x3_direct16): xpd holds bf16 pair planes, wp / wpf the weights' / wflip's
    // pairs, packed each pass
    bool direct16, direct16_t;
    uint32_t *wp, *wpf;
    // one-image chunks of the 3x3 'same' layers that nn_conv3x3_dw fits: dW image by image
    // without im2col, in f32 (dw_direct) and, where nn_conv3x3_dw16 fits and AMX does not
    // take dW, in bf16 mode (dw16). dwb: each thread's block of dwb_n floats: its part of dW
    // (c_out·d_in, laid out (d_in, c_out)), then the kernel's buffer
    bool dw_direct, dw16;
    float *dwb;
    size_t dwb_n;
    // bf16 mode where the bf16 twins do not pay (nn_conv3x3_direct16_pays: a CPU whose bf16
    // dot products are slower than its FMAs): the forward (direct32), dW by image (dw32) and
    // dx by the transposed convolution (direct32_t) through the f32 kernels, on each image
    // and dy decoded into the thread's dec (nthr x dec_n floats: an image, then a dy), on the
    // weights' and wflip's bf16 values (wpk, wpkf): the bf16 values, summed in f32 as the
    // im2col path's products are
    bool direct32, dw32, direct32_t;
    float *dec;
    size_t dec_n;
    // set by the caller for one backward (else NULL): each output channel's Σ dy, already
    // summed as backward would for the bias gradient (nn_batchnorm.dxsum), so it skips that
    // pass over dy
    const double *dbsum;
    // f32 3x3 'same' layers of 16+ channels in and out and images of 4x4 or more (unless
    // nn_conv_winograd() says no; in bf16 mode kept only where the bf16 kernels do not pay):
    // batches that its sub-batch divides by oneDNN's Winograd primitives (conv_wino.c);
    // wino_fwd: the last forward ran there (so does its backward)
    nn_conv_wino *wino;
    bool wino_fwd;
    // f32 3x3 'same' layers on images of at most 2x2 (dense; cleared in bf16 mode): one GEMM
    // per pass on the dense map W' ((c_out·L) x (c_in·L), built each forward from w; bd the
    // bias per (c_out, pixel); dwd dW' before its sum by tap)
    bool dense;
    float *wd, *dwd, *bd;
} nn_conv2d;

// geom->groups must divide c_in and c_out; zero stride/dilation or an empty output are
// NN_ERR_ARG.
nn_status nn_conv2d_init(nn_conv2d *l, const ngd_conv_geom *geom, size_t c_out, bool bias,
                         size_t max_batch, nn_rng *rng);
// x (N, c_in, h, w) -> y (N, c_out, oh, ow). x is borrowed until backward and the stats.
void nn_conv2d_forward(nn_conv2d *l, const float *x, float *y, size_t N);
// bf16 mode: the same from a bf16 input (borrowed likewise): the layer's GEMMs read it as it
// is, with no rounding pass of its own, and the statistics' `a` is its exact f32 value.
void nn_conv2d_forward_bf16(nn_conv2d *l, const uint16_t *x, float *y, size_t N);
// bf16 mode: the same from x or xb (exactly one of them) into y16, each output rounded to bf16
// once the bias is added; with moments_on the moments are those of the rounded planes. The
// f32 output goes through each thread's yt (in cache), never to memory.
void nn_conv2d_forward16(nn_conv2d *l, const float *x, const uint16_t *xb, uint16_t *y16, size_t N);
// dy (N, c_out, oh, ow): dW += Σ dy colᵀ, db += Σ dy, dx (N, c_in, h, w) += col2im(Wᵀ dy).
// dy is borrowed until the stats have been read.
void nn_conv2d_backward(nn_conv2d *l, const float *dy, float *dx);
// The same, but dx is WRITTEN (=), so the caller need not zero it first.
void nn_conv2d_backward_set(nn_conv2d *l, const float *dy, float *dx);
// bf16 mode: the same from a bf16 dy (borrowed likewise), read in place by the GEMMs, the
// transposed convolution and the statistics' `g`; db sums its values in f32.
void nn_conv2d_backward_set_bf16(nn_conv2d *l, const uint16_t *dy, float *dx);
// The same with dx written rounded to bf16 (through each thread's dxt, in cache)
void nn_conv2d_backward16(nn_conv2d *l, const uint16_t *dy, uint16_t *dx16);
void nn_conv2d_free(nn_conv2d *l);
ngd_layer nn_conv2d_ngd_layer(const nn_conv2d *l, const char *name);
// After backward: a = im2col rows (n, o1, o2) x columns (c, k1, k2) (channels averaged over
// groups when groups > 1: exactly ngd_unfold's matrix), g = dy as (N*L, c_out). Both are
// built on the call (a K-FAC step needs them; other steps do not pay for them) into the
// caller's scratch of nn_conv2d_stats_size(l) floats (a model shares one among its layers,
// which are observed one at a time: the largest layer's, not the sum).
size_t nn_conv2d_stats_size(const nn_conv2d *l);
nn_status nn_conv2d_stats(const nn_conv2d *l, float *scratch, ngd_matrix *a, ngd_matrix *g);
// The same statistics for ngd_optim_observe_conv, without a: x = the layer's input as batch
// rows of c_in*h*w (f32, or bf16 in bf16 mode; borrowed), g as above, in the caller's scratch
// of nn_conv2d_stats_g_size(l) floats (batch*L*c_out: 17 MB where a and g took 168 for the
// cnn's second convolution at batch 128).
size_t nn_conv2d_stats_g_size(const nn_conv2d *l);
nn_status nn_conv2d_stats_xg(const nn_conv2d *l, float *scratch, ngd_matrix *x, ngd_matrix *g);
size_t nn_conv2d_params(const nn_conv2d *l, nn_param *out);
// Switches the layer to bf16 GEMMs (allocates its bf16 buffers: NN_ERR_NOMEM).
nn_status nn_conv2d_use_bf16(nn_conv2d *l);

// ====== 3x3 'same' convolution of one bf16 image on AMX tiles (conv_amx.c) ======

#define NN_AMX_MAX_W 1024
// AMX-BF16 is there and the kernel lets this process use the tiles (asked once), and the
// environment does not say NGD_CONV_AMX=0
bool nn_amx_usable(void);
// c input channels, h x w image, co output channels: c, co multiples of 32, w even (at most
// NN_AMX_MAX_W), h·w a multiple of 16
bool nn_conv3x3_amx_fits(size_t c, size_t h, size_t w, size_t co);
// uint32 of an image's pair layout, and the layout of the bf16 image x (c, h, w)
size_t nn_conv3x3_amx_pairs_n(size_t c, size_t h, size_t w);
void nn_conv3x3_amx_pairs(const uint16_t *x, size_t c, size_t h, size_t w, uint32_t *xs);
// w (co, c, 3, 3) rounded to bf16 and packed in tiles: wt holds co·c·9 values
void nn_conv3x3_amx_pack(const float *w, size_t co, size_t c, uint16_t *wt);
// dW: q = nn_conv3x3_amx_dw_q(h, w) (pixels of the rows padded to w+2, rounded to 32); the
// image x (c, h, w) in pairs of pixels (z: nn_conv3x3_amx_z_n uint32); dy (co, h, w), bf16 dyb
// or f32 dyf, padded into dyp (co, q); then dwt (9, co, c) += the 9 taps' dW
size_t nn_conv3x3_amx_dw_q(size_t h, size_t w);
size_t nn_conv3x3_amx_z_n(size_t c, size_t h, size_t w);
void nn_conv3x3_amx_zpairs(const uint16_t *x, size_t c, size_t h, size_t w, uint32_t *z);
void nn_conv3x3_amx_dypad(const uint16_t *dyb, const float *dyf, size_t co, size_t h, size_t w,
                          uint16_t *dyp);
void nn_conv3x3_amx_dw(const uint32_t *z, const uint16_t *dyp, size_t c, size_t h, size_t w,
                       size_t co, float *dwt);
// y (co, h, w) = (add ? y : 0) + the convolution of the image in xs by wt (stride 1,
// padding 1; no bias)
void nn_conv3x3_amx(const uint32_t *xs, const uint16_t *wt, size_t c, size_t h, size_t w, size_t co,
                    float *y, bool add);

// ====== 3x3 'same' convolution of one f32 image by AVX-512 FMAs (conv_direct.c) ======

// AVX-512F is there and the environment does not say NGD_CONV_DIRECT=0
bool nn_conv3x3_direct_usable(void);
// c input channels, h x w image (each at most 4096), co output channels: co a multiple of 8,
// c at most 128, h·w at least 256 (where it is faster than im2col)
bool nn_conv3x3_direct_fits(size_t c, size_t h, size_t w, size_t co);
// floats of the zero-bordered planes of c channels, and their zeroing (once: only their
// interiors are written by nn_conv3x3_direct)
size_t nn_conv3x3_direct_pad_n(size_t c, size_t h, size_t w);
void nn_conv3x3_direct_pad_init(float *xp, size_t c, size_t h, size_t w);
// The weights wt (co, c, 3, 3) packed for nn_conv3x3_direct: wpk, nn_conv3x3_direct_wpk_n floats
size_t nn_conv3x3_direct_wpk_n(size_t co, size_t c);
void nn_conv3x3_direct_pack(const float *wt, size_t co, size_t c, float *wpk);
// y (co, h, w) = (add ? y : 0) + the convolution of x (c, h, w) by wt (co, c, 3, 3) (given
// packed: wpk), stride 1, padding 1, then + b (co) when b is not NULL (the same rounding as
// adding it after); xp: nn_conv3x3_direct_pad_n(c, h, w) floats, zeroed once
void nn_conv3x3_direct(const float *x, size_t c, size_t h, size_t w, const float *wpk, size_t co,
                       float *y, const float *b, bool add, float *xp);
// The same for bf16 mode on AVX512-BF16 (nn_conv3x3_direct16_usable): the bf16 image x, the
// weights in bf16 pairs of input channels (wp: nn_conv3x3_direct16_wp_n uint32, packed from
// f32 (co, c, 3, 3) by nn_conv3x3_direct16_pack), xp: nn_conv3x3_direct16_pad_n(c, h, w)
// uint32 of zero-bordered pair planes, zeroed once. Same fits. The output goes to y (f32,
// written or added), or where y16 is set instead (y NULL, add false), rounded to bf16 as
// nn_bf16_encode does, from the same sums.
bool nn_conv3x3_direct16_usable(void);
// Whether a layer takes the bf16 twins (nn_conv3x3_direct16, _dw16): usable, and the CPU's
// bf16 dot products not slower than its f32 FMAs (ngd_bf16_dot_slow; where they are, its
// layers go by bf16 im2col and ngd_bf16_gemm, which then runs in f32: cnn SGD bf16 step 137
// -> 106 ms on an Intel Xeon without AMX, f32 94)
bool nn_conv3x3_direct16_pays(void);
size_t nn_conv3x3_direct16_pad_n(size_t c, size_t h, size_t w);
size_t nn_conv3x3_direct16_wp_n(size_t co, size_t c);
void nn_conv3x3_direct16_pack(const float *wt, size_t co, size_t c, uint32_t *wp);
void nn_conv3x3_direct16(const uint16_t *x, size_t c, size_t h, size_t w, const uint32_t *wp,
                         size_t co, float *y, uint16_t *y16, const float *b, bool add,
                         uint32_t *xp);
// bf16 dW of one image on AVX512-BF16, without im2col: dwt (c, 3, 3, co) += Σ over pixels of
// dy · the zero-bordered x at each tap, for x (c, h, w) bf16 and dy (co, h, w) in bf16
// (dy16) or in f32 (dy, rounded first; exactly one of them); sums of f32 products of bf16
// values in f32, by pairs of pixels. co a multiple of 16, w even, h·w at least 256; buf:
// nn_conv3x3_dw16_buf_n uint32 per thread, zeroed once (the planes' borders stay zero).
bool nn_conv3x3_dw16_fits(size_t c, size_t h, size_t w, size_t co);
size_t nn_conv3x3_dw16_buf_n(size_t c, size_t h, size_t w, size_t co);
void nn_conv3x3_dw16(const uint16_t *x, const uint16_t *dy16, const float *dy, size_t c, size_t h,
                     size_t w, size_t co, float *dwt, uint32_t *buf);
// The same in f32 by FMAs (nn_conv3x3_direct_usable) for x (c, h, w), dy (co, h, w): f32
// sums of the products in pixel order; co a multiple of 16, h·w at least 256 (any w); buf:
// nn_conv3x3_dw_buf_n floats per thread, zeroed once.
bool nn_conv3x3_dw_fits(size_t c, size_t h, size_t w, size_t co);
size_t nn_conv3x3_dw_buf_n(size_t c, size_t h, size_t w, size_t co);
void nn_conv3x3_dw(const float *x, const float *dy, size_t c, size_t h, size_t w, size_t co,
                   float *dwt, float *buf);

// ====== BatchNorm (batchnorm.c): 1d on (N, C), 2d on (N, C, H, W) ======

typedef struct {
    size_t c, hw, max_batch; // hw = 1 for BatchNorm1d, H*W for BatchNorm2d
    float eps, momentum;     // 1e-5, 0.1 (PyTorch): running = (1-m) running + m batch
    float *w, *dw;           // (C) scale γ, init 1
    float *b, *db;           // (C) shift β, init 0
    float *running_mean;     // (C) init 0
    float *running_var;      // (C) init 1; updated with the unbiased batch variance
    float *mean, *invstd;    // (C) mean and 1/sqrt(var + eps) used by the last forward
    const float *x;          // (N, C, hw) borrowed: x̂ is recomputed from it in backward
    const uint16_t *x16;     // the same in bf16 (nn_batchnorm_relu_forward16; x is NULL)
    size_t n;
    bool train; // mode of the last forward
    bool relu;  // the last forward was nn_batchnorm_relu_forward
    // with want_dxsum, a backward that writes dx also leaves in dxsum (C) each channel's
    // Σ dx, summed as nn_conv2d's bias gradient sums its dy (for nn_conv2d.dbsum)
    bool want_dxsum;
    double *dxsum;
} nn_batchnorm;

nn_status nn_batchnorm_init(nn_batchnorm *l, size_t c, size_t hw, size_t max_batch);
// train: normalize with the batch statistics (biased variance) and update the running
// statistics; eval: normalize with the running statistics. x is borrowed until backward
// (x̂ = (x − mean)·invstd is recomputed there rather than stored).
void nn_batchnorm_forward(nn_batchnorm *l, const float *x, float *y, size_t N, bool train);
void nn_batchnorm_backward(nn_batchnorm *l, const float *dy, float *dx);
// BatchNorm then ReLU in one pass: y = max(0, γ x̂ + β), with no buffer between them. Its
// backward takes dy of the ReLU's output and WRITES dx (=, not +=: the input of a
// conv-BN-ReLU block has no other consumer), so the caller need not zero dx.
void nn_batchnorm_relu_forward(nn_batchnorm *l, const float *x, float *y, size_t N, bool train);
void nn_batchnorm_relu_backward(nn_batchnorm *l, const float *dy, float *dx);
// The same with dx written rounded to bf16 (--precision bf16: the conv before it takes a bf16
// dy: nn_conv2d_backward_set_bf16)
void nn_batchnorm_relu_backward_bf16(nn_batchnorm *l, const float *dy, uint16_t *dx);
// The same from a bf16 dy
void nn_batchnorm_relu_backward16(nn_batchnorm *l, const uint16_t *dy, uint16_t *dx);
// nn_batchnorm_relu_forward writing its output rounded to bf16 (--precision bf16: the next
// layer is a bf16 Conv2d, which would round it anyway); backward is the same.
void nn_batchnorm_relu_forward_bf16(nn_batchnorm *l, const float *x, uint16_t *y, size_t N,
                                    bool train);
// Training BN-ReLU from the per-plane moments its producer computed while the planes were
// in cache (nn_plane_moments, e.g. a Conv2d with moments_on): one pass over x instead of
// three. mom is (N, C, 3); the output goes to y, or to y16 rounded to bf16 when y16 is set.
// The statistics equal the two-pass ones up to float rounding (the combination is exact:
// each plane's deviations are taken about its own float mean, then moved to the batch's).
void nn_batchnorm_relu_forward_moments(nn_batchnorm *l, const float *x, const float *mom, float *y,
                                       uint16_t *y16, size_t N);
// A plane's moments for nn_batchnorm_relu_forward_moments: out[0] = a, its float mean
// (Σ v / n), out[1] = Σ (v − a) and out[2] = Σ (v − a)², each summed in 16 lanes (element p
// into lane p mod 16, then the lanes in order); of a bf16 plane, the same sums as of its
// decoded values
#define NN_MOMENTS 3
void nn_plane_moments(const float *v, size_t n, float *out);
void nn_plane_moments_bf16(const uint16_t *v, size_t n, float *out);
// The last block of a CNN stage without its BN-ReLU output in memory: BN-ReLU of x pooled by
// pool (2x2 windows, stride 2, no padding) into y (N, C, OH, OW), or y16 rounded to bf16,
// the same values as nn_batchnorm_relu_forward then nn_maxpool2d_forward; mom as in
// nn_batchnorm_relu_forward_moments, or NULL (two passes; always in evaluation). Backward is
// the pool's (nn_maxpool2d_backward_set), then nn_batchnorm_relu_backward.
typedef struct nn_maxpool2d nn_maxpool2d;
void nn_batchnorm_relu_maxpool_forward(nn_batchnorm *l, nn_maxpool2d *pool, const float *x,
                                       const float *mom, float *y, uint16_t *y16, size_t N,
                                       bool train);
// BN-ReLU of a bf16 x (bf16 mode: a conv's output kept in bf16, nn_conv2d_forward16), pooled
// as nn_batchnorm_relu_maxpool_forward when pool is set, into y or y16: the same values as
// the f32 functions on x's decoded values. Training needs mom (nn_plane_moments of the
// decoded planes). Backward (nn_batchnorm_relu_backward*) reads x in bf16 the same way.
void nn_batchnorm_relu_forward16(nn_batchnorm *l, const uint16_t *x, const float *mom, float *y,
                                 uint16_t *y16, nn_maxpool2d *pool, size_t N, bool train);
void nn_batchnorm_free(nn_batchnorm *l);
size_t nn_batchnorm_params(const nn_batchnorm *l, nn_param *out); // weight, bias

// ====== LayerNorm (layernorm.c): over the last dimension ======

typedef struct {
    size_t c, max_rows;
    float eps;          // 1e-5
    float *w, *dw;      // (C) init 1
    float *b, *db;      // (C) init 0
    float *mean, *rstd; // (rows) of the last forward
    const float *x;     // (rows, C) borrowed
    size_t rows;
} nn_layernorm;

nn_status nn_layernorm_init(nn_layernorm *l, size_t c, size_t max_rows);
void nn_layernorm_forward(nn_layernorm *l, const float *x, float *y, size_t rows);
// The output rounded to bf16 instead (a bf16 Linear's input: nn_linear_in16)
void nn_layernorm_forward16(nn_layernorm *l, const float *x, uint16_t *y16, size_t rows);
void nn_layernorm_backward(nn_layernorm *l, const float *dy, float *dx);
void nn_layernorm_backward_set(nn_layernorm *l, const float *dy, float *dx); // dx written
// dx = base + the input gradient (a residual's other path; base may be dx)
void nn_layernorm_backward_add(nn_layernorm *l, const float *dy, const float *base, float *dx);
void nn_layernorm_free(nn_layernorm *l);
size_t nn_layernorm_params(const nn_layernorm *l, nn_param *out); // weight, bias

// ====== Activations (act.c): ReLU, GELU ======

typedef struct {
    const float *x; // borrowed
    size_t n;
} nn_relu;

void nn_relu_forward(nn_relu *l, const float *x, float *y, size_t n);
void nn_relu_forward16(nn_relu *l, const float *x, uint16_t *y16, size_t n); // y rounded
// dx += dy * [x > 0] (the derivative at the kink 0 is taken as 0)
void nn_relu_backward(nn_relu *l, const float *dy, float *dx);
// dx = dy * [x > 0], written (dx may be dy)
void nn_relu_backward_set(nn_relu *l, const float *dy, float *dx);
// The same, and dx16 = dx rounded to bf16 (a bf16 Linear's output gradient: nn_linear_dy16)
void nn_relu_backward_set16(nn_relu *l, const float *dy, float *dx, uint16_t *dx16);

typedef enum {
    NN_GELU_ERF = 0,  // exact: x Φ(x) (PyTorch nn.GELU(), timm's ViT)
    NN_GELU_TANH = 1, // 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³))) (GPT-2, llm.c)
} nn_gelu_kind;

typedef struct {
    nn_gelu_kind kind;
    const float *x; // borrowed
    float *g;       // GELU'(x), written over x by nn_gelu_forward_grad (else NULL)
    size_t n;
} nn_gelu;

// The approximations GELU uses (act.c), exposed for their accuracy test.
float nn_tanh_approx(float u);
float nn_erf_approx(float x);
float nn_exp_approx(float x);
void nn_gelu_forward(nn_gelu *l, const float *x, float *y, size_t n);
void nn_gelu_forward16(nn_gelu *l, const float *x, uint16_t *y16, size_t n); // y rounded
// y (f32) or y16 (rounded; the other NULL) = GELU(x), and x overwritten with GELU'(x), which
// the backward then multiplies (x is not kept): the transformer block's MLP, whose fc output
// has no other reader. GELU and GELU' to float32 rounding of nn_gelu_forward's and the
// backward's (their exponential shared).
void nn_gelu_forward_grad(nn_gelu *l, float *x, float *y, uint16_t *y16, size_t n);
void nn_gelu_backward(nn_gelu *l, const float *dy, float *dx);     // dx += dy GELU'(x)
void nn_gelu_backward_set(nn_gelu *l, const float *dy, float *dx); // dx = dy GELU'(x)
// The same, and dx16 = dx rounded to bf16 (nn_linear_dy16)
void nn_gelu_backward_set16(nn_gelu *l, const float *dy, float *dx, uint16_t *dx16);
// Whether GELU may take its AVX-512 loops (where the CPU has AVX-512F; the default) or must
// take the plain ones: for the tests, process-wide
void nn_gelu_set_vector(bool on);

// ====== Pooling (pool.c) ======

struct nn_maxpool2d {
    size_t c, h, w, k, s, p, oh, ow, max_batch; // square kernel k, stride s, padding p
    int32_t *argmax; // (N, C, OH, OW) index into the input plane (h*w) of each maximum
    size_t n;
};

// p <= k/2 (PyTorch's rule); padding never wins (it is -inf).
nn_status nn_maxpool2d_init(nn_maxpool2d *l, size_t c, size_t h, size_t w, size_t k, size_t s,
                            size_t p, size_t max_batch);
void nn_maxpool2d_forward(nn_maxpool2d *l, const float *x, float *y, size_t N);
// The same with the output rounded to bf16 (the maximum is taken in f32; backward is the same)
void nn_maxpool2d_forward_bf16(nn_maxpool2d *l, const float *x, uint16_t *y, size_t N);
// dx += dy routed to the maximum (ties: the first in row-major window order)
void nn_maxpool2d_backward(nn_maxpool2d *l, const float *dy, float *dx);
// The same, but dx is WRITTEN (=): the caller need not zero it first.
void nn_maxpool2d_backward_set(nn_maxpool2d *l, const float *dy, float *dx);
// The same into a bf16 dx (windows that do not overlap: k == s, no padding)
void nn_maxpool2d_backward_set_bf16(nn_maxpool2d *l, const float *dy, uint16_t *dx);
void nn_maxpool2d_free(nn_maxpool2d *l);
// One output row of 2x2 / stride-2 max pooling: nq windows over input rows x0 and x1 (2·nq
// values each), whose plane offsets start at a0 and a1; into y (or y16 rounded) and arg.
// Ties go to the first in window order; a NaN always wins (NaNs propagate, the last one).
#if defined(__AVX512F__)
// In 16 lanes with masked tails (the plain loop below left rows of fewer than 16 windows,
// the 16x16 planes of the cnn's second stage, to scalar code with a branch per compare:
// its fused BN-ReLU-pool took 4.2 ms a step against 2.0 for a plane 4x the size)
static inline void nn_maxpool2x2_row(const float *x0, const float *x1, size_t nq, int32_t a0,
                                     int32_t a1, float *y, uint16_t *y16, int32_t *arg) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
    for (size_t q = 0; q < nq; q += 16) {
        const unsigned m = nq - q < 16 ? (unsigned)(nq - q) : 16u; // windows in this vector
        const __mmask16 km = (__mmask16)((1u << m) - 1u);
        const __mmask16 klo = (__mmask16)(m >= 8 ? 0xffffu : (1u << (2 * m)) - 1u);
        const __mmask16 khi = (__mmask16)(m <= 8 ? 0u : (1u << (2 * m - 16)) - 1u);
        const float *p0 = x0 + 2 * q, *p1 = x1 + 2 * q;
        const __m512 l0 = _mm512_maskz_loadu_ps(klo, p0), h0 = _mm512_maskz_loadu_ps(khi, p0 + 16);
        const __m512 l1 = _mm512_maskz_loadu_ps(klo, p1), h1 = _mm512_maskz_loadu_ps(khi, p1 + 16);
        const __m512 v[4] = {_mm512_permutex2var_ps(l0, ev, h0), _mm512_permutex2var_ps(l0, od, h0),
                             _mm512_permutex2var_ps(l1, ev, h1),
                             _mm512_permutex2var_ps(l1, od, h1)};
        const __m512i i2 = _mm512_add_epi32(_mm512_set1_epi32(2 * (int32_t)q), ev); // 2q + 2 lane
        const int32_t off[4] = {a0, a0 + 1, a1, a1 + 1};
        __m512 best = v[0];
        __m512i at = _mm512_add_epi32(i2, _mm512_set1_epi32(a0));
        for (int k = 1; k < 4; k++) { // MAXPOOL_TAKE: greater, or a NaN
            const __mmask16 t = _mm512_cmp_ps_mask(v[k], best, _CMP_GT_OQ) |
                                _mm512_cmp_ps_mask(v[k], v[k], _CMP_UNORD_Q);
            best = _mm512_mask_mov_ps(best, t, v[k]);
            at = _mm512_mask_add_epi32(at, t, i2, _mm512_set1_epi32(off[k]));
        }
        if (y16) { // nn_to_bf16 in lanes: round to nearest even, a NaN kept quiet
            const __m512i u = _mm512_castps_si512(best), hi = _mm512_srli_epi32(u, 16);
            const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
            __m512i r = _mm512_srli_epi32(
                _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
            const __mmask16 nan = _mm512_cmp_ps_mask(best, best, _CMP_UNORD_Q);
            r = _mm512_mask_or_epi32(r, nan, hi, _mm512_set1_epi32(0x40));
            _mm512_mask_cvtepi32_storeu_epi16(y16 + q, km, r);
        } else {
            _mm512_mask_storeu_ps(y + q, km, best);
        }
        _mm512_mask_storeu_epi32(arg + q, km, at);
    }
}
#else
static inline void nn_maxpool2x2_row(const float *x0, const float *x1, size_t nq, int32_t a0,
                                     int32_t a1, float *y, uint16_t *y16, int32_t *arg) {
    // pool.c's MAXPOOL_TAKE rule as selects, in vector lanes (inline: a row is 4 to 16
    // windows in the CNNs here, and this runs per row pair)
    NN_PRAGMA(omp simd)
    for (size_t q = 0; q < nq; q++) {
        const int32_t i = 2 * (int32_t)q;
        float best = x0[i];
        int32_t at = a0 + i;
        const float v1 = x0[i + 1], v2 = x1[i], v3 = x1[i + 1];
        const bool k1 = v1 > best || v1 != v1; // v != v: NaN
        best = k1 ? v1 : best, at = k1 ? a0 + i + 1 : at;
        const bool k2 = v2 > best || v2 != v2;
        best = k2 ? v2 : best, at = k2 ? a1 + i : at;
        const bool k3 = v3 > best || v3 != v3;
        best = k3 ? v3 : best, at = k3 ? a1 + i + 1 : at;
        if (y16)
            y16[q] = nn_to_bf16(best);
        else
            y[q] = best;
        arg[q] = at;
    }
}
#endif

typedef struct {
    size_t c, h, w, k, s, p, oh, ow; // zero padding counted in the divisor (PyTorch default)
    size_t n;
} nn_avgpool2d;

nn_status nn_avgpool2d_init(nn_avgpool2d *l, size_t c, size_t h, size_t w, size_t k, size_t s,
                            size_t p);
void nn_avgpool2d_forward(nn_avgpool2d *l, const float *x, float *y, size_t N);
void nn_avgpool2d_backward(nn_avgpool2d *l, const float *dy, float *dx);

// Global average pooling: x (N, C, HW) -> y (N, C). Also the mean over the tokens of a
// sequence, x (B, T, C) -> y (B, C), with nn_tokenpool_*.
void nn_gap_forward(const float *x, float *y, size_t N, size_t C, size_t HW);
void nn_gap_backward(const float *dy, float *dx, size_t N, size_t C, size_t HW);
void nn_tokenpool_forward(const float *x, float *y, size_t B, size_t T, size_t C);
void nn_tokenpool_backward(const float *dy, float *dx, size_t B, size_t T, size_t C);
void nn_tokenpool_backward_set(const float *dy, float *dx, size_t B, size_t T, size_t C);

// Flatten (N, C, H, W) -> (N, C*H*W) is a no-op: the memory is already in that order, so a
// model passes the same pointer on (and the same gradient pointer back).

// ====== Dropout (dropout.c): inverted dropout, seeded ======

typedef struct {
    float p; // drop probability in [0, 1)
    size_t max_n;
    nn_rng rng;    // drawn from in every training forward
    uint8_t *keep; // (n) mask of the last training forward
    size_t n;
    bool train;
} nn_dropout;

nn_status nn_dropout_init(nn_dropout *l, float p, size_t max_n, uint64_t seed);
// train: y = x * keep / (1-p) with keep ~ Bernoulli(1-p); eval (or p = 0): y = x.
void nn_dropout_forward(nn_dropout *l, const float *x, float *y, size_t n, bool train);
void nn_dropout_backward(nn_dropout *l, const float *dy, float *dx);
void nn_dropout_free(nn_dropout *l);

// ====== Residual add (residual.c): y = a + b; no state ======

void nn_residual_forward(const float *a, const float *b, float *y, size_t n);
// da += dy, db += dy (either may be NULL)
void nn_residual_backward(const float *dy, float *da, float *db, size_t n);

// ====== Embeddings (embedding.c) ======

// Token embedding: idx (N) in [0, V) -> y (N, C) = rows of the table.
typedef struct {
    size_t v, c;
    float *w, *dw;      // (V, C) init N(0, 0.02²) (GPT-2)
    const int32_t *idx; // borrowed
    size_t n;
} nn_embedding;

nn_status nn_embedding_init(nn_embedding *l, size_t v, size_t c, nn_rng *rng);
void nn_embedding_forward(nn_embedding *l, const int32_t *idx, float *y, size_t n);
void nn_embedding_backward(nn_embedding *l, const float *dy); // dW[idx] += dy
void nn_embedding_free(nn_embedding *l);
size_t nn_embedding_params(const nn_embedding *l, nn_param *out);

// Learned positional embedding: y (B, T, C) = x + pos[t]; T <= max_t. y may equal x.
typedef struct {
    size_t max_t, c;
    float *w, *dw; // (max_t, C) init N(0, 0.02²) (ViT, GPT-2)
    size_t b, t;
} nn_posembed;

nn_status nn_posembed_init(nn_posembed *l, size_t max_t, size_t c, nn_rng *rng);
void nn_posembed_forward(nn_posembed *l, const float *x, float *y, size_t B, size_t T);
void nn_posembed_backward(nn_posembed *l, const float *dy, float *dx); // dpos += Σ_b dy
void nn_posembed_free(nn_posembed *l);
size_t nn_posembed_params(const nn_posembed *l, nn_param *out);

// Patch embedding (ViT): image (N, C, H, W) cut into P = (H/p)(W/p) non-overlapping p x p
// patches, each flattened in (c, ky, kx) order (= ngd_unfold with k = s = p) and mapped by
// the Linear `proj` (C*p*p -> D): y (N, P, D). proj is the Kronecker-factored layer.
typedef struct {
    size_t c, h, w, p, d, np, max_batch;
    nn_linear proj;  // (D, C*p*p)
    float *patches;  // (N*P, C*p*p) the K-FAC input of proj
    float *dpatches; // (N*P, C*p*p) only when an input gradient is asked for (lazy)
    size_t n;
} nn_patchembed;

// p must divide h and w.
nn_status nn_patchembed_init(nn_patchembed *l, size_t c, size_t h, size_t w, size_t p, size_t d,
                             size_t max_batch, nn_rng *rng);
void nn_patchembed_forward(nn_patchembed *l, const float *x, float *y, size_t N);
// dx may be NULL (the usual case: images need no gradient). Otherwise the first call with
// a dx allocates the patch-gradient buffer; it returns NN_ERR_NOMEM if that fails.
nn_status nn_patchembed_backward(nn_patchembed *l, const float *dy, float *dx);
void nn_patchembed_free(nn_patchembed *l);

// ====== Multi-head self-attention (attention.c) ======

// x (B, T, C) -> qkv = Linear(C -> 3C) -> per head h (hs = C/nh):
// att = softmax(q kᵀ / √hs [causal: j <= i]) (T, T), out = att v -> (B, T, C) -> proj
// Linear(C -> C) -> y. qkv and proj are Kronecker-factored layers: register them with
// nn_linear_ngd_layer(&l->qkv, ...) and read their statistics with nn_linear_stats.
typedef struct {
    size_t c, nh, hs, max_b, max_t;
    bool causal;
    nn_linear qkv;  // (3C, C); output columns [q | k | v], head h at columns h*hs..
    nn_linear proj; // (C, C)
    float *qkvbuf;  // (B, T, 3C)
    float *att;     // (B, nh, T, tp) softmax probabilities, transposed: row j holds key j's
                    // probability for each query i (tp = T rounded up to 16; lanes past T 0)
    float *atty;    // (B, T, C) heads' outputs, concatenated: proj's input
    float *dqkv;    // (B, T, 3C) gradient of qkvbuf: qkv's output gradient `g`
    float *datty;   // (B, T, C)
    float *scr;     // nthr x scr_n floats of scratch, one block per thread of the heads' loop
    size_t scr_n;   // (the heads' kernels' copies of q, k, v, dout and a T x T matrix)
    size_t nthr;    // threads planned for at init
    size_t b, t;
} nn_attention;

nn_status nn_attention_init(nn_attention *l, size_t c, size_t nh, bool causal, size_t max_b,
                            size_t max_t, nn_rng *rng);
void nn_attention_forward(nn_attention *l, const float *x, float *y, size_t B, size_t T);
// bf16 mode: the input already rounded into nn_linear_in16(&l->qkv)
void nn_attention_forward_in16(nn_attention *l, float *y, size_t B, size_t T);
void nn_attention_backward(nn_attention *l, const float *dy, float *dx);
void nn_attention_backward_set(nn_attention *l, const float *dy, float *dx); // dx written
void nn_attention_free(nn_attention *l);
// Which passes of the heads take the AVX-512 kernels (where the CPU has AVX-512; the others
// run per-head GEMMs): NN_ATT_AUTO (the default: where they pay, attention.c), NN_ATT_GEMM
// (none) or NN_ATT_KERNELS (all). For the tests and bench/attention_probe; process-wide.
enum { NN_ATT_GEMM = 0, NN_ATT_AUTO = 1, NN_ATT_KERNELS = 2 };
void nn_attention_set_kernels(int mode);

// ====== Loss (loss.c): softmax cross-entropy ======

// logits (N, K), labels (N) in [0, K). Label smoothing ε: the target is (1-ε) onehot + ε/K.
// Returns the mean loss over the N rows (computed in float64) and, if dlogits != NULL,
// WRITES (not accumulates: it seeds the backward pass) dlogits (N, K) = scale * (softmax -
// target) / N, the gradient of scale * loss. A label out of range is a caller bug (assert).
float nn_xent_forward(const float *logits, const int32_t *labels, size_t N, size_t K,
                      float smoothing, float scale, float *dlogits);
// Number of rows whose argmax (first maximum) equals the label.
size_t nn_xent_correct(const float *logits, const int32_t *labels, size_t N, size_t K);

#endif
