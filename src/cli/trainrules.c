/*
 * trainrules.c — the rules between the options of `ngd train`: which methods use an option
 * (one given to a method that would ignore it is refused), libngd's validation messages told
 * with the options' names instead of ngd_config's fields, the plain parameters' own rule
 * (--param-optim, --param-lr, --param-wd), and which models read which data.
 */
#include <stdio.h>
#include <string.h>

#include "train.h"

// The methods that use an option (bits 1 << ngd_method); an option not listed is used by
// every method. One given to a method that would ignore it is a usage error.
#define MB(x)     (1u << NGD_METHOD_##x)
#define M_SINGDS  (MB(SINGD) | MB(INGD) | MB(IKFAC))
#define M_KFACS   (MB(KFAC) | MB(RSKFAC) | MB(SREKFAC) | MB(BKFAC) | MB(BRKFAC) | MB(BRCKFAC))
#define M_LOWRANK (MB(RSKFAC) | MB(SREKFAC) | MB(BKFAC) | MB(BRKFAC) | MB(BRCKFAC))
#define M_BRAND   (MB(BKFAC) | MB(BRKFAC) | MB(BRCKFAC))
static const struct {
    int id;
    unsigned methods;
} OPT_METHODS[] = {
    // momentum and Nesterov: SGD's rule, which SINGD and the K-FAC family share (AdamW's
    // plain parameters use it under --param-optim sgd); β1, β2, ε: AdamW's rule (also that of
    // the plain parameters under --param-optim adamw): see check_methods
    {O_MOM, MB(SGD) | M_SINGDS | M_KFACS},
    {O_NESTEROV, MB(SGD) | M_SINGDS | M_KFACS},
    {O_BETA1, MB(ADAMW)},
    {O_BETA2, MB(ADAMW)},
    {O_EPS, MB(ADAMW)},
    {O_DAMPING, M_SINGDS | M_KFACS},
    {O_APPROX, M_SINGDS | M_KFACS},
    {O_LRCOV, M_SINGDS},
    {O_ALPHA1, MB(SINGD) | MB(INGD)},
    {O_T, M_SINGDS},
    // (INGD is SINGD with dense factors, and INGD made K-FAC-like is IKFAC: --optim ingd
    //  --structure diagonal ran SINGD-diagonal logged as "ingd"; IKFAC is K-FAC-like already)
    {O_STRUCT, MB(SINGD) | MB(IKFAC)},
    {O_KFACLIKE, MB(SINGD)},
    {O_NORMCOV, M_SINGDS},
    {O_FDTYPE, M_SINGDS},
    {O_QUIRK, M_SINGDS},
    {O_RHO, M_KFACS},
    {O_TU, M_KFACS},
    {O_TI, M_KFACS},
    {O_KDAMP, MB(KFAC)},
    {O_KARITH, M_KFACS},
    {O_CLIP, M_KFACS},
    {O_KAPPA, M_KFACS},
    {O_WDSTART, M_KFACS},
    {O_IDINIT, M_KFACS},
    {O_RANK, M_LOWRANK},
    {O_OVERS, M_LOWRANK},
    {O_POWER, M_LOWRANK},
    {O_TAIL, M_LOWRANK},
    {O_KSEED, M_LOWRANK},
    {O_FACTORED, M_KFACS | M_SINGDS},
    {O_NOFACTORED, M_KFACS | M_SINGDS},
    {O_BRANK, M_BRAND},
    {O_BMULT, M_BRAND},
    {O_BTRUNC, M_BRAND},
    {O_REORTH, M_BRAND},
    {O_RMULT, MB(BRKFAC) | MB(BRCKFAC)},
    {O_CMULT, MB(BRCKFAC)},
    {O_CFRAC, MB(BRCKFAC)},
};

