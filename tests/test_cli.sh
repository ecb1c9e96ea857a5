#!/usr/bin/env bash
# test_cli.sh — the `ngd` command as a user meets it: help, usage errors (exit 2), the
# replay of shared/oracle (exit 0, every case PASS), bad paths. Usage: tests/test_cli.sh NGD
set -u
NGD=${1:?usage: test_cli.sh path/to/ngd}
SHARED=${NGD_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}  # (beside the checkout, from any folder)
. "$(dirname "$0")/lib.sh"

# make mutate's list still names code that exists (its dry run only looks the fragments up)
expect_rc 0 "scripts/mutate.sh -n: the mutation list is current" bash "$(dirname "$0")/../scripts/mutate.sh" -n
expect_rc 0 "ngd --help" "$NGD" --help
"$NGD" --help | grep -q "replay" && ok || bad "--help lists replay"
expect_rc 2 "no command" "$NGD"
expect_rc 2 "unknown command" "$NGD" frobnicate
"$NGD" frobnicate 2>&1 | grep -q "ngd: error: unknown command 'frobnicate'" && ok || bad "unknown command message"
# ngd help CMD is CMD's help, not the list of commands
expect_rc 0 "ngd help train" "$NGD" help train
expect_msg "usage: ngd train [options]" "ngd help train prints train's help"
expect_rc 2 "ngd help of an unknown command" "$NGD" help frobnicate
# a switch of the environment with a value nothing reads is refused, not ignored
for ev in NGD_F32_GEMM=bogus NGD_BF16_GEMM=fast NGD_BF16_SPLIT=yes NGD_CONV_DIRECT=off NGD_CONV_AMX=no NGD_SYRK_BLOCKS=on; do
    expect_rc 2 "$ev" env "$ev" "$NGD" train --max-steps 1
    expect_msg "ngd: error: $ev: not a value it takes" "$ev message"
done
expect_rc 0 "NGD_F32_GEMM=sgemm NGD_CONV_DIRECT=0 accepted" env NGD_F32_GEMM=sgemm NGD_CONV_DIRECT=0 "$NGD" --version
expect_rc 0 "replay --help" "$NGD" replay --help
expect_rc 2 "replay without path" "$NGD" replay
expect_rc 2 "replay unknown option" "$NGD" replay --frobnicate "$SHARED/oracle"
"$NGD" replay --frobnicate 2>&1 | grep -q "ngd: error: unknown option '--frobnicate'" && ok || bad "replay unknown option message"
"$NGD" replay --tol 2>&1 | grep -q "option '--tol' needs a value" && ok || bad "replay missing value message"
expect_rc 2 "replay bad --tol" "$NGD" replay --tol abc "$SHARED/oracle"
expect_rc 2 "replay hex --tol" "$NGD" replay --tol 0x1p-10 "$SHARED/oracle"
"$NGD" replay --tol 0x1p-10 "$SHARED/oracle" 2>&1 | grep -q -- "--tol: '0x1p-10' is not a number" && ok || bad "replay hex --tol message"
expect_rc 1 "replay missing path" "$NGD" replay /nonexistent/path.json
tmp=$(mktemp -d)
echo '{ "kind": "singd_linear_trajectory", "problem": ' > "$tmp/broken.json"
expect_rc 1 "replay broken json" "$NGD" replay "$tmp/broken.json"
"$NGD" replay "$tmp/broken.json" 2>&1 | grep -q "not valid JSON" && ok || bad "broken json message"
mkdir "$tmp/empty"
expect_rc 1 "replay of an empty folder" "$NGD" replay "$tmp/empty"
"$NGD" replay "$tmp/empty" 2>&1 | grep -q "no case files (\*.json) found there" && ok || bad "empty folder message"
if command -v python3 >/dev/null && [ -f "$SHARED/oracle/linear_dense_T1_kfaclike0_alpha0p5_norm0.json" ]; then
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["hyperparameters"]["T"]=0; json.dump(d,open(sys.argv[2],"w"))' \
        "$SHARED/oracle/linear_dense_T1_kfaclike0_alpha0p5_norm0.json" "$tmp/t0.json"
    out=$("$NGD" replay "$tmp/t0.json" 2>&1); rc=$?
    [ "$rc" -eq 1 ] && printf '%s\n' "$out" | grep -q "T must be a whole number >= 1" && ok || bad "replay T: 0: exit $rc, $out"
    printf '%s\n' "$out" | grep -q "NULL" && bad "replay T: 0 mentions NULL" || ok
    # a field present but not what it must be is an input error naming it, not a default
    for edit in 'd["hyperparameters"]["lr"]=None|hyperparameters.lr must be a number' \
                'd["hyperparameters"]["T"]="x"|hyperparameters.T must be a number' \
                'd["problem"]["d_in"]=-7|problem.d_in must be a whole number >= 0' \
                'd["steps"][1]["x"]["data"][3]="0.5"|field '"'"'x'"'"': value 3 is not a number' \
                'd["problem"]["steps"]=1000|6 recorded steps, problem.steps says 1000' \
                'd["kind"]="singd_conv2d_trajectory"|kind '"'"'singd_conv2d_trajectory'"'"' does not match problem.layer (Linear' \
                'd["initial"]["K"]["shape"]=[3,3]|field '"'"'K'"'"': 169 values for shape of 9' \
                'd["initial"]["K"]["shape"]=[169,1]|initial.K is not the 13 x 13 identity' \
                'd["initial"]["C"]["data"][1]=0.5|initial.C is not the 7 x 7 identity'; do
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); exec(sys.argv[3]); json.dump(d,open(sys.argv[2],"w"))' \
            "$SHARED/oracle/linear_dense_T1_kfaclike0_alpha0p5_norm0.json" "$tmp/e.json" "${edit%%|*}"
        out=$("$NGD" replay "$tmp/e.json" 2>&1); rc=$?
        [ "$rc" -eq 1 ] && printf '%s\n' "$out" | grep -qF "${edit#*|}" && ok || bad "replay ${edit%%|*}: exit $rc, $out"
    done
