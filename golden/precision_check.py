"""Check refvit's reduced-precision emulation (refvit/precision.py) against the real thing and write the tables.

Needs torch, transformers, onnx and onnxruntime. For every digits model (golden/models) and a few golden cases:

- bf16: torch's own bf16 forward on CPU (`from_pretrained(..., dtype=torch.bfloat16)`, eager attention, forward hooks
  via parity.capture_transformers) next to `precision.emulate(model, "bf16")`;
- int8-dynamic: ONNX Runtime `quantize_dynamic(weight_type=QInt8)` (default options) of `torch.onnx.export` (legacy
  exporter, opset 17), run with parity.capture_onnx, next to `precision.emulate(model, "int8-dynamic")`.

Per module: NMSE of emulated vs refvit float64 next to real vs float64 (the module outputs both traces hold, on the
first --trace-images images in one call: activation scales are per call, so both sides see the same batch). Logits
and top-1 accuracy on the 360 test digits, one image per call for int8 (a deployment's usual call), one batch for
bf16. Targets: emulated/real NMSE ratio in [0.5, 2] on the logits, [0.25, 4] per module; top-1 within 1 image.

    python golden/precision_check.py [--out docs/precision-modules.md] [--json results.json] [--models vit,deit]
                                     [--cases bit_bottleneck] [--case-images 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import refvit  # noqa: E402
from refvit import parity, precision, synthetic  # noqa: E402
from refvit.verify import digits_pixel_values  # noqa: E402

FAMILIES = ("vit", "deit", "beit", "cvt", "bit")
GOLDEN_CASES = ("vit_classification", "deit_teacher", "bit_bottleneck")
LOGITS_RATIO, MODULE_RATIO = (0.5, 2.0), (0.25, 4.0)


def nmse(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    den = float((ref ** 2).sum())
    return float(((a - ref) ** 2).sum() / den) if den else float("nan")


def module_rows(ref64, emulated, real) -> list[dict]:
    """NMSE vs float64 of every module output that all three traces hold, in the reference's order."""
    rows = []
    for name in ref64.names:
        if ref64.kind(name) not in ("module", "output") or name not in emulated or name not in real:
            continue
        r, e, q = ref64[name], emulated[name], real[name]
        if r.shape != e.shape or r.shape != q.shape or not np.isfinite(r).all():
            continue
        ne, nr = nmse(e, r), nmse(q, r)
        if not (np.isfinite(ne) and np.isfinite(nr)) or nr == 0 and ne == 0:
            continue
        rows.append({"module": name, "emulated": ne, "real": nr, "ratio": ne / nr if nr else float("inf")})
    return rows


def export_int8(model_dir: Path, size, tmp: str) -> str:
    """`size`: the input's (H, W) (an int: square), fixed in the export; the batch is dynamic."""
    import torch
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic

    config = json.loads((model_dir / "config.json").read_text())
    cls = getattr(transformers, config["architectures"][0])
    tm = cls.from_pretrained(model_dir, attn_implementation="eager").eval()
    path, qpath = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.int8.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h, w = (size, size) if isinstance(size, int) else size
        torch.onnx.export(tm, (torch.zeros(1, 3, h, w),), path, input_names=["pixel_values"],
                          output_names=["logits"], dynamo=False, dynamic_axes={"pixel_values": {0: "batch"}},
                          opset_version=17)
    import logging
    logging.getLogger().setLevel(logging.ERROR)             # quantize_dynamic's "consider pre-processing" warning
    quantize_dynamic(path, qpath, weight_type=QuantType.QInt8)
    return qpath


def ort_logits(qpath: str, x: np.ndarray, per_call: int = 1) -> np.ndarray:
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    s = onnxruntime.InferenceSession(qpath, opts, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"pixel_values": x[i:i + per_call]})[0] for i in range(0, len(x), per_call)])


def emulated_logits(model, x: np.ndarray, per_call: int) -> np.ndarray:
    return np.concatenate([model(x[i:i + per_call]).logits for i in range(0, len(x), per_call)])


