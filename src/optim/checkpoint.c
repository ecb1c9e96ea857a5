/*
 * checkpoint.c — ngd_optim_save / ngd_optim_load: the complete optimizer state in a
 * versioned little-endian file (docs/formats.md), streamed into a file committed atomically
 * (fileio.c: a 1 MiB buffer, not a copy of the state), or into memory (ngd_optim_save_mem), and
 * validated on load in a first pass that changes nothing (magic, version, checksum, method,
 * every entry's name, kind and shape, every array's name, type and length); only a file
 * that passes is applied in a second pass. Parameters are the caller's and are not saved.
 */
#include <string.h>

#include "checkpoint.h"
#include "method.h"

#define CKPT_MAGIC   "NGDOPT\r\n" // 8 bytes; \r\n catches text-mode mangling (PNG's trick)
#define CKPT_VERSION 1u

static size_t type_size(ngd_arr_type t) {
    switch (t) {
    case NGD_ARR_F32: return 4;
    case NGD_ARR_BF16: return 2;
    case NGD_ARR_U64: return 8;
    default: return 1;
    }
}

#define META_MAX 8 // values of a '#' array (load_meta)

// The arrays of an entry: first-order buffers, then the method's.
static size_t entry_arrays(const ngd_optim *o, ngd_entry *e, ngd_state_array *a) {
    size_t n = 0;
    if (e->buf) a[n++] = (ngd_state_array){"buf", e->buf, e->n, NGD_ARR_F32};
    if (e->buf2) a[n++] = (ngd_state_array){"buf2", e->buf2, e->n, NGD_ARR_F32};
    if (e->kind == NGD_ENTRY_LAYER && o->ops->arrays)
        n += o->ops->arrays(e, a + n, NGD_MAX_ARRAYS - n);
    return n;
}

static void write_array(ngd_wbuf *w, const ngd_state_array *a) {
    ngd_wbuf_str(w, a->name);
    ngd_wbuf_u32(w, (uint32_t)a->type);
    ngd_wbuf_u64(w, a->count);
    switch (a->type) {
    case NGD_ARR_F32: ngd_wbuf_f32s(w, a->p, a->count); break;
    case NGD_ARR_BF16: ngd_wbuf_u16s(w, a->p, a->count); break;
    case NGD_ARR_U64: ngd_wbuf_u64s(w, a->p, a->count); break;
    default: ngd_wbuf_bytes(w, a->p, a->count); break;
    }
}

void ngd_optim_write(const ngd_optim *o, ngd_wbuf *w) {
    ngd_wbuf_part_begin(w); // the CRC at the end covers this file's bytes only
    ngd_wbuf_bytes(w, CKPT_MAGIC, 8);
    ngd_wbuf_u32(w, CKPT_VERSION);
    ngd_wbuf_u32(w, (uint32_t)o->cfg.method);
    ngd_wbuf_u64(w, o->steps);
    ngd_wbuf_f32(w, o->scale_prev);
    ngd_wbuf_f32(w, o->scale_cur);
    ngd_wbuf_f32(w, o->lr_scale);
    ngd_wbuf_u32(w, (uint32_t)o->n);
    for (size_t i = 0; i < o->n; i++) {
        ngd_entry *e = &o->e[i];
        ngd_wbuf_str(w, e->name);
        ngd_wbuf_u32(w, (uint32_t)e->kind);
        ngd_wbuf_u64(w, e->d_out);
        ngd_wbuf_u64(w, e->d_in);
        ngd_wbuf_u64(w, e->d_K);
        ngd_wbuf_u64(w, e->n_updates);
        ngd_wbuf_u32(w, e->got_stats);
        ngd_wbuf_u64(w, e->h.updates);
        ngd_wbuf_u64(w, e->h.skips);
        ngd_wbuf_u64(w, e->h.decomp_failures);
        ngd_wbuf_u64(w, e->h.decomp_retries);
        ngd_state_array a[NGD_MAX_ARRAYS];
        size_t na = entry_arrays(o, e, a);
        ngd_wbuf_u32(w, (uint32_t)na);
        for (size_t k = 0; k < na; k++)
            write_array(w, &a[k]);
    }
    ngd_wbuf_u32(w, ngd_wbuf_part_crc(w));
}

