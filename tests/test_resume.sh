#!/bin/bash
# Long runs and their resumes (README, "What a resume takes from the checkpoint"): a schedule
# changed on resume, limits that land on an epoch's end, limits already spent, and the log of a
# run resumed from a checkpoint older than its last records. Small MLP runs on Fashion-MNIST.
NGD=${1:?usage: test_resume.sh path/to/ngd}
. "$(dirname "$0")/lib.sh"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    echo "SKIP: dataset-fashion-mnist is not installed"
    echo "0 passed, 0 failed"
    exit 0
fi
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
C="--widths 64,64 --subset 2000 --batch 64 --threads 2"   # 31 steps an epoch
# the step and eval records of a log, without their times: "type step epoch loss/test_loss"
records() { grep -o '"type":"[a-z]*","step":[0-9]*,"epoch":[0-9.e+-]*,"\(test_\)*loss":[0-9.e+-]*' "$1"; }
test_loss() { grep '"type":"summary"' "$1" | tail -1 | sed 's/.*"test_loss":\([0-9.e+-]*\).*/\1/'; }

# --schedule constant on the resume of a cosine run trains at --lr: the checkpoint carries the
# cosine's last scale (2.8e-4 of the lr after 3 of 3 epochs), which the constant schedule kept,
# while the log said lr 0.001
expect_rc 0 "cosine run" "$NGD" train $C --epochs 3 --schedule cosine --log "$D/a.jsonl" --checkpoint "$D/a.ckpt" --quiet
l0=$(test_loss "$D/a.jsonl")
expect_rc 0 "resumed with --schedule constant" "$NGD" train $C --epochs 6 --schedule constant --log "$D/b.jsonl" --checkpoint "$D/a.ckpt" --resume "$D/a.ckpt" --quiet
l1=$(test_loss "$D/b.jsonl")
awk -v a="$l0" -v b="$l1" 'BEGIN { exit !(b < 0.8 * a) }' && ok || bad "constant schedule after cosine: test loss $l0 -> $l1, it did not train at --lr"
grep '"type":"step"' "$D/b.jsonl" | grep -qv '"lr":0.00100000' && bad "constant schedule after cosine: a step record's lr is not --lr" || ok

# a resume that changes the schedule, or a cosine's --epochs, says how the lr moves: more
# epochs of a cosine raise it again (a warm restart); the same schedule says nothing
expect_rc 0 "cosine run of 3 epochs" "$NGD" train $C --epochs 3 --schedule cosine --log "$D/w.jsonl" --checkpoint "$D/w.ckpt" --quiet
expect_rc 0 "cosine run resumed for 6 epochs" "$NGD" train $C --epochs 6 --schedule cosine --log "$D/w.jsonl" --checkpoint "$D/w.ckpt" --resume "$D/w.ckpt" --max-steps 94
expect_msg "note: the checkpoint's schedule was cosine over 3 epochs, this run's is cosine over 6 epochs: at step 93 the learning rate goes from 0 to 0.5 of --lr (a warm restart)" "cosine warm restart note"
expect_rc 0 "cosine resumed as it was" "$NGD" train $C --epochs 6 --schedule cosine --log "$D/w.jsonl" --checkpoint "$D/w.ckpt" --resume "$D/w.ckpt" --max-steps 95
printf '%s\n' "$out" | grep -q "checkpoint's schedule" && bad "the same schedule: a schedule note" || ok
expect_rc 0 "cosine resumed, --max-steps spent" "$NGD" train $C --epochs 7 --schedule cosine --log "$D/w.jsonl" --checkpoint "$D/w.ckpt" --resume "$D/w.ckpt" --max-steps 95
printf '%s\n' "$out" | grep -q "checkpoint's schedule" && bad "no training to do: a schedule note" || ok
expect_rc 0 "constant run" "$NGD" train $C --epochs 2 --max-steps 40 --log "$D/k.jsonl" --checkpoint "$D/k.ckpt" --quiet
expect_rc 0 "constant run resumed with cosine" "$NGD" train $C --epochs 4 --schedule cosine --log "$D/k.jsonl" --checkpoint "$D/k.ckpt" --resume "$D/k.ckpt" --max-steps 41
expect_msg "note: the checkpoint's schedule was constant, this run's is cosine over 4 epochs: at step 40 the learning rate goes from 1 to 0.764 of --lr" "constant to cosine note"

