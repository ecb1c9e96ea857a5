/*
 * replay.c — `ngd replay PATH...`: replays reference SINGD trajectories recorded from the
 * official implementation (format: shared/oracle/README.md) through the PUBLIC libngd API
 * only, and reports per case the largest relative error max|ours − ref| / max|ref| over all
 * steps of m_K, m_C, β1, K, C, the natural gradient and the parameters, with PASS/FAIL.
 *
 * Every layer kind the format describes is handled: Linear with any number of weight-sharing
 * dimensions, Conv2d (stride, padding incl. "same"/"valid", dilation, groups) through
 * ngd_unfold, expand/reduce, all loss_average values, any structure pair (block-diagonal
 * replays use the official transpose quirk, which the recordings contain).
 * Directories are scanned for *.json; files that are not trajectories are skipped with a note.
 */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "ngd.h"

#define MAXDIM 8

typedef struct {
    size_t ndim, shape[MAXDIM], n;
    float *data;
} tensor;

static void tensor_free(tensor *t) {
    free(t->data);
    memset(t, 0, sizeof *t);
}

// Fields of a case file: one absent takes its default; one present but not what it must be
// (a string, null, a negative or fractional size) is an input error naming it, never a
// silent default nor a cast of a negative double to size_t. jread keeps the first such.
typedef struct {
    char bad[96];
} jread;

static void jbad(jread *r, const char *name, const char *want) {
    if (!r->bad[0]) snprintf(r->bad, sizeof r->bad, "%s must be %s", name, want);
}

static size_t whole_of(jread *r, const cJSON *j, const char *name) {
    const double v = cJSON_IsNumber(j) ? j->valuedouble : -1.0;
    if (v >= 0 && v <= 1e12 && v == floor(v)) return (size_t)v;
    jbad(r, name, "a whole number >= 0");
    return 0;
}

// Reads {"shape": [...], "data": [...]} into t. Returns 0, or -1 with a message.
static int read_tensor(const cJSON *obj, const char *name, tensor *t, char *err, size_t cap) {
    memset(t, 0, sizeof *t);
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!j) {
        snprintf(err, cap, "missing field '%s'", name);
        return -1;
    }
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(j, "shape");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
    if (!cJSON_IsArray(shape) || !cJSON_IsArray(data)) {
        snprintf(err, cap, "field '%s' is not a tensor {shape, data}", name);
        return -1;
    }
    t->n = 1;
    const cJSON *it;
    cJSON_ArrayForEach(it, shape) {
        jread r = {""};
        const size_t d = t->ndim < MAXDIM ? whole_of(&r, it, "a dimension") : 0;
        if (t->ndim >= MAXDIM || r.bad[0] || (d && t->n > SIZE_MAX / d)) {
            snprintf(err, cap, "field '%s': bad shape", name);
            return -1;
        }
        t->shape[t->ndim++] = d;
        t->n *= d;
    }
    if ((size_t)cJSON_GetArraySize(data) != t->n) {
        snprintf(err, cap, "field '%s': %d values for shape of %zu", name, cJSON_GetArraySize(data),
                 t->n);
        return -1;
    }
    t->data = malloc((t->n ? t->n : 1) * sizeof(float));
    if (!t->data) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    size_t i = 0;
    cJSON_ArrayForEach(it, data) {
        if (!cJSON_IsNumber(it)) { // (cJSON gives a string or null the value 0)
            snprintf(err, cap, "field '%s': value %zu is not a number", name, i);
            free(t->data);
            t->data = NULL;
            return -1;
        }
        t->data[i++] = (float)it->valuedouble;
    }
    return 0;
}

static double num(jread *r, const cJSON *o, const char *name, double dflt) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!j) return dflt;
    if (cJSON_IsNumber(j) && isfinite(j->valuedouble)) return j->valuedouble;
    jbad(r, name, "a number");
    return dflt;
}

static size_t whole(jread *r, const cJSON *o, const char *name, size_t dflt) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, name);
    return j ? whole_of(r, j, name) : dflt;
}

