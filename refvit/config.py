"""Model configurations: frozen dataclasses parsed from a `config.json` written by `save_pretrained`.

Each field's comment says what it means and which transformers default it mirrors
(`transformers/models/vit/configuration_vit.py`, `.../deit/configuration_deit.py`, transformers 5.23).
Parsing validates every key it reads and reports *all* problems in one `ConfigError`.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

# Activations transformers' ACT2FN offers that refvit implements (see refvit/models/common.py).
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "swish", "tanh", "linear")


class LabelsMixin:
    """What every config has: `num_labels` as transformers derives it (the length of `id2label`), and `to_dict`."""

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class PatchGridMixin(LabelsMixin):
    """Sizes derived from hidden_size/heads and image_size/patch_size (ViT, DeiT, BEiT configs)."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid_size(self) -> tuple:
        """(h, w): patches along height and width at the configured image size."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]


@dataclass(frozen=True)
class ViTConfig(PatchGridMixin):
    """Configuration of ViT and DeiT (both use `ViTConfig`'s fields; DeiT adds a distillation token in code)."""

    model_type: str = "vit"                      # "vit" or "deit"
    architectures: tuple = ()                    # HF class names this checkpoint was saved from
    hidden_size: int = 768                       # C: width of every token
    num_hidden_layers: int = 12                  # number of encoder layers
    num_attention_heads: int = 12                # H: heads per attention layer, D = C // H
    intermediate_size: int = 3072                # width of the MLP's hidden layer
    hidden_act: str = "gelu"                     # MLP activation (transformers ACT2FN name; "gelu" is erf-GELU)
    layer_norm_eps: float = 1e-12                # LayerNorm eps (configuration_vit.py default 1e-12)
    image_size: tuple = (224, 224)               # (height, width) the position embeddings were made for
    patch_size: tuple = (16, 16)                 # (height, width) of one patch = conv kernel = conv stride
    num_channels: int = 3                        # input channels
    qkv_bias: bool = True                        # whether query/key/value projections have a bias
    encoder_stride: int = 16                     # MIM decoder's pixel-shuffle factor
    pooler_output_size: int = 768                # pooler width (None in config.json means hidden_size)
    pooler_act: str = "tanh"                     # pooler activation
    id2label: dict = field(default_factory=dict)  # class index -> label name (num_labels = its length)
    label2id: dict = field(default_factory=dict)  # label name -> class index


def parse_pair(value: Any, key: str, problems: list) -> tuple | None:
    """An int or a 2-sequence of ints -> (height, width), as transformers' `isinstance(x, Iterable)` branch does."""
    if isinstance(value, bool):
        problems.append(f"{key}: expected an int or [height, width], got {value!r}")
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (value[0], value[1])
    problems.append(f"{key}: expected an int or [height, width] of ints, got {value!r}")
    return None


# A written id2label is bounded by config.json's size; num_labels alone is not, and LABEL_i names are built for each.
# ImageNet-21k heads have 21,843 labels: 2**18 is 12x that.
MAX_NUM_LABELS = 2**18


def parse_labels(raw: dict, problems: list) -> tuple[dict, dict]:
    """id2label/label2id as transformers reads them; without id2label, num_labels (default 2) makes LABEL_i names."""
    id2label = raw.get("id2label")
    if id2label is None:
        n = raw.get("num_labels", 2)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            problems.append(f"num_labels: expected a non-negative int, got {n!r}")
            n = 0
        elif n > MAX_NUM_LABELS:
            problems.append(f"num_labels: {n} is more than refvit accepts ({MAX_NUM_LABELS})")
            n = 0
        id2label = {i: f"LABEL_{i}" for i in range(n)}
    elif not isinstance(id2label, dict):
        problems.append(f"id2label: expected an object, got {type(id2label).__name__}")
        id2label = {}
    else:
        parsed = {}
        for k, v in id2label.items():
            try:
                parsed[int(k)] = v
            except (TypeError, ValueError):
                problems.append(f"id2label: key {k!r} is not an integer")
            if not isinstance(v, str):
                problems.append(f"id2label[{k!r}]: expected a string label, got {v!r}")
        if sorted(parsed) != list(range(len(parsed))):
            problems.append(f"id2label: keys must be 0..{len(parsed) - 1}, got {sorted(parsed)[:8]}")
        id2label = dict(sorted(parsed.items()))
    label2id = raw.get("label2id") or {v: k for k, v in id2label.items()}
    if not isinstance(label2id, dict):
        problems.append(f"label2id: expected an object, got {type(label2id).__name__}")
        label2id = {}
    return id2label, label2id


def positive_ints(raw: dict, keys: tuple, defaults, problems: list) -> dict:
    """{key: positive int} for each of `keys` (the default: the attribute of `defaults`), problems listed."""
    values = {k: check_type(raw, k, getattr(defaults, k), int, problems) for k in keys}
    for k in keys:
        if values[k] <= 0:
            problems.append(f"{k}: must be positive, got {values[k]}")
    return values


def architectures_and_labels(raw: dict, problems: list) -> tuple[tuple, dict, dict]:
    """(architectures, id2label, label2id), the keys every config has: the class names the checkpoint was saved
    from, and the labels (parse_labels)."""
    archs = raw.get("architectures") or ()
    if not isinstance(archs, (list, tuple)) or not all(isinstance(a, str) for a in archs):
        problems.append(f"architectures: expected a list of class names, got {archs!r}")
        archs = ()
    id2label, label2id = parse_labels(raw, problems)
    return tuple(archs), id2label, label2id


def check_type(raw: dict, key: str, default: Any, kind: type | tuple, problems: list) -> Any:
    value = raw.get(key, default)
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float, (int, float)))
    if not ok:
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        problems.append(f"{key}: expected {name}, got {value!r}")
        return default
    return value


