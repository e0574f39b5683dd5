# %% [markdown]
# # Solutions to the exercises of 01_vit
#
# `tests/test_tutorials.py` appends these cells to the notebook and runs it: each `check()` must pass.

# %%
def exercise_1():
    """Head 2 of layer 3: LayerNorm of layer 2's output, q and k of head 2, softmax(q kᵀ / √D)."""
    name = "vit.encoder.layer.3"
    hdn = layer_norm(inter["vit.encoder.layer.2"].astype(np.float64), Wt, f"{name}.layernorm_before", eps)
    q, k = (linear(hdn, Wt, f"{name}.attention.attention.{n}")[:, :, 2 * D:3 * D] for n in ("query", "key"))
    return softmax(q @ k.transpose(0, 2, 1) / np.sqrt(D))


def exercise_2():
    """LayerNorms 2·2C; q, k, v, output: 4·(C² + C); MLP: C·I + I + I·C + C."""
    return 2 * 2 * C + 4 * (C * C + C) + (C * I + I) + (I * C + C)


def exercise_3():
    """Mean of the final patch tokens (after the final LayerNorm) into the [CLS]-trained classifier."""
    hidden = embed(pixel_values.astype(np.float64), Wt)
    for i in range(L):
        hidden, _ = vit_layer(hidden, Wt, f"vit.encoder.layer.{i}", {})
    hidden = layer_norm(hidden, Wt, "vit.layernorm", eps)
    return linear(hidden[:, 1:].mean(1), Wt, "classifier")


assert check("exercise 1 (head 2, layer 3)", exercise_1, out.attentions[3][:, 2])
assert check("exercise 2 (parameters per layer)", exercise_2, layer_params)
assert check("exercise 3 (mean-pooled logits)", exercise_3,
             linear(final[:, 1:].mean(1).astype(np.float64), Wt, "classifier"))
print(f"mean-pooled accuracy {d.accuracy(exercise_3()):.2%} vs [CLS] {correct:.2%}")

# %% [markdown]
# Exercise 3, why: the classifier was trained on the final `[CLS]` state only. The patch tokens went through the same
# layers but were never asked to carry the class in the directions the classifier reads, so their mean is a different
# vector; BEiT's classifier is trained on the mean (after its own LayerNorm), which is why pooling works there.


# %%
def exercise_4():
    """The port splits (B, N, C) as (B, N, D, H): head h gets channels h, h + H, h + 2H, ... (interleaved), and
    merges back the same way, so the two helpers are consistent with each other and wrong together. Head h owns the
    consecutive channels h·D … (h+1)·D: reshape to (B, N, H, D)."""
    def split_heads(t, heads):
        B, N, C = t.shape
        return t.reshape(B, N, heads, C // heads).transpose(0, 2, 1, 3)

    def merge_heads(t):
        B, H, N, D = t.shape
        return t.transpose(0, 2, 1, 3).reshape(B, N, H * D)
    return {"split_heads": split_heads, "merge_heads": merge_heads}


rec = {}
port.forward(x, Wt, cfg, rec)
print("the port first diverges at", first_divergence(rec, inter))
assert check("exercise 4 (the port's bug, fixed)", lambda: port.forward(x, Wt, cfg, fixes=exercise_4()), out.logits)
