/*
 * fileio.h — files users keep: a little-endian writer that either grows a buffer in memory
 * or streams through a small fixed buffer into a file committed atomically (temporary file
 * in the same folder, fsync, rename, fsync of the folder; the temporary is removed on any
 * failure: redis rdbSave), so that saving a state needs no second copy of it; and a
 * bounds-checked reader over a whole file loaded into memory. CRC-32 (IEEE, zlib's) guards
 * against corruption, computed as the bytes go.
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

// A writer of little-endian values. Three kinds, told apart by how it was started:
//  - in memory: `ngd_wbuf w = {0}`; buf grows (realloc) and holds every byte written;
//  - streamed into a file: ngd_wbuf_open; buf is a fixed buffer written out whenever it is
//    full, and ngd_wbuf_commit makes the file; a failed write is remembered, later bytes are
//    dropped, and the commit reports it;
//  - counting: ngd_wbuf_count; nothing is kept, len counts the bytes (a size pass).
// The CRC-32 of what was written (ngd_wbuf_crc) and of a part of it (ngd_wbuf_part_*) is
// kept as the bytes go, whichever the kind.
typedef struct {
    unsigned char *buf;
    size_t len, cap; // bytes in buf, its size
    bool oom;        // an append failed; the buffer must not be committed
    bool counting;   // ngd_wbuf_count: bytes are counted in len, not kept
    bool in_part;    // between ngd_wbuf_part_begin and ngd_wbuf_part_crc
    int fd;          // streamed: the temporary file (valid while tmp is set)
    int werr;        // streamed: errno of the first failed write (0: none)
    char *tmp;       // streamed: "<path>.tmp.<pid>"; NULL in memory and counting
    uint64_t out;    // streamed: bytes written out of buf before its first
    uint32_t crc;    // CRC-32 of the bytes before buf[crc_pos] (and before the part, in one)
    uint32_t part;   // CRC-32 of the part's bytes before buf[part_pos]
    size_t crc_pos, part_pos;
    uint64_t part_start; // ngd_wbuf_size at ngd_wbuf_part_begin
} ngd_wbuf;

// The stream buffer of ngd_wbuf_open when it is given 0 bytes.
#define NGD_WBUF_STREAM ((size_t)1 << 20)

// Frees the buffer; a streamed writer that was not committed closes and removes its
// temporary file (the write is abandoned).
void ngd_wbuf_free(ngd_wbuf *w);
void ngd_wbuf_bytes(ngd_wbuf *w, const void *p, size_t n);
void ngd_wbuf_u32(ngd_wbuf *w, uint32_t v);
void ngd_wbuf_u64(ngd_wbuf *w, uint64_t v);
void ngd_wbuf_f32(ngd_wbuf *w, float v);
void ngd_wbuf_f32s(ngd_wbuf *w, const float *p, size_t n);    // little-endian floats
void ngd_wbuf_u16s(ngd_wbuf *w, const uint16_t *p, size_t n); // little-endian u16s (bf16)
void ngd_wbuf_u64s(ngd_wbuf *w, const uint64_t *p, size_t n); // little-endian u64s
void ngd_wbuf_str(ngd_wbuf *w, const char *s);                // u32 length + bytes
// Bytes written so far (in every kind).
uint64_t ngd_wbuf_size(const ngd_wbuf *w);
// CRC-32 of every byte written so far (not during a part). 0 when counting.
uint32_t ngd_wbuf_crc(ngd_wbuf *w);
// A part: the CRC-32 of the bytes written from ngd_wbuf_part_begin to ngd_wbuf_part_crc (a
// checksummed section inside a file that has its own CRC). One at a time.
void ngd_wbuf_part_begin(ngd_wbuf *w);
uint32_t ngd_wbuf_part_crc(ngd_wbuf *w);
// A counting writer (nothing to free).
ngd_wbuf ngd_wbuf_count(void);

// Starts a streamed writer for `path`: removes the temporaries of dead writers of it (as
// ngd_write_atomic), creates "<path>.tmp.<pid>", and writes through a buffer of `stream`
// bytes (0: NGD_WBUF_STREAM; at least 8). Returns 0, or -1 with a message in err.
int ngd_wbuf_open(ngd_wbuf *w, const char *path, size_t stream, char *err, size_t cap);
// Finishes a streamed writer: writes out the rest, fsync, close, rename onto path, fsync of
// the folder. Returns 0, or -1 with a message in err ("write /x/y.tmp.123: No space left on
// device", the messages of ngd_write_atomic) and the temporary removed. Frees w either way.
int ngd_wbuf_commit(ngd_wbuf *w, const char *path, char *err, size_t cap);
// Writes an in-memory buffer to `path` atomically (through "<path>.tmp.<pid>"; such
// temporaries of processes that no longer exist are removed first). Returns 0, or -1 with a
// message in err ("write /x/y.tmp.123: No space left on device").
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
// What a non-regular file is, for messages ("a FIFO", "a symbolic link", ...); st_mode of lstat
const char *ngd_file_kind(unsigned mode);
#endif
