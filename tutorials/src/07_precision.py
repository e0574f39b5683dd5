# %% [markdown]
# # Precision: what fp16, bf16 and int8 do to a model
#
# Ports ship in reduced precision: fp16 on GPUs, CoreML and TensorRT, bf16 on CPUs and TPUs, int8 through ONNX
# Runtime or TFLite. That is where a port loses the most, and the usual tools to study it are each tied to one
# vendor. refvit emulates the formats on its own forward (`refvit.precision`), with every module named like the
# checkpoint and a float64 run as the judge, so you can see which module loses what before the port exists.
#
# The emulation was checked against the real thing (`golden/precision_check.py`, tables in the docs' "Reduced
# precision" page): torch's own bf16 forward and ONNX Runtime's `quantize_dynamic` on every digits model. On
# digits-vit, the logits' error against float64 (NMSE, below) is 1.57e-5 emulated and 1.57e-5 in torch for bf16,
# 6.34e-5 emulated and 6.38e-5 in ONNX Runtime for int8.
#
# What we do here:
#
# 1. the formats: bits, range against precision, round-to-nearest-even on a few numbers;
# 2. bf16 against fp16 on the trained digits-vit, module by module;
# 3. fp16 LayerNorm overflow, on digits-vit rescaled toward the activation sizes of large trained ViTs;
# 4. BEiT's layer scale under fp16 and bf16;
# 5. int8-dynamic by hand: the per-tensor scale, the error per layer, and why a batch is not a single image;
# 6. the search for the modules to keep in float32;
# 7. exercises (solutions in `tutorials/solutions/07_precision.py`).
#
# The error measure throughout is the normalised mean squared error against float64,
# `NMSE = Σ(x − x₆₄)² / Σx₆₄²`: 1e-6 means the error's energy is a millionth of the signal's.

# %%
import matplotlib.pyplot as plt
import numpy as np

import refvit
from common import check, close, digits
from refvit import parity, precision, precision_lab

FP16_MAX = float(np.finfo(np.float16).max)           # 65504


def nmse(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(((a - ref) ** 2).sum() / (ref ** 2).sum())


def agreement(a_logits, b_logits) -> float:
    """Share of images whose top-1 class is the same."""
    return float(np.mean(np.asarray(a_logits).argmax(-1) == np.asarray(b_logits).argmax(-1)))


# %% [markdown]
# ## 1. Three formats
#
# A float is `±1.m × 2^e`: the exponent's bits set the **range**, the mantissa's bits the **precision**. With `p`
# significant bits (the mantissa plus the implicit leading 1), neighbouring values are `2^(e−p+1)` apart, so rounding
# moves a value by at most `u = 2^−p` of itself, whatever its size: the relative error does not depend on the
# magnitude — until the exponent runs out.
#
# * **float32**: 8 exponent bits, 23 mantissa bits;
# * **bf16** ("brain float"): float32's 8 exponent bits, only 7 mantissa bits: float32's range, 8 significant bits;
# * **fp16** (IEEE binary16): 5 exponent bits, 10 mantissa bits: 3 more bits of precision than bf16, but the
#   largest finite value is 65504 and values below 6.1e-5 lose bits (subnormals) down to 6e-8.

# %%
formats = {  # name: (exponent bits, mantissa bits, largest finite, smallest normal)
    "float32": (8, 23, float(np.finfo(np.float32).max), float(np.finfo(np.float32).tiny)),
    "bf16": (8, 7, float(precision.round_bf16(np.float32(3.3895e38))), float(np.finfo(np.float32).tiny)),
    "fp16": (5, 10, FP16_MAX, float(np.finfo(np.float16).tiny)),
}
print(f"{'format':8s} {'exp':>4s} {'mant':>5s} {'u = 2^-p':>10s} {'largest':>10s} {'smallest normal':>16s}")
for name, (e, m, hi, lo) in formats.items():
    print(f"{name:8s} {e:4d} {m:5d} {2.0 ** -(m + 1):10.2e} {hi:10.3g} {lo:16.3g}")

fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1, 1.4]})
for row, (name, (e, m, _, _)) in enumerate(formats.items()):
    for start, width, colour, label in ((0, 1, "C3", "sign"), (1, e, "C0", f"exponent {e}"),
                                        (1 + e, m, "C2", f"mantissa {m}")):
        a0.barh(row, width, left=start, color=colour, edgecolor="white")
        a0.text(start + width / 2, row, label if width > 2 else "±", ha="center", va="center", fontsize=8,
                color="white")
