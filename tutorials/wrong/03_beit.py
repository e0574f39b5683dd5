# %% [markdown]
# # Recorded wrong answers to the exercises of 03_beit
#
# `tests/test_tutorials.py` appends these cells after the solutions and runs them: `rejects` fails the test if
# `check` accepts any of them. Each is a plausible mistake (its docstring says which).

# %%
from common import rejects


def layer_1_table():
    """layer 1's table (off-by-one layer)"""
    return bias_of(tables[1], relative_index(h, w))[None]


def key_minus_query():
    """the index built from key − query"""
    return bias_of(tables[2], relative_index(h, w, sign=-1))[None]


def layer_0_bias():
    """refvit's recorded bias of layer 0"""
    return inter["beit.encoder.layer.0.attention.attention.relative_position_bias"]


for wrong in (layer_1_table, key_minus_query, layer_0_bias):
    assert rejects("exercise 1 (layer 2 bias)", wrong)

# %%
def no_cls_rows():
    """T without the three [CLS] rows"""
    return (2 * 6 - 1) * (2 * 10 - 1), (2 - 5 + 5) * (2 * 10 - 1) + (7 - 1 + 9)


def swapped_offset():
    """offset key − query instead of query − key"""
    return (2 * 6 - 1) * (2 * 10 - 1) + 3, (5 - 2 + 5) * (2 * 10 - 1) + (1 - 7 + 9)


def width_major():
    """offsets read column-major (the width-first layout of the table resize)"""
    return (2 * 6 - 1) * (2 * 10 - 1) + 3, (7 - 1 + 9) * (2 * 6 - 1) + (2 - 5 + 5)


def old_pair():
    """the row of the old exercise's pair (0, 0) -> (5, 9): 0, the same in every layout"""
    return (2 * 6 - 1) * (2 * 10 - 1) + 3, 0


for wrong in (no_cls_rows, swapped_offset, width_major, old_pair):
    assert rejects("exercise 2 (table size and row)", wrong)

# %%
def cls_in_mean():
    """[CLS] included in the mean"""
    return layer_norm(inter["beit.encoder.layer.3"].astype(np.float64).mean(1), "beit.pooler.layernorm")


def no_layernorm():
    """the mean of the patch tokens without the pooler's LayerNorm"""
    return inter["beit.encoder.layer.3"].astype(np.float64)[:, 1:].mean(1)


def cls_token():
    """ViT's pooling: the [CLS] token through the LayerNorm"""
    return layer_norm(inter["beit.encoder.layer.3"].astype(np.float64)[:, 0], "beit.pooler.layernorm")


for wrong in (cls_in_mean, no_layernorm, cls_token):
    assert rejects("exercise 3 (mean pooling)", wrong)

# %%
def unfixed():
    """the port as it is, nothing fixed"""
    return port.forward(x, Wt, cfg, fixes={})


def no_layer_scale():
    """layer scale dropped (both branches unscaled)"""
    return port.forward(x, Wt, cfg, fixes={"layer_scales": lambda W, name: (1.0, 1.0)})


def bias_blamed():
    """the relative index blamed instead: rebuilt from key − query, λ still swapped"""
    return port.forward(x, Wt, cfg, fixes={"relative_index": lambda hh, ww: relative_index(hh, ww, sign=-1)})


for wrong in (unfixed, no_layer_scale, bias_blamed):
    assert rejects("exercise 4 (the port's bug, fixed)", wrong)
