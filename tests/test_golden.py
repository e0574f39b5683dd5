"""Every golden case on both backends and both dtypes, every recorded tensor within docs/DESIGN.md §7's tolerance:
float32 max|ours - ref| <= 1e-4·max(1, max|ref|), float64 <= 1e-10·max(1, max|ref|)."""

import json
from pathlib import Path

import numpy as np
import pytest

from refvit.verify import format_table, list_cases, run_case

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = list_cases(GOLDEN)


def test_golden_cases_exist():
    names = {c.name for c in CASES}
    assert len(names) >= 15, names
    for required in ("vit_model", "vit_classification", "vit_mim", "deit_model", "deit_classification", "deit_teacher",
                     "deit_mim", "deit_small_teacher_224", "deit_teacher_bf16", "deit_teacher_bin"):
        assert required in names


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case, backend, dtype):
    result = run_case(case, dtype=dtype, backend=backend)
    assert result.errors, "nothing was compared"
    assert result.ok, "\n" + format_table([result])


def test_every_output_compared():
    """The comparison covers each hidden state, attention map, head output and intermediate the framework recorded."""
    result = run_case(GOLDEN / "cases" / "deit_teacher", dtype="float32", backend="numpy")
    keys = set(result.errors)
    assert {"logits", "cls_logits", "distillation_logits"} <= keys
    assert {f"hidden_states/{i}" for i in range(3)} <= keys and {f"attentions/{i}" for i in range(2)} <= keys
    assert "intermediates/deit.encoder.layer.1.attention.output" in keys
    assert "intermediates/deit.embeddings" in keys and "intermediates/distillation_classifier" in keys


# ------------------------------------------------------------------------------------ the golden tree itself


def golden_generate():
    """golden/generate.py as a module (torch is imported only inside its functions: this needs none)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("golden_generate", GOLDEN / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_cases_are_exactly_the_cases_tables():
    """golden/cases/ holds one directory per entry of the CASES tables (golden/cases_*.py) and nothing else: a case
    deleted from the tree, or left there after leaving the tables, fails here (and --check would not notice a
    table entry whose directory is gone only if it were never regenerated)."""
    generate = golden_generate()
    assert sorted(generate.FAMILIES) == sorted(p.stem for p in GOLDEN.glob("cases_*.py")), "a family not in FAMILIES"
    tables = generate.all_cases()
    committed = {p.name for p in (GOLDEN / "cases").iterdir()}
    assert not sorted(set(tables) - committed), f"in the CASES tables, missing from golden/cases/: {sorted(set(tables) - committed)}"
    assert not sorted(committed - set(tables)), f"in golden/cases/, in no CASES table: {sorted(committed - set(tables))}"
    assert {c.name for c in CASES} == set(tables)  # what test_golden above runs
    for name, (_, (arch, *_)) in tables.items():
        case = GOLDEN / "cases" / name
        assert all((case / f).is_file() for f in ("config.json", "inputs.npz", "outputs.npz", "meta.json")), name
        meta = json.loads((case / "meta.json").read_text())
        assert (meta["case"], meta["architecture"]) == (name, arch)


def npz_tree(root: Path, **arrays) -> Path:
    (root / "case").mkdir(parents=True)
    np.savez(root / "case" / "outputs.npz", **arrays)
    return root


def test_check_tolerances_and_worst_ratio(tmp_path):
    """`generate.py --check` compares with FLOAT32_REGENERATION_TOL / FLOAT64_REGENERATION_TOL x max(1, max|ref|)
    and reports each case's worst ratio."""
    generate = golden_generate()
    f32, f64 = generate.FLOAT32_REGENERATION_TOL, generate.FLOAT64_REGENERATION_TOL
    assert 6.2e-6 * 2 <= f32 <= 1e-4 / 4, "must cover the measured cross-CPU variation and stay below parity's 1e-4"
    ref32, ref64 = np.array([0.5, -100.0], np.float32), np.array([3.0, 1.0])
    committed = npz_tree(tmp_path / "a", x=ref32, y=ref64)

    def compare(x, y):
        fresh = npz_tree(tmp_path / f"b{len(list(tmp_path.iterdir()))}", x=x, y=y)
        worst = {}
        return generate.compare_trees(committed, fresh, worst), worst

    problems, worst = compare(ref32 + np.float32(0.5 * f32 * 100), ref64 + 0.5 * f64 * 3)
    assert problems == [] and worst["case"][0] == pytest.approx(0.5, rel=0.05)
    problems, worst = compare(ref32 + np.float32(2 * f32 * 100), ref64)
    assert len(problems) == 1 and ":x:" in problems[0] and worst["case"][0] > 1.5
    problems, _ = compare(ref32, ref64 + 2 * f64 * 3)
    assert len(problems) == 1 and ":y:" in problems[0]
    problems, worst = compare(np.array([np.nan, -100], np.float32), ref64)
    assert len(problems) == 1 and worst["case"][0] == float("inf")
