/*
 * fileio.c — little-endian writers (in memory, or streamed through a small buffer into the
 * temporary of an atomic commit: temp + fsync + rename + fsync dir), a bounds-checked reader,
 * and CRC-32, kept as the bytes go. Byte order is explicit, so files move between machines.
 */
#include "fileio.h"
#include "ngd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

// CRC-32 of n more bytes after those whose CRC is c, in pieces that fit zlib's uInt length
static uint32_t crc_update(uint32_t c, const unsigned char *p, size_t n) {
    uLong u = c;
    while (n > 0) {
        const uInt k = n > (size_t)UINT_MAX ? UINT_MAX : (uInt)n;
        u = crc32(u, p, k);
        p += k, n -= k;
    }
    return (uint32_t)u;
}

static bool wbuf_reserve(ngd_wbuf *w, size_t n) {
    if (w->oom) return false;
    if (n > SIZE_MAX - w->len) {
        w->oom = true;
        return false;
    }
    if (w->len + n <= w->cap) return true;
    size_t cap = w->cap ? w->cap : 4096;
    while (cap < w->len + n) {
        if (cap > SIZE_MAX / 2) {
            cap = w->len + n;
            break;
        }
        cap *= 2;
    }
    unsigned char *b = realloc(w->buf, cap);
    if (!b) {
        w->oom = true;
        return false;
    }
    w->buf = b;
    w->cap = cap;
    return true;
}

// Takes the bytes of buf that are not in the running CRC (the part's, during a part) into it.
static void wbuf_fold(ngd_wbuf *w) {
    if (w->counting) return;
    // (nothing new: no pointer arithmetic on a buffer not yet allocated, NULL + 0 being
    // undefined)
    if (w->in_part) {
        if (w->len > w->part_pos)
            w->part = crc_update(w->part, w->buf + w->part_pos, w->len - w->part_pos);
        w->part_pos = w->len;
    } else {
        if (w->len > w->crc_pos)
            w->crc = crc_update(w->crc, w->buf + w->crc_pos, w->len - w->crc_pos);
        w->crc_pos = w->len;
    }
}

// Writes n bytes to the streamed writer's file; the first failure is kept in werr (and what
// comes after it is dropped).
static void wbuf_write_out(ngd_wbuf *w, const unsigned char *p, size_t n) {
    while (n > 0 && !w->werr) {
        ssize_t k = write(w->fd, p, n);
        if (k < 0) {
            if (errno != EINTR) w->werr = errno;
            continue;
        }
        if (k == 0) { // (no progress and no error: never so for a regular file; not spun on)
            w->werr = EIO;
            break;
        }
        p += k, n -= (size_t)k;
    }
}

// A streamed writer's buffer, written out and emptied (its bytes are in the CRCs first).
static void wbuf_flush(ngd_wbuf *w) {
    wbuf_fold(w);
    wbuf_write_out(w, w->buf, w->len);
    w->out += w->len;
    w->len = w->crc_pos = w->part_pos = 0;
}

// Room at the end of buf for n > 0 bytes: where, with *got of them (all n in memory, where
// buf grows; 8 to n when streamed, for at least one whole value of any size), or NULL when
// the bytes are dropped (out of memory, a failed write). Not for counting writers.
static unsigned char *wbuf_room(ngd_wbuf *w, size_t n, size_t *got) {
    if (w->tmp) {
        if (w->oom || w->werr) return NULL;
        if (w->cap - w->len < 8) wbuf_flush(w);
        if (w->werr) return NULL;
        const size_t k = w->cap - w->len;
        *got = n < k ? n : k;
        return w->buf + w->len;
    }
    if (!wbuf_reserve(w, n)) return NULL;
    *got = n;
    return w->buf + w->len;
}

// A counting writer counts n bytes (true); any other returns false.
static bool wbuf_counted(ngd_wbuf *w, size_t n) {
    if (!w->counting) return false;
    if (n > SIZE_MAX - w->len)
        w->oom = true;
    else
        w->len += n;
    return true;
}

ngd_wbuf ngd_wbuf_count(void) { return (ngd_wbuf){.counting = true}; }

uint64_t ngd_wbuf_size(const ngd_wbuf *w) { return w->out + w->len; }

