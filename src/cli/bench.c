/*
 * bench.c — the `ngd bench` benchmarks.
 *
 * `ngd bench step`: the time of one optimizer step for the Kronecker-factored
 * layers of a 784-512-512-10 MLP at batch 128 (statistics 128x785, 128x513, 128x513 with
 * the bias column), for SGD, AdamW, SINGD with eight structures and IKFAC (the K-FAC family is
 * timed by `ngd bench precond` and `ngd bench train`). Each configuration is timed as the
 * median of >= 20 repetitions of (observe + step) at T = 1 (a preconditioner update every
 * step) and as the median of 10-step blocks at T = 10 (amortised). Printed beside it: the
 * FLOP count of the dense path, achieved GFLOP/s, this machine's sgemm GFLOP/s measured in
 * the same run (oneDNN, the backend libngd uses), and optimizer-state bytes against the
 * counts of docs/algorithms.md#state-memory (computed here independently of the library).
 *
 * `ngd bench precond`: how the preconditioner's cost scales with the width (issue 3). One
 * d x d fully connected layer without bias (d_A = d_G = d), batch n = 128, rank r = 220,
 * every step a statistics step and a maintenance step (T = T_u = T_i = 1); inputs and
 * output-gradients freshly drawn each step from a fixed seed. Through the public API only:
 * the per-layer health's time_observe + time_update of a step is the maintenance per update,
 * its time_precond the application per step; medians after warm-up steps (B-KFAC decides
 * its tracks at the first statistics). Printed: both times per method and width, the
 * least-squares log-log slope over the widths in [1024, 4096] beside the expected exponent,
 * JSON lines with --json, and an SVG log-log plot with --plot.
 * Speed is measured here, never in the tests.
 */
#include <dnnl.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../core/fileio.h"
#include "cli.h"
#include "ngd.h"

