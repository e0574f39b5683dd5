"""The thin `Model` object (config + params + which forward to run) and `from_pretrained`.

Loading is one visible pipeline: read config.json -> pick the architecture -> parse/validate the config ->
read the tensors (refvit.checkpoint) -> map names strictly (missing/unexpected/wrong-shape reported together)
-> cast to the run dtype once -> nest into the params tree. Nothing runs before all of it succeeded.
"""

from __future__ import annotations

import os
import time

import numpy as np

from . import hub, kernels
from .architecture import Architecture, CallOptions, map_tensors
from .checkpoint import load_state_dict
from .config import read_config_json
from .errors import CheckpointError, ConfigError, InputError
from .models import beit, bit, cvt, vit
from .models.common import Recorder, check_pixel_values, nest

# Every supported transformers class, family by family (each family file lists its own).
ARCHITECTURES = {a.name: a for a in vit.ARCHITECTURES + cvt.ARCHITECTURES + bit.ARCHITECTURES + beit.ARCHITECTURES}
BASE_MODELS = {**vit.BASE_MODELS, **cvt.BASE_MODELS, **bit.BASE_MODELS, **beit.BASE_MODELS}      # model_type -> base class, for configs without `architectures`
CLASSIFIERS = {**vit.CLASSIFIERS, **cvt.CLASSIFIERS, **bit.CLASSIFIERS, **beit.CLASSIFIERS}      # model_type -> image-classification class (AutoModelForImageClassification)


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


def expected_shapes(cfg, arch: Architecture, optional: bool = False) -> dict[str, tuple]:
    """Every tensor `arch` needs (optional=False), or the ones it may also accept (optional=True), by checkpoint name."""
    if optional:
        return {k: v for group in arch.optional_groups(cfg) for k, v in group.items()}
    return arch.shapes(cfg)


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
        x = check_pixel_values(pixel_values, self.config.num_channels, self.dtype)
        opts = CallOptions(bool_masked_pos, bool(interpolate_pos_encoding), bool(output_hidden_states),
                           bool(output_attentions))
        rec = Recorder(bool(output_intermediates))
        values = self.architecture.forward(self.params, x, self.config, self._K, rec, opts)
        if output_intermediates:
            values["intermediates"] = rec.values
        out = self.architecture.output(**values)
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
    model = CLASSES.get(arch.name, Model)(cfg, prepare_params(mapped, dt, source), arch, dt, backend, path)
    model.ignored_tensors = ignored
    return model


# ----------------------------------------------------------------------------------------------------------------------
# transformers-style classes, one per supported architecture, so model-card snippets run with only the import changed:
# `refvit.DeiTForImageClassificationWithTeacher.from_pretrained(dir)`.


class _PretrainedClass(Model):
    architecture_name = ""

    @classmethod
    def from_pretrained(cls, path, dtype="float32", backend="numba", revision=None):
        return from_pretrained(path, dtype=dtype, backend=backend, architecture=cls.architecture_name, revision=revision)


# One class per supported architecture, named as in transformers (refvit.DeiTModel, …): a Model whose
# from_pretrained picks that architecture whatever config.json's `architectures` says.
CLASSES = {name: type(name, (_PretrainedClass,), {"architecture_name": name, "__module__": __name__,
                                                  "__doc__": f"transformers' {name}, run by refvit."})
           for name in ARCHITECTURES}
globals().update(CLASSES)


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