uint32_t ngd_wbuf_crc(ngd_wbuf *w) {
    if (w->in_part) return 0; // (a misuse: the part's bytes are not in it yet)
    wbuf_fold(w);
    return w->crc;
}

void ngd_wbuf_part_begin(ngd_wbuf *w) {
    wbuf_fold(w); // the bytes before the part into the running CRC
    w->in_part = true;
    w->part = 0;
    w->part_pos = w->len;
    w->part_start = ngd_wbuf_size(w);
}

uint32_t ngd_wbuf_part_crc(ngd_wbuf *w) {
    if (!w->in_part) return 0;
    wbuf_fold(w);
    w->in_part = false;
    // the running CRC continues over the part's bytes without a second pass over them
    w->crc = (uint32_t)crc32_combine(w->crc, w->part, (z_off_t)(ngd_wbuf_size(w) - w->part_start));
    w->crc_pos = w->len;
    return w->part;
}

void ngd_wbuf_free(ngd_wbuf *w) {
    if (w->tmp) { // a streamed write abandoned: its temporary goes
        if (w->fd >= 0) close(w->fd);
        unlink(w->tmp);
        free(w->tmp);
    }
    free(w->buf);
    memset(w, 0, sizeof *w);
}

void ngd_wbuf_bytes(ngd_wbuf *w, const void *p, size_t n) {
    if (!n || wbuf_counted(w, n)) return;
    const unsigned char *s = p;
    while (n > 0) {
        size_t k;
        unsigned char *d = wbuf_room(w, n, &k);
        if (!d) return;
        memcpy(d, s, k);
        w->len += k, s += k, n -= k;
    }
}

// n values of `size` bytes (2, 4 or 8) at p, little-endian: in memory all or nothing, as
// many as fit at a time when streamed
static void wbuf_values(ngd_wbuf *w, const void *p, size_t n, size_t size) {
    if (!n) return;
    if (n > SIZE_MAX / size) {
        w->oom = true;
        return;
    }
    if (wbuf_counted(w, n * size)) return;
    const unsigned char *s = p;
    while (n > 0) {
        size_t got;
        unsigned char *d = wbuf_room(w, n * size, &got);
        if (!d) return;
        const size_t k = got / size;
        for (size_t i = 0; i < k; i++, s += size, d += size) {
            uint64_t v;
            if (size == 2) {
                uint16_t h;
                memcpy(&h, s, 2);
                v = h;
            } else if (size == 4) {
                uint32_t u;
                memcpy(&u, s, 4);
                v = u;
            } else {
                memcpy(&v, s, 8);
            }
            for (size_t b = 0; b < size; b++)
                d[b] = (unsigned char)(v >> (8 * b));
        }
        w->len += k * size, n -= k;
    }
}

void ngd_wbuf_u32(ngd_wbuf *w, uint32_t v) {
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    ngd_wbuf_bytes(w, b, 4);
}

void ngd_wbuf_u64(ngd_wbuf *w, uint64_t v) {
    ngd_wbuf_u32(w, (uint32_t)v);
    ngd_wbuf_u32(w, (uint32_t)(v >> 32));
}

void ngd_wbuf_f32(ngd_wbuf *w, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    ngd_wbuf_u32(w, u);
}

void ngd_wbuf_f32s(ngd_wbuf *w, const float *p, size_t n) { wbuf_values(w, p, n, 4); }
void ngd_wbuf_u16s(ngd_wbuf *w, const uint16_t *p, size_t n) { wbuf_values(w, p, n, 2); }
void ngd_wbuf_u64s(ngd_wbuf *w, const uint64_t *p, size_t n) { wbuf_values(w, p, n, 8); }

void ngd_wbuf_str(ngd_wbuf *w, const char *s) {
    size_t n = s ? strlen(s) : 0;
    ngd_wbuf_u32(w, (uint32_t)n);
    ngd_wbuf_bytes(w, s, n);
}

