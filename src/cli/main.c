/*
 * main.c — the `ngd` command: a table of subcommands {name, function, one-line help}
 * dispatched by name. Each subcommand parses its own options (getopt_long) and prints
 * its own --help generated from its option table.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/fileio.h" // (ngd_file_kind)
#include "cli.h"
#include "ngd.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static bool errors_quiet;

bool cli_errors_quiet(bool on) {
    const bool was = errors_quiet;
    errors_quiet = on;
    return was;
}

void cli_error(const char *hint, const char *fmt, ...) {
    if (errors_quiet) return;
    // one write: under mpirun the forwarded stderr of a rank that aborts can be cut between
    // writes and interleaved with mpirun's own report (the prefix went one way, the text another)
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(buf, sizeof buf, "ngd: error: ");
    n += vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    if (n < (int)sizeof buf) n += snprintf(buf + n, sizeof buf - (size_t)n, "\n");
    if (hint && n < (int)sizeof buf)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "hint: %s\n", hint);
    if (n >= (int)sizeof buf) { // (cut: still ends its line)
        n = (int)sizeof buf - 1;
        buf[n - 1] = '\n';
    }
    fflush(stdout);
    fwrite(buf, 1, (size_t)n, stderr);
    fflush(stderr);
}

char *cli_read_file(const char *path, size_t *len, const char *what) {
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        cli_error(NULL, "%s%s: is a folder, not a file", what, path);
        return NULL;
    }
    // (a FIFO blocked the open until a writer came, forever without one; a device has no size)
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        cli_error(NULL, "%s%s: is %s, not a regular file", what, path, cli_file_kind(sb.st_mode));
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        cli_error(NULL, "%s%s: %s", what, path, strerror(errno));
        return NULL;
    }
    char *b = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) b = malloc((size_t)n + 1);
    if (!b && n >= 0) { // (not the file's fault: say so)
        cli_error(NULL, "%s%s: out of memory reading its %ld bytes", what, path, n);
        fclose(f);
        return NULL;
    }
    if (!b || (n > 0 && fread(b, 1, (size_t)n, f) != (size_t)n)) {
        cli_error(NULL, "%s%s: read failed", what, path);
        free(b);
        fclose(f);
        return NULL;
    }
    fclose(f);
    b[n] = '\0';
    *len = (size_t)n;
    return b;
}

const char *cli_file_kind(unsigned mode) { return ngd_file_kind(mode); }

int cli_probe_output(const char *path) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    const int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0) return -1;
    close(fd);
    return unlink(tmp);
}

// Whether the file at path begins as a PNG (png) or an SVG image does (an XML tag after
// white space); an empty or unreadable one passes (the write says what is wrong)
static bool looks_like_image(const char *path, bool png) {
    FILE *f = fopen(path, "rb");
    if (!f) return true;
    unsigned char h[8];
    size_t n = fread(h, 1, sizeof h, f);
    fclose(f);
    if (n == 0) return true;
    if (png) return n == 8 && !memcmp(h, "\x89PNG\r\n\x1a\n", 8);
    size_t i = 0;
    while (i < n && (h[i] == ' ' || h[i] == '\n' || h[i] == '\r' || h[i] == '\t'))
        i++;
    return i == n || h[i] == '<';
}

int cli_image_target(const char *opt, const char *path, bool png) {
    struct stat sb = {0}; // the image is committed by a rename: it would replace a link or a FIFO
    if (lstat(path, &sb) != 0) sb.st_mode = 0; // (none yet)
    char hint[128];
    if (sb.st_mode && !S_ISREG(sb.st_mode)) {
        snprintf(hint, sizeof hint, "give %s the path of a regular file, or of none yet", opt);
        cli_error(hint, "%s %s: is %s, not a regular file; refusing to replace it", opt, path,
                  cli_file_kind(sb.st_mode));
        return NGD_EXIT_FAIL;
    }
    if (sb.st_mode && !looks_like_image(path, png)) { // (an existing file of another kind)
        snprintf(hint, sizeof hint, "give %s the path of an image, or of none yet", opt);
        cli_error(hint, "%s %s exists and is not %s image; refusing to replace it", opt, path,
                  png ? "a PNG" : "an SVG");
        return NGD_EXIT_FAIL;
    }
    if (cli_probe_output(path) != 0) { // (before minutes of work)
        const int e = errno;
        snprintf(hint, sizeof hint, "check that the folder of %s FILE exists and is writable", opt);
        cli_error(hint, "%s %s: %s", opt, path, strerror(e));
        return NGD_EXIT_FAIL;
    }
    return 0;
}

bool cli_same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return !strcmp(a, b) || (stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
                             sa.st_ino == sb.st_ino);
}

const char *cli_write_hint(const char *msg, const char *otherwise) {
    if (strstr(msg, strerror(ENOSPC)) || strstr(msg, strerror(EDQUOT)))
        return "the disk is full (a checkpoint is written beside the old one, so it needs room "
               "for both): free some space there, or write to another disk";
    if (strstr(msg, strerror(EFBIG)))
        return "the file is larger than this process may write (ulimit -f): raise the limit, "
               "or write where none applies";
    return otherwise;
}

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} subcommand;

// Weak: a subcommand whose file is not linked in is simply not offered.
#define WEAK __attribute__((weak))
WEAK int cmd_train(int argc, char **argv);
WEAK int cmd_eval(int argc, char **argv);
WEAK int cmd_bench(int argc, char **argv);
WEAK int cmd_plot(int argc, char **argv);

static const subcommand COMMANDS[] = {
    {"train", cmd_train, "train a model on a data set with any optimizer"},
    {"eval", cmd_eval, "evaluate a checkpoint on the test set"},
    {"bench", cmd_bench,
     "benchmarks: whole training steps, optimizer step time, preconditioner "
     "scaling"},
    {"plot", cmd_plot, "plot training logs (loss, accuracy vs steps and wall time)"},
    {"replay", cmd_replay, "replay reference SINGD trajectories and report the largest errors"},
};

static void usage(FILE *f) {
    fprintf(f,
            "usage: ngd <command> [options]   (ngd <command> --help for its options)\n\n"
            "Natural-gradient training in C (libngd %s).\n\ncommands:\n",
            ngd_version());
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (COMMANDS[i].fn) fprintf(f, "  %-8s %s\n", COMMANDS[i].name, COMMANDS[i].help);
    fprintf(f, "\nngd --version prints the version; ngd help <command> is <command> --help.\n");
}

// At exit, whatever way the command ends (a return from main, or exit() after --help):
// output that could not be written (stdout on a full disk, > /dev/full) is an error, exit 1,
// not a silent success. The last buffered output is written here, so its error shows here.
// A closed stdout with nothing to write (ngd train >&-) is fine (EBADF at the close only).
static void close_stdout(void) {
    errno = 0;
    bool failed = ferror(stdout) != 0; // an earlier write failed (its errno is gone)
    if (!failed && fflush(stdout) != 0) failed = true;
    int e = failed ? errno : 0;
    if (fclose(stdout) != 0 && !failed && errno != EBADF) failed = true, e = errno;
    if (failed) {
        cli_error(NULL, "standard output: %s", e ? strerror(e) : "write error");
        fflush(stderr);
        _exit(NGD_EXIT_FAIL);
    }
}

// The switches libngd and the engine read from the environment (README): the library never
// prints, so a value it does not know would be ignored in silence; the command refuses it.
// (NGD_DIST_SHARE is dist.c's, checked under mpirun.)
static int check_env(int argc, char **argv) {
    static const char *const VARS[][2] = {
        {"NGD_F32_GEMM", "sgemm|matmul"}, {"NGD_BF16_GEMM", "matmul|gemm|convert"},
        {"NGD_BF16_SPLIT", "0|1"},        {"NGD_CONV_DIRECT", "0|1"},
        {"NGD_CONV_AMX", "0|1"},          {"NGD_SYRK_BLOCKS", "0|1"},
        {"NGD_CONV_WINOGRAD", "0|1"},
    };
    for (size_t i = 0; i < sizeof VARS / sizeof VARS[0]; i++) {
        const char *v = getenv(VARS[i][0]);
        if (!v) continue;
        bool known = false;
        for (const char *p = VARS[i][1]; *p && !known;) {
            const size_t n = strcspn(p, "|");
            known = strlen(v) == n && !strncmp(p, v, n);
            p += n + (p[n] == '|');
        }
        if (!known) {
            char hint[96];
            snprintf(hint, sizeof hint, "unset %s, or give it one of %s", VARS[i][0], VARS[i][1]);
            cli_error(hint, "%s=%s: not a value it takes", VARS[i][0], v);
            return -1;
        }
    }
#ifdef _OPENMP
    // libgomp takes any OMP_NUM_THREADS and then fails to start that many threads (a crash
    // in the first parallel region): ngd's --threads range, 1 to 1024, holds here too, unless
    // the command line gives --threads, which the command applies (omp_set_num_threads) before
    // its first parallel region
    bool threads_opt = false;
    for (int i = 2; i < argc && strcmp(argv[i], "--"); i++) { // (or a prefix getopt takes)
        const size_t n = strcspn(argv[i], "=");
        threads_opt |= n >= 5 && n <= 9 && !strncmp(argv[i], "--threads", n);
    }
    // (ngd plot runs no parallel region: the variable does not concern it; the hint names
    // --threads only for the commands that have it)
    const bool plot = argc >= 2 && !strcmp(argv[1], "plot");
    const bool has_opt =
        argc >= 2 && (!strcmp(argv[1], "train") || !strcmp(argv[1], "eval") ||
                      (!strcmp(argv[1], "bench") && argc >= 3 && !strcmp(argv[2], "train")));
    if (omp_get_max_threads() > 1024 && !threads_opt && !plot) {
        const char *v = getenv("OMP_NUM_THREADS");
        cli_error(has_opt ? "give OMP_NUM_THREADS (or --threads) at most 1024"
                          : "give OMP_NUM_THREADS at most 1024, or unset it",
                  "OMP_NUM_THREADS=%s: more threads than ngd runs (1024)", v ? v : "?");
        return -1;
    }
#else
    (void)argc, (void)argv;
#endif
    return 0;
}

int main(int argc, char **argv) {
    atexit(close_stdout);
    // a file-size limit (ulimit -f) makes a write fail with EFBIG, which every writer reports
    // with the file's name and cleans up after, instead of killing the process unannounced
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return NGD_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "help") && (argc == 3 || argc == 4)) { // ngd help CMD [SUB] = ngd
        static char help_opt[] = "--help";                      // CMD [SUB] --help
        if (argc == 4 && strcmp(argv[2], "bench") != 0) {       // (only bench has subcommands)
            cli_error("e.g. ngd help train, ngd help bench step",
                      "ngd help %s: '%s' is not one of its subcommands", argv[2], argv[3]);
            return NGD_EXIT_USAGE;
        }
        char *args[4] = {argv[2], argc == 4 ? argv[3] : help_opt, help_opt, NULL};
        for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
            if (COMMANDS[i].fn && !strcmp(argv[2], COMMANDS[i].name))
                return COMMANDS[i].fn(argc == 4 ? 3 : 2, args);
        cli_error("run 'ngd --help' for the list of commands", "unknown command '%s'", argv[2]);
        return NGD_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "help") && argc > 4) { // (printed the usage, exit 0)
        cli_error("e.g. ngd help train, ngd help bench step",
                  "ngd help takes a command and, for bench, a subcommand (got %d words)", argc - 2);
        return NGD_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return NGD_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("ngd %s\n", ngd_version());
        return NGD_EXIT_OK;
    }
    if (check_env(argc, argv)) return NGD_EXIT_USAGE;
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (COMMANDS[i].fn && !strcmp(argv[1], COMMANDS[i].name))
            return COMMANDS[i].fn(argc - 1, argv + 1);
    cli_error("run 'ngd --help' for the list of commands", "unknown command '%s'", argv[1]);
    return NGD_EXIT_USAGE;
}
