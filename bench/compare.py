#!/usr/bin/python3
"""compare.py — `make bench-compare`: PyTorch (bench/pytorch_reference.py) and
`ngd bench train`, run alternately on the same models, optimizers, batch, steps and threads,
then one table of ms per step and PyTorch/ngd ratios. Standard library only.

For each round, for each (model, optimizer): one PyTorch run, then one ngd run (each its own
process, with its own warm-up); then the ngd SINGD configurations that the issue's table
quotes a PyTorch figure for. A run gives its mean ms per step (over whole preconditioner
periods for SINGD); the table shows the median of the rounds. Before any figure is used the
parameter counts of the two sides must be equal (the check that the models are the same).

The official SINGD package is not in Debian, so by default the PyTorch+SINGD figures are QUOTED
from the issue's table (measured earlier, not now) and printed beside ngd's SINGD figures
measured now. With --official-singd DIR (a folder holding the official source's `singd`
package, e.g. a checkout of github.com/f-dangel/singd), the official SINGD is timed too, in
the same rounds, by pytorch_reference.py --optim singd-official; its `einops` and `einconv`
dependencies (not in Debian either) come from bench/official_shims, stand-ins for the few
calls it makes, unless real ones are found on PYTHONPATH first.
--params-only only builds the models and checks their parameter counts (no timing).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("mlp", "cnn", "chargpt", "vit", "vgg16bn")

# The table (ms per step, 2 threads, batch 128, PyTorch 1.13 from Debian with
# OpenBLAS-OpenMP; official SINGD 0.0.5; mean over 30 steps, 10 for vgg16bn, after 10 warm-up
# steps): (model, structure) -> (PyTorch + SINGD ms, ngd ms then, note).
QUOTED_SINGD = {
    ("mlp", "dense"): (15.7, 11.95, ""),
    ("mlp", "diagonal"): (2.60, 1.50, ""),
    ("cnn", "dense"): (267, 301, ""),
    ("cnn", "diagonal"): (148, 196, ""),
    ("vgg16bn", "dense"): (2701, 2886, ""),
    ("vgg16bn", "diagonal"): (896, 1400, ""),
    ("chargpt", "dense"): (98.1, 134, "AdamW for embeddings, norms"),
}


def split_list(opt, s, may_be_empty):
    """The entries of a comma list: none empty, none twice ('' is no entry where allowed)."""
    if s == "" and may_be_empty:
        return []
    items = s.split(",")
    for i, x in enumerate(items):
        if not x:
            fail(f"--{opt}: an empty entry in '{s}'", "a comma list, e.g. mlp,cnn")
        if x in items[:i]:
            fail(f"--{opt}: '{x}' is repeated in '{s}'", "name each once")
    return items


def fmt(ms):
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def fail(msg, hint=None):
    print(f"bench-compare: error: {msg}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.exit(1)


def run_json(cmd, env):
    """Runs cmd, returns its JSON lines (dicts); fails loudly on a non-zero exit."""
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        fail(f"'{' '.join(cmd)}' exited with {p.returncode}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description="PyTorch vs ngd bench train, interleaved")
    ap.add_argument("--ngd", default="build/ngd", help="the ngd binary (build/ngd)")
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="the Python with Debian's torch (/usr/bin/python3)")
    ap.add_argument("--models", default="mlp,cnn,chargpt",
                    help="comma-separated, of " + ", ".join(MODELS) + " (mlp,cnn,chargpt)")
    ap.add_argument("--optims", default="sgd,adamw", help="sgd, adamw (sgd,adamw)")
    ap.add_argument("--singd", default="dense,diagonal",
                    help="SINGD structures for the quoted rows ('' for none)")
    ap.add_argument("--rounds", type=int, default=3, help="PyTorch/ngd alternations (3)")
    ap.add_argument("--threads", type=int, default=2, help="threads of both sides (2)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per run (30)")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up steps per run (10)")
    ap.add_argument("--batch", type=int, default=128, help="batch size (128)")
    ap.add_argument("--context", type=int, default=64, help="chargpt context (64)")
    ap.add_argument("--momentum", type=float, default=0.9,
                    help="SGD momentum of both sides (0.9, as the issue's table)")
    ap.add_argument("--official-singd", metavar="DIR", default=None,
                    help="time the official SINGD package found in DIR (holding singd/) in the "
                         "same rounds, instead of only quoting the issue's figures")
    ap.add_argument("--precision", choices=("f32", "bf16"), default="f32",
                    help="f32 (default) or bf16: ngd's --precision bf16 against PyTorch's CPU "
                         "autocast to bfloat16, on every row")
    ap.add_argument("--ngd-torch", type=int, default=1,
                    help="also time SINGD through ngd.torch in the PyTorch loop (1; 0: no)")
    ap.add_argument("--params-only", action="store_true",
                    help="only check that both sides' models have the same parameter counts")
    a = ap.parse_args()
    models = split_list("models", a.models, False)
    optims = split_list("optims", a.optims, True)
    structs = split_list("singd", a.singd, True)
    for m in models:
        if m not in MODELS:
            fail(f"unknown model '{m}'", "models: " + ", ".join(MODELS))
    for o in optims:
        if o not in ("sgd", "adamw"):
            fail(f"'{o}' is not sgd or adamw", "SINGD rows come from --singd")
    off = a.official_singd
    for s in structs:
        if s not in ("dense", "diagonal") and not off:
            fail(f"--singd: '{s}' has no quoted figures", "dense, diagonal, or --official-singd")
    if off and not os.path.isfile(os.path.join(off, "singd", "optim", "optimizer.py")):
        fail(f"--official-singd: no singd/optim/optimizer.py under '{off}'",
             "give the folder that holds the official source's singd package")
    if min(a.rounds, a.threads, a.steps, a.warmup, a.batch, a.context) < 1:
        fail("--rounds, --threads, --steps, --warmup, --batch, --context must be >= 1")
    if not os.access(a.ngd, os.X_OK):
        fail(f"no ngd binary at {a.ngd}", "run make first")

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    py = [a.python, os.path.join(HERE, "pytorch_reference.py"), "--json", "--threads",
          str(a.threads), "--batch", str(a.batch), "--context", str(a.context),
          "--sgd-momentum", str(a.momentum), "--precision", a.precision]
    ngd0 = [a.ngd, "bench", "train", "--json", "--threads", str(a.threads), "--momentum",
            str(a.momentum), "--precision", a.precision]
    ngd = ngd0 + ["--batch", str(a.batch)]

    def ctx(m):  # ngd refuses --context for a model without one
        return ["--context", str(a.context)] if m == "chargpt" else []
    steps = ["--steps", str(a.steps), "--warmup", str(a.warmup)]

    if a.params_only:
        counts = {}
        for m in models:  # a tiny batch and one step: only the count is read
            r = run_json(ngd0 + ctx(m) + ["--batch", "4", "--model", m, "--optim", "sgd",
                                          "--steps", "1", "--warmup", "1"], env)
            counts[m] = r[0]["params"]
        expect = ",".join(f"{m}={n}" for m, n in counts.items())
        got = {r["model"]: r["params"] for r in run_json(
            py + ["--params-only", "--model", ",".join(models), "--expect-params", expect], env)}
        print(f"{'model':8} {'ngd params':>11} {'PyTorch params':>15}")
        for m in models:
            print(f"{m:8} {counts[m]:>11} {got[m]:>15}  {'equal' if got[m] == counts[m] else 'DIFFER'}")
        return 0

    py_ms, ngd_ms, params, singd_ms, ngdt_ms = {}, {}, {}, {}, {}
    # ngd.torch finds the libngd of the ngd binary's build folder
    tenv = dict(env, NGD_LIBRARY=os.path.join(os.path.dirname(os.path.abspath(a.ngd)), "libngd.so"))
    header = None
    singd_rows = [(m, s) for m in models for s in structs if off or (m, s) in QUOTED_SINGD]
    off_ms = {}
    # the official package first, then the user's PYTHONPATH, then the stand-ins
    oenv = dict(env, PYTHONPATH=os.pathsep.join(
        [x for x in (off, os.environ.get("PYTHONPATH"), os.path.join(HERE, "official_shims"))
         if x]))
    for r in range(a.rounds):
        print(f"bench-compare: round {r + 1}/{a.rounds}", file=sys.stderr, flush=True)
        for m in models:
            for o in optims:
                out = run_json(py + steps + ["--model", m, "--optim", o], env)
                header = header or next((x for x in out if x.get("header")), None)
                p = next(x for x in out if not x.get("header"))
                n = run_json(ngd + ctx(m) + steps + ["--model", m, "--optim", o], env)[0]
                if p["params"] != n["params"]:
                    fail(f"{m}: {p['params']} parameters in PyTorch, {n['params']} in ngd: "
                         "the models differ", "bench/pytorch_reference.py must follow "
                         f"src/nn/models/{m}.c")
                params[m] = n["params"]
                py_ms.setdefault((m, o), []).append(p["ms_mean"])
                ngd_ms.setdefault((m, o), []).append(n["ms_mean"])
            ss = [s for mm, s in singd_rows if mm == m]
            if ss:
                if off:  # the official package in the PyTorch loop, then ngd
                    for n in run_json(py + steps + ["--model", m, "--optim", "singd-official",
                                                    "--structure", ",".join(ss)], oenv):
                        if not n.get("header"):
                            off_ms.setdefault((m, n["structure"]), []).append(n["ms_mean"])
                q = QUOTED_SINGD.get((m, ss[0]))
                extra = ["--param-optim", "adamw"] if (q[2] if q else m in ("chargpt", "vit")) else []
                # --no-factored: the official SINGD's order of products (C Cᵀ Ĝ K Kᵀ), so that
                # the rows compare the same arithmetic (ngd train's default for dense factors
                # takes the batch's rows, docs/algorithms.md#natural-gradient)
                for n in run_json(ngd + ctx(m) + steps + ["--model", m, "--optim", "singd",
                                                          "--no-factored", "--structure",
                                                          ",".join(ss)] + extra, env):
                    singd_ms.setdefault((m, n["structure"]), []).append(n["ms_mean"])
                if a.ngd_torch and a.precision == "f32":  # the same SINGD in a PyTorch loop:
                    # ngd.torch over libngd (f32 only: it takes f32 activations)
                    for n in run_json(py + steps + ["--model", m, "--optim", "ngd-singd",
                                                    "--structure", ",".join(ss)], tenv):
                        if not n.get("header"):
                            ngdt_ms.setdefault((m, n["structure"]), []).append(n["ms_mean"])

    med = statistics.median
    print(f"\nbench-compare: PyTorch vs ngd bench train; batch {a.batch}, {a.threads} threads, "
          f"{a.warmup} warm-up + {a.steps} timed steps per run, {a.rounds} rounds (PyTorch, "
          "ngd alternately)" + ("; bf16: ngd --precision bf16, PyTorch autocast to bfloat16"
                                if a.precision == "bf16" else ""))
    if header:
        libs = [os.path.basename(x) for x in header.get("blas_libs", [])]
        print(f"PyTorch {header['torch']}: BLAS {' -> '.join(libs) or '?'} (OpenBLAS core "
              f"{header.get('openblas_core')}, OPENBLAS_CORETYPE="
              f"{header.get('OPENBLAS_CORETYPE') or 'unset'}), BLAS_INFO="
              f"{header.get('blas_info')}, oneDNN {'on' if header.get('mkldnn') else 'off'}, "
              f"CPU capability {header.get('cpu_capability')}")
        core = str(header.get("openblas_core") or "")
        if core.lower() in ("prescott", "katmai", "core2", "penryn", "dunnington", "nehalem"):
            # (OpenBLAS 0.3.21 does not know some newer CPUs, e.g. an Intel Xeon of family 6
            # model 207, and falls back to its SSE3 kernels)
            print(f"note: OpenBLAS chose its old '{core}' kernels on this CPU, so PyTorch's "
                  "BLAS products (Linear layers) run far below the machine's rate: for a fair "
                  "comparison set OPENBLAS_CORETYPE=SKYLAKEX (AVX-512) or HASWELL (AVX2)")
    print("ms per step: median over the rounds of each run's mean step; "
          "PyTorch/ngd > 1 means ngd is faster\n")
    print(f"{'model':8} {'optimizer':10} {'params':>9} {'PyTorch ms':>11} {'ngd ms':>9} "
          f"{'PyTorch/ngd':>11}   rounds: PyTorch | ngd")
    for m in models:
        for o in optims:
            pm, nm = med(py_ms[(m, o)]), med(ngd_ms[(m, o)])
            rounds = " ".join(map(fmt, py_ms[(m, o)])) + " | " + " ".join(map(fmt, ngd_ms[(m, o)]))
            print(f"{m:8} {o:10} {params[m]:>9} {pm:11.2f} {nm:9.2f} {pm / nm:11.2f}   {rounds}")
    if singd_rows and off:
        t = bool(ngdt_ms)
        print("\nSINGD, all measured now: the official package (PyTorch loop, its defaults; "
              "parameters of\nnorms and embeddings are left untrained by it, trained by AdamW "
              "in ngd's chargpt/vit), ngd bench train,\nand ngd.torch in the same PyTorch loop "
              "(mean over whole periods, T = 10)\n")
        print(f"{'model':8} {'optimizer':15} {'official ms':>11} {'ngd ms':>9} "
              f"{'official/ngd':>12}" + (f" {'ngd.torch ms':>12} {'official/ngd.torch':>18}"
                                         if t else "") + "   rounds: official | ngd")
        for m, s in singd_rows:
            om, now = med(off_ms[(m, s)]), med(singd_ms[(m, s)])
            tn = med(ngdt_ms[(m, s)]) if (m, s) in ngdt_ms else None
            rounds = " ".join(map(fmt, off_ms[(m, s)])) + " | " + " ".join(
                map(fmt, singd_ms[(m, s)]))
            print(f"{m:8} {'singd ' + s:15} {om:11.2f} {now:9.2f} {om / now:12.2f}"
                  + (f" {tn:12.2f} {om / tn:18.2f}" if tn else "") + f"   {rounds}")
    elif singd_rows:
        print("\nSINGD: the PyTorch figures are QUOTED from the issue's table (official SINGD "
              "0.0.5 on PyTorch 1.13,\nmeasured earlier, NOT now: SINGD is not in Debian); "
              "ngd is measured now (mean over whole periods, T = 10)\n")
        t = bool(ngdt_ms)
        print(f"{'model':8} {'optimizer':15} {'PyTorch ms':>10} {'ngd ms':>9} {'ngd ms':>9} "
              f"{'quoted PyTorch/':>15}" + (f" {'ngd.torch ms':>12} {'quoted PyTorch/':>15}" if t else ""))
        print(f"{'':8} {'':15} {'(quoted)':>10} {'(quoted)':>9} {'(now)':>9} {'ngd now':>15}"
              + (f" {'(now)':>12} {'ngd.torch now':>15}" if t else ""))
        # the quoted figures are batch 128, 2 threads, f32 (chargpt: context 64): at other
        # settings a ratio against them would compare different work
        other = [f"{k} {v}" for k, v, q in (("--batch", a.batch, 128), ("--threads", a.threads, 2),
                                              ("--precision", a.precision, "f32")) if v != q]
        for m, s in singd_rows:
            q_py, q_ngd, note = QUOTED_SINGD[(m, s)]
            now = med(singd_ms[(m, s)])
            tn = med(ngdt_ms[(m, s)]) if (m, s) in ngdt_ms else None
            diff = other + ([f"--context {a.context}"] if m == "chargpt" and a.context != 64 else [])
            r1 = f"{q_py / now:15.2f}" if not diff else f"{'-':>15}"
            r2 = (f"{q_py / tn:15.2f}" if not diff else f"{'-':>15}") if tn else ""
            print(f"{m:8} {'singd ' + s:15} {q_py:10.4g} {q_ngd:9.4g} {now:9.2f} {r1}"
                  + (f" {tn:12.2f} {r2}" if tn else "") + (f"   ({note})" if note else "")
                  + (f"   (no ratio: quoted at batch 128, 2 threads, f32, context 64; here "
                     + ", ".join(diff) + ")" if diff else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
