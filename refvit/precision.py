"""Reduced-precision emulation: what bf16, fp16 and ONNX Runtime's dynamic int8 do to a model, module by module.

`emulate(model, "bf16")` returns a copy of a float32 model whose forward runs in the format (docs/DESIGN.md §10):

- **bf16 / fp16**: weights stored in the format; every kernel output rounded to it with round-to-nearest-even (bf16
  by bit manipulation exactly as torch's `c10::BFloat16` rounds; fp16 as IEEE binary16, overflow to ±inf); GEMMs and
  convolutions accumulate in float32 (or in the format, `accumulate="fp16"`/`"bf16"`); LayerNorm, GroupNorm, softmax
  and GELU compute their internals in float32 and round their output (the common mixed-precision convention:
  torch's CPU bf16/fp16 kernels, autocast), or everything in the format with `strict=True`. Elementwise NumPy
  arithmetic between kernels (residual adds, layer scale, position embeddings) is rounded too: values in the format
  are an ndarray subclass whose every ufunc result is rounded.
- **int8-dynamic**: ONNX Runtime's `quantize_dynamic(weight_type=QInt8)` with default options on a
  `torch.onnx.export` of the model: every Linear (the classifier included) and every Conv runs as
  DynamicQuantizeLinear (uint8, per-call per-tensor scale and zero point) + MatMulInteger/ConvInteger against int8
  weights (symmetric, per tensor, or per output channel with `per_channel=True`), integer accumulation, then
  ×(scale_x·scale_w) and the float bias. Everything else stays float32 (attention's q·k and p·v are MatMuls of two
  activations, which ORT leaves in float). BiT's standardised conv weights are computed in the graph, so ORT
  quantizes them at run time like an activation (uint8, asymmetric).

The float32/float64 paths are untouched: emulation wraps one model copy's kernel namespace and params.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from .errors import InputError
from .models.common import Forward

FORMATS = ("bf16", "fp16", "int8-dynamic")
ACCUMULATE = ("fp32", "fp16", "bf16")
FP16_MAX = 65504.0  # the largest finite IEEE binary16 value
# ORT: MatMul (+Gemm) -> MatMulInteger, Conv -> ConvInteger
QUANTIZED_KERNELS = ("linear", "conv2d", "depthwise_conv_tokens")
GEMM_KERNELS = ("linear", "conv2d", "depthwise_conv_tokens", "conv_transpose2d")


# ----------------------------------------------------------------------------------------------------------------------
# Rounding


def round_bf16(x) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), returned as float32: c10::BFloat16's round_to_nearest_even,
    bit for bit (`u + 0x7FFF + ((u >> 16) & 1)`, then the low 16 bits cleared); NaN becomes torch's 0x7FC0 NaN;
    overflow rounds to ±inf."""
    x = np.asarray(x, np.float32)
    u = x.view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)).view(np.float32)
    nan = np.isnan(x)
    if nan.any():
        r = np.where(nan, np.uint32(0x7FC00000).view(np.float32), r)
    return r


def round_fp16(x) -> np.ndarray:
    """float32 -> the nearest IEEE binary16 (ties to even, overflow to ±inf, subnormals kept), as float32."""
    with np.errstate(over="ignore"):
        return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


ROUND = {"bf16": round_bf16, "fp16": round_fp16}


class _InFormat(np.ndarray):
    """float32 values that lie in a reduced format: every ufunc result on them is rounded to the format, so the
    NumPy arithmetic a forward does between kernels (residual adds, layer scale, position embeddings) is in the
    format like every kernel output. A reduction's sum stays float32 (as torch's CPU kernels accumulate) and the op
    after it rounds: a mean is rounded once, after its division."""

    rounder = None

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        plain = [i.view(np.ndarray) if isinstance(i, np.ndarray) else i for i in inputs]
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, np.ndarray) else o for o in out)
        result = getattr(ufunc, method)(*plain, **kwargs)
        if not isinstance(result, np.ndarray) or result.dtype != np.float32:
            return result
        if method != "__call__":      # a reduction (sum inside mean): float32, not rounded; the next op rounds
            return result.view(type(self))
        rounded = type(self).rounder(result)
        if out is not None:
            out[0].view(np.ndarray)[...] = rounded
            return out[0]
        return rounded.view(type(self))


