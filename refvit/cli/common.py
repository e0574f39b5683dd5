"""What every `refvit` subcommand shares: the parser class, argument types that check a value before any work, the
option groups several subcommands take, and JSON output."""

from __future__ import annotations

import argparse
import json
import os
import sys


def print_json(obj, **kwargs) -> None:
    """JSON on stdout as UTF-8 whatever the locale (Δ stays Δ, not \\u0394)."""
    text = json.dumps(obj, indent=1, ensure_ascii=False, **kwargs) + "\n"
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8"))
    buffer.flush()


MODEL_DIR_HELP = ("a save_pretrained directory (config.json + model.safetensors or pytorch_model.bin), or a hub id "
                  "(org/name: the Hugging Face cache, then a download with huggingface_hub)")
DTYPES, BACKENDS = ["float32", "float64"], ["numba", "numpy"]


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line that names the option and points at --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def at_least(minimum: int):
    """An argparse type: an integer >= minimum, or a usage error that says so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def out_path(text: str) -> str:
    """An argparse type for a file refvit writes: its folder must exist and be writable (checked before any work)."""
    folder = os.path.dirname(text) or "."
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder: name a file in it")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the folder {folder} does not exist: create it, or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {folder}: choose a folder you can write to")
    return text


out_path.__name__ = "output path"


def out_target(text: str) -> str:
    """--out of `trace`: a file, or an existing writable folder (a --sizes sweep writes one file per size in it)."""
    if os.path.isdir(text):
        if not os.access(text, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"cannot write in {text}: choose a folder you can write to")
        return text
    return out_path(text)


out_target.__name__ = "output path"


def model_options(p, model_help: str = MODEL_DIR_HELP) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR", help=model_help)
    p.add_argument("--revision", help="MODEL_DIR may be a hub id (org/name: the Hugging Face cache, then a download "
                   "with huggingface_hub); its branch, tag or commit sha (default main)")


def run_options(p) -> None:
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (default float32)")
    p.add_argument("--backend", choices=BACKENDS, default="numba", help="numba: the fast kernels; numpy: their "
                   "readable twins (default numba)")


def scaling_options(p) -> None:
    p.add_argument("--batch-size", type=at_least(1), default=16, metavar="B", help="images per task and per append to "
                   "--out (default 16); each image still gets its own forward, so results are bit-identical whatever "
                   "this is")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=at_least(0), metavar="N", help="run on a Dask LocalCluster of N worker "
                       "processes (refvit[dask]); each gets cores // N Numba threads; 0, 1 or no Dask: in-process")
    where.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster, e.g. tcp://host:8786")
    p.add_argument("--resume", action="store_true", help="continue the run whose results are in --out: only images "
                   "missing there are computed")


def emulation_options(p) -> None:
    """How a reduced format is emulated: `trace --precision` and `precision --format` take the same options."""
    p.add_argument("--accumulate", choices=["fp32", "fp16", "bf16"], default="fp32", help="where GEMM/conv "
                   "products accumulate under bf16/fp16 (default fp32; or the format itself)")
    p.add_argument("--strict", action="store_true", help="LayerNorm/GroupNorm/softmax/GELU internals in the format "
                   "too (default: float32 internals, output rounded, the common mixed-precision convention)")
    p.add_argument("--per-channel", action="store_true", help="int8-dynamic: int8 weights per output channel "
                   "(default per tensor, quantize_dynamic's default)")
