"""The `refvit` command: verify golden parity, classify images, inspect a checkpoint directory."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np

from . import exits, hub, kernels
from .errors import RefvitError


class ProgressBar:
    """verify's progress on a terminal (stderr): a bar, the run under way and an ETA, redrawn in place; rows printed
    to stdout in between clear it first. Off when stderr is not a terminal or with --quiet."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled, self.t0, self.text = total, 0, enabled, time.perf_counter(), ""

    def show(self, what: str) -> None:
        self.text = what
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        filled = int(20 * self.done / max(self.total, 1))
        elapsed = time.perf_counter() - self.t0
        eta = (f"ETA {_duration(elapsed / self.done * (self.total - self.done))}" if self.done else "ETA …")
        line = f"[{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} {self.text}  {eta}"
        sys.stderr.write("\r\033[K" + line[:119])
        sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def print(self, lines) -> None:
        """Print finished rows to stdout (the bar cleared first, redrawn after)."""
        self.clear()
        print("\n".join(lines) if isinstance(lines, list) else lines, flush=True)
        self._draw()


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s" if seconds >= 60 else f"{seconds:.0f}s"


def cmd_verify(args) -> int:
    from .verify import (Table, Worker, find_golden_dir, format_digits_table, is_real_size, list_cases,
                         list_digit_models, list_processing_cases)

    golden = find_golden_dir(args.golden)
    cases = list_cases(golden)
    digits = list_digit_models(golden)  # trained models: refvit vs PyTorch on the real digits test split
    if args.cases:
        unknown = sorted(set(args.cases) - {c.name for c in cases + digits})
        if unknown:
            print(f"refvit verify: unknown case(s) {unknown}; available: {[c.name for c in cases + digits]}",
                  file=sys.stderr)
            return 2
        cases = [c for c in cases if c.name in args.cases]
        digits = [d for d in digits if d.name in args.cases]
    runs = [(c, b, d) for c in cases for b in args.backend for d in args.dtype]
    processing = [] if args.cases else list_processing_cases(golden)
    digit_runs = [(m, b, d) for m in digits for b in args.backend for d in args.dtype]
    bar = ProgressBar(len(runs) + len(processing) + len(digit_runs), not args.quiet and sys.stderr.isatty())
    table = Table([c.name for c in cases + processing], wide=args.wide)
    results = []

    def finished(result, what):
        results.append(result)
        bar.done += 1
        if args.progress:
            bar.clear()
            print(f"  {what}: {'ok' if result.ok else 'FAIL'}", file=sys.stderr, flush=True)

    with exits.note_on_interrupt(lambda: f"{len(results)} of {bar.total} runs finished (their rows are above)"), \
            Worker() as worker:
        if runs or processing:  # --cases may name only trained digits models
            bar.print([f"golden cases from {golden}", table.header()])
        for case, backend, dtype in runs:
            bar.show(f"{case.name} {backend} {dtype}")
            r = worker.call("run_case", case, dtype, backend, fresh=is_real_size(case))  # RSS: docs/golden.md
            finished(r, f"{case.name} {backend} {dtype}")
            bar.print(table.rows(r))
        for case in processing:
            bar.show(f"{case.name} (image processing)")
            r = worker.call("run_processing_case", case)
            finished(r, case.name)
            bar.print(table.rows(r))
        digit_results = []
        for model_dir, backend, dtype in digit_runs:
            bar.show(f"{model_dir.name} {backend} {dtype}")
            digit_results.append(worker.call("run_digits", model_dir, dtype, backend))
            finished(digit_results[-1], f"{model_dir.name} {backend} {dtype}")
    bar.clear()
    if digit_results:
        print(f"\ntrained digits models, {digit_results[0].images} test images (accuracy: PyTorch's recorded, "
              "refvit's)")
        print(format_digits_table(digit_results, wide=args.wide))
    failed = sum(not r.ok for r in results)
    # rows that could not be checked here (a processing case with no golden for the installed Pillow): listed in
    # the table with the reason, counted apart, neither passed nor failed
    unverified = sum(bool(getattr(r, "not_verified", "")) for r in results)
    print(f"{len(results) - failed - unverified} passed, {failed} failed"
          + (f", {unverified} not verified (see the table)" if unverified else ""))
    return 1 if failed else 0


def cmd_classify(args) -> int:
    if _classify_is_batch(args):
        return cmd_classify_batch(args)
    from . import from_pretrained, load_image
    from .processing import ImageProcessor

    model = from_pretrained(args.model_dir, dtype=args.dtype, backend=args.backend, revision=args.revision)
    if model.config.num_labels == 0 or "logits" not in model.architecture.output.FIELDS:
        print(f"refvit classify: {model.architecture.name} has no classification head", file=sys.stderr)
        return 2
    processor = ImageProcessor.from_pretrained(args.model_dir, revision=args.revision)
    results, bad = [], []
    for path in args.images:  # a bad image is listed at the end; the good ones are printed as they finish
        try:
            logits = model(**processor(load_image(path), return_tensors="np")).logits[0]
        except (RefvitError, OSError) as e:
            bad.append({"image": path, "error": exits.describe_os_error(e) if isinstance(e, OSError) else str(e)})
            continue
        probs = kernels.get("numpy").softmax(logits.astype(np.float64))
        top = np.argsort(-probs, kind="stable")[: args.top_k]
        results.append({"image": path, "top": [{"label": model.config.id2label.get(int(i), str(int(i))),
                                                "index": int(i), "probability": float(probs[i]),
                                                "logit": float(logits[i])} for i in top]})
        if not args.json:
            print(path)
            for t in results[-1]["top"]:
                print(f"  {t['probability']:7.2%}  {t['label']}  (class {t['index']})", flush=True)
    if args.json:
        print_json(results + bad)  # a bad image: {"image", "error"}
    for b in bad:
        error = b["error"] if b["error"].startswith(b["image"]) else f"{b['image']}: {b['error']}"
        print(f"refvit classify: not classified: {error}", file=sys.stderr)
    if bad:
        print(f"refvit classify: {len(results)} of {len(args.images)} images classified, {len(bad)} could not be "
              "read (listed above)", file=sys.stderr)
    return 1 if bad else 0


