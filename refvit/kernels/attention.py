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

from refvit.errors import InputError
from refvit.kernels import check_float
from refvit.kernels.activations import softmax_inplace, softmax_numpy
from refvit.kernels.jit import njit
from refvit.kernels.threads import for_blocks


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

    bias, if given, is (H, Nq, Nk), added to every batch's scores before the softmax."""
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


# Why the GEMMs are NumPy's here: `np.dot` inside a Numba kernel calls scipy's bundled OpenBLAS, a second
# OpenBLAS with its own thread pool. Its threads spin after each call and fought numpy's (which runs every
# linear layer) for the 2 cores: whole models ran 3-5x slower. One BLAS, one pool: q·kᵀ and p·v go through
# numpy's matmul; the element-wise part in between (scale, bias, softmax) is the fused Numba kernel.


@njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
def _scale_bias_softmax(scores, scale, bias, has_bias):
    # scores: (B, H, Nq, Nk), in place: softmax(scores * scale + bias[h]) over the last axis.
    B, H, Nq, Nk = scores.shape
    for b in range(B):
        for h in range(H):
            for i in range(Nq):
                row = scores[b, h, i]
                if has_bias:
                    bh = bias[h, i]
                    for j in range(Nk):
                        row[j] = row[j] * scale + bh[j]  # scale after the matmul, then the bias, as HF
                else:
                    for j in range(Nk):
                        row[j] = row[j] * scale
                softmax_inplace(row)


def attention_numba(q, k, v, num_heads, scale, bias=None, need_probs=False):
    """Numba twin of `attention_numpy`: q·kᵀ and p·v as BLAS GEMMs (numpy's matmul over heads), the scale, bias and
    softmax fused in one Numba pass over the scores (vectorised exp); probs are the scores buffer, returned if asked.
    Images (or, for one image, heads) are split across threads: each block runs its GEMMs and softmax on its own."""
    _check_args(q, k, v, num_heads, bias)
    dt = q.dtype
    B, Nq, C = q.shape
    Nk = k.shape[1]
    H, D = num_heads, C // num_heads
    qh = q.reshape(B, Nq, H, D).transpose(0, 2, 1, 3)  # (B, H, Nq, D)
    kh = k.reshape(B, Nk, H, D).transpose(0, 2, 3, 1)  # (B, H, D, Nk)
    vh = v.reshape(B, Nk, H, D).transpose(0, 2, 1, 3)  # (B, H, Nk, D)
    has_bias = bias is not None
    bias = np.require(bias if has_bias else np.empty((0, 0, 0), dt), dt, ["C", "A"])
    scores = np.empty((B, H, Nq, Nk), dt)               # (B, H, Nq, Nk), becomes the probs
    out = np.empty((B, Nq, H, D), dt)                   # (B, Nq, H, D) = (B, Nq, C) in memory
    out_h = out.transpose(0, 2, 1, 3)                   # (B, H, Nq, D): heads written straight into their channels

    def images(lo, hi):
        _attend(qh[lo:hi], kh[lo:hi], vh[lo:hi], scores[lo:hi], out_h[lo:hi], scale, bias, has_bias)

    def heads(lo, hi):  # one image: blocks of heads, each with its slice of the bias
        _attend(qh[:, lo:hi], kh[:, lo:hi], vh[:, lo:hi], scores[:, lo:hi], out_h[:, lo:hi], scale,
                bias[lo:hi] if has_bias else bias, has_bias)

    if scores.size:
        if B > 1:
            for_blocks(images, B, H * Nq * Nk)             # work counted in scores elements
        else:
            for_blocks(heads, H, Nq * Nk)
    return out.reshape(B, Nq, C), (scores if need_probs else None)


def _attend(qh, kh, vh, scores, out_h, scale, bias, has_bias):
    """One block of images or heads: scores = q·kᵀ, softmax(scores·scale + bias) in place, out = probs·v."""
    np.matmul(qh, kh, out=scores)
    _scale_bias_softmax(scores, scores.dtype.type(scale), bias, has_bias)
    np.matmul(scores, vh, out=out_h)
