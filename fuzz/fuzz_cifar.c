/*
 * fuzz_cifar.c — libFuzzer target for the CIFAR-10/100 binary reader (src/data/cifar.c): the
 * input as one file read as CIFAR-10, CIFAR-100 fine or coarse (all records or the first
 * few), then as two files, and a loaded set through normalization and augmented batching.
 * Input: <mode byte> <split u16 LE> <file bytes>.
 */
#include "data.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_cifar: contract broken: %s\n", #c);                              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_set(nn_dataset *ds, unsigned mode) {
    REQUIRE(ds->n >= 1 && ds->c == 3 && ds->h == 32 && ds->w == 32);
    for (size_t i = 0; i < ds->n; i++)
        REQUIRE(ds->labels[i] >= 0 && (size_t)ds->labels[i] < ds->num_classes);
    nn_dataset_compute_norm(ds);
    const size_t idx[2] = {ds->n - 1, 0};
    static float x[2 * NN_CIFAR_PIXELS];
    int32_t y[2];
    nn_augment aug = {4, true};
    nn_rng rng;
    nn_rng_seed(&rng, mode);
    nn_dataset_batch(ds, idx, 2, &aug, &rng, x, y);
    REQUIRE(y[1] == ds->labels[0]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const unsigned mode = (unsigned)fuzz_take(&data, &size, 1);
    size_t split = (size_t)fuzz_take(&data, &size, 2);
    if (split > size) split = size;
    const nn_cifar_kind kind = (nn_cifar_kind)(mode % 3);
    const size_t max_n = (mode >> 2) & 3;
    char err[256];
    nn_dataset ds;

    const char *one = fuzz_file(0, data, size);
    err[0] = '\0';
    nn_status st = nn_dataset_load_cifar(&ds, &one, 1, kind, max_n, err, sizeof err);
    if (st == NN_OK) {
        const size_t rec = kind == NN_CIFAR10 ? 3073 : 3074;
        REQUIRE(size % rec == 0 && ds.n == (max_n && max_n < size / rec ? max_n : size / rec));
        check_set(&ds, mode);
        nn_dataset_free(&ds);
    } else {
        REQUIRE(err[0] != '\0' && ds.pixels == NULL);
    }

    const char *two[2] = {fuzz_file(0, data, split), fuzz_file(1, data + split, size - split)};
    err[0] = '\0';
    st = nn_dataset_load_cifar(&ds, two, 2, kind, max_n, err, sizeof err);
    if (st == NN_OK) {
        check_set(&ds, mode);
        nn_dataset_free(&ds);
    } else {
        REQUIRE(err[0] != '\0' && ds.pixels == NULL);
    }
    return 0;
}
