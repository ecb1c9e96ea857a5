#!/usr/bin/env bash
# test_mpi.sh — `mpirun -np 2 ngd train` (docs/distributed.md): 2 ranks x batch 64 train as
# 1 rank x batch 128 on the same data order (losses of every step and final weights within
# float32 reduction-order tolerance) for SGD, AdamW, SINGD dense and diagonal, K-FAC,
# RS-KFAC and B-KFAC; a 2-rank checkpoint resumes bit-identically to an uninterrupted 2-rank
# run, and as one process with the same global batch; a rank that cannot read its data ends
# the job with its message and a non-zero exit, never a hang.
# Usage: tests/test_mpi.sh path/to/ngd
set -u
NGD=${1:?usage: test_mpi.sh path/to/ngd}
. "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
if ! command -v mpirun >/dev/null 2>&1; then
    bad "mpirun not found (scripts/deps.sh installs openmpi-bin)"
    echo "$pass passed, $fail failed"
    exit 1
fi
# Under the sanitizer build the MPI runs keep ASan and UBSan but not LeakSanitizer: Open MPI
# loads its transports as plugins and unloads them in MPI_Finalize, so the blocks they leave
# are reported from "<unknown module>" frames that no suppression by library can name (and
# libmpi's own start-up allocations besides). ngd's leaks there are still caught: the same
# libngd code runs leak-checked in tests/test_dist.c, and the engine in test_train.sh. That
# build runs a shorter list (it is several times slower).
SAN=0
case "$NGD" in *build-san*) SAN=1; export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0" ;; esac
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
MPI="mpirun --oversubscribe -np 2"
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT

# a small IDX set: 1280 training images (10 steps of 128), 200 test images, fixed pixels
be32() { local v=$1; printf "\\$(printf %03o $(((v >> 24) & 255)))\\$(printf %03o $(((v >> 16) & 255)))\\$(printf %03o $(((v >> 8) & 255)))\\$(printf %03o $((v & 255)))"; }
idx_images() {  # idx_images FILE N H W SEED
    { printf '\000\000\010\003'; be32 "$2"; be32 "$3"; be32 "$4"
      $PY -c "import random,sys; r=random.Random($5); sys.stdout.buffer.write(bytes(r.randrange(256) for _ in range($2*$3*$4)))"; } > "$1"
}
idx_labels() {  # idx_labels FILE N: labels i mod 10
    local s=""; for ((i = 0; i < $2 / 10; i++)); do s+='\000\001\002\003\004\005\006\007\010\011'; done
    { printf '\000\000\010\001'; be32 "$2"; printf "$s"; } > "$1"
}
I="$D/idx"; mkdir -p "$I"
idx_images "$I/train-images-idx3-ubyte" 1280 28 28 1; idx_labels "$I/train-labels-idx1-ubyte" 1280
idx_images "$I/t10k-images-idx3-ubyte" 200 28 28 2; idx_labels "$I/t10k-labels-idx1-ubyte" 200

