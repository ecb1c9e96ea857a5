/*
 * trainopts.c — the options of `ngd train` and `ngd eval`: one table (OPTS) generates both
 * getopt_long's array and --help, so the help cannot drift from what is parsed; `ngd eval`
 * takes a few of its rows (EVAL_OPTS). Every bad value is a usage error naming the option;
 * the rules between options (which method uses which) are trainrules.c's.
 */
#include <float.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train.h"

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
    {"data-dir", 1, O_DATADIR, "DIR",
     "folder of the data files (default: /usr/share/datasets/fashion-mnist, data/mnist, "
     "data/cifar-10-batches-bin, ../shared/data/cifar-100-binary, "
     "../shared/data/tinyshakespeare; relative ones from the current folder)"},
    {"subset", 1, O_SUBSET, "N",
     "only the first N training and N/5 test images (text: N "
     "characters; 0: all, the default)"},
    {"optim", 1, O_OPTIM, "NAME",
     "sgd, adamw, singd (default), ingd, ikfac, kfac, rskfac, "
     "srekfac, bkfac, brkfac, brckfac"},
    {"lr", 1, O_LR, "X", "learning rate β2 (method default)"},
    {"momentum", 1, O_MOM, "X", "momentum α2 (method default)"},
    {"weight-decay", 1, O_WD, "X", "weight decay γ (method default)"},
    {"nesterov", 0, O_NESTEROV, NULL,
     "Nesterov momentum (the SGD-type rule of sgd, the SINGD methods and the K-FAC family)"},
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
    {"factor-dtype", 1, O_FDTYPE, "T",
     "storage of SINGD factors: f32 or bf16 (default: f32; bf16 under --precision bf16)"},
    {"official-blockdiag", 0, O_QUIRK, NULL,
     "reproduce the official block-diagonal quirk (block-diagonal structures)"},
    {"rho", 1, O_RHO, "X", "K-FAC family: factor average decay ρ (0.95)"},
    {"T-u", 1, O_TU, "N", "K-FAC family: statistics period T_u (10)"},
    {"T-i", 1, O_TI, "N", "K-FAC family: inverse / RSVD refresh period T_i (50)"},
    {"kfac-damping", 1, O_KDAMP, "KIND",
     "K-FAC: exact (λ_rel·maxγ·maxα on the Kronecker "
     "product, default) or pi (factored π-damping: applied through inverse operators formed "
     "every T_i steps, half the products a step)"},
    {"kfac-arith", 1, O_KARITH, "A",
     "K-FAC family factor-path arithmetic: f32 (default) or bf16 (emulated: every "
     "operation's result rounded to bf16, no float64 retries)"},
    {"clip", 1, O_CLIP, "KIND",
     "K-FAC family step clip: rms (per layer, default), kl (global), "
     "none"},
    {"clip-kappa", 1, O_KAPPA, "X", "K-FAC family clip κ (0.07)"},
    {"wd-start", 1, O_WDSTART, "N",
     "K-FAC family: decoupled weight decay from this step "
     "(200: 20·T_u at the default T_u; not changed by --T-u)"},
    {"identity-init", 1, O_IDINIT, "WHERE",
     "K-FAC family identity start: in_damping (default) "
     "or in_factor (kfac, rskfac, srekfac)"},
    {"rank", 1, O_RANK, "N", "RS/SRE/B-KFAC target rank r (220)"},
    {"oversample", 1, O_OVERS, "N",
     "RSVD oversampling p (10; factors on the RSVD track only, not B-KFAC's on the Brand or exact "
     "track)"},
    {"power-iters", 1, O_POWER, "N",
     "RSVD power iterations q (4; as --oversample, factors on the RSVD track only)"},
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
    {"kfac-seed", 1, O_KSEED, "N",
     "seed of the RSVD sketches and correction subsets (0; no effect where no factor takes the "
     "RSVD track or BRC's correction)"},
    {"factored", 0, O_FACTORED, NULL,
     "precondition fully connected layers (and SINGD's convolutions on small images, "
     "skipping the padding) from the batch's rows instead of the gradient, where that costs "
     "less: the same preconditioner up to rounding (the default for the K-FAC family and for "
     "SINGD with dense factors; "
     "docs/algorithms.md#factored-application, #natural-gradient)"},
    {"no-factored", 0, O_NOFACTORED, NULL,
     "precondition every layer from its gradient (Ĝ), as the official SINGD and the K-FAC "
     "author's code do"},
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
     "stop training after this much wall time in all (a resumed run's earlier training time "
     "counts), then evaluate (0 = no limit)"},
    {"batch", 1, O_BATCH, "N", "batch size (default 128; text: sequences; mpirun: per rank)"},
    {"context", 1, O_CONTEXT, "T", "context length of text models (default 64)"},
    {"micro-batches", 1, O_MICRO, "M",
     "gradient accumulation: each batch (mpirun: each rank's) forwarded and backpropagated in M "
     "equal parts, the activations sized for one part (less memory, the same step up to "
     "rounding; BatchNorm normalises each part by its own statistics); M divides --batch "
     "(default 1)"},
    {"seed", 1, O_SEED, "N", "seed of initialisation, shuffling and augmentation (0)"},
    {"threads", 1, O_THREADS, "N", "OpenMP threads (default: OMP_NUM_THREADS or all cores)"},
    {"precision", 1, O_PRECISION, "P",
     "f32 (default) or bf16: Linear and Conv2d GEMMs on bf16 operands (f32 "
     "accumulation, f32 master weights; fast with AVX512-BF16; 3x3 convolutions on AMX "
     "tiles where the CPU has them, NGD_CONV_AMX=0 turns that off; without AMX, and in "
     "f32, they skip im2col on AVX-512, NGD_CONV_DIRECT=0 turns that off; those with 16+ "
     "channels on images of 4x4 or more run as Winograd F(4x4,3x3) (oneDNN) in f32, and in "
     "bf16 where the CPU's bf16 products are slow, NGD_CONV_WINOGRAD=0 turns that off; on "
     "images of 2x2 or less, in f32, as one dense GEMM)"},
    {"eval-every", 1, O_EVALEVERY, "N",
     "evaluate on the test set every N epochs (1; 0 = end only)"},
    {"log", 1, O_LOG, "FILE", "JSON-lines log (default runs/<model>-<data>-<optim>.jsonl)"},
    {"log-every", 1, O_LOGEVERY, "N", "log a step record every N steps (20)"},
    {"checkpoint", 1, O_CKPT, "FILE",
     "write a training checkpoint to FILE (atomically; the run holds FILE.lock, one run a file)"},
    {"checkpoint-every", 1, O_CKPTEVERY, "N", "checkpoint every N steps (default: each epoch)"},
    {"resume", 1, O_RESUME, "FILE",
     "continue a run from a checkpoint (bit-identical with the same options; README: what a "
     "resume may change)"},
    {"max-skips", 1, O_MAXSKIPS, "N", "stop after N consecutive non-finite steps (5)"},
    {"augment", 0, O_AUGMENT, NULL,
     "random crop (pad 4) + horizontal flip of the training images (any image set; meant "
     "for CIFAR)"},
    {"quiet", 0, O_QUIET, NULL, "no progress output"},
    {"help", 0, O_HELP, NULL, "this text"},
};
#define NOPTS (sizeof OPTS / sizeof OPTS[0])

