# %% [markdown]
# # Recorded wrong answers to the exercises of 07_precision
#
# `tests/test_tutorials.py` appends these cells after the solutions and runs them: `rejects` fails the test if
# `check` accepts any of them. Each is a plausible mistake (its docstring says which).

# %%
from common import rejects


def unrounded():
    """the float32 values unchanged"""
    return VALUES.copy()


def truncated():
    """the low 16 bits cleared without rounding (round toward zero)"""
    return (VALUES.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def half_up():
    """ties rounded away from zero (+0x8000) instead of to even"""
    u = VALUES.view(np.uint32).astype(np.uint64)
    return ((u + 0x8000) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def fp16_instead():
    """rounded to fp16, not bf16"""
    with np.errstate(over="ignore"):
        return VALUES.astype(np.float16).astype(np.float32)


for wrong in (unrounded, truncated, half_up, fp16_instead):
    assert rejects("exercise 1 (bf16 on the bits)", wrong)

# %%
A0 = outputs["vit.encoder.layer.0.layernorm_after"]
W0 = d.weights["vit.encoder.layer.0.intermediate.dense.weight"]
B0 = d.weights["vit.encoder.layer.0.intermediate.dense.bias"]


def quantize_uint8(a, axis=None):
    lo, hi = np.minimum(a.min(axis, keepdims=True), 0), np.maximum(a.max(axis, keepdims=True), 0)
    s = ((hi - lo) / np.float32(255)).astype(np.float32)
    zp = np.rint(np.clip(-lo / s, 0, 255))
    return (np.clip(np.rint(a / s) + zp, 0, 255) - zp).astype(np.float64), s


def int8_weight(W, axis=None):
    sw = (2 * np.abs(W).max(axis, keepdims=True).astype(np.float64) / 254).astype(np.float32)
    return np.clip(np.rint(W / sw), -128, 127).astype(np.float64), sw


def float_linear():
    """no quantization: the float32 Linear"""
    return A0 @ W0.T + B0


def per_image_scale():
    """one activation scale per image, as if each digit ran alone (the call holds 40)"""
    qa, sx = quantize_uint8(A0, axis=(1, 2))
    qw, sw = int8_weight(W0)
    return (qa @ qw.T).astype(np.float32) * (sx * sw) + B0


def per_channel_weights():
    """int8 weights with one scale per output channel (quantize_dynamic's default is per tensor)"""
    qa, sx = quantize_uint8(A0)
    qw, sw = int8_weight(W0, axis=1)
    return (qa @ qw.T).astype(np.float32) * (sx * sw.reshape(-1)) + B0


def symmetric_int8_activation():
    """the activation in symmetric int8 (scale max|x|/127) instead of uint8 with a zero point"""
    sx = np.float32(np.abs(A0).max() / 127)
    qa = np.clip(np.rint(A0 / sx), -127, 127).astype(np.float64)
    qw, sw = int8_weight(W0)
    return (qa @ qw.T).astype(np.float32) * (sx * sw) + B0


for wrong in (float_linear, per_image_scale, per_channel_weights, symmetric_int8_activation):
    assert rejects("exercise 2 (an int8 Linear)", wrong)

# %%
def nothing():
    """none overflows (no single (x − μ)² reaches 65504)"""
    return set()


def before_only():
    """only the layernorm_before inputs (the residual stream between layers) looked at; layernorm_after forgotten"""
    return {n for n in exercise_3() if "layernorm_after" not in n}


def every_one():
    """all nine LayerNorms"""
    return {n for n in names if "layernorm" in n}


def search_set():
    """the keep-fp32 search's set of §6 taken for the set of overflowing LayerNorms"""
    return set(kept)


for wrong in (nothing, before_only, every_one, search_set):
    assert rejects("exercise 3 (overflowing LayerNorms)", wrong)
