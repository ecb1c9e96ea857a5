/*
 * ngd.h — libngd: Kronecker-factored natural-gradient optimizers for any C training loop.
 *
 * libngd implements SINGD (structured inverse-free natural gradient; its special cases
 * INGD and IKFAC), the K-FAC family (K-FAC, RS-KFAC, SRE-KFAC, B-KFAC, B-R-KFAC,
 * BRC-KFAC) and AdamW / SGD. It knows nothing of layers, graphs or autograd:
 *
 *     "statistics in, update out"
 *
 * For every Kronecker-factored layer (a fully connected or convolution layer with weight
 * W of shape d_out x d_in and an optional bias b) you register W, b and their gradient
 * buffers once. On steps where the optimizer wants curvature statistics you hand it the
 * layer's inputs `a` and output-gradients `g` from your backward pass; on every step you
 * call ngd_optim_step(), which reads the gradient buffers and updates W and b in place.
 *
 * A complete training step (error handling shortened):
 *
 *     ngd_config cfg = ngd_config_default(NGD_METHOD_SINGD);
 *     cfg.lr = 1e-3f;
 *     ngd_optim *opt;  ngd_optim_create(&cfg, &opt);
 *     ngd_layer fc = {.name = "fc1", .weight = W, .weight_grad = dW, .d_out = 512,
 *                     .d_in = 784, .bias = b, .bias_grad = db};
 *     int id;  ngd_optim_add_layer(opt, &fc, &id);
 *     for (;;) {
 *         forward(x);                                   // your code: y = x W^T + b
 *         backward();                                   // your code: fills dW, db, dy
 *         if (ngd_optim_wants_stats(opt))
 *             ngd_optim_observe(opt, id, batch, ngd_matrix_f32(x, batch, 784),
 *                                              ngd_matrix_f32(dy, batch, 512));
 *         if (ngd_optim_step(opt) != NGD_OK) break;     // W, b updated in place
 *     }
 *     ngd_optim_free(opt);
 *
 * Conventions
 *  - Row-major everywhere. A weight is d_out x d_in; a Conv2d weight [C_out, C_in/G, k1, k2]
 *    is the row-major d_out x d_in matrix with d_in = (C_in/G)*k1*k2 (its memory as is).
 *  - A bias is an extra input column: the library appends the column of ones to `a`
 *    itself, so `a` always has d_in columns.
 *  - `a` has one row per (sample, shared position): batch*R rows, sample-major, where R is
 *    the number of weight-sharing positions (tokens of a sequence, output locations of a
 *    convolution: give a convolution its input images through ngd_optim_observe_conv, which
 *    unfolds them itself, or its im2col rows from ngd_unfold()). `g` has the same rows and
 *    is the gradient of the loss *as you reduced it* with respect to the layer output;
 *    `loss_average` in the config says how you reduced it, by the loss's terms: a sum of
 *    them (SUM), their mean over the batch where each sample has one term, e.g. a classifier
 *    even after a convolution and pooling (BATCH, the default), or their mean over batch and
 *    positions where each position has its own term, e.g. a language model's tokens
 *    (BATCH_SEQUENCE): exactly as in docs/algorithms.md#output-gradients.
 *  - For kfac_approx = REDUCE the library averages `a` and sums `g` over each sample's R
 *    rows; you may also pass `a` already reduced (exactly `batch` rows), never `g`: its rows
 *    tell libngd R (= rows of g / batch), and a `g` of `batch` rows is taken as R = 1.
 *  - The K-FAC family's factors are per-sample averages whatever loss_average says (it only
 *    converts the gradients back to per-sample ones), so its step follows the gradient: a SUM
 *    loss's step is n (BATCH) or n/R (BATCH_SEQUENCE) times the mean loss's, and lr must
 *    change by the inverse to keep it, as far as the clip and the ρ^k identity term (neither
 *    scales with the loss) leave it (docs/algorithms.md#k-fac-statistics).
 *  - Precision: parameters and gradients are float32. Statistics may be float32 or bf16
 *    (accumulated in float32); factors are stored in float32 or bf16 per factor.
 *
 * Errors: every fallible call returns an ngd_status; the handle keeps a message naming the
 * problem (ngd_optim_errmsg). Numerical events (a non-finite gradient, a failed
 * decomposition) are not errors: they are counted in the per-layer health.
 * The library never prints and never exits. One handle may be used by one thread at a time;
 * different handles are independent, from any threads (each its own, at once), including
 * the threads of the client's own OpenMP parallel region (there each handle's products run on
 * its thread alone); a client thread outside any OpenMP region (a pthread) runs libngd's
 * products on a team of its own, of the threads that thread's omp_set_num_threads (or
 * OMP_NUM_THREADS) asks. What is shared by the process: a counter of libngd's GEMM FLOPs, the
 * switches read once from the environment (NGD_F32_GEMM, NGD_BF16_GEMM, NGD_BF16_SPLIT,
 * NGD_SYRK_BLOCKS), and each thread's cache of oneDNN primitives (freed when the thread ends).
 * A handle's error messages and log callbacks take a lock of its own (its log_fn is never
 * called by two threads at once). Threads: libngd's products and decompositions run with OpenMP's
 * dynamic adjustment turned off and at most OMP_THREAD_LIMIT threads (one under
 * OMP_MAX_ACTIVE_LEVELS=0): oneDNN computes only the parts of a product whose threads it gets,
 * and OpenBLAS's LAPACK waits for ever for threads it does not get; client threads that share a
 * thread limit should together ask for no more threads than it allows. fork(): a child of a
 * process that has run OpenMP work on more than one thread cannot use OpenMP (GNU libgomp's
 * limit: its first parallel region hangs): fork before any multi-threaded libngd call, run
 * the parent with OMP_NUM_THREADS=1, or exec a new program in the child.
 */
#ifndef NGD_H
#define NGD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define NGD_API __attribute__((visibility("default")))
#else
#define NGD_API
#endif

// ====== Versions ======

#define NGD_VERSION_MAJOR 0
#define NGD_VERSION_MINOR 1
#define NGD_VERSION_PATCH 0

// The library's version as "MAJOR.MINOR.PATCH"; a static string.
NGD_API const char *ngd_version(void);

