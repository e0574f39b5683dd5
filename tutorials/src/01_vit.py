# %% [markdown]
# # ViT from pixels to logits
#
# Dosovitskiy et al. 2020, *An Image is Worth 16x16 Words*: cut the image into patches, embed each patch linearly,
# put a learned `[CLS]` token in front, add position embeddings, run a stack of pre-norm transformer layers, and
# classify from the final `[CLS]` token. The framework code is `transformers/models/vit/modeling_vit.py`
# (`ViTEmbeddings`, `ViTLayer`, `ViTForImageClassification`); refvit's readable version is `refvit/models/vit.py`.
#
# We rebuild every step by hand with NumPy and check it against refvit's named intermediates
# (`model(x, output_intermediates=True).intermediates`, keyed by checkpoint module name) and, at the end, against the
# logits PyTorch recorded. The model is a tiny ViT trained on scikit-learn's handwritten digits by
# `golden/train_digits.py` (32×32 input, 4×4 patches, 4 layers, 4 heads, width 64).

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import refvit
from refvit import kernels
from refvit.datasets import digit_image

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "golden" / "models").is_dir())
MODEL = ROOT / "golden" / "models" / "digits-vit"
K = kernels.get("numpy")                                           # the readable NumPy twins

model = refvit.from_pretrained(MODEL, backend="numpy")
cfg = model.config
test = np.load(ROOT / "golden" / "models" / "digits_test.npz")
scans, labels = test["images"], test["labels"]                     # (360, 8, 8) values 0..16, (360,)
processor = refvit.AutoImageProcessor.from_pretrained(MODEL)
pixel_values = processor(images=[digit_image(s) for s in scans], return_tensors="np")["pixel_values"]  # (N, 3, 32, 32)
x = pixel_values[:8]
print(model, "\npixel_values", pixel_values.shape, "| patch", cfg.patch_size, "| hidden", cfg.hidden_size,
      "| layers", cfg.num_hidden_layers, "| heads", cfg.num_attention_heads)

# %% [markdown]
# ## 1. Patchify
#
# An `H × W` image with `P × P` patches becomes a sequence of `N = (H/P)(W/P)` vectors of length `3·P²`. ViT does
# this with a `Conv2d(kernel = stride = P)`; a reshape plus one matrix product is the same thing.

# %%
B, Cin, Himg, Wimg = x.shape
P = cfg.patch_size[0]
h, w = Himg // P, Wimg // P
patches = x.reshape(B, Cin, h, P, w, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, h * w, Cin * P * P)  # (B, N, 3·P·P)
print("image", x.shape[1:], "->", patches.shape[1], "patches of", patches.shape[2], "values")

fig, axes = plt.subplots(1, 2, figsize=(7, 3.4), gridspec_kw={"width_ratios": [1, 1.1]})
axes[0].imshow(x[0, 0], cmap="gray")
axes[0].set_title(f"processed digit (label {labels[0]})")
for k in range(1, h):
    axes[0].axhline(k * P - .5, color="C1", lw=.6), axes[0].axvline(k * P - .5, color="C1", lw=.6)
axes[1].imshow(patches[0, :, :P * P], cmap="gray", aspect="auto")   # channel 0 of each patch, one row per patch
axes[1].set(title="the sequence: one row per patch", xlabel="pixel in patch (channel 0)", ylabel="patch n")
plt.show()

# %% [markdown]
# ## 2. Embedding
#
# Each patch is projected to `C` channels by the convolution's weight (reshaped to `(C, 3·P²)`), `[CLS]` goes in
# front, and a learned position embedding is added per token (`ViTEmbeddings.forward`).

