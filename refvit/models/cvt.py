"""CvT forward passes, as `transformers/models/cvt/modeling_cvt.py` and `configuration_cvt.py` (5.23).

Paper: Wu et al. 2021, "CvT: Introducing Convolutions to Vision Transformers" (original code: microsoft/CvT,
lib/models/cls_cvt.py). A CvT is a stack of stages; each stage
  1. embeds its input with a strided convolution + LayerNorm (convolutional token embedding, §3.1), so the token grid
     shrinks from stage to stage and any input size works (there are no position embeddings);
  2. puts a class token in front when `cls_token[stage]` is set;
  3. runs pre-norm transformer layers whose q, k, v first pass through a *convolutional projection* of the token grid
     (depthwise conv + BatchNorm, `dw_bn`; k and v usually with stride 2, §3.2) and then a linear projection;
  4. splits the class token off again and hands the grid (B, C, h, w) to the next stage.

Params trees use the checkpoint's names (DESIGN.md §3.2), which transformers 5 still uses for its modules:
`p["encoder"]["stages"][2]["layers"][0]["attention"]["attention"]["projection_query"]`. Intermediates are recorded under
the same names (`cvt.encoder.stages.2.layers.0.attention.output`).
Shapes: B batch, N tokens, C channels (embed_dim of the stage), H heads, D head dim, h/w token grid, I MLP width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from ..architecture import Architecture
from ..config import _check_type, _labels
from ..errors import ConfigError, InputError
from ..kernels.sizes import conv_output_size, pool_output_size
from ..outputs import BaseModelOutputWithCLSToken, ImageClassifierOutputWithNoAttention
from .common import layer_norm, linear, linear_act

LAYER_NORM_EPS = 1e-5   # nn.LayerNorm's default: modeling_cvt.py never passes config.layer_norm_eps
BATCH_NORM_EPS = 1e-5   # nn.BatchNorm2d(embed_dim) default eps (CvtSelfAttentionConvProjection)
PROJECTION_METHODS = ("dw_bn", "avg", "linear")

# ----------------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class CvtConfig:
    """`CvtConfig` (configuration_cvt.py): one entry per stage in every list; defaults are microsoft/cvt-13's."""

    model_type: str = "cvt"
    architectures: tuple = ()                    # HF class names this checkpoint was saved from
    num_channels: int = 3                        # input channels
    patch_sizes: tuple = (7, 3, 3)               # kernel of each stage's embedding convolution
    patch_stride: tuple = (4, 2, 2)              # its stride
    patch_padding: tuple = (2, 1, 1)             # its zero padding (both sides)
    embed_dim: tuple = (64, 192, 384)            # C of each stage
    num_heads: tuple = (1, 3, 6)                 # H of each stage, D = C // H
    depth: tuple = (1, 2, 10)                    # layers per stage (the number of stages is len(depth))
    mlp_ratio: tuple = (4.0, 4.0, 4.0)           # MLP width I = int(C · mlp_ratio), truncated as modeling_cvt.py
    qkv_bias: tuple = (True, True, True)         # whether projection_query/key/value have a bias
    cls_token: tuple = (False, False, True)      # whether the stage carries a class token
    qkv_projection_method: tuple = ("dw_bn", "dw_bn", "dw_bn")  # "dw_bn", or "avg"/"linear" (see conv_projection)
    kernel_qkv: tuple = (3, 3, 3)                # kernel of the convolutional projections
    padding_kv: tuple = (1, 1, 1)                # padding of the key/value projections
    stride_kv: tuple = (2, 2, 2)                 # stride of the key/value projections (shrinks the k/v grid)
    padding_q: tuple = (1, 1, 1)                 # padding of the query projection
    stride_q: tuple = (1, 1, 1)                  # stride of the query projection
    layer_norm_eps: float = 1e-12                # in config.json, never used by modeling_cvt.py (see LAYER_NORM_EPS)
    id2label: dict = field(default_factory=dict)  # class index -> label name (num_labels = its length)
    label2id: dict = field(default_factory=dict)  # label name -> class index

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def num_stages(self) -> int:
        return len(self.depth)

    def mlp_width(self, stage: int) -> int:
        return int(self.embed_dim[stage] * self.mlp_ratio[stage])  # CvtIntermediate: nn.Linear(C, int(C * mlp_ratio))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# per-stage keys: (default, element kind, lower bound); drop rates are training-only but transformers indexes them too