class InBF16(_InFormat):
    rounder = staticmethod(round_bf16)


class InFP16(_InFormat):
    rounder = staticmethod(round_fp16)


SUBCLASS = {"bf16": InBF16, "fp16": InFP16}


# ----------------------------------------------------------------------------------------------------------------------
# The arithmetic model


@dataclasses.dataclass(frozen=True)
class Arithmetic:
    """One reduced-precision arithmetic: the format, where GEMMs accumulate, strict internals, int8 weight
    granularity, and the modules kept in float32 (their checkpoint names)."""
    format: str
    accumulate: str = "fp32"
    strict: bool = False
    per_channel: bool = False
    keep_fp32: frozenset = frozenset()

    def describe(self) -> str:
        """The arithmetic model in one paragraph (recorded in trace headers)."""
        if self.format == "int8-dynamic":
            weights = "per output channel" if self.per_channel else "per tensor"
            text = ("ONNX Runtime quantize_dynamic (QInt8, defaults) on torch.onnx.export: every Linear and Conv as "
                    "DynamicQuantizeLinear (uint8 activations, scale and zero point per call and per tensor) x int8 "
                    f"weights (symmetric [-127, 127], {weights}), int32 accumulation, then x(scale_x*scale_w) + float "
                    "bias in float32; weights computed in the graph (BiT's standardised convs) quantized at run time "
                    "as uint8; attention q.k / p.v, norms, softmax, GELU and adds in float32")
        else:
            acc = "float32" if self.accumulate == "fp32" else self.format
            internals = ("every internal step of LayerNorm/GroupNorm/softmax/GELU rounded to the format, sums "
                         "rounded before dividing" if self.strict else
                         "LayerNorm/GroupNorm/softmax/GELU internals in float32, output rounded")
            text = (f"{self.format}: weights stored in {self.format}; every kernel output and every elementwise "
                    f"result rounded to {self.format} (round to nearest even; overflow -> inf/nan); GEMM and conv "
                    f"products accumulated in {acc}; {internals}; attention: q.k rounded, x scale (float32) rounded, "
                    "+ bias rounded, softmax in float32 rounded, p.v rounded")
        if self.keep_fp32:
            text += f"; kept in float32: {', '.join(sorted(self.keep_fp32))}"
        return text

    def to_meta(self) -> dict:
        return {"precision": self.format, "accumulate": self.accumulate, "strict": self.strict,
                "per_channel": self.per_channel, "keep_fp32": sorted(self.keep_fp32),
                "arithmetic_model": self.describe()}