// Floating-point operations of the GEMMs libngd has run in this process so far (2·m·n·k per
// product, counted at its one GEMM door; decompositions and elementwise work not included).
// For benchmarks: read it before and after a step.
NGD_API uint64_t ngd_gemm_flop_count(void);

// ====== Status and errors ======

// Values are stable (append only).
typedef enum {
    NGD_OK = 0,
    NGD_ERR_ARG = 1,      // a bad argument: NULL, out-of-range value, unknown option
    NGD_ERR_SHAPE = 2,    // matrix shapes do not match the layer
    NGD_ERR_LAYER = 3,    // unknown layer or parameter id
    NGD_ERR_NOMEM = 4,    // an allocation failed; the state is unchanged (when it can
                          // happen: "Memory and failures" below)
    NGD_ERR_IO = 5,       // a file could not be opened, read, written or renamed
    NGD_ERR_FORMAT = 6,   // a file is truncated, foreign, corrupt or from another setup
    NGD_ERR_STATE = 7,    // the call is not allowed now (e.g. add_layer after the first step,
                          // or a preconditioner update step with a layer that got no stats)
    NGD_ERR_NUMERIC = 8,  // a numerical failure that could not be absorbed
    NGD_ERR_INTERNAL = 9, // a bug in libngd (an internal invariant broke)
    NGD_SKIPPED = 10,     // not an error: the step was skipped (non-finite gradient)
    NGD_STATUS_COUNT
} ngd_status;

// A static, human-readable description of a status code ("shape mismatch").
NGD_API const char *ngd_status_str(ngd_status s);

// ====== Matrices ======

// Stable values (stored in checkpoints).
typedef enum { NGD_F32 = 0, NGD_BF16 = 1 } ngd_dtype;

// A borrowed, row-major view: element (i, j) is at data + (i*ld + j) elements of dtype.
// ld >= cols. libngd never frees or keeps it beyond the call it is passed to.
typedef struct {
    const void *data;
    size_t rows, cols, ld;
    ngd_dtype dtype;
} ngd_matrix;

// Convenience constructors for a dense row-major block (ld = cols).
NGD_API ngd_matrix ngd_matrix_f32(const float *data, size_t rows, size_t cols);
NGD_API ngd_matrix ngd_matrix_bf16(const uint16_t *data, size_t rows, size_t cols);

// bf16 (bits in uint16_t) from float32 and back, as libngd converts: ngd_bf16_encode rounds to
// the nearest bf16 value, ties to even (Inf stays Inf, a finite value past bf16's largest
// becomes Inf, NaN stays a quiet NaN); ngd_bf16_decode is exact. Long arrays are converted on
// the threads (outside a client's parallel region). src and dst must not overlap.
NGD_API void ngd_bf16_encode(const float *src, uint16_t *dst, size_t n);
NGD_API void ngd_bf16_decode(const uint16_t *src, float *dst, size_t n);

// The bf16 GEMM libngd's bf16 arithmetic runs, for a client's own bf16 layers: row-major with
// transpose flags (as cblas/dnnl_sgemm), C (m x n, float32, leading dimension ldc) =
// alpha·op(A)·op(B) + beta·C, A and B bf16 (bits in uint16_t), products summed in float32.
// oneDNN's matmul primitive (AMX tiles or AVX512-BF16, whichever the CPU has); without bf16
// kernels the same products in float32. beta = 0 never reads C. Threaded when called outside
// an OpenMP parallel region, on the calling thread inside one; each thread keeps the oneDNN
// primitives of its last 64 shapes (keyed by shape, alpha and beta: a product whose alpha or
// beta changes every call builds a primitive every call). Not counted in ngd_gemm_flop_count
// (libngd's own work). NGD_ERR_ARG: NULL pointers or a leading dimension below its row length.
NGD_API ngd_status ngd_bf16_gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                                 const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb,
                                 float beta, float *C, size_t ldc);
// Whether this CPU runs bf16 products faster as float32 ones: its bf16 dot-product
// instructions (AVX512-BF16, no AMX) reach less than 0.75 of its f32 FMAs' FLOP rate, one
// core, measured once per process (about a millisecond; an Intel Xeon without AMX: 0.5, an
// AMD Zen 5: 2). ngd_bf16_gemm then decodes its operands to float32 and runs the f32 GEMM
// (the products of bf16 values are exact in float32: only the order of the sums differs),
// unless NGD_BF16_GEMM=matmul|gemm|convert in the environment chooses. *ratio (NULL: not
// wanted) gets the measured ratio; 0 without AVX512-BF16.
NGD_API bool ngd_bf16_dot_slow(double *ratio);
// The float32 GEMM libngd's own products run, with the same contract (A, B float32): small
// products by a plain loop, those with B transposed, 8 rows of C or more and a reduction of
// 256 or more by oneDNN's matmul primitive (faster there; outside a parallel region), the
// rest by dnnl_sgemm. Not counted.
NGD_API ngd_status ngd_f32_gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                                const float *A, size_t lda, const float *B, size_t ldb, float beta,
                                float *C, size_t ldc);
// A layer's forward, y = x Wᵀ + b, in one call: C = op(A)·op(B) + 1·biasᵀ (bias: n floats
// added to every row of C; NULL: none), C written, never read. The matmul primitive adds the
// bias in its kernel where it runs the product (at its own point of the sums: equal to
// float32 rounding, not bit for bit, to setting C's rows to the bias and adding the product);
// elsewhere the rows of C are set to the bias and the product added onto them. In f32 the
// primitive takes, with a bias, the products ngd_f32_gemm would plus those of a reduction of
// 32 to 255 (setting the rows and reading them back cost more there).
NGD_API ngd_status ngd_bf16_gemm_bias(bool ta, bool tb, size_t m, size_t n, size_t k,
                                      const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb,
                                      const float *bias, float *C, size_t ldc);
NGD_API ngd_status ngd_f32_gemm_bias(bool ta, bool tb, size_t m, size_t n, size_t k, const float *A,
                                     size_t lda, const float *B, size_t ldb, const float *bias,
                                     float *C, size_t ldc);

// ====== Configuration ======

