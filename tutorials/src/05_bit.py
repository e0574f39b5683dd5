# %% [markdown]
# # BiT: weight standardisation, group normalisation, the pre-activation bottleneck
#
# Kolesnikov et al. 2019, *Big Transfer (BiT)*: a ResNet-v2 (He et al. 2016, *Identity Mappings in Deep Residual
# Networks*: normalisation and activation *before* each convolution) in which every BatchNorm is replaced by
# **GroupNorm** (Wu & He 2018) and every convolution by a **weight-standardised** one (Qiao et al. 2019). Neither
# depends on the batch, which is the point: BiT trains with large batches spread over many devices (few images per
# device) and transfers without BatchNorm statistics to re-estimate. Framework: `transformers/models/bit/modeling_bit.py`
# (`WeightStandardizedConv2d`, `BitGroupNormActivation`, `BitPreActivationBottleneckLayer`).
#
# Model: `golden/models/digits-bit`, a two-stage pre-activation BiT trained on handwritten digits by
# `golden/train_digits.py` (the teacher of notebook 02). We build every piece by hand from the raw checkpoint, one
# complete bottleneck, then the whole model over the 360 test digits, asserted against refvit's intermediates; then
# three planted quirks and exercises.

# %%
import matplotlib.pyplot as plt
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from common import assert_close, block_diagram, check, close, digits, first_divergence, planted

d = digits("digits-bit")
cfg, Wt = d.config, d.weights                       # Wt: the checkpoint's raw (unstandardised) weights
pixel_values, labels = d.pixel_values, d.labels
x = pixel_values[:16]
out = d.model(x, output_intermediates=True)
inter = out.intermediates
G = cfg["num_groups"]
print(d.model, "\nlayer type", cfg["layer_type"], "| hidden sizes", cfg["hidden_sizes"], "| groups", G)
print("intermediates:", *inter, sep="\n  ")

# %% [markdown]
# ## 0. Shapes and the block

# %%
E, (C1, C2) = cfg["embedding_size"], cfg["hidden_sizes"]
for a, b in [("pixel_values", "(B, 3, 32, 32)"), ("stem: WS conv 7×7 / 2, pad 3", f"(B, {E}, 16, 16)"),
             ("zero pad 1, max-pool 3×3 / 2", f"(B, {E}, 8, 8)"),
             (f"stage 0: 1 bottleneck, stride 1, mid {C1 // 4}", f"(B, {C1}, 8, 8)"),
             (f"stage 1: 1 bottleneck, stride 2, mid {C2 // 4}", f"(B, {C2}, 4, 4)"),
             ("GroupNorm + ReLU, global mean", f"(B, {C2})"), ("classifier", "(B, 10)")]:
    print(f"{a:44s} {b}")

fig, ax = plt.subplots(figsize=(6.8, 4.6))
block_diagram(ax, [("x", "(B, Cin, h, w)"), ("GroupNorm + ReLU (norm1)", ""),
                   ("WS conv 1×1 → mid (conv1)", "(B, mid, h, w)"), ("GroupNorm + ReLU (norm2)", ""),
                   ("WS conv 3×3, stride s (conv2)", "(B, mid, h/s, w/s)"), ("GroupNorm + ReLU (norm3)", ""),
                   ("WS conv 1×1 → Cout (conv3)", "(B, Cout, h/s, w/s)")], residuals=[(1, 6)],
              title="BitPreActivationBottleneckLayer; shortcut = WS conv 1×1 / s of norm1's output (first layer)")
plt.show()

# %% [markdown]
# ## 1. Weight standardisation
#
# Before each convolution, every output filter `W_o` (all its `C_in·k·k` weights) is shifted and scaled to zero mean
# and unit variance: `Ŵ_o = (W_o − mean(W_o)) / sqrt(var(W_o) + ε)`, with the **biased** variance (÷ `C_in·k·k`)
# and **ε = 1e-8** at every call site in modeling_bit.py (the class default is 1e-6). transformers recomputes it in
# every forward; refvit does it once, at load. The checkpoint holds the raw weights, so we standardise them and run
# the stem convolution with them:

