/*
 * plot.c — `ngd plot LOG... -o FILE`: draws the JSON-lines logs of `ngd train` as one SVG
 * with four panels: training loss vs step, test accuracy vs step, training loss vs wall
 * time, test accuracy vs wall time. One colour per run; the legend names each run from its
 * summary record ("optim model data", else the file name) with its final test accuracy,
 * and marks the best run, so a reader sees at a glance which optimizer won.
 *
 * The SVG is written by hand (no plotting dependency) into memory and saved atomically with
 * ngd_write_atomic_bytes (libngd's, src/core/fileio.h). A FILE ending in .png is rendered by the
 * external `rsvg-convert` (librsvg) when it is on PATH; without it the command says so and suggests
 * .svg.
 *
 * Reading is tolerant where a log legitimately looks odd: a half-written last line (a run
 * still going) is skipped with a warning; a resumed run (the log is appended) that repeats
 * steps keeps the continuation, so every line runs left to right; NaN values (written as
 * null by cJSON) break a line instead of bending it. A training loss spanning more than
 * LOG_SCALE_RATIO is drawn on a log axis (a diverged run would flatten the others).
 * Not done: smoothing, per-layer health, eval loss (the records carry it; four panels are
 * what a comparison needs).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define PLOT_LINE_MAX ((size_t)1 << 20) // the longest log line read (bytes)

#include "../core/fileio.h"
#include "cli.h"
#include "ngd.h"

// ---- the option table (drives getopt_long and --help) ----
enum { O_TITLE = 256 };

static const cli_opt OPTS[] = {
    {"output", 1, 'o', "FILE",
     "write the plot to FILE (required): .svg, or .png through "
     "rsvg-convert"},
    {"title", 1, O_TITLE, "TEXT", "title above the panels (default: model and data of the runs)"},
    {"help", 0, 'h', NULL, "this text"},
};
#define NOPTS (sizeof OPTS / sizeof OPTS[0])

static void print_help(FILE *f) {
    fprintf(f, "usage: ngd plot LOG... -o FILE [options]\n\n"
               "Plots JSON-lines logs of 'ngd train' (--log FILE, default runs/*.jsonl): training\n"
               "loss and test accuracy against steps and against wall time, one line per run.\n"
               "A run that ended before its first step record (shorter than --log-every) is\n"
               "plotted by its test accuracy alone, or, not evaluated either, left out with a\n"
               "warning when other runs are plotted.\n\n"
               "options:\n");
    cli_print_opts(f, OPTS, NOPTS, 24);
    fprintf(f, "\nexample:\n  ngd plot runs/mlp-fashion-mnist-singd.jsonl "
               "runs/mlp-fashion-mnist-adamw.jsonl -o compare.svg\n");
}

// ---- a growing text buffer ----
typedef struct {
    char *s;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap <= b->len + (size_t)n)
            cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = true;
            return;
        }
        b->s = s, b->cap = cap;
    }
}

// The length of the well-formed UTF-8 sequence at s (1-4), or 0 if it is not one (overlong
// forms, surrogates and code points past U+10FFFF included)
static size_t utf8_len(const unsigned char *s) {
    const unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t n = c >= 0xc2 && c <= 0xdf   ? 2
               : c >= 0xe0 && c <= 0xef ? 3
               : c >= 0xf0 && c <= 0xf4 ? 4
                                        : 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f) || (c == 0xf0 && s[1] < 0x90) ||
        (c == 0xf4 && s[1] > 0x8f))
        return 0;
    // U+FFFE and U+FFFF: not characters XML 1.0 allows
    if (c == 0xef && s[1] == 0xbf && (s[2] == 0xbe || s[2] == 0xbf)) return 0;
    return n;
}

// Appends s with the five XML special characters escaped, and what XML 1.0 cannot hold
// (control characters other than tab and newline, bytes that are not UTF-8: a file name in
// Latin-1, say) written as U+FFFD, so that the SVG stays well-formed.
static void sb_text(sbuf *b, const char *s) {
    while (*s) {
        const unsigned char c = (unsigned char)*s;
        const size_t n = utf8_len((const unsigned char *)s);
        if (n == 0 || (c < 0x20 && c != '\t' && c != '\n') || c == 0x7f) {
            sb_printf(b, "\xef\xbf\xbd"); // U+FFFD
            s++;
            continue;
        }
        switch (c) {
        case '&': sb_printf(b, "&amp;"); break;
        case '<': sb_printf(b, "&lt;"); break;
        case '>': sb_printf(b, "&gt;"); break;
        case '"': sb_printf(b, "&quot;"); break;
        case '\'': sb_printf(b, "&apos;"); break;
        default: sb_printf(b, "%.*s", (int)n, s);
        }
        s += n;
    }
}

// ---- the runs read from the logs ----
typedef struct {
    double *step, *wall, *y; // (n) each; y is NaN where the log had null
    size_t n, cap;
} series;

typedef struct {
    const char *path;
    char name[256]; // legend label
    char model[64], data[64], optim[32];
    bool has_summary;
    bool mixed; // summaries of other runs before the last (first: the first of them)
    char first[200];
    double final_acc;   // the last finite evaluation's accuracy, NaN if none
    bool diverged;      // the log ends with the summary of a run that diverged
    bool text;          // a character model's run (its accuracy: validation windows)
    double steps, wall; // from the summary, else the last record
    series loss;        // step records: training loss
    series acc;         // eval records: test accuracy in percent
} run;

static void series_free(series *s) {
    free(s->step), free(s->wall), free(s->y);
    memset(s, 0, sizeof *s);
}

// Appends a point; a step not after the last one (a resumed run re-doing steps) first drops
// the points it replaces. Returns -1 on allocation failure.
static int series_add(series *s, double step, double wall, double y) {
    while (s->n > 0 && s->step[s->n - 1] >= step)
        s->n--;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        double *a = realloc(s->step, cap * sizeof *a);
        if (!a) return -1;
        s->step = a;
        if (!(a = realloc(s->wall, cap * sizeof *a))) return -1;
        s->wall = a;
        if (!(a = realloc(s->y, cap * sizeof *a))) return -1;
        s->y = a;
        s->cap = cap;
    }
    s->step[s->n] = step, s->wall[s->n] = wall, s->y[s->n] = y;
    s->n++;
    return 0;
}

// A number field, or NaN if it is absent or not a number (null: cJSON writes NaN as null).
static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : (double)NAN;
}

static void str_field(const cJSON *o, const char *key, char *out, size_t cap) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsString(v) && v->valuestring) snprintf(out, cap, "%s", v->valuestring);
}

// The file name without folder and .jsonl / .json extension.
static void base_name(const char *path, char *out, size_t cap) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    snprintf(out, cap, "%s", b);
    size_t n = strlen(out);
    if (n > 6 && !strcmp(out + n - 6, ".jsonl"))
        out[n - 6] = '\0';
    else if (n > 5 && !strcmp(out + n - 5, ".json"))
        out[n - 5] = '\0';
}

// Reads one log. Returns 0, or prints the error and returns -1.
static int read_log(const char *path, run *r) {
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) { // (fopen takes a folder; reads fail)
        cli_error("give the JSON-lines log written by 'ngd train' (--log FILE)",
                  "%s: is a folder, not a file", path);
        return -1;
    }
    if (stat(path, &sb) == 0 && (S_ISCHR(sb.st_mode) || S_ISBLK(sb.st_mode))) {
        // (/dev/zero was read as one endless line, its memory growing until killed)
        cli_error("give the JSON-lines log written by 'ngd train' (--log FILE)",
                  "%s: is %s, not a log file", path, cli_file_kind(sb.st_mode));
        return -1;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        cli_error("give the JSON-lines log written by 'ngd train' (--log FILE; by default "
                  "runs/<model>-<data>-<optim>.jsonl)",
                  "%s: %s", path, strerror(errno));
        return -1;
    }
    r->path = path;
    r->final_acc = r->steps = r->wall = (double)NAN;
    // lines of at most PLOT_LINE_MAX bytes (a record is a few hundred): a longer one is
    // skipped as a bad line, so that memory stays bounded whatever the file holds
    char *line = malloc(PLOT_LINE_MAX);
    size_t lineno = 0, bad = 0, first_bad = 0, len;
    int rc = line ? 0 : -1;
    while (line && fgets(line, PLOT_LINE_MAX, f)) {
        lineno++;
        len = strlen(line);
        if (len == PLOT_LINE_MAX - 1 && line[len - 1] != '\n') { // (longer: skipped whole)
            int ch;
            while ((ch = getc(f)) != EOF && ch != '\n')
                ;
            if (!bad++) first_bad = lineno;
            continue;
        }
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0) continue;
        cJSON *o = cJSON_ParseWithLength(line, len);
        const cJSON *type = o ? cJSON_GetObjectItemCaseSensitive(o, "type") : NULL;
        if (!cJSON_IsString(type)) {
            if (!bad++) first_bad = lineno;
            cJSON_Delete(o);
            continue;
        }
        const char *t = type->valuestring;
        double step = num(o, "step"), wall = num(o, "wall_s");
        if (!strcmp(t, "step") && isfinite(step)) {
            // a resumed run re-doing steps (from an earlier checkpoint: a branch): the other
            // branch's evaluations past this point go with its losses
            if (r->loss.n > 0 && step <= r->loss.step[r->loss.n - 1])
                while (r->acc.n > 0 && r->acc.step[r->acc.n - 1] >= step)
                    r->acc.n--;
            if (series_add(&r->loss, step, wall, num(o, "loss"))) rc = -1;
            r->steps = step, r->wall = wall;
            r->diverged = false; // (a run resumed after it)
            r->text |= cJSON_GetObjectItemCaseSensitive(o, "tokens_per_s") != NULL;
        } else if (!strcmp(t, "eval") && isfinite(step)) {
            double a = 100.0 * num(o, "test_accuracy");
            if (series_add(&r->acc, step, wall, a)) rc = -1;
            r->diverged = false;
        } else if (!strcmp(t, "summary")) { // the last one wins (a resumed run appends)
            char was[3][sizeof r->model];
            memcpy(was[0], r->model, sizeof was[0]), memcpy(was[1], r->data, sizeof was[1]);
            memcpy(was[2], r->optim, sizeof r->optim);
            const bool had = r->has_summary;
            r->has_summary = true;
            r->diverged = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "diverged"));
            str_field(o, "model", r->model, sizeof r->model);
            str_field(o, "data", r->data, sizeof r->data);
            str_field(o, "optim", r->optim, sizeof r->optim);
            r->steps = num(o, "steps"), r->wall = num(o, "wall_s");
            if (had && !r->mixed &&
                (strcmp(was[0], r->model) || strcmp(was[1], r->data) || strcmp(was[2], r->optim)))
                r->mixed = true,
                snprintf(r->first, sizeof r->first, "%s %s %s", was[2], was[0], was[1]);
        }
        cJSON_Delete(o);
        if (rc) break;
    }
    free(line);
    const bool read_err = ferror(f) != 0;
    fclose(f);
    if (rc) {
        cli_error(NULL, "%s: out of memory", path);
        return -1;
    }
    if (read_err) {
        cli_error(NULL, "%s: read failed", path);
        return -1;
    }
    if (r->loss.n == 0 && r->acc.n == 0 && r->has_summary)
        return 1;                       // a run shorter than --log-every, with no evaluation either
    if (lineno == 0) return 2;          // empty: a run that has not written its first record yet
    if (r->loss.n == 0 && r->acc.n > 0) // (a run shorter than --log-every, evaluated)
        fprintf(stderr,
                "ngd: warning: %s: no step records (the run ended before its first, or logged "
                "with a large --log-every): only its test accuracy is plotted\n",
                path);
    if (r->loss.n == 0 && r->acc.n == 0) {
        cli_error("plot the JSON-lines log of 'ngd train' (--log FILE); a run writes its first "
                  "step record after --log-every steps (20 by default)",
                  "%s: no step records (%zu line%s%s)", path, lineno, lineno == 1 ? "" : "s",
                  bad ? (lineno == 1 ? ", not a log record" : ", none of them a log record") : "");
        return -1;
    }
    if (bad)
        fprintf(stderr,
                "ngd: warning: %s: %zu line%s skipped (not a log record; first: line "
                "%zu)\n",
                path, bad, bad > 1 ? "s" : "", first_bad);
    if (r->mixed) // (a resume into another run's log: ngd train said so too)
        fprintf(stderr,
                "ngd: warning: %s: holds the records of more than one run (%s, then %s %s %s), "
                "drawn as one line: give each run its own --log\n",
                path, r->first, r->optim, r->model, r->data);
    // the last evaluation that stands (a summary's accuracy is its run's last evaluation's, and
    // a run still going, or stopped, has evaluations after an earlier run's summary)
    for (size_t i = r->acc.n; i-- > 0 && !isfinite(r->final_acc);)
        r->final_acc = r->acc.y[i];
    if (r->has_summary && r->optim[0])
        snprintf(r->name, sizeof r->name, "%s %s %s", r->optim, r->model, r->data);
    else
        base_name(path, r->name, sizeof r->name);
    return 0;
}

// Runs with the same label (e.g. two SINGD structures) get their file name appended.
static void disambiguate(run *runs, size_t n) {
    bool dup[64] = {false};
    for (size_t i = 0; i < n && i < 64; i++)
        for (size_t j = 0; j < n; j++)
            if (i != j && !strcmp(runs[i].name, runs[j].name)) dup[i] = true;
    for (size_t i = 0; i < n && i < 64; i++)
        if (dup[i]) {
            char b[128];
            base_name(runs[i].path, b, sizeof b);
            size_t l = strlen(runs[i].name);
            snprintf(runs[i].name + l, sizeof runs[i].name - l, " (%s)", b);
        }
}

// ---- axes ----
#define LOG_SCALE_RATIO 30.0 // a loss range wider than this gets a log axis

typedef struct {
    double lo, hi; // data range after rounding to ticks (log axes: log10 of it)
    double step;   // tick spacing (in log10 units for log axes)
    bool log;
} axis;

// A "nice" spacing (1, 2 or 5 times a power of ten) giving about `target` intervals.
static double nice_step(double range, int target) {
    double raw = range / target, mag = pow(10.0, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1.0 : f < 3.0 ? 2.0 : f < 7.0 ? 5.0 : 10.0) * mag;
}

static axis make_axis(double lo, double hi, bool from_zero, bool log_ok, double clamp_hi) {
    axis a = {0, 1, 0.2, false};
    if (!isfinite(lo) || !isfinite(hi)) return a;
    const double lo0 = lo, hi0 = hi; // the data's own range (the band below widens it)
    if (log_ok && lo > 0 && hi / lo > LOG_SCALE_RATIO) {
        a.log = true;
        a.lo = floor(log10(lo)), a.hi = ceil(log10(hi));
        a.step = a.hi - a.lo > 8 ? ceil((a.hi - a.lo) / 8) : 1;
        return a;
    }
    if (from_zero && lo > 0) lo = 0;
    if (hi - lo < 1e-12 * fmax(fabs(hi), 1.0)) { // one value: a band around it
        double d = fabs(hi) > 0 ? 0.1 * fabs(hi) : 1.0;
        lo -= d, hi += d;
        if (from_zero && lo < 0 && hi > 0) lo = 0;
    }
    a.step = nice_step(hi - lo, 5);
    a.lo = floor(lo / a.step) * a.step;
    a.hi = ceil(hi / a.step) * a.step;
    if (a.hi > clamp_hi && hi0 <= clamp_hi) a.hi = clamp_hi;
    if (a.lo < 0 && lo0 >= 0) a.lo = 0;
    // values near the largest double: the range, the step or the rounded ends overflowed
    // (ticks from a finite end to an infinite one never ended, the SVG growing without
    // bound): the data's own range in five equal steps, or the default axis
    if (!isfinite(a.lo) || !isfinite(a.hi) || !(a.step > 0) || !isfinite(a.step) ||
        !(a.hi > a.lo) || !((a.hi - a.lo) / a.step <= 64)) {
        axis f = {lo0, hi0, hi0 / 5 - lo0 / 5, false};
        if (!(f.step > 0) || !isfinite(f.step) || !(f.hi > f.lo) || !isfinite(f.hi - f.lo))
            f = (axis){0, 1, 0.2, false};
        return f;
    }
    return a;
}

static double axis_frac(const axis *a, double v) {
    if (a->log) v = v > 0 ? log10(v) : a->lo - 1;
    return (v - a->lo) / (a->hi - a->lo);
}

static void tick_label(const axis *a, double v, char *out, size_t cap) {
    if (a->log) {
        snprintf(out, cap, "%g", pow(10.0, v));
        return;
    }
    if (fabs(v) < 1e-9 * a->step) v = 0;
    int dec = a->step >= 1 ? 0 : (int)ceil(-log10(a->step) - 1e-9);
    if (fabs(v) >= 1e6)
        snprintf(out, cap, "%.3g", v);
    else
        snprintf(out, cap, "%.*f", dec, v);
}

// ---- drawing ----
static const char *const COLORS[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                     "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
#define NCOLORS (sizeof COLORS / sizeof COLORS[0])
// runs past the tenth reuse the colours with a dash pattern, another one for each ten (the 64
// logs ngd plot takes: seven tens, so that no two runs look the same)
static const char *dash(size_t i) {
    static const char *const D[] = {"",
                                    " stroke-dasharray=\"6 3\"",
                                    " stroke-dasharray=\"2 2\"",
                                    " stroke-dasharray=\"8 3 2 3\"",
                                    " stroke-dasharray=\"1 4\"",
                                    " stroke-dasharray=\"12 4\"",
                                    " stroke-dasharray=\"4 2 1 2 1 2\""};
    return D[i / NCOLORS % (sizeof D / sizeof D[0])];
}

typedef struct {
    double x, y, w, h; // the plotting area in SVG pixels
} rect;

enum { X_STEP, X_WALL };

static double px_x(const rect *r, const axis *a, double v) { return r->x + axis_frac(a, v) * r->w; }
static double px_y(const rect *r, const axis *a, double v) {
    return r->y + r->h - axis_frac(a, v) * r->h;
}

static void draw_frame(sbuf *b, const rect *r, const axis *ax, const axis *ay, const char *title,
                       const char *xlabel, const char *ylabel) {
    sb_printf(b,
              "<g class=\"panel\">\n<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
              "font-size=\"14\" font-weight=\"bold\">",
              r->x + r->w / 2, r->y - 10);
    sb_text(b, title);
    sb_printf(b,
              "</text>\n<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
              "fill=\"#ffffff\" stroke=\"#444444\"/>\n",
              r->x, r->y, r->w, r->h);
    char lab[32];
    int nt = 0; // (at most 65 ticks an axis: make_axis's bound, kept here too)
    for (double v = ax->lo; v <= ax->hi + 1e-9 * ax->step && nt++ <= 64; v += ax->step) {
        double x = r->x + (v - ax->lo) / (ax->hi - ax->lo) * r->w;
        sb_printf(b,
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>"
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444444\"/>",
                  x, r->y, x, r->y + r->h, x, r->y + r->h, x, r->y + r->h + 5);
        tick_label(ax, v, lab, sizeof lab);
        sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", x,
                  r->y + r->h + 18, lab);
    }
    nt = 0;
    for (double v = ay->lo; v <= ay->hi + 1e-9 * ay->step && nt++ <= 64; v += ay->step) {
        double y = r->y + r->h - (v - ay->lo) / (ay->hi - ay->lo) * r->h;
        sb_printf(b,
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>"
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444444\"/>",
                  r->x, y, r->x + r->w, y, r->x - 5, y, r->x, y);
        tick_label(ay, v, lab, sizeof lab);
        sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", r->x - 8, y + 4,
                  lab);
    }
    sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", r->x + r->w / 2,
              r->y + r->h + 38);
    sb_text(b, xlabel);
    sb_printf(b,
              "</text>\n<text transform=\"translate(%.1f %.1f) rotate(-90)\" "
              "text-anchor=\"middle\">",
              r->x - 52, r->y + r->h / 2);
    sb_text(b, ylabel);
    sb_printf(b, "</text>\n");
}

static bool drawable(const axis *ay, double x, double y) {
    return isfinite(x) && isfinite(y) && (!ay->log || y > 0);
}

// One run's series in a panel: polylines (a NaN or a point off a log axis starts a new
// one) and, for sparse series, a circle on every point.
static void draw_series(sbuf *b, const rect *r, const axis *ax, const axis *ay, const series *s,
                        int xkind, size_t color, bool markers) {
    const double *xs = xkind == X_STEP ? s->step : s->wall;
    const char *c = COLORS[color % NCOLORS];
    bool open = false;
    for (size_t i = 0; i < s->n; i++) {
        if (!drawable(ay, xs[i], s->y[i])) {
            if (open) sb_printf(b, "\"/>\n");
            open = false;
            continue;
        }
        if (!open)
            sb_printf(b,
                      "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.6\" "
                      "stroke-linejoin=\"round\"%s points=\"",
                      c, dash(color));
        sb_printf(b, "%s%.1f,%.1f", open ? " " : "", px_x(r, ax, xs[i]), px_y(r, ay, s->y[i]));
        open = true;
    }
    if (open) sb_printf(b, "\"/>\n");
    // markers: on every point of a sparse series, else on isolated points (no line shows them)
    for (size_t i = 0; i < s->n; i++) {
        if (!drawable(ay, xs[i], s->y[i])) continue;
        const bool alone = (i == 0 || !drawable(ay, xs[i - 1], s->y[i - 1])) &&
                           (i + 1 == s->n || !drawable(ay, xs[i + 1], s->y[i + 1]));
        if (markers || alone)
            sb_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.2\" fill=\"%s\"/>\n",
                      px_x(r, ax, xs[i]), px_y(r, ay, s->y[i]), c);
    }
}

static void range_of(const run *runs, size_t n, bool acc, int xkind, double *lo, double *hi) {
    *lo = (double)INFINITY, *hi = -(double)INFINITY;
    for (size_t i = 0; i < n; i++) {
        const series *s = acc ? &runs[i].acc : &runs[i].loss;
        for (size_t k = 0; k < s->n; k++) {
            double v = xkind < 0 ? s->y[k] : xkind == X_STEP ? s->step[k] : s->wall[k];
            if (isfinite(v)) *lo = fmin(*lo, v), *hi = fmax(*hi, v);
        }
    }
}

static void render(sbuf *b, const run *runs, size_t n, const char *title) {
    const double W = 1120, PW = 440, PH = 250, X0 = 90, X1 = 630, Y0 = 80, Y1 = 420;
    const double legend_y = 770, H = legend_y + 22.0 * (double)n + 20;
    // the best run: highest final test accuracy, among runs on one data set (a text model's
    // validation accuracy is no image test accuracy: runs on different data get no mark)
    size_t best = n;
    bool one_data = true;
    for (size_t i = 1; i < n; i++)
        one_data = one_data && runs[i].text == runs[0].text && !strcmp(runs[i].data, runs[0].data);
    for (size_t i = 0; i < n && one_data; i++)
        if (isfinite(runs[i].final_acc) && !runs[i].diverged &&
            (best == n || runs[i].final_acc > runs[best].final_acc))
            best = i;
    sb_printf(b,
              "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
              "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
              "viewBox=\"0 0 %.0f %.0f\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" "
              "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n"
              "<text x=\"%.0f\" y=\"36\" text-anchor=\"middle\" font-size=\"20\" "
              "font-weight=\"bold\">",
              W, H, W, H, W / 2);
    sb_text(b, title);
    sb_printf(b, "</text>\n");
    double lo, hi;
    range_of(runs, n, false, -1, &lo, &hi);
    const axis ay_loss = make_axis(lo, hi, false, true, (double)INFINITY);
    range_of(runs, n, true, -1, &lo, &hi);
    const bool evaluated = isfinite(lo) && isfinite(hi); // (else an empty 0-100 % panel)
    const axis ay_acc =
        make_axis(evaluated ? lo : 0.0, evaluated ? hi : 100.0, false, false, 100.0);
    bool text = n > 0; // every run a character model: its accuracy is the validation windows'
    for (size_t i = 0; i < n; i++)
        text = text && (runs[i].text || !strcmp(runs[i].model, "chargpt"));
    const char *acc_name = text ? "validation accuracy" : "test accuracy";
    for (int xk = X_STEP; xk <= X_WALL; xk++) {
        double l1, h1, l2, h2;
        range_of(runs, n, false, xk, &l1, &h1);
        range_of(runs, n, true, xk, &l2, &h2);
        const axis ax = make_axis(fmin(l1, isfinite(l2) ? l2 : l1),
                                  fmax(h1, isfinite(h2) ? h2 : h1), true, false, (double)INFINITY);
        const char *xlabel = xk == X_STEP ? "step" : "wall time (s)";
        const double y = xk == X_STEP ? Y0 : Y1;
        const rect rl = {X0, y, PW, PH}, ra = {X1, y, PW, PH};
        draw_frame(b, &rl, &ax, &ay_loss,
                   xk == X_STEP ? "training loss vs step" : "training loss vs wall time", xlabel,
                   ay_loss.log ? "training loss (log scale)" : "training loss");
        for (size_t i = 0; i < n; i++)
            draw_series(b, &rl, &ax, &ay_loss, &runs[i].loss, xk, i, false);
        sb_printf(b, "</g>\n");
        char atitle[64], alabel[48];
        snprintf(atitle, sizeof atitle, "%s vs %s", acc_name, xk == X_STEP ? "step" : "wall time");
        snprintf(alabel, sizeof alabel, "%s (%%)", acc_name);
        draw_frame(b, &ra, &ax, &ay_acc, atitle, xlabel, alabel);
        for (size_t i = 0; i < n; i++)
            draw_series(b, &ra, &ax, &ay_acc, &runs[i].acc, xk, i, true);
        sb_printf(b, "</g>\n");
    }
    // legend: swatch, name, final test accuracy, steps, wall time; the best run in bold
    sb_printf(b,
              "<g class=\"legend\">\n<text x=\"%.0f\" y=\"%.0f\" font-weight=\"bold\">runs "
              "(final %s, steps, wall time)</text>\n",
              X0, legend_y - 16, acc_name);
    for (size_t i = 0; i < n; i++) {
        const double y = legend_y + 22.0 * (double)i;
        const char *c = COLORS[i % NCOLORS];
        sb_printf(b,
                  "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" "
                  "stroke-width=\"3\"%s/><circle cx=\"%.0f\" cy=\"%.0f\" r=\"3.2\" fill=\"%s\"/>",
                  X0, y, X0 + 34, y, c, dash(i), X0 + 17, y, c);
        sb_printf(b, "<text x=\"%.0f\" y=\"%.0f\"%s>", X0 + 44, y + 4,
                  i == best ? " font-weight=\"bold\"" : "");
        sb_text(b, runs[i].name);
        char acc[64] = "no evaluation";
        if (runs[i].diverged && isfinite(runs[i].final_acc))
            snprintf(acc, sizeof acc, "diverged (%.2f%% before)", runs[i].final_acc);
        else if (runs[i].diverged)
            snprintf(acc, sizeof acc, "diverged");
        else if (isfinite(runs[i].final_acc))
            snprintf(acc, sizeof acc, "%.2f%%", runs[i].final_acc);
        sb_printf(b, ": %s, %.0f steps, %.1f s%s</text>\n", acc,
                  isfinite(runs[i].steps) ? runs[i].steps : 0.0,
                  isfinite(runs[i].wall) ? runs[i].wall : 0.0,
                  i == best && n > 1 ? "  \xe2\x80\x94 best" : "");
    }
    sb_printf(b, "</g>\n</svg>\n");
}

// ---- PNG through rsvg-convert ----
// Whether an existing FILE holds an image of the kind: PNG's signature, or an SVG's markup
// (its first non-blank character '<'); an empty file counts as one (nothing to lose)
static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n > k && !strcasecmp(s + n - k, suffix);
}

// True if `prog` is an executable file in a PATH folder.
static bool on_path(const char *prog) {
    const char *path = getenv("PATH");
    if (!path) return false;
    char dir[4096];
    while (*path) {
        size_t k = strcspn(path, ":");
        if (k > 0 && k < sizeof dir - strlen(prog) - 2) {
            snprintf(dir, sizeof dir, "%.*s/%s", (int)k, path, prog);
            if (access(dir, X_OK) == 0) return true;
        }
        path += k + (path[k] == ':');
    }
    return false;
}

// Renders svg (len bytes) to PNG bytes (*png, free with free()). Returns 0, or prints the
// error and returns -1.
static int svg_to_png(const char *svg, size_t len, char **png, size_t *png_len) {
    const char *tmpdir = getenv("TMPDIR");
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s/ngd-plot-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        cli_error("set TMPDIR to a writable folder", "temporary file %s: %s", tmp, strerror(errno));
        return -1;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, svg + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    close(fd);
    int rc = -1, pfd[2] = {-1, -1};
    char *out = NULL;
    size_t n = 0, cap = 0;
    if (off != len || pipe(pfd) != 0) {
        cli_error(NULL, "temporary file %s: %s", tmp, strerror(errno));
        goto done;
    }
    pid_t pid = fork();
    if (pid < 0) {
        cli_error(NULL, "fork: %s", strerror(errno));
        goto done;
    }
    if (pid == 0) { // child: rsvg-convert FILE > pipe
        dup2(pfd[1], STDOUT_FILENO);
        close(pfd[0]), close(pfd[1]);
        char prog[] = "rsvg-convert", fmt[] = "--format=png"; // execvp takes char *const[]
        char *args[] = {prog, fmt, tmp, NULL};
        execvp(args[0], args);
        _exit(127);
    }
    close(pfd[1]);
    pfd[1] = -1;
    bool oom = false;
    for (;;) {
        if (n == cap) {
            char *b = realloc(out, cap ? 2 * cap : 65536);
            if (!b) {
                oom = true;
                break;
            }
            out = b, cap = cap ? 2 * cap : 65536;
        }
        ssize_t r = read(pfd[0], out + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += (size_t)r;
    }
    close(pfd[0]);
    pfd[0] = -1;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (oom)
        cli_error(NULL, "out of memory reading rsvg-convert's output");
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || n < 8 || memcmp(out, "\x89PNG", 4))
        cli_error("write an .svg instead (-o FILE.svg)", "rsvg-convert failed (exit status %d)",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    else {
        *png = out, *png_len = n;
        out = NULL;
        rc = 0;
    }
done:
    if (pfd[0] >= 0) close(pfd[0]);
    if (pfd[1] >= 0) close(pfd[1]);
    free(out);
    unlink(tmp);
    return rc;
}

// ---- the command ----
int cmd_plot(int argc, char **argv) {
    const char *output = NULL, *title = NULL;
    struct option lo[NOPTS + 1];
    cli_longopts(OPTS, NOPTS, lo);
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":ho:", lo, NULL)) != -1) {
        switch (c) {
        case 'o': output = optarg; break;
        case O_TITLE: title = optarg; break;
        case 'h': print_help(stdout); return NGD_EXIT_OK;
        default: return cli_opt_error("plot", lo, c, argv);
        }
    }
    if (!output) {
        cli_error("e.g. ngd plot runs/*.jsonl -o runs.svg", "plot needs -o FILE");
        return NGD_EXIT_USAGE;
    }
    const bool png = ends_with(output, ".png");
    if (!png && !ends_with(output, ".svg")) {
        cli_error("name the output FILE.svg (or FILE.png, rendered by rsvg-convert)",
                  "-o %s: unknown image type", output);
        return NGD_EXIT_USAGE;
    }
    if (optind >= argc) {
        cli_error("e.g. ngd plot runs/*.jsonl -o runs.svg", "plot needs at least one LOG file");
        return NGD_EXIT_USAGE;
    }
    if (png && !on_path("rsvg-convert")) {
        cli_error("write an .svg instead (-o FILE.svg), or install rsvg-convert (Debian: apt-get "
                  "install librsvg2-bin)",
                  "cannot write %s: rsvg-convert is not on PATH", output);
        return NGD_EXIT_FAIL;
    }
    for (int i = optind; i < argc; i++) // (the image would replace the log it draws)
        if (cli_same_file(argv[i], output)) {
            cli_error("give -o another file's path", "-o %s is one of the logs to plot", output);
            return NGD_EXIT_USAGE;
        }
    if (cli_image_target("-o", output, png)) return NGD_EXIT_FAIL; // (before the logs are read)
    const size_t n = (size_t)(argc - optind);
    if (n > 64) {
        cli_error("plot fewer runs at a time", "at most 64 LOG files (got %zu)", n);
        return NGD_EXIT_USAGE;
    }
    run *runs = calloc(n, sizeof *runs);
    sbuf b = {0};
    char *pngbuf = NULL;
    int rc = NGD_EXIT_FAIL;
    if (!runs) {
        cli_error(NULL, "out of memory");
        return NGD_EXIT_FAIL;
    }
    // a run that ended before its first step record (shorter than --log-every) is left out of
    // a plot of several, with a warning; alone, it is an error
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        const char *path = argv[optind + (int)i];
        const int r = read_log(path, &runs[kept]);
        if (r < 0) goto done;
        if (r == 0) {
            kept++;
            continue;
        }
        series_free(&runs[kept].loss), series_free(&runs[kept].acc);
        memset(&runs[kept], 0, sizeof runs[kept]);
        const char *why = r == 2 ? "empty (a run that has not written its first record yet)"
                                 : "no step records (the run ended before its first)";
        if (n == 1) {
            cli_error(
                "a run writes its first step record after --log-every steps (20 by default): train "
                "longer, or with a smaller --log-every",
                "%s: %s", path, why);
            goto done;
        }
        fprintf(stderr, "ngd: warning: %s: %s: left out of the plot\n", path, why);
    }
    if (kept == 0) {
        cli_error("a run writes its first step record after --log-every steps (20 by default)",
                  "none of the %zu logs has a step record", n);
        goto done;
    }
    const size_t nr = kept; // the runs plotted
    disambiguate(runs, nr);
    char deftitle[256];
    if (!title) { // "model on data" when all runs share them
        bool same = runs[0].has_summary;
        for (size_t i = 1; i < nr && same; i++)
            same = runs[i].has_summary && !strcmp(runs[i].model, runs[0].model) &&
                   !strcmp(runs[i].data, runs[0].data);
        if (same)
            snprintf(deftitle, sizeof deftitle, "%s on %s: %zu run%s", runs[0].model, runs[0].data,
                     nr, nr > 1 ? "s" : "");
        else
            snprintf(deftitle, sizeof deftitle, "ngd training runs (%zu)", nr);
        title = deftitle;
    }
    render(&b, runs, nr, title);
    if (b.oom) {
        cli_error(NULL, "out of memory");
        goto done;
    }
    const char *data = b.s;
    size_t len = b.len;
    if (png) {
        size_t plen = 0;
        if (svg_to_png(b.s, b.len, &pngbuf, &plen)) goto done;
        data = pngbuf, len = plen;
    }
    char msg[512];
    if (ngd_write_atomic_bytes(output, data, len, msg, sizeof msg) != 0) {
        cli_error(cli_write_hint(msg, "check that the folder of -o FILE exists and is writable"),
                  "-o %s: %s", output, msg);
        goto done;
    }
    printf("plot: %zu run%s -> %s\n", nr, nr > 1 ? "s" : "", output);
    rc = NGD_EXIT_OK;
done:
    for (size_t i = 0; i < n; i++)
        series_free(&runs[i].loss), series_free(&runs[i].acc);
    free(runs);
    free(b.s);
    free(pngbuf);
    return rc;
}
