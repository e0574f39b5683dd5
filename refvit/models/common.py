"""Pieces every family shares: the intermediates recorder, linear layers, activations, the params tree.

Shape alphabet (README): B batch, N tokens, C channels, H heads, D head dim, h/w patch grid.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..errors import InputError
from ..tensors import is_torch_tensor, to_numpy


class Recorder:
    """Collects named intermediates when asked (DESIGN.md §3.5); a disabled recorder only passes values through.

    Names are checkpoint-name paths of the module that produced the value, e.g. `deit.encoder.layer.3.attention.output`.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.values: dict[str, np.ndarray] = {}

    def __call__(self, name: str, value):
        if self.enabled:
            self.values[name] = value
        return value


def linear(x: np.ndarray, p: dict, K=None) -> np.ndarray:
    """torch.nn.Linear: x @ Wᵀ + b, W of shape (out, in) as the checkpoint stores it (BLAS reads the transpose in place).

    With the backend's kernels K (the encoder's large layers pass them) the Numba path may split rows across threads."""
    if K is not None:
        return K.linear(x, p["weight"], p.get("bias"))
    y = x @ p["weight"].T
    if "bias" in p:
        y += p["bias"]
    return y


def conv1x1(x: np.ndarray, p: dict) -> np.ndarray:
    """torch.nn.Conv2d with a 1×1 kernel on (B, C, h, w): a linear map over channels."""
    B, C, h, w = x.shape
    W = p["weight"].reshape(p["weight"].shape[0], C)                       # (C_out, C)
    y = np.einsum("oc,bcp->bop", W, x.reshape(B, C, h * w), optimize=True)  # (B, C_out, h*w)
    return (y + p["bias"][None, :, None]).reshape(B, -1, h, w)


def pixel_shuffle(x: np.ndarray, r: int) -> np.ndarray:
    """torch.nn.PixelShuffle: (B, C·r², h, w) -> (B, C, h·r, w·r), out[b, c, y·r+i, x·r+j] = in[b, c·r²+i·r+j, y, x]."""
    B, Cr2, h, w = x.shape
    C = Cr2 // (r * r)
    x = x.reshape(B, C, r, r, h, w).transpose(0, 1, 4, 2, 5, 3)  # (B, C, h, r, w, r)
    return x.reshape(B, C, h * r, w * r)


# transformers/activations.py ACT2FN, by name. "gelu" (erf) goes through the kernels; the rest are NumPy formulas
# written as transformers writes them.
def _gelu_tanh(x):  # NewGELUActivation / GELUTanh / FastGELU: the tanh approximation
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _expit(x):  # sigmoid; scipy.special is imported on first use only (~0.2 s, and most models never need it)
    from scipy.special import expit

    return expit(x)


def _quick_gelu(x):  # QuickGELUActivation: x * sigmoid(1.702 x)
    return x * _expit(x.dtype.type(1.702) * x)


ACTIVATIONS = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "quick_gelu": _quick_gelu,
    "relu": lambda x: np.maximum(x, 0),
    "silu": lambda x: x * _expit(x),
    "swish": lambda x: x * _expit(x),
    "tanh": np.tanh,
    "linear": lambda x: x,
}


def activation(name: str, x: np.ndarray, K) -> np.ndarray:
    """Apply transformers' ACT2FN[name]; erf-GELU uses the backend's kernel."""
    if name == "gelu":
        return K.gelu(x)
    return ACTIVATIONS[name](x).astype(x.dtype, copy=False)


def linear_act(x: np.ndarray, p: dict, name: str, K) -> np.ndarray:
    """Linear then activation; for erf-GELU the bias add and GELU are one fused kernel pass."""
    if name == "gelu" and "bias" in p:
        y = K.linear(x, p["weight"])
        return K.bias_gelu(y, p["bias"], out=y)
    return activation(name, linear(x, p, K), K)


def layer_norm(x: np.ndarray, p: dict, eps: float, K) -> np.ndarray:
    """torch.nn.LayerNorm over the last axis (biased variance), weight/bias from the checkpoint."""
    return K.layer_norm(x, p["weight"], p["bias"], eps)


def check_pixel_values(pixel_values, num_channels: int, dtype: np.dtype) -> np.ndarray:
    """Validate (B, C, H, W) pixel values and cast them to the model's dtype."""
    if not isinstance(pixel_values, np.ndarray):
        try:  # a torch tensor is read in place through .numpy() (return_tensors="pt"); no torch import
            pixel_values = to_numpy(pixel_values) if is_torch_tensor(pixel_values) else np.asarray(pixel_values)
        except Exception as e:  # noqa: BLE001 - any conversion failure is a bad input
            raise InputError(f"pixel_values: cannot convert {type(pixel_values).__name__} to an array ({e})") from None
    if pixel_values.dtype.kind not in "fiub":
        raise InputError(f"pixel_values: expected a real numeric array, got dtype {pixel_values.dtype}")
    if pixel_values.ndim != 4:
        raise InputError(f"pixel_values: expected shape (B, {num_channels}, H, W), got {pixel_values.shape}")
    B, C, H, W = pixel_values.shape
    if C != num_channels:
        raise InputError(f"pixel_values: expected {num_channels} channels (config num_channels), got shape {pixel_values.shape}")
    if B == 0 or H == 0 or W == 0:
        raise InputError(f"pixel_values: empty batch or image, shape {pixel_values.shape}")
    return np.ascontiguousarray(pixel_values, dtype=dtype)


def rename_modules(tensors: dict, table: list) -> dict:
    """Apply (regex, replacement) renames to every tensor name, in order (e.g. transformers-5 -> checkpoint names)."""
    out = {}
    for name, value in tensors.items():
        for pattern, replacement in table:
            name = re.sub(pattern, replacement, name)
        out[name] = value
    return out


def nest(flat: dict[str, np.ndarray]) -> dict:
    """Flat checkpoint names -> params tree: "a.layer.3.b" -> p["a"]["layer"][3]["b"] (lists for numbered children)."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(int(part) if part.isdigit() else part, {})
        node[parts[-1]] = value
    return _lists(tree)


def _lists(node):
    if not isinstance(node, dict):
        return node
    out = {k: _lists(v) for k, v in node.items()}
    if out and all(isinstance(k, int) for k in out) and sorted(out) == list(range(len(out))):
        return [out[i] for i in range(len(out))]
    return out
