"""BEiT and data2vec-vision forward passes, as `transformers/models/beit/modeling_beit.py` and
`transformers/models/data2vec/modeling_data2vec_vision.py` (5.23).

Papers: Bao et al. 2021, "BEiT: BERT Pre-Training of Image Transformers"; Baevski et al. 2022, "data2vec: A General
Framework for Self-supervised Learning in Speech, Vision and Language" (the same network, other pre-training). A ViT
whose key projection has no bias, whose attention scores get a learned *relative position bias* (per layer or one
shared table), whose residual branches are scaled per channel (layer scale, lambda_1 / lambda_2), and whose pooler
averages the patch tokens. Heads: image classification, masked image modeling over a visual-token vocabulary,
semantic segmentation (UperNet: FPN + pyramid pooling, Xiao et al. 2018, and an FCN auxiliary head) and a backbone.

Params trees and intermediates use the checkpoint's names (DESIGN.md §3.2): `beit.encoder.layer.3.attention.attention
.relative_position_bias` is the (1, H, N, N) bias of layer 3, `decode_head.bottleneck` the pyramid-pooling
bottleneck. transformers 5 renamed BEiT's modules (`layers.3.attention.q_proj`, `shared_position_bias`,
`fpn.fpn1.conv_transpose1`, `psp_modules.blocks.0.conv.convolution` …) but `save_pretrained` writes the classic names;
data2vec-vision kept its module names, so its segmentation head's checkpoint names differ from BEiT's (`HeadNames`).

Load-time preparation (`prepare_tensors`, run through Architecture.prepare on the flat checkpoint tensors): every
BatchNorm (eval mode) is folded into the convolution before it, once, in float64 (`fold_batch_norm`).
Shapes: B batch, N tokens, C channels (hidden_size), H heads, D head dim, h/w patch grid (or feature-map size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from functools import lru_cache

import numpy as np

from ..architecture import Architecture, check_mask
from ..config import SUPPORTED_ACTIVATIONS, PatchGridMixin, _check_type, _labels, _pair
from ..errors import ConfigError, InputError
from ..outputs import (BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput, MaskedLMOutput,
                       SemanticSegmenterOutput)
from .common import layer_norm, linear, linear_act, rename_modules
from .vit import interpolate_position_embeddings, mask_patches, patch_embeddings

BN_EPS = 1e-5  # nn.BatchNorm2d's default eps: every BatchNorm of the segmentation head and the FPN uses it

# ----------------------------------------------------------------------------------------------------------------------
# Configuration (transformers/models/beit/configuration_beit.py, .../data2vec/configuration_data2vec_vision.py)


MAX_LAYERS = 4096  # far beyond any real checkpoint; bounds the work done before the tensors are checked
# UperNet pools the last feature map to scale x scale bins whatever its size (torch's adaptive bins overlap and
# repeat pixels past the map's size), allocating (B, hidden_size, scale, scale) per scale: no weight bounds it.
# Real heads use (1, 2, 3, 6); the pooled map (token grid halved) is 128 wide only for 4096-pixel inputs at
# patch 16. 128 caps each pooled map at 64 KiB per channel and image.
MAX_POOL_SCALE = 128


@dataclass(frozen=True)
class BeitConfig(PatchGridMixin):
    """`BeitConfig` / `Data2VecVisionConfig` (the same fields); defaults are transformers' (BEiT-B at 224²)."""

    model_type: str = "beit"                     # "beit" or "data2vec-vision"
    architectures: tuple = ()                    # HF class names this checkpoint was saved from
    vocab_size: int = 8192                       # visual tokens predicted by BeitForMaskedImageModeling
    hidden_size: int = 768                       # C
    num_hidden_layers: int = 12
    num_attention_heads: int = 12                # H, D = C // H
    intermediate_size: int = 3072                # MLP width
    hidden_act: str = "gelu"                     # MLP activation (ACT2FN name; "gelu" is erf-GELU)
    layer_norm_eps: float = 1e-12                # every LayerNorm
    image_size: tuple = (224, 224)               # (height, width) the tables were made for
    patch_size: tuple = (16, 16)                 # (height, width) of a patch (see the patch_size quirk in parse)
    num_channels: int = 3
    use_mask_token: bool = False                 # builds embeddings.mask_token (bool_masked_pos)
    use_absolute_position_embeddings: bool = False   # ViT-style learned position embeddings
    use_relative_position_bias: bool = False     # a relative position bias table in every layer
    use_shared_relative_position_bias: bool = False  # one table in the encoder, added in every layer
    layer_scale_init_value: float = 0.1          # > 0 builds lambda_1 / lambda_2 (layer scale); 0 disables
    use_mean_pooling: bool = True                # pooler: LayerNorm(mean of patch tokens), else the [CLS] token
    pool_scales: tuple = (1, 2, 3, 6)            # UperNet pyramid pooling output sizes
    use_auxiliary_head: bool = True              # segmentation: FCN auxiliary head
    auxiliary_channels: int = 256
    auxiliary_num_convs: int = 1
    auxiliary_concat_input: bool = False
    out_indices: tuple = (12,)                   # BEiT: stage indices (stage i = hidden_states[i]); data2vec: 1-based
    out_features: tuple = ("stage12",)           # BEiT backbone: stage names, aligned with out_indices
    add_fpn: bool = False                        # BeitBackbone: FPN (x4, x2, x1, x0.5) on its 4 feature maps
    reshape_hidden_states: bool = True           # BeitBackbone: feature maps as (B, C, h, w), else (B, 1 + N, C)
    id2label: dict = field(default_factory=dict)
    label2id: dict = field(default_factory=dict)
    # num_labels, head_dim, grid_size (the window the relative position tables were made for), num_patches:
    # PatchGridMixin

    @property
    def stage_names(self) -> tuple:
        return ("stem",) + tuple(f"stage{i}" for i in range(1, self.num_hidden_layers + 1))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _int_tuple(raw, key, default, problems, minimum=1):
    value = raw.get(key, list(default))
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)):
        problems.append(f"{key}: expected a non-empty list of ints >= {minimum}, got {value!r}")
        return tuple(default)
    return tuple(value)


