"""The thin `Model` object (config + params + which forward to run) and `from_pretrained`.

Loading is one visible pipeline: read config.json -> pick the architecture -> parse/validate the config ->
read the tensors (refvit.checkpoint) -> map names strictly (missing/unexpected/wrong-shape reported together)
-> cast to the run dtype once -> nest into the params tree. Nothing runs before all of it succeeded.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import kernels
from .checkpoint import load_state_dict
from .config import read_config_json, vit_config_from_dict
from .errors import CheckpointError, ConfigError, InputError
from .models import vit
from .models.common import Recorder, check_pixel_values, nest
from .outputs import (BaseModelOutputWithPooling, DeiTForImageClassificationWithTeacherOutput, ImageClassifierOutput,
                      MaskedImageModelingOutput)


@dataclass(frozen=True)
class Architecture:
    """One transformers class: its family, the prefix its checkpoint puts before the base model, and its head."""

    name: str                       # transformers class name, e.g. "DeiTForImageClassificationWithTeacher"
    family: str                     # model_type whose code runs it: "vit" or "deit"
    head: Callable | None           # head forward over the base model's last_hidden_state; None for base models
    head_shapes: Callable           # cfg -> {checkpoint name: shape} of the head's own tensors
    output: type                    # output class (transformers' name)
    uses_mask_token: bool = False   # whether the embeddings hold a mask token (masked image modeling)

    @property
    def prefix(self) -> str:
        """Checkpoint name prefix of the base model ("deit." for heads, "" for DeiTModel itself)."""
        return "" if self.head is None else f"{self.family}."


def _no_head(cfg):
    return {}


def _teacher_shapes(cfg):
    return {**vit.classifier_shapes(cfg, "cls_classifier"), **vit.classifier_shapes(cfg, "distillation_classifier")}


ARCHITECTURES = {a.name: a for a in [
    Architecture("ViTModel", "vit", None, _no_head, BaseModelOutputWithPooling),
    Architecture("ViTForImageClassification", "vit", vit.image_classification,
                 lambda cfg: vit.classifier_shapes(cfg, "classifier"), ImageClassifierOutput),
    Architecture("ViTForMaskedImageModeling", "vit", vit.masked_image_modeling, vit.decoder_shapes,
                 MaskedImageModelingOutput, uses_mask_token=True),
    Architecture("DeiTModel", "deit", None, _no_head, BaseModelOutputWithPooling),
    Architecture("DeiTForImageClassification", "deit", vit.image_classification,
                 lambda cfg: vit.classifier_shapes(cfg, "classifier"), ImageClassifierOutput),
    Architecture("DeiTForImageClassificationWithTeacher", "deit", vit.image_classification_with_teacher,
                 _teacher_shapes, DeiTForImageClassificationWithTeacherOutput),
    Architecture("DeiTForMaskedImageModeling", "deit", vit.masked_image_modeling, vit.decoder_shapes,
                 MaskedImageModelingOutput, uses_mask_token=True),
]}

BASE_MODELS = {"vit": "ViTModel", "deit": "DeiTModel"}           # model_type -> base class (no architectures key)
CONFIG_PARSERS = {"vit": vit_config_from_dict, "deit": vit_config_from_dict}
NUM_SPECIAL_TOKENS = {"vit": 1, "deit": 2}                        # [CLS] (+ distillation token)


def choose_architecture(raw: dict, architecture: str | None, source: str) -> Architecture:
    """`architecture` if given, else config.json's `architectures[0]`, else the base model of `model_type`."""
    if architecture is None:
        archs = raw.get("architectures")
        if isinstance(archs, list) and archs and isinstance(archs[0], str):
            architecture = archs[0]
        else:
            model_type = raw.get("model_type")
            if model_type not in BASE_MODELS:
                raise ConfigError(f"{source}: no `architectures` and model_type {model_type!r} is not one of "
                                  f"{sorted(BASE_MODELS)}")
            architecture = BASE_MODELS[model_type]
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"{source}: architecture {architecture!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture]


