# %% [markdown]
# # BEiT: relative position bias, layer scale, mean pooling — and masked image modeling
#
# BEiT (Bao et al. 2021, *BEiT: BERT Pre-Training of Image Transformers*) is a ViT with three changes that matter for
# a forward pass: a **relative position bias** added to every attention score (after T5 / Swin), **layer scale**
# (a learned per-channel λ on each residual branch, from CaiT) and a **mean-pooled** head. It is pre-trained by
# **masked image modeling**: some patches are replaced by a learned `[MASK]` embedding and the model predicts their
# visual tokens.
#
# We build the bias from scratch, then one complete `BeitLayer`, then the whole trained digits model
# (`golden/models/digits-beit`, 8×8 patches of 4×4 pixels, 4 layers, one bias table per layer) over the 360 test
# digits, every step asserted against refvit's intermediates; then what changing the resolution does to the bias,
# the masked-image-modeling input, three planted quirks and exercises. The framework code is
# `transformers/models/beit/modeling_beit.py` (`BeitRelativePositionBias`, `BeitSelfAttention`, `BeitLayer`,
# `BeitPooler`). Golden cases (random weights written by `golden/generate.py`, outputs the framework's) cover the
# configurations the digits model does not have.

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
from scipy.special import erf

import refvit
from common import ROOT, assert_close, block_diagram, check, digits, first_divergence
from refvit import kernels
from refvit.checkpoint import load_state_dict

K = kernels.get("numpy")                                   # refvit's NumPy kernels, for the index and resizing
d = digits("digits-beit")
cfg, Wt = d.config, d.weights
pixel_values, labels = d.pixel_values, d.labels
x = pixel_values[:8]
out = d.model(x, output_intermediates=True, output_attentions=True)
inter = out.intermediates
print(d.model)
print("intermediates of layer 0:", *[n for n in inter if ".layer.0." in n], sep="\n  ")


def golden(case):
    """A golden case: refvit's model, its raw weights, config.json, inputs and the framework's float32 outputs."""
    path = ROOT / "golden" / "cases" / case
    model = refvit.from_pretrained(path, backend="numpy")
    ref = {k[len("float32/"):]: v for k, v in np.load(path / "outputs.npz").items() if k.startswith("float32/")}
    config = json.loads((path / "config.json").read_text())
    return model, load_state_dict(path)[0], config, dict(np.load(path / "inputs.npz")), ref


def pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def grid_of(config):
    """The configured window: image_size // patch_size per axis."""
    return tuple(n // p for n, p in zip(pair(config["image_size"]), pair(config["patch_size"])))

# %% [markdown]
# ## 0. Shapes and the block

# %%
C, Hh, P, Himg = cfg["hidden_size"], cfg["num_attention_heads"], cfg["patch_size"], cfg["image_size"]
D, I, L = C // Hh, cfg["intermediate_size"], cfg["num_hidden_layers"]
h = w = Himg // P
N, T = h * w, (2 * h - 1) * (2 * w - 1) + 3
eps = cfg["layer_norm_eps"]
for a, b in [("pixel_values", f"(B, 3, {Himg}, {Himg})"), ("patch embeddings + [CLS] + abs. positions",
             f"(B, 1+N={N + 1}, C={C})"), ("relative bias table (per layer)", f"(T={T}, H={Hh})"),
             ("relative position index", f"({N + 1}, {N + 1}) ints in 0..{T - 1}"),
             ("bias = table[index]", f"(H, {N + 1}, {N + 1})"), ("attention map", f"(B, {Hh}, {N + 1}, {N + 1})"),
             ("layer scale λ₁, λ₂", f"({C},) each"), ("MLP hidden", f"(B, {N + 1}, {I})"),
             ("pooler: LayerNorm(mean of patch tokens)", f"(B, {C})"), ("logits", "(B, 10)")]:
    print(f"{a:44s} {b}")

fig, ax = plt.subplots(figsize=(6.8, 4.8))
block_diagram(ax, [("x", f"(B, {N + 1}, {C})"), ("LayerNorm (layernorm_before)", ""),
                   ("q, k (no bias), v = Linear(C→C)", f"(B, {N + 1}, {C}) ×3"),
                   ("softmax(q kᵀ/√D + table[index]) per head", f"(B, {Hh}, {N + 1}, {N + 1})"),
                   ("A v, concat, Linear (attention.output)", f"(B, {N + 1}, {C})"), ("× λ₁ (lambda_1)", ""),
                   ("LayerNorm (layernorm_after)", ""), (f"Linear C→{I}, GELU; Linear →C", f"(B, {N + 1}, {C})"),
                   ("× λ₂ (lambda_2)", "")], residuals=[(0, 5), (5, 8)],
              title="one BeitLayer: pre-norm, relative bias, layer scale")
plt.show()

# %% [markdown]
# ## 1. Why a relative position bias, then the index
#
# **Why.** ViT tells each patch where it is with an *absolute* position embedding, one learned vector per position,
# added to the patch. Whatever "look at the patch just above me" means, the model must learn it separately for every
# position: nothing ties the embedding of patch (2, 2) to that of (4, 5). BEiT (after T5 and Swin) also learns one
# number per head for every *offset* between query and key — "one row up, same column" — and adds it to the
# attention score. Move the query patch and its whole bias map moves with it: the bias is translation-equivariant by
# construction, and learned once for all positions. The digits model has both, so both can be drawn from its
# trained weights: for two query patches, the layer-0 bias of one head over all 8×8 key patches (from the table row
# of each offset, which the rest of this section derives), and, for comparison, how similar each key's absolute
# position embedding is to the query's (cosine) — what the absolute code itself says about neighbourhoods.

# %%
pos = Wt["beit.embeddings.position_embeddings"][0, 1:].astype(np.float64)          # (N, C), one per patch
table0 = Wt["beit.encoder.layer.0.attention.attention.relative_position_bias.relative_position_bias_table"]
head0 = int(np.argmax(table0[:-3].std(0)))                                        # the head with the most structure
rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")


def bias_map(query):
    """The bias of query patch (r, c) for every key patch (h, w): the table row of offset (r − r_k, c − c_k)."""
    return table0[(query[0] - rr + h - 1) * (2 * w - 1) + (query[1] - cc + w - 1), head0]


def cosine_map(query):
    unit = pos / np.linalg.norm(pos, axis=1, keepdims=True)
    return (unit @ unit[query[0] * w + query[1]]).reshape(h, w)


qa, shift = (2, 2), (2, 3)
qb = (qa[0] + shift[0], qa[1] + shift[1])
overlap = np.s_[shift[0]:, shift[1]:], np.s_[:h - shift[0], :w - shift[1]]     # keys of qb's map, of qa's map
rows = {"relative bias (layer 0, head %d)" % head0: bias_map, "absolute: cosine of position embeddings": cosine_map}
fig, axes = plt.subplots(2, 3, figsize=(10.5, 6.2))
for r, (what, f) in enumerate(rows.items()):
    a, b = f(qa), f(qb)
    moved = np.full((h, w), np.nan)                                                 # keys only qb's map has: blank
    moved[overlap[0]] = b[overlap[0]] - a[overlap[1]]                               # qb's map − qa's moved along
    print(f"{what}: the moved query's map − the first map moved along, over the {np.isfinite(moved).sum()} keys "
          f"both see: max |Δ| {np.nanmax(np.abs(moved)):.3g} (the first map's range {np.ptp(a):.3g})")
    for ax, img, title in ((axes[r, 0], a, f"query {qa}"), (axes[r, 1], b, f"query {qb} (moved by {shift})"),
                           (axes[r, 2], moved, "right map − left map moved along")):
        lim = np.nanmax(np.abs(img)) or 1.0
        im = ax.imshow(img, cmap="coolwarm", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        ax.set_title(f"{what}\n{title}", fontsize=7), ax.set_xticks([]), ax.set_yticks([])
    for ax, q in ((axes[r, 0], qa), (axes[r, 1], qb)):
        ax.add_patch(plt.Rectangle((q[1] - .5, q[0] - .5), 1, 1, fill=False, ec="k", lw=1.5))
fig.suptitle("what a query patch (black square) gets from position, over the 8×8 key patches", fontsize=10)
fig.tight_layout()
plt.show()
assert np.array_equal(bias_map(qb)[overlap[0]], bias_map(qa)[overlap[1]])       # equivariant: exactly the same

# %% [markdown]
# The relative bias of the moved query is the first map moved along, exactly (difference 0 wherever both queries see
# a key); the absolute embeddings' similarities are not — each position's neighbourhood was learned on its own.
# (The cosine is not part of the attention score: LayerNorm and the q/k projections act on patch + position, so the
# absolute embedding's effect cannot be read off alone. It shows only what the embeddings themselves encode.)
#
# **The index.** For a window of `h × w` patches, a query patch at (r₁, c₁) and a key patch at (r₂, c₂) differ by
# (dr, dc) = (r₁ − r₂, c₁ − c₂) ∈ [−(h−1), h−1] × [−(w−1), w−1]: `(2h−1)(2w−1)` possible offsets. Each offset gets
# one row of a learned table of shape `(T, H)`; three more rows serve the `[CLS]` token (cls→patch, patch→cls,
# cls→cls), so `T = (2h−1)(2w−1) + 3`. The index maps each (query, key) pair of the `N + 1` tokens to its table row.
# `sign=-1` builds the *wrong* index (key − query) used in §6.

# %%
def relative_index(h, w, sign=1):
    """(N+1, N+1) table row of every (query, key) pair: offsets shifted to start at 0, read row-major."""
    coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")).reshape(2, -1)   # (2, N): row, col
    rel = sign * (coords[:, :, None] - coords[:, None, :])                                    # (2, N, N)
    T = (2 * h - 1) * (2 * w - 1) + 3
    index = np.empty((h * w + 1, h * w + 1), np.int64)
    index[1:, 1:] = (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)
    index[0, :], index[:, 0], index[0, 0] = T - 3, T - 2, T - 1                # cls→patch, patch→cls, cls→cls
    return index


index = relative_index(h, w)
np.testing.assert_array_equal(index, K.relative_position_index(h, w))        # refvit's kernel builds the same index
print("index", index.shape, "uses", len(np.unique(index)), "of", T, "table rows")

fig, ax = plt.subplots(figsize=(4.8, 4))
im = ax.imshow(index, cmap="viridis")
ax.set(title=f"relative position index ({h}×{w} window + [CLS])", xlabel="key token", ylabel="query token")
fig.colorbar(im, ax=ax, label="table row")
plt.show()

# %% [markdown]
# The patch block is *Toeplitz-like*: every pair with the same offset reads the same row, which is why the bias
# generalises over positions. Row 0 and column 0 are the three `[CLS]` entries.
#
# ## 2. From table to bias, per head
#
# `bias[head, i, j] = table[index[i, j], head]`, added to the scaled scores `q·kᵀ/√D` before the softmax; refvit
# records it as `beit.encoder.layer.0.attention.attention.relative_position_bias` (shape `(1, H, N+1, N+1)`). For
# a **square** window at the configured size this plain gather is exactly what transformers computes. For a
# non-square window it is not, and there the framework is inconsistent with itself: its index is height-major (the
# row offset is multiplied by `2w − 1`, `generate_relative_position_index`, `modeling_beit.py` line 211 in
# transformers 5.23.0), but before every gather `BeitRelativePositionBias.forward` reshapes the table's offset rows as
# `(1, old_width, old_height, −1)` (line 237), i.e. width-major, and resizes it to the window — even when the window
# has not changed. The height-major gather here is what the index means; the width-first read is what transformers
# computes, and refvit reproduces it for parity (README, "Known differences"). §6 shows the two on a non-square
# golden case.

# %%
def bias_of(table, index):
    """(T, H) table, (N+1, N+1) index -> (H, N+1, N+1)."""
    return table[index].transpose(2, 0, 1)


tables = [Wt[f"beit.encoder.layer.{i}.attention.attention.relative_position_bias.relative_position_bias_table"]
          for i in range(L)]                                                         # L × (T, H), trained
bias = bias_of(tables[0], index)
assert_close(bias[None], inter["beit.encoder.layer.0.attention.attention.relative_position_bias"], "bias")
print("table", tables[0].shape, "-> bias", bias.shape, "= refvit's")

lim = max(np.abs(t[:T - 3]).max() for t in tables)
fig, axes = plt.subplots(L, Hh, figsize=(8.5, 2 * L))
for i, t in enumerate(tables):
    for head in range(Hh):
        grid = t[:T - 3, head].reshape(2 * h - 1, 2 * w - 1)
        im = axes[i, head].imshow(grid, cmap="coolwarm", vmin=-lim, vmax=lim,
                                  extent=(-(w - .5), w - .5, h - .5, -(h - .5)))
        axes[i, head].set_xticks([]), axes[i, head].set_yticks([])
        axes[i, head].set_title(f"layer {i}, head {head}", fontsize=8)
fig.colorbar(im, ax=axes, label="bias added to the score", shrink=0.6)
fig.suptitle(f"digits-beit (trained): bias by offset (dr, dc), centre = same patch; one shared scale")
plt.show()

# %% [markdown]
# Rows are dr = query row − key row, from −(h−1) at the top to h−1 at the bottom; columns likewise dc. The trained
# tables are structured: red in the lower half means "prefer keys *above* the query", a red vertical stripe "prefer
# keys at that horizontal offset, at any height", a blue border "ignore far-away patches".
#
# ## 3. One complete `BeitLayer`, then the whole model
#
# Pre-norm attention with the relative bias, then **layer scale**: the attention branch is multiplied per channel by
# `lambda_1` before the residual add, the MLP branch by `lambda_2`. `key` has no bias in BEiT. With
# `use_mean_pooling` the final `beit.layernorm` is an identity and the pooler is `LayerNorm(mean of the patch
# tokens)` — `[CLS]` is left out of the mean. `forward` is the clean model, with no switches for bugs: §6 plants
# each bug by swapping one small helper (`window_index`, `pool`) for a variant.

# %%
def layer_norm(x, name, W=Wt):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * W[f"{name}.weight"] \
        + W[f"{name}.bias"]


def linear(x, name, W=Wt):
    y = x @ W[f"{name}.weight"].T
    return y + W[f"{name}.bias"] if f"{name}.bias" in W else y                     # BEiT's key has no bias


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def beit_layer(x, bias, name, rec, W=Wt):
    """BeitLayer: x + λ₁·attention(LN(x), bias), then + λ₂·MLP(LN(·))."""
    hdn = rec[f"{name}.layernorm_before"] = layer_norm(x, f"{name}.layernorm_before", W)
    q, k, v = (linear(hdn, f"{name}.attention.attention.{n}", W) for n in ("query", "key", "value"))
    for n, t in zip(("query", "key", "value"), (q, k, v)):
        rec[f"{name}.attention.attention.{n}"] = t
    split = lambda t: t.reshape(t.shape[0], t.shape[1], Hh, D).transpose(0, 2, 1, 3)     # (B, H, N+1, D)
    probs = softmax(split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(D) + bias)        # (B, H, N+1, N+1)
    ctx = rec[f"{name}.attention.attention"] = (probs @ split(v)).transpose(0, 2, 1, 3).reshape(x.shape)
    hdn = rec[f"{name}.attention.output"] = linear(ctx, f"{name}.attention.output.dense", W)
    x = x + W[f"{name}.lambda_1"] * hdn                                                    # layer scale
    hdn = rec[f"{name}.layernorm_after"] = layer_norm(x, f"{name}.layernorm_after", W)
    hdn = linear(hdn, f"{name}.intermediate.dense", W)
    hdn = rec[f"{name}.intermediate"] = 0.5 * hdn * (1 + erf(hdn / np.sqrt(2)))           # exact GELU
    hdn = rec[f"{name}.output"] = linear(hdn, f"{name}.output.dense", W)
    x = rec[name] = x + W[f"{name}.lambda_2"] * hdn
    return x, probs


def embed(x, W=Wt, prefix="beit.embeddings", mask=None):
    """BeitEmbeddings: patches (masked ones -> mask_token), [CLS] in front, + absolute positions if the model has them."""
    proj = W[f"{prefix}.patch_embeddings.projection.weight"]                           # (C, 3, p, p)
    B, _, Hi, Wi = x.shape
    p = proj.shape[-1]
    patches = x.reshape(B, 3, Hi // p, p, Wi // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(B, (Hi // p) * (Wi // p), -1)
    tokens = patches @ proj.reshape(proj.shape[0], -1).T + W[f"{prefix}.patch_embeddings.projection.bias"]
    if mask is not None:                                                              # masked -> [MASK] (§5)
        tokens = tokens * (1 - mask[:, :, None]) + W[f"{prefix}.mask_token"] * mask[:, :, None]
    cls = np.broadcast_to(W[f"{prefix}.cls_token"], (B, 1, proj.shape[0]))
    x = np.concatenate([cls, tokens], axis=1)                                         # (B, 1 + N, C)
    return x + W[f"{prefix}.position_embeddings"] if f"{prefix}.position_embeddings" in W else x


def window_index():
    """The relative position index of the digits window (§1)."""
    return relative_index(h, w)


def pool(hidden):
    """BeitPooler with use_mean_pooling: the mean of the patch tokens, [CLS] left out (then its LayerNorm)."""
    return hidden[:, 1:].mean(1)


def forward(x, rec=None):
    """BeitForImageClassification (digits-beit) by hand -> logits."""
    rec = {} if rec is None else rec
    hidden = rec["beit.embeddings"] = embed(x.astype(np.float64))
    idx = window_index()
    for i in range(L):
        name = f"beit.encoder.layer.{i}"
        bias = rec[f"{name}.attention.attention.relative_position_bias"] = bias_of(tables[i], idx)[None]
        hidden, _ = beit_layer(hidden, bias, name, rec)
    rec["beit.layernorm"] = hidden                                                    # nn.Identity (mean pooling)
    pooled = rec["beit.pooler"] = layer_norm(pool(hidden), "beit.pooler.layernorm")
    return linear(pooled, "classifier")


mine = {}
logits = forward(x, rec=mine)
for n, t in mine.items():
    assert_close(t, inter[n], n)
assert_close(logits, out.logits, "logits")
missing = [n for n in inter if n not in mine and n != "classifier"]
print(f"{len(mine)} hand-built intermediates match refvit's; not rebuilt: {missing}")

all_logits = forward(pixel_values)
assert_close(all_logits, d.recorded["logits"], "logits vs PyTorch")
assert (all_logits.argmax(-1) == np.array(d.meta["test_predictions"])).all()
correct = d.accuracy(all_logits)
print(f"360 digits by hand: accuracy {correct:.2%}, PyTorch's class on every image")

lam = np.stack([[Wt[f"beit.encoder.layer.{i}.lambda_{j}"] for j in (1, 2)] for i in range(L)])   # (L, 2, C)
fig, ax = plt.subplots(figsize=(6.5, 2.6))
ax.boxplot([lam[i, j] for i in range(L) for j in (0, 1)], tick_labels=[f"L{i} λ{j + 1}" for i in range(L)
                                                                        for j in (0, 1)])
ax.axhline(cfg["layer_scale_init_value"], color="0.6", ls=":", label="initial value")
ax.set(title="layer scale after training: per-channel λ of each branch", ylabel="λ"), ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 4. A new resolution: resizing the table
#
# The table is sized for the training window. At another input size transformers resizes each head's offset grid
# bilinearly to `(2h'−1, 2w'−1)`, keeps the three `[CLS]` rows, and builds the index of the new window. It reads the
# old grid **width first**: the `(2h−1)(2w−1)` rows are reshaped to `(2w−1, 2h−1)` (line 237), against its own
# height-major index (§2) — an inconsistency of the framework that `resize_table` reproduces for parity, not a
# property of the model. (For the square window below both reads are the same.) Golden case
# `beit_classification_interpolate` runs a model made for 32×32 (4×4 patches) on 48×48 images (6×6 patches); its
# weights are random (written by `golden/generate.py`), so the picture shows the mechanics, not learned structure.

# %%
def resize_table(table, old, new, width_first=True):
    """BeitRelativePositionBias: the grid rows of `table` (T, H) resized from window `old` to `new`, [CLS] rows kept.
    width_first: transformers' reshape to (2w−1, 2h−1), inconsistent with its height-major index for a non-square
    window, reproduced for parity; False: the height-major read that matches the index."""
    (oh, ow), (nh, nw) = [(2 * a - 1, 2 * b - 1) for a, b in (old, new)]
    H = table.shape[1]
    shape = (ow, oh) if width_first else (oh, ow)
    grid = table[: oh * ow].reshape(*shape, H).transpose(2, 0, 1)                      # (H, ·, ·)
    grid = K.interpolate_bilinear(np.ascontiguousarray(grid), nh, nw)                 # (H, 2h'−1, 2w'−1)
    return np.concatenate([grid.transpose(1, 2, 0).reshape(nh * nw, H), table[oh * ow:]])


model_i, W_i, cfg_i, inputs_i, ref_i = golden("beit_classification_interpolate")
new = tuple(n // p for n, p in zip(inputs_i["pixel_values"].shape[2:], pair(cfg_i["patch_size"])))  # (6, 6)
old = grid_of(cfg_i)                                                                                # (4, 4)
table_i = W_i["beit.encoder.layer.0.attention.attention.relative_position_bias.relative_position_bias_table"]
new_table = resize_table(table_i, old, new)
new_bias = bias_of(new_table, relative_index(*new))
framework_i = ref_i["intermediates/beit.encoder.layer.0.attention.attention.relative_position_bias"]
assert_close(new_bias[None], framework_i, "resized bias")
print(f"window {old[0]}×{old[1]} -> {new[0]}×{new[1]}: table {table_i.shape} -> {new_table.shape}, "
      f"bias {framework_i.shape} = the framework's")

(oh, ow), (nh, nw) = (2 * old[0] - 1, 2 * old[1] - 1), (2 * new[0] - 1, 2 * new[1] - 1)
lim = np.abs(table_i[: oh * ow, 0]).max()
fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
axes[0].imshow(table_i[: oh * ow, 0].reshape(oh, ow), cmap="coolwarm", vmin=-lim, vmax=lim)
axes[0].set_title(f"head 0, {oh}×{ow} offsets (random golden weights)", fontsize=9)
im = axes[1].imshow(new_table[: nh * nw, 0].reshape(nh, nw), cmap="coolwarm", vmin=-lim, vmax=lim)
axes[1].set_title(f"resized to {nh}×{nw} (bilinear)", fontsize=9)
fig.colorbar(im, ax=axes, label="bias (shared scale)")
plt.show()

# %% [markdown]
# Interpolation stretches the *offset* axis: the bias learned for "3 patches to the right" is now used for about
# 4.5 patches to the right, and the new far offsets repeat the old border values (bilinear with
# `align_corners=False` clamps). That is why fine-tuning at the new resolution is usual.
#
# ## 5. Masked image modeling input: `bool_masked_pos`
#
# `BeitForMaskedImageModeling` takes `bool_masked_pos` of shape `(B, num_patches)`. Masked patch embeddings are
# replaced by the learned `mask_token` *before* `[CLS]` and positions are added (`BeitEmbeddings.forward`:
# `embeddings * (1 − w) + mask_tokens * w`). BEiT masks ~40% of the patches in *blocks* ("blockwise masking", the
# paper's Algorithm 1); a small version of that sampler:

# %%
def blockwise_mask(h, w, ratio, rng, min_block=2):
    """BEiT's blockwise masking (simplified): add random rectangles of patches until `ratio` of the h×w grid is masked."""
    mask = np.zeros((h, w), bool)
    while mask.mean() < ratio:
        bh, bw = rng.integers(min_block, max(min_block, h // 2) + 1, size=2)
        r, c = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        mask[r:r + bh, c:c + bw] = True
    return mask


rng = np.random.default_rng(0)
fig, axes = plt.subplots(2, 4, figsize=(9, 4.6))
for i in range(4):
    axes[0, i].imshow(blockwise_mask(14, 14, 0.4, rng), cmap="gray_r", vmin=0, vmax=1)
    mask = blockwise_mask(h, w, 0.4, rng)                                            # one digit's bool_masked_pos
    shown = np.where(np.kron(mask, np.ones((P, P))).astype(bool), np.nan, x[i, 0])  # masked patches blanked
    im = axes[1, i].imshow(shown, cmap="gray", vmin=x[:4, 0].min(), vmax=x[:4, 0].max())
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
fig.colorbar(im, ax=axes[1], label="processed value", shrink=0.8)
axes[0, 0].set_ylabel("14×14 grid (224²)"), axes[1, 0].set_ylabel(f"a digit, {h}×{w} patches")
fig.suptitle("blockwise masks, ~40% of the patches (masked = black above, blank below)")
plt.show()

# %% [markdown]
# The embeddings of golden case `beit_mim` by hand — patches, mask tokens, `[CLS]` — against the framework's
# `beit.embeddings`, and the head: `lm_head` scores every patch over the visual-token vocabulary (the loss, in
# training, reads only the masked positions).

# %%
model_m, W_m, cfg_m, inputs_m, ref_m = golden("beit_mim")
xm, m = inputs_m["pixel_values"], inputs_m["bool_masked_pos"]                          # (B, 3, H, W), (B, N)
embedded = embed(xm.astype(np.float64), W_m, mask=m)                                   # (B, 1 + N, C)
assert_close(embedded, ref_m["intermediates/beit.embeddings"], "beit_mim embeddings")
out_m = model_m(xm, bool_masked_pos=m)
assert_close(out_m.logits, ref_m["logits"], "beit_mim logits")
print("mask", m.shape, f"({m.mean():.0%} masked); logits", out_m.logits.shape, "= (B, N, vocab_size)")

# %% [markdown]
# ## 6. Planted quirks
#
# * `sign`: the index built from key − query instead of query − key. Every pair then reads the bias of the
#   *mirrored* offset: "prefer keys above" becomes "prefer keys below".
# * `cls_in_mean`: the pooler averages all tokens, `[CLS]` included, instead of the patch tokens only.
# * `width_first`: a port that reads the table height-major, as the index means it, instead of reproducing
#   transformers' width-first reshape. For the square digits window both reads are the same (the check below proves
#   it: no module diverges); golden case `beit_classification_nonsquare` (32×48 input, a 4×6 window, random weights)
#   shows a non-square window at its *configured* size, where the consistent read differs from the framework's in
#   every bias. It is not a bug in the port's logic — it is a parity failure against a framework inconsistency.
#
# As in notebook 01, each quirk replaces one clean helper by name; `quirk_report` (in `tutorials/common.py`) shows it
# as a diff against that helper and runs `run()` with it planted.

# %%
from common import quirk_report


def window_index_key_minus_query():
    return relative_index(h, w, sign=-1)


def pool_with_cls(hidden):
    return hidden.mean(1)


quirks = {"sign": ("window_index", window_index_key_minus_query), "cls_in_mean": ("pool", pool_with_cls)}


def run():
    """The model as it now is: intermediates of the first digits, accuracy on all 360."""
    rec = {}
    forward(x, rec=rec)
    return rec, d.accuracy(forward(pixel_values))


quirk_report(globals(), quirks, run, inter, correct)

square = [np.array_equal(resize_table(t, (h, w), (h, w), True), resize_table(t, (h, w), (h, w), False))
          for t in tables]
assert all(square)
print(f"width_first: no module diverges on digits (square window: both reads are the same table), accuracy "
      f"{correct:.2%}")

model_n, W_n, cfg_n, inputs_n, ref_n = golden("beit_classification_nonsquare")
win = grid_of(cfg_n)                                                                   # (4, 6)
name = "beit.encoder.layer.0.attention.attention.relative_position_bias"
t_n = W_n[f"{name}.relative_position_bias_table"]
framework = bias_of(resize_table(t_n, win, win, width_first=True), relative_index(*win))[None]
consistent = bias_of(t_n, relative_index(*win))[None]                           # height-major, as the index means
assert_close(framework, ref_n[f"intermediates/{name}"], "width-first bias")
first, err = first_divergence({name: consistent}, {n[len("intermediates/"):]: v for n, v in ref_n.items()
                                                   if n.startswith("intermediates/")})
print(f"non-square {win[0]}×{win[1]} window, height-major read (consistent with the index): differs from "
      f"transformers' at {first}, max error {err:.2e}")

# %% [markdown]
# The sign error makes every bias wrong from layer 0 on (the learned offsets point the wrong way), yet costs only a
# couple of digits: this model also has absolute position embeddings, which still say where each patch is. The
# `[CLS]`-in-the-mean error is one token of 65 in the average: no digit changes class, but the pooler leaves the
# tolerance. Accuracy is a blunt instrument for parity; the first diverging module is not.

# %% [markdown]
# ## 7. Segmentation: the FPN neck, the UperNet head and the FCN auxiliary head, on real masks
#
# `BeitForSemanticSegmentation` labels every pixel. It turns four of the encoder's token grids into a feature
# pyramid, fuses the pyramid with a UperNet head, and trains an extra FCN head on one level. The model here,
# `golden/models/segment-beit`, was trained by `golden/train_segmentation.py` on synthetic scenes it generates: one or
# two disks, squares or triangles in random colours on a textured background (stripes, checks or blotches), with a
# class for every pixel (0 background, 1 disk, 2 square, 3 triangle). Its recorded PyTorch masks for the 96 test
# scenes are shipped with it, so we can compare refvit's masks pixel for pixel.

# %%
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

seg_dir = ROOT / "golden" / "models" / "segment-beit"
seg = refvit.from_pretrained(seg_dir, backend="numpy")
seg_cfg = json.loads((seg_dir / "config.json").read_text())
seg_meta = json.loads((seg_dir / "meta.json").read_text())
Ws, _ = load_state_dict(seg_dir)
classes = seg_meta["dataset"]["classes"]
scenes = np.load(ROOT / "golden" / "models" / "shapes_test.npz")
seg_proc = refvit.AutoImageProcessor.from_pretrained(seg_dir)
xs = seg_proc(images=[Image.fromarray(i) for i in scenes["images"]], return_tensors="np")["pixel_values"]
seg_all = seg(xs)
masks = np.stack([np.asarray(m) for m in seg_proc.post_process_semantic_segmentation(
    seg_all, target_sizes=[(32, 32)] * len(xs))]).astype(np.uint8)
torch_masks = np.load(seg_dir / "logits.npz")["masks"]                                  # PyTorch's, recorded


def iou(pred, truth):
    inter_ = [np.sum((pred == c) & (truth == c)) for c in range(len(classes))]
    union = [np.sum((pred == c) | (truth == c)) for c in range(len(classes))]
    return [i / u for i, u in zip(inter_, union)]


per = iou(masks, scenes["masks"])
assert (masks == torch_masks).all()
print(f"refvit: mIoU {np.mean(per):.4f} (PyTorch, recorded: {seg_meta['test_miou']:.4f}); same class as PyTorch on "
      f"{int((masks == torch_masks).sum())} of {masks.size} pixels")
print("IoU per class:", {c: round(float(v), 3) for c, v in zip(classes, per)})

fig, axes = plt.subplots(3, 6, figsize=(11, 5.6))
cmap = plt.matplotlib.colors.ListedColormap(["0.15", "C0", "C1", "C2"])
for j in range(6):
    for r, (img, title) in enumerate([(scenes["images"][j], "scene"), (scenes["masks"][j], "true mask"),
                                      (masks[j], "refvit's mask")]):
        axes[r, j].imshow(img, **({} if r == 0 else dict(cmap=cmap, vmin=0, vmax=3, interpolation="nearest")))
        axes[r, j].set_axis_off(), axes[r, j].set_title(title, fontsize=8)
handles = [plt.matplotlib.patches.Patch(color=cmap(i), label=c) for i, c in enumerate(classes)]
fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8)
fig.suptitle("segment-beit on test scenes it never saw")
plt.show()

# %% [markdown]
# A tiny model trained for a few minutes of CPU: the background is found almost everywhere, the shapes' outlines
# roughly, and the class of a shape is often wrong (squares worst). What matters here is that refvit's masks are
# PyTorch's, pixel for pixel. Now the head, by hand.
#
# **Which token grids feed the pyramid.** `config.out_indices` picks four of the encoder's `hidden_states` — but
# 1-based, with 0 meaning the last: transformers reads `encoder_hidden_states[i - 1]` (`modeling_beit.py`,
# `BeitForSemanticSegmentation.forward`, line 1045 in 5.23.0), and `hidden_states[0]` is the embedding output. The
# trainer chose `[0, 2, 3, 4]` so every layer is used: the last layer's output, then those of layers 0, 1 and 2.
# Each grid drops `[CLS]` and becomes an image of `C` channels over the 8×8 patch grid.
#
# **The neck** (`BeitFPNNeck`) makes four scales from them: ×4 (transposed conv 2×2/2, BatchNorm, GELU, transposed
# conv 2×2/2), ×2 (one transposed conv), ×1 (identity) and ×½ (max-pool 2×2).

# %%
xs8 = xs[:8]
si = seg(xs8, output_intermediates=True).intermediates
hidden = [si["beit.embeddings"]] + [si[f"beit.encoder.layer.{i}"] for i in range(seg_cfg["num_hidden_layers"])]
gh = gw = seg_cfg["image_size"] // seg_cfg["patch_size"]
grids = [hidden[i - 1][:, 1:].astype(np.float64).transpose(0, 2, 1).reshape(len(xs8), -1, gh, gw)
         for i in seg_cfg["out_indices"]]                                   # 1-based; 0 -> hidden[-1]
BN_EPS = 1e-5


def batch_norm(x, name):
    """BatchNorm2d in eval mode: the running statistics the checkpoint holds."""
    scale = Ws[f"{name}.weight"] / np.sqrt(Ws[f"{name}.running_var"] + BN_EPS)
    return (x - Ws[f"{name}.running_mean"][:, None, None]) * scale[:, None, None] + Ws[f"{name}.bias"][:, None, None]


def conv_transpose_2x2(x, name):
    """ConvTranspose2d(k=2, s=2): each input pixel paints its own 2×2 output block, no overlap."""
    W, b = Ws[f"{name}.weight"], Ws[f"{name}.bias"]                          # (C_in, C_out, 2, 2)
    B, _, hh, ww = x.shape
    y = np.einsum("bcij,copq->boipjq", x, W).reshape(B, W.shape[1], 2 * hh, 2 * ww)
    return y + b[:, None, None]


def gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def max_pool_2x2(x):
    B, C, hh, ww = x.shape
    return x.reshape(B, C, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))


pyramid = [conv_transpose_2x2(gelu(batch_norm(conv_transpose_2x2(grids[0], "fpn1.0"), "fpn1.1")), "fpn1.3"),
           conv_transpose_2x2(grids[1], "fpn2.0"), grids[2], max_pool_2x2(grids[3])]
for mine_t, name in zip(pyramid, ["fpn1", "fpn2", None, "fpn4"]):
    if name:
        assert_close(mine_t, si[name], name)
print("pyramid:", [p.shape[1:] for p in pyramid], "= refvit's fpn1, fpn2, (identity), fpn4")

# %% [markdown]
# **The UperNet head** (`BeitUperHead`). Its convolutions are "conv modules": a bias-free conv, BatchNorm, ReLU.
#
# 1. *Pyramid pooling* on the coarsest level (4×4): average-pool it to 1×1, 2×2, 3×3 and 6×6 (adaptive pooling:
#    bin `i` spans `floor(i·n/s)` to `ceil((i+1)·n/s)`, so 4 → 6 makes overlapping bins), a 1×1 conv module each,
#    resize back bilinearly, concatenate with the input and fuse with a 3×3 conv module (`bottleneck`): global
#    context for every position.
# 2. *Laterals*: a 1×1 conv module on each of the three finer levels.
# 3. *Top-down*: from coarse to fine, each level gets the bilinearly upsampled level above it added.
# 4. A 3×3 conv module on each of the three finer levels, everything resized to the finest (32×32), concatenated,
#    a 3×3 conv module (`fpn_bottleneck`) and a 1×1 conv to the classes.

# %%
def conv(x, W, pad=0):
    """Conv2d (NCHW), stride 1, as im2col + einsum (notebook 05)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = W.shape[-1]
    return np.einsum("bchwij,ocij->bohw", sliding_window_view(x, (k, k), axis=(2, 3)), W, optimize=True)


def conv_module(x, name):
    W = Ws[f"{name}.conv.weight"]
    return np.maximum(batch_norm(conv(x, W, pad=W.shape[-1] // 2), f"{name}.bn"), 0)


def resize(x, oh, ow):
    """Bilinear, align_corners=False (F.interpolate): sample at (o + ½)·in/out − ½, clamped at the border."""
    def axis(n_in, n_out):
        s = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.minimum(np.floor(s).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), s - i0
    (r0, r1, fr), (c0, c1, fc) = axis(x.shape[2], oh), axis(x.shape[3], ow)
    rows = x[:, :, r0] * (1 - fr)[:, None] + x[:, :, r1] * fr[:, None]
    return rows[..., c0] * (1 - fc) + rows[..., c1] * fc


def adaptive_avg_pool(x, s):
    n = x.shape[2]
    bins = [(i * n // s, -(-(i + 1) * n // s)) for i in range(s)]
    return np.stack([np.stack([x[:, :, a:b, c:d].mean(axis=(2, 3)) for c, d in bins], -1) for a, b in bins], -2)


def upernet(levels, rec):
    top = levels[-1]
    pooled = [top]
    for j, s in enumerate(seg_cfg["pool_scales"]):
        p = rec[f"decode_head.psp_modules.{j}.1"] = conv_module(adaptive_avg_pool(top, s), f"decode_head.psp_modules.{j}.1")
        pooled.append(resize(p, *top.shape[2:]))
    lat = []
    for i, f in enumerate(levels[:-1]):                                                 # laterals
        lat.append(conv_module(f, f"decode_head.lateral_convs.{i}"))
        rec[f"decode_head.lateral_convs.{i}"] = lat[-1]
    lat.append(conv_module(np.concatenate(pooled, 1), "decode_head.bottleneck"))      # pyramid pooling, fused
    rec["decode_head.bottleneck"] = lat[-1]
    for i in range(len(lat) - 1, 0, -1):                                               # top-down
        lat[i - 1] = lat[i - 1] + resize(lat[i], *lat[i - 1].shape[2:])
    outs = []
    for i in range(len(lat) - 1):
        outs.append(conv_module(lat[i], f"decode_head.fpn_convs.{i}"))
        rec[f"decode_head.fpn_convs.{i}"] = outs[-1]
    outs.append(lat[-1])
    outs = [outs[0]] + [resize(o, *outs[0].shape[2:]) for o in outs[1:]]
    fused = rec["decode_head.fpn_bottleneck"] = conv_module(np.concatenate(outs, 1), "decode_head.fpn_bottleneck")
    return conv(fused, Ws["decode_head.classifier.weight"]) + Ws["decode_head.classifier.bias"][:, None, None]


def fcn(levels):
    """BeitFCNHead: conv modules on one level (auxiliary_num_convs of them), then a 1×1 conv to the classes."""
    h_ = levels[2]                                          # BeitFCNHead's in_index: the 8×8 (identity) level
    for i in range(seg_cfg["auxiliary_num_convs"]):
        h_ = conv_module(h_, f"auxiliary_head.convs.{i}")
    return conv(h_, Ws["auxiliary_head.classifier.weight"]) + Ws["auxiliary_head.classifier.bias"][:, None, None]


head_rec = {}
logits_seg = upernet(pyramid, head_rec)
for name, t in head_rec.items():
    assert_close(t, si[name], name)
assert_close(logits_seg, si["decode_head"], "decode_head (the logits)")
aux = fcn(pyramid)
assert_close(aux, si["auxiliary_head"], "auxiliary_head")
print(f"{len(head_rec) + 2} head tensors by hand = refvit's; logits {logits_seg.shape}, auxiliary logits {aux.shape}")

# %% [markdown]
# The two heads' masks side by side: UperNet predicts at 32×32 from all four levels; the FCN head sees only the
# 8×8 level (one token per 4×4 pixels), so its mask — upsampled here — is blocky. It exists for training (its loss,
# weighted by `auxiliary_loss_weight` = 0.4, gives the middle layers a direct signal); at inference transformers
# computes it and discards it, and `refvit segment` uses only `logits`.

# %%
main_mask, aux_mask = logits_seg.argmax(1), resize(aux, 32, 32).argmax(1)
assert (main_mask == masks[:8]).all()                                     # the processor's argmax at 32×32
fig, axes = plt.subplots(4, 4, figsize=(7.5, 7.8))
for j in range(4):
    for r, (img, title) in enumerate([(scenes["images"][j], "scene"), (scenes["masks"][j], "true"),
                                      (main_mask[j], "UperNet"), (aux_mask[j], "FCN (auxiliary)")]):
        axes[j, r].imshow(img, **({} if r == 0 else dict(cmap=cmap, vmin=0, vmax=3, interpolation="nearest")))
        axes[j, r].set_axis_off(), axes[j, r].set_title(title, fontsize=8)
fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8)
plt.show()
print(f"pixel accuracy on these 8 scenes: UperNet {np.mean(main_mask == scenes['masks'][:8]):.3f}, "
      f"FCN head {np.mean(aux_mask == scenes['masks'][:8]):.3f}")

# %% [markdown]
# ## 8. Exercises
#
# Solutions: `tutorials/solutions/03_beit.py`.
#
# **Exercise 1.** The relative position bias of layer 2, `(1, H, N+1, N+1)`, from its table (check: refvit's
# `beit.encoder.layer.2.attention.attention.relative_position_bias`).

# %%
def exercise_1():
    raise NotImplementedError


check("exercise 1 (layer 2 bias)", exercise_1, inter["beit.encoder.layer.2.attention.attention.relative_position_bias"])

# %% [markdown]
# **Exercise 2.** How many rows `T` has the table of a 6×10 window, and which row does the pair (query patch at
# row 2, column 7; key patch at row 5, column 1) read? Return `(T, row)` as two ints; `check` compares with refvit's
# index kernel.

# %%
def exercise_2():
    raise NotImplementedError


ref_index = K.relative_position_index(6, 10)
token = lambda row, col: 1 + row * 10 + col                          # token 0 is [CLS]
check("exercise 2 (table size and row)", exercise_2, (int(ref_index.max()) + 1, int(ref_index[token(2, 7), token(5, 1)])))

# %% [markdown]
# **Exercise 3.** The pooled output `beit.pooler` of the first 8 digits from refvit's output of the last layer
# (`beit.encoder.layer.3`).

# %%
def exercise_3():
    raise NotImplementedError


check("exercise 3 (mean pooling)", exercise_3, inter["beit.pooler"])

# %% [markdown]
# ## 9. Find the bug
#
# `tutorials/hunt/beit_port.py` is a NumPy port of digits-beit written from modeling_beit.py, as a porter might —
# with one bug. Don't read it yet. It runs, and its accuracy on the 360 digits says something is wrong:

# %%
from hunt import beit_port as port

print(f"the port's accuracy: {d.accuracy(port.forward(pixel_values, Wt, cfg)):.2%} (refvit, PyTorch: {correct:.2%})")

# %% [markdown]
# **Exercise 4.** Find the bug and fix it: return a dict `{helper name: your corrected function}` that
# `port.forward(x, Wt, cfg, fixes=...)` uses in place of the port's own helper of that name (same signature).
# `check` runs the port with your fix and compares its logits with refvit's, so only a real fix passes.
#
# *Hint 1 (where to look), if you are stuck:* `port.forward(x, Wt, cfg, rec)` records its intermediates under
# refvit's names; `first_divergence(rec, inter)` gives the first module where they leave the tolerance. The module
# before it agrees: what happens between the two?
#
# *Hint 2 (which tensor), if you are still stuck:* between the attention output and `layernorm_after` there is only
# the residual add, scaled per channel (§3). Which of the checkpoint's two λ vectors belongs to which branch?

# %%
def exercise_4():
    raise NotImplementedError


check("exercise 4 (the port's bug, fixed)", lambda: port.forward(x, Wt, cfg, fixes=exercise_4()), out.logits)