_STAGE_INTS = {"patch_sizes": 1, "patch_stride": 1, "patch_padding": 0, "embed_dim": 1, "num_heads": 1, "depth": 0,
               "kernel_qkv": 1, "padding_kv": 0, "stride_kv": 1, "padding_q": 0, "stride_q": 1}
_STAGE_BOOLS = ("qkv_bias", "cls_token")
_STAGE_NUMBERS = ("mlp_ratio", "attention_drop_rate", "drop_rate", "drop_path_rate")
_TRAINING_DEFAULTS = {"attention_drop_rate": (0.0, 0.0, 0.0), "drop_rate": (0.0, 0.0, 0.0),
                      "drop_path_rate": (0.0, 0.0, 0.1)}


def _stage_list(raw: dict, key: str, default: tuple, n: int | None, ok, what: str, problems: list) -> tuple:
    """A per-stage list: a list of `n` values each passing `ok`, else a problem naming the key."""
    value = raw.get(key, list(default))
    if not isinstance(value, (list, tuple)) or not all(ok(v) for v in value):
        problems.append(f"{key}: expected a list of {what}, got {value!r}")
        return tuple(default)
    if n is not None and len(value) != n:
        # stricter than transformers, which indexes the first len(depth) entries but reads some lists at [-1]
        got = f"got {len(value)}" if key in raw else f"missing, and the default {list(default)} has {len(value)}"
        problems.append(f"{key}: expected one entry per stage ({n}, the length of depth), {got}")
    return tuple(value)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def cvt_config_from_dict(raw: dict, source: str = "config.json") -> CvtConfig:
    """Parse and validate a CvT config dict; every problem is listed in one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    d = CvtConfig()
    depth = _stage_list(raw, "depth", d.depth, None, lambda v: _is_int(v) and v >= 0, "non-negative ints", problems)
    n = len(depth)
    if n == 0:
        problems.append("depth: at least one stage is needed")
    values: dict = {"depth": depth}
    for key, low in _STAGE_INTS.items():
        if key != "depth":
            values[key] = _stage_list(raw, key, getattr(d, key), n, lambda v, low=low: _is_int(v) and v >= low,
                                      "ints >= %d" % low, problems)
    for key in _STAGE_BOOLS:
        values[key] = _stage_list(raw, key, getattr(d, key), n, lambda v: isinstance(v, bool), "booleans", problems)
    for key in _STAGE_NUMBERS:
        nums = _stage_list(raw, key, _TRAINING_DEFAULTS.get(key, d.mlp_ratio), n, _is_number,
                           "finite non-negative numbers", problems)
        if key == "mlp_ratio":
            values[key] = tuple(float(v) for v in nums)
    values["qkv_projection_method"] = _stage_list(raw, "qkv_projection_method", d.qkv_projection_method, n,
                                                  lambda v: v in PROJECTION_METHODS, f"one of {PROJECTION_METHODS}",
                                                  problems)
    values["num_channels"] = _check_type(raw, "num_channels", d.num_channels, int, problems)
    if values["num_channels"] <= 0:
        problems.append(f"num_channels: must be positive, got {values['num_channels']}")
    values["layer_norm_eps"] = float(_check_type(raw, "layer_norm_eps", d.layer_norm_eps, (int, float), problems))
    if not problems:
        problems += _stage_problems(values, n)
    model_type = raw.get("model_type", "cvt")
    if model_type != "cvt":
        problems.append(f"model_type: expected 'cvt' here, got {model_type!r}")
    archs = raw.get("architectures") or ()
    if not isinstance(archs, (list, tuple)) or not all(isinstance(a, str) for a in archs):
        problems.append(f"architectures: expected a list of class names, got {archs!r}")
        archs = ()
    id2label, label2id = _labels(raw, problems)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return CvtConfig(model_type=model_type, architectures=tuple(archs), id2label=id2label, label2id=label2id, **values)


MAX_STRIDE = 2 ** 16  # a stride beyond any image size only empties the grid; bounds the integers the kernels see


def _stage_problems(v: dict, n: int) -> list[str]:
    """Combinations transformers cannot build or run, stage by stage."""
    problems = []
    for i in range(n):
        C, heads, k = v["embed_dim"][i], v["num_heads"][i], v["kernel_qkv"][i]
        if C % heads:
            problems.append(f"num_heads[{i}]: {heads} does not divide embed_dim[{i}] = {C}")
        if int(C * v["mlp_ratio"][i]) < 1:
            problems.append(f"mlp_ratio[{i}]: MLP width int({C} * {v['mlp_ratio'][i]}) is 0")
        if v["cls_token"][i] and C != v["embed_dim"][-1]:
            problems.append(f"cls_token[{i}]: transformers builds every class token with embed_dim[-1] = "
                            f"{v['embed_dim'][-1]} channels, which cannot join stage {i}'s {C}")
        for key, kernel in (("patch_padding", v["patch_sizes"][i]), ("padding_kv", k), ("padding_q", k)):
            if v[key][i] > kernel:  # more padding than kernel: outputs that see only zeros (and unbounded memory)
                problems.append(f"{key}[{i}]: {v[key][i]} is more than the kernel size {kernel}")
        for key in ("patch_stride", "stride_kv", "stride_q"):
            if v[key][i] > MAX_STRIDE:
                problems.append(f"{key}[{i}]: {v[key][i]} is more than refvit accepts ({MAX_STRIDE})")
        if v["qkv_projection_method"][i] == "avg" and v["padding_kv"][i] > k // 2:
            problems.append(f"padding_kv[{i}]: nn.AvgPool2d needs padding <= kernel_qkv // 2 = {k // 2}")
    return problems


# ----------------------------------------------------------------------------------------------------------------------
# What a checkpoint holds (checkpoint names, shapes derived from the config)


def projection_shapes(cfg, stage: int, name: str) -> dict[str, tuple]:
    """CvtSelfAttentionProjection: depthwise conv + BatchNorm for `dw_bn`; no tensors for `linear`/`avg`."""
    method = cfg.qkv_projection_method[stage]
    if method != "dw_bn":
        return {}
    C, k = cfg.embed_dim[stage], cfg.kernel_qkv[stage]
    P = f"convolution_projection_{name}.convolution_projection."
    s = {P + "convolution.weight": (C, 1, k, k)}
    s.update({P + f"normalization.{t}": (C,) for t in ("weight", "bias", "running_mean", "running_var")})
    s[P + "normalization.num_batches_tracked"] = ()
    return s


def layer_shapes(cfg, stage: int) -> dict[str, tuple]:
    C, I = cfg.embed_dim[stage], cfg.mlp_width(stage)
    s = {}
    for name in ("query", "key", "value"):
        s.update({"attention.attention." + k: v for k, v in projection_shapes(cfg, stage, name).items()})
        s[f"attention.attention.projection_{name}.weight"] = (C, C)
        if cfg.qkv_bias[stage]:
            s[f"attention.attention.projection_{name}.bias"] = (C,)
    s.update({"attention.output.dense.weight": (C, C), "attention.output.dense.bias": (C,),
              "intermediate.dense.weight": (I, C), "intermediate.dense.bias": (I,),
              "output.dense.weight": (C, I), "output.dense.bias": (C,),
              "layernorm_before.weight": (C,), "layernorm_before.bias": (C,),
              "layernorm_after.weight": (C,), "layernorm_after.bias": (C,)})
    return s


def base_shapes(cfg) -> dict[str, tuple]:
    """Tensors of CvtModel (checkpoint names, no model prefix)."""
    s = {}
    for i in range(cfg.num_stages):
        S = f"encoder.stages.{i}."
        C, k = cfg.embed_dim[i], cfg.patch_sizes[i]
        c_in = cfg.num_channels if i == 0 else cfg.embed_dim[i - 1]
        if cfg.cls_token[i]:
            s[S + "cls_token"] = (1, 1, cfg.embed_dim[-1])  # quirk: CvtStage sizes every class token by embed_dim[-1]
        E = S + "embedding.convolution_embeddings."
        s.update({E + "projection.weight": (C, c_in, k, k), E + "projection.bias": (C,),
                  E + "normalization.weight": (C,), E + "normalization.bias": (C,)})
        for j in range(cfg.depth[i]):
            s.update({f"{S}layers.{j}.{k}": v for k, v in layer_shapes(cfg, i).items()})
    return s


def head_shapes(cfg) -> dict[str, tuple]:
    """CvtForImageClassification: LayerNorm(embed_dim[-1]) and nn.Linear(embed_dim[-1], num_labels) (identity if 0)."""
    C = cfg.embed_dim[-1]
    s = {"layernorm.weight": (C,), "layernorm.bias": (C,)}
    if cfg.num_labels > 0:
        s.update({"classifier.weight": (cfg.num_labels, C), "classifier.bias": (cfg.num_labels,)})
    return s


# ----------------------------------------------------------------------------------------------------------------------
# Token grids


def to_grid(tokens, h, w):
    """(B, h·w, C) tokens -> (B, C, h, w), as transformers' `permute(0, 2, 1).view(B, C, h, w)` (a view, no copy)."""
    B, _, C = tokens.shape
    return tokens.transpose(0, 2, 1).reshape(B, C, h, w)


