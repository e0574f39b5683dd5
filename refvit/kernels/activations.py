"""Activations: exact (erf) GELU, GELU with a fused bias add, and softmax over the last axis.

GELU, Hendrycks & Gimpel 2016:  gelu(x) = x * Φ(x) = 0.5 * x * (1 + erf(x / sqrt(2))).
torch.nn.functional.gelu(x) (approximate="none"), aten/src/ATen/native/cpu/GeluKernel.cpp, computes
`x * 0.5 * (1 + erf(x * M_SQRT1_2))` in x's dtype; both twins use that order and dtype.

Softmax: torch.softmax(x, dim=-1) = exp(x - max(x)) / sum(exp(x - max(x))); the max subtraction
changes nothing mathematically and keeps exp from overflowing.
"""

import math

import numpy as np
from numba import njit, prange
from scipy.special import erf

from refvit.errors import InputError
from refvit.kernels import check_float

SQRT1_2 = 1.0 / math.sqrt(2.0)  # M_SQRT1_2 in GeluKernel.cpp


def _check_bias_out(x, bias, out):
    check_float(x, "x")
    if x.ndim < 1 or np.shape(bias) != x.shape[-1:]:
        raise InputError(f"bias_gelu: bias {np.shape(bias)} must be (C,) for x {x.shape}")
    if out is not None and (
        not isinstance(out, np.ndarray) or out.shape != x.shape or out.dtype != x.dtype
        or not out.flags.c_contiguous or not out.flags.writeable
    ):
        raise InputError(f"bias_gelu: out must be a writable C-contiguous {x.dtype} array of shape {x.shape}")


# ---------------------------------------------------------------------------------------- NumPy twins


def gelu_numpy(x):
    """Exact GELU, 0.5 * x * (1 + erf(x / sqrt(2))), in x's dtype (torch.nn.functional.gelu)."""
    check_float(x, "x")
    dt = x.dtype.type
    return x * dt(0.5) * (dt(1) + erf(x * dt(SQRT1_2)))


def bias_gelu_numpy(x, bias, out=None):
    """gelu(x + bias) with bias (C,) broadcast over the last axis of x (..., C): nn.Linear's bias, then GELU.
    With `out` given (may be x itself) the result is written there and out is returned."""
    _check_bias_out(x, bias, out)
    y = gelu_numpy(x + np.asarray(bias, x.dtype))
    if out is None:
        return y
    out[...] = y
    return out


def softmax_numpy(x):
    """Softmax over the last axis (torch.softmax(x, dim=-1)), in x's dtype."""
    check_float(x, "x")
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # (..., N) largest term is exp(0) = 1
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------- Numba kernels


@njit(cache=True, fastmath=False, parallel=True)
def _bias_gelu_kernel(x, bias, half, one, alpha, out):
    # x, out: (M, C) (out may be x); bias: (C,); half, one, alpha: 0.5, 1, 1/sqrt(2) as x's dtype,
    # so float32 input stays float32 arithmetic, exactly as torch's GeluKernel.
    M, C = x.shape
    for i in prange(M):
        for j in range(C):
            v = x[i, j] + bias[j]
            out[i, j] = v * half * (one + math.erf(v * alpha))


@njit(cache=True, fastmath=False)
def softmax_row(row, out):
    """out[:] = softmax(row) for one 1-D row (out may be row); exp in the row's dtype, the sum in float64."""
    n = row.shape[0]
    peak = row[0]
    for j in range(1, n):
        if row[j] > peak:
            peak = row[j]
    total = 0.0
    for j in range(n):
        e = math.exp(row[j] - peak)
        out[j] = e
        total += e
    for j in range(n):
        out[j] = out[j] / total


@njit(cache=True, fastmath=False, parallel=True)
def _softmax_kernel(x, out):
    # x, out: (M, N); one row per prange iteration.
    for i in prange(x.shape[0]):
        softmax_row(x[i], out[i])


def _rows(x):
    """x (..., C) as a C-contiguous, aligned, writable (M, C) array: one numba signature per dtype."""
    return np.require(x, x.dtype, ["C", "A", "W"]).reshape(-1, x.shape[-1])


def bias_gelu_numba(x, bias, out=None):
    """Numba twin of `bias_gelu_numpy`; with out=x it works in place (no temporary)."""
    _check_bias_out(x, bias, out)
    dt = x.dtype.type
    x2 = _rows(x)  # (M, C)
    out2 = np.empty_like(x2) if out is None else out.reshape(x2.shape)
    if x2.size:
        bias = np.require(bias, x.dtype, ["C", "A", "W"])
        _bias_gelu_kernel(x2, bias, dt(0.5), dt(1), dt(SQRT1_2), out2)
    return out2.reshape(x.shape) if out is None else out


def gelu_numba(x):
    """Numba twin of `gelu_numpy`: the bias_gelu kernel with a zero bias (x + 0 == x), one kernel for both."""
    check_float(x, "x")
    if x.ndim == 0:
        return gelu_numpy(x)
    return bias_gelu_numba(x, np.zeros(x.shape[-1], x.dtype))


def softmax_numba(x):
    """Numba twin of `softmax_numpy`: rows in parallel, float64 running sum (torch sums float32 in float32)."""
    check_float(x, "x")
    if x.ndim == 0 or x.size == 0:
        return softmax_numpy(x)
    x2 = _rows(x)  # (M, N)
    out = np.empty_like(x2)
    _softmax_kernel(x2, out)
    return out.reshape(x.shape)