// Stable values (stored in checkpoints).
typedef enum {
    NGD_METHOD_SGD = 0,
    NGD_METHOD_ADAMW = 1,
    NGD_METHOD_SINGD = 2,   // structured INGD; dense factors = INGD, kfac_like = IKFAC
    NGD_METHOD_KFAC = 3,    // K-FAC with eigendecomposition (docs/algorithms.md#k-fac)
    NGD_METHOD_RSKFAC = 4,  // randomized-SVD K-FAC (docs/algorithms.md#rs-kfac)
    NGD_METHOD_SREKFAC = 5, // symmetric randomized EVD K-FAC (docs/algorithms.md#sre-kfac)
    NGD_METHOD_BKFAC = 6,   // Brand-updated K-FAC (docs/algorithms.md#b-kfac)
    NGD_METHOD_BRKFAC = 7,  // Brand + periodic RSVD refresh (docs/algorithms.md#b-r-kfac)
    NGD_METHOD_BRCKFAC = 8, // B-R-KFAC + Rayleigh–Ritz correction (docs/algorithms.md#brc-kfac)
    NGD_METHOD_INGD = 9,    // alias: SINGD with dense factors (ngd_config_default presets it)
    NGD_METHOD_IKFAC = 10,  // alias: SINGD with kfac_like = true and alpha1 = 0
    NGD_METHOD_COUNT
} ngd_method;

// Kronecker-factor structures of SINGD (docs/algorithms.md#structures). Stable values.
typedef enum {
    NGD_STRUCT_DENSE = 0,
    NGD_STRUCT_DIAG = 1,
    NGD_STRUCT_BLOCKDIAG = 2, // block size: ngd_factor_spec.block (30 = official preset)
    NGD_STRUCT_HIER = 3,      // hierarchical: ngd_factor_spec.k1, k2 (15, 15)
    NGD_STRUCT_TRIL_TOEPLITZ = 4,
    NGD_STRUCT_TRIU_TOEPLITZ = 5,
    NGD_STRUCT_TRIL_TOPLEFT = 6,  // lower triangular, diagonal top-left, dense last row
    NGD_STRUCT_TRIL_BOTRIGHT = 7, // lower triangular, dense first column, diagonal bottom-right
    NGD_STRUCT_TRIU_TOPLEFT = 8,  // upper triangular, diagonal top-left, dense last column
    NGD_STRUCT_TRIU_BOTRIGHT = 9, // upper triangular, dense first row, diagonal bottom-right
    NGD_STRUCT_COUNT
} ngd_structure;

typedef enum {
    NGD_LOSS_SUM = 0,            // the loss is a sum over samples (and positions)
    NGD_LOSS_BATCH = 1,          // mean over the batch (sum over positions)
    NGD_LOSS_BATCH_SEQUENCE = 2, // mean over batch and positions
} ngd_loss_average;

typedef enum { NGD_KFAC_EXPAND = 0, NGD_KFAC_REDUCE = 1 } ngd_kfac_approx;

// One Kronecker factor's structure and parameters.
typedef struct {
    ngd_structure kind;
    size_t block;    // NGD_STRUCT_BLOCKDIAG block size (>= 1)
    size_t k1, k2;   // NGD_STRUCT_HIER MAX_K1, MAX_K2 (>= 1)
    ngd_dtype dtype; // storage dtype of the factor and its momentum (F32 or BF16)
} ngd_factor_spec;

// K-FAC family options (docs/algorithms.md#k-fac-family-options). Ignored by other methods.
typedef enum { NGD_KFAC_DAMP_EXACT_REL = 0, NGD_KFAC_DAMP_FACTORED_PI = 1 } ngd_kfac_damping;
typedef enum { NGD_CLIP_NONE = 0, NGD_CLIP_RMS = 1, NGD_CLIP_KL = 2 } ngd_clip;
typedef enum { NGD_TAIL_ZERO = 0, NGD_TAIL_MIN_KEPT = 1 } ngd_tail_model;
typedef enum { NGD_IDINIT_IN_DAMPING = 0, NGD_IDINIT_IN_FACTOR = 1 } ngd_identity_init;
typedef enum { NGD_BRAND_TRUNC_AFTER = 0, NGD_BRAND_TRUNC_BEFORE_NEXT = 1 } ngd_brand_truncate;

typedef struct {
    float rho;         // EA decay ρ (0.95)
    size_t T_u;        // statistics period (10)
    size_t T_i;        // inverse / RSVD refresh period (50)
    float damping_rel; // λ_rel (0.1)
    ngd_kfac_damping damping_kind;
    ngd_clip clip;    // per-layer RMS clip (default) or global KL clip
    float clip_kappa; // κ (0.07): RMS clip: each layer's preconditioned step is scaled down
                      // to an RMS per element of at most κ (before lr: a step of at most
                      // lr·κ per element in RMS); KL: Σ_l lr²·|⟨V_l, J_l⟩| at most κ
    size_t wd_start;  // decoupled weight decay starts at this step (200: 20·T_u at the
                      // default T_u, fixed, not recomputed from T_u)
    ngd_identity_init identity_init;
    float eig_zero_tol; // eigenvalues below this are set to 0 (1e-10)
    size_t rank;        // RSVD target rank r (220)
    size_t oversample;  // p (10)
    size_t power_iters; // q (4)
    ngd_tail_model tail;
    size_t brand_rank;   // r_B (0 = same as rank)
    size_t brand_mult;   // m_B (1)
    size_t refresh_mult; // m_BR (1)
    size_t corr_mult;    // m_C (5)
    float corr_frac;     // φ (0.2)
    ngd_brand_truncate brand_truncate;
    size_t reorth_every; // re-orthonormalise Brand bases every this many updates (50)
    bool factored_apply; // linear-cost FC application (docs/algorithms.md#factored-application;
                         // false): such a layer then wants statistics EVERY step, and its
                         // gradient is taken to be (1/n)𝒢ᵀ𝒜 of them (so: no L2 term in the
                         // loss, one observe per step). K-FAC: Q_Gᵀ J Q_A from the rows
                         // where that costs less (n (d_G² + d_A² + d_G d_A) < d_G d_A (d_G+d_A)).
                         // SINGD too (not only the K-FAC family): dense factors (f32, or
                         // bf16 under bf16 compute) give
                         // P = (1/n)(𝒢 C Cᵀ)ᵀ(𝒜 K Kᵀ) where that costs less, in one process
                         // (docs/algorithms.md#natural-gradient).
    uint64_t seed; // RNG seed for sketches and corrections
    // NGD_BF16: the factor averages (EA) are rounded to bf16 after every update (bf16 values
    // held in f32 storage, so the EVD / RSVD / Brand steps read them in f32/f64 with no
    // conversion pass; the state is not smaller). NGD_F32 (default): f32 averages.
    ngd_dtype ea_dtype;
    // Arithmetic of the factor path (docs/algorithms.md#bf16-factor-arithmetic). NGD_F32
    // (default): float32. NGD_BF16: emulated bf16 arithmetic, as a bf16 tensor program on a
    // GPU runs it — every OPERATION of the factor path takes bf16 operands and its result is
    // rounded to bf16 (nearest even); inside one operation the arithmetic is float32 (GEMMs
    // accumulate in f32, as bf16 tensor cores do). The factor path: the statistics rows and
    // their products (A, Γ), the exponential average (ρ·old, (1−ρ)/n·new and their sum, each
    // rounded), every GEMM, QR and SVD of the EVD / RSVD / SREVD / Brand / correction code,
    // each decomposition's outputs (eigenvalues and vectors rounded as they come out of the
    // f32 LAPACK call: no bf16 eigensolver exists on GPUs either), the damping additions and
    // every element-wise step of the preconditioning (the incoming gradient rounded, Q_Gᵀ J,
    // · Q_A, the denominators and the division, Q_G ·, · Q_Aᵀ; the low-rank application's
    // products and scalings). No float64 retry of a failed eigendecomposition: a failure is
    // counted in health (decomp_failures) and the previous decomposition kept. Every stored
    // factor quantity (EA, U, D) is then exactly bf16-representable (held in f32 storage), so
    // ea_dtype makes no difference under it.
    ngd_dtype factor_arith;
} ngd_kfac_options;

