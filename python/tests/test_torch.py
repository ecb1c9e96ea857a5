"""ngd.torch on real torch.nn modules: statistics only when wanted, the plain-parameter
rule against torch.optim.AdamW, lr schedulers, gradient accumulation, loss scaling,
state_dict, every method, per-layer structures, and clear errors."""
import collections
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import ngd
import ngd.torch

torch.set_num_threads(1)


def data(n=32, d=12, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, k, generator=g)
    return x, x @ w + 0.1 * torch.randn(n, k, generator=g)


def mlp(seed=0, d=12, h=16, k=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, k))


def train(model, opt, steps, x, y, sched=None):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
        if sched:
            sched.step()
        losses.append(loss.item())
    return losses


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_statistics_only_on_update_steps(monkeypatch):
    model = mlp()
    opt = ngd.torch.SINGD(model, lr=0.05, T=3, damping=0.01)
    calls = []
    orig = opt._observe
    monkeypatch.setattr(opt, "_observe", lambda *a: calls.append(a[0].id) or orig(*a))
    x, y = data()
    train(model, opt, 7, x, y)
    assert sorted(calls) == [0, 0, 0, 1, 1, 1]  # steps 0, 3, 6, each layer once
    assert [h["updates"] for h in opt.health()] == [3, 3]
    with torch.no_grad():  # evaluation: no hooks fire, nothing is observed
        model(x)
    assert len(calls) == 6


def test_matches_the_numpy_api_bit_for_bit():
    """The same two-layer problem through ngd.torch and through ngd.Optimizer fed by hand
    with the inputs and output gradients autograd computes."""
    model = mlp(1)
    ref = copy.deepcopy(model)
    x, y = data(seed=1)
    opt = ngd.torch.SINGD(model, lr=0.05, T=2, damping=0.01, structures=("diagonal", "dense"))
    train(model, opt, 5, x, y)
    o = ngd.Optimizer("singd", lr=0.05, T=2, damping=0.01, structures=("diagonal", "dense"))
    l1, l2 = ref[0], ref[2]
    ids = []
    for lin in (l1, l2):
        lin.weight.grad = torch.zeros_like(lin.weight)
        lin.bias.grad = torch.zeros_like(lin.bias)
        ids.append(o.add_layer(lin.weight.detach().numpy(), lin.weight.grad.numpy(), lin.bias.detach().numpy(), lin.bias.grad.numpy()))
    for _ in range(5):
        for p in ref.parameters():
            p.grad.zero_()
        h = l1(x)
        h.retain_grad()
        a2 = torch.tanh(h)
        a2.retain_grad()
        out = l2(a2)
        out.retain_grad()
        ((out - y) ** 2).sum(1).mean().backward()
        if o.wants_stats():
            o.observe(ids[0], x.numpy(), h.grad.numpy())
            o.observe(ids[1], a2.detach().numpy(), out.grad.numpy())
        o.step()
    assert torch.equal(flat(model), flat(ref))


