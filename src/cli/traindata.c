/*
 * traindata.c — the data of `ngd train` and `ngd eval`: the image sets (IDX: MNIST and
 * Fashion-MNIST; CIFAR-10/100 binaries, streamed) and Tiny Shakespeare's text from their
 * usual folders or --data-dir, each checked against the others, and the batches the loop
 * draws from them (images through an nn_loader, text as random windows).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dist.h"
#include "train.h"

static int file_exists(const char *p) { return access(p, R_OK) == 0; }

#define TEXT_VAL_FRAC    0.1f
#define TEXT_DEFAULT_DIR "../shared/data/tinyshakespeare"

// Tiny Shakespeare (or any text file named input.txt in --data-dir); --subset N keeps the
// first N characters (the vocabulary is then theirs).
static int load_text(const train_opts *t, train_sets *d) {
    char err[512], a[1024];
    snprintf(a, sizeof a, "%s/input.txt", t->data_dir ? t->data_dir : TEXT_DEFAULT_DIR);
    if (!file_exists(a)) {
        cli_error("put Tiny Shakespeare's input.txt (or any text) in a folder and pass "
                  "--data-dir",
                  "shakespeare: no %s", a);
        return -1;
    }
    nn_status s = nn_text_load(&d->text, a, TEXT_VAL_FRAC, err, sizeof err);
    if (s == NN_OK && t->subset && t->subset < d->text.n) {
        char *buf = malloc(t->subset);
        for (size_t i = 0; buf && i < t->subset; i++)
            buf[i] = (char)d->text.itos[d->text.ids[i]];
        nn_text_free(&d->text);
        if (buf)
            s = nn_text_from_memory(&d->text, buf, t->subset, TEXT_VAL_FRAC, err, sizeof err);
        else {
            s = NN_ERR_NOMEM;
            snprintf(err, sizeof err, "shakespeare: out of memory");
        }
        free(buf);
    }
    if (s != NN_OK) {
        cli_error(NULL, "%s", err);
        nn_text_free(&d->text);
        return -1;
    }
    return 0;
}

int train_load_data(const train_opts *t, train_sets *d) {
    char err[512], a[1024], b[1024], tra[1024] = ""; // tra: the training images, for messages
    const char *tea = a;                             // the test images, for messages
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", t->data);
    size_t ntr = t->subset, nte = t->subset ? (t->subset >= 5 ? t->subset / 5 : 1) : 0;
    nn_status s;
    if (t->text) return load_text(t, d);
    if (!strcmp(t->data, "fashion-mnist") || !strcmp(t->data, "mnist")) {
        bool fashion = t->data[0] == 'f';
        const char *dir = t->data_dir ? t->data_dir
                          : fashion   ? "/usr/share/datasets/fashion-mnist"
                                      : "data/mnist";
        snprintf(a, sizeof a, "%s/train-images-idx3-ubyte.gz", dir);
        if (!file_exists(a)) {
            snprintf(a, sizeof a, "%s/train-images-idx3-ubyte", dir);
            if (!file_exists(a)) {
                cli_error(fashion ? "install it: apt-get install dataset-fashion-mnist (or run "
                                    "scripts/deps.sh), or point --data-dir at your copy"
                                  : "download MNIST's four IDX files into a folder and pass "
                                    "--data-dir",
                          "%s: no %s/train-images-idx3-ubyte[.gz]", t->data, dir);
                return -1;
            }
        }
        bool gz = strstr(a, ".gz") != NULL;
        const char *ext = gz ? ".gz" : "";
        snprintf(a, sizeof a, "%s/train-images-idx3-ubyte%s", dir, ext);
        snprintf(b, sizeof b, "%s/train-labels-idx1-ubyte%s", dir, ext);
        s = nn_dataset_load_idx(&d->train, a, b, ntr, err, sizeof err);
        snprintf(tra, sizeof tra, "%s", a);
        if (s == NN_OK) {
            snprintf(a, sizeof a, "%s/t10k-images-idx3-ubyte%s", dir, ext);
            snprintf(b, sizeof b, "%s/t10k-labels-idx1-ubyte%s", dir, ext);
            s = nn_dataset_load_idx(&d->test, a, b, nte, err, sizeof err);
        }
    } else if (!strcmp(t->data, "cifar100") || !strcmp(t->data, "cifar10")) {
        bool c100 = !strcmp(t->data, "cifar100");
        const char *dir = t->data_dir ? t->data_dir
                          : c100      ? "../shared/data/cifar-100-binary"
                                      : "data/cifar-10-batches-bin";
        if (c100) {
            snprintf(a, sizeof a, "%s/train.bin", dir);
            const char *p1 = a;
            s = nn_dataset_open_cifar(&d->train, &p1, 1, NN_CIFAR100_FINE, ntr, err, sizeof err);
            snprintf(tra, sizeof tra, "%s", a);
            if (s == NN_OK) {
                snprintf(b, sizeof b, "%s/test.bin", dir);
                const char *p2 = b;
                s = nn_dataset_open_cifar(&d->test, &p2, 1, NN_CIFAR100_FINE, nte, err, sizeof err);
            }
        } else {
            char paths[5][1024];
            const char *pp[5];
            for (int i = 0; i < 5; i++) {
                snprintf(paths[i], sizeof paths[i], "%s/data_batch_%d.bin", dir, i + 1);
                pp[i] = paths[i];
            }
            s = nn_dataset_open_cifar(&d->train, pp, 5, NN_CIFAR10, ntr, err, sizeof err);
            snprintf(tra, sizeof tra, "%s", pp[0]);
            if (s == NN_OK) {
                snprintf(b, sizeof b, "%s/test_batch.bin", dir);
                const char *p2 = b;
                s = nn_dataset_open_cifar(&d->test, &p2, 1, NN_CIFAR10, nte, err, sizeof err);
            }
        }
        tea = b;
        if (s != NN_OK) { // (the hint after the error, as everywhere)
            cli_error(t->data_dir ? NULL
                                  : "point --data-dir at the folder of the binary files (the "
                                    "default folder is relative to the current one)",
                      "%s", err);
            nn_dataset_free(&d->train);
            nn_dataset_free(&d->test);
            return -1;
        }
    } else {
        cli_error("data sets: fashion-mnist, mnist, cifar10, cifar100, shakespeare",
                  "--data: "
                  "unknown data set '%s'",
                  t->data);
        return -2;
    }
    // the test set is fed to the model built for the training set, in the same buffers
    if (s == NN_OK) s = nn_dataset_check_match(&d->train, tra, &d->test, tea, err, sizeof err);
    if (s != NN_OK) {
        cli_error(NULL, "%s", err);
        nn_dataset_free(&d->train);
        nn_dataset_free(&d->test);
        return -1;
    }
    nn_dataset_compute_norm(&d->train);
    nn_dataset_set_norm(&d->test, d->train.mean, d->train.std);
    if (t->subset > d->train.n && !t->quiet && dist_root()) // (capped: say so)
        fprintf(stderr,
                "ngd: note: --subset %zu is more than the %zu training images: all of them are "
                "used (and %zu test images)\n",
                t->subset, d->train.n, d->test.n);
    return 0;
}

// The run's data behind the calls the loop makes: images through an nn_loader, text
// through a text_iter (ti != NULL).
size_t train_next_batch(const train_opts *t, nn_loader *ld, text_iter *ti, float *x, int32_t *ids,
                        int32_t *y) {
    if (!ti) return dist_loader_next(ld, x, y); // mpirun: this rank's shard
    if (ti->pos == ti->per_epoch) {             // the epoch is complete: 0, like the loader
        ti->pos = 0, ti->epoch++;
        return 0;
    }
    if (nn_text_batch(ti->text, NN_SPLIT_TRAIN, t->batch, t->context, &ti->rng, ids, y) != NN_OK)
        return 0; // not reached: the split's length is checked before training
    ti->pos++;
    return t->batch;
}

size_t train_steps_into_epoch(const train_opts *t, const nn_loader *ld, const text_iter *ti) {
    return ti ? ti->pos : ld->pos / t->batch;
}