fi
rm -rf "$tmp"

# an empty --log is refused by name, as an empty --checkpoint
expect_rc 2 "--log ''" "$NGD" train --subset 64 --max-steps 1 --log ""
expect_msg "--log: empty path" "--log '' message"
# a --log path longer than the trainer holds is refused (it was cut and another file written)
long=$(printf 'l%.0s' $(seq 1100))
expect_rc 2 "--log path too long" "$NGD" train --subset 64 --max-steps 1 --log "/tmp/$long.jsonl"
expect_msg "--log: the path is longer than 1023 bytes" "--log path too long: message"
# plot: usage errors, bad logs, and an SVG of two small logs written here
tmp=$(mktemp -d)
# an output that cannot be written is found before the work, and named by its option
if [ -d /proc/self ]; then
    expect_rc 1 "plot -o in /proc" "$NGD" plot /nonexistent.jsonl -o /proc/ngd-test.svg
    expect_msg "-o /proc/ngd-test.svg:" "plot -o in /proc message"
    expect_rc 1 "bench precond --plot in /proc" "$NGD" bench precond --plot /proc/ngd-test.svg
    expect_msg "--plot /proc/ngd-test.svg:" "bench --plot in /proc message"
fi
# bench precond's --plot, like plot's -o, never replaces a file of another kind, nor a folder,
# and says so before the benchmark runs
printf '{"type":"step","step":1}\n' > "$tmp/keep.svg"
expect_rc 1 "bench --plot onto a log" "$NGD" bench precond --d 64 --methods kfac --reps 1 --plot "$tmp/keep.svg"
expect_msg "--plot $tmp/keep.svg exists and is not an SVG image; refusing to replace it" "bench --plot onto a log: message"
grep -q '"type":"step"' "$tmp/keep.svg" && ok || bad "bench --plot replaced a log"
printf '%s\n' "$out" | grep -q "kfac" && bad "bench --plot onto a log ran the benchmark first" || ok
mkdir "$tmp/dir.svg"
expect_rc 1 "bench --plot onto a folder" "$NGD" bench precond --d 64 --methods kfac --reps 1 --plot "$tmp/dir.svg"
expect_msg "--plot $tmp/dir.svg: is a folder, not a regular file; refusing to replace it" "bench --plot onto a folder: message"
rmdir "$tmp/dir.svg"
rm -f "$tmp/keep.svg"
# steps, times or losses near the largest double: the axis ticks never ended (the SVG grew
# without bound); now a finite SVG with no NaN in it
printf '{"type":"step","step":0,"loss":1.0,"wall_s":0}\n{"type":"step","step":1.7e308,"loss":2.0,"wall_s":1}\n' > "$tmp/huge1.jsonl"
printf '{"type":"step","step":0,"loss":-1e308,"wall_s":0}\n{"type":"step","step":1,"loss":1e308,"wall_s":1.7e308}\n' > "$tmp/huge2.jsonl"
for h in huge1 huge2; do
    expect_rc 0 "plot of $h" timeout 20 "$NGD" plot "$tmp/$h.jsonl" -o "$tmp/$h.svg"
    [ -f "$tmp/$h.svg" ] && [ "$(stat -c %s "$tmp/$h.svg")" -lt 100000 ] && ! grep -qi nan "$tmp/$h.svg" && ok || bad "plot of $h: no finite SVG"
