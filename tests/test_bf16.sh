#!/usr/bin/env bash
# test_bf16.sh — `ngd train --precision bf16` as a user meets it: the option's errors, short
# runs on a Fashion-MNIST subset (mlp with dense SINGD computing its factors in bf16, the cnn
# with bf16 convolutions, K-FAC on bf16 statistics) that land within a stated margin of the
# same run in float32, the state bytes of bf16 factors (half of f32), bit-identical resume of
# bf16 runs, and `ngd bench train --precision f32,bf16`.
# Usage: tests/test_bf16.sh path/to/ngd
set -u
NGD=${1:?usage: test_bf16.sh path/to/ngd}
. "$(dirname "$0")/lib.sh"
summary() {  # summary LOG FIELD: a number of the log's summary record
    grep '"type":"summary"' "$1" | tail -1 | sed -n "s/.*\"$2\":\([0-9.e+-]*\).*/\1/p"
}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT

expect_rc 2 "--precision fp8" "$NGD" train --precision fp8 --quiet
expect_msg "--precision: unknown precision 'fp8'" "bad precision message"
expect_msg "f32 or bf16" "bad precision hint"
expect_rc 0 "train --help lists --precision" "$NGD" train --help
expect_msg "--precision" "help mentions --precision"
expect_rc 2 "--kfac-arith f16" "$NGD" train --optim kfac --kfac-arith f16 --quiet
expect_msg "--kfac-arith: unknown value 'f16'" "bad --kfac-arith message"
expect_msg "f32, bf16" "bad --kfac-arith hint"
expect_rc 2 "--kfac-arith with adamw" "$NGD" train --optim adamw --kfac-arith bf16 --quiet
expect_msg "--kfac-arith is used only by kfac" "--kfac-arith outside the K-FAC family"
expect_rc 0 "train --help lists --kfac-arith" "$NGD" train --help
expect_msg "--kfac-arith A" "help mentions --kfac-arith"
expect_rc 2 "bench --precision fp8" "$NGD" bench train --precision fp8
expect_msg "--precision: unknown list 'fp8'" "bench bad precision message"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] &&
   [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ]; then
    echo "SKIP: no Fashion-MNIST (dataset-fashion-mnist): bf16 training runs not tested"
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
    exit
fi

# bf16 vs f32, same seed and options: the test loss after 2 epochs of 8 steps must agree
# within 0.05 (bf16 rounds every GEMM operand to 8 significant bits; observed differences are
# below 0.01 on these runs, while a broken bf16 path does not learn: the loss stays near
# ln 10 = 2.30 or diverges), and the bf16 run must have learnt (test loss < 2.2). The runs
# avoid chaotic settings (SGD momentum 0.9 at lr 0.1 moves the test loss by 0.1 between 1
# and 2 threads in f32 alone).
margin() {  # margin NAME ARGS...: runs f32 and bf16, compares
    local name=$1; shift
    "$NGD" train "$@" --precision f32 --quiet --log "$D/f32.jsonl" >/dev/null 2>&1 || bad "$name f32 run failed"
    "$NGD" train "$@" --precision bf16 --quiet --log "$D/bf16.jsonl" >/dev/null 2>&1 || bad "$name bf16 run failed"
    l32=$(summary "$D/f32.jsonl" test_loss); l16=$(summary "$D/bf16.jsonl" test_loss)
    awk -v a="${l32:-9}" -v b="${l16:-99}" 'BEGIN{d = a - b; if (d < 0) d = -d; exit !(d <= 0.05 && b < 2.2)}' &&
        ok || bad "$name: bf16 test loss ${l16:-?} vs f32 ${l32:-?} (want within 0.05, and < 2.2)"
    grep -q '"precision":"bf16"' "$D/bf16.jsonl" && ok || bad "$name: summary does not say bf16"
}
B="--subset 512 --batch 64 --epochs 2 --seed 4 --threads 2"
margin "mlp singd dense" --model mlp --widths 64 --optim singd --structure dense --lr 0.05 $B
s32=$(summary "$D/f32.jsonl" optimizer_state_bytes); s16=$(summary "$D/bf16.jsonl" optimizer_state_bytes)
# dense K (785² and 65²) and C (64² and 10²) with their momenta: 2 bytes less per number
nf=$((2 * (785 * 785 + 64 * 64 + 65 * 65 + 10 * 10)))
[ -n "$s32" ] && [ -n "$s16" ] && [ $((s32 - s16)) -eq $((2 * nf)) ] && [ $((s32 - 4 * nf)) -eq $((s16 - 2 * nf)) ] &&
    ok || bad "state bytes: f32 ${s32:-?}, bf16 ${s16:-?}: the factors' $((4 * nf)) bytes should halve"
