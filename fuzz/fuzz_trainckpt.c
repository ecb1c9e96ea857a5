/*
 * fuzz_trainckpt.c — libFuzzer target for the training-checkpoint reader of `ngd train
 * --resume` (trainckpt_load in src/cli/trainckpt.c). It links the command's own objects:
 * trainckpt.o, traindata.o (the batches a loaded position and order drive) and dist.c built
 * with NGD_NO_MPI (one process), and stands in for main.c's cli_error / cli_read_file. Two
 * small runs are set up once: an MLP with SINGD on a 6-image set (loader order in the file)
 * and a chargpt with AdamW on a short text (text position and rng in the file). Input:
 * <mode byte> <checkpoint bytes>: bit 0 picks the run, bit 7 clear means "make the trailing
 * CRC right first" (so that mutations reach the parser). A load must succeed or fail
 * cleanly; after a successful load the next batch and a forward pass must be safe (the
 * position and sample order are used as indices), and the state must save and load again.
 *
 * Seeds: with NGD_FUZZ_SEEDS_DIR set, the first call writes a checkpoint of each run there.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "fuzz_util.h"
#include "train.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_trainckpt: contract broken: %s\n", #c);                          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

// main.c's helpers, quiet
void cli_error(const char *hint, const char *fmt, ...) { (void)hint, (void)fmt; }
int cli_probe_output(const char *path) { return path ? 0 : -1; } // (the checkpoint's target)
const char *cli_file_kind(unsigned mode) { return (void)mode, "not a regular file"; }
const char *cli_write_hint(const char *msg, const char *otherwise) {
    return msg ? otherwise : NULL;
}

char *cli_read_file(const char *path, size_t *len, const char *what) {
    (void)what;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *b = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) b = malloc((size_t)n + 1);
    if (!b || (n > 0 && fread(b, 1, (size_t)n, f) != (size_t)n)) {
        free(b);
        fclose(f);
        return NULL;
    }
    fclose(f);
    b[n] = '\0';
    *len = (size_t)n;
    return b;
}

typedef struct {
    train_opts t;
    nn_dataset ds;
    nn_text text;
    nn_model m;
    ngd_optim *o;
    nn_loader ld;
    text_iter ti;
    bool ready;
} fz_run;

static fz_run RUNS[2];

static void setup(fz_run *r, int k) {
    memset(&r->t, 0, sizeof r->t);
    r->t.batch = 2;
    nn_model_cfg mc = {.max_batch = 2, .seed = 1};
    if (k == 0) { // mlp, 6 images of 1x2x2, 3 classes, SINGD
        r->t.model = "mlp", r->t.data = "fashion-mnist";
        r->t.method = NGD_METHOD_SINGD;
        r->t.cfg = ngd_config_default(NGD_METHOD_SINGD);
        r->ds.n = 6, r->ds.c = 1, r->ds.h = r->ds.w = 2, r->ds.num_classes = 3;
        r->ds.pixels = calloc(24, 1);
        r->ds.labels = calloc(6, sizeof(int32_t));
        REQUIRE(r->ds.pixels && r->ds.labels);
        for (int i = 0; i < 24; i++)
            r->ds.pixels[i] = (uint8_t)(i * 11);
        for (int i = 0; i < 6; i++)
            r->ds.labels[i] = i % 3;
        r->ds.std[0] = 1.0f;
        REQUIRE(nn_loader_init(&r->ld, &r->ds, 2, true, true, NULL, 2) == NN_OK);
        mc.name = "mlp", mc.in_c = 1, mc.in_h = 2, mc.in_w = 2, mc.classes = 3;
        mc.widths[0] = 4, mc.nwidths = 1;
    } else { // chargpt, context 4, AdamW
        r->t.model = "chargpt", r->t.data = "shakespeare", r->t.text = true, r->t.context = 4;
        r->t.method = NGD_METHOD_ADAMW;
        r->t.cfg = ngd_config_default(NGD_METHOD_ADAMW);
        r->t.cfg.loss_average = NGD_LOSS_BATCH_SEQUENCE;
        const char *s = "hello world, hello fuzz; the quick brown fox\n";
        REQUIRE(nn_text_from_memory(&r->text, s, strlen(s), 0.25f, NULL, 0) == NN_OK);
        r->ti.text = &r->text;
        r->ti.per_epoch = r->text.n_train / (2 * 4);
        nn_rng_seed(&r->ti.rng, 3);
        mc.name = "chargpt", mc.in_c = 1, mc.in_h = 4, mc.in_w = 1, mc.classes = r->text.vocab;
        mc.widths[0] = 8, mc.widths[1] = 1, mc.widths[2] = 2, mc.nwidths = 3;
    }
    char err[256];
    REQUIRE(nn_model_create(&r->m, &mc, err, sizeof err) == NN_OK);
    REQUIRE(ngd_optim_create(&r->t.cfg, &r->o) == NGD_OK);
    REQUIRE(r->m.ops->attach(&r->m, r->o) == NGD_OK);
    r->ready = true;
}

static void write_seeds(const char *dir) {
    for (int k = 0; k < 2; k++) {
        fz_run *r = &RUNS[k];
        run_state rs = {3, 1, 0, 2.5, false, 1.5, 2, 4, -1, 0};
        char path[1024];
        snprintf(path, sizeof path, "%s/%s.ckpt", dir, r->t.model);
        REQUIRE(trainckpt_save(path, &r->t, &r->m, r->o, &r->ld, k ? &r->ti : NULL, &rs) == 0);
        size_t len;
        char *b = cli_read_file(path, &len, "");
        REQUIRE(b);
        FILE *f = fopen(path, "wb");
        const unsigned char mode = (unsigned char)k;
        REQUIRE(f && fwrite(&mode, 1, 1, f) == 1 && fwrite(b, 1, len, f) == len && !fclose(f));
        free(b);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!RUNS[0].ready) {
        setup(&RUNS[0], 0);
        setup(&RUNS[1], 1);
        const char *dir = getenv("NGD_FUZZ_SEEDS_DIR");
        if (dir) write_seeds(dir);
    }
    if (size < 1) return 0;
    const int k = data[0] & 1;
    fz_run *r = &RUNS[k];
    const uint8_t *ck = data + 1;
    const size_t len = size - 1;
    static uint8_t fixed[1 << 16];
    if (!(data[0] & 0x80) && len >= 4 && len <= sizeof fixed) {
        memcpy(fixed, ck, len);
        const uint32_t crc = ngd_crc32(fixed, len - 4);
        for (int i = 0; i < 4; i++)
            fixed[len - 4 + (size_t)i] = (uint8_t)(crc >> (8 * i));
        ck = fixed;
    }
    run_state rs;
    text_iter *tip = k ? &r->ti : NULL;
    if (trainckpt_load(fuzz_file(0, ck, len), &r->t, &r->m, r->o, &r->ld, tip, &rs) != 0) return 0;
    // the loaded position and order drive the next batch: they must be in range
    float x[2 * 4];
    int32_t ids[2 * 4], y[2 * 4];
    size_t got = train_next_batch(&r->t, &r->ld, tip, x, ids, y);
    if (got == 0) got = train_next_batch(&r->t, &r->ld, tip, x, ids, y); // a new epoch
    REQUIRE(got == 2);
    if (k)
        r->m.ops->forward_tokens(&r->m, ids, 2, 4, false);
    else
        r->m.ops->forward(&r->m, x, 2, false);
    // and what was loaded saves and loads again
    const char *again = fuzz_file(1, NULL, 0);
    REQUIRE(trainckpt_save(again, &r->t, &r->m, r->o, &r->ld, tip, &rs) == 0);
    REQUIRE(trainckpt_load(again, &r->t, &r->m, r->o, &r->ld, tip, &rs) == 0);
    return 0;
}
