"""BiT (Big Transfer) forward passes, as `transformers/models/bit/modeling_bit.py` (5.23).

Paper: Kolesnikov et al. 2019, "Big Transfer (BiT): General Visual Representation Learning": a ResNet-v2 whose
convolutions are weight-standardised (Qiao et al. 2019, "Micro-Batch Training with Batch-Channel Normalization and
Weight Standardization") and whose BatchNorms are GroupNorms (Wu & He 2018). transformers' `layer_type="bottleneck"`
is the post-activation ResNet-v1.5 block the hybrid ViT backbones use.

Params trees use the checkpoint's names: `p["encoder"]["stages"][1]["layers"][0]["conv2"]["weight"]`; intermediates
are recorded under the same names (`bit.encoder.stages.1.layers.0.conv2`). Every tensor is NCHW:
B batch, C channels, h/w feature-map height and width.

Load-time preparation: every convolution of BiT is a `WeightStandardizedConv2d`, which standardises its weight on
every call; refvit standardises each weight once, at load (`standardize_weight`, run through Architecture.prepare on
the flat checkpoint tensors, in float64), so the forward runs plain convolutions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

import numpy as np

from ..architecture import Architecture
from ..config import SUPPORTED_ACTIVATIONS, _check_type, _labels
from ..errors import ConfigError, InputError
from ..outputs import BackboneOutput, BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention
from .common import activation, linear

WS_EPS = 1e-8          # WeightStandardizedConv2d defaults to eps=1e-6, but every call site in modeling_bit.py passes 1e-8
GN_EPS = 1e-5          # BitGroupNormActivation(eps=1e-5): no call site changes it, no config key sets it
BOTTLE_RATIO = 0.25    # BitStage(bottle_ratio=0.25): mid channels = make_div(out_channels · 0.25)
STEM_KERNEL, STEM_STRIDE = 7, 2       # BitEmbeddings: WeightStandardizedConv2d(kernel_size=7, stride=2)
POOL_KERNEL, POOL_STRIDE = 3, 2       # BitEmbeddings: BitMaxPool2d(kernel_size=3, stride=2)


# ----------------------------------------------------------------------------------------------------------------------
# Configuration (transformers/models/bit/configuration_bit.py)


@dataclass(frozen=True)
class BitConfig:
    """Configuration of BiT (`BitConfig`); defaults are transformers' (the google/bit-50 shape)."""

    model_type: str = "bit"
    architectures: tuple = ()                    # HF class names this checkpoint was saved from
    num_channels: int = 3                        # input channels
    embedding_size: int = 64                     # stem (embedder) output channels
    hidden_sizes: tuple = (256, 512, 1024, 2048)  # output channels of each stage (before width_factor)
    depths: tuple = (3, 4, 6, 3)                 # bottleneck layers per stage
    layer_type: str = "preactivation"            # "preactivation" (ResNet-v2, BiT) or "bottleneck" (v1.5, ViT hybrid)
    hidden_act: str = "relu"                     # activation after each GroupNorm (transformers ACT2FN name)
    global_padding: str | None = None            # None (torch-style symmetric) or "SAME" (TF; "VALID" is refused)
    num_groups: int = 32                         # GroupNorm groups
    embedding_dynamic_padding: bool = False      # stem max-pool pads TF-"SAME"-style (with zeros) first
    output_stride: int = 32                      # stop striding (dilate instead) once this stride is reached
    width_factor: int = 1                        # multiplies every stage's channels (make_div rounds to 8)
    out_features: tuple = ("stage4",)            # BitBackbone: stages returned as feature maps
    out_indices: tuple = (4,)                    # ... and their indices into stage_names
    id2label: dict = field(default_factory=dict)  # class index -> label name (num_labels = its length)
    label2id: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def stage_names(self) -> tuple:
        """configuration_bit.py: ["stem", "stage1", …, "stageN"] (the backbone's feature names)."""
        return ("stem",) + tuple(f"stage{i}" for i in range(1, len(self.depths) + 1))

    @property
    def num_features(self) -> int:
        """Channels of the last stage: make_div(hidden_sizes[-1] · width_factor)."""
        return make_div(self.hidden_sizes[-1] * self.width_factor)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def make_div(value, divisor=8):
    """modeling_bit.make_div: round channels to a multiple of 8, never below 8 nor below 90% of `value`."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def _int_list(raw, key, default, problems):
    value = raw.get(key, list(default))
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        problems.append(f"{key}: expected a non-empty list of positive ints, got {value!r}")
        return tuple(default)
    return tuple(value)


def _backbone_outputs(raw, stage_names, problems):
    """out_features / out_indices as BackboneConfigMixin.set_output_features_output_indices aligns and checks them."""
    feats, idx = raw.get("out_features"), raw.get("out_indices")
    n = len(stage_names)
    if feats is not None:
        if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
            problems.append(f"out_features: expected a list of stage names, got {feats!r}")
            return (stage_names[-1],), (n - 1,)
        if any(f not in stage_names for f in feats) or len(set(feats)) != len(feats) \
                or feats != [s for s in stage_names if s in feats]:
            problems.append(f"out_features: must be distinct names from {list(stage_names)}, in that order; got {feats}")
            return (stage_names[-1],), (n - 1,)
    if idx is not None:
        if not isinstance(idx, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            problems.append(f"out_indices: expected a list of ints, got {idx!r}")
            return (stage_names[-1],), (n - 1,)
        positive = [i % n if -n <= i < 0 else i for i in idx]
        if any(not 0 <= i < n for i in positive) or len(set(positive)) != len(positive) or positive != sorted(positive):
            problems.append(f"out_indices: must be distinct, increasing indices into {list(stage_names)}; got {list(idx)}")
            return (stage_names[-1],), (n - 1,)
        if feats is not None and feats != [stage_names[i] for i in positive]:
            problems.append(f"out_features {feats} and out_indices {list(idx)} name different stages")
        return tuple(stage_names[i] for i in positive), tuple(positive)
    if feats is not None:
        return tuple(feats), tuple(stage_names.index(f) for f in feats)
    return (stage_names[-1],), (n - 1,)   # neither given: the last stage


def bit_config_from_dict(raw: dict, source: str = "config.json", needs_final_width: bool = False) -> BitConfig:
    """Parse and validate a BiT config dict; every problem is listed in one ConfigError.

    needs_final_width: the class builds a module of hidden_sizes[-1] channels on the last stage's output (the
    preactivation final norm, the classifier), which only fits when width_factor keeps that width.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    d = BitConfig()
    ints = ("num_channels", "embedding_size", "num_groups", "output_stride", "width_factor")
    values = {k: _check_type(raw, k, getattr(d, k), int, problems) for k in ints}
    for k in ints:
        if values[k] <= 0:
            problems.append(f"{k}: must be positive, got {values[k]}")
    values["hidden_sizes"] = _int_list(raw, "hidden_sizes", d.hidden_sizes, problems)
    values["depths"] = _int_list(raw, "depths", d.depths, problems)
    if len(values["hidden_sizes"]) != len(values["depths"]):  # transformers zips them: the shorter one wins silently
        problems.append(f"hidden_sizes {list(values['hidden_sizes'])} and depths {list(values['depths'])} must have "
                        "the same length (one entry per stage)")
    values["layer_type"] = _check_type(raw, "layer_type", d.layer_type, str, problems)
    if values["layer_type"] not in ("preactivation", "bottleneck"):
        problems.append(f"layer_type: expected 'preactivation' or 'bottleneck', got {values['layer_type']!r}")
    values["hidden_act"] = _check_type(raw, "hidden_act", d.hidden_act, str, problems)
    if values["hidden_act"] not in SUPPORTED_ACTIVATIONS:
        problems.append(f"hidden_act: activation {values['hidden_act']!r} is not supported "
                        f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
    padding = raw.get("global_padding")
    if padding is not None and not isinstance(padding, str):
        problems.append(f"global_padding: expected null, 'SAME' or 'VALID', got {padding!r}")
        padding = None
    padding = padding.upper() if padding is not None else None  # configuration_bit.py upper-cases it
    if padding not in (None, "SAME", "VALID"):
        problems.append(f"global_padding: expected null, 'SAME' or 'VALID', got {raw.get('global_padding')!r}")
    if padding == "VALID":  # every 3×3 conv then shrinks the residual branch below its shortcut: no input runs
        problems.append("global_padding: 'VALID' leaves the 3×3 convolutions unpadded, so every residual add gets "
                        "mismatched sizes; transformers' own forward fails on every input (use null or 'SAME')")
    values["global_padding"] = padding
    values["embedding_dynamic_padding"] = _check_type(raw, "embedding_dynamic_padding", False, bool, problems)
    _check_type(raw, "drop_path_rate", 0.0, (int, float), problems)  # training only: checked, then unused
    model_type = raw.get("model_type", "bit")
    if model_type != "bit":
        problems.append(f"model_type: expected 'bit' here, got {model_type!r}")
    archs = raw.get("architectures") or ()
    if not isinstance(archs, (list, tuple)) or not all(isinstance(a, str) for a in archs):
        problems.append(f"architectures: expected a list of class names, got {archs!r}")
        archs = ()
    id2label, label2id = _labels(raw, problems)
    cfg = BitConfig(model_type="bit", architectures=tuple(archs), id2label=id2label, label2id=label2id, **values)
    cfg = _with_backbone_outputs(cfg, raw, problems)
    if not problems:
        problems += _structural_problems(cfg, needs_final_width)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return cfg


def _with_backbone_outputs(cfg, raw, problems):
    feats, idx = _backbone_outputs(raw, cfg.stage_names, problems)
    return BitConfig(**{**cfg.to_dict(), "out_features": feats, "out_indices": idx})


def _structural_problems(cfg, needs_final_width) -> list[str]:
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
            f"channels, but this class's final norm / classifier is built for hidden_sizes[-1] = {cfg.hidden_sizes[-1]}; "
            "transformers' own forward fails on this config (only BitModel/BitBackbone with layer_type='bottleneck' "
            "run with width_factor != 1)")
    return problems


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