done
# a character device is no log (/dev/zero was one endless line, its memory growing), and a
# line longer than 1 MiB is skipped as a bad line
expect_rc 1 "plot of /dev/zero" timeout 20 "$NGD" plot /dev/zero -o "$tmp/z.svg"
expect_msg "/dev/zero: is a character device, not a log file" "plot of /dev/zero: message"
{ head -c 3000000 /dev/zero | tr '\0' x; printf '\n{"type":"step","step":1,"loss":1.0,"wall_s":0}\n{"type":"step","step":2,"loss":0.5,"wall_s":1}\n'; } > "$tmp/long.jsonl"
expect_rc 0 "plot of a log with a 3 MB line" timeout 20 "$NGD" plot "$tmp/long.jsonl" -o "$tmp/long.svg"
expect_msg "1 line skipped (not a log record; first: line 1)" "plot of a 3 MB line: warning"
expect_rc 1 "plot of a folder" "$NGD" plot "$tmp" -o "$tmp/p.svg"
expect_msg "$tmp: is a folder, not a file" "plot of a folder: message"
expect_rc 2 "ngd help with too many words" "$NGD" help bench step extra
expect_msg "ngd help takes a command and, for bench, a subcommand (got 3 words)" "ngd help with too many words: message"
expect_rc 0 "ngd help bench step" "$NGD" help bench step
expect_msg "usage: ngd bench step" "ngd help bench step prints that subcommand's help"
expect_rc 2 "ngd help train extra" "$NGD" help train extra
expect_msg "ngd help train: 'extra' is not one of its subcommands" "ngd help CMD with a stray word"
expect_rc 0 "plot --help" "$NGD" plot --help
"$NGD" plot --help | grep -q -- "--output FILE" && ok || bad "plot --help lists --output"
cat > "$tmp/a.jsonl" <<'EOF'
{"type":"step","step":10,"epoch":0.5,"loss":2.1,"accuracy":0.3,"lr":0.1,"samples_per_s":900,"wall_s":0.4,"health":[]}
{"type":"step","step":20,"epoch":1,"loss":1.2,"accuracy":0.6,"lr":0.1,"samples_per_s":900,"wall_s":0.8,"health":[]}
{"type":"eval","step":20,"epoch":1,"test_loss":1.1,"test_accuracy":0.64,"wall_s":0.9}
{"type":"summary","model":"mlp","data":"mnist","optim":"sgd","steps":20,"test_accuracy":0.64,"wall_s":0.9}
EOF
cat > "$tmp/b.jsonl" <<'EOF'
{"type":"step","step":10,"epoch":0.5,"loss":1.5,"accuracy":0.5,"lr":0.001,"samples_per_s":500,"wall_s":0.7,"health":[]}
{"type":"step","step":20,"epoch":1,"loss":0.6,"accuracy":0.8,"lr":0.001,"samples_per_s":500,"wall_s":1.4,"health":[]}
{"type":"eval","step":20,"epoch":1,"test_loss":0.5,"test_accuracy":0.85,"wall_s":1.5}
{"type":"summary","model":"mlp","data":"mnist","optim":"singd","steps":20,"test_accuracy":0.85,"wall_s":1.5}
EOF
echo '{"type":"summary","model":"mlp","data":"mnist","optim":"sgd","steps":0}' > "$tmp/nosteps.jsonl"
expect_rc 2 "plot without -o" "$NGD" plot "$tmp/a.jsonl"
# -o never replaces a log it draws, nor an existing file that is not an image (a log named
# .svg was replaced by its own plot)
cp "$tmp/a.jsonl" "$tmp/log.svg"
expect_rc 2 "plot -o onto its own log" "$NGD" plot "$tmp/log.svg" -o "$tmp/log.svg"
expect_msg "-o $tmp/log.svg is one of the logs to plot" "plot -o onto its own log: message"
expect_rc 1 "plot -o onto a file that is no image" "$NGD" plot "$tmp/a.jsonl" -o "$tmp/log.svg"
expect_msg "exists and is not an SVG image; refusing to replace it" "plot -o onto a non-image: message"
cmp -s "$tmp/a.jsonl" "$tmp/log.svg" && ok || bad "plot -o replaced a log named .svg"
rm -f "$tmp/log.svg"
expect_rc 2 "plot without a log" "$NGD" plot -o "$tmp/p.svg"
expect_rc 2 "plot unknown option" "$NGD" plot --frobnicate "$tmp/a.jsonl" -o "$tmp/p.svg"
"$NGD" plot --frobnicate "$tmp/a.jsonl" -o "$tmp/p.svg" 2>&1 | grep -q "unknown option '--frobnicate'" && ok || bad "plot unknown option message"
"$NGD" plot "$tmp/a.jsonl" -o 2>&1 | grep -q "option '-o' needs a value" && ok || bad "plot -o without value message"
expect_rc 2 "plot to .pdf" "$NGD" plot "$tmp/a.jsonl" -o "$tmp/p.pdf"
expect_rc 1 "plot of a missing log" "$NGD" plot "$tmp/missing.jsonl" -o "$tmp/p.svg"
"$NGD" plot "$tmp/missing.jsonl" -o "$tmp/p.svg" 2>&1 | grep -q "^hint:" && ok || bad "missing log: no hint"
expect_rc 1 "plot of a log without steps" "$NGD" plot "$tmp/nosteps.jsonl" -o "$tmp/p.svg"
"$NGD" plot "$tmp/nosteps.jsonl" -o "$tmp/p.svg" 2>&1 | grep -q "no step records" && ok || bad "no-steps message"
[ ! -e "$tmp/p.svg" ] && ok || bad "a failed plot left $tmp/p.svg"
# beside other runs, a run that ended before its first step record is left out with a warning
# (it made the whole plot fail); all of them such runs: an error
expect_rc 0 "plot of a short run beside a full one" "$NGD" plot "$tmp/nosteps.jsonl" "$tmp/a.jsonl" -o "$tmp/p.svg"
expect_msg "nosteps.jsonl: no step records (the run ended before its first): left out of the plot" "short run: warning"
expect_msg "plot: 1 run ->" "short run: the other run plotted"
expect_rc 1 "plot of two short runs" "$NGD" plot "$tmp/nosteps.jsonl" "$tmp/nosteps.jsonl" -o "$tmp/p2.svg"
expect_msg "none of the 2 logs has a step record" "two short runs: message"
# a run evaluated but shorter than --log-every: plotted by its test accuracy alone
printf '%s\n' '{"type":"eval","step":16,"epoch":1,"test_loss":2.2,"test_accuracy":0.2,"wall_s":0.1}' \
    '{"type":"eval","step":32,"epoch":2,"test_loss":2.1,"test_accuracy":0.25,"wall_s":0.2}' \
    '{"type":"summary","model":"mlp","data":"mnist","optim":"sgd","steps":32,"test_accuracy":0.25}' > "$tmp/evalonly.jsonl"
expect_rc 0 "plot of an evaluated run without step records" "$NGD" plot "$tmp/evalonly.jsonl" -o "$tmp/p3.svg"
expect_msg "evalonly.jsonl: no step records (the run ended before its first, or logged with a large --log-every): only its test accuracy is plotted" "evaluated short run: warning"
[ "$(grep -c '<polyline' "$tmp/p3.svg")" = 2 ] && ok || bad "evaluated short run: not its two accuracy lines"
# the legend's accuracy is the last evaluation that stands: a resumed run still going (no
# summary yet) is past its earlier segment's summary; a branch resumed from an older checkpoint
# drops the other branch's evaluations past its own steps, in the panel and in the legend
printf '%s\n' '{"type":"step","step":10,"loss":2.1,"wall_s":0.4}' '{"type":"eval","step":10,"test_accuracy":0.1765,"wall_s":0.5}' \
    '{"type":"summary","model":"mlp","data":"d","optim":"singd","steps":10,"test_accuracy":0.1765,"wall_s":0.5}' \
    '{"type":"step","step":16,"loss":2.0,"wall_s":0.8}' '{"type":"eval","step":16,"test_accuracy":0.255,"wall_s":0.9}' \
    '{"type":"step","step":32,"loss":1.5,"wall_s":1.4}' '{"type":"eval","step":32,"test_accuracy":0.4314,"wall_s":1.5}' > "$tmp/going.jsonl"
