# %% [markdown]
# # CvT: convolutions inside a vision transformer
#
# Wu et al. 2021, *CvT: Introducing Convolutions to Vision Transformers*, changes two things in ViT:
#
# * **Convolutional token embedding** (§3.1): each of 3 stages starts with a strided, overlapping convolution
#   followed by LayerNorm, so the token grid shrinks and the width grows stage by stage, like a CNN pyramid. There
#   are no position embeddings: the convolutions already model local spatial structure, and the paper drops them.
# * **Convolutional projection** (§3.2): before the linear q/k/v projections, the token grid passes through a
#   depthwise 3×3 convolution + BatchNorm (`dw_bn`). Keys and values use **stride 2**, so each query attends to ~4×
#   fewer keys.
#
# We build the embedding, the projection and one complete `CvtLayer` by hand, then the whole trained digits model
# (`golden/models/digits-cvt`: 32×32 input, 3 stages of widths 32/48/64, 1/2/4 heads) over the 360 test digits,
# every step asserted against refvit's intermediates; then costs, three planted quirks and exercises. Framework:
# `transformers/models/cvt/modeling_cvt.py` (`CvtConvEmbeddings`, `CvtSelfAttentionConvProjection`,
# `CvtSelfAttention`, `CvtLayer`).

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import erf

from common import assert_close, block_diagram, check, digits, first_divergence
from refvit import kernels

K = kernels.get("numpy")                                   # refvit's NumPy attention kernel, for the timing in §4
d = digits("digits-cvt")
cfg, Wt = d.config, d.weights
pixel_values, labels = d.pixel_values, d.labels
x = pixel_values[:8]
out = d.model(x, output_intermediates=True)
inter = out.intermediates
S = len(cfg["depth"])
print(d.model, "\nembed_dim", cfg["embed_dim"], "| depth", cfg["depth"], "| heads", cfg["num_heads"])
print("intermediates of stage 0:", *[n for n in inter if n.startswith("cvt.encoder.stages.0")], sep="\n  ")

# %% [markdown]
# ## 0. Shapes and the block
#
# Every convolution's output size is `⌊(n + 2·pad − k) / stride⌋ + 1`; per stage of the digits model:

# %%
def conv_out(n, k, stride, pad):
    return (n + 2 * pad - k) // stride + 1


def stage_table(c, size):
    """(grid h, queries N, keys N_k, width C, heads H) per stage for a size × size input."""
    rows, n = [], size
    for i in range(len(c["depth"])):
        n = conv_out(n, c["patch_sizes"][i], c["patch_stride"][i], c["patch_padding"][i])
        nk = conv_out(n, c["kernel_qkv"][i], c["stride_kv"][i], c["padding_kv"][i])
        rows.append((n, n * n + c["cls_token"][i], nk * nk + c["cls_token"][i], c["embed_dim"][i], c["num_heads"][i]))
    return rows


print("stage  grid     queries N  keys N_k  width C  heads  attention map    MLP hidden")
for i, (n, nq, nk, c, hh) in enumerate(stage_table(cfg, 32)):
    mlp = int(c * cfg["mlp_ratio"][i])
    print(f"{i:5d}  {n:2d}×{n:<2d}    {nq:9d}  {nk:8d}  {c:7d}  {hh:5d}  (B,{hh},{nq},{nk})".ljust(64)
          + f" (B,{nq},{mlp})")

fig, ax = plt.subplots(figsize=(7, 5))
block_diagram(ax, [("tokens x (grid h×w, + [CLS] in the last stage)", "(B, N, C)"), ("LayerNorm (layernorm_before)", ""),
                   ("tokens → grid (B, C, h, w)", ""),
                   ("depthwise 3×3 conv + BatchNorm: q stride 1, k, v stride 2", "(B, N, C), (B, N_k, C) ×2"),
                   ("Linear q, k, v (projection_*)", ""), ("softmax(q kᵀ · C^-½) per head", "(B, H, N, N_k)"),
                   ("A v, concat, Linear (attention.output)", "(B, N, C)"), ("LayerNorm (layernorm_after)", ""),
                   ("Linear C→rC, GELU, Linear →C", "(B, N, C)")], residuals=[(0, 6), (6, 8)],
              title="one CvtLayer: the convolutional projection inside a pre-norm layer")