// Every hyper-parameter of every method. Fill with ngd_config_default(method), then edit.
// The same struct serves as a per-layer override (the "parameter group" of PyTorch):
// see ngd_layer.override.
typedef struct {
    ngd_method method;
    // shared by all methods
    float lr;           // β2, the parameter learning rate (SGD 1e-2, AdamW and SINGD 1e-3,
                        // K-FAC family 0.1)
    float momentum;     // α2 (SINGD 0.9; SGD, AdamW (unused) and K-FAC family 0)
    float weight_decay; // γ: coupled L2 for SINGD/SGD, decoupled for AdamW / K-FAC family
                        // (AdamW 1e-2, K-FAC family 7e-4 from kfac.wd_start, others 0)
    // SGD
    bool nesterov;
    // AdamW (PyTorch defaults)
    float beta1, beta2, eps;
    // SINGD / INGD / IKFAC (docs/algorithms.md#singd-options)
    float damping; // λ (1e-3), >= 0. SINGD only: the K-FAC family's is kfac.damping_rel
    float alpha1;  // Riemannian momentum in [0, 1) (0.5); forced to 0 with kfac_like
    size_t T;      // preconditioner update period (10)
    float lr_cov;  // β1 (1e-2) when lr_cov_fn is NULL
    float (*lr_cov_fn)(size_t step, void *user); // optional schedule step -> β1
    void *lr_cov_user;
    bool normalize_lr_cov;
    bool kfac_like; // IKFAC update rule
    ngd_loss_average loss_average;
    ngd_kfac_approx kfac_approx;
    // Per layer: give the layer an override (ngd_layer.override: a copy of this config with
    // other structures, T, lr, ...). Every field of an override applies to its layer except
    // those that stay the optimizer's: method (must match), skip_nonfinite, init_grad_scale,
    // log_fn/log_user; and the KL clip, which is global: under an optimizer with kfac.clip KL
    // an override may not change the clip or its κ, and under RMS or none it may not ask for
    // KL (both NGD_ERR_ARG); RMS or none and their κ are a layer's own.
    ngd_factor_spec structure_K; // input-side factor K (d_in(+1) square)
    ngd_factor_spec structure_C; // output-side factor C (d_out square)
    // Arithmetic of SINGD's factor path: NGD_F32 (default: bf16 factors are decoded and the
    // products are f32) or NGD_BF16: the products of observe, update and preconditioning
    // take bf16 operands (the stored K, C, momenta, the statistics, the gradient and the
    // cached K Kᵀ, C Cᵀ rounded to bf16) with f32 accumulation. NGD_BF16 needs both factors
    // stored in bf16; it applies where K and C are both dense (others compute in f32).
    ngd_dtype factor_compute;
    float init_grad_scale;         // SINGD: loss scale its step 0 statistics assume (1; s₋₁,
                                   // a range hint: any value gives the same step while
                                   // nothing overflows). The K-FAC family divides its rows by
                                   // the scale set when they are observed (1 before any)
    bool official_blockdiag_quirk; // reproduce the official block-diagonal transpose quirk
                                   // (docs/algorithms.md#block-diagonal); default: consistent math
    bool skip_nonfinite;           // skip the step (and discard pending statistics) when a gradient
                                   // is NaN/Inf (true)
    bool keep_last_update;         // retain each layer's preconditioned gradient for
                           // ngd_optim_last_update (costs one weight-sized buffer per layer),
                           // and SINGD's last momenta m_K, m_C even when alpha1 = 0
    // K-FAC family
    ngd_kfac_options kfac;
    // optional log callback (the library never prints)
    void (*log_fn)(void *user, const char *msg);
    void *log_user;
} ngd_config;

// All defaults of docs/algorithms.md#singd-options (SINGD/INGD/IKFAC), #k-fac-family-options (K-FAC
// family), and PyTorch's AdamW/SGD defaults (lr 1e-3, betas 0.9/0.999, eps 1e-8, wd 1e-2
// for AdamW; lr 1e-2, momentum 0 for SGD). Unknown methods get SGD's defaults.
NGD_API ngd_config ngd_config_default(ngd_method m);

// Checks a config; on error returns NGD_ERR_ARG and, if msg != NULL, writes a description
// naming the field into msg (at most cap bytes, NUL-terminated).
NGD_API ngd_status ngd_config_validate(const ngd_config *c, char *msg, size_t cap);

