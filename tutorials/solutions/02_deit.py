# %% [markdown]
# # Solutions to the exercises of 02_deit

# %%
def exercise_1():
    """Token 1 of the final LayerNorm's output through distillation_classifier."""
    return inter["deit.layernorm"][:, 1].astype(np.float64) @ Wt["distillation_classifier.weight"].T \
        + Wt["distillation_classifier.bias"]


def exercise_2():
    paper = softmax(heads["cls_logits"].astype(np.float64)) + softmax(heads["distillation_logits"].astype(np.float64))
    return int(np.sum(paper.argmax(-1) != heads["logits"].argmax(-1)))


def exercise_3():
    s = inter["deit.encoder.layer.2"].astype(np.float64)
    return cosine(s[:, 0], s[:, 1])


assert check("exercise 1 (distillation logits)", exercise_1, out["distillation_logits"])
assert check("exercise 2 (softmax sum vs logit mean)", exercise_2,
             int(np.sum((softmax(heads["cls_logits"]) + softmax(heads["distillation_logits"])).argmax(-1)
                        != heads["logits"].argmax(-1))))
assert check("exercise 3 (cosine after layer 2)", exercise_3, stages[stage_names.index("layer 2")])

# %% [markdown]
# Exercise 3: after layer 2 the two states are already practically identical (cosine ≈ 0.9997), like the final ones,
# far from the raw tokens' cosine: with a teacher that agrees with the labels, nothing pushes them apart.
