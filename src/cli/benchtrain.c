/*
 * benchtrain.c — `ngd bench train`: whole training steps of the engine's models, as
 * `ngd train` runs them, on synthetic data of the real shapes (no data set needed).
 *
 * A step is what the training loop does: draw a batch (uint8 pixels -> normalized floats,
 * or random text windows), forward + loss, backward, the statistics of the Kronecker-factored
 * layers when libngd wants them (observe), and ngd_optim_step, which the per-layer health
 * splits into preconditioner maintenance (factor updates, decompositions), preconditioning,
 * and the rest (the first-order rule: weight decay, momentum, the update). Each configuration
 * runs in its own process (fork), so its peak RSS is its own; it measures the machine's sgemm
 * rate (oneDNN, the best of 960³, 1024³ and 1536³) just before, so every ratio comes from one
 * run. Reported: mean ms per
 * step over whole preconditioner periods (T for SINGD, T_i for the K-FAC family) after the
 * warm-up, the median, the phase split, samples/s, the GEMM FLOPs of forward+backward
 * (counted at the engine's GEMM door) and of the optimizer (libngd's), achieved GFLOP/s and
 * the step's floor (its FLOPs at the sgemm rate). Speed is measured here, never in the tests.
 */
#define _DEFAULT_SOURCE // wait4: the child's own peak RSS
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cli.h"
#include "data.h"
#include "model.h"
#include "ngd.h"

// ---- options ----
enum {
    B_MODEL = 256,
    B_OPTIM,
    B_STRUCT,
    B_DATA,
    B_BATCH,
    B_CONTEXT,
    B_WIDTHS,
    B_STEPS,
    B_WARMUP,
    B_T,
    B_TU,
    B_TI,
    B_FACTORED,
    B_NOFACTORED,
    B_KDAMP,
    B_THREADS,
    B_JSON,
    B_POPTIM,
    B_MOM,
    B_PREC,
    B_REPEATS,
    B_HELP
};

static const cli_opt BT_OPTS[] = {
    {"model", 1, B_MODEL, "LIST",
     "models, comma-separated (default mlp,cnn): mlp, cnn, vit, "
     "chargpt, vgg16bn"},
    {"optim", 1, B_OPTIM, "LIST", "methods (default sgd,adamw,singd): any of ngd train --optim"},
    {"structure", 1, B_STRUCT, "LIST",
     "SINGD/IKFAC structures, each a configuration (default dense,diagonal; INGD: "
     "dense only, as ngd train)"},
    {"data", 1, B_DATA, "NAME",
     "image shape: fashion-mnist (1x28x28, 10 classes) or cifar100 "
     "(3x32x32, 100); default: fashion-mnist for mlp, cifar100 else"},
    {"batch", 1, B_BATCH, "N", "batch size (128; text: sequences)"},
    {"context", 1, B_CONTEXT, "T", "context length of chargpt (64; vocabulary 65)"},
    {"widths", 1, B_WIDTHS, "W1,W2,..",
     "model widths as ngd train --widths (default: the model's)"},
    {"steps", 1, B_STEPS, "N",
     "timed steps, rounded up to whole preconditioner periods (30; at most 1000000)"},
    {"warmup", 1, B_WARMUP, "N", "untimed steps first (10; 1 to 1000000)"},
    {"T", 1, B_T, "N", "SINGD preconditioner update period (10)"},
    {"T-u", 1, B_TU, "N", "K-FAC family statistics period T_u (the method's default, 10)"},
    {"T-i", 1, B_TI, "N", "K-FAC family inverse / refresh period T_i (the method's default, 50)"},
    {"factored", 0, B_FACTORED, NULL,
     "K-FAC family and SINGD: the factored application, as ngd train --factored (statistics "
     "rows every step; the default of the K-FAC family and of SINGD's dense factors, as in "
     "ngd train)"},
    {"no-factored", 0, B_NOFACTORED, NULL, "from the gradient, as ngd train --no-factored"},
    {"kfac-damping", 1, B_KDAMP, "KIND",
     "K-FAC's damping, as ngd train --kfac-damping: exact (default) or pi"},
    {"momentum", 1, B_MOM, "X", "SGD momentum (default: the method's, 0)"},
    {"threads", 1, B_THREADS, "N",
     "OpenMP threads, 1 to 1024 (default: OMP_NUM_THREADS or all cores)"},
    {"param-optim", 1, B_POPTIM, "NAME",
     "rule of plain parameters (norm scales, embeddings) "
     "under second-order methods: method (default) or "
     "adamw (lr 1e-3)"},
    {"precision", 1, B_PREC, "LIST",
     "f32 (default), bf16, or f32,bf16: each configuration in each "
     "(bf16 as ngd train --precision bf16)"},
    {"repeats", 1, B_REPEATS, "N",
     "run the whole list N times, interleaved (1); with f32,bf16 it ends with each "
     "configuration's median f32/bf16 step-time ratio"},
    {"json", 0, B_JSON, NULL, "one JSON line per configuration instead of the table"},
    {"help", 0, B_HELP, NULL, "this text"},
};
#define BT_NOPTS (sizeof BT_OPTS / sizeof BT_OPTS[0])

#define BT_MAX 64 // configurations per run
// bounds of the counts (a benchmark of more steps, or of a longer period, is not one of minutes)
#define BT_STEPS_MAX        1000000
#define BT_PERIOD_MAX       1000000
#define BT_THREADS_MAX      1024
#define BT_TEXT_VOCAB       65
#define BT_TEXT_LEN         200000
#define BT_IMAGES_PER_BATCH 4 // synthetic set: this many batches of images

