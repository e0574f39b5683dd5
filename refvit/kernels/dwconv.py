"""Depthwise convolution over a token sequence, producing a token sequence: CvT's convolutional projection.

CvT (Wu et al. 2021, "CvT: Introducing Convolutions to Vision Transformers", §3.2) projects the tokens of a stage,
seen as an h×w grid, with a depthwise convolution followed by BatchNorm before the linear q/k/v projections
(transformers/models/cvt/modeling_cvt.py `CvtSelfAttentionConvProjection`: `nn.Conv2d(C, C, kernel, stride,
padding, bias=False, groups=C)` then `nn.BatchNorm2d(C)`). The model folds the eval-mode BatchNorm into the
convolution once at load (refvit/models/common.py `fold_batch_norms`), so the kernel computes one depthwise conv
with a bias:

    out[b, oy·wo + ox, c] = bias[c] + Σ_{i<kh, j<kw} x[b, iy·w + ix, c] · weight[c, 0, i, j],
    iy = oy·sh − ph + i,  ix = ox·sw − pw + j   (taps outside the grid read zero padding)
    ho = (h + 2·ph − kh) // sh + 1,   wo = (w + 2·pw − kw) // sw + 1      (torch Conv2d output size)

Tokens stay channels-last (B, N, C) in and out, so no layout change is needed between the attention blocks and the
projection, and the grid may be any h×w (CvT has no position embeddings). Signature, both twins:

    depthwise_conv_tokens(x, height, width, weight, bias, stride, padding) -> (tokens (B, ho·wo, C), (ho, wo))
        x (B, height·width, C) float32/float64; weight (C, 1, kh, kw) as the checkpoint stores it; bias (C,) or None;
        stride (sh, sw); padding (ph, pw), zero padding on both sides of each axis (torch's symmetric `padding`).
"""

import numpy as np
from numba import prange

from refvit.errors import InputError
from refvit.kernels import check_float
from refvit.kernels.jit import njit
from refvit.kernels.threads import blocked, blocks


def _check_args(x, height, width, weight, bias, stride, padding):
    """Validate shapes; returns (ho, wo).
    Why so many parameters: it checks every argument depthwise_conv_tokens takes."""
    check_float(x, "x")
    check_float(weight, "weight")
    if x.ndim != 3 or x.shape[1] != height * width:
        raise InputError(f"depthwise_conv_tokens: x must be (B, height·width, C) = (B, {height * width}, C), "
                         f"got {x.shape}")
    C = x.shape[2]
    if weight.ndim != 4 or weight.shape[:2] != (C, 1) or min(weight.shape[2:]) < 1:
        raise InputError(f"depthwise_conv_tokens: weight must be (C, 1, kh, kw) with C = {C}, got {weight.shape}")
    if bias is not None and (not isinstance(bias, np.ndarray) or bias.shape != (C,)):
        raise InputError(f"depthwise_conv_tokens: bias must be None or ({C},), got {getattr(bias, 'shape', bias)}")
    (sh, sw), (ph, pw) = stride, padding
    if min(sh, sw) < 1 or min(ph, pw) < 0:
        raise InputError(f"depthwise_conv_tokens: stride {stride} must be >= 1 and padding {padding} >= 0")
    kh, kw = weight.shape[2:]
    ho, wo = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise InputError(f"depthwise_conv_tokens: a {height}x{width} grid padded by {padding} is smaller than the "
                         f"{kh}x{kw} kernel")
    return ho, wo


def depthwise_conv_tokens_numpy(x, height, width, weight, bias, stride, padding):
    """The formula above, one strided slice of the zero-padded grid per kernel tap.
    Why so many parameters: a depthwise Conv2d's settings plus the token grid's height and width."""
    ho, wo = _check_args(x, height, width, weight, bias, stride, padding)
    B, _, C = x.shape
    (sh, sw), (ph, pw) = stride, padding
    kh, kw = weight.shape[2:]
    grid = np.pad(x.reshape(B, height, width, C), ((0, 0), (ph, ph), (pw, pw), (0, 0)))  # (B, h + 2ph, w + 2pw, C)
    out = np.zeros((B, ho, wo, C), x.dtype)
    for i in range(kh):
        for j in range(kw):
            taps = grid[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]  # (B, ho, wo, C) under tap (i, j)
            out += taps * weight[:, 0, i, j].astype(x.dtype, copy=False)
    if bias is not None:
        out += bias.astype(x.dtype, copy=False)
    return out.reshape(B, ho * wo, C), (ho, wo)


@blocked(fastmath=False)
def _depthwise_blocks(x, height, width, taps, bias, sh, sw, ph, pw, ho, wo, out, bounds):
    # x: (B, height·width, C); taps: (kh, kw, C) = weight[c, 0, i, j] channels-last; bias: (C,); out: (B, ho·wo, C).
    # One output row (b, oy) per iteration, block i owning rows bounds[i]:bounds[i + 1]; channels innermost.
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    for blk in prange(len(bounds) - 1):
        for r in range(bounds[blk], bounds[blk + 1]):
            _depthwise_row(x, r, height, width, taps, bias, sh, sw, ph, pw, ho, wo, out)


@njit(cache=True, fastmath=False, nogil=True)
def _depthwise_row(x, r, height, width, taps, bias, sh, sw, ph, pw, ho, wo, out):
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    C = x.shape[2]
    kh, kw = taps.shape[0], taps.shape[1]
    b, oy = r // ho, r % ho
    for ox in range(wo):
        o = out[b, oy * wo + ox]
        for c in range(C):
            o[c] = bias[c]
        for i in range(kh):
            iy = oy * sh - ph + i
            if iy < 0 or iy >= height:
                continue  # zero padding
            for j in range(kw):
                ix = ox * sw - pw + j
                if ix < 0 or ix >= width:
                    continue
                src = x[b, iy * width + ix]
                t = taps[i, j]
                for c in range(C):
                    o[c] += src[c] * t[c]


def depthwise_conv_tokens_numba(x, height, width, weight, bias, stride, padding):
    """Numba twin of `depthwise_conv_tokens_numpy`: output rows in blocks across Numba's threads, channels
    vectorised.
    Why so many parameters: the same signature as its twin on the other backend."""
    ho, wo = _check_args(x, height, width, weight, bias, stride, padding)
    B, _, C = x.shape
    dt = x.dtype
    x = np.require(x, dt, ["C", "A", "W"])  # one signature per dtype
    taps = np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0), dtype=dt)  # (kh, kw, C)
    bias = np.zeros(C, dt) if bias is None else np.require(bias, dt, ["C", "A", "W"])
    out = np.empty((B, ho * wo, C), dt)
    if out.size:
        _depthwise_blocks(x, height, width, taps, bias, stride[0], stride[1], padding[0], padding[1], ho, wo, out,
                          blocks(B * ho, wo * C * taps.shape[0] * taps.shape[1]))
    return out, (ho, wo)