// Names for logs and the command line: "singd", "diagonal", ... NULL for out-of-range values.
NGD_API const char *ngd_method_name(ngd_method m);
NGD_API const char *ngd_structure_name(ngd_structure s);
// Parses the names above (and "block30diagonal", "hierarchical15_15", "triltoeplitz", ...
// as the official package spells them, which also set block / k1 / k2). NGD_ERR_ARG if
// unknown (*out unchanged). Structure names: dense, diagonal (diag), blockdiag (block,
// blockdiagonal: block 30), block<B>diagonal, hierarchical (hier: 15, 15),
// hierarchical<K1>_<K2>, triltoeplitz, triutoeplitz, tril_topleft_diag,
// tril_bottomright_diag, triu_topleft_diag, triu_bottomright_diag. ngd_structure_parse
// writes kind, block, k1 and k2 (block 30, k1 and k2 15 where the name sets none) and keeps
// out->dtype when it is NGD_BF16, else sets NGD_F32 (so an uninitialised spec comes out
// valid).
NGD_API ngd_status ngd_method_parse(const char *name, ngd_method *out);
NGD_API ngd_status ngd_structure_parse(const char *name, ngd_factor_spec *out);

// ====== Optimizer lifecycle ======

typedef struct ngd_optim ngd_optim; // opaque

// Creates an optimizer from a validated copy of *c (c may be freed afterwards).
// Returns NGD_ERR_ARG for a bad config (no handle is made; *out = NULL), NGD_ERR_NOMEM.
// Free with ngd_optim_free.
NGD_API ngd_status ngd_optim_create(const ngd_config *c, ngd_optim **out);

// Frees the optimizer and all its state. NULL is a no-op. Registered buffers are not freed.
NGD_API void ngd_optim_free(ngd_optim *o);

// Longest layer or parameter name, in bytes (checkpoints store the names)
#define NGD_NAME_MAX 255

// A Kronecker-factored layer (Linear or Conv2d). All buffers are borrowed: they must stay
// valid until ngd_optim_free; libngd never frees them.
typedef struct {
    const char *name;         // optional, copied (used in messages, health and checkpoints;
                              // at most NGD_NAME_MAX bytes)
    float *weight;            // d_out x d_in, row-major; updated in place by step
    const float *weight_grad; // d_out x d_in, read by step
    size_t d_out, d_in;
    float *bias;                // d_out, or NULL for a layer without bias
    const float *bias_grad;     // d_out, or NULL
    const ngd_config *override; // optional per-layer hyper-parameters (copied, validated;
                                // its method must equal the optimizer's)
} ngd_layer;

// Registers a layer; its id (0, 1, ...) is returned in *out_id. Allowed only before the
// first step. Errors: NGD_ERR_ARG (NULL, zero sizes, sizes that overflow, a factor side
// (d_out, or d_in plus the bias) above NGD_FACTOR_SIDE_MAX for a factored method, a name
// longer than NGD_NAME_MAX, bad override), NGD_ERR_STATE, NGD_ERR_NOMEM.
NGD_API ngd_status ngd_optim_add_layer(ngd_optim *o, const ngd_layer *l, int *out_id);
#define NGD_FACTOR_SIDE_MAX ((size_t)1 << 28) // the widest Kronecker factor side (2^28)

// Registers a parameter that is not Kronecker-factored (norm scales, embeddings, ...): it
// is updated by the AdamW rule under ADAMW, by the SGD rule under every other method (with
// the optimizer's lr, momentum, weight decay, or those of `override`, whose method is then
// the optimizer's). Under any method an override whose method is NGD_METHOD_ADAMW or
// NGD_METHOD_SGD gives the parameter that rule with the override's hyper-parameters (e.g.
// AdamW for the embeddings and norm scales of a transformer trained by SINGD). The override
// is copied and validated, as add_layer's. Buffers are borrowed. Ids share one sequence with
// layers. Errors as for add_layer.
NGD_API ngd_status ngd_optim_add_param(ngd_optim *o, const char *name, float *param,
                                       const float *grad, size_t n, const ngd_config *override,
                                       int *out_id);

// ====== Per-step calls ======

// Memory and failures. Every call is all-or-nothing: one that returns an error has changed
// neither the parameters nor the optimizer state (what ngd_optim_save would write, pending
// statistics included), so the same call can be retried. Memory is planned: each method
// states the workspace it needs (a work-size query, as LAPACK's lwork) and the optimizer
// allocates it all at the first observe or step after the last registration (again after a
// B-KFAC-family layer's first statistics decide its tracks, after ngd_optim_load, when an
// observe brings a layer more statistics rows per step than any before, and at a layer's
// first ngd_optim_observe_conv). Once the first step is done nothing else allocates, so
// NGD_ERR_NOMEM can come only from registration, from the calls of the first step, from a
// load, from an observe with more rows than any step before, or from a layer's first
// ngd_optim_observe_conv. A step checks everything that can fail (planning, missing statistics)
// before it changes anything, then does every layer's preconditioner maintenance, whose numerical
// failures are absorbed (the previous decomposition kept, counted in health) before any
// parameter changes. Exceptions: NGD_ERR_INTERNAL (a broken invariant of libngd) and a
// data-parallel communicator's failure leave the state undefined.

// True when the coming step will update a preconditioner, so the caller should pass
// statistics for every layer through ngd_optim_observe before ngd_optim_step: every T steps
// for SINGD, every kfac.T_u steps for the K-FAC family, and every step for a layer that
// may precondition from the step's rows (kfac.factored_apply: the K-FAC family's layers where
// the rows pay; SINGD's dense fully connected layers, whether or not this batch's rows pay);
// never for SGD and AdamW. The answer is the same for every micro-batch of a step.
NGD_API bool ngd_optim_wants_stats(const ngd_optim *o);
// The same question for one layer (layers may have different periods via override).
NGD_API bool ngd_optim_layer_wants_stats(const ngd_optim *o, int layer);

