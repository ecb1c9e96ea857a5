#!/usr/bin/env bash
# Installs what ngd needs from Debian's archive, only when something is missing.
# Run by `make run` and `make bench` (the base list) and by `make test` / `make check`
# (`scripts/deps.sh test`: the base list and the Python test stack) before building; safe to
# run twice.
#   compiler + make          gcc, make
#   pkg-config               the tests build the examples against `make install`'s ngd.pc
#   GEMM backend             libdnnl-dev (oneDNN: the fastest sgemm on this machine, see docs/design.md)
#   decompositions           libopenblas-openmp-dev + liblapacke-dev (OpenMP flavour: one threading layer)
#   JSON (replay, logs)      libcjson-dev
#   gzip'd IDX files         zlib1g-dev
#   default data set         dataset-fashion-mnist (/usr/share/datasets/fashion-mnist/)
#   data-parallel training   libopenmpi-dev, openmpi-bin (Open MPI: mpi.h, libmpi, mpirun)
#   `make fuzz` (argument fuzz)  clang-14, libclang-rt-14-dev (libFuzzer); not for the tests
#   Python package (tests: `scripts/deps.sh test`; `make bench-compare`: `scripts/deps.sh bench`)
#                            python3-numpy, python3-torch, python3-pytest (python/ngd, ngd.torch,
#                            tests/test_python.sh), libopenblas0-openmp (torch's BLAS is the
#                            libblas.so.3 alternative: OpenBLAS, not netlib). Not in the base
#                            list: training with `make run` needs none of them (about 1 GB)
set -eu

pkgs="gcc make pkg-config libc6-dev libdnnl-dev libopenblas-openmp-dev liblapacke-dev libcjson-dev zlib1g-dev dataset-fashion-mnist libopenmpi-dev openmpi-bin"
# `make fuzz` only (scripts/deps.sh fuzz): clang 14 and its libFuzzer runtime
if [ "${1:-}" = fuzz ]; then pkgs="$pkgs clang-14 libclang-rt-14-dev"; fi
# `make test` / `make check` (scripts/deps.sh test) and `make bench-compare` (scripts/deps.sh
# bench): Debian's PyTorch, numpy, pytest and an optimized libblas.so.3
if [ "${1:-}" = test ] || [ "${1:-}" = bench ]; then
    pkgs="$pkgs python3-numpy python3-torch python3-pytest libopenblas0-openmp"
fi
missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "deps.sh: installing:$missing" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "deps.sh: error: need root (or sudo) to install:$missing" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "deps.sh: done" >&2
