/*
 * test_dist.c — libngd's data-parallel interface (ngd_comm, ngd_optim_set_comm) without MPI:
 * two optimizers on two threads of this process exchange through a tiny in-process
 * communicator (a barrier and shared slots), each observing its half of every batch; a third,
 * single-process optimizer observes the whole batch. For every method (and both sharing
 * policies) the two replicas must stay identical to each other and equal the single process
 * within float32 reduction-order tolerance, with the owners' broadcasts and the byte counts
 * as the policy says.
 */
#include <pthread.h>
#include <stdint.h>

#include "harness.h"
#include "ngd.h"

// ---- an in-process communicator for NR threads ----
#define NR      2
#define SLOT_MB 4
typedef struct {
    pthread_barrier_t bar;
    unsigned char *slot[NR]; // SLOT_MB each
    size_t calls[NR];
} tcomm;
typedef struct {
    tcomm *t;
    int rank;
} tctx;

static ngd_status t_allreduce(void *ctx, float *buf, size_t n) {
    tctx *c = ctx;
    if (n * sizeof(float) > (size_t)SLOT_MB << 20) return NGD_ERR_ARG;
    memcpy(c->t->slot[c->rank], buf, n * sizeof(float));
    pthread_barrier_wait(&c->t->bar);
    for (size_t i = 0; i < n; i++) { // rank order: the same sum on every rank
        float s = 0.0f;
        for (int r = 0; r < NR; r++)
            s += ((const float *)c->t->slot[r])[i];
        buf[i] = s;
    }
    c->t->calls[c->rank]++;
    pthread_barrier_wait(&c->t->bar);
    return NGD_OK;
}

static ngd_status t_bcast(void *ctx, void *buf, size_t bytes, int root) {
    tctx *c = ctx;
    if (bytes > (size_t)SLOT_MB << 20 || root < 0 || root >= NR) return NGD_ERR_ARG;
    if (c->rank == root) memcpy(c->t->slot[0], buf, bytes);
    pthread_barrier_wait(&c->t->bar);
    if (c->rank != root) memcpy(buf, c->t->slot[0], bytes);
    c->t->calls[c->rank]++;
    pthread_barrier_wait(&c->t->bar);
    return NGD_OK;
}

static ngd_status t_allgather(void *ctx, void *buf, size_t bytes) {
    tctx *c = ctx;
    if (bytes > (size_t)SLOT_MB << 20) return NGD_ERR_ARG;
    memcpy(c->t->slot[c->rank], (unsigned char *)buf + (size_t)c->rank * bytes, bytes);
    pthread_barrier_wait(&c->t->bar);
    for (int r = 0; r < NR; r++)
        if (r != c->rank) memcpy((unsigned char *)buf + (size_t)r * bytes, c->t->slot[r], bytes);
    c->t->calls[c->rank]++;
    pthread_barrier_wait(&c->t->bar);
    return NGD_OK;
}

// ---- the problem: two fully connected layers' statistics and gradients, drawn per step ----
#define DIN   24
#define DOUT  20
#define DIN2  20
#define DOUT2 6
#define B     8 // global batch; each rank takes B/NR rows
#define STEPS 13

static uint64_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}
static float unif(uint64_t *s) { return (float)lcg(s) / 2147483648.0f - 0.5f; }

typedef struct {
    float a[B * DIN], u[B * DOUT], a2[B * DIN2], u2[B * DOUT2]; // inputs, per-sample gradients
} batch_data;

static void draw(uint64_t *seed, batch_data *d) {
    for (size_t i = 0; i < B * DIN; i++)
        d->a[i] = unif(seed);
    for (size_t i = 0; i < B * DOUT; i++)
        d->u[i] = unif(seed);
    for (size_t i = 0; i < B * DIN2; i++)
        d->a2[i] = unif(seed);
    for (size_t i = 0; i < B * DOUT2; i++)
        d->u2[i] = unif(seed);
}

typedef struct {
    float W[DOUT * DIN], b[DOUT], gW[DOUT * DIN], gb[DOUT];
    float W2[DOUT2 * DIN2], gW2[DOUT2 * DIN2]; // no bias
    float p[5], gp[5];                         // a plain parameter
    ngd_optim *o;
    int id[3];
} replica;

