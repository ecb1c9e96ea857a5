/*
 * train.c — `ngd train`: trains a model of the engine on an image-classification data set
 * (or a character-level model on text) with any libngd method; the loop that `ngd eval`
 * runs too, evaluation only.
 *
 * A step: the next batch, forward, loss, backward, (mpirun: the gradients averaged over the
 * ranks), the statistics libngd wants (observe), ngd_optim_step. A non-finite loss skips the
 * step; --max-skips consecutive ones stop the run with the last checkpoint intact. Limits
 * (--max-steps, --time-budget, a signal) are checked before a batch is drawn, so that the
 * checkpoint written then resumes bit-identically. The rest of the command, by concern, is
 * in the files train.h lists: options, rules between them, data, checkpoints, evaluation,
 * the log.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../core/fileio.h"
#include "dist.h"
#include "train.h"

// ---- stopping on SIGINT / SIGTERM ----
// The first signal sets train_stop_signal: the training loop stops where --max-steps stops (before
// a batch is drawn, so the checkpoint written then resumes bit-identically), an evaluation
// stops at its next batch; the run then exits 128 + the signal. A SIGINT after the first signal
// exits at once (a second Ctrl-C); a repeated SIGTERM is the same request, however late:
// process managers send duplicates (a second SIGTERM that exited at once cut an orderly stop
// short). Open MPI 4.1's mpirun sends the ranks SIGCONT, then SIGTERM and SIGKILL each
// odls_base_sigkill_timeout seconds (1 by default) later: docs/distributed.md.
//
// No handler runs on the computing threads: oneDNN's JIT GEMM kernels point rsp into a heap
// workspace (oneDNN issue #4845, fixed after 3.11), so a signal frame pushed there corrupts
// the heap (seen here as "corrupted size vs. prev_size" aborts). The signals are blocked in
// the main thread before any other thread exists (every later thread inherits the mask) and
// taken by one thread of our own with sigwait.
atomic_int train_stop_signal;

static void *stop_signal_waiter(void *arg) {
    const sigset_t *set = arg;
    for (;;) {
        int sig;
        if (sigwait(set, &sig) != 0) continue;
        const int prev = atomic_load(&train_stop_signal);
        if (prev && sig == SIGTERM) continue; // the same request again
        if (prev) {
            static const char msg[] =
                "\nngd: second signal: exiting at once (a checkpoint being written is left as "
                "its .tmp.<pid> file, which the next write of that checkpoint removes)\n";
            ssize_t w = write(2, msg, sizeof msg - 1);
            (void)w;
            _exit(128 + sig);
        }
        atomic_store(&train_stop_signal, sig);
    }
    return NULL;
}

// A signal the shell ignored for us (a background job without job control: SIGINT) stays
// ignored. Without the waiting thread, the signals keep their default action.
static void catch_stop_signals(void) {
    static sigset_t set;
    sigemptyset(&set);
    const int sigs[2] = {SIGINT, SIGTERM};
    for (int i = 0; i < 2; i++) {
        struct sigaction old;
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaddset(&set, sigs[i]);
    }
    pthread_t th;
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return;
    if (pthread_create(&th, NULL, stop_signal_waiter, &set) != 0) {
        pthread_sigmask(SIG_UNBLOCK, &set, NULL);
        return;
    }
    pthread_detach(th);
}

static const char *stop_signal_name(void) {
    const int sig = atomic_load(&train_stop_signal);
    return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal";
}

// An optimizer state of over 1 GiB (dense factors of wide layers: vgg16bn's 4609-wide
// convolutions take 85 MB per factor matrix and O(d³) work per preconditioner update) is
// said up front with its largest layer, so that a slow first step is not a mystery.
static void heavy_state_note(const ngd_optim *o, ngd_method method) {
    const size_t total = ngd_optim_state_bytes(o);
    if (!o || total < ((size_t)1 << 30) || method == NGD_METHOD_SGD || method == NGD_METHOD_ADAMW)
        return;
    const bool singd =
        method == NGD_METHOD_SINGD || method == NGD_METHOD_INGD || method == NGD_METHOD_IKFAC;
    size_t big = 0;
    const char *name = "?";
    for (size_t i = 0; i < ngd_optim_count(o); i++) {
        ngd_layer_health h;
        if (ngd_optim_layer_health(o, (int)i, &h) == NGD_OK && h.state_bytes > big)
            big = h.state_bytes, name = h.name;
    }
    fprintf(stderr,
            "ngd train: note: the optimizer state takes %.1f GiB (largest: %s, %.0f MiB); dense "
            "factors of wide layers cost O(d^3) per preconditioner update%s\n",
            (double)total / (double)(1u << 30), name, (double)big / (double)(1u << 20),
            singd ? ": structured factors (--structure diagonal, hierarchical15_15, "
                    "block30diagonal) are far lighter"
                  : "");
}

// ---- mpirun (dist.c): the engine's side of a data-parallel step ----

// mpirun: whether every rank has this v (the largest and the smallest agree; true alone)
static bool ranks_agree(int v) { return dist_max_int(v) == -dist_max_int(-v); }

// mpirun: what every rank's data set must agree on (each may read its own --data-dir): the
// sizes, and a CRC of what is held in memory (the labels, the pixels unless streamed; the
// text). Ranks whose training sets differed in size ran epochs of other lengths and met in
// collectives of other sizes (a stack smash, a segfault); test sets of the same size and other
// images gave an accuracy that was neither's, without a word.
static uint32_t data_fingerprint(const train_opts *t, const train_sets *d) {
    if (t->text) {
        const uint64_t sz[2] = {d->text.n, d->text.n_train};
        return ngd_crc32(d->text.ids, d->text.n) ^ ngd_crc32(sz, sizeof sz);
    }
    uint32_t crc = 0;
    const nn_dataset *sets[2] = {&d->train, &d->test};
    for (int k = 0; k < 2; k++) {
        const nn_dataset *ds = sets[k];
        const uint64_t sz[5] = {ds->n, ds->c, ds->h, ds->w, ds->num_classes};
        crc = crc * 31u + ngd_crc32(sz, sizeof sz);
        crc = crc * 31u + ngd_crc32(ds->labels, ds->n * sizeof *ds->labels);
        if (ds->pixels) crc = crc * 31u + ngd_crc32(ds->pixels, ds->n * ds->c * ds->h * ds->w);
    }
    return crc;
}

// Options as for one process; then --batch, the per-rank batch, becomes the global batch
// (ranks x --batch) that the loader draws and checkpoints record (a checkpoint of N ranks x B
// is one of 1 x N·B), and only rank 0 talks.
static int dist_parse(int argc, char **argv, train_opts *t) {
    const bool was = cli_errors_quiet(dist_on() && !dist_root()); // (rank 0 says it)
    const int bad = train_parse_opts(argc, argv, t, "train");
    cli_errors_quiet(was);
    if (!dist_on()) return bad ? NGD_EXIT_USAGE : NGD_EXIT_OK;
    // every rank agrees before any ends: a rank that ended at once on its (quiet) copy of
    // the error aborted the job while rank 0 was still printing it
    if (dist_max_int(bad != 0)) {
        if (!bad && dist_root()) cli_error(NULL, "another rank refused the options");
        return NGD_EXIT_USAGE;
    }
    // ... and every rank has the same options: ranks given others (mpirun's "-np 1 A : -np 1
    // B") built other models or optimizers and exchanged buffers of other sizes (a heap
    // corruption, an abort) or trained apart without a word (another --lr, --seed, --batch)
    const int h = (int)(t->opts_hash & 0x7fffffffu);
    if (!ranks_agree(h)) {
        if (dist_root())
            cli_error("give every rank the same options (each may have its own --data-dir, "
                      "--threads, --quiet, --log, --checkpoint and --resume path)",
                      "the ranks were given different options (or NGD_DIST_SHARE)");
        return NGD_EXIT_USAGE;
    }
    const size_t n = (size_t)dist_size();
    if (t->batch > SIZE_MAX / n) {
        cli_error(NULL, "--batch %zu x %zu ranks overflows", t->batch, n);
        return NGD_EXIT_USAGE;
    }
    if (!t->quiet && dist_root())
        fprintf(stderr, "ngd train: %zu ranks (mpirun) x batch %zu = global batch %zu\n", n,
                t->batch, t->batch * n);
    t->batch *= n;
    if (!dist_root()) t->quiet = true;
    return NGD_EXIT_OK;
}

// After each rank's backward pass on its shard: the gradients averaged over the ranks (the
// loss is a mean, so the global batch's gradient is the mean of the shards'), BatchNorm's
// running statistics averaged too (so that every rank holds the same model), and the loss,
// correct count and rows summed, so that the log reads the global batch's.
static int dist_combine(nn_model *m, float *loss, size_t *correct, size_t *nr) {
    const float inv = 1.0f / (float)dist_size();
    nn_param bufs[NN_MODEL_MAX_PARAMS];
    const size_t nb = nn_model_buffers(m, bufs);
    for (size_t i = 0; i < m->nparams + nb; i++) {
        const nn_param *p = i < m->nparams ? &m->params[i] : &bufs[i - m->nparams];
        float *v = i < m->nparams ? p->g : p->p;
        if (dist_sum_f32(v, p->n)) return -1;
        for (size_t j = 0; j < p->n; j++)
            v[j] *= inv;
    }
    double s[3] = {(double)*loss * (double)*nr, (double)*correct, (double)*nr};
    if (dist_sum_f64(s, 3)) return -1;
    *loss = (float)(s[0] / s[2]), *correct = (size_t)s[1], *nr = (size_t)s[2];
    return 0;
}

// The learning rate's scale at a step: 1 for the constant schedule, cosine decay from 1 to 0
// over the planned steps (in doubles: a size_t product wraps for a huge --epochs, e.g. 2^60
// meaning "until --max-steps", and a wrapped 0 made every lr 0)
static double lr_scale_at(bool cosine, size_t epochs, size_t per_epoch, size_t step) {
    if (!cosine) return 1.0;
    const double total = (double)epochs * (double)per_epoch;
    return 0.5 * (1.0 + cos(3.141592653589793 * fmin((double)step / total, 1.0)));
}

// "constant", or "cosine over N epochs"
static void schedule_desc(char *out, size_t cap, bool cosine, size_t epochs) {
    if (cosine)
        snprintf(out, cap, "cosine over %zu epoch%s", epochs, epochs == 1 ? "" : "s");
    else
        snprintf(out, cap, "constant");
}

// A resume whose schedule (--schedule, or a cosine's --epochs) differs from the checkpoint's
// run moves the learning rate at once (more epochs of a cosine raise it again: a warm
// restart): said, with the scales before and after (version 5 checkpoints record both)
static void schedule_note(const train_opts *t, const run_state *rs, size_t per_epoch) {
    if (rs->ck_cosine < 0 || !rs->ck_epochs) return;
    const bool was_cos = rs->ck_cosine == 1;
    if (was_cos == t->cosine && (!t->cosine || rs->ck_epochs == t->epochs)) return;
    const double before = lr_scale_at(was_cos, rs->ck_epochs, per_epoch, rs->step),
                 after = lr_scale_at(t->cosine, t->epochs, per_epoch, rs->step);
    char was[64], now[64];
    schedule_desc(was, sizeof was, was_cos, rs->ck_epochs);
    schedule_desc(now, sizeof now, t->cosine, t->epochs);
    fprintf(stderr,
            "ngd train: note: the checkpoint's schedule was %s, this run's is %s: at step %zu "
            "the learning rate goes from %.3g to %.3g of --lr%s\n",
            was, now, rs->step, before, after,
            after > before * 1.5 && after > 0.01 ? " (a warm restart)" : "");
}

// Every parameter finite? A step whose loss was finite can still write non-finite weights (an
// update that overflows: --lr 1e20); every later loss is then non-finite and skipping steps
// cannot help. Checked where it costs nothing per step: after a skipped step, before a
// checkpoint is written and at the end, never on a step that went well.
static bool params_finite(const nn_model *m) {
    for (size_t i = 0; i < m->nparams; i++)
        for (size_t j = 0; j < m->params[i].n; j++)
            if (!isfinite(m->params[i].p[j])) return false;
    return true;
}

// A divergence's hint: what to change (the options the method uses), and the checkpoint
// still intact on disk, if any
static const char *divergence_hint(char *buf, size_t cap, ngd_method m, const char *saved) {
    const bool cov = train_method_uses(m, O_LRCOV), damp = train_method_uses(m, O_DAMPING);
    // (the checkpoint was written at a finite step, but its model may be on its way out: say so)
    snprintf(buf, cap, "lower --lr (or %s--weight-decay)%s%s%s%s", cov ? "--lr-cov, " : "",
             damp ? " or raise --damping" : "", saved ? "; the last checkpoint (" : "",
             saved ? saved : "",
             saved ? ") is intact, but if a resume from it diverges too, train from the start"
                   : "");
    return buf;
}

// The run diverged (what: the parameters, or the outputs an evaluation saw): said once. No
// checkpoint of the diverged state is written.
// The run stopped because it diverged (its summary says so: "diverged": true)
static bool run_diverged;

static void diverged_error(const train_opts *t, const char *saved, size_t step, const char *what) {
    char hint[256];
    run_diverged = true;
    if (!dist_root()) return; // (mpirun: every rank sees the same divergence; rank 0 says so)
    cli_error(divergence_hint(hint, sizeof hint, t->method, saved),
              "the run diverged: %s after step %zu; stopping%s", what, step,
              t->ckpt ? " without writing --checkpoint" : "");
}
#define NONFINITE_PARAMS "the parameters are no longer finite (an update overflowed)"

// An evaluation's loss is finite for any finite logits (log-softmax): a non-finite one means
// that the model's outputs are, and the run has diverged (true: diverged_error said so).
static bool eval_diverged(const train_opts *t, const char *saved, size_t step, double loss) {
    if (isfinite(loss)) return false;
    char what[96];
    snprintf(what, sizeof what, "the model's outputs are not finite (evaluation loss %s)",
             isnan(loss) ? "nan"
             : loss > 0  ? "inf"
                         : "-inf");
    diverged_error(t, saved, step, what);
    return true;
}

// A checkpoint write of this run failed (its error printed): the log's summary says so, since
// --checkpoint then holds an earlier state, or another run's
static bool save_failed;

// The checkpoint, written where the parameters are finite; *saved then names it, and
// *saved_step is the step it holds.
static int save_checked(const train_opts *t, nn_model *m, ngd_optim *o, const nn_loader *ld,
                        const text_iter *ti, const run_state *rs, const char **saved,
                        size_t *saved_step) {
    if (!params_finite(m)) {
        diverged_error(t, *saved, rs->step, NONFINITE_PARAMS);
        return -1;
    }
    trainlog_keep_begin();
    const int sv = trainckpt_save(t->ckpt, t, m, o, ld, ti, rs);
    trainlog_keep_end(sv == 0);
    if (sv) {
        save_failed = true;
        return -1;
    }
    *saved = t->ckpt;
    *saved_step = rs->step;
    return 0;
}

// The evaluation at the end of epoch rs->epoch: logged and printed. Returns 0, > 0 when a
// signal cut it short (nothing logged), < 0 on a failure (its message printed).
static int epoch_eval(nn_model *m, const train_opts *t, const train_sets *d, float *x, int32_t *ids,
                      int32_t *y, FILE *logf, const char *logpath, const run_state *rs,
                      double t_start, const char *saved, double *loss, double *acc) {
    double l, a; // (a signal cutting it short keeps the last evaluation's figures)
    const int er = train_evaluate(m, t, d, x, ids, y, &l, &a);
    if (er) return er;
    if (eval_diverged(t, saved, rs->step, l)) {
        *loss = l, *acc = (double)NAN; // (not a result: the summary says "not evaluated")
        return -1;
    }
    *loss = l, *acc = a;
    if (trainlog_eval(logf, logpath, rs->step, (double)rs->epoch, *loss, *acc,
                      train_now_s() - t_start))
        return -1;
    if (!t->quiet)
        fprintf(stderr, "epoch %zu: %s loss %.4f, %s accuracy %.2f%%\n", rs->epoch,
                t->text ? "validation" : "test", *loss, t->text ? "validation" : "test",
                100 * *acc);
    return 0;
}

// The run's fractional epoch: whole epochs done and the share of the current one drawn.
static double run_epoch(const train_opts *t, const nn_loader *ld, const text_iter *ti,
                        const run_state *rs, size_t per_epoch) {
    return (double)rs->epoch + (double)train_steps_into_epoch(t, ld, ti) / (double)per_epoch;
}

int train_run(const train_opts *t, bool eval_only) {
    save_failed = false;
    if (t->threads) {
        char v[16];
        snprintf(v, sizeof v, "%d", t->threads);
        setenv("OMP_NUM_THREADS", v, 1);
#ifdef _OPENMP
        // the OpenMP runtime read the variable when it was loaded: tell it directly (oneDNN
        // and OpenBLAS's OpenMP flavour follow omp_set_num_threads)
        omp_set_num_threads(t->threads);
#endif
    }
    if (!eval_only) {
        int oc = train_check_outputs(t);
        if (oc != NGD_EXIT_OK) return oc;
        if (t->resume && trainckpt_precheck(t->resume, t)) return NGD_EXIT_FAIL;
    }
    catch_stop_signals();
    train_sets d;
    int dl = train_load_data(t, &d);
    if (dl) return dl == -2 ? NGD_EXIT_USAGE : NGD_EXIT_FAIL;
    // ngd eval: no batch larger than the test set (the model and the buffers are sized for it:
    // --batch 100000000 was the model's "out of memory"), nor, for text, than the validation
    // text's windows shared among its TEXT_EVAL_BATCHES batches (drawn from those windows:
    // --batch 100000 of a 2000-character text ran for minutes towards 12 GB, and a cap of all
    // the windows a batch still grew past 4 GB on Tiny Shakespeare's 111,523)
    const size_t nvt = t->text ? d.text.n - d.text.n_train : 0;
    const size_t wins = nvt > t->context + 1 ? nvt - t->context : 1;
    const size_t most = !t->text ? d.test.n : (wins + TEXT_EVAL_BATCHES - 1) / TEXT_EVAL_BATCHES;
    train_opts capped;
    if (eval_only && most > 0 && t->batch > most) {
        capped = *t;
        capped.batch = most;
        t = &capped;
    }
    int rc = NGD_EXIT_FAIL;
    nn_model m;
    memset(&m, 0, sizeof m);
    ngd_optim *o = NULL;
    nn_loader ld;
    memset(&ld, 0, sizeof ld);
    text_iter ti = {.text = &d.text};
    text_iter *tip = t->text ? &ti : NULL; // text data: windows instead of the loader
    FILE *logf = NULL;
    float *x = NULL;
    int32_t *y = NULL, *ids = NULL;
    float *dlogits = NULL;
    char err[512], logpath[1024] = "";
    nn_model_cfg mc = {.name = t->model,
                       .in_c = d.train.c,
                       .in_h = d.train.h,
                       .in_w = d.train.w,
                       .classes = d.train.num_classes,
                       // mpirun: a share; --micro-batches: a part of it
                       .max_batch = t->batch / (size_t)dist_size() / t->micro,
                       .seed = t->seed};
    if (t->text) // a token model: (B, T) ids in, (B·T, V) logits out
        mc.in_c = 1, mc.in_h = t->context, mc.in_w = 1, mc.classes = d.text.vocab;
    const size_t rows = t->text ? t->context : 1; // logits rows per sample
    memcpy(mc.widths, t->widths, sizeof mc.widths);
    mc.nwidths = t->nwidths;
    // first-order methods never observe: the model may drop its layers' output gradients
    mc.no_stats = t->cfg.method == NGD_METHOD_SGD || t->cfg.method == NGD_METHOD_ADAMW;
    mc.bf16 = t->bf16;
    double dot_ratio = 0.0; // (ngd eval of a bf16 checkpoint: no note about a training option)
    if (t->bf16 && !t->quiet && !eval_only && !nn_bf16_native())
        fprintf(stderr, "ngd train: note: this CPU has no AVX512-BF16: --precision bf16 runs "
                        "oneDNN's emulation or converts to float32 (slower than --precision "
                        "f32, same numbers)\n");
    else if (t->bf16 && !t->quiet && !eval_only && ngd_bf16_dot_slow(&dot_ratio))
        fprintf(stderr,
                "ngd train: note: this CPU's bf16 dot products run at %.2fx the FLOP rate of "
                "its f32 FMAs (AVX512-BF16 without AMX): --precision bf16 computes its "
                "products in float32 from the bf16 values here; it halves the memory of the "
                "activations and factors it keeps, not the time, and the float32 copies its "
                "products take can raise the peak (expect it slower than --precision f32)\n",
                dot_ratio);
    if (dist_on() && !eval_only && !ranks_agree((int)(data_fingerprint(t, &d) & 0x7fffffffu))) {
        if (dist_root())
            cli_error("give every rank the same data set (each may read its own copy through "
                      "--data-dir)",
                      "the ranks read different data (other sizes, labels or %s)",
                      t->text ? "text" : "images");
        rc = NGD_EXIT_USAGE;
        goto done;
    }
    // a training set smaller than one batch, said before the model is sized for that batch
    // (a huge --batch was reported as the model's "out of memory"); an unknown model is
    // nn_model_create's to say
    if (nn_model_find(t->model) && !eval_only &&
        (t->text ? d.text.n_train / t->batch / t->context : d.train.n / t->batch) == 0) {
        if (t->text)
            cli_error("use a smaller --batch or --context, or a larger --subset",
                      "the training "
                      "text (%zu characters) is smaller than one batch (%zu x %zu)",
                      d.text.n_train, t->batch, t->context);
        else
            cli_error("use a smaller --batch or a larger --subset",
                      "the training set (%zu image%s) is smaller than one batch (%zu)", d.train.n,
                      d.train.n == 1 ? "" : "s", t->batch);
        goto done;
    }
    nn_status ns = nn_model_create(&m, &mc, err, sizeof err);
    if (ns != NN_OK) { // (out of memory: the parameters or one batch's activations)
        // (with --widths given the parameters may be what did not fit: --batch 1 --widths
        //  1000000000 was told to use a smaller --batch)
        const char *oom =
            t->nwidths
                ? (t->text ? "the model's parameters or a batch's activations did not fit: use "
                             "smaller --widths, or a smaller --batch or --context"
                           : "the model's parameters or a batch's activations did not fit: use "
                             "smaller --widths or a smaller --batch")
                : (t->text ? "a batch's activations did not fit: use a smaller --batch or "
                             "--context (attention holds context² values a head)"
                           : "a batch's activations did not fit: use a smaller --batch");
        cli_error(ns == NN_ERR_ARG     ? "run 'ngd train --help' for the models"
                  : ns == NN_ERR_NOMEM ? oom
                                       : NULL,
                  "%s", err);
        rc = ns == NN_ERR_ARG ? NGD_EXIT_USAGE : NGD_EXIT_FAIL;
        goto done;
    }
    ngd_status st = eval_only ? NGD_OK : ngd_optim_create(&t->cfg, &o); // eval: no optimizer
    m.param_override = t->has_param_cfg ? &t->param_cfg : NULL;
    if (st == NGD_OK && o) st = m.ops->attach(&m, o);
    // (each part's statistics scaled as the whole batch's: the step is the whole batch's)
    if (st == NGD_OK && o) st = ngd_optim_set_micro_batches(o, t->micro);
    ngd_share share;
    if (st == NGD_OK && o && dist_on()) { // mpirun: one replica per rank (dist.c)
        if (dist_share(&share)) {
            rc = NGD_EXIT_USAGE;
            goto done;
        }
        // Replicated K-FAC-family maintenance runs a layer's decomposition on every thread:
        // ranks with other thread counts (each may have its own --threads) would round it
        // apart, and the replicas drift apart without a word. (Every rank has the same method
        // and NGD_DIST_SHARE here: the options' hash agreed.)
        const bool kfac = t->method >= NGD_METHOD_KFAC && t->method <= NGD_METHOD_BRCKFAC;
        if (kfac && share == NGD_SHARE_REPLICATE && !ranks_agree(cli_threads())) {
            if (dist_root())
                cli_error("give every rank the same --threads, or leave NGD_DIST_SHARE at auto "
                          "(or owner)",
                          "NGD_DIST_SHARE=replicate: the ranks run different numbers of threads "
                          "(%d on rank 0): the K-FAC family's replicated decompositions round "
                          "differently at another thread count and the replicas would drift "
                          "apart",
                          cli_threads());
            rc = NGD_EXIT_USAGE;
            goto done;
        }
        st = ngd_optim_set_comm(o, dist_comm(), share);
    }
    if (st != NGD_OK) {
        cli_error(NULL, "optimizer: %s: %s", ngd_status_str(st), ngd_optim_errmsg(o));
        goto done;
    }
    if (t->text) {
        const size_t ntr = d.text.n_train, nval = d.text.n - d.text.n_train;
        if (ntr < t->context + 1 || nval < t->context + 1) {
            cli_error("use a smaller --context or a larger --subset",
                      "the text's training (%zu) "
                      "and validation (%zu) characters must each exceed the context (%zu)",
                      ntr, nval, t->context);
            goto done;
        }
        ti.per_epoch = ntr / (t->batch * t->context);
        nn_rng_seed(&ti.rng, t->seed + 1);
        ids = malloc(t->batch * t->context * sizeof(int32_t));
    } else {
        nn_augment aug = {t->augment ? 4 : 0, t->augment};
        if (nn_loader_init(&ld, &d.train, t->batch, true, true, t->augment ? &aug : NULL,
                           t->seed + 1) != NN_OK) {
            cli_error(NULL, "out of memory");
            goto done;
        }
        x = malloc(t->batch * d.train.c * d.train.h * d.train.w * sizeof(float));
    }
    y = malloc(t->batch * rows * sizeof(int32_t));
    dlogits = malloc(t->batch * rows * m.cfg.classes * sizeof(float));
    if (!(x || ids) || !y || !dlogits) {
        cli_error(NULL, "out of memory");
        goto done;
    }
    run_state rs = {.ck_cosine = -1};
    if (t->resume && trainckpt_load(t->resume, t, &m, o, &ld, tip, &rs)) goto done;
    if (dist_on()) { // the replicas start equal (not: another --resume file on one rank)
        const int c = (int)(train_params_crc(&m) & 0x7fffffffu);
        if (!ranks_agree(c) || !ranks_agree((int)(rs.step & 0x7fffffffu))) {
            if (dist_root())
                cli_error("give every rank the same checkpoint",
                          "the ranks' models differ where the run starts (another --resume file "
                          "on a rank?)");
            goto done;
        }
    }
    const char *saved = t->resume; // the last checkpoint on disk, if any (for messages)
    const size_t step0 = rs.step;
    size_t saved_step = SIZE_MAX; // the step --checkpoint holds (SIZE_MAX: not written yet)
    if (eval_only) {
        double tl, ta;
        const int er = train_evaluate(&m, t, &d, x, ids, y, &tl, &ta);
        if (er > 0) {
            fprintf(stderr, "ngd: evaluation stopped by %s\n", stop_signal_name());
            rc = 128 + train_stop_signal;
        }
        if (er) goto done;
        // the CRC of the parameters lets two runs be compared bit for bit (resume == no stop)
        const uint32_t crc = train_params_crc(&m);
        if (t->text)
            printf("eval: %s on %s validation (%d x %zu windows of %zu): loss %.6f accuracy "
                   "%.2f%%, parameters crc %08x\n",
                   t->model, t->data, TEXT_EVAL_BATCHES, t->batch, t->context, tl, 100 * ta,
                   (unsigned)crc);
        else
            printf("eval: %s on %s test (%zu image%s): loss %.6f accuracy %.2f%%, parameters crc "
                   "%08x\n",
                   t->model, t->data, d.test.n, d.test.n == 1 ? "" : "s", tl, 100 * ta,
                   (unsigned)crc);
        if (!isfinite(tl)) { // (a loss is finite for any finite outputs)
            cli_error("the run that wrote it diverged: resume from an earlier checkpoint, or "
                      "train again with a lower --lr",
                      "%s: the model's outputs are not finite (loss %s)", t->resume,
                      isnan(tl) ? "nan" : "inf");
            rc = NGD_EXIT_FAIL;
            goto done;
        }
        if (t->text) train_print_sample(&m, &d.text, t->context, t->seed, TEXT_SAMPLE_LEN);
        rc = NGD_EXIT_OK;
        goto done;
    }
    if (!(logf = trainlog_open(t, rs.step, logpath, sizeof logpath))) goto done;
    const bool tty = !t->quiet && isatty(2);
    bool line_open = false; // a progress line printed on the terminal, not yet ended
    const size_t per_epoch = t->text ? ti.per_epoch : d.train.n / t->batch;
    char optdesc[128]; // the method, and the plain parameters' rule when one was chosen
    if (t->has_param_cfg)
        snprintf(optdesc, sizeof optdesc, "%s (plain parameters: %s, lr %g, weight decay %g)",
                 ngd_method_name(t->method), ngd_method_name(t->param_cfg.method),
                 (double)t->param_cfg.lr, (double)t->param_cfg.weight_decay);
    else
        snprintf(optdesc, sizeof optdesc, "%s", ngd_method_name(t->method));
    if (!t->quiet && t->text)
        fprintf(stderr,
                "ngd train: %s (%zu parameters) on %s (%zu train / %zu validation "
                "characters, vocabulary %zu), %s, batch %zu x %zu, %zu epoch%s of %zu step%s; log "
                "%s\n",
                t->model, nn_model_param_count(&m), t->data, d.text.n_train,
                d.text.n - d.text.n_train, d.text.vocab, optdesc, t->batch, t->context, t->epochs,
                t->epochs == 1 ? "" : "s", per_epoch, per_epoch == 1 ? "" : "s", logpath);
    else if (!t->quiet)
        fprintf(stderr,
                "ngd train: %s (%zu parameters) on %s (%zu train / %zu test), %s, "
                "batch %zu, %zu epoch%s; log %s\n",
                t->model, nn_model_param_count(&m), t->data, d.train.n, d.test.n, optdesc, t->batch,
                t->epochs, t->epochs == 1 ? "" : "s", logpath);
    if (!t->quiet && dist_root()) heavy_state_note(o, t->method);
    if (!t->quiet && dist_root() && t->resume && rs.epoch < t->epochs &&
        !(t->max_steps && rs.step >= t->max_steps) &&
        !(t->time_budget > 0 && rs.wall >= (double)t->time_budget)) { // (training follows)
        schedule_note(t, &rs, per_epoch);
        if (!t->ckpt) // (a resume that saves nothing is rarely what was meant)
            fprintf(stderr,
                    "ngd train: note: --resume without --checkpoint: the steps of this run are "
                    "not saved (give --checkpoint %s to go on in that file)\n",
                    t->resume);
    }
    const char *split = t->text ? "validation" : "test";
    size_t consecutive_skips = 0, seen = 0;
    double t_start = train_now_s() - rs.wall, t_mark = train_now_s();
    double last_test_acc = (double)NAN, last_test_loss = (double)NAN;
    size_t evaluated_at = SIZE_MAX; // the step of this run's last evaluation (logged)
    bool stop = false;
    rc = NGD_EXIT_OK;
    const bool was_pending = rs.eval_pending;
    const bool complete0 = // a resumed run with nothing left to train
        t->resume && rs.epoch >= t->epochs && !rs.eval_pending;
    if (rs.eval_pending) { // the evaluation a signal cut short before the checkpoint was written
        const int er = epoch_eval(&m, t, &d, x, ids, y, logf, logpath, &rs, t_start, saved,
                                  &last_test_loss, &last_test_acc);
        if (er < 0) rc = NGD_EXIT_FAIL;
        if (er == 0) rs.eval_pending = false, evaluated_at = rs.step; // (cut again: pending)
    }
    while (rc == NGD_EXIT_OK && rs.epoch < t->epochs && !stop && !rs.eval_pending) {
        size_t k = 0;
        for (;;) {
            // the limit is checked before a batch is drawn, so a checkpoint written here
            // resumes exactly where an uninterrupted run would continue
            // (a limit reached with the epoch's last batch drawn lets the epoch end as one,
            // with its evaluation and checkpoint, before the run stops: --max-steps equal to
            // the planned steps completes the run, and a resume of a run stopped at an epoch's
            // end neither evaluates that epoch again nor logs its step twice)
            const bool epoch_drawn = train_steps_into_epoch(t, &ld, tip) >= per_epoch;
            bool halt = (t->max_steps && rs.step >= t->max_steps && !epoch_drawn) ||
                        train_stop_signal ||
                        (t->time_budget > 0 && !epoch_drawn &&
                         train_now_s() - t_start >= (double)t->time_budget);
            if (dist_on()) halt = dist_max_int(halt) != 0; // mpirun: the ranks stop together
            if (halt) {
                stop = true;
                break;
            }
            if ((k = train_next_batch(t, &ld, tip, x, ids, y)) == 0) break;
            if (!t->text && nn_dataset_failed(&d.train, err, sizeof err)) { // streamed CIFAR
                cli_error("the data files changed during the run; the last checkpoint is intact",
                          "%s", err);
                rc = NGD_EXIT_FAIL;
                stop = true;
                break;
            }
            const double lr_scale = lr_scale_at(t->cosine, t->epochs, per_epoch, rs.step);
            // set every step, 1 for the constant schedule: a checkpoint of a cosine run carries
            // its last scale, which a resume with --schedule constant must not keep
            ngd_optim_set_lr_scale(o, (float)lr_scale);
            nn_model_zero_grad(&m);
            size_t kl, first; // mpirun: this rank's shard of the global batch
            dist_shard(k, &kl, &first);
            // --micro-batches: the shard in equal parts, each part's mean loss divided by
            // their number (the gradients add up to the shard's mean), each part observed
            const size_t np = t->micro, kp = kl / np;
            size_t nr = kl * rows; // text: the mean over batch and sequence
            double loss_sum = 0.0;
            size_t correct = 0;
            for (size_t p = 0; p < np && rc == NGD_EXIT_OK; p++) {
                const size_t s0 = first + p * kp;
                if (t->text)
                    m.ops->forward_tokens(&m, ids + s0 * t->context, kp, t->context, true);
                else
                    m.ops->forward(&m, x + s0 * (size_t)(d.train.c * d.train.h * d.train.w), kp,
                                   true);
                loss_sum += (double)nn_xent_forward(m.logits, y + s0 * rows, kp * rows,
                                                    m.cfg.classes, 0.0f, 1.0f / (float)np, dlogits);
                correct += nn_xent_correct(m.logits, y + s0 * rows, kp * rows, m.cfg.classes);
                m.ops->backward(&m, dlogits);
                // (each part's statistics while its activations are there; the combine below
                // touches only the gradients and buffers)
                if (ngd_optim_wants_stats(o) && (st = m.ops->observe(&m, o)) != NGD_OK) {
                    cli_error(NULL, "observe: %s", ngd_optim_errmsg(o));
                    rc = NGD_EXIT_FAIL;
                }
            }
            if (rc != NGD_EXIT_OK) {
                stop = true;
                break;
            }
            float loss = np == 1 ? (float)loss_sum : (float)(loss_sum / (double)np);
            if (dist_on() && dist_combine(&m, &loss, &correct, &nr)) {
                rc = NGD_EXIT_FAIL;
                stop = true;
                break;
            }
            st = ngd_optim_step(o);
            rs.step++;
            if (st == NGD_SKIPPED || !isfinite(loss)) {
                rs.skips++;
                if (!params_finite(&m)) { // (not a passing overflow: the run is lost)
                    diverged_error(t, saved, rs.step - 1, NONFINITE_PARAMS);
                    rc = NGD_EXIT_FAIL;
                    stop = true;
                    break;
                }
                if (++consecutive_skips >= t->max_skips) {
                    char hint[256];
                    run_diverged = true;
                    if (dist_root())
                        cli_error(divergence_hint(hint, sizeof hint, t->method, saved),
                                  "%zu consecutive non-finite steps at step %zu: stopping",
                                  consecutive_skips, rs.step);
                    rc = NGD_EXIT_FAIL;
                    stop = true;
                    break;
                }
                continue;
            } else if (st != NGD_OK) {
                cli_error(NULL, "step: %s", ngd_optim_errmsg(o));
                rc = NGD_EXIT_FAIL;
                stop = true;
                break;
            }
            consecutive_skips = 0;
            seen += k;
            rs.rec_loss += (double)loss * (double)nr, rs.rec_acc += (double)correct;
            rs.rec_n += nr;
            if (rs.step % t->log_every == 0) {
                double now = train_now_s(), sps = (double)seen / (now - t_mark);
                size_t it = train_steps_into_epoch(t, &ld, tip);
                // (the steps left: to the last epoch's end, or to --max-steps; and no later
                // than --time-budget allows)
                double left = (double)(t->epochs - rs.epoch) * (double)per_epoch - (double)it;
                if (t->max_steps >= rs.step && (double)(t->max_steps - rs.step) < left)
                    left = (double)(t->max_steps - rs.step);
                double eta = sps > 0 ? left * (double)t->batch / sps : 0;
                if (t->time_budget > 0)
                    eta = fmin(eta, fmax(0.0, (double)t->time_budget - (now - t_start)));
                cJSON *j = cJSON_CreateObject();
                cJSON_AddStringToObject(j, "type", "step");
                cJSON_AddNumberToObject(j, "step", (double)rs.step);
                cJSON_AddNumberToObject(j, "epoch",
                                        (double)rs.epoch + (double)it / (double)per_epoch);
                cJSON_AddNumberToObject(j, "loss", rs.rec_loss / (double)rs.rec_n);
                cJSON_AddNumberToObject(j, "accuracy", rs.rec_acc / (double)rs.rec_n);
                cJSON_AddNumberToObject(j, "lr", (double)t->cfg.lr * lr_scale);
                cJSON_AddNumberToObject(j, "samples_per_s", sps);
                if (t->text) cJSON_AddNumberToObject(j, "tokens_per_s", sps * (double)t->context);
                cJSON_AddNumberToObject(j, "wall_s", now - t_start);
                cJSON_AddItemToObject(j, "health", trainlog_health(o));
                if (trainlog_line(logf, logpath, j)) {
                    rc = NGD_EXIT_FAIL;
                    stop = true;
                    break;
                }
                if (!t->quiet && (tty || rs.step % (t->log_every * 10) == 0)) {
                    trainlog_progress(tty, rs.epoch, t->epochs, it, per_epoch,
                                      rs.rec_loss / (double)rs.rec_n, rs.rec_acc / (double)rs.rec_n,
                                      sps, eta);
                    line_open = tty;
                }
                rs.rec_loss = rs.rec_acc = 0, rs.rec_n = 0, seen = 0, t_mark = now;
            }
            // (a save due on an epoch's last batch waits for the epoch's end, below: saved
            // before it, a resume would end the epoch and log its evaluation again)
            if (t->ckpt && t->ckpt_every && rs.step % t->ckpt_every == 0 &&
                train_steps_into_epoch(t, &ld, tip) < per_epoch) {
                rs.wall = train_now_s() - t_start;
                const double t_pause = train_now_s();
                if (save_checked(t, &m, o, &ld, tip, &rs, &saved, &saved_step)) {
                    rc = NGD_EXIT_FAIL;
                    stop = true;
                    break;
                }
                t_mark += train_now_s() - t_pause; // (samples/s: training's, not the save's)
            }
        }
        if (!stop && k == 0) { // the epoch is complete (the loader reshuffled for the next)
            // (the evaluation and the save below are left out of the next record's samples/s:
            //  it read a third of the training rate after each epoch)
            const double t_pause = train_now_s();
            rs.epoch++;
            if (tty) fputc('\n', stderr);
            line_open = false;
            if (!params_finite(&m)) { // (no evaluation of non-finite weights)
                diverged_error(t, saved, rs.step, NONFINITE_PARAMS);
                rc = NGD_EXIT_FAIL;
                break;
            }
            bool last = rs.epoch == t->epochs;
            if ((t->eval_every && rs.epoch % t->eval_every == 0) || last) {
                const int er = epoch_eval(&m, t, &d, x, ids, y, logf, logpath, &rs, t_start, saved,
                                          &last_test_loss, &last_test_acc);
                if (er) { // > 0: a signal (the checkpoint written below records it pending)
                    if (er < 0) rc = NGD_EXIT_FAIL;
                    rs.eval_pending = er > 0;
                    break;
                }
                evaluated_at = rs.step;
            }
            if (t->ckpt && (!t->ckpt_every || rs.step % t->ckpt_every == 0)) {
                rs.wall = train_now_s() - t_start;
                if (save_checked(t, &m, o, &ld, tip, &rs, &saved, &saved_step)) {
                    rc = NGD_EXIT_FAIL;
                    break;
                }
            }
            t_mark += train_now_s() - t_pause;
        }
    }
    // (a limit stopped the run within an epoch: its progress line ends before the result's;
    // a signal's message ends it below)
    if (line_open && !train_stop_signal) fputc('\n', stderr);
    if (rc == NGD_EXIT_OK && dist_on()) train_stop_signal = dist_max_int(train_stop_signal);
    if (rc == NGD_EXIT_OK && !params_finite(&m)) { // (the last step's update overflowed)
        diverged_error(t, saved, rs.step, NONFINITE_PARAMS);
        rc = NGD_EXIT_FAIL;
    }
    if (rc == NGD_EXIT_OK && stop && !train_stop_signal && rs.step == step0 && t->resume &&
        !t->quiet) { // a limit already reached where the run resumes
        if (t->max_steps && rs.step >= t->max_steps)
            fprintf(stderr,
                    "ngd train: no training to do: the resumed run is at step %zu, --max-steps "
                    "%zu (it counts the run's steps in all)\n",
                    rs.step, t->max_steps);
        else
            fprintf(stderr,
                    "ngd train: no training to do: the resumed run has spent its --time-budget "
                    "(%.*f s of training so far; it counts the run's time in all)\n",
                    rs.wall < 10 ? 1 : 0, rs.wall);
    }
    // a resume of a run that had ended here (its log's last record is that run's summary, of
    // these very parameters) evaluates and reports the model again, but logs nothing: each
    // such resume would otherwise append another eval and summary of the same model
    char crc0[16];
    snprintf(crc0, sizeof crc0, "%08x", (unsigned)train_params_crc(&m));
    const bool logged_end = rc == NGD_EXIT_OK && t->resume && rs.step == step0 && !was_pending &&
                            !train_stop_signal && trainlog_ends_with(rs.step, crc0);
    // a limit ended the run early: evaluate and report the model (not after a signal, or one
    // during its evaluation; not again when the epoch that just ended evaluated it)
    const bool limit_eval =
        stop && rs.epoch < t->epochs && !train_stop_signal && evaluated_at != rs.step;
    if (rc == NGD_EXIT_OK && limit_eval) {
        double l, a; // (a signal cutting it short keeps the last evaluation's figures)
        const int er = train_evaluate(&m, t, &d, x, ids, y, &l, &a);
        const bool diverged = er == 0 && eval_diverged(t, saved, rs.step, l);
        if (diverged)
            last_test_loss = l, last_test_acc = (double)NAN; // (not a result)
        else if (er == 0)
            last_test_loss = l, last_test_acc = a, evaluated_at = rs.step;
        if (er < 0 || diverged) rc = NGD_EXIT_FAIL;
    }
    if (rc == NGD_EXIT_OK && limit_eval && !train_stop_signal && !logged_end) {
        if (trainlog_eval(logf, logpath, rs.step, run_epoch(t, &ld, tip, &rs, per_epoch),
                          last_test_loss, last_test_acc, train_now_s() - t_start))
            rc = NGD_EXIT_FAIL;
    }
    // --max-steps, a signal, or the end of a run saved every N steps: leave a checkpoint of
    // the last step. Not for a new run stopped before its first step: that would replace the
    // file given to --checkpoint with an untrained model.
    if (rc == NGD_EXIT_OK && t->ckpt && saved_step != rs.step &&
        (rs.step > step0 || (t->resume && !complete0 && train_stop_signal) ||
         was_pending != rs.eval_pending)) { // (the resumed run did the pending evaluation)
        rs.wall = train_now_s() - t_start;
        if (save_checked(t, &m, o, &ld, tip, &rs, &saved, &saved_step)) rc = NGD_EXIT_FAIL;
    }
    if (rc == NGD_EXIT_OK && train_stop_signal) {
        if (tty) fputc('\n', stderr);
        // (mpirun: every rank stopped at this step; rank 0 says so)
        if (dist_root() && complete0)
            fprintf(stderr,
                    "ngd: stopped by %s at step %zu: the resumed run had already completed its "
                    "--epochs (nothing saved)\n",
                    stop_signal_name(), rs.step);
        else if (dist_root() && t->ckpt && saved_step != rs.step) // (a new run: no step done)
            fprintf(stderr,
                    "ngd: training stopped by %s before its first step: nothing saved (%s is "
                    "untouched)\n",
                    stop_signal_name(), t->ckpt);
        else if (dist_root())
            fprintf(stderr, "ngd: training stopped by %s at step %zu%s%s\n", stop_signal_name(),
                    rs.step, t->ckpt ? "; checkpoint written to " : " (no --checkpoint: not saved)",
                    t->ckpt ? t->ckpt : "");
        if (t->ckpt && saved_step == rs.step && dist_root() && !complete0)
            fprintf(stderr, "hint: continue it with the same options and --resume %s\n", t->ckpt);
        rc = 128 + train_stop_signal;
    }
    if (rc == NGD_EXIT_OK && isnan(last_test_acc)) { // no epoch to train: say so, and report
        if (!t->quiet)                               // the model as it is (never "nan%")
            fprintf(stderr, "ngd train: no training to do: %s\n",
                    t->epochs == 0 ? "--epochs 0"
                                   : "the resumed run has already completed its --epochs");
        double l, a;
        if (train_evaluate(&m, t, &d, x, ids, y, &l, &a) == 0)
            last_test_loss = l, last_test_acc = a, evaluated_at = rs.step;
        if (!logged_end &&
            trainlog_eval(logf, logpath, rs.step, run_epoch(t, &ld, tip, &rs, per_epoch),
                          last_test_loss, last_test_acc, train_now_s() - t_start))
            rc = NGD_EXIT_FAIL;
    }
    if (logged_end && rc == NGD_EXIT_OK && !t->quiet)
        fprintf(stderr,
                "ngd train: note: --log %s already ends with this run's summary at step %zu: "
                "nothing is appended\n",
                logpath, rs.step);
    if (rc == NGD_EXIT_OK && !t->quiet && t->ckpt && t->resume && saved_step == SIZE_MAX &&
        rs.step == step0 && strcmp(t->ckpt, t->resume) != 0) // (it was silent)
        fprintf(stderr,
                "ngd train: note: --checkpoint %s was not written: no step was trained (--resume "
                "%s holds this state)\n",
                t->ckpt, t->resume);
    double wall = train_now_s() - t_start;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", "summary");
    cJSON_AddStringToObject(j, "model", t->model);
    cJSON_AddStringToObject(j, "data", t->data);
    cJSON_AddStringToObject(j, "optim", ngd_method_name(t->method));
    cJSON_AddStringToObject(j, "precision", t->bf16 ? "bf16" : "f32");
    if (t->cfg.kfac.factor_arith == NGD_BF16) cJSON_AddStringToObject(j, "kfac_arith", "bf16");
    if (t->has_param_cfg) {
        cJSON_AddStringToObject(j, "param_optim", ngd_method_name(t->param_cfg.method));
        cJSON_AddNumberToObject(j, "param_lr", (double)t->param_cfg.lr);
    }
    cJSON_AddNumberToObject(j, "steps", (double)rs.step);
    cJSON_AddNumberToObject(j, "epochs", (double)rs.epoch);
    cJSON_AddNumberToObject(j, "skipped_steps", (double)rs.skips);
    cJSON_AddNumberToObject(j, "test_loss", last_test_loss);
    cJSON_AddNumberToObject(j, "test_accuracy", last_test_acc);
    if (!isnan(last_test_acc)) // the step the test figures are of (a stop may come later)
        cJSON_AddNumberToObject(j, "test_step", (double)evaluated_at);
    if (run_diverged) cJSON_AddBoolToObject(j, "diverged", 1);
    if (save_failed) cJSON_AddBoolToObject(j, "checkpoint_failed", 1);
    cJSON_AddNumberToObject(j, "wall_s", wall);
    cJSON_AddNumberToObject(j, "optimizer_state_bytes", (double)ngd_optim_state_bytes(o));
    trainlog_dist_summary(j, o, rs.step - step0, t->quiet);
    char crc[16]; // of the final parameters: what `ngd eval` of its checkpoint prints
    snprintf(crc, sizeof crc, "%08x", (unsigned)train_params_crc(&m));
    cJSON_AddStringToObject(j, "parameters_crc", crc);
    // a new run that ends (a signal, a failure) before its first step leaves the log as it was
    // (as it leaves the checkpoint): no record of a run that did nothing replaces a run's log;
    // nor does a resumed run that a signal stopped before any step or evaluation of its own
    // append a summary that says "not evaluated" after the run's real one
    const bool abandoned =
        (rc != NGD_EXIT_OK || train_stop_signal) && rs.step == 0 && trainlog_abandon(logf, logpath);
    if (abandoned || logged_end ||
        (train_stop_signal && rs.step == step0 && isnan(last_test_acc) && t->resume))
        cJSON_Delete(j);
    else if (trainlog_line(logf, logpath, j))
        rc = NGD_EXIT_FAIL;
    if (dist_root() &&
        (!t->quiet || rc == NGD_EXIT_OK)) { // stopped before any evaluation: no "nan%"
        char result[96];
        if (isnan(last_test_acc))
            snprintf(result, sizeof result, "not evaluated");
        else if (evaluated_at == rs.step)
            snprintf(result, sizeof result, "%s accuracy %.2f%% (loss %.4f)", split,
                     100 * last_test_acc, last_test_loss);
        else // (a signal stopped it after its last evaluation)
            snprintf(result, sizeof result, "%s accuracy %.2f%% at step %zu (loss %.4f)", split,
                     100 * last_test_acc, evaluated_at, last_test_loss);
        printf("%s %s on %s: %zu step%s in %.1f s, %s; log %s%s%s\n", ngd_method_name(t->method),
               t->model, t->data, rs.step, rs.step == 1 ? "" : "s", wall, result,
               abandoned ? "none written" : logpath,
               saved && saved == t->ckpt ? ", checkpoint " : "",
               saved && saved == t->ckpt ? t->ckpt : "");
    }
    if (t->text && rc == NGD_EXIT_OK && dist_root() &&
        !t->quiet) // let a person see what it learned
        train_print_sample(&m, &d.text, t->context, t->seed, TEXT_SAMPLE_LEN);
done:
    if (logf) { // a failed write was reported already; a failing close is reported here
        const bool failed_before = ferror(logf) != 0;
        if (fclose(logf) != 0 && !failed_before) {
            cli_error("free some space, or give --log another file", "--log %s: %s", logpath,
                      strerror(errno));
            rc = NGD_EXIT_FAIL;
        }
    }
    free(x), free(y), free(ids), free(dlogits);
    nn_loader_free(&ld);
    nn_text_free(&d.text);
    ngd_optim_free(o);
    nn_model_free(&m);
    nn_dataset_free(&d.train);
    nn_dataset_free(&d.test);
    return rc;
}

int cmd_train(int argc, char **argv) {
    train_opts t;
    if (dist_init()) return NGD_EXIT_FAIL; // mpirun: MPI (dist.c); otherwise nothing
    int rc = dist_parse(argc, argv, &t);   // (a usage error there is every rank's: all end)
    if (rc == NGD_EXIT_OK) {
        rc = train_run(&t, false);
        // a failed rank ends every rank (none waits for it in a collective); a signal's
        // stop and success are reached by every rank together
        if (rc == NGD_EXIT_FAIL || rc == NGD_EXIT_USAGE) dist_abort(rc);
    }
    dist_finalize();
    return rc;
}
