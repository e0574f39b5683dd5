"""A NumPy port of ViTForImageClassification, as someone might write it from transformers' modeling_vit.py. It has
exactly one bug. Notebook 01 §9 asks you to find it; don't read this first.

    logits = forward(x, W, cfg, rec)            # rec: module name -> output, refvit's names
    logits = forward(x, W, cfg, rec, fixes={"helper_name": my_function})   # one helper replaced by yours
"""

import numpy as np
from scipy.special import erf


def layer_norm(x, weight, bias, eps):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * weight + bias


def split_heads(t, heads):
    """(B, N, C) -> (B, H, N, D): each head's D channels."""
    B, N, C = t.shape
    return t.reshape(B, N, C // heads, heads).transpose(0, 3, 1, 2)


def merge_heads(t):
    """(B, H, N, D) -> (B, N, C), the inverse of split_heads."""
    B, H, N, D = t.shape
    return t.transpose(0, 2, 3, 1).reshape(B, N, H * D)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def forward(x, W, cfg, rec=None, fixes=None):
    """ViTForImageClassification by hand -> logits; `fixes` replaces helpers by name."""
    rec = {} if rec is None else rec
    fn = {"layer_norm": layer_norm, "split_heads": split_heads, "merge_heads": merge_heads, "softmax": softmax,
          **(fixes or {})}
    H, eps, P = cfg["num_attention_heads"], cfg["layer_norm_eps"], cfg["patch_size"]
    lin = lambda t, n: t @ W[f"{n}.weight"].T + W[f"{n}.bias"]
    ln = lambda t, n: fn["layer_norm"](t, W[f"{n}.weight"], W[f"{n}.bias"], eps)
    x = x.astype(np.float64)
    B, _, Hi, Wi = x.shape
    proj = W["vit.embeddings.patch_embeddings.projection.weight"]
    patches = x.reshape(B, 3, Hi // P, P, Wi // P, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, -1, 3 * P * P)
    tokens = patches @ proj.reshape(proj.shape[0], -1).T + W["vit.embeddings.patch_embeddings.projection.bias"]
    cls = np.broadcast_to(W["vit.embeddings.cls_token"], (B, 1, tokens.shape[-1]))
    h = rec["vit.embeddings"] = np.concatenate([cls, tokens], 1) + W["vit.embeddings.position_embeddings"]
    for i in range(cfg["num_hidden_layers"]):
        name = f"vit.encoder.layer.{i}"
        t = rec[f"{name}.layernorm_before"] = ln(h, f"{name}.layernorm_before")
        q, k, v = (fn["split_heads"](lin(t, f"{name}.attention.attention.{n}"), H) for n in ("query", "key", "value"))
        probs = fn["softmax"](q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]))
        ctx = rec[f"{name}.attention.attention"] = fn["merge_heads"](probs @ v)
        h = h + lin(ctx, f"{name}.attention.output.dense")
        t = rec[f"{name}.layernorm_after"] = ln(h, f"{name}.layernorm_after")
        t = lin(t, f"{name}.intermediate.dense")
        t = rec[f"{name}.intermediate"] = 0.5 * t * (1 + erf(t / np.sqrt(2)))
        h = rec[name] = h + lin(t, f"{name}.output.dense")
    h = ln(h, "vit.layernorm")
    return lin(h[:, 0], "classifier")
