/*
 * fileio.h — files users keep: a growable little-endian write buffer that is committed
 * atomically (temporary file in the same folder, fsync, rename, fsync of the folder; the
 * temporary is removed on any failure: redis rdbSave), and a bounds-checked reader over a
 * whole file loaded into memory. CRC-32 (IEEE, zlib's) guards against corruption.
 *
 * Internal to libngd, not in <ngd.h> while the ABI is 0.x: the one serialiser of the
 * optimizer checkpoints (src/optim/checkpoint.c) and of the command's training checkpoints
 * (src/cli/trainckpt.c), which with the tests links libngd statically and includes this.
 */
#ifndef NGD_FILEIO_H
#define NGD_FILEIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    unsigned char *buf;
    size_t len, cap;
    bool oom; // an append failed; the buffer must not be committed
} ngd_wbuf;

void ngd_wbuf_free(ngd_wbuf *w);
void ngd_wbuf_bytes(ngd_wbuf *w, const void *p, size_t n);
void ngd_wbuf_u32(ngd_wbuf *w, uint32_t v);
void ngd_wbuf_u64(ngd_wbuf *w, uint64_t v);
void ngd_wbuf_f32(ngd_wbuf *w, float v);
void ngd_wbuf_f32s(ngd_wbuf *w, const float *p, size_t n); // little-endian floats
void ngd_wbuf_str(ngd_wbuf *w, const char *s);             // u32 length + bytes
// Writes the buffer to `path` atomically (through "<path>.tmp.<pid>"; such temporaries of
// processes that no longer exist are removed first). Returns 0, or -1 with a message in err
// ("write /x/y.tmp.123: No space left on device").
int ngd_write_atomic(const char *path, const ngd_wbuf *w, char *err, size_t cap);
// The same for len bytes at data (no buffer); err may be NULL.
int ngd_write_atomic_bytes(const char *path, const void *data, size_t len, char *err, size_t cap);

typedef struct {
    const unsigned char *buf;
    size_t len, pos;
    bool bad; // a read ran past the end
} ngd_rbuf;

// Reads a whole file into *data (free with free()). Returns 0, or -1 with a message.
int ngd_read_file(const char *path, unsigned char **data, size_t *len, char *err, size_t cap);
uint32_t ngd_rbuf_u32(ngd_rbuf *r);
uint64_t ngd_rbuf_u64(ngd_rbuf *r);
float ngd_rbuf_f32(ngd_rbuf *r);
const unsigned char *ngd_rbuf_bytes(ngd_rbuf *r, size_t n); // NULL (and bad) past the end
void ngd_rbuf_f32s(ngd_rbuf *r, float *out, size_t n);      // all or nothing (else bad)
// Reads a u32-length string into out (NUL-terminated, truncated to cap-1). false if bad.
bool ngd_rbuf_str(ngd_rbuf *r, char *out, size_t cap);

// CRC-32 (IEEE 802.3; zlib's crc32) of n bytes, as used by every checkpoint format.
uint32_t ngd_crc32(const void *p, size_t n);
#endif
