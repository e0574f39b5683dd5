"""Kernels: every Numba kernel against its NumPy twin (hypothesis, odd shapes, both dtypes), and the
NumPy twins against torch where torch is installed (those tests skip without it).

Tolerance, as in docs/DESIGN.md §7: max|got - ref| <= TOL[dtype] * max(1, max|ref|), with
TOL = 1e-5 for float32 and 1e-12 for float64 (bicubic/bilinear vs torch: 2e-6 / 1e-12).
"""

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refvit import kernels
from refvit.errors import InputError, RefvitError
from refvit.kernels import attention as attention_module

NP = kernels.get("numpy")
NB = kernels.get("numba")
DTYPES = (np.float32, np.float64)
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
FAST = settings(max_examples=25, deadline=None)  # JIT compile lands in the first example: no deadline

dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2**32 - 1)
leading_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)


def assert_close(got, ref, dtype, tol=None):
    """max|got - ref| <= tol * max(1, max|ref|), and got keeps the dtype."""
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    tol = TOL[np.dtype(dtype)] if tol is None else tol
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol:.1g} * {scale:.3g}"


def randn(rng, shape, dtype, scale=1.0, offset=0.0):
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


# ------------------------------------------------------------------------------------------- namespace


def test_get_returns_both_backends_with_the_same_names():
    names = ["layer_norm", "gelu", "bias_gelu", "softmax", "attention", "interpolate_bicubic", "interpolate_bilinear"]
    for name in names:
        assert callable(getattr(NP, name)) and callable(getattr(NB, name))
    assert NB.interpolate_bicubic is NP.interpolate_bicubic  # documented: shared NumPy code
    assert NB.interpolate_bilinear is NP.interpolate_bilinear
    with pytest.raises(RefvitError, match="backend"):
        kernels.get("torch")


# ------------------------------------------------------------------------------------- numba vs numpy


def layer_norm_condition(x, eps):
    """max over rows of max|x| / std: how much rounding x (e.g. x - mean in float32) is amplified."""
    x = x.astype(np.float64)
    return max(1.0, float(np.max(np.abs(x) / np.sqrt(x.var(axis=-1, keepdims=True) + eps))))


@FAST
@given(dtype=dtypes, seed=seeds, lead=leading_shapes, C=st.integers(1, 70), eps=st.sampled_from([1e-12, 1e-6, 1e-5]))
def test_layer_norm_twins(dtype, seed, lead, C, eps):
    rng = np.random.default_rng(seed)
    x = randn(rng, lead + (C,), dtype, scale=2.0, offset=rng.uniform(-3, 3))
    w, b = randn(rng, (C,), dtype), randn(rng, (C,), dtype)
    tol = TOL[np.dtype(dtype)] * layer_norm_condition(x, eps)  # a near-constant row is ill-conditioned
    assert_close(NB.layer_norm(x, w, b, eps), NP.layer_norm(x, w, b, eps), dtype, tol=tol)


@FAST
@given(dtype=dtypes, seed=seeds, lead=leading_shapes, C=st.integers(1, 70), in_place=st.booleans())
def test_gelu_and_bias_gelu_twins(dtype, seed, lead, C, in_place):
    rng = np.random.default_rng(seed)
    x, bias = randn(rng, lead + (C,), dtype, scale=3.0), randn(rng, (C,), dtype)
    assert_close(NB.gelu(x), NP.gelu(x), dtype)
    ref = NP.bias_gelu(x, bias)
    if in_place:
        y = x.copy()
        assert NB.bias_gelu(y, bias, out=y) is y
        assert_close(y, ref, dtype)
        y = x.copy()
        assert NP.bias_gelu(y, bias, out=y) is y
        assert_close(y, ref, dtype)
    else:
        assert_close(NB.bias_gelu(x, bias), ref, dtype)


@FAST
@given(dtype=dtypes, seed=seeds, lead=leading_shapes, N=st.integers(1, 50), spread=st.sampled_from([0.1, 1.0, 30.0]))
def test_softmax_twins(dtype, seed, lead, N, spread):
    x = randn(np.random.default_rng(seed), lead + (N,), dtype, scale=spread)
    y = NB.softmax(x)
    assert_close(y, NP.softmax(x), dtype)
    assert_close(y.sum(axis=-1), np.ones(lead, dtype), dtype)


