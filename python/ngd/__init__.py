"""ngd — libngd (Kronecker-factored natural-gradient optimizers) from Python.

Low level, numpy::

    import numpy as np, ngd
    opt = ngd.Optimizer("singd", lr=1e-3, T=10, structures=("diagonal", "dense"))
    W = np.zeros((512, 784), np.float32); dW = np.zeros_like(W)
    b = np.zeros(512, np.float32); db = np.zeros_like(b)
    fc = opt.add_layer(W, dW, b, db, name="fc1")
    # each step: fill dW, db (your backward), then
    if opt.wants_stats():
        opt.observe(fc, a, g)        # a: (rows, 784) inputs, g: (rows, 512) output gradients
    opt.step()                       # W and b updated in place

Lifetime rule: libngd keeps raw pointers to the arrays given to add_layer / add_param and
reads / writes them on every step, so the Optimizer keeps a reference to each of them until
it is closed: deleting your own name for an array cannot free it. Do not resize them or
replace their memory (e.g. ``arr.resize``); change their values in place only.

PyTorch: ``import ngd.torch`` (see ngd/torch.py).

Errors of libngd are raised as ``ngd.Error`` (``.status`` is the ngd_status code,
``.status_name`` its description, the message is libngd's).
"""

import contextlib
import ctypes
import functools
import os
import threading

import numpy as np

from . import _lib

__all__ = ["Error", "Optimizer", "make_config", "merge_options", "version", "unfold", "conv_out_size", "METHODS"]

METHODS = tuple(_lib.METHODS)
STRUCTURES = (
    "dense",
    "diagonal",
    "blockdiag",
    "hierarchical",
    "triltoeplitz",
    "triutoeplitz",
    "tril_topleft_diag",
    "tril_bottomright_diag",
    "triu_topleft_diag",
    "triu_bottomright_diag",
)


def version():
    """libngd's version string, e.g. '0.1.0'."""
    return _lib.ngd_version().decode()


class Error(RuntimeError):
    """A libngd call failed; .status is the ngd_status code (ngd._lib.ERR_*)."""

    def __init__(self, status, message):
        self.status = int(status)
        self.status_name = _lib.ngd_status_str(self.status).decode()
        super().__init__("%s (%s)" % (message, self.status_name) if message else self.status_name)


# ====== configuration ======

_ENUMS = {
    "loss_average": _lib.LOSS_AVERAGE,
    "kfac_approx": _lib.KFAC_APPROX,
    "factor_compute": _lib.DTYPES,
}
_KFAC_ENUMS = {
    "damping_kind": _lib.KFAC_DAMPING,
    "clip": _lib.CLIP,
    "tail": _lib.TAIL,
    "identity_init": _lib.IDENTITY_INIT,
    "brand_truncate": _lib.BRAND_TRUNCATE,
    "ea_dtype": _lib.DTYPES,
    "factor_arith": _lib.DTYPES,
}
_TOP = {f for f, _ in _lib.Config._fields_} - {"method", "kfac", "lr_cov_user", "log_user"}
_KFAC = {f for f, _ in _lib.KfacOptions._fields_}


# The methods that use an option (as `ngd train` refuses an option the method would ignore,
# src/cli/trainrules.c); an option not listed is used by every method. One given to a method
# that would ignore it is a TypeError: KFAC(damping=...) trained as if it were not there.
_SINGDS = {"singd", "ingd", "ikfac"}
_KFACS = {"kfac", "rskfac", "srekfac", "bkfac", "brkfac", "brckfac"}
_LOWRANK = _KFACS - {"kfac"}
_BRAND = {"bkfac", "brkfac", "brckfac"}
_APPLIES = {
    "momentum": {"sgd"} | _SINGDS | _KFACS,
    "nesterov": {"sgd"} | _SINGDS | _KFACS,
    "beta1": {"adamw"},
    "beta2": {"adamw"},
    "eps": {"adamw"},
    "damping": _SINGDS,
    "kfac_approx": _SINGDS | _KFACS,
    "alpha1": {"singd", "ingd"},  # (IKFAC's is 0: kfac_like forces it, as `ngd train` refuses it)
    "loss_average": _SINGDS | _KFACS,  # (SGD's and AdamW's steps read no statistics)
    "init_grad_scale": _SINGDS,  # (SINGD's s₋₁; the K-FAC family divides by the scale set)
    "T": _SINGDS,
    "lr_cov": _SINGDS,
    "lr_cov_fn": _SINGDS,
    "normalize_lr_cov": _SINGDS,
    "kfac_like": _SINGDS,
    "structure_K": _SINGDS,
    "structure_C": _SINGDS,
    "factor_compute": _SINGDS,
    "official_blockdiag_quirk": _SINGDS,
    # the K-FAC family's (kfac.*), except factored_apply, which SINGD's dense factors take too
    "factored_apply": _SINGDS | _KFACS,
    "damping_kind": {"kfac"},
    "rank": _LOWRANK,
    "oversample": _LOWRANK,
    "power_iters": _LOWRANK,
    "tail": _LOWRANK,
    "seed": _LOWRANK,
    "brand_rank": _BRAND,
    "brand_mult": _BRAND,
    "brand_truncate": _BRAND,
    "reorth_every": _BRAND,
    "refresh_mult": {"brkfac", "brckfac"},
    "corr_mult": {"brckfac"},
    "corr_frac": {"brckfac"},
}
_HINTS = {
    ("damping", "kfac"): "the K-FAC family's damping is damping_rel, relative to the largest eigenvalue (0.1)",
    ("momentum", "adamw"): "AdamW's first moment is beta1",
}