// Hands layer `layer` its inputs a (batch*R or batch rows, d_in columns) and output-gradients
// g (batch*R rows, d_out columns) for the coming step. Calls add up (several micro-batches,
// or a layer used several times per step). The matrices are borrowed for the call only.
// a and g may each be f32 or bf16 (ngd_matrix_bf16; ngd_bf16_encode rounds).
// Errors: NGD_ERR_LAYER, NGD_ERR_SHAPE, NGD_ERR_ARG (NULL data, batch 0, bad dtype),
// NGD_ERR_NOMEM (planning, see above); the state is unchanged on error. Ignored (NGD_OK) on
// steps that need no statistics.
NGD_API ngd_status ngd_optim_observe(ngd_optim *o, int layer, size_t batch, ngd_matrix a,
                                     ngd_matrix g);

// Sets the loss scale s_t that multiplied the loss in this step's backward pass (mixed
// precision; docs/algorithms.md#loss-scale). It stays until set again; 1 until first set
// (init_grad_scale is s₋₁ only: the scale SINGD's step 0 statistics assume).
// It may be called before or after the step's ngd_optim_observe calls (the pending statistics
// are rescaled to it). Training then equals unscaled training up to rounding (bit for bit
// where the scales are powers of two, in the tests) as long as the statistics' products stay
// in float32: SINGD squares the scaled g before it divides by the scale, so once
// σ²·s²/s_{t-1}·Σ_rows g² passes float32's range (for a batch mean of 512 rows at step 0 with
// init_grad_scale 1: from s·max|g| ≈ 2^56) its factor updates overflow and are refused
// (health's decomp_failures: the factors are kept, the step goes on); the K-FAC family, given the
// scale before its observes, divides the rows first. bf16 has float32's range and seldom needs a
// scale at all; cap a dynamic scaler's growth (at 2^32, say). Errors: NGD_ERR_ARG (not finite, or
// not > 0).
NGD_API ngd_status ngd_optim_set_grad_scale(ngd_optim *o, float scale);

// Gradient accumulation: each step's batch comes in m micro-batches of equal size, each with
// its own backward pass and one ngd_optim_observe per layer (m = 1, the default: each observe
// is a whole batch, or a layer's further use in the same batch). Every method then scales the
// statistics as for one observe of the whole batch (1/rows and the loss average's σ of m
// times each observe's batch), so that the step equals the whole batch's up to rounding when
// the gradient handed to the step is the whole batch's: each micro-batch's loss its mean
// divided by m (loss_average BATCH or BATCH_SEQUENCE), or its sum (SUM). So the caller zeroes
// the gradient buffers once a step and adds each micro-batch's gradient into them; each
// observe gets the micro-batch's size as `batch` and its `g` from that same divided loss.
// (Without the setting, SINGD's and INGD's steps still equal the whole batch's for mean losses
// divided by m; IKFAC's, the K-FAC family's and those of SUM losses do not.) Set it
// before the step's first observe (an observe after a change within a step is refused,
// NGD_ERR_STATE, naming both numbers); it stays until set again. It is a setting of the caller's
// loop, not state: ngd_optim_save does not write it and ngd_optim_load keeps the optimizer's own.
// Errors: NGD_ERR_ARG (m = 0 or above 2^32).
NGD_API ngd_status ngd_optim_set_micro_batches(ngd_optim *o, size_t m);
// The current setting (1 unless set; 0 for a NULL optimizer).
NGD_API size_t ngd_optim_micro_batches(const ngd_optim *o);

// Multiplies every learning rate (β2: the optimizer's, the overrides' and the parameters')
// by `scale` from the next ngd_optim_step on, until set again (for schedules: the scale is
// absolute, not compounded; 1 until first set; saved in checkpoints). SINGD's factor step β1
// is not scaled (lr_cov_fn schedules it). Errors: NGD_ERR_ARG (a scale below 0 or not
// finite; 0 is allowed).
NGD_API ngd_status ngd_optim_set_lr_scale(ngd_optim *o, float scale);

// Performs one step: preconditioner updates where due, preconditioning, weight decay,
// momentum and the parameter update of every registered layer and parameter. If a
// gradient is non-finite (and skip_nonfinite), nothing is updated, pending statistics are
// discarded, the skip is counted and NGD_SKIPPED is returned; the step counter advances
// either way. Errors: NGD_ERR_STATE (an update step where a layer got no statistics),
// NGD_ERR_NOMEM (first step only, or the first after a load: buffers are planned then),
// NGD_ERR_ARG (lr_cov_fn returned a value that is not finite and >= 0). On an error nothing
// changed (all-or-nothing, above); retry the step. A save between a step's observe and the
// step keeps its pending statistics, but not the rows that SINGD's kfac.factored_apply keeps
// to precondition from: after a load that step preconditions through Ĝ (equal up to
// rounding, not bit for bit; ngd train saves between steps, where nothing is pending).
NGD_API ngd_status ngd_optim_step(ngd_optim *o);

// The coming step leaves entry `id` (a layer or a parameter) as it is, as torch.optim skips a
// parameter whose gradient is None (a frozen one): its weights and state stay, its gradient is
// not read (not for the non-finite check either), it needs no statistics (those observed for
// this step are discarded), its preconditioner is not maintained (an update or refresh due at
// this step waits for the next one due) and its count of applied updates (AdamW's bias
// correction) does not advance. Applies to the next ngd_optim_step that steps or skips
// (NGD_OK, NGD_SKIPPED); one that fails changes nothing, this included, for its retry.
// Errors: NGD_ERR_LAYER (unknown id), NGD_ERR_STATE (a data-parallel run: every rank would
// have to skip alike).
NGD_API ngd_status ngd_optim_skip(ngd_optim *o, int id);

// Number of completed steps.
NGD_API size_t ngd_optim_steps(const ngd_optim *o);

// ====== Data-parallel training (docs/distributed.md) ======

// A communicator between the N processes ("ranks") of a data-parallel run, supplied by the
// caller (the `ngd` command's is MPI; libngd itself knows no transport; examples/
// 04_data_parallel.c has one over threads). A single process never needs one. Every rank calls
// the callbacks in the same order with the same sizes (they are collectives); each returns
// NGD_OK, or an error that makes the step fail. libngd calls them only from ngd_optim_step, on
// the thread that called it, one at a time. A failed callback leaves the other ranks waiting
// in that collective or the next: the communicator must release them (the `ngd` command calls
// MPI_Abort); the handle may still be freed.
typedef struct {
    int rank, size; // this process's rank in [0, size), and the number of ranks
    void *ctx;      // passed to every callback
    // buf[0..n) := the element-wise sum of every rank's buf (the same result on every rank)
    ngd_status (*allreduce_sum)(void *ctx, float *buf, size_t n);
    // every rank's buf[0..bytes) := root's
    ngd_status (*broadcast)(void *ctx, void *buf, size_t bytes, int root);
    // in place: rank r's block buf[r*bytes .. (r+1)*bytes) is sent to every rank; afterwards
    // every rank holds all `size` blocks in rank order
    ngd_status (*allgather)(void *ctx, void *buf, size_t bytes);
} ngd_comm;