@settings(max_examples=40, deadline=None)
@given(
    dtype=dtypes, seed=seeds, B=st.integers(1, 3), Nq=st.integers(1, 20), Nk=st.integers(1, 20),
    H=st.integers(1, 4), D=st.integers(1, 9), with_bias=st.booleans(), need_probs=st.booleans(),
    fused_qkv=st.booleans(),
)
def test_attention_twins(dtype, seed, B, Nq, Nk, H, D, with_bias, need_probs, fused_qkv):
    rng = np.random.default_rng(seed)
    C = H * D
    q = randn(rng, (B, Nq, C), dtype)
    if fused_qkv:  # k and v as strided views into one (B, Nk, 2C) array, as a fused projection gives
        kv = randn(rng, (B, Nk, 2 * C), dtype)
        k, v = kv[..., :C], kv[..., C:]
    else:
        k, v = randn(rng, (B, Nk, C), dtype), randn(rng, (B, Nk, C), dtype)
    bias = randn(rng, (H, Nq, Nk), dtype) if with_bias else None
    scale = D**-0.5 * 2.0  # a bit peakier than usual
    ref_context, ref_probs = NP.attention(q, k, v, H, scale, bias=bias, need_probs=True)
    context, probs = NB.attention(q, k, v, H, scale, bias=bias, need_probs=need_probs)
    assert_close(context, ref_context, dtype)
    if need_probs:
        assert_close(probs, ref_probs, dtype)
    else:
        assert probs is None
    _, np_probs = NP.attention(q, k, v, H, scale, bias=bias, need_probs=need_probs)
    assert (np_probs is None) == (not need_probs)
    other, _ = NB.attention(q, k, v, H, scale, bias=bias, need_probs=not need_probs)
    assert np.array_equal(context, other)   # writing the probs or a scratch: the same arithmetic, the same bits


def test_attention_heads_use_their_own_channel_slices():
    # Head h must see channels h*D:(h+1)*D only: zero every other channel of one head's q and k.
    rng = np.random.default_rng(0)
    B, N, H, D = 2, 5, 3, 4
    q, k, v = (randn(rng, (B, N, H * D), np.float64) for _ in range(3))
    for backend in (NP, NB):
        context, probs = backend.attention(q, k, v, H, 0.5, need_probs=True)
        for h in range(H):
            sl = slice(h * D, (h + 1) * D)
            s = q[..., sl] @ k[..., sl].transpose(0, 2, 1) * 0.5
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            assert_close(probs[:, h], p, np.float64)
            assert_close(context[..., sl], p @ v[..., sl], np.float64)


# ---------------------------------------------------------------------------------------- bad input


def test_kernels_refuse_bad_input_with_input_error():
    x32 = np.ones((2, 3, 4), np.float32)
    for backend in (NP, NB):
        with pytest.raises(InputError, match="float32 or float64"):
            backend.gelu(np.ones((2, 3), np.int64))
        with pytest.raises(InputError, match="weight"):
            backend.layer_norm(x32, np.ones(5, np.float32), np.ones(4, np.float32), 1e-5)
        with pytest.raises(InputError, match="bias"):
            backend.bias_gelu(x32, np.ones(3, np.float32))
        with pytest.raises(InputError, match="out"):
            backend.bias_gelu(x32, np.ones(4, np.float32), out=np.ones((2, 3, 4), np.float64))
        with pytest.raises(InputError, match="heads"):
            backend.attention(x32, x32, x32, 3, 1.0)
        with pytest.raises(InputError, match="bias"):
            backend.attention(x32, x32, x32, 2, 1.0, bias=np.ones((2, 3, 4), np.float32))
        with pytest.raises(InputError, match="share"):
            backend.attention(x32, x32[:, :, :2], x32, 2, 1.0)
        with pytest.raises(InputError, match="resize"):
            backend.interpolate_bicubic(x32, 0, 3)


# ----------------------------------------------------------------------------------- numpy vs torch


@pytest.mark.needs_framework
@FAST
@given(dtype=dtypes, seed=seeds, lead=leading_shapes, C=st.integers(1, 70), eps=st.sampled_from([1e-12, 1e-6]))
def test_layer_norm_matches_torch(dtype, seed, lead, C, eps):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    x = randn(rng, lead + (C,), dtype, scale=2.0, offset=1.0)
    w, b = randn(rng, (C,), dtype), randn(rng, (C,), dtype)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (C,), torch.from_numpy(w), torch.from_numpy(b), eps)
    tol = TOL[np.dtype(dtype)] * layer_norm_condition(x, eps)
    assert_close(NP.layer_norm(x, w, b, eps), ref.numpy(), dtype, tol=tol)


@pytest.mark.needs_framework
@FAST
@given(dtype=dtypes, seed=seeds, lead=leading_shapes, C=st.integers(1, 70))
def test_gelu_and_softmax_match_torch(dtype, seed, lead, C):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    x, bias = randn(rng, lead + (C,), dtype, scale=3.0), randn(rng, (C,), dtype)
    tx = torch.from_numpy(x)
    assert_close(NP.gelu(x), torch.nn.functional.gelu(tx).numpy(), dtype)
    assert_close(NP.bias_gelu(x, bias), torch.nn.functional.gelu(tx + torch.from_numpy(bias)).numpy(), dtype)
    assert_close(NP.softmax(x * 4), torch.softmax(tx * 4, dim=-1).numpy(), dtype)


