# %% [markdown]
# # Recorded wrong answers to the exercises of 05_bit
#
# `tests/test_tutorials.py` appends these cells after the solutions and runs them: `rejects` fails the test if
# `check` accepts any of them. Each is a plausible mistake (its docstring says which).

# %%
from common import rejects

NORM2 = "bit.encoder.stages.1.layers.0"


def raw_weights():
    """the raw checkpoint weight, not standardised"""
    return conv2d(inter[f"{NORM2}.norm2"].astype(np.float64), Wt[f"{NORM2}.conv2.weight"].astype(np.float64), 2, pad=1)


def stride_1():
    """stride 1 instead of 2"""
    return conv2d(inter[f"{NORM2}.norm2"].astype(np.float64), standardize(Wt[f"{NORM2}.conv2.weight"]), 1, pad=1)


def unbiased():
    """standardised with the unbiased variance"""
    W = Wt[f"{NORM2}.conv2.weight"].astype(np.float64)
    flat = W.reshape(W.shape[0], -1)
    W_hat = ((flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True, ddof=1) + WS_EPS)).reshape(W.shape)
    return conv2d(inter[f"{NORM2}.norm2"].astype(np.float64), W_hat, 2, pad=1)


for wrong in (raw_weights, stride_1, unbiased):
    assert rejects("exercise 1 (stage 1 conv2)", wrong)

# %%
def no_relu():
    """GroupNorm without the ReLU"""
    return group_norm_relu(inter["bit.encoder.stages.1"].astype(np.float64), "bit.norm", relu=False)


def stage_0():
    """from stage 0's output (off-by-one stage)"""
    return inter["bit.encoder.stages.0"].astype(np.float64)


def one_group():
    """one group over all channels (LayerNorm-like statistics)"""
    t = inter["bit.encoder.stages.1"].astype(np.float64)
    flat = t.reshape(t.shape[0], -1)
    y = ((flat - flat.mean(-1, keepdims=True)) / np.sqrt(flat.var(-1, keepdims=True) + GN_EPS)).reshape(t.shape)
    return np.maximum(y * Wt["bit.norm.weight"][:, None, None] + Wt["bit.norm.bias"][:, None, None], 0)


for wrong in (no_relu, stage_0, one_group):
    assert rejects("exercise 2 (final GroupNorm)", wrong)

# %%
def unscaled_logits():
    """the old exercise's trivial answer: the unmodified model's logits"""
    return forward(x)


def scale_only():
    """only the uniform scaling survives"""
    return {"a"}


def sign_too():
    """a sign flip taken for a scale"""
    return {"a", "b", "c", "e"}


def nothing():
    """nothing is ignored"""
    return set()


for wrong in (unscaled_logits, scale_only, sign_too, nothing):
    assert rejects("exercise 3 (what standardisation ignores)", wrong)

# %%
def unfixed():
    """the port as it is, nothing fixed"""
    return port.forward(x, Wt, cfg, fixes={})


def no_affine():
    """consecutive groups, but the per-channel scale and shift dropped"""
    def group_norm(t, weight, bias, groups, eps=GN_EPS):
        g = t.reshape(t.shape[0], groups, -1)
        return ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(t.shape)
    return port.forward(x, Wt, cfg, fixes={"group_norm": group_norm})


def one_group():
    """all channels normalised together (groups ignored)"""
    def group_norm(t, weight, bias, groups, eps=GN_EPS):
        g = t.reshape(t.shape[0], 1, -1)
        y = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(t.shape)
        return y * weight[:, None, None] + bias[:, None, None]
    return port.forward(x, Wt, cfg, fixes={"group_norm": group_norm})


for wrong in (unfixed, no_affine, one_group):
    assert rejects("exercise 4 (the port's bug, fixed)", wrong)
