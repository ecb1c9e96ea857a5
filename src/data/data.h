/*
 * data.h — the engine's data sets (internal, never installed): image classification sets
 * read from IDX (MNIST, Fashion-MNIST; plain or gzip) and CIFAR-10/100 binary files, with
 * seeded shuffling, batching into caller buffers and CIFAR augmentation; and character-
 * level text (Tiny Shakespeare) with a vocabulary, encode/decode and random windows.
 *
 * Every reader validates what it reads (magic, dimensions, sizes, label ranges) and
 * returns an nn_status; on error it writes a one-line message naming the file, what was
 * expected and what was found into the caller's err buffer (cap bytes, NUL-terminated;
 * err may be NULL), leaves nothing allocated and never exits:
 *     "train-images-idx3-ubyte.gz: bad magic 0x00000801, expected 0x00000803 (IDX images)"
 *
 * Images are stored as the file's uint8 pixels (a quarter of the memory of floats: 150 MB
 * rather than 600 MB for CIFAR-100's training set). Batching turns them into floats:
 * x = (pixel/255 − mean[c]) / std[c], i.e. scaled to [0, 1] then normalized per channel
 * (torchvision's ToTensor + Normalize). mean/std start as 0/1 (plain [0, 1] scaling);
 * nn_dataset_compute_norm measures them on a set, nn_dataset_set_norm copies them (the test
 * set takes the training set's).
 */
#ifndef NN_DATA_H
#define NN_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn.h"

#define NN_DATA_MAX_C 4 // most channels an image set may have

// Writes "fmt" into err (if err && cap); always NUL-terminated. For the readers.
void nn_data_err(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// A path given as a data file that is a folder: its error (NN_ERR_IO), else NN_OK. (Reading a
// folder "works" through fopen and gives a size or an empty read, which said nothing useful.)
nn_status nn_data_not_folder(const char *path, char *err, size_t cap);

// ====== Image classification sets ======

typedef struct nn_stream nn_stream; // a streamed set's open files (dataset.c)

typedef struct {
    size_t n, c, h, w; // n images of (c, h, w)
    uint8_t *pixels;   // (n, c, h, w) as stored in the file; NULL when streamed
    int32_t *labels;   // (n) in [0, num_classes)
    size_t num_classes;
    float mean[NN_DATA_MAX_C]; // per-channel normalization of pixel/255 (0 by default)
    float std[NN_DATA_MAX_C];  // (1 by default)
    nn_stream *stream;         // streamed sets: the files the pixels are read from per batch
} nn_dataset;

// ---- IDX (idx.c) ----

#define NN_IDX_MAGIC_IMAGES 0x00000803u // unsigned bytes, 3 dimensions (n, h, w)
#define NN_IDX_MAGIC_LABELS 0x00000801u // unsigned bytes, 1 dimension (n)

// One IDX file of unsigned bytes: ndim dimensions, then the data.
typedef struct {
    uint32_t magic;
    size_t ndim;
    size_t dims[3]; // dims[0] = number of items the file declares
    size_t count;   // items read (<= dims[0])
    uint8_t *data;  // (count, dims[1], dims[2]) owned; free with nn_idx_free
} nn_idx;

// Reads an IDX file (gzip-compressed or plain: zlib tells them apart) whose magic must be
// `magic` (NN_IDX_MAGIC_IMAGES or NN_IDX_MAGIC_LABELS). max_items > 0 reads only the first
// max_items items (then bytes after them are not checked); max_items = 0 reads all and
// requires the file to end exactly after the declared data. Errors: NN_ERR_IO (open/read),
// NN_ERR_FORMAT (magic, zero or huge dimensions, truncated, trailing bytes, corrupt gzip),
// NN_ERR_NOMEM, NN_ERR_ARG.
nn_status nn_idx_read(const char *path, uint32_t magic, size_t max_items, nn_idx *out, char *err,
                      size_t cap);
void nn_idx_free(nn_idx *f);

// MNIST / Fashion-MNIST: images (n, h, w) (28 x 28 for both) + labels (n) in [0, 10) -> ds
// with c = 1, num_classes = 10. The two files must declare the same count. max_n as for
// nn_idx_read. A test set must then match its training set: nn_dataset_check_match.
nn_status nn_dataset_load_idx(nn_dataset *ds, const char *images_path, const char *labels_path,
                              size_t max_n, char *err, size_t cap);

// ---- CIFAR (cifar.c) ----

typedef enum {
    NN_CIFAR10 = 0,         // records <label><3072 px>, 10 classes
    NN_CIFAR100_FINE = 1,   // records <coarse><fine><3072 px>, the 100 fine labels
    NN_CIFAR100_COARSE = 2, // the same records, the 20 coarse labels
} nn_cifar_kind;

#define NN_CIFAR_PIXELS 3072 // 3 x 32 x 32: 1024 R, 1024 G, 1024 B, row-major

// Reads the records of npaths binary files (CIFAR-10's data_batch_1..5.bin, or one
// CIFAR-100 file) in order, at most max_n records in all (0 = all). Each file's size must
// be a non-zero multiple of the record size; labels must be in range. ds: c = 3, 32 x 32.
nn_status nn_dataset_load_cifar(nn_dataset *ds, const char *const *paths, size_t npaths,
                                nn_cifar_kind kind, size_t max_n, char *err, size_t cap);
// The same checks, but only the labels are kept: the files stay open and each batch reads
// its records (pread; the page cache keeps them), so the set costs no memory of its own
// (CIFAR-100's training set held is 150 MB). A read that fails later (the file shrank)
// zero-fills the image and marks the set: nn_dataset_failed. At most NN_DATA_MAX_FILES files.
#define NN_DATA_MAX_FILES 8
nn_status nn_dataset_open_cifar(nn_dataset *ds, const char *const *paths, size_t npaths,
                                nn_cifar_kind kind, size_t max_n, char *err, size_t cap);
// (cifar.c's helper) Adds an open file to ds's stream: its records hold samples from
// `first` on, `rec` bytes each, the pixels `px_off` bytes into a record.
nn_status nn_stream_add(nn_dataset *ds, const char *path, size_t first, size_t rec, size_t px_off);
// A streamed set's first failed read since it was opened: writes "path: reason" into err
// and returns true; false if none (always for sets in memory).
bool nn_dataset_failed(const nn_dataset *ds, char *err, size_t cap);

// ---- the set, batching, augmentation, shuffling (dataset.c) ----

void nn_dataset_free(nn_dataset *ds); // zero-initialised or freed sets are fine

// Checks that `test` fits a model built for `train` (whose batches it will be fed in the
// same buffers): the same image shape (c, h, w), the same number of classes, and every test
// label in range. NN_ERR_FORMAT with a message naming both files (the paths are only used
// in the message) and both shapes:
//     "DIR/t10k-images-idx3-ubyte: images of 1 x 56 x 56, but the training images
//      DIR/train-images-idx3-ubyte are 1 x 28 x 28"
nn_status nn_dataset_check_match(const nn_dataset *train, const char *train_path,
                                 const nn_dataset *test, const char *test_path, char *err,
                                 size_t cap);

// Measures the per-channel mean and (population) std of pixel/255 over the whole set.
void nn_dataset_compute_norm(nn_dataset *ds);
void nn_dataset_set_norm(nn_dataset *ds, const float *mean, const float *std);

// CIFAR-style augmentation (torchvision RandomCrop(32, padding=4) then
// RandomHorizontalFlip()): a crop at a uniformly random offset of the image zero-padded by
// `crop_pad` pixels (a zero pixel normalizes to −mean/std, as in torchvision where Normalize
// comes after the crop), then a left-right mirror with probability 1/2 if `hflip`.
typedef struct {
    size_t crop_pad; // 0 = no crop
    bool hflip;
} nn_augment;

// x (B, c, h, w) and y (B) <- the images idx[0..B) normalized (and augmented when aug is not
// NULL, drawing from rng). y may be NULL.
void nn_dataset_batch(const nn_dataset *ds, const size_t *idx, size_t B, const nn_augment *aug,
                      nn_rng *rng, float *x, int32_t *y);

// An epoch iterator: a (re)shuffled order per epoch, batches into caller buffers.
typedef struct {
    const nn_dataset *ds; // borrowed
    size_t batch;
    bool shuffle, drop_last;
    nn_augment aug; // applied when aug.crop_pad or aug.hflip is set
    nn_rng rng;     // shuffling and augmentation
    size_t *order;  // (n) sample order of the current epoch
    size_t pos, epoch;
} nn_loader;

nn_status nn_loader_init(nn_loader *ld, const nn_dataset *ds, size_t batch, bool shuffle,
                         bool drop_last, const nn_augment *aug, uint64_t seed);
// Fills x (batch, c, h, w) and y (batch) with the next batch and returns its size; returns
// 0 at the end of an epoch (x, y untouched) and starts the next one (reshuffled).
size_t nn_loader_next(nn_loader *ld, float *x, int32_t *y);
void nn_loader_free(nn_loader *ld);

// ====== Character-level text (text.c) ======

typedef enum { NN_SPLIT_TRAIN = 0, NN_SPLIT_VAL = 1 } nn_split;

typedef struct {
    size_t vocab;      // V distinct bytes; ids are their ranks in byte order
    uint8_t itos[256]; // id -> byte
    int16_t stoi[256]; // byte -> id, -1 if absent
    uint8_t *ids;      // (n) the whole text encoded (owned)
    size_t n, n_train; // train = ids[0, n_train), val = ids[n_train, n)
} nn_text;

// The vocabulary is every byte value present in the text. The last val_frac of the text
// (in [0, 1)) is the validation split. Errors: NN_ERR_IO, NN_ERR_FORMAT (empty), NN_ERR_ARG,
// NN_ERR_NOMEM. nn_text_from_memory copies buf.
nn_status nn_text_load(nn_text *t, const char *path, float val_frac, char *err, size_t cap);
nn_status nn_text_from_memory(nn_text *t, const char *buf, size_t n, float val_frac, char *err,
                              size_t cap);
void nn_text_free(nn_text *t);

// s (n bytes) -> ids (n). NN_ERR_ARG (message names the byte and its position) for a byte
// outside the vocabulary.
nn_status nn_text_encode(const nn_text *t, const char *s, size_t n, int32_t *ids, char *err,
                         size_t cap);
// ids (n) -> out (n bytes + NUL). NN_ERR_ARG for an id outside [0, V) (out holds '?' there).
nn_status nn_text_decode(const nn_text *t, const int32_t *ids, size_t n, char *out);

// B random windows of T+1 consecutive ids of the split, each starting uniformly in
// [0, len − T − 1]: x (B, T) = window[0..T), y (B, T) = window[1..T] (next-token targets).
// NN_ERR_ARG if the split is shorter than T+1 ids.
nn_status nn_text_batch(const nn_text *t, nn_split split, size_t B, size_t T, nn_rng *rng,
                        int32_t *x, int32_t *y);

#endif
