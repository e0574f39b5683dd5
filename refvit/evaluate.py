"""`refvit evaluate`: accuracy of a classifier on a whole dataset, and agreement with reference logits.

A porter checks a port on a dataset ("the same top-1 as transformers on every validation image, and where not?"),
a teacher checks a trained model. The images are classified by `refvit.batch` (in-process or on Dask, resumable);
this module maps the dataset's labels to the model's classes, compares with a reference-logits file and reports:
top-1/top-5 accuracy, per-class accuracy, the confusion matrix (text; a PNG when matplotlib is installed),
throughput, unreadable files; with a reference: top-1 agreement, max-abs logit error per image, the worst images.

Data for tests and docs/guide/datasets.md (`python -m refvit.evaluate ...`):
    digits OUT     the digits test split as a PNG ImageFolder (OUT/images/<digit>/<NNNN>.png) and, for each trained
                   digits model, OUT/<model>.reference.npz: PyTorch's recorded logits keyed by relative path
    photos OUT -n  N crops/flips of the shipped photos (golden/images) as a PNG ImageFolder, for throughput
    bench MODEL DATA   images/s in-process and on LocalClusters of 1 and 2 workers, each run a fresh process
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

WORST = 10  # images listed by largest reference error
TEXT_CONFUSION_MAX = 30  # classes: above this the text report lists the most frequent confusions instead


# ----------------------------------------------------------------------------------------------------------------------
# Labels and references


def label_ids(labels: set[str], config, label_map: str | None = None) -> dict[str, int]:
    """Class id of each dataset label: through `label_map` (a JSON file {label: class id or class name}) if given,
    else the model's label2id (ImageFolder folders named as the model's classes, e.g. "tabby, tabby cat")."""
    id2label = {int(k): v for k, v in dict(config.id2label).items()}
    label2id = {v: k for k, v in id2label.items()}
    label2id.update({str(k): int(v) for k, v in dict(getattr(config, "label2id", {}) or {}).items()})
    if label_map:
        try:
            mapping = json.loads(Path(label_map).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"--label-map {label_map}: cannot read a JSON object ({e})") from None
        if not isinstance(mapping, dict):
            raise InputError(f"--label-map {label_map}: expected a JSON object {{dataset label: class id or name}}")
        ids = {}
        for k, v in mapping.items():
            if isinstance(v, int) and not isinstance(v, bool) and v in id2label:
                ids[str(k)] = v
            elif isinstance(v, str) and v in label2id:
                ids[str(k)] = label2id[v]
            else:
                raise InputError(f"--label-map {label_map}: {k!r} -> {v!r} is not a class of the model "
                                 f"(ids 0..{len(id2label) - 1} or names like {list(label2id)[:3]})")
    else:
        ids = {k: label2id[k] for k in labels if k in label2id}
    unknown = sorted(set(labels) - set(ids))
    if unknown:
        raise InputError(f"{len(unknown)} dataset label(s) are not classes of the model, e.g. {unknown[:5]}; the "
                         f"model's labels look like {list(label2id)[:3]}: pass --label-map FILE.json "
                         "({\"folder name\": class id or class name, ...})")
    return ids


def load_reference(path) -> dict[str, np.ndarray]:
    """Reference logits per image, keyed by path relative to the data root: an .npz or .safetensors file with one
    1-D array per image (key = relative path), or an .npz with a `paths` string array and a 2-D `logits` array."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"--reference {path}: no such file")
    if path.endswith(".safetensors"):
        from .checkpoint.safetensors import read_safetensors

        arrays = {k: np.array(v) for k, v in read_safetensors(path, mmap=False).items()}
    elif path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise InputError(f"--reference {path}: not a readable .npz without pickles ({e})") from None
    else:
        raise InputError(f"--reference {path}: expected a .npz or .safetensors file of per-image logits")
    if set(arrays) == {"paths", "logits"} or ("paths" in arrays and "logits" in arrays and arrays["logits"].ndim == 2):
        paths, logits = arrays["paths"], arrays["logits"]
        if len(paths) != len(logits):
            raise InputError(f"--reference {path}: {len(paths)} paths but {len(logits)} logits rows")
        return {str(p): np.asarray(v) for p, v in zip(paths, logits)}
    bad = [k for k, v in arrays.items() if v.ndim != 1]
    if bad:
        raise InputError(f"--reference {path}: {bad[:3]} are not 1-D logits vectors (one array per image, keyed by "
                         "the image path relative to the data root)")
    return {Path(k).as_posix(): v for k, v in arrays.items()}