# (the sanitizer build runs each bf16 code path once: the cnn K-FAC run below covers the
# bf16 convolutions as well as the cnn SGD run does)
case "$NGD" in *build-san*) SAN=1 ;; *) SAN=0 ;; esac
[ "$SAN" -eq 0 ] && margin "cnn sgd" --model cnn --widths 8,8 --optim sgd --lr 0.1 $B
margin "cnn kfac" --model cnn --widths 4,4 --optim kfac --lr 0.2 --damping 0.01 --T-u 2 --T-i 4 $B
# --factor-dtype f32 keeps SINGD's factors in f32 under --precision bf16
"$NGD" train --model mlp --widths 64 --optim singd --subset 256 --batch 64 --max-steps 2 --precision bf16 --factor-dtype f32 --quiet --log "$D/fd.jsonl" >/dev/null 2>&1
[ "$(summary "$D/fd.jsonl" optimizer_state_bytes)" = "$s32" ] && ok || bad "--factor-dtype f32 under --precision bf16 changed the state bytes"

# K-FAC with emulated bf16 factor arithmetic (--kfac-arith bf16, every operation of the
# factor path rounded to bf16): it learns (test loss < 2.2), says so in its summary, and is
# not the run without it (different parameters)
K="--model mlp --widths 32 --optim kfac --lr 0.2 --damping 0.01 --T-u 2 --T-i 4 $B --precision bf16 --quiet"
# shellcheck disable=SC2086
"$NGD" train $K --kfac-arith bf16 --log "$D/kb.jsonl" >/dev/null 2>&1 || bad "--kfac-arith bf16 run failed"
# shellcheck disable=SC2086
"$NGD" train $K --log "$D/ka.jsonl" >/dev/null 2>&1 || bad "--precision bf16 kfac run failed"
lb=$(summary "$D/kb.jsonl" test_loss)
awk -v b="${lb:-99}" 'BEGIN{exit !(b < 2.2)}' && ok || bad "--kfac-arith bf16: test loss ${lb:-?} (want < 2.2)"
grep -q '"kfac_arith":"bf16"' "$D/kb.jsonl" && ok || bad "--kfac-arith bf16: summary does not say so"
crc() { grep '"type":"summary"' "$1" | sed -n 's/.*"parameters_crc":"\([0-9a-f]*\)".*/\1/p'; }
[ -n "$(crc "$D/kb.jsonl")" ] && [ "$(crc "$D/kb.jsonl")" != "$(crc "$D/ka.jsonl")" ] && ok ||
    bad "--kfac-arith bf16 gave the parameters of the run without it"

