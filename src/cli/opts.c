/*
 * opts.c — the option helpers of the subcommands: getopt_long's array and the --help rows
 * from one cli_opt table, the parsers of numbers (plain decimals only: strtod alone would
 * take hex, "inf", "nan" and leading spaces, strtoull a sign and spaces), and the messages
 * of options getopt_long did not take (opterr = 0: ngd's style, not getopt's). Apart from
 * main.c so that a program that links a subcommand's objects without main.c can link this
 * one too.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#ifdef _OPENMP
#include <omp.h>
#endif

int cli_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void cli_longopts(const cli_opt *t, size_t n, struct option *lo) {
    for (size_t i = 0; i < n; i++)
        lo[i] = (struct option){t[i].name, t[i].has_arg ? required_argument : no_argument, NULL,
                                t[i].id};
    lo[n] = (struct option){0, 0, 0, 0};
}

void cli_print_opts(FILE *f, const cli_opt *t, size_t n, int width) {
    bool shorts = false;
    for (size_t i = 0; i < n; i++)
        shorts |= t[i].id < 256;
    for (size_t i = 0; i < n; i++) {
        char left[64], shrt[8] = "";
        if (t[i].id < 256)
            snprintf(shrt, sizeof shrt, "-%c, ", t[i].id);
        else if (shorts)
            snprintf(shrt, sizeof shrt, "    ");
        snprintf(left, sizeof left, "%s--%s%s%s", shrt, t[i].name, t[i].meta ? " " : "",
                 t[i].meta ? t[i].meta : "");
        fprintf(f, "  %-*s %s\n", width, left, t[i].help);
    }
}

bool cli_is_decimal(const char *s, bool whole) {
    const char *p = s;
    if (whole) {
        while (*p >= '0' && *p <= '9')
            p++;
        return p != s && *p == '\0';
    }
    if (*p == '+' || *p == '-') p++;
    size_t digits = 0;
    while (*p >= '0' && *p <= '9')
        p++, digits++;
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9'; p++)
            digits++;
    if (!digits) return false;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (*p < '0' || *p > '9') return false;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    return *p == '\0';
}

int cli_parse_real(const char *opt, const char *s, double *out) {
    if (!cli_is_decimal(s, false)) {
        cli_error("give a decimal number, e.g. 0.01 or 1e-3", "--%s: '%s' is not a number", opt, s);
        return -1;
    }
    errno = 0;
    double v = strtod(s, NULL);
    if (errno == ERANGE || !isfinite(v)) {
        cli_error("give a number of a sensible size", "--%s: '%s' is out of range", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_whole(const char *opt, const char *s, unsigned long long lo, unsigned long long hi,
                    unsigned long long *out) {
    char range[96];
    if (hi == ULLONG_MAX)
        snprintf(range, sizeof range, "a whole number >= %llu", lo);
    else
        snprintf(range, sizeof range, "a whole number in [%llu, %llu]", lo, hi);
    if (!cli_is_decimal(s, true)) {
        char hint[128];
        snprintf(hint, sizeof hint, "give %.96s (digits only)", range);
        cli_error(hint, "--%s: '%s' is not a whole number", opt, s);
        return -1;
    }
    errno = 0;
    unsigned long long v = strtoull(s, NULL, 10);
    if (errno == ERANGE && hi == ULLONG_MAX) {
        cli_error(NULL, "--%s: '%s' is too large (at most %llu)", opt, s, hi);
        return -1;
    }
    if (errno == ERANGE || v < lo || v > hi) {
        cli_error(NULL, "--%s must be %s (got %s)", opt, range, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_opt_error(const char *cmd, const struct option *lo, int c, char *const *argv) {
    char hint[128], name[64];
    snprintf(hint, sizeof hint, "run 'ngd %s --help' for its options", cmd);
    const char *word = optind > 0 ? argv[optind - 1] : "";
    if (strncmp(word, "--", 2) != 0) { // a short option (getopt keeps it in optopt)
        snprintf(name, sizeof name, "-%c", optopt);
        if (c == ':')
            cli_error(hint, "option '%s' needs a value", name);
        else
            cli_error(hint, "unknown option '%s'", name);
        return NGD_EXIT_USAGE;
    }
    const size_t len = strcspn(word + 2, "=");
    snprintf(name, sizeof name, "--%.*s", (int)(len < 48 ? len : 48), word + 2);
    if (c == ':') {
        cli_error(hint, "option '%s' needs a value", name);
        return NGD_EXIT_USAGE;
    }
    // getopt_long takes unique prefixes: say which options an ambiguous one could be
    char matches[256] = "";
    size_t n = 0;
    for (const struct option *o = lo; o->name; o++) {
        if (strncmp(o->name, word + 2, len) != 0) continue;
        if (strlen(o->name) == len) { // the option exists: it was given a value it does not take
            cli_error(hint, "option '%s' takes no value", name);
            return NGD_EXIT_USAGE;
        }
        size_t used = strlen(matches);
        snprintf(matches + used, sizeof matches - used, "%s--%s", n ? ", " : "", o->name);
        n++;
    }
    if (n > 1)
        cli_error(hint, "option '%s' is ambiguous: %s", name, matches);
    else if (n == 1 && word[2 + len] == '=')
        cli_error(hint, "option '%s' (%s) takes no value", name, matches);
    else
        cli_error(hint, "unknown option '%s'", name);
    return NGD_EXIT_USAGE;
}
