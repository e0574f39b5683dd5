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


# %%
def exercise_4():
    """The port's depthwise_conv uses scipy.signal.fftconvolve: a true convolution, which flips the kernel in both
    axes. torch's Conv2d (like every deep-learning "convolution") is a cross-correlation: it does not flip. An
    impulse shows it: the port returns the filter rotated by 180°. Flip the filter back (or use §1's conv2d)."""
    def depthwise_conv(grid, weight, stride):
        return conv2d(grid, weight, None, stride, 1, groups=grid.shape[1])
    return {"depthwise_conv": depthwise_conv}


rec = {}
port.forward(x, Wt, cfg, rec)
print("the port first diverges at", first_divergence(rec, inter))
impulse = np.zeros((1, 1, 5, 5))
impulse[0, 0, 2, 2] = 1.0
w_demo = np.arange(9.0).reshape(1, 1, 3, 3)
print("port on an impulse:\n", port.depthwise_conv(impulse, w_demo, 1)[0, 0, 1:4, 1:4].round(6),
      "\nconv2d on an impulse:\n", conv2d(impulse, w_demo, None, 1, 1, groups=1)[0, 0, 1:4, 1:4])
assert check("exercise 4 (the port's bug, fixed)", lambda: port.forward(x, Wt, cfg, fixes=exercise_4()), out.logits)
