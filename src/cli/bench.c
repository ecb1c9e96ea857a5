/*
 * bench.c — `ngd bench step`: the time of one optimizer step for the Kronecker-factored
 * layers of a 784-512-512-10 MLP at batch 128 (statistics 128x785, 128x513, 128x513 with
 * the bias column), for every method and structure. Each configuration is timed as the
 * median of >= 20 repetitions of (observe + step) at T = 1 (a preconditioner update every
 * step) and as the median of 10-step blocks at T = 10 (amortised). Printed beside it: the
 * FLOP count of the dense path, achieved GFLOP/s, this machine's sgemm GFLOP/s measured in
 * the same run (oneDNN, the backend libngd uses), and optimizer-state bytes against the
 * counts of specs/singd.md §9.8 (computed here independently of the library).
 * Speed is measured here, never in the tests.
 */
#include <dnnl.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "ngd.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n) {
    qsort(v, n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The machine's sgemm rate (GFLOP/s) for an m x k by k x n product, median of several runs.
static double sgemm_gflops(size_t m, size_t k, size_t n) {
    float *a = calloc(m * k, 4), *b = calloc(k * n, 4), *c = calloc(m * n, 4);
    if (!a || !b || !c) return 0;
    for (size_t i = 0; i < m * k; i++) a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < k * n; i++) b[i] = (float)(i % 5) * 0.1f;
    double t[9];
    for (int r = 0; r < 11; r++) {
        double t0 = now_s();
        dnnl_sgemm('N', 'N', (dnnl_dim_t)m, (dnnl_dim_t)n, (dnnl_dim_t)k, 1.0f, a, (dnnl_dim_t)k,
                   b, (dnnl_dim_t)n, 0.0f, c, (dnnl_dim_t)n);
        if (r >= 2) t[r - 2] = now_s() - t0;
    }
    free(a), free(b), free(c);
    return 2.0 * (double)m * (double)k * (double)n / median(t, 9) / 1e9;
}

// Stored numbers of a d x d factor (specs/singd.md §9.2-9.8), independent of the library.
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
        if (d <= f->k1) k1 = d, m = 0, k2 = 0;
        else if (d <= f->k1 + f->k2) k1 = f->k1, m = 0, k2 = d - f->k1;
        else k1 = f->k1, m = d - f->k1 - f->k2, k2 = f->k2;
        return (double)(k1 * k1 + k1 * (m + k2) + m + k2 * m + k2 * k2);
    }
    default: return (double)(2 * d - 1);
    }
}

typedef struct {
    const char *label;
    ngd_method method;
    const char *structure;  // NULL for first-order methods
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
        for (size_t i = 0; i < DOUT[l]; i++) m->gb[l][i] = 1e-3f;
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
        c.lr = 1e-6f;  // keep the weights (and so the timings) stationary
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
            ngd_layer L = {.weight = m->W[l], .weight_grad = m->gW[l], .d_out = DOUT[l],
                           .d_in = DIN[l], .bias = m->b[l], .bias_grad = m->gb[l]};
            if (ngd_optim_add_layer(o, &L, &ids[l]) != NGD_OK) {
                fprintf(stderr, "bench: %s\n", ngd_optim_errmsg(o));
                ngd_optim_free(o);
                return r;
            }
        }
        int block = pass == 0 ? 1 : 10;
        double *t = malloc((size_t)reps * sizeof *t);
        for (int w = 0; w < 3 * block; w++) one_step(o, ids, m);  // warm-up, plans buffers
        for (int i = 0; i < reps; i++) {
            double t0 = now_s();
            for (int k = 0; k < block; k++)
                if (one_step(o, ids, m)) {
                    fprintf(stderr, "bench: step failed: %s\n", ngd_optim_errmsg(o));
                    free(t);
                    ngd_optim_free(o);
                    return r;
                }
            t[i] = (now_s() - t0) / block * 1e3;
        }
        if (pass == 0) r.ms_t1 = median(t, (size_t)reps);
        else r.ms_t10 = median(t, (size_t)reps);
        free(t);
        r.state_bytes = ngd_optim_state_bytes(o);
        double th = 0;
        for (int l = 0; l < NL; l++) {
            double w = (double)DOUT[l] * (double)(DIN[l] + 1);
            if (bc->method == NGD_METHOD_ADAMW) th += 2 * w * 4;
            else if (bc->method == NGD_METHOD_SGD) th += c.momentum != 0.0f ? w * 4 : 0;
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

static void bench_usage(FILE *f) {
    fprintf(f, "usage: ngd bench step [--reps N] [--json] [--only SUBSTR]\n\n"
               "Times one optimizer step (observe + step) for the layers of a 784-512-512-10\n"
               "MLP at batch 128, for every method and structure: median ms over N runs at\n"
               "T=1 and amortised at T=10, dense FLOPs, GFLOP/s, this machine's sgemm GFLOP/s,\n"
               "and optimizer-state bytes against specs/singd.md §9.8.\n\n"
               "options:\n"
               "  --reps N       repetitions per configuration (default 20, minimum 5)\n"
               "  --json         one JSON object per configuration instead of the table\n"
               "  --only SUBSTR  only configurations whose label contains SUBSTR\n"
               "  -h, --help     this text\n");
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        bench_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? NGD_EXIT_USAGE : NGD_EXIT_OK;
    }
    if (strcmp(argv[1], "step") != 0) {
        cli_error("run 'ngd bench --help'", "unknown benchmark '%s'", argv[1]);
        return NGD_EXIT_USAGE;
    }
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
    while ((c = getopt_long(argc - 1, argv + 1, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 5 || v > 100000) {
                cli_error("--reps takes a whole number >= 5", "bad --reps '%s'", optarg);
                return NGD_EXIT_USAGE;
            }
            reps = (int)v;
            break;
        }
        case 'j': json = true; break;
        case 'o': only = optarg; break;
        case 'h': bench_usage(stdout); return NGD_EXIT_OK;
        default: bench_usage(stderr); return NGD_EXIT_USAGE;
        }
    }
    mlp_bufs m;
    if (bufs_init(&m)) {
        bufs_free(&m);
        cli_error(NULL, "out of memory");
        return NGD_EXIT_FAIL;
    }
    double peak = sgemm_gflops(512, 512, 512), tall = sgemm_gflops(128, 784, 512);
    double f1 = dense_flops(true), f0 = dense_flops(false);
    if (!json) {
        printf("ngd bench step: 784-512-512-10 MLP, batch 128, median of %d runs\n", reps);
        printf("machine sgemm (oneDNN): %.0f GFLOP/s at 512^3, %.0f GFLOP/s at 128x784x512\n",
               peak, tall);
        printf("dense SINGD step FLOPs: %.2f GFLOP with a preconditioner update, %.2f GFLOP "
               "without; floor at %.0f GFLOP/s: %.2f ms (T=1)\n\n", f1 / 1e9, f0 / 1e9, peak,
               f1 / peak / 1e6);
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
        if (json) {
            printf("{\"config\":\"%s\",\"ms_T1\":%.4f,\"ms_T10\":%.4f,\"gflops\":%.1f,"
                   "\"sgemm_gflops\":%.1f,\"state_bytes\":%zu,\"theory_bytes\":%.0f}\n",
                   bc->label, r.ms_t1, r.ms_t10, gf, peak, r.state_bytes, r.theory_bytes);
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
