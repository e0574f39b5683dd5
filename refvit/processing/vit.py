"""ViT and DeiT processors (transformers/models/{vit,deit}/image_processing_pil_*.py)."""

from __future__ import annotations

from .base import ImageProcessor


class ViTImageProcessor(ImageProcessor):
    """transformers' ViTImageProcessorPil: resize to 224x224 BILINEAR, rescale 1/255, normalize 0.5/0.5."""


class DeiTImageProcessor(ImageProcessor):
    """transformers' DeiTImageProcessorPil: resize 256x256 BICUBIC, center crop 224x224, rescale, normalize 0.5/0.5."""

    size = {"height": 256, "width": 256}
    resample = 3  # BICUBIC
    do_center_crop = True
    crop_size = {"height": 224, "width": 224}


ViTFeatureExtractor = ViTImageProcessor  # legacy transformers names, same classes
DeiTFeatureExtractor = DeiTImageProcessor
