#!/usr/bin/env bash
# precision_study.sh — issue 11's study: the same runs (seed, data subset, hyper-parameters)
# in float32 and in bf16 (`ngd train --precision bf16`), for SINGD (dense, diagonal,
# hierarchical, block-diagonal), the K-FAC family (K-FAC, RS-KFAC, B-KFAC: setting (a), bf16
# factor averages, decompositions in float32 from them) and AdamW; groups mlp-b and cnn-b add
# the K-FAC family's setting (b), precision "bf16-b": `--precision bf16 --kfac-arith bf16`,
# every operation of the factor path rounded to bf16 (emulated), no float64 retries. Prints one markdown row per run
# (test accuracy and loss, skipped steps, decomposition failures and float64 retries summed
# over the layers from the last health record, wall time) as the runs finish, so a cut-short
# study still reports what ran. Not part of `make test`: minutes to hours of CPU.
#
#   scripts/precision_study.sh [NGD] [OUTDIR] [GROUPS]
#     NGD      the ngd binary (build/ngd)
#     OUTDIR   logs (runs/precision-study)
#     GROUPS   comma list of: mlp, cnn, vit, cifar-cnn (those four), mlp-b, cnn-b, cifar-cnn-b,
#              mlp-b-damping (MLP K-FAC at λ_rel = 1e-3 and 1e-4, near and below bf16's unit
#              2^-8, in f32, bf16 and bf16-b), and cifar-cnn-seeds (the cifar-cnn runs with
#              each seed of SEEDS, default "1 2", K-FAC also in bf16-b)
# Environment: THREADS (1), CIFAR (../shared/data/cifar-100-binary), MLP_EXTRA (options added
# to the MLP runs, e.g. "--max-steps 12 --subset 1000" for a quick check), REUSE (1: keep the runs
# whose logs are complete).
set -euo pipefail
cd "$(dirname "$0")/.."
ngd=${1:-build/ngd}
out=${2:-runs/precision-study}
groups=${3:-mlp,cnn,vit,cifar-cnn}
threads=${THREADS:-1}
cifar=${CIFAR:-../shared/data/cifar-100-binary}
mkdir -p "$out"

# the table's cells of one log: test accuracy and loss, skipped steps, wall time from the run
# summary; decomposition failures and float64 retries summed over the layers of the last
# step record that has health
cells() { # LOG
    /usr/bin/python3 - "$1" <<'EOF'
import json, sys
summ, health = {}, []
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("type") == "summary":
        summ = r
    elif r.get("type") == "step" and "health" in r:
        health = r["health"]
def num(v, fmt):
    return fmt % v if isinstance(v, (int, float)) else "—"
acc = summ.get("test_accuracy")
print(" | ".join([num(100 * acc, "%.2f%%") if isinstance(acc, float) else "—",
                  num(summ.get("test_loss"), "%.4g"), num(summ.get("skipped_steps"), "%d"),
                  str(sum(h.get("decomp_failures", 0) for h in health)),
                  str(sum(h.get("decomp_retries", 0) for h in health)),
                  num(summ.get("wall_s"), "%.4g")]))
EOF
}

# run NAME -- ngd train options (without --precision, --log); PRECS: the precisions (f32 bf16;
# bf16-b: --precision bf16 --kfac-arith bf16)
run() {
    local name=$1 prec
    shift
    for prec in ${PRECS:-f32 bf16}; do
        local log="$out/$name-$prec.jsonl" rc=0 popt="--precision $prec"
        [ "$prec" = bf16-b ] && popt="--precision bf16 --kfac-arith bf16"
        # REUSE=1: a run whose log already ends with its summary is not run again
        if [ "${REUSE:-0}" = 1 ] && [ -f "$log" ] && tail -1 "$log" | grep -q '"type":"summary"'; then
            :
        else
            rm -f "$log"
            # shellcheck disable=SC2086 # popt is two options
            "$ngd" train "$@" $popt --threads "$threads" --log "$log" >"$out/$name-$prec.out" 2>&1 || rc=$?
        fi
        if [ "$rc" != 0 ]; then
            echo "| $name | $prec | exit $rc: $(tail -1 "$out/$name-$prec.out") | | | | | |"
            continue
        fi
        echo "| $name | $prec | $(cells "$log") |"
    done
}

