"""A pre-norm transformer layer's two blocks (ViT/DeiT, BEiT), each one kernel call: transformers' `ViTLayer` and
`BeitLayer` as

    attention block:  ln = LayerNorm(x); q, k, v = ln Wqkvᵀ + bqkv; context = attention(q, k, v[, bias]);
                      proj = context Woᵀ + bo; out = x + proj, or λ1·proj + x with a layer scale (BEiT)
    MLP block:        ln = LayerNorm(x); hidden = gelu(ln W1ᵀ + b1); fc2 = hidden W2ᵀ + b2;
                      out = fc2 + x, or λ2·fc2 + x with a layer scale (BEiT)

attention_block(x, ln_weight, ln_bias, eps, qkv_weight, qkv_bias, out_weight, out_bias, num_heads, scale,
                need_probs=False, workspace=None, bias=None, layer_scale=None)
    -> AttentionBlock(out, ln, qkv, context, proj, probs)
mlp_block(x, ln_weight, ln_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias, workspace=None, layer_scale=None)
    -> MLPBlock(out, ln, hidden, fc2)

`bias` is attention's (H, N, N) bias (BEiT's relative position bias), added to every image's scores after the scale;
`layer_scale` a (C,) per-channel factor.

The NumPy twins are those formulas written with the other kernels' twins (layer_norm, linear, attention,
bias_gelu). The Numba versions do the same arithmetic as the separate Numba kernels, block for block (the same
row or column blocks, the same GEMM calls, the same element loops), so their results are bit-identical to calling
layer_norm, linear, attention and bias_gelu one after the other and then the NumPy residual (and layer scale)
arithmetic (tested); what changes is that a block is one call from Python instead of four or five, and that the
values are written into a `Workspace` (refvit/kernels/workspace.py) instead of fresh arrays. With a workspace the
returned arrays are its buffers, valid until its next use, and the attention block's `proj` and the MLP block's
`fc2` are `out` before the residual was added (the same buffer); without one, every array is new.

Two ways to share the work across threads, chosen from the sizes alone (so the bits never depend on the thread
count):
- by rows (any batch): each stage — layer norm, a GEMM, attention, GELU — is one `prange` over its blocks, as in the
  separate kernels, several parallel regions in one call;
- by images (batch ≥ 2 and a multiple of threads.MAX_BLOCKS): one `prange` over blocks of whole images, each block
  running every stage on its own images with single-threaded BLAS, no barrier between stages (a GEMM over a
  block's rows is the by-rows GEMM whenever the row blocks fall on image boundaries, as they do at batch 8).
"""

from collections import namedtuple

import numpy as np
from numba import prange

from refvit.errors import InputError
from refvit.kernels import check_float, threads
from refvit.kernels.activations import _bias_gelu_kernel_f32, _bias_gelu_kernel_f64, bias_gelu_numpy
from refvit.kernels.attention import _scale_bias_softmax, attention_numpy, query_chunks
from refvit.kernels.blas import gemm
from refvit.kernels.jit import njit
from refvit.kernels.linear import COLUMN_SPLIT_ROWS, linear_numpy
from refvit.kernels.norm import _layer_norm_kernel, layer_norm_numpy
from refvit.kernels.threads import blocked
from refvit.kernels.workspace import FRESH

AttentionBlock = namedtuple("AttentionBlock", "out ln qkv context proj probs")
MLPBlock = namedtuple("MLPBlock", "out ln hidden fc2")


