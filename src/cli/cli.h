/*
 * cli.h — the `ngd` command's internal header: the subcommand table entries and the shared
 * error/usage helpers. Exit codes: 0 ok, 1 failure, 2 usage error (STYLE.md §3.7).
 */
#ifndef NGD_CLI_H
#define NGD_CLI_H

#include <stdbool.h>
#include <stddef.h>

#define NGD_EXIT_OK 0
#define NGD_EXIT_FAIL 1
#define NGD_EXIT_USAGE 2

// "ngd: error: <msg>" and, if hint != NULL, "hint: <hint>" on stderr.
void cli_error(const char *hint, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Reads a whole file (NUL-terminated, free with free()); on failure prints
// "ngd: error: <what><path>: <reason>" and returns NULL.
char *cli_read_file(const char *path, size_t *len, const char *what);

int cmd_replay(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_plot(int argc, char **argv);
#endif