def check_arithmetic(format, accumulate="fp32", strict=False, per_channel=False, keep_fp32=()) -> Arithmetic:
    if format not in FORMATS:
        raise InputError(f"precision: unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if accumulate not in ACCUMULATE:
        raise InputError(f"precision: unknown accumulation {accumulate!r}; expected fp32 or the format itself")
    if accumulate != "fp32" and accumulate != format:
        raise InputError(f"precision: --accumulate {accumulate} with format {format}: GEMMs accumulate in fp32 or in "
                         "the format itself")
    if format == "int8-dynamic" and strict:
        raise InputError("precision: --strict applies to bf16/fp16 (int8-dynamic keeps everything but the "
                         "quantized GEMMs in float32)")
    if per_channel and format != "int8-dynamic":
        raise InputError("precision: --per-channel applies to int8-dynamic weights only")
    return Arithmetic(format, accumulate, bool(strict), bool(per_channel), frozenset(keep_fp32))


# ----------------------------------------------------------------------------------------------------------------------
# Emulated model


@dataclasses.dataclass
class Call:
    """One kernel call of an emulated forward: its module name, kernel, output and whether it ran in the format."""
    name: str
    kernel: str
    output: np.ndarray
    emulated: bool
    weights: int = 0         # the module's weight elements (Linear/Conv), 0 otherwise


def emulate(model, format: str, accumulate: str = "fp32", strict: bool = False, per_channel: bool = False,
            keep_fp32=()):
    """A copy of float32 `model` whose forward emulates `format` (bf16, fp16, int8-dynamic); `model` is unchanged.

    `keep_fp32`: module names (as `modules(...)` lists them) that run in float32 (not quantized, not rounded)."""
    arith = check_arithmetic(format, accumulate, strict, per_channel, keep_fp32)
    if np.dtype(getattr(model, "dtype", "float32")) != np.float32:
        raise InputError(f"precision: emulation starts from a float32 model, not {model.dtype} "
                         "(load it with dtype='float32')")
    inner = copy.copy(getattr(model, "model", model))
    base = getattr(inner.kernels, "base", inner.kernels)
    inner.kernels = Emulator(base, arith, getattr(inner.config, "model_type", ""))
    if format in ROUND:
        inner.params = _round_tree(inner.params, SUBCLASS[format])
    return EmulatedModel(inner, arith)


class EmulatedModel:
    """A float32 Model whose forward emulates a reduced-precision arithmetic (`emulate`). Called like the model;
    its outputs are plain float32 arrays holding values of the format. Other attributes are the model's."""

    def __init__(self, model, arithmetic: Arithmetic):
        self.model = model
        self.arithmetic = arithmetic

    def __getattr__(self, name):
        return getattr(self.__dict__["model"], name)

    def __call__(self, *args, **kwargs):
        emulator = self.model.kernels
        emulator.modules = {}
        out = self.model(*args, **kwargs)
        check_kept(self.arithmetic, emulator.modules)
        for k in list(out.keys()):
            out[k] = _plain_out(out[k])
        return out

    forward = __call__

    def profile(self, *args, **kwargs):
        """Run once and return (outputs, [Call]): every kernel call in execution order with its module name."""
        emulator = self.model.kernels
        emulator.calls = []
        try:
            out = self(*args, **kwargs)
            return out, [dataclasses.replace(c, output=_plain_out(c.output)) for c in emulator.calls]
        finally:
            emulator.calls = None


def check_kept(arith: Arithmetic, modules: dict) -> None:
    """The modules kept in float32 must exist; under int8-dynamic they must be ones ORT quantizes (Linear, Conv)."""
    unknown = sorted(n for n in arith.keep_fp32 if n not in modules)
    if unknown:
        raise InputError(f"precision: keep_fp32 names no module of this model: {', '.join(unknown[:5])}; its modules "
                         f"are {', '.join(list(modules)[:8])} … (refvit precision MODEL DATA lists them all)")
    if arith.format == "int8-dynamic":
        bad = sorted(f"{n} ({modules[n]})" for n in arith.keep_fp32 if modules[n] not in QUANTIZED_KERNELS)
        if bad:
            raise InputError(f"precision: int8-dynamic cannot quantize {', '.join(bad[:5])}: ONNX Runtime's dynamic "
                             "quantization only quantizes Linear (MatMul/Gemm) and Conv modules, every other module "
                             "already runs in float32; keep only Linear/Conv modules in float32")


def _plain_out(v):
    if isinstance(v, _InFormat):
        return np.array(v.view(np.ndarray))
    if isinstance(v, tuple):
        return tuple(_plain_out(x) for x in v)
    if isinstance(v, list):
        return [_plain_out(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain_out(x) for k, x in v.items()}
    return v


def _round_tree(node, cls):
    if isinstance(node, dict):
        return {k: _round_tree(v, cls) for k, v in node.items()}
    if isinstance(node, list):
        return [_round_tree(v, cls) for v in node]
    if isinstance(node, np.ndarray) and node.dtype == np.float32:
        return cls.rounder(node).view(cls)
    return node


class Emulator:
    """The kernel namespace of an emulated model: every kernel call goes through `call`, named by module.
    `runner.run` builds the forward context with `context` (a `PrecisionForward`)."""

    def __init__(self, base, arith: Arithmetic, model_type: str):
        self.base = base
        self.name = getattr(base, "name", "numba")
        self.arith = arith
        self.model_type = model_type
        self.calls = None        # list of Call while profiling (set by the caller), else None
        self.modules = {}        # module name -> kernel, of the last forward
        self._seen = {}

    def context(self, kernels, cfg, params, recorder):
        self._seen = {}
        return PrecisionForward(self, cfg, params, recorder, "")

    def __getattr__(self, kernel):           # direct kernel use outside a forward (tools, tests)
        return getattr(self.__dict__["base"], kernel)

    def key(self, name: str) -> str:
        """A unique module name per call of this forward (a second call under one name gets :2, :3 …)."""
        n = self._seen.get(name, 0) + 1
        self._seen[name] = n
        return name if n == 1 else f"{name}:{n}"

    def call(self, name, kernel, args, kwargs):
        base = getattr(self.base, kernel)
        key = self.key(name)
        self.modules[key] = kernel
        kept = key in self.arith.keep_fp32
        fmt = self.arith.format
        if kernel in ("relative_position_index",):
            return base(*args, **kwargs)
        if fmt == "float32":              # the reference: the same calls, named the same, unchanged
            emulated, out = False, base(*_plain(args), **_plain(kwargs))
        elif fmt == "int8-dynamic":
            emulated = kernel in QUANTIZED_KERNELS and not kept
            out = int8_kernel(kernel, self, args, kwargs) if emulated else base(*_plain(args), **_plain(kwargs))
        elif kept:
            emulated, out = False, base(*_plain(args), **_plain(kwargs))
        else:
            emulated, out = True, reduced_kernel(kernel, self, args, kwargs)
        if self.calls is not None:
            first = out[0] if isinstance(out, tuple) else out
            w = {"linear": 1, "conv2d": 1, "depthwise_conv_tokens": 3, "conv_transpose2d": 1}.get(kernel)
            size = int(np.size(args[w])) if w is not None and len(args) > w else 0
            self.calls.append(Call(key, kernel, np.array(_plain(first)), emulated, size))
        return out


def _plain(a):
    """ndarray subclasses as plain views (for the Numba kernels), containers recursively."""
    if isinstance(a, _InFormat):
        return a.view(np.ndarray)
    if isinstance(a, (list, tuple)):
        return type(a)(_plain(v) for v in a)
    if isinstance(a, dict):
        return {k: _plain(v) for k, v in a.items()}
    return a


class BoundKernels:
    """`ctx.kernels` inside an emulated forward: kernel calls named by the context's module path."""

    def __init__(self, emulator: Emulator, path: str):
        self._emulator, self._path = emulator, path
        self.name = emulator.name

    def __getattr__(self, kernel):
        emulator, path = self._emulator, self._path

        def run(*args, **kwargs):
            return emulator.call(path or kernel, kernel, args, kwargs)
        return run

    def named(self, name, kernel, *args, **kwargs):
        return self._emulator.call(name, kernel, args, kwargs)


class PrecisionForward(Forward):
    """The forward context of an emulated model: the same modules, each kernel call named by its checkpoint module
    (linear/conv/norm by their own name; kernels called directly by the family code by the context's path)."""

    __slots__ = ("emulator",)

    def __init__(self, emulator, cfg, params, recorder=None, path=""):
        super().__init__(BoundKernels(emulator, path), cfg, params, recorder, path)
        self.emulator = emulator

    def at(self, child, params=None, optional=False):
        if params is None:
            params = self.param(child, optional)
        return PrecisionForward(self.emulator, self.cfg, {} if params is None else params, self.recorder,
                                self.name(child))

    def kernels_named(self, op):
        return BoundKernels(self.emulator, self.name(op))

    def linear(self, name, x, record=True):
        p = self.param(name)
        return self._out(name, record, self.kernels.named(self.name(name), "linear", x, p["weight"], p.get("bias")))

    def linear_act(self, name, x, act, record=True):
        """Linear (bias included, one rounding) then the activation (another rounding), as torch's modules."""
        y = self.linear(name, x, record=False)
        if act == "gelu":
            y = self.kernels.named(self.name(name) + ".act", "gelu", y)
        else:
            y = self.act(act, y)
        return self._out(name, record, y)

    def linear_qkv(self, x, names=("query", "key", "value")):
        return tuple(self.linear(n, x) for n in names)        # three GEMMs: ORT quantizes each weight on its own

    def layer_norm(self, name, x, eps=None, record=True):
        p = self.param(name)
        eps = self.cfg.layer_norm_eps if eps is None else eps
        return self._out(name, record, self.kernels.named(self.name(name), "layer_norm", x, p["weight"], p["bias"],
                                                          eps))

    def conv2d(self, name, x, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), bias=None, record=True):
        """Why so many parameters: Forward.conv2d's, which it overrides."""
        p = self.param(name)
        bias = p.get("bias") if bias is None else bias
        return self._out(name, record, self.kernels.named(self.name(name), "conv2d", x, p["weight"], bias, stride,
                                                          padding, dilation))

    def act(self, name, x):
        if name == "gelu":
            return self.kernels.gelu(x)
        from .models.common import ACTIVATIONS
        y = ACTIVATIONS[name](x)
        return y.astype(np.float32, copy=False) if not isinstance(y, _InFormat) else y


# ----------------------------------------------------------------------------------------------------------------------
# bf16 / fp16 kernels


def reduced_kernel(kernel, emu: Emulator, args, kwargs):
    """Run `kernel` in the format: inputs rounded (they already are, except the model's input and the outputs of
    modules kept in float32), the float32 kernel, output rounded; GEMMs with the chosen accumulation; attention and
    the strict internals step by step."""
    arith = emu.arith
    fmt = arith.format
    rnd, cls = ROUND[fmt], SUBCLASS[fmt]
    args = [rnd(a) if _is_float(a) else _plain(a) for a in args]
    kwargs = {k: rnd(v) if _is_float(v) else _plain(v) for k, v in kwargs.items()}
    if kernel == "attention":
        ctx, probs = attention(emu, rnd, *args, **kwargs)
        return ctx.view(cls), (None if probs is None else probs.view(cls))
    if kernel == "depthwise_conv_tokens" and arith.accumulate != "fp32":
        tokens, size = depthwise_accumulate(rnd, *args, **kwargs)
        return tokens.view(cls), size
    if kernel in ("linear", "conv2d") and arith.accumulate != "fp32":
        y = (linear_accumulate if kernel == "linear" else conv_accumulate)(rnd, *args, **kwargs)
    elif arith.strict and kernel in STRICT:
        y = STRICT[kernel](rnd, *args, **kwargs)
    else:
        y = getattr(emu.base, kernel)(*args, **kwargs)
    if isinstance(y, tuple):
        return (rnd(y[0]).view(cls),) + tuple(y[1:])
    return rnd(y).view(cls)


def _is_float(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype == np.float32


def _matmul(rnd, a, b, accumulate_in_format):
    """a (..., M, K) @ b (..., K, N): float32 accumulation (BLAS), or sequential over K with every partial sum rounded
    to the format (products of two format values are exact in float64)."""
    if not accumulate_in_format:
        return np.matmul(a, b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    acc = np.zeros(np.broadcast_shapes(a.shape[:-1] + (1,), b.shape[:-2] + (1, b.shape[-1])), np.float32)
    for k in range(a.shape[-1]):
        acc = rnd(acc + a64[..., k:k + 1] * b64[..., k:k + 1, :])
    return acc


def attention(emu, rnd, q, k, v, num_heads, scale, bias=None, need_probs=False):
    """transformers' eager attention in the format: scores = q·kᵀ (rounded), × scale (rounded), + bias (rounded),
    softmax in float32 (strict: in the format) rounded, context = p·v (rounded). The scale is a Python float in
    transformers (`… * scaling`): torch multiplies a bf16/fp16 tensor by it in float32 and rounds the product once,
    so it is not rounded to the format first (a bf16 32^-½ would move every score by 1.1e-4: 2.6% of CvT's stage-0
    scores rounded otherwise than torch's).
    Why so many parameters: the attention kernel's own, plus the emulator and the module name."""
    B, Nq, C = q.shape
    Nk = k.shape[1]
    H, D = num_heads, C // num_heads
    fmt_acc = emu.arith.accumulate != "fp32"
    qh = q.reshape(B, Nq, H, D).transpose(0, 2, 1, 3)                                 # (B, H, Nq, D)
    kh = k.reshape(B, Nk, H, D).transpose(0, 2, 1, 3)                                 # (B, H, Nk, D)
    vh = v.reshape(B, Nk, H, D).transpose(0, 2, 1, 3)                                 # (B, H, Nk, D)
    scores = rnd(_matmul(rnd, qh, kh.transpose(0, 1, 3, 2), fmt_acc))                # (B, H, Nq, Nk)
    scores = rnd(scores * np.float32(scale))
    if bias is not None:
        scores = rnd(scores + bias)
    probs = rnd(strict_softmax(rnd, scores) if emu.arith.strict else emu.base.softmax(np.ascontiguousarray(scores)))
    context = rnd(_matmul(rnd, probs, vh, fmt_acc))                                  # (B, H, Nq, D)
    return context.transpose(0, 2, 1, 3).reshape(B, Nq, C), (probs if need_probs else None)


def linear_accumulate(rnd, x, weight, bias=None):
    y = _matmul(rnd, x.reshape(-1, x.shape[-1]), weight.T, True).reshape(*x.shape[:-1], weight.shape[0])
    return y if bias is None else rnd(y + bias)


def conv_accumulate(rnd, x, weight, bias, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """Why so many parameters: conv2d's own, plus the emulator."""
    from .kernels.conv import _check_conv, im2col_numpy

    stride, padding, dilation, groups, Ho, Wo = _check_conv(x, weight, bias, stride, padding, dilation, groups)
    B, Cout = x.shape[0], weight.shape[0]
    cols = im2col_numpy(x, weight.shape[2:], stride, padding, dilation, Ho, Wo)       # (B, Cin, kh, kw, Ho, Wo)
    cols = cols.reshape(B, groups, -1, Ho * Wo)                                       # (B, G, K, P)
    Wg = weight.reshape(groups, Cout // groups, -1)                                   # (G, Cout/G, K)
    y = _matmul(rnd, Wg[None], cols, True).reshape(B, Cout, Ho, Wo)
    return y if bias is None else rnd(y + bias[:, None, None])


def depthwise_accumulate(rnd, x, height, width, weight, bias, stride, padding):
    """Why so many parameters: depthwise_conv_tokens' own, plus the emulator."""
    B, _, C = x.shape
    grid = x.reshape(B, height, width, C).transpose(0, 3, 1, 2)                       # (B, C, h, w)
    y = conv_accumulate(rnd, np.ascontiguousarray(grid), weight, bias, stride, (padding[0],) * 2 + (padding[1],) * 2,
                        (1, 1), C)
    ho, wo = y.shape[2:]
    return rnd(y).reshape(B, C, ho * wo).transpose(0, 2, 1), (ho, wo)


# strict: every step in the format (the textbook formulas, each intermediate rounded; sums rounded before dividing)

def strict_layer_norm(rnd, x, weight, bias, eps):
    n = x.shape[-1]
    mean = rnd(rnd(x.sum(-1, keepdims=True, dtype=np.float32)) / np.float32(n))
    d = rnd(x - mean)
    with np.errstate(over="ignore", invalid="ignore"):
        var = rnd(rnd((rnd(d * d)).sum(-1, keepdims=True, dtype=np.float32)) / np.float32(n))
        return rnd(rnd(rnd(d / rnd(np.sqrt(rnd(var + rnd(np.float32(eps)))))) * weight) + bias)


def strict_softmax(rnd, x):
    with np.errstate(over="ignore", invalid="ignore"):
        e = rnd(np.exp(rnd(x - x.max(-1, keepdims=True))))
        return rnd(e / rnd(e.sum(-1, keepdims=True, dtype=np.float32)))


def strict_gelu(rnd, x):
    from scipy.special import erf

    with np.errstate(over="ignore", invalid="ignore"):
        t = rnd(erf(rnd(x * rnd(np.float32(2 ** -0.5)))).astype(np.float32))
        return rnd(rnd(rnd(x * np.float32(0.5)) * rnd(t + np.float32(1))))


def strict_group_norm_act(rnd, x, num_groups, weight, bias, eps, relu=False):
    """Why so many parameters: group_norm_act's own, plus the rounding."""
    B, C = x.shape[:2]
    g = x.reshape(B, num_groups, -1)
    n = g.shape[-1]
    mean = rnd(rnd(g.sum(-1, keepdims=True, dtype=np.float32)) / np.float32(n))
    d = rnd(g - mean)
    with np.errstate(over="ignore", invalid="ignore"):
        var = rnd(rnd(rnd(d * d).sum(-1, keepdims=True, dtype=np.float32)) / np.float32(n))
        y = rnd(d / rnd(np.sqrt(rnd(var + np.float32(eps))))).reshape(x.shape)
        shape = (1, C) + (1,) * (x.ndim - 2)
        y = rnd(rnd(y * weight.reshape(shape)) + bias.reshape(shape))
    return np.maximum(y, 0) if relu else y


STRICT = {"layer_norm": strict_layer_norm, "softmax": strict_softmax, "gelu": strict_gelu,
          "group_norm_act": strict_group_norm_act}


# ----------------------------------------------------------------------------------------------------------------------
# int8-dynamic (ONNX Runtime quantize_dynamic, QInt8 weights, default options)


def dynamic_quantize(x):
    """ONNX DynamicQuantizeLinear as ORT computes it (dynamicquantizelinear.cc): the range widened to include 0,
    scale = (max − min) / 255 (1 when the range is empty), zero point = round-half-even(clamp(−min / scale, 0, 255)),
    q = clamp(round-half-even(x / scale) + zero point, 0, 255). Returns (q − zero point as float64, scale)."""
    x = np.asarray(x, np.float32)
    lo, hi = min(np.float32(x.min()), np.float32(0)), max(np.float32(x.max()), np.float32(0))
    scale = np.float32(1.0) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zp = np.float32(np.rint(np.clip(np.float32(0) - lo / scale, 0, 255)))
    q = np.clip(np.rint(x / scale) + zp, 0, 255)
    return (q - zp).astype(np.float64), scale


def quantize_weight(w, per_channel=False, axis=0):
    """ORT's int8 weight quantization (quant_utils.compute_scale_zp / quantize_nparray, QInt8, symmetric): absmax over
    the tensor (or each channel along `axis`), scale = float32(2·absmax / 254), q = clip(round-half-even(w / scale),
    −128, 127), zero point 0. Returns (q as float64, scale: a float32 scalar or per-channel array shaped to
    broadcast)."""
    w = np.asarray(w, np.float32)
    if per_channel:
        other = tuple(i for i in range(w.ndim) if i != axis)
        absmax = np.maximum(np.abs(np.minimum(w.min(axis=other, keepdims=True), 0)),
                            np.abs(np.maximum(w.max(axis=other, keepdims=True), 0)))
    else:
        absmax = np.float32(max(abs(min(w.min(), 0)), abs(max(w.max(), 0))))
    scale64 = (np.float64(2) * np.asarray(absmax, np.float64)) / 254.0
    scale = scale64.astype(np.float32)
    scale = np.where(scale64 < np.finfo(np.float32).tiny, np.float32(1), scale).astype(np.float32)
    q = np.clip(np.rint(w / scale), -128, 127)
    return q.astype(np.float64), scale


def int8_kernel(kernel, emu: Emulator, args, kwargs):
    """One Linear / Conv as ORT's dynamic int8 runs it: integer products summed exactly (float64 holds every int32
    sum), then float32(acc) × float32(scale_x · scale_w) + bias."""
    base = emu.base
    per_channel = emu.arith.per_channel
    computed_weight = emu.model_type == "bit" and kernel == "conv2d"   # standardised in the graph: a uint8 activation
    if kernel == "linear":
        x, weight = args[0], args[1]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        xq, sx = dynamic_quantize(x)
        wq, sw = quantize_weight(weight, per_channel, axis=0)
        acc = base.linear(xq, wq)                                                     # (..., N) exact integers
        scale = (sx * sw).astype(np.float32).reshape(-1) if per_channel else np.float32(sx * sw)
    elif kernel == "conv2d":
        x, weight, bias, *rest = args
        xq, sx = dynamic_quantize(x)
        if computed_weight:
            wq, sw = dynamic_quantize(weight)
        else:
            wq, sw = quantize_weight(weight, per_channel, axis=0)
        acc = base.conv2d(xq, wq, None, *rest, **kwargs)                             # (B, Cout, Ho, Wo)
        scale = (sx * sw).astype(np.float32).reshape(1, -1, 1, 1) if np.ndim(sw) else np.float32(sx * sw)
    else:  # depthwise_conv_tokens(x, height, width, weight, bias, stride, padding)
        x, height, width, weight, bias, stride, padding = args
        xq, sx = dynamic_quantize(x)
        wq, sw = quantize_weight(weight, per_channel, axis=0)
        acc, size = base.depthwise_conv_tokens(xq, height, width, wq, None, stride, padding)   # (B, N, C)
        scale = (sx * sw).astype(np.float32).reshape(-1) if per_channel else np.float32(sx * sw)
        y = acc.astype(np.float32) * scale
        return (y if bias is None else y + bias.reshape(-1)), size
    y = acc.astype(np.float32) * scale
    if bias is not None:
        y = y + (bias if kernel == "linear" else np.asarray(bias).reshape(1, -1, 1, 1))
    return y.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------------------------------
# Traces


def capture(model_or_dir, inputs, format: str, accumulate: str = "fp32", strict: bool = False,
            per_channel: bool = False, keep_fp32=(), backend: str = "numba", processor=None, **call):
    """`parity.capture` of the model emulating `format`: every module output in the format, the header recording
    the precision and the arithmetic model (so `refvit compare` against a float64 trace shows where the error grows).
    Why so many parameters: `refvit trace --precision`'s options, each a keyword with a default."""
    from . import parity
    from .model import from_pretrained

    arith = check_arithmetic(format, accumulate, strict, per_channel, keep_fp32)
    model = from_pretrained(model_or_dir, dtype="float32", backend=backend) \
        if isinstance(model_or_dir, (str, bytes)) or hasattr(model_or_dir, "__fspath__") else model_or_dir
    emulated = emulate(model, format, accumulate, strict, per_channel, keep_fp32)
    trace = parity.capture(emulated, inputs, processor=processor, **call)
    trace.meta.update(arith.to_meta())
    trace.meta["attention_implementation"] = f"refvit (eager formula, {format} arithmetic)"
    return trace
