"""The pipeline steps (transformers/image_transforms.py) on channels-last arrays: resize, center_crop, rescale,
normalize."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ..errors import InputError


# ----------------------------------------------------------------------------------------------------
# The pipeline steps (transformers/image_transforms.py), on channels-last arrays


def resize(image: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """`image_transforms.resize`: through a PIL image, (height, width) = size; returns (h, w, 3).

    uint8 images (and integer-valued float images in [0, 255]) are resized as uint8 and come back uint8;
    float images in [0, 1] are multiplied by 255, truncated to uint8, resized, and divided by 255.
    """
    check_output_size(*size, "resize")
    do_rescale = _rescale_for_pil_conversion(image)
    if do_rescale:
        image = rescale(image, 255)  # quirk: [0, 1] floats go to uint8 by *truncation* (127.5 -> 127)
    pil_image = Image.fromarray(np.ascontiguousarray(image.astype(np.uint8)), "RGB")
    height, width = size
    # quirk: reducing_gap is never passed by the PIL backend (None = one-step resampling)
    resized = np.asarray(pil_image.resize((width, height), resample=resample, reducing_gap=None))
    return rescale(resized, 1 / 255) if do_rescale else resized


def check_output_size(height: int, width: int, what: str) -> None:
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
    check_output_size(new_height, new_width, "center_crop (zero padding)")
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
