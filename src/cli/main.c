/*
 * main.c — the `ngd` command: a table of subcommands {name, function, one-line help}
 * dispatched by name. Each subcommand parses its own options (getopt_long) and prints
 * its own --help generated from its option table.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "ngd.h"

void cli_error(const char *hint, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("ngd: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (hint) fprintf(stderr, "hint: %s\n", hint);
}

char *cli_read_file(const char *path, size_t *len, const char *what) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        cli_error(NULL, "%s%s: %s", what, path, strerror(errno));
        return NULL;
    }
    char *b = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) b = malloc((size_t)n + 1);
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
    {"bench", cmd_bench, "benchmarks: optimizer step time, preconditioner scaling"},
    {"plot", cmd_plot, "plot training logs (loss, accuracy vs steps and wall time)"},
    {"replay", cmd_replay, "replay reference SINGD trajectories and report the largest errors"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: ngd <command> [options]   (ngd <command> --help for its options)\n\n"
               "Natural-gradient training in C (libngd %s).\n\ncommands:\n",
            ngd_version());
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (COMMANDS[i].fn) fprintf(f, "  %-8s %s\n", COMMANDS[i].name, COMMANDS[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
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
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (COMMANDS[i].fn && !strcmp(argv[1], COMMANDS[i].name))
            return COMMANDS[i].fn(argc - 1, argv + 1);
    cli_error("run 'ngd --help' for the list of commands", "unknown command '%s'", argv[1]);
    return NGD_EXIT_USAGE;
}