// The gradient of the loss (mean over the B samples, or their sum) in float64, then float32.
static void global_grads(replica *r, const batch_data *d, bool sum) {
    const double c = sum ? 1.0 : 1.0 / B;
    for (size_t i = 0; i < DOUT; i++) {
        double gb = 0;
        for (size_t j = 0; j < DIN; j++) {
            double g = 0;
            for (size_t n = 0; n < B; n++)
                g += (double)d->u[n * DOUT + i] * (double)d->a[n * DIN + j];
            r->gW[i * DIN + j] = (float)(c * g);
        }
        for (size_t n = 0; n < B; n++)
            gb += (double)d->u[n * DOUT + i];
        r->gb[i] = (float)(c * gb);
    }
    for (size_t i = 0; i < DOUT2; i++)
        for (size_t j = 0; j < DIN2; j++) {
            double g = 0;
            for (size_t n = 0; n < B; n++)
                g += (double)d->u2[n * DOUT2 + i] * (double)d->a2[n * DIN2 + j];
            r->gW2[i * DIN2 + j] = (float)(c * g);
        }
    for (size_t i = 0; i < 5; i++)
        r->gp[i] = (float)(c * (double)d->u[i]);
}

static void replica_init(replica *r, const ngd_config *cfg) {
    uint64_t s = 99;
    for (size_t i = 0; i < DOUT * DIN; i++)
        r->W[i] = unif(&s);
    for (size_t i = 0; i < DOUT; i++)
        r->b[i] = unif(&s);
    for (size_t i = 0; i < DOUT2 * DIN2; i++)
        r->W2[i] = unif(&s);
    for (size_t i = 0; i < 5; i++)
        r->p[i] = unif(&s);
    CHECK(ngd_optim_create(cfg, &r->o) == NGD_OK);
    ngd_layer l1 = {.name = "fc1",
                    .weight = r->W,
                    .weight_grad = r->gW,
                    .d_out = DOUT,
                    .d_in = DIN,
                    .bias = r->b,
                    .bias_grad = r->gb};
    ngd_layer l2 = {
        .name = "fc2", .weight = r->W2, .weight_grad = r->gW2, .d_out = DOUT2, .d_in = DIN2};
    CHECK(ngd_optim_add_layer(r->o, &l1, &r->id[0]) == NGD_OK);
    CHECK(ngd_optim_add_layer(r->o, &l2, &r->id[1]) == NGD_OK);
    CHECK(ngd_optim_add_param(r->o, "p", r->p, r->gp, 5, NULL, &r->id[2]) == NGD_OK);
}

// One step of a replica that holds samples [n0, n0 + nb) of the batch: observes them with
// output-gradients scaled as its own loss would (mean over its nb samples, or the sum); late:
// the communicator, set between the observes and the step (the API allows it until the
// first step), or NULL.
static void replica_step(replica *r, const batch_data *d, size_t n0, size_t nb, bool sum,
                         const ngd_comm *late, ngd_share share) {
    global_grads(r, d, sum);
    if (ngd_optim_wants_stats(r->o)) {
        float g1[B * DOUT], g2[B * DOUT2];
        const float c = sum ? 1.0f : 1.0f / (float)nb;
        for (size_t i = 0; i < nb * DOUT; i++)
            g1[i] = c * d->u[n0 * DOUT + i];
        for (size_t i = 0; i < nb * DOUT2; i++)
            g2[i] = c * d->u2[n0 * DOUT2 + i];
        CHECK(ngd_optim_observe(r->o, r->id[0], nb, ngd_matrix_f32(d->a + n0 * DIN, nb, DIN),
                                ngd_matrix_f32(g1, nb, DOUT)) == NGD_OK);
        CHECK(ngd_optim_observe(r->o, r->id[1], nb, ngd_matrix_f32(d->a2 + n0 * DIN2, nb, DIN2),
                                ngd_matrix_f32(g2, nb, DOUT2)) == NGD_OK);
    }
    if (late) CHECK(ngd_optim_set_comm(r->o, late, share) == NGD_OK);
    ngd_status s = ngd_optim_step(r->o);
    CHECK_MSG(s == NGD_OK, "%s: %s", ngd_status_str(s), ngd_optim_errmsg(r->o));
}

