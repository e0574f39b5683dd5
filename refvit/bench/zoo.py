"""The benchmark models (the real models' shapes, seeded weights) and their FLOPs, counted on the model itself."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .. import kernels, synthetic
from ..model import from_state_dict

LABELS = {str(i): f"class_{i}" for i in range(1000)}


def _vit(model_type, arch, hidden, heads, **extra):
    return arch, 224, {"model_type": model_type, "hidden_size": hidden, "num_hidden_layers": 12,
                       "num_attention_heads": heads, "intermediate_size": 4 * hidden, "image_size": 224,
                       "patch_size": 16, "layer_norm_eps": 1e-12, **extra}


def _cvt(depth):
    return "CvtForImageClassification", 224, {
        "model_type": "cvt", "embed_dim": [64, 192, 384], "depth": depth, "num_heads": [1, 3, 6],
        "cls_token": [False, False, True], "patch_sizes": [7, 3, 3], "patch_stride": [4, 2, 2],
        "patch_padding": [2, 1, 1]}


# name: (architecture, input side, config) — the real models' shapes, 1000 labels, weights from a seed
MODELS = {
    "deit-tiny": _vit("deit", "DeiTForImageClassificationWithTeacher", 192, 3),
    "deit-small": _vit("deit", "DeiTForImageClassificationWithTeacher", 384, 6),
    "deit-base": _vit("deit", "DeiTForImageClassificationWithTeacher", 768, 12),
    "vit-base": _vit("vit", "ViTForImageClassification", 768, 12),
    "beit-base": _vit("beit", "BeitForImageClassification", 768, 12, use_relative_position_bias=True,
                      use_mean_pooling=True, layer_scale_init_value=0.1),
    "cvt-13": _cvt([1, 2, 10]),
    "cvt-21": _cvt([1, 4, 16]),
    "bit-50": ("BitForImageClassification", 448, {
        "model_type": "bit", "layer_type": "preactivation", "global_padding": "SAME",
        "embedding_dynamic_padding": True, "depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048]}),
}
FLOOR_TARGET_MODELS = ("deit-base", "vit-base", "beit-base")   # the floor target: ≥ 75% at batch 8


def model_config(name: str) -> tuple[str, dict, int]:
    """(architecture, config dict as config.json holds it, input side) of a benchmark model."""
    arch, side, config = MODELS[name]
    return arch, {**config, "id2label": LABELS, "architectures": [arch]}, side


def model_config(name: str) -> tuple[str, dict, int]:
    """(architecture, config dict as config.json holds it, input side) of a benchmark model."""
    arch, side, config = MODELS[name]
    return arch, {**config, "id2label": LABELS, "architectures": [arch]}, side


def write_model(directory: Path, name: str) -> tuple[str, dict, int]:
    """The seeded real-shape model as save_pretrained writes it (config.json + model.safetensors), once per model
    for every implementation. Returns (architecture, config, side)."""
    from ..checkpoint import write_safetensors

    arch, config, side = model_config(name)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    write_safetensors(directory / "model.safetensors", synthetic.random_state_dict(synthetic.shapes_for(config, arch),
                                                                                   seed=0), {"format": "pt"})
    return arch, config, side


# ----------------------------------------------------------------------------------------------------------------------
# FLOPs: 2 × the multiply-accumulates of every matrix product and convolution the forward runs — patch/stem
# embeddings, q/k/v/output projections, attention's Q·Kᵀ and A·V, MLPs, CvT's depthwise projections, BiT's
# convolutions, heads. Not counted: norms, softmax, activations, bias/residual adds, pooling, the relative position
# bias gather and load-time work (BiT's weight standardisation). torch.utils.flop_counter counts the same.
# They are counted on the model itself: one forward of one image on the NumPy kernels, each GEMM-like kernel call
# adding what its arguments' shapes imply, so no family's shapes are written down twice.


def _macs(name: str, args: tuple, out) -> int:
    """Multiply-accumulates of one kernel call, from its arguments and result (0 for kernels that do no GEMM)."""
    if name == "linear":                                    # x (..., in) @ weight (out, in)ᵀ
        return args[0].size * args[1].shape[0]
    if name in ("conv2d", "conv_transpose2d"):  # weight (Cout, Cin/groups, kh, kw): per output element Cin/groups·kh·kw
        _, c, kh, kw = args[1].shape             # transposed (Cin, Cout, kh, kw): per input element Cout·kh·kw
        return (out.size if name == "conv2d" else args[0].size) * c * kh * kw
    if name == "depthwise_conv_tokens":                     # (B, ho·wo, C) tokens, each C · kh · kw
        weight = args[3]
        return out[0].size * weight.shape[2] * weight.shape[3]
    if name == "attention":                                 # Q·Kᵀ and A·V: 2 · B · Nq · Nk · C
        q, k = args[0], args[1]
        return 2 * q.shape[0] * q.shape[1] * k.shape[1] * q.shape[2]
    return 0


def count_flops(config: dict, architecture: str, side: int) -> int:
    """FLOPs of one image's forward at `side`×`side` (2 × multiply-accumulates; see the comment above), any class."""
    tensors = {k: np.zeros(shape, np.float32) for k, shape in synthetic.shapes_for(config, architecture).items()}
    model = from_state_dict(config, tensors, architecture, "float32", "numpy")
    numpy_kernels, total = kernels.get("numpy"), [0]

    def counted(name, fn):
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            total[0] += _macs(name, args, out)
            return out
        return call

    model.kernels = SimpleNamespace(**{k: counted(k, v) if callable(v) else v for k, v in vars(numpy_kernels).items()})
    model(np.zeros((1, model.config.num_channels, side, side), np.float32))
    return 2 * total[0]
