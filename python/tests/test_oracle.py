"""The official SINGD trajectories (shared/oracle) replayed through ngd.torch on real
torch.nn modules (nn.Linear, nn.Conv2d, weight-shared Linear): the loss is computed by
torch, the gradients and the statistics come from autograd and the hooks, and the weights
after every step must match the recording within 1e-4 (relative to the largest entry),
the tolerance `ngd replay` passes with; `ngd replay` itself is run on the same file and
must pass too, and the two must agree with each other within 2e-4."""
import json
import os
import re
import subprocess

import numpy as np
import pytest
import torch

import ngd.torch
from conftest import NGD, ORACLE

CASES = [
    "linear_dense_T1_kfaclike0_alpha0p5_norm0.json",
    "linear_dense_T2_kfaclike1_alpha0p0_norm0.json",
    "linear_diagonal_T1_kfaclike0_alpha0p5_norm1.json",
    "linear_triltoeplitz_T1_kfaclike0_alpha0p5_norm0.json",
    "linear_hierarchical15_15_T1_kfaclike0_alpha0p5_norm0.json",
    "linear_block30diagonal_T1_kfaclike0_alpha0p5_norm0.json",
    "conv_expand_dense.json",
    "conv_reduce_diagonal.json",
    "extra_linear_weightsharing_expand_batch_sequence_dense.json",
]


def T(j):
    return torch.tensor(np.array(j["data"], dtype=np.float64).reshape(j["shape"]), dtype=torch.float32)


def rel(ours, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


def replay_torch(case):
    p, h = case["problem"], case["hyperparameters"]
    torch.manual_seed(0)
    if p["layer"] == "Linear":
        layer = torch.nn.Linear(p["d_in"], p["d_out"], bias=p.get("bias", True))
    else:
        layer = torch.nn.Conv2d(
            p["c_in"], p["c_out"], p["kernel_size"], stride=p.get("stride", 1), padding=p.get("padding", 0),
            dilation=p.get("dilation", 1), groups=p.get("groups", 1), bias=p.get("bias", True))
    model = torch.nn.Sequential(layer)
    with torch.no_grad():
        layer.weight.copy_(T(case["initial"]["weight"]))
        layer.bias.copy_(T(case["initial"]["bias"]))
    quirk = any("block" in s for s in h["structures"])
    cls = ngd.torch.IKFAC if h["kfac_like"] else ngd.torch.SINGD
    kw = dict(lr=h["lr"], momentum=h["momentum"], damping=h["damping"], weight_decay=h["weight_decay"],
              lr_cov=h["lr_cov"], T=h["T"], normalize_lr_cov=h["normalize_lr_cov"],
              loss_average=h["loss_average"], kfac_approx=h["kfac_approx"], structures=tuple(h["structures"]),
              official_blockdiag_quirk=quirk)
    if not h["kfac_like"]:
        kw["alpha1"] = h["alpha1_effective"]
    opt = cls(model, **kw)
    errs = []
    for s in case["steps"]:
        x, y = T(s["x"]), T(s["y"])
        opt.zero_grad()
        out = model(x)
        n = x.shape[0]
        if h["loss_average"] == "batch+sequence":
            n = n * x.shape[1]
        elif h["loss_average"] is None:
            n = 1
        loss = 0.5 * ((out - y) ** 2).sum() / n
        assert abs(loss.item() - s["loss"]) <= 1e-4 * max(1.0, abs(s["loss"])), "loss of step %d" % s["t"]
        loss.backward()
        opt.step()
        w = torch.cat([layer.weight.detach().reshape(layer.weight.shape[0], -1), layer.bias.detach()[:, None]], 1)
        ref = np.concatenate([np.array(s["weight"]["data"]).reshape(w.shape[0], -1),
                              np.array(s["bias"]["data"])[:, None]], 1)
        errs.append(rel(w.numpy(), ref))
    return max(errs)


def replay_c(path):
    out = subprocess.run([NGD, "replay", path], capture_output=True, text=True)
    m = re.search(r"weights ([0-9.e+-]+)", out.stdout)
    assert m, out.stdout + out.stderr
    return out.returncode, float(m.group(1))


@pytest.mark.parametrize("name", CASES)
def test_oracle_case(name):
    path = os.path.join(ORACLE, name)
    if not os.path.exists(path):
        pytest.skip("no oracle file %s" % path)
    case = json.load(open(path))
    err_torch = replay_torch(case)
    rc, err_c = replay_c(path)
    assert rc == 0, "ngd replay fails on %s" % name
    assert err_torch <= 1e-4, "ngd.torch weights off the recording by %.3g (ngd replay: %.3g)" % (err_torch, err_c)
    assert abs(err_torch - err_c) <= 2e-4