def _check_args(x, ln_weight, ln_bias, weights, layer_scale=None):
    check_float(x, "x")
    if x.ndim != 3:
        raise InputError(f"encoder block: x must be (B, N, C), got {x.shape}")
    C = x.shape[-1]
    if np.shape(ln_weight) != (C,) or np.shape(ln_bias) != (C,):
        raise InputError(f"encoder block: layer norm weight {np.shape(ln_weight)} and bias {np.shape(ln_bias)} "
                         f"must be ({C},)")
    if layer_scale is not None and np.shape(layer_scale) != (C,):
        raise InputError(f"encoder block: layer scale {np.shape(layer_scale)} must be ({C},)")
    for name, (w, b, width) in weights.items():
        width = C if width is None else width
        if (not isinstance(w, np.ndarray) or w.ndim != 2 or w.shape[1] != width
                or (b is not None and np.shape(b) != w.shape[:1])):
            raise InputError(f"encoder block: {name} weight {np.shape(w)} must be (out, {width}) and its bias "
                             f"{np.shape(b) if b is not None else None} (out,)")


# ---------------------------------------------------------------------------------------- NumPy twins


def attention_block_numpy(x, ln_weight, ln_bias, eps, qkv_weight, qkv_bias, out_weight, out_bias, num_heads, scale,
                          need_probs=False, workspace=None, bias=None, layer_scale=None):
    """x (B, N, C) -> AttentionBlock(out = x + proj (λ·proj + x with a layer scale), ln, qkv (B, N, 3C), context,
    proj, probs (B, H, N, N) or None). `workspace` is accepted for the twin's signature and not used.
    Why so many parameters: a layer norm's, a q/k/v projection's, attention's (bias too), an output projection's
    and a layer scale."""
    _check_args(x, ln_weight, ln_bias, {"qkv": (qkv_weight, qkv_bias, None)}, layer_scale)
    ln = layer_norm_numpy(x, ln_weight, ln_bias, eps)
    qkv = linear_numpy(ln, qkv_weight, qkv_bias)                          # (B, N, 3C)
    C = qkv.shape[-1] // 3
    context, probs = attention_numpy(qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:], num_heads, scale,
                                     bias=bias, need_probs=need_probs)
    proj = linear_numpy(context, out_weight, out_bias)
    return AttentionBlock(_residual(x, proj, layer_scale), ln, qkv, context, proj, probs)


def _residual(x, y, layer_scale):
    """The residual add: x + y (ViTLayer), or λ·y + x (BeitLayer's layer scale, then the add)."""
    return x + y if layer_scale is None else layer_scale * y + x


def mlp_block_numpy(x, ln_weight, ln_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias, workspace=None,
                    layer_scale=None):
    """x (B, N, C) -> MLPBlock(out = fc2 + x (λ·fc2 + x with a layer scale), ln, hidden (B, N, I), fc2 =
    fc2(gelu(fc1(ln)))); `workspace` unused.
    Why so many parameters: a layer norm's, two projections' and a layer scale."""
    _check_args(x, ln_weight, ln_bias, {"fc1": (fc1_weight, fc1_bias, None),
                                         "fc2": (fc2_weight, fc2_bias, np.shape(fc1_weight)[0])}, layer_scale)
    ln = layer_norm_numpy(x, ln_weight, ln_bias, eps)
    hidden = linear_numpy(ln, fc1_weight)
    hidden = bias_gelu_numpy(hidden, fc1_bias, out=hidden)
    fc2 = linear_numpy(hidden, fc2_weight, fc2_bias)
    return MLPBlock(_residual(x, fc2, layer_scale), ln, hidden, fc2)


# ---------------------------------------------------------------------------------------- Numba pieces


