"""A stand-in for the two functions of `einconv` (not in Debian) that the official SINGD
package imports: index_pattern and utils.get_conv_paddings. For bench/pytorch_reference.py's
`--optim singd-official` measurement only (see ../einops/__init__.py)."""

import torch


def index_pattern(input_size, kernel_size, stride=1, padding=0, dilation=1, dtype=None,
                  device=None):
    """Π[k, o, i] = 1 where input index i = o·stride − padding + k·dilation (padding an int,
    or 'valid' / 'same' as torch.nn.Conv2d takes them)."""
    from .utils import get_conv_paddings

    if isinstance(padding, str):
        padding = get_conv_paddings(kernel_size, stride, padding, dilation)[0]
    span = dilation * (kernel_size - 1) + 1
    out_size = (input_size + 2 * padding - span) // stride + 1
    pi = torch.zeros(kernel_size, out_size, input_size, dtype=dtype or torch.float32,
                     device=device)
    for k in range(kernel_size):
        for o in range(out_size):
            i = o * stride - padding + k * dilation
            if 0 <= i < input_size:
                pi[k, o, i] = 1
    return pi
