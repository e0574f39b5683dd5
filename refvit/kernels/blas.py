"""`gemm(a, b, c, beta)`: c = a @ b + beta·c, BLAS's sgemm/dgemm called from inside Numba kernels.

Numba's own `np.dot` wants contiguous operands; the kernels here multiply strided views (one head's channels of q,
a block of output pixels of a conv) and want the bias folded in. So this calls the BLAS routine Numba's `np.dot`
calls — `numba_xxgemm`, Numba's C helper around scipy's `scipy.linalg.cython_blas` (scipy's bundled OpenBLAS) —
with explicit leading dimensions. No Python object is touched: the kernels that call it run with the GIL released
and in Numba's parallel loops.

Row-major to column-major: BLAS sees a row-major (M, N) matrix with row stride s as its transpose (N, M) with
leading dimension s, so c = a @ b is asked as cᵀ = bᵀ @ aᵀ (the operands swap places and nothing is copied).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic
from numba.np.linalg import ensure_blas

from refvit.kernels.jit import njit

ensure_blas()  # scipy's cython_blas must be importable (scipy is a runtime dependency)

_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char,                                   # kind: 's' float32, 'd' float64
    types.char, types.char,                       # transa, transb: 'n' or 't'
    types.intp, types.intp, types.intp,           # m, n, k
    types.voidptr, types.voidptr, types.intp,     # alpha, a, lda
    types.voidptr, types.intp, types.voidptr,     # b, ldb, beta
    types.voidptr, types.intp))                   # c, ldc


@intrinsic
def _data(typingctx, arr):
    """The address of arr's first element (a view's, offset included) as a void pointer."""
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.bitcast(array.data, ir.IntType(8).as_pointer())
    return types.voidptr(arr), codegen


@njit(cache=True, nogil=True)
def _operand(x):
    """How BLAS reads a row-major-indexed matrix x (r, c) that has a unit stride along one axis: its transpose flag
    and leading dimension (column-major)."""
    size = x.itemsize
    if x.shape[1] == 1 or x.strides[1] == size:   # rows contiguous: BLAS sees xᵀ as stored, no transpose
        return ord("n"), max(x.strides[0] // size, x.shape[1], 1)
    return ord("t"), max(x.strides[1] // size, x.shape[0], 1)  # columns contiguous: stored as x column-major


@njit(cache=True, nogil=True)
def gemm(a, b, c, beta):
    """c = a @ b + beta·c in place (beta 0: c is only written; 1: accumulate, e.g. onto a bias already in c).

    a (M, K), b (K, N), c (M, N) of one dtype (float32/float64); a and b each need a unit stride along one axis
    (any leading dimension), c along its columns. A sum over K = 0 is zero."""
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:
        if beta == 0:
            c[:, :] = 0
        return
    scalars = np.empty(2, c.dtype)
    scalars[0] = 1
    scalars[1] = beta
    transa, lda = _operand(b)
    transb, ldb = _operand(a)
    ldc = max(c.strides[0] // c.itemsize, N, 1)
    kind = ord("s") if c.itemsize == 4 else ord("d")
    _xxgemm(kind, transa, transb, N, M, K, _data(scalars), _data(b), lda, _data(a), ldb, _data(scalars[1:]),
            _data(c), ldc)