typedef struct {
    replica *r;
    tcomm *t;
    int rank;
    ngd_share share;
    bool sum;
} worker_arg;

static bool late_comm; // the replicas set their communicator after step 0's observes

static void *worker(void *p) {
    worker_arg *w = p;
    tctx ctx = {w->t, w->rank};
    ngd_comm comm = {.rank = w->rank,
                     .size = NR,
                     .ctx = &ctx,
                     .allreduce_sum = t_allreduce,
                     .broadcast = t_bcast,
                     .allgather = t_allgather};
    if (!late_comm) CHECK(ngd_optim_set_comm(w->r->o, &comm, w->share) == NGD_OK);
    uint64_t seed = 7;
    batch_data d;
    for (int t = 0; t < STEPS; t++) {
        draw(&seed, &d);
        replica_step(w->r, &d, (size_t)w->rank * (B / NR), B / NR, w->sum,
                     late_comm && t == 0 ? &comm : NULL, w->share);
    }
    return NULL;
}

static double max_rel(const float *x, const float *y, size_t n) {
    double m = 0, scale = 0;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs((double)y[i]));
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)x[i] - (double)y[i]));
    return m / (scale > 0 ? scale : 1.0);
}

// Runs the two replicas and the single process; returns the replicas' bytes handed over.
static uint64_t run_case(const char *label, ngd_config cfg, ngd_share share, bool sum,
                         int *owners_seen) {
    static replica single, rep[NR];
    if (sum) cfg.loss_average = NGD_LOSS_SUM;
    memset(&single, 0, sizeof single);
    memset(rep, 0, sizeof rep);
    replica_init(&single, &cfg);
    for (int k = 0; k < NR; k++)
        replica_init(&rep[k], &cfg);
    uint64_t seed = 7;
    batch_data d;
    for (int t = 0; t < STEPS; t++) {
        draw(&seed, &d);
        replica_step(&single, &d, 0, B, sum, NULL, share);
    }
    tcomm tc;
    pthread_barrier_init(&tc.bar, NULL, NR);
    memset(tc.calls, 0, sizeof tc.calls);
    for (int k = 0; k < NR; k++)
        tc.slot[k] = malloc((size_t)SLOT_MB << 20);
    pthread_t th[NR];
    worker_arg wa[NR];
    for (int k = 0; k < NR; k++) {
        wa[k] = (worker_arg){&rep[k], &tc, k, share, sum};
        pthread_create(&th[k], NULL, worker, &wa[k]);
    }
    for (int k = 0; k < NR; k++)
        pthread_join(th[k], NULL);
    // the replicas agree bit for bit (the same sums, or the owner's broadcast result)
    CHECK_MSG(memcmp(rep[0].W, rep[1].W, sizeof rep[0].W) == 0, "%s: replicas differ (fc1)", label);
    CHECK_MSG(memcmp(rep[0].W2, rep[1].W2, sizeof rep[0].W2) == 0, "%s: replicas differ (fc2)",
              label);
    CHECK_MSG(memcmp(rep[0].b, rep[1].b, sizeof rep[0].b) == 0, "%s: replicas differ (bias)",
              label);
    // and equal the single process on the global batch (float32 reduction order only); the
    // weights moved, so the comparison is not of the initial values
    double e1 = max_rel(rep[0].W, single.W, DOUT * DIN);
    double e2 = max_rel(rep[0].W2, single.W2, DOUT2 * DIN2);
    double eb = max_rel(rep[0].b, single.b, DOUT);
    CHECK_MSG(e1 < 2e-4 && e2 < 2e-4 && eb < 2e-4, "%s: replica vs single: %.3g %.3g %.3g", label,
              e1, e2, eb);
    replica fresh;
    memset(&fresh, 0, sizeof fresh);
    replica_init(&fresh, &cfg);
    CHECK_MSG(max_rel(fresh.W, single.W, DOUT * DIN) > 1e-3, "%s: the weights did not move", label);
    ngd_optim_free(fresh.o);
    ngd_layer_health h0, hs;
    CHECK(ngd_optim_layer_health(rep[1].o, rep[1].id[0], &h0) == NGD_OK);
    CHECK(ngd_optim_layer_health(single.o, single.id[0], &hs) == NGD_OK);
    CHECK_MSG(h0.updates == hs.updates, "%s: updates %zu vs %zu", label, h0.updates, hs.updates);
    if (cfg.method != NGD_METHOD_SGD && cfg.method != NGD_METHOD_ADAMW)
        CHECK_CLOSE(h0.trace_K, hs.trace_K, 1e-3, 1e-6);
    const uint64_t bytes = ngd_optim_comm_bytes(rep[0].o) + ngd_optim_comm_bytes(rep[1].o);
    *owners_seen = 0;
    for (int l = 0; l < 2; l++) {
        int o0 = ngd_optim_layer_owner(rep[0].o, rep[0].id[l]);
        CHECK(o0 == ngd_optim_layer_owner(rep[1].o, rep[1].id[l]));
        if (o0 >= 0) *owners_seen |= 1 << o0;
    }
    CHECK(ngd_optim_comm_bytes(single.o) == 0);
    ngd_optim_free(single.o);
    for (int k = 0; k < NR; k++) {
        ngd_optim_free(rep[k].o);
        free(tc.slot[k]);
    }
    pthread_barrier_destroy(&tc.bar);
    return bytes;
}