def _backbone_outputs(raw, stage_names, problems):
    """out_features / out_indices as BackboneConfigMixin.set_output_features_output_indices checks and aligns them
    (negative indices count from the end); `segmentation_indices` is the legacy name of out_indices."""
    feats, idx = raw.get("out_features"), raw.get("out_indices")
    if idx is None:
        idx = raw.get("segmentation_indices")
    n, last = len(stage_names), ((stage_names[-1],), (len(stage_names) - 1,))
    if feats is not None:
        if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
            problems.append(f"out_features: expected a list of stage names, got {feats!r}")
            return last
        if any(f not in stage_names for f in feats) or len(set(feats)) != len(feats) \
                or feats != [s for s in stage_names if s in feats]:
            problems.append(f"out_features: must be distinct names from {list(stage_names)}, in that order; got {feats}")
            return last
    if idx is not None:
        if not isinstance(idx, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            problems.append(f"out_indices: expected a list of ints, got {idx!r}")
            return last
        positive = [i % n if -n <= i < 0 else i for i in idx]
        if any(not 0 <= i < n for i in positive) or len(set(positive)) != len(positive) or positive != sorted(positive):
            problems.append(f"out_indices: must be distinct, increasing indices into {list(stage_names)}; got {list(idx)}")
            return last
        if feats is not None and feats != [stage_names[i] for i in positive]:
            problems.append(f"out_features {feats} and out_indices {list(idx)} name different stages")
        return tuple(stage_names[i] for i in positive), tuple(positive)
    if feats is not None:
        return tuple(feats), tuple(stage_names.index(f) for f in feats)
    return last  # neither given: the last stage


def beit_config_from_dict(raw: dict, source: str = "config.json", family: str = "beit", head: str = "") -> BeitConfig:
    """Parse and validate a BEiT / data2vec-vision config dict; every problem is listed in one ConfigError.

    head: "segmentation" / "backbone" add the checks transformers makes when it builds those classes.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    d = BeitConfig()
    ints = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "num_channels", "auxiliary_channels")
    values = {k: _check_type(raw, k, getattr(d, k), int, problems) for k in ints}
    for k in ints:
        if values[k] <= 0:
            problems.append(f"{k}: must be positive, got {values[k]}")
    values["auxiliary_num_convs"] = _check_type(raw, "auxiliary_num_convs", 1, int, problems)
    if values["auxiliary_num_convs"] < 0:
        problems.append(f"auxiliary_num_convs: must be >= 0, got {values['auxiliary_num_convs']}")
    bools = ("use_mask_token", "use_absolute_position_embeddings", "use_relative_position_bias",
             "use_shared_relative_position_bias", "use_mean_pooling", "use_auxiliary_head", "auxiliary_concat_input",
             "add_fpn", "reshape_hidden_states")
    values.update({k: _check_type(raw, k, getattr(d, k), bool, problems) for k in bools})
    for k in ("layer_norm_eps", "layer_scale_init_value"):
        values[k] = float(_check_type(raw, k, getattr(d, k), (int, float), problems))
        if not (values[k] >= 0 and math.isfinite(values[k])):
            problems.append(f"{k}: must be a finite non-negative number, got {values[k]}")
    values["hidden_act"] = _check_type(raw, "hidden_act", d.hidden_act, str, problems)
    if values["hidden_act"] not in SUPPORTED_ACTIVATIONS:
        problems.append(f"hidden_act: activation {values['hidden_act']!r} is not supported "
                        f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
    values["pool_scales"] = _int_tuple(raw, "pool_scales", d.pool_scales, problems)
    if max(values["pool_scales"]) > MAX_POOL_SCALE:
        problems.append(f"pool_scales: {max(values['pool_scales'])} is more than refvit accepts ({MAX_POOL_SCALE})")
    # quirk: transformers keeps patch_size as written and divides pixel sizes by it (`height // config.patch_size`)
    # in the relative position bias, the position-embedding resize, segmentation and the backbone, which fails for a
    # [h, w] list; refvit takes a list as (h, w) everywhere (where transformers runs at all, the result is the same)
    image_size = _pair(raw.get("image_size", 224), "image_size", problems) or d.image_size
    patch_size = _pair(raw.get("patch_size", 16), "patch_size", problems) or d.patch_size
    if min(patch_size) <= 0 or min(image_size) <= 0:
        problems.append(f"image_size {list(image_size)} and patch_size {list(patch_size)} must be positive")
    elif image_size[0] < patch_size[0] or image_size[1] < patch_size[1]:
        problems.append(f"image_size {list(image_size)} is smaller than one patch {list(patch_size)}")
    C, H = values["hidden_size"], values["num_attention_heads"]
    if C > 0 and H > 0 and C % H:
        problems.append(f"num_attention_heads: {H} does not divide hidden_size {C}")
    _check_type(raw, "drop_path_rate", 0.1, (int, float), problems)  # training only: checked, then unused
    model_type = raw.get("model_type", family)
    if model_type != family:
        problems.append(f"model_type: expected {family!r} for this architecture, got {model_type!r}")
    archs = raw.get("architectures") or ()
    if not isinstance(archs, (list, tuple)) or not all(isinstance(a, str) for a in archs):
        problems.append(f"architectures: expected a list of class names, got {archs!r}")
        archs = ()
    id2label, label2id = _labels(raw, problems)
    L = values["num_hidden_layers"]
    if family == "beit" and L > MAX_LAYERS:  # before the per-layer stage names are built: 10**12 would never finish
        problems.append(f"num_hidden_layers: {L} is more than refvit builds ({MAX_LAYERS})")
        L = values["num_hidden_layers"] = 0
    if family == "beit":
        stage_names = ("stem",) + tuple(f"stage{i}" for i in range(1, max(L, 0) + 1))
        values["out_features"], values["out_indices"] = _backbone_outputs(raw, stage_names, problems)
        if values["add_fpn"] and len(values["out_indices"]) != 4:  # BeitConfig.__post_init__ raises this
            problems.append(f"add_fpn: needs exactly 4 out_indices, got {list(values['out_indices'])}")
    else:  # Data2VecVisionConfig: a plain list, no backbone alignment, no FPN option
        values["out_indices"] = _int_tuple(raw, "out_indices", (3, 5, 7, 11), problems, minimum=-10 ** 9)
        values["out_features"], values["add_fpn"], values["reshape_hidden_states"] = (), False, True
    cfg = BeitConfig(model_type=family, architectures=tuple(archs), image_size=image_size, patch_size=patch_size,
                     id2label=id2label, label2id=label2id, **values)
    if not problems:
        problems += _head_problems(cfg, head)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return cfg


def _head_problems(cfg: BeitConfig, head: str) -> list[str]:
    """What makes transformers fail to build or run the segmentation head / backbone with this config."""
    problems = []
    if head == "segmentation":
        if len(cfg.out_indices) != 4:  # BeitForSemanticSegmentation.__init__ raises this
            problems.append(f"out_indices: semantic segmentation needs exactly 4, got {list(cfg.out_indices)}")
        elif cfg.model_type == "data2vec-vision":
            used = {i for i in cfg.out_indices if 1 <= i <= cfg.num_hidden_layers + 1}  # no loop over the layers
            if len(used) != 4:  # it keeps hidden_states[idx] with idx + 1 in out_indices: 4 must match
                problems.append(f"out_indices: {list(cfg.out_indices)} must be 4 distinct values in "
                                f"1..{cfg.num_hidden_layers + 1} (data2vec-vision selects hidden_states[i - 1])")
            if cfg.image_size[0] != cfg.image_size[1] or cfg.patch_size[0] != cfg.patch_size[1]:
                problems.append("image_size/patch_size: data2vec-vision segmentation reshapes features to "
                                "image_size // patch_size squared and needs square ints")
        if cfg.num_labels < 1:
            problems.append("id2label/num_labels: semantic segmentation needs at least one label")
        if cfg.use_auxiliary_head and cfg.auxiliary_num_convs == 0 and cfg.auxiliary_channels != cfg.hidden_size:
            problems.append(f"auxiliary_num_convs: 0 feeds the {cfg.hidden_size}-channel features straight into a "
                            f"classifier built for auxiliary_channels={cfg.auxiliary_channels}; transformers fails")
    if head == "backbone" and cfg.add_fpn and not cfg.reshape_hidden_states:
        problems.append("add_fpn: the FPN needs reshape_hidden_states=true (transformers fails on (B, N, C) maps)")
    return problems


# ----------------------------------------------------------------------------------------------------------------------
# What a checkpoint holds, per architecture (checkpoint names, shapes derived from the config)


@dataclass(frozen=True)
class HeadNames:
    """Checkpoint names inside the segmentation head: BEiT saves the classic ones, data2vec-vision its own."""

    conv: str            # the convolution of a conv module
    bn: str              # its BatchNorm
    bottleneck: str      # the pyramid-pooling bottleneck, under decode_head
    psp: str             # pyramid-pooling block i's conv module, under decode_head ({i})


HEAD_NAMES = {"beit": HeadNames("conv", "bn", "bottleneck", "psp_modules.{i}.1"),
              "data2vec-vision": HeadNames("convolution", "normalization", "psp_bottleneck",
                                           "psp_modules.blocks.{i}.conv")}
PREFIX = {"beit": "beit.", "data2vec-vision": "data2vec_vision."}  # base model inside head checkpoints


def table_shape(cfg) -> tuple:
    """relative_position_bias_table: (2h - 1)(2w - 1) relative offsets + 3 class-token entries, one column per head."""
    h, w = cfg.grid_size
    return ((2 * h - 1) * (2 * w - 1) + 3, cfg.num_attention_heads)


def base_shapes(cfg, shared_table_name="encoder.relative_position_bias.relative_position_bias_table") -> dict:
    """Tensors of BeitModel / Data2VecVisionModel without the pooler (checkpoint names, no model prefix)."""
    C, I, (ph, pw) = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    s = {"embeddings.cls_token": (1, 1, C),
         "embeddings.patch_embeddings.projection.weight": (C, cfg.num_channels, ph, pw),
         "embeddings.patch_embeddings.projection.bias": (C,)}
    if cfg.use_mask_token:
        s["embeddings.mask_token"] = (1, 1, C)
    if cfg.use_absolute_position_embeddings:
        s["embeddings.position_embeddings"] = (1, cfg.num_patches + 1, C)
    if cfg.use_shared_relative_position_bias:
        s[shared_table_name] = table_shape(cfg)
    for i in range(cfg.num_hidden_layers):
        L = f"encoder.layer.{i}."
        s.update({L + "attention.attention.query.weight": (C, C), L + "attention.attention.query.bias": (C,),
                  L + "attention.attention.key.weight": (C, C),  # the key projection has no bias
                  L + "attention.attention.value.weight": (C, C), L + "attention.attention.value.bias": (C,),
                  L + "attention.output.dense.weight": (C, C), L + "attention.output.dense.bias": (C,),
                  L + "intermediate.dense.weight": (I, C), L + "intermediate.dense.bias": (I,),
                  L + "output.dense.weight": (C, I), L + "output.dense.bias": (C,),
                  L + "layernorm_before.weight": (C,), L + "layernorm_before.bias": (C,),
                  L + "layernorm_after.weight": (C,), L + "layernorm_after.bias": (C,)})
        if cfg.use_relative_position_bias:
            s[L + "attention.attention.relative_position_bias.relative_position_bias_table"] = table_shape(cfg)
        if cfg.layer_scale_init_value > 0:
            s[L + "lambda_1"], s[L + "lambda_2"] = (C,), (C,)
    if not cfg.use_mean_pooling:  # mean pooling makes the final LayerNorm an nn.Identity
        s["layernorm.weight"], s["layernorm.bias"] = (C,), (C,)
    return s


def pooler_shapes(cfg) -> dict:
    """BeitPooler: a LayerNorm for mean pooling; [CLS] pooling has no weights."""
    C = cfg.hidden_size
    return {"pooler.layernorm.weight": (C,), "pooler.layernorm.bias": (C,)} if cfg.use_mean_pooling else {}


def classifier_shapes(cfg) -> dict:
    """`nn.Linear(hidden, num_labels)`, or nothing when num_labels == 0 (transformers uses nn.Identity then)."""
    if cfg.num_labels == 0:
        return {}
    return {"classifier.weight": (cfg.num_labels, cfg.hidden_size), "classifier.bias": (cfg.num_labels,)}


def mim_shapes(cfg) -> dict:
    """BeitForMaskedImageModeling: LayerNorm, then Linear(hidden, vocab_size)."""
    C, V = cfg.hidden_size, cfg.vocab_size
    return {"layernorm.weight": (C,), "layernorm.bias": (C,), "lm_head.weight": (V, C), "lm_head.bias": (V,)}


def batch_norm_shapes(name, channels) -> dict:
    s = {f"{name}.{k}": (channels,) for k in ("weight", "bias", "running_mean", "running_var")}
    s[f"{name}.num_batches_tracked"] = ()
    return s


def conv_module_shapes(name, cin, cout, kernel, names: HeadNames) -> dict:
    """BeitConvModule: Conv2d(bias=False) + BatchNorm2d (+ ReLU)."""
    return {f"{name}.{names.conv}.weight": (cout, cin, kernel, kernel), **batch_norm_shapes(f"{name}.{names.bn}", cout)}


def fpn_shapes(cfg) -> dict:
    """fpn1 = ConvTranspose(2, 2) + BatchNorm + GELU + ConvTranspose(2, 2); fpn2 = ConvTranspose(2, 2); fpn4: max-pool."""
    C = cfg.hidden_size
    s = {}
    for name in ("fpn1.0", "fpn1.3", "fpn2.0"):
        s[f"{name}.weight"], s[f"{name}.bias"] = (C, C, 2, 2), (C,)  # ConvTranspose2d weight: (Cin, Cout, kh, kw)
    return {**s, **batch_norm_shapes("fpn1.1", C)}


def segmentation_shapes(cfg) -> dict:
    """FPN, UperNet decode head (4 inputs of hidden_size channels, hidden_size inside) and the FCN auxiliary head."""
    C, K, A = cfg.hidden_size, cfg.num_labels, cfg.auxiliary_channels
    n = HEAD_NAMES[cfg.model_type]
    s = {**fpn_shapes(cfg), "decode_head.classifier.weight": (K, C, 1, 1), "decode_head.classifier.bias": (K,)}
    for i in range(len(cfg.pool_scales)):
        s.update(conv_module_shapes("decode_head." + n.psp.format(i=i), C, C, 1, n))
    s.update(conv_module_shapes(f"decode_head.{n.bottleneck}", C + len(cfg.pool_scales) * C, C, 3, n))
    for i in range(3):
        s.update(conv_module_shapes(f"decode_head.lateral_convs.{i}", C, C, 1, n))
        s.update(conv_module_shapes(f"decode_head.fpn_convs.{i}", C, C, 3, n))
    s.update(conv_module_shapes("decode_head.fpn_bottleneck", 4 * C, C, 3, n))
    if cfg.use_auxiliary_head:
        for j in range(cfg.auxiliary_num_convs):
            s.update(conv_module_shapes(f"auxiliary_head.convs.{j}", C if j == 0 else A, A, 3, n))
        if cfg.auxiliary_concat_input:
            s.update(conv_module_shapes("auxiliary_head.conv_cat", C + A, A, 3, n))
        s["auxiliary_head.classifier.weight"], s["auxiliary_head.classifier.bias"] = (K, A, 1, 1), (K,)
    return s


def backbone_shapes(cfg) -> dict:
    return fpn_shapes(cfg) if cfg.add_fpn else {}


# ----------------------------------------------------------------------------------------------------------------------
# Loading: transformers-5 state-dict names back to checkpoint names, then BatchNorm folding (once, at load)


# transformers 5 renamed BEiT's modules; `save_pretrained` converts back to the classic names, but a
# `torch.save(model.state_dict())` of a 5.x model holds the new ones (conversion_mapping.py, reversed).
RENAMED_IN_TRANSFORMERS_5 = [
    (r"(^|\.)layers\.(\d+)\.relative_position_bias\.", r"\1encoder.layer.\2.attention.attention.relative_position_bias."),
    (r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2."),
    (r"(^|\.)shared_position_bias\.", r"\1encoder.relative_position_bias."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
    (r"^fpn\.fpn1\.conv_transpose1\.", "fpn1.0."),
    (r"^fpn\.fpn1\.normalization\.", "fpn1.1."),
    (r"^fpn\.fpn1\.conv_transpose2\.", "fpn1.3."),
    (r"^fpn\.fpn2\.", "fpn2.0."),
    (r"^decode_head\.psp_bottleneck\.", "decode_head.bottleneck."),
    (r"^decode_head\.psp_modules\.blocks\.(\d+)\.conv\.", r"decode_head.psp_modules.\1.1."),
    (r"^((?:decode|auxiliary)_head\..+)\.convolution\.", r"\1.conv."),
    (r"^((?:decode|auxiliary)_head\..+)\.normalization\.", r"\1.bn."),
]


def classic_names(tensors: dict) -> dict:
    """Rename transformers-5 internal module names (`beit.layers.3.attention.q_proj`) to checkpoint names."""
    return rename_modules(tensors, RENAMED_IN_TRANSFORMERS_5)


def fold_batch_norm(weight, bias, bn: dict, axis: int, eps: float = BN_EPS):
    """BatchNorm2d in eval mode after a convolution, folded into it (in float64):

        BN(conv(x)) = (conv(x) − μ) · s + β,   s = γ / √(σ² + ε)      =  conv_{W·s}(x) + (b − μ) · s + β

    `axis` is the weight's output-channel axis (0 for Conv2d, 1 for ConvTranspose2d); bias may be None.
    Returns (W·s, (b − μ)·s + β).
    """
    f64 = {k: np.asarray(bn[k], dtype=np.float64) for k in ("weight", "bias", "running_mean", "running_var")}
    s = f64["weight"] / np.sqrt(f64["running_var"] + eps)                          # (Cout,)
    shape = [1] * weight.ndim
    shape[axis] = -1
    b = np.zeros_like(s) if bias is None else np.asarray(bias, dtype=np.float64)
    return np.asarray(weight, dtype=np.float64) * s.reshape(shape), (b - f64["running_mean"]) * s + f64["bias"]


def _identity_batch_norm(channels: int) -> dict:
    """A BatchNorm (eval) that changes nothing: γ = 1, β = 0, μ = 0, σ² = 1 − ε."""
    return {"weight": np.ones(channels), "bias": np.zeros(channels), "running_mean": np.zeros(channels),
            "running_var": np.full(channels, 1 - BN_EPS)}


def fold_batch_norms(tensors: dict, names: HeadNames) -> dict:
    """Fold every BatchNorm of the segmentation head / FPN into its convolution, keeping the checkpoint's names.

    Conv modules (`….{conv}.weight` + `….{bn}.*`, conv without bias): the conv weight becomes W·s and the folded
    shift is kept as the BatchNorm's bias, its other statistics set to the identity — so the params still describe
    the same module, and the forward runs `conv2d(x, W·s, bias=bn.bias)`. fpn1: ConvTranspose2d (`fpn1.0`) + BN
    (`fpn1.1`): both folded into fpn1.0, fpn1.1 becomes an identity BatchNorm the forward skips.
    A tensor whose shape does not fit is left alone (the strict mapping reports it afterwards).
    """
    out = dict(tensors)
    stats = ("weight", "bias", "running_mean", "running_var")
    for name in tensors:
        if not name.endswith(".running_var"):
            continue
        bn_name = name[: -len(".running_var")]
        bn = {k: tensors.get(f"{bn_name}.{k}") for k in stats}
        if bn_name == "fpn1.1":
            conv_name, axis, bias = "fpn1.0", 1, tensors.get("fpn1.0.bias")
        elif bn_name.endswith("." + names.bn):
            conv_name, axis, bias = bn_name[: -len(names.bn)] + names.conv, 0, None
        else:
            continue
        weight = tensors.get(f"{conv_name}.weight")
        cout = None if weight is None or weight.ndim != 4 else weight.shape[axis]
        if cout is None or any(v is None or v.shape != (cout,) for v in bn.values()) or \
                (bias is not None and bias.shape != (cout,)):
            continue
        w, b = fold_batch_norm(weight, bias, bn, axis)
        out[f"{conv_name}.weight"] = w
        new_bn = _identity_batch_norm(cout)
        if bn_name == "fpn1.1":
            out["fpn1.0.bias"] = b
        else:
            new_bn["bias"] = b  # the folded shift, applied as the conv's bias
        out.update({f"{bn_name}.{k}": v for k, v in new_bn.items()})
    return out


def prepare_tensors(family: str, backbone: bool = False):
    """Architecture.prepare for a BEiT / data2vec-vision class: checkpoint names, then the BatchNorm folding."""
    def prepare(tensors: dict) -> dict:
        t = classic_names(tensors) if family == "beit" else dict(tensors)
        if backbone and any(k.startswith(("embeddings.", "fpn1.", "fpn2.")) for k in t):
            # quirk: BeitBackbone.save_pretrained writes its base at the top level (`embeddings.*`,
            # `encoder.layer.*`) but the shared table as `beit.encoder.relative_position_bias.…`; the classic
            # (transformers 4) name has no prefix. Both load, as in transformers.
            t = {k[len("beit."):] if k.startswith("beit.") else k: v for k, v in t.items()}
        return fold_batch_norms(t, HEAD_NAMES[family])
    return prepare


# ----------------------------------------------------------------------------------------------------------------------
# Embeddings and the relative position bias


def embeddings(p, pixel_values, cfg, bool_masked_pos, K):
    """BeitEmbeddings: patches (+ mask tokens), [CLS] in front, then (optionally) absolute position embeddings.

    Quirk reproduced: the position embeddings go through `interpolate_pos_encoding` on *every* call, whatever the
    flag: inputs of another size get resized (bicubic) embeddings without it, and so does a non-square input of the
    configured size (same patch count, but height != width), as in ViT's interpolation.
    """
    B, _, height, width = pixel_values.shape
    x, _ = patch_embeddings(p["patch_embeddings"], pixel_values, cfg)                 # (B, N, C)
    if bool_masked_pos is not None:
        x = mask_patches(x, p["mask_token"], bool_masked_pos)                          # x·(1 − m) + t·m
    cls = np.broadcast_to(p["cls_token"], (B, 1, cfg.hidden_size))
    x = np.concatenate([cls, x], axis=1)                                              # (B, 1 + N, C)
    if "position_embeddings" in p:
        x = x + interpolate_position_embeddings(p["position_embeddings"], 1, cfg, height, width, K)
    return x


@lru_cache(maxsize=16)
def relative_position_index(index_kernel, window: tuple) -> np.ndarray:
    """The (N+1, N+1) index of a window, cached like transformers' `lru_cache` on generate_relative_position_index."""
    return index_kernel(*window)


def resize_relative_table(table, cfg, window, K):
    """BeitRelativePositionBias.forward, first half: the grid part of the table bilinearly resized to `window`.

    Quirk reproduced: the (2h−1)(2w−1) grid rows are reshaped as (2w−1, 2h−1) — width first — before resizing to
    (2h'−1, 2w'−1), on every call. For a square window of the configured size this is the identity; for a non-square
    one it rearranges the table even at the configured size. The 3 class-token rows are kept as they are.
    """
    old_h, old_w = 2 * cfg.grid_size[0] - 1, 2 * cfg.grid_size[1] - 1
    new_h, new_w = 2 * window[0] - 1, 2 * window[1] - 1
    H = table.shape[1]
    grid = table[: old_h * old_w].reshape(old_w, old_h, H).transpose(2, 0, 1)          # (H, 2w−1, 2h−1)
    grid = K.interpolate_bilinear(np.ascontiguousarray(grid), new_h, new_w)           # (H, 2h'−1, 2w'−1)
    grid = grid.transpose(1, 2, 0).reshape(new_h * new_w, H)                           # (T' − 3, H)
    return np.concatenate([grid, table[old_h * old_w:]], axis=0)                      # (T', H)


def relative_position_bias(p, cfg, window, interpolate, seq_len, K):
    """BeitRelativePositionBias: table -> (H, N+1, N+1) bias, bias[h, i, j] = table[index[i, j], h].

    With interpolate_pos_encoding the bias is then bilinearly resized to (seq_len, seq_len) — the size it already
    has, so that step copies it (reproduced as transformers writes it).
    """
    table = resize_relative_table(p["relative_position_bias_table"], cfg, window, K)   # (T', H)
    bias = K.relative_position_bias(table, relative_position_index(K.relative_position_index, window))
    if interpolate:
        bias = K.interpolate_bilinear(bias, seq_len, seq_len)                          # (H, N+1, N+1)
    return bias


# ----------------------------------------------------------------------------------------------------------------------
# Encoder


def self_attention(p, x, bias, cfg, K, rec, name, need_probs):
    """BeitSelfAttention: q, k (no bias), v; softmax(q kᵀ · D^-½ + relative bias) v per head (fused kernel)."""
    q = rec(f"{name}.query", linear(x, p["query"], K))                                # (B, N, C)
    k = rec(f"{name}.key", linear(x, p["key"], K))                                    # (B, N, C)
    v = rec(f"{name}.value", linear(x, p["value"], K))                                # (B, N, C)
    context, probs = K.attention(q, k, v, cfg.num_attention_heads, cfg.head_dim ** -0.5, bias=bias,
                                 need_probs=need_probs)
    return rec(name, context), probs                                                  # (B, N, C), (B, H, N, N)


def layer_scale(p, key, h):
    """lambda_1 · h (layer scale), or h when layer_scale_init_value is 0 (transformers multiplies by 1.0)."""
    return p[key] * h if key in p else h


def layer(p, x, bias, cfg, K, rec, name, need_probs):
    """BeitLayer: pre-norm attention and MLP blocks, each scaled per channel (layer scale) and added to its residual."""
    h = rec(f"{name}.layernorm_before", layer_norm(x, p["layernorm_before"], cfg.layer_norm_eps, K))
    h, probs = self_attention(p["attention"]["attention"], h, bias, cfg, K, rec, f"{name}.attention.attention",
                              need_probs)
    h = rec(f"{name}.attention.output", linear(h, p["attention"]["output"]["dense"], K))
    x = layer_scale(p, "lambda_1", h) + x
    h = rec(f"{name}.layernorm_after", layer_norm(x, p["layernorm_after"], cfg.layer_norm_eps, K))
    h = rec(f"{name}.intermediate", linear_act(h, p["intermediate"]["dense"], cfg.hidden_act, K))  # (B, N, I)
    h = rec(f"{name}.output", linear(h, p["output"]["dense"], K))                    # BeitOutput: no residual
    return rec(name, layer_scale(p, "lambda_2", h) + x), probs


def pooler(p, x, cfg, K):
    """BeitPooler: LayerNorm of the mean patch token (use_mean_pooling), else the [CLS] token."""
    if cfg.use_mean_pooling:
        return layer_norm(x[:, 1:].mean(axis=1), p["layernorm"], cfg.layer_norm_eps, K)
    return x[:, 0]


def base_forward(p, pixel_values, cfg, K, rec, prefix, mask, opts, with_pooler):
    """BeitModel.forward: embeddings, layers with their relative position biases, final LayerNorm, pooler.

    hidden_states[0] is the embedding output, hidden_states[i] the output of layer i-1 (before the final LayerNorm).
    The shared bias (if any) is added to each layer's own bias (if any) before the scores (5.x sums them first).
    """
    _, _, height, width = pixel_values.shape
    window = (height // cfg.patch_size[0], width // cfg.patch_size[1])               # (h, w) patches of this input
    x = rec(f"{prefix}embeddings", embeddings(p["embeddings"], pixel_values, cfg, mask, K))
    interpolate, seq_len = opts.interpolate_pos_encoding, x.shape[1]
    shared = None
    if cfg.use_shared_relative_position_bias:
        shared = relative_position_bias(p["encoder"]["relative_position_bias"], cfg, window, interpolate, seq_len, K)
        rec(f"{prefix}encoder.relative_position_bias", shared[None])                  # (1, H, N, N)
    hidden_states, attentions = [x], []
    for i, lp in enumerate(p["encoder"]["layer"]):
        name, bias = f"{prefix}encoder.layer.{i}", shared
        if cfg.use_relative_position_bias:
            own = relative_position_bias(lp["attention"]["attention"]["relative_position_bias"], cfg, window,
                                         interpolate, seq_len, K)
            rec(f"{name}.attention.attention.relative_position_bias", own[None])       # (1, H, N, N)
            bias = own if shared is None else shared + own
        x, probs = layer(lp, x, bias, cfg, K, rec, name, opts.output_attentions)
        hidden_states.append(x)
        attentions.append(probs)
    if not cfg.use_mean_pooling:                                                      # else nn.Identity
        x = layer_norm(x, p["layernorm"], cfg.layer_norm_eps, K)
    x = rec(f"{prefix}layernorm", x)
    pooled = rec(f"{prefix}pooler", pooler(p.get("pooler"), x, cfg, K)) if with_pooler else None
    return {"last_hidden_state": x, "pooler_output": pooled, "hidden_states": tuple(hidden_states),
            "attentions": tuple(attentions) if opts.output_attentions else None}


# ----------------------------------------------------------------------------------------------------------------------
# Convolutional pieces of the segmentation head and the FPN (NCHW)


def at(p, path: str):
    """The params node at a dotted checkpoint path relative to p ("psp_modules.0.1")."""
    for part in path.split("."):
        p = p[int(part)] if part.isdigit() else p[part]
    return p


def conv_module(p, x, names: HeadNames, K, padding=0):
    """BeitConvModule: Conv2d (no bias) -> BatchNorm2d (eval) -> ReLU. The BatchNorm was folded into the conv at load
    (fold_batch_norms): its scale is in the conv weight, its shift is bn.bias, used as the conv's bias."""
    y = K.conv2d(x, p[names.conv]["weight"], p[names.bn]["bias"], padding=(padding,) * 4)
    return np.maximum(y, 0, out=y)                                                    # ReLU


def classifier_conv(p, x, K):
    """nn.Conv2d(channels, num_labels, kernel_size=1) with bias."""
    return K.conv2d(x, p["weight"], p["bias"])


def resize_to(x, size, K):
    """F.interpolate(x, size, mode="bilinear", align_corners=False) (a same-size resize copies)."""
    return K.interpolate_bilinear(x, size[0], size[1])


def fpn(p, features, K, rec):
    """BeitFPNNeck (classic fpn1 … fpn4): ×4 (ConvT, BN, GELU, ConvT), ×2 (ConvT), identity, ½ (2×2 max-pool)."""
    # fpn1.0 (ConvTranspose2d) with the BatchNorm fpn1.1 folded into it at load: its output is fpn1.1's
    f1 = rec("fpn1.1", K.conv_transpose2d(features[0], p["fpn1"][0]["weight"], p["fpn1"][0]["bias"], (2, 2)))
    f1 = rec("fpn1.2", K.gelu(f1))                                                    # nn.GELU(): erf form
    f1 = rec("fpn1", K.conv_transpose2d(f1, p["fpn1"][3]["weight"], p["fpn1"][3]["bias"], (2, 2)))  # (B, C, 4h, 4w)
    f2 = rec("fpn2", K.conv_transpose2d(features[1], p["fpn2"][0]["weight"], p["fpn2"][0]["bias"], (2, 2)))
    f4 = rec("fpn4", K.max_pool2d(features[3], (2, 2), (2, 2)))                      # (B, C, h//2, w//2)
    return (f1, f2, features[2], f4)


def pyramid_pooling(p, x, cfg, names, K, rec):
    """BeitPyramidPoolingModule + bottleneck: adaptive average pools to each scale, conv module, bilinear back to
    x's size, concatenated with x, then a 3×3 conv module (PSPNet, Zhao et al. 2017)."""
    outs = [x]
    for i, scale in enumerate(cfg.pool_scales):
        path = names.psp.format(i=i)
        y = rec(f"decode_head.{path}", conv_module(at(p, path), K.adaptive_avg_pool2d(x, scale, scale), names, K))
        outs.append(resize_to(y, x.shape[2:], K))                                     # (B, C, h, w)
    return rec(f"decode_head.{names.bottleneck}",
               conv_module(p[names.bottleneck], np.concatenate(outs, axis=1), names, K, padding=1))


def uper_head(p, features, cfg, names, K, rec):
    """BeitUperHead (UperNet): lateral 1×1 convs + pyramid pooling on the last map, top-down sums, 3×3 convs,
    everything resized to the first map's size, concatenated, fused by a 3×3 conv, classified by a 1×1 conv."""
    laterals = [rec(f"decode_head.lateral_convs.{i}", conv_module(lp, f, names, K))
                for i, (lp, f) in enumerate(zip(p["lateral_convs"], features))]
    laterals.append(pyramid_pooling(p, features[-1], cfg, names, K, rec))
    for i in range(len(laterals) - 1, 0, -1):                                         # top-down path
        laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1].shape[2:], K)
    outs = [rec(f"decode_head.fpn_convs.{i}", conv_module(cp, laterals[i], names, K, padding=1))
            for i, cp in enumerate(p["fpn_convs"])] + [laterals[-1]]
    outs = [outs[0]] + [resize_to(o, outs[0].shape[2:], K) for o in outs[1:]]         # all at (4h, 4w)
    x = rec("decode_head.fpn_bottleneck",
            conv_module(p["fpn_bottleneck"], np.concatenate(outs, axis=1), names, K, padding=1))
    return rec("decode_head", rec("decode_head.classifier", classifier_conv(p["classifier"], x, K)))


