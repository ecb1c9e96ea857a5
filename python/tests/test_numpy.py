"""ngd's numpy API: the same bits as the C API on the same data, the ctypes mirrors against
ngd.h's layout, options, errors, checkpoints, lifetime of borrowed arrays."""
import ctypes
import gc
import os
import subprocess

import numpy as np
import pytest

import ngd
from ngd import _lib

CAPI_REF = os.environ.get("NGD_CAPI_REF")  # python/tests/capi_ref.c, built by tests/test_python.sh
LAYOUT = os.environ.get("NGD_LAYOUT")  # python/tests/layout.c

B, I1, O1, O2, NP, STEPS = 8, 10, 6, 4, 5, 6


def problem(seed):
    r = np.random.default_rng(seed)
    f = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    init = [f(O1, I1) * 0.3, f(O1) * 0.1, f(O2, O1) * 0.3, f(O2) * 0.1, f(NP)]
    steps = [[f(O1, I1), f(O1), f(B, I1), f(B, O1), f(O2, O1), f(O2), f(B, O1), f(B, O2), f(NP)] for _ in range(STEPS)]
    return init, steps


def run_numpy(method, init, steps):
    W1, b1, W2, b2, p = [x.copy() for x in init]
    gW1, gb1, gW2, gb2, gp = [np.zeros_like(x) for x in (W1, b1, W2, b2, p)]
    if method == "kfac":
        opt = ngd.Optimizer("kfac", lr=0.05, weight_decay=1e-3, T_u=1, T_i=2, wd_start=0)
    else:
        opt = ngd.Optimizer("singd", lr=0.05, weight_decay=1e-3, T=2, damping=1e-2, lr_cov=5e-2,
                            structures=("diagonal", "dense"))
    i1 = opt.add_layer(W1, gW1, b1, gb1, name="fc1")
    i2 = opt.add_layer(W2, gW2, b2, gb2, name="fc2")
    opt.add_param(p, gp, name="scale", method="adamw", lr=1e-2)
    for s in steps:
        for dst, src in zip((gW1, gb1), s[0:2]):
            dst[...] = src
        for dst, src in zip((gW2, gb2), s[4:6]):
            dst[...] = src
        gp[...] = s[8]
        if opt.wants_stats(i1):
            opt.observe(i1, s[2], s[3])
        if opt.wants_stats(i2):
            opt.observe(i2, s[6], s[7])
        assert opt.step()
    return [W1, b1, W2, b2, p], opt


@pytest.mark.skipif(not CAPI_REF, reason="NGD_CAPI_REF not set (tests/test_python.sh builds it)")
@pytest.mark.parametrize("method", ["singd", "kfac"])
def test_same_bits_as_c_api(method, tmp_path):
    init, steps = problem(7 if method == "singd" else 8)
    data = tmp_path / "data.bin"
    with open(data, "wb") as f:
        for x in init:
            f.write(x.tobytes())
        for s in steps:
            for x in s:
                f.write(x.tobytes())
    subprocess.run([CAPI_REF, method, str(data), str(tmp_path / "out.bin"), str(tmp_path / "ck.bin")], check=True)
    ours, opt = run_numpy(method, init, steps)
    ref = np.fromfile(tmp_path / "out.bin", np.float32)
    mine = np.concatenate([x.ravel() for x in ours])
    assert mine.size == ref.size
    assert not np.array_equal(mine, np.concatenate([x.ravel() for x in init]))  # it moved
    assert np.array_equal(mine.view(np.uint32), ref.view(np.uint32)), "max diff %g" % np.max(np.abs(mine - ref))
    # the whole optimizer state too: the checkpoint bytes are identical
    assert opt.save_bytes() == (tmp_path / "ck.bin").read_bytes()
    assert 0.0 < opt.update_time() < 10.0  # the last step's maintenance, wall seconds


@pytest.mark.skipif(not LAYOUT, reason="NGD_LAYOUT not set (tests/test_python.sh builds it)")
def test_ctypes_mirrors_match_header():
    out = subprocess.run([LAYOUT], check=True, capture_output=True, text=True).stdout.split("\n")
    n = 0
    for line in filter(None, out):
        key, val = line.split()
        s, _, field = key.partition(".")
        cls = getattr(_lib, s)
        got = getattr(cls, field).offset if field else ctypes.sizeof(cls)
        assert got == int(val), "%s: ctypes %d, ngd.h %s" % (key, got, val)
        n += 1
    nfields = sum(len(getattr(_lib, s)._fields_) + 1 for s in ("Matrix", "FactorSpec", "KfacOptions", "Config", "Layer", "LayerHealth", "ConvGeom"))
    assert n == nfields


