# %% [markdown]
# # ViT from pixels to logits
#
# Dosovitskiy et al. 2020, *An Image is Worth 16x16 Words*: cut the image into patches, embed each patch linearly,
# put a learned `[CLS]` token in front, add position embeddings, run a stack of pre-norm transformer layers, and
# classify from the final `[CLS]` token. The framework code is `transformers/models/vit/modeling_vit.py`
# (`ViTEmbeddings`, `ViTLayer`, `ViTForImageClassification`).
#
# We rebuild **every** step by hand with NumPy, from the raw checkpoint tensors, and check each one against refvit's
# named intermediates (`model(x, output_intermediates=True).intermediates`, keyed by checkpoint module name) and, at
# the end, against the logits PyTorch recorded. The model is a tiny ViT trained on scikit-learn's handwritten digits
# by `golden/train_digits.py` (32×32 input, 4×4 patches, 4 layers, 4 heads, width 64). Then we plant three small
# bugs and watch where and how much they break it, and you get exercises (solutions in `tutorials/solutions/`).
#
# Helpers shared by the notebooks (loading a digits model, the first-divergence finder, `check()`, the block
# diagram) are in `tutorials/common.py`.

# %%
import matplotlib.pyplot as plt
import numpy as np
from scipy.special import erf

from common import assert_close, block_diagram, check, digits, first_divergence

d = digits("digits-vit")
cfg, Wt = d.config, d.weights                      # config.json as a dict; raw checkpoint tensors by name
pixel_values, labels = d.pixel_values, d.labels    # (360, 3, 32, 32), (360,)
x = pixel_values[:8]
out = d.model(x, output_intermediates=True, output_attentions=True)
inter = out.intermediates                          # module name -> tensor, in execution order
print(d.model)
print(len(inter), "named intermediates, e.g.:", *list(inter)[:12], "...", sep="\n  ")

# %% [markdown]
# ## 0. The block we build, and every shape
#
# B images, N patches, C channels, H heads of width D = C/H, P×P patches. One `ViTLayer` (pre-norm: LayerNorm
# *before* each branch, the residual around it):

# %%
C, H, P, Himg = cfg["hidden_size"], cfg["num_attention_heads"], cfg["patch_size"], cfg["image_size"]
D, N, I, L = C // H, (Himg // P) ** 2, cfg["intermediate_size"], cfg["num_hidden_layers"]
rows = [("pixel_values", f"(B, 3, {Himg}, {Himg})"), ("patches", f"(B, N={N}, 3·P²={3 * P * P})"),
        ("patch embeddings", f"(B, {N}, C={C})"), ("+ [CLS], + positions", f"(B, 1+N={N + 1}, {C})"),
        ("q, k, v per head", f"(B, H={H}, {N + 1}, D={D})"), ("attention map", f"(B, {H}, {N + 1}, {N + 1})"),
        ("MLP hidden", f"(B, {N + 1}, {I})"), (f"after {L} layers + LayerNorm", f"(B, {N + 1}, {C})"),
        ("logits (from [CLS])", f"(B, {len(cfg['id2label'])})")]
print(f"{'step':28s} shape\n" + "\n".join(f"{a:28s} {b}" for a, b in rows))

fig, ax = plt.subplots(figsize=(6.5, 4.6))
block_diagram(ax, [("x", f"(B, {N + 1}, {C})"), ("LayerNorm (layernorm_before)", ""),
                   ("q, k, v = Linear(C→C) ×3", f"(B, {N + 1}, {C}) ×3"),
                   ("softmax(q kᵀ / √D) per head", f"(B, {H}, {N + 1}, {N + 1})"),
                   ("A v, heads concatenated", f"(B, {N + 1}, {C})"), ("Linear C→C (attention.output)", ""),
                   ("LayerNorm (layernorm_after)", ""), (f"Linear C→{I}, GELU (intermediate)", f"(B, {N + 1}, {I})"),
                   (f"Linear {I}→C (output)", f"(B, {N + 1}, {C})")],
              residuals=[(0, 5), (5, 8)], title="one ViTLayer (pre-norm); red: residual paths")
plt.show()

# %% [markdown]
# ## 1. Patchify
#
# An `H × W` image with `P × P` patches becomes a sequence of `N = (H/P)(W/P)` vectors of length `3·P²`. ViT does
# this with a `Conv2d(kernel = stride = P)`; a reshape plus one matrix product is the same thing.

