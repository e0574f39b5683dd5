"""`refvit verify`: every golden case, the parity table a row at a time, a progress bar."""

from __future__ import annotations

import sys
import time

from .. import exits
from .common import BACKENDS, DTYPES


class ProgressBar:
    """verify's progress on a terminal (stderr): a bar, the run under way and an ETA, redrawn in place; rows printed
    to stdout in between clear it first. Off when stderr is not a terminal or with --quiet."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled, self.t0, self.text = total, 0, enabled, time.perf_counter(), ""

    def show(self, what: str) -> None:
        self.text = what
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        filled = int(20 * self.done / max(self.total, 1))
        elapsed = time.perf_counter() - self.t0
        eta = (f"ETA {_duration(elapsed / self.done * (self.total - self.done))}" if self.done else "ETA …")
        line = f"[{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} {self.text}  {eta}"
        sys.stderr.write("\r\033[K" + line[:119])
        sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def print(self, lines) -> None:
        """Print finished rows to stdout (the bar cleared first, redrawn after)."""
        self.clear()
        print("\n".join(lines) if isinstance(lines, list) else lines, flush=True)
        self._draw()


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s" if seconds >= 60 else f"{seconds:.0f}s"


def cmd_verify(args) -> int:
    from ..verify import (Table, Worker, find_golden_dir, format_digits_table, is_real_size, list_cases,
                         list_digit_models, list_processing_cases)

    golden = find_golden_dir(args.golden)
    cases = list_cases(golden)
    digits = list_digit_models(golden)  # trained models: refvit vs PyTorch on the real digits test split
    if args.cases:
        unknown = sorted(set(args.cases) - {c.name for c in cases + digits})
        if unknown:
            print(f"refvit verify: unknown case(s) {unknown}; available: {[c.name for c in cases + digits]}",
                  file=sys.stderr)
            return 2
        cases = [c for c in cases if c.name in args.cases]
        digits = [d for d in digits if d.name in args.cases]
    runs = [(c, b, d) for c in cases for b in args.backend for d in args.dtype]
    processing = [] if args.cases else list_processing_cases(golden)
    digit_runs = [(m, b, d) for m in digits for b in args.backend for d in args.dtype]
    bar = ProgressBar(len(runs) + len(processing) + len(digit_runs), not args.quiet and sys.stderr.isatty())
    table = Table([c.name for c in cases + processing], wide=args.wide)
    results = []

    def finished(result, what):
        results.append(result)
        bar.done += 1
        if args.progress:
            bar.clear()
            print(f"  {what}: {'ok' if result.ok else 'FAIL'}", file=sys.stderr, flush=True)

    with exits.note_on_interrupt(lambda: f"{len(results)} of {bar.total} runs finished (their rows are above)"), \
            Worker() as worker:
        if runs or processing:  # --cases may name only trained digits models
            bar.print([f"golden cases from {golden}", table.header()])
        for case, backend, dtype in runs:
            bar.show(f"{case.name} {backend} {dtype}")
            r = worker.call("run_case", case, dtype, backend, fresh=is_real_size(case))  # RSS: docs/golden.md
            finished(r, f"{case.name} {backend} {dtype}")
            bar.print(table.rows(r))
        for case in processing:
            bar.show(f"{case.name} (image processing)")
            r = worker.call("run_processing_case", case)
            finished(r, case.name)
            bar.print(table.rows(r))
        digit_results = []
        for model_dir, backend, dtype in digit_runs:
            bar.show(f"{model_dir.name} {backend} {dtype}")
            digit_results.append(worker.call("run_digits", model_dir, dtype, backend))
            finished(digit_results[-1], f"{model_dir.name} {backend} {dtype}")
    bar.clear()
    if digit_results:
        print(f"\ntrained digits models, {digit_results[0].images} test images (accuracy: PyTorch's recorded, "
              "refvit's)")
        print(format_digits_table(digit_results, wide=args.wide))
    failed = sum(not r.ok for r in results)
    # rows that could not be checked here (a processing case with no golden for the installed Pillow): listed in
    # the table with the reason, counted apart, neither passed nor failed
    unverified = sum(bool(getattr(r, "not_verified", "")) for r in results)
    print(f"{len(results) - failed - unverified} passed, {failed} failed"
          + (f", {unverified} not verified (see the table)" if unverified else ""))
    return 1 if failed else 0


def add_verify_parser(sub) -> None:
    p = sub.add_parser("verify", help="run every golden case and print the parity table, a row as each run "
                       "finishes (exit 1 on any mismatch; a processing case with no golden for the installed Pillow is "
                       "listed as not verified, not failed); one model in memory at a time")
    p.add_argument("--golden", help="golden directory (default: golden/ of this checkout, then ./golden)")
    p.add_argument("--backend", nargs="+", choices=BACKENDS, default=BACKENDS, help="backends to run (default both)")
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=DTYPES, help="dtypes to run (default both)")
    p.add_argument("--cases", nargs="+", metavar="CASE", help="only these case names")
    p.add_argument("--progress", action="store_true", help="also print a line per run as it finishes on stderr "
                   "(for logs; on a terminal a progress bar shows anyway)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it shows on a terminal by default: the "
                   "run under way and an ETA); the rows still print as each run finishes")
    p.add_argument("--wide", action="store_true", help="every column in full (the architecture too); default: the "
                   "table fits 120 columns, long error lists cut with …")
    p.set_defaults(func=cmd_verify)
