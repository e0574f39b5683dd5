"""`refvit bench`: refvit (both backends) against PyTorch eager and ONNX Runtime on real-size seeded models.

What it measures (issues #8, #13, #15):
- per-image forward time: every implementation alone in a fresh process (`worker_main`), on the same saved model
  (config.json + model.safetensors written once; its ONNX export for ONNX Runtime), the same saved input and the
  same thread count; `repeat` rounds with the order rotated each round; the median over all timed runs. Thread
  pools of different libraries never share a process (in one process their spinning workers stole each other's
  cores, which made PyTorch look 4-10x slower than it is);
- refvit's Numba backend twice: in a default process (no thread variable set: what a user runs) and tuned
  (OPENBLAS_NUM_THREADS=1 set before start);
- the ratio of each implementation to each peer and to the fastest peer, all from one run;
- % of the compute floor: the model's FLOPs (counted from its config, see `count_flops`) divided by the sgemm rate
  this machine reaches in numpy at the run's thread count (`sgemm_gflops`), over the measured time;
- time to first prediction and peak RSS of a fresh process (`startup`), with the Numba cache warm and cold;
- with --profile, per-kernel wall time inside refvit's forward (`profile`), on that model's own kernel namespace.
torch, transformers, onnx and onnxruntime are optional: a peer whose packages are missing is reported as skipped;
they are imported only in the worker processes; nothing is downloaded.
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
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
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


def _cvt_flops(cfg, side: int) -> int:
    """CvtEmbeddings conv per stage + CvtLayer: depthwise conv projections, linear q/k/v, attention, out, MLP. The
    token grids are the model's own (`cvt.stage_grids`, `cvt.projected_size`)."""
    from .models import cvt

    total, c_in = 0, cfg.num_channels
    for s, (h, w) in enumerate(cvt.stage_grids(cfg, side, side)):
        C, k = cfg.embed_dim[s], cfg.patch_sizes[s]
        total += 2 * h * w * C * c_in * k * k
        method, kq, cls = cfg.qkv_projection_method[s], cfg.kernel_qkv[s], int(cfg.cls_token[s])
        hk, wk = (cvt.projected_size(method, n, kq, cfg.stride_kv[s], cfg.padding_kv[s]) for n in (h, w))
        depthwise = 2 * (h * w + 2 * hk * wk) * C * kq * kq if method == "dw_bn" else 0   # the query keeps the grid
        nq, nk, N = h * w + cls, hk * wk + cls, h * w + cls
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


def sgemm_gflops_at(threads: int | None, sizes=(1024, 2048, 3072), repeat: int = 5) -> float:
    """`sgemm_gflops` with numpy's OpenBLAS at `threads` threads (a fresh process: OpenBLAS reads it at import)."""
    env = {**_base_env(), **({k: str(threads) for k in THREAD_VARS} if threads else {})}
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
# One fresh process per implementation and round: the saved model, the saved input, the same thread count

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
    absent = [m for m in needs if not _importable(m)]
    return f"not installed: {', '.join(absent)}" if absent else None


