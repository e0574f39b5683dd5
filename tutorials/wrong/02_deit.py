# %% [markdown]
# # Recorded wrong answers to the exercises of 02_deit
#
# `tests/test_tutorials.py` appends these cells after the solutions and runs them: `rejects` fails the test if
# `check` accepts any of them. Each is a plausible mistake (its docstring says which).

# %%
from common import rejects


def token_0():
    """token 0 ([CLS]) into the distillation head"""
    return inter["deit.layernorm"][:, 0].astype(np.float64) @ Wt["distillation_classifier.weight"].T \
        + Wt["distillation_classifier.bias"]


def class_head():
    """the class head's logits"""
    return out["cls_logits"]


def before_final_layernorm():
    """token 1 of the last layer's output, without the final LayerNorm"""
    return inter[f"deit.encoder.layer.{L - 1}"][:, 1].astype(np.float64) @ Wt["distillation_classifier.weight"].T \
        + Wt["distillation_classifier.bias"]


for wrong in (token_0, class_head, before_final_layernorm):
    assert rejects("exercise 1 (distillation logits)", wrong)

# %%
def mean_of_logits():
    """transformers' rule: the softmax of the mean of the logits"""
    return softmax(heads["logits"].astype(np.float64))


def no_half():
    """the sum of the two softmax outputs, not their mean"""
    return softmax(heads["cls_logits"].astype(np.float64)) + softmax(heads["distillation_logits"].astype(np.float64))


def class_head_only():
    """the class head's probabilities alone"""
    return softmax(heads["cls_logits"].astype(np.float64))


def disagreements():
    """the old exercise's answer: on how many digits the two rules' classes differ (0)"""
    return 0


for wrong in (mean_of_logits, no_half, class_head_only, disagreements):
    assert rejects("exercise 2 (the paper's late fusion)", wrong)

# %%
def one_minus_cos(name):
    s = inter[name].astype(np.float64)
    return 1 - (s[:, 0] * s[:, 1]).sum(-1) / (np.linalg.norm(s[:, 0], axis=-1) * np.linalg.norm(s[:, 1], axis=-1))


def layer_3():
    """the state after layer 3 (off-by-one layer)"""
    return one_minus_cos("deit.encoder.layer.3")


def layer_1():
    """the state after layer 1 (off-by-one layer)"""
    return one_minus_cos("deit.encoder.layer.1")


def final_layernorm():
    """the final LayerNorm's output"""
    return one_minus_cos("deit.layernorm")


def cosine_itself():
    """the cosine, not 1 − cos"""
    return 1 - one_minus_cos("deit.encoder.layer.2")


def averaged():
    """averaged over the 8 digits (a float, not one value per digit)"""
    return float(one_minus_cos("deit.encoder.layer.2").mean())


for wrong in (layer_3, layer_1, final_layernorm, cosine_itself, averaged):
    assert rejects("exercise 3 (1 − cos after layer 2)", wrong)

# %%
def unfixed():
    """the port as it is, nothing fixed"""
    return port.forward(x, Wt, cfg, fixes={})[0]


def patches_transposed():
    """channel first, but each patch's rows and columns swapped"""
    def patchify(t, P):
        B, Cin, Hi, Wi = t.shape
        return t.reshape(B, Cin, Hi // P, P, Wi // P, P).transpose(0, 2, 4, 1, 5, 3).reshape(B, -1, Cin * P * P)
    return port.forward(x, Wt, cfg, fixes={"patchify": patchify})[0]


def column_major_patches():
    """patches flattened channel first but the patch grid read column by column"""
    def patchify(t, P):
        B, Cin, Hi, Wi = t.shape
        return t.reshape(B, Cin, Hi // P, P, Wi // P, P).transpose(0, 4, 2, 1, 3, 5).reshape(B, -1, Cin * P * P)
    return port.forward(x, Wt, cfg, fixes={"patchify": patchify})[0]


for wrong in (unfixed, patches_transposed, column_major_patches):
    assert rejects("exercise 4 (the port's bug, fixed)", wrong)