# --max-steps at an epoch's end (not the last): the epoch ends as one (its evaluation, the
# summary's epochs), and the resume neither evaluates it again nor logs its step twice
expect_rc 0 "--max-steps at the end of epoch 1" "$NGD" train $C --epochs 3 --log-every 5 --schedule cosine --log "$D/m.jsonl" --checkpoint "$D/m.ckpt" --max-steps 31
expect_msg "epoch 1: test loss" "--max-steps at an epoch's end: the epoch's line"
grep '"type":"summary"' "$D/m.jsonl" | grep -q '"steps":31,"epochs":1,' && ok || bad "--max-steps at an epoch's end: the summary's epochs are not 1"
cp "$D/m.ckpt" "$D/m31.ckpt"
expect_rc 0 "resumed to the end of epoch 2" "$NGD" train $C --epochs 3 --log-every 5 --schedule cosine --log "$D/m.jsonl" --checkpoint "$D/m.ckpt" --resume "$D/m.ckpt" --max-steps 62
[ "$(grep -c '"type":"eval","step":31,' "$D/m.jsonl")" = 1 ] && ok || bad "--max-steps at an epoch's end: step 31 evaluated twice"

# a resume from a checkpoint older than the log's last records, which no summary ends (a run
# killed with kill -9 after its last save: here the run to step 62 without its summary line):
# the log is cut back to the checkpoint's step, so each step is logged once and the records
# are the uninterrupted run's
cp "$D/m.jsonl" "$D/branch.jsonl"
sed -i '$d' "$D/m.jsonl"
expect_rc 0 "resumed from step 31 again" "$NGD" train $C --epochs 3 --log-every 5 --schedule cosine --log "$D/m.jsonl" --checkpoint "$D/m.ckpt" --resume "$D/m31.ckpt"
expect_msg "m.jsonl: 7 records past the checkpoint's step 31 cut (the run that wrote them stopped before saving them)" "log cut: said"
expect_rc 0 "uninterrupted run" "$NGD" train $C --epochs 3 --log-every 5 --schedule cosine --log "$D/ref.jsonl"
if diff <(records "$D/ref.jsonl") <(records "$D/m.jsonl") >/dev/null; then ok; else
    bad "log resumed from an older checkpoint: its records are not the uninterrupted run's"
    diff <(records "$D/ref.jsonl") <(records "$D/m.jsonl") | head -5
fi
# ... but records that a summary ends are a run that ended (a branch from the older checkpoint,
# or another run on this log): kept, the resumed run's appended after them
n0=$(wc -l < "$D/branch.jsonl"); sum0=$(md5sum < "$D/branch.jsonl")
expect_rc 0 "branch from step 31" "$NGD" train $C --epochs 3 --log-every 5 --schedule cosine --lr 0.002 --log "$D/branch.jsonl" --checkpoint "$D/m31b.ckpt" --resume "$D/m31.ckpt" --max-steps 40
printf '%s\n' "$out" | grep -q "cut" && bad "branch: records were cut" || ok
[ "$(head -n "$n0" "$D/branch.jsonl" | md5sum)" = "$sum0" ] && ok || bad "branch: the ended run's records changed"
[ "$(grep -c '"type":"step","step":35,' "$D/branch.jsonl")" = 2 ] && ok || bad "branch: the ended run's step 35 is not kept beside the branch's"

# a limit already spent where the run resumes: said (it counts the run in all)
expect_rc 0 "resume past --max-steps" "$NGD" train $C --epochs 3 --log "$D/m.jsonl" --checkpoint "$D/m31.ckpt" --resume "$D/m31.ckpt" --max-steps 10
expect_msg "no training to do: the resumed run is at step 31, --max-steps 10" "resume past --max-steps says so"
# ... and a new --checkpoint it then does not write is said too (it was silent)
expect_rc 0 "resume past --max-steps into a new checkpoint" "$NGD" train $C --epochs 3 --log "$D/m.jsonl" --checkpoint "$D/m-new.ckpt" --resume "$D/m31.ckpt" --max-steps 10
expect_msg "note: --checkpoint $D/m-new.ckpt was not written: no step was trained (--resume $D/m31.ckpt holds this state)" "nothing trained: the new checkpoint's note"
[ ! -e "$D/m-new.ckpt" ] && ok || bad "nothing trained: a new checkpoint was written"

