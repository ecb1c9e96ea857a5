"""ctypes bindings of libngd's public API (include/ngd.h).

The structures below mirror ngd.h field by field; tests/test_python.sh compiles a small C
program that prints sizeof/offsetof of every field and checks them against these mirrors,
so a change of ngd.h that is not made here too fails the suite instead of corrupting memory.

Finding the library (first hit wins):
  1. $NGD_LIBRARY: the path of a libngd shared object;
  2. the build folder of the source tree this package lies in (<repo>/build/libngd.so);
  3. the library folder `make install` recorded in ngd/_install.py;
  4. the system library libngd.so.0, through the dynamic linker.
"""

import ctypes
import os

# ====== enums (stable values of ngd.h) ======

OK, ERR_ARG, ERR_SHAPE, ERR_LAYER, ERR_NOMEM, ERR_IO, ERR_FORMAT, ERR_STATE = range(8)
ERR_NUMERIC, ERR_INTERNAL, SKIPPED = 8, 9, 10

F32, BF16 = 0, 1

METHODS = {
    "sgd": 0,
    "adamw": 1,
    "singd": 2,
    "kfac": 3,
    "rskfac": 4,
    "srekfac": 5,
    "bkfac": 6,
    "brkfac": 7,
    "brckfac": 8,
    "ingd": 9,
    "ikfac": 10,
}
LOSS_AVERAGE = {"sum": 0, None: 0, "batch": 1, "batch+sequence": 2, "batch_sequence": 2}
KFAC_APPROX = {"expand": 0, "reduce": 1}
KFAC_DAMPING = {"exact": 0, "exact_rel": 0, "pi": 1, "factored_pi": 1}
CLIP = {"none": 0, None: 0, "rms": 1, "kl": 2}
TAIL = {"zero": 0, "min_kept": 1}
IDENTITY_INIT = {"in_damping": 0, "in_factor": 1}
BRAND_TRUNCATE = {"after": 0, "before_next": 1}
DTYPES = {"f32": F32, "float32": F32, "bf16": BF16, "bfloat16": BF16}

c_size = ctypes.c_size_t
c_enum = ctypes.c_int


class Matrix(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("rows", c_size),
        ("cols", c_size),
        ("ld", c_size),
        ("dtype", c_enum),
    ]


class FactorSpec(ctypes.Structure):
    _fields_ = [("kind", c_enum), ("block", c_size), ("k1", c_size), ("k2", c_size), ("dtype", c_enum)]


class KfacOptions(ctypes.Structure):
    _fields_ = [
        ("rho", ctypes.c_float),
        ("T_u", c_size),
        ("T_i", c_size),
        ("damping_rel", ctypes.c_float),
        ("damping_kind", c_enum),
        ("clip", c_enum),
        ("clip_kappa", ctypes.c_float),
        ("wd_start", c_size),
        ("identity_init", c_enum),
        ("eig_zero_tol", ctypes.c_float),
        ("rank", c_size),
        ("oversample", c_size),
        ("power_iters", c_size),
        ("tail", c_enum),
        ("brand_rank", c_size),
        ("brand_mult", c_size),
        ("refresh_mult", c_size),
        ("corr_mult", c_size),
        ("corr_frac", ctypes.c_float),
        ("brand_truncate", c_enum),
        ("reorth_every", c_size),
        ("factored_apply", ctypes.c_bool),
        ("seed", ctypes.c_uint64),
        ("ea_dtype", c_enum),
        ("factor_arith", c_enum),
    ]


LR_COV_FN = ctypes.CFUNCTYPE(ctypes.c_float, c_size, ctypes.c_void_p)
LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)