def reference_fields(record: dict, reference: dict[str, np.ndarray]) -> dict:
    """Adds to a fresh record: the reference's top-1 class, whether ours agrees, the max-abs logit error."""
    if "logits" not in record:
        return record
    ref = reference.get(record["path"])
    if ref is None:
        record["reference"] = "missing"
    elif ref.shape != record["logits"].shape:
        record["reference"] = f"shape {list(ref.shape)}, ours {list(record['logits'].shape)}"
    else:
        record["reference_top1"] = int(np.argmax(ref))
        record["agree"] = record["reference_top1"] == record["top"][0]
        record["max_abs_err"] = float(np.abs(record["logits"].astype(np.float64) - ref.astype(np.float64)).max())
    return record


# ----------------------------------------------------------------------------------------------------------------------
# The report


def summarize(records: list[dict], id2label: dict[int, str], ids: dict[str, int] | None, run: dict,
              worst: int = WORST) -> dict:
    """Everything `refvit evaluate` prints, as plain data (its --json output)."""
    num_labels = len(id2label)
    ok = [r for r in records if "error" not in r]
    report = {"images": len(records), "classified": len(ok),
              "unreadable": [{"path": r["path"], "error": r["error"]} for r in records if "error" in r], **run}
    labelled = [r for r in ok if r.get("label") is not None and ids is not None]
    if labelled:
        truth = np.array([ids[r["label"]] for r in labelled])
        pred = np.array([r["top"][0] for r in labelled])
        top5 = np.array([ids[r["label"]] in r["top"][:5] for r in labelled])
        confusion = np.zeros((num_labels, num_labels), np.int64)  # rows: true class, columns: predicted
        np.add.at(confusion, (truth, pred), 1)
        per_class = [{"class": int(c), "label": id2label[c], "images": int(confusion[c].sum()),
                      "correct": int(confusion[c, c]), "accuracy": float(confusion[c, c] / confusion[c].sum())}
                     for c in range(num_labels) if confusion[c].sum()]
        report.update(labelled=len(labelled), correct=int((truth == pred).sum()),
                      top1=float((truth == pred).mean()), top5=float(top5.mean()), per_class=per_class,
                      confusion=confusion.tolist())
    compared = [r for r in ok if "max_abs_err" in r]
    if compared or any("reference" in r for r in ok):
        errors = np.array([r["max_abs_err"] for r in compared])
        order = sorted(compared, key=lambda r: (-r["max_abs_err"], r["path"]))[:worst]
        report["reference"] = {
            "compared": len(compared), "agree": int(sum(r["agree"] for r in compared)),
            "missing": [r["path"] for r in ok if r.get("reference") == "missing"],
            "mismatched_shape": [r["path"] for r in ok if str(r.get("reference", "")).startswith("shape")],
            "max_abs_err": float(errors.max()) if len(errors) else None,
            "median_abs_err": float(np.median(errors)) if len(errors) else None,
            "disagree": [r["path"] for r in compared if not r["agree"]],
            "worst": [{"path": r["path"], "max_abs_err": r["max_abs_err"], "ours": r["top"][0],
                       "reference": r["reference_top1"]} for r in order]}
    return report