static ngd_config base(ngd_method m) {
    ngd_config c = ngd_config_default(m);
    c.T = 2;
    c.lr = 0.05f;
    c.kfac.T_u = 2;
    c.kfac.T_i = 4;
    c.kfac.rank = 4;
    c.kfac.oversample = 2;
    c.kfac.wd_start = 0;
    c.kfac.clip_kappa = 10.0f;
    c.lr_cov = 0.05f;
    return c;
}

static void dist_first_order(void) {
    int own;
    CHECK(run_case("sgd", base(NGD_METHOD_SGD), NGD_SHARE_AUTO, false, &own) == 0);
    CHECK(own == 0);
    CHECK(run_case("adamw", base(NGD_METHOD_ADAMW), NGD_SHARE_AUTO, false, &own) == 0);
}

static void dist_singd(void) {
    int own;
    ngd_config c = base(NGD_METHOD_SINGD);
    // dense factors, replicated: every rank all-reduces H_K, H_C and updates them
    uint64_t rep = run_case("singd dense replicate", c, NGD_SHARE_REPLICATE, false, &own);
    CHECK(own == 0);
    // owners: fc1 (the larger) to rank 0, fc2 to rank 1; K, C, m_K, m_C broadcast
    uint64_t own_b = run_case("singd dense owner", c, NGD_SHARE_OWNER, false, &own);
    CHECK(own == 3);
    CHECK(own_b > rep);
    // 7 update steps x (H_K + H_C of both layers): 25²+20²+20²+6² floats x 4 bytes x 2 ranks
    CHECK(rep == 7ull * (625 + 400 + 400 + 36) * 4 * 2);
    run_case("singd dense sum loss", c, NGD_SHARE_OWNER, true, &own);
    c.structure_K.kind = c.structure_C.kind = NGD_STRUCT_DIAG;
    // diagonal: auto replicates (d numbers, O(d) work), d numbers per factor sent
    uint64_t dg = run_case("singd diag auto", c, NGD_SHARE_AUTO, false, &own);
    CHECK(own == 0);
    CHECK(dg == 7ull * (25 + 20 + 20 + 6) * 4 * 2);
    run_case("singd diag owner", c, NGD_SHARE_OWNER, false, &own);
    CHECK(own == 3);
    c.structure_K.kind = c.structure_C.kind = NGD_STRUCT_TRIL_TOEPLITZ;
    run_case("singd tril toeplitz", c, NGD_SHARE_AUTO, false, &own);
    // dense, preconditioned from the batch's rows where that pays (one process only), with
    // the communicator set after step 0's observes: its rows are a replica's own, so they must
    // not precondition the global gradient (the replicas parted by 0.06)
    c = base(NGD_METHOD_SINGD);
    c.kfac.factored_apply = true;
    for (int late = 0; late < 2; late++) {
        late_comm = late;
        run_case(late ? "singd rows, comm set late" : "singd rows", c, NGD_SHARE_REPLICATE, false,
                 &own);
    }
    late_comm = false;
    ngd_config ik = base(NGD_METHOD_IKFAC);
    ik.structure_K.kind = ik.structure_C.kind = NGD_STRUCT_BLOCKDIAG;
    ik.structure_K.block = ik.structure_C.block = 5;
    run_case("ikfac blockdiag", ik, NGD_SHARE_OWNER, false, &own);
}