def test_other_parameters_follow_torch_adamw():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(12, 8), nn.LayerNorm(8), nn.Linear(8, 5))
    ln = copy.deepcopy(model[1])
    opt = ngd.torch.SINGD(model, lr=0.05, T=1, others="adamw", others_config={"lr": 0.01, "weight_decay": 0.02})
    ref = torch.optim.AdamW(ln.parameters(), lr=0.01, weight_decay=0.02)
    x, y = data(seed=2)
    for _ in range(4):
        opt.zero_grad()
        ((model(x) - y) ** 2).sum(1).mean().backward()
        for p, q in zip(ln.parameters(), model[1].parameters()):
            p.grad = q.grad.clone()
        opt.step()
        ref.step()
    for p, q in zip(ln.parameters(), model[1].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    assert not torch.equal(model[1].weight, torch.ones(8))  # it was trained
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["ngd"] == "adamw"


def test_lr_scheduler_scales_every_learning_rate():
    x, y = data(seed=3)
    a, b = mlp(3), mlp(3)
    oa = ngd.torch.SINGD(a, lr=0.1, T=1)
    sched = torch.optim.lr_scheduler.LambdaLR(oa, lambda e: 0.5)
    ob = ngd.torch.SINGD(b, lr=0.05, T=1)
    train(a, oa, 4, x, y, sched)
    train(b, ob, 4, x, y)
    torch.testing.assert_close(flat(a), flat(b), rtol=1e-6, atol=1e-7)
    # a schedule down to 0 freezes the weights
    sched2 = torch.optim.lr_scheduler.LambdaLR(oa, lambda e: 0.0)
    w = flat(a)
    train(a, oa, 2, x, y, sched2)
    assert torch.equal(flat(a), w)


def test_gradient_accumulation_equals_one_big_batch():
    x, y = data(n=32, seed=4)
    a, b = mlp(4), mlp(4)
    oa = ngd.torch.SINGD(a, lr=0.05, T=1, damping=0.01)
    ob = ngd.torch.SINGD(b, lr=0.05, T=1, damping=0.01)
    train(a, oa, 3, x, y)
    for _ in range(3):
        ob.zero_grad()
        for xs, ys in ((x[:16], y[:16]), (x[16:], y[16:])):
            (((b(xs) - ys) ** 2).sum(1).mean() / 2).backward()
        ob.step()
    torch.testing.assert_close(flat(b), flat(a), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: ngd.torch.IKFAC(m, lr=0.05, T=1, damping=0.01),
        lambda m: ngd.torch.KFAC(m, lr=0.05, T_u=1, T_i=1, damping_rel=0.01),
        lambda m: ngd.torch.BKFAC(m, lr=0.05, T_u=1, T_i=2, damping_rel=0.01),
    ],
    ids=["ikfac", "kfac", "bkfac"],
)
def test_micro_batches_make_every_method_take_the_whole_batchs_step(make):
    x, y = data(n=32, seed=6)
    a, b, c = mlp(6), mlp(6), mlp(6)
    oa, ob, oc = make(a), make(b), make(c)
    ob.set_micro_batches(2)
    train(a, oa, 3, x, y)
    for m, o in ((b, ob), (c, oc)):
        for _ in range(3):
            o.zero_grad()
            for xs, ys in ((x[:16], y[:16]), (x[16:], y[16:])):
                (((m(xs) - ys) ** 2).sum(1).mean() / 2).backward()
            o.step()
    torch.testing.assert_close(flat(b), flat(a), rtol=1e-4, atol=1e-5)
    # (without the setting these methods' statistics add up to another step)
    assert (flat(c) - flat(a)).abs().max() > 1e-3
    with pytest.raises(ValueError):
        ob.set_micro_batches(0)


class FakeScaler:
    """What GradScaler.step hands the optimizer (torch 1.13's GradScaler is CUDA-only)."""

    def __init__(self, s):
        self.s = s

    def get_scale(self):
        return self.s


def test_loss_scale_is_undone_by_libngd():
    x, y = data(seed=5)
    a, b, c = mlp(5), mlp(5), mlp(5)
    oa = ngd.torch.SINGD(a, lr=0.05, T=1)
    ob = ngd.torch.SINGD(b, lr=0.05, T=1)
    oc = ngd.torch.SINGD(c, lr=0.05, T=1)
    train(a, oa, 3, x, y)
    for _ in range(3):
        for m, o in ((b, ob), (c, oc)):
            o.zero_grad()
            (1024.0 * ((m(x) - y) ** 2).sum(1).mean()).backward()
        ob.set_grad_scale(1024.0)
        ob.step()
        oc.step(grad_scaler=FakeScaler(1024.0))
    torch.testing.assert_close(flat(b), flat(a), rtol=1e-5, atol=1e-6)
    assert torch.equal(flat(c), flat(b))
    # a non-finite gradient: the step is skipped, nothing changes, no exception
    w = flat(c)
    oc.zero_grad()
    (((c(x) - y) ** 2).sum(1).mean() * float("inf")).backward()
    oc.step(grad_scaler=FakeScaler(1024.0))
    assert oc.last_step_skipped and torch.equal(flat(c), w)


class StateScaler(FakeScaler):
    """A FakeScaler with the per-optimizer state GradScaler.step reads found_inf from."""

    def __init__(self, s):
        super().__init__(s)
        self._scale = torch.full((1,), float(s))
        self._per_optimizer_states = collections.defaultdict(dict)


