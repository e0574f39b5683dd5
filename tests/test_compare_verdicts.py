"""`refvit compare` verdicts mean what they say: OK only when every reference tensor was compared or deliberately
left out; INCOMPLETE (exit 1) when some were never compared; a shape mismatch is a SHAPE row, not an abort; --only
and --allow-missing make a partial check that the summary states; JSON numbers are numbers, JSON text is UTF-8."""

import json
from pathlib import Path

import numpy as np
import pytest

from refvit import parity
from refvit.cli import main

CASE = Path(__file__).resolve().parents[1] / "golden" / "cases" / "bit_model_width2"


@pytest.fixture(scope="module")
def reference():
    return parity.load(CASE)


def save(path, arrays: dict) -> str:
    np.savez(path, **arrays)
    return str(path)


def run(capsys, *argv):
    code = main(["compare", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_foreign_names_without_a_mapping_are_incomplete(reference, tmp_path, capsys):
    """A port with its own names shares only pixel_values with the reference: that is not a pass."""
    port = save(tmp_path / "port.npz", {"pixel_values": reference["pixel_values"],
                                        **{"port." + n.replace(".", "_"): reference[n] for n in reference.names[1:]}})
    code, out, _ = run(capsys, CASE, port)
    assert code == 1
    assert f"1 of {len(reference)} reference tensors compared" in out
    assert f"INCOMPLETE: {len(reference) - 1} reference tensors were neither compared nor ignored" in out
    assert "--map" in out and "ignore" in out and "OK:" not in out
    code, out, _ = run(capsys, CASE, port, "--json")
    d = json.loads(out)
    assert (code, d["verdict"], d["ok"], len(d["missing"])) == (1, "INCOMPLETE", False, len(reference) - 1)


def test_only_and_allow_missing_state_a_partial_check(reference, tmp_path, capsys):
    logits_like = reference.names[-1]
    port = save(tmp_path / "port.npz", {"pixel_values": reference["pixel_values"], logits_like: reference[logits_like]})
    code, out, _ = run(capsys, CASE, port, "--only", logits_like)
    assert code == 0 and f"1 of {len(reference)} reference tensors compared" in out
    assert f"{len(reference) - 1} not selected (--only {logits_like})" in out and "OK (partial check" in out
    code, out, _ = run(capsys, CASE, port, "--allow-missing")
    assert code == 0 and f"2 of {len(reference)} reference tensors compared" in out
    assert f"{len(reference) - 2} missing in the candidate (allowed: --allow-missing)" in out and "partial" in out
    code, out, _ = run(capsys, CASE, port, "--only", "no-such-tensor*")
    assert code == 2  # selects nothing: nothing could be checked
    code, out, _ = run(capsys, CASE, port, "--only", "embedder.*")  # selected, but the port has none of them
    assert code == 2
    code, out, _ = run(capsys, CASE, port, "--only", "embedder.*", "--only", "pixel_values")  # some of them
    assert code == 1 and "INCOMPLETE: 3 reference tensors were neither compared nor ignored" in out


def test_shape_mismatch_is_a_row_and_the_report_goes_on(reference, tmp_path, capsys):
    arrays = {n: reference[n] for n in reference.names}
    arrays["embedder.norm"] = np.pad(arrays["embedder.norm"], [(0, 0), (0, 0), (1, 1), (1, 1)])  # SAME padding
    code, out, _ = run(capsys, CASE, save(tmp_path / "shape.npz", arrays))
    assert code == 1
    assert "SHAPE reference (1, 16, 18, 18), candidate (1, 16, 20, 20)  <-- first divergence" in out
    assert "FIRST DIVERGENCE: embedder.norm" in out and "INTRODUCED the shape difference (its input " \
        "embedder.convolution has the reference's shape)" in out
    assert f"{len(reference)} of {len(reference)} reference tensors compared: {len(reference) - 1} OK, 0 NOT OK, " \
           "1 SHAPE" in out  # every later tensor still compared
    d = json.loads(run(capsys, CASE, save(tmp_path / "shape.npz", arrays), "--json")[1])
    assert d["first_divergence"]["status"] == "SHAPE" and d["shape_mismatches"] == ["embedder.norm"]


def test_ignore_on_either_side(reference, tmp_path, capsys):
    keep = reference.names[:3]
    port = save(tmp_path / "port.npz", {**{n: reference[n] for n in keep}, "debug.extra": np.zeros(3)})
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"ignore": {"reference": [n for n in reference.names if n not in keep],
                                           "candidate": ["debug.*"]}}))
    code, out, _ = run(capsys, CASE, port, "--map", both)
    assert code == 0 and f"{len(reference) - 3} ignored" in out and "0 candidate tensors not in the reference" in out
    assert "OK: every compared tensor is within tolerance, and every reference tensor was compared or ignored" in out
    listed = tmp_path / "list.json"  # the list form: reference names
    listed.write_text(json.dumps({"ignore": [n for n in reference.names if n not in keep]}))
    code, out, _ = run(capsys, CASE, port, "--map", listed)
    assert code == 0 and "1 candidate tensors not in the reference: debug.extra" in out
    for bad in ({"ignore": {"model": []}}, {"ignore": "x"}, {"ignore": {"candidate": [1]}}):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        code, _, err = run(capsys, CASE, port, "--map", tmp_path / "bad.json")
        assert code == 2 and "'ignore' must be" in err


def test_placeholder_is_a_dot_free_run_and_repeats_match():
    from refvit.parity.compare import _pattern

    rx = _pattern("blocks.{i}.attn")
    assert rx.match("blocks.12.attn") and not rx.match("blocks.1.2.attn") and not rx.match("blocks..attn")
    assert _pattern("layer{i}.out").match("layer3.out")  # part of a component, as documented
    twice = _pattern("s{i}.b{i}")
    assert twice.match("s1.b1") and not twice.match("s1.b2")


def test_json_numbers_are_numbers_and_text_is_utf8(reference, tmp_path, capsys):
    arrays = {n: reference[n] for n in reference.names}
    arrays[reference.names[-1]] = arrays[reference.names[-1]] + np.float32(np.nan)
    code, out, _ = run(capsys, CASE, save(tmp_path / "nan.npz", arrays), "--json")
    assert code == 1 and "\\u0394" not in out and "Δ" in out

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    d = json.loads(out, parse_constant=no_constants)
    rows = {r["name"]: r for r in d["rows"]}
    assert isinstance(rows["pixel_values"]["bound"], float) and isinstance(rows["pixel_values"]["max_abs"], float)
    assert rows["pixel_values"]["rule"] == f"{rows['pixel_values']['bound']:.1e}"  # the words for the table
    assert rows[reference.names[-1]]["max_abs"] is None and rows[reference.names[-1]]["status"] == "NOT OK"


def test_no_tensor_in_common_is_unusable_input(reference, tmp_path, capsys):
    code, _, err = run(capsys, CASE, save(tmp_path / "none.npz", {"x": np.zeros(2)}))
    assert code == 2 and "nothing to compare" in err
