# %% [markdown]
# # Solutions to the exercises of 04_cvt

# %%
def exercise_1():
    """Head 1 owns channels D..2D of q and k; CvT scales by embed_dim^-½ (48), not D^-½."""
    C, H = cfg["embed_dim"][1], cfg["num_heads"][1]
    D = C // H
    q = inter[f"{A1}.projection_query"].astype(np.float64)[:, :, D:2 * D]
    k = inter[f"{A1}.projection_key"].astype(np.float64)[:, :, D:2 * D]
    return softmax(q @ k.transpose(0, 2, 1) * C ** -0.5)


def exercise_2():
    n = conv_out(64, cfg["patch_sizes"][0], cfg["patch_stride"][0], cfg["patch_padding"][0])      # 32×32 grid
    nk = conv_out(n, cfg["kernel_qkv"][0], cfg["stride_kv"][0], cfg["padding_kv"][0])            # 16×16 keys
    return nk * nk


def exercise_3():
    n, N, Nk, C, H = stage_table(cfg, 32)[2]
    return N * Nk * C


assert check("exercise 1 (stage 1 attention)", exercise_1, inter[f"{A1}.dropout"][:, 1])
assert check("exercise 2 (keys at 64²)", exercise_2,
             big["cvt.encoder.stages.0.layers.0.attention.attention.projection_key"].shape[1])
assert check("exercise 3 (q kᵀ MACs in stage 2)", exercise_3,
             inter[f"{A2}.projection_query"].shape[1] * inter[f"{A2}.projection_key"].shape[1]
             * inter[f"{A2}.projection_key"].shape[2])
