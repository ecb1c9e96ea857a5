/*
 * stats.c — a layer's (a, g) turned into the statistics of docs/algorithms.md#singd-statistics:
 * bias column of ones, expand (one row per sample and position) or reduce (mean of a, sum
 * of g over each sample's positions), bf16 decoding, and the loss-average σ (#output-gradients).
 * Rows are produced in chunks so that no method needs a buffer as large as the caller's
 * im2col matrix. Scaling (1/rows for a, σ² and loss scales for g) is left to the methods.
 */
#include <math.h>
#include <string.h>

#include "bf16.h"
#include "blas.h"
#include "method.h"

static float mat_at(const ngd_matrix *m, size_t i, size_t j) {
    size_t k = i * m->ld + j;
    if (m->dtype == NGD_BF16) return ngd_bf16_to_f32(((const uint16_t *)m->data)[k]);
    return ((const float *)m->data)[k];
}

static const char *approx_name(ngd_kfac_approx a) {
    return a == NGD_KFAC_REDUCE ? "reduce" : "expand";
}

ngd_status ngd_stats_check(ngd_optim *o, const ngd_entry *e, size_t batch, const ngd_matrix *a,
                           const ngd_matrix *g) {
    const char *nm = e->name;
    if (batch == 0) return ngd_optim_fail(o, NGD_ERR_ARG, "layer '%s': batch is 0", nm);
    const ngd_matrix *ms[2] = {a, g};
    const char *which[2] = {"a", "g"};
    for (int i = 0; i < 2; i++) {
        if (!ms[i]->data)
            return ngd_optim_fail(o, NGD_ERR_ARG, "layer '%s': %s has NULL data", nm, which[i]);
        if (ms[i]->dtype != NGD_F32 && ms[i]->dtype != NGD_BF16 &&
            !(i == 0 && ms[i]->dtype == NGD_DT_UNFOLD)) // (ngd_optim_observe_conv's a)
            return ngd_optim_fail(o, NGD_ERR_ARG, "layer '%s': %s has unknown dtype %d", nm,
                                  which[i], (int)ms[i]->dtype);
        if (ms[i]->ld < ms[i]->cols)
            return ngd_optim_fail(o, NGD_ERR_SHAPE, "layer '%s': %s has ld %zu < cols %zu", nm,
                                  which[i], ms[i]->ld, ms[i]->cols);
        // (rows x ld elements past the address space: the reads wrapped, a segfault)
        if (ms[i]->dtype != NGD_DT_UNFOLD && ms[i]->ld && ms[i]->rows > SIZE_MAX / 4 / ms[i]->ld)
            return ngd_optim_fail(o, NGD_ERR_SHAPE,
                                  "layer '%s': %s has %zu rows of ld %zu: its size overflows", nm,
                                  which[i], ms[i]->rows, ms[i]->ld);
    }
    if (a->cols != e->d_in)
        return ngd_optim_fail(o, NGD_ERR_SHAPE, "layer '%s': a has %zu columns, expected %zu", nm,
                              a->cols, e->d_in);
    if (g->cols != e->d_out)
        return ngd_optim_fail(o, NGD_ERR_SHAPE, "layer '%s': g has %zu columns, expected %zu", nm,
                              g->cols, e->d_out);
    if (g->rows == 0 || g->rows % batch != 0)
        return ngd_optim_fail(o, NGD_ERR_SHAPE,
                              "layer '%s': g has %zu rows, expected a multiple of batch %zu", nm,
                              g->rows, batch);
    bool reduce = e->cfg.kfac_approx == NGD_KFAC_REDUCE;
    if (a->rows != g->rows && !(reduce && a->rows == batch))
        return ngd_optim_fail(o, NGD_ERR_SHAPE,
                              "layer '%s': a has %zu rows, expected %zu (= rows of g)%s", nm,
                              a->rows, g->rows, reduce ? " or batch (already reduced)" : "");
    NGD_UNUSED(approx_name);
    return NGD_OK;
}

