"""Group normalisation with an optional fused ReLU: torch.nn.functional.group_norm (+ torch.relu) on NCHW arrays.

Wu & He 2018, "Group Normalization", eq. 1-3: the C channels are split into G groups of C/G consecutive channels;
each (sample, group) is normalised over its C/G · H · W values, then every channel gets its own affine map:

    y[b, c] = (x[b, c] - mean[b, g]) / sqrt(var[b, g] + eps) * weight[c] + bias[c],   g = c // (C/G)
    var = mean((x - mean)**2)   (biased, as torch)

torch: aten/src/ATen/native/cpu/group_norm_kernel.cpp (`GroupNormKernelImplInternal`: moments per (b, g), then
y = x * (rstd · gamma[c]) + (beta[c] - mean · rstd · gamma[c])). BiT's `BitGroupNormActivation` is this followed by
ACT2FN[hidden_act] (ReLU for every BiT checkpoint), fused here into one pass when relu=True.
"""

import math

import numpy as np
from numba import prange

from refvit.errors import InputError
from refvit.kernels import check_float
from refvit.kernels.jit import njit
from refvit.kernels.reduce import row_sq_dev, row_sum
from refvit.kernels.threads import blocked, blocks


def _check_args(x, num_groups, weight, bias):
    check_float(x, "x")
    if x.ndim < 2 or x.shape[0] == 0:
        raise InputError(f"group_norm: x must be (B, C, ...) with B >= 1, got {x.shape}")
    C = x.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 1 \
            or C % num_groups:
        raise InputError(f"group_norm: num_groups {num_groups!r} must be a positive divisor of the {C} channels")
    for name, a in (("weight", weight), ("bias", bias)):
        if not isinstance(a, np.ndarray) or a.shape != (C,):
            raise InputError(f"group_norm: {name} must be ({C},), got {getattr(a, 'shape', type(a).__name__)}")


def group_norm_act_numpy(x, num_groups, weight, bias, eps, relu=False):
    """GroupNorm of x (B, C, ...) in `num_groups` groups, then ReLU if `relu`; arithmetic in x's dtype."""
    _check_args(x, num_groups, weight, bias)
    dt = x.dtype.type
    B, C = x.shape[:2]
    xg = x.reshape(B, num_groups, -1)                                    # (B, G, C/G · h · w)
    mean = xg.mean(axis=-1, keepdims=True)                               # (B, G, 1)
    centered = xg - mean
    var = (centered * centered).mean(axis=-1, keepdims=True)             # (B, G, 1) biased
    y = (centered / np.sqrt(var + dt(eps))).reshape(x.shape)             # (B, C, ...)
    affine = (C,) + (1,) * (x.ndim - 2)                                  # weight, bias broadcast over h, w
    y = y * weight.astype(x.dtype, copy=False).reshape(affine) + bias.astype(x.dtype, copy=False).reshape(affine)
    return np.maximum(y, dt(0)) if relu else y                           # np.maximum keeps NaN, as torch.relu


@njit(cache=True, fastmath=False, nogil=True)
def _group_norm_row(x, r, num_groups, weight, bias, eps, relu, out):
    # Row r of x, out (B·G, C/G, P) with P = h·w: one (sample, group); weight, bias: (C,).
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    Cg, P = x.shape[1], x.shape[2]
    v = x[r].reshape(Cg * P)  # float64 mean and biased variance, two passes in SIMD lanes (refvit.kernels.reduce)
    mean = row_sum(v) / v.shape[0]
    var = row_sq_dev(v, mean) / v.shape[0]
    rstd = 1.0 / math.sqrt(var + eps)
    c0 = (r % num_groups) * Cg
    for c in range(Cg):
        scale = rstd * weight[c0 + c]  # y = x · scale + shift, rounded once when stored
        shift = bias[c0 + c] - mean * scale
        src = x[r, c]
        dst = out[r, c]
        for p in range(P):
            v = src[p] * scale + shift
            if relu and v < 0.0:  # NaN stays NaN, as torch.relu
                v = 0.0
            dst[p] = v


@blocked(fastmath=False)
def _group_norm_blocks(x, num_groups, weight, bias, eps, relu, out, bounds):
    # block i owns the (sample, group) rows bounds[i]:bounds[i + 1] of x, out (B·G, C/G, P)
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    for i in prange(len(bounds) - 1):
        for r in range(bounds[i], bounds[i + 1]):
            _group_norm_row(x, r, num_groups, weight, bias, eps, relu, out)


def group_norm_act_numba(x, num_groups, weight, bias, eps, relu=False):
    """Numba twin of `group_norm_act_numpy`: (sample, group) pairs in blocks across Numba's threads,
    normalisation + affine + ReLU in one pass over the output; float64 moments even for float32 input (torch
    accumulates float32 in float32)."""
    _check_args(x, num_groups, weight, bias)
    B, C = x.shape[:2]
    x3 = np.require(x, x.dtype, ["C", "A"]).reshape(B * num_groups, C // num_groups, -1)  # (B·G, C/G, P)
    out = np.empty_like(x3)
    if x3.size:
        weight = np.require(weight, x.dtype, ["C", "A"])
        bias = np.require(bias, x.dtype, ["C", "A"])
        _group_norm_blocks(x3, int(num_groups), weight, bias, float(eps), bool(relu), out,
                           blocks(len(x3), x3[0].size))
    return out.reshape(x.shape)