a0.set_yticks(range(3), list(formats)), a0.set_xlabel("bits"), a0.invert_yaxis()
a0.set_title("bit layout")
mags = np.logspace(-9, 6, 4000)
for name, (e, m, hi, lo) in formats.items():
    if name == "float32":
        continue
    exp = np.floor(np.log2(mags))
    spacing = 2.0 ** (np.maximum(exp, np.log2(lo)) - m)   # below the smallest normal the spacing stops shrinking
    rel = np.where(mags <= hi, spacing / mags, np.nan)
    a1.loglog(mags, rel, label=name)
a1.loglog(mags, np.spacing(mags.astype(np.float32)) / mags, label="float32", color="0.5")
a1.axvline(FP16_MAX, color="C1", ls=":"), a1.axvline(formats["fp16"][3], color="C1", ls=":")
a1.text(FP16_MAX, 3e-2, "65504: fp16 \noverflows ", fontsize=8, color="C1", ha="right")
a1.text(formats["fp16"][3], 3e-2, " fp16\n subnormals\n below", fontsize=8, color="C1")
a1.set_xlabel("|x|"), a1.set_ylabel("gap to the next value / |x|"), a1.legend(fontsize=8)
a1.set_title("relative spacing: precision is flat, until the range ends")
plt.tight_layout()
plt.show()

# %% [markdown]
# Rounding is **to nearest, ties to even**: a value exactly halfway between two neighbours goes to the one whose last
# mantissa bit is 0, so ties do not all drift one way. In bf16 `1 + 2⁻⁸` is halfway between `1` and `1 + 2⁻⁷` and
# goes down to `1` (even); `1 + 3·2⁻⁸` is halfway between `1 + 2⁻⁷` (odd) and `1 + 2⁻⁶` and goes up. In fp16 the
# integers above 2048 are 2 apart: 2049 goes down to 2048, 2051 up to 2052. 65519 rounds to 65504, and 65520 — the
# tie between 65504 and 65536, a value fp16 does not have — rounds to infinity.

# %%
examples = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 0.1, 2049, 2051, 65519, 65520, 1e-5, 1e-8], np.float32)
print(f"{'x (float32)':>14s} {'fp16':>14s} {'bf16':>14s}")
for v, h, b in zip(examples, precision.round_fp16(examples), precision.round_bf16(examples)):
    print(f"{v:14.9g} {h:14.9g} {b:14.9g}")
assert precision.round_bf16(np.float32(1 + 2 ** -8)) == 1
assert precision.round_bf16(np.float32(1 + 3 * 2 ** -8)) == 1 + 2 ** -6
assert precision.round_fp16(np.float32(65520)) == np.inf

# %% [markdown]
# Rounding to a grid is all there is to it. For a normal fp16 value, the grid spacing is `2^(e − 10)` with
# `e = floor(log2 |x|)`, and NumPy's `rint` rounds halves to even; this reproduces NumPy's own float16 cast (which
# refvit's `round_fp16` uses) on 100,000 values:

# %%
def fp16_by_grid(v):
    v = np.asarray(v, np.float64)
    spacing = 2.0 ** (np.floor(np.log2(np.abs(v))) - 10)
    return np.rint(v / spacing) * spacing


rng = np.random.default_rng(0)
sample = (rng.choice([-1, 1], 100_000) * 10.0 ** rng.uniform(-4, 4.8, 100_000)).astype(np.float32)
assert np.array_equal(fp16_by_grid(sample), precision.round_fp16(sample))
print("fp16 by hand = NumPy's float16 cast on", sample.size, "values from 1e-4 to 63,000")

