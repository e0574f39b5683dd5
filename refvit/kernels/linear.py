"""torch.nn.Linear: y = x Wᵀ + b over the last axis, W of shape (out, in) as the checkpoint stores it.

The GEMM is BLAS's (numpy's matmul reads Wᵀ in place, no copy). The Numba-backend twin cuts the rows of x into
blocks, one GEMM each, run across refvit's threads (refvit.kernels.threads) when numpy's BLAS is single-threaded
(OPENBLAS_NUM_THREADS=1): the GEMMs and the element-wise kernels between them then share one pool of threads
instead of two pools fighting for the cores.
"""

import numpy as np

from refvit.errors import InputError
from refvit.kernels import check_float, threads
from refvit.kernels.threads import blas_threads, for_blocks


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


def linear_numba(x, weight, bias=None):
    """Twin of `linear_numpy`: one GEMM per block of rows, the blocks chosen by the sizes alone (so the bits do not
    depend on any thread count), run across refvit's threads when BLAS is single-threaded; when BLAS runs threads
    itself, one block after the other (two layers of threads would oversubscribe the cores)."""
    _check_args(x, weight, bias)
    x2 = x.reshape(-1, x.shape[-1])                                      # (M, in)
    y = np.empty((x2.shape[0], weight.shape[0]), np.result_type(x, weight))  # (M, out)

    def rows(lo, hi):
        np.matmul(x2[lo:hi], weight.T, out=y[lo:hi])
        if bias is not None:
            y[lo:hi] += bias

    for_blocks(rows, len(x2), weight.size // 8, threads.MIN_GEMM_BLOCK, blas_threads() == 1)  # ~2·in·out flops/row
    return y.reshape(*x.shape[:-1], weight.shape[0])