def fcn_head(p, features, cfg, names, K, rec):
    """BeitFCNHead on features[2] (in_index 2): 3×3 conv modules, optionally concatenated with its input, 1×1 conv."""
    residual = h = features[2]
    for j, cp in enumerate(p.get("convs", [])):
        h = rec(f"auxiliary_head.convs.{j}", conv_module(cp, h, names, K, padding=1))
    if cfg.auxiliary_concat_input:
        h = rec("auxiliary_head.conv_cat",
                conv_module(p["conv_cat"], np.concatenate([residual, h], axis=1), names, K, padding=1))
    return rec("auxiliary_head", rec("auxiliary_head.classifier", classifier_conv(p["classifier"], h, K)))


def to_grid(tokens, grid):
    """(B, 1 + N, C) tokens -> (B, C, h, w) feature map without the [CLS] token (`[:, 1:].transpose(1, 2).reshape`)."""
    return np.ascontiguousarray(tokens[:, 1:].transpose(0, 2, 1)).reshape(tokens.shape[0], -1, *grid)


# ----------------------------------------------------------------------------------------------------------------------
# Heads


def image_classification(p, base, cfg, K, rec, grid):
    """BeitForImageClassification: classifier on the pooled output (identity when num_labels == 0)."""
    pooled = base["pooler_output"]
    return {"logits": rec("classifier", linear(pooled, p["classifier"]) if cfg.num_labels > 0 else pooled)}


