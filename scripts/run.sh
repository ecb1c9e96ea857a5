#!/usr/bin/env bash
# `make run`: README's main job. Trains the default model (784-512-512-10 MLP) with SINGD at
# its defaults (the official package's) on Fashion-MNIST for two epochs, with a progress bar
# when stderr is a terminal, prints the test accuracy, and writes a log and a plot.
set -eu
B=${1:-build}
mkdir -p runs
LOG=runs/make-run.jsonl
"$B/ngd" train --model mlp --optim singd --data fashion-mnist --epochs 2 --log "$LOG"
if "$B/ngd" plot --help >/dev/null 2>&1; then
    "$B/ngd" plot "$LOG" -o runs/make-run.svg --title "make run: SINGD on Fashion-MNIST"
    echo "log: $LOG   plot: runs/make-run.svg"
else
    echo "log: $LOG"
fi
