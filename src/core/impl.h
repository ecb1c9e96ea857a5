/*
 * impl.h — internal helpers shared by all of libngd (never installed).
 * NGD_ASSERT for our own invariants (aborts in test/debug builds with file:line; in release
 * builds NDEBUG turns it into a no-op and callers return NGD_ERR_INTERNAL where it matters),
 * NGD_UNUSED, checked allocation, and small math helpers.
 */
#ifndef NGD_IMPL_H
#define NGD_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ngd.h"

#define NGD_UNUSED(x) (void)(x)
// element-wise loops over more elements than this are split across OpenMP threads
// (never around a BLAS call: one threading layer, DESIGN.md)
#define NGD_PAR_MIN   32768
#define NGD_MIN(a, b) ((a) < (b) ? (a) : (b))
#define NGD_MAX(a, b) ((a) > (b) ? (a) : (b))

#ifdef NDEBUG
#define NGD_ASSERT(c) ((void)0)
#else
#define NGD_ASSERT(c)                                                                              \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "libngd: internal assertion failed: %s at %s:%d\n", #c, __FILE__,      \
                    __LINE__);                                                                     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)
#endif

// ---- allocation (alloc.c): overflow-checked; NULL on failure or overflow ----
void *ngd_malloc(size_t n, size_t size); // n*size bytes, uninitialised
void *ngd_calloc(size_t n, size_t size); // zeroed
void ngd_free(void *p);
// a*b with overflow detection: returns 0 and sets *ok = 0 on overflow
size_t ngd_mul_size(size_t a, size_t b, int *ok);
char *ngd_strdup(const char *s);
// Resizes p to n*size bytes (realloc semantics; p unchanged on failure).
void *ngd_realloc(void *p, size_t n, size_t size);
// Test hook (tests/test_nomem.c): the k-th allocation from now on fails (k >= 1; 0: none)
// and the count restarts; while paused, allocations are neither counted nor failed.
void ngd_alloc_fail_at(uint64_t k);
void ngd_alloc_pause(bool paused);
uint64_t ngd_alloc_count(void); // allocations since the last ngd_alloc_fail_at

#endif