typedef struct {
    const char *model;
    bool cifar, text;
    ngd_method method;
    char structure[40]; // "" for methods without one
    bool bf16;          // --precision bf16
} bt_cfg;

typedef struct {
    size_t batch, context, steps, warmup, T, T_u, T_i, nwidths; // T_u, T_i: 0 = default
    size_t widths[NN_MODEL_MAX_WIDTHS];
    const char *data;
    bool json, param_adamw, kfac_pi;
    int factored;   // --factored 1, --no-factored 0, neither -1 (as ngd train: the K-FAC family's)
    float momentum; // < 0: the method's default
} bt_opts;

// What a child sends back: all times in seconds per timed step (means), plus the median.
typedef struct {
    int ok;
    char err[200];
    size_t steps, period, params;
    double mean, median, data, fwd, bwd, obs, upd, prec, rule;
    double cpu; // CPU time of the process per timed step (all its threads): on a loaded
                // machine with --threads 1 a steadier measure of the work than wall time
    double fb_flops, opt_flops; // per step
    double sgemm_gflops;
    size_t state_bytes;
    int threads;  // the child's OpenMP thread count
    long hwm_kib; // the child's peak RSS after the sgemm measurement (VmHWM); 0: not known
} bt_result;

static bool is_singd(ngd_method m) {
    return m == NGD_METHOD_SINGD || m == NGD_METHOD_INGD || m == NGD_METHOD_IKFAC;
}
static bool is_kfac(ngd_method m) { return m >= NGD_METHOD_KFAC && m <= NGD_METHOD_BRCKFAC; }
// kfac.factored_apply of a row: as given, else ngd train's default
static bool bt_factored(const bt_cfg *c, const bt_opts *o) {
    if (o->factored >= 0) return o->factored == 1;
    ngd_factor_spec f = {.kind = NGD_STRUCT_DENSE}; // (no structure column: dense, as ingd's)
    if (c->structure[0] && ngd_structure_parse(c->structure, &f) != NGD_OK) return false;
    return cli_factored_default(c->method, f.kind, f.kind);
}

// Synthetic data of the real shapes: random pixels and labels, or random text.
typedef struct {
    nn_dataset ds;
    nn_loader ld;
    nn_text text;
    nn_rng rng;
} bt_data;

static int data_init(bt_data *d, const bt_cfg *c, const bt_opts *o, char *err, size_t cap) {
    memset(d, 0, sizeof *d);
    nn_rng_seed(&d->rng, 7);
    if (c->text) {
        char *buf = malloc(BT_TEXT_LEN);
        if (!buf) return snprintf(err, cap, "out of memory"), -1;
        for (size_t i = 0; i < BT_TEXT_LEN; i++)
            buf[i] = (char)(' ' + (int)nn_rng_below(&d->rng, BT_TEXT_VOCAB));
        nn_status s = nn_text_from_memory(&d->text, buf, BT_TEXT_LEN, 0.1f, err, cap);
        free(buf);
        return s == NN_OK ? 0 : -1;
    }
    nn_dataset *ds = &d->ds;
    ds->n = BT_IMAGES_PER_BATCH * o->batch;
    ds->c = c->cifar ? 3 : 1, ds->h = ds->w = c->cifar ? 32 : 28;
    ds->num_classes = c->cifar ? 100 : 10;
    ds->pixels = nn_malloc(nn_mul(ds->n, ds->c * ds->h * ds->w), 1);
    ds->labels = nn_malloc(ds->n, sizeof(int32_t));
    if (!ds->pixels || !ds->labels) return snprintf(err, cap, "out of memory"), -1;
    for (size_t i = 0; i < ds->n * ds->c * ds->h * ds->w; i++)
        ds->pixels[i] = (uint8_t)nn_rng_below(&d->rng, 256);
    for (size_t i = 0; i < ds->n; i++)
        ds->labels[i] = (int32_t)nn_rng_below(&d->rng, ds->num_classes);
    nn_dataset_compute_norm(ds);
    if (nn_loader_init(&d->ld, ds, o->batch, true, true, NULL, 1) != NN_OK)
        return snprintf(err, cap, "out of memory"), -1;
    return 0;
}

static void data_free(bt_data *d) {
    nn_loader_free(&d->ld);
    nn_dataset_free(&d->ds);
    nn_text_free(&d->text);
}

static size_t period_of(const ngd_config *cfg) {
    if (is_singd(cfg->method)) return cfg->T;
    if (is_kfac(cfg->method)) { // whole refresh periods (T_i is a multiple of T_u by default)
        size_t a = cfg->kfac.T_u, b = cfg->kfac.T_i;
        while (b) {
            size_t r = a % b;
            a = b, b = r;
        }
        return cfg->kfac.T_u / a * cfg->kfac.T_i;
    }
    return 1;
}

static double cpu_now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// The process's peak RSS (VmHWM) is reset to its current RSS by writing 5 to
// /proc/self/clear_refs (Linux 4.0+); where that is refused, hwm_kib returns 0 and the
// caller takes wait4's peak (the sgemm buffers included).
static bool hwm_was_reset;
static void hwm_reset(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    hwm_was_reset = f && fputs("5", f) >= 0;
    if (f && fclose(f) != 0) hwm_was_reset = false;
}
static long hwm_kib(void) {
    if (!hwm_was_reset) return 0;
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1) break;
    if (f) fclose(f);
    return kib;
}