def format_report(report: dict, id2label: dict[int, str]) -> str:
    lines = [f"{report['model']} on {report['data']}: {report['images']} images, {report['classified']} classified, "
             f"{len(report['unreadable'])} unreadable"]
    if "top1" in report:
        lines.append(f"top-1 accuracy  {report['top1']:.2%}  ({report['correct']}/{report['labelled']})")
        lines.append(f"top-5 accuracy  {report['top5']:.2%}")
        lines.append("per class:")
        lines += [f"  {c['label']:>12.12s}  {c['accuracy']:7.2%}  ({c['correct']}/{c['images']})"
                  for c in report["per_class"]]
        lines += format_confusion(np.array(report["confusion"]), id2label)
    ref = report.get("reference")
    if ref:
        lines.append(f"reference {report.get('reference_file')}: top-1 agreement {ref['agree']}/{ref['compared']}, "
                     f"max abs logit error {ref['max_abs_err']:.3g} (median {ref['median_abs_err']:.3g})"
                     if ref["compared"] else "reference: no image compared")
        if ref["missing"]:
            lines.append(f"  not in the reference: {len(ref['missing'])} images, e.g. {ref['missing'][:3]}")
        if ref["mismatched_shape"]:
            lines.append(f"  logits of another shape: {ref['mismatched_shape'][:3]}")
        if ref["disagree"]:
            lines.append(f"  top-1 differs on: {ref['disagree'][:10]}")
        if ref["worst"]:
            lines.append("  worst images (max abs logit error, our class, reference class):")
            lines += [f"    {w['max_abs_err']:.3g}  {w['ours']:>4d} {w['reference']:>4d}  {w['path']}"
                      for w in ref["worst"]]
    for u in report["unreadable"][:20]:
        lines.append(f"unreadable: {u['path']}: {u['error']}")
    if len(report["unreadable"]) > 20:
        lines.append(f"unreadable: ... {len(report['unreadable']) - 20} more (see --json)")
    t = report["throughput"]
    resumed = f", {t['resumed']} resumed from {report['results_file']}" if t["resumed"] else ""
    lines.append(f"throughput  {t['images_per_s']:.1f} images/s ({t['computed']} images in {t['seconds']:.2f} s, "
                 f"{t['runner']}, batch size {t['batch_size']}{resumed})")
    if report.get("confusion_png"):
        lines.append(f"confusion matrix PNG: {report['confusion_png']}")
    if report.get("confusion_png_skipped"):
        lines.append(f"confusion matrix PNG: {report['confusion_png_skipped']}")
    return "\n".join(lines)


def format_confusion(confusion: np.ndarray, id2label: dict[int, str]) -> list[str]:
    """The confusion matrix as text (rows: true class, columns: predicted), or its largest off-diagonal cells."""
    present = np.flatnonzero(confusion.sum(0) + confusion.sum(1))
    if len(present) <= TEXT_CONFUSION_MAX:
        names = [id2label[c][:6] for c in present]
        width = max(4, *(len(n) for n in names), len(str(confusion.max())))
        lines = ["confusion matrix (rows: true class, columns: predicted):",
                 " " * (width + 2) + " ".join(n.rjust(width) for n in names)]
        lines += [f"{names[i].rjust(width)}  " + " ".join(str(confusion[c, p]).rjust(width) for p in present)
                  for i, c in enumerate(present)]
        return lines
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:20]
    pairs = [np.unravel_index(i, off.shape) for i in flat if off.flat[i]]
    return ["most frequent confusions (true -> predicted: images):"] + [
        f"  {id2label[t]} -> {id2label[p]}: {off[t, p]}" for t, p in pairs]


