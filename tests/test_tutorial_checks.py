"""The exercises' checker (tutorials/common.py) refuses wrong answers by itself, fast, without running a notebook.

The notebook runs (tests/test_tutorials.py) prove each exercise's check() rejects its recorded wrong answers through
`rejects()`; these tests pin what `check()` itself — the function the reader calls — accepts: the float32 bound
1e-4 · max(1, max|expected|) (docs/DESIGN.md §7), the shape, the relative bound, exact types for ints, tuples and
strings, a stub as "not attempted", and `first_divergence`'s execution order. Expected values come from the rule
itself (numbers picked on either side of the bound), not from a run of the helpers."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

COMMON = Path(__file__).resolve().parent.parent / "tutorials" / "common.py"


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("tutorials_common_under_test", COMMON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_accepts_the_answer_and_refuses_a_wrong_one(common, capsys):
    expected = np.array([[0.5, -2.0], [10.0, 3.0]])  # max|expected| = 10: the bound is 1e-3
    assert common.check("ex_right", lambda: expected + 9e-4, expected) is True
    assert "ex_right: correct" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="ex_wrong: max abs error"):
        common.check("ex_wrong", lambda: expected + np.array([[0, 0], [0, 1.1e-3]]), expected)
    assert "correct" not in capsys.readouterr().out


def test_check_bound_is_absolute_below_one(common):
    expected = np.array([0.01, -0.02])  # max|expected| < 1: the bound is 1e-4 itself, not 1e-4 · 0.02
    assert common.check("ex_small", lambda: expected + 9e-5, expected)
    with pytest.raises(AssertionError):
        common.check("ex_small", lambda: expected + 1.1e-4, expected)


def test_check_a_stub_is_not_attempted_not_correct(common, capsys):
    def stub():
        raise NotImplementedError

    assert common.check("ex_stub", stub, np.zeros(3)) is None
    out = capsys.readouterr().out
    assert "not attempted yet" in out and "correct" not in out


def test_check_refuses_another_shape_even_when_it_broadcasts(common):
    expected = np.zeros((2, 3))
    for wrong in (np.zeros((1, 3)), np.zeros(3), np.zeros((3, 2))):
        with pytest.raises(AssertionError, match="shape"):
            common.check("ex_shape", lambda: wrong, expected)


def test_check_relative_bound_tells_small_values_apart(common):
    expected = np.array([1e-6, 1.0])
    assert common.check("ex_rel", lambda: expected * (1 + 5e-4), expected, rtol=1e-3)
    with pytest.raises(AssertionError, match="relative error"):  # |Δ| = 1e-6 ≤ 1e-4, but 100 % off
        common.check("ex_rel", lambda: np.array([2e-6, 1.0]), expected, rtol=1e-3)


@pytest.mark.parametrize("got, expected", [(3.0, 3), ([1, 2], (1, 2)), ("q", "k"), (4, 3), ({1}, {1, 2}),
                                           (np.float64(3.0), 3), ("0.5", 0.5), (None, 0.5)])
def test_check_exact_answers_must_match_value_and_type(common, got, expected):
    with pytest.raises(AssertionError):
        common.check("ex_exact", lambda: got, expected)


def test_check_accepts_a_numpy_integer_for_an_int(common):
    assert common.check("ex_int", lambda: np.int64(7), 7)
    assert common.check("ex_tuple", lambda: (1, 2), (1, 2))


def test_rejects_uses_the_recorded_expectation(common):
    expected = np.array([1.0, 2.0])
    common.check("ex_rejects", lambda: expected, expected)

    def wrong():
        """off by 1e-2"""
        return expected + 1e-2

    def not_wrong():
        """within the bound"""
        return expected + 1e-5

    assert common.rejects("ex_rejects", wrong) is True
    with pytest.raises(AssertionError, match="accepts the wrong answer not_wrong"):
        common.rejects("ex_rejects", not_wrong)


def test_close_and_first_divergence_follow_the_reference_order(common):
    ref = {"a": np.ones(4), "b": np.full(4, 20.0), "c": np.zeros(4), "d": np.zeros(2)}
    mine = {"a": np.ones(4) + 5e-5, "b": np.full(4, 20.0) + 1.9e-3, "c": np.full(4, 2e-4), "d": np.ones(2)}
    assert common.close(mine["a"], ref["a"]) and common.close(mine["b"], ref["b"])  # b: bound 2e-3
    assert not common.close(mine["c"], ref["c"]) and not common.close(np.zeros(3), ref["c"])
    name, err = common.first_divergence(mine, ref)  # c and d both differ: c comes first in the reference
    assert name == "c" and err == pytest.approx(2e-4)
    assert common.first_divergence({"d": np.zeros(3)}, ref) == ("d", float("inf"))
    assert common.first_divergence({"a": ref["a"], "zz": np.ones(1)}, ref) == (None, 0.0)
