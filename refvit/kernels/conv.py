"""2-D convolution and max pooling on NCHW arrays: torch.nn.functional.conv2d / max_pool2d semantics.

conv2d(x, weight, bias, stride, padding, dilation, groups), x (B, Cin, H, W), weight (Cout, Cin/groups, kh, kw):

    out[b, o, y, x] = bias[o] + sum_{c, i, j} weight[o, c, i, j] * xpad[b, g·Cin/G + c, y·sh + i·dh, x·sw + j·dw]

with g = o // (Cout/G) the group of output channel o and xpad the input zero-padded by (top, bottom, left, right)
(asymmetric padding, so TF-"SAME" padding needs no separate pad step). Output size, as torch's conv:
    Ho = (H + top + bottom - dh·(kh - 1) - 1) // sh + 1          (and likewise Wo)

Computed as im2col + one BLAS GEMM per (batch, group): the patches become the columns of
cols (Cin/G · kh · kw, Ho · Wo), so out_g = W_g (Cout/G, Cin/G · kh · kw) @ cols is a plain row-major GEMM on the
checkpoint's own weight layout (a reshape, no copy) and lands directly in NCHW. A 1×1 kernel without padding needs
no im2col at all (its "patches" are the input pixels, subsampled by the stride). Only the im2col gather differs
between the twins (NumPy: one strided slice per kernel tap, then NumPy's matmul; Numba: one gather loop, then
BLAS called from Numba over blocks of output pixels or channels on Numba's threads). Both GEMMs are BLAS sgemm/dgemm.

max_pool2d(x, kernel, stride, padding, ceil_mode, pad_value): the maximum over each kh × kw window, the input padded
by (top, bottom, left, right) with `pad_value` (-inf: torch's implicit padding, which never wins; BiT's
`BitMaxPool2d` pads with 0 first). Output size as torch's `pooling_output_shape`:
    Ho = ceil_or_floor((H + top + bottom - kh) / sh) + 1, and with ceil_mode the last window must start inside the
    input or the top padding (else Ho -= 1); window positions beyond the padded input are ignored.
NaN propagates, as in torch's CPU kernel (`val > max || isnan(val)`).
"""

import numpy as np
from numba import prange

from refvit.errors import InputError
from refvit.kernels import check_float, threads
from refvit.kernels.jit import njit
from refvit.kernels.sizes import conv_output_size, pool_output_size  # noqa: F401 (also imported from here)
from refvit.kernels.blas import gemm
from refvit.kernels.threads import blocked


def _pair(value, name):
    """An int or a 2-sequence of ints -> (a, b)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    try:
        a, b = value
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in (a, b)):
            raise TypeError
        return int(a), int(b)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected an int or a pair of ints, got {value!r}") from None


def _quad(value, name):
    """Padding: an int, (vertical, horizontal) or (top, bottom, left, right) -> (top, bottom, left, right)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,) * 4
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        value = (value[0], value[0], value[1], value[1])
    if (not isinstance(value, (tuple, list)) or len(value) != 4
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in value)):
        raise InputError(f"{name}: expected non-negative ints (top, bottom, left, right), got {value!r}")
    return tuple(int(v) for v in value)


def _check_conv(x, weight, bias, stride, padding, dilation, groups):
    """Why so many parameters: it checks every argument conv2d takes."""
    check_float(x, "x")
    check_float(weight, "weight")
    stride, dilation, padding = _pair(stride, "stride"), _pair(dilation, "dilation"), _quad(padding, "padding")
    if min(stride) < 1 or min(dilation) < 1:
        raise InputError(f"conv2d: stride {stride} and dilation {dilation} must be >= 1")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise InputError(f"conv2d: groups must be a positive int, got {groups!r}")
    if x.ndim != 4 or weight.ndim != 4 or weight.dtype != x.dtype:
        raise InputError(f"conv2d: x must be (B, Cin, H, W) and weight (Cout, Cin/groups, kh, kw) of dtype {x.dtype}, "
                         f"got x {x.shape} {x.dtype}, weight {weight.shape} {weight.dtype}")
    B, Cin, H, W = x.shape
    Cout, Cg, kh, kw = weight.shape
    if Cin != Cg * groups or Cout % groups or Cout == 0 or min(kh, kw) < 1:
        raise InputError(f"conv2d: weight {weight.shape} with groups={groups} does not fit x {x.shape} "
                         f"(needs Cin = weight.shape[1]·groups and Cout divisible by groups)")
    if bias is not None and (not isinstance(bias, np.ndarray) or bias.shape != (Cout,)):
        raise InputError(f"conv2d: bias must be None or ({Cout},), got {getattr(bias, 'shape', type(bias).__name__)}")
    top, bottom, left, right = padding
    Ho = conv_output_size(H, kh, stride[0], top, bottom, dilation[0])
    Wo = conv_output_size(W, kw, stride[1], left, right, dilation[1])
    if Ho < 1 or Wo < 1 or B == 0:
        raise InputError(f"conv2d: input {x.shape} padded by {padding} is smaller than the (dilated) kernel "
                         f"{(kh, kw)}·{dilation}")
    return stride, padding, dilation, int(groups), Ho, Wo


