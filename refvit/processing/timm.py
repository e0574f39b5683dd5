"""`TimmImageProcessor`: timm's eval transform, from the `pretrained_cfg` of a timm config.json, without torch.

timm builds it as `create_transform(**resolve_data_config(pretrained_cfg=...))` (timm/data/config.py,
timm/data/transforms_factory.py `transforms_imagenet_eval`, timm 1.0.31, torchvision 0.29), for a PIL RGB image:

    scale_size = floor(h / crop_pct), floor(w / crop_pct)         for input_size (3, h, w)
    crop_mode "center"  Resize(shortest edge) when scale_size is square, else ResizeKeepRatio(scale_size);
                        then CenterCrop((h, w))
    crop_mode "squash"  Resize(scale_size) (aspect ratio not kept), then CenterCrop((h, w))
    crop_mode "border"  ResizeKeepRatio(scale_size, longest=1), then CenterCropOrPad((h, w), fill = round(255·mean))
    ToTensor            uint8 -> float32, / 255 (float32 division)
    Normalize           (x - mean) / std in float32

Quirks reproduced (each differs from transformers' processors):
- torchvision's resize of a PIL image is `Image.resize((w, h), filter)` (no reducing_gap), skipped entirely when the
  size already matches; the shortest-edge size truncates the long edge (`int(size * long / short)`);
- ResizeKeepRatio rounds each edge with Python's round (half to even): `round(edge / ratio)`;
- CenterCrop's offset is `int(round((H - h) / 2))` (half to even), not transformers' floor; a crop larger than the
  image pads with zeros first, left/top getting `(h - H) // 2`;
- ToTensor divides by 255 in float32, where transformers multiplies by 1/255 in float64 and then casts;
- resolve_data_config's defaults: input_size (3, 224, 224), interpolation "bicubic", ImageNet mean/std,
  crop_pct 0.875 (also when crop_pct is 0 or null: `crop_pct or DEFAULT_CROP_PCT`), crop_mode "center".
Images go through refvit's `load_image` first (upright RGB, as transformers' load_image): timm's readers open with
`.convert("RGB")` but do not apply the EXIF orientation, so a photo with an EXIF rotation differs from timm's pixels
by exactly that rotation; every other image gets timm's pixels.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from PIL import Image

from .. import hub
from ..config import read_config_json
from ..errors import ConfigError, InputError
from ..tensors import check_return_tensors, convert
from .feature import BatchFeature
from .images import flat_list_of_images, load_image
from .transforms import check_output_size

DEFAULT_CROP_PCT = 0.875        # timm/data/constants.py
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_MODE = "center"
# timm's interpolation names -> torchvision InterpolationMode -> PIL filter (torchvision pil_modes_mapping)
INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
                  "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS}
CROP_MODES = ("center", "squash", "border")


class TimmImageProcessor:
    """timm's eval transform. `TimmImageProcessor.from_pretrained(timm_dir)` reads config.json's pretrained_cfg."""

    def __init__(self, input_size=(3, 224, 224), interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN,
                 std=IMAGENET_DEFAULT_STD, crop_pct=DEFAULT_CROP_PCT, crop_mode=DEFAULT_CROP_MODE):
        problems = []
        if (not isinstance(input_size, (list, tuple)) or len(input_size) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)):
            problems.append(f"input_size: expected [channels, height, width] of positive ints, got {input_size!r}")
            input_size = (3, 224, 224)
        elif input_size[0] != 3:
            problems.append(f"input_size: {input_size[0]} channels; refvit's timm transform makes RGB (3) inputs")
        if interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation: expected one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
        crop_pct = crop_pct or DEFAULT_CROP_PCT  # quirk: `crop_pct or DEFAULT_CROP_PCT` (0 / null -> 0.875)
        if not is_number(crop_pct) or crop_pct <= 0:
            problems.append(f"crop_pct: expected a positive number, got {crop_pct!r}")
            crop_pct = DEFAULT_CROP_PCT
        crop_mode = crop_mode or DEFAULT_CROP_MODE
        if crop_mode not in CROP_MODES:
            problems.append(f"crop_mode: expected one of {CROP_MODES}, got {crop_mode!r}")
        for key, value in (("mean", mean), ("std", std)):
            if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(is_number(v) for v in value):
                problems.append(f"{key}: expected 3 finite numbers (one per RGB channel), got {value!r}")
            elif key == "std" and any(v == 0 for v in value):
                problems.append(f"std: must not contain 0, got {list(value)}")
        if problems:
            raise ConfigError("TimmImageProcessor: " + "; ".join(problems))
        self.input_size = tuple(int(v) for v in input_size)
        self.interpolation = interpolation
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.crop_pct = float(crop_pct)
        self.crop_mode = crop_mode

    @classmethod
    def from_pretrained_cfg(cls, pretrained_cfg: dict, source: str = "pretrained_cfg",
                            **overrides) -> TimmImageProcessor:
        """resolve_data_config(pretrained_cfg=...) (use_test_size=False); `overrides` play the role of its `args`."""
        if not isinstance(pretrained_cfg, dict):
            raise ConfigError(f"{source}: pretrained_cfg must be an object, got {type(pretrained_cfg).__name__}")
        c = pretrained_cfg
        settings = {"input_size": c.get("input_size") or (3, 224, 224),  # a missing or null entry keeps the default
                    "interpolation": c.get("interpolation") or "bicubic",
                    "mean": c.get("mean") or IMAGENET_DEFAULT_MEAN,
                    "std": c.get("std") or IMAGENET_DEFAULT_STD, "crop_pct": c.get("crop_pct") or DEFAULT_CROP_PCT,
                    "crop_mode": c.get("crop_mode") or DEFAULT_CROP_MODE}
        unknown = sorted(set(overrides) - set(settings))
        if unknown:
            raise ConfigError(f"TimmImageProcessor: unknown arguments {unknown}; valid: {sorted(settings)}")
        try:
            return cls(**{**settings, **overrides})
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_pretrained(cls, path, revision: str | None = None, **overrides) -> TimmImageProcessor:
        """A timm directory (or hub id): config.json's `pretrained_cfg`."""
        path = hub.resolve_model_dir(path, revision=revision)
        file = os.path.join(os.fspath(path), "config.json") if os.path.isdir(path) else os.fspath(path)
        raw = read_config_json(file)
        if "pretrained_cfg" not in raw:
            raise ConfigError(f"{file}: no pretrained_cfg (not a config.json written by timm)")
        return cls.from_pretrained_cfg(raw["pretrained_cfg"], f"{file}: pretrained_cfg", **overrides)

    def to_dict(self) -> dict:
        """timm's data config (resolve_data_config's keys)."""
        return {"input_size": self.input_size, "interpolation": self.interpolation, "mean": self.mean,
                "std": self.std, "crop_pct": self.crop_pct, "crop_mode": self.crop_mode}

    def __repr__(self) -> str:
        return f"TimmImageProcessor({self.to_dict()})"

    def __call__(self, images: Any = None, return_tensors: str | None = "np") -> BatchFeature:
        """One image or a list (PIL images, paths, uint8 arrays (H, W, 3)) ->
        BatchFeature(pixel_values (B, 3, h, w))."""
        check_return_tensors(return_tensors)
        if images is None:
            raise InputError("images is required")
        batch = [self.transform(load_image(image)) for image in flat_list_of_images(images)]
        return convert(BatchFeature(pixel_values=np.stack(batch)), return_tensors)

    preprocess = __call__

    def transform(self, image: Image.Image) -> np.ndarray:
        """transforms_imagenet_eval on one upright RGB PIL image -> (3, h, w) float32."""
        h, w = self.input_size[1:]
        scale = (math.floor(h / self.crop_pct), math.floor(w / self.crop_pct))
        if self.crop_mode == "squash":
            image = self._resize(image, scale)
            pixels = center_crop(np.asarray(image), (h, w), 0)
        elif self.crop_mode == "border":
            image = self._resize(image, keep_ratio_size(image.height, image.width, scale, longest=1.0))
            fill = [round(255 * v) for v in self.mean]  # transforms_imagenet_eval: fill in uint8 units
            pixels = center_crop(np.asarray(image), (h, w), fill)
        else:
            if scale[0] == scale[1]:  # torchvision Resize(int): the shortest edge
                size = shortest_edge_size(image.height, image.width, scale[0])
            else:
                size = keep_ratio_size(image.height, image.width, scale, longest=0.0)
            pixels = center_crop(np.asarray(self._resize(image, size)), (h, w), 0)
        x = pixels.astype(np.float32) / np.float32(255)  # ToTensor: float32 division
        x = (x - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)  # Normalize, float32
        return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, h, w)

    def _resize(self, image: Image.Image, size: tuple) -> Image.Image:
        """torchvision F.resize on a PIL image: nothing when the size matches, else Image.resize((w, h), filter)."""
        if (image.height, image.width) == tuple(size):
            return image
        check_output_size(*size, "resize")
        return image.resize((size[1], size[0]), INTERPOLATIONS[self.interpolation])


