"""Small helpers shared by the tutorial notebooks 01-05 (kept here so each notebook shows only its model).

- `digits(name)`: a trained digits model from golden/models/ — refvit's model, its config.json as a plain dict, the
  raw checkpoint tensors by checkpoint name, and the 360 test digits through the model's own image processor.
- `first_divergence(mine, reference)`: the first module, in execution order, where hand-built tensors differ.
- `check(name, attempt, expected)`: the exercises' checker: "not attempted yet" for a stub, an assertion otherwise;
  `rejects(name, wrong)`: the tests' proof that a check refuses a recorded wrong answer.
- `block_diagram(ax, steps, residuals)`: the matplotlib schematic each notebook opens with.
- `planted(namespace, name, replacement)` and `quirk_report(namespace, quirks, run, reference, correct)`: the
  planted-quirk sections — swap one of the notebook's clean helpers for a wrong variant, show it as a diff, and
  report where the model first leaves the tolerance and what the accuracy becomes.

The notebooks use only refvit's public API (`refvit.from_pretrained`, `model(x, output_intermediates=True)`,
`refvit.AutoImageProcessor`, `refvit.checkpoint.load_state_dict`), never `refvit.models.*`: every layer is built by
hand from the checkpoint tensors and checked against refvit's recorded intermediates.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import refvit
from refvit.checkpoint import load_state_dict
from refvit.datasets import digit_image

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents, *Path(__file__).resolve().parents]
            if (p / "golden" / "models").is_dir())
MODELS = Path(os.path.relpath(ROOT / "golden" / "models"))  # relative: printed paths name no machine's folders
TOLERANCE = 1e-4  # DESIGN.md §5 float32 bound: max|ours − ref| ≤ 1e-4 · max(1, max|ref|)


class Digits:
    """One trained digits model: .model (refvit, NumPy backend), .config (config.json dict), .weights (raw
    checkpoint tensors by name), .pixel_values (360, 3, 32, 32), .labels (360,), .scans (360, 8, 8), .meta."""

    def __init__(self, name: str):
        self.dir = MODELS / name
        self.model = refvit.from_pretrained(self.dir, backend="numpy")
        self.config = json.loads((self.dir / "config.json").read_text())
        self.weights, _ = load_state_dict(self.dir)
        self.meta = json.loads((self.dir / "meta.json").read_text())
        test = np.load(MODELS / "digits_test.npz")
        self.scans, self.labels = test["images"], test["labels"]
        processor = refvit.AutoImageProcessor.from_pretrained(self.dir)
        self.pixel_values = processor(images=[digit_image(s) for s in self.scans],
                                      return_tensors="np")["pixel_values"]
        self.recorded = dict(np.load(self.dir / "logits.npz"))   # PyTorch's logits, recorded by train_digits.py

    def accuracy(self, logits) -> float:
        return float(np.mean(np.asarray(logits).argmax(-1) == self.labels[:len(logits)]))


def digits(name: str) -> Digits:
    return Digits(name)


def close(mine, ref, tol=TOLERANCE) -> bool:
    mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    return mine.shape == ref.shape and float(np.abs(mine - ref).max()) <= tol * max(1.0, float(np.abs(ref).max()))


def assert_close(mine, ref, what="", tol=TOLERANCE):
    """The project's float32 tolerance, relative to max(1, max|ref|)."""
    mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    assert mine.shape == ref.shape, f"{what}: shape {mine.shape} vs reference {ref.shape}"
    err = float(np.abs(mine - ref).max())
    assert err <= tol * max(1.0, float(np.abs(ref).max())), f"{what}: max abs error {err:.3g}"


def first_divergence(mine: dict, reference: dict, tol=TOLERANCE):
    """(module name, max abs error) of the first tensor, in refvit's execution order (the order of `reference`,
    i.e. `out.intermediates`), where the hand-built `mine[name]` differs beyond the float32 tolerance;
    (None, 0.0) when every shared name agrees. A small stand-in for the parity toolkit's compare."""
    for name, ref in reference.items():
        if name in mine and not close(mine[name], ref, tol):
            a, b = np.asarray(mine[name], np.float64), np.asarray(ref, np.float64)
            return name, float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
    return None, 0.0


EXPECTED: dict = {}  # exercise name -> (expected, tol, rtol), recorded by check() for rejects()


def _compare(name: str, got, expected, tol, rtol) -> None:
    """AssertionError unless `got` equals `expected`: arrays and floats within tol relative to max(1, max|expected|)
    (or, with rtol, within rtol·|expected| element by element: for values near 0 or near 1, where an absolute bound
    cannot tell two answers apart); ints, tuples, sets and strings exactly, and of the same type."""
    if isinstance(expected, (np.ndarray, float)):
        assert isinstance(got, (np.ndarray, float, np.floating)), f"{name}: got {type(got).__name__} " \
            f"{got!r:.40}, expected {'an array' if isinstance(expected, np.ndarray) else 'a float'}"
        if rtol is None:
            assert_close(got, expected, name, tol)
        else:
            g, e = np.asarray(got, np.float64), np.asarray(expected, np.float64)
            assert g.shape == e.shape, f"{name}: shape {g.shape} vs reference {e.shape}"
            worst = float(np.max(np.abs(g - e) / np.abs(e)))
            assert worst <= rtol, f"{name}: relative error {worst:.3g} > {rtol:g}"
    else:
        assert type(got) is type(expected) or (isinstance(expected, int) and isinstance(got, np.integer)), \
            f"{name}: got {type(got).__name__} {got!r:.40}, expected {type(expected).__name__} {expected!r:.40}"
        assert got == expected, f"{name}: got {got!r}, expected {expected!r}"


