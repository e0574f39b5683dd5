"""`refvit precision`: what fp16, bf16 or int8-dynamic does to a model, module by module (docs/precision.md)."""

from __future__ import annotations

import json

from .. import hub
from .common import at_least, emulation_options


def cmd_precision(args) -> int:
    from .. import precision_lab as lab
    from ..evaluate import Progress
    from ..model import from_pretrained

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
        from ..parity.report import html_report

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
    emulation_options(p)
    p.add_argument("--keep-fp32", metavar="auto|M1,M2", help="modules run in float32; 'auto' searches the smallest "
                   "set reaching --target agreement (greedy by introduced error, then drops what is not needed)")
    p.add_argument("--target", type=float, default=99.5, help="top-1 agreement with float32 in %% (default 99.5)")
    p.add_argument("--batch", type=at_least(1), help="images per call (default 1 for int8-dynamic: activation scales "
                   "are per call; 16 otherwise)")
    p.add_argument("--probe-images", type=at_least(1), default=8, help="images (one call) for the per-module table")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=at_least(0), metavar="N", help="run on a Dask LocalCluster of N worker "
                       "processes (refvit[dask]): the table, the float32 and emulated predictions and every step of "
                       "--keep-fp32 auto as tasks over parts of DATA; the report is identical to the in-process one; "
                       "0 or 1: in-process")
    where.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster, e.g. tcp://host:8786 "
                       "(its workers must read DATA and the model directory at the same paths)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--report", help="write an HTML report of the per-module error (float32 vs emulated)")
    p.set_defaults(func=cmd_precision)
