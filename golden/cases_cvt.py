"""CvT golden cases, and where their intermediates are recorded (used by golden/generate.py; see cases_vit.py).

transformers 5 keeps CvT's module names equal to its checkpoint names, so the recorded paths are the module paths.
CvT returns no attention maps: the attention probabilities are recorded as the output of each layer's
`attention.attention.dropout` (identity at inference), which is also where generate.py measures attention entropy.

Only `qkv_projection_method = "dw_bn"` has golden cases: transformers' `linear` and `avg` paths fail inside its own
forward (CvtSelfAttentionProjection has no `convolution_projection`); tests/test_cvt.py checks them against NumPy
formulas of the original CvT code instead. transformers also needs `depth[i] > i` to build a model (its per-layer
drop-path list is indexed by the stage), which every config below respects.
"""

from __future__ import annotations

import re


def tiny(**overrides) -> dict:
    """A small three-stage CvT (C = 16/24/32, 1/2/4 heads, depth 1/2/3) for 48×48 inputs, class token in stage 2.

    layer_norm_eps is set far from every real value: modeling_cvt.py never reads it (its LayerNorms use 1e-5), so the
    goldens show that refvit ignores it too."""
    cfg = {"model_type": "cvt", "num_channels": 3, "patch_sizes": [7, 3, 3], "patch_stride": [4, 2, 2],
           "patch_padding": [2, 1, 1], "embed_dim": [16, 24, 32], "num_heads": [1, 2, 4], "depth": [1, 2, 3],
           "mlp_ratio": [4.0, 4.0, 4.0], "attention_drop_rate": [0.0, 0.0, 0.0], "drop_rate": [0.0, 0.0, 0.0],
           "drop_path_rate": [0.0, 0.0, 0.1], "qkv_bias": [True, True, True], "cls_token": [False, False, True],
           "qkv_projection_method": ["dw_bn", "dw_bn", "dw_bn"], "kernel_qkv": [3, 3, 3], "padding_kv": [1, 1, 1],
           "stride_kv": [2, 2, 2], "padding_q": [1, 1, 1], "stride_q": [1, 1, 1], "layer_norm_eps": 0.25,
           "id2label": {str(i): f"class_{i}" for i in range(5)}}
    cfg.update(overrides)
    return cfg


def real(depth: list[int]) -> dict:
    """microsoft/cvt-13 (depth 1/2/10) and cvt-21 (depth 1/4/16) shapes: C = 64/192/384, 1/3/6 heads, 1000 labels."""
    return {**tiny(), "embed_dim": [64, 192, 384], "num_heads": [1, 3, 6], "depth": depth, "layer_norm_eps": 1e-12,
            "id2label": {str(i): f"imagenet_{i}" for i in range(1000)}}


# A variant stage by stage: no class token anywhere (mean-pooled head), qkv_bias off in stage 1, MLP ratios 4 / 2.5 /
# 1.3 (32 · 1.3 = 41.6 -> 41: the width is truncated), a 5×5 projection kernel with stride-1 keys/values in stage 1,
# other embedding kernels/strides/paddings, 2 heads in stage 0.
VARIANT = tiny(patch_sizes=[5, 3, 2], patch_stride=[3, 2, 2], patch_padding=[1, 1, 0], num_heads=[2, 2, 4],
               mlp_ratio=[4.0, 2.5, 1.3], qkv_bias=[True, False, True], cls_token=[False, False, False],
               kernel_qkv=[3, 5, 3], padding_kv=[1, 2, 1], stride_kv=[2, 1, 2], padding_q=[1, 2, 1])

# name: (architecture, config, call kwargs, input (B, H, W), storage) — storage as in cases_vit.py
CASES = {
    "cvt_model": ("CvtModel", tiny(), {}, (2, 48, 48), False),
    "cvt_classification": ("CvtForImageClassification", tiny(), {}, (2, 48, 48), False),
    "cvt_classification_variant": ("CvtForImageClassification", VARIANT, {}, (2, 40, 40), False),
    # non-square input whose sizes do not divide evenly (every conv floors), two stages
    "cvt_classification_nonsquare": ("CvtForImageClassification",
                                     tiny(embed_dim=[16, 24], num_heads=[1, 2], depth=[1, 2], patch_sizes=[7, 3],
                                          patch_stride=[4, 2], patch_padding=[2, 1], mlp_ratio=[4.0, 4.0],
                                          attention_drop_rate=[0.0, 0.0], drop_rate=[0.0, 0.0],
                                          drop_path_rate=[0.0, 0.1],
                                          qkv_bias=[True, True], cls_token=[False, True],
                                          qkv_projection_method=["dw_bn", "dw_bn"], kernel_qkv=[3, 3],
                                          padding_kv=[1, 1], stride_kv=[2, 2], padding_q=[1, 1], stride_q=[1, 1]),
                                     {}, (2, 61, 38), False),
    # class tokens in the middle stage too (same width as the last, as transformers requires); no labels (identity head)
    "cvt_classification_cls_tokens": ("CvtForImageClassification",
                                      tiny(embed_dim=[16, 32, 32], cls_token=[False, True, True], id2label={}),
                                      {}, (2, 48, 48), False),
    "cvt_13_224": ("CvtForImageClassification", real([1, 2, 10]), {}, (1, 224, 224), True),
    "cvt_21_224": ("CvtForImageClassification", real([1, 4, 16]), {}, (1, 224, 224), True),
}

# module-path suffixes whose output is recorded under the same name (tuples: their first element)
WHOLE = re.compile(r"(^|\.)(layernorm|classifier|encoder\.stages\.\d+"
                   r"|encoder\.stages\.\d+\.embedding(\.convolution_embeddings(\.projection|\.normalization))?"
                   r"|layers\.\d+(\.layernorm_before|\.layernorm_after|\.intermediate|\.output)?"
                   r"|attention\.attention(\.convolution_projection_(query|key|value)|\.projection_(query|key|value)"
                   r"|\.dropout)?"
                   r"|attention\.output)$")

# the attention maps, for generate.py's entropy check (CvT's outputs hold none)
ATTENTION_PROBS = re.compile(r"\.attention\.attention\.dropout$")


def record_points(module_name: str) -> list[tuple[str, str]]:
    if WHOLE.search(module_name):
        return [("out", module_name)]
    return []
