/*
 * cli.h — the `ngd` command's internal header: the subcommand table entries and the shared
 * error/usage helpers. Exit codes: 0 ok, 1 failure, 2 usage error (STYLE.md §3.7).
 */
#ifndef NGD_CLI_H
#define NGD_CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "ngd.h"

#define NGD_EXIT_OK    0
#define NGD_EXIT_FAIL  1
#define NGD_EXIT_USAGE 2

// "ngd: error: <msg>" and, if hint != NULL, "hint: <hint>" on stderr.
void cli_error(const char *hint, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// While on, cli_error prints nothing: mpirun's other ranks parse the same options and would
// repeat rank 0's usage errors (cli_errors_quiet returns the previous state)
bool cli_errors_quiet(bool on);

// Reads a whole file (NUL-terminated, free with free()); on failure prints
// "ngd: error: <what><path>: <reason>" and returns NULL.
char *cli_read_file(const char *path, size_t *len, const char *what);
// An output about to be written atomically (ngd_write_atomic: "<path>.tmp.<pid>", then a
// rename): tries creating and removing that temporary now, before minutes of work, since a
// folder's permission bits do not tell everything (root; /sys, /proc, read-only mounts).
// 0, or -1 with errno set.
int cli_probe_output(const char *path);
// An image about to be written (atomically) at path, given as option opt ("-o", "--plot"):
// absent, or a regular file that is already an image of its kind (SVG, or PNG where png), in
// a folder it can be written into (cli_probe_output). 0, or NGD_EXIT_FAIL after an error.
int cli_image_target(const char *opt, const char *path, bool png);
// Two paths name the same file: the same string, or (both existing) the same inode
bool cli_same_file(const char *a, const char *b);

// The threads this process's OpenMP regions get (1 in a build without OpenMP).
int cli_threads(void);
// What a file of st_mode `mode` is, for messages: "a folder", "a symbolic link", "a FIFO"…
const char *cli_file_kind(unsigned mode);
// The hint of a failed write whose message is msg: for a full disk (or quota) "free some
// space", otherwise `otherwise`
const char *cli_write_hint(const char *msg, const char *otherwise);

// kfac.factored_apply in ngd train and ngd bench train unless --factored or --no-factored
// says: on for the K-FAC family and for SINGD with dense K and C, whose gradients there are
// (1/n) 𝒢ᵀ𝒜 of the rows observed (libngd's own default is off; docs/algorithms.md)
bool cli_factored_default(ngd_method m, ngd_structure K, ngd_structure C);

// One row of a subcommand's option table, which generates both getopt_long's array and the
// --help text. id: the short option character, or a value >= 256 for long-only options.
typedef struct {
    const char *name;
    int has_arg;
    int id;
    const char *meta; // the argument's name in --help, NULL for a flag
    const char *help;
} cli_opt;

// Fills lo[0..n] for getopt_long (lo[n] is the terminating zero entry).
void cli_longopts(const cli_opt *t, size_t n, struct option *lo);
// Prints the table's rows, "  -x, --name META   help"; long-only rows line up with the
// long forms when the table has short ones. `width`: the left column's width.
void cli_print_opts(FILE *f, const cli_opt *t, size_t n, int width);

// Whether s is a plain decimal: whole: digits only; else an optional sign, digits with an
// optional '.', and an optional exponent (e/E, optional sign, digits). No spaces, no hex,
// no inf/nan.
bool cli_is_decimal(const char *s, bool whole);
// The value of option --opt's argument s, a plain decimal (cli_is_decimal) of finite double
// range; otherwise a usage error naming the option, and -1.
int cli_parse_real(const char *opt, const char *s, double *out);
// The same for a whole number in [lo, hi] (hi = ULLONG_MAX: no upper bound); the error
// names the option and the range.
int cli_parse_whole(const char *opt, const char *s, unsigned long long lo, unsigned long long hi,
                    unsigned long long *out);
// After getopt_long returned c = '?' or ':' (opterr = 0, optstring starting with ':'): prints
// what was wrong with the option (unknown, ambiguous, missing or unwanted value), naming it,
// with the hint "run 'ngd <cmd> --help' for its options". Returns NGD_EXIT_USAGE.
int cli_opt_error(const char *cmd, const struct option *lo, int c, char *const *argv);

int cmd_replay(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_plot(int argc, char **argv);
// `ngd bench train` (benchtrain.c); argv[0] is "train"
int bench_train(int argc, char **argv);
// bench.c's helpers, shared with benchtrain.c: a monotonic clock in seconds, the median of v
// (sorts it), and the machine's sgemm rate now (oneDNN, m x k by k x n, GFLOP/s)
double bench_now_s(void);
double bench_median(double *v, size_t n);
double bench_sgemm_gflops(size_t m, size_t k, size_t n);
#endif
