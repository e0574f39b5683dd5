"""Small real data for examples and tests: scikit-learn's handwritten digits as PIL images.

The digits models under `golden/models/` were trained by `golden/train_digits.py` on images made by `digit_image`,
and the tests feed refvit the same images, so both sides see identical pixels before their image processors.
No scikit-learn import here: the test split ships as `golden/models/digits_test.npz`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .errors import InputError

DIGIT_MAX = 16  # load_digits() scans count ink in 4x4 blocks of a 32x32 bitmap: integers 0..16


def digit_image(scan) -> Image.Image:
    """One digits scan (a 2-D array of values 0..16, as `sklearn.datasets.load_digits().images[i]`) as an RGB image.

    Values are scaled to 0..255 (`round(v * 255 / 16)`, so 16 -> 255) and the grey level is copied to R, G and B:
    white ink on black, the scan's own size (8x8); each model's image processor upscales it.
    """
    scan = np.asarray(scan)
    if scan.ndim != 2 or scan.size == 0:
        raise InputError(f"digit scan must be a non-empty 2-D array, got shape {scan.shape}")
    if scan.dtype.kind not in "iuf":
        raise InputError(f"digit scan must be numeric, got dtype {scan.dtype}")
    if not np.all(np.isfinite(scan)) or scan.min() < 0 or scan.max() > DIGIT_MAX:
        raise InputError(f"digit scan values must lie in [0, {DIGIT_MAX}], got [{scan.min()}, {scan.max()}]")
    grey = np.rint(scan.astype(np.float64) * (255 / DIGIT_MAX)).astype(np.uint8)  # h, w
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))  # h, w, 3 -> RGB
