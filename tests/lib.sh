# tests/lib.sh — the counters and checks the shell tests share (sourced, not run: tests/run.sh
# runs only tests/test_*.sh). Each script ends with: echo "$pass passed, $fail failed".
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
expect_rc() {  # expect_rc RC DESC CMD...: runs CMD, output in $out, exit status in $rc
    local want=$1 desc=$2; shift 2
    out=$("$@" 2>&1); rc=$?
    if [ "$rc" -eq "$want" ]; then ok; else bad "$desc: exit $rc, want $want"; printf '%s\n' "$out" | tail -5; fi
}
expect_msg() {  # expect_msg TEXT DESC (in $out of the last expect_rc)
    if printf '%s\n' "$out" | grep -qF -- "$1"; then ok; else bad "$2: no '$1' in output"; printf '%s\n' "$out" | tail -3; fi
}
