#!/usr/bin/env bash
# test_train.sh — `ngd train` / `ngd eval` as a user meets them: help, usage errors (exit 2),
# missing data (exit 1 + hint), a short real run on a Fashion-MNIST subset that must learn,
# bit-identical resume across an epoch boundary, bad checkpoints, runaway learning rates;
# and the same for the character transformer on the start of Tiny Shakespeare.
# Usage: tests/test_train.sh path/to/ngd
set -u
NGD=${1:?usage: test_train.sh path/to/ngd}
# the signal tests send SIGINT: a shell started with SIGINT ignored (nohup, a background job)
# cannot take it back, so the script runs again with its default action restored
ign=$(sed -n 's/^SigIgn:[[:space:]]*//p' /proc/$$/status 2>/dev/null)
if [ -n "$ign" ] && [ $((0x$ign & 2)) -ne 0 ] && [ -z "${NGD_TEST_SIGINT_RESET:-}" ]; then
    exec env NGD_TEST_SIGINT_RESET=1 python3 -c 'import os, signal, sys
for s in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):  # (Python ignores the other two)
    signal.signal(s, signal.SIG_DFL)
os.execvp("bash", ["bash"] + sys.argv[1:])' "$0" "$@"
fi
. "$(dirname "$0")/lib.sh"
to_v1() {  # to_v1 V5 V1 [METHOD]: the checkpoint V5 (or V4, V3, V2) in version 1's layout (no
           # widths, subset, context, batch, precision, epochs after the method, no log record
           # sums after the wall time; METHOD instead of its name)
    local f=$1 off=16 k len m=() n ver
    n=$(stat -c %s "$f")
    ver=$(od -An -tu8 -j 8 -N8 "$f" | tr -d ' ')
    for k in 1 2 3; do  # model, data, method: u64 length + bytes
        len=$(od -An -tu8 -j "$off" -N8 "$f" | tr -d ' ')
        m+=("$off" "$len")
        off=$((off + 8 + len))
    done
    local nw; nw=$(od -An -tu8 -j "$off" -N8 "$f" | tr -d ' ')
    local rest=$((off + 8 + 8 * nw + 24))
    [ "$ver" -ge 3 ] && rest=$((rest + 8))  # the precision
    [ "$ver" -ge 5 ] && rest=$((rest + 8))  # the epochs
    {
        head -c 8 "$f"; printf '\001\000\000\000\000\000\000\000'
        if [ -n "${3:-}" ]; then
            head -c "${m[4]}" "$f" | tail -c +17
            printf "\\$(printf %03o ${#3})\000\000\000\000\000\000\000%s" "$3"
        else head -c "$off" "$f" | tail -c +17; fi
        if [ "$ver" -ge 4 ]; then  # step, epoch, skips, wall; then past the 3 record sums
            head -c $((rest + 32)) "$f" | tail -c +$((rest + 1))
            head -c $((n - 4)) "$f" | tail -c +$((rest + 57))
        else head -c $((n - 4)) "$f" | tail -c +$((rest + 1)); fi
    } > "$2.body"
    { cat "$2.body"; gzip -c "$2.body" | tail -c 8 | head -c 4; } > "$2"  # gzip's trailer: CRC-32
    rm -f "$2.body"
}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
Q="--quiet --log $D/log.jsonl"

expect_rc 0 "train --help" "$NGD" train --help
expect_msg "--structure" "help lists options"
expect_msg "cnn" "help lists models"
expect_rc 2 "unknown option" "$NGD" train --frobnicate
expect_msg "ngd: error: unknown option '--frobnicate'" "unknown option message in ngd's style"
expect_msg "hint: run 'ngd train --help'" "unknown option hint"
printf '%s\n' "$out" | grep -q "unrecognized" && bad "getopt's own message printed" || ok
expect_rc 2 "option without its value" "$NGD" train --lr
expect_msg "option '--lr' needs a value" "missing value message"
expect_rc 2 "flag given a value" "$NGD" train --quiet=yes
expect_msg "option '--quiet' takes no value" "flag with a value message"
expect_rc 2 "ambiguous option" "$NGD" train --ep 3
expect_msg "option '--ep' is ambiguous: --eps, --epochs" "ambiguous option message"
expect_rc 2 "eval unknown option" "$NGD" eval --frobnicate
expect_msg "hint: run 'ngd eval --help'" "eval unknown option hint"
expect_rc 2 "K-FAC negative damping" "$NGD" train --optim kfac --damping -1 $Q
expect_msg "--damping must be >= 0" "validation names the option"
printf '%s\n' "$out" | grep -q "kfac\.damping_rel" && bad "validation message names the field kfac.damping_rel" || ok
expect_rc 2 "K-FAC brand-mult" "$NGD" train --optim brkfac --brand-mult 2 $Q
expect_msg "--brand-mult must be 1" "brand-mult message names the option"
expect_rc 2 "unknown plain-parameter rule" "$NGD" train --param-optim lamb
expect_msg "sgd or adamw" "plain-parameter rule choices"
expect_rc 2 "bad plain-parameter lr" "$NGD" train --model cnn --param-optim adamw --param-lr -1
expect_msg "plain parameters: lr" "plain-parameter lr message"
expect_rc 2 "bad number" "$NGD" train --lr abc
expect_msg "--lr: 'abc' is not a number" "bad number message"
# numbers are plain decimals, read whole: no empty value, hex, inf/nan, spaces or '+' counts
for bad in "--lr=" "--lr 0x10" "--lr inf" "--lr nan" "--lr ' 0.1'" "--lr 1e" "--lr ." "--damping 1,5"; do
    eval "set -- $bad"
    expect_rc 2 "$bad" "$NGD" train "$@" $Q
    expect_msg "is not a number" "$bad message"
done
for bad in "--subset ' 500'" "--subset +500" "--epochs 1.5" "--seed -1" "--batch 1e2"; do
    eval "set -- $bad"
    expect_rc 2 "$bad" "$NGD" train "$@" $Q
    expect_msg "is not a whole number" "$bad message"
done
expect_rc 2 "--lr 1e39 (beyond float)" "$NGD" train --lr 1e39 $Q
expect_msg "--lr: '1e39' is out of range" "--lr 1e39 message"
expect_rc 2 "--eps 1e-50 (below float)" "$NGD" train --optim adamw --eps 1e-50 $Q
expect_msg "--eps: '1e-50' is out of range" "--eps 1e-50 message"
expect_rc 2 "--subset 2^64" "$NGD" train --subset 18446744073709551616 $Q
expect_msg "is too large" "--subset 2^64 message"
expect_rc 0 "plain decimals are read" "$NGD" train --lr .5 --momentum -0 --weight-decay 1E-3 --damping 2.e-2 --subset 007 --help
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
# out-of-range counts and times: a message naming the option and its range, never silence
for bad in "--batch 0|--batch must be a whole number >= 1" "--context 0|--context must be a whole number >= 1" \
           "--threads 0|--threads must be a whole number in [1, 1024]" "--log-every 0|--log-every must be a whole number >= 1" \
           "--max-skips 0|--max-skips must be a whole number >= 1" "--time-budget -1|--time-budget must be >= 0 seconds"; do
    # shellcheck disable=SC2086
    expect_rc 2 "${bad%%|*}" "$NGD" train ${bad%%|*} $Q
    expect_msg "${bad#*|}" "${bad%%|*} message"
done
# an option the chosen method would ignore is refused, naming the methods that use it; an
# accepted one gets as far as the (missing) data: exit 1
for bad in "--optim sgd --rank 5|--rank is used only by rskfac, srekfac, bkfac, brkfac, brckfac, not by sgd" \
           "--optim kfac --rank 5|--rank is used only by rskfac, srekfac, bkfac, brkfac, brckfac, not by kfac" \
           "--optim singd --rho 0.9|--rho is used only by kfac, rskfac, srekfac, bkfac, brkfac, brckfac" \
           "--optim singd --clip kl|--clip is used only by kfac," "--optim adamw --T-u 3|--T-u is used only by kfac," \
           "--optim kfac --T 3|--T is used only by singd, ingd, ikfac, not by kfac" \
           "--optim sgd --structure diagonal|--structure is used only by singd, ikfac, not by sgd" \
           "--optim ingd --structure diagonal|--structure is used only by singd, ikfac, not by ingd" \
           "--optim ingd --kfac-like|--kfac-like is used only by singd, not by ingd" \
           "--optim kfac --lr-cov 0.1|--lr-cov is used only by singd, ingd, ikfac" \
           "--optim ikfac --alpha1 0.3|--alpha1 is used only by singd, ingd, not by ikfac" \
           "--kfac-like --alpha1 0.3|--alpha1 is not used with --kfac-like" \
           "--optim sgd --beta1 0.8|--beta1 is used only by adamw, not by sgd" \
           "--optim kfac --eps 1e-6|--eps is used only by adamw" \
           "--optim adamw --momentum 0.9|--momentum is not used by adamw" \
           "--optim sgd --damping 0.1|--damping is not used by sgd" \
           "--optim bkfac --corr-frac 0.3|--corr-frac is used only by brckfac, not by bkfac" \
           "--optim rskfac --brand-rank 8|--brand-rank is used only by bkfac, brkfac, brckfac" \
           "--optim srekfac --kfac-damping pi|--kfac-damping is used only by kfac, not by srekfac" \
           "--context 16|--context is for text models" "--checkpoint-every 5|--checkpoint-every needs --checkpoint" \
           "--structure diagonal --factored|--factored is for SINGD's dense factors" \
           "--optim kfac --factored --no-factored|--factored and --no-factored contradict each other" \
           "--optim sgd --no-factored|--no-factored is not used by sgd" \
           "--structure diagonal --no-factored|--no-factored is for SINGD's dense factors" \
           "--optim kfac --clip none --clip-kappa 0.5|--clip-kappa is not used with --clip none" \
           "--momentum 0.99999999|--momentum: '0.99999999' rounds to 1 in float32" \
           "--optim kfac --weight-decay 0 --wd-start 5|--wd-start is not used with --weight-decay 0" \
           "--official-blockdiag|--official-blockdiag is for block-diagonal factors" \
           "--data shakespeare --augment|--augment is for image data" \
           "--param-optim adamw|the model has no plain parameters" "--kfac-approx reduce|--kfac-approx is for convolutions"; do
    # shellcheck disable=SC2086
    expect_rc 2 "${bad%%|*}" "$NGD" train ${bad%%|*} --data-dir "$D/nowhere" $Q
    expect_msg "${bad#*|}" "${bad%%|*} message"
