"""`refvit bench`: the parser; the work is refvit/bench/."""

from __future__ import annotations


from .common import BACKENDS, at_least


def cmd_bench(args) -> int:
    from ..bench import run_cli

    return run_cli(args)


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="time refvit (both backends; the Numba one as a default and as a tuned process) "
                       "against PyTorch eager and ONNX Runtime (when installed) on real-size seeded models, each "
                       "implementation alone in a fresh process; %% of the compute floor; time to first prediction")
    p.add_argument("--models", nargs="*", default=["deit-small"], help="deit-tiny deit-small deit-base vit-base "
                   "beit-base cvt-13 cvt-21 bit-50, or all (default: deit-small; none: no timing, e.g. with --startup)")
    p.add_argument("--batch", nargs="+", type=at_least(1), default=[1], help="batch sizes, e.g. 1 8 (default 1)")
    p.add_argument("--backend", nargs="+", choices=BACKENDS, default=BACKENDS,
                   help="refvit backends to time (numba: a default process and one with OPENBLAS_NUM_THREADS=1)")
    p.add_argument("--peers", nargs="*", choices=["torch-eager", "torch-eager-attn", "onnxruntime"],
                   default=["torch-eager", "torch-eager-attn", "onnxruntime"],
                   help="peers to time; one not installed is reported as skipped (torch-eager: transformers' default "
                   "sdpa attention; torch-eager-attn: attn_implementation='eager'; onnxruntime: the transformers "
                   "model exported to ONNX)")
    p.add_argument("--repeat", type=at_least(1), default=3, help="rounds: each round starts every implementation in a "
                   "fresh process (order rotated each round) that runs one warm-up and 3 timed forwards per batch; "
                   "the median per image over all rounds is reported (default 3; with --profile: forwards, the "
                   "fastest is shown)")
    p.add_argument("--threads", type=at_least(1), help="threads for every implementation: numba.set_num_threads(N) in "
                   "refvit's default process, NUMBA_NUM_THREADS=N with OPENBLAS_NUM_THREADS=1 in the tuned one, "
                   "numpy's BLAS at N for the NumPy backend, torch.set_num_threads(N), N ONNX Runtime intra-op "
                   "threads; the sgemm rate with OpenBLAS at N (default: each library's default)")
    p.add_argument("--startup", action="store_true", help="also time a fresh process's import + load of DeiT-S + one "
                   "forward and its peak RSS, refvit with the Numba cache warm and cold, and torch + transformers "
                   "(the median of --repeat fresh processes of each)")
    p.add_argument("--profile", action="store_true", help="instead of timing against the peers: per-kernel wall time "
                   "inside refvit's forward in this process (fastest of --repeat forwards), for each model, batch "
                   "and --backend")
    p.add_argument("--json", action="store_true", help="print the results (rows, start-up, environment) as JSON")
    p.add_argument("--markdown", action="store_true", help="print the benchmarks page's tables (docs/speed.md)")
    p.add_argument("--from-json", metavar="FILE", help="print the table/markdown of a saved --json result (runs "
                   "nothing)")
    p.set_defaults(func=cmd_bench)
