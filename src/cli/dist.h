/*
 * dist.h — `ngd train` across processes: the MPI side of data-parallel training
 * (docs/distributed.md), kept out of the training loop (train.c) behind this small interface and
 * out of libngd entirely (libngd gets an ngd_comm whose callbacks are MPI collectives).
 *
 * MPI is initialised only when the process was started by Open MPI's mpirun (the
 * OMPI_COMM_WORLD_SIZE variable is set), so a plain `ngd train` runs as before, with no MPI
 * runtime started. Every collective is on MPI_COMM_WORLD; a rank whose run fails calls
 * dist_abort after printing its message, which ends every rank (no rank waits forever in a
 * collective for one that has gone).
 */
#ifndef NGD_DIST_H
#define NGD_DIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "ngd.h"

// Starts MPI when launched by mpirun. Returns 0, or -1 after an error message.
int dist_init(void);
// Whether this run has more than one rank.
bool dist_on(void);
int dist_rank(void);
int dist_size(void);
// Rank 0 (or a single process): the rank that prints, logs and writes checkpoints.
bool dist_root(void);
// The communicator for ngd_optim_set_comm (NULL for a single process).
const ngd_comm *dist_comm(void);
// In-place sums over the ranks (no-ops for a single process). Return 0, or -1 after an error.
int dist_sum_f32(float *v, size_t n);
int dist_sum_f64(double *v, size_t n);
// The largest v over the ranks (v itself for a single process).
int dist_max_int(int v);
// This rank's shard of a global batch of k samples: *k_local samples from sample *first
// (k is a multiple of the ranks: the global batch is ranks x --batch).
void dist_shard(size_t k, size_t *k_local, size_t *first);
// The sharing policy of the optimizer's factor work: NGD_DIST_SHARE=auto|replicate|owner
// (auto when unset). Returns -1 after an error naming a bad value.
int dist_share(ngd_share *out);
// nn_loader_next for a loader of the global batch: without augmentation only this rank's
// shard is read and normalised, into its place in x, y (x + first·c·h·w, y + first, as
// dist_shard says); with augmentation (whose random draws run through the whole batch) the
// whole batch, so that every rank's loader stream stays the same. Returns the global count.
size_t dist_loader_next(nn_loader *ld, float *x, int32_t *y);
// Sends root's bytes to every rank.
int dist_bcast(void *buf, size_t bytes, int root);
// Bytes this rank handed to MPI for the engine (gradients, loss sums, stop decisions): what
// libngd hands over is ngd_optim_comm_bytes.
uint64_t dist_bytes(void);
// Ends the whole job with exit code rc (MPI_Abort) when more than one rank runs; returns
// otherwise.
void dist_abort(int rc);
// MPI_Finalize (after a successful run of every rank).
void dist_finalize(void);
#endif
