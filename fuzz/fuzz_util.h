/*
 * fuzz_util.h — shared by the libFuzzer targets (fuzz/fuzz_*.c): the readers that take a
 * path get the input through a temporary file of this process (created once, rewritten for
 * every input, removed at exit).
 */
#ifndef NGD_FUZZ_UTIL_H
#define NGD_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FUZZ_MAX_FILES 4

static char fuzz_paths[FUZZ_MAX_FILES][256];

static inline void fuzz_remove_files(void) {
    for (int i = 0; i < FUZZ_MAX_FILES; i++)
        if (fuzz_paths[i][0]) unlink(fuzz_paths[i]);
}

// Writes data to temporary file number `slot` (0 .. FUZZ_MAX_FILES-1) and returns its path.
static inline const char *fuzz_file(int slot, const uint8_t *data, size_t size) {
    static int registered;
    char *p = fuzz_paths[slot];
    if (!p[0]) {
        // memory-backed when there is one: the readers are fuzzed, not the disk
        const char *dir = getenv("TMPDIR")                ? getenv("TMPDIR")
                          : access("/dev/shm", W_OK) == 0 ? "/dev/shm"
                                                          : "/tmp";
        snprintf(p, sizeof fuzz_paths[slot], "%s/ngd-fuzz-%ld-%d-XXXXXX", dir, (long)getpid(),
                 slot);
        int fd = mkstemp(p);
        if (fd < 0) abort();
        close(fd);
        if (!registered++) atexit(fuzz_remove_files);
    }
    FILE *f = fopen(p, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f)) abort();
    return p;
}

// Reads a little-endian integer of n <= 8 bytes from the front of the input (0 past its end).
static inline uint64_t fuzz_take(const uint8_t **data, size_t *size, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n && *size; i++, (*data)++, (*size)--)
        v |= (uint64_t) * *data << (8 * i);
    return v;
}
#endif
