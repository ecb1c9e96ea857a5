#!/usr/bin/env bash
# `make bench`: the benchmarks (speed and memory are measured here, never in the tests).
set -eu
B=${1:-build}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$B/ngd" bench step
