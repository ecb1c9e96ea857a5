/*
 * fuzz_checkpoint.c — libFuzzer target for libngd's checkpoint reader, ngd_optim_load_mem,
 * on small registered optimizers of every kind the command offers (SGD, AdamW, SINGD with
 * each structure, f32 and bf16 factors, IKFAC, the K-FAC family with and without the factored
 * application): two Linear layers (one with bias) and one
 * plain parameter. Input: <config byte> <checkpoint bytes>; bit 7 of the config byte clear
 * means "make the trailing CRC right first" (so that mutations reach the parser). A load
 * must either succeed or fail with NGD_ERR_FORMAT / NGD_ERR_ARG and a message; after a
 * successful load a step (with statistics when they are due) must not crash, and the state
 * must save and load again.
 *
 * Seeds: with NGD_FUZZ_SEEDS_DIR set, the first call writes one valid checkpoint per config
 * (after three steps) into that folder (`make fuzz` does this before fuzzing).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "ngd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_checkpoint: contract broken: %s\n", #c);                         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

typedef struct {
    ngd_method method;
    const char *structure; // SINGD factor structure (K and C); "factored": the K-FAC
                           // family's factored_apply; NULL otherwise
    bool bf16;
} fz_cfg;

static const fz_cfg CFGS[] = {
    {NGD_METHOD_SGD, NULL, false},
    {NGD_METHOD_ADAMW, NULL, false},
    {NGD_METHOD_SINGD, "dense", false},
    {NGD_METHOD_SINGD, "diagonal", false},
    {NGD_METHOD_SINGD, "block2diagonal", false},
    {NGD_METHOD_SINGD, "hierarchical1_1", false},
    {NGD_METHOD_SINGD, "triltoeplitz", false},
    {NGD_METHOD_SINGD, "triutoeplitz", false},
    {NGD_METHOD_SINGD, "tril_topleft_diag", false},
    {NGD_METHOD_SINGD, "triu_bottomright_diag", false},
    {NGD_METHOD_SINGD, "dense", true},
    {NGD_METHOD_IKFAC, NULL, false},
    // the K-FAC family (statistics every step, refreshes every other; rank 2 of the 4- and
    // 5-wide factors, so RS-KFAC keeps a low-rank (U, D) and the B methods a Brand track)
    {NGD_METHOD_KFAC, NULL, false},
    {NGD_METHOD_RSKFAC, NULL, false},
    {NGD_METHOD_BKFAC, NULL, false},
    {NGD_METHOD_BRKFAC, NULL, false},
    {NGD_METHOD_BRCKFAC, NULL, false},
    {NGD_METHOD_BKFAC, "factored", false}, // (kfac.factored_apply: the batch's rows kept)
};
#define NCFG (sizeof CFGS / sizeof CFGS[0])

// The model: fc1 4x3 with bias, fc2 2x4 without, a parameter of 5.
typedef struct {
    float w1[12], b1[4], w2[8], p[5];
    float gw1[12], gb1[4], gw2[8], gp[5];
    float a1[2 * 3], g1[2 * 4], a2[2 * 4], g2[2 * 2];
    ngd_optim *o;
} fz_model;

static fz_model MODELS[NCFG];

static void reset_values(fz_model *m) {
    for (int i = 0; i < 12; i++)
        m->w1[i] = 0.1f * (float)(i % 5) - 0.2f, m->gw1[i] = 0.01f * (float)i;
    for (int i = 0; i < 4; i++)
        m->b1[i] = 0.0f, m->gb1[i] = -0.02f * (float)i;
    for (int i = 0; i < 8; i++)
        m->w2[i] = 0.05f * (float)i, m->gw2[i] = 0.03f - 0.01f * (float)i;
    for (int i = 0; i < 5; i++)
        m->p[i] = 1.0f, m->gp[i] = 0.1f;
    for (int i = 0; i < 6; i++)
        m->a1[i] = (float)(i % 3) - 1.0f;
    for (int i = 0; i < 8; i++)
        m->g1[i] = 0.1f * (float)(i % 4), m->a2[i] = 0.5f - 0.1f * (float)i;
    for (int i = 0; i < 4; i++)
        m->g2[i] = 0.2f * (float)i - 0.3f;
}

static ngd_optim *make(size_t k, fz_model *m) {
    ngd_config c = ngd_config_default(CFGS[k].method);
    const bool kf = CFGS[k].method >= NGD_METHOD_KFAC && CFGS[k].method <= NGD_METHOD_BRCKFAC;
    if (kf) {
        c.kfac.T_u = 1, c.kfac.T_i = 2, c.kfac.rank = 2, c.kfac.brand_rank = 1;
        c.kfac.factored_apply = CFGS[k].structure != NULL;
    } else if (CFGS[k].structure) {
        REQUIRE(ngd_structure_parse(CFGS[k].structure, &c.structure_K) == NGD_OK);
        c.structure_C = c.structure_K;
    }
    if (CFGS[k].bf16) c.structure_K.dtype = c.structure_C.dtype = NGD_BF16;
    c.T = 2; // preconditioner updates every other step
    ngd_optim *o = NULL;
    REQUIRE(ngd_optim_create(&c, &o) == NGD_OK);
    ngd_layer l1 = {.name = "fc1",
                    .weight = m->w1,
                    .weight_grad = m->gw1,
                    .d_out = 4,
                    .d_in = 3,
                    .bias = m->b1,
                    .bias_grad = m->gb1};
    ngd_layer l2 = {.name = "fc2", .weight = m->w2, .weight_grad = m->gw2, .d_out = 2, .d_in = 4};
    int id;
    REQUIRE(ngd_optim_add_layer(o, &l1, &id) == NGD_OK && id == 0);
    REQUIRE(ngd_optim_add_layer(o, &l2, &id) == NGD_OK && id == 1);
    REQUIRE(ngd_optim_add_param(o, "p", m->p, m->gp, 5, NULL, &id) == NGD_OK && id == 2);
    return o;
}

static ngd_status step(fz_model *m) {
    if (ngd_optim_wants_stats(m->o)) {
        REQUIRE(ngd_optim_observe(m->o, 0, 2, ngd_matrix_f32(m->a1, 2, 3),
                                  ngd_matrix_f32(m->g1, 2, 4)) == NGD_OK);
        REQUIRE(ngd_optim_observe(m->o, 1, 2, ngd_matrix_f32(m->a2, 2, 4),
                                  ngd_matrix_f32(m->g2, 2, 2)) == NGD_OK);
    }
    return ngd_optim_step(m->o);
}

static void write_seeds(const char *dir) {
    for (size_t k = 0; k < NCFG; k++) {
        fz_model m;
        memset(&m, 0, sizeof m);
        reset_values(&m);
        m.o = make(k, &m);
        for (int s = 0; s < 3; s++)
            REQUIRE(step(&m) == NGD_OK);
        void *buf = NULL;
        size_t len = 0;
        REQUIRE(ngd_optim_save_mem(m.o, &buf, &len) == NGD_OK);
        char path[1024];
        snprintf(path, sizeof path, "%s/%s%s%s-%zu", dir, ngd_method_name(CFGS[k].method),
                 CFGS[k].structure ? "-" : "", CFGS[k].structure ? CFGS[k].structure : "", k);
        FILE *f = fopen(path, "wb");
        const unsigned char cfg = (unsigned char)k;
        REQUIRE(f && fwrite(&cfg, 1, 1, f) == 1 && fwrite(buf, 1, len, f) == len && !fclose(f));
        free(buf);
        ngd_optim_free(m.o);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool seeded;
    if (!seeded) {
        seeded = true;
        const char *dir = getenv("NGD_FUZZ_SEEDS_DIR");
        if (dir) write_seeds(dir);
    }
    if (size < 1) return 0;
    const size_t k = (data[0] & 0x7f) % NCFG;
    fz_model *m = &MODELS[k];
    if (!m->o) m->o = make(k, m);
    reset_values(m);
    // Unless bit 7 of the first byte is set, the trailing CRC is made right first: otherwise
    // nearly every mutation would stop at the checksum and the parser would go unexplored.
    static unsigned char fixed[1 << 16];
    const unsigned char *ck = data + 1;
    const size_t len = size - 1;
    if (!(data[0] & 0x80) && len >= 4 && len <= sizeof fixed) {
        memcpy(fixed, ck, len);
        const uint32_t crc = ngd_crc32(fixed, len - 4);
        for (int i = 0; i < 4; i++)
            fixed[len - 4 + (size_t)i] = (unsigned char)(crc >> (8 * i));
        ck = fixed;
    }
    ngd_status st = ngd_optim_load_mem(m->o, ck, len);
    if (st != NGD_OK) {
        REQUIRE(st == NGD_ERR_FORMAT || st == NGD_ERR_ARG);
        REQUIRE(ngd_optim_errmsg(m->o)[0] != '\0');
        return 0;
    }
    // a loaded state must be usable: one step (it may be skipped on non-finite values)
    st = step(m);
    if (!(st == NGD_OK || st == NGD_SKIPPED || st == NGD_ERR_NUMERIC))
        fprintf(stderr, "fuzz_checkpoint: config %zu: step after a load: %s: %s\n", k,
                ngd_status_str(st), ngd_optim_errmsg(m->o));
    REQUIRE(st == NGD_OK || st == NGD_SKIPPED || st == NGD_ERR_NUMERIC);
    // ... and saving it again gives a buffer that loads
    void *again = NULL;
    size_t again_len = 0;
    REQUIRE(ngd_optim_save_mem(m->o, &again, &again_len) == NGD_OK);
    REQUIRE(ngd_optim_load_mem(m->o, again, again_len) == NGD_OK);
    free(again);
    return 0;
}