expect_rc 0 "plot of a resumed run still going" "$NGD" plot "$tmp/going.jsonl" -o "$tmp/g.svg"
grep -q '43.14%, 32 steps' "$tmp/g.svg" && ok || bad "resumed run: the legend is not its last evaluation's 43.14%"
printf '%s\n' '{"type":"step","step":8,"loss":2.1,"wall_s":0.4}' '{"type":"eval","step":16,"test_accuracy":0.30,"wall_s":0.5}' \
    '{"type":"step","step":16,"loss":2.0,"wall_s":0.8}' '{"type":"step","step":200,"loss":1.0,"wall_s":5}' \
    '{"type":"eval","step":200,"test_accuracy":0.7149,"wall_s":5.1}' \
    '{"type":"summary","model":"mlp","data":"d","optim":"singd","steps":200,"test_accuracy":0.7149,"wall_s":5.1}' \
    '{"type":"step","step":24,"loss":1.9,"wall_s":1.0}' '{"type":"step","step":152,"loss":1.2,"wall_s":4}' > "$tmp/branch.jsonl"
expect_rc 0 "plot of a branch" "$NGD" plot "$tmp/branch.jsonl" -o "$tmp/b.svg"
grep -q '30.00%, 152 steps' "$tmp/b.svg" && ok || bad "branch: the legend is not the surviving evaluation's 30.00%"
! grep -q '71.49' "$tmp/b.svg" && ok || bad "branch: the other branch's evaluation at step 200 is still drawn"
# an empty log (a run that has not written its first record) beside another: left out
: > "$tmp/empty.jsonl"
expect_rc 0 "plot of an empty log beside a run" "$NGD" plot "$tmp/empty.jsonl" "$tmp/going.jsonl" -o "$tmp/e.svg"
expect_msg "empty.jsonl: empty (a run that has not written its first record yet): left out of the plot" "empty log: warning"
expect_rc 1 "plot of an empty log alone" "$NGD" plot "$tmp/empty.jsonl" -o "$tmp/e2.svg"
# one evaluation at 95 %: the accuracy axis stops at 100; a title with a control character and
# a Latin-1 file name still make well-formed XML (U+FFFD in their place)
printf '%s\n' '{"type":"step","step":8,"loss":2.1,"wall_s":0.4}' '{"type":"eval","step":8,"test_accuracy":0.95,"wall_s":0.5}' > "$tmp/hi.jsonl"
cp "$tmp/hi.jsonl" "$tmp/lat"$'\xe9'".jsonl"
expect_rc 0 "plot with a control character in the title" "$NGD" plot "$tmp/hi.jsonl" "$tmp/lat"$'\xe9'".jsonl" -o "$tmp/hi.svg" --title $'T \x07 & <x> \xef\xbf\xbe'
grep -q '>100</text>' "$tmp/hi.svg" && ! grep -q '>105</text>' "$tmp/hi.svg" && ok || bad "accuracy axis past 100 %"
! LC_ALL=C grep -q $'\x07' "$tmp/hi.svg" && ! LC_ALL=C grep -q $'\xef\xbf\xbe' "$tmp/hi.svg" && grep -q $'T \xef\xbf\xbd &amp; &lt;x&gt; \xef\xbf\xbd' "$tmp/hi.svg" && ok || bad "title's control character or U+FFFE not replaced"
! LC_ALL=C grep -q $'lat\xe9' "$tmp/hi.svg" && grep -q $'lat\xef\xbf\xbd' "$tmp/hi.svg" && ok || bad "Latin-1 file name not replaced"
# a run whose last summary says it diverged: its last evaluation is said to come before, and
# it is not the best run (its accuracy, 40.20 %, above the other's)
printf '%s\n' '{"type":"step","step":8,"loss":2.1,"wall_s":0.4}' '{"type":"eval","step":8,"test_accuracy":0.402,"wall_s":0.5}' \
    '{"type":"summary","model":"mlp","data":"d","optim":"sgd","steps":8,"test_accuracy":0.402,"wall_s":0.5}' \
    '{"type":"step","step":12,"loss":9.9,"wall_s":0.8}' \
    '{"type":"summary","model":"mlp","data":"d","optim":"sgd","steps":13,"test_accuracy":null,"diverged":true,"wall_s":0.9}' > "$tmp/div.jsonl"
printf '%s\n' '{"type":"step","step":8,"loss":2.0,"wall_s":0.4}' '{"type":"eval","step":8,"test_accuracy":0.3824,"wall_s":0.5}' \
    '{"type":"summary","model":"mlp","data":"d","optim":"adamw","steps":8,"test_accuracy":0.3824,"wall_s":0.5}' > "$tmp/ok.jsonl"
expect_rc 0 "plot of a diverged run beside another" "$NGD" plot "$tmp/div.jsonl" "$tmp/ok.jsonl" -o "$tmp/d.svg"
grep -q 'diverged (40.20% before), 13 steps' "$tmp/d.svg" && grep -q '<text[^>]*font-weight="bold">adamw mlp d' "$tmp/d.svg" && ok || bad "diverged run: not said so, or marked best"
# runs on different data sets (an image test accuracy against a text validation one): no
# run is marked best
printf '%s\n' '{"type":"step","step":8,"loss":2.0,"wall_s":0.4}' '{"type":"eval","step":8,"test_accuracy":0.9,"wall_s":0.5}' \
    '{"type":"summary","model":"mlp","data":"fashion-mnist","optim":"sgd","steps":8,"test_accuracy":0.9,"wall_s":0.5}' > "$tmp/img.jsonl"
printf '%s\n' '{"type":"step","step":8,"loss":2.0,"wall_s":0.4,"tokens_per_s":1000}' '{"type":"eval","step":8,"test_accuracy":0.3,"wall_s":0.5}' \
    '{"type":"summary","model":"chargpt","data":"shakespeare","optim":"sgd","steps":8,"test_accuracy":0.3,"wall_s":0.5}' > "$tmp/txt.jsonl"
