/*
 * fuzz_text.c — libFuzzer target for the character-level text reader (src/data/text.c):
 * the input (after two control bytes) through nn_text_from_memory and nn_text_load with a
 * fuzzed validation fraction, then encode / decode round trips and random (B, T) windows of
 * both splits, whose ids must be in the vocabulary and whose targets must be the next ids.
 * Input: <val_frac byte> <B, T byte> <text bytes>.
 */
#include "data.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_text: contract broken: %s\n", #c);                               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const unsigned fb = (unsigned)fuzz_take(&data, &size, 1);
    const unsigned bt = (unsigned)fuzz_take(&data, &size, 1);
    // 0, 0.1, ..., and now and then values outside [0, 1) that must be refused
    const float frac = fb == 255 ? 1.0f : fb == 254 ? -0.5f : (float)(fb % 10) / 10.0f;
    const size_t B = 1 + (bt & 7), T = 1 + (bt >> 3);
    char err[256];
    nn_text t, u;
    err[0] = '\0';
    nn_status st = nn_text_from_memory(&t, (const char *)data, size, frac, err, sizeof err);
    nn_status su = nn_text_load(&u, fuzz_file(0, data, size), frac, err, sizeof err);
    REQUIRE(st == su);
    if (st != NN_OK) {
        REQUIRE(err[0] != '\0' && t.ids == NULL && u.ids == NULL);
        return 0;
    }
    // the file and the memory give the same text
    REQUIRE(t.n == size && u.n == size && t.n_train == u.n_train && t.vocab == u.vocab);
    REQUIRE(!memcmp(t.ids, u.ids, size) && !memcmp(t.itos, u.itos, sizeof t.itos));
    nn_text_free(&u);
    REQUIRE(t.vocab >= 1 && t.vocab <= 256 && t.n_train <= t.n);
    for (size_t i = 0; i < size; i++)
        REQUIRE(t.ids[i] < t.vocab);
    // encode then decode is the identity
    int32_t *ids = malloc((size ? size : 1) * sizeof *ids);
    char *back = malloc(size + 1);
    REQUIRE(ids && back);
    REQUIRE(nn_text_encode(&t, (const char *)data, size, ids, err, sizeof err) == NN_OK);
    REQUIRE(nn_text_decode(&t, ids, size, back) == NN_OK);
    REQUIRE(!memcmp(back, data, size) && back[size] == '\0');
    // an id outside the vocabulary is refused and shown as '?'
    if (size) {
        ids[0] = (int32_t)t.vocab;
        REQUIRE(nn_text_decode(&t, ids, 1, back) == NN_ERR_ARG && back[0] == '?');
    }
    free(back);
    free(ids);
    // windows: inputs in the vocabulary, targets the next ids of the same split
    int32_t x[8 * 32], y[8 * 32];
    nn_rng rng;
    nn_rng_seed(&rng, fb);
    for (int split = 0; split < 2; split++) {
        const size_t len = split ? t.n - t.n_train : t.n_train;
        st = nn_text_batch(&t, (nn_split)split, B, T, &rng, x, y);
        REQUIRE((st == NN_OK) == (len >= T + 1));
        if (st != NN_OK) continue;
        for (size_t b = 0; b < B; b++)
            for (size_t i = 0; i < T; i++) {
                REQUIRE(x[b * T + i] >= 0 && (size_t)x[b * T + i] < t.vocab);
                REQUIRE(y[b * T + i] >= 0 && (size_t)y[b * T + i] < t.vocab);
                if (i + 1 < T) REQUIRE(y[b * T + i] == x[b * T + i + 1]);
            }
    }
    nn_text_free(&t);
    return 0;
}