@njit(cache=True, nogil=True)
def _linear_block(x, weight_t, bias, has_bias, by_column, lo, hi, y):
    """linear.py's block: rows lo:hi of y (or, by_column, its columns lo:hi), the bias pre-filled, one GEMM.
    Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    if by_column:
        a, w, o, c0 = x[:, :], weight_t[:, lo:hi], y[:, lo:hi], lo
    else:
        a, w, o, c0 = x[lo:hi, :], weight_t[:, :], y[lo:hi, :], 0
    if has_bias:
        n = o.shape[1]
        for r in range(o.shape[0]):
            row = o[r]                       # one row at a time: 1-D loops vectorise, 2-D indexing does not
            for j in range(n):
                row[j] = bias[c0 + j]
    gemm(a, w, o, 1.0 if has_bias else 0.0)


@njit(cache=True, nogil=True)
def _add_block(x, y, out, layer_scale, has_scale, by_column, lo, hi):
    # out = x + y (or λ·y + x: the product rounded, then the sum, as numpy's two operations) over the rows lo:hi
    # (or, by_column, the columns lo:hi); out may be y. Row by row (1-D loops vectorise).
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    r0, r1, c0, c1 = (0, x.shape[0], lo, hi) if by_column else (lo, hi, 0, x.shape[1])
    n = c1 - c0
    for r in range(r0, r1):
        xr, yr, o = x[r, c0:c1], y[r, c0:c1], out[r, c0:c1]
        if has_scale:
            lam = layer_scale[c0:c1]
            for j in range(n):
                o[j] = lam[j] * yr[j] + xr[j]
        else:
            for j in range(n):
                o[j] = xr[j] + yr[j]


@njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
def _attention_item(qkv, B, num_heads, chunks, scale, bias, has_bias, t, scratch, scores, keep, context):
    # attention.py's item t = (b·H + h)·chunks + r: image b, head h, query rows of chunk r; qkv (B·N, 3C) holds q,
    # k, v side by side (strided views, as the fused projection wrote them), context (B·N, C); bias (H, N, N).
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    N = qkv.shape[0] // B
    C = qkv.shape[1] // 3
    D = C // num_heads
    bh, r = t // chunks, t % chunks
    b, h = bh // num_heads, bh % num_heads
    c0 = h * D
    r0, r1 = r * N // chunks, (r + 1) * N // chunks
    base = b * N
    s = scores[b, h, r0:r1] if keep else scratch[:r1 - r0]
    gemm(qkv[base + r0:base + r1, c0:c0 + D], qkv[base:base + N, C + c0:C + c0 + D].T, s, 0.0)
    _scale_bias_softmax(s, scale, bias[h, r0:r1] if has_bias else bias[0], has_bias)
    gemm(s, qkv[base:base + N, 2 * C + c0:2 * C + c0 + D], context[base + r0:base + r1, c0:c0 + D], 0.0)


@njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
def _ln_block(x, ln_w, ln_b, eps, rows, i, ln):
    # norm.py's layer norm on block i of the rows (rows per block), as the separate kernel splits it
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    lo, hi = i * rows, min(x.shape[0], (i + 1) * rows)
    _layer_norm_kernel(x[lo:hi], ln_w, ln_b, eps, ln[lo:hi])


@njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
def _gelu_rows(hidden, bias, lo, hi):
    # activations.py's bias_gelu on rows lo:hi, in place
    if hidden.itemsize == 4:
        _bias_gelu_kernel_f32(hidden[lo:hi], bias, hidden[lo:hi])
    else:
        _bias_gelu_kernel_f64(hidden[lo:hi], bias, hidden[lo:hi])


# ---------------------------------------------------------------------------------------- by rows


@blocked(fastmath=False, error_model="numpy")
def _attention_rows(x, ln_w, ln_b, eps, wqkv_t, bqkv, has_qkv_bias, wo_t, bo, num_heads, scale, bias, has_bias,
                    lam, has_lam, B, plan, qkv_bounds, attn_bounds, o_bounds, scratch, scores, keep, ln, qkv, context,
                    proj, out):
    # x, ln, context, proj, out (M, C), qkv (M, 3C), M = B·N rows. plan: [ln block rows, qkv by column, chunks,
    # out by column]; each stage one prange over its blocks (the bounds), exactly as the separate kernels split it.
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    for i in prange((x.shape[0] + plan[0] - 1) // plan[0]):
        _ln_block(x, ln_w, ln_b, eps, plan[0], i, ln)
    for i in prange(len(qkv_bounds) - 1):
        _linear_block(ln, wqkv_t, bqkv, has_qkv_bias, plan[1] == 1, qkv_bounds[i], qkv_bounds[i + 1], qkv)
    for i in prange(len(attn_bounds) - 1):
        for t in range(attn_bounds[i], attn_bounds[i + 1]):
            _attention_item(qkv, B, num_heads, plan[2], scale, bias, has_bias, t, scratch[i], scores, keep, context)
    for i in prange(len(o_bounds) - 1):
        _linear_block(context, wo_t, bo, True, plan[3] == 1, o_bounds[i], o_bounds[i + 1], proj)
        _add_block(x, proj, out, lam, has_lam, plan[3] == 1, o_bounds[i], o_bounds[i + 1])


@blocked(fastmath=False, error_model="numpy")
def _mlp_rows(x, ln_w, ln_b, eps, w1_t, b1, w2_t, b2, lam, has_lam, plan, fc1_bounds, gelu_bounds, fc2_bounds, ln,
              hidden, fc2, out):
    # x, ln, fc2, out (M, C), hidden (M, I); fc2 may be out. plan: [ln block rows, fc1 by column, fc2 by column].
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    for i in prange((x.shape[0] + plan[0] - 1) // plan[0]):
        _ln_block(x, ln_w, ln_b, eps, plan[0], i, ln)
    for i in prange(len(fc1_bounds) - 1):
        _linear_block(ln, w1_t, b1, False, plan[1] == 1, fc1_bounds[i], fc1_bounds[i + 1], hidden)
    for i in prange(len(gelu_bounds) - 1):
        _gelu_rows(hidden, b1, gelu_bounds[i], gelu_bounds[i + 1])
    for i in prange(len(fc2_bounds) - 1):
        _linear_block(hidden, w2_t, b2, True, plan[2] == 1, fc2_bounds[i], fc2_bounds[i + 1], fc2)
        _add_block(x, fc2, out, lam, has_lam, plan[2] == 1, fc2_bounds[i], fc2_bounds[i + 1])


# ---------------------------------------------------------------------------------------- by images


@blocked(fastmath=False, error_model="numpy")
def _attention_images(x, ln_w, ln_b, eps, wqkv_t, bqkv, has_qkv_bias, wo_t, bo, num_heads, scale, bias, has_bias,
                      lam, has_lam, B, image_bounds, scratch, scores, keep, ln, qkv, context, proj, out):
    # As _attention_rows, but block i runs every stage on the images image_bounds[i]:image_bounds[i + 1] (their rows
    # are consecutive): one parallel region, no barrier between the stages. Attention items are whole (image, head)
    # pairs (chunks = 1).
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    N = x.shape[0] // B
    for i in prange(len(image_bounds) - 1):
        b0, b1 = image_bounds[i], image_bounds[i + 1]
        r0, r1 = b0 * N, b1 * N
        _layer_norm_kernel(x[r0:r1], ln_w, ln_b, eps, ln[r0:r1])
        _linear_block(ln, wqkv_t, bqkv, has_qkv_bias, False, r0, r1, qkv)
        for t in range(b0 * num_heads, b1 * num_heads):
            _attention_item(qkv, B, num_heads, 1, scale, bias, has_bias, t, scratch[i], scores, keep, context)
        _linear_block(context, wo_t, bo, True, False, r0, r1, proj)
        _add_block(x, proj, out, lam, has_lam, False, r0, r1)


@blocked(fastmath=False, error_model="numpy")
def _mlp_images(x, ln_w, ln_b, eps, w1_t, b1, w2_t, b2, lam, has_lam, B, image_bounds, ln, hidden, fc2, out):
    # As _mlp_rows, every stage of block i on its own images' rows, one parallel region.
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    N = x.shape[0] // B
    for i in prange(len(image_bounds) - 1):
        r0, r1 = image_bounds[i] * N, image_bounds[i + 1] * N
        _layer_norm_kernel(x[r0:r1], ln_w, ln_b, eps, ln[r0:r1])
        _linear_block(ln, w1_t, b1, False, False, r0, r1, hidden)
        _gelu_rows(hidden, b1, r0, r1)
        _linear_block(hidden, w2_t, b2, True, False, r0, r1, fc2)
        _add_block(x, fc2, out, lam, has_lam, False, r0, r1)


# ---------------------------------------------------------------------------------------- Python side


BY_IMAGES = True   # batches of whole images per thread where the batch splits evenly (see image_blocks)


def image_blocks(B, N, C):
    """The image blocks of the by-images split, or None for the by-rows one: by images when the batch splits into
    threads.MAX_BLOCKS equal blocks of whole images (sizes and CPU count only, never the thread count)."""
    if not BY_IMAGES or B < 2 or threads.MAX_BLOCKS < 2 or B % threads.MAX_BLOCKS:
        return None
    bounds = threads.blocks(B, N * C * C, 1)
    return bounds if len(bounds) - 1 == threads.MAX_BLOCKS else None


def _linear_plan(M, N, K):
    """linear_numba's split of an (M, K) @ (K, N) GEMM: (by column, bounds)."""
    by_column = M <= COLUMN_SPLIT_ROWS
    if by_column:
        return True, threads.blocks(N, M * K // 8, threads.MIN_GEMM_BLOCK)
    return False, threads.blocks(M, N * K // 8, threads.MIN_GEMM_BLOCK)


def _ln_rows(M, C):
    """layer_norm_numba's row blocks, as a block length (every row is normalised on its own: any split, same bits)."""
    bounds = threads.blocks(M, C)
    return max(1, int(np.max(np.diff(bounds)))) if M else 1


def _rows(a, dtype):
    return np.require(a, dtype, ["C", "A"])


def _optional(a, dt, empty_shape):
    """(the array in the kernel's dtype, True), or (an empty stand-in, False) for None: Numba takes arrays only."""
    return (_rows(a, dt), True) if a is not None else (np.zeros(empty_shape, dt), False)


def attention_block_numba(x, ln_weight, ln_bias, eps, qkv_weight, qkv_bias, out_weight, out_bias, num_heads, scale,
                          need_probs=False, workspace=None, bias=None, layer_scale=None):
    """Numba twin of `attention_block_numpy`, bit-identical to layer_norm, linear, attention and linear run one
    after the other on this backend, then the residual; the arrays come from `workspace` when given (see the module
    docstring).
    Why so many parameters: the same signature as its twin on the other backend."""
    _check_args(x, ln_weight, ln_bias, {"qkv": (qkv_weight, qkv_bias, None), "output": (out_weight, out_bias, None)},
                layer_scale)
    dt = x.dtype
    B, N, C = x.shape
    C3 = qkv_weight.shape[0]
    if C3 != 3 * C or out_weight.shape != (C, C) or num_heads < 1 or C % num_heads or out_bias is None:
        raise InputError(f"attention_block: qkv weight {qkv_weight.shape} must be ({3 * C}, {C}), output weight "
                         f"{out_weight.shape} ({C}, {C}) with a bias, and {num_heads} heads must split {C} channels")
    ws = FRESH if workspace is None else workspace
    M, H = B * N, num_heads
    x2 = _rows(x, dt).reshape(M, C)
    ln, qkv = ws.get("ln", (M, C), dt), ws.get("qkv", (M, C3), dt)
    context, out = ws.get("context", (M, C), dt), ws.get("attention_out", (M, C), dt)
    proj = out if ws.reuses else np.empty((M, C), dt)
    scores = np.empty((B, H, N, N) if need_probs else (1, 1, 1, 1), dt)   # becomes the probs, if asked
    if bias is not None and np.shape(bias) != (H, N, N):
        raise InputError(f"attention_block: bias {np.shape(bias)} must be (H, N, N) = {(H, N, N)}")
    weights = (_rows(ln_weight, dt), _rows(ln_bias, dt), float(eps), _rows(qkv_weight, dt).T,
               *_optional(qkv_bias, dt, (0,)), _rows(out_weight, dt).T, _rows(out_bias, dt), H, dt.type(scale),
               *_optional(bias, dt, (1, 1, 1)), *_optional(layer_scale, dt, (1,)), B)
    by_images = image_blocks(B, N, C) if M else None
    if by_images is not None:
        scratch = ws.get("attention_scratch", (len(by_images) - 1, 0 if need_probs else N + 1, N), dt)
        _attention_images(x2, *weights, by_images, scratch, scores, bool(need_probs), ln, qkv, context, proj, out)
    elif M:
        qkv_by_col, qkv_bounds = _linear_plan(M, C3, C)
        o_by_col, o_bounds = _linear_plan(M, C, C)
        chunks = query_chunks(B * H, N)
        attn_bounds = threads.blocks(B * H * chunks, N * N // chunks)
        scratch = ws.get("attention_scratch", (len(attn_bounds) - 1, 0 if need_probs else N // chunks + 1, N), dt)
        plan = np.array([_ln_rows(M, C), qkv_by_col, chunks, o_by_col], np.int64)
        _attention_rows(x2, *weights, plan, qkv_bounds, attn_bounds, o_bounds, scratch, scores, bool(need_probs), ln,
                        qkv, context, proj, out)
    shape = (B, N)
    return AttentionBlock(out.reshape(*shape, C), ln.reshape(*shape, C), qkv.reshape(*shape, C3),
                          context.reshape(*shape, C), proj.reshape(*shape, C), scores if need_probs else None)


def mlp_block_numba(x, ln_weight, ln_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias, workspace=None,
                    layer_scale=None):
    """Numba twin of `mlp_block_numpy`, bit-identical to layer_norm, linear, bias_gelu and linear run one after the
    other on this backend, then the residual; the arrays come from `workspace` when given (see the module docstring).
    Why so many parameters: the same signature as its twin on the other backend."""
    _check_args(x, ln_weight, ln_bias, {"fc1": (fc1_weight, fc1_bias, None),
                                         "fc2": (fc2_weight, fc2_bias, np.shape(fc1_weight)[0])}, layer_scale)
    dt = x.dtype
    B, N, C = x.shape
    I = fc1_weight.shape[0]
    if fc1_bias is None or fc2_bias is None or fc2_weight.shape[0] != C:
        raise InputError(f"mlp_block: fc1 and fc2 need biases and fc2 must map back to {C} channels "
                         f"(got {fc2_weight.shape})")
    ws = FRESH if workspace is None else workspace
    M = B * N
    x2 = _rows(x, dt).reshape(M, C)
    ln, hidden, out = ws.get("ln", (M, C), dt), ws.get("hidden", (M, I), dt), ws.get("mlp_out", (M, C), dt)
    fc2 = out if ws.reuses else np.empty((M, C), dt)
    weights = (_rows(ln_weight, dt), _rows(ln_bias, dt), float(eps), _rows(fc1_weight, dt).T, _rows(fc1_bias, dt),
               _rows(fc2_weight, dt).T, _rows(fc2_bias, dt), *_optional(layer_scale, dt, (1,)))
    by_images = image_blocks(B, N, C) if M else None
    if by_images is not None:
        _mlp_images(x2, *weights, B, by_images, ln, hidden, fc2, out)
    elif M:
        fc1_by_col, fc1_bounds = _linear_plan(M, I, C)
        fc2_by_col, fc2_bounds = _linear_plan(M, C, I)
        plan = np.array([_ln_rows(M, C), fc1_by_col, fc2_by_col], np.int64)
        _mlp_rows(x2, *weights, plan, fc1_bounds, threads.blocks(M, I), fc2_bounds, ln, hidden, fc2, out)
    return MLPBlock(out.reshape(B, N, C), ln.reshape(B, N, C), hidden.reshape(B, N, I), fc2.reshape(B, N, C))
