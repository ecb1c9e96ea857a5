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
echo "$p passed, $f failed"
[ "$f" -eq 0 ]
