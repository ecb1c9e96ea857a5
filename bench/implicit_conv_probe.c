/*
 * implicit_conv_probe.c — is an im2col-free ("implicit GEMM") forward worth building for the
 * 3x3 stride-1 'same' convolutions of the cnn and vgg16bn? One sample's forward two ways,
 * single-threaded, as the engine's threads run them:
 *   im2col: nn_conv2d itself (its chunk of one image, blocks of 256 output columns);
 *   implicit: the input copied once into a zero-bordered (H+2) x (W+2) plane per channel,
 *     then nine GEMMs y' (c_out, H·(W+2)) += W_tap (c_out, c_in) · X_pad shifted by the tap
 *     (a strided view, no copy), and y' cropped to (c_out, H·W).
 * The two outputs are compared (they differ only by the order of the sum). No part of ngd:
 * the evidence behind docs/benchmarks.md's note on it. `make bench` builds it
 * (build/bench/implicit_conv_probe); run it with c_in c_out H (best of 5 repetitions of 20):
 *
 *   OMP_NUM_THREADS=1 build/bench/implicit_conv_probe 64 64 32
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nn.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s c_in c_out H\n", argv[0]);
        return 2;
    }
    size_t dims[3];
    for (int i = 0; i < 3; i++) {
        char *end;
        const long v = strtol(argv[i + 1], &end, 10);
        if (*end || end == argv[i + 1] || v < 1 || v > 4096) {
            fprintf(stderr, "%s: '%s' is not a size in [1, 4096] (usage: %s c_in c_out H)\n",
                    argv[0], argv[i + 1], argv[0]);
            return 2;
        }
        dims[i] = (size_t)v;
    }
    const size_t C = dims[0], CO = dims[1], H = dims[2];
    const size_t W = H, L = H * W, Wp = W + 2, Hp = H + 2, Lp = H * Wp, din = C * 9;
    nn_rng rng;
    nn_rng_seed(&rng, 1);
    nn_conv2d l;
    const ngd_conv_geom g = {C, H, W, 3, 3, 1, 1, 1, 1, 1, 1, 1};
    if (nn_conv2d_init(&l, &g, CO, false, 1, &rng) != NN_OK) return 1;
    float *x = malloc(C * L * sizeof(float)), *y = malloc(CO * L * sizeof(float));
    float *y2 = malloc(CO * L * sizeof(float)), *w9 = malloc(9 * CO * C * sizeof(float));
    float *xp = calloc(C * Hp * Wp + 2, sizeof(float)), *yp = malloc(CO * Lp * sizeof(float));
    if (!x || !y || !y2 || !w9 || !xp || !yp) return 1;
    nn_rng_fill_uniform(&rng, x, C * L, -1.0f, 1.0f);
    for (size_t t = 0; t < 9; t++) // w9[tap] (c_out, c_in)
        for (size_t o = 0; o < CO; o++)
            for (size_t c = 0; c < C; c++)
                w9[(t * CO + o) * C + c] = l.w[o * din + c * 9 + t];
    double best1 = 1e9, best2 = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        for (int k = 0; k < 20; k++)
            nn_conv2d_forward(&l, x, y, 1);
        best1 = fmin(best1, (now() - t0) / 20);
        t0 = now();
        for (int k = 0; k < 20; k++) {
            for (size_t c = 0; c < C; c++)
                for (size_t i = 0; i < H; i++)
                    memcpy(xp + c * Hp * Wp + (i + 1) * Wp + 1, x + c * L + i * W,
                           W * sizeof(float));
            for (size_t t = 0; t < 9; t++)
                nn_sgemm(false, false, CO, Lp, C, 1.0f, w9 + t * CO * C, C,
                         xp + (t / 3) * Wp + t % 3, Hp * Wp, t ? 1.0f : 0.0f, yp, Lp);
            for (size_t o = 0; o < CO; o++)
                for (size_t i = 0; i < H; i++)
                    memcpy(y2 + o * L + i * W, yp + o * Lp + i * Wp, W * sizeof(float));
        }
        best2 = fmin(best2, (now() - t0) / 20);
    }
    double maxd = 0;
    for (size_t i = 0; i < CO * L; i++)
        maxd = fmax(maxd, fabs((double)y[i] - (double)y2[i]));
    const double f = 2.0 * (double)(CO * L * din);
    printf("c_in %zu c_out %zu %zux%zu: im2col+GEMM %.1f GFLOP/s, implicit %.1f GFLOP/s (%.2fx), "
           "max |diff| %.2g\n",
           C, CO, H, W, f / best1 / 1e9, f / best2 / 1e9, best1 / best2, maxd);
    nn_conv2d_free(&l);
    free(x), free(y), free(y2), free(w9), free(xp), free(yp);
    return 0;
}
