/*
 * capi_ref.c — the C side of python/tests/test_numpy.py's bit-for-bit comparison: runs a
 * fixed two-layer + one-parameter problem through the C API, reading the initial values and
 * every step's gradients and statistics from a file that the Python test wrote, and writes
 * the final parameters and the optimizer checkpoint (ngd_optim_save).
 * usage: capi_ref METHOD DATA OUT_PARAMS OUT_CKPT   (METHOD: singd or kfac)
 * Built by tests/test_python.sh against the build's libngd.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngd.h"

enum { B = 8, I1 = 10, O1 = 6, O2 = 4, NP = 5, STEPS = 6 };

static int rd(FILE *f, float *x, size_t n) { return fread(x, sizeof(float), n, f) == n ? 0 : -1; }

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: capi_ref METHOD DATA OUT_PARAMS OUT_CKPT\n");
        return 2;
    }
    static float W1[O1 * I1], b1[O1], W2[O2 * O1], b2[O2], p[NP];
    static float gW1[O1 * I1], gb1[O1], gW2[O2 * O1], gb2[O2], gp[NP];
    static float a1[B * I1], g1[B * O1], a2[B * O1], g2[B * O2];
    FILE *f = fopen(argv[2], "rb");
    if (!f || rd(f, W1, O1 * I1) || rd(f, b1, O1) || rd(f, W2, O2 * O1) || rd(f, b2, O2) ||
        rd(f, p, NP)) {
        fprintf(stderr, "capi_ref: cannot read %s\n", argv[2]);
        return 1;
    }
    const int kfac = strcmp(argv[1], "kfac") == 0;
    ngd_config cfg = ngd_config_default(kfac ? NGD_METHOD_KFAC : NGD_METHOD_SINGD);
    cfg.lr = 0.05f;
    cfg.weight_decay = 1e-3f;
    if (kfac) {
        cfg.kfac.T_u = 1;
        cfg.kfac.T_i = 2;
        cfg.kfac.wd_start = 0;
    } else {
        cfg.T = 2;
        cfg.damping = 1e-2f;
        cfg.lr_cov = 5e-2f;
        cfg.structure_K.kind = NGD_STRUCT_DIAG;
    }
    ngd_config pov = ngd_config_default(NGD_METHOD_ADAMW);
    pov.lr = 1e-2f;
    ngd_optim *o;
    int id1, id2, idp;
    ngd_layer L1 = {"fc1", W1, gW1, O1, I1, b1, gb1, NULL};
    ngd_layer L2 = {"fc2", W2, gW2, O2, O1, b2, gb2, NULL};
    if (ngd_optim_create(&cfg, &o) || ngd_optim_add_layer(o, &L1, &id1) ||
        ngd_optim_add_layer(o, &L2, &id2) ||
        ngd_optim_add_param(o, "scale", p, gp, NP, &pov, &idp)) {
        fprintf(stderr, "capi_ref: setup failed\n");
        return 1;
    }
    for (int t = 0; t < STEPS; t++) {
        if (rd(f, gW1, O1 * I1) || rd(f, gb1, O1) || rd(f, a1, B * I1) || rd(f, g1, B * O1) ||
            rd(f, gW2, O2 * O1) || rd(f, gb2, O2) || rd(f, a2, B * O1) || rd(f, g2, B * O2) ||
            rd(f, gp, NP)) {
            fprintf(stderr, "capi_ref: %s ends early\n", argv[2]);
            return 1;
        }
        if (ngd_optim_layer_wants_stats(o, id1) &&
            ngd_optim_observe(o, id1, B, ngd_matrix_f32(a1, B, I1), ngd_matrix_f32(g1, B, O1)))
            return 1;
        if (ngd_optim_layer_wants_stats(o, id2) &&
            ngd_optim_observe(o, id2, B, ngd_matrix_f32(a2, B, O1), ngd_matrix_f32(g2, B, O2)))
            return 1;
        if (ngd_optim_step(o) != NGD_OK) {
            fprintf(stderr, "capi_ref: step %d: %s\n", t, ngd_optim_errmsg(o));
            return 1;
        }
    }
    fclose(f);
    FILE *out = fopen(argv[3], "wb");
    if (!out) return 1;
    fwrite(W1, sizeof W1, 1, out), fwrite(b1, sizeof b1, 1, out), fwrite(W2, sizeof W2, 1, out);
    fwrite(b2, sizeof b2, 1, out), fwrite(p, sizeof p, 1, out);
    fclose(out);
    if (ngd_optim_save(o, argv[4]) != NGD_OK) return 1;
    ngd_optim_free(o);
    return 0;
}
