"""BiT (Big Transfer) forward passes, as `transformers/models/bit/modeling_bit.py` (5.23).

Paper: Kolesnikov et al. 2019, "Big Transfer (BiT): General Visual Representation Learning": a ResNet-v2 whose
convolutions are weight-standardised (Qiao et al. 2019, "Micro-Batch Training with Batch-Channel Normalization and
Weight Standardization") and whose BatchNorms are GroupNorms (Wu & He 2018). transformers' `layer_type="bottleneck"`
is the post-activation ResNet-v1.5 block the hybrid ViT backbones use.

Params trees use the checkpoint's names (docs/DESIGN.md §4):
`p["encoder"]["stages"][1]["layers"][0]["conv2"]["weight"]`; intermediates are recorded under the same names
(`bit.encoder.stages.1.layers.0.conv2`). Every tensor is NCHW:
B batch, C channels, h/w feature-map height and width.

Load-time preparation: every convolution of BiT is a `WeightStandardizedConv2d`, which standardises its weight on
every call; refvit standardises each weight once, at load (`standardize_weight`, run through
Family.before_mapping on the flat checkpoint tensors, in float64), so the forward runs plain convolutions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .architecture import Architecture, Family, Head, Inputs
from .. import config
from ..config import BitConfig, make_div, raise_problems  # noqa: F401 (BitConfig: the family's config)
from ..errors import InputError
from ..outputs import BackboneOutput, BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention
from .common import classifier_or_identity, classifier_shapes


WS_EPS = 1e-8          # WeightStandardizedConv2d defaults to eps=1e-6; every call site in modeling_bit.py passes 1e-8
GN_EPS = 1e-5          # BitGroupNormActivation(eps=1e-5): no call site changes it, no config key sets it
STEM_KERNEL, STEM_STRIDE = 7, 2       # BitEmbeddings: WeightStandardizedConv2d(kernel_size=7, stride=2)
POOL_KERNEL, POOL_STRIDE = 3, 2       # BitEmbeddings: BitMaxPool2d(kernel_size=3, stride=2)
BOTTLE_RATIO = 0.25                   # BitStage(bottle_ratio=0.25): mid channels = make_div(out_channels · 0.25)


# ----------------------------------------------------------------------------------------------------------------------
# The network's shape, derived from the config (BitEncoder / BitStage hyper-parameters)


@dataclass(frozen=True)
class StagePlan:
    in_channels: int
    out_channels: int       # make_div(hidden_size · width_factor)
    mid_channels: int       # make_div(out_channels · 0.25)
    depth: int
    stride: int             # of the first layer (conv2 and the downsample conv)
    dilation: int           # conv2 dilation of layers 1.. (bottleneck layers only)
    first_dilation: int     # conv2 dilation of layer 0 (bottleneck layers only)


def stage_plan(cfg) -> list[StagePlan]:
    """BitEncoder._get_updated_hyperparameters + BitStage: strides 1, 2, 2, …, switched to dilation once the
    running stride reaches output_stride (the encoder starts at stride 4: stem conv + max-pool)."""
    plans, current_stride, dilation, in_channels = [], 4, 1, cfg.embedding_size
    for s, (depth, hidden) in enumerate(zip(cfg.depths, cfg.hidden_sizes)):
        out_channels = make_div(hidden * cfg.width_factor)
        stride = 1 if s == 0 else 2
        if current_stride >= cfg.output_stride:
            dilation *= stride
            stride = 1
        first_dilation = 1 if dilation in (1, 2) else 2  # BitStage: layer 0 uses a smaller dilation
        plans.append(StagePlan(in_channels, out_channels, make_div(out_channels * BOTTLE_RATIO), depth, stride,
                               dilation, first_dilation))
        current_stride *= stride
        in_channels = out_channels
    return plans


# ----------------------------------------------------------------------------------------------------------------------
# What a checkpoint holds (checkpoint names, shapes derived from the config)


def _norm(name, channels):
    return {f"{name}.weight": (channels,), f"{name}.bias": (channels,)}


def base_shapes(cfg) -> dict[str, tuple]:
    """Tensors of BitModel (no prefix). Convolutions have no bias (WeightStandardizedConv2d(bias=False))."""
    preact = cfg.layer_type == "preactivation"
    s = {"embedder.convolution.weight": (cfg.embedding_size, cfg.num_channels, STEM_KERNEL, STEM_KERNEL)}
    if not preact:
        s.update(_norm("embedder.norm", cfg.embedding_size))
    for si, st in enumerate(stage_plan(cfg)):
        for li in range(st.depth):
            L = f"encoder.stages.{si}.layers.{li}."
            cin = st.in_channels if li == 0 else st.out_channels
            if li == 0:  # BitStage: the first layer of every stage has a downsample (projection) shortcut
                s[L + "downsample.conv.weight"] = (st.out_channels, cin, 1, 1)
                if not preact:
                    s.update(_norm(L + "downsample.norm", st.out_channels))
            s[L + "conv1.weight"] = (st.mid_channels, cin, 1, 1)
            s[L + "conv2.weight"] = (st.mid_channels, st.mid_channels, 3, 3)
            s[L + "conv3.weight"] = (st.out_channels, st.mid_channels, 1, 1)
            norm_widths = (cin, st.mid_channels, st.mid_channels) if preact else \
                (st.mid_channels, st.mid_channels, st.out_channels)
            for k, c in enumerate(norm_widths, 1):
                s.update(_norm(L + f"norm{k}", c))
    if preact:
        s.update(_norm("norm", cfg.hidden_sizes[-1]))
    return s


def classification_shapes(cfg) -> dict[str, tuple]:
    """`nn.Sequential(nn.Flatten(), nn.Linear(hidden_sizes[-1], num_labels))`; Identity when num_labels == 0."""
    return classifier_shapes("classifier.1", cfg.num_labels, cfg.hidden_sizes[-1])


CONV_WEIGHT = re.compile(r"(^|\.)(embedder\.convolution|conv[123]|downsample\.conv)\.weight$")


def standardize_weight(w: np.ndarray, eps: float = WS_EPS) -> np.ndarray:
    """WeightStandardizedConv2d: each output filter to zero mean, unit variance, in float64.

    transformers computes it on every call as `batch_norm(weight.reshape(1, C_out, -1), training=True, eps)`:
    per output channel, the biased variance (training-mode batch_norm), eps 1e-8 at every BiT call site.
    """
    w2 = np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1)         # (C_out, C_in/groups · kh · kw)
    mean = w2.mean(axis=1, keepdims=True)
    var = ((w2 - mean) ** 2).mean(axis=1, keepdims=True)                # biased, as batch_norm(training=True)
    return ((w2 - mean) / np.sqrt(var + eps)).reshape(w.shape)


def standardize_conv_weights(tensors: dict) -> dict:
    """Load-time preparation (Family.prepare, the hook on the flat checkpoint tensors): every BiT convolution
    weight is replaced by its standardised form, once; the run dtype cast follows in model.prepare_params."""
    out = {}
    for name, t in tensors.items():
        ok = CONV_WEIGHT.search(name) and t.ndim == 4 and t.size and t.dtype.kind in "fiu"
        out[name] = standardize_weight(t) if ok else t
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Layers


def dynamic_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """DynamicPad2d (TF "SAME"): total padding so that out = ceil(size / stride), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def conv_padding(cfg, x_shape, kernel: int, stride: int, dilation: int) -> tuple:
    """(top, bottom, left, right) zero padding of a WeightStandardizedConv2d (modeling_bit.get_padding_value)."""
    if cfg.global_padding == "SAME":
        if stride == 1 and dilation * (kernel - 1) % 2 == 0:   # static "SAME": symmetric
            p = dilation * (kernel - 1) // 2
            return (p, p, p, p)
        return dynamic_pad(x_shape[2], kernel, stride, dilation) + dynamic_pad(x_shape[3], kernel, stride, dilation)
    p = ((stride - 1) + dilation * (kernel - 1)) // 2                  # padding=None: torch-style, floor
    return (p, p, p, p)


