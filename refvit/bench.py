"""`refvit bench`: refvit (both backends) against PyTorch eager and ONNX Runtime on real-size seeded models.

What it measures (issue #8):
- per-image forward time: every implementation in the same process, same weights, same thread count, runs
  interleaved (machine load drifts over all alike), median of `repeat` runs after one warm-up run;
- the ratio of each refvit backend to each peer and to the faster peer;
- % of the compute floor: the model's FLOPs (counted from its config, see `count_flops`) divided by the sgemm rate
  this machine reaches in numpy at the run's thread count (`sgemm_gflops`), over the measured time;
- time to first prediction and peak RSS of a fresh process (`startup`), with the Numba cache warm and cold.
torch, transformers, onnx and onnxruntime are optional: imported only here, only when installed; nothing is downloaded.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from math import ceil
from pathlib import Path

import numpy as np

from . import synthetic
from .errors import ConfigError

LABELS = {str(i): f"class_{i}" for i in range(1000)}
PEERS = ("torch-eager", "onnxruntime")
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
CHILD_VAR = "REFVIT_BENCH_THREADS"  # set in the thread-setting child process (see `child_env`)
STARTUP_MODEL = "deit-small"
WIDTH = 118                                                            # markdown paragraphs wrapped as the README's


def _vit(model_type, arch, hidden, heads, **extra):
    return arch, 224, {"model_type": model_type, "hidden_size": hidden, "num_hidden_layers": 12,
                       "num_attention_heads": heads, "intermediate_size": 4 * hidden, "image_size": 224,
                       "patch_size": 16, "layer_norm_eps": 1e-12, **extra}


def _cvt(depth):
    return "CvtForImageClassification", 224, {
        "model_type": "cvt", "embed_dim": [64, 192, 384], "depth": depth, "num_heads": [1, 3, 6],
        "cls_token": [False, False, True], "patch_sizes": [7, 3, 3], "patch_stride": [4, 2, 2],
        "patch_padding": [2, 1, 1]}


# name: (architecture, input side, config) — the real models' shapes, 1000 labels, weights from a seed
MODELS = {
    "deit-tiny": _vit("deit", "DeiTForImageClassificationWithTeacher", 192, 3),
    "deit-small": _vit("deit", "DeiTForImageClassificationWithTeacher", 384, 6),
    "deit-base": _vit("deit", "DeiTForImageClassificationWithTeacher", 768, 12),
    "vit-base": _vit("vit", "ViTForImageClassification", 768, 12),
    "beit-base": _vit("beit", "BeitForImageClassification", 768, 12, use_relative_position_bias=True,
                      use_mean_pooling=True, layer_scale_init_value=0.1),
    "cvt-13": _cvt([1, 2, 10]),
    "cvt-21": _cvt([1, 4, 16]),
    "bit-50": ("BitForImageClassification", 448, {
        "model_type": "bit", "layer_type": "preactivation", "global_padding": "SAME",
        "embedding_dynamic_padding": True, "depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048]}),
}
FLOOR_TARGET_MODELS = ("deit-base", "vit-base", "beit-base")   # issue #8: ≥ 75% of the floor at batch 8


def model_config(name: str) -> tuple[str, dict, int]:
    """(architecture, config dict as config.json holds it, input side) of a benchmark model."""
    arch, side, config = MODELS[name]
    return arch, {**config, "id2label": LABELS, "architectures": [arch]}, side


def log(message: str) -> None:
    print(f"refvit bench: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# FLOPs, counted from the config: 2 × the multiply-accumulates of every matrix product and convolution — patch/stem
# embeddings, q/k/v/output projections, attention's Q·Kᵀ and A·V, MLPs, CvT's depthwise projections, BiT's
# convolutions, classifier heads. Not counted: norms, softmax, activations, bias/residual adds, pooling, the relative
# position bias gather and load-time work (BiT's weight standardisation). torch.utils.flop_counter counts the same.


def _vit_flops(cfg, side: int, special_tokens: int) -> int:
    """ViTEmbeddings (conv patch embedding) + layers of ViTLayer / DeiT / BeitLayer."""
    (ph, pw), C, I = cfg.patch_size, cfg.hidden_size, cfg.intermediate_size
    patches = (side // ph) * (side // pw)
    N = patches + special_tokens                            # [CLS] (+ DeiT's distillation token)
    embed = 2 * patches * C * cfg.num_channels * ph * pw
    layer = 2 * N * C * 3 * C + 2 * 2 * N * N * C + 2 * N * C * C + 2 * 2 * N * C * I   # qkv, QKᵀ + AV, out, MLP
    return embed + cfg.num_hidden_layers * layer


def _grid(size: int, method: str, kernel: int, padding: int, stride: int) -> int:
    """Side of CvT's q or k/v grid after its projection (dw_bn conv, avg pool, or none for "linear")."""
    return size if method == "linear" else (size + 2 * padding - kernel) // stride + 1


