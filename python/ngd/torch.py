"""ngd.torch — libngd's optimizers inside an ordinary PyTorch training loop.

    import ngd.torch
    opt = ngd.torch.SINGD(model, structures=("diagonal", "dense"), T=10, lr=3e-3, damping=1e-2)
    for x, y in loader:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()

One class per method: SINGD, INGD, IKFAC, KFAC, RSKFAC, SREKFAC, BKFAC, BRKFAC, BRCKFAC (and
SGD, AdamW: libngd's plain rules over every parameter, with all their options). Each takes the
module and libngd's options (ngd.make_config: lr, momentum, weight_decay, damping, T, lr_cov,
alpha1, structures, kfac_approx, loss_average, the K-FAC family's rho, T_u, T_i, damping_rel,
rank, ... ). An option the method would ignore is a TypeError naming the methods that use it
(factored_apply aside, which SINGD takes for dense factors only): the K-FAC family's damping is
damping_rel (relative to the largest eigenvalue, as `ngd train --damping` sets it for them),
SINGD's is damping. Defaults are libngd's (ngd_config_default, ngd.h;
`ngd.config_dict(ngd.make_config("kfac")[0])` lists them): SINGD, INGD, IKFAC lr 1e-3, momentum
0.9, damping 1e-3, T 10, lr_cov 1e-2, alpha1 0.5 (IKFAC 0); the K-FAC family lr 0.1, momentum
0, weight decay 7e-4 from step 200, damping_rel 0.1, T_u 10, T_i 50; AdamW lr 1e-3, weight
decay 1e-2; SGD lr 1e-2. Structures (SINGD, IKFAC; INGD's are dense): dense, diagonal,
block<B>diagonal, hierarchical<K1>_<K2>, triltoeplitz, triutoeplitz, tril_topleft_diag,
tril_bottomright_diag, triu_topleft_diag, triu_bottomright_diag (ngd.h, ngd_structure_parse),
each optionally with ':bf16'. loss_average says how the loss was reduced: 'batch' (default) for
a mean over the batch of one term per sample, 'batch+sequence' for a mean over batch and
positions (a language model's token-mean cross-entropy), 'sum'.

What is Kronecker-factored: every nn.Linear (inputs of any rank: the leading dimensions are
flattened into rows, the first one is the batch, the others are weight-sharing positions)
and nn.Conv2d (zero padding; groups, stride, dilation; kfac_approx 'expand' or 'reduce'),
with its bias, that is called as a module (its forward hook sees its input and output: a
subclass whose forward changes the output gives the changed output's gradient). Such a layer
must be called in every step that wants its statistics, or step() raises: a layer used only
in some steps belongs in exclude=[...]. Not factored: nn.MultiheadAttention (its projections
are used through F.multi_head_attention_forward, not called as Linear modules: write the
attention with nn.Linear projections to precondition them), Conv1d/3d, ConvTranspose, RNNs:
their parameters take the `others` rule. A Linear or Conv2d sharing another's weight (weight
tying, b.weight = a.weight) adds its inputs and output gradients to the first one's statistics;
its own bias, if it has one, takes the `others` rule. Every other trainable parameter (norms,
embeddings, biases of other layers) takes the AdamW rule (others="adamw", the default beside a second-order method: lr 1e-3, no
weight decay, as `ngd train --param-optim adamw`; under ngd.torch.AdamW its lr, betas, eps and
weight decay) or the SGD rule (others="sgd", the default under ngd.torch.SGD: the method's lr,
momentum, Nesterov and weight decay) through ngd_optim_add_param, with others_config={...}
(options of that rule only) to set its hyper-parameters.

Statistics: a forward hook on each layer, on steps where libngd wants statistics for it
(ngd_optim_layer_wants_stats) and autograd is recording, keeps the layer's input and puts a
gradient hook on its output; that hook hands the input a and the output gradient g to
ngd_optim_observe during backward. Other steps pay for nothing but a Python check.

Zero copy: libngd keeps pointers to each parameter's memory and to a gradient buffer
allocated here (p.grad); torch's autograd accumulates into p.grad in place. zero_grad()
zeroes these buffers in place (set_to_none is ignored: a freed buffer would leave libngd a
dangling pointer). A parameter frozen after the optimizer was created (requires_grad False,
or grad None at step(), as torch.optim skips it) is left as it is: a layer or parameter all
of whose parameters are frozen is skipped by libngd (ngd_optim_skip: its state stays too,
and it needs no statistics); a frozen weight or bias beside a trained one keeps its value. If something else replaces p.grad, step() copies it into the registered
buffer; if a parameter's own memory is replaced (p.data = ..., model.to(...)), step()
raises ngd.Error instead of writing to freed memory: create the optimizer after moving the
model. Parameters must be CPU, float32 and contiguous (checked at construction). Inputs
and output gradients are passed without copies when their rows are contiguous; otherwise
(and for Conv2d, whose patches and channel-last gradients libngd needs as matrices) a
temporary is made for the observe call.

param_groups: group 0 holds the Kronecker-factored layers' parameters, group 1 (if any) the
others. A torch lr scheduler changes group['lr']; step() turns the ratio to the initial lr
into ngd_optim_set_lr_scale (libngd has one lr scale for all parameters: groups must keep
the same ratio, so a scheduler must scale every group alike: CosineAnnealingLR with
eta_min=0, one lr_lambda for LambdaLR, not CyclicLR or a one-value OneCycleLR (which also
needs cycle_momentum=False); with others="sgd" both groups start at the method's lr, so any
scheduler that gives them equal lrs works). Gradient accumulation: call set_micro_batches(M)
once, then backward M times (each micro-batch's mean loss divided by M, or its sum for loss_average "sum") before
step(): every method takes the whole batch's step, up to rounding. Without it the
statistics of every backward add up, each scaled as a whole batch (INGD and SINGD are
invariant to that for mean losses divided by M; IKFAC, the K-FAC family and sum losses are
not: docs/algorithms.md, "Gradient accumulation"). Mixed precision: step(grad_scaler=scaler) (what
GradScaler.step does for this optimizer: _step_supports_amp_scaling) or
set_grad_scale(s) tells libngd the loss scale; libngd unscales the gradients itself and
skips steps with non-finite gradients: step() then leaves the parameters as they were, sets
opt.last_step_skipped and counts it in health()'s 'skips'. state_dict() includes libngd's
state as bytes (ngd_optim_save_mem); load_state_dict() restores it, with the param groups'
lr (which must be this optimizer's lrs times one factor: create it with the saved run's lr);
every other option is this optimizer's own, as given to its constructor. CPU float32
contiguous parameters only: .double(), .half() and channels_last models are refused.
"""

