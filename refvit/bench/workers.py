"""The timed runs: each implementation alone in a fresh process (`worker_main`), on the same saved model, input and
thread count, and this machine's sgemm rate (the compute floor's denominator), also sampled in a fresh process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from .. import synthetic
from ..tolerance import allowed_error
from .zoo import count_flops, write_model

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def log(message: str) -> None:
    print(f"refvit bench: {message}", file=sys.stderr, flush=True)


def importable(module: str) -> bool:
    """Whether `module` is installed (nothing is imported to find out)."""
    return importlib.util.find_spec(module) is not None


IMPLS = {  # name: what runs, in its own process (PEERS: the libraries refvit is compared with)
    "refvit-numba": "refvit, Numba backend, default process: no thread variable set (numba.set_num_threads(N))",
    "refvit-numba-tuned": "refvit, Numba backend, OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=N set before start",
    "refvit-numpy": "refvit, NumPy backend: numpy's BLAS on N threads (OPENBLAS_NUM_THREADS=N), its only parallelism",
    "torch-eager": "transformers + PyTorch eager, default attention (sdpa), torch.set_num_threads(N)",
    "torch-eager-attn": "transformers + PyTorch eager, attn_implementation=\"eager\", torch.set_num_threads(N)",
    "onnxruntime": "ONNX Runtime CPU, the transformers model exported (dynamo=False), N intra-op threads",
}
PEERS = ("torch-eager", "torch-eager-attn", "onnxruntime")
RUNS_PER_PROCESS = 3  # timed runs per batch in each process, after one untimed warm-up run


def impls_for(backends, peers) -> list[str]:
    """The implementations one run times, in IMPLS order: the Numba backend as a default and a tuned process."""
    chosen = [f"refvit-{b}" for b in backends] + (["refvit-numba-tuned"] if "numba" in backends else [])
    chosen += list(peers)
    return [k for k in IMPLS if k in chosen]


def missing_peer(impl: str) -> str | None:
    """Why a peer cannot run here (a package not installed), or None. Nothing is imported to find out."""
    needs = {"torch-eager": ("torch", "transformers"), "torch-eager-attn": ("torch", "transformers"),
             "onnxruntime": ("torch", "transformers", "onnx", "onnxruntime")}.get(impl, ())
    absent = [m for m in needs if not importable(m)]
    return f"not installed: {', '.join(absent)}" if absent else None


def base_env() -> dict:
    """This process's environment without any thread variable (a default process), the child importing this very
    refvit."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    return env


