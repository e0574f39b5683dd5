"""Resizing a grid, as torch.nn.functional.interpolate(x, size=(out_h, out_w), align_corners=False) on CPU.

Used for ViT/DeiT/BEiT position-embedding interpolation (bicubic) and BEiT's relative position bias (bilinear).
x is (..., h, w): the last two axes are resized, any leading axes (C, or B, C) are carried along.

Both modes are separable, and torch's CPU kernel (aten/src/ATen/native/cpu/UpSampleKernel.cpp,
`upsample_generic_Nd_kernel_impl`, struct `Interpolate`) evaluates each output pixel as
    out[y, x] = sum_j wy[y, j] * (sum_i wx[x, i] * in[iy[y, j], ix[x, i]])
with the sums taken in order j, i = 0, 1, ...; so a width pass over every input row followed by a
height pass reproduces its arithmetic step for step. Indices and weights come from
`HelperInterpCubic/HelperInterpLinear::compute_indices_weights`, computed in x's dtype (opmath):
    scale = in_size / out_size                          area_pixel_compute_scale (align_corners=False)
    src   = scale * (dst + 0.5) - 0.5                   area_pixel_compute_source_index; linear clamps src < 0 to 0
    i0    = min(floorf(src), in_size - 1)               guard_index_and_lambda (floorf: float32 floor even for float64)
    t     = clamp(src - i0, 0, 1)
torch's x86-64 build (GCC with -mfma) contracts some of these multiply-adds into fused multiply-adds,
which is visible in float32: we fuse the same ones (`_fma`: src, and the first two steps of
cubic_convolution2), found by comparing weights with torch 2.13 bit for bit; that brings float32
results from ~1e-5 to <1e-6 of torch. (NumPy has no fma: float32 emulates it exactly through float64;
float64 keeps a * b + c, which differs from a fused result by ~1e-16.)
Bicubic: cubic convolution (Keys 1981) with A = -0.75 over taps i0-1 .. i0+2, taps clamped into [0, in-1]
(UpSample.h get_cubic_upsample_coefficients / cubic_convolution1,2). Bilinear: taps i0, min(i0+1, in-1),
weights 1-t, t; an axis whose size does not change is copied (compute_source_index_and_lambda).

The numba backend uses these same NumPy functions: the work is a few vectorised gathers on small grids
(a 768 x 14 x 14 position table to 24 x 24 takes a few milliseconds, once per forward), not worth a JIT compile.
Note: for small bilinear outputs (out_h + out_w <= 128) torch takes a channels-last kernel that
multiplies the two weights first; that differs from this order only in float rounding (~1 ulp).
"""

import numpy as np

from refvit.errors import InputError
from refvit.kernels import check_float

CUBIC_A = -0.75  # UpSample.h get_cubic_upsample_coefficients: A = -0.75 (as in TensorFlow / OpenCV)


def _check_args(x, out_h, out_w):
    check_float(x, "x")
    if x.ndim < 2 or min(x.shape[-2:]) < 1 or int(out_h) < 1 or int(out_w) < 1:
        raise InputError(f"interpolate: cannot resize x {x.shape} to ({out_h}, {out_w})")


def _fma(a, b, c):
    """a * b + c rounded once (a fused multiply-add), in the dtype of the arrays."""
    if np.result_type(a, b, c) == np.float32:
        return (np.float64(a) * b + c).astype(np.float32)  # float32 * float32 is exact in float64
    return a * b + c


def _source_index(in_size, out_size, dt, clamp_negative):
    """Per output index: the real source coordinate, its floor i0 (as torch) and the fraction t, all in dtype dt."""
    scale = dt(in_size) / dt(out_size)  # area_pixel_compute_scale: float(in) / out
    src = _fma(scale, np.arange(out_size).astype(dt) + dt(0.5), dt(-0.5))  # (out,) scale * (dst + 0.5) - 0.5
    if clamp_negative:
        src = np.maximum(src, dt(0))  # linear modes only ("Follow Opencv resize logic")
    i0 = np.minimum(np.floor(src.astype(np.float32)).astype(np.int64), in_size - 1)  # floorf(src)
    t = np.clip(src - i0.astype(dt), dt(0), dt(1))  # (out,)
    return i0, t