# "no training to do" logs the run's fractional epoch (a checkpoint at step 40 is 1.29 epochs)
expect_rc 0 "run to step 40" "$NGD" train $C --epochs 3 --log "$D/f.jsonl" --checkpoint "$D/f.ckpt" --max-steps 40 --quiet
# (into a log of its own: the run's own log already ends with its summary at step 40)
expect_rc 0 "resumed with --epochs 1" "$NGD" train $C --epochs 1 --log "$D/f1.jsonl" --checkpoint "$D/f.ckpt" --resume "$D/f.ckpt"
expect_msg "no training to do: the resumed run has already completed its --epochs" "--epochs 1 at epoch 1.29"
printf '%s\n' "$out" | grep -q "already ends with" && bad "a log without the run's summary: said to end with it" || ok
tail -2 "$D/f1.jsonl" | grep -q '"type":"eval","step":40,"epoch":1.29' && ok || bad "no training to do: the eval record's epoch is not 1.29"
tail -1 "$D/f1.jsonl" | grep -q '"type":"summary".*"steps":40,' && ok || bad "no training to do: no summary in a log without one"

# a resume of a run that ended where it resumes (its log's last record is its summary, of the
# same parameters) reports the model again but appends nothing: each such resume appended
# another eval and summary of the same model (a QA finding); training on appends as before
sum0=$(md5sum < "$D/f.jsonl")
for lim in "--epochs 1" "--epochs 3 --max-steps 40" "--epochs 3 --max-steps 40"; do
    expect_rc 0 "ended run resumed ($lim)" "$NGD" train $C $lim --log "$D/f.jsonl" --checkpoint "$D/f.ckpt" --resume "$D/f.ckpt"
    expect_msg "already ends with this run's summary at step 40: nothing is appended" "ended run resumed ($lim): said"
    expect_msg "40 steps in" "ended run resumed ($lim): its result printed"
    [ "$(md5sum < "$D/f.jsonl")" = "$sum0" ] && ok || bad "ended run resumed ($lim): its log changed"
done
expect_rc 0 "ended run, trained on" "$NGD" train $C --epochs 3 --max-steps 45 --log "$D/f.jsonl" --checkpoint "$D/f.ckpt" --resume "$D/f.ckpt" --quiet
[ "$(grep -c '"type":"summary"' "$D/f.jsonl")" = 2 ] && ok || bad "trained on: not a second summary"
tail -1 "$D/f.jsonl" | grep -q '"type":"summary".*"steps":45,' && ok || bad "trained on: the last summary is not at step 45"
# ... and a summary of other parameters (another run on the log) is not this run's
cp "$D/f.jsonl" "$D/crc.jsonl"
sed -i '$ s/"parameters_crc":"[0-9a-f]*"/"parameters_crc":"00000000"/' "$D/crc.jsonl"
expect_rc 0 "ended run, another crc" "$NGD" train $C --epochs 3 --max-steps 45 --log "$D/crc.jsonl" --checkpoint "$D/f.ckpt" --resume "$D/f.ckpt"
printf '%s\n' "$out" | grep -q "already ends with" && bad "another CRC: said to be this run's summary" || ok
[ "$(grep -c '"type":"summary"' "$D/crc.jsonl")" = 3 ] && ok || bad "another CRC: no summary appended"

