/*
 * alloc.c — checked, overflow-safe allocation. Every allocation of libngd goes through
 * here, so a size overflow becomes a clean NGD_ERR_NOMEM instead of a short buffer.
 */
#include <stdlib.h>
#include <string.h>

#include "impl.h"

size_t ngd_mul_size(size_t a, size_t b, int *ok) {
    if (a != 0 && b > SIZE_MAX / a) {
        *ok = 0;
        return 0;
    }
    return a * b;
}

void *ngd_malloc(size_t n, size_t size) {
    int ok = 1;
    size_t bytes = ngd_mul_size(n, size, &ok);
    if (!ok) return NULL;
    return malloc(bytes ? bytes : 1);
}

void *ngd_calloc(size_t n, size_t size) {
    if (n == 0 || size == 0) return calloc(1, 1);
    int ok = 1;
    ngd_mul_size(n, size, &ok);
    if (!ok) return NULL;
    return calloc(n, size);
}

void ngd_free(void *p) { free(p); }

char *ngd_strdup(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
