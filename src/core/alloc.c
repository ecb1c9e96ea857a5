/*
 * alloc.c — checked, overflow-safe allocation. Every allocation of libngd goes through
 * here, so a size overflow becomes a clean NGD_ERR_NOMEM instead of a short buffer, and the
 * test hook (ngd_alloc_fail_at) can fail any one of them to check that every call stays
 * all-or-nothing (tests/test_nomem.c).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "impl.h"

// The hook: atomics, as allocations may come from worker threads (one increment per
// allocation; allocations are rare and never in a steady-state step).
static _Atomic uint64_t hook_count, hook_fail_at;
static _Atomic int hook_paused;

void ngd_alloc_fail_at(uint64_t k) {
    atomic_store(&hook_count, 0);
    atomic_store(&hook_fail_at, k);
}

void ngd_alloc_pause(bool paused) { atomic_store(&hook_paused, paused ? 1 : 0); }

uint64_t ngd_alloc_count(void) { return atomic_load(&hook_count); }

static bool hook_fails(void) {
    if (atomic_load_explicit(&hook_paused, memory_order_relaxed)) return false;
    const uint64_t n = atomic_fetch_add(&hook_count, 1) + 1;
    const uint64_t k = atomic_load_explicit(&hook_fail_at, memory_order_relaxed);
    return k != 0 && n == k;
}

size_t ngd_mul_size(size_t a, size_t b, int *ok) {
    if (a != 0 && b > SIZE_MAX / a) {
        *ok = 0;
        return 0;
    }
    return a * b;
}

void *ngd_malloc(size_t n, size_t size) {
    if (hook_fails()) return NULL;
    int ok = 1;
    size_t bytes = ngd_mul_size(n, size, &ok);
    if (!ok) return NULL;
    return malloc(bytes ? bytes : 1);
}

void *ngd_calloc(size_t n, size_t size) {
    if (hook_fails()) return NULL;
    if (n == 0 || size == 0) return calloc(1, 1);
    int ok = 1;
    ngd_mul_size(n, size, &ok);
    if (!ok) return NULL;
    return calloc(n, size);
}

void *ngd_realloc(void *p, size_t n, size_t size) {
    if (hook_fails()) return NULL;
    int ok = 1;
    size_t bytes = ngd_mul_size(n, size, &ok);
    if (!ok) return NULL;
    return realloc(p, bytes ? bytes : 1);
}

void ngd_free(void *p) { free(p); }

char *ngd_strdup(const char *s) {
    if (!s) return NULL;
    if (hook_fails()) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