def ws_conv(ctx, name, x, stride=1, dilation=1, record=True):
    """WeightStandardizedConv2d `name` (weight already standardised at load), no bias -> (B, C_out, h', w')."""
    kernel = ctx.param(name)["weight"].shape[-1]
    pad = conv_padding(ctx.cfg, x.shape, kernel, stride, dilation)
    return ctx.conv2d(name, x, (stride, stride), pad, (dilation, dilation), record=record)


def group_norm_act(ctx, name, x, apply_activation=True, record=True):
    """BitGroupNormActivation `name`: GroupNorm(num_groups, eps 1e-5) then ACT2FN[hidden_act] (ReLU fused into the
    kernel)."""
    cfg, p = ctx.cfg, ctx.param(name)
    relu = apply_activation and cfg.hidden_act == "relu"
    y = ctx.kernels_named(name).group_norm_act(x, cfg.num_groups, p["weight"], p["bias"], GN_EPS, relu)
    y = ctx.at(f"{name}.activation", optional=True).act(cfg.hidden_act, y) if apply_activation and not relu else y
    return ctx.record(name, y) if record else y


def embeddings(ctx, x):
    """BitEmbeddings: 7×7/2 conv, zero pad 1 (unless SAME), GroupNorm+act (bottleneck only), 3×3/2 max-pool."""
    cfg = ctx.cfg
    x = ws_conv(ctx, "convolution", x, STEM_STRIDE)                                   # (B, E, H/2, W/2)
    if cfg.global_padding != "SAME":  # nn.ConstantPad2d(1, 0): the GroupNorm after it counts the zero ring too
        x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    if cfg.layer_type != "preactivation":
        x = group_norm_act(ctx, "norm", x, record=False)
    x = ctx.record("norm", x)                                                         # nn.Identity for preactivation
    # BitMaxPool2d: with embedding_dynamic_padding it pads TF-"SAME"-style with value 0 (its padding_value default),
    # not -inf: quirk reproduced (visible on preactivation stems, whose input to the pool can be negative)
    pad = (dynamic_pad(x.shape[2], POOL_KERNEL, POOL_STRIDE, 1) + dynamic_pad(x.shape[3], POOL_KERNEL, POOL_STRIDE, 1)
           if cfg.embedding_dynamic_padding else (0, 0, 0, 0))
    x = ctx.record("pooler", ctx.kernels_named("pooler").max_pool2d(x, POOL_KERNEL, POOL_STRIDE, pad, False, 0.0))
    return ctx.record_output(x)                                                          # (B, E, h, w)


