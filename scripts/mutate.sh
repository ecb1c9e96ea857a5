#!/usr/bin/env bash
# Mutation testing: how strong is the test suite? Plants each single-line bug of a list
# (scripts/mutations.txt) in a scratch copy of the tree, one at a time, rebuilds, runs the
# plain test suite, and reports whether the suite caught it (KILLED) or not (SURVIVED).
# The working tree is never modified. `make mutate` runs it; it takes a while (a rebuild
# and up to one plain suite per mutation), so it is not part of `make test`.
#
# usage: scripts/mutate.sh [-l LIST] [-o IDS] [-c CMD] [-a] [-k] [-n] [-j JOBS]
#   -l LIST   the mutation list (default scripts/mutations.txt; its header says the format)
#   -o IDS    only these mutations: comma-separated numbers or ranges (-o 1,4,7-9)
#   -c CMD    run CMD (bash, in the copy's root) instead of the plain suite: a mutation is
#             killed when CMD exits non-zero (e.g. -c 'build/tests/test_kfac')
#   -a        run the whole suite for every mutation and name every test that catches it
#             (default: stop at the first failing test binary or script)
#   -k        keep the scratch copy (its path is printed)
#   -n        only check the list: every fragment must occur exactly once in its file
#   -j JOBS   parallel make jobs (default 2)
# Exit status: 0 every mutation killed, 1 some survived, 2 a usage, list, build or baseline
# error (the unmutated suite must pass first). A mutation that does not compile is reported
# as BUILD-ERR and left out of the score.
set -u

root=$(cd "$(dirname "$0")/.." && pwd)
list="$root/scripts/mutations.txt"
only="" cmd="" all=0 keep=0 check_only=0 jobs=2
while getopts "l:o:c:aknj:h" opt; do
    case $opt in
    l) list=$OPTARG ;;
    o) only=$OPTARG ;;
    c) cmd=$OPTARG ;;
    a) all=1 ;;
    k) keep=1 ;;
    n) check_only=1 ;;
    j) jobs=$OPTARG ;;
    h) sed -n '2,/^set -u/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "mutate: error: unknown option (see scripts/mutate.sh -h)" >&2; exit 2 ;;
    esac
done
die() { echo "mutate: error: $*" >&2; exit 2; }
[ -f "$list" ] || die "no mutation list at $list"

# ---- the list: records of "what:", "file:", "find:", "repl:" lines (blank line between) ----
WHAT=() FILE=() FIND=() REPL=()
w="" f="" fi_="" r="" have_r=0 lineno=0
flush() {
    if [ -n "$w$f$fi_" ] || [ $have_r = 1 ]; then
        [ -n "$w" ] && [ -n "$f" ] && [ -n "$fi_" ] && [ $have_r = 1 ] ||
            die "$list: record ending at line $lineno needs what:, file:, find: and repl:"
        WHAT+=("$w") FILE+=("$f") FIND+=("$fi_") REPL+=("$r")
    fi
    w="" f="" fi_="" r="" have_r=0
}
while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    case $line in
    '#'*) ;;
    '') flush ;;
    'what: '*) w=${line#what: } ;;
    'file: '*) f=${line#file: } ;;
    'find: '*) fi_=${line#find: } ;;
    'repl: '*) r=${line#repl: }; have_r=1 ;;
    *) die "$list:$lineno: expected what:, file:, find: or repl: (got: $line)" ;;
    esac