# compare LOG1 LOG2 CKPT1 CKPT2 RTOL: every step's loss and accuracy, then the parameters of
# the two training checkpoints (docs/formats.md), max |a-b| <= RTOL * max |a| per tensor, but
# for at most 1/16 of a tensor's elements, which may reach FLIP * max |a|: a ReLU gate whose
# pre-activation lies within float32 rounding of 0 can open in one run only. Found on an Intel
# Xeon (kfac-pi-factored): at step 7 one sample's unit 231 had z = -4e-8 from terms of
# Σ|w x| = 12 (the next smallest |z| of the step 3e-5); its weight row then differed by 9e-4
# relative (1.8e-4 at step 30), every other row by 3e-7, the losses by 8e-7. The ranks'
# products, rows, π, λ and operators were the same to rounding. A fault of the reduction
# moves every element, and the loss.
compare() {
    $PY - "$@" <<'EOF'
import json, struct, sys
l1, l2, c1, c2, rtol = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
def steps(p):
    return [(r["step"], r["loss"], r["accuracy"]) for r in map(json.loads, open(p)) if r.get("type") == "step"]
a, b = steps(l1), steps(l2)
if len(a) != len(b) or len(a) < 30:
    sys.exit(f"step records: {len(a)} vs {len(b)}")
for (s, la, aa), (_, lb, ab) in zip(a, b):
    if abs(la - lb) > rtol * abs(la) or abs(aa - ab) > 1e-9:
        sys.exit(f"step {s}: loss {la} vs {lb}, accuracy {aa} vs {ab}")
def params(p):
    b = open(p, "rb").read(); o = 16
    u = lambda: struct.unpack_from("<Q", b, o)[0]
    for _ in range(3): n = u(); o += 8 + n
    nw = u(); o += 8 + 8 * nw
    ver = struct.unpack_from("<Q", b, 8)[0]
    o += 8 * 3 + 8 * (ver >= 3) + 8 * (ver >= 5) + 8 * 4 + 24 * (ver >= 4)  # subset context batch [precision] [epochs]; step epoch skips wall [record sums]
    o += 8 * 2; n = u(); o += 8 + 32 + 8 * n   # pos epoch n, rng, order
    np_ = u(); o += 8; out = []
    for _ in range(np_):
        n = u(); o += 8; out.append(struct.unpack_from(f"<{n}f", b, o)); o += 4 * n
    return out
pa, pb = params(c1), params(c2)
if len(pa) != len(pb): sys.exit("parameter counts differ")
FLIP = 2e-3
for i, (x, y) in enumerate(zip(pa, pb)):
    scale = max(abs(v) for v in x) or 1.0
    off = [abs(u - v) for u, v in zip(x, y) if abs(u - v) > rtol * scale]
    if off and (16 * len(off) > len(x) or max(off) > FLIP * scale):
        sys.exit(f"parameter {i}: max error {max(off):.3g} (scale {scale:.3g}), "
                 f"{len(off)} of {len(x)} elements beyond {rtol:g} of it")
EOF
}

COMMON="--data-dir $I --widths 16 --epochs 5 --max-steps 30 --log-every 1 --threads 1 --seed 5 --quiet"
run_pair() {  # run_pair NAME RTOL OPTIONS...: 1 x 128 against 2 x 64
    local name=$1 rtol=$2; shift 2
    # shellcheck disable=SC2086
    "$NGD" train $COMMON --batch 128 "$@" --log "$D/$name.1.jsonl" --checkpoint "$D/$name.1.ckpt" >"$D/out" 2>&1 ||
        { bad "$name: 1 process failed"; tail -3 "$D/out"; return; }
    # shellcheck disable=SC2086
    timeout 300 $MPI "$NGD" train $COMMON --batch 64 "$@" --log "$D/$name.2.jsonl" --checkpoint "$D/$name.2.ckpt" >"$D/out" 2>&1 ||
        { bad "$name: 2 ranks failed"; tail -5 "$D/out"; return; }
    if msg=$(compare "$D/$name.1.jsonl" "$D/$name.2.jsonl" "$D/$name.1.ckpt" "$D/$name.2.ckpt" "$rtol" 2>&1); then ok
    else bad "$name: 2 x 64 differs from 1 x 128: $msg"; fi
}
fails_cleanly() {
    # a rank that cannot read its data: rank 1 is given a folder without the files (Open MPI's
    # MPMD form); the job ends with rank 1's message and a non-zero exit, well before the timeout
    mkdir -p "$D/empty"
    start=$(date +%s)
    out=$(timeout 120 mpirun --oversubscribe -np 1 "$NGD" train $COMMON --batch 64 --data-dir "$I" \
          --log "$D/f.jsonl" --checkpoint "$D/f.ckpt" : -np 1 "$NGD" train $COMMON --batch 64 --data-dir "$D/empty" \
          --log "$D/f.jsonl" --checkpoint "$D/f.ckpt" 2>&1)
    rc=$?
    secs=$(($(date +%s) - start))
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && ok || bad "failed rank: exit $rc (124: a hang)"
    printf '%s\n' "$out" | grep -q "ngd: error: .*$D/empty" && ok || { bad "failed rank's message"; printf '%s\n' "$out" | tail -5; }
    [ "$secs" -lt 60 ] && ok || bad "failed rank took ${secs}s to end the job"
    # and a checkpoint from it is not half-written: rank 0 never got to write one
    [ ! -e "$D/f.ckpt" ] && ok || bad "a checkpoint appeared"
}
run_pair kfac 1e-4 --optim kfac --T-u 3 --T-i 6
# (--no-factored: every layer from the gradient; by default the wide layers take the batch's
# rows, gathered from both ranks)
run_pair kfac-gradient 1e-4 --optim kfac --no-factored --T-u 3 --T-i 6
run_pair bkfac 1e-4 --optim bkfac --T-u 3 --T-i 6 --rank 8
if [ "$SAN" = 1 ]; then  # the sanitizer build: these two, and a failing rank
    COMMON="$COMMON --max-steps 3"
    fails_cleanly
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
    exit