def classifier_shapes(cfg) -> dict[str, tuple]:
    """`nn.Sequential(nn.Flatten(), nn.Linear(hidden_sizes[-1], num_labels))`; Identity when num_labels == 0."""
    if cfg.num_labels == 0:
        return {}
    return {"classifier.1.weight": (cfg.num_labels, cfg.hidden_sizes[-1]), "classifier.1.bias": (cfg.num_labels,)}


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
    """Load-time preparation (Architecture.prepare, the hook on the flat checkpoint tensors): every BiT convolution
    weight is replaced by its standardised form, once; the run dtype cast follows in model.prepare_params."""
    out = {}
    for name, t in tensors.items():
        ok = CONV_WEIGHT.search(name) and t.ndim == 4 and t.size and t.dtype.kind in "fiu"
        out[name] = standardize_weight(t) if ok else t
    return out


def backbone_tensors(tensors: dict) -> dict:
    """BitBackbone loads a BitForImageClassification checkpoint (AutoBackbone on google/bit-50): the classifier is
    ignored, as transformers ignores it; then the load-time preparation."""
    return standardize_conv_weights({k: v for k, v in tensors.items() if not k.startswith("classifier.")})


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


def ws_conv(p, x, cfg, K, stride=1, dilation=1):
    """WeightStandardizedConv2d (weight already standardised at load), no bias -> (B, C_out, h', w')."""
    kernel = p["weight"].shape[-1]
    pad = conv_padding(cfg, x.shape, kernel, stride, dilation)
    return K.conv2d(x, p["weight"], None, (stride, stride), pad, (dilation, dilation))