double bench_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *v, size_t n) {
    qsort(v, n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The machine's sgemm rate (GFLOP/s) for an m x k by k x n product, median of several runs.
double bench_sgemm_gflops(size_t m, size_t k, size_t n) {
    float *a = calloc(m * k, 4), *b = calloc(k * n, 4), *c = calloc(m * n, 4);
    if (!a || !b || !c) return 0;
    for (size_t i = 0; i < m * k; i++)
        a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < k * n; i++)
        b[i] = (float)(i % 5) * 0.1f;
    double t[9];
    for (int r = 0; r < 11; r++) {
        double t0 = bench_now_s();
        dnnl_sgemm('N', 'N', (dnnl_dim_t)m, (dnnl_dim_t)n, (dnnl_dim_t)k, 1.0f, a, (dnnl_dim_t)k, b,
                   (dnnl_dim_t)n, 0.0f, c, (dnnl_dim_t)n);
        if (r >= 2) t[r - 2] = bench_now_s() - t0;
    }
    free(a), free(b), free(c);
    return 2.0 * (double)m * (double)k * (double)n / bench_median(t, 9) / 1e9;
}

// Stored numbers of a d x d factor (#state-memory), independent of the library.
static double count(const ngd_factor_spec *f, size_t d) {
    switch (f->kind) {
    case NGD_STRUCT_DENSE: return (double)d * (double)d;
    case NGD_STRUCT_DIAG:
    case NGD_STRUCT_TRIL_TOEPLITZ:
    case NGD_STRUCT_TRIU_TOEPLITZ: return (double)d;
    case NGD_STRUCT_BLOCKDIAG: {
        size_t nb = d / f->block, r = d - nb * f->block;
        return (double)nb * (double)(f->block * f->block) + (double)(r * r);
    }
    case NGD_STRUCT_HIER: {
        size_t k1, m, k2;
        if (d <= f->k1)
            k1 = d, m = 0, k2 = 0;
        else if (d <= f->k1 + f->k2)
            k1 = f->k1, m = 0, k2 = d - f->k1;
        else
            k1 = f->k1, m = d - f->k1 - f->k2, k2 = f->k2;
        return (double)(k1 * k1 + k1 * (m + k2) + m + k2 * m + k2 * k2);
    }
    default: return (double)(2 * d - 1);
    }
}

typedef struct {
    const char *label;
    ngd_method method;
    const char *structure; // NULL for first-order methods
    bool kfac_like;
} bench_cfg;

static const bench_cfg CONFIGS[] = {
    {"sgd", NGD_METHOD_SGD, NULL, false},
    {"adamw", NGD_METHOD_ADAMW, NULL, false},
    {"singd dense (INGD)", NGD_METHOD_SINGD, "dense", false},
    {"ikfac dense", NGD_METHOD_SINGD, "dense", true},
    {"singd diagonal", NGD_METHOD_SINGD, "diagonal", false},
    {"singd block30diagonal", NGD_METHOD_SINGD, "block30diagonal", false},
    {"singd hierarchical15_15", NGD_METHOD_SINGD, "hierarchical15_15", false},
    {"singd triltoeplitz", NGD_METHOD_SINGD, "triltoeplitz", false},
    {"singd triutoeplitz", NGD_METHOD_SINGD, "triutoeplitz", false},
    {"singd tril_topleft_diag", NGD_METHOD_SINGD, "tril_topleft_diag", false},
    {"singd triu_bottomright_diag", NGD_METHOD_SINGD, "triu_bottomright_diag", false},
};

enum { NL = 3, BATCH = 128 };
static const size_t DIN[NL] = {784, 512, 512}, DOUT[NL] = {512, 512, 10};

// FLOPs of one dense-SINGD step with a preconditioner update (per layer, d = d_K, c = d_C):
// statistics KᵀX, S Sᵀ (2·2d²n) and CᵀG, (2·2c²n); KᵀK, K·m (2·2d³), CᵀC, C·m (2·2c³);
// natural gradient 2·(2d²c) + 2·(2c²d); IKFAC the same.
static double dense_flops(bool update) {
    double f = 0;
    for (int l = 0; l < NL; l++) {
        double d = (double)DIN[l] + 1, c = (double)DOUT[l], n = BATCH;
        if (update) f += 4 * d * d * n + 4 * c * c * n + 4 * d * d * d + 4 * c * c * c;
        f += 4 * d * d * c + 4 * c * c * d;
    }
    return f;
}

typedef struct {
    float *W[NL], *b[NL], *gW[NL], *gb[NL], *a[NL], *g[NL];
} mlp_bufs;

static int bufs_init(mlp_bufs *m) {
    memset(m, 0, sizeof *m);
    unsigned s = 1;
    for (int l = 0; l < NL; l++) {
        size_t w = DIN[l] * DOUT[l];
        m->W[l] = malloc(w * 4), m->gW[l] = malloc(w * 4);
        m->b[l] = calloc(DOUT[l], 4), m->gb[l] = malloc(DOUT[l] * 4);
        m->a[l] = malloc(BATCH * DIN[l] * 4), m->g[l] = malloc(BATCH * DOUT[l] * 4);
        if (!m->W[l] || !m->gW[l] || !m->b[l] || !m->gb[l] || !m->a[l] || !m->g[l]) return -1;
        float *all[4] = {m->W[l], m->gW[l], m->a[l], m->g[l]};
        size_t n[4] = {w, w, BATCH * DIN[l], BATCH * DOUT[l]};
        float sc[4] = {0.05f, 1e-3f, 1.0f, 1e-2f};
        for (int k = 0; k < 4; k++)
            for (size_t i = 0; i < n[k]; i++) {
                s = s * 1664525u + 1013904223u;
                all[k][i] = sc[k] * ((float)(s >> 9) / 8388608.0f - 1.0f);
            }
        for (size_t i = 0; i < DOUT[l]; i++)
            m->gb[l][i] = 1e-3f;
    }
    return 0;
}

static void bufs_free(mlp_bufs *m) {
    for (int l = 0; l < NL; l++)
        free(m->W[l]), free(m->gW[l]), free(m->b[l]), free(m->gb[l]), free(m->a[l]), free(m->g[l]);
}

typedef struct {
    double ms_t1, ms_t10;
    size_t state_bytes;
    double theory_bytes;
    bool ok;
} bench_result;

static int one_step(ngd_optim *o, const int *ids, mlp_bufs *m) {
    if (ngd_optim_wants_stats(o))
        for (int l = 0; l < NL; l++)
            if (ngd_optim_observe(o, ids[l], BATCH, ngd_matrix_f32(m->a[l], BATCH, DIN[l]),
                                  ngd_matrix_f32(m->g[l], BATCH, DOUT[l])) != NGD_OK)
                return -1;
    return ngd_optim_step(o) == NGD_OK ? 0 : -1;
}

static bench_result run_cfg(const bench_cfg *bc, mlp_bufs *m, int reps) {
    bench_result r = {0};
    for (int pass = 0; pass < 2; pass++) {
        ngd_config c = ngd_config_default(bc->method);
        c.lr = 1e-6f; // keep the weights (and so the timings) stationary
        c.T = pass == 0 ? 1 : 10;
        c.kfac_like = bc->kfac_like;
        if (bc->kfac_like) c.alpha1 = 0;
        if (bc->structure) {
            ngd_structure_parse(bc->structure, &c.structure_K);
            ngd_structure_parse(bc->structure, &c.structure_C);
        }
        ngd_optim *o;
        int ids[NL];
        if (ngd_optim_create(&c, &o) != NGD_OK) return r;
        for (int l = 0; l < NL; l++) {
            ngd_layer L = {.weight = m->W[l],
                           .weight_grad = m->gW[l],
                           .d_out = DOUT[l],
                           .d_in = DIN[l],
                           .bias = m->b[l],
                           .bias_grad = m->gb[l]};
            if (ngd_optim_add_layer(o, &L, &ids[l]) != NGD_OK) {
                fprintf(stderr, "bench: %s\n", ngd_optim_errmsg(o));
                ngd_optim_free(o);
                return r;
            }
        }
        int block = pass == 0 ? 1 : 10;
        double *t = malloc((size_t)reps * sizeof *t);
        for (int w = 0; w < 3 * block; w++)
            one_step(o, ids, m); // warm-up, plans buffers
        for (int i = 0; i < reps; i++) {
            double t0 = bench_now_s();
            for (int k = 0; k < block; k++)
                if (one_step(o, ids, m)) {
                    fprintf(stderr, "bench: step failed: %s\n", ngd_optim_errmsg(o));
                    free(t);
                    ngd_optim_free(o);
                    return r;
                }
            t[i] = (bench_now_s() - t0) / block * 1e3;
        }
        if (pass == 0)
            r.ms_t1 = bench_median(t, (size_t)reps);
        else
            r.ms_t10 = bench_median(t, (size_t)reps);
        free(t);
        r.state_bytes = ngd_optim_state_bytes(o);
        double th = 0;
        for (int l = 0; l < NL; l++) {
            double w = (double)DOUT[l] * (double)(DIN[l] + 1);
            if (bc->method == NGD_METHOD_ADAMW)
                th += 2 * w * 4;
            else if (bc->method == NGD_METHOD_SGD)
                th += c.momentum != 0.0f ? w * 4 : 0;
            else {
                double f = count(&c.structure_K, DIN[l] + 1) + count(&c.structure_C, DOUT[l]);
                th += 4 * (w + f * (c.alpha1 != 0.0f ? 2 : 1));
            }
        }
        r.theory_bytes = th;
        ngd_optim_free(o);
    }
    r.ok = true;
    return r;
}

static void step_usage(FILE *f) {
    fprintf(f, "usage: ngd bench step [--reps N] [--json] [--only SUBSTR]\n\n"
               "Times one optimizer step (observe + step) for the layers of a 784-512-512-10\n"
               "MLP at batch 128, for SGD, AdamW, SINGD (eight structures) and IKFAC (the\n"
               "K-FAC family: ngd bench precond, ngd bench train): median ms over N runs at\n"
               "T=1 and amortised at T=10, dense FLOPs, GFLOP/s, this machine's sgemm GFLOP/s,\n"
               "and optimizer-state bytes against docs/algorithms.md#state-memory.\n\n"
               "options:\n"
               "  --reps N       repetitions per configuration (default 20, minimum 5)\n"
               "  --json         one JSON object per configuration instead of the table\n"
               "  --only SUBSTR  only configurations whose label contains SUBSTR\n"
               "  -h, --help     this text\n");
}

// `ngd bench step ...`: argv[0] is "step".
static int bench_step(int argc, char **argv) {
    int reps = 20;
    bool json = false;
    const char *only = NULL;
    static const struct option opts[] = {{"reps", required_argument, NULL, 'r'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"only", required_argument, NULL, 'o'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'r': {
            unsigned long long v;
            if (cli_parse_whole("reps", optarg, 5, 100000, &v)) return NGD_EXIT_USAGE;
            reps = (int)v;
            break;
        }
        case 'j': json = true; break;
        case 'o': only = optarg; break;
        case 'h': step_usage(stdout); return NGD_EXIT_OK;
        default: return cli_opt_error("bench step", opts, c, argv);
        }
    }
    if (optind < argc) {
        cli_error("run 'ngd bench step --help'", "unexpected argument '%s'", argv[optind]);
        return NGD_EXIT_USAGE;
    }
    bool any = !only;
    for (size_t i = 0; !any && i < sizeof CONFIGS / sizeof CONFIGS[0]; i++)
        any = strstr(CONFIGS[i].label, only) != NULL;
    if (!any) {
        char labels[512] = "";
        for (size_t i = 0; i < sizeof CONFIGS / sizeof CONFIGS[0]; i++)
            snprintf(labels + strlen(labels), sizeof labels - strlen(labels), "%s%s", i ? ", " : "",
                     CONFIGS[i].label);
        char hint[600];
        snprintf(hint, sizeof hint, "the configurations: %s", labels);
        cli_error(hint, "--only '%s' matches no configuration", only);
        return NGD_EXIT_USAGE;
    }
    mlp_bufs m;
    if (bufs_init(&m)) {
        bufs_free(&m);
        cli_error(NULL, "out of memory");
        return NGD_EXIT_FAIL;
    }
    double peak = bench_sgemm_gflops(512, 512, 512), tall = bench_sgemm_gflops(128, 784, 512);
    double f1 = dense_flops(true), f0 = dense_flops(false);
    if (!json) {
        printf("ngd bench step: 784-512-512-10 MLP, batch 128, median of %d runs\n", reps);
        printf("machine sgemm (oneDNN): %.0f GFLOP/s at 512^3, %.0f GFLOP/s at 128x784x512\n", peak,
               tall);
        printf("dense SINGD step FLOPs: %.2f GFLOP with a preconditioner update, %.2f GFLOP "
               "without; floor at %.0f GFLOP/s: %.2f ms (T=1)\n\n",
               f1 / 1e9, f0 / 1e9, peak, f1 / peak / 1e6);
        printf("%-28s %10s %10s %9s %14s %14s\n", "method / structure", "T=1 ms", "T=10 ms",
               "GFLOP/s", "state bytes", "theory bytes");
    }
    int status = NGD_EXIT_OK;
    for (size_t i = 0; i < sizeof CONFIGS / sizeof CONFIGS[0]; i++) {
        const bench_cfg *bc = &CONFIGS[i];
        if (only && !strstr(bc->label, only)) continue;
        bench_result r = run_cfg(bc, &m, reps);
        if (!r.ok) {
            status = NGD_EXIT_FAIL;
            continue;
        }
        bool dense = bc->structure && !strcmp(bc->structure, "dense");
        double gf = dense ? f1 / (r.ms_t1 * 1e6) : 0;
        if (json) { // (GFLOP/s of dense products only: null for the others, as "-" in the table)
            char gfj[32] = "null";
            if (dense) snprintf(gfj, sizeof gfj, "%.1f", gf);
            printf("{\"config\":\"%s\",\"ms_T1\":%.4f,\"ms_T10\":%.4f,\"gflops\":%s,"
                   "\"sgemm_gflops\":%.1f,\"state_bytes\":%zu,\"theory_bytes\":%.0f}\n",
                   bc->label, r.ms_t1, r.ms_t10, gfj, peak, r.state_bytes, r.theory_bytes);
        } else {
            char gfs[16] = "-";
            if (dense) snprintf(gfs, sizeof gfs, "%.0f", gf);
            printf("%-28s %10.3f %10.3f %9s %14zu %14.0f%s\n", bc->label, r.ms_t1, r.ms_t10, gfs,
                   r.state_bytes, r.theory_bytes,
                   fabs((double)r.state_bytes - r.theory_bytes) < 0.5 ? "" : "  MISMATCH");
        }
        fflush(stdout);
    }
    bufs_free(&m);
    return status;
}

// ==== ngd bench precond: the preconditioner's scaling in the width (issue 3) ====

enum { PC_N = 128, PC_RANK = 220, PC_WARMUP = 3, PC_REPS = 7, PC_HEAVY_REPS = 3 };
#define PC_HEAVY_S 1.0  // a configuration whose step takes longer gets at most PC_HEAVY_REPS
#define PC_FIT_LO  1024 // the slope is fitted over the widths in [PC_FIT_LO, PC_FIT_HI]
#define PC_FIT_HI  4096
#define PC_MAX_D   16384
#define PC_MAX_DS  16

typedef struct {
    const char *name;  // --methods spelling
    const char *label; // table / legend
    ngd_method method;
    const char *structure;     // SINGD structure, else NULL
    bool factored;             // kfac.factored_apply
    double want_mnt, want_app; // expected exponents of d (maintenance, application)
} pc_method;

// Expected exponents: K-FAC eigendecomposes d x d factors (d³) and applies them with d x d
// by d x d products (d³); RS-KFAC keeps the dense EA and sketches it with d x d by d x r
// products (d² r) and applies rank-r inverses to the d x d gradient (d² r); B-KFAC's Brand
// update touches only d x (r + n) panels (d (r+n) r) and applies like RS-KFAC, or with
// factored_apply to the n x d rows (n d r) and then forms the d x d rank-n product (d² n),
// which dominates for large d; SINGD dense multiplies
// d x d factors (d³), diagonal and hierarchical fold the n x d statistics in (n d) and scale
// the d x d gradient (d²).
static const pc_method PC_METHODS[] = {
    {"kfac", "K-FAC", NGD_METHOD_KFAC, NULL, false, 3, 3},
    {"rskfac", "RS-KFAC", NGD_METHOD_RSKFAC, NULL, false, 2, 2},
    {"bkfac", "B-KFAC", NGD_METHOD_BKFAC, NULL, false, 1, 2},
    {"bkfac-factored", "B-KFAC factored", NGD_METHOD_BKFAC, NULL, true, 1, 2},
    {"singd-dense", "SINGD dense", NGD_METHOD_SINGD, "dense", false, 3, 3},
    {"singd-diagonal", "SINGD diagonal", NGD_METHOD_SINGD, "diagonal", false, 1, 2},
    {"singd-hierarchical", "SINGD hier. 15,15", NGD_METHOD_SINGD, "hierarchical15_15", false, 1, 2},
};
#define PC_NMETHODS (sizeof PC_METHODS / sizeof PC_METHODS[0])

// ---- the option table (drives getopt_long and --help) ----
enum { PC_O_D = 256, PC_O_METHODS, PC_O_REPS, PC_O_JSON, PC_O_PLOT };

static const cli_opt PC_OPTS[] = {
    {"d", 1, PC_O_D, "LIST", "comma-separated widths d (default 256,512,1024,2048,4096)"},
    {"methods", 1, PC_O_METHODS, "LIST", "comma-separated methods (default: all, see below)"},
    {"reps", 1, PC_O_REPS, "N", "measured steps per method and width, median taken (default 7)"},
    {"json", 0, PC_O_JSON, NULL, "JSON lines on stdout instead of the table"},
    {"plot", 1, PC_O_PLOT, "FILE.svg", "also write a log-log SVG plot of both times against d"},
    {"help", 0, 'h', NULL, "this text"},
};
#define PC_NOPTS (sizeof PC_OPTS / sizeof PC_OPTS[0])

static void precond_usage(FILE *f) {
    fprintf(f,
            "usage: ngd bench precond [options]\n\n"
            "Times the preconditioner of one d x d fully connected layer without bias\n"
            "(d_A = d_G = d) at batch n = %d, rank r = %d (RS-KFAC rank, B-KFAC Brand rank),\n"
            "updating every step (T = T_u = T_i = 1), with fresh random inputs and output\n"
            "gradients each step (fixed seed): maintenance per update (observe + factor\n"
            "update) and application per step (preconditioning the gradient), read from the\n"
            "layer health's time_observe, time_update and time_precond. Median of N steps\n"
            "after %d warm-up steps; the first observes ceil(d/n) batches, so that dense\n"
            "averages start at full rank as after d/n steps of training. A configuration\n"
            "whose step takes over %.0f s gets 2 warm-up steps and at most %d measured.\n"
            "Prints the least-squares slope of log(time) against log(d) over the widths in\n"
            "[%d, %d] (at least two needed) beside the expected exponent.\n\n"
            "options:\n",
            PC_N, PC_RANK, PC_WARMUP, PC_HEAVY_S, PC_HEAVY_REPS, PC_FIT_LO, PC_FIT_HI);
    cli_print_opts(f, PC_OPTS, PC_NOPTS, 24);
    fprintf(f, "\nmethods:\n");
    for (size_t i = 0; i < PC_NMETHODS; i++)
        fprintf(f, "  %-24s %s (expected slope: maintenance %.0f, application %.0f)\n",
                PC_METHODS[i].name, PC_METHODS[i].label, PC_METHODS[i].want_mnt,
                PC_METHODS[i].want_app);
    fprintf(f, "\nexample:\n  OMP_NUM_THREADS=1 ngd bench precond --plot bench-precond.svg\n");
}

// A fixed-seed generator for the inputs (xorshift64*), uniform in [-1, 1).
static float pc_uniform(uint64_t *s) {
    *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
    return (float)((*s * 2685821657736338717ull) >> 40) / 8388608.0f - 1.0f;
}

static void pc_fill(float *x, size_t n, float scale, uint64_t *s) {
    for (size_t i = 0; i < n; i++)
        x[i] = scale * pc_uniform(s);
}

typedef struct {
    double mnt_ms, app_ms, step_ms, obs_ms; // medians (obs_ms: the observe part of mnt_ms)
    int reps;
    size_t rank_A, rank_G, retries, failures;
    char track[32]; // "EVD", "RSVD", "Brand", or the SINGD structure
    bool ok;
} pc_point;

// The K-FAC family logs the tracks its B methods choose; keep the A factor's.
static void pc_log(void *user, const char *msg) {
    const char *p = strstr(msg, "on the ");
    if (!p || !strstr(msg, "track")) return;
    char *track = user;
    snprintf(track, 32, "%.*s", (int)strcspn(p + 7, " "), p + 7);
}

static pc_point pc_measure(const pc_method *pm, size_t d, int reps) {
    pc_point pt = {0};
    const size_t n = PC_N;
    float *W = malloc(d * d * sizeof(float)), *gW = malloc(d * d * sizeof(float));
    float *X = malloc(n * d * sizeof(float)), *G = malloc(n * d * sizeof(float));
    double *tm = malloc((size_t)reps * sizeof(double)), *ta = malloc((size_t)reps * sizeof(double));
    double *ts = malloc((size_t)reps * sizeof(double)), *to = malloc((size_t)reps * sizeof(double));
    ngd_optim *o = NULL;
    if (!W || !gW || !X || !G || !tm || !ta || !ts || !to) {
        cli_error(NULL, "out of memory for a %zu-wide layer", d);
        goto done;
    }
    uint64_t seed = 0x9E3779B97F4A7C15ull ^ d;
    pc_fill(W, d * d, 0.05f, &seed);
    pc_fill(gW, d * d, 1e-3f, &seed);
    ngd_config c = ngd_config_default(pm->method);
    c.lr = 1e-6f; // keep the weights (and so the timings) stationary
    c.T = 1;
    c.kfac.T_u = 1;
    c.kfac.T_i = 1;
    c.kfac.rank = PC_RANK;
    c.kfac.brand_rank = PC_RANK;
    c.kfac.factored_apply = pm->factored;
    c.log_fn = pc_log;
    c.log_user = pt.track;
    if (pm->structure) {
        ngd_structure_parse(pm->structure, &c.structure_K);
        ngd_structure_parse(pm->structure, &c.structure_C);
        snprintf(pt.track, sizeof pt.track, "%s", pm->structure);
    } else if (pm->method == NGD_METHOD_KFAC || d <= PC_RANK) {
        snprintf(pt.track, sizeof pt.track, "EVD");
    } else {
        snprintf(pt.track, sizeof pt.track, "RSVD"); // B methods: replaced by their log line
    }
    ngd_status st = ngd_optim_create(&c, &o);
    if (st != NGD_OK) {
        cli_error(NULL, "%s: %s", pm->name, ngd_status_str(st));
        goto done;
    }
    int id;
    ngd_layer L = {.name = "fc", .weight = W, .weight_grad = gW, .d_out = d, .d_in = d};
    if (ngd_optim_add_layer(o, &L, &id) != NGD_OK) {
        cli_error(NULL, "%s: %s", pm->name, ngd_optim_errmsg(o));
        goto done;
    }
    int warm = PC_WARMUP, measured = 0;
    for (int step = 0; measured < reps; step++) {
        ngd_layer_health h0, h;
        ngd_optim_layer_health(o, id, &h0);
        // step 0 observes ceil(d/n) batches: the dense averages start at full rank, as after
        // d/n steps of training (a rank-deficient average would flatter the decompositions)
        const size_t batches = step == 0 ? (d + n - 1) / n : 1;
        double t0 = bench_now_s();
        for (size_t b = 0; b < batches; b++) {
            const double tf = bench_now_s();
            pc_fill(X, n * d, 1.0f, &seed);
            pc_fill(G, n * d, 1e-2f, &seed);
            t0 += bench_now_s() - tf;
            if (ngd_optim_wants_stats(o) && ngd_optim_observe(o, id, n, ngd_matrix_f32(X, n, d),
                                                              ngd_matrix_f32(G, n, d)) != NGD_OK)
                goto fail;
        }
        if (ngd_optim_step(o) != NGD_OK) goto fail;
        const double wall = bench_now_s() - t0;
        ngd_optim_layer_health(o, id, &h);
        if (h.updates != h0.updates + 1) {
            cli_error(NULL, "%s d=%zu: step %d did no preconditioner update", pm->name, d, step);
            goto done;
        }
        if (step < warm) {
            // a slow configuration: one warm-up step less, fewer measured steps
            if (step == 1 && wall > PC_HEAVY_S) {
                warm = 2;
                if (reps > PC_HEAVY_REPS) reps = PC_HEAVY_REPS;
            }
            continue;
        }
        tm[measured] = (h.time_observe + h.time_update) * 1e3;
        ta[measured] = h.time_precond * 1e3;
        ts[measured] = wall * 1e3;
        to[measured] = h.time_observe * 1e3;
        measured++;
        pt.rank_A = h.rank_A, pt.rank_G = h.rank_G;
        pt.retries = h.decomp_retries, pt.failures = h.decomp_failures;
    }
    pt.mnt_ms = bench_median(tm, (size_t)reps);
    pt.app_ms = bench_median(ta, (size_t)reps);
    pt.step_ms = bench_median(ts, (size_t)reps);
    pt.obs_ms = bench_median(to, (size_t)reps);
    pt.reps = reps;
    pt.ok = true;
    goto done;
fail:
    cli_error(NULL, "%s d=%zu: %s", pm->name, d, ngd_optim_errmsg(o));
done:
    ngd_optim_free(o);
    free(W), free(gW), free(X), free(G), free(tm), free(ta), free(ts), free(to);
    return pt;
}

// Least-squares slope of log(t) against log(d) over the widths in [PC_FIT_LO, PC_FIT_HI];
// NaN with fewer than two such widths.
static double pc_slope(const size_t *ds, const pc_point *pts, size_t nd, bool app) {
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int k = 0;
    for (size_t j = 0; j < nd; j++) {
        const double t = app ? pts[j].app_ms : pts[j].mnt_ms;
        if (!pts[j].ok || ds[j] < PC_FIT_LO || ds[j] > PC_FIT_HI || !(t > 0)) continue;
        const double x = log((double)ds[j]), y = log(t);
        sx += x, sy += y, sxx += x * x, sxy += x * y, k++;
    }
    if (k < 2) return (double)NAN;
    const double den = k * sxx - sx * sx;
    return den > 0 ? (k * sxy - sx * sy) / den : (double)NAN;
}

// "2.95", or "null" / "-" when there is no slope.
static const char *pc_num(double v, const char *none, char *buf, size_t cap) {
    if (!isfinite(v)) return none;
    snprintf(buf, cap, "%.2f", v);
    return buf;
}

// ---- the SVG plot: two log-log panels (maintenance, application), one line per method ----
static const char *const PC_COLORS[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                        "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

typedef struct {
    double x, y, w, h, xlo, xhi, ylo, yhi; // area in pixels; axis limits in log10 units
} pc_panel;

static double pc_px(const pc_panel *p, double d) {
    return p->x + (log10(d) - p->xlo) / (p->xhi - p->xlo) * p->w;
}
static double pc_py(const pc_panel *p, double ms) {
    return p->y + p->h - (log10(ms) - p->ylo) / (p->yhi - p->ylo) * p->h;
}

static void pc_svg_panel(FILE *f, const pc_panel *p, int idx, const char *title, bool app,
                         const size_t *ds, size_t nd, const size_t *ms, size_t nm,
                         const pc_point *pts) {
    fprintf(f,
            "<g class=\"panel\">\n<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
            "font-size=\"14\" font-weight=\"bold\">%s</text>\n",
            p->x + p->w / 2, p->y - 10, title);
    fprintf(f,
            "<clipPath id=\"clip%d\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
            "height=\"%.1f\"/></clipPath>\n",
            idx, p->x, p->y, p->w, p->h);
    fprintf(f,
            "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#ffffff\" "
            "stroke=\"#444444\"/>\n",
            p->x, p->y, p->w, p->h);
    if (ds[0] <= PC_FIT_HI && ds[nd - 1] >= PC_FIT_LO) { // the widths the slope is fitted on
        const double x0 = pc_px(p, fmax((double)ds[0], PC_FIT_LO)),
                     x1 = pc_px(p, fmin((double)ds[nd - 1], PC_FIT_HI));
        fprintf(f,
                "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                "fill=\"#f3f3f3\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
                "fill=\"#777777\">fit range</text>\n",
                x0, p->y, x1 - x0, p->h, (x0 + x1) / 2, p->y + 14);
    }
    for (size_t j = 0; j < nd; j++) { // x ticks at the measured widths
        const double x = pc_px(p, (double)ds[j]);
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>"
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%zu</text>\n",
                x, p->y, x, p->y + p->h, x, p->y + p->h + 18, ds[j]);
    }
    for (double e = p->ylo; e <= p->yhi + 1e-9; e += 1) { // y ticks at the decades
        const double y = p->y + p->h - (e - p->ylo) / (p->yhi - p->ylo) * p->h;
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>"
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                p->x, y, p->x + p->w, y, p->x - 8, y + 4, pow(10.0, e));
    }
    fprintf(f,
            "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">width d (log scale)</text>\n"
            "<text transform=\"translate(%.1f %.1f) rotate(-90)\" text-anchor=\"middle\">"
            "ms (log scale)</text>\n",
            p->x + p->w / 2, p->y + p->h + 38, p->x - 52, p->y + p->h / 2);
    // guides: d, d², d³ through the lower left corner
    fprintf(f, "<g clip-path=\"url(#clip%d)\" stroke=\"#999999\" stroke-dasharray=\"3 4\">\n", idx);
    for (int s = 1; s <= 3; s++) {
        const double dx = p->xhi - p->xlo, dy = fmin(s * dx, p->yhi - p->ylo);
        const double x1 = p->x + dy / s / dx * p->w,
                     y1 = p->y + p->h - dy / (p->yhi - p->ylo) * p->h;
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                "<text x=\"%.1f\" y=\"%.1f\" stroke=\"none\" fill=\"#777777\">d%s</text>\n",
                p->x, p->y + p->h, x1, y1, x1 - 22, y1 + 14,
                s == 1   ? ""
                : s == 2 ? "\xc2\xb2"
                         : "\xc2\xb3");
    }
    fprintf(f, "</g>\n<g clip-path=\"url(#clip%d)\">\n", idx);
    for (size_t i = 0; i < nm; i++) {
        const char *col = PC_COLORS[ms[i] % (sizeof PC_COLORS / sizeof PC_COLORS[0])];
        fprintf(f,
                "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\" "
                "stroke-linejoin=\"round\" points=\"",
                col);
        bool first = true;
        for (size_t j = 0; j < nd; j++) {
            const pc_point *q = &pts[i * nd + j];
            const double t = app ? q->app_ms : q->mnt_ms;
            if (!q->ok || !(t > 0)) continue;
            fprintf(f, "%s%.1f,%.1f", first ? "" : " ", pc_px(p, (double)ds[j]), pc_py(p, t));
            first = false;
        }
        fprintf(f, "\"/>\n");
        for (size_t j = 0; j < nd; j++) {
            const pc_point *q = &pts[i * nd + j];
            const double t = app ? q->app_ms : q->mnt_ms;
            if (q->ok && t > 0)
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.2\" fill=\"%s\"/>\n",
                        pc_px(p, (double)ds[j]), pc_py(p, t), col);
        }
    }
    fprintf(f, "</g>\n</g>\n");
}

