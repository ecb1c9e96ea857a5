/*
 * 05_sequence_model.c — a tiny causal language model in a hand-written loop: weight sharing
 * across the positions of a sequence, loss_average = NGD_LOSS_BATCH_SEQUENCE, expand / reduce.
 *
 * The model (forward and backward by hand): sequences of T + 1 tokens over V symbols; at every
 * position t < T it predicts token t + 1 from tokens t and t - 1:
 *     e_t = E[x_t] (a token embedding, V x D: a plain parameter updated by AdamW),
 *     u_t = [e_t, e_{t-1}] (causal mixing: e_{-1} = 0),  h_t = tanh(W1 u_t + b1),
 *     logits_t = W2 h_t + b2,  loss = mean over batch and positions of the cross-entropy.
 * W1 and W2 are each ONE Kronecker-factored layer used at all T positions: their statistics are
 * B*T rows, sample-major (row b*T + t). The data come from a second-order Markov chain (a fixed
 * random table of (x_{t-1}, x_t) -> x_{t+1}, followed 85 % of the time) drawn from an LCG, so a
 * model that ignores x_{t-1} cannot go below the "bigram floor" printed below.
 *
 * It checks, from the formulas of docs/algorithms.md (#output-gradients, #k-fac-statistics):
 *  1. the statistics libngd builds from the observed rows: SINGD's first m_K, m_C and K-FAC's
 *     first A, Gamma (ngd_optim_factor_dense) against the same sums formed here in double, for
 *     BATCH_SEQUENCE and SUM, expand, and reduce with batch*T rows or with `a` pre-reduced
 *     (a wrong sigma, e.g. sqrt(B) instead of sqrt(B*T), misses by 10 % to 100 %);
 *  2. K-FAC on the SUM of the losses takes the mean's steps with lr scaled by R/n (its Gamma
 *     is a per-sample average: c = n, Gamma_b = R/n sum g~ g~^T, so the sum's preconditioned
 *     step is n/R times the mean's), step by step (ngd_optim_last_update) and in the weights;
 *  3. training: SINGD (dense fc1, diagonal head) and K-FAC with expand, both with reduce; SGD
 *     at SINGD's lr and momentum (SINGD without its preconditioner) and AdamW for comparison.
 * Exits 0 only if every check holds, the expand runs beat that SGD run and end within 0.06 of
 * the chain's own (oracle) loss on held-out sequences, and the reduce runs within 0.1 of it.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "ngd.h"

enum { V = 8, T = 6, D = 8, DIN = 2 * D, H = 32, B = 32, ROWS = B * T };
enum { NTRAIN = 512, NTEST = 256, STEPS = 300 };

typedef struct { // every trainable parameter (a second copy holds the gradients)
    float E[V * D], W1[H * DIN], b1[H], W2[V * H], b2[V];
} params;

typedef struct { // one batch's activations; u, h, dz, dl are the rows the optimizer observes
    float u[ROWS * DIN], du[ROWS * DIN], h[ROWS * H], dz[ROWS * H], dl[ROWS * V];
    float ur[B * DIN], hr[B * H]; // inputs averaged over each sequence's T positions (reduce)
} acts;

typedef struct { // an optimizer with the parameters it updates (they must outlive it)
    params p, g;
    ngd_optim *o;
    int ids[3]; // fc1, head, embedding
    ngd_loss_average avg;
    bool pre_reduce; // REDUCE: observe `a` as B rows (means) instead of B*T rows
} trainer;

typedef unsigned char seq_t[T + 1];
static seq_t train_set[NTRAIN], test_set[NTEST];
static unsigned lcg;
static acts A;
static trainer tr[2];

static unsigned rnd(void) { return (lcg = lcg * 1103515245u + 12345u) >> 8; }

static unsigned char tab[V][V]; // the chain: x_{t+1} = tab[x_{t-1}][x_t] 85 % of the time

static void make_data(void) {
    lcg = 2024;
    for (int i = 0; i < V * V; i++)
        tab[i / V][i % V] = (unsigned char)(rnd() % V);
    for (int n = 0; n < NTRAIN + NTEST; n++) {
        unsigned char *x = n < NTRAIN ? train_set[n] : test_set[n - NTRAIN];
        x[0] = (unsigned char)(rnd() % V), x[1] = (unsigned char)(rnd() % V);
        for (int t = 1; t < T; t++)
            x[t + 1] = rnd() % 100 < 85 ? tab[x[t - 1]][x[t]] : (unsigned char)(rnd() % V);
    }
}

// The lowest mean loss on `s` of any predictor that sees only (x_t, t == 0): the empirical
// conditional entropy. The model beats it only by using x_{t-1} through the causal mixing.
static double bigram_floor(seq_t *s, int n) {
    static double cnt[2][V][V];
    memset(cnt, 0, sizeof cnt);
    for (int i = 0; i < n; i++)
        for (int t = 0; t < T; t++)
            cnt[t == 0][s[i][t]][s[i][t + 1]] += 1;
    double ent = 0;
    for (int f = 0; f < 2; f++)
        for (int c = 0; c < V; c++) {
            double tot = 0;
            for (int y = 0; y < V; y++)
                tot += cnt[f][c][y];
            for (int y = 0; y < V; y++)
                if (cnt[f][c][y] > 0) ent -= cnt[f][c][y] * log(cnt[f][c][y] / tot);
        }
    return ent / (n * T);
}

// The mean loss on `s` of the chain's true conditional probabilities: what no model beats
// (in expectation). Position 0's target is uniform: no x_{t-1} there.
static double oracle_loss(seq_t *s, int n) {
    double loss = 0, hit = log(0.85 + 0.15 / V), miss = log(0.15 / V);
    for (int i = 0; i < n; i++)
        for (int t = 0; t < T; t++)
            loss -= t == 0 ? -log(V) : s[i][t + 1] == tab[s[i][t - 1]][s[i][t]] ? hit : miss;
    return loss / (n * T);
}

static void init_params(params *p) { // the same start every time
    lcg = 7;
    float *w[3] = {p->E, p->W1, p->W2};
    const int size[3] = {V * D, H * DIN, V * H};
    const float scale[3] = {1.0f, 1.0f / sqrtf(DIN), 1.0f / sqrtf(H)};
    memset(p, 0, sizeof *p);
    for (int l = 0; l < 3; l++)
        for (int i = 0; i < size[l]; i++)
            w[l][i] = ((float)(rnd() & 0xffff) / 32768.0f - 1.0f) * sqrtf(3.0f) * scale[l];
}

// y (n x dout) = x (n x din) W^T + b
static void fc(const float *x, int n, int din, int dout, const float *W, const float *b, float *y) {
    for (int r = 0; r < n; r++)
        for (int i = 0; i < dout; i++) {
            float acc = b[i];
            for (int j = 0; j < din; j++)
                acc += W[i * din + j] * x[r * din + j];
            y[r * dout + i] = acc;
        }
}

// dW += dy^T x, db += sum of dy's rows, dx = dy W
static void fc_bwd(const float *x, const float *dy, int n, int din, int dout, const float *W,
                   float *dW, float *db, float *dx) {
    memset(dx, 0, sizeof(float) * (size_t)(n * din));
    for (int r = 0; r < n; r++)
        for (int i = 0; i < dout; i++) {
            float d = dy[r * dout + i];
            db[i] += d;
            for (int j = 0; j < din; j++) {
                dW[i * din + j] += d * x[r * din + j];
                dx[r * din + j] += d * W[i * din + j];
            }
        }
}

// Forward of n <= B sequences; returns the SUMMED cross-entropy of the n*T predictions. With
// g != NULL also the backward of the loss gscale * sum(CE) into g (zeroed by the caller):
// gscale = 1/(n*T) is the mean over batch and positions, 1 the sum.
static double pass(const params *p, params *g, seq_t *s, int n, float gscale) {
    int rows = n * T;
    for (int r = 0; r < rows; r++) { // u_t = [E[x_t], E[x_{t-1}]], row r = b*T + t
        const unsigned char *x = s[r / T];
        int t = r % T;
        memcpy(A.u + r * DIN, p->E + x[t] * D, sizeof(float) * D);
        if (t > 0)
            memcpy(A.u + r * DIN + D, p->E + x[t - 1] * D, sizeof(float) * D);
        else
            memset(A.u + r * DIN + D, 0, sizeof(float) * D);
    }
    fc(A.u, rows, DIN, H, p->W1, p->b1, A.h);
    for (int i = 0; i < rows * H; i++)
        A.h[i] = tanhf(A.h[i]);
    fc(A.h, rows, H, V, p->W2, p->b2, A.dl);
    double loss = 0;
    for (int r = 0; r < rows; r++) { // logits -> ∂(gscale·Σ CE)/∂logits, in place
        float *z = A.dl + r * V, m = z[0], sum = 0;
        int y = s[r / T][r % T + 1];
        for (int i = 1; i < V; i++)
            m = fmaxf(m, z[i]);
        for (int i = 0; i < V; i++)
            sum += expf(z[i] - m);
        loss -= (double)(z[y] - m - logf(sum));
        for (int i = 0; i < V; i++)
            z[i] = (expf(z[i] - m) / sum - (i == y ? 1.0f : 0.0f)) * gscale;
    }
    if (!g) return loss;
    fc_bwd(A.h, A.dl, rows, H, V, p->W2, g->W2, g->b2, A.dz);
    for (int i = 0; i < rows * H; i++)
        A.dz[i] *= 1.0f - A.h[i] * A.h[i];
    fc_bwd(A.u, A.dz, rows, DIN, H, p->W1, g->W1, g->b1, A.du);
    for (int r = 0; r < rows; r++) { // the embedding rows each position read
        const unsigned char *x = s[r / T];
        int t = r % T;
        for (int j = 0; j < D; j++) {
            g->E[x[t] * D + j] += A.du[r * DIN + j];
            if (t > 0) g->E[x[t - 1] * D + j] += A.du[r * DIN + D + j];
        }
    }
    memset(A.ur, 0, sizeof A.ur), memset(A.hr, 0, sizeof A.hr);
    for (int r = 0; r < rows; r++) { // per-sequence means of the layer inputs, for reduce
        for (int j = 0; j < DIN; j++)
            A.ur[r / T * DIN + j] += A.u[r * DIN + j] / T;
        for (int j = 0; j < H; j++)
            A.hr[r / T * H + j] += A.h[r * H + j] / T;
    }
    return loss;
}

// fc1 with cfg, the head with head_cfg (NULL: cfg), the embedding with AdamW.
static bool setup(trainer *t, const ngd_config *cfg, const ngd_config *head_cfg, bool pre_reduce) {
    ngd_config adamw = ngd_config_default(NGD_METHOD_ADAMW);
    adamw.lr = 1e-2f;
    adamw.weight_decay = 0;
    init_params(&t->p);
    t->avg = cfg->loss_average, t->pre_reduce = pre_reduce;
    if (ngd_optim_create(cfg, &t->o) != NGD_OK) {
        fprintf(stderr, "ngd_optim_create: invalid config\n");
        return false;
    }
    ngd_layer l1 = {.name = "fc1",
                    .weight = t->p.W1,
                    .weight_grad = t->g.W1,
                    .d_out = H,
                    .d_in = DIN,
                    .bias = t->p.b1,
                    .bias_grad = t->g.b1};
    ngd_layer l2 = {.name = "head",
                    .weight = t->p.W2,
                    .weight_grad = t->g.W2,
                    .d_out = V,
                    .d_in = H,
                    .bias = t->p.b2,
                    .bias_grad = t->g.b2,
                    .override = head_cfg};
    if (ngd_optim_add_layer(t->o, &l1, &t->ids[0]) == NGD_OK &&
        ngd_optim_add_layer(t->o, &l2, &t->ids[1]) == NGD_OK &&
        ngd_optim_add_param(t->o, "embedding", t->p.E, t->g.E, V * D, &adamw, &t->ids[2]) == NGD_OK)
        return true;
    fprintf(stderr, "setup: %s\n", ngd_optim_errmsg(t->o));
    return false;
}

// One step on batch `k` of the training set; returns the batch's mean loss (NAN on an error).
static double train_step(trainer *t, int k) {
    seq_t *s = train_set + (k % (NTRAIN / B)) * B;
    memset(&t->g, 0, sizeof t->g);
    double loss = pass(&t->p, &t->g, s, B, t->avg == NGD_LOSS_SUM ? 1.0f : 1.0f / ROWS) / ROWS;
    ngd_status st = NGD_OK;
    if (ngd_optim_wants_stats(t->o)) { // g: always B*T rows; a: B*T rows, or B (pre-reduced)
        size_t ar = t->pre_reduce ? B : ROWS;
        st = ngd_optim_observe(t->o, t->ids[0], B,
                               ngd_matrix_f32(t->pre_reduce ? A.ur : A.u, ar, DIN),
                               ngd_matrix_f32(A.dz, ROWS, H));
        if (st == NGD_OK)
            st = ngd_optim_observe(t->o, t->ids[1], B,
                                   ngd_matrix_f32(t->pre_reduce ? A.hr : A.h, ar, H),
                                   ngd_matrix_f32(A.dl, ROWS, V));
    }
    if (st == NGD_OK) st = ngd_optim_step(t->o);
    if (st == NGD_OK) return loss;
    fprintf(stderr, "step %d: %s: %s\n", k, ngd_status_str(st), ngd_optim_errmsg(t->o));
    return NAN;
}

static double test_loss(const params *p) {
    double loss = 0;
    for (int n = 0; n < NTEST; n += B)
        loss += pass(p, NULL, test_set + n, B, 0);
    return loss / (NTEST * T);
}

static void finish(trainer *t) { ngd_optim_free(t->o), t->o = NULL; }

// Check 1: after one step on batch 0, the factors against the docs' sums over the rows the
// docs say the statistics use (expand: every row; reduce: per sequence the mean of a and the
// sum of g; a bias column of ones), with sigma^2 = B*T (BATCH_SEQUENCE) or 1 (SUM):
//   SINGD (K = C = I before): m_K = (avgtr(H_C) H_K + (lambda - 1) I) / 2 with
//     H_K = (1/rows) sum a a^T, H_C = sigma^2 sum g g^T; m_C likewise (docs: #singd-update);
//   K-FAC (rho = 0): A = 1/(n R^2) sum a a^T, Gamma = R/n sum (c g)(c g)^T, c = n or 1, R = T
//     (expand) or 1 (reduce) (#k-fac-statistics).
static double check_stats(ngd_method m, ngd_loss_average avg, ngd_kfac_approx ap, bool pre) {
    ngd_config cfg = ngd_config_default(m);
    cfg.loss_average = avg, cfg.kfac_approx = ap, cfg.kfac.rho = 0;
    trainer *t = &tr[0];
    if (!setup(t, &cfg, NULL, pre) || isnan(train_step(t, 0))) return finish(t), HUGE_VAL;
    bool red = ap == NGD_KFAC_REDUCE, singd = m == NGD_METHOD_SINGD;
    double worst = 0, n = B, R = red ? 1 : T, rows = red ? B : ROWS;
    double c = avg == NGD_LOSS_SUM ? 1 : n, sigma2 = avg == NGD_LOSS_SUM ? 1 : ROWS;
    for (int l = 0; l < 2; l++) {
        const int din = l ? H : DIN, dk = din + 1, dc = l ? V : H;
        const float *a = l ? A.h : A.u, *g = l ? A.dl : A.dz;
        static double Saa[(H + 1) * (H + 1)], Sgg[H * H], ar[H + 1], gr[H];
        static float got[(H + 1) * (H + 1)];
        memset(Saa, 0, sizeof Saa), memset(Sgg, 0, sizeof Sgg);
        for (int r = 0; r < ROWS; r++) { // a reduced row is complete at the sequence's end
            int t0 = r % T, last = !red || t0 == T - 1;
            for (int j = 0; j < dk; j++)
                ar[j] = (red && t0 ? ar[j] : 0) +
                        (j < din ? (double)a[r * din + j] : 1.0) / (red ? T : 1);
            for (int i = 0; i < dc; i++)
                gr[i] = (red && t0 ? gr[i] : 0) + (double)g[r * dc + i];
            for (int i = 0; i < dk * dk && last; i++)
                Saa[i] += ar[i / dk] * ar[i % dk];
            for (int i = 0; i < dc * dc && last; i++)
                Sgg[i] += gr[i / dc] * gr[i % dc];
        }
        double trK = 0, trC = 0; // SINGD: avgtr(H_K), avgtr(H_C)
        for (int i = 0; i < dk; i++)
            trK += Saa[i * dk + i] / rows / dk;
        for (int i = 0; i < dc; i++)
            trC += sigma2 * Sgg[i * dc + i] / dc;
        for (int side = 0; side < 2; side++) {
            int d = side ? dc : dk;
            const double *S = side ? Sgg : Saa;
            double k = singd  ? (side ? trK * sigma2 : trC / rows)
                       : side ? R / n * c * c
                              : 1 / (n * R * R);
            ngd_status st = ngd_optim_factor_dense(t->o, t->ids[l], singd ? "kc"[side] : "KC"[side],
                                                   got, (size_t)d);
            double err = 0, mag = 0;
            for (int i = 0; i < d * d; i++) {
                double want = k * S[i] + (singd && i % (d + 1) == 0 ? (double)cfg.damping - 1 : 0);
                want *= singd ? 0.5 : 1;
                err = fmax(err, fabs((double)got[i] - want)), mag = fmax(mag, fabs(want));
            }
            worst = fmax(worst, st != NGD_OK ? HUGE_VAL : err / mag);
        }
    }
    finish(t);
    return worst;
}

// Check 2: K-FAC (rho = 0: no identity term, which would not scale with the loss; no clip;
// T_u = T_i = 1) on the mean loss with lr, and on the summed loss with lr * R/n: the docs'
// Gamma gives the sum's preconditioned step n/R times the mean's, so the weights must agree.
static double check_sum_vs_mean(double *step_err) {
    ngd_config cfg = ngd_config_default(NGD_METHOD_KFAC);
    cfg.kfac.rho = 0, cfg.kfac.T_u = 1, cfg.kfac.T_i = 1, cfg.kfac.clip = NGD_CLIP_NONE;
    cfg.weight_decay = 0, cfg.lr = 0.1f, cfg.keep_last_update = true;
    cfg.loss_average = NGD_LOSS_BATCH_SEQUENCE;
    bool ok = setup(&tr[0], &cfg, NULL, false);
    cfg.loss_average = NGD_LOSS_SUM, cfg.lr *= (float)T / B;
    ok = setup(&tr[1], &cfg, NULL, false) && ok;
    static float s0[H * (DIN + 1)], s1[H * (DIN + 1)];
    *step_err = 0;
    for (int k = 0; k < 10 && ok; k++) {
        ok = !isnan(train_step(&tr[0], k)) && !isnan(train_step(&tr[1], k));
        for (int l = 0; l < 2 && ok; l++) {
            size_t nw = l ? V * (H + 1) : H * (DIN + 1);
            ok = ngd_optim_last_update(tr[0].o, tr[0].ids[l], s0, nw) == NGD_OK &&
                 ngd_optim_last_update(tr[1].o, tr[1].ids[l], s1, nw) == NGD_OK;
            float err = 0, mag = 0;
            for (size_t i = 0; i < nw; i++)
                err = fmaxf(err, fabsf(s1[i] * T / B - s0[i])), mag = fmaxf(mag, fabsf(s0[i]));
            *step_err = fmax(*step_err, (double)(err / mag));
        }
    }
    const float *w0 = (const float *)&tr[0].p, *w1 = (const float *)&tr[1].p;
    float err = 0, mag = 0;
    for (size_t i = 0; i < sizeof(params) / sizeof(float); i++)
        err = fmaxf(err, fabsf(w1[i] - w0[i])), mag = fmaxf(mag, fabsf(w0[i]));
    finish(&tr[0]), finish(&tr[1]);
    return ok ? (double)(err / mag) : HUGE_VAL;
}

// Check 3: STEPS steps; returns the test loss (HUGE_VAL on an error or a bad health report).
static double train(const char *name, const ngd_config *cfg, const ngd_config *head, bool pre) {
    trainer *t = &tr[0];
    bool ok = setup(t, cfg, head, pre);
    double loss = 0;
    for (int k = 0; k < STEPS && ok; k++)
        ok = !isnan(loss = train_step(t, k));
    for (int l = 0; l < 2 && ok; l++) {
        ngd_layer_health h;
        ok = ngd_optim_layer_health(t->o, t->ids[l], &h) == NGD_OK && !h.skips &&
             !h.decomp_failures && (cfg->method <= NGD_METHOD_ADAMW || h.updates > 0);
    }
    double test = ok ? test_loss(&t->p) : HUGE_VAL;
    printf("  %-38s last batch %.4f  test %.4f\n", name, loss, test);
    finish(t);
    return test;
}

int main(void) {
    make_data();
    bool ok = true;
    printf("1. statistics vs docs/algorithms.md (max relative error of m_K, m_C / A, Gamma):\n");
    const char *mn[2] = {"SINGD", "K-FAC"};
    const ngd_method ms[2] = {NGD_METHOD_SINGD, NGD_METHOD_KFAC};
    for (int m = 0; m < 2; m++)
        for (int v = 0; v < 4; v++) { // expand mean, expand sum, reduce B*T rows, reduce B rows
            ngd_loss_average avg = v == 1 ? NGD_LOSS_SUM : NGD_LOSS_BATCH_SEQUENCE;
            double e = check_stats(ms[m], avg, v >= 2 ? NGD_KFAC_REDUCE : NGD_KFAC_EXPAND, v == 3);
            const char *what[4] = {"expand, mean", "expand, sum", "reduce, a: B*T rows",
                                   "reduce, a: B rows"};
            printf("  %-6s %-20s %.2e\n", mn[m], what[v], e);
            ok &= e < 1e-4;
        }
    double step_err, w_err = check_sum_vs_mean(&step_err);
    printf("2. K-FAC, sum loss at lr*R/n vs mean loss at lr, 10 steps: steps %.2e, weights %.2e\n",
           step_err, w_err);
    ok &= step_err < 1e-4 && w_err < 1e-4;

    double bigram = bigram_floor(test_set, NTEST), best = oracle_loss(test_set, NTEST);
    init_params(&tr[0].p);
    printf("3. training, %d steps of %d sequences; test loss: start %.4f, log V %.4f, bigram floor"
           " %.4f, oracle %.4f\n",
           STEPS, B, test_loss(&tr[0].p), log(V), bigram, best);
    ngd_config singd = ngd_config_default(NGD_METHOD_SINGD); // fc1: dense K and C (INGD)
    singd.loss_average = NGD_LOSS_BATCH_SEQUENCE, singd.lr = 0.02f, singd.damping = 0.1f;
    singd.T = 2;
    ngd_config diag = singd; // the head: diagonal K and C
    diag.structure_K.kind = diag.structure_C.kind = NGD_STRUCT_DIAG;
    ngd_config kfac = ngd_config_default(NGD_METHOD_KFAC); // lr 0.1, RMS clip
    kfac.loss_average = NGD_LOSS_BATCH_SEQUENCE, kfac.kfac.T_u = 2, kfac.kfac.T_i = 10;
    ngd_config sgd = ngd_config_default(NGD_METHOD_SGD),
               adam = ngd_config_default(NGD_METHOD_ADAMW);
    sgd.lr = singd.lr, sgd.momentum = singd.momentum; // SINGD's rule without the preconditioner
    adam.lr = 1e-2f, adam.weight_decay = 0;
    double base = train("SGD (SINGD's lr, momentum)", &sgd, NULL, false);
    train("AdamW (for reference)", &adam, NULL, false);
    double s_ex = train("SINGD dense/diagonal, expand", &singd, &diag, false);
    double k_ex = train("K-FAC, expand", &kfac, NULL, false);
    singd.kfac_approx = diag.kfac_approx = kfac.kfac_approx = NGD_KFAC_REDUCE;
    double s_re = train("SINGD, reduce (a: B*T rows)", &singd, &diag, false);
    double k_re = train("K-FAC, reduce (a: B rows, pre-reduced)", &kfac, NULL, true);
    ok &= s_ex < base && k_ex < base && fmax(s_ex, k_ex) < best + 0.06;
    ok &= fmax(s_re, k_re) < best + 0.1;
    printf("%s\n", ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