expect_rc 0 "plot of runs on two data sets" "$NGD" plot "$tmp/img.jsonl" "$tmp/txt.jsonl" -o "$tmp/m.svg"
grep -q 'best' "$tmp/m.svg" && bad "runs on different data sets: one was marked best" || ok
rm -f "$tmp/img.jsonl" "$tmp/txt.jsonl" "$tmp/m.svg"
# a character model's accuracy is the validation windows'
printf '%s\n' '{"type":"step","step":8,"loss":2.1,"wall_s":0.4}' '{"type":"eval","step":8,"test_accuracy":0.35,"wall_s":0.5}' \
    '{"type":"summary","model":"chargpt","data":"shakespeare","optim":"adamw","steps":8,"test_accuracy":0.35,"wall_s":0.5}' > "$tmp/gpt.jsonl"
expect_rc 0 "plot of a chargpt run" "$NGD" plot "$tmp/gpt.jsonl" -o "$tmp/gpt.svg"
grep -q 'validation accuracy (%)' "$tmp/gpt.svg" && ! grep -q 'test accuracy' "$tmp/gpt.svg" && ok || bad "chargpt: the panel is not named validation accuracy"
# (a character model's run still going, before its summary: told by its step records' tokens_per_s)
printf '%s\n' '{"type":"step","step":8,"loss":2.1,"tokens_per_s":9000,"wall_s":0.4}' '{"type":"eval","step":8,"test_accuracy":0.35,"wall_s":0.5}' > "$tmp/gpt2.jsonl"
expect_rc 0 "plot of a chargpt run without its summary" "$NGD" plot "$tmp/gpt2.jsonl" -o "$tmp/gpt2.svg"
grep -q 'validation accuracy (%)' "$tmp/gpt2.svg" && ok || bad "chargpt without summary: the panel is not named validation accuracy"
# 21 runs: the third ten has a dash pattern of its own (not the first ten's solid lines)
many=()
for i in $(seq 21); do sed "s/\"loss\":2.1/\"loss\":$i/" "$tmp/hi.jsonl" > "$tmp/m$i.jsonl"; many+=("$tmp/m$i.jsonl"); done
expect_rc 0 "plot of 21 runs" "$NGD" plot "${many[@]}" -o "$tmp/many.svg"
[ "$(grep -c 'stroke-dasharray="2 2"' "$tmp/many.svg")" -ge 1 ] && ok || bad "21 runs: the 21st run looks like the first"
rm -f "$tmp/p.svg"
# -o on a symbolic link is refused (the rename would replace the link), as --checkpoint does
echo keep > "$tmp/target.svg"; ln -s "$tmp/target.svg" "$tmp/link.svg"
expect_rc 1 "plot -o on a symbolic link" "$NGD" plot "$tmp/a.jsonl" -o "$tmp/link.svg"
expect_msg "is a symbolic link, not a regular file; refusing to replace it" "plot -o symlink message"
[ -L "$tmp/link.svg" ] && [ "$(cat "$tmp/target.svg")" = keep ] && ok || bad "plot -o replaced a symbolic link"
rm -f "$tmp/link.svg" "$tmp/target.svg"
PATH=/nonexistent expect_rc 1 "plot to .png without rsvg-convert" "$NGD" plot "$tmp/a.jsonl" -o "$tmp/p.png"
expect_rc 0 "plot of two logs" "$NGD" plot "$tmp/a.jsonl" "$tmp/b.jsonl" -o "$tmp/p.svg" --title "two runs"
svg="$tmp/p.svg"
if [ -s "$svg" ]; then
    grep -q "<svg" "$svg" && ok || bad "plot: no <svg element"
    grep -q "sgd mlp mnist" "$svg" && ok || bad "plot: legend lacks run a"
    grep -q "singd mlp mnist" "$svg" && ok || bad "plot: legend lacks run b"
    [ "$(grep -c "<polyline" "$svg")" -ge 8 ] && ok || bad "plot: expected a line per run and panel"
    grep -q "two runs" "$svg" && ok || bad "plot: --title missing"
    grep -q "<text[^>]*font-weight=\"bold\">singd mlp mnist" "$svg" && ok || bad "plot: best run not marked"
else
    bad "plot wrote no $svg"
fi
rm -rf "$tmp"

# bench precond: usage errors, and a tiny run's JSON lines and plot (never its timings)
tmp=$(mktemp -d)
expect_rc 0 "bench --help" "$NGD" bench --help
"$NGD" bench --help | grep -q "precond" && ok || bad "bench --help lists precond"
expect_rc 0 "bench precond --help" "$NGD" bench precond --help
"$NGD" bench precond --help | grep -q -- "--plot FILE.svg" && ok || bad "bench precond --help lists --plot"
expect_rc 2 "bench unknown benchmark" "$NGD" bench frobnicate
expect_rc 2 "bench precond unknown option" "$NGD" bench precond --frobnicate
"$NGD" bench precond --frobnicate 2>&1 | grep -q "hint: run 'ngd bench precond --help'" && ok || bad "bench precond unknown option hint"
"$NGD" bench step --frobnicate 2>&1 | grep -q "ngd: error: unknown option '--frobnicate'" && ok || bad "bench step unknown option message"
expect_rc 2 "bench precond bad --d" "$NGD" bench precond --d 64,abc
expect_rc 2 "bench precond repeated --d" "$NGD" bench precond --d 64,64
expect_rc 2 "bench precond bad --methods" "$NGD" bench precond --methods kfac,nope
"$NGD" bench precond --methods nope 2>&1 | grep -q "unknown or repeated method 'nope'" && ok || bad "bench precond: bad method message"
expect_rc 2 "bench precond --reps 0" "$NGD" bench precond --reps 0
expect_rc 2 "bench precond --reps +1" "$NGD" bench precond --reps +1 --d 64 --methods kfac
expect_rc 2 "bench step --reps ' 5'" "$NGD" bench step --reps " 5" --only nothing
expect_rc 2 "bench precond --plot .png" "$NGD" bench precond --plot "$tmp/p.png"
expect_rc 2 "bench precond stray argument" "$NGD" bench precond stray
out=$("$NGD" bench precond --d 64,128 --reps 1 --methods kfac,singd-diagonal --json --plot "$tmp/p.svg" 2>&1); rc=$?
[ "$rc" -eq 0 ] && ok || { bad "bench precond smoke run: exit $rc"; printf '%s\n' "$out" | tail -5; }
[ "$(printf '%s\n' "$out" | grep -c '^{"type":"point"')" -eq 4 ] && ok || bad "bench precond: expected 4 point records"
printf '%s\n' "$out" | grep '^{"type":"point","method":"kfac","d":128,' | grep -q '"maintain_ms":[0-9.e+-]*,"apply_ms":[0-9.e+-]*,' && ok || bad "bench precond: kfac d=128 record lacks maintain_ms/apply_ms"
printf '%s\n' "$out" | grep -q '^{"type":"slope","method":"singd-diagonal",.*"maintain":null,"apply":null' && ok || bad "bench precond: slope outside the fit range should be null"
printf '%s\n' "$out" | grep -q '^{"type":"setup","n":128,"rank":220,' && ok || bad "bench precond: setup record"
if command -v python3 >/dev/null; then
    printf '%s\n' "$out" | grep '^{' | python3 -c 'import json,sys; [json.loads(l) for l in sys.stdin]' && ok || bad "bench precond: --json lines are not valid JSON"