def residual_add(h, shortcut):
    """h + shortcut, into h itself (h is the layer's own fresh output; its recorded value was copied): BiT's stage-1
    maps are B × 256 × 112 × 112 at 448², and a new array for each sum cost ~15 ms per image in page faults at
    batch 8."""
    return np.add(h, shortcut, out=h)


def preactivation_layer(ctx, x, stride):
    """BitPreActivationBottleneckLayer (v2): norm1 first; the shortcut projects the *pre-activated* input.

    Quirk reproduced: conv2 gets the stride but never the dilation (the class ignores `dilation`), so output_stride
    only removes strides in preactivation models.
    """
    pre = group_norm_act(ctx, "norm1", x)
    shortcut = x
    if ctx.has("downsample"):
        shortcut = ws_conv(ctx, "downsample.conv", pre, stride)
        shortcut = ctx.record("downsample", ctx.record("downsample.norm", shortcut))   # norm: nn.Identity
    h = ws_conv(ctx, "conv1", pre)
    h = group_norm_act(ctx, "norm2", h)
    h = ws_conv(ctx, "conv2", h, stride)
    h = group_norm_act(ctx, "norm3", h)
    h = ctx.record("conv3", ws_conv(ctx, "conv3", h, record=False), copy=True)       # the add below writes into h
    return ctx.record_output(residual_add(h, shortcut))


