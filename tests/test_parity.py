"""The parity toolkit without torch: the trace format, refvit's traces against the golden tensors, compare's
numbers, tolerances, mappings and errors, and the `refvit trace` / `refvit compare` commands."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import refvit
from refvit import parity
from refvit.checkpoint import read_safetensors
from refvit.cli import main

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "golden" / "cases"
IMAGE = ROOT / "golden" / "images" / "chelsea_landscape.jpg"


def pixels(case, dtype="float32"):
    return np.load(CASES / case / "inputs.npz")["pixel_values"].astype(dtype)


@pytest.fixture(scope="module")
def deit_trace():
    return parity.capture(CASES / "deit_teacher", pixels("deit_teacher"), backend="numpy")


# ---- the format -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trace_round_trip_is_byte_identical(tmp_path, dtype):
    trace = parity.capture(CASES / "deit_teacher", pixels("deit_teacher", dtype), dtype=dtype, backend="numpy")
    trace.save(tmp_path / "a.safetensors")
    back = parity.Trace.load(tmp_path / "a.safetensors")
    back.save(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert back.names == trace.names and back.kinds == trace.kinds and back.modules == trace.modules
    assert back.meta == trace.meta
    for name in trace:
        assert back[name].dtype == trace[name].dtype and np.array_equal(back[name], trace[name])


def test_trace_is_plain_safetensors_in_execution_order(tmp_path, deit_trace):
    path = tmp_path / "t.safetensors"
    deit_trace.save(path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    names = [k for k in header if k != "__metadata__"]
    assert names == deit_trace.names and names[0] == "pixel_values"
    offsets = [header[k]["data_offsets"][0] for k in names]
    assert offsets == sorted(offsets)  # data laid out in execution order too
    meta = header["__metadata__"]
    assert meta["format"] == "refvit.trace" and json.loads(meta["order"]) == names
    for key in ("architecture", "dtype", "backend", "attention_implementation", "versions", "input_sha256", "model",
                "layer_norm_eps"):
        assert key in meta, key
    tensors = read_safetensors(path)  # refvit's own validating reader accepts it
    assert set(tensors) == set(names)


def test_trace_readable_by_the_safetensors_package(tmp_path, deit_trace):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is not installed")
    deit_trace.save(tmp_path / "t.safetensors")
    loaded = st.load_file(str(tmp_path / "t.safetensors"))
    assert all(np.array_equal(loaded[k], deit_trace[k]) for k in deit_trace)


def test_trace_layout_places_maps_and_hidden_states(deit_trace):
    names = deit_trace.names
    assert names.index("hidden_states.0") == names.index("deit.embeddings") + 1
    assert names.index("hidden_states.1") == names.index("deit.encoder.layer.0") + 1
    assert names.index("attentions.1") == names.index("deit.encoder.layer.1.attention.attention") - 1
    assert names[-3:] == ["logits", "cls_logits", "distillation_logits"]
    assert deit_trace.kind("attentions.0") == "attention" and deit_trace.kind("logits") == "output"
    assert deit_trace.module("attentions.0") == "deit.encoder.layer.0.attention.attention"
    assert deit_trace.meta["input_sha256"] == parity.trace.sha256_array(pixels("deit_teacher"))


def test_trace_records_hub_id_and_revision_of_a_cached_snapshot(tmp_path):
    snapshot = tmp_path / "hub" / "models--facebook--deit-tiny" / "snapshots" / ("0123abcd" * 5)
    shutil.copytree(CASES / "deit_teacher", snapshot)
    trace = parity.capture(snapshot, pixels("deit_teacher"), backend="numpy")
    assert trace.meta["hub_id"] == "facebook/deit-tiny" and trace.meta["revision"] == "0123abcd" * 5


def test_trace_records_pre_or_post_final_norm():
    trace = parity.capture(CASES / "vit_model", pixels("vit_model"), backend="numpy")
    assert trace.meta["hidden_states_last"].startswith("before the final norm")


def test_trace_errors(tmp_path, deit_trace):
    with pytest.raises(refvit.InputError, match="no tensor 'nope'"):
        deit_trace["nope"]
    with pytest.raises(refvit.InputError, match="no such trace file"):
        parity.Trace.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x01")
    with pytest.raises(refvit.RefvitError):
        parity.Trace.load(tmp_path / "junk.safetensors")
    with pytest.raises(refvit.InputError, match="dtype"):
        parity.Trace({"x": np.array(["a"])})
    from refvit.checkpoint import write_safetensors

    write_safetensors(tmp_path / "bad_order.safetensors", {"a": np.zeros(2)}, metadata={"order": '["b"]'})
    with pytest.raises(refvit.CheckpointError, match="order"):
        parity.Trace.load(tmp_path / "bad_order.safetensors")
    write_safetensors(tmp_path / "plain.safetensors", {"b": np.ones(2), "a": np.zeros(2)})
    assert parity.Trace.load(tmp_path / "plain.safetensors").names == ["a", "b"]  # no order list: header order


# ---- refvit's own traces against the framework's golden tensors --------------------------------------------------


@pytest.mark.parametrize("case", ["deit_teacher", "vit_classification", "beit_classification", "vit_mim",
                                  "data2vec_vision_segmentation", "cvt_classification", "bit_preact_model"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_refvit_trace_passes_against_golden(case, dtype):
    reference = parity.from_golden(CASES / case, dtype)
    call = {k: v for k, v in np.load(CASES / case / "inputs.npz").items() if k != "pixel_values"}  # bool_masked_pos
    ours = parity.capture(CASES / case, pixels(case, dtype), dtype=dtype, backend="numpy", **call)
    result = parity.compare(reference, ours)
    assert result.ok, parity.format_report(result)
    assert not [r.name for r in result.rows if r.status == "MISSING"]
    assert len(result.rows) > 20


# ---- compare's numbers ------------------------------------------------------------------------------------------


def two_traces():
    rng = np.random.default_rng(0)
    ref = {"pixel_values": rng.standard_normal((2, 3, 4, 4)), "a": rng.standard_normal((2, 5, 8)),
           "b": rng.standard_normal((2, 5, 8)), "logits": rng.standard_normal((2, 10))}
    return ref, {k: v.copy() for k, v in ref.items()}


def test_compare_statistics():
    ref, cand = two_traces()
    cand["b"][1, 2, 3] += 0.5
    cand["logits"][0] = -cand["logits"][0]  # row 0 ranked upside down
    result = parity.compare(parity.Trace(ref), parity.Trace(cand))
    rows = {r.name: r for r in result.rows}
    assert rows["a"].status == "OK" and rows["a"].max_abs == 0 and rows["a"].nmse == 0 and rows["a"].band == "exact"
    b = rows["b"]
    assert b.status == "NOT OK" and b.max_abs == pytest.approx(0.5)
    assert b.worst["index"] == [1, 2, 3] and b.worst["candidate"] - b.worst["reference"] == pytest.approx(0.5)
    assert b.rel == pytest.approx(0.5 / np.abs(ref["b"]).max())
    assert b.nmse == pytest.approx(0.25 / np.sum(ref["b"] ** 2))
    expected_cos = np.sum(ref["b"] * cand["b"]) / np.linalg.norm(ref["b"]) / np.linalg.norm(cand["b"])
    assert b.cosine == pytest.approx(expected_cos)
    assert result.first_divergence.name == "b"
    lg = rows["logits"]
    assert lg.top1 == 0.5  # row 1 unchanged, row 0's argmax moved
    assert lg.top5 == pytest.approx((0 + 1) / 2)  # 10 classes: the top 5 of -x are the bottom 5 of x
    assert result.block_of("b").verdict == "introduced"


def test_non_finite_candidate_is_not_ok():
    ref, cand = two_traces()
    cand["a"][0, 0, 0] = np.nan
    result = parity.compare(parity.Trace(ref), parity.Trace(cand), "llm.c")
    row = {r.name: r for r in result.rows}["a"]
    assert row.status == "NOT OK" and row.band == "wrong" and row.worst["index"] == [0, 0, 0]
    assert result.first_divergence.name == "a"


def test_parity_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, refvit.parity, refvit.cli; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_tolerance_presets_and_overrides():
    ref, cand = two_traces()
    cand["a"] = cand["a"] + 5e-4  # between transformers' 1e-4 and conversion's 1e-3
    R, C = parity.Trace(ref), parity.Trace(cand)
    status = lambda result: {r.name: r.status for r in result.rows}["a"]  # noqa: E731
    assert status(parity.compare(R, C, "refvit")) == "NOT OK"        # float64 both: 1e-10 · scale
    assert status(parity.compare(R, C, "transformers")) == "NOT OK"
    assert status(parity.compare(R, C, "conversion")) == "OK"
    assert status(parity.compare(R, C, "llm.c")) == "OK"
    assert status(parity.compare(R, C, 1e-3)) == "OK" and status(parity.compare(R, C, "1e-4")) == "NOT OK"
    assert status(parity.compare(R, C, "nmse")) == "NOT OK" and status(parity.compare(R, C, "nmse:1e-3")) == "OK"
    assert status(parity.compare(R, C, "refvit", overrides={"a": "conversion"})) == "OK"
    assert status(parity.compare(R, C, "refvit", overrides={"b*": 1e-3})) == "NOT OK"  # the glob does not match "a"
    f32 = parity.Trace({k: v.astype(np.float32) for k, v in ref.items()})
    assert status(parity.compare(f32, C, "refvit")) == "NOT OK"  # 1e-4 · max(1, max|ref|) in float32
    small = parity.Trace({**{k: v.astype(np.float32) for k, v in cand.items()},
                          "a": (ref["a"] + 5e-5).astype(np.float32)})
    assert status(parity.compare(f32, small, "refvit")) == "OK"
    for bad in ("bogus", "-1", "nmse:x"):
        with pytest.raises(refvit.InputError, match="tolerance"):
            parity.compare(R, C, bad)


def test_compare_mapping_fused_qkv_nhwc_and_transposed(tmp_path):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 5, 8)) for _ in range(3))
    conv = rng.standard_normal((1, 4, 3, 3))
    mlp = rng.standard_normal((1, 5, 16))
    ref = parity.Trace({"m.layer.0.q": q, "m.layer.0.k": k, "m.layer.0.v": v, "m.stem": conv, "m.layer.0.mlp": mlp})
    port = parity.Trace({"blocks.0.qkv": np.concatenate([q, k, v], -1), "stem_nhwc": conv.transpose(0, 2, 3, 1),
                         "blocks.0.mlp_t": mlp.transpose(0, 2, 1)})
    mapping = {"tensors": [
        {"candidate": "blocks.{i}.qkv", "split": {"axis": -1, "into": ["m.layer.{i}.q", "m.layer.{i}.k", "m.layer.{i}.v"]}},
        {"candidate": "stem_nhwc", "reference": "m.stem", "layout": "NHWC"},
        {"candidate": "blocks.{i}.mlp_t", "reference": "m.layer.{i}.mlp", "transpose": [0, 2, 1]}]}
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    result = parity.compare(ref, port, mapping=parity.load_mapping(tmp_path / "map.json"))
    assert result.ok and all(r.status == "OK" for r in result.rows) and not result.unmatched
    assert {r.name: r.candidate_name for r in result.rows}["m.layer.0.k"] == "blocks.0.qkv"
    # without the mapping the shapes differ: a SHAPE row, the first divergence, and the walk goes on
    shaped = parity.compare(ref, parity.Trace({"m.stem": conv.transpose(0, 2, 3, 1), "m.layer.0.q": q}))
    rows = {r.name: r for r in shaped.rows}
    assert rows["m.stem"].status == "SHAPE" and rows["m.stem"].candidate_shape == [1, 3, 3, 4]
    assert "layout" in rows["m.stem"].rule and rows["m.layer.0.q"].status == "OK"
    assert shaped.verdict == "NOT OK" and shaped.first_divergence.name == "m.stem"
    assert "SHAPE reference (1, 4, 3, 3), candidate (1, 3, 3, 4)" in parity.format_report(shaped)
    with pytest.raises(refvit.InputError, match="matches a reference name"):
        parity.compare(ref, port)
    for bad in ({"tensors": [{"candidate": "x"}]}, {"tensors": [{"candidate": "x", "reference": "y", "layout": "HW"}]},
                {"bogus": 1}, {"tolerances": {"a": "nope"}}):
        with pytest.raises(refvit.InputError):
            parity.check_mapping(bad)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(refvit.InputError, match="not valid JSON"):
        parity.load_mapping(tmp_path / "bad.json")


def test_imports_npz_directory_and_hidden_states(tmp_path, deit_trace):
    np.savez(tmp_path / "port.npz", **{k.replace(".", "/") if k.startswith("hidden") else k: v
                                       for k, v in deit_trace.items()})
    assert parity.compare(deit_trace, parity.load(tmp_path / "port.npz")).ok
    (tmp_path / "npy").mkdir()
    for name in ("pixel_values", "deit.embeddings", "logits"):
        np.save(tmp_path / "npy" / f"{name}.npy", deit_trace[name])
    result = parity.compare(deit_trace, parity.load(tmp_path / "npy"))
    assert result.verdict == "INCOMPLETE" and sum(r.status == "OK" for r in result.rows) == 3  # 3 of many
    result = parity.compare(deit_trace, parity.load(tmp_path / "npy"), allow_missing=True)
    assert result.ok and result.partial and sum(r.status == "OK" for r in result.rows) == 3
    hs = parity.from_hidden_states(tuple(deit_trace[f"hidden_states.{i}"] for i in range(3)))
    assert parity.compare(deit_trace, hs, only="hidden_states.*").ok and hs.kind("hidden_states.2") == "hidden_state"
    with pytest.raises(refvit.InputError):
        parity.load(tmp_path / "nothing.npz")


# ---- the commands --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("deit") / "deit"
    shutil.copytree(CASES / "deit_teacher", d)
    (d / "preprocessor_config.json").write_text(json.dumps({"feature_extractor_type": "DeiTFeatureExtractor",
                                                            "size": 36, "crop_size": 32}))
    return d


def test_cli_trace_and_compare(tmp_path, model_dir, capsys):
    np.save(tmp_path / "x.npy", pixels("deit_teacher", "float64"))
    assert main(["trace", str(model_dir), str(tmp_path / "x.npy"), "--out", str(tmp_path / "ours.safetensors"),
                 "--dtype", "float64", "--backend", "numpy"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["compare", str(CASES / "deit_teacher"), str(tmp_path / "ours.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "OK: every compared tensor is within tolerance" in out and "0 NOT OK" in out
    # a port with one wrong module: exit 1, first divergence named, JSON too
    trace = parity.Trace.load(tmp_path / "ours.safetensors")
    bad = dict(trace.items())
    bad["deit.encoder.layer.1.layernorm_after"] = bad["deit.encoder.layer.1.layernorm_after"] * 1.01
    parity.Trace(bad).save(tmp_path / "bad.safetensors")
    assert main(["compare", str(tmp_path / "ours.safetensors"), str(tmp_path / "bad.safetensors")]) == 1
    out = capsys.readouterr().out
    assert "FIRST DIVERGENCE: deit.encoder.layer.1.layernorm_after" in out and "NOT OK  <-- first divergence" in out
    assert main(["compare", str(tmp_path / "ours.safetensors"), str(tmp_path / "bad.safetensors"), "--json",
                 "--tolerance", "refvit", "--tolerance", "deit.encoder.layer.1.layernorm_after=0.1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["first_divergence"] is None and len(report["rows"]) == len(trace)


def test_cli_trace_image_through_the_processor(tmp_path, model_dir):
    assert main(["trace", str(model_dir), str(IMAGE), "--out", str(tmp_path / "t.safetensors"),
                 "--backend", "numpy"]) == 0
    trace = parity.Trace.load(tmp_path / "t.safetensors")
    proc = refvit.ImageProcessor.from_pretrained(model_dir)
    assert np.array_equal(trace["pixel_values"], proc(refvit.load_image(IMAGE))["pixel_values"])
    assert trace.meta["processor_config_sha256"] and trace.meta["input"] == IMAGE.name


def test_cli_errors_are_one_line(tmp_path, model_dir, capsys):
    assert main(["trace", str(model_dir), str(tmp_path / "missing.png"), "--out", str(tmp_path / "t.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # a progress line, then the error on one line
    assert err[-1].startswith("refvit trace: InputError:") and "missing.png" in err[-1]
    assert sum("Error" in line for line in err) == 1
    assert main(["trace", str(CASES / "deit_teacher"), str(IMAGE), "--out", str(tmp_path / "t.safetensors")]) == 2
    assert "preprocessor_config.json" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", pixels("deit_teacher"))
    assert main(["compare", str(CASES / "deit_teacher"), str(tmp_path / "x.npy"), "--tolerance", "huge"]) == 2
    assert "tolerance" in capsys.readouterr().err


# ---- the porting guide's walk-through (docs/porting.md): a NumPy port with one planted bug (tutorials/port/) ---------------------------------


def load_port():
    import importlib.util

    spec = importlib.util.spec_from_file_location("vit_port", ROOT / "tutorials" / "port" / "vit_port.py")
    port = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(port)
    return port


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_readme_port_walk_through(tmp_path, monkeypatch, capsys, dtype):
    model = ROOT / "golden" / "models" / "digits-vit"
    ref = tmp_path / "ref.safetensors"
    assert main(["trace", str(model), str(ROOT / "tutorials" / "port" / "digit.png"), "--out", str(ref),
                 "--dtype", dtype, "--backend", "numpy"]) == 0
    port = load_port()
    assert port.main([str(model), str(ref), "--out", str(tmp_path / "port.npz")]) == 0
    names = str(ROOT / "tutorials" / "port" / "names.json")
    capsys.readouterr()
    assert main(["compare", str(ref), str(tmp_path / "port.npz"), "--map", names]) == 1
    out = capsys.readouterr().out
    assert "FIRST DIVERGENCE: vit.encoder.layer.0.intermediate (step 11, module), from candidate tensor " \
           "blocks.0.mlp.act" in out
    assert "block vit.encoder.layer.0: INTRODUCED" in out
    # the fix: exact (erf) GELU, as config.json's hidden_act="gelu" says
    from scipy.special import erf

    monkeypatch.setattr(port, "gelu", lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))))
    assert port.main([str(model), str(ref), "--out", str(tmp_path / "fixed.npz")]) == 0
    assert main(["compare", str(ref), str(tmp_path / "fixed.npz"), "--map", names]) == 0
    assert "OK: every compared tensor is within tolerance" in capsys.readouterr().out
