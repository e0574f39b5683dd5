"""Pieces every family shares: the forward context (`Forward`), activations, the params tree.

Shape alphabet (docs: Contributing): B batch, N tokens, C channels, H heads, D head dim, h/w patch grid.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..errors import CheckpointError, InputError
from ..tensors import is_torch_tensor, to_numpy


QKV = ("query", "key", "value")


class Forward:
    """The context of one forward call (docs/DESIGN.md §3): the kernel backend, the recorder, and where the code is —
    the checkpoint-name path of the current module and its params node. Built once per call by the runner
    (refvit/runner.py `run`); `ctx.at("encoder.layer.3")` is the same call one module further down.

    A layer then reads like the paper, each step naming the checkpoint module it runs:

        h = ctx.layer_norm("layernorm_before", x)          # p["layernorm_before"], recorded as <path>.layernorm_before
        q = ctx.linear("query", h)                          # kernels.linear(h, W, b), recorded as <path>.query

    Every GEMM and convolution goes through `ctx.kernels` (the backend chosen at load; there is no other path).
    Recording only stores values (docs/DESIGN.md §5): the arithmetic is the same whether or not anything records.
    """

    __slots__ = ("kernels", "cfg", "p", "path", "recorder", "workspace")

    def __init__(self, kernels, cfg, params, recorder: dict | None = None, path: str = "", workspace=None):
        """Why so many parameters: what a forward call carries (§3), and the workspace of the fused kernels."""
        self.kernels = kernels     # the backend's kernel namespace (refvit.kernels.get(backend), or a wrapped one)
        self.cfg = cfg             # the model's frozen config
        self.p = params            # params node of the current module (checkpoint names; lists for numbered children)
        self.path = path           # its checkpoint-name path ("" at the top of the checkpoint)
        self.recorder = recorder   # {checkpoint name: array} being recorded, or None when nothing records
        self.workspace = workspace  # where fused kernels write (refvit/kernels/workspace.py), or None: no fused
                                    # kernels (the NumPy backend, an emulated arithmetic), each module its own call

    @property
    def recording(self) -> bool:
        return self.recorder is not None

    def name(self, child: str = "") -> str:
        """The checkpoint-name path of `child` (dotted, relative to this module; "" = this module)."""
        if not child:
            return self.path
        return f"{self.path}.{child}" if self.path else child

    def param(self, child: str, optional: bool = False):
        """The params node at the dotted path `child` ("attention.output.dense"), relative to this module.

        A module or tensor the params do not hold is a CheckpointError naming its checkpoint path (a misspelt name
        fails here, not later as a TypeError); `optional=True` returns None instead, for the modules a checkpoint
        may lack (a base model's pooler, BEiT's layer scale …)."""
        node = self.p
        for part in child.split("."):
            key = int(part) if part.isdigit() else part
            if isinstance(node, list) and isinstance(key, int) and key < len(node) or \
                    isinstance(node, dict) and key in node:
                node = node[key]
            elif optional:
                return None
            else:
                held = sorted(map(str, node)) if isinstance(node, dict) else f"{len(node)} numbered children" \
                    if isinstance(node, list) else "a tensor"
                raise CheckpointError(f"{self.name(child)}: the params hold no {part!r} here (they hold: {held}); "
                                      "the code asks for a module this checkpoint does not have")
        return node

    def has(self, child: str) -> bool:
        """Whether the params hold `child` (an optional module: a base model's pooler …)."""
        return self.param(child, optional=True) is not None

    def at(self, child: str, params=None, optional: bool = False) -> "Forward":
        """The context of submodule `child`: its params node (or `params`), its path; the same kernels and recorder.
        A child the params do not hold is a CheckpointError (see `param`), unless `optional=True`: then it is a
        module with no tensors of its own (BeitPooler pooling [CLS]) and its params node is empty."""
        if params is None:
            params = self.param(child, optional)
        return Forward(self.kernels, self.cfg, {} if params is None else params, self.recorder, self.name(child),
                       self.workspace)

    def record(self, child: str, value, copy: bool = False):
        """Record `value` as the output of submodule `child` (when recording) and return it unchanged. `copy=True`
        for a value the forward later overwrites in place (the recorded array keeps what the module returned)."""
        if self.recorder is not None:
            self.recorder[self.name(child)] = value.copy() if copy else value
        return value

    def record_output(self, value, copy: bool = False):
        """Record `value` as the output of this module itself (under `ctx.path`) and return it unchanged."""
        return self.record("", value, copy)

    def kernels_named(self, op: str):
        """The kernels for a step the family code runs itself (a resize, a pool, a table lookup: no linear, conv or
        norm of its own), its calls named `<path>.<op>` where calls are named (the precision emulation's context,
        refvit/precision.py, reports every kernel call by name); the plain backends ignore the name."""
        return self.kernels

    # torch.nn modules by checkpoint name: params p[name], the output recorded under `name` unless record=False
    # (a module whose output transformers' hooks see at its parent: record the parent, `ctx.record(parent, …)`)

    def _out(self, name: str, record: bool, value):
        return self.record(name, value) if record else value

    def linear(self, name: str, x, record: bool = True):
        """torch.nn.Linear `name`: x @ Wᵀ + b (kernels.linear)."""
        p = self.param(name)
        return self._out(name, record, self.kernels.linear(x, p["weight"], p.get("bias")))

    def linear_act(self, name: str, x, act: str, record: bool = True):
        """Linear `name` then ACT2FN[act]; for erf-GELU the bias add and the GELU are one fused kernel pass."""
        p = self.param(name)
        if act == "gelu" and "bias" in p:
            y = self.kernels.linear(x, p["weight"])
            y = self.kernels.bias_gelu(y, p["bias"], out=y)
        else:
            y = self.act(act, self.kernels.linear(x, p["weight"], p.get("bias")))
        return self._out(name, record, y)

    def linear_qkv(self, x, names=QKV):
        """The q, k, v projections (torch.nn.Linear each, recorded under their names) as one GEMM when their weights
        were concatenated at load (`fuse_qkv`): x @ [Wq; Wk; Wv]ᵀ + [bq; bk; bv], then split along channels (views).
        Loading always fuses them or fails (`fuse_qkv`); three GEMMs run only for params replaced after load (a
        planted bug, an edited weight), with the same values up to the GEMM's rounding."""
        fused = self.qkv_params(names)
        if fused is None:
            return tuple(self.linear(n, x) for n in names)
        weight, bias = fused
        y = self.kernels.linear(x, weight, bias)                               # (..., 3C)
        C = weight.shape[0] // len(names)
        return tuple(self.record(n, y[..., i * C:(i + 1) * C]) for i, n in enumerate(names))

    def qkv_params(self, names=QKV):
        """(weight (3C, C), bias (3C,) or None) of the q, k, v projections when `fuse_qkv` concatenated them at load,
        else None."""
        ps = [self.param(n) for n in names]
        weight = fused_rows([p["weight"] for p in ps])
        bias = None if weight is None else fused_rows([p.get("bias") for p in ps], allow_missing=True)
        if bias is None:
            return None
        return weight, (bias if bias.size else None)

    def layer_norm(self, name: str, x, eps: float | None = None, record: bool = True):
        """torch.nn.LayerNorm `name` over the last axis; eps defaults to the config's layer_norm_eps."""
        p = self.param(name)
        eps = self.cfg.layer_norm_eps if eps is None else eps
        return self._out(name, record, self.kernels.layer_norm(x, p["weight"], p["bias"], eps))

    def conv2d(self, name: str, x, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), bias=None,
               record: bool = True):
        """torch.nn.Conv2d `name` (NCHW, padding (top, bottom, left, right)); `bias` replaces the module's own.
        Why so many parameters: torch.nn.Conv2d's settings (stride, padding, dilation), the bias and whether to
        record."""
        p = self.param(name)
        bias = p.get("bias") if bias is None else bias
        return self._out(name, record, self.kernels.conv2d(x, p["weight"], bias, stride, padding, dilation))

    def act(self, name: str, x):
        """transformers' ACT2FN[name]; erf-GELU is the backend's kernel."""
        return activation(name, x, self.kernels)