def is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision _compute_resized_output_size for Resize(int): the short edge to `size`, the long one truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def keep_ratio_size(height: int, width: int, target: tuple, longest: float) -> tuple[int, int]:
    """timm ResizeKeepRatio.get_params (no random scale/aspect): one ratio for both edges, rounded half to even."""
    ratio_h, ratio_w = height / target[0], width / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(height * 1.0 / ratio), round(width * 1.0 / ratio)


def center_crop(pixels: np.ndarray, size: tuple, fill) -> np.ndarray:
    """torchvision center_crop / timm center_crop_or_pad on (H, W, 3) uint8: pad (with `fill`) when too small, then
    crop at int(round((H - h) / 2)) (half to even)."""
    crop_h, crop_w = size
    H, W = pixels.shape[:2]
    if crop_w > W or crop_h > H:
        left, top = ((crop_w - W) // 2 if crop_w > W else 0), ((crop_h - H) // 2 if crop_h > H else 0)
        right, bottom = ((crop_w - W + 1) // 2 if crop_w > W else 0), ((crop_h - H + 1) // 2 if crop_h > H else 0)
        check_output_size(H + top + bottom, W + left + right, "center crop (padding)")
        padded = np.empty((H + top + bottom, W + left + right, pixels.shape[2]), np.uint8)
        padded[...] = np.asarray(fill, np.uint8)
        padded[top:top + H, left:left + W] = pixels
        pixels, H, W = padded, padded.shape[0], padded.shape[1]
        if (H, W) == (crop_h, crop_w):
            return pixels
    top, left = int(round((H - crop_h) / 2.0)), int(round((W - crop_w) / 2.0))
    return pixels[top:top + crop_h, left:left + crop_w]


def is_timm_dir(path) -> bool:
    """A directory whose config.json timm wrote (and no preprocessor_config.json of transformers' kind)."""
    from ..timm import is_timm_config

    path = os.fspath(path)
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        return False
    try:
        return is_timm_config(read_config_json(os.path.join(path, "config.json")))
    except ConfigError:
        return False
