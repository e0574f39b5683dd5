"""Image loading and the ViT/DeiT image processors, exactly as transformers' PIL backend computes them.

Reference: transformers 5.23 `image_processing_backends.PilBackend` (the `*ImageProcessorPil` classes),
`image_transforms.{resize, center_crop, rescale, normalize, convert_to_rgb}` and
`image_utils.load_image`. The pipeline for each image is

    process_image   PIL / array -> (H, W, 3) pixels      (optional `convert_to_rgb`)
    resize          PIL `Image.resize` on uint8 pixels   (size dict -> (height, width))
    center_crop     slice, zero-padding when too small
    rescale         float64 multiply, then float32
    normalize       (x - mean) / std in float32

and the batch is stacked to `pixel_values` (B, 3, H, W) float32. transformers works channels-first
(C, H, W) throughout; we work channels-last (H, W, C) and transpose once at the end: every step is
element-wise or spatial, so the numbers are bit-identical.

`load_image` mode conversions (the `convert("RGB")` rows are what `transformers.image_utils.load_image`
does, so `refvit.load_image` + processor == transformers' `load_image` + processor, the pipeline path):

    RGB                              kept
    1, L, P, CMYK, YCbCr, RGBX, ...  Pillow's `convert("RGB")`                 (as transformers)
    RGBA, LA, PA, P+transparency     `convert("RGB")`: alpha is dropped        (as transformers' load_image;
                                     the processor's `do_convert_rgb=True` instead composites onto white)
    I;16*, I                         16-bit range scaled to 8 bits, round(v * 255 / 65535)   (transformers
                                     clips at 255, which makes most 16-bit photos white: deliberate change)
    F                                [0, 1] data scaled by 255, anything else clipped to [0, 255], rounded
                                     (transformers truncates and clips: deliberate change)

What transformers does that refvit deliberately does not:
- no URLs, no base64 strings: refvit never downloads (ImageError);
- images over Pillow's `Image.MAX_IMAGE_PIXELS` (its *warning* level) are refused, not just warned about;
- a resize or padded crop whose output would be empty or exceed `Image.MAX_IMAGE_PIXELS` (a hostile
  preprocessor_config.json, or an extreme aspect ratio with `shortest_edge`) raises InputError before allocating;
- corrupt EXIF is tolerated (orientation ignored) instead of raising;
- non-RGB inputs without `do_convert_rgb` (PIL modes L/LA/P/RGBA/CMYK/I/F/YCbCr/..., arrays with 1 or 4
  channels) raise InputError up front; transformers fails later in `normalize` (or, for 3-band modes like
  YCbCr/HSV/LAB, silently treats the bands as RGB);
- non-finite pixel values raise InputError; `pixel_values` is always a stacked float32 array (transformers
  returns a list for `return_tensors=None`, uint8 when nothing rescales, float64 for float64 inputs);
- only the PIL backend is reproduced: transformers' default `AutoImageProcessor` picks the torchvision
  backend when torchvision is installed, whose resize differs slightly (antialiased tensor resize);
- `do_pad=True` and the size dicts `{longest_edge}` / `{min_pixels, max_pixels}` raise ConfigError at load
  (the PIL backend of ViT/DeiT cannot use them either; transformers fails only at call time).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pathlib
import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from . import hub
from .errors import ConfigError, ImageError, InputError, RefvitError
from .tensors import check_return_tensors, convert

__all__ = [
    "load_image",
    "BatchFeature",
    "ImageProcessor",
    "ViTImageProcessor",
    "DeiTImageProcessor",
    "ViTFeatureExtractor",
    "DeiTFeatureExtractor",
    "ConvNextImageProcessor",
    "ConvNextFeatureExtractor",
    "BeitImageProcessor",
    "BeitFeatureExtractor",
    "BitImageProcessor",
    "AutoImageProcessor",
    "AutoFeatureExtractor",
    "resize",
    "center_crop",
    "rescale",
    "normalize",
]

# transformers/image_utils.py constants
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PILImageResampling is PIL.Image.Resampling; transformers' `resampling_validator` accepts ints 0..5 only.
RESAMPLE_NAMES = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}
MAX_JSON_BYTES = 16 * 2**20  # preprocessor_config.json (and the config.json it may consult): as config.json's limit

# ----------------------------------------------------------------------------------------------------
# load_image


def load_image(source: Any) -> Image.Image:
    """Open `source` and return an upright RGB `PIL.Image.Image`.

    `source`: a path (str / os.PathLike), bytes, a binary file object, a PIL image, or a uint8 array
    (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (uint16 and float arrays follow the I;16 and F rules).
    Matches `transformers.image_utils.load_image` (EXIF transpose, then RGB) except for the deliberate
    changes listed in this module's docstring. Raises ImageError naming the file for URLs, missing
    files, non-images, truncated data and decompression bombs (Pillow's `Image.MAX_IMAGE_PIXELS`,
    read at call time and never modified; `None` there disables the limit, as in Pillow).
    """
    if isinstance(source, Image.Image):
        return _upright_rgb(_decoded(source), "<PIL image>")
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open_and_convert(io.BytesIO(bytes(source)), "<bytes>")
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", name) or name.startswith("data:"):
            raise ImageError(f"{name!r} is a URL: refvit never downloads; fetch the file yourself and pass its path")
        if not os.path.isfile(name):
            raise ImageError(f"{name}: no such image file")
        return _open_and_convert(name, name)
    if hasattr(source, "read"):
        return _open_and_convert(source, str(getattr(source, "name", "<file object>")))
    raise InputError(
        f"load_image takes a path, bytes, a file object, a PIL image or a numpy array, got {type(source).__name__}"
    )


def _open_and_convert(fp: Any, name: str) -> Image.Image:
    """Image.open + bomb check + full decode + EXIF transpose + RGB, every failure an ImageError."""
    limit = Image.MAX_IMAGE_PIXELS
    with _image_errors(name, limit):
        # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; we refuse both (local filter only).
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as image:
                _check_pixels(image, name, limit)
                image.load()  # decode now: truncated data fails here, inside this guard
                return _upright_rgb(image, name)


def _decoded(image: Image.Image) -> Image.Image:
    """A PIL image handed in (maybe lazily opened), fully decoded, decoding errors as ImageError."""
    name = getattr(image, "filename", "") or "<PIL image>"
    with _image_errors(name, Image.MAX_IMAGE_PIXELS):
        if isinstance(image, ImageFile.ImageFile):  # from a file (maybe not decoded yet): Pillow's bomb limit applies
            _check_pixels(image, name, Image.MAX_IMAGE_PIXELS)
        image.load()
    return image


@contextlib.contextmanager
def _image_errors(name: str, limit: int | None) -> Iterator[None]:
    """Turn whatever Pillow raises while opening or decoding `name` into an ImageError naming it."""
    try:
        yield
    except RefvitError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{name}: decompression bomb refused ({err}); Image.MAX_IMAGE_PIXELS is {limit}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can identify") from None
    except MemoryError:
        raise
    except Exception as err:  # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError, struct.error ...
        raise ImageError(f"{name}: cannot decode image (truncated or corrupt): {type(err).__name__}: {err}") from None


def _check_pixels(image: Image.Image, name: str, limit: int | None) -> None:
    """Pillow's own size check, repeated explicitly so it also holds if a caller filters the warning out."""
    width, height = image.size
    if limit is not None and width * height > limit:
        raise ImageError(
            f"{name}: {width}x{height} = {width * height} pixels exceeds Image.MAX_IMAGE_PIXELS = {limit} "
            "(decompression bomb refused; raise Pillow's limit yourself if the image is trusted)"
        )


def _upright_rgb(image: Image.Image, name: str) -> Image.Image:
    return _to_rgb(_exif_transpose(image), name)


def _exif_transpose(image: Image.Image) -> Image.Image:
    """ImageOps.exif_transpose, as transformers' load_image; a corrupt EXIF block leaves the image as is."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # corrupt EXIF: transformers raises here, we ignore the orientation tag instead
        return image


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Every PIL mode to RGB (table in the module docstring)."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode == "I" or mode.startswith("I;16"):
        return _gray_to_rgb(_sixteen_bit_to_uint8(np.asarray(image)))
    if mode == "F":
        return _gray_to_rgb(_float_to_uint8(np.asarray(image), name))
    try:
        return image.convert("RGB")  # as transformers' load_image: alpha and palette transparency are dropped
    except Exception as err:
        raise ImageError(f"{name}: cannot convert PIL mode {mode!r} to RGB: {err}") from None


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 with round-half-up of v * 255 / 65535 (I is treated as 16-bit, clipped)."""
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _float_to_uint8(values: np.ndarray, name: str) -> np.ndarray:
    """Float pixels: data inside [0, 1] is scaled by 255, anything else is taken as 0..255 and clipped."""
    v = values.astype(np.float64)
    if not np.all(np.isfinite(v)):
        raise ImageError(f"{name}: float image contains NaN or infinity")
    if v.size and v.min() >= 0.0 and v.max() <= 1.0:
        v = v * 255.0
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    """An (H, W[, 1|3|4]) array to an RGB image; 4 channels drop alpha like `convert("RGB")`."""
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        pixels = array[:, :, :3] if array.shape[2] == 4 else array
    elif array.ndim == 2:
        pixels = array[:, :, None]
    else:
        raise InputError(
            f"load_image needs an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got shape {array.shape}"
        )
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise InputError(f"load_image got an empty array of shape {array.shape}")
    if pixels.dtype == np.uint8:
        pass
    elif pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * 255  # like PIL mode "1"
    elif pixels.dtype == np.uint16:
        pixels = _sixteen_bit_to_uint8(pixels)  # like PIL mode "I;16"
    elif np.issubdtype(pixels.dtype, np.integer):
        if pixels.min() < 0 or pixels.max() > 255:
            raise InputError(f"integer image array of dtype {pixels.dtype} has values outside [0, 255]")
        pixels = pixels.astype(np.uint8)
    elif np.issubdtype(pixels.dtype, np.floating):
        try:
            pixels = _float_to_uint8(pixels, "<array>")  # like PIL mode "F"
        except ImageError as err:
            raise InputError(str(err)) from None
    else:
        raise InputError(f"load_image cannot read an image array of dtype {pixels.dtype}")
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


# ----------------------------------------------------------------------------------------------------
# The pipeline steps (transformers/image_transforms.py), on channels-last arrays


def resize(image: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """`image_transforms.resize`: through a PIL image, (height, width) = size; returns (h, w, 3).

    uint8 images (and integer-valued float images in [0, 255]) are resized as uint8 and come back uint8;
    float images in [0, 1] are multiplied by 255, truncated to uint8, resized, and divided by 255.
    """
    _check_output_size(*size, "resize")
    do_rescale = _rescale_for_pil_conversion(image)
    if do_rescale:
        image = rescale(image, 255)  # quirk: [0, 1] floats go to uint8 by *truncation* (127.5 -> 127)
    pil_image = Image.fromarray(np.ascontiguousarray(image.astype(np.uint8)), "RGB")
    height, width = size
    # quirk: reducing_gap is never passed by the PIL backend (None = one-step resampling)
    resized = np.asarray(pil_image.resize((width, height), resample=resample, reducing_gap=None))
    return rescale(resized, 1 / 255) if do_rescale else resized


def _check_output_size(height: int, width: int, what: str) -> None:
    """An image the processor is about to allocate: not empty, and within Pillow's `Image.MAX_IMAGE_PIXELS` (read at
    call time; None disables it), so a preprocessor config or an extreme aspect ratio cannot allocate without bound."""
    limit = Image.MAX_IMAGE_PIXELS
    if height < 1 or width < 1:
        raise InputError(f"{what}: output size {height}x{width} is empty (size too small for this aspect ratio)")
    if limit is not None and height * width > limit:
        raise InputError(
            f"{what}: output size {height}x{width} = {height * width} pixels exceeds Image.MAX_IMAGE_PIXELS = {limit} "
            "(refused to bound memory; raise Pillow's limit yourself if you mean it)"
        )


def _rescale_for_pil_conversion(image: np.ndarray) -> bool:
    """`image_transforms._rescale_for_pil_conversion`: does a float image need *255 before uint8?"""
    if image.dtype == np.uint8:
        return False
    if np.allclose(image, image.astype(int)):  # quirk: "integer-valued" uses allclose (rtol 1e-5), then truncates
        if np.all(image >= 0) and np.all(image <= 255):
            return False
        raise InputError(f"image values outside [0, 255] cannot be resized: [{image.min()}, {image.max()}]")
    if np.all(image >= 0) and np.all(image <= 1):
        return True
    raise InputError(
        "float image values must be in [0, 1] or integers in [0, 255] to be resized, "
        f"got [{image.min()}, {image.max()}]"
    )


def center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image_transforms.center_crop` on (h, w, C): crop (height, width), zero-padding a too-small image."""
    orig_height, orig_width = image.shape[:2]
    crop_height, crop_width = size
    top = (orig_height - crop_height) // 2  # quirk: floor offset, so an odd excess leaves the extra row at the bottom
    bottom = top + crop_height
    left = (orig_width - crop_width) // 2
    right = left + crop_width
    if top >= 0 and bottom <= orig_height and left >= 0 and right <= orig_width:
        return image[top:bottom, left:right]
    new_height = max(crop_height, orig_height)
    new_width = max(crop_width, orig_width)
    _check_output_size(new_height, new_width, "center_crop (zero padding)")
    padded = np.zeros((new_height, new_width) + image.shape[2:], dtype=image.dtype)
    top_pad = math.ceil((new_height - orig_height) / 2)  # quirk: padding uses ceil, the extra zero row goes on top
    left_pad = math.ceil((new_width - orig_width) / 2)
    padded[top_pad : top_pad + orig_height, left_pad : left_pad + orig_width] = image
    top, bottom, left, right = top + top_pad, bottom + top_pad, left + left_pad, right + left_pad
    return padded[max(0, top) : min(new_height, bottom), max(0, left) : min(new_width, right)]


def rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """`image_transforms.rescale`: multiply in float64, then cast to float32."""
    return (image.astype(np.float64) * scale).astype(np.float32)  # quirk: float64 product, float32 result


def normalize(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """`image_transforms.normalize`: (x - mean) / std in the image's float dtype (float32 for integers)."""
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)  # quirk: integers go to float32, float inputs keep their own precision
    mean_arr = np.array(mean, dtype=image.dtype)  # quirk: mean/std are rounded to the image dtype first
    std_arr = np.array(std, dtype=image.dtype)
    return (image - mean_arr) / std_arr


# ----------------------------------------------------------------------------------------------------
# Output container


class BatchFeature(dict):
    """transformers' BatchFeature: a dict whose keys are also attributes (`batch.pixel_values`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchFeature has no key {name!r}; keys: {sorted(self)}") from None

    @property
    def data(self) -> dict:
        return dict(self)


# ----------------------------------------------------------------------------------------------------
# Configuration: parsing and validation (transformers/image_processing_utils.py get_size_dict & co)

_BOOL_KEYS = (
    "do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb", "default_to_square", "do_pad",
)
_PROCESSING_KEYS = _BOOL_KEYS + (
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


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def _size_dict(key: str, value: Any, default_to_square: bool, error: type) -> dict[str, int]:
    """`get_size_dict`: legacy int / (h, w) list / dict -> a size dict with a valid key set."""
    if _is_int(value):
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
        if not _is_int(v) or v <= 0:
            raise error(f"{key}[{k!r}]: must be a positive int, got {v!r}")
    return {k: int(v) for k, v in value.items()}


def _mean_std(key: str, value: Any, error: type) -> tuple[float, ...]:
    if _is_number(value):
        return (float(value),) * 3  # a scalar applies to every channel
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_number(v) for v in value):
        if key == "image_std" and any(v == 0 for v in value):
            raise error(f"{key}: must not contain 0, got {list(value)}")
        return tuple(float(v) for v in value)
    raise error(f"{key}: must be a number or a list of 3 finite numbers (one per RGB channel), got {value!r}")


def _validate(settings: dict[str, Any], error: type, where: str) -> dict[str, Any]:
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
        if not _is_int(resample) or int(resample) not in RESAMPLE_NAMES:
            raise error(f"{where}resample: must be a PIL resampling code {RESAMPLE_NAMES}, got {resample!r}")
        s["resample"] = int(resample)
    if s.get("rescale_factor") is not None and not _is_number(s["rescale_factor"]):
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


def _output_size(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
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
# Processors

_LATER_FAMILIES: dict[str, str] = {}  # processors of the families refvit will support, with the model each belongs to


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
        return _PROCESSING_KEYS + cls.extra_keys

    def _check_settings(self, settings: dict[str, Any], error: type, where: str) -> dict[str, Any]:
        """Validate settings (at load: ConfigError; per call: InputError); subclasses add their own checks."""
        return _validate(settings, error, where)

    # -- loading -------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, revision: str | None = None, **overrides: Any) -> ImageProcessor:
        """Read `<path>/preprocessor_config.json` (or `path` itself if it is the JSON file); `path` may be a hub id
        (`"facebook/deit-small-distilled-patch16-224"`, `revision=` a branch, tag or sha: refvit.hub).

        On `ImageProcessor` / `AutoImageProcessor` the class comes from `image_processor_type`, else the
        legacy `feature_extractor_type` ("DeiTFeatureExtractor" -> DeiT), else `model_type` in a sibling
        config.json; on `ViTImageProcessor` / `DeiTImageProcessor` that class is used, as in transformers.
        """
        path = hub.resolve_model_dir(path, revision=revision, files="processor")
        config, file = _read_processor_config(path)
        target = _class_for_config(config, file) if cls in (ImageProcessor, AutoImageProcessor) else cls
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
        batch = [self._preprocess_one(image, s) for image in _flat_list_of_images(images)]
        return convert(BatchFeature(pixel_values=np.stack(batch).astype(np.float32, copy=False)), return_tensors)

    preprocess = __call__

    def _preprocess_one(self, image: Any, s: dict[str, Any]) -> np.ndarray:
        """PilBackend.process_image then PilBackend._preprocess for one image; returns (3, H, W) float32."""
        pixels = _to_hwc(image, s["do_convert_rgb"], s["input_data_format"])  # (h, w, 3)
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
        return resize(pixels, _output_size(*pixels.shape[:2], s["size"]), s["resample"])


class ViTImageProcessor(ImageProcessor):
    """transformers' ViTImageProcessorPil: resize to 224x224 BILINEAR, rescale 1/255, normalize 0.5/0.5."""


class DeiTImageProcessor(ImageProcessor):
    """transformers' DeiTImageProcessorPil: resize 256x256 BICUBIC, center crop 224x224, rescale, normalize 0.5/0.5."""

    size = {"height": 256, "width": 256}
    resample = 3  # BICUBIC
    do_center_crop = True
    crop_size = {"height": 224, "width": 224}


class BitImageProcessor(ImageProcessor):
    """transformers' BitImageProcessorPil (models/bit/image_processing_pil_bit.py): shortest edge to 224 BICUBIC,
    center crop 224x224, rescale, normalize with the OpenAI CLIP mean/std, and RGB conversion on by default (L, P,
    RGBA… images are converted, alpha composited onto white, as transformers' convert_to_rgb)."""

    size = {"shortest_edge": 224}
    resample = 3  # BICUBIC
    default_to_square = False  # a legacy int `size` is the shortest edge
    do_center_crop = True
    crop_size = {"height": 224, "width": 224}
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_convert_rgb = True


class ConvNextImageProcessor(ImageProcessor):
    """transformers' ConvNextImageProcessorPil (models/convnext/image_processing_pil_convnext.py), which CvT
    checkpoints ship: below 384 the shortest edge goes to int(shortest_edge / crop_pct) and a shortest_edge square is
    center-cropped; at 384 or more the image is warped to a shortest_edge square, without crop."""

    size = {"shortest_edge": 384}
    resample = 3  # BICUBIC
    default_to_square = False  # a legacy int `size` is the shortest edge
    crop_pct = 224 / 256
    extra_keys = ("crop_pct",)

    def _check_settings(self, settings: dict[str, Any], error: type, where: str) -> dict[str, Any]:
        s = super()._check_settings(settings, error, where)
        crop_pct = s.get("crop_pct")
        if crop_pct is not None and (not _is_number(crop_pct) or crop_pct <= 0):
            raise error(f"{where}crop_pct: must be a positive finite number or null, got {crop_pct!r}")
        if s.get("do_resize"):
            if "shortest_edge" not in s["size"]:  # transformers raises at call time
                raise error(f"{where}size: ConvNextImageProcessor resizes by shortest_edge, got {s['size']}")
            edge = s["size"]["shortest_edge"]
            if edge < 384 and (crop_pct is None or int(edge / crop_pct) < 1):
                raise error(f"{where}crop_pct: shortest_edge {edge} < 384 needs a crop_pct in (0, {edge}], "
                            f"got {crop_pct!r}")
        return s

    def _resize(self, pixels: np.ndarray, s: dict[str, Any]) -> np.ndarray:
        edge = s["size"]["shortest_edge"]  # quirk: any longest_edge in the size dict is ignored
        if edge < 384:
            resize_edge = int(edge / s["crop_pct"])  # quirk: truncated (224 / 0.875 = 256)
            pixels = resize(pixels, _output_size(*pixels.shape[:2], {"shortest_edge": resize_edge}), s["resample"])
            return center_crop(pixels, (edge, edge))
        return resize(pixels, (edge, edge), s["resample"])  # quirk: 384 or more warps to a square, aspect ratio lost


class BeitImageProcessor(ImageProcessor):
    """transformers' BeitImageProcessorPil (models/beit/image_processing_pil_beit.py), also data2vec-vision's:
    resize 224x224 BICUBIC, no center crop, rescale, normalize 0.5/0.5; segmentation maps become `labels`.

    `processor(images, segmentation_maps=maps)` adds `labels` (B, H, W) int64: each map (a single-band PIL image or
    a 2-D integer array of values in [0, 255]) goes through the same resize / center crop, without rescale and
    normalize, after `do_reduce_labels` (0 -> 255, v -> v - 1, 255 stays 255) when set. Quirks reproduced:
    - maps are resized with the images' `resample` (BICUBIC by default, BILINEAR for the ADE20k checkpoints), so
      labels are interpolated, not taken from the nearest pixel;
    - the legacy config key `reduce_labels` (microsoft/beit-*-ade-640-640) is ignored by transformers 5: only
      `do_reduce_labels` reduces labels;
    - `do_reduce_labels` never touches the images.
    Deliberate change: the caller's map array is not modified (transformers reduces labels in place).
    """

    resample = 3  # BICUBIC
    do_center_crop = False
    crop_size = {"height": 224, "width": 224}
    do_reduce_labels = False
    extra_keys = ("do_reduce_labels",)

    def _check_settings(self, settings: dict[str, Any], error: type, where: str) -> dict[str, Any]:
        s = super()._check_settings(settings, error, where)
        if s.get("do_reduce_labels") is not None and not isinstance(s["do_reduce_labels"], (bool, np.bool_)):
            raise error(f"{where}do_reduce_labels: must be true, false or null, got {s['do_reduce_labels']!r}")
        return s

    def __call__(self, images: Any = None, segmentation_maps: Any = None, return_tensors: str | None = "np",
                 **overrides: Any) -> BatchFeature:
        """Preprocess images (and segmentation maps): `BatchFeature(pixel_values=…, labels=…)`."""
        batch = super().__call__(images, return_tensors=return_tensors, **overrides)
        if segmentation_maps is None:
            return batch
        settings = {**{k: getattr(self, k) for k in self._keys()}, **overrides}
        s = self._check_settings(settings, InputError, "argument ")
        maps = [self._preprocess_map(m, s) for m in _flat_list_of_maps(segmentation_maps)]
        if len({m.shape for m in maps}) != 1:
            raise InputError(f"segmentation maps of different sizes {sorted({m.shape for m in maps})} cannot be "
                             "stacked (set do_resize or use maps of one size)")
        batch["labels"] = np.stack(maps)
        return convert(batch, return_tensors)

    preprocess = __call__

    def _preprocess_map(self, seg_map: Any, s: dict[str, Any]) -> np.ndarray:
        """BeitImageProcessorPil._preprocess on one map (do_rescale/do_normalize off); returns (H, W) int64."""
        m = _map_array(seg_map)                                                   # (h, w) integers in [0, 255]
        if s["do_reduce_labels"]:
            m = reduce_labels(m)
        if s["do_resize"]:
            height, width = _output_size(*m.shape, s["size"])
            _check_output_size(height, width, "segmentation map resize")
            # quirk: the labels are resampled like pixels (s["resample"]), through a PIL "L" image
            m = np.asarray(Image.fromarray(m.astype(np.uint8), "L").resize((width, height), resample=s["resample"],
                                                                            reducing_gap=None))
        if s["do_center_crop"]:
            m = center_crop(m[:, :, None], (s["crop_size"]["height"], s["crop_size"]["width"]))[:, :, 0]
        return m.astype(np.int64)

    def post_process_semantic_segmentation(self, outputs: Any, target_sizes: Any = None,
                                           return_segmentation_scores: bool = False) -> list:
        """Per-image label maps (H, W) int64 from segmentation logits (B, num_labels, h, w), as transformers:
        with target_sizes, each image's logits are bilinearly resized (align_corners=False, torch's arithmetic)
        to its (height, width) first; then the argmax over labels (ties: the first label). With
        return_segmentation_scores, each item is {"segmentation": map, "segmentation_scores": (num_labels, H, W)}."""
        from .kernels.interpolate import interpolate_bilinear_numpy

        logits = _segmentation_logits(outputs)
        if target_sizes is not None:
            if hasattr(target_sizes, "numpy") and type(target_sizes).__module__.startswith("torch"):
                target_sizes = target_sizes.numpy()
            if len(logits) != len(target_sizes):
                raise InputError(f"target_sizes: {len(target_sizes)} sizes for a batch of {len(logits)} logits "
                                 "(pass one (height, width) per image)")
            scores = [interpolate_bilinear_numpy(np.ascontiguousarray(logits[i][None]), *_target_size(t))[0]
                      for i, t in enumerate(target_sizes)]
        else:
            scores = list(logits)
        maps = [score.argmax(axis=0).astype(np.int64) for score in scores]         # (H, W) each
        if return_segmentation_scores:
            return [BatchFeature(segmentation=m, segmentation_scores=sc) for m, sc in zip(maps, scores)]
        return maps


def reduce_labels(seg_map: np.ndarray) -> np.ndarray:
    """BeitImageProcessorPil.reduce_label: 0 (background) -> 255, every other label -> label - 1, 255 stays 255."""
    m = seg_map.copy()  # transformers modifies the map in place; refvit leaves the caller's array alone
    m[m == 0] = 255
    m = m - 1
    m[m == 254] = 255
    return m


def _flat_list_of_maps(maps: Any) -> list[Any]:
    """One map (2-D array or PIL image), a list of them, or a 3-D array (B, H, W) -> a flat, non-empty list."""
    if isinstance(maps, np.ndarray) and maps.ndim == 3:
        return list(maps)
    if isinstance(maps, (list, tuple)):
        if not maps:
            raise InputError("segmentation_maps: empty list")
        return list(maps)
    return [maps]


def _map_array(seg_map: Any) -> np.ndarray:
    """A segmentation map as a 2-D integer array with values in [0, 255] (what transformers can resize)."""
    if isinstance(seg_map, Image.Image):
        seg_map = np.array(_decoded(seg_map))
    if not isinstance(seg_map, np.ndarray):
        raise InputError(f"segmentation map: expected a PIL image or a 2-D array, got {type(seg_map).__name__}")
    if seg_map.ndim != 2 or seg_map.size == 0:
        raise InputError(f"segmentation map: expected one (H, W) label map (a single-band image), got shape "
                         f"{seg_map.shape}")
    if seg_map.dtype.kind not in "iu" and not (seg_map.dtype.kind == "f" and np.all(np.isfinite(seg_map))
                                               and np.all(seg_map == np.round(seg_map))):
        raise InputError(f"segmentation map: expected integer labels, got dtype {seg_map.dtype}")
    if seg_map.min() < 0 or seg_map.max() > 255:
        raise InputError(f"segmentation map: labels must be in [0, 255] to be resized through PIL as transformers "
                         f"does, got [{seg_map.min()}, {seg_map.max()}]")
    return seg_map.astype(np.int64) if seg_map.dtype.kind == "f" else seg_map


def _segmentation_logits(outputs: Any) -> np.ndarray:
    logits = outputs.get("logits") if isinstance(outputs, Mapping) else getattr(outputs, "logits", outputs)
    logits = np.asarray(logits) if not isinstance(logits, np.ndarray) else logits
    if logits.ndim != 4 or logits.dtype.kind != "f" or logits.shape[1] == 0:
        raise InputError(f"outputs.logits: expected (batch, num_labels, height, width) floats, got "
                         f"{getattr(logits, 'shape', None)} {getattr(logits, 'dtype', None)}")
    return logits if logits.dtype in (np.float32, np.float64) else logits.astype(np.float32)


def _target_size(size: Any) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"target_sizes: each item must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise InputError(f"target_sizes: sizes must be positive, got {size!r}")
    return height, width


ViTFeatureExtractor = ViTImageProcessor  # legacy transformers names, same classes
DeiTFeatureExtractor = DeiTImageProcessor
ConvNextFeatureExtractor = ConvNextImageProcessor
BeitFeatureExtractor = BeitImageProcessor

_PROCESSOR_CLASSES = {"ViTImageProcessor": ViTImageProcessor, "DeiTImageProcessor": DeiTImageProcessor,
                      "ConvNextImageProcessor": ConvNextImageProcessor, "BeitImageProcessor": BeitImageProcessor,
                      "BitImageProcessor": BitImageProcessor}
_MODEL_TYPE_CLASSES = {"vit": ViTImageProcessor, "deit": DeiTImageProcessor,  # IMAGE_PROCESSOR_MAPPING entries
                       "cvt": ConvNextImageProcessor, "beit": BeitImageProcessor, "data2vec-vision": BeitImageProcessor,
                       "bit": BitImageProcessor}


class AutoImageProcessor:
    """`AutoImageProcessor.from_pretrained(path)`: the ViT/DeiT processor named in preprocessor_config.json."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise TypeError("AutoImageProcessor is not instantiated: use AutoImageProcessor.from_pretrained(path)")

    from_pretrained = classmethod(ImageProcessor.from_pretrained.__func__)


AutoFeatureExtractor = AutoImageProcessor


def _read_processor_config(path: str | os.PathLike) -> tuple[dict[str, Any], pathlib.Path]:
    """The processor settings dict and the file they came from (processor_config.json nesting included)."""
    root = pathlib.Path(path)
    if root.is_dir():
        nested = root / "processor_config.json"
        if nested.is_file():  # newer checkpoints may nest the settings under "image_processor"
            outer = _load_json(nested)
            if "image_processor" in outer:
                if not isinstance(outer["image_processor"], dict):
                    raise ConfigError(f"{nested}: 'image_processor' must be a JSON object")
                return outer["image_processor"], nested
        file = root / "preprocessor_config.json"
    else:
        file = root
    if not file.is_file():
        raise ConfigError(f"{file}: no such file (expected a preprocessor_config.json)")
    return _load_json(file), file


def _load_json(file: pathlib.Path) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        dups = sorted({k for k in keys if keys.count(k) > 1})
        if dups:
            raise ConfigError(f"{file}: duplicate keys {dups}")
        return dict(pairs)

    def no_constants(token: str) -> Any:
        raise ConfigError(f"{file}: {token} is not valid JSON")

    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise ConfigError(f"{file}: larger than {MAX_JSON_BYTES} bytes, not a processor config")
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ConfigError(f"{file}: not valid UTF-8 JSON: {err}") from None
    except OSError as err:
        raise ConfigError(f"{file}: cannot read: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: top level must be a JSON object, got {type(data).__name__}")
    return data


def _class_for_config(config: dict[str, Any], file: pathlib.Path) -> type[ImageProcessor]:
    """AutoImageProcessor.from_pretrained's choice (models/auto/image_processing_auto.py)."""
    name = config.get("image_processor_type")
    source = "image_processor_type"
    if config.get("auto_map") is not None and not isinstance(config["auto_map"], dict):
        raise ConfigError(f"{file}: auto_map must be an object, got {type(config['auto_map']).__name__}")
    if name is None and "AutoImageProcessor" not in (config.get("auto_map") or {}):
        legacy = config.get("feature_extractor_type")
        if legacy is not None:
            if not isinstance(legacy, str):
                raise ConfigError(f"{file}: feature_extractor_type must be a string, got {legacy!r}")
            # legacy configs: "DeiTFeatureExtractor" names the processor "DeiTImageProcessor"
            name, source = legacy.replace("FeatureExtractor", "ImageProcessor"), "feature_extractor_type"
    if name is None and isinstance(config.get("auto_map"), dict) and config["auto_map"]:
        raise ConfigError(f"{file}: auto_map names remote code ({config['auto_map']}); refvit never runs remote code")
    if name is None:
        return _class_from_model_config(file)
    if not isinstance(name, str):
        raise ConfigError(f"{file}: {source} must be a string, got {name!r}")
    base = re.sub(r"(Fast|Pil)$", "", name)  # "ViTImageProcessorFast"/"...Pil" name the same processor
    if base in _PROCESSOR_CLASSES:
        return _PROCESSOR_CLASSES[base]
    if base in _LATER_FAMILIES:
        raise ConfigError(
            f"{file}: {source} {name!r} ({_LATER_FAMILIES[base]}) is not supported yet; "
            f"refvit supports {sorted(_PROCESSOR_CLASSES)}"
        )
    raise ConfigError(f"{file}: unsupported {source} {name!r}; refvit supports {sorted(_PROCESSOR_CLASSES)}")


def _class_from_model_config(file: pathlib.Path) -> type[ImageProcessor]:
    model_config = file.parent / "config.json"
    if not model_config.is_file():
        raise ConfigError(f"{file}: no image_processor_type or feature_extractor_type, and no config.json beside it")
    model_type = _load_json(model_config).get("model_type")
    if model_type not in _MODEL_TYPE_CLASSES:
        raise ConfigError(f"{file}: no image_processor_type, and {model_config} has model_type {model_type!r}; "
                          f"refvit knows {sorted(_MODEL_TYPE_CLASSES)}")
    return _MODEL_TYPE_CLASSES[model_type]


# ----------------------------------------------------------------------------------------------------
# Input preparation (image_utils.make_flat_list_of_images, PilBackend.process_image)


def _flat_list_of_images(images: Any) -> list[Any]:
    """One image, a list of images, a list of lists, or a 4-D array -> a flat, non-empty list."""
    if images is None:
        raise InputError("no images given: pass images=... (a PIL image, a path, an array or a list of them)")
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)  # (B, ...) array = a batch
        return [images]
    if isinstance(images, (list, tuple)):
        flat: list[Any] = []
        for item in images:
            if isinstance(item, (list, tuple)):
                flat.extend(item)
            elif isinstance(item, np.ndarray) and item.ndim == 4:
                flat.extend(item)
            else:
                flat.append(item)
        if not flat:
            raise InputError("empty list of images")
        return flat
    return [images]


def _to_hwc(image: Any, do_convert_rgb: bool | None, input_data_format: str | None) -> np.ndarray:
    """One input image -> (h, w, 3) array in its own dtype, channel layout and RGB conversion as upstream."""
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)  # upstream fetch_images -> load_image; we never download
    if isinstance(image, Image.Image):
        image = _decoded(image)
        if do_convert_rgb:
            return _convert_pil_to_rgb(image)
        if image.mode != "RGB":
            raise InputError(
                f"PIL image of mode {image.mode!r} is not RGB: pass do_convert_rgb=True (composites alpha onto white, "
                "as transformers), or load it with refvit.load_image"
            )
        return np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise InputError(f"unsupported image type {type(image).__name__}: use a PIL image, a path or a numpy array")
    return _array_to_hwc(image, do_convert_rgb, input_data_format)


def _convert_pil_to_rgb(image: Image.Image) -> np.ndarray:
    """`image_transforms.convert_to_rgb` for PIL images: alpha (or palette transparency) over white."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))  # quirk: alpha composited on white
    return np.asarray(image.convert("RGB"))  # quirk: I;16/I/F go through Pillow's clipping conversion here


def _array_to_hwc(image: np.ndarray, do_convert_rgb: bool | None, input_data_format: str | None) -> np.ndarray:
    if image.ndim != 3:
        raise InputError(
            f"image array must have 3 dims (H, W, C) or (C, H, W) (or 4 for a batch), got shape {image.shape}"
        )
    numeric = np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    if image.dtype == np.bool_ or not numeric:
        raise InputError(f"image array dtype {image.dtype} is not supported (use uint8 or float)")
    if image.size == 0:
        raise InputError(f"image array is empty, shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
        raise InputError(f"image array of shape {image.shape} contains NaN or infinity")
    channels_last = _channels_last(image, input_data_format)
    hwc = image if channels_last else np.moveaxis(image, 0, -1)
    if do_convert_rgb:
        hwc = _convert_array_to_rgb(hwc)  # (upstream re-infers the layout afterwards; it cannot change)
    if hwc.shape[2] != 3:
        raise InputError(
            f"image array of shape {image.shape} has {hwc.shape[2]} channels; the processor needs 3 "
            "(pass do_convert_rgb=True to expand 1 channel or composite 4 onto white)"
        )
    return hwc


def _channels_last(image: np.ndarray, input_data_format: str | None) -> bool:
    """`image_utils.infer_channel_dimension_format(num_channels=(1, 3, 4))` unless the layout is given."""
    if input_data_format is not None:
        return input_data_format == "channels_last"
    first, last = image.shape[0], image.shape[2]
    if first in (1, 3, 4):
        return False  # quirk: ambiguous shapes like (3, H, 3) are taken as channels-first
    if last in (1, 3, 4):
        return True
    raise InputError(
        f"cannot find the channel axis of an image of shape {image.shape}: need 1, 3 or 4 channels first or last"
    )


def _convert_array_to_rgb(hwc: np.ndarray) -> np.ndarray:
    """`image_transforms.convert_to_rgb` for arrays: 1 channel repeated, 4 channels composited onto white."""
    channels = hwc.shape[2]
    if channels == 1:
        return np.repeat(hwc, 3, axis=-1)
    if channels == 4:
        if np.issubdtype(hwc.dtype, np.floating) and (hwc.min() < 0.0 or hwc.max() > 1.0):
            raise InputError(
                f"a 4-channel float image must be in [0, 1] to composite its alpha, got [{hwc.min()}, {hwc.max()}]"
            )
        white = 255 if np.issubdtype(hwc.dtype, np.integer) else 1.0
        alpha = hwc[..., 3:4] / white
        composite = alpha * hwc[..., :3] + (1 - alpha) * white
        # quirk: integer images are rounded (half to even), float images keep their dtype unrounded
        return np.round(composite).astype(hwc.dtype) if white == 255 else composite.astype(hwc.dtype)
    return hwc
