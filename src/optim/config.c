/*
 * config.c — ngd_config defaults (docs/algorithms.md#singd-options, #k-fac-family-options, torch's
 * AdamW / SGD), validation with messages naming the field, and the name tables used by
 * logs and the command line.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "impl.h"

ngd_config ngd_config_default(ngd_method m) {
    ngd_config c;
    memset(&c, 0, sizeof c);
    c.method = m;
    c.skip_nonfinite = true;
    c.init_grad_scale = 1.0f;
    // AdamW (torch.optim.AdamW defaults)
    c.beta1 = 0.9f;
    c.beta2 = 0.999f;
    c.eps = 1e-8f;
    // SINGD (#singd-options)
    c.damping = 1e-3f;
    c.alpha1 = 0.5f;
    c.T = 10;
    c.lr_cov = 1e-2f;
    c.loss_average = NGD_LOSS_BATCH;
    c.kfac_approx = NGD_KFAC_EXPAND;
    ngd_factor_spec dense = {NGD_STRUCT_DENSE, 30, 15, 15, NGD_F32};
    c.structure_K = dense;
    c.structure_C = dense;
    // K-FAC family (#k-fac-family-options)
    ngd_kfac_options k = {
        .rho = 0.95f,
        .T_u = 10,
        .T_i = 50,
        .damping_rel = 0.1f,
        .damping_kind = NGD_KFAC_DAMP_EXACT_REL,
        .clip = NGD_CLIP_RMS,
        .clip_kappa = 0.07f,
        .wd_start = 200,
        .identity_init = NGD_IDINIT_IN_DAMPING,
        .eig_zero_tol = 1e-10f,
        .rank = 220,
        .oversample = 10,
        .power_iters = 4,
        .tail = NGD_TAIL_ZERO,
        .brand_rank = 0,
        .brand_mult = 1,
        .refresh_mult = 1,
        .corr_mult = 5,
        .corr_frac = 0.2f,
        .brand_truncate = NGD_BRAND_TRUNC_AFTER,
        .reorth_every = 50,
        .factored_apply = false,
        .seed = 0,
    };
    c.kfac = k;
    switch (m) {
    case NGD_METHOD_SGD:
        c.lr = 1e-2f;
        c.momentum = 0.0f;
        break;
    case NGD_METHOD_ADAMW:
        c.lr = 1e-3f;
        c.weight_decay = 1e-2f;
        break;
    case NGD_METHOD_SINGD:
    case NGD_METHOD_INGD:
        c.lr = 1e-3f;
        c.momentum = 0.9f;
        c.method = NGD_METHOD_SINGD;
        break;
    case NGD_METHOD_IKFAC:
        c.lr = 1e-3f;
        c.momentum = 0.9f;
        c.kfac_like = true;
        c.alpha1 = 0.0f;
        c.method = NGD_METHOD_SINGD;
        break;
    case NGD_METHOD_KFAC:
    case NGD_METHOD_RSKFAC:
    case NGD_METHOD_SREKFAC:
    case NGD_METHOD_BKFAC:
    case NGD_METHOD_BRKFAC:
    case NGD_METHOD_BRCKFAC:
        c.lr = 0.1f;
        c.momentum = 0.0f;
        c.weight_decay = 7e-4f;
        break;
    default:
        c.method = NGD_METHOD_SGD;
        c.lr = 1e-2f;
        break;
    }
    return c;
}

static const char *const METHOD_NAMES[NGD_METHOD_COUNT] = {
    [NGD_METHOD_SGD] = "sgd",     [NGD_METHOD_ADAMW] = "adamw",   [NGD_METHOD_SINGD] = "singd",
    [NGD_METHOD_KFAC] = "kfac",   [NGD_METHOD_RSKFAC] = "rskfac", [NGD_METHOD_SREKFAC] = "srekfac",
    [NGD_METHOD_BKFAC] = "bkfac", [NGD_METHOD_BRKFAC] = "brkfac", [NGD_METHOD_BRCKFAC] = "brckfac",
    [NGD_METHOD_INGD] = "ingd",   [NGD_METHOD_IKFAC] = "ikfac",
};

static const char *const STRUCT_NAMES[NGD_STRUCT_COUNT] = {
    [NGD_STRUCT_DENSE] = "dense",
    [NGD_STRUCT_DIAG] = "diagonal",
    [NGD_STRUCT_BLOCKDIAG] = "blockdiag",
    [NGD_STRUCT_HIER] = "hierarchical",
    [NGD_STRUCT_TRIL_TOEPLITZ] = "triltoeplitz",
    [NGD_STRUCT_TRIU_TOEPLITZ] = "triutoeplitz",
    [NGD_STRUCT_TRIL_TOPLEFT] = "tril_topleft_diag",
    [NGD_STRUCT_TRIL_BOTRIGHT] = "tril_bottomright_diag",
    [NGD_STRUCT_TRIU_TOPLEFT] = "triu_topleft_diag",
    [NGD_STRUCT_TRIU_BOTRIGHT] = "triu_bottomright_diag",
};

const char *ngd_method_name(ngd_method m) {
    return (unsigned)m < NGD_METHOD_COUNT ? METHOD_NAMES[m] : NULL;
}

const char *ngd_structure_name(ngd_structure s) {
    return (unsigned)s < NGD_STRUCT_COUNT ? STRUCT_NAMES[s] : NULL;
}

ngd_status ngd_method_parse(const char *name, ngd_method *out) {
    if (!name || !out) return NGD_ERR_ARG;
    for (int i = 0; i < NGD_METHOD_COUNT; i++)
        if (strcmp(name, METHOD_NAMES[i]) == 0) {
            *out = (ngd_method)i;
            return NGD_OK;
        }
    return NGD_ERR_ARG;
}

// Reads a positive decimal integer that ends at *end. Returns 0 on failure.
static size_t parse_size(const char *s, const char **end) {
    size_t v = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9') {
        size_t d = (size_t)(*p - '0');
        if (v > (SIZE_MAX - d) / 10) return 0;
        v = v * 10 + d;
        p++;
    }
    *end = p;
    return p == s ? 0 : v;
}

ngd_status ngd_structure_parse(const char *name, ngd_factor_spec *out) {
    if (!name || !out) return NGD_ERR_ARG;
    // (dtype is the caller's choice, kept; a value that is no dtype, such as an uninitialised
    //  local's, becomes f32 rather than a spec that validation then refuses)
    const ngd_dtype dt = out->dtype == NGD_BF16 ? NGD_BF16 : NGD_F32;
    ngd_factor_spec f = {NGD_STRUCT_DENSE, 30, 15, 15, dt};
    const char *end;
    // the official spellings with sizes: block<B>diagonal, hierarchical<K1>_<K2>
    if (strncmp(name, "block", 5) == 0 && name[5] >= '0' && name[5] <= '9') {
        size_t b = parse_size(name + 5, &end);
        if (!b || strcmp(end, "diagonal") != 0) return NGD_ERR_ARG;
        f.kind = NGD_STRUCT_BLOCKDIAG;
        f.block = b;
        *out = f;
        return NGD_OK;
    }
    if (strncmp(name, "hierarchical", 12) == 0 && name[12] >= '0' && name[12] <= '9') {
        size_t k1 = parse_size(name + 12, &end);
        if (!k1 || *end != '_') return NGD_ERR_ARG;
        size_t k2 = parse_size(end + 1, &end);
        if (!k2 || *end) return NGD_ERR_ARG;
        f.kind = NGD_STRUCT_HIER;
        f.k1 = k1;
        f.k2 = k2;
        *out = f;
        return NGD_OK;
    }
    static const struct {
        const char *name;
        ngd_structure s;
    } alias[] = {{"diag", NGD_STRUCT_DIAG},
                 {"block", NGD_STRUCT_BLOCKDIAG},
                 {"hier", NGD_STRUCT_HIER},
                 {"blockdiagonal", NGD_STRUCT_BLOCKDIAG}};
    for (size_t i = 0; i < sizeof alias / sizeof alias[0]; i++)
        if (strcmp(name, alias[i].name) == 0) {
            f.kind = alias[i].s;
            *out = f;
            return NGD_OK;
        }
    for (int i = 0; i < NGD_STRUCT_COUNT; i++)
        if (strcmp(name, STRUCT_NAMES[i]) == 0) {
            f.kind = (ngd_structure)i;
            *out = f;
            return NGD_OK;
        }
    return NGD_ERR_ARG;
}

#define BAD(...)                                                                                   \
    do {                                                                                           \
        if (msg && cap) snprintf(msg, cap, __VA_ARGS__);                                           \
        return NGD_ERR_ARG;                                                                        \
    } while (0)

static int finite_nonneg(float x) { return isfinite(x) && x >= 0.0f; }

// Bounds that keep a sketch's size (the rank, clamped to the factor's width, plus the
// oversampling) and the power iterations sensible: far above any use, far below an overflow.
#define KFAC_SKETCH_MAX (1 << 30)
#define KFAC_POWER_MAX  1000

static ngd_status check_factor(const ngd_factor_spec *f, const char *which, char *msg, size_t cap) {
    if ((unsigned)f->kind >= NGD_STRUCT_COUNT)
        BAD("structure_%s: unknown structure %d", which, (int)f->kind);
    if (f->kind == NGD_STRUCT_BLOCKDIAG && f->block == 0)
        BAD("structure_%s: block size must be >= 1", which);
    if (f->kind == NGD_STRUCT_HIER && (f->k1 == 0 || f->k2 == 0))
        BAD("structure_%s: hierarchical k1 and k2 must be >= 1 (got %zu, %zu)", which, f->k1,
            f->k2);
    if (f->dtype != NGD_F32 && f->dtype != NGD_BF16)
        BAD("structure_%s: dtype must be f32 or bf16 (got %d)", which, (int)f->dtype);

    return NGD_OK;
}

ngd_status ngd_config_validate(const ngd_config *c, char *msg, size_t cap) {
    if (!c) BAD("config is NULL");
    if ((unsigned)c->method >= NGD_METHOD_COUNT) BAD("method: unknown method %d", (int)c->method);
    if (!finite_nonneg(c->lr)) BAD("lr must be finite and >= 0 (got %g)", (double)c->lr);
    if (!finite_nonneg(c->momentum) || c->momentum >= 1.0f)
        BAD("momentum must be in [0, 1) (got %g)", (double)c->momentum);
    if (!finite_nonneg(c->weight_decay))
        BAD("weight_decay must be finite and >= 0 (got %g)", (double)c->weight_decay);
    if (c->nesterov && c->momentum <= 0.0f) BAD("nesterov needs momentum > 0");
    if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f))
        BAD("beta1 must be in [0, 1) (got %g)", (double)c->beta1);
    if (!(c->beta2 >= 0.0f && c->beta2 < 1.0f))
        BAD("beta2 must be in [0, 1) (got %g)", (double)c->beta2);
    if (!(c->eps > 0.0f) || !isfinite(c->eps)) BAD("eps must be > 0 (got %g)", (double)c->eps);
    if (!isfinite(c->damping)) BAD("damping must be finite (got %g)", (double)c->damping);
    if (!finite_nonneg(c->alpha1))
        BAD("alpha1 must be finite and >= 0 (got %g)", (double)c->alpha1);
    const bool singd = c->method == NGD_METHOD_SINGD || c->method == NGD_METHOD_INGD ||
                       c->method == NGD_METHOD_IKFAC;
    // SINGD (#singd-update): λ damps the curvature in m_K, m_C (KKᵀ ≈ (S_K + λI)⁻¹), so
    // λ < 0 is no damping; α1 is a momentum coefficient on m_K, m_C like α2 (and the weight
    // of an EMA with 1 − α1 under normalize_lr_cov): at 1 or above it never forgets
    if (singd && c->damping < 0.0f)
        BAD("damping must be >= 0 for SINGD (got %g)", (double)c->damping);
    if (singd && c->alpha1 >= 1.0f) BAD("alpha1 must be in [0, 1) (got %g)", (double)c->alpha1);
    if (c->T == 0) BAD("T must be >= 1");
    if (!c->lr_cov_fn && !finite_nonneg(c->lr_cov))
        BAD("lr_cov must be finite and >= 0 (got %g)", (double)c->lr_cov);
    if ((unsigned)c->loss_average > NGD_LOSS_BATCH_SEQUENCE)
        BAD("loss_average: unknown value %d", (int)c->loss_average);
    if ((unsigned)c->kfac_approx > NGD_KFAC_REDUCE)
        BAD("kfac_approx: must be expand or reduce (got %d)", (int)c->kfac_approx);
    if (!(c->init_grad_scale > 0.0f) || !isfinite(c->init_grad_scale))
        BAD("init_grad_scale must be > 0 (got %g)", (double)c->init_grad_scale);
    ngd_status s = check_factor(&c->structure_K, "K", msg, cap);
    if (s) return s;
    s = check_factor(&c->structure_C, "C", msg, cap);
    if (s) return s;
    if (c->factor_compute != NGD_F32 && c->factor_compute != NGD_BF16)
        BAD("factor_compute must be f32 or bf16 (got %d)", (int)c->factor_compute);
    if (c->factor_compute == NGD_BF16 &&
        (c->structure_K.dtype != NGD_BF16 || c->structure_C.dtype != NGD_BF16))
        BAD("factor_compute bf16 needs both factors stored in bf16 (structure_K/C.dtype)");
    const ngd_kfac_options *k = &c->kfac;
    if (k->ea_dtype != NGD_F32 && k->ea_dtype != NGD_BF16)
        BAD("kfac.ea_dtype must be f32 or bf16 (got %d)", (int)k->ea_dtype);
    if (k->factor_arith != NGD_F32 && k->factor_arith != NGD_BF16)
        BAD("kfac.factor_arith must be f32 or bf16 (got %d)", (int)k->factor_arith);
    if (!(k->rho >= 0.0f && k->rho < 1.0f))
        BAD("kfac.rho must be in [0, 1) (got %g)", (double)k->rho);
    if (k->T_u == 0) BAD("kfac.T_u must be >= 1");
    if (k->T_i == 0) BAD("kfac.T_i must be >= 1");
    if (!finite_nonneg(k->damping_rel)) BAD("kfac.damping_rel must be >= 0");
    // the low-rank inverses scale the complement of the kept eigenvectors by 1/λ_F: with
    // λ_rel = 0 that is 1/ρ^k, which grows without bound (updates clipped to nothing, then NaN)
    if (k->damping_rel == 0.0f && c->method >= NGD_METHOD_RSKFAC && c->method <= NGD_METHOD_BRCKFAC)
        BAD("kfac.damping_rel must be > 0 for the low-rank methods (rskfac, srekfac, bkfac, "
            "brkfac, brckfac: 1/damping scales the rest of the space)");
    if ((unsigned)k->clip > NGD_CLIP_KL) BAD("kfac.clip: unknown value");
    if (!finite_nonneg(k->clip_kappa)) BAD("kfac.clip_kappa must be >= 0");
    if (k->rank == 0) BAD("kfac.rank must be >= 1");
    if (!finite_nonneg(k->eig_zero_tol)) BAD("kfac.eig_zero_tol must be finite and >= 0");
    if (k->brand_mult == 0 || k->refresh_mult == 0 || k->corr_mult == 0)
        BAD("kfac.brand_mult, refresh_mult and corr_mult must be >= 1");
    // the Brand period m_B·T_u and the refresh period m_BR·T_i are step counts (a product
    // that wrapped would divide by 0 or by a wrong period)
    if (k->brand_mult > SIZE_MAX / k->T_u)
        BAD("kfac.brand_mult x kfac.T_u is too large (%zu x %zu)", k->brand_mult, k->T_u);
    if (k->refresh_mult > SIZE_MAX / k->T_i)
        BAD("kfac.refresh_mult x kfac.T_i is too large (%zu x %zu)", k->refresh_mult, k->T_i);
    if (k->oversample > KFAC_SKETCH_MAX)
        BAD("kfac.oversample must be at most %d (got %zu)", KFAC_SKETCH_MAX, k->oversample);
    if (k->power_iters > KFAC_POWER_MAX)
        BAD("kfac.power_iters must be at most %d (got %zu)", KFAC_POWER_MAX, k->power_iters);
    if (!(k->corr_frac > 0.0f && k->corr_frac <= 1.0f)) BAD("kfac.corr_frac must be in (0, 1]");
    if (k->identity_init == NGD_IDINIT_IN_FACTOR &&
        (c->method == NGD_METHOD_BKFAC || c->method == NGD_METHOD_BRKFAC ||
         c->method == NGD_METHOD_BRCKFAC))
        BAD("kfac.identity_init = in_factor is offered for K-FAC, RS-KFAC and SRE-KFAC only (a "
            "flat identity has no low-rank form; docs/algorithms.md#identity-init)");
    if ((unsigned)k->identity_init > NGD_IDINIT_IN_FACTOR ||
        (unsigned)k->tail > NGD_TAIL_MIN_KEPT ||
        (unsigned)k->damping_kind > NGD_KFAC_DAMP_FACTORED_PI ||
        (unsigned)k->brand_truncate > NGD_BRAND_TRUNC_BEFORE_NEXT)
        BAD("kfac: unknown identity_init, tail, damping_kind or brand_truncate value");
    if ((c->method == NGD_METHOD_BRKFAC || c->method == NGD_METHOD_BRCKFAC) && k->brand_mult != 1)
        BAD("kfac.brand_mult must be 1 for B-R-KFAC and BRC-KFAC (docs/algorithms.md#b-r-kfac)");
    return NGD_OK;
}