import ctypes
import warnings
import weakref

import torch
import torch.nn as nn

import ngd as _ngd
from ngd import Error, _lib

__all__ = [
    "NGDOptimizer",
    "SINGD",
    "INGD",
    "IKFAC",
    "KFAC",
    "RSKFAC",
    "SREKFAC",
    "BKFAC",
    "BRKFAC",
    "BRCKFAC",
    "SGD",
    "AdamW",
]


def _check_param(p, name):
    if p.device.type != "cpu":
        raise TypeError(
            "ngd.torch: parameter %s is on device %s; libngd runs on the CPU (move the model "
            "with model.cpu() before creating the optimizer)" % (name, p.device)
        )
    if p.dtype != torch.float32:
        raise TypeError("ngd.torch: parameter %s is %s; libngd trains float32 parameters (model.float())" % (name, p.dtype))
    if not p.is_contiguous():
        raise ValueError(
            "ngd.torch: parameter %s is not contiguous (libngd updates it in place through its "
            "memory; make it contiguous before creating the optimizer)" % name
        )
    if p.is_sparse:
        raise TypeError("ngd.torch: parameter %s is sparse" % name)


def _matrix(t, cols, what):
    """ngd_matrix view of a CPU float32/bfloat16 tensor as rows x cols (rows contiguous);
    returns (matrix, tensor kept alive for the call)."""
    if t.device.type != "cpu":
        raise TypeError("ngd.torch: %s is on device %s; libngd needs CPU tensors" % (what, t.device))
    if t.dtype == torch.float32:
        dt = _lib.F32
    elif t.dtype == torch.bfloat16:
        dt = _lib.BF16
    else:
        raise TypeError("ngd.torch: %s is %s; libngd takes float32 or bfloat16 statistics" % (what, t.dtype))
    if t.dim() == 2 and t.stride(1) == 1 and t.stride(0) >= cols:
        m = t
        ld = t.stride(0)
    else:
        m = t.reshape(-1, cols)
        if m.stride(1) != 1 or (m.shape[0] > 1 and m.stride(0) < cols):
            m = m.contiguous()
        ld = m.stride(0) if m.shape[0] > 1 else cols
    return _lib.Matrix(m.data_ptr(), m.shape[0], cols, ld, dt), m


# Linear modules whose owner uses their weight without calling them (MultiheadAttention's
# out_proj): no hook would see them, so their parameters take the `others` rule
_NOT_CALLED = tuple(
    c for c in (getattr(nn.modules.linear, "NonDynamicallyQuantizableLinear", None),) if c is not None
)


