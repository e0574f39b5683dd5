"""Build the tutorial notebooks from their readable sources and execute them in place.

    python tutorials/run.py                 # every notebook
    python tutorials/run.py 03_beit         # only the ones named

Each `tutorials/src/NN_name.py` is a plain Python script in the "percent" format (`# %%` starts a code cell,
`# %% [markdown]` a markdown cell whose lines are `# `-commented), runnable on its own; this script turns it into
`tutorials/NN_name.ipynb` with nbformat and executes it with nbclient (cwd = tutorials/), so the stored notebook
carries its outputs and figures, and the digest of golden/models/ (and of tutorials/common.py, the helpers the
notebooks import) it was run with. tests/test_tutorials.py checks that every stored notebook matches its source and
the current models and has been executed, and executes each one again (matplotlib on Agg) with the solutions of its
exercises appended (`tutorials/solutions/NN_name.py`, same format), so every exercise stays solvable, and then its
recorded wrong answers (`tutorials/wrong/NN_name.py`), each of which the exercise's `check` must reject.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
SOLUTIONS = HERE / "solutions"
WRONG = HERE / "wrong"  # recorded wrong answers: each exercise's check() must reject every one (tests only)
COMMON = HERE / "common.py"  # helpers imported by the notebooks (kernel cwd = tutorials/)
STUDY = HERE.parent / "golden" / "distillation_study.json"  # written by golden/train_digits.py --distillation-study
LOSSES = HERE.parent / "golden" / "distillation_losses.json"  # written by golden/train_digits.py --record-losses
MODELS = HERE.parent / "golden" / "models"
TIMEOUT_S = 300  # per cell
# One BLAS thread in the kernels: on a small shared machine OpenBLAS's thread pool made the notebooks' many small
# batched matrix products 10-20x slower (and timings erratic); results do not depend on it.
KERNEL_ENV = {"OPENBLAS_NUM_THREADS": "1"}


def parse_cells(text: str) -> list[tuple[str, str]]:
    """(kind, source) for every cell of a percent-format script; kind is "code" or "markdown"."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            kind, lines = cells[-1]
            lines.append(line[2:] if kind == "markdown" and line.startswith("# ") else
                         "" if kind == "markdown" and line == "#" else line)
    return [(kind, "\n".join(lines).strip("\n")) for kind, lines in cells]


def models_digest(segmentation: bool = False) -> str:
    """sha256 over the digits models' files in golden/models/ (digits-*/, digits_test.npz: the trained models the
    notebooks show), and with `segmentation` also over the segmentation models' (segment-*/, shapes_test.npz):
    stored in each notebook, so outputs computed from models that have since been retrained count as stale. A
    notebook that does not name a segmentation model is not made stale by retraining one."""
    prefixes = ("digits", "segment-", "shapes") if segmentation else ("digits",)
    digest = hashlib.sha256()
    for path in sorted(p for p in MODELS.rglob("*") if p.is_file()):
        rel = path.relative_to(MODELS).as_posix()
        if rel.startswith(prefixes):
            digest.update(rel.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def solutions(source: Path) -> Path | None:
    """tutorials/solutions/NN_name.py, the solved exercises of one notebook, if it has any."""
    path = SOLUTIONS / source.name
    return path if path.is_file() else None


def wrong_answers(source: Path) -> Path | None:
    """tutorials/wrong/NN_name.py, recorded wrong answers to one notebook's exercises, if it has any."""
    path = WRONG / source.name
    return path if path.is_file() else None


def build(source: Path, with_solutions: bool = False) -> nbformat.NotebookNode:
    """The unexecuted notebook of one source file (for the tests, with_solutions appends its solutions' cells, then
    its recorded wrong answers' cells, which assert that every check() rejects them)."""
    nb = nbformat.v4.new_notebook()
    segmentation = "segment-" in source.read_text()                     # a notebook that shows a segmentation model
    nb.metadata["refvit"] = {"source": f"src/{source.name}", "golden_models_sha256": models_digest(segmentation)}
    if COMMON.is_file() and "from common import" in source.read_text():
        nb.metadata["refvit"]["common_sha256"] = hashlib.sha256(COMMON.read_bytes()).hexdigest()
    if STUDY.is_file() and STUDY.name in source.read_text():  # 02_deit shows the recorded distillation study
        nb.metadata["refvit"]["distillation_study_sha256"] = hashlib.sha256(STUDY.read_bytes()).hexdigest()
    if LOSSES.is_file() and LOSSES.name in source.read_text():  # 02_deit recomputes the recorded losses
        nb.metadata["refvit"]["distillation_losses_sha256"] = hashlib.sha256(LOSSES.read_bytes()).hexdigest()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    make = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell}
    text = source.read_text()
    if with_solutions and solutions(source):
        text += "\n" + solutions(source).read_text()
    if with_solutions and wrong_answers(source):
        text += "\n" + wrong_answers(source).read_text()
    nb.cells = [make[kind](src) for kind, src in parse_cells(text)]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{source.stem.replace('_', '-')}-{i:02d}"  # stable ids: rebuilding changes no diff
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path = HERE, env: dict | None = None) -> nbformat.NotebookNode:
    """Run every cell in a fresh python3 kernel started in `cwd` with os.environ + KERNEL_ENV + `env`
    (raises nbclient's CellExecutionError on the first error)."""
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute(env={**os.environ, **KERNEL_ENV, **(env or {})})
    return nb


def sources(names=()) -> list[Path]:
    found = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    return [s for s in found if not names or s.stem in names]


def main(argv: list[str]) -> int:
    for source in sources(argv):
        t0 = time.perf_counter()
        nb = execute(build(source))
        for cell in nb.cells:  # wall-clock timestamps would make every rebuild a diff
            cell.get("metadata", {}).pop("execution", None)
        nbformat.write(nb, HERE / f"{source.stem}.ipynb")
        print(f"{source.stem}.ipynb  {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
