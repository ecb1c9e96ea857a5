/*
 * text.c — character-level text for language models (Karpathy's char-rnn / nanoGPT
 * shakespeare_char): the vocabulary is the set of bytes present, ids are their ranks in
 * byte order; encode/decode; the last fraction of the text is the validation split; and
 * seeded random (B, T+1) windows give inputs and next-token targets. Bytes, not Unicode
 * code points (Tiny Shakespeare is ASCII).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "data.h"

void nn_text_free(nn_text *t) {
    free(t->ids);
    memset(t, 0, sizeof *t);
}

// Builds the vocabulary and the encoded text from n bytes; `name` is used in messages.
static nn_status text_build(nn_text *t, const char *name, const uint8_t *buf, size_t n,
                            float val_frac, char *err, size_t cap) {
    memset(t, 0, sizeof *t);
    if (!(val_frac >= 0.0f && val_frac < 1.0f)) {
        nn_data_err(err, cap, "%s: validation fraction %g is not in [0, 1)", name,
                    (double)val_frac);
        return NN_ERR_ARG;
    }
    if (n == 0) {
        nn_data_err(err, cap, "%s: empty text", name);
        return NN_ERR_FORMAT;
    }
    bool seen[256] = {false};
    for (size_t i = 0; i < n; i++)
        seen[buf[i]] = true;
    for (int v = 0; v < 256; v++) {
        t->stoi[v] = -1;
        if (seen[v]) {
            t->stoi[v] = (int16_t)t->vocab;
            t->itos[t->vocab++] = (uint8_t)v;
        }
    }
    t->ids = nn_malloc(n, 1);
    if (!t->ids) {
        nn_data_err(err, cap, "%s: out of memory for %zu bytes", name, n);
        memset(t, 0, sizeof *t);
        return NN_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        t->ids[i] = (uint8_t)t->stoi[buf[i]];
    t->n = n;
    t->n_train = n - (size_t)((double)n * (double)val_frac);
    return NN_OK;
}

nn_status nn_text_from_memory(nn_text *t, const char *buf, size_t n, float val_frac, char *err,
                              size_t cap) {
    if (!t || (!buf && n > 0)) return NN_ERR_ARG;
    return text_build(t, "(memory)", (const uint8_t *)buf, n, val_frac, err, cap);
}

nn_status nn_text_load(nn_text *t, const char *path, float val_frac, char *err, size_t cap) {
    if (!t || !path) return NN_ERR_ARG;
    memset(t, 0, sizeof *t);
    if (nn_data_not_folder(path, err, cap) != NN_OK) return NN_ERR_IO;
    FILE *f = fopen(path, "rb");
    if (!f) {
        nn_data_err(err, cap, "%s: cannot open: %s", path, strerror(errno));
        return NN_ERR_IO;
    }
    // read the whole file, growing the buffer geometrically (works for pipes too)
    size_t len = 0, capb = 1 << 16;
    uint8_t *buf = nn_malloc(capb, 1);
    nn_status st = NN_OK;
    while (buf) {
        size_t got = fread(buf + len, 1, capb - len, f);
        len += got;
        if (len < capb) break;
        uint8_t *nb = capb <= SIZE_MAX / 2 ? realloc(buf, capb * 2) : NULL;
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        capb *= 2;
    }
    if (!buf) {
        nn_data_err(err, cap, "%s: out of memory", path);
        st = NN_ERR_NOMEM;
    } else if (ferror(f)) {
        nn_data_err(err, cap, "%s: read error: %s", path, strerror(errno));
        st = NN_ERR_IO;
    }
    fclose(f);
    if (st == NN_OK) st = text_build(t, path, buf, len, val_frac, err, cap);
    free(buf);
    return st;
}

nn_status nn_text_encode(const nn_text *t, const char *s, size_t n, int32_t *ids, char *err,
                         size_t cap) {
    for (size_t i = 0; i < n; i++) {
        const uint8_t c = (uint8_t)s[i];
        if (t->stoi[c] < 0) {
            nn_data_err(err, cap, "byte 0x%02x at position %zu is not in the %zu-symbol vocabulary",
                        c, i, t->vocab);
            return NN_ERR_ARG;
        }
        ids[i] = t->stoi[c];
    }
    return NN_OK;
}

nn_status nn_text_decode(const nn_text *t, const int32_t *ids, size_t n, char *out) {
    nn_status st = NN_OK;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= t->vocab) {
            out[i] = '?';
            st = NN_ERR_ARG;
        } else {
            out[i] = (char)t->itos[ids[i]];
        }
    }
    out[n] = '\0';
    return st;
}

nn_status nn_text_batch(const nn_text *t, nn_split split, size_t B, size_t T, nn_rng *rng,
                        int32_t *x, int32_t *y) {
    NN_ASSERT(t && rng && x && y);
    const uint8_t *base = split == NN_SPLIT_VAL ? t->ids + t->n_train : t->ids;
    const size_t len = split == NN_SPLIT_VAL ? t->n - t->n_train : t->n_train;
    if (T == 0 || len < T + 1) return NN_ERR_ARG;
    const size_t starts = len - T; // windows of T+1 ids start in [0, len − T − 1]
    for (size_t b = 0; b < B; b++) {
        const uint8_t *w = base + nn_rng_below(rng, starts);
        for (size_t i = 0; i < T; i++) {
            x[b * T + i] = w[i];
            y[b * T + i] = w[i + 1];
        }
    }
    return NN_OK;
}