def bottleneck_layer(ctx, x, stride, dilation):
    """BitBottleneckLayer (v1.5, post-activation): conv-norm ×3 (stride and dilation on the 3×3), norm3 without
    activation, add the (projected) shortcut, then the activation."""
    shortcut = x
    if ctx.has("downsample"):
        s = ws_conv(ctx, "downsample.conv", x, stride)
        s = group_norm_act(ctx, "downsample.norm", s, apply_activation=False)
        shortcut = ctx.record("downsample", s)
    h = ws_conv(ctx, "conv1", x)
    h = group_norm_act(ctx, "norm1", h)
    h = ws_conv(ctx, "conv2", h, stride, dilation)
    h = group_norm_act(ctx, "norm2", h)
    h = ws_conv(ctx, "conv3", h)
    h = ctx.record("norm3", group_norm_act(ctx, "norm3", h, apply_activation=False, record=False), copy=True)
    return ctx.record_output(ctx.act(ctx.cfg.hidden_act, residual_add(h, shortcut)))    # the add writes into h


def stage(ctx, x, plan: StagePlan):
    """BitStage: `depth` layers; only layer 0 strides (and has the downsample); layer 0 uses first_dilation."""
    for i in range(plan.depth):
        stride, dilation = (plan.stride, plan.first_dilation) if i == 0 else (1, plan.dilation)
        if ctx.cfg.layer_type == "preactivation":
            x = preactivation_layer(ctx.at(f"layers.{i}"), x, stride)
        else:
            x = bottleneck_layer(ctx.at(f"layers.{i}"), x, stride, dilation)
    return ctx.record_output(x)


def base_forward(ctx, inputs):
    """BitModel.forward: stem, stages, final GroupNorm+act (preactivation only), global average pool.

    hidden_states = (stem output, stage 1 output, …, stage N output), all before the final norm.
    """
    try:
        return encode(ctx, inputs.pixel_values)
    except InputError as e:  # a conv or pool whose (padded) input is smaller than its kernel
        H, W = inputs.pixel_values.shape[2:]
        raise InputError(f"pixel_values: image {H}x{W} is too small for {inputs.architecture} with "
                         f"global_padding={ctx.cfg.global_padding!r} ({e})") from None


def encode(ctx, x):
    """BitModel.forward's body: stem, stages, final norm, pooler (base_forward adds the input-size error)."""
    cfg = ctx.cfg
    x = embeddings(ctx.at("embedder"), x)
    hidden_states = [x]
    for s, plan in enumerate(stage_plan(cfg)):
        x = stage(ctx.at(f"encoder.stages.{s}"), x, plan)
        hidden_states.append(x)
    if cfg.layer_type == "preactivation":
        x = group_norm_act(ctx, "norm", x, record=False)
    x = ctx.record("norm", x)                                          # (B, C, h, w); nn.Identity for bottleneck
    pooled = ctx.record("pooler", x.mean(axis=(2, 3), keepdims=True))  # AdaptiveAvgPool2d((1, 1)): (B, C, 1, 1)
    return {"last_hidden_state": x, "pooler_output": pooled, "hidden_states": tuple(hidden_states)}


# ----------------------------------------------------------------------------------------------------------------------
# Heads: head(ctx, base, inputs) -> output fields, ctx at the top of the checkpoint


def image_classification(ctx, base, inputs):
    """BitForImageClassification: Flatten, then Linear(hidden_sizes[-1], num_labels) (Identity when 0 labels)."""
    pooled = base["pooler_output"].reshape(base["pooler_output"].shape[0], -1)   # (B, C)
    return {"logits": classifier_or_identity(ctx, "classifier.1", pooled, record_as="classifier")}


def backbone(ctx, base, inputs):
    """BitBackbone: the hidden states of the stages named in out_features (stem = the embedder's output)."""
    return {"feature_maps": tuple(base["hidden_states"][i] for i in ctx.cfg.out_indices)}


