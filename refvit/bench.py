"""`refvit bench`: time refvit against PyTorch eager (when installed) on real-size models with seeded weights.

Same process, same weights, interleaved runs, median of `--repeat` runs after a warm-up, per-image milliseconds.
torch and transformers are imported only here, only when installed; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from . import synthetic
from .model import from_state_dict

LABELS = {str(i): f"class_{i}" for i in range(1000)}


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


def model_config(name: str) -> tuple[str, dict, int]:
    """(architecture, config dict as config.json holds it, input side) of a benchmark model."""
    arch, side, config = MODELS[name]
    return arch, {**config, "id2label": LABELS, "architectures": [arch]}, side


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


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def bench(models, batches, repeat: int = 7, threads: int | None = None, backends=("numba",)) -> list[dict]:
    """Rows of {model, batch, impl, ms_per_image}; implementations interleaved run by run."""
    torch = None
    try:
        import torch
        if threads:
            torch.set_num_threads(threads)
    except ImportError:
        pass
    if threads:
        import numba
        numba.set_num_threads(threads)
    rows = []
    for name in models:
        arch, config, side = model_config(name)
        shapes = synthetic.shapes_for(config, arch)
        tensors = synthetic.random_state_dict(shapes, seed=0)
        impls = {f"refvit-{b}": from_state_dict(config, tensors, arch, "float32", b) for b in backends}
        tm = torch_model(arch, config, tensors)
        for batch in batches:
            x = synthetic.random_pixel_values(batch, 3, side, side, seed=1)
            calls = {k: (lambda m=m: m(x)) for k, m in impls.items()}
            if tm is not None:
                tx = torch.from_numpy(x)

                def run_torch(tx=tx):
                    with torch.inference_mode():
                        tm(pixel_values=tx)
                calls["torch-eager"] = run_torch
            for fn in calls.values():  # warm-up (JIT compile, allocator)
                fn()
            timings = {k: [] for k in calls}
            for _ in range(repeat):  # interleaved: drifting machine load hits every implementation alike
                for k, fn in calls.items():
                    timings[k].append(median_ms(fn, 1))
            for k, ts in timings.items():
                rows.append({"model": name, "batch": batch, "impl": k, "ms_per_image": float(np.median(ts)) / batch})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'model':12s} {'batch':>5s} {'impl':14s} {'ms/image':>9s} {'vs torch':>9s}"]
    ref = {(r["model"], r["batch"]): r["ms_per_image"] for r in rows if r["impl"] == "torch-eager"}
    for r in rows:
        t = ref.get((r["model"], r["batch"]))
        ratio = f"{r['ms_per_image'] / t:8.2f}x" if t else "        -"
        lines.append(f"{r['model']:12s} {r['batch']:5d} {r['impl']:14s} {r['ms_per_image']:9.1f} {ratio}")
    return "\n".join(lines)


def environment(threads: int | None) -> dict:
    import platform

    info = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(), "threads": threads}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info
