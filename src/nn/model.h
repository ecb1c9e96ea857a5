/*
 * model.h — the engine's models behind one small table (internal, never installed). Each
 * model file writes its forward and backward out in order (llm.c's gpt2_forward style); the
 * table only lets `ngd train` pick one by name. Classification models map an input batch
 * (N, c, h, w) — or token ids for text models — to logits (N·T, classes).
 *
 * Every Kronecker-factored layer (Linear, Conv2d) is registered with libngd by `attach`
 * (ngd_optim_add_layer) and hands over its statistics in `observe` (ngd_optim_observe) after
 * the backward pass; every other parameter (norm scales and shifts, embeddings) is
 * registered with ngd_optim_add_param, so the optimizer trains all of them.
 */
#ifndef NN_MODEL_H
#define NN_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ngd.h"
#include "nn.h"

#define NN_MODEL_MAX_PARAMS 256
#define NN_MODEL_MAX_WIDTHS 8

typedef struct {
    const char *name;        // "mlp", "cnn", ...
    size_t in_c, in_h, in_w; // input image shape (text models: in_h = context length T)
    size_t classes;          // output classes (text: vocabulary size)
    size_t max_batch;
    size_t widths[NN_MODEL_MAX_WIDTHS]; // hidden widths (mlp) / channels (cnn); 0 = default
    size_t nwidths;
    float dropout;
    uint64_t seed; // initialisation
    bool no_stats; // the optimizer never asks for statistics (first-order): the
                   // conv output gradients need not outlive the backward pass, so
                   // the CNNs keep one buffer for all of them; observe then fails
    bool bf16;     // --precision bf16: the Linear (and Conv2d) GEMMs take bf16 operands
                   // (f32 accumulation, f32 master weights): nn_linear_use_bf16
} nn_model_cfg;

typedef struct nn_model nn_model;

typedef struct {
    const char *name;
    const char *help;
    nn_status (*create)(nn_model *m, const nn_model_cfg *cfg, char *err, size_t cap);
    // x (N, c, h, w) -> m->logits (N, classes); train selects batchnorm/dropout mode
    void (*forward)(nn_model *m, const float *x, size_t N, bool train);
    // dlogits (N, classes): accumulates every parameter gradient (zero them first)
    void (*backward)(nn_model *m, const float *dlogits);
    ngd_status (*attach)(nn_model *m, ngd_optim *o);
    // the statistics of every Kronecker-factored layer of the last backward
    ngd_status (*observe)(nn_model *m, ngd_optim *o);
    void (*destroy)(nn_model *m);
    // Token models only (NULL for image models; a token model's `forward` is NULL):
    // ids (B, T) in [0, classes), T <= cfg->in_h -> m->logits (B·T, classes), m->N = B·T.
    // backward then takes dlogits (B·T, classes), and observe hands libngd batch = B with
    // B·T rows per Linear (weights shared over tokens: loss_average BATCH_SEQUENCE).
    void (*forward_tokens)(nn_model *m, const int32_t *ids, size_t B, size_t T, bool train);
    // Every layer a Linear over the batch's rows: no plain parameters (the rule of
    // --param-optim has nothing to act on) and no convolution or sequence (--kfac-approx)
    bool linear_only;
} nn_model_ops;

struct nn_model {
    const nn_model_ops *ops;
    nn_model_cfg cfg;
    float *logits;                        // (max_batch, classes), written by forward
                                          // (max_batch·in_h rows for token models)
    nn_param params[NN_MODEL_MAX_PARAMS]; // every parameter, in registration order
    size_t nparams;
    nn_param buffers[NN_MODEL_MAX_PARAMS]; // state that is not trained (BN running stats)
    size_t nbuffers;
    nn_rng *rngs[NN_MODEL_MAX_PARAMS]; // random streams used in forward (dropout)
    size_t nrngs;
    size_t N;                         // rows of the last forward's logits (batch)
    const ngd_config *param_override; // set before attach: the rule of the plain
                                      // parameters (ngd_optim_add_param's override;
                                      // NULL = the optimizer's own), borrowed
    float *stats_buf; // Conv2d statistics scratch, shared by the layers (nn_observe_conv2d)
    size_t stats_n;   // its floats
    size_t widths[NN_MODEL_MAX_WIDTHS]; // the widths it was built with, defaults filled in
    size_t nwidths;                     // (cfg.widths: as given, 0 = default)
    void *impl;                         // the model's own struct
};