# resume == no stop, bit for bit, in bf16 (the resume crosses an epoch boundary and, for
# SINGD, a factor update; for the cnn and the --kfac-arith runs a K-FAC refresh)
for run in "--model mlp --widths 32 --optim singd --structure dense" \
           "--model cnn --widths 4,4 --optim kfac --T-u 2 --T-i 4" \
           "--model mlp --widths 32 --optim kfac --kfac-arith bf16 --T-u 2 --T-i 4" \
           "--model mlp --widths 32 --optim bkfac --kfac-arith bf16 --rank 8 --T-u 2 --T-i 4"; do
    # shellcheck disable=SC2086
    A="$run --subset 512 --batch 64 --seed 3 --epochs 3 --precision bf16 --threads 2 --quiet --log $D/r.jsonl"
    # shellcheck disable=SC2086
    "$NGD" train $A --max-steps 12 --checkpoint "$D/full.ckpt" >/dev/null 2>&1
    # shellcheck disable=SC2086
    "$NGD" train $A --max-steps 5 --checkpoint "$D/half.ckpt" >/dev/null 2>&1
    # shellcheck disable=SC2086
    "$NGD" train $A --max-steps 12 --resume "$D/half.ckpt" --checkpoint "$D/res.ckpt" >/dev/null 2>&1
    c1=$("$NGD" eval --resume "$D/full.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
    c2=$("$NGD" eval --resume "$D/res.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
    [ -n "$c1" ] && [ "$c1" = "$c2" ] && ok || bad "bf16 $run: resumed run ($c2) differs from uninterrupted ($c1)"
done

# ... and its --kfac-arith: a run of the emulated arithmetic continued without it, or the
# reverse, is refused naming the option (the last checkpoint above is of a bkfac
# --kfac-arith bf16 run)
R="--model mlp --widths 32 --optim bkfac --rank 8 --T-u 2 --T-i 4 --subset 512 --batch 64 --seed 3 --epochs 3 --precision bf16 --threads 2 --quiet --log $D/r.jsonl"
# shellcheck disable=SC2086
expect_rc 1 "--kfac-arith bf16 checkpoint resumed without it" "$NGD" train $R --max-steps 12 --resume "$D/half.ckpt"
expect_msg "it was written with --kfac-arith bf16, not f32 (resume it with --kfac-arith bf16)" "--kfac-arith mismatch message"
# shellcheck disable=SC2086
"$NGD" train $R --max-steps 3 --checkpoint "$D/k32.ckpt" >/dev/null 2>&1
# shellcheck disable=SC2086
expect_rc 1 "f32-arithmetic checkpoint resumed with --kfac-arith bf16" "$NGD" train $R --kfac-arith bf16 --max-steps 5 --resume "$D/k32.ckpt"
expect_msg "it was written with --kfac-arith f32, not bf16" "--kfac-arith mismatch message (f32)"

# a checkpoint records its precision (version 3): resuming it in the other one is refused,
# naming the option; eval takes it from the checkpoint (the training run's parameters and,
# evaluated in bf16 again, its test loss to the printed digits)
P="--model mlp --widths 32 --optim sgd --subset 256 --batch 64 --seed 5 --threads 1 --quiet"
# shellcheck disable=SC2086
"$NGD" train $P --max-steps 3 --precision bf16 --checkpoint "$D/p16.ckpt" --log "$D/p16.jsonl" >/dev/null 2>&1
# shellcheck disable=SC2086
expect_rc 1 "bf16 checkpoint resumed in f32" "$NGD" train $P --max-steps 5 --resume "$D/p16.ckpt" --log "$D/p.jsonl"
expect_msg "it was written with --precision bf16, not f32 (resume it with --precision bf16)" "precision mismatch message"
# shellcheck disable=SC2086
"$NGD" train $P --max-steps 3 --checkpoint "$D/p32.ckpt" --log "$D/p.jsonl" >/dev/null 2>&1
# shellcheck disable=SC2086
expect_rc 1 "f32 checkpoint resumed in bf16" "$NGD" train $P --max-steps 5 --precision bf16 --resume "$D/p32.ckpt" --log "$D/p.jsonl"
expect_msg "it was written with --precision f32, not bf16" "precision mismatch message (f32)"
# shellcheck disable=SC2086
expect_rc 0 "bf16 checkpoint resumed in bf16" "$NGD" train $P --max-steps 5 --precision bf16 --resume "$D/p16.ckpt" --log "$D/p.jsonl"
crc=$(grep '"type":"summary"' "$D/p16.jsonl" | tail -1 | sed -n 's/.*"parameters_crc":"\([0-9a-f]*\)".*/\1/p')
tl=$(summary "$D/p16.jsonl" test_loss)
expect_rc 0 "eval of a bf16 checkpoint" "$NGD" eval --resume "$D/p16.ckpt"
expect_msg "crc ${crc:-none}" "eval of the bf16 checkpoint: the training run's parameters"
case "$out" in *"ngd train: note"*) bad "eval of a bf16 checkpoint prints train's --precision note" ;; *) ok ;; esac
el=$(printf '%s\n' "$out" | sed -n 's/.* loss \([0-9.]*\) accuracy.*/\1/p')
awk -v e="$el" -v t="$tl" 'BEGIN { d = e - t; exit !(e != "" && t != "" && d * d < 1e-12) }' && ok || bad "eval of the bf16 checkpoint: loss $el vs the run's $tl (eval must run in bf16)"

