# %% [markdown]
# # DeiT: the distillation token
#
# Touvron et al. 2021, *Training data-efficient image transformers & distillation through attention*: a ViT with a
# second special token. Next to `[CLS]` sits a learned **distillation token**; it attends and is attended like any
# other token, and its final state feeds a second head trained to reproduce a **teacher**'s predictions (hard-label
# distillation: `loss = ½ CE(class head, y) + ½ CE(distillation head, argmax teacher)`). At inference
# `DeiTForImageClassificationWithTeacher` averages the two heads
# (`transformers/models/deit/modeling_deit.py`; refvit: `deit_embeddings`, `image_classification_with_teacher` in
# `refvit/models/vit.py`).
#
# Our student `golden/models/digits-deit` was distilled from the BiT teacher `golden/models/digits-bit` by
# `golden/train_digits.py`, on scikit-learn's handwritten digits.

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import refvit
from refvit.datasets import digit_image

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "golden" / "models").is_dir())
MODELS = ROOT / "golden" / "models"
test = np.load(MODELS / "digits_test.npz")
scans, labels = test["images"], test["labels"]


def load(name):
    """A digits model (NumPy backend) and the test split through its own image processor."""
    model = refvit.from_pretrained(MODELS / name, backend="numpy")
    processor = refvit.AutoImageProcessor.from_pretrained(MODELS / name)
    return model, processor(images=[digit_image(s) for s in scans], return_tensors="np")["pixel_values"]


student, x = load("digits-deit")
teacher, x_teacher = load("digits-bit")
cfg = student.config
print(student, "\n", teacher)

# %% [markdown]
# ## 1. Two special tokens
#
# `DeiTEmbeddings`: patch embeddings, then `[CLS]` and the distillation token in front (in that order), then one
# position embedding per token — `N + 2` of them.

# %%
from refvit.models import vit

emb = student.params["deit"]["embeddings"]
B = 8
patches, (h, w) = vit.patch_embeddings(emb["patch_embeddings"], x[:B], cfg)          # (B, N, C)
special = np.concatenate([emb["cls_token"], emb["distillation_token"]], axis=1)      # (1, 2, C)
embedded = np.concatenate([np.broadcast_to(special, (B, 2, cfg.hidden_size)), patches], axis=1) \
    + emb["position_embeddings"]                                                      # (B, 2 + N, C)
out = student(x[:B], output_intermediates=True, output_hidden_states=True)
np.testing.assert_allclose(embedded, out.intermediates["deit.embeddings"], rtol=1e-5, atol=1e-5)
print("tokens per image:", embedded.shape[1], "= [CLS] + [DIST] +", h * w, "patches")

# %% [markdown]
# ## 2. Two heads, one average
#
# After the final LayerNorm, token 0 goes to `cls_classifier`, token 1 to `distillation_classifier`; `logits` is their
# mean. By hand, against refvit and against the logits PyTorch recorded for these images:

# %%
final = out.intermediates["deit.layernorm"]                                          # (B, 2 + N, C)
p = student.params
cls_logits = final[:, 0] @ p["cls_classifier"]["weight"].T + p["cls_classifier"]["bias"]
dist_logits = final[:, 1] @ p["distillation_classifier"]["weight"].T + p["distillation_classifier"]["bias"]
logits = (cls_logits + dist_logits) / 2

recorded = np.load(MODELS / "digits-deit" / "logits.npz")                             # PyTorch, whole test split
for mine, key in [(cls_logits, "cls_logits"), (dist_logits, "distillation_logits"), (logits, "logits")]:
    np.testing.assert_allclose(mine, getattr(out, key), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mine, recorded[key][:B], rtol=0, atol=1e-4 * max(1, np.abs(recorded[key]).max()))
print("cls, distillation and averaged logits match refvit and PyTorch")

# %% [markdown]
# ## 3. Two tokens that start apart and end together
#
# The paper reports the class and distillation tokens start nearly orthogonal and end very similar (cosine 0.93 at
# the output of DeiT-B) — yet not identical, since they are trained toward different targets. Our teacher agrees
# with the true labels on almost every digit, so the two targets nearly coincide: watch how similar the tokens get.

# %%
def cosine(a, b):
    """Mean over the batch of cos(a_i, b_i)."""
    return float(np.mean((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))))


