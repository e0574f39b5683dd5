# %% [markdown]
# # BEiT: relative position bias and masked image modeling
#
# BEiT (Bao et al. 2021, *BEiT: BERT Pre-Training of Image Transformers*) is a ViT with three changes that matter for
# a forward pass: a **relative position bias** added to every attention score (after T5), **layer scale**
# (per-channel λ on each residual branch) and a **mean-pooled** head. It is pre-trained by **masked image modeling**:
# some patches are replaced by a learned `[MASK]` embedding and the model predicts their visual tokens.
#
# This notebook builds the bias from scratch, checks it against the tensors transformers recorded
# (`transformers/models/beit/modeling_beit.py`, `BeitRelativePositionBias`), shows what changing the resolution
# does to it, and builds the masked-image-modeling input. Models: golden cases written by `golden/generate.py`
# (random but non-degenerate weights, so the numbers are the framework's, not ours).

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import refvit
from refvit import kernels
from refvit.models import beit, vit

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "golden" / "cases").is_dir())
K = kernels.get("numpy")  # the readable NumPy twins


def golden(case):
    """A golden case: the refvit model (NumPy backend), its inputs and the framework's float32 outputs."""
    d = ROOT / "golden" / "cases" / case
    model = refvit.from_pretrained(d, backend="numpy")
    inputs = dict(np.load(d / "inputs.npz"))
    ref = {k[len("float32/"):]: v for k, v in np.load(d / "outputs.npz").items() if k.startswith("float32/")}
    return model, inputs, ref


model, inputs, ref = golden("beit_classification")
cfg = model.config
print(model, "\nimage", cfg.image_size, "patch", cfg.patch_size, "-> window", cfg.grid_size,
      "| heads", cfg.num_attention_heads)

# %% [markdown]
# ## 1. The relative position index
#
# For a window of `h × w` patches, a query patch at (r₁, c₁) and a key patch at (r₂, c₂) differ by
# (dr, dc) ∈ [−(h−1), h−1] × [−(w−1), w−1]: `(2h−1)(2w−1)` possible offsets. Each offset gets one row of a learned
# table of shape `(T, H)`; three more rows serve the `[CLS]` token (cls→patch, patch→cls, cls→cls), so
# `T = (2h−1)(2w−1) + 3`. The index maps each (query, key) pair of the `N + 1` tokens to its table row:

# %%
h, w = cfg.grid_size
coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")).reshape(2, -1)  # (2, N): row, col
rel = coords[:, :, None] - coords[:, None, :]                                             # (2, N, N): query − key
T = (2 * h - 1) * (2 * w - 1) + 3
index = np.empty((h * w + 1, h * w + 1), np.int64)
index[1:, 1:] = (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)  # shift offsets to start at 0, row-major
index[0, :], index[:, 0], index[0, 0] = T - 3, T - 2, T - 1       # cls→patch, patch→cls, cls→cls

np.testing.assert_array_equal(index, K.relative_position_index(h, w))  # refvit's kernel builds the same index
print("index", index.shape, "uses", len(np.unique(index)), "of", T, "table rows")

fig, ax = plt.subplots(figsize=(4.5, 4))
im = ax.imshow(index, cmap="viridis")
ax.set(title=f"relative position index ({h}×{w} window + [CLS])", xlabel="key token", ylabel="query token")
fig.colorbar(im, ax=ax)
plt.show()

# %% [markdown]
# The patch block is *Toeplitz-like*: every pair with the same offset reads the same row, which is why the bias
# generalises over positions. Row 0 and column 0 are the three `[CLS]` entries.
#
# ## 2. From table to bias, per head
#
# `bias[head, i, j] = table[index[i, j], head]`, added to the scaled scores `q·kᵀ/√D` before the softmax.
# transformers records it as `beit.encoder.layer.0.attention.attention.relative_position_bias`
# (shape `(1, H, N+1, N+1)`): our gather must reproduce it exactly.

# %%
table = model.params["beit"]["encoder"]["layer"][0]["attention"]["attention"]["relative_position_bias"][
    "relative_position_bias_table"]                                                   # (T, H)
bias = table[index].transpose(2, 0, 1)                                                # (H, N+1, N+1)
framework = ref["intermediates/beit.encoder.layer.0.attention.attention.relative_position_bias"]
np.testing.assert_allclose(bias[None], framework, rtol=0, atol=1e-6)
print("table", table.shape, "-> bias", bias.shape, "= the framework's", framework.shape)

