"""Train tiny ViT, DeiT (distilled from a BiT teacher), BEiT, CvT and BiT classifiers on scikit-learn's digits.

Random weights make meaningless pictures; these models really classify real handwriting (1,797 8x8 scans bundled
with scikit-learn), so tutorials and tests have something to look at. Needs the `golden` extra (torch, transformers,
scikit-learn):
    pip install -e ".[golden]"
    python golden/train_digits.py             # train all five (~5 min of CPU, one thread), write golden/models/
    python golden/train_digits.py --check     # framework inference only: re-run the saved models, compare records
    python golden/train_digits.py --distillation-study golden/distillation_study.json   # DeiT study (~10 min CPU)
    python golden/train_digits.py --record-losses golden/distillation_losses.json       # DeiT losses on one batch

Everything runs on CPU with one thread and fixed seeds. Each image is `refvit.datasets.digit_image(scan)` (the same
function refvit's tests call) and goes through the model's own transformers image processor, upscaled to 32x32.

Written under golden/models/:
    digits-{bit,deit,vit,beit,cvt}/   config.json + model.safetensors (save_pretrained), preprocessor_config.json,
                                      meta.json (versions, seeds, command, training time, epochs, test accuracy,
                                      the framework's predicted class for every test image), logits.npz (float32
                                      logits for the test split; DeiT also cls_logits and distillation_logits)
    digits_test.npz                   the test split: images uint8 (N, 8, 8) as scanned (0..16), labels int64,
                                      indices into load_digits()
DeiT is trained the DeiT way (Touvron et al. 2021, hard-label distillation):
    loss = 1/2 CE(cls_logits, y) + 1/2 CE(distillation_logits, argmax teacher(x)), the teacher being the BiT model.

--distillation-study FILE (writes only FILE, never golden/models/): the same DeiT recipe and seed, trained with no
teacher (both heads on the labels), hard and soft distillation (DeiT eq. 2: tau 3, lambda 0.1), from the saved BiT
teacher (100% on the test split) and from a deliberately weak BiT teacher (the same BiT trained for WEAK_EPOCHS
epochs without augmentation); records each student's test accuracy, both heads', and how often the teacher's hard
labels differ from the true labels on the training images. Hard distillation from digits-bit is the golden
digits-deit recipe, so that row is read from golden/models/digits-deit/logits.npz. Re-running with the same FILE
resumes (keeps the rows already trained with the same versions and settings). tutorials/02_deit reads it.

--record-losses FILE (writes only FILE): the hard and soft distillation losses of train() (distillation_loss,
soft_distillation_loss), computed by the framework on one batch, the first LOSS_IMAGES test digits, from the saved
digits-deit student and digits-bit teacher in eval mode. tutorials/02_deit recomputes both in NumPy from refvit's
logits and compares; --check recomputes them with the framework and compares too, when FILE is
golden/distillation_losses.json.
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
sys.path.insert(0, str(ROOT.parent))  # run from a checkout: import refvit (digit_image)

from refvit.datasets import digit_image  # noqa: E402

MODELS_DIR = ROOT / "models"  # --out overrides it (trial runs)
SEED = 0             # split, weight init, batch order and augmentation
TEST_SIZE = 360      # 20% of 1,797, stratified by class
IMAGE_SIZE = 32      # each processor upscales the 8x8 scan to 32x32: patch 4 -> 8x8 = 64 tokens
BATCH = 64
MAX_SHIFT = 2        # augmentation: random shifts of up to 2 pixels at 32x32 (half a scan pixel)
# --check: framework re-run vs recorded logits, relative to max(1, max|ref|). PyTorch's float32 CPU results differ
# across CPUs (golden/generate.py FLOAT32_REGENERATION_TOL: up to 6.2e-6 measured, AMD EPYC vs Intel Xeon): the same
# 2e-5 bound, 3x that and 5x below the 1e-4 parity bound. A predicted class is compared only where the recorded two
# best logits are more than 2x the bound apart: a closer pair could swap within the bound on another CPU.
CHECK_TOLERANCE = 2e-5

LABELS = {str(i): str(i) for i in range(10)}  # id2label: class i is the digit i
LABEL_IDS = {str(i): i for i in range(10)}    # label2id

ORDER = ["bit", "deit", "vit", "beit", "cvt"]  # the BiT teacher first: DeiT learns from it


def specs() -> dict:
    """name -> (model class, config, processor, epochs, learning rate). Sizes chosen to train in ~2 min each."""
    import transformers as tf

    vit_like = dict(image_size=IMAGE_SIZE, patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                    intermediate_size=128, id2label=LABELS, label2id=LABEL_IDS)
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return {
        "bit": (tf.BitForImageClassification,
                tf.BitConfig(layer_type="preactivation", embedding_size=32, hidden_sizes=[64, 128], depths=[1, 1],
                             num_groups=8, id2label=LABELS, label2id=LABEL_IDS),
                tf.BitImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=square), 30, 2e-3),
        "deit": (tf.DeiTForImageClassificationWithTeacher, tf.DeiTConfig(**vit_like),
                 tf.DeiTImageProcessorPil(size=square, crop_size=square), 30, 2e-3),
        "vit": (tf.ViTForImageClassification, tf.ViTConfig(**vit_like),
                tf.ViTImageProcessorPil(size=square), 30, 2e-3),
        "beit": (tf.BeitForImageClassification,
                 # absolute embeddings too: the relative bias table starts at zero, so with mean pooling alone the
                 # model starts blind to position (here: 92% after 30 epochs without them, 96% after 20 with them)
                 tf.BeitConfig(**vit_like, use_relative_position_bias=True, use_absolute_position_embeddings=True,
                               use_mean_pooling=True, layer_scale_init_value=0.1),
                 tf.BeitImageProcessorPil(size=square, do_center_crop=False), 25, 2e-3),
        "cvt": (tf.CvtForImageClassification,
                tf.CvtConfig(patch_sizes=[3, 3, 3], patch_stride=[2, 2, 2], patch_padding=[1, 1, 1],
                             embed_dim=[32, 48, 64], num_heads=[1, 2, 4], depth=[1, 2, 3], mlp_ratio=[2.0, 2.0, 2.0],
                             drop_path_rate=[0.0, 0.0, 0.0], id2label=LABELS, label2id=LABEL_IDS),
                 tf.ConvNextImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_pct=0.875), 20, 2e-3),
    }


def load_split():
    """(train scans, train labels, test scans, test labels, test indices): a seeded stratified split of load_digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train, test = train_test_split(np.arange(len(digits.target)), test_size=TEST_SIZE, stratify=digits.target,
                                   random_state=SEED)
    train, test = np.sort(train), np.sort(test)
    images = digits.images.astype(np.uint8)  # float 0..16, integral: stored as uint8
    assert np.array_equal(images, digits.images)
    labels = digits.target.astype(np.int64)
    return images[train], labels[train], images[test], labels[test], test


