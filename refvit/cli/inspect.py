"""`refvit inspect`: what a checkpoint directory holds (timm's layout beside the mapped config)."""

from __future__ import annotations

import os

from .common import model_options, print_json


def cmd_inspect(args) -> int:
    from .. import from_pretrained

    model = from_pretrained(args.model_dir, dtype="float32", backend="numpy", revision=args.revision)
    cfg = model.config
    info = {"directory": os.path.abspath(model.source), "architecture": model.architecture.name,  # hub id: its snapshot
            "model_type": cfg.model_type, "parameters": model.num_parameters,
            "config": {k: v for k, v in cfg.to_dict().items() if k not in ("id2label", "label2id", "architectures")},
            "num_labels": cfg.num_labels, "ignored_tensors": model.ignored_tensors}
    if model.timm_config is not None:  # timm's layout: what timm wrote beside what refvit runs (refvit/timm.py)
        from ..timm import describe, resolve

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


def add_inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="show architecture, parameter count and config of a checkpoint directory")
    model_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)