def torch_bf16_logits(model_dir: Path, x: np.ndarray) -> np.ndarray:
    import torch
    import transformers

    config = json.loads((model_dir / "config.json").read_text())
    cls = getattr(transformers, config["architectures"][0])
    tm = cls.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.bfloat16).eval()
    with torch.no_grad():
        return tm(pixel_values=torch.from_numpy(x).to(torch.bfloat16)).logits.float().numpy()


def check_model(model_dir: Path, x: np.ndarray, labels, trace_images: int, formats=("bf16", "int8-dynamic")) -> dict:
    """One model: per-module rows and logits figures for each format."""
    m32 = refvit.from_pretrained(model_dir)
    m64 = refvit.from_pretrained(model_dir, dtype="float64")
    xt = x[:trace_images]
    ref64 = parity.capture(m64, xt.astype(np.float64))
    l64 = np.concatenate([m64(x[i:i + 40].astype(np.float64)).logits for i in range(0, len(x), 40)])
    l32 = np.concatenate([m32(x[i:i + 40]).logits for i in range(0, len(x), 40)])
    out = {"model": model_dir.name, "images": len(x), "trace_images": len(xt), "float32_logits_nmse": nmse(l32, l64)}
    if labels is not None:
        out["top1_float32"] = int((l32.argmax(-1) == labels).sum())
    for fmt in formats:
        emu = precision.emulate(m32, fmt)
        emu_trace = parity.capture(emu, xt)
        if fmt == "bf16":
            real_trace = parity.capture_transformers(str(model_dir), xt, dtype="bfloat16")
            le, lr = emulated_logits(emu, x, 40), torch_bf16_logits(model_dir, x)
            how = "torch bf16 (CPU, eager attention), batches of 40"
        else:
            with tempfile.TemporaryDirectory() as tmp:
                qpath = export_int8(model_dir, tuple(x.shape[-2:]), tmp)
                real_trace = parity.capture_onnx(qpath, xt, like=ref64)
                # compare only the module boundaries the float32 export shows at the right value: in the quantized
                # graph a boundary can move (CvT's last stage output is not in the float export at all)
                float_trace = parity.capture_onnx(os.path.join(tmp, "model.onnx"), xt, like=ref64)
                found = {n for n in float_trace.names if n in ref64 and float_trace[n].shape == ref64[n].shape
                         and nmse(float_trace[n], ref64[n]) < 1e-8}
                real_trace = parity.Trace({n: real_trace[n] for n in real_trace.names if n in found},
                                          real_trace.meta)
                le, lr = emulated_logits(emu, x, 1), ort_logits(qpath, x, 1)
            how = "ONNX Runtime quantize_dynamic QInt8 on torch.onnx.export, one image per call"
        rows = module_rows(ref64, emu_trace, real_trace)
        f = {"real": how, "modules": rows, "logits_emulated": nmse(le, l64), "logits_real": nmse(lr, l64)}
        f["logits_ratio"] = f["logits_emulated"] / f["logits_real"] if f["logits_real"] else float("inf")
        if labels is not None:
            f["top1_emulated"], f["top1_real"] = int((le.argmax(-1) == labels).sum()), int((lr.argmax(-1) == labels).sum())
        ratios = [r["ratio"] for r in rows]
        f["module_ratio_min"], f["module_ratio_max"] = (min(ratios), max(ratios)) if ratios else (None, None)
        f["modules_off"] = [r["module"] for r in rows if not MODULE_RATIO[0] <= r["ratio"] <= MODULE_RATIO[1]]
        f["logits_ok"] = LOGITS_RATIO[0] <= f["logits_ratio"] <= LOGITS_RATIO[1]
        f["top1_ok"] = labels is None or abs(f["top1_emulated"] - f["top1_real"]) <= 1
        out[fmt] = f
    return out