# ---- evaluate / batch classify (refvit.batch, refvit.evaluate) -------------------------------------------------------


def _classify_is_batch(args) -> bool:
    """`classify MODEL DIR_OR_LIST` (a folder or a .csv/.jsonl list), or any run with --out/--workers/--scheduler."""
    one = args.images[0] if len(args.images) == 1 else None
    return bool(args.out or args.workers or args.scheduler or args.resume or
                (one and (os.path.isdir(one) or one.lower().endswith((".csv", ".jsonl", ".ndjson")))))


def cmd_classify_batch(args) -> int:
    """Batch inference: every image of a folder / list file (or the images given), appended to --out as JSONL."""
    from . import batch
    from .evaluate import Progress

    if args.resume and not args.out:
        print("refvit classify: --resume needs --out (the predictions file to continue)", file=sys.stderr)
        return 2
    args.model_dir = hub.resolve_model_dir(args.model_dir, revision=args.revision)  # a hub id: its snapshot
    spec = batch.ModelSpec(os.path.abspath(args.model_dir), args.dtype, args.backend)
    one = args.images[0] if len(args.images) == 1 else ""
    source = one and (os.path.isdir(one) or one.lower().endswith((".csv", ".jsonl", ".ndjson")))
    dataset = batch.load_dataset(one) if source else batch.from_paths(args.images)
    model, _ = batch._loaded(spec)
    id2label = {int(k): str(v) for k, v in dict(model.config.id2label).items()}
    header = {"model": spec.path, "dtype": spec.dtype, "backend": spec.backend, "top_k": args.top_k}
    results = batch.ResultsFile(args.out, header, args.resume) if args.out else None
    stream = None if args.out else sys.stdout

    def finish(record):
        record["top_labels"] = [id2label.get(i, str(i)) for i in record.get("top", [])]
        if stream is not None:
            stream.write(batch.record_json(record) + "\n")
        return record

    progress = Progress("classify")
    resumed = len(results.done) if results else 0
    t0 = time.perf_counter()
    with exits.note_on_interrupt(lambda: resume_note(args)):  # computed after the finally: --out closed
        try:
            done = batch.run_dataset(spec, dataset, batch_size=args.batch_size, top_k=args.top_k,
                                     workers=args.workers, scheduler=args.scheduler, results=results, finish=finish,
                                     on_chunk=progress)
        finally:
            progress.close()
            if results is not None:
                results.close()
    seconds = time.perf_counter() - t0
    errors = [r for r in done.values() if "error" in r]
    summary = {"images": len(dataset.items), "computed": len(dataset.items) - resumed, "resumed": resumed,
               "unreadable": [{"path": r["path"], "error": r["error"]} for r in errors], "seconds": seconds,
               "images_per_s": (len(dataset.items) - resumed) / seconds if seconds > 0 else 0.0, "out": args.out}
    if args.json and args.out:
        print_json(summary)
    else:
        print(f"{summary['images']} images ({resumed} resumed), {len(errors)} unreadable, "
              f"{summary['images_per_s']:.1f} images/s" + (f" -> {args.out}" if args.out else ""), file=sys.stderr)
        for r in errors[:20]:
            print(f"unreadable: {r['path']}: {r['error']}", file=sys.stderr)
    return 0


def resume_note(args) -> str:
    """Ctrl-C's note for classify/evaluate: what --out holds now and the command that continues the run."""
    if not args.out:
        return "nothing was saved (no --out); with --out FILE an interrupted run keeps its finished batches"
    saved = 0
    if os.path.exists(args.out):
        with open(args.out, "rb") as f:
            saved = max(sum(1 for _ in f) - 1, 0)  # less the header line
    argv = [a for a in getattr(args, "argv", []) if a != "--resume"]
    again = "refvit " + shlex.join(argv) + " --resume" if argv else "the same command with --resume"
    return f"{saved} image(s) saved in {args.out}; continue with: {again}"


def cmd_evaluate(args) -> int:
    from .evaluate import EvaluateOptions, Progress, evaluate, format_report

    args.model_dir = hub.resolve_model_dir(args.model_dir, revision=args.revision)  # a hub id: its snapshot
    options = EvaluateOptions(reference=args.reference, batch_size=args.batch_size, workers=args.workers,
                              scheduler=args.scheduler, out=args.out, resume=args.resume, label_map=args.label_map,
                              dtype=args.dtype, backend=args.backend, png=args.png, save_logits=args.save_logits,
                              worst=args.worst, progress=Progress("evaluate"))
    with exits.note_on_interrupt(lambda: resume_note(args)):
        report = evaluate(args.model_dir, args.data, options)
    records = report.pop("records")
    if args.json:
        print_json(report)
    else:
        from . import batch
        model, _ = batch._loaded(batch.ModelSpec(os.path.abspath(args.model_dir), args.dtype, args.backend))
        print(format_report(report, {int(k): str(v) for k, v in dict(model.config.id2label).items()}))
    ref = report.get("reference")
    failed = ref is not None and (ref["agree"] < ref["compared"] or ref["missing"] or ref["mismatched_shape"])
    return 1 if failed and args.strict else 0


