"""LIKELY CAUSE: each known porting mistake, planted, gets its own hint at the first divergence; a tensor that is
simply wrong gets none ("no known pattern").

Model-level bugs are the planted ones of tests/test_parity_bugs.py (a refvit model with one kernel or parameter
replaced, compared with the framework's golden tensors). Layout bugs are planted in a copy of the golden DeiT trace,
as a port that got the layout wrong would record them (the first divergence is the tensor planted)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from refvit import parity
from refvit.parity.hints import likely_cause
from test_parity_bugs import CASES, IMAGE, PLANTED

# planted bug -> words the hint must contain
MODEL_BUGS = {
    "LayerNorm eps 1e-5 instead of 1e-6 (DeiT)": "epsilon",
    "tanh GELU instead of erf (DeiT)": "tanh approximation",
    "attention scale head_dim^-1/2 instead of embed_dim^-1/2 (CvT)": "attention logits scaled by 1.41421",
    "q and k swapped (DeiT)": "query and key swapped",
    "relative position index sign flipped (BEiT)": "values in other places",
    "no weight standardisation (BiT)": "weight scaled",
    "center crop one pixel off (processor)": "shifted by one row",
}


@pytest.mark.parametrize("bug", list(MODEL_BUGS))
def test_model_bug_hint(bug):
    plant, expected, _ = PLANTED[bug]
    result = parity.compare(*plant("float64"))
    assert result.first_divergence.name == expected
    assert result.likely_cause is not None, parity.format_report(result)
    assert MODEL_BUGS[bug] in result.likely_cause.cause, result.likely_cause
    assert f"LIKELY CAUSE: {result.likely_cause.cause}" in parity.format_report(result)


def test_epsilon_hint_estimates_the_difference():
    result = parity.compare(*PLANTED["LayerNorm eps 1e-5 instead of 1e-6 (DeiT)"][0]("float64"))
    assert "+9e-06" in result.likely_cause.cause  # 1e-5 − 1e-6


@pytest.mark.parametrize("bug", ["q and k swapped (DeiT)", "tanh GELU instead of erf (DeiT)",
                                 "attention scale head_dim^-1/2 instead of embed_dim^-1/2 (CvT)"])
def test_model_bug_hint_in_float32(bug):
    result = parity.compare(*PLANTED[bug][0]("float32"))
    assert result.likely_cause is not None and MODEL_BUGS[bug] in result.likely_cause.cause


# ---- layout bugs planted in the golden DeiT trace (4 heads of 8 channels, 18 tokens) -------------------------------

L0 = "deit.encoder.layer.0.attention.attention"


@pytest.fixture(scope="module")
def ref():
    return parity.from_golden(CASES / "deit_teacher", "float64")


def _with(ref, name, value):
    return parity.Trace({**ref.tensors, name: value}, ref.meta, ref.kinds, ref.modules)


def _heads(x, h=4):
    b, n, c = x.shape
    return x.reshape(b, n, h, c // h)


def planted_layouts(ref):
    q, k, v = ref[f"{L0}.query"], ref[f"{L0}.key"], ref[f"{L0}.value"]
    b, n, c = q.shape
    fused = np.concatenate([q, k, v], -1)                                   # the checkpoint's (3, H, D) order
    split_wrong = fused.reshape(b, n, 4, 3, c // 4)[:, :, :, 0].reshape(b, n, c)   # read as (H, 3, D)
    heads = _heads(q)[:, :, [1, 0, 2, 3]].reshape(b, n, c)
    emb = ref["deit.embeddings"].copy()
    emb[:, [0, 1]] = emb[:, [1, 0]]                                        # cls and distillation tokens swapped
    return {
        "query is value": (f"{L0}.query", v, "`deit.encoder.layer.0.attention.attention.value`"),
        "heads in another order": (f"{L0}.query", heads, "heads in another order"),
        "cls/distillation tokens swapped": ("deit.embeddings", emb, "tokens permuted"),
        "qkv split as (H, 3, D)": (f"{L0}.query", split_wrong, "qkv split in the wrong order"),
        "attention map transposed": ("attentions.0", np.swapaxes(ref["attentions.0"], -1, -2), "transposed"),
        "query times sqrt(head_dim)": (f"{L0}.query", q * np.sqrt(8), "√8"),
        "query with another bias": (f"{L0}.query", q + np.linspace(-0.3, 0.3, c), "per-channel offset"),
    }


@pytest.mark.parametrize("bug", ["query is value", "heads in another order", "cls/distillation tokens swapped",
                                 "qkv split as (H, 3, D)", "attention map transposed", "query times sqrt(head_dim)",
                                 "query with another bias"])
def test_layout_bug_hint(ref, bug):
    name, value, words = planted_layouts(ref)[bug]
    result = parity.compare(ref, _with(ref, name, value))
    assert result.first_divergence.name == name
    assert result.likely_cause is not None and words in result.likely_cause.cause, result.likely_cause


def _pixels(resample, mean, std, size=64):
    img = Image.open(IMAGE).convert("RGB").resize((size, size), resample)
    x = np.asarray(img, np.float64).transpose(2, 0, 1)[None] / 255.0
    return (x - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]


def _pixel_trace(x):
    return parity.Trace({"pixel_values": x}, {}, {"pixel_values": "input"})


def test_processor_defaults_are_a_per_channel_affine():
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    result = parity.compare(_pixel_trace(_pixels(Image.BICUBIC, *imagenet)),
                            _pixel_trace(_pixels(Image.BICUBIC, [0.5] * 3, [0.5] * 3)))
    hint = result.likely_cause
    assert hint is not None and "image_mean/image_std" in hint.cause
    # the fitted scale is std_imagenet / 0.5 per channel
    assert "0.458, 0.448, 0.45" in hint.evidence


def test_another_resize_filter():
    mean, std = [0.5] * 3, [0.5] * 3
    result = parity.compare(_pixel_trace(_pixels(Image.BICUBIC, mean, std)),
                            _pixel_trace(_pixels(Image.BILINEAR, mean, std)))
    assert result.likely_cause is not None and "resampled differently" in result.likely_cause.cause


# ---- no guessing --------------------------------------------------------------------------------------------------


def test_plain_errors_get_no_hint(ref):
    rng = np.random.default_rng(0)
    q = ref[f"{L0}.query"]
    noisy = q + rng.normal(0, 0.05 * q.std(), q.shape)
    weight_bug = q + 0.05 * ref["deit.encoder.layer.0.layernorm_before"][..., :1]   # one changed weight row
    for value in (noisy, weight_bug, -q[..., ::-1] + 0.1):
        result = parity.compare(ref, _with(ref, f"{L0}.query", value))
        assert result.first_divergence.name == f"{L0}.query"
        assert result.likely_cause is None, result.likely_cause
        assert "LIKELY CAUSE: no known pattern" in parity.format_report(result)
    assert likely_cause(ref, ref.tensors, f"{L0}.query") is None  # no error: nothing to explain


def test_cli_json_carries_the_hint(tmp_path, ref):
    name, value, words = planted_layouts(ref)["query is value"]
    ref.save(tmp_path / "ref.safetensors")
    _with(ref, name, value).save(tmp_path / "cand.safetensors")
    r = subprocess.run([sys.executable, "-m", "refvit.cli", "compare", str(tmp_path / "ref.safetensors"),
                        str(tmp_path / "cand.safetensors"), "--json"], capture_output=True, text=True)
    assert r.returncode == 1
    assert words in json.loads(r.stdout)["likely_cause"]["cause"]