fi
# bench train --threads N: the children run N OpenMP threads (libgomp reads OMP_NUM_THREADS
# when the program starts, so setting the variable alone left them at all cores)
for n in 1 2; do
    out=$(OMP_NUM_THREADS=3 "$NGD" bench train --model mlp --widths 16 --optim sgd --batch 8 --steps 2 --warmup 1 --threads $n --json 2>&1)
    printf '%s\n' "$out" | grep -q "\"threads\":$n," && ok || { bad "bench train --threads $n: the child ran another thread count"; printf '%s\n' "$out" | tail -2; }
done
# bench train's peak RSS is the configuration's own: the sgemm rate's buffers (1536² x 3
# floats, 27 MiB) are freed and the high-water mark reset before the run (a tiny mlp then
# peaks near 24 MiB; counting the buffers it would be over 45). Not under ASan (its
# quarantine keeps freed memory resident).
case "$NGD" in
*build-san*) ;;
*)
    out=$("$NGD" bench train --model mlp --widths 16 --optim sgd --batch 8 --steps 2 --warmup 1 --threads 1 --json 2>&1)
    printf '%s\n' "$out" | grep '^{' | python3 -c 'import json,sys; j=json.loads(sys.stdin.readline()); sys.exit(0 if 0 < j["peak_rss_mib"] < 36 and j["sgemm_gflops"] > 0 else 1)' && ok || { bad "bench train: peak RSS counts the sgemm buffers"; printf '%s\n' "$out" | tail -1; }
    ;;