def _check_applies(method, opts):
    """TypeError for an option `method` would ignore (opts as _normal_options gives them)."""
    name = {v: k for k, v in _lib.METHODS.items()}[method]
    items = [(k, False) for k in opts if k != "kfac"] + [(k, True) for k in opts.get("kfac", {})]
    for k, in_kfac in items:
        users = _APPLIES.get(k, _KFACS if in_kfac else None)
        if users is None or name in users:
            continue
        hint = _HINTS.get((k, "kfac" if name in _KFACS else name), "")
        raise TypeError(
            "option %r does not apply to %s, which would ignore it (it is used by: %s)%s"
            % (k, name, ", ".join(sorted(users)), "; " + hint if hint else "")
        )


def _int_in(value, lo, hi, what):
    """value as an int in [lo, hi] (a C field's range), or ValueError / TypeError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError("%s must be an integer, not %r" % (what, value))
    v = int(value)
    if not lo <= v <= hi:
        raise ValueError("%s = %d is out of range [%d, %d]" % (what, v, lo, hi))
    return v


# the ranges of the config's integer fields (ctypes would wrap a negative value silently)
_INT_RANGE = {
    ctypes.c_size_t: (0, 2**64 - 1),
    ctypes.c_uint64: (0, 2**64 - 1),
    ctypes.c_uint32: (0, 2**32 - 1),
    ctypes.c_int: (-(2**31), 2**31 - 1),
}


def _set_field(struct, name, value, what):
    ctype = dict(struct._fields_)[name]
    if ctype in _INT_RANGE:
        value = _int_in(value, *_INT_RANGE[ctype], what)
    elif ctype is ctypes.c_bool:
        # (ctypes takes any object's truth: nesterov="false" turned Nesterov on)
        if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, (int, np.integer)) and int(value) in (0, 1)
        ):
            value = bool(value)
        else:
            raise TypeError("%s: %s must be True or False, not %r" % (what, name, value))
    try:
        setattr(struct, name, value)
    except TypeError:  # (ctypes said "must be real number, not str", naming no option)
        raise TypeError("%s: %s must be a number, not %r" % (what, name, value)) from None


def _enum(table, name, value):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        # (a C enum: ctypes would keep the value mod 2^32, so that 2^32 + 1 chose 1)
        if int(value) not in set(table.values()):
            raise ValueError(
                "%s: %d is not one of its values (%s)"
                % (name, int(value), ", ".join("%r = %d" % (k, v) for k, v in table.items() if k is not None))
            )
        return int(value)
    key = value.lower() if isinstance(value, str) else value
    if not isinstance(key, str) and not (key is None and None in table):
        raise TypeError(
            "%s: %r is not one of its values (%s)" % (name, value, ", ".join(repr(k) for k in table if k is not None))
        )
    if key not in table:
        raise ValueError(
            "%s: unknown value %r (one of %s)" % (name, value, ", ".join(repr(k) for k in table if k is not None))
        )
    return table[key]


def _factor(value, which):
    """A factor structure: a name ('dense', 'block30diagonal', 'hierarchical15_15', ...), an
    optional ':bf16' suffix for the storage dtype, or a dict {kind, block, k1, k2, dtype}."""
    spec = _lib.FactorSpec()
    if isinstance(value, str):
        name, _, dtype = value.partition(":")
        if _lib.ngd_structure_parse(name.encode(), ctypes.byref(spec)) != _lib.OK:
            raise ValueError(
                "structure_%s: unknown structure %r (one of %s, or block<B>diagonal, "
                "hierarchical<K1>_<K2>)" % (which, value, ", ".join(STRUCTURES))
            )
        spec.dtype = _enum(_lib.DTYPES, "structure_%s dtype" % which, dtype) if dtype else _lib.F32
        return spec
    if isinstance(value, dict):
        d = dict(value)
        kind = d.pop("kind", "dense")
        base = _factor(kind if isinstance(kind, str) else "dense", which)
        if not isinstance(kind, str):
            base.kind = _int_in(kind, 0, len(STRUCTURES) - 1, "structure_%s.kind" % which)
        for k, v in d.items():
            if k == "dtype":
                base.dtype = _enum(_lib.DTYPES, "structure_%s.dtype" % which, v)
            elif k in ("block", "k1", "k2"):
                setattr(base, k, _int_in(v, 0, 2**64 - 1, "structure_%s.%s" % (which, k)))
            else:
                raise ValueError("structure_%s: unknown field %r (kind, block, k1, k2, dtype)" % (which, k))
        return base
    raise TypeError("structure_%s must be a name or a dict, not %r" % (which, type(value).__name__))


class _Callback:
    """A Python callable called from libngd: an exception is kept (libngd cannot see it)
    and raised by the Optimizer call that led to it."""

    def __init__(self, fn, fallback, call):
        self.fn, self.fallback, self.call, self.error, self.c = fn, fallback, call, None, None

    def __call__(self, *args):
        try:
            return self.call(self.fn, *args)
        except BaseException as e:  # noqa: B902 (never unwind through C)
            if self.error is None:
                self.error = e
            return self.fallback

    def reraise(self):
        if self.error is not None:
            e, self.error = self.error, None
            raise e


def _method_number(method):
    if isinstance(method, str):
        return _enum(_lib.METHODS, "method", method)
    return _int_in(method, 0, len(METHODS) - 1, "method")


def make_config(method="singd", **options):
    """An ngd_config for `method` (a name of ngd.METHODS or its number): libngd's defaults
    (ngd_config_default) with `options` applied, validated by ngd_config_validate.

    Options are the field names of ngd_config in ngd.h: lr, momentum, weight_decay,
    nesterov, beta1, beta2, eps, damping, alpha1, T, lr_cov, lr_cov_fn (a Python callable
    step -> float), normalize_lr_cov, kfac_like, loss_average ('sum', 'batch',
    'batch+sequence'), kfac_approx ('expand', 'reduce'), structure_K, structure_C (names as
    `ngd train --structure` takes them, optionally with ':bf16'), factor_compute ('f32', or
    'bf16': SINGD's dense factor products on bf16 operands), init_grad_scale,
    official_blockdiag_quirk, skip_nonfinite, keep_last_update, log_fn (a callable taking
    the message), and the K-FAC family's options either as kfac={...} or flat (rho, T_u,
    T_i, damping_rel, damping_kind ('exact', 'pi'), clip ('rms', 'kl', 'none'),
    clip_kappa, wd_start, identity_init ('in_damping', 'in_factor'), eig_zero_tol, rank,
    oversample, power_iters, tail ('zero', 'min_kept'), brand_rank, brand_mult,
    refresh_mult, corr_mult, corr_frac, brand_truncate ('after', 'before_next'),
    reorth_every, factored_apply, seed, ea_dtype ('f32', 'bf16': factor averages rounded to
    bf16), factor_arith ('f32', 'bf16': emulated bf16 arithmetic of the factor path, every
    operation's result rounded)). structures=(K, C) (or one name for both) is a
    shorthand for structure_K, structure_C.

    Returns (config, keepalive): keepalive holds the ctypes callbacks that must outlive the
    optimizer made from the config. Raises ValueError / TypeError for unknown options or
    values, ngd.Error (ERR_ARG, with libngd's message) when validation fails.
    """
    m = _method_number(method)
    cfg = _lib.ngd_config_default(m).cfg
    keep = []
    opts = _normal_options(options)
    for k in opts:  # (unknown names first: their message lists every option)
        if k != "kfac" and k not in _TOP:
            raise TypeError(
                "unknown libngd option %r (options: %s)" % (k, ", ".join(sorted(_TOP | _KFAC | {"structures"})))
            )
    for k in opts["kfac"]:
        if k not in _KFAC:
            raise TypeError("unknown K-FAC option %r (options: %s)" % (k, ", ".join(sorted(_KFAC))))
    _check_applies(m, opts)
    kfac = opts.pop("kfac", {})
    for k, v in opts.items():
        if k in _ENUMS:
            setattr(cfg, k, _enum(_ENUMS[k], k, v))
        elif k in ("structure_K", "structure_C"):
            setattr(cfg, k, _factor(v, k[-1]))
        elif k == "lr_cov_fn":
            if v is None:
                cfg.lr_cov_fn = _lib.LR_COV_FN()
            elif not callable(v):
                raise TypeError("lr_cov_fn must be callable (step -> lr_cov) or None, not %r" % (v,))
            else:
                # (an exception returns NaN, which fails the step before it changes anything;
                #  step() then raises the exception)
                cb = _Callback(v, float("nan"), lambda f, step, user: float(f(int(step))))
                keep.append(cb)
                cb.c = _lib.LR_COV_FN(cb)
                cfg.lr_cov_fn = cb.c
        elif k == "log_fn":
            if v is None:
                cfg.log_fn = _lib.LOG_FN()
            elif not callable(v):
                raise TypeError("log_fn must be callable (message -> None) or None, not %r" % (v,))
            else:
                cb = _Callback(v, None, lambda f, user, msg: f(msg.decode(errors="replace")))
                keep.append(cb)
                cb.c = _lib.LOG_FN(cb)
                cfg.log_fn = cb.c
        else:
            _set_field(cfg, k, v, k)
    for k, v in kfac.items():
        if k in _KFAC_ENUMS:
            setattr(cfg.kfac, k, _enum(_KFAC_ENUMS[k], "kfac." + k, v))
        else:
            _set_field(cfg.kfac, k, v, "kfac." + k)
    if m == _lib.METHODS["ingd"] and (cfg.structure_K.kind != 0 or cfg.structure_C.kind != 0):
        raise TypeError("ingd is SINGD with dense factors: other structures are singd's or ikfac's")
    msg = ctypes.create_string_buffer(512)
    st = _lib.ngd_config_validate(ctypes.byref(cfg), msg, len(msg))
    if st != _lib.OK:
        raise Error(st, "invalid config: " + msg.value.decode())
    return cfg, keep


def _normal_options(options):
    """Options with `structures` spelled as structure_K / structure_C and the K-FAC family's
    options gathered in one `kfac` dict (flat names win over the dict's), so that two sets
    of options can be merged key by key."""
    opts = dict(options)
    if "structures" in opts:
        s = opts.pop("structures")
        if isinstance(s, (str, dict)):
            s = (s, s)
        if not isinstance(s, (tuple, list)) or len(s) != 2:
            raise ValueError("structures must be one name or a pair (K, C), got %r" % (s,))
        opts.setdefault("structure_K", s[0])
        opts.setdefault("structure_C", s[1])
    kfac = dict(opts.pop("kfac", None) or {})
    for k in list(opts):
        if k in _KFAC and k not in _TOP:
            kfac[k] = opts.pop(k)
    opts["kfac"] = kfac
    return opts


def merge_options(base, override):
    """The options `base` with those of `override` on top (a per-layer override starts from
    the optimizer's own options): structure_K / structure_C and each K-FAC option separately."""
    b, o = _normal_options(base), _normal_options(override)
    kfac = dict(b.pop("kfac"))
    kfac.update(o.pop("kfac"))
    b.update(o)
    b["kfac"] = kfac
    return b


def config_dict(cfg):
    """A config as a plain dict (enums as numbers), for inspection."""

    def conv(s):
        out = {}
        for f, _ in s._fields_:
            v = getattr(s, f)
            out[f] = conv(v) if isinstance(v, ctypes.Structure) else v
        return out

    d = conv(cfg)
    for k in ("lr_cov_fn", "log_fn", "lr_cov_user", "log_user"):
        d.pop(k, None)
    return d


# ====== arrays ======


def _check_array(x, what, writeable=False, ndim=None):
    if not isinstance(x, np.ndarray):
        raise TypeError("%s must be a numpy.ndarray of float32, not %s" % (what, type(x).__name__))
    if x.dtype != np.float32:
        raise TypeError("%s must be float32 (libngd's parameter dtype), not %s" % (what, x.dtype))
    if writeable and not x.flags.writeable:  # (first: a broadcast view is neither)
        raise ValueError("%s must be writeable (libngd updates it in place)" % what)
    if not x.flags.c_contiguous:
        raise ValueError("%s must be C-contiguous (libngd reads and writes it in place; pass np.ascontiguousarray(...))" % what)
    if ndim is not None and x.ndim not in ndim:
        raise ValueError("%s must have %s dimensions, has shape %s" % (what, " or ".join(map(str, ndim)), x.shape))
    if x.size == 0:
        raise ValueError("%s is empty" % what)
    return x


def _name(name, default):
    if name is None:
        name = default
    if not isinstance(name, str):
        raise TypeError("name must be a str, not %s" % type(name).__name__)
    if "\0" in name:  # (libngd would keep the part before it)
        raise ValueError("name %r contains a NUL character" % name)
    return name.encode()


def _path(path, what):
    p = os.fsencode(path)
    if b"\0" in p:  # (C would stop at it: another file, as open() refuses)
        raise ValueError("%s: the path %r contains a NUL byte" % (what, path))
    return p


def _ptr(x):
    return x.ctypes.data


def _matrix_np(x, cols, what):
    """An ngd_matrix view of a 2-D (or more, flattened to cols columns) float32 / bfloat16
    (as uint16) array; rows may be strided, each row must be contiguous."""
    if not isinstance(x, np.ndarray):
        raise TypeError("%s must be a numpy.ndarray, not %s" % (what, type(x).__name__))
    if x.dtype == np.float32:
        dt = _lib.F32
    elif x.dtype == np.uint16:
        dt = _lib.BF16  # bfloat16 bits
    else:
        raise TypeError("%s must be float32 (or uint16 holding bfloat16), not %s" % (what, x.dtype))
    if (
        x.ndim == 2
        and x.strides[1] == x.itemsize
        and x.strides[0] % x.itemsize == 0
        and (x.shape[0] <= 1 or x.strides[0] >= x.shape[1] * x.itemsize)
    ):  # rows apart, each contiguous (a broadcast or overlapping view is not: libngd reads
        # rows x ld values)
        rows, c = x.shape
        ld = x.strides[0] // x.itemsize if rows > 1 else c
    elif x.flags.c_contiguous and x.ndim >= 1:
        c = x.shape[-1]
        rows = x.size // c if c else 0
        ld = c
    else:
        raise ValueError(
            "%s: each row must be contiguous and the rows must not overlap (a broadcast or "
            "strided view; pass np.ascontiguousarray(...))" % what
        )
    if c != cols:
        raise ValueError("%s has %d columns, the layer needs %d" % (what, c, cols))
    if rows == 0:
        raise ValueError("%s has no rows" % what)
    return _lib.Matrix(_ptr(x), rows, c, max(ld, c), dt)


# ====== the optimizer ======


def _guarded(fn):
    """An Optimizer method that calls libngd: close() refuses while it runs."""

    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        with self._call():
            return fn(self, *args, **kwargs)

    return call


class Optimizer:
    """One libngd optimizer (ngd_optim). `method`: 'singd', 'ingd', 'ikfac', 'kfac',
    'rskfac', 'srekfac', 'bkfac', 'brkfac', 'brckfac', 'sgd' or 'adamw'; `config`: every
    libngd option (see make_config).

    Arrays given to add_layer / add_param are borrowed zero-copy: the optimizer keeps a
    reference to each until close() (or garbage collection), so they cannot be freed while
    libngd holds their pointers. Change their values in place only.
    """

    def __init__(self, method="singd", **config):
        self._keep = []  # arrays and callbacks whose memory libngd points into
        self._h = None
        # calls of this optimizer in progress (_call): close() waits for none, it refuses
        self._lock = threading.Lock()
        self._calls = 0
        cfg, cbs = make_config(method, **config)
        self._keep.extend(cbs)
        self._options = dict(config)
        self.config = cfg
        self.method = method if isinstance(method, str) else _lib.ngd_method_name(method).decode()
        h = ctypes.c_void_p()
        st = _lib.ngd_optim_create(ctypes.byref(cfg), ctypes.byref(h))
        if st != _lib.OK:
            raise Error(st, "ngd_optim_create failed")
        self._h = h
        self._layers = {}  # id -> (d_out, d_in, has_bias)
        self._names = []
        try:  # a callback (log_fn) that raised while libngd created the optimizer
            self._reraise()
        except BaseException:
            self.close()
            raise

    # --- lifecycle ---

    def close(self):
        """Frees libngd's state; the arrays are released afterwards. Idempotent. Raises
        ngd.Error while a call of this optimizer is running: from one of its own callbacks
        (lr_cov_fn, log_fn) or another thread (libngd would go on in freed memory)."""
        with self._lock:
            if self._calls:
                raise Error(
                    _lib.ERR_STATE,
                    "close() while a call of this optimizer is running (in one of its callbacks, "
                    "or in another thread): close it after that call has returned",
                )
            if self._h is not None:
                _lib.ngd_optim_free(self._h)
                self._h = None
            self._keep = []

    @contextlib.contextmanager
    def _call(self):
        """The handle, for a call into libngd that close() must not cut short."""
        with self._lock:
            h = self.handle
            self._calls += 1
        try:
            yield h
        finally:
            with self._lock:
                self._calls -= 1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __copy__(self):  # (a copy shared libngd's handle: both freed it)
        raise TypeError(
            "ngd.Optimizer cannot be copied: it owns libngd's state for the arrays it was given; "
            "save() and load() it into a new optimizer over other arrays"
        )

    def __deepcopy__(self, memo):
        self.__copy__()

    def __reduce__(self):
        raise TypeError("ngd.Optimizer cannot be pickled: use save() / save_bytes()")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def handle(self):
        if self._h is None:
            raise Error(_lib.ERR_STATE, "the optimizer is closed")
        return self._h

    def _check(self, st, what=""):
        self._reraise()  # a callback's exception first: it led to what follows
        if st != _lib.OK:
            msg = _lib.ngd_optim_errmsg(self._h).decode(errors="replace") if self._h else ""
            raise Error(st, msg or what)
        return st

    def _override(self, override, method=None):
        if not override and method is None:
            return None
        # an override is a whole config: under the optimizer's method it starts from the
        # optimizer's own options; another rule (add_param's method) from that rule's defaults
        o = merge_options(self._options, override or {}) if method is None else dict(override or {})
        m = method or self.method
        cfg, cbs = make_config(m, **o)
        self._keep.append(cfg)
        self._keep.extend(cbs)
        return ctypes.pointer(cfg)

    # --- registration ---

    @_guarded
    def add_layer(self, weight, weight_grad, bias=None, bias_grad=None, name=None, **override):
        """Registers a Kronecker-factored layer: weight (d_out, d_in) float32 C-contiguous
        (a Conv2d weight [C_out, C_in/G, k1, k2] is taken as d_out x the rest), its gradient
        of the same shape, optional bias (d_out,) and bias gradient. Keyword options are a
        per-layer override of the optimizer's options (same method; those not given keep the
        optimizer's values). Returns the layer id."""
        h = self.handle
        _check_array(weight, "weight", writeable=True)
        if weight.ndim < 2:
            raise ValueError("weight must have at least 2 dimensions (d_out, d_in), has shape %s" % (weight.shape,))
        _check_array(weight_grad, "weight_grad")
        if weight_grad.shape != weight.shape:
            raise ValueError("weight_grad has shape %s, weight %s" % (weight_grad.shape, weight.shape))
        d_out = weight.shape[0]
        d_in = weight.size // d_out
        if (bias is None) != (bias_grad is None):
            raise ValueError("give both bias and bias_grad, or neither")
        if bias is not None:
            _check_array(bias, "bias", writeable=True)
            _check_array(bias_grad, "bias_grad")
            if bias.size != d_out or bias_grad.size != d_out:
                raise ValueError("bias and bias_grad must have d_out = %d elements" % d_out)
        if "method" in override:  # (a layer takes the optimizer's method: make_config got it twice)
            m = override.pop("method")
            if _method_number(m) != _method_number(self.method):
                raise ValueError(
                    "add_layer: a layer takes the optimizer's method (%s), not %r: its options "
                    "may be overridden, its method not" % (self.method, m)
                )
        nm = _name(name, "layer%d" % len(self._names))
        L = _lib.Layer(
            nm,
            _ptr(weight),
            _ptr(weight_grad),
            d_out,
            d_in,
            _ptr(bias) if bias is not None else None,
            _ptr(bias_grad) if bias_grad is not None else None,
            self._override(override),
        )
        out = ctypes.c_int()
        self._check(_lib.ngd_optim_add_layer(h, ctypes.byref(L), ctypes.byref(out)), "add_layer")
        self._keep.extend([weight, weight_grad, bias, bias_grad])
        self._layers[out.value] = (d_out, d_in, bias is not None)
        self._names.append(nm.decode())
        return out.value

    @_guarded
    def add_param(self, param, grad, name=None, method=None, **override):
        """Registers a plain parameter (any shape, float32 C-contiguous) and its gradient.
        It takes the AdamW rule under 'adamw', the SGD rule otherwise; method='adamw' or
        'sgd' (with keyword hyper-parameters, from that rule's defaults) chooses the rule and
        its settings; keyword options alone override the optimizer's. Returns the id (ids are
        shared with layers)."""
        h = self.handle
        _check_array(param, "param", writeable=True)
        _check_array(grad, "grad")
        if grad.size != param.size:
            raise ValueError("grad has %d elements, param %d" % (grad.size, param.size))
        nm = _name(name, "param%d" % len(self._names))
        out = ctypes.c_int()
        ov = self._override(override, method)
        self._check(
            _lib.ngd_optim_add_param(h, nm, _ptr(param), _ptr(grad), param.size, ov, ctypes.byref(out)),
            "add_param",
        )
        self._keep.extend([param, grad])
        self._names.append(nm.decode())
        return out.value

    # --- per step ---

    @_guarded
    def wants_stats(self, layer=None):
        """True when the coming step updates a preconditioner (of `layer`, or of any)."""
        if layer is None:
            return bool(_lib.ngd_optim_wants_stats(self.handle))
        return bool(_lib.ngd_optim_layer_wants_stats(self.handle, self._id(layer, "wants_stats")))

    @_guarded
    def observe(self, layer, a, g, batch=None):
        """Hands layer `layer` its inputs a (rows x d_in) and output gradients g (rows x
        d_out) for the coming step; the arrays are read during the call only. 3-D or larger
        arrays are flattened to rows (e.g. (batch, positions, d)); `batch` defaults to the
        first dimension of `a` (1 for a 1-D `a`; give it for weight-shared rows passed as
        2-D)."""
        h = self.handle
        layer = self._id(layer, "observe")
        if layer not in self._layers:
            raise Error(_lib.ERR_LAYER, "observe: %d is not a layer id" % layer)
        d_out, d_in, _ = self._layers[layer]
        A = _matrix_np(a, d_in, "a")
        G = _matrix_np(g, d_out, "g")
        if batch is None:
            batch = a.shape[0] if a.ndim >= 2 else 1
        batch = _int_in(batch, 1, 2**64 - 1, "observe: batch")
        self._check(_lib.ngd_optim_observe(h, layer, batch, A, G), "observe")

    @_guarded
    def set_grad_scale(self, scale):
        """The loss scale that multiplied this step's loss (mixed precision)."""
        self._check(_lib.ngd_optim_set_grad_scale(self.handle, float(scale)))

    @_guarded
    def set_micro_batches(self, m):
        """Gradient accumulation: each step's batch comes in m equal micro-batches, each
        observed; the statistics are scaled as the whole batch's, so the step is the whole
        batch's for mean losses divided by m, or sum losses (ngd.h,
        ngd_optim_set_micro_batches). Stays until set again; not saved in checkpoints."""
        m = _int_in(m, 1, 2**32, "set_micro_batches: m")
        self._check(_lib.ngd_optim_set_micro_batches(self.handle, m), "set_micro_batches")

    @property
    @_guarded
    def micro_batches(self):
        """The micro-batches each step's batch comes in (1 unless set)."""
        return int(_lib.ngd_optim_micro_batches(self.handle))

    @_guarded
    def skip(self, id):
        """The coming step leaves entry `id` (a layer or a parameter) as it is: weights,
        state, statistics schedule and update count (a frozen parameter; ngd.h,
        ngd_optim_skip)."""
        self._check(_lib.ngd_optim_skip(self.handle, self._id(id, "skip")), "skip")

    @_guarded
    def set_lr_scale(self, scale):
        """Multiplies every learning rate by `scale` from the next step on."""
        self._check(_lib.ngd_optim_set_lr_scale(self.handle, float(scale)))

    @_guarded
    def step(self):
        """One step; the registered weights are updated in place. Returns True, or False
        when the step was skipped for a non-finite gradient. Raises ngd.Error."""
        st = _lib.ngd_optim_step(self.handle)
        self._reraise()
        if st == _lib.SKIPPED:
            return False
        self._check(st, "step")
        return True

    def _reraise(self):
        for k in self._keep:
            if isinstance(k, _Callback):
                k.reraise()

    @property
    @_guarded
    def steps(self):
        return int(_lib.ngd_optim_steps(self.handle))

    @_guarded
    def __len__(self):
        return int(_lib.ngd_optim_count(self.handle))

    # --- introspection ---

    @_guarded
    def health(self, id=None):
        """Per-layer health (dict), or a list of them for every id when id is None."""
        if id is None:
            return [self.health(i) for i in range(len(self))]
        id = self._id(id, "health")
        buf = (ctypes.c_char * (ctypes.sizeof(_lib.LayerHealth) + 1024))()
        self._check(_lib.ngd_optim_layer_health(self.handle, id, buf), "health")
        hl = _lib.LayerHealth.from_buffer(buf)
        d = {f: getattr(hl, f) for f, _ in _lib.LayerHealth._fields_}
        d["name"] = d["name"].decode() if d["name"] else ""
        d["id"] = int(id)
        return d

    @_guarded
    def state_bytes(self):
        return int(_lib.ngd_optim_state_bytes(self.handle))

    @_guarded
    def workspace_bytes(self):
        return int(_lib.ngd_optim_workspace_bytes(self.handle))

    @_guarded
    def update_time(self):
        """Wall seconds of the last step's preconditioner maintenance (all layers)."""
        return float(_lib.ngd_optim_update_time(self.handle))

    @_guarded
    def factor(self, layer, which="K"):
        """Dense copy of a layer's factor. SINGD: 'K', 'C', 'k' (m_K), 'c' (m_C). The K-FAC
        family: 'K' and 'C' the input and output sides' factors as averaged, 'k' and 'c' their
        kept eigen-representation U D Uᵀ (ngd.h, ngd_optim_factor_dense)."""
        if which not in ("K", "C", "k", "c"):
            raise ValueError("factor: which must be 'K', 'C', 'k' or 'c', not %r" % (which,))
        d_out, d_in, bias = self._layer(layer, "factor")
        d = d_in + bias if which in "Kk" else d_out
        out = np.empty((d, d), np.float32)
        self._check(_lib.ngd_optim_factor_dense(self.handle, int(layer), which.encode(), _ptr(out), d))
        return out

    @_guarded
    def last_update(self, layer):
        """The preconditioned gradient of the last step, d_out x (d_in + bias) (needs
        keep_last_update=True)."""
        d_out, d_in, bias = self._layer(layer, "last_update")
        out = np.empty((d_out, d_in + bias), np.float32)
        self._check(_lib.ngd_optim_last_update(self.handle, int(layer), _ptr(out), out.size))
        return out

    def _layer(self, layer, what):
        if self._id(layer, what) not in self._layers:
            raise Error(_lib.ERR_LAYER, "%s: %r is not a layer id" % (what, layer))
        return self._layers[int(layer)]

    def _id(self, id, what):
        """A layer or parameter id as an int for a C int argument: an integer (numpy's too);
        a bool, float or other type is a TypeError, and one outside the C int's range
        ngd.Error(ERR_LAYER) (ctypes would keep 2^32 as 0, and int() 0.7 as 0). libngd
        checks the rest."""
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
            raise TypeError("%s: an id is an integer, not %r" % (what, id))
        if not -(2**31) <= int(id) < 2**31:
            raise Error(_lib.ERR_LAYER, "%s: unknown id %d" % (what, int(id)))
        return int(id)

    # --- checkpoints ---

    @_guarded
    def save(self, path):
        """Writes the state to `path` (str, bytes or os.PathLike), atomically."""
        self._check(_lib.ngd_optim_save(self.handle, _path(path, "save")), "save")

    @_guarded
    def load(self, path):
        """Restores the state from `path` (validated; unchanged on error)."""
        self._check(_lib.ngd_optim_load(self.handle, _path(path, "load")), "load")

    @_guarded
    def save_bytes(self):
        """The optimizer state (ngd_optim_save_mem) as bytes."""
        buf = ctypes.c_void_p()
        n = ctypes.c_size_t()
        self._check(_lib.ngd_optim_save_mem(self.handle, ctypes.byref(buf), ctypes.byref(n)), "save_mem")
        try:
            return ctypes.string_at(buf, n.value)
        finally:
            _lib.libc_free(buf)

    @_guarded
    def load_bytes(self, data):
        """Restores a state from save_bytes (validated; unchanged on error)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):  # (bytes(5) is 5 zero bytes)
            raise TypeError("load_bytes takes bytes (save_bytes' result), not %s" % type(data).__name__)
        data = bytes(data)
        b = ctypes.create_string_buffer(data, len(data))
        self._check(_lib.ngd_optim_load_mem(self.handle, b, len(data)), "load_mem")


# ====== convolution helpers ======


def _geom(c_in, h, w, kernel, stride=1, padding=0, dilation=1, groups=1):
    def size(v, what):
        return _int_in(v, 0, 2**63 - 1, what)

    def two(v, what):
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return (size(v, what), size(v, what))
        if not isinstance(v, (tuple, list)) or len(v) != 2:
            raise ValueError("%s must be an integer or a pair of integers, not %r" % (what, v))
        return (size(v[0], what), size(v[1], what))

    k, s, p, d = two(kernel, "kernel"), two(stride, "stride"), two(padding, "padding"), two(dilation, "dilation")
    return _lib.ConvGeom(
        size(c_in, "c_in"), size(h, "h"), size(w, "w"), k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], size(groups, "groups")
    )


def conv_out_size(c_in, h, w, kernel, stride=1, padding=0, dilation=1, groups=1):
    g = _geom(c_in, h, w, kernel, stride, padding, dilation, groups)
    return int(_lib.ngd_conv_out_h(ctypes.byref(g))), int(_lib.ngd_conv_out_w(ctypes.byref(g)))


def unfold(x, kernel, stride=1, padding=0, dilation=1, groups=1, reduce=False, out=None):
    """ngd_unfold: im2col of x [batch, c_in, h, w] (float32, C-contiguous) into the K-FAC
    input matrix (batch*oh*ow or, with reduce, batch rows; (c_in/groups)*k1*k2 columns)."""
    _check_array(x, "x", ndim=(4,))
    n, c, h, w = x.shape
    g = _geom(c, h, w, kernel, stride, padding, dilation, groups)
    oh, ow = _lib.ngd_conv_out_h(ctypes.byref(g)), _lib.ngd_conv_out_w(ctypes.byref(g))
    if not oh or not ow or groups < 1 or c % groups:
        raise ValueError("invalid convolution geometry for input %s" % (x.shape,))
    cols = c // groups * g.k1 * g.k2
    rows = n if reduce else n * oh * ow
    if out is None:
        out = np.empty((rows, cols), np.float32)
    _check_array(out, "out", writeable=True)
    if out.size != rows * cols:
        raise ValueError("out must have %d x %d elements" % (rows, cols))
    st = _lib.ngd_unfold(ctypes.byref(g), n, _ptr(x), bool(reduce), _ptr(out))
    if st != _lib.OK:
        raise Error(st, "ngd_unfold rejected the geometry")
    return out


