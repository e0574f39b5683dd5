"""The `refvit` command. One module per subcommand (or pair of close ones) holds its `cmd_*` function beside the
`add_*_parser` that declares its options; common.py holds what they share. `build_parser` puts them together in
--help's order and `main` runs one through refvit/exits.py's exit codes."""

from __future__ import annotations

import argparse
import sys

from .bench import add_bench_parser
from .classify import add_classify_parser, add_evaluate_parser
from .common import Parser
from .inspect import add_inspect_parser
from .parity import add_capture_parser, add_compare_parser, add_trace_parser
from .precision import add_precision_parser
from .segment import add_segment_parser, label_palette
from .verify import add_verify_parser

__all__ = ["build_parser", "main", "label_palette"]

# in --help's order
SUBCOMMANDS = [add_verify_parser, add_classify_parser, add_evaluate_parser, add_segment_parser, add_bench_parser,
               add_inspect_parser, add_trace_parser, add_capture_parser, add_compare_parser, add_precision_parser]
def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(prog="refvit", description="NumPy/Numba reference forward passes of ViT, DeiT, BEiT, CvT and "
                    "BiT, checked against Hugging Face transformers. Exit codes: 0 passed, 1 a check failed, 2 "
                    "unusable input, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"refvit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of these; "
                                "`refvit COMMAND --help` shows its options")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    """The `refvit` command: its exit code (refvit/exits.py: 0 ok, 1 failed check, 2 bad input, 130 Ctrl-C)."""
    from .. import exits

    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    return exits.run(f"refvit {command}".strip(), lambda: _dispatch(argv))


def _dispatch(argv) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.func(args)