def test_a_skip_is_reported_even_when_log_fn_raises():
    x, y = data(seed=8)
    m = mlp(8)

    def boom(msg):
        raise KeyError(msg)

    o = ngd.torch.SINGD(m, lr=0.05, T=1, log_fn=boom)
    sc = StateScaler(1024.0)
    w = flat(m)
    o.zero_grad()
    (((m(x) - y) ** 2).sum(1).mean() * float("inf")).backward()
    with pytest.raises(KeyError, match="non-finite"):
        o.step(grad_scaler=sc)
    assert o.last_step_skipped and torch.equal(flat(m), w)
    (found,) = sc._per_optimizer_states[id(o)]["found_inf_per_device"].values()
    assert found.item() == 1.0


def test_kfac_loss_scale_handed_over_at_step_is_undone():
    # ngd.torch hands the scale to libngd at step(), after the backward's statistics: the
    # K-FAC family's G statistics must still be unscaled by this step's scale
    x, y = data(seed=9)
    a, b = mlp(9), mlp(9)
    oa = ngd.torch.KFAC(a, lr=0.05, T_u=1, T_i=2)
    ob = ngd.torch.KFAC(b, lr=0.05, T_u=1, T_i=2)
    for s in (65536.0, 65536.0, 1024.0, 4096.0, 8.0):
        for m, o, k in ((a, oa, 1.0), (b, ob, s)):
            o.zero_grad()
            (k * ((m(x) - y) ** 2).sum(1).mean()).backward()
        oa.step()
        ob.step(grad_scaler=FakeScaler(s))
    torch.testing.assert_close(flat(b), flat(a), rtol=1e-4, atol=1e-5)


def test_state_dict_roundtrip_is_exact():
    x, y = data(seed=6)
    a = mlp(6)
    oa = ngd.torch.KFAC(a, lr=0.05, T_u=1, T_i=2)
    train(a, oa, 3, x, y)
    sd_model, sd_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(oa.state_dict())
    train(a, oa, 3, x, y)
    b = mlp(99)
    b.load_state_dict(sd_model)
    ob = ngd.torch.KFAC(b, lr=0.05, T_u=1, T_i=2)
    ob.load_state_dict(sd_opt)
    train(b, ob, 3, x, y)
    assert torch.equal(flat(a), flat(b))
    with pytest.raises(ValueError, match="from kfac"):
        ngd.torch.SINGD(mlp(), lr=0.1).load_state_dict(sd_opt)


CLASSES = ["SINGD", "INGD", "IKFAC", "KFAC", "RSKFAC", "SREKFAC", "BKFAC", "BRKFAC", "BRCKFAC"]


@pytest.mark.parametrize("name", CLASSES)
def test_every_method_trains_linear_and_conv(name):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, groups=2),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 6), nn.ReLU(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(8)
    x = torch.randn(16, 2, 7, 7, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    kw = {"lr": 0.2, "T": 2, "damping": 0.01} if name in ("SINGD", "INGD", "IKFAC") else {"lr": 0.5, "T_u": 2, "T_i": 4}
    if name not in ("SINGD", "INGD", "IKFAC", "KFAC"):
        kw["rank"] = 4  # (K-FAC's decomposition is full: a rank is refused there)
    opt = getattr(ngd.torch, name)(model, **kw)
    assert len(opt.layer_ids) == 4
    losses = []
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < 0.1 * losses[0], losses
    assert all(h["updates"] >= 1 for h in opt.health())


def test_bf16_autocast_conv_inputs(monkeypatch):
    """Under CPU autocast a later convolution's input is bfloat16: it goes to libngd as the
    bf16 images (ngd_optim_observe_conv unfolds them as it reads them; it was refused with a
    TypeError), and training works, the same as from the float32 images within bf16's rounding."""
    orig = ngd.torch._matrix

    def run(autocast):
        torch.manual_seed(7)
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
                              nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
        g = torch.Generator().manual_seed(8)
        x = torch.randn(16, 2, 7, 7, generator=g)
        y = torch.randint(0, 3, (16,), generator=g)
        opt = ngd.torch.KFAC(model, lr=0.5, T_u=1, T_i=2)
        dtypes = []
        monkeypatch.setattr(ngd.torch, "_matrix", lambda t, c, w: (dtypes.append((w, t.dtype)), orig(t, c, w))[1])
        losses = []
        for _ in range(20):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, dtypes
    l16, d16 = run(True)
    l32, _ = run(False)
    conv2_x = {t for w, t in d16 if w == "the input of 2"}
    assert conv2_x == {torch.bfloat16}, d16[:6]
    assert np.isfinite(l16).all() and l16[-1] < 0.3 * l16[0], l16
    assert abs(l16[-1] - l32[-1]) < 0.1 * l32[0], (l16[-1], l32[-1])


def test_per_layer_structures_and_reduce():
    torch.manual_seed(9)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 5 * 5, 4))
    opt = ngd.torch.IKFAC(model, lr=0.01, T=1, kfac_approx="reduce",
                          structures={"0": ("diagonal", "dense"), "default": ("dense", "diagonal")})
    x = torch.randn(4, 2, 7, 7)
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()
    K0, C0 = opt.ngd.factor(0, "K"), opt.ngd.factor(0, "C")
    K2, C2 = opt.ngd.factor(1, "K"), opt.ngd.factor(1, "C")
    off = lambda m: np.abs(m - np.diag(np.diag(m))).max()  # noqa: E731
    assert off(K0) == 0 and off(C0) > 0 and off(K2) > 0 and off(C2) == 0