class Config(ctypes.Structure):
    _fields_ = [
        ("method", c_enum),
        ("lr", ctypes.c_float),
        ("momentum", ctypes.c_float),
        ("weight_decay", ctypes.c_float),
        ("nesterov", ctypes.c_bool),
        ("beta1", ctypes.c_float),
        ("beta2", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("damping", ctypes.c_float),
        ("alpha1", ctypes.c_float),
        ("T", c_size),
        ("lr_cov", ctypes.c_float),
        ("lr_cov_fn", LR_COV_FN),
        ("lr_cov_user", ctypes.c_void_p),
        ("normalize_lr_cov", ctypes.c_bool),
        ("kfac_like", ctypes.c_bool),
        ("loss_average", c_enum),
        ("kfac_approx", c_enum),
        ("structure_K", FactorSpec),
        ("structure_C", FactorSpec),
        ("factor_compute", c_enum),
        ("init_grad_scale", ctypes.c_float),
        ("official_blockdiag_quirk", ctypes.c_bool),
        ("skip_nonfinite", ctypes.c_bool),
        ("keep_last_update", ctypes.c_bool),
        ("kfac", KfacOptions),
        ("log_fn", LOG_FN),
        ("log_user", ctypes.c_void_p),
    ]


class Layer(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("weight", ctypes.c_void_p),
        ("weight_grad", ctypes.c_void_p),
        ("d_out", c_size),
        ("d_in", c_size),
        ("bias", ctypes.c_void_p),
        ("bias_grad", ctypes.c_void_p),
        ("override", ctypes.POINTER(Config)),
    ]


class LayerHealth(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("updates", c_size),
        ("skips", c_size),
        ("decomp_failures", c_size),
        ("decomp_retries", c_size),
        ("trace_K", ctypes.c_float),
        ("trace_C", ctypes.c_float),
        ("norm_K", ctypes.c_float),
        ("norm_C", ctypes.c_float),
        ("grad_norm", ctypes.c_float),
        ("update_norm", ctypes.c_float),
        ("beta1_K", ctypes.c_float),
        ("beta1_C", ctypes.c_float),
        ("rank_A", c_size),
        ("rank_G", c_size),
        ("state_bytes", c_size),
        ("time_observe", ctypes.c_double),
        ("time_update", ctypes.c_double),
        ("time_precond", ctypes.c_double),
    ]


class ConvGeom(ctypes.Structure):
    _fields_ = [
        (n, c_size) for n in ("c_in", "h", "w", "k1", "k2", "s1", "s2", "p1", "p2", "dil1", "dil2", "groups")
    ]


# Returned by value: room for fields a newer header may append, so that a sret write of a
# larger struct can never run past the buffer (the layout check in the tests catches drift).
class _ConfigRet(ctypes.Structure):
    _fields_ = [("cfg", Config), ("_spare", ctypes.c_char * 1024)]


def _candidates():
    env = os.environ.get("NGD_LIBRARY")
    if env:
        return [env]
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    out = []
    if os.path.exists(os.path.join(repo, "include", "ngd.h")):
        out.append(os.path.join(repo, "build", "libngd.so"))
    try:  # written by `make install`: the folder it put libngd in
        from ._install import LIBDIR

        out.append(os.path.join(LIBDIR, "libngd.so.0"))
    except ImportError:
        pass
    out.append("libngd.so.0")
    return out


def _load():
    errors = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            errors.append("%s: no such file" % path)
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            errors.append(str(e))
    raise ImportError(
        "ngd: cannot load libngd (%s). Build it with `make` in the ngd source tree, install it "
        "with `make install`, or set NGD_LIBRARY to the path of libngd.so" % "; ".join(errors)
    )


lib, path = _load()

P = ctypes.c_void_p
PP = ctypes.POINTER(ctypes.c_void_p)
ST = c_enum


def _fn(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


ngd_version = _fn("ngd_version", ctypes.c_char_p)
ngd_status_str = _fn("ngd_status_str", ctypes.c_char_p, ST)
ngd_config_default = _fn("ngd_config_default", _ConfigRet, c_enum)
ngd_config_validate = _fn("ngd_config_validate", ST, ctypes.POINTER(Config), ctypes.c_char_p, c_size)
ngd_method_name = _fn("ngd_method_name", ctypes.c_char_p, c_enum)
ngd_structure_name = _fn("ngd_structure_name", ctypes.c_char_p, c_enum)
ngd_structure_parse = _fn("ngd_structure_parse", ST, ctypes.c_char_p, ctypes.POINTER(FactorSpec))
ngd_optim_create = _fn("ngd_optim_create", ST, ctypes.POINTER(Config), PP)
ngd_optim_free = _fn("ngd_optim_free", None, P)
ngd_optim_add_layer = _fn("ngd_optim_add_layer", ST, P, ctypes.POINTER(Layer), ctypes.POINTER(ctypes.c_int))
ngd_optim_add_param = _fn(
    "ngd_optim_add_param",
    ST,
    P,
    ctypes.c_char_p,
    P,
    P,
    c_size,
    ctypes.POINTER(Config),
    ctypes.POINTER(ctypes.c_int),
)
ngd_optim_wants_stats = _fn("ngd_optim_wants_stats", ctypes.c_bool, P)
ngd_optim_layer_wants_stats = _fn("ngd_optim_layer_wants_stats", ctypes.c_bool, P, ctypes.c_int)
ngd_optim_observe = _fn("ngd_optim_observe", ST, P, ctypes.c_int, c_size, Matrix, Matrix)
ngd_optim_set_grad_scale = _fn("ngd_optim_set_grad_scale", ST, P, ctypes.c_float)
ngd_optim_set_lr_scale = _fn("ngd_optim_set_lr_scale", ST, P, ctypes.c_float)
ngd_optim_set_micro_batches = _fn("ngd_optim_set_micro_batches", ST, P, c_size)
ngd_optim_micro_batches = _fn("ngd_optim_micro_batches", c_size, P)
ngd_optim_step = _fn("ngd_optim_step", ST, P)
ngd_optim_skip = _fn("ngd_optim_skip", ST, P, ctypes.c_int)
ngd_optim_steps = _fn("ngd_optim_steps", c_size, P)
ngd_optim_layer_health = _fn("ngd_optim_layer_health", ST, P, ctypes.c_int, P)
ngd_optim_count = _fn("ngd_optim_count", c_size, P)
ngd_optim_state_bytes = _fn("ngd_optim_state_bytes", c_size, P)
ngd_optim_workspace_bytes = _fn("ngd_optim_workspace_bytes", c_size, P)
ngd_optim_update_time = _fn("ngd_optim_update_time", ctypes.c_double, P)
ngd_optim_factor_dense = _fn("ngd_optim_factor_dense", ST, P, ctypes.c_int, ctypes.c_char, P, c_size)
ngd_optim_last_update = _fn("ngd_optim_last_update", ST, P, ctypes.c_int, P, c_size)
ngd_optim_errmsg = _fn("ngd_optim_errmsg", ctypes.c_char_p, P)
ngd_conv_out_h = _fn("ngd_conv_out_h", c_size, ctypes.POINTER(ConvGeom))
ngd_conv_out_w = _fn("ngd_conv_out_w", c_size, ctypes.POINTER(ConvGeom))
ngd_unfold = _fn("ngd_unfold", ST, ctypes.POINTER(ConvGeom), c_size, P, ctypes.c_bool, P)
ngd_optim_observe_conv = _fn(
    "ngd_optim_observe_conv", ST, P, ctypes.c_int, c_size, ctypes.POINTER(ConvGeom), Matrix, Matrix
)
ngd_optim_save = _fn("ngd_optim_save", ST, P, ctypes.c_char_p)
ngd_optim_load = _fn("ngd_optim_load", ST, P, ctypes.c_char_p)
ngd_optim_save_mem = _fn("ngd_optim_save_mem", ST, P, PP, ctypes.POINTER(c_size))
ngd_optim_load_mem = _fn("ngd_optim_load_mem", ST, P, P, c_size)

_libc = ctypes.CDLL(None)
libc_free = _libc.free
libc_free.restype = None
libc_free.argtypes = [P]
