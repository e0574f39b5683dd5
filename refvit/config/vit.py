"""ViT and DeiT configs (transformers/models/vit/configuration_vit.py, .../deit/configuration_deit.py, 5.23)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .base import (PatchGridMixin, architectures_and_labels, check_activation, check_common, check_model_type,
                   check_number, check_type, parse_pair, parses, positive_ints, raise_problems)


@dataclass(frozen=True, init=False)
class ViTConfig(PatchGridMixin):
    """transformers' `ViTConfig` (configuration_vit.py): `ViTConfig(hidden_size=384, …)`, defaults ViT-B/16 at 224²."""

    MODEL_TYPE = "vit"
    FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
              "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps",
              "image_size", "patch_size", "num_channels", "qkv_bias", "encoder_stride", "pooler_output_size",
              "pooler_act")
    GIVEN_FORM = {"image_size": 224, "patch_size": 16}

    model_type: str = "vit"                      # "vit" or "deit"
    architectures: tuple = ()                    # HF class names this checkpoint was saved from
    hidden_size: int = 768                       # C: width of every token
    num_hidden_layers: int = 12                  # number of encoder layers
    num_attention_heads: int = 12                # H: heads per attention layer, D = C // H
    intermediate_size: int = 3072                # width of the MLP's hidden layer
    hidden_act: str = "gelu"                     # MLP activation (transformers ACT2FN name; "gelu" is erf-GELU)
    hidden_dropout_prob: float = 0.0             # training only (refvit runs inference): kept and written back
    attention_probs_dropout_prob: float = 0.0    # training only
    initializer_range: float = 0.02              # std of the random init (XModel(config, seed=…))
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
    given: dict = field(default_factory=dict, compare=False, repr=False)  # the dict it was parsed from (to_dict)


@dataclass(frozen=True, init=False)
class DeiTConfig(ViTConfig):
    """transformers' `DeiTConfig` (configuration_deit.py): ViTConfig's fields and defaults, model_type "deit"."""

    MODEL_TYPE = "deit"
    model_type: str = "deit"


@parses(ViTConfig, DeiTConfig)
def vit_config_from_dict(raw: dict, source: str = "config.json") -> ViTConfig:
    """Parse and validate a ViT/DeiT config dict; every problem is listed in one ConfigError. The class follows
    model_type (ViTConfig or DeiTConfig)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    d = ViTConfig
    ints = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_channels",
            "encoder_stride")
    values = positive_ints(raw, ints, d, problems)
    values["layer_norm_eps"] = float(check_number(raw, "layer_norm_eps", d.layer_norm_eps, problems))
    for k in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        values[k] = check_number(raw, k, getattr(d, k), problems, high=1.0)
    values["initializer_range"] = check_number(raw, "initializer_range", d.initializer_range, problems)
    values["qkv_bias"] = check_type(raw, "qkv_bias", True, bool, problems)
    for k in ("hidden_act", "pooler_act"):
        values[k] = check_activation(raw, k, getattr(d, k), problems)
    pooler = raw.get("pooler_output_size")
    if not pooler:
        # configuration_vit.py: `pooler_output_size if pooler_output_size else hidden_size`
        pooler = values["hidden_size"]
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
    width, heads = values["hidden_size"], values["num_attention_heads"]
    if width > 0 and heads > 0 and width % heads:
        problems.append(f"num_attention_heads: {heads} does not divide hidden_size {width}")
    model_type = check_model_type(raw, ("vit", "deit"), problems)
    archs, id2label, label2id = architectures_and_labels(raw, problems)
    check_common(raw, problems)
    raise_problems(source, problems)
    cls = DeiTConfig if model_type == "deit" else ViTConfig
    return cls._make(model_type=model_type, architectures=tuple(archs), image_size=image_size, patch_size=patch_size,
                     id2label=id2label, label2id=label2id, given=dict(raw), **values)