uint64_t ngd_optim_write_size(const ngd_optim *o) {
    ngd_wbuf c = ngd_wbuf_count();
    ngd_optim_write(o, &c);
    return c.oom ? UINT64_MAX : ngd_wbuf_size(&c);
}

// Streamed into the file (fileio.c): no copy of the state in memory, however large it is.
ngd_status ngd_optim_save(const ngd_optim *co, const char *path) {
    if (!co) return NGD_ERR_ARG;
    ngd_optim *o = (ngd_optim *)(uintptr_t)co; // only the message buffer is written
    if (!path) return ngd_optim_fail(o, NGD_ERR_ARG, "save: path is NULL");
    char err[400];
    ngd_wbuf w;
    int rc = ngd_wbuf_open(&w, path, 0, err, sizeof err);
    if (!rc) {
        ngd_optim_write(o, &w);
        rc = ngd_wbuf_commit(&w, path, err, sizeof err);
    }
    if (rc) return ngd_optim_fail(o, NGD_ERR_IO, "save: %s", err);
    return NGD_OK;
}

ngd_status ngd_optim_save_mem(const ngd_optim *co, void **buf, size_t *len) {
    if (!co) return NGD_ERR_ARG;
    ngd_optim *o = (ngd_optim *)(uintptr_t)co;
    if (!buf || !len) return ngd_optim_fail(o, NGD_ERR_ARG, "save_mem: buf or len is NULL");
    ngd_wbuf w = {0};
    ngd_optim_write(o, &w);
    if (w.oom) {
        ngd_wbuf_free(&w);
        return ngd_optim_fail(o, NGD_ERR_NOMEM, "save: out of memory");
    }
    *buf = w.buf;
    *len = w.len;
    return NGD_OK;
}

#define FMT(...) (ngd_optim_fail(o, NGD_ERR_FORMAT, __VA_ARGS__))

// A SINGD layer's "?structure" check (kind, block, k1, k2 of K, then of C) in words.
#define STAG_N 8
static void describe_structures(const uint64_t *v, char *buf, size_t cap) {
    size_t at = 0;
    for (int k = 0; k < 2; k++) {
        const uint64_t *t = v + 4 * k;
        const char *nm = t[0] < 64 ? ngd_structure_name((ngd_structure)t[0]) : NULL;
        int w = snprintf(buf + at, cap - at, "%s%s %s", k ? ", " : "", k ? "C" : "K",
                         nm ? nm : "unknown");
        at += w > 0 && (size_t)w < cap - at ? (size_t)w : 0;
        if (t[0] == NGD_STRUCT_BLOCKDIAG)
            w = snprintf(buf + at, cap - at, " of blocks %llu", (unsigned long long)t[1]);
        else if (t[0] == NGD_STRUCT_HIER)
            w = snprintf(buf + at, cap - at, " (k1 %llu, k2 %llu)", (unsigned long long)t[2],
                         (unsigned long long)t[3]);
        else
            w = 0;
        at += w > 0 && (size_t)w < cap - at ? (size_t)w : 0;
    }
}