// Creates the model named cfg->name. Errors: NN_ERR_ARG (unknown name, bad sizes: the
// message lists the models), NN_ERR_NOMEM.
nn_status nn_model_create(nn_model *m, const nn_model_cfg *cfg, char *err, size_t cap);
void nn_model_free(nn_model *m);
// Records the widths a model is built with (its create, after checking them): m->widths.
void nn_model_set_widths(nn_model *m, const size_t *w, size_t n);
void nn_model_zero_grad(nn_model *m);
size_t nn_model_param_count(const nn_model *m);
// The table of models (for --help): returns the i-th, NULL past the end.
const nn_model_ops *nn_model_list(size_t i);
// The model named `name`, or NULL.
const nn_model_ops *nn_model_find(const char *name);

// Helpers for model files: register a Linear / Conv2d with libngd and remember its id.
ngd_status nn_attach_linear(ngd_optim *o, const nn_linear *l, const char *name, int *id);
ngd_status nn_attach_conv2d(ngd_optim *o, const nn_conv2d *l, const char *name, int *id);
// Registers plain parameters under `prefix.` with the given override (may be NULL).
ngd_status nn_attach_params(ngd_optim *o, const ngd_config *ov, const nn_param *ps, size_t n,
                            const char *prefix);
// An activation between layers: f32, or (bf16 mode, h set) bf16.
typedef struct {
    const float *f;
    const uint16_t *h;
} nn_act;
// A conv-BN-ReLU block: the conv from `in` into cz (or, bf16 mode, cz16 rounded), then
// BN-ReLU into ra, or into ra16 rounded when ra16 is set
// (its reader is a bf16 conv); returns that output. Exactly one of cz, cz16 is set.
nn_act nn_conv_bn_relu_forward(nn_conv2d *c, nn_batchnorm *bn, nn_act in, float *cz, uint16_t *cz16,
                               float *ra, uint16_t *ra16, size_t N, bool train);
// A conv-BN-ReLU block's backward from dy (of its output): BN-ReLU's gradient into dcz, or
// into dcz16 rounded to bf16 when set (bf16 mode: the conv reads it in place), then the
// conv's, dx written (NULL: none). bf16 mode (dcz16) may take dy in bf16 (dy16 instead of
// dy) and write dx rounded (dx16 instead of dx).
void nn_conv_bn_relu_backward(nn_conv2d *c, nn_batchnorm *bn, const float *dy, const uint16_t *dy16,
                              float *dcz, uint16_t *dcz16, float *dx, uint16_t *dx16);
// A conv-BN-ReLU block followed by 2x2 max pooling of stride 2 (the last block of a CNN
// stage): the BN-ReLU output is never stored (nn_batchnorm_relu_maxpool_forward); the pooled
// output goes to po, or po16 rounded; returns it (cz / cz16 as above). Backward: the pool's,
// then BN-ReLU's.
nn_act nn_conv_bn_relu_pool_forward(nn_conv2d *c, nn_batchnorm *bn, nn_maxpool2d *pool, nn_act in,
                                    float *cz, uint16_t *cz16, float *po, uint16_t *po16, size_t N,
                                    bool train);
// Max pooling of x into y, or into y16 rounded when y16 is set; returns that output.
nn_act nn_maxpool2d_forward_act(nn_maxpool2d *l, const float *x, float *y, uint16_t *y16, size_t N);
ngd_status nn_observe_linear(ngd_optim *o, const nn_linear *l, int id, size_t batch);
// Builds a Conv2d's statistics in m's shared scratch (grown to the largest layer's) and
// hands them to libngd.
ngd_status nn_observe_conv2d(ngd_optim *o, nn_model *m, const nn_conv2d *l, int id, size_t batch);
// Appends a layer's parameters to m->params (names must be static strings).
void nn_model_add_params(nn_model *m, const nn_param *ps, size_t n);
// Appends a non-trained state array (g = NULL) to m->buffers.
void nn_model_add_buffer(nn_model *m, const char *name, float *p, size_t n);
// Registers a random stream the model draws from while training (e.g. a dropout layer's
// rng) so that checkpoints save it and resuming is bit-identical.
void nn_model_add_rng(nn_model *m, nn_rng *r);
// Copies the buffers into out (NN_MODEL_MAX_PARAMS entries); returns their number.
size_t nn_model_buffers(const nn_model *m, nn_param *out);
#endif