@pytest.mark.needs_framework
@FAST
@given(
    dtype=dtypes, seed=seeds, B=st.integers(1, 2), Nq=st.integers(1, 12), Nk=st.integers(1, 12),
    H=st.integers(1, 3), D=st.integers(1, 8), with_bias=st.booleans(),
)
def test_attention_matches_torch_eager_math(dtype, seed, B, Nq, Nk, H, D, with_bias):
    # transformers' eager_attention_forward, in the input dtype throughout (no float32 softmax upcast)
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    q, k, v = randn(rng, (B, Nq, H * D), dtype), randn(rng, (B, Nk, H * D), dtype), randn(rng, (B, Nk, H * D), dtype)
    bias = randn(rng, (H, Nq, Nk), dtype) if with_bias else None
    scale = D**-0.5
    split = lambda a: torch.from_numpy(a).view(B, a.shape[1], H, D).transpose(1, 2)  # noqa: E731
    weights = torch.matmul(split(q), split(k).transpose(2, 3)) * scale
    if with_bias:
        weights = weights + torch.from_numpy(bias).unsqueeze(0)
    weights = torch.nn.functional.softmax(weights, dim=-1)
    ref_context = torch.matmul(weights, split(v)).transpose(1, 2).reshape(B, Nq, H * D)
    context, probs = NP.attention(q, k, v, H, scale, bias=bias, need_probs=True)
    assert_close(context, ref_context.numpy(), dtype)
    assert_close(probs, weights.numpy(), dtype)


INTERP_TOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12}


@pytest.mark.needs_framework
@settings(max_examples=60, deadline=None)
@given(
    dtype=dtypes, seed=seeds, lead=st.sampled_from([(3,), (1, 2), (2, 3)]),
    h=st.integers(1, 30), w=st.integers(1, 30), out_h=st.integers(1, 60), out_w=st.integers(1, 60),
    mode=st.sampled_from(["bicubic", "bilinear"]),
)
def test_interpolate_matches_torch(dtype, seed, lead, h, w, out_h, out_w, mode):
    # sizes cover up- and downsampling, identity axes and non-square grids; (C, h, w) and (B, C, h, w)
    torch = pytest.importorskip("torch")
    x = randn(np.random.default_rng(seed), lead + (h, w), dtype)
    tx = torch.from_numpy(x if x.ndim == 4 else x[None])
    ref = torch.nn.functional.interpolate(tx, size=(out_h, out_w), mode=mode, align_corners=False).numpy()
    ref = ref if x.ndim == 4 else ref[0]
    fn = NP.interpolate_bicubic if mode == "bicubic" else NP.interpolate_bilinear
    assert_close(fn(x, out_h, out_w), ref, dtype, tol=INTERP_TOL[np.dtype(dtype)])


@pytest.mark.needs_framework
@pytest.mark.parametrize("dtype", DTYPES)
def test_interpolate_vit_position_grid_matches_torch(dtype):
    # the ViT/DeiT use: a (C, 14, 14) position table to 24 x 24 (384 px) and back down to 10 x 7
    torch = pytest.importorskip("torch")
    x = randn(np.random.default_rng(1), (768, 14, 14), dtype, scale=0.02)
    for size in [(24, 24), (10, 7), (14, 14)]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=size, mode="bicubic", align_corners=False)
        assert_close(NP.interpolate_bicubic(x, *size), ref[0].numpy(), dtype, tol=INTERP_TOL[np.dtype(dtype)])


def test_float32_erf_twins_agree_and_are_float32_accurate():
    """The float32 erf of both backends is one rational approximation (Numba: `erf_float32`; NumPy: `erf_numpy`,
    chunked array passes): the same values, within 5e-7 of float64 erf over every range, exact ±1 / NaN / ±0."""
    from scipy.special import erf

    from refvit.kernels.activations import ERF_CHUNK, erf_float32, erf_numpy

    rng = np.random.default_rng(11)
    specials = np.array([0.0, -0.0, 1e-30, -1e-30, 3.9, 4.0, 4.1, -4.1, 1e30, -1e30, np.inf, -np.inf], np.float32)
    x = np.concatenate([rng.standard_normal(2 * ERF_CHUNK + 77).astype(np.float32) * 3, specials])  # > 2 chunks
    got = erf_numpy(x.reshape(-1, 1))[:, 0]
    assert got.dtype == np.float32
    assert np.abs(got - erf(x.astype(np.float64))).max() <= 5e-7
    assert np.array_equal(got[-6:], np.array([1, -1, 1, -1, 1, -1], np.float32))
    assert np.signbit(got[-11]) and got[-11] == 0 and np.isnan(erf_numpy(np.array([np.nan], np.float32)))[0]
    sample = x[::97]
    assert np.array_equal(np.array([erf_float32(v) for v in sample], np.float32), erf_numpy(sample))
    assert erf_numpy(np.zeros((0, 3), np.float32)).shape == (0, 3)
    assert erf_numpy(x.astype(np.float64)).dtype == np.float64  # float64: scipy's erf