H = cfg.num_attention_heads
fig, axes = plt.subplots(2, H, figsize=(2.6 * H, 5.2))
centre = (h // 2) * w + w // 2                                                         # a patch near the middle
for head in range(H):
    grid = table[: (2 * h - 1) * (2 * w - 1), head].reshape(2 * h - 1, 2 * w - 1)       # bias by offset (dr, dc)
    axes[0, head].imshow(grid, cmap="coolwarm", extent=(-(w - .5), w - .5, h - .5, -(h - .5)))
    axes[0, head].set_title(f"head {head}: table by (dr, dc)", fontsize=9)
    axes[1, head].imshow(bias[head, 1 + centre, 1:].reshape(h, w), cmap="coolwarm")
    axes[1, head].plot(centre % w, centre // w, "k*")
    axes[1, head].set_title(f"bias of query ★ to each key", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# Top: each head's table laid out by offset (the centre is offset (0, 0), "attend to yourself"). Bottom: the same
# numbers seen from one query patch (★): the bias it adds to its score for every key patch. In a trained BEiT, heads
# specialise (some local, some directional); here the table is random, so the pictures show the *mechanics*.

# %% [markdown]
# In a *trained* BEiT the tables carry structure. `golden/models/digits-beit` (trained on handwritten digits by
# `golden/train_digits.py`, 8×8 patches of 4×4 pixels, one table per layer) — every layer's table, by offset:

# %%
trained = refvit.from_pretrained(ROOT / "golden" / "models" / "digits-beit", backend="numpy")
th, tw = trained.config.grid_size
layers = trained.params["beit"]["encoder"]["layer"]
fig, axes = plt.subplots(len(layers), trained.config.num_attention_heads, figsize=(8, 2 * len(layers)))
for i, lp in enumerate(layers):
    t = lp["attention"]["attention"]["relative_position_bias"]["relative_position_bias_table"]          # (T, H)
    for head in range(t.shape[1]):
        grid = t[: (2 * th - 1) * (2 * tw - 1), head].reshape(2 * th - 1, 2 * tw - 1)
        lim = np.abs(grid).max()
        axes[i, head].imshow(grid, cmap="coolwarm", vmin=-lim, vmax=lim)
        axes[i, head].set_xticks([]), axes[i, head].set_yticks([])
        axes[i, head].set_title(f"layer {i}, head {head}", fontsize=8)
fig.suptitle(f"digits-beit: bias by offset (dr, dc), centre = same patch; {2 * th - 1}×{2 * tw - 1} offsets")
fig.tight_layout()
plt.show()

# %% [markdown]
# Rows are dr = query row − key row, from −(h−1) at the top to h−1 at the bottom; columns likewise dc. Trained tables
# are structured, unlike random ones: red in the lower half means "prefer keys *above* the query", a red vertical
# stripe "prefer keys at that horizontal offset, at any height", a blue border "ignore far-away patches".

# %% [markdown]
# ## 3. A new resolution: resizing the table
#
# The table is sized for the training window. At another input size (`interpolate_pos_encoding=True`, or any size
# for BEiT) transformers resizes the offset grid of each head bilinearly, from `(2h−1, 2w−1)` to `(2h'−1, 2w'−1)`,
# keeps the three `[CLS]` rows, and builds the index of the new window. Golden case
# `beit_classification_interpolate` runs a model made for 32×32 (4×4 patches) on 48×48 images (6×6 patches).

# %%
model_i, inputs_i, ref_i = golden("beit_classification_interpolate")
cfg_i = model_i.config
new_h, new_w = (n // p for n, p in zip(inputs_i["pixel_values"].shape[2:], cfg_i.patch_size))          # 6×6 patches
table_i = model_i.params["beit"]["encoder"]["layer"][0]["attention"]["attention"]["relative_position_bias"][
    "relative_position_bias_table"]
h0, w0 = cfg_i.grid_size
grid = table_i[: (2 * h0 - 1) * (2 * w0 - 1)].reshape(2 * h0 - 1, 2 * w0 - 1, -1).transpose(2, 0, 1)   # (H, 7, 7)
resized = K.interpolate_bilinear(np.ascontiguousarray(grid), 2 * new_h - 1, 2 * new_w - 1)            # (H, 11, 11)
new_table = np.concatenate([resized.transpose(1, 2, 0).reshape(-1, grid.shape[0]),
                            table_i[(2 * h0 - 1) * (2 * w0 - 1):]])                                  # (T', H)
new_bias = new_table[K.relative_position_index(new_h, new_w)].transpose(2, 0, 1)                    # (H, 37, 37)

framework_i = ref_i["intermediates/beit.encoder.layer.0.attention.attention.relative_position_bias"]
np.testing.assert_allclose(new_bias[None], framework_i, rtol=0, atol=1e-5)
# refvit's own step (with the width-first reshape transformers does, a no-op for square windows) agrees too
np.testing.assert_allclose(beit.resize_relative_table(table_i, cfg_i, (new_h, new_w), K), new_table, atol=1e-7)
print(f"window {h0}×{w0} -> {new_h}×{new_w}: table {table_i.shape} -> {new_table.shape}, bias {framework_i.shape}")

fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
axes[0].imshow(grid[0], cmap="coolwarm")
axes[0].set_title(f"head 0, {2 * h0 - 1}×{2 * w0 - 1} offsets (trained)")
axes[1].imshow(resized[0], cmap="coolwarm")
axes[1].set_title(f"resized to {2 * new_h - 1}×{2 * new_w - 1} (bilinear)")
plt.show()

# %% [markdown]
# Interpolation stretches the *offset* axis: the bias learned for "3 patches to the right" is now used for about
# 4.5 patches to the right, and the new far offsets repeat the old border values (bilinear with
# `align_corners=False` clamps). That is why fine-tuning at the new resolution is usual.
#
# ## 4. Masked image modeling input: `bool_masked_pos`
#
# `BeitForMaskedImageModeling` takes `bool_masked_pos` of shape `(B, num_patches)`. Masked patch embeddings are
# replaced by the learned `mask_token` *before* `[CLS]` and positions are added (`BeitEmbeddings.forward`:
# `embeddings * (1 − w) + mask_tokens * w`). BEiT masks ~40% of the patches in *blocks* ("blockwise
# masking", the paper's Algorithm 1); a small version of that sampler:

# %%
def blockwise_mask(h, w, ratio, rng, min_block=2):
    """BEiT's blockwise masking (simplified): add random rectangles of patches until `ratio` of the h×w grid is masked."""
    mask = np.zeros((h, w), bool)
    while mask.mean() < ratio:
        bh, bw = rng.integers(min_block, max(min_block, h // 2) + 1, size=2)
        r, c = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        mask[r:r + bh, c:c + bw] = True
    return mask


from refvit.datasets import digit_image

rng = np.random.default_rng(0)
scans = np.load(ROOT / "golden" / "models" / "digits_test.npz")["images"][:4]
processor = refvit.AutoImageProcessor.from_pretrained(ROOT / "golden" / "models" / "digits-beit")
digits = processor(images=[digit_image(s) for s in scans], return_tensors="np")["pixel_values"]   # (4, 3, 32, 32)
P = trained.config.patch_size[0]
fig, axes = plt.subplots(2, 4, figsize=(9, 4.6))
for i in range(4):
    axes[0, i].imshow(blockwise_mask(14, 14, 0.4, rng), cmap="gray_r")
    mask = blockwise_mask(th, tw, 0.4, rng)                                          # one digit's bool_masked_pos
    shown = np.where(np.kron(mask, np.ones((P, P))).astype(bool), np.nan, digits[i, 0])  # masked patches blanked
    axes[1, i].imshow(shown, cmap="gray")
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
axes[0, 0].set_ylabel("14×14 grid (224²)"), axes[1, 0].set_ylabel(f"a digit, {th}×{tw} patches")
fig.suptitle("blockwise masks, ~40% of the patches (masked = black above, blank below)")
plt.show()

# %% [markdown]
# Now the embeddings of golden case `beit_mim` by hand — patches, mask tokens, `[CLS]` — against the framework's
# `beit.embeddings`, and the head: `lm_head` scores every patch over the visual-token vocabulary (the loss, in
# training, reads only the masked positions).

# %%
model_m, inputs_m, ref_m = golden("beit_mim")
cfg_m, p = model_m.config, model_m.params["beit"]["embeddings"]
x, m = inputs_m["pixel_values"], inputs_m["bool_masked_pos"]                           # (B, 3, H, W), (B, N)
tokens, _ = vit.patch_embeddings(p["patch_embeddings"], x, cfg_m)                        # (B, N, C)
tokens = tokens * (1 - m[:, :, None]) + p["mask_token"] * m[:, :, None]                  # masked -> [MASK]
cls = np.broadcast_to(p["cls_token"], (x.shape[0], 1, cfg_m.hidden_size))
embedded = np.concatenate([cls, tokens], axis=1)                                         # (B, 1 + N, C)
np.testing.assert_allclose(embedded, ref_m["intermediates/beit.embeddings"], rtol=0, atol=1e-5)

out = model_m(x, bool_masked_pos=m)
np.testing.assert_allclose(out.logits, ref_m["logits"], rtol=0, atol=1e-4 * max(1, np.abs(ref_m["logits"]).max()))
print("mask", m.shape, f"({m.mean():.0%} masked); logits", out.logits.shape, "= (B, N, vocab_size)")
print("predicted visual tokens at the masked patches of image 0:", out.logits[0].argmax(-1)[m[0]])

# %% [markdown]
# **Take-aways.** The relative bias is a table lookup, indexed by offset; refvit's
# `kernels.relative_position_index` / `relative_position_bias` and `models.beit.resize_relative_table` are these cells
# in function form. Masking happens on patch embeddings, before `[CLS]` and positions.