def masked_image_modeling(p, base, cfg, K, rec, grid):
    """BeitForMaskedImageModeling: LayerNorm, then logits over the visual-token vocabulary for every patch token."""
    x = rec("layernorm", layer_norm(base["last_hidden_state"], p["layernorm"], cfg.layer_norm_eps, K))
    return {"logits": rec("lm_head", linear(x[:, 1:], p["lm_head"]))}                # (B, N, vocab_size)


def segmentation_features(hidden_states, cfg, grid):
    """The 4 maps the FPN takes. BEiT: hidden_states[i - 1] for i in out_indices, reshaped to the input's grid.
    data2vec-vision: hidden_states[idx] for idx + 1 in out_indices, in hidden-state order, reshaped to the
    *configured* grid (image_size // patch_size squared), which the input's token count must match."""
    if cfg.model_type == "beit":
        return tuple(to_grid(hidden_states[i - 1], grid) for i in cfg.out_indices)    # quirk: 1-based, i=0 -> [-1]
    side = cfg.grid_size
    if hidden_states[0].shape[1] - 1 != side[0] * side[1]:
        raise InputError(f"pixel_values: data2vec-vision segmentation reshapes the {hidden_states[0].shape[1] - 1} "
                         f"patch tokens to its configured {side[0]}x{side[1]} grid; use an input of "
                         f"{cfg.image_size[0]}x{cfg.image_size[1]} pixels (transformers fails otherwise)")
    return tuple(to_grid(h, side) for idx, h in enumerate(hidden_states) if idx + 1 in cfg.out_indices)