plt.show()

# %% [markdown]
# ## 1. Convolutional token embedding
#
# Stage 0: `Conv2d(3, 32, kernel 3, stride 2, padding 1)` then LayerNorm over channels. A convolution is a matrix
# product over sliding windows (im2col), written here with `sliding_window_view`. Note the LayerNorm eps: every
# LayerNorm in modeling_cvt.py is `nn.LayerNorm(C)` with torch's default **1e-5**; the config's `layer_norm_eps`
# (1e-12 here) is never read.

# %%
LN_EPS, BN_EPS = 1e-5, 1e-5                   # nn.LayerNorm / nn.BatchNorm2d defaults (config.layer_norm_eps unused)


def conv2d(x, weight, bias, stride, pad, groups=1):
    """Conv2d (NCHW) as im2col + one einsum; groups == channels is the depthwise conv."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = weight.shape[-1]
    windows = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]   # (B, Cin, h, w, k, k)
    if groups == 1:
        y = np.einsum("bchwij,ocij->bohw", windows, weight, optimize=True)            # (B, Cout, h, w)
    else:
        y = np.einsum("bchwij,cij->bchw", windows, weight[:, 0], optimize=True)       # one filter per channel
    return y if bias is None else y + bias[None, :, None, None]


def layer_norm(x, name, eps=LN_EPS):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * Wt[f"{name}.weight"] \
        + Wt[f"{name}.bias"]


def to_tokens(grid):                                  # (B, C, h, w) -> (B, h·w, C)
    return grid.reshape(*grid.shape[:2], -1).transpose(0, 2, 1)


def to_grid(tokens, h, w):                            # (B, h·w, C) -> (B, C, h, w)
    return tokens.transpose(0, 2, 1).reshape(tokens.shape[0], -1, h, w)


name = "cvt.encoder.stages.0.embedding.convolution_embeddings"
y = conv2d(x.astype(np.float64), Wt[f"{name}.projection.weight"], Wt[f"{name}.projection.bias"],
           cfg["patch_stride"][0], cfg["patch_padding"][0])
tokens = layer_norm(to_tokens(y), f"{name}.normalization")
assert_close(y, inter[f"{name}.projection"], "projection")
assert_close(tokens, inter[f"{name}.normalization"], "normalization")
print(f"stage 0 embedding: {x.shape[2:]} pixels -> {y.shape[2:]} grid = {tokens.shape[1]} tokens of {tokens.shape[2]}")

# %% [markdown]
# ## 2. The convolutional projection and the full attention
#
# **Why a convolution.** In ViT the query, key and value of a token are linear maps of *that token alone*: what
# its neighbours hold reaches it only through attention, and where it sits only through the position embedding. CvT
# puts a depthwise 3×3 convolution in front of the linear maps (§3.2 of the paper), so every query, key and value
# already mixes a token with its 3×3 neighbourhood — local spatial context before any attention, one reason CvT can
# drop the position embeddings. Keys and values are taken at stride 2: each summarises a 3×3 window, and there are
# 4× fewer of them.
#
# Measured, not drawn by hand: stage 0, layer 0, the LayerNormed tokens of one digit on their 16×16 grid. Add the
# same random vector to one input token at a time and record how much one output moves (the norm of its change).
# The BatchNorm after the depthwise conv scales and shifts each channel, and the linear maps mix channels of one
# token: neither widens what a position sees, so the conv alone decides it.

# %%
def dw_conv(grid, n, stride):
    """Stage 0, layer 0's depthwise 3×3 conv for n = "query" / "key" (padding 1), without its BatchNorm."""
    w = Wt[f"cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_{n}.convolution_projection"
           ".convolution.weight"]
    return conv2d(grid, w, None, stride, 1, groups=grid.shape[1])