def _cubic_conv1(x, A):
    return ((A + 2) * x - (A + 3)) * x * x + 1  # |x| <= 1


def _cubic_conv2(x, A):
    return _fma(_fma(A, x, -5 * A), x, 8 * A) * x - 4 * A  # 1 < |x| < 2: ((A*x - 5A)*x + 8A)*x - 4A


def cubic_indices_weights(in_size, out_size, dtype):
    """(out, 4) source indices and (out, 4) weights of torch's bicubic resize along one axis."""
    dt = np.dtype(dtype).type
    i0, t = _source_index(in_size, out_size, dt, clamp_negative=False)
    A, one = dt(CUBIC_A), dt(1)
    weights = np.stack(
        [_cubic_conv2(t + one, A), _cubic_conv1(t, A), _cubic_conv1(one - t, A), _cubic_conv2((one - t) + one, A)],
        axis=1,
    )  # (out, 4) taps i0-1, i0, i0+1, i0+2
    indices = np.clip(i0[:, None] + np.arange(-1, 3), 0, in_size - 1)  # (out, 4) border taps repeat the edge
    return indices, weights.astype(dt, copy=False)


def linear_indices_weights(in_size, out_size, dtype):
    """(out, 2) source indices and (out, 2) weights of torch's bilinear resize along one axis."""
    dt = np.dtype(dtype).type
    if in_size == out_size:  # compute_source_index_and_lambda: "scale_factor = 1, simply copy"
        i = np.arange(out_size)
        return np.stack([i, i], axis=1), np.tile(np.array([1, 0], dt), (out_size, 1))
    i0, t = _source_index(in_size, out_size, dt, clamp_negative=True)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return np.stack([i0, i1], axis=1), np.stack([dt(1) - t, t], axis=1)  # (out, 2), (out, 2)


def _weighted_taps(x, indices, weights, axis):
    """sum_i x.take(indices[:, i], axis) * weights[:, i] for axis -1 or -2, summed in order i = 0, 1, ..."""
    shape = (-1,) if axis == -1 else (-1, 1)  # weights run along `axis`
    out = np.take(x, indices[:, 0], axis=axis)
    out *= weights[:, 0].reshape(shape)
    tap = np.empty_like(out)  # one buffer for every further term: no per-term allocation
    for i in range(1, indices.shape[1]):
        np.take(x, indices[:, i], axis=axis, out=tap)
        tap *= weights[:, i].reshape(shape)
        out += tap
    return out


def _separable_resize(x, out_h, out_w, indices_weights):
    """x (..., h, w) -> (..., out_h, out_w) with (iy, wy), (ix, wx) = indices_weights(in size, out size) per axis:
    out[..., y, x] = sum_j wy[y, j] * sum_i wx[x, i] * x[..., iy[y, j], ix[x, i]], sums in torch's order."""
    _check_args(x, out_h, out_w)
    iy, wy = indices_weights(x.shape[-2], int(out_h), x.dtype)  # (out_h, taps)
    ix, wx = indices_weights(x.shape[-1], int(out_w), x.dtype)  # (out_w, taps)
    rows = _weighted_taps(x, ix, wx, axis=-1)  # (..., h, out_w) width pass
    return _weighted_taps(rows, iy, wy, axis=-2)  # (..., out_h, out_w) height pass


def interpolate_bicubic_numpy(x, out_h, out_w):
    """x (..., h, w) -> (..., out_h, out_w):
    F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=False). 4 taps per output on each axis."""
    return _separable_resize(x, out_h, out_w, cubic_indices_weights)


def interpolate_bilinear_numpy(x, out_h, out_w):
    """x (..., h, w) -> (..., out_h, out_w):
    F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False). 2 taps per output on each axis."""
    return _separable_resize(x, out_h, out_w, linear_indices_weights)

