"""Image loading (`load_image`, transformers/image_utils.py) and the input preparation every processor shares
(image_utils.make_flat_list_of_images, PilBackend.process_image): PIL images, paths and arrays to (H, W, 3) pixels.
The mode conversions are listed in refvit/processing/__init__.py."""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageError, InputError, RefvitError


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
        return _upright_rgb(decoded(source), "<PIL image>")
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


def decoded(image: Image.Image) -> Image.Image:
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
# Input preparation (image_utils.make_flat_list_of_images, PilBackend.process_image)


def flat_list_of_images(images: Any) -> list[Any]:
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


def to_hwc(image: Any, do_convert_rgb: bool | None, input_data_format: str | None) -> np.ndarray:
    """One input image -> (h, w, 3) array in its own dtype, channel layout and RGB conversion as upstream."""
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)  # upstream fetch_images -> load_image; we never download
    if isinstance(image, Image.Image):
        image = decoded(image)
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