esac
# a SIGTERM to bench train ends the configuration's process too (it ran on to its end, taking
# the cores): the child is found by its unusual step count
"$NGD" bench train --model mlp --widths 16 --optim sgd --batch 8 --steps 987653 --warmup 1 --threads 1 >/dev/null 2>&1 &
bp=$!
for _ in $(seq 50); do pgrep -f -- '--steps 987653' | grep -qv "^$bp\$" && break; sleep 0.1; done
kill -TERM $bp; wait $bp 2>/dev/null
for _ in $(seq 50); do pgrep -f -- '--steps 987653' >/dev/null || break; sleep 0.1; done
pgrep -f -- '--steps 987653' >/dev/null && { bad "bench train: its child outlived a SIGTERM"; pkill -f -- '--steps 987653'; } || ok
# bench train --T-u/--T-i reach the K-FAC family's config: timed steps are whole T_i periods
out=$("$NGD" bench train --model mlp --widths 16 --optim kfac --batch 8 --steps 2 --warmup 1 --threads 1 --T-u 2 --T-i 6 --json 2>&1)
printf '%s\n' "$out" | grep -q '"steps":6,"period":6,' && ok || { bad "bench train --T-u 2 --T-i 6: period"; printf '%s\n' "$out" | tail -2; }
# ... and a rounding of more than twice the asked steps says so (a long T_i is a long run)
printf '%s\n' "$out" | grep -q 'note: --steps 2 rounded up to 6, whole preconditioner periods of 6 steps' && ok || bad "bench train: no note on --steps 2 -> 6"
expect_rc 2 "bench train --T-u 0" "$NGD" bench train --T-u 0
# a model's own option with none of its models listed is refused, as in ngd train (chargpt ran
# on its text, the mlp at context 64, without a word); widths a model refuses exit 2 before
# any child runs
expect_rc 2 "bench train chargpt --data cifar100" "$NGD" bench train --model chargpt --data cifar100 --optim sgd --steps 1 --warmup 1
expect_msg "--data: used only by the image models (mlp, cnn, vit, vgg16bn), which --model 'chargpt' does not list" "bench train --data for text: message"
expect_rc 2 "bench train mlp --context 32" "$NGD" bench train --model mlp --context 32 --optim sgd --steps 1 --warmup 1
expect_msg "--context: used only by chargpt, which --model 'mlp' does not list" "bench train --context for images: message"
expect_rc 2 "bench train chargpt --widths 64,2,3" "$NGD" bench train --model chargpt --widths 64,2,3 --optim sgd --steps 1 --warmup 1
expect_msg "--model chargpt: chargpt: --widths C,DEPTH,HEADS needs C divisible by HEADS" "bench train bad widths: message"
printf '%s\n' "$out" | grep -q "sgemm\|ms per step" && bad "bench train with bad widths ran a configuration" || ok
# counts out of range are refused before anything runs (2^61 steps wrapped the timing array's
# size: a heap overflow), as are a thread count libgomp cannot start and a repeated entry
expect_rc 2 "bench train --steps 2^61" "$NGD" bench train --model mlp --optim sgd --steps 2305843009213693952
expect_msg "--steps: '2305843009213693952' is too large (at most 1000000)" "bench train --steps 2^61 message"
expect_rc 2 "bench train --steps 2^64" "$NGD" bench train --model mlp --optim sgd --steps 18446744073709551616
expect_rc 2 "bench train --threads 100000" "$NGD" bench train --model mlp --optim sgd --threads 100000
expect_msg "--threads: '100000' is too large (at most 1024)" "bench train --threads message"
expect_rc 2 "OMP_NUM_THREADS=100000" env OMP_NUM_THREADS=100000 "$NGD" train --max-steps 1
expect_msg "OMP_NUM_THREADS=100000: more threads than ngd runs (1024)" "OMP_NUM_THREADS message"
expect_msg "hint: give OMP_NUM_THREADS (or --threads) at most 1024" "OMP_NUM_THREADS hint of a command with --threads"
# a command without --threads is not told to give it; ngd plot runs no threads and ignores it
expect_rc 2 "OMP_NUM_THREADS=100000 bench step" env OMP_NUM_THREADS=100000 "$NGD" bench step --only nothing
expect_msg "hint: give OMP_NUM_THREADS at most 1024, or unset it" "OMP_NUM_THREADS hint of a command without --threads"
tmp_omp=$(mktemp -u /tmp/ngd-omp.XXXXXX)
printf '{"type":"step","step":1,"loss":2.0}\n' > "$tmp_omp.jsonl"
expect_rc 0 "OMP_NUM_THREADS=100000 plot" env OMP_NUM_THREADS=100000 "$NGD" plot "$tmp_omp.jsonl" -o "$tmp_omp.svg"
rm -f "$tmp_omp.jsonl" "$tmp_omp.svg"
# ... unless --threads overrides it, as its message says
expect_rc 0 "OMP_NUM_THREADS=100000 with --threads 1" env OMP_NUM_THREADS=100000 "$NGD" bench train --model mlp --widths 16 --optim sgd --steps 2 --warmup 1 --threads 1
expect_rc 0 "OMP_NUM_THREADS=100000 with --threads=1" env OMP_NUM_THREADS=100000 "$NGD" bench train --model mlp --widths 16 --optim sgd --steps 2 --warmup 1 --threads=1
expect_rc 0 "OMP_NUM_THREADS=100000 with --thread 1 (a prefix getopt takes)" env OMP_NUM_THREADS=100000 "$NGD" bench train --model mlp --widths 16 --optim sgd --steps 2 --warmup 1 --thread 1
expect_rc 2 "bench train --optim sgd,sgd" "$NGD" bench train --model mlp --optim sgd,sgd
expect_msg "--optim: 'sgd' is repeated in 'sgd,sgd'" "bench train repeated entry message"
expect_rc 1 "bench train: a period past 10^6" "$NGD" bench train --model mlp --widths 16 --optim bkfac --batch 8 --steps 2 --warmup 1 --threads 1 --T-u 999999 --T-i 1000000
expect_msg "a preconditioner period of 999999000000 steps (the lcm of --T-u and --T-i): at most 1000000" "bench train period message"
# The factored application (the K-FAC family's default, as in ngd train; --no-factored turns it
# off): K-FAC's eigenbasis then comes from the rows (8 rows of the 785-wide input layer: fewer
# optimizer FLOPs than from the gradient), and the row says so
bt_k="bench train --model mlp --widths 16 --optim kfac --batch 8 --steps 2 --warmup 1 --threads 1 --T-u 2 --T-i 6 --json"
# shellcheck disable=SC2086
out1=$("$NGD" $bt_k --no-factored 2>&1); out2=$("$NGD" $bt_k 2>&1)
{ printf '%s\n' "$out1" | grep '^{'; printf '%s\n' "$out2" | grep '^{'; } | python3 -c 'import json,sys; a,b=(json.loads(l) for l in sys.stdin); sys.exit(0 if b["structure"] == "factored" and a["structure"] == "-" and 0 < b["opt_gflop"] < 0.9 * a["opt_gflop"] else 1)' && ok || { bad "bench train kfac (factored by default) against --no-factored: row"; printf '%s\n' "$out2" | tail -1; }
expect_rc 2 "bench train --factored --no-factored" "$NGD" bench train --optim kfac --factored --no-factored
expect_msg "--factored or --no-factored given twice" "bench train --factored --no-factored message"
# --kfac-damping pi reaches the config: the 256 x 785 first layer is then preconditioned
# through inverse operators formed every T_i = 6 steps, two products a step instead of four
# (fewer optimizer FLOPs, about 0.7x), and the row says so
bt_k="bench train --model mlp --widths 256 --optim kfac --no-factored --batch 8 --steps 2 --warmup 1 --threads 1 --T-u 2 --T-i 6 --json"
# shellcheck disable=SC2086
out1=$("$NGD" $bt_k 2>&1); out2=$("$NGD" $bt_k --kfac-damping pi 2>&1)
{ printf '%s\n' "$out1" | grep '^{'; printf '%s\n' "$out2" | grep '^{'; } | python3 -c 'import json,sys; a,b=(json.loads(l) for l in sys.stdin); sys.exit(0 if b["structure"] == "pi" and a["structure"] == "-" and 0 < b["opt_gflop"] < 0.8 * a["opt_gflop"] else 1)' && ok || { bad "bench train --kfac-damping pi: row"; printf '%s\n' "$out2" | tail -1; }
expect_rc 2 "bench train --kfac-damping foo" "$NGD" bench train --kfac-damping foo
# SINGD's dense factors take the factored application by default too: the 256 x 785 first layer
# is preconditioned from its 8 rows (fewer optimizer FLOPs than --no-factored's), and the row
# says so; a diagonal structure does not take it
bt_s="bench train --model mlp --widths 256 --optim singd --structure dense --batch 8 --steps 2 --warmup 1 --threads 1 --T 2 --json"
# shellcheck disable=SC2086
out1=$("$NGD" $bt_s --no-factored 2>&1); out2=$("$NGD" $bt_s 2>&1)
{ printf '%s\n' "$out1" | grep '^{'; printf '%s\n' "$out2" | grep '^{'; } | python3 -c 'import json,sys; a,b=(json.loads(l) for l in sys.stdin); sys.exit(0 if b["structure"] == "dense,factored" and a["structure"] == "dense" and 0 < b["opt_gflop"] < 0.9 * a["opt_gflop"] else 1)' && ok || { bad "bench train singd (factored by default) against --no-factored: row"; printf '%s\n' "$out2" | tail -1; }
# shellcheck disable=SC2086
out1=$("$NGD" ${bt_s/dense/diagonal} 2>&1)
printf '%s\n' "$out1" | grep '^{' | python3 -c 'import json,sys; a=json.loads(sys.stdin.readline()); sys.exit(0 if a["structure"] == "diagonal" else 1)' && ok || bad "bench train singd diagonal: row $(printf '%s\n' "$out1" | tail -1)"
# ingd is SINGD with dense factors (ngd train refuses --structure for it): one dense row
# whatever --structure lists (a "diagonal" ingd row was SINGD-diagonal under INGD's name)
# shellcheck disable=SC2086
out1=$("$NGD" ${bt_s/singd --structure dense/ingd --structure dense,diagonal} 2>&1)
printf '%s\n' "$out1" | grep '^{' | python3 -c 'import json,sys; r=[json.loads(l) for l in sys.stdin]; sys.exit(0 if len(r) == 1 and r[0]["structure"].startswith("dense") and r[0]["optim"] == "ingd" else 1)' && ok || bad "bench train ingd: one dense row: $(printf '%s\n' "$out1" | grep '^{')"
# a method's own option with none of its methods in --optim is an error, as in ngd train
expect_rc 2 "bench train --optim sgd --kfac-damping pi" "$NGD" bench train --optim sgd --kfac-damping pi
expect_msg "--kfac-damping: used only by kfac, which --optim 'sgd' does not list" "bench train --kfac-damping without kfac"
expect_rc 2 "bench train --optim adamw,bkfac --kfac-damping pi" "$NGD" bench train --optim adamw,bkfac --kfac-damping pi
expect_rc 2 "bench train --optim adamw --factored" "$NGD" bench train --optim adamw --factored
# (--T and --structure too: a list without SINGD, INGD or IKFAC ran them silently unused)
expect_rc 2 "bench train --optim sgd --T 3" "$NGD" bench train --optim sgd --T 3
expect_msg "--T: used only by SINGD, INGD and IKFAC, which --optim 'sgd' does not list" "bench train --T without SINGD"
expect_rc 2 "bench train --optim kfac --structure diagonal" "$NGD" bench train --optim kfac --structure diagonal
expect_msg "--structure: used only by SINGD, INGD and IKFAC, which --optim 'kfac' does not list" "bench train --structure without SINGD"
# lists: an empty entry, and a structure whatever --optim lists, are errors naming the option
expect_rc 2 "bench train --model mlp," "$NGD" bench train --model mlp,
expect_msg "--model: an empty entry in 'mlp,'" "bench train empty entry message"
expect_rc 2 "bench train --optim sgd --structure foo" "$NGD" bench train --optim sgd --structure foo
expect_msg "--structure: unknown structure 'foo'" "bench train structure message"
expect_rc 2 "bench step --only nothing" "$NGD" bench step --only nothing
expect_msg "--only 'nothing' matches no configuration" "bench step --only message"
expect_rc 2 "bench step stray argument" "$NGD" bench step foo
expect_rc 2 "bench train --optim singd --T-i 5" "$NGD" bench train --optim singd --T-i 5
if [ -s "$tmp/p.svg" ]; then
    grep -q "<svg" "$tmp/p.svg" && ok || bad "bench precond plot: no <svg element"
    [ "$(grep -c "<polyline" "$tmp/p.svg")" -eq 4 ] && ok || bad "bench precond plot: expected a line per method and panel"
    grep -q "SINGD diagonal" "$tmp/p.svg" && ok || bad "bench precond plot: legend lacks SINGD diagonal"
