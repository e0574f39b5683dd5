"""refvit's own thread split (refvit/kernels/threads.py): row blocks, image blocks, head blocks and GEMM column
blocks give the same bits as one block, for every thread count; the `linear` kernel against its NumPy twin."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refvit import kernels
from refvit.errors import InputError
from refvit.kernels import conv as conv_module
from refvit.kernels import linear as linear_module
from refvit.kernels import threads

NP = kernels.get("numpy")
NB = kernels.get("numba")
FAST = settings(max_examples=20, deadline=None)


@pytest.fixture
def split(monkeypatch):
    """split(n): run the Numba kernels as if refvit had n threads and numpy's BLAS one, with every block split."""
    def set_threads(n):
        monkeypatch.setattr(threads, "num_threads", lambda: n)
        monkeypatch.setattr(threads, "MIN_WORK_PER_BLOCK", 1)
        monkeypatch.setattr(threads, "MIN_GEMM_BLOCK", 1)
        monkeypatch.setattr(threads, "MAX_BLOCKS", 8)  # more blocks than threads, whatever this machine has
        for module in (linear_module, conv_module):
            monkeypatch.setattr(module, "blas_threads", lambda: 1)
    return set_threads


def run_all(rng, dtype):
    """One call of every split kernel on odd shapes; returns their outputs."""
    x = rng.standard_normal((3, 7, 12)).astype(dtype)
    w, b = rng.standard_normal((5, 12)).astype(dtype), rng.standard_normal(5).astype(dtype)
    q, k, v = (rng.standard_normal((3, 7, 12)).astype(dtype) for _ in range(3))
    q1 = q[:1]
    bias = rng.standard_normal((3, 7, 7)).astype(dtype)
    img = rng.standard_normal((2, 3, 9, 11)).astype(dtype)
    cw, cb = rng.standard_normal((4, 3, 3, 3)).astype(dtype), rng.standard_normal(4).astype(dtype)
    return [NB.linear(x, w, b), NB.linear(x, w), NB.layer_norm(x, x[0, 0], x[1, 1], 1e-6),
            NB.bias_gelu(x, x[0, 0]), *NB.attention(q, k, v, 3, 0.5, bias=bias, need_probs=True),
            *NB.attention(q1, k[:1], v[:1], 3, 0.5, need_probs=True), NB.conv2d(img, cw, cb, padding=1),
            NB.conv2d(img, cw[:, :, :1, :1], None, stride=2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_gives_the_same_bits_for_every_thread_count(split, monkeypatch, dtype):
    outs = {}
    for n in (1, 2, 3, 5):
        split(n)
        outs[n] = run_all(np.random.default_rng(0), dtype)
    for module in (linear_module, conv_module):  # BLAS threaded: the same blocks, one after the other
        monkeypatch.setattr(module, "blas_threads", lambda: 2)
    outs[0] = run_all(np.random.default_rng(0), dtype)
    for n in (0, 2, 3, 5):
        for a, b in zip(outs[1], outs[n]):
            assert a.dtype == dtype and np.array_equal(a, b), n


@FAST
@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]), st.integers(1, 40),
       st.integers(1, 9), st.integers(1, 9), st.booleans())
def test_linear_twins(seed, dtype, m, n_in, n_out, with_bias):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, n_in)).astype(dtype)
    w = rng.standard_normal((n_out, n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype) if with_bias else None
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if b is None else b)
    got_np, got_nb = NP.linear(x, w, b), NB.linear(x, w, b)
    assert got_np.dtype == got_nb.dtype == dtype and got_np.shape == got_nb.shape == (m, n_out)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got in (got_np, got_nb):
        assert np.abs(got - ref).max() <= tol * max(1.0, np.abs(ref).max()) * n_in


@pytest.mark.parametrize("backend", [NP, NB])
def test_linear_refuses_mismatched_shapes(backend):
    x = np.ones((2, 4), np.float32)
    with pytest.raises(InputError, match="linear"):
        backend.linear(x, np.ones((3, 5), np.float32))
    with pytest.raises(InputError, match="linear"):
        backend.linear(x, np.ones((3, 4), np.float32), np.ones(2, np.float32))
    with pytest.raises(InputError, match="float32 or float64"):
        backend.linear(x.astype(np.int64), np.ones((3, 4), np.float32))


def test_blas_threads_reads_the_variables_openblas_reads(monkeypatch):
    for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.blas_threads() == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert threads.blas_threads() == 1