# %%
def patchify(x, P):
    """(B, 3, H, W) -> (B, N, 3·P·P), patches in row-major order, each flattened channel-first like the conv weight."""
    B, Cin, Hi, Wi = x.shape
    h, w = Hi // P, Wi // P
    return x.reshape(B, Cin, h, P, w, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, h * w, Cin * P * P)


B = x.shape[0]
h = w = Himg // P
patches = patchify(x, P)
print("image", x.shape[1:], "->", patches.shape[1], "patches of", patches.shape[2], "values")

fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), gridspec_kw={"width_ratios": [1, 1.2]})
im = axes[0].imshow(x[0, 0], cmap="gray")
fig.colorbar(im, ax=axes[0], label="processed value")
axes[0].set_title(f"processed digit (label {labels[0]})")
for k in range(1, h):
    axes[0].axhline(k * P - .5, color="C1", lw=.6), axes[0].axvline(k * P - .5, color="C1", lw=.6)
im = axes[1].imshow(patches[0, :, :P * P], cmap="gray", aspect="auto", vmin=im.norm.vmin, vmax=im.norm.vmax)
fig.colorbar(im, ax=axes[1])
axes[1].set(title="the sequence: one row per patch", xlabel="pixel in patch (channel 0)", ylabel="patch n")
plt.show()

# %% [markdown]
# ## 2. Embedding
#
# Each patch is projected to `C` channels by the convolution's weight (reshaped to `(C, 3·P²)`), `[CLS]` goes in
# front, and a learned position embedding is added per token (`ViTEmbeddings.forward`).

# %%
def embed(x, W, prefix="vit.embeddings"):
    """ViTEmbeddings: patch projection, [CLS] in front, + position embeddings -> (B, 1 + N, C)."""
    proj = W[f"{prefix}.patch_embeddings.projection.weight"]                        # (C, 3, P, P)
    tokens = patchify(x, proj.shape[-1]) @ proj.reshape(proj.shape[0], -1).T \
        + W[f"{prefix}.patch_embeddings.projection.bias"]                            # (B, N, C)
    cls = np.broadcast_to(W[f"{prefix}.cls_token"], (x.shape[0], 1, proj.shape[0]))
    return np.concatenate([cls, tokens], axis=1) + W[f"{prefix}.position_embeddings"]


embedded = embed(x.astype(np.float64), Wt)
assert_close(embedded, inter["vit.embeddings"], "vit.embeddings")
print("embeddings", embedded.shape, "match refvit's 'vit.embeddings'")

