"""torch.nn.Linear: y = x Wᵀ + b over the last axis, W of shape (out, in) as the checkpoint stores it; optionally
followed by what the model does next to y, in the same kernel: the exact GELU (`gelu=True`: BertIntermediate's
`ACT2FN["gelu"](dense(x))`) and a residual add (`residual=r`: ViTOutput's `dense(x) + input_tensor`).

    y = x @ Wᵀ + b                 then, if gelu: y = gelu(y)       then, if residual given: y = y + r

The GEMM is BLAS's (numpy's matmul reads Wᵀ in place, no copy). The Numba-backend twin cuts the rows of x into
blocks, one GEMM each onto rows pre-filled with the bias (BLAS's beta = 1: no second pass over y), run across
Numba's threads with the BLAS they call held at one thread (refvit.kernels.threads.forward_scope); the GELU and the
residual add run on each block right after its GEMM, while it is still in cache, in the same parallel region.
The order of the roundings is the model's: (x Wᵀ + b), then GELU, then + r.
"""

import numpy as np
from numba import prange

from refvit.errors import InputError
from refvit.kernels import check_float, threads
from refvit.kernels.activations import gelu_numpy, gelu_scalar
from refvit.kernels.jit import njit
from refvit.kernels.blas import gemm
from refvit.kernels.threads import blocked


def _check_args(x, weight, bias, residual=None):
    check_float(x, "x")
    if (not isinstance(weight, np.ndarray) or weight.ndim != 2 or x.ndim < 1 or weight.shape[1] != x.shape[-1]
            or (bias is not None and np.shape(bias) != weight.shape[:1])):
        raise InputError(f"linear: weight {np.shape(weight)} must be (out, {x.shape[-1] if x.ndim else '?'}) and bias "
                         f"{np.shape(bias) if bias is not None else None} (out,) for x {x.shape}")
    if residual is not None and (not isinstance(residual, np.ndarray) or
                                 residual.shape != (*x.shape[:-1], weight.shape[0])):
        raise InputError(f"linear: residual {np.shape(residual)} must be the output's shape "
                         f"{(*x.shape[:-1], weight.shape[0])}")


def linear_numpy(x, weight, bias=None, residual=None, gelu=False):
    """x (..., in) -> (..., out) = x @ weightᵀ + bias; then GELU if `gelu`; then + residual (..., out) if given."""
    _check_args(x, weight, bias, residual)
    y = x @ weight.T
    if bias is not None:
        y += bias
    if gelu:
        y = gelu_numpy(y)
    if residual is not None:
        y += residual
    return y


@njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
def _epilogue(y, bias, gelu, residual, has_residual, r0, r1, c0, c1):
    # y[r0:r1, c0:c1], one block's GEMM output, in place: gelu(y + bias) if gelu (else the bias is in already),
    # then + residual. Indexed through the whole C-contiguous y (and residual) rather than a strided view, so that
    # each row's loop is contiguous and vectorises; through a scratch row, which LLVM can tell apart from y.
    n = c1 - c0
    row = np.empty(n, y.dtype)
    for r in range(r0, r1):
        if gelu:
            for j in range(n):
                row[j] = gelu_scalar(y[r, c0 + j] + bias[c0 + j])
        else:
            for j in range(n):
                row[j] = y[r, c0 + j]
        if has_residual:
            for j in range(n):
                row[j] += residual[r, c0 + j]
        for j in range(n):
            y[r, c0 + j] = row[j]


@blocked(fastmath=False, error_model="numpy")
def _linear_blocks(x, weight_t, bias, has_bias, gelu, residual, has_residual, by_column, y, bounds):
    # x (M, in), weight_t (in, out) a transposed view, y and residual (M, out). Block i owns the rows
    # bounds[i]:bounds[i + 1] or, by_column, those output columns (all rows): each thread then packs only its share
    # of the weight, which pays at batch-1 sizes (M ≈ 200 rows). One GEMM per block onto y pre-filled with the bias
    # (with GELU: the GEMM alone, then bias and GELU in one pass, as bias_gelu), then the residual added.
    M, N = y.shape
    for i in prange(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1]
        r0, r1, c0, c1 = (0, M, lo, hi) if by_column else (lo, hi, 0, N)
        o = y[r0:r1, c0:c1]
        if has_bias and not gelu:
            for r in range(o.shape[0]):      # element loops, not slice copies: no error-message code to
                for j in range(c1 - c0):       # compile on a cold start (seconds)
                    o[r, j] = bias[c0 + j]
        gemm(x[r0:r1, :], weight_t[:, c0:c1], o, 1.0 if has_bias and not gelu else 0.0)
        if gelu or has_residual:
            _epilogue(y, bias, gelu, residual, has_residual, r0, r1, c0, c1)


COLUMN_SPLIT_ROWS = 512  # at most this many rows: split the output columns, not the rows (see linear_numba)


def linear_numba(x, weight, bias=None, residual=None, gelu=False):
    """Twin of `linear_numpy`: one GEMM per block of rows (or, for few rows, of output columns), the blocks chosen
    by the sizes alone (so the bits do not depend on any thread count), run across Numba's threads with BLAS held
    at one thread (refvit.kernels.threads); one block after the other only where that BLAS cannot be limited and
    runs threads itself (two layers of threads would oversubscribe the cores). GELU and the residual add are each
    block's epilogue (no second parallel region, no temporary)."""
    _check_args(x, weight, bias, residual)
    dtype = np.result_type(x, weight)
    x2 = np.require(x.reshape(-1, x.shape[-1]), dtype, ["C", "A"])     # (M, in)
    if not (weight.flags.c_contiguous or weight.flags.f_contiguous) or weight.dtype != dtype:
        weight = np.ascontiguousarray(weight, dtype)
    has_bias = bias is not None
    bias = np.require(bias if has_bias else np.zeros(weight.shape[0], dtype), dtype, ["C", "A"])
    has_residual = residual is not None
    residual = (np.require(residual, dtype, ["C", "A"]).reshape(-1, weight.shape[0]) if has_residual
                else np.empty((0, 0), dtype))
    y = np.empty((x2.shape[0], weight.shape[0]), dtype)                 # (M, out)
    M, (N, K) = len(x2), weight.shape
    by_column = M <= COLUMN_SPLIT_ROWS  # 2 cores, M = 197, N >= 576: 178-195 GFLOP/s by columns, 152-183 by rows;
    if by_column:                       # M = 1576: 213 by rows, 207 by columns
        bounds = threads.blocks(N, M * K // 8, threads.MIN_GEMM_BLOCK)      # ~2·M·in flops per column
    else:
        bounds = threads.blocks(M, N * K // 8, threads.MIN_GEMM_BLOCK)      # ~2·in·out flops per row
    if not has_residual:
        residual = y                                                    # a same-typed stand-in, never read
    _linear_blocks(x2, weight.T, bias, has_bias, bool(gelu), residual, has_residual, by_column, y, bounds)
    return y.reshape(*x.shape[:-1], weight.shape[0])