def to_tokens(grid):
    """(B, C, h, w) -> (B, h·w, C), transformers' `view(B, C, h·w).permute(0, 2, 1)`."""
    B, C, h, w = grid.shape
    return grid.reshape(B, C, h * w).transpose(0, 2, 1)


def projected_size(method: str, n: int, kernel: int, stride: int, padding: int) -> int:
    """Length of one grid axis after a projection: Conv2d (`dw_bn`), AvgPool2d(ceil_mode=True) (`avg`), or none."""
    if method == "dw_bn":
        return conv_output_size(n, kernel, stride, padding, padding, 1)
    if method == "avg":
        return pool_output_size(n, kernel, stride, padding, padding, True)
    return n


def stage_grids(cfg, height: int, width: int) -> list[tuple[int, int]]:
    """The token grid (h, w) of every stage for an input of height × width, checking that every convolution and
    pooling of the model has at least one output position and that the query grid keeps the token grid."""
    grids = []
    for i in range(cfg.num_stages):
        k, s, pad = cfg.patch_sizes[i], cfg.patch_stride[i], cfg.patch_padding[i]
        height, width = (conv_output_size(n, k, s, pad, pad, 1) for n in (height, width))
        if height < 1 or width < 1:
            raise InputError(f"pixel_values: the input is too small for stage {i}'s {k}x{k} embedding convolution "
                             f"(stride {s}, padding {pad}); every stage needs at least one token")
        method, k = cfg.qkv_projection_method[i], cfg.kernel_qkv[i]
        q_method = "linear" if method == "avg" else method                                # the query is never pooled
        q = tuple(projected_size(q_method, n, k, cfg.stride_q[i], cfg.padding_q[i]) for n in (height, width))
        kv = tuple(projected_size(method, n, k, cfg.stride_kv[i], cfg.padding_kv[i]) for n in (height, width))
        if cfg.depth[i] and (q != (height, width) or min(kv) < 1):
            raise InputError(f"pixel_values: stage {i}'s {height}x{width} token grid gives a {q[0]}x{q[1]} query "
                             f"grid and a {kv[0]}x{kv[1]} key/value grid; the query projection must keep the grid "
                             "(transformers fails at the residual add) and the key/value grid must not be empty")
        grids.append((height, width))
    return grids


