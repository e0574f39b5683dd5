# %% [markdown]
# # Solutions to the exercises of 03_beit

# %%
def exercise_1():
    return bias_of(tables[2], relative_index(h, w))[None]


def exercise_2():
    """T = (2·6−1)(2·10−1) + 3; offset (query − key) = (2 − 5, 7 − 1) = (−3, 6), shifted by (5, 9): (2, 15), read
    row-major over (2·6−1) × (2·10−1): 2·19 + 15 = 53."""
    hh, ww = 6, 10
    T = (2 * hh - 1) * (2 * ww - 1) + 3
    dr, dc = 2 - 5, 7 - 1
    return T, (dr + hh - 1) * (2 * ww - 1) + (dc + ww - 1)


def exercise_3():
    last = inter["beit.encoder.layer.3"].astype(np.float64)
    return layer_norm(last[:, 1:].mean(1), "beit.pooler.layernorm")


assert check("exercise 1 (layer 2 bias)", exercise_1,
             inter["beit.encoder.layer.2.attention.attention.relative_position_bias"])
assert check("exercise 2 (table size and row)", exercise_2,
             (int(ref_index.max()) + 1, int(ref_index[token(2, 7), token(5, 1)])))
assert check("exercise 3 (mean pooling)", exercise_3, inter["beit.pooler"])


# %%
def exercise_4():
    """The port's layer_scales returns (lambda_2, lambda_1): each branch scaled by the other's λ. BeitLayer scales
    the attention branch by lambda_1 and the MLP branch by lambda_2."""
    return {"layer_scales": lambda W, name: (W[f"{name}.lambda_1"], W[f"{name}.lambda_2"])}


rec = {}
port.forward(x, Wt, cfg, rec)
print("the port first diverges at", first_divergence(rec, inter))
assert check("exercise 4 (the port's bug, fixed)", lambda: port.forward(x, Wt, cfg, fixes=exercise_4()), out.logits)