def parse_config(raw: dict, arch: Architecture, source: str = "config.json"):
    """Parse config.json for `arch`'s family (the family decides the code that runs, e.g. DeiT's extra token)."""
    cfg = CONFIG_PARSERS[arch.family](raw, source)
    return dataclasses.replace(cfg, model_type=arch.family)


def expected_shapes(cfg, arch: Architecture, optional: bool = False) -> dict[str, tuple]:
    """Every tensor `arch` needs (optional=False), or the ones it may also accept (optional=True), by checkpoint name."""
    if optional:  # a base model runs its pooler / mask token only when the checkpoint has them
        return {} if arch.head else {**vit.pooler_shapes(cfg), **vit.mask_token_shapes(cfg)}
    shapes = vit.base_shapes(cfg, NUM_SPECIAL_TOKENS[arch.family])
    if arch.uses_mask_token:
        shapes.update(vit.mask_token_shapes(cfg))
    shapes = {arch.prefix + k: v for k, v in shapes.items()}
    shapes.update(arch.head_shapes(cfg))
    return shapes


def map_tensors(tensors: dict, cfg, arch: Architecture, source: str) -> tuple[dict, list]:
    """Check names and shapes strictly; report every missing, unexpected and wrong-shape tensor in one error.

    As transformers does, a base model loads from a checkpoint with a head (it keeps the `family.` part, the head is
    ignored and listed in the returned `ignored`), while a head model cannot load a base-model checkpoint (its head
    tensors would be missing: transformers would initialise them randomly, refvit refuses).
    """
    ignored = []
    tensors = vit.classic_names(tensors)
    family_prefix = f"{arch.family}."
    if arch.head is None and "embeddings.cls_token" not in tensors and family_prefix + "embeddings.cls_token" in tensors:
        ignored = sorted(k for k in tensors if not k.startswith(family_prefix))
        tensors = {k[len(family_prefix):]: v for k, v in tensors.items() if k.startswith(family_prefix)}
    base_checkpoint = arch.head is not None and "embeddings.cls_token" in tensors
    if base_checkpoint and family_prefix + "embeddings.cls_token" not in tensors:
        tensors = {family_prefix + k: v for k, v in tensors.items()}  # so that only the head is reported missing
    required, optional = expected_shapes(cfg, arch), expected_shapes(cfg, arch, optional=True)
    missing = sorted(set(required) - set(tensors))
    unexpected = sorted(set(tensors) - set(required) - set(optional))
    wrong = [f"{k}: checkpoint {tuple(tensors[k].shape)}, config expects {shape}"
             for k, shape in {**required, **optional}.items() if k in tensors and tuple(tensors[k].shape) != shape]
    present_optional = {k for k in optional if k in tensors}
    for group in (vit.pooler_shapes(cfg), vit.mask_token_shapes(cfg)):
        if optional and 0 < len(present_optional & set(group)) < len(group):
            missing += sorted(set(group) - present_optional)
    problems = []
    if missing:
        hint = " (this checkpoint holds a base model without this head)" if base_checkpoint else ""
        problems.append(f"missing {len(missing)} tensor(s){hint}: {', '.join(missing[:20])}{' …' if len(missing) > 20 else ''}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:20])}{' …' if len(unexpected) > 20 else ''}")
    if wrong:
        problems.append(f"wrong shape: {'; '.join(wrong[:20])}")
    if problems:
        raise CheckpointError(f"{source} does not match {arch.name} built from its config: " + " | ".join(problems))
    return tensors, ignored


def prepare_params(tensors: dict, dtype: np.dtype, source: str) -> dict:
    """Load-time preparation, in one place: cast every tensor to the run dtype (no copy when it already is) and nest."""
    out = {}
    for name, t in tensors.items():
        if t.dtype.kind not in "fiub":
            raise CheckpointError(f"{source}: tensor {name} has non-numeric dtype {t.dtype}")
        out[name] = np.asarray(t, dtype=dtype)
    return nest(out)