done
for good in "--model cnn --optim singd --beta1 0.8 --param-optim adamw" "--model cnn --optim adamw --momentum 0.9 --param-optim sgd" \
            "--optim brckfac --corr-frac 0.3 --rank 8 --brand-rank 4" "--optim rskfac --rank 5 --tail min_kept --kfac-seed 3" \
            "--optim kfac --kfac-damping pi --clip kl" "--optim ikfac --structure diagonal --damping 0" \
            "--optim ingd --alpha1 0.9 --lr-cov 0.1" "--structure block30diagonal --official-blockdiag" \
            "--optim kfac --factored" "--optim bkfac --no-factored" "--structure dense --factored"; do
    # shellcheck disable=SC2086
    expect_rc 1 "$good (accepted)" "$NGD" train $good --data-dir "$D/nowhere" $Q
done
# the log is a file (not "-"), and a word where a count goes gets the option's range
expect_rc 2 "--log -" "$NGD" train --data-dir "$D/nowhere" --quiet --log -
expect_msg "--log -: the log is written to a file, not to the standard output" "--log - is refused"
[ ! -e ./- ] && ok || bad "--log - made a file named '-'"
expect_rc 2 "--batch -1" "$NGD" train --batch -1 $Q
expect_msg "hint: give a whole number >= 1 (digits only)" "--batch -1 hints the range of --batch"
# SINGD's damping is a damping (>= 0) and α1 a momentum coefficient in [0, 1); a widths list
# has no empty entries
for bad in "--damping -1|--damping must be >= 0" "--optim ingd --damping -0.001|--damping must be >= 0" \
           "--optim ikfac --damping -1|--damping must be >= 0" "--alpha1 1|--alpha1 must be in [0, 1)" \
           "--lr-cov -0.1|--lr-cov must be finite and >= 0" \
           "--widths ,|--widths ','" "--widths 64,,32|--widths '64,,32'" "--widths 64,|--widths '64,'"; do
    # shellcheck disable=SC2086
    expect_rc 2 "${bad%%|*}" "$NGD" train ${bad%%|*} --data-dir "$D/nowhere" $Q
    expect_msg "${bad#*|}" "${bad%%|*} message"
done
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

# ingd and ikfac are named as chosen (libngd runs them as SINGD), "1 epoch", and a checkpoint
# of one resumed as the other says so (not libngd's list of arrays)
T1="--subset 200 --widths 16 --batch 50 --log $D/m.jsonl"
expect_rc 0 "ingd tiny run" "$NGD" train --optim ingd $T1 --epochs 1 --checkpoint "$D/ingd.ckpt"
expect_msg "ingd mlp on fashion-mnist" "ingd run named ingd"
expect_msg "ingd, batch 50, 1 epoch;" "header names ingd and says 1 epoch"
grep -q '"optim":"ingd"' "$D/m.jsonl" && ok || bad "log summary names ingd"
expect_rc 1 "ingd checkpoint resumed as ikfac" "$NGD" train --optim ikfac $T1 --epochs 2 --resume "$D/ingd.ckpt" --quiet
expect_msg "it was written by ingd, not ikfac (--optim)" "ingd -> ikfac message"
printf '%s\n' "$out" | grep -q "array" && bad "ingd -> ikfac prints libngd's arrays" || ok
expect_rc 0 "ikfac tiny run" "$NGD" train --optim ikfac $T1 --max-steps 2 --quiet
expect_msg "ikfac mlp on fashion-mnist" "ikfac run named ikfac"

# nothing to train (--epochs 0, or resuming a finished run): said, and the accuracy is real
expect_rc 0 "--epochs 0" "$NGD" train $T1 --epochs 0
expect_msg "no training to do: --epochs 0" "--epochs 0 says so"
printf '%s\n' "$out" | grep -q "nan" && bad "--epochs 0 prints nan" || ok
printf '%s\n' "$out" | grep -q "test accuracy [0-9][0-9.]*% (loss [0-9]" && ok || bad "--epochs 0: no accuracy reported"
done_acc=$("$NGD" train --optim ingd $T1 --epochs 1 --quiet 2>&1 | sed -n 's/.*test accuracy \([0-9.]*\)%.*/\1/p')
expect_rc 0 "resume a finished run" "$NGD" train --optim ingd $T1 --epochs 1 --resume "$D/ingd.ckpt"
expect_msg "no training to do: the resumed run has already completed its --epochs" "finished run says so"
printf '%s\n' "$out" | grep -q "nan" && bad "resuming a finished run prints nan" || ok
expect_msg "test accuracy ${done_acc:-?}%" "finished run reports the accuracy of its end"
# --max-steps equal to the planned steps (2 epochs of 4): the last epoch ends as an epoch (its
# "epoch 2:" line, the summary's 2 epochs), and a resume finds the run complete (it stopped
# one batch short of the epoch's end, and each resume evaluated and saved again)
expect_rc 0 "--max-steps = the planned steps" "$NGD" train --subset 512 --epochs 2 --max-steps 8 --threads 1 --log "$D/ms.jsonl" --checkpoint "$D/ms.ckpt"
expect_msg "epoch 2: test loss" "--max-steps = the planned steps: the last epoch's line"
grep -q '"type":"summary".*"epochs":2' "$D/ms.jsonl" && ok || bad "--max-steps = the planned steps: the summary's epochs are not 2"
expect_rc 0 "--max-steps = the planned steps, resumed" "$NGD" train --subset 512 --epochs 2 --max-steps 8 --threads 1 --log "$D/ms.jsonl" --checkpoint "$D/ms.ckpt" --resume "$D/ms.ckpt"
expect_msg "no training to do: the resumed run has already completed its --epochs" "--max-steps = the planned steps: complete"
grep '"type":"summary"' "$D/m.jsonl" | tail -1 | grep -q '"test_accuracy":null' && bad "summary has a null accuracy" || ok

# ngd eval takes the run from the checkpoint (README's example: a CNN, SINGD diagonal) and
# prints the CRC of the parameters that training logged; it takes no training option
C="--model cnn --optim singd --structure diagonal --widths 4,4 --subset 300 --batch 50 --threads 1"
expect_rc 0 "cnn singd diagonal to a checkpoint" "$NGD" train $C --max-steps 3 --checkpoint "$D/cnn.ckpt" --log "$D/cnn.jsonl" --quiet
want=$(grep '"type":"summary"' "$D/cnn.jsonl" | sed -n 's/.*"parameters_crc":"\([0-9a-f]*\)".*/\1/p')
[ -n "$want" ] && ok || bad "the training summary has no parameters_crc"
expect_rc 0 "eval --resume alone" "$NGD" eval --resume "$D/cnn.ckpt" --threads 1
expect_msg "eval: cnn on fashion-mnist test (60 images)" "eval uses the run's model, data and subset"
expect_msg "parameters crc ${want:-none}" "eval's crc is the training run's"
expect_rc 0 "eval --model cnn" "$NGD" eval --model cnn --resume "$D/cnn.ckpt" --batch 7
expect_msg "parameters crc ${want:-none}" "eval --model cnn: the training run's crc"
expect_rc 1 "eval --model mlp of a cnn checkpoint" "$NGD" eval --model mlp --resume "$D/cnn.ckpt"
expect_msg "it was written for --model cnn, not mlp" "eval model mismatch message"
# train --resume with another model or data set is refused from the checkpoint's header,
# before it looks for that data (a wrong --data was reported as that data's missing files)
expect_rc 1 "train --resume of a cnn checkpoint as the default mlp" "$NGD" train --subset 300 --threads 1 --resume "$D/cnn.ckpt" --quiet
expect_msg "--resume $D/cnn.ckpt: it was written for --model cnn, not mlp" "train --resume model mismatch message"
expect_rc 1 "train --resume with another --data" "$NGD" train $C --data cifar100 --data-dir "$D/none" --resume "$D/cnn.ckpt" --quiet
expect_msg "--resume $D/cnn.ckpt: it was written for --data fashion-mnist, not cifar100" "train --resume data mismatch message"
expect_rc 1 "eval --widths other than the run's" "$NGD" eval --widths 8,8 --resume "$D/cnn.ckpt"
expect_msg "it was written with --widths 4,4, not 8,8" "eval widths mismatch message"
expect_rc 0 "eval with the run's own --widths and --subset" "$NGD" eval --widths 4,4 --subset 300 --resume "$D/cnn.ckpt"
# a run of the model's default widths: eval takes them written out (as train --resume does),
# and refuses others: by the model they build, not their text
"$NGD" train --subset 300 --max-steps 2 --threads 1 --checkpoint "$D/defw.ckpt" $Q >/dev/null 2>&1
expect_rc 0 "eval --widths 512,512 of a default-widths mlp run" "$NGD" eval --widths 512,512 --resume "$D/defw.ckpt"
expect_rc 1 "eval --widths 256,512 of a default-widths mlp run" "$NGD" eval --widths 256,512 --resume "$D/defw.ckpt"
expect_msg "it was written with --widths (the model's defaults), not 256,512 (eval takes them from the checkpoint: drop --widths)" "eval of default widths with other widths: message"
# a transformer's head count changes no parameter's shape: 64,2,2 of a default-widths vit run
# (64,2,4,4) was evaluated as another model; 64,2,4 is that model spelt without its patch
"$NGD" train --model vit --optim sgd --subset 300 --max-steps 1 --threads 1 --checkpoint "$D/vit.ckpt" $Q >/dev/null 2>&1
expect_rc 1 "eval --widths 64,2,2 of a default-widths vit run" "$NGD" eval --widths 64,2,2 --threads 1 --resume "$D/vit.ckpt"
expect_msg "it was written with --widths (the model's defaults), not 64,2,2 (eval takes them" "eval of another head count: message"
expect_rc 0 "eval --widths 64,2,4 of a default-widths vit run" "$NGD" eval --widths 64,2,4 --threads 1 --resume "$D/vit.ckpt"
"$NGD" train --model vit --optim sgd --widths 64,2,4 --subset 300 --max-steps 1 --threads 1 --checkpoint "$D/vit3.ckpt" $Q >/dev/null 2>&1
expect_rc 0 "eval --widths 64,2,4,4 of a --widths 64,2,4 vit run" "$NGD" eval --widths 64,2,4,4 --threads 1 --resume "$D/vit3.ckpt"
expect_rc 1 "eval --widths 64,2,1 of a --widths 64,2,4 vit run" "$NGD" eval --widths 64,2,1 --threads 1 --resume "$D/vit3.ckpt"
expect_msg "it was written with --widths 64,2,4, not 64,2,1" "eval of another head count: message"
# eval's batch is at most the test set (a huge --batch was the model's "out of memory")
expect_rc 0 "eval --batch 100000000" "$NGD" eval --batch 100000000 --resume "$D/defw.ckpt"
expect_msg "eval: mlp on fashion-mnist test (60 images)" "eval --batch 100000000: the whole test set"
for opt in "--lr 0.1" "--optim singd" "--structure diagonal" "--epochs 1" "--checkpoint $D/x.ckpt" "--quiet" "--damping 0.1"; do
    # shellcheck disable=SC2086
    expect_rc 2 "eval $opt" "$NGD" eval --resume "$D/cnn.ckpt" $opt
    expect_msg "eval does not take ${opt%% *}" "eval $opt message"
