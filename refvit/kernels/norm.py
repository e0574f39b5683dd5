"""LayerNorm over the last axis: torch.nn.LayerNorm / torch.nn.functional.layer_norm.

    y = (x - mean) / sqrt(var + eps) * weight + bias,   var = mean((x - mean)**2)   (biased)

Ba et al. 2016, "Layer Normalization", eq. 4; torch: aten/src/ATen/native/cpu/layer_norm_kernel.cpp
(`LayerNormKernelImplInternal`: row moments, rstd = 1 / sqrt(var + eps), y = (x - mean) * rstd * gamma + beta).
"""

import math

import numpy as np
from numba import prange

from refvit.errors import InputError
from refvit.kernels import check_float
from refvit.kernels.jit import njit
from refvit.kernels.reduce import row_sq_dev, row_sum
from refvit.kernels.threads import blocked, blocks


def _check_args(x, weight, bias):
    check_float(x, "x")
    if x.ndim < 1 or np.shape(weight) != x.shape[-1:] or np.shape(bias) != x.shape[-1:]:
        raise InputError(
            f"layer_norm: weight {np.shape(weight)} and bias {np.shape(bias)} must both be (C,) for x {x.shape}"
        )


def layer_norm_numpy(x, weight, bias, eps):
    """LayerNorm of x (..., C) over C; weight and bias are (C,). Arithmetic in x's dtype, as torch."""
    _check_args(x, weight, bias)
    dt = x.dtype.type
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    centered = x - mean  # (..., C)
    var = (centered * centered).mean(axis=-1, keepdims=True)  # (..., 1) biased: divide by C, not C - 1
    rstd = dt(1) / np.sqrt(var + dt(eps))  # (..., 1)
    return centered * rstd * np.asarray(weight, x.dtype) + np.asarray(bias, x.dtype)


@njit(cache=True, fastmath=False, nogil=True)
def _layer_norm_kernel(x, weight, bias, eps, out):
    # x, out: (M, C) every leading index flattened into M rows; weight, bias: (C,).
    # Statistics and the affine map run in float64 and are rounded once when stored into out.
    M, C = x.shape
    for i in range(M):
        mean = row_sum(x[i]) / C
        var = row_sq_dev(x[i], mean) / C  # biased variance, as torch
        rstd = 1.0 / math.sqrt(var + eps)
        for j in range(C):
            out[i, j] = (x[i, j] - mean) * rstd * weight[j] + bias[j]


@blocked(fastmath=False)
def _layer_norm_blocks(x, weight, bias, eps, out, bounds):
    for i in prange(len(bounds) - 1):  # block i: rows bounds[i]:bounds[i + 1]
        _layer_norm_kernel(x[bounds[i]:bounds[i + 1]], weight, bias, eps, out[bounds[i]:bounds[i + 1]])


def layer_norm_numba(x, weight, bias, eps):
    """Numba twin of `layer_norm_numpy`: row by row; float64 accumulators even for float32
    input (torch accumulates float32 in float32), rounded once on store: as close to torch as the twin.
    Large inputs are split into row blocks across Numba's threads (refvit.kernels.threads)."""
    _check_args(x, weight, bias)
    C = x.shape[-1]
    x2 = np.require(x, x.dtype, ["C", "A", "W"]).reshape(-1, C)  # (M, C)
    out = np.empty_like(x2)
    if x2.size:
        weight = np.require(weight, x.dtype, ["C", "A", "W"])
        bias = np.require(bias, x.dtype, ["C", "A", "W"])
        eps = float(eps)
        _layer_norm_blocks(x2, weight, bias, eps, out, blocks(len(x2), C))
    return out.reshape(x.shape)