// Removes the "<path>.tmp.<pid>" files (ngd_write_atomic's temporaries) of writers of the
// same path that died before their rename (kill -9, power loss): only names of exactly that
// form, with a pid (a decimal > 0, no sign or leading zero) that is not ours and names no
// live process (kill(pid, 0) fails with ESRCH; EPERM means it lives), and only regular files.
// (A writer in another pid namespace sharing the folder is not seen: don't share one path.)
static void remove_stale_temporaries(const char *path) {
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    const size_t blen = strlen(base), dlen = slash && slash != path ? (size_t)(slash - path) : 1;
    char *dir = malloc(dlen + 1);
    if (!blen || !dir) {
        free(dir);
        return;
    }
    memcpy(dir, slash ? path : ".", dlen); // "x": ".", "/x": "/", "a/x": "a"
    dir[dlen] = '\0';
    DIR *d = opendir(dir);
    if (!d) {
        free(dir);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (strncmp(n, base, blen) != 0 || strncmp(n + blen, ".tmp.", 5) != 0) continue;
        const char *digits = n + blen + 5;
        size_t nd = strspn(digits, "0123456789");
        if (nd == 0 || nd > 9 || digits[nd] != '\0' || digits[0] == '0') continue;
        long pid = strtol(digits, NULL, 10);
        if (pid <= 0 || pid > INT_MAX || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        size_t plen = strlen(dir) + 1 + strlen(n) + 1;
        char *p = malloc(plen);
        if (!p) break;
        snprintf(p, plen, "%s/%s", dir, n);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISREG(st.st_mode)) (void)unlink(p);
        free(p);
    }
    closedir(d);
    free(dir);
}

const char *ngd_file_kind(unsigned mode) {
    const mode_t m = (mode_t)mode;
    return S_ISDIR(m)    ? "a folder"
           : S_ISLNK(m)  ? "a symbolic link"
           : S_ISFIFO(m) ? "a FIFO"
           : S_ISCHR(m)  ? "a character device"
           : S_ISBLK(m)  ? "a block device"
           : S_ISSOCK(m) ? "a socket"
                         : "not a regular file";
}

int ngd_wbuf_open(ngd_wbuf *w, const char *path, size_t stream, char *err, size_t cap) {
    memset(w, 0, sizeof *w);
    w->fd = -1;
    if (!stream) stream = NGD_WBUF_STREAM;
    if (stream < 8) stream = 8;
    // the commit renames the temporary onto path, which would replace whatever is there: a
    // device node (/dev/full, as root), a FIFO, a symbolic link (not its target), a folder
    struct stat sb;
    if (lstat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        snprintf(err, cap, "%s: is %s, not a regular file; refusing to replace it", path,
                 ngd_file_kind(sb.st_mode));
        return -1;
    }
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    unsigned char *buf = malloc(stream);
    if (!tmp || !buf) {
        snprintf(err, cap, "%s: out of memory", path);
        free(tmp);
        free(buf);
        return -1;
    }
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    // first the temporaries of our earlier writes of this path that were killed mid-write
    // (they can be as large as the file, and nothing else ever removes them)
    remove_stale_temporaries(path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        snprintf(err, cap, "open %s: %s", tmp, strerror(errno));
        free(tmp);
        free(buf);
        return -1;
    }
    w->buf = buf, w->cap = stream;
    w->fd = fd, w->tmp = tmp;
    return 0;
}

// makes a rename in path's folder durable: fsync of the folder (best effort)
static void fsync_folder(const char *path) {
    const size_t plen = strlen(path);
    char *dir = malloc(plen + 2);
    if (!dir) return;
    memcpy(dir, path, plen + 1);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        memcpy(dir, ".", 2);
    int dfd = open(dir, O_RDONLY);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    free(dir);
}

int ngd_wbuf_commit(ngd_wbuf *w, const char *path, char *err, size_t cap) {
    if (!w->tmp || w->oom || w->in_part) { // (no stream, or a part left open: a bug)
        snprintf(err, cap, "%s: out of memory while serialising", path);
        ngd_wbuf_free(w);
        return -1;
    }
    wbuf_flush(w);
    const char *op = "write";
    int e = w->werr;
    if (e) goto fail;
    op = "fsync";
    if (fsync(w->fd) != 0) goto fail_errno;
    op = "close";
    {
        const int rc = close(w->fd);
        w->fd = -1;
        if (rc != 0) goto fail_errno;
    }
    op = "rename";
    if (rename(w->tmp, path) != 0) goto fail_errno;
    fsync_folder(path);
    free(w->tmp);
    w->tmp = NULL; // (it is the file now)
    ngd_wbuf_free(w);
    return 0;
fail_errno:
    e = errno;
fail:
    snprintf(err, cap, "%s %s: %s", op, w->tmp, strerror(e));
    ngd_wbuf_free(w); // closes and removes the temporary
    return -1;
}

