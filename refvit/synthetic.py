"""Seeded, non-degenerate weights for any supported architecture, from NumPy alone.

Both `golden/generate.py` (which loads them into the transformers model) and the tests / `refvit verify` / bench
call `random_state_dict`, so real-size golden cases (DeiT-B …) need no committed weights: the seed rebuilds them.

Default initialisation hides bugs (near-uniform attention, LayerNorm = identity), so (docs/DESIGN.md §7, §9):
query/key weights get std 0.3/sqrt-scaled to make attention peaked; LayerNorm weights are 1 + noise and biases noise;
tokens and position embeddings are O(1).
"""

from __future__ import annotations

import numpy as np


NORM_WORDS = ("norm", "bn", "batch_norm", "layer_norm")  # LayerNorm / BatchNorm / GroupNorm parameters


def _std(name: str, shape: tuple) -> tuple[float, float]:
    """(mean, std) for one tensor, chosen by what the tensor is."""
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    module, _, leaf = name.rpartition(".")
    if leaf == "running_mean":
        return 0.0, 0.5
    if any(w in module.lower() for w in NORM_WORDS) and leaf in ("weight", "bias"):
        return (1.0, 0.2) if leaf == "weight" else (0.0, 0.2)
    if leaf == "bias":
        return 0.0, 0.1
    if name.endswith(("projection_query.weight", "projection_key.weight")):
        return 0.0, 2.5 / np.sqrt(fan_in)              # CvT scales q·k by embed_dim^-½, not head_dim^-½: stronger q, k
    if name.endswith(("query.weight", "key.weight")):
        return 0.0, 1.6 / np.sqrt(fan_in)              # peaked attention: q·k·D^-½ of std ~2.5 (default init: ~0.1)
    if leaf.startswith("lambda_"):
        return 0.5, 0.2                                # layer scale: far from its 0.1 init, not uniform
    if leaf == "relative_position_bias_table":
        return 0.0, 1.0                                # a bias that visibly reshapes attention
    if name.endswith(("cls_token", "distillation_token", "mask_token", "position_embeddings")):
        return 0.0, 0.5
    return 0.0, 1.0 / np.sqrt(fan_in)


def random_state_dict(shapes: dict[str, tuple], seed: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """{checkpoint name: array} for the given shapes; each tensor from its own stream so order does not matter.

    BatchNorm running variances are positive (0.5 + |N(0, 0.5)|); `num_batches_tracked` is an int64 count.
    """
    out = {}
    for name in sorted(shapes):
        stream = np.random.default_rng([seed, *name.encode()])
        if name.endswith("num_batches_tracked"):
            out[name] = np.full(shapes[name], 1000, dtype=np.int64)
        elif name.endswith("running_var"):
            out[name] = (0.5 + np.abs(0.5 * stream.standard_normal(shapes[name]))).astype(dtype)
        else:
            mean, std = _std(name, shapes[name])
            out[name] = (mean + std * stream.standard_normal(shapes[name])).astype(dtype)
    return out


def random_pixel_values(batch: int, channels: int, height: int, width: int, seed: int) -> np.ndarray:
    """Normalised-image-like inputs: N(0, 1) float32, (B, C, H, W)."""
    return np.random.default_rng(seed).standard_normal((batch, channels, height, width)).astype(np.float32)


def shapes_for(config: dict, architecture: str | None = None) -> dict[str, tuple]:
    """Checkpoint tensors of an architecture as transformers builds it by default, from a config dict."""
    from .model import choose_architecture

    arch = choose_architecture(config, architecture, "config")
    cfg = arch.parse_config(config, "config")
    groups = arch.optional_groups(cfg)
    return {**arch.shapes(cfg), **{k: v for i in arch.default_groups for k, v in groups[i].items()}}