def cmd_inspect(args) -> int:
    from . import from_pretrained

    model = from_pretrained(args.model_dir, dtype="float32", backend="numpy", revision=args.revision)
    cfg = model.config
    info = {"directory": os.path.abspath(model.source), "architecture": model.architecture.name,  # hub id: its snapshot
            "model_type": cfg.model_type, "parameters": model.num_parameters,
            "config": {k: v for k, v in cfg.to_dict().items() if k not in ("id2label", "label2id", "architectures")},
            "num_labels": cfg.num_labels, "ignored_tensors": model.ignored_tensors}
    if model.timm_config is not None:  # timm's layout: what timm wrote beside what refvit runs (refvit/timm.py)
        from .timm import describe, resolve

        t = model.timm_config
        hf, arch, args_used = resolve(t)
        info["timm"] = {"architecture": t.get("architecture"), "model_args": args_used,
                        "pretrained_cfg": t.get("pretrained_cfg"), "mapped_to": arch}
    if args.json:
        print_json(info, default=list)
        return 0
    print(f"{info['directory']}\n  architecture  {info['architecture']} (model_type {cfg.model_type})")
    print(f"  parameters    {info['parameters']:,}")
    examples = f" (e.g. {', '.join(list(cfg.id2label.values())[:3])})" if cfg.num_labels else ""
    print(f"  labels        {cfg.num_labels}{examples}")
    for k, v in info["config"].items():
        print(f"  {k:30s}{v}")
    if model.ignored_tensors:
        print(f"  ignored tensors (head of another architecture): {len(model.ignored_tensors)}")
    if "timm" in info:
        print(f"  timm checkpoint: {info['timm']['architecture']} -> {info['timm']['mapped_to']}")
        rows = describe(model.timm_config, hf, arch, args_used)
        width = max(len(a) for a, _ in rows)
        print(f"    {'timm (config.json)':{width}s}  refvit (mapped config)")
        for left, right in rows:
            print(f"    {left:{width}s}  {right}")
        pre = info["timm"]["pretrained_cfg"] or {}
        print("    preprocessing (pretrained_cfg): " + ", ".join(f"{k}={pre[k]}" for k in (
            "input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std") if k in pre))
    return 0


def label_palette(num_labels: int) -> np.ndarray:
    """(num_labels, 3) uint8 colours: the PASCAL VOC colour map (label bits spread over R, G, B, high bits first)."""
    labels = np.arange(num_labels)
    colours = np.zeros((num_labels, 3), np.int64)
    for shift in range(7, -1, -1):
        for channel in range(3):
            colours[:, channel] |= ((labels >> (channel + 3 * (7 - shift))) & 1) << shift
    return colours.astype(np.uint8)


def cmd_segment(args) -> int:
    from PIL import Image

    from . import from_pretrained, load_image
    from .processing import ImageProcessor

    model = from_pretrained(args.model_dir, dtype=args.dtype, backend=args.backend, revision=args.revision)
    processor = ImageProcessor.from_pretrained(args.model_dir, revision=args.revision)
    if "auxiliary_logits" not in model.architecture.output.FIELDS or \
            not hasattr(processor, "post_process_semantic_segmentation"):
        print(f"refvit segment: {model.architecture.name} with {type(processor).__name__} is not a semantic "
              "segmentation model (e.g. BeitForSemanticSegmentation)", file=sys.stderr)
        return 2
    image = load_image(args.image)
    out = model(**processor(image, return_tensors="np"))
    label_map = processor.post_process_semantic_segmentation(out, target_sizes=[(image.height, image.width)])[0]
    num_labels = out.logits.shape[1]
    if num_labels <= 256:  # a palette PNG: pixel values are the label ids, the palette colours them
        mask = Image.fromarray(label_map.astype(np.uint8), "P")
        mask.putpalette(label_palette(256).ravel().tolist())
    else:
        mask = Image.fromarray(label_palette(num_labels)[label_map], "RGB")
    mask.save(args.out, format="PNG")
    ids, counts = np.unique(label_map, return_counts=True)
    order = np.lexsort((ids, -counts))
    rows = [{"index": int(ids[i]), "label": model.config.id2label.get(int(ids[i]), str(int(ids[i]))),
             "pixels": int(counts[i]), "fraction": float(counts[i] / label_map.size)} for i in order]
    if args.json:
        print_json({"image": args.image, "mask": args.out, "height": image.height, "width": image.width,
                    "labels": rows})
    else:
        print(f"{args.image} -> {args.out} ({image.width}x{image.height}, {len(rows)} labels present)")
        for r in rows:
            print(f"  {r['fraction']:7.2%}  {r['label']}  (class {r['index']}, {r['pixels']} pixels)")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_cli

    return run_cli(args)


# --- parity toolkit: `refvit trace`, `refvit capture`, `refvit compare` ---------------------------------------------


def cmd_trace_sizes(args) -> int:
    """refvit trace MODEL INPUT --sizes 224 384x256 --out DIR: one trace per size, DIR/HxW.safetensors."""
    from . import parity
    from .parity import sweep

    sizes = [sweep.parse_size(s) for s in args.sizes]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.model, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    model_type, configured = config.get("model_type", ""), config.get("image_size", 224)
    model = None
    if args.framework == "refvit":
        import refvit

        model = refvit.from_pretrained(args.model, dtype=args.dtype, backend=args.backend)
    for size in sizes:
        x, info = sweep.sweep_input(args.input, size, args.model, args.processor, args.dtype)
        call = sweep.interpolation(model_type, configured, size)
        if model is None:
            trace = parity.capture_transformers(args.model, x, dtype=args.dtype, **call)
        else:
            trace = parity.capture(model, x, **call)
        trace.meta.update({**info, "size": sweep.label(size), **({"interpolate_pos_encoding": True} if call else {})})
        path = os.path.join(args.out, sweep.label(size) + ".safetensors")
        trace.save(path)
        print(f"wrote {path}: {len(trace)} tensors, pixel_values {tuple(x.shape)}"
              + (", interpolate_pos_encoding" if call else ""))
    return 0


