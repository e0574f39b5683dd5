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
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .errors import ConfigError

# Activations transformers' ACT2FN offers that refvit implements (see refvit/models/common.py).
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "swish", "tanh", "linear")


# PreTrainedConfig's own fields (transformers/configuration_utils.py, 5.23), accepted by every config. refvit does not
# use them (they steer training and transformers' output objects); it keeps what it is given and writes it back.
COMMON_DEFAULTS = {"output_hidden_states": False, "output_attentions": False, "return_dict": True, "dtype": None,
                   "chunk_size_feed_forward": 0, "is_encoder_decoder": False, "problem_type": None}
# also accepted: keys transformers reads and then drops or renames (never written back by refvit)
COMMON_READ_ONLY = ("num_labels", "torch_dtype", "name_or_path", "_name_or_path", "_commit_hash", "transformers_version",
                    "attn_implementation")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


class PretrainedConfig:
    """What every public config shares: keyword construction with transformers' field names and defaults (validated,
    every problem in one ConfigError), `num_labels`, `to_dict` / `to_json_file` / `save_pretrained` /
    `from_pretrained`.

    Differences from transformers, on purpose: an unknown keyword is an error naming it (transformers stores it as an
    attribute, silently: a typo like `hiden_size=384` builds the default width); refvit validates every value when the
    config is made, not when the model is built. A config.json read from disk may hold keys refvit does not know
    (older transformers versions wrote some): they are kept and written back, as transformers does.
    Attributes are refvit's parsed view: `image_size` / `patch_size` read as (height, width) tuples and lists as
    tuples; `to_dict()` gives them back as transformers stores them.
    """

    MODEL_TYPE = ""                 # transformers' `model_type` of this class
    FIELDS: tuple = ()              # transformers' own field names of this class, in its order (to_dict, keywords)
    GIVEN_FORM: dict = {}           # fields written back as given (an int image_size stays an int) -> transformers'
                                    # default when not given
    WRITES_STAGE_NAMES = False      # BackboneConfigMixin configs also write `stage_names`

    def __init__(self, **kwargs):
        name = type(self).__name__
        known = set(self.FIELDS) | set(self.DROPPED_KEYS) | set(COMMON_DEFAULTS) | set(COMMON_READ_ONLY) | {
            "architectures", "id2label", "label2id", "model_type"}
        unknown = sorted(set(kwargs) - known)
        problems = [f"unknown field(s) {unknown} (transformers would store them silently; {name}'s fields are "
                    f"{', '.join(self.FIELDS)})"] if unknown else []
        if kwargs.get("model_type", self.MODEL_TYPE) != self.MODEL_TYPE:
            problems.append(f"model_type: {name} is {self.MODEL_TYPE!r}, got {kwargs['model_type']!r}")
        try:
            built = self.from_dict({k: v for k, v in kwargs.items() if k in known} | {"model_type": self.MODEL_TYPE},
                                   source=name)
        except ConfigError as err:  # the values' problems, reported together with the unknown names
            raise_problems(name, problems + [str(err).removeprefix(f"{name}: ")])
        raise_problems(name, problems)
        for f in fields(built):
            object.__setattr__(self, f.name, getattr(built, f.name))

    @classmethod
    def _make(cls, **values):
        """An instance from already-validated field values (the parsers' way in; no second validation)."""
        obj = object.__new__(cls)
        for f in fields(cls):
            value = values[f.name] if f.name in values else (f.default_factory() if f.default is MISSING
                                                             else f.default)
            object.__setattr__(obj, f.name, value)
        return obj

    def replace(self, cls=None, **changes):
        """A copy with `changes` (already-validated values), optionally as another config class of the family."""
        return (cls or type(self))._make(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    def __getattr__(self, name):
        """PreTrainedConfig's common fields (`return_dict`, `problem_type`, …): as given, else transformers' default."""
        if name in COMMON_DEFAULTS and "given" in self.__dict__:
            return self.given.get(name, COMMON_DEFAULTS[name])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json"):
        """Parse and validate a config dict as config.json holds it; every problem in one ConfigError."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        model_type = raw.get("model_type", cls.MODEL_TYPE)
        if cls.MODEL_TYPE and model_type != cls.MODEL_TYPE:
            raise ConfigError(f"{source}: holds a {model_type!r} config, not {cls.__name__}'s {cls.MODEL_TYPE!r}")
        return _PARSERS[cls.MODEL_TYPE]({**raw, "model_type": model_type}, source)

    @classmethod
    def from_pretrained(cls, path, revision: str | None = None):
        """Read `config.json` from a save_pretrained directory (or the file itself, or a hub id)."""
        from . import hub
        path = hub.resolve_model_dir(path, revision=revision)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else os.fspath(path)
        return cls.from_dict(read_config_json(file), source=file)

    def to_dict(self) -> dict:
        """The config as transformers' `to_dict` has it (JSON types): model_type, architectures, this class's
        fields, the labels, and the common fields and unknown keys it was given."""
        out = {"model_type": self.model_type}
        if self.architectures:
            out["architectures"] = list(self.architectures)
        for name in self.FIELDS:
            value = self.given.get(name, self.GIVEN_FORM[name]) if name in self.GIVEN_FORM else getattr(self, name)
            out[name] = _json_value(value)
        if self.WRITES_STAGE_NAMES:
            out["stage_names"] = list(self.stage_names)
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = dict(self.label2id)
        if "torch_dtype" in self.given and self.given.get("dtype") is None:
            out["dtype"] = self.given["torch_dtype"]      # transformers reads the legacy key into `dtype`
        for k, v in self.given.items():
            if k not in out and k not in COMMON_READ_ONLY and k not in self.DROPPED_KEYS:
                out[k] = v                                 # common fields and unknown keys, as given
        return out

    DROPPED_KEYS: tuple = ()         # legacy keys transformers reads into a field and does not keep

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path, use_diff: bool = True) -> None:
        """Write config.json (every field; `use_diff` is accepted for transformers' signature and ignored),
        atomically: a temporary file in the same directory, then renamed over `path`."""
        from .checkpoint.write import write_bytes_atomic
        write_bytes_atomic(path, self.to_json_string().encode("utf-8"))

    def save_pretrained(self, save_directory) -> str:
        """Write `config.json` into `save_directory` (created if missing); returns the file's path."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ConfigError(f"{save_directory}: is a file, expected a directory to write config.json into")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, "config.json")
        self.to_json_file(path)
        return path


def _json_value(value):
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


LabelsMixin = PretrainedConfig  # the old name of the shared base


def raise_problems(source: str, problems: list) -> None:
    """Every problem found, in one ConfigError (the one way parsers report)."""
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def check_activation(raw: dict, key: str, default: str, problems: list) -> str:
    """An activation name refvit implements (SUPPORTED_ACTIVATIONS)."""
    value = check_type(raw, key, default, str, problems)
    if value not in SUPPORTED_ACTIVATIONS:
        problems.append(f"{key}: activation {value!r} is not supported (supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
    return value


def check_model_type(raw: dict, allowed: tuple, problems: list) -> str:
    model_type = raw.get("model_type", allowed[0])
    if model_type not in allowed:
        problems.append(f"model_type: expected {' or '.join(map(repr, allowed))} here, got {model_type!r}")
    return model_type


def check_number(raw: dict, key: str, default, problems: list, low: float = 0.0, high: float = math.inf) -> float:
    """A finite number in [low, high] (dropout rates, initializer_range, eps)."""
    value = check_type(raw, key, default, (int, float), problems)
    if not (math.isfinite(value) and low <= value <= high):
        problems.append(f"{key}: must be a finite number in [{low}, {high}], got {value}")
    return value


def check_common(raw: dict, problems: list) -> None:
    """PreTrainedConfig's common fields: the types transformers' @strict checks."""
    for key in ("output_hidden_states", "output_attentions", "return_dict", "is_encoder_decoder"):
        if raw.get(key) is not None and not isinstance(raw[key], bool):
            problems.append(f"{key}: expected a bool, got {raw[key]!r}")
    if raw.get("problem_type") not in PROBLEM_TYPES:
        problems.append(f"problem_type: expected one of {PROBLEM_TYPES}, got {raw['problem_type']!r}")
    if "chunk_size_feed_forward" in raw and not _is_int(raw["chunk_size_feed_forward"]):
        problems.append(f"chunk_size_feed_forward: expected an int, got {raw['chunk_size_feed_forward']!r}")


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
    """Parse and validate a ViT/DeiT config dict; every problem is listed in one ConfigError. The class follows
    model_type (ViTConfig or DeiTConfig)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    d = ViTConfig
    ints = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_channels", "encoder_stride")
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
    model_type = check_model_type(raw, ("vit", "deit"), problems)
    archs, id2label, label2id = architectures_and_labels(raw, problems)
    check_common(raw, problems)
    raise_problems(source, problems)
    cls = DeiTConfig if model_type == "deit" else ViTConfig
    return cls._make(model_type=model_type, architectures=tuple(archs), image_size=image_size, patch_size=patch_size,
                     id2label=id2label, label2id=label2id, given=dict(raw), **values)


# ----------------------------------------------------------------------------------------------------------------------
# BEiT / data2vec-vision (transformers/models/beit/configuration_beit.py, .../data2vec/configuration_data2vec_vision.py)


MAX_LAYERS = 4096  # far beyond any real checkpoint; bounds the work done before the tensors are checked
# UperNet pools the last feature map to scale x scale bins whatever its size (torch's adaptive bins overlap and
# repeat pixels past the map's size), allocating (B, hidden_size, scale, scale) per scale: no weight bounds it.
# Real heads use (1, 2, 3, 6); the pooled map (token grid halved) is 128 wide only for 4096-pixel inputs at
# patch 16. 128 caps each pooled map at 64 KiB per channel and image.
MAX_POOL_SCALE = 128


@dataclass(frozen=True, init=False)
class BeitConfig(PatchGridMixin):
    """transformers' `BeitConfig` (configuration_beit.py); defaults are transformers' (BEiT-B at 224²).
    `Data2VecVisionConfig` has the same fields but no backbone ones (out_features, add_fpn, reshape_hidden_states)."""

    MODEL_TYPE = "beit"
    FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
              "layer_norm_eps", "image_size", "patch_size", "num_channels", "use_mask_token",
              "use_absolute_position_embeddings", "use_relative_position_bias", "use_shared_relative_position_bias",
              "layer_scale_init_value", "drop_path_rate", "use_mean_pooling", "pool_scales", "use_auxiliary_head",
              "auxiliary_loss_weight", "auxiliary_channels", "auxiliary_num_convs", "auxiliary_concat_input",
              "semantic_loss_ignore_index", "add_fpn", "reshape_hidden_states", "out_features", "out_indices")
    GIVEN_FORM = {"image_size": 224, "patch_size": 16}
    WRITES_STAGE_NAMES = True
    DROPPED_KEYS = ("segmentation_indices",)   # read into out_indices (configuration_beit.py __post_init__)

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
    hidden_dropout_prob: float = 0.0             # training only (refvit runs inference): kept and written back
    attention_probs_dropout_prob: float = 0.0    # training only
    drop_path_rate: float = 0.1                  # training only
    auxiliary_loss_weight: float = 0.4           # training only
    semantic_loss_ignore_index: int = 255        # training only
    initializer_range: float = 0.02              # std of the random init (XModel(config, seed=…))
    id2label: dict = field(default_factory=dict)
    label2id: dict = field(default_factory=dict)
    given: dict = field(default_factory=dict, compare=False, repr=False)  # the dict it was parsed from (to_dict)
    # num_labels, head_dim, grid_size (the window the relative position tables were made for), num_patches:
    # PatchGridMixin

    @property
    def stage_names(self) -> tuple:
        return ("stem",) + tuple(f"stage{i}" for i in range(1, self.num_hidden_layers + 1))


@dataclass(frozen=True, init=False)
class Data2VecVisionConfig(BeitConfig):
    """transformers' `Data2VecVisionConfig` (configuration_data2vec_vision.py): BEiT's fields without the backbone
    ones; out_indices is a plain list (default [3, 5, 7, 11]) selecting hidden_states[i - 1] for segmentation."""

    MODEL_TYPE = "data2vec-vision"
    FIELDS = tuple(f for f in BeitConfig.FIELDS if f not in ("add_fpn", "reshape_hidden_states", "out_features",
                                                              "vocab_size"))
    WRITES_STAGE_NAMES = False
    DROPPED_KEYS = ()
    model_type: str = "data2vec-vision"
    out_indices: tuple = (3, 5, 7, 11)
    out_features: tuple = ()


def beit_config_from_dict(raw: dict, source: str = "config.json", family: str = "beit", head: str = "") -> BeitConfig:
    """Parse and validate a BEiT / data2vec-vision config dict; every problem is listed in one ConfigError.

    head: "segmentation" / "backbone" add the checks transformers makes when it builds those classes.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    d = BeitConfig
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
        values[k] = float(check_number(raw, k, getattr(d, k), problems))
    for k in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):  # training only
        values[k] = check_number(raw, k, getattr(d, k), problems, high=1.0)
    values["initializer_range"] = check_number(raw, "initializer_range", d.initializer_range, problems)
    values["auxiliary_loss_weight"] = check_number(raw, "auxiliary_loss_weight", d.auxiliary_loss_weight, problems,
                                                   low=-math.inf)
    values["semantic_loss_ignore_index"] = check_type(raw, "semantic_loss_ignore_index", 255, int, problems)
    values["hidden_act"] = check_activation(raw, "hidden_act", d.hidden_act, problems)
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
    model_type = check_model_type({"model_type": family, **raw}, (family,), problems)
    archs, id2label, label2id = architectures_and_labels(raw, problems)
    check_common(raw, problems)
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
    cls = BeitConfig if family == "beit" else Data2VecVisionConfig
    cfg = cls._make(model_type=family, architectures=tuple(archs), image_size=image_size, patch_size=patch_size,
                    id2label=id2label, label2id=label2id, given=dict(raw), **values)
    if not problems:
        problems += _head_problems(cfg, head)
    raise_problems(source, problems)
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


@dataclass(frozen=True, init=False)
class CvtConfig(PretrainedConfig):
    """transformers' `CvtConfig` (configuration_cvt.py): one entry per stage in every list; defaults are
    microsoft/cvt-13's."""

    MODEL_TYPE = "cvt"
    FIELDS = ("num_channels", "patch_sizes", "patch_stride", "patch_padding", "embed_dim", "num_heads", "depth",
              "mlp_ratio", "attention_drop_rate", "drop_rate", "drop_path_rate", "qkv_bias", "cls_token",
              "qkv_projection_method", "kernel_qkv", "padding_kv", "stride_kv", "padding_q", "stride_q",
              "initializer_range", "layer_norm_eps")

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
    attention_drop_rate: tuple = (0.0, 0.0, 0.0)  # training only (refvit runs inference): kept and written back
    drop_rate: tuple = (0.0, 0.0, 0.0)           # training only
    drop_path_rate: tuple = (0.0, 0.0, 0.1)      # training only
    initializer_range: float = 0.02              # std of the random init (XModel(config, seed=…))
    id2label: dict = field(default_factory=dict)  # class index -> label name (num_labels = its length)
    label2id: dict = field(default_factory=dict)  # label name -> class index
    given: dict = field(default_factory=dict, compare=False, repr=False)  # the dict it was parsed from (to_dict)

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
    d = CvtConfig
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
        nums = _stage_list(raw, key, getattr(d, key), n, _is_number, "finite non-negative numbers", problems)
        values[key] = tuple(float(v) for v in nums) if key == "mlp_ratio" else nums
    values["qkv_projection_method"] = _stage_list(raw, "qkv_projection_method", d.qkv_projection_method, n,
                                                  lambda v: v in PROJECTION_METHODS, f"one of {PROJECTION_METHODS}",
                                                  problems)
    values["num_channels"] = check_type(raw, "num_channels", d.num_channels, int, problems)
    if values["num_channels"] <= 0:
        problems.append(f"num_channels: must be positive, got {values['num_channels']}")
    values["layer_norm_eps"] = float(check_number(raw, "layer_norm_eps", d.layer_norm_eps, problems))
    values["initializer_range"] = check_number(raw, "initializer_range", d.initializer_range, problems)
    if not problems:
        problems += _stage_problems(values, n)
    model_type = check_model_type(raw, ("cvt",), problems)
    archs, id2label, label2id = architectures_and_labels(raw, problems)
    check_common(raw, problems)
    raise_problems(source, problems)
    return CvtConfig._make(model_type=model_type, architectures=tuple(archs), id2label=id2label, label2id=label2id,
                           given=dict(raw), **values)


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


# model_type -> the parser of its config class (PretrainedConfig.from_dict)
_PARSERS = {"vit": vit_config_from_dict, "deit": vit_config_from_dict,
            "beit": lambda raw, source: beit_config_from_dict(raw, source, "beit"),
            "data2vec-vision": lambda raw, source: beit_config_from_dict(raw, source, "data2vec-vision"),
            "cvt": cvt_config_from_dict, "bit": bit_config_from_dict}

# model_type -> its public config class (the model classes' `config_class`)
CONFIG_CLASSES = {"vit": ViTConfig, "deit": DeiTConfig, "beit": BeitConfig, "data2vec-vision": Data2VecVisionConfig,
                  "cvt": CvtConfig, "bit": BitConfig}