# %% [markdown]
# *Try:* put your own numbers into `examples` above — `0.1 + 0.2`, `1/3`, `300.7`, `-65519.9` — and predict both
# roundings before you run the cell.
#
# bf16 is the same with 7 mantissa bits, and since it keeps float32's exponent it can be done on the bits: keep the
# top 16 bits of the float32, rounded. That is exercise 1.
#
# ## 2. bf16 against fp16 on a trained ViT
#
# `precision.emulate(model, "bf16")` returns a copy of the float32 model whose forward runs in the format: weights
# stored in it, every kernel output and every elementwise result (residual adds, layer scale) rounded to it; matrix
# products accumulate in float32 and LayerNorm, softmax and GELU compute their internals in float32 and round their
# output — the common mixed-precision convention (`strict=True` puts every internal step in the format; §3). The
# outputs are float32 arrays holding values of the format. The judge is the same model in float64.

# %%
d = digits("digits-vit")
x = d.pixel_values[:40]
model = d.model                                                          # float32
truth = refvit.from_pretrained(d.dir, backend="numpy", dtype="float64")(x.astype(np.float64), output_intermediates=True)
names = list(truth.intermediates)                                        # execution order


def module_errors(m, inputs=x):
    """NMSE against float64 of every named intermediate, then of the logits."""
    out = m(inputs, output_intermediates=True)
    return np.array([nmse(out.intermediates[n], truth.intermediates[n]) for n in names]
                    + [nmse(out.logits, truth.logits)])


errors = {"float32": module_errors(model)}
for fmt in ("bf16", "fp16"):
    errors[fmt] = module_errors(precision.emulate(model, fmt))

fig, ax = plt.subplots(figsize=(12, 3.6))
for fmt, e in errors.items():
    ax.semilogy(e, ".-", label=fmt)
blocks = [i for i, n in enumerate(names) if n.endswith("layernorm_before")]
for i in blocks:
    ax.axvline(i - 0.5, color="0.85", lw=0.8)
ax.set_xticks(blocks + [len(names)], [f"layer {k}" for k in range(len(blocks))] + ["logits"])
ax.set_ylabel("NMSE against float64"), ax.legend()
ax.set_title("digits-vit, 40 digits: every named module, in execution order")
plt.show()
ratio = errors["bf16"][-1] / errors["fp16"][-1]
print(f"logits NMSE: bf16 {errors['bf16'][-1]:.2e}, fp16 {errors['fp16'][-1]:.2e} (ratio {ratio:.0f}), "
      f"float32 {errors['float32'][-1]:.1e}")
assert 16 < ratio < 256 and errors["float32"][-1] < 1e-9

# %% [markdown]
# fp16 has 3 more significant bits than bf16, so each rounding error is 8× smaller and its square 64× smaller: the
# two curves run parallel, about 64× apart, from the first module to the logits. The error grows along the depth —
# each layer adds its roundings to what it inherits — but no module stands out: on this model both formats are
# just "float32 with fewer bits". *Try:* add `precision.emulate(model, "fp16", accumulate="fp16")` (every partial
# sum of the matrix products rounded too; slower, it adds the products one at a time) or `strict=True` to `errors`
# and plot it. What counts for a classifier is the top-1 class, here on 120 test digits:

# %%
x120 = d.pixel_values[:120]
reference32 = model(x120).logits
for fmt in ("bf16", "fp16"):
    same = agreement(precision.emulate(model, fmt)(x120).logits, reference32)
    print(f"{fmt}: the float32 class on {same:.2%} of 120 digits")