def _cvt_flops(cfg, side: int) -> int:
    """CvtEmbeddings conv per stage + CvtLayer: depthwise conv projections, linear q/k/v, attention, out, MLP."""
    total, h, c_in = 0, side, cfg.num_channels
    for s in range(cfg.num_stages):
        C, k = cfg.embed_dim[s], cfg.patch_sizes[s]
        h = (h + 2 * cfg.patch_padding[s] - k) // cfg.patch_stride[s] + 1
        total += 2 * h * h * C * c_in * k * k
        method, kq, cls = cfg.qkv_projection_method[s], cfg.kernel_qkv[s], int(cfg.cls_token[s])
        hq = _grid(h, method, kq, cfg.padding_q[s], cfg.stride_q[s])
        hk = _grid(h, method, kq, cfg.padding_kv[s], cfg.stride_kv[s])
        depthwise = 2 * (hq * hq + 2 * hk * hk) * C * kq * kq if method == "dw_bn" else 0
        nq, nk, N = hq * hq + cls, hk * hk + cls, h * h + cls
        layer = (depthwise + 2 * C * C * (nq + 2 * nk) + 2 * 2 * nq * nk * C + 2 * N * C * C
                 + 2 * 2 * N * C * cfg.mlp_width(s))
        total += cfg.depth[s] * layer
        c_in = C
    return total


def _bit_flops(cfg, side: int) -> int:
    """BitEmbeddings (7×7/2 conv, 3×3/2 max-pool) + bottleneck layers (1×1, 3×3 with the stride, 1×1, shortcut)."""
    from .models import bit

    h = ceil(side / bit.STEM_STRIDE)                        # "SAME" and torch-style padding alike
    total = 2 * h * h * cfg.embedding_size * cfg.num_channels * bit.STEM_KERNEL ** 2
    h += 0 if cfg.global_padding == "SAME" else 2           # nn.ConstantPad2d(1) before the pool
    h = ceil(h / bit.POOL_STRIDE) if cfg.embedding_dynamic_padding else (h - bit.POOL_KERNEL) // bit.POOL_STRIDE + 1
    for plan in bit.stage_plan(cfg):
        for i in range(plan.depth):
            c_in = plan.in_channels if i == 0 else plan.out_channels
            ho = ceil(h / plan.stride) if i == 0 else h
            mid, out = plan.mid_channels, plan.out_channels
            total += 2 * h * h * c_in * mid + 2 * ho * ho * mid * mid * 9 + 2 * ho * ho * mid * out
            total += 2 * ho * ho * c_in * out if i == 0 else 0   # downsample (projection) shortcut
            h = ho
    return total


def count_flops(config: dict, architecture: str, side: int) -> int:
    """FLOPs of one image's forward (2 × multiply-accumulates; see the comment above) for a classification model."""
    from .model import choose_architecture

    arch = choose_architecture(config, architecture, "config")
    cfg = arch.parse_config(config, "config")
    if not arch.name.endswith(("ForImageClassification", "ForImageClassificationWithTeacher")):
        raise ConfigError(f"FLOP count: {arch.name} is not an image classification architecture")
    if cfg.model_type in ("vit", "deit", "beit", "data2vec-vision"):
        body, width = _vit_flops(cfg, side, 2 if cfg.model_type == "deit" else 1), cfg.hidden_size
    elif cfg.model_type == "cvt":
        body, width = _cvt_flops(cfg, side), cfg.embed_dim[-1]
    else:
        body, width = _bit_flops(cfg, side), cfg.num_features
    heads = 2 if arch.name.endswith("WithTeacher") else 1   # DeiT: cls_classifier + distillation_classifier
    return body + heads * 2 * width * cfg.num_labels


def child_env(threads: int) -> dict:
    """The environment `--threads N` runs the benchmark in. refvit's Numba kernels split their blocks (GEMMs
    included, BLAS called from Numba) across N Numba threads (refvit/kernels/threads.py), so OpenBLAS runs
    single-threaded (two layers of threads would compete for the same cores); torch (MKL + OpenMP) and ONNX
    Runtime get N threads, the NumPy backend numpy's BLAS at N threads (`numpy_blas_threads`); numpy's sgemm rate,
    the floor's reference, is measured in a separate process with OpenBLAS at N threads (`sgemm_gflops_at`)."""
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads), CHILD_VAR: str(threads)}


