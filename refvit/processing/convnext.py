"""The ConvNeXt processor, which CvT checkpoints ship
(transformers/models/convnext/image_processing_pil_convnext.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import ImageProcessor, is_number, output_size
from .transforms import center_crop, resize


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
        if crop_pct is not None and (not is_number(crop_pct) or crop_pct <= 0):
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
            pixels = resize(pixels, output_size(*pixels.shape[:2], {"shortest_edge": resize_edge}), s["resample"])
            return center_crop(pixels, (edge, edge))
        return resize(pixels, (edge, edge), s["resample"])  # quirk: 384 or more warps to a square, aspect ratio lost


ConvNextFeatureExtractor = ConvNextImageProcessor  # legacy transformers name, same class