def impl_env(impl: str, threads: int | None) -> dict:
    """The environment `impl` starts in. The default-process row sets nothing (its thread count goes through
    numba.set_num_threads in the process, as a user's code would); the others are set to N threads before start."""
    env = base_env()
    if impl == "refvit-numba-tuned":
        env["OPENBLAS_NUM_THREADS"] = "1"
        if threads:
            env["NUMBA_NUM_THREADS"] = str(threads)
    elif impl != "refvit-numba" and threads:
        env.update({v: str(threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    return env


def export_onnx(tm, side: int, path: str) -> None:
    """transformers model -> ONNX with a dynamic batch dimension.

    torch 2.13's legacy TorchScript exporter (dynamo=False) exports all eight models; the dynamo exporter fails on
    BEiT here ("Failed to decompose the FX graph"), so it is only the fallback for a torch without the legacy one.
    """
    import torch

    x = torch.zeros(1, 3, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                     # the exporters' deprecation and tracer warnings
        try:
            torch.onnx.export(tm, (x,), path, input_names=["pixel_values"], dynamo=False,
                              dynamic_axes={"pixel_values": {0: "batch"}}, opset_version=18)
        except Exception as e:  # noqa: BLE001 - any exporter failure: try the other exporter (needs onnxscript)
            log(f"legacy ONNX export failed ({type(e).__name__}: {e}); trying dynamo=True")
            torch.onnx.export(tm, (x,), path, input_names=["pixel_values"], dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch")},))


def torch_model(arch: str, config: dict, tensors: dict, attn_implementation: str | None = None):
    """The same weights in transformers (eval mode), or None without torch/transformers."""
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError:
        return None
    from ..checkpoint import write_safetensors

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_text(json.dumps(config))
        write_safetensors(Path(tmp, "model.safetensors"), tensors)
        kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
        return getattr(transformers, arch).from_pretrained(tmp, **kw).eval()


def load_impl(spec: dict):
    """In the worker: the implementation as a function pixel_values (numpy) -> logits (numpy)."""
    impl, threads, directory = spec["impl"], spec["threads"], spec["model_dir"]
    if impl.startswith("refvit-"):
        import refvit
        model = refvit.from_pretrained(directory, backend="numpy" if impl == "refvit-numpy" else "numba")
        if threads and impl != "refvit-numpy":
            import numba
            numba.set_num_threads(threads)
        return lambda x: model(x).logits
    if impl.startswith("torch-"):
        import torch
        import transformers
        if threads:
            torch.set_num_threads(threads)
        kw = {"attn_implementation": "eager"} if impl == "torch-eager-attn" else {}
        tm = getattr(transformers, spec["arch"]).from_pretrained(directory, **kw).eval()

        def run_torch(x):
            with torch.inference_mode():
                return tm(pixel_values=torch.from_numpy(x)).logits.numpy()
        return run_torch
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0             # 0: onnxruntime's default (one per physical core)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(spec["onnx"], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]       # output 0 is logits


def worker_main(spec_json: str) -> None:
    """One implementation in a fresh process: load the saved model, then per batch one untimed warm-up run and
    `runs` timed runs back to back; prints {"times": {batch: [s]}} as its last line, saves the first logits."""
    spec = json.loads(spec_json)
    if spec["impl"] == "export":
        tm = torch_model_from_dir(spec["arch"], spec["model_dir"])
        export_onnx(tm, spec["side"], spec["onnx"])
        print(json.dumps({"exported": spec["onnx"]}))
        return
    run = load_impl(spec)
    times = {}
    for batch, path in zip(spec["batches"], spec["inputs"]):
        x = np.load(path)
        logits = np.asarray(run(x))                         # warm-up: JIT cache load, allocators, thread pools
        if spec.get("logits"):
            np.save(spec["logits"].format(batch=batch), logits)
        times[str(batch)] = []
        for _ in range(spec["runs"]):
            t0 = time.perf_counter()
            run(x)
            times[str(batch)].append(time.perf_counter() - t0)
    print(json.dumps({"times": times}))


def torch_model_from_dir(arch: str, directory: str):
    import transformers
    return getattr(transformers, arch).from_pretrained(directory).eval()


def run_worker(spec: dict, env: dict) -> dict:
    """`worker_main(spec)` in a fresh interpreter started with `env`; its result. RuntimeError if it fails."""
    code = "import sys; from refvit.bench.workers import worker_main; worker_main(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{spec['impl']} process failed: " + (done.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(models, batches, repeat: int = 3, threads: int | None = None, backends=("numba", "numpy"),
          peers=PEERS, skipped: list | None = None) -> list[dict]:
    """Rows of {model, batch, impl, ms_per_image, times_ms, max_abs_diff, ...}: every implementation alone in a
    fresh process, `repeat` rounds, the order rotated each round; the median of every timed run per image.

    `max_abs_diff` is max |logits − PyTorch eager's logits| on the timed input (None without torch), `logits_match`
    whether it is within the golden float32 tolerance. A peer that is not installed or fails is appended to
    `skipped` as {impl, reason} and has no row; a refvit process that fails raises.
    Why so many parameters: the options of `refvit bench`, each with a default.
    """
    skipped = [] if skipped is None else skipped
    rows = []
    for name in models:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            arch, config, side = write_model(tmp / "model", name)
            inputs = []
            for batch in batches:
                inputs.append(str(tmp / f"x{batch}.npy"))
                np.save(inputs[-1], synthetic.random_pixel_values(batch, 3, side, side, seed=1))
            impls = _runnable(name, arch, side, tmp, impls_for(backends, peers), skipped)
            base = {"arch": arch, "model_dir": str(tmp / "model"), "onnx": str(tmp / "model.onnx"),
                    "batches": list(batches), "inputs": inputs, "runs": RUNS_PER_PROCESS, "threads": threads}
            times = _rounds(name, base, impls, repeat, tmp, skipped)
            rows += _rows(name, count_flops(config, arch, side), batches, impls, times, tmp)
    return rows


def _runnable(name: str, arch: str, side: int, tmp: Path, impls: list, skipped: list) -> list[str]:
    """The implementations that can run here: peers whose packages are missing, and ONNX Runtime when the export
    fails, go to `skipped`."""
    runnable = []
    for impl in impls:
        reason = missing_peer(impl)
        if reason:
            skipped.append({"model": name, "impl": impl, "reason": reason})
        else:
            runnable.append(impl)
    if "onnxruntime" in runnable:
        t0 = time.perf_counter()
        try:
            run_worker({"impl": "export", "arch": arch, "model_dir": str(tmp / "model"), "side": side,
                        "onnx": str(tmp / "model.onnx")}, base_env())
            log(f"{name}: exported to ONNX in {time.perf_counter() - t0:.1f} s")
        except RuntimeError as e:
            skipped.append({"model": name, "impl": "onnxruntime", "reason": f"ONNX export failed: {e}"})
            runnable.remove("onnxruntime")
    return runnable


def _rounds(name: str, base: dict, impls: list, repeat: int, tmp: Path, skipped: list) -> dict:
    """{(impl, batch): [seconds]} over `repeat` rounds, one process per implementation and round, the order rotated
    each round; the first round saves each one's logits. A peer that fails leaves `impls` (into `skipped`)."""
    batches = base["batches"]
    times = {(impl, b): [] for impl in impls for b in batches}
    for r in range(repeat if impls else 0):
        for impl in impls[r % len(impls):] + impls[:r % len(impls)]:   # rotated: no fixed neighbour
            spec = {**base, "impl": impl, "logits": str(tmp / f"logits-{impl}-{{batch}}.npy") if r == 0 else None}
            try:
                out = run_worker(spec, impl_env(impl, base["threads"]))
            except RuntimeError as e:
                if impl.startswith("refvit"):
                    raise
                skipped.append({"model": name, "impl": impl, "reason": str(e)})
                impls.remove(impl)
                continue
            for b in batches:
                times[impl, b] += out["times"][str(b)]
            log(f"{name} round {r + 1}/{repeat} {impl}: " + ", ".join(
                f"batch {b} {1e3 * min(out['times'][str(b)]) / b:.1f}" for b in batches) + " ms/image")
    return times


def _rows(name: str, flops: int, batches, impls: list, times: dict, tmp: Path) -> list[dict]:
    """One row per batch and implementation: the median time per image and the logits' distance to PyTorch's."""
    rows = []
    for batch in batches:
        ref_path = tmp / f"logits-torch-eager-{batch}.npy"
        reference = np.load(ref_path) if ref_path.exists() else None
        for impl in impls:
            diff = tolerance = None
            out_path = tmp / f"logits-{impl}-{batch}.npy"
            if reference is not None and out_path.exists():
                diff = float(np.abs(np.load(out_path) - reference).max())
                tolerance = allowed_error(reference, "float32")
            rows.append({"model": name, "batch": batch, "impl": impl, "flops": flops,
                         "ms_per_image": float(np.median(times[impl, batch])) * 1e3 / batch,
                         "times_ms": [round(t * 1e3, 3) for t in times[impl, batch]], "max_abs_diff": diff,
                         "logits_match": None if diff is None else diff <= tolerance})
        log(f"{name} batch {batch}: " + ", ".join(f"{r['impl']} {r['ms_per_image']:.1f}" for r in rows
                                                  if r["batch"] == batch))
    return rows


def add_ratios(rows: list[dict], gflops: float) -> list[dict]:
    """Per row: vs_torch, vs_ort, vs_best_peer (ms ÷ the peer's ms; < 1 is faster), floor_ms and floor_pct."""
    ms = {(r["model"], r["batch"], r["impl"]): r["ms_per_image"] for r in rows}
    for r in rows:
        key = (r["model"], r["batch"])
        peer = {p: ms.get(key + (p,)) for p in PEERS}
        best = min((v for v in peer.values() if v), default=None)      # the fastest peer that ran
        r["vs_torch"] = r["ms_per_image"] / peer["torch-eager"] if peer["torch-eager"] else None
        r["vs_ort"] = r["ms_per_image"] / peer["onnxruntime"] if peer["onnxruntime"] else None
        r["vs_best_peer"] = r["ms_per_image"] / best if best else None
        r["floor_ms"] = r["flops"] / (gflops * 1e9) * 1e3
        r["floor_pct"] = 100 * r["floor_ms"] / r["ms_per_image"]
    return rows


def sgemm_gflops_at(threads: int | None, sizes=(1024, 2048, 3072), repeat: int = 5) -> float:
    """`sgemm_gflops` with numpy's OpenBLAS at `threads` threads (a fresh process: OpenBLAS reads it at import)."""
    env = {**base_env(), **({k: str(threads) for k in THREAD_VARS} if threads else {})}
    code = f"from refvit.bench.workers import sgemm_gflops; print(sgemm_gflops({tuple(sizes)!r}, {repeat}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def sgemm_gflops(sizes=(1024, 2048, 3072), repeat: int = 5) -> float:
    """This machine's float32 matmul rate in numpy (its BLAS, its thread count): best over square sizes and runs."""
    best = 0.0
    for n in sizes:
        a, b = (np.random.default_rng(i).standard_normal((n, n)).astype(np.float32) for i in (0, 1))
        a @ b                                               # warm-up: BLAS thread pool start, page faults
        for _ in range(repeat):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best