def sgemm_gflops_at(threads: int | None, sizes=(1024, 2048, 3072), repeat: int = 5) -> float:
    """`sgemm_gflops` with numpy's OpenBLAS at `threads` threads (a fresh process: OpenBLAS reads it at import)."""
    if not threads or os.environ.get("OPENBLAS_NUM_THREADS") == str(threads):
        return sgemm_gflops(sizes, repeat)
    env = {**os.environ, **{k: str(threads) for k in THREAD_VARS}}
    code = f"from refvit.bench import sgemm_gflops; print(sgemm_gflops({tuple(sizes)!r}, {repeat}))"
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


# ----------------------------------------------------------------------------------------------------------------------
# Peers: the same weights in transformers (PyTorch eager) and exported from it to ONNX Runtime


def torch_model(arch: str, config: dict, tensors: dict):
    """The same weights in transformers (default attention implementation, eval mode), or None without torch."""
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError:
        return None
    from .checkpoint import write_safetensors

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_text(json.dumps(config))
        write_safetensors(Path(tmp, "model.safetensors"), tensors)
        return getattr(transformers, arch).from_pretrained(tmp).eval()


def onnx_session(tm, side: int, threads: int | None):
    """transformers model -> ONNX (batch dimension dynamic) -> onnxruntime CPU session, or None without onnxruntime.

    torch 2.13's legacy TorchScript exporter (dynamo=False) exports all eight models; the dynamo exporter fails on
    BEiT here ("Failed to decompose the FX graph"), so it is only the fallback for a torch without the legacy one.
    """
    try:
        import onnx  # noqa: F401 - torch.onnx.export writes through it
        import onnxruntime as ort
        import torch
    except ImportError:
        return None
    x = torch.zeros(1, 3, side, side)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")                     # the exporters' deprecation and tracer warnings
        path = os.path.join(tmp, "model.onnx")
        try:
            torch.onnx.export(tm, (x,), path, input_names=["pixel_values"], dynamo=False,
                              dynamic_axes={"pixel_values": {0: "batch"}}, opset_version=18)
        except Exception as e:  # noqa: BLE001 - any exporter failure: try the other exporter (needs onnxscript)
            log(f"legacy ONNX export failed ({type(e).__name__}: {e}); trying dynamo=True")
            try:
                torch.onnx.export(tm, (x,), path, input_names=["pixel_values"], dynamo=True,
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
            except Exception as e:  # noqa: BLE001 - no ONNX Runtime row rather than no benchmark
                log(f"ONNX export failed ({type(e).__name__}: {e}); timing without ONNX Runtime")
                return None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0         # 0: onnxruntime's default (one per physical core)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _calls(impls: dict, tm, session, x: np.ndarray) -> dict:
    """{impl: function returning logits as numpy} for one input batch."""
    calls = {k: (lambda m=m: m(x).logits) for k, m in impls.items()}
    if tm is not None:
        import torch
        tx = torch.from_numpy(x)

        def run_torch():
            with torch.inference_mode():
                return tm(pixel_values=tx).logits.numpy()
        calls["torch-eager"] = run_torch
    if session is not None:
        name = session.get_inputs()[0].name
        calls["onnxruntime"] = lambda: session.run(None, {name: x})[0]  # output 0 is logits
    return calls


LEAD_IN_RUNS = 1  # untimed runs of the same implementation right before each timed one (see _time_interleaved)


def numpy_blas_threads(threads: int | None):
    """(to_n, restore): functions setting numpy's own OpenBLAS (not scipy's, which refvit's Numba kernels call) to
    `threads` threads and back, or None (no thread count asked, or no threadpoolctl). `--threads N` starts numpy's
    BLAS single-threaded for the Numba backend (its parallelism is Numba's); the NumPy backend's only parallelism is
    BLAS's own, so it is timed with numpy's BLAS at N threads, as a user of that backend would run it (README,
    Speed)."""
    if not threads:
        return None
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    numpy_dir = os.path.dirname(np.__file__)
    libs = [lib for lib in ThreadpoolController().lib_controllers   # wheels: numpy/ or numpy.libs/
            if lib.user_api == "blas" and os.path.dirname(lib.filepath) in (numpy_dir, numpy_dir + ".libs")]
    if not libs:
        return None
    original = [lib.num_threads for lib in libs]
    return (lambda: [lib.set_num_threads(threads) for lib in libs],
            lambda: [lib.set_num_threads(n) for lib, n in zip(libs, original)])


def _time_interleaved(calls: dict, repeat: int, around: dict | None = None) -> dict:
    """{impl: [seconds]}: run r times every implementation, in an order rotated each round (no fixed neighbour).
    `around`: {impl: (before, after)} called untimed around that implementation's runs (thread settings).

    Each timed run follows LEAD_IN_RUNS untimed runs of the same implementation. OpenBLAS's, OpenMP's and
    onnxruntime's worker threads spin for a while after their last task: timed right after another library's run, a
    multi-threaded implementation found its cores taken (10–20× slower at 2 threads here); the lead-in run absorbs
    that. (An idle pause instead — 0.3 s, the first design — made every implementation slower, and unevenly: on this
    VM a core that idled runs the next ~100 ms slower; CvT-13 batch 1 took 66 ms back to back, 71 after 0.3 s idle,
    89 after 1 s, ONNX Runtime likewise.)
    """
    names, times = list(calls), {k: [] for k in calls}
    for r in range(repeat):
        for k in names[r % len(names):] + names[:r % len(names)]:
            before, after = (around or {}).get(k, (None, None))
            if before:
                before()
            try:
                for _ in range(LEAD_IN_RUNS):
                    calls[k]()
                t0 = time.perf_counter()
                calls[k]()
                times[k].append(time.perf_counter() - t0)
            finally:
                if after:
                    after()
    return times


def _set_threads(threads: int | None) -> None:
    if not threads:
        return
    import numba
    numba.set_num_threads(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass


def bench(models, batches, repeat: int = 7, threads: int | None = None, backends=("numba", "numpy"),
          peers=PEERS) -> list[dict]:
    """Rows of {model, batch, impl, ms_per_image, times_ms, max_abs_diff, ...}; implementations interleaved.

    `max_abs_diff` is max |logits − PyTorch's logits| on the timed input (None without torch), `logits_match` whether
    it is within the golden float32 tolerance 1e-4·max(1, max|torch|).
    """
    from .model import from_state_dict

    _set_threads(threads)
    numpy_blas = numpy_blas_threads(threads)
    around = {} if numpy_blas is None else {"refvit-numpy": numpy_blas}
    rows = []
    for name in models:
        arch, config, side = model_config(name)
        tensors = synthetic.random_state_dict(synthetic.shapes_for(config, arch), seed=0)
        impls = {f"refvit-{b}": from_state_dict(config, tensors, arch, "float32", b) for b in backends}
        tm = torch_model(arch, config, tensors) if peers else None
        t0 = time.perf_counter()
        session = onnx_session(tm, side, threads) if tm is not None and "onnxruntime" in peers else None
        if session is not None:
            log(f"{name}: exported to ONNX in {time.perf_counter() - t0:.1f} s")
        timed_tm = tm if "torch-eager" in peers else None   # torch may be only the exporter and the reference
        flops = count_flops(config, arch, side)
        for batch in batches:
            x = synthetic.random_pixel_values(batch, 3, side, side, seed=1)
            calls = _calls(impls, timed_tm, session, x)
            reference = _torch_logits(tm, x)
            outputs = {k: np.asarray(fn()) for k, fn in calls.items()}   # warm-up: JIT compile, allocators, caches
            times = _time_interleaved(calls, repeat, around)
            for k in calls:
                diff = None if reference is None else float(np.abs(outputs[k] - reference).max())
                tolerance = None if reference is None else 1e-4 * max(1.0, float(np.abs(reference).max()))
                rows.append({"model": name, "batch": batch, "impl": k, "flops": flops,
                             "numpy_blas_threads": threads if k in around else None,
                             "ms_per_image": float(np.median(times[k])) * 1e3 / batch,
                             "times_ms": [round(t * 1e3, 3) for t in times[k]], "max_abs_diff": diff,
                             "logits_match": None if diff is None else diff <= tolerance})
            log(f"{name} batch {batch}: " + ", ".join(f"{r['impl']} {r['ms_per_image']:.1f}"
                                                      for r in rows if r["model"] == name and r["batch"] == batch))
        del impls, tm, timed_tm, session
    return rows


def _torch_logits(tm, x):
    if tm is None:
        return None
    import torch
    with torch.inference_mode():
        return tm(pixel_values=torch.from_numpy(x)).logits.numpy()


def add_ratios(rows: list[dict], gflops: float) -> list[dict]:
    """Per row: vs_torch, vs_ort, vs_best_peer (ms ÷ the peer's ms; < 1 is faster), floor_ms and floor_pct."""
    ms = {(r["model"], r["batch"], r["impl"]): r["ms_per_image"] for r in rows}
    for r in rows:
        key = (r["model"], r["batch"])
        peer = {p: ms.get(key + (p,)) for p in PEERS}
        best = min((v for v in peer.values() if v), default=None)
        r["vs_torch"] = r["ms_per_image"] / peer["torch-eager"] if peer["torch-eager"] else None
        r["vs_ort"] = r["ms_per_image"] / peer["onnxruntime"] if peer["onnxruntime"] else None
        r["vs_best_peer"] = r["ms_per_image"] / best if best else None
        r["floor_ms"] = r["flops"] / (gflops * 1e9) * 1e3
        r["floor_pct"] = 100 * r["floor_ms"] / r["ms_per_image"]
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Time to first prediction: a fresh process imports, loads DeiT-S from a save_pretrained directory, predicts once

_CHILD_COMMON = """
import json, os, resource, sys, time
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
def rss(field):  # kB in /proc/self/status (VmHWM: peak resident set, VmRSS: now); else getrusage's peak (KiB)
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rss_import = rss("VmRSS")
{load}
t2 = time.perf_counter()
x = __import__("numpy").random.default_rng(1).standard_normal((1, 3, {side}, {side})).astype("float32")
{predict}
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "forward_s": t3 - t2, "in_process_s": t3 - t0,
                  "rss_after_import_mib": rss_import / 2 ** 20, "peak_rss_mib": rss("VmHWM") / 2 ** 20,
                  "top_class": int(logits.argmax())}}))
"""
_CHILDREN = {
    "refvit": dict(imports="import refvit", load="model = refvit.from_pretrained(sys.argv[1])",
                   predict="logits = model(x).logits[0]"),
    "torch": dict(imports="import torch, transformers",
                  load="model = getattr(transformers, sys.argv[2]).from_pretrained(sys.argv[1]).eval()",
                  predict="with torch.inference_mode():\n"
                          "    logits = model(pixel_values=torch.from_numpy(x)).logits[0]"),
}


def _run_child(kind: str, model_dir: str, arch: str, side: int, env: dict) -> dict:
    code = _CHILD_COMMON.format(side=side, **_CHILDREN[kind])
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, model_dir, arch], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"refvit bench --startup: the {kind} process failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": wall}


