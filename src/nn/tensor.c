/*
 * tensor.c — the engine's small memory helpers: overflow-checked allocation, parameter
 * lists (nn_param) and explicit gradient zeroing, status names. No tensor type: buffers
 * are plain float arrays with shape comments, as in llm.c.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "nn.h"

const char *nn_status_str(nn_status s) {
    switch (s) {
    case NN_OK: return "ok";
    case NN_ERR_ARG: return "bad argument";
    case NN_ERR_NOMEM: return "out of memory";
    case NN_ERR_IO: return "i/o error";
    case NN_ERR_FORMAT: return "bad file format";
    }
    return "unknown status";
}

size_t nn_mul(size_t a, size_t b) {
    if (a != 0 && b > SIZE_MAX / a) return SIZE_MAX;
    return a * b;
}

// Arrays of 256 bytes or more start on a cache line (64 bytes): malloc gives 16, and its
// large blocks (mmap) start 16 bytes past a page, so every 64-byte vector of such an array
// straddled two lines. The f32 dW kernel of the cnn's layers (one core, its dy transposed in
// such a block): 111-139 -> 137-149 GFLOP/s. (free() takes them as it takes malloc's.)
#define NN_ALIGN_MIN 256

static _Atomic long fail_at; // nn_alloc_fail_at: allocations to go before one fails (0: none)

void nn_alloc_fail_at(long k) { atomic_store(&fail_at, k); }

void *nn_malloc(size_t n, size_t size) {
    size_t bytes = nn_mul(n, size);
    if (bytes == SIZE_MAX) return NULL;
    if (atomic_load_explicit(&fail_at, memory_order_relaxed) > 0 &&
        atomic_fetch_sub(&fail_at, 1) == 1)
        return NULL;
    if (bytes < NN_ALIGN_MIN) return malloc(bytes ? bytes : 1);
    void *p = NULL;
    return posix_memalign(&p, 64, bytes) ? NULL : p;
}

void *nn_calloc(size_t n, size_t size) {
    if (n == 0 || size == 0) return calloc(1, 1);
    const size_t bytes = nn_mul(n, size);
    if (bytes == SIZE_MAX) return NULL;
    if (bytes < NN_ALIGN_MIN) return calloc(n, size);
    void *p = nn_malloc(n, size);
    if (p) memset(p, 0, bytes);
    return p;
}

// Gradients are cleared in pieces of 16K floats, shared by the threads in one parallel region
// without a barrier between parameters (on a loaded machine each barrier can wait a
// scheduler slice); small models clear on the calling thread.
void nn_zero_grads(const nn_param *ps, size_t count) {
    const size_t piece = 16384;
    size_t total = 0;
    for (size_t i = 0; i < count; i++)
        total += ps[i].g ? ps[i].n : 0;
    (void)total; // (serial builds)
#ifdef _OPENMP
#pragma omp parallel if (total >= 4 * piece)
#endif
    for (size_t i = 0; i < count; i++) {
        float *g = ps[i].g;
        const size_t n = g ? ps[i].n : 0;
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
        for (size_t b = 0; b < n; b += piece)
            memset(g + b, 0, (n - b < piece ? n - b : piece) * sizeof(float));
    }
    for (size_t i = 0; i < count; i++)
        if (ps[i].zeroed && ps[i].g) *ps[i].zeroed = true;
}

typedef float nn_colsum_v16 __attribute__((vector_size(64)));

void nn_colsum_add(const float *x, size_t rows, size_t cols, size_t ld, float *acc) {
    NN_ASSERT(x && acc && ld >= cols);
    const size_t nb = nn_col_blocks(cols);
    NN_OMP_FOR(rows * cols)
    for (size_t b = 0; b < nb; b++) {
        const size_t j0 = b * NN_COL_BLOCK, w = nn_col_width(b, cols);
        if (w == NN_COL_BLOCK) { // (the sums in one vector register: as an array they went
            nn_colsum_v16 a, v;  //  through the stack every row)
            memcpy(&a, acc + j0, sizeof a);
            for (size_t r = 0; r < rows; r++) {
                memcpy(&v, x + r * ld + j0, sizeof v);
                a += v;
            }
            memcpy(acc + j0, &a, sizeof a);
            continue;
        }
        float a[NN_COL_BLOCK]; // (the block's sums on the thread's stack: acc's cache lines
        memcpy(a, acc + j0, w * sizeof *a); //  are not written by both threads row by row)
        for (size_t r = 0; r < rows; r++) {
            const float *restrict xr = x + r * ld + j0;
            for (size_t j = 0; j < w; j++)
                a[j] += xr[j];
        }
        memcpy(acc + j0, a, w * sizeof *a);
    }
}

size_t nn_param_count(const nn_param *ps, size_t count) {
    size_t s = 0;
    for (size_t i = 0; i < count; i++)
        s += ps[i].n;
    return s;
}

int nn_thread_num(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
