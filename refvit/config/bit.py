"""BiT config (transformers/models/bit/configuration_bit.py, 5.23). What the network's shape makes impossible
(GroupNorm widths, width_factor) is checked in refvit/models/bit.py, where that shape is."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .base import (PretrainedConfig, architectures_and_labels, backbone_outputs, check_activation, check_common,
                   check_model_type, check_number, check_type, int_list, parses, positive_ints, raise_problems)


@dataclass(frozen=True, init=False)
class BitConfig(PretrainedConfig):
    """transformers' `BitConfig` (configuration_bit.py); defaults are transformers' (the google/bit-50 shape)."""

    MODEL_TYPE = "bit"
    FIELDS = ("num_channels", "embedding_size", "hidden_sizes", "depths", "layer_type", "hidden_act", "global_padding",
              "num_groups", "drop_path_rate", "embedding_dynamic_padding", "output_stride", "width_factor",
              "out_features", "out_indices")
    WRITES_STAGE_NAMES = True

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
    drop_path_rate: float = 0.0                  # training only (refvit runs inference): kept and written back
    id2label: dict = field(default_factory=dict)  # class index -> label name (num_labels = its length)
    label2id: dict = field(default_factory=dict)
    given: dict = field(default_factory=dict, compare=False, repr=False)  # the dict it was parsed from (to_dict)

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


@parses(BitConfig)
def bit_config_from_dict(raw: dict, source: str = "config.json") -> BitConfig:
    """Parse and validate a BiT config dict; every problem is listed in one ConfigError. (What the network's shape
    makes impossible, GroupNorm widths and width_factor, is checked by refvit/models/bit.py, where that shape is.)"""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    d = BitConfig
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
    values["hidden_act"] = check_activation(raw, "hidden_act", d.hidden_act, problems)
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
    values["drop_path_rate"] = check_number(raw, "drop_path_rate", 0.0, problems, high=1.0)  # training only
    check_model_type(raw, ("bit",), problems)
    archs, id2label, label2id = architectures_and_labels(raw, problems)
    check_common(raw, problems)
    cfg = BitConfig._make(model_type="bit", architectures=tuple(archs), id2label=id2label, label2id=label2id,
                          given=dict(raw), **values)
    feats, idx = backbone_outputs(raw, cfg.stage_names, problems)
    cfg = cfg.replace(out_features=feats, out_indices=idx)
    raise_problems(source, problems)
    return cfg