def test_every_option_reaches_the_config():
    # each option given to a method that uses it (another method refuses it: below)
    cfg, _ = ngd.make_config("brckfac", lr=0.3, momentum=0.5, weight_decay=0.2, nesterov=True,
                             loss_average="batch+sequence", kfac_approx="reduce",
                             skip_nonfinite=False,
                             keep_last_update=True, rho=0.9, T_u=3, T_i=9, damping_rel=0.2,
                             clip="kl", clip_kappa=0.1, wd_start=11,
                             identity_init="in_damping", eig_zero_tol=1e-9, rank=17, oversample=3,
                             power_iters=2, tail="min_kept", brand_rank=5, brand_mult=1, refresh_mult=3,
                             corr_mult=4, corr_frac=0.5, brand_truncate="before_next", reorth_every=13,
                             factored_apply=True, seed=99, ea_dtype="bf16",
                             factor_arith="bf16")
    d = ngd.config_dict(cfg)
    assert d["method"] == 8 and d["nesterov"] and d["loss_average"] == 2 and d["kfac_approx"] == 1
    assert abs(d["momentum"] - 0.5) < 1e-7
    k = d["kfac"]
    assert (k["T_u"], k["T_i"], k["clip"], k["wd_start"], k["identity_init"]) == (3, 9, 2, 11, 0)
    assert (k["rank"], k["oversample"], k["power_iters"], k["tail"], k["brand_rank"]) == (17, 3, 2, 1, 5)
    assert (k["brand_mult"], k["refresh_mult"], k["corr_mult"], k["brand_truncate"], k["reorth_every"]) == (1, 3, 4, 1, 13)
    assert ngd.config_dict(ngd.make_config("bkfac", brand_mult=2)[0])["kfac"]["brand_mult"] == 2
    assert k["factored_apply"] and k["seed"] == 99 and abs(k["corr_frac"] - 0.5) < 1e-7
    assert k["ea_dtype"] == 1 and k["factor_arith"] == 1
    k = ngd.config_dict(ngd.make_config("kfac", damping_kind="pi", identity_init="in_factor")[0])["kfac"]
    assert k["damping_kind"] == 1 and k["identity_init"] == 1
    d = ngd.config_dict(ngd.make_config("singd", damping=0.05, alpha1=0.25, T=7, lr_cov=0.03,
                                        normalize_lr_cov=True, kfac_like=True,
                                        structures=("block20diagonal", "hierarchical3_4:bf16"),
                                        official_blockdiag_quirk=True, init_grad_scale=4.0)[0])
    assert d["T"] == 7 and d["kfac_like"] and d["normalize_lr_cov"] and d["official_blockdiag_quirk"]
    assert abs(d["init_grad_scale"] - 4.0) < 1e-7
    assert abs(d["damping"] - 0.05) < 1e-9 and abs(d["lr_cov"] - 0.03) < 1e-9
    assert d["structure_K"]["kind"] == 2 and d["structure_K"]["block"] == 20
    assert d["structure_C"] == {"kind": 3, "block": 30, "k1": 3, "k2": 4, "dtype": 1}
    d = ngd.config_dict(ngd.make_config("adamw", beta1=0.8, beta2=0.99, eps=1e-6)[0])
    assert abs(d["beta1"] - 0.8) < 1e-7 and abs(d["beta2"] - 0.99) < 1e-7 and abs(d["eps"] - 1e-6) < 1e-12
    # SINGD's bf16 factor arithmetic (needs both factors stored in bf16)
    d = ngd.config_dict(ngd.make_config("singd", structures="dense:bf16", factor_compute="bf16")[0])
    assert d["factor_compute"] == 1 and d["structure_K"]["dtype"] == 1 and d["structure_C"]["dtype"] == 1
    # defaults are libngd's
    d = ngd.config_dict(ngd.make_config("singd")[0])
    assert abs(d["lr"] - 1e-3) < 1e-9 and d["T"] == 10 and abs(d["alpha1"] - 0.5) < 1e-9