bool cli_factored_default(ngd_method m, ngd_structure K, ngd_structure C) {
    if (m >= NGD_METHOD_KFAC && m <= NGD_METHOD_BRCKFAC) return true;
    const bool singd = m == NGD_METHOD_SINGD || m == NGD_METHOD_INGD || m == NGD_METHOD_IKFAC;
    return singd && K == NGD_STRUCT_DENSE && C == NGD_STRUCT_DENSE;
}

// The plain parameters' rule (--param-optim, --param-lr, --param-wd) as an add_param
// override: AdamW with its own lr (1e-3) and no weight decay under a second-order method;
// otherwise the method's rule and hyper-parameters, edited by the two options.
int train_param_rule(train_opts *t) {
    if (t->param_method < 0 && !t->has_param_lr && !t->has_param_wd) return 0;
    const bool adam_method = t->cfg.method == NGD_METHOD_ADAMW;
    const ngd_method pm = t->param_method >= 0 ? (ngd_method)t->param_method
                          : adam_method        ? NGD_METHOD_ADAMW
                                               : NGD_METHOD_SGD;
    ngd_config *p = &t->param_cfg;
    *p = ngd_config_default(pm);
    const bool own = pm == NGD_METHOD_ADAMW && !adam_method; // AdamW beside another method
    p->lr = own ? 1e-3f : t->cfg.lr;
    p->weight_decay = own ? 0.0f : t->cfg.weight_decay;
    p->momentum = t->cfg.momentum, p->nesterov = t->cfg.nesterov;
    p->beta1 = t->cfg.beta1, p->beta2 = t->cfg.beta2, p->eps = t->cfg.eps;
    if (t->has_param_lr) p->lr = t->param_lr;
    if (t->has_param_wd) p->weight_decay = t->param_wd;
    char msg[256];
    if (ngd_config_validate(p, msg, sizeof msg) != NGD_OK) {
        cli_error("see --param-optim, --param-lr, --param-wd", "plain parameters: %s", msg);
        return -1;
    }
    t->has_param_cfg = true;
    return 0;
}

// ngd_config_validate names the fields of ngd_config ("kfac.damping_rel must be >= 0"); the
// command names its options ("--damping must be >= 0"): the field names before the verb of
// the message are replaced by the options that set them.
void train_name_options(const char *msg, char *out, size_t cap) {
    static const char *const MAP[][2] = {
        {"lr", "--lr"},
        {"momentum", "--momentum"},
        {"weight_decay", "--weight-decay"},
        {"nesterov", "--nesterov"},
        {"beta1", "--beta1"},
        {"beta2", "--beta2"},
        {"eps", "--eps"},
        {"damping", "--damping"},
        {"alpha1", "--alpha1"},
        {"T", "--T"},
        {"lr_cov", "--lr-cov"},
        {"kfac_approx", "--kfac-approx"},
        {"structure_K", "--structure (K)"},
        {"structure_C", "--structure (C)"},
        {"kfac.rho", "--rho"},
        {"kfac.T_u", "--T-u"},
        {"kfac.T_i", "--T-i"},
        {"kfac.damping_rel", "--damping"},
        {"kfac.clip", "--clip"},
        {"kfac.clip_kappa", "--clip-kappa"},
        {"kfac.rank", "--rank"},
        {"kfac.brand_mult", "--brand-mult"},
        {"refresh_mult", "--refresh-mult"},
        {"kfac.refresh_mult", "--refresh-mult"},
        {"kfac.oversample", "--oversample"},
        {"kfac.power_iters", "--power-iters"},
        {"corr_mult", "--corr-mult"},
        {"kfac.corr_frac", "--corr-frac"},
        {"kfac.factored_apply", "--factored"},
        {"kfac.identity_init", "--identity-init"},
        {"kfac.factor_arith", "--kfac-arith"},
    };
    size_t subject = strlen(msg); // the names come before the verb (or a colon)
    static const char *const VERBS[] = {" must", " needs", " is ", ":"};
    for (size_t i = 0; i < sizeof VERBS / sizeof VERBS[0]; i++) {
        const char *v = strstr(msg, VERBS[i]);
        if (v && (size_t)(v - msg) < subject) subject = (size_t)(v - msg);
    }
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; msg[i] && o + 1 < cap;) {
        size_t n = i < subject ? strspn(msg + i, "abcdefghijklmnopqrstuvwxyz"
                                                 "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")
                               : 0;
        const char *rep = NULL;
        for (size_t k = 0; n && k < sizeof MAP / sizeof MAP[0]; k++)
            if (strlen(MAP[k][0]) == n && !strncmp(msg + i, MAP[k][0], n)) rep = MAP[k][1];
        int w = rep ? snprintf(out + o, cap - o, "%s", rep)
                    : snprintf(out + o, cap - o, "%.*s", (int)(n ? n : 1), msg + i);
        o += (size_t)w < cap - o ? (size_t)w : cap - o - 1;
        i += n ? n : 1;
    }
}

