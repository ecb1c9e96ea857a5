/*
 * train.c — `ngd train`: trains a model of the engine on an image-classification data set
 * (or a character-level model on text) with any libngd method, and `ngd eval`: a checkpoint
 * on the test set.
 *
 * Options come from one table (OPTS) that generates both getopt_long's array and --help, so
 * the help cannot drift from what is parsed. Logs are JSON lines (cJSON): one "step" record
 * every --log-every steps (loss, accuracy, lr, samples/s, per-layer health), one "eval"
 * record per epoch, one "summary" at the end. A progress bar is drawn on stderr only when it
 * is a terminal; otherwise plain periodic lines. Training checkpoints (docs/formats.md) hold
 * the model's parameters and buffers, the optimizer state (ngd_optim_save_mem), the step,
 * and the data order and RNG, so --resume continues bit-identically. A non-finite loss skips
 * the step; --max-skips consecutive ones stop the run with the last checkpoint intact.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cli.h"
#include "data.h"
#include "dist.h"
#include "model.h"
#include "ngd.h"

// ---- the option table ----
enum {
    O_MODEL = 256,
    O_WIDTHS,
    O_DATA,
    O_DATADIR,
    O_SUBSET,
    O_OPTIM,
    O_LR,
    O_MOM,
    O_WD,
    O_NESTEROV,
    O_BETA1,
    O_BETA2,
    O_EPS,
    O_DAMPING,
    O_LRCOV,
    O_ALPHA1,
    O_T,
    O_STRUCT,
    O_APPROX,
    O_KFACLIKE,
    O_NORMCOV,
    O_FDTYPE,
    O_QUIRK,
    O_EPOCHS,
    O_MAXSTEPS,
    O_BATCH,
    O_SEED,
    O_THREADS,
    O_EVALEVERY,
    O_LOG,
    O_LOGEVERY,
    O_CKPT,
    O_CKPTEVERY,
    O_RESUME,
    O_MAXSKIPS,
    O_AUGMENT,
    O_QUIET,
    O_HELP,
    O_BUDGET,
    O_SCHED,
    O_CONTEXT,
    O_RHO,
    O_TU,
    O_TI,
    O_KDAMP,
    O_CLIP,
    O_KAPPA,
    O_WDSTART,
    O_IDINIT,
    O_RANK,
    O_OVERS,
    O_POWER,
    O_TAIL,
    O_BRANK,
    O_BMULT,
    O_RMULT,
    O_CMULT,
    O_CFRAC,
    O_BTRUNC,
    O_REORTH,
    O_KSEED,
    O_FACTORED,
    O_POPTIM,
    O_PLR,
    O_PWD,
    O_PRECISION
};

static const cli_opt OPTS[] = {
    {"model", 1, O_MODEL, "NAME",
     "model: mlp, cnn, chargpt, ... (default mlp; chargpt for "
     "text)"},
    {"widths", 1, O_WIDTHS, "W1,W2,..",
     "hidden widths (mlp), stage channels (cnn), C,DEPTH,HEADS "
     "(chargpt)"},
    {"data", 1, O_DATA, "NAME",
     "fashion-mnist (default), mnist, cifar10, cifar100, "
     "shakespeare (text)"},
    {"data-dir", 1, O_DATADIR, "DIR", "folder of the data files (default: the set's usual place)"},
    {"subset", 1, O_SUBSET, "N",
     "only the first N training and N/5 test images (text: N "
     "characters)"},
    {"optim", 1, O_OPTIM, "NAME",
     "sgd, adamw, singd (default), ingd, ikfac, kfac, rskfac, "
     "srekfac, bkfac, brkfac, brckfac"},
    {"lr", 1, O_LR, "X", "learning rate β2 (method default)"},
    {"momentum", 1, O_MOM, "X", "momentum α2 (method default)"},
    {"weight-decay", 1, O_WD, "X", "weight decay γ (method default)"},
    {"nesterov", 0, O_NESTEROV, NULL, "Nesterov momentum (sgd)"},
    {"beta1", 1, O_BETA1, "X", "AdamW β1 (0.9)"},
    {"beta2", 1, O_BETA2, "X", "AdamW β2 (0.999)"},
    {"eps", 1, O_EPS, "X", "AdamW ε (1e-8)"},
    {"damping", 1, O_DAMPING, "X",
     "damping: SINGD λ (1e-3); K-FAC family relative λ_rel "
     "(0.1, × the largest eigenvalue)"},
    {"lr-cov", 1, O_LRCOV, "X", "SINGD factor step β1 (1e-2)"},
    {"alpha1", 1, O_ALPHA1, "X", "SINGD Riemannian momentum α1 (0.5)"},
    {"T", 1, O_T, "N", "SINGD preconditioner update period (10)"},
    {"structure", 1, O_STRUCT, "K[,C]",
     "SINGD factor structures: dense, diagonal, "
     "block30diagonal, hierarchical15_15, triltoeplitz, ..."},
    {"kfac-approx", 1, O_APPROX, "MODE",
     "expand (default) or reduce, for conv layers and "
     "sequences"},
    {"kfac-like", 0, O_KFACLIKE, NULL, "IKFAC update rule (sets α1 = 0)"},
    {"normalize-lr-cov", 0, O_NORMCOV, NULL, "normalised factor steps"},
    {"factor-dtype", 1, O_FDTYPE, "T", "storage of SINGD factors: f32 (default) or bf16"},
    {"official-blockdiag", 0, O_QUIRK, NULL, "reproduce the official block-diagonal quirk"},
    {"rho", 1, O_RHO, "X", "K-FAC family: factor average decay ρ (0.95)"},
    {"T-u", 1, O_TU, "N", "K-FAC family: statistics period T_u (10)"},
    {"T-i", 1, O_TI, "N", "K-FAC family: inverse / RSVD refresh period T_i (50)"},
    {"kfac-damping", 1, O_KDAMP, "KIND",
     "K-FAC: exact (λ_rel·maxγ·maxα on the Kronecker "
     "product, default) or pi (factored π-damping)"},
    {"clip", 1, O_CLIP, "KIND",
     "K-FAC family step clip: rms (per layer, default), kl (global), "
     "none"},
    {"clip-kappa", 1, O_KAPPA, "X", "K-FAC family clip κ (0.07)"},
    {"wd-start", 1, O_WDSTART, "N",
     "K-FAC family: decoupled weight decay from this step "
     "(200 = 20·T_u)"},
    {"identity-init", 1, O_IDINIT, "WHERE",
     "K-FAC family identity start: in_damping (default) "
     "or in_factor (kfac, rskfac, srekfac)"},
    {"rank", 1, O_RANK, "N", "RS/SRE/B-KFAC target rank r (220)"},
    {"oversample", 1, O_OVERS, "N", "RSVD oversampling p (10)"},
    {"power-iters", 1, O_POWER, "N", "RSVD power iterations q (4)"},
    {"tail", 1, O_TAIL, "MODEL", "low-rank tail: zero (default) or min_kept"},
    {"brand-rank", 1, O_BRANK, "N", "Brand rank r_B (0 = --rank)"},
    {"brand-mult", 1, O_BMULT, "N", "Brand update period in statistics steps m_B (1)"},
    {"refresh-mult", 1, O_RMULT, "N", "B-R/BRC refresh period in T_i's m_BR (1)"},
    {"corr-mult", 1, O_CMULT, "N", "BRC correction period in Brand steps m_C (5)"},
    {"corr-frac", 1, O_CFRAC, "X", "BRC corrected fraction φ (0.2)"},
    {"brand-truncate", 1, O_BTRUNC, "WHEN", "after (each update, default) or before_next"},
    {"reorth-every", 1, O_REORTH, "N",
     "re-orthonormalise Brand bases every N updates (50; 0 = "
     "never)"},
    {"kfac-seed", 1, O_KSEED, "N", "seed of the RSVD sketches and correction subsets (0)"},
    {"factored", 0, O_FACTORED, NULL,
     "RS/SRE/B-KFAC: linear-cost factored application for "
     "fully connected layers (docs/algorithms.md#factored-application)"},
    {"param-optim", 1, O_POPTIM, "NAME",
     "rule of the plain parameters (embeddings, norm "
     "scales): sgd or adamw (default: adamw under adamw, "
     "else sgd with --lr, --momentum, --weight-decay)"},
    {"param-lr", 1, O_PLR, "X",
     "their learning rate (--param-optim adamw beside another "
     "method: 1e-3; otherwise --lr)"},
    {"param-wd", 1, O_PWD, "X",
     "their weight decay (--param-optim adamw beside another "
     "method: 0; otherwise --weight-decay)"},
    {"epochs", 1, O_EPOCHS, "N", "epochs (default 2)"},
    {"max-steps", 1, O_MAXSTEPS, "N", "stop after N steps in all (0 = no limit)"},
    {"schedule", 1, O_SCHED, "NAME",
     "learning-rate schedule: constant (default) or cosine "
     "(decays to 0 over --epochs)"},
    {"time-budget", 1, O_BUDGET, "SECONDS",
     "stop training after this much wall time, then "
     "evaluate (0 = no limit)"},
    {"batch", 1, O_BATCH, "N", "batch size (default 128; text: sequences; mpirun: per rank)"},
    {"context", 1, O_CONTEXT, "T", "context length of text models (default 64)"},
    {"seed", 1, O_SEED, "N", "seed of initialisation, shuffling and augmentation (0)"},
    {"threads", 1, O_THREADS, "N", "OpenMP threads (default: OMP_NUM_THREADS or all cores)"},
    {"precision", 1, O_PRECISION, "P",
     "f32 (default) or bf16: Linear and Conv2d GEMMs on bf16 operands (f32 "
     "accumulation, f32 master weights; fast with AVX512-BF16)"},
    {"eval-every", 1, O_EVALEVERY, "N",
     "evaluate on the test set every N epochs (1; 0 = end only)"},
    {"log", 1, O_LOG, "FILE", "JSON-lines log (default runs/<model>-<data>-<optim>.jsonl)"},
    {"log-every", 1, O_LOGEVERY, "N", "log a step record every N steps (20)"},
    {"checkpoint", 1, O_CKPT, "FILE", "write a training checkpoint to FILE (atomically)"},
    {"checkpoint-every", 1, O_CKPTEVERY, "N", "checkpoint every N steps (default: each epoch)"},
    {"resume", 1, O_RESUME, "FILE", "continue a run from a checkpoint (bit-identical)"},
    {"max-skips", 1, O_MAXSKIPS, "N", "stop after N consecutive non-finite steps (5)"},
    {"augment", 0, O_AUGMENT, NULL, "random crop (pad 4) + horizontal flip (CIFAR)"},
    {"quiet", 0, O_QUIET, NULL, "no progress output"},
    {"help", 0, O_HELP, NULL, "this text"},
};
#define NOPTS (sizeof OPTS / sizeof OPTS[0])

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
    {O_STRUCT, M_SINGDS},
    {O_KFACLIKE, M_SINGDS},
    {O_NORMCOV, M_SINGDS},
    {O_FDTYPE, M_SINGDS},
    {O_QUIRK, M_SINGDS},
    {O_RHO, M_KFACS},
    {O_TU, M_KFACS},
    {O_TI, M_KFACS},
    {O_KDAMP, MB(KFAC)},
    {O_CLIP, M_KFACS},
    {O_KAPPA, M_KFACS},
    {O_WDSTART, M_KFACS},
    {O_IDINIT, M_KFACS},
    {O_RANK, M_LOWRANK},
    {O_OVERS, M_LOWRANK},
    {O_POWER, M_LOWRANK},
    {O_TAIL, M_LOWRANK},
    {O_KSEED, M_LOWRANK},
    {O_FACTORED, M_KFACS}, // kfac: refused by libngd, which says why
    {O_BRANK, M_BRAND},
    {O_BMULT, M_BRAND},
    {O_BTRUNC, M_BRAND},
    {O_REORTH, M_BRAND},
    {O_RMULT, MB(BRKFAC) | MB(BRCKFAC)},
    {O_CMULT, MB(BRCKFAC)},
    {O_CFRAC, MB(BRCKFAC)},
};

// `ngd eval` takes these options of OPTS only (with its own help); the run's model, data
// set, widths, subset, context and batch come from the checkpoint (version 2 on).
static const cli_opt EVAL_OPTS[] = {
    {"resume", 1, O_RESUME, "FILE", "the training checkpoint to evaluate (required)"},
    {"data-dir", 1, O_DATADIR, "DIR", "folder of the data files (default: the set's usual place)"},
    {"batch", 1, O_BATCH, "N", "evaluation batch (default: the run's; text: windows per batch)"},
    {"threads", 1, O_THREADS, "N", "OpenMP threads (default: OMP_NUM_THREADS or all cores)"},
    {"seed", 1, O_SEED, "N", "seed of the text sample printed after a text model's eval (0)"},
    {"model", 1, O_MODEL, "NAME", "check that the checkpoint is of this model"},
    {"data", 1, O_DATA, "NAME", "check that the checkpoint is of this data set"},
    {"widths", 1, O_WIDTHS, "W1,W2,..",
     "the run's widths, for a checkpoint of version 1 (which "
     "does not record them); a newer one is checked"},
    {"subset", 1, O_SUBSET, "N", "the run's --subset, the same way"},
    {"context", 1, O_CONTEXT, "T", "the run's --context (text), the same way"},
    {"help", 0, O_HELP, NULL, "this text"},
};
#define NEVAL_OPTS (sizeof EVAL_OPTS / sizeof EVAL_OPTS[0])

static void print_help(FILE *f, const char *cmd) {
    if (!strcmp(cmd, "eval")) {
        fprintf(f, "usage: ngd eval --resume FILE [options]\n\n"
                   "Evaluates the model of a training checkpoint on the test set (text: a fixed\n"
                   "set of validation windows) and prints its loss, accuracy and the CRC of its\n"
                   "parameters (the summary record of the training log has the same). The\n"
                   "model, data set, widths, subset and context are those the checkpoint\n"
                   "records; no optimizer state is read. Training options are refused.\n\n"
                   "options:\n");
        cli_print_opts(f, EVAL_OPTS, NEVAL_OPTS, 20);
        return;
    }
    fprintf(f, "usage: ngd %s [options]\n\n", cmd);
    fprintf(f, "Trains a model on a data set with any libngd optimizer; prints per-epoch test\n"
               "accuracy, logs JSON lines, writes checkpoints. Under Open MPI's mpirun\n"
               "(mpirun -np N ngd train ...) each rank trains --batch samples of a global\n"
               "batch of N x --batch, the run equals one process's with --batch N x --batch,\n"
               "and rank 0 logs and checkpoints; NGD_DIST_SHARE=auto|replicate|owner says\n"
               "how the ranks share factor work (docs/distributed.md).\n\noptions:\n");
    cli_print_opts(f, OPTS, NOPTS, 26);
    fprintf(f, "\nmodels:\n");
    for (size_t i = 0; nn_model_list(i); i++)
        fprintf(f, "  %-8s %s\n", nn_model_list(i)->name, nn_model_list(i)->help);
}

typedef struct {
    const char *model, *data, *data_dir, *log, *ckpt, *resume;
    size_t widths[NN_MODEL_MAX_WIDTHS], nwidths, subset;
    ngd_method method; // as chosen (--optim): ingd and ikfac are cfg.method SINGD to libngd
    ngd_config cfg;
    size_t epochs, max_steps, batch, eval_every, log_every, ckpt_every, max_skips;
    size_t context; // text models: tokens per sequence
    bool text;      // the data set is text (token model, loss averaged over batch and sequence)
    float time_budget;
    bool cosine;
    uint64_t seed;
    int threads;
    bool augment, quiet;
    int param_method; // --param-optim: NGD_METHOD_SGD / _ADAMW, or -1 (the method's rule)
    float param_lr, param_wd;
    bool has_param_lr, has_param_wd;
    ngd_config param_cfg; // their add_param override, when has_param_cfg
    bool has_param_cfg;
    bool bf16;         // --precision bf16
    bool fdtype_given; // --factor-dtype was given (then --precision leaves the factors alone)
} train_opts;

// ---- option parsing helpers: every bad value is a usage error naming the option ----
static int parse_f(const char *opt, const char *s, float *out) {
    double v;
    if (cli_parse_real(opt, s, &v)) return -1;
    if (fabs(v) > (double)FLT_MAX) {
        cli_error("give a number of a sensible size", "--%s: '%s' is out of range", opt, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

static int parse_z(const char *opt, const char *s, size_t *out) {
    unsigned long long v;
    if (cli_parse_whole(opt, s, 0, SIZE_MAX, &v)) return -1;
    *out = (size_t)v;
    return 0;
}

// A whole number in [lo, hi] (hi = SIZE_MAX: no upper bound); the error names the range.
static int parse_zr(const char *opt, const char *s, size_t lo, size_t hi, size_t *out) {
    if (parse_z(opt, s, out)) return -1;
    if (*out < lo || *out > hi) {
        if (hi == SIZE_MAX)
            cli_error(NULL, "--%s must be a whole number >= %zu (got %s)", opt, lo, s);
        else
            cli_error(NULL, "--%s must be a whole number in [%zu, %zu] (got %s)", opt, lo, hi, s);
        return -1;
    }
    return 0;
}

// The K-FAC family's named choices: --kfac-damping, --clip, --identity-init, --tail,
// --brand-truncate. Returns -1 (after a usage error) for an unknown name.
static int parse_kfac_enum(int opt, const char *v, ngd_kfac_options *k) {
    static const struct {
        int opt;
        const char *name;
        int value;
    } T[] = {
        {O_KDAMP, "exact", NGD_KFAC_DAMP_EXACT_REL},
        {O_KDAMP, "pi", NGD_KFAC_DAMP_FACTORED_PI},
        {O_CLIP, "rms", NGD_CLIP_RMS},
        {O_CLIP, "kl", NGD_CLIP_KL},
        {O_CLIP, "none", NGD_CLIP_NONE},
        {O_IDINIT, "in_damping", NGD_IDINIT_IN_DAMPING},
        {O_IDINIT, "in_factor", NGD_IDINIT_IN_FACTOR},
        {O_TAIL, "zero", NGD_TAIL_ZERO},
        {O_TAIL, "min_kept", NGD_TAIL_MIN_KEPT},
        {O_BTRUNC, "after", NGD_BRAND_TRUNC_AFTER},
        {O_BTRUNC, "before_next", NGD_BRAND_TRUNC_BEFORE_NEXT},
    };
    char choices[128] = "";
    const char *flag = "";
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        if (T[i].opt != opt) continue;
        if (!strcmp(v, T[i].name)) {
            switch (opt) {
            case O_KDAMP: k->damping_kind = (ngd_kfac_damping)T[i].value; break;
            case O_CLIP: k->clip = (ngd_clip)T[i].value; break;
            case O_IDINIT: k->identity_init = (ngd_identity_init)T[i].value; break;
            case O_TAIL: k->tail = (ngd_tail_model)T[i].value; break;
            default: k->brand_truncate = (ngd_brand_truncate)T[i].value; break;
            }
            return 0;
        }
        if (choices[0]) strncat(choices, ", ", sizeof choices - strlen(choices) - 1);
        strncat(choices, T[i].name, sizeof choices - strlen(choices) - 1);
    }
    for (size_t i = 0; i < NOPTS; i++)
        if (OPTS[i].id == opt) flag = OPTS[i].name;
    cli_error(choices, "--%s: unknown value '%s'", flag, v);
    return -1;
}

// The plain parameters' rule (--param-optim, --param-lr, --param-wd) as an add_param
// override: AdamW with its own lr (1e-3) and no weight decay under a second-order method;
// otherwise the method's rule and hyper-parameters, edited by the two options.
static int param_rule(train_opts *t) {
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
static void name_options(const char *msg, char *out, size_t cap) {
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
        {"corr_mult", "--corr-mult"},
        {"kfac.corr_frac", "--corr-frac"},
        {"kfac.factored_apply", "--factored"},
        {"kfac.identity_init", "--identity-init"},
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

// Refuses an option given (given[i] for OPTS[i]) to a method that does not use it.
static int check_methods(const train_opts *t, const bool *given) {
    static const ngd_method ORDER[] = {// as --optim lists them
                                       NGD_METHOD_SGD,    NGD_METHOD_ADAMW,   NGD_METHOD_SINGD,
                                       NGD_METHOD_INGD,   NGD_METHOD_IKFAC,   NGD_METHOD_KFAC,
                                       NGD_METHOD_RSKFAC, NGD_METHOD_SREKFAC, NGD_METHOD_BKFAC,
                                       NGD_METHOD_BRKFAC, NGD_METHOD_BRCKFAC};
    const unsigned me = 1u << t->method;
    for (size_t i = 0; i < NOPTS; i++) {
        if (!given[i]) continue;
        const int id = OPTS[i].id;
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
            snprintf(hint, sizeof hint, "drop --%s, or choose %s with --optim%s", OPTS[i].name,
                     most ? "another method" : "one of those methods",
                     id == O_BETA1 || id == O_BETA2 || id == O_EPS ? " (or --param-optim adamw)"
                     : id == O_MOM || id == O_NESTEROV             ? " (or --param-optim sgd)"
                                                                   : "");
            if (most) // used by most methods: name the exception
                cli_error(hint, "--%s is not used by %s", OPTS[i].name, ngd_method_name(t->method));
            else
                cli_error(hint, "--%s is used only by %s, not by %s", OPTS[i].name, users,
                          ngd_method_name(t->method));
            return -1;
        }
    }
    return 0;
}

// Text data goes with a token model (chargpt), image data with the others.
static int check_model_data(const train_opts *t) {
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

static int parse_opts(int argc, char **argv, train_opts *t, const char *cmd) {
    memset(t, 0, sizeof *t);
    t->model = NULL, t->data = "fashion-mnist";
    t->context = 64;
    t->epochs = 2, t->batch = 128, t->eval_every = 1, t->log_every = 20, t->max_skips = 5;
    t->param_method = -1;
    const bool eval = !strcmp(cmd, "eval");
    if (eval) // not given: from the checkpoint (eval_setup)
        t->data = NULL, t->context = 0, t->batch = 0, t->subset = SIZE_MAX;
    const char *optim = "singd";
    struct option lo[NOPTS + 1];
    cli_longopts(OPTS, NOPTS, lo);
    // first pass: the method (its defaults are the base the other options edit)
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", lo, NULL)) != -1)
        if (c == O_OPTIM) optim = optarg;
    ngd_method m;
    if (ngd_method_parse(optim, &m) != NGD_OK) {
        cli_error("methods: sgd, adamw, singd, ingd, ikfac, kfac, rskfac, srekfac, bkfac, "
                  "brkfac, brckfac",
                  "--optim: unknown method '%s'", optim);
        return -1;
    }
    t->method = m;
    t->cfg = ngd_config_default(m);
    optind = 1;
    float f;
    size_t z;
    bool given[NOPTS] = {false};
    while ((c = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
        const char *nm = NULL;
        for (size_t i = 0; i < NOPTS; i++)
            if (OPTS[i].id == c) nm = OPTS[i].name, given[i] = true;
        switch (c) {
        case O_MODEL: t->model = optarg; break;
        case O_DATA: t->data = optarg; break;
        case O_DATADIR: t->data_dir = optarg; break;
        case O_OPTIM: break;
        case O_LOG: t->log = optarg; break;
        case O_CKPT: t->ckpt = optarg; break;
        case O_RESUME: t->resume = optarg; break;
        case O_NESTEROV: t->cfg.nesterov = true; break;
        case O_KFACLIKE: t->cfg.kfac_like = true, t->cfg.alpha1 = 0; break;
        case O_NORMCOV: t->cfg.normalize_lr_cov = true; break;
        case O_QUIRK: t->cfg.official_blockdiag_quirk = true; break;
        case O_FACTORED: t->cfg.kfac.factored_apply = true; break;
        case O_POPTIM:
            if (!strcmp(optarg, "sgd"))
                t->param_method = NGD_METHOD_SGD;
            else if (!strcmp(optarg, "adamw"))
                t->param_method = NGD_METHOD_ADAMW;
            else {
                cli_error("sgd or adamw", "--param-optim: unknown rule '%s'", optarg);
                return -1;
            }
            break;
        case O_PLR:
            if (parse_f(nm, optarg, &t->param_lr)) return -1;
            t->has_param_lr = true;
            break;
        case O_PWD:
            if (parse_f(nm, optarg, &t->param_wd)) return -1;
            t->has_param_wd = true;
            break;
        case O_AUGMENT: t->augment = true; break;
        case O_QUIET: t->quiet = true; break;
        case O_HELP:
        case 'h': print_help(stdout, cmd); exit(NGD_EXIT_OK);
        case O_WIDTHS: { // whole numbers >= 1, comma-separated: no empty list or entry
            const char *p = optarg;
            t->nwidths = 0;
            for (;;) {
                const size_t n = strcspn(p, ",");
                char tok[24] = "";
                if (n < sizeof tok) memcpy(tok, p, n), tok[n] = '\0';
                if (t->nwidths == NN_MODEL_MAX_WIDTHS || n == 0 || n >= sizeof tok ||
                    !cli_is_decimal(tok, true) || parse_z(nm, tok, &z) || z == 0) {
                    cli_error("e.g. --widths 256,128",
                              "--widths '%s': give 1 to %d whole numbers "
                              ">= 1, separated by commas",
                              optarg, NN_MODEL_MAX_WIDTHS);
                    return -1;
                }
                t->widths[t->nwidths++] = z;
                if (!p[n]) break;
                p += n + 1;
            }
            break;
        }
        case O_STRUCT: {
            char *comma = strchr(optarg, ',');
            if (comma) *comma = '\0';
            ngd_dtype keep = t->cfg.structure_K.dtype;
            if (ngd_structure_parse(optarg, &t->cfg.structure_K) ||
                ngd_structure_parse(comma ? comma + 1 : optarg, &t->cfg.structure_C)) {
                cli_error("structures: dense, diagonal, blockdiag (block30diagonal), hierarchical "
                          "(hierarchical15_15), triltoeplitz, triutoeplitz, tril_topleft_diag, "
                          "tril_bottomright_diag, triu_topleft_diag, triu_bottomright_diag",
                          "--structure: unknown structure in '%s%s%s'", optarg, comma ? "," : "",
                          comma ? comma + 1 : "");
                return -1;
            }
            t->cfg.structure_K.dtype = t->cfg.structure_C.dtype = keep;
            break;
        }
        case O_APPROX:
            if (!strcmp(optarg, "expand"))
                t->cfg.kfac_approx = NGD_KFAC_EXPAND;
            else if (!strcmp(optarg, "reduce"))
                t->cfg.kfac_approx = NGD_KFAC_REDUCE;
            else {
                cli_error("expand or reduce", "--kfac-approx: unknown mode '%s'", optarg);
                return -1;
            }
            break;
        case O_PRECISION:
            if (strcmp(optarg, "f32") && strcmp(optarg, "bf16")) {
                cli_error("f32 or bf16", "--precision: unknown precision '%s'", optarg);
                return -1;
            }
            t->bf16 = !strcmp(optarg, "bf16");
            break;
        case O_FDTYPE:
            if (strcmp(optarg, "f32") && strcmp(optarg, "bf16")) {
                cli_error("f32 or bf16", "--factor-dtype: unknown type '%s'", optarg);
                return -1;
            }
            t->cfg.structure_K.dtype = t->cfg.structure_C.dtype =
                !strcmp(optarg, "bf16") ? NGD_BF16 : NGD_F32;
            t->fdtype_given = true;
            break;
        case O_LR:
            if (parse_f(nm, optarg, &t->cfg.lr)) return -1;
            break;
        case O_MOM:
            if (parse_f(nm, optarg, &t->cfg.momentum)) return -1;
            break;
        case O_WD:
            if (parse_f(nm, optarg, &t->cfg.weight_decay)) return -1;
            break;
        case O_BETA1:
            if (parse_f(nm, optarg, &t->cfg.beta1)) return -1;
            break;
        case O_BETA2:
            if (parse_f(nm, optarg, &t->cfg.beta2)) return -1;
            break;
        case O_EPS:
            if (parse_f(nm, optarg, &t->cfg.eps)) return -1;
            break;
        case O_DAMPING:
            if (parse_f(nm, optarg, &f)) return -1;
            if (m >= NGD_METHOD_KFAC && m <= NGD_METHOD_BRCKFAC)
                t->cfg.kfac.damping_rel = f;
            else
                t->cfg.damping = f;
            break;
        case O_RHO:
            if (parse_f(nm, optarg, &t->cfg.kfac.rho)) return -1;
            break;
        case O_TU:
            if (parse_z(nm, optarg, &t->cfg.kfac.T_u)) return -1;
            break;
        case O_TI:
            if (parse_z(nm, optarg, &t->cfg.kfac.T_i)) return -1;
            break;
        case O_KAPPA:
            if (parse_f(nm, optarg, &t->cfg.kfac.clip_kappa)) return -1;
            break;
        case O_WDSTART:
            if (parse_z(nm, optarg, &t->cfg.kfac.wd_start)) return -1;
            break;
        case O_RANK:
            if (parse_z(nm, optarg, &t->cfg.kfac.rank)) return -1;
            break;
        case O_OVERS:
            if (parse_z(nm, optarg, &t->cfg.kfac.oversample)) return -1;
            break;
        case O_POWER:
            if (parse_z(nm, optarg, &t->cfg.kfac.power_iters)) return -1;
            break;
        case O_BRANK:
            if (parse_z(nm, optarg, &t->cfg.kfac.brand_rank)) return -1;
            break;
        case O_BMULT:
            if (parse_z(nm, optarg, &t->cfg.kfac.brand_mult)) return -1;
            break;
        case O_RMULT:
            if (parse_z(nm, optarg, &t->cfg.kfac.refresh_mult)) return -1;
            break;
        case O_CMULT:
            if (parse_z(nm, optarg, &t->cfg.kfac.corr_mult)) return -1;
            break;
        case O_CFRAC:
            if (parse_f(nm, optarg, &t->cfg.kfac.corr_frac)) return -1;
            break;
        case O_REORTH:
            if (parse_z(nm, optarg, &t->cfg.kfac.reorth_every)) return -1;
            break;
        case O_KSEED:
            if (parse_z(nm, optarg, &z)) return -1;
            t->cfg.kfac.seed = z;
            break;
        case O_KDAMP:
        case O_CLIP:
        case O_IDINIT:
        case O_TAIL:
        case O_BTRUNC:
            if (parse_kfac_enum(c, optarg, &t->cfg.kfac)) return -1;
            break;
        case O_LRCOV:
            if (parse_f(nm, optarg, &t->cfg.lr_cov)) return -1;
            break;
        case O_ALPHA1:
            if (parse_f(nm, optarg, &f)) return -1;
            t->cfg.alpha1 = f;
            break;
        case O_T:
            if (parse_z(nm, optarg, &t->cfg.T)) return -1;
            break;
        case O_SUBSET:
            if (parse_z(nm, optarg, &t->subset)) return -1;
            break;
        case O_EPOCHS:
            if (parse_z(nm, optarg, &t->epochs)) return -1;
            break;
        case O_MAXSTEPS:
            if (parse_z(nm, optarg, &t->max_steps)) return -1;
            break;
        case O_SCHED:
            if (strcmp(optarg, "constant") && strcmp(optarg, "cosine")) {
                cli_error("constant or cosine", "--schedule: unknown schedule '%s'", optarg);
                return -1;
            }
            t->cosine = !strcmp(optarg, "cosine");
            break;
        case O_BUDGET:
            if (parse_f(nm, optarg, &t->time_budget)) return -1;
            if (t->time_budget < 0) {
                cli_error("0 means no limit", "--time-budget must be >= 0 seconds (got %s)",
                          optarg);
                return -1;
            }
            break;
        case O_BATCH:
            if (parse_zr(nm, optarg, 1, SIZE_MAX, &t->batch)) return -1;
            break;
        case O_CONTEXT:
            if (parse_zr(nm, optarg, 1, SIZE_MAX, &t->context)) return -1;
            break;
        case O_SEED:
            if (parse_z(nm, optarg, &z)) return -1;
            t->seed = z;
            break;
        case O_THREADS:
            if (parse_zr(nm, optarg, 1, 1024, &z)) return -1;
            t->threads = (int)z;
            break;
        case O_EVALEVERY:
            if (parse_z(nm, optarg, &t->eval_every)) return -1;
            break;
        case O_LOGEVERY:
            if (parse_zr(nm, optarg, 1, SIZE_MAX, &t->log_every)) return -1;
            break;
        case O_CKPTEVERY:
            if (parse_z(nm, optarg, &t->ckpt_every)) return -1;
            break;
        case O_MAXSKIPS:
            if (parse_zr(nm, optarg, 1, SIZE_MAX, &t->max_skips)) return -1;
            break;
        default: cli_opt_error(cmd, lo, c, argv); return -1;
        }
    }
    for (size_t i = 0; eval && i < NOPTS; i++) {
        bool takes = false;
        for (size_t k = 0; k < NEVAL_OPTS; k++)
            takes |= EVAL_OPTS[k].id == OPTS[i].id;
        if (given[i] && !takes) {
            cli_error("run 'ngd eval --help' for its options",
                      "eval does not take --%s: it is an option of training (eval reads the "
                      "model from the checkpoint and needs no optimizer)",
                      OPTS[i].name);
            return -1;
        }
    }
    if (!eval && check_methods(t, given)) return -1;
    // --precision bf16: SINGD's factors in bf16, stored and computed (dense K and C; other
    // structures compute in f32), unless --factor-dtype chose otherwise; the K-FAC family's
    // factor averages rounded to bf16
    if (t->bf16 && !t->fdtype_given) {
        t->cfg.structure_K.dtype = t->cfg.structure_C.dtype = NGD_BF16;
        t->cfg.factor_compute = NGD_BF16;
    }
    if (t->bf16) t->cfg.kfac.ea_dtype = NGD_BF16; // the K-FAC family's factor averages
    if (optind < argc) {
        cli_error(!strcmp(cmd, "eval") ? "run 'ngd eval --help' for the options"
                                       : "run 'ngd train --help' for the options",
                  "unexpected argument '%s'", argv[optind]);
        return -1;
    }
    if (eval) return 0;
    // text data goes with a token model (chargpt), image data with the others; the loss of
    // text is averaged over batch and sequence, which libngd must know
    t->text = !strcmp(t->data, "shakespeare");
    if (!t->model) t->model = t->text ? "chargpt" : "mlp";
    if (check_model_data(t)) return -1;
    if (t->text) t->cfg.loss_average = NGD_LOSS_BATCH_SEQUENCE;
    char msg[256], named[320];
    if (ngd_config_validate(&t->cfg, msg, sizeof msg) != NGD_OK) {
        name_options(msg, named, sizeof named);
        cli_error("run 'ngd train --help' for the options", "%s", named);
        return -1;
    }
    return param_rule(t);
}

// ---- data ----
typedef struct {
    nn_dataset train, test;
    nn_text text; // --data shakespeare: train = the first 90%, validation = the last 10%
    char name[32];
} data_sets;

static int file_exists(const char *p) { return access(p, R_OK) == 0; }

#define TEXT_VAL_FRAC    0.1f
#define TEXT_DEFAULT_DIR "../shared/data/tinyshakespeare"

// Tiny Shakespeare (or any text file named input.txt in --data-dir); --subset N keeps the
// first N characters (the vocabulary is then theirs).
static int load_text(const train_opts *t, data_sets *d) {
    char err[512], a[1024];
    snprintf(a, sizeof a, "%s/input.txt", t->data_dir ? t->data_dir : TEXT_DEFAULT_DIR);
    if (!file_exists(a)) {
        cli_error("put Tiny Shakespeare's input.txt (or any text) in a folder and pass "
                  "--data-dir",
                  "shakespeare: no %s", a);
        return -1;
    }
    nn_status s = nn_text_load(&d->text, a, TEXT_VAL_FRAC, err, sizeof err);
    if (s == NN_OK && t->subset && t->subset < d->text.n) {
        char *buf = malloc(t->subset);
        for (size_t i = 0; buf && i < t->subset; i++)
            buf[i] = (char)d->text.itos[d->text.ids[i]];
        nn_text_free(&d->text);
        if (buf)
            s = nn_text_from_memory(&d->text, buf, t->subset, TEXT_VAL_FRAC, err, sizeof err);
        else {
            s = NN_ERR_NOMEM;
            snprintf(err, sizeof err, "shakespeare: out of memory");
        }
        free(buf);
    }
    if (s != NN_OK) {
        cli_error(NULL, "%s", err);
        nn_text_free(&d->text);
        return -1;
    }
    return 0;
}

static int load_data(const train_opts *t, data_sets *d) {
    char err[512], a[1024], b[1024], tra[1024] = ""; // tra: the training images, for messages
    const char *tea = a;                             // the test images, for messages
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", t->data);
    size_t ntr = t->subset, nte = t->subset ? (t->subset >= 5 ? t->subset / 5 : 1) : 0;
    nn_status s;
    if (t->text) return load_text(t, d);
    if (!strcmp(t->data, "fashion-mnist") || !strcmp(t->data, "mnist")) {
        bool fashion = t->data[0] == 'f';
        const char *dir = t->data_dir ? t->data_dir
                          : fashion   ? "/usr/share/datasets/fashion-mnist"
                                      : "data/mnist";
        snprintf(a, sizeof a, "%s/train-images-idx3-ubyte.gz", dir);
        if (!file_exists(a)) {
            snprintf(a, sizeof a, "%s/train-images-idx3-ubyte", dir);
            if (!file_exists(a)) {
                cli_error(fashion ? "install it: apt-get install dataset-fashion-mnist (or run "
                                    "scripts/deps.sh), or point --data-dir at your copy"
                                  : "download MNIST's four IDX files into a folder and pass "
                                    "--data-dir",
                          "%s: no %s/train-images-idx3-ubyte[.gz]", t->data, dir);
                return -1;
            }
        }
        bool gz = strstr(a, ".gz") != NULL;
        const char *ext = gz ? ".gz" : "";
        snprintf(a, sizeof a, "%s/train-images-idx3-ubyte%s", dir, ext);
        snprintf(b, sizeof b, "%s/train-labels-idx1-ubyte%s", dir, ext);
        s = nn_dataset_load_idx(&d->train, a, b, ntr, err, sizeof err);
        snprintf(tra, sizeof tra, "%s", a);
        if (s == NN_OK) {
            snprintf(a, sizeof a, "%s/t10k-images-idx3-ubyte%s", dir, ext);
            snprintf(b, sizeof b, "%s/t10k-labels-idx1-ubyte%s", dir, ext);
            s = nn_dataset_load_idx(&d->test, a, b, nte, err, sizeof err);
        }
    } else if (!strcmp(t->data, "cifar100") || !strcmp(t->data, "cifar10")) {
        bool c100 = !strcmp(t->data, "cifar100");
        const char *dir = t->data_dir ? t->data_dir
                          : c100      ? "../shared/data/cifar-100-binary"
                                      : "data/cifar-10-batches-bin";
        if (c100) {
            snprintf(a, sizeof a, "%s/train.bin", dir);
            const char *p1 = a;
            s = nn_dataset_open_cifar(&d->train, &p1, 1, NN_CIFAR100_FINE, ntr, err, sizeof err);
            snprintf(tra, sizeof tra, "%s", a);
            if (s == NN_OK) {
                snprintf(b, sizeof b, "%s/test.bin", dir);
                const char *p2 = b;
                s = nn_dataset_open_cifar(&d->test, &p2, 1, NN_CIFAR100_FINE, nte, err, sizeof err);
            }
        } else {
            char paths[5][1024];
            const char *pp[5];
            for (int i = 0; i < 5; i++) {
                snprintf(paths[i], sizeof paths[i], "%s/data_batch_%d.bin", dir, i + 1);
                pp[i] = paths[i];
            }
            s = nn_dataset_open_cifar(&d->train, pp, 5, NN_CIFAR10, ntr, err, sizeof err);
            snprintf(tra, sizeof tra, "%s", pp[0]);
            if (s == NN_OK) {
                snprintf(b, sizeof b, "%s/test_batch.bin", dir);
                const char *p2 = b;
                s = nn_dataset_open_cifar(&d->test, &p2, 1, NN_CIFAR10, nte, err, sizeof err);
            }
        }
        tea = b;
        if (s != NN_OK && !t->data_dir)
            fprintf(stderr, "hint: point --data-dir at the folder of the binary files\n");
    } else {
        cli_error("data sets: fashion-mnist, mnist, cifar10, cifar100, shakespeare",
                  "--data: "
                  "unknown data set '%s'",
                  t->data);
        return -2;
    }
    // the test set is fed to the model built for the training set, in the same buffers
    if (s == NN_OK) s = nn_dataset_check_match(&d->train, tra, &d->test, tea, err, sizeof err);
    if (s != NN_OK) {
        cli_error(NULL, "%s", err);
        nn_dataset_free(&d->train);
        nn_dataset_free(&d->test);
        return -1;
    }
    nn_dataset_compute_norm(&d->train);
    nn_dataset_set_norm(&d->test, d->train.mean, d->train.std);
    return 0;
}

// ---- training checkpoints (docs/formats.md "Training checkpoint") ----
#define TRN_MAGIC "NGDTRN\r\n"
#define TRN_VERSION                                                                                \
    3u // 2: the run's widths, subset, context and batch after the method;
       // 3: its --precision after the batch

typedef struct {
    unsigned char *b;
    size_t len, cap;
    bool oom;
} wb;

static void wb_put(wb *w, const void *p, size_t n) {
    if (w->oom) return;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 1 << 16;
        while (cap < w->len + n)
            cap *= 2;
        unsigned char *nb = realloc(w->b, cap);
        if (!nb) {
            w->oom = true;
            return;
        }
        w->b = nb, w->cap = cap;
    }
    memcpy(w->b + w->len, p, n);
    w->len += n;
}
// little-endian scalars (x86 and arm64 are little-endian; the format says so explicitly)
static void wb_u64(wb *w, uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    wb_put(w, b, 8);
}
static void wb_str(wb *w, const char *s) {
    wb_u64(w, strlen(s));
    wb_put(w, s, strlen(s));
}
static void wb_f32s(wb *w, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
                              (unsigned char)(u >> 24)};
        wb_put(w, b, 4);
    }
}

typedef struct {
    const unsigned char *b;
    size_t len, pos;
    bool bad;
} rb;
static const unsigned char *rb_get(rb *r, size_t n) {
    if (r->bad || n > r->len - r->pos) {
        r->bad = true;
        return NULL;
    }
    r->pos += n;
    return r->b + r->pos - n;
}
static uint64_t rb_u64(rb *r) {
    const unsigned char *b = rb_get(r, 8);
    uint64_t v = 0;
    if (b)
        for (int i = 0; i < 8; i++)
            v |= (uint64_t)b[i] << (8 * i);
    return v;
}
// A string of fewer than cap bytes into s (a longer one: r->bad, s empty).
static void rb_str(rb *r, char *s, size_t cap) {
    uint64_t n = rb_u64(r);
    const unsigned char *p = n < cap ? rb_get(r, (size_t)n) : NULL;
    s[0] = '\0';
    if (!p) {
        r->bad = true;
        return;
    }
    memcpy(s, p, (size_t)n);
    s[n] = '\0';
}
static void rb_f32s(rb *r, float *x, size_t n) {
    const unsigned char *b = rb_get(r, 4 * n);
    if (!b) return;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 |
                     (uint32_t)b[4 * i + 2] << 16 | (uint32_t)b[4 * i + 3] << 24;
        memcpy(&x[i], &u, 4);
    }
}

typedef struct {
    size_t step, epoch, skips;
    double wall; // seconds of training so far
} run_state;

// --data shakespeare: every step draws B random windows of T+1 characters of the training
// text (nn_text_batch); an "epoch" is n_train/(B·T) steps. Checkpoints keep its position
// and rng where an image run keeps its loader's (then with no sample order).
typedef struct {
    const nn_text *text;
    size_t pos, epoch, per_epoch; // steps done in the current epoch
    nn_rng rng;
} text_iter;

static const char *file_kind(mode_t m) {
    return S_ISDIR(m)    ? "a folder"
           : S_ISLNK(m)  ? "a symbolic link"
           : S_ISFIFO(m) ? "a FIFO"
           : S_ISCHR(m)  ? "a character device"
           : S_ISBLK(m)  ? "a block device"
           : S_ISSOCK(m) ? "a socket"
                         : "not a regular file";
}

// The checkpoint is committed by renaming a temporary file onto --checkpoint PATH, which
// would replace whatever is there (a device node, a FIFO, a symbolic link) with a regular
// file: PATH must be a regular file or absent, in an existing folder we may write (where the
// temporary goes). Checked before the data is loaded, not at the first checkpoint an epoch
// later, and again before every write. Returns -1 after an error naming PATH.
static int check_ckpt_target(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) == 0) {
        if (!S_ISREG(sb.st_mode)) {
            cli_error("give --checkpoint the path of a regular file, or of none yet",
                      "--checkpoint %s: is %s, not a regular file; refusing to replace it", path,
                      file_kind(sb.st_mode));
            return -1;
        }
    } else if (errno != ENOENT) {
        cli_error("give --checkpoint a path in a folder you can write", "--checkpoint %s: %s", path,
                  strerror(errno));
        return -1;
    }
    char *copy = strdup(path);
    if (!copy) {
        cli_error(NULL, "--checkpoint %s: out of memory", path);
        return -1;
    }
    const char *dir = dirname(copy);
    int rc = 0;
    errno = 0;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        cli_error("create the folder first, or give --checkpoint another path",
                  "--checkpoint %s: folder %s: %s", path, dir,
                  errno ? strerror(errno) : "not a folder");
        rc = -1;
    } else if (access(dir, W_OK | X_OK) != 0) {
        cli_error("give --checkpoint a path in a folder you can write",
                  "--checkpoint %s: folder %s is not writable: %s", path, dir, strerror(errno));
        rc = -1;
    }
    free(copy);
    return rc;
}

// Model state that is not a parameter (BatchNorm running statistics) comes from
// nn_model_buffers and is saved beside the parameters.
static int save_checkpoint(const char *path, const train_opts *t, nn_model *m, ngd_optim *o,
                           const nn_loader *ld, const text_iter *ti, const run_state *rs) {
    if (!dist_root()) return 0; // mpirun: rank 0 writes (every rank holds the same state)
    wb w = {0};
    wb_put(&w, TRN_MAGIC, 8);
    wb_u64(&w, TRN_VERSION);
    wb_str(&w, t->model);
    wb_str(&w, t->data);
    wb_str(&w, ngd_method_name(t->method));
    wb_u64(&w, t->nwidths); // as given (0: the model's defaults), so that eval builds it again
    for (size_t i = 0; i < t->nwidths; i++)
        wb_u64(&w, t->widths[i]);
    wb_u64(&w, t->subset), wb_u64(&w, t->context), wb_u64(&w, t->batch);
    wb_u64(&w, t->bf16 ? 1u : 0u); // --precision (version 3)
    wb_u64(&w, rs->step), wb_u64(&w, rs->epoch), wb_u64(&w, rs->skips);
    uint64_t wall;
    memcpy(&wall, &rs->wall, 8);
    wb_u64(&w, wall);
    if (ti) { // text: steps into the epoch, epoch, training characters, rng (no order)
        wb_u64(&w, ti->pos), wb_u64(&w, ti->epoch), wb_u64(&w, ti->text->n_train);
        for (int i = 0; i < 4; i++)
            wb_u64(&w, ti->rng.s[i]);
    } else {
        wb_u64(&w, ld->pos), wb_u64(&w, ld->epoch), wb_u64(&w, ld->ds->n);
        for (int i = 0; i < 4; i++)
            wb_u64(&w, ld->rng.s[i]);
        for (size_t i = 0; i < ld->ds->n; i++)
            wb_u64(&w, ld->order[i]);
    }
    wb_u64(&w, m->nparams);
    for (size_t i = 0; i < m->nparams; i++) {
        wb_u64(&w, m->params[i].n);
        wb_f32s(&w, m->params[i].p, m->params[i].n);
    }
    nn_param bufs[NN_MODEL_MAX_PARAMS];
    size_t nb = nn_model_buffers(m, bufs);
    wb_u64(&w, nb);
    for (size_t i = 0; i < nb; i++) {
        wb_u64(&w, bufs[i].n);
        wb_f32s(&w, bufs[i].p, bufs[i].n);
    }
    wb_u64(&w, m->nrngs);
    for (size_t i = 0; i < m->nrngs; i++)
        for (int j = 0; j < 4; j++)
            wb_u64(&w, m->rngs[i]->s[j]);
    void *ob = NULL;
    size_t olen = 0;
    if (ngd_optim_save_mem(o, &ob, &olen) != NGD_OK) w.oom = true;
    wb_u64(&w, olen);
    wb_put(&w, ob, olen);
    free(ob);
    uint32_t crc = ngd_file_crc32(w.b, w.len);
    unsigned char cb[4] = {(unsigned char)crc, (unsigned char)(crc >> 8),
                           (unsigned char)(crc >> 16), (unsigned char)(crc >> 24)};
    wb_put(&w, cb, 4);
    char msg[512];
    int rc = 0;
    if (check_ckpt_target(path))
        rc = -1;
    else if (w.oom) {
        cli_error(NULL, "checkpoint %s: out of memory", path);
        rc = -1;
    } else if (ngd_file_write_atomic(path, w.b, w.len, msg, sizeof msg) != NGD_OK) {
        cli_error("check the folder exists and is writable", "--checkpoint %s: %s", path, msg);
        rc = -1;
    }
    free(w.b);
    return rc;
}

// The run a checkpoint was written by: its header. Version 1 files have no shape fields.
typedef struct {
    uint64_t version;
    char model[32], data[32], method[32];
    bool has_shape; // version >= 2: widths (as given), subset, context, batch
    size_t widths[NN_MODEL_MAX_WIDTHS], nwidths, subset, context, batch;
    int precision; // version >= 3: 0 f32, 1 bf16; -1 not recorded (the run was f32 or bf16)
} ckpt_head;

// Checks the magic and the CRC of b[0..len) and reads the header into h; r is then the
// reader past it (without the CRC). Returns NULL, or why the file cannot be read.
static const char *read_head(const unsigned char *b, size_t len, rb *r, ckpt_head *h) {
    memset(h, 0, sizeof *h);
    *r = (rb){b, len, 0, false};
    if (len < 12 || memcmp(b, TRN_MAGIC, 8) != 0) return "not an ngd training checkpoint";
    uint32_t crc = (uint32_t)b[len - 4] | (uint32_t)b[len - 3] << 8 | (uint32_t)b[len - 2] << 16 |
                   (uint32_t)b[len - 1] << 24;
    if (ngd_file_crc32(b, len - 4) != crc) return "checksum mismatch (corrupt or truncated)";
    r->len = len - 4;
    rb_get(r, 8);
    h->version = rb_u64(r);
    if (h->version < 1 || h->version > TRN_VERSION) return "unsupported version";
    rb_str(r, h->model, sizeof h->model);
    rb_str(r, h->data, sizeof h->data);
    rb_str(r, h->method, sizeof h->method);
    if (h->version >= 2) {
        h->has_shape = true;
        h->nwidths = (size_t)rb_u64(r);
        if (h->nwidths > NN_MODEL_MAX_WIDTHS) return "bad header (widths)";
        for (size_t i = 0; i < h->nwidths; i++)
            h->widths[i] = (size_t)rb_u64(r);
        h->subset = (size_t)rb_u64(r), h->context = (size_t)rb_u64(r);
        h->batch = (size_t)rb_u64(r);
        if (!h->context || !h->batch) return "bad header (context, batch)";
    }
    h->precision = -1;
    if (h->version >= 3) {
        const uint64_t p = rb_u64(r);
        if (p > 1) return "bad header (precision)";
        h->precision = (int)p;
    }
    return r->bad ? "truncated header" : NULL;
}

// o NULL: the model only (ngd eval): the optimizer's name and state are not checked or read.
static int load_checkpoint(const char *path, const train_opts *t, nn_model *m, ngd_optim *o,
                           nn_loader *ld, text_iter *ti, run_state *rs) {
    size_t len;
    unsigned char *b = (unsigned char *)cli_read_file(path, &len, "--resume ");
    if (!b) return -1;
    char whybuf[160];
    rb r;
    ckpt_head h;
    const char *why = read_head(b, len, &r, &h);
    if (!why && strcmp(h.model, t->model) != 0) {
        snprintf(whybuf, sizeof whybuf, "it was written for --model %s, not %s", h.model, t->model);
        why = whybuf;
    } else if (!why && strcmp(h.data, t->data) != 0) {
        snprintf(whybuf, sizeof whybuf, "it was written for --data %s, not %s", h.data, t->data);
        why = whybuf;
    } else if (!why && h.precision >= 0 && (h.precision == 1) != t->bf16) {
        snprintf(whybuf, sizeof whybuf,
                 "it was written with --precision %s, not %s (resume it with --precision %s)",
                 h.precision ? "bf16" : "f32", t->bf16 ? "bf16" : "f32",
                 h.precision ? "bf16" : "f32");
        why = whybuf;
    } else if (!why && o) {
        ngd_method wm;
        const char *want = ngd_method_name(t->method);
        // version 1 files of ingd and ikfac runs name them "singd", as libngd's config does
        const bool old_singd =
            h.version == 1 && !strcmp(h.method, "singd") && t->cfg.method == NGD_METHOD_SINGD;
        if (strcmp(h.method, want) != 0 && !old_singd) {
            snprintf(whybuf, sizeof whybuf, "it was written by %s, not %s (--optim)",
                     ngd_method_parse(h.method, &wm) == NGD_OK ? h.method : "another optimizer",
                     want);
            why = whybuf;
        }
    }
    if (!why) {
        rs->step = (size_t)rb_u64(&r), rs->epoch = (size_t)rb_u64(&r),
        rs->skips = (size_t)rb_u64(&r);
        uint64_t wall = rb_u64(&r);
        memcpy(&rs->wall, &wall, 8);
        size_t pos = (size_t)rb_u64(&r), ep = (size_t)rb_u64(&r), nds = (size_t)rb_u64(&r);
        if (nds != (ti ? ti->text->n_train : ld->ds->n))
            why = "the training set has another size (--subset?)";
        else if (ti) { // (eval has its own batch: the position is not used there)
            if (o && pos > ti->per_epoch)
                why = "its epoch has another length (--batch, --context?)";
            ti->pos = pos, ti->epoch = ep;
            for (int i = 0; i < 4; i++)
                ti->rng.s[i] = rb_u64(&r);
        } else {
            ld->pos = pos, ld->epoch = ep;
            for (int i = 0; i < 4; i++)
                ld->rng.s[i] = rb_u64(&r);
            for (size_t i = 0; i < nds; i++) { // indices into the set: never trusted blindly
                ld->order[i] = (size_t)rb_u64(&r);
                if (ld->order[i] >= nds) why = "bad sample order";
            }
            if (pos > nds) why = "bad position in the epoch";
        }
    }
    if (!why && rb_u64(&r) != m->nparams) why = "the model has other parameters (--widths?)";
    for (size_t i = 0; !why && i < m->nparams; i++) {
        if (rb_u64(&r) != m->params[i].n)
            why = "a parameter has another shape (--widths?)";
        else
            rb_f32s(&r, m->params[i].p, m->params[i].n);
    }
    nn_param bufs[NN_MODEL_MAX_PARAMS];
    size_t nb = nn_model_buffers(m, bufs);
    if (!why && rb_u64(&r) != nb) why = "the model has other buffers";
    for (size_t i = 0; !why && i < nb; i++) {
        if (rb_u64(&r) != bufs[i].n)
            why = "a buffer has another shape";
        else
            rb_f32s(&r, bufs[i].p, bufs[i].n);
    }
    if (!why && rb_u64(&r) != m->nrngs) why = "the model has other random streams";
    for (size_t i = 0; !why && i < m->nrngs; i++)
        for (int j = 0; j < 4; j++)
            m->rngs[i]->s[j] = rb_u64(&r);
    if (!why) {
        size_t olen = (size_t)rb_u64(&r);
        const unsigned char *ob = rb_get(&r, olen);
        if (!ob || r.bad)
            why = "truncated";
        else if (o && ngd_optim_load_mem(o, ob, olen) != NGD_OK) {
            // libngd's message lists its arrays; what a person needs is which options differ
            cli_error("resume with the --optim, --structure, --factor-dtype and other optimizer "
                      "options of the run that wrote it",
                      "--resume %s: its optimizer state does not fit %s with these options (it "
                      "was written by another optimizer or with other optimizer options)",
                      path, ngd_method_name(t->method));
            free(b);
            return -1;
        }
    }
    if (!why && r.bad) why = "truncated";
    free(b);
    if (why) {
        cli_error(!o && h.version == 1
                      ? "this checkpoint (version 1) does not record the run's --widths, "
                        "--subset and --context: give ngd eval those of the run"
                  : !o ? NULL
                       : "resume with the same --model, --widths, --data, --subset, --optim and "
                         "--precision",
                  "--resume %s: %s", path, why);
        return -1;
    }
    return 0;
}

// ---- stopping on SIGINT / SIGTERM ----
// The first signal sets stop_signal: the training loop stops where --max-steps stops (before
// a batch is drawn, so the checkpoint written then resumes bit-identically), an evaluation
// stops at its next batch; the run then exits 128 + the signal. A second signal exits at once.
//
// No handler runs on the computing threads: oneDNN's JIT GEMM kernels point rsp into a heap
// workspace (oneDNN issue #4845, fixed after 3.11), so a signal frame pushed there corrupts
// the heap (seen here as "corrupted size vs. prev_size" aborts). The signals are blocked in
// the main thread before any other thread exists (every later thread inherits the mask) and
// taken by one thread of our own with sigwait.
static atomic_int stop_signal;

static void *stop_signal_waiter(void *arg) {
    const sigset_t *set = arg;
    for (;;) {
        int sig;
        if (sigwait(set, &sig) != 0) continue;
        if (atomic_load(&stop_signal)) {
            static const char msg[] = "\nngd: second signal: exiting at once\n";
            ssize_t w = write(2, msg, sizeof msg - 1);
            (void)w;
            _exit(128 + sig);
        }
        atomic_store(&stop_signal, sig);
    }
    return NULL;
}

// A signal the shell ignored for us (a background job without job control: SIGINT) stays
// ignored. Without the waiting thread, the signals keep their default action.
static void catch_stop_signals(void) {
    static sigset_t set;
    sigemptyset(&set);
    const int sigs[2] = {SIGINT, SIGTERM};
    for (int i = 0; i < 2; i++) {
        struct sigaction old;
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaddset(&set, sigs[i]);
    }
    pthread_t th;
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return;
    if (pthread_create(&th, NULL, stop_signal_waiter, &set) != 0) {
        pthread_sigmask(SIG_UNBLOCK, &set, NULL);
        return;
    }
    pthread_detach(th);
}

static const char *stop_signal_name(void) {
    const int sig = atomic_load(&stop_signal);
    return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal";
}

// An optimizer state of over 1 GiB (dense factors of wide layers: vgg16bn's 4609-wide
// convolutions take 85 MB per factor matrix and O(d³) work per preconditioner update) is
// said up front with its largest layer, so that a slow first step is not a mystery.
static void heavy_state_note(const ngd_optim *o, ngd_method method) {
    const size_t total = ngd_optim_state_bytes(o);
    if (!o || total < ((size_t)1 << 30) || method == NGD_METHOD_SGD || method == NGD_METHOD_ADAMW)
        return;
    const bool singd =
        method == NGD_METHOD_SINGD || method == NGD_METHOD_INGD || method == NGD_METHOD_IKFAC;
    size_t big = 0;
    const char *name = "?";
    for (size_t i = 0; i < ngd_optim_count(o); i++) {
        ngd_layer_health h;
        if (ngd_optim_layer_health(o, (int)i, &h) == NGD_OK && h.state_bytes > big)
            big = h.state_bytes, name = h.name;
    }
    fprintf(stderr,
            "ngd train: note: the optimizer state takes %.1f GiB (largest: %s, %.0f MiB); dense "
            "factors of wide layers cost O(d^3) per preconditioner update%s\n",
            (double)total / (double)(1u << 30), name, (double)big / (double)(1u << 20),
            singd ? ": structured factors (--structure diagonal, hierarchical15_15, "
                    "block30diagonal) are far lighter"
                  : "");
}

static void format_widths(const size_t *w, size_t n, char *out, size_t cap) {
    snprintf(out, cap, "%s", n ? "" : "(the model's defaults)");
    for (size_t i = 0; i < n; i++)
        snprintf(out + strlen(out), cap - strlen(out), "%s%zu", i ? "," : "", w[i]);
}

// ngd eval: the run's model, data set, method, widths, subset, context and batch from the
// checkpoint's header into t; the ones given must agree with it. Returns an exit code.
static int eval_setup(train_opts *t) {
    static ckpt_head h; // t keeps pointers to its names
    size_t len;
    unsigned char *b = (unsigned char *)cli_read_file(t->resume, &len, "--resume ");
    if (!b) return NGD_EXIT_FAIL;
    rb r;
    const char *why = read_head(b, len, &r, &h);
    free(b);
    char given[96] = "", had[96] = "", whybuf[320];
    if (!why && ngd_method_parse(h.method, &t->method) != NGD_OK)
        why = "bad header (method)";
    else if (!why && t->model && strcmp(t->model, h.model) != 0) {
        snprintf(whybuf, sizeof whybuf, "it was written for --model %s, not %s", h.model, t->model);
        why = whybuf;
    } else if (!why && t->data && strcmp(t->data, h.data) != 0) {
        snprintf(whybuf, sizeof whybuf, "it was written for --data %s, not %s", h.data, t->data);
        why = whybuf;
    } else if (!why && h.has_shape) { // given widths, subset, context: the run's, or refused
        format_widths(t->widths, t->nwidths, given, sizeof given);
        format_widths(h.widths, h.nwidths, had, sizeof had);
        const char *what = t->nwidths && strcmp(given, had) != 0            ? "widths"
                           : t->subset != SIZE_MAX && t->subset != h.subset ? "subset"
                           : t->context && t->context != h.context          ? "context"
                                                                            : NULL;
        if (what) {
            if (!strcmp(what, "subset"))
                snprintf(given, sizeof given, "%zu", t->subset),
                    snprintf(had, sizeof had, "%zu", h.subset);
            else if (!strcmp(what, "context"))
                snprintf(given, sizeof given, "%zu", t->context),
                    snprintf(had, sizeof had, "%zu", h.context);
            snprintf(whybuf, sizeof whybuf,
                     "it was written with --%s %s, not %s (eval takes it "
                     "from the checkpoint: drop --%s)",
                     what, had, given, what);
            why = whybuf;
        }
    }
    if (why) {
        cli_error(NULL, "--resume %s: %s", t->resume, why);
        return NGD_EXIT_FAIL;
    }
    t->model = h.model, t->data = h.data;
    t->cfg = ngd_config_default(t->method);
    if (h.precision >= 0) t->bf16 = h.precision == 1; // the run's GEMM precision
    if (h.has_shape) {
        t->nwidths = h.nwidths;
        memcpy(t->widths, h.widths, sizeof h.widths);
        t->subset = h.subset, t->context = h.context;
        if (!t->batch) t->batch = h.batch;
    } else { // version 1: what was given, else the defaults of ngd train
        if (t->subset == SIZE_MAX) t->subset = 0;
        if (!t->context) t->context = 64;
        if (!t->batch) t->batch = 128;
    }
    t->text = !strcmp(t->data, "shakespeare");
    return check_model_data(t) ? NGD_EXIT_FAIL : NGD_EXIT_OK;
}

// ---- evaluation ----
// Returns -1 (after an error) for a set the model was not built for: its batches would not
// fit x (sized for the training images) nor the model's input and classes. load_data checks
// this already; this check keeps any other path from writing out of bounds. Returns 1 when
// a signal stopped it (loss and accuracy are then NaN).
static int evaluate(nn_model *m, const nn_dataset *ds, size_t B, float *x, int32_t *y, double *loss,
                    double *acc) {
    nn_loader ld;
    double l = 0;
    size_t correct = 0, n = 0;
    if (ds->c != m->cfg.in_c || ds->h != m->cfg.in_h || ds->w != m->cfg.in_w ||
        ds->num_classes > m->cfg.classes) {
        cli_error(NULL,
                  "the test set (%zu x %zu x %zu images, %zu classes) does not fit the "
                  "model (%zu x %zu x %zu, %zu classes)",
                  ds->c, ds->h, ds->w, ds->num_classes, m->cfg.in_c, m->cfg.in_h, m->cfg.in_w,
                  m->cfg.classes);
        *loss = (double)NAN, *acc = (double)NAN;
        return -1;
    }
    if (nn_loader_init(&ld, ds, B, false, false, NULL, 0) != NN_OK) {
        *loss = (double)NAN, *acc = (double)NAN;
        return 0;
    }
    size_t k, bi = 0;
    while (!stop_signal && (k = nn_loader_next(&ld, x, y)) > 0) {
        if (ld.epoch > 0) break;
        if (bi++ % (size_t)dist_size() != (size_t)dist_rank()) continue; // mpirun: a share
        m->ops->forward(m, x, k, false);
        l += (double)nn_xent_forward(m->logits, y, k, m->cfg.classes, 0.0f, 1.0f, NULL) * (double)k;
        correct += nn_xent_correct(m->logits, y, k, m->cfg.classes);
        n += k;
    }
    nn_loader_free(&ld);
    double sums[4] = {l, (double)correct, (double)n, stop_signal ? 1.0 : 0.0};
    if (dist_sum_f64(sums, 4)) return -1;
    l = sums[0], correct = (size_t)sums[1], n = (size_t)sums[2];
    if (sums[3] > 0 && !stop_signal) stop_signal = SIGTERM; // another rank's signal
    char err[600];
    if (nn_dataset_failed(ds, err, sizeof err)) { // a streamed set's file changed
        cli_error(NULL, "%s", err);
        *loss = (double)NAN, *acc = (double)NAN;
        return -1;
    }
    if (stop_signal) n = 0;
    *loss = n ? l / (double)n : (double)NAN;
    *acc = n ? (double)correct / (double)n : (double)NAN;
    return stop_signal ? 1 : 0;
}

// Text: the mean loss and next-character accuracy over a fixed set of validation windows
// (TEXT_EVAL_BATCHES batches of B windows from a fixed seed: the same every evaluation, and
// the same for every --seed).
#define TEXT_EVAL_BATCHES 32
#define TEXT_SAMPLE_LEN   200
#define TEXT_EVAL_SEED    0x5eedULL
static void evaluate_text(nn_model *m, const nn_text *tx, size_t B, size_t T, int32_t *ids,
                          int32_t *y, double *loss, double *acc) {
    nn_rng r;
    nn_rng_seed(&r, TEXT_EVAL_SEED);
    double l = 0;
    size_t correct = 0, n = 0;
    size_t Bl, first; // mpirun: B is the global batch; each rank forwards its shard
    dist_shard(B, &Bl, &first);
    for (size_t i = 0; i < TEXT_EVAL_BATCHES && !stop_signal; i++) {
        if (nn_text_batch(tx, NN_SPLIT_VAL, B, T, &r, ids, y) != NN_OK) break;
        m->ops->forward_tokens(m, ids + first * T, Bl, T, false);
        const size_t k = Bl * T;
        l +=
            (double)nn_xent_forward(m->logits, y + first * T, k, m->cfg.classes, 0.0f, 1.0f, NULL) *
            (double)k;
        correct += nn_xent_correct(m->logits, y + first * T, k, m->cfg.classes);
        n += k;
    }
    double sums[4] = {l, (double)correct, (double)n, stop_signal ? 1.0 : 0.0};
    if (dist_sum_f64(sums, 4) == 0) {
        l = sums[0], correct = (size_t)sums[1], n = (size_t)sums[2];
        if (sums[3] > 0 && !stop_signal) stop_signal = SIGTERM;
    }
    *loss = n ? l / (double)n : (double)NAN;
    *acc = n ? (double)correct / (double)n : (double)NAN;
}

// Prints `len` characters sampled from the model (softmax at temperature 1, seeded), starting
// from a newline, each conditioned on the last T characters at most.
static void print_sample(nn_model *m, const nn_text *tx, size_t T, uint64_t seed, size_t len) {
    int32_t *ctx = malloc(T * sizeof *ctx);
    char *out = malloc(len + 1);
    double *p = malloc(m->cfg.classes * sizeof *p);
    if (!ctx || !out || !p) {
        free(ctx), free(out), free(p);
        return;
    }
    nn_rng r;
    nn_rng_seed(&r, seed);
    size_t have = 1;
    ctx[0] = tx->stoi['\n'] >= 0 ? tx->stoi['\n'] : 0;
    const size_t V = m->cfg.classes;
    for (size_t i = 0; i < len; i++) {
        m->ops->forward_tokens(m, ctx, 1, have, false);
        const float *z = m->logits + (have - 1) * V;
        double mx = (double)z[0], sum = 0;
        for (size_t j = 1; j < V; j++)
            mx = fmax(mx, (double)z[j]);
        for (size_t j = 0; j < V; j++)
            sum += p[j] = exp((double)z[j] - mx);
        double u = nn_rng_uniform_f64(&r) * sum;
        size_t id = 0;
        while (id + 1 < V && (u -= p[id]) >= 0)
            id++;
        out[i] = (char)tx->itos[id];
        if (have == T) memmove(ctx, ctx + 1, (T - 1) * sizeof *ctx), have--;
        ctx[have++] = (int32_t)id;
    }
    out[len] = '\0';
    printf("sample (%zu characters from a newline, seed %llu):\n%s\n", len,
           (unsigned long long)seed, out);
    free(ctx), free(out), free(p);
}

// The run's data behind the calls the loop makes: images through an nn_loader, text
// through a text_iter (ti != NULL).
static size_t next_batch(const train_opts *t, nn_loader *ld, text_iter *ti, float *x, int32_t *ids,
                         int32_t *y) {
    if (!ti) return dist_loader_next(ld, x, y); // mpirun: this rank's shard
    if (ti->pos == ti->per_epoch) {             // the epoch is complete: 0, like the loader
        ti->pos = 0, ti->epoch++;
        return 0;
    }
    if (nn_text_batch(ti->text, NN_SPLIT_TRAIN, t->batch, t->context, &ti->rng, ids, y) != NN_OK)
        return 0; // not reached: the split's length is checked before training
    ti->pos++;
    return t->batch;
}

static size_t steps_into_epoch(const train_opts *t, const nn_loader *ld, const text_iter *ti) {
    return ti ? ti->pos : ld->pos / t->batch;
}

static int evaluate_run(nn_model *m, const train_opts *t, const data_sets *d, float *x,
                        int32_t *ids, int32_t *y, double *loss, double *acc) {
    size_t Bl, first;
    dist_shard(t->batch, &Bl, &first); // mpirun: the model holds one rank's share
    if (!t->text) return evaluate(m, &d->test, Bl, x, y, loss, acc);
    evaluate_text(m, &d->text, t->batch, t->context, ids, y, loss, acc);
    if (stop_signal) *loss = *acc = (double)NAN;
    return stop_signal ? 1 : 0;
}

// The CRC of a model's parameters (ngd eval prints it; the training summary logs it), so that
// two runs can be compared bit for bit.
static uint32_t params_crc(const nn_model *m) {
    uint32_t crc = 0;
    for (size_t i = 0; i < m->nparams; i++)
        crc ^= ngd_file_crc32(m->params[i].p, m->params[i].n * sizeof(float)) + (uint32_t)i;
    return crc;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Writes one record and flushes it. Returns -1 when the log cannot be written (a full disk,
// /dev/full), with an error naming it the first time.
static int log_line(FILE *f, const char *path, cJSON *o) {
    if (!f) {
        cJSON_Delete(o);
        return 0;
    }
    const bool failed_before = ferror(f) != 0;
    char *s = cJSON_PrintUnformatted(o);
    errno = 0;
    const bool bad =
        failed_before || !s || fprintf(f, "%s\n", s) < 0 || fflush(f) != 0 || ferror(f);
    if (bad && !failed_before)
        cli_error("free some space, or give --log another file", "--log %s: %s", path,
                  !s      ? "out of memory"
                  : errno ? strerror(errno)
                          : "write error");
    cJSON_free(s);
    cJSON_Delete(o);
    return bad ? -1 : 0;
}

static void progress(bool tty, size_t epoch, size_t epochs, size_t it, size_t per_epoch,
                     double loss, double acc, double sps, double eta) {
    if (tty) {
        int w = 30, fill = per_epoch ? (int)((double)w * (double)it / (double)per_epoch) : w;
        char bar[64];
        for (int i = 0; i < w; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[w] = '\0';
        fprintf(stderr,
                "\repoch %zu/%zu [%s] %zu/%zu loss %.4f acc %.3f %.0f samples/s ETA %.0fs  ",
                epoch + 1, epochs, bar, it, per_epoch, loss, acc, sps, eta);
    } else {
        fprintf(stderr, "epoch %zu/%zu step %zu/%zu loss %.4f acc %.3f %.0f samples/s ETA %.0fs\n",
                epoch + 1, epochs, it, per_epoch, loss, acc, sps, eta);
    }
}

static cJSON *health_json(const ngd_optim *o) {
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < ngd_optim_count(o); i++) {
        ngd_layer_health h;
        if (ngd_optim_layer_health(o, (int)i, &h) != NGD_OK) continue;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", h.name);
        cJSON_AddNumberToObject(e, "grad_norm", (double)h.grad_norm);
        cJSON_AddNumberToObject(e, "update_norm", (double)h.update_norm);
        if (h.updates) {
            cJSON_AddNumberToObject(e, "updates", (double)h.updates);
            cJSON_AddNumberToObject(e, "trace_K", (double)h.trace_K);
            cJSON_AddNumberToObject(e, "trace_C", (double)h.trace_C);
            cJSON_AddNumberToObject(e, "norm_K", (double)h.norm_K);
            cJSON_AddNumberToObject(e, "norm_C", (double)h.norm_C);
        }
        if (h.rank_A || h.rank_G) { // low-rank K-FAC methods
            cJSON_AddNumberToObject(e, "rank_A", (double)h.rank_A);
            cJSON_AddNumberToObject(e, "rank_G", (double)h.rank_G);
        }
        if (h.decomp_failures)
            cJSON_AddNumberToObject(e, "decomp_failures", (double)h.decomp_failures);
        if (h.decomp_retries)
            cJSON_AddNumberToObject(e, "decomp_retries", (double)h.decomp_retries);
        if (h.skips) cJSON_AddNumberToObject(e, "skips", (double)h.skips);
        cJSON_AddItemToArray(arr, e);
    }
    return arr;
}

static int mkdir_runs(void) { return mkdir("runs", 0755); }

static void log_path(const train_opts *t, char *path, size_t cap) {
    if (t->log)
        snprintf(path, cap, "%s", t->log);
    else
        snprintf(path, cap, "runs/%s-%s-%s.jsonl", t->model, t->data, ngd_method_name(t->method));
}

static FILE *open_log(const train_opts *t, char *path, size_t cap) {
    log_path(t, path, cap);
    if (!dist_root()) return fopen("/dev/null", "w"); // mpirun: rank 0 logs
    if (!t->log) (void)mkdir_runs();
    FILE *f = fopen(path, t->resume ? "a" : "w");
    if (!f) cli_error("use --log FILE with a writable path", "--log %s: %s", path, strerror(errno));
    return f;
}

// Two paths name the same file: the same string, or (both existing) the same inode.
static bool same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return !strcmp(a, b) || (stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
                             sa.st_ino == sb.st_ino);
}

// What a training run will write, checked before any data is loaded: the checkpoint's
// target, and a log that is not the checkpoint (written or resumed). Returns an exit code.
static int check_outputs(const train_opts *t) {
    char lp[1024];
    log_path(t, lp, sizeof lp);
    const char *clash = t->ckpt && same_file(lp, t->ckpt)       ? "--checkpoint"
                        : t->resume && same_file(lp, t->resume) ? "--resume"
                                                                : NULL;
    if (clash) {
        cli_error("give --log and the checkpoint different files", "--log %s is the %s file %s", lp,
                  clash, !strcmp(clash, "--checkpoint") ? t->ckpt : t->resume);
        return NGD_EXIT_USAGE;
    }
    if (t->ckpt && check_ckpt_target(t->ckpt)) return NGD_EXIT_FAIL;
    return NGD_EXIT_OK;
}

// ---- mpirun (dist.c): the engine's side of a data-parallel step ----
// Options as for one process; then --batch, the per-rank batch, becomes the global batch
// (ranks x --batch) that the loader draws and checkpoints record (a checkpoint of N ranks x B
// is one of 1 x N·B), and only rank 0 talks.
static int dist_parse(int argc, char **argv, train_opts *t) {
    if (parse_opts(argc, argv, t, "train")) return NGD_EXIT_USAGE;
    if (!dist_on()) return NGD_EXIT_OK;
    const size_t n = (size_t)dist_size();
    if (t->batch > SIZE_MAX / n) {
        cli_error(NULL, "--batch %zu x %zu ranks overflows", t->batch, n);
        return NGD_EXIT_USAGE;
    }
    if (!t->quiet && dist_root())
        fprintf(stderr, "ngd train: %zu ranks (mpirun) x batch %zu = global batch %zu\n", n,
                t->batch, t->batch * n);
    t->batch *= n;
    if (!dist_root()) t->quiet = true;
    return NGD_EXIT_OK;
}

// After each rank's backward pass on its shard: the gradients averaged over the ranks (the
// loss is a mean, so the global batch's gradient is the mean of the shards'), BatchNorm's
// running statistics averaged too (so that every rank holds the same model), and the loss,
// correct count and rows summed, so that the log reads the global batch's.
static int dist_combine(nn_model *m, float *loss, size_t *correct, size_t *nr) {
    const float inv = 1.0f / (float)dist_size();
    nn_param bufs[NN_MODEL_MAX_PARAMS];
    const size_t nb = nn_model_buffers(m, bufs);
    for (size_t i = 0; i < m->nparams + nb; i++) {
        const nn_param *p = i < m->nparams ? &m->params[i] : &bufs[i - m->nparams];
        float *v = i < m->nparams ? p->g : p->p;
        if (dist_sum_f32(v, p->n)) return -1;
        for (size_t j = 0; j < p->n; j++)
            v[j] *= inv;
    }
    double s[3] = {(double)*loss * (double)*nr, (double)*correct, (double)*nr};
    if (dist_sum_f64(s, 3)) return -1;
    *loss = (float)(s[0] / s[2]), *correct = (size_t)s[1], *nr = (size_t)s[2];
    return 0;
}

// The summary's communication record: bytes this rank handed to MPI per step, for the
// gradients (and the loss) and for the optimizer's statistics and factors.
static void dist_summary(cJSON *j, const ngd_optim *o, size_t steps) {
    if (!dist_on()) return;
    cJSON_AddNumberToObject(j, "ranks", (double)dist_size());
    const double st = steps ? (double)steps : 1.0;
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "engine", (double)dist_bytes() / st);
    cJSON_AddNumberToObject(c, "optimizer", (double)ngd_optim_comm_bytes(o) / st);
    cJSON_AddItemToObject(j, "comm_bytes_per_step", c);
    if (dist_root())
        fprintf(stderr,
                "ngd train: rank 0 sent %.0f bytes per step (engine %.0f, optimizer %.0f)\n",
                ((double)dist_bytes() + (double)ngd_optim_comm_bytes(o)) / st,
                (double)dist_bytes() / st, (double)ngd_optim_comm_bytes(o) / st);
}

static int run(const train_opts *t, bool eval_only) {
    if (t->threads) {
        char v[16];
        snprintf(v, sizeof v, "%d", t->threads);
        setenv("OMP_NUM_THREADS", v, 1);
#ifdef _OPENMP
        // the OpenMP runtime read the variable when it was loaded: tell it directly (oneDNN
        // and OpenBLAS's OpenMP flavour follow omp_set_num_threads)
        omp_set_num_threads(t->threads);
#endif
    }
    if (!eval_only) {
        int oc = check_outputs(t);
        if (oc != NGD_EXIT_OK) return oc;
    }
    catch_stop_signals();
    data_sets d;
    int dl = load_data(t, &d);
    if (dl) return dl == -2 ? NGD_EXIT_USAGE : NGD_EXIT_FAIL;
    int rc = NGD_EXIT_FAIL;
    nn_model m;
    memset(&m, 0, sizeof m);
    ngd_optim *o = NULL;
    nn_loader ld;
    memset(&ld, 0, sizeof ld);
    text_iter ti = {.text = &d.text};
    text_iter *tip = t->text ? &ti : NULL; // text data: windows instead of the loader
    FILE *logf = NULL;
    float *x = NULL;
    int32_t *y = NULL, *ids = NULL;
    float *dlogits = NULL;
    char err[512], logpath[1024] = "";
    nn_model_cfg mc = {.name = t->model,
                       .in_c = d.train.c,
                       .in_h = d.train.h,
                       .in_w = d.train.w,
                       .classes = d.train.num_classes,
                       .max_batch = t->batch / (size_t)dist_size(), // mpirun: a share
                       .seed = t->seed};
    if (t->text) // a token model: (B, T) ids in, (B·T, V) logits out
        mc.in_c = 1, mc.in_h = t->context, mc.in_w = 1, mc.classes = d.text.vocab;
    const size_t rows = t->text ? t->context : 1; // logits rows per sample
    memcpy(mc.widths, t->widths, sizeof mc.widths);
    mc.nwidths = t->nwidths;
    // first-order methods never observe: the model may drop its layers' output gradients
    mc.no_stats = t->cfg.method == NGD_METHOD_SGD || t->cfg.method == NGD_METHOD_ADAMW;
    mc.bf16 = t->bf16;
    if (t->bf16 && !t->quiet && !nn_bf16_native())
        fprintf(stderr, "ngd train: note: this CPU has no AVX512-BF16: --precision bf16 runs "
                        "oneDNN's emulation or converts to float32 (slower than --precision "
                        "f32, same numbers)\n");
    nn_status ns = nn_model_create(&m, &mc, err, sizeof err);
    if (ns != NN_OK) {
        cli_error(ns == NN_ERR_ARG ? "run 'ngd train --help' for the models" : NULL, "%s", err);
        rc = ns == NN_ERR_ARG ? NGD_EXIT_USAGE : NGD_EXIT_FAIL;
        goto done;
    }
    ngd_status st = eval_only ? NGD_OK : ngd_optim_create(&t->cfg, &o); // eval: no optimizer
    m.param_override = t->has_param_cfg ? &t->param_cfg : NULL;
    if (st == NGD_OK && o) st = m.ops->attach(&m, o);
    ngd_share share;
    if (st == NGD_OK && o && dist_on()) { // mpirun: one replica per rank (dist.c)
        if (dist_share(&share)) {
            rc = NGD_EXIT_USAGE;
            goto done;
        }
        st = ngd_optim_set_comm(o, dist_comm(), share);
    }
    if (st != NGD_OK) {
        cli_error(NULL, "optimizer: %s: %s", ngd_status_str(st), ngd_optim_errmsg(o));
        goto done;
    }
    if (t->text) {
        const size_t ntr = d.text.n_train, nval = d.text.n - d.text.n_train;
        if (ntr < t->context + 1 || nval < t->context + 1) {
            cli_error("use a smaller --context or a larger --subset",
                      "the text's training (%zu) "
                      "and validation (%zu) characters must each exceed the context (%zu)",
                      ntr, nval, t->context);
            goto done;
        }
        ti.per_epoch = ntr / (t->batch * t->context);
        nn_rng_seed(&ti.rng, t->seed + 1);
        ids = malloc(t->batch * t->context * sizeof(int32_t));
    } else {
        nn_augment aug = {t->augment ? 4 : 0, t->augment};
        if (nn_loader_init(&ld, &d.train, t->batch, true, true, t->augment ? &aug : NULL,
                           t->seed + 1) != NN_OK) {
            cli_error(NULL, "out of memory");
            goto done;
        }
        x = malloc(t->batch * d.train.c * d.train.h * d.train.w * sizeof(float));
    }
    y = malloc(t->batch * rows * sizeof(int32_t));
    dlogits = malloc(t->batch * rows * m.cfg.classes * sizeof(float));
    if (!(x || ids) || !y || !dlogits) {
        cli_error(NULL, "out of memory");
        goto done;
    }
    run_state rs = {0, 0, 0, 0.0};
    if (t->resume && load_checkpoint(t->resume, t, &m, o, &ld, tip, &rs)) goto done;
    const size_t step0 = rs.step;
    if (eval_only) {
        double tl, ta;
        const int er = evaluate_run(&m, t, &d, x, ids, y, &tl, &ta);
        if (er > 0) {
            fprintf(stderr, "ngd: evaluation stopped by %s\n", stop_signal_name());
            rc = 128 + stop_signal;
        }
        if (er) goto done;
        // the CRC of the parameters lets two runs be compared bit for bit (resume == no stop)
        uint32_t crc = 0;
        for (size_t i = 0; i < m.nparams; i++)
            crc ^= ngd_file_crc32(m.params[i].p, m.params[i].n * sizeof(float)) + (uint32_t)i;
        if (t->text)
            printf("eval: %s on %s validation (%d x %zu windows of %zu): loss %.6f accuracy "
                   "%.2f%%, parameters crc %08x\n",
                   t->model, t->data, TEXT_EVAL_BATCHES, t->batch, t->context, tl, 100 * ta,
                   (unsigned)crc);
        else
            printf("eval: %s on %s test (%zu images): loss %.6f accuracy %.2f%%, parameters crc "
                   "%08x\n",
                   t->model, t->data, d.test.n, tl, 100 * ta, (unsigned)crc);
        if (t->text) print_sample(&m, &d.text, t->context, t->seed, TEXT_SAMPLE_LEN);
        rc = NGD_EXIT_OK;
        goto done;
    }
    if (!(logf = open_log(t, logpath, sizeof logpath))) goto done;
    const bool tty = !t->quiet && isatty(2);
    const size_t per_epoch = t->text ? ti.per_epoch : d.train.n / t->batch;
    if (per_epoch == 0) {
        if (t->text)
            cli_error("use a smaller --batch or --context, or a larger --subset",
                      "the training "
                      "text (%zu characters) is smaller than one batch (%zu x %zu)",
                      d.text.n_train, t->batch, t->context);
        else
            cli_error("use a smaller --batch or a larger --subset",
                      "the training set (%zu "
                      "images) is smaller than one batch (%zu)",
                      d.train.n, t->batch);
        goto done;
    }
    char optdesc[128]; // the method, and the plain parameters' rule when one was chosen
    if (t->has_param_cfg)
        snprintf(optdesc, sizeof optdesc, "%s (plain parameters: %s, lr %g, weight decay %g)",
                 ngd_method_name(t->method), ngd_method_name(t->param_cfg.method),
                 (double)t->param_cfg.lr, (double)t->param_cfg.weight_decay);
    else
        snprintf(optdesc, sizeof optdesc, "%s", ngd_method_name(t->method));
    if (!t->quiet && t->text)
        fprintf(stderr,
                "ngd train: %s (%zu parameters) on %s (%zu train / %zu validation "
                "characters, vocabulary %zu), %s, batch %zu x %zu, %zu epoch%s of %zu steps; log "
                "%s\n",
                t->model, nn_model_param_count(&m), t->data, d.text.n_train,
                d.text.n - d.text.n_train, d.text.vocab, optdesc, t->batch, t->context, t->epochs,
                t->epochs == 1 ? "" : "s", per_epoch, logpath);
    else if (!t->quiet)
        fprintf(stderr,
                "ngd train: %s (%zu parameters) on %s (%zu train / %zu test), %s, "
                "batch %zu, %zu epoch%s; log %s\n",
                t->model, nn_model_param_count(&m), t->data, d.train.n, d.test.n, optdesc, t->batch,
                t->epochs, t->epochs == 1 ? "" : "s", logpath);
    if (!t->quiet && dist_root()) heavy_state_note(o, t->method);
    const char *split = t->text ? "validation" : "test";
    size_t consecutive_skips = 0, seen = 0;
    double t_start = now_s() - rs.wall, t_mark = now_s(), run_loss = 0, run_acc = 0;
    size_t run_n = 0;
    double last_test_acc = (double)NAN, last_test_loss = (double)NAN;
    bool stop = false;
    rc = NGD_EXIT_OK;
    while (rs.epoch < t->epochs && !stop) {
        size_t k = 0;
        for (;;) {
            // the limit is checked before a batch is drawn, so a checkpoint written here
            // resumes exactly where an uninterrupted run would continue
            bool halt = (t->max_steps && rs.step >= t->max_steps) || stop_signal ||
                        (t->time_budget > 0 && now_s() - t_start >= (double)t->time_budget);
            if (dist_on()) halt = dist_max_int(halt) != 0; // mpirun: the ranks stop together
            if (halt) {
                stop = true;
                break;
            }
            if ((k = next_batch(t, &ld, tip, x, ids, y)) == 0) break;
            if (!t->text && nn_dataset_failed(&d.train, err, sizeof err)) { // streamed CIFAR
                cli_error("the data files changed during the run; the last checkpoint is intact",
                          "%s", err);
                rc = NGD_EXIT_FAIL;
                stop = true;
                break;
            }
            double lr_scale = 1.0;
            if (t->cosine) { // cosine decay over the planned steps, from lr to 0
                double total = (double)(t->epochs * per_epoch);
                lr_scale =
                    0.5 * (1.0 + cos(3.141592653589793 * fmin((double)rs.step / total, 1.0)));
                ngd_optim_set_lr_scale(o, (float)lr_scale);
            }
            nn_model_zero_grad(&m);
            size_t kl, first; // mpirun: this rank's shard of the global batch
            dist_shard(k, &kl, &first);
            if (t->text)
                m.ops->forward_tokens(&m, ids + first * t->context, kl, t->context, true);
            else
                m.ops->forward(&m, x + first * (size_t)(d.train.c * d.train.h * d.train.w), kl,
                               true);
            size_t nr = kl * rows; // text: the mean over batch and sequence
            float loss =
                nn_xent_forward(m.logits, y + first * rows, nr, m.cfg.classes, 0.0f, 1.0f, dlogits);
            size_t correct = nn_xent_correct(m.logits, y + first * rows, nr, m.cfg.classes);
            m.ops->backward(&m, dlogits);
            if (dist_on() && dist_combine(&m, &loss, &correct, &nr)) {
                rc = NGD_EXIT_FAIL;
                stop = true;
                break;
            }
            if (ngd_optim_wants_stats(o) && (st = m.ops->observe(&m, o)) != NGD_OK) {
                cli_error(NULL, "observe: %s", ngd_optim_errmsg(o));
                rc = NGD_EXIT_FAIL;
                stop = true;
                break;
            }
            st = ngd_optim_step(o);
            rs.step++;
            if (st == NGD_SKIPPED || !isfinite(loss)) {
                rs.skips++;
                if (++consecutive_skips >= t->max_skips) {
                    cli_error("lower --lr or raise --damping; the last checkpoint is intact",
                              "%zu consecutive non-finite steps at step %zu: stopping",
                              consecutive_skips, rs.step);
                    rc = NGD_EXIT_FAIL;
                    stop = true;
                    break;
                }
                continue;
            } else if (st != NGD_OK) {
                cli_error(NULL, "step: %s", ngd_optim_errmsg(o));
                rc = NGD_EXIT_FAIL;
                stop = true;
                break;
            }
            consecutive_skips = 0;
            seen += k;
            run_loss += (double)loss * (double)nr, run_acc += (double)correct, run_n += nr;
            if (rs.step % t->log_every == 0) {
                double now = now_s(), sps = (double)seen / (now - t_mark);
                size_t it = steps_into_epoch(t, &ld, tip);
                double eta = sps > 0 ? (double)((t->epochs - rs.epoch) * per_epoch - it) *
                                           (double)t->batch / sps
                                     : 0;
                cJSON *j = cJSON_CreateObject();
                cJSON_AddStringToObject(j, "type", "step");
                cJSON_AddNumberToObject(j, "step", (double)rs.step);
                cJSON_AddNumberToObject(j, "epoch",
                                        (double)rs.epoch + (double)it / (double)per_epoch);
                cJSON_AddNumberToObject(j, "loss", run_loss / (double)run_n);
                cJSON_AddNumberToObject(j, "accuracy", run_acc / (double)run_n);
                cJSON_AddNumberToObject(j, "lr", (double)t->cfg.lr * lr_scale);
                cJSON_AddNumberToObject(j, "samples_per_s", sps);
                if (t->text) cJSON_AddNumberToObject(j, "tokens_per_s", sps * (double)t->context);
                cJSON_AddNumberToObject(j, "wall_s", now - t_start);
                cJSON_AddItemToObject(j, "health", health_json(o));
                if (log_line(logf, logpath, j)) {
                    rc = NGD_EXIT_FAIL;
                    stop = true;
                    break;
                }
                if (!t->quiet && (tty || rs.step % (t->log_every * 10) == 0))
                    progress(tty, rs.epoch, t->epochs, it, per_epoch, run_loss / (double)run_n,
                             run_acc / (double)run_n, sps, eta);
                run_loss = run_acc = 0, run_n = 0, seen = 0, t_mark = now;
            }
            if (t->ckpt && t->ckpt_every && rs.step % t->ckpt_every == 0) {
                rs.wall = now_s() - t_start;
                if (save_checkpoint(t->ckpt, t, &m, o, &ld, tip, &rs)) {
                    rc = NGD_EXIT_FAIL;
                    stop = true;
                    break;
                }
            }
        }
        if (!stop && k == 0) { // the epoch is complete (the loader reshuffled for the next)
            rs.epoch++;
            if (tty) fputc('\n', stderr);
            bool last = rs.epoch == t->epochs;
            if ((t->eval_every && rs.epoch % t->eval_every == 0) || last) {
                const int er = evaluate_run(&m, t, &d, x, ids, y, &last_test_loss, &last_test_acc);
                if (er) { // > 0: a signal (the checkpoint of this epoch is written below)
                    if (er < 0) rc = NGD_EXIT_FAIL;
                    break;
                }
                cJSON *j = cJSON_CreateObject();
                cJSON_AddStringToObject(j, "type", "eval");
                cJSON_AddNumberToObject(j, "step", (double)rs.step);
                cJSON_AddNumberToObject(j, "epoch", (double)rs.epoch);
                cJSON_AddNumberToObject(j, "test_loss", last_test_loss);
                cJSON_AddNumberToObject(j, "test_accuracy", last_test_acc);
                cJSON_AddNumberToObject(j, "wall_s", now_s() - t_start);
                if (log_line(logf, logpath, j)) {
                    rc = NGD_EXIT_FAIL;
                    break;
                }
                if (!t->quiet)
                    fprintf(stderr, "epoch %zu: %s loss %.4f, %s accuracy %.2f%%\n", rs.epoch,
                            split, last_test_loss, split, 100 * last_test_acc);
            }
            if (t->ckpt && !t->ckpt_every) {
                rs.wall = now_s() - t_start;
                if (save_checkpoint(t->ckpt, t, &m, o, &ld, tip, &rs)) {
                    rc = NGD_EXIT_FAIL;
                    break;
                }
            }
        }
    }
    if (rc == NGD_EXIT_OK && dist_on()) stop_signal = dist_max_int(stop_signal);
    if (rc == NGD_EXIT_OK && stop && rs.epoch < t->epochs && !stop_signal &&
        evaluate_run(&m, t, &d, x, ids, y, &last_test_loss, &last_test_acc) < 0)
        rc = NGD_EXIT_FAIL;
    // a limit ended the run early: report it (not after a signal, or one during its evaluation)
    if (rc == NGD_EXIT_OK && stop && rs.epoch < t->epochs && !stop_signal) {
        cJSON *je = cJSON_CreateObject();
        cJSON_AddStringToObject(je, "type", "eval");
        cJSON_AddNumberToObject(je, "step", (double)rs.step);
        cJSON_AddNumberToObject(je, "epoch",
                                (double)rs.epoch +
                                    (double)steps_into_epoch(t, &ld, tip) / (double)per_epoch);
        cJSON_AddNumberToObject(je, "test_loss", last_test_loss);
        cJSON_AddNumberToObject(je, "test_accuracy", last_test_acc);
        cJSON_AddNumberToObject(je, "wall_s", now_s() - t_start);
        if (log_line(logf, logpath, je)) rc = NGD_EXIT_FAIL;
    }
    // --max-steps, a signal: leave a checkpoint to resume
    if (rc == NGD_EXIT_OK && (stop || stop_signal) && t->ckpt) {
        rs.wall = now_s() - t_start;
        if (save_checkpoint(t->ckpt, t, &m, o, &ld, tip, &rs)) rc = NGD_EXIT_FAIL;
    }
    if (rc == NGD_EXIT_OK && stop_signal) {
        if (tty) fputc('\n', stderr);
        if (dist_root()) // (mpirun: every rank stopped at this step)
            fprintf(stderr, "ngd: training stopped by %s at step %zu%s%s\n", stop_signal_name(),
                    rs.step, t->ckpt ? "; checkpoint written to " : " (no --checkpoint: not saved)",
                    t->ckpt ? t->ckpt : "");
        if (t->ckpt && dist_root())
            fprintf(stderr, "hint: continue it with the same options and --resume %s\n", t->ckpt);
        rc = 128 + stop_signal;
    }
    if (rc == NGD_EXIT_OK && isnan(last_test_acc)) { // no epoch to train: say so, and report
        if (!t->quiet)                               // the model as it is (never "nan%")
            fprintf(stderr, "ngd train: no training to do: %s\n",
                    t->epochs == 0 ? "--epochs 0"
                                   : "the resumed run has already completed its --epochs");
        evaluate_run(&m, t, &d, x, ids, y, &last_test_loss, &last_test_acc);
        cJSON *je = cJSON_CreateObject();
        cJSON_AddStringToObject(je, "type", "eval");
        cJSON_AddNumberToObject(je, "step", (double)rs.step);
        cJSON_AddNumberToObject(je, "epoch", (double)rs.epoch);
        cJSON_AddNumberToObject(je, "test_loss", last_test_loss);
        cJSON_AddNumberToObject(je, "test_accuracy", last_test_acc);
        cJSON_AddNumberToObject(je, "wall_s", now_s() - t_start);
        if (log_line(logf, logpath, je)) rc = NGD_EXIT_FAIL;
    }
    double wall = now_s() - t_start;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "type", "summary");
    cJSON_AddStringToObject(j, "model", t->model);
    cJSON_AddStringToObject(j, "data", t->data);
    cJSON_AddStringToObject(j, "optim", ngd_method_name(t->method));
    cJSON_AddStringToObject(j, "precision", t->bf16 ? "bf16" : "f32");
    if (t->has_param_cfg) {
        cJSON_AddStringToObject(j, "param_optim", ngd_method_name(t->param_cfg.method));
        cJSON_AddNumberToObject(j, "param_lr", (double)t->param_cfg.lr);
    }
    cJSON_AddNumberToObject(j, "steps", (double)rs.step);
    cJSON_AddNumberToObject(j, "epochs", (double)rs.epoch);
    cJSON_AddNumberToObject(j, "skipped_steps", (double)rs.skips);
    cJSON_AddNumberToObject(j, "test_loss", last_test_loss);
    cJSON_AddNumberToObject(j, "test_accuracy", last_test_acc);
    cJSON_AddNumberToObject(j, "wall_s", wall);
    cJSON_AddNumberToObject(j, "optimizer_state_bytes", (double)ngd_optim_state_bytes(o));
    dist_summary(j, o, rs.step - step0);
    char crc[16]; // of the final parameters: what `ngd eval` of its checkpoint prints
    snprintf(crc, sizeof crc, "%08x", (unsigned)params_crc(&m));
    cJSON_AddStringToObject(j, "parameters_crc", crc);
    if (log_line(logf, logpath, j)) rc = NGD_EXIT_FAIL;
    if (dist_root() &&
        (!t->quiet || rc == NGD_EXIT_OK)) { // stopped before any evaluation: no "nan%"
        char result[96];
        if (isnan(last_test_acc))
            snprintf(result, sizeof result, "not evaluated");
        else
            snprintf(result, sizeof result, "%s accuracy %.2f%% (loss %.4f)", split,
                     100 * last_test_acc, last_test_loss);
        printf("%s %s on %s: %zu step%s in %.1f s, %s; log %s%s%s\n", ngd_method_name(t->method),
               t->model, t->data, rs.step, rs.step == 1 ? "" : "s", wall, result, logpath,
               t->ckpt ? ", checkpoint " : "", t->ckpt ? t->ckpt : "");
    }
    if (t->text && rc == NGD_EXIT_OK && dist_root()) // let a person see what it learned
        print_sample(&m, &d.text, t->context, t->seed, TEXT_SAMPLE_LEN);
done:
    if (logf) { // a failed write was reported already; a failing close is reported here
        const bool failed_before = ferror(logf) != 0;
        if (fclose(logf) != 0 && !failed_before) {
            cli_error("free some space, or give --log another file", "--log %s: %s", logpath,
                      strerror(errno));
            rc = NGD_EXIT_FAIL;
        }
    }
    free(x), free(y), free(ids), free(dlogits);
    nn_loader_free(&ld);
    nn_text_free(&d.text);
    ngd_optim_free(o);
    nn_model_free(&m);
    nn_dataset_free(&d.train);
    nn_dataset_free(&d.test);
    return rc;
}

int cmd_train(int argc, char **argv) {
    train_opts t;
    if (dist_init()) return NGD_EXIT_FAIL; // mpirun: MPI (dist.c); otherwise nothing
    int rc = dist_parse(argc, argv, &t);
    if (rc == NGD_EXIT_OK) rc = run(&t, false);
    // a failed rank ends every rank (none waits for it in a collective); a signal's stop
    // and success are reached by every rank together
    if (rc == NGD_EXIT_FAIL || rc == NGD_EXIT_USAGE) dist_abort(rc);
    dist_finalize();
    return rc;
}

int cmd_eval(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            print_help(stdout, "eval");
            return NGD_EXIT_OK;
        }
    train_opts t;
    if (parse_opts(argc, argv, &t, "eval")) return NGD_EXIT_USAGE;
    if (!t.resume) {
        cli_error("e.g. ngd eval --resume run.ckpt", "eval needs --resume FILE");
        return NGD_EXIT_USAGE;
    }
    int rc = eval_setup(&t);
    return rc != NGD_EXIT_OK ? rc : run(&t, true);
}