def cmd_trace(args) -> int:
    from . import parity

    args.model = hub.resolve_model_dir(args.model, revision=args.revision)  # a hub id: its snapshot
    if args.precision and (args.sizes or args.framework != "refvit"):
        print(f"refvit trace: --precision emulates the format on refvit's own forward; it does not combine with "
              f"{'--sizes' if args.sizes else '--framework transformers'}", file=sys.stderr)
        return 2
    if args.sizes:
        return cmd_trace_sizes(args)
    if os.path.isdir(args.out):
        print(f"refvit trace: --out {args.out} is a folder: name a file in it (a folder is for --sizes)",
              file=sys.stderr)
        return 2
    if args.framework == "transformers":
        x, info = parity.load_input(args.input, args.model if os.path.isdir(args.model) else None, args.processor,
                                    dtype=args.dtype)
        print(f"refvit trace: running transformers ({args.dtype}, eager attention) on {args.model} ...",
              file=sys.stderr, flush=True)
        trace = parity.capture_transformers(args.model, x, dtype=args.dtype)
        trace.meta.update(info)
    elif args.precision:
        from . import precision
        from .errors import RefvitError

        if args.dtype != "float32":
            raise RefvitError(f"refvit trace: --precision {args.precision} emulates the format from the float32 model; "
                             "drop --dtype float64")
        print(f"refvit trace: running refvit ({args.precision} emulated, {args.backend}) on {args.model} ...",
              file=sys.stderr, flush=True)
        trace = precision.capture(args.model, args.input, args.precision, args.accumulate, args.strict,
                                  args.per_channel, backend=args.backend, processor=args.processor)
    else:
        print(f"refvit trace: running refvit ({args.dtype}, {args.backend}) on {args.model} ...", file=sys.stderr,
              flush=True)
        trace = parity.capture(args.model, args.input, dtype=args.dtype, backend=args.backend, processor=args.processor)
    trace.save(args.out)
    kinds = {}
    for name in trace:
        kinds[trace.kind(name)] = kinds.get(trace.kind(name), 0) + 1
    size = sum(a.nbytes for a in trace.tensors.values())
    print(f"wrote {args.out}: {len(trace)} tensors ({', '.join(f'{v} {k}' for k, v in kinds.items())}), "
          f"{size / 2**20:.1f} MiB, {trace.meta.get('architecture')} {trace.meta.get('dtype')}")
    print(f"  step 0: pixel_values {tuple(trace['pixel_values'].shape)} sha256 {trace.meta['input_sha256'][:16]}…; "
          f"last: {trace.names[-1]} {tuple(trace[trace.names[-1]].shape)}")
    return 0


def cmd_capture(args) -> int:
    """refvit capture onnx FILE.onnx --like REF --out CAND: the ONNX model's module outputs as a trace."""
    from . import parity

    like = parity.load(args.like)
    if "pixel_values" not in like:
        print(f"refvit capture: {args.like} has no pixel_values: the reference trace's input is what the model runs on",
              file=sys.stderr)
        return 2
    print(f"refvit capture: running {args.model} in ONNX Runtime (graph optimizations "
          f"{'on, fusions kept' if args.optimized else 'off'}) ...", file=sys.stderr, flush=True)
    trace = parity.capture_onnx(args.model, like["pixel_values"], like=like, model_type=args.model_type,
                                optimized=args.optimized, all_nodes=args.all_nodes)
    trace.save(args.out)
    named = sum(trace.kind(n) in ("module", "attention", "hidden_state") for n in trace)
    common = sum(n in like for n in trace)
    print(f"wrote {args.out}: {len(trace)} tensors ({named} module outputs, attention maps and hidden states named "
          f"after checkpoint modules; {common} of the reference's {len(like)} names)")
    for key, what in (("fused", "fused away by ORT (compare shows them as FUSED)"),
                      ("identity_modules", "modules with no node (nn.Identity), recorded as their input")):
        if trace.meta.get(key):
            names = list(trace.meta[key])
            print(f"  {len(names)} {what}: {', '.join(names[:4])}{' …' if len(names) > 4 else ''}")
    return 0


def cmd_compare_sweep(args) -> int:
    """refvit compare REF_DIR CAND_DIR: the HxW.safetensors traces paired by size, one comparison each."""
    from . import parity
    from .parity import sweep

    verdicts, documents = {}, {}
    pairs = sweep.pairs(args.reference, args.candidate)
    absent = [s for s in sweep.sweep_files(args.reference) if s not in sweep.sweep_files(args.candidate)]
    for size, ref_path, cand_path in pairs:
        collect = [] if args.json else None
        sub = argparse.Namespace(**{**vars(args), "reference": ref_path, "candidate": cand_path, "collect": collect,
                                    "report": _per_size(args.report, size), "plot": _per_size(args.plot, size)})
        if not args.json:
            print(f"===== {size} =====")
        verdicts[size] = cmd_compare(sub)
        if collect:
            documents[size] = collect[0]
    if args.json:
        print_json({"ok": not absent and all(v == 0 for v in verdicts.values()), "sizes": documents,
                    "missing_sizes": absent})
    else:
        done = ", ".join(f"{s} {'OK' if v == 0 else 'FAILED'}" for s, v in verdicts.items())
        print(f"\nsweep: {done}"
              + (f"; sizes missing in the candidate: {', '.join(absent)}" if absent else ""))
    return 0 if not absent and all(v == 0 for v in verdicts.values()) else 1


