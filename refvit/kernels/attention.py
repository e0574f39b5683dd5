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
from numba import njit, prange

from refvit.errors import InputError
from refvit.kernels import check_float
from refvit.kernels.activations import softmax_numpy, softmax_row


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


# OpenBLAS (interface/gemm.c) runs a gemm on the calling thread when M*N*K <= SMP_THRESHOLD_MIN (65536)
# * GEMM_MULTITHREAD_THRESHOLD (4); above that it wakes its own threads, and inside our prange threads
# that oversubscribed the 2 cores: whole-head gemms were 3-6x slower than row blocks under this size.
BLAS_SERIAL_MNK = 65536 * 4


@njit(cache=True, fastmath=False)
def _attend_head(q, k, v, b, h, num_heads, scale, bias, has_bias, probs, need_probs, out, block):
    # One (batch b, head h): out[b, :, h*D:(h+1)*D] = softmax(q_h @ k_hᵀ * scale + bias[h]) @ v_h,
    # `block` query rows at a time. np.dot on contiguous 2-D arrays calls BLAS gemm.
    Nq, C = q.shape[1], q.shape[2]
    D = C // num_heads
    c0 = h * D
    qh = np.ascontiguousarray(q[b, :, c0:c0 + D])  # (Nq, D)
    khT = np.ascontiguousarray(k[b, :, c0:c0 + D].T)  # (D, Nk)
    vh = np.ascontiguousarray(v[b, :, c0:c0 + D])  # (Nk, D)
    for i0 in range(0, Nq, block):
        i1 = min(i0 + block, Nq)
        scores = np.dot(qh[i0:i1], khT)  # (i1 - i0, Nk)
        for i in range(i1 - i0):
            row = scores[i]
            for j in range(row.shape[0]):
                row[j] = row[j] * scale  # scale after the matmul, as HF
                if has_bias:
                    row[j] += bias[h, i0 + i, j]
            softmax_row(row, row)
        context = np.dot(scores, vh)  # (i1 - i0, D)
        for i in range(i1 - i0):  # element loops: a sliced setitem here tripled the compile time
            for d in range(D):
                out[b, i0 + i, c0 + d] = context[i, d]  # this head's channels
            if need_probs:
                for j in range(scores.shape[1]):
                    probs[b, h, i0 + i, j] = scores[i, j]


@njit(cache=True, fastmath=False, parallel=True)
def _attention_kernel(q, k, v, num_heads, scale, bias, has_bias, probs, need_probs, out, block):
    # q, out: (B, Nq, C); k, v: (B, Nk, C); bias: (H, Nq, Nk) or empty; probs: (B, H, Nq, Nk) or empty.
    for bh in prange(q.shape[0] * num_heads):  # one (batch, head) pair per iteration
        _attend_head(q, k, v, bh // num_heads, bh % num_heads, num_heads, scale, bias, has_bias,
                     probs, need_probs, out, block)


def attention_numba(q, k, v, num_heads, scale, bias=None, need_probs=False):
    """Numba twin of `attention_numpy`: (batch, head) pairs in parallel, each head's matmuls via BLAS on
    blocks of query rows, scale + bias + softmax fused in between; probs only allocated when need_probs."""
    _check_args(q, k, v, num_heads, bias)
    dt = q.dtype
    B, Nq, C = q.shape
    Nk = k.shape[1]
    q, k, v = (np.require(a, dt, ["C", "A", "W"]) for a in (q, k, v))  # one signature per dtype
    out = np.empty((B, Nq, C), dt)
    probs = np.empty((B, num_heads, Nq, Nk) if need_probs else (0, 0, 0, 0), dt)
    has_bias = bias is not None
    bias = np.require(bias if has_bias else np.empty((0, 0, 0), dt), dt, ["C", "A", "W"])
    block = max(1, BLAS_SERIAL_MNK // (Nk * (C // num_heads)))  # query rows per gemm
    if out.size:
        _attention_kernel(q, k, v, num_heads, dt.type(scale), bias, has_bias, probs, need_probs, out, block)
    return out, (probs if need_probs else None)
