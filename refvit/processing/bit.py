"""The BiT processor (transformers/models/bit/image_processing_pil_bit.py)."""

from __future__ import annotations

from .base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageProcessor


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