// Writes the plot atomically; 0 on success (the error is printed).
static int pc_write_plot(const char *path, const size_t *ds, size_t nd, const size_t *ms, size_t nm,
                         const pc_point *pts, int threads) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        cli_error(NULL, "out of memory for the plot");
        return -1;
    }
    double lo = (double)INFINITY, hi = -(double)INFINITY;
    for (size_t k = 0; k < nm * nd; k++)
        if (pts[k].ok) {
            const double v[2] = {pts[k].mnt_ms, pts[k].app_ms};
            for (int q = 0; q < 2; q++)
                if (v[q] > 0) lo = fmin(lo, v[q]), hi = fmax(hi, v[q]);
        }
    if (!(lo <= hi)) lo = 1, hi = 10;
    const double W = 1000, LY = 470, H = LY + 22.0 * (double)nm + 30;
    pc_panel p[2] = {{90, 70, 380, 300, 0, 0, 0, 0}, {580, 70, 380, 300, 0, 0, 0, 0}};
    for (int k = 0; k < 2; k++) {
        p[k].xlo = log10((double)ds[0]) - 0.1, p[k].xhi = log10((double)ds[nd - 1]) + 0.1;
        p[k].ylo = floor(log10(lo)), p[k].yhi = ceil(log10(hi));
        if (p[k].yhi <= p[k].ylo) p[k].yhi = p[k].ylo + 1;
    }
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "viewBox=\"0 0 %.0f %.0f\" font-family=\"DejaVu Sans, Helvetica, Arial, "
            "sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" "
            "fill=\"#ffffff\"/>\n<text x=\"%.0f\" y=\"30\" text-anchor=\"middle\" "
            "font-size=\"17\" font-weight=\"bold\">ngd bench precond: one d x d layer, n = %d, "
            "r = %d, %d thread%s</text>\n",
            W, H, W, H, W / 2, PC_N, PC_RANK, threads, threads == 1 ? "" : "s");
    pc_svg_panel(f, &p[0], 0, "maintenance per update", false, ds, nd, ms, nm, pts);
    pc_svg_panel(f, &p[1], 1, "application per step", true, ds, nd, ms, nm, pts);
    fprintf(f,
            "<g class=\"legend\">\n<text x=\"90\" y=\"%.0f\" font-weight=\"bold\">method "
            "(slope over d in [%d, %d]: maintenance, application; expected)</text>\n",
            LY - 16, PC_FIT_LO, PC_FIT_HI);
    for (size_t i = 0; i < nm; i++) {
        const pc_method *pm = &PC_METHODS[ms[i]];
        const char *col = PC_COLORS[ms[i] % (sizeof PC_COLORS / sizeof PC_COLORS[0])];
        const double y = LY + 22.0 * (double)i;
        char b1[16], b2[16];
        fprintf(f,
                "<line x1=\"90\" y1=\"%.0f\" x2=\"124\" y2=\"%.0f\" stroke=\"%s\" "
                "stroke-width=\"3\"/><text x=\"134\" y=\"%.0f\">%s: %s, %s (%.0f, %.0f)"
                "</text>\n",
                y, y, col, y + 4, pm->label,
                pc_num(pc_slope(ds, pts + i * nd, nd, false), "\xe2\x80\x93", b1, sizeof b1),
                pc_num(pc_slope(ds, pts + i * nd, nd, true), "\xe2\x80\x93", b2, sizeof b2),
                pm->want_mnt, pm->want_app);
    }
    fprintf(f, "</g>\n</svg>\n");
    if (fclose(f) != 0 || !buf) {
        free(buf);
        cli_error(NULL, "out of memory for the plot");
        return -1;
    }
    char msg[512];
    const int wr = ngd_write_atomic_bytes(path, buf, len, msg, sizeof msg);
    free(buf);
    if (wr != 0) {
        cli_error(
            cli_write_hint(msg, "check that the folder of --plot FILE exists and is writable"),
            "--plot %s: %s", path, msg);
        return -1;
    }
    return 0;
}

