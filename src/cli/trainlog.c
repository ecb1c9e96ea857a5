/*
 * trainlog.c — what `ngd train` tells: the JSON-lines log (cJSON; docs/formats.md): one
 * "step" record every --log-every steps with the per-layer health, one "eval" record per
 * evaluation, one "summary" at the end, every write and close checked; the progress line on
 * stderr (redrawn when it is a terminal, plain periodic lines otherwise); and the outputs a
 * run will write, checked before any data is loaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dist.h"
#include "train.h"

double train_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// A new run's log is opened without truncating it and emptied at its first record, so that a
// run stopped (or failed) before writing any leaves an earlier log at that path as it was
// (trainlog_abandon); created: it did not exist before.
static bool log_unwritten, log_created;
// A resumed run's log whose last record is a summary: its "steps" and "parameters_crc" (a
// resume of a run that had ended appends no second summary of the same model, see
// trainlog_ends_with)
static long long last_sum_steps = -1;
static char last_sum_crc[16];
// A new run's log over an earlier run's records: those are copied to LOG.prev before the
// first record empties the log (a forgotten --resume loses nothing). Decided, and the target
// checked, before the data loads (train_check_outputs); a copy that fails then (a full disk)
// is said, and the log is replaced as it was before LOG.prev existed.
static bool log_keep;

// PATH.prev, allocated (NULL: out of memory)
static char *prev_of(const char *path) {
    const size_t n = strlen(path);
    char *p = malloc(n + 6);
    if (p) memcpy(p, path, n), memcpy(p + n, ".prev", 6);
    return p;
}

// Copies the file at path to PATH.prev (replacing an older one, through a temporary, so that
// a failed copy leaves the older one). 0, or -1 with errno set.
static int copy_to_prev(const char *path) {
    char *prev = prev_of(path), *tmp = prev ? malloc(strlen(prev) + 32) : NULL;
    if (!tmp) {
        free(prev);
        errno = ENOMEM;
        return -1;
    }
    snprintf(tmp, strlen(prev) + 32, "%s.tmp.%ld", prev, (long)getpid());
    FILE *in = fopen(path, "rb"), *out = in ? fopen(tmp, "wb") : NULL;
    char buf[65536];
    size_t n;
    bool ok = in && out;
    int e = ok ? 0 : errno;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) ok = false, e = errno;
    if (ok && ferror(in)) ok = false, e = EIO;
    if (in) fclose(in);
    if (out && fclose(out) != 0 && ok) ok = false, e = errno;
    if (ok && rename(tmp, prev) != 0) ok = false, e = errno;
    if (!ok && out) unlink(tmp);
    free(prev), free(tmp);
    errno = e;
    return ok ? 0 : -1;
}

static void keep_ckpt_with_log(void);

// Writes one record and flushes it. Returns -1 when the log cannot be written (a full disk,
// /dev/full), with an error naming it the first time.
int trainlog_line(FILE *f, const char *path, cJSON *o) {
    if (!f) {
        cJSON_Delete(o);
        return 0;
    }
    struct stat sb;
    if (log_unwritten) { // (a FIFO or a device is not truncated: "w" did not either)
        log_unwritten = false;
        const bool reg = fstat(fileno(f), &sb) == 0 && S_ISREG(sb.st_mode);
        if (reg && log_keep && sb.st_size > 0 && copy_to_prev(path) != 0)
            fprintf(stderr,
                    "ngd train: warning: --log %s: the earlier run's records could not be kept "
                    "as %s.prev (%s): this run replaces them\n",
                    path, path, strerror(errno));
        else if (reg && log_keep && sb.st_size > 0)
            keep_ckpt_with_log(); // (LOG.prev and PATH.prev are the same earlier run's)
        if (reg && ftruncate(fileno(f), 0) != 0) {
            cli_error("give --log another file", "--log %s: %s", path, strerror(errno));
            cJSON_Delete(o);
            return -1;
        }
    }
    const bool failed_before = ferror(f) != 0;
    char *s = cJSON_PrintUnformatted(o);
    errno = 0;
    const bool bad =
        failed_before || !s || fprintf(f, "%s\n", s) < 0 || fflush(f) != 0 || ferror(f);
    if (bad && !failed_before)
        cli_error("free some space, or give --log another file", "--log %s: %s", path,
                  !s      ? "out of memory"
                  : errno ? strerror(errno)
                          : "write error");
    cJSON_free(s);
    cJSON_Delete(o);
    return bad ? -1 : 0;
}

void trainlog_progress(bool tty, size_t epoch, size_t epochs, size_t it, size_t per_epoch,
                       double loss, double acc, double sps, double eta) {
    if (tty) {
        int w = 30, fill = per_epoch ? (int)((double)w * (double)it / (double)per_epoch) : w;
        char bar[64];
        for (int i = 0; i < w; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[w] = '\0';
        fprintf(stderr,
                "\repoch %zu/%zu [%s] %zu/%zu loss %.4f acc %.1f%% %.0f samples/s ETA %.0fs  ",
                epoch + 1, epochs, bar, it, per_epoch, loss, 100 * acc, sps, eta);
    } else {
        fprintf(stderr,
                "epoch %zu/%zu step %zu/%zu loss %.4f acc %.1f%% %.0f samples/s ETA %.0fs\n",
                epoch + 1, epochs, it, per_epoch, loss, 100 * acc, sps, eta);
    }
}

cJSON *trainlog_health(const ngd_optim *o) {
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < ngd_optim_count(o); i++) {
        ngd_layer_health h;
        if (ngd_optim_layer_health(o, (int)i, &h) != NGD_OK) continue;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", h.name);
        cJSON_AddNumberToObject(e, "grad_norm", (double)h.grad_norm);
        cJSON_AddNumberToObject(e, "update_norm", (double)h.update_norm);
        if (h.updates) {
            cJSON_AddNumberToObject(e, "updates", (double)h.updates);
            cJSON_AddNumberToObject(e, "trace_K", (double)h.trace_K);
            cJSON_AddNumberToObject(e, "trace_C", (double)h.trace_C);
            cJSON_AddNumberToObject(e, "norm_K", (double)h.norm_K);
            cJSON_AddNumberToObject(e, "norm_C", (double)h.norm_C);
        }
        if (h.rank_A || h.rank_G) { // low-rank K-FAC methods
            cJSON_AddNumberToObject(e, "rank_A", (double)h.rank_A);
            cJSON_AddNumberToObject(e, "rank_G", (double)h.rank_G);
        }
        if (h.decomp_failures)
            cJSON_AddNumberToObject(e, "decomp_failures", (double)h.decomp_failures);
        if (h.decomp_retries)
            cJSON_AddNumberToObject(e, "decomp_retries", (double)h.decomp_retries);
        if (h.skips) cJSON_AddNumberToObject(e, "skips", (double)h.skips);
        cJSON_AddItemToArray(arr, e);
    }
    return arr;
}

static int mkdir_runs(void) { return mkdir("runs", 0755); }

// The log's path into path; false if it does not fit (train_check_outputs refuses that)
static bool log_path(const train_opts *t, char *path, size_t cap) {
    const int n = t->log ? snprintf(path, cap, "%s", t->log)
                         : snprintf(path, cap, "runs/%s-%s-%s.jsonl", t->model, t->data,
                                    ngd_method_name(t->method));
    return n >= 0 && (size_t)n < cap;
}

// A resumed run appends to its log. A run killed mid-write (or a full disk) may have left a
// last line without its newline: it is cut back to the last complete line, or the first new
// record would be glued to it and lost with it (the reader skips a bad line).
static int trim_partial_line(FILE *f) {
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return 0;
    off_t end = st.st_size;
    char buf[4096];
    while (end > 0) {
        const off_t at = end > (off_t)sizeof buf ? end - (off_t)sizeof buf : 0;
        const size_t n = (size_t)(end - at);
        if (fseeko(f, at, SEEK_SET) != 0 || fread(buf, 1, n, f) != n) return -1;
        size_t i = n;
        while (i > 0 && buf[i - 1] != '\n')
            i--;
        if (i > 0) {
            end = at + (off_t)i;
            break;
        }
        end = at;
    }
    if (end == st.st_size) return 0;
    fflush(f);
    return ftruncate(fileno(f), end);
}

// A resumed run appends to its log from its checkpoint's step. A run stopped without saving
// its last steps (kill -9, a second Ctrl-C, a crash after --checkpoint-every's last save) left
// records of steps past the checkpoint, which would appear twice: they are cut, from the first
// "step" or "eval" record past the checkpoint's step after the log's last summary. Records up
// to a summary are a run that ended (another run on this log, or a branch from an older
// checkpoint): never cut. Records are read by their "step" number, the first key after "type"
// in every record ngd writes (summaries have "steps"). *cut: the records removed. who: the
// last summary's "optim model data" (empty without one).
static int cut_after_step(FILE *f, size_t step, size_t *cut, char *who, size_t who_cap) {
    static const char STEP[] = "{\"type\":\"step\",", EVAL[] = "{\"type\":\"eval\",",
                      SUMMARY[] = "{\"type\":\"summary\",";
    *cut = 0;
    if (fseeko(f, 0, SEEK_SET) != 0) return -1;
    char *line = NULL;
    size_t cap = 0, after = 0;
    off_t at = 0, from = -1;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (!strncmp(line, SUMMARY, sizeof SUMMARY - 1)) { // records up to here: runs that ended
            from = -1, after = 0;
            at += n;
            cJSON *o = cJSON_Parse(line);
            const cJSON *v[3] = {cJSON_GetObjectItemCaseSensitive(o, "optim"),
                                 cJSON_GetObjectItemCaseSensitive(o, "model"),
                                 cJSON_GetObjectItemCaseSensitive(o, "data")};
            if (cJSON_IsString(v[0]) && cJSON_IsString(v[1]) && cJSON_IsString(v[2]))
                snprintf(who, who_cap, "%s %s %s", v[0]->valuestring, v[1]->valuestring,
                         v[2]->valuestring);
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "steps"),
                        *crc = cJSON_GetObjectItemCaseSensitive(o, "parameters_crc");
            last_sum_steps = -1;
            if (cJSON_IsNumber(st) && st->valuedouble >= 0 && cJSON_IsString(crc)) {
                last_sum_steps = (long long)st->valuedouble;
                snprintf(last_sum_crc, sizeof last_sum_crc, "%s", crc->valuestring);
            }
            cJSON_Delete(o);
            continue;
        }
        if (line[0] == '{') last_sum_steps = -1; // (a record after it: not the last one)
        const char *k = strstr(line, "\"step\":");
        if (from < 0 && k &&
            (!strncmp(line, STEP, sizeof STEP - 1) || !strncmp(line, EVAL, sizeof EVAL - 1))) {
            char *end;
            const unsigned long long v = strtoull(k + 7, &end, 10);
            if (end != k + 7 && v > step) from = at;
        }
        if (from >= 0) after++;
        at += n;
    }
    int rc = ferror(f) ? -1 : 0;
    free(line);
    if (rc == 0 && from >= 0) {
        fflush(f);
        rc = ftruncate(fileno(f), from);
        if (rc == 0) *cut = after;
    }
    if (fseeko(f, 0, SEEK_END) != 0) rc = -1; // (from reading to appending)
    return rc;
}

FILE *trainlog_open(const train_opts *t, size_t resume_step, char *path, size_t cap) {
    log_path(t, path, cap);
    if (!dist_root()) return fopen("/dev/null", "w"); // mpirun: rank 0 logs
    if (!t->log && mkdir_runs() != 0 && errno != EEXIST) {
        cli_error("use --log FILE in a folder you can write",
                  "cannot create the folder runs/ for "
                  "the log: %s",
                  strerror(errno));
        return NULL;
    }
    struct stat sb;
    const bool existed = stat(path, &sb) == 0;
    // (a new run's: emptied at its first record). A FIFO waits for a process to read it, as
    // a shell's redirection does, but says so and stops at SIGINT or SIGTERM: its blocking
    // open held the run until a reader came, whatever the signals (kill -9 only). Stopped
    // while waiting, it opens the FIFO read-write (no wait): the run ends before its first
    // step and writes nothing there.
    FILE *f = NULL;
    if (existed && S_ISFIFO(sb.st_mode)) {
        bool said = false;
        int fd;
        while ((fd = open(path, O_WRONLY | O_APPEND | O_NONBLOCK)) < 0 && errno == ENXIO) {
            if (train_stop_signal) {
                fd = open(path, O_RDWR | O_APPEND | O_NONBLOCK);
                break;
            }
            if (!said && !t->quiet)
                fprintf(stderr,
                        "ngd train: --log %s is a FIFO: waiting for a process to read it "
                        "(Ctrl-C stops)\n",
                        path);
            said = true;
            nanosleep(&(struct timespec){0, 50 * 1000 * 1000}, NULL);
        }
        if (fd >= 0 &&
            (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0 || !(f = fdopen(fd, "a"))))
            close(fd);
    } else {
        f = fopen(path, t->resume ? "a+" : "a");
    }
    if (!f) {
        cli_error("use --log FILE with a writable path", "--log %s: %s", path, strerror(errno));
        return NULL;
    }
    // one run a log: two runs on one path (the default runs/<model>-<data>-<optim>.jsonl of
    // two runs started side by side) interleaved their records
    // (a file system without locks, ENOLCK on some NFS mounts: the run goes on unguarded)
    if (flock(fileno(f), LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
        cli_error("give this run another --log (and --checkpoint), or wait for the other",
                  "--log %s: another ngd run is writing this log", path);
        fclose(f);
        return NULL;
    }
    log_unwritten = !t->resume, log_created = !existed;
    log_keep = log_keep && !t->resume && existed && S_ISREG(sb.st_mode) && sb.st_size > 0;
    if (t->resume && trim_partial_line(f) != 0) {
        cli_error(NULL, "--log %s: cannot cut its unfinished last line: %s", path, strerror(errno));
        fclose(f);
        return NULL;
    }
    struct stat st;
    size_t cut = 0;
    char who[128] = "";
    if (t->resume && fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) &&
        cut_after_step(f, resume_step, &cut, who, sizeof who) != 0) {
        cli_error(NULL, "--log %s: cannot cut its records past the checkpoint's step %zu: %s", path,
                  resume_step, strerror(errno));
        fclose(f);
        return NULL;
    }
    // (a resume into another run's log: its records stay and this run's follow them, which
    // ngd plot would draw as one line)
    char mine[128];
    snprintf(mine, sizeof mine, "%s %s %s", ngd_method_name(t->method), t->model, t->data);
    if (who[0] && strcmp(who, mine) != 0 && !t->quiet)
        fprintf(stderr,
                "ngd train: note: --log %s ends with another run's records (%s); this run's "
                "(%s) follow them: give each run its own --log to plot them apart\n",
                path, who, mine);
    if (cut && !t->quiet)
        fprintf(stderr,
                "ngd train: --log %s: %zu record%s past the checkpoint's step %zu cut (the run "
                "that wrote them stopped before saving them)\n",
                path, cut, cut == 1 ? "" : "s", resume_step);
    return f;
}

bool trainlog_ends_with(size_t steps, const char *crc) {
    return last_sum_steps >= 0 && (unsigned long long)last_sum_steps == steps &&
           !strcmp(last_sum_crc, crc);
}

bool trainlog_abandon(FILE *f, const char *path) {
    if (!f || !log_unwritten) return false;
    if (log_created) unlink(path); // (created by this run, and still empty)
    return true;
}

// The checkpoint another run left at --checkpoint, kept as PATH.prev by this run's first save
// (NULL: none). The save links it to a temporary name first and renames that over PATH.prev
// only once the new checkpoint is written: a failed save leaves both files as they were.
static char *ckpt_keep, *ckpt_keep_tmp;

// A .prev target checked at the start: absent, a regular file or a symbolic link (replaced,
// not followed). true after an error naming it.
static bool prev_target_bad(const char *opt, const char *path, const char *prev) {
    struct stat sb;
    if (lstat(prev, &sb) != 0 || S_ISREG(sb.st_mode) || S_ISLNK(sb.st_mode)) return false;
    cli_error("remove it, or give another path",
              "%s %s holds an earlier run, to be kept as %s, which is %s", opt, path, prev,
              cli_file_kind(sb.st_mode));
    return true;
}

int trainlog_keep_begin(void) {
    if (!ckpt_keep) return 0;
    const size_t n = strlen(ckpt_keep) + 48;
    free(ckpt_keep_tmp);
    ckpt_keep_tmp = malloc(n);
    if (ckpt_keep_tmp) snprintf(ckpt_keep_tmp, n, "%s.prev.tmp.%ld", ckpt_keep, (long)getpid());
    if (!ckpt_keep_tmp || link(ckpt_keep, ckpt_keep_tmp) != 0) {
        // (a file system without hard links, say): the save replaces it, as before .prev
        fprintf(stderr,
                "ngd train: warning: --checkpoint %s: the earlier run's checkpoint could not be "
                "kept (%s): this run's save replaces it\n",
                ckpt_keep, ckpt_keep_tmp ? strerror(errno) : "out of memory");
        free(ckpt_keep), free(ckpt_keep_tmp);
        ckpt_keep = ckpt_keep_tmp = NULL;
    }
    return 0;
}

void trainlog_keep_end(bool saved) {
    if (!ckpt_keep || !ckpt_keep_tmp) return;
    char *prev = saved ? prev_of(ckpt_keep) : NULL;
    if (saved && (!prev || rename(ckpt_keep_tmp, prev) != 0))
        fprintf(stderr,
                "ngd train: warning: --checkpoint %s: the earlier run's checkpoint could not be "
                "kept as %s (%s)\n",
                ckpt_keep, prev ? prev : "PATH.prev", prev ? strerror(errno) : "out of memory");
    unlink(ckpt_keep_tmp); // (gone after the rename; the link of a failed save)
    free(prev);
    if (saved) { // kept once: later saves replace this run's own checkpoint
        free(ckpt_keep), free(ckpt_keep_tmp);
        ckpt_keep = ckpt_keep_tmp = NULL;
    }
}

// The earlier run's checkpoint kept as PATH.prev when its log is kept as LOG.prev, at this
// run's first record, not at its first save: a run that logged but never saved (one that
// diverged, --epochs 0) had made LOG.prev of the earlier run and left PATH.prev of the one
// before, and the note's "--resume PATH.prev --log LOG.prev" paired two runs
static void keep_ckpt_with_log(void) {
    if (!ckpt_keep) return;
    trainlog_keep_begin();
    trainlog_keep_end(true);
}

// The log's target: an existing log must be writable, a new one's folder (runs/ by default,
// made at the start: then the current folder) must exist and be writable. true after an
// error naming it.
static bool log_target_bad(const train_opts *t, const char *lp) {
    struct stat sb;
    if (stat(lp, &sb) == 0) {
        if (S_ISREG(sb.st_mode) && access(lp, W_OK) != 0) {
            cli_error("make it writable, or give --log another file", "--log %s: %s", lp,
                      strerror(errno));
            return true;
        }
        return false;
    }
    char *copy = strdup(lp);
    if (!copy) return false; // (the open will say)
    const char *dir = dirname(copy);
    if (!t->log && stat(dir, &sb) != 0) dir = "."; // (runs/ is made at the start)
    bool bad = false;
    errno = 0;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        cli_error("create the folder first, or give --log another path", "--log %s: folder %s: %s",
                  lp, dir, errno ? strerror(errno) : "not a folder");
        bad = true;
    } else if (access(dir, W_OK | X_OK) != 0) {
        cli_error(t->log ? "give --log a path in a folder you can write"
                         : "run from a folder you can write, or give --log FILE",
                  "--log %s: folder %s is not writable: %s", lp, dir, strerror(errno));
        bad = true;
    }
    free(copy);
    return bad;
}

// What a training run will write, checked before any data is loaded: the checkpoint's
// target, and a log that is not the checkpoint (written or resumed) nor a file of another
// kind. Returns an exit code.
int train_check_outputs(const train_opts *t) {
    char lp[1024];
    if (!log_path(t, lp, sizeof lp)) { // (it was cut, and another file written)
        cli_error("give --log a shorter path", "--log: the path is longer than %zu bytes",
                  sizeof lp - 1);
        return NGD_EXIT_USAGE;
    }
    if (t->log && !strcmp(t->log, "-")) { // (not a file named "-" in the current folder)
        cli_error("give the log a file's path (ngd plot and ngd train --resume read it back)",
                  "--log -: the log is written to a file, not to the standard output");
        return NGD_EXIT_USAGE;
    }
    const char *clash = t->ckpt && cli_same_file(lp, t->ckpt)       ? "--checkpoint"
                        : t->resume && cli_same_file(lp, t->resume) ? "--resume"
                                                                    : NULL;
    if (clash) {
        cli_error("give --log and the checkpoint different files", "--log %s is the %s file %s", lp,
                  clash, !strcmp(clash, "--checkpoint") ? t->ckpt : t->resume);
        return NGD_EXIT_USAGE;
    }
    // a log is written over (or, resuming, appended to): a regular file that holds something
    // else (the training data, a checkpoint, another program's JSON) is never touched. An ngd
    // log starts with one of its records, {"type":"step"|"eval"|"summary", … (also a killed
    // run's unfinished first line)
    struct stat sb;
    FILE *f = stat(lp, &sb) == 0 && S_ISREG(sb.st_mode) ? fopen(lp, "rb") : NULL;
    char head[32] = {0};
    const size_t got = f ? fread(head, 1, sizeof head - 1, f) : 0;
    if (f) fclose(f);
    bool ours = got == 0;
    static const char *const FIRST[] = {"{\"type\":\"step\"", "{\"type\":\"eval\"",
                                        "{\"type\":\"summary\""};
    for (size_t i = 0; i < 3 && !ours; i++)
        ours = !strncmp(head, FIRST[i], strlen(FIRST[i]));
    if (!ours) { // (exit 1, as --checkpoint's refusal of a foreign file)
        cli_error("give --log a new file, or an ngd log",
                  "--log %s: the file exists and is not an ngd training log; refusing to %s it", lp,
                  t->resume ? "append to" : "replace");
        return NGD_EXIT_FAIL;
    }
    // the log's folder (runs/, made at the start, in the current one), before the data loads
    if (dist_root() && log_target_bad(t, lp)) return NGD_EXIT_FAIL;
    if (t->ckpt && trainckpt_check_target(t->ckpt)) return NGD_EXIT_FAIL;
    // a run on the checkpoint of another (a forgotten --resume, or a resume into another run's
    // file): allowed (ngd wrote the file); its first save keeps it as PATH.prev. A new run's
    // log over an earlier run's records keeps those as LOG.prev. Both said here, and their
    // .prev names checked: not a folder, and not the other output.
    free(ckpt_keep), ckpt_keep = NULL;
    log_keep = false;
    if (!dist_root()) return NGD_EXIT_OK; // (rank 0 writes both)
    if (t->ckpt && trainckpt_lock(t->ckpt)) return NGD_EXIT_FAIL;
    const bool ck_other = t->ckpt && stat(t->ckpt, &sb) == 0 && S_ISREG(sb.st_mode) &&
                          sb.st_size > 0 && !(t->resume && cli_same_file(t->resume, t->ckpt));
    const bool lg_other = !t->resume && stat(lp, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size > 0;
    char *cprev = ck_other ? prev_of(t->ckpt) : NULL, *lprev = lg_other ? prev_of(lp) : NULL;
    int rc = NGD_EXIT_OK;
    if ((ck_other && !cprev) || (lg_other && !lprev)) {
        cli_error(NULL, "out of memory");
        rc = NGD_EXIT_FAIL;
    } else if ((cprev && cli_same_file(lp, cprev)) ||
               (lprev && t->ckpt && cli_same_file(lprev, t->ckpt))) {
        cli_error("give --log and --checkpoint names that are not each other's .prev",
                  "--log %s and --checkpoint %s: one's earlier run would be kept over the other",
                  lp, t->ckpt);
        rc = NGD_EXIT_USAGE;
    } else if ((cprev && prev_target_bad("--checkpoint", t->ckpt, cprev)) ||
               (lprev && prev_target_bad("--log", lp, lprev))) {
        rc = NGD_EXIT_FAIL;
    }
    // (one generation is kept: an older PATH.prev there goes, and the notes say so)
    const char *lold = lprev && access(lprev, F_OK) == 0 ? " in place of the older one there" : "";
    const char *cold = cprev && access(cprev, F_OK) == 0 ? " in place of the older one there" : "";
    if (rc == NGD_EXIT_OK && lprev) { // (PATH.prev is made beside it: its folder writable?)
        char *copy = strdup(lp);
        const char *dir = copy ? dirname(copy) : ".";
        log_keep = access(dir, W_OK | X_OK) == 0;
        if (!t->quiet && log_keep)
            fprintf(stderr,
                    "ngd train: note: --log %s holds an earlier run's records; this run's first "
                    "record keeps them as %s%s\n",
                    lp, lprev, lold);
        else if (!t->quiet)
            fprintf(
                stderr,
                "ngd train: note: --log %s holds an earlier run's records, which cannot be kept "
                "as %s (folder %s: %s): this run replaces them at its first record\n",
                lp, lprev, dir, strerror(errno));
        free(copy);
    }
    if (rc == NGD_EXIT_OK && cprev) {
        ckpt_keep = strdup(t->ckpt);
        if (!t->quiet && t->resume)
            fprintf(stderr,
                    "ngd train: note: --checkpoint %s holds another run; this run's first save "
                    "keeps it as %s%s\n",
                    t->ckpt, cprev, cold);
        else if (!t->quiet && lprev && log_keep) // (kept with the log: keep_ckpt_with_log)
            fprintf(stderr,
                    "ngd train: note: --checkpoint %s holds an earlier run; this run's first "
                    "record keeps it as %s%s, with its log (to continue that run instead, stop "
                    "this one and add --resume %s; once this one has logged, --resume %s --log "
                    "%s)\n",
                    t->ckpt, cprev, cold, t->ckpt, cprev, lprev);
        else if (!t->quiet)
            fprintf(stderr,
                    "ngd train: note: --checkpoint %s holds an earlier run; this run's first save "
                    "keeps it as %s%s (to continue that run instead, stop this one and add "
                    "--resume %s; once this one has saved, --resume %s)\n",
                    t->ckpt, cprev, cold, t->ckpt, cprev);
    }
    free(cprev), free(lprev);
    return rc;
}

int trainlog_eval(FILE *f, const char *path, size_t step, double epoch, double loss, double acc,
                  double wall) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", "eval");
    cJSON_AddNumberToObject(j, "step", (double)step);
    cJSON_AddNumberToObject(j, "epoch", epoch);
    cJSON_AddNumberToObject(j, "test_loss", loss);
    cJSON_AddNumberToObject(j, "test_accuracy", acc);
    cJSON_AddNumberToObject(j, "wall_s", wall);
    return trainlog_line(f, path, j);
}

// The summary's communication record: bytes this rank handed to MPI per step, for the
// gradients (and the loss) and for the optimizer's statistics and factors.
void trainlog_dist_summary(cJSON *j, const ngd_optim *o, size_t steps, bool quiet) {
    if (!dist_on()) return;
    cJSON_AddNumberToObject(j, "ranks", (double)dist_size());
    const double st = steps ? (double)steps : 1.0;
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "engine", (double)dist_bytes() / st);
    cJSON_AddNumberToObject(c, "optimizer", (double)ngd_optim_comm_bytes(o) / st);
    cJSON_AddItemToObject(j, "comm_bytes_per_step", c);
    if (dist_root() && !quiet)
        fprintf(stderr,
                "ngd train: rank 0 sent %.0f bytes per step (engine %.0f, optimizer %.0f)\n",
                ((double)dist_bytes() + (double)ngd_optim_comm_bytes(o)) / st,
                (double)dist_bytes() / st, (double)ngd_optim_comm_bytes(o) / st);
}