// One configuration, in the child process.
// The model configuration of c with o's widths for batches of max_batch; classes: the text's
// vocabulary (text models) or 0 for the image shape's
static nn_model_cfg model_cfg(const bt_cfg *c, const bt_opts *o, size_t max_batch, size_t classes) {
    nn_model_cfg mc = {.name = c->model, .max_batch = max_batch, .seed = 1};
    if (c->text)
        mc.in_c = 1, mc.in_h = o->context, mc.in_w = 1, mc.classes = classes;
    else
        mc.in_c = c->cifar ? 3 : 1, mc.in_h = mc.in_w = c->cifar ? 32 : 28,
        mc.classes = c->cifar ? 100 : 10;
    memcpy(mc.widths, o->widths, sizeof mc.widths);
    mc.nwidths = o->nwidths;
    mc.no_stats = c->method == NGD_METHOD_SGD || c->method == NGD_METHOD_ADAMW; // as ngd train
    mc.bf16 = c->bf16;
    return mc;
}

// NN_ERR_ARG (err says why) for widths the model of c refuses (made one sample wide)
static nn_status check_widths(const bt_cfg *c, const bt_opts *o, char *err, size_t cap) {
    const nn_model_cfg mc = model_cfg(c, o, 1, BT_TEXT_VOCAB);
    nn_model m;
    const nn_status s = nn_model_create(&m, &mc, err, cap);
    if (s == NN_OK) nn_model_free(&m);
    return s == NN_ERR_ARG ? s : NN_OK; // (out of memory: the child says so)
}