// An int or [a, b] pair (Conv2d arguments).
static int pair(jread *r, const cJSON *o, const char *name, size_t dflt, size_t out[2]) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!j) {
        out[0] = out[1] = dflt;
        return 0;
    }
    if (cJSON_IsNumber(j)) {
        out[0] = out[1] = whole_of(r, j, name);
        return 0;
    }
    if (cJSON_IsArray(j) && cJSON_GetArraySize(j) == 2) {
        out[0] = whole_of(r, cJSON_GetArrayItem(j, 0), name);
        out[1] = whole_of(r, cJSON_GetArrayItem(j, 1), name);
        return 0;
    }
    return -1;
}

// The quantities compared, in report order.
enum { Q_MK, Q_MC, Q_BETA, Q_K, Q_C, Q_NAT, Q_PARAM, Q_COUNT };
static const char *const QNAMES[Q_COUNT] = {"m_K", "m_C", "beta1", "K", "C", "nat_grad", "weights"};

typedef struct {
    double err[Q_COUNT];
    bool seen[Q_COUNT];
} report;

// max|ours − ref| / max|ref| (absolute when ref is all zero)
static double rel_err(const float *ours, const float *ref, size_t n) {
    double num_ = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)ours[i] - (double)ref[i]);
        if (d > num_ || d != d) num_ = d;
        if (fabs((double)ref[i]) > den) den = fabs((double)ref[i]);
    }
    return den > 0 ? num_ / den : num_;
}

static void note(report *r, int q, double e) {
    r->seen[q] = true;
    if (e > r->err[q] || e != e) r->err[q] = e;
}

typedef struct {
    bool conv;
    ngd_conv_geom geom;
    size_t d_out, d_in, batch;
    bool bias;
} layer_desc;

// Reads the problem block; fills the layer description.
static int read_problem(const cJSON *root, layer_desc *L, char *err, size_t cap) {
    memset(L, 0, sizeof *L);
    jread r = {""};
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "problem");
    const cJSON *layer = cJSON_GetObjectItemCaseSensitive(p, "layer");
    if (!p || !cJSON_IsString(layer)) {
        snprintf(err, cap, "missing problem.layer");
        return -1;
    }
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(p, "bias");
    L->bias = !bias || cJSON_IsTrue(bias);
    L->batch = whole(&r, p, "batch_size", 0);
    if (!strcmp(layer->valuestring, "Linear")) {
        L->d_in = whole(&r, p, "d_in", 0);
        L->d_out = whole(&r, p, "d_out", 0);
    } else if (!strcmp(layer->valuestring, "Conv2d")) {
        L->conv = true;
        ngd_conv_geom *g = &L->geom;
        size_t k[2], s[2], d[2], pd[2] = {0, 0};
        if (pair(&r, p, "kernel_size", 1, k) || pair(&r, p, "stride", 1, s) ||
            pair(&r, p, "dilation", 1, d)) {
            snprintf(err, cap, "bad Conv2d geometry");
            return -1;
        }
        const cJSON *pad = cJSON_GetObjectItemCaseSensitive(p, "padding");
        if (cJSON_IsString(pad)) {
            if (!strcmp(pad->valuestring, "same")) {
                // docs/algorithms.md#conv2d-inputs: total δ(K−1), left = total//2; symmetric only
                for (int i = 0; i < 2; i++) {
                    size_t total = d[i] * (k[i] - 1);
                    if (total % 2) {
                        snprintf(err, cap,
                                 "padding 'same' with an even kernel is asymmetric "
                                 "(unsupported)");
                        return -1;
                    }
                    pd[i] = total / 2;
                }
            } else if (strcmp(pad->valuestring, "valid") != 0) {
                snprintf(err, cap, "unknown padding '%s'", pad->valuestring);
                return -1;
            }
        } else if (pair(&r, p, "padding", 0, pd)) {
            snprintf(err, cap, "bad padding");
            return -1;
        }
        g->c_in = whole(&r, p, "c_in", 0);
        g->groups = whole(&r, p, "groups", 1);
        g->k1 = k[0], g->k2 = k[1], g->s1 = s[0], g->s2 = s[1];
        g->p1 = pd[0], g->p2 = pd[1], g->dil1 = d[0], g->dil2 = d[1];
        const cJSON *xs = cJSON_GetObjectItemCaseSensitive(p, "x_shape");
        if (cJSON_GetArraySize(xs) != 4) {
            snprintf(err, cap, "Conv2d x_shape must have 4 dimensions");
            return -1;
        }
        g->h = whole_of(&r, cJSON_GetArrayItem(xs, 2), "x_shape[2]");
        g->w = whole_of(&r, cJSON_GetArrayItem(xs, 3), "x_shape[3]");
        L->d_out = whole(&r, p, "c_out", 0);
        L->d_in = g->groups ? g->c_in / g->groups * g->k1 * g->k2 : 0;
    } else {
        snprintf(err, cap, "unsupported layer '%s'", layer->valuestring);
        return -1;
    }
    if (r.bad[0]) {
        snprintf(err, cap, "problem.%s", r.bad);
        return -1;
    }
    if (!L->d_in || !L->d_out || !L->batch) {
        snprintf(err, cap, "problem sizes missing or zero");
        return -1;
    }
    return 0;
}