def pixel_values(processor, scans):
    """(N, 3, 32, 32) float32 torch tensor: each scan as `digit_image`, through the framework's processor."""
    return processor([digit_image(s) for s in scans], return_tensors="pt")["pixel_values"]


def shift(x, background, offsets):
    """Translate each image by offsets[i] = (dy, dx) pixels, filling with the processed value of black."""
    import torch
    import torch.nn.functional as F

    pad = MAX_SHIFT
    padded = F.pad(x - background, (pad, pad, pad, pad)) + background  # B, 3, H + 2p, W + 2p
    h, w = x.shape[-2:]
    rows = [padded[i, :, pad - dy:pad - dy + h, pad - dx:pad - dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
    return torch.stack(rows)  # B, 3, H, W


def predict(model, x, batch: int = 120):
    """The model's output dict (eval mode, no grad), batched, as float32 NumPy arrays."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(pixel_values=x[i:i + batch])
            outs.append({k: v.numpy() for k, v in out.items() if k.endswith("logits")})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def distillation_loss(out, labels, teacher_labels):
    """DeiT's hard-label distillation (Touvron et al. 2021, eq. 3): the class token learns the labels, the
    distillation token the teacher's argmax. transformers' DeiTForImageClassificationWithTeacher computes no loss."""
    import torch.nn.functional as F

    return 0.5 * (F.cross_entropy(out.cls_logits, labels) + F.cross_entropy(out.distillation_logits, teacher_labels))


SOFT_TAU, SOFT_LAMBDA = 3.0, 0.1   # DeiT §5 soft distillation: the paper's temperature and weight
WEAK_EPOCHS = 2                    # the study's weak teacher: BiT trained 2 epochs, no augmentation
LOSS_IMAGES = 64                   # --record-losses: the first 64 test digits, one training batch's worth
LOSSES_FILE = ROOT / "distillation_losses.json"


def soft_distillation_loss(out, labels, teacher_logits):
    """DeiT eq. 2 with the distillation token: (1 − λ) CE(cls_logits, y) + λ τ² KL(softmax(t/τ) ‖ softmax(d/τ))."""
    import torch.nn.functional as F

    kl = F.kl_div(F.log_softmax(out.distillation_logits / SOFT_TAU, -1), F.log_softmax(teacher_logits / SOFT_TAU, -1),
                  reduction="batchmean", log_target=True)
    return (1 - SOFT_LAMBDA) * F.cross_entropy(out.cls_logits, labels) + SOFT_LAMBDA * SOFT_TAU ** 2 * kl


def train(name, model, x, y, epochs, lr, teacher=None, mode="hard", augment=True):
    """AdamW + one-cycle schedule, random shifts; DeiT adds the distillation loss from `teacher`: mode "hard" (the
    golden recipe), "soft" (DeiT eq. 2) or "labels" (no teacher: both heads learn the labels)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(SEED)
    background = x.amin(dim=(0, 2, 3), keepdim=True)[0]  # 3, 1, 1: black is each channel's minimum
    if teacher is not None:
        teacher_model, teacher_x = teacher
        teacher_background = teacher_x.amin(dim=(0, 2, 3), keepdim=True)[0]
    steps = epochs * math.ceil(len(x) / BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total, correct = 0.0, 0
        for i in range(0, len(x), BATCH):
            idx = order[i:i + BATCH]
            offsets = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (len(idx), 2), generator=gen)
            if not augment:
                offsets = torch.zeros_like(offsets)
            xb, yb = shift(x[idx], background, offsets), y[idx]
            out = model(pixel_values=xb)
            if mode == "labels" and hasattr(out, "distillation_logits"):
                loss = distillation_loss(out, yb, yb)
            elif teacher is None:
                loss = F.cross_entropy(out.logits, yb)
            else:  # the teacher sees the same shifted digits, through its own processor
                with torch.no_grad():
                    teacher_in = shift(teacher_x[idx], teacher_background, offsets)
                    teacher_logits = teacher_model(pixel_values=teacher_in).logits
                loss = (soft_distillation_loss(out, yb, teacher_logits) if mode == "soft"
                        else distillation_loss(out, yb, teacher_logits.argmax(-1)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((out.logits.argmax(-1) == yb).sum())
        print(f"  {name} epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}, train acc {correct / len(x):.4f}",
              flush=True)
    model.eval()


def versions() -> dict:
    import sklearn
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def setup_torch():
    import torch

    torch.set_num_threads(1)  # one core: the machine is shared, and results should not depend on thread count
    torch.manual_seed(SEED)


def train_all(names, out: Path, epochs_scale: float = 1.0) -> None:
    import torch

    setup_torch()
    train_scans, train_labels, test_scans, test_labels, test_index = load_split()
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "digits_test.npz", images=test_scans, labels=test_labels, indices=test_index.astype(np.int64))
    y = torch.from_numpy(train_labels)
    table = specs()
    for name in names:
        cls, config, processor, epochs, lr = table[name]
        epochs = max(1, round(epochs * epochs_scale))
        torch.manual_seed(SEED)
        model = cls(config)
        x = pixel_values(processor, train_scans)
        teacher = None
        if name == "deit":
            teacher_dir = out / "digits-bit"
            teacher_cls, _, teacher_processor, _, _ = table["bit"]
            teacher = (teacher_cls.from_pretrained(teacher_dir).eval(), pixel_values(teacher_processor, train_scans))
        print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, {epochs} epochs", flush=True)
        t0, cpu0 = time.perf_counter(), time.process_time()
        train(name, model, x, y, epochs, lr, teacher)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        save(out / f"digits-{name}", model, processor, test_scans, test_labels,
             dict(epochs=epochs, lr=lr, seconds=seconds, cpu_seconds=cpu_seconds))


def save(out_dir: Path, model, processor, test_scans, test_labels, training: dict) -> None:
    name = out_dir.name.removeprefix("digits-")
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    outputs = predict(model, pixel_values(processor, test_scans))
    np.savez(out_dir / "logits.npz", **outputs)
    predictions = outputs["logits"].argmax(-1)
    accuracy = float((predictions == test_labels).mean())
    meta = {
        "model": name,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": versions(),
        "seeds": {"split": SEED, "torch": SEED},
        "split": {"dataset": "sklearn.datasets.load_digits", "test_size": TEST_SIZE, "stratify": "target",
                  "random_state": SEED, "test_file": "digits_test.npz"},
        "command": " ".join(["python", *sys.argv]),
        "training": {"seconds": round(training["seconds"], 1), "cpu_seconds": round(training["cpu_seconds"], 1),
                     "epochs": training["epochs"], "batch_size": BATCH,
                     "optimizer": "AdamW(weight_decay=0.05) + OneCycleLR", "max_lr": training["lr"],
                     "augmentation": f"random shifts of up to {MAX_SHIFT} pixels at {IMAGE_SIZE}x{IMAGE_SIZE}",
                     "threads": 1, **({"teacher": "digits-bit", "loss": "0.5 CE(cls_logits, y) + 0.5 CE("
                                       "distillation_logits, teacher argmax)"} if name == "deit" else {})},
        "test_accuracy": accuracy,
        "test_correct": int((predictions == test_labels).sum()),
        "test_predictions": predictions.tolist(),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{name}: test accuracy {accuracy:.4f}, {training['seconds']:.0f} s ({training['cpu_seconds']:.0f} s CPU)"
          f" -> {out_dir}", flush=True)


def check(names, out: Path) -> int:
    """Re-run framework inference on the saved models; compare with the recorded logits, predictions and accuracy."""
    import transformers as tf

    setup_torch()
    problems = []
    _, _, test_scans, test_labels, test_index = load_split()
    with np.load(out / "digits_test.npz") as z:
        for key, value in (("images", test_scans), ("labels", test_labels), ("indices", test_index)):
            if not np.array_equal(z[key], value):
                problems.append(f"digits_test.npz: {key} differ from load_digits' seeded split")
    for name in names:
        out_dir = out / f"digits-{name}"
        meta = json.loads((out_dir / "meta.json").read_text())
        for lib in ("torch", "transformers"):
            if meta["versions"][lib] != versions()[lib]:
                print(f"warning: digits-{name} was recorded with {lib} {meta['versions'][lib]}, "
                      f"running {versions()[lib]}", file=sys.stderr)
        config = json.loads((out_dir / "config.json").read_text())
        model = getattr(tf, config["architectures"][0]).from_pretrained(out_dir)
        processor_class = json.loads((out_dir / "preprocessor_config.json").read_text())["image_processor_type"]
        processor = getattr(tf, processor_class + "Pil").from_pretrained(out_dir)  # the PIL backend refvit matches
        outputs = predict(model, pixel_values(processor, test_scans))
        predictions = outputs["logits"].argmax(-1)
        accuracy = float((predictions == test_labels).mean())
        worst = 0.0
        with np.load(out_dir / "logits.npz") as z:
            for key in z.files:
                ref = z[key]
                allowed = CHECK_TOLERANCE * max(1.0, float(np.abs(ref).max()))
                err = float(np.abs(outputs[key].astype(np.float64) - ref).max())
                worst = max(worst, err / allowed)
                if not err <= allowed:
                    problems.append(f"digits-{name}: {key} max abs error {err:.3g} > {allowed:.3g} vs logits.npz")
                if key == "logits":
                    top2 = np.sort(ref.astype(np.float64), axis=-1)[:, -2:]
                    decided = top2[:, 1] - top2[:, 0] > 2 * allowed  # the class cannot swap within the bound
        recorded = np.array(meta["test_predictions"])
        differ = int((predictions != recorded)[decided].sum())
        if differ:
            problems.append(f"digits-{name}: {differ} predictions differ")
        if differ == 0 and (predictions == recorded).all() and accuracy != meta["test_accuracy"]:
            problems.append(f"digits-{name}: accuracy {accuracy} vs recorded {meta['test_accuracy']}")
        print(f"digits-{name}: test accuracy {accuracy:.4f} (recorded {meta['test_accuracy']:.4f}); worst logit "
              f"difference / allowed {worst:.3f}; {int((~decided).sum())} near-tied image(s) not compared by class")
    if LOSSES_FILE.is_file() and out == MODELS_DIR and {"deit", "bit"} <= set(names):
        problems += check_losses()
    for p in problems:
        print(p)
    print(f"train_digits --check: {'OK' if not problems else f'{len(problems)} difference(s)'}")
    return 1 if problems else 0


def distillation_losses(models: Path = MODELS_DIR) -> dict:
    """The framework's hard and soft DeiT losses (train()'s functions) on the first LOSS_IMAGES test digits."""
    import torch
    import transformers as tf

    setup_torch()
    _, _, test_scans, test_labels, _ = load_split()
    scans, y = test_scans[:LOSS_IMAGES], torch.from_numpy(test_labels[:LOSS_IMAGES])
    student = tf.DeiTForImageClassificationWithTeacher.from_pretrained(models / "digits-deit").eval()
    teacher = tf.BitForImageClassification.from_pretrained(models / "digits-bit").eval()
    with torch.no_grad():
        out = student(pixel_values=pixel_values(tf.DeiTImageProcessorPil.from_pretrained(models / "digits-deit"), scans))
        teacher_logits = teacher(pixel_values=pixel_values(tf.BitImageProcessorPil.from_pretrained(models / "digits-bit"),
                                                           scans)).logits
        hard = distillation_loss(out, y, teacher_logits.argmax(-1)).item()
        soft = soft_distillation_loss(out, y, teacher_logits).item()
    return {"images": LOSS_IMAGES, "student": "digits-deit", "teacher": "digits-bit", "tau": SOFT_TAU,
            "lambda": SOFT_LAMBDA, "hard": hard, "soft": soft}


def check_losses(path: Path = LOSSES_FILE, models: Path = MODELS_DIR) -> list[str]:
    recorded = json.loads(path.read_text())
    now = distillation_losses(models)
    problems = []
    for key in ("hard", "soft"):
        allowed = CHECK_TOLERANCE * max(1.0, abs(recorded[key]))
        if not abs(now[key] - recorded[key]) <= allowed:
            problems.append(f"{path.name}: {key} loss {now[key]} vs recorded {recorded[key]}")
    print(f"{path.name}: hard {now['hard']:.6f} (recorded {recorded['hard']:.6f}), soft {now['soft']:.6f} "
          f"(recorded {recorded['soft']:.6f})")
    return problems


def distillation_study(path: Path, models: Path = MODELS_DIR) -> None:
    """Train the DeiT student of specs() with no teacher, hard and soft distillation, from the saved BiT teacher and a
    weak one; write the accuracies (and the teachers' disagreement with the labels on the training images) to path."""
    import torch

    setup_torch()
    train_scans, train_labels, test_scans, test_labels, _ = load_split()
    y = torch.from_numpy(train_labels)
    table = specs()
    bit_cls, bit_config, bit_processor, bit_epochs, bit_lr = table["bit"]
    teacher_x = pixel_values(bit_processor, train_scans)
    teacher_test = pixel_values(bit_processor, test_scans)
    torch.manual_seed(SEED)
    weak = bit_cls(bit_config)
    train("weak bit", weak, teacher_x, y, WEAK_EPOCHS, bit_lr, augment=False)
    teachers = {"digits-bit": bit_cls.from_pretrained(models / "digits-bit").eval(), "weak-bit": weak.eval()}
    record = {"command": " ".join(["python", *sys.argv]), "versions": versions(), "seed": SEED,
              "student": "digits-deit recipe (specs()['deit'], same epochs, lr, augmentation, seed)",
              "soft": {"tau": SOFT_TAU, "lambda": SOFT_LAMBDA}, "weak_teacher": {"epochs": WEAK_EPOCHS,
                                                                               "augmentation": "none"},
              "teachers": {}, "students": []}
    for tname, tmodel in teachers.items():
        with torch.no_grad():
            train_pred = torch.cat([tmodel(pixel_values=teacher_x[i:i + 256]).logits.argmax(-1)
                                    for i in range(0, len(teacher_x), 256)])
        test_acc = float((predict(tmodel, teacher_test)["logits"].argmax(-1) == test_labels).mean())
        record["teachers"][tname] = {"test_accuracy": test_acc,
                                     "train_disagrees_with_labels": int((train_pred != y).sum()),
                                     "train_images": len(y)}
        print(f"teacher {tname}: test {test_acc:.4f}, differs from the label on "
              f"{int((train_pred != y).sum())}/{len(y)} training images (unshifted)", flush=True)
    cls, config, processor, epochs, lr = table["deit"]
    x = pixel_values(processor, train_scans)
    x_test = pixel_values(processor, test_scans)
    # hard distillation from digits-bit *is* the golden digits-deit recipe (same seed, one thread: deterministic):
    # its row is read from the saved logits instead of being trained again
    saved = dict(np.load(models / "digits-deit" / "logits.npz"))
    record["students"].append({"distillation": "hard", "teacher": "digits-bit", "source": "golden/models/digits-deit",
                               **{f"{k}_accuracy": float((saved[k].argmax(-1) == test_labels).mean())
                                  for k in ("logits", "cls_logits", "distillation_logits")},
                               "heads_disagree": int((saved["cls_logits"].argmax(-1)
                                                      != saved["distillation_logits"].argmax(-1)).sum())})
    done = {}
    if path.is_file():  # resume: keep the rows of an earlier run of the same study (same versions and settings)
        old = json.loads(path.read_text())
        if all(old.get(k) == record[k] for k in ("versions", "seed", "soft", "weak_teacher", "teachers")):
            done = {(r["distillation"], r["teacher"]): r for r in old["students"] if "seconds" in r}
            record["command"] = old["command"] + " (resumed: " + record["command"] + ")"
    runs = [("labels", None), ("hard", "weak-bit"), ("soft", "weak-bit"), ("soft", "digits-bit")]
    for mode, tname in runs:
        if (mode, tname) in done:
            record["students"].append(done[(mode, tname)])
            continue
        torch.manual_seed(SEED)
        model = cls(config)
        t0 = time.perf_counter()
        train(f"deit {mode} {tname or ''}", model, x, y, epochs, lr,
              None if tname is None else (teachers[tname], teacher_x), mode)
        outs = predict(model, x_test)
        row = {"distillation": mode, "teacher": tname, "seconds": round(time.perf_counter() - t0, 1),
               **{f"{k}_accuracy": float((outs[k].argmax(-1) == test_labels).mean())
                  for k in ("logits", "cls_logits", "distillation_logits")},
               "heads_disagree": int((outs["cls_logits"].argmax(-1) != outs["distillation_logits"].argmax(-1)).sum())}
        record["students"].append(row)
        print(row, flush=True)
        path.write_text(json.dumps(record, indent=1) + "\n")   # after every run: partial results survive


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="re-run framework inference only and compare")
    parser.add_argument("--models", nargs="+", choices=ORDER, default=ORDER, help="which models (default: all)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every epoch count (for trials)")
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help=f"models directory (default {MODELS_DIR})")
    parser.add_argument("--distillation-study", type=Path, metavar="FILE",
                        help="train DeiT students (no teacher / hard / soft, strong and weak BiT teacher) and write "
                             "their accuracies to FILE; golden/models/ is only read")
    parser.add_argument("--record-losses", type=Path, metavar="FILE",
                        help="write the framework's hard and soft distillation losses on the first "
                             f"{LOSS_IMAGES} test digits to FILE (golden/models/ is only read)")
    args = parser.parse_args(argv)
    if args.record_losses:
        target = args.record_losses
        shown = f"golden/{target.name}" if target.resolve().parent == ROOT else target.name
        record = {"command": f"python golden/train_digits.py --record-losses {shown}",
                  "versions": versions(), **distillation_losses(args.out)}
        args.record_losses.write_text(json.dumps(record, indent=1) + "\n")
        print(record)
        return 0
    if args.distillation_study:
        distillation_study(args.distillation_study, args.out)
        return 0
    if args.check:
        return check(args.models, args.out)
    train_all(args.models, args.out, args.epochs_scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
