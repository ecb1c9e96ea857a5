/*
 * test_checkpoint.c — optimizer checkpoints: save -> load -> continue is bit-identical to an
 * uninterrupted run, for every method and for bf16 factors, between steps and mid-step,
 * under a changing loss scale; truncated, foreign, corrupted and mismatched files are
 * rejected with a message and leave the optimizer unchanged.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint.h"
#include "fileio.h"
#include "harness.h"
#include "ngd.h"
#include "tproblem.h"

static char tmpdir[256];

static const char *tmp_path(const char *name) {
    static char buf[512];
    struct stat st;
    if (!tmpdir[0] || stat(tmpdir, &st) != 0) { // (a test may have removed it)
        snprintf(tmpdir, sizeof tmpdir, "/tmp/ngd_ckpt_XXXXXX");
        if (!mkdtemp(tmpdir)) abort();
    }
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    return buf;
}

static ngd_config cfg_for(ngd_method m, int variant) {
    ngd_config c = ngd_config_default(m);
    c.T = 3;
    c.lr = 0.01f;
    if (variant == 1) { // structured + bf16 factors + normalize
        ngd_structure_parse("diagonal", &c.structure_K);
        c.structure_C.dtype = NGD_BF16;
        c.normalize_lr_cov = true;
    }
    if (m == NGD_METHOD_SGD) c.momentum = 0.9f, c.nesterov = true;
    // K-FAC family: short periods so that 12 steps cross statistics, refresh, Brand,
    // re-orthonormalisation and correction steps; rank 8 puts the wide factors of the
    // 30-20-5 problem on the low-rank (and, for B methods, the Brand) track
    c.kfac.T_u = 2, c.kfac.T_i = 3, c.kfac.rank = 8, c.kfac.reorth_every = 3;
    c.kfac.corr_mult = 2, c.kfac.wd_start = 4, c.kfac.seed = 7;
    if (variant == 1) {
        c.kfac.clip = NGD_CLIP_KL, c.kfac.tail = NGD_TAIL_MIN_KEPT;
        c.kfac.brand_truncate = NGD_BRAND_TRUNC_BEFORE_NEXT;
        c.kfac.damping_kind = NGD_KFAC_DAMP_FACTORED_PI;
        c.momentum = 0.5f;
    }
    return c;
}

static bool kfac_family(ngd_method m) { return m >= NGD_METHOD_KFAC && m <= NGD_METHOD_BRCKFAC; }

// The loss scale of step s in the scaled runs: powers of two that change from step to step,
// so s_{t-1} != s_t at the save point (step 6: a SINGD update step with T = 3, a K-FAC
// statistics and decomposition step with T_u = 2, T_i = 3).
static float scale_at(size_t s) {
    static const float sc[12] = {4, 2, 16, 2, 8, 8, 1, 32, 4, 2, 16, 8};
    return sc[s % 12];
}

// Where in step SAVE_AT the optimizer is saved: between steps (after step 5), after
// ngd_optim_set_grad_scale for step 6, after that and step 6's observe (mid-step), or after
// step 6's observe with its scale set only after the load, or set after that observe and
// before the save (ngd.torch's order: the pending statistics were observed at step 5's scale).
enum {
    SAVE_AT = 6,
    BETWEEN = 0,
    AFTER_SCALE = 1,
    AFTER_OBSERVE = 2,
    OBSERVE_UNSCALED = 3,
    OBSERVE_THEN_SCALE = 4
};

static void begin_step(ngd_optim *o, size_t s, bool scaled) {
    if (scaled) CHECK(ngd_optim_set_grad_scale(o, scale_at(s)) == NGD_OK);
}
static void backward(tp_problem *p, ngd_optim *o, size_t s, bool scaled) {
    tp_forward_backward(p, o, s, scaled ? scale_at(s) : 1.0f);
}
static void full_step(tp_problem *p, ngd_optim *o, size_t s, bool scaled) {
    begin_step(o, s, scaled);
    backward(p, o, s, scaled);
    CHECK(ngd_optim_step(o) == NGD_OK);
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *d = malloc(*n);
    if (fread(d, 1, *n, f) != *n) abort();
    fclose(f);
    return d;
}

// The file ngd_optim_save wrote at path (streamed) is the bytes of ngd_optim_save_mem.
static bool file_equals_save_mem(const ngd_optim *o, const char *path) {
    size_t n = 0, mlen = 0;
    unsigned char *d = read_bytes(path, &n);
    void *mem = NULL;
    const bool same =
        d && ngd_optim_save_mem(o, &mem, &mlen) == NGD_OK && mlen == n && memcmp(d, mem, n) == 0;
    free(d);
    free(mem);
    return same;
}

// Runs 12 steps uninterrupted, and the same steps with a save at `phase` of step 6, a fresh
// optimizer, a load, and the rest; the parameters must agree to the bit. `scaled`: every
// step's gradients carry that step's loss scale (set with ngd_optim_set_grad_scale), so the
// checkpoint must restore both s_{t-1} and s_t.
static void check_resume(ngd_method m, int variant, bool scaled, int phase) {
    ngd_config c = cfg_for(m, variant);
    if (scaled) c.init_grad_scale = scale_at(0);
    tp_problem a, b;
    // K-FAC family: batch 4 and a 30-20-5 net, wide enough for Brand-track factors
    const size_t N = kfac_family(m) ? 4 : 16, din = kfac_family(m) ? 30 : 9,
                 dh = kfac_family(m) ? 20 : 7;
    tp_init(&a, N, din, dh, 5, 11);
    tp_init(&b, N, din, dh, 5, 11);
    ngd_optim *oa, *ob, *oc;
    CHECK(ngd_optim_create(&c, &oa) == NGD_OK && ngd_optim_create(&c, &ob) == NGD_OK);
    CHECK(tp_register(&a, oa) == NGD_OK && tp_register(&b, ob) == NGD_OK);
    for (size_t s = 0; s < 12; s++)
        full_step(&a, oa, s, scaled);
    for (size_t s = 0; s < SAVE_AT; s++)
        full_step(&b, ob, s, scaled);
    // mid-step: the new scale (and the pending statistics of step 6) must survive too
    const bool scaled_before = phase == AFTER_SCALE || phase == AFTER_OBSERVE;
    const bool observed = phase >= AFTER_OBSERVE;
    if (scaled_before) begin_step(ob, SAVE_AT, scaled);
    if (observed) backward(&b, ob, SAVE_AT, scaled);
    if (phase == OBSERVE_THEN_SCALE) begin_step(ob, SAVE_AT, scaled);
    const char *path = tmp_path("resume.ckpt");
    CHECK(ngd_optim_save(ob, path) == NGD_OK);
    CHECK_MSG(file_equals_save_mem(ob, path), "%s variant %d: the file is not save_mem's bytes",
              ngd_method_name(m), variant);
    ngd_optim_free(ob);
    CHECK(ngd_optim_create(&c, &oc) == NGD_OK);
    tp_problem bb = b; // same parameter buffers, re-registered with a fresh optimizer
    CHECK(tp_register(&bb, oc) == NGD_OK);
    CHECK(ngd_optim_load(oc, path) == NGD_OK);
    CHECK(ngd_optim_steps(oc) == SAVE_AT);
    // the in-memory form is the same bytes as the file
    void *mem = NULL;
    size_t mlen = 0;
    CHECK(ngd_optim_save_mem(oc, &mem, &mlen) == NGD_OK && mlen > 0);
    CHECK(ngd_optim_load_mem(oc, mem, mlen) == NGD_OK);
    CHECK(ngd_optim_load_mem(oc, mem, mlen / 2) == NGD_ERR_FORMAT);
    free(mem);
    if (!scaled_before && phase != OBSERVE_THEN_SCALE) begin_step(oc, SAVE_AT, scaled);
    if (!observed) backward(&bb, oc, SAVE_AT, scaled);
    CHECK(ngd_optim_step(oc) == NGD_OK);
    for (size_t s = SAVE_AT + 1; s < 12; s++)
        full_step(&bb, oc, s, scaled);
    CHECK_MSG(memcmp(a.W1, bb.W1, din * dh * 4) == 0 && memcmp(a.W2, bb.W2, dh * 5 * 4) == 0 &&
                  memcmp(a.b1, bb.b1, dh * 4) == 0 && memcmp(a.b2, bb.b2, 5 * 4) == 0,
              "%s variant %d, %s, saved at phase %d of step %d: parameters differ",
              ngd_method_name(m), variant, scaled ? "changing loss scale" : "loss scale 1", phase,
              SAVE_AT);
    ngd_optim_free(oa);
    ngd_optim_free(oc);
    tp_free(&a);
    tp_free(&b);
    unlink(path);
}

static void resume_all(ngd_method m, int variant) {
    check_resume(m, variant, false, BETWEEN);
    check_resume(m, variant, true, BETWEEN);
    check_resume(m, variant, true, AFTER_SCALE);
    check_resume(m, variant, true, AFTER_OBSERVE);
    check_resume(m, variant, true, OBSERVE_UNSCALED); // (powers of two: rescaled exactly)
    check_resume(m, variant, true, OBSERVE_THEN_SCALE);
}

static void resume_should_be_bit_identical_for_every_method(void) {
    resume_all(NGD_METHOD_SGD, 0);
    resume_all(NGD_METHOD_ADAMW, 0);
    resume_all(NGD_METHOD_SINGD, 0);
    resume_all(NGD_METHOD_SINGD, 1);
    resume_all(NGD_METHOD_IKFAC, 0);
    for (int m = NGD_METHOD_KFAC; m <= NGD_METHOD_BRCKFAC; m++) {
        resume_all((ngd_method)m, 0);
        resume_all((ngd_method)m, 1);
    }
}

// Three runs of the 30-20-5 net on batches of 4 under one config: a, the reference (12 steps);
// u, the run that is saved after its first `at` steps; v, other weights and data, the same
// `at` steps (the used optimizer a checkpoint is then loaded into).
enum { TR_N = 4, TR_IN = 30, TR_H = 20, TR_OUT = 5 };
enum { TR_P = TR_IN * TR_H + TR_H + TR_H * TR_OUT + TR_OUT }; // the parameters, all four
typedef struct {
    tp_problem a, u, v;
    ngd_optim *oa, *ou, *ov;
    float trail[12][TR_P]; // a's parameters after each step (where a resumed run parts from it)
} three_runs;

static void tr_params(const tp_problem *p, float *out) {
    const size_t n1 = TR_IN * TR_H, n2 = TR_H * TR_OUT;
    memcpy(out, p->W1, n1 * 4), memcpy(out + n1, p->b1, TR_H * 4);
    memcpy(out + n1 + TR_H, p->W2, n2 * 4), memcpy(out + n1 + TR_H + n2, p->b2, TR_OUT * 4);
}

// v against a after step s: true when bit-identical; else *maxd is the largest difference
static bool tr_same_after(const three_runs *r, size_t s, double *maxd) {
    float now[TR_P];
    tr_params(&r->v, now);
    *maxd = 0;
    for (size_t i = 0; i < TR_P; i++)
        *maxd = fmax(*maxd, fabs((double)now[i] - (double)r->trail[s][i]));
    return memcmp(now, r->trail[s], sizeof now) == 0;
}

static void three_runs_start(three_runs *r, const ngd_config *c, size_t at) {
    tp_init(&r->a, TR_N, TR_IN, TR_H, TR_OUT, 11);
    tp_init(&r->u, TR_N, TR_IN, TR_H, TR_OUT, 11);
    tp_init(&r->v, TR_N, TR_IN, TR_H, TR_OUT, 12);
    CHECK(ngd_optim_create(c, &r->oa) == NGD_OK && ngd_optim_create(c, &r->ou) == NGD_OK &&
          ngd_optim_create(c, &r->ov) == NGD_OK);
    CHECK(tp_register(&r->a, r->oa) == NGD_OK && tp_register(&r->u, r->ou) == NGD_OK &&
          tp_register(&r->v, r->ov) == NGD_OK);
    for (size_t s = 0; s < 12; s++)
        full_step(&r->a, r->oa, s, false), tr_params(&r->a, r->trail[s]);
    for (size_t s = 0; s < at; s++)
        full_step(&r->u, r->ou, s, false), full_step(&r->v, r->ov, s, false);
}

// v takes u's parameters (gradients too, with grads) and the reference's data
static void three_runs_adopt(three_runs *r, bool grads) {
    const size_t n1 = TR_IN * TR_H, n2 = TR_H * TR_OUT;
    memcpy(r->v.W1, r->u.W1, n1 * 4), memcpy(r->v.b1, r->u.b1, TR_H * 4);
    memcpy(r->v.W2, r->u.W2, n2 * 4), memcpy(r->v.b2, r->u.b2, TR_OUT * 4);
    if (grads) {
        memcpy(r->v.gW1, r->u.gW1, n1 * 4), memcpy(r->v.gb1, r->u.gb1, TR_H * 4);
        memcpy(r->v.gW2, r->u.gW2, n2 * 4), memcpy(r->v.gb2, r->u.gb2, TR_OUT * 4);
    }
    r->v.seed = r->a.seed;
}

static bool three_runs_equal(const three_runs *r) {
    return memcmp(r->a.W1, r->v.W1, TR_IN * TR_H * 4) == 0 &&
           memcmp(r->a.W2, r->v.W2, TR_H * TR_OUT * 4) == 0 &&
           memcmp(r->a.b1, r->v.b1, TR_H * 4) == 0 && memcmp(r->a.b2, r->v.b2, TR_OUT * 4) == 0;
}

static void three_runs_free(three_runs *r) {
    ngd_optim_free(r->oa), ngd_optim_free(r->ou), ngd_optim_free(r->ov);
    tp_free(&r->a), tp_free(&r->u), tp_free(&r->v);
}

// A checkpoint loaded into an optimizer that has already run (K-FAC with π-damping: its layers
// hold inverse operators formed from other statistics) continues exactly as the run that saved
// it: the operators are formed again from the loaded decompositions. Saved after step 7, between
// the refreshes of steps 6 and 9.
static void load_into_a_used_optimizer_should_resume_bit_identically(void) {
    const ngd_config c = cfg_for(NGD_METHOD_KFAC, 1); // π-damping, T_i 3
    const size_t at = 8;
    static three_runs tr; // (the trail: 35 KB)
    three_runs *r = &tr;
    three_runs_start(r, &c, at);
    const char *path = tmp_path("used.ckpt");
    CHECK(ngd_optim_save(r->ou, path) == NGD_OK);
    CHECK(ngd_optim_load(r->ov, path) == NGD_OK);
    three_runs_adopt(r, false);
    size_t first = SIZE_MAX; // the first step after which v's parameters are not a's
    double d = 0;
    for (size_t s = at; s < 12; s++) {
        full_step(&r->v, r->ov, s, false);
        if (first == SIZE_MAX && !tr_same_after(r, s, &d)) first = s;
    }
    CHECK_MSG(first == SIZE_MAX && three_runs_equal(r),
              "K-FAC π-damping loaded into a used optimizer: parameters differ from step %zu on "
              "(largest difference %.3g after it)",
              first, d);
    three_runs_free(r);
    unlink(path);
}

static double max_rel_diff(const float *x, const float *y, size_t n) {
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++)
        e = fmax(e, fabs((double)x[i] - (double)y[i])), m = fmax(m, fabs((double)x[i]));
    return m > 0 ? e / m : e;
}

// SINGD from the step's rows (kfac.factored_apply, dense factors; the 30-20-5 net's batch of 4
// pays for both layers): saved between steps, it resumes bit for bit. Saved after an observe
// (the rows are not saved), into an optimizer that had observed other rows for the same step,
// the resumed step goes through Ĝ: the uninterrupted run's parameters to float32 rounding,
// not a step from the stale rows.
static void singd_from_rows_should_resume(void) {
    ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
    ngd_structure_parse("dense", &c.structure_K);
    ngd_structure_parse("dense", &c.structure_C);
    c.T = 3, c.lr = 0.01f, c.kfac.factored_apply = true;
    for (int phase = BETWEEN; phase <= AFTER_OBSERVE; phase += AFTER_OBSERVE) {
        three_runs r;
        three_runs_start(&r, &c, SAVE_AT);
        if (phase == AFTER_OBSERVE) backward(&r.u, r.ou, SAVE_AT, false);
        backward(&r.v, r.ov, SAVE_AT, false); // rows of other data, observed for this step
        const char *path = tmp_path("singd-rows.ckpt");
        CHECK(ngd_optim_save(r.ou, path) == NGD_OK);
        CHECK(ngd_optim_load(r.ov, path) == NGD_OK);
        three_runs_adopt(&r, phase == AFTER_OBSERVE);
        if (phase == AFTER_OBSERVE) // the saved step's gradient, not observed again
            CHECK(ngd_optim_step(r.ov) == NGD_OK);
        else
            full_step(&r.v, r.ov, SAVE_AT, false);
        for (size_t s = SAVE_AT + 1; s < 12; s++)
            full_step(&r.v, r.ov, s, false);
        const size_t n1 = TR_IN * TR_H, n2 = TR_H * TR_OUT;
        if (phase == BETWEEN)
            CHECK_MSG(three_runs_equal(&r),
                      "SINGD from the rows, saved between steps: parameters differ");
        else
            CHECK_MSG(max_rel_diff(r.a.W1, r.v.W1, n1) < 1e-5 &&
                          max_rel_diff(r.a.W2, r.v.W2, n2) < 1e-5,
                      "SINGD from the rows, saved after an observe: %.3g, %.3g",
                      max_rel_diff(r.a.W1, r.v.W1, n1), max_rel_diff(r.a.W2, r.v.W2, n2));
        three_runs_free(&r);
        unlink(path);
    }
}

static void write_bytes(const char *path, const unsigned char *d, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    fwrite(d, 1, n, f);
    fclose(f);
}

static void bad_files_should_be_rejected_and_leave_state_unchanged(void) {
    ngd_config c = cfg_for(NGD_METHOD_SINGD, 0);
    tp_problem p;
    tp_init(&p, 8, 6, 5, 4, 3);
    ngd_optim *o;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    CHECK(tp_register(&p, o) == NGD_OK);
    for (size_t s = 0; s < 4; s++)
        tp_step(&p, o, s);
    char good[512], bad[512];
    snprintf(good, sizeof good, "%s", tmp_path("good.ckpt"));
    snprintf(bad, sizeof bad, "%s", tmp_path("bad.ckpt"));
    CHECK(ngd_optim_save(o, good) == NGD_OK);
    size_t n = 0;
    unsigned char *d = read_bytes(good, &n);
    if (!d) abort();
    CHECK(d && n > 100);
    float K0[36];
    CHECK(ngd_optim_factor_dense(o, p.id1, 'K', K0, 6) == NGD_ERR_ARG); // wrong size
    float K[49], K2[49];
    CHECK(ngd_optim_factor_dense(o, p.id1, 'K', K, 7) == NGD_OK);
    // truncated
    write_bytes(bad, d, n / 2);
    CHECK(ngd_optim_load(o, bad) == NGD_ERR_FORMAT);
    CHECK(strstr(ngd_optim_errmsg(o), "checksum") != NULL);
    // too short
    write_bytes(bad, d, 5);
    CHECK(ngd_optim_load(o, bad) == NGD_ERR_FORMAT);
    CHECK(strstr(ngd_optim_errmsg(o), "too short") != NULL);
    // foreign
    const unsigned char junk[64] = "PK\x03\x04 this is a zip file, not a checkpoint..........";
    write_bytes(bad, junk, sizeof junk);
    CHECK(ngd_optim_load(o, bad) == NGD_ERR_FORMAT);
    CHECK(strstr(ngd_optim_errmsg(o), "bad magic") != NULL);
    // corrupted: one bit flipped in the middle
    d[n / 2] ^= 0x10;
    write_bytes(bad, d, n);
    CHECK(ngd_optim_load(o, bad) == NGD_ERR_FORMAT);
    d[n / 2] ^= 0x10;
    // missing
    CHECK(ngd_optim_load(o, tmp_path("does-not-exist.ckpt")) == NGD_ERR_IO);
    CHECK(strstr(ngd_optim_errmsg(o), "does-not-exist") != NULL);
    // unwritable destination
    CHECK(ngd_optim_save(o, "/nonexistent-dir/x.ckpt") == NGD_ERR_IO);
    // a destination that is not a regular file: refused, and left as it was (the commit's
    // rename replaced a FIFO, a symbolic link, a device node such as /dev/full, as root)
    {
        char fifo[512], link[512], dir[512];
        snprintf(fifo, sizeof fifo, "%s", tmp_path("a.fifo"));
        snprintf(link, sizeof link, "%s", tmp_path("a.link"));
        snprintf(dir, sizeof dir, "%s", tmp_path("a.dir"));
        unlink(fifo), unlink(link), rmdir(dir);
        CHECK(mkfifo(fifo, 0600) == 0 && symlink(good, link) == 0 && mkdir(dir, 0700) == 0);
        const char *paths[3] = {fifo, link, dir},
                   *kinds[3] = {"a FIFO", "a symbolic link", "a folder"};
        // loading from a FIFO without a writer: refused at once (it blocked in the open)
        CHECK(ngd_optim_load(o, fifo) == NGD_ERR_IO);
        CHECK(strstr(ngd_optim_errmsg(o), "not a regular file") != NULL);
        for (int i = 0; i < 3; i++) {
            CHECK(ngd_optim_save(o, paths[i]) == NGD_ERR_IO);
            CHECK_MSG(strstr(ngd_optim_errmsg(o), kinds[i]) &&
                          strstr(ngd_optim_errmsg(o), "refusing to replace it"),
                      "save to %s: %s", kinds[i], ngd_optim_errmsg(o));
        }
        struct stat sb;
        CHECK(lstat(fifo, &sb) == 0 && S_ISFIFO(sb.st_mode));
        CHECK(lstat(link, &sb) == 0 && S_ISLNK(sb.st_mode));
        CHECK(lstat(dir, &sb) == 0 && S_ISDIR(sb.st_mode));
        unlink(fifo), unlink(link), rmdir(dir);
    }
    // state unchanged by all of the above
    CHECK(ngd_optim_factor_dense(o, p.id1, 'K', K2, 7) == NGD_OK);
    CHECK(memcmp(K, K2, sizeof K) == 0);
    CHECK(ngd_optim_steps(o) == 4);
    // from another method
    ngd_config ca = ngd_config_default(NGD_METHOD_ADAMW);
    ngd_optim *oa;
    tp_problem q;
    tp_init(&q, 8, 6, 5, 4, 3);
    CHECK(ngd_optim_create(&ca, &oa) == NGD_OK && tp_register(&q, oa) == NGD_OK);
    CHECK(ngd_optim_load(oa, good) == NGD_ERR_FORMAT);
    CHECK(strstr(ngd_optim_errmsg(oa), "method 'singd'") != NULL);
    ngd_optim_free(oa);
    tp_free(&q);
    // from another model (different width)
    ngd_optim *ow;
    tp_init(&q, 8, 6, 4, 4, 3);
    CHECK(ngd_optim_create(&c, &ow) == NGD_OK && tp_register(&q, ow) == NGD_OK);
    CHECK(ngd_optim_load(ow, good) == NGD_ERR_FORMAT);
    CHECK(strstr(ngd_optim_errmsg(ow), "fc1") != NULL);
    ngd_optim_free(ow);
    tp_free(&q);
    // from other structures
    ngd_config cd = c;
    ngd_structure_parse("diagonal", &cd.structure_K);
    CHECK(ngd_optim_create(&cd, &ow) == NGD_OK);
    tp_init(&q, 8, 6, 5, 4, 3);
    CHECK(tp_register(&q, ow) == NGD_OK);
    CHECK(ngd_optim_load(ow, good) == NGD_ERR_FORMAT);
    ngd_optim_free(ow);
    tp_free(&q);
    free(d);
    unlink(bad);
    unlink(good);
    ngd_optim_free(o);
    tp_free(&p);
    rmdir(tmpdir);
}

// A B-KFAC layer decides its factor tracks at its first statistics, or takes them from a
// checkpoint's "#meta" while the load checks the file. A load that fails on a later entry
// (another name) must leave the layer undecided: the same state bytes and the same steps,
// bit for bit, as an optimizer that never saw the file.
typedef struct {
    float W[2][24], dW[2][24];
    ngd_optim *o;
} two_layers;

static void two_layers_make(two_layers *n, const char *second) {
    ngd_config c = ngd_config_default(NGD_METHOD_BKFAC);
    c.kfac.T_u = 1, c.kfac.T_i = 1, c.kfac.rank = 2;
    CHECK(ngd_optim_create(&c, &n->o) == NGD_OK);
    for (int l = 0; l < 2; l++)
        for (int i = 0; i < 24; i++)
            n->W[l][i] = 0.1f * (float)(i % 5), n->dW[l][i] = 0.01f * (float)(i % 3);
    int id;
    ngd_layer a = {
        .name = "fc0", .weight = n->W[0], .weight_grad = n->dW[0], .d_out = 4, .d_in = 6};
    ngd_layer b = {
        .name = second, .weight = n->W[1], .weight_grad = n->dW[1], .d_out = 4, .d_in = 6};
    CHECK(ngd_optim_add_layer(n->o, &a, &id) == NGD_OK &&
          ngd_optim_add_layer(n->o, &b, &id) == NGD_OK);
}

static void two_layers_train(two_layers *n, size_t rows, int steps) {
    static float A[8 * 6], G[8 * 4];
    for (size_t i = 0; i < 8 * 6; i++)
        A[i] = (float)((i * 37) % 11) * 0.1f - 0.5f;
    for (size_t i = 0; i < 8 * 4; i++)
        G[i] = (float)((i * 29) % 7) * 0.1f - 0.3f;
    for (int s = 0; s < steps; s++) {
        for (int l = 0; l < 2; l++)
            CHECK(ngd_optim_observe(n->o, l, rows, ngd_matrix_f32(A, rows, 6),
                                    ngd_matrix_f32(G, rows, 4)) == NGD_OK);
        CHECK(ngd_optim_step(n->o) == NGD_OK);
    }
}

// dst and ref trained alike from here (8-row statistics, 5 steps): the same weights, bit for
// bit, and the same ranks
static void two_layers_same_from_here(two_layers *dst, two_layers *ref) {
    two_layers_train(dst, 8, 5); // 8 rows: other tracks than a 2-row decision's
    two_layers_train(ref, 8, 5);
    CHECK(memcmp(dst->W, ref->W, sizeof dst->W) == 0);
    ngd_layer_health hd, hr;
    CHECK(ngd_optim_layer_health(dst->o, 0, &hd) == NGD_OK);
    CHECK(ngd_optim_layer_health(ref->o, 0, &hr) == NGD_OK);
    CHECK(hd.rank_A == hr.rank_A && hd.rank_G == hr.rank_G);
}

static void failed_load_should_leave_undecided_tracks_undecided(void) {
    two_layers src, dst, ref;
    two_layers_make(&src, "other");
    two_layers_train(&src, 2, 3); // tracks decided from 2-row statistics
    void *buf;
    size_t len;
    CHECK(ngd_optim_save_mem(src.o, &buf, &len) == NGD_OK);
    two_layers_make(&dst, "fc1");
    two_layers_make(&ref, "fc1");
    CHECK(ngd_optim_load_mem(dst.o, buf, len) == NGD_ERR_FORMAT);
    CHECK(strstr(ngd_optim_errmsg(dst.o), "'other'") != NULL);
    CHECK(ngd_optim_state_bytes(dst.o) == ngd_optim_state_bytes(ref.o));
    two_layers_same_from_here(&dst, &ref);
    free(buf);
    ngd_optim_free(src.o), ngd_optim_free(dst.o), ngd_optim_free(ref.o);
}

// A checkpoint taken before the first step (the B layers' tracks not yet decided) loads into
// an optimizer that has stepped (it was refused: "saved with other factor tracks (0/0 ...)"):
// the layers are undecided again, and the run from there is bit for bit a fresh optimizer's.
// A load of such a file that fails on a later entry leaves the decided optimizer as it was,
// its factors included (the same checkpoint bytes).
static void checkpoint_before_any_step_should_load_into_a_stepped_optimizer(void) {
    two_layers init, dst, ref, other;
    two_layers_make(&init, "fc1");
    void *buf0, *bufd, *bufd2, *bufo;
    size_t len0, lend, lend2, leno;
    CHECK(ngd_optim_save_mem(init.o, &buf0, &len0) == NGD_OK);
    two_layers_make(&dst, "fc1");
    two_layers_train(&dst, 2, 3); // tracks decided from 2-row statistics
    CHECK(ngd_optim_steps(dst.o) == 3);
    // a file saved undecided, whose second layer has another name: refused, nothing changed
    two_layers_make(&other, "other");
    CHECK(ngd_optim_save_mem(other.o, &bufo, &leno) == NGD_OK);
    CHECK(ngd_optim_save_mem(dst.o, &bufd, &lend) == NGD_OK);
    CHECK(ngd_optim_load_mem(dst.o, bufo, leno) == NGD_ERR_FORMAT);
    CHECK(strstr(ngd_optim_errmsg(dst.o), "'other'") != NULL);
    CHECK(ngd_optim_save_mem(dst.o, &bufd2, &lend2) == NGD_OK);
    CHECK(lend2 == lend && memcmp(bufd, bufd2, lend) == 0);
    // the matching file: loaded, and from there the same steps as a fresh optimizer
    CHECK_MSG(ngd_optim_load_mem(dst.o, buf0, len0) == NGD_OK, "%s", ngd_optim_errmsg(dst.o));
    CHECK(ngd_optim_steps(dst.o) == 0);
    two_layers_make(&ref, "fc1");
    memcpy(dst.W, ref.W, sizeof dst.W); // (the weights are the caller's, not the checkpoint's)
    two_layers_same_from_here(&dst, &ref);
    CHECK(ngd_optim_state_bytes(dst.o) == ngd_optim_state_bytes(ref.o));
    free(buf0), free(bufd), free(bufd2), free(bufo);
    ngd_optim_free(init.o), ngd_optim_free(dst.o), ngd_optim_free(ref.o), ngd_optim_free(other.o);
}

// A writer killed mid-write (kill -9) leaves "<path>.tmp.<pid>" behind, as large as the
// file; the next atomic write of the same path removes it when that pid is dead, and nothing
// else: live writers' temporaries, other paths' and names not of exactly that form stay.
static bool exists(const char *dir, const char *name) {
    char p[512];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return lstat(p, &st) == 0;
}
// ---- the factors' structures in a SINGD checkpoint ----

static uint64_t rd64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}
static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

// A checkpoint's trailing CRC written again for its n bytes.
static void crc_again(unsigned char *d, size_t n) {
    const uint32_t crc = ngd_crc32(d, n - 4);
    for (int b = 0; b < 4; b++)
        d[n - 4 + (size_t)b] = (unsigned char)(crc >> (8 * b));
}

// The checkpoint d (n bytes) as a libngd without the "?structure" check wrote it: its '?'
// arrays left out, each entry's array count lowered, the CRC written again. Returns the
// new length (written into out, n bytes at most), or 0 if the walk fails.
static size_t without_checks(const unsigned char *d, size_t n, unsigned char *out) {
    size_t i = 8 + 4 + 4 + 8 + 12, o = 0;
    const uint32_t ne = rd32(d + i);
    i += 4;
    memcpy(out, d, i), o = i;
    for (uint32_t e = 0; e < ne; e++) {
        const size_t head = 4 + rd32(d + i) + 4 + 3 * 8 + 8 + 4 + 4 * 8;
        memcpy(out + o, d + i, head), i += head, o += head;
        const uint32_t na = rd32(d + i);
        const size_t at_na = o;
        memcpy(out + o, d + i, 4), i += 4, o += 4;
        uint32_t kept = 0;
        for (uint32_t k = 0; k < na; k++) {
            const size_t ln = rd32(d + i), type = rd32(d + i + 4 + ln);
            const uint64_t count = rd64(d + i + 8 + ln);
            const size_t el = type == 0 ? 4 : type == 1 ? 2 : type == 3 ? 8 : 1;
            const size_t len = 4 + ln + 4 + 8 + count * el;
            if (i + len > n - 4) return 0;
            if (d[i + 4] != '?') memcpy(out + o, d + i, len), o += len, kept++;
            i += len;
        }
        out[at_na] = (unsigned char)kept, out[at_na + 1] = out[at_na + 2] = out[at_na + 3] = 0;
    }
    if (i != n - 4) return 0;
    crc_again(out, o + 4);
    return o + 4;
}

static ngd_optim *singd_with(const char *structure, tp_problem *p) {
    ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
    c.T = 1;
    CHECK(ngd_structure_parse(structure, &c.structure_K) == NGD_OK);
    c.structure_C = c.structure_K;
    ngd_optim *o = NULL;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    tp_init(p, 8, 6, 5, 4, 3);
    CHECK(tp_register(p, o) == NGD_OK);
    return o;
}

// A diagonal factor and a Toeplitz one (or two corner classes, or hierarchical (1,2) and
// (2,1)) store as many numbers: a checkpoint of one loaded silently into the other, its
// numbers read as the other's. The structures are now in the file and must match; a file
// written before that still loads.
static void checkpoints_should_refuse_other_factor_structures(void) {
    const char *pairs[][2] = {{"diagonal", "triltoeplitz"},
                              {"triltoeplitz", "triutoeplitz"},
                              {"hierarchical1_2", "hierarchical2_1"},
                              {"block2diagonal", "block3diagonal"}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        tp_problem pa, pb;
        ngd_optim *a = singd_with(pairs[i][0], &pa), *b = singd_with(pairs[i][1], &pb);
        for (size_t s = 0; s < 2; s++)
            CHECK(tp_step(&pa, a, s) == NGD_OK);
        void *mem = NULL;
        size_t n = 0;
        CHECK(ngd_optim_save_mem(a, &mem, &n) == NGD_OK);
        float K[49], K2[49];
        CHECK(ngd_optim_factor_dense(b, pb.id1, 'K', K, 7) == NGD_OK);
        if (strcmp(pairs[i][0], "block2diagonal") == 0) {
            CHECK(ngd_optim_load_mem(b, mem, n) != NGD_OK); // (the counts differ already)
        } else {
            CHECK(ngd_optim_load_mem(b, mem, n) == NGD_ERR_FORMAT);
            CHECK_MSG(strstr(ngd_optim_errmsg(b), "other factor structures") != NULL,
                      "%s into %s: %s", pairs[i][0], pairs[i][1], ngd_optim_errmsg(b));
        }
        CHECK(ngd_optim_factor_dense(b, pb.id1, 'K', K2, 7) == NGD_OK);
        CHECK(memcmp(K, K2, sizeof K) == 0); // (unchanged by the refused load)
        // the same structure loads, with the check and without it (an earlier file)
        tp_problem pc;
        ngd_optim *c = singd_with(pairs[i][0], &pc);
        CHECK(ngd_optim_load_mem(c, mem, n) == NGD_OK);
        unsigned char *old = malloc(n);
        const size_t on = old ? without_checks(mem, n, old) : 0;
        CHECK(on > 0 && on < n);
        tp_problem pd;
        ngd_optim *d = singd_with(pairs[i][0], &pd);
        CHECK(on > 0 && ngd_optim_load_mem(d, old, on) == NGD_OK);
        CHECK(ngd_optim_steps(d) == 2);
        float Ka[49], Kd[49];
        CHECK(ngd_optim_factor_dense(a, pa.id1, 'K', Ka, 7) == NGD_OK);
        CHECK(ngd_optim_factor_dense(d, pd.id1, 'K', Kd, 7) == NGD_OK);
        CHECK(memcmp(Ka, Kd, sizeof Ka) == 0);
        free(old), free(mem);
        ngd_optim_free(a), ngd_optim_free(b), ngd_optim_free(c), ngd_optim_free(d);
        tp_free(&pa), tp_free(&pb), tp_free(&pc), tp_free(&pd);
    }
}

// The data offset of entry `entry`'s array `name` in checkpoint d (n bytes), or 0.
static size_t array_at(const unsigned char *d, size_t n, uint32_t entry, const char *name) {
    size_t i = 8 + 4 + 4 + 8 + 12;
    const uint32_t ne = rd32(d + i);
    i += 4;
    for (uint32_t e = 0; e < ne && i < n; e++) {
        i += 4 + rd32(d + i) + 4 + 3 * 8 + 8 + 4 + 4 * 8;
        const uint32_t na = rd32(d + i);
        i += 4;
        for (uint32_t k = 0; k < na && i < n; k++) {
            const size_t ln = rd32(d + i), type = rd32(d + i + 4 + ln);
            const uint64_t count = rd64(d + i + 8 + ln);
            const size_t el = type == 0 ? 4 : type == 1 ? 2 : type == 3 ? 8 : 1;
            if (e == entry && ln == strlen(name) && memcmp(d + i + 4, name, ln) == 0)
                return i + 4 + ln + 4 + 8;
            i += 4 + ln + 4 + 8 + count * el;
        }
    }
    return 0;
}

// A K-FAC-family checkpoint's counters index its buffers: a rank past (U, D) read past D,
// pending rows near 2^64 wrapped the next observe's room check (a heap write), a Brand track
// the columns do not allow failed every step (fc1's 21-wide A factor: a Brand track at 4
// rows a step and r_B = 3). A CRC only says the file is undamaged: such
// values, in an intact file, are refused and the optimizer left as it was.
#define KF_TRACK_BRAND 3 // (kfac.h's KF_BRAND, as the file stores it)
static void kfac_counters_past_their_buffers_should_be_refused(void) {
    const ngd_method ms[] = {NGD_METHOD_BKFAC, NGD_METHOD_KFAC, NGD_METHOD_BRCKFAC};
    const struct {
        uint32_t entry;
        const char *array;
        size_t at;
        uint64_t v;
    } bad[] = {{0, "A.cnt", 2, 1000},
               {0, "G.cnt", 2, (uint64_t)1 << 40},
               {0, "~pend", 1, UINT64_MAX},
               {0, "~pend", 1, (uint64_t)1 << 31},
               {1, "#meta", 4, KF_TRACK_BRAND}, // (fc2's G is 4 wide: no Brand track at 4 rows)
               {0, "#meta", 1, 1000},           // (fc1's Brand track: r_B + 1000 > 21)
               {0, "#meta", 2, (uint64_t)1 << 32}};
    for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++)
        for (size_t bi = 0; bi < sizeof bad / sizeof bad[0]; bi++) {
            ngd_config c = ngd_config_default(ms[mi]);
            c.kfac.T_u = 1, c.kfac.T_i = 2, c.kfac.rank = 3;
            c.kfac.factored_apply = true;
            tp_problem pa, pb;
            ngd_optim *a = NULL, *b = NULL;
            CHECK(ngd_optim_create(&c, &a) == NGD_OK && ngd_optim_create(&c, &b) == NGD_OK);
            tp_init(&pa, 4, 20, 16, 4, 3), tp_init(&pb, 4, 20, 16, 4, 3);
            CHECK(tp_register(&pa, a) == NGD_OK && tp_register(&pb, b) == NGD_OK);
            for (size_t s = 0; s < 3; s++)
                CHECK(tp_step(&pa, a, s) == NGD_OK);
            tp_forward_backward(&pa, a, 3, 1.0f); // (pending statistics and rows)
            void *mem = NULL;
            size_t n = 0;
            CHECK(ngd_optim_save_mem(a, &mem, &n) == NGD_OK);
            unsigned char *d = mem;
            const size_t off = array_at(d, n, bad[bi].entry, bad[bi].array);
            CHECK(off > 0);
            if (off == 0) continue;
            // (tracks: only where the saved layer is a B one, whose tracks load_meta takes)
            if (bad[bi].array[0] == '#' && ms[mi] == NGD_METHOD_KFAC) {
                free(mem), ngd_optim_free(a), ngd_optim_free(b), tp_free(&pa), tp_free(&pb);
                continue;
            }
            for (int k = 0; k < 8; k++)
                d[off + 8 * bad[bi].at + (size_t)k] = (unsigned char)(bad[bi].v >> (8 * k));
            crc_again(d, n);
            // (into a fresh optimizer, and one whose layers decided their tracks already)
            {
                tp_problem pc;
                ngd_optim *cdec = NULL;
                CHECK(ngd_optim_create(&c, &cdec) == NGD_OK);
                tp_init(&pc, 4, 20, 16, 4, 3);
                CHECK(tp_register(&pc, cdec) == NGD_OK && tp_step(&pc, cdec, 0) == NGD_OK);
                CHECK_MSG(ngd_optim_load_mem(cdec, d, n) == NGD_ERR_FORMAT, "decided, %s %s[%zu]",
                          ngd_method_name(ms[mi]), bad[bi].array, bad[bi].at);
                CHECK(tp_step(&pc, cdec, 1) == NGD_OK);
                ngd_optim_free(cdec), tp_free(&pc);
            }
            CHECK(ngd_optim_load_mem(b, d, n) == NGD_ERR_FORMAT);
            CHECK_MSG(ngd_optim_load_mem(b, d, n) == NGD_ERR_FORMAT, "%s %s[%zu] = %llu: %s",
                      ngd_method_name(ms[mi]), bad[bi].array, bad[bi].at,
                      (unsigned long long)bad[bi].v, ngd_optim_errmsg(b));
            // b is usable as it was: it trains like a fresh optimizer
            for (size_t s = 0; s < 3; s++)
                CHECK(tp_step(&pb, b, s) == NGD_OK);
            free(mem), ngd_optim_free(a), ngd_optim_free(b), tp_free(&pa), tp_free(&pb);
        }
}

static void touch(const char *dir, const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (f) fputs("stale", f), fclose(f);
}
static void atomic_write_should_remove_stale_temporaries_of_dead_writers(void) {
    char dir[64] = "/tmp/ngd_stale_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(!"mkdtemp");
        return;
    }
    pid_t dead = fork(); // a process that has exited: its pid names no live process
    if (dead == 0) _exit(0);
    CHECK(dead > 0 && waitpid(dead, NULL, 0) == dead);
    // [0]: the dead writer's temporary of run.ckpt; [1]: of rel.ckpt; [2]: a live writer's
    // (our parent); the rest are not of the form or belong to another path
    const char *form[10][2] = {{"run.ckpt.tmp.", ""},     {"rel.ckpt.tmp.", ""},
                               {"run.ckpt.tmp.", ""},     {"run.ckpt.tmp.", "x"},
                               {"run.ckpt.tmp.0", ""},    {"run.ckpt.tmp.-", ""},
                               {"other.ckpt.tmp.", ""},   {"xrun.ckpt.tmp.", ""},
                               {"run.ckpt.tmp.", ".bak"}, {"run.ckpt.tmp", ""}};
    char names[10][64];
    for (int i = 0; i < 10; i++) {
        snprintf(names[i], sizeof names[i], "%s%ld%s", form[i][0],
                 i == 2 ? (long)getppid() : (long)dead, form[i][1]);
        touch(dir, names[i]);
    }
    touch(dir, "run.ckpt.tmp.1"); // init: alive
    char path[128], msg[256];
    snprintf(path, sizeof path, "%s/run.ckpt", dir);
    CHECK(ngd_write_atomic_bytes(path, "new", 3, msg, sizeof msg) == 0);
    CHECK(!exists(dir, names[0])); // the dead writer's temporary of this path
    for (int i = 2; i < 10; i++)
        CHECK_MSG(exists(dir, names[i]), "%s was removed", names[i]);
    CHECK(exists(dir, "run.ckpt.tmp.1") && exists(dir, names[1]) && exists(dir, "run.ckpt"));
    // a path without a folder: the current one
    pid_t child = fork();
    if (child == 0) {
        int ok = chdir(dir) == 0 && ngd_write_atomic_bytes("rel.ckpt", "x", 1, NULL, 0) == 0;
        _exit(ok ? 0 : 1);
    }
    int status = -1;
    CHECK(child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) &&
          WEXITSTATUS(status) == 0);
    CHECK(!exists(dir, names[1]) && exists(dir, "rel.ckpt"));
    char p[1024];
    for (int i = 0; i < 10; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    const char *rest[3] = {"run.ckpt.tmp.1", "run.ckpt", "rel.ckpt"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, rest[i]);
        unlink(p);
    }
    CHECK(rmdir(dir) == 0);
}

// ---- the streamed writer: what goes through its small buffer is what memory would hold ----

// The same values into any writer: every kind, arrays longer than a small stream buffer, and
// a part with a CRC of its own in the middle (as a training checkpoint holds the optimizer's).
// Returns the part's CRC; its offset and length in *at and *len.
static uint32_t write_mix(ngd_wbuf *w, uint64_t *at, uint64_t *len) {
    static float f[1000];
    static uint16_t h[777];
    static uint64_t q[300];
    static unsigned char b[333];
    for (size_t i = 0; i < 1000; i++)
        f[i] = (float)i * 0.37f - 100.0f;
    for (size_t i = 0; i < 777; i++)
        h[i] = (uint16_t)(i * 40503u);
    for (size_t i = 0; i < 300; i++)
        q[i] = (uint64_t)i * 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < 333; i++)
        b[i] = (unsigned char)(i * 7);
    ngd_wbuf_bytes(w, "MIX\r\n", 5);
    ngd_wbuf_u32(w, 0xdeadbeefu);
    ngd_wbuf_u64(w, 0x0102030405060708ull);
    ngd_wbuf_f32(w, -1.5f);
    ngd_wbuf_str(w, "name");
    ngd_wbuf_f32s(w, f, 1000);
    *at = ngd_wbuf_size(w);
    ngd_wbuf_part_begin(w);
    ngd_wbuf_u16s(w, h, 777);
    ngd_wbuf_bytes(w, b, 333);
    ngd_wbuf_u64s(w, q, 300);
    ngd_wbuf_f32s(w, f, 3);
    *len = ngd_wbuf_size(w) - *at;
    const uint32_t part = ngd_wbuf_part_crc(w);
    ngd_wbuf_u32(w, part);
    ngd_wbuf_u64s(w, q, 7);
    return part;
}

static void streamed_writer_should_write_the_bytes_of_the_memory_one(void) {
    ngd_wbuf m = {0};
    uint64_t at, len, at2, len2;
    const uint32_t part = write_mix(&m, &at, &len);
    const uint32_t crc = ngd_wbuf_crc(&m);
    CHECK(!m.oom && m.len == 5 + 4 + 8 + 4 + 8 + 4000 + len + 4 + 56 && len == 1554 + 333 + 2412);
    CHECK(crc == ngd_crc32(m.buf, m.len));
    CHECK(part == ngd_crc32(m.buf + at, len));
    // little-endian, whatever the host
    CHECK(m.buf[5] == 0xef && m.buf[8] == 0xde && m.buf[9] == 0x08 && m.buf[16] == 0x01);
    CHECK(m.buf[at] == 0 && m.buf[at + 2] == (unsigned char)40503u &&
          m.buf[at + 3] == (unsigned char)(40503u >> 8));
    ngd_wbuf c = ngd_wbuf_count();
    write_mix(&c, &at2, &len2);
    CHECK(c.len == m.len && at2 == at && len2 == len && !c.oom);
    char path[512], msg[256];
    snprintf(path, sizeof path, "%s", tmp_path("mix.bin"));
    // buffers smaller than one array, of odd sizes, and the default
    const size_t sizes[] = {8, 9, 13, 64, 1000, 4096, 0};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        ngd_wbuf w;
        CHECK(ngd_wbuf_open(&w, path, sizes[k], msg, sizeof msg) == 0);
        const uint32_t p2 = write_mix(&w, &at2, &len2);
        const uint32_t c2 = ngd_wbuf_crc(&w);
        CHECK_MSG(p2 == part && c2 == crc && at2 == at && len2 == len,
                  "stream of %zu bytes: CRCs %08x %08x, want %08x %08x", sizes[k], p2, c2, part,
                  crc);
        CHECK(ngd_wbuf_commit(&w, path, msg, sizeof msg) == 0);
        CHECK(w.buf == NULL && w.tmp == NULL); // freed
        size_t n = 0;
        unsigned char *d = read_bytes(path, &n);
        CHECK_MSG(d && n == m.len && memcmp(d, m.buf, n) == 0,
                  "stream of %zu bytes: the file differs from memory", sizes[k]);
        free(d);
    }
    // the in-memory buffer committed whole: the same file
    unlink(path);
    CHECK(ngd_write_atomic(path, &m, msg, sizeof msg) == 0);
    size_t n = 0;
    unsigned char *d = read_bytes(path, &n);
    CHECK(d && n == m.len && memcmp(d, m.buf, n) == 0);
    free(d);
    // a streamed write abandoned (ngd_wbuf_free before the commit) leaves no temporary
    ngd_wbuf w;
    CHECK(ngd_wbuf_open(&w, path, 64, msg, sizeof msg) == 0);
    write_mix(&w, &at2, &len2);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(access(tmp, F_OK) == 0);
    ngd_wbuf_free(&w);
    CHECK(access(tmp, F_OK) != 0 && errno == ENOENT);
    d = read_bytes(path, &n); // and the file as it was
    CHECK(d && n == m.len && memcmp(d, m.buf, n) == 0);
    free(d);
    ngd_wbuf_free(&m);
    unlink(path);
}

// A 700-600-10 net: optimizer states of several MiB, larger than the stream's buffer.
enum { BIG_N = 8, BIG_IN = 700, BIG_H = 600, BIG_OUT = 10 };

static ngd_config big_config(int which) {
    static const ngd_method ms[] = {NGD_METHOD_SINGD, NGD_METHOD_SINGD, NGD_METHOD_KFAC,
                                    NGD_METHOD_BKFAC, NGD_METHOD_ADAMW};
    ngd_config c = ngd_config_default(ms[which]);
    c.lr = 1e-4f, c.lr_cov = 1e-5f;
    c.T = 1, c.kfac.T_u = 1, c.kfac.T_i = 2, c.kfac.rank = 300, c.kfac.seed = 3;
    if (ms[which] != NGD_METHOD_ADAMW) c.momentum = 0.9f;
    if (which == 1) c.structure_K.dtype = c.structure_C.dtype = NGD_BF16; // dense, bf16
    return c;
}
static const char *const big_names[] = {"SINGD dense f32", "SINGD dense bf16", "K-FAC", "B-KFAC",
                                        "AdamW"};

// An optimizer of big_config(which) after 3 steps on p (initialised here).
static ngd_optim *big_trained(int which, tp_problem *p) {
    const ngd_config c = big_config(which);
    ngd_optim *o = NULL;
    tp_init(p, BIG_N, BIG_IN, BIG_H, BIG_OUT, 21);
    CHECK(ngd_optim_create(&c, &o) == NGD_OK && tp_register(p, o) == NGD_OK);
    for (size_t s = 0; s < 3; s++) {
        const ngd_status st = tp_step(p, o, s);
        CHECK_MSG(st == NGD_OK, "%s: step %zu: status %d %s", big_names[which], s, (int)st,
                  ngd_optim_errmsg(o));
    }
    return o;
}

// ngd_optim_save streams the state into the file: the file is ngd_optim_save_mem's bytes, for
// states several times the stream's buffer (dense and bf16 SINGD factors, K-FAC's
// decompositions, B-KFAC's low-rank tracks, AdamW's moments), and it loads back to the same
// state (its ngd_optim_save_mem bytes again).
static void large_checkpoint_should_stream_and_round_trip(void) {
    for (int which = 0; which < 5; which++) {
        tp_problem p, q;
        ngd_optim *o = big_trained(which, &p), *o2 = NULL;
        const char *path = tmp_path("big.ckpt");
        CHECK(ngd_optim_save(o, path) == NGD_OK);
        size_t n = 0;
        unsigned char *d = read_bytes(path, &n);
        CHECK_MSG(d && n > 3 * NGD_WBUF_STREAM, "%s: %zu bytes, want several MiB", big_names[which],
                  n);
        CHECK_MSG(file_equals_save_mem(o, path), "%s: the file is not save_mem's bytes",
                  big_names[which]);
        const ngd_config c = big_config(which);
        tp_init(&q, BIG_N, BIG_IN, BIG_H, BIG_OUT, 22);
        CHECK(ngd_optim_create(&c, &o2) == NGD_OK && tp_register(&q, o2) == NGD_OK);
        CHECK_MSG(ngd_optim_load(o2, path) == NGD_OK, "%s: %s", big_names[which],
                  ngd_optim_errmsg(o2));
        CHECK_MSG(file_equals_save_mem(o2, path), "%s: loaded, it saves other bytes",
                  big_names[which]);
        free(d);
        ngd_optim_free(o), ngd_optim_free(o2);
        tp_free(&p), tp_free(&q);
        unlink(path);
    }
}

// A write that fails mid-stream (the file-size limit, RLIMIT_FSIZE, between the first and
// the second MiB written out): the error names the temporary file and errno as before
// ("save: write PATH.tmp.PID: File too large"), the temporary is removed, and the checkpoint
// already at the path is untouched.
static void failed_streamed_save_should_keep_the_old_file(void) {
    tp_problem p;
    ngd_optim *o = big_trained(0, &p);
    char path[512], tmp[600], want[800];
    snprintf(path, sizeof path, "%s", tmp_path("keep.ckpt"));
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(ngd_optim_save(o, path) == NGD_OK); // the checkpoint that must survive
    size_t n0 = 0;
    unsigned char *old = read_bytes(path, &n0);
    CHECK(old && n0 > 2 * NGD_WBUF_STREAM);
    CHECK(tp_step(&p, o, 3) == NGD_OK); // other state to write
    struct rlimit lim, small;
    CHECK(getrlimit(RLIMIT_FSIZE, &lim) == 0);
    small = lim;
    small.rlim_cur = NGD_WBUF_STREAM + 1000;
    if (lim.rlim_max != RLIM_INFINITY && lim.rlim_max < small.rlim_cur)
        small.rlim_cur = lim.rlim_max;
    void (*was)(int) = signal(SIGXFSZ, SIG_IGN); // (else the process is killed: ngd ignores it)
    CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);
    const ngd_status s = ngd_optim_save(o, path);
    // the in-memory path's message is the same
    ngd_wbuf m = {0};
    ngd_optim_write(o, &m);
    char msg[800];
    const int rc = ngd_write_atomic(path, &m, msg, sizeof msg);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    signal(SIGXFSZ, was);
    ngd_wbuf_free(&m);
    snprintf(want, sizeof want, "save: write %s: %s", tmp, strerror(EFBIG));
    CHECK(s == NGD_ERR_IO);
    CHECK_MSG(strcmp(ngd_optim_errmsg(o), want) == 0, "message '%s', want '%s'",
              ngd_optim_errmsg(o), want);
    CHECK(rc == -1 && strcmp(msg, want + 6) == 0);
    CHECK(access(tmp, F_OK) != 0 && errno == ENOENT);
    size_t n = 0;
    unsigned char *now = read_bytes(path, &n);
    CHECK(now && n == n0 && memcmp(now, old, n) == 0);
    // unlimited again, the save goes through
    CHECK(ngd_optim_save(o, path) == NGD_OK && file_equals_save_mem(o, path));
    free(old), free(now);
    ngd_optim_free(o);
    tp_free(&p);
    unlink(path);
}

static const test_case TESTS[] = {
    TEST(resume_should_be_bit_identical_for_every_method),
    TEST(load_into_a_used_optimizer_should_resume_bit_identically),
    TEST(singd_from_rows_should_resume),
    TEST(bad_files_should_be_rejected_and_leave_state_unchanged),
    TEST(failed_load_should_leave_undecided_tracks_undecided),
    TEST(checkpoint_before_any_step_should_load_into_a_stepped_optimizer),
    TEST(checkpoints_should_refuse_other_factor_structures),
    TEST(kfac_counters_past_their_buffers_should_be_refused),
    TEST(atomic_write_should_remove_stale_temporaries_of_dead_writers),
    TEST(streamed_writer_should_write_the_bytes_of_the_memory_one),
    TEST(large_checkpoint_should_stream_and_round_trip),
    TEST(failed_streamed_save_should_keep_the_old_file),
};
int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