static int read_config(const cJSON *root, ngd_config *c, char *err, size_t cap) {
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(root, "hyperparameters");
    if (!h) {
        snprintf(err, cap, "missing hyperparameters");
        return -1;
    }
    *c = ngd_config_default(NGD_METHOD_SINGD);
    jread r = {""};
    c->lr = (float)num(&r, h, "lr", 1e-3);
    c->momentum = (float)num(&r, h, "momentum", 0.9);
    c->damping = (float)num(&r, h, "damping", 1e-3);
    c->weight_decay = (float)num(&r, h, "weight_decay", 0);
    c->lr_cov = (float)num(&r, h, "lr_cov", 1e-2);
    const double T = num(&r, h, "T", 10);
    if (!cJSON_GetObjectItemCaseSensitive(h, "alpha1_effective"))
        (void)num(&r, h, "alpha1", 0.5); // (only checked: read below)
    else
        (void)num(&r, h, "alpha1_effective", 0.5);
    if (r.bad[0]) {
        snprintf(err, cap, "hyperparameters.%s", r.bad);
        return -1;
    }
    if (!(T >= 1 && T <= 1e9) || T != floor(T)) { // (size_t) of anything else is undefined
        snprintf(err, cap, "hyperparameters.T must be a whole number >= 1 (got %g)", T);
        return -1;
    }
    c->T = (size_t)T;
    const cJSON *a1 = cJSON_GetObjectItemCaseSensitive(h, "alpha1_effective");
    if (!a1) a1 = cJSON_GetObjectItemCaseSensitive(h, "alpha1");
    c->alpha1 = cJSON_IsNumber(a1) ? (float)a1->valuedouble : 0.5f;
    c->kfac_like = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(h, "kfac_like"));
    c->normalize_lr_cov = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(h, "normalize_lr_cov"));
    const cJSON *la = cJSON_GetObjectItemCaseSensitive(h, "loss_average");
    if (cJSON_IsNull(la))
        c->loss_average = NGD_LOSS_SUM;
    else if (cJSON_IsString(la) && !strcmp(la->valuestring, "batch"))
        c->loss_average = NGD_LOSS_BATCH;
    else if (cJSON_IsString(la) && !strcmp(la->valuestring, "batch+sequence"))
        c->loss_average = NGD_LOSS_BATCH_SEQUENCE;
    else if (la) {
        snprintf(err, cap, "unknown loss_average");
        return -1;
    }
    const cJSON *ka = cJSON_GetObjectItemCaseSensitive(h, "kfac_approx");
    if (cJSON_IsString(ka)) {
        if (!strcmp(ka->valuestring, "reduce"))
            c->kfac_approx = NGD_KFAC_REDUCE;
        else if (strcmp(ka->valuestring, "expand") != 0) {
            snprintf(err, cap, "unknown kfac_approx '%s'", ka->valuestring);
            return -1;
        }
    }
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(h, "structures");
    if (cJSON_GetArraySize(st) != 2) {
        snprintf(err, cap, "hyperparameters.structures must have 2 names");
        return -1;
    }
    ngd_factor_spec *f[2] = {&c->structure_K, &c->structure_C};
    for (int i = 0; i < 2; i++) {
        const cJSON *nm = cJSON_GetArrayItem(st, i);
        if (!cJSON_IsString(nm) || ngd_structure_parse(nm->valuestring, f[i]) != NGD_OK) {
            snprintf(err, cap, "unknown structure '%s'",
                     cJSON_IsString(nm) ? nm->valuestring : "?");
            return -1;
        }
        // the recordings contain the official transpose quirk (docs/algorithms.md#block-diagonal)
        if (f[i]->kind == NGD_STRUCT_BLOCKDIAG) c->official_blockdiag_quirk = true;
    }
    c->keep_last_update = true;
    char msg[256];
    if (ngd_config_validate(c, msg, sizeof msg) != NGD_OK) { // a case libngd would refuse
        snprintf(err, cap, "hyperparameters: %s", msg);
        return -1;
    }
    return 0;
}