def startup(runs: int = 3, include_torch: bool = True, model: str = STARTUP_MODEL) -> list[dict]:
    """Rows of {process, wall_s (from launch to exit), import_s, load_s, forward_s, peak_rss_mib …}, median of `runs`.

    "refvit, Numba cache cold": NUMBA_CACHE_DIR is a new empty directory; "warm": the same directory again after
    that run filled it. Each run of each kind is a fresh interpreter; the kinds are interleaved run by run.
    """
    arch, config, side = model_config(model)
    tensors = synthetic.random_state_dict(synthetic.shapes_for(config, arch), seed=0)
    has_torch = include_torch and _importable("torch") and _importable("transformers")
    package_parent = str(Path(__file__).resolve().parent.parent)   # the child imports this very refvit
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as model_dir:
        from .checkpoint import write_safetensors
        Path(model_dir, "config.json").write_text(json.dumps(config))
        write_safetensors(Path(model_dir, "model.safetensors"), tensors, {"format": "pt"})
        for r in range(runs):
            with tempfile.TemporaryDirectory() as cache:
                cached = {**env, "NUMBA_CACHE_DIR": cache}
                for process in ("refvit, Numba cache cold", "refvit, Numba cache warm"):   # warm: the cache cold filled
                    results.setdefault(process, []).append(_run_child("refvit", model_dir, arch, side, cached))
            if has_torch:
                results.setdefault("torch + transformers", []).append(_run_child("torch", model_dir, arch, side, env))
            log(f"startup run {r + 1}/{runs}: " + ", ".join(f"{k} {v[-1]['wall_s']:.2f} s" for k, v in results.items()))
    return [{"process": k, "model": model, "runs": len(v),
             **{f: float(np.median([x[f] for x in v])) for f in v[0] if f != "top_class"}}
            for k, v in results.items()]


