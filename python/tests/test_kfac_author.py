"""bench/kfac_author.py (the author's K-FAC / B-KFAC against `ngd train`, one epoch each): run
end to end on small IDX files, with a stand-in for the author's package that checks what the
script must give the real one: its CUDA device answered with the CPU, a working one-process
group, the statistics flag every TCov steps, the MNIST scripts' hyper-parameters, and the
epoch's batches. The author's code itself is not in Debian and is never fetched by a test."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SCRIPT = os.path.join(ROOT, "bench", "kfac_author.py")
NGD = os.environ.get("NGD_BIN", os.path.join(ROOT, "build", "ngd"))

STAND_IN = '''
import torch
import torch.distributed as dist


class KFACOptimizer(torch.optim.Optimizer):
    def __init__(self, model, rank, world_size, batch_size, lr_function, momentum, stat_decay,
                 damping, kl_clip, weight_decay, TCov, TInv, **kw):
        # the MNIST scripts' settings, as the harness promises
        assert (world_size, momentum, stat_decay, damping, kl_clip, weight_decay) == \\
            (1, 0.0, 0.95, 0.1, 0.07, 7e-4), (world_size, momentum, stat_decay, damping)
        assert (TCov, TInv, batch_size) == (20, 100, 64), (TCov, TInv, batch_size)
        assert abs(lr_function(epoch_n=1, iter_n=0) - 0.3 * (1 - 1 / 80) ** 9) < 1e-12
        self.extra = kw
        super().__init__(model.parameters(), dict(lr=0.05))
        self.lr_function, self.TCov, self.steps = lr_function, TCov, 0
        # as the author's code: a tensor made on 'cuda:<rank>' (fails on a torch without CUDA
        # unless the harness answers with the CPU), then all-reduced over the process group
        self.probe = torch.ones(3, device=torch.device('cuda:{}'.format(rank)))
        dist.all_reduce(self.probe, dist.ReduceOp.SUM)
        self.acc_stats, self.flags = False, []
        # the rows each step trains on, through a hook as the author's statistics are taken
        self.seen, w = [], torch.randn(784, dtype=torch.float64)
        first = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][0]
        first.register_forward_pre_hook(lambda mod, inp: self.seen.append(inp[0].double() @ w))

    def step(self, epoch_number, error_savepath, closure=None):
        assert epoch_number == 1 and error_savepath is None
        self.flags.append(self.acc_stats)
        for g in self.param_groups:
            for p in g["params"]:
                p.data.add_(p.grad, alpha=-g["lr"])
        self.steps += 1
        if self.steps == 16:  # the whole epoch ran, with the statistics flag every TCov steps
            assert self.flags == [i % 20 == 0 for i in range(16)], self.flags
            assert self.probe.device.type == "cpu" and self.probe.tolist() == [1.0] * 3
            rows = torch.cat(self.seen)  # an epoch: every training image once
            assert rows.shape[0] == 1024 and torch.unique(rows).shape[0] == 1024
            print("STAND-IN-OK " + ",".join(sorted(self.extra)))


class B_KFACOptimizer(KFACOptimizer):
    pass


class R_KFACOptimizer(KFACOptimizer):
    pass
'''


def write_idx(path, arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.tobytes())


def make_data(d, n_train=1024, n_test=256):
    """Learnable 28x28 images: class k lights up a band of rows."""
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 28, 28))
        for i, k in enumerate(y):
            x[i, 2 * k:2 * k + 3, :] += 180
        write_idx(os.path.join(d, f"{split}-images-idx3-ubyte.gz"), x)
        write_idx(os.path.join(d, f"{split}-labels-idx1-ubyte.gz"), y)


def make_author(d):
    pkg = os.path.join(d, "checkout")
    os.makedirs(os.path.join(pkg, "solvers"))
    for f in ("__init__.py", os.path.join("solvers", "__init__.py")):
        open(os.path.join(pkg, f), "w").close()
    for mod in ("distributed_kfac_lean_Kfactors_batchsize",
                "distributed_B_kfac_lean_Kfactors_batchsize",
                "distributed_R_kfac_lean_Kfactors_batchsize"):
        with open(os.path.join(pkg, "solvers", mod + ".py"), "w") as f:
            f.write(STAND_IN)
    return pkg


def run(args):
    return subprocess.run([sys.executable, SCRIPT] + args, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=600)


def test_worker_runs_the_author_code_on_the_cpu(tmp_path):
    make_data(str(tmp_path))
    author = make_author(str(tmp_path))
    for method, extra in (("kfac", ""), ("bkfac", "B_truncate_before_inversion,adaptable_B_rank,"
                                         "adaptable_rsvd_rank,brand_update_multiplier_to_TCov,"
                                         "rsvd_rank"),
                          ("rskfac", "adaptable_rsvd_rank,rsvd_rank,"
                                     "work_eff_alloc_with_time_measurement")):
        p = run(["--worker", method, "--author", author, "--data", str(tmp_path), "--batch", "64",
                 "--threads", "1"])
        assert p.returncode == 0, p.stderr
        assert "STAND-IN-OK " + extra + "\n" in p.stdout, p.stdout
        j = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
        assert j["method"] == method and j["steps"] == 1024 // 64 and j["wall_s"] > 0
        assert j["test_accuracy"] > 0.5, j  # 16 SGD steps learn the bands: the batches are real


def test_side_by_side_table(tmp_path):
    make_data(str(tmp_path))
    author = make_author(str(tmp_path))
    p = run(["--author", author, "--data", str(tmp_path), "--batch", "64", "--threads", "1",
             "--rounds", "2", "--methods", "bkfac", "--ngd", NGD])
    assert p.returncode == 0, p.stderr
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("| bkfac |")]
    assert len(rows) == 1, p.stdout
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    ta, tn, ratio = float(cells[1]), float(cells[2]), float(cells[3].strip("*"))
    assert ta > 0 and tn > 0 and abs(ratio - ta / tn) < 0.02 * ratio + 0.01, cells
    assert "16 steps of 64" in p.stdout and p.stderr.count("round ") == 2, (p.stdout, p.stderr)


def test_refuses_a_folder_without_the_author_code(tmp_path):
    make_data(str(tmp_path))
    p = run(["--author", str(tmp_path), "--data", str(tmp_path), "--ngd", NGD])
    assert p.returncode == 1
    assert "no solvers/distributed_B_kfac_lean_Kfactors_batchsize.py" in p.stderr, p.stderr
    p = run(["--author", str(tmp_path), "--methods", "kfac,sgd", "--ngd", NGD])
    assert p.returncode == 1 and "'sgd' is not one of kfac, bkfac, rskfac" in p.stderr, p.stderr
