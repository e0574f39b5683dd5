"""`refvit bench`: run (or reload) a benchmark and print it: `run_cli(args)` with the parsed command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError
from . import workers
from .profiling import format_profile, profile
from .report import environment, format_rows, format_skipped, format_startup, markdown, targets
from .startup import startup
from .workers import add_ratios, bench, log
from .zoo import MODELS


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
    samples, rows, skipped = [workers.sgemm_gflops_at(args.threads)], [], []
    for name in models:
        rows += bench([name], args.batch, args.repeat, args.threads, args.backend, args.peers, skipped)
        samples.append(workers.sgemm_gflops_at(args.threads, sizes=(2048,), repeat=3))
    log("sgemm GFLOP/s: " + ", ".join(f"{g:.0f}" for g in samples))
    env = {**environment(args.threads, max(samples), "refvit " + " ".join(_argv(args))), "sgemm_samples": samples}
    result = {"environment": env, "rows": add_ratios(rows, max(samples)),
              "skipped": list({(s["impl"], s["reason"]): s for s in skipped}.values())}
    if args.startup:
        result["startup"] = startup(runs=args.repeat, include_torch="torch-eager" in args.peers)
    return result


def _argv(args) -> list:
    """The bench command line again, recorded with the results."""
    argv = ["bench", "--models", *args.models, "--batch", *map(str, args.batch), "--backend", *args.backend,
            "--peers", *args.peers, "--repeat", str(args.repeat)]
    argv += ["--threads", str(args.threads)] if args.threads else []
    return argv + [f for f in ("--json", "--markdown", "--startup", "--profile") if getattr(args, f[2:], False)]
