#!/usr/bin/env bash
# The Python package (python/ngd: numpy API and ngd.torch) under pytest, against the
# libngd of the build folder of the given ngd (tests/run.sh passes "$b/ngd").
# Prints "N passed, N failed".
#   build/      every test of python/tests (numpy, torch, oracle replays, Fashion-MNIST).
#   build-san/  skipped (counted as 0): an ASan+UBSan libngd inside CPython needs the
#               sanitizer runtime preloaded into the interpreter, and torch's and CPython's
#               own allocations then flood LeakSanitizer with leaks that are not ours; the
#               same libngd code runs under the sanitizers in the C suite of that folder.
set -u
ngd=${1:?usage: tests/test_python.sh BUILD/ngd}
b=$(cd "$(dirname "$ngd")" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-/usr/bin/python3}
case "$(basename "$b")" in
build-san*)
    echo "test_python: skipped for $(basename "$b") (sanitizer build; see the script's header)"
    echo "0 passed, 0 failed"
    exit 0
    ;;
esac
if ! "$py" -c 'import numpy, torch, pytest' 2>/dev/null; then
    echo "test_python: $py lacks numpy, torch or pytest (scripts/deps.sh installs them)"
    echo "0 passed, 1 failed"
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
# the C helpers of the tests: the C API run (same bits) and the ngd.h layout of the mirrors
for c in capi_ref layout; do
    if ! cc -std=c11 -O2 -Wall -Wextra -Werror -I"$root/include" "$root/python/tests/$c.c" \
        -L"$b" -lngd -Wl,-rpath,"$b" -o "$tmp/$c" 2>"$tmp/$c.log"; then
        cat "$tmp/$c.log"
        echo "test_python: cannot build python/tests/$c.c"
        fail=1
    fi
done
[ "$fail" -eq 0 ] || { echo "0 passed, 1 failed"; exit 1; }
out=$(cd "$root/python/tests" && NGD_LIBRARY="$b/libngd.so" NGD_BIN="$b/ngd" NGD_CAPI_REF="$tmp/capi_ref" \
    NGD_LAYOUT="$tmp/layout" PYTHONPATH="$root/python" PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" \
    "$py" -m pytest -q -p no:cacheprovider -rfEs . 2>&1)
rc=$?
printf '%s\n' "$out" | tail -n 60
line=$(printf '%s\n' "$out" | grep -E '[0-9]+ (passed|failed|error)' | tail -n 1)
p=$(printf '%s\n' "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+')
f=$(printf '%s\n' "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+')
e=$(printf '%s\n' "$line" | grep -oE '[0-9]+ errors?' | grep -oE '[0-9]+')
p=${p:-0}
f=$((${f:-0} + ${e:-0}))
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
# installed, not in place: the package `make install` put in the staged tree (make check and
# make test stage $b/stage) must load the staged libngd, and `pip install` must give a
# working package (libngd through NGD_LIBRARY)
smoke='import numpy as np, ngd, ngd._lib as L, ngd.torch, torch
o = ngd.Optimizer("singd", T=1, lr=0.5); W = np.ones((2, 3), np.float32); G = np.ones_like(W)
i = o.add_layer(W, G); o.observe(i, np.ones((4, 3), np.float32), np.ones((4, 2), np.float32))
assert o.step() and W[0, 0] < 1
print(L.path, ngd.__file__)'
if [ -d "$b/stage" ]; then
    site=$(ls -d "$b"/stage/lib/python3*/dist-packages 2>/dev/null | head -n 1)
    if [ -n "$site" ] && out=$(cd "$tmp" && env -u NGD_LIBRARY PYTHONPATH="$site" "$py" -c "$smoke" 2>&1) &&
        case "$out" in "$b/stage/lib/libngd.so.0 $site/ngd/__init__.py") true ;; *) false ;; esac; then
        p=$((p + 1)); echo "ok: make install's Python package ($out)"
    else
        f=$((f + 1)); echo "FAIL: make install's Python package in ${site:-$b/stage (none)}: $out"
    fi
fi
if "$py" -m pip --version >/dev/null 2>&1; then
    cp -r "$root/python" "$tmp/src"
    rm -rf "$tmp/src/build" "$tmp/src/"*.egg-info
    if pout=$("$py" -m pip install -q --no-build-isolation --no-index --no-deps --target "$tmp/site" "$tmp/src" 2>&1) &&
        out=$(cd "$tmp" && NGD_LIBRARY="$b/libngd.so" PYTHONPATH="$tmp/site" "$py" -c "$smoke" 2>&1) &&
        case "$out" in *"$tmp/site/ngd/__init__.py") true ;; *) false ;; esac; then
        p=$((p + 1)); echo "ok: pip install ./python ($out)"
    else
        f=$((f + 1)); echo "FAIL: pip install ./python: $pout $out"
    fi
fi
echo "$p passed, $f failed"
[ "$f" -eq 0 ]