size_t ngd_stats_rows(const ngd_entry *e, size_t batch, const ngd_matrix *g) {
    return e->cfg.kfac_approx == NGD_KFAC_REDUCE ? batch : g->rows;
}

void ngd_stats_a_rows(const ngd_entry *e, size_t batch, const ngd_matrix *a, const ngd_matrix *g,
                      size_t r0, size_t nr, float *out) {
    size_t dK = e->d_K, din = e->d_in;
    bool reduce = e->cfg.kfac_approx == NGD_KFAC_REDUCE;
    size_t R = g->rows / batch;
    if (a->dtype == NGD_DT_UNFOLD && !reduce) { // (all nr rows at once, on the threads)
        ngd_unfold_rows(a->data, r0, nr, out, dK);
        if (dK > din)
            for (size_t r = 0; r < nr; r++)
                out[r * dK + din] = 1.0f;
        return;
    }
    for (size_t r = 0; r < nr; r++) {
        float *o = out + r * dK;
        size_t row = r0 + r;
        if (a->dtype == NGD_DT_UNFOLD) {          // a convolution's rows, unfolded as read
            ngd_unfold_mean_row(a->data, row, o); // (reduce: the sample's mean row)
        } else if (!reduce || a->rows == batch) {
            if (a->dtype == NGD_F32)
                memcpy(o, (const float *)a->data + row * a->ld, din * sizeof(float));
            else
                ngd_bf16_decode((const uint16_t *)a->data + row * a->ld, o, din);
        } else {
            // mean over the R positions of sample `row` (#linear-inputs, #conv2d-inputs reduce)
            for (size_t j = 0; j < din; j++)
                o[j] = 0.0f;
            for (size_t p = 0; p < R; p++)
                for (size_t j = 0; j < din; j++)
                    o[j] += mat_at(a, row * R + p, j);
            float inv = 1.0f / (float)R;
            for (size_t j = 0; j < din; j++)
                o[j] *= inv;
        }
        if (dK > din) o[din] = 1.0f; // bias column
    }
}

void ngd_stats_g_rows(const ngd_entry *e, size_t batch, const ngd_matrix *g, size_t r0, size_t nr,
                      float *out) {
    size_t dC = e->d_out;
    bool reduce = e->cfg.kfac_approx == NGD_KFAC_REDUCE;
    size_t R = g->rows / batch;
    for (size_t r = 0; r < nr; r++) {
        float *o = out + r * dC;
        size_t row = r0 + r;
        if (!reduce) {
            if (g->dtype == NGD_F32)
                memcpy(o, (const float *)g->data + row * g->ld, dC * sizeof(float));
            else
                ngd_bf16_decode((const uint16_t *)g->data + row * g->ld, o, dC);
        } else {
            // sum over the R positions of sample `row` (#output-gradients step 2)
            for (size_t j = 0; j < dC; j++)
                o[j] = 0.0f;
            for (size_t p = 0; p < R; p++)
                for (size_t j = 0; j < dC; j++)
                    o[j] += mat_at(g, row * R + p, j);
        }
    }
}

// (micro: the observes the step's batch comes in, each of `batch` samples: σ is the whole
// batch's, ngd_optim_set_micro_batches)
double ngd_stats_sigma2(const ngd_entry *e, size_t batch, const ngd_matrix *g, size_t micro) {
    switch (e->cfg.loss_average) {
    case NGD_LOSS_SUM: return 1.0;
    case NGD_LOSS_BATCH: return (double)batch * (double)micro;
    case NGD_LOSS_BATCH_SEQUENCE: // N·R, read before any reduction
        return (double)g->rows * (double)micro;
    }
    return 1.0;
}

