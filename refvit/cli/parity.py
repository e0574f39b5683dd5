"""The parity toolkit's commands: `refvit trace`, `refvit capture onnx`, `refvit compare` (docs/porting.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import hub
from .common import emulation_options, out_path, out_target, print_json, run_options


def cmd_trace_sizes(args) -> int:
    """refvit trace MODEL INPUT --sizes 224 384x256 --out DIR: one trace per size, DIR/HxW.safetensors."""
    from .. import parity
    from ..parity import sweep

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
    from .. import parity

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
        from .. import precision
        from ..errors import RefvitError

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
    from .. import parity

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
    from ..parity import sweep

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
    from .. import parity
    from ..parity import sweep

    if sweep.sweep_files(args.reference) and sweep.sweep_files(args.candidate):
        return cmd_compare_sweep(args)
    candidate = parity.load(args.candidate)
    reference = parity.load(args.reference, dtype=str(candidate["pixel_values"].dtype)
                            if "pixel_values" in candidate else None)
    from ..errors import InputError as RefvitInputError

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


def add_trace_parser(sub) -> None:
    p = sub.add_parser("trace", help="run a model once and record every module output, hidden state and attention "
                       "map, in execution order, as a trace (safetensors; docs/porting.md)")
    p.add_argument("model", help="save_pretrained directory, or a hub id (org/name)")
    p.add_argument("--revision", help="the hub id's branch, tag or commit sha (default main)")
    p.add_argument("input", help="an image (preprocessed with the model's preprocessor_config.json or --processor) or "
                   "pixel_values as .npy (B, C, H, W)")
    p.add_argument("--out", type=out_target, default="trace.safetensors", help="where to write the trace (default "
                   "trace.safetensors)")
    run_options(p)
    p.add_argument("--processor", help="directory with preprocessor_config.json (or the JSON file) for an image input "
                   "(default: the model directory)")
    p.add_argument("--framework", choices=["refvit", "transformers"], default="refvit", help="who runs the model: "
                   "refvit, or transformers with eager attention (needs torch + transformers)")
    p.add_argument("--sizes", nargs="+", metavar="S|HxW", help="a resolution sweep: one trace per input size "
                   "(e.g. 224 240 384x256), written as OUT/HxW.safetensors (--out is then a directory); the input is "
                   "resized to each size, position embeddings interpolated; compare two such directories")
    p.add_argument("--precision", choices=["bf16", "fp16", "int8-dynamic"], help="emulate a reduced-precision "
                   "arithmetic (refvit's own model, from float32; the header records the arithmetic model)")
    emulation_options(p)
    p.set_defaults(func=cmd_trace)


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
    q.add_argument("--out", required=True, type=out_path, metavar="CAND.safetensors", help="where to write the "
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
    p.add_argument("--report", type=out_path, metavar="FILE.html", help="also write a report to look at: one "
                   "self-contained HTML file (error against depth, the blocks, a heatmap of the first divergence's "
                   "error, its likely cause; no network)")
    p.add_argument("--plot", type=out_path, metavar="FILE.png", help="also draw the error-against-depth figure "
                   "(needs matplotlib)")
    p.add_argument("--verbose", action="store_true", help="also list the reference tensors missing in the candidate "
                   "and every failing block")
    p.set_defaults(func=cmd_compare)