# %% [markdown]
# The digits model's activations stay below 10 in magnitude, about 1/6500 of fp16's range. fp16's precision
# advantage then wins everywhere. The next two sections show where it does not.
#
# ## 3. LayerNorm's variance overflows in fp16
#
# LayerNorm divides by the standard deviation of each token's `C` channels:
# `var = mean((x − μ)²)`. Computed in fp16 step by step, each square `(x − μ)²` overflows once `|x − μ| ≥ 256`
# (256² = 65536 > 65504), and a sum of `C` squares already once `√(Σ(x − μ)²) > 256`, i.e. when the root mean
# square of `x − μ` exceeds `256/√C`: 32 for `C = 64`, 9.2 for ViT-B's `C = 768`. The variance is then infinite,
# `(x − μ)/√var` is 0 for every channel, and the LayerNorm returns its bias β: no NaN, no warning, a wrong token.
#
# Whether a port hits this depends on its kernels. The mixed-precision convention (torch's LayerNorm kernels,
# autocast) computes the statistics in float32 and never overflows; an fp16 graph that spells LayerNorm out in
# elementwise steps (ONNX before opset 17 has no LayerNormalization op) computes them in fp16 — reported on ViTs
# for [ONNX Runtime](https://github.com/microsoft/onnxruntime/pull/13639) and TensorRT
# ([1](https://github.com/NVIDIA/TensorRT/issues/2564), [2](https://github.com/NVIDIA/TensorRT/issues/4723)).
# refvit's `strict=True` emulates the latter: every step rounded, the sum rounded before the division.
#
# Our digits model's residual stream peaks below 4, far from any of this. Large trained ViTs carry much larger
# activations — the reports above are about them — but we have no such checkpoint here, so **we make one
# honestly**: multiply the residual stream by `s = 64` without changing the function. The embeddings (patch
# projection, `[CLS]`, positions) and each block's two output projections (`attention.output.dense`,
# `output.dense`) are scaled by `s`; then every residual state is `s` times the original, every LayerNorm's output
# is unchanged (LayerNorm ignores its input's scale, up to its eps of 1e-12), and so are the logits.

# %%
S = 64
BIG = ("vit.embeddings.", ".attention.output.dense.", ".output.dense.")
scaled_weights = {k: v * np.float32(S) if any(p in k for p in BIG) else v for k, v in d.weights.items()}
print(f"× {S}:", ", ".join(k for k in scaled_weights if any(p in k for p in BIG) and ".layer.0." in k or
                          k.startswith("vit.embeddings.")), "and the same in layers 1-3")
scaled = refvit.from_state_dict(d.config, scaled_weights, backend="numpy")
scaled_out = scaled(x120, output_intermediates=True)
assert close(scaled_out.logits, model(x120).logits)                     # the same function in float32
peak = max(float(np.abs(scaled_out.intermediates[f"vit.encoder.layer.{k}"]).max()) for k in range(4))
print(f"same logits as digits-vit in float32; the residual stream now peaks at {peak:.0f}")

mixed = precision.emulate(scaled, "fp16")
print(f"fp16, float32 statistics: the float32 class on {agreement(mixed(x120).logits, scaled_out.logits):.1%} "
      "of 120 digits")
strict_out, strict_calls = precision.emulate(scaled, "fp16", strict=True).profile(x120)
print(f"fp16, strict:             the float32 class on {agreement(strict_out.logits, scaled_out.logits):.1%} "
      "of 120 digits")

# %% [markdown]
# With float32 statistics the scaled model is as good in fp16 as the original (floating point does not care about
# scale until the range ends). With fp16 statistics it collapses. (*Try:* `S = 32` or `48`: where does it start?)
# Look at the last LayerNorm, `vit.layernorm`, whose input is the last layer's output: per token, the sum of
# squares against fp16's largest value, then one token's LayerNorm done in fp16 by hand (every step through
# `round_fp16`):

# %%
last = scaled_out.intermediates["vit.encoder.layer.3"].astype(np.float64)       # input of vit.layernorm
sums = ((last - last.mean(-1, keepdims=True)) ** 2).sum(-1)                    # (120, 65) Σ(x − μ)² per token
fig, ax = plt.subplots(figsize=(8, 3))
ax.hist(np.log10(sums.ravel() / S ** 2), bins=60, alpha=0.7, label="original digits-vit")
ax.hist(np.log10(sums.ravel()), bins=60, alpha=0.7, label=f"residual stream × {S}")
ax.axvline(np.log10(FP16_MAX), color="C3"), ax.text(np.log10(FP16_MAX), ax.get_ylim()[1] * 0.8, " 65504", color="C3")
ax.set_xlabel("log10 Σ(x − μ)² per token (input of vit.layernorm)"), ax.set_ylabel("tokens"), ax.legend()
plt.show()