def test_weight_shared_linear_on_3d_inputs():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 2))
    x = torch.randn(4, 7, 6)
    opt = ngd.torch.SINGD(model, lr=0.05, T=1, loss_average="batch+sequence")
    losses = train(model, opt, 10, x, torch.zeros(4, 7, 2))
    assert losses[-1] < 0.5 * losses[0]


# ---- errors: each a clear exception, never a crash ----


def test_error_device():
    model = nn.Linear(3, 2, device="meta")  # stands for CUDA: any non-CPU device
    with pytest.raises(TypeError, match="device meta.*CPU"):
        ngd.torch.SINGD(model)


def test_error_float64():
    with pytest.raises(TypeError, match="float64.*float32"):
        ngd.torch.SINGD(nn.Linear(3, 2).double())


def test_error_non_contiguous():
    lin = nn.Linear(3, 2)
    lin.weight = nn.Parameter(torch.randn(3, 2).t())
    with pytest.raises(ValueError, match="not contiguous"):
        ngd.torch.KFAC(lin)


def test_error_no_supported_layers():
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d"):
        ngd.torch.SINGD(nn.Sequential(nn.LayerNorm(4), nn.ReLU()))
    with pytest.raises(TypeError, match="nn.Module"):
        ngd.torch.SINGD([torch.zeros(3)])


def test_first_order_rules_take_models_without_layers():
    """ngd.torch.AdamW and SGD are rules over every parameter: a model with no Linear or
    Conv2d is theirs too, and AdamW's steps equal torch.optim.AdamW's."""
    torch.manual_seed(3)
    model = nn.Embedding(10, 4)
    ref = copy.deepcopy(model)
    opt = ngd.torch.AdamW(model, lr=1e-2, weight_decay=0.0)
    topt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
    idx = torch.tensor([1, 3, 3, 7])
    for m, o in ((model, opt), (ref, topt)):
        for _ in range(3):
            o.zero_grad()
            m(idx).square().sum().backward()
            o.step()
    torch.testing.assert_close(model.weight, ref.weight, rtol=1e-5, atol=1e-6)
    ngd.torch.SGD(nn.Sequential(nn.LayerNorm(4)), lr=0.1)


def test_first_order_methods_give_every_parameter_their_own_rule_and_options():
    """ngd.torch.AdamW's betas and eps, and ngd.torch.SGD's rule, reach the norms too: they
    had AdamW's default betas (AdamW) and AdamW at lr 1e-3 (SGD) there."""
    def net():
        torch.manual_seed(5)
        return nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 3))

    x, y = data(24, 6, 3, seed=4)
    for make, tmake in [
        (lambda m: ngd.torch.AdamW(m, lr=1e-2, beta1=0.5, beta2=0.9, eps=1e-6, weight_decay=0.01),
         lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.01)),
        (lambda m: ngd.torch.SGD(m, lr=0.1, momentum=0.9, nesterov=True),
         lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True)),
    ]:
        a, b = net(), net()
        opt = make(a)
        assert {g["ngd"] for g in opt.param_groups} <= {"layers", type(opt).__name__.lower()}
        train(a, opt, 4, x, y)
        train(b, tmake(b), 4, x, y)
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m: "%s: %s" % (n, m))


