"""The thin `Model` object (config + params + architecture + kernels), `from_pretrained`, the transformers-named
classes, and the lookup tables derived from the families' architecture lists (docs/DESIGN.md §2).

Loading is one visible pipeline (docs/DESIGN.md §4): read config.json -> pick the architecture -> parse/validate the
config -> read the tensors (refvit.checkpoint) -> the family's preparation -> map names strictly
(missing/unexpected/wrong-shape reported together) -> cast to the run dtype once -> the family's preparation in the
run dtype -> nest into the params tree. Nothing runs before all of it succeeded.
"""

from __future__ import annotations

import os

import numpy as np

from . import hub, kernels
from .architecture import Architecture, CallOptions, map_tensors, run
from .checkpoint import load_state_dict
from .checkpoint.safetensors import release_replaced
from .config import read_config_json
from .errors import CheckpointError, ConfigError, InputError
from .models import beit, bit, cvt, vit
from .models.common import nest

# Every supported transformers class, family by family (each family file declares its own), and the lookup tables
# derived from that list.
ARCHITECTURES = {a.name: a for a in vit.ARCHITECTURES + cvt.ARCHITECTURES + bit.ARCHITECTURES + beit.ARCHITECTURES}
BASE_MODELS = {a.family: a.name for a in ARCHITECTURES.values() if a.head is None}  # model_type -> base class, for
                                                                                    # configs without `architectures`
CLASSIFIERS = {a.family: a.name for a in ARCHITECTURES.values()                     # model_type -> image-classification
               if a.head is not None and a.head.kind == "classification"}          # class (AutoModelFor…)


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
    return arch.parse_config(raw, source)


def prepare_params(tensors: dict, dtype: np.dtype, source: str, arch: Architecture) -> dict:
    """Load-time preparation, in one place: cast every tensor to the run dtype (no copy when it already is), the
    family's preparation in the run dtype (CvT's BatchNorm folding), and nest. Memory-mapped tensors that were
    replaced by copies (cast, folded, concatenated) have their pages dropped from the resident set (no two copies)."""
    out = {}
    for name, t in tensors.items():
        if t.dtype.kind not in "fiub":
            raise CheckpointError(f"{source}: tensor {name} has non-numeric dtype {t.dtype}")
        out[name] = np.asarray(t, dtype=dtype)
        if out[name] is not t:                 # cast: the mapped original's pages leave RSS now, not after every cast
            release_replaced([t], [out[name]])
    prepared = arch.prepare_cast(out)
    release_replaced(tensors.values(), prepared.values())  # memory-mapped tensors now copied: their pages leave RSS
    return nest(prepared)


class Model:
    """config + params + architecture + kernels. Call it like a transformers model: `model(pixel_values, ...)`."""

    def __init__(self, config, params: dict, architecture: Architecture, dtype="float32", backend="numba", source=""):
        self.config = config
        self.params = params
        self.architecture = architecture
        self.dtype = np.dtype(dtype)
        self.backend = backend
        self.source = source
        self.ignored_tensors: list = []
        self.kernels = kernels.get(backend)  # this instance's kernel namespace: every forward reads it (a tool may
                                             # replace it on one instance, e.g. with timed kernels)

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
        opts = CallOptions(bool_masked_pos, bool(interpolate_pos_encoding), bool(output_hidden_states),
                           bool(output_attentions))
        intermediates = {} if output_intermediates else None
        with kernels.forward_scope(self.backend):  # Numba's BLAS on one thread for the forward (kernels/threads.py)
            values = run(self.architecture, self.params, self.config, self.kernels, self.dtype, pixel_values, opts,
                         intermediates)
        if intermediates is not None:
            values["intermediates"] = intermediates
        out = self.architecture.output(**values)
        return out if return_dict else out.to_tuple()

    forward = __call__


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
    model = CLASSES[arch.name](cfg, prepare_params(mapped, dt, source, arch), arch, dt, backend, source)
    model.ignored_tensors = ignored
    return model


def from_pretrained(path, dtype="float32", backend="numba", architecture: str | None = None,
                    revision: str | None = None) -> Model:
    """Load a directory written by transformers' `save_pretrained` (safetensors, sharded safetensors or .bin), or a
    hub id (`"facebook/deit-small-distilled-patch16-224"`, `revision=` branch, tag or sha): refvit.hub."""
    dt = _check_options(dtype, backend)
    path = hub.resolve_model_dir(path, revision=revision)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected one written by save_pretrained)")
    config_path = os.path.join(path, "config.json")
    raw = read_config_json(config_path)
    arch = choose_architecture(raw, architecture, config_path)
    cfg = parse_config(raw, arch, config_path)
    tensors, what = load_state_dict(path)
    source = os.path.join(path, what)
    mapped, ignored = map_tensors(tensors, cfg, arch, source)
    model = CLASSES[arch.name](cfg, prepare_params(mapped, dt, source, arch), arch, dt, backend, path)
    model.ignored_tensors = ignored
    return model


# ----------------------------------------------------------------------------------------------------------------------
# transformers-style classes, one per supported architecture, so model-card snippets run with only the import changed:
# `refvit.DeiTForImageClassificationWithTeacher.from_pretrained(dir)`.


