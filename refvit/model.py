"""The thin `Model` object (config + params + architecture + kernels), `from_pretrained`, the transformers-named
classes, and the lookup tables derived from the families' architecture lists (docs/DESIGN.md §2).

Loading is one visible pipeline (docs/DESIGN.md §4): read config.json -> pick the architecture -> parse/validate the
config -> read the tensors (refvit.checkpoint) -> the family's preparation -> map names strictly
(missing/unexpected/wrong-shape reported together) -> cast to the run dtype once -> the family's preparation in the
run dtype -> nest into the params tree. Nothing runs before all of it succeeded.
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import hub, kernels, timm
from .kernels.workspace import WorkspacePool
from .models.architecture import Architecture, CallOptions
from .runner import map_tensors, run, strip_or_add_prefix
from .checkpoint import load_state_dict
from .checkpoint.safetensors import release_replaced
from .checkpoint.write import prepare_directory, write_bytes_atomic, write_safetensors
from .config import CONFIG_CLASSES, PretrainedConfig, read_config_json
from .errors import CheckpointError, ConfigError, InputError
from .initialization import random_state_dict
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
        raise ConfigError(f"{source}: architecture {architecture!r} is not supported; "
                          f"supported: {', '.join(ARCHITECTURES)}")
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
    prepared = arch.after_cast(out)
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
        self.checkpoint = None  # {checkpoint name: array} as read, before load-time math (save_pretrained)
        self.timm_config: dict | None = None  # config.json as timm wrote it, when loaded from timm's layout
        self.kernels = kernels.get(backend)  # this instance's kernel namespace: every forward reads it (a tool may
                                             # replace it on one instance, e.g. with timed kernels)
        self.workspaces = WorkspacePool()    # buffers the fused kernels reuse between calls (kernels/workspace.py)

    def __repr__(self):
        return (f"<refvit {self.architecture.name} dtype={self.dtype} backend={self.backend} "
                f"from {self.source or 'memory'}>")

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
        Why so many parameters: transformers' forward keywords, so that `model(**inputs)` works unchanged.
        """
        if kwargs:
            raise InputError(f"{self.architecture.name}: unsupported argument(s) {sorted(kwargs)} "
                             "(refvit runs inference only: no labels/loss, no head_mask)")
        if pixel_values is None:
            raise InputError("pixel_values is required")
        opts = CallOptions(bool_masked_pos, bool(interpolate_pos_encoding), bool(output_hidden_states),
                           bool(output_attentions))
        recorder = {} if output_intermediates else None  # {checkpoint name: array}, filled by the forward
        with kernels.forward_scope(self.backend):  # Numba's BLAS on one thread for the forward (kernels/threads.py)
            values = run(self, pixel_values, opts, recorder)
        if recorder is not None:
            values["intermediates"] = recorder
        out = self.architecture.output(**values)
        return out if return_dict else out.to_tuple()

    forward = __call__

    @property
    def checkpoint(self) -> dict | None:
        """{checkpoint name: array} as save_pretrained writes it: the tensors as read, before load-time math, or as
        drawn. A memory-mapped safetensors checkpoint stays mapped (no resident memory); a pytorch_model.bin, read into
        memory, is not kept: it is read again from its directory when asked for."""
        if self._checkpoint is None and self._reread is not None:
            return self._reread()
        return self._checkpoint

    @checkpoint.setter
    def checkpoint(self, value):
        self._checkpoint, self._reread = value, None

    def save_pretrained(self, save_directory, overwrite: bool = False) -> str:
        """Write `config.json` and `model.safetensors` as transformers' `save_pretrained` does (checkpoint names, the
        tensors as they were read or drawn, before any load-time preparation), written with NumPy: no torch.

        An existing non-empty directory is refused unless overwrite=True. Each file is written under a temporary
        name and renamed into place (never a half-written file, never a write into a file mapped for reading).
        Returns the directory."""
        if self.checkpoint is None:
            raise CheckpointError(f"{self!r}: built from prepared params, not from a checkpoint or a config; "
                                  "there are no checkpoint tensors to save")
        save_directory = prepare_directory(save_directory, overwrite)
        config = {**self.config.to_dict(), "architectures": [self.architecture.name]}
        write_safetensors(os.path.join(save_directory, "model.safetensors"), self.checkpoint)
        write_bytes_atomic(os.path.join(save_directory, "config.json"),
                           (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        return save_directory

    @classmethod
    def _assemble(cls, config, params, architecture, dtype, backend, source, tensors=None, mapped=None, ignored=(),
                  reread=None):
        """A model of class `cls` from prepared params (how loading builds one; the public classes' __init__ draws
        random weights instead). `tensors`/`mapped`: as read and as mapped, kept for save_pretrained; or `reread`:
        a function reading them again (checkpoints read into memory are not kept).
        Why so many parameters: everything a Model holds, handed over once by the loaders."""
        model = object.__new__(cls)
        Model.__init__(model, config, params, architecture, dtype, backend, source)
        model.ignored_tensors = list(ignored)
        if reread is not None:
            model._reread = reread
        elif mapped is not None:
            model.checkpoint = checkpoint_tensors(tensors, mapped, architecture)
        return model


def checkpoint_tensors(tensors: dict, mapped: dict, arch: Architecture) -> dict:
    """What save_pretrained writes: the names the strict mapping accepted for `arch`, each with its value as read
    (before BiT's weight standardisation or a BatchNorm fold). A tensor renamed at load (a transformers-5 state dict)
    keeps its mapped value: after a fold that is the folded conv with an identity BatchNorm, the same function."""
    named, _, _ = strip_or_add_prefix(tensors, arch)
    return {k: named[k] if k in named and named[k].shape == v.shape else v for k, v in mapped.items()}


def _check_options(dtype, backend):
    if str(np.dtype(dtype) if isinstance(dtype, type) else dtype) not in ("float32", "float64"):
        raise InputError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    if backend not in ("numpy", "numba"):
        raise InputError(f"backend: expected 'numba' or 'numpy', got {backend!r}")
    return np.dtype(dtype)


def from_state_dict(config: dict, tensors: dict, architecture: str | None = None, dtype="float32", backend="numba",
                    source: str = "state dict") -> Model:
    """Build a Model from a config (a dict as in config.json, or a refvit config such as `BitConfig(...)`) and
    {checkpoint name: array}."""
    dt = _check_options(dtype, backend)
    if isinstance(config, PretrainedConfig):
        config = config.to_dict()
    arch = choose_architecture(config, architecture, source)
    cfg = parse_config(config, arch, source)
    mapped, ignored = map_tensors(tensors, cfg, arch, source)
    return CLASSES[arch.name]._assemble(cfg, prepare_params(mapped, dt, source, arch), arch, dt, backend, source,
                                        tensors, mapped, ignored)


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
    if timm.is_timm_config(raw):  # timm's hub layout: refvit/timm.py maps it to the transformers class it equals
        return _from_timm_dir(path, raw, config_path, dt, backend, architecture)
    arch = choose_architecture(raw, architecture, config_path)
    cfg = parse_config(raw, arch, config_path)
    tensors, what = load_state_dict(path)
    source = os.path.join(path, what)
    mapped, ignored = map_tensors(tensors, cfg, arch, source)
    reread = None if _mapped(what) else lambda: _read_checkpoint(path, cfg, arch, source)
    return CLASSES[arch.name]._assemble(cfg, prepare_params(mapped, dt, source, arch), arch, dt, backend, path,
                                        tensors, mapped, ignored, reread)


def _mapped(what: str) -> bool:
    """Whether load_state_dict memory-mapped what it read (safetensors) rather than reading it into memory (.bin)."""
    return what.startswith("model.safetensors")


def _read_checkpoint(path, cfg, arch, source, convert=lambda tensors: tensors) -> dict:
    """The checkpoint tensors of a directory read again (save_pretrained of a model loaded from a .bin)."""
    tensors = convert(load_state_dict(path)[0])
    mapped, _ = map_tensors(tensors, cfg, arch, source)
    return checkpoint_tensors(tensors, mapped, arch)


def _from_timm_dir(path, raw, config_path, dt, backend, architecture):
    """A directory timm wrote (config.json with `architecture` + `pretrained_cfg`, timm's tensor names)."""
    hf, arch_name, _ = timm.resolve(raw, config_path)
    tensors, what = load_state_dict(path)
    source = os.path.join(path, what)
    model = from_state_dict(hf, timm.convert_tensors(tensors, hf, arch_name, source), architecture or arch_name,
                            dt, backend, source)
    model.source = path
    model.timm_config = raw  # what timm wrote, for `refvit inspect`
    if not _mapped(what):    # read into memory: read again when saved, not kept
        model._reread = lambda: _read_checkpoint(path, model.config, model.architecture, source,
                                                 lambda t: timm.convert_tensors(t, hf, arch_name, source))
        model._checkpoint = None
    return model


# ----------------------------------------------------------------------------------------------------------------------
# transformers-style classes, one per supported architecture, so model-card snippets run with only the import changed:
# `refvit.DeiTForImageClassificationWithTeacher.from_pretrained(dir)`, `refvit.BitModel(refvit.BitConfig())`.


class PretrainedModel(Model):
    """A transformers class run by refvit. `from_pretrained(dir)` loads a checkpoint as this class whatever
    config.json's `architectures` says; `XModel(config, seed=0)` builds one with random weights drawn as transformers'
    `_init_weights` draws them (refvit/initialization.py), from a NumPy generator seeded with `seed` (None: fresh)."""

    architecture_name = ""  # the class name for each class below (a subclass of one of them inherits it)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__base__ is PretrainedModel:
            name = cls.architecture_name = cls.__name__
            cls.__doc__ = (f"transformers' {name}. {cls.__doc__ or ''}\n\n`{name}.from_pretrained(dir)` or "
                           f"`{name}(config, seed=0)` (random weights).")

    def __init__(self, config, *, seed=None, dtype="float32", backend="numba"):
        arch = ARCHITECTURES[self.architecture_name]
        expected = CONFIG_CLASSES[arch.family]
        if not isinstance(config, PretrainedConfig) or config.model_type != arch.family:
            raise ConfigError(f"{self.architecture_name}(config): expected a refvit.{expected.__name__}, got "
                              f"{type(config).__name__} (e.g. {self.architecture_name}(refvit.{expected.__name__}()))")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise InputError(f"seed: expected a non-negative int or None, got {seed!r}")
        dt = _check_options(dtype, backend)
        source = f"{self.architecture_name}(config, seed={seed})"
        cfg = arch.parse_config(config.to_dict(), source)  # this class's own checks (e.g. BiT's width_factor)
        tensors = random_state_dict(arch, cfg, seed)
        mapped, ignored = map_tensors(tensors, cfg, arch, source)
        Model.__init__(self, cfg, prepare_params(mapped, dt, source, arch), arch, dt, backend, source)
        self.checkpoint = checkpoint_tensors(tensors, mapped, arch)

    @property
    def config_class(self):
        return CONFIG_CLASSES[self.architecture.family]

    @classmethod
    def from_pretrained(cls, path, dtype="float32", backend="numba", revision=None):
        return from_pretrained(path, dtype=dtype, backend=backend, architecture=cls.architecture_name,
                               revision=revision)


# One class per row of the families' ARCHITECTURES lists (tests/test_design.py checks the two agree), written out
# so that readers and editors find each where it is defined. The class name is the architecture's name.
class ViTModel(PretrainedModel):
    """The ViT encoder and its pooler (Dosovitskiy et al. 2021)."""


class ViTForImageClassification(PretrainedModel):
    """ViT with an image-classification head on the class token."""


class ViTForMaskedImageModeling(PretrainedModel):
    """ViT with the SimMIM decoder: masked patches back to pixels."""


class DeiTModel(PretrainedModel):
    """The DeiT encoder: ViT with a distillation token."""


class DeiTForImageClassification(PretrainedModel):
    """DeiT with an image-classification head on the class token."""


class DeiTForImageClassificationWithTeacher(PretrainedModel):
    """DeiT averaging its class-token and distillation-token classifiers."""


class DeiTForMaskedImageModeling(PretrainedModel):
    """DeiT with the SimMIM decoder: masked patches back to pixels."""


class CvtModel(PretrainedModel):
    """The CvT encoder: three stages of convolutional token embedding and convolutional projections."""


class CvtForImageClassification(PretrainedModel):
    """CvT with an image-classification head."""


class BitModel(PretrainedModel):
    """The BiT encoder: a pre-activation ResNet with weight-standardised convolutions and GroupNorm."""


class BitForImageClassification(PretrainedModel):
    """BiT with an image-classification head."""


class BitBackbone(PretrainedModel):
    """BiT's stage feature maps (`out_features`), for dense-prediction heads."""


class BeitModel(PretrainedModel):
    """The BEiT encoder: relative position bias and layer scale."""


class BeitForImageClassification(PretrainedModel):
    """BEiT with an image-classification head."""


class BeitForMaskedImageModeling(PretrainedModel):
    """BEiT predicting the visual-token ids of masked patches."""


class BeitForSemanticSegmentation(PretrainedModel):
    """BEiT with the UperNet decode head (and the FCN auxiliary head)."""


class BeitBackbone(PretrainedModel):
    """BEiT's feature maps (`out_features`), through its feature pyramid when `add_fpn`."""


class Data2VecVisionModel(PretrainedModel):
    """The data2vec-vision encoder: BEiT's network under its own checkpoint names."""


class Data2VecVisionForImageClassification(PretrainedModel):
    """data2vec-vision with an image-classification head."""


class Data2VecVisionForSemanticSegmentation(PretrainedModel):
    """data2vec-vision with the UperNet decode head (and the FCN auxiliary head)."""


CLASSES = {c.architecture_name: c for c in PretrainedModel.__subclasses__()}
assert set(CLASSES) == set(ARCHITECTURES), "one class per architecture"


def _directory_config(path, revision) -> tuple:
    """The Auto classes' first step: the model directory (a hub id resolved) and its config.json as read."""
    path = hub.resolve_model_dir(path, revision=revision)
    config_path = os.path.join(os.fspath(path), "config.json")
    return path, read_config_json(config_path), config_path


def _by_model_type(table: dict, raw: dict, config_path: str, what: str) -> str:
    """The class `table` names for config.json's model_type (`what` it is, for the error)."""
    model_type = raw.get("model_type")
    if model_type not in table:
        raise ConfigError(f"{config_path}: no {what} for model_type {model_type!r}; known: {sorted(table)}")
    return table[model_type]


class AutoModel:
    """transformers' AutoModel: the base model of config.json's model_type."""

    @staticmethod
    def from_pretrained(path, dtype="float32", backend="numba", revision=None):
        path, raw, config_path = _directory_config(path, revision)
        if timm.is_timm_config(raw):
            raw, _, _ = timm.resolve(raw, config_path)  # the transformers config it equals
        return from_pretrained(path, dtype, backend, architecture=_by_model_type(BASE_MODELS, raw, config_path,
                                                                                 "base model"))


class AutoModelForImageClassification:
    """transformers' AutoModelForImageClassification: config.json's classification architecture."""

    @staticmethod
    def from_pretrained(path, dtype="float32", backend="numba", revision=None):
        path, raw, config_path = _directory_config(path, revision)
        if timm.is_timm_config(raw):
            return from_pretrained(path, dtype, backend)
        archs = [a for a in raw.get("architectures") or [] if isinstance(a, str) and "ForImageClassification" in a]
        architecture = archs[0] if archs else _by_model_type(CLASSIFIERS, raw, config_path,
                                                             "image-classification architecture")
        return from_pretrained(path, dtype, backend, architecture=architecture)