// One pass over a loaded file: with apply == false it only validates; with true it copies
// the state into the optimizer (called only after a validating pass succeeded).
static ngd_status parse(ngd_optim *o, const char *path, ngd_rbuf *r, bool apply) {
    const unsigned char *magic = ngd_rbuf_bytes(r, 8);
    if (!magic || memcmp(magic, CKPT_MAGIC, 8) != 0)
        return FMT("%s: not an ngd optimizer checkpoint (bad magic)", path);
    uint32_t ver = ngd_rbuf_u32(r);
    if (ver != CKPT_VERSION)
        return FMT("%s: format version %u, this libngd reads version %u", path, ver, CKPT_VERSION);
    uint32_t method = ngd_rbuf_u32(r);
    if (method != (uint32_t)o->cfg.method)
        return FMT("%s: saved by method '%s', this optimizer is '%s'", path,
                   ngd_method_name((ngd_method)method) ? ngd_method_name((ngd_method)method)
                                                       : "unknown",
                   ngd_method_name(o->cfg.method));
    uint64_t steps = ngd_rbuf_u64(r);
    float sp = ngd_rbuf_f32(r), sc = ngd_rbuf_f32(r), lrs = ngd_rbuf_f32(r);
    uint32_t n = ngd_rbuf_u32(r);
    if (r->bad) return FMT("%s: truncated header", path);
    if (n != o->n) return FMT("%s: %u layers/params saved, this optimizer has %zu", path, n, o->n);
    if (apply) {
        o->steps = (size_t)steps;
        o->scale_prev = sp, o->scale_cur = sc, o->lr_scale = lrs;
    }
    for (size_t i = 0; i < o->n; i++) {
        ngd_entry *e = &o->e[i];
        char name[NGD_NAME_MAX + 2]; // (one more: a longer saved name differs)
        if (!ngd_rbuf_str(r, name, sizeof name)) return FMT("%s: truncated at entry %zu", path, i);
        if (strcmp(name, e->name) != 0)
            return FMT("%s: entry %zu is '%s', this optimizer has '%s'", path, i, name, e->name);
        uint32_t kind = ngd_rbuf_u32(r);
        uint64_t d_out = ngd_rbuf_u64(r), d_in = ngd_rbuf_u64(r), d_K = ngd_rbuf_u64(r);
        uint64_t nup = ngd_rbuf_u64(r);
        uint32_t got = ngd_rbuf_u32(r);
        uint64_t hu = ngd_rbuf_u64(r), hs = ngd_rbuf_u64(r), hf = ngd_rbuf_u64(r),
                 hr = ngd_rbuf_u64(r);
        uint32_t na = ngd_rbuf_u32(r);
        if (r->bad) return FMT("%s: truncated in entry '%s'", path, e->name);
        if (kind != (uint32_t)e->kind || d_out != e->d_out || d_in != e->d_in || d_K != e->d_K)
            return FMT("%s: '%s' was saved as a %s of %llu x %llu%s, this one is a %s of %zu x "
                       "%zu%s",
                       path, e->name, kind ? "param" : "layer", (unsigned long long)d_out,
                       (unsigned long long)d_in, d_K > d_in ? " + bias" : "",
                       e->kind ? "param" : "layer", e->d_out, e->d_in,
                       e->d_K > e->d_in ? " + bias" : "");
        ngd_state_array a[NGD_MAX_ARRAYS];
        size_t want = entry_arrays(o, e, a), checks = 0;
        for (size_t k = 0; k < want; k++)
            checks += a[k].name[0] == '?';
        // ('?' arrays are checks that files written before them lack)
        if (na != want && na != want - checks)
            return FMT("%s: '%s' has %u state arrays, expected %zu (different hyper-parameters "
                       "or structures?)",
                       path, e->name, na, want);
        for (size_t k = 0, seen = 0; k < want; k++) {
            char an[64];
            const size_t at = r->pos;
            if (a[k].name[0] == '?' &&
                (seen == na || !ngd_rbuf_str(r, an, sizeof an) || strcmp(an, a[k].name) != 0)) {
                r->pos = at, r->bad = false; // (an earlier file: the next array is read again)
                continue;
            }
            r->pos = at;
            seen++;
            if (!ngd_rbuf_str(r, an, sizeof an)) return FMT("%s: truncated in '%s'", path, e->name);
            uint32_t type = ngd_rbuf_u32(r);
            uint64_t count = ngd_rbuf_u64(r);
            if (r->bad) return FMT("%s: truncated in '%s'", path, e->name);
            if (strcmp(an, a[k].name) != 0 || type != (uint32_t)a[k].type || count != a[k].count)
                return FMT("%s: '%s' array %zu is %s (type %u, %llu values), expected %s (type "
                           "%d, %zu values)",
                           path, e->name, k, an, type, (unsigned long long)count, a[k].name,
                           (int)a[k].type, a[k].count);
            size_t bytes = a[k].count * type_size(a[k].type);
            const unsigned char *p = ngd_rbuf_bytes(r, bytes);
            if (!p) return FMT("%s: truncated in '%s' array %s", path, e->name, an);
            if (an[0] == '?' && a[k].type == NGD_ARR_U64) { // a check: the saved values are ours
                ngd_rbuf sub = {p, bytes, 0, false};
                uint64_t v[STAG_N] = {0};
                bool same = a[k].count <= STAG_N;
                for (size_t j = 0; j < a[k].count && same; j++)
                    same = (v[j] = ngd_rbuf_u64(&sub)) == ((const uint64_t *)a[k].p)[j];
                if (!same) {
                    char was[160], now[160];
                    describe_structures(v, was, sizeof was);
                    describe_structures(a[k].p, now, sizeof now);
                    return FMT("%s: '%s' was saved with other factor structures (%s), this "
                               "optimizer's are %s",
                               path, e->name, was, now);
                }
                continue;
            }
            if (an[0] == '#' && a[k].type == NGD_ARR_U64 && o->ops->load_meta &&
                count <= META_MAX) {
                // shapes decided at run time: let the method re-create them from the saved
                // values (in the checking pass already, so the arrays after it compare
                // against the right shapes), then list the arrays again
                uint64_t v[META_MAX];
                ngd_rbuf sub = {p, bytes, 0, false};
                for (size_t j = 0; j < count; j++)
                    v[j] = ngd_rbuf_u64(&sub);
                ngd_status ms = o->ops->load_meta(o, e, v, (size_t)count);
                if (ms) {
                    char why[sizeof o->err];
                    memcpy(why, o->err, sizeof why);
                    return FMT("%s: %s", path, why);
                }
                if (entry_arrays(o, e, a) != want)
                    return FMT("%s: '%s': inconsistent state arrays", path, e->name);
                if (apply) memcpy(a[k].p, v, bytes);
                continue;
            }
            if (!apply && an[0] != '#' && a[k].type == NGD_ARR_U64 && o->ops->check_u64 &&
                count <= META_MAX) {
                uint64_t v[META_MAX];
                ngd_rbuf sub = {p, bytes, 0, false};
                for (size_t j = 0; j < count; j++)
                    v[j] = ngd_rbuf_u64(&sub);
                if (o->ops->check_u64(o, e, an, v, (size_t)count) != NGD_OK) {
                    char why[sizeof o->err];
                    memcpy(why, o->err, sizeof why);
                    return FMT("%s: %s", path, why);
                }
            }
            if (!apply || !a[k].count) continue;
            switch (a[k].type) {
            case NGD_ARR_F32: {
                ngd_rbuf sub = {p, bytes, 0, false};
                ngd_rbuf_f32s(&sub, a[k].p, a[k].count);
                break;
            }
            case NGD_ARR_BF16:
                for (size_t j = 0; j < a[k].count; j++)
                    ((uint16_t *)a[k].p)[j] = (uint16_t)(p[2 * j] | p[2 * j + 1] << 8);
                break;
            case NGD_ARR_U64: {
                ngd_rbuf sub = {p, bytes, 0, false};
                for (size_t j = 0; j < a[k].count; j++)
                    ((uint64_t *)a[k].p)[j] = ngd_rbuf_u64(&sub);
                break;
            }
            default: memcpy(a[k].p, p, bytes); break;
            }
        }
        if (apply) {
            e->n_updates = nup;
            e->loads++;
            e->got_stats = got != 0;
            e->h.updates = (size_t)hu, e->h.skips = (size_t)hs;
            e->h.decomp_failures = (size_t)hf, e->h.decomp_retries = (size_t)hr;
        }
    }
    if (r->len - r->pos != 4)
        return FMT("%s: %zu unexpected bytes at the end", path, r->len - r->pos - 4);
    return NGD_OK;
}