def _importable(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------------------------------------------------
# Environment, tables, targets


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
    from . import __version__

    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
            "cpu": _cpu_model(), "cpus": os.cpu_count(), "threads": threads, "sgemm_gflops": gflops,
            "refvit": __version__, "python": platform.python_version(),
            **{m: _version(m) for m in ("numpy", "numba", "scipy", "torch", "transformers", "onnx", "onnxruntime")},
            **{v: os.environ.get(v) for v in THREAD_VARS}}
    if "numba" in sys.modules:
        info["numba_threads"] = sys.modules["numba"].get_num_threads()
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


def _x(v) -> str:
    return f"{v:.2f}x" if v else "-"


def format_rows(rows: list[dict]) -> str:
    """The plain table: model, batch, impl, ms/image, vs torch, vs ORT, vs best peer, floor %."""
    lines = [f"{'model':11s} {'batch':>5s} {'impl':13s} {'ms/image':>9s} {'vs torch':>9s} {'vs ORT':>8s} "
             f"{'vs best peer':>12s} {'floor %':>8s}"]
    for r in rows:
        lines.append(f"{r['model']:11s} {r['batch']:5d} {r['impl']:13s} {r['ms_per_image']:9.1f} "
                     f"{_x(r['vs_torch']):>9s} {_x(r['vs_ort']):>8s} {_x(r['vs_best_peer']):>12s} "
                     f"{r['floor_pct']:7.0f}%")
    bad = [f"{r['model']} batch {r['batch']} {r['impl']} ({r['max_abs_diff']:.2g})"
           for r in rows if r["logits_match"] is False]
    if bad:
        lines.append("logits differ from PyTorch's beyond 1e-4·max(1, max|ref|): " + ", ".join(bad))
    return "\n".join(lines)