def _base_env() -> dict:
    """This process's environment without any thread variable (a default process), the child importing this very
    refvit."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    return env


def impl_env(impl: str, threads: int | None) -> dict:
    """The environment `impl` starts in. The default-process row sets nothing (its thread count goes through
    numba.set_num_threads in the process, as a user's code would); the others are set to N threads before start."""
    env = _base_env()
    if impl == "refvit-numba-tuned":
        env["OPENBLAS_NUM_THREADS"] = "1"
        if threads:
            env["NUMBA_NUM_THREADS"] = str(threads)
    elif impl != "refvit-numba" and threads:
        env.update({v: str(threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    return env


def write_model(directory: Path, name: str) -> tuple[str, dict, int]:
    """The seeded real-shape model as save_pretrained writes it (config.json + model.safetensors), once per model
    for every implementation. Returns (architecture, config, side)."""
    from .checkpoint import write_safetensors

    arch, config, side = model_config(name)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    write_safetensors(directory / "model.safetensors", synthetic.random_state_dict(synthetic.shapes_for(config, arch),
                                                                                   seed=0), {"format": "pt"})
    return arch, config, side


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
    from .checkpoint import write_safetensors

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_text(json.dumps(config))
        write_safetensors(Path(tmp, "model.safetensors"), tensors)
        kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
        return getattr(transformers, arch).from_pretrained(tmp, **kw).eval()


def _load_impl(spec: dict):
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
    run = _load_impl(spec)
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


def _worker(spec: dict, env: dict) -> dict:
    code = "import sys; from refvit.bench import worker_main; worker_main(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{spec['impl']} process failed: " + (done.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(models, batches, repeat: int = 3, threads: int | None = None, backends=("numba", "numpy"),
          peers=PEERS, skipped: list | None = None) -> list[dict]:
    """Rows of {model, batch, impl, ms_per_image, times_ms, max_abs_diff, ...}: every implementation alone in a
    fresh process, `repeat` rounds, the order rotated each round; the median of every timed run per image.

    `max_abs_diff` is max |logits − PyTorch eager's logits| on the timed input (None without torch), `logits_match`
    whether it is within the golden float32 tolerance 1e-4·max(1, max|torch|). A peer that is not installed or
    fails is appended to `skipped` as {impl, reason} and has no row; a refvit process that fails raises.
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
            impls = []
            for impl in impls_for(backends, peers):
                reason = missing_peer(impl)
                if reason:
                    skipped.append({"model": name, "impl": impl, "reason": reason})
                else:
                    impls.append(impl)
            if "onnxruntime" in impls:
                t0 = time.perf_counter()
                try:
                    _worker({"impl": "export", "arch": arch, "model_dir": str(tmp / "model"), "side": side,
                             "onnx": str(tmp / "model.onnx")}, _base_env())
                    log(f"{name}: exported to ONNX in {time.perf_counter() - t0:.1f} s")
                except RuntimeError as e:
                    skipped.append({"model": name, "impl": "onnxruntime", "reason": f"ONNX export failed: {e}"})
                    impls.remove("onnxruntime")
            times = {(impl, b): [] for impl in impls for b in batches}
            for r in range(repeat if impls else 0):
                for impl in impls[r % len(impls):] + impls[:r % len(impls)]:   # rotated: no fixed neighbour
                    spec = {"impl": impl, "arch": arch, "model_dir": str(tmp / "model"),
                            "onnx": str(tmp / "model.onnx"), "batches": list(batches), "inputs": inputs,
                            "runs": RUNS_PER_PROCESS, "threads": threads,
                            "logits": str(tmp / f"logits-{impl}-{{batch}}.npy") if r == 0 else None}
                    try:
                        out = _worker(spec, impl_env(impl, threads))
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
            flops = count_flops(config, arch, side)
            for batch in batches:
                ref_path = tmp / f"logits-torch-eager-{batch}.npy"
                reference = np.load(ref_path) if ref_path.exists() else None
                for impl in impls:
                    diff = tolerance = None
                    out_path = tmp / f"logits-{impl}-{batch}.npy"
                    if reference is not None and out_path.exists():
                        diff = float(np.abs(np.load(out_path) - reference).max())
                        tolerance = 1e-4 * max(1.0, float(np.abs(reference).max()))
                    rows.append({"model": name, "batch": batch, "impl": impl, "flops": flops,
                                 "ms_per_image": float(np.median(times[impl, batch])) * 1e3 / batch,
                                 "times_ms": [round(t * 1e3, 3) for t in times[impl, batch]], "max_abs_diff": diff,
                                 "logits_match": None if diff is None else diff <= tolerance})
                log(f"{name} batch {batch}: " + ", ".join(f"{r['impl']} {r['ms_per_image']:.1f}"
                                                          for r in rows if r["model"] == name and r["batch"] == batch))
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
predicted_at = time.time()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "forward_s": t3 - t2, "in_process_s": t3 - t0,
                  "predicted_at": predicted_at,
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
    launched, t0 = time.time(), time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, model_dir, arch], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"refvit bench --startup: the {kind} process failed:\n{done.stderr[-2000:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    # launch -> prediction on the wall clock both processes share: the interpreter's start included, its shutdown
    # (garbage collection over Numba's objects, ~0.25 s) not, as a user sees the answer before the process exits
    return {**child, "to_prediction_s": child.pop("predicted_at") - launched, "wall_s": wall}


def startup(runs: int = 3, include_torch: bool = True, model: str = STARTUP_MODEL) -> list[dict]:
    """Rows of {process, to_prediction_s (from launch to the prediction), wall_s (from launch to exit), import_s,
    load_s, forward_s, peak_rss_mib …}, median of `runs`.

    "refvit, Numba cache cold": NUMBA_CACHE_DIR is a new empty directory; "warm": the same directory again after
    that run filled it. Each run of each kind is a fresh interpreter; the kinds are interleaved run by run.
    """
    arch, config, side = model_config(model)
    tensors = synthetic.random_state_dict(synthetic.shapes_for(config, arch), seed=0)
    has_torch = include_torch and _importable("torch") and _importable("transformers")
    env = _base_env()                                       # a default process: no thread variable set
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
    return info


def _x(v) -> str:
    return f"{v:.2f}x" if v else "-"


def format_rows(rows: list[dict]) -> str:
    """The plain table: model, batch, impl, ms/image, vs torch, vs ORT, vs best peer, floor %."""
    lines = [f"{'model':11s} {'batch':>5s} {'impl':18s} {'ms/image':>9s} {'vs torch':>9s} {'vs ORT':>8s} "
             f"{'vs best peer':>12s} {'floor %':>8s}"]
    for r in rows:
        lines.append(f"{r['model']:11s} {r['batch']:5d} {r['impl']:18s} {r['ms_per_image']:9.1f} "
                     f"{_x(r['vs_torch']):>9s} {_x(r['vs_ort']):>8s} {_x(r['vs_best_peer']):>12s} "
                     f"{r['floor_pct']:7.0f}%")
    bad = [f"{r['model']} batch {r['batch']} {r['impl']} ({r['max_abs_diff']:.2g})"
           for r in rows if r["logits_match"] is False]
    if bad:
        lines.append("logits differ from PyTorch's beyond 1e-4·max(1, max|ref|): " + ", ".join(bad))
    return "\n".join(lines)


def format_skipped(skipped: list[dict]) -> str:
    return "\n".join(f"skipped {s['impl']} ({s['model']}): {s['reason']}" for s in skipped)


def format_startup(rows: list[dict]) -> str:
    lines = [f"{'process (' + rows[0]['model'] + ')':28s} {'to prediction s':>15s} {'wall s':>7s} {'import s':>8s} "
             f"{'load s':>7s} {'forward s':>9s} {'peak RSS MiB':>12s} {'RSS after import':>16s}"]
    for r in rows:
        lines.append(f"{r['process']:28s} {_to_prediction(r):15.2f} {r['wall_s']:7.2f} {r['import_s']:8.2f} "
                     f"{r['load_s']:7.2f} {r['forward_s']:9.2f} {r['peak_rss_mib']:12.0f} "
                     f"{r['rss_after_import_mib']:16.0f}")
    return "\n".join(lines)


def _to_prediction(row) -> float:
    """Launch to prediction; a result saved before that was measured has only launch to exit."""
    return row.get("to_prediction_s", row["wall_s"])


def targets(result: dict) -> list[tuple[str, str, bool | None]]:
    """Issue #8's targets as (target, what was measured, met?) — None where this run did not measure it."""
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
    for key, limit in (("refvit, Numba cache warm", 1.0), ("refvit, Numba cache cold", 15.0)):
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
        out.append("\n| target (issues #13, #15) | measured | met |\n|---|---|---|")
        out.extend(f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in checks)
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------------
# The command


# ----------------------------------------------------------------------------------------------------------------------
# Where the time goes: per-kernel wall time inside refvit's forward


def profile(models, batches, repeat: int = 7, backends=("numba",)) -> list[dict]:
    """Rows of {model, batch, impl, total_ms, kernels: [{name, ms, share, calls, gflops}], python_ms}: the fastest
    of `repeat` forwards after a warm-up, the model built for the profile given its own copy of the backend's
    kernels, each wrapped with a timer (the shared `refvit.kernels` namespaces and every other model keep theirs).
    "python" is the rest: model code between the kernels. `gflops` (linear only) counts 2·rows·in·out per call.
    The numbers behind README → Speed → "Where the gaps are"."""
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
                             **_profile_runs(model, kernels.get(backend), lambda: model(x), repeat)})
                log(f"{name} batch {batch} refvit-{backend}: {rows[-1]['total_ms']:.1f} ms profiled")
    return rows


def set_model_kernels(model, namespace) -> None:
    """Give one model instance its own kernel namespace (`model.kernels`; no other model sees it)."""
    model.kernels = namespace


def model_kernels(model):
    return model.kernels


def _profile_runs(model, namespace, forward, repeat: int) -> dict:
    from types import SimpleNamespace

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

    best, original = None, model_kernels(model)
    set_model_kernels(model, SimpleNamespace(**{k: timed(k, v) if callable(v) else v
                                                for k, v in vars(namespace).items()}))
    try:
        for _ in range(max(1, repeat)):
            seconds.clear(), calls.clear(), flops.clear()
            t0 = time.perf_counter()
            forward()
            total = time.perf_counter() - t0
            if best is None or total < best[0]:
                best = (total, dict(seconds), dict(calls), dict(flops))
    finally:
        set_model_kernels(model, original)
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
        result = load_result(args.from_json)
    else:
        models = {"all": list(MODELS), "none": []}.get(" ".join(args.models), args.models)
        unknown = sorted(set(models) - set(MODELS))
        if unknown:
            print(f"refvit bench: unknown model(s) {unknown}; available: {sorted(MODELS)} or all", file=sys.stderr)
            return 2
        if getattr(args, "profile", False):
            if args.threads:                                # in this process: Numba's pool, not an environment
                import numba
                numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
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
        if result.get("skipped"):
            print(format_skipped(result["skipped"]))
        if result.get("startup"):
            print(format_startup(result["startup"]))
        for t, m, ok in targets(result):
            print(f"{'met   ' if ok else 'MISSED'} {t}: {m}")
    return 0


def load_result(path) -> dict:
    """A result saved with `refvit bench --json`, checked enough that printing it cannot fail half-way."""
    from .errors import InputError

    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not JSON ({e}): pass a file written by `refvit bench --json`") from None
    env = result.get("environment") if isinstance(result, dict) else None
    if not isinstance(env, dict) or not isinstance(result.get("rows", []), list) or not all(
            k in env for k in ("date", "cpu", "threads", "sgemm_gflops", "numpy", "numba", "torch", "onnxruntime")):
        raise InputError(f"{path} is not a `refvit bench --json` result (no environment/rows): pass a file written "
                         "by `refvit bench --json`")
    return result


def measure(models, args) -> dict:
    """Everything one run reports: environment (with the sgemm rate), timing rows, skipped peers, start-up rows.

    The sgemm rate is sampled (in a separate process) at the start and after each model, and the best sample is the
    floor's rate: on a machine whose load drifts, one sample taken at a busy moment would make every floor % look
    too good.
    """
    samples, rows, skipped = [sgemm_gflops_at(args.threads)], [], []
    for name in models:
        rows += bench([name], args.batch, args.repeat, args.threads, args.backend, args.peers, skipped)
        samples.append(sgemm_gflops_at(args.threads, sizes=(2048,), repeat=3))
    log("sgemm GFLOP/s: " + ", ".join(f"{g:.0f}" for g in samples))
    env = {**environment(args.threads, max(samples), "refvit " + " ".join(_argv(args))), "sgemm_samples": samples}
    result = {"environment": env, "rows": add_ratios(rows, max(samples)),
              "skipped": list({(s["impl"], s["reason"]): s for s in skipped}.values())}
    if args.startup:
        result["startup"] = startup(include_torch="torch-eager" in args.peers)
    return result


def _argv(args) -> list:
    """The bench command line again, recorded with the results."""
    argv = ["bench", "--models", *args.models, "--batch", *map(str, args.batch), "--backend", *args.backend,
            "--peers", *args.peers, "--repeat", str(args.repeat)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    return argv + [f for f in ("--json", "--markdown", "--startup", "--profile") if getattr(args, f[2:], False)]
