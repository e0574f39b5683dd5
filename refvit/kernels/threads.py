"""Split a kernel's independent rows (GEMM rows, attention heads, output pixels) into blocks run across threads.

The blocks are Numba `prange` iterations: each blocked kernel is compiled twice from one body, with
`parallel=True` (the blocks shared out over Numba's threads, `numba.set_num_threads` / NUMBA_NUM_THREADS) and
without (one block after the other on the calling thread). The GEMMs inside call BLAS from Numba
(refvit.kernels.blas) with the GIL released, so nothing returns to Python between blocks: a parallel region starts
far faster than a block handed to a Python thread, which also waits for the GIL (docs/speed.md, "Kernel choices").

The blocks depend on the sizes (and the machine's CPU count) only, never on the thread settings, so neither do the
bits: a GEMM split into other row blocks can round differently (OpenBLAS picks kernels by shape).

BLAS itself runs single-threaded inside refvit: two pools of spinning threads on the same cores (OpenBLAS's and
Numba's) made small forwards several times slower (docs/speed.md). `forward_scope()` (which `Model.__call__` and
every blocked kernel enter) sets the OpenBLAS that Numba calls, scipy's bundled one, found by its path, to one
thread and restores its previous count when the last scope in the process leaves; numpy's own BLAS, and scipy's
outside a forward, keep whatever the user set (no environment variable needed). Where that library cannot be found
(scipy built against a shared system BLAS, or not OpenBLAS) and BLAS was started threaded, the blocks run one after
the other and BLAS threads the GEMMs, as before.
"""

import ctypes
import functools
import glob
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
    order (so this reads them once too; `blas_threads.cache_clear()` to read them again). Used only where the BLAS
    Numba calls cannot be found to be limited (`numba_blas()` None): then a threaded BLAS means serial blocks."""
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
        if getattr(_inside, "depth", 0):                    # in a model's forward: BLAS already on one thread
            return self._run(args)
        with _SCOPE:                                        # a kernel called on its own: BLAS on one thread for it
            return self._run(args)

    def _run(self, args):
        if _SCOPE.serial_blocks or num_threads() == 1:
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


# ----------------------------------------------------------------------------------------------------------------------
# The BLAS Numba calls: one thread while refvit's kernels run, restored afterwards


def numba_blas():
    """(get, set) of the thread count of the OpenBLAS Numba's BLAS calls go to (scipy's, through
    scipy.linalg.cython_blas), or None when it cannot be found by its path: scipy's wheels bundle it as
    scipy.libs/ or scipy/.dylibs/ *openblas*, exporting `[scipy_]openblas_{get,set}_num_threads[64_]`."""
    if not _blas:
        _blas.append(_find_numba_blas())
    return _blas[0]


_blas = []


def _find_numba_blas():
    try:
        import scipy
        import scipy.linalg.cython_blas  # noqa: F401 - loads the library (Numba's BLAS calls resolve through it)
    except ImportError:
        return None
    root = os.path.dirname(scipy.__file__)
    paths = [p for d in (root + ".libs", os.path.join(root, ".dylibs"), root)
             for p in sorted(glob.glob(os.path.join(d, "*openblas*")))]
    mode = getattr(os, "RTLD_NOLOAD", 0) | getattr(os, "RTLD_LOCAL", 0)   # the copy already loaded, never a second
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=mode)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("", "64_"):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, get.argtypes = ctypes.c_int, []
                    put.restype, put.argtypes = None, [ctypes.c_int]
                    return get, put
    return None


class _ForwardScope:
    """The region where refvit's kernels run: Numba's BLAS on one thread, the blocks on Numba's threads.

    Re-entrant and shared by every Python thread: the first thread in saves the library's thread count and sets 1,
    the last one out restores the saved count (a lock around a count of the threads inside). Costs two ctypes calls
    on entry from outside and a lock; a blocked kernel inside a scope only reads a thread-local count.
    A thread count set on that library by someone else while a forward runs is replaced by the saved one when the
    last forward leaves."""

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._restore = None        # (set, previous count) while the count is held at 1
        self.serial_blocks = False  # no library to limit and BLAS threaded: the blocks run serially

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                blas = numba_blas()
                self.serial_blocks = blas is None and blas_threads() > 1
                self._restore = None
                if blas is not None:
                    saved = blas[0]()
                    if saved != 1:
                        blas[1](1)
                        self._restore = (blas[1], saved)
            self._depth += 1
        _inside.depth = getattr(_inside, "depth", 0) + 1   # after the count: a failed entry leaves no trace
        return self

    def __exit__(self, *exc):
        _inside.depth -= 1
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._restore is not None:
                put, saved = self._restore
                self._restore = None
                put(saved)
        return False


_SCOPE = _ForwardScope()
_inside = threading.local()  # .depth: how many scopes this Python thread is in (kernels skip the lock inside one)


def forward_scope() -> _ForwardScope:
    """`with forward_scope(): ...` runs refvit's kernels with Numba's BLAS single-threaded and the blocks on Numba's
    threads; the previous BLAS thread count comes back when the last scope in the process leaves. `Model.__call__`
    wraps its forward in it, so the switch costs once per call, not per kernel."""
    return _SCOPE