# --time-budget: the run stops, saves, and a resume with the budget spent says so, to a tenth
# of a second ("0 s" for 0.4 s before), appending nothing (saved at the stop only: an epoch's
# save may hold a little less time than the budget, which a resume would then spend)
expect_rc 0 "--time-budget 0.4" "$NGD" train $C --epochs 1000 --time-budget 0.4 --log "$D/tb.jsonl" --checkpoint "$D/tb.ckpt" --checkpoint-every 1000000 --quiet
n=$(sed -n 's/.*"type":"summary".*"steps":\([0-9]*\),.*/\1/p' "$D/tb.jsonl")
[ -n "$n" ] && [ "$n" -gt 0 ] && [ "$n" -lt 31000 ] && ok || bad "--time-budget 0.4: summary steps '$n'"
[ -s "$D/tb.ckpt" ] && ok || bad "--time-budget: no checkpoint"
sum0=$(md5sum < "$D/tb.jsonl")
expect_rc 0 "--time-budget spent, resumed" "$NGD" train $C --epochs 1000 --time-budget 0.4 --log "$D/tb.jsonl" --checkpoint "$D/tb.ckpt" --checkpoint-every 1000000 --resume "$D/tb.ckpt"
printf '%s\n' "$out" | grep -Eq "has spent its --time-budget \(0\.[4-9] s|has spent its --time-budget \([1-9][0-9.]* s" && ok || bad "--time-budget spent: not said to a tenth of a second: $(printf '%s' "$out" | grep budget)"
[ "$(md5sum < "$D/tb.jsonl")" = "$sum0" ] && ok || bad "--time-budget spent, resumed: its log changed"

# --widths that give the same parameter shapes are still another model (vit's head count):
# the run's recorded widths, or refused (as ngd eval does)
V="--model vit --optim adamw --subset 256 --batch 32 --threads 2 --epochs 2 --quiet --log $D/v.jsonl"
expect_rc 0 "vit with 4 heads" "$NGD" train $V --widths 32,1,4 --checkpoint "$D/v.ckpt" --max-steps 3
expect_rc 1 "vit resumed with 2 heads" "$NGD" train $V --widths 32,1,2 --checkpoint "$D/v.ckpt" --resume "$D/v.ckpt" --max-steps 6
expect_msg "it was written with --widths 32,1,4, not 32,1,2 (resume it with --widths 32,1,4,4)" "another head count: message"
expect_rc 0 "vit resumed with its widths" "$NGD" train $V --widths 32,1,4 --checkpoint "$D/v.ckpt" --resume "$D/v.ckpt" --max-steps 6
# ... compared as the models were built (defaults filled in): a run of the default widths
# (64,2,4,4) resumed with 2 heads is refused, and one given the defaults resumes without them
expect_rc 0 "vit of the default widths" "$NGD" train $V --checkpoint "$D/vd.ckpt" --max-steps 3
expect_rc 1 "default vit resumed with 2 heads" "$NGD" train $V --widths 64,2,2 --checkpoint "$D/vd.ckpt" --resume "$D/vd.ckpt" --max-steps 6
expect_msg "it was written with --widths (the model's defaults), not 64,2,2 (resume it with --widths 64,2,4,4)" "default vit, 2 heads: message"
expect_rc 0 "vit given its default widths" "$NGD" train $V --widths 64,2,4 --checkpoint "$D/ve.ckpt" --max-steps 3
expect_rc 0 "... resumed without them" "$NGD" train $V --checkpoint "$D/ve.ckpt" --resume "$D/ve.ckpt" --max-steps 6

# an optimizer option that shapes the state (B-KFAC's --rank): refused, with the first
# difference and the options that could cause it
expect_rc 0 "bkfac run" "$NGD" train $C --optim bkfac --epochs 1 --max-steps 3 --checkpoint "$D/r.ckpt" --log "$D/r.jsonl" --quiet
expect_rc 1 "bkfac resumed with --rank 8" "$NGD" train $C --optim bkfac --rank 8 --epochs 1 --max-steps 6 --checkpoint "$D/r.ckpt" --resume "$D/r.ckpt" --log "$D/r.jsonl"
expect_msg "the first difference: 'fc1' array 2 is A.U (type 0, 172700 values), expected A.U (type 0, 6280 values)" "--rank 8: the first difference"
expect_msg "and those that shape its state (--rank," "--rank 8: the hint names --rank"

