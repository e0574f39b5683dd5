"""Where the time goes (`refvit bench --profile`): per-kernel wall time inside refvit's forward, measured on the
profiled model's own copy of its kernel namespace."""

from __future__ import annotations

import time
from types import SimpleNamespace

from .. import kernels, synthetic
from ..model import from_state_dict
from . import workers
from .zoo import model_config


def profile(models, batches, repeat: int = 7, backends=("numba",)) -> list[dict]:
    """Rows of {model, batch, impl, total_ms, kernels: [{name, ms, share, calls, gflops}], python_ms}: the fastest
    of `repeat` forwards after a warm-up, the model built for the profile given its own copy of the backend's
    kernels, each wrapped with a timer (the shared `refvit.kernels` namespaces and every other model keep theirs).
    "python" is the rest: model code between the kernels. `gflops` (linear only) counts 2·rows·in·out per call.
    The numbers behind docs/speed.md, "Where the time goes"."""
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
                workers.log(f"{name} batch {batch} refvit-{backend}: {rows[-1]['total_ms']:.1f} ms profiled")
    return rows


def set_model_kernels(model, namespace) -> None:
    """Give one model instance its own kernel namespace (`model.kernels`; no other model sees it)."""
    model.kernels = namespace


def model_kernels(model):
    return model.kernels


def _attention_block_flops(args):
    """The fused attention block: q/k/v and output projections, Q·Kᵀ and A·V (x (B, N, C), qkv weight args[4])."""
    x, qkv_weight = args[0], args[4]
    B, N, C = x.shape
    return 2 * x.size * (qkv_weight.shape[0] + C) + 4 * B * N * N * C


# kernel -> FLOPs of one call (its GEMMs) from its arguments
GEMM_FLOPS = {
    "linear": lambda args: 2 * args[0].size * args[1].shape[0],                 # x (..., in) @ weight (out, in)ᵀ
    "attention_block": _attention_block_flops,
    "mlp_block": lambda args: 4 * args[0].size * args[4].shape[0],             # x (B, N, C), fc1 weight (I, C)
}


def _profile_runs(model, namespace, forward, repeat: int) -> dict:
    seconds, calls, flops = {}, {}, {}

    def timed(name, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
            calls[name] = calls.get(name, 0) + 1
            if name in GEMM_FLOPS:
                flops[name] = flops.get(name, 0) + GEMM_FLOPS[name](args)
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
