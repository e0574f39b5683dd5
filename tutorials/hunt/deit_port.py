"""A NumPy port of DeiTForImageClassificationWithTeacher, as someone might write it from transformers'
modeling_deit.py. It has exactly one bug. Notebook 02 §8 asks you to find it; don't read this first.

    logits, cls_logits, distillation_logits = forward(x, W, cfg, rec)      # rec: module name -> output
    ... = forward(x, W, cfg, rec, fixes={"helper_name": my_function})      # one helper replaced by yours
"""

import numpy as np
from scipy.special import erf


def layer_norm(x, weight, bias, eps):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * weight + bias


def patchify(x, P):
    """(B, 3, H, W) -> (B, N, 3·P·P): the patches in row-major order, each flattened for the projection."""
    B, Cin, Hi, Wi = x.shape
    return x.reshape(B, Cin, Hi // P, P, Wi // P, P).transpose(0, 2, 4, 3, 5, 1).reshape(B, -1, Cin * P * P)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def forward(x, W, cfg, rec=None, fixes=None):
    """-> (logits, cls_logits, distillation_logits); `fixes` replaces helpers by name."""
    rec = {} if rec is None else rec
    fn = {"layer_norm": layer_norm, "patchify": patchify, "softmax": softmax, **(fixes or {})}
    H, eps, P = cfg["num_attention_heads"], cfg["layer_norm_eps"], cfg["patch_size"]
    lin = lambda t, n: t @ W[f"{n}.weight"].T + W[f"{n}.bias"]
    ln = lambda t, n: fn["layer_norm"](t, W[f"{n}.weight"], W[f"{n}.bias"], eps)
    x = x.astype(np.float64)
    B = x.shape[0]
    proj = W["deit.embeddings.patch_embeddings.projection.weight"]                   # (C, 3, P, P)
    tokens = fn["patchify"](x, P) @ proj.reshape(proj.shape[0], -1).T + W["deit.embeddings.patch_embeddings.projection.bias"]
    C = tokens.shape[-1]
    special = np.concatenate([W["deit.embeddings.cls_token"], W["deit.embeddings.distillation_token"]], 1)
    h = np.concatenate([np.broadcast_to(special, (B, 2, C)), tokens], 1) + W["deit.embeddings.position_embeddings"]
    rec["deit.embeddings"] = h
    split = lambda t: t.reshape(B, -1, H, C // H).transpose(0, 2, 1, 3)
    for i in range(cfg["num_hidden_layers"]):
        name = f"deit.encoder.layer.{i}"
        t = rec[f"{name}.layernorm_before"] = ln(h, f"{name}.layernorm_before")
        q, k, v = (split(lin(t, f"{name}.attention.attention.{n}")) for n in ("query", "key", "value"))
        probs = fn["softmax"](q @ k.transpose(0, 1, 3, 2) / np.sqrt(C // H))
        ctx = rec[f"{name}.attention.attention"] = (probs @ v).transpose(0, 2, 1, 3).reshape(B, -1, C)
        h = h + lin(ctx, f"{name}.attention.output.dense")
        t = lin(ln(h, f"{name}.layernorm_after"), f"{name}.intermediate.dense")
        t = rec[f"{name}.intermediate"] = 0.5 * t * (1 + erf(t / np.sqrt(2)))
        h = rec[name] = h + lin(t, f"{name}.output.dense")
    final = rec["deit.layernorm"] = ln(h, "deit.layernorm")
    cls_logits, dist_logits = lin(final[:, 0], "cls_classifier"), lin(final[:, 1], "distillation_classifier")
    return (cls_logits + dist_logits) / 2, cls_logits, dist_logits