def classifier_or_identity(ctx, name: str, x, record_as: str | None = None):
    """transformers' `nn.Linear(C, num_labels) if num_labels > 0 else nn.Identity()`: the Linear `name` on x, or x
    itself when the config has no labels; either recorded under `record_as` (None: `name`)."""
    y = ctx.linear(name, x, record=False) if ctx.cfg.num_labels > 0 else x
    return ctx.record(name if record_as is None else record_as, y)


def classifier_shapes(name: str, num_labels: int, width: int) -> dict[str, tuple]:
    """The tensors of `classifier_or_identity`: Linear(width, num_labels) under `name`; none for the identity."""
    return {f"{name}.weight": (num_labels, width), f"{name}.bias": (num_labels,)} if num_labels > 0 else {}


def fuse_qkv(tensors: dict, arch=None, names=QKV) -> dict:
    """Family.after_cast of ViT/DeiT/BEiT: each attention's q, k, v weights copied once into one (3C, C) array and
    replaced by views of its rows, the biases likewise into one (3C,) array, zeros standing in for a missing one
    (BEiT's key has no bias; that name stays absent). The tree keeps its names and values; the originals' mapped
    pages are released by `prepare_params`, so the copy adds no memory. Weights that already are the consecutive row
    blocks of one array (`refvit verify`'s seeded draw) are used as they are, not copied.
    `Forward.linear_qkv` then runs one GEMM."""
    out = dict(tensors)
    for name in tensors:
        if not name.endswith(f".{names[0]}.weight"):
            continue
        stem = name[:-len(f"{names[0]}.weight")]
        weights = [tensors.get(f"{stem}{n}.weight") for n in names]
        if any(w is None or w.ndim != 2 or w.shape != weights[0].shape or w.dtype != weights[0].dtype
               for w in weights):  # the strict mapping ran before: only a family's wrong names can get here
            raise CheckpointError(f"{stem}{{{','.join(names)}}}.weight: cannot fuse the q/k/v projections "
                                  f"(shapes {[None if w is None else w.shape for w in weights]}); refvit's bug, "
                                  "please report it")
        fused = fused_rows(weights)                   # already the row blocks of one array (a seeded draw): as is
        fused = np.concatenate(weights) if fused is None else fused                   # (3C, C)
        biases = [tensors.get(f"{stem}{n}.bias") for n in names]
        if any(b is not None for b in biases):
            fused_bias = np.concatenate([b if b is not None else np.zeros(w.shape[0], w.dtype)
                                         for b, w in zip(biases, weights)])           # (3C,)
        lo = 0
        for n, w, b in zip(names, weights, biases):
            out[f"{stem}{n}.weight"] = fused[lo:lo + w.shape[0]]
            if b is not None:
                out[f"{stem}{n}.bias"] = fused_bias[lo:lo + w.shape[0]]
            lo += w.shape[0]
    return out