echo "| run | precision | test acc. | test loss | skipped steps | decomp. failures | f64 retries | wall s |"
echo "|---|---|---|---|---|---|---|---|"
singd="--lr 0.003 --damping 0.01"
kfac="--lr 0.2 --damping 0.01"
case ",$groups," in *,mlp,*)
    m="--model mlp --epochs 3 --schedule cosine ${MLP_EXTRA:-}"
    run mlp-adamw $m --optim adamw --lr 0.001
    run mlp-singd-dense $m --optim singd $singd
    run mlp-singd-diagonal $m --optim singd $singd --structure diagonal
    run mlp-singd-hier $m --optim singd $singd --structure hierarchical15_15
    run mlp-kfac $m --optim kfac $kfac
    run mlp-rskfac $m --optim rskfac $kfac
    run mlp-bkfac $m --optim bkfac $kfac
    ;;
esac
case ",$groups," in *,cnn,*)
    m="--model cnn --epochs 2 --subset 20000 --schedule cosine"
    run cnn-adamw $m --optim adamw --lr 0.001
    run cnn-singd-dense $m --optim singd $singd
    run cnn-singd-diagonal $m --optim singd $singd --structure diagonal
    run cnn-kfac $m --optim kfac $kfac
    ;;
esac
case ",$groups," in *,mlp-b,*)
    m="--model mlp --epochs 3 --schedule cosine ${MLP_EXTRA:-}"
    PRECS=bf16-b run mlp-kfac $m --optim kfac $kfac
    PRECS=bf16-b run mlp-rskfac $m --optim rskfac $kfac
    PRECS=bf16-b run mlp-bkfac $m --optim bkfac $kfac
    ;;
esac
case ",$groups," in *,mlp-b-damping,*)
    m="--model mlp --epochs 3 --schedule cosine ${MLP_EXTRA:-}"
    PRECS="f32 bf16 bf16-b" run mlp-kfac-d1e-3 $m --optim kfac --lr 0.2 --damping 0.001
    PRECS="f32 bf16 bf16-b" run mlp-kfac-d1e-4 $m --optim kfac --lr 0.2 --damping 0.0001
    ;;
esac
case ",$groups," in *,cnn-b,*)
    m="--model cnn --epochs 2 --subset 20000 --schedule cosine"
    PRECS=bf16-b run cnn-kfac $m --optim kfac $kfac
    ;;
esac
case ",$groups," in *,vit,*)
    m="--model vit --data cifar100 --data-dir $cifar --epochs 2 --subset 10000"
    p="--param-optim adamw --param-lr 0.001"
    run vit-adamw $m --optim adamw --lr 0.001
    run vit-singd-hier $m --optim singd $singd --structure hierarchical15_15 $p
    run vit-singd-block $m --optim singd $singd --structure block30diagonal $p
    run vit-kfac $m --optim kfac $kfac $p
    ;;
esac
case ",$groups," in *,cifar-cnn-b,*)
    m="--model cnn --data cifar100 --data-dir $cifar --epochs 2 --subset 20000 --augment"
    PRECS=bf16-b run cifar-cnn-kfac $m --optim kfac $kfac --param-optim adamw --param-lr 0.001
    ;;
esac
# cifar-cnn-seeds: the cifar-cnn runs again with the seeds of SEEDS (1 2), K-FAC also in
# setting (b): the seed-to-seed spread that one seed per cell cannot show
case ",$groups," in *,cifar-cnn-seeds,*)
    m="--model cnn --data cifar100 --data-dir $cifar --epochs 2 --subset 20000 --augment"
    p="--param-optim adamw --param-lr 0.001"
    for seed in ${SEEDS:-1 2}; do
        run cifar-cnn-adamw-s$seed $m --optim adamw --lr 0.001 --seed "$seed"
        run cifar-cnn-singd-dense-s$seed $m --optim singd $singd $p --seed "$seed"
        run cifar-cnn-singd-diagonal-s$seed $m --optim singd $singd --structure diagonal $p \
            --seed "$seed"
        PRECS="f32 bf16 bf16-b" run cifar-cnn-kfac-s$seed $m --optim kfac $kfac $p --seed "$seed"
    done
    ;;
esac
case ",$groups," in *,cifar-cnn,*)
    m="--model cnn --data cifar100 --data-dir $cifar --epochs 2 --subset 20000 --augment"
    p="--param-optim adamw --param-lr 0.001"
    run cifar-cnn-adamw $m --optim adamw --lr 0.001
    run cifar-cnn-singd-dense $m --optim singd $singd $p
    run cifar-cnn-singd-diagonal $m --optim singd $singd --structure diagonal $p
    run cifar-cnn-kfac $m --optim kfac $kfac $p
    ;;
esac