fi
# gradient accumulation on each rank (--micro-batches: 2 parts of each rank's 64, or of the
# one process's 128): every method takes the global batch's step, IKFAC and the K-FAC family
# included, whose statistics would otherwise add up to another scale
# included, whose statistics would otherwise add up to another scale: 2 ranks x 2 parts of 32
# against one process's whole 128
run_pair ikfac 1e-4 --optim ikfac --T 3
for m in ikfac kfac; do
    o="--optim $m --T 3"; [ $m = kfac ] && o="--optim kfac --T-u 3 --T-i 6"
    # shellcheck disable=SC2086
    if timeout 300 $MPI "$NGD" train $COMMON --batch 64 $o --micro-batches 2 --log "$D/$m-micro.jsonl" \
            --checkpoint "$D/$m-micro.ckpt" >"$D/out" 2>&1; then
        if msg=$(compare "$D/$m.1.jsonl" "$D/$m-micro.jsonl" "$D/$m.1.ckpt" "$D/$m-micro.ckpt" 1e-4 2>&1); then ok
        else bad "$m: 2 ranks x 2 parts of 32 differ from 1 x 128: $msg"; fi
    else bad "$m --micro-batches 2 on 2 ranks failed"; tail -5 "$D/out"; fi
done
run_pair sgd 1e-5 --optim sgd --lr 0.05
run_pair adamw 1e-5 --optim adamw
run_pair singd 1e-4 --optim singd --T 3
run_pair singd-diag 1e-4 --optim singd --structure diagonal --T 3
run_pair rskfac 1e-4 --optim rskfac --T-u 3 --T-i 6 --rank 8
# K-FAC's eigenbasis from the gathered rows of both ranks (--factored; 128 rows pay for the
# 785 x 256 first layer: 128 (256² + 785² + 256·785) < 256·785·(256 + 785))
run_pair kfac-factored 1e-4 --optim kfac --factored --T-u 3 --T-i 6 --widths 256
# SINGD --factored: the rows are each rank's, so 2 ranks take the step through Ĝ; one process
# from the rows (the same preconditioner)
run_pair singd-factored 1e-4 --optim singd --structure dense --factored --T 3 --widths 256
# π-damping: each rank forms the inverse operators from the broadcast decompositions
run_pair kfac-pi-factored 1e-4 --optim kfac --kfac-damping pi --factored --T-u 3 --T-i 6 --widths 256
# every rank's factor work replicated instead of owned and broadcast: the same results
NGD_DIST_SHARE=replicate run_pair kfac-replicate 1e-4 --optim kfac --T-u 3 --T-i 6
# the 2-rank log is rank 0's only, and its summary says what was sent
n=$(grep -c '"type":"summary"' "$D/kfac.2.jsonl"); [ "$n" = 1 ] && ok || bad "2-rank log has $n summaries"
grep '"type":"summary"' "$D/bkfac.2.jsonl" | grep -q '"ranks":2,"comm_bytes_per_step":{"engine":[0-9.e+]*,"optimizer":[1-9]' && ok ||
    bad "the summary records the bytes sent per step"