static void run_one(const bt_cfg *c, const bt_opts *o, bt_result *r) {
    memset(r, 0, sizeof *r);
#ifdef _OPENMP
    r->threads = omp_get_max_threads();
#else
    r->threads = 1;
#endif
    // The best of three squares: oneDNN's 2-thread sgemm at exactly 1024³ ran at 240-255
    // GFLOP/s on an AMD Zen 5 whose 960³ and 1536³ ran at 395-410 (a power-of-two stride), so
    // 1024³ alone made every %sgemm and floor look better than they were there
    const size_t sq[3] = {960, 1024, 1536};
    for (int i = 0; i < 3; i++) {
        const double g = bench_sgemm_gflops(sq[i], sq[i], sq[i]);
        if (g > r->sgemm_gflops) r->sgemm_gflops = g;
    }
    hwm_reset(); // the peak RSS is the configuration's, not the sgemm buffers' (freed now)
    bt_data d;
    nn_model m;
    memset(&m, 0, sizeof m);
    ngd_optim *opt = NULL;
    float *x = NULL, *dlogits = NULL;
    int32_t *ids = NULL, *y = NULL;
    double *tot = NULL;
    if (data_init(&d, c, o, r->err, sizeof r->err)) goto done;
    const nn_model_cfg mc = model_cfg(c, o, o->batch, c->text ? d.text.vocab : 0);
    if (nn_model_create(&m, &mc, r->err, sizeof r->err) != NN_OK) goto done;
    if ((m.ops->forward_tokens != NULL) != c->text) {
        snprintf(r->err, sizeof r->err, "%s", c->text ? "not a token model" : "a token model");
        goto done;
    }
    ngd_config cfg = ngd_config_default(c->method), pcfg = ngd_config_default(NGD_METHOD_ADAMW);
    if (c->structure[0]) {
        ngd_dtype keep = cfg.structure_K.dtype;
        ngd_structure_parse(c->structure, &cfg.structure_K);
        cfg.structure_C = cfg.structure_K;
        cfg.structure_K.dtype = cfg.structure_C.dtype = keep;
    }
    if (is_singd(c->method)) cfg.T = o->T, cfg.lr = 3e-3f, cfg.damping = 1e-2f;
    if (is_kfac(c->method) && o->T_u) cfg.kfac.T_u = o->T_u;
    if (is_kfac(c->method) && o->T_i) cfg.kfac.T_i = o->T_i;
    if (is_kfac(c->method) || is_singd(c->method)) cfg.kfac.factored_apply = bt_factored(c, o);
    if (c->method == NGD_METHOD_KFAC && o->kfac_pi)
        cfg.kfac.damping_kind = NGD_KFAC_DAMP_FACTORED_PI;
    if (c->bf16) // as ngd train --precision bf16: SINGD's factors stored and computed in bf16
        cfg.structure_K.dtype = cfg.structure_C.dtype = cfg.factor_compute = cfg.kfac.ea_dtype =
            NGD_BF16;
    if (c->method == NGD_METHOD_SGD && o->momentum >= 0) cfg.momentum = o->momentum;
    if (c->text) cfg.loss_average = NGD_LOSS_BATCH_SEQUENCE;
    pcfg.lr = 1e-3f, pcfg.weight_decay = 0;
    m.param_override =
        o->param_adamw && c->method != NGD_METHOD_SGD && c->method != NGD_METHOD_ADAMW ? &pcfg
                                                                                       : NULL;
    if (ngd_optim_create(&cfg, &opt) != NGD_OK || m.ops->attach(&m, opt) != NGD_OK) {
        snprintf(r->err, sizeof r->err, "optimizer: %s", ngd_optim_errmsg(opt));
        goto done;
    }
    r->params = nn_model_param_count(&m);
    const size_t rows = c->text ? o->context : 1;
    if (c->text)
        ids = malloc(o->batch * o->context * sizeof *ids);
    else
        x = nn_malloc(nn_mul(o->batch, d.ds.c * d.ds.h * d.ds.w), sizeof *x);
    y = malloc(o->batch * rows * sizeof *y);
    dlogits = nn_malloc(nn_mul(o->batch * rows, m.cfg.classes), sizeof *dlogits);
    r->period = period_of(&cfg);
    if (r->period > BT_PERIOD_MAX) { // (an RS/B-KFAC period is a multiple of T-u and T-i)
        snprintf(r->err, sizeof r->err,
                 "a preconditioner period of %zu steps (the lcm of --T-u and --T-i): at most %d",
                 r->period, BT_PERIOD_MAX);
        goto done;
    }
    r->steps = (o->steps + r->period - 1) / r->period * r->period; // (both <= 10^6)
    if (r->steps > 2 * o->steps) // (a long period: say why the run takes so long)
        fprintf(stderr,
                "ngd bench train: note: --steps %zu rounded up to %zu, whole preconditioner "
                "periods of %zu steps\n",
                o->steps, r->steps, r->period);
    tot = malloc(r->steps * sizeof *tot);
    if (!(x || ids) || !y || !dlogits || !tot) {
        snprintf(r->err, sizeof r->err, "out of memory");
        goto done;
    }
    const size_t nid = ngd_optim_count(opt), nr = o->batch * rows;
    uint64_t opt_f0 = 0;
    double cpu0 = 0;
    for (size_t s = 0; s < o->warmup + r->steps; s++) {
        const bool timed = s >= o->warmup;
        if (s == o->warmup) opt_f0 = ngd_gemm_flop_count(), cpu0 = cpu_now_s();
        double t0 = bench_now_s();
        if (c->text)
            nn_text_batch(&d.text, NN_SPLIT_TRAIN, o->batch, o->context, &d.rng, ids, y);
        else if (!nn_loader_next(&d.ld, x, y))
            nn_loader_next(&d.ld, x, y);
        double t1 = bench_now_s();
        uint64_t f0 = nn_flop_count();
        nn_model_zero_grad(&m);
        if (c->text)
            m.ops->forward_tokens(&m, ids, o->batch, o->context, true);
        else
            m.ops->forward(&m, x, o->batch, true);
        nn_xent_forward(m.logits, y, nr, m.cfg.classes, 0.0f, 1.0f, dlogits);
        double t2 = bench_now_s();
        m.ops->backward(&m, dlogits);
        double t3 = bench_now_s();
        if (s == 0) r->fb_flops = (double)(nn_flop_count() - f0);
        if (ngd_optim_wants_stats(opt) && m.ops->observe(&m, opt) != NGD_OK) {
            snprintf(r->err, sizeof r->err, "observe: %s", ngd_optim_errmsg(opt));
            goto done;
        }
        double t4 = bench_now_s();
        ngd_status st = ngd_optim_step(opt);
        double t5 = bench_now_s();
        if (st != NGD_OK && st != NGD_SKIPPED) {
            snprintf(r->err, sizeof r->err, "step: %s", ngd_optim_errmsg(opt));
            goto done;
        }
        if (!timed) continue;
        double upd = ngd_optim_update_time(opt), prec = 0; // (layers' updates may overlap)
        for (size_t i = 0; i < nid; i++) {
            ngd_layer_health h;
            if (ngd_optim_layer_health(opt, (int)i, &h) != NGD_OK) continue;
            prec += h.time_precond;
        }
        r->data += t1 - t0, r->fwd += t2 - t1, r->bwd += t3 - t2, r->obs += t4 - t3;
        r->upd += upd, r->prec += prec, r->rule += (t5 - t4) - upd - prec;
        tot[s - o->warmup] = t5 - t0;
    }
    r->opt_flops = (double)(ngd_gemm_flop_count() - opt_f0) / (double)r->steps;
    r->cpu = (cpu_now_s() - cpu0) / (double)r->steps;
    const double n = (double)r->steps;
    r->data /= n, r->fwd /= n, r->bwd /= n, r->obs /= n, r->upd /= n, r->prec /= n, r->rule /= n;
    for (size_t i = 0; i < r->steps; i++)
        r->mean += tot[i] / n;
    r->median = bench_median(tot, r->steps);
    r->state_bytes = ngd_optim_state_bytes(opt);
    r->hwm_kib = hwm_kib();
    r->ok = 1;
done:
    free(x), free(ids), free(y), free(dlogits), free(tot);
    ngd_optim_free(opt);
    nn_model_free(&m);
    data_free(&d);
}

// Runs c in a child; its peak RSS (KiB) comes back through wait4. -1 if the child failed.
static int run_forked(const bt_cfg *c, const bt_opts *o, bt_result *r, long *rss_kib) {
    int fd[2];
    if (pipe(fd)) return -1;
    fflush(stdout), fflush(stderr);
    const pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return close(fd[0]), close(fd[1]), -1;
    if (pid == 0) {
        // ends with its parent (a SIGINT / SIGTERM to ngd bench train, or a kill): a configuration
        // no one waits for would run on, taking the cores
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(1);
        close(fd[0]);
        bt_result res;
        run_one(c, o, &res);
        ssize_t w = write(fd[1], &res, sizeof res);
        _exit(w == (ssize_t)sizeof res ? 0 : 1);
    }
    close(fd[1]);
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t k = read(fd[0], (char *)r + got, sizeof *r - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd[0]);
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0 || got != sizeof *r) {
        snprintf(r->err, sizeof r->err, "the benchmark process died (signal %d)",
                 WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        r->ok = 0;
    }
    *rss_kib = r->ok && r->hwm_kib > 0 ? r->hwm_kib : ru.ru_maxrss;
    return r->ok ? 0 : -1;
}

