# %% [markdown]
# # Recorded wrong answers to the exercises of 04_cvt
#
# `tests/test_tutorials.py` appends these cells after the solutions and runs them: `rejects` fails the test if
# `check` accepts any of them. Each is a plausible mistake (its docstring says which).

# %%
from common import rejects


def attention_map(head, scale):
    C, H = cfg["embed_dim"][1], cfg["num_heads"][1]
    D = C // H
    q = inter[f"{A1}.projection_query"].astype(np.float64)[:, :, head * D:(head + 1) * D]
    k = inter[f"{A1}.projection_key"].astype(np.float64)[:, :, head * D:(head + 1) * D]
    return softmax(q @ k.transpose(0, 2, 1) * scale)


def head_dim_scale():
    """ViT's scale D^-½ (head dim) instead of CvT's embed_dim^-½"""
    return attention_map(1, (cfg["embed_dim"][1] // cfg["num_heads"][1]) ** -0.5)


def head_0():
    """head 0 (off-by-one head)"""
    return attention_map(0, cfg["embed_dim"][1] ** -0.5)


def no_scale():
    """scores not scaled"""
    return attention_map(1, 1.0)


for wrong in (head_dim_scale, head_0, no_scale):
    assert rejects("exercise 1 (stage 1 attention)", wrong)

# %%
def queries():
    """the number of queries (the key/value stride ignored)"""
    n = conv_out(64, cfg["patch_sizes"][0], cfg["patch_stride"][0], cfg["patch_padding"][0])
    return n * n


def digits_input():
    """the keys of the digits' own 32×32 input"""
    n = conv_out(32, cfg["patch_sizes"][0], cfg["patch_stride"][0], cfg["patch_padding"][0])
    nk = conv_out(n, cfg["kernel_qkv"][0], cfg["stride_kv"][0], cfg["padding_kv"][0])
    return nk * nk


def side_only():
    """the side of the key grid, not the number of keys"""
    n = conv_out(64, cfg["patch_sizes"][0], cfg["patch_stride"][0], cfg["patch_padding"][0])
    return conv_out(n, cfg["kernel_qkv"][0], cfg["stride_kv"][0], cfg["padding_kv"][0])


for wrong in (queries, digits_input, side_only):
    assert rejects("exercise 2 (keys at 64²)", wrong)

# %%
def unstrided_keys():
    """N · N · C: keys as many as queries"""
    n, N, Nk, C, H = stage_table(cfg, 32)[2]
    return N * N * C


def per_head():
    """N · N_k · D: one head only"""
    n, N, Nk, C, H = stage_table(cfg, 32)[2]
    return N * Nk * (C // H)


def stage_1():
    """stage 1's numbers (off-by-one stage)"""
    n, N, Nk, C, H = stage_table(cfg, 32)[1]
    return N * Nk * C


for wrong in (unstrided_keys, per_head, stage_1):
    assert rejects("exercise 3 (q kᵀ MACs in stage 2)", wrong)

# %%
from scipy.signal import fftconvolve


def unfixed():
    """the port as it is, nothing fixed"""
    return port.forward(x, Wt, cfg, fixes={})


def transposed():
    """the kernel transposed (rows and columns swapped) instead of rotated by 180°"""
    def depthwise_conv(grid, weight, stride):
        y = fftconvolve(grid, weight[None, :, 0].transpose(0, 1, 3, 2), mode="same", axes=(2, 3))
        return y[:, :, ::stride, ::stride]
    return port.forward(x, Wt, cfg, fixes={"depthwise_conv": depthwise_conv})


def flipped_rows_only():
    """the kernel flipped upside down only, not left-right too"""
    def depthwise_conv(grid, weight, stride):
        return fftconvolve(grid, weight[None, :, 0, ::-1], mode="same", axes=(2, 3))[:, :, ::stride, ::stride]
    return port.forward(x, Wt, cfg, fixes={"depthwise_conv": depthwise_conv})


def batch_statistics():
    """the wrong helper 'fixed': BatchNorm with the batch's statistics instead of the running ones"""
    def batch_norm(y, W, name, eps=port.EPS):
        shape = (1, -1, 1, 1)
        mean, var = y.mean((0, 2, 3), keepdims=True), y.var((0, 2, 3), keepdims=True)
        return (y - mean) / np.sqrt(var + eps) * W[f"{name}.weight"].reshape(shape) + W[f"{name}.bias"].reshape(shape)
    return port.forward(x, Wt, cfg, fixes={"batch_norm": batch_norm})


for wrong in (unfixed, transposed, flipped_rows_only, batch_statistics):
    assert rejects("exercise 4 (the port's bug, fixed)", wrong)
