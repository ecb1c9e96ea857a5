/*
 * test_api_errors.c — every error path of the public API returns its status, leaves a
 * message naming the problem, and leaves the handle usable (sqlite3_errmsg discipline).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ngd.h"
#include "tproblem.h"

static void config_validation_should_name_the_field(void) {
    char msg[256];
    ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_OK);
    c.lr = -1;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "lr"));
    c = ngd_config_default(NGD_METHOD_SINGD), c.T = 0;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "T "));
    c = ngd_config_default(NGD_METHOD_SINGD), c.damping = NAN;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "damping"));
    c = ngd_config_default(NGD_METHOD_SINGD), c.alpha1 = -0.1f;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "alpha1"));
    c = ngd_config_default(NGD_METHOD_SINGD), c.momentum = 1.0f;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "momentum"));
    c = ngd_config_default(NGD_METHOD_SINGD), c.structure_K.kind = (ngd_structure)77;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "structure_K"));
    c = ngd_config_default(NGD_METHOD_SINGD), c.structure_C.kind = NGD_STRUCT_BLOCKDIAG;
    c.structure_C.block = 0;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "block"));
    c = ngd_config_default(NGD_METHOD_SINGD), c.damping = -1;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "damping"));
    c = ngd_config_default(NGD_METHOD_IKFAC), c.damping = -1e-3f;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "damping"));
    c = ngd_config_default(NGD_METHOD_SINGD), c.damping = 0; // no damping is allowed
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_OK);
    c = ngd_config_default(NGD_METHOD_SINGD), c.alpha1 = 1.0f;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "alpha1"));
    c = ngd_config_default(NGD_METHOD_SINGD), c.alpha1 = 0.99f;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_OK);
    c = ngd_config_default(NGD_METHOD_SGD), c.damping = -1; // not SINGD's: not its business
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_OK);
    c = ngd_config_default(NGD_METHOD_KFAC), c.kfac.eig_zero_tol = NAN;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "eig_zero_tol"));
    c = ngd_config_default(NGD_METHOD_KFAC), c.kfac.eig_zero_tol = -1e-3f;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "eig_zero_tol"));
    c = ngd_config_default(NGD_METHOD_SINGD), c.lr_cov = -1;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "lr_cov"));
    c = ngd_config_default(NGD_METHOD_SGD), c.nesterov = true;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG && strstr(msg, "nesterov"));
    c = ngd_config_default(NGD_METHOD_SINGD), c.loss_average = (ngd_loss_average)9;
    CHECK(ngd_config_validate(&c, msg, sizeof msg) == NGD_ERR_ARG);
    c.method = (ngd_method)99;
    ngd_optim *o = (ngd_optim *)&c;
    CHECK(ngd_optim_create(&c, &o) == NGD_ERR_ARG && o == NULL);
    CHECK(ngd_optim_create(NULL, &o) == NGD_ERR_ARG);
    CHECK(ngd_config_validate(NULL, msg, sizeof msg) == NGD_ERR_ARG);
}

static void names_should_parse_both_spellings(void) {
    ngd_factor_spec f = {0};
    CHECK(ngd_structure_parse("block30diagonal", &f) == NGD_OK && f.kind == NGD_STRUCT_BLOCKDIAG &&
          f.block == 30);
    CHECK(ngd_structure_parse("hierarchical15_15", &f) == NGD_OK && f.kind == NGD_STRUCT_HIER &&
          f.k1 == 15 && f.k2 == 15);
    CHECK(ngd_structure_parse("hierarchical3_2", &f) == NGD_OK && f.k1 == 3 && f.k2 == 2);
    CHECK(ngd_structure_parse("diag", &f) == NGD_OK && f.kind == NGD_STRUCT_DIAG);
    CHECK(ngd_structure_parse("triutoeplitz", &f) == NGD_OK && f.kind == NGD_STRUCT_TRIU_TOEPLITZ);
    CHECK(ngd_structure_parse("block0diagonal", &f) == NGD_ERR_ARG);
    // dtype: bf16 kept, anything that is no dtype (garbage in a fresh local) becomes f32
    f.dtype = NGD_BF16;
    CHECK(ngd_structure_parse("dense", &f) == NGD_OK && f.dtype == NGD_BF16);
    memset(&f, 0xAB, sizeof f);
    CHECK(ngd_structure_parse("dense", &f) == NGD_OK && f.dtype == NGD_F32 &&
          f.kind == NGD_STRUCT_DENSE && f.block == 30 && f.k1 == 15 && f.k2 == 15);
    CHECK(ngd_structure_parse("hierarchical15", &f) == NGD_ERR_ARG);
    CHECK(ngd_structure_parse("toeplitz", &f) == NGD_ERR_ARG);
    for (int s = 0; s < NGD_STRUCT_COUNT; s++) {
        ngd_factor_spec g = {0};
        CHECK(ngd_structure_parse(ngd_structure_name((ngd_structure)s), &g) == NGD_OK &&
              g.kind == (ngd_structure)s);
    }
    ngd_method m;
    for (int i = 0; i < NGD_METHOD_COUNT; i++)
        CHECK(ngd_method_parse(ngd_method_name((ngd_method)i), &m) == NGD_OK && m == (ngd_method)i);
    CHECK(ngd_method_parse("adam", &m) == NGD_ERR_ARG);
    CHECK(ngd_method_name((ngd_method)99) == NULL);
}

static void bad_calls_should_fail_cleanly_and_keep_the_handle_usable(void) {
    ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
    c.T = 1;
    ngd_optim *o;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    tp_problem p;
    tp_init(&p, 8, 4, 3, 2, 1);
    int id;
    // add_layer argument errors
    ngd_layer L = {.name = "x", .weight = p.W1, .weight_grad = NULL, .d_out = 3, .d_in = 4};
    CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_ERR_ARG && strstr(ngd_optim_errmsg(o), "'x'"));
    L.weight_grad = p.gW1, L.d_in = 0;
    CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_ERR_ARG && strstr(ngd_optim_errmsg(o), "d_in"));
    L.d_in = 4, L.bias = p.b1;
    CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_ERR_ARG && strstr(ngd_optim_errmsg(o), "bias"));
    CHECK(ngd_optim_add_layer(o, NULL, &id) == NGD_ERR_ARG);
    CHECK(ngd_optim_add_param(o, "p", p.b2, NULL, 2, NULL, &id) == NGD_ERR_ARG);
    ngd_config ov = ngd_config_default(NGD_METHOD_ADAMW);
    L.bias = NULL, L.override = &ov;
    CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_ERR_ARG && strstr(ngd_optim_errmsg(o), "method"));
    // names a checkpoint can hold: NGD_NAME_MAX bytes, not one more
    char longname[NGD_NAME_MAX + 2];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    L.override = NULL, L.name = longname;
    CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_ERR_ARG);
    CHECK(strstr(ngd_optim_errmsg(o), "layer name of 256 bytes") != NULL);
    CHECK(ngd_optim_add_param(o, longname, p.b2, p.gb2, 2, NULL, &id) == NGD_ERR_ARG);
    CHECK(strstr(ngd_optim_errmsg(o), "param name of 256 bytes") != NULL);
    longname[NGD_NAME_MAX] = '\0'; // NGD_NAME_MAX bytes: registered, saved and loaded back
    {
        ngd_optim *o1, *o2;
        int i1, i2;
        void *ck;
        size_t ckn;
        CHECK(ngd_optim_create(&c, &o1) == NGD_OK && ngd_optim_create(&c, &o2) == NGD_OK);
        CHECK(ngd_optim_add_param(o1, longname, p.b2, p.gb2, 2, NULL, &i1) == NGD_OK);
        CHECK(ngd_optim_add_param(o2, longname, p.b2, p.gb2, 2, NULL, &i2) == NGD_OK);
        CHECK(ngd_optim_save_mem(o1, &ck, &ckn) == NGD_OK);
        CHECK(ngd_optim_load_mem(o2, ck, ckn) == NGD_OK);
        free(ck);
        ngd_optim_free(o1), ngd_optim_free(o2);
    }
    L.name = "x";
    // d_in + 1 (the bias column) must not wrap
    L.d_in = SIZE_MAX, L.bias = p.b1, L.bias_grad = p.gb1;
    CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_ERR_ARG);
    CHECK(strstr(ngd_optim_errmsg(o), "overflows") != NULL);
    L.d_in = 4, L.bias = NULL, L.bias_grad = NULL;
    CHECK(ngd_optim_count(o) == 0);
    // a huge layer: out of memory, reported, nothing registered
    L.override = NULL, L.d_out = (size_t)1 << 27, L.d_in = (size_t)1 << 27;
    CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_ERR_NOMEM);
    CHECK(ngd_optim_count(o) == 0);
    // the handle still works
    CHECK(tp_register(&p, o) == NGD_OK && ngd_optim_count(o) == 2);
    // observe errors
    tp_forward_backward(&p, NULL, 0, 1.0f);
    ngd_matrix a = ngd_matrix_f32(p.x, 8, 4), g = ngd_matrix_f32(p.dh, 8, 3);
    CHECK(ngd_optim_observe(o, 7, 8, a, g) == NGD_ERR_LAYER && strstr(ngd_optim_errmsg(o), "7"));
    CHECK(ngd_optim_observe(o, -1, 8, a, g) == NGD_ERR_LAYER);
    ngd_matrix a5 = ngd_matrix_f32(p.x, 8, 5);
    CHECK(ngd_optim_observe(o, p.id1, 8, a5, g) == NGD_ERR_SHAPE);
    CHECK(strstr(ngd_optim_errmsg(o), "a has 5 columns, expected 4") != NULL);
    CHECK(ngd_optim_observe(o, p.id1, 3, a, g) == NGD_ERR_SHAPE); // 8 rows not a multiple of 3
    CHECK(ngd_optim_observe(o, p.id1, 0, a, g) == NGD_ERR_ARG);
    ngd_matrix an = a;
    an.data = NULL;
    CHECK(ngd_optim_observe(o, p.id1, 8, an, g) == NGD_ERR_ARG);
    an = a, an.dtype = (ngd_dtype)5;
    CHECK(ngd_optim_observe(o, p.id1, 8, an, g) == NGD_ERR_ARG);
    // rows whose size overflows (a segfault in the reads, a QA pass found)
    ngd_matrix ah = a, gh = g;
    ah.rows = gh.rows = SIZE_MAX / 32 * 8;
    CHECK(ngd_optim_observe(o, p.id1, 8, ah, gh) == NGD_ERR_SHAPE &&
          strstr(ngd_optim_errmsg(o), "its size overflows"));
    // a preconditioner-update step without statistics: NGD_ERR_STATE naming the layer
    CHECK(ngd_optim_step(o) == NGD_ERR_STATE && strstr(ngd_optim_errmsg(o), "fc1"));
    CHECK(ngd_optim_steps(o) == 0);
    // and then a proper step works
    CHECK(tp_step(&p, o, 0) == NGD_OK && ngd_optim_steps(o) == 1);
    // registration after the first step
    CHECK(tp_register(&p, o) == NGD_ERR_STATE);
    // scales
    CHECK(ngd_optim_set_grad_scale(o, 0.0f) == NGD_ERR_ARG);
    CHECK(ngd_optim_set_grad_scale(o, NAN) == NGD_ERR_ARG);
    CHECK(ngd_optim_set_lr_scale(o, -1.0f) == NGD_ERR_ARG);
    // introspection errors
    ngd_layer_health h;
    CHECK(ngd_optim_layer_health(o, 5, &h) == NGD_ERR_LAYER);
    CHECK(strstr(ngd_optim_errmsg(o), "unknown id 5") != NULL);
    // every failing call with a handle leaves its own message, not an older one
    CHECK(ngd_optim_set_lr_scale(o, -1.0f) == NGD_ERR_ARG);
    CHECK(ngd_optim_layer_health(o, 0, NULL) == NGD_ERR_ARG);
    CHECK(strstr(ngd_optim_errmsg(o), "layer_health: out is NULL") != NULL);
    CHECK(ngd_optim_save(o, NULL) == NGD_ERR_ARG);
    CHECK(strstr(ngd_optim_errmsg(o), "save: path is NULL") != NULL);
    CHECK(ngd_optim_load(o, NULL) == NGD_ERR_ARG);
    CHECK(strstr(ngd_optim_errmsg(o), "load: path is NULL") != NULL);
    CHECK(ngd_optim_load_mem(o, NULL, 0) == NGD_ERR_ARG);
    CHECK(strstr(ngd_optim_errmsg(o), "load_mem: buf is NULL") != NULL);
    void *sb = NULL;
    CHECK(ngd_optim_save_mem(o, &sb, NULL) == NGD_ERR_ARG && sb == NULL);
    CHECK(strstr(ngd_optim_errmsg(o), "save_mem") != NULL);
    CHECK(ngd_optim_factor_dense(o, p.id1, 'K', NULL, 5) == NGD_ERR_ARG);
    CHECK(strstr(ngd_optim_errmsg(o), "factor_dense: out is NULL") != NULL);
    CHECK(ngd_optim_last_update(o, p.id1, NULL, 15) == NGD_ERR_ARG);
    CHECK(strstr(ngd_optim_errmsg(o), "last_update: out is NULL") != NULL);
    float buf[64];
    CHECK(ngd_optim_factor_dense(o, p.id1, 'Q', buf, 5) == NGD_ERR_ARG);
    CHECK(ngd_optim_last_update(o, p.id1, buf, 15) == NGD_ERR_STATE);
    CHECK(tp_step(&p, o, 1) == NGD_OK && ngd_optim_steps(o) == 2);
    // NULL handles
    CHECK(ngd_optim_step(NULL) == NGD_ERR_ARG);
    CHECK(!ngd_optim_wants_stats(NULL));
    CHECK(ngd_optim_save(NULL, "x") == NGD_ERR_ARG);
    ngd_optim_free(NULL);
    ngd_optim_free(o);
    tp_free(&p);
}

// A factored method's layer whose factor side squared wraps size_t (2^32 x 2^32 numbers: 0)
// crashed in the identity's fill; every side past NGD_FACTOR_SIDE_MAX is refused, and the
// handle stays usable.
static void layers_wider_than_a_factor_side_should_be_refused(void) {
    const ngd_method ms[] = {NGD_METHOD_SINGD, NGD_METHOD_KFAC, NGD_METHOD_BKFAC};
    const char *structs[] = {"dense", "diagonal", "block4diagonal"};
    float w[4] = {0}, g[4] = {0}, b[4] = {0}, gb[4] = {0};
    for (size_t i = 0; i < 3; i++) {
        ngd_config c = ngd_config_default(ms[i]);
        c.momentum = 0.0f, c.alpha1 = 0.0f;
        if (ms[i] == NGD_METHOD_SINGD) {
            CHECK(ngd_structure_parse(structs[i], &c.structure_K) == NGD_OK);
            c.structure_C = c.structure_K;
        }
        ngd_optim *o = NULL;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        int id = -1;
        // (the weights are never read at registration: a small buffer stands for them)
        ngd_layer wide_in = {.name = "in",
                             .weight = w,
                             .weight_grad = g,
                             .d_out = 1,
                             .d_in = ((size_t)1 << 32) - 1,
                             .bias = b,
                             .bias_grad = gb};
        CHECK(ngd_optim_add_layer(o, &wide_in, &id) == NGD_ERR_ARG);
        CHECK(strstr(ngd_optim_errmsg(o), "wider than") != NULL);
        ngd_layer wide_out = {.name = "out",
                              .weight = w,
                              .weight_grad = g,
                              .d_out = NGD_FACTOR_SIDE_MAX + 1,
                              .d_in = 1};
        CHECK(ngd_optim_add_layer(o, &wide_out, &id) == NGD_ERR_ARG);
        ngd_layer ok = {.name = "ok", .weight = w, .weight_grad = g, .d_out = 2, .d_in = 2};
        CHECK(ngd_optim_add_layer(o, &ok, &id) == NGD_OK && id == 0);
        ngd_optim_free(o);
    }
}

static void state_bytes_should_equal_theory(void) {
    // docs/algorithms.md#state-memory: SINGD = d_out·d_K (momentum) + |K| + |C| + |m_K| + |m_C|
    // (α1 ≠ 0)
    const size_t din = 40, dout = 33, dK = 41;
    float *W = calloc(dout * din, 4), *gW = calloc(dout * din, 4), *b = calloc(dout, 4),
          *gb = calloc(dout, 4);
    const char *names[] = {"dense", "diagonal"};
    const size_t sizeK[] = {dK * dK, dK}, sizeC[] = {dout * dout, dout};
    for (int s = 0; s < 2; s++) {
        ngd_config c = ngd_config_default(NGD_METHOD_SINGD);
        CHECK(ngd_structure_parse(names[s], &c.structure_K) == NGD_OK);
        CHECK(ngd_structure_parse(names[s], &c.structure_C) == NGD_OK);
        ngd_optim *o;
        CHECK(ngd_optim_create(&c, &o) == NGD_OK);
        ngd_layer L = {.name = "l",
                       .weight = W,
                       .weight_grad = gW,
                       .d_out = dout,
                       .d_in = din,
                       .bias = b,
                       .bias_grad = gb};
        int id;
        CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_OK);
        size_t theory = 4 * (dout * dK + 2 * sizeK[s] + 2 * sizeC[s]);
        CHECK_MSG(ngd_optim_state_bytes(o) == theory, "%s: %zu bytes, theory %zu", names[s],
                  ngd_optim_state_bytes(o), theory);
        ngd_optim_free(o);
    }
    ngd_config c = ngd_config_default(NGD_METHOD_ADAMW); // AdamW: 2·d_out·d_K
    ngd_optim *o;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    ngd_layer L = {.name = "l",
                   .weight = W,
                   .weight_grad = gW,
                   .d_out = dout,
                   .d_in = din,
                   .bias = b,
                   .bias_grad = gb};
    int id;
    CHECK(ngd_optim_add_layer(o, &L, &id) == NGD_OK);
    CHECK(ngd_optim_state_bytes(o) == 4 * 2 * dout * dK);
    ngd_optim_free(o);
    free(W), free(gW), free(b), free(gb);
}

static const test_case TESTS[] = {
    TEST(config_validation_should_name_the_field),
    TEST(names_should_parse_both_spellings),
    TEST(bad_calls_should_fail_cleanly_and_keep_the_handle_usable),
    TEST(state_bytes_should_equal_theory),
    TEST(layers_wider_than_a_factor_side_should_be_refused),
};
int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
