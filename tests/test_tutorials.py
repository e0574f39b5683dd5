"""The tutorial notebooks (issue 7): stored with outputs, in step with their sources, and executing without error.

Each `tutorials/NN_name.ipynb` is built from `tutorials/src/NN_name.py` and executed by `python tutorials/run.py`.
Here: a stored notebook whose cells differ from its source, that was run with other trained models (a digest of
golden/models/ is stored in it), or that has an unexecuted code cell, is stale; every notebook has a figure and an
assertion; and each one runs again from scratch in a fresh kernel (matplotlib on Agg), from a copy — the stored file
is never touched.
"""

import copy
import importlib.util
from pathlib import Path

import pytest

for _module in ("nbformat", "nbclient", "ipykernel", "matplotlib"):  # the `tutorials` extra
    pytest.importorskip(_module)

import nbformat  # noqa: E402

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
_spec = importlib.util.spec_from_file_location("tutorials_run", TUTORIALS / "run.py")
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)

SOURCES = run.sources()
REGENERATE = "stale: regenerate with `python tutorials/run.py`"


def stored(source: Path) -> nbformat.NotebookNode:
    path = TUTORIALS / f"{source.stem}.ipynb"
    if not path.is_file():
        pytest.fail(f"{path.name} is missing; {REGENERATE}")
    return nbformat.read(path, as_version=4)


def test_there_are_six_tutorials():
    assert [s.stem for s in SOURCES] == ["01_vit", "02_deit", "03_beit", "04_cvt", "05_bit", "06_parity"]
    orphans = {p.stem for p in TUTORIALS.glob("*.ipynb")} - {s.stem for s in SOURCES}
    assert not orphans, f"notebooks without a source in tutorials/src: {sorted(orphans)}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_stored_notebook_matches_its_source_and_models(source):
    nb = stored(source)
    built = run.build(source)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in built.cells], \
        f"{source.stem}.ipynb differs from src/{source.name}; {REGENERATE}"
    assert nb.metadata.get("refvit") == built.metadata["refvit"], \
        f"{source.stem}.ipynb was run with other golden/models/ files; {REGENERATE}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_stored_notebook_is_executed_with_a_figure_and_an_assertion(source):
    nb = stored(source)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{source.stem}: execution counts {counts}; {REGENERATE}"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{source.stem}: stored error output {errors[0].ename}: {errors[0].evalue}"
    figures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert figures, f"{source.stem}: no figure in the stored outputs"
    assert any("assert" in c.source for c in code), f"{source.stem}: nothing ties a hand-built step to a reference"


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_notebook_executes(source):
    nb = copy.deepcopy(stored(source))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    run.execute(nb, env={"MPLBACKEND": "Agg"})  # raises CellExecutionError, with the cell and traceback, on failure
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