static void usage(FILE *f) {
    fprintf(f, "usage: ngd bench train [options]\n\n"
               "Times whole training steps (batch, forward, backward, statistics, optimizer step)\n"
               "of the engine's models on synthetic data of the real shapes, each configuration\n"
               "in its own process: ms per step (mean over whole preconditioner periods, and the\n"
               "median), the phase split, samples/s, GEMM FLOPs of forward+backward and of the\n"
               "optimizer, achieved GFLOP/s against this machine's sgemm rate measured just\n"
               "before, the step's floor (its FLOPs at that rate), and peak RSS.\n\noptions:\n");
    cli_print_opts(f, BT_OPTS, BT_NOPTS, 24);
}

static int parse_size(const char *opt, const char *s, size_t *out, size_t min, size_t max) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE || (!errno && *end == '\0' && s[0] >= '0' && s[0] <= '9' && v > max)) {
        cli_error("run 'ngd bench train --help'", "--%s: '%s' is too large (at most %zu)", opt, s,
                  max);
        return -1;
    }
    if (errno || *end || !s[0] || s[0] < '0' || s[0] > '9' || v < min) {
        cli_error("run 'ngd bench train --help'", "--%s: '%s' is not a whole number in [%zu, %zu]",
                  opt, s, min, max);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

// Splits the comma list of option opt in place; returns the number of items (1..cap), or -1
// after an error naming the option (an empty list or entry, more than cap entries, and with
// unique an entry named twice).
static int split(const char *opt, char *s, char **items, int cap, bool unique) {
    char copy[256];
    snprintf(copy, sizeof copy, "%s", s); // (for the message)
    int n = 0;
    for (char *t = s;; t++) {
        char *end = strchr(t, ',');
        if (end) *end = '\0';
        if (!*t || n == cap) {
            char why[64];
            if (n == cap)
                snprintf(why, sizeof why, "more than %d entries", cap);
            else
                snprintf(why, sizeof why, "an empty entry");
            cli_error("a comma list, e.g. --model mlp,cnn --widths 256,128", "--%s: %s in '%s'",
                      opt, why, copy);
            return -1;
        }
        for (int i = 0; unique && i < n; i++)
            if (!strcmp(items[i], t)) { // (a configuration run twice is a mistake)
                cli_error("name each once", "--%s: '%s' is repeated in '%s'", opt, t, copy);
                return -1;
            }
        items[n++] = t;
        if (!end) return n;
        t = end;
    }
}

// The structure column: SINGD's structure, "factored" for the K-FAC family's factored application
// (its default),
// "pi" for K-FAC under --kfac-damping pi.
static const char *cfg_label(const bt_cfg *c, const bt_opts *o) {
    static char buf[64];
    const bool factored = bt_factored(c, o);
    if (c->method == NGD_METHOD_KFAC && o->kfac_pi) return factored ? "factored,pi" : "pi";
    if (is_kfac(c->method) && factored) return "factored";
    if (is_singd(c->method) && factored) {
        snprintf(buf, sizeof buf, "%s,factored", c->structure[0] ? c->structure : "dense");
        return buf;
    }
    return c->structure[0] ? c->structure : "-";
}

static void print_row(const bt_cfg *c, const bt_opts *o, const bt_result *r, long rss) {
    const double ms = 1e3, fb_rate = r->fb_flops / (r->fwd + r->bwd) / 1e9;
    const double floor_s = (r->fb_flops + r->opt_flops) / (r->sgemm_gflops * 1e9);
    const char *st = cfg_label(c, o);
    double dot_ratio = 0.0; // (bf16 products run in f32 where ngd_bf16_dot_slow says so)
    (void)ngd_bf16_dot_slow(&dot_ratio);
    if (o->json) {
        printf("{\"model\":\"%s\",\"data\":\"%s\",\"optim\":\"%s\",\"structure\":\"%s\","
               "\"precision\":\"%s\",\"batch\":%zu,\"steps\":%zu,\"period\":%zu,\"ms_mean\":%.4f,"
               "\"ms_median\":%.4f,"
               "\"ms_data\":%.4f,\"ms_forward\":%.4f,\"ms_backward\":%.4f,\"ms_observe\":%.4f,"
               "\"ms_precond_update\":%.4f,\"ms_precondition\":%.4f,\"ms_rule\":%.4f,"
               "\"samples_per_s\":%.1f,\"fb_gflop\":%.4f,\"opt_gflop\":%.4f,\"fb_gflops\":%.1f,"
               "\"sgemm_gflops\":%.1f,\"floor_ms\":%.4f,\"peak_rss_mib\":%.1f,"
               "\"state_bytes\":%zu,\"params\":%zu,\"ms_cpu\":%.4f,\"threads\":%d,"
               "\"bf16_dot_ratio\":%.3f}\n",
               c->model,
               c->text    ? "shakespeare"
               : c->cifar ? "cifar100"
                          : "fashion-mnist",
               ngd_method_name(c->method), st, c->bf16 ? "bf16" : "f32", o->batch, r->steps,
               r->period, r->mean * ms, r->median * ms, r->data * ms, r->fwd * ms, r->bwd * ms,
               r->obs * ms, r->upd * ms, r->prec * ms, r->rule * ms, (double)o->batch / r->mean,
               r->fb_flops / 1e9, r->opt_flops / 1e9, fb_rate, r->sgemm_gflops, floor_s * ms,
               (double)rss / 1024.0, r->state_bytes, r->params, r->cpu * ms, r->threads, dot_ratio);
    } else {
        printf(
            "%-8s %-7s %-14s %-4s %8.2f %8.2f | %5.2f %7.2f %7.2f %6.2f %6.2f %6.2f %6.2f | %7.0f "
            "%6.2f %5.0f%% %6.3f %5.2fx %4.0f %6.0f\n",
            c->model, ngd_method_name(c->method), st, c->bf16 ? "bf16" : "f32", r->mean * ms,
            r->median * ms, r->data * ms, r->fwd * ms, r->bwd * ms, r->obs * ms, r->upd * ms,
            r->prec * ms, r->rule * ms, (double)o->batch / r->mean, r->fb_flops / 1e9,
            100 * fb_rate / r->sgemm_gflops, r->opt_flops / 1e9, r->mean / floor_s, r->sgemm_gflops,
            (double)rss / 1024.0);
    }
    fflush(stdout);
}

int bench_train(int argc, char **argv) {
    bt_opts o = {.batch = 128,
                 .context = 64,
                 .steps = 30,
                 .warmup = 10,
                 .T = 10,
                 .momentum = -1,
                 .factored = -1};
    char models_s[256] = "mlp,cnn", optims_s[256] = "sgd,adamw,singd",
         structs_s[256] = "dense,diagonal";
    struct option lo[BT_NOPTS + 1];
    cli_longopts(BT_OPTS, BT_NOPTS, lo);
    size_t threads = 0, repeats = 1;
    bool context_given = false, T_given = false, structs_given = false;
    int precs = 1; // bit 0: f32, bit 1: bf16
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case B_MODEL: snprintf(models_s, sizeof models_s, "%s", optarg); break;
        case B_OPTIM: snprintf(optims_s, sizeof optims_s, "%s", optarg); break;
        case B_STRUCT:
            snprintf(structs_s, sizeof structs_s, "%s", optarg);
            structs_given = true;
            break;
        case B_DATA:
            if (strcmp(optarg, "fashion-mnist") && strcmp(optarg, "cifar100")) {
                cli_error("fashion-mnist or cifar100", "--data: unknown shape '%s'", optarg);
                return NGD_EXIT_USAGE;
            }
            o.data = optarg;
            break;
        case B_BATCH:
            if (parse_size("batch", optarg, &o.batch, 1, SIZE_MAX)) return NGD_EXIT_USAGE;
            break;
        case B_CONTEXT:
            if (parse_size("context", optarg, &o.context, 1, SIZE_MAX)) return NGD_EXIT_USAGE;
            context_given = true;
            break;
        case B_STEPS:
            if (parse_size("steps", optarg, &o.steps, 1, BT_STEPS_MAX)) return NGD_EXIT_USAGE;
            break;
        case B_WARMUP:
            if (parse_size("warmup", optarg, &o.warmup, 1, BT_STEPS_MAX)) return NGD_EXIT_USAGE;
            break;
        case B_T:
            if (parse_size("T", optarg, &o.T, 1, BT_PERIOD_MAX)) return NGD_EXIT_USAGE;
            T_given = true;
            break;
        case B_TU:
            if (parse_size("T-u", optarg, &o.T_u, 1, BT_PERIOD_MAX)) return NGD_EXIT_USAGE;
            break;
        case B_TI:
            if (parse_size("T-i", optarg, &o.T_i, 1, BT_PERIOD_MAX)) return NGD_EXIT_USAGE;
            break;
        case B_FACTORED:
        case B_NOFACTORED:
            if (o.factored >= 0) {
                cli_error("give one of them once", "--factored or --no-factored given twice");
                return NGD_EXIT_USAGE;
            }
            o.factored = ch == B_FACTORED;
            break;
        case B_KDAMP:
            if (strcmp(optarg, "pi") && strcmp(optarg, "exact")) {
                cli_error("e.g. --kfac-damping pi", "--kfac-damping: exact or pi, not '%s'",
                          optarg);
                return NGD_EXIT_USAGE;
            }
            o.kfac_pi = !strcmp(optarg, "pi");
            break;
        case B_THREADS:
            if (parse_size("threads", optarg, &threads, 1, BT_THREADS_MAX)) return NGD_EXIT_USAGE;
            break;
        case B_WIDTHS: {
            char *w[NN_MODEL_MAX_WIDTHS + 1];
            const int n = split("widths", optarg, w, NN_MODEL_MAX_WIDTHS, false);
            if (n < 0) return NGD_EXIT_USAGE;
            for (int i = 0; i < n; i++)
                if (parse_size("widths", w[i], &o.widths[i], 1, SIZE_MAX)) return NGD_EXIT_USAGE;
            o.nwidths = (size_t)n;
            break;
        }
        case B_POPTIM:
            if (strcmp(optarg, "method") && strcmp(optarg, "adamw")) {
                cli_error("method or adamw", "--param-optim: unknown rule '%s'", optarg);
                return NGD_EXIT_USAGE;
            }
            o.param_adamw = !strcmp(optarg, "adamw");
            break;
        case B_MOM: {
            char *end;
            errno = 0;
            const double v = strtod(optarg, &end);
            if (errno || *end || !optarg[0] || !(v >= 0 && v < 1)) {
                cli_error("a number in [0, 1)", "--momentum: '%s' is not a momentum", optarg);
                return NGD_EXIT_USAGE;
            }
            o.momentum = (float)v;
            break;
        }
        case B_PREC:
            if (!strcmp(optarg, "f32"))
                precs = 1;
            else if (!strcmp(optarg, "bf16"))
                precs = 2;
            else if (!strcmp(optarg, "f32,bf16") || !strcmp(optarg, "bf16,f32"))
                precs = 3;
            else {
                cli_error("f32, bf16 or f32,bf16", "--precision: unknown list '%s'", optarg);
                return NGD_EXIT_USAGE;
            }
            break;
        case B_REPEATS:
            if (parse_size("repeats", optarg, &repeats, 1, 1000)) return NGD_EXIT_USAGE;
            break;
        case B_JSON: o.json = true; break;
        case B_HELP:
        case 'h': usage(stdout); return NGD_EXIT_OK;
        default: fprintf(stderr, "hint: run 'ngd bench train --help'\n"); return NGD_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        cli_error("run 'ngd bench train --help'", "unexpected argument '%s'", argv[optind]);
        return NGD_EXIT_USAGE;
    }
    if (threads) {
        char v[24];
        snprintf(v, sizeof v, "%zu", threads);
        setenv("OMP_NUM_THREADS", v, 1); // for libraries that read it when they start
#ifdef _OPENMP
        // libgomp read OMP_NUM_THREADS when the program started, before the setenv above:
        // the thread count is set here, and the forked children inherit it
        omp_set_num_threads((int)threads);
#endif
    }
    // the configurations: models x methods (x structures for the SINGD family)
    char *mv[16], *ov[16], *sv[16];
    const int nm = split("model", models_s, mv, 16, true),
              no = nm < 0 ? -1 : split("optim", optims_s, ov, 16, true),
              ns = no < 0 ? -1 : split("structure", structs_s, sv, 16, true);
    if (ns < 0) return NGD_EXIT_USAGE;
    for (int k = 0; k < ns; k++) { // checked whichever methods --optim lists
        ngd_factor_spec fs;
        if (ngd_structure_parse(sv[k], &fs) != NGD_OK) {
            cli_error("structures as ngd train --structure", "--structure: unknown structure '%s'",
                      sv[k]);
            return NGD_EXIT_USAGE;
        }
    }
    bt_cfg cfgs[BT_MAX];
    size_t nc = 0;
    for (int i = 0; i < nm; i++) {
        const nn_model_ops *mo = nn_model_find(mv[i]);
        const bool text = mo && mo->forward_tokens != NULL;
        if (!mo) {
            cli_error("models: mlp, cnn, vit, chargpt, vgg16bn", "--model: unknown model '%s'",
                      mv[i]);
            return NGD_EXIT_USAGE;
        }
        for (int j = 0; j < no; j++) {
            ngd_method me;
            if (ngd_method_parse(ov[j], &me) != NGD_OK) {
                cli_error("methods: sgd, adamw, singd, ingd, ikfac, kfac, rskfac, srekfac, bkfac, "
                          "brkfac, brckfac",
                          "--optim: unknown method '%s'", ov[j]);
                return NGD_EXIT_USAGE;
            }
            // (SINGD and IKFAC take each --structure; INGD is SINGD with dense factors, as ngd
            //  train refuses --structure for it: one dense row, not a "diagonal" INGD row that
            //  was SINGD-diagonal)
            const bool structured = is_singd(me) && me != NGD_METHOD_INGD;
            for (int k = 0; k < (structured ? ns : 1); k++)
                for (int pr = 0; pr < 2; pr++) {
                    if (!(precs & (1 << pr))) continue;
                    if (nc == BT_MAX) {
                        cli_error("run fewer at a time", "more than %d configurations", BT_MAX);
                        return NGD_EXIT_USAGE;
                    }
                    bt_cfg *c = &cfgs[nc++];
                    memset(c, 0, sizeof *c);
                    c->model = mv[i], c->method = me, c->text = text, c->bf16 = pr == 1;
                    c->cifar = o.data ? !strcmp(o.data, "cifar100") : strcmp(mv[i], "mlp") != 0;
                    if (structured) snprintf(c->structure, sizeof c->structure, "%s", sv[k]);
                }
        }
    }
    // a method's own option with none of its methods in the list is a mistake, as in ngd train
    // (not --momentum: a harness such as bench/compare.py passes SGD's to every list)
    bool any_kfam = false, any_kfac = false, any_singd = false;
    for (size_t i = 0; i < nc; i++) {
        any_kfam = any_kfam || is_kfac(cfgs[i].method);
        any_singd = any_singd || is_singd(cfgs[i].method);
        any_kfac = any_kfac || cfgs[i].method == NGD_METHOD_KFAC;
    }
    const struct {
        bool given, used;
        const char *opt, *by;
    } own[] = {
        {o.kfac_pi, any_kfac, "--kfac-damping", "kfac"},
        {o.factored == 1, any_kfam || any_singd, "--factored", "the K-FAC family and SINGD"},
        {o.factored == 0, any_kfam || any_singd, "--no-factored", "the K-FAC family and SINGD"},
        {T_given, any_singd, "--T", "SINGD, INGD and IKFAC"},
        {structs_given, any_singd, "--structure", "SINGD, INGD and IKFAC"},
        {o.T_u != 0, any_kfam, "--T-u", "the K-FAC family"},
        {o.T_i != 0, any_kfam, "--T-i", "the K-FAC family"},
    };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (own[i].given && !own[i].used) {
            cli_error("drop it, or add one of those methods to --optim",
                      "%s: used only by %s, which --optim '%s' does not list", own[i].opt,
                      own[i].by, optims_s);
            return NGD_EXIT_USAGE;
        }
    // ... and a model's own option with none of its models in the list; --widths the models
    // refuse, before any child is forked (exit 2, as ngd train)
    bool any_text = false, any_image = false;
    for (size_t i = 0; i < nc; i++)
        any_text = any_text || cfgs[i].text, any_image = any_image || !cfgs[i].text;
    if ((o.data && !any_image) || (context_given && !any_text)) {
        cli_error("drop it, or add such a model to --model",
                  "%s: used only by %s, which --model "
                  "'%s' does not list",
                  o.data ? "--data" : "--context",
                  o.data ? "the image models (mlp, cnn, vit, vgg16bn)" : "chargpt", models_s);
        return NGD_EXIT_USAGE;
    }
    for (size_t i = 0; i < nc && o.nwidths; i++) {
        if (i && !strcmp(cfgs[i].model, cfgs[i - 1].model)) continue; // (a model's configs follow)
        char err[256];
        if (check_widths(&cfgs[i], &o, err, sizeof err) != NN_OK) {
            cli_error("run 'ngd train --help' for each model's widths", "--model %s: %s",
                      cfgs[i].model, err);
            return NGD_EXIT_USAGE;
        }
    }
    if (!o.json)
        printf(
            "ngd bench train: batch %zu, %zu warm-up steps, >= %zu timed steps (whole "
            "periods), T = %zu\nms per step; phases in ms: data, forward(+loss), backward, "
            "observe, preconditioner update, preconditioning, first-order rule;\nfb = forward+"
            "backward GEMM GFLOP, %%sgemm = its GFLOP/s against the sgemm rate, opt = optimizer "
            "GEMM GFLOP/step,\nx floor = step time / (all GEMM FLOPs at the sgemm rate)\n\n"
            "%-8s %-7s %-14s %-4s %8s %8s | %5s %7s %7s %6s %6s %6s %6s | %7s %6s %6s %6s %6s %4s "
            "%6s\n",
            o.batch, o.warmup, o.steps, o.T, "model", "optim", "structure", "prec", "mean",
            "median", "data", "fwd", "bwd", "obs", "upd", "prec", "rule", "samp/s", "fb", "%sgemm",
            "opt", "xfloor", "sgemm", "RSS MiB");
    int rc = NGD_EXIT_OK;
    double dot_ratio = 0.0;
    if ((precs & 2) && !nn_bf16_native())
        fprintf(stderr, "ngd bench train: note: no AVX512-BF16 on this CPU: bf16 converts "
                        "(expect it slower than f32)\n");
    else if ((precs & 2) && ngd_bf16_dot_slow(&dot_ratio))
        fprintf(stderr,
                "ngd bench train: note: bf16 dot products run at %.2fx the f32 FMAs' FLOP "
                "rate on this CPU (no AMX): bf16 products are computed in f32 from bf16 values "
                "(expect bf16 slower than f32)\n",
                dot_ratio);
    // mean step times of every repeat, for the f32/bf16 ratios (each pair from one round)
    double *ms_of = calloc(nc * repeats, sizeof *ms_of), *cpu_of = calloc(nc * repeats, 8);
    if (!ms_of || !cpu_of) {
        free(ms_of), free(cpu_of);
        return NGD_EXIT_FAIL;
    }
    for (size_t rep = 0; rep < repeats; rep++)
        for (size_t i = 0; i < nc; i++) {
            bt_result r;
            long rss = 0;
            if (run_forked(&cfgs[i], &o, &r, &rss)) {
                cli_error(NULL, "bench train: %s %s: %s", cfgs[i].model,
                          ngd_method_name(cfgs[i].method), r.err);
                rc = NGD_EXIT_FAIL;
                continue;
            }
            ms_of[rep * nc + i] = r.mean;
            cpu_of[rep * nc + i] = r.cpu;
            print_row(&cfgs[i], &o, &r, rss);
        }
    if (precs == 3) { // configurations come in (f32, bf16) pairs
        if (!o.json)
            printf("\nf32 / bf16 step time (wall; CPU time of the process), median over %zu "
                   "interleaved rounds:\n",
                   repeats);
        double *rt = malloc(repeats * sizeof *rt), *rc2 = malloc(repeats * sizeof *rc2);
        for (size_t i = 0; rt && rc2 && i + 1 < nc; i += 2) {
            size_t k = 0;
            for (size_t rep = 0; rep < repeats; rep++)
                if (ms_of[rep * nc + i] > 0 && ms_of[rep * nc + i + 1] > 0) {
                    rc2[k] = cpu_of[rep * nc + i] / cpu_of[rep * nc + i + 1];
                    rt[k++] = ms_of[rep * nc + i] / ms_of[rep * nc + i + 1];
                }
            if (!k) continue;
            const double med = bench_median(rt, k), medc = bench_median(rc2, k);
            const char *st = cfg_label(&cfgs[i], &o);
            if (o.json)
                printf("{\"type\":\"ratio\",\"model\":\"%s\",\"optim\":\"%s\","
                       "\"structure\":\"%s\",\"f32_over_bf16\":%.4f,\"f32_over_bf16_cpu\":%.4f,"
                       "\"rounds\":%zu}\n",
                       cfgs[i].model, ngd_method_name(cfgs[i].method), st, med, medc, k);
            else
                printf("%-8s %-7s %-14s %5.2fx  (CPU %5.2fx)\n", cfgs[i].model,
                       ngd_method_name(cfgs[i].method), st, med, medc);
        }
        free(rt), free(rc2);
    }
    free(ms_of), free(cpu_of);
    return rc;
}