g0 = to_grid(inter["cvt.encoder.stages.0.layers.0.layernorm_before"][:1].astype(np.float64), 16, 16)  # (1, C, h, w)
gh, gw = g0.shape[2:]
lin_q = lambda g: to_tokens(g) @ Wt["cvt.encoder.stages.0.layers.0.attention.attention.projection_query.weight"].T
bump = np.random.default_rng(0).standard_normal(g0.shape[1])
qpos, kpos = (5, 9), (2, 2)                       # a query token; a key of the 8×8 key grid (window centre (4, 4))
base = lin_q(g0), dw_conv(g0, "query", 1), dw_conv(g0, "key", 2)
moved = np.zeros((4, gh, gw))                     # ViT's q, CvT's q, CvT's k at kpos, keys touched
for i in range(gh):
    for j in range(gw):
        g = g0.copy()
        g[0, :, i, j] += bump
        vit_q, cvt_q, cvt_k = lin_q(g), dw_conv(g, "query", 1), dw_conv(g, "key", 2)
        moved[0, i, j] = np.linalg.norm(vit_q - base[0], axis=-1)[0, qpos[0] * gw + qpos[1]]
        moved[1, i, j] = np.linalg.norm((cvt_q - base[1])[0, :, qpos[0], qpos[1]])
        moved[2, i, j] = np.linalg.norm((cvt_k - base[2])[0, :, kpos[0], kpos[1]])
        moved[3, i, j] = (np.linalg.norm(cvt_k - base[2], axis=1) > 0).sum()
window = lambda c: (np.abs(np.arange(gh)[:, None] - c[0]) <= 1) & (np.abs(np.arange(gw)[None] - c[1]) <= 1)
assert set(zip(*np.nonzero(moved[0]))) == {qpos}                                  # one token
assert np.array_equal(moved[1] > 0, window(qpos))                                 # its 3×3 neighbourhood
assert np.array_equal(moved[2] > 0, window((2 * kpos[0], 2 * kpos[1])))           # a 3×3 window at stride 2
print(f"the query's 9 neighbours move it by {moved[1][moved[1] > 0].min():.2f} to {moved[1].max():.2f}; each token"
      f" is seen by {int(moved[3].min())} to {int(moved[3].max())} of the {base[2].shape[2]}×{base[2].shape[3]} keys")

fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
titles = [f"ViT: linear q of token {qpos}", f"CvT: q of token {qpos} (stride 1)",
          f"CvT: key {kpos} of the 8×8 keys (stride 2)", "CvT: how many keys see each token"]
