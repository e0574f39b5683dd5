"""data2vec-vision golden cases (used by golden/generate.py; see cases_vit.py and cases_beit.py).

Data2VecVision* is BEiT's network under the `data2vec_vision.` prefix. transformers 5.23 kept its classic modules
(`encoder.layer.N.attention.attention.query`, softmax in the input dtype, scores divided by √D, the shared and the
per-layer biases added one after the other) and its own segmentation-head names (`decode_head.psp_bottleneck`,
`…convolution` / `…normalization`, `psp_modules.blocks.N.conv`), which are its checkpoint names: the module paths
are recorded as they are. There is no data2vec-vision MIM head or backbone in transformers.

What transformers cannot run: segmentation at any input whose patch grid differs from image_size // patch_size
(it reshapes the features to the configured square grid); refvit raises InputError.
"""

from __future__ import annotations

import re

from cases_beit import SEG, tiny


def d2v(**overrides) -> dict:
    return tiny(model_type="data2vec-vision", **overrides)


# name: (architecture, config, call kwargs, input (B, H, W), storage) — storage as in cases_vit.py
CASES = {
    # Data2VecVisionModel builds no pooler by default (add_pooling_layer=False): pooler_output is None
    "data2vec_vision_model": ("Data2VecVisionModel", d2v(use_mask_token=True), {"bool_masked_pos": True},
                              (2, 32, 32), False),
    "data2vec_vision_classification": ("Data2VecVisionForImageClassification",
                                       d2v(use_absolute_position_embeddings=True, use_shared_relative_position_bias=True,
                                           use_mean_pooling=False), {"interpolate_pos_encoding": True},
                                       (2, 40, 40), False),
    "data2vec_vision_segmentation": ("Data2VecVisionForSemanticSegmentation", d2v(**SEG), {}, (2, 32, 32), False),
    # quirk: out_indices [0, 2, 3, 4] keeps hidden_states[idx] for idx + 1 in it, so 0 selects nothing and the FPN
    # gets 3 levels (fpn1, fpn2, identity; no fpn4); the UperNet head's third lateral and its pooling read the same map
    "data2vec_vision_segmentation_three_levels": ("Data2VecVisionForSemanticSegmentation",
                                                  d2v(**{**SEG, "out_indices": [0, 2, 3, 4]}), {}, (1, 32, 32),
                                                  False),
}

WHOLE = re.compile(r"^(data2vec_vision\.)?(embeddings|layernorm|pooler|encoder\.relative_position_bias"
                   r"|encoder\.layer\.\d+(\.(layernorm_before|layernorm_after|intermediate|output|attention\.output"
                   r"|attention\.attention(\.(query|key|value|relative_position_bias))?))?)$"
                   r"|^(classifier|fpn1|fpn1\.[12]|fpn2|fpn4|decode_head|auxiliary_head)$"
                   r"|^decode_head\.(lateral_convs\.\d+|fpn_convs\.\d+|psp_modules\.blocks\.\d+\.conv|psp_bottleneck"
                   r"|fpn_bottleneck|classifier)$"
                   r"|^auxiliary_head\.(convs\.\d+|conv_cat|classifier)$")


def record_points(module_name: str) -> list[tuple[str, str]]:
    return [("out", module_name)] if WHOLE.search(module_name) else []