def group_norm_act(p, x, cfg, K, apply_activation=True):
    """BitGroupNormActivation: GroupNorm(num_groups, eps 1e-5) then ACT2FN[hidden_act] (ReLU fused into the kernel)."""
    relu = apply_activation and cfg.hidden_act == "relu"
    y = K.group_norm_act(x, cfg.num_groups, p["weight"], p["bias"], GN_EPS, relu)
    return activation(cfg.hidden_act, y, K) if apply_activation and not relu else y


def embeddings(p, x, cfg, K, rec, name):
    """BitEmbeddings: 7×7/2 conv, zero pad 1 (unless SAME), GroupNorm+act (bottleneck only), 3×3/2 max-pool."""
    x = rec(f"{name}.convolution", ws_conv(p["convolution"], x, cfg, K, STEM_STRIDE))   # (B, E, H/2, W/2)
    if cfg.global_padding != "SAME":  # nn.ConstantPad2d(1, 0): the GroupNorm after it counts the zero ring too
        x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    if cfg.layer_type != "preactivation":
        x = group_norm_act(p["norm"], x, cfg, K)
    x = rec(f"{name}.norm", x)                                         # nn.Identity for preactivation
    # BitMaxPool2d: with embedding_dynamic_padding it pads TF-"SAME"-style with value 0 (its padding_value default),
    # not -inf: quirk reproduced (visible on preactivation stems, whose input to the pool can be negative)
    pad = (dynamic_pad(x.shape[2], POOL_KERNEL, POOL_STRIDE, 1) + dynamic_pad(x.shape[3], POOL_KERNEL, POOL_STRIDE, 1)
           if cfg.embedding_dynamic_padding else (0, 0, 0, 0))
    x = rec(f"{name}.pooler", K.max_pool2d(x, POOL_KERNEL, POOL_STRIDE, pad, False, 0.0))
    return rec(name, x)                                                # (B, E, h, w)


