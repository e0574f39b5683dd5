"""Train tiny BEiT and data2vec-vision semantic-segmentation models on synthetic scenes of shapes.

No shipped checkpoint had a segmentation head, so `refvit segment` and the UperNet/FCN heads had nothing real to show.
This script generates a small dataset (it needs no download), trains `BeitForSemanticSegmentation` and
`Data2VecVisionForSemanticSegmentation` with transformers, and saves both under golden/models/. Needs the `golden`
extra (torch, transformers):
    python golden/train_segmentation.py            # train both (a few minutes of CPU, one thread)
    python golden/train_segmentation.py --check    # framework inference only: re-run the saved models, compare

The scenes (`scene(rng)`): 32x32 RGB, a textured background (stripes at a random angle, a checkerboard or blotchy
noise, in random colours) with one or two filled shapes in random colours, sizes and places; later shapes occlude
earlier ones. Four classes, one label per pixel: 0 background, 1 disk, 2 square, 3 triangle. The shapes' colours are
drawn from the same range as the background's, so colour alone does not separate the classes: the model must use shape.

Written under golden/models/:
    shapes_test.npz          the test split: images uint8 (N, 32, 32, 3), masks uint8 (N, 32, 32); regenerated
                             from SEED by --check, which fails if it differs
    segment-{beit,data2vec}/ config.json + model.safetensors, preprocessor_config.json, meta.json (versions, seed,
                             command, training, per-class IoU, mIoU and pixel accuracy of the framework's masks on the
                             test split), logits.npz (float32 `logits` of the first LOGIT_IMAGES test images, and the
                             framework's predicted `masks` uint8 for every test image)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
MODELS_DIR = ROOT / "models"
SEED = 0
SIZE = 32              # image side; patch 4 -> 8x8 tokens; BEiT's FPN gives logits at 4x the grid = 32x32
CLASSES = ["background", "disk", "square", "triangle"]
TRAIN_SIZE, TEST_SIZE = 1600, 96
LOGIT_IMAGES = 16      # test images whose float32 logits are stored (4 classes x 32 x 32 each)
BATCH, EPOCHS, LR = 32, 16, 2e-3
# --check tolerance: the same bound and reasoning as train_digits.py (PyTorch float32 differs across CPUs by up to
# 6.2e-6 measured); a pixel's class is compared only where its two best logits are more than 2x the bound apart.
CHECK_TOLERANCE = 2e-5
ORDER = ["beit", "data2vec"]


def _colour(rng) -> np.ndarray:
    return rng.uniform(0.0, 1.0, 3)


def _background(rng) -> np.ndarray:
    """(SIZE, SIZE, 3) float in 0..1: stripes, a checkerboard or smoothed noise, mixing two random colours."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    kind = rng.integers(3)
    if kind == 0:    # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 9)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 6.3))
    elif kind == 1:  # checkerboard of a random cell size
        cell = rng.integers(2, 7)
        t = ((yy // cell + xx // cell) % 2).astype(np.float64)
    else:            # blotchy noise: a coarse random grid, upsampled with repetition
        coarse = rng.uniform(0, 1, (SIZE // 4, SIZE // 4))
        t = np.kron(coarse, np.ones((4, 4)))
    a, b = _colour(rng), _colour(rng)
    return a * t[..., None] + b * (1 - t[..., None])


def _shape_mask(rng, kind: int) -> np.ndarray:
    """(SIZE, SIZE) bool of one disk (1), square (2) or triangle (3) of random size and place."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    r = rng.uniform(5.0, 10.0)
    cy, cx = rng.uniform(r, SIZE - r, 2)
    if kind == 1:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == 2:
        return (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
    # an upright triangle: apex at the top, base at the bottom
    top, bottom = cy - r, cy + r
    half = (yy - top) / (2 * r) * r * 1.1
    return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)


def scene(rng) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image uint8 (SIZE, SIZE, 3), mask uint8 (SIZE, SIZE) with values 0..3)."""
    image = _background(rng)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for _ in range(rng.integers(1, 3)):
        kind = int(rng.integers(1, 4))
        m = _shape_mask(rng, kind)
        shade = 0.85 + 0.15 * rng.uniform(0, 1, (SIZE, SIZE, 1))     # a little texture on the shape too
        image = np.where(m[..., None], _colour(rng) * shade, image)
        mask[m] = kind
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8), mask


def dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pairs = [scene(rng) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def splits():
    """(train images, train masks, test images, test masks): separate seeds, so the test scenes are never trained on."""
    return (*dataset(TRAIN_SIZE, SEED), *dataset(TEST_SIZE, SEED + 1))


def iou(pred: np.ndarray, truth: np.ndarray, k: int = len(CLASSES)) -> tuple[list[float], float, float]:
    """(per-class IoU over the whole split, mean IoU, pixel accuracy); intersection and union summed over images."""
    per = []
    for c in range(k):
        inter = np.sum((pred == c) & (truth == c))
        union = np.sum((pred == c) | (truth == c))
        per.append(float(inter / union) if union else float("nan"))
    return per, float(np.nanmean(per)), float(np.mean(pred == truth))


def specs() -> dict:
    """name -> (model class, config, processor)."""
    import transformers as tf

    common = dict(image_size=SIZE, patch_size=4, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=64, use_relative_position_bias=True, use_absolute_position_embeddings=True,
                  layer_scale_init_value=0.1,
                  # out_indices are 1-based into hidden_states, and 0 means hidden_states[-1] (modeling_beit.py,
                  # BeitForSemanticSegmentation.forward: encoder_hidden_states[i - 1]): [0, 2, 3, 4] feeds the FPN
                  # the last layer (upsampled 4x) and the outputs of layers 0, 1, 2, so every layer is used
                  out_indices=[0, 2, 3, 4], auxiliary_channels=32, use_auxiliary_head=True,
                  id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)})
    processor = dict(size={"height": SIZE, "width": SIZE}, do_center_crop=False, do_reduce_labels=False)
    # data2vec-vision selects differently: `idx + 1 in out_indices` over hidden_states (modeling_data2vec_vision.py,
    # Data2VecVisionForSemanticSegmentation.forward), where 0 selects nothing: [0, 2, 3, 4] would feed its FPN three
    # levels (transformers runs that, and so does refvit). [2, 3, 4, 5] = hidden_states[1..4], the 4 layers' outputs.
    data2vec = {**common, "out_indices": [2, 3, 4, 5]}
    return {"beit": (tf.BeitForSemanticSegmentation, tf.BeitConfig(**common), tf.BeitImageProcessorPil(**processor)),
            "data2vec": (tf.Data2VecVisionForSemanticSegmentation, tf.Data2VecVisionConfig(**data2vec),
                         tf.BeitImageProcessorPil(**processor))}


def pixel_values(processor, images):
    from PIL import Image

    return processor([Image.fromarray(i) for i in images], return_tensors="pt")["pixel_values"]


def predict(model, processor, images, batch: int = 48):
    """(logits float32 (N, K, 32, 32), masks uint8 (N, SIZE, SIZE) from the processor's post-processing)."""
    import torch

    model.eval()
    logits, masks = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out = model(pixel_values=pixel_values(processor, images[i:i + batch]))
            logits.append(out.logits.numpy())
            maps = processor.post_process_semantic_segmentation(out, target_sizes=[(SIZE, SIZE)] * len(out.logits))
            masks += [m.numpy().astype(np.uint8) for m in maps]
    return np.concatenate(logits), np.stack(masks)


def versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def train(name, model, x, y, epochs=EPOCHS, lr=LR):
    """AdamW + one-cycle schedule; transformers' own loss (cross-entropy on the logits upsampled to the label size,
    plus 0.4 x the auxiliary FCN head's); random horizontal flips (every class is left-right symmetric)."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    steps = epochs * math.ceil(len(x) / BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), BATCH):
            idx = order[i:i + BATCH]
            xb, yb = x[idx], y[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            yb = torch.where(flip[:, None, None], yb.flip(-1), yb)
            loss = model(pixel_values=xb, labels=yb).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"  {name} epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}", flush=True)
    model.eval()


def setup_torch():
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(SEED)


def command(names, epochs: int) -> str:
    """The command that trains this model (no --out: a scratch folder's path is no part of the recipe)."""
    return " ".join(["python golden/train_segmentation.py", *(["--models", *names] if list(names) != ORDER else []),
                     *([f"--epochs {epochs}"] if epochs != EPOCHS else [])])


def train_all(names, out: Path, epochs: int) -> None:
    import torch

    setup_torch()
    train_x, train_y, test_x, test_y = splits()
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "shapes_test.npz", images=test_x, masks=test_y)
    for name in names:
        cls, config, processor = specs()[name]
        torch.manual_seed(SEED)
        model = cls(config)
        x, y = pixel_values(processor, train_x), torch.from_numpy(train_y.astype(np.int64))
        print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, {epochs} epochs", flush=True)
        t0, cpu0 = time.perf_counter(), time.process_time()
        train(name, model, x, y, epochs)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        out_dir = out / f"segment-{name}"
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
        logits, masks = predict(model, processor, test_x)
        np.savez_compressed(out_dir / "logits.npz", logits=logits[:LOGIT_IMAGES], masks=masks)
        per, miou, acc = iou(masks, test_y)
        meta = {"model": f"segment-{name}", "architecture": type(model).__name__,
                "parameters": sum(p.numel() for p in model.parameters()), "versions": versions(), "seed": SEED,
                "command": command(names, epochs),
                "dataset": {"generator": "golden/train_segmentation.py scene()", "classes": CLASSES,
                            "train": {"images": TRAIN_SIZE, "seed": SEED},
                            "test": {"images": TEST_SIZE, "seed": SEED + 1, "file": "shapes_test.npz"}},
                "training": {"epochs": epochs, "batch_size": BATCH, "optimizer": "AdamW(weight_decay=0.05) + "
                             "OneCycleLR", "max_lr": LR, "augmentation": "random horizontal flips", "threads": 1,
                             "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1)},
                "test_iou": dict(zip(CLASSES, per)), "test_miou": miou, "test_pixel_accuracy": acc}
        (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"{name}: test mIoU {miou:.4f}, pixel accuracy {acc:.4f}, IoU {np.round(per, 3).tolist()}, "
              f"{seconds:.0f} s -> {out_dir}", flush=True)


def check(names, out: Path) -> int:
    """Regenerate the test split, re-run framework inference on the saved models, compare with the records."""
    import transformers as tf

    setup_torch()
    problems = []
    _, _, test_x, test_y = (None, None, *dataset(TEST_SIZE, SEED + 1))
    with np.load(out / "shapes_test.npz") as z:
        for key, value in (("images", test_x), ("masks", test_y)):
            if not np.array_equal(z[key], value):
                problems.append(f"shapes_test.npz: {key} differ from the generator's (seed {SEED + 1})")
    for name in names:
        out_dir = out / f"segment-{name}"
        meta = json.loads((out_dir / "meta.json").read_text())
        config = json.loads((out_dir / "config.json").read_text())
        model = getattr(tf, config["architectures"][0]).from_pretrained(out_dir)
        processor = tf.BeitImageProcessorPil.from_pretrained(out_dir)
        logits, masks = predict(model, processor, test_x)
        with np.load(out_dir / "logits.npz") as z:
            ref, ref_masks = z["logits"], z["masks"]
        allowed = CHECK_TOLERANCE * max(1.0, float(np.abs(ref).max()))
        err = float(np.abs(logits[:len(ref)].astype(np.float64) - ref).max())
        if not err <= allowed:
            problems.append(f"segment-{name}: logits max abs error {err:.3g} > {allowed:.3g} vs logits.npz")
        top2 = np.sort(ref.astype(np.float64), axis=1)[:, -2:]
        decided = top2[:, 1] - top2[:, 0] > 2 * allowed       # (n, 32, 32): the class cannot swap within the bound
        differ = int((masks[:len(ref)] != ref_masks[:len(ref)])[decided].sum())
        later = int((masks[len(ref):] != ref_masks[len(ref):]).sum())  # no logits stored there: every pixel compared
        if differ or later:
            problems.append(f"segment-{name}: {differ + later} predicted pixels differ from the recorded masks")
        per, miou, acc = iou(masks, test_y)
        if not differ and not later and abs(miou - meta["test_miou"]) > 1e-12:
            problems.append(f"segment-{name}: mIoU {miou} vs recorded {meta['test_miou']}")
        print(f"segment-{name}: test mIoU {miou:.4f} (recorded {meta['test_miou']:.4f}), pixel accuracy {acc:.4f}; "
              f"logit error / allowed {err / allowed:.3f}")
    for p in problems:
        print(p)
    print(f"train_segmentation --check: {'OK' if not problems else f'{len(problems)} difference(s)'}")
    return 1 if problems else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="re-run framework inference only and compare")
    parser.add_argument("--models", nargs="+", choices=ORDER, default=ORDER, help="which models (default: all)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs (default {EPOCHS})")
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help=f"models directory (default {MODELS_DIR})")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.models, args.out)
    train_all(args.models, args.out, args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
