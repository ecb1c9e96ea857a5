/*
 * cifar.c — reader for the CIFAR-10 / CIFAR-100 binary record files (Krizhevsky 2009):
 * CIFAR-10 `<1 label><3072 px>`, CIFAR-100 `<1 coarse><1 fine><3072 px>`, pixels as
 * 1024 R, 1024 G, 1024 B bytes of a row-major 32 x 32 image (already (c, h, w) order).
 * Each file's size must be a non-zero multiple of the record size; labels are range-checked.
 * Plain files only (the official archives are tar.gz of such files; unpack them first).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "data.h"

static nn_status load(nn_dataset *ds, const char *const *paths, size_t npaths, nn_cifar_kind kind,
                      size_t max_n, bool stream, char *err, size_t cap) {
    if (!ds) return NN_ERR_ARG;
    memset(ds, 0, sizeof *ds);
    if (!paths || npaths == 0 || kind > NN_CIFAR100_COARSE ||
        (stream && npaths > NN_DATA_MAX_FILES)) {
        nn_data_err(err, cap, "nn_dataset_load_cifar: bad arguments");
        return NN_ERR_ARG;
    }
    const size_t lbytes = kind == NN_CIFAR10 ? 1 : 2, rec = lbytes + NN_CIFAR_PIXELS;
    const size_t classes = kind == NN_CIFAR10 ? 10 : kind == NN_CIFAR100_FINE ? 100 : 20;
    const char *fmt = kind == NN_CIFAR10 ? "CIFAR-10" : "CIFAR-100";
    const size_t which = kind == NN_CIFAR100_FINE ? 1 : 0; // label byte used
    // pass 1: validate sizes, count records
    size_t total = 0;
    for (size_t i = 0; i < npaths; i++) {
        struct stat sb;
        if (!paths[i] || stat(paths[i], &sb) != 0) {
            nn_data_err(err, cap, "%s: cannot open: %s", paths[i] ? paths[i] : "(null)",
                        strerror(errno));
            return NN_ERR_IO;
        }
        if (nn_data_not_folder(paths[i], err, cap) != NN_OK) return NN_ERR_IO;
        const size_t size = (size_t)sb.st_size;
        if (size == 0 || size % rec != 0) {
            nn_data_err(err, cap,
                        "%s: size %zu bytes is not a non-zero multiple of the %zu-byte %s record",
                        paths[i], size, rec, fmt);
            return NN_ERR_FORMAT;
        }
        total += size / rec;
    }
    const size_t n = max_n > 0 && max_n < total ? max_n : total;
    if (!stream) ds->pixels = nn_malloc(nn_mul(n, NN_CIFAR_PIXELS), 1);
    ds->labels = nn_malloc(n, sizeof(int32_t));
    uint8_t *buf = nn_malloc(rec, 1);
    nn_status st = NN_OK;
    if ((!stream && !ds->pixels) || !ds->labels || !buf) {
        nn_data_err(err, cap, "%s: out of memory for %zu records", paths[0], n);
        st = NN_ERR_NOMEM;
        goto out;
    }
    // pass 2: read records
    size_t k = 0;
    for (size_t i = 0; i < npaths && k < n; i++) {
        FILE *f = fopen(paths[i], "rb");
        if (!f) {
            nn_data_err(err, cap, "%s: cannot open: %s", paths[i], strerror(errno));
            st = NN_ERR_IO;
            goto out;
        }
        if (stream && nn_stream_add(ds, paths[i], k, rec, lbytes) != NN_OK) {
            nn_data_err(err, cap, "%s: cannot open: %s", paths[i], strerror(errno));
            st = NN_ERR_IO;
            fclose(f);
            goto out;
        }
        for (size_t r = 0; k < n; r++, k++) {
            size_t got = fread(buf, 1, rec, f);
            if (got == 0 && feof(f)) break; // end of this file
            if (got != rec) {               // the file changed under us, or a read error
                nn_data_err(err, cap, "%s: record %zu: read %zu of %zu bytes", paths[i], r, got,
                            rec);
                st = ferror(f) ? NN_ERR_IO : NN_ERR_FORMAT;
                fclose(f);
                goto out;
            }
            if (buf[which] >= classes) {
                nn_data_err(err, cap, "%s: record %zu: %s label %u is out of range [0, %zu)",
                            paths[i], r,
                            kind == NN_CIFAR100_FINE ? "fine"
                            : kind == NN_CIFAR10     ? "class"
                                                     : "coarse",
                            buf[which], classes);
                st = NN_ERR_FORMAT;
                fclose(f);
                goto out;
            }
            if (kind != NN_CIFAR10 && buf[0] >= 20) {
                nn_data_err(err, cap, "%s: record %zu: coarse label %u is out of range [0, 20)",
                            paths[i], r, buf[0]);
                st = NN_ERR_FORMAT;
                fclose(f);
                goto out;
            }
            ds->labels[k] = buf[which];
            if (!stream) memcpy(ds->pixels + k * NN_CIFAR_PIXELS, buf + lbytes, NN_CIFAR_PIXELS);
        }
        fclose(f);
    }
    if (k != n) {
        nn_data_err(err, cap, "%s: read %zu records, expected %zu (files changed while reading)",
                    paths[0], k, n);
        st = NN_ERR_FORMAT;
        goto out;
    }
    ds->n = n;
    ds->c = 3;
    ds->h = ds->w = 32;
    ds->num_classes = classes;
    for (size_t c = 0; c < 3; c++) {
        ds->mean[c] = 0.0f;
        ds->std[c] = 1.0f;
    }
out:
    free(buf);
    if (st != NN_OK) nn_dataset_free(ds);
    return st;
}

nn_status nn_dataset_load_cifar(nn_dataset *ds, const char *const *paths, size_t npaths,
                                nn_cifar_kind kind, size_t max_n, char *err, size_t cap) {
    return load(ds, paths, npaths, kind, max_n, false, err, cap);
}

nn_status nn_dataset_open_cifar(nn_dataset *ds, const char *const *paths, size_t npaths,
                                nn_cifar_kind kind, size_t max_n, char *err, size_t cap) {
    return load(ds, paths, npaths, kind, max_n, true, err, cap);
}
