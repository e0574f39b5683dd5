"""`AutoImageProcessor`: the processor class named in preprocessor_config.json (or by the model's model_type)."""

from __future__ import annotations

import os
from typing import Any

from .base import ImageProcessor


class AutoImageProcessor:
    """`AutoImageProcessor.from_pretrained(path)`: the processor class named in preprocessor_config.json."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise TypeError("AutoImageProcessor is not instantiated: use AutoImageProcessor.from_pretrained(path)")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, revision: str | None = None, **overrides: Any) -> ImageProcessor:
        """`ImageProcessor.from_pretrained`: the class comes from the settings (refvit/processing/config.py)."""
        return ImageProcessor.from_pretrained(path, revision=revision, **overrides)


AutoFeatureExtractor = AutoImageProcessor
