"""Random weights for `XModel(config, seed=…)`, drawn the way each family's transformers `_init_weights` draws them
(transformers 5.23: `PreTrainedModel._init_weights` in modeling_utils.py, then the family's override).

torch's random stream cannot be reproduced, so the values come from a seeded NumPy generator: the same seed gives
the same weights, and each tensor has the distribution transformers gives it (tests/test_init_save.py compares the
statistics). Which rule a tensor gets is decided from its checkpoint name and shape, in `rule` below:

    every family   norm weight (1-D `.weight`: LayerNorm, BatchNorm, GroupNorm) ones, its bias zeros;
                   BatchNorm running_mean zeros, running_var ones, num_batches_tracked 0
    ViT            Linear/Conv weights normal(0, initializer_range), biases zeros; cls_token and
                   position_embeddings truncated normal(0, initializer_range, [-2, 2]); mask_token zeros
    DeiT           as ViT, but every token and the position embeddings zeros (DeiTPreTrainedModel zeroes them
                   after the ViT-style draw: the second `if` wins)
    BEiT/data2vec  Linear/Conv/ConvTranspose weights normal(0, initializer_range), biases zeros; tokens and position
                   embeddings zeros; relative position tables zeros; lambda_1/lambda_2 layer_scale_init_value
    CvT            Linear/Conv weights truncated normal(0, initializer_range, [-2, 2]), biases zeros; cls_token
                   truncated normal
    BiT            Conv weights kaiming normal (fan_out, relu: std sqrt(2 / (C_out·kh·kw))); the classifier's
                   Linear as torch's reset_parameters: weight and bias uniform(±1/sqrt(fan_in))

Quirk kept: the base `_init_weights` draws Linear/Conv weights with `initializer_range or 0.02` (0 means 0.02) while
the families' own truncated normals use `initializer_range` as it is.
"""

from __future__ import annotations

import math

import numpy as np

TRUNC_LOW, TRUNC_HIGH = -2.0, 2.0   # torch.nn.init.trunc_normal_(a=-2, b=2): absolute bounds, not in units of std


def trunc_normal(rng, shape, std: float) -> np.ndarray:
    """normal(0, std) redrawn where it falls outside [-2, 2] (torch's result has this distribution)."""
    x = rng.standard_normal(shape) * std
    bad = (x < TRUNC_LOW) | (x > TRUNC_HIGH)
    while bad.any():
        x[bad] = rng.standard_normal(int(bad.sum())) * std
        bad = (x < TRUNC_LOW) | (x > TRUNC_HIGH)
    return x


def rule(family: str, name: str, shapes: dict, cfg) -> tuple:
    """(kind, argument) for tensor `name` of {name: shape}: ("zeros",), ("ones",), ("constant", v),
    ("normal", std), ("trunc_normal", std), ("uniform", bound)."""
    shape = tuple(shapes[name])
    leaf = name.rsplit(".", 1)[-1]
    module = name[: -len(leaf) - 1] if "." in name else ""
    std = getattr(cfg, "initializer_range", 0.02)
    if leaf in ("num_batches_tracked", "running_mean"):
        return ("zeros",)
    if leaf == "running_var":
        return ("ones",)
    if leaf == "weight" and len(shape) == 1:                            # LayerNorm / BatchNorm / GroupNorm
        return ("ones",)
    weight_shape = tuple(shapes.get(f"{module}.weight", ()))            # a bias's own module's weight
    if leaf == "bias" and len(weight_shape) == 1:                       # the norm's bias
        return ("zeros",)
    if family == "bit":
        if leaf == "weight" and len(shape) == 4:                        # kaiming_normal_(fan_out, relu)
            return ("normal", math.sqrt(2.0) / math.sqrt(shape[0] * shape[2] * shape[3]))
        fan_in = weight_shape[1] if leaf == "bias" else shape[1]       # nn.Linear.reset_parameters
        return ("uniform", 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0)
    if family == "cvt":
        if leaf in ("weight", "cls_token"):
            return ("trunc_normal", std)
        return ("zeros",)
    if leaf in ("cls_token", "position_embeddings") and family == "vit":
        return ("trunc_normal", std)
    if leaf in ("cls_token", "position_embeddings", "distillation_token", "mask_token", "relative_position_bias_table"):
        return ("zeros",)
    if leaf in ("lambda_1", "lambda_2"):
        return ("constant", cfg.layer_scale_init_value)
    if leaf == "weight":
        return ("normal", std or 0.02)
    return ("zeros",)                                                   # Linear / Conv biases


def draw(kind: tuple, shape: tuple, rng) -> np.ndarray:
    if kind[0] == "zeros":
        return np.zeros(shape)
    if kind[0] == "ones":
        return np.ones(shape)
    if kind[0] == "constant":
        return np.full(shape, kind[1])
    if kind[0] == "normal":
        return rng.standard_normal(shape) * kind[1]
    if kind[0] == "trunc_normal":
        return trunc_normal(rng, shape, kind[1])
    if kind[0] == "uniform":
        return rng.uniform(-kind[1], kind[1], shape)
    raise ValueError(kind)


def random_state_dict(arch, cfg, seed=None) -> dict[str, np.ndarray]:
    """{checkpoint name: float32 array} of transformers' `arch.name(cfg)`, in its state_dict order of names as
    refvit lists them (num_batches_tracked: int64, as torch stores it)."""
    shapes = dict(arch.shapes(cfg))
    groups = arch.optional_groups(cfg)
    for i in arch.default_groups:       # what transformers' class builds by default (ViTModel's pooler, …)
        shapes.update(groups[i])
    rng = np.random.default_rng(seed)
    out = {}
    family = {"deit": "deit", "vit": "vit", "cvt": "cvt", "bit": "bit"}.get(arch.family, "beit")
    for name, shape in shapes.items():
        value = draw(rule(family, name, shapes, cfg), tuple(shape), rng)
        out[name] = value.astype(np.int64 if name.endswith("num_batches_tracked") else np.float32)
    return out
