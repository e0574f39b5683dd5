"""A NumPy port of BeitForImageClassification (relative position bias per layer, layer scale, mean pooling), as
someone might write it from transformers' modeling_beit.py. It has exactly one bug. Notebook 03 §9 asks you to find
it; don't read this first.

    logits = forward(x, W, cfg, rec)            # rec: module name -> output, refvit's names
    logits = forward(x, W, cfg, rec, fixes={"helper_name": my_function})   # one helper replaced by yours
"""

import numpy as np
from scipy.special import erf


def layer_norm(x, weight, bias, eps):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * weight + bias


def relative_index(h, w):
    """(N+1, N+1) table row of every (query, key) pair, [CLS] rows last (BeitRelativePositionBias)."""
    coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :]
    T = (2 * h - 1) * (2 * w - 1) + 3
    index = np.empty((h * w + 1, h * w + 1), np.int64)
    index[1:, 1:] = (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)
    index[0, :], index[:, 0], index[0, 0] = T - 3, T - 2, T - 1
    return index


def layer_scales(W, name):
    """(scale of the attention branch, scale of the MLP branch) of one layer."""
    return W[f"{name}.lambda_2"], W[f"{name}.lambda_1"]


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def forward(x, W, cfg, rec=None, fixes=None):
    """BeitForImageClassification by hand -> logits; `fixes` replaces helpers by name."""
    rec = {} if rec is None else rec
    fn = {"layer_norm": layer_norm, "relative_index": relative_index, "layer_scales": layer_scales,
          "softmax": softmax, **(fixes or {})}
    H, eps, P = cfg["num_attention_heads"], cfg["layer_norm_eps"], cfg["patch_size"]
    lin = lambda t, n: t @ W[f"{n}.weight"].T + (W[f"{n}.bias"] if f"{n}.bias" in W else 0)
    ln = lambda t, n: fn["layer_norm"](t, W[f"{n}.weight"], W[f"{n}.bias"], eps)
    x = x.astype(np.float64)
    B, _, Hi, Wi = x.shape
    gh, gw = Hi // P, Wi // P
    proj = W["beit.embeddings.patch_embeddings.projection.weight"]
    patches = x.reshape(B, 3, gh, P, gw, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, -1)
    tokens = patches @ proj.reshape(proj.shape[0], -1).T + W["beit.embeddings.patch_embeddings.projection.bias"]
    C = tokens.shape[-1]
    h = np.concatenate([np.broadcast_to(W["beit.embeddings.cls_token"], (B, 1, C)), tokens], 1)
    if "beit.embeddings.position_embeddings" in W:
        h = h + W["beit.embeddings.position_embeddings"]
    rec["beit.embeddings"] = h
    index = fn["relative_index"](gh, gw)
    split = lambda t: t.reshape(B, -1, H, C // H).transpose(0, 2, 1, 3)
    for i in range(cfg["num_hidden_layers"]):
        name = f"beit.encoder.layer.{i}"
        table = W[f"{name}.attention.attention.relative_position_bias.relative_position_bias_table"]
        bias = table[index].transpose(2, 0, 1)[None]
        rec[f"{name}.attention.attention.relative_position_bias"] = bias
        t = rec[f"{name}.layernorm_before"] = ln(h, f"{name}.layernorm_before")
        q, k, v = (split(lin(t, f"{name}.attention.attention.{n}")) for n in ("query", "key", "value"))
        probs = fn["softmax"](q @ k.transpose(0, 1, 3, 2) / np.sqrt(C // H) + bias)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B, -1, C)
        attn = rec[f"{name}.attention.output"] = lin(ctx, f"{name}.attention.output.dense")
        scale_attn, scale_mlp = fn["layer_scales"](W, name)
        h = h + scale_attn * attn
        t = rec[f"{name}.layernorm_after"] = ln(h, f"{name}.layernorm_after")
        t = lin(t, f"{name}.intermediate.dense")
        t = 0.5 * t * (1 + erf(t / np.sqrt(2)))
        t = rec[f"{name}.output"] = lin(t, f"{name}.output.dense")
        h = rec[name] = h + scale_mlp * t
    pooled = rec["beit.pooler"] = ln(h[:, 1:].mean(1), "beit.pooler.layernorm")
    return lin(pooled, "classifier")
