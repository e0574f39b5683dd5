"""ViT and DeiT golden cases, and where their intermediates are recorded (used by golden/generate.py).

A family's case module provides:
    CASES                      name -> (architecture, config dict, call kwargs, input (B, H, W), storage)
    record_points(module_name) -> [("out" | "in", checkpoint-name path), ...] for a transformers module:
                               "out" records the module's output, "in" its first input (a pre-hook)
"""

from __future__ import annotations

import re

from refvit.parity.names import VIT_POINTS, VIT_WHOLE


def tiny(model_type: str, **overrides) -> dict:
    """A small config (C=32, 2 layers, 4 heads, 32×32 images of 8×8 patches) with non-default eps and labels."""
    cfg = {"model_type": model_type, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 64, "image_size": 32, "patch_size": 8, "num_channels": 3, "layer_norm_eps": 1e-6,
           "encoder_stride": 16, "id2label": {str(i): f"class_{i}" for i in range(5)}}
    cfg.update(overrides)
    return cfg


def real(model_type: str, hidden: int, heads: int) -> dict:
    """Real-size DeiT/ViT shapes (224², 16² patches, 12 layers, 1000 labels)."""
    return {"model_type": model_type, "hidden_size": hidden, "num_hidden_layers": 12, "num_attention_heads": heads,
            "intermediate_size": 4 * hidden, "image_size": 224, "patch_size": 16, "num_channels": 3,
            "layer_norm_eps": 1e-12, "id2label": {str(i): f"imagenet_{i}" for i in range(1000)}}


# name: (architecture, config, call kwargs, input (B, H, W), storage)
# storage: False = model.safetensors as save_pretrained writes it; True = real size, weights not committed;
# "bf16" = save_pretrained of the model cast to bfloat16 (the framework run loads it back as float32/float64);
# "bin" = torch.save(model.state_dict()) as pytorch_model.bin (transformers-5 module names inside).
CASES = {
    "vit_model": ("ViTModel", tiny("vit"), {}, (2, 32, 32), False),
    "vit_model_variant": ("ViTModel", tiny("vit", qkv_bias=False, hidden_act="gelu_new", pooler_output_size=24,
                                            pooler_act="relu", num_hidden_layers=3), {}, (2, 32, 32), False),
    "vit_classification": ("ViTForImageClassification", tiny("vit"), {}, (2, 32, 32), False),
    "vit_classification_interpolate": ("ViTForImageClassification", tiny("vit"), {"interpolate_pos_encoding": True},
                                       (2, 48, 40), False),
    "vit_classification_nonsquare": ("ViTForImageClassification", tiny("vit", image_size=[32, 48]), {}, (2, 32, 48), False),
    "vit_mim": ("ViTForMaskedImageModeling", tiny("vit", encoder_stride=8), {"bool_masked_pos": True}, (2, 32, 32), False),
    "deit_model": ("DeiTModel", tiny("deit"), {}, (2, 32, 32), False),
    "deit_classification": ("DeiTForImageClassification", tiny("deit"), {}, (2, 32, 32), False),
    "deit_teacher": ("DeiTForImageClassificationWithTeacher", tiny("deit"), {}, (3, 32, 32), False),
    "deit_teacher_interpolate": ("DeiTForImageClassificationWithTeacher", tiny("deit"),
                                 {"interpolate_pos_encoding": True}, (2, 40, 40), False),
    "deit_teacher_nonsquare": ("DeiTForImageClassificationWithTeacher", tiny("deit", image_size=[40, 24], patch_size=[8, 4]),
                               {}, (2, 40, 24), False),
    "deit_teacher_bf16": ("DeiTForImageClassificationWithTeacher", tiny("deit"), {}, (2, 32, 32), "bf16"),
    "deit_teacher_bin": ("DeiTForImageClassificationWithTeacher", tiny("deit"), {}, (2, 32, 32), "bin"),
    "deit_mim": ("DeiTForMaskedImageModeling", tiny("deit", encoder_stride=8), {"bool_masked_pos": True}, (2, 32, 32), False),
    "deit_tiny_teacher_224": ("DeiTForImageClassificationWithTeacher", real("deit", 192, 3), {}, (1, 224, 224), True),
    "deit_small_teacher_224": ("DeiTForImageClassificationWithTeacher", real("deit", 384, 6), {}, (1, 224, 224), True),
    "deit_base_teacher_224": ("DeiTForImageClassificationWithTeacher", real("deit", 768, 12), {}, (1, 224, 224), True),
}


def classic_name(module_name: str) -> str:
    """transformers-5 module path -> checkpoint-name path (`deit.layers.3` -> `deit.encoder.layer.3`)."""
    return re.sub(r"(^|\.)layers\.(\d+)", r"\1encoder.layer.\2", module_name)


# transformers-5 module suffix -> (kind, classic suffix) recorded for it, and the modules recorded whole: the
# same tables refvit.parity.capture_transformers uses (one copy, refvit/parity/names.py)
POINTS, WHOLE = VIT_POINTS, VIT_WHOLE


def record_points(module_name: str) -> list[tuple[str, str]]:
    n = classic_name(module_name)
    for suffix, points in POINTS:
        if n.endswith(suffix):
            return [(kind, n[: -len(suffix)] + classic) for kind, classic in points]
    if re.search(r"encoder\.layer\.\d+$", n):
        return [("out", n), ("out", n + ".output")]  # classic ViTOutput adds the residual: its output is the layer's
    if WHOLE.search(module_name):
        return [("out", n)]
    return []
