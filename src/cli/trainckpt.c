/*
 * trainckpt.c — the training checkpoint of `ngd train --checkpoint/--resume` and `ngd eval`
 * (docs/formats.md "Training checkpoint", version 5; 1 to 4 are still read): the run's
 * options that shape the model, the step, the data order and RNG, the model's parameters,
 * buffers and random streams, and the optimizer state (ngd_optim_save_mem's bytes),
 * little-endian, CRC-32 last, streamed into a file committed atomically.
 *
 * Written and read with libngd's writer and reader (src/core/fileio.h, and the optimizer
 * state with src/optim/checkpoint.h: the same code as the optimizer checkpoints), reached the
 * way the command reaches libngd's other hidden functions: it links libngd statically. The
 * format's own shape stays: lengths and strings' lengths are u64 here (u32 in libngd's files),
 * so strings are written as u64 + bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/fileio.h"
#include "../optim/checkpoint.h"
#include "dist.h"
#include "train.h"

#define TRN_MAGIC "NGDTRN\r\n"
#define TRN_VERSION                                                                                \
    5u // 2: the run's widths, subset, context and batch after the method;
       // 3: its --precision after the batch; 4: the log record's sums after the wall time;
       // 5: --augment and the cosine schedule in bits 3 and 4 of the precision field, the
       // planned --epochs after it

// a u64-length string (the format's; libngd's ngd_wbuf_str writes a u32 length)
static void put_str(ngd_wbuf *w, const char *s) {
    ngd_wbuf_u64(w, strlen(s));
    ngd_wbuf_bytes(w, s, strlen(s));
}

// A u64, 0 once a read ran past the end (as every read after it).
static uint64_t get_u64(ngd_rbuf *r) {
    const uint64_t v = ngd_rbuf_u64(r);
    return r->bad ? 0 : v;
}

// A string of fewer than cap bytes into s (a longer one: r->bad, s empty).
static void get_str(ngd_rbuf *r, char *s, size_t cap) {
    const uint64_t n = get_u64(r);
    const unsigned char *p = n < cap ? ngd_rbuf_bytes(r, (size_t)n) : NULL;
    s[0] = '\0';
    if (!p) {
        r->bad = true;
        return;
    }
    memcpy(s, p, (size_t)n);
    s[n] = '\0';
}

// The checkpoint is committed by renaming a temporary file onto --checkpoint PATH, which
// would replace whatever is there (a device node, a FIFO, a symbolic link) with a regular
// file: PATH must be absent or a regular file (an ngd checkpoint, or empty), in an existing
// folder we may write (where the temporary goes: tried). Checked before the data is loaded,
// not at the first checkpoint an epoch later, and again before every write. Returns -1
// after an error naming PATH.
int trainckpt_check_target(const char *path) {
    struct stat sb;
    if (!*path) {
        cli_error("give --checkpoint a file name", "--checkpoint: empty path");
        return -1;
    }
    if (lstat(path, &sb) == 0) {
        if (!S_ISREG(sb.st_mode)) {
            cli_error("give --checkpoint the path of a regular file, or of none yet",
                      "--checkpoint %s: is %s, not a regular file; refusing to replace it", path,
                      cli_file_kind(sb.st_mode));
            return -1;
        }
        // a file of another kind (the training data, a log, a source file) is never replaced
        char head[8];
        FILE *f = fopen(path, "rb");
        const size_t got = f ? fread(head, 1, sizeof head, f) : 0;
        if (f) fclose(f);
        if (got > 0 && (got < sizeof head || memcmp(head, TRN_MAGIC, sizeof head) != 0)) {
            cli_error("give --checkpoint a new file, or one an ngd run wrote",
                      "--checkpoint %s: the file exists and is not an ngd training checkpoint; "
                      "refusing to replace it",
                      path);
            return -1;
        }
        // (the rename would replace it regardless of its mode: as a read-only log is refused)
        if (access(path, W_OK) != 0) {
            cli_error("make it writable, or give --checkpoint another path",
                      "--checkpoint %s: %s; refusing to replace it", path, strerror(errno));
            return -1;
        }
    } else if (errno != ENOENT) {
        cli_error("give --checkpoint a path in a folder you can write", "--checkpoint %s: %s", path,
                  strerror(errno));
        return -1;
    }
    char *copy = strdup(path);
    if (!copy) {
        cli_error(NULL, "--checkpoint %s: out of memory", path);
        return -1;
    }
    const char *dir = dirname(copy);
    int rc = 0;
    errno = 0;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        cli_error("create the folder first, or give --checkpoint another path",
                  "--checkpoint %s: folder %s: %s", path, dir,
                  errno ? strerror(errno) : "not a folder");
        rc = -1;
    } else if (access(dir, W_OK | X_OK) != 0) {
        cli_error("give --checkpoint a path in a folder you can write",
                  "--checkpoint %s: folder %s is not writable: %s", path, dir, strerror(errno));
        rc = -1;
    } else if (cli_probe_output(path) != 0) {
        // (a folder the permissions allow may still refuse files: /proc said "folder /proc is
        //  not writable: No such file or directory")
        if (errno == ENAMETOOLONG) // (the temporary file's name, PATH.tmp.<pid>, is longer)
            cli_error("give --checkpoint a shorter file name",
                      "--checkpoint %s: the name with '.tmp.<pid>' (the temporary file written "
                      "first) is too long",
                      path);
        else
            cli_error("give --checkpoint a path in a folder you can write",
                      "--checkpoint %s: cannot create a file there: %s", path, strerror(errno));
        rc = -1;
    }
    free(copy);
    return rc;
}

// Two runs on one --checkpoint (with different logs, which are locked on their own) replaced
// each other's saves, and a --resume took whichever came last. So a run holds an exclusive
// flock on PATH.lock from before its data loads until it ends: the kernel releases it however
// the process ends, and a normal end removes the file (while still holding it: a run that
// opened it meanwhile finds its name gone or another file there, and opens again).
static int lock_fd = -1;
static char *lock_name;

static void lock_release(void) {
    if (lock_fd < 0) return;
    unlink(lock_name);
    close(lock_fd);
    lock_fd = -1;
    free(lock_name), lock_name = NULL;
}

int trainckpt_lock(const char *path) {
    static bool registered;
    if (lock_fd >= 0) return 0;
    const size_t n = strlen(path) + sizeof ".lock";
    char *name = malloc(n);
    if (!name) {
        cli_error(NULL, "--checkpoint %s: out of memory", path);
        return -1;
    }
    snprintf(name, n, "%s.lock", path);
    for (;;) {
        // (not through a symbolic link: the lock is this folder's file)
        const int fd = open(name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0) {
            cli_error("give --checkpoint a path in a folder you can write",
                      "--checkpoint %s: cannot open its lock file %s: %s", path, name,
                      strerror(errno));
            free(name);
            return -1;
        }
        // (ENOLCK on some NFS mounts: unguarded, as the log, the file kept until the end)
        const bool locked = flock(fd, LOCK_EX | LOCK_NB) == 0;
        if (!locked && errno == EWOULDBLOCK) {
            close(fd);
            free(name);
            cli_error("give this run another --checkpoint, or wait for the other",
                      "--checkpoint %s: another ngd run is writing this checkpoint", path);
            return -1;
        }
        struct stat a, b;
        if (!locked || (fstat(fd, &a) == 0 && stat(name, &b) == 0 && a.st_dev == b.st_dev &&
                        a.st_ino == b.st_ino)) {
            lock_fd = fd, lock_name = name;
            if (!registered) registered = atexit(lock_release) == 0;
            return 0;
        }
        close(fd); // (removed by the run that held it, after we opened it: again)
    }
}

// Model state that is not a parameter (BatchNorm running statistics) comes from
// nn_model_buffers and is saved beside the parameters. The file is streamed to disk through
// the writer's 1 MiB buffer, the optimizer state straight from the optimizer (its length,
// which comes first, from a counting pass): saving takes no memory in proportion to it.
int trainckpt_save(const char *path, const train_opts *t, nn_model *m, ngd_optim *o,
                   const nn_loader *ld, const text_iter *ti, const run_state *rs) {
    if (!dist_root()) return 0; // mpirun: rank 0 writes (every rank holds the same state)
    if (trainckpt_check_target(path)) return -1;
    const uint64_t olen = ngd_optim_write_size(o);
    if (olen == UINT64_MAX) {
        cli_error(NULL, "checkpoint %s: out of memory", path);
        return -1;
    }
    char msg[512];
    ngd_wbuf w;
    if (ngd_wbuf_open(&w, path, 0, msg, sizeof msg) != 0) {
        cli_error(cli_write_hint(msg, "check the folder exists and is writable"),
                  "--checkpoint %s: %s", path, msg);
        return -1;
    }
    ngd_wbuf_bytes(&w, TRN_MAGIC, 8);
    ngd_wbuf_u64(&w, TRN_VERSION);
    put_str(&w, t->model);
    put_str(&w, t->data);
    put_str(&w, ngd_method_name(t->method));
    // the widths as given (0: the model's defaults), so that eval builds the model again
    ngd_wbuf_u64(&w, t->nwidths);
    for (size_t i = 0; i < t->nwidths; i++)
        ngd_wbuf_u64(&w, t->widths[i]);
    ngd_wbuf_u64(&w, t->subset), ngd_wbuf_u64(&w, t->context), ngd_wbuf_u64(&w, t->batch);
    // --precision (version 3): bit 0 bf16; bit 1 --kfac-arith bf16; bit 2 the completed
    // epoch's evaluation is pending (each 0 when unused, so a file is what it was before the
    // bit existed); (version 5) bit 3 --augment, bit 4 --schedule cosine, then --epochs
    ngd_wbuf_u64(&w, (t->bf16 ? 1u : 0u) | (t->cfg.kfac.factor_arith == NGD_BF16 ? 2u : 0u) |
                         (rs->eval_pending ? 4u : 0u) | (t->augment ? 8u : 0u) |
                         (t->cosine ? 16u : 0u));
    ngd_wbuf_u64(&w, t->epochs);
    ngd_wbuf_u64(&w, rs->step), ngd_wbuf_u64(&w, rs->epoch), ngd_wbuf_u64(&w, rs->skips);
    uint64_t wall;
    memcpy(&wall, &rs->wall, 8);
    ngd_wbuf_u64(&w, wall);
    uint64_t sums[2]; // (version 4) the next log record's sums
    memcpy(&sums[0], &rs->rec_loss, 8), memcpy(&sums[1], &rs->rec_acc, 8);
    ngd_wbuf_u64(&w, sums[0]), ngd_wbuf_u64(&w, sums[1]), ngd_wbuf_u64(&w, rs->rec_n);
    if (ti) { // text: steps into the epoch, epoch, training characters, rng (no order)
        ngd_wbuf_u64(&w, ti->pos), ngd_wbuf_u64(&w, ti->epoch), ngd_wbuf_u64(&w, ti->text->n_train);
        for (int i = 0; i < 4; i++)
            ngd_wbuf_u64(&w, ti->rng.s[i]);
    } else {
        ngd_wbuf_u64(&w, ld->pos), ngd_wbuf_u64(&w, ld->epoch), ngd_wbuf_u64(&w, ld->ds->n);
        for (int i = 0; i < 4; i++)
            ngd_wbuf_u64(&w, ld->rng.s[i]);
        for (size_t i = 0; i < ld->ds->n; i++)
            ngd_wbuf_u64(&w, ld->order[i]);
    }
    ngd_wbuf_u64(&w, m->nparams);
    for (size_t i = 0; i < m->nparams; i++) {
        ngd_wbuf_u64(&w, m->params[i].n);
        ngd_wbuf_f32s(&w, m->params[i].p, m->params[i].n);
    }
    nn_param bufs[NN_MODEL_MAX_PARAMS];
    size_t nb = nn_model_buffers(m, bufs);
    ngd_wbuf_u64(&w, nb);
    for (size_t i = 0; i < nb; i++) {
        ngd_wbuf_u64(&w, bufs[i].n);
        ngd_wbuf_f32s(&w, bufs[i].p, bufs[i].n);
    }
    ngd_wbuf_u64(&w, m->nrngs);
    for (size_t i = 0; i < m->nrngs; i++)
        for (int j = 0; j < 4; j++)
            ngd_wbuf_u64(&w, m->rngs[i]->s[j]);
    ngd_wbuf_u64(&w, olen);
    const uint64_t at = ngd_wbuf_size(&w);
    ngd_optim_write(o, &w);
    // (the two passes disagree: a bug, never a file; a failed write drops the bytes after it,
    // and the commit says why)
    if (!w.werr && !w.oom && ngd_wbuf_size(&w) - at != olen) {
        ngd_wbuf_free(&w);
        cli_error(NULL, "checkpoint %s: the optimizer state changed size while it was written",
                  path);
        return -1;
    }
    ngd_wbuf_u32(&w, ngd_wbuf_crc(&w));
    if (w.oom) {
        ngd_wbuf_free(&w);
        cli_error(NULL, "checkpoint %s: out of memory", path);
        return -1;
    }
    if (ngd_wbuf_commit(&w, path, msg, sizeof msg) != 0) {
        cli_error(cli_write_hint(msg, "check the folder exists and is writable"),
                  "--checkpoint %s: %s", path, msg);
        return -1;
    }
    return 0;
}

// Checks the magic and the CRC of b[0..len) and reads the header into h; r is then the
// reader past it (without the CRC). Returns NULL, or why the file cannot be read.
static const char *read_head(const unsigned char *b, size_t len, ngd_rbuf *r, trainckpt_head *h) {
    memset(h, 0, sizeof *h);
    *r = (ngd_rbuf){b, len, 0, false};
    if (len >= 8 && memcmp(b, "NGDOPT\r\n", 8) == 0) // (what ngd_optim_save writes)
        return "a libngd optimizer checkpoint (ngd_optim_save), not a training checkpoint: "
               "--resume reads what ngd train --checkpoint writes";
    if (len < 12 || memcmp(b, TRN_MAGIC, 8) != 0) return "not an ngd training checkpoint";
    ngd_rbuf tail = {b, len, len - 4, false}; // the CRC of every byte before it
    if (ngd_crc32(b, len - 4) != ngd_rbuf_u32(&tail))
        return "checksum mismatch (corrupt or truncated)";
    r->len = len - 4;
    ngd_rbuf_bytes(r, 8);
    h->version = get_u64(r);
    if (h->version < 1 || h->version > TRN_VERSION) return "unsupported version";
    get_str(r, h->model, sizeof h->model);
    get_str(r, h->data, sizeof h->data);
    get_str(r, h->method, sizeof h->method);
    if (h->version >= 2) {
        h->has_shape = true;
        h->nwidths = (size_t)get_u64(r);
        if (h->nwidths > NN_MODEL_MAX_WIDTHS) return "bad header (widths)";
        for (size_t i = 0; i < h->nwidths; i++)
            h->widths[i] = (size_t)get_u64(r);
        h->subset = (size_t)get_u64(r), h->context = (size_t)get_u64(r);
        h->batch = (size_t)get_u64(r);
        if (!h->context || !h->batch) return "bad header (context, batch)";
        // every width stands for at least that many parameters, and a text model's context
        // for context x width of them (its position embedding), all of them f32 numbers in
        // this file: larger ones are no run's (a crafted header built a model of GBs before
        // its parameters were compared)
        const uint64_t held = len / 4;
        for (size_t i = 0; i < h->nwidths; i++)
            if (h->widths[i] > held) return "bad header (widths larger than its parameters)";
        const uint64_t c = h->nwidths && h->widths[0] ? h->widths[0] : 1;
        if (!strcmp(h->data, "shakespeare") && h->context > held / c)
            return "bad header (context larger than its parameters)";
    }
    h->precision = h->kfac_arith = h->augment = h->cosine = -1;
    h->epochs = 0;
    h->eval_pending = false;
    if (h->version >= 3) {
        const uint64_t p = get_u64(r);
        if (p > (h->version >= 5 ? 31u : 7u)) return "bad header (precision)";
        h->precision = (int)(p & 1u);
        h->kfac_arith = (int)(p >> 1 & 1u);
        h->eval_pending = (p & 4u) != 0;
        if (h->version >= 5) {
            h->augment = (int)(p >> 3 & 1u);
            h->cosine = (int)(p >> 4 & 1u);
            h->epochs = (size_t)get_u64(r);
            if (h->epochs == 0) return "bad header (epochs)";
        }
    }
    return r->bad ? "truncated header" : NULL;
}

void trainckpt_format_widths(const size_t *w, size_t n, char *out, size_t cap) {
    snprintf(out, cap, "%s", n ? "" : "(the model's defaults)");
    for (size_t i = 0; i < n; i++)
        snprintf(out + strlen(out), cap - strlen(out), "%s%zu", i ? "," : "", w[i]);
}

// o NULL: the model only (ngd eval): the optimizer's name and state are not checked or read.
int trainckpt_load(const char *path, const train_opts *t, nn_model *m, ngd_optim *o, nn_loader *ld,
                   text_iter *ti, run_state *rs) {
    size_t len;
    unsigned char *b = (unsigned char *)cli_read_file(path, &len, "--resume ");
    if (!b) return -1;
    char whybuf[384];
    ngd_rbuf r;
    trainckpt_head h;
    const char *why = read_head(b, len, &r, &h);
    const bool damaged = why != NULL; // (then no option of the run would help)
    if (!why && strcmp(h.model, t->model) != 0) {
        snprintf(whybuf, sizeof whybuf, "it was written for --model %s, not %s", h.model, t->model);
        why = whybuf;
    } else if (!why && strcmp(h.data, t->data) != 0) {
        snprintf(whybuf, sizeof whybuf, "it was written for --data %s, not %s", h.data, t->data);
        why = whybuf;
    } else if (!why && h.has_shape) {
        // widths that give the same parameter shapes may still be another model (a
        // transformer's head count): the widths the run's model was built with (its given
        // ones, the defaults filled in: a model of them, one sample wide, tells) must be these
        char had[96], given[96], built[96], errm[256];
        trainckpt_format_widths(h.widths, h.nwidths, had, sizeof had);
        trainckpt_format_widths(t->widths, t->nwidths, given, sizeof given);
        if (strcmp(had, given) != 0) {
            nn_model_cfg c = m->cfg;
            c.nwidths = h.nwidths, c.max_batch = 1;
            memcpy(c.widths, h.widths, sizeof c.widths);
            nn_model hm;
            const nn_status ms = nn_model_create(&hm, &c, errm, sizeof errm);
            const bool same = ms == NN_OK && hm.nwidths == m->nwidths &&
                              !memcmp(hm.widths, m->widths, m->nwidths * sizeof m->widths[0]);
            if (ms == NN_OK) trainckpt_format_widths(hm.widths, hm.nwidths, built, sizeof built);
            nn_model_free(&hm);
            if (ms == NN_ERR_NOMEM) {
                why = "out of memory";
            } else if (!same && !o) { // ngd eval
                snprintf(whybuf, sizeof whybuf,
                         "it was written with --widths %s, not %s (eval takes them from the "
                         "checkpoint: drop --widths)",
                         had, given);
                why = whybuf;
            } else if (!same) {
                snprintf(whybuf, sizeof whybuf,
                         "it was written with --widths %s, not %s (resume it with --widths %s)",
                         had, given, ms == NN_OK ? built : had);
                why = whybuf;
            }
        }
    }
    if (!why && h.precision >= 0 && (h.precision == 1) != t->bf16) {
        snprintf(whybuf, sizeof whybuf,
                 "it was written with --precision %s, not %s (resume it with --precision %s)",
                 h.precision ? "bf16" : "f32", t->bf16 ? "bf16" : "f32",
                 h.precision ? "bf16" : "f32");
        why = whybuf;
    } else if (!why && o) {
        ngd_method wm;
        const char *want = ngd_method_name(t->method);
        // version 1 files of ingd and ikfac runs name them "singd", as libngd's config does
        const bool old_singd =
            h.version == 1 && !strcmp(h.method, "singd") && t->cfg.method == NGD_METHOD_SINGD;
        if (strcmp(h.method, want) != 0 && !old_singd) {
            snprintf(whybuf, sizeof whybuf, "it was written by %s, not %s (--optim)",
                     ngd_method_parse(h.method, &wm) == NGD_OK ? h.method : "another optimizer",
                     want);
            why = whybuf;
        }
    }
    // the same optimizer: its factor arithmetic too (an emulation run continued in f32 would
    // mix the two settings without a word)
    const bool karith = t->cfg.kfac.factor_arith == NGD_BF16;
    if (!why && o && h.kfac_arith >= 0 && (h.kfac_arith == 1) != karith) {
        snprintf(whybuf, sizeof whybuf,
                 "it was written with --kfac-arith %s, not %s (resume it with --kfac-arith %s)",
                 h.kfac_arith ? "bf16" : "f32", karith ? "bf16" : "f32",
                 h.kfac_arith ? "bf16" : "f32");
        why = whybuf;
    }
    // --augment draws from the data stream and changes what is trained on: a resume that
    // adds or drops it would continue another run
    if (!why && o && h.augment >= 0 && (h.augment == 1) != t->augment) {
        snprintf(whybuf, sizeof whybuf, "it was written %s --augment (resume it %s --augment)",
                 h.augment ? "with" : "without", h.augment ? "with" : "without");
        why = whybuf;
    }
    // the batch and a text model's context shape the run: another would continue another
    // trajectory (mpirun: t->batch is already the global batch, ranks x --batch)
    if (!why && o && h.has_shape && h.batch != t->batch) {
        const size_t n = (size_t)dist_size();
        if (n > 1 && h.batch % n == 0)
            snprintf(whybuf, sizeof whybuf,
                     "it was written with a global batch of %zu, not %zu (resume it with --batch "
                     "%zu on %zu ranks)",
                     h.batch, t->batch, h.batch / n, n);
        else if (n > 1)
            snprintf(whybuf, sizeof whybuf,
                     "it was written with a global batch of %zu, not %zu (ranks x --batch)",
                     h.batch, t->batch);
        else
            snprintf(whybuf, sizeof whybuf,
                     "it was written with --batch %zu, not %zu (resume it with --batch %zu)",
                     h.batch, t->batch, h.batch);
        why = whybuf;
    } else if (!why && o && t->text && h.has_shape && h.context != t->context) {
        snprintf(whybuf, sizeof whybuf,
                 "it was written with --context %zu, not %zu (resume it with --context %zu)",
                 h.context, t->context, h.context);
        why = whybuf;
    }
    if (!why) {
        rs->eval_pending = h.eval_pending;
        rs->ck_cosine = h.cosine, rs->ck_epochs = h.epochs;
        rs->step = (size_t)get_u64(&r), rs->epoch = (size_t)get_u64(&r),
        rs->skips = (size_t)get_u64(&r);
        uint64_t wall = get_u64(&r);
        memcpy(&rs->wall, &wall, 8);
        // (counts that a run cannot reach: a crafted or damaged file whose CRC holds, which
        // would wrap the step's count; a wall time that is not a time)
        if (rs->step > (size_t)1 << 52 || rs->epoch > rs->step || rs->skips > rs->step ||
            !isfinite(rs->wall) || rs->wall < 0)
            why = "bad header (step, epoch, skipped steps or wall time)";
        rs->rec_loss = rs->rec_acc = 0, rs->rec_n = 0; // (before version 4: the record restarts)
        if (h.version >= 4) {
            const uint64_t sl = get_u64(&r), sa = get_u64(&r);
            memcpy(&rs->rec_loss, &sl, 8), memcpy(&rs->rec_acc, &sa, 8);
            rs->rec_n = (size_t)get_u64(&r);
            if (!isfinite(rs->rec_acc) || rs->rec_acc < 0 || rs->rec_acc > (double)rs->rec_n ||
                (rs->rec_n == 0 && (rs->rec_loss != 0 || rs->rec_acc != 0)))
                why = "bad log record sums";
        }
        size_t pos = (size_t)get_u64(&r), ep = (size_t)get_u64(&r), nds = (size_t)get_u64(&r);
        const size_t here = ti ? ti->text->n_train : ld->ds->n;
        if (nds != here) {
            snprintf(whybuf, sizeof whybuf,
                     "it was written for a training set of %zu %s, this one has %zu (another "
                     "--subset, or other data files?)",
                     nds, ti ? "characters" : "items", here);
            why = whybuf;
        } else if (ti) { // (eval has its own batch: the position is not used there)
            if (o && pos > ti->per_epoch)
                why = "its epoch has another length (--batch, --context?)";
            ti->pos = pos, ti->epoch = ep;
            for (int i = 0; i < 4; i++)
                ti->rng.s[i] = get_u64(&r);
        } else {
            ld->pos = pos, ld->epoch = ep;
            for (int i = 0; i < 4; i++)
                ld->rng.s[i] = get_u64(&r);
            for (size_t i = 0; i < nds; i++) { // indices into the set: never trusted blindly
                ld->order[i] = (size_t)get_u64(&r);
                if (ld->order[i] >= nds) why = "bad sample order";
            }
            if (pos > nds) why = "bad position in the epoch";
        }
    }
    if (!why && get_u64(&r) != m->nparams) why = "the model has other parameters (--widths?)";
    for (size_t i = 0; !why && i < m->nparams; i++) {
        const size_t n = (size_t)get_u64(&r);
        if (n != m->params[i].n) {
            if (t->text) // (the embedding and the head are as wide as the text's alphabet)
                snprintf(whybuf, sizeof whybuf,
                         "its parameter %zu (%s) has %zu numbers, here %zu (other --widths, or "
                         "a text with another set of characters: this one has %zu)",
                         i, m->params[i].name, n, m->params[i].n, m->cfg.classes);
            else
                snprintf(whybuf, sizeof whybuf,
                         "its parameter %zu (%s) has %zu numbers, here %zu (other --widths?)", i,
                         m->params[i].name, n, m->params[i].n);
            why = whybuf;
        } else
            ngd_rbuf_f32s(&r, m->params[i].p, m->params[i].n);
    }
    nn_param bufs[NN_MODEL_MAX_PARAMS];
    size_t nb = nn_model_buffers(m, bufs);
    if (!why && get_u64(&r) != nb) why = "the model has other buffers";
    for (size_t i = 0; !why && i < nb; i++) {
        if (get_u64(&r) != bufs[i].n)
            why = "a buffer has another shape";
        else
            ngd_rbuf_f32s(&r, bufs[i].p, bufs[i].n);
    }
    if (!why && get_u64(&r) != m->nrngs) why = "the model has other random streams";
    for (size_t i = 0; !why && i < m->nrngs; i++)
        for (int j = 0; j < 4; j++)
            m->rngs[i]->s[j] = get_u64(&r);
    if (!why) {
        ngd_status ost;
        size_t olen = (size_t)get_u64(&r);
        const unsigned char *ob = ngd_rbuf_bytes(&r, olen);
        if (!ob || r.bad)
            why = "truncated";
        else if (o && (ost = ngd_optim_load_mem(o, ob, olen)) != NGD_OK) {
            // what a person needs is which options differ (the header does not record the
            // ones that shape the state): the kinds are named, and libngd's first mismatch;
            // a damaged state (checksum, magic, version, truncation) or no memory is no
            // option's fault
            const char *lm = ngd_optim_errmsg(o), *colon = lm ? strstr(lm, ": ") : NULL;
            const char *d = colon ? colon + 2 : "?";
            if (ost == NGD_ERR_NOMEM) {
                cli_error("lower --batch, or free memory", "--resume %s: out of memory", path);
                free(b);
                return -1;
            }
            if (ost != NGD_ERR_FORMAT || strstr(d, "checksum") || strstr(d, "magic") ||
                strstr(d, "truncated") || strstr(d, "format version")) {
                cli_error("the file is damaged: resume from another checkpoint",
                          "--resume %s: its optimizer state cannot be read: %s", path, d);
                free(b);
                return -1;
            }
            cli_error("resume with the optimizer options of the run that wrote it: --optim, "
                      "--structure, --factor-dtype, --param-optim, --factored or --no-factored, "
                      "and those that shape its state (--rank, --brand-rank, --oversample, "
                      "--kfac-like, --momentum...)",
                      "--resume %s: its optimizer state does not fit %s with these options (it "
                      "was written by another optimizer or with other optimizer options; the "
                      "first difference: %s)",
                      path, ngd_method_name(t->method), d);
            free(b);
            return -1;
        }
    }
    if (!why && r.bad) why = "truncated";
    if (!why && r.pos != r.len) why = "unexpected bytes after its optimizer state";
    free(b);
    if (why) {
        cli_error(
            damaged ? "the file is damaged or is no checkpoint: give another one"
            : !o && h.version == 1
                ? "this checkpoint (version 1) does not record the run's --widths, "
                  "--subset and --context: give ngd eval those of the run"
            : !o ? NULL
                 : "resume with the same --model, --widths, --data, --subset, --batch, --optim, "
                   "--precision and --augment",
            "--resume %s: %s", path, why);
        return -1;
    }
    return 0;
}

int trainckpt_precheck(const char *path, const train_opts *t) {
    struct stat sb; // (not a regular file: a FIFO would block the open; the load says why)
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0; // (trainckpt_load says why)
    unsigned char b[1024];
    const size_t len = fread(b, 1, sizeof b, f);
    fclose(f);
    if (len < 12 || memcmp(b, TRN_MAGIC, 8) != 0) return 0;
    ngd_rbuf r = {b, len, 8, false};
    const uint64_t version = get_u64(&r);
    char model[32], data[32];
    get_str(&r, model, sizeof model);
    get_str(&r, data, sizeof data);
    if (r.bad || version < 1 || version > TRN_VERSION) return 0;
    const bool om = strcmp(model, t->model) != 0;
    if (!om && !strcmp(data, t->data)) return 0;
    cli_error("resume with the same --model, --widths, --data, --subset, --batch, --optim, "
              "--precision and --augment",
              "--resume %s: it was written for --%s %s, not %s", path, om ? "model" : "data",
              om ? model : data, om ? t->model : t->data);
    return -1;
}

const char *trainckpt_read_head(const unsigned char *b, size_t len, trainckpt_head *h) {
    ngd_rbuf r;
    return read_head(b, len, &r, h);
}
