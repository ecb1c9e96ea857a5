/*
 * test_data.c — the data readers and loaders: IDX (plain and gzip) and CIFAR-10/100 files
 * that the test writes itself into a temporary directory (good, truncated, foreign and
 * wrong-sized ones, each failing with the expected message), normalization, seeded
 * shuffling (a permutation, reproducible), CIFAR augmentation (shapes, crops, flips),
 * character-level text; and, when installed, the first records of the real Fashion-MNIST,
 * CIFAR-100 and Tiny Shakespeare files (skipped with a note when absent).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "data.h"
#include "harness.h"

// ---- a temporary directory for the files the tests write ----

static char td_dir[64];
static char td_paths[64][128];
static size_t td_count;

// Returns a path "<tmpdir>/<name>" (created on first use, removed by td_cleanup).
static const char *td_path(const char *name) {
    if (!td_dir[0]) {
        strcpy(td_dir, "/tmp/ngd_test_data_XXXXXX");
        if (!mkdtemp(td_dir)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    for (size_t i = 0; i < td_count; i++) {
        const char *slash = strrchr(td_paths[i], '/');
        if (strcmp(slash + 1, name) == 0) return td_paths[i];
    }
    if (td_count == sizeof td_paths / sizeof td_paths[0]) exit(2);
    snprintf(td_paths[td_count], sizeof td_paths[0], "%s/%s", td_dir, name);
    return td_paths[td_count++];
}

static void td_cleanup(void) {
    for (size_t i = 0; i < td_count; i++)
        unlink(td_paths[i]);
    if (td_dir[0]) rmdir(td_dir);
}

static void write_bytes(const char *path, const void *data, size_t n, int gz) {
    if (gz) {
        gzFile f = gzopen(path, "wb");
        if (!f || (n && gzwrite(f, data, (unsigned)n) != (int)n) || gzclose(f) != Z_OK) exit(2);
        return;
    }
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) exit(2);
}

// An IDX file in memory: magic, dims (big-endian), then `payload` bytes of data.
static size_t make_idx(uint8_t *buf, uint32_t magic, const uint32_t *dims, size_t ndim,
                       const uint8_t *data, size_t payload) {
    size_t k = 0;
    for (int s = 24; s >= 0; s -= 8)
        buf[k++] = (uint8_t)(magic >> s);
    for (size_t d = 0; d < ndim; d++)
        for (int s = 24; s >= 0; s -= 8)
            buf[k++] = (uint8_t)(dims[d] >> s);
    memcpy(buf + k, data, payload);
    return k + payload;
}

static int has(const char *msg, const char *part) {
    if (strstr(msg, part)) return 1;
    fprintf(stderr, "    message \"%s\" lacks \"%s\"\n", msg, part);
    return 0;
}

// 5 images of 3 x 4 and their labels
#define IMG_N 5
#define IMG_H 3
#define IMG_W 4
static uint8_t img_data[IMG_N * IMG_H * IMG_W], lbl_data[IMG_N] = {3, 0, 9, 9, 1};
static void make_img_data(void) {
    for (size_t i = 0; i < sizeof img_data; i++)
        img_data[i] = (uint8_t)(i * 37 + 11);
}

// Writes images + labels as name.{images,labels}[.gz]; returns nothing, paths via td_path.
static void write_idx_pair(const char *img_name, const char *lbl_name, int gz) {
    uint8_t buf[256];
    const uint32_t di[3] = {IMG_N, IMG_H, IMG_W}, dl[1] = {IMG_N};
    size_t n = make_idx(buf, NN_IDX_MAGIC_IMAGES, di, 3, img_data, sizeof img_data);
    write_bytes(td_path(img_name), buf, n, gz);
    n = make_idx(buf, NN_IDX_MAGIC_LABELS, dl, 1, lbl_data, sizeof lbl_data);
    write_bytes(td_path(lbl_name), buf, n, gz);
}

// ---- IDX ----

static void idx_should_read_plain_and_gzip_files(void) {
    make_img_data();
    write_idx_pair("a-images-idx3-ubyte", "a-labels-idx1-ubyte", 0);
    write_idx_pair("a-images-idx3-ubyte.gz", "a-labels-idx1-ubyte.gz", 1);
    for (int gz = 0; gz < 2; gz++) {
        char err[256] = "";
        nn_dataset ds;
        const char *im = td_path(gz ? "a-images-idx3-ubyte.gz" : "a-images-idx3-ubyte");
        const char *lb = td_path(gz ? "a-labels-idx1-ubyte.gz" : "a-labels-idx1-ubyte");
        nn_status st = nn_dataset_load_idx(&ds, im, lb, 0, err, sizeof err);
        CHECK_MSG(st == NN_OK, "%s", err);
        if (st != NN_OK) continue;
        CHECK(ds.n == IMG_N && ds.c == 1 && ds.h == IMG_H && ds.w == IMG_W);
        CHECK(ds.num_classes == 10);
        CHECK(memcmp(ds.pixels, img_data, sizeof img_data) == 0);
        for (size_t i = 0; i < IMG_N; i++)
            CHECK(ds.labels[i] == lbl_data[i]);
        nn_dataset_free(&ds);
        CHECK(ds.pixels == NULL && ds.n == 0);
        // only the first records
        st = nn_dataset_load_idx(&ds, im, lb, 2, err, sizeof err);
        CHECK(st == NN_OK && ds.n == 2 && ds.labels[1] == lbl_data[1]);
        CHECK(memcmp(ds.pixels, img_data, 2 * IMG_H * IMG_W) == 0);
        nn_dataset_free(&ds);
        // the raw reader reports the declared count
        nn_idx f;
        CHECK(nn_idx_read(im, NN_IDX_MAGIC_IMAGES, 1, &f, err, sizeof err) == NN_OK);
        CHECK(f.dims[0] == IMG_N && f.count == 1 && f.ndim == 3);
        nn_idx_free(&f);
    }
}

static void idx_should_reject_a_wrong_magic_with_its_value(void) {
    make_img_data();
    write_idx_pair("b-images.gz", "b-labels.gz", 1);
    char err[256] = "";
    nn_idx f;
    // a labels file where images are expected
    nn_status st = nn_idx_read(td_path("b-labels.gz"), NN_IDX_MAGIC_IMAGES, 0, &f, err, sizeof err);
    CHECK(st == NN_ERR_FORMAT);
    CHECK(has(err, "b-labels.gz: bad magic 0x00000801, expected 0x00000803 (IDX images)"));
    CHECK(f.data == NULL);
    // and the other way round, through the data set loader (arguments swapped)
    nn_dataset ds;
    st = nn_dataset_load_idx(&ds, td_path("b-labels.gz"), td_path("b-images.gz"), 0, err,
                             sizeof err);
    CHECK(st == NN_ERR_FORMAT && ds.pixels == NULL);
    // a file of random bytes
    const uint8_t junk[20] = {0x1f, 0x00, 0x08, 0x03, 1, 2, 3};
    write_bytes(td_path("junk"), junk, sizeof junk, 0);
    st = nn_idx_read(td_path("junk"), NN_IDX_MAGIC_IMAGES, 0, &f, err, sizeof err);
    CHECK(st == NN_ERR_FORMAT && has(err, "bad magic 0x1f000803"));
}

static void idx_should_reject_truncated_and_oversized_files(void) {
    make_img_data();
    uint8_t buf[256];
    const uint32_t di[3] = {IMG_N, IMG_H, IMG_W};
    char err[256];
    nn_idx f;
    for (int gz = 0; gz < 2; gz++) {
        // data one byte short
        size_t n = make_idx(buf, NN_IDX_MAGIC_IMAGES, di, 3, img_data, sizeof img_data - 1);
        const char *p = td_path(gz ? "short.gz" : "short");
        write_bytes(p, buf, n, gz);
        CHECK(nn_idx_read(p, NN_IDX_MAGIC_IMAGES, 0, &f, err, sizeof err) == NN_ERR_FORMAT);
        CHECK(has(err, p) &&
              has(err, "truncated: 5 x 3 x 4 header declares 60 data bytes, found 59"));
        // so is reading only its first records: the rest is read too (a damaged file)
        CHECK(nn_idx_read(p, NN_IDX_MAGIC_IMAGES, 4, &f, err, sizeof err) == NN_ERR_FORMAT);
        CHECK(has(err, "truncated: header declares 5 items, found 4"));
        // header cut inside the dimensions
        p = td_path(gz ? "hdr.gz" : "hdr");
        write_bytes(p, buf, 9, gz);
        CHECK(nn_idx_read(p, NN_IDX_MAGIC_IMAGES, 0, &f, err, sizeof err) == NN_ERR_FORMAT);
        CHECK(has(err, "truncated: 9 bytes, expected a 16-byte IDX images header"));
        // empty file
        p = td_path(gz ? "empty.gz" : "empty");
        write_bytes(p, buf, 0, gz);
        CHECK(nn_idx_read(p, NN_IDX_MAGIC_LABELS, 0, &f, err, sizeof err) == NN_ERR_FORMAT);
        CHECK(has(err, "truncated: 0 bytes"));
        // trailing bytes after the declared data
        n = make_idx(buf, NN_IDX_MAGIC_IMAGES, di, 3, img_data, sizeof img_data);
        buf[n++] = 0;
        buf[n++] = 0;
        p = td_path(gz ? "long.gz" : "long");
        write_bytes(p, buf, n, gz);
        CHECK(nn_idx_read(p, NN_IDX_MAGIC_IMAGES, 0, &f, err, sizeof err) == NN_ERR_FORMAT);
        CHECK(has(err, "size mismatch: 2 bytes after the 5 items the header declares"));
        // a zero dimension
        const uint32_t dz[3] = {IMG_N, 0, IMG_W};
        n = make_idx(buf, NN_IDX_MAGIC_IMAGES, dz, 3, img_data, 0);
        p = td_path(gz ? "zero.gz" : "zero");
        write_bytes(p, buf, n, gz);
        CHECK(nn_idx_read(p, NN_IDX_MAGIC_IMAGES, 0, &f, err, sizeof err) == NN_ERR_FORMAT);
        CHECK(has(err, "dimension 1 is 0"));
    }
    // labels truncated
    const uint32_t dl[1] = {IMG_N};
    size_t n = make_idx(buf, NN_IDX_MAGIC_LABELS, dl, 1, lbl_data, 3);
    write_bytes(td_path("lshort"), buf, n, 0);
    CHECK(nn_idx_read(td_path("lshort"), NN_IDX_MAGIC_LABELS, 0, &f, err, sizeof err) ==
          NN_ERR_FORMAT);
    CHECK(has(err, "truncated: header declares 5 labels, found 3"));
}

// Data larger than the reader's first 64 KiB chunk is read whole (the buffer grows with the
// data as it arrives), and a file that declares 4 GiB but holds 100 bytes fails as truncated.
// (The reader used to allocate the declared size up front: fuzz/fuzz_idx found 25-byte
// inputs costing hundreds of MB each.)
static void idx_should_read_large_files_and_not_trust_declared_sizes(void) {
    const size_t n = 3, h = 700, w = 1000, bytes = n * h * w; // 2.1 MB: six doublings
    uint8_t *buf = malloc(16 + bytes);
    const uint32_t dims[3] = {(uint32_t)n, (uint32_t)h, (uint32_t)w};
    uint8_t *data = malloc(bytes);
    for (size_t i = 0; i < bytes; i++)
        data[i] = (uint8_t)(i * 2654435761u >> 13);
    char err[256];
    nn_idx f;
    for (int gz = 0; gz < 2; gz++) {
        const char *p = td_path(gz ? "big.gz" : "big");
        write_bytes(p, buf, make_idx(buf, NN_IDX_MAGIC_IMAGES, dims, 3, data, bytes), gz);
        CHECK(nn_idx_read(p, NN_IDX_MAGIC_IMAGES, 0, &f, err, sizeof err) == NN_OK);
        CHECK(f.count == n && f.data && !memcmp(f.data, data, bytes));
        nn_idx_free(&f);
        CHECK(nn_idx_read(p, NN_IDX_MAGIC_IMAGES, 2, &f, err, sizeof err) == NN_OK);
        CHECK(f.count == 2 && !memcmp(f.data, data, 2 * h * w));
        nn_idx_free(&f);
        // one byte short of 2.1 MB
        write_bytes(p, buf, make_idx(buf, NN_IDX_MAGIC_IMAGES, dims, 3, data, bytes - 1), gz);
        CHECK(nn_idx_read(p, NN_IDX_MAGIC_IMAGES, 0, &f, err, sizeof err) == NN_ERR_FORMAT);
        CHECK(has(err, "header declares 2100000 data bytes, found 2099999"));
        // 2^22 images of 32 x 32 declared (4 GiB), 100 bytes present
        const uint32_t huge[3] = {1u << 22, 32, 32};
        p = td_path(gz ? "huge.gz" : "huge");
        write_bytes(p, buf, make_idx(buf, NN_IDX_MAGIC_IMAGES, huge, 3, data, 100), gz);
        CHECK(nn_idx_read(p, NN_IDX_MAGIC_IMAGES, 0, &f, err, sizeof err) == NN_ERR_FORMAT);
        CHECK(has(err, "declares 4294967296 data bytes, found 100") && f.data == NULL);
    }
    free(data);
    free(buf);
}

static void idx_should_reject_corrupt_gzip_missing_files_and_inconsistent_pairs(void) {
    make_img_data();
    char err[256];
    nn_idx f;
    // corrupt deflate stream: a valid gzip header, garbage after it
    write_idx_pair("c-images.gz", "c-labels.gz", 1);
    FILE *fp = fopen(td_path("c-images.gz"), "r+b");
    CHECK(fp != NULL);
    if (fp) {
        uint8_t junk[16];
        memset(junk, 0xA5, sizeof junk);
        CHECK(fseek(fp, 12, SEEK_SET) == 0 && fwrite(junk, 1, sizeof junk, fp) == sizeof junk);
        fclose(fp);
    }
    nn_status st = nn_idx_read(td_path("c-images.gz"), NN_IDX_MAGIC_IMAGES, 0, &f, err, sizeof err);
    CHECK(st == NN_ERR_FORMAT && has(err, "c-images.gz"));
    // a wrong checksum at the end of the file: found by a read of the first records too (the
    // data before it inflates without error), and the path is named once
    write_idx_pair("e-images.gz", "e-labels.gz", 1);
    fp = fopen(td_path("e-images.gz"), "r+b");
    CHECK(fp != NULL);
    if (fp) {
        CHECK(fseek(fp, -8, SEEK_END) == 0);
        const int b = fgetc(fp);
        CHECK(fseek(fp, -8, SEEK_END) == 0 && fputc(b ^ 0x5a, fp) != EOF);
        fclose(fp);
    }
    for (size_t first = 0; first < 3; first += 2) {
        st = nn_idx_read(td_path("e-images.gz"), NN_IDX_MAGIC_IMAGES, first, &f, err, sizeof err);
        CHECK(st == NN_ERR_FORMAT &&
              has(err, "e-images.gz: corrupt gzip data: incorrect data check"));
        CHECK(strstr(strstr(err, "e-images.gz") + 1, "e-images.gz") == NULL);
    }
    // missing file
    st = nn_idx_read(td_path("nope.gz"), NN_IDX_MAGIC_IMAGES, 0, &f, err, sizeof err);
    CHECK(st == NN_ERR_IO && has(err, "nope.gz: cannot open"));
    // counts that disagree
    uint8_t buf[64];
    const uint32_t dl[1] = {IMG_N - 1};
    size_t n = make_idx(buf, NN_IDX_MAGIC_LABELS, dl, 1, lbl_data, IMG_N - 1);
    write_bytes(td_path("four-labels"), buf, n, 0);
    write_idx_pair("d-images", "d-labels", 0);
    nn_dataset ds;
    st = nn_dataset_load_idx(&ds, td_path("d-images"), td_path("four-labels"), 0, err, sizeof err);
    CHECK(st == NN_ERR_FORMAT && has(err, "four-labels: declares 4 labels, but"));
    CHECK(has(err, "declares 5 images"));
    // a label out of range
    const uint8_t bad[IMG_N] = {1, 2, 10, 3, 4};
    const uint32_t d5[1] = {IMG_N};
    n = make_idx(buf, NN_IDX_MAGIC_LABELS, d5, 1, bad, IMG_N);
    write_bytes(td_path("bad-labels"), buf, n, 0);
    st = nn_dataset_load_idx(&ds, td_path("d-images"), td_path("bad-labels"), 0, err, sizeof err);
    CHECK(st == NN_ERR_FORMAT &&
          has(err, "bad-labels: label 10 of item 2 is out of range [0, 10)"));
    CHECK(ds.pixels == NULL && ds.labels == NULL);
    // err may be NULL
    CHECK(nn_idx_read(td_path("nope.gz"), NN_IDX_MAGIC_IMAGES, 0, &f, NULL, 0) == NN_ERR_IO);
}

// ---- CIFAR ----

// n records of kind; image i has pixel j = (i*7 + j) & 255, labels from the index
static size_t make_cifar(uint8_t *buf, size_t n, nn_cifar_kind kind) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (kind == NN_CIFAR10)
            buf[k++] = (uint8_t)(i % 10);
        else {
            buf[k++] = (uint8_t)(i % 20);
            buf[k++] = (uint8_t)((i * 13) % 100);
        }
        for (size_t j = 0; j < NN_CIFAR_PIXELS; j++)
            buf[k++] = (uint8_t)(i * 7 + j);
    }
    return k;
}

// A streamed CIFAR set (files kept open, records read per batch) gives the same batches as
// the set in memory: labels, normalization, plain and augmented batches across two files;
// a file that shrinks later gives zeros and a failure that names it.
static void streamed_cifar_should_equal_the_set_in_memory(void) {
    const size_t rec = 1 + NN_CIFAR_PIXELS, n1 = 5, n2 = 3;
    uint8_t *buf = malloc((n1 + n2) * rec);
    make_cifar(buf, n1 + n2, NN_CIFAR10);
    write_bytes(td_path("s1.bin"), buf, n1 * rec, 0);
    write_bytes(td_path("s2.bin"), buf + n1 * rec, n2 * rec, 0);
    const char *paths[2] = {td_path("s1.bin"), td_path("s2.bin")};
    char err[256];
    nn_dataset mem, str;
    CHECK(nn_dataset_load_cifar(&mem, paths, 2, NN_CIFAR10, 7, err, sizeof err) == NN_OK);
    CHECK(nn_dataset_open_cifar(&str, paths, 2, NN_CIFAR10, 7, err, sizeof err) == NN_OK);
    CHECK(str.pixels == NULL && str.n == 7 && mem.n == 7);
    CHECK(memcmp(mem.labels, str.labels, 7 * sizeof(int32_t)) == 0);
    nn_dataset_compute_norm(&mem), nn_dataset_compute_norm(&str);
    CHECK(memcmp(mem.mean, str.mean, sizeof mem.mean) == 0 &&
          memcmp(mem.std, str.std, sizeof mem.std) == 0);
    // both files, out of order; 12 images: the set in memory converts them on the threads
    const size_t idx[12] = {6, 0, 5, 4, 1, 2, 3, 6, 0, 5, 4, 3};
    float *a = malloc(12 * NN_CIFAR_PIXELS * sizeof(float)),
          *b = malloc(12 * NN_CIFAR_PIXELS * sizeof(float));
    int32_t ya[12], yb[12];
    const int nthr0 = th_set_threads(2);
    nn_dataset_batch(&mem, idx, 12, NULL, NULL, a, ya);
    th_set_threads(nthr0);
    nn_dataset_batch(&str, idx, 12, NULL, NULL, b, yb);
    CHECK(memcmp(a, b, 12 * NN_CIFAR_PIXELS * sizeof(float)) == 0 &&
          memcmp(ya, yb, sizeof ya) == 0);
    nn_augment aug = {4, true};
    nn_rng r1, r2;
    nn_rng_seed(&r1, 3), nn_rng_seed(&r2, 3);
    nn_dataset_batch(&mem, idx, 4, &aug, &r1, a, ya);
    nn_dataset_batch(&str, idx, 4, &aug, &r2, b, yb);
    CHECK(memcmp(a, b, 4 * NN_CIFAR_PIXELS * sizeof(float)) == 0);
    CHECK(!nn_dataset_failed(&str, err, sizeof err) && !nn_dataset_failed(&mem, err, sizeof err));
    // s2.bin loses its records: sample 6 reads as zeros (normalized), and the set says so
    write_bytes(td_path("s2.bin"), buf, 10, 0);
    const size_t six = 6;
    nn_dataset_batch(&str, &six, 1, NULL, NULL, b, yb);
    CHECK(b[0] == (0.0f - str.mean[0]) / str.std[0]);
    CHECK(nn_dataset_failed(&str, err, sizeof err) && strstr(err, "s2.bin") != NULL);
    nn_dataset_free(&mem), nn_dataset_free(&str);
    free(a), free(b), free(buf);
}

static void cifar_should_read_records_and_reject_wrong_sizes(void) {
    const size_t rec10 = 1 + NN_CIFAR_PIXELS, rec100 = 2 + NN_CIFAR_PIXELS;
    uint8_t *buf = malloc(8 * rec100);
    char err[256];
    nn_dataset ds;
    // CIFAR-10 in two files, read as one set
    size_t n = make_cifar(buf, 4, NN_CIFAR10);
    write_bytes(td_path("data_batch_1.bin"), buf, n, 0);
    write_bytes(td_path("data_batch_2.bin"), buf, 2 * rec10, 0);
    const char *paths[2] = {td_path("data_batch_1.bin"), td_path("data_batch_2.bin")};
    nn_status st = nn_dataset_load_cifar(&ds, paths, 2, NN_CIFAR10, 0, err, sizeof err);
    CHECK_MSG(st == NN_OK, "%s", err);
    if (st == NN_OK) {
        CHECK(ds.n == 6 && ds.c == 3 && ds.h == 32 && ds.w == 32 && ds.num_classes == 10);
        CHECK(ds.labels[3] == 3 && ds.labels[5] == 1);
        CHECK(ds.pixels[2 * NN_CIFAR_PIXELS + 5] == (uint8_t)(2 * 7 + 5));
        CHECK(ds.pixels[5 * NN_CIFAR_PIXELS + 1024] == (uint8_t)(1 * 7 + 1024)); // G plane
        nn_dataset_free(&ds);
    }
    st = nn_dataset_load_cifar(&ds, paths, 2, NN_CIFAR10, 5, err, sizeof err);
    CHECK(st == NN_OK && ds.n == 5);
    nn_dataset_free(&ds);
    // CIFAR-100, fine and coarse labels
    n = make_cifar(buf, 8, NN_CIFAR100_FINE);
    write_bytes(td_path("train.bin"), buf, n, 0);
    const char *p100 = td_path("train.bin");
    st = nn_dataset_load_cifar(&ds, &p100, 1, NN_CIFAR100_FINE, 0, err, sizeof err);
    CHECK(st == NN_OK && ds.n == 8 && ds.num_classes == 100 && ds.labels[7] == (7 * 13) % 100);
    CHECK(ds.pixels[7 * NN_CIFAR_PIXELS] == (uint8_t)(7 * 7));
    nn_dataset_free(&ds);
    st = nn_dataset_load_cifar(&ds, &p100, 1, NN_CIFAR100_COARSE, 0, err, sizeof err);
    CHECK(st == NN_OK && ds.num_classes == 20 && ds.labels[7] == 7);
    nn_dataset_free(&ds);
    // a CIFAR-100 file read as CIFAR-10: 8 * 3074 is not a multiple of 3073
    st = nn_dataset_load_cifar(&ds, &p100, 1, NN_CIFAR10, 0, err, sizeof err);
    CHECK(st == NN_ERR_FORMAT);
    CHECK(has(err, "train.bin: size 24592 bytes is not a non-zero multiple of the 3073-byte "
                   "CIFAR-10 record"));
    // truncated last record
    write_bytes(td_path("cut.bin"), buf, 2 * rec100 - 100, 0);
    const char *pc = td_path("cut.bin");
    st = nn_dataset_load_cifar(&ds, &pc, 1, NN_CIFAR100_FINE, 0, err, sizeof err);
    CHECK(st == NN_ERR_FORMAT && has(err, "cut.bin: size 6048 bytes") &&
          has(err, "3074-byte CIFAR-100 record"));
    // empty, missing
    write_bytes(td_path("empty.bin"), buf, 0, 0);
    const char *pe = td_path("empty.bin"), *pm = td_path("missing.bin");
    CHECK(nn_dataset_load_cifar(&ds, &pe, 1, NN_CIFAR10, 0, err, sizeof err) == NN_ERR_FORMAT);
    CHECK(nn_dataset_load_cifar(&ds, &pm, 1, NN_CIFAR10, 0, err, sizeof err) == NN_ERR_IO);
    CHECK(has(err, "missing.bin: cannot open"));
    // a label out of range
    buf[rec10] = 10; // second CIFAR-10 record
    make_cifar(buf, 2, NN_CIFAR10);
    buf[rec10] = 12;
    write_bytes(td_path("badlabel.bin"), buf, 2 * rec10, 0);
    const char *pb = td_path("badlabel.bin");
    st = nn_dataset_load_cifar(&ds, &pb, 1, NN_CIFAR10, 0, err, sizeof err);
    CHECK(st == NN_ERR_FORMAT &&
          has(err, "badlabel.bin: record 1: class label 12 is out of range"));
    CHECK(ds.pixels == NULL);
    free(buf);
}

// ---- normalization, batching, shuffling, augmentation ----

// n images of (c, h, w) whose pixels all equal the image index (n <= 256): an image
// identifies itself after any crop or flip, except for the padding
static void make_indexed_set(nn_dataset *ds, size_t n, size_t c, size_t h, size_t w) {
    memset(ds, 0, sizeof *ds);
    ds->n = n, ds->c = c, ds->h = h, ds->w = w, ds->num_classes = n;
    ds->pixels = malloc(n * c * h * w);
    ds->labels = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) {
        memset(ds->pixels + i * c * h * w, (int)i, c * h * w);
        ds->labels[i] = (int32_t)i;
    }
    for (size_t k = 0; k < c; k++)
        ds->mean[k] = 0.0f, ds->std[k] = 1.0f;
}

static void normalization_should_standardize_each_channel(void) {
    nn_dataset ds;
    make_indexed_set(&ds, 4, 2, 2, 3);
    // channel 1 of every image is 255 - channel 0
    for (size_t i = 0; i < 4; i++)
        memset(ds.pixels + i * 12 + 6, 255 - (int)i, 6);
    nn_dataset_compute_norm(&ds);
    // channel 0 values 0..3 /255: mean 1.5/255, std sqrt(1.25)/255
    CHECK_CLOSE(ds.mean[0], 1.5 / 255, 1e-6, 0);
    CHECK_CLOSE(ds.std[0], sqrt(1.25) / 255, 1e-5, 0);
    CHECK_CLOSE(ds.mean[1], 253.5 / 255, 1e-6, 0);
    size_t idx[4] = {0, 1, 2, 3};
    float x[48];
    int32_t y[4];
    nn_dataset_batch(&ds, idx, 4, NULL, NULL, x, y);
    double s = 0, ss = 0;
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 6; j++) {
            s += (double)x[i * 12 + j];
            ss += (double)x[i * 12 + j] * (double)x[i * 12 + j];
        }
    CHECK(fabs(s / 24) < 1e-5 && fabs(ss / 24 - 1) < 1e-4);
    CHECK_CLOSE(x[0], (0 - 1.5) / sqrt(1.25), 1e-5, 1e-6);
    CHECK(y[2] == 2);
    // set_norm copies another set's statistics
    const float m[2] = {0.5f, 0.25f}, sd[2] = {0.5f, 2.0f};
    nn_dataset_set_norm(&ds, m, sd);
    nn_dataset_batch(&ds, idx + 3, 1, NULL, NULL, x, NULL);
    CHECK_CLOSE(x[0], (3.0 / 255 - 0.5) / 0.5, 1e-6, 1e-7);
    CHECK_CLOSE(x[6], (252.0 / 255 - 0.25) / 2.0, 1e-6, 1e-7);
    nn_dataset_free(&ds);
}

static void loader_should_shuffle_a_permutation_reproducibly(void) {
    nn_dataset ds;
    const size_t n = 23, B = 5;
    make_indexed_set(&ds, n, 1, 2, 2);
    float x[5 * 4];
    int32_t y[5];
    size_t first[2][23];
    for (int run = 0; run < 2; run++) {
        nn_loader ld;
        CHECK(nn_loader_init(&ld, &ds, B, true, false, NULL, 1234) == NN_OK);
        size_t seen[23] = {0}, k = 0, got, batches = 0;
        while ((got = nn_loader_next(&ld, x, y)) > 0) {
            CHECK(got == (batches < 4 ? B : 3));
            for (size_t i = 0; i < got; i++) {
                CHECK(x[i * 4] == (float)y[i] / 255.0f); // image and label travel together
                seen[y[i]]++;
                first[run][k++] = (size_t)y[i];
            }
            batches++;
        }
        CHECK(batches == 5 && k == n && ld.epoch == 1);
        for (size_t i = 0; i < n; i++)
            CHECK(seen[i] == 1);
        // the next epoch is another permutation, drawn afresh
        size_t second[23], k2 = 0;
        while ((got = nn_loader_next(&ld, x, y)) > 0)
            for (size_t i = 0; i < got; i++)
                second[k2++] = (size_t)y[i];
        CHECK(k2 == n && memcmp(second, first[run], sizeof second) != 0);
        nn_loader_free(&ld);
    }
    CHECK(memcmp(first[0], first[1], sizeof first[0]) == 0); // same seed, same order
    size_t sorted = 1;
    for (size_t i = 0; i < n; i++)
        sorted &= first[0][i] == i;
    CHECK(!sorted);
    // another seed, another order; no shuffling keeps the file order; drop_last
    nn_loader ld;
    CHECK(nn_loader_init(&ld, &ds, B, true, true, NULL, 99) == NN_OK);
    size_t other[23], k = 0, got;
    while ((got = nn_loader_next(&ld, x, y)) > 0) {
        CHECK(got == B);
        for (size_t i = 0; i < got; i++)
            other[k++] = (size_t)y[i];
    }
    CHECK(k == 20 && memcmp(other, first[0], 20 * sizeof(size_t)) != 0);
    nn_loader_free(&ld);
    CHECK(nn_loader_init(&ld, &ds, B, false, false, NULL, 1) == NN_OK);
    CHECK(nn_loader_next(&ld, x, y) == B && y[0] == 0 && y[4] == 4);
    nn_loader_free(&ld);
    nn_dataset_free(&ds);
}

static void augmentation_should_crop_and_flip_within_shape(void) {
    // one 3-channel 6x5 image with distinct pixel values: channel c, row i, column j
    nn_dataset ds;
    make_indexed_set(&ds, 1, 3, 6, 5);
    const size_t C = 3, H = 6, W = 5, hw = H * W;
    for (size_t c = 0; c < C; c++)
        for (size_t i = 0; i < hw; i++)
            ds.pixels[c * hw + i] = (uint8_t)(1 + c * 60 + i);
    nn_dataset_compute_norm(&ds);
    nn_rng rng;
    nn_rng_seed(&rng, 5);
    const nn_augment aug = {2, true};
    size_t idx = 0, flips = 0, shifts[5][5] = {{0}};
    float x[3 * 6 * 5];
    for (int trial = 0; trial < 300; trial++) {
        for (size_t i = 0; i < C * hw; i++)
            x[i] = NAN;
        nn_dataset_batch(&ds, &idx, 1, &aug, &rng, x, NULL);
        // find the (shift, flip) that explains the output; padding is pixel 0
        int found = 0;
        for (int flip = 0; flip < 2 && !found; flip++)
            for (int oy = -2; oy <= 2 && !found; oy++)
                for (int ox = -2; ox <= 2 && !found; ox++) {
                    int ok = 1;
                    for (size_t c = 0; c < C && ok; c++)
                        for (size_t i = 0; i < H && ok; i++)
                            for (size_t j = 0; j < W && ok; j++) {
                                long si = (long)i + oy;
                                long sj = (long)(flip ? W - 1 - j : j) + ox;
                                int in = si >= 0 && sj >= 0 && si < (long)H && sj < (long)W;
                                uint8_t v =
                                    in ? ds.pixels[c * hw + (size_t)si * W + (size_t)sj] : 0;
                                float want = ((float)v / 255.0f - ds.mean[c]) / ds.std[c];
                                ok = x[c * hw + i * W + j] == want;
                            }
                    if (ok) {
                        found = 1;
                        flips += (size_t)flip;
                        shifts[oy + 2][ox + 2]++;
                    }
                }
        CHECK(found);
    }
    // flips ~ Binomial(300, 1/2): sd 8.7, ±6 sd; each of the 25 offsets is missed by 300
    // uniform draws with probability (24/25)^300 ≈ 5e-6 (the seed is fixed anyway)
    CHECK(flips > 150 - 52 && flips < 150 + 52);
    for (int a = 0; a < 5; a++)
        for (int b = 0; b < 5; b++)
            CHECK(shifts[a][b] > 0);
    // flip only: the output is the image or its mirror, nothing else
    const nn_augment flip_only = {0, true};
    nn_dataset_batch(&ds, &idx, 1, &flip_only, &rng, x, NULL);
    float plain[3 * 6 * 5];
    nn_dataset_batch(&ds, &idx, 1, NULL, NULL, plain, NULL);
    int same = memcmp(x, plain, sizeof x) == 0, mirror = 1;
    for (size_t c = 0; c < C; c++)
        for (size_t i = 0; i < H; i++)
            for (size_t j = 0; j < W; j++)
                mirror &= x[c * hw + i * W + j] == plain[c * hw + i * W + (W - 1 - j)];
    CHECK(same != mirror);
    nn_dataset_free(&ds);
}

// ---- text ----

static void text_should_build_vocabulary_encode_and_sample_windows(void) {
    const char *s = "hello world, hello text!";
    const size_t n = strlen(s);
    nn_text t;
    char err[256];
    CHECK(nn_text_from_memory(&t, s, n, 0.25f, err, sizeof err) == NN_OK);
    // sorted distinct bytes: " !,dehlortwx"
    CHECK(t.vocab == 12);
    CHECK(t.itos[0] == ' ' && t.itos[1] == '!' && t.itos[11] == 'x');
    CHECK(t.stoi['h'] == 5 && t.stoi['z'] == -1);
    CHECK(t.n == n && t.n_train == n - 6);
    int32_t ids[64];
    char back[65];
    CHECK(nn_text_encode(&t, s, n, ids, err, sizeof err) == NN_OK);
    CHECK(nn_text_decode(&t, ids, n, back) == NN_OK && strcmp(back, s) == 0);
    for (size_t i = 0; i < n; i++)
        CHECK(ids[i] == t.ids[i]);
    CHECK(nn_text_encode(&t, "hez", 3, ids, err, sizeof err) == NN_ERR_ARG);
    CHECK(has(err, "byte 0x7a at position 2"));
    ids[0] = 12;
    CHECK(nn_text_decode(&t, ids, 1, back) == NN_ERR_ARG && back[0] == '?');
    // windows: y is x shifted by one, both inside the split
    nn_rng r1, r2;
    nn_rng_seed(&r1, 3);
    nn_rng_seed(&r2, 3);
    const size_t B = 8, T = 4;
    int32_t x[32], y[32], x2[32], y2[32];
    CHECK(nn_text_batch(&t, NN_SPLIT_TRAIN, B, T, &r1, x, y) == NN_OK);
    CHECK(nn_text_batch(&t, NN_SPLIT_TRAIN, B, T, &r2, x2, y2) == NN_OK);
    CHECK(memcmp(x, x2, sizeof x) == 0 && memcmp(y, y2, sizeof y) == 0);
    for (size_t b = 0; b < B; b++) {
        for (size_t i = 0; i + 1 < T; i++)
            CHECK(y[b * T + i] == x[b * T + i + 1]);
        // the window occurs in the training text
        int found = 0;
        for (size_t st = 0; st + T + 1 <= t.n_train && !found; st++) {
            int ok = 1;
            for (size_t i = 0; i < T; i++)
                ok &= x[b * T + i] == t.ids[st + i] && y[b * T + i] == t.ids[st + i + 1];
            found = ok;
        }
        CHECK(found);
    }
    // the validation split has 6 ids: windows of 6 fit, 7 do not
    CHECK(nn_text_batch(&t, NN_SPLIT_VAL, 2, 5, &r1, x, y) == NN_OK);
    for (size_t i = 0; i < 5; i++)
        CHECK(x[i] == t.ids[t.n_train + i]);
    CHECK(nn_text_batch(&t, NN_SPLIT_VAL, 2, 6, &r1, x, y) == NN_ERR_ARG);
    nn_text_free(&t);
    CHECK(nn_text_from_memory(&t, "", 0, 0.1f, err, sizeof err) == NN_ERR_FORMAT);
    CHECK(nn_text_from_memory(&t, "ab", 2, 1.0f, err, sizeof err) == NN_ERR_ARG);
    // from a file
    write_bytes(td_path("tiny.txt"), s, n, 0);
    CHECK(nn_text_load(&t, td_path("tiny.txt"), 0.0f, err, sizeof err) == NN_OK);
    CHECK(t.n == n && t.n_train == n && t.vocab == 12);
    nn_text_free(&t);
    CHECK(nn_text_load(&t, td_path("none.txt"), 0.1f, err, sizeof err) == NN_ERR_IO);
    CHECK(has(err, "none.txt: cannot open"));
    // a folder where a file should be: every reader says so (it read as an empty text, a
    // CIFAR file of 4096 bytes, an IDX file with a bad header)
    const char *dir = td_path("folder.bin");
    CHECK(mkdir(dir, 0755) == 0);
    CHECK(nn_text_load(&t, dir, 0.1f, err, sizeof err) == NN_ERR_IO);
    CHECK(has(err, "folder.bin: is a folder, not a data file"));
    nn_dataset ds;
    memset(&ds, 0, sizeof ds);
    CHECK(nn_dataset_load_cifar(&ds, &dir, 1, NN_CIFAR100_FINE, 0, err, sizeof err) == NN_ERR_IO);
    CHECK(has(err, "folder.bin: is a folder, not a data file"));
    nn_idx f;
    CHECK(nn_idx_read(dir, NN_IDX_MAGIC_IMAGES, 0, &f, err, sizeof err) == NN_ERR_IO);
    CHECK(has(err, "folder.bin: is a folder, not a data file"));
    rmdir(dir);
}

// ---- the real files, when installed ----

#define FMNIST_DIR     "/usr/share/datasets/fashion-mnist/"
#define CIFAR100_TRAIN "/work/shared/data/cifar-100-binary/train.bin"
#define SHAKESPEARE    "/work/shared/data/tinyshakespeare/input.txt"

static void real_fashion_mnist_should_load_when_installed(void) {
    if (access(FMNIST_DIR "train-images-idx3-ubyte.gz", R_OK) != 0) {
        printf("note: %s absent (scripts/deps.sh installs it): skipped\n", FMNIST_DIR);
        return;
    }
    char err[256] = "";
    nn_dataset ds;
    nn_status st =
        nn_dataset_load_idx(&ds, FMNIST_DIR "train-images-idx3-ubyte.gz",
                            FMNIST_DIR "train-labels-idx1-ubyte.gz", 1000, err, sizeof err);
    CHECK_MSG(st == NN_OK, "%s", err);
    if (st != NN_OK) return;
    CHECK(ds.n == 1000 && ds.c == 1 && ds.h == 28 && ds.w == 28 && ds.num_classes == 10);
    size_t hist[10] = {0};
    for (size_t i = 0; i < ds.n; i++) {
        CHECK(ds.labels[i] >= 0 && ds.labels[i] < 10);
        hist[ds.labels[i] % 10]++;
    }
    for (int k = 0; k < 10; k++)
        CHECK(hist[k] > 50); // roughly balanced classes
    // Fashion-MNIST's known mean pixel is 0.2860 (over the full training set)
    nn_dataset_compute_norm(&ds);
    CHECK(fabsf(ds.mean[0] - 0.286f) < 0.02f && fabsf(ds.std[0] - 0.353f) < 0.02f);
    nn_dataset_free(&ds);
    nn_idx f;
    CHECK(nn_idx_read(FMNIST_DIR "t10k-labels-idx1-ubyte.gz", NN_IDX_MAGIC_LABELS, 0, &f, err,
                      sizeof err) == NN_OK);
    CHECK(f.dims[0] == 10000 && f.count == 10000);
    nn_idx_free(&f);
    CHECK(nn_idx_read(FMNIST_DIR "train-images-idx3-ubyte.gz", NN_IDX_MAGIC_IMAGES, 1, &f, err,
                      sizeof err) == NN_OK);
    CHECK(f.dims[0] == 60000 && f.dims[1] == 28 && f.dims[2] == 28);
    nn_idx_free(&f);
}

static void real_cifar100_and_shakespeare_should_load_when_present(void) {
    char err[256] = "";
    if (access(CIFAR100_TRAIN, R_OK) == 0) {
        nn_dataset ds;
        const char *p = CIFAR100_TRAIN;
        nn_status st = nn_dataset_load_cifar(&ds, &p, 1, NN_CIFAR100_FINE, 200, err, sizeof err);
        CHECK_MSG(st == NN_OK, "%s", err);
        if (st == NN_OK) {
            CHECK(ds.n == 200 && ds.c == 3 && ds.num_classes == 100);
            for (size_t i = 0; i < ds.n; i++)
                CHECK(ds.labels[i] >= 0 && ds.labels[i] < 100);
            nn_dataset_free(&ds);
        }
    } else {
        printf("note: %s absent: skipped\n", CIFAR100_TRAIN);
    }
    if (access(SHAKESPEARE, R_OK) == 0) {
        nn_text t;
        nn_status st = nn_text_load(&t, SHAKESPEARE, 0.1f, err, sizeof err);
        CHECK_MSG(st == NN_OK, "%s", err);
        if (st == NN_OK) {
            CHECK(t.n == 1115394 && t.vocab == 65);
            CHECK(t.n_train == 1115394 - 111539);
            nn_text_free(&t);
        }
    } else {
        printf("note: %s absent: skipped\n", SHAKESPEARE);
    }
}

// A test set must fit the model built for the training set: the same image shape and
// classes, its labels in range. (A t10k file of 56 x 56 beside 28 x 28 training images once
// overflowed the batch buffer of `ngd train`'s evaluation.)
static void sets_should_match_in_shape_and_classes(void) {
    make_img_data();
    char err[256];
    uint8_t buf[512], big[IMG_N * IMG_H * (IMG_W + 1)] = {0};
    write_idx_pair("m-train-images", "m-train-labels", 0);
    write_idx_pair("m-test-images", "m-test-labels", 0);
    const uint32_t dw[3] = {IMG_N, IMG_H, IMG_W + 1};
    write_bytes(td_path("m-wide-images"), buf,
                make_idx(buf, NN_IDX_MAGIC_IMAGES, dw, 3, big, sizeof big), 0);
    nn_dataset tr, te, wide;
    CHECK(nn_dataset_load_idx(&tr, td_path("m-train-images"), td_path("m-train-labels"), 0, err,
                              sizeof err) == NN_OK);
    CHECK(nn_dataset_load_idx(&te, td_path("m-test-images"), td_path("m-test-labels"), 0, err,
                              sizeof err) == NN_OK);
    CHECK(nn_dataset_load_idx(&wide, td_path("m-wide-images"), td_path("m-test-labels"), 0, err,
                              sizeof err) == NN_OK);
    CHECK(nn_dataset_check_match(&tr, "train-im", &te, "test-im", err, sizeof err) == NN_OK);
    CHECK(nn_dataset_check_match(&tr, "train-im", &wide, "test-im", err, sizeof err) ==
          NN_ERR_FORMAT);
    CHECK(has(err, "test-im: images of 1 x 3 x 5, but the training images train-im are "
                   "1 x 3 x 4"));
    CHECK(nn_dataset_check_match(&wide, "train-im", &te, "test-im", err, sizeof err) ==
          NN_ERR_FORMAT);
    // channels
    te.c = 3;
    CHECK(nn_dataset_check_match(&tr, "train-im", &te, "test-im", err, sizeof err) ==
              NN_ERR_FORMAT &&
          has(err, "images of 3 x 3 x 4"));
    te.c = 1;
    // classes: CIFAR-100 (100) beside CIFAR-10 (10), same images
    const size_t rec100 = 2 + NN_CIFAR_PIXELS;
    uint8_t *cb = malloc(2 * rec100);
    CHECK(cb != NULL);
    if (cb) {
        write_bytes(td_path("m10.bin"), cb, make_cifar(cb, 2, NN_CIFAR10), 0);
        write_bytes(td_path("m100.bin"), cb, make_cifar(cb, 2, NN_CIFAR100_FINE), 0);
        const char *p10 = td_path("m10.bin"), *p100 = td_path("m100.bin");
        nn_dataset c10, c100;
        CHECK(nn_dataset_load_cifar(&c10, &p10, 1, NN_CIFAR10, 0, err, sizeof err) == NN_OK);
        CHECK(nn_dataset_load_cifar(&c100, &p100, 1, NN_CIFAR100_FINE, 0, err, sizeof err) ==
              NN_OK);
        CHECK(nn_dataset_check_match(&c10, "a.bin", &c10, "b.bin", err, sizeof err) == NN_OK);
        CHECK(nn_dataset_check_match(&c10, "a.bin", &c100, "b.bin", err, sizeof err) ==
                  NN_ERR_FORMAT &&
              has(err, "b.bin: 100 classes, but the training set a.bin has 10"));
        nn_dataset_free(&c10);
        nn_dataset_free(&c100);
        free(cb);
    }
    // a label outside the training set's classes (a set built in memory)
    te.labels[3] = 10;
    CHECK(nn_dataset_check_match(&tr, "train-im", &te, "test-im", err, sizeof err) ==
              NN_ERR_FORMAT &&
          has(err, "test-im: label 10 of item 3 is out of"));
    nn_dataset_free(&tr);
    nn_dataset_free(&te);
    nn_dataset_free(&wide);
}

static const test_case TESTS[] = {
    TEST(idx_should_read_plain_and_gzip_files),
    TEST(idx_should_reject_a_wrong_magic_with_its_value),
    TEST(idx_should_reject_truncated_and_oversized_files),
    TEST(idx_should_read_large_files_and_not_trust_declared_sizes),
    TEST(idx_should_reject_corrupt_gzip_missing_files_and_inconsistent_pairs),
    TEST(cifar_should_read_records_and_reject_wrong_sizes),
    TEST(streamed_cifar_should_equal_the_set_in_memory),
    TEST(sets_should_match_in_shape_and_classes),
    TEST(normalization_should_standardize_each_channel),
    TEST(loader_should_shuffle_a_permutation_reproducibly),
    TEST(augmentation_should_crop_and_flip_within_shape),
    TEST(text_should_build_vocabulary_encode_and_sample_windows),
    TEST(real_fashion_mnist_should_load_when_installed),
    TEST(real_cifar100_and_shakespeare_should_load_when_present),
};

int main(int argc, char **argv) {
    int rc = test_main(argc, argv, TESTS, NTESTS(TESTS));
    td_cleanup();
    return rc;
}