class _Hook:
    """A layer's forward hook: calls its optimizer's while that one lives (a weak reference:
    the hooks must not keep a dropped optimizer alive). It pickles, and deep-copies, as an inert
    hook: torch.save(model) and copy.deepcopy(model) work while an optimizer exists (a local
    function could not be pickled), and a copy's layers are not the optimizer's."""

    __slots__ = ("opt", "__weakref__")

    def __init__(self, opt=None):
        self.opt = weakref.ref(opt) if opt is not None else None

    def __call__(self, mod, inputs, output):
        o = self.opt() if self.opt is not None else None
        if o is not None:
            o._forward_hook(mod, inputs, output)

    def __reduce__(self):
        return (_Hook, ())


class _Entry:
    __slots__ = ("id", "module", "kind", "d_in", "d_out", "params", "geom", "name")


class NGDOptimizer(torch.optim.Optimizer):
    """Base class: a torch.optim.Optimizer whose step is one libngd step.

    model: the nn.Module to train. method: libngd's method name. others: 'adamw' or 'sgd',
    the rule of parameters that are not in a Linear / Conv2d layer (default: 'sgd' under SGD,
    else 'adamw'); others_config: its hyper-parameters (lr, weight_decay, and AdamW's
    beta1/beta2 (or betas=(b1, b2)), eps, or SGD's momentum, nesterov).
    layer_config: {module name: {option: value}} per-layer overrides (e.g. a different
    T or structures). structures (SINGD family): one name or (K, C), or a dict {module
    name: (K, C)} with an optional 'default' key, or a callable (name, module) -> (K, C).
    A layer_config or structures name that matches no Linear / Conv2d layer is a ValueError.
    exclude: module names (or modules) whose Linear / Conv2d layers, their own or inside
    them, are left to the `others` rule. All other keywords are libngd options (ngd.make_config).
    """

    METHOD = None
    _step_supports_amp_scaling = True

    def __init__(
        self,
        model,
        method=None,
        others=None,
        others_config=None,
        layer_config=None,
        exclude=(),
        **config
    ):
        method = method or self.METHOD
        if not isinstance(model, nn.Module):
            raise TypeError("ngd.torch: the first argument must be the nn.Module to train, not %s" % type(model).__name__)
        structures = config.pop("structures", None)
        per_layer_struct = None
        if isinstance(structures, dict) or callable(structures):
            per_layer_struct = structures
            if isinstance(structures, dict) and "default" in structures:
                config["structures"] = structures["default"]
        elif structures is not None:
            config["structures"] = structures
        self._opt = _ngd.Optimizer(method, **config)
        self.method = method
        cfg = self._opt.config
        self._kfac_reduce = cfg.kfac_approx == _lib.KFAC_APPROX["reduce"]
        layer_config = dict(layer_config or {})
        if isinstance(exclude, (str, nn.Module)):
            exclude = [exclude]
        excluded = set()  # ids of excluded modules and of everything inside them
        mods = dict(model.named_modules())
        for e in exclude:
            if not isinstance(e, nn.Module):
                if e not in mods:
                    raise ValueError("ngd.torch: exclude names no module of the model: %r" % (e,))
                e = mods[e]
            excluded.update(id(m) for m in e.modules())

        self._entries = []
        self._by_module = {}
        self._hooks = []
        self._init_done = False
        hook = _Hook(self)

        seen = {}  # id(param) -> (name, role)
        kf_params, other_params = [], []
        self._regs = []  # (param, grad buffer, storage ptr, name, libngd's entry id)
        self._empty, self._observed = set(), set()  # layers observed empty / not, this step
        for mname, mod in model.named_modules():
            if id(mod) in excluded:
                continue
            if not isinstance(mod, (nn.Linear, nn.Conv2d)) or isinstance(mod, _NOT_CALLED):
                continue
            w = mod.weight
            if w is None or not w.requires_grad:
                continue
            label = mname or "(the model, a %s)" % type(mod).__name__  # (messages)
            for pn, p in (("weight", w), ("bias", mod.bias)):
                if p is not None and not p.is_leaf:  # (weight_norm, parametrize: torch's
                    # "can't optimize a non-leaf Tensor" came after libngd had it)
                    raise ValueError(
                        "ngd.torch: %s.%s is computed from other parameters (weight_norm, "
                        "torch.nn.utils.parametrize), not a parameter libngd can update in "
                        "place: exclude=[%r] leaves the layer to the %s rule" % (label, pn, mname, others)
                    )
            pad = None
            if isinstance(mod, nn.Conv2d):
                if mod.padding_mode != "zeros":
                    raise ValueError(
                        "ngd.torch: Conv2d %s has padding_mode %r; only zero padding is supported "
                        "(exclude=[...] it to train it with the %s rule)" % (label, mod.padding_mode, others)
                    )
                pad = mod.padding
                if isinstance(pad, str):
                    if pad == "valid":
                        pad = (0, 0)
                    else:  # 'same': symmetric only
                        tot = [mod.dilation[i] * (mod.kernel_size[i] - 1) for i in range(2)]
                        if any(t % 2 for t in tot):
                            raise ValueError("ngd.torch: Conv2d %s: padding='same' with an even kernel is asymmetric (unsupported)" % label)
                        pad = (tot[0] // 2, tot[1] // 2)
            geom = None
            if isinstance(mod, nn.Conv2d):
                geom = (mod.in_channels, mod.kernel_size, mod.stride, tuple(pad), mod.dilation, mod.groups)
            if id(w) in seen:  # a layer sharing another layer's weight: observe into that one
                owner = seen[id(w)][2]
                if owner is None:
                    raise ValueError("ngd.torch: %s shares its weight with a plain parameter" % label)
                kind = "conv" if isinstance(mod, nn.Conv2d) else "linear"
                if kind != owner.kind or geom != owner.geom:
                    # (its rows were unfolded with the owner's geometry: wrong statistics
                    #  without a word, or an error from inside backward)
                    raise ValueError(
                        "ngd.torch: %s shares its weight with %s but not its geometry (kernel, "
                        "stride, padding, dilation, groups): libngd reads both layers' inputs "
                        "as one layer's; exclude=[%r] leaves it to the %s rule"
                        % (label, owner.name or "the model", mname, others)
                    )
                self._by_module[id(mod)] = owner
                self._hooks.append(mod.register_forward_hook(hook))
                continue
            for pn, p in (("weight", w), ("bias", mod.bias)):
                if p is not None:
                    _check_param(p, "%s.%s" % (mname, pn) if mname else pn)
            b = mod.bias if (mod.bias is not None and mod.bias.requires_grad) else None
            ov = dict(layer_config.pop(mname, {}))
            if per_layer_struct is not None:
                s = per_layer_struct(mname, mod) if callable(per_layer_struct) else per_layer_struct.get(mname)
                if s is not None:
                    ov["structures"] = s
            # (an override starts from the optimizer's own options: ngd.Optimizer merges them)
            gw = self._grad_buffer(w)
            gb = self._grad_buffer(b) if b is not None else None
            wv = w.detach().view(w.shape[0], -1)
            lid = self._opt.add_layer(
                wv.numpy(),
                gw.view(w.shape[0], -1).numpy(),
                b.detach().numpy() if b is not None else None,
                gb.numpy() if b is not None else None,
                name=mname or type(mod).__name__,
                **ov
            )
            e = _Entry()
            e.id, e.module, e.name = lid, mod, mname
            e.d_out, e.d_in = wv.shape
            e.kind = "conv" if isinstance(mod, nn.Conv2d) else "linear"
            e.geom = geom
            self._entries.append(e)
            self._by_module[id(mod)] = e
            seen[id(w)] = (mname, "weight", e)
            kf_params.append(w)
            self._regs.append((w, gw, w.data_ptr(), mname + ".weight", lid))
            if b is not None:
                seen[id(b)] = (mname, "bias", e)
                kf_params.append(b)
                self._regs.append((b, gb, b.data_ptr(), mname + ".bias", lid))
            self._hooks.append(mod.register_forward_hook(hook))
        # names that match no layer (a mistyped one would leave its layer at the defaults)
        named = {e.name for e in self._entries}
        stray_s = [k for k in (per_layer_struct if isinstance(per_layer_struct, dict) else ()) if k != "default" and k not in named]
        for what, stray in (("layer_config", list(layer_config)), ("structures", stray_s)):
            if stray:
                self.remove_hooks()
                self._opt.close()
                raise ValueError(
                    "ngd.torch: %s names no Linear/Conv2d layer: %s (the layers: %s)"
                    % (what, ", ".join(map(str, stray)), ", ".join(sorted(named)) or "none")
                )
        if not self._entries and method not in ("sgd", "adamw"):
            self.remove_hooks()
            self._opt.close()
            raise ValueError(
                "ngd.torch: %s has no nn.Linear or nn.Conv2d layer with a trainable weight for "
                "%s to precondition (use torch.optim or ngd.torch.AdamW for such a model)"
                % (type(model).__name__, method)
            )
        # every other trainable parameter: AdamW or SGD through ngd_optim_add_param; by default
        # the method's own rule under SGD and AdamW (all their options, as their layers'), AdamW
        # beside a second-order method
        if others is None:
            others = "sgd" if _ngd._method_number(method) == _lib.METHODS["sgd"] else "adamw"
        if others not in ("adamw", "sgd"):
            raise ValueError("ngd.torch: others must be 'adamw' or 'sgd', not %r" % (others,))
        # as `ngd train --param-optim`: AdamW beside another method at lr 1e-3 without weight
        # decay; otherwise the method's lr and weight decay, and its rule's other options
        if others == "adamw" and method != "adamw":
            oc = {"lr": 1e-3, "weight_decay": 0.0}
        else:
            oc = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
            if others == "adamw":  # (ngd.torch.AdamW: its betas and eps for every parameter)
                oc.update(beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps)
        if others == "sgd" and method != "adamw":
            oc.update(momentum=cfg.momentum, nesterov=bool(cfg.nesterov))
        oc.update(others_config or {})
        if "betas" in oc:
            oc["beta1"], oc["beta2"] = oc.pop("betas")
        self._others_lr = float(oc["lr"])
        # parameters frozen now are not registered: one that trains later is said at step()
        self._left_out = [
            (pname, weakref.ref(p)) for pname, p in model.named_parameters() if not p.requires_grad and id(p) not in seen
        ]
        for pname, p in model.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            _check_param(p, pname)
            g = self._grad_buffer(p)
            pid = self._opt.add_param(p.detach().numpy(), g.numpy(), name=pname, method=others, **oc)
            seen[id(p)] = (pname, "param", None)
            other_params.append(p)
            self._regs.append((p, g, p.data_ptr(), pname, pid))
        groups = [{"params": kf_params, "lr": float(cfg.lr), "ngd": "layers"}]
        if other_params:
            groups.append({"params": other_params, "lr": self._others_lr, "ngd": others})
        super().__init__(groups, {"lr": float(cfg.lr)})
        self._init_done = True
        self.last_step_skipped = False  # (step() sets it)
        self._base_lr = [g["lr"] for g in self.param_groups]
        self._lr_scale = 1.0
        self._scale = 1.0

    def add_param_group(self, param_group):
        if getattr(self, "_init_done", False):
            raise NotImplementedError(
                "ngd.torch: parameters cannot be added after construction (libngd registers "
                "them once); create the optimizer with the whole model"
            )
        super().add_param_group(param_group)

    def remove_hooks(self):
        """Detaches the optimizer from the model's layers (done when it is deleted)."""
        for h in getattr(self, "_hooks", ()):
            h.remove()
        self._hooks = []

    def __del__(self):
        try:
            self.remove_hooks()
        except Exception:
            pass

    @staticmethod
    def _grad_buffer(p):
        if p.grad is not None and p.grad.is_contiguous() and p.grad.dtype == torch.float32 and p.grad.shape == p.shape:
            return p.grad
        g = torch.zeros_like(p, memory_format=torch.contiguous_format)
        if p.grad is not None:
            g.copy_(p.grad)
        p.grad = g
        return g

    # ---- statistics ----

    def _forward_hook(self, mod, inputs, output):
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        e = self._by_module.get(id(mod))
        if e is None or not _lib.ngd_optim_layer_wants_stats(self._opt.handle, e.id):
            return
        if not inputs:  # (torch gives forward hooks the positional arguments only)
            raise TypeError(
                "ngd.torch: layer %s was called with its input as a keyword argument; its "
                "statistics need the input: call it as layer(x)" % (e.name or "(the model)")
            )
        x = inputs[0].detach()
        if e.kind == "linear":
            batch = x.shape[0] if x.dim() >= 2 else 1
        else:
            batch = x.shape[0] if x.dim() == 4 else 1
        opt = self

        def grad_hook(g):
            opt._observe(e, x, g.detach(), batch)

        output.register_hook(grad_hook)

    def _observe(self, e, x, g, batch):
        if x.numel() == 0 or g.numel() == 0:
            # an empty batch (an expert that got no tokens): nothing to observe; a layer that
            # sees only such batches this step is skipped by it (libngd refuses 0 rows, and
            # raising here stopped backward half done)
            self._empty.add(e.id)
            return
        self._observed.add(e.id)
        if e.kind == "linear":
            A, a_keep = _matrix(x, e.d_in, "the input of %s" % e.name)
            G, g_keep = _matrix(g, e.d_out, "the output gradient of %s" % e.name)
        else:
            c_in, k, s, p, d, groups = e.geom
            if x.dim() == 3:
                x = x.unsqueeze(0)
            if x.dtype not in (torch.float32, torch.bfloat16) or x.device.type != "cpu":
                raise TypeError("ngd.torch: the input of %s is %s on %s; Conv2d statistics need float32 or bfloat16 CPU inputs" % (e.name, x.dtype, x.device))
            x = x.contiguous()
            n, c, h, w = x.shape
            geom = _lib.ConvGeom(c, h, w, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], groups)
            if g.dim() == 3:
                g = g.unsqueeze(0)
            gm = g.permute(0, 2, 3, 1).reshape(-1, e.d_out)  # (n, o1, o2) rows, channels columns
            # the images themselves: libngd unfolds their rows as it reads them, so the im2col
            # matrix (n*oh*ow x d_in floats) is never formed
            X, a_keep = _matrix(x.reshape(n, c * h * w), c * h * w, "the input of %s" % e.name)
            G, g_keep = _matrix(gm, e.d_out, "the output gradient of %s" % e.name)
            with self._opt._call() as h:  # (close() refuses meanwhile)
                st = _lib.ngd_optim_observe_conv(h, e.id, int(batch), ctypes.byref(geom), X, G)
            if st != _lib.OK:
                self._opt._check(st, "observe")
            del a_keep, g_keep
            return
        with self._opt._call() as h:
            st = _lib.ngd_optim_observe(h, e.id, int(batch), A, G)
        if st != _lib.OK:
            self._opt._check(st, "observe")
        del a_keep, g_keep

    # ---- the step ----

    def _warn_left_out(self):
        """A parameter frozen when the optimizer was created and unfrozen since (it gets
        gradients): not trained, said once (it was silent)."""
        keep = []
        for name, ref in self._left_out:
            p = ref()
            if p is None:
                continue
            if p.requires_grad and p.grad is not None:
                warnings.warn(
                    "ngd.torch: parameter %s was frozen when the optimizer was created, so it is "
                    "not trained now that it has a gradient: a parameter to unfreeze later must "
                    "be trainable when the optimizer is created (freeze it after: it is then "
                    "skipped, its state kept); an optimizer created now has another set of "
                    "parameters and cannot load this one's state_dict" % name,
                    stacklevel=3,
                )
                continue
            keep.append((name, ref))
        self._left_out = keep

    def _sync(self):
        """The gradients into libngd's buffers, and the frozen parameters (grad None, as
        torch.optim skips them, or requires_grad False) left out of the coming step: an entry
        all of whose parameters are frozen is skipped (self._skips, for ngd_optim_skip: its
        state stays too); a frozen weight or bias of a layer whose other one trains takes a
        zero gradient and gets its value back after the step (self._restore)."""
        frozen = [p.grad is None or not p.requires_grad for p, *_ in self._regs]
        live = {r[4] for r, f in zip(self._regs, frozen) if not f}
        restore = []
        for (p, g, ptr, name, eid), fz in zip(self._regs, frozen):
            if p.data_ptr() != ptr:
                raise Error(
                    _lib.ERR_STATE,
                    "ngd.torch: the memory of parameter %s was replaced after the optimizer was "
                    "created (p.data = ..., model.to(...), a resize); libngd updates the memory it "
                    "was given: create the optimizer after such changes" % name,
                )
            if fz and eid not in live:
                continue  # (skipped below: its gradient is not read)
            if fz:
                restore.append((p, p.detach().clone()))
                g.zero_()
                if p.grad is not None and p.grad is not g:
                    p.grad = g
                continue
            pg = p.grad
            if pg is g:
                continue
            if pg.data_ptr() != g.data_ptr():
                if pg.shape != g.shape:
                    raise Error(_lib.ERR_SHAPE, "ngd.torch: %s.grad has shape %s, the parameter %s" % (name, tuple(pg.shape), tuple(g.shape)))
                g.copy_(pg)
            p.grad = g
        self._skips = sorted(({r[4] for r in self._regs} - live) | (self._empty - self._observed))
        self._restore = restore
        s = self._common_scale([g["lr"] for g in self.param_groups])
        if s is not None and s != self._lr_scale:
            self._opt.set_lr_scale(s)
            self._lr_scale = s

    def _common_scale(self, lrs, loading=False):
        """lr schedules: libngd's one lr scale, the ratio of each group's lr to the lr it was
        created with (None: no group has one; a group created with lr 0 has none, libngd's lr
        times any scale stays 0); ValueError where the groups' ratios differ."""
        scales = []
        for i, (lr, b) in enumerate(zip(lrs, self._base_lr)):
            if b > 0:
                scales.append(lr / b)
            elif lr != 0:
                raise ValueError(
                    "ngd.torch: param group %d was created with lr 0 and %s lr %g: libngd "
                    "scales the lr it was created with, so it would not move; create the "
                    "optimizer with the lr to reach (a warm-up may set the groups' lr to 0 "
                    "first)" % (i, "the state dict gives it" if loading else "now has", lr)
                )
        for x in scales[1:]:
            if abs(x - scales[0]) > 1e-6 * max(1.0, abs(scales[0])):
                if loading:
                    raise ValueError(
                        "ngd.torch: load_state_dict: the saved learning rates (%s) are not this "
                        "optimizer's (%s) times one factor, and libngd has one lr scale for all "
                        "parameters: create the optimizer with the saved run's lr (and "
                        "others_config), then load" % (", ".join("%g" % v for v in lrs), ", ".join("%g" % v for v in self._base_lr))
                    )
                raise ValueError(
                    "ngd.torch: the param groups' learning rates changed by different factors "
                    "(%s); libngd has one lr scale for all parameters: a scheduler must scale "
                    "every group alike (CosineAnnealingLR with eta_min=0, one lr_lambda for all "
                    "groups), or others='sgd' gives the other parameters the layers' lr"
                    % ", ".join("%g" % v for v in scales)
                )
        return scales[0] if scales else None

    def set_grad_scale(self, scale):
        """The loss scale s of the backward passes from now on (mixed precision): libngd
        divides the gradients and statistics by it. It stays until set again, as libngd's
        ngd_optim_set_grad_scale (1 until first set); step(grad_scaler=) sets it each step
        from the GradScaler."""
        self._opt.set_grad_scale(scale)
        self._scale = float(scale)

    def set_micro_batches(self, m):
        """Gradient accumulation over m backward passes a step, one per equal micro-batch
        whose loss is its mean divided by m (or its sum for loss_average "sum"): libngd
        scales their statistics as the whole batch's, so every method takes the whole
        batch's step (ngd.h, ngd_optim_set_micro_batches). Stays until set again; not in
        state_dict()."""
        self._opt.set_micro_batches(m)

    @torch.no_grad()
    def step(self, closure=None, grad_scaler=None):
        """One libngd step; returns the closure's loss if one is given. With a GradScaler
        (grad_scaler=, passed by GradScaler.step) its scale is handed to libngd and a
        skipped (non-finite) step is reported to it as found_inf."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._sync()
        if self._left_out:
            self._warn_left_out()
        if grad_scaler is not None and getattr(grad_scaler, "is_enabled", lambda: True)():
            s = grad_scaler.get_scale() if hasattr(grad_scaler, "get_scale") else grad_scaler.scale
            s = float(s)
            if s != self._scale:
                self.set_grad_scale(s)
        for eid in self._skips:
            self._opt.skip(eid)
        self._empty, self._observed = set(), set()
        with self._opt._call() as h:
            st = _lib.ngd_optim_step(h)
        with torch.no_grad():  # frozen parameters of layers that trained: as they were
            for p, v in getattr(self, "_restore", ()):
                p.copy_(v)
        self._restore = []
        skipped = st == _lib.SKIPPED
        if st in (_lib.OK, _lib.SKIPPED):
            # the step is taken (or skipped) even when a callback raised during it: said
            # before that exception goes up, so a GradScaler still learns of a skip
            self.last_step_skipped = skipped
            self._report_found_inf(grad_scaler, skipped)
        self._opt._reraise()
        if st == _lib.ERR_STATE:
            msg = _lib.ngd_optim_errmsg(self._opt.handle).decode(errors="replace")
            raise Error(st, msg + " [ngd.torch: the layer's statistics come from its forward hook "
                        "and its output's gradient; was the module called (not only its weight used) "
                        "in this step's forward pass, with autograd recording, and backward run? "
                        "Layers used otherwise can be left to the others rule with exclude=[name]]")
        if not skipped:
            self._opt._check(st, "step")
        return loss

    def _report_found_inf(self, grad_scaler, skipped):
        if grad_scaler is not None and hasattr(grad_scaler, "_per_optimizer_states"):
            try:
                dev = grad_scaler._scale.device
                grad_scaler._per_optimizer_states[id(self)]["found_inf_per_device"] = {
                    dev: torch.full((1,), 1.0 if skipped else 0.0, dtype=torch.float32, device=dev)
                }
            except Exception:
                pass

    def zero_grad(self, set_to_none=False):
        """Zeroes the registered gradient buffers in place (set_to_none is ignored: libngd
        reads these buffers)."""
        for p, g, *_ in self._regs:
            g.zero_()
            if p.grad is not g:
                p.grad = g

    # ---- introspection, checkpoints ----

    @property
    def ngd(self):
        """The underlying ngd.Optimizer (health(), factor(), save(), ...)."""
        return self._opt

    def health(self):
        """libngd's health of every layer and parameter (ngd.Optimizer.health: a list of
        dicts with 'name', 'updates', 'skips', 'decomp_failures', 'grad_norm',
        'update_norm', ...; ngd.h, ngd_layer_health)."""
        return self._opt.health()

    @property
    def layer_ids(self):
        """{module name: libngd layer id}"""
        return {e.name: e.id for e in self._entries}

    def state_dict(self):
        sd = super().state_dict()
        sd["ngd"] = self._opt.save_bytes()
        sd["ngd_method"] = self.method
        sd["ngd_lr_scale"] = self._lr_scale
        return sd

    def load_state_dict(self, state_dict):
        if "ngd" not in state_dict:
            raise ValueError("ngd.torch: the state dict has no libngd state ('ngd' key): not from ngd.torch")
        if state_dict.get("ngd_method", self.method) != self.method:
            raise ValueError("ngd.torch: the state dict is from %s, this optimizer is %s" % (state_dict.get("ngd_method"), self.method))
        data = state_dict["ngd"]
        sd = {k: v for k, v in state_dict.items() if not k.startswith("ngd")}
        groups = sd.get("param_groups")
        if isinstance(groups, list) and len(groups) == len(self.param_groups):
            # (a saved lr of another base failed at the next step, naming no cause)
            self._common_scale([g.get("lr", 0.0) for g in groups], loading=True)
        base = list(self._base_lr)
        self._opt.load_bytes(data)  # validated first: nothing changes on a bad state
        super().load_state_dict(sd)
        self._base_lr = base
        self._lr_scale = float(state_dict.get("ngd_lr_scale", 1.0))

    def __repr__(self):
        return "ngd.torch.%s(%d layers, %d parameters)" % (type(self).__name__, len(self._entries), len(self._regs))

    def __copy__(self):  # (a copy was half-built: AttributeError on its repr, on step)
        raise TypeError(
            "ngd.torch optimizers cannot be copied: libngd's state is bound to the model's "
            "parameter memory; state_dict() into a new optimizer over the copied model"
        )

    def __deepcopy__(self, memo):
        self.__copy__()

    def __reduce_ex__(self, protocol):  # (torch.optim's __getstate__ pickled a broken shell)
        raise TypeError(
            "ngd.torch optimizers cannot be pickled: save state_dict() (torch.save of it works) "
            "and load it into an optimizer created over the model"
        )


# ---- one class per method ----


def _cls(name, method, doc, **preset):
    def __init__(self, model, **kw):
        for k, v in preset.items():
            if k in kw and kw[k] != v:
                raise ValueError("ngd.torch.%s: %s is fixed to %r for this method" % (name, k, v))
            kw[k] = v
        NGDOptimizer.__init__(self, model, method=method, **kw)

    return type(name, (NGDOptimizer,), {"__init__": __init__, "__doc__": doc, "METHOD": method})


SINGD = _cls("SINGD", "singd", "SINGD (structured inverse-free natural gradient): structures=(K, C), T, lr_cov, alpha1, damping, kfac_like, ...")
INGD = _cls("INGD", "ingd", "INGD: SINGD with dense factors.", structures=("dense", "dense"))
IKFAC = _cls("IKFAC", "ikfac", "IKFAC: SINGD's K-FAC-like update (kfac_like, alpha1 = 0); any structures, per layer too.")
KFAC = _cls("KFAC", "kfac", "K-FAC with eigendecompositions (rho, T_u, T_i, damping_rel, clip, ...).")
RSKFAC = _cls("RSKFAC", "rskfac", "Randomized-SVD K-FAC (rank, oversample, power_iters, ...).")
SREKFAC = _cls("SREKFAC", "srekfac", "Symmetric randomized EVD K-FAC.")
BKFAC = _cls("BKFAC", "bkfac", "Brand-updated K-FAC (brand_rank, brand_mult, ...).")
BRKFAC = _cls("BRKFAC", "brkfac", "B-KFAC with periodic RSVD refresh (refresh_mult).")
BRCKFAC = _cls("BRCKFAC", "brckfac", "B-R-KFAC with Rayleigh-Ritz correction (corr_mult, corr_frac).")
SGD = _cls("SGD", "sgd", "libngd's SGD rule on every parameter (lr, momentum, nesterov, weight_decay).")
AdamW = _cls("AdamW", "adamw", "libngd's AdamW rule on every parameter (lr, beta1, beta2, eps, weight_decay).")
