#!/usr/bin/env python3
"""The K-FAC family's Fashion-MNIST epoch, side by side: the author's PyTorch code against ngd.

Issue 9 compares one epoch of the 784-512-512-10 MLP on Fashion-MNIST (batch 128, T_u 20,
T_i 100, 2 threads) trained by K-FAC and B-KFAC with the author's code
(github.com/ConstantinPuiu/Distributed_Brand_and_Randomized_KFACs, not in Debian) and with
`ngd train`. This script times both in one run, alternated, so that their ratio is measured
on one machine at one time rather than against figures quoted from another.

The author's code is not part of ngd: pass a checkout of it with --author DIR. It is written
for CUDA and NCCL; here it runs unchanged on the CPU: its modules' `torch.device('cuda:<rank>')`
is answered with the CPU, and its process group is gloo with one process (its all-reduces are
then copies). Its training loop is its `train_n_epochs` (main_utils/generic_utils.py) without
the data loader: the images are held as one normalised float tensor and a batch is a slice of a
shuffled order (cheaper than its torchvision loader, so the author's side is timed at its
fastest). The epoch's time is the loop's, as its own `time_to_epoch_end_train` is; ngd's is the
`wall_s` of `ngd train`'s log record of the epoch's last step (its loop, without data loading
and the test pass).

  python3 bench/kfac_author.py --author DIR [--methods kfac,bkfac] [--rounds 3] [--threads 2]

Each run is its own process. Prints, per method, the medians of the rounds, author / ngd, and
each side's test accuracy (the same data; each side with its own hyper-parameters: the author's
those of its MNIST scripts, ngd its defaults with --T-u 20 --T-i 100).
"""

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from compare import fmt, split_list  # bench/compare.py, beside this file

PKG = "Distributed_Brand_and_Randomized_KFACs"  # the name the author's modules import themselves by
DATA = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
METHODS = {  # ngd's name: (the author's module in solvers/, its class)
    "kfac": ("distributed_kfac_lean_Kfactors_batchsize", "KFACOptimizer"),
    "bkfac": ("distributed_B_kfac_lean_Kfactors_batchsize", "B_KFACOptimizer"),
    "rskfac": ("distributed_R_kfac_lean_Kfactors_batchsize", "R_KFACOptimizer"),
}


