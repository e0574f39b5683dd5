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
    """`num_labels` as transformers derives it: the length of `id2label`."""

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


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

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _pair(value: Any, key: str, problems: list) -> tuple | None:
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


def _labels(raw: dict, problems: list) -> tuple[dict, dict]:
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


def _check_type(raw: dict, key: str, default: Any, kind: type | tuple, problems: list) -> Any:
    value = raw.get(key, default)
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float, (int, float)))
    if not ok:
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        problems.append(f"{key}: expected {name}, got {value!r}")
        return default
    return value


def vit_config_from_dict(raw: dict, source: str = "config.json") -> ViTConfig:
    """Parse and validate a ViT/DeiT config dict; every problem is listed in one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    d = ViTConfig()
    ints = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_channels", "encoder_stride")
    values = {k: _check_type(raw, k, getattr(d, k), int, problems) for k in ints}
    for k in ints:
        if values[k] <= 0:
            problems.append(f"{k}: must be positive, got {values[k]}")
    values["layer_norm_eps"] = float(_check_type(raw, "layer_norm_eps", d.layer_norm_eps, (int, float), problems))
    if not (values["layer_norm_eps"] >= 0 and math.isfinite(values["layer_norm_eps"])):
        problems.append(f"layer_norm_eps: must be a finite non-negative number, got {values['layer_norm_eps']}")
    values["qkv_bias"] = _check_type(raw, "qkv_bias", True, bool, problems)
    for k in ("hidden_act", "pooler_act"):
        values[k] = _check_type(raw, k, getattr(d, k), str, problems)
        if values[k] not in SUPPORTED_ACTIVATIONS:
            problems.append(f"{k}: activation {values[k]!r} is not supported (supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
    pooler = raw.get("pooler_output_size")
    if pooler is None:
        pooler = values["hidden_size"]  # configuration_vit.py: `pooler_output_size if pooler_output_size else hidden_size`
    elif not isinstance(pooler, int) or isinstance(pooler, bool) or pooler <= 0:
        problems.append(f"pooler_output_size: expected a positive int or null, got {pooler!r}")
        pooler = values["hidden_size"]
    values["pooler_output_size"] = pooler
    image_size = _pair(raw.get("image_size", 224), "image_size", problems) or d.image_size
    patch_size = _pair(raw.get("patch_size", 16), "patch_size", problems) or d.patch_size
    if min(patch_size) <= 0 or min(image_size) <= 0:
        problems.append(f"image_size {list(image_size)} and patch_size {list(patch_size)} must be positive")
    elif image_size[0] % patch_size[0] or image_size[1] % patch_size[1]:
        problems.append(f"image_size {list(image_size)} is not divisible by patch_size {list(patch_size)}")
    if values["hidden_size"] > 0 and values["num_attention_heads"] > 0 and values["hidden_size"] % values["num_attention_heads"]:
        problems.append(f"num_attention_heads: {values['num_attention_heads']} does not divide hidden_size {values['hidden_size']}")
    model_type = raw.get("model_type", "vit")
    if model_type not in ("vit", "deit"):
        problems.append(f"model_type: expected 'vit' or 'deit' here, got {model_type!r}")
    archs = raw.get("architectures") or ()
    if not isinstance(archs, (list, tuple)) or not all(isinstance(a, str) for a in archs):
        problems.append(f"architectures: expected a list of class names, got {archs!r}")
        archs = ()
    id2label, label2id = _labels(raw, problems)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return ViTConfig(model_type=model_type, architectures=tuple(archs), image_size=image_size, patch_size=patch_size,
                     id2label=id2label, label2id=label2id, **values)


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
