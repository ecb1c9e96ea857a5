/*
 * 04_data_parallel.c — data-parallel training without MPI: an ngd_comm of your own.
 *
 * The "ranks" are POSIX threads of one process. Each has its own copy of the model, its own
 * gradient buffers and its own ngd_optim, made a replica by ngd_optim_set_comm. Their
 * communicator (allreduce_sum, broadcast, allgather, exactly as ngd.h specifies them) passes
 * buffer pointers through shared memory and waits on a mutex + condition-variable barrier,
 * which a failing rank can abort so that no rank waits for ever in a collective. The
 * all-reduce adds in rank order on every rank, so that every rank gets the same bits.
 *
 * The model: a 12-64-4 ReLU MLP (forward and backward by hand), softmax cross-entropy mean
 * over the batch (loss_average = NGD_LOSS_BATCH), synthetic data from a deterministic LCG,
 * global batch 48. Every step each rank
 *  - runs forward and backward on its shard (48/N rows) with the loss as its shard's mean,
 *  - hands libngd its shard's layer inputs and output-gradients when the step wants them
 *    (batch = its 48/N rows, g from its shard's mean loss: as a single process would),
 *  - averages the gradients over the ranks (all-reduce through the same communicator, / N),
 *  - calls ngd_optim_step, which combines the statistics and shares the factor work.
 * Each rank thread first sets its OpenMP thread count to 1, so that its libngd products run
 * on it alone (ngd.h, "Threads": client threads together ask for no more threads than allowed).
 *
 * For K-FAC (statistics every 2 steps, eigendecompositions every 4), B-KFAC (Brand updates
 * of rank 8, whose rows travel by allgather), SINGD (dense factors, updated every 2 steps)
 * and IKFAC, with 2 and 3 ranks and each sharing policy (AUTO, REPLICATE, OWNER), it checks
 * that after 20 steps every rank holds the same weights, bit for bit, and that they equal a
 * single process's on the whole global batch (same start) to max |ΔW| <= 1e-5 max |W|. It
 * prints each layer's owner, libngd's calls of each callback and ngd_optim_comm_bytes per rank.
 * Exits 0 only if every check passes.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ngd.h"

enum { DIN = 12, HID = 64, DOUT = 4, GB = 48, NDATA = 480, STEPS = 20, MAXR = 3 };

typedef struct {
    float W1[HID * DIN], b1[HID], W2[DOUT * HID], b2[DOUT];
} net; // floats only
enum { NPARAM = sizeof(net) / sizeof(float) };

typedef struct {
    float z1[GB * HID], h1[GB * HID], dz1[GB * HID], dz2[GB * DOUT];
} acts;

static float X[NDATA * DIN];
static int Y[NDATA];

// ---- The communicator: shared memory and a barrier that can be aborted ----

typedef struct {
    int size, count, aborted;
    unsigned gen;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void *buf[MAXR]; // each rank's buffer in the collective under way
    size_t len[MAXR];
    int root[MAXR];
} group;

typedef struct { // a rank's end: the ngd_comm's ctx
    group *g;
    int rank;
    float *sum; // all-reduce scratch
    size_t cap;
    int calls[3]; // libngd's allreduce_sum, broadcast and allgather calls (for the printout)
} endpoint;

static void group_abort(group *g) {
    pthread_mutex_lock(&g->mu);
    g->aborted = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

// Waits until every rank has arrived; returns 1 (and releases everyone) once aborted.
static int group_sync(group *g) {
    pthread_mutex_lock(&g->mu);
    unsigned gen = g->gen;
    if (!g->aborted && ++g->count == g->size)
        g->count = 0, g->gen++, pthread_cond_broadcast(&g->cv);
    while (!g->aborted && gen == g->gen)
        pthread_cond_wait(&g->cv, &g->mu);
    int bad = g->aborted;
    pthread_mutex_unlock(&g->mu);
    return bad;
}

// Publishes this rank's buffer, size and root, waits for all, and checks that every rank
// called the same collective alike (a mismatch fails the collective on every rank).
static ngd_status publish(endpoint *e, void *buf, size_t len, int root) {
    group *g = e->g;
    g->buf[e->rank] = buf, g->len[e->rank] = len, g->root[e->rank] = root;
    if (group_sync(g)) return NGD_ERR_STATE;
    for (int r = 0; r < g->size; r++)
        if (g->len[r] != len || g->root[r] != root) return NGD_ERR_ARG;
    return NGD_OK;
}

static ngd_status finish(endpoint *e, ngd_status st) { // everyone is done reading the buffers
    if (group_sync(e->g)) return NGD_ERR_STATE;
    return st;
}

static ngd_status comm_allreduce_sum(void *ctx, float *buf, size_t n) {
    endpoint *e = ctx;
    if (n > e->cap) {
        float *p = realloc(e->sum, n * sizeof *p);
        if (!p) return group_abort(e->g), NGD_ERR_NOMEM;
        e->sum = p, e->cap = n;
    }
    ngd_status st = publish(e, buf, n, 0);
    if (st != NGD_OK) return st == NGD_ERR_STATE ? st : finish(e, st);
    for (size_t i = 0; i < n; i++) { // in rank order on every rank: the same bits everywhere
        float s = 0;
        for (int r = 0; r < e->g->size; r++)
            s += ((const float *)e->g->buf[r])[i];
        e->sum[i] = s;
    }
    st = finish(e, NGD_OK);
    if (st == NGD_OK && n) memcpy(buf, e->sum, n * sizeof *buf);
    return st;
}

static ngd_status comm_broadcast(void *ctx, void *buf, size_t bytes, int root) {
    endpoint *e = ctx;
    if (root < 0 || root >= e->g->size) return group_abort(e->g), NGD_ERR_ARG;
    ngd_status st = publish(e, buf, bytes, root);
    if (st == NGD_OK && e->rank != root && bytes) memcpy(buf, e->g->buf[root], bytes);
    return st == NGD_ERR_STATE ? st : finish(e, st);
}

static ngd_status comm_allgather(void *ctx, void *buf, size_t bytes) {
    endpoint *e = ctx;
    ngd_status st = publish(e, buf, bytes, 0);
    for (int r = 0; st == NGD_OK && r < e->g->size && bytes; r++) // rank r's own block
        if (r != e->rank)
            memcpy((char *)buf + (size_t)r * bytes, (const char *)e->g->buf[r] + (size_t)r * bytes,
                   bytes);
    return st == NGD_ERR_STATE ? st : finish(e, st);
}

// What ngd_comm gets: the same, counting libngd's calls (the caller's own all-reduces of the
// gradients call comm_allreduce_sum directly)
static ngd_status cb_allreduce_sum(void *ctx, float *buf, size_t n) {
    return ((endpoint *)ctx)->calls[0]++, comm_allreduce_sum(ctx, buf, n);
}
static ngd_status cb_broadcast(void *ctx, void *buf, size_t bytes, int root) {
    return ((endpoint *)ctx)->calls[1]++, comm_broadcast(ctx, buf, bytes, root);
}
static ngd_status cb_allgather(void *ctx, void *buf, size_t bytes) {
    return ((endpoint *)ctx)->calls[2]++, comm_allgather(ctx, buf, bytes);
}

// ---- The model, by hand ----

static unsigned lcg;
static float uniform(void) { // in [-1, 1)
    lcg = lcg * 1103515245u + 12345u;
    return (float)((lcg >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void make_data(void) { // 4 classes: signs of two non-linear features
    lcg = 2024;
    for (int n = 0; n < NDATA; n++) {
        float *x = X + n * DIN;
        for (int j = 0; j < DIN; j++)
            x[j] = uniform();
        Y[n] = (x[0] * x[1] + 0.3f * x[2] > 0) + 2 * (x[3] + x[4] * x[4] - x[5] > 0.2f);
    }
}

static void init_net(net *p) { // the same start for every replica and the single process
    lcg = 777;
    for (int i = 0; i < HID * DIN; i++)
        p->W1[i] = uniform() * sqrtf(6.0f / DIN);
    for (int i = 0; i < DOUT * HID; i++)
        p->W2[i] = uniform() * sqrtf(6.0f / HID);
    memset(p->b1, 0, sizeof p->b1), memset(p->b2, 0, sizeof p->b2);
}

static void fc_fwd(const float *a, int n, int din, int dout, const float *W, const float *b,
                   float *z) { // z = a Wᵀ + b
    for (int s = 0; s < n; s++)
        for (int i = 0; i < dout; i++) {
            float acc = b[i];
            for (int j = 0; j < din; j++)
                acc += W[i * din + j] * a[s * din + j];
            z[s * dout + i] = acc;
        }
}

// Forward and backward of rows x[0..n) for the loss (1/n) Σ CE: gradients into g (zeroed
// first), the layers' inputs and output-gradients into A; returns the mean loss.
static float pass(const net *p, net *g, const float *x, const int *y, int n, acts *A) {
    double loss = 0;
    fc_fwd(x, n, DIN, HID, p->W1, p->b1, A->z1);
    for (int i = 0; i < n * HID; i++)
        A->h1[i] = fmaxf(A->z1[i], 0.0f);
    fc_fwd(A->h1, n, HID, DOUT, p->W2, p->b2, A->dz2); // logits, turned into dz2
    for (int s = 0; s < n; s++) {
        float *z = A->dz2 + s * DOUT, m = z[0], sum = 0;
        for (int i = 1; i < DOUT; i++)
            m = fmaxf(m, z[i]);
        for (int i = 0; i < DOUT; i++)
            sum += expf(z[i] - m);
        loss -= (double)(z[y[s]] - m - logf(sum));
        for (int i = 0; i < DOUT; i++)
            z[i] = (expf(z[i] - m) / sum - (i == y[s] ? 1.0f : 0.0f)) / (float)n;
    }
    memset(g, 0, sizeof *g);
    for (int s = 0; s < n; s++) {
        for (int i = 0; i < DOUT; i++) {
            float d = A->dz2[s * DOUT + i];
            g->b2[i] += d;
            for (int j = 0; j < HID; j++)
                g->W2[i * HID + j] += d * A->h1[s * HID + j];
        }
        for (int j = 0; j < HID; j++) {
            float d = 0;
            for (int i = 0; i < DOUT; i++)
                d += A->dz2[s * DOUT + i] * p->W2[i * HID + j];
            A->dz1[s * HID + j] = A->z1[s * HID + j] > 0 ? d : 0.0f;
        }
        for (int i = 0; i < HID; i++) {
            g->b1[i] += A->dz1[s * HID + i];
            for (int j = 0; j < DIN; j++)
                g->W1[i * DIN + j] += A->dz1[s * HID + i] * x[s * DIN + j];
        }
    }
    return (float)(loss / n);
}

// ---- One replica (or the single process: comm.size 1) ----

typedef struct {
    net P, G;
    acts A;
    ngd_optim *o;
    int ids[2], rank, size;
    ngd_comm comm;
    endpoint ep;
    ngd_status st;
    float loss[STEPS]; // the global batch's mean loss of each step
} replica;

static ngd_optim *make_optim(ngd_method m, replica *r) {
    ngd_config cfg = ngd_config_default(m);
    if (m == NGD_METHOD_KFAC || m == NGD_METHOD_BKFAC) {
        cfg.lr = 0.1f, cfg.kfac.T_u = 2, cfg.kfac.T_i = 4, cfg.kfac.wd_start = 8;
        cfg.kfac.rank = 8; // B-KFAC: rank 8 + 48 global rows < 64: the Brand track (allgather)
    } else {               // SINGD (dense K and C) or IKFAC
        cfg.lr = 0.05f, cfg.damping = 1e-2f, cfg.T = 2;
    }
    ngd_optim *o;
    if (ngd_optim_create(&cfg, &o) != NGD_OK) return NULL;
    float *W[2] = {r->P.W1, r->P.W2}, *dW[2] = {r->G.W1, r->G.W2};
    float *b[2] = {r->P.b1, r->P.b2}, *db[2] = {r->G.b1, r->G.b2};
    const size_t din[2] = {DIN, HID}, dout[2] = {HID, DOUT};
    for (int l = 0; l < 2; l++) {
        ngd_layer fc = {.name = l ? "fc2" : "fc1",
                        .weight = W[l],
                        .weight_grad = dW[l],
                        .d_out = dout[l],
                        .d_in = din[l],
                        .bias = b[l],
                        .bias_grad = db[l]};
        if (ngd_optim_add_layer(o, &fc, &r->ids[l]) != NGD_OK) {
            fprintf(stderr, "setup: %s\n", ngd_optim_errmsg(o));
            ngd_optim_free(o);
            return NULL;
        }
    }
    return o;
}

static ngd_status train(replica *r) {
    int rows = GB / r->size;
    ngd_status st = NGD_OK;
    for (int s = 0; s < STEPS && st == NGD_OK; s++) {
        int first = (s * GB) % NDATA + r->rank * rows; // this rank's shard of the batch
        const float *x = X + first * DIN;
        float loss = pass(&r->P, &r->G, x, Y + first, rows, &r->A);
        if (ngd_optim_wants_stats(r->o)) {
            const float *in[2] = {x, r->A.h1}, *out[2] = {r->A.dz1, r->A.dz2};
            const size_t din[2] = {DIN, HID}, dout[2] = {HID, DOUT};
            for (int l = 0; l < 2 && st == NGD_OK; l++)
                st = ngd_optim_observe(r->o, r->ids[l], (size_t)rows,
                                       ngd_matrix_f32(in[l], (size_t)rows, din[l]),
                                       ngd_matrix_f32(out[l], (size_t)rows, dout[l]));
        }
        if (st == NGD_OK && r->size > 1) { // the caller averages the gradients (and the loss)
            st = comm_allreduce_sum(&r->ep, (float *)&r->G, NPARAM);
            if (st == NGD_OK) st = comm_allreduce_sum(&r->ep, &loss, 1);
            float *g = (float *)&r->G;
            for (int i = 0; i < NPARAM; i++)
                g[i] /= (float)r->size;
            loss /= (float)r->size;
        }
        r->loss[s] = loss;
        if (st == NGD_OK) st = ngd_optim_step(r->o);
        if (st != NGD_OK)
            fprintf(stderr, "rank %d, step %d: %s: %s\n", r->rank, s, ngd_status_str(st),
                    ngd_optim_errmsg(r->o));
    }
    return st;
}

static void *rank_main(void *arg) {
    replica *r = arg;
#ifdef _OPENMP
    omp_set_num_threads(1); // this thread's libngd products run on it alone
#endif
    r->st = train(r);
    if (r->st != NGD_OK) group_abort(r->ep.g); // release the ranks waiting in a collective
    return NULL;
}

static replica ref, rep[MAXR]; // registered buffers must outlive their optimizers

static double max_rel_diff(const net *a, const net *b) { // max |a - b| / max |b|
    const float *x = (const float *)a, *y = (const float *)b;
    double d = 0, m = 0;
    for (int i = 0; i < NPARAM; i++)
        d = fmax(d, fabs((double)x[i] - (double)y[i])), m = fmax(m, fabs((double)y[i]));
    return d / m;
}

// N ranks of method m under policy `share`; 1 if every check passed.
static int run_parallel(ngd_method m, int n, ngd_share share) {
    static const char *share_name[] = {"auto", "replicate", "owner"};
    group g = {.size = n};
    pthread_t th[MAXR];
    int started = 0, ok = 1;
    pthread_mutex_init(&g.mu, NULL), pthread_cond_init(&g.cv, NULL);
    for (int r = 0; r < n; r++) {
        replica *p = &rep[r];
        p->rank = r, p->size = n, p->ep = (endpoint){.g = &g, .rank = r};
        p->comm = (ngd_comm){.rank = r,
                             .size = n,
                             .ctx = &p->ep,
                             .allreduce_sum = cb_allreduce_sum,
                             .broadcast = cb_broadcast,
                             .allgather = cb_allgather};
        init_net(&p->P);
        if (!(p->o = make_optim(m, p)) || ngd_optim_set_comm(p->o, &p->comm, share) != NGD_OK)
            ok = 0;
    }
    while (ok && started < n)
        if (pthread_create(&th[started], NULL, rank_main, &rep[started]))
            ok = 0, group_abort(&g);
        else
            started++;
    for (int r = 0; r < started; r++)
        pthread_join(th[r], NULL), ok &= rep[r].st == NGD_OK;
    if (ok) {
        double d = max_rel_diff(&rep[0].P, &ref.P);
        int same = 1;
        for (int r = 1; r < n; r++)
            same &= !memcmp(&rep[r].P, &rep[0].P, sizeof(net));
        const int *c = rep[0].ep.calls;
        printf("  %d ranks, %-9s: rel. diff %.1e, ranks %s; owners %d %d; calls %d/%d/%d; bytes", n,
               share_name[share], d, same ? "bit-identical" : "DIFFER",
               ngd_optim_layer_owner(rep[0].o, rep[0].ids[0]),
               ngd_optim_layer_owner(rep[0].o, rep[0].ids[1]), c[0], c[1], c[2]);
        for (int r = 0; r < n; r++)
            printf(" %llu", (unsigned long long)ngd_optim_comm_bytes(rep[r].o));
        printf("\n");
        ok = same && d <= 1e-5;
    }
    for (int r = 0; r < n; r++) {
        ngd_optim_free(rep[r].o), rep[r].o = NULL;
        free(rep[r].ep.sum);
    }
    pthread_mutex_destroy(&g.mu), pthread_cond_destroy(&g.cv);
    return ok;
}

int main(void) {
#ifdef _OPENMP
    omp_set_num_threads(1); // the single process on one thread too, as each rank (this also
                            // keeps ThreadSanitizer, blind to libgomp's own barriers, quiet)
#endif
    make_data();
    const ngd_method methods[4] = {NGD_METHOD_KFAC, NGD_METHOD_BKFAC, NGD_METHOD_SINGD,
                                   NGD_METHOD_IKFAC};
    const ngd_share shares[3] = {NGD_SHARE_AUTO, NGD_SHARE_REPLICATE, NGD_SHARE_OWNER};
    int ok = 1;
    for (int k = 0; k < 4; k++) {
        ref.rank = 0, ref.size = 1; // the single process on the whole global batch
        init_net(&ref.P);
        ref.o = make_optim(methods[k], &ref);
        ngd_status st = ref.o ? train(&ref) : NGD_ERR_ARG;
        if (st != NGD_OK) return ngd_optim_free(ref.o), 1;
        printf("%s: single process, batch %d, %d steps: loss %.4f -> %.6f\n",
               ngd_method_name(methods[k]), GB, STEPS, (double)ref.loss[0],
               (double)ref.loss[STEPS - 1]);
        for (int n = 2; n <= MAXR; n++)
            for (int s = 0; s < 3; s++)
                ok &= run_parallel(methods[k], n, shares[s]);
        ngd_optim_free(ref.o);
    }
    printf("%s\n", ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
