/*
 * test_nomem.c — every call is all-or-nothing under allocation failure (include/ngd.h,
 * "Errors and memory"): libngd's allocations go through src/core/alloc.c, whose test hook
 * (ngd_alloc_fail_at) makes the k-th allocation from now fail. For every method and every k
 * up to the allocations of a whole run (creation, registration, planning and several steps),
 * a run with allocation k failing must see a clean NGD_ERR_NOMEM (with a message) from the
 * one call that hit it, find the parameters and the saved state (ngd_optim_save_mem, pending
 * statistics included) exactly as before that call, and, retrying the call, end bit-identical
 * to a run that never failed. And once the first step is done, nothing allocates any more, so
 * NGD_ERR_NOMEM cannot come after it.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "impl.h"
#include "ngd.h"
#include "ref.h"

// Two fully connected layers (one with a bias) and a plain parameter; batch NB. The sizes
// let the B methods put both factors of the first layer on the Brand track (r_B + n < d).
enum { NB = 4, DI1 = 12, DO1 = 8, DI2 = 8, DO2 = 5, NP = 7, STEPS = 6 };
enum {
    OFF_W1 = 0,
    OFF_B1 = OFF_W1 + DO1 * DI1,
    OFF_W2 = OFF_B1 + DO1,
    OFF_P = OFF_W2 + DO2 * DI2,
    NPAR = OFF_P + NP
};

typedef struct {
    float w[NPAR], g[NPAR];                                       // parameters, gradients
    float a1[NB * DI1], g1[NB * DO1], a2[NB * DI2], g2[NB * DO2]; // statistics
} problem;

static void problem_init(problem *P) {
    ref_rng r = {11};
    for (size_t i = 0; i < NPAR; i++)
        P->w[i] = (float)ref_uniform(&r, -0.5, 0.5);
}

// This step's gradients and statistics: drawn from (seed, step), whatever the state.
static void problem_draw(problem *P, size_t step) {
    ref_rng r = {1000 + step};
    for (size_t i = 0; i < NPAR; i++)
        P->g[i] = (float)ref_uniform(&r, -0.2, 0.2);
    for (size_t i = 0; i < NB * DI1; i++)
        P->a1[i] = (float)ref_uniform(&r, -1, 1);
    for (size_t i = 0; i < NB * DO1; i++)
        P->g1[i] = (float)ref_uniform(&r, -0.1, 0.1);
    for (size_t i = 0; i < NB * DI2; i++)
        P->a2[i] = (float)ref_uniform(&r, -1, 1);
    for (size_t i = 0; i < NB * DO2; i++)
        P->g2[i] = (float)ref_uniform(&r, -0.1, 0.1);
}

typedef struct {
    void *buf;
    size_t len;
    float w[NPAR];
} snapshot;

// Saves the state and copies the parameters; allocations here are not counted or failed.
static void snap(ngd_optim *o, const problem *P, snapshot *S) {
    ngd_alloc_pause(true);
    S->buf = NULL, S->len = 0;
    ngd_status s = ngd_optim_save_mem(o, &S->buf, &S->len);
    CHECK(s == NGD_OK);
    memcpy(S->w, P->w, sizeof S->w);
    ngd_alloc_pause(false);
}

typedef struct {
    problem *P;
    ngd_optim *o;
    bool stepped; // a step has completed
    size_t nomem; // NGD_ERR_NOMEM seen (each retried)
    uint64_t allocs_after_first_step;
    size_t ws_first; // ngd_optim_workspace_bytes after the first step
    int ids[3];
} run_state;

typedef enum { OP_ADD1, OP_ADD2, OP_ADDP, OP_OBS1, OP_OBS2, OP_STEP } op_kind;

static ngd_status do_op(run_state *R, op_kind k) {
    problem *P = R->P;
    switch (k) {
    case OP_ADD1: {
        ngd_layer l = {"fc1", P->w + OFF_W1, P->g + OFF_W1, DO1,
                       DI1,   P->w + OFF_B1, P->g + OFF_B1, NULL};
        return ngd_optim_add_layer(R->o, &l, &R->ids[0]);
    }
    case OP_ADD2: {
        ngd_layer l = {"fc2", P->w + OFF_W2, P->g + OFF_W2, DO2, DI2, NULL, NULL, NULL};
        return ngd_optim_add_layer(R->o, &l, &R->ids[1]);
    }
    case OP_ADDP:
        return ngd_optim_add_param(R->o, "p", P->w + OFF_P, P->g + OFF_P, NP, NULL, &R->ids[2]);
    case OP_OBS1:
        return ngd_optim_observe(R->o, R->ids[0], NB, ngd_matrix_f32(P->a1, NB, DI1),
                                 ngd_matrix_f32(P->g1, NB, DO1));
    case OP_OBS2:
        return ngd_optim_observe(R->o, R->ids[1], NB, ngd_matrix_f32(P->a2, NB, DI2),
                                 ngd_matrix_f32(P->g2, NB, DO2));
    default: return ngd_optim_step(R->o);
    }
}

// One call; on NGD_ERR_NOMEM: checks that nothing changed, then retries it (the hook fails
// one allocation only).
static void attempt(run_state *R, op_kind k) {
    const uint64_t before = ngd_alloc_count();
    for (;;) {
        snapshot S0;
        snap(R->o, R->P, &S0);
        ngd_status s = do_op(R, k);
        if (s != NGD_ERR_NOMEM) {
            CHECK_MSG(s == NGD_OK, "op %d: %s (%s)", (int)k, ngd_status_str(s),
                      ngd_optim_errmsg(R->o));
            free(S0.buf);
            break;
        }
        R->nomem++;
        CHECK_MSG(!R->stepped, "op %d: NGD_ERR_NOMEM after the first step", (int)k);
        CHECK(ngd_optim_errmsg(R->o)[0] != '\0');
        snapshot S1;
        snap(R->o, R->P, &S1);
        CHECK_MSG(S1.len == S0.len && memcmp(S1.buf, S0.buf, S0.len) == 0,
                  "op %d: the state changed in a failed call", (int)k);
        CHECK_MSG(memcmp(S1.w, S0.w, sizeof S0.w) == 0,
                  "op %d: parameters changed in a failed call", (int)k);
        free(S0.buf), free(S1.buf);
    }
    if (R->stepped) {
        R->allocs_after_first_step += ngd_alloc_count() - before;
        CHECK(ngd_optim_workspace_bytes(R->o) == R->ws_first); // planned once, counted
    }
    if (k == OP_STEP && !R->stepped) {
        R->stepped = true;
        R->ws_first = ngd_optim_workspace_bytes(R->o);
        CHECK(R->ws_first > 0);
    }
}

// A whole run with allocation k failing (0: none). Returns the allocations it made; the
// final parameters and state in *P and *fin.
static uint64_t run(const ngd_config *c, uint64_t k, problem *P, snapshot *fin, size_t *nomem,
                    uint64_t *after_first) {
    problem_init(P);
    run_state R = {.P = P};
    ngd_alloc_fail_at(k);
    ngd_status s;
    while ((s = ngd_optim_create(c, &R.o)) == NGD_ERR_NOMEM) {
        CHECK(R.o == NULL);
        R.nomem++;
    }
    CHECK(s == NGD_OK);
    if (s != NGD_OK) return 0;
    attempt(&R, OP_ADD1);
    attempt(&R, OP_ADD2);
    attempt(&R, OP_ADDP);
    for (size_t t = 0; t < STEPS; t++) {
        problem_draw(P, t);
        if (ngd_optim_layer_wants_stats(R.o, R.ids[0])) attempt(&R, OP_OBS1);
        if (ngd_optim_layer_wants_stats(R.o, R.ids[1])) attempt(&R, OP_OBS2);
        attempt(&R, OP_STEP);
    }
    const uint64_t n = ngd_alloc_count();
    ngd_alloc_fail_at(0);
    snap(R.o, P, fin);
    ngd_optim_free(R.o);
    *nomem = R.nomem;
    *after_first = R.allocs_after_first_step;
    return n;
}

static ngd_config method_config(int which, const char **label) {
    static const struct {
        ngd_method m;
        const char *label;
    } M[] = {
        {NGD_METHOD_SGD, "sgd"},         {NGD_METHOD_ADAMW, "adamw"},
        {NGD_METHOD_SINGD, "singd"},     {NGD_METHOD_KFAC, "kfac"},
        {NGD_METHOD_KFAC, "kfac kl"},    {NGD_METHOD_RSKFAC, "rskfac"},
        {NGD_METHOD_SREKFAC, "srekfac"}, {NGD_METHOD_RSKFAC, "rskfac factored"},
        {NGD_METHOD_BKFAC, "bkfac"},     {NGD_METHOD_BRKFAC, "brkfac"},
        {NGD_METHOD_BRCKFAC, "brckfac"}, {NGD_METHOD_BKFAC, "bkfac factored"},
    };
    ngd_config c = ngd_config_default(M[which].m);
    *label = M[which].label;
    c.lr = 0.05f;
    if (M[which].m == NGD_METHOD_SGD) c.momentum = 0.9f, c.nesterov = true;
    if (M[which].m == NGD_METHOD_SINGD) c.T = 2;
    c.kfac.T_u = 1, c.kfac.T_i = 2, c.kfac.rank = 3, c.kfac.reorth_every = 2;
    c.kfac.corr_mult = 1, c.kfac.wd_start = 1;
    if (strstr(*label, "kl")) c.kfac.clip = NGD_CLIP_KL;
    if (strstr(*label, "factored")) c.kfac.factored_apply = true;
    return c;
}

#define N_METHODS 12

static void every_failed_allocation_should_leave_the_optimizer_unchanged(void) {
    problem *P = malloc(sizeof *P);
    for (int m = 0; m < N_METHODS; m++) {
        const char *label;
        const ngd_config c = method_config(m, &label);
        snapshot clean;
        size_t nomem = 0;
        uint64_t after = 0;
        const uint64_t n = run(&c, 0, P, &clean, &nomem, &after);
        CHECK_MSG(n > 5 && nomem == 0, "%s: %llu allocations, %zu failures", label,
                  (unsigned long long)n, nomem);
        CHECK_MSG(after == 0, "%s: %llu allocations after the first step", label,
                  (unsigned long long)after);
        size_t failures = 0, mismatches = 0;
        for (uint64_t k = 1; k <= n; k++) {
            snapshot fin;
            size_t nm = 0;
            uint64_t af = 0;
            run(&c, k, P, &fin, &nm, &af);
            failures += nm;
            const bool same = fin.len == clean.len && memcmp(fin.buf, clean.buf, clean.len) == 0 &&
                              memcmp(fin.w, clean.w, sizeof clean.w) == 0;
            if (!same) mismatches++;
            CHECK_MSG(nm == 1, "%s: allocation %llu failed: %zu NGD_ERR_NOMEM seen", label,
                      (unsigned long long)k, nm);
            CHECK_MSG(same, "%s: allocation %llu failed: the retried run differs", label,
                      (unsigned long long)k);
            free(fin.buf);
        }
        NOTE("%s: %llu allocations, each failed once: %zu NGD_ERR_NOMEM, %zu differing runs", label,
             (unsigned long long)n, failures, mismatches);
        free(clean.buf);
    }
    free(P);
}

// The hook itself: the k-th allocation fails, the others succeed, a paused hook neither
// counts nor fails.
static void alloc_hook_should_fail_exactly_the_kth(void) {
    ngd_alloc_fail_at(2);
    void *a = ngd_malloc(3, 4), *b = ngd_malloc(3, 4), *c = ngd_calloc(2, 2);
    CHECK(a != NULL && b == NULL && c != NULL);
    CHECK(ngd_alloc_count() == 3);
    ngd_alloc_fail_at(1);
    ngd_alloc_pause(true);
    void *d = ngd_strdup("x");
    CHECK(d != NULL && ngd_alloc_count() == 0);
    ngd_alloc_pause(false);
    CHECK(ngd_strdup("y") == NULL);
    ngd_alloc_fail_at(0);
    ngd_free(a), ngd_free(c), ngd_free(d);
}

// Non-finite statistics on a Brand-track factor (finite gradients): the step goes through,
// the lost batch counted, instead of failing in the second layer after the first was updated.
static void nonfinite_brand_statistics_should_not_fail_a_step(void) {
    problem *P = malloc(sizeof *P);
    const char *label;
    const ngd_config c = method_config(8, &label); // bkfac
    problem_init(P);
    ngd_optim *o = NULL;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    run_state R = {.P = P, .o = o};
    CHECK(do_op(&R, OP_ADD1) == NGD_OK && do_op(&R, OP_ADD2) == NGD_OK);
    CHECK(do_op(&R, OP_ADDP) == NGD_OK);
    for (size_t t = 0; t < 3; t++) {
        problem_draw(P, t);
        if (t == 1) P->a2[3] = INFINITY;
        CHECK(do_op(&R, OP_OBS1) == NGD_OK && do_op(&R, OP_OBS2) == NGD_OK);
        const ngd_status s = do_op(&R, OP_STEP);
        CHECK_MSG(s == NGD_OK, "step %zu: %s (%s)", t, ngd_status_str(s), ngd_optim_errmsg(o));
    }
    ngd_layer_health h1, h2;
    CHECK(ngd_optim_layer_health(o, R.ids[0], &h1) == NGD_OK);
    CHECK(ngd_optim_layer_health(o, R.ids[1], &h2) == NGD_OK);
    CHECK(h1.decomp_failures == 0 && h2.decomp_failures == 1);
    bool finite = true;
    for (size_t i = 0; i < NPAR; i++)
        finite = finite && isfinite(P->w[i]);
    CHECK(finite);
    ngd_optim_free(o);
    free(P);
}

static const test_case TESTS[] = {
    TEST(nonfinite_brand_statistics_should_not_fail_a_step),
    TEST(alloc_hook_should_fail_exactly_the_kth),
    TEST(every_failed_allocation_should_leave_the_optimizer_unchanged),
};

int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