def _gemm(cols, weight, bias, groups, Ho, Wo):
    """cols (B, G, K, P) -> (B, Cout, Ho, Wo): out_g = W_g (Cout/G, K) @ cols_g (K, P), batched over (B, G)."""
    B, G, K, P = cols.shape
    Cout = weight.shape[0]
    Wg = weight.reshape(G, Cout // G, K)                               # (G, Cout/G, K): the checkpoint layout
    out = np.matmul(Wg, cols)                                          # (B, G, Cout/G, P), one BLAS GEMM per (b, g)
    out = out.reshape(B, Cout, Ho, Wo)                                 # (B, Cout, Ho, Wo)
    if bias is not None:
        out += bias.astype(out.dtype, copy=False)[:, None, None]
    return out


@blocked()
def _conv_gemm_blocks(cols, weight, bias, has_bias, by_channel, out, bounds):
    # cols (B, G, K, P), weight (G, Cout/G, K), out (B, G, Cout/G, P). Block i owns the output pixels
    # bounds[i]:bounds[i + 1] of every (image, group) or, by_channel, its output channels: one GEMM each onto that
    # part of out, pre-filled with the bias.
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    B, G = cols.shape[0], cols.shape[1]
    for i in prange(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1]
        for b in range(B):
            for g in range(G):
                if by_channel:
                    w, c, o, c0 = weight[g, lo:hi], cols[b, g, :, :], out[b, g, lo:hi, :], lo
                else:
                    w, c, o, c0 = weight[g, :, :], cols[b, g, :, lo:hi], out[b, g, :, lo:hi], 0
                if has_bias:
                    for ch in range(o.shape[0]):
                        o[ch, :] = bias[g, c0 + ch]
                gemm(w, c, o, 1.0 if has_bias else 0.0)


CHANNEL_SPLIT = 256  # at least this many output channels per group: blocks of channels, else of pixels (the faster
                     # split of BiT-50's GEMMs on each side of it: docs/speed.md, "Kernel choices")


def _gemm_blocks(cols, weight, bias, groups, Ho, Wo, out=None):
    """`_gemm` with one GEMM per block of output pixels (few output channels) or of output channels (many), the
    blocks chosen by the sizes alone, run across Numba's threads with BLAS single-threaded
    (refvit.kernels.threads.forward_scope); the bias is BLAS's beta = 1 onto pre-filled output. `out`: a C-contiguous
    (B, Cout, Ho, Wo) array to write into.
    Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    B, G, K, P = cols.shape
    Cout = weight.shape[0]
    dt = np.result_type(weight, cols)
    Wg = np.require(weight.reshape(G, Cout // G, K), dt, ["C", "A"])  # (G, Cout/G, K)
    cols = np.require(cols, dt, ["C", "A"])
    out = (np.empty((B, G, Cout // G, P), dt) if out is None
           else out.reshape(B, G, Cout // G, P))                       # (B, G, Cout/G, P)
    has_bias = bias is not None
    b = np.require(bias.reshape(G, Cout // G) if has_bias else np.zeros((1, 1)), dt, ["C", "A"])
    by_channel = Cout // G >= CHANNEL_SPLIT
    if by_channel:
        bounds = threads.blocks(Cout // G, B * G * P * K // 8, threads.MIN_GEMM_BLOCK)  # ~2·B·G·P·K flops/channel
    else:
        bounds = threads.blocks(P, B * Cout * K // 8, threads.MIN_GEMM_BLOCK)  # ~2·B·Cout·K flops per pixel
    _conv_gemm_blocks(cols, Wg, b, has_bias, by_channel, out, bounds)
    return out.reshape(B, Cout, Ho, Wo)


def _pointwise_cols(x, stride, groups):
    """A 1×1 kernel without padding: the columns are the (strided) input pixels, (B, G, Cin/G, Ho·Wo)."""
    B, Cin = x.shape[:2]
    xs = np.ascontiguousarray(x[:, :, ::stride[0], ::stride[1]])        # (B, Cin, Ho, Wo)
    return xs.reshape(B, groups, Cin // groups, -1)


def _is_pointwise(weight, padding):
    return weight.shape[2:] == (1, 1) and not any(padding)


# ---------------------------------------------------------------------------------------- NumPy twins


def im2col_numpy(x, kernel, stride, padding, dilation, Ho, Wo):
    """x (B, C, H, W) -> cols (B, C, kh, kw, Ho, Wo): cols[b, c, i, j, y, x] = xpad[b, c, y·sh + i·dh, x·sw + j·dw].
    Why so many parameters: the same signature as its twin on the other backend."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    top, bottom, left, right = padding
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))     # zero padding
    cols = np.empty(x.shape[:2] + (kh, kw, Ho, Wo), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh, j * dw:j * dw + sw * (Wo - 1) + 1:sw]
    return cols