class Model:
    """config + params + architecture. Call it like a transformers model: `model(pixel_values, ...)`."""

    def __init__(self, config, params: dict, architecture: Architecture, dtype="float32", backend="numba", source=""):
        self.config = config
        self.params = params
        self.architecture = architecture
        self.dtype = np.dtype(dtype)
        self.backend = backend
        self.source = source
        self.ignored_tensors: list = []
        self._K = kernels.get(backend)

    def __repr__(self):
        return f"<refvit {self.architecture.name} dtype={self.dtype} backend={self.backend} from {self.source or 'memory'}>"

    @property
    def num_parameters(self) -> int:
        def count(node):
            if isinstance(node, dict):
                return sum(count(v) for v in node.values())
            if isinstance(node, list):
                return sum(count(v) for v in node)
            return int(node.size)
        return count(self.params)

    def _base_params(self):
        return self.params[self.architecture.family] if self.architecture.prefix else self.params

    def _check_mask(self, bool_masked_pos, batch: int, num_patches: int):
        if bool_masked_pos is None:
            return None
        if "mask_token" not in self._base_params()["embeddings"]:
            raise InputError(f"bool_masked_pos: {self.architecture.name} has no mask token (use a *ForMaskedImageModeling "
                             "checkpoint)")
        m = np.asarray(bool_masked_pos)
        if m.dtype.kind not in "biu" or (m.dtype.kind != "b" and m.size and not np.isin(m, (0, 1)).all()):
            raise InputError(f"bool_masked_pos: expected booleans (or 0/1), got dtype {m.dtype}")
        if m.shape != (batch, num_patches):
            raise InputError(f"bool_masked_pos: expected shape ({batch}, {num_patches}) = (batch, num_patches), got {m.shape}")
        return m.astype(bool)

    def __call__(self, pixel_values=None, bool_masked_pos=None, interpolate_pos_encoding=False,
                 output_hidden_states=False, output_attentions=False, output_intermediates=False,
                 return_dict=True, **kwargs):
        """Forward pass with transformers' keyword names; returns transformers' output class for the architecture.

        `output_intermediates=True` (refvit's extension) adds `out.intermediates`: {checkpoint-name path: array}.
        """
        if kwargs:
            raise InputError(f"{self.architecture.name}: unsupported argument(s) {sorted(kwargs)} "
                             "(refvit runs inference only: no labels/loss, no head_mask)")
        if pixel_values is None:
            raise InputError("pixel_values is required")
        cfg, arch = self.config, self.architecture
        x = check_pixel_values(pixel_values, cfg.num_channels, self.dtype)
        B, _, height, width = x.shape
        if height < cfg.patch_size[0] or width < cfg.patch_size[1]:
            raise InputError(f"pixel_values: image {height}x{width} is smaller than one patch {cfg.patch_size}")
        num_patches = (height // cfg.patch_size[0]) * (width // cfg.patch_size[1])
        mask = self._check_mask(bool_masked_pos, B, num_patches)
        if mask is not None and arch.name == "ViTForMaskedImageModeling" and cfg.patch_size[0] != cfg.encoder_stride:
            raise InputError(f"bool_masked_pos: patch_size {cfg.patch_size[0]} must equal encoder_stride "
                             f"{cfg.encoder_stride} (as transformers requires)")
        rec = Recorder(bool(output_intermediates))
        base = vit.base_forward(self._base_params(), x, cfg, self._K, rec, arch.prefix, mask,
                                bool(interpolate_pos_encoding), output_hidden_states, output_attentions)
        values = dict(base) if arch.head is None else {
            **arch.head(self.params, base["last_hidden_state"], cfg, self._K, rec, arch.prefix),
            "hidden_states": base["hidden_states"], "attentions": base["attentions"]}
        if output_intermediates:
            values["intermediates"] = rec.values
        out = arch.output(**values)
        return out if return_dict else out.to_tuple()

    forward = __call__

    def time_forward(self, pixel_values, repeat: int = 1, **kwargs) -> tuple:
        """(output, best seconds over `repeat` runs)."""
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = self(pixel_values, **kwargs)
            best = min(best, time.perf_counter() - t0)
        return out, best


def _check_options(dtype, backend):
    if str(np.dtype(dtype) if isinstance(dtype, type) else dtype) not in ("float32", "float64"):
        raise InputError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    if backend not in ("numpy", "numba"):
        raise InputError(f"backend: expected 'numba' or 'numpy', got {backend!r}")
    return np.dtype(dtype)


def from_state_dict(config: dict, tensors: dict, architecture: str | None = None, dtype="float32", backend="numba",
                    source: str = "state dict") -> Model:
    """Build a Model from a config dict (as in config.json) and {checkpoint name: array}."""
    dt = _check_options(dtype, backend)
    arch = choose_architecture(config, architecture, source)
    cfg = parse_config(config, arch, source)
    mapped, ignored = map_tensors(tensors, cfg, arch, source)
    model = CLASSES.get(arch.name, Model)(cfg, prepare_params(mapped, dt, source), arch, dt, backend, source)
    model.ignored_tensors = ignored
    return model


def from_pretrained(path, dtype="float32", backend="numba", architecture: str | None = None) -> Model:
    """Load a directory written by transformers' `save_pretrained` (safetensors, sharded safetensors or .bin)."""
    dt = _check_options(dtype, backend)
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected one written by save_pretrained)")
    config_path = os.path.join(path, "config.json")
    raw = read_config_json(config_path)
    arch = choose_architecture(raw, architecture, config_path)
    cfg = parse_config(raw, arch, config_path)
    tensors, what = load_state_dict(path)
    source = os.path.join(path, what)
    mapped, ignored = map_tensors(tensors, cfg, arch, source)
    model = CLASSES.get(arch.name, Model)(cfg, prepare_params(mapped, dt, source), arch, dt, backend, path)
    model.ignored_tensors = ignored
    return model


