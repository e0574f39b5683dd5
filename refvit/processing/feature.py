"""`BatchFeature`, what every processor returns (transformers' image_processing_base.BatchFeature)."""

from __future__ import annotations

from typing import Any


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
