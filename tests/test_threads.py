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
    """split(n): run the Numba kernels on min(n, NUMBA_NUM_THREADS) Numba threads (1: the serial build), every block
    split (more blocks than threads, whatever this machine has)."""
    import numba

    before = numba.get_num_threads()

    def set_threads(n):
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        monkeypatch.setattr(threads, "MIN_WORK_PER_BLOCK", 1)
        monkeypatch.setattr(threads, "MIN_GEMM_BLOCK", 1)
        monkeypatch.setattr(threads, "MAX_BLOCKS", 8)
    yield set_threads
    numba.set_num_threads(before)


def serial_fallback(monkeypatch):
    """As where the BLAS Numba calls cannot be found and was started threaded: blocked kernels run serially."""
    monkeypatch.setattr(threads, "numba_blas", lambda: None)
    monkeypatch.setattr(threads, "blas_threads", lambda: 2)


def run_all(rng, dtype):
    """One call of every split kernel on odd shapes; returns their outputs."""
    x = rng.standard_normal((3, 7, 12)).astype(dtype)
    w, b = rng.standard_normal((5, 12)).astype(dtype), rng.standard_normal(5).astype(dtype)
    q, k, v = (rng.standard_normal((3, 7, 12)).astype(dtype) for _ in range(3))
    q1 = q[:1]
    qkv = rng.standard_normal((3, 7, 36)).astype(dtype)
    bias = rng.standard_normal((3, 7, 7)).astype(dtype)
    img = rng.standard_normal((2, 3, 9, 11)).astype(dtype)
    cw, cb = rng.standard_normal((4, 3, 3, 3)).astype(dtype), rng.standard_normal(4).astype(dtype)
    tall = rng.standard_normal((linear_module.COLUMN_SPLIT_ROWS + 3, 12)).astype(dtype)  # row blocks, not columns
    return [NB.linear(x, w, b), NB.linear(x, w), NB.linear(tall, w, b), NB.layer_norm(x, x[0, 0], x[1, 1], 1e-6),
            NB.bias_gelu(x, x[0, 0]), *NB.attention(q, k, v, 3, 0.5, bias=bias, need_probs=True),
            *NB.attention(q1, k[:1], v[:1], 3, 0.5, need_probs=True), NB.conv2d(img, cw, cb, padding=1),
            NB.attention(qkv[..., :12], qkv[..., 12:24], qkv[..., 24:], 3, 0.5)[0],   # strided, as a fused q/k/v GEMM
            NB.linear(x, np.concatenate([w, w, w]), np.concatenate([b, b, b])),
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
    serial_fallback(monkeypatch)                            # no BLAS to limit: the same blocks, serially
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
def test_conv_chunked_path_matches_the_twin_and_keeps_its_bits(split, monkeypatch, dtype):
    """Convs whose columns pass CHUNKED_FROM_BYTES (BiT's big 3×3s and stem) go by chunks of output rows, im2col and
    GEMM together; forced here with chunks of a few rows (the last one short), strides, dilation, asymmetric padding
    and a batch: the twin's result, and the same bits for every thread count and serially."""
    monkeypatch.setattr(conv_module, "CHUNKED_FROM_BYTES", 0)
    monkeypatch.setattr(conv_module, "CHUNK_COLS_BYTES", 1)             # one output row per chunk at most
    rng = np.random.default_rng(11)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    problems = [((3, 4, 11, 9), (5, 4, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
                ((2, 3, 13, 10), (6, 3, 7, 7), (2, 2), (3, 2, 3, 3), (1, 1)),
                ((1, 2, 12, 12), (4, 2, 3, 2), (2, 1), (0, 1, 2, 0), (2, 2))]
    for rows_bytes in (1, 1 << 20):                                     # one row per chunk; the whole image
        monkeypatch.setattr(conv_module, "CHUNK_COLS_BYTES", rows_bytes)
        for xs, ws, stride, padding, dilation in problems:
            x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
            b = rng.standard_normal(ws[0]).astype(dtype)
            expected = NP.conv2d(x, w, b, stride, padding, dilation)
            outs = []
            for n in (1, 2, 3):
                split(n)
                outs.append(NB.conv2d(x, w, b, stride, padding, dilation))
                outs.append(NB.conv2d(x, w, None, stride, padding, dilation))
            np.testing.assert_allclose(outs[0], expected, rtol=tol, atol=tol)
            np.testing.assert_allclose(outs[1], NP.conv2d(x, w, None, stride, padding, dilation), rtol=tol, atol=tol)
            for k, got in enumerate(outs):
                assert got.dtype == dtype and np.array_equal(got, outs[k % 2]), (xs, k)
    monkeypatch.setattr(conv_module, "CHUNK_COLS_BYTES", 1)
    assert conv_module.chunk_rows(1, 9, 11, 9, 8) == 1
    monkeypatch.setattr(conv_module, "CHUNK_COLS_BYTES", 1 << 20)
    assert conv_module.chunk_rows(1, 9, 11, 9, 8) == -(-11 // threads.MAX_BLOCKS)  # a chunk for every block


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_shifted_path_matches_the_twin_and_keeps_its_bits(split, monkeypatch, dtype):
    """Stride-1 convs with SHIFTED_FROM_BYTES of columns or more (below CHUNKED_FROM_BYTES: BiT's 3×3s at 28²) run
    one GEMM per kernel tap on the shifted padded input; forced here: odd kernels, dilation, asymmetric padding, a
    batch, bias or none, channel blocks of one: the twin's result, and the same bits for every thread count."""
    monkeypatch.setattr(conv_module, "SHIFTED_FROM_BYTES", 0)
    monkeypatch.setattr(conv_module, "CHUNKED_FROM_BYTES", 1 << 62)
    rng = np.random.default_rng(12)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    problems = [((3, 4, 11, 9), (5, 4, 3, 3), (1, 1, 1, 1), (1, 1)),
                ((2, 3, 8, 10), (6, 3, 2, 4), (0, 2, 3, 1), (1, 1)),
                ((1, 2, 12, 12), (4, 2, 3, 2), (1, 0, 2, 0), (2, 3)),
                ((2, 5, 4, 4), (3, 5, 1, 3), (0, 0, 0, 0), (1, 1))]       # a 1×3 kernel without padding
    for xs, ws, padding, dilation in problems:
        x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
        b = rng.standard_normal(ws[0]).astype(dtype)
        outs = []
        for n in (1, 2, 3):
            split(n)
            outs.append(NB.conv2d(x, w, b, 1, padding, dilation))
            outs.append(NB.conv2d(x, w, None, 1, padding, dilation))
        np.testing.assert_allclose(outs[0], NP.conv2d(x, w, b, 1, padding, dilation), rtol=tol, atol=tol)
        np.testing.assert_allclose(outs[1], NP.conv2d(x, w, None, 1, padding, dilation), rtol=tol, atol=tol)
        for k, got in enumerate(outs):
            assert got.dtype == dtype and got.flags.c_contiguous and np.array_equal(got, outs[k % 2]), (xs, k)


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


# ----------------------------------------------------------------------------------------------------------------------
# forward_scope: the OpenBLAS Numba calls runs on one thread during refvit's forward, and only then

TINY_VIT = {"model_type": "vit", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 256, "image_size": 64, "patch_size": 8, "id2label": {str(i): str(i) for i in range(5)},
            "architectures": ["ViTForImageClassification"]}


def tiny_model():
    import refvit
    from refvit import synthetic

    tensors = synthetic.random_state_dict(synthetic.shapes_for(TINY_VIT, "ViTForImageClassification"), seed=0)
    return refvit.from_state_dict(TINY_VIT, tensors), synthetic.random_pixel_values(4, 3, 64, 64, seed=1)


@pytest.fixture
def numba_blas_at_2():
    """The BLAS Numba calls (scipy's OpenBLAS) set to 2 threads, as a default process on 2+ cores has it; restored."""
    blas = threads.numba_blas()
    if blas is None:
        pytest.skip("scipy's BLAS here is not a bundled OpenBLAS that refvit can find (the serial fallback runs)")
    before = blas[0]()
    blas[1](2)
    yield blas
    blas[1](before)


def numpy_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import os
    numpy_dir = os.path.dirname(np.__file__)
    return [lib.num_threads for lib in threadpoolctl.ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and os.path.dirname(lib.filepath) in (numpy_dir, numpy_dir + ".libs")]


def test_forward_limits_numba_blas_only_during_the_forward(numba_blas_at_2):
    get = numba_blas_at_2[0]
    model, x = tiny_model()
    numpy_before = numpy_blas_threads()
    seen = []
    real = model.kernels
    from types import SimpleNamespace

    def spy_linear(*args, **kwargs):
        seen.append((get(), numpy_blas_threads()))
        return real.linear(*args, **kwargs)
    from refvit.bench import set_model_kernels
    set_model_kernels(model, SimpleNamespace(**{**vars(real), "linear": spy_linear}))
    model(x)
    assert seen and all(s == (1, numpy_before) for s in seen)   # scipy's BLAS at 1, numpy's as it was
    assert get() == 2 and numpy_blas_threads() == numpy_before  # both as before after the forward


def test_kernel_called_alone_limits_and_restores(numba_blas_at_2):
    x, w = np.ones((300, 64), np.float32), np.ones((96, 64), np.float32)
    NB.linear(x, w)
    assert numba_blas_at_2[0]() == 2


def test_results_bit_identical_with_and_without_the_limit(numba_blas_at_2, monkeypatch):
    """The limit changes who runs the GEMMs (Numba's threads, BLAS single-threaded) and never the bits: against
    the serial fallback, where OpenBLAS threads each GEMM itself."""
    model, x = tiny_model()
    rng = np.random.default_rng(0)
    a, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((197, 384), (1152, 384), (1152,)))
    limited = [model(x).logits, NB.linear(a, w, b), NB.linear(np.tile(a, (4, 1)), w, b)]
    serial_fallback(monkeypatch)
    threaded_blas = [model(x).logits, NB.linear(a, w, b), NB.linear(np.tile(a, (4, 1)), w, b)]
    for one, other in zip(limited, threaded_blas):
        assert np.array_equal(one, other)


def test_two_python_threads_run_models_at_once(numba_blas_at_2):
    """Two threads in forwards at once: the last one out restores the count; every result is the serial one."""
    from concurrent.futures import ThreadPoolExecutor

    model, x = tiny_model()
    expected = model(x).logits
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda _: model(x).logits, range(12)))
    assert all(np.array_equal(o, expected) for o in outs)
    assert numba_blas_at_2[0]() == 2


def test_scope_counts_threads_in_and_out(numba_blas_at_2):
    import threading

    get, scope = numba_blas_at_2[0], threads.forward_scope()
    inside, release = threading.Event(), threading.Event()

    def other():
        with scope:
            inside.set()
            release.wait(10)
    t = threading.Thread(target=other)
    with scope:
        t.start()
        inside.wait(10)
        assert get() == 1
    assert get() == 1                                       # the other thread is still inside
    release.set()
    t.join(10)
    assert get() == 2
