# %% [markdown]
# # BiT: weight standardization and group normalization
#
# Kolesnikov et al. 2019, *Big Transfer (BiT)*: a ResNet-v2 in which every BatchNorm is replaced by **GroupNorm**
# (Wu & He 2018) and every convolution by a **weight-standardized** one (Qiao et al. 2019). Neither depends on the
# batch, which is the point: BiT trains with small per-device batches and transfers without BatchNorm statistics to
# re-estimate. Framework: `transformers/models/bit/modeling_bit.py` (`WeightStandardizedConv2d`,
# `BitGroupNormActivation`, `BitPreActivationBottleneckLayer`); refvit: `refvit/models/bit.py`.
#
# Model: `golden/models/digits-bit`, a two-stage pre-activation BiT trained on handwritten digits by
# `golden/train_digits.py` (the teacher of the DeiT notebook).

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import refvit
from refvit import kernels
from refvit.checkpoint import load_state_dict
from refvit.datasets import digit_image
from refvit.models import bit

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "golden" / "models").is_dir())
MODEL = ROOT / "golden" / "models" / "digits-bit"
K = kernels.get("numpy")

model = refvit.from_pretrained(MODEL, backend="numpy")
cfg = model.config
test = np.load(ROOT / "golden" / "models" / "digits_test.npz")
processor = refvit.AutoImageProcessor.from_pretrained(MODEL)
pixel_values = processor(images=[digit_image(s) for s in test["images"]], return_tensors="np")["pixel_values"]
print(model, "\nlayer type", cfg.layer_type, "| hidden sizes", cfg.hidden_sizes, "| groups", cfg.num_groups)

# %% [markdown]
# ## 1. Weight standardization
#
# Before each convolution, every output filter `W_o` (all its `C_in·k·k` weights) is shifted and scaled to zero mean
# and unit variance: `Ŵ_o = (W_o − mean(W_o)) / sqrt(var(W_o) + ε)`, with the *biased* variance and ε = 1e-8 at
# every call site in modeling_bit.py (the class default is 1e-6). transformers recomputes it in every forward; refvit
# does it once, at load (`bit.standardize_weight`). The checkpoint holds the raw weights:

# %%
raw, _ = load_state_dict(MODEL)
W = raw["bit.embedder.convolution.weight"].astype(np.float64)                    # (C_out, C_in, k, k), as trained
flat = W.reshape(W.shape[0], -1)                                                  # one row per output filter
mean, var = flat.mean(1, keepdims=True), flat.var(1, keepdims=True)               # np.var is biased
W_hat = ((flat - mean) / np.sqrt(var + bit.WS_EPS)).reshape(W.shape)

loaded = model.params["bit"]["embedder"]["convolution"]["weight"]                 # what refvit runs
np.testing.assert_allclose(W_hat, loaded, rtol=1e-6, atol=1e-6)
print("stem filters: raw mean", f"{flat.mean(1).min():+.3f}..{flat.mean(1).max():+.3f},",
      "std", f"{flat.std(1).min():.3f}..{flat.std(1).max():.3f};  standardized: mean 0, std 1 (all",
      W.shape[0], "filters)")

fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
axes[0].hist(flat.ravel(), bins=60, alpha=.6, label="raw")
axes[0].hist(W_hat.ravel(), bins=60, alpha=.6, label="standardized")
axes[0].set_title("stem weights"), axes[0].legend(fontsize=8)
axes[1].bar(range(W.shape[0]), flat.mean(1)), axes[1].set_title("raw mean per output filter")
axes[2].bar(range(W.shape[0]), flat.std(1)), axes[2].set_title("raw std per output filter (standardized: 1)")
fig.tight_layout()
plt.show()

# %% [markdown]
# A consequence: scaling a filter, or adding a constant to it, no longer changes the network. Only the filter's
# *shape* matters (up to the tiny ε), which smooths the loss landscape (Qiao et al.) and is what lets GroupNorm
# replace BatchNorm without losing accuracy.

# %%
scaled = W * 7.0 + 0.3                                                            # a different raw filter bank
np.testing.assert_allclose(bit.standardize_weight(scaled), W_hat, rtol=1e-5, atol=0)
rel = np.abs(bit.standardize_weight(scaled) / W_hat - 1).max()
print(f"standardize(7·W + 0.3) == standardize(W) up to {rel:.1e} relative: "
      f"the ε = 1e-8 next to var(W) ≈ {var.mean():.1e}")

# %% [markdown]
# ## 2. Group normalization
#
# GroupNorm splits the `C` channels into `G` groups of consecutive channels and normalises each (sample, group)
# over its `C/G · h · w` values, then applies a per-channel affine map; BiT follows it with ReLU
# (`BitGroupNormActivation`). By hand, on the input of the first block's `norm1`:

# %%
x = pixel_values[:16]
out = model(x, output_intermediates=True)
inter = out.intermediates
feat = inter["bit.embedder"]                                                      # (B, C, h, w), the stem's output
B, C, h, w = feat.shape
G = cfg.num_groups
groups = feat.reshape(B, G, -1)                                                   # (B, G, C/G · h · w)
normed = (groups - groups.mean(-1, keepdims=True)) / np.sqrt(groups.var(-1, keepdims=True) + bit.GN_EPS)
p = model.params["bit"]["encoder"]["stages"][0]["layers"][0]["norm1"]
y = normed.reshape(B, C, h, w) * p["weight"][:, None, None] + p["bias"][:, None, None]
y = np.maximum(y, 0)                                                              # ReLU
np.testing.assert_allclose(y, inter["bit.encoder.stages.0.layers.0.norm1"], rtol=1e-4, atol=1e-5)
print(f"GroupNorm: {C} channels in {G} groups of {C // G}, each normalised over {C // G}·{h}·{w} = "
      f"{groups.shape[-1]} values")

fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
axes[0].scatter(groups.mean(-1).ravel(), groups.std(-1).ravel(), s=8, label="before")
axes[0].scatter(normed.mean(-1).ravel(), normed.std(-1).ravel(), s=8, label="after (before the affine map)")
axes[0].set(xlabel="mean", ylabel="std", title="statistics of each (sample, group)"), axes[0].legend(fontsize=8)
axes[1].imshow(feat[0, :G * 2].reshape(2, G, h, w).transpose(0, 2, 1, 3).reshape(2 * h, G * w), cmap="gray")
axes[1].set_title("stem output, first 16 channels of one digit"), axes[1].set_axis_off()
plt.show()

# %% [markdown]
# ## 3. Why batch size stops mattering
#
# BatchNorm in training normalises each channel with statistics over the *batch* (and positions): an image's output
# depends on which other images share its batch, and small batches give noisy statistics. GroupNorm's statistics
# are per sample. Compare the output for image 0 when it is normalised in batches of 1 to 16, both ways:

# %%
def batch_norm_train(x, eps=1e-5):
    """BatchNorm2d in training mode: per-channel statistics over (batch, h, w)."""
    return (x - x.mean((0, 2, 3), keepdims=True)) / np.sqrt(x.var((0, 2, 3), keepdims=True) + eps)


def group_norm(x, groups, eps=bit.GN_EPS):
    g = x.reshape(x.shape[0], groups, -1)
    return ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(x.shape)


sizes = [1, 2, 4, 8, 16]
bn_alone, gn_alone = batch_norm_train(feat[:1]), group_norm(feat[:1], G)
bn_drift = [np.abs(batch_norm_train(feat[:n])[0] - batch_norm_train(feat[:16])[0]).max() for n in sizes]
gn_drift = [np.abs(group_norm(feat[:n], G)[0] - group_norm(feat[:16], G)[0]).max() for n in sizes]
assert max(gn_drift) == 0                                                         # per-sample: exactly independent

fig, ax = plt.subplots(figsize=(5, 2.8))
ax.plot(sizes, bn_drift, "o-", label="BatchNorm (training statistics)")
ax.plot(sizes, gn_drift, "s-", label="GroupNorm")
ax.set(xscale="log", xticks=sizes, xticklabels=sizes, xlabel="batch size",
       ylabel="max |Δ output of image 0|", title="vs. the same image normalised in a batch of 16")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# At inference a BatchNorm network is batch-independent too, through its running statistics; BiT simply never needs
# such statistics, so training, fine-tuning and inference all normalise the same way. The whole model: each image's
# logits do not depend on the batch (up to BLAS rounding, since a bigger product may be blocked differently).

# %%
alone = np.concatenate([model(pixel_values[i:i + 1]).logits for i in range(8)])
together = model(pixel_values[:8]).logits
np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-5)

meta = json.loads((MODEL / "meta.json").read_text())
logits = model(pixel_values).logits
recorded = np.load(MODEL / "logits.npz")["logits"]
np.testing.assert_allclose(logits, recorded, rtol=0, atol=1e-4 * max(1, np.abs(recorded).max()))
assert (logits.argmax(-1) == np.array(meta["test_predictions"])).all()
print(f"batch of 8 vs one at a time: max diff {np.abs(alone - together).max():.1e}; "
      f"test accuracy {np.mean(logits.argmax(-1) == test['labels']):.1%} (PyTorch {meta['test_accuracy']:.1%})")