def semantic_segmentation(p, base, cfg, K, rec, grid):
    """BeitForSemanticSegmentation: 4 encoder maps -> FPN -> UperNet logits (B, num_labels, 4h, 4w), and the FCN
    auxiliary logits (B, num_labels, h, w), which transformers computes for its loss but does not return."""
    names = HEAD_NAMES[cfg.model_type]
    features = fpn(p, segmentation_features(base["hidden_states"], cfg, grid), K, rec)
    logits = uper_head(p["decode_head"], features, cfg, names, K, rec)
    aux = fcn_head(p["auxiliary_head"], features, cfg, names, K, rec) if cfg.use_auxiliary_head else None
    return {"logits": logits, "auxiliary_logits": aux}


def backbone(p, base, cfg, K, rec, grid):
    """BeitBackbone: the hidden states of out_features (stage i = hidden_states[i]), as (B, C, h, w) maps without
    [CLS] (reshape_hidden_states) or as they are, then the FPN if add_fpn."""
    maps = tuple(to_grid(h, grid) if cfg.reshape_hidden_states else h
                 for stage, h in zip(cfg.stage_names, base["hidden_states"]) if stage in cfg.out_features)
    return {"feature_maps": fpn(p, maps, K, rec) if cfg.add_fpn else maps}


# ----------------------------------------------------------------------------------------------------------------------
# Architectures: the transformers classes this file runs


