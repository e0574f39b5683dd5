"""Every golden case on both backends and both dtypes, every recorded tensor within DESIGN.md §5's tolerance:
float32 max|ours - ref| <= 1e-4·max(1, max|ref|), float64 <= 1e-10·max(1, max|ref|)."""

from pathlib import Path

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