for ax, m, title in zip(axes, moved, titles):
    im = ax.imshow(m, cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    ax.set_title(title, fontsize=8), ax.set_xticks([]), ax.set_yticks([])
for ax, c in ((axes[0], qpos), (axes[1], qpos), (axes[2], (2 * kpos[0], 2 * kpos[1]))):
    ax.add_patch(plt.Rectangle((c[1] - 1.5, c[0] - 1.5), 3, 3, fill=False, ec="w", lw=1, ls="--"))
fig.suptitle("how much one output moves when one input token is changed (16×16 token grid, stage 0)", fontsize=10)
plt.show()

# %% [markdown]
# The linear projection sees one token; the convolutional query sees 3×3 tokens, weighted by the trained filters
# (in this layer the nine count about equally: a local mix, not a sharpened centre); a stride-2 key sees the 3×3
# window around every other token, and the windows overlap, so no token is dropped: tokens on even rows and columns
# are seen by one key, those on an odd row or column by two or four — except the last row and column, which only
# the last key row or column reaches.
#
# **How.** In each layer the LayerNormed tokens go back to their grid; a depthwise 3×3 conv (one filter per channel,
# `groups=C`, no bias) and an eval-mode BatchNorm (running statistics) produce the q grid (stride 1) and the k, v
# grids (stride 2); in the last stage `[CLS]` bypasses the convolutions and is put back in front. Then the usual
# linear projections and softmax attention — with one quirk: CvT scales the scores by **`embed_dim^-½`**, the whole
# width, not the head width `D^-½` (as the original microsoft/CvT code does). This is the clean model, with no
# switches for bugs: §5 plants each bug by swapping one small helper (`kv_stride`, `attention_scale`, `ln_eps`).

# %%
def dw_bn(grid, name, stride, pad):
    """CvtSelfAttentionConvProjection: depthwise Conv2d then BatchNorm2d (eval) -> tokens (B, h'·w', C)."""
    y = conv2d(grid, Wt[f"{name}.convolution.weight"], None, stride, pad, groups=grid.shape[1])
    m, v = Wt[f"{name}.normalization.running_mean"], Wt[f"{name}.normalization.running_var"]
    y = (y - m[:, None, None]) / np.sqrt(v[:, None, None] + BN_EPS) * Wt[f"{name}.normalization.weight"][:, None, None] \
        + Wt[f"{name}.normalization.bias"][:, None, None]
    return to_tokens(y)


def linear(x, name):
    return x @ Wt[f"{name}.weight"].T + Wt[f"{name}.bias"]


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kv_stride(s):
    """The keys' and values' stride in stage s (the config's stride_kv)."""
    return cfg["stride_kv"][s]


def attention_scale(C, H):
    """CvT scales the scores by embed_dim^-½ (the whole width C), not the head width's."""
    return C ** -0.5


def ln_eps():
    """Every LayerNorm: nn.LayerNorm's default eps (CvT never reads config.layer_norm_eps)."""
    return LN_EPS


def self_attention(x, hw, s, name, rec):
    """CvtSelfAttention: conv projections, linear q/k/v, softmax(q kᵀ · C^-½) v per head -> (B, N, C)."""
    C, H = cfg["embed_dim"][s], cfg["num_heads"][s]
    cls, grid = (x[:, :1], x[:, 1:]) if cfg["cls_token"][s] else (None, x)
    grid = to_grid(grid, *hw)
    stride_kv = kv_stride(s)
    q = dw_bn(grid, f"{name}.convolution_projection_query.convolution_projection", cfg["stride_q"][s], cfg["padding_q"][s])
    k, v = (dw_bn(grid, f"{name}.convolution_projection_{n}.convolution_projection", stride_kv, cfg["padding_kv"][s])
            for n in ("key", "value"))
    for n, t in zip(("query", "key", "value"), (q, k, v)):
        rec[f"{name}.convolution_projection_{n}"] = t
    if cls is not None:
        q, k, v = (np.concatenate([cls, t], axis=1) for t in (q, k, v))            # (B, 1 + N', C)
    q, k, v = (linear(t, f"{name}.projection_{n}") for n, t in zip(("query", "key", "value"), (q, k, v)))
    for n, t in zip(("query", "key", "value"), (q, k, v)):
        rec[f"{name}.projection_{n}"] = t
    split = lambda t: t.reshape(t.shape[0], t.shape[1], H, C // H).transpose(0, 2, 1, 3)   # (B, H, N, D)
    scale = attention_scale(C, H)
    probs = rec[f"{name}.dropout"] = softmax(split(q) @ split(k).transpose(0, 1, 3, 2) * scale)   # (B, H, N, N_k)
    ctx = rec[name] = (probs @ split(v)).transpose(0, 2, 1, 3).reshape(q.shape)
    return ctx


def cvt_layer(x, hw, s, name, rec):
    """CvtLayer: x + attention(LN(x)), then + MLP(LN(·))."""
    hdn = rec[f"{name}.layernorm_before"] = layer_norm(x, f"{name}.layernorm_before", ln_eps())
    ctx = self_attention(hdn, hw, s, f"{name}.attention.attention", rec)
    hdn = rec[f"{name}.attention.output"] = linear(ctx, f"{name}.attention.output.dense")
    x = x + hdn
    hdn = rec[f"{name}.layernorm_after"] = layer_norm(x, f"{name}.layernorm_after", ln_eps())
    hdn = linear(hdn, f"{name}.intermediate.dense")
    hdn = rec[f"{name}.intermediate"] = 0.5 * hdn * (1 + erf(hdn / np.sqrt(2)))
    x = rec[f"{name}.output"] = linear(hdn, f"{name}.output.dense") + x              # CvtOutput adds the residual
    rec[name] = x
    return x


mine = {}
name = "cvt.encoder.stages.0.layers.0"
hw = (y.shape[2], y.shape[3])
layer0 = cvt_layer(tokens, hw, 0, name, mine)
for n, t in mine.items():
    assert_close(t, inter[n], n)
L = f"{name}.attention.attention"
print(f"one CvtLayer by hand, {len(mine)} intermediates = refvit's: queries {mine[L + '.projection_query'].shape[1]}, "
      f"keys {mine[L + '.projection_key'].shape[1]}, attention map {mine[L + '.dropout'].shape[1:]}")

probs = mine[f"{L}.dropout"]                                                       # (B, 1, 256, 64)
hk = int(np.sqrt(probs.shape[-1]))
# on the digit's pixels: token (r, c) of stage 0 is centred on pixel (2r, 2c) (conv 3×3 / 2, padding 1), key (i, j)
# on token (2i, 2j), i.e. pixel (4i, 4j): each key's square spans pixels 4i − 2 … 4i + 2
fig, axes = plt.subplots(1, 5, figsize=(13, 2.7))
axes[0].imshow(x[0, 0], cmap="gray"), axes[0].set_title("input", fontsize=8)
queries = [0, hw[1] * 5 + 5, hw[1] * 8 + 8, hw[1] * 12 + 4]
for ax, qi in zip(axes[1:], queries):
    att = probs[0, 0, qi].reshape(hk, hk)
    ax.imshow(x[0, 0], cmap="gray")
    im = ax.imshow(att, cmap="magma", alpha=0.65, vmin=0, vmax=att.max(), extent=(-2, 4 * hk - 2, 4 * hk - 2, -2))
    ax.plot(2 * (qi % hw[1]), 2 * (qi // hw[1]), "c*", ms=9)
    ax.set(xlim=(-0.5, 31.5), ylim=(31.5, -0.5))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    ax.set_title(f"query ({qi // hw[1]}, {qi % hw[1]}) of {hw[0]}×{hw[1]} (★)", fontsize=8)
for ax in axes:
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle(f"stage 0: each query attends over a {hk}×{hk} key grid (stride-2 keys), over the digit; each panel "
             "on its own scale", fontsize=10)
plt.show()

# %% [markdown]
# ## 3. The whole model
#
# Stages in turn (embedding conv + LayerNorm, `[CLS]` in front in the last stage, layers, `[CLS]` split off, tokens
# back to a grid for the next stage's convolution); the head: LayerNorm on the last stage's `[CLS]`, the mean over
# tokens (one token), the classifier.

# %%
def forward(x, rec=None):
    """CvtForImageClassification by hand -> logits."""
    rec = {} if rec is None else rec
    grid = x.astype(np.float64)
    for s in range(S):
        name = f"cvt.encoder.stages.{s}"
        emb = f"{name}.embedding.convolution_embeddings"
        y = rec[f"{emb}.projection"] = conv2d(grid, Wt[f"{emb}.projection.weight"], Wt[f"{emb}.projection.bias"],
                                              cfg["patch_stride"][s], cfg["patch_padding"][s])
        hw = y.shape[2:]
        tokens = rec[f"{emb}.normalization"] = layer_norm(to_tokens(y), f"{emb}.normalization", ln_eps())
        if cfg["cls_token"][s]:
            tokens = np.concatenate([np.broadcast_to(Wt[f"{name}.cls_token"], (x.shape[0], 1, tokens.shape[2])),
                                     tokens], axis=1)
        for j in range(cfg["depth"][s]):
            tokens = cvt_layer(tokens, hw, s, f"{name}.layers.{j}", rec)
        cls, tokens = (tokens[:, :1], tokens[:, 1:]) if cfg["cls_token"][s] else (None, tokens)
        grid = rec[name] = to_grid(tokens, *hw)
    pooled = rec["layernorm"] = layer_norm(cls, "layernorm")                          # (B, 1, C)
    return linear(pooled.mean(1), "classifier")


mine = {}
logits = forward(x, rec=mine)
for n, t in mine.items():
    assert_close(t, inter[n], n)
assert_close(logits, out.logits, "logits")
print(f"{len(mine)} hand-built intermediates match refvit's; not rebuilt: "
      f"{[n for n in inter if n not in mine and n != 'classifier']}")
all_logits = forward(pixel_values)
assert_close(all_logits, d.recorded["logits"], "logits vs PyTorch")
assert (all_logits.argmax(-1) == np.array(d.meta["test_predictions"])).all()
correct = d.accuracy(all_logits)
print(f"360 digits by hand: accuracy {correct:.2%}, PyTorch's class on every image")

# %% [markdown]
# (`cvt.encoder.stages.N.embedding` is the embedding's token grid, the same numbers as its `normalization` output.)

# %% [markdown]
# **The token grids, stage by stage.** Each stage's convolutional embedding halves the grid (stride 2) and widens the
# tokens: 16×16 tokens of 32 channels, then 8×8 of 48, then 4×4 of 64 for one digit. Two views per stage, each panel
# on its own scale with a colour bar: the length of each token (how much the stage "has to say" there) and its first
# principal component over the grid (the main direction the tokens vary along: ink vs background, then parts).

# %%
digit = 3
fig, axes = plt.subplots(2, S + 1, figsize=(3.2 * (S + 1), 5.6))
axes[0, 0].imshow(x[digit, 0], cmap="gray"), axes[0, 0].set_title(f"input (label {labels[digit]})", fontsize=9)
axes[1, 0].set_axis_off()
for s in range(S):
    grid = inter[f"cvt.encoder.stages.{s}"][digit].astype(np.float64)                # (C, h, w)
    C_s, gh_, gw_ = grid.shape
    tokens_s = grid.reshape(C_s, -1).T                                              # (h·w, C)
    centred = tokens_s - tokens_s.mean(0)
    pc1 = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]               # first principal component
    for r, (img, what, cmap) in enumerate([(np.linalg.norm(tokens_s, axis=1), "token length", "viridis"),
                                           (pc1, "1st principal component", "RdBu_r")]):
        lim = np.abs(img).max()
        im = axes[r, s + 1].imshow(img.reshape(gh_, gw_), cmap=cmap,
                                   **({} if r == 0 else dict(vmin=-lim, vmax=lim)))
        fig.colorbar(im, ax=axes[r, s + 1], fraction=0.046, pad=0.03)
        axes[r, s + 1].set_title(f"stage {s}: {gh_}×{gw_} × {C_s}\n{what}", fontsize=8)
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
plt.show()

# %% [markdown]
# ## 4. What stride-2 keys and values save, and what they cost
#
# Per layer, with `N` queries, `N_k` keys, width `C`, kernel `k`, counted in multiply-adds (MACs):
#
# | step | MACs |
# |---|---|
# | depthwise conv for q (stride 1) | `k²·C·N` |
# | depthwise convs for k, v | `2·k²·C·N_k` |
# | linear q / k, v projections | `C²·N` / `2·C²·N_k` |
# | `q kᵀ` (all heads together) | `N·N_k·C` |
# | `A v` | `N·N_k·C` |
#
# and the attention maps hold `H·N·N_k` numbers. Going from stride 1 to stride 2 divides `N_k` by ~4 and so every
# term with `N_k`, the depthwise k/v convs included: **in compute it costs nothing** (the depthwise convs are there at
# stride 1 too). What it costs is resolution: each key and value summarises a 3×3 neighbourhood sampled every other
# token, so attention can no longer single out one token of a pair of neighbours. CvT-13 at 224² (the
# microsoft/cvt-13 configuration), batch 1:

# %%
cvt13 = dict(depth=[1, 2, 10], embed_dim=[64, 192, 384], num_heads=[1, 3, 6], patch_sizes=[7, 3, 3],
             patch_stride=[4, 2, 2], patch_padding=[2, 1, 1], kernel_qkv=[3, 3, 3], padding_kv=[1, 1, 1],
             cls_token=[False, False, True])


def layer_macs(c, size, stride_kv):
    """Per stage: (N, N_k, attention MMACs, conv-projection MMACs, linear-projection MMACs, map MiB) per layer."""
    rows = []
    for i, (n, nq, nk, C, H) in enumerate(stage_table({**c, "stride_kv": [stride_kv] * 3}, size)):
        k, N, Nk = c["kernel_qkv"][i], nq, nk
        rows.append((N, Nk, 2 * N * Nk * C / 1e6, k * k * C * (N + 2 * Nk) / 1e6, C * C * (N + 2 * Nk) / 1e6,
                     4 * H * N * Nk / 2 ** 20))
    return rows


print("stage  N      N_k s=1 / s=2   q kᵀ + A v MMAC s=1 / s=2   dw-conv MMAC s=1 / s=2   linear MMAC s=1 / s=2"
      "   maps MiB s=1 / s=2")
for i, (a, b) in enumerate(zip(layer_macs(cvt13, 224, 1), layer_macs(cvt13, 224, 2))):
    print(f"{i:5d}  {a[0]:5d}  {a[1]:5d} / {b[1]:5d}   {a[2]:10.0f} / {b[2]:8.0f}        {a[3]:7.1f} / {b[3]:6.1f}"
          f"          {a[4]:7.0f} / {b[4]:6.0f}       {a[5]:7.1f} / {b[5]:5.1f}")
tot = [sum(dp * (r[2] + r[3] + r[4]) for dp, r in zip(cvt13["depth"], layer_macs(cvt13, 224, s))) for s in (1, 2)]
print(f"attention blocks over all {sum(cvt13['depth'])} layers: {tot[0] / 1e3:.2f} GMAC with stride 1, "
      f"{tot[1] / 1e3:.2f} GMAC with stride 2")

# %% [markdown]
# Stage 0 dominates: 3,136 queries × 3,136 keys is a 37.5 MiB map per head and layer; stride 2 makes it 9.4 MiB.
# Measured with refvit's NumPy attention kernel on stage 0's shapes (one head, width 64):

# %%
def best_time(f, repeat=2):
    """Fastest of `repeat` wall-clock runs of f(), in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


rng = np.random.default_rng(0)
N0, C0 = 56 * 56, 64
qs = rng.standard_normal((1, N0, C0), dtype=np.float32)
timings = {}
for Nk in (N0, 28 * 28):
    kv = rng.standard_normal((1, Nk, C0), dtype=np.float32)
    timings[Nk] = best_time(lambda: K.attention(qs, kv, kv, 1, C0 ** -0.5))
print("  ".join(f"keys {nk}: {t * 1e3:.0f} ms" for nk, t in timings.items()),
      f"-> stride 2 is {timings[N0] / timings[28 * 28]:.1f}x faster here")

# %% [markdown]
# ## 5. Planted quirks
#
# * `head_dim_scale`: scores scaled by `D^-½` (what ViT does) instead of CvT's `embed_dim^-½`. In stage 0 there is one
#   head, so `D = C` and nothing changes: the first divergence is in **stage 1** (2 heads, scores √2 too large).
# * `config_eps`: LayerNorms built with the config's `layer_norm_eps` (1e-12), which transformers' CvT never reads.
# * `kv_stride1`: keys and values at stride 1 (the config's `stride_kv` ignored): a different attention altogether.
#
# As in notebook 01, each quirk replaces one clean helper by name; `quirk_report` (in `tutorials/common.py`) shows it
# as a diff against that helper and runs `run()` with it planted.

# %%
from common import quirk_report


def attention_scale_head_dim(C, H):
    return (C // H) ** -0.5


def ln_eps_from_config():
    return cfg["layer_norm_eps"]


def kv_stride_1(s):
    return 1


quirks = {"head_dim_scale": ("attention_scale", attention_scale_head_dim), "config_eps": ("ln_eps", ln_eps_from_config),
          "kv_stride1": ("kv_stride", kv_stride_1)}


def run():
    """The model as it now is: intermediates of the first digits, accuracy on all 360."""
    rec = {}
    forward(x, rec=rec)
    return rec, d.accuracy(forward(pixel_values))


quirk_report(globals(), quirks, run, inter, correct)
emb0 = "cvt.encoder.stages.0.embedding.convolution_embeddings.projection"
tok_var = to_tokens(inter[emb0].astype(np.float64)).var(-1)                        # per token, stage 0's LayerNorm
print(f"variance of the tokens entering stage 0's embedding LayerNorm: median {np.median(tok_var):.2g}, min "
      f"{tok_var.min():.2g}, max {tok_var.max():.2g}; eps/(2·var) at the median {LN_EPS / (2 * np.median(tok_var)):.1e} "
      f"(float32 rounding ≈ 6e-8; equal at var = 80)")

# %% [markdown]
# The eps mix-up (1e-12 vs 1e-5) leaves the tolerance at the very first LayerNorm it touches — the stage-0
# embedding's — and no digit changes class. It changes each LayerNorm by about `eps / (2·var)` relative: at var = 80
# that is 1e-5/160 ≈ 6e-8, float32 rounding itself, so the change is *above* rounding only for variances well below
# ~80 (10× above it at var ≈ 8, 1000× at var ≈ 0.08) — the printed variances show where these tokens sit. Not a
# "float64-only" effect. The scale quirk
# hides in stage 0 (one head) and appears in stage 1; stride-1 keys are a different model (−28 points).
#
# ## 6. Exercises
#
# Solutions: `tutorials/solutions/04_cvt.py`.
#
# **Exercise 1.** The attention map of head 1 in stage 1, layer 0 for the first 8 digits, `(8, N, N_k)`, from
# refvit's `projection_query` and `projection_key` of that layer (mind the scale).

# %%
def exercise_1():
    raise NotImplementedError


A1 = "cvt.encoder.stages.1.layers.0.attention.attention"
check("exercise 1 (stage 1 attention)", exercise_1, inter[f"{A1}.dropout"][:, 1])

# %% [markdown]
# **Exercise 2.** How many keys does a query of stage 0 attend to for a 64×64 input? Use the output-size formula
# only; `check` runs refvit on a 64×64 image and reads the shape of its key projection.

# %%
def exercise_2():
    raise NotImplementedError


big = d.model(np.zeros((1, 3, 64, 64), np.float32), output_intermediates=True).intermediates
check("exercise 2 (keys at 64²)", exercise_2,
      big["cvt.encoder.stages.0.layers.0.attention.attention.projection_key"].shape[1])

# %% [markdown]
# **Exercise 3.** The MACs of `q kᵀ` in one layer of stage 2 of the digits model (all heads, one image), from the
# config; `check` reads N, N_k and C off refvit's intermediates.

# %%
def exercise_3():
    raise NotImplementedError


A2 = "cvt.encoder.stages.2.layers.0.attention.attention"
check("exercise 3 (q kᵀ MACs in stage 2)", exercise_3,
      inter[f"{A2}.projection_query"].shape[1] * inter[f"{A2}.projection_key"].shape[1]
      * inter[f"{A2}.projection_key"].shape[2])

# %% [markdown]
# ## 7. Find the bug
#
# `tutorials/hunt/cvt_port.py` is a NumPy/SciPy port of this model written from modeling_cvt.py, as a porter might —
# with one bug. Don't read it yet. It runs, and its accuracy on the 360 digits says something is wrong:

# %%
from hunt import cvt_port as port

print(f"the port's accuracy: {d.accuracy(port.forward(pixel_values, Wt, cfg)):.2%} (refvit, PyTorch: {correct:.2%})")

# %% [markdown]
# **Exercise 4.** Find the bug and fix it: return a dict `{helper name: your corrected function}` that
# `port.forward(x, Wt, cfg, fixes=...)` uses in place of the port's own helper of that name (same signature).
# `check` runs the port with your fix and compares its logits with refvit's, so only a real fix passes.
#
# *Hint 1 (where to look), if you are stuck:* `port.forward(x, Wt, cfg, rec)` records its intermediates under
# refvit's names; `first_divergence(rec, inter)` gives the first module where they leave the tolerance. The module
# before it agrees: which steps lie between the two?
#
# *Hint 2 (which tensor), if you are still stuck:* `layernorm_before` agrees and the query's convolutional
# projection does not; between them are only the depthwise conv and the BatchNorm. Feed both the port's
# `depthwise_conv` and §1's `conv2d(..., groups=C)` an *impulse* — a grid of zeros with a single 1 in the middle of
# each channel — and compare what comes out with the 3×3 filter itself.

# %%
def exercise_4():
    raise NotImplementedError


check("exercise 4 (the port's bug, fixed)", lambda: port.forward(x, Wt, cfg, fixes=exercise_4()), out.logits)
