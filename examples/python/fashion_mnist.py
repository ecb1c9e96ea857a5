#!/usr/bin/env python3
"""Fashion-MNIST with an ordinary PyTorch training loop and a libngd optimizer (ngd.torch).

    PYTHONPATH=python /usr/bin/python3 examples/python/fashion_mnist.py --optim singd --epochs 2

The model is `ngd train`'s default mlp (784-512-512-10, ReLU), the data the IDX files of
Debian's dataset-fashion-mnist, normalised like `ngd train` does (mean and std of the
training pixels), the loss the batch-mean cross-entropy, batches of --batch drawn from a
shuffled order, the last incomplete batch dropped.

--init-from CKPT starts from a checkpoint that `ngd train --checkpoint` wrote (its
parameters, its optimizer state and the epoch's sample order, from where it stopped), so
that this script and `ngd train --resume CKPT` continue the same run: the test suite uses
this to compare the two (tests/test_python.sh). Later epochs are shuffled by torch.
"""
import argparse
import gzip
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn

try:
    import ngd.torch
except ImportError:  # run from the source tree without PYTHONPATH
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
    import ngd.torch

METHODS = {
    "singd": "SINGD",
    "ingd": "INGD",
    "ikfac": "IKFAC",
    "kfac": "KFAC",
    "rskfac": "RSKFAC",
    "srekfac": "SREKFAC",
    "bkfac": "BKFAC",
    "brkfac": "BRKFAC",
    "brckfac": "BRCKFAC",
    "sgd": "SGD",
    "adamw": "AdamW",
}


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_data(folder, subset):
    def part(name):
        return read_idx(os.path.join(folder, name))

    xtr, ytr = part("train-images-idx3-ubyte.gz"), part("train-labels-idx1-ubyte.gz")
    xte, yte = part("t10k-images-idx3-ubyte.gz"), part("t10k-labels-idx1-ubyte.gz")
    if subset:  # ngd train --subset N: the first N training and N/5 test images
        xtr, ytr = xtr[:subset], ytr[:subset]
        nte = subset // 5 if subset >= 5 else 1
        xte, yte = xte[:nte], yte[:nte]
    # normalisation as ngd train: mean and std of the training pixels / 255 (float64 sums),
    # then a float32 lookup table per pixel value
    hist = np.bincount(xtr.ravel(), minlength=256).astype(np.float64)
    v = np.arange(256) / 255.0
    mean = (hist * v).sum() / hist.sum()
    var = (hist * v * v).sum() / hist.sum() - mean * mean
    std = np.float32(np.sqrt(var)) if var > 1e-12 else np.float32(1)
    lut = (np.arange(256, dtype=np.float32) / np.float32(255) - np.float32(mean)) / std
    f = lambda x: torch.from_numpy(lut[x].reshape(len(x), -1))  # noqa: E731
    return f(xtr), torch.from_numpy(ytr.astype(np.int64)), f(xte), torch.from_numpy(yte.astype(np.int64))


class MLP(nn.Module):
    def __init__(self, widths, d_in=784, classes=10):
        super().__init__()
        dims = [d_in] + list(widths) + [classes]
        for i in range(len(dims) - 1):  # named fc1, fc2, ... as in ngd's mlp
            setattr(self, "fc%d" % (i + 1), nn.Linear(dims[i], dims[i + 1]))
        self.n = len(dims) - 1

    def forward(self, x):
        for i in range(1, self.n):
            x = torch.relu(getattr(self, "fc%d" % i)(x))
        return getattr(self, "fc%d" % self.n)(x)


