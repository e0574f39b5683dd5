"""Kernels: each Numba kernel beside a same-signature NumPy twin (docs/DESIGN.md §6).

`get("numpy")` returns the twins (the teaching path: plain array code, one line per formula);
`get("numba")` returns the fast path. Both namespaces carry the same names with the same
signatures and return arrays of the input's dtype (float32 or float64):

    linear(x, weight, bias=None)                        torch.nn.Linear: x @ weightᵀ + bias
    layer_norm(x, weight, bias, eps)                    torch.nn.LayerNorm over the last axis
    gelu(x)                                             torch.nn.functional.gelu (exact erf form)
    bias_gelu(x, bias, out=None)                        gelu(x + bias)
    softmax(x)                                          torch.softmax(x, dim=-1)
    attention(q, k, v, num_heads, scale, bias=None, need_probs=False) -> (context, probs)
                                                        HF eager_attention_forward
    interpolate_bicubic(x, out_h, out_w)                F.interpolate(mode="bicubic", align_corners=False)
    interpolate_bilinear(x, out_h, out_w)               F.interpolate(mode="bilinear", align_corners=False)
    conv2d(x, weight, bias, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1)
                                                        F.conv2d, NCHW, padding (top, bottom, left, right)
    max_pool2d(x, kernel, stride, padding=(0, 0, 0, 0), ceil_mode=False, pad_value=-inf)
                                                        F.max_pool2d, padding filled with pad_value
    group_norm_act(x, num_groups, weight, bias, eps, relu=False)
                                                        F.group_norm on (B, C, ...), then ReLU if relu
    relative_position_index(window_h, window_w)         BEiT's (N+1, N+1) relative position index (int64)
    relative_position_bias(table, index)                table (T, H) gathered to a (H, N+1, N+1) bias
    conv_transpose2d(x, weight, bias, stride=(1, 1))    F.conv_transpose2d, NCHW, no padding
    adaptive_avg_pool2d(x, out_h, out_w)                F.adaptive_avg_pool2d (torch's uneven bins)
    depthwise_conv_tokens(x, height, width, weight, bias, stride, padding) -> (tokens, (ho, wo))
                                                        depthwise Conv2d on a (B, h·w, C) token grid (CvT)
    attention_block(x, ln_weight, ln_bias, eps, qkv_weight, qkv_bias, out_weight, out_bias, num_heads, scale,
                    need_probs=False, workspace=None, bias=None, layer_scale=None)
                      -> AttentionBlock(out, ln, qkv, context, proj, probs)
                                                        ViT's/BEiT's pre-norm attention block + residual, one call
    mlp_block(x, ln_weight, ln_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias, workspace=None,
              layer_scale=None) -> MLPBlock(out, ln, hidden, fc2)
                                                        ViT's/BEiT's pre-norm GELU MLP block + residual, one call

Numba kernels compile lazily (only what a model calls, once per dtype) and are cached on disk
(`cache=True`), so a second process loads them in milliseconds. The kernel modules (and Numba) are imported
by the first `get()` (a model being built), not by `import refvit`: importing Numba costs ~0.2 s and ~60 MB.
"""

from types import SimpleNamespace

import numpy as np

from refvit.errors import InputError, RefvitError

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float(array, name):
    """Raise InputError unless `array` is a float32/float64 ndarray (the dtypes every kernel supports)."""
    if not isinstance(array, np.ndarray) or array.dtype not in FLOAT_DTYPES:
        got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise InputError(f"kernel argument {name!r} must be a float32 or float64 ndarray, got {got}")


BACKENDS = ("numpy", "numba")

# kernel name -> module that defines `<name>_numpy` and `<name>_numba`
KERNELS = {
    "layer_norm": "norm", "gelu": "activations", "bias_gelu": "activations", "softmax": "activations",
    "attention": "attention", "interpolate_bicubic": "interpolate", "interpolate_bilinear": "interpolate",
    "conv2d": "conv", "max_pool2d": "conv", "group_norm_act": "groupnorm", "depthwise_conv_tokens": "dwconv",
    "relative_position_index": "relative_position", "relative_position_bias": "relative_position",
    "conv_transpose2d": "resample", "adaptive_avg_pool2d": "resample", "linear": "linear",
    "attention_block": "encoder", "mlp_block": "encoder",
}
# The kernels the fused encoder blocks (attention_block, mlp_block) do the work of. A namespace where one of them was
# replaced but the blocks were not (parity.with_kernels, a planted bug) runs the modules one by one, so that the
# replacement takes effect (refvit/runner.py).
BLOCK_PARTS = ("layer_norm", "linear", "attention", "bias_gelu", "gelu")
# Kernels with no Numba build: both backends run the NumPy code (separable resizes of small grids, a few calls per
# model; see interpolate.py). Listed here rather than aliased, so that no `*_numba` name pretends otherwise.
NUMPY_ONLY = {"interpolate_bicubic", "interpolate_bilinear"}
_NAMESPACES = {}


def _namespace(backend):
    """SimpleNamespace(name=backend, layer_norm=norm.layer_norm_<backend>, …): every kernel of one backend."""
    import importlib

    found = {name: getattr(importlib.import_module(f"refvit.kernels.{module}"),
                           f"{name}_numpy" if name in NUMPY_ONLY else f"{name}_{backend}")
             for name, module in KERNELS.items()}
    return SimpleNamespace(name=backend, **found)


def get(backend):
    """The kernel namespace for `backend` ("numpy": the readable twins, "numba": the fast path)."""
    if backend not in BACKENDS:
        raise RefvitError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend not in _NAMESPACES:
        _NAMESPACES[backend] = _namespace(backend)
    return _NAMESPACES[backend]


_NO_SCOPE = None


def forward_scope(backend):
    """The context a model's forward runs its kernels in (`with kernels.forward_scope(backend): ...`): for "numba",
    `threads.forward_scope()` (the OpenBLAS Numba calls held at one thread, restored afterwards); for "numpy",
    nothing (numpy's BLAS is the NumPy backend's only parallelism and stays as the user set it)."""
    global _NO_SCOPE
    if backend == "numba":
        from refvit.kernels.threads import forward_scope as scope
        return scope()
    if _NO_SCOPE is None:
        import contextlib
        _NO_SCOPE = contextlib.nullcontext()
    return _NO_SCOPE


def __getattr__(name):
    """`kernels.NUMPY` / `kernels.NUMBA`: the namespaces, built (and their modules imported) on first use."""
    if name in ("NUMPY", "NUMBA"):
        return get(name.lower())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