// The checking pass lets a method re-create shapes from a checkpoint's '#' array (load_meta)
// before the arrays after it are compared: a mismatch found later must undo that, so that a
// failed load leaves the optimizer as it was. The values of each entry's '#' array (at most
// META_MAX) before the load, or NULL when out of memory.
static const ngd_state_array *meta_array(const ngd_optim *o, ngd_entry *e, ngd_state_array *a) {
    const size_t n = entry_arrays(o, e, a);
    for (size_t k = 0; k < n; k++)
        if (a[k].name[0] == '#' && a[k].type == NGD_ARR_U64 && a[k].count <= META_MAX) return &a[k];
    return NULL;
}

static uint64_t *meta_snapshot(ngd_optim *o) {
    uint64_t *v = ngd_calloc(o->n ? o->n * META_MAX : 1, sizeof *v);
    for (size_t i = 0; v && i < o->n && o->ops->load_undo; i++) {
        ngd_state_array a[NGD_MAX_ARRAYS];
        const ngd_state_array *m = meta_array(o, &o->e[i], a);
        if (m) memcpy(v + i * META_MAX, m->p, m->count * sizeof *v);
    }
    return v;
}

static void meta_undo(ngd_optim *o, const uint64_t *before) {
    for (size_t i = 0; i < o->n && o->ops->load_undo; i++) {
        ngd_state_array a[NGD_MAX_ARRAYS];
        const ngd_state_array *m = meta_array(o, &o->e[i], a);
        if (m && memcmp(m->p, before + i * META_MAX, m->count * sizeof *before) != 0)
            o->ops->load_undo(o, &o->e[i], before + i * META_MAX);
    }
}

