/*
 * train.h — the internal header of `ngd train` and `ngd eval` (not installed, not libngd's):
 * the run's options, data, state and checkpoint header, and the calls between the files
 * that split the command by concern:
 *
 *   trainopts.c   the option table, --help, and parsing argv into train_opts
 *   trainrules.c  the rules between options: which methods use which option, libngd's field
 *                 names told as options, the plain parameters' rule, model and data paired
 *   traindata.c   loading the data sets, and the batches the loop draws
 *   trainckpt.c   the training checkpoint (docs/formats.md), written and read with libngd's
 *                 little-endian buffers (src/core/fileio.h)
 *   evaluate.c    evaluation on the test or validation set, text samples, the parameters'
 *                 CRC, and `ngd eval`
 *   trainlog.c    the JSON-lines log, the progress lines, the outputs checked up front
 *   train.c       the training loop, stopping on signals, and `ngd train`
 */
#ifndef NGD_TRAIN_H
#define NGD_TRAIN_H

#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cli.h"
#include "data.h"
#include "model.h"
#include "ngd.h"

// The ids of the options of OPTS (trainopts.c) that have no short form; trainrules.c says
// which methods use them.
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
    O_NOFACTORED,
    O_POPTIM,
    O_PLR,
    O_PWD,
    O_PRECISION,
    O_KARITH,
    O_MICRO // (new options last: the ids are hashed into checkpoints' option hashes)
};

// The run, as the options give it (ngd eval: as its checkpoint's header records it).
typedef struct {
    const char *model, *data, *data_dir, *log, *ckpt, *resume;
    size_t widths[NN_MODEL_MAX_WIDTHS], nwidths, subset;
    ngd_method method; // as chosen (--optim): ingd and ikfac are cfg.method SINGD to libngd
    ngd_config cfg;
    size_t epochs, max_steps, batch, eval_every, log_every, ckpt_every, max_skips;
    size_t context; // text models: tokens per sequence
    size_t micro;   // --micro-batches: each batch (a rank's share) forwarded in this many parts
    bool text;      // the data set is text (token model, loss averaged over batch and sequence)
    float time_budget;
    bool cosine;
    uint64_t seed;
    bool seed_given; // --seed was given (ngd eval: only a text model's sample uses it)
    int threads;
    bool augment, quiet;
    int param_method; // --param-optim: NGD_METHOD_SGD / _ADAMW, or -1 (the method's rule)
    float param_lr, param_wd;
    bool has_param_lr, has_param_wd;
    ngd_config param_cfg; // their add_param override, when has_param_cfg
    bool has_param_cfg;
    bool bf16;         // --precision bf16
    bool fdtype_given; // --factor-dtype was given (then --precision leaves the factors alone)
    // A hash of the options given, in any order, but those a rank of mpirun may have of its
    // own (--data-dir, --threads, --quiet, --log, --checkpoint, --resume), and of
    // NGD_DIST_SHARE: the ranks of one run must agree on it
    uint32_t opts_hash;
} train_opts;

// Where a run is: checkpoints save it, --resume restores it.
typedef struct {
    size_t step, epoch, skips;
    double wall;       // seconds of training so far
    bool eval_pending; // a signal stopped the evaluation of the epoch just completed: a
                       // resumed run does it first
    // the log's next step record: Σ loss·rows, Σ correct and the rows of the steps since the
    // last record (a resumed run's first record averages the same steps as an unbroken run's)
    double rec_loss, rec_acc;
    size_t rec_n;
    // a resumed run: the checkpoint's schedule (1 cosine, 0 constant, -1 not recorded) and
    // planned --epochs (0: not recorded), for the note when the lr's schedule changes
    int ck_cosine;
    size_t ck_epochs;
} run_state;

// --data shakespeare: every step draws B random windows of T+1 characters of the training
// text (nn_text_batch); an "epoch" is n_train/(B·T) steps. Checkpoints keep its position
// and rng where an image run keeps its loader's (then with no sample order).
typedef struct {
    const nn_text *text;
    size_t pos, epoch, per_epoch; // steps done in the current epoch
    nn_rng rng;
} text_iter;