def test_options_a_method_would_ignore_are_refused():
    # (KFAC(damping=...) trained exactly as without it: its damping is damping_rel)
    for method, opts, words in [
        ("kfac", {"damping": 1e-2}, "damping_rel"),
        ("rskfac", {"T": 5}, "'T' does not apply to rskfac"),
        ("singd", {"T_u": 5}, "'T_u' does not apply to singd"),
        ("singd", {"kfac": {"rank": 5}}, "'rank' does not apply to singd"),
        ("adamw", {"momentum": 0.9}, "beta1"),
        ("sgd", {"beta1": 0.5}, "'beta1' does not apply to sgd"),
        ("kfac", {"rank": 5}, "'rank' does not apply to kfac"),
        ("rskfac", {"brand_rank": 5}, "'brand_rank' does not apply to rskfac"),
        ("bkfac", {"corr_frac": 0.3}, "'corr_frac' does not apply to bkfac"),
        ("adamw", {"structures": "diagonal"}, "'structure_K' does not apply to adamw"),
        ("ikfac", {"alpha1": 0.3}, "'alpha1' does not apply to ikfac"),
        ("sgd", {"loss_average": "sum"}, "'loss_average' does not apply to sgd"),
        ("kfac", {"init_grad_scale": 4.0}, "'init_grad_scale' does not apply to kfac"),
        ("ingd", {"structures": "diagonal"}, "ingd is SINGD with dense factors"),
    ]:
        with pytest.raises(TypeError, match=words):
            ngd.make_config(method, **opts)
        with pytest.raises(TypeError, match=words):
            ngd.Optimizer(method, **opts)
    # a layer's override and a parameter's rule are checked the same way
    opt = ngd.Optimizer("singd", T=2)
    W, G = np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="'T_i' does not apply to singd"):
        opt.add_layer(W, G, T_i=3)
    p, g = np.zeros(3, np.float32), np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="'momentum' does not apply to adamw"):
        opt.add_param(p, g, method="adamw", momentum=0.9)
    assert opt.add_param(p, g, method="sgd", momentum=0.9) == 0
    opt.close()


def test_lr_cov_fn_and_log_fn_are_called():
    seen, logs = [], []
    opt = ngd.Optimizer("singd", T=1, lr_cov_fn=lambda t: seen.append(t) or 0.01, log_fn=logs.append)
    W = np.zeros((2, 3), np.float32)
    G = np.ones_like(W)
    i = opt.add_layer(W, G)
    for _ in range(3):
        opt.observe(i, np.ones((4, 3), np.float32), np.ones((4, 2), np.float32))
        opt.step()
    assert seen[:3] == [0, 1, 2]
    G[0, 0] = np.nan
    opt.observe(i, np.ones((4, 3), np.float32), np.ones((4, 2), np.float32))
    assert opt.step() is False  # skipped, not an exception
    assert any("non-finite" in m for m in logs)
    assert opt.health(i)["skips"] == 1


def test_config_errors_carry_libngd_message():
    with pytest.raises(ngd.Error) as e:
        ngd.Optimizer("singd", momentum=1.5)
    assert e.value.status == _lib.ERR_ARG and "momentum must be in [0, 1)" in str(e.value)
    with pytest.raises(ngd.Error, match="damping must be >= 0"):
        ngd.Optimizer("singd", damping=-1)
    with pytest.raises(TypeError, match="unknown libngd option 'learning_rate'"):
        ngd.Optimizer("singd", learning_rate=1)
    with pytest.raises(ValueError, match="unknown structure 'banded'"):
        ngd.Optimizer("singd", structures=("banded", "dense"))
    with pytest.raises(ValueError, match="method: unknown value 'adam'"):
        ngd.Optimizer("adam")


