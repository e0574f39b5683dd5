"""`refvit verify` fails when it should: a golden tensor moved past docs/DESIGN.md §7's bound, an output refvit does
not produce, or one of another shape is a FAIL row and exit 1 — not only "every committed case passes".

The bound is computed here from the rule (float32: 1e-4 · max(1, max|ref|), float64: 1e-10 · max(1, max|ref|)), and
a copy of one small golden case is perturbed on either side of it: 1.5× the bound must fail, 0.5× must pass (refvit's
own error on that case is orders of magnitude below the bound)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from refvit import verify
from refvit.cli import main
from refvit.tolerance import allowed_error

CASE = Path(__file__).resolve().parents[1] / "golden" / "cases" / "vit_model"
KEY = "hidden_states/1"
RULE = {"float32": 1e-4, "float64": 1e-10}  # docs/DESIGN.md §7, written out here, not read from refvit


def golden_copy(tmp_path, edit) -> Path:
    """golden/cases/vit_model copied under tmp_path/golden, its outputs.npz passed through `edit(dict) -> dict`."""
    case = tmp_path / "golden" / "cases" / CASE.name
    shutil.copytree(CASE, case)
    with np.load(case / "outputs.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(case / "outputs.npz", **edit(arrays))
    return case


def moved(dtype: str, factor: float):
    """Move one element of `dtype/KEY` by `factor` × the rule's bound."""
    def edit(arrays):
        ref = arrays[f"{dtype}/{KEY}"].copy()
        ref.flat[7] += ref.dtype.type(factor * RULE[dtype] * max(1.0, float(np.abs(ref).max())))
        arrays[f"{dtype}/{KEY}"] = ref
        return arrays
    return edit


def test_allowed_error_is_the_documented_rule():
    assert allowed_error(np.array([0.5, -0.25], np.float32), "float32") == pytest.approx(1e-4)
    assert allowed_error(np.array([3.0, -300.0]), "float32") == pytest.approx(3e-2)
    assert allowed_error(np.array([0.5]), "float64") == pytest.approx(1e-10)
    assert allowed_error(np.array([-40.0, 2.0]), "float64") == pytest.approx(4e-9)
    assert allowed_error(np.zeros((0, 3)), "float32") == pytest.approx(1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_tensor_past_the_bound_fails_and_one_inside_passes(tmp_path, dtype):
    bad = verify.run_case(golden_copy(tmp_path / "bad", moved(dtype, 1.5)), dtype=dtype, backend="numpy")
    err, tol = bad.errors[KEY]
    assert not bad.ok and 1.2 < err / tol < 1.8
    assert [k for k, (e, t) in bad.errors.items() if e > t] == [KEY]
    good = verify.run_case(golden_copy(tmp_path / "good", moved(dtype, 0.5)), dtype=dtype, backend="numpy")
    assert good.ok and 0.3 < good.errors[KEY][0] / good.errors[KEY][1] < 0.7


def test_a_missing_or_reshaped_output_fails(tmp_path):
    def extra(arrays):
        arrays["float32/no_such_output"] = np.zeros(3, np.float32)
        return arrays

    def reshaped(arrays):
        arrays["float32/pooler_output"] = arrays["float32/pooler_output"][:1]
        return arrays

    missing = verify.run_case(golden_copy(tmp_path / "m", extra), dtype="float32", backend="numpy")
    assert not missing.ok and any("no_such_output" in p for p in missing.problems)
    shape = verify.run_case(golden_copy(tmp_path / "s", reshaped), dtype="float32", backend="numpy")
    assert not shape.ok and any("pooler_output" in p and "shape" in p for p in shape.problems)


def test_cli_verify_exits_1_and_says_fail(tmp_path, capsys):
    golden_copy(tmp_path, moved("float32", 1.5))
    argv = ["verify", "--golden", str(tmp_path / "golden"), "--backend", "numpy", "--dtype", "float32", "--quiet"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and f"{KEY} max abs error" in out and "0 passed, 1 failed" in out


def test_processing_rows_compare_and_fail_on_a_moved_pixel(tmp_path, monkeypatch):
    """verify's processing rows: under the installed Pillow (goldens exist for 10.0-13.0) the case is compared, not
    waved through as "not verified"; a normalized pixel 3e-6 off (bound 1e-6, as tests/test_processing.py's
    assert_allclose) or a uint8 pixel 1 off (bit-exact stage) fails."""
    import dataclasses

    case = CASE.parents[1] / "processing" / "vit_default"
    real = verify.run_processing_case(case)
    assert not real.not_verified and real.ok and set(real.errors) == {"pixel_values", "pixels_uint8"}
    golden = verify.processing_golden(case)
    with np.load(golden.expected) as z:
        expected = {k: z[k].copy() for k in z.files}
    for key, step in (("pixel_values", 3e-6), ("pixels_uint8", 1)):
        moved_arrays = {k: v.copy() for k, v in expected.items()}
        moved_arrays[key].flat[11] += step
        np.savez(tmp_path / f"{key}.npz", **moved_arrays)
        monkeypatch.setattr(verify, "processing_golden",
                            lambda _case, path=tmp_path / f"{key}.npz": dataclasses.replace(golden, expected=path))
        result = verify.run_processing_case(case)
        assert not result.ok and result.errors[key][0] > result.errors[key][1], key


def test_a_digits_disagreement_fails_even_with_the_logits_inside_the_bound():
    """A near-tie: refvit's class differs from PyTorch's on one image while every logit is within the bound and the
    accuracy is unchanged (both wrong on it). That image alone must fail the row; the same result without the
    disagreement is the control that passes."""
    def result(disagreements):
        return verify.DigitsResult("digits-vit", "ViTForImageClassification", "numba", "float32", 0.1, 1000,
                                   framework_accuracy=0.98, accuracy=0.98, disagreements=disagreements, images=360,
                                   errors={"logits": (2e-5, 1e-4)})

    assert result([]).ok
    assert not result([7]).ok
    table = verify.format_digits_table([result([7])])
    assert "359/360" in table and "FAIL" in table