// How the ranks share a layer's preconditioner maintenance (factor updates, decompositions).
typedef enum {
    NGD_SHARE_AUTO = 0,      // per method and structure (docs/distributed.md): owner where the
                             // work per stored number is large, replicated where it is not
    NGD_SHARE_REPLICATE = 1, // every rank does every layer's work on the combined statistics
    NGD_SHARE_OWNER = 2,     // one owner rank per layer (largest cost first to the least-loaded
                             // rank) does it and broadcasts the result
} ngd_share;

// Makes o one of comm->size data-parallel replicas (call it on every rank, before the first
// step, with the same config, the same layers registered and the same `share` everywhere:
// ranks that differ call other collectives). Each rank then observes the statistics of its
// own shard of the global batch, as a single process would its batch (`batch` = the shard's
// rows, g from the shard's own loss: its mean over the shard for loss_average BATCH);
// ngd_optim_step combines them so that every rank applies the update of single-process
// training on the global batch (up to the order of float32 sums). The caller averages the
// gradients (sums them for loss_average SUM) across ranks before ngd_optim_step, and gives
// every rank the same number of rows. Replicated work must give every rank the same bits:
// under NGD_SHARE_REPLICATE the K-FAC family's decompositions round by the thread count, so
// its ranks need the same number of threads (owned work is broadcast; SINGD's replicated
// work rounds alike at any thread count). comm is copied;
// NULL or size 1 is a single process. Errors: NGD_ERR_ARG (a size below 1, a rank outside
// it, a NULL callback), NGD_ERR_STATE (after a step).
NGD_API ngd_status ngd_optim_set_comm(ngd_optim *o, const ngd_comm *comm, ngd_share share);

// Bytes this rank handed to the communicator's callbacks so far (allreduce and allgather: its
// contribution; broadcast: counted at the root only), and the rank that owns layer `id`'s
// preconditioner work (-1: replicated on every rank, or a parameter, or not yet planned:
// owners are chosen at the first statistics step).
NGD_API uint64_t ngd_optim_comm_bytes(const ngd_optim *o);
NGD_API int ngd_optim_layer_owner(const ngd_optim *o, int id);

// ====== Health and introspection ======

typedef struct {
    const char *name;       // the layer's name (owned by the optimizer)
    size_t updates;         // steps that updated the layer's preconditioner: SINGD's factor
                            // updates (every T), the K-FAC family's steps that folded in
                            // statistics or refreshed a decomposition (every T_u, T_i);
                            // 0 for parameters
    size_t skips;           // steps skipped because of non-finite values
    size_t decomp_failures; // preconditioner updates refused, the last good one kept: the
                            // K-FAC family's failed decompositions and its steps of
                            // non-finite statistics (not averaged), SINGD's factor updates
                            // from non-finite statistics; and steps whose preconditioned
                            // gradient was not finite in some rows while the gradient was
                            // (a factor that overflowed): those rows took the plain gradient,
                            // and SINGD's factors restarted from K = C = I
    size_t decomp_retries;  // K-FAC family: float32 failures retried in float64
    float trace_K, trace_C; // SINGD: avg trace of K Kᵀ-side factors; K-FAC: of the factors
    float norm_K, norm_C;   // Frobenius norms of K and C (SINGD) / of the factors
    float grad_norm;        // ‖Ĝ‖_F of the last step (Inf/NaN when it was skipped)
    float update_norm;      // ‖preconditioned update‖_F of the last step (for a parameter,
                            // which is not preconditioned, its gradient's; after the K-FAC
                            // family's clip ν)
    float beta1_K, beta1_C; // SINGD: step sizes of the last factor update
    size_t rank_A, rank_G;  // low-rank methods: ranks kept
    size_t state_bytes;     // persistent optimizer bytes of this layer
    // wall time of the last call of each phase, in seconds (monotonic clock): folding
    // statistics in (observe, summed over the calls of one step), preconditioner maintenance
    // (factor updates, decompositions; 0 on steps without any), and preconditioning the
    // gradient. For benchmarks; not saved in checkpoints.
    double time_observe, time_update, time_precond;
} ngd_layer_health;

// Fills *out for layer/param id `id`. Errors: NGD_ERR_LAYER, NGD_ERR_ARG.
NGD_API ngd_status ngd_optim_layer_health(const ngd_optim *o, int id, ngd_layer_health *out);

// Number of registered layers + params (ids are 0 .. count-1).
NGD_API size_t ngd_optim_count(const ngd_optim *o);

// Total persistent optimizer-state bytes (factors, momenta, buffers), planned workspaces
// excluded; and the planned workspace bytes (the shared gradient buffers, every method's
// scratch from its work-size query, the KL clip's per-layer buffers, SINGD's cached factor
// products, bf16 scratch and kept rows; before planning, only what registration allocated:
// SINGD's cached K Kᵀ and C Cᵀ).
NGD_API size_t ngd_optim_state_bytes(const ngd_optim *o);
NGD_API size_t ngd_optim_workspace_bytes(const ngd_optim *o);
// Wall time in seconds of the last ngd_optim_step's preconditioner maintenance over all
// layers (the layers' time_update overlap where their updates ran side by side; 0 before
// any step). For benchmarks.
NGD_API double ngd_optim_update_time(const ngd_optim *o);

