"""BEiT golden cases, and where their intermediates are recorded (used by golden/generate.py; see cases_vit.py).

transformers 5 renamed BEiT's modules (`beit.layers.3.attention.q_proj`, `beit.shared_position_bias`,
`fpn.fpn1.conv_transpose1`, `decode_head.psp_modules.blocks.0.conv` …) but saves the classic names; intermediates
are recorded under the classic checkpoint names (`beit.encoder.layer.3.attention.attention.relative_position_bias`,
`fpn1`, `decode_head.psp_modules.0.1`). BeitBackbone's modules sit under `beit.` like the heads' (its own checkpoint
holds them at the top level), so its intermediates are named `beit.encoder.layer.N…` too.

Conv modules of the segmentation head are recorded whole (conv + BatchNorm + ReLU): refvit folds each BatchNorm
into its convolution at load, so the raw convolution output does not exist there (likewise fpn1.0).

What transformers cannot run, so no golden exists (tests/test_beit.py covers refvit's behaviour instead):
- absolute position embeddings with a non-square image_size: `interpolate_pos_encoding` runs on every call and
  reshapes the stored grid to a square (refvit raises InputError);
- a [h, w] list patch_size with relative position bias, segmentation, the backbone or a resized input (transformers
  computes `height // config.patch_size`); refvit uses (h, w).
"""

from __future__ import annotations

import re

from refvit.parity.names import BEIT_POINTS, BEIT_WHOLE


def tiny(**overrides) -> dict:
    """A small BEiT (C=32, 2 layers, 4 heads, 32×32 images of 8×8 patches = a 4×4 window) with 5 labels."""
    cfg = {"model_type": "beit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 64, "image_size": 32, "patch_size": 8, "num_channels": 3, "layer_norm_eps": 1e-6,
           "use_relative_position_bias": True, "id2label": {str(i): f"class_{i}" for i in range(5)}}
    cfg.update(overrides)
    return cfg


# everything at once: absolute + shared + per-layer relative position bias, [CLS] pooling (final LayerNorm)
ALL_BIASES = {"use_absolute_position_embeddings": True, "use_shared_relative_position_bias": True,
              "use_mean_pooling": False}
# segmentation: 4 layers feeding the FPN, an auxiliary head with 2 convs and the concatenated input
SEG = {"num_hidden_layers": 4, "out_indices": [1, 2, 3, 4], "auxiliary_channels": 16, "auxiliary_num_convs": 2,
       "auxiliary_concat_input": True}

# microsoft/beit-base-patch16-224: BEiT-B/16, per-layer relative position bias, mean pooling, layer scale 0.1
BEIT_BASE = {"model_type": "beit", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "image_size": 224, "patch_size": 16, "num_channels": 3, "layer_norm_eps": 1e-12,
             "use_relative_position_bias": True, "use_mean_pooling": True, "layer_scale_init_value": 0.1,
             "id2label": {str(i): f"imagenet_{i}" for i in range(1000)}}

