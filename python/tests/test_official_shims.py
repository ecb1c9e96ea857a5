"""bench/official_shims: the stand-ins for einops and einconv that let the official SINGD
package run (bench/compare.py --official-singd) must compute what the calls it makes mean:
checked against torch's own reshape, permute, mean, einsum and unfold."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

SHIMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench",
                     "official_shims")
sys.path.insert(0, SHIMS)  # ahead of any real einops / einconv: these are the ones tested
try:
    import einconv
    import einops
    from einconv.utils import get_conv_paddings
finally:
    sys.path.remove(SHIMS)
for mod in (einops, einconv):
    assert os.path.abspath(mod.__file__).startswith(os.path.abspath(SHIMS))


def test_rearrange_splits_groups_and_permutes():
    x = torch.randn(2, 6, 3, 4)
    a = einops.rearrange(x, "b (g c) i j -> b g c i j", g=2)
    assert torch.equal(a, x.reshape(2, 2, 3, 3, 4))
    u = torch.randn(2, 27, 16)
    assert torch.equal(einops.rearrange(u, "b c o -> b o c"), u.transpose(1, 2))
    assert torch.equal(einops.rearrange(u, "b o c -> (b o) c"), u.reshape(-1, 16))
    assert torch.equal(einops.rearrange(x, "b c i j -> b (c i j)"), x.reshape(2, -1))


@pytest.mark.parametrize("shape", [(5, 7), (2, 5, 7), (2, 3, 5, 7)])
def test_ellipsis_matches_any_number_of_axes(shape):
    y = torch.randn(*shape)
    d = shape[-1]
    assert torch.equal(einops.rearrange(y, "b ... d -> (b ...) d"), y.reshape(-1, d))
    want = y.reshape(shape[0], -1, d).mean(1) if len(shape) > 2 else y
    assert torch.allclose(einops.reduce(y, "b ... d -> b d", "mean"), want)


def test_reduce_mean_sum_max():
    x = torch.randn(2, 4, 3, 5)
    r = einops.rearrange(x, "b (g c) i j -> b g c i j", g=2)
    assert torch.allclose(einops.reduce(r, "b g c i j -> b c i j", "mean"), r.mean(1))
    assert torch.allclose(einops.reduce(x, "b c i j -> c", "sum"), x.sum((0, 2, 3)))
    assert torch.equal(einops.reduce(x, "b c i j -> b j", "max"), x.amax((1, 2)))


def test_einsum_with_long_axis_names():
    x, p, q = torch.randn(2, 3, 4, 5), torch.randn(6, 4), torch.randn(7, 5)
    got = einops.einsum(x, p, q, "b c_in i1 i2, k1 i1, k2 i2 -> b c_in k1 k2")
    assert torch.allclose(got, torch.einsum("bcij,ki,lj->bckl", x, p, q), atol=1e-6)


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 0, 1), (2, 2, 0, 1), (3, 1, 2, 2),
                                     (4, 4, 0, 1)])
def test_index_pattern_averages_the_patches_unfold_makes(k, s, p, d):
    # the official package's "reduce" patches: the input contracted with the index pattern
    # averaged over output positions == F.unfold's patches averaged over positions
    x = torch.randn(2, 3, 9, 8)
    pats = [einconv.index_pattern(n, k, stride=s, padding=p, dilation=d).mean(1)
            for n in x.shape[-2:]]
    got = torch.einsum("bcij,ki,lj->bckl", x, *pats).reshape(2, -1)
    want = F.unfold(x, k, dilation=d, padding=p, stride=s).mean(-1)
    assert torch.allclose(got, want, atol=1e-6)


def test_paddings_and_errors():
    assert get_conv_paddings(3, 1, "same", 1) == (1, 1)
    assert get_conv_paddings(4, 1, "same", 1) == (1, 2)
    assert get_conv_paddings(3, 1, "same", 2) == (2, 2)
    assert get_conv_paddings(5, 2, "valid", 1) == (0, 0)
    with pytest.raises(ValueError):
        get_conv_paddings(3, 2, "same", 1)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError):
        einops.rearrange(x, "b (c -> b c")
    with pytest.raises(ValueError):
        einops.rearrange(x, "b c -> b")  # rearrange never drops an axis
    with pytest.raises(ValueError):
        einops.rearrange(x, "b c d -> b c d")  # three names, two axes