# ----------------------------------------------------------------------------------------------------------------------
# Convolutional token embedding (§3.1)


def conv_embedding(p, x, stage, cfg, K, rec, name):
    """CvtConvEmbeddings: Conv2d(patch_sizes, patch_stride, patch_padding) on (B, C_in, H, W), then LayerNorm over
    channels -> tokens (B, h·w, C) and the grid (h, w)."""
    s, pad = cfg.patch_stride[stage], cfg.patch_padding[stage]  # the kernel size is the weight's
    y = rec(f"{name}.projection", K.conv2d(x, p["projection"]["weight"], p["projection"]["bias"], (s, s), (pad,) * 4))
    h, w = y.shape[2:]                                                                 # (B, C, h, w)
    tokens = layer_norm(to_tokens(y), p["normalization"], LAYER_NORM_EPS, K)           # (B, N, C)
    return rec(f"{name}.normalization", tokens), (h, w)


# ----------------------------------------------------------------------------------------------------------------------
# Convolutional projection (§3.2): grid tokens (B, h·w, C) -> projected tokens (B, h'·w', C)


def fold_batch_norm(conv_weight, bn, eps=BATCH_NORM_EPS):
    """Eval-mode BatchNorm after a bias-free conv, folded into it:
    BN(conv(x, W)) = (conv(x, W) − μ) · s + β = conv(x, W · s) + (β − μ · s),  s = γ / sqrt(σ² + eps)."""
    s = bn["weight"] / np.sqrt(bn["running_var"] + eps)                                # (C,)
    return conv_weight * s[:, None, None, None], bn["bias"] - bn["running_mean"] * s


