/*
 * test_chargpt.c — the `chargpt` model (src/nn/models/chargpt.c) through the model table:
 * parameter gradients of every tensor against central finite differences of the mean
 * cross-entropy over batch and sequence; causality (a logit never depends on later tokens,
 * and a shorter forward gives the same prefix logits, as generation relies on); every
 * Kronecker-factored layer observed and updated by SINGD with both K-FAC approximations;
 * the loss falling on a fixed tiny text; bad sizes rejected.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "harness.h"
#include "model.h"
#include "nn.h"

static nn_model_cfg tiny_cfg(size_t V, size_t T, size_t B, size_t C, size_t depth, size_t nh) {
    nn_model_cfg c = {.name = "chargpt",
                      .in_c = 1,
                      .in_h = T,
                      .in_w = 1,
                      .classes = V,
                      .max_batch = B,
                      .seed = 5};
    c.widths[0] = C, c.widths[1] = depth, c.widths[2] = nh;
    c.nwidths = 3;
    return c;
}

static void random_ids(nn_rng *r, int32_t *ids, size_t n, size_t V) {
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)nn_rng_below(r, V);
}

// mean cross-entropy over the B·T rows, in float64 from the float32 logits
static double xent64(const float *z, const int32_t *y, size_t N, size_t V) {
    double total = 0;
    for (size_t i = 0; i < N; i++) {
        const float *r = z + i * V;
        double mx = r[0], s = 0;
        for (size_t j = 1; j < V; j++)
            mx = fmax(mx, (double)r[j]);
        for (size_t j = 0; j < V; j++)
            s += exp((double)r[j] - mx);
        total += mx + log(s) - (double)r[y[i]];
    }
    return total / (double)N;
}

// Central differences with h = 2e-3 on a few entries of every parameter tensor (h = 1e-2
// is too coarse here: behind a LayerNorm an embedding entry of ~0.1 moves its row by 10%, and
// the truncation error reaches 1%). float32 rounding of the forward (~1e-7 of the loss / 2h)
// stays below the tolerance; measured worst error/tolerance 0.18 (run with -v). Broken
// backwards (tried: the residual copy into dmid or dres dropped, the positional gradient
// dropped) fail by 10-100x.
#define FD_H          2e-3f
#define FD_PER_TENSOR 5

static void gradients_should_match_finite_differences(void) {
    const size_t V = 7, T = 5, B = 3;
    nn_model m;
    char err[256];
    nn_model_cfg cfg = tiny_cfg(V, T, B, 8, 2, 2);
    CHECK(nn_model_create(&m, &cfg, err, sizeof err) == NN_OK);
    CHECK(m.nparams == 6 + 12 * 2);
    nn_rng r;
    nn_rng_seed(&r, 9);
    int32_t ids[15], y[15];
    random_ids(&r, ids, B * T, V);
    random_ids(&r, y, B * T, V);
    // spread the embeddings and norms away from their flat initial values, so that every
    // parameter has a gradient of a typical size
    for (size_t i = 0; i < m.nparams; i++)
        for (size_t j = 0; j < m.params[i].n; j++)
            m.params[i].p[j] += 0.1f * nn_rng_normal(&r);
    float *dlogits = malloc(B * T * V * sizeof(float));
    nn_model_zero_grad(&m);
    m.ops->forward_tokens(&m, ids, B, T, true);
    CHECK(m.N == B * T);
    nn_xent_forward(m.logits, y, B * T, V, 0.0f, 1.0f, dlogits);
    m.ops->backward(&m, dlogits);
    double worst = 0;
    for (size_t i = 0; i < m.nparams; i++) {
        const nn_param *p = &m.params[i];
        const size_t k = p->n < FD_PER_TENSOR ? p->n : FD_PER_TENSOR;
        double num[FD_PER_TENSOR], ana[FD_PER_TENSOR], maxnum = 0;
        for (size_t j = 0; j < k; j++) {
            const size_t at = (j * p->n) / k + (j * 13) % (p->n / k);
            const float x0 = p->p[at];
            p->p[at] = x0 + FD_H;
            const float xp = p->p[at];
            m.ops->forward_tokens(&m, ids, B, T, true);
            const double lp = xent64(m.logits, y, B * T, V);
            p->p[at] = x0 - FD_H;
            const float xm = p->p[at];
            m.ops->forward_tokens(&m, ids, B, T, true);
            const double lm = xent64(m.logits, y, B * T, V);
            p->p[at] = x0;
            num[j] = (lp - lm) / ((double)xp - (double)xm);
            ana[j] = (double)p->g[at];
            maxnum = fmax(maxnum, fabs(num[j]));
        }
        for (size_t j = 0; j < k; j++) {
            const double tol = 1e-2 * fabs(num[j]) + 2e-3 * maxnum + 1e-6;
            const double ratio = fabs(ana[j] - num[j]) / tol;
            worst = fmax(worst, ratio);
            CHECK_MSG(ratio <= 1.0, "param %zu (%s, n=%zu) entry %zu: analytic %.7g numeric %.7g",
                      i, p->name, p->n, j, ana[j], num[j]);
        }
    }
    if (th_verbose) fprintf(stderr, "    worst error/tolerance %.3g\n", worst);
    free(dlogits);
    nn_model_free(&m);
}

static void logits_should_not_depend_on_later_tokens(void) {
    const size_t V = 11, T = 8, B = 2;
    nn_model m;
    char err[256];
    nn_model_cfg cfg = tiny_cfg(V, T, B, 12, 2, 3);
    CHECK(nn_model_create(&m, &cfg, err, sizeof err) == NN_OK);
    nn_rng r;
    nn_rng_seed(&r, 3);
    int32_t ids[16];
    random_ids(&r, ids, B * T, V);
    float *full = malloc(B * T * V * sizeof(float));
    m.ops->forward_tokens(&m, ids, B, T, false);
    memcpy(full, m.logits, B * T * V * sizeof(float));
    // change the last token of every sequence: only the last position's logits may move
    for (size_t b = 0; b < B; b++)
        ids[b * T + T - 1] = (ids[b * T + T - 1] + 1) % (int32_t)V;
    m.ops->forward_tokens(&m, ids, B, T, false);
    for (size_t b = 0; b < B; b++) {
        CHECK_TENSOR(m.logits + b * T * V, full + b * T * V, (T - 1) * V, 1e-6, 1e-6,
                     "prefix logits");
        double moved = 0;
        for (size_t j = 0; j < V; j++)
            moved += fabs((double)m.logits[(b * T + T - 1) * V + j] -
                          (double)full[(b * T + T - 1) * V + j]);
        CHECK(moved > 1e-6);
    }
    // a forward of the first 3 tokens of sequence 0 alone (B = 1, T = 3) gives its prefix
    m.ops->forward_tokens(&m, ids, 1, 3, false);
    CHECK(m.N == 3);
    CHECK_TENSOR(m.logits, full, 3 * V, 1e-5, 1e-5, "short forward");
    free(full);
    nn_model_free(&m);
}

// One training step with every Kronecker-factored layer observed; each is updated.
static void every_layer_should_be_observed_and_updated(void) {
    const size_t V = 9, T = 6, B = 4, depth = 2;
    for (int approx = 0; approx < 2; approx++) {
        nn_model m;
        char err[256];
        nn_model_cfg cfg = tiny_cfg(V, T, B, 16, depth, 4);
        CHECK(nn_model_create(&m, &cfg, err, sizeof err) == NN_OK);
        ngd_config oc = ngd_config_default(NGD_METHOD_SINGD);
        oc.loss_average = NGD_LOSS_BATCH_SEQUENCE;
        oc.kfac_approx = approx ? NGD_KFAC_REDUCE : NGD_KFAC_EXPAND;
        ngd_optim *o = NULL;
        CHECK(ngd_optim_create(&oc, &o) == NGD_OK);
        CHECK(m.ops->attach(&m, o) == NGD_OK);
        // wte, wpe; per block ln1 (2), qkv, attn proj, ln2 (2), fc, proj; lnf (2), head
        CHECK(ngd_optim_count(o) == 2 + 8 * depth + 3);
        nn_rng r;
        nn_rng_seed(&r, 4);
        int32_t ids[24], y[24];
        float dlogits[24 * 9];
        for (int step = 0; step < 2; step++) {
            random_ids(&r, ids, B * T, V);
            random_ids(&r, y, B * T, V);
            nn_model_zero_grad(&m);
            m.ops->forward_tokens(&m, ids, B, T, true);
            nn_xent_forward(m.logits, y, B * T, V, 0.0f, 1.0f, dlogits);
            m.ops->backward(&m, dlogits);
            if (step == 0) CHECK(ngd_optim_wants_stats(o));
            if (ngd_optim_wants_stats(o)) {
                ngd_status s = m.ops->observe(&m, o);
                CHECK_MSG(s == NGD_OK, "%s", ngd_optim_errmsg(o));
            }
            ngd_status s = ngd_optim_step(o);
            CHECK_MSG(s == NGD_OK, "step: %s", ngd_optim_errmsg(o));
        }
        size_t updated = 0;
        for (size_t i = 0; i < ngd_optim_count(o); i++) {
            ngd_layer_health h;
            CHECK(ngd_optim_layer_health(o, (int)i, &h) == NGD_OK);
            updated += h.updates > 0;
            CHECK(isfinite(h.update_norm) && h.skips == 0);
        }
        CHECK(updated == 4 * depth + 1);
        ngd_optim_free(o);
        nn_model_free(&m);
    }
}

// A fixed tiny text is learned: the loss of 60 SINGD steps on random windows falls well
// below its start (ln V at initialisation).
static void loss_should_fall_on_a_tiny_text(void) {
    const char *txt = "to be, or not to be, that is the question.\n";
    char buf[43 * 8 + 1] = "";
    for (int i = 0; i < 8; i++)
        strcat(buf, txt);
    nn_text t;
    char err[256];
    CHECK(nn_text_from_memory(&t, buf, strlen(buf), 0.0f, err, sizeof err) == NN_OK);
    const size_t T = 16, B = 8;
    nn_model m;
    nn_model_cfg cfg = tiny_cfg(t.vocab, T, B, 32, 1, 2);
    CHECK(nn_model_create(&m, &cfg, err, sizeof err) == NN_OK);
    ngd_config oc = ngd_config_default(NGD_METHOD_SINGD);
    oc.loss_average = NGD_LOSS_BATCH_SEQUENCE;
    oc.lr = 0.02f;
    oc.damping = 0.01f;
    ngd_optim *o = NULL;
    CHECK(ngd_optim_create(&oc, &o) == NGD_OK);
    CHECK(m.ops->attach(&m, o) == NGD_OK);
    nn_rng r;
    nn_rng_seed(&r, 1);
    int32_t x[128], y[128];
    float *dl = malloc(B * T * t.vocab * sizeof(float));
    double first = 0, last = 0;
    for (int step = 0; step < 60; step++) {
        CHECK(nn_text_batch(&t, NN_SPLIT_TRAIN, B, T, &r, x, y) == NN_OK);
        nn_model_zero_grad(&m);
        m.ops->forward_tokens(&m, x, B, T, true);
        const float loss = nn_xent_forward(m.logits, y, B * T, t.vocab, 0.0f, 1.0f, dl);
        m.ops->backward(&m, dl);
        if (ngd_optim_wants_stats(o)) CHECK(m.ops->observe(&m, o) == NGD_OK);
        CHECK(ngd_optim_step(o) == NGD_OK);
        if (step < 5) first += (double)loss / 5;
        if (step >= 55) last += (double)loss / 5;
    }
    if (th_verbose)
        fprintf(stderr, "    loss %.3f -> %.3f (ln V = %.3f)\n", first, last, log((double)t.vocab));
    CHECK_MSG(last < 0.4 * first, "loss %.3f -> %.3f", first, last);
    free(dl);
    ngd_optim_free(o);
    nn_model_free(&m);
    nn_text_free(&t);
}

static void bad_sizes_should_be_rejected(void) {
    nn_model m;
    char err[256];
    nn_model_cfg c = tiny_cfg(5, 4, 2, 10, 1, 3); // 10 is not divisible by 3 heads
    CHECK(nn_model_create(&m, &c, err, sizeof err) == NN_ERR_ARG);
    CHECK(strstr(err, "chargpt") != NULL);
    c = tiny_cfg(5, 4, 2, 8, 0, 2);
    CHECK(nn_model_create(&m, &c, err, sizeof err) == NN_ERR_ARG);
    c = tiny_cfg(5, 4, 2, 8, 1, 2);
    c.in_c = 3; // an image shape
    CHECK(nn_model_create(&m, &c, err, sizeof err) == NN_ERR_ARG);
    // image models have no token entry, the token model no image entry
    for (size_t i = 0; nn_model_list(i); i++) {
        const nn_model_ops *ops = nn_model_list(i);
        CHECK((ops->forward == NULL) != (ops->forward_tokens == NULL));
        if (!strcmp(ops->name, "chargpt")) CHECK(ops->forward_tokens != NULL);
    }
}

static const test_case TESTS[] = {
    TEST(gradients_should_match_finite_differences),
    TEST(logits_should_not_depend_on_later_tokens),
    TEST(every_layer_should_be_observed_and_updated),
    TEST(loss_should_fall_on_a_tiny_text),
    TEST(bad_sizes_should_be_rejected),
};

int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
