#!/usr/bin/env bash
# Runs every test binary (and example, fuzz target over its seeds, and the CLI scripts) of
# each build folder given, sums their "N passed, N failed" lines, counts a crash or a missing
# summary as a failure, and prints ONE closing line. Exits non-zero on any failure.
# Usage: tests/run.sh build [build-san]
set -u
# allocator_may_return_null: the out-of-memory paths of libngd are tested, not aborted
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:allocator_may_return_null=1:${ASAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$(pwd)/tests/lsan.supp:print_suppressions=0:${LSAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# a hang (a LAPACK call spinning on a NaN, say) fails its binary or script after this long,
# named, instead of holding the run until CI's own limit (the slowest, test_train.sh under the
# sanitizers, takes a few minutes)
LIMIT=${NGD_TEST_TIMEOUT:-1200}
total_pass=0
total_fail=0
for b in "$@"; do
    for t in "$b"/tests/test_*; do
        [ -x "$t" ] || continue
        case "$t" in *.o|*.d) continue ;; esac
        start=$(date +%s.%N)
        out=$(timeout "$LIMIT" "$t" 2>&1)
        rc=$?
        [ "$rc" -eq 124 ] && out="$out
timed out after ${LIMIT}s"
        line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
        secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')
        if [ -z "$line" ]; then
            printf '%s\n' "$out" | tail -n 30
            echo "CRASH $t (exit $rc, no summary line) [${secs}s]"
            total_fail=$((total_fail + 1))
            continue
        fi
        p=${line%% passed*}
        f=${line#*, }; f=${f%% failed*}
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
        [ "$f" -ne 0 ] && printf '%s\n' "$out" | grep -v -E '^[0-9]+ passed' | tail -n 40
        echo "$t: $p passed, $f failed [${secs}s]"
        total_pass=$((total_pass + p))
        total_fail=$((total_fail + f))
    done
    for e in "$b"/examples/*; do
        [ -x "$e" ] || continue
        case "$e" in *.o|*.d) continue ;; esac
        if out=$("$e" 2>&1); then total_pass=$((total_pass + 1)); echo "$e: ok"
        else printf '%s\n' "$out" | tail -n 20; echo "FAIL example $e"; total_fail=$((total_fail + 1)); fi
    done
    for z in "$b"/fuzz/fuzz_*; do  # fuzz targets (fuzz/driver.c): their seeds, generated and stored
        [ -x "$z" ] || continue
        case "$z" in *.o|*.d) continue ;; esac
        name=$(basename "$z")
        seeds=$(mktemp -d)
        corpus=""
        [ -d "fuzz/corpus/$name" ] && corpus="fuzz/corpus/$name"
        # shellcheck disable=SC2086
        if out=$(NGD_FUZZ_SEEDS_DIR="$seeds" "$z" $corpus "$seeds" 2>&1); then
            total_pass=$((total_pass + 1)); echo "$z: ok (${out##*: })"
        else printf '%s\n' "$out" | tail -n 20; echo "FAIL fuzz target $z"; total_fail=$((total_fail + 1)); fi
        rm -rf "$seeds"
    done
    if [ -d "$b/stage" ]; then  # the library as installed (make check / make test stage it)
        out=$(bash tests/install.sh "$(cd "$b/stage" && pwd)" 2>&1)
        rc=$?
        line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
        if [ -z "$line" ]; then printf '%s\n' "$out" | tail -n 30; echo "CRASH tests/install.sh ($b)"; total_fail=$((total_fail + 1))
        else
            p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
            if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
            [ "$f" -ne 0 ] && printf '%s\n' "$out" | tail -n 40
            echo "tests/install.sh ($b/stage): $p passed, $f failed"
            total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
        fi
    fi
    for sh in tests/test_*.sh; do  # command-line tests, given the ngd of this build
        [ -f "$sh" ] && [ -x "$b/ngd" ] || continue
        out=$(timeout "$LIMIT" bash "$sh" "$b/ngd" 2>&1)
        rc=$?
        [ "$rc" -eq 124 ] && out="$out
timed out after ${LIMIT}s"
        line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
        if [ -z "$line" ]; then printf '%s\n' "$out" | tail -n 30; echo "CRASH $sh ($b)"; total_fail=$((total_fail + 1))
        else
            p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
            if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
            [ "$f" -ne 0 ] && printf '%s\n' "$out" | tail -n 40
            echo "$sh ($b): $p passed, $f failed"
            total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
        fi
    done
done
echo "${total_pass} passed, ${total_fail} failed"
[ "$total_fail" -eq 0 ]
