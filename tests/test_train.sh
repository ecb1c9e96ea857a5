#!/usr/bin/env bash
# test_train.sh — `ngd train` / `ngd eval` as a user meets them: help, usage errors (exit 2),
# missing data (exit 1 + hint), a short real run on a Fashion-MNIST subset that must learn,
# bit-identical resume across an epoch boundary, bad checkpoints, runaway learning rates;
# and the same for the character transformer on the start of Tiny Shakespeare.
# Usage: tests/test_train.sh path/to/ngd
set -u
NGD=${1:?usage: test_train.sh path/to/ngd}
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
expect_rc() {  # expect_rc RC DESC CMD...
    local want=$1 desc=$2; shift 2
    out=$("$@" 2>&1); rc=$?
    if [ "$rc" -eq "$want" ]; then ok; else bad "$desc: exit $rc, want $want"; printf '%s\n' "$out" | tail -5; fi
}
expect_msg() {  # expect_msg TEXT DESC (in $out of the last expect_rc)
    if printf '%s\n' "$out" | grep -qF -- "$1"; then ok; else bad "$2: no '$1' in output"; printf '%s\n' "$out" | tail -3; fi
}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
Q="--quiet --log $D/log.jsonl"

expect_rc 0 "train --help" "$NGD" train --help
expect_msg "--structure" "help lists options"
expect_msg "cnn" "help lists models"
expect_rc 2 "unknown option" "$NGD" train --frobnicate
expect_rc 2 "unknown plain-parameter rule" "$NGD" train --param-optim lamb
expect_msg "sgd or adamw" "plain-parameter rule choices"
expect_rc 2 "bad plain-parameter lr" "$NGD" train --param-optim adamw --param-lr -1
expect_msg "plain parameters: lr" "plain-parameter lr message"
expect_rc 2 "bad number" "$NGD" train --lr abc
expect_msg "--lr: 'abc' is not a number" "bad number message"
expect_rc 2 "bad method" "$NGD" train --optim adam
expect_msg "unknown method 'adam'" "bad method message"
expect_rc 2 "bad clip" "$NGD" train --optim kfac --clip sometimes
expect_msg "rms, kl, none" "bad clip lists the choices"
expect_rc 2 "bad structure" "$NGD" train --structure nope
expect_rc 2 "bad data set" "$NGD" train --data imagenet
expect_rc 2 "bad model" "$NGD" train --model resnet999 --subset 100 $Q
expect_msg "unknown model 'resnet999'" "bad model message"
expect_rc 2 "negative lr" "$NGD" train --lr -1
expect_msg "lr must be finite and >= 0" "config validation message"
expect_rc 1 "missing data" "$NGD" train --data-dir "$D/nowhere" $Q
expect_msg "$D/nowhere" "missing data names the path"
expect_msg "hint:" "missing data gives a hint"
expect_rc 2 "eval without --resume" "$NGD" eval

# small IDX sets written here: a test set of another image size than the training set must be
# refused before training, naming the file and both shapes (56 x 56 once overflowed the
# evaluation's batch buffer; 27 x 27 gave a wrong accuracy)
be32() { local v=$1; printf "\\$(printf %03o $(((v >> 24) & 255)))\\$(printf %03o $(((v >> 16) & 255)))\\$(printf %03o $(((v >> 8) & 255)))\\$(printf %03o $((v & 255)))"; }
idx_images() {  # idx_images FILE N H W: random pixels
    { printf '\000\000\010\003'; be32 "$2"; be32 "$3"; be32 "$4"; head -c $(($2 * $3 * $4)) /dev/urandom; } > "$1"
}
idx_labels() {  # idx_labels FILE N: labels i mod 10 (N a multiple of 10)
    local s=""; for ((i = 0; i < $2 / 10; i++)); do s+='\000\001\002\003\004\005\006\007\010\011'; done
    { printf '\000\000\010\001'; be32 "$2"; printf "$s"; } > "$1"
}
for hw in 56 27; do
    I="$D/idx$hw"; mkdir -p "$I"
    idx_images "$I/train-images-idx3-ubyte" 200 28 28; idx_labels "$I/train-labels-idx1-ubyte" 200
    idx_images "$I/t10k-images-idx3-ubyte" 40 $hw $hw; idx_labels "$I/t10k-labels-idx1-ubyte" 40
    for model in mlp cnn; do
        expect_rc 1 "$model: $hw x $hw test images beside 28 x 28" "$NGD" train --model $model --max-steps 3 --batch 16 --data-dir "$I" $Q
        expect_msg "$I/t10k-images-idx3-ubyte: images of 1 x $hw x $hw, but the training images $I/train-images-idx3-ubyte are 1 x 28 x 28" "$hw x $hw test images message"
    done
