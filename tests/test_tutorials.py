"""The tutorial notebooks: stored with outputs, in step with their sources, executing without error,
and their exercises solvable.

Each `tutorials/NN_name.ipynb` is built from `tutorials/src/NN_name.py` and executed by `python tutorials/run.py`.
Here: a stored notebook whose cells differ from its source, that was run with other trained models or other shared
helpers (digests of golden/models/ and tutorials/common.py are stored in it), or that has an unexecuted code cell, is
stale; every notebook has a figure and an assertion; the family notebooks (01-05) and 07 have exercises with a
`check()` and a solutions file, and every exercise at least two recorded wrong answers (tutorials/wrong/) that its check must
reject; and each notebook runs again from scratch in a fresh kernel (matplotlib on Agg) with its solutions and then
its wrong answers appended, from a fresh build — the stored file is never touched. tutorials/README.md (the docs'
Tutorials page) opens with prerequisites, the reading order and a goals-and-time row for every notebook.
"""

import importlib.util
import re
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
EXTRA = ("nbformat", "nbclient", "ipykernel", "matplotlib")  # the `tutorials` extra
MISSING = [m for m in EXTRA if importlib.util.find_spec(m) is None]
needs_extra = pytest.mark.skipif(bool(MISSING), reason=f"the `tutorials` extra is not installed ({MISSING})")
FAMILIES = ["01_vit", "02_deit", "03_beit", "04_cvt", "05_bit"]
EXERCISES = FAMILIES + ["07_precision"]  # notebooks that end with exercises (06 walks through a port instead)


def _load_run():
    spec = importlib.util.spec_from_file_location("tutorials_run", TUTORIALS / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_run() if not MISSING else None

SOURCES = sorted((TUTORIALS / "src").glob("[0-9][0-9]_*.py"))
REGENERATE = "stale: regenerate with `python tutorials/run.py`"


def stored(source: Path):
    import nbformat

    path = TUTORIALS / f"{source.stem}.ipynb"
    if not path.is_file():
        pytest.fail(f"{path.name} is missing; {REGENERATE}")
    return nbformat.read(path, as_version=4)


@needs_extra
def test_there_are_seven_tutorials():
    assert [s.stem for s in run.sources()] == [s.stem for s in SOURCES]
    assert [s.stem for s in SOURCES] == ["01_vit", "02_deit", "03_beit", "04_cvt", "05_bit", "06_parity",
                                         "07_precision"]
    orphans = {p.stem for p in TUTORIALS.glob("*.ipynb")} - {s.stem for s in SOURCES}
    assert not orphans, f"notebooks without a source in tutorials/src: {sorted(orphans)}"


@needs_extra
@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_stored_notebook_matches_its_source_and_models(source):
    nb = stored(source)
    built = run.build(source)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in built.cells], \
        f"{source.stem}.ipynb differs from src/{source.name}; {REGENERATE}"
    assert nb.metadata.get("refvit") == built.metadata["refvit"], \
        f"{source.stem}.ipynb was run with other golden/models/ files; {REGENERATE}"


@needs_extra
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


@pytest.mark.parametrize("stem", EXERCISES)
def test_notebook_has_exercises_with_solutions(stem):
    text = (TUTORIALS / "src" / f"{stem}.py").read_text()
    exercises = text.count("raise NotImplementedError")
    assert 2 <= exercises <= 4, f"{stem}: {exercises} exercises (2-4 expected, each a stub raising NotImplementedError)"
    assert text.count("check(") >= exercises, f"{stem}: every exercise needs a check() against refvit"
    solution = TUTORIALS / "solutions" / f"{stem}.py"
    assert solution.is_file(), f"{stem}: no solutions file {solution}"
    assert solution.read_text().count("assert check(") >= exercises, f"{stem}: a solution per exercise, each checked"
    assert "refvit.models" not in text, f"{stem}: use refvit's public API and hand-built NumPy, not refvit.models"