def conv2d_numpy(x, weight, bias, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """torch.nn.functional.conv2d on (B, Cin, H, W) with (top, bottom, left, right) zero padding
    -> (B, Cout, Ho, Wo).
    Why so many parameters: torch.nn.functional.conv2d's own (input, weight, bias, stride, padding, dilation,
    groups)."""
    stride, padding, dilation, groups, Ho, Wo = _check_conv(x, weight, bias, stride, padding, dilation, groups)
    if _is_pointwise(weight, padding):
        return _gemm(_pointwise_cols(x, stride, groups), weight, bias, groups, Ho, Wo)
    B, Cin = x.shape[:2]
    cols = im2col_numpy(x, weight.shape[2:], stride, padding, dilation, Ho, Wo)  # (B, Cin, kh, kw, Ho, Wo)
    cols = cols.reshape(B, groups, -1, Ho * Wo)                        # (B, G, Cin/G·kh·kw, Ho·Wo)
    return _gemm(cols, weight, bias, groups, Ho, Wo)


def _check_pool(x, kernel, stride, padding, ceil_mode):
    check_float(x, "x")
    kernel, stride, padding = _pair(kernel, "kernel"), _pair(stride, "stride"), _quad(padding, "padding")
    if x.ndim != 4 or min(kernel) < 1 or min(stride) < 1:
        raise InputError(f"max_pool2d: x must be (B, C, H, W), kernel and stride >= 1; got x {x.shape}, "
                         f"kernel {kernel}, stride {stride}")
    top, bottom, left, right = padding
    Ho = pool_output_size(x.shape[2], kernel[0], stride[0], top, bottom, ceil_mode)
    Wo = pool_output_size(x.shape[3], kernel[1], stride[1], left, right, ceil_mode)
    if Ho < 1 or Wo < 1 or x.size == 0:
        raise InputError(f"max_pool2d: input {x.shape} padded by {padding} is smaller than the kernel {kernel}")
    return kernel, stride, padding, Ho, Wo


def max_pool2d_numpy(x, kernel, stride, padding=(0, 0, 0, 0), ceil_mode=False, pad_value=-np.inf):
    """torch.nn.functional.max_pool2d with (top, bottom, left, right) padding of value `pad_value` -> (B, C, Ho, Wo)."""
    (kh, kw), (sh, sw), (top, bottom, left, right), Ho, Wo = _check_pool(x, kernel, stride, padding, ceil_mode)
    H, W = x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=x.dtype.type(pad_value))
    extra_h = max(0, (Ho - 1) * sh + kh - xp.shape[2])                 # ceil_mode overhang: ignored positions
    extra_w = max(0, (Wo - 1) * sw + kw - xp.shape[3])
    xp = np.pad(xp, ((0, 0), (0, 0), (0, extra_h), (0, extra_w)), constant_values=-np.inf)
    out = np.full(x.shape[:2] + (Ho, Wo), -np.inf, x.dtype)
    for i in range(kh):
        for j in range(kw):
            out = np.maximum(out, xp[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw])  # NaN wins
    return out


