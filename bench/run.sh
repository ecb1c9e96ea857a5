#!/usr/bin/env bash
# `make bench`: the benchmarks (speed and memory are measured here, never in the tests).
# bench step: optimizer step time of a small MLP; bench precond: preconditioner scaling in
# the layer width (one thread, so that the slopes are the algorithms', not the threading's;
# takes several minutes), with its plot in $B/bench-precond.svg; bench train: whole training
# steps of the engine's models (phases, GFLOP/s against the sgemm rate, peak RSS).
set -eu
B=${1:-build}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$B/ngd" bench step
OMP_NUM_THREADS=1 "$B/ngd" bench precond --plot "$B/bench-precond.svg"
"$B/ngd" bench train --model mlp,cnn,chargpt --optim sgd,adamw,singd --structure dense,diagonal