def mlp_ln(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 5))


def test_options_the_method_would_ignore_are_refused():
    # (KFAC(damping=...) trained exactly as without it; its damping is damping_rel)
    with pytest.raises(TypeError, match="damping_rel"):
        ngd.torch.KFAC(mlp(), damping=1e-2)
    with pytest.raises(TypeError, match="'T_u' does not apply to singd"):
        ngd.torch.SINGD(mlp(), T_u=3)
    with pytest.raises(TypeError, match="'momentum' does not apply to adamw"):
        ngd.torch.SINGD(mlp_ln(), others_config={"momentum": 0.9})
    with pytest.raises(TypeError, match="'beta1' does not apply to sgd"):
        ngd.torch.SINGD(mlp_ln(), others="sgd", others_config={"beta1": 0.5})


def test_a_state_dict_of_other_learning_rates_is_refused_at_load():
    """A state saved at lr 1e-3 loaded into an optimizer created at lr 1e-2 (the others at
    AdamW's own 1e-3) used to be taken, and the next step failed naming the groups' ratios."""
    x, y = data()
    m = mlp_ln()
    o = ngd.torch.SINGD(m, lr=1e-3, T=1)
    train(m, o, 2, x, y)
    sd = o.state_dict()
    o.remove_hooks()
    m2 = mlp_ln()
    o2 = ngd.torch.SINGD(m2, lr=1e-2, T=1)
    before, lrs = o2.ngd.save_bytes(), [g["lr"] for g in o2.param_groups]
    with pytest.raises(ValueError, match="saved learning rates .* are not this optimizer's"):
        o2.load_state_dict(sd)
    assert o2.ngd.save_bytes() == before and [g["lr"] for g in o2.param_groups] == lrs
    o2.remove_hooks()
    o3 = ngd.torch.SINGD(mlp_ln(), lr=1e-3, T=1)
    o3.load_state_dict(sd)  # the saved run's lr: taken


def test_error_names_that_match_no_layer():
    # a mistyped layer name in structures= or layer_config= is refused, naming the layers,
    # and the refused optimizer leaves no hook on the model
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"structures names no Linear/Conv2d layer: fc1 \(the layers: 0, 2\)"):
        ngd.torch.SINGD(model, structures={"fc1": ("diagonal", "diagonal"), "default": "dense"})
    with pytest.raises(ValueError, match=r"layer_config names no Linear/Conv2d layer: fc2"):
        ngd.torch.SINGD(model, layer_config={"fc2": {"T": 5}})
    assert not model[0]._forward_hooks and not model[2]._forward_hooks
    ngd.torch.SINGD(model, structures={"2": "diagonal", "default": "dense"})  # (right names)


def test_error_names_a_top_level_conv():
    with pytest.raises(ValueError, match=r"Conv2d \(the model, a Conv2d\): padding='same'"):
        ngd.torch.SINGD(nn.Conv2d(2, 3, 4, padding="same"))


def test_error_freed_parameter_memory():
    model = mlp()
    opt = ngd.torch.SINGD(model, lr=0.1, T=1)
    x, y = data()
    train(model, opt, 1, x, y)
    model[0].weight.data = torch.zeros(16, 12)  # the old memory is gone from the model
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    with pytest.raises(ngd.Error, match="memory of parameter 0.weight was replaced"):
        opt.step()


def test_error_bad_option_and_statistics_dtype():
    with pytest.raises(TypeError, match="unknown libngd option 'lr_schedule'"):
        ngd.torch.SINGD(mlp(), lr_schedule=1)
    with pytest.raises(ngd.Error, match="alpha1 must be in"):
        ngd.torch.SINGD(mlp(), alpha1=2.0)
    with pytest.raises(ValueError, match="fixed"):
        ngd.torch.INGD(mlp(), structures="diagonal")


