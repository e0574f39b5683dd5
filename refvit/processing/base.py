"""`ImageProcessor`: transformers' ViTImageProcessorPil pipeline every family's processor specialises, its settings
(parsed and validated as image_processing_utils.get_size_dict & co) and its output container."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import hub
from ..errors import ConfigError, InputError, RefvitError
from ..tensors import check_return_tensors, convert
from .config import processor_name, read_processor_config
from .feature import BatchFeature
from .images import flat_list_of_images, to_hwc
from .transforms import center_crop, normalize, rescale, resize

# transformers/image_utils.py constants
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PILImageResampling is PIL.Image.Resampling; transformers' `resampling_validator` accepts ints 0..5 only.
RESAMPLE_NAMES = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


# ----------------------------------------------------------------------------------------------------
# Output container


# ----------------------------------------------------------------------------------------------------
# Configuration: parsing and validation (transformers/image_processing_utils.py get_size_dict & co)

_BOOL_KEYS = (
    "do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb", "default_to_square", "do_pad",
)
PROCESSING_KEYS = _BOOL_KEYS + (
    "size", "crop_size", "resample", "rescale_factor", "image_mean", "image_std", "pad_size",
    "data_format", "input_data_format",
)
_SIZE_KEY_SETS = (  # image_processing_utils.VALID_SIZE_DICT_KEYS
    {"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"}, {"longest_edge"},
    {"max_height", "max_width"}, {"min_pixels", "max_pixels"},
)
_RESIZABLE_SIZE_KEY_SETS = (  # the ones PilBackend.resize handles
    {"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"}, {"max_height", "max_width"},
)
_CHANNEL_FORMATS = ("channels_first", "channels_last")


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def _size_dict(key: str, value: Any, default_to_square: bool, error: type) -> dict[str, int]:
    """`get_size_dict`: legacy int / (h, w) list / dict -> a size dict with a valid key set."""
    if is_int(value):
        # legacy int size: a square when default_to_square (ViT/DeiT's class default), else the shortest edge
        value = {"height": int(value), "width": int(value)} if default_to_square else {"shortest_edge": int(value)}
    elif isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise error(f"{key}: a list size must be [height, width], got {value!r}")
        value = {"height": value[0], "width": value[1]}  # quirk: lists are (height, width), never (width, height)
    elif not isinstance(value, Mapping):
        raise error(f"{key}: must be an int, [height, width] or a dict, got {type(value).__name__} {value!r}")
    keys = set(value)
    if keys not in _SIZE_KEY_SETS:
        raise error(f"{key}: keys {sorted(keys)} are not one of {[sorted(s) for s in _SIZE_KEY_SETS]}")
    for k, v in value.items():
        if not is_int(v) or v <= 0:
            raise error(f"{key}[{k!r}]: must be a positive int, got {v!r}")
    return {k: int(v) for k, v in value.items()}


def _mean_std(key: str, value: Any, error: type) -> tuple[float, ...]:
    if is_number(value):
        return (float(value),) * 3  # a scalar applies to every channel
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(is_number(v) for v in value):
        if key == "image_std" and any(v == 0 for v in value):
            raise error(f"{key}: must not contain 0, got {list(value)}")
        return tuple(float(v) for v in value)
    raise error(f"{key}: must be a number or a list of 3 finite numbers (one per RGB channel), got {value!r}")


def validate_settings(settings: dict[str, Any], error: type, where: str) -> dict[str, Any]:
    """Check types and combinations of the processing keys; returns the normalised settings."""
    s = dict(settings)
    for key in _BOOL_KEYS:
        if s.get(key) is not None and not isinstance(s[key], (bool, np.bool_)):
            raise error(f"{where}{key}: must be true, false or null, got {type(s[key]).__name__} {s[key]!r}")
    default_to_square = bool(s.get("default_to_square"))  # quirk: an explicit null acts as false (shortest edge)
    for key in ("size", "crop_size"):
        if s.get(key) is not None:
            # crop_size always uses default_to_square=True (get_size_dict's default), size the configured value
            s[key] = _size_dict(where + key, s[key], default_to_square if key == "size" else True, error)
    resample = s.get("resample")
    if resample is not None:
        if not is_int(resample) or int(resample) not in RESAMPLE_NAMES:
            raise error(f"{where}resample: must be a PIL resampling code {RESAMPLE_NAMES}, got {resample!r}")
        s["resample"] = int(resample)
    if s.get("rescale_factor") is not None and not is_number(s["rescale_factor"]):
        raise error(f"{where}rescale_factor: must be a finite number, got {s['rescale_factor']!r}")
    for key in ("image_mean", "image_std"):
        if s.get(key) is not None:
            s[key] = _mean_std(where + key, s[key], error)
    if s.get("do_pad"):
        raise error(f"{where}do_pad: padding is not part of the ViT/DeiT processors and is not supported")
    if s.get("data_format") not in (None, "channels_first"):
        raise error(f"{where}data_format: refvit always returns channels_first, got {s['data_format']!r}")
    if s.get("input_data_format") not in (None,) + _CHANNEL_FORMATS:
        raise error(
            f"{where}input_data_format: must be one of {_CHANNEL_FORMATS} or null, got {s['input_data_format']!r}"
        )
    # image_utils.validate_preprocess_arguments
    if s.get("do_rescale") and s.get("rescale_factor") is None:
        raise error(f"{where}rescale_factor: must be set when do_rescale is true")
    if s.get("do_normalize") and (s.get("image_mean") is None or s.get("image_std") is None):
        raise error(f"{where}image_mean/image_std: both must be set when do_normalize is true")
    if s.get("do_center_crop"):
        if s.get("crop_size") is None:
            raise error(f"{where}crop_size: must be set when do_center_crop is true")
        if set(s["crop_size"]) != {"height", "width"}:
            raise error(f"{where}crop_size: center crop needs height and width, got {s['crop_size']}")
    if s.get("do_resize"):
        if s.get("size") is None or s.get("resample") is None:
            raise error(f"{where}size/resample: both must be set when do_resize is true")
        if set(s["size"]) not in _RESIZABLE_SIZE_KEY_SETS:
            raise error(
                f"{where}size: the PIL backend cannot resize to {s['size']} (use height/width or shortest_edge)"
            )
    return s


def output_size(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    """PilBackend.resize: the (height, width) a size dict asks for, given the image's (height, width)."""
    if "shortest_edge" in size and "longest_edge" in size:
        return _size_with_aspect_ratio(height, width, size["shortest_edge"], size["longest_edge"])
    if "shortest_edge" in size:
        # image_transforms.get_resize_output_image_size(default_to_square=False)
        short, long = (width, height) if width <= height else (height, width)
        # quirk: the long edge is truncated (int), not rounded
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if "max_height" in size:
        # image_utils.get_image_size_for_max_height_width: scale so one edge meets its maximum (also upscales)
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    return size["height"], size["width"]