def dw_bn_projection(p, x, hw, kernel, stride, padding, K):
    """`dw_bn`: CvtSelfAttentionConvProjection = depthwise Conv2d(C, C, kernel, stride, padding, groups=C, bias=False)
    then BatchNorm2d (running statistics), on the token grid; one kernel pass with the BatchNorm folded in."""
    p = p["convolution_projection"]
    weight, bias = fold_batch_norm(p["convolution"]["weight"], p["normalization"])
    tokens, _ = K.depthwise_conv_tokens(x, hw[0], hw[1], weight, bias, (stride, stride), (padding, padding))
    return tokens                                                                      # (B, h'·w', C)


def linear_projection(p, x, hw, kernel, stride, padding, K):
    """`linear`: the tokens unchanged (only the linear q/k/v projection follows), as original CvT's `proj = None`.
    transformers names this method but its CvtSelfAttentionProjection then has no `convolution_projection` and fails."""
    return x


def avg_projection(p, x, hw, kernel, stride, padding, K):
    """`avg`, as original CvT defines it (cls_cvt.py `_build_projection`): nn.AvgPool2d(kernel, stride, padding,
    ceil_mode=True), count_include_pad=True. transformers builds no module for it and fails in forward.

    torch's divisor: the window clipped to the padded input, padding included (avg_pool2d's `pool_size`); windows
    that run past it under ceil_mode read nothing there."""
    B, _, C = x.shape
    (h, w), k, s, pad = hw, kernel, stride, padding
    ho, wo = (pool_output_size(n, k, s, pad, pad, True) for n in (h, w))
    extra_h, extra_w = max(0, (ho - 1) * s + k - h - 2 * pad), max(0, (wo - 1) * s + k - w - 2 * pad)
    grid = np.pad(x.reshape(B, h, w, C), ((0, 0), (pad, pad + extra_h), (pad, pad + extra_w), (0, 0)))
    total = np.zeros((B, ho, wo, C), x.dtype)
    for i in range(k):
        for j in range(k):
            total += grid[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]       # (B, ho, wo, C)
    start_h, start_w = np.arange(ho) * s - pad, np.arange(wo) * s - pad
    count_h = np.minimum(start_h + k, h + pad) - start_h                               # rows inside the padded input
    count_w = np.minimum(start_w + k, w + pad) - start_w
    divisor = (count_h[:, None] * count_w[None, :]).astype(x.dtype)                    # (ho, wo)
    return (total / divisor[None, :, :, None]).reshape(B, ho * wo, C)


PROJECTIONS = {"dw_bn": dw_bn_projection, "linear": linear_projection, "avg": avg_projection}


