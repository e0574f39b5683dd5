# %% [markdown]
# # Recorded wrong answers to the exercises of 01_vit
#
# `tests/test_tutorials.py` appends these cells after the solutions and runs them: `rejects` fails the test if
# `check` accepts any of them. Each is a plausible mistake (its docstring says which).

# %%
from common import rejects


def head_1():
    """head 1 instead of head 2 (off-by-one index)"""
    hdn = layer_norm(inter["vit.encoder.layer.2"].astype(np.float64), Wt, "vit.encoder.layer.3.layernorm_before", eps)
    q, k = (linear(hdn, Wt, f"vit.encoder.layer.3.attention.attention.{n}")[:, :, D:2 * D] for n in ("query", "key"))
    return softmax(q @ k.transpose(0, 2, 1) / np.sqrt(D))


def no_scale():
    """scores not divided by √D"""
    hdn = layer_norm(inter["vit.encoder.layer.2"].astype(np.float64), Wt, "vit.encoder.layer.3.layernorm_before", eps)
    q, k = (linear(hdn, Wt, f"vit.encoder.layer.3.attention.attention.{n}")[:, :, 2 * D:3 * D]
            for n in ("query", "key"))
    return softmax(q @ k.transpose(0, 2, 1))


def layer_2_map():
    """refvit's recorded map of layer 2 (off-by-one layer)"""
    return out.attentions[2][:, 2]


for wrong in (head_1, no_scale, layer_2_map):
    assert rejects("exercise 1 (head 2, layer 3)", wrong)

# %%
def no_layernorms():
    """the two LayerNorms forgotten"""
    return 4 * (C * C + C) + (C * I + I) + (I * C + C)


def no_biases():
    """weights only, no biases"""
    return 2 * 2 * C + 4 * C * C + 2 * C * I


def one_layernorm():
    """one LayerNorm counted, not two"""
    return 2 * C + 4 * (C * C + C) + (C * I + I) + (I * C + C)


for wrong in (no_layernorms, no_biases, one_layernorm):
    assert rejects("exercise 2 (parameters per layer)", wrong)

# %%
def cls_logits():
    """the [CLS] logits: the unmodified model"""
    return linear(final[:, 0].astype(np.float64), Wt, "classifier")


def cls_in_mean():
    """[CLS] included in the mean"""
    return linear(final.mean(1).astype(np.float64), Wt, "classifier")


def before_layernorm():
    """the mean of the patch tokens before the final LayerNorm (same accuracy as the right answer, by chance)"""
    last = d.model(pixel_values, output_intermediates=True).intermediates[f"vit.encoder.layer.{L - 1}"]
    return linear(last[:, 1:].mean(1).astype(np.float64), Wt, "classifier")


def accuracy_only():
    """the accuracy (a float) instead of the logits"""
    return d.accuracy(linear(final[:, 1:].mean(1).astype(np.float64), Wt, "classifier"))


for wrong in (cls_logits, cls_in_mean, before_layernorm, accuracy_only):
    assert rejects("exercise 3 (mean-pooled logits)", wrong)

# %%
def unfixed():
    """the port as it is, nothing fixed"""
    return port.forward(x, Wt, cfg, fixes={})


def split_only():
    """the split fixed, its inverse left interleaved"""
    def split_heads(t, heads):
        B, N, C = t.shape
        return t.reshape(B, N, heads, C // heads).transpose(0, 2, 1, 3)
    return port.forward(x, Wt, cfg, fixes={"split_heads": split_heads})


def scale_changed():
    """the scale blamed instead: scores divided by √C, heads still interleaved"""
    def softmax_c(z):
        z = z * np.sqrt(D) / np.sqrt(C)
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    return port.forward(x, Wt, cfg, fixes={"softmax": softmax_c})


for wrong in (unfixed, split_only, scale_changed):
    assert rejects("exercise 4 (the port's bug, fixed)", wrong)
