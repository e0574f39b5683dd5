# %% [markdown]
# # Solutions to the exercises of 05_bit

# %%
def exercise_1():
    name = "bit.encoder.stages.1.layers.0"
    return conv2d(inter[f"{name}.norm2"].astype(np.float64), standardize(Wt[f"{name}.conv2.weight"]), 2, pad=1)


def exercise_2():
    return group_norm_relu(inter["bit.encoder.stages.1"].astype(np.float64), "bit.norm")


def exercise_3():
    """Run forward with each edited checkpoint (forward reads the global Wt: swap it in, restore it)."""
    global Wt
    original = Wt
    conv = lambda t: t.ndim == 4
    edits = {"a": lambda n, t: t * 10 if conv(t) else t,
             "b": lambda n, t: t + 0.5 if conv(t) else t,
             "c": lambda n, t: -t if conv(t) else t,
             "d": lambda n, t: t * 10 if n == "classifier.1.weight" else t,
             "e": lambda n, t: t * np.random.default_rng(0).uniform(1, 10, (t.shape[0], 1, 1, 1)) if conv(t) else t}
    same = set()
    try:
        for letter, edit in edits.items():
            Wt = {n: edit(n, t) for n, t in original.items()}
            if close(forward(x), out.logits):
                same.add(letter)
    finally:
        Wt = original
    return same


assert check("exercise 1 (stage 1 conv2)", exercise_1, inter["bit.encoder.stages.1.layers.0.conv2"])
assert check("exercise 2 (final GroupNorm)", exercise_2, inter["bit.norm"])
assert check("exercise 3 (what standardisation ignores)", exercise_3, {"a", "b", "e"})

# %% [markdown]
# Exercise 3: standardisation divides out each filter's own scale (a, e: any positive factor per filter, up to the
# tiny ε) and subtracts its mean (b: a constant added to every weight). A sign flip (c) survives it: the stem's
# output changes sign, and the max-pool and ReLUs after it are not odd functions. The classifier (d) is a plain
# Linear, not standardised.


# %%
def exercise_4():
    """The port's group_norm reshapes to (B, C/G, G, h·w) and normalises over axes 1 and 3: its "group" g holds the
    channels g, g + G, g + 2G, ... (interleaved). GroupNorm's groups are consecutive channels: (B, G, C/G · h·w)."""
    def group_norm(x, weight, bias, groups, eps=GN_EPS):
        g = x.reshape(x.shape[0], groups, -1)
        y = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(x.shape)
        return y * weight[:, None, None] + bias[:, None, None]
    return {"group_norm": group_norm}


rec = {}
port.forward(x, Wt, cfg, rec)
print("the port first diverges at", first_divergence(rec, inter))
assert check("exercise 4 (the port's bug, fixed)", lambda: port.forward(x, Wt, cfg, fixes=exercise_4()), out.logits)
