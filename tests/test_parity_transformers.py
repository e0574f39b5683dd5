"""Capturing traces from transformers: forward hooks on named_modules, transformers 5's renamed modules
under checkpoint names, eager attention; the debugger's output and an output_hidden_states tuple imported.
Each test needs torch + transformers and skips (with the reason) when they are missing."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

import refvit
from refvit import parity
from refvit.cli import main

pytestmark = pytest.mark.needs_framework  # every test here runs transformers (CI stage 2 runs them all)

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "golden" / "cases"


def framework():
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("needs torch and transformers (pip install '.[golden]')")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return torch, transformers


def pixels(case, dtype="float32"):
    return np.load(CASES / case / "inputs.npz")["pixel_values"].astype(dtype)


@pytest.mark.parametrize("case", ["deit_teacher", "vit_classification", "beit_classification",
                                  "data2vec_vision_segmentation", "cvt_classification", "bit_bottleneck"])
def test_capture_transformers_equals_golden(case):
    """The golden float64 run keeps the softmax in float64 as capture_transformers does: compared at refvit's
    float64 tolerance (1e-10·scale). float32 torch differs across CPUs at ~1e-5 relative: refvit's float32 tolerance."""
    framework()
    for dtype in ("float64", "float32"):
        trace = parity.capture_transformers(CASES / case, pixels(case), dtype=dtype)
        result = parity.compare(parity.from_golden(CASES / case, dtype), trace)
        assert result.ok, parity.format_report(result)
        assert not [r.name for r in result.rows if r.status == "MISSING"] and not result.unmatched
        assert trace.meta["source"] == "transformers" and trace.meta["dtype"] == dtype
        assert trace.meta["attention_implementation"].startswith("eager")
    # the same names as refvit's intermediates (checkpoint names, not transformers 5's renamed modules)
    ours = refvit.from_pretrained(CASES / case, backend="numpy")(pixels(case), output_intermediates=True).intermediates
    assert set(ours) <= set(trace.names)


def test_capture_transformers_leaves_the_model_as_it_was():
    torch, transformers = framework()
    model = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(CASES / "deit_teacher").eval()
    before = model.config._attn_implementation
    registry = dict(transformers.AttentionInterface._global_mapping)
    trace = parity.capture_transformers(model, pixels("deit_teacher"), dtype="float64")  # on a float64 copy
    assert model.dtype == torch.float32 and model.config._attn_implementation == before
    assert dict(transformers.AttentionInterface._global_mapping) == registry
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert trace["logits"].dtype == np.float64 and "attentions.1" in trace  # eager for the call: maps recorded
    assert parity.compare(parity.from_golden(CASES / "deit_teacher", "float64"), trace).ok


def test_import_debugger_output(tmp_path):
    torch, transformers = framework()
    from transformers import model_addition_debugger_context

    model = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(
        CASES / "deit_teacher", attn_implementation="eager").eval()
    with model_addition_debugger_context(model, debug_path=str(tmp_path), do_prune_layers=False, use_repr=False):
        model(pixel_values=torch.from_numpy(pixels("deit_teacher")))
    trace = parity.load(tmp_path)
    result = parity.compare(parity.from_golden(CASES / "deit_teacher", "float32"), trace,
                            allow_missing=True)  # the debugger keeps no attention maps or hidden states
    assert result.ok, parity.format_report(result)
    compared = {r.name for r in result.rows if r.status == "OK"}
    assert {"pixel_values", "deit.embeddings", "deit.encoder.layer.0.attention.attention.query",
            "deit.encoder.layer.0.attention.attention", "deit.encoder.layer.1", "cls_classifier"} <= compared


def test_import_output_hidden_states_tuple():
    torch, transformers = framework()
    model = transformers.ViTForImageClassification.from_pretrained(CASES / "vit_classification").eval()
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixels("vit_classification")), output_hidden_states=True)
    trace = parity.from_hidden_states(out.hidden_states, outputs={"logits": out.logits})
    result = parity.compare(parity.from_golden(CASES / "vit_classification", "float32"), trace,
                            allow_missing=True)  # hidden states and logits only, on purpose
    assert result.ok and sum(r.status == "OK" for r in result.rows) == len(out.hidden_states) + 1


def test_cli_trace_with_the_framework(tmp_path):
    framework()
    np.save(tmp_path / "x.npy", pixels("cvt_classification"))
    out = tmp_path / "ref.safetensors"
    assert main(["trace", str(CASES / "cvt_classification"), str(tmp_path / "x.npy"), "--out", str(out),
                 "--framework", "transformers", "--dtype", "float64"]) == 0
    assert main(["compare", str(CASES / "cvt_classification"), str(out)]) == 0
    assert parity.Trace.load(out).meta["versions"]["transformers"]
