"""The golden tolerance (docs/DESIGN.md §7), the one table refvit's checks read: `refvit verify`, the parity
compare's "refvit" preset and the benchmark's logits check. For every tensor:

    float32: max|ours - ref| <= 1e-4 * max(1, max|ref|)
    float64: max|ours - ref| <= 1e-10 * max(1, max|ref|)
"""

from __future__ import annotations

import numpy as np

TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def allowed_error(reference: np.ndarray, dtype: str) -> float:
    """The largest max|ours - ref| a `dtype` run may show against `reference`: TOLERANCE[dtype] · max(1, max|ref|)."""
    return TOLERANCE[dtype] * max(1.0, float(np.abs(reference).max(initial=0.0)))
