"""Split a kernel's independent rows (GEMM rows, attention images or heads) into blocks run across threads.

Why not Numba's `parallel=True`: its thread pool (OpenMP/workqueue) next to OpenBLAS's made whole models 3-5x
slower on 2 cores (two pools spinning for the same cores). Here the Numba kernels release the GIL (`nogil=True`) and
the blocks run on plain Python threads, between BLAS calls. The blocks depend on the sizes (and the machine's CPU
count) only, never on the thread settings (one thread runs them one after the other), so neither do the bits: a GEMM
split into other row blocks can round differently (OpenBLAS picks kernels by shape).
"""

import os
from concurrent.futures import ThreadPoolExecutor

MIN_WORK_PER_BLOCK = 1 << 15  # elements (roughly): a smaller block is cheaper to run than to hand to a thread
MAX_BLOCKS = min(8, 1 << ((os.cpu_count() or 1).bit_length() - 1))  # the power of two <= the CPU count, at most 8:
                                                                     # even shares; fewer, larger GEMMs when unthreaded
MIN_GEMM_BLOCK = 64           # GEMM blocks keep at least this many rows (or columns): thinner GEMMs run below peak

_pool = []  # one ThreadPoolExecutor, made on first use; it starts a thread only when a block needs one


def num_threads() -> int:
    """Numba's thread count (numba.set_num_threads, else NUMBA_NUM_THREADS / the CPU count), read without starting
    Numba's own thread pool (which `numba.get_num_threads()` would launch)."""
    import numba
    from numba.np.ufunc import parallel

    if getattr(parallel, "_is_initialized", False):
        return numba.get_num_threads()
    return numba.config.NUMBA_NUM_THREADS


def blas_threads() -> int:
    """The thread count numpy's OpenBLAS started with: it reads these variables once, at import, in this order."""
    for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def _executor() -> ThreadPoolExecutor:
    if not _pool:
        _pool.append(ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="refvit"))
    return _pool[0]


def blocks(n: int, work_per_item: int, min_items: int = 1) -> list[int]:
    """Bounds of the blocks [0, n) is cut into: 1, 2, 4 … MAX_BLOCKS near-equal blocks of at least
    MIN_WORK_PER_BLOCK work and `min_items` items, from the sizes alone."""
    count = 1
    while (count * 2 <= min(n, MAX_BLOCKS) and n * work_per_item // (count * 2) >= MIN_WORK_PER_BLOCK
           and n // (count * 2) >= min_items):
        count *= 2
    return [n * i // count for i in range(count + 1)]


def for_blocks(body, n: int, work_per_item: int, min_items: int = 1, threaded: bool = True) -> None:
    """body(lo, hi) for each block of [0, n) (see `blocks`), the blocks shared out across num_threads() threads
    (all on this thread when not `threaded`); this thread runs the first share. `work_per_item`: elements of work
    per item, which decides the blocks."""
    bounds = blocks(n, work_per_item, min_items)
    count = len(bounds) - 1
    workers = min(num_threads(), count) if threaded else 1

    def share(t):  # thread t runs blocks t·count/workers … (t+1)·count/workers - 1, in order
        for i in range(t * count // workers, (t + 1) * count // workers):
            body(bounds[i], bounds[i + 1])

    if workers <= 1:
        if count:
            share(0)
        return
    futures = [_executor().submit(share, t) for t in range(1, workers)]
    try:
        share(0)
    finally:
        for f in futures:
            f.result()
