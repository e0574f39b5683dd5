"""What a benchmark run prints: the environment it ran in, the plain table, the targets and the markdown tables of
the docs' speed page."""

from __future__ import annotations

import datetime
import os
import platform
import textwrap

from .workers import IMPLS, RUNS_PER_PROCESS, THREAD_VARS
from .zoo import FLOOR_TARGET_MODELS

WIDTH = 118                                                            # markdown paragraphs wrapped as docs/speed.md's


def _version(module: str):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int | None, gflops: float | None, command: str | None = None) -> dict:
    """Versions, CPU, thread counts, the sgemm rate and the date: what a table needs to be reproduced."""
    from .. import __version__

    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
            "cpu": _cpu_model(), "cpus": os.cpu_count(), "threads": threads, "sgemm_gflops": gflops,
            "refvit": __version__, "python": platform.python_version(),
            **{m: _version(m) for m in ("numpy", "numba", "scipy", "torch", "transformers", "onnx", "onnxruntime")},
            **{v: os.environ.get(v) for v in THREAD_VARS}}
    return info


def _x(v) -> str:
    return f"{v:.2f}x" if v else "-"


def _fixed_width(columns: list[tuple], rows: list[dict]) -> list[str]:
    """A plain-text table: the header line, then a line per row. `columns`: (header, alignment and width, the cell
    as text); each header is aligned as its column, so the two cannot drift apart."""
    return [" ".join(format(header, spec) for header, spec, _ in columns)] + [
        " ".join(format(cell(r), spec) for _, spec, cell in columns) for r in rows]


def format_rows(rows: list[dict]) -> str:
    """The plain table: model, batch, impl, ms/image, vs torch, vs ORT, vs best peer, floor %."""
    lines = _fixed_width([("model", "<11", lambda r: r["model"]), ("batch", ">5", lambda r: f"{r['batch']:d}"),
                          ("impl", "<18", lambda r: r["impl"]),
                          ("ms/image", ">9", lambda r: f"{r['ms_per_image']:.1f}"),
                          ("vs torch", ">9", lambda r: _x(r["vs_torch"])), ("vs ORT", ">8", lambda r: _x(r["vs_ort"])),
                          ("vs best peer", ">12", lambda r: _x(r["vs_best_peer"])),
                          ("floor %", ">8", lambda r: f"{r['floor_pct']:.0f}%")], rows)
    bad = [f"{r['model']} batch {r['batch']} {r['impl']} ({r['max_abs_diff']:.2g})"
           for r in rows if r["logits_match"] is False]
    if bad:
        lines.append("logits differ from PyTorch's beyond 1e-4·max(1, max|ref|): " + ", ".join(bad))
    return "\n".join(lines)


def format_skipped(skipped: list[dict]) -> str:
    return "\n".join(f"skipped {s['impl']} ({s['model']}): {s['reason']}" for s in skipped)


def format_startup(rows: list[dict]) -> str:
    """One line per process: launch to prediction, wall time, import, load, forward; peak and after-import RSS."""
    return "\n".join(_fixed_width(
        [(f"process ({rows[0]['model']})", "<28", lambda r: r["process"]),
         ("to prediction s", ">15", lambda r: f"{_to_prediction(r):.2f}"),
         ("wall s", ">7", lambda r: f"{r['wall_s']:.2f}"), ("import s", ">8", lambda r: f"{r['import_s']:.2f}"),
         ("load s", ">7", lambda r: f"{r['load_s']:.2f}"), ("forward s", ">9", lambda r: f"{r['forward_s']:.2f}"),
         ("peak RSS MiB", ">12", lambda r: f"{r['peak_rss_mib']:.0f}"),
         ("RSS after import", ">16", lambda r: f"{r['rss_after_import_mib']:.0f}")], rows))


def _to_prediction(row) -> float:
    """Launch to prediction; a result saved before that was measured has only launch to exit."""
    return row.get("to_prediction_s", row["wall_s"])


def targets(result: dict) -> list[tuple[str, str, bool | None]]:
    """The speed targets as (target, what was measured, met?) — None where this run did not measure it."""
    rows, out = result.get("rows", []), []
    by = {(r["model"], r["batch"], r["impl"]): r for r in rows}
    numba = [r for r in rows if r["impl"] == "refvit-numba"]
    vs_peer = [r for r in numba if r["vs_best_peer"]]
    for limit in (1.0, 0.9):
        if vs_peer:
            worst = max(vs_peer, key=lambda r: r["vs_best_peer"])
            out.append((f"refvit-numba, default process, ≤ {limit}× the fastest peer, every model and batch",
                        f"worst {worst['vs_best_peer']:.2f}× ({worst['model']} batch {worst['batch']}); "
                        f"{sum(r['vs_best_peer'] <= limit for r in vs_peer)}/{len(vs_peer)} met",
                        all(r["vs_best_peer"] <= limit for r in vs_peer)))
    tuned = [(r["ms_per_image"] / by[k[:2] + ("refvit-numba-tuned",)]["ms_per_image"], k) for k, r in by.items()
             if k[2] == "refvit-numba" and k[:2] + ("refvit-numba-tuned",) in by]
    if tuned:
        ratio, k = max(tuned)
        out.append(("default process as fast as OPENBLAS_NUM_THREADS=1 (within the noise, ≤ 1.1×)",
                    f"worst {ratio:.2f}× ({k[0]} batch {k[1]})", ratio <= 1.1))
    floor = [r for r in numba if r["model"] in FLOOR_TARGET_MODELS and r["batch"] == 8]
    if floor:
        out.append(("≥ 75% of the compute floor, DeiT-B/ViT-B/BEiT-B at batch 8",
                    ", ".join(f"{r['model']} {r['floor_pct']:.0f}%" for r in floor),
                    all(r["floor_pct"] >= 75 for r in floor)))
    start = {r["process"]: r for r in result.get("startup", [])}
    for key, limit in (("refvit, Numba cache warm", 0.8), ("refvit, Numba cache cold", 15.0)):
        if key in start:
            wall = _to_prediction(start[key])
            target = f"time to first prediction (launch to prediction), {key.split(', ')[1]} ≤ {limit} s"
            out.append((target, f"{wall:.2f} s", wall <= limit))
    if "refvit, Numba cache warm" in start:
        peak = start["refvit, Numba cache warm"]["peak_rss_mib"]
        out.append(("peak RSS at the first prediction ≤ 200 MiB, cache warm", f"{peak:.0f} MiB", peak <= 200))
    slow = [(by[k[:2] + ("refvit-numpy",)]["ms_per_image"] / r["ms_per_image"], k) for k, r in by.items()
            if k[2] == "refvit-numba" and k[:2] + ("refvit-numpy",) in by]
    if slow:
        ratio, k = max(slow)
        out.append(("refvit-numpy within 3× of refvit-numba", f"worst {ratio:.2f}× ({k[0]} batch {k[1]})",
                    ratio <= 3))
    return out