def fail(msg, hint=None):
    print(f"kfac_author: error: {msg}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.exit(1)


def read_idx(path):
    """An IDX file (gzip) as (shape, bytes)."""
    with gzip.open(path, "rb") as f:
        b = f.read()
    if len(b) < 4 or b[0] != 0 or b[1] != 0 or b[2] != 8:
        fail(f"{path}: not an IDX file of unsigned bytes")
    nd = b[3]
    shape = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return shape, b[4 + 4 * nd:]


def count(data, split):
    """The number of labels in data's IDX label file of split (train or t10k)."""
    with gzip.open(os.path.join(data, f"{split}-labels-idx1-ubyte.gz"), "rb") as f:
        return int.from_bytes(f.read(8)[4:8], "big")


def author_optimizer(author, method):
    """The author's optimizer class of method, imported from the checkout, for the CPU."""
    import importlib
    import torch
    import types

    if not os.path.isfile(os.path.join(author, "solvers", METHODS["bkfac"][0] + ".py")):
        fail(f"--author {author}: no solvers/{METHODS['bkfac'][0]}.py there",
             f"a checkout of github.com/ConstantinPuiu/{PKG}")
    parent = tempfile.mkdtemp(prefix="kfac_author.")
    os.symlink(os.path.abspath(author), os.path.join(parent, PKG))
    sys.path.insert(0, parent)

    class CpuTorch(types.ModuleType):  # torch, except that a CUDA device is the CPU
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def device(spec, *a):
            return torch.device("cpu") if str(spec).startswith("cuda") else torch.device(spec, *a)

    modname, cls = METHODS[method]
    mod = importlib.import_module(f"{PKG}.solvers.{modname}")
    mod.torch = CpuTorch("torch")
    return getattr(mod, cls)


def worker(a):
    """One epoch of the author's code; prints one JSON line."""
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from pytorch_reference import blas_info, mlp  # bench/pytorch_reference.py

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    opt_cls = author_optimizer(a.author, a.worker)
    with tempfile.TemporaryDirectory() as d:
        dist.init_process_group("gloo", init_method="file://" + os.path.join(d, "pg"), rank=0,
                                world_size=1)

        def load(split):
            (n, h, w), img = read_idx(os.path.join(a.data, f"{split}-images-idx3-ubyte.gz"))
            _, lab = read_idx(os.path.join(a.data, f"{split}-labels-idx1-ubyte.gz"))
            x = torch.frombuffer(bytearray(img), dtype=torch.uint8).view(n, h * w).float() / 255
            return x, torch.frombuffer(bytearray(lab), dtype=torch.uint8).long()

        xtr, ytr = load("train")
        xte, yte = load("t10k")
        mean, std = xtr.mean().item(), xtr.std(unbiased=False).item()  # as ngd: the train set's
        xtr, xte = (xtr - mean) / std, (xte - mean) / std

        model = mlp(1, 28, 28, 10)  # ngd's --model mlp: 784-512-512-10, ReLU
        # the hyper-parameters of the author's MNIST scripts (example_shell_files/MNIST_sh_files)
        lr0, decay_rate, decay_period = 0.3, 9, 80

        def lr_exp(epoch_n, iter_n=None):  # main_utils/lrfct.py's 'exp' schedule
            return lr0 * (1.0 - epoch_n / decay_period) ** decay_rate

        kw = dict(rank=0, world_size=1, batch_size=a.batch, lr_function=lr_exp, momentum=0.0,
                  stat_decay=0.95, damping=0.1, kl_clip=0.07, weight_decay=7e-4, TCov=a.T_u,
                  TInv=a.T_i)
        if a.worker == "bkfac":  # fixed ranks (ngd's), each Brand update every TCov (ngd's m_B 1)
            kw.update(rsvd_rank=220, brand_update_multiplier_to_TCov=1,
                      B_truncate_before_inversion=False, adaptable_rsvd_rank=False,
                      adaptable_B_rank=False)
        elif a.worker == "rskfac":  # its RSVD: rank 220, oversampling 10, 3 power iterations
            kw.update(rsvd_rank=220, adaptable_rsvd_rank=False,
                      work_eff_alloc_with_time_measurement=False)
        opt = opt_cls(model, **kw)
        loss_fn = nn.CrossEntropyLoss()
        steps = xtr.shape[0] // a.batch  # full batches, as ngd
        order = torch.randperm(xtr.shape[0])
        t0 = time.perf_counter()
        for i in range(steps):  # main_utils/generic_utils.py's train_n_epochs, one epoch
            idx = order[i * a.batch:(i + 1) * a.batch]
            x, y = xtr[idx], ytr[idx]
            opt.zero_grad(set_to_none=True)
            pred = model(x)
            opt.acc_stats = opt.steps % opt.TCov == 0
            loss = loss_fn(pred, y)
            loss.item(), (pred.argmax(1) == y).sum().item()  # its metrics' reads
            loss.backward()
            opt.step(epoch_number=1, error_savepath=None)
        wall = time.perf_counter() - t0
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        dist.destroy_process_group()
    info = blas_info()
    print(json.dumps({"method": a.worker, "steps": steps, "wall_s": wall, "test_accuracy": acc,
                      "torch": torch.__version__, "blas": " ".join(info["blas_libs"]),
                      "openblas_core": info["openblas_core"]}))


def run(cmd, env):
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        fail(f"'{' '.join(cmd)}' exited with {p.returncode}")
    return p.stdout


def ngd_epoch(a, method, env):
    """One epoch of `ngd train`: (the loop's seconds, test accuracy)."""
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "log.jsonl")
        steps = count(a.data, "train") // a.batch
        run([a.ngd, "train", "--model", "mlp", "--data-dir", a.data, "--optim", method, "--T-u",
             str(a.T_u), "--T-i", str(a.T_i), "--batch", str(a.batch), "--epochs", "1",
             "--threads", str(a.threads), "--log", log, "--log-every", str(steps),
             "--seed", str(a.seed)], env)
        recs = [json.loads(line) for line in open(log)]
    st = [r for r in recs if r.get("type") == "step" and r.get("step") == steps]
    ev = [r for r in recs if r.get("type") == "eval"]
    if not st or not ev:
        fail(f"ngd train {method}: its log has no record of step {steps} or no eval record")
    return st[0]["wall_s"], ev[-1]["test_accuracy"]


