"""Image loading and every family's image processor, exactly as transformers' PIL backend computes them.

One module per piece: images.py (load_image, input preparation), transforms.py (resize, crop, rescale, normalize),
base.py (ImageProcessor, settings, BatchFeature), one per family (vit.py: ViT/DeiT, bit.py, convnext.py: CvT,
beit.py: BEiT/data2vec-vision), auto.py (AutoImageProcessor); this package re-exports the public names.

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

from PIL import ImageOps  # noqa: F401 (refvit.processing.ImageOps: what load_image's EXIF step calls)

from .auto import AutoFeatureExtractor, AutoImageProcessor
from .base import BatchFeature, ImageProcessor
from .beit import BeitFeatureExtractor, BeitImageProcessor, reduce_labels  # noqa: F401 (used by tests)
from .bit import BitImageProcessor
from .convnext import ConvNextFeatureExtractor, ConvNextImageProcessor
from .images import load_image
from .timm import TimmImageProcessor
from .transforms import center_crop, normalize, rescale, resize
from .vit import DeiTFeatureExtractor, DeiTImageProcessor, ViTFeatureExtractor, ViTImageProcessor

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
    "TimmImageProcessor",
    "AutoImageProcessor",
    "AutoFeatureExtractor",
    "resize",
    "center_crop",
    "rescale",
    "normalize",
]
