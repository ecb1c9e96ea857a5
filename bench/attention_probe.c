/*
 * attention_probe.c — times one nn_attention layer's forward and backward (the per-head
 * part: scores, softmax, att v and their gradients, plus the two Linear projections) at the
 * shapes of `ngd train --model chargpt` (causal, C 64, 4 heads of 16, T 64, batch 128) or
 * whatever the environment asks: C=, NH=, T=, B=, CAUSAL=0|1, REPS=, KERNELS=0 (every pass on
 * per-head GEMMs), 1 (the default: the AVX-512 kernels where they pay) or 2 (every pass on
 * them), as nn_attention_set_kernels. No part of ngd: the
 * evidence behind docs/benchmarks.md's attention figures. `make bench` builds it:
 *
 *   OMP_NUM_THREADS=2 build/bench/attention_probe            # chargpt's layer
 *   OMP_NUM_THREADS=2 CAUSAL=0 build/bench/attention_probe   # vit's (64 patches)
 *
 * Prints the median over REPS of forward and of backward, in ms, those of the layer's two
 * projections (Linears) alone, and the FLOPs nn_flop_count saw per forward + backward.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nn.h"

static size_t env_size(const char *name, size_t dflt) {
    const char *s = getenv(name);
    return s && *s ? (size_t)strtoul(s, NULL, 10) : dflt;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(void) {
    const size_t C = env_size("C", 64), nh = env_size("NH", 4), T = env_size("T", 64);
    const size_t B = env_size("B", 128), reps = env_size("REPS", 30);
    const bool causal = env_size("CAUSAL", 1) != 0;
    nn_attention_set_kernels((int)env_size("KERNELS", NN_ATT_AUTO));
    nn_rng g;
    nn_rng_seed(&g, 1);
    nn_attention l;
    if (reps == 0 || nn_attention_init(&l, C, nh, causal, B, T, &g) != NN_OK) {
        fprintf(stderr, "attention_probe: bad sizes or out of memory\n");
        return 1;
    }
    const size_t n = B * T * C;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), *dy = malloc(n * sizeof *dy);
    float *dx = malloc(n * sizeof *dx);
    double *tf = malloc(reps * sizeof *tf), *tb = malloc(reps * sizeof *tb);
    double *lf = malloc(reps * sizeof *lf), *lb = malloc(reps * sizeof *lb);
    if (!x || !y || !dy || !dx || !tf || !tb || !lf || !lb) return 1;
    for (size_t i = 0; i < n; i++) {
        x[i] = nn_rng_uniform(&g) * 2.0f - 1.0f;
        dy[i] = nn_rng_uniform(&g) * 2.0f - 1.0f;
    }
    for (size_t r = 0; r < 3; r++) { // warm-up
        nn_attention_forward(&l, x, y, B, T);
        nn_attention_backward_set(&l, dy, dx);
    }
    const uint64_t f0 = nn_flop_count();
    for (size_t r = 0; r < reps; r++) {
        const double t0 = now_ms();
        nn_attention_forward(&l, x, y, B, T);
        const double t1 = now_ms();
        nn_attention_backward_set(&l, dy, dx);
        tf[r] = t1 - t0;
        tb[r] = now_ms() - t1;
    }
    const double gflop = (double)(nn_flop_count() - f0) / (double)reps * 1e-9;
    // the two projections alone (the layer's own Linears on its own buffers), interleaved
    // the same way: what the heads take is the layer's time less these
    for (size_t r = 0; r < reps; r++) {
        const double t0 = now_ms();
        nn_linear_forward(&l.qkv, x, l.qkvbuf, B * T);
        nn_linear_forward(&l.proj, l.atty, y, B * T);
        const double t1 = now_ms();
        nn_linear_backward_set(&l.proj, dy, l.datty);
        nn_linear_backward_set(&l.qkv, l.dqkv, dx);
        lf[r] = t1 - t0;
        lb[r] = now_ms() - t1;
    }
    qsort(tf, reps, sizeof *tf, cmp_double);
    qsort(tb, reps, sizeof *tb, cmp_double);
    qsort(lf, reps, sizeof *lf, cmp_double);
    qsort(lb, reps, sizeof *lb, cmp_double);
    double cs = 0;
    for (size_t i = 0; i < n; i++)
        cs += (double)y[i] + (double)dx[i];
    printf("attention C %zu heads %zu T %zu B %zu %s: forward %.3f ms, backward %.3f ms "
           "(medians of %zu; the projections alone %.3f and %.3f), %.3f GFLOP counted, "
           "checksum %.6g\n",
           C, nh, T, B, causal ? "causal" : "full", tf[reps / 2], tb[reps / 2], reps, lf[reps / 2],
           lb[reps / 2], gflop, cs);
    nn_attention_free(&l);
    free(x), free(y), free(dy), free(dx), free(tf), free(tb), free(lf), free(lb);
    return 0;
}