def _size_with_aspect_ratio(height: int, width: int, size: int, max_size: int) -> tuple[int, int]:
    """image_transforms.get_size_with_aspect_ratio (shortest_edge capped by longest_edge)."""
    raw_size = None
    min_original, max_original = float(min(height, width)), float(max(height, width))
    if max_original / min_original * size > max_size:
        raw_size = max_size * min_original / max_original
        size = int(round(raw_size))
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        return (int(raw_size * height / width) if raw_size is not None else int(size * height / width)), size
    return size, (int(raw_size * width / height) if raw_size is not None else int(size * width / height))


# ----------------------------------------------------------------------------------------------------
# The processor


class ImageProcessor:
    """transformers' `ViTImageProcessorPil` pipeline; subclasses only change the class defaults.

    `ImageProcessor.from_pretrained(path)` (and `AutoImageProcessor`) picks the ViT or DeiT class from
    `preprocessor_config.json`; `ViTImageProcessor(**kwargs)` / `DeiTImageProcessor(**kwargs)` build one
    from that family's transformers defaults. Calling it returns `BatchFeature(pixel_values=(B, 3, H, W) float32)`.
    """

    # class defaults = transformers' ViTImageProcessorPil (models/vit/image_processing_pil_vit.py)
    do_resize = True
    size: Any = {"height": 224, "width": 224}
    resample = 2  # BILINEAR
    do_center_crop = None
    crop_size: Any = None
    do_rescale = True
    rescale_factor = 1 / 255  # BaseImageProcessor.rescale_factor
    do_normalize = True
    image_mean: Any = IMAGENET_STANDARD_MEAN
    image_std: Any = IMAGENET_STANDARD_STD
    do_convert_rgb = None  # quirk: ViT/DeiT never convert unless asked, so L/RGBA/P inputs are refused
    default_to_square = True
    do_pad = None
    pad_size = None
    data_format = "channels_first"
    input_data_format = None
    extra_keys: tuple = ()  # settings only this processor class reads (ConvNextImageProcessor: crop_pct)

    def __init__(self, **kwargs: Any):
        unknown = sorted(set(kwargs) - set(self._keys()))
        if unknown:
            raise ConfigError(f"{type(self).__name__}: unknown arguments {unknown}; valid: {sorted(self._keys())}")
        # quirk (ImageProcessingMixin.__init__ sets every kwarg first): an explicit None / JSON null is kept,
        # it does not fall back to the class default (DeiT with "do_center_crop": null does not crop)
        settings = {k: kwargs[k] if k in kwargs else getattr(type(self), k) for k in self._keys()}
        for key, value in self._check_settings(settings, ConfigError, "").items():
            setattr(self, key, value)

    @classmethod
    def _keys(cls) -> tuple:
        return PROCESSING_KEYS + cls.extra_keys

    def _check_settings(self, settings: dict[str, Any], error: type, where: str) -> dict[str, Any]:
        """Validate settings (at load: ConfigError; per call: InputError); subclasses add their own checks."""
        return validate_settings(settings, error, where)

    # -- loading -------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, revision: str | None = None, **overrides: Any) -> ImageProcessor:
        """Read `<path>/preprocessor_config.json` (or `path` itself if it is the JSON file); `path` may be a hub id
        (`"facebook/deit-small-distilled-patch16-224"`, `revision=` a branch, tag or sha: refvit.hub).

        On `ImageProcessor` / `AutoImageProcessor` the class comes from `image_processor_type`, else the
        legacy `feature_extractor_type` ("DeiTFeatureExtractor" -> DeiT), else `model_type` in a sibling
        config.json; on `ViTImageProcessor` / `DeiTImageProcessor` that class is used, as in transformers.
        """
        if cls is ImageProcessor:  # a directory timm wrote: its pretrained_cfg (timm.py)
            from .timm import TimmImageProcessor, is_timm_dir

            if is_timm_dir(path):
                return TimmImageProcessor.from_pretrained(path, **overrides)
            try:
                path = hub.resolve_model_dir(path, revision=revision, files="processor")
            except RefvitError as err:  # a timm hub repo has no preprocessor file: its config.json may be timm's
                try:
                    config_dir = hub.resolve_model_dir(path, revision=revision, files="config")
                except RefvitError:
                    raise err from None
                if not is_timm_dir(config_dir):
                    raise err from None
                return TimmImageProcessor.from_pretrained(config_dir, **overrides)
            if is_timm_dir(path):
                return TimmImageProcessor.from_pretrained(path, **overrides)
        path = hub.resolve_model_dir(path, revision=revision, files="processor")
        config, file = read_processor_config(path)
        target = processor_class(processor_name(config, file)) if cls is ImageProcessor else cls
        settings = {k: v for k, v in config.items() if k in target._keys()}  # other keys are ignored, as upstream
        settings.update(overrides)
        try:
            return target(**settings)
        except ConfigError as err:
            raise ConfigError(f"{file}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The settings as transformers' `to_dict` writes them (class name without the Pil suffix)."""
        out = {k: getattr(self, k) for k in self._keys() if getattr(self, k) is not None}
        out.pop("data_format", None)
        out["image_processor_type"] = type(self).__name__.replace("FeatureExtractor", "ImageProcessor")
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=list) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write `preprocessor_config.json` into `save_directory` (created if missing), as transformers' image
        processors do; atomically (a temporary file, then renamed). Returns the file's path."""
        from ..checkpoint.write import write_bytes_atomic
        save_directory = os.fspath(save_directory)
        if os.path.exists(save_directory) and not os.path.isdir(save_directory):
            raise ConfigError(f"{save_directory}: is not a directory (save_pretrained writes preprocessor_config.json "
                              "into a directory)")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, "preprocessor_config.json")
        write_bytes_atomic(path, self.to_json_string().encode("utf-8"))
        return path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True, default=list)})"

    # -- calling -------------------------------------------------------------------------------------

    def __call__(self, images: Any = None, return_tensors: str | None = "np", **overrides: Any) -> BatchFeature:
        """Preprocess one image or a list of images; returns `BatchFeature(pixel_values=(B, 3, H, W) float32)`.

        images: PIL images, paths (read with `load_image`), or numpy arrays (H, W, C) / (C, H, W) with
        C in {1, 3, 4} (1 and 4 need `do_convert_rgb=True`), or a 4-D array (B, ...) as a batch.
        `overrides` replace this processor's settings for this call (same keys as the config).
        """
        check_return_tensors(return_tensors)  # None / "np": NumPy; "pt": torch tensors (torch installed)
        unknown = sorted(set(overrides) - set(self._keys()))
        if unknown:
            raise InputError(f"unknown processor arguments {unknown}; valid: {sorted(self._keys())}")
        settings = {k: getattr(self, k) for k in self._keys()}
        settings.update(overrides)  # quirk: an explicit None override disables the setting for this call
        s = self._check_settings(settings, InputError, "argument ")
        batch = [self._preprocess_one(image, s) for image in flat_list_of_images(images)]
        return convert(BatchFeature(pixel_values=np.stack(batch).astype(np.float32, copy=False)), return_tensors)

    preprocess = __call__

    def _preprocess_one(self, image: Any, s: dict[str, Any]) -> np.ndarray:
        """PilBackend.process_image then PilBackend._preprocess for one image; returns (3, H, W) float32."""
        pixels = to_hwc(image, s["do_convert_rgb"], s["input_data_format"])  # (h, w, 3)
        if s["do_resize"]:
            pixels = self._resize(pixels, s)
        if s["do_center_crop"]:
            pixels = center_crop(pixels, (s["crop_size"]["height"], s["crop_size"]["width"]))
        if s["do_rescale"]:
            pixels = rescale(pixels, s["rescale_factor"])
        if s["do_normalize"]:
            pixels = normalize(pixels, s["image_mean"], s["image_std"])
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32, copy=False)  # (3, H, W)

    def _resize(self, pixels: np.ndarray, s: dict[str, Any]) -> np.ndarray:
        """PilBackend.resize: to the (height, width) the size dict asks for."""
        return resize(pixels, output_size(*pixels.shape[:2], s["size"]), s["resample"])


def processor_class(name: str) -> type[ImageProcessor]:
    """The ImageProcessor subclass called `name` (one of refvit/processing/config.py's PROCESSOR_NAMES), found among
    the subclasses defined in refvit/processing: the package imports every family's module, so all exist by the time
    any from_pretrained runs, and base.py needs no import of the modules that import it."""
    todo, found = [ImageProcessor], {}
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("refvit.processing."):
                found.setdefault(sub.__name__, sub)
            todo.append(sub)
    return found[name]
