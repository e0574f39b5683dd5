"""The trained segmentation models (golden/models/segment-{beit,data2vec}, written by golden/train_segmentation.py):
refvit, run on the shipped test scenes, gives PyTorch's logits (the float32 tolerance), PyTorch's mask on every
pixel whose class the tolerance cannot swap, and so PyTorch's mIoU; and `refvit segment` writes that mask.

No framework needed: PyTorch's side is what train_segmentation.py recorded (logits.npz: the logits of the first
test scenes and the post-processed mask of every one; meta.json: the per-class IoU and mIoU of those masks).
`python golden/train_segmentation.py --check` re-runs the framework and compares with the same records (CI stage 2).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import refvit
from refvit.tolerance import TOLERANCE

MODELS = Path(__file__).resolve().parent.parent / "golden" / "models"
NAMES = ["segment-beit", "segment-data2vec"]


def miou(pred, truth, k):
    """(per-class IoU, mean IoU): intersection and union summed over the whole split (train_segmentation.iou)."""
    per = []
    for c in range(k):
        union = np.sum((pred == c) | (truth == c))
        per.append(float(np.sum((pred == c) & (truth == c)) / union) if union else float("nan"))
    return per, float(np.nanmean(per))


@pytest.fixture(scope="module")
def scenes():
    with np.load(MODELS / "shapes_test.npz") as z:
        return z["images"], z["masks"]


@pytest.mark.parametrize("name", NAMES)
def test_refvit_gives_pytorchs_logits_masks_and_miou(name, scenes):
    images, truth = scenes
    folder = MODELS / name
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "logits.npz") as z:
        ref_logits, ref_masks = z["logits"], z["masks"]
    model = refvit.from_pretrained(folder, backend="numpy")
    processor = refvit.AutoImageProcessor.from_pretrained(folder)
    pixel_values = processor(images=[Image.fromarray(i) for i in images], return_tensors="np")["pixel_values"]
    out = model(pixel_values)
    bound = TOLERANCE["float32"] * max(1.0, float(np.abs(ref_logits).max()))
    err = float(np.abs(out.logits[:len(ref_logits)].astype(np.float64) - ref_logits).max())
    assert err <= bound, f"{name}: logits differ from PyTorch's by {err:.3g} > {bound:.3g}"
    maps = processor.post_process_semantic_segmentation(out, target_sizes=[(32, 32)] * len(images))
    masks = np.stack([np.asarray(m) for m in maps]).astype(np.uint8)
    top2 = np.sort(ref_logits.astype(np.float64), axis=1)[:, -2:]
    decided = np.ones(masks.shape, bool)               # logits stored only for the first scenes: elsewhere, every pixel
    decided[:len(ref_logits)] = top2[:, 1] - top2[:, 0] > 2 * bound
    differ = int((masks != ref_masks)[decided].sum())
    assert differ == 0, f"{name}: {differ} pixels get another class than PyTorch's"
    per, mean = miou(masks, truth, len(meta["test_iou"]))
    if (masks == ref_masks).all():
        assert mean == meta["test_miou"] and per == list(meta["test_iou"].values())
    print(f"{name}: refvit mIoU {mean:.4f}, PyTorch {meta['test_miou']:.4f}; {int((masks == ref_masks).sum())} of "
          f"{masks.size} pixels as PyTorch's; max logit difference {err:.2g}")


def test_refvit_segment_writes_pytorchs_mask(tmp_path, scenes):
    from refvit.cli import main

    images, _ = scenes
    image = tmp_path / "scene.png"
    Image.fromarray(images[0]).save(image)
    mask_path = tmp_path / "mask.png"
    assert main(["segment", str(MODELS / "segment-beit"), str(image), "--out", str(mask_path), "--backend",
                 "numpy"]) == 0
    with np.load(MODELS / "segment-beit" / "logits.npz") as z:
        expected = z["masks"][0]
    assert np.array_equal(np.asarray(Image.open(mask_path)), expected)