r = precision.round_fp16
gamma, beta = (r(d.weights[f"vit.layernorm.{p}"]) for p in ("weight", "bias"))
image, token = np.unravel_index(sums.argmax(), sums.shape)
row = r(scaled_out.intermediates["vit.encoder.layer.3"][image, token])
with np.errstate(over="ignore"):
    mean = r(r(row.sum(dtype=np.float32)) / np.float32(64))
    dev = r(row - mean)
    var = r(r(r(dev * dev).sum(dtype=np.float32)) / np.float32(64))
    by_hand = r(r(r(dev / r(np.sqrt(r(var + r(np.float32(1e-12)))))) * gamma) + beta)
print(f"image {image}, token {token}: max|x − μ| = {np.abs(dev).max():.0f}, Σ(x − μ)² = {sums[image, token]:.0f}, "
      f"var in fp16 = {var[()]}")
kernel = precision.strict_layer_norm(r, row[None], gamma, beta, 1e-12)[0]
assert np.array_equal(by_hand, kernel) and np.array_equal(by_hand, beta)     # refvit's strict kernel; output = β
print("LayerNorm output = its bias β, exactly:", np.array_equal(by_hand, beta))

# %% [markdown]
# No square overflowed here (`|x − μ|` stays below 256), but their sum did. The collapse is silent and token by
# token. The classifier reads only the `[CLS]` token: when its final LayerNorm returns β, the logits are the
# classifier applied to β, the same for every such image. In the strict run above:

# %%
final = {c.name: c.output for c in strict_calls}["vit.layernorm"]               # (120, 65, 64), emulated fp16
collapsed = np.all(final[:, 0] == beta, axis=-1)
classes = strict_out.logits[collapsed].argmax(-1)
print(f"[CLS] leaves vit.layernorm as β on {collapsed.sum()} of 120 digits; they are all classified as "
      f"{sorted(set(classes.tolist()))}")
assert collapsed.mean() > 0.5 and len(set(classes.tolist())) == 1

# %% [markdown]
# §6 finds the modules to keep in float32; exercise 3 asks which LayerNorms overflow.
#
# ## 4. BEiT's layer scale
#
# BEiT multiplies each branch by a learned per-channel vector λ before the residual add:
# `x ← x + λ₁ ⊙ attention(LN(x))`, then `x ← x + λ₂ ⊙ MLP(LN(x))`. λ starts at `layer_scale_init_value` (0.1 in
# transformers' `BeitConfig` and in digits-beit) so each block starts close to the identity; deeper models start
# much smaller (CaiT, which introduced the trick, at 1e-5 or 1e-6 in its 24- to 48-layer models: timm's
# `models/cait.py`). Here are digits-beit's trained λ:

# %%
beit = digits("digits-beit")
lambdas = {k: v for k, v in beit.weights.items() if "lambda" in k}
values = np.concatenate(list(lambdas.values()))
print(f"{len(lambdas)} vectors, |λ| from {np.abs(values).min():.1e} to {np.abs(values).max():.2f}, "
      f"median {np.median(np.abs(values)):.3f}")
print("λ's own fp16 rounding, largest relative change:",
      f"{np.max(np.abs(precision.round_fp16(values) - values) / np.abs(values)):.1e}")

# %% [markdown]
# λ itself is fine in fp16 (it is well above the subnormals). The risk is the **add**. In `x + λ ⊙ f`, the update
# `λ ⊙ f` is rounded onto the grid of `x`, whose spacing is 2⁻¹¹ to 2⁻¹⁰ of `|x|` in fp16, 2⁻⁸ to 2⁻⁷ in bf16: an update
# smaller than half a spacing is lost entirely, a slightly larger one keeps only a bit or two. A small λ makes the
# update small against the residual stream — by design — and so makes it sensitive to the format.
#
# We measure it on digits-beit with its λ multiplied by `c` (a different model for each `c`, compared with itself
# in float64): how much of each layer's update `layer output − layer input` survives, as NMSE of the update.

# %%
def beit_update_errors(c, fmt):
    weights = {k: v * np.float32(c) if "lambda" in k else v for k, v in beit.weights.items()}
    m32 = refvit.from_state_dict(beit.config, weights, backend="numpy")
    m64 = refvit.from_state_dict(beit.config, weights, backend="numpy", dtype="float64")
    xb = beit.pixel_values[:40]
    ref = m64(xb.astype(np.float64), output_intermediates=True).intermediates
    out = precision.emulate(m32, fmt)(xb, output_intermediates=True).intermediates
    stages = ["beit.embeddings"] + [f"beit.encoder.layer.{k}" for k in range(4)]
    return np.mean([nmse(out[b] - out[a], ref[b] - ref[a]) for a, b in zip(stages, stages[1:])])


