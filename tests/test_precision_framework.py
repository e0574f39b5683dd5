"""The precision emulation against the real thing: torch's own bf16 CPU forward (module by module) and ONNX Runtime's
quantize_dynamic on the exported model (golden/precision_check.py writes the full tables; this runs it on a few
models and images). Targets: emulated/real NMSE vs float64 within [0.5, 2] on the logits, [0.25, 4] per module,
top-1 within 1 image."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import refvit
from refvit import precision
from refvit.verify import digits_pixel_values

pytestmark = pytest.mark.needs_framework

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "golden" / "models"


def framework():
    for name in ("torch", "transformers", "onnx", "onnxruntime"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"needs {name} (pip install '.[golden,onnx]')")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    sys.path.insert(0, str(ROOT / "golden"))
    import precision_check

    return torch, precision_check


def test_bf16_rounding_is_torchs_bit_for_bit():
    torch, _ = framework()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(100000) * 10.0 ** rng.integers(-38, 38, 100000)).astype(np.float32)
    x = np.concatenate([x, rng.integers(0, 2 ** 32, 100000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    x = x[~np.isnan(x)]
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    ours = (precision.round_bf16(x).view(np.uint32) >> 16).astype(np.uint16)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [32, 64])
def test_attention_is_torchs_eager_attention(fmt, head_dim):
    """transformers' eager attention (`matmul(q, kᵀ) * scaling`, float32 softmax, `matmul(p, v)`) on format tensors:
    the emulation gives torch's bits but for float32 last-bit noise (exp, the order of sums: no port can promise those
    across CPUs), which moves about 0.1% of the values. With the scale rounded to the format first (head_dim 32:
    32^-½ is not a bf16 or fp16 number) 7.8% of the bf16 and 30% of the fp16 attention probabilities differed."""
    torch, _ = framework()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[fmt]
    rnd = {"bf16": precision.round_bf16, "fp16": precision.round_fp16}[fmt]
    rng = np.random.default_rng(1)
    B, H, N, D = 2, 2, 50, head_dim
    q, k, v = (rnd((rng.standard_normal((B, N, H * D)) * 2).astype(np.float32)) for _ in range(3))
    tq, tk, tv = (torch.from_numpy(a).to(dtype).view(B, N, H, D).transpose(1, 2) for a in (q, k, v))
    scaling = D ** -0.5
    scores = torch.matmul(tq, tk.transpose(2, 3)) * scaling
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
    context = torch.matmul(probs, tv).transpose(1, 2).reshape(B, N, H * D)

    class Emulator:
        arith = precision.check_arithmetic(fmt)
        base = refvit.kernels.get("numpy")

    ours, ours_probs = precision.attention(Emulator, rnd, q, k, v, H, scaling, need_probs=True)
    assert np.mean(ours_probs != probs.float().numpy()) <= 0.01
    assert np.mean(ours != context.float().numpy()) <= 0.01


@pytest.mark.parametrize("family", ["vit", "cvt", "bit"])
def test_emulation_meets_the_targets_against_torch_bf16_and_ort_int8(family):
    _, check = framework()
    d = DIGITS / f"digits-{family}"
    x, labels = digits_pixel_values(d, 30)
    r = check.check_model(d, x, labels, trace_images=8)
    for fmt in ("bf16", "int8-dynamic"):
        f = r[fmt]
        assert len(f["modules"]) >= 8, f"{fmt}: too few modules compared ({len(f['modules'])})"
        assert 0.5 <= f["logits_ratio"] <= 2, (fmt, f["logits_emulated"], f["logits_real"])
        assert not f["modules_off"], (fmt, [m for m in f["modules"] if m["module"] in f["modules_off"]][:3])
        assert abs(f["top1_emulated"] - f["top1_real"]) <= 1
        assert f["logits_emulated"] > 100 * r["float32_logits_nmse"]     # the emulation does change the numbers


def test_int8_without_the_convolutions_would_be_off():
    """The point of quantizing every Conv: BiT's convolutions left in float32 miss most of ORT's int8 error."""
    _, check = framework()
    d = DIGITS / "digits-bit"
    x, labels = digits_pixel_values(d, 30)
    import refvit

    m32, m64 = refvit.from_pretrained(d), refvit.from_pretrained(d, dtype="float64")
    l64 = m64(x.astype(np.float64)).logits
    full = precision.emulate(m32, "int8-dynamic")
    convs = [c.name for c in full.profile(x[:1])[1] if c.kernel == "conv2d"]
    no_conv = precision.emulate(m32, "int8-dynamic", keep_fp32=convs)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        real = check.nmse(check.ort_logits(check.export_int8(d, x.shape[-1], tmp), x, 1), l64)
    emulated = check.nmse(check.emulated_logits(full, x, 1), l64)
    without = check.nmse(check.emulated_logits(no_conv, x, 1), l64)
    assert 0.5 <= emulated / real <= 2 and without < real / 2