int ngd_write_atomic(const char *path, const ngd_wbuf *w, char *err, size_t cap) {
    if (w->oom) {
        snprintf(err, cap, "%s: out of memory while serialising", path);
        return -1;
    }
    ngd_wbuf s;
    if (ngd_wbuf_open(&s, path, 8, err, cap)) return -1;
    wbuf_write_out(&s, w->buf, w->len); // straight from the caller's buffer
    return ngd_wbuf_commit(&s, path, err, cap);
}

int ngd_read_file(const char *path, unsigned char **data, size_t *len, char *err, size_t cap) {
    *data = NULL;
    *len = 0;
    // opened without blocking (a FIFO without a writer blocked fopen forever before the
    // check below could refuse it), then read as a stream
    const int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, cap, "open %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, cap, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        snprintf(err, cap, "open %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    size_t n = (size_t)st.st_size;
    unsigned char *b = malloc(n ? n : 1);
    if (!b) {
        snprintf(err, cap, "%s: out of memory (%zu bytes)", path, n);
        fclose(f);
        return -1;
    }
    if (n && fread(b, 1, n, f) != n) {
        snprintf(err, cap, "read %s: %s", path, ferror(f) ? strerror(errno) : "short read");
        free(b);
        fclose(f);
        return -1;
    }
    fclose(f);
    *data = b;
    *len = n;
    return 0;
}

const unsigned char *ngd_rbuf_bytes(ngd_rbuf *r, size_t n) {
    if (r->bad || n > r->len - r->pos) {
        r->bad = true;
        return NULL;
    }
    const unsigned char *p = r->buf + r->pos;
    r->pos += n;
    return p;
}

uint32_t ngd_rbuf_u32(ngd_rbuf *r) {
    const unsigned char *b = ngd_rbuf_bytes(r, 4);
    if (!b) return 0;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

uint64_t ngd_rbuf_u64(ngd_rbuf *r) {
    uint64_t lo = ngd_rbuf_u32(r);
    uint64_t hi = ngd_rbuf_u32(r);
    return lo | hi << 32;
}

float ngd_rbuf_f32(ngd_rbuf *r) {
    uint32_t u = ngd_rbuf_u32(r);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// all or nothing: out is untouched when the n floats are not all there
void ngd_rbuf_f32s(ngd_rbuf *r, float *out, size_t n) {
    const unsigned char *b = n <= SIZE_MAX / 4 ? ngd_rbuf_bytes(r, n * 4) : NULL;
    if (!b) {
        r->bad = true;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const uint32_t u = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 |
                           (uint32_t)b[4 * i + 2] << 16 | (uint32_t)b[4 * i + 3] << 24;
        memcpy(&out[i], &u, 4);
    }
}

bool ngd_rbuf_str(ngd_rbuf *r, char *out, size_t cap) {
    uint32_t n = ngd_rbuf_u32(r);
    const unsigned char *p = ngd_rbuf_bytes(r, n);
    if (!p) return false;
    size_t k = n < cap - 1 ? n : cap - 1;
    memcpy(out, p, k);
    out[k] = '\0';
    return true;
}

// zlib's CRC-32 (the same polynomial and conditioning as the bitwise loop it replaced, at
// table/SIMD speed)
uint32_t ngd_crc32(const void *p, size_t n) { return crc_update(0, p, n); }

int ngd_write_atomic_bytes(const char *path, const void *data, size_t len, char *err, size_t cap) {
    if (!path || (!data && len)) {
        if (err && cap) snprintf(err, cap, "write_atomic: no path or no data");
        return -1;
    }
    ngd_wbuf w = {.buf = (unsigned char *)(uintptr_t)data, .len = len, .cap = len};
    char tmp[1];
    if (!err || !cap) err = tmp, cap = sizeof tmp;
    return ngd_write_atomic(path, &w, err, cap);
}