def _per_size(path, size):
    if not path:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}-{size}{ext}"


def cmd_compare(args) -> int:
    from . import parity
    from .parity import sweep

    if sweep.sweep_files(args.reference) and sweep.sweep_files(args.candidate):
        return cmd_compare_sweep(args)
    candidate = parity.load(args.candidate)
    reference = parity.load(args.reference, dtype=str(candidate["pixel_values"].dtype)
                            if "pixel_values" in candidate else None)
    from .errors import InputError as RefvitInputError

    if args.map in parity.presets.PRESETS:  # a preset: resolved against both traces' names
        mapping = parity.presets.resolve(args.map, candidate.names, reference.names)
    elif args.map and not os.path.isfile(args.map):
        raise RefvitInputError(f"--map {args.map}: no such mapping file, and not a preset "
                         f"({', '.join(parity.presets.names())})")
    else:
        mapping = parity.load_mapping(args.map) if args.map else None
    default, overrides = "refvit", {}
    for item in args.tolerance or []:  # PRESET|VALUE sets the default; NAME_OR_GLOB=PRESET|VALUE one tensor's
        name, sep, value = item.rpartition("=")
        if sep and not name:
            print(f"refvit compare: --tolerance {item!r}: a per-tensor override is NAME_OR_GLOB=VALUE", file=sys.stderr)
            return 2
        if sep:
            overrides[name] = value
        else:
            default = value
    result = parity.compare(reference, candidate, tolerance=default, mapping=mapping, overrides=overrides,
                            reference_name=args.reference, candidate_name=args.candidate, only=args.only or (),
                            allow_missing=args.allow_missing)
    if getattr(args, "collect", None) is not None:  # a sweep with --json: one document for all sizes
        args.collect.append(result.to_dict())
    elif args.json:
        print_json(result.to_dict())
    else:
        print(parity.format_report(result, verbose=args.verbose))
    if args.report:
        parity.write_html(result, args.report, title=f"refvit compare: {os.path.basename(args.candidate)} vs "
                          f"{os.path.basename(args.reference)}")
        print(f"wrote {args.report}", file=sys.stderr)
    if args.plot:
        parity.write_plot(result, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0 if result.ok else 1  # NOT OK and INCOMPLETE: 1


def print_json(obj, **kwargs) -> None:
    """JSON on stdout as UTF-8 whatever the locale (Δ stays Δ, not \\u0394)."""
    text = json.dumps(obj, indent=1, ensure_ascii=False, **kwargs) + "\n"
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8"))
    buffer.flush()


# ---- the parser: one small function per subcommand -------------------------------------------------------------------

MODEL_DIR_HELP = ("a save_pretrained directory (config.json + model.safetensors or pytorch_model.bin), or a hub id "
                  "(org/name: the Hugging Face cache, then a download with huggingface_hub)")
DTYPES, BACKENDS = ["float32", "float64"], ["numba", "numpy"]


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line that names the option and points at --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _count(minimum: int):
    """An argparse type: an integer >= minimum, or a usage error that says so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _out_path(text: str) -> str:
    """An argparse type for a file refvit writes: its folder must exist and be writable (checked before any work)."""
    folder = os.path.dirname(text) or "."
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder: name a file in it")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the folder {folder} does not exist: create it, or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {folder}: choose a folder you can write to")
    return text


_out_path.__name__ = "output path"


def _out_target(text: str) -> str:
    """--out of `trace`: a file, or an existing writable folder (a --sizes sweep writes one file per size in it)."""
    if os.path.isdir(text):
        if not os.access(text, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"cannot write in {text}: choose a folder you can write to")
        return text
    return _out_path(text)


_out_target.__name__ = "output path"


def _model_options(p, model_help: str = MODEL_DIR_HELP) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR", help=model_help)
    p.add_argument("--revision", help="MODEL_DIR may be a hub id (org/name: the Hugging Face cache, then a download "
                   "with huggingface_hub); its branch, tag or commit sha (default main)")


def _run_options(p) -> None:
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (default float32)")
    p.add_argument("--backend", choices=BACKENDS, default="numba", help="numba: the fast kernels; numpy: their "
                   "readable twins (default numba)")


def _scaling_options(p) -> None:
    p.add_argument("--batch-size", type=_count(1), default=16, metavar="B", help="images per task and per append to "
                   "--out (default 16); each image still gets its own forward, so results are bit-identical whatever "
                   "this is")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_count(0), metavar="N", help="run on a Dask LocalCluster of N worker "
                       "processes (refvit[dask]); each gets cores // N Numba threads; 0, 1 or no Dask: in-process")
    where.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster, e.g. tcp://host:8786")
    p.add_argument("--resume", action="store_true", help="continue the run whose results are in --out: only images "
                   "missing there are computed")


def _emulation_options(p) -> None:
    """How a reduced format is emulated: `trace --precision` and `precision --format` take the same options."""
    p.add_argument("--accumulate", choices=["fp32", "fp16", "bf16"], default="fp32", help="where GEMM/conv "
                   "products accumulate under bf16/fp16 (default fp32; or the format itself)")
    p.add_argument("--strict", action="store_true", help="LayerNorm/GroupNorm/softmax/GELU internals in the format "
                   "too (default: float32 internals, output rounded, the common mixed-precision convention)")
    p.add_argument("--per-channel", action="store_true", help="int8-dynamic: int8 weights per output channel "
                   "(default per tensor, quantize_dynamic's default)")


def add_verify_parser(sub) -> None:
    p = sub.add_parser("verify", help="run every golden case and print the parity table, a row as each run "
                       "finishes (exit 1 on any mismatch; a processing case with no golden for the installed Pillow is "
                       "listed as not verified, not failed); one model in memory at a time")
    p.add_argument("--golden", help="golden directory (default: golden/ of this checkout, then ./golden)")
    p.add_argument("--backend", nargs="+", choices=BACKENDS, default=BACKENDS, help="backends to run (default both)")
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=DTYPES, help="dtypes to run (default both)")
    p.add_argument("--cases", nargs="+", metavar="CASE", help="only these case names")
    p.add_argument("--progress", action="store_true", help="also print a line per run as it finishes on stderr "
                   "(for logs; on a terminal a progress bar shows anyway)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it shows on a terminal by default: the "
                   "run under way and an ETA); the rows still print as each run finishes")
    p.add_argument("--wide", action="store_true", help="every column in full (the architecture too); default: the "
                   "table fits 120 columns, long error lists cut with …")
    p.set_defaults(func=cmd_verify)


def add_classify_parser(sub) -> None:
    p = sub.add_parser("classify", help="classify images with a save_pretrained directory (needs "
                       "preprocessor_config.json); a folder or .csv/.jsonl list runs in batch mode (see --out)")
    _model_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or one folder / .csv / .jsonl list")
    p.add_argument("--top-k", type=_count(1), default=5, help="how many classes to show (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _run_options(p)
    p.add_argument("--out", type=_out_path, metavar="PREDICTIONS.jsonl", help="batch mode: one JSON record per image, "
                   "appended per finished batch (a folder or .csv/.jsonl list as the only IMAGE is batch mode too; "
                   "without --out the records go to stdout)")
    _scaling_options(p)
    p.set_defaults(func=cmd_classify)


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy of a classifier on a dataset (ImageFolder or CSV/JSONL list), "
                       "agreement with reference logits; in-process or on Dask; resumable")
    _model_options(p)
    p.add_argument("data", help="an ImageFolder tree (root/<class>/<image>), or a .csv/.jsonl list of path[,label]")
    p.add_argument("--reference", metavar="REF", help=".npz/.safetensors of per-image logits keyed by path relative "
                   "to DATA (or an .npz with `paths` and 2-D `logits`): top-1 agreement, max-abs error, worst images")
    p.add_argument("--label-map", metavar="JSON", help="{dataset label: class id or class name}; default: the "
                   "model's label2id (folder names as the model's class names)")
    _scaling_options(p)
    p.add_argument("--out", type=_out_path, metavar="RESULTS.jsonl", help="append one JSON record per image, per "
                   "finished batch (fsync'd): a killed run continues with --resume")
    p.add_argument("--png", type=_out_path, metavar="FILE", help="confusion matrix PNG (needs matplotlib; default "
                   "with --out: RESULTS.confusion.png)")
    p.add_argument("--save-logits", action="store_true", help="keep every image's full logits in --out")
    p.add_argument("--worst", type=_count(0), default=10, help="how many worst images to list against --reference "
                   "(default 10)")
    p.add_argument("--strict", action="store_true", help="exit 1 when any image disagrees with or is missing "
                   "from --reference")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _run_options(p)
    p.set_defaults(func=cmd_evaluate)


add_evaluate_parsers = add_evaluate_parser  # the older name


def add_segment_parser(sub) -> None:
    p = sub.add_parser("segment", help="segment an image with a semantic segmentation checkpoint (BEiT, "
                       "data2vec-vision): writes a colour-coded label map PNG and prints the label histogram")
    _model_options(p)
    p.add_argument("image", help="the image file to segment")
    p.add_argument("--out", type=_out_path, default="mask.png", help="where to write the label map (PNG; default "
                   "mask.png)")
    p.add_argument("--json", action="store_true", help="print the histogram as JSON")
    _run_options(p)
    p.set_defaults(func=cmd_segment)


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="time refvit (both backends; the Numba one as a default and as a tuned process) "
                       "against PyTorch eager and ONNX Runtime (when installed) on real-size seeded models, each "
                       "implementation alone in a fresh process; %% of the compute floor; time to first prediction")
    p.add_argument("--models", nargs="*", default=["deit-small"], help="deit-tiny deit-small deit-base vit-base "
                   "beit-base cvt-13 cvt-21 bit-50, or all (default: deit-small; none: no timing, e.g. with --startup)")
    p.add_argument("--batch", nargs="+", type=_count(1), default=[1], help="batch sizes, e.g. 1 8 (default 1)")
    p.add_argument("--backend", nargs="+", choices=BACKENDS, default=BACKENDS,
                   help="refvit backends to time (numba: a default process and one with OPENBLAS_NUM_THREADS=1)")
    p.add_argument("--peers", nargs="*", choices=["torch-eager", "torch-eager-attn", "onnxruntime"],
                   default=["torch-eager", "torch-eager-attn", "onnxruntime"],
                   help="peers to time; one not installed is reported as skipped (torch-eager: transformers' default "
                   "sdpa attention; torch-eager-attn: attn_implementation='eager'; onnxruntime: the transformers "
                   "model exported to ONNX)")
    p.add_argument("--repeat", type=_count(1), default=3, help="rounds: each round starts every implementation in a "
                   "fresh process (order rotated each round) that runs one warm-up and 3 timed forwards per batch; "
                   "the median per image over all rounds is reported (default 3; with --profile: forwards, the "
                   "fastest is shown)")
    p.add_argument("--threads", type=_count(1), help="threads for every implementation: numba.set_num_threads(N) in "
                   "refvit's default process, NUMBA_NUM_THREADS=N with OPENBLAS_NUM_THREADS=1 in the tuned one, "
                   "numpy's BLAS at N for the NumPy backend, torch.set_num_threads(N), N ONNX Runtime intra-op "
                   "threads; the sgemm rate with OpenBLAS at N (default: each library's default)")
    p.add_argument("--startup", action="store_true", help="also time a fresh process's import + load of DeiT-S + one "
                   "forward and its peak RSS, refvit with the Numba cache warm and cold, and torch + transformers "
                   "(the median of --repeat fresh processes of each)")
    p.add_argument("--profile", action="store_true", help="instead of timing against the peers: per-kernel wall time "
                   "inside refvit's forward in this process (fastest of --repeat forwards), for each model, batch "
                   "and --backend")
    p.add_argument("--json", action="store_true", help="print the results (rows, start-up, environment) as JSON")
    p.add_argument("--markdown", action="store_true", help="print the benchmarks page's tables (docs/speed.md)")
    p.add_argument("--from-json", metavar="FILE", help="print the table/markdown of a saved --json result (runs "
                   "nothing)")
    p.set_defaults(func=cmd_bench)


def add_inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="show architecture, parameter count and config of a checkpoint directory")
    _model_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)


def add_trace_parser(sub) -> None:
    p = sub.add_parser("trace", help="run a model once and record every module output, hidden state and attention "
                       "map, in execution order, as a trace (safetensors; docs/porting.md)")
    p.add_argument("model", help="save_pretrained directory, or a hub id (org/name)")
    p.add_argument("--revision", help="the hub id's branch, tag or commit sha (default main)")
    p.add_argument("input", help="an image (preprocessed with the model's preprocessor_config.json or --processor) or "
                   "pixel_values as .npy (B, C, H, W)")
    p.add_argument("--out", type=_out_target, default="trace.safetensors", help="where to write the trace (default "
                   "trace.safetensors)")
    _run_options(p)
    p.add_argument("--processor", help="directory with preprocessor_config.json (or the JSON file) for an image input "
                   "(default: the model directory)")
    p.add_argument("--framework", choices=["refvit", "transformers"], default="refvit", help="who runs the model: "
                   "refvit, or transformers with eager attention (needs torch + transformers)")
    p.add_argument("--sizes", nargs="+", metavar="S|HxW", help="a resolution sweep: one trace per input size "
                   "(e.g. 224 240 384x256), written as OUT/HxW.safetensors (--out is then a directory); the input is "
                   "resized to each size, position embeddings interpolated; compare two such directories")
    p.add_argument("--precision", choices=["bf16", "fp16", "int8-dynamic"], help="emulate a reduced-precision "
                   "arithmetic (refvit's own model, from float32; the header records the arithmetic model)")
    _emulation_options(p)
    p.set_defaults(func=cmd_trace)


def cmd_precision(args) -> int:
    from . import precision_lab as lab
    from .evaluate import Progress
    from .model import from_pretrained

    args.model = hub.resolve_model_dir(args.model, revision=args.revision)
    auto = args.keep_fp32 == "auto"
    keep = () if auto or not args.keep_fp32 else tuple(n.strip() for n in args.keep_fp32.split(",") if n.strip())
    model = from_pretrained(args.model, dtype="float32", backend=args.backend)
    progress = Progress(f"refvit precision {args.format}")
    batch = args.batch or (1 if args.format == "int8-dynamic" else 16)
    try:
        report = lab.analyse(model, args.data, args.format, args.accumulate, args.strict, args.per_channel, keep,
                             target=args.target, auto=auto, batch=batch, probe=args.probe_images, progress=progress,
                             workers=args.workers, scheduler=args.scheduler, processor=args.processor)
    finally:
        progress.close()
    comparison = report.pop("comparison")
    if args.report:
        from .parity.report import html_report

        with open(args.report, "w", encoding="utf-8") as f:
            f.write(html_report(comparison, title=f"refvit precision {args.format}: float32 vs emulated"))
    if args.json:
        print(json.dumps(report, indent=1, default=float))
    else:
        print(lab.format_report(report))
    k = report.get("keep_fp32")
    return 1 if k is not None and not k["reached"] else 0


def add_precision_parser(sub) -> None:
    p = sub.add_parser("precision", help="what fp16, bf16 or ONNX Runtime's dynamic int8 does to a model, module by "
                       "module: max|activation|, fp16 headroom, overflows, introduced NMSE, top-1 agreement with "
                       "float32, and the smallest set of modules to keep in float32 (docs/precision.md)")
    p.add_argument("model", help="save_pretrained directory, or a hub id (org/name)")
    p.add_argument("data", help="an image, pixel_values as .npy (B, C, H, W), an ImageFolder tree, a folder of images "
                   "or a .csv/.jsonl list (as evaluate takes)")
    p.add_argument("--format", required=True, choices=["fp16", "bf16", "int8-dynamic"])
    p.add_argument("--revision", help="the hub id's branch, tag or commit sha (default main)")
    p.add_argument("--backend", choices=["numba", "numpy"], default="numba")
    p.add_argument("--processor", help="directory with preprocessor_config.json for image data (default: the model's)")
    _emulation_options(p)
    p.add_argument("--keep-fp32", metavar="auto|M1,M2", help="modules run in float32; 'auto' searches the smallest "
                   "set reaching --target agreement (greedy by introduced error, then drops what is not needed)")
    p.add_argument("--target", type=float, default=99.5, help="top-1 agreement with float32 in %% (default 99.5)")
    p.add_argument("--batch", type=_count(1), help="images per call (default 1 for int8-dynamic: activation scales "
                   "are per call; 16 otherwise)")
    p.add_argument("--probe-images", type=_count(1), default=8, help="images (one call) for the per-module table")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_count(0), metavar="N", help="run on a Dask LocalCluster of N worker "
                       "processes (refvit[dask]): the table, the float32 and emulated predictions and every step of "
                       "--keep-fp32 auto as tasks over parts of DATA; the report is identical to the in-process one; "
                       "0 or 1: in-process")
    where.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster, e.g. tcp://host:8786 "
                       "(its workers must read DATA and the model directory at the same paths)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--report", help="write an HTML report of the per-module error (float32 vs emulated)")
    p.set_defaults(func=cmd_precision)


def add_capture_parser(sub) -> None:
    p = sub.add_parser("capture", help="record a trace from another runtime, named like refvit's (checkpoint names)")
    runtimes = p.add_subparsers(dest="runtime", required=True, metavar="RUNTIME",
                                help="where the model runs: onnx (ONNX Runtime)")
    q = runtimes.add_parser("onnx", help="run an ONNX model (torch.onnx.export of a transformers model) in ONNX "
                            "Runtime on the reference trace's pixel_values; every module boundary under its checkpoint "
                            "name (needs refvit[onnx])")
    q.add_argument("model", metavar="FILE.onnx", help="the ONNX model")
    q.add_argument("--like", required=True, metavar="REF", help="the reference trace (refvit trace, golden case …): "
                   "its pixel_values are the input, its names and shapes guide the naming")
    q.add_argument("--out", required=True, type=_out_path, metavar="CAND.safetensors", help="where to write the "
                   "candidate trace")
    q.add_argument("--optimized", action="store_true", help="keep ONNX Runtime's graph fusions (default: off, so every "
                   "module boundary survives); fused-away modules show as FUSED in compare")
    q.add_argument("--all-nodes", action="store_true", help="also keep every other floating-point node output, as "
                   "onnx:<tensor name> (Polygraphy's mark all; larger traces)")
    q.add_argument("--model-type", choices=["vit", "deit", "beit", "data2vec-vision", "cvt", "bit"],
                   help="the model family (default: the reference's, else guessed from the node scopes)")
    q.set_defaults(func=cmd_capture)


def add_compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare a candidate trace with a reference, tensor by tensor in execution "
                       "order: OK / NOT OK / SHAPE per tensor, the first divergence, the block that introduced it; "
                       "exit 0 OK, 1 NOT OK or INCOMPLETE (a reference tensor neither compared nor ignored), 2 "
                       "unusable input")
    p.add_argument("reference", help="trace (.safetensors), golden case directory, .npz, .npy directory, or "
                   "transformers' model_addition_debugger_context output (use_repr=False)")
    p.add_argument("candidate", help="the same kinds of input: usually your port's tensors")
    p.add_argument("--map", metavar="PRESET|names.json", help="name mapping for ports that fuse, split or lay out "
                   "tensors differently: a JSON file (docs/porting.md) or a preset for a candidate captured from torch "
                   "module paths (parity.capture_torch): timm-vit (ViT, DeiT, distilled), timm-beit, timm-resnetv2 "
                   "(BiT), cvt-original (microsoft/CvT)")
    p.add_argument("--tolerance", action="append", metavar="PRESET|VALUE|NAME=VALUE",
                   help="refvit (default: 1e-4·max(1,max|ref|) float32, 1e-10·… float64), transformers (1e-4), "
                   "conversion (1e-3), llm.c (2e-2), nmse[:VALUE] (default 1e-7) or a max|Δ|; repeat with "
                   "NAME_OR_GLOB=PRESET|VALUE for per-tensor overrides")
    p.add_argument("--only", action="append", metavar="GLOB", help="compare only the reference tensors this glob "
                   "matches (e.g. logits; repeat for more): a partial check on purpose, which the summary states")
    p.add_argument("--allow-missing", action="store_true", help="a reference tensor the candidate lacks does not make "
                   "the verdict INCOMPLETE (exit 1): a partial check on purpose, which the summary states")
    p.add_argument("--json", action="store_true", help="print the full comparison as JSON (UTF-8; numbers as "
                   "numbers, NaN/inf as null)")
    p.add_argument("--report", type=_out_path, metavar="FILE.html", help="also write a report to look at: one "
                   "self-contained HTML file (error against depth, the blocks, a heatmap of the first divergence's "
                   "error, its likely cause; no network)")
    p.add_argument("--plot", type=_out_path, metavar="FILE.png", help="also draw the error-against-depth figure "
                   "(needs matplotlib)")
    p.add_argument("--verbose", action="store_true", help="also list the reference tensors missing in the candidate "
                   "and every failing block")
    p.set_defaults(func=cmd_compare)


# in --help's order
SUBCOMMANDS = [add_verify_parser, add_classify_parser, add_evaluate_parser, add_segment_parser, add_bench_parser,
               add_inspect_parser, add_trace_parser, add_capture_parser, add_compare_parser, add_precision_parser]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(prog="refvit", description="NumPy/Numba reference forward passes of ViT, DeiT, BEiT, CvT and "
                    "BiT, checked against Hugging Face transformers. Exit codes: 0 passed, 1 a check failed, 2 "
                    "unusable input, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"refvit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of these; "
                                "`refvit COMMAND --help` shows its options")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    """The `refvit` command: its exit code (refvit/exits.py: 0 ok, 1 failed check, 2 bad input, 130 Ctrl-C)."""
    from . import exits

    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    return exits.run(f"refvit {command}".strip(), lambda: _dispatch(argv))


def _dispatch(argv) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