sims = [cosine(hs[:, 0], hs[:, 1]) for hs in out.hidden_states] + [cosine(final[:, 0], final[:, 1])]
fig, ax = plt.subplots(figsize=(5, 2.8))
ax.plot(range(len(sims)), sims, "o-")
ax.set_xticks(range(len(sims)), ["embed"] + [f"layer {i}" for i in range(cfg.num_hidden_layers)] + ["final LN"])
ax.set(ylabel="cosine([CLS], [DIST])", title="class vs distillation token, through the network")
plt.show()
print("cosine per stage:", np.round(sims, 4))

# %% [markdown]
# ## 4. Teacher, class head, distillation head
#
# On all 360 test digits: which head agrees with whom?

# %%
full = student(x)
teacher_pred = teacher(x_teacher).logits.argmax(-1)
preds = {"teacher (BiT)": teacher_pred, "class head": full.cls_logits.argmax(-1),
         "distillation head": full.distillation_logits.argmax(-1), "student (average)": full.logits.argmax(-1)}
meta = json.loads((MODELS / "digits-deit" / "meta.json").read_text())
assert (preds["student (average)"] == np.array(meta["test_predictions"])).all()      # PyTorch's classes, every image
teacher_meta = json.loads((MODELS / "digits-bit" / "meta.json").read_text())
assert (teacher_pred == np.array(teacher_meta["test_predictions"])).all()

names = list(preds)
agree = np.array([[np.mean(preds[a] == preds[b]) for b in names] for a in names])
acc = [np.mean(preds[n] == labels) for n in names]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].bar(range(4), acc, color=["C2", "C0", "C1", "C4"])
axes[0].set_xticks(range(4), names, rotation=20, fontsize=8)
axes[0].set(ylim=(0, 1), title="test accuracy")
for i, a in enumerate(acc):
    axes[0].text(i, a + .02, f"{a:.1%}", ha="center", fontsize=8)
im = axes[1].imshow(agree, vmin=0, vmax=1, cmap="Blues")
axes[1].set_xticks(range(4), names, rotation=20, fontsize=8), axes[1].set_yticks(range(4), names, fontsize=8)
for i in range(4):
    for j in range(4):
        axes[1].text(j, i, f"{agree[i, j]:.0%}", ha="center", va="center", fontsize=8,
                     color="white" if agree[i, j] > .6 else "black")
axes[1].set_title("fraction of test digits where two predictors agree")
fig.tight_layout()
plt.show()
for n, a in zip(names, acc):
    print(f"{n:18s} accuracy {a:.1%}   agrees with teacher {np.mean(preds[n] == teacher_pred):.1%}")

# %% [markdown]
# The distillation head was trained toward the teacher's answers, the class head toward the true labels; the two
# targets differ only where the teacher errs on a training image, so the heads end up close, and the table above says
# how close on the test split. Below, every test digit on which any of label, teacher, class head and distillation
# head differ — the student's mistakes and the heads' disagreements, side by side, with the probability each head
# gives its answer:

# %%
def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


p_cls, p_dist = softmax(full.cls_logits), softmax(full.distillation_logits)
stack = np.stack([labels] + [preds[n] for n in names[:3]])                           # label, T, c, d
odd = np.flatnonzero((stack != stack[0]).any(0))
print(f"student wrong on {np.sum(preds['student (average)'] != labels)} digits; heads disagree on "
      f"{np.sum(preds['class head'] != preds['distillation head'])}; teacher wrong on {np.sum(teacher_pred != labels)}")
show = odd[:16]
if len(show):
    fig, axes = plt.subplots(2, (len(show) + 1) // 2, figsize=(1.25 * ((len(show) + 1) // 2), 3.8), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, i in zip(axes.flat, show):
        c, d = preds["class head"][i], preds["distillation head"][i]
        ax.imshow(scans[i], cmap="gray")
        ax.set_title(f"y={labels[i]} T={teacher_pred[i]}\nc={c} ({p_cls[i, c]:.0%})\nd={d} ({p_dist[i, d]:.0%})",
                     fontsize=7)
    fig.suptitle("y: label, T: teacher, c: class head, d: distillation head (its probability)", fontsize=9)
    fig.tight_layout()
    plt.show()