bool train_method_uses(ngd_method m, int id) {
    for (size_t k = 0; k < sizeof OPT_METHODS / sizeof OPT_METHODS[0]; k++)
        if (OPT_METHODS[k].id == id) return (OPT_METHODS[k].methods & (1u << m)) != 0;
    return true;
}

// Refuses an option given (given[i] for opts[i]) to a method that does not use it.
int train_check_methods(const train_opts *t, const cli_opt *opts, const bool *given, size_t n) {
    static const ngd_method ORDER[] = {// as --optim lists them
                                       NGD_METHOD_SGD,    NGD_METHOD_ADAMW,   NGD_METHOD_SINGD,
                                       NGD_METHOD_INGD,   NGD_METHOD_IKFAC,   NGD_METHOD_KFAC,
                                       NGD_METHOD_RSKFAC, NGD_METHOD_SREKFAC, NGD_METHOD_BKFAC,
                                       NGD_METHOD_BRKFAC, NGD_METHOD_BRCKFAC};
    const unsigned me = 1u << t->method;
    for (size_t i = 0; i < n; i++) {
        if (!given[i]) continue;
        const int id = opts[i].id;
        if (id == O_ALPHA1 && t->cfg.kfac_like && t->method != NGD_METHOD_IKFAC) {
            cli_error("drop --alpha1, or --kfac-like",
                      "--alpha1 is not used with --kfac-like "
                      "(the IKFAC rule has no Riemannian momentum: α1 = 0)");
            return -1;
        }
        // the plain parameters' rule takes β1, β2, ε (AdamW) or momentum, Nesterov (SGD)
        const bool adam_param = t->param_method == NGD_METHOD_ADAMW;
        const bool sgd_param = t->param_method == NGD_METHOD_SGD;
        if ((id == O_BETA1 || id == O_BETA2 || id == O_EPS) && adam_param) continue;
        if ((id == O_MOM || id == O_NESTEROV) && sgd_param) continue;
        for (size_t k = 0; k < sizeof OPT_METHODS / sizeof OPT_METHODS[0]; k++) {
            if (OPT_METHODS[k].id != id || (OPT_METHODS[k].methods & me)) continue;
            char users[160] = "";
            for (size_t j = 0; j < sizeof ORDER / sizeof ORDER[0]; j++)
                if (OPT_METHODS[k].methods & (1u << ORDER[j]))
                    snprintf(users + strlen(users), sizeof users - strlen(users), "%s%s",
                             users[0] ? ", " : "", ngd_method_name(ORDER[j]));
            const bool most = __builtin_popcount(OPT_METHODS[k].methods) > 6;
            char hint[128];
            snprintf(hint, sizeof hint, "drop --%s, or choose %s with --optim%s", opts[i].name,
                     most ? "another method" : "one of those methods",
                     id == O_BETA1 || id == O_BETA2 || id == O_EPS ? " (or --param-optim adamw)"
                     : id == O_MOM || id == O_NESTEROV             ? " (or --param-optim sgd)"
                                                                   : "");
            if (most) // used by most methods: name the exception
                cli_error(hint, "--%s is not used by %s", opts[i].name, ngd_method_name(t->method));
            else
                cli_error(hint, "--%s is used only by %s, not by %s", opts[i].name, users,
                          ngd_method_name(t->method));
            return -1;
        }
    }
    return 0;
}

