/*
 * dist.c — the MPI implementation behind dist.h and libngd's ngd_comm (Open MPI from Debian).
 */
#include "dist.h"

size_t dist_loader_next(nn_loader *ld, float *x, int32_t *y) {
    const size_t n = ld->ds->n, left = n - ld->pos;
    const bool augment = ld->aug.crop_pad > 0 || ld->aug.hflip;
    if (dist_size() <= 1 || augment || left == 0 || (ld->drop_last && left < ld->batch) ||
        left < ld->batch)
        return nn_loader_next(ld, x, y); // (the epoch's end: the loader reshuffles)
    size_t kl, first;
    dist_shard(ld->batch, &kl, &first);
    const size_t chw = ld->ds->c * ld->ds->h * ld->ds->w;
    nn_dataset_batch(ld->ds, ld->order + ld->pos + first, kl, NULL, NULL, x + first * chw,
                     y + first);
    ld->pos += ld->batch;
    return ld->batch;
}

#ifdef NGD_NO_MPI
// A build without MPI (fuzz/fuzz_trainckpt.c links this file built so): one process.
int dist_init(void) { return 0; }
bool dist_on(void) { return false; }
int dist_rank(void) { return 0; }
int dist_size(void) { return 1; }
bool dist_root(void) { return true; }
const ngd_comm *dist_comm(void) { return NULL; }
int dist_sum_f32(float *v, size_t n) { return (void)v, (void)n, 0; }
int dist_sum_f64(double *v, size_t n) { return (void)v, (void)n, 0; }
int dist_max_int(int v) { return v; }
void dist_shard(size_t k, size_t *k_local, size_t *first) { *k_local = k, *first = 0; }
int dist_share(ngd_share *out) { return *out = NGD_SHARE_AUTO, 0; }
int dist_bcast(void *buf, size_t bytes, int root) { return (void)buf, (void)bytes, (void)root, 0; }
uint64_t dist_bytes(void) { return 0; }
void dist_abort(int rc) { (void)rc; }
void dist_finalize(void) {}
#else

#include <mpi.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static int g_rank = 0, g_size = 1;
static bool g_mpi = false;
static uint64_t g_bytes = 0;
static ngd_comm g_comm;

// MPI's counts are ints: larger buffers go in pieces of at most 2^30 elements.
#define CHUNK ((size_t)1 << 30)

static ngd_status c_allreduce(void *ctx, float *buf, size_t n) {
    (void)ctx;
    for (size_t i = 0; i < n; i += CHUNK) {
        const size_t k = n - i < CHUNK ? n - i : CHUNK;
        if (MPI_Allreduce(MPI_IN_PLACE, buf + i, (int)k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) !=
            MPI_SUCCESS)
            return NGD_ERR_IO;
    }
    return NGD_OK;
}

static ngd_status c_bcast(void *ctx, void *buf, size_t bytes, int root) {
    (void)ctx;
    for (size_t i = 0; i < bytes; i += CHUNK) {
        const size_t k = bytes - i < CHUNK ? bytes - i : CHUNK;
        if (MPI_Bcast((char *)buf + i, (int)k, MPI_BYTE, root, MPI_COMM_WORLD) != MPI_SUCCESS)
            return NGD_ERR_IO;
    }
    return NGD_OK;
}

static ngd_status c_allgather(void *ctx, void *buf, size_t bytes) {
    (void)ctx;
    if (bytes > CHUNK) return NGD_ERR_ARG; // a 1 GiB block of rows per rank: not supported
    if (MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)bytes, MPI_BYTE,
                      MPI_COMM_WORLD) != MPI_SUCCESS)
        return NGD_ERR_IO;
    return NGD_OK;
}

int dist_init(void) {
    const char *ws = getenv("OMPI_COMM_WORLD_SIZE");
    if (!ws || !*ws) return 0; // not started by mpirun: one process, no MPI runtime
    // MPI starts threads of its own (progress, PMIx): SIGINT and SIGTERM are blocked first so
    // that those threads inherit the mask and the signals reach train.c's sigwait thread (a
    // signal delivered to an MPI thread would take its default action and kill the rank)
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    int provided = 0;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        cli_error("run it with Open MPI's mpirun, or without mpirun",
                  "MPI_Init failed (OMPI_COMM_WORLD_SIZE=%s)", ws);
        return -1;
    }
    g_mpi = true;
    // errors come back as codes (then this rank prints and aborts the job)
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    g_comm = (ngd_comm){.rank = g_rank,
                        .size = g_size,
                        .ctx = NULL,
                        .allreduce_sum = c_allreduce,
                        .broadcast = c_bcast,
                        .allgather = c_allgather};
    return 0;
}

bool dist_on(void) { return g_size > 1; }
int dist_rank(void) { return g_rank; }
int dist_size(void) { return g_size; }
bool dist_root(void) { return g_rank == 0; }
const ngd_comm *dist_comm(void) { return g_size > 1 ? &g_comm : NULL; }
uint64_t dist_bytes(void) { return g_bytes; }

int dist_sum_f32(float *v, size_t n) {
    if (g_size <= 1 || n == 0) return 0;
    g_bytes += n * sizeof(float);
    if (c_allreduce(NULL, v, n) != NGD_OK) {
        cli_error(NULL, "rank %d: MPI_Allreduce of %zu floats failed", g_rank, n);
        return -1;
    }
    return 0;
}

int dist_sum_f64(double *v, size_t n) {
    if (g_size <= 1 || n == 0) return 0;
    g_bytes += n * sizeof(double);
    if (n > CHUNK || MPI_Allreduce(MPI_IN_PLACE, v, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD) !=
                         MPI_SUCCESS) {
        cli_error(NULL, "rank %d: MPI_Allreduce of %zu doubles failed", g_rank, n);
        return -1;
    }
    return 0;
}

int dist_bcast(void *buf, size_t bytes, int root) {
    if (g_size <= 1 || bytes == 0) return 0;
    if (g_rank == root) g_bytes += bytes;
    if (c_bcast(NULL, buf, bytes, root) != NGD_OK) {
        cli_error(NULL, "rank %d: MPI_Bcast of %zu bytes failed", g_rank, bytes);
        return -1;
    }
    return 0;
}

int dist_max_int(int v) {
    if (g_size <= 1) return v;
    int r = v;
    if (MPI_Allreduce(&v, &r, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS) return v;
    g_bytes += sizeof v;
    return r;
}

void dist_shard(size_t k, size_t *k_local, size_t *first) {
    *k_local = k / (size_t)g_size;
    *first = (size_t)g_rank * *k_local;
}

int dist_share(ngd_share *out) {
    const char *v = getenv("NGD_DIST_SHARE");
    *out = NGD_SHARE_AUTO;
    if (!v || !*v || !strcmp(v, "auto")) return 0;
    if (!strcmp(v, "replicate")) {
        *out = NGD_SHARE_REPLICATE;
        return 0;
    }
    if (!strcmp(v, "owner")) {
        *out = NGD_SHARE_OWNER;
        return 0;
    }
    cli_error("NGD_DIST_SHARE is auto, replicate or owner", "NGD_DIST_SHARE=%s is not known", v);
    return -1;
}

void dist_abort(int rc) {
    if (!g_mpi || g_size <= 1) return;
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, rc ? rc : 1);
}

void dist_finalize(void) {
    if (g_mpi) MPI_Finalize();
    g_mpi = false;
}
#endif