def residual_add(h, shortcut, rec):
    """h + shortcut; into h itself when nothing recorded h (no intermediates asked for): BiT's stage-1 maps are
    B × 256 × 112 × 112 at 448², and a new array for each sum cost ~15 ms per image in page faults at batch 8."""
    return h + shortcut if rec.enabled else np.add(h, shortcut, out=h)


def preactivation_layer(p, x, cfg, K, rec, name, stride):
    """BitPreActivationBottleneckLayer (v2): norm1 first; the shortcut projects the *pre-activated* input.

    Quirk reproduced: conv2 gets the stride but never the dilation (the class ignores `dilation`), so output_stride
    only removes strides in preactivation models.
    """
    pre = rec(f"{name}.norm1", group_norm_act(p["norm1"], x, cfg, K))
    shortcut = x
    if "downsample" in p:
        shortcut = rec(f"{name}.downsample.conv", ws_conv(p["downsample"]["conv"], pre, cfg, K, stride))
        shortcut = rec(f"{name}.downsample", rec(f"{name}.downsample.norm", shortcut))   # norm: nn.Identity
    h = rec(f"{name}.conv1", ws_conv(p["conv1"], pre, cfg, K))
    h = rec(f"{name}.norm2", group_norm_act(p["norm2"], h, cfg, K))
    h = rec(f"{name}.conv2", ws_conv(p["conv2"], h, cfg, K, stride))
    h = rec(f"{name}.norm3", group_norm_act(p["norm3"], h, cfg, K))
    h = rec(f"{name}.conv3", ws_conv(p["conv3"], h, cfg, K))
    return rec(name, residual_add(h, shortcut, rec))


def bottleneck_layer(p, x, cfg, K, rec, name, stride, dilation):
    """BitBottleneckLayer (v1.5, post-activation): conv-norm ×3 (stride and dilation on the 3×3), norm3 without
    activation, add the (projected) shortcut, then the activation."""
    shortcut = x
    if "downsample" in p:
        s = rec(f"{name}.downsample.conv", ws_conv(p["downsample"]["conv"], x, cfg, K, stride))
        s = rec(f"{name}.downsample.norm", group_norm_act(p["downsample"]["norm"], s, cfg, K, apply_activation=False))
        shortcut = rec(f"{name}.downsample", s)
    h = rec(f"{name}.conv1", ws_conv(p["conv1"], x, cfg, K))
    h = rec(f"{name}.norm1", group_norm_act(p["norm1"], h, cfg, K))
    h = rec(f"{name}.conv2", ws_conv(p["conv2"], h, cfg, K, stride, dilation))
    h = rec(f"{name}.norm2", group_norm_act(p["norm2"], h, cfg, K))
    h = rec(f"{name}.conv3", ws_conv(p["conv3"], h, cfg, K))
    h = rec(f"{name}.norm3", group_norm_act(p["norm3"], h, cfg, K, apply_activation=False))
    return rec(name, activation(cfg.hidden_act, residual_add(h, shortcut, rec), K))


def stage(p, x, cfg, K, rec, name, plan: StagePlan):
    """BitStage: `depth` layers; only layer 0 strides (and has the downsample); layer 0 uses first_dilation."""
    for i, lp in enumerate(p["layers"]):
        stride, dilation = (plan.stride, plan.first_dilation) if i == 0 else (1, plan.dilation)
        if cfg.layer_type == "preactivation":
            x = preactivation_layer(lp, x, cfg, K, rec, f"{name}.layers.{i}", stride)
        else:
            x = bottleneck_layer(lp, x, cfg, K, rec, f"{name}.layers.{i}", stride, dilation)
    return rec(name, x)


