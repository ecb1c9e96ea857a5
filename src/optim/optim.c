/*
 * optim.c — the shared optimizer driver: registration of layers and parameters, the step
 * schedule (statistics steps, preconditioner updates, preconditioning, first-order rule),
 * non-finite skipping (pending statistics discarded, skip counted: DESIGN.md "Numerics"),
 * the loss-scale bookkeeping of docs/algorithms.md#loss-scale, per-entry health, and introspection.
 * No method's arithmetic lives here: preconditioners are behind ngd_method_ops, and the
 * first-order rules (SGD, AdamW, the K-FAC family's with its clips) behind ngd_rule
 * (method.h; sgd.c, adamw.c, kfac_rule.c), which the driver calls row by row.
 *
 * Memory: per-entry state is allocated when the entry is added; the shared workspace
 * (Ĝ, P and the method's scratch for the largest layer, the methods' byte scratch from their
 * scratch_bytes queries, the global clip's buffers) is planned once, at the first observe or
 * step after the last registration (again when a B layer's tracks are decided, or a load
 * changes shapes). After the first step nothing allocates, so no later call fails for memory.
 *
 * All-or-nothing (include/ngd.h): every call that fails leaves the parameters and the
 * optimizer state as they were. A step plans and checks everything that can fail first,
 * then does every layer's preconditioner maintenance (which cannot fail once planned but
 * for broken invariants, NGD_ERR_INTERNAL), and only then touches a parameter.
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "blas.h"
#include "method.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ---- errors and logging ----

// One message at a time per handle: layers' updates may run side by side (update_all). The
// handle's own recursive lock (a log callback may fail or log again): an unnamed OpenMP
// critical section was the lock of every unnamed critical section in the program, so a client
// that called libngd from inside one of its own (or logged through one) waited on itself for
// ever; one lock for all handles hung a callback of one handle that waited for another's
// threads logging (reviews' programs, 2026-12-05). (A named critical section would export its
// lock from libngd.so.)
static void msg_begin(const ngd_optim *o) {
    pthread_mutex_lock((pthread_mutex_t *)(uintptr_t)&o->msg_lock);
}
static void msg_end(const ngd_optim *o) {
    pthread_mutex_unlock((pthread_mutex_t *)(uintptr_t)&o->msg_lock);
}

ngd_status ngd_optim_fail(ngd_optim *o, ngd_status s, const char *fmt, ...) {
    if (o) {
        va_list ap;
        va_start(ap, fmt);
        msg_begin(o);
        vsnprintf(o->err, sizeof o->err, fmt, ap);
        msg_end(o);
        va_end(ap);
    }
    return s;
}

void ngd_optim_log(const ngd_optim *o, const char *fmt, ...) {
    if (!o || !o->cfg.log_fn) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    msg_begin(o);
    o->cfg.log_fn(o->cfg.log_user, msg);
    msg_end(o);
}

const char *ngd_optim_errmsg(const ngd_optim *o) { return o ? o->err : "optimizer is NULL"; }

// ---- methods ----

static const ngd_method_ops *method_ops(ngd_method m) {
    switch (m) {
    case NGD_METHOD_SGD: return &ngd_sgd_ops;
    case NGD_METHOD_ADAMW: return &ngd_adamw_ops;
    case NGD_METHOD_SINGD:
    case NGD_METHOD_INGD:
    case NGD_METHOD_IKFAC: return &ngd_singd_ops;
    case NGD_METHOD_KFAC: return &ngd_kfac_ops;
    case NGD_METHOD_RSKFAC: return &ngd_rskfac_ops;
    case NGD_METHOD_SREKFAC: return &ngd_srekfac_ops;
    case NGD_METHOD_BKFAC: return &ngd_bkfac_ops;
    case NGD_METHOD_BRKFAC: return &ngd_brkfac_ops;
    case NGD_METHOD_BRCKFAC: return &ngd_brckfac_ops;
    default: return NULL;
    }
}

// INGD and IKFAC are presets of SINGD: normalise the method, and force alpha1 = 0 under
// kfac_like as the official code does (#singd-options, with a logged warning).
static void normalise_config(const ngd_optim *o, ngd_config *c, const char *who) {
    if (c->method == NGD_METHOD_INGD) c->method = NGD_METHOD_SINGD;
    if (c->method == NGD_METHOD_IKFAC) {
        c->method = NGD_METHOD_SINGD;
        c->kfac_like = true;
    }
    if (c->method == NGD_METHOD_SINGD && c->kfac_like && c->alpha1 != 0.0f) {
        ngd_optim_log(o, "%s: kfac_like forces alpha1 = 0 (was %g)", who, (double)c->alpha1);
        c->alpha1 = 0.0f;
    }
}

// ---- lifecycle ----

ngd_status ngd_optim_create(const ngd_config *c, ngd_optim **out) {
    if (!out) return NGD_ERR_ARG;
    *out = NULL;
    char msg[256];
    if (ngd_config_validate(c, msg, sizeof msg) != NGD_OK) return NGD_ERR_ARG;
    ngd_config cfg = *c;
    const ngd_method_ops *ops = method_ops(cfg.method);
    if (!ops) return NGD_ERR_ARG;
    ngd_optim *o = ngd_calloc(1, sizeof *o);
    if (!o) return NGD_ERR_NOMEM;
    pthread_mutexattr_t ma;
    bool lock_ok = pthread_mutexattr_init(&ma) == 0;
    lock_ok = lock_ok && pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE) == 0 &&
              pthread_mutex_init(&o->msg_lock, &ma) == 0;
    pthread_mutexattr_destroy(&ma);
    if (!lock_ok) {
        ngd_free(o);
        return NGD_ERR_NOMEM;
    }
    o->cfg = cfg;
    normalise_config(o, &o->cfg, "config"); // (in place: it logs through o->cfg.log_fn)
    o->ops = ops;
    // s₋₁ (step 0's statistics assume it); s_t is 1 until ngd_optim_set_grad_scale says
    // otherwise (the official package: "the scale supplied for this step, or 1")
    o->scale_prev = cfg.init_grad_scale;
    o->scale_cur = 1.0f;
    o->lr_scale = 1.0f;
    o->micro = 1;
    o->comm.size = 1;
    *out = o;
    return NGD_OK;
}

static void entry_free(const ngd_optim *o, ngd_entry *e) {
    if (e->kind == NGD_ENTRY_LAYER && o->ops->layer_free) o->ops->layer_free(e);
    ngd_free(e->name);
    ngd_free(e->buf);
    ngd_free(e->buf2);
    ngd_free(e->last);
    ngd_free(e->pk);
}

void ngd_optim_free(ngd_optim *o) {
    if (!o) return;
    for (size_t i = 0; i < o->n; i++)
        entry_free(o, &o->e[i]);
    ngd_free(o->e);
    ngd_free(o->ws);
    ngd_free(o->scratch);
    ngd_free(o->upd_idx);
    ngd_free(o->upd_st);
    pthread_mutex_destroy(&o->msg_lock);
    ngd_free(o);
}

static ngd_status grow_entries(ngd_optim *o) {
    if (o->n < o->cap) return NGD_OK;
    size_t cap = o->cap ? 2 * o->cap : 8;
    ngd_entry *e = ngd_realloc(o->e, cap, sizeof *e);
    if (!e) return ngd_optim_fail(o, NGD_ERR_NOMEM, "out of memory growing the entry table");
    o->e = e;
    o->cap = cap;
    return NGD_OK;
}

// Effective config of a new entry: the optimizer's, or a validated override.
// A parameter (not a layer) may also take AdamW's or SGD's rule under any method.
static ngd_status entry_config(ngd_optim *o, const ngd_config *ov, const char *name, bool param,
                               ngd_config *out) {
    if (!ov) {
        *out = o->cfg;
        return NGD_OK;
    }
    char msg[256];
    if (ngd_config_validate(ov, msg, sizeof msg) != NGD_OK)
        return ngd_optim_fail(o, NGD_ERR_ARG, "'%s': override: %s", name, msg);
    ngd_config c = *ov;
    normalise_config(o, &c, name);
    bool first_order = c.method == NGD_METHOD_SGD || c.method == NGD_METHOD_ADAMW;
    if (c.method != o->cfg.method && !(param && first_order))
        return ngd_optim_fail(o, NGD_ERR_ARG,
                              "'%s': override method %s differs from the optimizer's %s (a "
                              "parameter may also take sgd or adamw)",
                              name, ngd_method_name(c.method), ngd_method_name(o->cfg.method));
    // The KL clip is global: ν from every layer's term and the optimizer's κ. An override that
    // asked for it under a per-layer clip left its layer unclipped; one that changed the clip or
    // κ under it was ignored. Both refused.
    const ngd_kfac_options *k = &c.kfac, *ok = &o->cfg.kfac;
    if (!param && (k->clip == NGD_CLIP_KL || ok->clip == NGD_CLIP_KL) &&
        (k->clip != ok->clip || k->clip_kappa != ok->clip_kappa) &&
        o->cfg.method >= NGD_METHOD_KFAC && o->cfg.method <= NGD_METHOD_BRCKFAC)
        return ngd_optim_fail(o, NGD_ERR_ARG,
                              "'%s': override kfac.clip %s (kappa %g) under the optimizer's %s "
                              "(kappa %g): the KL clip is global, over every layer with the "
                              "optimizer's kappa; set it on the optimizer, not per layer",
                              name, k->clip == NGD_CLIP_KL ? "kl" : "rms/none",
                              (double)k->clip_kappa, ok->clip == NGD_CLIP_KL ? "kl" : "rms/none",
                              (double)ok->clip_kappa);
    *out = c;
    return NGD_OK;
}

static ngd_status check_addable(ngd_optim *o, const void *x, int *out_id) {
    if (!o) return NGD_ERR_ARG;
    if (!x || !out_id) return ngd_optim_fail(o, NGD_ERR_ARG, "NULL argument");
    if (o->steps > 0)
        return ngd_optim_fail(o, NGD_ERR_STATE, "entries can only be added before the first step");
    if (o->n >= (size_t)INT32_MAX) return ngd_optim_fail(o, NGD_ERR_ARG, "too many entries");
    return NGD_OK;
}

// The update rule of an entry: the method's for layers; AdamW's for parameters configured
// with the AdamW method (the optimizer's or an override's), SGD's for every other parameter.
static const ngd_rule *entry_rule(const ngd_optim *o, const ngd_entry *e) {
    if (e->kind == NGD_ENTRY_PARAM)
        return e->cfg.method == NGD_METHOD_ADAMW ? &ngd_rule_adamw : &ngd_rule_sgd;
    return o->ops->rule;
}

// Whether the optimizer's rule is a global clip (every layer preconditioned before any update).
static bool global_rule(const ngd_optim *o) {
    return o->ops->rule->global && o->ops->rule->global(&o->cfg);
}

static ngd_status alloc_first_order(ngd_optim *o, ngd_entry *e, size_t count) {
    bool adam = entry_rule(o, e)->moments == 2;
    if (adam || e->cfg.momentum != 0.0f) {
        e->buf = ngd_calloc(count, sizeof(float));
        if (!e->buf) return NGD_ERR_NOMEM;
    }
    if (adam) {
        e->buf2 = ngd_calloc(count, sizeof(float));
        if (!e->buf2) return NGD_ERR_NOMEM;
    }
    if (e->cfg.keep_last_update) {
        e->last = ngd_calloc(count, sizeof(float));
        if (!e->last) return NGD_ERR_NOMEM;
    }
    return NGD_OK;
}

// A name a checkpoint can hold (ngd.h: NGD_NAME_MAX)
static ngd_status check_name(ngd_optim *o, const char *what, const char *name) {
    const size_t n = strlen(name);
    if (n <= NGD_NAME_MAX) return NGD_OK;
    return ngd_optim_fail(o, NGD_ERR_ARG, "%s name of %zu bytes ('%.40s...'): at most %d", what, n,
                          name, NGD_NAME_MAX);
}

ngd_status ngd_optim_add_layer(ngd_optim *o, const ngd_layer *l, int *out_id) {
    ngd_status s = check_addable(o, l, out_id);
    if (s) return s;
    char autoname[32];
    snprintf(autoname, sizeof autoname, "layer%zu", o->n);
    const char *name = l->name ? l->name : autoname;
    if ((s = check_name(o, "layer", name))) return s;
    if (!l->weight || !l->weight_grad)
        return ngd_optim_fail(o, NGD_ERR_ARG, "layer '%s': weight and weight_grad are required",
                              name);
    if (l->d_out == 0 || l->d_in == 0)
        return ngd_optim_fail(o, NGD_ERR_ARG,
                              "layer '%s': d_out and d_in must be >= 1 (got "
                              "%zu x %zu)",
                              name, l->d_out, l->d_in);
    if ((l->bias == NULL) != (l->bias_grad == NULL))
        return ngd_optim_fail(o, NGD_ERR_ARG,
                              "layer '%s': bias and bias_grad must both be set "
                              "or both be NULL",
                              name);
    int ok = 1;
    size_t count = ngd_mul_size(l->d_out, l->d_in + (l->bias ? 1 : 0), &ok);
    if (!ok || (l->bias && l->d_in == SIZE_MAX))
        return ngd_optim_fail(o, NGD_ERR_ARG, "layer '%s': size overflows", name);
    // a factored method's factor sides: their squares (dense factors, workspaces) and sums of
    // a few of them, in bytes, must not wrap (2^31 x 2^31 wrapped to 0: a crash in the
    // identity's fill); no one trains a side past 2^28 (a 2^28-wide layer's W is 1 GiB a row)
    const size_t side = NGD_MAX(l->d_out, l->d_in + (l->bias ? 1 : 0));
    if (o->ops->layer_init && side > NGD_FACTOR_SIDE_MAX)
        return ngd_optim_fail(o, NGD_ERR_ARG,
                              "layer '%s': %zu x %zu%s is wider than the %zu a Kronecker factor "
                              "side may have",
                              name, l->d_out, l->d_in, l->bias ? " (+ bias)" : "",
                              (size_t)NGD_FACTOR_SIDE_MAX);
    if ((s = grow_entries(o))) return s;
    ngd_entry *e = &o->e[o->n];
    memset(e, 0, sizeof *e);
    if ((s = entry_config(o, l->override, name, false, &e->cfg))) return s;
    e->kind = NGD_ENTRY_LAYER;
    e->owner = -1;
    e->name = ngd_strdup(name);
    e->w = l->weight;
    e->gw = l->weight_grad;
    e->b = l->bias;
    e->gb = l->bias_grad;
    e->d_out = l->d_out;
    e->d_in = l->d_in;
    e->d_K = l->d_in + (l->bias ? 1 : 0);
    e->n = count;
    e->h.name = e->name;
    if (!e->name || alloc_first_order(o, e, count) != NGD_OK) {
        entry_free(o, e);
        return ngd_optim_fail(o, NGD_ERR_NOMEM, "layer '%s': out of memory", name);
    }
    if (o->ops->layer_init && (s = o->ops->layer_init(o, e)) != NGD_OK) {
        ngd_free(e->name);
        ngd_free(e->buf);
        ngd_free(e->buf2);
        ngd_free(e->last);
        return s; // layer_init set the message and freed its own state
    }
    o->planned = false;
    *out_id = (int)o->n++;
    return NGD_OK;
}

ngd_status ngd_optim_add_param(ngd_optim *o, const char *name, float *param, const float *grad,
                               size_t n, const ngd_config *override, int *out_id) {
    ngd_status s = check_addable(o, param, out_id);
    if (s) return s;
    char autoname[32];
    snprintf(autoname, sizeof autoname, "param%zu", o->n);
    const char *nm = name ? name : autoname;
    if ((s = check_name(o, "param", nm))) return s;
    if (!grad) return ngd_optim_fail(o, NGD_ERR_ARG, "param '%s': grad is NULL", nm);
    if (n == 0) return ngd_optim_fail(o, NGD_ERR_ARG, "param '%s': n must be >= 1", nm);
    if ((s = grow_entries(o))) return s;
    ngd_entry *e = &o->e[o->n];
    memset(e, 0, sizeof *e);
    if ((s = entry_config(o, override, nm, true, &e->cfg))) return s;
    e->kind = NGD_ENTRY_PARAM;
    e->owner = -1;
    e->name = ngd_strdup(nm);
    e->w = param;
    e->gw = grad;
    e->d_out = 1;
    e->d_in = n;
    e->d_K = n;
    e->n = n;
    e->h.name = e->name;
    if (!e->name || alloc_first_order(o, e, n) != NGD_OK) {
        entry_free(o, e);
        return ngd_optim_fail(o, NGD_ERR_NOMEM, "param '%s': out of memory", nm);
    }
    o->planned = false;
    *out_id = (int)o->n++;
    return NGD_OK;
}

_Thread_local size_t ngd_update_slot;

// At most this many bytes of scratch for the second and further threads of the side-by-side
// updates (K-FAC on vgg16bn: 170 MB of eigensolver work a slot)
#define SIDE_SCRATCH_MAX ((size_t)256 << 20)

// The threads that may run layers' updates side by side (update_heavy): one scratch slot of
// `bytes` each
static size_t update_slots(const ngd_optim *o, size_t bytes) {
    size_t layers = 0;
    for (size_t i = 0; i < o->n; i++)
        layers += o->e[i].kind == NGD_ENTRY_LAYER;
    size_t t = 1;
#ifdef _OPENMP
    if (o->ops->update_heavy && o->comm.size <= 1) t = (size_t)omp_get_max_threads();
#endif
    if (bytes > 0) t = NGD_MIN(t, 1 + SIDE_SCRATCH_MAX / bytes);
    return NGD_MAX(1, NGD_MIN(t, layers));
}

ngd_status ngd_optim_reserve_scratch(ngd_optim *o, size_t bytes) {
    const size_t slots = update_slots(o, NGD_MAX(bytes, o->scratch_n));
    if (bytes <= o->scratch_n && slots <= o->scratch_slots) return NGD_OK;
    if (NGD_MAX(bytes, o->scratch_n) == 0) { // nothing to allocate
        o->scratch_slots = slots;
        return NGD_OK;
    }
    const size_t n = (NGD_MAX(bytes, o->scratch_n) + 63) / 64 * 64; // (slots on cache lines)
    int ok = 1;
    const size_t total = ngd_mul_size(n, slots, &ok);
    void *p = ok ? ngd_malloc(total, 1) : NULL;
    if (!p)
        return ngd_optim_fail(o, NGD_ERR_NOMEM, "out of memory planning %zu bytes of scratch",
                              bytes);
    ngd_free(o->scratch);
    o->scratch = p;
    o->scratch_n = n;
    o->scratch_slots = slots;
    return NGD_OK;
}

// Plans the shared workspace: Ĝ and P of the largest layer, plus the method's scratch.
// Either everything is planned or nothing that is visible changed (a buffer is replaced
// only by a larger one; the KL clip's buffers are not state).
static ngd_status plan(ngd_optim *o) {
    if (o->planned) return NGD_OK;
    size_t gp = 0, mw = 0, sb = 0;
    for (size_t i = 0; i < o->n; i++) {
        ngd_entry *e = &o->e[i];
        gp = NGD_MAX(gp, e->n);
        if (e->kind == NGD_ENTRY_LAYER && o->ops->precond_ws)
            mw = NGD_MAX(mw, o->ops->precond_ws(e));
        if (e->kind == NGD_ENTRY_LAYER && o->ops->scratch_bytes)
            sb = NGD_MAX(sb, o->ops->scratch_bytes(e));
    }
    ngd_status s = ngd_optim_reserve_scratch(o, sb);
    if (s) return s;
    if (o->ops->update_heavy) { // the side-by-side updates' order and results
        size_t *idx = ngd_malloc(NGD_MAX(o->n, 1), sizeof *idx);
        ngd_status *st = ngd_malloc(NGD_MAX(o->n, 1), sizeof *st);
        if (!idx || !st) {
            ngd_free(idx), ngd_free(st);
            return ngd_optim_fail(o, NGD_ERR_NOMEM, "out of memory planning the updates");
        }
        ngd_free(o->upd_idx), ngd_free(o->upd_st);
        o->upd_idx = idx, o->upd_st = st;
    }
    // a global clip (the K-FAC family's KL clip) needs every layer's preconditioned gradient
    // before any update: one buffer per layer
    if (global_rule(o)) {
        for (size_t i = 0; i < o->n; i++) {
            ngd_entry *e = &o->e[i];
            if (e->kind != NGD_ENTRY_LAYER || e->pk) continue;
            if (!(e->pk = ngd_malloc(e->n, sizeof(float))))
                return ngd_optim_fail(o, NGD_ERR_NOMEM, "out of memory for the KL clip");
        }
    }
    size_t need = 2 * gp + mw;
    if (need > o->ws_n) {
        float *ws = ngd_malloc(need, sizeof(float));
        if (!ws)
            return ngd_optim_fail(o, NGD_ERR_NOMEM,
                                  "out of memory planning %zu floats of "
                                  "workspace",
                                  need);
        ngd_free(o->ws);
        o->ws = ws;
        o->ws_n = need;
    }
    o->gp = gp;
    o->planned = true;
    return NGD_OK;
}

// The method's part of the shared workspace (valid after plan()).
static float *method_ws(const ngd_optim *o) { return o->ws + 2 * o->gp; }

// ---- per-step calls ----

static ngd_entry *get_entry(ngd_optim *o, int id) {
    if (!o || id < 0 || (size_t)id >= o->n) return NULL;
    return &o->e[id];
}

static bool entry_wants(const ngd_optim *o, const ngd_entry *e) {
    return e->kind == NGD_ENTRY_LAYER && o->ops->wants_stats && o->ops->wants_stats(e, o->steps);
}

bool ngd_optim_wants_stats(const ngd_optim *o) {
    if (!o) return false;
    for (size_t i = 0; i < o->n; i++)
        if (entry_wants(o, &o->e[i])) return true;
    return false;
}

bool ngd_optim_layer_wants_stats(const ngd_optim *o, int layer) {
    if (!o || layer < 0 || (size_t)layer >= o->n) return false;
    return entry_wants(o, &o->e[layer]);
}

// The layer entry of an observe call, or NULL with the message set
static ngd_entry *observe_entry(ngd_optim *o, int layer, const char *fn) {
    ngd_entry *e = get_entry(o, layer);
    if (!e) {
        ngd_optim_fail(o, NGD_ERR_LAYER, "%s: unknown layer id %d (have %zu)", fn, layer, o->n);
        return NULL;
    }
    if (e->kind != NGD_ENTRY_LAYER) {
        ngd_optim_fail(o, NGD_ERR_LAYER, "%s: id %d ('%s') is a parameter, not a layer", fn, layer,
                       e->name);
        return NULL;
    }
    return e;
}

static ngd_status observe_checked(ngd_optim *o, ngd_entry *e, size_t batch, ngd_matrix a,
                                  ngd_matrix g);

ngd_status ngd_optim_observe(ngd_optim *o, int layer, size_t batch, ngd_matrix a, ngd_matrix g) {
    if (!o) return NGD_ERR_ARG;
    ngd_entry *e = observe_entry(o, layer, "observe");
    if (!e) return NGD_ERR_LAYER;
    if (a.dtype == NGD_DT_UNFOLD) // (libngd's own, for ngd_optim_observe_conv only)
        return ngd_optim_fail(o, NGD_ERR_ARG, "layer '%s': a has unknown dtype %d", e->name,
                              (int)a.dtype);
    return observe_checked(o, e, batch, a, g);
}

ngd_status ngd_optim_observe_conv(ngd_optim *o, int layer, size_t batch, const ngd_conv_geom *geom,
                                  ngd_matrix x, ngd_matrix g) {
    if (!o) return NGD_ERR_ARG;
    ngd_entry *e = observe_entry(o, layer, "observe_conv");
    if (!e) return NGD_ERR_LAYER;
    const char *nm = e->name;
    if (!geom) return ngd_optim_fail(o, NGD_ERR_ARG, "layer '%s': the geometry is NULL", nm);
    if (!x.data) return ngd_optim_fail(o, NGD_ERR_ARG, "layer '%s': x has NULL data", nm);
    if (x.dtype != NGD_F32 && x.dtype != NGD_BF16)
        return ngd_optim_fail(o, NGD_ERR_ARG, "layer '%s': x has unknown dtype %d", nm,
                              (int)x.dtype);
    if (batch == 0) return ngd_optim_fail(o, NGD_ERR_ARG, "layer '%s': batch is 0", nm);
    ngd_unfold_src u;
    if (!ngd_unfold_src_init(&u, geom, batch, x)) {
        // (a valid geometry's c_in·h·w is a size: ngd_conv_out_h says 0 where it would wrap)
        const bool valid = ngd_conv_out_h(geom) && ngd_conv_out_w(geom);
        if (valid && (x.rows != batch || x.cols != geom->c_in * geom->h * geom->w || x.ld < x.cols))
            return ngd_optim_fail(o, NGD_ERR_SHAPE,
                                  "layer '%s': x is %zu x %zu (ld %zu), expected batch %zu rows "
                                  "of c_in*h*w = %zu",
                                  nm, x.rows, x.cols, x.ld, batch, geom->c_in * geom->h * geom->w);
        if (valid)
            return ngd_optim_fail(o, NGD_ERR_ARG,
                                  "layer '%s': batch %zu times the %zu x %zu output positions "
                                  "overflows a size",
                                  nm, batch, ngd_conv_out_h(geom), ngd_conv_out_w(geom));
        return ngd_optim_fail(o, NGD_ERR_ARG,
                              "layer '%s': invalid convolution geometry (c_in %zu, groups %zu, "
                              "input %zux%zu, kernel %zux%zu, stride %zux%zu, padding %zux%zu, "
                              "dilation %zux%zu)",
                              nm, geom->c_in, geom->groups, geom->h, geom->w, geom->k1, geom->k2,
                              geom->s1, geom->s2, geom->p1, geom->p2, geom->dil1, geom->dil2);
    }
    // (the shapes in the caller's terms: the unfolded matrix is libngd's own)
    const size_t rows = batch * u.oh * u.ow;
    if (u.cols != e->d_in)
        return ngd_optim_fail(o, NGD_ERR_SHAPE,
                              "layer '%s': the geometry's (c_in/groups)*k1*k2 = %zu, the layer's "
                              "d_in is %zu",
                              nm, u.cols, e->d_in);
    if (g.rows != rows)
        return ngd_optim_fail(o, NGD_ERR_SHAPE,
                              "layer '%s': g has %zu rows, expected batch*oh*ow = %zu*%zu*%zu = "
                              "%zu",
                              nm, g.rows, batch, u.oh, u.ow, rows);
    if (!e->unfolded) { // its observe scratch grows to hold a Gram block (planned again)
        e->unfolded = true;
        o->planned = false;
    }
    ngd_matrix a = {&u, rows, u.cols, u.cols, NGD_DT_UNFOLD};
    return observe_checked(o, e, batch, a, g);
}

static ngd_status observe_checked(ngd_optim *o, ngd_entry *e, size_t batch, ngd_matrix a,
                                  ngd_matrix g) {
    ngd_status s = ngd_stats_check(o, e, batch, &a, &g);
    if (s) return s;
    if (!entry_wants(o, e)) return NGD_OK;
    // (a step's statistics scaled for two numbers of micro-batches are no batch's)
    if (o->obs_micro && o->obs_micro != o->micro)
        return ngd_optim_fail(o, NGD_ERR_STATE,
                              "layer '%s': micro-batches changed from %zu to %zu between this "
                              "step's observes: set it before the step's first observe",
                              e->name, o->obs_micro, o->micro);
    if ((s = plan(o))) return s;
    if (!e->got_stats) e->h.time_observe = 0.0;
    const double t0 = now_s();
    s = o->ops->observe(o, e, batch, &a, &g);
    e->h.time_observe += now_s() - t0;
    if (s == NGD_OK) e->got_stats = true, o->obs_micro = o->micro;
    return s;
}

ngd_status ngd_optim_set_grad_scale(ngd_optim *o, float scale) {
    if (!o) return NGD_ERR_ARG;
    if (!(scale > 0.0f) || !isfinite(scale))
        return ngd_optim_fail(o, NGD_ERR_ARG, "grad scale must be finite and > 0 (got %g)",
                              (double)scale);
    for (size_t i = 0; i < o->n && o->ops->rescale && scale != o->scale_cur; i++)
        if (o->e[i].kind == NGD_ENTRY_LAYER) o->ops->rescale(&o->e[i], o->scale_cur, scale);
    o->scale_cur = scale;
    return NGD_OK;
}

ngd_status ngd_optim_set_micro_batches(ngd_optim *o, size_t m) {
    if (!o) return NGD_ERR_ARG;
    if (m == 0) return ngd_optim_fail(o, NGD_ERR_ARG, "micro-batches must be at least 1 (got 0)");
    if (m > (size_t)1 << 32)
        return ngd_optim_fail(o, NGD_ERR_ARG, "micro-batches %zu: more than 2^32", m);
    o->micro = m;
    return NGD_OK;
}

size_t ngd_optim_micro_batches(const ngd_optim *o) { return o ? o->micro : 0; }

ngd_status ngd_optim_set_lr_scale(ngd_optim *o, float scale) {
    if (!o) return NGD_ERR_ARG;
    if (!(scale >= 0.0f) || !isfinite(scale))
        return ngd_optim_fail(o, NGD_ERR_ARG, "lr scale must be finite and >= 0 (got %g)",
                              (double)scale);
    o->lr_scale = scale;
    return NGD_OK;
}

size_t ngd_optim_steps(const ngd_optim *o) { return o ? o->steps : 0; }

// An exponent field of all ones is Inf or NaN; integer AND/OR reductions vectorise (a float
// sum would not, without -ffast-math)
static uint32_t nonfinite_bits(const float *x, size_t n) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
    }
    return bad;
}

bool ngd_all_finite(const float *x, size_t n) {
    // Over the threads for large n (SINGD's 4097-wide statistics, 5.5 ms an update on one).
    // Short arrays never reach a parallel region: one whose `if` clause is false still costs
    // libgomp a team of one (1.4 us from serial code, 3.3 us inside a region, against 0.05 us
    // for 785 floats on the Zen 5), and the first-order rule checks each row of P: 1034 rows
    // in the mlp's dense SINGD step, whose rule took 1.69 ms of 3.76 in bf16 (0.26 since)
    if (n <= NGD_PAR_MIN) return nonfinite_bits(x, n) == 0;
    uint32_t bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
    for (size_t b = 0; b < n; b += 4096)
        bad |= nonfinite_bits(x + b, NGD_MIN((size_t)4096, n - b));
    return bad == 0;
}

bool ngd_bf16_all_finite(const uint16_t *x, size_t n) {
    uint32_t bad = 0; // (as ngd_all_finite, on bf16's exponent field)
    for (size_t i = 0; i < n; i++)
        bad |= (uint32_t)((x[i] & 0x7f80u) == 0x7f80u);
    return bad == 0;
}

static bool grads_finite(const ngd_entry *e) {
    if (!ngd_all_finite(e->gw, e->kind == NGD_ENTRY_LAYER ? e->d_out * e->d_in : e->n))
        return false;
    if (e->gb && !ngd_all_finite(e->gb, e->d_out)) return false;
    return true;
}

// Ĝ = [∇W | ∇b] / s_t   (d_out x d_K), #natural-gradient
static void gather_grad(const ngd_entry *e, float inv_scale, float *G) {
#pragma omp parallel for schedule(static) if (e->n > NGD_PAR_MIN)
    for (size_t i = 0; i < e->d_out; i++) {
        const float *gw = e->gw + i * e->d_in;
        float *gr = G + i * e->d_K;
        for (size_t j = 0; j < e->d_in; j++)
            gr[j] = gw[j] * inv_scale;
        if (e->gb) gr[e->d_in] = e->gb[i] * inv_scale;
    }
}

// Rows [r0, r1) of P (d_out x d_K, the step's preconditioned gradient) that are not finite,
// replaced in place by the gradient's rows (gather_grad's values); how many. A finite gradient
// whose preconditioned form is not (SINGD's K, C grown by a diverging factor update until P
// overflows; a damping that underflowed) would otherwise write NaN into the weights.
static size_t plain_rows(const ngd_entry *e, float *P, float inv_scale, size_t r0, size_t r1) {
    size_t n = 0;
    for (size_t i = r0; i < r1; i++) {
        float *pr = P + i * e->d_K;
        if (ngd_all_finite(pr, e->d_K)) continue;
        const float *gw = e->gw + i * e->d_in;
        for (size_t j = 0; j < e->d_in; j++)
            pr[j] = gw[j] * inv_scale;
        if (e->gb) pr[e->d_in] = e->gb[i] * inv_scale;
        n++;
    }
    return n;
}

// Σ x² in 16 double lanes per block of 1024 (lane k takes the elements i ≡ k mod 16, the tail
// goes to lane 0), the lanes summed in lane order: the same bits on every build. The squares
// are exact and cannot overflow (float lanes made Σ x² Inf past |x| ~ 1.8e19, and with it
// the K-FAC RMS clip's ν 0: a large update silently dropped). Written with vector types
// because GCC does not vectorise the plain 16-lane loop well (it was 37% of a diagonal-SINGD
// step).
typedef float sumsq_v8 __attribute__((vector_size(32)));
typedef double sumsq_v8d __attribute__((vector_size(64)));
static double sumsq_block(const float *x, size_t b, size_t e) {
    size_t i = b;
    sumsq_v8d lo = {0}, hi = {0};
    for (; i + 16 <= e; i += 16) {
        sumsq_v8 u, v;
        memcpy(&u, x + i, sizeof u);
        memcpy(&v, x + i + 8, sizeof v);
        const sumsq_v8d ud = __builtin_convertvector(u, sumsq_v8d),
                        vd = __builtin_convertvector(v, sumsq_v8d);
        lo += ud * ud;
        hi += vd * vd;
    }
    for (; i < e; i++)
        lo[0] += (double)x[i] * (double)x[i];
    double blk = 0;
    for (int k = 0; k < 8; k++)
        blk += lo[k];
    for (int k = 0; k < 8; k++)
        blk += hi[k];
    return blk;
}
double ngd_sumsq(const float *x, size_t n) {
    double total = 0;
    for (size_t b = 0; b < n; b += 1024)
        total += sumsq_block(x, b, NGD_MIN(n, b + 1024));
    return total;
}

// ngd_sumsq with the blocks shared by the threads, 4096 at a time (one parallel region per
// gradient of up to 4M floats: on a loaded machine every region's barrier can wait a
// scheduler slice), their sums added in block order: the same bits as ngd_sumsq. Short
// arrays never enter a parallel region.
#define SUMSQ_GROUP 4096
static double sumsq_threaded(const float *x, size_t n) {
    if (n <= NGD_PAR_MIN) return ngd_sumsq(x, n);
    double total = 0;
    for (size_t g = 0; g < n; g += (size_t)SUMSQ_GROUP * 1024) {
        double blk[SUMSQ_GROUP];
        const size_t nb = NGD_MIN((size_t)SUMSQ_GROUP, (n - g + 1023) / 1024);
#pragma omp parallel for schedule(static)
        for (size_t k = 0; k < nb; k++) {
            const size_t b = g + k * 1024;
            blk[k] = sumsq_block(x, b, NGD_MIN(n, b + 1024));
        }
        for (size_t k = 0; k < nb; k++)
            total += blk[k];
    }
    return total;
}

// Where a layer's update P is read: rows of the weight part (row stride ldw) and the bias
// entries (stride ldb). The gathered P has both in one d_out x d_K matrix (the bias in column
// d_in); a first-order method reads the gradients in place (∇W rows, ∇b), with no copy.
typedef struct {
    const float *w, *b;
    size_t ldw, ldb;
} rule_src;

static rule_src src_of(const ngd_entry *e, const float *P) {
    const size_t din = e->kind == NGD_ENTRY_LAYER ? e->d_in : e->n;
    return (rule_src){P, P + din, e->d_K, e->d_K};
}

// Applies the method's first-order rule to one entry given its update (src; P, what the
// rule's prepare sees, is the d_out x d_K matrix, or NULL when src reads the gradients).
// fix: P itself, writable, where its rows that are not finite may take the gradient's
// instead (plain_rows; fix_scale its unscaling): found by the rule's own pass over P (the
// K-FAC RMS clip's Σ P²) or row by row as they are applied, never by a pass of its own (one
// cost 5 % of the mlp's SINGD step). Returns the rows so replaced.
static size_t apply_rule_src(const ngd_optim *o, ngd_entry *e, rule_src src, const float *P,
                             size_t t, float nu_kl, float *fix, float fix_scale, double pss0) {
    e->n_updates++;
    const ngd_rule *rule = entry_rule(o, e);
    const ngd_rule_args a0 = {
        .lr = e->cfg.lr * o->lr_scale, .bc1 = 1.0f, .bc2s = 1.0f, .nu = 1.0f, .decay = true};
    ngd_rule_args a = a0;
    double pss = pss0; // Σ P² when already known (pss0 < 0: not known)
    rule->prepare(e, P, t, nu_kl, &a, &pss);
    size_t fixed = 0;
    if (fix && pss >= 0.0 && !isfinite(pss)) { // (finite Σ P²: every P finite)
        fixed = plain_rows(e, fix, fix_scale, 0, e->d_out);
        a = a0, pss = -1.0;
        rule->prepare(e, P, t, nu_kl, &a, &pss);
    }
    const bool row_check = fix && pss < 0.0;
    size_t rows = e->d_out, dK = e->d_K, din = e->kind == NGD_ENTRY_LAYER ? e->d_in : e->n;
    // Element-wise, in a fixed partition of the rows (a param is one row of n): the same
    // bits for any thread count. Each chunk also sums the squares of its rows of P while
    // they are in cache (the health's update norm), unless the clip already did.
    enum { CHUNKS = 64 };
    double part[CHUNKS] = {0};
    size_t nfix[CHUNKS] = {0};
    const size_t nch = rows < CHUNKS ? rows : CHUNKS;
    const bool want_ss = pss < 0.0;
#pragma omp parallel for schedule(static) if (e->n > NGD_PAR_MIN && rows > 1)
    for (size_t c = 0; c < nch; c++) {
        double ss = 0.0;
        for (size_t i = rows * c / nch; i < rows * (c + 1) / nch; i++) {
            if (row_check) nfix[c] += plain_rows(e, fix, fix_scale, i, i + 1); // (in cache)
            const float *pr = src.w + i * src.ldw;
            float *w = e->w + i * din;
            float *b1 = e->buf ? e->buf + i * dK : NULL;
            float *b2 = e->buf2 ? e->buf2 + i * dK : NULL;
            rule->row(e, &a, pr, w, b1, b2, din);
            if (want_ss && src.ldw == dK) {
                ss += ngd_sumsq(pr, dK); // the row with its bias entry
            } else if (want_ss) {
                ss += ngd_sumsq(pr, din);
                if (e->b) ss += (double)src.b[i * src.ldb] * (double)src.b[i * src.ldb];
            }
        }
        part[c] = ss;
    }
    if (want_ss) {
        pss = 0.0;
        for (size_t c = 0; c < nch; c++)
            pss += part[c];
    }
    for (size_t c = 0; c < nch; c++)
        fixed += nfix[c];
    if (e->b) {
        // the bias is column d_in of P and of the buffers (stride d_K)
        for (size_t i = 0; i < rows; i++) {
            const float *pr = src.b + i * src.ldb;
            float *b1 = e->buf ? e->buf + i * dK + din : NULL;
            float *b2 = e->buf2 ? e->buf2 + i * dK + din : NULL;
            rule->row(e, &a, pr, e->b + i, b1, b2, 1);
        }
    }
    e->h.update_norm = (float)(sqrt(pss) * (double)a.nu);
    return fixed;
}

static void apply_rule(const ngd_optim *o, ngd_entry *e, const float *P, size_t t, float nu_kl,
                       double pss0) {
    apply_rule_src(o, e, src_of(e, P), P, t, nu_kl, NULL, 1.0f, pss0);
}

// A layer some of whose preconditioned rows took the gradient's: counted and said
// (and the method may restart the layer's preconditioner)
static void plain_rows_said(ngd_optim *o, ngd_entry *e, size_t t, size_t n) {
    if (!n) return;
    e->h.decomp_failures++;
    const char *re = o->ops->restart ? o->ops->restart(o, e) : NULL;
    ngd_optim_log(o,
                  "step %zu: layer '%s': the preconditioned gradient is not finite in %zu of "
                  "its %zu rows (a factor overflowed); the plain gradient used there%s%s",
                  t, e->name, n, e->d_out, re ? "; " : "", re ? re : "");
}

// ---- data-parallel runs (docs/distributed.md) ----

ngd_status ngd_optim_set_comm(ngd_optim *o, const ngd_comm *comm, ngd_share share) {
    if (!o) return NGD_ERR_ARG;
    if (o->steps > 0)
        return ngd_optim_fail(o, NGD_ERR_STATE, "set_comm: only before the first step");
    if (share < NGD_SHARE_AUTO || share > NGD_SHARE_OWNER)
        return ngd_optim_fail(o, NGD_ERR_ARG, "set_comm: unknown sharing policy %d", (int)share);
    if (comm && comm->size < 1) // (a size of 0 or less is no communicator: said, not taken as 1)
        return ngd_optim_fail(o, NGD_ERR_ARG, "set_comm: size %d (at least 1)", comm->size);
    if (!comm || comm->size == 1) {
        memset(&o->comm, 0, sizeof o->comm);
        o->comm.size = 1;
        o->share = share;
        return NGD_OK;
    }
    if (comm->rank < 0 || comm->rank >= comm->size || !comm->allreduce_sum || !comm->broadcast ||
        !comm->allgather)
        return ngd_optim_fail(o, NGD_ERR_ARG,
                              "set_comm: rank %d of %d, or a NULL callback (allreduce_sum, "
                              "broadcast and allgather are all needed)",
                              comm->rank, comm->size);
    o->comm = *comm;
    o->share = share;
    o->owners_planned = false;
    // what a method derived from this process's own data before (SINGD's rows of an observe
    // made before this call) must not stand for the global batch's: the derived state goes
    // as after a load
    for (size_t i = 0; i < o->n; i++)
        o->e[i].loads++;
    return NGD_OK;
}

uint64_t ngd_optim_comm_bytes(const ngd_optim *o) { return o ? o->comm_bytes : 0; }

int ngd_optim_layer_owner(const ngd_optim *o, int id) {
    if (!o || id < 0 || (size_t)id >= o->n) return -1;
    return o->e[id].owner;
}

size_t ngd_optim_world(const ngd_optim *o) { return (size_t)o->comm.size; }

bool ngd_optim_mine(const ngd_optim *o, const ngd_entry *e) {
    return o->comm.size <= 1 || e->owner < 0 || e->owner == o->comm.rank;
}

static ngd_status comm_fail(ngd_optim *o, ngd_status s, const char *what) {
    return ngd_optim_fail(o, s ? s : NGD_ERR_INTERNAL, "communicator: %s failed (%s)", what,
                          ngd_status_str(s));
}

ngd_status ngd_comm_allreduce(ngd_optim *o, float *buf, size_t n) {
    if (o->comm.size <= 1 || n == 0) return NGD_OK;
    o->comm_bytes += n * sizeof(float);
    ngd_status s = o->comm.allreduce_sum(o->comm.ctx, buf, n);
    return s ? comm_fail(o, s, "allreduce") : NGD_OK;
}

ngd_status ngd_comm_bcast(ngd_optim *o, void *buf, size_t bytes, int root) {
    if (o->comm.size <= 1 || bytes == 0) return NGD_OK;
    if (o->comm.rank == root) o->comm_bytes += bytes;
    ngd_status s = o->comm.broadcast(o->comm.ctx, buf, bytes, root);
    return s ? comm_fail(o, s, "broadcast") : NGD_OK;
}

ngd_status ngd_comm_allgather(ngd_optim *o, void *buf, size_t bytes) {
    if (o->comm.size <= 1 || bytes == 0) return NGD_OK;
    o->comm_bytes += bytes;
    ngd_status s = o->comm.allgather(o->comm.ctx, buf, bytes);
    return s ? comm_fail(o, s, "allgather") : NGD_OK;
}

// Owners by cost (KAISA's greedy): the layers whose maintenance an owner should do, largest
// cost first, each to the rank with the least work so far (ties: the lower rank). The same
// on every rank: the costs depend only on the registered shapes, the structures and the
// tracks (decided at the first statistics, from the global batch's rows).
static ngd_status plan_owners(ngd_optim *o) {
    const size_t P = (size_t)o->comm.size;
    double *cost = ngd_calloc(o->n + P, sizeof(double));
    if (!cost) return ngd_optim_fail(o, NGD_ERR_NOMEM, "out of memory planning owners");
    double *load = cost + o->n;
    for (size_t i = 0; i < o->n; i++) {
        ngd_entry *e = &o->e[i];
        e->owner = -1;
        cost[i] = -1.0;
        if (e->kind != NGD_ENTRY_LAYER || !o->ops->work || !o->ops->publish) continue;
        bool pays = false;
        const double c = o->ops->work(e, &pays);
        if (o->share == NGD_SHARE_REPLICATE || (o->share == NGD_SHARE_AUTO && !pays)) continue;
        cost[i] = c;
    }
    for (;;) {
        size_t best = o->n;
        for (size_t i = 0; i < o->n; i++)
            if (cost[i] >= 0.0 && o->e[i].owner < 0 && (best == o->n || cost[i] > cost[best]))
                best = i;
        if (best == o->n) break;
        size_t r = 0;
        for (size_t k = 1; k < P; k++)
            if (load[k] < load[r]) r = k;
        o->e[best].owner = (int)r;
        load[r] += cost[best];
    }
    ngd_free(cost);
    o->owners_planned = true;
    return NGD_OK;
}

// A data-parallel step's preconditioner part, before any layer is preconditioned: the
// statistics of every layer combined into the global batch's, owners chosen (first time),
// every layer's maintenance (the costly part on its owner only), then the owners' results
// broadcast. Phases over all layers, so that the owners work at the same time.
static ngd_status dist_maintain(ngd_optim *o, size_t t) {
    ngd_status s;
    for (size_t i = 0; i < o->n; i++) {
        ngd_entry *e = &o->e[i];
        if (e->kind == NGD_ENTRY_LAYER && e->got_stats && o->ops->combine &&
            (s = o->ops->combine(o, e)) != NGD_OK)
            return s;
    }
    if (!o->owners_planned && (s = plan_owners(o)) != NGD_OK) return s;
    for (size_t i = 0; i < o->n; i++) {
        ngd_entry *e = &o->e[i];
        if (e->kind != NGD_ENTRY_LAYER || !o->ops->update) continue;
        const double t0 = now_s();
        if ((s = o->ops->update(o, e, t)) != NGD_OK) return s;
        e->h.time_update = now_s() - t0;
    }
    for (size_t i = 0; i < o->n; i++) {
        ngd_entry *e = &o->e[i];
        if (e->kind == NGD_ENTRY_LAYER && e->owner >= 0 && (s = o->ops->publish(o, e)) != NGD_OK)
            return s;
    }
    return NGD_OK;
}

static ngd_status update_one(ngd_optim *o, ngd_entry *e, size_t t) {
    const double t0 = now_s();
    const ngd_status s = o->ops->update(o, e, t);
    e->h.time_update = now_s() - t0;
    return s;
}

// Every layer's preconditioner maintenance of step t in a single-process run. Layers whose
// update is serial-heavy (update_heavy: LAPACK decompositions, Brand updates) run side by
// side, one per thread, largest work first, after the others; each layer's result is the
// same whichever thread runs it, and the same as a one-thread run's (its products run
// single-threaded there, with the kernels a one-thread run takes: ngd_blas_serial_begin). Errors:
// the first failing layer's, in layer order.
static ngd_status update_all(ngd_optim *o, size_t t) {
    size_t nh = 0;
    ngd_status s;
    for (size_t i = 0; i < o->n; i++) {
        ngd_entry *e = &o->e[i];
        if (e->kind != NGD_ENTRY_LAYER || e->skip) continue;
        if (o->ops->update_heavy && o->upd_idx && o->ops->update_heavy(e, t)) {
            o->upd_idx[nh++] = i;
            continue;
        }
        if ((s = update_one(o, e, t)) != NGD_OK) return s;
    }
    if (nh == 0) return NGD_OK;
    int nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel()) nt = omp_get_max_threads();
#endif
    // one slot where several threads could run the layers: the scratch was planned at one
    // thread (the thread count grew since), or its slots are too large for more. Planned at
    // one thread, the layers still take a one-thread run's products, one after another, so
    // that their bits do not depend on the thread count of the first step (a review's
    // program, 2026-12-05); too large, they take every thread (docs/design.md)
    const bool one_planned = nt > 1 && nh >= 2 && o->scratch_slots == 1 &&
                             (o->scratch_n == 0 || SIDE_SCRATCH_MAX / o->scratch_n >= 1);
    nt = (int)NGD_MIN((size_t)nt, NGD_MIN(nh, o->scratch_slots));
    if (nt <= 1) {
        for (size_t j = 0; j < nh; j++) {
            const int saved = one_planned ? ngd_blas_serial_begin() : 0;
            s = update_one(o, &o->e[o->upd_idx[j]], t);
            if (one_planned) ngd_blas_serial_end(saved);
            if (s != NGD_OK) return s;
        }
        return NGD_OK;
    }
    double w[2];
    bool pays;
    for (size_t j = 1; j < nh; j++) { // largest work first (insertion sort: few layers)
        const size_t v = o->upd_idx[j];
        w[0] = o->ops->work ? o->ops->work(&o->e[v], &pays) : 0.0;
        size_t k = j;
        for (; k > 0; k--) {
            w[1] = o->ops->work ? o->ops->work(&o->e[o->upd_idx[k - 1]], &pays) : 0.0;
            if (w[1] >= w[0]) break;
            o->upd_idx[k] = o->upd_idx[k - 1];
        }
        o->upd_idx[k] = v;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
#endif
    for (size_t j = 0; j < nh; j++) {
        const int saved = ngd_blas_serial_begin(); // (its products as a 1-thread run's)
#ifdef _OPENMP
        ngd_update_slot = (size_t)omp_get_thread_num(); // (ngd_kf_scratch: this thread's slot)
#endif
        o->upd_st[j] = update_one(o, &o->e[o->upd_idx[j]], t);
        ngd_update_slot = 0;
        ngd_blas_serial_end(saved);
    }
    size_t first = SIZE_MAX;
    for (size_t j = 0; j < nh; j++)
        if (o->upd_st[j] != NGD_OK && (first == SIZE_MAX || o->upd_idx[j] < o->upd_idx[first]))
            first = j;
    return first == SIZE_MAX ? NGD_OK : o->upd_st[first];
}

ngd_status ngd_optim_skip(ngd_optim *o, int id) {
    if (!o) return NGD_ERR_ARG;
    ngd_entry *e = get_entry(o, id);
    if (!e) return ngd_optim_fail(o, NGD_ERR_LAYER, "skip: unknown id %d (have %zu)", id, o->n);
    if (o->comm.size > 1)
        return ngd_optim_fail(o, NGD_ERR_STATE,
                              "skip: not in a data-parallel run (every rank would have to skip "
                              "'%s' alike)",
                              e->name);
    e->skip = true;
    return NGD_OK;
}

// Ends a step for the entries ngd_optim_skip named: their statistics of this step dropped,
// their flags cleared
static void end_skips(ngd_optim *o) {
    for (size_t i = 0; i < o->n; i++) {
        ngd_entry *e = &o->e[i];
        if (!e->skip) continue;
        if (e->kind == NGD_ENTRY_LAYER && e->got_stats && o->ops->discard) o->ops->discard(e);
        e->got_stats = false;
        e->skip = false;
    }
}

static ngd_status step_entries(ngd_optim *o);

ngd_status ngd_optim_step(ngd_optim *o) {
    if (!o) return NGD_ERR_ARG;
    const ngd_status s = step_entries(o);
    if (s == NGD_OK || s == NGD_SKIPPED) end_skips(o), o->obs_micro = 0;
    return s;
}

static ngd_status step_entries(ngd_optim *o) {
    ngd_status s = plan(o);
    if (s) return s;
    const size_t t = o->steps;
    const float inv_scale = 1.0f / o->scale_cur;
    o->time_update = 0.0;
    // One pass over every gradient: Σ g² gives the health norm ‖Ĝ‖ and the non-finite check
    // (a NaN or Inf makes the sum non-finite; a sum that overflowed on finite values is told
    // apart by the exact scan)
    bool finite = true;
    for (size_t i = 0; i < o->n; i++) {
        ngd_entry *e = &o->e[i];
        if (e->skip) continue;
        double ss = sumsq_threaded(e->gw, e->kind == NGD_ENTRY_LAYER ? e->d_out * e->d_in : e->n);
        if (e->gb) ss += ngd_sumsq(e->gb, e->d_out);
        e->grad_ss = ss;
        e->h.grad_norm = (float)(sqrt(ss) * (double)inv_scale);
        if (!isfinite(ss) && !grads_finite(e)) finite = false;
    }
    // non-finite gradients: skip everything, discard pending statistics, count it
    if (o->cfg.skip_nonfinite) {
        if (!finite) {
            for (size_t i = 0; i < o->n; i++) {
                ngd_entry *e = &o->e[i];
                if (e->kind == NGD_ENTRY_LAYER && o->ops->discard) o->ops->discard(e);
                e->got_stats = false;
                if (!e->skip) e->h.skips++;
            }
            ngd_optim_log(o, "step %zu: non-finite gradient, step skipped", t);
            o->steps++;
            o->scale_prev = o->scale_cur;
            return NGD_SKIPPED;
        }
    }
    // every layer due for a preconditioner update must have statistics (#singd-step)
    for (size_t i = 0; i < o->n; i++) {
        ngd_entry *e = &o->e[i];
        if (e->skip) continue;
        if (entry_wants(o, e) && !e->got_stats)
            return ngd_optim_fail(o, NGD_ERR_STATE,
                                  "step %zu: layer '%s' (id %zu) needs "
                                  "statistics at this step but ngd_optim_observe was not called "
                                  "for it",
                                  t, e->name, i);
        if (e->kind == NGD_ENTRY_LAYER && o->ops->check_step &&
            (s = o->ops->check_step(o, e, t)) != NGD_OK)
            return s;
    }
    const bool dist = o->comm.size > 1;
    // every layer's preconditioner maintenance before any parameter changes (all-or-nothing:
    // after planning it fails only on a broken invariant, or a communicator's failure)
    const double tu = now_s();
    if (dist) {
        if ((s = dist_maintain(o, t)) != NGD_OK) return s;
    } else if (o->ops->update) {
        if ((s = update_all(o, t)) != NGD_OK) return s;
    }
    o->time_update = o->ops->update ? now_s() - tu : 0.0;
    float *G = o->ws, *P = o->ws + o->gp, *mws = method_ws(o);
    // a global clip (the K-FAC family's KL clip, #k-fac-step-driver step 4): every layer is
    // preconditioned first (into e->pk), the rule's ν from the sum of its terms, then updated
    const ngd_rule *lrule = o->ops->rule;
    const bool kl = global_rule(o);
    double kl_sum = 0.0;
    for (size_t i = 0; i < o->n; i++) {
        ngd_entry *e = &o->e[i];
        const float *Pe;
        if (e->skip) continue;
        if (e->kind == NGD_ENTRY_PARAM) {
            Pe = e->gw;
            if (inv_scale != 1.0f) { // mixed precision: unscale into the planned P buffer
                for (size_t j = 0; j < e->n; j++)
                    P[j] = e->gw[j] * inv_scale;
                Pe = P;
            }
            if (e->last) memcpy(e->last, Pe, e->n * sizeof(float));
            // (P = the gradient at scale 1: its Σ P² is the first pass's)
            apply_rule(o, e, Pe, t, -1.0f, inv_scale == 1.0f ? e->grad_ss : -1.0);
            continue;
        }
        const bool raw = o->ops->raw_ok && o->ops->raw_ok(e);
        if (!raw && !o->ops->precondition && !kl && inv_scale == 1.0f && !e->last) {
            // a first-order method (SGD, AdamW) at loss scale 1: P = Ĝ is read in place,
            // with no copy into the gathered d_out x d_K matrix
            e->got_stats = false;
            apply_rule_src(o, e, (rule_src){e->gw, e->gb, e->d_in, 1}, NULL, t, -1.0f, NULL, 1.0f,
                           e->grad_ss);
            continue;
        }
        // (a method's preconditioning from the step's rows reads no Ĝ: no gather then)
        if (!raw && (kl || !o->ops->grad_unused || !o->ops->grad_unused(e)))
            gather_grad(e, inv_scale, G);
        const double t1 = now_s();
        float *Pd = kl ? e->pk : P;
        if (raw) {
            o->ops->precondition_raw(o, e, inv_scale, Pd);
            Pe = Pd;
        } else if (o->ops->precondition) {
            o->ops->precondition(o, e, G, Pd, mws);
            Pe = Pd;
        } else {
            Pe = G;
        }
        e->h.time_precond = now_s() - t1;
        e->got_stats = false;
        // (P's rows that are not finite, of a finite gradient: the gradient's, plain_rows)
        float *fix = finite && Pe != G ? Pd : NULL;
        if (kl) {
            double term = lrule->global_term(e, o->lr_scale, Pe, G);
            if (fix && !isfinite(term)) {
                plain_rows_said(o, e, t, plain_rows(e, fix, inv_scale, 0, e->d_out));
                term = lrule->global_term(e, o->lr_scale, Pe, G);
            }
            kl_sum += term;
            continue;
        }
        plain_rows_said(o, e, t,
                        apply_rule_src(o, e, src_of(e, Pe), Pe, t, -1.0f, fix, inv_scale, -1.0));
        if (e->last) memcpy(e->last, Pe, e->n * sizeof(float)); // (P as it was applied)
    }
    if (kl) {
        const float nu = lrule->global_scale(&o->cfg, kl_sum);
        for (size_t i = 0; i < o->n; i++) {
            ngd_entry *e = &o->e[i];
            if (e->kind != NGD_ENTRY_LAYER || e->skip) continue;
            if (e->last) memcpy(e->last, e->pk, e->n * sizeof(float));
            apply_rule(o, e, e->pk, t, nu, -1.0);
        }
    }
    o->steps++;
    o->scale_prev = o->scale_cur;
    return NGD_OK;
}

// ---- health and introspection ----

ngd_status ngd_optim_layer_health(const ngd_optim *o, int id, ngd_layer_health *out) {
    if (!o) return NGD_ERR_ARG;
    ngd_optim *mo = (ngd_optim *)(uintptr_t)o; // the message buffer is the only thing written
    if (!out) return ngd_optim_fail(mo, NGD_ERR_ARG, "layer_health: out is NULL");
    if (id < 0 || (size_t)id >= o->n)
        return ngd_optim_fail(mo, NGD_ERR_LAYER, "layer_health: unknown id %d", id);
    const ngd_entry *e = &o->e[id];
    *out = e->h;
    size_t bytes = 0;
    if (e->buf) bytes += e->n * sizeof(float);
    if (e->buf2) bytes += e->n * sizeof(float);
    if (e->kind == NGD_ENTRY_LAYER && o->ops->arrays) {
        ngd_state_array arr[NGD_MAX_ARRAYS];
        size_t k = o->ops->arrays((ngd_entry *)(uintptr_t)e, arr, NGD_MAX_ARRAYS);
        for (size_t i = 0; i < k; i++) {
            // transient arrays (pending statistics) and checks (the structures)
            if (arr[i].name[0] == '~' || arr[i].name[0] == '?') continue;
            size_t el = arr[i].type == NGD_ARR_F32    ? 4
                        : arr[i].type == NGD_ARR_BF16 ? 2
                        : arr[i].type == NGD_ARR_U64  ? 8
                                                      : 1;
            bytes += arr[i].count * el;
        }
    }
    out->state_bytes = bytes;
    return NGD_OK;
}

size_t ngd_optim_count(const ngd_optim *o) { return o ? o->n : 0; }

size_t ngd_optim_state_bytes(const ngd_optim *o) {
    size_t total = 0;
    if (!o) return 0;
    for (size_t i = 0; i < o->n; i++) {
        ngd_layer_health h;
        if (ngd_optim_layer_health(o, (int)i, &h) == NGD_OK) total += h.state_bytes;
    }
    return total;
}

double ngd_optim_update_time(const ngd_optim *o) { return o ? o->time_update : 0.0; }

size_t ngd_optim_workspace_bytes(const ngd_optim *o) {
    if (!o) return 0;
    size_t bytes = o->ws_n * sizeof(float) + o->scratch_n * o->scratch_slots;
    for (size_t i = 0; i < o->n; i++)
        if (o->e[i].pk) bytes += o->e[i].n * sizeof(float); // the global clip's buffers
    for (size_t i = 0; o->ops->cache_bytes && i < o->n; i++)
        if (o->e[i].kind == NGD_ENTRY_LAYER) bytes += o->ops->cache_bytes(&o->e[i]);
    return bytes;
}

ngd_status ngd_optim_factor_dense(const ngd_optim *o, int layer, char which, float *out, size_t d) {
    if (!o) return NGD_ERR_ARG;
    ngd_optim *mo = (ngd_optim *)(uintptr_t)o; // the message buffer is the only thing written
    if (!out) return ngd_optim_fail(mo, NGD_ERR_ARG, "factor_dense: out is NULL");
    if (layer < 0 || (size_t)layer >= o->n || o->e[layer].kind != NGD_ENTRY_LAYER)
        return ngd_optim_fail(mo, NGD_ERR_LAYER, "factor_dense: unknown layer id %d", layer);
    const ngd_entry *e = &o->e[layer];
    size_t want = (which == 'K' || which == 'k') ? e->d_K : e->d_out;
    if (which != 'K' && which != 'C' && which != 'k' && which != 'c')
        return ngd_optim_fail(mo, NGD_ERR_ARG, "factor_dense: unknown factor '%c'", which);
    if (d != want)
        return ngd_optim_fail(mo, NGD_ERR_ARG,
                              "factor_dense: layer '%s' factor '%c' has size "
                              "%zu, not %zu",
                              e->name, which, want, d);
    if (!o->ops->factor_dense)
        return ngd_optim_fail(mo, NGD_ERR_ARG, "factor_dense: method %s keeps no factors",
                              o->ops->name);
    return o->ops->factor_dense(o, e, which, out);
}

ngd_status ngd_optim_last_update(const ngd_optim *o, int layer, float *out, size_t n) {
    if (!o) return NGD_ERR_ARG;
    ngd_optim *mo = (ngd_optim *)(uintptr_t)o;
    if (!out) return ngd_optim_fail(mo, NGD_ERR_ARG, "last_update: out is NULL");
    if (layer < 0 || (size_t)layer >= o->n)
        return ngd_optim_fail(mo, NGD_ERR_LAYER, "last_update: unknown id %d", layer);
    const ngd_entry *e = &o->e[layer];
    if (!e->last)
        return ngd_optim_fail(mo, NGD_ERR_STATE,
                              "last_update: '%s' does not keep its update "
                              "(set keep_last_update)",
                              e->name);
    if (n != e->n)
        return ngd_optim_fail(mo, NGD_ERR_ARG, "last_update: '%s' has %zu values, not %zu", e->name,
                              e->n, n);
    memcpy(out, e->last, n * sizeof(float));
    return NGD_OK;
}

float *ngd_optim_method_ws(ngd_optim *o) { return method_ws(o); }