# ----------------------------------------------------------------------------------------------------------------------
# transformers-style classes, one per supported architecture, so model-card snippets run with only the import changed:
# `refvit.DeiTForImageClassificationWithTeacher.from_pretrained(dir)`.


class _PretrainedClass(Model):
    architecture_name = ""

    @classmethod
    def from_pretrained(cls, path, dtype="float32", backend="numba"):
        return from_pretrained(path, dtype=dtype, backend=backend, architecture=cls.architecture_name)


class ViTModel(_PretrainedClass):
    architecture_name = "ViTModel"


class ViTForImageClassification(_PretrainedClass):
    architecture_name = "ViTForImageClassification"


class ViTForMaskedImageModeling(_PretrainedClass):
    architecture_name = "ViTForMaskedImageModeling"


class DeiTModel(_PretrainedClass):
    architecture_name = "DeiTModel"


class DeiTForImageClassification(_PretrainedClass):
    architecture_name = "DeiTForImageClassification"


class DeiTForImageClassificationWithTeacher(_PretrainedClass):
    architecture_name = "DeiTForImageClassificationWithTeacher"


class DeiTForMaskedImageModeling(_PretrainedClass):
    architecture_name = "DeiTForMaskedImageModeling"


CLASSES = {c.architecture_name: c for c in _PretrainedClass.__subclasses__()}


class AutoModel:
    """transformers' AutoModel: the base model of config.json's model_type."""

    @staticmethod
    def from_pretrained(path, dtype="float32", backend="numba"):
        raw = read_config_json(os.path.join(os.fspath(path), "config.json"))
        if raw.get("model_type") not in BASE_MODELS:
            raise ConfigError(f"{path}/config.json: model_type {raw.get('model_type')!r} is not one of {sorted(BASE_MODELS)}")
        return from_pretrained(path, dtype, backend, architecture=BASE_MODELS[raw["model_type"]])


class AutoModelForImageClassification:
    """transformers' AutoModelForImageClassification: config.json's classification architecture."""

    @staticmethod
    def from_pretrained(path, dtype="float32", backend="numba"):
        raw = read_config_json(os.path.join(os.fspath(path), "config.json"))
        archs = [a for a in raw.get("architectures") or [] if isinstance(a, str) and "ForImageClassification" in a]
        if archs:
            return from_pretrained(path, dtype, backend, architecture=archs[0])
        family = {"vit": "ViT", "deit": "DeiT"}.get(raw.get("model_type"))
        if family is None:
            raise ConfigError(f"{path}/config.json: no image-classification architecture for model_type {raw.get('model_type')!r}")
        return from_pretrained(path, dtype, backend, architecture=f"{family}ForImageClassification")