# ----------------------------------------------------------------------------------------------------------------------
# Encoder


def self_attention(p, x, hw, stage, cfg, K, rec, name, need_probs):
    """CvtSelfAttention: the class token is split off, the token grid goes through the convolutional projections
    (query: stride_q/padding_q; key, value: stride_kv/padding_kv), the class token is put back in front of each, then
    linear q/k/v projections and softmax(q kᵀ · C^-½) v per head -> (B, N, C).

    Quirk reproduced (as original CvT): the scale is embed_dim^-½, not head_dim^-½."""
    with_cls = cfg.cls_token[stage]
    cls, grid = (x[:, :1], x[:, 1:]) if with_cls else (None, x)                      # (B, 1, C), (B, h·w, C)
    method, kernel = cfg.qkv_projection_method[stage], cfg.kernel_qkv[stage]
    query_method = "linear" if method == "avg" else method                             # the query is never pooled
    q = PROJECTIONS[query_method](p.get("convolution_projection_query"), grid, hw, kernel, cfg.stride_q[stage],
                                  cfg.padding_q[stage], K)
    k, v = (PROJECTIONS[method](p.get(f"convolution_projection_{n}"), grid, hw, kernel, cfg.stride_kv[stage],
                                cfg.padding_kv[stage], K) for n in ("key", "value"))
    q, k, v = (rec(f"{name}.convolution_projection_{n}", t) for n, t in zip(("query", "key", "value"), (q, k, v)))
    if with_cls:
        q, k, v = (np.concatenate([cls, t], axis=1) for t in (q, k, v))               # (B, 1 + N', C)
    q = rec(f"{name}.projection_query", linear(q, p["projection_query"], K))
    k = rec(f"{name}.projection_key", linear(k, p["projection_key"], K))
    v = rec(f"{name}.projection_value", linear(v, p["projection_value"], K))
    C = cfg.embed_dim[stage]
    context, probs = K.attention(q, k, v, cfg.num_heads[stage], C ** -0.5, need_probs=need_probs)
    if need_probs:
        rec(f"{name}.dropout", probs)                            # (B, H, Nq, Nk): the attention map (dropout's output)
    return rec(name, context)                                                          # (B, N, C)


def layer(p, x, hw, stage, cfg, K, rec, name):
    """CvtLayer: pre-norm attention and MLP blocks, each added to its residual (drop path is identity at inference)."""
    h = rec(f"{name}.layernorm_before", layer_norm(x, p["layernorm_before"], LAYER_NORM_EPS, K))
    h = self_attention(p["attention"]["attention"], h, hw, stage, cfg, K, rec, f"{name}.attention.attention",
                       need_probs=rec.enabled)                                          # probs only when recorded
    h = rec(f"{name}.attention.output", linear(h, p["attention"]["output"]["dense"], K))
    x = x + h
    h = rec(f"{name}.layernorm_after", layer_norm(x, p["layernorm_after"], LAYER_NORM_EPS, K))
    h = rec(f"{name}.intermediate", linear_act(h, p["intermediate"]["dense"], "gelu", K))  # (B, N, I), nn.GELU (erf)
    x = rec(f"{name}.output", linear(h, p["output"]["dense"], K) + x)                  # CvtOutput adds the residual
    return rec(name, x)


def stage_forward(p, x, i, cfg, K, rec, name):
    """CvtStage: embedding, class token in front (if any), layers, class token split off -> (B, C, h, w), cls/None."""
    tokens, hw = conv_embedding(p["embedding"]["convolution_embeddings"], x, i, cfg, K, rec,
                                f"{name}.embedding.convolution_embeddings")           # (B, N, C)
    rec(f"{name}.embedding", to_grid(tokens, *hw))
    if cfg.cls_token[i]:
        cls = np.broadcast_to(p["cls_token"], (tokens.shape[0], 1, tokens.shape[2]))
        tokens = np.concatenate([cls, tokens], axis=1)                                 # (B, 1 + N, C)
    for j, lp in enumerate(p.get("layers", [])):
        tokens = layer(lp, tokens, hw, i, cfg, K, rec, f"{name}.layers.{j}")
    cls, tokens = (tokens[:, :1], tokens[:, 1:]) if cfg.cls_token[i] else (None, tokens)
    return rec(name, to_grid(tokens, *hw)), cls