pos = Wt["vit.embeddings.position_embeddings"][0, 1:]                               # (N, C)
unit = pos / np.linalg.norm(pos, axis=1, keepdims=True)
sim = unit @ unit.T
fig, axes = plt.subplots(1, 4, figsize=(10, 2.5))
for ax, n in zip(axes, [0, w + 1, (h // 2) * w + w // 2, h * w - 1]):
    im = ax.imshow(sim[n].reshape(h, w), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.plot(n % w, n // w, "k*"), ax.set_xticks([]), ax.set_yticks([])
fig.colorbar(im, ax=axes, label="cosine")
fig.suptitle("cosine similarity of one position embedding (★) to all others (shared scale −1…1)")
plt.show()

# %% [markdown]
# ## 3. One attention head by hand
#
# **What q, k and v are for, and why √D.** Every token asks a question and offers an answer. Its **query** `q`
# (what am I looking for?) is compared with every token's **key** `k` (what do I contain?) by a dot product; the
# softmax of those scores says how much of each token's **value** `v` (what do I pass on?) to take. Three different
# linear maps of the same token, so that "what I look for" need not equal "what I am". The scores are divided by
# `√D`: for `q`, `k` with `D` independent unit-variance entries, `q·k` has variance `D`, so without the division a
# wide head's scores spread out, the softmax saturates to one token and its gradient vanishes. The picture: random
# `q`, `k` at D = 4, 16, 64, the spread of `q·k`, and the largest softmax weight over 65 keys, with and without the
# division.

# %%
rng = np.random.default_rng(0)
fig, axes = plt.subplots(1, 2, figsize=(10, 2.8))
for j, dim in enumerate((4, 16, 64)):                        # one colour per D; dashed: divided by √D
    qs_, ks_ = rng.standard_normal((2000, dim)), rng.standard_normal((2000, 65, dim))
    scores = np.einsum("nd,nkd->nk", qs_, ks_)
    axes[0].hist(scores.ravel(), bins=80, histtype="step", density=True, color=f"C{j}",
                 label=f"D = {dim}: std {scores.std():.1f}")
    for scaled, ls in ((False, "-"), (True, "--")):
        z = scores / np.sqrt(dim) if scaled else scores
        top = (np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)).max(-1)
        axes[1].hist(top, bins=50, range=(0, 1), histtype="step", ls=ls, density=True, color=f"C{j}",
                     label=f"D = {dim}{' / √D' if scaled else ''}")
axes[0].set(title="q·k of random unit-variance vectors", xlabel="score"), axes[0].legend(fontsize=7)
axes[1].set(title="largest softmax weight over 65 keys", xlabel="max weight (1 = one token takes all)")
axes[1].legend(fontsize=6, ncol=2)
fig.tight_layout()
plt.show()

# %% [markdown]
# Layer 0 starts with a LayerNorm (pre-norm), then linear `q, k, v` projections. Head `i` owns channels
# `i·D … (i+1)·D` of each; its attention map is `softmax(q_i k_iᵀ / √D)` and its output `A_i v_i`
# (Vaswani et al. 2017, eq. 1; `eager_attention_forward` in modeling_vit.py). LayerNorm uses the **biased**
# variance (divide by C, as torch) and `layer_norm_eps` from the config (1e-12 here).

# %%
def layer_norm(x, W, name, eps):
    """nn.LayerNorm over the last axis: (x − mean) / sqrt(var + eps) · γ + β, var biased (÷C)."""
    var = x.var(-1, keepdims=True)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(var + eps) * W[f"{name}.weight"] + W[f"{name}.bias"]


def linear(x, W, name):
    """nn.Linear: x Wᵀ + b (the checkpoint stores W as (out, in))."""
    y = x @ W[f"{name}.weight"].T
    return y + W[f"{name}.bias"] if f"{name}.bias" in W else y


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


eps = cfg["layer_norm_eps"]
name = "vit.encoder.layer.0"
normed = layer_norm(embedded, Wt, f"{name}.layernorm_before", eps)
assert_close(normed, inter[f"{name}.layernorm_before"], "layernorm_before")
q, k, v = (linear(normed, Wt, f"{name}.attention.attention.{n}") for n in ("query", "key", "value"))
for n, t in zip(("query", "key", "value"), (q, k, v)):
    assert_close(t, inter[f"{name}.attention.attention.{n}"], n)

head = 1
qh, kh, vh = (t[:, :, head * D:(head + 1) * D] for t in (q, k, v))                  # (B, 1 + N, D)
probs = softmax(qh @ kh.transpose(0, 2, 1) / np.sqrt(D))                            # (B, 1 + N, 1 + N)
context = probs @ vh                                                                # (B, 1 + N, D)
assert_close(probs, out.attentions[0][:, head], "attention map")
assert_close(context, inter[f"{name}.attention.attention"][:, :, head * D:(head + 1) * D], "context")
print(f"head {head}: attention map {probs.shape[1:]} and context {context.shape[1:]} match refvit")

# %% [markdown]
# ## 4. The whole network by hand
#
# All heads at once (split channels into `(H, D)`, attend, merge), the output projection, the residual, a second
# LayerNorm, the MLP with exact (erf) GELU and its residual — that is one `ViTLayer`. `forward` runs all layers, the
# final LayerNorm and the classifier on `[CLS]`, and records every module's output under refvit's name in `rec`.
# This is the clean model, with no switches for bugs: §7 plants each bug by swapping one small helper (`norm`,
# `gelu`) for a variant.

# %%
def gelu(x):
    """nn.GELU(): x · Φ(x) with the exact erf."""
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def norm(x, W, name):
    """Every LayerNorm of the model: the config's eps."""
    return layer_norm(x, W, name, eps)


def attention(q, k, v, heads, scale, bias=None):
    """Multi-head softmax(q kᵀ · scale + bias) v: (B, Nq, C) × (B, Nk, C) -> (B, Nq, C) and the maps (B, H, Nq, Nk)."""
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(0, 2, 1, 3)   # (B, H, N, D)
    scores = split(q) @ split(k).transpose(0, 1, 3, 2) * scale
    probs = softmax(scores if bias is None else scores + bias)
    ctx = (probs @ split(v)).transpose(0, 2, 1, 3)                                    # (B, Nq, H, D)
    return ctx.reshape(ctx.shape[0], ctx.shape[1], -1), probs


def vit_layer(x, W, name, rec):
    """ViTLayer: x + attention(LN(x)), then + MLP(LN(·)); records each module's output in rec."""
    hdn = rec[f"{name}.layernorm_before"] = norm(x, W, f"{name}.layernorm_before")
    q, k, v = (linear(hdn, W, f"{name}.attention.attention.{n}") for n in ("query", "key", "value"))
    ctx, probs = attention(q, k, v, H, D ** -0.5)
    rec[f"{name}.attention.attention"] = ctx
    x = x + linear(ctx, W, f"{name}.attention.output.dense")
    hdn = rec[f"{name}.layernorm_after"] = norm(x, W, f"{name}.layernorm_after")
    hdn = rec[f"{name}.intermediate"] = gelu(linear(hdn, W, f"{name}.intermediate.dense"))
    x = rec[name] = x + linear(hdn, W, f"{name}.output.dense")
    return x, probs


def forward(x, W, rec=None):
    """ViTForImageClassification by hand -> logits (B, classes)."""
    rec = {} if rec is None else rec
    hidden = rec["vit.embeddings"] = embed(x.astype(np.float64), W)
    for i in range(L):
        hidden, _ = vit_layer(hidden, W, f"vit.encoder.layer.{i}", rec)
    hidden = norm(hidden, W, "vit.layernorm")
    return linear(hidden[:, 0], W, "classifier")


mine = {}
logits = forward(x, Wt, rec=mine)
for n, t in mine.items():                                  # every recorded step against refvit's
    assert_close(t, inter[n], n)
assert_close(logits, out.logits, "logits")
print(f"{len(mine)} hand-built intermediates and the logits match refvit on {B} images")

all_logits = forward(pixel_values, Wt)                     # the whole test split, one batched pass
assert_close(all_logits, d.recorded["logits"], "logits vs PyTorch")
assert (all_logits.argmax(-1) == np.array(d.meta["test_predictions"])).all()
print(f"360 test digits by hand: accuracy {d.accuracy(all_logits):.2%}, the same class as PyTorch on every image "
      f"(recorded {d.meta['test_accuracy']:.2%})")

# %% [markdown]
# ## 5. Attention maps
#
# Row 0 of an attention map is what `[CLS]` reads from each patch. Per head of the last layer, on a few digits,
# **overlaid on the digit** (each patch's weight painted over its P×P pixels). Each panel has **its own colour scale
# and colour bar**: heads differ a lot in how peaked they are, and one shared scale would leave the flat ones black.

# %%
last = out.attentions[-1]                                                             # (B, H, 1 + N, 1 + N)
cls_rows = last[:4, :, 0, 1:]                                                         # (4, H, N)
fig, axes = plt.subplots(4, H + 1, figsize=(2.6 * (H + 1), 8.4))
for r in range(4):
    axes[r, 0].imshow(x[r, 0], cmap="gray")
    axes[r, 0].set_title(f"label {labels[r]}", fontsize=9)
    for hd in range(H):
        ax = axes[r, hd + 1]
        att = np.kron(cls_rows[r, hd].reshape(h, w), np.ones((P, P)))                # patch weight -> its pixels
        ax.imshow(x[r, 0], cmap="gray")
        im = ax.imshow(att, cmap="magma", alpha=0.65, vmin=0, vmax=att.max())
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.ax.tick_params(labelsize=6)
        if r == 0:
            ax.set_title(f"last layer, head {hd}", fontsize=9)
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("attention of [CLS] to each patch, over the digit (each panel: its own scale)", fontsize=10)
plt.show()
print(f"uniform attention would be {1 / (N + 1):.3f} per token; the largest here is {cls_rows.max():.3f}")

# %% [markdown]
# ## 6. Attention rollout
#
# A single layer's map ignores the residual path and what earlier layers mixed. *Attention rollout* (Abnar & Zuidema
# 2020) approximates the flow from input patches to `[CLS]`: average the heads, add the identity for the residual,
# renormalise rows, and multiply the layers' matrices: `R = Â_L ⋯ Â_1`, `Â = (mean_h A + I) / 2`.

# %%
def rollout(attentions):
    """(1 + N, 1 + N) flow per image from the per-layer (B, H, 1 + N, 1 + N) maps."""
    R = np.eye(attentions[0].shape[-1])[None]
    for A in attentions:
        A = A.mean(axis=1) + np.eye(A.shape[-1])                                     # heads averaged + residual
        R = (A / A.sum(-1, keepdims=True)) @ R
    return R


R = rollout(out.attentions)
assert np.allclose(R.sum(-1), 1)                                                     # still a distribution per row
flow = R[:, 0, 1:]                                                                   # (B, N): [CLS] <- patches
fig, axes = plt.subplots(2, 8, figsize=(16, 4.4))
for i in range(8):
    axes[0, i].imshow(x[i, 0], cmap="gray")
    axes[0, i].set_title(f"{labels[i]} → {logits[i].argmax()}", fontsize=9)
    axes[1, i].imshow(x[i, 0], cmap="gray")
    over = np.kron(flow[i].reshape(h, w), np.ones((P, P)))
    im = axes[1, i].imshow(over, cmap="magma", alpha=0.65, vmin=0, vmax=over.max())
    cb = fig.colorbar(im, ax=axes[1, i], fraction=0.046, pad=0.03)
    cb.ax.tick_params(labelsize=6)
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("digit (label → prediction) and the attention rollout of [CLS] over the patches, over the digit "
             "(each panel: its own scale)")
plt.show()

# %% [markdown]
# ## 7. Planted quirks: what a small mistake costs
#
# A port that is *almost* right. Each cell below swaps one detail of `forward` for a plausible wrong version, finds
# the **first module, in execution order, whose output leaves the float32 tolerance** (`1e-4 · max(1, max|ref|)`,
# the bound refvit is held to) by comparing the hand-built intermediates with refvit's, and measures the accuracy
# on the 360 test digits:
#
# * `eps`: LayerNorm with torch's default eps 1e-5 instead of the config's 1e-12 (an easy slip: `nn.LayerNorm(C)`).
# * `unbiased`: LayerNorm with the unbiased variance (÷(C−1), NumPy's `ddof=1`, torch's `var()` default) instead of
#   the biased one (÷C) that `nn.LayerNorm` uses. The normalised output is scaled by `sqrt((C−1)/C)`: a relative
#   error of about `1/(2C)` — 7.8e-3 at C = 64, 6.5e-4 at C = 768 — far above float32 rounding (~6e-8) and above
#   the 1e-4 tolerance.
# * `tanh`: the tanh approximation of GELU instead of the exact erf (`gelu_new` vs `gelu`).
#
# How a bug is planted: `forward` looks its helpers (`norm`, `gelu`, …) up by name when it runs, so
# `with planted(globals(), "gelu", gelu_tanh):` runs the whole clean model with that one helper swapped, and puts
# the clean one back afterwards. `quirk_report(globals(), quirks, run, reference, correct)` does this for each quirk:
# it prints the quirk as a diff against the clean helper, calls `run()` (you write it: the model on the first digits,
# recording intermediates, and its accuracy on all 360) with the quirk planted, and prints the first diverging
# module. Both live in `tutorials/common.py`, because every notebook plants its quirks the same way; the quirks
# themselves, and `run`, stay here.

# %%
from common import quirk_report


def norm_torch_eps(x, W, name):
    return layer_norm(x, W, name, 1e-5)


def norm_unbiased(x, W, name):
    var = x.var(-1, keepdims=True, ddof=1)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(var + eps) * W[f"{name}.weight"] + W[f"{name}.bias"]


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


quirks = {"eps": ("norm", norm_torch_eps), "unbiased": ("norm", norm_unbiased), "tanh": ("gelu", gelu_tanh)}
correct = d.accuracy(all_logits)


def run():
    """The model as it now is: intermediates of the first digits, accuracy on all 360."""
    rec = {}
    forward(x, Wt, rec=rec)
    return rec, d.accuracy(forward(pixel_values, Wt))


quirk_report(globals(), quirks, run, inter, correct)

# %% [markdown]
# All three leave the tolerance at the first module they touch, while the digits' accuracy barely moves (one digit
# more or less is chance): a classifier's argmax is a coarse test, which is why refvit compares every intermediate.
# None of these is a "float64-only" difference. The unbiased variance is ~100× above the tolerance at this width.
# The eps error is `≈ eps / (2·var)` relative, so it depends on the variance of the LayerNorm's input: tokens with a
# small variance (below) make it thousands of times larger than float32 rounding.

# %%
var_in = np.concatenate([mine["vit.embeddings"]] + [mine[f"vit.encoder.layer.{i}"] for i in range(L - 1)])  # inputs

v = var_in.var(-1)
print(f"variance of the LayerNorm inputs: min {v.min():.2e}, median {np.median(v):.2e}; "
      f"eps 1e-5 changes the output by ≈ eps/(2·var) = {1e-5 / (2 * v.min()):.1e} relative at the smallest")

# %% [markdown]
# ## 8. Exercises
#
# Each exercise is a function for you to fill in; `check()` runs it and compares with refvit. Solutions:
# `tutorials/solutions/01_vit.py` (the tests run them, so they stay correct).
#
# **Exercise 1.** The attention map of head 2 in layer 3 for the first 8 digits, `(8, 1 + N, 1 + N)`, computed from
# refvit's recorded output of layer 2 (`inter["vit.encoder.layer.2"]`) with your own LayerNorm, q/k projections and
# softmax.

# %%
def exercise_1():
    raise NotImplementedError


check("exercise 1 (head 2, layer 3)", exercise_1, out.attentions[3][:, 2])

# %% [markdown]
# **Exercise 2.** The number of parameters of one `ViTLayer`, from the config alone (C, I and which layers have
# biases); `check` compares it with the checkpoint.

# %%
def exercise_2():
    raise NotImplementedError


layer_params = sum(t.size for n, t in Wt.items() if n.startswith("vit.encoder.layer.0."))
check("exercise 2 (parameters per layer)", exercise_2, layer_params)

# %% [markdown]
# **Exercise 3.** Classify with the *mean* of the final patch tokens instead of `[CLS]` (run `forward`'s steps, but
# pool differently): return the classifier's logits for the 360 digits, `(360, 10)`. Then compute their accuracy:
# why does it fall so far, when BEiT classifies from exactly such a mean (notebook 03)? (Hint: what was the
# classifier trained on?) `check` compares with the same computation done from refvit's `vit.layernorm`. (It
# compares logits, not the accuracy: two different wrong poolings can hit the same accuracy by chance.)

# %%
def exercise_3():
    raise NotImplementedError


final = d.model(pixel_values, output_intermediates=True).intermediates["vit.layernorm"]     # (360, 1 + N, C)
check("exercise 3 (mean-pooled logits)", exercise_3, linear(final[:, 1:].mean(1).astype(np.float64), Wt, "classifier"))

# %% [markdown]
# ## 9. Find the bug
#
# `tutorials/hunt/vit_port.py` is a NumPy port of this model written from modeling_vit.py, as a porter might — with
# one bug. Don't read it yet. It runs, and its accuracy on the 360 digits says something is wrong:

# %%
from hunt import vit_port as port

print(f"the port's accuracy: {d.accuracy(port.forward(pixel_values, Wt, cfg)):.2%} (refvit, PyTorch: {correct:.2%})")

# %% [markdown]
# **Exercise 4.** Find the bug and fix it: return a dict `{helper name: your corrected function, ...}` that
# `port.forward(x, Wt, cfg, fixes=...)` uses in place of the port's own helpers of those names (same signatures).
# `check` runs the port with your fix and compares its logits with refvit's, so only a real fix passes.
#
# *Hint 1 (where to look), if you are stuck:* `port.forward(x, Wt, cfg, rec)` records its intermediates under
# refvit's names; `first_divergence(rec, inter)` gives the first module where they leave the tolerance. What feeds
# that module, and does that agree?
#
# *Hint 2 (which tensor), if you are still stuck:* layer 0's LayerNorm agrees and its attention output does not.
# Look at which of the C channels of `q` the port gives to head 0 — compare with §3, where head `i` owns channels
# `i·D … (i+1)·D`. A helper and its inverse may share the mistake.

# %%
def exercise_4():
    raise NotImplementedError


check("exercise 4 (the port's bug, fixed)", lambda: port.forward(x, Wt, cfg, fixes=exercise_4()), out.logits)
