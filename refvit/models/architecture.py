"""What refvit needs to know about one transformers class, declared as data (docs/DESIGN.md §2): `Architecture`
rows joining a `Family` (config, base model, input checks, load-time preparation) and a `Head`, the `Inputs` a
family's checks hand to its forward, and the checks every family shares.

Each family module (refvit/models/vit.py, …) declares its classes as `Architecture(name, family, base, head, output)`
rows in `ARCHITECTURES`; refvit/model.py joins the lists and derives its lookup tables from them. Nothing is
registered implicitly: to see what runs, read the family's list. The runner that executes a row (`run`) and the
strict tensor mapping sit one layer up, in refvit/runner.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError
@dataclass(frozen=True)
class CallOptions:
    """The keyword arguments of a forward call, after validation of their types."""

    bool_masked_pos: np.ndarray | None = None
    interpolate_pos_encoding: bool = False
    output_hidden_states: bool = False
    output_attentions: bool = False


@dataclass(frozen=True)
class Inputs:
    """What a family's input checks hand to its base model and head: the checked pixel values and options."""

    pixel_values: np.ndarray              # (B, C, H, W) in the run dtype
    architecture: str                     # the class name, for error messages
    mask: np.ndarray | None = None        # (B, num_patches) bool: bool_masked_pos, checked
    interpolate: bool = False             # interpolate_pos_encoding
    output_attentions: bool = False       # attention maps wanted (they cost a buffer per layer)
    grid: tuple | None = None             # (h, w) patch grid of this input (patch families)
    with_pooler: bool = True              # the base model runs its pooler (BEiT: depends on the class)


def _identity(tensors: dict, arch) -> dict:
    return tensors


def _no_groups(cfg, arch) -> list:
    return []


def _no_tensors(cfg) -> dict:
    return {}


@dataclass(frozen=True)
class Head:
    """A task head: the same signature for every one, `forward(ctx, base, inputs) -> {output field: value}` with ctx
    at the top of the checkpoint and `base` the base model's outputs; `shapes(cfg)` lists its own tensors."""

    kind: str                        # "classification", "teacher", "mim", "segmentation", "backbone", …
    forward: Callable                # (ctx, base outputs, Inputs) -> {output field: value}
    shapes: Callable = _no_tensors   # cfg -> {checkpoint name: shape} (names as the head class stores them)
    base_at_top: bool = False        # the class holds its base model at the top level (BeitBackbone), not under prefix
    reads_hidden_states: bool = False  # the head reads the base's hidden states (feature maps of chosen layers), so
                                     # they must be arrays of their own, not a fused kernel's reused buffers


@dataclass(frozen=True)
class Family:
    """What every class of one model family shares: its config, its base model (ViTModel, BeitModel, …) and the
    checks of a call. Functions that depend on the class take the `Architecture` (e.g. its head's kind)."""

    prefix: str                      # the base model inside head checkpoints, e.g. "deit."
    parse_config: Callable           # (config.json dict, source, arch) -> frozen config; raises ConfigError
    shapes: Callable                 # (cfg, arch) -> {checkpoint name: shape} of the base model, no prefix
    check: Callable                  # (arch, cfg, base params, pixel values, CallOptions) -> Inputs; InputError
    forward: Callable                # (ctx, Inputs) -> {"last_hidden_state": …, "hidden_states": (…), …}
    optional_groups: Callable = _no_groups  # (cfg, arch) -> [{name: shape}]: groups a checkpoint may hold, all or none
    before_mapping: Callable = _identity  # ({name: tensor}, arch) -> {name: tensor}: once at load, on the checkpoint's
                                     # tensors before the strict check: name fixes (transformers-5 state dicts), weight
                                     # standardisation, BatchNorm folds in float64
    after_cast: Callable = _identity  # ({name: tensor}, arch) -> {name: tensor}: once at load, on the checked tensors
                                     # in the run dtype: BatchNorm folds in that dtype, the q/k/v fusion
    anchor: str = "embeddings.cls_token"  # a tensor every checkpoint of the family has (finds the prefix)
    default_groups: Callable = lambda arch: ()  # indices of optional_groups that transformers' class builds by default


@dataclass(frozen=True)
class Architecture:
    """One transformers class (e.g. `DeiTForImageClassificationWithTeacher`) as refvit runs it, declared as data:
    its name, its family (model_type), the family's base model, its head (None: the base model itself) and
    transformers' output class. Checkpoints of head classes hold the base model under `base_prefix` (`deit.`)."""

    name: str                        # transformers class name
    family: str                      # model_type of the code that runs it ("vit", "deit", …)
    base_model: Family               # the family's base model and checks (its outputs, in a head: `base`)
    head: Head | None                # None: a base model (no head)
    output: type                     # transformers' output class

    @property
    def is_base(self) -> bool:
        """Its checkpoint names have no prefix (a base model, or a head class keeping its base at the top level)."""
        return self.head is None or self.head.base_at_top

    @property
    def base_prefix(self) -> str:
        return self.base_model.prefix

    @property
    def prefix(self) -> str:
        return "" if self.is_base else self.base_prefix

    @property
    def anchor(self) -> str:
        return self.base_model.anchor

    @property
    def default_groups(self) -> tuple:
        return self.base_model.default_groups(self)

    def parse_config(self, raw: dict, source: str = "config.json"):
        return self.base_model.parse_config(raw, source, self)

    def shapes(self, cfg) -> dict:
        """Every tensor the class needs: the base model's (under its prefix), then the head's own."""
        head = self.head.shapes(cfg) if self.head is not None else {}
        return {**{self.prefix + k: v for k, v in self.base_model.shapes(cfg, self).items()}, **head}

    def optional_groups(self, cfg) -> list:
        return self.base_model.optional_groups(cfg, self)

    def before_mapping(self, tensors: dict) -> dict:
        return self.base_model.before_mapping(tensors, self)

    def after_cast(self, tensors: dict) -> dict:
        return self.base_model.after_cast(tensors, self)


def check_mask(bool_masked_pos, batch: int, num_patches: int, has_mask_token: bool, arch_name: str):
    """Validate `bool_masked_pos` -> (B, num_patches) bool array, or None."""
    if bool_masked_pos is None:
        return None
    if not has_mask_token:
        raise InputError(f"bool_masked_pos: {arch_name} has no mask token (use a *ForMaskedImageModeling checkpoint)")
    m = np.asarray(bool_masked_pos)
    if m.dtype.kind not in "biu" or (m.dtype.kind != "b" and m.size and not np.isin(m, (0, 1)).all()):
        raise InputError(f"bool_masked_pos: expected booleans (or 0/1), got dtype {m.dtype}")
    if m.shape != (batch, num_patches):
        raise InputError(f"bool_masked_pos: expected shape ({batch}, {num_patches}) = (batch, num_patches), "
                         f"got {m.shape}")
    return m.astype(bool)