# resume: 15 steps, then 15 more from rank 0's checkpoint = 30 uninterrupted (bit for bit)
crc() { grep '"type":"summary"' "$1" | tail -1 | sed -n 's/.*"parameters_crc":"\([0-9a-f]*\)".*/\1/p'; }
for opt in "singd --T 4" "bkfac --T-u 3 --T-i 6 --rank 8"; do
    # shellcheck disable=SC2086
    A="$COMMON --batch 64 --optim $opt"
    # shellcheck disable=SC2086
    timeout 300 $MPI "$NGD" train $A --max-steps 15 --checkpoint "$D/r.ckpt" --log "$D/r.jsonl" >"$D/out" 2>&1 || { bad "$opt: first half"; tail -3 "$D/out"; }
    # shellcheck disable=SC2086
    timeout 300 $MPI "$NGD" train $A --max-steps 30 --resume "$D/r.ckpt" --checkpoint "$D/r.ckpt" --log "$D/r.jsonl" >"$D/out" 2>&1 || { bad "$opt: resumed half"; tail -3 "$D/out"; }
    # shellcheck disable=SC2086
    timeout 300 $MPI "$NGD" train $A --max-steps 30 --log "$D/u.jsonl" >"$D/out" 2>&1 || { bad "$opt: uninterrupted"; tail -3 "$D/out"; }
    a=$(crc "$D/r.jsonl"); b=$(crc "$D/u.jsonl")
    [ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "$opt: resumed 2-rank run ($a) != uninterrupted ($b)"
done
# a 2 x 64 checkpoint resumed by one process with the same global batch (1 x 128): allowed,
# and it continues the same run (weights within tolerance of the 2-rank run's)
timeout 300 $MPI "$NGD" train $COMMON --batch 64 --optim kfac --T-u 3 --T-i 6 --max-steps 15 --checkpoint "$D/k.ckpt" --log "$D/k2.jsonl" >"$D/out" 2>&1
# shellcheck disable=SC2086
"$NGD" train $COMMON --batch 128 --optim kfac --T-u 3 --T-i 6 --resume "$D/k.ckpt" --checkpoint "$D/k1.ckpt" --log "$D/k1.jsonl" >"$D/out" 2>&1 &&
    ok || { bad "one process resuming a 2-rank checkpoint"; tail -3 "$D/out"; }
# (the logs' first 15 steps are the 2-rank run's in both)
cat "$D/k2.jsonl" "$D/k1.jsonl" | grep -v '"type":"summary"' | grep -v '"type":"eval"' > "$D/k21.jsonl"
grep -v '"type":"summary"' "$D/kfac.2.jsonl" | grep -v '"type":"eval"' > "$D/k22.jsonl"
if msg=$(compare "$D/k22.jsonl" "$D/k21.jsonl" "$D/kfac.2.ckpt" "$D/k1.ckpt" 1e-4 2>&1); then ok
else bad "2-rank checkpoint resumed by 1 process: $msg"; fi

# ngd eval under mpirun: rank 0 evaluates and prints, once
out=$(timeout 120 $MPI "$NGD" eval --data-dir "$I" --threads 1 --resume "$D/k1.ckpt" 2>&1); rc=$?
n=$(printf '%s\n' "$out" | grep -c "^eval: ")
[ "$rc" -eq 0 ] && [ "$n" = 1 ] && ok || { bad "ngd eval under mpirun: exit $rc, $n eval lines"; printf '%s\n' "$out" | tail -3; }
fails_cleanly
# a usage error every rank finds in the same options is printed once (rank 0), not per rank
out=$(timeout 120 $MPI "$NGD" train --data-dir "$I" --widths 16 --damping -1 --threads 1 2>&1); rc=$?
n=$(printf '%s\n' "$out" | grep -c "ngd: error: --damping must be >= 0")
[ "$rc" -ne 0 ] && [ "$n" = 1 ] && ok || { bad "a usage error under mpirun: exit $rc, printed $n times"; printf '%s\n' "$out" | tail -5; }
# --time-budget: the ranks agree to stop (one may see the budget spent a step before the
# other); the run ends normally, rank 0 alone prints the result line and logs the summary
out=$(timeout 120 $MPI "$NGD" train --data-dir "$I" --widths 16 --epochs 1000 --batch 64 --threads 1 \
      --optim kfac --time-budget 2 --log "$D/tb.jsonl" --checkpoint "$D/tb.ckpt" 2>&1); rc=$?
[ "$rc" -eq 0 ] && ok || { bad "--time-budget under mpirun: exit $rc"; printf '%s\n' "$out" | tail -5; }
n=$(printf '%s\n' "$out" | grep -c "^kfac mlp on fashion-mnist: [0-9]* steps"); [ "$n" = 1 ] && ok || bad "$n result lines (want rank 0's only)"
n=$(grep -c '"type":"summary"' "$D/tb.jsonl"); [ "$n" = 1 ] && ok || bad "--time-budget log has $n summaries"
[ -s "$D/tb.ckpt" ] && ok || bad "--time-budget left no checkpoint"
# SIGTERM to mpirun (which passes it on to the ranks): they agree to stop after the same step,
# rank 0 writes the checkpoint and the summary, and the run resumes from it. Open MPI 4.1's
# mpirun sends SIGCONT, waits odls_base_sigkill_timeout seconds, sends SIGTERM, waits as long
# again, then SIGKILL: by default the ranks have 1 s for the step in progress, the all-reduce,
# a 7 MB checkpoint with two fsyncs and the summary, which a loaded machine took 0.8 s for
# (and sometimes more: the ranks were killed with nothing written). 5 s each way here.
rm -f "$D/s.ckpt" "$D/s.jsonl"
OMPI_MCA_odls_base_sigkill_timeout=5 $MPI "$NGD" train --data-dir "$I" --widths 16 --epochs 1000 \
    --batch 64 --threads 1 --optim kfac --log-every 1 --log "$D/s.jsonl" --checkpoint "$D/s.ckpt" >"$D/s.out" 2>&1 &
mpid=$!
for _ in $(seq 300); do
    n=$(grep -c '"type":"step"' "$D/s.jsonl" 2>/dev/null); [ "${n:-0}" -ge 15 ] && break; sleep 0.1
done
kill -TERM $mpid; wait $mpid
grep -q "training stopped by SIGTERM at step [0-9]*; checkpoint written to $D/s.ckpt" "$D/s.out" && ok ||
    { bad "SIGTERM to mpirun: no orderly stop"; tail -5 "$D/s.out"; }
grep -q '"type":"summary"' "$D/s.jsonl" && ok || bad "SIGTERM to mpirun: no summary"
stopped=$(grep '"type":"summary"' "$D/s.jsonl" | sed -n 's/.*"steps":\([0-9]*\).*/\1/p')
timeout 120 $MPI "$NGD" train --data-dir "$I" --widths 16 --epochs 1000 --batch 64 --threads 1 --optim kfac \
    --max-steps $((${stopped:-0} + 3)) --resume "$D/s.ckpt" --log "$D/s2.jsonl" >"$D/out" 2>&1 && ok ||
    { bad "resume after SIGTERM"; tail -3 "$D/out"; }
grep -q "\"steps\":$((${stopped:-0} + 3))," "$D/s2.jsonl" && ok || bad "resume after SIGTERM did not continue from step $stopped"
# a bad sharing policy is refused clearly
out=$(timeout 60 env NGD_DIST_SHARE=bogus $MPI "$NGD" train $COMMON --batch 64 --log "$D/g.jsonl" 2>&1); rc=$?
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && printf '%s\n' "$out" | grep -q "NGD_DIST_SHARE=bogus is not known" && ok || bad "NGD_DIST_SHARE=bogus: exit $rc"

# ranks given different options (Open MPI's "-np 1 A : -np 1 B") are refused before they
# build anything: other methods, widths or T exchanged buffers of other sizes (a heap
# corruption, an abort) and another --lr or --seed trained apart without a word; what a rank
# may have of its own (--threads, --quiet, --log) is not compared
B="--data-dir $I --widths 16 --epochs 1 --batch 64 --max-steps 2 --threads 1 --log $D/mm.jsonl"
for diff in "--optim singd|--optim kfac" "--widths 16|--widths 32" "--T 10|--T 1" "--lr 1e-3|--lr 1e-1" "--seed 0|--seed 1"; do
    a=${diff%%|*} b=${diff#*|}
    # shellcheck disable=SC2086
    out=$(timeout 120 mpirun --oversubscribe -np 1 "$NGD" train $B $a : -np 1 "$NGD" train $B $b 2>&1); rc=$?
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$(printf '%s\n' "$out" | grep -c "the ranks were given different options")" = 1 ] &&
        ! printf '%s\n' "$out" | grep -qi "smashing\|invalid next\|Segmentation\|free()" && ok ||
        { bad "ranks with $a / $b: exit $rc"; printf '%s\n' "$out" | tail -4; }
done
# shellcheck disable=SC2086
out=$(timeout 120 mpirun --oversubscribe -np 1 "$NGD" train $B --quiet : -np 1 "$NGD" train $B --threads 1 --log "$D/mm1.jsonl" 2>&1); rc=$?
[ "$rc" -eq 0 ] && ok || { bad "ranks differing in --quiet and --log only: exit $rc"; printf '%s\n' "$out" | tail -3; }
# ... and --threads, except where replicated work rounds by thread count: the K-FAC family's
# decompositions replicated on ranks of 1 and 2 threads drifted apart without a word
B2=${B/--threads 1/}
# shellcheck disable=SC2086
out=$(timeout 120 env NGD_DIST_SHARE=replicate mpirun --oversubscribe -np 1 "$NGD" train $B2 --optim kfac --threads 1 : -np 1 "$NGD" train $B2 --optim kfac --threads 2 2>&1); rc=$?
[ "$rc" -eq 2 ] && [ "$(printf '%s\n' "$out" | grep -c "the ranks run different numbers of threads (1 on rank 0)")" = 1 ] && ok ||
    { bad "K-FAC replicated on ranks of 1 and 2 threads: exit $rc"; printf '%s\n' "$out" | tail -3; }
for share in auto owner; do
    # shellcheck disable=SC2086
    out=$(timeout 120 env NGD_DIST_SHARE=$share mpirun --oversubscribe -np 1 "$NGD" train $B2 --optim kfac --threads 1 : -np 1 "$NGD" train $B2 --optim kfac --threads 2 2>&1); rc=$?
    [ "$rc" -eq 0 ] && ok || { bad "K-FAC ($share) on ranks of 1 and 2 threads: exit $rc"; printf '%s\n' "$out" | tail -3; }
done
# shellcheck disable=SC2086
out=$(timeout 120 env NGD_DIST_SHARE=replicate mpirun --oversubscribe -np 1 "$NGD" train $B2 --optim kfac --threads 2 : -np 1 "$NGD" train $B2 --optim kfac --threads 2 2>&1); rc=$?
[ "$rc" -eq 0 ] && ok || { bad "K-FAC replicated on ranks of 2 threads each: exit $rc"; printf '%s\n' "$out" | tail -3; }
# ... and the same data (each may read its own copy): a training set of another size ran an
# epoch of another length and met the others in collectives of other sizes (a stack smash, a
# segfault); a test set of the same size and other images gave an accuracy that was neither's
I2="$D/idx2"; mkdir -p "$I2"
idx_images "$I2/train-images-idx3-ubyte" 640 28 28 1; idx_labels "$I2/train-labels-idx1-ubyte" 640
cp "$I/t10k-"* "$I2/"
I3="$D/idx3"; mkdir -p "$I3"
cp "$I/train-"* "$I3/"
idx_images "$I3/t10k-images-idx3-ubyte" 200 28 28 3; idx_labels "$I3/t10k-labels-idx1-ubyte" 200
cp -r "$I" "$D/idxcopy"
for other in "$I2" "$I3"; do
    # shellcheck disable=SC2086
    out=$(timeout 120 mpirun --oversubscribe -np 1 "$NGD" train $B --optim sgd : -np 1 "$NGD" train $B --optim sgd --data-dir "$other" 2>&1); rc=$?
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$(printf '%s\n' "$out" | grep -c "the ranks read different data")" = 1 ] &&
        ! printf '%s\n' "$out" | grep -qi "smashing\|invalid next\|Segmentation\|free()" && ok ||
        { bad "ranks reading $I / $other: exit $rc"; printf '%s\n' "$out" | tail -4; }
done
# shellcheck disable=SC2086
out=$(timeout 120 mpirun --oversubscribe -np 1 "$NGD" train $B --optim sgd : -np 1 "$NGD" train $B --optim sgd --data-dir "$D/idxcopy" 2>&1); rc=$?
[ "$rc" -eq 0 ] && ok || { bad "ranks reading two copies of one data set: exit $rc"; printf '%s\n' "$out" | tail -3; }
# ... and each must start from the same checkpoint
"$NGD" train $B --max-steps 1 --checkpoint "$D/mm1.ckpt" --quiet >/dev/null 2>&1
"$NGD" train $B --max-steps 1 --seed 9 --checkpoint "$D/mm2.ckpt" --quiet >/dev/null 2>&1
# shellcheck disable=SC2086
out=$(timeout 120 mpirun --oversubscribe -np 1 "$NGD" train $B --batch 32 --resume "$D/mm1.ckpt" : -np 1 "$NGD" train $B --batch 32 --resume "$D/mm2.ckpt" 2>&1); rc=$?
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && printf '%s\n' "$out" | grep -q "the ranks' models differ where the run starts" && ok ||
    { bad "ranks resuming other checkpoints: exit $rc"; printf '%s\n' "$out" | tail -4; }

# a diverged run is said once (rank 0), not by every rank
out=$(timeout 120 $MPI "$NGD" train --data-dir "$I" --widths 16 --epochs 1 --optim sgd --lr 1e30 --max-skips 2 --threads 1 2>&1); rc=$?
[ "$rc" -ne 0 ] && [ "$(printf '%s\n' "$out" | grep -c 'consecutive non-finite steps\|the run diverged')" -eq 1 ] && ok || bad "diverged under mpirun: exit $rc, said $(printf '%s\n' "$out" | grep -c 'consecutive non-finite steps\|the run diverged') times"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
