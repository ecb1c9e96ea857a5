/* sref.c — float64 pattern-based reference of the structure classes (see sref.h). */
#include "sref.h"

#include <stdlib.h>
#include <string.h>

void sref_params_to_dense(const ngd_sdesc *s, const double *params, double *out) {
    const ngd_structure_ops *ops = ngd_structure_get(s->kind);
    for (size_t i = 0; i < s->d; i++)
        for (size_t j = 0; j < s->d; j++) {
            size_t e = ops->entry(s, i, j);
            out[i * s->d + j] = e == NGD_NO_ENTRY ? 0.0 : params[e];
        }
}

void sref_to_dense(const ngd_sdesc *s, const float *p, double *out) {
    double *q = malloc((s->n ? s->n : 1) * sizeof *q);
    for (size_t i = 0; i < s->n; i++)
        q[i] = (double)p[i];
    sref_params_to_dense(s, q, out);
    free(q);
}

void sref_project(const ngd_sdesc *s, const double *S, double *params) {
    const ngd_structure_ops *ops = ngd_structure_get(s->kind);
    const size_t d = s->d;
    size_t *cnt = calloc(s->n ? s->n : 1, sizeof *cnt);
    memset(params, 0, s->n * sizeof *params);
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            size_t e = ops->entry(s, i, j);
            if (e == NGD_NO_ENTRY) continue;
            bool mirror = ops->entry(s, j, i) != NGD_NO_ENTRY;
            params[e] += mirror ? S[i * d + j] : S[i * d + j] + S[j * d + i];
            cnt[e]++;
        }
    for (size_t e = 0; e < s->n; e++)
        if (cnt[e]) params[e] /= (double)cnt[e];
    free(cnt);
}

void sref_project_dense(const ngd_sdesc *s, const double *S, double *out) {
    double *q = malloc((s->n ? s->n : 1) * sizeof *q);
    sref_project(s, S, q);
    sref_params_to_dense(s, q, out);
    free(q);
}
