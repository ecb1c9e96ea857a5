/*
 * fileio.c — little-endian buffers, atomic commit (temp + fsync + rename + fsync dir), and
 * CRC-32. Byte order is explicit, so files move between machines.
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

void ngd_wbuf_free(ngd_wbuf *w) {
    free(w->buf);
    memset(w, 0, sizeof *w);
}

void ngd_wbuf_bytes(ngd_wbuf *w, const void *p, size_t n) {
    if (!n || !wbuf_reserve(w, n)) return;
    memcpy(w->buf + w->len, p, n);
    w->len += n;
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

void ngd_wbuf_f32s(ngd_wbuf *w, const float *p, size_t n) {
    if (!n || !wbuf_reserve(w, n * 4)) return;
    for (size_t i = 0; i < n; i++)
        ngd_wbuf_f32(w, p[i]);
}

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

int ngd_write_atomic(const char *path, const ngd_wbuf *w, char *err, size_t cap) {
    if (w->oom) {
        snprintf(err, cap, "%s: out of memory while serialising", path);
        return -1;
    }
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    if (!tmp) {
        snprintf(err, cap, "%s: out of memory", path);
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
        return -1;
    }
    const char *op = "write";
    size_t off = 0;
    while (off < w->len) {
        ssize_t k = write(fd, w->buf + off, w->len - off);
        if (k < 0) {
            if (errno == EINTR) continue;
            goto fail;
        }
        off += (size_t)k;
    }
    op = "fsync";
    if (fsync(fd) != 0) goto fail;
    op = "close";
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    op = "rename";
    if (rename(tmp, path) != 0) goto fail;
    // make the rename itself durable: fsync the containing folder
    {
        char *dir = malloc(plen + 2);
        if (dir) {
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
    }
    free(tmp);
    return 0;
fail:
    snprintf(err, cap, "%s %s: %s", op, tmp, strerror(errno));
    if (fd >= 0) close(fd);
    unlink(tmp);
    free(tmp);
    return -1;
}

int ngd_read_file(const char *path, unsigned char **data, size_t *len, char *err, size_t cap) {
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, cap, "open %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, cap, "%s: not a regular file", path);
        fclose(f);
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
// table/SIMD speed), fed in pieces that fit its uInt length
uint32_t ngd_crc32(const void *p, size_t n) {
    const unsigned char *b = p;
    uLong c = crc32(0L, Z_NULL, 0);
    while (n > 0) {
        const uInt k = n > (size_t)UINT_MAX ? UINT_MAX : (uInt)n;
        c = crc32(c, b, k);
        b += k, n -= k;
    }
    return (uint32_t)c;
}

int ngd_write_atomic_bytes(const char *path, const void *data, size_t len, char *err, size_t cap) {
    if (!path || (!data && len)) {
        if (err && cap) snprintf(err, cap, "write_atomic: no path or no data");
        return -1;
    }
    ngd_wbuf w = {(unsigned char *)(uintptr_t)data, len, len, false};
    char tmp[1];
    if (!err || !cap) err = tmp, cap = sizeof tmp;
    return ngd_write_atomic(path, &w, err, cap);
}
