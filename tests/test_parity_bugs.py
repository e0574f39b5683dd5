"""Planted porting bugs, each found by `refvit.parity.compare` at the right module.

Each bug is planted in a *copy* of a refvit model through the public API only — its own kernel namespace with one
function wrapped (parity.with_kernels), its parameters with raw checkpoint weights put back (parity.with_params), or
its input cropped one pixel off — never by editing refvit.models. The candidate's trace is compared with the
framework's golden tensors (golden/cases/<case>/outputs.npz, float64 run: rounding ~1e-16, so even the LayerNorm eps
bug stands out) and the test asserts the first diverging tensor, the module it belongs to, and that its block
*introduced* the error.

    python tests/test_parity_bugs.py      # prints the table bug -> module reported -> introduced/inherited
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import refvit  # noqa: E402
from refvit import parity  # noqa: E402
from refvit.checkpoint import read_safetensors  # noqa: E402

CASES = ROOT / "golden" / "cases"
IMAGE = ROOT / "golden" / "images" / "chelsea_landscape.jpg"


def model(case: str, dtype="float64"):
    return refvit.from_pretrained(CASES / case, dtype=dtype, backend="numpy")


def golden_input(case: str, dtype="float64") -> np.ndarray:
    return np.load(CASES / case / "inputs.npz")["pixel_values"].astype(dtype)


# ---- the bugs (each returns (reference trace, candidate trace)) -----------------------------------------------------


def tanh_gelu(x):
    """GELU's tanh approximation (transformers' gelu_new), where the checkpoint says exact erf GELU."""
    return (0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))).astype(x.dtype)


def planted_eps(dtype="float64"):
    m = model("deit_teacher", dtype)
    base = parity.kernels_of(m)
    # torch's nn.LayerNorm default eps 1e-5 instead of config.layer_norm_eps (1e-6 here)
    bad = parity.with_kernels(m, layer_norm=lambda x, weight, bias, eps: base.layer_norm(x, weight, bias, 1e-5))
    return parity.from_golden(CASES / "deit_teacher", dtype), parity.capture(bad, golden_input("deit_teacher", dtype))


def planted_gelu(dtype="float64"):
    m = model("deit_teacher", dtype)
    bad = parity.with_kernels(m, gelu=tanh_gelu, bias_gelu=lambda x, bias, out=None: tanh_gelu(x + bias))
    return parity.from_golden(CASES / "deit_teacher", dtype), parity.capture(bad, golden_input("deit_teacher", dtype))


def planted_cvt_scale(dtype="float64"):
    """CvT scales attention by embed_dim^-½ (transformers' quirk); the bug uses the paper's head_dim^-½."""
    m = model("cvt_classification", dtype)
    base = parity.kernels_of(m)

    def attention(q, k, v, num_heads, scale, bias=None, need_probs=False):
        return base.attention(q, k, v, num_heads, scale * math.sqrt(num_heads), bias=bias, need_probs=need_probs)

    bad = parity.with_kernels(m, attention=attention)
    return (parity.from_golden(CASES / "cvt_classification", dtype),
            parity.capture(bad, golden_input("cvt_classification", dtype)))


def planted_qk_swap(dtype="float64"):
    m = model("deit_teacher", dtype)
    base = parity.kernels_of(m)

    def attention(q, k, v, num_heads, scale, bias=None, need_probs=False):
        return base.attention(k, q, v, num_heads, scale, bias=bias, need_probs=need_probs)  # q and k swapped

    bad = parity.with_kernels(m, attention=attention)
    return parity.from_golden(CASES / "deit_teacher", dtype), parity.capture(bad, golden_input("deit_teacher", dtype))


def planted_relative_sign(dtype="float64"):
    """BEiT's relative position index built from coords_j − coords_i instead of coords_i − coords_j: the patch-to-patch
    part of the index transposed (the class-token rows and columns are unchanged)."""
    m = model("beit_classification", dtype)
    base = parity.kernels_of(m)

    def relative_position_index(window_h, window_w):
        index = np.array(base.relative_position_index(window_h, window_w))
        index[1:, 1:] = index[1:, 1:].T.copy()
        return index

    bad = parity.with_kernels(m, relative_position_index=relative_position_index)
    return (parity.from_golden(CASES / "beit_classification", dtype),
            parity.capture(bad, golden_input("beit_classification", dtype)))


def planted_bit_no_ws(dtype="float64"):
    """BiT's convolutions run with the checkpoint's raw weights: weight standardisation (done by refvit at load time)
    forgotten."""
    m = model("bit_bottleneck", dtype)
    raw = read_safetensors(CASES / "bit_bottleneck" / "model.safetensors")
    standardised = {name: w for name, w in raw.items()
                    if w.ndim == 4 and not np.array_equal(parity.get_param(m, name), w.astype(dtype))}
    assert "bit.embedder.convolution.weight" in standardised, sorted(standardised)
    bad = parity.with_params(m, standardised)
    return (parity.from_golden(CASES / "bit_bottleneck", dtype),
            parity.capture(bad, golden_input("bit_bottleneck", dtype)))


def processor_dir(tmp: Path) -> Path:
    """deit_teacher with a DeiT processor: resize to 36×36, center-crop 32×32 (the README's classify example)."""
    d = tmp / "deit"
    d.mkdir(exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        if not (d / f).exists():
            os.symlink(CASES / "deit_teacher" / f, d / f)
    (d / "preprocessor_config.json").write_text(json.dumps({"feature_extractor_type": "DeiTFeatureExtractor",
                                                            "size": 36, "crop_size": 32}))
    return d


def planted_crop(dtype="float64", tmp: Path | None = None):
    """The processor's center crop one pixel too low (top = (H − crop)//2 + 1)."""
    import tempfile

    tmp = Path(tmp or tempfile.mkdtemp())
    d = processor_dir(tmp)
    proc = refvit.ImageProcessor.from_pretrained(d)
    image = refvit.load_image(IMAGE)
    good = proc(image, return_tensors="np")["pixel_values"]                      # (1, 3, 32, 32)
    full = proc(image, return_tensors="np", do_center_crop=False)["pixel_values"]  # (1, 3, 36, 36), resized only
    top, left = (full.shape[2] - good.shape[2]) // 2, (full.shape[3] - good.shape[3]) // 2
    h, w = good.shape[2:]
    assert np.array_equal(full[:, :, top:top + h, left:left + w], good)  # cropping after normalising = the processor
    shifted = full[:, :, top + 1:top + 1 + h, left:left + w]
    m = refvit.from_pretrained(d, dtype=dtype, backend="numpy")
    return parity.capture(m, good.astype(dtype)), parity.capture(m, shifted.astype(dtype))


# bug -> (plant, expected first diverging tensor, the module it belongs to)
PLANTED = {
    "LayerNorm eps 1e-5 instead of 1e-6 (DeiT)": (planted_eps, "deit.encoder.layer.0.layernorm_before",
                                                  "deit.encoder.layer.0"),
    "tanh GELU instead of erf (DeiT)": (planted_gelu, "deit.encoder.layer.0.intermediate", "deit.encoder.layer.0"),
    "attention scale head_dim^-1/2 instead of embed_dim^-1/2 (CvT)": (
        planted_cvt_scale, "cvt.encoder.stages.1.layers.0.attention.attention.dropout",
        "cvt.encoder.stages.1.layers.0"),
    "q and k swapped (DeiT)": (planted_qk_swap, "attentions.0", "deit.encoder.layer.0"),
    "relative position index sign flipped (BEiT)": (
        planted_relative_sign, "beit.encoder.layer.0.attention.attention.relative_position_bias",
        "beit.encoder.layer.0"),
    "no weight standardisation (BiT)": (planted_bit_no_ws, "bit.embedder.convolution", "bit.embedder"),
    "center crop one pixel off (processor)": (planted_crop, "pixel_values", "pixel_values"),
}


@pytest.mark.parametrize("bug", list(PLANTED))
def test_planted_bug_found_at_its_module(bug):
    plant, expected_tensor, expected_block = PLANTED[bug]
    reference, candidate = plant("float64")
    result = parity.compare(reference, candidate)
    assert not result.ok
    first = result.first_divergence
    assert first.name == expected_tensor, parity.format_report(result)
    block = result.block_of(first.name)
    assert block.name == expected_block
    assert block.verdict == "introduced"
    # everything before it matches the framework to float64 rounding
    before = [r for r in result.rows if r.step < first.step and r.status != "MISSING"]
    assert len(before) == first.step and all(r.status == "OK" for r in before)


def test_clean_models_pass_against_golden_float64():
    """The same cases without a bug: refvit's trace passes against the framework's float64 tensors."""
    for case in ("deit_teacher", "cvt_classification", "beit_classification", "bit_bottleneck"):
        result = parity.compare(parity.from_golden(CASES / case, "float64"),
                                parity.capture(model(case), golden_input(case)))
        assert result.ok, parity.format_report(result)
        assert sum(r.status == "OK" for r in result.rows) >= 20


@pytest.mark.parametrize("bug", ["q and k swapped (DeiT)", "tanh GELU instead of erf (DeiT)",
                                 "no weight standardisation (BiT)"])
def test_planted_bug_found_in_float32_too(bug):
    plant, expected_tensor, _ = PLANTED[bug]
    result = parity.compare(*plant("float32"))
    assert result.first_divergence is not None and result.first_divergence.name == expected_tensor


def test_later_blocks_inherit_the_error():
    """After the crop bug, the first layer's block is fed a wrong input: it inherits the error."""
    result = parity.compare(*planted_crop("float64"))
    verdicts = {b.name: b.verdict for b in result.blocks}
    assert verdicts["pixel_values"] == "introduced"
    assert verdicts["deit.encoder.layer.1"] == "inherited"


def main() -> int:
    print(f"| planted bug | first divergence reported | module (block) | verdict |\n|---|---|---|---|")
    for bug, (plant, expected, block) in PLANTED.items():
        result = parity.compare(*plant("float64"))
        first = result.first_divergence
        b = result.block_of(first.name)
        flag = "" if (first.name, b.name) == (expected, block) else "  (EXPECTED " + expected + ")"
        print(f"| {bug} | `{first.name}` | `{b.name}` | {b.verdict}{flag} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