# %%
WS_EPS, GN_EPS = 1e-8, 1e-5


def standardize(W, eps=WS_EPS):
    """WeightStandardizedConv2d's weight: each output filter to mean 0, variance 1 (biased variance)."""
    flat = W.astype(np.float64).reshape(W.shape[0], -1)                          # (C_out, C_in·k·k)
    var = flat.var(1, keepdims=True)
    return ((flat - flat.mean(1, keepdims=True)) / np.sqrt(var + eps)).reshape(W.shape)


def conv2d(x, W, stride=1, pad=0):
    """Conv2d (NCHW), no bias, as im2col + one einsum."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = W.shape[-1]
    windows = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]   # (B, Cin, h, w, k, k)
    return np.einsum("bchwij,ocij->bohw", windows, W, optimize=True)


raw = Wt["bit.embedder.convolution.weight"].astype(np.float64)                   # (C_out, C_in, 7, 7), as trained
W_hat = standardize(raw)
stem = conv2d(x.astype(np.float64), W_hat, stride=2, pad=3)
assert_close(stem, inter["bit.embedder.convolution"], "stem convolution")
flat = raw.reshape(raw.shape[0], -1)
print(f"stem filters: raw mean {flat.mean(1).min():+.3f}..{flat.mean(1).max():+.3f}, std {flat.std(1).min():.3f}.."
      f"{flat.std(1).max():.3f}; standardised: mean 0, std 1; the stem conv with them = refvit's")

fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
axes[0].hist(flat.ravel(), bins=60, alpha=.6, label="raw")
axes[0].hist(W_hat.ravel(), bins=60, alpha=.6, label="standardised")
axes[0].set_title("stem weights"), axes[0].legend(fontsize=8)
axes[1].bar(range(raw.shape[0]), flat.mean(1)), axes[1].set_title("raw mean per output filter")
axes[2].bar(range(raw.shape[0]), flat.std(1)), axes[2].set_title("raw std per output filter (standardised: 1)")
fig.tight_layout()
plt.show()

# %% [markdown]
# A consequence: scaling a filter, or adding a constant to it, no longer changes the network — only the filter's
# *direction* after centring matters (up to the tiny ε). Qiao et al. argue this smooths the loss landscape, and in
# their experiments GroupNorm *with* WS closes most of the gap between GroupNorm alone and BatchNorm at large batch
# sizes, and beats BatchNorm at one or two images per device. That is an empirical result about training; WS does
# not make GroupNorm equivalent to BatchNorm, and it changes nothing about what GroupNorm computes.

# %%
scaled = raw * 7.0 + 0.3                                                          # a different raw filter bank
rel = np.abs(standardize(scaled) / W_hat - 1).max()
assert rel < 1e-5                                                                  # ε/(2·var) ≈ 3e-6
print(f"standardize(7·W + 0.3) == standardize(W) up to {rel:.1e} relative: the ε = 1e-8 next to var(W) ≈ "
      f"{flat.var(1).mean():.1e}")

# %% [markdown]
# ## 2. Group normalisation
#
# GroupNorm splits the `C` channels into `G` groups of consecutive channels and normalises each (sample, group) over
# its `C/G · h · w` values (biased variance, eps 1e-5), then applies a per-channel affine map; BiT follows it with
# ReLU (`BitGroupNormActivation`).

# %%
def group_norm_relu(x, name, relu=True, eps=GN_EPS):
    """BitGroupNormActivation: GroupNorm(G, eps) then ReLU."""
    B, C = x.shape[:2]
    g = x.reshape(B, G, -1)                                                       # (B, G, C/G · h · w)
    y = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(x.shape)
    y = y * Wt[f"{name}.weight"][:, None, None] + Wt[f"{name}.bias"][:, None, None]
    return np.maximum(y, 0) if relu else y


feat = inter["bit.embedder"].astype(np.float64)                                   # (B, C, h, w), the stem's output
y = group_norm_relu(feat, "bit.encoder.stages.0.layers.0.norm1")
assert_close(y, inter["bit.encoder.stages.0.layers.0.norm1"], "norm1")
groups = feat.reshape(feat.shape[0], G, -1)
print(f"GroupNorm: {feat.shape[1]} channels in {G} groups of {feat.shape[1] // G}, each normalised over "
      f"{groups.shape[-1]} values")

normed = (groups - groups.mean(-1, keepdims=True)) / np.sqrt(groups.var(-1, keepdims=True) + GN_EPS)
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].scatter(groups.mean(-1).ravel(), groups.std(-1).ravel(), s=8, label="before")
axes[0].scatter(normed.mean(-1).ravel(), normed.std(-1).ravel(), s=8, label="after (before the affine map)")
axes[0].set(xlabel="mean", ylabel="std", title="statistics of each (sample, group)"), axes[0].legend(fontsize=8)
hh, ww = feat.shape[2:]
im = axes[1].imshow(feat[0, :16].reshape(2, 8, hh, ww).transpose(0, 2, 1, 3).reshape(2 * hh, 8 * ww), cmap="gray")
fig.colorbar(im, ax=axes[1], label="activation (one scale)")
axes[1].set_title("stem output, first 16 channels of one digit"), axes[1].set_axis_off()
plt.show()

# %% [markdown]
# ## 3. One pre-activation bottleneck, then the whole model
#
# ResNet-v2 order: GroupNorm+ReLU first (`norm1`), and the projection shortcut (`downsample`, first layer of each
# stage) convolves that *pre-activated* input; the residual branch is 1×1 → 3×3 (stride) → 1×1 with GroupNorm+ReLU
# before each inner conv; no activation after the add. The stem: WS conv 7×7/2 (padding 3), then — with no global
# padding — a zero pad of 1 and a 3×3/2 max-pool without padding. The head: GroupNorm+ReLU, global mean, Linear.
# This is the clean model: no switches for bugs. §5 plants each bug by swapping one small function for a variant.

# %%
def ws(name):
    """The standardised weight of one conv."""
    return standardize(Wt[f"{name}.weight"])


def bottleneck(x, name, stride, rec):
    """BitPreActivationBottleneckLayer."""
    pre = rec[f"{name}.norm1"] = group_norm_relu(x, f"{name}.norm1")
    shortcut = x
    if f"{name}.downsample.conv.weight" in Wt:
        shortcut = rec[f"{name}.downsample.conv"] = conv2d(pre, ws(f"{name}.downsample.conv"), stride)
    h = rec[f"{name}.conv1"] = conv2d(pre, ws(f"{name}.conv1"))
    h = rec[f"{name}.norm2"] = group_norm_relu(h, f"{name}.norm2")
    h = rec[f"{name}.conv2"] = conv2d(h, ws(f"{name}.conv2"), stride, pad=1)
    h = rec[f"{name}.norm3"] = group_norm_relu(h, f"{name}.norm3")
    h = rec[f"{name}.conv3"] = conv2d(h, ws(f"{name}.conv3"))
    out = rec[name] = h + shortcut
    return out


def max_pool(x, k=3, stride=2):
    return sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride].max(axis=(-1, -2))


def stem_pool(h):
    """The stem's pooling: zero padding of 1 (transformers' BitMaxPool2d without global padding), then 3×3 / 2."""
    return max_pool(np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=0.0))


def forward(x, rec=None):
    """BitForImageClassification (pre-activation, no global padding) by hand -> logits."""
    rec = {} if rec is None else rec
    h = rec["bit.embedder.convolution"] = conv2d(x.astype(np.float64), ws("bit.embedder.convolution"), 2, 3)
    h = rec["bit.embedder.pooler"] = stem_pool(h)
    for s, depth in enumerate(cfg["depths"]):
        for j in range(depth):
            h = bottleneck(h, f"bit.encoder.stages.{s}.layers.{j}", 2 if s > 0 and j == 0 else 1, rec)
    h = rec["bit.norm"] = group_norm_relu(h, "bit.norm")
    pooled = h.mean(axis=(2, 3))                                                   # (B, C)
    return pooled @ Wt["classifier.1.weight"].T + Wt["classifier.1.bias"]


mine = {}
logits = forward(x, rec=mine)
for n, t in mine.items():
    assert_close(t, inter[n], n)
assert_close(logits, out.logits, "logits")
print(f"{len(mine)} hand-built intermediates match refvit's; not rebuilt (same numbers under another name): "
      f"{[n for n in inter if n not in mine]}")
all_logits = forward(pixel_values)
assert_close(all_logits, d.recorded["logits"], "logits vs PyTorch")
assert (all_logits.argmax(-1) == np.array(d.meta["test_predictions"])).all()
correct = d.accuracy(all_logits)
print(f"360 digits by hand: accuracy {correct:.2%}, PyTorch's class on every image")

# %% [markdown]
# **What standardisation does to the activations.** The same trained checkpoint, run once as the model is (every conv
# weight standardised) and once with the raw weights (`ws` swapped for a function returning them unchanged), on the
# first 16 digits: the standard deviation of every conv's output. The raw filters' scale (std ≈ 0.04 here) is
# whatever initialisation, learning rate and weight decay made it; standardised, every filter has variance 1. On this
# checkpoint every conv's output is 3–20× larger with the standardised weights, and — the point of WS — that scale
# no longer depends on the raw filters' magnitude (§1 and exercise 3), only on their direction and on the input. (The
# raw-weight run is not a model anyone trained; it only isolates what the standardisation step contributes.)

# %%
def ws_raw(name):
    return Wt[f"{name}.weight"].astype(np.float64)


stats = {}
for label, weight_fn in (("standardised (the model)", ws), ("raw weights, no standardisation", ws_raw)):
    rec = {}
    with planted(globals(), "ws", weight_fn):          # `forward` with its helper `ws` swapped (tutorials/common.py)
        forward(x, rec=rec)
    stats[label] = {n: float(t.std()) for n, t in rec.items() if n.split(".")[-1].startswith("conv")}
names = list(stats["standardised (the model)"])
fig, ax = plt.subplots(figsize=(9, 3))
for label, st in stats.items():
    ax.plot(range(len(names)), [st[n] for n in names], "o-", label=label)
ax.set_xticks(range(len(names)), [n.replace("bit.encoder.stages.", "s").replace(".layers.0", "")
                                  .replace("bit.embedder.convolution", "stem") for n in names], rotation=30, fontsize=7)
ax.set(yscale="log", ylabel="std of the conv output", title="every conv's output, first 16 digits")
ax.legend(fontsize=8)
plt.show()
ratio = [stats["standardised (the model)"][n] / stats["raw weights, no standardisation"][n] for n in names]
print(f"standardised / raw output std per conv: {np.min(ratio):.0f}x to {np.max(ratio):.0f}x")

# %% [markdown]
# **Why this helps GroupNorm.** Split each input patch of a conv into its average level and the rest: the output of
# filter `W_o` is `mean(W_o) · n · (average input level) + W_o · (the patch minus its average)`, `n = C_in·k·k`.
# Standardised, every filter has mean 0 and the first term is gone. With raw filters it stays, and it is a different
# offset for every channel (each filter has its own mean) that follows the local input level (non-negative here:
# every conv but the stem reads a ReLU's output). GroupNorm subtracts *one* mean per group of channels and divides
# by *one* std: it cannot remove offsets that differ from channel to channel inside a group, so what it passes on
# is partly "which channel am I" instead of "what is in the image". Measured on the same 16 digits as above: for
# one digit and one conv, each channel's mean and spread over the positions, grouped as GroupNorm groups them; then,
# for every conv that feeds a GroupNorm, the share of a group's variance that is differences between its channels'
# means (per digit and group, as GroupNorm sees them, averaged).

# %%
def between_channel_share(t):
    """(B, C, h, w) -> the mean over samples and groups of var(channel means) / var(group), GroupNorm's view."""
    g = t.reshape(t.shape[0], G, t.shape[1] // G, -1)                              # (B, G, C/G, h·w)
    return float(np.mean(g.mean(-1).var(-1) / g.var(axis=(2, 3))))


recs = {}
for label, weight_fn in (("standardised", ws), ("raw", ws_raw)):
    recs[label] = {}
    with planted(globals(), "ws", weight_fn):
        forward(x, rec=recs[label])
# what each GroupNorm normalises: the stem's pooled output, conv1, conv2, and each layer's output (conv3 + shortcut)
feeds_gn = ["bit.embedder.pooler", *[n for n in names if n.endswith(("conv1", "conv2"))],
            "bit.encoder.stages.0.layers.0", "bit.encoder.stages.1.layers.0"]
short = lambda n: (n.replace("bit.embedder.pooler", "stem").replace("bit.encoder.stages.", "s")
                   .replace(".layers.0.", " ").replace(".layers.0", " out"))
share = {label: [between_channel_share(rec[n]) for n in feeds_gn] for label, rec in recs.items()}
conv = "bit.encoder.stages.1.layers.0.conv1"
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), gridspec_kw=dict(width_ratios=[1, 1, 1.2]))
axes[1].sharey(axes[0])
for ax, label in zip(axes, ("raw", "standardised")):
    t = recs[label][conv][0].reshape(recs[label][conv].shape[1], -1)               # digit 0: (C, h·w)
    t = t / t.std()                                                       # in units of this output's std
    ax.errorbar(range(len(t)), t.mean(1), yerr=t.std(1), fmt="o", ms=3, lw=1)
    for k in range(1, G):
        ax.axvline(k * len(t) // G - 0.5, color="0.8", lw=0.8)
    ax.set(title=f"{label} weights: {short(conv)}, one digit", xlabel="channel (grey lines: groups)",
           ylabel="mean ± std over positions (÷ std)")
    ax.title.set_fontsize(8)
xs = np.arange(len(feeds_gn))
for k, (label, vals) in enumerate(share.items()):
    axes[2].bar(xs + 0.4 * k - 0.2, vals, 0.4, label=label)
axes[2].set_xticks(xs, [short(n) for n in feeds_gn], rotation=30, fontsize=7)
axes[2].set(ylabel="share of a group's variance", title="between-channel share, every GroupNorm input")
axes[2].title.set_fontsize(8), axes[2].legend(fontsize=8)
fig.tight_layout()
plt.show()
for label, vals in share.items():
    print(f"{label:12s} between-channel share: " + "  ".join(f"{v:.2f}" for v in vals))
assert all(a < b for a, b in zip(share["standardised"], share["raw"]))

# %% [markdown]
# With raw filters the channels of one group sit at visibly different levels (left) and up to about three quarters
# of a group's variance is those differences; standardised, the channel means lie close together and the share
# drops at every GroupNorm input — GroupNorm's one mean and one std per group then describe each channel of the
# group much better. Same caveat as above: the raw-weight run is this WS-trained checkpoint without its
# standardisation, not a model trained without WS. Qiao et al. add an optimisation argument (smoother loss,
# smaller gradient norms) that one forward pass cannot show.

# %% [markdown]
# ## 4. Why batch size stops mattering
#
# BatchNorm in training normalises each channel with statistics over the *batch* (and positions): an image's output
# depends on which other images share its batch, and small batches give noisy statistics. GroupNorm's statistics are
# per sample. Compare the output for image 0 when it is normalised in batches of 1 to 16, both ways:

# %%
def batch_norm_train(x, eps=1e-5):
    """BatchNorm2d in training mode, no affine map: per-channel statistics over (batch, h, w)."""
    return (x - x.mean((0, 2, 3), keepdims=True)) / np.sqrt(x.var((0, 2, 3), keepdims=True) + eps)


def group_norm_plain(x, eps=GN_EPS):
    g = x.reshape(x.shape[0], G, -1)
    return ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(x.shape)


sizes = [1, 2, 4, 8, 16]
bn_drift = [np.abs(batch_norm_train(feat[:n])[0] - batch_norm_train(feat[:16])[0]).max() for n in sizes]
gn_drift = [np.abs(group_norm_plain(feat[:n])[0] - group_norm_plain(feat[:16])[0]).max() for n in sizes]
assert max(gn_drift) == 0                                                         # per-sample: exactly independent
fig, ax = plt.subplots(figsize=(5, 2.8))
ax.plot(sizes, bn_drift, "o-", label="BatchNorm (training statistics)")
ax.plot(sizes, gn_drift, "s-", label="GroupNorm")
ax.set(xscale="log", xticks=sizes, xticklabels=sizes, xlabel="batch size",
       ylabel="max |Δ output of image 0|", title="vs. the same image normalised in a batch of 16")
ax.legend(fontsize=8)
plt.show()

alone = np.concatenate([d.model(pixel_values[i:i + 1]).logits for i in range(8)])
together = d.model(pixel_values[:8]).logits
assert_close(alone, together, "batch independence")
print(f"refvit, batch of 8 vs one at a time: max diff {np.abs(alone - together).max():.1e} (BLAS rounding only)")

# %% [markdown]
# At inference a BatchNorm network is batch-independent too, through its running statistics; BiT never needs such
# statistics, so training, fine-tuning and inference all normalise the same way.
#
# ## 5. Planted quirks
#
# * `ws_eps`: weight standardisation with the class default ε = 1e-6 instead of the 1e-8 every call site passes.
# * `ws_unbiased`: standardisation with the unbiased variance (÷(n−1), torch's `var()` default) instead of the
#   biased one of `batch_norm(training=True)`: every weight is scaled by `sqrt((n−1)/n)`, a relative error of about
#   `1/(2n)` with `n = C_in·k·k` (1/294 for the stem's 3·7·7 = 147 weights per filter).
# * `pool_pad_inf`: the stem's pad-then-pool written as `MaxPool2d(3, 2, padding=1)`, which pads with −∞ instead of
#   transformers' zeros: different wherever a border window's conv outputs are all negative.
#
# As in notebook 01, each quirk replaces one clean helper by name; `quirk_report` (in `tutorials/common.py`) shows it
# as a diff against that helper and runs `run()` with it planted.

# %%
from common import quirk_report


def ws_eps(name):
    return standardize(Wt[f"{name}.weight"], eps=1e-6)


def ws_unbiased(name):
    W = Wt[f"{name}.weight"].astype(np.float64)
    flat = W.reshape(W.shape[0], -1)
    return ((flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True, ddof=1) + WS_EPS)).reshape(W.shape)