def fused_rows(arrays, allow_missing=False):
    """The one array whose consecutive row blocks `arrays` are (as `fuse_qkv` made them), else None. With
    allow_missing, None entries are blocks of it too (a missing bias); all None gives an empty array."""
    present = [a for a in arrays if a is not None]
    if not present:
        return np.empty(0) if allow_missing else None
    if len(present) < len(arrays) and not allow_missing:
        return None
    base = present[0].base
    if not isinstance(base, np.ndarray) or base.ndim != present[0].ndim or not base.flags.c_contiguous:
        return None
    size = base.shape[0] // len(arrays)
    for i, a in enumerate(arrays):
        if a is not None and (a.base is not base or a.shape[0] != size or
                              a.__array_interface__["data"][0] != base.__array_interface__["data"][0]
                              + i * size * base.strides[0]):
            return None
    return base if base.shape[0] == size * len(arrays) else None


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


def activation(name: str, x: np.ndarray, kernels) -> np.ndarray:
    """Apply transformers' ACT2FN[name]; erf-GELU uses the backend's kernel."""
    if name == "gelu":
        return kernels.gelu(x)
    return ACTIVATIONS[name](x).astype(x.dtype, copy=False)


# ----------------------------------------------------------------------------------------------------------------------
# BatchNorm folding, once at load (docs/DESIGN.md §4): one rule for every family