def test_replaced_grad_is_copied_not_lost():
    x, y = data(seed=11)
    a, b = mlp(11), mlp(11)
    oa, ob = ngd.torch.SINGD(a, lr=0.05, T=1), ngd.torch.SINGD(b, lr=0.05, T=1)
    train(a, oa, 2, x, y)
    for _ in range(2):
        for p in b.parameters():
            p.grad = None  # as zero_grad(set_to_none=True) of another optimizer would
        ((b(x) - y) ** 2).sum(1).mean().backward()
        ob.step()
    assert torch.equal(flat(a), flat(b))


def test_a_dropped_optimizer_lets_go_of_the_model():
    import gc
    import weakref

    model = mlp()
    opt = ngd.torch.SINGD(model, lr=0.1, T=1)
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    assert ref() is None
    assert all(not m._forward_hooks for m in model.modules())
    opt2 = ngd.torch.SINGD(model, lr=0.1, T=1)  # a new one works alone
    x, y = data()
    train(model, opt2, 2, x, y)
    assert [h["updates"] for h in opt2.health()] == [2, 2]
    with pytest.raises(NotImplementedError, match="cannot be added"):
        opt2.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})


def test_attention_and_unused_layers():
    """MultiheadAttention uses its out_proj's weight without calling it: that Linear takes the
    plain rule; a layer skipped in the forward pass of a statistics step is a clear error."""
    torch.manual_seed(12)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 3)
            self.unused = nn.Linear(8, 3)

        def forward(self, x, use=False):
            h = self.att(x, x, x)[0]
            return self.fc(h) + (self.unused(h) if use else 0)

    m = M()
    opt = ngd.torch.SINGD(m, lr=0.05, T=1, exclude=["unused"])
    assert set(opt.layer_ids) == {"fc"}
    x = torch.randn(2, 5, 8)
    for _ in range(2):
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()
    opt = ngd.torch.SINGD(m, lr=0.05, T=1)
    opt.zero_grad()
    m(x).square().mean().backward()
    with pytest.raises(ngd.Error, match="'unused'.*needs statistics.*was the module called"):
        opt.step()
    # excluding a parent module excludes the layers inside it
    seq = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), nn.Linear(4, 2))
    opt = ngd.torch.SINGD(seq, exclude=["1"])
    assert set(opt.layer_ids) == {"0", "2"} and len(opt.param_groups[1]["params"]) == 4
    with pytest.raises(ValueError, match="exclude names no module"):
        ngd.torch.SINGD(seq, exclude=["nope"])