bool ngd_stats_gram(const ngd_entry *e, size_t batch, const ngd_matrix *m, bool kside, float alpha,
                    float beta, float *G, float *scratch) {
    const bool reduce = e->cfg.kfac_approx == NGD_KFAC_REDUCE;
    const size_t d = kside ? e->d_K : e->d_out, dm = kside ? e->d_in : e->d_out;
    const size_t rows = m->rows;
    if (m->dtype == NGD_DT_UNFOLD) { // blocks of unfolded rows (the bias column's ones with them)
        if (reduce) return false;
        NGD_ASSERT(e->unfolded && scratch); // (a block fits ngd_stats_observe_scratch)
        // bf16 images: their unfolded rows are bf16 values, so the block is rounded into the
        // scratch's last third (exactly) and multiplied by the bf16 kernels: the same products,
        // summed in f32 (the cnn's bf16 observe, ms a step: K-FAC 22.2 -> 16.1, B-KFAC 19.3 ->
        // 16.2)
        const ngd_unfold_src *src = m->data;
        if (ngd_unfold_gram_shifts(src, d, alpha, beta, G, scratch, ngd_stats_observe_scratch(e)))
            return true;
        const bool x16 = src->x.dtype == NGD_BF16;
        const size_t br =
            x16 ? ngd_stats_block16_rows(ngd_stats_observe_scratch(e), d) : ngd_stats_block_rows(d);
        for (size_t r0 = 0; r0 < rows; r0 += br) {
            const size_t nr = NGD_MIN(br, rows - r0);
            ngd_stats_a_rows(e, batch, m, m, r0, nr, scratch);
            if (x16) {
                uint16_t *b = (uint16_t *)(void *)(scratch + br * d);
                ngd_bf16_encode(scratch, b, nr * d);
                ngd_syrk_bf16(true, d, nr, alpha, b, d, r0 ? 1.0f : beta, G, d);
            } else {
                ngd_syrk_full(alpha, (ngd_cview){scratch, d, nr, 1, (ptrdiff_t)d}, r0 ? 1.0f : beta,
                              ngd_view_rm(G, d, d, d));
            }
        }
        return true;
    }
    const bool b16 = m->dtype == NGD_BF16; // (products of bf16 values, summed in f32)
    if ((m->dtype != NGD_F32 && !b16) || (reduce && !(kside && rows == batch))) return false;
    const float *p = m->data;
    const uint16_t *p16 = m->data;
    if (b16)
        ngd_syrk_bf16(true, dm, rows, alpha, p16, m->ld, beta, G, d);
    else
        ngd_syrk_full(alpha, (ngd_cview){p, dm, rows, 1, (ptrdiff_t)m->ld}, beta,
                      ngd_view_rm(G, dm, dm, d));
    if (d > dm) {               // the bias column: Σ_r x_rj (row by row), and Σ 1·1
        float *cs = G + dm * d; // (its old values kept in the column meanwhile)
        for (size_t j = 0; j < dm; j++)
            G[j * d + dm] = beta == 0.0f ? 0.0f : beta * G[j * d + dm];
        const float last = beta == 0.0f ? 0.0f : beta * cs[dm];
        memset(cs, 0, dm * sizeof(float));
        // by blocks of 16 columns on the threads, each column summed row by row (the same bits
        // on any number of threads): serially, this pass took 9 of 53 ms at 131072 x 288, on 2
        // threads 6-8
        const size_t nb = (dm + 15) / 16;
#pragma omp parallel for schedule(static) if (rows * dm > NGD_PAR_MIN)
        for (size_t jb = 0; jb < nb; jb++) {
            const size_t j0 = jb * 16, nj = dm - j0 < 16 ? dm - j0 : 16;
            float acc[16] = {0};
            if (b16)
                for (size_t r = 0; r < rows; r++)
                    for (size_t j = 0; j < nj; j++)
                        acc[j] += ngd_bf16_to_f32(p16[r * m->ld + j0 + j]);
            else
                for (size_t r = 0; r < rows; r++)
                    for (size_t j = 0; j < nj; j++)
                        acc[j] += p[r * m->ld + j0 + j];
            memcpy(cs + j0, acc, nj * sizeof(float));
        }
        for (size_t j = 0; j < dm; j++)
            G[j * d + dm] = cs[j] = G[j * d + dm] + alpha * cs[j];
        cs[dm] = last + alpha * (float)rows;
    }
    return true;
}
