/*
 * checkpoint.h — the optimizer checkpoint (docs/formats.md) written into any fileio.h
 * writer: a file of its own (ngd_optim_save), memory (ngd_optim_save_mem), or the middle of
 * a larger file streamed to disk (the command's training checkpoint, src/cli/trainckpt.c),
 * so that no copy of the state is made on the way. Internal to libngd, as fileio.h is.
 */
#ifndef NGD_CHECKPOINT_H
#define NGD_CHECKPOINT_H

#include <stdint.h>

#include "../core/fileio.h"
#include "ngd.h"

// Writes o's checkpoint (ending with the CRC-32 of its own bytes) into w; a failure is in
// w's flags (oom, or a streamed write's werr).
void ngd_optim_write(const ngd_optim *o, ngd_wbuf *w);
// The bytes ngd_optim_write writes (a counting pass: nothing is copied), or UINT64_MAX.
uint64_t ngd_optim_write_size(const ngd_optim *o);
#endif
