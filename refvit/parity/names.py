"""transformers 5 module paths -> the checkpoint-name paths refvit's intermediates use, family by family.

transformers 5 renamed the internal modules of ViT/DeiT and BEiT (`deit.layers.3.attention.q_proj`) but
`save_pretrained` still writes, and every hub checkpoint holds, the classic names
(`deit.encoder.layer.3.attention.attention.query`), and refvit names its intermediates after them (docs/DESIGN.md §5).
`record_points(model_type, module_path)` says what to record for one transformers module:
[("out" | "in", checkpoint name)] — "out" is the module's output (a forward hook), "in" its first input (a
pre-hook), for classic modules that no longer exist as one module in transformers 5 (e.g. the classic
`ViTSelfAttention` output is the per-head context, which is now `o_proj`'s input).

These are the same rules golden/generate.py records the golden intermediates with (golden/cases_<family>.py), checked
against transformers 5.23's modeling files (models/{vit,deit,beit,data2vec,cvt,bit}/modeling_*.py).
"""

from __future__ import annotations

import re

from refvit.errors import InputError

# ---- ViT / DeiT (modeling_vit.py, modeling_deit.py: layers.N.attention.{q,k,v,o}_proj, layers.N.mlp.fc{1,2})
VIT_POINTS = [
    (".attention.q_proj", [("out", ".attention.attention.query")]),
    (".attention.k_proj", [("out", ".attention.attention.key")]),
    (".attention.v_proj", [("out", ".attention.attention.value")]),
    # classic ViTSelfAttention output = per-head context = o_proj's input; ViTSelfOutput = o_proj's output
    (".attention.o_proj", [("in", ".attention.attention"), ("out", ".attention.output")]),
    (".mlp.fc2", [("in", ".intermediate")]),  # classic ViTIntermediate = dense + activation = fc2's input
]
VIT_WHOLE = re.compile(r"(^|\.)(embeddings|layernorm|pooler|classifier|cls_classifier|distillation_classifier"
                        r"|decoder|decoder\.0|layers\.\d+\.(layernorm_before|layernorm_after))$")


def _vit(module: str) -> list:
    n = re.sub(r"(^|\.)layers\.(\d+)", r"\1encoder.layer.\2", module)
    for suffix, points in VIT_POINTS:
        if n.endswith(suffix):
            return [(kind, n[: -len(suffix)] + classic) for kind, classic in points]
    if re.search(r"encoder\.layer\.\d+$", n):
        return [("out", n + ".output"), ("out", n)]  # classic ViTOutput adds the residual: its output is the layer's
    return [("out", n)] if VIT_WHOLE.search(module) else []


# ---- BEiT (modeling_beit.py: layers.N, relative_position_bias per layer or shared_position_bias, fpn.*, psp blocks)
BEIT_POINTS = VIT_POINTS[:4] + [
    # classic BeitIntermediate = fc1 + activation = fc2's input; BeitOutput = fc2 alone (no residual, no lambda_2)
    (".mlp.fc2", [("in", ".intermediate"), ("out", ".output")]),
]
BEIT_WHOLE = re.compile(r"^(beit\.)?(embeddings|layernorm|pooler|encoder\.relative_position_bias"
                         r"|encoder\.layer\.\d+(\.(layernorm_before|layernorm_after|attention\.attention"
                         r"\.relative_position_bias))?)$"
                         r"|^(classifier|layernorm|lm_head|fpn1|fpn1\.[12]|fpn2|fpn4|decode_head|auxiliary_head)$"
                         r"|^decode_head\.(lateral_convs\.\d+|fpn_convs\.\d+|psp_modules\.\d+\.1|bottleneck"
                         r"|fpn_bottleneck|classifier)$"
                         r"|^auxiliary_head\.(convs\.\d+|conv_cat|classifier)$")