@pytest.mark.parametrize("geom", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(3, 2), dilation=2, padding="same"),
                                  dict(kernel_size=2, stride=(1, 2), padding=0)])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_conv2d_statistics_match_torch_unfold(geom, approx):
    """ngd.torch on an nn.Conv2d against ngd.Optimizer fed with the patches of torch's own
    F.unfold (an independent im2col) and the output gradient as (n, o1, o2) x channels."""
    torch.manual_seed(13)
    conv = nn.Conv2d(3, 4, **geom)
    ref = copy.deepcopy(conv)
    w0 = conv.weight.detach().clone()
    x = torch.randn(2, 3, 7, 8)
    opt = ngd.torch.SINGD(nn.Sequential(conv), lr=0.1, T=1, kfac_approx=approx)
    o = ngd.Optimizer("singd", lr=0.1, T=1, kfac_approx=approx)
    ref.weight.grad, ref.bias.grad = torch.zeros_like(ref.weight), torch.zeros_like(ref.bias)
    i = o.add_layer(ref.weight.detach().numpy(), ref.weight.grad.numpy(), ref.bias.detach().numpy(), ref.bias.grad.numpy())
    for _ in range(3):
        opt.zero_grad()
        conv(x).square().mean().backward()
        opt.step()
        ref.weight.grad.zero_(), ref.bias.grad.zero_()
        out = ref(x)
        out.retain_grad()
        out.square().mean().backward()
        pad = ref.padding if not isinstance(ref.padding, str) else tuple(d * (k - 1) // 2 for d, k in zip(ref.dilation, ref.kernel_size))
        cols = nn.functional.unfold(x, ref.kernel_size, dilation=ref.dilation, padding=pad, stride=ref.stride)
        a = cols.transpose(1, 2)  # (n, L, c*k1*k2)
        a = a.mean(1) if approx == "reduce" else a.reshape(-1, a.shape[-1])
        g = out.grad.permute(0, 2, 3, 1).reshape(-1, 4)
        o.observe(i, a.contiguous().numpy(), g.contiguous().numpy(), batch=2)
        o.step()
    torch.testing.assert_close(conv.weight, ref.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv.bias, ref.bias, rtol=1e-5, atol=1e-6)
    assert (conv.weight - w0).abs().max() > 1e-3  # it moved


def test_bf16_autocast_statistics(monkeypatch):
    """Under CPU autocast the output gradients and the inputs of later layers are bfloat16
    (the model's own input stays float32): they go to libngd as bf16 matrices (no float32
    copies) beside float32 ones, and training works."""
    model = mlp(14)
    opt = ngd.torch.SINGD(model, lr=0.1, T=1, damping=0.01)
    dtypes = []
    orig = ngd.torch._matrix
    monkeypatch.setattr(ngd.torch, "_matrix", lambda t, c, w: dtypes.append(t.dtype) or orig(t, c, w))
    x, y = data(seed=14)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = ((model(x).float() - y) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(dtypes) == {torch.bfloat16, torch.float32}
    assert dtypes.count(torch.bfloat16) == 3 * 15  # g of both layers, a of the second
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_group_created_with_lr_zero_is_refused_when_raised():
    # (its lr times libngd's scale stayed 0: a hand-written warm-up from 0 never trained)
    x, y = data()
    model = mlp()
    opt = ngd.torch.SINGD(model, lr=0.0)
    for g in opt.param_groups:
        g["lr"] = 0.1
    with pytest.raises(ValueError, match="created with lr 0 and now has lr 0.1"):
        train(model, opt, 1, x, y)
    # the way that works: created with the lr to reach, set to 0, then raised
    model = mlp()
    w0 = model[0].weight.detach().clone()
    opt = ngd.torch.SINGD(model, lr=0.1)
    for g in opt.param_groups:
        g["lr"] = 0.0
    train(model, opt, 1, x, y)
    assert torch.equal(model[0].weight, w0)
    for g in opt.param_groups:
        g["lr"] = 0.1
    train(model, opt, 1, x, y)
    assert not torch.equal(model[0].weight, w0)


def test_copies_are_refused():
    # (a deepcopy was half-built: AttributeError '_entries' on its repr, '_regs' on step)
    opt = ngd.torch.SINGD(mlp())
    for f in (copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="cannot be copied"):
            f(opt)


def test_the_model_pickles_while_an_optimizer_exists_and_the_optimizer_does_not():
    # (the forward hooks were local functions: pickle.dumps(model) and torch.save(model)
    # raised AttributeError; pickle.dumps(opt) made a shell that failed on every call)
    import io
    import pickle

    model = mlp()
    opt = ngd.torch.SINGD(model, lr=0.05, T=1)
    x, y = data()
    train(model, opt, 1, x, y)
    clone = pickle.loads(pickle.dumps(model))
    buf = io.BytesIO()
    torch.save(model, buf)
    for m in (clone, copy.deepcopy(model)):
        assert torch.equal(m[0].weight, model[0].weight)
        # the copy's hooks are inert (no optimizer behind them), and it trains as a plain model
        hooks = list(m[0]._forward_hooks.values())
        assert hooks and all(h.opt is None for h in hooks)
        ((m(x) - y) ** 2).sum().backward()
        assert m[0].weight.grad is not None
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(opt)
    train(model, opt, 1, x, y)  # the original still trains


def test_shared_weights_need_the_same_geometry():
    # a Conv2d sharing another's weight with another padding and dilation was observed with
    # the owner's geometry: wrong statistics without a word (or an error from inside backward)
    a = nn.Conv2d(2, 3, 3, padding=1)
    b = nn.Conv2d(2, 3, 3, padding=2, dilation=2)
    b.weight = a.weight
    model = nn.ModuleDict({"a": a, "b": b})
    with pytest.raises(ValueError, match="b shares its weight with a but not its geometry"):
        ngd.torch.KFAC(model)
    c = nn.Conv2d(2, 3, 3, padding=1)
    c.weight = a.weight
    ngd.torch.KFAC(nn.ModuleDict({"a": a, "c": c}))  # the same geometry: one layer's rows
    lin = nn.Linear(4, 4)
    tied = nn.Linear(4, 4)
    tied.weight = lin.weight
    ngd.torch.SINGD(nn.ModuleDict({"x": lin, "y": tied}))


@pytest.mark.parametrize("name", ["AdamW", "SGD", "SINGD", "KFAC"])
def test_frozen_parameters_stay_as_torch_optim_leaves_them(name):
    # (a zero gradient was handed to libngd for grad None and for requires_grad False: the
    # frozen layers moved by weight decay and momentum, and a frozen first layer, which gets
    # no statistics, made every later step fail)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    opt = getattr(ngd.torch, name)(m, lr=0.1, weight_decay=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 3)

    def steps(n, drop=None):
        for _ in range(n):
            opt.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            if drop is not None:
                drop.grad = None
            opt.step()

    steps(3)
    for p in list(m[1].parameters()) + list(m[2].parameters()):
        p.requires_grad_(False)
    frozen = [p.clone() for p in list(m[1].parameters()) + list(m[2].parameters())]
    w0 = m[0].weight.clone()
    steps(3)
    assert all(torch.equal(a, b) for a, b in zip(frozen, list(m[1].parameters()) + list(m[2].parameters())))
    assert not torch.equal(w0, m[0].weight)
    for p in m.parameters():
        p.requires_grad_(True)
    for p in m[0].parameters():  # the first layer: no statistics reach it now
        p.requires_grad_(False)
    w0 = m[0].weight.clone()
    steps(3)
    assert torch.equal(w0, m[0].weight)
    for p in m[0].parameters():
        p.requires_grad_(True)
    # grad None for a weight whose bias trains: the weight stays, the bias moves
    w2, b2 = m[2].weight.clone(), m[2].bias.clone()
    steps(1, drop=m[2].weight)
    assert torch.equal(w2, m[2].weight) and not torch.equal(b2, m[2].bias)
    steps(1)
    assert not torch.equal(w2, m[2].weight)  # (for that step only)


def test_a_parameter_frozen_at_creation_and_unfrozen_later_is_said_once():
    m = mlp()
    for p in m[0].parameters():
        p.requires_grad_(False)
    opt = ngd.torch.SINGD(m, T=1)
    for p in m[0].parameters():
        p.requires_grad_(True)
    x, y = data()
    with pytest.warns(UserWarning, match=r"parameter 0\.weight was frozen when the optimizer was created"):
        train(m, opt, 1, x, y)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (once)
        train(m, opt, 1, x, y)


def test_an_empty_batch_is_not_observed():
    # (libngd refuses 0 rows: the error came from inside backward, which stopped half done)
    m = mlp()
    opt = ngd.torch.SINGD(m, T=1)
    w = [p.clone() for p in m.parameters()]
    opt.zero_grad()
    m(torch.randn(0, 12)).square().mean().backward()
    opt.step()  # every layer saw only the empty batch: skipped, as it was
    assert all(torch.equal(a, b) for a, b in zip(w, m.parameters()))
    x, y = data()
    train(m, opt, 2, x, y)  # and training goes on
    assert not torch.equal(w[0], m[0].weight)


def test_a_keyword_input_is_said_to_be_one():
    # (forward hooks see positional arguments only: m(input=x) was an IndexError)
    model = mlp()
    opt = ngd.torch.SINGD(model, T=1)
    x, _ = data()
    with pytest.raises(TypeError, match="called with its input as a keyword argument"):
        model[0](input=x)
    opt.zero_grad()


def test_a_computed_weight_is_refused_with_its_name():
    # (weight_norm: torch's "can't optimize a non-leaf Tensor" came after libngd took it)
    model = mlp()
    torch.nn.utils.weight_norm(model[0])
    with pytest.raises(ValueError, match=r"0\.weight is computed from other parameters"):
        ngd.torch.SINGD(model)
    opt = ngd.torch.SINGD(model, exclude=["0"])  # the way out it names
    x, y = data()
    train(model, opt, 2, x, y)
