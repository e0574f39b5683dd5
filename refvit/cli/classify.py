"""`refvit classify` and `refvit evaluate`: images or a dataset through a classifier, in-process or on Dask,
resumable with --out."""

from __future__ import annotations

import os
import shlex
import sys
import time

import numpy as np

from .. import exits, hub, kernels
from ..errors import RefvitError
from .common import at_least, model_options, out_path, print_json, run_options, scaling_options


def cmd_classify(args) -> int:
    if _classify_is_batch(args):
        return cmd_classify_batch(args)
    from .. import from_pretrained, load_image
    from ..processing import ImageProcessor

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


def _classify_is_batch(args) -> bool:
    """`classify MODEL DIR_OR_LIST` (a folder or a .csv/.jsonl list), or any run with --out/--workers/--scheduler."""
    one = args.images[0] if len(args.images) == 1 else None
    return bool(args.out or args.workers or args.scheduler or args.resume or
                (one and (os.path.isdir(one) or one.lower().endswith((".csv", ".jsonl", ".ndjson")))))


def cmd_classify_batch(args) -> int:
    """Batch inference: every image of a folder / list file (or the images given), appended to --out as JSONL."""
    from .. import batch
    from ..evaluate import Progress

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
    from ..evaluate import EvaluateOptions, Progress, evaluate, format_report

    args.model_dir = hub.resolve_model_dir(args.model_dir, revision=args.revision)  # a hub id: its snapshot
    options = EvaluateOptions(reference=args.reference, batch_size=args.batch_size, workers=args.workers,
                              scheduler=args.scheduler, out=args.out, resume=args.resume, label_map=args.label_map,
                              dtype=args.dtype, backend=args.backend, png=args.png, save_logits=args.save_logits,
                              worst=args.worst, progress=Progress("evaluate"))
    with exits.note_on_interrupt(lambda: resume_note(args)):
        report = evaluate(args.model_dir, args.data, options)
    report.pop("records")  # every image's record: in --out, not printed
    if args.json:
        print_json(report)
    else:
        from .. import batch
        model, _ = batch._loaded(batch.ModelSpec(os.path.abspath(args.model_dir), args.dtype, args.backend))
        print(format_report(report, {int(k): str(v) for k, v in dict(model.config.id2label).items()}))
    ref = report.get("reference")
    failed = ref is not None and (ref["agree"] < ref["compared"] or ref["missing"] or ref["mismatched_shape"])
    return 1 if failed and args.strict else 0


def add_classify_parser(sub) -> None:
    p = sub.add_parser("classify", help="classify images with a save_pretrained directory (needs "
                       "preprocessor_config.json); a folder or .csv/.jsonl list runs in batch mode (see --out)")
    model_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or one folder / .csv / .jsonl list")
    p.add_argument("--top-k", type=at_least(1), default=5, help="how many classes to show (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    run_options(p)
    p.add_argument("--out", type=out_path, metavar="PREDICTIONS.jsonl", help="batch mode: one JSON record per image, "
                   "appended per finished batch (a folder or .csv/.jsonl list as the only IMAGE is batch mode too; "
                   "without --out the records go to stdout)")
    scaling_options(p)
    p.set_defaults(func=cmd_classify)


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy of a classifier on a dataset (ImageFolder or CSV/JSONL list), "
                       "agreement with reference logits; in-process or on Dask; resumable")
    model_options(p)
    p.add_argument("data", help="an ImageFolder tree (root/<class>/<image>), or a .csv/.jsonl list of path[,label]")
    p.add_argument("--reference", metavar="REF", help=".npz/.safetensors of per-image logits keyed by path relative "
                   "to DATA (or an .npz with `paths` and 2-D `logits`): top-1 agreement, max-abs error, worst images")
    p.add_argument("--label-map", metavar="JSON", help="{dataset label: class id or class name}; default: the "
                   "model's label2id (folder names as the model's class names)")
    scaling_options(p)
    p.add_argument("--out", type=out_path, metavar="RESULTS.jsonl", help="append one JSON record per image, per "
                   "finished batch (fsync'd): a killed run continues with --resume")
    p.add_argument("--png", type=out_path, metavar="FILE", help="confusion matrix PNG (needs matplotlib; default "
                   "with --out: RESULTS.confusion.png)")
    p.add_argument("--save-logits", action="store_true", help="keep every image's full logits in --out")
    p.add_argument("--worst", type=at_least(0), default=10, help="how many worst images to list against --reference "
                   "(default 10)")
    p.add_argument("--strict", action="store_true", help="exit 1 when any image disagrees with or is missing "
                   "from --reference")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    run_options(p)
    p.set_defaults(func=cmd_evaluate)