// The data sets of a run.
typedef struct {
    nn_dataset train, test;
    nn_text text; // --data shakespeare: train = the first 90%, validation = the last 10%
    char name[32];
} train_sets;

// The run a checkpoint was written by: its header. Version 1 files have no shape fields.
typedef struct {
    uint64_t version;
    char model[32], data[32], method[32];
    bool has_shape; // version >= 2: widths (as given), subset, context, batch
    size_t widths[NN_MODEL_MAX_WIDTHS], nwidths, subset, context, batch;
    int precision;     // version >= 3: 0 f32, 1 bf16; -1 not recorded (the run was f32 or bf16)
    int kfac_arith;    // version >= 3: 1 --kfac-arith bf16, 0 not; -1 not recorded
    int augment;       // version >= 5: 1 --augment, 0 not; -1 not recorded
    int cosine;        // version >= 5: 1 --schedule cosine, 0 constant; -1 not recorded
    size_t epochs;     // version >= 5: the run's --epochs; 0 not recorded
    bool eval_pending; // the evaluation of the epoch completed last was cut by a signal
} trainckpt_head;

// ---- trainopts.c ----
// --help of `ngd train` (cmd "train") or of `ngd eval` (cmd "eval") on f.
void train_print_help(FILE *f, const char *cmd);
// argv into t (cmd: "train" or "eval", whose options are a subset and whose run comes from
// the checkpoint). Returns 0, or -1 after a usage error. --help prints and exits 0.
int train_parse_opts(int argc, char **argv, train_opts *t, const char *cmd);

// ---- trainrules.c ----
// Refuses an option given (given[i] for opts[i], n rows) to a method that does not use it.
int train_check_methods(const train_opts *t, const cli_opt *opts, const bool *given, size_t n);
// Whether method m uses the option of id (O_*): the rule train_check_methods applies
bool train_method_uses(ngd_method m, int id);
// ngd_config_validate's message msg with libngd's field names replaced by the options.
void train_name_options(const char *msg, char *out, size_t cap);
// The plain parameters' rule (--param-optim, --param-lr, --param-wd) into t->param_cfg.
int train_param_rule(train_opts *t);
// Text data goes with a token model (chargpt), image data with the others.
int train_check_model_data(const train_opts *t);
int train_check_pairs(const train_opts *t, const cli_opt *opts, const bool *given, size_t n);

// ---- traindata.c ----
// Loads the run's training and test (or text) sets into d. Returns 0, -1 after an error,
// or -2 after a usage error (an unknown --data).
int train_load_data(const train_opts *t, train_sets *d);
// The next batch (images through ld; text through ti when ti != NULL): its size, or 0 at
// the end of an epoch.
size_t train_next_batch(const train_opts *t, nn_loader *ld, text_iter *ti, float *x, int32_t *ids,
                        int32_t *y);
size_t train_steps_into_epoch(const train_opts *t, const nn_loader *ld, const text_iter *ti);

// ---- trainckpt.c ----
// Whether --checkpoint PATH may be written (a regular file or none, in a writable folder).
// Returns -1 after an error naming PATH.
int trainckpt_check_target(const char *path);
// One run a checkpoint: takes an exclusive lock on PATH.lock, held until the process ends
// (and the file removed at exit). Returns -1 after an error naming PATH (another run holds
// it; the lock file cannot be made); 0 also where the file system has no locks.
int trainckpt_lock(const char *path);
// Before the data loads, from the header of --resume PATH alone: the run's --model and --data
// must be the checkpoint's (another data set was looked for first, and its error told of
// files missing). -1 after an error naming them; 0 also for a file trainckpt_load will refuse.
int trainckpt_precheck(const char *path, const train_opts *t);
// Writes the run's checkpoint to path atomically (mpirun: rank 0 only). Returns 0, or -1
// after an error.
int trainckpt_save(const char *path, const train_opts *t, nn_model *m, ngd_optim *o,
                   const nn_loader *ld, const text_iter *ti, const run_state *rs);