// Statistics of one step: a (rows x d_in) and g (rows x d_out) in the layout ngd expects.
static int build_stats(const layer_desc *L, const tensor *x, const tensor *dy, float **a, float **g,
                       size_t *rows, char *err, size_t cap) {
    *a = *g = NULL;
    if (!L->conv) {
        if (x->ndim < 2 || x->shape[x->ndim - 1] != L->d_in ||
            dy->shape[dy->ndim - 1] != L->d_out) {
            snprintf(err, cap, "x / grad_output shapes do not match the layer");
            return -1;
        }
        *rows = x->n / L->d_in;
        if (dy->n / L->d_out != *rows) {
            snprintf(err, cap, "x and grad_output have different numbers of rows");
            return -1;
        }
        *a = malloc(x->n * sizeof(float));
        *g = malloc(dy->n * sizeof(float));
        if (!*a || !*g) goto oom;
        memcpy(*a, x->data, x->n * sizeof(float));
        memcpy(*g, dy->data, dy->n * sizeof(float));
        return 0;
    }
    size_t oh = ngd_conv_out_h(&L->geom), ow = ngd_conv_out_w(&L->geom);
    if (dy->ndim != 4 || dy->shape[1] != L->d_out || dy->shape[2] != oh || dy->shape[3] != ow) {
        snprintf(err, cap, "grad_output shape does not match the convolution");
        return -1;
    }
    *rows = L->batch * oh * ow;
    *a = malloc(*rows * L->d_in * sizeof(float));
    *g = malloc(*rows * L->d_out * sizeof(float));
    if (!*a || !*g) goto oom;
    if (ngd_unfold(&L->geom, L->batch, x->data, false, *a) != NGD_OK) {
        snprintf(err, cap, "ngd_unfold rejected the geometry");
        return -1;
    }
    // "n c o1 o2 -> (n o1 o2) c" (docs/algorithms.md#output-gradients)
    for (size_t n = 0; n < L->batch; n++)
        for (size_t c = 0; c < L->d_out; c++)
            for (size_t p = 0; p < oh * ow; p++)
                (*g)[(n * oh * ow + p) * L->d_out + c] = dy->data[(n * L->d_out + c) * oh * ow + p];
    return 0;
oom:
    snprintf(err, cap, "out of memory");
    return -1;
}

typedef struct {
    double tol;
    bool verbose;
} replay_opts;

