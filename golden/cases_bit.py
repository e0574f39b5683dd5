"""BiT golden cases, and where their intermediates are recorded (used by golden/generate.py; see cases_vit.py).

transformers 5 keeps BiT's module names equal to its checkpoint names, so the recorded paths are the module paths
(`bit.encoder.stages.1.layers.0.conv2`). BiT returns no attention maps (no attention entropy in meta.json).

What transformers cannot run, so no golden exists (tests/test_bit.py covers refvit's behaviour instead):
- `width_factor != 1` with `layer_type="preactivation"` (every class) or in `BitForImageClassification`: the final
  norm / classifier are built for hidden_sizes[-1] channels, the last stage outputs make_div(hidden_sizes[-1] · wf).
  BitModel/BitBackbone with `layer_type="bottleneck"` do run: `bit_model_width2` is their golden.
- `global_padding="VALID"`: the unpadded 3×3 convolutions shrink every residual branch below its shortcut.
"""

from __future__ import annotations

import re


def tiny(**overrides) -> dict:
    """A small three-stage BiT (stem 16, stages 16/32/64 with 1/2/1 layers, 4 groups) with 5 labels."""
    cfg = {"model_type": "bit", "num_channels": 3, "embedding_size": 16, "hidden_sizes": [16, 32, 64],
           "depths": [1, 2, 1], "num_groups": 4, "id2label": {str(i): f"class_{i}" for i in range(5)}}
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if v is not None}  # None: leave the key out (transformers' default)


FOUR_STAGES = {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 2, 1, 1]}
# google/bit-50: ResNet-v2-50 (3/4/6/3 layers), 32 groups, TF "SAME" padding with the dynamic stem pool, 1000 labels
BIT_50 = {"model_type": "bit", "num_channels": 3, "embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048],
          "depths": [3, 4, 6, 3], "layer_type": "preactivation", "global_padding": "same",
          "embedding_dynamic_padding": True, "num_groups": 32, "id2label": {str(i): f"imagenet_{i}" for i in range(1000)}}
# the hybrid-ViT backbone style: bottleneck layers, SAME padding, dynamic stem pool
HYBRID = {"layer_type": "bottleneck", "global_padding": "same", "embedding_dynamic_padding": True}

# name: (architecture, config, call kwargs, input (B, H, W), storage) — storage as in cases_vit.py
CASES = {
    # BiT as published: preactivation, SAME padding (dynamic for strided convs), dynamic zero-padded stem pool;
    # odd, non-square input so every dynamic pad is asymmetric
    "bit_preact_same": ("BitForImageClassification", tiny(global_padding="same", embedding_dynamic_padding=True), {},
                        (2, 45, 37), False),
    # preactivation with torch-style padding and the stem's zero ring + plain pool; the base model
    "bit_preact_model": ("BitModel", tiny(num_groups=2), {}, (2, 32, 32), False),
    # post-activation bottleneck, no global padding (ConstantPad2d(1) + GroupNorm in the stem), non-square input
    "bit_bottleneck": ("BitForImageClassification", tiny(layer_type="bottleneck", num_groups=8), {}, (2, 40, 24), False),
    # the same checkpoint written by torch.save(model.state_dict())
    "bit_bottleneck_bin": ("BitForImageClassification", tiny(layer_type="bottleneck"), {}, (1, 32, 32), "bin"),
    # backbone with two out features (the stem and the last stage), hybrid-ViT style layers
    "bit_backbone": ("BitBackbone", tiny(**HYBRID, **FOUR_STAGES, out_features=["stem", "stage4"]), {},
                     (2, 48, 40), False),
    # backbone selecting by (negative) out_indices, preactivation
    "bit_backbone_indices": ("BitBackbone", tiny(out_indices=[1, -1], global_padding="same"), {}, (1, 36, 36), False),
    # output_stride=16: the last stage dilates (2) instead of striding; bottleneck conv2 takes the dilation
    "bit_output_stride16": ("BitModel", tiny(**HYBRID, **{**FOUR_STAGES, "depths": [1, 1, 1, 2]}, output_stride=16),
                            {}, (1, 40, 40), False),
    # output_stride=8: stage 3 dilation 2, stage 4 dilation 4 with first_dilation 2; torch-style padding
    "bit_output_stride8": ("BitModel", tiny(**{**FOUR_STAGES, "depths": [1, 1, 2, 2]}, layer_type="bottleneck",
                                            output_stride=8), {}, (1, 32, 48), False),
    # preactivation ignores the dilation (quirk): output_stride only removes strides
    "bit_preact_output_stride8": ("BitForImageClassification", tiny(**FOUR_STAGES, output_stride=8), {}, (1, 32, 32),
                                  False),
    # width_factor=2 where transformers runs it (bottleneck BitModel), GELU activations, no classifier labels
    "bit_model_width2": ("BitModel", tiny(layer_type="bottleneck", width_factor=2, hidden_act="gelu"), {}, (1, 32, 32),
                         False),
    # num_labels = 0: the classifier is an identity (logits = pooled features); 1 group (LayerNorm-like GroupNorm)
    "bit_no_labels": ("BitForImageClassification", tiny(id2label=None, num_labels=0, num_groups=1), {}, (1, 32, 32),
                      False),
    # real-size BiT-50 (google/bit-50 shape) at 448×448, seeded weights
    "bit_50_448": ("BitForImageClassification", BIT_50, {}, (1, 448, 448), True),
}


# Real-size cases record, within ~20 MB: the logits in float32 and float64, and the float32 hidden states of the stem
# and of stages 2-4 (stage 1's 256×112×112 map alone would add 12.8 MB; float64 feature maps are left out first).
REAL_SIZE_RECORDED = ("float32: logits, hidden_states 0 (stem), 2, 3, 4; float64: logits "
                      "(hidden_states/1 and the float64 feature maps left out for size)")


def real_size_keep(case: str, key: str) -> bool:
    dtype, _, field = key.partition("/")
    return field == "logits" or (dtype == "float32" and field in ("hidden_states/0", "hidden_states/2",
                                                                   "hidden_states/3", "hidden_states/4"))


RECORDED = re.compile(r"^(bit\.)?(embedder(\.convolution|\.norm|\.pooler)?|norm|pooler|encoder\.stages\.\d+"
                      r"|encoder\.stages\.\d+\.layers\.\d+(\.(conv[123]|norm[123]|downsample(\.conv|\.norm)?))?)$"
                      r"|^classifier$")


def record_points(module_name: str) -> list[tuple[str, str]]:
    """Module outputs under their (identical) checkpoint names; nn.Identity modules too (e.g. a preactivation
    stem's `embedder.norm`), whose output is their input."""
    return [("out", module_name)] if RECORDED.search(module_name) else []
