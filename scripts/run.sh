#!/usr/bin/env bash
# `make run`: README's main job. While `ngd train` (issue 4) is not built, it demonstrates
# libngd on what exists: the official SINGD reference trajectories replayed through the
# public API, and the compiled example training loop.
set -eu
B=${1:-build}
SHARED=${NGD_SHARED:-../shared}
if "$B/ngd" train --help >/dev/null 2>&1; then
    exec "$B/ngd" train "${@:2}"
fi
echo "== ngd replay $SHARED/oracle (official SINGD trajectories through the public API)"
"$B/ngd" replay "$SHARED/oracle" || true
echo
echo "== examples/01_singd_linear (a hand-written training loop using libngd)"
make --no-print-directory "$B/examples/01_singd_linear" >/dev/null
"$B/examples/01_singd_linear"
