"""Time to first prediction and peak memory of a fresh process (`refvit bench --startup`): first_prediction.py run
in new interpreters, with the Numba cache cold and warm, and PyTorch's for comparison."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import synthetic
from . import workers
from .zoo import model_config

STARTUP_MODEL = "deit-small"
CHILD = Path(__file__).resolve().parent / "first_prediction.py"


def _run_child(kind: str, model_dir: str, arch: str, side: int, env: dict) -> dict:
    """first_prediction.py in a fresh interpreter (-P: its folder is not put on sys.path); its row."""
    launched, t0 = time.time(), time.perf_counter()
    done = subprocess.run([sys.executable, "-P", str(CHILD), kind, model_dir, arch, str(side)], env=env,
                          capture_output=True, text=True)
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
    has_torch = include_torch and workers.importable("torch") and workers.importable("transformers")
    env = workers.base_env()                                # a default process: no thread variable set
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as model_dir:
        from ..checkpoint import write_safetensors
        Path(model_dir, "config.json").write_text(json.dumps(config))
        write_safetensors(Path(model_dir, "model.safetensors"), tensors, {"format": "pt"})
        for r in range(runs):
            with tempfile.TemporaryDirectory() as cache:
                cached = {**env, "NUMBA_CACHE_DIR": cache}
                for process in ("refvit, Numba cache cold", "refvit, Numba cache warm"):   # warm: the cache cold filled
                    results.setdefault(process, []).append(_run_child("refvit", model_dir, arch, side, cached))
            if has_torch:
                results.setdefault("torch + transformers", []).append(_run_child("torch", model_dir, arch, side, env))
            workers.log(f"startup run {r + 1}/{runs}: "
                        + ", ".join(f"{k} {v[-1]['wall_s']:.2f} s" for k, v in results.items()))
    return [{"process": k, "model": model, "runs": len(v),
             **{f: float(np.median([x[f] for x in v])) for f in v[0] if f != "top_class"}}
            for k, v in results.items()]