done
idx_images "$D/idx56/t10k-images-idx3-ubyte" 40 28 28  # now they match: the run works
expect_rc 0 "IDX sets written here" "$NGD" train --max-steps 3 --batch 16 --data-dir "$D/idx56" $Q

# a short real run: the loss falls and accuracy beats chance (10%) by a wide margin
expect_rc 0 "short training run" "$NGD" train --subset 2000 --widths 128 --epochs 2 --batch 50 --lr 0.01 --damping 0.1 $Q
acc=$(printf '%s\n' "$out" | sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p')
awk -v a="${acc:-0}" 'BEGIN{exit !(a > 60)}' && ok || bad "test accuracy ${acc:-?}% after a short run (want > 60%)"
first=$(grep '"type":"step"' "$D/log.jsonl" | head -1 | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/')
last=$(grep '"type":"step"' "$D/log.jsonl" | tail -1 | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/')
awk -v f="$first" -v l="$last" 'BEGIN{exit !(l < 0.7 * f)}' && ok || bad "training loss $first -> $last did not fall"
grep -q '"type":"summary"' "$D/log.jsonl" && ok || bad "log has no summary record"
grep -q '"trace_K"' "$D/log.jsonl" && ok || bad "log has no per-layer health"

# the K-FAC family from the command line: every method learns on the same short run
for opt in kfac rskfac srekfac bkfac brkfac brckfac; do
    expect_rc 0 "$opt short run" "$NGD" train --optim $opt --subset 2000 --widths 128 --epochs 2 --batch 50 --T-u 2 --T-i 10 --rank 32 --threads 1 $Q
    acc=$(printf '%s\n' "$out" | sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p')
    awk -v a="${acc:-0}" 'BEGIN{exit !(a > 60)}' && ok || bad "$opt: test accuracy ${acc:-?}% after a short run (want > 60%)"
done
grep -q '"rank_A"' "$D/log.jsonl" && ok || bad "K-FAC log has no ranks in its health"
expect_rc 0 "bkfac --factored" "$NGD" train --optim bkfac --factored --subset 2000 --widths 128 --epochs 2 --batch 50 --T-u 2 --T-i 10 --rank 32 --threads 1 $Q
acc=$(printf '%s\n' "$out" | sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p')
awk -v a="${acc:-0}" 'BEGIN{exit !(a > 60)}' && ok || bad "bkfac --factored: test accuracy ${acc:-?}%"
# conv layers (KFC statistics; B-KFAC puts them on the RSVD track) in a small CNN
for opt in kfac bkfac; do
    expect_rc 0 "cnn $opt" "$NGD" train --model cnn --widths 8,8 --optim $opt --lr 0.2 --damping 0.01 --subset 2000 --epochs 2 --threads 1 $Q
    acc=$(printf '%s\n' "$out" | sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p')
    awk -v a="${acc:-0}" 'BEGIN{exit !(a > 50)}' && ok || bad "cnn $opt: test accuracy ${acc:-?}% (want > 50%)"
done
expect_rc 2 "kfac --factored" "$NGD" train --optim kfac --factored --subset 500 $Q
expect_msg "per-factor" "kfac --factored message"

# resume == no stop, bit for bit (8 steps per epoch: the resume crosses an epoch boundary;
# for the K-FAC family also statistics, refresh and Brand steps, and tracks decided at run time)
K="--T-u 2 --T-i 4 --rank 16 --kfac-seed 5"
for opt in singd adamw kfac bkfac brckfac; do
    A="--subset 512 --widths 64 --batch 64 --seed 3 --epochs 3 --optim $opt $K $Q"
    "$NGD" train $A --max-steps 12 --checkpoint "$D/full.ckpt" >/dev/null 2>&1
    "$NGD" train $A --max-steps 5 --checkpoint "$D/half.ckpt" >/dev/null 2>&1
    "$NGD" train $A --max-steps 12 --resume "$D/half.ckpt" --checkpoint "$D/res.ckpt" >/dev/null 2>&1
    c1=$("$NGD" eval --subset 512 --widths 64 --optim $opt $K --resume "$D/full.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
    c2=$("$NGD" eval --subset 512 --widths 64 --optim $opt $K --resume "$D/res.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
    [ -n "$c1" ] && [ "$c1" = "$c2" ] && ok || bad "$opt: resumed run ($c2) differs from uninterrupted ($c1)"
done

# SIGTERM / SIGINT: the step in progress finishes, the checkpoint is written, the run says how
# to resume and exits 128 + the signal; that checkpoint resumes bit-identically
A="--subset 512 --widths 64 --batch 64 --seed 3 --epochs 1000 --threads 1 $Q"
wait_for_step() {  # wait_for_step LOG PID: until LOG has a step record (1: the run ended first)
    for _ in $(seq 600); do
        grep -q '"type":"step"' "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
rm -f "$D/sig.jsonl"
"$NGD" train $A --log-every 1 --log "$D/sig.jsonl" --checkpoint "$D/sig.ckpt" > "$D/sig.out" 2>&1 &
pid=$!
wait_for_step "$D/sig.jsonl" $pid && ok || bad "SIGTERM: the run never logged a step"
kill -TERM $pid; wait $pid; rc=$?; out=$(cat "$D/sig.out")
[ "$rc" -eq 143 ] && ok || bad "SIGTERM: exit $rc, want 143"
expect_msg "ngd: training stopped by SIGTERM at step" "SIGTERM message"
expect_msg "--resume $D/sig.ckpt" "SIGTERM: how to resume"
s=$(printf '%s\n' "$out" | sed -n 's/.*stopped by SIGTERM at step \([0-9]*\).*/\1/p')
if [ -s "$D/sig.ckpt" ] && [ -n "$s" ]; then
    n=$((s + 5))
    "$NGD" train $A --max-steps $n --log "$D/t.jsonl" --resume "$D/sig.ckpt" --checkpoint "$D/sig.ckpt" >/dev/null 2>&1
    "$NGD" train $A --max-steps $n --log "$D/t.jsonl" --checkpoint "$D/nosig.ckpt" >/dev/null 2>&1
    c1=$("$NGD" eval --subset 512 --widths 64 --resume "$D/nosig.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
    c2=$("$NGD" eval --subset 512 --widths 64 --resume "$D/sig.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
    [ -n "$c1" ] && [ "$c1" = "$c2" ] && ok || bad "resumed after SIGTERM at step $s ($c2) differs from uninterrupted to step $n ($c1)"
else
    bad "SIGTERM: no checkpoint $D/sig.ckpt or no step in the message"
fi
# SIGINT: 130 (job control on, or the shell would start the job with SIGINT ignored)
set -m
rm -f "$D/sig.jsonl"
"$NGD" train $A --log-every 1 --log "$D/sig.jsonl" > "$D/sig.out" 2>&1 &
pid=$!
set +m
wait_for_step "$D/sig.jsonl" $pid && ok || bad "SIGINT: the run never logged a step"
kill -INT $pid; wait $pid; rc=$?; out=$(cat "$D/sig.out")
[ "$rc" -eq 130 ] && ok || bad "SIGINT: exit $rc, want 130"
expect_msg "ngd: training stopped by SIGINT at step" "SIGINT message"
expect_msg "no --checkpoint" "SIGINT without a checkpoint says so"
# a second signal exits at once: the run is held in a write to a log nobody reads (a FIFO)
mkfifo "$D/slow.fifo"
"$NGD" train $A --log-every 1 --log "$D/slow.fifo" > "$D/sig.out" 2>&1 &
pid=$!
exec 3< "$D/slow.fifo"
held=0
for _ in $(seq 400); do
    case "$(cat /proc/$pid/wchan 2>/dev/null)" in *pipe_write*) held=1; break ;; esac
    sleep 0.05
done
if [ $held -eq 1 ]; then
    kill -TERM $pid; sleep 0.3
    kill -0 $pid 2>/dev/null && ok || bad "the first signal did not wait for the step in progress"
    kill -TERM $pid; wait $pid; rc=$?; out=$(cat "$D/sig.out")
    [ "$rc" -eq 143 ] && ok || bad "second SIGTERM: exit $rc, want 143"
    expect_msg "second signal: exiting at once" "second signal message"
else
    echo "SKIP: /proc/$pid/wchan shows no blocked pipe write: the second signal not tested"
    kill -KILL $pid; wait $pid
fi
exec 3<&-

# bad checkpoints: another shape, corrupt, truncated, foreign
expect_rc 1 "checkpoint of another width" "$NGD" eval --subset 512 --optim brckfac $K --widths 32 --resume "$D/full.ckpt"
expect_msg "another shape" "width mismatch message"
expect_rc 1 "checkpoint of another optimizer" "$NGD" eval --subset 512 --widths 64 --optim sgd --resume "$D/full.ckpt"
head -c 1000 "$D/full.ckpt" > "$D/trunc.ckpt"
expect_rc 1 "truncated checkpoint" "$NGD" eval --subset 512 --widths 64 --resume "$D/trunc.ckpt"
expect_msg "checksum mismatch" "truncated checkpoint message"
echo "not a checkpoint at all" > "$D/foreign.ckpt"
expect_rc 1 "foreign checkpoint" "$NGD" eval --subset 512 --widths 64 --resume "$D/foreign.ckpt"
expect_msg "not an ngd training checkpoint" "foreign checkpoint message"
expect_rc 1 "missing checkpoint" "$NGD" eval --subset 512 --resume "$D/none.ckpt"

# --checkpoint renames a file onto its path: a FIFO, a symbolic link or a device node there
# must be refused before the data is loaded (no log written), and left as it was; so must a
# --log that is the checkpoint file (same path, or a hard link to it)
C="--subset 256 --widths 16 --batch 64 --max-steps 2 --quiet"
mkfifo "$D/fifo"; echo keep > "$D/target"; ln -s target "$D/link"; ln "$D/target" "$D/hard"
for tgt in fifo link; do
    rm -f "$D/t.jsonl"
    expect_rc 1 "--checkpoint onto a $tgt" "$NGD" train $C --log "$D/t.jsonl" --checkpoint "$D/$tgt"
    expect_msg "--checkpoint $D/$tgt: is a" "$tgt target message"
    [ ! -e "$D/t.jsonl" ] && ok || bad "--checkpoint onto a $tgt: training started (log written)"
done
[ -p "$D/fifo" ] && [ -L "$D/link" ] && [ "$(cat "$D/target")" = keep ] && ok || bad "a refused --checkpoint target was replaced"
if mknod "$D/dev" c 1 3 2>/dev/null; then  # a device node like /dev/null, in our own folder
    expect_rc 1 "--checkpoint onto a device node" "$NGD" train $C --log "$D/t.jsonl" --checkpoint "$D/dev"
    expect_msg "is a character device, not a regular file" "device target message"
    [ -c "$D/dev" ] && ok || bad "the device node was replaced"
else
    echo "SKIP: mknod not permitted: --checkpoint onto a device node not tested"
fi
expect_rc 2 "--log equal to --checkpoint" "$NGD" train $C --log "$D/same.ckpt" --checkpoint "$D/same.ckpt"
expect_msg "--log $D/same.ckpt is the --checkpoint file" "log = checkpoint message"
expect_rc 2 "--log a hard link of --checkpoint" "$NGD" train $C --log "$D/hard" --checkpoint "$D/target"
expect_rc 2 "--log equal to --resume" "$NGD" train $C --log "$D/full.ckpt" --resume "$D/full.ckpt"
[ "$(cat "$D/target")" = keep ] && ok || bad "a refused --log was written"
# resuming from the --checkpoint path itself is the normal use
expect_rc 0 "checkpoint to resume from" "$NGD" train $C --log "$D/t.jsonl" --checkpoint "$D/own.ckpt"
expect_rc 0 "--resume PATH --checkpoint PATH" "$NGD" train $C --max-steps 4 --log "$D/t.jsonl" --resume "$D/own.ckpt" --checkpoint "$D/own.ckpt"

# a run killed mid-write (kill -9) leaves run.ckpt.tmp.PID: the next checkpoint of that path
# removes it once PID is dead, and nothing else
(exit 0) & dead=$!; wait $dead
echo stale > "$D/own.ckpt.tmp.$dead"; echo keep > "$D/own.ckpt.tmp.$$"; echo keep > "$D/own.ckpt.tmp.${dead}x"
expect_rc 0 "checkpoint beside a stale temporary" "$NGD" train $C --log "$D/t.jsonl" --checkpoint "$D/own.ckpt"
[ ! -e "$D/own.ckpt.tmp.$dead" ] && ok || bad "the stale temporary own.ckpt.tmp.$dead was not removed"
[ -e "$D/own.ckpt.tmp.$$" ] && [ -e "$D/own.ckpt.tmp.${dead}x" ] && ok || bad "a live process's or another name's temporary was removed"
rm -f "$D/own.ckpt.tmp.$$" "$D/own.ckpt.tmp.${dead}x"

# the checkpoint's folder is checked before the data is loaded (not at the first checkpoint,
# an epoch later), and every checkpoint error names the user's path, not the temporary file
rm -f "$D/t.jsonl"
expect_rc 1 "--checkpoint in a missing folder" "$NGD" train $C --log "$D/t.jsonl" --checkpoint "$D/nodir/run.ckpt"
expect_msg "--checkpoint $D/nodir/run.ckpt: folder $D/nodir: No such file or directory" "missing folder message"
expect_msg "hint:" "missing folder hint"
[ ! -e "$D/t.jsonl" ] && ok || bad "--checkpoint in a missing folder: training started (log written)"
expect_rc 1 "--checkpoint under a file" "$NGD" train $C --log "$D/t.jsonl" --checkpoint "$D/target/run.ckpt"
expect_msg "--checkpoint $D/target/run.ckpt: Not a directory" "file as a folder message"
if [ "$(id -u)" != 0 ]; then  # root may write anywhere
    mkdir "$D/ro"; chmod 555 "$D/ro"
    expect_rc 1 "--checkpoint in a read-only folder" "$NGD" train $C --log "$D/t.jsonl" --checkpoint "$D/ro/run.ckpt"
    expect_msg "--checkpoint $D/ro/run.ckpt: folder $D/ro is not writable" "read-only folder message"
fi
# the folder vanishes during the run: the next checkpoint fails, naming the user's path
mkdir "$D/gone"
"$NGD" train $C --max-steps 0 --epochs 100000 --checkpoint-every 1 --log "$D/t.jsonl" --checkpoint "$D/gone/run.ckpt" > "$D/gone.out" 2>&1 &
pid=$!
for _ in $(seq 300); do [ -e "$D/gone/run.ckpt" ] && break; sleep 0.05; done
rm -rf "$D/gone"
wait $pid; rc=$?; out=$(cat "$D/gone.out")
[ "$rc" -eq 1 ] && ok || bad "checkpoint folder removed mid-run: exit $rc, want 1"
expect_msg "ngd: error: --checkpoint $D/gone/run.ckpt: " "mid-run checkpoint error names the path"

# output that cannot be written is an error, not a silent exit 0: a log on a full disk
# (/dev/full) stops the run at its first record; so does stdout on one, at exit
if [ -w /dev/full ]; then
    expect_rc 1 "--log /dev/full" "$NGD" train $C --log /dev/full
    expect_msg "ngd: error: --log /dev/full: No space left on device" "full log message"
    expect_rc 1 "--log /dev/full, step records" "$NGD" train $C --max-steps 50 --log-every 1 --log /dev/full
    expect_msg "ngd: error: --log /dev/full: No space left on device" "full log message, step records"
    [ "$(printf '%s\n' "$out" | grep -c "^ngd: error:")" -eq 1 ] && ok || bad "a full log is reported more than once"
    out=$("$NGD" train $C --log "$D/t.jsonl" 2>&1 >/dev/full); rc=$?
    [ "$rc" -eq 1 ] && ok || bad "train > /dev/full: exit $rc, want 1"
    expect_msg "ngd: error: standard output: No space left on device" "train > /dev/full message"
    out=$("$NGD" eval --subset 256 --widths 16 --batch 64 --resume "$D/own.ckpt" 2>&1 >/dev/full); rc=$?
    [ "$rc" -eq 1 ] && ok || bad "eval > /dev/full: exit $rc, want 1"
else
    echo "SKIP: no /dev/full: write errors not tested"
fi

# a runaway learning rate: non-finite steps are skipped, then the run stops with a message
expect_rc 1 "divergence stops" "$NGD" train --subset 512 --widths 32 --batch 64 --optim sgd --lr 1e30 --max-skips 3 $Q
expect_msg "consecutive non-finite steps" "divergence message"

# text: chargpt on the first 100,000 characters of Tiny Shakespeare (skipped without the file);
# one thread: the model is too small to gain from two, and a busy machine makes them slow
expect_rc 2 "chargpt on image data" "$NGD" train --model chargpt $Q
expect_msg "cannot train on" "model/data mismatch message"
expect_rc 2 "image model on text" "$NGD" train --data shakespeare --model mlp $Q
expect_rc 1 "missing text" "$NGD" train --data shakespeare --data-dir "$D/nowhere" $Q
expect_msg "$D/nowhere/input.txt" "missing text names the path"
expect_msg "hint:" "missing text gives a hint"
SHK=$(cd "$(dirname "$0")/../.." && pwd)/shared/data/tinyshakespeare
if [ -f "$SHK/input.txt" ]; then
    # the unigram baseline: entropy (nats) of the character frequencies of that text
    uni=$(head -c 100000 "$SHK/input.txt" | od -An -v -tu1 |
          awk '{for (i = 1; i <= NF; i++) c[$i]++; n += NF} END {for (k in c) {p = c[k] / n; h -= p * log(p)}; printf "%.4f", h}')
    S="--data shakespeare --data-dir $SHK --subset 100000 --widths 32,1,2 --context 16 --batch 32 --threads 1"
    expect_rc 0 "short text run" "$NGD" train $S --max-steps 150 --lr 0.01 --damping 0.01 $Q
    vl=$(grep '"type":"eval"' "$D/log.jsonl" | tail -1 | sed 's/.*"test_loss":\([0-9.e+-]*\).*/\1/')
    awk -v v="${vl:-99}" -v u="$uni" 'BEGIN{exit !(v < u - 0.3)}' && ok || bad "validation loss ${vl:-?} not below the unigram baseline $uni - 0.3"
    expect_msg "sample (200 characters" "text run prints a sample"
    expect_rc 0 "text run, reduce" "$NGD" train $S --max-steps 20 --kfac-approx reduce $Q
    # resume == no stop, bit for bit (17 steps per epoch on 5,000 characters: crosses one)
    expect_rc 0 "text run, AdamW plain parameters" "$NGD" train $S --max-steps 150 --lr 0.01 --damping 0.01 --param-optim adamw --param-lr 0.003 $Q
    vl=$(grep '"type":"eval"' "$D/log.jsonl" | tail -1 | sed 's/.*"test_loss":\([0-9.e+-]*\).*/\1/')
    awk -v v="${vl:-99}" -v u="$uni" 'BEGIN{exit !(v < u - 0.3)}' && ok || bad "--param-optim adamw: validation loss ${vl:-?} not below $uni - 0.3"
    grep -q '"param_optim":"adamw","param_lr":0.003' "$D/log.jsonl" && ok || bad "summary lacks the plain parameters' rule"
    for opt in singd adamw "singd --param-optim adamw"; do
        A="--data shakespeare --data-dir $SHK --subset 5000 --widths 16,1,2 --context 16 --batch 16 --seed 3 --epochs 3 --optim $opt --threads 1 $Q"
        E="--data shakespeare --data-dir $SHK --subset 5000 --widths 16,1,2 --context 16 --batch 16 --optim $opt --threads 1"
        "$NGD" train $A --max-steps 24 --checkpoint "$D/tfull.ckpt" >/dev/null 2>&1
        "$NGD" train $A --max-steps 10 --checkpoint "$D/thalf.ckpt" >/dev/null 2>&1
        "$NGD" train $A --max-steps 24 --resume "$D/thalf.ckpt" --checkpoint "$D/tres.ckpt" >/dev/null 2>&1
        c1=$("$NGD" eval $E --resume "$D/tfull.ckpt" 2>&1 | sed -n 's/^eval:.*crc \([0-9a-f]*\).*/\1/p')
        c2=$("$NGD" eval $E --resume "$D/tres.ckpt" 2>&1 | sed -n 's/^eval:.*crc \([0-9a-f]*\).*/\1/p')
        [ -n "$c1" ] && [ "$c1" = "$c2" ] && ok || bad "chargpt $opt: resumed run ($c2) differs from uninterrupted ($c1)"
    done
    expect_rc 1 "text checkpoint of another context" "$NGD" eval $E --context 8 --resume "$D/tfull.ckpt"
    expect_msg "another shape" "context mismatch message"
else
    echo "SKIP: no $SHK/input.txt: text training runs not tested"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
