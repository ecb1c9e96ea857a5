/*
 * evaluate.c — evaluation: the loss and accuracy of a model on the test set (text: a fixed
 * set of validation windows), split over the ranks under mpirun and stopped by a signal; a
 * text model's sample; the CRC of the parameters that lets two runs be compared bit for
 * bit; and `ngd eval`, which evaluates a training checkpoint with the run its header records.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/fileio.h"
#include "dist.h"
#include "train.h"

// Returns -1 (after an error) for a set the model was not built for: its batches would not
// fit x (sized for the training images) nor the model's input and classes. load_data checks
// this already; this check keeps any other path from writing out of bounds. Returns 1 when
// a signal stopped it (loss and accuracy are then NaN).
static int evaluate(nn_model *m, const nn_dataset *ds, size_t B, float *x, int32_t *y, double *loss,
                    double *acc) {
    nn_loader ld;
    double l = 0;
    size_t correct = 0, n = 0;
    if (ds->c != m->cfg.in_c || ds->h != m->cfg.in_h || ds->w != m->cfg.in_w ||
        ds->num_classes > m->cfg.classes) {
        cli_error(NULL,
                  "the test set (%zu x %zu x %zu images, %zu classes) does not fit the "
                  "model (%zu x %zu x %zu, %zu classes)",
                  ds->c, ds->h, ds->w, ds->num_classes, m->cfg.in_c, m->cfg.in_h, m->cfg.in_w,
                  m->cfg.classes);
        *loss = (double)NAN, *acc = (double)NAN;
        return -1;
    }
    if (nn_loader_init(&ld, ds, B, false, false, NULL, 0) != NN_OK) {
        *loss = (double)NAN, *acc = (double)NAN;
        return 0;
    }
    size_t k, bi = 0;
    while (!train_stop_signal && (k = nn_loader_next(&ld, x, y)) > 0) {
        if (ld.epoch > 0) break;
        if (bi++ % (size_t)dist_size() != (size_t)dist_rank()) continue; // mpirun: a share
        m->ops->forward(m, x, k, false);
        l += (double)nn_xent_forward(m->logits, y, k, m->cfg.classes, 0.0f, 1.0f, NULL) * (double)k;
        correct += nn_xent_correct(m->logits, y, k, m->cfg.classes);
        n += k;
    }
    nn_loader_free(&ld);
    double sums[4] = {l, (double)correct, (double)n, train_stop_signal ? 1.0 : 0.0};
    if (dist_sum_f64(sums, 4)) return -1;
    l = sums[0], correct = (size_t)sums[1], n = (size_t)sums[2];
    if (sums[3] > 0 && !train_stop_signal) train_stop_signal = SIGTERM; // another rank's signal
    char err[600];
    if (nn_dataset_failed(ds, err, sizeof err)) { // a streamed set's file changed
        cli_error(NULL, "%s", err);
        *loss = (double)NAN, *acc = (double)NAN;
        return -1;
    }
    if (train_stop_signal) n = 0;
    *loss = n ? l / (double)n : (double)NAN;
    *acc = n ? (double)correct / (double)n : (double)NAN;
    return train_stop_signal ? 1 : 0;
}

// Text: the mean loss and next-character accuracy over a fixed set of validation windows
// (TEXT_EVAL_BATCHES batches of B windows from a fixed seed: the same every evaluation, and
// the same for every --seed).
#define TEXT_EVAL_SEED 0x5eedULL
// A rank's windows are forwarded in `parts` equal parts (--micro-batches: the model is sized
// for one).
static void evaluate_text(nn_model *m, const nn_text *tx, size_t B, size_t T, size_t parts,
                          int32_t *ids, int32_t *y, double *loss, double *acc) {
    nn_rng r;
    nn_rng_seed(&r, TEXT_EVAL_SEED);
    double l = 0;
    size_t correct = 0, n = 0;
    size_t Bl, first; // mpirun: B is the global batch; each rank forwards its shard
    dist_shard(B, &Bl, &first);
    for (size_t i = 0; i < TEXT_EVAL_BATCHES && !train_stop_signal; i++) {
        if (nn_text_batch(tx, NN_SPLIT_VAL, B, T, &r, ids, y) != NN_OK) break;
        const size_t bp = Bl / parts, k = bp * T;
        for (size_t p = 0; p < parts; p++) {
            const size_t s0 = first + p * bp;
            m->ops->forward_tokens(m, ids + s0 * T, bp, T, false);
            l += (double)nn_xent_forward(m->logits, y + s0 * T, k, m->cfg.classes, 0.0f, 1.0f,
                                         NULL) *
                 (double)k;
            correct += nn_xent_correct(m->logits, y + s0 * T, k, m->cfg.classes);
            n += k;
        }
    }
    double sums[4] = {l, (double)correct, (double)n, train_stop_signal ? 1.0 : 0.0};
    if (dist_sum_f64(sums, 4) == 0) {
        l = sums[0], correct = (size_t)sums[1], n = (size_t)sums[2];
        if (sums[3] > 0 && !train_stop_signal) train_stop_signal = SIGTERM;
    }
    *loss = n ? l / (double)n : (double)NAN;
    *acc = n ? (double)correct / (double)n : (double)NAN;
}

// The length of the well-formed UTF-8 sequence at s (n bytes left) that is printable: not a C1
// control (U+0080..U+009F), an overlong form, a surrogate or above U+10FFFF; 0 otherwise.
static size_t utf8_printable(const unsigned char *s, size_t n) {
    const unsigned c = s[0];
    const size_t k = c >= 0xf0 && c <= 0xf4   ? 4
                     : c >= 0xe0 && c <= 0xef ? 3
                     : c >= 0xc2 && c <= 0xdf ? 2
                                              : 0;
    if (k == 0 || k > n) return 0;
    uint32_t cp = c & (k == 2 ? 0x1f : k == 3 ? 0x0f : 0x07);
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    const uint32_t lo = k == 2 ? 0xa0 : k == 3 ? 0x800 : 0x10000; // (C1 controls below 0xa0)
    if (cp < lo || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return k;
}

// s (n bytes) made safe for a terminal in place: control bytes but newline and tab, DEL, and
// bytes of no printable UTF-8 character (a binary "text", a sample cut inside a character)
// become '?'; well-formed printable UTF-8 stays
static void sanitize_text(char *s, size_t n) {
    unsigned char *u = (unsigned char *)s;
    for (size_t i = 0; i < n;) {
        if (u[i] < 0x80) {
            if ((u[i] < 0x20 && u[i] != '\n' && u[i] != '\t') || u[i] == 0x7f) u[i] = '?';
            i++;
            continue;
        }
        const size_t k = utf8_printable(u + i, n - i);
        if (k == 0)
            u[i++] = '?';
        else
            i += k;
    }
}

// Prints `len` characters sampled from the model (softmax at temperature 1, seeded), starting
// from a newline, each conditioned on the last T characters at most.
void train_print_sample(nn_model *m, const nn_text *tx, size_t T, uint64_t seed, size_t len) {
    int32_t *ctx = malloc(T * sizeof *ctx);
    char *out = malloc(len + 1);
    double *p = malloc(m->cfg.classes * sizeof *p);
    if (!ctx || !out || !p) {
        free(ctx), free(out), free(p);
        return;
    }
    nn_rng r;
    nn_rng_seed(&r, seed);
    size_t have = 1;
    ctx[0] = tx->stoi['\n'] >= 0 ? tx->stoi['\n'] : 0;
    const size_t V = m->cfg.classes;
    for (size_t i = 0; i < len; i++) {
        m->ops->forward_tokens(m, ctx, 1, have, false);
        const float *z = m->logits + (have - 1) * V;
        double mx = (double)z[0], sum = 0;
        for (size_t j = 1; j < V; j++)
            mx = fmax(mx, (double)z[j]);
        for (size_t j = 0; j < V; j++)
            sum += p[j] = exp((double)z[j] - mx);
        double u = nn_rng_uniform_f64(&r) * sum;
        size_t id = 0;
        while (id + 1 < V && (u -= p[id]) >= 0)
            id++;
        out[i] = (char)tx->itos[id];
        if (have == T) memmove(ctx, ctx + 1, (T - 1) * sizeof *ctx), have--;
        ctx[have++] = (int32_t)id;
    }
    out[len] = '\0';
    sanitize_text(out, len); // (the characters of a binary input, or cut UTF-8, as '?')
    printf("sample (%zu characters from a newline, seed %llu):\n%s\n", len,
           (unsigned long long)seed, out);
    free(ctx), free(out), free(p);
}

int train_evaluate(nn_model *m, const train_opts *t, const train_sets *d, float *x, int32_t *ids,
                   int32_t *y, double *loss, double *acc) {
    size_t Bl, first;
    dist_shard(t->batch, &Bl, &first); // mpirun: the model holds one rank's share
    // (--micro-batches: the model is sized for a part of it; ngd eval: 1)
    if (!t->text) return evaluate(m, &d->test, Bl / t->micro, x, y, loss, acc);
    evaluate_text(m, &d->text, t->batch, t->context, t->micro, ids, y, loss, acc);
    if (train_stop_signal) *loss = *acc = (double)NAN;
    return train_stop_signal ? 1 : 0;
}

// The CRC of a model's parameters (ngd eval prints it; the training summary logs it), so that
// two runs can be compared bit for bit.
uint32_t train_params_crc(const nn_model *m) {
    uint32_t crc = 0;
    for (size_t i = 0; i < m->nparams; i++)
        crc ^= ngd_crc32(m->params[i].p, m->params[i].n * sizeof(float)) + (uint32_t)i;
    return crc;
}

// ngd eval: the run's model, data set, method, widths, subset, context and batch from the
// checkpoint's header into t; the ones given must agree with it. Returns an exit code.
static int eval_setup(train_opts *t) {
    static trainckpt_head h; // t keeps pointers to its names
    size_t len;
    unsigned char *b = (unsigned char *)cli_read_file(t->resume, &len, "--resume ");
    if (!b) return NGD_EXIT_FAIL;
    const char *why = trainckpt_read_head(b, len, &h);
    free(b);
    char given[96] = "", had[96] = "", whybuf[320];
    if (!why && ngd_method_parse(h.method, &t->method) != NGD_OK)
        why = "bad header (method)";
    else if (!why && t->model && strcmp(t->model, h.model) != 0) {
        snprintf(whybuf, sizeof whybuf, "it was written for --model %s, not %s", h.model, t->model);
        why = whybuf;
    } else if (!why && t->data && strcmp(t->data, h.data) != 0) {
        snprintf(whybuf, sizeof whybuf, "it was written for --data %s, not %s", h.data, t->data);
        why = whybuf;
    } else if (!why && t->context && strcmp(h.data, "shakespeare") != 0) {
        snprintf(whybuf, sizeof whybuf,
                 "--context is for text models, and it was written for --data %s: drop --context",
                 h.data);
        why = whybuf;
    } else if (!why && t->seed_given && strcmp(h.data, "shakespeare") != 0) {
        snprintf(whybuf, sizeof whybuf,
                 "--seed is for text models (the sample printed after the evaluation), and it "
                 "was written for --data %s: drop --seed",
                 h.data);
        why = whybuf;
    } else if (!why && h.has_shape) { // given subset, context: the run's, or refused
        // (given widths: the model they build must be the run's, checked when the checkpoint
        // is read, as ngd train --resume does: 64,2,4,4 is chargpt's 64,2,4, and 64,2,2 of a
        // default-widths vit run has its parameters' shapes but another head count)
        const char *what = t->subset != SIZE_MAX && t->subset != h.subset ? "subset"
                           : t->context && t->context != h.context        ? "context"
                                                                          : NULL;
        if (what) {
            if (!strcmp(what, "subset"))
                snprintf(given, sizeof given, "%zu", t->subset),
                    snprintf(had, sizeof had, "%zu", h.subset);
            else
                snprintf(given, sizeof given, "%zu", t->context),
                    snprintf(had, sizeof had, "%zu", h.context);
            snprintf(whybuf, sizeof whybuf,
                     "it was written with --%s %s, not %s (eval takes it "
                     "from the checkpoint: drop --%s)",
                     what, had, given, what);
            why = whybuf;
        }
    }
    if (why) {
        cli_error(NULL, "--resume %s: %s", t->resume, why);
        return NGD_EXIT_FAIL;
    }
    t->model = h.model, t->data = h.data;
    t->cfg = ngd_config_default(t->method);
    if (h.precision >= 0) t->bf16 = h.precision == 1; // the run's GEMM precision
    if (h.has_shape) {
        if (!t->nwidths) { // (else the given ones: the run's model, or refused at the load)
            t->nwidths = h.nwidths;
            memcpy(t->widths, h.widths, sizeof h.widths);
        }
        t->subset = h.subset, t->context = h.context;
        if (!t->batch) t->batch = h.batch;
    } else { // version 1: what was given, else the defaults of ngd train
        if (t->subset == SIZE_MAX) t->subset = 0;
        if (!t->context) t->context = 64;
        if (!t->batch) t->batch = 128;
    }
    t->text = !strcmp(t->data, "shakespeare");
    return train_check_model_data(t) ? NGD_EXIT_FAIL : NGD_EXIT_OK;
}

int cmd_eval(int argc, char **argv) {
    // one process evaluates: under mpirun every rank would evaluate the whole set and print
    // it, so ranks other than 0 (Open MPI's OMPI_COMM_WORLD_RANK) leave it to rank 0
    const char *rank = getenv("OMPI_COMM_WORLD_RANK");
    if (rank && strcmp(rank, "0") != 0) return NGD_EXIT_OK;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            train_print_help(stdout, "eval");
            return NGD_EXIT_OK;
        }
    train_opts t;
    if (train_parse_opts(argc, argv, &t, "eval")) return NGD_EXIT_USAGE;
    if (!t.resume) {
        cli_error("e.g. ngd eval --resume run.ckpt", "eval needs --resume FILE");
        return NGD_EXIT_USAGE;
    }
    int rc = eval_setup(&t);
    return rc != NGD_EXIT_OK ? rc : train_run(&t, true);
}