def pool_pad_inf(h):
    return max_pool(np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf))


quirks = {"ws_eps": ("ws", ws_eps), "ws_unbiased": ("ws", ws_unbiased), "pool_pad_inf": ("stem_pool", pool_pad_inf)}


def run():
    """The model as it now is: intermediates of the first digits, accuracy on all 360."""
    rec = {}
    forward(x, rec=rec)
    return rec, d.accuracy(forward(pixel_values))


quirk_report(globals(), quirks, run, inter, correct)
var_w = {n: t.reshape(t.shape[0], -1).var(1).min() for n, t in Wt.items() if t.ndim == 4}   # every conv's filters
print(f"smallest filter variance {min(var_w.values()):.1e}: ε = 1e-6 changes such a filter by ≈ "
      f"{1e-6 / (2 * min(var_w.values())):.1e} relative (ε = 1e-8: {1e-8 / (2 * min(var_w.values())):.1e})")

# %% [markdown]
# Neither WS error is "smaller than float32 rounding" (~6e-8 relative): the biased/unbiased difference is ~1/(2n),
# thousands of times larger, and the ε change is `≈ (1e-6 − 1e-8) / (2·var(W))`, which grows as the trained filters'
# variance shrinks. Both leave the tolerance at the first convolution; the class barely moves, because every filter
# of a layer is scaled by nearly the same factor and the next GroupNorm divides most of it out again.
#
# ## 6. Exercises
#
# Solutions: `tutorials/solutions/05_bit.py`.
#
# **Exercise 1.** The output of `conv2` of stage 1 (3×3, stride 2, padding 1) for the first 16 digits from refvit's
# `norm2` output of that layer and the raw checkpoint weight.

