# %% [markdown]
# # Solutions to the exercises of 05_bit

# %%
def exercise_1():
    name = "bit.encoder.stages.1.layers.0"
    return conv2d(inter[f"{name}.norm2"].astype(np.float64), standardize(Wt[f"{name}.conv2.weight"]), 2, pad=1)


def exercise_2():
    return group_norm_relu(inter["bit.encoder.stages.1"].astype(np.float64), "bit.norm")


def exercise_3():
    """forward reads the global Wt: swap in the scaled weights, run, restore."""
    global Wt
    original = Wt
    Wt = {n: t * 10 if t.ndim == 4 else t for n, t in original.items()}        # every conv weight (4-D) × 10
    try:
        return forward(x)
    finally:
        Wt = original


assert check("exercise 1 (stage 1 conv2)", exercise_1, inter["bit.encoder.stages.1.layers.0.conv2"])
assert check("exercise 2 (final GroupNorm)", exercise_2, inter["bit.norm"])
assert check("exercise 3 (scale invariance)", exercise_3, out.logits)
