/*
 * tblock.h — the pre-norm transformer block shared by chargpt and vit (tblock.c):
 *   mid = x + attn(ln1(x))                 multi-head self-attention (causal or not)
 *   y   = mid + proj(gelu(fc(ln2(mid))))   C -> 4C -> C
 * on `rows` = B·T token rows. Its four Linears (attn.qkv, attn.proj, fc, proj) are
 * Kronecker-factored layers shared over the T tokens; ln1 and ln2 are plain parameters.
 * Backward keeps the output gradients its Linears' observe needs (dmid, dfch; proj's is the
 * caller's dy), so observe must come after the whole backward pass.
 */
#ifndef NN_TBLOCK_H
#define NN_TBLOCK_H
#include "model.h"

typedef struct {
    size_t C;
    nn_layernorm ln1, ln2;
    nn_attention attn;
    nn_linear fc, proj;
    nn_gelu gelu;
    int qkv_id, aproj_id, fc_id, proj_id;
    // activations (rows x C unless noted)
    float *ln1o, *atto, *mid; // ln1 output, attention output, mid = x + atto
    float *ln2o, *fch, *gel;  // ln2 output, fc output (GELU' after the forward) and its GELU
                              // (rows x 4C); in bf16 mode
                              // ln1o, ln2o and gel are NULL (written into the Linears' x16)
    float *mlpo;              // MLP branch output
    float *dmid, *dfch;       // output gradients kept for observe (rows x C, rows x 4C)
} nn_tblock;

// Sizes for up to max_b sequences of T tokens; registers the parameters with m (ln1, qkv,
// attention proj, ln2, fc, proj). NN_ERR_NOMEM on failure (free with nn_tblock_free).
nn_status nn_tblock_init(nn_tblock *b, nn_model *m, size_t C, size_t nh, bool causal,
                         nn_gelu_kind gelu, size_t max_b, size_t T, nn_rng *rng);
void nn_tblock_free(nn_tblock *b);
// bf16 GEMMs in the block's four Linears (rows = max_b·T as planned by init).
nn_status nn_tblock_use_bf16(nn_tblock *b, size_t rows);
// x -> y (both B·T x C; y must not alias x)
void nn_tblock_forward(nn_tblock *b, const float *x, float *y, size_t B, size_t T);
// dy (the gradient of y, kept until observe) -> dx (overwritten); dln (rows x C) and dgel
// (rows x 4C) are scratch. Accumulates every parameter gradient.
void nn_tblock_backward(nn_tblock *b, const float *dy, float *dx, float *dln, float *dgel,
                        size_t rows);
// Registers the Linears and the LayerNorm parameters as "<prefix>.ln1", ".attn.qkv", ...
ngd_status nn_tblock_attach(nn_tblock *b, ngd_optim *o, const ngd_config *param_override,
                            const char *prefix);
// The Linears' statistics of the last backward, batch = B (T weight-sharing positions).
ngd_status nn_tblock_observe(const nn_tblock *b, ngd_optim *o, size_t batch);
#endif
