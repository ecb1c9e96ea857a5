/*
 * opts.c — the option helpers of the subcommands: getopt_long's array and the --help rows
 * from one cli_opt table. Apart from main.c so that a file that includes a subcommand's
 * source (fuzz/fuzz_trainckpt.c includes train.c) can include this one too.
 */
#include <stdio.h>

#include "cli.h"

void cli_longopts(const cli_opt *t, size_t n, struct option *lo) {
    for (size_t i = 0; i < n; i++)
        lo[i] = (struct option){t[i].name, t[i].has_arg ? required_argument : no_argument, NULL,
                                t[i].id};
    lo[n] = (struct option){0, 0, 0, 0};
}

void cli_print_opts(FILE *f, const cli_opt *t, size_t n, int width) {
    bool shorts = false;
    for (size_t i = 0; i < n; i++) shorts |= t[i].id < 256;
    for (size_t i = 0; i < n; i++) {
        char left[64], shrt[8] = "";
        if (t[i].id < 256) snprintf(shrt, sizeof shrt, "-%c, ", t[i].id);
        else if (shorts) snprintf(shrt, sizeof shrt, "    ");
        snprintf(left, sizeof left, "%s--%s%s%s", shrt, t[i].name, t[i].meta ? " " : "",
                 t[i].meta ? t[i].meta : "");
        fprintf(f, "  %-*s %s\n", width, left, t[i].help);
    }
}
