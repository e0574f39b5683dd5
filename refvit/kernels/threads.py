"""Split a kernel's independent rows (GEMM rows, attention heads, output pixels) into blocks run across threads.

The blocks are Numba `prange` iterations: each blocked kernel is compiled twice from one body, with
`parallel=True` (the blocks shared out over Numba's threads, `numba.set_num_threads` / NUMBA_NUM_THREADS) and
without (one block after the other on the calling thread). The GEMMs inside call BLAS from Numba
(refvit.kernels.blas) with the GIL released, so nothing returns to Python between blocks: a parallel region costs
~2 µs to start, where handing a block to a Python thread cost ~40 µs plus the GIL (batch-1 GEMMs ran at 120 GFLOP/s
that way, 175 this way, on 2 cores).

The blocks depend on the sizes (and the machine's CPU count) only, never on the thread settings, so neither do the
bits: a GEMM split into other row blocks can round differently (OpenBLAS picks kernels by shape).

When BLAS was started with several threads (OPENBLAS_NUM_THREADS unset or > 1) every blocked kernel runs its
blocks serially and BLAS threads the GEMMs: two pools of spinning threads on the same cores (OpenBLAS's and Numba's
OpenMP) made DeiT-S batch 1 4.7× slower. Set OPENBLAS_NUM_THREADS=1 to let refvit thread them (README, Speed).
"""

import functools
import os
import threading
import types

import numpy as np

MIN_WORK_PER_BLOCK = 1 << 13  # elements (roughly): a smaller block is cheaper to run than to hand to a thread
MAX_BLOCKS = min(8, 1 << ((os.cpu_count() or 1).bit_length() - 1))  # the power of two <= the CPU count, at most 8:
                                                                     # even shares; fewer, larger GEMMs when unthreaded
MIN_GEMM_BLOCK = 64           # GEMM blocks keep at least this many rows (or columns): thinner GEMMs run below peak


def num_threads() -> int:
    """Numba's thread count (numba.set_num_threads, else NUMBA_NUM_THREADS / the CPU count), read without starting
    Numba's own thread pool (which `numba.get_num_threads()` would launch)."""
    if not _numba:
        import numba
        from numba.np.ufunc import parallel
        _numba.extend((numba, parallel))
    numba, parallel = _numba
    if getattr(parallel, "_is_initialized", False):
        return numba.get_num_threads()
    return numba.config.NUMBA_NUM_THREADS


_numba = []  # (numba, numba.np.ufunc.parallel), imported on the first num_threads() call (kernels are called often)


@functools.lru_cache(maxsize=1)
def blas_threads() -> int:
    """The thread count numpy's and scipy's OpenBLAS started with: they read these variables once, at load, in this
    order (so this reads them once too; `blas_threads.cache_clear()` to read them again)."""
    for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def blocks(n: int, work_per_item: int, min_items: int = 1) -> np.ndarray:
    """Bounds (int64, length count + 1) of the blocks [0, n) is cut into: 1, 2, 4 … MAX_BLOCKS near-equal blocks of
    at least MIN_WORK_PER_BLOCK work and `min_items` items, from the sizes alone. Read-only (shared between calls)."""
    return _blocks(n, work_per_item, min_items, MIN_WORK_PER_BLOCK, MAX_BLOCKS)


@functools.lru_cache(maxsize=4096)
def _blocks(n, work_per_item, min_items, min_work, max_blocks):
    count = 1
    while (count * 2 <= min(n, max_blocks) and n * work_per_item // (count * 2) >= min_work
           and n // (count * 2) >= min_items):
        count *= 2
    bounds = np.array([n * i // count for i in range(count + 1)], np.int64)
    bounds.flags.writeable = False
    return bounds


class Blocked:
    """A kernel whose first loop is `for i in prange(len(bounds) - 1)` over blocks, compiled both ways (see the
    module docstring); call it as `kernel(*args)`, the bounds among args."""

    def __init__(self, fn, **options):
        from refvit.kernels.jit import njit

        self.serial = njit(cache=True, nogil=True, **options)(fn)
        # A second function object with its own name: Numba's on-disk cache files are named after the function
        # (module, qualified name, line), not its options, so two builds of one function would load each other's.
        twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel", fn.__defaults__,
                                  fn.__closure__)
        twin.__qualname__ = fn.__qualname__ + "_parallel"
        self.parallel = njit(cache=True, nogil=True, parallel=True, **options)(twin)
        self.__doc__, self.__name__ = fn.__doc__, fn.__name__

    def __call__(self, *args):
        if blas_threads() > 1 or num_threads() == 1:
            return self.serial(*args)
        if _serialise_launches():
            with _launch_lock:
                return self.parallel(*args)
        return self.parallel(*args)


def blocked(**options):
    """Decorator: `Blocked(fn, **options)` (Numba options such as fastmath or error_model)."""
    return lambda fn: Blocked(fn, **options)


_launch_lock = threading.Lock()
_layer = []  # Numba's threading layer, read once its pool is up


def _serialise_launches() -> bool:
    """Numba's "workqueue" threading layer (used when neither OpenMP nor TBB is found) is not safe for parallel
    kernels launched from several Python threads at once; refvit then takes turns. "omp" and "tbb" are."""
    if not _layer:
        import numba
        from numba.np.ufunc import parallel
        try:
            parallel._launch_threads()
            _layer.append(numba.threading_layer())
        except Exception:  # an internal API changed: take turns, always safe
            _layer.append("unknown")
    return _layer[0] not in ("omp", "tbb")