# oneDNN splits a product for the thread count and computes only the parts of the threads it
# gets: under an OMP_THREAD_LIMIT below --threads, or OMP_DYNAMIC=true, whose teams may be
# smaller, the products run with full teams of at most the limit's threads (the run was
# other numbers: parts of C left unwritten). The limit makes the run a one-thread run; dynamic
# teams leave it as it was (the mlp's own passes are the same bits at any team size)
crc_of() { grep '"type":"summary"' "$1" | tail -1 | sed -n 's/.*"parameters_crc":"\([0-9a-f]*\)".*/\1/p'; }
TL="--subset 512 --epochs 1 --precision bf16 --quiet"
expect_rc 0 "bf16 run at 1 thread" "$NGD" train $TL --threads 1 --log "$D/tl1.jsonl"
expect_rc 0 "bf16 run at 2 threads" "$NGD" train $TL --threads 2 --log "$D/tl2.jsonl"
OMP_THREAD_LIMIT=1 expect_rc 0 "bf16 run at 2 threads under OMP_THREAD_LIMIT=1" "$NGD" train $TL --threads 2 --log "$D/tll.jsonl"
OMP_DYNAMIC=true expect_rc 0 "bf16 run at 2 threads under OMP_DYNAMIC=true" "$NGD" train $TL --threads 2 --log "$D/tld.jsonl"
OMP_MAX_ACTIVE_LEVELS=0 expect_rc 0 "bf16 run at 2 threads under OMP_MAX_ACTIVE_LEVELS=0" "$NGD" train $TL --threads 2 --log "$D/tlm.jsonl"
c1=$(crc_of "$D/tl1.jsonl") c2=$(crc_of "$D/tl2.jsonl")
[ -n "$c1" ] && [ "$(crc_of "$D/tll.jsonl")" = "$c1" ] && ok || bad "OMP_THREAD_LIMIT=1: parameters $(crc_of "$D/tll.jsonl"), a one-thread run's $c1"
[ -n "$c2" ] && [ "$(crc_of "$D/tld.jsonl")" = "$c2" ] && ok || bad "OMP_DYNAMIC=true: parameters $(crc_of "$D/tld.jsonl"), the run's $c2"
[ -n "$c1" ] && [ "$(crc_of "$D/tlm.jsonl")" = "$c1" ] && ok || bad "OMP_MAX_ACTIVE_LEVELS=0: parameters $(crc_of "$D/tlm.jsonl"), a one-thread run's $c1"
# the same on the f32 copies' path (the default where bf16 dot products are slow): its f32
# products inside SINGD's two-thread blocks planned for --threads under the limit (other
# numbers, until they ran under the limit's team)
NGD_BF16_GEMM=convert expect_rc 0 "bf16 run (f32 copies) at 1 thread" "$NGD" train $TL --threads 1 --log "$D/tc1.jsonl"
NGD_BF16_GEMM=convert OMP_THREAD_LIMIT=1 expect_rc 0 "bf16 run (f32 copies) at 2 threads under OMP_THREAD_LIMIT=1" "$NGD" train $TL --threads 2 --log "$D/tcl.jsonl"
cc1=$(crc_of "$D/tc1.jsonl")
[ -n "$cc1" ] && [ "$(crc_of "$D/tcl.jsonl")" = "$cc1" ] && ok || bad "f32 copies under OMP_THREAD_LIMIT=1: parameters $(crc_of "$D/tcl.jsonl"), a one-thread run's $cc1"
# the K-FAC family's decompositions (OpenBLAS's LAPACK, which plans for the thread count as
# oneDNN does) spun for ever under the same settings: a one-thread run's bits now
TK="--optim kfac --subset 512 --epochs 1 --max-steps 6 --quiet"
expect_rc 0 "K-FAC at 1 thread" timeout 120 "$NGD" train $TK --threads 1 --log "$D/tk1.jsonl"
OMP_THREAD_LIMIT=1 expect_rc 0 "K-FAC at 2 threads under OMP_THREAD_LIMIT=1 (no hang)" timeout 120 "$NGD" train $TK --threads 2 --log "$D/tkl.jsonl"
OMP_DYNAMIC=true expect_rc 0 "K-FAC at 2 threads under OMP_DYNAMIC=true (no hang)" timeout 120 "$NGD" train $TK --threads 2 --log "$D/tkd.jsonl"
k1=$(crc_of "$D/tk1.jsonl")
[ -n "$k1" ] && [ "$(crc_of "$D/tkl.jsonl")" = "$k1" ] && ok || bad "K-FAC under OMP_THREAD_LIMIT=1: parameters $(crc_of "$D/tkl.jsonl"), a one-thread run's $k1"
# the products themselves against float64, under the limit (the test binaries beside ngd)
T16="$(dirname "$NGD")/tests/test_bf16" TC="$(dirname "$NGD")/tests/test_core"
if [ -x "$T16" ] && [ -x "$TC" ]; then
    OMP_NUM_THREADS=2 OMP_THREAD_LIMIT=1 expect_rc 0 "bf16 GEMMs under OMP_THREAD_LIMIT=1" "$T16" --filter gemm_bf16_should_meet
    OMP_NUM_THREADS=2 OMP_THREAD_LIMIT=1 expect_rc 0 "f32 GEMMs under OMP_THREAD_LIMIT=1" "$TC" --filter f32_gemm_should_match
    OMP_NUM_THREADS=2 OMP_MAX_ACTIVE_LEVELS=0 expect_rc 0 "bf16 GEMMs under OMP_MAX_ACTIVE_LEVELS=0" "$T16" --filter gemm_bf16_should_meet
    OMP_NUM_THREADS=2 OMP_MAX_ACTIVE_LEVELS=0 expect_rc 0 "f32 GEMMs under OMP_MAX_ACTIVE_LEVELS=0" "$TC" --filter f32_gemm_should_match