// Parses "a,b,c" of widths into ds (ascending); -1 on a bad list.
static int pc_parse_ds(const char *arg, size_t *ds, size_t *nd) {
    *nd = 0;
    const char *p = arg;
    for (;;) {
        char *end;
        if (*p < '0' || *p > '9') return -1;
        unsigned long v = strtoul(p, &end, 10);
        if (end == p || v < 2 || v > PC_MAX_D || *nd == PC_MAX_DS) return -1;
        size_t k = *nd; // insert sorted; a repeated width is an error
        while (k > 0 && ds[k - 1] > v)
            ds[k] = ds[k - 1], k--;
        if (k > 0 && ds[k - 1] == v) return -1;
        ds[k] = v, (*nd)++;
        if (*end == '\0') return 0;
        if (*end != ',') return -1;
        p = end + 1;
    }
}

// Parses "kfac,singd-diagonal" into indices of PC_METHODS (in the given order); -1 on a bad
// list (the bad name is copied into bad).
static int pc_parse_methods(const char *arg, size_t *ms, size_t *nm, char *bad, size_t cap) {
    *nm = 0;
    const char *p = arg;
    for (;;) {
        const size_t len = strcspn(p, ",");
        size_t i = 0;
        while (i < PC_NMETHODS &&
               (strlen(PC_METHODS[i].name) != len || strncmp(PC_METHODS[i].name, p, len) != 0))
            i++;
        bool dup = false;
        for (size_t k = 0; k < *nm; k++)
            dup = dup || ms[k] == i;
        if (i == PC_NMETHODS || dup || *nm == PC_NMETHODS) {
            snprintf(bad, cap, "%.*s", (int)len, p);
            return -1;
        }
        ms[(*nm)++] = i;
        if (p[len] == '\0') return 0;
        p += len + 1;
    }
}

