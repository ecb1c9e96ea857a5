#!/usr/bin/python3
"""pytorch_reference.py — the engine's five models in PyTorch, timed step for step like
`ngd bench train` (src/cli/benchtrain.c), for `make bench-compare`.

Needs Debian's python3-torch (scripts/deps.sh bench); never part of the tests. PyTorch is
measured as a user gets it: default settings, the BLAS behind the system libblas.so.3, no
tuning; the first output line says which BLAS that is.

A step is what `ngd bench train` times for SGD and AdamW: draw the batch (random uint8 images
normalized per channel with the synthetic set's mean and std, or random windows of random
text), zero_grad, forward (train mode), cross-entropy (mean), backward, optimizer step.
Synthetic data of the real shapes: Fashion-MNIST 1x28x28 / 10 classes for mlp, CIFAR-100
3x32x32 / 100 classes for the others, chargpt on a 65-symbol vocabulary with context 64.
Optimizers with ngd_config_default's values (src/optim/config.c): SGD lr 1e-2, momentum 0,
no weight decay; AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2.

The models, layer for layer as src/nn/models/*.c (their parameter counts must equal the
"params" that `ngd bench train --json` reports; --expect-params checks it):
  mlp      flatten, [Linear-ReLU] x (512, 512), Linear
  cnn      [Conv3x3(pad 1, bias)-BN-ReLU x2, MaxPool2] x (32, 64), Linear(128)-ReLU, Linear
  vgg16bn  13 Conv3x3(bias)-BN-ReLU, 5 MaxPool2, Linear(512)-ReLU-Dropout(0.5)-Linear
  vit      4x4 patches -> Linear(48, 64) (a stride-4 Conv2d), + learned positions, 2 pre-norm
           blocks (4 heads, non-causal, MLP 4C with exact GELU), LayerNorm, token mean, Linear
  chargpt  token + learned position embeddings, 2 pre-norm blocks (4 heads, causal, MLP 4C with
           tanh GELU), LayerNorm, Linear(64, V) with bias; no weight tying, no dropout
Output: one JSON line per configuration with --json (ms_mean, ms_median, params, ...), after a
header line {"header": true, ...}; otherwise a table.
"""
import argparse
import ctypes
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MODELS = ("mlp", "cnn", "chargpt", "vit", "vgg16bn")
TEXT_VOCAB = 65        # benchtrain.c BT_TEXT_VOCAB
TEXT_LEN = 200000      # BT_TEXT_LEN
TEXT_VAL = 0.1         # nn_text_from_memory(..., 0.1): the last 10% are the validation split
IMAGES_PER_BATCH = 4   # BT_IMAGES_PER_BATCH: the synthetic image set holds 4 batches


# ---- the models ----

def mlp(c, h, w, classes, widths=(512, 512)):
    layers, din = [nn.Flatten()], c * h * w
    for width in widths:
        layers += [nn.Linear(din, width), nn.ReLU()]
        din = width
    return nn.Sequential(*layers, nn.Linear(din, classes))


def cnn(c, h, w, classes, chans=(32, 64), hidden=128):
    layers = []
    for co in chans:
        for _ in range(2):
            layers += [nn.Conv2d(c, co, 3, padding=1, bias=True), nn.BatchNorm2d(co), nn.ReLU()]
            c = co
        layers.append(nn.MaxPool2d(2, 2))
        h, w = h // 2, w // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def vgg16bn(c, h, w, classes, div=1, dropout=0.5):
    layers = []
    for convs, chans in ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)):
        co = chans // div
        for _ in range(convs):
            conv = nn.Conv2d(c, co, 3, padding=1, bias=True)
            # docs/algorithms.md#rs-kfac-paper-setup, as vgg16bn.c: N(0, 2/(9 c_out)) weights,
            # zero biases
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.BatchNorm2d(co), nn.ReLU()]
            c = co
        if h >= 2 and w >= 2:  # vgg16bn.c skips a pool that would leave less than 1x1
            layers.append(nn.MaxPool2d(2, 2))
            h, w = h // 2, w // 2
    hidden = 512 // div
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(hidden, classes))