// Replays one file. Returns 1 pass, 0 fail, -1 error (message printed), 2 skipped.
static int replay_file(const char *path, const replay_opts *ro) {
    char err[512] = "";
    size_t len;
    char *text = cli_read_file(path, &len, "");
    if (!text) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) {
        cli_error("the file must be JSON as described in shared/oracle/README.md",
                  "%s: not valid JSON", path);
        return -1;
    }
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(root, "kind");
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    if (!cJSON_IsString(kind) || !strstr(kind->valuestring, "_trajectory")) {
        printf("SKIP %s (not a trajectory: %s)\n", base,
               cJSON_IsString(kind) ? kind->valuestring : "no 'kind'");
        cJSON_Delete(root);
        return 2;
    }
    int result = -1;
    layer_desc L;
    ngd_config cfg;
    ngd_optim *o = NULL;
    tensor W = {0}, B = {0};
    report rep;
    memset(&rep, 0, sizeof rep);
    if (read_problem(root, &L, err, sizeof err) || read_config(root, &cfg, err, sizeof err))
        goto done;
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(root, "initial");
    if (read_tensor(init, "weight", &W, err, sizeof err)) goto done;
    if (W.n != L.d_out * L.d_in) {
        snprintf(err, sizeof err, "initial.weight has %zu values, expected %zu", W.n,
                 L.d_out * L.d_in);
        goto done;
    }
    if (L.bias && read_tensor(init, "bias", &B, err, sizeof err)) goto done;
    size_t dK = L.d_in + (L.bias ? 1 : 0), np = L.d_out * dK;
    // the kind names the layer the problem describes; the initial factors, where recorded,
    // are the identities the optimizer starts from (of the layer's sizes)
    const char *want_kind = L.conv ? "singd_conv2d_trajectory" : "singd_linear_trajectory";
    if (strcmp(kind->valuestring, want_kind) != 0) {
        snprintf(err, sizeof err, "kind '%s' does not match problem.layer (%s: '%s')",
                 kind->valuestring, L.conv ? "Conv2d" : "Linear", want_kind);
        goto done;
    }
    const struct {
        const char *name;
        size_t d;
    } facs[2] = {{"K", dK}, {"C", L.d_out}};
    for (int i = 0; i < 2; i++) {
        if (!cJSON_GetObjectItemCaseSensitive(init, facs[i].name)) continue;
        tensor F;
        if (read_tensor(init, facs[i].name, &F, err, sizeof err)) goto done;
        bool eye = F.ndim == 2 && F.shape[0] == facs[i].d && F.shape[1] == facs[i].d;
        for (size_t r = 0; eye && r < facs[i].d; r++)
            for (size_t c = 0; c < facs[i].d; c++)
                eye = eye && F.data[r * facs[i].d + c] == (r == c ? 1.0f : 0.0f);
        tensor_free(&F);
        if (!eye) {
            snprintf(err, sizeof err,
                     "initial.%s is not the %zu x %zu identity the optimizer starts from",
                     facs[i].name, facs[i].d, facs[i].d);
            goto done;
        }
    }
    float *gw = calloc(W.n, sizeof(float)), *gb = calloc(L.d_out, sizeof(float));
    float *buf = malloc((dK * dK + np) * sizeof(float)),
          *ref = malloc((dK * dK + np) * sizeof(float));
    if (!gw || !gb || !buf || !ref) {
        snprintf(err, sizeof err, "out of memory");
        free(gw), free(gb), free(buf), free(ref);
        goto done;
    }
    ngd_status st = ngd_optim_create(&cfg, &o);
    int id = -1;
    ngd_layer layer = {.name = base,
                       .weight = W.data,
                       .weight_grad = gw,
                       .d_out = L.d_out,
                       .d_in = L.d_in,
                       .bias = L.bias ? B.data : NULL,
                       .bias_grad = L.bias ? gb : NULL};
    if (st == NGD_OK) st = ngd_optim_add_layer(o, &layer, &id);
    if (st != NGD_OK) {
        snprintf(err, sizeof err, "libngd: %s: %s", ngd_status_str(st), ngd_optim_errmsg(o));
        goto free_bufs;
    }
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(root, "steps"), *s;
    const cJSON *pj = cJSON_GetObjectItemCaseSensitive(root, "problem");
    const cJSON *want = cJSON_GetObjectItemCaseSensitive(pj, "steps");
    if (!cJSON_IsArray(steps) || cJSON_GetArraySize(steps) == 0 ||
        (cJSON_IsNumber(want) && want->valuedouble != (double)cJSON_GetArraySize(steps))) {
        snprintf(err, sizeof err, "%d recorded steps%s%.0f", cJSON_GetArraySize(steps),
                 cJSON_IsNumber(want) ? ", problem.steps says " : "",
                 cJSON_IsNumber(want) ? want->valuedouble : 0.0);
        goto free_bufs;
    }
    size_t t = 0;
    cJSON_ArrayForEach(s, steps) {
        tensor x, dy, tgw, tgb = {0};
        if (read_tensor(s, "x", &x, err, sizeof err)) goto free_bufs;
        if (read_tensor(s, "grad_output", &dy, err, sizeof err) ||
            read_tensor(s, "grad_weight", &tgw, err, sizeof err) ||
            (L.bias && read_tensor(s, "grad_bias", &tgb, err, sizeof err))) {
            tensor_free(&x), tensor_free(&dy), tensor_free(&tgw);
            goto free_bufs;
        }
        memcpy(gw, tgw.data, W.n * sizeof(float));
        if (L.bias) memcpy(gb, tgb.data, L.d_out * sizeof(float));
        float *a = NULL, *g = NULL;
        size_t rows = 0;
        int bad = build_stats(&L, &x, &dy, &a, &g, &rows, err, sizeof err);
        tensor_free(&x), tensor_free(&dy), tensor_free(&tgw), tensor_free(&tgb);
        if (!bad && ngd_optim_wants_stats(o))
            st = ngd_optim_observe(o, id, L.batch, ngd_matrix_f32(a, rows, L.d_in),
                                   ngd_matrix_f32(g, rows, L.d_out));
        free(a), free(g);
        if (bad) goto free_bufs;
        if (st == NGD_OK) st = ngd_optim_step(o);
        if (st != NGD_OK) {
            snprintf(err, sizeof err, "step %zu: libngd: %s: %s", t, ngd_status_str(st),
                     ngd_optim_errmsg(o));
            goto free_bufs;
        }
        // compare: dense factors, momenta, step sizes, natural gradient, parameters
        const struct {
            const char *field;
            char which;
            size_t d;
            int q;
        } mats[] = {{"K", 'K', dK, Q_K},
                    {"C", 'C', L.d_out, Q_C},
                    {"m_K", 'k', dK, Q_MK},
                    {"m_C", 'c', L.d_out, Q_MC}};
        for (size_t i = 0; i < 4; i++) {
            if (!cJSON_GetObjectItemCaseSensitive(s, mats[i].field)) continue;
            tensor r;
            if (read_tensor(s, mats[i].field, &r, err, sizeof err)) goto free_bufs;
            bool ok = r.n == mats[i].d * mats[i].d &&
                      ngd_optim_factor_dense(o, id, mats[i].which, buf, mats[i].d) == NGD_OK;
            if (ok)
                note(&rep, mats[i].q, rel_err(buf, r.data, r.n));
            else
                note(&rep, mats[i].q, INFINITY);
            tensor_free(&r);
        }
        ngd_layer_health h;
        ngd_optim_layer_health(o, id, &h);
        const char *bnames[2] = {"beta1_K", "beta1_C"};
        float bours[2] = {h.beta1_K, h.beta1_C};
        for (int i = 0; i < 2; i++) {
            const cJSON *bj = cJSON_GetObjectItemCaseSensitive(s, bnames[i]);
            if (cJSON_IsNumber(bj)) {
                float rv = (float)bj->valuedouble;
                note(&rep, Q_BETA, rel_err(&bours[i], &rv, 1));
            }
        }
        if (cJSON_GetObjectItemCaseSensitive(s, "nat_grad_weight")) {
            tensor nw, nb = {0};
            if (read_tensor(s, "nat_grad_weight", &nw, err, sizeof err)) goto free_bufs;
            if (L.bias && read_tensor(s, "nat_grad_bias", &nb, err, sizeof err)) {
                tensor_free(&nw);
                goto free_bufs;
            }
            for (size_t i = 0; i < L.d_out; i++) {
                memcpy(ref + i * dK, nw.data + i * L.d_in, L.d_in * sizeof(float));
                if (L.bias) ref[i * dK + L.d_in] = nb.data[i];
            }
            ngd_optim_last_update(o, id, buf, np);
            note(&rep, Q_NAT, rel_err(buf, ref, np));
            tensor_free(&nw), tensor_free(&nb);
        }
        tensor rw, rb = {0};
        if (read_tensor(s, "weight", &rw, err, sizeof err)) goto free_bufs;
        if (L.bias && read_tensor(s, "bias", &rb, err, sizeof err)) {
            tensor_free(&rw);
            goto free_bufs;
        }
        for (size_t i = 0; i < L.d_out; i++) {
            memcpy(ref + i * dK, rw.data + i * L.d_in, L.d_in * sizeof(float));
            memcpy(buf + i * dK, W.data + i * L.d_in, L.d_in * sizeof(float));
            if (L.bias) ref[i * dK + L.d_in] = rb.data[i], buf[i * dK + L.d_in] = B.data[i];
        }
        note(&rep, Q_PARAM, rel_err(buf, ref, np));
        tensor_free(&rw), tensor_free(&rb);
        t++;
    }
    {
        bool pass = t > 0;
        printf("CASE %s (%zu steps, %s%s/%s T=%zu%s%s)\n", base, t, L.conv ? "conv " : "",
               ngd_structure_name(cfg.structure_K.kind), ngd_structure_name(cfg.structure_C.kind),
               cfg.T, cfg.kfac_like ? " kfac_like" : "", cfg.normalize_lr_cov ? " normalize" : "");
        printf("    ");
        for (int q = 0; q < Q_COUNT; q++) {
            if (!rep.seen[q]) {
                printf("%s -  ", QNAMES[q]);
                continue;
            }
            printf("%s %.2e  ", QNAMES[q], rep.err[q]);
            if (!(rep.err[q] <= ro->tol)) pass = false;
        }
        printf("\n%s %s\n", pass ? "PASS" : "FAIL", base);
        result = pass ? 1 : 0;
    }
