# %% [markdown]
# # Solutions to the exercises of 02_deit

# %%
def exercise_1():
    """Token 1 of the final LayerNorm's output through distillation_classifier."""
    return inter["deit.layernorm"][:, 1].astype(np.float64) @ Wt["distillation_classifier.weight"].T \
        + Wt["distillation_classifier.bias"]


def exercise_2():
    """The paper's rule: the mean of the two heads' softmax outputs (not the softmax of the mean of the logits)."""
    return (softmax(heads["cls_logits"].astype(np.float64)) + softmax(heads["distillation_logits"].astype(np.float64))) / 2


def exercise_3():
    s = inter["deit.encoder.layer.2"].astype(np.float64)
    a, b = s[:, 0], s[:, 1]
    return 1 - (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


assert check("exercise 1 (distillation logits)", exercise_1, out["distillation_logits"])
assert check("exercise 2 (the paper's late fusion)", exercise_2,
             (softmax(heads["cls_logits"].astype(np.float64))
              + softmax(heads["distillation_logits"].astype(np.float64))) / 2)
fused, mean_rule = exercise_2(), softmax(heads["logits"].astype(np.float64))
print(f"paper's rule vs softmax of the mean logits: largest probability difference {np.abs(fused - mean_rule).max():.1e}, "
      f"different class on {int(np.sum(fused.argmax(-1) != mean_rule.argmax(-1)))} of 360 digits")
state = inter["deit.encoder.layer.2"].astype(np.float64)
assert check("exercise 3 (1 − cos after layer 2)", exercise_3,
             1 - (state[:, 0] * state[:, 1]).sum(-1) / np.linalg.norm(state[:, 0], axis=-1)
             / np.linalg.norm(state[:, 1], axis=-1), rtol=1e-2)
print("1 − cos per stage:", {n: f"{1 - s:.1e}" for n, s in zip(stage_names, stages)})

# %% [markdown]
# Exercise 2: the two rules give probabilities that differ by up to ~2e-3 here, yet never a different class: the
# heads agree on all but one digit. Exercise 3: after layer 2 the two states are already practically identical
# (1 − cos ≈ 3e-4), like the final ones and far from the raw tokens: with a teacher that agrees with the labels,
# nothing pushes them apart.


# %%
def exercise_4():
    """The port flattens each patch pixel by pixel, (P, P, 3): the projection weight (C, 3, P, P) flattens channel
    first, (3, P, P), as Conv2d's weight does. Transpose to (B, h, w, 3, P, P) before flattening."""
    def patchify(t, P):
        B, Cin, Hi, Wi = t.shape
        return t.reshape(B, Cin, Hi // P, P, Wi // P, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, -1, Cin * P * P)
    return {"patchify": patchify}


rec = {}
port.forward(x, Wt, cfg, rec)
print("the port first diverges at", first_divergence(rec, inter))
assert check("exercise 4 (the port's bug, fixed)", lambda: port.forward(x, Wt, cfg, fixes=exercise_4())[0],
             out["logits"])