# ----------------------------------------------------------------------------------------------------------------------
# Architectures: the transformers classes this file runs


def check(arch, cfg, p, pixel_values, opts):
    """A call's checks: no mask, no position embeddings; output_attentions is accepted and ignored, as transformers'
    BiT forwards (no attention anywhere)."""
    if opts.bool_masked_pos is not None:
        raise InputError(f"bool_masked_pos: {arch.name} has no mask token (a convolutional network)")
    if opts.interpolate_pos_encoding:
        raise InputError(f"interpolate_pos_encoding: {arch.name} has no position embeddings (it takes any image size)")
    return Inputs(pixel_values, arch.name)


def bit_config_from_dict(raw: dict, source: str = "config.json", needs_final_width: bool = False) -> BitConfig:
    """refvit/config.py's checks of the fields, then what this network's shape makes impossible.

    needs_final_width: the class builds a module of hidden_sizes[-1] channels on the last stage's output (the
    preactivation final norm, the classifier), which only fits when width_factor keeps that width.
    """
    cfg = config.bit_config_from_dict(raw, source)
    raise_problems(source, structural_problems(cfg, needs_final_width))
    return cfg


def structural_problems(cfg, needs_final_width: bool) -> list[str]:
    """What makes transformers fail to build or run the model: GroupNorm widths, the width_factor mismatch."""
    problems = []
    widths = {"embedding_size": cfg.embedding_size}
    for s, stage in enumerate(stage_plan(cfg)):
        widths[f"stage {s + 1} output ({stage.out_channels})"] = stage.out_channels
        widths[f"stage {s + 1} bottleneck ({stage.mid_channels})"] = stage.mid_channels
    bad = [name for name, c in widths.items() if c % cfg.num_groups]
    if bad:  # nn.GroupNorm refuses to build
        problems.append(f"num_groups: {cfg.num_groups} does not divide the GroupNorm widths of {', '.join(bad)}")
    if needs_final_width and cfg.num_features != cfg.hidden_sizes[-1]:
        problems.append(
            f"width_factor: the last stage outputs make_div(hidden_sizes[-1] · width_factor) = {cfg.num_features} "
            "channels, but this class's final norm / classifier is built for hidden_sizes[-1] = "
            f"{cfg.hidden_sizes[-1]}; "
            "transformers' own forward fails on this config (only BitModel/BitBackbone with layer_type='bottleneck' "
            "run with width_factor != 1)")
    return problems


def parse_config(raw: dict, source: str, arch):
    """The preactivation final norm (every class) and the classifier are built for hidden_sizes[-1] channels."""
    preact = isinstance(raw, dict) and raw.get("layer_type", "preactivation") == "preactivation"
    classifier = arch.head is not None and arch.head.kind == "classification"
    return bit_config_from_dict(raw, source, needs_final_width=preact or classifier)


def prepare(tensors: dict, arch) -> dict:
    """Load-time preparation: BitBackbone ignores a classifier (AutoBackbone on google/bit-50 loads a
    BitForImageClassification checkpoint, as transformers does); then every conv weight standardised, once."""
    if arch.head is not None and arch.head.kind == "backbone":
        tensors = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
    return standardize_conv_weights(tensors)


BIT = Family(prefix="bit.", parse_config=parse_config, shapes=lambda cfg, arch: base_shapes(cfg), check=check,
             forward=base_forward, before_mapping=prepare, anchor="embedder.convolution.weight")

# Data rows, one per transformers class: Architecture(name, model_type, base model, head, transformers' output class)
ARCHITECTURES = [
    Architecture("BitModel", "bit", BIT, None, BaseModelOutputWithPoolingAndNoAttention),
    Architecture("BitForImageClassification", "bit", BIT,
                 Head("classification", image_classification, classification_shapes),
                 ImageClassifierOutputWithNoAttention),
    Architecture("BitBackbone", "bit", BIT, Head("backbone", backbone, reads_hidden_states=True), BackboneOutput),
]
