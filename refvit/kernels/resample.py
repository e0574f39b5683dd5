"""Changing a feature map's resolution: transposed convolution and adaptive average pooling (NCHW), as torch.

conv_transpose2d(x, weight, bias, stride)      torch.nn.functional.conv_transpose2d(x, weight, bias, stride)
    x (B, Cin, h, w), weight (Cin, Cout, kh, kw) as nn.ConvTranspose2d stores it, bias (Cout,) or None;
    no padding, no output padding, dilation 1, groups 1 -> (B, Cout, (h-1)·sh + kh, (w-1)·sw + kw).
    Each input pixel scatters a kh×kw patch:  out[b, o, i·sh + di, j·sw + dj] += Σ_c x[b, c, i, j] · W[c, o, di, dj].
    Computed as torch's slow_conv_transpose2d does: one GEMM (columns = Wᵀ x, BLAS), then col2im adds every
    column into place (kernel positions in order di, dj), then the bias. With kernel == stride (BEiT's FPN) the
    patches do not overlap and col2im is a pure rearrangement.

adaptive_avg_pool2d(x, out_h, out_w)            torch.nn.functional.adaptive_avg_pool2d(x, (out_h, out_w))
    Output cell (i, j) averages input rows [floor(i·h/out_h), ceil((i+1)·h/out_h)) and the same for columns
    (aten/src/ATen/native/AdaptivePooling.h start_index / end_index): bins are uneven and may overlap when the
    size does not divide. aten's CPU kernel (AdaptiveAvgPoolKernel.cpp) sums the bin row by row in the input's
    dtype and stores `sum / kh / kw` (two divisions, as written there); both twins do the same, bit for bit.
    (For a 1×1 output torch takes `mean` instead, whose summation order differs by rounding only.)
"""

import numpy as np

from refvit.errors import InputError
from refvit.kernels import check_float
from refvit.kernels.jit import njit


def _pair(v, name):
    a, b = (v, v) if np.isscalar(v) else tuple(v)
    if int(a) < 1 or int(b) < 1:
        raise InputError(f"{name} must be positive, got {v}")
    return int(a), int(b)


def _check_conv_transpose(x, weight, bias, stride):
    check_float(x, "x")
    check_float(weight, "weight")
    if x.ndim != 4 or weight.ndim != 4 or weight.shape[0] != x.shape[1]:
        raise InputError(f"conv_transpose2d: x {x.shape} must be (B, Cin, h, w) and weight {weight.shape} "
                         "(Cin, Cout, kh, kw) with the same Cin")
    if bias is not None and bias.shape != (weight.shape[1],):
        raise InputError(f"conv_transpose2d: bias {bias.shape} must be (Cout,) = ({weight.shape[1]},)")
    return _pair(stride, "conv_transpose2d stride")


def _conv_transpose2d(x, weight, bias, stride, col2im):
    """The twins' common steps: check, the GEMM, `col2im(cols (B, Cout, kh, kw, h, w), sh, sw, out)` adding the
    columns into a zeroed output, then the bias."""
    sh, sw = _check_conv_transpose(x, weight, bias, stride)
    B, _, h, w = x.shape
    _, Cout, kh, kw = weight.shape
    cols = _columns(x, weight).reshape(B, Cout, kh, kw, h, w)  # (B, Cout, kh, kw, h, w)
    out = np.zeros((B, Cout, (h - 1) * sh + kh, (w - 1) * sw + kw), x.dtype)
    col2im(cols, sh, sw, out)
    if bias is not None:
        out += bias.astype(x.dtype, copy=False)[:, None, None]
    return out


def _columns(x, weight):
    """The GEMM: (B, Cout·kh·kw, h·w) = Wᵀ (Cout·kh·kw, Cin) @ x (B, Cin, h·w), in x's dtype (BLAS)."""
    B, Cin, h, w = x.shape
    W = weight.astype(x.dtype, copy=False).reshape(Cin, -1)  # (Cin, Cout·kh·kw)
    return np.matmul(W.T, x.reshape(B, Cin, h * w))  # (B, Cout·kh·kw, h·w)


def _bins(in_size, out_size):
    """AdaptivePooling.h: start = floor(i·in/out), end = ceil((i+1)·in/out), for each output index i."""
    i = np.arange(out_size)
    return (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)


