# %% [markdown]
# # CvT: convolutions inside a vision transformer
#
# Wu et al. 2021, *CvT: Introducing Convolutions to Vision Transformers*, changes two things in ViT:
#
# * **Convolutional token embedding** (§3.1): each of 3 stages starts with a strided, overlapping convolution
#   followed by LayerNorm, so the token grid shrinks and the width grows stage by stage, like a CNN pyramid. There
#   are no position embeddings: the convolutions already model local spatial structure, and the paper drops them.
# * **Convolutional projection** (§3.2): before the linear q/k/v projections, the token grid passes through a
#   depthwise 3×3 convolution + BatchNorm (`dw_bn`). Keys and values use **stride 2**, so each query attends to 4×
#   fewer keys.
#
# Framework: `transformers/models/cvt/modeling_cvt.py` (`CvtConvEmbeddings`, `CvtSelfAttentionConvProjection`,
# `CvtSelfAttention`); refvit: `refvit/models/cvt.py`. Model: `golden/models/digits-cvt`, trained on handwritten
# digits by `golden/train_digits.py` (32×32 input, 3 stages of widths 32/48/64).

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import refvit
from refvit import kernels
from refvit.datasets import digit_image
from refvit.models import cvt

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "golden" / "models").is_dir())
MODEL = ROOT / "golden" / "models" / "digits-cvt"
K = kernels.get("numpy")

model = refvit.from_pretrained(MODEL, backend="numpy")
cfg = model.config
test = np.load(ROOT / "golden" / "models" / "digits_test.npz")
processor = refvit.AutoImageProcessor.from_pretrained(MODEL)
pixel_values = processor(images=[digit_image(s) for s in test["images"]], return_tensors="np")["pixel_values"]
x = pixel_values[:4]
out = model(x, output_intermediates=True)
inter = out.intermediates
print(model, "\ninput", x.shape, "| embed_dim", cfg.embed_dim, "| depth", cfg.depth, "| heads", cfg.num_heads)

# %% [markdown]
# ## 1. Convolutional token embedding
#
# Stage 0: `Conv2d(3, 32, kernel 3, stride 2, padding 1)` then LayerNorm over channels. A convolution is a matrix
# product over sliding windows (im2col), written here with `sliding_window_view`:

