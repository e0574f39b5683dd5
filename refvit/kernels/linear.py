"""torch.nn.Linear: y = x Wᵀ + b over the last axis, W of shape (out, in) as the checkpoint stores it.

The GEMM is BLAS's (numpy's matmul reads Wᵀ in place, no copy). The Numba-backend twin cuts the rows of x into
blocks, one GEMM each onto rows pre-filled with the bias (BLAS's beta = 1: no second pass over y), run across
Numba's threads with the BLAS they call held at one thread (refvit.kernels.threads.forward_scope).
"""

import numpy as np
from numba import prange

from refvit.errors import InputError
from refvit.kernels import check_float, threads
from refvit.kernels.blas import gemm
from refvit.kernels.threads import blocked


def _check_args(x, weight, bias):
    check_float(x, "x")
    if (not isinstance(weight, np.ndarray) or weight.ndim != 2 or x.ndim < 1 or weight.shape[1] != x.shape[-1]
            or (bias is not None and np.shape(bias) != weight.shape[:1])):
        raise InputError(f"linear: weight {np.shape(weight)} must be (out, {x.shape[-1] if x.ndim else '?'}) and bias "
                         f"{np.shape(bias) if bias is not None else None} (out,) for x {x.shape}")


def linear_numpy(x, weight, bias=None):
    """x (..., in) -> (..., out) = x @ weightᵀ + bias."""
    _check_args(x, weight, bias)
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y


@blocked()
def _linear_blocks(x, weight_t, bias, has_bias, by_column, y, bounds):
    # x (M, in), weight_t (in, out) a transposed view, y (M, out). Block i owns the rows bounds[i]:bounds[i + 1] or,
    # by_column, those output columns (all rows): each thread then packs only its share of the weight, which pays
    # at batch-1 sizes (M ≈ 200 rows). One GEMM per block onto y pre-filled with the bias.
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    for i in prange(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1]
        if by_column:
            a, w, o, c0 = x[:, :], weight_t[:, lo:hi], y[:, lo:hi], lo
        else:
            a, w, o, c0 = x[lo:hi, :], weight_t[:, :], y[lo:hi, :], 0
        if has_bias:
            for r in range(o.shape[0]):      # element loops, not slice copies: no error-message code to
                for j in range(o.shape[1]):    # compile on a cold start (seconds)
                    o[r, j] = bias[c0 + j]
        gemm(a, w, o, 1.0 if has_bias else 0.0)


COLUMN_SPLIT_ROWS = 512  # at most this many rows: split the output columns, not the rows (see linear_numba)


def linear_numba(x, weight, bias=None):
    """Twin of `linear_numpy`: one GEMM per block of rows (or, for few rows, of output columns), the blocks chosen
    by the sizes alone (so the bits do not depend on any thread count), run across Numba's threads with BLAS held
    at one thread (refvit.kernels.threads); one block after the other only where that BLAS cannot be limited and
    runs threads itself (two layers of threads would oversubscribe the cores)."""
    _check_args(x, weight, bias)
    dtype = np.result_type(x, weight)
    x2 = np.require(x.reshape(-1, x.shape[-1]), dtype, ["C", "A"])     # (M, in)
    if not (weight.flags.c_contiguous or weight.flags.f_contiguous) or weight.dtype != dtype:
        weight = np.ascontiguousarray(weight, dtype)
    has_bias = bias is not None
    bias = np.require(bias if has_bias else np.empty(0, dtype), dtype, ["C", "A"])
    y = np.empty((x2.shape[0], weight.shape[0]), dtype)                 # (M, out)
    M, (N, K) = len(x2), weight.shape
    by_column = M <= COLUMN_SPLIT_ROWS  # few rows (batch 1): blocks of columns, else of rows, whichever measured
    if by_column:                       # faster for that shape (docs/speed.md, "Kernel choices")
        bounds = threads.blocks(N, M * K // 8, threads.MIN_GEMM_BLOCK)      # ~2·M·in flops per column
    else:
        bounds = threads.blocks(M, N * K // 8, threads.MIN_GEMM_BLOCK)      # ~2·in·out flops per row
    _linear_blocks(x2, weight.T, bias, has_bias, by_column, y, bounds)
    return y.reshape(*x.shape[:-1], weight.shape[0])
