"""`refvit bench`: refvit (both backends) against PyTorch eager and ONNX Runtime on real-size seeded models.

What it measures:
- per-image forward time: every implementation alone in a fresh process (workers.py `worker_main`), on the same saved
  model (config.json + model.safetensors written once; its ONNX export for ONNX Runtime), the same saved input and
  the same thread count; `repeat` rounds with the order rotated each round; the median over all timed runs. Thread
  pools of different libraries never share a process (in one process their spinning workers steal each other's
  cores);
- refvit's Numba backend twice: in a default process (no thread variable set: what a user runs) and tuned
  (OPENBLAS_NUM_THREADS=1 set before start);
- the ratio of each implementation to each peer and to the fastest peer, all from one run;
- % of the compute floor: the model's FLOPs (counted on the model itself, zoo.py `count_flops`) divided by the
  sgemm rate this machine reaches in numpy at the run's thread count (`sgemm_gflops`), over the measured time;
- time to first prediction and peak RSS of a fresh process (startup.py), with the Numba cache warm and cold;
- with --profile, per-kernel wall time inside refvit's forward (profiling.py), on that model's own kernel namespace.
torch, transformers, onnx and onnxruntime are optional: a peer whose packages are missing is reported as skipped;
they are imported only in the worker processes; nothing is downloaded.

The package: zoo.py (the models and their FLOPs), workers.py (the timed processes), startup.py (+ the script
first_prediction.py), profiling.py, report.py (tables, targets, markdown), command.py (`run_cli`).
"""

from .command import load_result, measure, run_cli
from .profiling import format_profile, model_kernels, profile, set_model_kernels
from .report import environment, format_rows, format_skipped, format_startup, markdown, targets
from .startup import STARTUP_MODEL, startup
from .workers import (IMPLS, PEERS, RUNS_PER_PROCESS, THREAD_VARS, add_ratios, bench, impl_env, impls_for,
                      missing_peer, sgemm_gflops, sgemm_gflops_at, torch_model, worker_main)
from .zoo import FLOOR_TARGET_MODELS, LABELS, MODELS, count_flops, model_config, write_model

__all__ = ["FLOOR_TARGET_MODELS", "IMPLS", "LABELS", "MODELS", "PEERS", "RUNS_PER_PROCESS", "STARTUP_MODEL",
           "THREAD_VARS", "add_ratios", "bench", "count_flops", "environment", "format_profile", "format_rows",
           "format_skipped", "format_startup", "impl_env", "impls_for", "load_result", "markdown", "measure",
           "missing_peer", "model_config", "model_kernels", "profile", "run_cli", "set_model_kernels", "sgemm_gflops",
           "sgemm_gflops_at", "startup", "targets", "torch_model", "worker_main", "write_model"]