NO_MATPLOTLIB = "matplotlib is not installed: pip install matplotlib (refvit[tutorials] has it)"


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def confusion_png(confusion: np.ndarray, id2label: dict[int, str], path) -> bool:
    """Write the confusion matrix as a PNG heat map; False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        return False
    present = np.flatnonzero(confusion.sum(0) + confusion.sum(1))
    m = confusion[np.ix_(present, present)]
    size = min(20, 2 + 0.4 * len(present))
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    ax.imshow(m, cmap="Blues")
    if len(present) <= 50:
        names = [id2label[c] for c in present]
        ax.set_xticks(range(len(present)), names, rotation=90)
        ax.set_yticks(range(len(present)), names)
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class")
    fig.tight_layout()
    fig.savefig(path)
    return True


# ----------------------------------------------------------------------------------------------------------------------
# The whole run (the `evaluate` subcommand calls this)


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, what: str, stream=None):
        self.what, self.stream, self.t0 = what, stream or sys.stderr, time.perf_counter()
        self.active = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.first = None

    def __call__(self, done: int, total: int) -> None:
        if not self.active:
            return
        if self.first is None:
            self.first, self.t0 = done, time.perf_counter()
        rate = (done - self.first) / max(time.perf_counter() - self.t0, 1e-9)
        bar = "#" * int(30 * done / max(total, 1))
        eta = f"{(total - done) / rate:5.0f}s left" if rate > 0 else ""
        self.stream.write(f"\r{self.what} [{bar:<30s}] {done}/{total}  {rate:6.1f} img/s  {eta}")
        self.stream.flush()

    def close(self) -> None:
        if self.active:
            self.stream.write("\n")
            self.stream.flush()


def run_header(spec, data: str, reference: str | None) -> dict:
    """What a results file was computed with; --resume refuses a file written with other settings."""
    import hashlib

    def digest(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    return {"model": spec.path, "config_sha256": digest(os.path.join(spec.path, "config.json")),
            "dtype": spec.dtype, "backend": spec.backend, "data": os.path.abspath(data),
            "reference_sha256": digest(reference) if reference else None}


@dataclass(frozen=True)
class EvaluateOptions:
    """How `evaluate` runs and what it writes (the `refvit evaluate` options of the same names)."""

    reference: str | None = None      # reference logits to compare with (results file, .npz or .npy)
    batch_size: int = 16              # images per forward
    workers: int | None = None        # local Dask workers (None or 1: in this process)
    scheduler: str | None = None      # address of a running Dask scheduler
    client: Any = None                # a distributed.Client to use instead
    out: str | None = None            # results file (JSON lines), one record per image
    resume: bool = False              # continue the run recorded in `out`
    label_map: str | None = None      # JSON file mapping the data's label names to the model's
    dtype: str = "float32"
    backend: str = "numba"
    png: str | None = None            # the confusion matrix as an image (default: beside `out`)
    save_logits: bool = False         # every image's logits in the results file
    worst: int = WORST                # how many of the worst-agreeing images the report lists
    progress: Any = None              # called after each chunk (a Progress), closed at the end


def evaluate(model_dir, data, options: EvaluateOptions | None = None, **settings) -> dict:
    """Classify every image of `data` with the model in `model_dir` and return the report (see `summarize`).
    `options`, or the same fields as keywords (`evaluate(dir, data, batch_size=32)`), say how."""
    from . import batch

    o = dataclasses.replace(options or EvaluateOptions(), **settings)
    spec = batch.ModelSpec(os.path.abspath(os.fspath(model_dir)), o.dtype, o.backend)
    if o.resume and not o.out:
        raise InputError("--resume needs --out: the results file of the run to continue")
    if o.png and not matplotlib_available():  # asked for by name: say so now, not after the run
        raise InputError(f"--png {o.png}: the confusion matrix PNG needs matplotlib, and {NO_MATPLOTLIB}")
    dataset = batch.load_dataset(data)
    if o.label_map and not dataset.labelled:
        raise InputError(f"--label-map {o.label_map}: {data} has no labels (a flat folder, or a list without a label "
                         "column), so there is nothing to map: leave --label-map out, or give labelled data")
    model, _ = batch._loaded(spec)  # the parent's copy: labels, and the in-process runner's model
    id2label = {int(k): str(v) for k, v in dict(model.config.id2label).items()}
    ids = label_ids({i.label for i in dataset.items if i.label is not None}, model.config, o.label_map) \
        if dataset.labelled else None
    ref = load_reference(o.reference) if o.reference else None
    finish = (lambda r: reference_fields(r, ref)) if ref is not None else None
    results = batch.ResultsFile(o.out, run_header(spec, data, o.reference), o.resume, o.save_logits) if o.out else None
    runner = ("in-process" if not (o.client or o.scheduler or (o.workers or 1) > 1 and batch.dask_available())
              else "Dask " + (o.scheduler or ("client" if o.client else f"LocalCluster({o.workers} workers)")))
    try:
        resumed = len(results.done) if results else 0
        t0 = time.perf_counter()
        done = batch.run_dataset(spec, dataset, batch_size=o.batch_size, workers=o.workers, scheduler=o.scheduler,
                                 client=o.client, results=results, finish=finish, on_chunk=o.progress)
        seconds = time.perf_counter() - t0
    finally:
        if results is not None:
            results.close()
        if o.progress is not None and hasattr(o.progress, "close"):
            o.progress.close()
    records = [done[item.key] for item in dataset.items]
    computed = len(records) - resumed
    run = {"model": spec.path, "data": os.path.abspath(data), "reference_file": o.reference, "results_file": o.out,
           "throughput": {"computed": computed, "resumed": resumed, "seconds": seconds, "runner": runner,
                          "batch_size": o.batch_size, "images_per_s": computed / seconds if seconds > 0 else 0.0}}
    report = summarize(records, id2label, ids, run, o.worst)
    if "confusion" in report:
        png = o.png or (os.path.splitext(o.out)[0] + ".confusion.png" if o.out else None)
        if png and confusion_png(np.array(report["confusion"]), id2label, png):
            report["confusion_png"] = png
        elif png:  # the default name beside --out: the report says why there is no PNG
            report["confusion_png_skipped"] = f"{png} not written: {NO_MATPLOTLIB}"
    report["records"] = records
    return report


# ----------------------------------------------------------------------------------------------------------------------
# Data for tests and docs/guide/datasets.md


def golden_models_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "golden" / "models"


def write_digits_imagefolder(out, models_dir=None) -> dict:
    """The digits test split as OUT/images/<digit>/<NNNN>.png (NNNN: position in digits_test.npz), and for every
    trained digits model (golden/models/digits-*, with a logits.npz), OUT/<model>.reference.npz: its recorded PyTorch
    logits keyed by relative path.

    The PNGs hold exactly the pixels the recorded run fed its processor (`refvit.datasets.digit_image`: 8x8 RGB,
    uint8; PNG is lossless), so evaluating this folder repeats the recorded run."""
    from .datasets import digit_image

    models_dir = Path(models_dir or golden_models_dir())
    with np.load(models_dir / "digits_test.npz") as z:
        scans, labels = z["images"], z["labels"]
    out = Path(out)
    keys = []
    for i, (scan, label) in enumerate(zip(scans, labels)):
        key = f"{int(label)}/{i:04d}.png"
        (out / "images" / str(int(label))).mkdir(parents=True, exist_ok=True)
        digit_image(scan).save(out / "images" / key, format="PNG")
        keys.append(key)
    references = {}
    # Only the digits models: golden/models also holds the segmentation models, whose logits are per shape scene.
    digits_models = (p for p in models_dir.glob("digits-*") if (p / "logits.npz").is_file())
    for model in sorted(digits_models):
        with np.load(model / "logits.npz") as z:
            logits = z["logits"]
        if len(logits) != len(keys):
            raise InputError(f"{model}/logits.npz has {len(logits)} rows, digits_test.npz {len(keys)} images")
        path = out / f"{model.name}.reference.npz"
        np.savez(path, paths=np.array(keys), logits=logits)
        references[model.name] = str(path)
    return {"images": str(out / "images"), "count": len(keys), "references": references}


def write_photo_imagefolder(out, count: int = 4000, size: int = 64, seed: int = 0, photos_dir=None) -> dict:
    """`count` crops of the shipped photos (random square crops of 1/4 to all of the short side, random flips,
    resized to size x size), as OUT/<photo name>/<NNNNN>.png: a larger dataset for throughput."""
    from PIL import Image

    from .processing import load_image

    photos_dir = Path(photos_dir or Path(__file__).resolve().parent.parent / "golden" / "images")
    photos = {p.stem: load_image(p) for p in sorted(photos_dir.iterdir()) if p.suffix.lower() in (".jpg", ".png")}
    if not photos:
        raise InputError(f"{photos_dir}: no .jpg/.png photos to crop")
    rng = np.random.default_rng(seed)
    names = sorted(photos)
    for name in names:
        (Path(out) / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = names[i % len(names)]
        photo = photos[name]
        short = min(photo.size)
        side = int(rng.integers(short // 4, short + 1))
        x, y = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
        crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.25:
            crop = crop.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        crop.save(Path(out) / name / f"{i:05d}.png", format="PNG")
    return {"images": str(out), "count": count}


def bench_one(model_dir, data, workers: int = 0, batch_size: int = 16) -> dict:
    """One timed run of `refvit.batch` over `data` (workers 0: in-process; N: a LocalCluster of N processes, even for
    N = 1): start-up (model load, JIT cache, cluster start) and the run itself timed apart."""
    from contextlib import nullcontext

    from . import batch

    spec = batch.ModelSpec(os.path.abspath(os.fspath(model_dir)))
    chunks = batch.chunked(batch.load_dataset(data).items, batch_size)
    if workers and not batch.dask_available():
        raise InputError(_NEEDS_DASK)
    t0 = time.perf_counter()
    if not workers:
        batch.warm_up(spec)
    context = batch.dask_client(workers, spec=spec, local_cluster_of_one=True) if workers else nullcontext((None, 0))
    with context as (client, threads):
        if client is not None:
            client.run(batch.warm_up, spec, threads)  # each worker loads its model: start-up, not run time
        t1 = time.perf_counter()
        finished = batch.run_on_dask(client, spec, chunks, 5, threads) if client is not None else \
            batch.run_in_process(spec, chunks, 5)
        images = sum(len(records) for _, records in finished)
        t2 = time.perf_counter()
    return {"runner": f"LocalCluster, {workers} worker{'s' * (workers > 1)} x {threads} Numba thread"
            f"{'s' * (threads > 1)}" if workers else "in-process", "images": images, "startup_s": t1 - t0,
            "run_s": t2 - t1, "images_per_s": images / (t2 - t1), "overall_images_per_s": images / (t2 - t0)}


_NEEDS_DASK = ("timing a LocalCluster (--workers N) needs Dask: pip install 'refvit[dask]', or pass --workers "
               "with no count to time in-process only")


def bench(model_dir, data, workers=(1, 2), batch_size: int = 16) -> list[dict]:
    """`bench_one` in-process and on LocalClusters of each worker count, each in a fresh process (fair
    timing, as `refvit bench`), with the 1-minute load average when it ended (the machine may be shared)."""
    import subprocess

    from . import batch

    batch.load_dataset(data)  # bad input is reported here, once, not by a child process
    batch.ModelSpec(os.path.abspath(os.fspath(model_dir)))
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise InputError(f"{model_dir}: no config.json; pass a save_pretrained directory")
    if any(workers) and not batch.dask_available():
        raise InputError(_NEEDS_DASK)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    rows = []
    for n in [0, *workers]:
        cmd = [sys.executable, "-m", "refvit.evaluate", "bench-one", os.fspath(model_dir), os.fspath(data),
               "--workers", str(n), "--batch-size", str(batch_size)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode == 2:  # the child's input error, already one line
            raise InputError(done.stderr.strip().splitlines()[-1].split(": ", 1)[-1])
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-800:]}")
        rows.append({**json.loads(done.stdout), "load": os.getloadavg()[0]})
        print(f"  {rows[-1]['runner']}: {rows[-1]['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    """`python -m refvit.evaluate ...`: its exit code (refvit/exits.py: 2 bad input, 130 Ctrl-C, ...)."""
    from . import exits

    return exits.run("python -m refvit.evaluate", lambda: _main(argv))


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m refvit.evaluate", description="datasets and throughput for "
                                     "refvit evaluate / classify (docs/guide/datasets.md)")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("digits", help="the digits test split as a PNG ImageFolder + reference logits per model")
    p.add_argument("out", help="folder to write (the ImageFolder and the reference .npz files)")
    p.add_argument("--models", help="golden/models folder (default: this checkout's)")
    p = sub.add_parser("photos", help="a synthetic ImageFolder of crops/flips of golden/images")
    p.add_argument("out", help="folder to write the ImageFolder into")
    p.add_argument("-n", "--count", type=int, default=4000, help="images (default 4000)")
    p.add_argument("--size", type=int, default=64, help="side in pixels (default 64)")
    p = sub.add_parser("bench", help="images/s in-process vs LocalCluster (fresh process each)")
    p.add_argument("model_dir", help="a save_pretrained directory")
    p.add_argument("data", help="an ImageFolder tree, a folder of images, or a .csv/.jsonl list")
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="LocalCluster sizes to time besides "
                   "in-process (default 1 2; needs Dask); none: in-process only")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("bench-one", help="one timed run (bench runs each in a fresh process); prints JSON")
    p.add_argument("model_dir", help="a save_pretrained directory")
    p.add_argument("data", help="an ImageFolder tree, a folder of images, or a .csv/.jsonl list")
    p.add_argument("--workers", type=int, default=0, help="0: in-process; N: a LocalCluster of N")
    p.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    if args.what == "digits":
        print(json.dumps(write_digits_imagefolder(args.out, args.models), indent=1))
    elif args.what == "photos":
        print(json.dumps(write_photo_imagefolder(args.out, args.count, args.size), indent=1))
    elif args.what == "bench-one":
        print(json.dumps(bench_one(args.model_dir, args.data, args.workers, args.batch_size)))
    else:
        load = os.getloadavg()
        rows = bench(args.model_dir, args.data, args.workers, args.batch_size)
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        print("| runner | images | start-up s | run s | images/s (run) | images/s (with start-up) | load (1 min) |\n"
              "|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['runner']} | {r['images']} | {r['startup_s']:.1f} | {r['run_s']:.1f} | "
                  f"{r['images_per_s']:.1f} | {r['overall_images_per_s']:.1f} | {r['load']:.2f} |")
        print(f"\n{os.cpu_count()} CPUs; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
