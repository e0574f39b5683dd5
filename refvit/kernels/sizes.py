"""Output lengths of convolutions and poolings along one axis, as torch computes them (no Numba: model code and
config checks import these without importing a kernel)."""


def conv_output_size(size, kernel, stride, pad_before, pad_after, dilation):
    """torch's conv output length along one axis."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size, kernel, stride, pad_before, pad_after, ceil_mode):
    """torch's `pooling_output_shape` (dilation 1) with asymmetric padding."""
    span = size + pad_before + pad_after - kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad_before:  # the last window must start inside input / top pad
        out -= 1
    return out