# a new run on an earlier run's checkpoint (a forgotten --resume): said before it is replaced
# (and its first save keeps it as PATH.prev; a new run's log over an earlier one's records
# keeps those as LOG.prev: nothing of a forgotten --resume is lost)
sum_ck=$(md5sum < "$D/r.ckpt") sum_log=$(md5sum < "$D/r.jsonl")
expect_rc 0 "new run on an earlier checkpoint" "$NGD" train $C --epochs 1 --max-steps 2 --checkpoint "$D/r.ckpt" --log "$D/r.jsonl"
expect_msg "note: --checkpoint $D/r.ckpt holds an earlier run; this run's first record keeps it as $D/r.ckpt.prev, with its log (to continue that run instead, stop this one and add --resume $D/r.ckpt; once this one has logged, --resume $D/r.ckpt.prev --log $D/r.jsonl.prev)" "forgotten --resume: the note"
expect_msg "note: --log $D/r.jsonl holds an earlier run's records; this run's first record keeps them as $D/r.jsonl.prev" "forgotten --resume: the log's note"
[ "$(md5sum < "$D/r.ckpt.prev")" = "$sum_ck" ] && ok || bad "forgotten --resume: the earlier checkpoint is not kept as .prev"
[ "$(md5sum < "$D/r.jsonl.prev")" = "$sum_log" ] && ok || bad "forgotten --resume: the earlier log is not kept as .prev"
[ "$(md5sum < "$D/r.ckpt")" != "$sum_ck" ] && grep -q '"steps":2,' "$D/r.jsonl" && ! grep -q '"steps":3,' "$D/r.jsonl" && ok || bad "forgotten --resume: the new run did not replace the checkpoint and log"
# one generation is kept: a further new run says that the older .prev there goes
for f in ckpt ckpt.prev jsonl jsonl.prev; do cp "$D/r.$f" "$D/q.$f"; done
expect_rc 0 "a second new run on the same paths" "$NGD" train $C --epochs 1 --max-steps 2 --checkpoint "$D/q.ckpt" --log "$D/q.jsonl"
expect_msg "this run's first record keeps it as $D/q.ckpt.prev in place of the older one there, with its log (to continue" "a second new run: the checkpoint's note"
expect_msg "this run's first record keeps them as $D/q.jsonl.prev in place of the older one there" "a second new run: the log's note"
# a new run that logs but never saves (--epochs 0 evaluates and logs) keeps the earlier
# checkpoint with the earlier log: the two .prev files are one run's (the log alone was kept,
# and the note's --resume PATH.prev --log LOG.prev paired two runs)
for f in ckpt jsonl; do cp "$D/r.$f" "$D/p.$f"; done
sum_ck=$(md5sum < "$D/p.ckpt") sum_log=$(md5sum < "$D/p.jsonl")
expect_rc 0 "a new run that logs and never saves" "$NGD" train $C --epochs 0 --max-steps 0 --checkpoint "$D/p.ckpt" --log "$D/p.jsonl"
[ "$(md5sum < "$D/p.ckpt.prev")" = "$sum_ck" ] && [ "$(md5sum < "$D/p.jsonl.prev")" = "$sum_log" ] && ok || bad "a run that logs and never saves: the .prev files are not the earlier run's checkpoint and log"
# a resume into another run's checkpoint keeps that one too
cp "$D/r.ckpt" "$D/r4.ckpt"
expect_rc 0 "resume into another run's checkpoint" "$NGD" train $C --optim bkfac --epochs 1 --max-steps 4 --resume "$D/r.ckpt.prev" --checkpoint "$D/r4.ckpt" --log "$D/r3.jsonl"
expect_msg "note: --checkpoint $D/r4.ckpt holds another run; this run's first save keeps it as $D/r4.ckpt.prev" "resume into another checkpoint: the note"
cmp -s "$D/r.ckpt" "$D/r4.ckpt.prev" && ok || bad "resume into another checkpoint: it is not kept as .prev"
# a save that fails (here a file size limit, as a full disk) leaves both the checkpoint and its
# .prev as they were: resuming the kept run into its old path loses neither
ck=$(md5sum < "$D/r.ckpt") ckp=$(md5sum < "$D/r.ckpt.prev")
out=$(trap '' XFSZ; ulimit -f 60; "$NGD" train $C --optim bkfac --epochs 1 --max-steps 4 --resume "$D/r.ckpt.prev" --checkpoint "$D/r.ckpt" --log "$D/r5.jsonl" 2>&1); rc=$?
[ "$rc" -eq 1 ] && [ "$(md5sum < "$D/r.ckpt")" = "$ck" ] && [ "$(md5sum < "$D/r.ckpt.prev")" = "$ckp" ] && ok || bad "a failed save: exit $rc, the checkpoint or its .prev changed"
# a .prev that is a folder, and outputs that are each other's .prev: refused before the data loads
cp "$D/r.ckpt" "$D/f.ckpt" && mkdir "$D/f.ckpt.prev"
expect_rc 1 "a .prev that is a folder" "$NGD" train $C --epochs 1 --checkpoint "$D/f.ckpt" --log "$D/f.jsonl"
expect_msg "--checkpoint $D/f.ckpt holds an earlier run, to be kept as $D/f.ckpt.prev, which is a folder" "a .prev that is a folder: message"
expect_rc 0 "a log beside" "$NGD" train $C --epochs 1 --max-steps 2 --log "$D/g.jsonl" --checkpoint "$D/g.jsonl.prev" --quiet
expect_rc 2 "--checkpoint the log's .prev" "$NGD" train $C --epochs 1 --max-steps 2 --log "$D/g.jsonl" --checkpoint "$D/g.jsonl.prev"
expect_msg "--log $D/g.jsonl and --checkpoint $D/g.jsonl.prev: one's earlier run would be kept over the other" "outputs that are each other's .prev: message"
# a --log in a folder that does not exist fails before the data loads, as --checkpoint does
expect_rc 1 "--log in a missing folder" "$NGD" train $C --epochs 1 --log "$D/nodir/x.jsonl"
expect_msg "ngd: error: --log $D/nodir/x.jsonl: folder $D/nodir: No such file or directory" "--log in a missing folder: message"
printf '%s\n' "$out" | grep -q "parameters) on" && bad "--log in a missing folder: the data was loaded first" || ok