def int_list(raw: dict, key: str, default: tuple, problems: list, minimum: int = 1, what: str | None = None) -> tuple:
    """A non-empty list of ints >= minimum under `key` (default when absent), else a problem naming the key."""
    value = raw.get(key, list(default))
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)):
        problems.append(f"{key}: expected a non-empty list of {what or f'ints >= {minimum}'}, got {value!r}")
        return tuple(default)
    return tuple(value)


def backbone_outputs(raw: dict, stage_names: tuple, problems: list, legacy_indices: str | None = None) -> tuple:
    """(out_features, out_indices) as BackboneConfigMixin.set_output_features_output_indices checks and aligns them
    (negative indices count from the end; neither given: the last stage). `legacy_indices`: an older name of
    out_indices read when it is absent (BEiT's `segmentation_indices`)."""
    feats, idx = raw.get("out_features"), raw.get("out_indices")
    if idx is None and legacy_indices:
        idx = raw.get(legacy_indices)
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
    return last


def vit_config_from_dict(raw: dict, source: str = "config.json") -> ViTConfig:
    """Parse and validate a ViT/DeiT config dict; every problem is listed in one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    d = ViTConfig()
    ints = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_channels", "encoder_stride")
    values = positive_ints(raw, ints, d, problems)
    values["layer_norm_eps"] = float(check_type(raw, "layer_norm_eps", d.layer_norm_eps, (int, float), problems))
    if not (values["layer_norm_eps"] >= 0 and math.isfinite(values["layer_norm_eps"])):
        problems.append(f"layer_norm_eps: must be a finite non-negative number, got {values['layer_norm_eps']}")
    values["qkv_bias"] = check_type(raw, "qkv_bias", True, bool, problems)
    for k in ("hidden_act", "pooler_act"):
        values[k] = check_type(raw, k, getattr(d, k), str, problems)
        if values[k] not in SUPPORTED_ACTIVATIONS:
            problems.append(f"{k}: activation {values[k]!r} is not supported (supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
    pooler = raw.get("pooler_output_size")
    if pooler is None:
        pooler = values["hidden_size"]  # configuration_vit.py: `pooler_output_size if pooler_output_size else hidden_size`
    elif not isinstance(pooler, int) or isinstance(pooler, bool) or pooler <= 0:
        problems.append(f"pooler_output_size: expected a positive int or null, got {pooler!r}")
        pooler = values["hidden_size"]
    values["pooler_output_size"] = pooler
    image_size = parse_pair(raw.get("image_size", 224), "image_size", problems) or d.image_size
    patch_size = parse_pair(raw.get("patch_size", 16), "patch_size", problems) or d.patch_size
    if min(patch_size) <= 0 or min(image_size) <= 0:
        problems.append(f"image_size {list(image_size)} and patch_size {list(patch_size)} must be positive")
    elif image_size[0] % patch_size[0] or image_size[1] % patch_size[1]:
        problems.append(f"image_size {list(image_size)} is not divisible by patch_size {list(patch_size)}")
    if values["hidden_size"] > 0 and values["num_attention_heads"] > 0 and values["hidden_size"] % values["num_attention_heads"]:
        problems.append(f"num_attention_heads: {values['num_attention_heads']} does not divide hidden_size {values['hidden_size']}")
    model_type = raw.get("model_type", "vit")
    if model_type not in ("vit", "deit"):
        problems.append(f"model_type: expected 'vit' or 'deit' here, got {model_type!r}")
    archs, id2label, label2id = architectures_and_labels(raw, problems)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return ViTConfig(model_type=model_type, architectures=tuple(archs), image_size=image_size, patch_size=patch_size,
                     id2label=id2label, label2id=label2id, **values)


# ----------------------------------------------------------------------------------------------------------------------
# BEiT / data2vec-vision (transformers/models/beit/configuration_beit.py, .../data2vec/configuration_data2vec_vision.py)


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
    values = positive_ints(raw, ints, d, problems)
    values["auxiliary_num_convs"] = check_type(raw, "auxiliary_num_convs", 1, int, problems)
    if values["auxiliary_num_convs"] < 0:
        problems.append(f"auxiliary_num_convs: must be >= 0, got {values['auxiliary_num_convs']}")
    bools = ("use_mask_token", "use_absolute_position_embeddings", "use_relative_position_bias",
             "use_shared_relative_position_bias", "use_mean_pooling", "use_auxiliary_head", "auxiliary_concat_input",
             "add_fpn", "reshape_hidden_states")
    values.update({k: check_type(raw, k, getattr(d, k), bool, problems) for k in bools})
    for k in ("layer_norm_eps", "layer_scale_init_value"):
        values[k] = float(check_type(raw, k, getattr(d, k), (int, float), problems))
        if not (values[k] >= 0 and math.isfinite(values[k])):
            problems.append(f"{k}: must be a finite non-negative number, got {values[k]}")
    values["hidden_act"] = check_type(raw, "hidden_act", d.hidden_act, str, problems)
    if values["hidden_act"] not in SUPPORTED_ACTIVATIONS:
        problems.append(f"hidden_act: activation {values['hidden_act']!r} is not supported "
                        f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
    values["pool_scales"] = int_list(raw, "pool_scales", d.pool_scales, problems)
    if max(values["pool_scales"]) > MAX_POOL_SCALE:
        problems.append(f"pool_scales: {max(values['pool_scales'])} is more than refvit accepts ({MAX_POOL_SCALE})")
    # quirk: transformers keeps patch_size as written and divides pixel sizes by it (`height // config.patch_size`)
    # in the relative position bias, the position-embedding resize, segmentation and the backbone, which fails for a
    # [h, w] list; refvit takes a list as (h, w) everywhere (where transformers runs at all, the result is the same)
    image_size = parse_pair(raw.get("image_size", 224), "image_size", problems) or d.image_size
    patch_size = parse_pair(raw.get("patch_size", 16), "patch_size", problems) or d.patch_size
    if min(patch_size) <= 0 or min(image_size) <= 0:
        problems.append(f"image_size {list(image_size)} and patch_size {list(patch_size)} must be positive")
    elif image_size[0] < patch_size[0] or image_size[1] < patch_size[1]:
        problems.append(f"image_size {list(image_size)} is smaller than one patch {list(patch_size)}")
    C, H = values["hidden_size"], values["num_attention_heads"]
    if C > 0 and H > 0 and C % H:
        problems.append(f"num_attention_heads: {H} does not divide hidden_size {C}")
    check_type(raw, "drop_path_rate", 0.1, (int, float), problems)  # training only: checked, then unused
    model_type = raw.get("model_type", family)
    if model_type != family:
        problems.append(f"model_type: expected {family!r} for this architecture, got {model_type!r}")
    archs, id2label, label2id = architectures_and_labels(raw, problems)
    L = values["num_hidden_layers"]
    if family == "beit" and L > MAX_LAYERS:  # before the per-layer stage names are built: 10**12 would never finish
        problems.append(f"num_hidden_layers: {L} is more than refvit builds ({MAX_LAYERS})")
        L = values["num_hidden_layers"] = 0
    if family == "beit":
        stage_names = ("stem",) + tuple(f"stage{i}" for i in range(1, max(L, 0) + 1))
        values["out_features"], values["out_indices"] = backbone_outputs(raw, stage_names, problems,
                                                                         legacy_indices="segmentation_indices")
        if values["add_fpn"] and len(values["out_indices"]) != 4:  # BeitConfig.__post_init__ raises this
            problems.append(f"add_fpn: needs exactly 4 out_indices, got {list(values['out_indices'])}")
    else:  # Data2VecVisionConfig: a plain list, no backbone alignment, no FPN option
        values["out_indices"] = int_list(raw, "out_indices", (3, 5, 7, 11), problems, minimum=-10 ** 9)
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
# CvT (transformers/models/cvt/configuration_cvt.py)


PROJECTION_METHODS = ("dw_bn", "avg", "linear")  # qkv_projection_method values (see models/cvt.py)


@dataclass(frozen=True)
class CvtConfig(LabelsMixin):
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
    def num_stages(self) -> int:
        return len(self.depth)

    def mlp_width(self, stage: int) -> int:
        return int(self.embed_dim[stage] * self.mlp_ratio[stage])  # CvtIntermediate: nn.Linear(C, int(C * mlp_ratio))


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
    values["num_channels"] = check_type(raw, "num_channels", d.num_channels, int, problems)
    if values["num_channels"] <= 0:
        problems.append(f"num_channels: must be positive, got {values['num_channels']}")
    values["layer_norm_eps"] = float(check_type(raw, "layer_norm_eps", d.layer_norm_eps, (int, float), problems))
    if not problems:
        problems += _stage_problems(values, n)
    model_type = raw.get("model_type", "cvt")
    if model_type != "cvt":
        problems.append(f"model_type: expected 'cvt' here, got {model_type!r}")
    archs, id2label, label2id = architectures_and_labels(raw, problems)
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
# BiT (transformers/models/bit/configuration_bit.py)


BOTTLE_RATIO = 0.25    # BitStage(bottle_ratio=0.25): mid channels = make_div(out_channels · 0.25)


@dataclass(frozen=True)
class BitConfig(LabelsMixin):
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
    def stage_names(self) -> tuple:
        """configuration_bit.py: ["stem", "stage1", …, "stageN"] (the backbone's feature names)."""
        return ("stem",) + tuple(f"stage{i}" for i in range(1, len(self.depths) + 1))

    @property
    def num_features(self) -> int:
        """Channels of the last stage: make_div(hidden_sizes[-1] · width_factor)."""
        return make_div(self.hidden_sizes[-1] * self.width_factor)


def make_div(value, divisor=8):
    """modeling_bit.make_div: round channels to a multiple of 8, never below 8 nor below 90% of `value`."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


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
    values = positive_ints(raw, ints, d, problems)
    values["hidden_sizes"] = int_list(raw, "hidden_sizes", d.hidden_sizes, problems, what="positive ints")
    values["depths"] = int_list(raw, "depths", d.depths, problems, what="positive ints")
    if len(values["hidden_sizes"]) != len(values["depths"]):  # transformers zips them: the shorter one wins silently
        problems.append(f"hidden_sizes {list(values['hidden_sizes'])} and depths {list(values['depths'])} must have "
                        "the same length (one entry per stage)")
    values["layer_type"] = check_type(raw, "layer_type", d.layer_type, str, problems)
    if values["layer_type"] not in ("preactivation", "bottleneck"):
        problems.append(f"layer_type: expected 'preactivation' or 'bottleneck', got {values['layer_type']!r}")
    values["hidden_act"] = check_type(raw, "hidden_act", d.hidden_act, str, problems)
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
    values["embedding_dynamic_padding"] = check_type(raw, "embedding_dynamic_padding", False, bool, problems)
    check_type(raw, "drop_path_rate", 0.0, (int, float), problems)  # training only: checked, then unused
    model_type = raw.get("model_type", "bit")
    if model_type != "bit":
        problems.append(f"model_type: expected 'bit' here, got {model_type!r}")
    archs, id2label, label2id = architectures_and_labels(raw, problems)
    cfg = BitConfig(model_type="bit", architectures=tuple(archs), id2label=id2label, label2id=label2id, **values)
    cfg = _with_backbone_outputs(cfg, raw, problems)
    if not problems:
        problems += _structural_problems(cfg, needs_final_width)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return cfg


def _with_backbone_outputs(cfg, raw, problems):
    feats, idx = backbone_outputs(raw, cfg.stage_names, problems)
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
# Reading config.json


def read_config_json(path: str | os.PathLike) -> dict:
    """Read config.json as a dict, refusing duplicate keys and NaN/Infinity tokens."""
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ConfigError(f"{path}: duplicate key(s) {dup}")
        return dict(pairs)

    def no_constants(token):
        raise ConfigError(f"{path}: invalid JSON number {token}")

    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block open() forever, a device never end
            raise ConfigError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            text = f.read(16 * 1024 * 1024 + 1)
        if len(text) > 16 * 1024 * 1024:
            raise ConfigError(f"{path}: larger than 16 MiB, not a config file")
        raw = json.loads(text.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (a save_pretrained directory has config.json)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise ConfigError(f"{path}: not valid UTF-8 JSON ({e})") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected config.json") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw
