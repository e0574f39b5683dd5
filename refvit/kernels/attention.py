"""Multi-head scaled dot-product attention, as HF transformers' `eager_attention_forward` (ViT, DeiT, BEiT).

Vaswani et al. 2017, eq. 1, per head h:   context_h = softmax(q_h @ k_hᵀ * scale + bias_h) @ v_h

transformers/models/vit/modeling_vit.py `eager_attention_forward`:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling        # scale AFTER the matmul
    attn_weights = attn_weights + attention_mask                              # BEiT: relative position bias
    attn_weights = softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2)           # then reshape (B, N, C)
Heads are split as `.view(B, N, H, D).transpose(1, 2)`: head h owns channels h*D:(h+1)*D.

Note: HF's softmax runs in float32 even for a float64 model (`dtype=torch.float32`, then `.to(query.dtype)`).
These kernels keep the input's dtype (a float64 run is float64 throughout), so against a float64 HF run
everything from the first attention map on agrees only to float32 rounding (~1e-7), not 1e-10; float32
runs are unaffected. (Redoing the float32 softmax here would not close the gap: torch's vectorised
float32 exp/sum and NumPy's differ by a few float32 ulps.)
"""

import numpy as np
from numba import prange

from refvit.errors import InputError
from refvit.kernels import check_float, threads
from refvit.kernels.blas import gemm
from refvit.kernels.activations import softmax_inplace, softmax_numpy
from refvit.kernels.jit import njit
from refvit.kernels.threads import blocked


def _check_args(q, k, v, num_heads, bias):
    for name, a in (("q", q), ("k", k), ("v", v)):
        check_float(a, name)
        if a.ndim != 3 or a.dtype != q.dtype:
            raise InputError(f"attention: {name} must be (B, N, C) of dtype {q.dtype}, got {a.shape} {a.dtype}")
    B, Nq, C = q.shape
    Nk = k.shape[1]
    if k.shape != (B, Nk, C) or v.shape != k.shape:
        raise InputError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not share B and C")
    if num_heads < 1 or C == 0 or C % num_heads:
        raise InputError(f"attention: {num_heads} heads do not split {C} channels")
    if Nk == 0:
        raise InputError(f"attention: k and v have no tokens ({k.shape})")
    if bias is not None and np.shape(bias) != (num_heads, Nq, Nk):
        raise InputError(f"attention: bias {np.shape(bias)} must be (H, Nq, Nk) = {(num_heads, Nq, Nk)}")


def attention_numpy(q, k, v, num_heads, scale, bias=None, need_probs=False):
    """q (B, Nq, C), k and v (B, Nk, C) -> (context (B, Nq, C), probs (B, H, Nq, Nk) or None).

    bias, if given, is (H, Nq, Nk), added to every batch's scores before the softmax.
    Why so many parameters: HF eager_attention_forward's inputs (q, k, v, heads, scale, bias) and whether to
    return the probabilities."""
    _check_args(q, k, v, num_heads, bias)
    B, Nq, C = q.shape
    Nk = k.shape[1]
    H, D = num_heads, C // num_heads
    qh = q.reshape(B, Nq, H, D).transpose(0, 2, 1, 3)  # (B, H, Nq, D)
    kh = k.reshape(B, Nk, H, D).transpose(0, 2, 1, 3)  # (B, H, Nk, D)
    vh = v.reshape(B, Nk, H, D).transpose(0, 2, 1, 3)  # (B, H, Nk, D)
    scores = np.matmul(qh, kh.transpose(0, 1, 3, 2)) * q.dtype.type(scale)  # (B, H, Nq, Nk)
    if bias is not None:
        scores = scores + np.asarray(bias, q.dtype)  # (H, Nq, Nk) broadcast over B
    probs = softmax_numpy(scores)  # (B, H, Nq, Nk)
    context = np.matmul(probs, vh)  # (B, H, Nq, D)
    context = context.transpose(0, 2, 1, 3).reshape(B, Nq, C)  # (B, Nq, H*D): heads back along channels
    return context, (probs if need_probs else None)


@njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
def _scale_bias_softmax(scores, scale, bias, has_bias):
    # scores: (Nq, Nk) of one image and head, in place: softmax(scores * scale + bias) over the last axis;
    # bias: that head's (Nq, Nk) slice.
    Nq, Nk = scores.shape
    for i in range(Nq):
        row = scores[i]
        if has_bias:
            bh = bias[i]
            for j in range(Nk):
                row[j] = row[j] * scale + bh[j]  # scale after the matmul, then the bias, as HF
        else:
            for j in range(Nk):
                row[j] = row[j] * scale
        softmax_inplace(row)


@blocked(fastmath=False, error_model="numpy")
def _attention_blocks(q, k, v, num_heads, chunks, scale, bias, has_bias, scores, keep, out, bounds):
    # q (B, Nq, C), k and v (B, Nk, C), out (B, Nq, C); bias (H, Nq, Nk). keep: scores (B, H, Nq, Nk) becomes the
    # probs; else each block reuses one (rows, Nk) scratch that stays in cache (same leading dimension Nk, so the
    # same GEMM calls and bits). Item t = (b·H + h)·chunks + r is one image b, head h and chunk r of its query rows:
    # its q, k, v and out are the channel slice h·D:(h+1)·D (strided views, no copies); block i owns items
    # bounds[i]:bounds[i + 1].
    """Why so many parameters: a Numba kernel takes arrays and scalars only, each its own argument."""
    Nq, Nk = q.shape[1], k.shape[1]
    D = q.shape[2] // num_heads
    for i in prange(len(bounds) - 1):
        scratch = np.empty((0 if keep else Nq // chunks + 1, Nk), out.dtype)
        for t in range(bounds[i], bounds[i + 1]):
            bh, r = t // chunks, t % chunks
            b, h = bh // num_heads, bh % num_heads
            c0, c1 = h * D, (h + 1) * D
            r0, r1 = r * Nq // chunks, (r + 1) * Nq // chunks
            s = scores[b, h, r0:r1] if keep else scratch[:r1 - r0]
            gemm(q[b, r0:r1, c0:c1], k[b, :, c0:c1].T, s, 0.0)       # (rows, D) @ (D, Nk)
            _scale_bias_softmax(s, scale, bias[h, r0:r1] if has_bias else bias[0], has_bias)
            gemm(s, v[b, :, c0:c1], out[b, r0:r1, c0:c1], 0.0)       # (rows, Nk) @ (Nk, D), into head h's channels


def query_chunks(pairs, Nq):
    """Query-row chunks per (image, head): enough items to share evenly across the threads when there are few
    pairs (DeiT-T's 3 heads at batch 1 in 2 blocks would be 1 + 2), none thinner than 32 rows. Sizes (and the CPU
    count) only, like every block."""
    want = -(-2 * threads.MAX_BLOCKS // pairs)          # ceil(2·MAX_BLOCKS / pairs)
    return max(1, min(want, Nq // 32))


def attention_numba(q, k, v, num_heads, scale, bias=None, need_probs=False):
    """Numba twin of `attention_numpy`: per (image, head), q·kᵀ and p·v as BLAS GEMMs on strided views of q, k, v
    (refvit.kernels.blas), the scale, bias and softmax fused in one pass over that head's scores in between; the
    (image, head, query chunk) items are split into blocks across Numba's threads (BLAS single-threaded), each
    block running its GEMMs and softmax without returning to Python. The (B, H, Nq, Nk) probabilities are written
    only if asked (need_probs); otherwise each block's scores live in a small scratch that stays in cache.
    Why so many parameters: the same signature as its twin on the other backend."""
    _check_args(q, k, v, num_heads, bias)
    dt = q.dtype
    B, Nq, C = q.shape
    Nk = k.shape[1]
    H = num_heads
    q, k, v = (a if a.strides[-1] == dt.itemsize and a.flags.aligned else np.ascontiguousarray(a)
               for a in (q, k, v))  # strided views (q, k, v split from one fused projection) are read in place
    has_bias = bias is not None
    bias = np.require(bias if has_bias else np.zeros((1, 1, 1), dt), dt, ["C", "A"])
    scores = np.empty((B, H, Nq, Nk) if need_probs else (0, 0, 0, 0), dt)   # becomes the probs, if asked
    out = np.empty((B, Nq, C), dt)                      # (B, Nq, C): heads written straight into their channels
    if B * H * Nq * Nk:
        chunks = query_chunks(B * H, Nq)
        bounds = threads.blocks(B * H * chunks, Nq * Nk // chunks)  # work counted in scores elements
        _attention_blocks(q, k, v, H, chunks, dt.type(scale), bias, has_bias, scores, bool(need_probs), out, bounds)
    return out, (scores if need_probs else None)
