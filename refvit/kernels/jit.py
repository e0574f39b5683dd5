"""`njit` for refvit's kernels: Numba's, with the on-disk cache whenever Numba has somewhere to write it.

Numba caches compiled kernels in `__pycache__` beside the source or, when that is read-only (a package installed
into a read-only site-packages), in the user cache directory (`NUMBA_CACHE_DIR`, else ~/.cache/numba). When neither
is writable, `numba.njit(cache=True)` raises at decoration time ("no locator available"), which would make
`import refvit.kernels.norm` fail; refvit then compiles in memory every run instead, and says so once.
"""

import warnings

import numba

NO_CACHE_WARNING = ("refvit: Numba has no writable cache directory for {file} (read-only package and ~/.cache?); "
                    "kernels compile on every run. Set NUMBA_CACHE_DIR to a writable directory to cache them.")


_warned = []  # the warning is given once per process, not once per kernel


def njit(*, cache=False, **options):
    """numba.njit(**options), with `cache=True` honoured when a cache directory is usable (see module docstring)."""
    def decorate(fn):
        if cache:
            try:
                return numba.njit(cache=True, **options)(fn)
            except RuntimeError as e:
                if "no locator available" not in str(e):
                    raise
                if not _warned:
                    warnings.warn(NO_CACHE_WARNING.format(file=fn.__code__.co_filename), RuntimeWarning, stacklevel=2)
                    _warned.append(True)
        return numba.njit(**options)(fn)
    return decorate