else
    bad "bench precond wrote no $tmp/p.svg"
fi
out=$("$NGD" bench precond --d 64 --reps 1 --methods bkfac 2>&1); rc=$?
[ "$rc" -eq 0 ] && printf '%s\n' "$out" | grep -q "^B-KFAC .*\*" && ok || bad "bench precond table: B-KFAC off the Brand track not marked (exit $rc)"
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

# output that cannot be written (stdout on a full disk) is an error for every command, at exit
if [ -w /dev/full ]; then
    for args in "--help" "--version" "plot --help" "bench precond --help" "replay --help"; do
        out=$("$NGD" $args 2>&1 >/dev/full); rc=$?
        [ "$rc" -eq 1 ] && ok || bad "ngd $args > /dev/full: exit $rc, want 1"
        printf '%s\n' "$out" | grep -q "^ngd: error: standard output: " && ok || bad "ngd $args > /dev/full: no message"
    done
    out=$("$NGD" bench precond --d 64 --reps 1 --methods kfac --json 2>&1 >/dev/full); rc=$?
    [ "$rc" -eq 1 ] && ok || bad "bench precond --json > /dev/full: exit $rc, want 1"
    if [ -d "$SHARED/oracle" ]; then
        out=$("$NGD" replay "$SHARED/oracle" 2>&1 >/dev/full); rc=$?
        [ "$rc" -eq 1 ] && ok || bad "replay > /dev/full: exit $rc, want 1"
    fi
    "$NGD" --version >&- 2>/dev/null; rc=$?  # closed stdout with output pending: an error too
    [ "$rc" -eq 1 ] && ok || bad "ngd --version >&-: exit $rc, want 1"
    "$NGD" frobnicate >&- 2>/dev/null; rc=$?  # nothing to write: the command's own status
    [ "$rc" -eq 2 ] && ok || bad "ngd frobnicate >&-: exit $rc, want 2"
else
    echo "SKIP: no /dev/full: write errors not tested"
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
