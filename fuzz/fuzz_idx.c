/*
 * fuzz_idx.c — libFuzzer target for the IDX reader (src/data/idx.c), plain and gzip: one
 * file through nn_idx_read (images or labels magic, all items or the first few), then the
 * input split in two files through nn_dataset_load_idx, and a loaded set through the
 * normalization and batching. Input: <mode byte> <split u16 LE> <file bytes>.
 * Anything but a clean status (a crash, a leak, undefined behaviour, an allocation far
 * beyond the input) is a finding; so is a broken contract, which aborts.
 */
#include "data.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_idx: contract broken: %s\n", #c);                                \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const unsigned mode = (unsigned)fuzz_take(&data, &size, 1);
    size_t split = (size_t)fuzz_take(&data, &size, 2);
    if (split > size) split = size;
    const size_t max_items = mode & 3; // 0 = all
    const uint32_t magic = mode & 4 ? NN_IDX_MAGIC_LABELS : NN_IDX_MAGIC_IMAGES;
    char err[256];

    nn_idx f;
    err[0] = '\0';
    nn_status st = nn_idx_read(fuzz_file(0, data, size), magic, max_items, &f, err, sizeof err);
    if (st == NN_OK) {
        REQUIRE(f.magic == magic && f.count >= 1 && f.count <= f.dims[0]);
        REQUIRE(max_items == 0 ? f.count == f.dims[0] : f.count <= max_items);
        size_t item = f.ndim == 3 ? f.dims[1] * f.dims[2] : 1;
        REQUIRE(item * f.count <= 1100 * size + 64); // plain: in the file; gzip: < 1032x
        volatile uint8_t sink = f.data[0];
        sink ^= f.data[f.count * item - 1];
        (void)sink;
        nn_idx_free(&f);
    } else {
        REQUIRE(err[0] != '\0' && strlen(err) < sizeof err && f.data == NULL);
    }

    nn_dataset ds;
    const char *a = fuzz_file(0, data, split), *b = fuzz_file(1, data + split, size - split);
    err[0] = '\0';
    st = nn_dataset_load_idx(&ds, a, b, max_items, err, sizeof err);
    if (st == NN_OK) {
        REQUIRE(ds.n >= 1 && ds.c == 1 && ds.num_classes == 10);
        for (size_t i = 0; i < ds.n; i++)
            REQUIRE(ds.labels[i] >= 0 && ds.labels[i] < 10);
        nn_dataset_compute_norm(&ds);
        const size_t idx[2] = {0, ds.n - 1};
        float *x = malloc(2 * ds.h * ds.w * sizeof(float));
        int32_t y[2];
        REQUIRE(x != NULL);
        nn_dataset_batch(&ds, idx, 2, NULL, NULL, x, y);
        nn_augment aug = {2, true};
        nn_rng rng;
        nn_rng_seed(&rng, mode);
        nn_dataset_batch(&ds, idx, 2, &aug, &rng, x, y);
        free(x);
        nn_dataset_free(&ds);
    } else {
        REQUIRE(err[0] != '\0' && ds.pixels == NULL && ds.labels == NULL);
    }
    return 0;
}