class Attention(nn.Module):
    """attention.c: qkv Linear C -> 3C (columns [q | k | v], head h at h*hs), softmax(q kᵀ/√hs)
    (causal: keys j <= i), heads concatenated, proj Linear C -> C; no dropout."""

    def __init__(self, C, nh, causal, T):
        super().__init__()
        self.C, self.nh, self.causal = C, nh, causal
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        if causal:
            self.register_buffer("mask", torch.tril(torch.ones(T, T, dtype=torch.bool)))

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.nh
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.nh, hs).transpose(1, 2)
        v = v.view(B, T, self.nh, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        if self.causal:
            att = att.masked_fill(~self.mask[:T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class Block(nn.Module):
    """tblock.c: x += attn(ln1(x)); x += proj(gelu(fc(ln2(x)))), MLP C -> 4C -> C."""

    def __init__(self, C, nh, causal, T, gelu):
        super().__init__()
        self.ln1 = nn.LayerNorm(C)
        self.attn = Attention(C, nh, causal, T)
        self.ln2 = nn.LayerNorm(C)
        self.fc = nn.Linear(C, 4 * C)
        self.gelu = nn.GELU(approximate=gelu)
        self.proj = nn.Linear(4 * C, C)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.proj(self.gelu(self.fc(self.ln2(x))))


class ViT(nn.Module):
    """vit.c: patches -> Linear (here the equivalent stride-p Conv2d: same weights, (c, ky, kx)
    order), + pos, depth blocks (exact GELU, non-causal), lnf, mean over tokens, head."""

    def __init__(self, c, h, w, classes, C=64, depth=2, nh=4, patch=4):
        super().__init__()
        P = (h // patch) * (w // patch)
        self.patch = nn.Conv2d(c, C, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, P, C) * 0.02)
        self.blocks = nn.Sequential(*[Block(C, nh, False, P, "none") for _ in range(depth)])
        self.lnf = nn.LayerNorm(C)
        self.head = nn.Linear(C, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # (N, P, C)
        return self.head(self.lnf(self.blocks(x)).mean(dim=1))


class CharGPT(nn.Module):
    """chargpt.c: wte[ids] + wpe, depth blocks (tanh GELU, causal), lnf, head (with bias)."""

    def __init__(self, V, T, C=64, depth=2, nh=4):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        nn.init.normal_(self.wte.weight, 0.0, 0.02)
        self.wpe = nn.Parameter(torch.randn(T, C) * 0.02)
        self.blocks = nn.Sequential(*[Block(C, nh, True, T, "tanh") for _ in range(depth)])
        self.lnf = nn.LayerNorm(C)
        self.head = nn.Linear(C, V)

    def forward(self, ids):
        T = ids.shape[1]
        return self.head(self.lnf(self.blocks(self.wte(ids) + self.wpe[:T])))


def build(name, context):
    """The model and its data shape: (model, (c, h, w) or None for text, classes)."""
    if name == "chargpt":
        return CharGPT(TEXT_VOCAB, context), None, TEXT_VOCAB
    shape, classes = ((1, 28, 28), 10) if name == "mlp" else ((3, 32, 32), 100)
    make = {"mlp": mlp, "cnn": cnn, "vgg16bn": vgg16bn, "vit": ViT}[name]
    return make(*shape, classes), shape, classes


def param_count(model):
    return sum(p.numel() for p in model.parameters())


# ---- synthetic data, as benchtrain.c draws it ----

class Images:
    """IMAGES_PER_BATCH batches of random uint8 pixels and labels; each step takes the next
    batch of a shuffled epoch and normalizes it, (p/255 - mean[c]) / std[c], with the set's
    per-channel mean and population std (nn_dataset_compute_norm, nn_loader_next)."""

    def __init__(self, shape, classes, batch, gen):
        n = IMAGES_PER_BATCH * batch
        self.pixels = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
        self.labels = torch.randint(0, classes, (n,), generator=gen)
        x = self.pixels.double().div(255).transpose(0, 1).reshape(shape[0], -1)
        self.mean = x.mean(dim=1).float().view(1, -1, 1, 1)
        self.std = x.std(dim=1, unbiased=False).float().view(1, -1, 1, 1)
        self.batch, self.gen, self.order, self.at = batch, gen, None, n

    def next(self):
        n = self.pixels.shape[0]
        if self.at + self.batch > n:  # new epoch (drop_last), reshuffled
            self.order, self.at = torch.randperm(n, generator=self.gen), 0
        idx = self.order[self.at:self.at + self.batch]
        self.at += self.batch
        x = self.pixels.index_select(0, idx).float().div_(255).sub_(self.mean).div_(self.std)
        return x, self.labels.index_select(0, idx)


class Text:
    """Random text of TEXT_VOCAB symbols; each step takes batch windows of context + 1 ids at
    uniformly random offsets of the training split (nn_text_batch): inputs and next ids."""

    def __init__(self, batch, context, gen):
        self.ids = torch.randint(0, TEXT_VOCAB, (TEXT_LEN,), generator=gen)
        self.n_train = TEXT_LEN - int(TEXT_LEN * TEXT_VAL)
        self.batch, self.context, self.gen = batch, context, gen
        self.span = torch.arange(context + 1)

    def next(self):
        start = torch.randint(0, self.n_train - self.context, (self.batch, 1), generator=self.gen)
        win = self.ids[start + self.span]  # (B, T+1)
        return win[:, :-1], win[:, 1:]


# ---- optimizers: ngd_config_default's values ----

NGD_TORCH = {"singd": "SINGD", "ingd": "INGD", "ikfac": "IKFAC", "kfac": "KFAC", "rskfac": "RSKFAC",
             "srekfac": "SREKFAC", "bkfac": "BKFAC", "brkfac": "BRKFAC", "brckfac": "BRCKFAC"}


def ngd_torch_optimizer(name, model, structure):
    """ngd-<method>: libngd through ngd.torch (python/ngd, over build/libngd.so or
    $NGD_LIBRARY) with ngd_config_default's values (SINGD: T = 10, lr 1e-3); parameters
    outside Linear / Conv2d (norms, embeddings) take AdamW, as `--param-optim adamw`."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import ngd.torch
    cls = getattr(ngd.torch, NGD_TORCH[name[4:]])
    kw = {"structures": (structure, structure)} if name[4:] in ("singd", "ikfac") else {}
    return cls(model, **kw)


def official_singd(model, structure):
    """singd-official: the official SINGD package (github.com/f-dangel/singd; not in Debian:
    put it on PYTHONPATH with its dependencies) at its defaults, the structure given for both
    factors: the reference ngd.torch's SINGD is compared with in the same loop."""
    try:
        from singd.optim.optimizer import SINGD
    except ImportError as e:
        raise SystemExit(f"pytorch_reference: --optim singd-official needs the official SINGD "
                         f"package on PYTHONPATH (not in Debian): {e}")
    return SINGD(model, structures=(structure, structure))


def optimizer(name, params, sgd_momentum):
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-2, momentum=sgd_momentum, weight_decay=0.0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=1e-2)
    raise ValueError(name)


def run(name, optim, args, structure="-"):
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(7)
    model, shape, classes = build(name, args.context)
    model.train()
    data = Text(args.batch, args.context, gen) if shape is None else \
        Images(shape, classes, args.batch, gen)
    if optim.startswith("ngd-"):
        opt = ngd_torch_optimizer(optim, model, structure)
    elif optim == "singd-official":
        opt = official_singd(model, structure)
    else:
        opt = optimizer(optim, model.parameters(), args.sgd_momentum)
    times = []
    for s in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        x, y = data.next()
        opt.zero_grad()
        # --precision bf16: PyTorch's CPU mixed precision (matmuls and convolutions in bf16,
        # f32 master weights), the counterpart of ngd train --precision bf16
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, classes).float(), y.reshape(-1))
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        if s >= args.warmup:
            times.append(t1 - t0)
    if not math.isfinite(loss.item()):
        raise RuntimeError(f"{name} {optim}: loss is {loss.item()}")
    return {
        "model": name,
        "data": "shakespeare" if shape is None else
                "fashion-mnist" if name == "mlp" else "cifar100",
        "optim": optim, "structure": structure, "precision": args.precision, "batch": args.batch,
        "context": args.context if shape is None else None,
        "threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
        "ms_mean": 1e3 * statistics.fmean(times), "ms_median": 1e3 * statistics.median(times),
        "samples_per_s": args.batch / statistics.fmean(times),
        "params": param_count(model), "torch": torch.__version__,
    }


# ---- which BLAS, threads ----

def blas_info():
    """The BLAS library mapped into this process after a GEMM, and OpenBLAS's core if it is
    OpenBLAS (the libblas.so.3 alternative decides: Debian builds torch with BLAS_INFO=generic)."""
    a = torch.ones(64, 64)
    (a @ a).sum().item()
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            base = os.path.basename(path)
            if "blas" in base and base.endswith(tuple(".so" + s for s in ("", ".0", ".3"))):
                libs.add(path)
    info = {"blas_libs": sorted(os.path.realpath(p) for p in libs), "openblas_core": None}
    for p in info["blas_libs"]:
        try:
            lib = ctypes.CDLL(p)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            info["openblas_core"] = lib.openblas_get_corename().decode()
            lib.openblas_get_config.restype = ctypes.c_char_p
            info["openblas_config"] = lib.openblas_get_config().decode().strip()
            break
        except (OSError, AttributeError):
            continue
    cfg = torch.__config__.show()
    for key in ("BLAS_INFO", "LAPACK_INFO"):
        i = cfg.find(key + "=")
        if i >= 0:
            info[key.lower()] = cfg[i + len(key) + 1:].split(",")[0]
    for line in cfg.splitlines():
        if "CPU capability usage" in line:
            info["cpu_capability"] = line.split(":", 1)[1].strip()
    info["mkldnn"] = torch.backends.mkldnn.is_available()
    info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE")
    return info


def parse_expect(s):
    out = {}
    for item in filter(None, (s or "").split(",")):
        k, _, v = item.partition("=")
        if k not in MODELS or not v.isdigit():
            raise argparse.ArgumentTypeError(f"--expect-params: '{item}' is not MODEL=COUNT")
        out[k] = int(v)
    return out


def main():
    ap = argparse.ArgumentParser(
        description="The engine's models in PyTorch: whole SGD / AdamW steps on synthetic data, "
                    "timed like `ngd bench train` (options of the same names and defaults).")
    ap.add_argument("--model", default="mlp,cnn", help="models, comma-separated (mlp,cnn): "
                    + ", ".join(MODELS) + ", or all")
    ap.add_argument("--optim", default="sgd,adamw",
                    help="sgd, adamw, ngd-<method> (libngd through ngd.torch: ngd-singd, "
                         "ngd-kfac, ...; needs `make`), or singd-official (the official SINGD "
                         "package, which is not in Debian, from PYTHONPATH) (sgd,adamw)")
    ap.add_argument("--structure", default="dense",
                    help="SINGD factor structures of ngd-singd / ngd-ikfac / singd-official, "
                         "comma-separated: one run each (dense)")
    ap.add_argument("--batch", type=int, default=128, help="batch size (128; text: sequences)")
    ap.add_argument("--context", type=int, default=64, help="context length of chargpt (64)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps (30)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (10)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads (default: OMP_NUM_THREADS, else torch's own)")
    ap.add_argument("--sgd-momentum", type=float, default=0.0,
                    help="SGD momentum (0: ngd_config_default's, what `ngd bench train` runs)")
    ap.add_argument("--expect-params", type=parse_expect, default={}, metavar="MODEL=N,..",
                    help="fail (exit 1) unless each named model has exactly N parameters "
                         "(the \"params\" of `ngd bench train --json`)")
    ap.add_argument("--params-only", action="store_true",
                    help="build the models and print their parameter counts; no timing")
    ap.add_argument("--precision", choices=("f32", "bf16"), default="f32",
                    help="f32 (default) or bf16: torch.autocast('cpu', dtype=torch.bfloat16)")
    ap.add_argument("--json", action="store_true", help="one JSON line per configuration")
    a = ap.parse_args()
    models = MODELS if a.model == "all" else a.model.split(",")
    optims = a.optim.split(",")
    for m in models:
        if m not in MODELS:
            ap.error(f"--model: unknown model '{m}' (models: {', '.join(MODELS)})")
    for o in optims:
        if o not in ("sgd", "adamw", "singd-official") and not (o.startswith("ngd-") and
                                                                 o[4:] in NGD_TORCH):
            ap.error(f"--optim: '{o}' is not sgd, adamw, singd-official or ngd-<method> "
                     f"(methods: {', '.join(NGD_TORCH)})")
    if min(a.batch, a.context, a.steps, a.warmup) < 1:
        ap.error("--batch, --context, --steps, --warmup must be >= 1")
    threads = a.threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)

    bad = 0
    for m in models:  # the parameter check first: it is cheap, and timing a wrong model is not
        n = param_count(build(m, a.context)[0])
        want = a.expect_params.get(m)
        if want is not None and n != want:
            print(f"pytorch_reference: error: {m} has {n} parameters in PyTorch, ngd reports "
                  f"{want}: the models differ", file=sys.stderr)
            bad = 1
        if a.params_only:
            print(json.dumps({"model": m, "params": n}) if a.json else f"{m:8} {n:>10} params")
    if bad or a.params_only:
        return bad

    info = blas_info()
    if a.json:
        print(json.dumps({"header": True, "torch": torch.__version__,
                          "threads": torch.get_num_threads(), **info}), flush=True)
    else:
        print(f"# PyTorch {torch.__version__}, {torch.get_num_threads()} threads, BLAS "
              f"{' '.join(info['blas_libs']) or '?'} (core {info['openblas_core']}), "
              f"BLAS_INFO={info.get('blas_info')}, CPU capability {info.get('cpu_capability')}, "
              f"oneDNN {'on' if info['mkldnn'] else 'off'}; {a.precision}; batch {a.batch}, {a.warmup} warm-up "
              f"+ {a.steps} timed steps\n{'model':8} {'optim':6} {'params':>10} {'mean ms':>9} "
              f"{'median ms':>9}", flush=True)
    for m in models:
        for o in optims:
            structs = a.structure.split(",") if o in ("ngd-singd", "ngd-ikfac",
                                                      "singd-official") else ["-"]
            for st in structs:
                r = run(m, o, a, st)
                if a.json:
                    print(json.dumps({k: v for k, v in r.items() if v is not None}), flush=True)
                else:
                    name = o if st == "-" else f"{o}:{st}"
                    print(f"{m:8} {name:6} {r['params']:>10} {r['ms_mean']:9.2f} "
                          f"{r['ms_median']:9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