def read_train_checkpoint(path):
    """The fields of an `ngd train` checkpoint (docs/formats.md, versions 2 to 5) this script
    uses."""
    b = open(path, "rb").read()
    if b[:8] != b"NGDTRN\r\n":
        raise ValueError("%s: not an ngd train checkpoint" % path)
    pos = [8]

    def u64():
        v = struct.unpack_from("<Q", b, pos[0])[0]
        pos[0] += 8
        return v

    def string():
        n = u64()
        s = b[pos[0] : pos[0] + n].decode()
        pos[0] += n
        return s

    ck = {"version": u64()}
    if ck["version"] not in (2, 3, 4, 5):
        raise ValueError("%s: training checkpoint version %d (this script reads 2 to 5)" % (path, ck["version"]))
    ck["model"], ck["data"], ck["method"] = string(), string(), string()
    if ck["model"] != "mlp" or ck["data"] != "fashion-mnist":  # (before the body is read)
        raise ValueError("%s: a run of --model %s on %s; this script trains the mlp on fashion-mnist"
                         % (path, ck["model"], ck["data"]))
    ck["widths"] = [u64() for _ in range(u64())]
    ck["subset"], ck["context"], ck["batch"] = u64(), u64(), u64()
    # (bit 0: bf16; version 5: bit 3 --augment, bit 4 cosine; the others --kfac-arith and a
    # pending evaluation)
    flags = u64() if ck["version"] >= 3 else 0
    ck["precision"], ck["augment"] = ("f32", "bf16")[flags & 1], bool(flags & 8)
    if ck["version"] >= 5:
        u64()  # the run's --epochs (its schedule: bit 4)
    ck["step"], ck["epoch"], ck["skips"] = u64(), u64(), u64()
    pos[0] += 8  # wall
    if ck["version"] >= 4:
        pos[0] += 24  # the log record's sums
    ck["position"], ck["data_epoch"], ck["n"] = u64(), u64(), u64()
    pos[0] += 32  # data rng
    ck["order"] = np.frombuffer(b, "<u8", ck["n"], pos[0]).astype(np.int64)
    pos[0] += 8 * ck["n"]
    params = []
    for _ in range(u64()):
        n = u64()
        params.append(np.frombuffer(b, "<f4", n, pos[0]).copy())
        pos[0] += 4 * n
    for _ in range(u64()):  # buffers (none for the mlp)
        n = u64()
        pos[0] += 4 * n
    n = u64()  # model rngs
    pos[0] += 32 * n
    n = u64()
    ck["optimizer"] = b[pos[0] : pos[0] + n]
    ck["params"] = params
    return ck


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--subset", type=int, default=0, help="first N training and N/5 test images (0: all)")
    ap.add_argument("--optim", default="singd", choices=sorted(METHODS))
    ap.add_argument("--widths", default="512,512")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=None, help="learning rate (libngd's method default)")
    ap.add_argument("--momentum", type=float, default=None)
    ap.add_argument("--weight-decay", type=float, default=None)
    ap.add_argument("--damping", type=float, default=None)
    ap.add_argument("--T", type=int, default=None, help="SINGD preconditioner update period")
    ap.add_argument("--lr-cov", type=float, default=None)
    ap.add_argument("--structure", default=None, help="SINGD factor structures K[,C]")
    ap.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--init-from", default=None, metavar="CKPT", help="continue an `ngd train` checkpoint")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr, ytr, xte, yte = load_data(a.data_dir, a.subset)
    model = MLP([int(w) for w in a.widths.split(",") if w])
    opts = {}
    for k in ("lr", "momentum", "weight_decay", "damping", "T", "lr_cov"):
        if getattr(a, k) is not None:
            opts[k] = getattr(a, k)
    if "damping" in opts and a.optim not in ("singd", "ingd", "ikfac"):
        # as `ngd train --damping`: the K-FAC family's is relative (damping_rel)
        opts["damping_rel"] = opts.pop("damping")
    if a.structure:
        s = a.structure.split(",")
        opts["structures"] = (s[0], s[-1])
    opt = getattr(ngd.torch, METHODS[a.optim])(model, **opts)
    steps_per_epoch = len(xtr) // a.batch
    start_epoch, start_pos, start_step, order = 0, 0, 0, None
    if a.init_from:
        try:
            ck = read_train_checkpoint(a.init_from)
        except ValueError as e:
            raise SystemExit(str(e))
        if ck["n"] != len(xtr) or ck["batch"] != a.batch:
            raise SystemExit("%s: a run on %d images, batch %d; this one: %d, %d"
                             % (a.init_from, ck["n"], ck["batch"], len(xtr), a.batch))
        if ck["augment"]:
            raise SystemExit("%s: a run with --augment; this script does not augment" % a.init_from)
        if ck["method"] != a.optim or ck["precision"] != "f32":
            raise SystemExit("%s: a run of --optim %s in %s; this one: --optim %s in f32"
                             % (a.init_from, ck["method"], ck["precision"], a.optim))
        with torch.no_grad():
            for p, v in zip(model.parameters(), ck["params"]):
                if p.numel() != v.size:
                    raise SystemExit("%s: parameter sizes differ from --widths %s" % (a.init_from, a.widths))
                p.copy_(torch.from_numpy(v).view_as(p))
        opt.ngd.load_bytes(ck["optimizer"])
        start_epoch, start_pos, order = ck["epoch"], ck["position"], torch.from_numpy(ck["order"])
        start_step = ck["step"]
    sched = None
    if a.schedule == "cosine":  # (over the whole run: a continued run is start_step steps in)
        total = a.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: 0.5 * (1 + np.cos(np.pi * min(t + start_step, total) / total))
        )
    g = torch.Generator().manual_seed(a.seed)
    loss_fn = nn.CrossEntropyLoss()
    acc = float("nan")
    t0 = time.time()
    for epoch in range(start_epoch, a.epochs):
        model.train()
        if order is None:
            order = torch.randperm(len(xtr), generator=g)
        run_loss, n = 0.0, 0
        for i in range(start_pos, len(xtr) - a.batch + 1, a.batch):
            idx = order[i : i + a.batch]
            x, y = xtr[idx], ytr[idx]
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
            run_loss += loss.item()
            n += 1
        order, start_pos = None, 0
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(xte[i : i + 1000]).argmax(1) == yte[i : i + 1000]).sum()) for i in range(0, len(xte), 1000))
        acc = 100.0 * correct / len(xte)
        if not a.quiet:
            print("epoch %d: train loss %.4f, test accuracy %.2f%% (%.1f s)" % (epoch + 1, run_loss / max(n, 1), acc, time.time() - t0))
    print("test accuracy %.2f%%" % acc)
    return acc


if __name__ == "__main__":
    main()