@pytest.mark.parametrize("stem", EXERCISES)
def test_every_exercise_has_recorded_wrong_answers(stem):
    """Each exercise's check is run (when the notebook executes with its solutions) on >= 2 wrong answers, each a
    named function with a docstring saying which mistake it makes, and must reject every one."""
    text = (TUTORIALS / "src" / f"{stem}.py").read_text()
    names = re.findall(r'^check\("([^"]+)"', text, flags=re.M)
    assert len(names) == text.count("raise NotImplementedError"), f"{stem}: one check(\"name\", ...) per exercise"
    wrong = TUTORIALS / "wrong" / f"{stem}.py"
    assert wrong.is_file(), f"{stem}: no recorded wrong answers {wrong}"
    body = wrong.read_text()
    for name in names:
        loops = re.findall(r"for wrong in \(([^)]*)\):\n\s+assert rejects\(\"" + re.escape(name) + '"', body)
        answers = [a.strip() for loop in loops for a in loop.split(",") if a.strip()]
        assert len(answers) >= 2, f"{stem}: {name!r} has {len(answers)} recorded wrong answers (2 or more expected)"
        for a in answers:
            assert re.search(rf'^def {a}\(\):\n    """', body, flags=re.M), f"{stem}: {a} needs a docstring"


@pytest.mark.parametrize("stem", EXERCISES)
def test_no_exercise_cell_echoes_a_value(stem):
    """A stub's check() returns None (no stray `False` under every exercise cell) and the stored cells show none."""
    text = (TUTORIALS / "src" / f"{stem}.py").read_text()
    assert "return False" not in (TUTORIALS / "common.py").read_text()
    if not MISSING:
        nb = stored(TUTORIALS / "src" / f"{stem}.py")
        echoes = [o["data"]["text/plain"] for c in nb.cells if c.cell_type == "code" and "check(" in c.source
                  for o in c.outputs if o.output_type == "execute_result"]
        assert not echoes, f"{stem}: exercise cells echo {echoes}; {REGENERATE}"
    assert text.count("check(") >= 2


@needs_extra
@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_notebook_executes_with_solutions(source):
    nb = run.build(source, with_solutions=True)
    run.execute(nb, env={"MPLBACKEND": "Agg"})  # raises CellExecutionError, with the cell and traceback, on failure
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def test_readme_is_a_students_way_in():
    """tutorials/README.md, which the docs' Tutorials page includes, opens with what a student needs first:
    prerequisites, the reading order, and a row per notebook with what to read before it, what it teaches and the
    time to read it and to run it. The maintainers' notes live on docs/tutorials/maintaining.md instead."""
    text = (TUTORIALS / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[:3] == ["Before you start", "Reading order", "What you will learn, and how long it takes"], headings
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in _section(text, headings[2]).splitlines() if line.startswith("| [")]
    for source in SOURCES:
        row = next((r for r in rows if f"]({source.stem}.ipynb)" in r[0]), None)
        assert row, f"{source.stem}: no row in the README's table '{headings[2]}'"
        after, goals, reading, exercises, running = row[1:]
        assert goals and re.search(r"\d+ min", reading) and re.fullmatch(r"\d+ s", running), (source.stem, row)
    deit = next(r for r in rows if "](02_deit.ipynb)" in r[0])
    assert "05" in deit[1], "02 (DeiT) learns from 05's BiT teacher: the reading order must say so"
    for maintainers in ("Closing note", "Run, regenerate", "tests/test_tutorials.py", "wrong/NN_name.py"):
        assert maintainers not in text, f"{maintainers!r}: maintainers' notes go to docs/tutorials/maintaining.md"
    index = (TUTORIALS.parent / "docs" / "tutorials" / "index.md").read_text()
    assert "```{include} ../../tutorials/README.md" in index
    toctree = index[index.index("```{toctree}"):]
    assert all(f"\n{source.stem}\n" in toctree for source in SOURCES), "a notebook missing from the docs' toctree"