# %%
def exercise_1():
    raise NotImplementedError


check("exercise 1 (stage 1 conv2)", exercise_1, inter["bit.encoder.stages.1.layers.0.conv2"])

# %% [markdown]
# **Exercise 2.** The final `bit.norm` (GroupNorm + ReLU) from refvit's output of the last stage.

# %%
def exercise_2():
    raise NotImplementedError


check("exercise 2 (final GroupNorm)", exercise_2, inter["bit.norm"])

# %% [markdown]
# **Exercise 3.** Weight standardisation makes a conv blind to some changes of its raw filters and not to others.
# Which of these edits of the raw checkpoint leave the logits of the first 16 digits unchanged (within `close`, the
# float32 tolerance)?
#
# * `a`: every conv weight (the 4-D tensors) multiplied by 10;
# * `b`: 0.5 added to every conv weight;
# * `c`: every conv weight multiplied by −1;
# * `d`: the classifier's weight (`classifier.1.weight`) multiplied by 10;
# * `e`: each output filter of every conv multiplied by its own factor,
#   `np.random.default_rng(0).uniform(1, 10, (C_out, 1, 1, 1))` (a new generator per conv).
#
# Run the hand-built `forward` with each edited checkpoint (it reads the global `Wt`: swap it in, and restore it)
# and return the set of letters, e.g. `{"a", "d"}`. Then explain each letter from the formula of §1.