done
# version 1 (before widths, subset and context were recorded): read with the run's options
to_v1 "$D/cnn.ckpt" "$D/cnn-v1.ckpt"
expect_rc 0 "eval of a version-1 checkpoint" "$NGD" eval --resume "$D/cnn-v1.ckpt" --widths 4,4 --subset 300
expect_msg "parameters crc ${want:-none}" "version-1 checkpoint: the training run's crc"
expect_rc 1 "version-1 checkpoint without its widths" "$NGD" eval --resume "$D/cnn-v1.ckpt" --subset 300
expect_msg "does not record the run's --widths" "version-1 checkpoint hint"
expect_rc 0 "train --resume of a version-1 checkpoint" "$NGD" train $C --max-steps 4 --resume "$D/cnn-v1.ckpt" --log "$D/cnn.jsonl" --quiet
# version-1 files name ingd and ikfac "singd": resumed as ingd, and refused clearly as ikfac
to_v1 "$D/ingd.ckpt" "$D/ingd-v1.ckpt" singd
expect_rc 0 "version-1 ingd checkpoint resumed" "$NGD" train --optim ingd $T1 --epochs 2 --resume "$D/ingd-v1.ckpt" --quiet
expect_rc 1 "version-1 ingd checkpoint resumed as ikfac" "$NGD" train --optim ikfac $T1 --epochs 2 --resume "$D/ingd-v1.ckpt" --quiet
expect_msg "its optimizer state does not fit ikfac" "version-1 ingd -> ikfac message"
expect_msg "the first difference: 'fc1' array 3 is m_K" "version-1 ingd -> ikfac: the first difference is named"

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
    R="--rank 32"; [ "$opt" = kfac ] && R=""  # K-FAC decomposes fully: no rank
    # shellcheck disable=SC2086
    expect_rc 0 "$opt short run" "$NGD" train --optim $opt --subset 2000 --widths 128 --epochs 2 --batch 50 --T-u 2 --T-i 10 $R --threads 1 $Q
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
# K-FAC from the rows (--factored, the K-FAC family's default: Q_Gᵀ J Q_A as (𝒢 Q_G)ᵀ(𝒜 Q_A)/n
# where that costs less; with π-damping (𝒢 G⁻¹)ᵀ(𝒜 A⁻¹)/n against G⁻¹ J A⁻¹) is the same
# preconditioner: its run's test loss matches the plain (--no-factored) run's to float32
# rounding, and the default run is the --factored one, bit for bit
for damp in exact pi; do
    kl=() kc=()
    for f in --no-factored "" --factored; do
        # shellcheck disable=SC2086
        expect_rc 0 "kfac $damp $f" "$NGD" train --optim kfac --kfac-damping $damp $f --subset 2000 --widths 128 --epochs 2 --batch 50 --T-u 2 --T-i 10 --threads 1 $Q
        kl+=("$(grep '"type":"summary"' "$D/log.jsonl" | sed 's/.*"test_loss":\([0-9.e+-]*\).*/\1/')")
        kc+=("$(grep -o '"parameters_crc":"[0-9a-f]*"' "$D/log.jsonl" | tail -1)")
    done
    awk -v a="${kl[0]:-0}" -v b="${kl[1]:-1}" 'BEGIN{d=a-b; if(d<0)d=-d; exit !(a>0 && d<=1e-4*a)}' &&
        ok || bad "kfac $damp: test loss ${kl[1]:-?}, --no-factored ${kl[0]:-?} (want within 1e-4 relative)"
    [ -n "${kc[1]}" ] && [ "${kc[1]}" = "${kc[2]}" ] && [ "${kc[0]}" != "${kc[1]}" ] && ok ||
        bad "kfac $damp: the default run (${kc[1]:-?}) is not the --factored one (${kc[2]:-?}), or --no-factored took the same path (${kc[0]:-?})"
done

# SINGD from the rows (--factored, dense factors: P = (1/n)(𝒢 C Cᵀ)ᵀ(𝒜 K Kᵀ); the default for
# dense factors) is the same preconditioner: its run's test loss matches the --no-factored run's
# to float32 rounding; under bf16 compute (--precision bf16: bf16 factors and products), where the
# two orders round different intermediates to bf16, within 2e-3 (1.4e-4 apart when written). The
# default run is the --factored one, bit for bit
for p in f32 bf16; do
    kl=() kc=()
    for f in --no-factored "" --factored; do
        # shellcheck disable=SC2086
        expect_rc 0 "singd dense $p $f" "$NGD" train --optim singd --structure dense --precision $p $f --subset 2000 --widths 128 --epochs 2 --batch 50 --T 5 --threads 1 $Q
        kl+=("$(grep '"type":"summary"' "$D/log.jsonl" | sed 's/.*"test_loss":\([0-9.e+-]*\).*/\1/')")
        kc+=("$(grep -o '"parameters_crc":"[0-9a-f]*"' "$D/log.jsonl" | tail -1)")
    done
    tol=1e-4; [ $p = bf16 ] && tol=2e-3
    awk -v a="${kl[0]:-0}" -v b="${kl[1]:-1}" -v t=$tol 'BEGIN{d=a-b; if(d<0)d=-d; exit !(a>0 && d<=t*a)}' &&
        ok || bad "singd $p: test loss ${kl[1]:-?}, --no-factored ${kl[0]:-?} (want within $tol relative)"
    [ -n "${kc[1]}" ] && [ "${kc[1]}" = "${kc[2]}" ] && [ "${kc[0]}" != "${kc[1]}" ] && ok ||
        bad "singd $p: the default run (${kc[1]:-?}) is not the --factored one (${kc[2]:-?}), or --no-factored took the same path (${kc[0]:-?})"
done