// Text data goes with a token model (chargpt), image data with the others.
int train_check_model_data(const train_opts *t) {
    for (size_t i = 0; nn_model_list(i); i++) {
        const nn_model_ops *mo = nn_model_list(i);
        if (strcmp(mo->name, t->model) || t->text == (mo->forward_tokens != NULL)) continue;
        cli_error(t->text ? "text data needs a token model: --model chargpt"
                          : "token models (chargpt) read text: --data shakespeare",
                  "--model %s cannot train on --data %s", t->model, t->data);
        return -1;
    }
    return 0;
}

static bool model_linear_only(const char *name) {
    for (size_t i = 0; nn_model_list(i); i++)
        if (!strcmp(nn_model_list(i)->name, name)) return nn_model_list(i)->linear_only;
    return false;
}

// Options that only mean something beside another option or kind of data: given where they
// would be ignored, they are refused (as an option of another method is).
int train_check_pairs(const train_opts *t, const cli_opt *opts, const bool *given, size_t n) {
    const bool singd = (1u << t->method) & M_SINGDS;
    const ngd_structure kK = t->cfg.structure_K.kind, kC = t->cfg.structure_C.kind;
    int factored = 0; // --factored and --no-factored both given: which one wins is not clear
    for (size_t i = 0; i < n; i++)
        if (given[i] && (opts[i].id == O_FACTORED || opts[i].id == O_NOFACTORED)) factored++;
    if (factored > 1) {
        cli_error("give one of them", "--factored and --no-factored contradict each other");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!given[i]) continue;
        const int id = opts[i].id;
        const char *why = NULL, *hint = NULL;
        if (id == O_CONTEXT && !t->text)
            why = "--context is for text models", hint = "drop it, or train on --data shakespeare";
        else if (id == O_AUGMENT && t->text)
            why = "--augment is for image data", hint = "drop it";
        else if ((id == O_POPTIM || id == O_PLR || id == O_PWD || id == O_APPROX) &&
                 model_linear_only(t->model))
            why = id == O_APPROX ? "--kfac-approx is for convolutions and sequences, which "
                                   "this model does not have"
                                 : "the model has no plain parameters (norm scales, "
                                   "embeddings: its every layer is a Linear one) for "
                                   "--param-optim, --param-lr, --param-wd",
            hint = "drop it";
        else if (id == O_CKPTEVERY && !t->ckpt)
            why = "--checkpoint-every needs --checkpoint", hint = "add --checkpoint FILE";
        else if (id == O_QUIRK && kK != NGD_STRUCT_BLOCKDIAG && kC != NGD_STRUCT_BLOCKDIAG)
            why = "--official-blockdiag is for block-diagonal factors",
            hint = "drop it, or choose --structure block30diagonal (or another block size)";
        else if (id == O_KAPPA && t->cfg.kfac.clip == NGD_CLIP_NONE)
            why = "--clip-kappa is not used with --clip none", hint = "drop one of them";
        else if (id == O_WDSTART && t->cfg.weight_decay == 0.0f)
            why = "--wd-start is not used with --weight-decay 0", hint = "drop one of them";
        else if ((id == O_FACTORED || id == O_NOFACTORED) && singd &&
                 (kK != NGD_STRUCT_DENSE || kC != NGD_STRUCT_DENSE))
            why = id == O_FACTORED ? "--factored is for SINGD's dense factors"
                                   : "--no-factored is for SINGD's dense factors (other "
                                     "structures always precondition the gradient)",
            hint = "drop it, or choose --structure dense";
        if (why) {
            cli_error(hint, "%s", why);
            return -1;
        }
    }
    return 0;
}
