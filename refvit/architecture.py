"""What refvit needs to know about one transformers class, and the pieces of loading every family shares.

Each family module (refvit/models/vit.py, …) lists its classes as `Architecture` objects in `ARCHITECTURES`;
refvit/model.py joins the lists. Nothing is registered implicitly: to see what runs, read the family's list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import CheckpointError, InputError


@dataclass(frozen=True)
class CallOptions:
    """The keyword arguments of a forward call, after validation of their types."""

    bool_masked_pos: np.ndarray | None = None
    interpolate_pos_encoding: bool = False
    output_hidden_states: bool = False
    output_attentions: bool = False


def _identity(tensors: dict) -> dict:
    return tensors


def _no_groups(cfg) -> list:
    return []


@dataclass(frozen=True)
class Architecture:
    """One transformers class (e.g. `DeiTForImageClassificationWithTeacher`) as refvit runs it.

    Checkpoints of head classes hold the base model under `base_prefix` (`deit.`); base classes hold it at the top.
    """

    name: str                        # transformers class name
    family: str                      # model_type of the code that runs it ("vit", "deit", …)
    is_base: bool                    # a base model (no head): its checkpoint names have no prefix
    base_prefix: str                 # prefix of the base model inside head checkpoints, e.g. "deit."
    parse_config: Callable           # (config.json dict, source) -> frozen config dataclass; raises ConfigError
    shapes: Callable                 # cfg -> {checkpoint name: shape} of every required tensor (prefix included)
    forward: Callable                # (params, pixel_values, cfg, K, rec, CallOptions) -> {output field: value}
    output: type                     # transformers' output class
    optional_groups: Callable = _no_groups  # cfg -> [{name: shape}]: groups a checkpoint may hold, all or nothing
    prepare: Callable = _identity    # {name: tensor} -> {name: tensor}, once at load, before the strict check: name
                                     # fixes (transformers-5 state dicts), weight standardisation, BatchNorm folding
    anchor: str = "embeddings.cls_token"  # a tensor every checkpoint of the family has (finds the prefix)
    default_groups: tuple = ()       # indices of optional_groups that transformers' class builds by default

    @property
    def prefix(self) -> str:
        return "" if self.is_base else self.base_prefix


def strip_or_add_prefix(tensors: dict, arch: Architecture) -> tuple[dict, list, bool]:
    """Make names line up with `arch` like transformers does; returns (tensors, ignored names, base_checkpoint).

    A base model loads from a checkpoint with a head: the prefix is stripped and the head ignored. A head model given
    a base checkpoint gets the prefix added, so that exactly its head is reported missing (transformers would
    initialise it randomly; refvit refuses).
    """
    p = arch.base_prefix
    if arch.is_base and arch.anchor not in tensors and p + arch.anchor in tensors:
        ignored = sorted(k for k in tensors if not k.startswith(p))
        return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}, ignored, False
    if not arch.is_base and arch.anchor in tensors and p + arch.anchor not in tensors:
        return {p + k: v for k, v in tensors.items()}, [], True
    return tensors, [], False


def _listed(names: list) -> str:
    return ", ".join(names[:20]) + (" …" if len(names) > 20 else "")


# ViT/DeiT/BEiT layers, CvT and BiT layers per stage, BEiT's FCN head convs: each one holds tensors of its own
LAYER_COUNT_FIELDS = ("num_hidden_layers", "depth", "depths", "auxiliary_num_convs")


def _check_layer_count(cfg, tensors: dict, arch: Architecture, source: str) -> None:
    """Every layer has at least one tensor: refuse a config asking for more layers than the checkpoint has tensors
    before `arch.shapes` lists them (num_hidden_layers = 10**9 would otherwise build a dict of 10**10 names)."""
    for name in LAYER_COUNT_FIELDS:
        value = getattr(cfg, name, None)
        counts = value if isinstance(value, (tuple, list)) else [value]
        if all(isinstance(c, int) for c in counts) and sum(counts) > len(tensors):
            raise CheckpointError(f"{source} does not match {arch.name} built from its config: {name} = "
                                  f"{value!r} asks for {sum(counts)} layers, but the checkpoint holds only "
                                  f"{len(tensors)} tensors")


def map_tensors(tensors: dict, cfg, arch: Architecture, source: str) -> tuple[dict, list]:
    """Check names and shapes strictly; every missing, unexpected and wrong-shape tensor is reported in one error."""
    tensors, ignored, base_checkpoint = strip_or_add_prefix(arch.prepare(tensors), arch)
    _check_layer_count(cfg, tensors, arch, source)
    required = arch.shapes(cfg)
    groups = arch.optional_groups(cfg)
    allowed = dict(required)
    missing = sorted(set(required) - set(tensors))
    for group in groups:
        allowed.update(group)
        present = set(group) & set(tensors)
        if present and present != set(group):
            missing += sorted(set(group) - present)
    unexpected = sorted(set(tensors) - set(allowed))
    wrong = [f"{k}: checkpoint {tuple(tensors[k].shape)}, config expects {shape}"
             for k, shape in allowed.items() if k in tensors and tuple(tensors[k].shape) != tuple(shape)]
    problems = []
    if missing:
        hint = " (this checkpoint holds a base model without this head)" if base_checkpoint else ""
        problems.append(f"missing {len(missing)} tensor(s){hint}: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_listed(unexpected)}")
    if wrong:
        problems.append(f"wrong shape: {'; '.join(wrong[:20])}")
    if problems:
        raise CheckpointError(f"{source} does not match {arch.name} built from its config: " + " | ".join(problems))
    return tensors, ignored


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
        raise InputError(f"bool_masked_pos: expected shape ({batch}, {num_patches}) = (batch, num_patches), got {m.shape}")
    return m.astype(bool)
