"""Activations: exact (erf) GELU, GELU with a fused bias add, and softmax over the last axis.

GELU, Hendrycks & Gimpel 2016:  gelu(x) = x * Φ(x) = 0.5 * x * (1 + erf(x / sqrt(2))).
torch.nn.functional.gelu(x) (approximate="none"), aten/src/ATen/native/cpu/GeluKernel.cpp, computes
`x * 0.5 * (1 + erf(x * M_SQRT1_2))` in x's dtype; both twins use that order and dtype.

Softmax: torch.softmax(x, dim=-1) = exp(x - max(x)) / sum(exp(x - max(x))); the max subtraction
changes nothing mathematically and keeps exp from overflowing.
"""

import math

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

from refvit.errors import InputError
from refvit.kernels import check_float
from refvit.kernels.jit import njit
from refvit.kernels.reduce import row_max, row_sum
from refvit.kernels.threads import blocked, blocks

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


# erf_float32's rational approximation (below): numerator and denominator coefficients in v², highest first
ERF32_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
           -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
ERF32_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
           -1.42647390514189e-02)


ERF_CHUNK = 1 << 14  # elements per chunk of erf_numpy (64 KiB of float32)


def erf_numpy(x):
    """erf in x's dtype. float64: scipy's erf (Cephes, exact to float64 rounding). float32: the rational
    approximation the Numba kernel uses (`erf_float32`: v·P(v²)/Q(v²) on v = x clipped to [-4, 4]) in array form,
    which agrees with torch's float32 erf to float32 rounding and is much faster than scipy's (whose float32 loop
    calls the scalar float64 routine)."""
    if x.dtype != np.float32:
        from scipy.special import erf  # imported when first used: the Numba path never needs scipy.special (~0.2 s)
        return erf(x)
    out = np.empty(x.shape, np.float32)
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    for lo in range(0, flat_x.size, ERF_CHUNK):  # chunks that stay in cache through the ~14 passes below
        v = np.clip(flat_x[lo:lo + ERF_CHUNK], np.float32(-4.0), np.float32(4.0))
        v2 = v * v
        p = np.full_like(v, ERF32_P[0])
        for c in ERF32_P[1:]:                                      # Horner, in place: p = p·v² + c
            p *= v2
            p += np.float32(c)
        q = np.full_like(v, ERF32_Q[0])
        for c in ERF32_Q[1:]:
            q *= v2
            q += np.float32(c)
        p *= v
        np.divide(p, q, out=flat_out[lo:lo + ERF_CHUNK])           # q < 0 everywhere: no division by zero
    return out


def gelu_numpy(x):
    """Exact GELU, 0.5 * x * (1 + erf(x / sqrt(2))), in x's dtype (torch.nn.functional.gelu)."""
    check_float(x, "x")
    dt = x.dtype.type
    return x * dt(0.5) * (dt(1) + erf_numpy(x * dt(SQRT1_2)))


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


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def erf_float32(v):
    """erf for float32 as a rational minimax approximation on [-4, 4] (erf = ±1 in float32 beyond).

    Coefficients from Eigen's `generic_fast_erf_float` (also XLA's float32 erf). Max abs error 4.7e-7 over all
    float32 inputs (measured vs float64 erf; ~4 ulp at 1): float32 rounding level, as torch's own vectorised float32
    erf. Pure arithmetic, so LLVM vectorises the loop that calls it (libm's erf is one scalar call per element).
    """
    v = min(max(v, np.float32(-4.0)), np.float32(4.0))
    v2 = v * v
    p = v2 * np.float32(ERF32_P[0]) + np.float32(ERF32_P[1])      # Horner in v², ERF32_P/Q: the one table
    p = v2 * p + np.float32(ERF32_P[2])
    p = v2 * p + np.float32(ERF32_P[3])
    p = v2 * p + np.float32(ERF32_P[4])
    p = v2 * p + np.float32(ERF32_P[5])
    p = v2 * p + np.float32(ERF32_P[6])
    q = v2 * np.float32(ERF32_Q[0]) + np.float32(ERF32_Q[1])
    q = v2 * q + np.float32(ERF32_Q[2])
    q = v2 * q + np.float32(ERF32_Q[3])
    q = v2 * q + np.float32(ERF32_Q[4])  # q < 0 everywhere: no division by zero
    return v * p / q


@njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
def _bias_gelu_kernel_f32(x, bias, out):
    # float32: x * 0.5 * (1 + erf(x / sqrt(2))) with the vectorisable erf above. Each row goes through a scratch
    # row: with out = x (in place) LLVM cannot prove the loads and stores apart and would not vectorise.
    M, C = x.shape
    half, one, alpha = np.float32(0.5), np.float32(1.0), np.float32(SQRT1_2)
    row = np.empty(C, np.float32)
    for i in range(M):
        xi = x[i]
        for j in range(C):
            v = xi[j] + bias[j]
            row[j] = v * half * (one + erf_float32(v * alpha))
        for j in range(C):  # element loops, not a slice copy: Numba compiles no error-message code (cold start)
            out[i, j] = row[j]