def format_startup(rows: list[dict]) -> str:
    lines = [f"{'process (' + rows[0]['model'] + ')':28s} {'wall s':>7s} {'import s':>8s} {'load s':>7s} "
             f"{'forward s':>9s} {'peak RSS MiB':>12s} {'RSS after import':>16s}"]
    for r in rows:
        lines.append(f"{r['process']:28s} {r['wall_s']:7.2f} {r['import_s']:8.2f} {r['load_s']:7.2f} "
                     f"{r['forward_s']:9.2f} {r['peak_rss_mib']:12.0f} {r['rss_after_import_mib']:16.0f}")
    return "\n".join(lines)


def targets(result: dict) -> list[tuple[str, str, bool | None]]:
    """Issue #8's targets as (target, what was measured, met?) — None where this run did not measure it."""
    rows, out = result.get("rows", []), []
    by = {(r["model"], r["batch"], r["impl"]): r for r in rows}
    numba = [r for r in rows if r["impl"] == "refvit-numba"]
    vs_peer = [r for r in numba if r["vs_best_peer"]]
    if vs_peer:
        worst = max(vs_peer, key=lambda r: r["vs_best_peer"])
        out.append(("refvit-numba ≤ 0.9× the faster peer, every model and batch",
                    f"worst {worst['vs_best_peer']:.2f}× ({worst['model']} batch {worst['batch']}); "
                    f"{sum(r['vs_best_peer'] <= 0.9 for r in vs_peer)}/{len(vs_peer)} met",
                    all(r["vs_best_peer"] <= 0.9 for r in vs_peer)))
    floor = [r for r in numba if r["model"] in FLOOR_TARGET_MODELS and r["batch"] == 8]
    if floor:
        out.append(("≥ 75% of the compute floor, DeiT-B/ViT-B/BEiT-B at batch 8",
                    ", ".join(f"{r['model']} {r['floor_pct']:.0f}%" for r in floor),
                    all(r["floor_pct"] >= 75 for r in floor)))
    start = {r["process"]: r for r in result.get("startup", [])}
    for key, limit in (("refvit, Numba cache warm", 1.5), ("refvit, Numba cache cold", 15.0)):
        if key in start:
            wall = start[key]["wall_s"]
            target = f"time to first prediction, {key.split(', ')[1]} ≤ {limit} s"
            out.append((target, f"{wall:.2f} s", wall <= limit))
    peaks = [r["peak_rss_mib"] for k, r in start.items() if k.startswith("refvit")]
    if peaks:
        out.append(("peak RSS ≤ 200 MiB", f"{max(peaks):.0f} MiB", max(peaks) <= 200))
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
    """The benchmarks page's tables (README "Speed"): times, start-up, targets, environment."""
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
    numpy_blas = {r.get("numpy_blas_threads") for r in rows if r["impl"] == "refvit-numpy"} - {None}
    if numpy_blas:
        out.append("\n" + textwrap.fill(
            f"refvit numba: Numba's {env['threads']} threads, BLAS single-threaded; refvit numpy: numpy's BLAS on "
            f"{max(numpy_blas)} threads (the NumPy backend's only parallelism), timed in the same process.", WIDTH))
    if rows:
        out.append("\n| model | batch | GFLOPs | floor ms | refvit numba ms | refvit numpy ms | torch eager ms "
                   "| ORT ms | numba ÷ faster peer | numpy ÷ numba | floor % (numba) |\n" + "|---" * 11 + "|")
        for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
            nb, npy = by.get((model, batch, "refvit-numba")), by.get((model, batch, "refvit-numpy"))
            any_row = nb or npy or by.get((model, batch, "torch-eager"))
            out.append(f"| {model} | {batch} | {any_row['flops'] / 1e9:.2f} | {any_row['floor_ms']:.1f} | "
                       f"{_md_ms(nb)} | {_md_ms(npy)} | {_md_ms(by.get((model, batch, 'torch-eager')))} | "
                       f"{_md_ms(by.get((model, batch, 'onnxruntime')))} | {_x(nb and nb['vs_best_peer'])} | "
                       f"{_x(nb and npy and npy['ms_per_image'] / nb['ms_per_image'])} | {_pct(nb)} |")
    if result.get("startup"):
        out.append("\n" + textwrap.fill(f"Time to first prediction ({result['startup'][0]['model']}: fresh process, "
                                         "import, load the save_pretrained directory, one forward on one image), "
                                         f"median of {result['startup'][0]['runs']} runs:", WIDTH)
                   + "\n\n| process | wall s | import s | load s | forward s | "
                   "peak RSS MiB | RSS after import MiB |\n|---|---|---|---|---|---|---|")
        for r in result["startup"]:
            out.append(f"| {r['process']} | {r['wall_s']:.2f} | {r['import_s']:.2f} | {r['load_s']:.2f} | "
                       f"{r['forward_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['rss_after_import_mib']:.0f} |")
    checks = targets(result)
    if checks:
        out.append("\n| target (issue #8) | measured | met |\n|---|---|---|")
        out.extend(f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in checks)
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------------
# The command


