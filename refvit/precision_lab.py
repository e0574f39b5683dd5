"""`refvit precision MODEL DATA --format fp16|bf16|int8-dynamic`: what a reduced format does to a model, module by
module, and the smallest set of modules to keep in float32 (docs/precision.md).

Per module (every kernel call of the forward, named by checkpoint module), on the first `probe` images in one call:
max|activation| in float32 and its fp16 headroom (max / 65504), how many float32 values exceed fp16's range, how many
emulated values are inf/nan, the NMSE against float32 and what the module introduced (its NMSE minus its input's;
block verdicts by the parity toolkit's introduced/inherited rule). Over all of DATA: top-1 agreement with float32.
`keep_fp32="auto"`: greedily keep the module that introduced most error in float32 until the agreement reaches the
target, then drop again every kept module the target does not need; each step's agreement and cost is reported.

On Dask (`workers=N`, `scheduler=ADDRESS` or `client=`, the `refvit[dask]` extra, set up as `refvit.batch` does):
DATA is cut into parts whose bounds are multiples of every batch the run calls with (the float32 reference's and the
emulation's), the workers read and preprocess their parts (or receive their slice of a pixel array) and keep them;
the per-module table (one task on the probe images), the float32 predictions and the emulated predictions of every
agreement the keep-fp32 search asks for are tasks over those parts. A call sees the same images on a worker as in
one process, and thread counts never change refvit's bits, so the report is identical to the in-process one. Each
worker process loads the model once from its directory (a loaded model: the directory it was loaded from; changes
made to it in memory do not travel) and keeps its last few emulated copies.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from contextlib import contextmanager, nullcontext

import numpy as np

from .errors import InputError
from .precision import FP16_MAX, Arithmetic, Emulator, EmulatedModel, QUANTIZED_KERNELS, check_arithmetic, emulate

WEIGHT_ARG = {"linear": 1, "conv2d": 1, "depthwise_conv_tokens": 3, "conv_transpose2d": 1}


def reference(model) -> EmulatedModel:
    """The float32 model behind the same emulator, so its kernel calls carry the same module names."""
    import copy

    inner = copy.copy(getattr(model, "model", model))
    base = getattr(inner.kernels, "base", inner.kernels)
    arith = Arithmetic("float32")
    inner.kernels = Emulator(base, arith, getattr(inner.config, "model_type", ""))
    return EmulatedModel(inner, arith)


def load_pixels(model_dir, data, processor=None) -> np.ndarray:
    """DATA as pixel values: a .npy (B, C, H, W), an image, an ImageFolder tree, a folder or a .csv/.jsonl list."""
    from .batch import _is_image, load_dataset
    from .processing import AutoImageProcessor, load_image

    data = os.fspath(data)
    if data.endswith(".npy"):
        from .parity.capture import _load_array  # a file NumPy cannot read is an InputError, not a traceback

        x = _load_array(data)
        if x.ndim != 4:
            raise InputError(f"{data}: pixel values must be (B, C, H, W), got {x.shape}")
        return np.ascontiguousarray(x, np.float32)
    proc = AutoImageProcessor.from_pretrained(processor or model_dir)
    files = [data] if os.path.isfile(data) and _is_image(data) else [i.file for i in load_dataset(data).items]
    return np.concatenate([proc(load_image(f), return_tensors="np")["pixel_values"] for f in files])


def top1(model, x, batch: int, progress=None, done: int = 0, total: int = 0) -> np.ndarray:
    out = []
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch]).logits
        out.append(np.asarray(logits).reshape(len(x[i:i + batch]), -1).argmax(-1))
        if progress is not None:
            progress(done + i + len(out[-1]), total)
    return np.concatenate(out)


def _nmse(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    den = float((ref ** 2).sum())
    if not np.isfinite(a).all():
        return float("inf")
    return float(((a - ref) ** 2).sum() / den) if den else (0.0 if not a.any() else float("inf"))


def module_table(model, x, arith: Arithmetic) -> tuple[list[dict], object]:
    """Per module statistics on `x` (one call) and the parity Comparison of the two module traces."""
    from . import parity

    _, ref_calls = reference(model).profile(x)
    _, emu_calls = emulate(model, arith.format, arith.accumulate, arith.strict, arith.per_channel,
                           arith.keep_fp32).profile(x)
    rows, prev = [], 0.0
    for r, e in zip(ref_calls, emu_calls):
        ref, out = r.output, e.output
        finite = ref[np.isfinite(ref)]
        peak = float(np.abs(finite).max()) if finite.size else 0.0
        n = _nmse(out, ref)
        weights = r.weights
        rows.append({"module": r.name, "kernel": r.kernel, "emulated": e.emulated, "max_abs": peak,
                     "fp16_headroom": peak / FP16_MAX, "over_fp16": int((np.abs(finite) > FP16_MAX).sum()),
                     "nonfinite": int((~np.isfinite(out)).sum()), "nmse": n,
                     "introduced": max(n - prev, 0.0) if np.isfinite(n) else float("inf"), "weights": weights})
        prev = n if np.isfinite(n) else prev
    ref_t = parity.Trace({c.name: c.output for c in ref_calls}, {"source": "refvit float32"})
    emu_t = parity.Trace({c.name: c.output for c in emu_calls}, {"source": f"refvit {arith.format}"})
    comparison = parity.compare(ref_t, emu_t, tolerance="nmse:1e-6", reference_name="float32",
                                candidate_name=arith.format)
    verdicts = {}
    for b in comparison.blocks:
        verdicts[b.name] = b.verdict
    for row in rows:
        row["block"] = parity.block_of(row["module"])
        row["block_verdict"] = verdicts.get(row["block"], "ok")
    return rows, comparison


def analyse(model, x, format: str, accumulate="fp32", strict=False, per_channel=False, keep_fp32=(),
            target: float = 99.5, auto: bool = False, batch: int = 1, probe: int = 8, max_steps: int = 40,
            progress=None, workers: int | None = None, scheduler: str | None = None, client=None,
            processor=None) -> dict:
    """The whole report (see the module docstring) as a JSON-able dict.

    model: the float32 refvit model. x: pixel values (B, C, H, W), or DATA as `refvit precision` takes it (an image,
    a .npy, an ImageFolder tree, a folder, a .csv/.jsonl list), preprocessed with the model's processor (or
    `processor`, a directory). workers / scheduler / client: run on Dask (module docstring); None: in this process.
    Why so many parameters: they are the command's options (format, arithmetic, keep-fp32 search, batching,
    progress, Dask), passed through one by one so that the Python API and `refvit precision` take the same names."""
    arith = check_arithmetic(format, accumulate, strict, per_channel, keep_fp32)
    if np.dtype(getattr(model, "dtype", "float32")) != np.float32:
        raise InputError("precision: start from the float32 model (dtype='float32')")
    if not 0 < target <= 100:
        raise InputError(f"precision: the agreement target is a percentage in (0, 100], got {target}")
    if batch < 1 or probe < 1:
        raise InputError(f"precision: --batch and --probe-images are at least 1, got {batch} and {probe}")
    with runner(model, x, processor, workers, scheduler, client, [max(batch, 16), batch]) as run:
        rows, comparison = run.table(arith, probe)
        n = run.count
        total = n * (2 + (max_steps if auto else 0))
        counter = {"done": 0}

        def predictions(arith_or_none, per_call) -> np.ndarray:
            pred = run.top1(arith_or_none, per_call, progress, counter["done"], total)
            counter["done"] += n
            return pred

        truth = predictions(None, max(batch, 16))

        def agreement(keep) -> float:
            pred = predictions(check_arithmetic(format, accumulate, strict, per_channel, keep), batch)
            return 100.0 * float((pred == truth).mean())

        base = agreement(tuple(arith.keep_fp32))
        report = {"format": format, "arithmetic": arith.to_meta(), "images": n, "probe_images": min(probe, n),
                  "batch_per_call": batch, "agreement": base, "target": target, "modules": rows}
        if auto:
            report["keep_fp32"] = keep_search(rows, arith, agreement, base, target, max_steps)
    report["comparison"] = comparison
    return report


# ----------------------------------------------------------------------------------------------------------------------
# Where the forwards run: in this process, or on Dask (module docstring). Both give the same arrays.


class InProcess:
    def __init__(self, model, x):
        self.model, self.x, self.count = model, x, len(x)

    def table(self, arith: Arithmetic, probe: int):
        return module_table(self.model, self.x[:probe], arith)

    def top1(self, arith, per_call, progress, done, total) -> np.ndarray:
        m = self.model if arith is None else emulate(self.model, arith.format, arith.accumulate, arith.strict,
                                                     arith.per_channel, tuple(arith.keep_fp32))
        return top1(m, self.x, per_call, progress, done, total)


def _is_pixels(x) -> bool:
    return isinstance(x, np.ndarray) or os.fspath(x).endswith(".npy")


def _source_dir(model, why="on Dask the workers load the model from its directory") -> str:
    source = getattr(getattr(model, "model", model), "source", "") or ""
    path = source if os.path.isdir(source) else os.path.dirname(source)
    if not path or not os.path.isfile(os.path.join(path, "config.json")):
        raise InputError(f"precision: {why}, and this model was not loaded from one: load it with "
                         "refvit.from_pretrained(directory)")
    return os.path.abspath(path)


def part_size(count: int, per_calls, parts_wanted: int) -> int:
    """Images per part: a multiple of every batch a call uses (so each call sees the images it sees in one process),
    about count / parts_wanted."""
    step = math.lcm(*per_calls)
    return step * max(1, math.ceil(count / max(1, parts_wanted) / step))


class OnDask:
    """The same three operations as InProcess, as tasks over parts of DATA held by the workers."""

    def __init__(self, client, threads, model, x, processor, per_calls):
        from .batch import ModelSpec, _is_image, load_dataset

        self.client, self.threads = client, threads
        self.spec = ModelSpec(_source_dir(model), "float32", getattr(model, "backend", "numba"))
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        if _is_pixels(x):
            pixels = x if isinstance(x, np.ndarray) else load_pixels(self.spec.path, x)
            self.count = len(pixels)
            size = part_size(self.count, per_calls, 4 * workers)
            slices = [pixels[i:i + size] for i in range(0, self.count, size)]
            self.sizes = [len(s) for s in slices]
            self.parts = client.scatter(slices)
        else:
            data = os.fspath(x)
            files = [data] if os.path.isfile(data) and _is_image(data) else [i.file for i in load_dataset(data).items]
            files = [os.path.abspath(f) for f in files]
            self.count = len(files)
            size = part_size(self.count, per_calls, 4 * workers)
            chunks = [files[i:i + size] for i in range(0, self.count, size)]
            self.sizes = [len(c) for c in chunks]
            where = os.path.abspath(processor) if processor else self.spec.path
            self.parts = [client.submit(read_part, where, c, pure=False, retries=2) for c in chunks]

    def table(self, arith: Arithmetic, probe: int):
        k = next(i + 1 for i in range(len(self.sizes)) if sum(self.sizes[:i + 1]) >= min(probe, self.count))
        return self.client.submit(table_part, self.spec, arith, probe, self.threads, *self.parts[:k],
                                  pure=False, retries=2).result()

    def top1(self, arith, per_call, progress, done, total) -> np.ndarray:
        from distributed import as_completed

        futures = [self.client.submit(top1_part, self.spec, part, per_call, arith, self.threads, pure=False,
                                      retries=2) for part in self.parts]
        index = {f: i for i, f in enumerate(futures)}
        for f in as_completed(futures):
            done += self.sizes[index[f]]
            if progress is not None:
                progress(done, total)
        return np.concatenate([f.result() for f in futures])

    def close(self):
        self.client.cancel(self.parts)


NEEDS_DASK = "refvit precision --workers/--scheduler needs Dask: pip install \"refvit[dask]\""


@contextmanager
def runner(model, x, processor, workers, scheduler, client, per_calls):
    """An InProcess, or an OnDask on `client`, on a cluster at `scheduler` or on a LocalCluster of `workers`
    processes (started and closed here, as `refvit.batch.dask_client` does for evaluate).
    Why so many parameters: the model and DATA, and the three ways to name where to run (analyse's own)."""
    from . import batch as batch_module

    if client is None and not scheduler and (workers or 1) <= 1:
        if isinstance(x, np.ndarray):
            yield InProcess(model, x)
        else:
            where = None if _is_pixels(x) else processor or _source_dir(
                model, "image DATA is preprocessed with the model directory's preprocessor_config.json (or pass "
                "processor=)")
            yield InProcess(model, load_pixels(where, x, processor))
        return
    if not batch_module.dask_available():
        raise InputError(NEEDS_DASK)
    context = nullcontext((client, None)) if client is not None else batch_module.dask_client(
        workers, scheduler, _warm_spec(model))
    with context as (dask, threads):
        run = OnDask(dask, threads, model, x, processor, per_calls)
        try:
            yield run
        finally:
            run.close()


def _warm_spec(model):
    """The ModelSpec `batch.dask_client` warms the workers' JIT cache with (a classifier only: its warm-up classifies
    one image), else None (each worker compiles, or reads Numba's cache, on its first task)."""
    from .batch import ModelSpec

    if not getattr(getattr(model, "config", None), "num_labels", 0):
        return None
    return ModelSpec(_source_dir(model), "float32", getattr(model, "backend", "numba"))


# ----------------------------------------------------------------------------------------------------------------------
# Worker tasks: pure functions of their arguments; each worker process loads the model once and keeps a few
# emulated copies (a keep-fp32 search asks for the same arithmetic on every part of DATA)

_MODELS: dict = {}
_EMULATED: OrderedDict = OrderedDict()
KEEP_EMULATED = 4


def _worker_model(spec, arith):
    from .model import from_pretrained

    if spec not in _MODELS:
        _MODELS[spec] = from_pretrained(spec.path, dtype="float32", backend=spec.backend)
    if arith is None:
        return _MODELS[spec]
    key = (spec, arith)
    if key not in _EMULATED:
        _EMULATED[key] = emulate(_MODELS[spec], arith.format, arith.accumulate, arith.strict, arith.per_channel,
                                 tuple(arith.keep_fp32))
        while len(_EMULATED) > KEEP_EMULATED:
            _EMULATED.popitem(last=False)
    _EMULATED.move_to_end(key)
    return _EMULATED[key]


def read_part(where: str, files: list) -> np.ndarray:
    """A part of image DATA as pixel values, each image preprocessed on its own (as `load_pixels` does)."""
    from .processing import AutoImageProcessor, load_image

    proc = AutoImageProcessor.from_pretrained(where)
    return np.concatenate([proc(load_image(f), return_tensors="np")["pixel_values"] for f in files])


def top1_part(spec, pixels, per_call: int, arith, threads) -> np.ndarray:
    from .batch import _LOCK, numba_threads

    with _LOCK, numba_threads(threads):
        return top1(_worker_model(spec, arith), pixels, per_call)


def table_part(spec, arith, probe: int, threads, *parts):
    from .batch import _LOCK, numba_threads

    with _LOCK, numba_threads(threads):
        return module_table(_worker_model(spec, None), np.concatenate(parts)[:probe], arith)


def keep_search(rows, arith, agreement, base, target, max_steps) -> dict:
    """Greedy by introduced error, then backward elimination; every step with its agreement and cost."""
    quantizable = (lambda r: r["kernel"] in QUANTIZED_KERNELS) if arith.format == "int8-dynamic" else (lambda r: True)
    candidates = sorted((r for r in rows if r["emulated"] and quantizable(r) and r["module"] not in arith.keep_fp32),
                        key=lambda r: -r["introduced"])
    total_weights = sum(r["weights"] for r in rows) or 1
    keep, steps, value = list(arith.keep_fp32), [], base
    for r in candidates[:max_steps]:
        if value >= target:
            break
        keep.append(r["module"])
        value = agreement(tuple(keep))
        steps.append({"action": "keep", "module": r["module"], "agreement": value, "weights": r["weights"],
                      "introduced": r["introduced"]})
    reached = value >= target
    if reached:
        for name in list(keep[:-1])[::-1]:
            if name in arith.keep_fp32:
                continue
            trial = [k for k in keep if k != name]
            v = agreement(tuple(trial))
            if v >= target:
                keep, value = trial, v
                steps.append({"action": "drop", "module": name, "agreement": v})
    weights = sum(r["weights"] for r in rows if r["module"] in keep)
    return {"target": target, "reached": reached, "agreement": value, "set": keep, "steps": steps,
            "weights_in_float32": weights, "weights_fraction_in_float32": weights / total_weights}


def format_report(report: dict, limit: int = 40) -> str:
    lines = [f"refvit precision: {report['format']} ({report['arithmetic']['arithmetic_model']})", "",
             f"{'module':58s} {'kernel':10s} {'max|x|':>9s} {'fp16 room':>9s} {'>65504':>7s} {'inf/nan':>7s} "
             f"{'NMSE':>9s} {'introduced':>10s} block"]
    rows = report["modules"]
    worst = {id(r) for r in sorted(rows, key=lambda r: -r["introduced"])[:limit]}
    for r in rows:
        if id(r) not in worst and len(rows) > limit:
            continue
        lines.append(f"{r['module'][-58:]:58s} {r['kernel'][:10]:10s} {r['max_abs']:9.3g} {r['fp16_headroom']:9.2e} "
                     f"{r['over_fp16']:7d} {r['nonfinite']:7d} {r['nmse']:9.2e} {r['introduced']:10.2e} "
                     f"{r['block_verdict']}")
    if len(rows) > limit:
        lines.append(f"({limit} of {len(rows)} modules shown: those that introduced most; --json lists all)")
    lines += ["", f"top-1 agreement with float32: {report['agreement']:.2f}% of {report['images']} images "
              f"({report['batch_per_call']} per call)"]
    k = report.get("keep_fp32")
    if k:
        lines.append(f"keep-fp32 search (target {k['target']}%):")
        for s in k["steps"]:
            cost = f", {s['weights']} weights" if "weights" in s else ""
            lines.append(f"  {s['action']:4s} {s['module']}: agreement {s['agreement']:.2f}%{cost}")
        verdict = "reached" if k["reached"] else "NOT reached"
        lines.append(f"  {verdict}: {k['agreement']:.2f}% with {len(k['set'])} module(s) in float32 "
                     f"({100 * k['weights_fraction_in_float32']:.1f}% of the weights): "
                     f"{', '.join(k['set']) or '(none)'}")
    return "\n".join(lines)
