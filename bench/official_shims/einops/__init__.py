"""A stand-in for the parts of `einops` that the official SINGD package calls (einops is not
in Debian): rearrange, reduce and einsum on torch tensors, with named axes, parenthesised
groups and one `...`. Written for bench/pytorch_reference.py's `--optim singd-official`
measurement only: put bench/official_shims on PYTHONPATH beside the official source. Axis
repetition, anonymous axes and backends other than torch are not covered."""

import math

import torch

__all__ = ["rearrange", "reduce", "einsum"]


def _parse(side):
    groups, cur, tok = [], None, ""
    for ch in side + " ":
        if ch in " ()":
            if tok:
                (cur if cur is not None else groups).append(tok if cur is not None else [tok])
                tok = ""
            if ch == "(":
                if cur is not None:
                    raise ValueError(f"einops stand-in: nested parentheses in '{side}'")
                cur = []
            elif ch == ")":
                if cur is None:
                    raise ValueError(f"einops stand-in: unbalanced ')' in '{side}'")
                groups.append(cur)
                cur = None
        else:
            tok += ch
    if cur is not None:
        raise ValueError(f"einops stand-in: unbalanced '(' in '{side}'")
    return groups


def _expand_ellipsis(groups, n):
    names = [f"...{i}" for i in range(n)]
    out = []
    for g in groups:
        if g == ["..."]:  # a bare `...`: one axis per matched dimension (none if n = 0)
            out += [[a] for a in names]
        else:  # `...` inside a group joins the matched dimensions
            out.append([m for a in g for m in (names if a == "..." else [a])])
    return out


def _transform(x, pattern, reduction, sizes):
    left, right = (s.strip() for s in pattern.split("->"))
    L, R = _parse(left), _parse(right)
    if any("..." in g for g in L):
        n = x.dim() - (len(L) - 1)
        L, R = _expand_ellipsis(L, n), _expand_ellipsis(R, n)
    if len(L) != x.dim():
        raise ValueError(f"einops stand-in: '{left}' has {len(L)} axes, the tensor {x.dim()}")
    size = {}
    for g, dim in zip(L, x.shape):
        known = [sizes[a] for a in g if a in sizes]
        unknown = [a for a in g if a not in sizes]
        if len(unknown) > 1:
            raise ValueError(f"einops stand-in: cannot split {dim} into {g}")
        for a in g:
            size[a] = sizes[a] if a in sizes else dim // math.prod(known)
        if math.prod(size[a] for a in g) != dim:
            raise ValueError(f"einops stand-in: {g} does not multiply to {dim}")
    elems = [a for g in L for a in g]
    x = x.reshape([size[a] for a in elems])
    kept = [a for g in R for a in g]
    if any(a not in size for a in kept):
        raise ValueError(f"einops stand-in: new axes in '{right}' are not covered")
    gone = [i for i, a in enumerate(elems) if a not in kept]
    if gone:
        if reduction is None:
            raise ValueError(f"einops stand-in: rearrange drops axes in '{pattern}'")
        op = {"mean": torch.mean, "sum": torch.sum}.get(reduction)
        if op is None:
            if reduction not in ("max", "min"):
                raise ValueError(f"einops stand-in: reduction '{reduction}'")
            op = torch.amax if reduction == "max" else torch.amin
        x = op(x, dim=gone)
        elems = [a for a in elems if a in kept]
    x = x.permute([elems.index(a) for a in kept])
    return x.reshape([math.prod(size[a] for a in g) for g in R])


def rearrange(x, pattern, **sizes):
    return _transform(x, pattern, None, sizes)


def reduce(x, pattern, reduction, **sizes):
    return _transform(x, pattern, reduction, sizes)


def einsum(*args):
    *tensors, pattern = args
    left, right = (s.strip() for s in pattern.split("->"))
    letters, spec = {}, []
    for side in [s.strip() for s in left.split(",")] + [right]:
        names = side.split()
        for a in names:
            letters.setdefault(a, "abcdefghijklmnopqrstuvwxyz"[len(letters)])
        spec.append("".join(letters[a] for a in names))
    return torch.einsum(",".join(spec[:-1]) + "->" + spec[-1], *tensors)
