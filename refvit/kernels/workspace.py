"""Buffers a model's fused kernels write into, kept between forward calls (no fresh memory in the steady state).

A fresh array per kernel call costs page faults on every call: the allocator hands large blocks back to the system
and maps them again on the next call (DeiT-S at batch 8 took ~7,400 minor faults per forward that way, docs/speed.md).
A `Workspace` keeps one buffer per (name, shape, dtype) and hands the same one out again; only arrays that never
leave the forward live in it (the fused encoder blocks' layer norms, q/k/v, attention context, MLP hidden units and
residual streams), never a value the caller sees. `FRESH` is the same interface allocating a new array each time:
a call that records intermediates or returns hidden states or attention maps uses it, so the kernels and their
arithmetic are the same either way (docs/DESIGN.md §5), only where the values live differs.

Each model holds a `WorkspacePool`; a forward leases one workspace for its duration, so two Python threads running
one model at once never share buffers (the second gets a workspace of its own). Only refvit's own arrays: no
allocator setting is touched.
"""

import threading
from contextlib import contextmanager

import numpy as np

SHAPES_PER_NAME = 2   # buffers kept per name: a model called at two batch sizes in turn keeps both


class Workspace:
    """{(name, shape, dtype): array}, handed out again on every `get` with the same key."""

    reuses = True

    def __init__(self):
        self._buffers = {}

    def get(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """The buffer `name` of this shape and dtype (uninitialised the first time; afterwards what the last user left).
        At most SHAPES_PER_NAME shapes are kept per name: the oldest is dropped for a new one."""
        key = (name, tuple(int(s) for s in shape), np.dtype(dtype))
        buf = self._buffers.pop(key, None)
        if buf is None:
            same = [k for k in self._buffers if k[0] == name]
            for k in same[:max(0, len(same) - SHAPES_PER_NAME + 1)]:
                del self._buffers[k]
            buf = np.empty(key[1], key[2])
        self._buffers[key] = buf      # re-inserted: the dict's order is the order of last use
        return buf

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())


class _Fresh:
    """The Workspace interface without reuse: every `get` is a new array (values that leave the forward)."""

    reuses = False

    @staticmethod
    def get(name: str, shape: tuple, dtype) -> np.ndarray:
        return np.empty(tuple(shape), dtype)


FRESH = _Fresh()


class WorkspacePool:
    """A model's workspaces: `with pool.lease() as ws:` hands one out for a forward and takes it back afterwards. A
    thread that finds none free gets a new one; at most `keep` are kept."""

    def __init__(self, keep: int = 2):
        self._free = []
        self._lock = threading.Lock()
        self._keep = keep

    @contextmanager
    def lease(self):
        with self._lock:
            ws = self._free.pop() if self._free else Workspace()
        try:
            yield ws
        finally:
            with self._lock:
                if len(self._free) < self._keep:
                    self._free.append(ws)