cs = [1, 1e-1, 1e-2, 1e-3, 1e-4]
sweep = {fmt: [beit_update_errors(c, fmt) for c in cs] for fmt in ("fp16", "bf16")}
fig, ax = plt.subplots(figsize=(6.5, 3.4))
for fmt, e in sweep.items():
    ax.loglog(np.median(np.abs(values)) * np.array(cs), e, "o-", label=fmt)
ax.axhline(1, color="0.6", ls=":")
ax.set_xlabel("median |λ|"), ax.set_ylabel("NMSE of a layer's update"), ax.invert_xaxis(), ax.legend()
ax.set_title("digits-beit, λ × c: the smaller λ, the more of each update the add rounds away")
plt.show()
for fmt, e in sweep.items():
    print(fmt, " ".join(f"{v:.1e}" for v in e))
assert all(np.all(np.diff(e) > 0) for e in sweep.values())             # monotone: smaller λ, larger loss
assert all(f < b for f, b in zip(sweep["fp16"], sweep["bf16"]))

# %% [markdown]
# Each tenfold smaller λ costs 20–100× in the update's NMSE (its relative error grows as `1/λ`), until nothing is
# left of it (NMSE 1). At the trained λ (c = 1) fp16 loses about a millionth of each update's energy; at λ ≈ 1e-5
# (c = 1e-4) most of every update is gone in fp16 and nearly all of it in bf16: the blocks no longer do what they
# were trained to do. Folding λ into the projection before it does not help — the update `λ ⊙ f` is as small
# whoever multiplies — it only spares λ itself fp16's subnormals (1e-5 is stored 0.14% off). What helps is a residual
# stream in float32, the adds included; refvit's `keep_fp32` cannot express that, as it names modules and an add is
# not one.
#
# ## 5. int8-dynamic by hand
#
# ONNX Runtime's `quantize_dynamic` (the default `QInt8`) turns every Linear and Conv into integer arithmetic:
#
# * the **activation** is quantized at run time, per tensor and per call, to uint8 (`DynamicQuantizeLinear`): its
#   range `[min(x, 0), max(x, 0)]` is cut into 255 steps, `scale = (max − min)/255`, and a zero point makes 0 exact;
# * the **weight** is quantized once to int8, symmetric: `scale = 2·max|W|/254`, values in [−127, 127];
# * the products are summed in integers, then multiplied by `scale_x · scale_w`, and the float bias is added.
#
# Everything else (LayerNorm, softmax, GELU, attention's `q·k` and `p·v`, the residual adds) stays float32. Here
# is the quantization of one activation, the input of layer 2's MLP, by hand:

# %%
int8 = precision.emulate(model, "int8-dynamic")
_, calls = int8.profile(x)                           # every kernel call: name, kernel, output (float32 / emulated)
outputs = {c.name: c.output for c in calls}
act = outputs["vit.encoder.layer.2.layernorm_after"]
lo, hi = min(act.min(), 0), max(act.max(), 0)
scale = np.float32((hi - lo) / np.float32(255))
zero_point = np.rint(np.clip(-lo / scale, 0, 255))
q = np.clip(np.rint(act / scale) + zero_point, 0, 255)
mine = (q - zero_point).astype(np.float64)
refq, refscale = precision.dynamic_quantize(act)
assert np.array_equal(mine, refq) and scale == refscale
print(f"range [{lo:.2f}, {hi:.2f}] → scale {scale:.4f}, zero point {zero_point:.0f}; "
      f"rounding error up to {scale / 2:.4f} on values of typical size {np.sqrt(np.mean(act ** 2)):.2f}")

fig, ax = plt.subplots(figsize=(8, 2.8))
ax.hist(q.ravel(), bins=256, range=(0, 256))
ax.axvline(zero_point, color="C3"), ax.text(zero_point, ax.get_ylim()[1] * 0.8, " zero point", color="C3")
ax.set_xlabel("uint8 code"), ax.set_ylabel("values"), ax.set_yscale("log")
ax.set_title("one activation in uint8 (log scale): a few extreme values set the step for all")
plt.show()