def test_array_errors_are_exceptions():
    opt = ngd.Optimizer("singd")
    W = np.zeros((3, 4), np.float32)
    with pytest.raises(TypeError, match="float32"):
        opt.add_layer(W.astype(np.float64), W)
    with pytest.raises(ValueError, match="C-contiguous"):
        opt.add_layer(np.zeros((4, 3), np.float32).T, W)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        opt.add_layer([[1.0]], W)
    with pytest.raises(ValueError, match="writeable"):
        ro = np.zeros((3, 4), np.float32)
        ro.flags.writeable = False
        opt.add_layer(ro, W)
    i = opt.add_layer(W, np.zeros_like(W))
    with pytest.raises(ValueError, match="4 columns, the layer needs 3|3 columns, the layer needs 4|columns"):
        opt.observe(i, np.zeros((5, 3), np.float32), np.zeros((5, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        opt.observe(i, np.zeros((5, 4)), np.zeros((5, 3), np.float32))
    with pytest.raises(ngd.Error) as e:
        opt.observe(i, np.zeros((5, 4), np.float32), np.zeros((6, 3), np.float32))
    assert e.value.status == _lib.ERR_SHAPE
    with pytest.raises(ngd.Error, match="not a layer id"):
        opt.observe(7, np.zeros((5, 4), np.float32), np.zeros((5, 3), np.float32))
    # an update step with a layer that got no statistics: libngd's message
    with pytest.raises(ngd.Error, match="needs statistics") as e:
        opt.step()
    assert e.value.status == _lib.ERR_STATE


def test_freed_arrays_stay_alive_and_closed_optimizer_raises():
    opt = ngd.Optimizer("sgd", lr=0.5)
    W = np.ones((3, 4), np.float32)
    G = np.full((3, 4), 2.0, np.float32)
    i = opt.add_layer(W, G, name="fc")
    view = W[:1]  # shares W's memory
    del W, G  # the optimizer still holds them: no dangling pointers
    gc.collect()
    for _ in range(50):  # churn the allocator
        np.random.rand(3, 4).astype(np.float32)
    assert opt.step()
    np.testing.assert_array_equal(view, 0.0)  # 1 - 0.5*2
    opt.close()
    with pytest.raises(ngd.Error, match="closed"):
        opt.step()
    with pytest.raises(ngd.Error, match="closed"):
        opt.observe(i, np.zeros((1, 4), np.float32), np.zeros((1, 3), np.float32))


def test_save_load_roundtrip(tmp_path):
    init, steps = problem(3)
    _, a = run_numpy("singd", init, steps[:3])
    path = tmp_path / "opt.ckpt"
    a.save(path)
    ours, b = run_numpy("singd", init, steps[:1])
    b.load(path)
    assert b.steps == 3 and b.save_bytes() == a.save_bytes()
    np.testing.assert_array_equal(b.factor(0, "K"), a.factor(0, "K"))
    with pytest.raises(ngd.Error) as e:
        b.load(tmp_path / "missing")
    assert e.value.status == _lib.ERR_IO and "missing" in str(e.value)
    with pytest.raises(ngd.Error) as e:
        b.load_bytes(b"garbage" * 10)
    assert e.value.status == _lib.ERR_FORMAT


def test_unfold_matches_a_numpy_im2col():
    r = np.random.default_rng(1)
    x = r.standard_normal((2, 3, 5, 6)).astype(np.float32)
    out = ngd.unfold(x, 3, stride=2, padding=1)
    oh, ow = ngd.conv_out_size(3, 5, 6, 3, 2, 1)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.stack([xp[n, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].ravel() for n in range(2) for i in range(oh) for j in range(ow)])
    np.testing.assert_allclose(out, ref, rtol=0, atol=0)
    red = ngd.unfold(x, 3, stride=2, padding=1, reduce=True)
    np.testing.assert_allclose(red, ref.reshape(2, oh * ow, -1).mean(1), rtol=1e-6, atol=1e-6)


def test_bf16_statistics_and_strided_rows():
    """observe takes bfloat16 bits (uint16) and row-strided views without copying; the
    result equals float32 statistics of the same (bf16-representable) values."""
    r = np.random.default_rng(2)
    a = r.standard_normal((6, 8)).astype(np.float32)
    a = (a.view(np.uint32) & 0xFFFF0000).view(np.float32)  # exactly representable in bf16
    g = (r.standard_normal((6, 3)).astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
    res = []
    for kind in ("f32", "bf16", "strided"):
        W = np.zeros((3, 8), np.float32)
        G = np.ones_like(W)
        opt = ngd.Optimizer("singd", T=1, lr=0.1)
        i = opt.add_layer(W, G)
        if kind == "f32":
            opt.observe(i, a, g)
        elif kind == "bf16":
            opt.observe(i, (a.view(np.uint32) >> 16).astype(np.uint16), (g.view(np.uint32) >> 16).astype(np.uint16))
        else:
            big = np.zeros((6, 20), np.float32)
            big[:, 5:13] = a
            opt.observe(i, big[:, 5:13], g)
        opt.step()
        res.append(W.copy())
    np.testing.assert_allclose(res[1], res[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(res[2], res[0])


def test_overlapping_rows_are_refused():
    """A broadcast (row stride 0) or overlapping view would make libngd read past the
    buffer: refused, as a non-contiguous row is."""
    opt = ngd.Optimizer("singd", T=1)
    W = np.zeros((2, 3), np.float32)
    i = opt.add_layer(W, np.ones_like(W))
    g = np.ones((1000, 2), np.float32)
    for a in (np.broadcast_to(np.float32([1, 2, 3]), (1000, 3)),
              np.lib.stride_tricks.as_strided(np.zeros(1002, np.float32), (1000, 3), (4, 4))):
        with pytest.raises(ValueError, match="must not overlap"):
            opt.observe(i, a, g)
    opt.observe(i, np.ascontiguousarray(np.broadcast_to(np.float32([1, 2, 3]), (1000, 3))), g)
    assert opt.step() and np.isfinite(W).all()
    # one row: any stride; a 1-D a is one row (batch 1)
    opt2 = ngd.Optimizer("singd", T=1)
    i2 = opt2.add_layer(np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32))
    opt2.observe(i2, np.float32([1, 2, 3]), np.float32([1, 1]))


def test_overrides_start_from_the_optimizers_options():
    """A layer's keyword override changes only what it names: the rest is the optimizer's
    (lr, structures, T, K-FAC options), not the method's defaults."""
    def moved(**override):
        opt = ngd.Optimizer("singd", lr=0.5, structures="diagonal", T=3)
        W = np.zeros((2, 3), np.float32)
        i = opt.add_layer(W, np.ones_like(W), **override)
        assert opt.wants_stats(i)
        opt.observe(i, np.ones((4, 3), np.float32), np.ones((4, 2), np.float32))
        opt.step()
        return float(np.abs(W).max()), opt, i

    plain, _, _ = moved()
    same, opt, i = moved(damping=1e-3)  # the default damping: the same steps
    assert same == plain and plain > 0.1
    half, _, _ = moved(lr=0.25)
    assert abs(half - plain / 2) < 1e-6 * plain
    assert opt.factor(i, "K").shape == (3, 3) and np.count_nonzero(opt.factor(i, "K") - np.diag(np.diag(opt.factor(i, "K")))) == 0
    b = ngd.merge_options({"structures": ("diagonal", "dense"), "rank": 5, "kfac": {"T_u": 2}},
                          {"structure_C": "diagonal", "kfac": {"rank": 7}})
    assert b == {"structure_K": "diagonal", "structure_C": "diagonal", "kfac": {"T_u": 2, "rank": 7}}


def test_a_failing_lr_cov_fn_changes_nothing():
    """The schedule's exception is raised by step(), which changed nothing: the step can be
    retried. A NaN from it is libngd's error."""
    calls = []

    def sched(t):
        calls.append(t)
        if len(calls) == 1:
            raise KeyError("boom")
        return float("nan") if len(calls) == 2 else 0.01

    opt = ngd.Optimizer("singd", T=1, lr_cov_fn=sched)
    W = np.zeros((2, 3), np.float32)
    i = opt.add_layer(W, np.ones_like(W))
    opt.observe(i, np.ones((4, 3), np.float32), np.ones((4, 2), np.float32))
    with pytest.raises(KeyError, match="boom"):
        opt.step()
    assert opt.steps == 0 and not W.any()
    with pytest.raises(ngd.Error, match="lr_cov_fn returned nan"):
        opt.step()
    assert opt.steps == 0 and not W.any()
    assert opt.step() and opt.steps == 1 and W.any()


def test_bad_integers_names_and_ids_are_python_errors(tmp_path):
    with pytest.raises(ValueError, match="T = -1 is out of range"):
        ngd.Optimizer("singd", T=-1)
    with pytest.raises(ValueError, match="kfac.rank = 18446744073709551616 is out of range"):
        ngd.Optimizer("rskfac", rank=2**64)
    with pytest.raises(ValueError, match="method = 99 is out of range"):
        ngd.make_config(99)
    with pytest.raises(ValueError, match="method = -1"):
        ngd.Optimizer(-1)
    cfg, _ = ngd.make_config("singd", structures={"kind": 1})
    assert ngd.config_dict(cfg)["structure_K"]["kind"] == 1
    with pytest.raises(ValueError, match="structure_K.kind = 42"):
        ngd.make_config("singd", structures={"kind": 42})
    opt = ngd.Optimizer("singd", keep_last_update=True)
    W = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="name must be a str"):
        opt.add_layer(W, np.ones_like(W), name=5)
    i = opt.add_layer(W, np.ones_like(W), name="fc")
    with pytest.raises(ValueError, match="observe: batch = -1"):
        opt.observe(i, np.ones((4, 3), np.float32), np.ones((4, 2), np.float32), batch=-1)
    for which in ("", "Kk", "Q"):
        with pytest.raises(ValueError, match="which must be"):
            opt.factor(i, which)
    for call in (lambda: opt.factor(9), lambda: opt.last_update(9)):
        with pytest.raises(ngd.Error, match="9 is not a layer id"):
            call()
    with pytest.raises(ngd.Error, match="unknown id 99"):  # libngd's own message, not an older one
        opt.health(99)
    # ids beyond a C int are refused, not kept mod 2^32 (2^32 was entry 0); ids are integers
    for call in (lambda: opt.health(2**32), lambda: opt.health(-(2**32)), lambda: opt.wants_stats(2**40)):
        with pytest.raises(ngd.Error, match="unknown id"):
            call()
    assert opt.health(np.int64(i))["name"] == "fc"
    for call in (lambda: opt.observe(0.7, np.ones((4, 3), np.float32), np.ones((4, 2), np.float32)),
                 lambda: opt.health(0.0), lambda: opt.factor(True)):
        with pytest.raises(TypeError, match="an id is an integer"):
            call()
    # a C enum given as an integer must be one of its values (ctypes kept it mod 2^32: 2^32 + 1
    # chose 1, 'reduce' or bf16)
    for opts in ({"loss_average": 2**32}, {"kfac_approx": 2**32 + 1}, {"factor_compute": -(2**32)},
                 {"structure_K": {"kind": "dense", "dtype": 2**32 + 1}}):
        with pytest.raises(ValueError, match="is not one of its values"):
            ngd.make_config("singd", **opts)
    with pytest.raises(ValueError, match="kfac.clip: 4294967296 is not one of its values"):
        ngd.make_config("kfac", clip=2**32)
    assert ngd.config_dict(ngd.make_config("singd", kfac_approx=1)[0])["kfac_approx"] == 1
    # callbacks are checked when given, not when first called
    for opt_name in ("lr_cov_fn", "log_fn"):
        with pytest.raises(TypeError, match=opt_name + " must be callable"):
            ngd.make_config("singd", **{opt_name: 3})
    # convolution sizes: numpy integers are integers; a bad kernel says so
    assert ngd.conv_out_size(3, 8, 8, np.int64(3), padding=1) == (8, 8)
    assert ngd.unfold(np.ones((1, 2, 3, 3), np.float32), np.int64(2)).shape == (4, 8)
    with pytest.raises(ValueError, match="kernel must be an integer or a pair"):
        ngd.unfold(np.ones((1, 2, 3, 3), np.float32), (2,))
    with pytest.raises(ValueError, match="stride = -1 is out of range"):
        ngd.conv_out_size(3, 8, 8, 3, stride=-1)
    with pytest.raises(ngd.Error, match="layer name of 300 bytes"):
        opt.add_layer(np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32), name="x" * 300)
    path = os.fsencode(str(tmp_path / "o.ckpt"))
    opt.save(path)
    assert os.path.exists(tmp_path / "o.ckpt")
    opt.load(path)


def test_a_log_fn_raising_while_the_optimizer_is_created_raises_there():
    def boom(msg):
        raise KeyError("log_fn: " + msg)

    with pytest.raises(KeyError, match="kfac_like forces alpha1"):
        ngd.Optimizer("singd", kfac_like=True, alpha1=0.3, log_fn=boom)
    ngd.Optimizer("singd", kfac_like=True, alpha1=0.0, log_fn=boom).close()  # nothing logged


def test_ikfac_logs_that_alpha1_is_forced():
    logs = []
    ngd.Optimizer("singd", kfac_like=True, alpha1=0.3, log_fn=logs.append)  # (ikfac refuses alpha1)
    assert any("kfac_like forces alpha1 = 0" in m for m in logs)


def test_copies_and_bad_option_types_say_what():
    import copy
    import pickle
    o = ngd.Optimizer("sgd", lr=0.1)
    W = np.zeros((2, 3), np.float32)
    o.add_layer(W, np.zeros_like(W), name="a")
    # (a copy shared libngd's handle, which both would free)
    for f in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be"):
            f(o)
    with pytest.raises(TypeError, match="lr must be a number, not '0.1'"):
        ngd.Optimizer("sgd", lr="0.1")
    # a read-only (broadcast) weight is said to be read-only, not "not C-contiguous"
    B = np.broadcast_to(np.float32(0), (2, 3))
    with pytest.raises(ValueError, match="must be writeable"):
        o.add_layer(B, np.zeros((2, 3), np.float32), name="b")


def _layer_opt(method="singd", **kw):
    W = np.random.RandomState(0).rand(8, 8).astype(np.float32)
    dW = np.random.RandomState(1).rand(8, 8).astype(np.float32)
    opt = ngd.Optimizer(method, **kw)
    fc = opt.add_layer(W, dW)
    a = np.random.RandomState(2).rand(4, 8).astype(np.float32)
    return opt, fc, a


def test_close_during_a_call_of_the_optimizer_is_refused():
    # close() from the optimizer's own callback freed libngd's state under the running step
    # (a segfault); it now raises, the step's callback error comes out of step(), and the
    # optimizer stays usable
    holder = {}

    def schedule(step):
        holder["opt"].close()
        return 0.01

    opt, fc, a = _layer_opt("singd", T=1, lr_cov_fn=schedule)
    holder["opt"] = opt
    opt.observe(fc, a, a)
    with pytest.raises(ngd.Error, match="close\\(\\) while a call of this optimizer is running"):
        opt.step()
    assert opt.steps in (0, 1)
    opt.close()  # (after the call: allowed)
    with pytest.raises(ngd.Error, match="closed"):
        opt.step()


def test_close_from_another_thread_waits_for_no_call_and_refuses():
    import threading

    opt, fc, a = _layer_opt("kfac", T_u=1, T_i=1)
    entered, release = threading.Event(), threading.Event()

    def schedule(step):  # (a callback that holds the step while the main thread closes)
        entered.set()
        release.wait(10)
        return 0.01

    opt2, fc2, a2 = _layer_opt("singd", T=1, lr_cov_fn=schedule)
    opt2.observe(fc2, a2, a2)
    t = threading.Thread(target=opt2.step)
    t.start()
    assert entered.wait(10)
    with pytest.raises(ngd.Error, match="another thread"):
        opt2.close()
    release.set()
    t.join(10)
    opt2.close()
    opt.close()


def test_paths_and_names_with_a_nul_are_refused(tmp_path):
    opt, fc, a = _layer_opt("sgd")
    opt.step()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    with pytest.raises(ValueError, match="NUL"):
        opt.save(str(victim) + "\0.ckpt")
    assert victim.read_bytes() == b"precious\n"
    with pytest.raises(ValueError, match="NUL"):
        opt.load(str(victim) + "\0x")
    W = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="NUL"):
        opt.add_layer(W, W.copy(), name="a\0b")


def test_bool_enum_and_bytes_options_are_checked():
    for v in ("false", float("nan"), [0], 2):
        with pytest.raises(TypeError, match="nesterov must be True or False"):
            ngd.make_config("sgd", nesterov=v)
    assert ngd.make_config("sgd", momentum=0.9, nesterov=np.bool_(True))[0].nesterov
    assert not ngd.make_config("sgd", momentum=0.9, nesterov=0)[0].nesterov
    with pytest.raises(TypeError, match="loss_average"):
        ngd.make_config("kfac", loss_average=["batch"])
    with pytest.raises(ValueError, match="structures must be one name or a pair"):
        ngd.Optimizer("singd", structures=5)
    opt, fc, a = _layer_opt("sgd")
    with pytest.raises(TypeError, match="load_bytes takes bytes"):
        opt.load_bytes(5)
    opt.load_bytes(bytearray(opt.save_bytes()))


def test_add_layer_takes_the_optimizers_method_only():
    opt = ngd.Optimizer("singd")
    W = np.zeros((3, 2), np.float32)
    assert opt.add_layer(W, W.copy(), method="singd", T=3) == 0
    with pytest.raises(ValueError, match="takes the optimizer's method"):
        opt.add_layer(W.copy(), W.copy(), method="kfac")