# %%
def exercise_3():
    raise NotImplementedError


# WS maps each filter W_o to (W_o − mean)/std: a positive per-filter scale (a, e) and a constant shift (b) cancel,
# a sign flip (c) survives it (and the max-pool after the stem is not odd), the classifier (d) is not standardised
check("exercise 3 (what standardisation ignores)", exercise_3, {"a", "b", "e"})

# %% [markdown]
# ## 7. Find the bug
#
# `tutorials/hunt/bit_port.py` is a NumPy port of this model written from modeling_bit.py, as a porter might — with
# one bug. Don't read it yet. It runs, and its accuracy on the 360 digits says something is wrong:

# %%
from hunt import bit_port as port

print(f"the port's accuracy: {d.accuracy(port.forward(pixel_values, Wt, cfg)):.2%} (refvit, PyTorch: {correct:.2%})")

# %% [markdown]
# **Exercise 4.** Find the bug and fix it: return a dict `{helper name: your corrected function}` that
# `port.forward(x, Wt, cfg, fixes=...)` uses in place of the port's own helper of that name (same signature).
# `check` runs the port with your fix and compares its logits with refvit's, so only a real fix passes.
#
# *Hint 1 (where to look), if you are stuck:* `port.forward(x, Wt, cfg, rec)` records its intermediates under
# refvit's names; `first_divergence(rec, inter)` gives the first module where they leave the tolerance.
#
# *Hint 2 (which tensor), if you are still stuck:* the first diverging tensor is a GroupNorm's output, and the
# conv before it agrees. Compare which channels the port puts in one group with `group_norm_relu` in §2.

# %%
def exercise_4():
    raise NotImplementedError


check("exercise 4 (the port's bug, fixed)", lambda: port.forward(x, Wt, cfg, fixes=exercise_4()), out.logits)