# %%
emb = model.params["vit"]["embeddings"]
W = emb["patch_embeddings"]["projection"]["weight"].reshape(cfg.hidden_size, -1)    # (C, 3·P·P)
tokens = patches @ W.T + emb["patch_embeddings"]["projection"]["bias"]               # (B, N, C)
cls = np.broadcast_to(emb["cls_token"], (B, 1, cfg.hidden_size))
embedded = np.concatenate([cls, tokens], axis=1) + emb["position_embeddings"]       # (B, 1 + N, C)

out = model(x, output_intermediates=True, output_attentions=True)
inter = out.intermediates
np.testing.assert_allclose(embedded, inter["vit.embeddings"], rtol=1e-5, atol=1e-5)
print("embeddings", embedded.shape, "match refvit's 'vit.embeddings'")

pos = emb["position_embeddings"][0, 1:]                                              # (N, C)
sim = (pos / np.linalg.norm(pos, axis=1, keepdims=True)) @ (pos / np.linalg.norm(pos, axis=1, keepdims=True)).T
fig, axes = plt.subplots(1, 4, figsize=(9, 2.4))
for ax, n in zip(axes, [0, w + 1, (h // 2) * w + w // 2, h * w - 1]):
    ax.imshow(sim[n].reshape(h, w), cmap="viridis", vmin=-1, vmax=1)
    ax.plot(n % w, n // w, "r*"), ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("cosine similarity of one position embedding (★) to all others")
plt.show()

# %% [markdown]
# ## 3. One attention head by hand
#
# Layer 0 starts with a LayerNorm (pre-norm), then linear `q, k, v` projections. Head `i` owns channels
# `i·D … (i+1)·D` (D = C/H) of each; its attention map is `softmax(q_i k_iᵀ / √D)` and its output `A_i v_i`
# (Vaswani et al. 2017, eq. 1; `eager_attention_forward` in modeling_vit.py).

# %%
L0 = model.params["vit"]["encoder"]["layer"][0]
name = "vit.encoder.layer.0"
eps = cfg.layer_norm_eps
mu, var = embedded.mean(-1, keepdims=True), embedded.var(-1, keepdims=True)          # biased variance, as torch
normed = (embedded - mu) / np.sqrt(var + eps) * L0["layernorm_before"]["weight"] + L0["layernorm_before"]["bias"]
np.testing.assert_allclose(normed, inter[f"{name}.layernorm_before"], rtol=1e-4, atol=1e-4)

att = L0["attention"]["attention"]
q, k, v = (normed @ att[n]["weight"].T + att[n]["bias"] for n in ("query", "key", "value"))   # (B, 1 + N, C) each
for n, t in zip(("query", "key", "value"), (q, k, v)):
    np.testing.assert_allclose(t, inter[f"{name}.attention.attention.{n}"], rtol=1e-4, atol=1e-4)

head, D = 1, cfg.hidden_size // cfg.num_attention_heads
qh, kh, vh = (t[:, :, head * D:(head + 1) * D] for t in (q, k, v))                  # (B, 1 + N, D)
scores = qh @ kh.transpose(0, 2, 1) / np.sqrt(D)                                     # (B, 1 + N, 1 + N)
probs = np.exp(scores - scores.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)                                                # softmax over keys
context = probs @ vh                                                                 # (B, 1 + N, D)

np.testing.assert_allclose(probs, out.attentions[0][:, head], rtol=1e-4, atol=1e-6)
np.testing.assert_allclose(context, inter[f"{name}.attention.attention"][:, :, head * D:(head + 1) * D],
                           rtol=1e-4, atol=1e-5)
print(f"head {head}: attention map {probs.shape[1:]} and context {context.shape[1:]} match refvit")

# %% [markdown]
# ## 4. The rest of the network
#
# All heads at once (concatenated), the output projection, the residual, a second LayerNorm, the MLP with exact
# (erf) GELU and its residual — that is one `ViTLayer`. Here it is with the NumPy kernels (`K.layer_norm`,
# `K.attention`, `K.gelu`), run over all layers, checked layer by layer, then the final LayerNorm and the classifier
# on `[CLS]`.

# %%
def vit_layer(p, x):
    """ViTLayer: x + attention(LN(x)), then + MLP(LN(·))."""
    a = p["attention"]
    hdn = K.layer_norm(x, p["layernorm_before"]["weight"], p["layernorm_before"]["bias"], eps)
    q, k, v = (hdn @ a["attention"][n]["weight"].T + a["attention"][n]["bias"] for n in ("query", "key", "value"))
    ctx, _ = K.attention(q, k, v, cfg.num_attention_heads, D ** -0.5)
    x = x + ctx @ a["output"]["dense"]["weight"].T + a["output"]["dense"]["bias"]
    hdn = K.layer_norm(x, p["layernorm_after"]["weight"], p["layernorm_after"]["bias"], eps)
    hdn = K.gelu(hdn @ p["intermediate"]["dense"]["weight"].T + p["intermediate"]["dense"]["bias"])
    return x + hdn @ p["output"]["dense"]["weight"].T + p["output"]["dense"]["bias"]


hidden = embedded
for i, p in enumerate(model.params["vit"]["encoder"]["layer"]):
    hidden = vit_layer(p, hidden)
    np.testing.assert_allclose(hidden, inter[f"vit.encoder.layer.{i}"], rtol=1e-4, atol=1e-4)
final = model.params["vit"]["layernorm"]
hidden = K.layer_norm(hidden, final["weight"], final["bias"], eps)
logits = hidden[:, 0] @ model.params["classifier"]["weight"].T + model.params["classifier"]["bias"]   # (B, classes)

framework_logits = np.load(MODEL / "logits.npz")["logits"][:B]     # recorded from PyTorch by golden/train_digits.py
np.testing.assert_allclose(logits, out.logits, rtol=1e-5, atol=1e-5)
np.testing.assert_allclose(logits, framework_logits, rtol=0, atol=1e-4 * max(1, np.abs(framework_logits).max()))
print("hand-built logits = refvit's = PyTorch's; predicted", logits.argmax(-1), "true", labels[:B])

# %% [markdown]
# ## 5. Attention maps
#
# Row 0 of an attention map is what `[CLS]` reads from each patch. Per head of the last layer, on a few digits:

# %%
last = out.attentions[-1]                                                             # (B, H, 1 + N, 1 + N)
H = cfg.num_attention_heads
fig, axes = plt.subplots(4, H + 1, figsize=(1.9 * (H + 1), 7.6))
for r in range(4):
    axes[r, 0].imshow(x[r, 0], cmap="gray")
    axes[r, 0].set_title(f"label {labels[r]}", fontsize=9)
    for hd in range(H):
        axes[r, hd + 1].imshow(last[r, hd, 0, 1:].reshape(h, w), cmap="magma")
        if r == 0:
            axes[r, hd + 1].set_title(f"last layer, head {hd}", fontsize=9)
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()
plt.show()

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
fig, axes = plt.subplots(2, 8, figsize=(12, 3.3))
for i in range(8):
    axes[0, i].imshow(x[i, 0], cmap="gray")
    axes[0, i].set_title(f"{labels[i]} → {logits[i].argmax()}", fontsize=9)
    axes[1, i].imshow(R[i, 0, 1:].reshape(h, w), cmap="magma")
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("digit (label → prediction) and the attention rollout of [CLS] over the patches")
plt.show()

# %% [markdown]
# ## 7. The whole test split
#
# refvit's predictions on all 360 test digits against the framework's recorded predictions (`meta.json`).

# %%
meta = json.loads((MODEL / "meta.json").read_text())
pred = model(pixel_values).logits.argmax(-1)
assert (pred == np.array(meta["test_predictions"])).all()                           # same class as PyTorch, every image
print(f"test accuracy: refvit {(pred == labels).mean():.1%}, PyTorch {meta['test_accuracy']:.1%} "
      f"({len(labels)} images, identical predictions)")