def markdown(results: list[dict]) -> str:
    lines = ["| model | format | logits NMSE emulated | logits NMSE real | ratio | module ratio min–max | modules off "
             "[0.25, 4] | top-1 float32 / emulated / real |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for fmt in ("bf16", "int8-dynamic"):
            if fmt not in r:
                continue
            f = r[fmt]
            top1 = (f"{r['top1_float32']} / {f['top1_emulated']} / {f['top1_real']} of {r['images']}"
                    if "top1_emulated" in f else "—")
            lo, hi = f["module_ratio_min"], f["module_ratio_max"]
            lines.append(f"| {r['model']} | {fmt} | {f['logits_emulated']:.2e} | {f['logits_real']:.2e} | "
                         f"{f['logits_ratio']:.2f} | {lo:.2f}–{hi:.2f} | {len(f['modules_off'])} of {len(f['modules'])} | "
                         f"{top1} |")
    return "\n".join(lines)


def module_markdown(r: dict, fmt: str) -> str:
    lines = [f"**{r['model']}, {fmt}** (NMSE vs refvit float64, {r['trace_images']} images in one call)", "",
             "| module | emulated | real | ratio |", "|---|---|---|---|"]
    for row in r[fmt]["modules"]:
        lines.append(f"| `{row['module']}` | {row['emulated']:.2e} | {row['real']:.2e} | {row['ratio']:.2f} |")
    return "\n".join(lines)


PAGE = """# Precision: every module, emulated against real

The per-module figures behind [Reduced precision](precision.md)'s table, written by `{command}` (needs torch,
transformers, onnx and onnxruntime). NMSE is Σ(x − ref)²/Σref² against refvit's float64 run, on the images named in
each table's title in one call; "emulated" is `precision.emulate(model, format)`, "real" is torch's own bf16 forward
or ONNX Runtime's `quantize_dynamic` (QInt8) of the exported model; ratio = emulated / real (target [0.25, 4] per
module, [0.5, 2] on the logits). What is off and why: [Reduced precision](precision.md).

{tables}"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(FAMILIES), help="digits families to check (comma-separated)")
    p.add_argument("--cases", default=",".join(GOLDEN_CASES), help="golden cases to check (comma-separated; '' none)")
    p.add_argument("--trace-images", type=int, default=40)
    p.add_argument("--count", type=int, default=None, help="only the first COUNT test digits")
    p.add_argument("--case-images", type=int, default=0, help="also check each golden case on this many more "
                   "inputs drawn as golden/generate.py draws the case's own (N(0, 1), the case's shape; seed 0): two "
                   "images leave the NMSE of a small model's logits to chance")
    p.add_argument("--json", help="write every figure as JSON")
    p.add_argument("--out", help="write the markdown tables")
    args = p.parse_args(argv)
    results = []
    for fam in [m for m in args.models.split(",") if m]:
        d = ROOT / "golden" / "models" / f"digits-{fam}"
        x, labels = digits_pixel_values(d, args.count)
        results.append(check_model(d, x, labels, args.trace_images))
        print(markdown(results[-1:]).splitlines()[-1], flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    for case in [c for c in args.cases.split(",") if c]:
        d = ROOT / "golden" / "cases" / case
        with np.load(d / "inputs.npz") as z:
            x = z["pixel_values"].astype(np.float32)
        results.append(check_model(d, x, None, len(x)))
        print(markdown(results[-1:]).splitlines()[-1], flush=True)
        if args.case_images:
            more = synthetic.random_pixel_values(args.case_images, *x.shape[1:], seed=0)
            results.append(check_model(d, more, None, len(more)))
            results[-1]["model"] = f"{case} ({len(more)} N(0, 1) inputs)"
            print(markdown(results[-1:]).splitlines()[-1], flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    text = markdown(results) + "\n\n" + "\n\n".join(module_markdown(r, f) for r in results
                                                   for f in ("bf16", "int8-dynamic") if f in r)
    if args.out:
        command = " ".join(["python golden/precision_check.py", *(sys.argv[1:] if argv is None else argv)])
        Path(args.out).write_text(PAGE.format(command=command, tables=text) + "\n")
    else:
        print(text)
    ok = all(r[f]["logits_ok"] and r[f]["top1_ok"] for r in results for f in ("bf16", "int8-dynamic") if f in r)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