# %% [markdown]
# The error per module, next to bf16 and fp16 from §2. int8 is the coarsest: 8 bits for the whole tensor's range,
# not 8 significant bits per value as in bf16, so a value far below the tensor's extremes gets few levels.

# %%
errors["int8-dynamic"] = module_errors(int8)
fig, ax = plt.subplots(figsize=(12, 3.6))
for fmt in ("int8-dynamic", "bf16", "fp16"):
    ax.semilogy(errors[fmt], ".-", label=fmt)
ax.set_xticks(blocks + [len(names)], [f"layer {k}" for k in range(len(blocks))] + ["logits"])
ax.set_ylabel("NMSE against float64"), ax.legend(fontsize=8)
ax.set_title("digits-vit, 40 digits in one call")
plt.show()
assert errors["int8-dynamic"][-1] > errors["bf16"][-1] > errors["fp16"][-1]

# %% [markdown]
# **A batch is not a single image.** The scale is per call: the same image gets another grid inside a batch (whose
# range is the widest of its images) than alone. Per image, the range of that activation:

# %%
alone = np.array([float(precision.dynamic_quantize(act[i])[1]) for i in range(len(act))])
print(f"scale of the batch of 40: {float(refscale):.4f}; of each image alone: {alone.min():.4f} to {alone.max():.4f}")
logits_alone = np.concatenate([int8(x120[i:i + 1]).logits for i in range(len(x120))])
logits_batch = int8(x120).logits
reference = model(x120).logits
print(f"120 digits, logits NMSE against float32: one call per image {nmse(logits_alone, reference):.2e}, "
      f"all in one call {nmse(logits_batch, reference):.2e}")
moved = int((logits_alone.argmax(-1) != logits_batch.argmax(-1)).sum())
print(f"digits classified differently alone than in the batch: {moved}")
assert float(refscale) >= alone.max() and nmse(logits_alone, reference) < nmse(logits_batch, reference)

# %% [markdown]
# Each image alone uses the whole uint8 range for itself; in a batch it shares the grid with the widest image, so
# its error is larger. Measure a port's int8 accuracy the way it will be served (one image per call, or the
# serving batch), and expect a batch-1 result to differ from a batched evaluation; `refvit precision --batch N`
# runs the agreement with N images per call. (*Try:* `precision.emulate(model, "int8-dynamic", per_channel=True)`,
# one weight scale per output channel, in `module_errors`.)
#
# ## 6. Which modules to keep in float32
#
# The practical question: the smallest set of modules that, kept in float32, bring the top-1 agreement with
# float32 back above a target. `refvit precision MODEL DATA --format fp16 --keep-fp32 auto` (or
# `precision_lab.analyse(..., auto=True)` in Python) measures every module's error on a few images, then keeps,
# greedily, the module that introduced the most error until the target is reached, and finally drops every kept
# module the target does not need. It is TensorRT's `debug precision`, named by checkpoint module. On the real
# digits-vit there is nothing to do (int8 and fp16 agree with float32 on ≥ 99.7% of the digits). On the scaled
# model of §3 in strict fp16 there is:

# %%
x40 = x120[:40]                                                # 40 digits: each step runs the model on all of them
report = precision_lab.analyse(scaled, x40, "fp16", strict=True, auto=True, batch=40, target=99.5)
text = precision_lab.format_report(report).splitlines()
print("\n".join(text[next(i for i, t in enumerate(text) if t.startswith("top-1")):]))  # the search, not the table
kept = report["keep_fp32"]["set"]
rescued = precision.emulate(scaled, "fp16", strict=True, keep_fp32=kept)
assert report["keep_fp32"]["reached"] and agreement(rescued(x40).logits, scaled_out.logits[:40]) >= 0.995
assert all("layernorm" in k for k in kept)