# ----------------------------------------------------------------------------------------------------------------------
# Where the time goes: per-kernel wall time inside refvit's forward


def profile(models, batches, repeat: int = 7, backends=("numba",)) -> list[dict]:
    """Rows of {model, batch, impl, total_ms, kernels: [{name, ms, share, calls, gflops}], python_ms}: the fastest
    of `repeat` forwards after a warm-up, each kernel of the backend's namespace wrapped with a timer for the run
    (and restored after). "python" is the rest: model code between the kernels. `gflops` (linear only) counts
    2·rows·in·out per call. The numbers behind README → Speed → "Where the gaps are"."""
    from . import kernels
    from .model import from_state_dict

    rows = []
    for name in models:
        arch, config, side = model_config(name)
        tensors = synthetic.random_state_dict(synthetic.shapes_for(config, arch), seed=0)
        for backend in backends:
            model = from_state_dict(config, tensors, arch, "float32", backend)
            for batch in batches:
                x = synthetic.random_pixel_values(batch, 3, side, side, seed=1)
                model(x)                                    # warm-up: JIT compile, allocators, caches
                rows.append({"model": name, "batch": batch, "impl": f"refvit-{backend}",
                             **_profile_runs(kernels.get(backend), lambda: model(x), repeat)})
                log(f"{name} batch {batch} refvit-{backend}: {rows[-1]['total_ms']:.1f} ms profiled")
    return rows


def _profile_runs(namespace, forward, repeat: int) -> dict:
    originals = {k: v for k, v in vars(namespace).items() if callable(v)}
    seconds, calls, flops = {}, {}, {}

    def timed(name, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
            calls[name] = calls.get(name, 0) + 1
            if name == "linear":                            # x (..., in) @ weight (out, in)ᵀ
                flops[name] = flops.get(name, 0) + 2 * args[0].size * args[1].shape[0]
            return out
        return run

    best = None
    try:
        for name, fn in originals.items():
            setattr(namespace, name, timed(name, fn))
        for _ in range(max(1, repeat)):
            seconds.clear(), calls.clear(), flops.clear()
            t0 = time.perf_counter()
            forward()
            total = time.perf_counter() - t0
            if best is None or total < best[0]:
                best = (total, dict(seconds), dict(calls), dict(flops))
    finally:
        for name, fn in originals.items():
            setattr(namespace, name, fn)
    total, seconds, calls, flops = best
    kernels = [{"name": k, "ms": v * 1e3, "share": v / total, "calls": calls[k],
                "gflops": flops[k] / v / 1e9 if k in flops and v > 0 else None}
               for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])]
    return {"total_ms": total * 1e3, "kernels": kernels, "python_ms": (total - sum(seconds.values())) * 1e3}