static ngd_status load_bytes(ngd_optim *o, const char *path, const unsigned char *data,
                             size_t len) {
    ngd_status s = NGD_OK;
    if (len < 8 + 4 + 4) {
        s = FMT("%s: %zu bytes is too short for a checkpoint (truncated?)", path, len);
    } else {
        uint32_t stored = (uint32_t)data[len - 4] | (uint32_t)data[len - 3] << 8 |
                          (uint32_t)data[len - 2] << 16 | (uint32_t)data[len - 1] << 24;
        ngd_rbuf r = {data, len, 0, false};
        if (memcmp(data, CKPT_MAGIC, 8) != 0) {
            s = FMT("%s: not an ngd optimizer checkpoint (bad magic)", path);
        } else if (ngd_crc32(data, len - 4) != stored) {
            s = FMT("%s: checksum mismatch: the file is corrupt or truncated", path);
        } else {
            uint64_t *before = meta_snapshot(o);
            if (!before) return ngd_optim_fail(o, NGD_ERR_NOMEM, "load: out of memory");
            o->load_len = len; // (load_meta bounds the buffers it sizes by the file's bytes)
            s = parse(o, path, &r, false);
            o->load_len = 0;
            if (s == NGD_OK) {
                ngd_rbuf r2 = {data, len, 0, false};
                s = parse(o, path, &r2, true);
                o->obs_micro = 0; // (the file's pending statistics: their micro is not known)
                for (size_t i = 0; s == NGD_OK && o->ops->load_commit && i < o->n; i++)
                    if (o->e[i].kind == NGD_ENTRY_LAYER) o->ops->load_commit(&o->e[i]);
                for (size_t i = 0; s == NGD_OK && o->ops->loaded && i < o->n; i++)
                    if (o->e[i].kind == NGD_ENTRY_LAYER && o->e[i].ms && o->e[i].h.updates)
                        o->ops->loaded(&o->e[i]);
            } else {
                meta_undo(o, before);
            }
            ngd_free(before);
        }
    }
    return s;
}

ngd_status ngd_optim_load(ngd_optim *o, const char *path) {
    if (!o) return NGD_ERR_ARG;
    if (!path) return ngd_optim_fail(o, NGD_ERR_ARG, "load: path is NULL");
    unsigned char *data;
    size_t len;
    char err[400];
    if (ngd_read_file(path, &data, &len, err, sizeof err))
        return ngd_optim_fail(o, NGD_ERR_IO, "load: %s", err);
    ngd_status s = load_bytes(o, path, data, len);
    free(data);
    return s;
}

ngd_status ngd_optim_load_mem(ngd_optim *o, const void *buf, size_t len) {
    if (!o) return NGD_ERR_ARG;
    if (!buf) return ngd_optim_fail(o, NGD_ERR_ARG, "load_mem: buf is NULL");
    return load_bytes(o, "checkpoint", buf, len);
}