def base_forward(p, x, cfg, K, rec, prefix):
    """BitModel.forward: stem, stages, final GroupNorm+act (preactivation only), global average pool.

    hidden_states = (stem output, stage 1 output, …, stage N output), all before the final norm.
    """
    x = embeddings(p["embedder"], x, cfg, K, rec, f"{prefix}embedder")
    hidden_states = [x]
    for s, plan in enumerate(stage_plan(cfg)):
        x = stage(p["encoder"]["stages"][s], x, cfg, K, rec, f"{prefix}encoder.stages.{s}", plan)
        hidden_states.append(x)
    if cfg.layer_type == "preactivation":
        x = group_norm_act(p["norm"], x, cfg, K)
    x = rec(f"{prefix}norm", x)                                        # (B, C, h, w); nn.Identity for bottleneck
    pooled = rec(f"{prefix}pooler", x.mean(axis=(2, 3), keepdims=True))  # AdaptiveAvgPool2d((1, 1)): (B, C, 1, 1)
    return {"last_hidden_state": x, "pooler_output": pooled, "hidden_states": tuple(hidden_states)}


# ----------------------------------------------------------------------------------------------------------------------
# Heads


def image_classification(p, base, cfg, K, rec):
    """BitForImageClassification: Flatten, then Linear(hidden_sizes[-1], num_labels) (Identity when 0 labels)."""
    pooled = base["pooler_output"].reshape(base["pooler_output"].shape[0], -1)   # (B, C)
    logits = linear(pooled, p["classifier"][1]) if cfg.num_labels > 0 else pooled
    return {"logits": rec("classifier", logits)}


def backbone(p, base, cfg, K, rec):
    """BitBackbone: the hidden states of the stages named in out_features (stem = the embedder's output)."""
    return {"feature_maps": tuple(base["hidden_states"][i] for i in cfg.out_indices)}


# ----------------------------------------------------------------------------------------------------------------------
# Architectures: the transformers classes this file runs


def model_forward(head, prefix: str, name: str):
    """The forward of one class: option checks, BitModel.forward, then the head (None: BitModel itself)."""
    def forward(p, pixel_values, cfg, K, rec, opts):
        if opts.bool_masked_pos is not None:
            raise InputError(f"bool_masked_pos: {name} has no mask token (a convolutional network)")
        if opts.interpolate_pos_encoding:
            raise InputError(f"interpolate_pos_encoding: {name} has no position embeddings (it takes any image size)")
        # output_attentions is accepted and ignored, as transformers' BiT forwards (no attention anywhere)
        try:
            base = base_forward(p[prefix[:-1]] if prefix else p, pixel_values, cfg, K, rec, prefix)
        except InputError as e:  # a conv or pool whose (padded) input is smaller than its kernel
            raise InputError(f"pixel_values: image {pixel_values.shape[2]}x{pixel_values.shape[3]} is too small for "
                             f"{name} with global_padding={cfg.global_padding!r} ({e})") from None
        hidden = base["hidden_states"] if opts.output_hidden_states else None
        if head is None:
            return {**base, "hidden_states": hidden}
        return {**head(p, base, cfg, K, rec), "hidden_states": hidden}
    return forward


def architecture(name, head, head_shapes, output, prepare=standardize_conv_weights):
    """One BiT class: BitModel's tensors (under `bit.` for heads and the backbone), then the head's own tensors."""
    prefix = "" if head is None else "bit."

    def shapes(cfg):
        return {**{prefix + k: v for k, v in base_shapes(cfg).items()}, **head_shapes(cfg)}

    def parse(raw: dict, source: str = "config.json"):
        # the preactivation final norm (every class) and the classifier are built for hidden_sizes[-1] channels
        preact = isinstance(raw, dict) and raw.get("layer_type", "preactivation") == "preactivation"
        return bit_config_from_dict(raw, source, needs_final_width=preact or head is image_classification)

    return Architecture(name=name, family="bit", is_base=head is None, base_prefix="bit.", parse_config=parse,
                        shapes=shapes, forward=model_forward(head, prefix, name), output=output, prepare=prepare,
                        anchor="embedder.convolution.weight")


def no_head_shapes(cfg):
    return {}


ARCHITECTURES = [
    architecture("BitModel", None, no_head_shapes, BaseModelOutputWithPoolingAndNoAttention),
    architecture("BitForImageClassification", image_classification, classifier_shapes,
                 ImageClassifierOutputWithNoAttention),
    architecture("BitBackbone", backbone, no_head_shapes, BackboneOutput, prepare=backbone_tensors),
]
BASE_MODELS = {"bit": "BitModel"}                           # model_type -> base class, when config has no architectures
CLASSIFIERS = {"bit": "BitForImageClassification"}