// `ngd eval` takes these options of OPTS only (with its own help); the run's model, data
// set, widths, subset, context and batch come from the checkpoint (version 2 on).
static const cli_opt EVAL_OPTS[] = {
    {"resume", 1, O_RESUME, "FILE", "the training checkpoint to evaluate (required)"},
    {"data-dir", 1, O_DATADIR, "DIR",
     "folder of the data files (default: the folder train uses, as ngd train --help lists); "
     "images: the training files too, whose mean and deviation normalise the inputs"},
    {"batch", 1, O_BATCH, "N",
     "evaluation batch (default: the run's; at most the test set; text: windows per batch, at "
     "most the validation text's windows / 32, as the evaluation takes 32 batches)"},
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

void train_print_help(FILE *f, const char *cmd) {
    if (!strcmp(cmd, "eval")) {
        fprintf(f,
                "usage: ngd eval --resume FILE [options]\n\n"
                "Evaluates the model of a training checkpoint on the test set (text: %d\n"
                "batches of validation windows drawn with a fixed seed, the same set for the\n"
                "same --batch) and prints its loss, accuracy and the CRC of its\n"
                "parameters (the training log's summary record has the same CRC; its test\n"
                "figures are those of its test_step, which is before the last step in a\n"
                "run that a signal stopped after its last evaluation). The\n"
                "model, data set, widths, subset and context are those the checkpoint\n"
                "records; no optimizer state is read. Training options are refused.\n\n"
                "options:\n",
                TEXT_EVAL_BATCHES);
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

// ---- option parsing helpers: every bad value is a usage error naming the option ----
static int parse_f(const char *opt, const char *s, float *out) {
    double v;
    if (cli_parse_real(opt, s, &v)) return -1;
    if (fabs(v) > (double)FLT_MAX || (v != 0.0 && fabs(v) < (double)FLT_MIN)) {
        cli_error(
            "give a number of a sensible size (float32: 1.2e-38 to 3.4e38 in magnitude, or 0)",
            "--%s: '%s' is out of range", opt, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

// A coefficient in [0, 1) (momentum, α1, β1, β2, ρ): a number just below 1 that float32 rounds
// to 1 is named as such (the library's range message would say "got 1" of what was typed below)
static int parse_unit(const char *opt, const char *s, float *out) {
    double v;
    if (cli_parse_real(opt, s, &v)) return -1;
    if (v < 1.0 && (float)v >= 1.0f) {
        cli_error("give at most 0.99999994, the largest float32 below 1",
                  "--%s: '%s' rounds to 1 in float32, and the coefficient must be below 1", opt, s);
        return -1;
    }
    return parse_f(opt, s, out);
}

static int parse_z(const char *opt, const char *s, size_t *out) {
    unsigned long long v;
    if (cli_parse_whole(opt, s, 0, SIZE_MAX, &v)) return -1;
    *out = (size_t)v;
    return 0;
}

// A whole number in [lo, hi] (hi = SIZE_MAX: no upper bound); the error names the range.
static int parse_zr(const char *opt, const char *s, size_t lo, size_t hi, size_t *out) {
    unsigned long long v; // (the range in the messages of bad words too)
    if (cli_parse_whole(opt, s, lo, hi, &v)) return -1;
    *out = (size_t)v;
    return 0;
}

// The K-FAC family's named choices: --kfac-damping, --clip, --identity-init, --tail,
// --brand-truncate, --kfac-arith. Returns -1 (after a usage error) for an unknown name.
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
        {O_KARITH, "f32", NGD_F32},
        {O_KARITH, "bf16", NGD_BF16},
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
            case O_KARITH: k->factor_arith = (ngd_dtype)T[i].value; break;
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

// FNV-1a of an option's id and value (train_opts.opts_hash)
static uint32_t opt_hash(int id, const char *v) {
    uint32_t h = 2166136261u;
    const unsigned char *b = (const unsigned char *)&id;
    for (size_t i = 0; i < sizeof id; i++)
        h = (h ^ b[i]) * 16777619u;
    for (const char *p = v ? v : ""; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h;
}

int train_parse_opts(int argc, char **argv, train_opts *t, const char *cmd) {
    memset(t, 0, sizeof *t);
    t->model = NULL, t->data = "fashion-mnist";
    t->context = 64;
    t->epochs = 2, t->batch = 128, t->micro = 1, t->eval_every = 1, t->log_every = 20,
    t->max_skips = 5;
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
    t->opts_hash = opt_hash(-1, getenv("NGD_DIST_SHARE"));
    while ((c = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
        const char *nm = NULL;
        for (size_t i = 0; i < NOPTS; i++)
            if (OPTS[i].id == c) nm = OPTS[i].name, given[i] = true;
        if (c != O_DATADIR && c != O_THREADS && c != O_QUIET && c != O_LOG && c != O_CKPT &&
            c != O_RESUME) // (summed: the order of the options does not matter)
            t->opts_hash += opt_hash(c, optarg);
        switch (c) {
        case O_MODEL: t->model = optarg; break;
        case O_DATA: t->data = optarg; break;
        case O_DATADIR:
            if (!*optarg) { // (it was taken as "/": "no /train-images-idx3-ubyte")
                cli_error("give --data-dir a folder, or leave it out for the default",
                          "--data-dir: empty path");
                return NGD_EXIT_USAGE;
            }
            t->data_dir = optarg;
            break;
        case O_OPTIM: break;
        case O_LOG:
        case O_CKPT:
        case O_RESUME:
            if (!*optarg) { // (not "--log : No such file or directory"; usage errors all three)
                cli_error(c == O_LOG    ? "give --log a file name"
                          : c == O_CKPT ? "give --checkpoint a file name"
                                        : "give --resume a checkpoint file",
                          "--%s: empty path",
                          c == O_LOG    ? "log"
                          : c == O_CKPT ? "checkpoint"
                                        : "resume");
                return NGD_EXIT_USAGE;
            }
            if (c == O_LOG) t->log = optarg;
            if (c == O_CKPT) t->ckpt = optarg;
            if (c == O_RESUME) t->resume = optarg;
            break;
        case O_NESTEROV: t->cfg.nesterov = true; break;
        case O_KFACLIKE: t->cfg.kfac_like = true, t->cfg.alpha1 = 0; break;
        case O_NORMCOV: t->cfg.normalize_lr_cov = true; break;
        case O_QUIRK: t->cfg.official_blockdiag_quirk = true; break;
        case O_FACTORED: t->cfg.kfac.factored_apply = true; break;
        case O_NOFACTORED: t->cfg.kfac.factored_apply = false; break;
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
        case 'h': train_print_help(stdout, cmd); exit(NGD_EXIT_OK);
        case O_WIDTHS: { // whole numbers >= 1, comma-separated: no empty list or entry
            const char *p = optarg;
            t->nwidths = 0;
            for (;;) {
                const size_t n = strcspn(p, ",");
                char tok[24] = "";
                if (n < sizeof tok) memcpy(tok, p, n), tok[n] = '\0';
                const bool num = t->nwidths < NN_MODEL_MAX_WIDTHS && n > 0 && n < sizeof tok &&
                                 cli_is_decimal(tok, true);
                if (num && parse_z(nm, tok, &z)) return -1; // (it said why: too large)
                if (!num || z == 0) {
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
            if (comma && strchr(comma + 1, ',')) {
                cli_error("give one structure for both factors, or K,C",
                          "--structure: '%s' has more than two entries", optarg);
                return -1;
            }
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
            if (parse_unit(nm, optarg, &t->cfg.momentum)) return -1;
            break;
        case O_WD:
            if (parse_f(nm, optarg, &t->cfg.weight_decay)) return -1;
            break;
        case O_BETA1:
            if (parse_unit(nm, optarg, &t->cfg.beta1)) return -1;
            break;
        case O_BETA2:
            if (parse_unit(nm, optarg, &t->cfg.beta2)) return -1;
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
            if (parse_unit(nm, optarg, &t->cfg.kfac.rho)) return -1;
            break;
        case O_TU:
            if (parse_zr(nm, optarg, 1, SIZE_MAX, &t->cfg.kfac.T_u)) return -1;
            break;
        case O_TI:
            if (parse_zr(nm, optarg, 1, SIZE_MAX, &t->cfg.kfac.T_i)) return -1;
            break;
        case O_KAPPA:
            if (parse_f(nm, optarg, &t->cfg.kfac.clip_kappa)) return -1;
            break;
        case O_WDSTART:
            if (parse_z(nm, optarg, &t->cfg.kfac.wd_start)) return -1;
            break;
        case O_RANK:
            if (parse_zr(nm, optarg, 1, SIZE_MAX, &t->cfg.kfac.rank)) return -1;
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
            if (parse_zr(nm, optarg, 1, SIZE_MAX, &t->cfg.kfac.brand_mult)) return -1;
            break;
        case O_RMULT:
            if (parse_zr(nm, optarg, 1, SIZE_MAX, &t->cfg.kfac.refresh_mult)) return -1;
            break;
        case O_CMULT:
            if (parse_zr(nm, optarg, 1, SIZE_MAX, &t->cfg.kfac.corr_mult)) return -1;
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
        case O_KARITH:
            if (parse_kfac_enum(c, optarg, &t->cfg.kfac)) return -1;
            break;
        case O_LRCOV:
            if (parse_f(nm, optarg, &t->cfg.lr_cov)) return -1;
            break;
        case O_ALPHA1:
            if (parse_unit(nm, optarg, &f)) return -1;
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
        case O_MICRO:
            if (parse_zr(nm, optarg, 1, SIZE_MAX, &t->micro)) return -1;
            break;
        case O_SEED:
            if (parse_z(nm, optarg, &z)) return -1;
            t->seed = z, t->seed_given = true;
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
    if (!eval && train_check_methods(t, OPTS, given, NOPTS)) return -1;
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
    if (train_check_model_data(t) || train_check_pairs(t, OPTS, given, NOPTS)) return -1;
    if (t->batch % t->micro != 0) {
        cli_error("give --micro-batches a divisor of --batch, or --batch a multiple of it",
                  "--batch %zu is not a multiple of --micro-batches %zu", t->batch, t->micro);
        return -1;
    }
    // the factored application where the trainer's gradients allow it (kfac-family.md §12-13:
    // on where valid), unless --factored or --no-factored said
    bool fac_given = false;
    for (size_t i = 0; i < NOPTS; i++)
        fac_given |= given[i] && (OPTS[i].id == O_FACTORED || OPTS[i].id == O_NOFACTORED);
    if (!fac_given)
        t->cfg.kfac.factored_apply =
            cli_factored_default(t->cfg.method, t->cfg.structure_K.kind, t->cfg.structure_C.kind);
    if (t->text) t->cfg.loss_average = NGD_LOSS_BATCH_SEQUENCE;
    char msg[256], named[320];
    if (ngd_config_validate(&t->cfg, msg, sizeof msg) != NGD_OK) {
        train_name_options(msg, named, sizeof named);
        cli_error("run 'ngd train --help' for the options", "%s", named);
        return -1;
    }
    return train_param_rule(t);
}