free_bufs:
    free(gw), free(gb), free(buf), free(ref);
done:
    if (result < 0) cli_error(NULL, "%s: %s", path, err);
    ngd_optim_free(o);
    tensor_free(&W), tensor_free(&B);
    cJSON_Delete(root);
    return result;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// Replays a file, or every *.json of a directory (sorted). Accumulates counts.
static void replay_path(const char *path, const replay_opts *ro, int *pass, int *fail,
                        int *errors) {
    struct stat sb;
    if (stat(path, &sb) != 0) {
        cli_error("give a trajectory file or a folder of them", "%s: %s", path, strerror(errno));
        (*errors)++;
        return;
    }
    if (!S_ISDIR(sb.st_mode)) {
        int r = replay_file(path, ro);
        if (r == 1)
            (*pass)++;
        else if (r == 0)
            (*fail)++;
        else if (r < 0)
            (*errors)++;
        return;
    }
    DIR *d = opendir(path);
    if (!d) {
        cli_error(NULL, "%s: %s", path, strerror(errno));
        (*errors)++;
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 5, ".json") != 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) break;
            names = nn;
        }
        size_t pl = strlen(path) + l + 2;
        names[n] = malloc(pl);
        if (!names[n]) break;
        snprintf(names[n], pl, "%s/%s", path, de->d_name);
        n++;
    }
    closedir(d);
    if (n == 0) {
        cli_error("give a folder of trajectory files, e.g. ../shared/oracle",
                  "%s: no case files (*.json) found there", path);
        (*errors)++;
    }
    if (n) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        replay_path(names[i], ro, pass, fail, errors);
        free(names[i]);
    }
    free(names);
}