# the progress line: accuracy in percent, and an ETA to --max-steps (not to the 1000th epoch)
expect_rc 0 "progress line" "$NGD" train $C --epochs 1000 --log-every 1 --max-steps 12 --log "$D/pg.jsonl"
printf '%s\n' "$out" | grep -q "^epoch 1/1000 step 10/31 loss [0-9.]* acc [0-9.]*% [0-9]* samples/s ETA 0s$" && ok || bad "progress line: $(printf '%s\n' "$out" | grep '^epoch 1/1000 step')"
# a branch: a run that ended (its summary) after step 8, then records of a killed branch
# (steps 12, 16, no summary): a resume from step 8 cuts the branch's records, not the ended
# run's (its first record past step 8 is before a summary: nothing was cut)
B="$C --epochs 1 --log-every 4 --quiet"
expect_rc 0 "branch: the run to step 16" "$NGD" train $B --max-steps 16 --log "$D/br.jsonl" --checkpoint "$D/br16.ckpt"
expect_rc 0 "branch: a checkpoint at step 8" "$NGD" train $B --max-steps 8 --log "$D/br8.jsonl" --checkpoint "$D/br8.ckpt"
printf '%s\n' '{"type":"step","step":12,"epoch":0.4,"loss":2,"accuracy":0.1,"wall_s":1}' '{"type":"step","step":16,"epoch":0.5,"loss":2,"accuracy":0.1,"wall_s":1}' >> "$D/br.jsonl"
expect_rc 0 "branch: resumed from step 8" "$NGD" train $C --epochs 1 --log-every 4 --max-steps 12 --log "$D/br.jsonl" --checkpoint "$D/br8.ckpt" --resume "$D/br8.ckpt"
expect_msg "--log $D/br.jsonl: 2 records past the checkpoint's step 8 cut" "branch: the killed branch's records cut"
[ "$(grep -o '"type":"step","step":[0-9]*' "$D/br.jsonl" | tr '\n' ' ')" = '"type":"step","step":4 "type":"step","step":8 "type":"step","step":12 "type":"step","step":16 "type":"step","step":12 ' ] && ok || bad "branch: step records $(grep -o '"type":"step","step":[0-9]*' "$D/br.jsonl" | tr '\n' ' ')"