@njit(cache=True, fastmath=False, nogil=True)
def _bias_gelu_kernel_f64(x, bias, out):
    # float64 (the judge dtype): libm's erf, exact to float64 rounding.
    M, C = x.shape
    for i in range(M):
        for j in range(C):
            v = x[i, j] + bias[j]
            out[i, j] = v * 0.5 * (1.0 + math.erf(v * SQRT1_2))


@intrinsic
def _bits_to_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (an LLVM bitcast: free, and vectorisable)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def exp_float32(x):
    """exp for float32, Cephes `expf`: x = n·ln2 + r, exp(r) by a degree-6 polynomial, 2^n built from its bits.

    Max relative error ~1.5e-7 (about 1 ulp, measured vs float64 exp); inputs below -87.3 return exp(-87.3) ≈ 1e-38
    instead of a denormal. Pure arithmetic, so loops calling it vectorise (libm's expf does not).
    """
    x = min(max(x, np.float32(-87.33654)), np.float32(88.72283))
    n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)  # ln 2 split in two for precision
    p = np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * (r * r) + r + np.float32(1.0)
    return y * _bits_to_float32((np.int32(n) + np.int32(127)) << np.int32(23))  # y · 2^n


def exp_any(x):
    """exp in x's dtype: `exp_float32` for float32, libm for float64 (chosen when a kernel is compiled)."""
    return math.exp(x)


@overload(exp_any, inline="always")
def _exp_any_overload(x):
    if x == types.float32:
        return lambda x: exp_float32(x)
    return lambda x: math.exp(x)


@njit(cache=True, fastmath=False, error_model="numpy")
def softmax_inplace(row):
    """row[:] = softmax(row) for one 1-D row: exp in the row's dtype, the sum in float64.

    float32 uses `exp_float32`, float64 libm's exp. Each pass reads and writes the same element (or only reads),
    so LLVM vectorises the exp pass; the max and the float64 sum run in four lanes (refvit.kernels.reduce).
    """
    n = row.shape[0]
    peak = row_max(row)
    for j in range(n):
        row[j] = exp_any(row[j] - peak)
    t = row.dtype.type(row_sum(row))
    for j in range(n):
        row[j] = row[j] / t


@njit(cache=True, fastmath=False, error_model="numpy")
def softmax_row(row, out):
    """out[:] = softmax(row) for one 1-D row (out may be row)."""
    for j in range(row.shape[0]):
        out[j] = row[j]
    softmax_inplace(out)


@njit(cache=True, fastmath=False)
def _softmax_kernel(x, out):
    # x, out: (M, N); one row at a time.
    for i in range(x.shape[0]):
        softmax_row(x[i], out[i])


def _rows(x):
    """x (..., C) as a C-contiguous, aligned, writable (M, C) array: one numba signature per dtype."""
    return np.require(x, x.dtype, ["C", "A", "W"]).reshape(-1, x.shape[-1])


@blocked(fastmath=False, error_model="numpy")
def _bias_gelu_blocks_f32(x, bias, out, bounds):
    for i in prange(len(bounds) - 1):  # block i: rows bounds[i]:bounds[i + 1]
        _bias_gelu_kernel_f32(x[bounds[i]:bounds[i + 1]], bias, out[bounds[i]:bounds[i + 1]])


@blocked(fastmath=False, error_model="numpy")
def _bias_gelu_blocks_f64(x, bias, out, bounds):
    for i in prange(len(bounds) - 1):
        _bias_gelu_kernel_f64(x[bounds[i]:bounds[i + 1]], bias, out[bounds[i]:bounds[i + 1]])


def bias_gelu_numba(x, bias, out=None):
    """Numba twin of `bias_gelu_numpy`; with out=x it works in place (no temporary)."""
    _check_bias_out(x, bias, out)
    x2 = _rows(x)  # (M, C)
    out2 = np.empty_like(x2) if out is None else out.reshape(x2.shape)
    if x2.size:
        bias = np.require(bias, x.dtype, ["C", "A", "W"])
        kernel = _bias_gelu_blocks_f32 if x.dtype == np.float32 else _bias_gelu_blocks_f64
        kernel(x2, bias, out2, blocks(len(x2), x2.shape[1]))  # row blocks across threads
    return out2.reshape(x.shape) if out is None else out


def gelu_numba(x):
    """Numba twin of `gelu_numpy`: the bias_gelu kernel with a zero bias (x + 0 == x), one kernel for both."""
    check_float(x, "x")
    if x.ndim == 0:
        return gelu_numpy(x)
    return bias_gelu_numba(x, np.zeros(x.shape[-1], x.dtype))


def softmax_numba(x):
    """Numba twin of `softmax_numpy`: row by row, float64 running sum (torch sums float32 in float32)."""
    check_float(x, "x")
    if x.ndim == 0 or x.size == 0:
        return softmax_numpy(x)
    x2 = _rows(x)  # (M, N)
    out = np.empty_like(x2)
    _softmax_kernel(x2, out)
    return out.reshape(x.shape)