# %%
def conv2d(x, weight, bias, stride, pad):
    """Plain Conv2d (NCHW) as im2col + one einsum."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = weight.shape[-1]
    windows = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]   # (B, Cin, h, w, k, k)
    y = np.einsum("bchwij,ocij->bohw", windows, weight, optimize=True)                 # (B, Cout, h, w)
    return y if bias is None else y + bias[None, :, None, None]


emb = model.params["cvt"]["encoder"]["stages"][0]["embedding"]["convolution_embeddings"]
y = conv2d(x, emb["projection"]["weight"], emb["projection"]["bias"], cfg.patch_stride[0], cfg.patch_padding[0])
tokens = y.reshape(*y.shape[:2], -1).transpose(0, 2, 1)                                # (B, h·w, C)
tokens = K.layer_norm(tokens, emb["normalization"]["weight"], emb["normalization"]["bias"], cvt.LAYER_NORM_EPS)
name = "cvt.encoder.stages.0.embedding.convolution_embeddings"
np.testing.assert_allclose(y, inter[f"{name}.projection"], rtol=1e-4, atol=1e-5)
np.testing.assert_allclose(tokens, inter[f"{name}.normalization"], rtol=1e-4, atol=1e-4)
print(f"stage 0 embedding: {x.shape[2:]} pixels -> {y.shape[2:]} grid = {tokens.shape[1]} tokens of {tokens.shape[2]}")

# %% [markdown]
# Token counts per stage (`cvt.stage_grids`), for our digits model and for CvT-13 at 224² (the `CvtConfig`
# defaults are microsoft/cvt-13's). `[CLS]` is added only in the last stage.

# %%
def token_table(cfg, size):
    rows = []
    for i, (h, w) in enumerate(cvt.stage_grids(cfg, size, size)):
        kv = [cvt.projected_size("dw_bn", n, cfg.kernel_qkv[i], cfg.stride_kv[i], cfg.padding_kv[i]) for n in (h, w)]
        rows.append((i, f"{h}×{w}", h * w + cfg.cls_token[i], kv[0] * kv[1] + cfg.cls_token[i], cfg.embed_dim[i]))
    return rows


for title, c, size in [("digits-cvt", cfg, 32), ("CvT-13", cvt.CvtConfig(), 224)]:
    print(f"{title} at {size}²\n  stage  grid     tokens (queries)  keys/values  width")
    for i, grid, nq, nk, C in token_table(c, size):
        print(f"  {i:5d}  {grid:7s}  {nq:16d}  {nk:11d}  {C:5d}")

# %% [markdown]
# ## 2. The convolutional projection
#
# In each layer, the LayerNormed tokens go back to their grid; a depthwise 3×3 conv (one filter per channel,
# `groups=C`, no bias) and a BatchNorm with running statistics produce q (stride 1) and k, v (stride 2); then the
# usual linear projections. By hand for stage 0, layer 0:

# %%
def dw_bn(tokens, hw, p, stride, pad):
    """CvtSelfAttentionConvProjection: depthwise Conv2d + BatchNorm2d (eval) on the token grid -> tokens."""
    B, N, C = tokens.shape
    grid = tokens.transpose(0, 2, 1).reshape(B, C, *hw)                                 # (B, C, h, w)
    g = np.pad(grid, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    wts = p["convolution"]["weight"]                                                    # (C, 1, k, k)
    k = wts.shape[-1]
    win = sliding_window_view(g, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]        # (B, C, h', w', k, k)
    y = np.einsum("bchwij,cij->bchw", win, wts[:, 0], optimize=True)
    bn = p["normalization"]
    y = (y - bn["running_mean"][:, None, None]) / np.sqrt(bn["running_var"][:, None, None] + cvt.BATCH_NORM_EPS) \
        * bn["weight"][:, None, None] + bn["bias"][:, None, None]
    return y.reshape(B, C, -1).transpose(0, 2, 1)                                       # (B, h'·w', C)


L = "cvt.encoder.stages.0.layers.0.attention.attention"
att = model.params["cvt"]["encoder"]["stages"][0]["layers"][0]["attention"]["attention"]
hw = cvt.stage_grids(cfg, *x.shape[2:])[0]
normed = inter["cvt.encoder.stages.0.layers.0.layernorm_before"]
q = dw_bn(normed, hw, att["convolution_projection_query"]["convolution_projection"], cfg.stride_q[0], cfg.padding_q[0])
k = dw_bn(normed, hw, att["convolution_projection_key"]["convolution_projection"], cfg.stride_kv[0], cfg.padding_kv[0])
np.testing.assert_allclose(q, inter[f"{L}.convolution_projection_query"], rtol=1e-4, atol=1e-4)
np.testing.assert_allclose(k, inter[f"{L}.convolution_projection_key"], rtol=1e-4, atol=1e-4)

probs = inter[f"{L}.dropout"]                                                          # (B, H, Nq, Nk)
print("queries", q.shape[1], "keys", k.shape[1], "-> attention map", probs.shape[1:])
hk = int(np.sqrt(k.shape[1]))
fig, axes = plt.subplots(1, 5, figsize=(11, 2.4))
axes[0].imshow(x[0, 0], cmap="gray"), axes[0].set_title("input")
for ax, qi in zip(axes[1:], [0, hw[1] * 5 + 5, hw[1] * 8 + 8, hw[1] * 12 + 4]):
    ax.imshow(probs[0, 0, qi].reshape(hk, hk), cmap="magma")
    ax.set_title(f"query ({qi // hw[1]}, {qi % hw[1]}) of {hw[0]}×{hw[1]}", fontsize=8)
for ax in axes:
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle(f"stage 0: each query attends over a {hk}×{hk} key grid (stride-2 keys)", fontsize=10)
plt.show()

# %% [markdown]
# ## 3. What stride-2 keys and values cost and save
#
# Per layer, with `N` queries, `N_k` keys, width `C`, kernel `k`: attention costs `2·N·N_k·C` multiply-adds for
# `q kᵀ` and as much for `A v`; the attention map holds `H·N·N_k` numbers. Stride 2 divides `N_k` by ~4 — and costs
# only the depthwise convs (`k²·C` per output token). For CvT-13 at 224², batch 1, float32:

# %%
def layer_costs(c, size, stride_kv):
    """Per stage: (tokens, keys, attention GFLOP per layer, attention map MiB per layer, conv projection GFLOP)."""
    rows = []
    for i, (h, w) in enumerate(cvt.stage_grids(c, size, size)):
        kv = [cvt.projected_size("dw_bn", n, c.kernel_qkv[i], stride_kv, c.padding_kv[i]) for n in (h, w)]
        N, Nk, C = h * w + c.cls_token[i], kv[0] * kv[1] + c.cls_token[i], c.embed_dim[i]
        attn = 2 * (2 * N * Nk * C) / 1e9                                                # q kᵀ and A v, 2 FLOP per MAC
        conv = 2 * c.kernel_qkv[i] ** 2 * C * (h * w + 2 * (Nk - c.cls_token[i])) / 1e9   # q, k, v depthwise convs
        rows.append((N, Nk, attn, 4 * c.num_heads[i] * N * Nk / 2 ** 20, conv))
    return rows


c13 = cvt.CvtConfig()
print("stage  queries  keys s=1  keys s=2  attn GFLOP s=1  s=2   map MiB s=1  s=2   dw-conv GFLOP s=2")
for i, (a, b) in enumerate(zip(layer_costs(c13, 224, 1), layer_costs(c13, 224, 2))):
    print(f"{i:5d}  {a[0]:7d}  {a[1]:8d}  {b[1]:8d}  {a[2]:14.3f}  {b[2]:.3f}  {a[3]:10.1f}  {b[3]:5.1f}  {b[4]:17.4f}")
totals = [sum(d * r[2] for d, r in zip(c13.depth, layer_costs(c13, 224, s))) for s in (1, 2)]
print(f"attention over all {sum(c13.depth)} layers: {totals[0]:.2f} GFLOP with stride 1, {totals[1]:.2f} with stride 2")

# %% [markdown]
# Stage 0 dominates: 3,136 queries × 3,136 keys is a 37.5 MiB map per head and layer; stride 2 makes it 9.4 MiB, and
# the k/v linear projections shrink 4× too, for a depthwise-conv cost that is negligible. Measured
# with the NumPy attention kernel on stage 0's shapes (one head, width 64):

# %%
def best_time(f, repeat=3):
    """Fastest of `repeat` wall-clock runs of f(), in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


rng = np.random.default_rng(0)
N, C = 56 * 56, 64
qs = rng.standard_normal((1, N, C), dtype=np.float32)
timings = {}
for Nk in (N, 28 * 28):
    kv = rng.standard_normal((1, Nk, C), dtype=np.float32)
    timings[Nk] = best_time(lambda: K.attention(qs, kv, kv, 1, C ** -0.5))
print("  ".join(f"keys {nk}: {t * 1e3:.0f} ms" for nk, t in timings.items()),
      f"-> stride 2 is {timings[N] / timings[28 * 28]:.1f}x faster here")

# %% [markdown]
# ## 4. The whole model
#
# refvit's CvT on all 360 test digits, against PyTorch's recorded predictions:

# %%
meta = json.loads((MODEL / "meta.json").read_text())
logits = model(pixel_values).logits
recorded = np.load(MODEL / "logits.npz")["logits"]
np.testing.assert_allclose(logits, recorded, rtol=0, atol=1e-4 * max(1, np.abs(recorded).max()))
assert (logits.argmax(-1) == np.array(meta["test_predictions"])).all()
print(f"test accuracy {np.mean(logits.argmax(-1) == test['labels']):.1%} (PyTorch: {meta['test_accuracy']:.1%})")