# %% [markdown]
# The search keeps LayerNorms only — no weights. Greedy by introduced error, it first keeps five LayerNorms and the
# classifier that change nothing on their own: the error each introduces is large, but the top-1 class hangs on
# the `[CLS]` token of the last one, `vit.layernorm`, which the per-module error ranks late. Once that is kept the
# target is reached, and the backward pass drops what is not needed. Each step costs a run over all the images:
# ten runs here, not one per subset of the 43 modules. Not every overflowing LayerNorm ends up in the set: the
# search targets agreement with float32, not the absence of overflow, and a token that overflows in a middle layer
# can be outvoted in the layers after it (exercise 3 counts which overflow).
#
# *Try:* `target=100`, or `precision.emulate(scaled, "fp16", strict=True, keep_fp32=["vit.layernorm"])` alone.
#
# On the command line, for a model folder and a folder of images (or a `.npy` of pixel values):
#
# ```bash
# refvit precision golden/models/digits-vit digits.npy --format int8-dynamic --keep-fp32 auto --target 100
# refvit precision MODEL images/ --format fp16 --strict --keep-fp32 auto --json report.json
# ```
#
# ## 7. Exercises
#
# Solutions: `tutorials/solutions/07_precision.py`.
#
# **Exercise 1.** Round the float32 array `VALUES` to bf16 **on the bits**: view it as `np.uint32`, round the top
# 16 bits to nearest with ties to even, clear the low 16 bits, view it back as float32. Return a float32 array.
# (Ties among `VALUES`: `1 + 2⁻⁸` must go to 1, `1 + 3·2⁻⁸` to `1 + 2⁻⁶`; a float32 subnormal, 1e-40, too.)

# %%
VALUES = np.concatenate([np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 0.1, 1e-40, 0.0, 65519.0, 3e38],
                                  np.float32),
                         (rng.standard_normal(2000) * 10.0 ** rng.uniform(-30, 30, 2000)).astype(np.float32)])


def exercise_1():
    raise NotImplementedError


check("exercise 1 (bf16 on the bits)", exercise_1, precision.round_bf16(VALUES), tol=0)

# %% [markdown]
# **Exercise 2.** Compute, by hand, the output of `vit.encoder.layer.0.intermediate.dense` (the MLP's first Linear,
# before its GELU) under int8-dynamic for the 40 digits of §5, from its input in that run,
# `outputs["vit.encoder.layer.0.layernorm_after"]`, and the raw checkpoint weight and bias in `d.weights`:
# the activation in uint8 with one scale for the whole call, the weight in int8 per tensor, integer products,
# rescale, bias. Return a float32 array (40, 65, 128).

# %%
def exercise_2():
    raise NotImplementedError


check("exercise 2 (an int8 Linear)", exercise_2, outputs["vit.encoder.layer.0.intermediate.dense"])

# %% [markdown]
# **Exercise 3.** Which LayerNorms of the scaled model (`scaled`, `s = 64`) overflow in a strict fp16 LayerNorm —
# some token's `Σ(x − μ)²` above 65504 — on the 120 digits `x120`, given their float32 inputs? Work the inputs out
# from `scaled_out.intermediates`: which tensor enters `layernorm_before`, which `layernorm_after` in a pre-norm
# ViT? Return the set of module names, e.g. `{"vit.layernorm"}`.
#
# The check's reference records each LayerNorm's float32 input (`parity.with_kernels`) and runs refvit's strict fp16
# LayerNorm on it.

# %%
def exercise_3():
    raise NotImplementedError


def overflowing_layer_norms(m, inputs):
    """The check's reference: LayerNorms (by name, in execution order) whose strict fp16 output has a token = β."""
    base, seen = parity.kernels_of(m), []

    def record(t, w, b, eps):
        fp16 = precision.strict_layer_norm(r, r(t), r(w), r(b), eps)
        seen.append(bool(np.all(fp16 == r(b), axis=-1).any()))
        return base.layer_norm(t, w, b, eps)

    with np.errstate(over="ignore", invalid="ignore"):
        parity.with_kernels(m, layer_norm=record)(inputs)
    norms = [n for n in names if "layernorm" in n]
    assert len(norms) == len(seen)
    return {n for n, hit in zip(norms, seen) if hit}


check("exercise 3 (overflowing LayerNorms)", exercise_3, overflowing_layer_norms(scaled, x120))
