"""Resolution sweeps: `refvit trace --sizes …` writes one trace per size, `refvit compare DIR DIR` pairs them by size;
a bug in an interpolation path shows only at the sizes that take it."""

import json
import subprocess
import sys

import numpy as np
import pytest

import refvit
from refvit import parity
from refvit.parity import sweep
from test_parity_bugs import CASES

BEIT = CASES / "beit_classification"       # 32×32, relative position bias per layer


def nearest(x, out_h, out_w):
    """The planted bug: the relative position bias table resized with nearest neighbours instead of bilinear."""
    iy = np.minimum((np.arange(out_h) * x.shape[-2] / out_h).astype(int), x.shape[-2] - 1)
    ix = np.minimum((np.arange(out_w) * x.shape[-1] / out_w).astype(int), x.shape[-1] - 1)
    return np.ascontiguousarray(x[..., iy[:, None], ix[None, :]])


def test_parse_size():
    assert sweep.parse_size("224") == (224, 224) and sweep.parse_size("384x256") == (384, 256)
    for bad in ("0", "x3", "2x", "224px", "-1"):
        with pytest.raises(refvit.InputError, match="S or HxW"):
            sweep.parse_size(bad)


def test_interpolation_bug_shows_only_off_the_native_size():
    model = refvit.from_pretrained(BEIT, backend="numpy")
    bad = parity.with_kernels(model, interpolate_bilinear=nearest)
    x0 = np.load(BEIT / "inputs.npz")["pixel_values"]
    first = {}
    for size in ((32, 32), (48, 48), (32, 64)):
        x = sweep.resize_pixels(x0, size)
        call = sweep.interpolation("beit", 32, size)
        assert bool(call) == (size != (32, 32))
        result = parity.compare(parity.capture(model, x, **call), parity.capture(bad, x, **call))
        first[size] = result.first_divergence.name if result.first_divergence else None
    assert first[(32, 32)] is None
    for size in ((48, 48), (32, 64)):
        assert first[size] == "beit.encoder.layer.0.attention.attention.relative_position_bias", first


def test_cli_sweep_trace_and_compare(tmp_path):
    run = [sys.executable, "-m", "refvit.cli"]
    npy = tmp_path / "x.npy"
    np.save(npy, np.load(BEIT / "inputs.npz")["pixel_values"])
    for name, backend in (("ref", "numpy"), ("port", "numba")):
        r = subprocess.run(run + ["trace", str(BEIT), str(npy), "--sizes", "32", "48", "32x64", "--out",
                                  str(tmp_path / name), "--backend", backend], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert files == ["32x32.safetensors", "32x64.safetensors", "48x48.safetensors"]
    t = parity.Trace.load(tmp_path / "ref" / "32x64.safetensors")
    assert t["pixel_values"].shape == (3, 3, 32, 64) and t.meta["interpolate_pos_encoding"] is True
    r = subprocess.run(run + ["compare", str(tmp_path / "ref"), str(tmp_path / "port")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "sweep: 32x32 OK, 32x64 OK, 48x48 OK" in r.stdout
    r = subprocess.run(run + ["compare", str(tmp_path / "ref"), str(tmp_path / "port"), "--json"],
                       capture_output=True, text=True)
    doc = json.loads(r.stdout)                               # one JSON document for the whole sweep
    assert r.returncode == 0 and doc["ok"] and sorted(doc["sizes"]) == ["32x32", "32x64", "48x48"]
    assert all(d["ok"] for d in doc["sizes"].values())
    (tmp_path / "port" / "48x48.safetensors").unlink()    # a size the candidate lacks: not a pass
    r = subprocess.run(run + ["compare", str(tmp_path / "ref"), str(tmp_path / "port")], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "sizes missing in the candidate: 48x48" in r.stdout
    r = subprocess.run(run + ["trace", str(BEIT), str(npy), "--out", str(tmp_path / "ref")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "a folder is for --sizes" in r.stderr


@pytest.mark.needs_framework
@pytest.mark.parametrize("case", ["beit_classification", "deit_teacher"])
def test_framework_sweep_matches_refvit(tmp_path, case):
    """transformers and refvit agree at every size of the sweep (interpolated position embeddings, BEiT's resized
    relative position bias)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    npy = tmp_path / "x.npy"
    np.save(npy, np.load(CASES / case / "inputs.npz")["pixel_values"])
    run = [sys.executable, "-m", "refvit.cli", "trace", str(CASES / case), str(npy), "--sizes", "32", "48", "40x56"]
    for name, extra in (("hf", ["--framework", "transformers"]), ("ours", [])):
        r = subprocess.run(run + ["--out", str(tmp_path / name)] + extra, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "refvit.cli", "compare", str(tmp_path / "hf"), str(tmp_path / "ours")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "sweep: 32x32 OK, 40x56 OK, 48x48 OK" in r.stdout