done <"$list"
flush
total=${#WHAT[@]}
[ "$total" -gt 0 ] || die "$list holds no mutations"

# which ids to run
declare -A pick=()
if [ -n "$only" ]; then
    IFS=, read -ra parts <<<"$only"
    for p in "${parts[@]}"; do
        if [[ $p =~ ^([0-9]+)-([0-9]+)$ ]]; then
            for ((i = BASH_REMATCH[1]; i <= BASH_REMATCH[2]; i++)); do pick[$i]=1; done
        elif [[ $p =~ ^[0-9]+$ ]]; then pick[$p]=1
        else die "-o: '$p' is not a number or a range"; fi
    done
    for i in "${!pick[@]}"; do
        [ "$i" -ge 1 ] && [ "$i" -le "$total" ] || die "-o: no mutation $i (the list has $total)"
    done
else
    for ((i = 1; i <= total; i++)); do pick[$i]=1; done
fi

# A file's exact contents (trailing newlines kept) in the variable named $2.
slurp() { local _s; _s=$(cat "$1"; printf x); printf -v "$2" '%s' "${_s%x}"; }
# How often the literal string $2 occurs in the text $1.
occurrences() {
    local rest=${1//"$2"/}
    echo $(((${#1} - ${#rest}) / ${#2}))
}

# every fragment must still be in the code, exactly once (else the list has gone stale)
bad=0
for ((i = 1; i <= total; i++)); do
    k=$((i - 1))
    if [ ! -f "$root/${FILE[k]}" ]; then
        echo "mutate: mutation $i (${WHAT[k]}): no file ${FILE[k]}" >&2; bad=1; continue
    fi
    [ "${FIND[k]}" != "${REPL[k]}" ] || { echo "mutate: mutation $i: find = repl" >&2; bad=1; }
    slurp "$root/${FILE[k]}" text
    n=$(occurrences "$text" "${FIND[k]}")
    if [ "$n" != 1 ]; then
        echo "mutate: mutation $i (${WHAT[k]}): the fragment occurs $n times in ${FILE[k]}," \
             "not once: '${FIND[k]}'" >&2
        bad=1
    fi
done
[ $bad = 0 ] || die "the list is stale: update $list"
if [ $check_only = 1 ]; then echo "mutate: $total mutations, every fragment found once"; exit 0; fi

# ---- a scratch copy: the tracked and untracked (not ignored) files, plus the build ----
scratch=$(mktemp -d "${TMPDIR:-/tmp}/ngd-mutate.XXXXXX") || die "cannot make a scratch folder"
cleanup() { if [ $keep = 1 ]; then echo "mutate: scratch copy kept in $scratch"; else rm -rf "$scratch"; fi; }
trap cleanup EXIT
trap 'exit 2' INT TERM
tree="$scratch/tree"
mkdir -p "$tree" "$scratch/orig" "$scratch/logs"
(cd "$root" && git ls-files -z -co --exclude-standard |
    while IFS= read -r -d '' p; do [ -f "$p" ] && printf '%s\0' "$p"; done |
    tar --null -T - -cf -) | tar -xf - -C "$tree" || die "copying the tree failed"
# the working tree's objects (timestamps kept) save the first full build
[ -d "$root/build" ] && cp -a "$root/build" "$tree/build"
# the tests and `ngd train` find the shared oracle and data sets at ../shared (or NGD_SHARED)
[ -d "$root/../shared" ] && ln -s "$(cd "$root/../shared" && pwd)" "$scratch/shared"

cd "$tree" || die "no scratch tree"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
targets=(all)
for s in tests/test_*.c; do t=${s#tests/}; targets+=("build/tests/${t%.c}"); done
for s in examples/*.c; do [ -f "$s" ] && { t=${s#examples/}; targets+=("build/examples/${t%.c}"); }; done
build() { make -j"$jobs" --no-print-directory "${targets[@]}" >"$1" 2>&1; }

# Runs the plain suite (the programs tests/run.sh runs, in its order); sets $killer to the
# first failing test ("binary:test case" when the harness names one), or "" when all pass.
# A test slower than 5x its baseline time + 60 s is stopped and counts as failed.
declare -A base_s=()
run_one() {  # name, log, command...
    local name=$1 log=$2 lim rc
    shift 2
    lim=$(( ${base_s[$name]:-120} * 5 + 60 ))
    timeout -k 5 "$lim" "$@" >"$log" 2>&1
    rc=$?
    if [ $rc = 124 ] || [ $rc = 137 ]; then echo "timeout"; return 1; fi
    local line
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
    case $name in examples/*) [ $rc = 0 ] && return 0; echo "exit $rc"; return 1 ;; esac
    if [ -z "$line" ]; then echo "crash (exit $rc)"; return 1; fi
    if [ $rc != 0 ] || [ "${line#*, }" != "0 failed" ]; then
        # the harness's "FAIL name (n checks)", or the scripts' "FAIL: what"
        grep -m1 -E '^FAIL[: ]' "$log" | sed -E -e 's/^FAIL:? //' -e 's/ \([0-9]+ checks\)$//' |
            cut -c1-90
        return 1
    fi
    return 0
}
suite() {  # log prefix
    killer=""
    local why t name
    if [ -n "$cmd" ]; then
        timeout -k 5 3600 bash -c "$cmd" >"$1.cmd" 2>&1 || killer="-c command"
        return
    fi
    for t in build/tests/test_* build/examples/* tests/test_*.sh; do
        case $t in *.o | *.d) continue ;; esac
        case $t in
        *.sh) name=${t#tests/}; [ -x build/ngd ] || continue ;;
        build/examples/*) name=examples/${t#build/examples/} ;;
        *) name=${t#build/tests/} ;;
        esac
        [ -f "$t" ] || continue
        if [[ $t == *.sh ]]; then why=$(run_one "$name" "$1.${name//\//_}" bash "$t" build/ngd)
        else why=$(run_one "$name" "$1.${name//\//_}" "$t"); fi
        if [ $? != 0 ]; then
            killer="$killer${killer:+, }$name${why:+: $why}"
            [ $all = 1 ] || return
        fi
    done
}

echo "mutate: baseline build and suite in $tree"
build "$scratch/logs/build-0" || { tail -n 30 "$scratch/logs/build-0"; die "the unmutated tree does not build"; }
# the baseline pass also records each test's time (for the timeouts); run_one is called in
# a subshell by suite, so time it here
if [ -z "$cmd" ]; then
    for t in build/tests/test_* build/examples/* tests/test_*.sh; do
        case $t in *.o | *.d) continue ;; esac
        [ -f "$t" ] || continue
        case $t in
        *.sh) name=${t#tests/} ;;
        build/examples/*) name=examples/${t#build/examples/} ;;
        *) name=${t#build/tests/} ;;
        esac
        log="$scratch/logs/base.${name//\//_}"
        t0=$(date +%s)
        if [[ $t == *.sh ]]; then bash "$t" build/ngd >"$log" 2>&1; else "$t" >"$log" 2>&1; fi
        rc=$?
        base_s[$name]=$(($(date +%s) - t0 + 1))
        [ $rc = 0 ] || { tail -n 20 "$log"; die "the unmutated suite fails ($name): fix that first"; }
    done
else
    timeout -k 5 3600 bash -c "$cmd" >"$scratch/logs/base.cmd" 2>&1 ||
        { tail -n 20 "$scratch/logs/base.cmd"; die "the -c command fails on the unmutated tree"; }
fi
echo "mutate: baseline passes; ${#pick[@]} of $total mutations to run"

RES=() BY=() killed=0 survived=0 builderr=0
for ((i = 1; i <= total; i++)); do
    k=$((i - 1))
    RES[k]="" BY[k]=""
    [ -n "${pick[$i]+x}" ] || continue
    f=${FILE[k]}
    cp -p "$f" "$scratch/orig/file"
    slurp "$f" text
    printf '%s' "${text/"${FIND[k]}"/"${REPL[k]}"}" >"$f"
    t0=$(date +%s)
    if ! build "$scratch/logs/build-$i"; then
        RES[k]="BUILD-ERR" BY[k]="see the compiler: $(grep -m1 -E 'error' "$scratch/logs/build-$i")"
        builderr=$((builderr + 1))
    else
        suite "$scratch/logs/m$i"
        if [ -n "$killer" ]; then RES[k]="KILLED" BY[k]=$killer; killed=$((killed + 1))
        else RES[k]="SURVIVED"; survived=$((survived + 1)); fi
    fi
    # restore: the original bytes, with a new time stamp so that make rebuilds from them
    cp "$scratch/orig/file" "$f" && touch "$f"
    printf 'mutate: %2d/%d %-9s %4ss  %s  [%s]\n' "$i" "$total" "${RES[k]}" "$(($(date +%s) - t0))" \
        "${WHAT[k]}" "${BY[k]:-no test failed}"
done

echo
printf '%-3s %-9s %-34s %s\n' "#" "result" "file" "mutation / caught by"
for ((i = 1; i <= total; i++)); do
    k=$((i - 1))
    [ -n "${RES[k]}" ] || continue
    printf '%-3s %-9s %-34s %s\n' "$i" "${RES[k]}" "${FILE[k]}" "${WHAT[k]}"
    [ -n "${BY[k]}" ] && printf '%-3s %-9s %-34s   <- %s\n' "" "" "" "${BY[k]}"
done
scored=$((killed + survived))
if [ $scored -gt 0 ]; then
    printf '\nmutation score: %d/%d killed (%d%%)' "$killed" "$scored" $((100 * killed / scored))
else
    printf '\nmutation score: nothing scored'
fi
[ $builderr -gt 0 ] && printf ', %d did not build (not scored)' "$builderr"
printf '\n'
[ $survived = 0 ] && [ $builderr = 0 ] && exit 0
[ $survived -gt 0 ] && exit 1
exit 2
