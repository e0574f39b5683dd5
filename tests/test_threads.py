"""refvit's thread split (refvit/kernels/threads.py): GEMM row and column blocks, (image, head, query-chunk) blocks
of attention, row blocks of layer norm and GELU, pixel blocks of conv GEMMs give the same bits for every Numba
thread count and serially; `gemm` (refvit/kernels/blas.py) on strided and transposed views; `linear` against its
NumPy twin."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refvit import kernels
from refvit.errors import InputError
from refvit.kernels import conv as conv_module
from refvit.kernels import linear as linear_module
from refvit.kernels import threads
from refvit.kernels.blas import gemm

NP = kernels.get("numpy")
NB = kernels.get("numba")
FAST = settings(max_examples=20, deadline=None)


@pytest.fixture
def split(monkeypatch):
    """split(n): run the Numba kernels on min(n, NUMBA_NUM_THREADS) Numba threads (1: the serial build) with BLAS
    single-threaded, every block split (more blocks than threads, whatever this machine has)."""
    import numba

    before = numba.get_num_threads()

    def set_threads(n):
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        monkeypatch.setattr(threads, "MIN_WORK_PER_BLOCK", 1)
        monkeypatch.setattr(threads, "MIN_GEMM_BLOCK", 1)
        monkeypatch.setattr(threads, "MAX_BLOCKS", 8)
        monkeypatch.setattr(threads, "blas_threads", lambda: 1)  # else every kernel runs serially
    yield set_threads
    numba.set_num_threads(before)


def run_all(rng, dtype):
    """One call of every split kernel on odd shapes; returns their outputs."""
    x = rng.standard_normal((3, 7, 12)).astype(dtype)
    w, b = rng.standard_normal((5, 12)).astype(dtype), rng.standard_normal(5).astype(dtype)
    q, k, v = (rng.standard_normal((3, 7, 12)).astype(dtype) for _ in range(3))
    q1 = q[:1]
    bias = rng.standard_normal((3, 7, 7)).astype(dtype)
    img = rng.standard_normal((2, 3, 9, 11)).astype(dtype)
    cw, cb = rng.standard_normal((4, 3, 3, 3)).astype(dtype), rng.standard_normal(4).astype(dtype)
    tall = rng.standard_normal((linear_module.COLUMN_SPLIT_ROWS + 3, 12)).astype(dtype)  # row blocks, not columns
    return [NB.linear(x, w, b), NB.linear(x, w), NB.linear(tall, w, b), NB.layer_norm(x, x[0, 0], x[1, 1], 1e-6),
            NB.bias_gelu(x, x[0, 0]), *NB.attention(q, k, v, 3, 0.5, bias=bias, need_probs=True),
            *NB.attention(q1, k[:1], v[:1], 3, 0.5, need_probs=True), NB.conv2d(img, cw, cb, padding=1),
            NB.conv2d(img, cw[:, :, :1, :1], None, stride=2), NB.conv2d(img, cw.repeat(80, axis=0), cb.repeat(80)),
            NB.group_norm_act(img, 3, img[0, :, 0, 0], img[1, :, 0, 0], 1e-5, relu=True),
            NB.max_pool2d(img, 3, 2, (1, 1, 1, 1)),
            NB.depthwise_conv_tokens(x[:, :6], 2, 3, cw[:1, :1].repeat(12, axis=0).reshape(12, 1, 3, 3), x[0, 0],
                                     (1, 1), (1, 1))[0]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_gives_the_same_bits_for_every_thread_count(split, monkeypatch, dtype):
    outs = {}
    for n in (1, 2, 3, 5):
        split(n)
        outs[n] = run_all(np.random.default_rng(0), dtype)
    import numba
    if numba.config.NUMBA_NUM_THREADS > 1:  # the parallel builds ran (not only the serial ones)
        assert linear_module._linear_blocks.parallel.signatures
        assert conv_module._conv_gemm_blocks.parallel.signatures
    monkeypatch.setattr(threads, "blas_threads", lambda: 2)  # BLAS threaded: the same blocks, serially
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
    threads.blas_threads.cache_clear()  # read once per process, as OpenBLAS does; again here
    try:
        assert threads.blas_threads() == 3
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
        assert threads.blas_threads() == 3  # cached
        threads.blas_threads.cache_clear()
        assert threads.blas_threads() == 1
    finally:
        monkeypatch.undo()
        threads.blas_threads.cache_clear()


@FAST
@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]), st.integers(0, 9), st.integers(0, 9),
       st.integers(0, 9), st.booleans(), st.booleans(), st.booleans(), st.sampled_from([0.0, 1.0]))
def test_gemm_on_strided_and_transposed_views(seed, dtype, m, k, n, a_t, b_t, c_wide, beta):
    """gemm(a, b, c, beta) = a @ b + beta·c for row- or column-major operands with padding between rows (leading
    dimensions larger than the shape) and for a c that is a column slice of a wider array, nothing outside touched."""
    rng = np.random.default_rng(seed)

    def operand(rows, cols, transposed):  # a view (rows, cols) with a unit stride along one axis and a padded other
        if transposed:
            return rng.standard_normal((cols, rows + 3)).astype(dtype)[:, 1:rows + 1].T
        return rng.standard_normal((rows, cols + 3)).astype(dtype)[:, 2:cols + 2]

    a, b = operand(m, k, a_t), operand(k, n, b_t)
    wide = rng.standard_normal((m, n + (5 if c_wide else 0))).astype(dtype)
    before = wide.copy()
    c = wide[:, 2:n + 2] if c_wide else wide
    expected = a.astype(np.float64) @ b.astype(np.float64) + beta * c.astype(np.float64)
    gemm(a, b, c, beta)
    tol = (1e-5 if dtype == np.float32 else 1e-12) * max(1, k) * max(1.0, np.abs(expected).max(initial=0))
    assert np.abs(c - expected).max(initial=0) <= tol
    if c_wide:  # the columns around the slice are untouched
        assert np.array_equal(wide[:, :2], before[:, :2]) and np.array_equal(wide[:, n + 2:], before[:, n + 2:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_take_non_contiguous_inputs(dtype):
    """Transposed weights and strided activations reach the Numba kernels (which want unit strides) as copies or
    views they can use; results equal the NumPy twins'."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 16, 24)).astype(dtype)[:, :, ::2]           # (5, 16, 12), stride 2 along channels
    w = np.asfortranarray(rng.standard_normal((7, 12)).astype(dtype))        # column-major weight
    w_strided = rng.standard_normal((7, 24)).astype(dtype)[:, ::2]          # neither C nor F contiguous
    for weight in (w, w_strided):
        np.testing.assert_allclose(NB.linear(x, weight, None), NP.linear(x, weight, None), rtol=1e-5, atol=1e-5)
    q = rng.standard_normal((2, 6, 16)).astype(dtype)[:, :, ::2]
    np.testing.assert_allclose(NB.attention(q, q, q, 2, 0.3)[0], NP.attention(q, q, q, 2, 0.3)[0], rtol=1e-5,
                               atol=1e-6)


