"""Reduced-precision emulation (refvit/precision.py): rounding bit for bit, the format reaching every module output,
ONNX Runtime's int8 arithmetic by hand, the float32 model untouched, bad input. No torch here (the comparisons with
torch bf16 and ONNX Runtime are in test_precision_framework.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import refvit
from refvit import parity, precision
from refvit.cli import main
from refvit.verify import digits_pixel_values

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "golden" / "models"


def bf16_oracle(x: np.ndarray) -> np.ndarray:
    """Nearest bfloat16 by comparing the two neighbours in float64 (ties to the even mantissa): independent of the
    bit trick under test."""
    u = x.view(np.uint32)
    lo = (u & np.uint32(0xFFFF0000)).view(np.float32).astype(np.float64)           # truncated toward zero
    hi_bits = (u & np.uint32(0xFFFF0000)) + np.uint32(0x10000)
    hi = hi_bits.view(np.float32).astype(np.float64)                                # next one away from zero
    d_lo, d_hi = np.abs(x.astype(np.float64) - lo), np.abs(hi - x.astype(np.float64))
    lo_even = ((u >> np.uint32(16)) & np.uint32(1)) == 0
    pick_lo = (d_lo < d_hi) | ((d_lo == d_hi) & lo_even)
    return np.where(pick_lo, lo, hi).astype(np.float32)


def test_bf16_rounding_matches_the_nearest_even_oracle():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 20000),
                        # exact ties: the 16 dropped bits are 0x8000
                        ((rng.integers(0, 2 ** 31, 2000, dtype=np.uint32) & np.uint32(0x7F7F0000)) |
                         np.uint32(0x8000)).view(np.float32)]).astype(np.float32)
    x = x[np.isfinite(x)]
    assert np.array_equal(precision.round_bf16(x).view(np.uint32), bf16_oracle(x).view(np.uint32))


def test_bf16_rounding_by_hand():
    r = precision.round_bf16
    one = np.float32(1)
    assert r(np.float32(1 + 2 ** -8)) == one                            # tie -> even (1.0)
    assert r(np.float32(1 + 3 * 2 ** -8)) == np.float32(1 + 2 ** -6)     # tie -> even (the upper neighbour)
    assert r(np.float32(1 + 2 ** -8 + 2 ** -20)) == np.float32(1 + 2 ** -7)  # above the tie -> up
    assert r(np.float32(-(1 + 3 * 2 ** -8))) == np.float32(-(1 + 2 ** -6))
    assert np.isposinf(r(np.finfo(np.float32).max)) and np.isneginf(r(-np.finfo(np.float32).max))
    assert np.isnan(r(np.float32("nan")))
    bits = lambda b: np.array([b], np.uint32).view(np.float32)           # noqa: E731
    assert r(bits(0x7F7F7FFF)).view(np.uint32)[0] == 0x7F7F0000           # below the tie: the largest finite bf16
    assert np.isposinf(r(bits(0x7F7F8000)))[0]                            # the tie: 0x7F7F is odd -> up -> inf


def test_fp16_rounding_by_hand():
    r = precision.round_fp16
    assert r(np.float32(65519)) == 65504 and np.isposinf(r(np.float32(65520)))   # 65520 ties to 65536 = inf
    assert r(np.float32(1 + 2 ** -11)) == 1 and r(np.float32(1 + 3 * 2 ** -11)) == np.float32(1 + 2 ** -9)
    assert r(np.float32(2 ** -24)) == np.float32(2 ** -24) and r(np.float32(2 ** -26)) == 0   # subnormals kept


def in_format(a: np.ndarray, fmt: str) -> bool:
    a = np.asarray(a, np.float32)
    a = a[np.isfinite(a)]
    if fmt == "bf16":
        return not np.any(a.view(np.uint32) & np.uint32(0xFFFF))
    return np.array_equal(a.astype(np.float16).astype(np.float32), a)


@pytest.fixture(scope="module")
def vit():
    model = refvit.from_pretrained(DIGITS / "digits-vit")
    x, labels = digits_pixel_values(DIGITS / "digits-vit", 8)
    return model, x


@pytest.mark.parametrize("family", ["vit", "deit", "beit", "cvt", "bit"])
@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_every_module_output_is_in_the_format(family, fmt):
    model = refvit.from_pretrained(DIGITS / f"digits-{family}")
    x, _ = digits_pixel_values(DIGITS / f"digits-{family}", 2)
    before = model(x, output_intermediates=True)
    emulated = precision.emulate(model, fmt)
    out = emulated(x, output_intermediates=True, output_hidden_states=True)
    assert out.intermediates and all(in_format(v, fmt) for v in out.intermediates.values())
    assert all(in_format(h, fmt) for h in out.hidden_states) and in_format(out.logits, fmt)
    assert type(out.logits) is np.ndarray                                 # plain arrays come back
    assert not np.array_equal(out.logits, before.logits)                  # it did change something
    after = model(x, output_intermediates=True)                           # the float32 model is untouched
    assert np.array_equal(after.logits, before.logits)
    assert all(np.array_equal(after.intermediates[k], v) for k, v in before.intermediates.items())


def test_int8_linear_is_ort_integer_arithmetic_by_hand():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 16)).astype(np.float32)
    w = rng.standard_normal((7, 16)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    # ONNX DynamicQuantizeLinear and ORT's symmetric int8 weights, written out from their definitions
    lo, hi = min(x.min(), 0), max(x.max(), 0)
    sx = np.float32((hi - lo) / np.float32(255))
    zp = int(np.clip(np.rint(-lo / sx), 0, 255))
    xq = np.clip(np.rint(x / sx) + zp, 0, 255).astype(np.int64)
    sw = np.float32(2 * float(np.abs(w).max()) / 254)
    wq = np.clip(np.rint(w / sw), -128, 127).astype(np.int64)
    acc = (xq - zp) @ wq.T                                                 # int64, exact
    expected = acc.astype(np.float32) * np.float32(sx * sw) + b
    emu = precision.Emulator(refvit.kernels.get("numpy"), precision.check_arithmetic("int8-dynamic"), "vit")
    got = precision.int8_kernel("linear", emu, (x, w, b), {})
    assert np.array_equal(got, expected)


def test_int8_quantizers_by_hand():
    q, s = precision.dynamic_quantize(np.array([-1.0, 0.0, 2.0], np.float32))
    assert s == np.float32(3 / 255) and list(q) == [-85, 0, 170]          # zero point 85: q = [0, 85, 255]
    q, s = precision.quantize_weight(np.array([-0.5, 0.25, 1.0], np.float32))
    assert s == np.float32(1 / 127) and list(q) == [-64, 32, 127]        # -63.5 ties to even (-64); 31.75 -> 32
    q, s = precision.quantize_weight(np.array([[1.0, -0.5], [0.1, 0.2]], np.float32), per_channel=True)
    assert s.ravel().tolist() == [np.float32(1 / 127), np.float32(0.2 / 127)] and q[1].tolist() == [64, 127]


def test_int8_changes_exactly_the_linear_and_conv_modules(vit):
    model, x = vit
    out, calls = precision.emulate(model, "int8-dynamic").profile(x)
    kinds = {c.kernel for c in calls if c.emulated}
    assert kinds == {"linear"}                                             # ViT: patch embedding (as a GEMM) + Linears
    names = [c.name for c in calls if c.emulated]
    assert "vit.embeddings.patch_embeddings" in names and "classifier" in names
    assert "vit.encoder.layer.0.attention.attention.query" in names
    assert not any(c.emulated for c in calls if c.kernel in ("attention", "layer_norm", "gelu"))


def test_int8_scales_are_per_call(vit):
    model, x = vit
    emu = precision.emulate(model, "int8-dynamic")
    alone = np.concatenate([emu(x[i:i + 1]).logits for i in range(len(x))])
    together = emu(x).logits
    assert not np.array_equal(alone, together)                            # one scale per call and tensor


def test_keep_fp32_runs_those_modules_in_float32(vit):
    model, x = vit
    full = precision.emulate(model, "fp16")(x, output_intermediates=True).intermediates
    kept = precision.emulate(model, "fp16", keep_fp32=["classifier"])(x, output_intermediates=True).intermediates
    assert np.array_equal(full["vit.layernorm"], kept["vit.layernorm"])
    assert in_format(full["classifier"], "fp16") and not in_format(kept["classifier"], "fp16")


def test_fp16_overflow_gives_inf_and_strict_layer_norm_overflows():
    r = precision.round_fp16
    x = r(np.linspace(-600, 600, 64, dtype=np.float32)[None])            # |x − mean|² up to 3.6e5 > 65504
    w, b = np.ones(64, np.float32), np.zeros(64, np.float32)
    strict = precision.strict_layer_norm(r, x, w, b, 1e-5)
    assert not np.isfinite(strict).all() or np.all(strict == 0)           # variance overflowed to inf
    conventional = refvit.kernels.get("numpy").layer_norm(x, w, b, 1e-5)
    assert np.isfinite(conventional).all()
    emu = precision.Emulator(refvit.kernels.get("numpy"), precision.check_arithmetic("fp16"), "vit")
    big = np.full((1, 2, 4), 200.0, np.float32)
    y = precision.reduced_kernel("linear", emu, (big, np.full((3, 4), 100.0, np.float32)), {})
    assert np.isposinf(y).all()                                           # 80000 > 65504


def test_accumulate_in_fp16_differs_from_fp32(vit):
    model, x = vit
    a = precision.emulate(model, "fp16")(x).logits
    b = precision.emulate(model, "fp16", accumulate="fp16")(x).logits
    assert in_format(b, "fp16") and not np.array_equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    ({"format": "fp8"}, "unknown format"),
    ({"format": "bf16", "accumulate": "fp8"}, "unknown accumulation"),
    ({"format": "bf16", "accumulate": "fp16"}, "fp32 or in the format"),
    ({"format": "int8-dynamic", "strict": True}, "--strict applies"),
    ({"format": "fp16", "per_channel": True}, "--per-channel applies"),
])
def test_bad_arithmetic(vit, kwargs, message):
    with pytest.raises(refvit.RefvitError, match=message):
        precision.emulate(vit[0], **kwargs)


def test_bad_modules(vit):
    model, x = vit
    with pytest.raises(refvit.RefvitError, match="names no module"):
        precision.emulate(model, "bf16", keep_fp32=["vit.encoder.layer.99.output"])(x)
    with pytest.raises(refvit.RefvitError, match="cannot quantize .*layernorm_before \\(layer_norm\\)"):
        precision.emulate(model, "int8-dynamic", keep_fp32=["vit.encoder.layer.0.layernorm_before"])(x)
    with pytest.raises(refvit.RefvitError, match="float32 model"):
        precision.emulate(refvit.from_pretrained(DIGITS / "digits-vit", dtype="float64"), "bf16")


def test_trace_cli_records_the_arithmetic(tmp_path, vit):
    model, x = vit
    np.save(tmp_path / "x.npy", x[:2])
    out = tmp_path / "t.safetensors"
    assert main(["trace", str(DIGITS / "digits-vit"), str(tmp_path / "x.npy"), "--precision", "bf16",
                 "--out", str(out)]) == 0
    t = parity.Trace.load(out)
    assert t.meta["precision"] == "bf16" and "float32" in t.meta["arithmetic_model"]
    assert in_format(t["logits"], "bf16")
    ref = parity.capture(refvit.from_pretrained(DIGITS / "digits-vit", dtype="float64"), x[:2].astype(np.float64))
    result = parity.compare(ref, t, tolerance="nmse:1e-3")
    assert result.ok and not parity.compare(ref, t).ok                    # bf16 error: far above float32's
    assert main(["trace", str(DIGITS / "digits-vit"), str(tmp_path / "x.npy"), "--precision", "fp8",
                 "--out", str(out)]) == 2                                 # argparse's choices: usage, exit 2
    assert main(["trace", str(DIGITS / "digits-vit"), str(tmp_path / "x.npy"), "--precision", "bf16", "--dtype",
                 "float64", "--out", str(out)]) == 2
    assert json.dumps(t.meta)


def test_precision_command_table_agreement_and_keep_search(tmp_path, vit, capsys):
    from refvit import precision_lab

    model, x = vit
    report = precision_lab.analyse(model, x, "fp16", batch=8, probe=2)
    rows = {r["module"]: r for r in report["modules"]}
    assert rows["classifier"]["kernel"] == "linear" and rows["vit.encoder.layer.0.layernorm_before"]["nmse"] > 0
    assert all(r["over_fp16"] == 0 and r["nonfinite"] == 0 for r in rows.values())   # digits stay far from 65504
    assert report["agreement"] == 100.0
    # a search that must act: agreement of a planted model where the classifier alone flips predictions
    calls = {"n": 0}

    def agreement(keep):
        calls["n"] += 1
        return 100.0 if "classifier" in keep else 50.0
    found = precision_lab.keep_search(report["modules"], precision.check_arithmetic("fp16"), agreement, 50.0, 99.5, 100)
    assert found["reached"] and found["set"] == ["classifier"]                 # everything else dropped again
    assert [s["module"] for s in found["steps"] if s["action"] == "keep"][-1] == "classifier"
    np.save(tmp_path / "x.npy", x)
    assert main(["precision", str(DIGITS / "digits-vit"), str(tmp_path / "x.npy"), "--format", "bf16", "--json",
                 "--keep-fp32", "auto", "--report", str(tmp_path / "r.html")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["keep_fp32"]["reached"] and out["modules"] and (tmp_path / "r.html").read_text().startswith("<!")
    assert main(["precision", str(DIGITS / "digits-vit"), str(tmp_path / "x.npy"), "--format", "int8-dynamic",
                 "--keep-fp32", "vit.layernorm"]) == 2


# every family through both commands: ViT, DeiT, BEiT, CvT, BiT (the digits models; data2vec-vision's segmentation
# model, BEiT's encoder with the UperNet head, in the naming test below: through the commands it takes ~30 s)
FAMILY_MODELS = ["digits-vit", "digits-deit", "digits-beit", "digits-cvt", "digits-bit"]


def family_pixels(name: str, n: int = 2) -> np.ndarray:
    if name.startswith("digits-"):
        return digits_pixel_values(DIGITS / name, n)[0]
    size = json.loads((DIGITS / name / "config.json").read_text())["image_size"]
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_trace_and_precision_commands_on_every_family(tmp_path, name, capsys):
    model_dir = str(DIGITS / name)
    np.save(tmp_path / "x.npy", family_pixels(name))
    for fmt in ("bf16", "fp16", "int8-dynamic"):
        out = tmp_path / f"{fmt}.safetensors"
        assert main(["trace", model_dir, str(tmp_path / "x.npy"), "--precision", fmt, "--out", str(out)]) == 0
        t = parity.Trace.load(out)
        assert t.meta["precision"] == fmt and np.isfinite(t["logits"]).all()
        if fmt != "int8-dynamic":
            assert in_format(t["logits"], fmt)
        capsys.readouterr()
        assert main(["precision", model_dir, str(tmp_path / "x.npy"), "--format", fmt, "--batch", "2",
                     "--probe-images", "2", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        names = [r["module"] for r in report["modules"]]
        assert len(names) == len(set(names)) and report["images"] == 2 and 0 <= report["agreement"] <= 100
        # every row named by its module (or the step's name under it), never `path:2` or a bare kernel name
        assert not [n for n in names if ":" in n or n in {r["kernel"] for r in report["modules"]}], names
        changed = [r for r in report["modules"] if r["emulated"]]
        assert changed and any(r["nmse"] > 0 for r in changed)


def test_kernels_the_family_code_calls_itself_are_named_by_their_step():
    names = {c.name: c.kernel for c in precision.emulate(refvit.from_pretrained(DIGITS / "digits-bit"), "bf16")
             .profile(family_pixels("digits-bit"))[1]}
    assert names["bit.encoder.stages.0.layers.0.norm2"] == "group_norm_act" and names["bit.norm"] == "group_norm_act"
    assert names["bit.embedder.pooler"] == "max_pool2d"
    model = refvit.from_pretrained(DIGITS / "segment-data2vec")
    calls = precision.emulate(model, "fp16").profile(family_pixels("segment-data2vec", 1))[1]
    names = {c.name: c.kernel for c in calls}
    assert len(names) == len(calls) and not [n for n in names if ":" in n]
    layer = "data2vec_vision.encoder.layer.0.attention.attention."
    assert names[layer + "relative_position_bias"] == "relative_position_bias"
    assert names["fpn1.0"] == "conv_transpose2d" and names["fpn4"] == "max_pool2d"
    assert names["decode_head.psp_modules.blocks.1.pooling"] == "adaptive_avg_pool2d"
    assert names["decode_head.laterals.3.interpolate"] == names["decode_head.fpn_outs.1.interpolate"] == \
        "interpolate_bilinear"
    digits = refvit.from_pretrained(DIGITS / "digits-vit")             # interpolated position embeddings
    x = np.random.default_rng(1).standard_normal((1, 3, 48, 48)).astype(np.float32)
    names = {c.name for c in precision.emulate(digits, "bf16").profile(x, interpolate_pos_encoding=True)[1]}
    assert "vit.embeddings.interpolate_pos_encoding" in names


# ---- on Dask: the same report, field by field --------------------------------------------------------------------

needs_dask = pytest.mark.skipif(not __import__("refvit.batch").batch.dask_available(),
                                reason="dask.distributed is not installed (pip install \"refvit[dask]\")")
FLIPPED = 22   # the test digit digits-vit's int8-dynamic emulation (16 images per call) classifies unlike float32


def digits_folder(root: Path, first: int = 16, count: int = 32) -> Path:
    """Test digits first … first+count-1 as root/<NNNN>.png (a flat folder, read in that order), FLIPPED among them."""
    from refvit.datasets import digit_image

    root.mkdir(parents=True)
    with np.load(DIGITS / "digits_test.npz") as z:
        for i in range(first, first + count):
            digit_image(z["images"][i]).save(root / f"{i:04d}.png")
    return root


@needs_dask
def test_two_dask_workers_give_the_in_process_report(tmp_path, capsys):
    """`refvit precision --workers 2` (a LocalCluster of two processes) against the in-process run on 32 digits read
    from PNGs, in two parts of 16 (one per worker), one image of which int8 flips, so the keep-fp32 search has steps
    to run on the workers too."""
    from refvit.precision_lab import part_size

    assert part_size(32, [16, 16], 4 * 2) == 16                          # two parts: each worker gets one
    data = digits_folder(tmp_path / "digits")
    args = ["precision", str(DIGITS / "digits-vit"), str(data), "--format", "int8-dynamic", "--batch", "16",
            "--keep-fp32", "auto", "--target", "100", "--probe-images", "3", "--json"]
    assert main(args) == 0
    local = json.loads(capsys.readouterr().out)
    assert main(args + ["--workers", "2"]) == 0
    dask = json.loads(capsys.readouterr().out)
    assert local["agreement"] == 100 * 31 / 32 and local["keep_fp32"]["steps"] and local["keep_fp32"]["reached"]
    assert local.keys() == dask.keys()
    for key in local:
        assert local[key] == dask[key], key     # modules (every statistic), agreement, every search step, the set


@needs_dask
def test_dask_client_through_the_python_api_with_pixel_arrays(vit):
    """`precision_lab.analyse(..., client=)` with pixel values in memory: the parts are scattered to the workers."""
    from distributed import Client

    from refvit import precision_lab

    model, x = vit
    local = precision_lab.analyse(model, x, "bf16", batch=3, probe=2)
    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        dask = precision_lab.analyse(model, x, "bf16", batch=3, probe=2, client=client)
    assert precision_lab.part_size(len(x), [16, 3], 8) % 48 == 0        # parts end where a call of either size ends
    for key in local:
        if key != "comparison":
            assert local[key] == dask[key], key
    assert [b.verdict for b in local["comparison"].blocks] == [b.verdict for b in dask["comparison"].blocks]
    import copy

    unsaved = copy.copy(model)
    unsaved.source = ""                                  # workers could not load it: said before any cluster starts
    with pytest.raises(refvit.RefvitError, match="workers load the model from its directory"):
        precision_lab.analyse(unsaved, x, "bf16", workers=2)


def test_without_dask_workers_are_a_clear_error(monkeypatch, tmp_path, vit, capsys):
    from refvit import batch

    model, x = vit
    np.save(tmp_path / "x.npy", x[:2])
    monkeypatch.setattr(batch, "dask_available", lambda: False)
    assert main(["precision", str(DIGITS / "digits-vit"), str(tmp_path / "x.npy"), "--format", "bf16",
                 "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refvit[dask]" in err[0] and "Traceback" not in err[0]