class PretrainedModel(Model):
    """A Model whose `from_pretrained` picks its class's architecture whatever config.json's `architectures` says."""

    architecture_name = ""

    @classmethod
    def from_pretrained(cls, path, dtype="float32", backend="numba", revision=None):
        return from_pretrained(path, dtype=dtype, backend=backend, architecture=cls.architecture_name, revision=revision)


class ViTModel(PretrainedModel):
    """transformers' ViTModel, run by refvit."""
    architecture_name = "ViTModel"


class ViTForImageClassification(PretrainedModel):
    """transformers' ViTForImageClassification, run by refvit."""
    architecture_name = "ViTForImageClassification"


class ViTForMaskedImageModeling(PretrainedModel):
    """transformers' ViTForMaskedImageModeling, run by refvit."""
    architecture_name = "ViTForMaskedImageModeling"


class DeiTModel(PretrainedModel):
    """transformers' DeiTModel, run by refvit."""
    architecture_name = "DeiTModel"


class DeiTForImageClassification(PretrainedModel):
    """transformers' DeiTForImageClassification, run by refvit."""
    architecture_name = "DeiTForImageClassification"


class DeiTForImageClassificationWithTeacher(PretrainedModel):
    """transformers' DeiTForImageClassificationWithTeacher, run by refvit."""
    architecture_name = "DeiTForImageClassificationWithTeacher"


class DeiTForMaskedImageModeling(PretrainedModel):
    """transformers' DeiTForMaskedImageModeling, run by refvit."""
    architecture_name = "DeiTForMaskedImageModeling"


class CvtModel(PretrainedModel):
    """transformers' CvtModel, run by refvit."""
    architecture_name = "CvtModel"


class CvtForImageClassification(PretrainedModel):
    """transformers' CvtForImageClassification, run by refvit."""
    architecture_name = "CvtForImageClassification"


class BitModel(PretrainedModel):
    """transformers' BitModel, run by refvit."""
    architecture_name = "BitModel"


class BitForImageClassification(PretrainedModel):
    """transformers' BitForImageClassification, run by refvit."""
    architecture_name = "BitForImageClassification"


class BitBackbone(PretrainedModel):
    """transformers' BitBackbone, run by refvit."""
    architecture_name = "BitBackbone"


class BeitModel(PretrainedModel):
    """transformers' BeitModel, run by refvit."""
    architecture_name = "BeitModel"


class BeitForImageClassification(PretrainedModel):
    """transformers' BeitForImageClassification, run by refvit."""
    architecture_name = "BeitForImageClassification"


class BeitForMaskedImageModeling(PretrainedModel):
    """transformers' BeitForMaskedImageModeling, run by refvit."""
    architecture_name = "BeitForMaskedImageModeling"


class BeitForSemanticSegmentation(PretrainedModel):
    """transformers' BeitForSemanticSegmentation, run by refvit."""
    architecture_name = "BeitForSemanticSegmentation"


class BeitBackbone(PretrainedModel):
    """transformers' BeitBackbone, run by refvit."""
    architecture_name = "BeitBackbone"


class Data2VecVisionModel(PretrainedModel):
    """transformers' Data2VecVisionModel, run by refvit."""
    architecture_name = "Data2VecVisionModel"


class Data2VecVisionForImageClassification(PretrainedModel):
    """transformers' Data2VecVisionForImageClassification, run by refvit."""
    architecture_name = "Data2VecVisionForImageClassification"


class Data2VecVisionForSemanticSegmentation(PretrainedModel):
    """transformers' Data2VecVisionForSemanticSegmentation, run by refvit."""
    architecture_name = "Data2VecVisionForSemanticSegmentation"


CLASSES = {c.architecture_name: c for c in PretrainedModel.__subclasses__()}
assert set(CLASSES) == set(ARCHITECTURES), "one class per architecture"


class AutoModel:
    """transformers' AutoModel: the base model of config.json's model_type."""

    @staticmethod
    def from_pretrained(path, dtype="float32", backend="numba", revision=None):
        path = hub.resolve_model_dir(path, revision=revision)
        raw = read_config_json(os.path.join(os.fspath(path), "config.json"))
        if raw.get("model_type") not in BASE_MODELS:
            raise ConfigError(f"{path}/config.json: model_type {raw.get('model_type')!r} is not one of {sorted(BASE_MODELS)}")
        return from_pretrained(path, dtype, backend, architecture=BASE_MODELS[raw["model_type"]])


class AutoModelForImageClassification:
    """transformers' AutoModelForImageClassification: config.json's classification architecture."""

    @staticmethod
    def from_pretrained(path, dtype="float32", backend="numba", revision=None):
        path = hub.resolve_model_dir(path, revision=revision)
        raw = read_config_json(os.path.join(os.fspath(path), "config.json"))
        archs = [a for a in raw.get("architectures") or [] if isinstance(a, str) and "ForImageClassification" in a]
        if archs:
            return from_pretrained(path, dtype, backend, architecture=archs[0])
        if raw.get("model_type") not in CLASSIFIERS:
            raise ConfigError(f"{path}/config.json: no image-classification architecture for model_type {raw.get('model_type')!r}")
        return from_pretrained(path, dtype, backend, architecture=CLASSIFIERS[raw["model_type"]])
