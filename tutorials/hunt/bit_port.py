"""A NumPy port of BitForImageClassification (pre-activation, no global padding), as someone might write it from
transformers' modeling_bit.py. It has exactly one bug. Notebook 05 §7 asks you to find it; don't read this first.

    logits = forward(x, W, cfg, rec)            # rec: module name -> output, refvit's names
    logits = forward(x, W, cfg, rec, fixes={"group_norm": my_group_norm})   # one helper replaced by yours
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

WS_EPS, GN_EPS = 1e-8, 1e-5


def standardize(W):
    flat = W.astype(np.float64).reshape(W.shape[0], -1)
    return ((flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + WS_EPS)).reshape(W.shape)


def conv2d(x, W, stride=1, pad=0):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = W.shape[-1]
    windows = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("bchwij,ocij->bohw", windows, W, optimize=True)


def group_norm(x, weight, bias, groups, eps=GN_EPS):
    """nn.GroupNorm(groups, C): normalise each (sample, group) over its channels and positions, then scale, shift."""
    B, C, h, w = x.shape
    g = x.reshape(B, C // groups, groups, h * w)
    mean, var = g.mean(axis=(1, 3), keepdims=True), g.var(axis=(1, 3), keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return y * weight[:, None, None] + bias[:, None, None]


def forward(x, W, cfg, rec=None, fixes=None):
    """BitForImageClassification by hand -> logits; `fixes` replaces helpers by name (e.g. {"group_norm": f})."""
    rec = {} if rec is None else rec
    fn = {"standardize": standardize, "conv2d": conv2d, "group_norm": group_norm, **(fixes or {})}
    G = cfg["num_groups"]
    norm_relu = lambda t, name: np.maximum(fn["group_norm"](t, W[f"{name}.weight"], W[f"{name}.bias"], G), 0)
    conv = lambda t, name, stride=1, pad=0: fn["conv2d"](t, fn["standardize"](W[f"{name}.weight"]), stride, pad)
    h = rec["bit.embedder.convolution"] = conv(x.astype(np.float64), "bit.embedder.convolution", 2, 3)
    h = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h = rec["bit.embedder.pooler"] = sliding_window_view(h, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(-1, -2))
    for s, depth in enumerate(cfg["depths"]):
        for j in range(depth):
            name, stride = f"bit.encoder.stages.{s}.layers.{j}", 2 if s > 0 and j == 0 else 1
            pre = rec[f"{name}.norm1"] = norm_relu(h, f"{name}.norm1")
            shortcut = h
            if f"{name}.downsample.conv.weight" in W:
                shortcut = rec[f"{name}.downsample.conv"] = conv(pre, f"{name}.downsample.conv", stride)
            t = rec[f"{name}.conv1"] = conv(pre, f"{name}.conv1")
            t = rec[f"{name}.norm2"] = norm_relu(t, f"{name}.norm2")
            t = rec[f"{name}.conv2"] = conv(t, f"{name}.conv2", stride, 1)
            t = rec[f"{name}.norm3"] = norm_relu(t, f"{name}.norm3")
            t = rec[f"{name}.conv3"] = conv(t, f"{name}.conv3")
            h = rec[name] = t + shortcut
    h = rec["bit.norm"] = norm_relu(h, "bit.norm")
    return h.mean(axis=(2, 3)) @ W["classifier.1.weight"].T + W["classifier.1.bias"]