static void dist_kfac_family(void) {
    int own;
    const ngd_method ms[] = {NGD_METHOD_KFAC,  NGD_METHOD_RSKFAC, NGD_METHOD_SREKFAC,
                             NGD_METHOD_BKFAC, NGD_METHOD_BRKFAC, NGD_METHOD_BRCKFAC};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        char label[64];
        ngd_config c = base(ms[i]);
        snprintf(label, sizeof label, "%s owner", ngd_method_name(ms[i]));
        run_case(label, c, NGD_SHARE_AUTO, false, &own);
        CHECK_MSG(own == 3, "%s: owners %d", label, own);
        snprintf(label, sizeof label, "%s replicate", ngd_method_name(ms[i]));
        run_case(label, c, NGD_SHARE_REPLICATE, false, &own);
        CHECK(own == 0);
    }
    ngd_config c = base(NGD_METHOD_KFAC);
    c.kfac.clip = NGD_CLIP_KL;
    run_case("kfac kl clip sum loss", c, NGD_SHARE_OWNER, true, &own);
    c = base(NGD_METHOD_BKFAC);
    c.kfac.factored_apply = true;
    run_case("bkfac factored", c, NGD_SHARE_OWNER, false, &own);
    run_case("bkfac factored rep", c, NGD_SHARE_REPLICATE, false, &own);
    c = base(NGD_METHOD_RSKFAC);
    c.kfac.factored_apply = true;
    run_case("rskfac factored", c, NGD_SHARE_OWNER, false, &own);
}

// B-KFAC's Brand track sends O(d·r) per update where K-FAC's eigendecompositions send O(d²)
static void dist_bytes_bkfac_vs_kfac(void) {
    int own;
    uint64_t k = run_case("kfac bytes", base(NGD_METHOD_KFAC), NGD_SHARE_OWNER, false, &own);
    uint64_t b = run_case("bkfac bytes", base(NGD_METHOD_BKFAC), NGD_SHARE_OWNER, false, &own);
    CHECK_MSG(b < k, "bkfac %llu bytes, kfac %llu", (unsigned long long)b, (unsigned long long)k);
}

static void dist_errors(void) {
    ngd_config c = base(NGD_METHOD_SINGD);
    ngd_optim *o;
    CHECK(ngd_optim_create(&c, &o) == NGD_OK);
    ngd_comm bad = {.rank = 2, .size = 2};
    CHECK(ngd_optim_set_comm(o, &bad, NGD_SHARE_AUTO) == NGD_ERR_ARG);
    CHECK(strstr(ngd_optim_errmsg(o), "rank 2 of 2") != NULL);
    ngd_comm none = {.rank = 0, .size = 0}; // (taken as a single process, without a word)
    CHECK(ngd_optim_set_comm(o, &none, NGD_SHARE_AUTO) == NGD_ERR_ARG &&
          strstr(ngd_optim_errmsg(o), "size 0"));
    CHECK(ngd_optim_set_comm(o, NULL, NGD_SHARE_AUTO) == NGD_OK);
    CHECK(ngd_optim_set_comm(o, NULL, (ngd_share)7) == NGD_ERR_ARG);
    CHECK(ngd_optim_set_comm(NULL, NULL, NGD_SHARE_AUTO) == NGD_ERR_ARG);
    CHECK(ngd_optim_comm_bytes(NULL) == 0);
    CHECK(ngd_optim_layer_owner(o, 0) == -1);
    ngd_optim_free(o);
}

static const test_case TESTS[] = {
    TEST(dist_first_order),         TEST(dist_singd),  TEST(dist_kfac_family),
    TEST(dist_bytes_bkfac_vs_kfac), TEST(dist_errors),
};

int main(int argc, char **argv) { return test_main(argc, argv, TESTS, NTESTS(TESTS)); }
