/*
 * status.c — the status-code message table (codes and messages side by side, bli_error.c
 * style), the version string and the ngd_matrix constructors.
 */
#include "impl.h"

static const char *const MESSAGES[NGD_STATUS_COUNT] = {
    [NGD_OK] = "ok",
    [NGD_ERR_ARG] = "invalid argument",
    [NGD_ERR_SHAPE] = "shape mismatch",
    [NGD_ERR_LAYER] = "unknown layer or parameter id",
    [NGD_ERR_NOMEM] = "out of memory",
    [NGD_ERR_IO] = "input/output error",
    [NGD_ERR_FORMAT] = "bad file format",
    [NGD_ERR_STATE] = "call not allowed in this state",
    [NGD_ERR_NUMERIC] = "numerical failure",
    [NGD_ERR_INTERNAL] = "internal error (a bug in libngd)",
    [NGD_SKIPPED] = "step skipped (non-finite gradient)",
};

const char *ngd_status_str(ngd_status s) {
    if ((unsigned)s >= NGD_STATUS_COUNT || !MESSAGES[s]) return "unknown status";
    return MESSAGES[s];
}

// "MAJOR.MINOR.PATCH" from ngd.h's macros, the one place the version is written
#define NGD_STR_(x) #x
#define NGD_STR(x)  NGD_STR_(x)
const char *ngd_version(void) {
    return NGD_STR(NGD_VERSION_MAJOR) "." NGD_STR(NGD_VERSION_MINOR) "." NGD_STR(NGD_VERSION_PATCH);
}

ngd_matrix ngd_matrix_f32(const float *data, size_t rows, size_t cols) {
    ngd_matrix m = {data, rows, cols, cols, NGD_F32};
    return m;
}

ngd_matrix ngd_matrix_bf16(const uint16_t *data, size_t rows, size_t cols) {
    ngd_matrix m = {data, rows, cols, cols, NGD_BF16};
    return m;
}
