"""`refvit precision MODEL DATA --format fp16|bf16|int8-dynamic`: what a reduced format does to a model, module by
module, and the smallest set of modules to keep in float32 (docs/precision.md).

Per module (every kernel call of the forward, named by checkpoint module), on the first `probe` images in one call:
max|activation| in float32 and its fp16 headroom (max / 65504), how many float32 values exceed fp16's range, how many
emulated values are inf/nan, the NMSE against float32 and what the module introduced (its NMSE minus its input's;
block verdicts by the parity toolkit's introduced/inherited rule). Over all of DATA: top-1 agreement with float32.
`keep_fp32="auto"`: greedily keep the module that introduced most error in float32 until the agreement reaches the
target, then drop again every kept module the target does not need; each step's agreement and cost is reported.
"""

from __future__ import annotations

import os

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
            progress=None) -> dict:
    """The whole report (see the module docstring) as a JSON-able dict.

    Why so many parameters: they are the command's options (format, arithmetic, keep-fp32 search, batching,
    progress), passed through one by one so that the Python API and `refvit precision` take the same names."""
    arith = check_arithmetic(format, accumulate, strict, per_channel, keep_fp32)
    if np.dtype(getattr(model, "dtype", "float32")) != np.float32:
        raise InputError("precision: start from the float32 model (dtype='float32')")
    if not 0 < target <= 100:
        raise InputError(f"precision: the agreement target is a percentage in (0, 100], got {target}")
    rows, comparison = module_table(model, x[:probe], arith)
    n = len(x)
    total = n * (2 + (max_steps if auto else 0))
    truth = top1(model, x, max(batch, 16), progress, 0, total)
    counter = {"done": n}

    def agreement(keep) -> float:
        emu = emulate(model, format, accumulate, strict, per_channel, keep)
        pred = top1(emu, x, batch, progress, counter["done"], total)
        counter["done"] += n
        return 100.0 * float((pred == truth).mean())

    base = agreement(tuple(arith.keep_fp32))
    report = {"format": format, "arithmetic": arith.to_meta(), "images": n, "probe_images": len(x[:probe]),
              "batch_per_call": batch, "agreement": base, "target": target, "modules": rows}
    if auto:
        report["keep_fp32"] = keep_search(rows, arith, agreement, base, target, max_steps)
    report["comparison"] = comparison
    return report


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
