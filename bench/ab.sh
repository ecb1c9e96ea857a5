#!/usr/bin/env bash
# bench/ab.sh — two ngd binaries interleaved on the same `ngd bench train` configuration:
# A B A B … for ROUNDS rounds, then per binary and precision the median over the rounds of
# the step's median ms, its mean over whole periods (with the preconditioner updates), and
# its forward, backward, statistics (observe), preconditioner update, preconditioning and
# first-order-rule phases. On a shared machine a ratio
# from one interleaved run means something; two absolute times measured apart do not.
# Usage: bench/ab.sh NGD_A NGD_B ROUNDS [ngd bench train options...]
#   e.g. bench/ab.sh /tmp/ngd-before build/ngd 5 --model cnn --optim sgd --precision bf16 \
#            --steps 10 --warmup 3 --threads 2
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,8p' "$0" >&2; exit 2; }
A=$1 B=$2 R=$3
shift 3
out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
for _ in $(seq "$R"); do
    for who in A B; do
        bin=$A
        [ "$who" = B ] && bin=$B
        # (an older binary may not know an option: say which binary failed, and why)
        "$bin" bench train --json "$@" 2>"$err" | sed "s/^/$who /" >>"$out" ||
            { echo "bench/ab.sh: $who ($bin) failed:" >&2; tail -3 "$err" >&2; exit 1; }
    done
done
/usr/bin/python3 - "$out" <<'PY'
import collections, json, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    who, _, js = line.partition(" ")
    try:
        j = json.loads(js)
    except ValueError:
        continue
    if "ms_median" not in j:  # (a closing ratio record, not a configuration)
        continue
    key = (j["model"], j["optim"], j["structure"], j["precision"])
    rows[key + (who,)].append((j["ms_median"], j["ms_mean"], j["ms_forward"], j["ms_backward"],
                               j["ms_observe"], j["ms_precond_update"], j["ms_precondition"],
                               j["ms_rule"]))
print("%-8s %-6s %-10s %-5s %-2s %6s %10s %8s %8s %8s %8s %8s %8s %8s" % ("model", "optim",
      "structure", "prec", "", "rounds", "median ms", "mean", "fwd", "bwd", "observe", "update",
      "precond", "rule"))
for k in sorted(rows):
    v = rows[k]
    med = [statistics.median(x[i] for x in v) for i in range(8)]
    print("%-8s %-6s %-10s %-5s %-2s %6d %10.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f" %
          (k + (len(v),) + tuple(med)))
PY