def _md_ms(r) -> str:
    return f"{r['ms_per_image']:.1f}" if r else "–"


def _pct(r) -> str:
    return f"{r['floor_pct']:.0f}%" if r else "–"


def markdown(result: dict) -> str:
    """The benchmarks page's tables (docs/speed.md): times, start-up, targets, environment."""
    env, rows, out = result["environment"], result.get("rows", []), []
    by = {(r["model"], r["batch"], r["impl"]): r for r in rows}
    threads = {None: "default threads", 1: "1 thread"}.get(env["threads"], f"{env['threads']} threads")
    out.append(textwrap.fill(
        f"Measured {env['date']} on {env['cpu']} ({env['cpus']} CPUs), {threads}, float32; sgemm "
        f"{env['sgemm_gflops']:.0f} GFLOP/s (numpy, same threads, best sample of the run). refvit {env['refvit']}, "
        f"Python {env['python']}, numpy {env['numpy']}, numba {env['numba']}, torch {env['torch']}, "
        f"transformers {env['transformers']}, onnxruntime {env['onnxruntime']}.", WIDTH))
    if env.get("command"):
        out.append(f"\n```\n{env['command']}\n```")
    out.append("\n" + textwrap.fill(
        "Each implementation alone in a fresh process, one process per implementation and round, the order rotated "
        f"each round; per process one warm-up run, then {RUNS_PER_PROCESS} timed runs per batch; the median per "
        "image over all rounds. " + "; ".join(f"{k}: {v}" for k, v in IMPLS.items()) + ".", WIDTH))
    if rows:
        cols = [("refvit-numba", "refvit numba, default process"), ("refvit-numba-tuned", "refvit numba, tuned"),
                ("refvit-numpy", "refvit numpy"), ("torch-eager", "torch eager (sdpa)"),
                ("torch-eager-attn", "torch eager (eager attn)"), ("onnxruntime", "ORT")]
        out.append("\n| model | batch | GFLOPs | floor ms | " + " | ".join(f"{c} ms" for _, c in cols)
                   + " | default ÷ fastest peer | tuned ÷ fastest peer | floor % (default) |\n"
                   + "|---" * (len(cols) + 7) + "|")
        for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
            nb, tuned = by.get((model, batch, "refvit-numba")), by.get((model, batch, "refvit-numba-tuned"))
            any_row = next(r for r in rows if (r["model"], r["batch"]) == (model, batch))
            out.append(f"| {model} | {batch} | {any_row['flops'] / 1e9:.2f} | {any_row['floor_ms']:.1f} | "
                       + " | ".join(_md_ms(by.get((model, batch, k))) for k, _ in cols)
                       + f" | {_x(nb and nb['vs_best_peer'])} | {_x(tuned and tuned['vs_best_peer'])} | {_pct(nb)} |")
    if result.get("skipped"):
        out.append("\n" + "\n".join(f"- skipped {s['impl']} ({s['model']}): {s['reason']}"
                                      for s in result["skipped"]))
    if result.get("startup"):
        out.append("\n" + textwrap.fill(f"Time to first prediction ({result['startup'][0]['model']}: fresh process, "
                                         "import, load the save_pretrained directory, one forward on one image; "
                                         "to prediction: from launch to the prediction; wall: from launch to exit, "
                                         "the interpreter's shutdown included), "
                                         f"median of {result['startup'][0]['runs']} runs:", WIDTH)
                   + "\n\n| process | to prediction s | wall s | import s | load s | forward s | "
                   "peak RSS MiB | RSS after import MiB |\n|---|---|---|---|---|---|---|---|")
        for r in result["startup"]:
            out.append(f"| {r['process']} | {_to_prediction(r):.2f} | {r['wall_s']:.2f} | {r['import_s']:.2f} | "
                       f"{r['load_s']:.2f} | {r['forward_s']:.2f} | {r['peak_rss_mib']:.0f} | "
                       f"{r['rss_after_import_mib']:.0f} |")
    checks = targets(result)
    if checks:
        out.append("\n| target | measured | met |\n|---|---|---|")
        out.extend(f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in checks)
    return "\n".join(out)
