"""What refvit needs to know about one transformers class, the runner every class shares, and the pieces of loading
every family shares (docs/DESIGN.md §2).

Each family module (refvit/models/vit.py, …) declares its classes as data: `Architecture(name, family, base, head,
output)` rows in `ARCHITECTURES`; refvit/model.py joins the lists and derives its lookup tables from them. Nothing is
registered implicitly: to see what runs, read the family's list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import CheckpointError, InputError
from .models.common import Forward, check_pixel_values


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
    prepare: Callable = _identity    # ({name: tensor}, arch) -> {name: tensor}, once at load, before the strict check:
                                     # name fixes (transformers-5 state dicts), weight standardisation, BatchNorm folds
    prepare_cast: Callable = _identity  # ({name: tensor}, arch) -> {name: tensor}, once at load in the run dtype
    anchor: str = "embeddings.cls_token"  # a tensor every checkpoint of the family has (finds the prefix)
    default_groups: Callable = lambda arch: ()  # indices of optional_groups that transformers' class builds by default


@dataclass(frozen=True)
class Architecture:
    """One transformers class (e.g. `DeiTForImageClassificationWithTeacher`) as refvit runs it, declared as data:
    its name, its family (model_type), the family's base model, its head (None: the base model itself) and
    transformers' output class. Checkpoints of head classes hold the base model under `base_prefix` (`deit.`)."""

    name: str                        # transformers class name
    family: str                      # model_type of the code that runs it ("vit", "deit", …)
    base: Family                     # the family's base model and checks
    head: Head | None                # None: a base model (no head)
    output: type                     # transformers' output class

    @property
    def is_base(self) -> bool:
        """Its checkpoint names have no prefix (a base model, or a head class keeping its base at the top level)."""
        return self.head is None or self.head.base_at_top

    @property
    def base_prefix(self) -> str:
        return self.base.prefix

    @property
    def prefix(self) -> str:
        return "" if self.is_base else self.base_prefix

    @property
    def anchor(self) -> str:
        return self.base.anchor

    @property
    def default_groups(self) -> tuple:
        return self.base.default_groups(self)

    def parse_config(self, raw: dict, source: str = "config.json"):
        return self.base.parse_config(raw, source, self)

    def shapes(self, cfg) -> dict:
        """Every tensor the class needs: the base model's (under its prefix), then the head's own."""
        head = self.head.shapes(cfg) if self.head is not None else {}
        return {**{self.prefix + k: v for k, v in self.base.shapes(cfg, self).items()}, **head}

    def optional_groups(self, cfg) -> list:
        return self.base.optional_groups(cfg, self)

    def prepare(self, tensors: dict) -> dict:
        return self.base.prepare(tensors, self)

    def prepare_cast(self, tensors: dict) -> dict:
        return self.base.prepare_cast(tensors, self)


def run(arch: Architecture, params: dict, cfg, kernels, dtype, pixel_values, opts: CallOptions,
        values: dict | None) -> dict:
    """The forward of every class (docs/DESIGN.md §2): input checks, the base model, then the head.

    One context is built for the call (the kernels, the recorder `values` or None, the module path); the base model
    runs under its checkpoint prefix (`deit.`) for head classes. Returns {output field: value}.
    """
    x = check_pixel_values(pixel_values, cfg.num_channels, dtype)
    ctx = Forward(kernels, cfg, params, values)
    if arch.head is None:
        base_ctx = ctx
    else:
        prefix = arch.base_prefix[:-1]
        base_ctx = ctx.at(prefix, params=params if arch.head.base_at_top else params[prefix])
    inputs = arch.base.check(arch, cfg, base_ctx.p, x, opts)
    base = arch.base.forward(base_ctx, inputs)
    out = dict(base) if arch.head is None else arch.head.forward(ctx, base, inputs)
    out["hidden_states"] = base["hidden_states"] if opts.output_hidden_states else None
    if "attentions" in arch.output.FIELDS:
        out["attentions"] = base.get("attentions") if opts.output_attentions else None
    return out


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
