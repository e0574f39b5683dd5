"""`refvit precision`'s verdicts: the top-1 agreement is the share of images whose reduced-precision class equals the
float32 class, and the keep-fp32 search stops when the target is reached (not before, not after), keeps modules by
the error they introduced, never drops a module the target needs, and says "not reached" when it is not.

The search is driven by planted agreement functions over synthetic module rows (which modules the target needs is
known by construction); the agreement test plants an "emulated" model that always answers class 1, so the expected
agreement is the share of float32 predictions that are 1, counted here from the float32 logits."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import refvit
from refvit import precision, precision_lab
from refvit.verify import digits_pixel_values

DIGITS = Path(__file__).resolve().parents[1] / "golden" / "models"


def rows(**introduced):
    return [{"module": m, "kernel": "linear", "emulated": True, "introduced": v, "weights": 10}
            for m, v in introduced.items()]


def search(rows_, agreement, target=99.5, base=None, max_steps=100, fmt="fp16"):
    calls = []

    def counted(keep):
        calls.append(tuple(keep))
        return agreement(set(keep))
    base = agreement(set()) if base is None else base
    found = precision_lab.keep_search(rows_, precision.check_arithmetic(fmt), counted, base, target, max_steps)
    return found, calls


def test_search_keeps_by_introduced_error_and_stops_at_the_target():
    table = rows(a=1e-6, b=5e-3, c=1e-4, d=2e-2)
    found, calls = search(table, lambda keep: 100.0 if {"d", "b"} <= keep else 50.0)
    assert [s["module"] for s in found["steps"] if s["action"] == "keep"] == ["d", "b"]  # largest first, then stop
    assert calls[:2] == [("d",), ("d", "b")]
    assert found["reached"] and sorted(found["set"]) == ["b", "d"] and found["agreement"] == 100.0
    assert found["weights_in_float32"] == 20 and found["weights_fraction_in_float32"] == pytest.approx(0.5)


def test_search_never_drops_a_module_the_target_needs():
    table = rows(a=4e-2, b=3e-2, c=2e-2, d=1e-2)
    found, _ = search(table, lambda keep: 100.0 if {"a", "c"} <= keep else 60.0)
    assert found["reached"] and sorted(found["set"]) == ["a", "c"] and found["agreement"] == 100.0
    assert [s["module"] for s in found["steps"] if s["action"] == "drop"] == ["b"]
    assert all(s["agreement"] >= 99.5 for s in found["steps"] if s["action"] == "drop")


def test_target_reached_exactly_counts_as_reached():
    found, calls = search(rows(a=2e-2, b=1e-2), lambda keep: 100.0 if "a" in keep else 90.0, target=100.0)
    assert found["reached"] and found["set"] == ["a"] and calls == [("a",)]


def test_a_base_that_meets_the_target_keeps_nothing():
    found, calls = search(rows(a=2e-2, b=1e-2), lambda keep: 99.7)
    assert found["reached"] and found["set"] == [] and found["steps"] == [] and calls == []


def test_an_unreachable_target_is_reported_as_not_reached():
    found, _ = search(rows(a=2e-2, b=1e-2, c=5e-3), lambda keep: 80.0 + 5 * len(keep))
    assert not found["reached"] and found["agreement"] == 95.0 and sorted(found["set"]) == ["a", "b", "c"]
    assert not any(s["action"] == "drop" for s in found["steps"])


def test_max_steps_bounds_the_search():
    found, calls = search(rows(a=4e-2, b=3e-2, c=2e-2, d=1e-2), lambda keep: 50.0, max_steps=2)
    assert len(calls) == 2 and not found["reached"] and found["set"] == ["a", "b"]


def test_top1_agreement_is_the_share_of_matching_float32_classes(monkeypatch):
    model = refvit.from_pretrained(DIGITS / "digits-vit", backend="numpy")
    x = digits_pixel_values(DIGITS / "digits-vit", 12)[0]
    truth = model(x).logits.argmax(-1)
    assert 0 < (truth == 1).sum() < len(truth), "the images must include class 1 and others"
    real = precision_lab.emulate

    def always_class_1(*args, **kwargs):
        emulated = real(*args, **kwargs)

        def forward(pixels):
            logits = np.zeros((len(pixels), 10), np.float32)
            logits[:, 1] = 1.0
            return SimpleNamespace(logits=logits)
        return _Fixed(emulated, forward)

    monkeypatch.setattr(precision_lab, "emulate", always_class_1)
    report = precision_lab.analyse(model, x, "bf16", batch=4, probe=1)
    assert report["agreement"] == pytest.approx(100.0 * float(np.mean(truth == 1)))


class _Fixed:
    """An emulated model whose module profile is the real one and whose logits always pick class 1."""

    def __init__(self, emulated, forward):
        self.profile, self._forward = emulated.profile, forward

    def __call__(self, pixels):
        return self._forward(pixels)