def check(name: str, attempt, expected, tol=TOLERANCE, rtol=None):
    """An exercise: call `attempt()` (the reader's function); a stub raising NotImplementedError is "not attempted"
    (returns None, so the cell shows nothing more), anything else must equal `expected` (see `_compare`: an
    AssertionError says what differs) and returns True."""
    EXPECTED[name] = (expected, tol, rtol)
    try:
        got = attempt()
    except NotImplementedError:
        print(f"{name}: not attempted yet (replace the `raise NotImplementedError`)")
        return None
    _compare(name, got, expected, tol, rtol)
    print(f"{name}: correct")
    return True


def rejects(name: str, wrong) -> bool:
    """For tests/test_tutorials.py: True when the exercise `name` (checked earlier in the notebook) refuses the
    recorded wrong answer `wrong()` (its docstring says which mistake it makes); AssertionError if check accepts it."""
    expected, tol, rtol = EXPECTED[name]
    try:
        _compare(name, wrong(), expected, tol, rtol)
    except AssertionError as e:
        print(f"rejected, {wrong.__doc__}: {e}")
        return True
    raise AssertionError(f"{name}: check() accepts the wrong answer {wrong.__name__} ({wrong.__doc__})")


def block_diagram(ax, steps, residuals=(), title=""):
    """A vertical flow chart: `steps` are (label, shape) boxes from bottom to top (blue: carries the shape shown on
    the right; orange: a norm/activation that keeps it); `residuals` are (from, to) index pairs, drawn in red as a
    skip path from the output of box `from` to the ⊕ next to box `to`."""
    ax.set_xlim(0, 12), ax.set_ylim(-0.6, len(steps) - 0.4), ax.set_axis_off()
    for i, (label, shape) in enumerate(steps):
        ax.text(3.6, i, label, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.3", fc="#dbe9f6" if shape else "#fde2c8", ec="0.3"))
        if shape:
            ax.text(8.9, i, shape, ha="left", va="center", fontsize=7, color="0.35", family="monospace")
        if i:
            ax.annotate("", (3.6, i - 0.28), (3.6, i - 0.72), arrowprops=dict(arrowstyle="->", color="0.3"))
    for k, (a, b) in enumerate(residuals):
        x = 8.1 + 0.25 * k
        ax.text(7.4, b, "⊕", ha="center", va="center", fontsize=12, color="C3")
        ax.plot([3.6, x, x], [a + 0.35, a + 0.35, b], color="C3", lw=1)
        ax.annotate("", (7.6, b), (x, b), arrowprops=dict(arrowstyle="->", color="C3"))
    if title:
        ax.set_title(title, fontsize=9)


@contextmanager
def planted(namespace: dict, name: str, replacement):
    """Inside the `with` block, the notebook's helper `name` is `replacement`: `namespace` is the notebook's
    `globals()`, where its clean functions look their helpers up by name at call time, so the whole model runs with
    the planted bug. The clean helper is put back afterwards, also when the block raises."""
    clean = namespace[name]
    namespace[name] = replacement
    try:
        yield
    finally:
        namespace[name] = clean


def diff_lines(clean, replacement) -> list[str]:
    """The lines that differ between two functions' bodies (`-` clean, `+` replacement; the `def` line and
    one-line docstrings left out): a planted quirk shown as the small edit it is."""
    body = lambda f: [line for line in inspect.getsource(f).splitlines()[1:] if not line.lstrip().startswith('"""')]
    diff = difflib.unified_diff(body(clean), body(replacement), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("---", "+++")]


def quirk_report(namespace: dict, quirks: dict, run, reference: dict, correct: float) -> dict:
    """For each quirk `{label: (helper name, replacement)}`: print it as a diff against the notebook's clean helper
    (`namespace[name]`), then, with it planted, call `run()` -> (recorded tensors by module name, accuracy) and print
    a table row: the first module (in `reference`'s order) beyond the float32 tolerance, its max error, the accuracy
    and its change from `correct`. Returns {label: (first module, max error, accuracy)}."""
    for label, (name, replacement) in quirks.items():
        print(f"{label} (replaces {name}):", *diff_lines(namespace[name], replacement), sep="\n    ")
    rows = {}
    for label, (name, replacement) in quirks.items():
        with planted(namespace, name, replacement):
            rec, acc = run()
        rows[label] = (*first_divergence(rec, reference), acc)
    wq, wm = max(5, *map(len, rows)), max(22, *(len(str(first)) for first, _, _ in rows.values()))
    print(f"\n{'quirk':{wq}s} {'first diverging module':{wm}s} {'max error':>9s} {'accuracy':>9s} {'change':>7s}")
    for label, (first, err, acc) in rows.items():
        print(f"{label:{wq}s} {str(first):{wm}s} {err:9.2e} {acc:9.2%} {acc - correct:+7.2%}")
    return rows
