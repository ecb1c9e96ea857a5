/*
 * dataset.c — what every image set shares: normalization statistics, batching (uint8
 * pixels -> normalized floats through a per-channel lookup table), CIFAR augmentation
 * (random crop with zero padding, horizontal flip), and the epoch iterator with seeded
 * Fisher–Yates shuffling. Also the readers' error formatter.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data.h"

// ---- streamed sets: records read from their files per batch ----

struct nn_stream {
    int fd[NN_DATA_MAX_FILES];
    char *path[NN_DATA_MAX_FILES];
    size_t first[NN_DATA_MAX_FILES]; // first sample of each file
    size_t nfiles, rec, px_off;
    int failed_errno; // the first failed read: errno (0 = short read)
    size_t failed_file;
    bool failed;
};

nn_status nn_stream_add(nn_dataset *ds, const char *path, size_t first, size_t rec, size_t px_off) {
    if (!ds->stream && !(ds->stream = nn_calloc(1, sizeof *ds->stream))) return NN_ERR_NOMEM;
    nn_stream *s = ds->stream;
    if (s->nfiles == NN_DATA_MAX_FILES) return NN_ERR_ARG;
    char *p = nn_malloc(strlen(path) + 1, 1);
    if (!p) return NN_ERR_NOMEM;
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        free(p);
        return NN_ERR_IO;
    }
    memcpy(p, path, strlen(path) + 1);
    s->fd[s->nfiles] = fd, s->path[s->nfiles] = p, s->first[s->nfiles] = first;
    s->rec = rec, s->px_off = px_off;
    s->nfiles++;
    return NN_OK;
}

// The pixels of sample i: in memory, or read from its file into buf (c·h·w bytes);
// a failed read gives zeros and marks the set.
static const uint8_t *sample_pixels(const nn_dataset *ds, size_t i, uint8_t *buf) {
    const size_t bytes = ds->c * ds->h * ds->w;
    if (ds->pixels) return ds->pixels + i * bytes;
    nn_stream *s = ds->stream;
    size_t f = s->nfiles - 1;
    while (f > 0 && s->first[f] > i)
        f--;
    const off_t off = (off_t)((i - s->first[f]) * s->rec + s->px_off);
    size_t got = 0;
    while (got < bytes) {
        const ssize_t r = pread(s->fd[f], buf + got, bytes - got, off + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (!s->failed)
                s->failed = true, s->failed_errno = r < 0 ? errno : 0, s->failed_file = f;
            memset(buf, 0, bytes);
            return buf;
        }
        got += (size_t)r;
    }
    return buf;
}

bool nn_dataset_failed(const nn_dataset *ds, char *err, size_t cap) {
    const nn_stream *s = ds->stream;
    if (!s || !s->failed) return false;
    nn_data_err(err, cap, "%s: reading a record failed: %s", s->path[s->failed_file],
                s->failed_errno ? strerror(s->failed_errno) : "the file is shorter than it was");
    return true;
}

void nn_data_err(char *err, size_t cap, const char *fmt, ...) {
    if (!err || cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

nn_status nn_data_not_folder(const char *path, char *err, size_t cap) {
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) return NN_OK; // (open says the rest)
    nn_data_err(err, cap, "%s: is a folder, not a data file", path);
    return NN_ERR_IO;
}

void nn_dataset_free(nn_dataset *ds) {
    free(ds->pixels);
    free(ds->labels);
    if (ds->stream) {
        for (size_t f = 0; f < ds->stream->nfiles; f++) {
            close(ds->stream->fd[f]);
            free(ds->stream->path[f]);
        }
        free(ds->stream);
    }
    memset(ds, 0, sizeof *ds);
}

nn_status nn_dataset_check_match(const nn_dataset *train, const char *train_path,
                                 const nn_dataset *test, const char *test_path, char *err,
                                 size_t cap) {
    if (!train || !test) {
        nn_data_err(err, cap, "nn_dataset_check_match: bad arguments");
        return NN_ERR_ARG;
    }
    if (test->c != train->c || test->h != train->h || test->w != train->w) {
        nn_data_err(err, cap,
                    "%s: images of %zu x %zu x %zu, but the training images %s are "
                    "%zu x %zu x %zu",
                    test_path, test->c, test->h, test->w, train_path, train->c, train->h, train->w);
        return NN_ERR_FORMAT;
    }
    if (test->num_classes != train->num_classes) {
        nn_data_err(err, cap, "%s: %zu classes, but the training set %s has %zu", test_path,
                    test->num_classes, train_path, train->num_classes);
        return NN_ERR_FORMAT;
    }
    for (size_t i = 0; i < test->n; i++)
        if (test->labels[i] < 0 || (size_t)test->labels[i] >= train->num_classes) {
            nn_data_err(err, cap,
                        "%s: label %d of item %zu is out of the training set's range "
                        "[0, %zu)",
                        test_path, (int)test->labels[i], i, train->num_classes);
            return NN_ERR_FORMAT;
        }
    return NN_OK;
}

void nn_dataset_compute_norm(nn_dataset *ds) {
    NN_ASSERT(ds->c <= NN_DATA_MAX_C);
    const size_t hw = ds->h * ds->w;
    // integer histograms: exact sums whatever the set size; one pass over the samples
    uint64_t hist[NN_DATA_MAX_C][256];
    memset(hist, 0, sizeof hist);
    for (size_t i = 0; i < ds->n; i++) {
        uint8_t buf[NN_CIFAR_PIXELS]; // streamed sets are CIFAR's
        NN_ASSERT(ds->pixels || ds->c * hw <= sizeof buf);
        const uint8_t *img = sample_pixels(ds, i, buf);
        for (size_t c = 0; c < ds->c; c++)
            for (size_t j = 0; j < hw; j++)
                hist[c][img[c * hw + j]]++;
    }
    for (size_t c = 0; c < ds->c; c++) {
        double cnt = 0, s = 0, ss = 0;
        for (int v = 0; v < 256; v++) {
            const double x = v / 255.0, k = (double)hist[c][v];
            cnt += k;
            s += k * x;
            ss += k * x * x;
        }
        const double mean = cnt > 0 ? s / cnt : 0.0;
        const double var = cnt > 0 ? ss / cnt - mean * mean : 1.0;
        ds->mean[c] = (float)mean;
        ds->std[c] = var > 1e-12 ? (float)sqrt(var) : 1.0f;
    }
}

void nn_dataset_set_norm(nn_dataset *ds, const float *mean, const float *std) {
    NN_ASSERT(ds->c <= NN_DATA_MAX_C);
    for (size_t c = 0; c < ds->c; c++) {
        ds->mean[c] = mean[c];
        ds->std[c] = std[c];
    }
}

// One image's C planes of hw pixels through the per-channel lookup table
static void convert_image(const float (*lut)[256], const uint8_t *src, float *dst, size_t C,
                          size_t hw) {
    for (size_t c = 0; c < C; c++)
        for (size_t j = 0; j < hw; j++)
            dst[c * hw + j] = lut[c][src[c * hw + j]];
}

void nn_dataset_batch(const nn_dataset *ds, const size_t *idx, size_t B, const nn_augment *aug,
                      nn_rng *rng, float *x, int32_t *y) {
    NN_ASSERT(ds && idx && x && ds->c <= NN_DATA_MAX_C);
    const size_t C = ds->c, H = ds->h, W = ds->w, hw = H * W;
    const bool augment = aug && (aug->crop_pad > 0 || aug->hflip);
    NN_ASSERT(!augment || rng);
    // lut[c][v] = (v/255 − mean[c]) / std[c]; zero[c] is the padding value
    float lut[NN_DATA_MAX_C][256], zero[NN_DATA_MAX_C];
    for (size_t c = 0; c < C; c++) {
        for (int v = 0; v < 256; v++)
            lut[c][v] = ((float)v / 255.0f - ds->mean[c]) / ds->std[c];
        zero[c] = lut[c][0];
    }
    if (!augment && ds->pixels) { // in memory, no random draws: the images on the threads
        NN_OMP_FOR(B * C * hw)
        for (size_t b = 0; b < B; b++) {
            NN_ASSERT(idx[b] < ds->n);
            convert_image((const float(*)[256])lut, sample_pixels(ds, idx[b], NULL), x + b * C * hw,
                          C, hw);
            if (y) y[b] = ds->labels[idx[b]];
        }
        return;
    }
    for (size_t b = 0; b < B; b++) {
        NN_ASSERT(idx[b] < ds->n);
        uint8_t buf[NN_CIFAR_PIXELS]; // streamed sets are CIFAR's
        NN_ASSERT(ds->pixels || C * hw <= sizeof buf);
        const uint8_t *src = sample_pixels(ds, idx[b], buf);
        float *dst = x + b * C * hw;
        if (y) y[b] = ds->labels[idx[b]];
        if (!augment) {
            convert_image((const float(*)[256])lut, src, dst, C, hw);
            continue;
        }
        // draw order per image: crop offsets, then flip (fixed, so runs are reproducible)
        const size_t P = aug->crop_pad;
        const ptrdiff_t oy = P ? (ptrdiff_t)nn_rng_below(rng, 2 * P + 1) - (ptrdiff_t)P : 0;
        const ptrdiff_t ox = P ? (ptrdiff_t)nn_rng_below(rng, 2 * P + 1) - (ptrdiff_t)P : 0;
        const bool flip = aug->hflip && (nn_rng_u64(rng) >> 63);
        for (size_t c = 0; c < C; c++)
            for (size_t i = 0; i < H; i++) {
                const ptrdiff_t si = (ptrdiff_t)i + oy;
                for (size_t j = 0; j < W; j++) {
                    // output column j shows cropped column (flip ? W-1-j : j)
                    const ptrdiff_t sj = (ptrdiff_t)(flip ? W - 1 - j : j) + ox;
                    const bool in = si >= 0 && sj >= 0 && (size_t)si < H && (size_t)sj < W;
                    dst[c * hw + i * W + j] =
                        in ? lut[c][src[c * hw + (size_t)si * W + (size_t)sj]] : zero[c];
                }
            }
    }
}

// ---- epoch iterator ----

static void loader_new_epoch(nn_loader *ld) {
    if (ld->shuffle) nn_rng_permutation(&ld->rng, ld->order, ld->ds->n);
    ld->pos = 0;
}

nn_status nn_loader_init(nn_loader *ld, const nn_dataset *ds, size_t batch, bool shuffle,
                         bool drop_last, const nn_augment *aug, uint64_t seed) {
    memset(ld, 0, sizeof *ld);
    if (!ds || ds->n == 0 || batch == 0) return NN_ERR_ARG;
    ld->ds = ds;
    ld->batch = batch;
    ld->shuffle = shuffle;
    ld->drop_last = drop_last;
    if (aug) ld->aug = *aug;
    nn_rng_seed(&ld->rng, seed);
    ld->order = nn_malloc(ds->n, sizeof(size_t));
    if (!ld->order) return NN_ERR_NOMEM;
    for (size_t i = 0; i < ds->n; i++)
        ld->order[i] = i;
    loader_new_epoch(ld);
    return NN_OK;
}

size_t nn_loader_next(nn_loader *ld, float *x, int32_t *y) {
    const size_t n = ld->ds->n, left = n - ld->pos;
    if (left == 0 || (ld->drop_last && left < ld->batch)) {
        ld->epoch++;
        loader_new_epoch(ld);
        return 0;
    }
    const size_t B = left < ld->batch ? left : ld->batch;
    nn_dataset_batch(ld->ds, ld->order + ld->pos, B, &ld->aug, &ld->rng, x, y);
    ld->pos += B;
    return B;
}

void nn_loader_free(nn_loader *ld) {
    free(ld->order);
    memset(ld, 0, sizeof *ld);
}