def test_parallel_and_serial_builds_have_their_own_cache_files():
    """Numba names its on-disk cache after the function, not its options: the two builds of a blocked kernel must
    not share a name, or the parallel one loads the serial machine code (it did: BiT's convs ran on one core)."""
    import importlib

    found = []
    for module in set(kernels.KERNELS.values()):
        for value in vars(importlib.import_module(f"refvit.kernels.{module}")).values():
            if isinstance(value, threads.Blocked):
                found.append(value)
                names = [getattr(d._cache, "_index_name", d.py_func.__qualname__) for d in (value.serial, value.parallel)]
                assert names[0] != names[1], value.__name__
                assert value.parallel.targetoptions.get("parallel") and not value.serial.targetoptions.get("parallel")
    assert len(found) >= 10  # linear, attention, layer norm, GELU ×2, conv GEMM, im2col, max pool, group norm, dwconv


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_image_by_image_path_matches_the_twin(monkeypatch, dtype):
    """A batch whose im2col columns pass COLS_BATCH_BYTES goes one image at a time (BiT at 448²); forced here."""
    rng = np.random.default_rng(5)
    img = rng.standard_normal((3, 4, 9, 11)).astype(dtype)
    w, b = rng.standard_normal((6, 2, 3, 3)).astype(dtype), rng.standard_normal(6).astype(dtype)
    whole = NB.conv2d(img, w, b, stride=(2, 1), padding=(1, 0, 2, 1), groups=2)
    monkeypatch.setattr(conv_module, "COLS_BATCH_BYTES", 0)
    one_by_one = NB.conv2d(img, w, b, stride=(2, 1), padding=(1, 0, 2, 1), groups=2)
    expected = NP.conv2d(img, w, b, stride=(2, 1), padding=(1, 0, 2, 1), groups=2)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got in (whole, one_by_one):
        assert got.dtype == dtype and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_gemm_split_matches_the_twin(split, dtype):
    """Both ways of cutting each GEMM — linear by output columns (≤ COLUMN_SPLIT_ROWS rows) or by rows, conv by
    output pixels or (≥ CHANNEL_SPLIT per group) by output channels — give the NumPy twin's result, bias included."""
    split(2)
    rng = np.random.default_rng(9)
    w, b = rng.standard_normal((7, 12)).astype(dtype), rng.standard_normal(7).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for rows in (5, linear_module.COLUMN_SPLIT_ROWS + 3):
        x = rng.standard_normal((rows, 12)).astype(dtype)
        for bias in (b, None):
            np.testing.assert_allclose(NB.linear(x, w, bias), NP.linear(x, w, bias), rtol=tol, atol=tol)
    img = rng.standard_normal((2, 4, 6, 5)).astype(dtype)
    for cout in (6, 2 * conv_module.CHANNEL_SPLIT):
        cw, cb = rng.standard_normal((cout, 2, 3, 3)).astype(dtype), rng.standard_normal(cout).astype(dtype)
        for bias in (cb, None):
            np.testing.assert_allclose(NB.conv2d(img, cw, bias, padding=1, groups=2),
                                       NP.conv2d(img, cw, bias, padding=1, groups=2), rtol=tol, atol=tol)
