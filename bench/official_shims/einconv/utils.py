"""get_conv_paddings: the left and right padding of 'valid' and 'same' (stride 1)."""


def get_conv_paddings(kernel_size, stride, padding, dilation):
    if padding == "valid":
        return 0, 0
    if padding == "same":
        if stride != 1:
            raise ValueError("einconv stand-in: 'same' padding needs stride 1")
        total = dilation * (kernel_size - 1)
        return total // 2, total - total // 2
    raise ValueError(f"einconv stand-in: padding '{padding}'")