static void replay_usage(FILE *f) {
    fprintf(f,
            "usage: ngd replay [options] PATH...\n\n"
            "Replays reference SINGD trajectories (JSON, shared/oracle/README.md) through the\n"
            "public libngd API. PATH is a file or a folder of *.json files. For each case prints\n"
            "max|ours-ref|/max|ref| over all steps of m_K, m_C, beta1, K, C, the natural\n"
            "gradient and the weights, and PASS/FAIL. Exits 1 if any case fails or errs.\n\n"
            "options:\n"
            "  --tol X      largest relative error that passes (default 1e-4: float32)\n"
            "  -h, --help   this text\n");
}

int cmd_replay(int argc, char **argv) {
    replay_opts ro = {1e-4, false};
    static const struct option opts[] = {
        {"tol", required_argument, NULL, 't'}, {"help", no_argument, NULL, 'h'}, {0, 0, 0, 0}};
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 't': {
            if (cli_parse_real("tol", optarg, &ro.tol)) return NGD_EXIT_USAGE;
            if (!(ro.tol > 0)) {
                cli_error("--tol takes a positive number, e.g. 1e-4", "bad --tol '%s'", optarg);
                return NGD_EXIT_USAGE;
            }
            break;
        }
        case 'h': replay_usage(stdout); return NGD_EXIT_OK;
        default: return cli_opt_error("replay", opts, c, argv);
        }
    }
    if (optind >= argc) {
        cli_error("e.g. ngd replay ../shared/oracle", "no PATH given");
        return NGD_EXIT_USAGE;
    }
    int pass = 0, fail = 0, errors = 0;
    for (int i = optind; i < argc; i++)
        replay_path(argv[i], &ro, &pass, &fail, &errors);
    printf("replay: %d passed, %d failed, %d errors (tolerance %.1e)\n", pass, fail, errors,
           ro.tol);
    if (pass + fail + errors == 0) // files, but none a trajectory (each said SKIP)
        cli_error("the files must be trajectories as described in shared/oracle/README.md",
                  "no replay cases found");
    return (fail || errors || pass == 0) ? NGD_EXIT_FAIL : NGD_EXIT_OK;
}
