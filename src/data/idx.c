/*
 * idx.c — reader for the IDX format of MNIST and Fashion-MNIST (LeCun's format: a
 * big-endian magic 0x0000 <type> <ndim>, ndim big-endian uint32 dimensions, then the data),
 * plain or gzip-compressed (zlib's gzread reads both). Only unsigned-byte data with 1 or 3
 * dimensions (labels, images) is accepted; every size is validated before it is trusted.
 * Not supported: other element types (int, float), other dimension counts.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <zlib.h>

#include "data.h"

// A dimension above this is a foreign or corrupt file, not an image set (guards against
// gigantic allocations from 4 garbage bytes).
#define NN_IDX_MAX_DIM   (1u << 28)
#define NN_IDX_MAX_BYTES ((size_t)1 << 34)
#define IDX_FIRST_CHUNK  ((size_t)1 << 16)

// Reads up to n bytes; returns the number read, or -1 on a read error of the file system,
// -2 on corrupt compressed data (message in err).
static long long gz_read_all(gzFile f, const char *path, uint8_t *buf, size_t n, char *err,
                             size_t cap) {
    size_t got = 0;
    while (got < n) {
        size_t want = n - got;
        if (want > (1u << 30)) want = 1u << 30;
        int r = gzread(f, buf + got, (unsigned)want);
        if (r < 0) {
            int zerr = 0;
            const char *msg = gzerror(f, &zerr);
            if (zerr == Z_ERRNO) {
                nn_data_err(err, cap, "%s: read error: %s", path, strerror(errno));
                return -1;
            }
            // (zlib's message may start with the path already)
            const size_t pl = strlen(path);
            if (!strncmp(msg, path, pl) && !strncmp(msg + pl, ": ", 2)) msg += pl + 2;
            nn_data_err(err, cap, "%s: corrupt gzip data: %s", path, msg);
            return -2;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    return (long long)got;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

void nn_idx_free(nn_idx *f) {
    free(f->data);
    memset(f, 0, sizeof *f);
}

nn_status nn_idx_read(const char *path, uint32_t magic, size_t max_items, nn_idx *out, char *err,
                      size_t cap) {
    if (!out) return NN_ERR_ARG;
    memset(out, 0, sizeof *out);
    if (!path || (magic != NN_IDX_MAGIC_IMAGES && magic != NN_IDX_MAGIC_LABELS)) {
        nn_data_err(err, cap, "nn_idx_read: bad arguments");
        return NN_ERR_ARG;
    }
    const char *what = magic == NN_IDX_MAGIC_IMAGES ? "IDX images" : "IDX labels";
    const size_t ndim = magic & 0xff;
    if (nn_data_not_folder(path, err, cap) != NN_OK) return NN_ERR_IO;
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f) {
        nn_data_err(err, cap, "%s: cannot open: %s", path,
                    errno ? strerror(errno) : "out of memory");
        return NN_ERR_IO;
    }
    gzbuffer(f, 1u << 17);
    nn_status st = NN_ERR_FORMAT;
    uint8_t hdr[16];
    const size_t hlen = 4 + 4 * ndim;
    long long r = gz_read_all(f, path, hdr, 4, err, cap);
    if (r < 0) goto fail_read;
    if (r < 4) {
        nn_data_err(err, cap, "%s: truncated: %lld bytes, expected a %zu-byte %s header", path, r,
                    hlen, what);
        goto fail;
    }
    out->magic = be32(hdr);
    if (out->magic != magic) {
        nn_data_err(err, cap, "%s: bad magic 0x%08x, expected 0x%08x (%s)", path, out->magic, magic,
                    what);
        goto fail;
    }
    r = gz_read_all(f, path, hdr + 4, hlen - 4, err, cap);
    if (r < 0) goto fail_read;
    if ((size_t)r < hlen - 4) {
        nn_data_err(err, cap, "%s: truncated: %lld bytes, expected a %zu-byte %s header", path,
                    r + 4, hlen, what);
        goto fail;
    }
    out->ndim = ndim;
    size_t item = 1; // bytes per item
    for (size_t d = 0; d < ndim; d++) {
        uint32_t v = be32(hdr + 4 + 4 * d);
        if (v == 0 || v > NN_IDX_MAX_DIM) {
            nn_data_err(err, cap, "%s: dimension %zu is %u, expected 1..%u", path, d, v,
                        NN_IDX_MAX_DIM);
            goto fail;
        }
        out->dims[d] = v;
        if (d > 0) item *= v;
    }
    if (item > NN_IDX_MAX_BYTES / out->dims[0]) {
        nn_data_err(err, cap, "%s: declared data of %zu x %zu bytes is too large", path,
                    out->dims[0], item);
        goto fail;
    }
    const size_t count = max_items > 0 && max_items < out->dims[0] ? max_items : out->dims[0];
    const size_t bytes = count * item;
    // The buffer grows with the data actually read (doubling from 64 KiB), so that a short or
    // corrupt file that declares gigabytes costs about what it holds, not what it claims.
    size_t have = bytes < IDX_FIRST_CHUNK ? bytes : IDX_FIRST_CHUNK, got = 0;
    out->data = nn_malloc(have, 1);
    for (;;) {
        if (!out->data) {
            nn_data_err(err, cap, "%s: out of memory for %zu bytes", path, have);
            st = NN_ERR_NOMEM;
            goto fail;
        }
        r = gz_read_all(f, path, out->data + got, have - got, err, cap);
        if (r < 0) goto fail_read;
        got += (size_t)r;
        if (got < have || have == bytes) break; // the end of the file, or all the data
        const size_t more = have > bytes / 2 ? bytes : 2 * have;
        uint8_t *grown = realloc(out->data, more);
        if (!grown) free(out->data);
        out->data = grown;
        have = more;
    }
    if (got < bytes) {
        if (ndim == 3)
            nn_data_err(err, cap,
                        "%s: truncated: %zu x %zu x %zu header declares %zu data bytes, found %zu",
                        path, out->dims[0], out->dims[1], out->dims[2], out->dims[0] * item, got);
        else
            nn_data_err(err, cap, "%s: truncated: header declares %zu labels, found %zu", path,
                        out->dims[0], got);
        goto fail;
    }
    if (count < out->dims[0]) {
        // a subset: the rest is read too (into a scratch buffer), so that gzip's checksum at
        // the end of the file is checked and a truncated file is found: corrupt compressed
        // data can inflate into wrong bytes without any other error (about 0.3 s for
        // Fashion-MNIST's 47 MB of training images)
        uint8_t skip[1 << 16];
        const size_t rest = (out->dims[0] - count) * item;
        size_t seen = 0;
        while (seen < rest) {
            r = gz_read_all(f, path, skip, rest - seen < sizeof skip ? rest - seen : sizeof skip,
                            err, cap);
            if (r < 0) goto fail_read;
            if (r == 0) break;
            seen += (size_t)r;
        }
        if (seen < rest) {
            nn_data_err(err, cap, "%s: truncated: header declares %zu items, found %zu", path,
                        out->dims[0], count + seen / item);
            goto fail;
        }
    }
    { // a complete read must end exactly here
        uint8_t extra[64];
        r = gz_read_all(f, path, extra, sizeof extra, err, cap);
        if (r < 0) goto fail_read;
        if (r > 0) {
            nn_data_err(err, cap,
                        "%s: size mismatch: %s%lld bytes after the %zu items the header "
                        "declares",
                        path, r == (long long)sizeof extra ? "at least " : "", r, out->dims[0]);
            goto fail;
        }
    }
    out->count = count;
    gzclose(f);
    return NN_OK;
fail_read:
    st = r == -1 ? NN_ERR_IO : NN_ERR_FORMAT;
fail:
    gzclose(f);
    nn_idx_free(out);
    return st;
}

nn_status nn_dataset_load_idx(nn_dataset *ds, const char *images_path, const char *labels_path,
                              size_t max_n, char *err, size_t cap) {
    if (!ds) return NN_ERR_ARG;
    memset(ds, 0, sizeof *ds);
    nn_idx im, lb;
    nn_status st = nn_idx_read(images_path, NN_IDX_MAGIC_IMAGES, max_n, &im, err, cap);
    if (st != NN_OK) return st;
    st = nn_idx_read(labels_path, NN_IDX_MAGIC_LABELS, max_n, &lb, err, cap);
    if (st != NN_OK) {
        nn_idx_free(&im);
        return st;
    }
    if (im.dims[0] != lb.dims[0]) {
        nn_data_err(err, cap, "%s: declares %zu labels, but %s declares %zu images", labels_path,
                    lb.dims[0], images_path, im.dims[0]);
        st = NN_ERR_FORMAT;
        goto out;
    }
    const size_t n = im.count;
    ds->labels = nn_malloc(n, sizeof(int32_t));
    if (!ds->labels) {
        nn_data_err(err, cap, "%s: out of memory", labels_path);
        st = NN_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (lb.data[i] >= 10) {
            nn_data_err(err, cap, "%s: label %u of item %zu is out of range [0, 10)", labels_path,
                        lb.data[i], i);
            st = NN_ERR_FORMAT;
            goto out;
        }
        ds->labels[i] = lb.data[i];
    }
    ds->n = n;
    ds->c = 1;
    ds->h = im.dims[1];
    ds->w = im.dims[2];
    ds->num_classes = 10;
    ds->pixels = im.data; // ownership moves to ds
    im.data = NULL;
    ds->mean[0] = 0.0f;
    ds->std[0] = 1.0f;
out:
    nn_idx_free(&im);
    nn_idx_free(&lb);
    if (st != NN_OK) nn_dataset_free(ds);
    return st;
}