def model_forward(head, name: str, family: str, pooler_rule: str):
    """The forward of one class: input checks, BeitModel.forward, then the head (None: the base model itself).

    pooler_rule: "always" (classification), "never" (add_pooling_layer=False: MIM, segmentation, backbone and
    Data2VecVisionModel's default), "default" (BeitModel: its [CLS] pooler needs no weights; mean pooling runs when
    the checkpoint has the pooler's LayerNorm, as ViTModel's pooler).
    """
    prefix = PREFIX[family]

    def forward(p, pixel_values, cfg, K, rec, opts):
        B, _, height, width = pixel_values.shape
        if height < cfg.patch_size[0] or width < cfg.patch_size[1]:
            raise InputError(f"pixel_values: image {height}x{width} is smaller than one patch {cfg.patch_size}")
        base_p = p[prefix[:-1]] if prefix[:-1] in p else p
        grid = (height // cfg.patch_size[0], width // cfg.patch_size[1])
        if family == "data2vec-vision" and head is not None and opts.bool_masked_pos is not None:
            raise InputError(f"bool_masked_pos: {name}.forward does not take it (transformers ignores it silently)")
        mask = check_mask(opts.bool_masked_pos, B, grid[0] * grid[1], "mask_token" in base_p["embeddings"], name)
        with_pooler = {"always": True, "never": False,
                       "default": not cfg.use_mean_pooling or "pooler" in base_p}[pooler_rule]
        rec_prefix = "" if head is None else prefix
        base = base_forward(base_p, pixel_values, cfg, K, rec, rec_prefix, mask, opts, with_pooler)
        hidden = base["hidden_states"] if opts.output_hidden_states else None
        if head is None:
            return {**base, "hidden_states": hidden}
        return {**head(p, base, cfg, K, rec, grid), "hidden_states": hidden, "attentions": base["attentions"]}
    return forward


def architecture(name, family, head, head_shapes, output, pooler_rule, kind=""):
    """One BEiT / data2vec-vision class: base tensors (under `beit.` / `data2vec_vision.` for heads), then its head's."""
    prefix = "" if head is None or kind == "backbone" else PREFIX[family]

    def parse(raw: dict, source: str = "config.json"):
        return beit_config_from_dict(raw, source, family, kind)

    def shapes(cfg):
        s = base_shapes(cfg)
        if head is image_classification:
            s.update(pooler_shapes(cfg))
        return {**{prefix + k: v for k, v in s.items()}, **head_shapes(cfg)}

    def optional_groups(cfg):  # base models and the backbone accept a pooler's LayerNorm (BeitModel runs it)
        return [pooler_shapes(cfg)] if head is None or kind == "backbone" else []

    return Architecture(name=name, family=family, is_base=head is None or kind == "backbone",
                        base_prefix=PREFIX[family], parse_config=parse, shapes=shapes,
                        forward=model_forward(head, name, family, pooler_rule), output=output,
                        optional_groups=optional_groups, prepare=prepare_tensors(family, kind == "backbone"),
                        default_groups=(0,) if head is None and family == "beit" else ())


def no_head_shapes(cfg):
    return {}


ARCHITECTURES = [
    architecture("BeitModel", "beit", None, no_head_shapes, BaseModelOutputWithPooling, "default"),
    architecture("BeitForImageClassification", "beit", image_classification, classifier_shapes, ImageClassifierOutput,
                 "always"),
    architecture("BeitForMaskedImageModeling", "beit", masked_image_modeling, mim_shapes, MaskedLMOutput, "never"),
    architecture("BeitForSemanticSegmentation", "beit", semantic_segmentation, segmentation_shapes,
                 SemanticSegmenterOutput, "never", kind="segmentation"),
    architecture("BeitBackbone", "beit", backbone, backbone_shapes, BackboneOutput, "never", kind="backbone"),
    architecture("Data2VecVisionModel", "data2vec-vision", None, no_head_shapes, BaseModelOutputWithPooling,
                 "never"),  # Data2VecVisionModel(add_pooling_layer=False) by default: pooler weights are ignored
    architecture("Data2VecVisionForImageClassification", "data2vec-vision", image_classification, classifier_shapes,
                 ImageClassifierOutput, "always"),
    architecture("Data2VecVisionForSemanticSegmentation", "data2vec-vision", semantic_segmentation,
                 segmentation_shapes, SemanticSegmenterOutput, "never", kind="segmentation"),
]
BASE_MODELS = {"beit": "BeitModel", "data2vec-vision": "Data2VecVisionModel"}  # model_type -> base class
CLASSIFIERS = {"beit": "BeitForImageClassification", "data2vec-vision": "Data2VecVisionForImageClassification"}
