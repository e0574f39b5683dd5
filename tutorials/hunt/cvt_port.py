"""A NumPy/SciPy port of CvtForImageClassification (convolutional token embedding, convolutional projection, [CLS]
in the last stage), as someone might write it from transformers' modeling_cvt.py. It has exactly one bug. Notebook
04 §7 asks you to find it; don't read this first.

    logits = forward(x, W, cfg, rec)            # rec: module name -> output, refvit's names
    logits = forward(x, W, cfg, rec, fixes={"helper_name": my_function})   # one helper replaced by yours
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import fftconvolve
from scipy.special import erf

EPS = 1e-5  # nn.LayerNorm and nn.BatchNorm2d defaults; CvT never reads config.layer_norm_eps


def layer_norm(x, weight, bias, eps=EPS):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * weight + bias


def conv2d(x, weight, bias, stride, pad):
    """Conv2d (NCHW) with bias, as im2col + einsum: the token embedding."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(x, weight.shape[-2:], axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("bchwij,ocij->bohw", windows, weight, optimize=True) + bias[None, :, None, None]


def depthwise_conv(grid, weight, stride):
    """Conv2d(C, C, 3, stride, padding=1, groups=C, bias=False): one 3×3 filter per channel, every sample and
    channel at once (scipy broadcasts over the batch axis), 'same' size, then every stride-th position."""
    y = fftconvolve(grid, weight[None, :, 0], mode="same", axes=(2, 3))
    return y[:, :, ::stride, ::stride]


def batch_norm(y, W, name, eps=EPS):
    """BatchNorm2d in eval mode: the running statistics."""
    shape = (1, -1, 1, 1)
    mean, var = W[f"{name}.running_mean"].reshape(shape), W[f"{name}.running_var"].reshape(shape)
    return (y - mean) / np.sqrt(var + eps) * W[f"{name}.weight"].reshape(shape) + W[f"{name}.bias"].reshape(shape)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def forward(x, W, cfg, rec=None, fixes=None):
    """CvtForImageClassification by hand -> logits; `fixes` replaces helpers by name."""
    rec = {} if rec is None else rec
    fn = {"layer_norm": layer_norm, "conv2d": conv2d, "depthwise_conv": depthwise_conv, "batch_norm": batch_norm,
          "softmax": softmax, **(fixes or {})}
    lin = lambda t, n: t @ W[f"{n}.weight"].T + W[f"{n}.bias"]
    ln = lambda t, n: fn["layer_norm"](t, W[f"{n}.weight"], W[f"{n}.bias"])
    tokens_of = lambda g: g.reshape(*g.shape[:2], -1).transpose(0, 2, 1)            # (B, C, h, w) -> (B, h·w, C)
    grid, B = x.astype(np.float64), x.shape[0]
    for s in range(len(cfg["depth"])):
        stage, C, H = f"cvt.encoder.stages.{s}", cfg["embed_dim"][s], cfg["num_heads"][s]
        emb = f"{stage}.embedding.convolution_embeddings"
        y = rec[f"{emb}.projection"] = fn["conv2d"](grid, W[f"{emb}.projection.weight"], W[f"{emb}.projection.bias"],
                                                    cfg["patch_stride"][s], cfg["patch_padding"][s])
        h, w = y.shape[2:]
        t = rec[f"{emb}.normalization"] = ln(tokens_of(y), f"{emb}.normalization")
        if cfg["cls_token"][s]:
            t = np.concatenate([np.broadcast_to(W[f"{stage}.cls_token"], (B, 1, C)), t], axis=1)
        for j in range(cfg["depth"][s]):
            name = f"{stage}.layers.{j}"
            att = f"{name}.attention.attention"
            u = rec[f"{name}.layernorm_before"] = ln(t, f"{name}.layernorm_before")
            cls, u = (u[:, :1], u[:, 1:]) if cfg["cls_token"][s] else (None, u)
            g = u.transpose(0, 2, 1).reshape(B, C, h, w)
            qkv = []
            for n, stride in (("query", cfg["stride_q"][s]), ("key", cfg["stride_kv"][s]),
                              ("value", cfg["stride_kv"][s])):
                proj = f"{att}.convolution_projection_{n}.convolution_projection"
                p = fn["depthwise_conv"](g, W[f"{proj}.convolution.weight"], stride)
                p = rec[f"{att}.convolution_projection_{n}"] = tokens_of(fn["batch_norm"](p, W, f"{proj}.normalization"))
                if cls is not None:
                    p = np.concatenate([cls, p], axis=1)
                p = rec[f"{att}.projection_{n}"] = lin(p, f"{att}.projection_{n}")
                qkv.append(p.reshape(B, p.shape[1], H, C // H).transpose(0, 2, 1, 3))    # (B, H, N, D)
            q, k, v = qkv
            probs = rec[f"{att}.dropout"] = fn["softmax"](q @ k.transpose(0, 1, 3, 2) * C ** -0.5)
            ctx = rec[att] = (probs @ v).transpose(0, 2, 1, 3).reshape(B, -1, C)
            a = rec[f"{name}.attention.output"] = lin(ctx, f"{name}.attention.output.dense")
            t = t + a
            u = rec[f"{name}.layernorm_after"] = ln(t, f"{name}.layernorm_after")
            u = lin(u, f"{name}.intermediate.dense")
            u = rec[f"{name}.intermediate"] = 0.5 * u * (1 + erf(u / np.sqrt(2)))
            t = rec[name] = rec[f"{name}.output"] = lin(u, f"{name}.output.dense") + t
        cls, t = (t[:, :1], t[:, 1:]) if cfg["cls_token"][s] else (None, t)
        grid = rec[stage] = t.transpose(0, 2, 1).reshape(B, C, h, w)
    pooled = rec["layernorm"] = ln(cls, "layernorm")
    return lin(pooled.mean(1), "classifier")