# ---------------------------------------------------------------------------------------- Numba kernels


@njit(cache=True, fastmath=False, nogil=True)
def _valid_range(n_out, stride, offset, size):
    """Output positions o in [lo, hi) whose input position o·stride + offset lies in [0, size)."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    hi = 0 if offset >= size else min(n_out, (size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@blocked(fastmath=False)
def _im2col_blocks(x, kh, kw, sh, sw, top, left, dh, dw, cols, bounds):
    # x: (B, C, H, W); cols: (B, C, kh, kw, Ho, Wo), every element written (zeros where the tap is in the padding).
    # Block i owns the tap rows bounds[i]:bounds[i + 1] of the B·C·kh·kw (b, c, i, j) rows.
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    for blk in prange(len(bounds) - 1):
        for r in range(bounds[blk], bounds[blk + 1]):
            _im2col_row(x, r, kh, kw, sh, sw, top, left, dh, dw, cols)


@njit(cache=True, fastmath=False, nogil=True)
def _im2col_row(x, r, kh, kw, sh, sw, top, left, dh, dw, cols):
    # tap row r = ((b·C + c)·kh + i)·kw + j: cols[b, c, i, j] (Ho, Wo) from x[b, c]
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    B, C, H, W = x.shape
    Ho, Wo = cols.shape[4], cols.shape[5]
    j = r % kw
    i = (r // kw) % kh
    c = (r // (kw * kh)) % C
    b = r // (kw * kh * C)
    y0, y1 = _valid_range(Ho, sh, i * dh - top, H)
    x0, x1 = _valid_range(Wo, sw, j * dw - left, W)
    off = j * dw - left
    for oy in range(Ho):
        row = cols[b, c, i, j, oy]
        if oy < y0 or oy >= y1:
            row[:] = 0
            continue
        _tap_row(x[b, c, oy * sh + i * dh - top], x0, x1, sw, off, row)


@njit(cache=True, fastmath=False, nogil=True, inline="always")
def _tap_row(src, x0, x1, sw, off, dst):
    # One output row of one kernel tap: dst[ox] = src[ox·sw + off] for ox in [x0, x1), 0 outside (the padding).
    dst[:x0] = 0
    if sw == 1:
        dst[x0:x1] = src[x0 + off:x1 + off]  # contiguous copy
    else:
        for ox in range(x0, x1):
            dst[ox] = src[ox * sw + off]
    dst[x1:] = 0


def im2col_numba(x, kernel, stride, padding, dilation, Ho, Wo, cols=None):
    """Numba twin of `im2col_numpy`: one gather loop (tap rows in blocks across Numba's threads), no padded copy
    of x; into `cols` when given (C-contiguous, (B, C, kh, kw, Ho, Wo)).
    Why so many parameters: the same signature as its twin on the other backend."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    top, _, left, _ = padding
    x = np.require(x, x.dtype, ["C", "A"])
    if cols is None:
        cols = np.empty(x.shape[:2] + (kh, kw, Ho, Wo), x.dtype)
    rows = x.shape[0] * x.shape[1] * kh * kw
    _im2col_blocks(x, kh, kw, sh, sw, top, left, dh, dw, cols, threads.blocks(rows, Ho * Wo))
    return cols


COLS_BATCH_BYTES = 16 << 20  # a batch's im2col columns beyond this go image by image (measured: see conv2d_numba)
CHUNKED_FROM_BYTES = 8 << 20  # an image's im2col columns from this size on: im2col + GEMM by chunks of output rows
CHUNK_COLS_BYTES = 1 << 20    # of about this many column bytes (one core's L2 here); measured per shape, BiT-50@448:
                              # docs/speed.md, "BiT's convolutions"


@njit(cache=True, fastmath=False, nogil=True)
def _im2col_rows(x, b, y0, y1, kh, kw, sh, sw, top, left, dh, dw, Wo, cols):
    # The im2col columns of image b's output rows y0:y1 into cols (C·kh·kw, >= (y1 − y0)·Wo): column
    # (oy − y0)·Wo + ox of row (c·kh + i)·kw + j is xpad[b, c, oy·sh + i·dh, ox·sw + j·dw] (0 in the padding).
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                off = j * dw - left
                x0, x1 = _valid_range(Wo, sw, off, W)
                for oy in range(y0, y1):
                    base = (oy - y0) * Wo
                    iy = oy * sh + i * dh - top
                    if iy < 0 or iy >= H:
                        row[base:base + Wo] = 0
                        continue
                    _tap_row(x[b, c, iy], x0, x1, sw, off, row[base:base + Wo])


@blocked(fastmath=False)
def _conv_chunk_blocks(x, weight, bias, has_bias, kh, kw, sh, sw, top, left, dh, dw, rows, out, scratch, bounds):
    # x (B, C, H, W); weight (Cout, C·kh·kw); out (B, Cout, Ho·Wo); scratch (blocks, C·kh·kw, rows·Wo). Work item t
    # is image t // chunks, output rows (t % chunks)·rows onwards: its im2col columns into the block's scratch, then
    # one GEMM onto that part of out (pre-filled with the bias). The chunks depend on the sizes alone, so every
    # output element comes from the same GEMM call whatever the blocks or threads.
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    Cout, P = out.shape[1], out.shape[2]
    Wo = scratch.shape[2] // rows
    Ho = P // Wo
    chunks = (Ho + rows - 1) // rows
    for blk in prange(len(bounds) - 1):
        cols = scratch[blk]
        for t in range(bounds[blk], bounds[blk + 1]):
            b = t // chunks
            y0 = (t % chunks) * rows
            y1 = min(Ho, y0 + rows)
            _im2col_rows(x, b, y0, y1, kh, kw, sh, sw, top, left, dh, dw, Wo, cols)
            o = out[b, :, y0 * Wo:y1 * Wo]
            if has_bias:
                for ch in range(Cout):
                    o[ch, :] = bias[ch]
            gemm(weight, cols[:, :(y1 - y0) * Wo], o, 1.0 if has_bias else 0.0)


def chunk_rows(B, K, Ho, Wo, itemsize):
    """Output rows per chunk of `_conv_chunk_blocks`: about CHUNK_COLS_BYTES of columns, and at least as many chunks
    in the batch as the threads' blocks (threads.MAX_BLOCKS), so that every thread has work."""
    rows = max(1, CHUNK_COLS_BYTES // max(1, K * Wo * itemsize))
    per_image = -(-threads.MAX_BLOCKS // B)                                # chunks each image needs for that
    return max(1, min(rows, Ho, -(-Ho // per_image)))


def _conv_chunked(x, weight, bias, stride, padding, dilation, Ho, Wo):
    """conv2d (groups 1) as chunks of output rows, each its im2col columns then one GEMM, in one parallel region:
    the columns of a chunk stay in cache for their GEMM, and no image- or batch-sized column buffer is written.
    Why so many parameters: conv2d's own, with the output size."""
    B, C = x.shape[:2]
    Cout, _, kh, kw = weight.shape
    K = C * kh * kw
    rows = chunk_rows(B, K, Ho, Wo, x.itemsize)
    chunks = -(-Ho // rows)
    bounds = threads.blocks(B * chunks, rows * Wo * K * Cout // 8, 1)    # ~2·rows·Wo·K·Cout flops per chunk
    scratch = np.empty((len(bounds) - 1, K, rows * Wo), x.dtype)
    out = np.empty((B, Cout, Ho * Wo), x.dtype)
    has_bias = bias is not None
    b = np.require(bias if has_bias else np.zeros(1), x.dtype, ["C", "A"])
    _conv_chunk_blocks(np.require(x, x.dtype, ["C", "A"]), np.require(weight.reshape(Cout, K), x.dtype, ["C", "A"]),
                       b, has_bias, kh, kw, stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1],
                       rows, out, scratch, bounds)
    return out.reshape(B, Cout, Ho, Wo)


SHIFTED_FROM_BYTES = 4 << 20  # stride 1, from this many column bytes per image up to CHUNKED_FROM_BYTES: no im2col,
                              # one GEMM per kernel tap on the shifted padded input (docs/speed.md,
                              # "BiT's convolutions")


@blocked()
def _conv_shifted_blocks(xflat, taps, bias, has_bias, kw, dh, dw, Wp, out, bounds):
    # xflat (B, C, Hp·Wp + extra): each image zero-padded, rows Wp wide, flattened; taps (kh·kw, Cout, C); out
    # (B, Cout, Ho·Wp), output rows Wp wide (the last Wp − Wo columns are discarded by the caller). Block i owns the
    # output channels bounds[i]:bounds[i + 1] of every image: tap t = i·kw + j adds taps[t] @ xflat shifted by
    # i·dh·Wp + j·dw onto them (the first tap writes, unless a bias was pre-filled), the taps always in this order.
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    B, P = xflat.shape[0], out.shape[2]
    for blk in prange(len(bounds) - 1):
        lo, hi = bounds[blk], bounds[blk + 1]
        for b in range(B):
            o = out[b, lo:hi, :]
            if has_bias:
                for ch in range(hi - lo):
                    o[ch, :] = bias[lo + ch]
            for t in range(taps.shape[0]):
                off = (t // kw) * dh * Wp + (t % kw) * dw
                gemm(taps[t, lo:hi], xflat[b, :, off:off + P], o, 1.0 if has_bias or t > 0 else 0.0)


def _conv_shifted(x, weight, bias, padding, dilation, Ho, Wo):
    """conv2d with stride 1 (groups 1) as one GEMM per kernel tap, no im2col: on the zero-padded input with rows of
    the padded width Wp, output pixel (y, x) and tap (i, j) read the padded pixel y·Wp + x + i·dh·Wp + j·dw, so each
    tap's columns are one shifted view of the padded input (output columns Wo … Wp − 1 read across a row end and
    are dropped). Costs a padded copy of the input and a tap-major copy of the weights per call.
    Why so many parameters: conv2d's own, with the output size."""
    B, C, H, W = x.shape
    Cout, _, kh, kw = weight.shape
    top, bottom, left, right = padding
    Hp, Wp = H + top + bottom, W + left + right
    xflat = np.zeros((B, C, Hp * Wp + (kw - 1) * dilation[1]), x.dtype)
    xflat[:, :, :Hp * Wp].reshape(B, C, Hp, Wp)[:, :, top:top + H, left:left + W] = x
    taps = np.ascontiguousarray(weight.transpose(2, 3, 0, 1)).reshape(kh * kw, Cout, C)
    out = np.empty((B, Cout, Ho * Wp), x.dtype)
    has_bias = bias is not None
    b = np.require(bias if has_bias else np.zeros(1), x.dtype, ["C", "A"])
    bounds = threads.blocks(Cout, B * C * kh * kw * Ho * Wp // 8, threads.MIN_GEMM_BLOCK)  # ~2·B·K·Ho·Wp flops/channel
    _conv_shifted_blocks(xflat, taps, b, has_bias, kw, dilation[0], dilation[1], Wp, out, bounds)
    return np.ascontiguousarray(out.reshape(B, Cout, Ho, Wp)[:, :, :, :Wo])


def conv2d_numba(x, weight, bias, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """Numba twin of `conv2d_numpy`: the im2col gather in Numba, the GEMM in BLAS (same as the twin). A batch whose
    cols would pass COLS_BATCH_BYTES goes one image at a time through one reused cols buffer: BiT-50's first 3×3
    convs at 448² need 231 MB of cols for 8 images, which leave the caches and cost page faults; per image they stay
    in L3 (BiT-50 batch 8: im2col 46 → ~21 ms per image here). Smaller batches go whole (CvT-13 batch 8's 3×3
    embeddings: 13.7 ms whole vs 15.4 per image: fewer, larger parallel launches). A conv (groups 1, not 1×1) whose
    image has CHUNKED_FROM_BYTES of columns or more goes by chunks of output rows instead, im2col and GEMM of each
    chunk together, in cache (`_conv_chunked`): 0.8-0.9× the time for BiT-50@448's 3×3 convs at 112² and 56² and its
    7×7 stem, 0.9-1.05× at 7 MB of columns, 1.05-1.25× at 3.6 MB. A stride-1 conv with SHIFTED_FROM_BYTES up to
    CHUNKED_FROM_BYTES of columns runs one GEMM per tap on the shifted padded input (`_conv_shifted`): 0.90× for
    BiT-50@448's 3×3 at 28², 1.11× at 14², 1.07× at 112² (docs/speed.md, "BiT's convolutions").
    Why so many parameters: the same signature as its twin on the other backend."""
    stride, padding, dilation, groups, Ho, Wo = _check_conv(x, weight, bias, stride, padding, dilation, groups)
    if _is_pointwise(weight, padding):
        return _gemm_blocks(_pointwise_cols(x, stride, groups), weight, bias, groups, Ho, Wo)
    B, Cin = x.shape[:2]
    image_cols = Cin * weight.shape[2] * weight.shape[3] * Ho * Wo * x.itemsize
    if groups == 1 and image_cols >= CHUNKED_FROM_BYTES:
        return _conv_chunked(x, weight, bias, stride, padding, dilation, Ho, Wo)
    if groups == 1 and stride == (1, 1) and image_cols >= SHIFTED_FROM_BYTES:
        return _conv_shifted(x, weight, bias, padding, dilation, Ho, Wo)
    if B == 1 or B * image_cols <= COLS_BATCH_BYTES:
        cols = im2col_numba(x, weight.shape[2:], stride, padding, dilation, Ho, Wo)  # (B, Cin, kh, kw, Ho, Wo)
        return _gemm_blocks(cols.reshape(B, groups, -1, Ho * Wo), weight, bias, groups, Ho, Wo)
    dt = np.result_type(weight, x)
    cols = np.empty((1, Cin) + weight.shape[2:] + (Ho, Wo), x.dtype)     # (1, Cin, kh, kw, Ho, Wo), reused
    out = np.empty((B, weight.shape[0], Ho, Wo), dt)                    # (B, Cout, Ho, Wo)
    for b in range(B):
        im2col_numba(x[b:b + 1], weight.shape[2:], stride, padding, dilation, Ho, Wo, cols)
        _gemm_blocks(cols.reshape(1, groups, -1, Ho * Wo), weight, bias, groups, Ho, Wo, out[b:b + 1])
    return out


@blocked(fastmath=False)
def _max_pool_blocks(x, kh, kw, sh, sw, top, bottom, left, right, pad_value, out, bounds):
    # x: (B, C, H, W); out: (B, C, Ho, Wo). Taps inside the padding count as pad_value, taps beyond it are skipped.
    # Block i owns the (b, c) planes bounds[i]:bounds[i + 1].
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    for blk in prange(len(bounds) - 1):
        for bc in range(bounds[blk], bounds[blk + 1]):
            _max_pool_plane(x, bc, kh, kw, sh, sw, top, bottom, left, right, pad_value, out)


@njit(cache=True, fastmath=False, nogil=True)
def _max_pool_plane(x, bc, kh, kw, sh, sw, top, bottom, left, right, pad_value, out):
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    B, C, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    b = bc // C
    c = bc % C
    for oy in range(Ho):
        for ox in range(Wo):
            best = -np.inf
            for i in range(kh):
                y = oy * sh + i - top
                if y >= H + bottom:
                    break
                for jj in range(kw):
                    xx = ox * sw + jj - left
                    if xx >= W + right:
                        break
                    if y < 0 or y >= H or xx < 0 or xx >= W:
                        v = pad_value
                    else:
                        v = x[b, c, y, xx]
                    if v > best or v != v:  # NaN propagates, as torch
                        best = v
            out[b, c, oy, ox] = best


def max_pool2d_numba(x, kernel, stride, padding=(0, 0, 0, 0), ceil_mode=False, pad_value=-np.inf):
    """Numba twin of `max_pool2d_numpy`: (batch, channel) planes in blocks across Numba's threads, no padded
    copy."""
    (kh, kw), (sh, sw), (top, bottom, left, right), Ho, Wo = _check_pool(x, kernel, stride, padding, ceil_mode)
    x = np.require(x, x.dtype, ["C", "A"])
    out = np.empty(x.shape[:2] + (Ho, Wo), x.dtype)
    _max_pool_blocks(x, kh, kw, sh, sw, top, bottom, left, right, x.dtype.type(pad_value), out,
                     threads.blocks(x.shape[0] * x.shape[1], Ho * Wo * kh * kw))
    return out
