"""What every config shares: the public base class (keyword construction with transformers' names, to_dict,
save_pretrained, from_pretrained), the checks every family's parser uses (each problem collected, all reported in one
`ConfigError`), and reading config.json strictly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, fields
from functools import partial
from typing import Any

from .. import strict_json
from ..errors import ConfigError

# Activations transformers' ACT2FN offers that refvit implements (see refvit/models/common.py).
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "swish",
                         "tanh", "linear")


# PreTrainedConfig's own fields (transformers/configuration_utils.py, 5.23), accepted by every config. refvit does not
# use them (they steer training and transformers' output objects); it keeps what it is given and writes it back.
COMMON_DEFAULTS = {"output_hidden_states": False, "output_attentions": False, "return_dict": True, "dtype": None,
                   "chunk_size_feed_forward": 0, "is_encoder_decoder": False, "problem_type": None}
# also accepted: keys transformers reads and then drops or renames (never written back by refvit)
COMMON_READ_ONLY = ("num_labels", "torch_dtype", "name_or_path", "_name_or_path", "_commit_hash",
                    "transformers_version", "attn_implementation")
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
        """PreTrainedConfig's common fields (`return_dict`, `problem_type`, …): as given, else transformers'
        default."""
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
        return cls.parse({**raw, "model_type": model_type}, source)

    @staticmethod
    def parse(raw: dict, source: str):
        """The family's parser: the family's file marks it `@parses(TheConfig, …)`."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path, revision: str | None = None):
        """Read `config.json` from a save_pretrained directory (or the file itself, or a hub id)."""
        from .. import hub
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
        from ..checkpoint.write import write_bytes_atomic
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


def parses(*classes, pass_model_type: bool = False):
    """Decorator marking a family's parser: it becomes `parse` of each class in `classes` (what `from_dict` ends in),
    called as parser(raw, source), or with pass_model_type as parser(raw, source, family=the class's MODEL_TYPE)."""
    def register(parser):
        for cls in classes:
            cls.parse = staticmethod(partial(parser, family=cls.MODEL_TYPE) if pass_model_type else parser)
        return parser
    return register


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


def parse_pair(value: Any, key: str, problems: list) -> tuple | None:
    """An int or a 2-sequence of ints -> (height, width), as transformers' `isinstance(x, Iterable)` branch does."""
    if isinstance(value, bool):
        problems.append(f"{key}: expected an int or [height, width], got {value!r}")
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                    for v in value):
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
            problems.append(f"out_features: must be distinct names from {list(stage_names)}, in that order; "
                            f"got {feats}")
            return last
    if idx is not None:
        if not isinstance(idx, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            problems.append(f"out_indices: expected a list of ints, got {idx!r}")
            return last
        positive = [i % n if -n <= i < 0 else i for i in idx]
        if any(not 0 <= i < n for i in positive) or len(set(positive)) != len(positive) or positive != sorted(positive):
            problems.append(f"out_indices: must be distinct, increasing indices into {list(stage_names)}; "
                            f"got {list(idx)}")
            return last
        if feats is not None and feats != [stage_names[i] for i in positive]:
            problems.append(f"out_features {feats} and out_indices {list(idx)} name different stages")
        return tuple(stage_names[i] for i in positive), tuple(positive)
    if feats is not None:
        return tuple(feats), tuple(stage_names.index(f) for f in feats)
    return last


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


# ----------------------------------------------------------------------------------------------------------------------
# Reading config.json


MAX_CONFIG_BYTES = 16 * 2**20  # config.json of any real checkpoint is a few kB; id2label of 22k classes ~1 MB


def read_config_json(path: str | os.PathLike) -> dict:
    """Read config.json as a dict, strictly (refvit/strict_json.py: duplicate keys, NaN, FIFOs … refused)."""
    return strict_json.load(path, ConfigError, MAX_CONFIG_BYTES, "config.json")
