"""`refvit compare`'s pass rules, each on a tensor built to sit on one side of it (the bounds are the presets'
documented ones, refvit/parity/compare.py's docstring): the elementwise presets test every element against its own
bound, llm.c's bound is absolute, integer tensors must match exactly whatever the tolerance, and a per-tensor
override beats the mapping's tolerance and an earlier glob."""

import numpy as np
import pytest

from refvit import parity


def status(ref: dict, cand: dict, tolerance="refvit", **kwargs) -> dict:
    result = parity.compare(parity.Trace(ref), parity.Trace(cand), tolerance, **kwargs)
    return {r.name: r.status for r in result.rows}


@pytest.mark.parametrize("preset, atol, rtol", [("transformers", 1e-4, 1e-4), ("conversion", 1e-3, 1e-5)])
def test_elementwise_presets_hold_every_element_to_its_own_bound(preset, atol, rtol):
    ref = np.array([[0.0, 1000.0]])
    # element 1 is within atol + rtol·1000 (and far above atol); element 0, next to 0, is not: NOT OK
    one_off = ref + np.array([[2 * atol, 0.5 * (atol + rtol * 1000)]])
    assert status({"t": ref}, {"t": one_off}, preset) == {"t": "NOT OK"}
    both_in = ref + np.array([[0.5 * atol, 0.5 * (atol + rtol * 1000)]])
    assert status({"t": ref}, {"t": both_in}, preset) == {"t": "OK"}
    big_over = ref + np.array([[0.0, 2 * (atol + rtol * 1000)]])  # the rtol term: twice its bound at |ref| = 1000
    assert status({"t": ref}, {"t": big_over}, preset) == {"t": "NOT OK"}


def test_llm_c_bound_is_an_absolute_2e_2():
    ref = np.full((2, 3), 100.0)
    assert status({"t": ref}, {"t": ref + 3e-2}, "llm.c") == {"t": "NOT OK"}  # 3e-4 of |ref|, still over
    assert status({"t": ref}, {"t": ref + 1e-2}, "llm.c") == {"t": "OK"}


def test_integer_tensors_must_match_exactly_whatever_the_tolerance():
    ref = np.array([[1, 2, 3]], np.int64)
    assert status({"ids": ref}, {"ids": np.array([[1, 2, 4]], np.int64)}, 10.0) == {"ids": "NOT OK"}
    result = parity.compare(parity.Trace({"ids": ref}), parity.Trace({"ids": ref.copy()}), 10.0)
    assert result.ok and result.rows[0].rule == "exact"


def test_overrides_beat_the_mapping_and_a_later_glob_beats_an_earlier_one():
    ref = np.ones((2, 2))
    cand = ref + 1e-3
    strict_map = {"tolerances": {"a": 1e-6}}
    assert status({"a": ref}, {"a": cand}, mapping=strict_map) == {"a": "NOT OK"}
    assert status({"a": ref}, {"a": cand}, mapping=strict_map, overrides={"a": 1e-2}) == {"a": "OK"}
    assert status({"a": ref}, {"a": cand}, overrides={"*": 1e-6, "a": 1e-2}) == {"a": "OK"}
    assert status({"a": ref}, {"a": cand}, overrides={"a": 1e-2, "*": 1e-6}) == {"a": "NOT OK"}


def test_cli_tolerance_name_equals_value_is_one_tensors_override(tmp_path, capsys):
    import json

    from refvit.cli import main

    ref = {"a": np.ones((2, 2)), "b": np.ones((2, 2))}
    np.savez(tmp_path / "ref.npz", **ref)
    np.savez(tmp_path / "cand.npz", **{k: v + 1e-3 for k, v in ref.items()})
    code = main(["compare", str(tmp_path / "ref.npz"), str(tmp_path / "cand.npz"), "--tolerance", "b=1e-2", "--json"])
    rows = {r["name"]: r["status"] for r in json.loads(capsys.readouterr().out)["rows"]}
    assert (code, rows) == (1, {"a": "NOT OK", "b": "OK"})  # a keeps the default (refvit: 1e-10 in float64)
    code = main(["compare", str(tmp_path / "ref.npz"), str(tmp_path / "cand.npz"), "--tolerance", "1e-2", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["verdict"] == "OK"
