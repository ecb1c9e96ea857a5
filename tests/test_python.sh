#!/usr/bin/env bash
# The Python package (python/ngd: numpy API and ngd.torch) under pytest, against the
# libngd of the build folder of the given ngd (tests/run.sh passes "$b/ngd").
# Prints "N passed, N failed".
#   build/      every test of python/tests (numpy, torch, oracle replays, Fashion-MNIST), and
#               the package as `make install` (the staged tree) and `pip install` give it.
#   build-san/  the numpy tests only (test_numpy.py: the same bits as the C API, errors,
#               lifetimes, checkpoints), with the ASan+UBSan libngd loaded into CPython by
#               LD_PRELOAD of the sanitizer runtimes, leak detection off (CPython's own
#               allocations at exit would drown it; the C suite checks libngd's leaks). torch
#               is left out there: its many threads and allocator under a preloaded ASan
#               make runs slow and fragile, and it adds no libngd code path the numpy tests
#               and the plain build's torch tests do not cover.
set -u
ngd=${1:?usage: tests/test_python.sh BUILD/ngd}
b=$(cd "$(dirname "$ngd")" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-/usr/bin/python3}
san=0
sanflags=""
tests="."
case "$(basename "$b")" in
build-san*)
    san=1
    sanflags="-fsanitize=address,undefined"
    tests="test_numpy.py"
    preload="$(cc -print-file-name=libasan.so) $(cc -print-file-name=libubsan.so)"
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
    # shellcheck disable=SC2086
    if ! cc -std=c11 -O2 -Wall -Wextra -Werror $sanflags -I"$root/include" "$root/python/tests/$c.c" \
        -L"$b" -lngd -Wl,-rpath,"$b" -o "$tmp/$c" 2>"$tmp/$c.log"; then
        cat "$tmp/$c.log"
        echo "test_python: cannot build python/tests/$c.c"
        fail=1
    fi
done
[ "$fail" -eq 0 ] || { echo "0 passed, 1 failed"; exit 1; }
envs=(NGD_LIBRARY="$b/libngd.so" NGD_BIN="$b/ngd" NGD_CAPI_REF="$tmp/capi_ref" NGD_LAYOUT="$tmp/layout"
    PYTHONPATH="$root/python" PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}")
if [ "$san" -eq 1 ]; then
    envs+=(LD_PRELOAD="$preload" ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:allocator_may_return_null=1"
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    echo "test_python: $(basename "$b"): the numpy tests under ASan+UBSan (LD_PRELOAD=$preload)"
fi
# shellcheck disable=SC2086
out=$(cd "$root/python/tests" && env "${envs[@]}" "$py" -m pytest -q -p no:cacheprovider --basetemp="$tmp/pytest" -rfEs $tests 2>&1)
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
if [ "$san" -eq 0 ] && [ -d "$b/stage" ]; then
    site=$(ls -d "$b"/stage/lib/python3*/dist-packages 2>/dev/null | head -n 1)
    if [ -n "$site" ] && out=$(cd "$tmp" && env -u NGD_LIBRARY PYTHONPATH="$site" "$py" -c "$smoke" 2>&1) &&
        case "$out" in "$b/stage/lib/libngd.so.0 $site/ngd/__init__.py") true ;; *) false ;; esac; then
        p=$((p + 1)); echo "ok: make install's Python package ($out)"
    else
        f=$((f + 1)); echo "FAIL: make install's Python package in ${site:-$b/stage (none)}: $out"
    fi
fi
if [ "$san" -eq 0 ] && "$py" -m pip --version >/dev/null 2>&1; then
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