def base_forward(p, pixel_values, cfg, K, rec, prefix, output_hidden_states):
    """CvtModel.forward: the stages in turn. hidden_states[i] is stage i's output grid (no embedding entry);
    cls_token_value is the last stage's class token (None when it has none)."""
    x, cls, hidden_states = pixel_values, None, []
    for i, sp in enumerate(p["encoder"]["stages"]):
        x, cls = stage_forward(sp, x, i, cfg, K, rec, f"{prefix}encoder.stages.{i}")  # (B, C, h, w)
        hidden_states.append(x)
    return {"last_hidden_state": x, "cls_token_value": cls,
            "hidden_states": tuple(hidden_states) if output_hidden_states else None}


# ----------------------------------------------------------------------------------------------------------------------
# Head


def image_classification(p, base, cfg, K, rec):
    """CvtForImageClassification: LayerNorm on the class token when the last stage has one, else on every token of
    the last grid; then the mean over tokens and the classifier (identity when num_labels == 0)."""
    if cfg.cls_token[-1]:
        x = base["cls_token_value"]                                                    # (B, 1, C)
    else:
        x = to_tokens(base["last_hidden_state"])                                       # (B, N, C)
    x = rec("layernorm", layer_norm(x, p["layernorm"], LAYER_NORM_EPS, K))
    pooled = x.mean(axis=1)                                                            # (B, C)
    logits = linear(pooled, p["classifier"]) if cfg.num_labels > 0 else pooled
    return {"logits": rec("classifier", logits)}


# ----------------------------------------------------------------------------------------------------------------------
# Architectures


def model_forward(head, prefix: str, name: str):
    """The forward of one class: option and size checks, CvtModel.forward, then the head (None: base model).

    transformers' CvT forward swallows unknown keyword arguments; refvit refuses bool_masked_pos and
    interpolate_pos_encoding=True (they would mean something in other families) and, like transformers, returns no
    attention maps for output_attentions=True (output_intermediates=True records them as `…attention.dropout`).
    """
    def forward(p, pixel_values, cfg, K, rec, opts):
        height, width = pixel_values.shape[2:]
        if opts.bool_masked_pos is not None:
            raise InputError(f"bool_masked_pos: {name} has no mask token (CvT has no masked-image-modeling head)")
        if opts.interpolate_pos_encoding:
            raise InputError(f"interpolate_pos_encoding: {name} has no position embeddings; any input size works "
                             "without it")
        stage_grids(cfg, height, width)
        base = base_forward(p[prefix[:-1]] if prefix else p, pixel_values, cfg, K, rec, prefix,
                            opts.output_hidden_states)
        if head is None:
            return base
        return {**head(p, base, cfg, K, rec), "hidden_states": base["hidden_states"]}
    return forward


def architecture(name, head, shapes_of_head, output):
    prefix = "" if head is None else "cvt."

    def shapes(cfg):
        return {**{prefix + k: v for k, v in base_shapes(cfg).items()}, **shapes_of_head(cfg)}

    return Architecture(name=name, family="cvt", is_base=head is None, base_prefix="cvt.",
                        parse_config=cvt_config_from_dict, shapes=shapes, forward=model_forward(head, prefix, name),
                        output=output, anchor="encoder.stages.0.embedding.convolution_embeddings.projection.weight")


ARCHITECTURES = [
    architecture("CvtModel", None, lambda cfg: {}, BaseModelOutputWithCLSToken),
    architecture("CvtForImageClassification", image_classification, head_shapes, ImageClassifierOutputWithNoAttention),
]
BASE_MODELS = {"cvt": "CvtModel"}                      # model_type -> base class, when config has no architectures
CLASSIFIERS = {"cvt": "CvtForImageClassification"}