// Copies the dense d x d form of a layer's factor into out (row-major, d*d floats). SINGD
// methods: which = 'K', 'C', 'k' (m_K), 'c' (m_C). The K-FAC family: 'K' the input side's
// Kronecker factor as averaged (where a dense average is kept, else as 'k'), 'C' the output
// side's; 'k' and 'c' their kept eigen-representation U D Uᵀ (rank r for the low-rank
// methods; the same as 'K' and 'C' up to rounding for K-FAC's full decomposition); all
// NGD_ERR_STATE before the layer's first statistics. For inspection and tests; d is d_in+bias
// or d_out. Errors: NGD_ERR_LAYER, NGD_ERR_STATE, NGD_ERR_ARG (a method without factors, SGD
// or AdamW; an unknown factor; SINGD's momentum where it is not kept).
NGD_API ngd_status ngd_optim_factor_dense(const ngd_optim *o, int layer, char which, float *out,
                                          size_t d);

// The preconditioned gradient of the last step for a layer (before the K-FAC family's clip
// ν, weight decay and momentum: health's update_norm is after the clip), d_out x (d_in+bias)
// row-major, n = d_out*(d_in+bias) floats. Needs cfg.keep_last_update. Errors: NGD_ERR_LAYER,
// NGD_ERR_ARG (n wrong), NGD_ERR_STATE.
NGD_API ngd_status ngd_optim_last_update(const ngd_optim *o, int layer, float *out, size_t n);

// The message of the last failed call on this handle ("" if none); a call that succeeds
// leaves it as it was, so read it right after the failure. Owned by the handle, valid until
// the next call on it.
NGD_API const char *ngd_optim_errmsg(const ngd_optim *o);

// ====== Convolution helpers ======

typedef struct {
    size_t c_in, h, w; // input channels and size
    size_t k1, k2;     // kernel
    size_t s1, s2;     // stride (>= 1)
    size_t p1, p2;     // zero padding
    size_t dil1, dil2; // dilation (>= 1)
    size_t groups;     // >= 1, divides c_in
} ngd_conv_geom;

// Every field must be set: stride, dilation and groups have no zero default (1 for a plain
// convolution).

// Output size; 0 on an invalid geometry (groups not dividing c_in, no output pixel, or any
// of c_in, h, w, k, stride, padding, dilation above 2^30, whose sums could wrap).
NGD_API size_t ngd_conv_out_h(const ngd_conv_geom *g);
NGD_API size_t ngd_conv_out_w(const ngd_conv_geom *g);

// im2col for K-FAC statistics (docs/algorithms.md#conv2d-inputs): x is [batch, c_in, h, w];
// channels are first averaged over the groups, then unfolded into out, batch*oh*ow rows ordered
// (n, o1, o2), (c_in/groups)*k1*k2 columns ordered (c, k1, k2): out holds batch*oh*ow*
// (c_in/groups)*k1*k2 floats. If `reduce`, out instead holds the mean over the oh*ow
// locations: batch rows. Errors: NGD_ERR_ARG.
NGD_API ngd_status ngd_unfold(const ngd_conv_geom *g, size_t batch, const float *x, bool reduce,
                              float *out);

// A convolution's statistics from its input images, without its unfolded matrix: the same as
// ngd_optim_observe(o, layer, batch, a, g) with a = ngd_unfold(geom, batch, x) (batch*oh*ow
// rows), whose batch*oh*ow x d_in floats (151 MB for 32 channels of 32x32 at batch 128) are
// never formed: libngd unfolds the rows a block at a time as it reads them. x: batch rows
// (samples) of c_in*h*w values ([c_in, h, w] each, ld >= c_in*h*w), f32 or bf16; g as for
// ngd_optim_observe: batch*oh*ow rows ordered (n, o1, o2) of d_out values (the NCHW output
// gradient transposed to (n o1 o2) x C_out). Ignored (NGD_OK) on steps that need no
// statistics, as ngd_optim_observe. The results equal ngd_optim_observe's up to
// float32 rounding (sums taken in blocks). A layer's first call plans the workspace again (a
// block of about 16 MB for its rows): NGD_ERR_NOMEM can come from it. Errors: as
// ngd_optim_observe, and NGD_ERR_ARG (NULL geometry or data, an invalid geometry),
// NGD_ERR_SHAPE (x not batch x c_in*h*w, the geometry's (c_in/groups)*k1*k2 not the layer's
// d_in, g not batch*oh*ow rows).
NGD_API ngd_status ngd_optim_observe_conv(ngd_optim *o, int layer, size_t batch,
                                          const ngd_conv_geom *geom, ngd_matrix x, ngd_matrix g);

// ====== Checkpoints ======

// Saves the complete optimizer state (steps, grad scales, factors, momenta, pending
// statistics, moment buffers, RNG). Versioned little-endian format (docs/formats.md),
// written atomically: temporary file, fsync, rename; streamed through a 1 MiB buffer (no copy
// of the state in memory). Parameters are not saved (they belong to the caller). path must be
// absent or a regular file: the rename would replace anything else (a FIFO, a device node, a
// symbolic link rather than its target, a folder), which is refused. Errors: NGD_ERR_IO (path
// named in the message).
NGD_API ngd_status ngd_optim_save(const ngd_optim *o, const char *path);

// Loads a state saved by ngd_optim_save into an optimizer with the same method and the same
// registered layers/params (names, shapes, structures). Validates magic, version, shapes
// and length; on any error the optimizer is unchanged and the message names what is wrong.
// Hyper-parameters are not in the file: the loading optimizer's config applies from then on.
// The optimizer may have stepped already: its state (step count included) is replaced.
// Errors: NGD_ERR_IO, NGD_ERR_FORMAT, NGD_ERR_NOMEM, NGD_ERR_ARG (a NULL path).
NGD_API ngd_status ngd_optim_load(ngd_optim *o, const char *path);

// The same state as ngd_optim_save, into a buffer that the caller frees with free():
// for embedding the optimizer in a larger file (e.g. with the model). On an error *buf and
// *len are left as they were. Errors: NGD_ERR_NOMEM, NGD_ERR_ARG (NULL o, buf or len).
NGD_API ngd_status ngd_optim_save_mem(const ngd_optim *o, void **buf, size_t *len);
// Loads a buffer written by ngd_optim_save_mem, with the validation of ngd_optim_load.
// Errors: NGD_ERR_FORMAT, NGD_ERR_NOMEM, NGD_ERR_ARG (a NULL buffer).
NGD_API ngd_status ngd_optim_load_mem(ngd_optim *o, const void *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