BN_EPS = 1e-5  # nn.BatchNorm2d's default eps (every BatchNorm refvit folds uses it)
BN_STATS = ("weight", "bias", "running_mean", "running_var")


def fold_batch_norm(weight, bias, bn: dict, axis: int, eps: float = BN_EPS):
    """BatchNorm2d in eval mode after a convolution, folded into it, in the dtype of the arguments:

        BN(conv(x)) = (conv(x) − μ) · s + β,   s = γ / √(σ² + ε)      =  conv_{W·s}(x) + (b − μ) · s + β

    `axis` is the weight's output-channel axis (0 for Conv2d, 1 for ConvTranspose2d); bias may be None (then the
    shift is β − μ · s). Returns (W·s, shift).
    """
    s = bn["weight"] / np.sqrt(bn["running_var"] + eps)                               # (Cout,)
    shape = [1] * weight.ndim
    shape[axis] = -1
    shift = bn["bias"] - bn["running_mean"] * s if bias is None else (bias - bn["running_mean"]) * s + bn["bias"]
    return weight * s.reshape(shape), shift


def fold_batch_norms(tensors: dict, pairs, eps: float = BN_EPS, dtype=None) -> dict:
    """Fold each BatchNorm into the convolution before it, keeping the checkpoint's names. `pairs`: (BatchNorm name,
    conv name, output-channel axis of the conv weight). The conv weight becomes W·s; the shift replaces the conv's bias
    if it has one, else it becomes the BatchNorm's bias (used by the forward as the conv's bias); the BatchNorm's other
    statistics are set to the identity, so the params still describe the same modules. `dtype`: compute in it (BEiT:
    float64, before the cast to the run dtype), else in the tensors' own (CvT: after the cast, the run dtype).
    A tensor whose shape does not fit is left alone (the strict mapping reports it afterwards)."""
    out = dict(tensors)
    for bn_name, conv_name, axis in pairs:
        bn = {k: tensors.get(f"{bn_name}.{k}") for k in BN_STATS}
        weight, bias = tensors.get(f"{conv_name}.weight"), tensors.get(f"{conv_name}.bias")
        cout = None if weight is None or weight.ndim != 4 else weight.shape[axis]
        if cout is None or any(v is None or v.shape != (cout,) for v in bn.values()) or \
                (bias is not None and bias.shape != (cout,)):
            continue
        if dtype is not None:
            weight, bias = np.asarray(weight, dtype), None if bias is None else np.asarray(bias, dtype)
            bn = {k: np.asarray(v, dtype) for k, v in bn.items()}
        w, shift = fold_batch_norm(weight, bias, bn, axis, eps)
        identity = {"weight": np.ones(cout, w.dtype), "bias": np.zeros(cout, w.dtype),   # BN(x) = x
                    "running_mean": np.zeros(cout, w.dtype), "running_var": np.full(cout, 1 - eps, w.dtype)}
        if bias is not None:
            out[f"{conv_name}.bias"] = shift
        else:
            identity["bias"] = shift  # the folded shift, applied as the conv's bias
        out[f"{conv_name}.weight"] = w
        out.update({f"{bn_name}.{k}": v for k, v in identity.items()})
    return out


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
        raise InputError(f"pixel_values: expected {num_channels} channels (config num_channels), "
                         f"got shape {pixel_values.shape}")
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