// `ngd bench precond ...`: argv[0] is "precond".
static int bench_precond(int argc, char **argv) {
    size_t ds[PC_MAX_DS] = {256, 512, 1024, 2048, 4096}, nd = 5;
    size_t ms[PC_NMETHODS], nm = PC_NMETHODS;
    for (size_t i = 0; i < PC_NMETHODS; i++)
        ms[i] = i;
    int reps = PC_REPS;
    bool json = false;
    const char *plot = NULL;
    struct option opts[PC_NOPTS + 1];
    cli_longopts(PC_OPTS, PC_NOPTS, opts);
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case PC_O_D:
            if (pc_parse_ds(optarg, ds, &nd)) {
                cli_error("--d takes distinct widths in [2, 16384], e.g. --d 256,512,1024",
                          "bad --d '%s'", optarg);
                return NGD_EXIT_USAGE;
            }
            break;
        case PC_O_METHODS: {
            char bad[64];
            if (pc_parse_methods(optarg, ms, &nm, bad, sizeof bad)) {
                cli_error("run 'ngd bench precond --help' for the method names",
                          "bad --methods '%s': unknown or repeated method '%s'", optarg, bad);
                return NGD_EXIT_USAGE;
            }
            break;
        }
        case PC_O_REPS: {
            unsigned long long v;
            if (cli_parse_whole("reps", optarg, 1, 10000, &v)) return NGD_EXIT_USAGE;
            reps = (int)v;
            break;
        }
        case PC_O_JSON: json = true; break;
        case PC_O_PLOT: {
            const size_t len = strlen(optarg);
            if (len < 5 || strcmp(optarg + len - 4, ".svg") != 0) {
                cli_error("the plot is written as SVG: --plot FILE.svg", "bad --plot '%s'", optarg);
                return NGD_EXIT_USAGE;
            }
            plot = optarg;
            break;
        }
        case 'h': precond_usage(stdout); return NGD_EXIT_OK;
        default: return cli_opt_error("bench precond", opts, c, argv);
        }
    }
    if (optind < argc) {
        cli_error("run 'ngd bench precond --help'", "unexpected argument '%s'", argv[optind]);
        return NGD_EXIT_USAGE;
    }
    // (the target checked now, not after a run of minutes: a folder we can write, and no file
    // of another kind to replace)
    if (plot && cli_image_target("--plot", plot, false)) return NGD_EXIT_FAIL;
    pc_point *pts = calloc(nm * nd, sizeof *pts);
    if (!pts) {
        cli_error(NULL, "out of memory");
        return NGD_EXIT_FAIL;
    }
    const int threads = cli_threads();
    const double gf0 = bench_sgemm_gflops(1024, 1024, 1024);
    const bool progress = !json && isatty(STDERR_FILENO);
    if (json) {
        printf("{\"type\":\"setup\",\"n\":%d,\"rank\":%d,\"threads\":%d,\"reps\":%d,"
               "\"warmup\":%d,\"heavy_s\":%.1f,\"heavy_reps\":%d,\"fit_lo\":%d,\"fit_hi\":%d,"
               "\"sgemm_gflops\":%.1f}\n",
               PC_N, PC_RANK, threads, reps, PC_WARMUP, PC_HEAVY_S, PC_HEAVY_REPS, PC_FIT_LO,
               PC_FIT_HI, gf0);
    } else {
        printf("ngd bench precond: one d x d linear layer (no bias), batch n = %d, rank r = %d, "
               "T = T_u = T_i = 1\n",
               PC_N, PC_RANK);
        printf("%d thread%s (OpenMP); machine sgemm (oneDNN, 1024^3): %.0f GFLOP/s at the start\n",
               threads, threads == 1 ? "" : "s", gf0);
        printf("median ms of %d step%s after %d warm-up steps (at most %d after 2 where a step "
               "takes over %.0f s)\n",
               reps, reps == 1 ? "" : "s", PC_WARMUP, PC_HEAVY_REPS, PC_HEAVY_S);
        printf("maintain = observe + factor update of an update step; apply = preconditioning "
               "the gradient\n\n");
        printf("%-18s %-8s", "method", "phase");
        for (size_t j = 0; j < nd; j++) {
            char h[24];
            snprintf(h, sizeof h, "d=%zu", ds[j]);
            printf(" %10s", h);
        }
        printf(" %7s %8s\n", "slope", "expected");
    }
    fflush(stdout);
    int status = NGD_EXIT_OK;
    bool not_brand = false;
    for (size_t i = 0; i < nm; i++) {
        const pc_method *pm = &PC_METHODS[ms[i]];
        pc_point *row = pts + i * nd;
        for (size_t j = 0; j < nd; j++) {
            const double t0 = bench_now_s();
            if (progress) fprintf(stderr, "  %s d=%zu ...", pm->name, ds[j]);
            row[j] = pc_measure(pm, ds[j], reps);
            if (progress) fprintf(stderr, " %.1f s\n", bench_now_s() - t0);
            if (!row[j].ok) {
                status = NGD_EXIT_FAIL;
                continue;
            }
            if (json)
                printf("{\"type\":\"point\",\"method\":\"%s\",\"d\":%zu,\"maintain_ms\":%.6g,"
                       "\"apply_ms\":%.6g,\"observe_ms\":%.6g,\"step_ms\":%.6g,\"reps\":%d,"
                       "\"track\":\"%s\","
                       "\"rank_A\":%zu,\"rank_G\":%zu,\"decomp_retries\":%zu,"
                       "\"decomp_failures\":%zu}\n",
                       pm->name, ds[j], row[j].mnt_ms, row[j].app_ms, row[j].obs_ms, row[j].step_ms,
                       row[j].reps, row[j].track, row[j].rank_A, row[j].rank_G, row[j].retries,
                       row[j].failures);
        }
        const double sm = pc_slope(ds, row, nd, false), sa = pc_slope(ds, row, nd, true);
        char b1[16], b2[16];
        if (json) {
            printf("{\"type\":\"slope\",\"method\":\"%s\",\"fit_lo\":%d,\"fit_hi\":%d,"
                   "\"maintain\":%s,\"apply\":%s,\"expected_maintain\":%.0f,"
                   "\"expected_apply\":%.0f}\n",
                   pm->name, PC_FIT_LO, PC_FIT_HI, pc_num(sm, "null", b1, sizeof b1),
                   pc_num(sa, "null", b2, sizeof b2), pm->want_mnt, pm->want_app);
        } else {
            for (int ph = 0; ph < 2; ph++) {
                printf("%-18s %-8s", ph == 0 ? pm->label : "", ph == 0 ? "maintain" : "apply");
                for (size_t j = 0; j < nd; j++) {
                    char v[24] = "failed";
                    if (row[j].ok) {
                        const double t = ph == 0 ? row[j].mnt_ms : row[j].app_ms;
                        const bool mark =
                            pm->method == NGD_METHOD_BKFAC && strcmp(row[j].track, "Brand") != 0;
                        not_brand = not_brand || mark;
                        snprintf(v, sizeof v, "%.*f%s",
                                 t < 10     ? 3
                                 : t < 1000 ? 2
                                            : 0,
                                 t, mark ? "*" : "");
                    }
                    printf(" %10s", v);
                }
                const double sl = ph == 0 ? sm : sa, want = ph == 0 ? pm->want_mnt : pm->want_app;
                printf(" %7s %8.0f%s\n", pc_num(sl, "-", b1, sizeof b1), want,
                       isfinite(sl) && fabs(sl - want) > 0.3 ? "  MISS" : "");
            }
        }
        fflush(stdout);
    }
    const double gf1 = bench_sgemm_gflops(1024, 1024, 1024);
    if (json) {
        printf("{\"type\":\"end\",\"sgemm_gflops\":%.1f}\n", gf1);
    } else {
        if (not_brand)
            printf("\n* B-KFAC not on the Brand track here (it needs r + n < d, %d + %d): "
                   "EVD for d <= r, else RSVD\n",
                   PC_RANK, PC_N);
        printf("\nslope: least squares of log(ms) against log(d) over d in [%d, %d]; MISS: "
               "more than 0.3 from the expected exponent\n",
               PC_FIT_LO, PC_FIT_HI);
        printf("machine sgemm (oneDNN, 1024^3): %.0f GFLOP/s at the end\n", gf1);
    }
    if (plot) {
        if (pc_write_plot(plot, ds, nd, ms, nm, pts, threads))
            status = NGD_EXIT_FAIL;
        else if (!json)
            printf("plot -> %s\n", plot);
    }
    free(pts);
    return status;
}

static void bench_usage(FILE *f) {
    fprintf(f,
            "usage: ngd bench BENCHMARK [options]\n\n"
            "benchmarks:\n"
            "  step      one optimizer step of a 784-512-512-10 MLP, every method and\n"
            "            structure: time, FLOPs, state bytes\n"
            "  precond   preconditioner maintenance and application time against the width\n"
            "            d of one d x d layer, K-FAC / RS-KFAC / B-KFAC / SINGD, log-log slopes\n"
            "  train     whole training steps of the engine's models (mlp, cnn, vit, chargpt,\n"
            "            vgg16bn) x method x structure: phases, GFLOP/s, floor, peak RSS\n\n"
            "'ngd bench BENCHMARK --help' describes each one's options.\n");
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        bench_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? NGD_EXIT_USAGE : NGD_EXIT_OK;
    }
    if (!strcmp(argv[1], "step")) return bench_step(argc - 1, argv + 1);
    if (!strcmp(argv[1], "precond")) return bench_precond(argc - 1, argv + 1);
    if (!strcmp(argv[1], "train")) return bench_train(argc - 1, argv + 1);
    cli_error("run 'ngd bench --help'", "unknown benchmark '%s'", argv[1]);
    return NGD_EXIT_USAGE;
}
