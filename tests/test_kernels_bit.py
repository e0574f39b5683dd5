"""Kernels of refvit/kernels/conv.py and groupnorm.py: each Numba kernel against its NumPy twin (hypothesis: odd
shapes, strides, dilations, asymmetric padding, groups, both dtypes) and the twins against direct loop formulas.

Tolerance: max|got - ref| <= TOL[dtype] * max(1, max|ref|), TOL = 1e-5 (float32), 1e-12 (float64).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refvit import kernels
from refvit.errors import InputError
from refvit.kernels.conv import conv_output_size, pool_output_size

NP = kernels.get("numpy")
NB = kernels.get("numba")
DTYPES = (np.float32, np.float64)
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
FAST = settings(max_examples=30, deadline=None)  # the JIT compile lands in the first example: no deadline


def assert_close(got, ref, dtype):
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    same = got.astype(np.float64) == ref  # equal infinities (a max-pool window wholly in -inf padding) match
    got, ref = np.where(same, 0.0, got), np.where(same, 0.0, ref)
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    assert err <= TOL[np.dtype(dtype)] * scale, f"max abs error {err:.3g}"


# ------------------------------------------------------------------------------------------- direct formulas


def conv2d_loops(x, w, b, stride, padding, dilation, groups):
    """out[b, o, y, x] = bias[o] + Σ_{c,i,j} w[o, c, i, j] · xpad[b, g·Cg + c, y·sh + i·dh, x·sw + j·dw] (float64)."""
    (sh, sw), (top, bottom, left, right), (dh, dw) = stride, padding, dilation
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    B, Cin, H, W = x.shape
    Cout, Cg, kh, kw = w.shape
    Ho = (H + top + bottom - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + left + right - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((B, Cout, Ho, Wo))
    per_group = Cout // groups
    for o in range(Cout):
        g = o // per_group
        for y in range(Ho):
            for xx in range(Wo):
                patch = xp[:, g * Cg:(g + 1) * Cg, y * sh:y * sh + dh * (kh - 1) + 1:dh, xx * sw:xx * sw + dw * (kw - 1) + 1:dw]
                out[:, o, y, xx] = (patch * w[o]).sum(axis=(1, 2, 3)) + (0.0 if b is None else b[o])
    return out


def max_pool_loops(x, kernel, stride, padding, ceil_mode, pad_value):
    """max over each window; positions in the padding count as pad_value, positions beyond it are skipped."""
    (kh, kw), (sh, sw), (top, bottom, left, right) = kernel, stride, padding
    B, C, H, W = x.shape
    Ho = pool_output_size(H, kh, sh, top, bottom, ceil_mode)
    Wo = pool_output_size(W, kw, sw, left, right, ceil_mode)
    out = np.empty((B, C, Ho, Wo))
    for y in range(Ho):
        for xx in range(Wo):
            vals = []
            for i in range(kh):
                for j in range(kw):
                    r, c = y * sh + i - top, xx * sw + j - left
                    if r >= H + bottom or c >= W + right:
                        continue
                    inside = 0 <= r < H and 0 <= c < W
                    vals.append(x[:, :, r, c].astype(np.float64) if inside else np.full((B, C), pad_value))
            out[:, :, y, xx] = np.max(vals, axis=0)
    return out


# ------------------------------------------------------------------------------------------- conv2d


@st.composite
def conv_problems(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = tuple(draw(st.integers(0, 3)) for _ in range(4))
    H = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - padding[0] - padding[1]), 12))
    W = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - padding[2] - padding[3]), 12))
    B = draw(st.integers(1, 2))
    bias = draw(st.booleans())
    return (B, groups * cg, H, W), (groups * og, cg, kh, kw), stride, padding, dilation, groups, bias


@FAST
@given(conv_problems(), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_conv2d_twins_match_each_other_and_the_loop_formula(problem, dtype, seed):
    xshape, wshape, stride, padding, dilation, groups, has_bias = problem
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    b = rng.standard_normal(wshape[0]).astype(dtype) if has_bias else None
    ref = conv2d_loops(x, w, b, stride, padding, dilation, groups)
    for K in (NP, NB):
        assert_close(K.conv2d(x, w, b, stride, padding, dilation, groups), ref, dtype)


def test_conv2d_pointwise_strided_and_padding_forms():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 9, 7)).astype(np.float32)
    w = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    ref = conv2d_loops(x, w, None, (2, 2), (0, 0, 0, 0), (1, 1), 1)  # 1×1 direct path (no im2col)
    for K in (NP, NB):
        assert_close(K.conv2d(x, w, None, (2, 2)), ref, np.float32)
        assert_close(K.conv2d(x, w, None, 2, 0, 1), ref, np.float32)  # ints for every pair
    w3 = rng.standard_normal((4, 6, 3, 3)).astype(np.float32)
    ref = conv2d_loops(x, w3, None, (1, 1), (1, 1, 2, 2), (1, 1), 1)
    for K in (NP, NB):
        assert_close(K.conv2d(x, w3, None, 1, (1, 2)), ref, np.float32)  # (vertical, horizontal) padding


def test_conv2d_rejects_bad_arguments():
    x = np.zeros((1, 4, 5, 5), np.float32)
    w = np.zeros((2, 4, 3, 3), np.float32)
    for K in (NP, NB):
        with pytest.raises(InputError, match="groups"):
            K.conv2d(x, w, None, groups=2)
        with pytest.raises(InputError, match="smaller"):
            K.conv2d(x[:, :, :2, :2], w, None)
        with pytest.raises(InputError, match="bias"):
            K.conv2d(x, w, np.zeros(3, np.float32))
        with pytest.raises(InputError, match="dtype"):
            K.conv2d(x, w.astype(np.float64), None)
        with pytest.raises(InputError, match="padding"):
            K.conv2d(x, w, None, padding=(-1, 0, 0, 0))
        with pytest.raises(InputError, match="stride"):
            K.conv2d(x, w, None, stride=0)
        with pytest.raises(InputError):
            K.conv2d(x.astype(np.int32), w, None)


def test_conv_output_size_is_torchs():
    assert conv_output_size(224, 7, 2, 3, 3, 1) == 112
    assert conv_output_size(56, 3, 1, 2, 2, 2) == 56
    assert conv_output_size(5, 3, 2, 0, 1, 1) == 2


# ------------------------------------------------------------------------------------------- max_pool2d


@FAST
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 11), st.integers(1, 11), st.integers(1, 4),
       st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.tuples(*[st.integers(0, 2)] * 4), st.booleans(),
       st.sampled_from([-np.inf, 0.0]), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_max_pool_twins_match_the_loop_formula(B, C, H, W, kh, kw, sh, sw, padding, ceil_mode, pad_value, dtype, seed):
    top, bottom, left, right = padding
    if H + top + bottom < kh or W + left + right < kw:
        return
    x = np.random.default_rng(seed).standard_normal((B, C, H, W)).astype(dtype)
    ref = max_pool_loops(x, (kh, kw), (sh, sw), padding, ceil_mode, pad_value)
    for K in (NP, NB):
        assert_close(K.max_pool2d(x, (kh, kw), (sh, sw), padding, ceil_mode, pad_value), ref, dtype)


def test_max_pool_output_size_matches_torchs_ceil_rule():
    assert pool_output_size(112, 3, 2, 0, 0, False) == 55
    assert pool_output_size(112, 3, 2, 1, 1, False) == 56
    assert pool_output_size(5, 2, 2, 0, 0, True) == 3
    assert pool_output_size(4, 2, 2, 1, 1, True) == 3  # the last window would start in the bottom padding: dropped


def test_max_pool_propagates_nan_and_rejects_too_small_input():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    for K in (NP, NB):
        out = K.max_pool2d(x, 2, 2)
        assert np.isnan(out[0, 0, 0, 0]) and out[0, 0, 1, 1] == 15
        with pytest.raises(InputError, match="smaller"):
            K.max_pool2d(x, 5, 1)


# ------------------------------------------------------------------------------------------- group_norm_act


def group_norm_formula(x, G, w, b, eps, relu):
    x64 = x.astype(np.float64)
    B, C = x.shape[:2]
    xg = x64.reshape(B, G, -1)
    y = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + eps)  # var: biased (ddof 0)
    y = y.reshape(x.shape) * w.reshape((C,) + (1,) * (x.ndim - 2)) + b.reshape((C,) + (1,) * (x.ndim - 2))
    return np.maximum(y, 0) if relu else y


@FAST
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 7), st.integers(1, 7), st.booleans(),
       st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_group_norm_twins_match_the_formula(B, G, Cg, H, W, relu, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((B, G * Cg, H, W)) * 3 + 5).astype(dtype)  # an offset: the centred variance matters
    w = rng.standard_normal(G * Cg).astype(dtype)
    b = rng.standard_normal(G * Cg).astype(dtype)
    ref = group_norm_formula(x, G, w.astype(np.float64), b.astype(np.float64), 1e-5, relu)
    for K in (NP, NB):
        assert_close(K.group_norm_act(x, G, w, b, 1e-5, relu), ref, dtype)


def test_group_norm_rejects_groups_that_do_not_divide():
    x = np.zeros((1, 6, 2, 2), np.float32)
    for K in (NP, NB):
        with pytest.raises(InputError, match="num_groups"):
            K.group_norm_act(x, 4, np.ones(6, np.float32), np.zeros(6, np.float32), 1e-5)
        with pytest.raises(InputError, match="weight"):
            K.group_norm_act(x, 3, np.ones(5, np.float32), np.zeros(6, np.float32), 1e-5)


def test_namespaces_publish_the_conv_kernels():
    for name in ("conv2d", "max_pool2d", "group_norm_act"):
        assert callable(getattr(NP, name)) and callable(getattr(NB, name))