# --checkpoint-every landing on an epoch's last batch saves after the epoch's end: the resume
# does not end that epoch (and log its evaluation) again
E="$C --epochs 3 --log-every 5 --checkpoint-every 31 --quiet"
expect_rc 0 "--checkpoint-every 31 to step 31" "$NGD" train $E --log "$D/ce.jsonl" --checkpoint "$D/ce.ckpt" --max-steps 31
expect_rc 0 "--checkpoint-every 31 resumed" "$NGD" train $E --log "$D/ce.jsonl" --checkpoint "$D/ce.ckpt" --resume "$D/ce.ckpt" --max-steps 62
[ "$(grep -c '"type":"eval","step":31,' "$D/ce.jsonl")" = 1 ] && ok || bad "--checkpoint-every at an epoch's end: step 31 evaluated twice"
# a resume with nothing to do leaves its checkpoint as it was
sum0=$(md5sum < "$D/m31.ckpt")
expect_rc 0 "nothing to do again" "$NGD" train $C --epochs 3 --log "$D/m.jsonl" --checkpoint "$D/m31.ckpt" --resume "$D/m31.ckpt" --max-steps 31
[ "$(md5sum < "$D/m31.ckpt")" = "$sum0" ] && ok || bad "a resume with nothing to do rewrote its checkpoint"
# a damaged optimizer state (its CRC made to match the damage) is said to be damaged, not
# another option's
python3 - "$D/r.ckpt" "$D/rd.ckpt" <<'PY'
import sys, zlib
d = bytearray(open(sys.argv[1], "rb").read())
d[len(d) - 100] ^= 0xFF
d[-4:] = (zlib.crc32(bytes(d[:-4])) & 0xFFFFFFFF).to_bytes(4, "little")
open(sys.argv[2], "wb").write(d)
PY
expect_rc 1 "damaged optimizer state" "$NGD" train $C --epochs 1 --max-steps 6 --checkpoint "$D/rd.ckpt" --resume "$D/rd.ckpt" --log "$D/r2.jsonl"
expect_msg "its optimizer state cannot be read: checksum mismatch: the file is corrupt or truncated" "damaged optimizer state: message"

# --augment is the run's (it draws from the data stream): a resume that drops it or adds it is
# refused, both ways, naming the option; with it as written the run continues bit for bit
expect_rc 0 "run with --augment" "$NGD" train $C --epochs 2 --augment --max-steps 8 --checkpoint "$D/au.ckpt" --log "$D/au.jsonl" --quiet
expect_rc 1 "--augment dropped on resume" "$NGD" train $C --epochs 2 --max-steps 16 --checkpoint "$D/au.ckpt" --resume "$D/au.ckpt" --log "$D/au.jsonl"
expect_msg "it was written with --augment (resume it with --augment)" "--augment dropped: message"
expect_rc 0 "run without --augment" "$NGD" train $C --epochs 2 --max-steps 8 --checkpoint "$D/na.ckpt" --log "$D/na.jsonl" --quiet
expect_rc 1 "--augment added on resume" "$NGD" train $C --epochs 2 --augment --max-steps 16 --checkpoint "$D/na.ckpt" --resume "$D/na.ckpt" --log "$D/na.jsonl"
expect_msg "it was written without --augment (resume it without --augment)" "--augment added: message"
expect_rc 0 "--augment resumed with it" "$NGD" train $C --epochs 2 --augment --max-steps 16 --checkpoint "$D/au.ckpt" --resume "$D/au.ckpt" --log "$D/au.jsonl" --quiet
expect_rc 0 "--augment uninterrupted" "$NGD" train $C --epochs 2 --augment --max-steps 16 --log "$D/au2.jsonl" --quiet
crc() { grep -o '"parameters_crc":"[0-9a-f]*"' "$1" | tail -1; }
[ -n "$(crc "$D/au.jsonl")" ] && [ "$(crc "$D/au.jsonl")" = "$(crc "$D/au2.jsonl")" ] && ok ||
    bad "--augment resumed: parameters $(crc "$D/au.jsonl"), uninterrupted $(crc "$D/au2.jsonl")"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