_BEIT_RENAMED = {"fpn.fpn1.normalization": "fpn1.1", "fpn.fpn1.activation": "fpn1.2", "fpn.fpn1": "fpn1",
                 "fpn.fpn2": "fpn2", "fpn.fpn4": "fpn4", "decode_head.psp_bottleneck": "decode_head.bottleneck"}


def _beit_classic(module: str) -> str:
    n = re.sub(r"(^|\.)layers\.(\d+)\.relative_position_bias$",
               r"\1encoder.layer.\2.attention.attention.relative_position_bias", module)
    n = re.sub(r"(^|\.)layers\.(\d+)", r"\1encoder.layer.\2", n)
    n = re.sub(r"(^|\.)shared_position_bias$", r"\1encoder.relative_position_bias", n)
    if n in _BEIT_RENAMED:
        return _BEIT_RENAMED[n]
    return re.sub(r"^decode_head\.psp_modules\.blocks\.(\d+)\.conv$", r"decode_head.psp_modules.\1.1", n)


def _beit(module: str) -> list:
    n = _beit_classic(module)
    for suffix, points in BEIT_POINTS:
        if n.endswith(suffix):
            return [(kind, n[: -len(suffix)] + classic) for kind, classic in points]
    return [("out", n)] if BEIT_WHOLE.search(n) else []


# ---- data2vec-vision (modeling_data2vec_vision.py keeps the classic module tree)
_D2V_WHOLE = re.compile(r"^(data2vec_vision\.)?(embeddings|layernorm|pooler|encoder\.relative_position_bias"
                        r"|encoder\.layer\.\d+(\.(layernorm_before|layernorm_after|intermediate|output"
                        r"|attention\.output|attention\.attention(\.(query|key|value|relative_position_bias))?))?)$"
                        r"|^(classifier|fpn1|fpn1\.[12]|fpn2|fpn4|decode_head|auxiliary_head)$"
                        r"|^decode_head\.(lateral_convs\.\d+|fpn_convs\.\d+|psp_modules\.blocks\.\d+\.conv"
                        r"|psp_bottleneck|fpn_bottleneck|classifier)$"
                        r"|^auxiliary_head\.(convs\.\d+|conv_cat|classifier)$")

# ---- CvT (modeling_cvt.py keeps the classic tree; the attention probabilities are the `dropout` module's output)
_CVT_WHOLE = re.compile(r"(^|\.)(layernorm|classifier|encoder\.stages\.\d+"
                        r"|encoder\.stages\.\d+\.embedding(\.convolution_embeddings(\.projection|\.normalization))?"
                        r"|layers\.\d+(\.layernorm_before|\.layernorm_after|\.intermediate|\.output)?"
                        r"|attention\.attention(\.convolution_projection_(query|key|value)"
                        r"|\.projection_(query|key|value)|\.dropout)?"
                        r"|attention\.output)$")

# ---- BiT (modeling_bit.py keeps the classic tree; nn.Identity modules recorded too: their output is their input)
_BIT_WHOLE = re.compile(r"^(bit\.)?(embedder(\.convolution|\.norm|\.pooler)?|norm|pooler|encoder\.stages\.\d+"
                        r"|encoder\.stages\.\d+\.layers\.\d+(\.(conv[123]|norm[123]|downsample(\.conv|\.norm)?))?)$"
                        r"|^classifier$")


def _whole(pattern):
    return lambda module: [("out", module)] if pattern.search(module) else []


RULES = {"vit": _vit, "deit": _vit, "beit": _beit, "data2vec-vision": _whole(_D2V_WHOLE), "cvt": _whole(_CVT_WHOLE),
         "bit": _whole(_BIT_WHOLE)}


def record_points(model_type: str, module: str) -> list[tuple[str, str]]:
    """[("out" | "in", checkpoint name)] to record for the transformers 5 module at `module` (a named_modules path)."""
    if model_type not in RULES:
        raise InputError(f"model_type {model_type!r}: refvit knows the module names of {sorted(RULES)} only")
    return RULES[model_type](module) if module else []