def format_profile(rows: list[dict]) -> str:
    out = []
    for r in rows:
        out.append(f"{r['model']} batch {r['batch']} {r['impl']}: {r['total_ms']:.1f} ms (fastest profiled forward)")
        for k in r["kernels"]:
            rate = f"  {k['gflops']:.0f} GFLOP/s" if k["gflops"] else ""
            out.append(f"  {k['name']:24s} {k['ms']:8.1f} ms {100 * k['share']:5.1f}%  {k['calls']:4d} calls{rate}")
        out.append(f"  {'python (between kernels)':24s} {r['python_ms']:8.1f} ms "
                   f"{100 * r['python_ms'] / r['total_ms']:5.1f}%")
    return "\n".join(out)


def run_cli(args) -> int:
    """`refvit bench`: run (or, with --from-json, reload) a benchmark and print its table, JSON or markdown."""
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        models = {"all": list(MODELS), "none": []}.get(" ".join(args.models), args.models)
        unknown = sorted(set(models) - set(MODELS))
        if unknown:
            print(f"refvit bench: unknown model(s) {unknown}; available: {sorted(MODELS)} or all", file=sys.stderr)
            return 2
        if args.threads and os.environ.get(CHILD_VAR) != str(args.threads):
            # numpy's BLAS reads its thread count at import: rerun in a child process whose environment says it (this
            # process, and anything else of the user's, keeps its own settings)
            return subprocess.call([sys.executable, "-m", "refvit.cli", *_argv(args)], env=child_env(args.threads))
        if getattr(args, "profile", False):
            _set_threads(args.threads)
            result = {"environment": environment(args.threads, None, "refvit " + " ".join(_argv(args))),
                      "profile": profile(models, args.batch, args.repeat, args.backend)}
            print(json.dumps(result, indent=1) if args.json else format_profile(result["profile"]))
            return 0
        result = measure(models, args)
    if args.json:
        print(json.dumps(result, indent=1))
    elif args.markdown:
        print(markdown(result))
    else:
        env = result["environment"]
        print(f"{env['date']}  {env['cpu']}  threads {env['threads'] or 'default'}  "
              f"sgemm {env['sgemm_gflops']:.0f} GFLOP/s  numpy {env['numpy']}  numba {env['numba']}  "
              f"torch {env['torch']}  onnxruntime {env['onnxruntime']}")
        if result["rows"]:
            print(format_rows(result["rows"]))
        if result.get("startup"):
            print(format_startup(result["startup"]))
        for t, m, ok in targets(result):
            print(f"{'met   ' if ok else 'MISSED'} {t}: {m}")
    return 0


def measure(models, args) -> dict:
    """Everything one run reports: environment (with the sgemm rate), timing rows, start-up rows.

    The sgemm rate is sampled at the start and after each model, and the best sample is the floor's rate: on a
    machine whose load drifts, one sample taken at a busy moment would make every floor % look too good.
    """
    _set_threads(args.threads)
    samples, rows = [sgemm_gflops_at(args.threads)], []
    for name in models:
        rows += bench([name], args.batch, args.repeat, args.threads, args.backend, args.peers)
        samples.append(sgemm_gflops_at(args.threads, sizes=(2048,), repeat=3))
    log("sgemm GFLOP/s: " + ", ".join(f"{g:.0f}" for g in samples))
    env = {**environment(args.threads, max(samples), "refvit " + " ".join(_argv(args))), "sgemm_samples": samples}
    result = {"environment": env, "rows": add_ratios(rows, max(samples))}
    if args.startup:
        result["startup"] = startup(include_torch="torch-eager" in args.peers)
    return result


def _argv(args) -> list:
    """The bench command line again: for the thread-setting child, and recorded with the results."""
    argv = ["bench", "--models", *args.models, "--batch", *map(str, args.batch), "--backend", *args.backend,
            "--peers", *args.peers, "--repeat", str(args.repeat)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    return argv + [f for f in ("--json", "--markdown", "--startup", "--profile") if getattr(args, f[2:], False)]
