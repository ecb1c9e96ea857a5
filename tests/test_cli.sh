#!/usr/bin/env bash
# test_cli.sh — the `ngd` command as a user meets it: help, usage errors (exit 2), the
# replay of shared/oracle (exit 0, every case PASS), bad paths. Usage: tests/test_cli.sh NGD
set -u
NGD=${1:?usage: test_cli.sh path/to/ngd}
SHARED=${NGD_SHARED:-../shared}
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
expect_rc() {  # expect_rc RC DESC CMD...
    local want=$1 desc=$2; shift 2
    out=$("$@" 2>&1); rc=$?
    if [ "$rc" -eq "$want" ]; then ok; else bad "$desc: exit $rc, want $want"; printf '%s\n' "$out" | tail -5; fi
}

expect_rc 0 "ngd --help" "$NGD" --help
"$NGD" --help | grep -q "replay" && ok || bad "--help lists replay"
expect_rc 2 "no command" "$NGD"
expect_rc 2 "unknown command" "$NGD" frobnicate
"$NGD" frobnicate 2>&1 | grep -q "ngd: error: unknown command 'frobnicate'" && ok || bad "unknown command message"
expect_rc 0 "replay --help" "$NGD" replay --help
expect_rc 2 "replay without path" "$NGD" replay
expect_rc 2 "replay bad --tol" "$NGD" replay --tol abc "$SHARED/oracle"
expect_rc 1 "replay missing path" "$NGD" replay /nonexistent/path.json
tmp=$(mktemp -d)
echo '{ "kind": "singd_linear_trajectory", "problem": ' > "$tmp/broken.json"
expect_rc 1 "replay broken json" "$NGD" replay "$tmp/broken.json"
"$NGD" replay "$tmp/broken.json" 2>&1 | grep -q "not valid JSON" && ok || bad "broken json message"
rm -rf "$tmp"

# the reference trajectories of the official implementation: every case must pass
if [ -d "$SHARED/oracle" ]; then
    out=$("$NGD" replay "$SHARED/oracle" 2>&1); rc=$?
    printf '%s\n' "$out" | grep -E "^(PASS|FAIL)|^replay:|error" 
    if [ "$rc" -eq 0 ] && ! printf '%s\n' "$out" | grep -q "^FAIL"; then ok; else bad "replay $SHARED/oracle (exit $rc)"; fi
    n=$(printf '%s\n' "$out" | grep -c "^PASS")
    [ "$n" -ge 9 ] && ok || bad "expected >= 9 passing oracle cases, got $n"
else
    bad "shared oracle folder $SHARED/oracle not found (set NGD_SHARED)"
fi

# the shared library exports only ngd_* names (visibility hidden elsewhere)
so="$(dirname "$NGD")/libngd.so"
if [ -f "$so" ]; then
    others=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -v '^ngd_' | grep -v '^_' || true)
    [ -z "$others" ] && ok || bad "libngd.so exports non-ngd_ symbols: $others"
    nm -D --defined-only "$so" | grep -q " ngd_optim_step$" && ok || bad "libngd.so lacks ngd_optim_step"
else
    bad "$so not built"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