# resume == no stop, bit for bit (8 steps per epoch: the resume crosses an epoch boundary;
# for the K-FAC family also statistics, refresh and Brand steps, and tracks decided at run time;
# bf16 SINGD from the rows, whose first layer takes them at widths 128, batch 32: a step whose
# rows are not saved)
for opt in singd "singd --no-factored" "singd --structure dense --precision bf16 --factored" adamw kfac bkfac brckfac; do
    case $opt in singd*|adamw) K="" ;; kfac) K="--T-u 2 --T-i 4" ;; *) K="--T-u 2 --T-i 4 --rank 16 --kfac-seed 5" ;; esac
    W="--widths 64 --batch 64"
    case $opt in *factored) W="--widths 128 --batch 32" ;; esac
    A="--subset 512 $W --seed 3 --epochs 3 --optim $opt $K $Q"
    "$NGD" train $A --max-steps 12 --checkpoint "$D/full.ckpt" --log "$D/full.jsonl" --log-every 1 >/dev/null 2>&1
    "$NGD" train $A --max-steps 5 --checkpoint "$D/half.ckpt" >/dev/null 2>&1
    "$NGD" train $A --max-steps 12 --resume "$D/half.ckpt" --checkpoint "$D/res.ckpt" --log "$D/res.jsonl" --log-every 1 >/dev/null 2>&1
    c1=$("$NGD" eval --resume "$D/full.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
    c2=$("$NGD" eval --resume "$D/res.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
    [ -n "$c1" ] && [ "$c1" = "$c2" ] && ok || bad "$opt: resumed run ($c2) differs from uninterrupted ($c1)"
    # and the resumed steps' health records (factor traces, norms, ranks: they were 0 until the
    # next preconditioner update)
    hc=$(/usr/bin/python3 - "$D/full.jsonl" "$D/res.jsonl" <<'PY'
import json, sys
def health(p):
    return {r["step"]: r.get("health") for r in map(json.loads, open(p)) if r.get("type") == "step"}
a, b = health(sys.argv[1]), health(sys.argv[2])
same = [k for k in b if k in a]
print(len(same) if same and all(a[k] == b[k] and a[k] for k in same) else "differ:%s" %
      [k for k in same if a[k] != b[k]][:3])
PY
)
    [ "$hc" = 7 ] && ok || bad "$opt: the resumed run's health records are not the uninterrupted run's ($hc)"
done
# a --no-factored checkpoint resumed without it (ngd train's default, or --factored) takes the
# batch's rows from its next statistics: it was silently kept on the gradient
A="--subset 512 --widths 128 --batch 32 --seed 3 --epochs 3 --optim kfac --T-u 2 --T-i 4 $Q"
# shellcheck disable=SC2086
"$NGD" train $A --no-factored --max-steps 12 --checkpoint "$D/nf.ckpt" >/dev/null 2>&1
# shellcheck disable=SC2086
"$NGD" train $A --no-factored --max-steps 5 --checkpoint "$D/nfh.ckpt" >/dev/null 2>&1
# shellcheck disable=SC2086
expect_rc 0 "--no-factored checkpoint resumed with --factored" "$NGD" train $A --factored --max-steps 12 --resume "$D/nfh.ckpt" --checkpoint "$D/nfr.ckpt"
c1=$("$NGD" eval --resume "$D/nf.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
c2=$("$NGD" eval --resume "$D/nfr.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
[ -n "$c1" ] && [ -n "$c2" ] && [ "$c1" != "$c2" ] && ok || bad "--factored on a --no-factored checkpoint was ignored ($c2 = $c1)"
# a batch larger than the training set is said as such, before the model is sized for it (a
# huge one was the model's "out of memory")
expect_rc 1 "--batch larger than the training set" "$NGD" train --subset 300 --batch 100000000 $Q
expect_msg "the training set (300 images) is smaller than one batch (100000000)" "batch larger than the set: message"
# a --subset above the set's size uses all of it, and says so
expect_rc 0 "--subset above the set's size" "$NGD" train --subset 100000 --max-steps 1 --threads 1 --log "$D/sub.jsonl"
expect_msg "note: --subset 100000 is more than the 60000 training images: all of them are used (and 10000 test images)" "--subset capped: note"
# the resumed log's step records are the unbroken run's: a record whose steps a checkpoint
# cut (every 3 steps, stopped after 5) averages all of them (the sums are in the checkpoint)
A="--subset 512 --widths 16 --batch 64 --seed 3 --epochs 3 --threads 1 --log-every 3 --quiet"
"$NGD" train $A --max-steps 12 --log "$D/rl-full.jsonl" >/dev/null 2>&1
"$NGD" train $A --max-steps 5 --log "$D/rl-res.jsonl" --checkpoint "$D/rl.ckpt" >/dev/null 2>&1
"$NGD" train $A --max-steps 12 --log "$D/rl-res.jsonl" --resume "$D/rl.ckpt" >/dev/null 2>&1
r1=$(grep '"type":"step"' "$D/rl-full.jsonl" | sed 's/.*"step":\([0-9]*\),.*"loss":\([^,]*\),"accuracy":\([^,]*\),.*/\1 \2 \3/')
r2=$(grep '"type":"step"' "$D/rl-res.jsonl" | sed 's/.*"step":\([0-9]*\),.*"loss":\([^,]*\),"accuracy":\([^,]*\),.*/\1 \2 \3/')
[ "$(printf '%s\n' "$r1" | wc -l)" -eq 4 ] && [ "$r1" = "$r2" ] && ok || bad "resumed log's step records differ: $(printf '%s' "$r1" | tr '\n' ';') / $(printf '%s' "$r2" | tr '\n' ';')"

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
# stopped after an evaluation: the summary's test figures name their step (test_step), and
# the result line says which step they are of when the run went on after it
rm -f "$D/sig.jsonl"
"$NGD" train ${A% $Q} --log-every 1 --log "$D/sig.jsonl" > "$D/sig.out" 2>&1 &
pid=$!
for _ in $(seq 600); do grep -q '"type":"eval"' "$D/sig.jsonl" 2>/dev/null && break; kill -0 $pid 2>/dev/null || break; sleep 0.05; done
kill -TERM $pid; wait $pid; rc=$?; out=$(cat "$D/sig.out")
sum=$(grep '"type":"summary"' "$D/sig.jsonl" | tail -n 1)
ts=$(printf '%s' "$sum" | sed -n 's/.*"test_step":\([0-9]*\).*/\1/p')
st=$(printf '%s' "$sum" | sed -n 's/.*"steps":\([0-9]*\).*/\1/p')
[ "$rc" -eq 143 ] && [ -n "$ts" ] && [ "$ts" -le "$st" ] && [ "$((ts % 8))" -eq 0 ] && ok || bad "SIGTERM after an evaluation: exit $rc, summary test_step '$ts' of $st steps"
if [ -n "$ts" ] && [ "$ts" != "$st" ]; then
    expect_msg "% at step $ts (loss" "SIGTERM after an evaluation: the result names its step"
else
    ok
fi
# stopped in the first epoch, before any evaluation: the summary says so (never "nan%")
rm -f "$D/sig.jsonl"
"$NGD" train --widths 64 --batch 64 --seed 3 --threads 1 --log-every 1 --log "$D/sig.jsonl" > "$D/sig.out" 2>&1 &
pid=$!
wait_for_step "$D/sig.jsonl" $pid && ok || bad "SIGTERM (full set): the run never logged a step"
# a second run on a log that a run is writing is refused, before it touches it (two runs on
# one path, e.g. the default runs/<model>-<data>-<optim>.jsonl, interleaved their records; a
# new run's "w" emptied the other's log at once)
expect_rc 1 "a second run on a log in use" "$NGD" train --subset 256 --widths 16 --max-steps 2 --quiet --log "$D/sig.jsonl"
expect_msg "--log $D/sig.jsonl: another ngd run is writing this log" "log in use message"
grep -q '"type":"step"' "$D/sig.jsonl" && ok || bad "the refused run emptied the other run's log"
# one run a checkpoint: a second run with a log of its own but the same --checkpoint is
# refused before it loads anything (their saves replaced each other's); the lock file
# (PATH.lock) goes when the holder ends, and one that a killed run left does not block
"$NGD" train --subset 512 --widths 16 --batch 32 --epochs 50 --seed 3 --threads 1 --log-every 1 \
    --log "$D/lk1.jsonl" --checkpoint "$D/lk.ckpt" > "$D/lk.out" 2>&1 &
lpid=$!
wait_for_step "$D/lk1.jsonl" $lpid && [ -e "$D/lk.ckpt.lock" ] && ok || bad "checkpoint lock: no step logged, or no lock file"
expect_rc 1 "a second run on a checkpoint in use" "$NGD" train --subset 256 --widths 16 --max-steps 2 --quiet --log "$D/lk2.jsonl" --checkpoint "$D/lk.ckpt"
expect_msg "--checkpoint $D/lk.ckpt: another ngd run is writing this checkpoint" "checkpoint in use message"
[ ! -e "$D/lk2.jsonl" ] && ok || bad "the run refused for the checkpoint wrote its log"
kill -TERM $lpid; wait $lpid; rc=$?
[ "$rc" -eq 143 ] && [ -s "$D/lk.ckpt" ] && [ ! -e "$D/lk.ckpt.lock" ] && ok || bad "checkpoint lock: exit $rc (want 143), checkpoint written, lock file removed?"
echo stale > "$D/lk.ckpt.lock"
expect_rc 0 "a run after a stale lock file" "$NGD" train --subset 256 --widths 16 --max-steps 2 --quiet --log "$D/lk2.jsonl" --checkpoint "$D/lk.ckpt"
[ ! -e "$D/lk.ckpt.lock" ] && ok || bad "the stale lock file was left"
ln -s "$D/elsewhere" "$D/ln.ckpt.lock"
expect_rc 1 "a lock file that is a symbolic link" "$NGD" train --subset 256 --widths 16 --max-steps 2 --quiet --log "$D/lk3.jsonl" --checkpoint "$D/ln.ckpt"
expect_msg "--checkpoint $D/ln.ckpt: cannot open its lock file $D/ln.ckpt.lock" "lock file link message"
[ ! -e "$D/elsewhere" ] && ok || bad "the lock file's link was followed"
rm -f "$D/lk.ckpt" "$D/lk.ckpt.prev" "$D/lk1.jsonl" "$D/lk2.jsonl" "$D/lk.out" "$D/ln.ckpt.lock"
kill -TERM $pid; wait $pid; rc=$?; out=$(cat "$D/sig.out")
[ "$rc" -eq 143 ] && ok || bad "SIGTERM (full set): exit $rc, want 143"
expect_msg ", not evaluated; log $D/sig.jsonl" "a run stopped before evaluating says so"
printf '%s\n' "$out" | grep -q "nan" && bad "a stopped run printed nan: $out" || ok
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
# a new run stopped before its first step writes no checkpoint over the one already there (it
# is held waiting for a reader of its log, a FIFO, when the signal comes: it stops there)
"$NGD" train $A --max-steps 3 --log "$D/t.jsonl" --checkpoint "$D/keep.ckpt" >/dev/null 2>&1
c1=$("$NGD" eval --subset 512 --widths 64 --resume "$D/keep.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
rm -f "$D/hold.fifo" && mkfifo "$D/hold.fifo"
set -m
"$NGD" train $A --log "$D/hold.fifo" --checkpoint "$D/keep.ckpt" > "$D/sig.out" 2>&1 &
pid=$!
set +m
for _ in $(seq 400); do
    case "$(cat /proc/$pid/wchan 2>/dev/null)" in *partner*|*fifo*|*pipe*|*sleep*) break ;; esac
    sleep 0.05
done
kill -INT $pid
# the stop must be recorded before the open returns: wait until ngd's signal thread has taken
# the SIGINT (no longer pending in /proc), not a fixed 0.3 s that a loaded machine may exceed
for _ in $(seq 200); do
    grep -q '^ShdPnd:[[:space:]]*0*$' /proc/$pid/status 2>/dev/null && break
    sleep 0.05
done
wait $pid; rc=$?; out=$(cat "$D/sig.out")
[ "$rc" -eq 130 ] && ok || bad "SIGINT before the first step: exit $rc, want 130"
expect_msg "before its first step: nothing saved ($D/keep.ckpt is untouched)" "SIGINT before the first step says nothing was saved"
c2=$("$NGD" eval --subset 512 --widths 64 --resume "$D/keep.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
[ -n "$c1" ] && [ "$c1" = "$c2" ] && ok || bad "a run stopped before its first step replaced the checkpoint ($c1 -> $c2)"
# same_bits_at_1_and_2_threads OPTIONS...: a short mlp run's final parameters at --threads 1
# and 2 must have one CRC
same_bits_at_1_and_2_threads() {
    for th in 1 2; do
        "$NGD" train --subset 256 --batch 128 --max-steps 4 "$@" --threads $th --log "$D/th$th.jsonl" --quiet >/dev/null 2>&1
    done
    c1=$(grep -o '"parameters_crc":"[0-9a-f]*"' "$D/th1.jsonl" | tail -1)
    c2=$(grep -o '"parameters_crc":"[0-9a-f]*"' "$D/th2.jsonl" | tail -1)
    [ -n "$c1" ] && [ "$c1" = "$c2" ] && ok || bad "$*: 2 threads ($c2) differ from 1 ($c1)"
    rm -f "$D/th1.jsonl" "$D/th2.jsonl"
}
# the K-FAC family's layers maintained side by side at 2 threads give the same bits as one
# thread doing them in order (their products take a one-thread run's kernels)
for opt in "kfac --no-factored" "kfac" "kfac --clip kl" "rskfac" "srekfac --no-factored" "bkfac"; do
    # shellcheck disable=SC2086
    same_bits_at_1_and_2_threads --T-u 2 --T-i 3 --optim $opt
done
# on a terminal, a run that --max-steps stops within an epoch ends its progress line before
# the result's (the result was printed after "ETA 0s" on the same line)
if command -v script >/dev/null 2>&1; then
    out=$(script -qc "$NGD train --subset 512 --widths 16 --max-steps 6 --log-every 2 --threads 1 --log $D/tty.jsonl" /dev/null 2>&1 | tr -d '\r')
    printf '%s\n' "$out" | grep -q '^singd mlp on fashion-mnist: 6 steps' && ok ||
        bad "the result line shares the progress line on a terminal: $(printf '%s' "$out" | tail -2)"
fi
# dense SINGD on the default mlp (factors of 513 and 785: the 2 x 2 blocks of one-thread
# products at every thread count) gives the same bits at 1 and 2 threads, as README says
same_bits_at_1_and_2_threads --T 2 --optim singd
same_bits_at_1_and_2_threads --T 2 --optim singd --no-factored
# --checkpoint-every N: the run's last step is saved too when it is not a multiple of N (the
# summary's CRC is the checkpoint's)
"$NGD" train --subset 640 --widths 16 --threads 1 --epochs 1 --checkpoint-every 3 --log "$D/every.jsonl" --checkpoint "$D/every.ckpt" --quiet >/dev/null 2>&1
c1=$(grep -o '"parameters_crc":"[0-9a-f]*"' "$D/every.jsonl" | tail -1 | sed 's/.*:"\(.*\)"/\1/')
c2=$("$NGD" eval --subset 640 --widths 16 --resume "$D/every.ckpt" 2>&1 | sed -n 's/.*crc \([0-9a-f]*\).*/\1/p')
[ -n "$c1" ] && [ "$c1" = "$c2" ] && ok || bad "--checkpoint-every 3 over 5 steps: the checkpoint ($c2) is not the final state ($c1)"
# a checkpoint written while a signal cut the epoch's evaluation short records it pending (bit
# 2 of its precision field, docs/formats.md): the resumed run evaluates that epoch first, logs
# it, and saves the checkpoint without the bit (set here by hand, with the CRC)
"$NGD" train --subset 640 --widths 16 --threads 1 --epochs 1 --log "$D/pend.jsonl" --checkpoint "$D/pend.ckpt" --quiet >/dev/null 2>&1
python3 - "$D/pend.ckpt" <<'PY'
import struct, sys, zlib
b = bytearray(open(sys.argv[1], "rb").read())
o = 16  # magic, version
for _ in range(3):  # model, data, method: u64 length + bytes
    o += 8 + struct.unpack_from("<Q", b, o)[0]
o += 8 + 8 * struct.unpack_from("<Q", b, o)[0] + 24  # widths, subset, context, batch
struct.pack_into("<Q", b, o, struct.unpack_from("<Q", b, o)[0] | 4)
struct.pack_into("<I", b, len(b) - 4, zlib.crc32(bytes(b[:-4])))
open(sys.argv[1], "wb").write(b)
PY
expect_rc 0 "resume with the evaluation pending" "$NGD" train --subset 640 --widths 16 --threads 1 --epochs 1 --log "$D/pend.jsonl" --resume "$D/pend.ckpt" --checkpoint "$D/pend.ckpt"
expect_msg "epoch 1: test loss" "the pending evaluation is done first"
[ "$(grep -c '"type":"eval"' "$D/pend.jsonl")" = 2 ] && ok || bad "the pending evaluation was not logged"
expect_rc 0 "resume after it" "$NGD" train --subset 640 --widths 16 --threads 1 --epochs 1 --log "$D/pend.jsonl" --resume "$D/pend.ckpt"
expect_msg "no training to do" "the checkpoint no longer has the evaluation pending"
# counts no run reaches, in a file whose CRC holds (crafted, or damaged before its CRC was
# taken): refused as a bad header (a step of 2^64 - 1 wrapped to 0 at the next step)
for f in "0 18446744073709551615" "1 99" "2 99"; do  # step, epoch, skips (5 steps run)
    cp "$D/pend.ckpt" "$D/bad.ckpt"
    python3 - "$D/bad.ckpt" $f <<'PY'
import struct, sys, zlib
b = bytearray(open(sys.argv[1], "rb").read())
o = 16
for _ in range(3):
    o += 8 + struct.unpack_from("<Q", b, o)[0]
o += 8 + 8 * struct.unpack_from("<Q", b, o)[0] + 24 + 16  # ... batch, precision, epochs
struct.pack_into("<Q", b, o + 8 * int(sys.argv[2]), int(sys.argv[3]))
struct.pack_into("<I", b, len(b) - 4, zlib.crc32(bytes(b[:-4])))
open(sys.argv[1], "wb").write(b)
PY
    expect_rc 1 "a checkpoint's count out of reach ($f)" "$NGD" train --subset 640 --widths 16 --threads 1 --epochs 1 --log "$D/bad.jsonl" --resume "$D/bad.ckpt"
    expect_msg "bad header (step, epoch, skipped steps or wall time)" "a checkpoint's count out of reach ($f): message"
done
# a signal during an epoch's evaluation (a real one: 64 training images, one step an epoch, and
# 20000 test images at widths 1024 take ~0.5 s to evaluate): the run stops at once, its
# summary keeps the previous evaluation's figures and names their step, and the checkpoint
# records the cut evaluation pending: the resumed run does it first, then goes on
I="$D/sigeval"; mkdir -p "$I"
idx_images "$I/train-images-idx3-ubyte" 64 28 28
{ printf '\000\000\010\001'; be32 64; head -c 64 /dev/zero; } > "$I/train-labels-idx1-ubyte" # (class 0)
idx_images "$I/t10k-images-idx3-ubyte" 20000 28 28; idx_labels "$I/t10k-labels-idx1-ubyte" 20000
SE="--data-dir $I --batch 64 --widths 1024,1024 --threads 1 --optim sgd --epochs 3 --log-every 1 --log $D/sigev.jsonl --checkpoint $D/sigev.ckpt"
rm -f "$D/sigev.jsonl" "$D/sigev.ckpt"
# shellcheck disable=SC2086
"$NGD" train $SE > "$D/sig.out" 2>&1 &
pid=$!
# the step after the first evaluation is the second epoch's only step: its evaluation follows
for _ in $(seq 1200); do
    [ "$(grep -A1 '"type":"eval"' "$D/sigev.jsonl" 2>/dev/null | grep -c '"type":"step"')" -ge 1 ] && break
    kill -0 $pid 2>/dev/null || break; sleep 0.01
done
kill -TERM $pid; wait $pid; rc=$?; out=$(cat "$D/sig.out")
sum=$(grep '"type":"summary"' "$D/sigev.jsonl" | tail -n 1)
ev1=$(grep '"type":"eval"' "$D/sigev.jsonl" | head -n 1 | sed -n 's/.*"test_accuracy":\([0-9.e-]*\).*/\1/p')
[ "$rc" -eq 143 ] && [ "$(grep -c '"type":"eval"' "$D/sigev.jsonl")" = 1 ] && ok || bad "SIGTERM during the second evaluation: exit $rc, $(grep -c '"type":"eval"' "$D/sigev.jsonl") evaluations logged (want 143 and 1: the signal came after it?)"
printf '%s' "$sum" | grep -q "\"test_accuracy\":$ev1,\"test_step\":1," && printf '%s' "$sum" | grep -q '"steps":2,' && ok || bad "SIGTERM during an evaluation: the summary does not keep the first evaluation's figures ($ev1 at step 1): $sum"
expect_msg "ngd: training stopped by SIGTERM at step 2" "SIGTERM during an evaluation: the message"
expect_msg "% at step 1 (loss" "SIGTERM during an evaluation: the result names the step of its figures"
# shellcheck disable=SC2086
expect_rc 0 "resume after a signal during an evaluation" "$NGD" train $SE --resume "$D/sigev.ckpt"
expect_msg "epoch 2: test loss" "the evaluation the signal cut is done first"
[ "$(grep '"type":"eval"' "$D/sigev.jsonl" | sed -n 's/.*"step":\([0-9]*\),.*/\1/p' | tr '\n' ' ')" = "1 2 3 " ] && ok || bad "after the resume the evaluations are not those of steps 1, 2, 3: $(grep '"type":"eval"' "$D/sigev.jsonl" | cut -c1-60)"
# a log whose last line a killed run left unfinished: the resumed run cuts it before appending,
# so that every line is a record again (its first new record is not glued onto it)
"$NGD" train --subset 640 --widths 16 --threads 1 --max-steps 3 --log-every 1 --log "$D/cut.jsonl" --checkpoint "$D/cut.ckpt" --quiet >/dev/null 2>&1
printf '{"type":"step","step":99,"lo' >> "$D/cut.jsonl"
"$NGD" train --subset 640 --widths 16 --threads 1 --max-steps 5 --log-every 1 --log "$D/cut.jsonl" --resume "$D/cut.ckpt" --checkpoint "$D/cut.ckpt" --quiet >/dev/null 2>&1
bad_lines=$(python3 -c 'import json, sys
n = 0
for line in open(sys.argv[1]):
    try: json.loads(line)
    except ValueError: n += 1
print(n)' "$D/cut.jsonl")
[ "$bad_lines" = 0 ] && grep -q '"step":4,' "$D/cut.jsonl" && ! grep -q '"step":99' "$D/cut.jsonl" && ok || bad "resume after an unfinished log line: $bad_lines bad lines"
# a SIGINT after the first signal exits at once, a repeated SIGTERM never does: the run is
# held in a write to a log nobody reads (a FIFO)
mkfifo "$D/slow.fifo"
set -m # (job control: the SIGINT at the end must not be ignored)
"$NGD" train $A --log-every 1 --log "$D/slow.fifo" > "$D/sig.out" 2>&1 &
pid=$!
set +m
exec 3< "$D/slow.fifo"
held=0
for _ in $(seq 400); do
    case "$(cat /proc/$pid/wchan 2>/dev/null)" in *pipe_write*) held=1; break ;; esac
    sleep 0.05
done
if [ $held -eq 1 ]; then
    kill -TERM $pid; sleep 0.3
    kill -0 $pid 2>/dev/null && ok || bad "the first signal did not wait for the step in progress"
    # a repeated SIGTERM is the same request (mpirun sends duplicates, seconds apart)
    kill -TERM $pid; sleep 0.5
    kill -0 $pid 2>/dev/null && ok || bad "a repeated SIGTERM ended the run"
    sleep 2.5
    kill -TERM $pid; sleep 0.5
    kill -0 $pid 2>/dev/null && ok || bad "a SIGTERM 3 s after the first ended the run"
    kill -INT $pid; wait $pid; rc=$?; out=$(cat "$D/sig.out")
    [ "$rc" -eq 130 ] && ok || bad "SIGINT after SIGTERM: exit $rc, want 130"
    expect_msg "second signal: exiting at once" "second signal message"
else
    echo "SKIP: /proc/$pid/wchan shows no blocked pipe write: the second signal not tested"
    kill -KILL $pid; wait $pid
fi
exec 3<&-

# bad checkpoints: another shape, corrupt, truncated, foreign
expect_rc 1 "checkpoint of another width" "$NGD" train --subset 512 --batch 64 --optim brckfac $K --widths 32 --resume "$D/full.ckpt" $Q
expect_msg "it was written with --widths 64, not 32 (resume it with --widths 64)" "width mismatch message"
expect_rc 1 "checkpoint of another optimizer" "$NGD" train --subset 512 --batch 64 --widths 64 --optim sgd --resume "$D/full.ckpt" $Q
expect_msg "it was written by brckfac, not sgd (--optim)" "optimizer mismatch message"
head -c 1000 "$D/full.ckpt" > "$D/trunc.ckpt"
expect_rc 1 "truncated checkpoint" "$NGD" eval --resume "$D/trunc.ckpt"
expect_msg "checksum mismatch" "truncated checkpoint message"
echo "not a checkpoint at all" > "$D/foreign.ckpt"
expect_rc 1 "foreign checkpoint" "$NGD" eval --resume "$D/foreign.ckpt"
expect_msg "not an ngd training checkpoint" "foreign checkpoint message"
expect_rc 1 "missing checkpoint" "$NGD" eval --resume "$D/none.ckpt"

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
# --log onto a FIFO: it waits for a process to read it, says so, and writes the run there
# once one does (the SIGINT while it waits: below, "before its first step")
"$NGD" train ${C/--quiet/} --log "$D/fifo" > "$D/fifo.err" 2>&1 & fpid=$!
for _ in $(seq 400); do
    grep -q "is a FIFO: waiting for a process to read it" "$D/fifo.err" && break
    sleep 0.05
done
grep -q "ngd train: --log $D/fifo is a FIFO: waiting for a process to read it (Ctrl-C stops)" "$D/fifo.err" && ok || bad "--log FIFO without a reader: no note ($(cat "$D/fifo.err"))"
exec 3<>"$D/fifo"  # (this shell reads it: open read-write, which does not wait for a writer)
got=""
while IFS= read -r -t 60 line <&3; do
    case $line in *'"type":"summary"'*) got=1; break ;; esac
done
wait "$fpid"; rc=$?
exec 3<&-
[ "$rc" -eq 0 ] && [ -n "$got" ] && ok || bad "--log FIFO: exit $rc, summary read '$got'"
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
# a read-only checkpoint is refused, as a read-only log is (the rename would replace it): as
# another user where we are root (root's access() passes), else as ourselves
"$NGD" train $C --log "$D/t.jsonl" --checkpoint "$D/rock.ckpt" >/dev/null 2>&1
chmod 444 "$D/rock.ckpt"
if [ "$(id -u)" != 0 ]; then
    expect_rc 1 "read-only --checkpoint" "$NGD" train $C --log "$D/t.jsonl" --checkpoint "$D/rock.ckpt"
    expect_msg "--checkpoint $D/rock.ckpt: Permission denied; refusing to replace it" "read-only checkpoint message"
elif command -v setpriv >/dev/null && chmod 755 "$D" &&
    setpriv --reuid=nobody --regid=nogroup --clear-groups "$NGD" --version >/dev/null 2>&1; then
    mkdir "$D/nb"; cp -p "$D/rock.ckpt" "$D/nb/"; chown -R nobody "$D/nb"
    expect_rc 1 "read-only --checkpoint (as nobody)" setpriv --reuid=nobody --regid=nogroup --clear-groups \
        "$NGD" train $C --log "$D/nb/t.jsonl" --checkpoint "$D/nb/rock.ckpt"
    expect_msg "--checkpoint $D/nb/rock.ckpt: Permission denied; refusing to replace it" "read-only checkpoint message"
    [ "$(stat -c %a "$D/nb/rock.ckpt")" = 444 ] && ok || bad "the read-only checkpoint was replaced"
else
    echo "SKIP: no setpriv to run as another user: read-only --checkpoint not tested"
fi
# a name whose temporary file (NAME.tmp.<pid>) is over the file system's 255 bytes
long=$(printf 'c%.0s' $(seq 250))
expect_rc 1 "--checkpoint of a 250-byte name" "$NGD" train $C --log "$D/t.jsonl" --checkpoint "$D/$long"
expect_msg "the name with '.tmp.<pid>' (the temporary file written first) is too long" "long checkpoint name message"
# a file-size limit (ulimit -f, in KiB) below the checkpoint's size: a message naming the
# file and the limit, exit 1, no temporary left (it was a silent SIGXFSZ, exit 153)
rm -rf "$D/fs"; mkdir "$D/fs"
( ulimit -f 300; "$NGD" train --subset 256 --widths 256 --batch 64 --max-steps 2 --quiet \
    --log "$D/fs/t.jsonl" --checkpoint "$D/fs/big.ckpt" ) >"$D/out" 2>&1
rc=$?
[ "$rc" = 1 ] && grep -q -- "--checkpoint $D/fs/big.ckpt: .*File too large" "$D/out" &&
    grep -q "ulimit -f" "$D/out" && ok || bad "file-size limit: rc $rc, $(tail -2 "$D/out")"
[ -z "$(ls "$D/fs" | grep tmp)" ] && ok || bad "file-size limit: a temporary file was left: $(ls "$D/fs")"
# ... and the log's summary says the checkpoint was not written (--checkpoint holds another state)
grep '"type":"summary"' "$D/fs/t.jsonl" | tail -1 | grep -q '"checkpoint_failed":true' && ok || bad "a failed checkpoint write is not in the log's summary"
# the same, over a checkpoint of the run written before: the write fails part way through the
# stream (past the first MiB), and the old checkpoint stays as it was and still resumes
"$NGD" train --subset 256 --widths 1024 --batch 64 --max-steps 1 --quiet \
    --log "$D/fs/t.jsonl" --checkpoint "$D/fs/big.ckpt" >/dev/null 2>&1
cp "$D/fs/big.ckpt" "$D/fs-old.ckpt"
( ulimit -f 2000; "$NGD" train --subset 256 --widths 1024 --batch 64 --max-steps 2 --quiet \
    --log "$D/fs/t.jsonl" --resume "$D/fs/big.ckpt" --checkpoint "$D/fs/big.ckpt" ) >"$D/out" 2>&1
rc=$?
[ "$rc" = 1 ] && grep -q -- "--checkpoint $D/fs/big.ckpt: write $D/fs/big.ckpt.tmp.[0-9]*: File too large" "$D/out" &&
    grep -q "ulimit -f" "$D/out" && ok || bad "file-size limit, old checkpoint: rc $rc, $(tail -2 "$D/out")"
[ "$(stat -c %s "$D/fs-old.ckpt")" -gt 2200000 ] && cmp -s "$D/fs/big.ckpt" "$D/fs-old.ckpt" && ok ||
    bad "file-size limit: the checkpoint written before was changed (or is too small to test)"
[ -z "$(ls "$D/fs" | grep tmp)" ] && ok || bad "file-size limit, old checkpoint: a temporary was left: $(ls "$D/fs")"
expect_rc 0 "the checkpoint kept resumes" "$NGD" train --subset 256 --widths 1024 --batch 64 --max-steps 2 \
    --quiet --log "$D/fs/t.jsonl" --resume "$D/fs/big.ckpt"
grep '"type":"summary"' "$D/fs/t.jsonl" | tail -1 | grep -q '"checkpoint_failed"' && bad "a run without a failed write has checkpoint_failed in its summary" || ok
if [ -d /proc/self ]; then  # a folder whose permission bits do not tell (root, a pseudo file system)
    expect_rc 1 "--checkpoint in /proc" "$NGD" train $C --log "$D/t.jsonl" --checkpoint /proc/ngd-test.ckpt
    # (root: the permissions allow it and the file cannot be made, said as such; else the
    #  folder is not writable. Not both: "folder /proc is not writable: No such file")
    printf '%s\n' "$out" | grep -qE -- "--checkpoint /proc/ngd-test.ckpt: (folder /proc is not writable: Permission denied|cannot create a file there: )" &&
        ! printf '%s\n' "$out" | grep -q "not writable: No such file" && ok || bad "/proc folder message: $out"
fi
expect_rc 1 "eval --context of an image checkpoint" "$NGD" eval --resume "$D/own.ckpt" --context 5
expect_msg "--context is for text models, and it was written for --data fashion-mnist" "eval --context message"
# --seed only seeds a text model's sample: refused for an image checkpoint (it was ignored)
expect_rc 1 "eval --seed of an image checkpoint" "$NGD" eval --resume "$D/own.ckpt" --seed 3
expect_msg "--seed is for text models (the sample printed after the evaluation), and it was written for --data fashion-mnist: drop --seed" "eval --seed message"
expect_rc 1 "--resume of a folder" "$NGD" train $C --log "$D/t.jsonl" --resume "$D"
expect_msg "--resume $D: is a folder, not a file" "--resume folder message"
expect_rc 2 "--checkpoint ''" "$NGD" train $C --log "$D/t.jsonl" --checkpoint ""
expect_msg "--checkpoint: empty path" "empty checkpoint path message"
# every empty path is a usage error (--data-dir '' was taken as /, --resume '' was exit 1)
expect_rc 2 "--resume ''" "$NGD" train $C --log "$D/t.jsonl" --resume ""
expect_msg "--resume: empty path" "empty resume path message"
expect_rc 2 "--data-dir ''" "$NGD" train $C --log "$D/t.jsonl" --data-dir ""
expect_msg "--data-dir: empty path" "empty data-dir message"
expect_rc 2 "eval --resume ''" "$NGD" eval --resume ""
# a --widths number too large: one error, not a second one contradicting it
expect_rc 2 "--widths too large" "$NGD" train $C --log "$D/t.jsonl" --widths 4,99999999999999999999
[ "$(printf '%s\n' "$out" | grep -c 'error')" -eq 1 ] && expect_msg "'99999999999999999999' is too large" "--widths too large: message" || bad "--widths too large: $(printf '%s\n' "$out" | grep -c error) errors: $out"
# widths that do not fit are out of memory (exit 1), not a usage error about the input size,
# and the hint names --widths (it blamed --batch at --batch 1)
expect_rc 1 "cnn --widths too wide for memory" "$NGD" train --model cnn --subset 64 --batch 1 --threads 1 --max-steps 1 --log "$D/w.jsonl" --quiet --widths 100000
expect_msg "cnn: out of memory" "cnn --widths too wide: message"
expect_msg "use smaller --widths or a smaller --batch" "cnn --widths too wide: hint"
expect_rc 1 "mlp --widths too wide for memory" "$NGD" train --subset 64 --batch 1 --threads 1 --max-steps 1 --log "$D/w.jsonl" --quiet --widths 1000000000
expect_msg "use smaller --widths or a smaller --batch" "mlp --widths too wide: hint"
# an existing file of another kind is never replaced: not by --checkpoint (the training data,
# a log), nor by --log (a checkpoint, a text), written or appended to
printf 'First Citizen:\n' > "$D/data.txt"
expect_rc 1 "--checkpoint onto a file that is no checkpoint" "$NGD" train $C --log "$D/t.jsonl" --checkpoint "$D/data.txt"
expect_msg "--checkpoint $D/data.txt: the file exists and is not an ngd training checkpoint" "foreign checkpoint target message"
expect_rc 1 "--log onto a checkpoint" "$NGD" train $C --log "$D/own.ckpt"
expect_msg "--log $D/own.ckpt: the file exists and is not an ngd training log" "foreign log target message"
expect_rc 1 "--log onto a text, resuming" "$NGD" train $C --max-steps 4 --log "$D/data.txt" --resume "$D/own.ckpt"
[ "$(cat "$D/data.txt")" = "First Citizen:" ] && ok || bad "a refused output file was changed"
# an optimizer checkpoint (ngd_optim_save's) given to --resume is named as such
printf 'NGDOPT\r\n0123456789abcdef' > "$D/opt.ckpt"
expect_rc 1 "eval of an optimizer checkpoint" "$NGD" eval --resume "$D/opt.ckpt"
expect_msg "a libngd optimizer checkpoint (ngd_optim_save), not a training checkpoint" "optimizer checkpoint message"
# nor another program's JSON (its first byte is '{' too): an oracle trajectory stays
cp "$(dirname "$0")/../../shared/oracle/linear_dense_T1_kfaclike0_alpha0p5_norm0.json" "$D/traj.json"
expect_rc 1 "--log onto another JSON file" "$NGD" train $C --log "$D/traj.json"
cmp -s "$D/traj.json" "$(dirname "$0")/../../shared/oracle/linear_dense_T1_kfaclike0_alpha0p5_norm0.json" && ok || bad "--log replaced a JSON file that is no ngd log"
# a resume into another run's log (a mistyped --log): its records are kept and the resumed
# run's follow them, which the trainer says at its start and ngd plot when it draws them as
# one line; a resume into its own log says nothing of the kind
R="--threads 1 --widths 16 --subset 256 --log-every 1 --quiet"
expect_rc 0 "run a (singd)" "$NGD" train $R --max-steps 2 --log "$D/ra.jsonl" --checkpoint "$D/ra.ckpt"
expect_rc 0 "run b (adamw)" "$NGD" train $R --optim adamw --max-steps 2 --log "$D/rb.jsonl" --checkpoint "$D/rb.ckpt"
expect_rc 0 "resume a into b's log" "$NGD" train ${R% --quiet} --max-steps 3 --resume "$D/ra.ckpt" --checkpoint "$D/ra.ckpt" --log "$D/rb.jsonl"
expect_msg "note: --log $D/rb.jsonl ends with another run's records (adamw mlp fashion-mnist); this run's (singd mlp fashion-mnist) follow them" "resume into another run's log: note"
expect_rc 0 "plot of the mixed log" "$NGD" plot "$D/rb.jsonl" -o "$D/rb.svg"
expect_msg "warning: $D/rb.jsonl: holds the records of more than one run (adamw mlp fashion-mnist, then singd mlp fashion-mnist)" "plot of a mixed log: warning"
expect_rc 0 "resume a into its own log" "$NGD" train ${R% --quiet} --max-steps 4 --resume "$D/ra.ckpt" --checkpoint "$D/ra.ckpt" --log "$D/ra.jsonl"
printf '%s\n' "$out" | grep -q "another run's records" && bad "a resume into its own log was told of another run" || ok
expect_rc 0 "plot of a resumed run's log" "$NGD" plot "$D/ra.jsonl" -o "$D/ra.svg"
printf '%s\n' "$out" | grep -q "more than one run" && bad "a resumed run's log was taken for two runs" || ok
# a resume without --checkpoint trains on and saves nothing: it says so
expect_rc 0 "resume without --checkpoint" "$NGD" train ${R% --quiet} --epochs 5 --max-steps 6 --resume "$D/ra.ckpt" --log "$D/ra.jsonl"
expect_msg "note: --resume without --checkpoint: the steps of this run are not saved (give --checkpoint $D/ra.ckpt" "resume without --checkpoint: note"
rm -f "$D"/ra.* "$D"/rb.*
# a resume continues the same trajectory: another --batch is refused, naming the recorded one
expect_rc 1 "--resume with another --batch" "$NGD" train ${C/--batch 64/--batch 32} --max-steps 4 --log "$D/t.jsonl" --resume "$D/own.ckpt"
expect_msg "it was written with --batch 64, not 32 (resume it with --batch 64)" "batch mismatch message"
# the folder vanishes during the run: the next checkpoint fails, naming the user's path
mkdir "$D/gone"
timeout 300 "$NGD" train $C --max-steps 0 --epochs 100000 --checkpoint-every 1 --log "$D/t.jsonl" --checkpoint "$D/gone/run.ckpt" > "$D/gone.out" 2>&1 &
pid=$!
for _ in $(seq 300); do [ -e "$D/gone/run.ckpt" ] && break; sleep 0.05; done
# renamed away in one step: `rm -rf` raced with the next checkpoint (a new file appeared
# before its rmdir, the folder stayed, and the run went on for ever)
mv "$D/gone" "$D/gone.removed"
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

# a runaway learning rate. An update that overflows the parameters stops the run at the next
# step (skipping steps cannot help it): AdamW's first update is about --lr per weight. (SGD at
# --lr 1e30 leaves them finite but huge: its next losses are NaN, the ReLUs keeping the NaN,
# and --max-skips stops it, below)
expect_rc 1 "divergence stops" "$NGD" train --subset 512 --widths 32 --batch 64 --optim adamw --lr 3.4e38 --max-skips 3 $Q
expect_msg "the run diverged: the parameters are no longer finite (an update overflowed) after step 1" "divergence message"
# its hint names only what AdamW uses (--damping and --lr-cov are refused there)
expect_msg "hint: lower --lr (or --weight-decay)" "AdamW's divergence hint"
printf '%s\n' "$out" | grep -q -- "--damping\|--lr-cov" && bad "AdamW's divergence hint names --damping or --lr-cov: $out" || ok
# finite but huge parameters: the outputs overflow, the steps are skipped, --max-skips stops it
V="--subset 256 --widths 256,256 --batch 32 --lr 1e20 --threads 1"
expect_rc 1 "non-finite steps stop" "$NGD" train $V --max-skips 3 --epochs 1 $Q
expect_msg "3 consecutive non-finite steps" "consecutive skips message"
# ... and a run that ends first neither reports success nor saves the diverged state
expect_rc 1 "diverged run at its last step" "$NGD" train $V --max-steps 3 --checkpoint "$D/div.ckpt" $Q
expect_msg "the run diverged: the model's outputs are not finite (evaluation loss nan)" "diverged evaluation message"
[ ! -e "$D/div.ckpt" ] && ok || bad "a diverged run wrote its checkpoint"
# ... nor reports the diverged evaluation's accuracy as its result
expect_rc 1 "diverged run, logged" "$NGD" train $V --max-steps 3 --log "$D/div.jsonl"
expect_msg "3 steps in" "diverged run: its summary line"
expect_msg ", not evaluated; log" "diverged run: not evaluated"
grep '"type":"summary"' "$D/div.jsonl" | grep -q '"test_accuracy":null' && ! grep -q '"test_step"' "$D/div.jsonl" && ok || bad "diverged run: the summary reports an accuracy"
# a checkpoint written after the first step, whose update made the outputs overflow: ngd eval
# says so and fails (it printed "loss -nan" and exited 0)
expect_rc 1 "checkpoint of a diverging run" "$NGD" train $V --max-skips 2 --epochs 1 --checkpoint "$D/div.ckpt" --checkpoint-every 1 $Q
expect_msg "($D/div.ckpt) is intact, but if a resume from it diverges too, train from the start" "diverging run: the hint does not promise a good checkpoint"
[ -e "$D/div.ckpt" ] && ok || bad "no checkpoint after the first (finite) step"
expect_rc 1 "eval of a diverged checkpoint" "$NGD" eval --subset 256 --widths 256,256 --resume "$D/div.ckpt"
expect_msg "the model's outputs are not finite (loss nan)" "eval of a diverged checkpoint: message"
# a huge --epochs under the cosine schedule (to mean "until --max-steps") keeps the lr: 2^60 x 16
# steps an epoch wrapped to 0 in size_t, and every step's lr was 0
expect_rc 0 "cosine over 2^60 epochs" "$NGD" train --subset 1024 --widths 32 --batch 64 --optim sgd --lr 0.1 --epochs 1152921504606846976 --schedule cosine --max-steps 10 --log-every 5 --quiet --log "$D/cos.jsonl"
lrs=$(grep -o '"lr":[0-9.e+-]*' "$D/cos.jsonl" | sed 's/"lr"://' | tr '\n' ' ')
awk -v l="$lrs" 'BEGIN{n = split(l, a, " "); for (i = 1; i <= n; i++) if (!(a[i] > 0.0999)) exit 1; exit !(n == 2)}' && ok || bad "cosine over 2^60 epochs: lrs $lrs (want 2 records at 0.1)"

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
    # a batch's activations that do not fit (attention's context² a head: 4 TB here) say what
    # to lower
    expect_rc 1 "--context 1000000" "$NGD" train --data shakespeare --data-dir "$SHK" --context 1000000 --batch 1 --max-steps 1 $Q
    expect_msg "use a smaller --batch or --context" "out-of-memory hint of a text model"
    # the unigram baseline: entropy (nats) of the character frequencies of that text
    uni=$(head -c 100000 "$SHK/input.txt" | od -An -v -tu1 |
          awk '{for (i = 1; i <= NF; i++) c[$i]++; n += NF} END {for (k in c) {p = c[k] / n; h -= p * log(p)}; printf "%.4f", h}')
    S="--data shakespeare --data-dir $SHK --subset 100000 --widths 32,1,2 --context 16 --batch 32 --threads 1"
    expect_rc 0 "short text run" "$NGD" train $S --max-steps 150 --lr 0.01 --damping 0.01 --log "$D/log.jsonl"
    vl=$(grep '"type":"eval"' "$D/log.jsonl" | tail -1 | sed 's/.*"test_loss":\([0-9.e+-]*\).*/\1/')
    awk -v v="${vl:-99}" -v u="$uni" 'BEGIN{exit !(v < u - 0.3)}' && ok || bad "validation loss ${vl:-?} not below the unigram baseline $uni - 0.3"
    expect_msg "sample (200 characters" "text run prints a sample"
    # a binary file as the text: the sample shows its control bytes as '?', never raw
    mkdir -p "$D/bin"
    python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 40)' > "$D/bin/input.txt"
    expect_rc 0 "binary text run" "$NGD" train --data shakespeare --data-dir "$D/bin" --widths 16,1,2 --context 8 --batch 4 --max-steps 2 --threads 1 --log "$D/bin.jsonl"
    [ "$(printf '%s\n' "$out" | tr -d '\n\t' | LC_ALL=C tr -dc '\000-\037\177' | wc -c)" -eq 0 ] && ok || bad "the sample of a binary text printed control bytes"
    # nor C1 controls or bytes of no character: what it prints is UTF-8 without U+0080..U+009F
    printf '%s\n' "$out" | python3 -c 'import re, sys; t = sys.stdin.buffer.read().decode("utf-8"); sys.exit(1 if re.search("[\x80-\x9f]", t) else 0)' && ok || bad "the sample of a binary text is not printable UTF-8"
    expect_rc 0 "short text run, --quiet" "$NGD" train $S --max-steps 2 $Q
    printf '%s\n' "$out" | grep -q "sample (" && bad "--quiet printed the text sample" || ok
    expect_rc 0 "text run, reduce" "$NGD" train $S --max-steps 20 --kfac-approx reduce $Q
    # resume == no stop, bit for bit (17 steps per epoch on 5,000 characters: crosses one)
    expect_rc 0 "text run, AdamW plain parameters" "$NGD" train $S --max-steps 150 --lr 0.01 --damping 0.01 --param-optim adamw --param-lr 0.003 $Q
    vl=$(grep '"type":"eval"' "$D/log.jsonl" | tail -1 | sed 's/.*"test_loss":\([0-9.e+-]*\).*/\1/')
    awk -v v="${vl:-99}" -v u="$uni" 'BEGIN{exit !(v < u - 0.3)}' && ok || bad "--param-optim adamw: validation loss ${vl:-?} not below $uni - 0.3"
    grep -q '"param_optim":"adamw","param_lr":0.003' "$D/log.jsonl" && ok || bad "summary lacks the plain parameters' rule"
    for opt in singd adamw "singd --param-optim adamw"; do
        A="--data shakespeare --data-dir $SHK --subset 5000 --widths 16,1,2 --context 16 --batch 16 --seed 3 --epochs 3 --optim $opt --threads 1 $Q"
        E="--data-dir $SHK --threads 1"  # the rest is the checkpoint's
        "$NGD" train $A --max-steps 24 --checkpoint "$D/tfull.ckpt" >/dev/null 2>&1
        "$NGD" train $A --max-steps 10 --checkpoint "$D/thalf.ckpt" >/dev/null 2>&1
        "$NGD" train $A --max-steps 24 --resume "$D/thalf.ckpt" --checkpoint "$D/tres.ckpt" >/dev/null 2>&1
        c1=$("$NGD" eval $E --resume "$D/tfull.ckpt" 2>&1 | sed -n 's/^eval:.*crc \([0-9a-f]*\).*/\1/p')
        c2=$("$NGD" eval $E --resume "$D/tres.ckpt" 2>&1 | sed -n 's/^eval:.*crc \([0-9a-f]*\).*/\1/p')
        [ -n "$c1" ] && [ "$c1" = "$c2" ] && ok || bad "chargpt $opt: resumed run ($c2) differs from uninterrupted ($c1)"
    done
    # eval's batch is capped at the validation text's windows (500 characters, context 16), as an
    # image eval's at the test set (--batch 100000000 asked for gigabytes, for minutes)
    expect_rc 0 "text eval with a batch past the validation windows" "$NGD" eval $E --batch 100000000 --resume "$D/tfull.ckpt"
    expect_msg "validation (32 x 16 windows of 16)" "text eval batch capped at the validation windows / 32"
    expect_rc 0 "text eval --seed" "$NGD" eval $E --seed 5 --resume "$D/tfull.ckpt"
    expect_msg "from a newline, seed 5)" "text eval --seed seeds its sample"
    # a checkpoint read with another text: the error says what differs (its alphabet, its size)
    mkdir -p "$D/voc" "$D/short"
    head -c 5000 "$SHK/input.txt" | tr 'a' 'b' > "$D/voc/input.txt"
    head -c 4500 "$SHK/input.txt" > "$D/short/input.txt"
    expect_rc 1 "eval on a text with another alphabet" "$NGD" eval --data-dir "$D/voc" --threads 1 --resume "$D/tfull.ckpt"
    expect_msg "has 848 numbers, here 832 (other --widths, or a text with another set of characters: this one has 52)" "another alphabet is named"
    expect_rc 1 "eval on a shorter text" "$NGD" eval --data-dir "$D/short" --threads 1 --resume "$D/tfull.ckpt"
    expect_msg "it was written for a training set of 4500 characters, this one has 4050" "another text size is named"
    expect_rc 1 "text checkpoint of another context" "$NGD" eval $E --context 8 --resume "$D/tfull.ckpt"
    expect_msg "it was written with --context 16, not 8" "context mismatch message"
    expect_rc 1 "text checkpoint resumed with another context" "$NGD" train ${A/--context 16/--context 8} --max-steps 30 --resume "$D/tfull.ckpt"
    expect_msg "it was written with --context 16, not 8" "text context mismatch message"
else
    echo "SKIP: no $SHK/input.txt: text training runs not tested"
fi

# --micro-batches: each batch in M parts, the gradients accumulated and each part observed
# with the library told M (ngd_optim_set_micro_batches): the same run up to rounding for a
# model without BatchNorm, for every kind of method (the K-FAC family and IKFAC differed
# before the library took M into account)
# a checkpoint whose CRC holds but whose header asks for a model wider than its parameters
# (eval built a model of GBs first), or with bytes after its optimizer state: refused
"$NGD" train --optim sgd --subset 200 --widths 16 --batch 50 --epochs 1 --threads 1 --checkpoint "$D/craft.ckpt" $Q >/dev/null 2>&1
craft() {  # craft IN OUT WIDTH0 EXTRA: header width 0 set, EXTRA bytes put before the CRC
    python3 - "$@" <<'PY'
import struct, sys, zlib
src, dst, w0, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
b = bytearray(open(src, "rb").read()[:-4])
o = 16
for _ in range(3):
    o += 8 + struct.unpack_from("<Q", b, o)[0]
if w0:
    struct.pack_into("<Q", b, o + 8, w0)
b += b"\0" * extra
open(dst, "wb").write(b + struct.pack("<I", zlib.crc32(b) & 0xffffffff))
PY
}
craft "$D/craft.ckpt" "$D/wide.ckpt" 1048576 0
expect_rc 1 "eval of a header wider than its parameters" timeout 60 "$NGD" eval --threads 1 --resume "$D/wide.ckpt"
expect_msg "bad header (widths larger than its parameters)" "header widths bound: message"
craft "$D/craft.ckpt" "$D/trail.ckpt" 0 16
expect_rc 1 "eval of a checkpoint with trailing bytes" "$NGD" eval --threads 1 --resume "$D/trail.ckpt"
expect_msg "unexpected bytes after its optimizer state" "trailing bytes: message"
craft "$D/craft.ckpt" "$D/same.ckpt" 0 0
expect_rc 0 "eval of the rewritten, unchanged checkpoint" "$NGD" eval --threads 1 --resume "$D/same.ckpt"
cmp -s "$D/craft.ckpt" "$D/same.ckpt" && ok || bad "the crafting helper changed an unchanged file"
# a FIFO as --resume: refused at once (the open waited for a writer forever)
mkfifo "$D/resume.fifo"
expect_rc 1 "train --resume FIFO" timeout 20 "$NGD" train --resume "$D/resume.fifo" --max-steps 1 $Q
expect_msg "is a FIFO, not a regular file" "--resume FIFO message"
expect_rc 1 "eval --resume FIFO" timeout 20 "$NGD" eval --resume "$D/resume.fifo"
expect_rc 2 "--micro-batches not dividing --batch" "$NGD" train --batch 50 --micro-batches 3 $Q
expect_msg "--batch 50 is not a multiple of --micro-batches 3" "--micro-batches message"
expect_rc 2 "--micro-batches 0" "$NGD" train --micro-batches 0 $Q
MB="--subset 600 --widths 32 --batch 60 --epochs 1 --threads 1"
for opt in kfac ikfac bkfac sgd; do
    kl=()
    for m in 1 4; do
        expect_rc 0 "$opt --micro-batches $m" "$NGD" train --optim $opt $MB --micro-batches $m --quiet --log "$D/mb$m.jsonl"
        kl+=("$(grep '"type":"summary"' "$D/mb$m.jsonl" | sed 's/.*"test_loss":\([0-9.e+-]*\).*/\1/')")
    done
    awk -v a="${kl[0]}" -v b="${kl[1]}" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d <= 1e-5 * a) }' &&
        ok || bad "$opt: test loss ${kl[1]} with --micro-batches 4, ${kl[0]} without"
done
# (the parts are forwarded apart: BatchNorm normalises each by its own statistics, so the
# cnn's run is another one, which a trainer that ignored the option would not give)
kl=()
for m in 1 2; do
    expect_rc 0 "cnn (BatchNorm) with --micro-batches $m" "$NGD" train --model cnn --optim singd --structure diagonal --widths 4,4 --subset 300 --batch 50 --micro-batches $m --max-steps 3 --threads 1 --quiet --log "$D/cmb$m.jsonl"
    kl+=("$(grep '"type":"summary"' "$D/cmb$m.jsonl" | sed 's/.*"test_loss":\([0-9.e+-]*\).*/\1/')")
done
[ -n "${kl[0]}" ] && [ "${kl[0]}" != "${kl[1]}" ] && ok || bad "cnn: the same test loss ${kl[0]} with and without --micro-batches 2 (BatchNorm per part)"
if [ -f "$SHK/input.txt" ]; then
    kl=()
    for m in 1 2; do
        expect_rc 0 "chargpt --micro-batches $m" "$NGD" train --data shakespeare --optim singd --batch 16 --context 16 --widths 32,1,2 --max-steps 6 --threads 1 --micro-batches $m --quiet --log "$D/tmb$m.jsonl"
        kl+=("$(grep '"type":"summary"' "$D/tmb$m.jsonl" | sed 's/.*"test_loss":\([0-9.e+-]*\).*/\1/')")
    done
    awk -v a="${kl[0]}" -v b="${kl[1]}" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d <= 1e-5 * a) }' &&
        ok || bad "chargpt: validation loss ${kl[1]} with --micro-batches 2, ${kl[0]} without"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
