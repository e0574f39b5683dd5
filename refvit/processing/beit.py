"""The BEiT / data2vec-vision processor (transformers/models/beit/image_processing_pil_beit.py): images and
segmentation maps, and post_process_semantic_segmentation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from ..tensors import convert
from .base import BatchFeature, ImageProcessor, output_size
from .images import decoded
from .transforms import center_crop, check_output_size


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
            height, width = output_size(*m.shape, s["size"])
            check_output_size(height, width, "segmentation map resize")
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
        from ..kernels.interpolate import interpolate_bilinear_numpy

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
        seg_map = np.array(decoded(seg_map))
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


BeitFeatureExtractor = BeitImageProcessor  # legacy transformers name, same class