// Checks the magic and the CRC of the file's bytes b[0..len) and reads its header into h.
// Returns NULL, or why the file cannot be read.
const char *trainckpt_read_head(const unsigned char *b, size_t len, trainckpt_head *h);
// "64,64" (or "(the model's defaults)" for none) into out.
void trainckpt_format_widths(const size_t *w, size_t n, char *out, size_t cap);
// Loads a checkpoint into the run (o NULL: the model only, for ngd eval). Returns 0, or -1
// after an error naming path.
int trainckpt_load(const char *path, const train_opts *t, nn_model *m, ngd_optim *o, nn_loader *ld,
                   text_iter *ti, run_state *rs);

// ---- evaluate.c ----
#define TEXT_EVAL_BATCHES 32  // text: batches of fixed validation windows per evaluation
#define TEXT_SAMPLE_LEN   200 // characters of the sample printed after a text run
// The loss and accuracy of m on the run's test set (text: validation windows), into *loss
// and *acc. Returns 0, 1 when a signal stopped it (NaN then), -1 after an error.
int train_evaluate(nn_model *m, const train_opts *t, const train_sets *d, float *x, int32_t *ids,
                   int32_t *y, double *loss, double *acc);
// Prints len characters sampled from a text model (seeded), from a newline.
void train_print_sample(nn_model *m, const nn_text *tx, size_t T, uint64_t seed, size_t len);
// The CRC of a model's parameters (ngd eval prints it; the training summary logs it).
uint32_t train_params_crc(const nn_model *m);

// ---- trainlog.c ----
// A monotonic clock in seconds.
double train_now_s(void);
// What a training run will write, checked before any data is loaded. Returns an exit code.
int train_check_outputs(const train_opts *t);
// Around a run's first save: the other run's checkpoint that --checkpoint held (the note of
// train_check_outputs) is linked aside before it, and kept as PATH.prev once the save
// succeeded (saved), or left as it was. A failure is a warning: the save goes on. Returns 0.
int trainlog_keep_begin(void);
void trainlog_keep_end(bool saved);
// Opens the log (its path into path); NULL after an error. A resumed run's log is cut back
// to its records up to resume_step (the checkpoint's) when no summary follows the later ones.
FILE *trainlog_open(const train_opts *t, size_t resume_step, char *path, size_t cap);
// The resumed run's log (as trainlog_open left it) ends with a summary of this many steps
// and this "parameters_crc": the run that wrote it ended where this one resumes.
bool trainlog_ends_with(size_t steps, const char *crc);
// A new run that ends before writing any record: its log is left as it was (or, created by
// the run, removed). False (nothing done) once a record was written, and for a resumed run.
bool trainlog_abandon(FILE *f, const char *path);
// Writes one record o (and frees it) and flushes. -1 when the log cannot be written.
int trainlog_line(FILE *f, const char *path, cJSON *o);
// The per-layer health records of a step record.
cJSON *trainlog_health(const ngd_optim *o);
// Writes an "eval" record (step, epoch, test loss and accuracy, wall seconds); returns as
// trainlog_line.
int trainlog_eval(FILE *f, const char *path, size_t step, double epoch, double loss, double acc,
                  double wall);
// mpirun: the summary's communication record.
void trainlog_dist_summary(cJSON *j, const ngd_optim *o, size_t steps, bool quiet);
// The progress line on stderr (redrawn on a terminal).
void trainlog_progress(bool tty, size_t epoch, size_t epochs, size_t it, size_t per_epoch,
                       double loss, double acc, double sps, double eta);

// ---- train.c ----
// The first SIGINT or SIGTERM (0 until one came): the loop and evaluations stop at it.
extern atomic_int train_stop_signal;
// Trains (or, eval_only, evaluates a checkpoint) the run t describes. Returns an exit code.
int train_run(const train_opts *t, bool eval_only);
#endif