def _pool_bins(x, out_h, out_w):
    """Check the arguments; the row bins [y0, y1) and column bins [x0, x1) of every output cell."""
    check_float(x, "x")
    if x.ndim < 2 or min(x.shape[-2:]) < 1 or int(out_h) < 1 or int(out_w) < 1:
        raise InputError(f"adaptive_avg_pool2d: cannot pool x {x.shape} to ({out_h}, {out_w})")
    h, w = x.shape[-2:]
    return _bins(h, int(out_h)) + _bins(w, int(out_w))


# ---------------------------------------------------------------------------------------- NumPy twins


def _col2im_numpy(cols, sh, sw, out):
    """Kernel positions in order, each adds an (h, w) grid of columns at stride (sh, sw)."""
    _, _, kh, kw, h, w = cols.shape
    for di in range(kh):
        for dj in range(kw):
            out[:, :, di:di + (h - 1) * sh + 1:sh, dj:dj + (w - 1) * sw + 1:sw] += cols[:, :, di, dj]


def conv_transpose2d_numpy(x, weight, bias, stride=(1, 1)):
    """x (B, Cin, h, w) -> (B, Cout, (h-1)·sh + kh, (w-1)·sw + kw); see the module docstring."""
    return _conv_transpose2d(x, weight, bias, stride, _col2im_numpy)


def adaptive_avg_pool2d_numpy(x, out_h, out_w):
    """x (..., h, w) -> (..., out_h, out_w): mean over torch's uneven bins, stored as sum / kh / kw."""
    y0, y1, x0, x1 = _pool_bins(x, out_h, out_w)
    out = np.empty(x.shape[:-2] + (int(out_h), int(out_w)), x.dtype)
    for i in range(int(out_h)):
        for j in range(int(out_w)):
            total = np.zeros(x.shape[:-2], x.dtype)
            for r in range(y0[i], y1[i]):  # row by row, as aten's loop (a pairwise sum would round differently)
                for c in range(x0[j], x1[j]):
                    total += x[..., r, c]
            out[..., i, j] = total / x.dtype.type(y1[i] - y0[i]) / x.dtype.type(x1[j] - x0[j])
    return out


# ---------------------------------------------------------------------------------------- Numba kernels


@njit(cache=True)
def _col2im_kernel(cols, sh, sw, out):
    # cols: (B, Cout, kh, kw, h, w); out: (B, Cout, H, W) zero-filled. Serial: memory-bound, like the gathers in
    # relative_position.py (threads cost more to start than they save here).
    B, C, kh, kw, h, w = cols.shape
    for bc in range(B * C):
        b, o = bc // C, bc % C
        for di in range(kh):
            for dj in range(kw):
                for i in range(h):
                    for j in range(w):
                        out[b, o, i * sh + di, j * sw + dj] += cols[b, o, di, dj, i, j]


@njit(cache=True)
def _adaptive_avg_pool_kernel(x, y0, y1, x0, x1, ky, kx, zero, out):
    # x: (M, h, w); out: (M, out_h, out_w); bins per output row / column, their sizes ky, kx and zero in x's
    # dtype (so float32 stays float32 arithmetic, as aten's scalar_t sum). One pass over x per output size.
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    for m in range(x.shape[0]):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                total = zero
                for r in range(y0[i], y1[i]):
                    for c in range(x0[j], x1[j]):
                        total += x[m, r, c]
                out[m, i, j] = total / ky[i] / kx[j]


def _col2im_numba(cols, sh, sw, out):
    if out.size:
        _col2im_kernel(np.ascontiguousarray(cols), sh, sw, out)


def conv_transpose2d_numba(x, weight, bias, stride=(1, 1)):
    """Numba twin of `conv_transpose2d_numpy`: the same BLAS GEMM, then a compiled col2im loop."""
    return _conv_transpose2d(x, weight, bias, stride, _col2im_numba)


def adaptive_avg_pool2d_numba(x, out_h, out_w):
    """Numba twin of `adaptive_avg_pool2d_numpy`: compiled loops over every (leading index) map."""
    y0, y1, x0, x1 = _pool_bins(x, out_h, out_w)
    h, w = x.shape[-2:]
    x3 = np.require(x, x.dtype, ["C", "A"]).reshape(-1, h, w)  # (M, h, w)
    out = np.empty((x3.shape[0], int(out_h), int(out_w)), x.dtype)
    if out.size:
        dt = x.dtype
        _adaptive_avg_pool_kernel(x3, y0, y1, x0, x1, (y1 - y0).astype(dt), (x1 - x0).astype(dt), dt.type(0), out)
    return out.reshape(x.shape[:-2] + (int(out_h), int(out_w)))