else
    echo "SKIP: no $T16 or $TC: the GEMMs under OMP_THREAD_LIMIT not tested"
fi

# the benchmark runs both precisions interleaved and ends with their ratio
expect_rc 0 "bench train --precision f32,bf16" "$NGD" bench train --model mlp --widths 32 --optim singd --structure dense --batch 16 --steps 2 --warmup 1 --T 2 --precision f32,bf16 --repeats 2 --threads 1
expect_msg "f32 / bf16 step time (wall; CPU time of the process), median over 2 interleaved rounds" "bench prints the ratio"
n16=$(printf '%s\n' "$out" | grep -c '^mlp .* bf16 ')
[ "$n16" -eq 2 ] && ok || bad "bench: $n16 bf16 rows, want 2"
# with --json the ratio is a record of its own type, told apart from the configurations'
out=$("$NGD" bench train --model mlp --widths 32 --optim sgd --batch 16 --steps 2 --warmup 1 --precision f32,bf16 --threads 1 --json 2>&1)
printf '%s\n' "$out" | grep '^{' | python3 -c 'import json, sys; r = [json.loads(l) for l in sys.stdin]; sys.exit(0 if len(r) == 3 and [x.get("type") for x in r] == [None, None, "ratio"] and r[2]["f32_over_bf16"] > 0 else 1)' && ok || { bad "bench --json: the ratio record"; printf '%s\n' "$out" | tail -2; }
# each configuration's record carries the CPU's bf16 dot-product ratio (bf16 products run in
# f32 below 0.75 without AMX): the same figure in both, 0 exactly without AVX512-BF16
printf '%s\n' "$out" | grep '^{' | python3 -c 'import json, sys; r = [json.loads(l) for l in sys.stdin][:2]; q = [x["bf16_dot_ratio"] for x in r]; no = "avx512_bf16" not in open("/proc/cpuinfo").read(); sys.exit(0 if q[0] == q[1] and ((q[0] == 0) == no) and 0 <= q[0] < 20 else 1)' && ok || { bad "bench --json: bf16_dot_ratio"; printf '%s\n' "$out" | tail -2; }

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