# name: (architecture, config, call kwargs, input (B, H, W), storage) — storage as in cases_vit.py
CASES = {
    # per-layer relative position bias, mean pooling (pooler LayerNorm), layer scale
    "beit_model": ("BeitModel", tiny(), {}, (2, 32, 32), False),
    # [CLS] pooling with the final LayerNorm, shared table only, absolute embeddings, mask token, no layer scale
    "beit_model_variant": ("BeitModel", tiny(use_relative_position_bias=False, use_shared_relative_position_bias=True,
                                             use_absolute_position_embeddings=True, use_mean_pooling=False,
                                             use_mask_token=True, layer_scale_init_value=0.0, hidden_act="gelu_new",
                                             num_hidden_layers=3),
                           {"bool_masked_pos": True}, (2, 32, 32), False),
    "beit_classification": ("BeitForImageClassification", tiny(), {}, (3, 32, 32), False),
    # shared + per-layer tables summed, absolute embeddings, [CLS] pooling
    "beit_classification_all_biases": ("BeitForImageClassification", tiny(**ALL_BIASES), {}, (2, 32, 32), False),
    # interpolate_pos_encoding at a larger and at a non-square input: tables resized to the new window,
    # absolute embeddings bicubic-resized
    "beit_classification_interpolate": ("BeitForImageClassification", tiny(**ALL_BIASES),
                                        {"interpolate_pos_encoding": True}, (2, 48, 48), False),
    "beit_classification_interpolate_nonsquare": ("BeitForImageClassification", tiny(**ALL_BIASES),
                                                  {"interpolate_pos_encoding": True}, (2, 40, 56), False),
    # BEiT takes other sizes without the flag too (the table is always resized to the input's window)
    "beit_classification_other_size": ("BeitForImageClassification", tiny(), {}, (2, 48, 40), False),
    # a non-square configured window (4×6): the table's (width, height) reshape quirk rearranges it at native size
    "beit_classification_nonsquare": ("BeitForImageClassification", tiny(image_size=[32, 48], num_labels=0,
                                                                         id2label=None), {}, (2, 32, 48), False),
    # BEiT pre-training: mask token, shared table, logits over a (small) visual-token vocabulary
    "beit_mim": ("BeitForMaskedImageModeling", tiny(use_mask_token=True, use_relative_position_bias=False,
                                                    use_shared_relative_position_bias=True, vocab_size=40),
                 {"bool_masked_pos": True}, (2, 32, 32), False),
    # segmentation at a non-square input (4×6 window; FPN 16×24 … 2×3; pooling 2×3 to 6×6: uneven, overlapping bins)
    "beit_segmentation": ("BeitForSemanticSegmentation", tiny(**SEG), {}, (2, 32, 48), False),
    # square input, shared table + absolute embeddings, no auxiliary head, out_indices with 0 (-> hidden_states[-1])
    "beit_segmentation_variant": ("BeitForSemanticSegmentation",
                                  tiny(**{**SEG, "out_indices": [0, 1, 3, 4]}, use_auxiliary_head=False,
                                       use_relative_position_bias=False, use_shared_relative_position_bias=True,
                                       use_absolute_position_embeddings=True, pool_scales=[1, 3]),
                                  {}, (1, 32, 32), False),
    # backbone with the FPN on 4 stages, shared table (saved as `beit.encoder.relative_position_bias…`), non-square
    "beit_backbone_fpn": ("BeitBackbone", tiny(num_hidden_layers=4, out_indices=[1, 2, 3, 4], add_fpn=True,
                                               use_relative_position_bias=False,
                                               use_shared_relative_position_bias=True), {}, (2, 32, 40), False),
    # backbone by out_features, raw (B, 1 + N, C) hidden states
    "beit_backbone_raw": ("BeitBackbone", tiny(num_hidden_layers=3, out_features=["stem", "stage2"],
                                               reshape_hidden_states=False), {}, (2, 32, 32), False),
    # the same BEiT written by torch.save(model.state_dict()) (transformers-5 module names inside)
    "beit_classification_bin": ("BeitForImageClassification", tiny(**ALL_BIASES), {}, (1, 32, 32), "bin"),
    "beit_base_224": ("BeitForImageClassification", BEIT_BASE, {}, (1, 224, 224), True),
}

# BEiT-B at 224²: every hidden state in float32 is 13 × 0.6 MB; float64 copies of the large tensors are left out
REAL_SIZE_RECORDED = ("float32: logits, hidden_states 0-12, attentions 0 and 11; float64: logits, hidden_states 0 "
                      "and 12 (other float64 hidden states and attention maps left out for size)")


def real_size_keep(case: str, key: str) -> bool:
    dtype, _, field = key.partition("/")
    return dtype == "float32" or field in ("logits", "hidden_states/0", "hidden_states/12")


def saved_names(arch: str, tensors: dict) -> dict:
    """The names save_pretrained writes for seeded tensors. Quirk: BeitBackbone writes its base at the top level but
    the shared table under `beit.` (refvit's shapes use the classic, unprefixed name; both load)."""
    if arch != "BeitBackbone":
        return tensors
    return {("beit." + k if k.startswith("encoder.relative_position_bias.") else k): v for k, v in tensors.items()}


def classic_name(module_name: str) -> str:
    """transformers-5 module path -> checkpoint-name path."""
    n = re.sub(r"(^|\.)layers\.(\d+)\.relative_position_bias$", r"\1encoder.layer.\2.attention.attention"
               r".relative_position_bias", module_name)
    n = re.sub(r"(^|\.)layers\.(\d+)", r"\1encoder.layer.\2", n)
    n = re.sub(r"(^|\.)shared_position_bias$", r"\1encoder.relative_position_bias", n)
    for new, classic in (("fpn.fpn1.normalization", "fpn1.1"), ("fpn.fpn1.activation", "fpn1.2"),
                         ("fpn.fpn1", "fpn1"), ("fpn.fpn2", "fpn2"), ("fpn.fpn4", "fpn4"),
                         ("decode_head.psp_bottleneck", "decode_head.bottleneck")):
        if n == new:
            return classic
    return re.sub(r"^decode_head\.psp_modules\.blocks\.(\d+)\.conv$", r"decode_head.psp_modules.\1.1", n)


# transformers-5 module suffix -> (kind, classic suffix) recorded for it, and the modules recorded whole: the
# same tables refvit.parity.capture_transformers uses (one copy, refvit/parity/names.py)
POINTS, WHOLE = BEIT_POINTS, BEIT_WHOLE


def record_points(module_name: str) -> list[tuple[str, str]]:
    n = classic_name(module_name)
    for suffix, points in POINTS:
        if n.endswith(suffix):
            return [(kind, n[: -len(suffix)] + classic) for kind, classic in points]
    return [("out", n)] if WHOLE.search(n) else []