def main():
    ap = argparse.ArgumentParser(description="the author's K-FAC / B-KFAC vs ngd train, one "
                                 "Fashion-MNIST epoch each, alternated")
    ap.add_argument("--author", metavar="DIR", required=True,
                    help=f"a checkout of github.com/ConstantinPuiu/{PKG}")
    ap.add_argument("--ngd", default="build/ngd", help="the ngd binary (build/ngd)")
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="the Python with Debian's torch (/usr/bin/python3)")
    ap.add_argument("--methods", default="kfac,bkfac", help="kfac, bkfac, rskfac (kfac,bkfac)")
    ap.add_argument("--rounds", type=int, default=3, help="author/ngd alternations (3)")
    ap.add_argument("--threads", type=int, default=2, help="threads of both sides (2)")
    ap.add_argument("--batch", type=int, default=128, help="batch size (128)")
    ap.add_argument("--T-u", dest="T_u", type=int, default=20, help="statistics period (20)")
    ap.add_argument("--T-i", dest="T_i", type=int, default=100, help="inverse period (100)")
    ap.add_argument("--seed", type=int, default=0, help="seed of both sides (0, ngd's default)")
    ap.add_argument("--data", default=DATA, help=f"Fashion-MNIST's IDX files ({DATA})")
    ap.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    methods = split_list("methods", a.methods, False)
    for m in methods:
        if m not in METHODS:
            fail(f"--methods: '{m}' is not one of {', '.join(METHODS)}")
    if a.rounds < 1 or a.threads < 1 or a.batch < 1 or a.T_u < 1 or a.T_i < 1:
        fail("--rounds, --threads, --batch, --T-u and --T-i must be at least 1")
    if not os.path.isfile(os.path.join(a.author, "solvers", METHODS["bkfac"][0] + ".py")):
        fail(f"--author {a.author}: no solvers/{METHODS['bkfac'][0]}.py there",
             f"a checkout of github.com/ConstantinPuiu/{PKG}")
    if not os.access(a.ngd, os.X_OK):
        fail(f"--ngd {a.ngd}: not an executable", "run make first")
    if not os.path.isfile(os.path.join(a.data, "train-images-idx3-ubyte.gz")):
        fail(f"--data {a.data}: no train-images-idx3-ubyte.gz",
             "install Debian's dataset-fashion-mnist")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    res = {m: {"author": [], "ngd": [], "acc_a": None, "acc_n": None} for m in methods}
    for r in range(a.rounds):
        for m in methods:
            out = run([a.python, os.path.abspath(__file__), "--worker", m, "--author", a.author,
                       "--threads", str(a.threads), "--batch", str(a.batch), "--T-u",
                       str(a.T_u), "--T-i", str(a.T_i), "--seed", str(a.seed), "--data",
                       a.data], env)
            j = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
            res[m]["author"].append(j["wall_s"])
            res[m]["acc_a"] = j["test_accuracy"]
            w, acc = ngd_epoch(a, m, env)
            res[m]["ngd"].append(w)
            res[m]["acc_n"] = acc
            print(f"round {r + 1}: {m}: author {j['wall_s']:.2f} s, ngd {w:.2f} s",
                  file=sys.stderr)
    print(f"# the author's code on PyTorch {j['torch']}, BLAS {j['blas'] or '?'} (core "
          f"{j['openblas_core']}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}); "
          f"ngd {a.ngd}")
    print(f"one Fashion-MNIST epoch ({count(a.data, 'train') // a.batch} steps of {a.batch}), T_u {a.T_u}, "
          f"T_i {a.T_i}, {a.threads} threads; medians of {a.rounds} alternated rounds")
    print("| method | author's code s | ngd s | author / ngd | test accuracy author / ngd | "
          "rounds author \\| ngd |")
    print("|---|---:|---:|---:|---|---|")
    for m in methods:
        ta, tn = statistics.median(res[m]["author"]), statistics.median(res[m]["ngd"])
        rounds = (" ".join(fmt(t) for t in res[m]["author"]) + " \\| " +
                  " ".join(fmt(t) for t in res[m]["ngd"]))
        print(f"| {m} | {ta:.3g} | {tn:.3g} | **{ta / tn:.2f}** | "
              f"{100 * res[m]['acc_a']:.2f} % / {100 * res[m]['acc_n']:.2f} % | {rounds} |")


if __name__ == "__main__":
    main()
