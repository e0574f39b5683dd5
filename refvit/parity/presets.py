"""Name presets: other code bases' module names -> the checkpoint names refvit's traces use (`--map PRESET`).

Each preset is a mapping in compare's format (see compare.load_mapping) over a torch model's module paths, as
`capture_torch` records them: a module's output under its path (`blocks.0.attn.qkv`), its first input under
`PATH:in` (`blocks.0.attn.proj:in`), the model's own output under `output`. Extra keys, resolved
before use (`resolve`):
  {base}            the reference's base-model prefix (`deit.`, `vit.`, `beit.`, `bit.`, `cvt.`, or none for a base
                    model), read from the reference's names, else guessed from the candidate;
  {i+1}             a captured index plus one (hidden_states.0 is the embeddings: layer i's output is
                    hidden_states.i+1);
  "reference": [...]  one module's output recorded under several reference names (timm's block output is both
                    ViT's `layer.i.output`, which adds the residual, and `layer.i`);
  "when" / "unless" the entry applies only when the candidate has (has not) that module (DeiT's `head_dist`);
  "ignore"          reference tensors the other code base computes without a module to hook (timm's BEiT q/k/v are
                    one F.linear call), so they are not expected;
  "setup"           module attributes set during the capture and restored after (timm's `fused_attn=False`: eager
                    attention, so the attention maps pass through `attn_drop` and can be recorded).

Sources: each preset cites the transformers conversion script whose renaming it follows, and the forward code of the
other library that says which module's output is which checkpoint module's.
"""

from __future__ import annotations

import copy
import re

from refvit.errors import InputError

L = "{base}encoder.layer.{i}"

PRESETS: dict[str, dict] = {
    "timm-vit": {
        "source": "transformers/models/deit/convert_deit_timm_to_pytorch.py (create_rename_keys, read_in_q_k_v: "
                  "blocks.{i}.attn.qkv split into query/key/value in that order), and timm's "
                  "vision_transformer.py (VisionTransformer, Block, Attention) / deit.py (VisionTransformerDistilled)",
        "default_base": "vit.", "base_when": {"head_dist": "deit."},
        "setup": {"fused_attn": False},
        "tensors": [
            # timm: x = pos_drop(_pos_embed(patch_embed(x))): the embeddings with the cls (and distillation) token
            {"candidate": "pos_drop", "reference": ["{base}embeddings", "hidden_states.0"]},
            {"candidate": "blocks.{i}.norm1", "reference": f"{L}.layernorm_before"},
            # qkv(x) is (B, N, 3·C) laid out (3, H, D): the conversion script takes rows [0:C], [C:2C], [2C:3C]
            {"candidate": "blocks.{i}.attn.qkv", "split": {"axis": -1, "into": [
                f"{L}.attention.attention.query", f"{L}.attention.attention.key", f"{L}.attention.attention.value"]}},
            {"candidate": "blocks.{i}.attn.attn_drop", "reference": "attentions.{i}"},   # softmax(q·kᵀ·scale)
            {"candidate": "blocks.{i}.attn.proj:in", "reference": f"{L}.attention.attention"},  # heads merged
            {"candidate": "blocks.{i}.attn.proj", "reference": f"{L}.attention.output"},
            {"candidate": "blocks.{i}.norm2", "reference": f"{L}.layernorm_after"},
            {"candidate": "blocks.{i}.mlp.act", "reference": f"{L}.intermediate"},    # ViTIntermediate: dense + act
            # timm's block adds both residuals; ViTOutput adds the second: its output is the layer's
            {"candidate": "blocks.{i}", "reference": [f"{L}.output", L, "hidden_states.{i+1}"]},
            {"candidate": "norm", "reference": "{base}layernorm"},
            {"candidate": "head", "reference": ["cls_classifier", "cls_logits"], "when": "head_dist"},
            {"candidate": "head_dist", "reference": ["distillation_classifier", "distillation_logits"]},
            {"candidate": "head", "reference": "classifier", "unless": "head_dist"},
            {"candidate": "output", "reference": "logits"},   # eval: (head + head_dist) / 2 for the distilled model
        ],
    },
    "timm-beit": {
        "source": "transformers/models/beit/convert_beit_unilm_to_pytorch.py (create_rename_keys, read_in_q_k_v; timm "
                  "keeps unilm's names), and timm's beit.py (Beit, Block, Attention)",
        "default_base": "beit.",
        "setup": {"fused_attn": False},
        "tensors": [
            {"candidate": "pos_drop", "reference": ["{base}embeddings", "hidden_states.0"]},
            {"candidate": "rel_pos_bias", "reference": "{base}encoder.relative_position_bias"},
            {"candidate": "blocks.{i}.norm1", "reference": f"{L}.layernorm_before"},
            {"candidate": "blocks.{i}.attn.attn_drop", "reference": "attentions.{i}"},
            {"candidate": "blocks.{i}.attn.proj:in", "reference": f"{L}.attention.attention"},
            {"candidate": "blocks.{i}.attn.proj", "reference": f"{L}.attention.output"},
            {"candidate": "blocks.{i}.norm2", "reference": f"{L}.layernorm_after"},
            {"candidate": "blocks.{i}.mlp.act", "reference": f"{L}.intermediate"},
            {"candidate": "blocks.{i}.mlp.fc2", "reference": f"{L}.output"},       # BeitOutput: fc2 alone
            {"candidate": "blocks.{i}", "reference": [L, "hidden_states.{i+1}"]},
            {"candidate": "norm", "reference": "{base}layernorm"},                 # Identity with mean pooling
            {"candidate": "fc_norm", "reference": "{base}pooler"},                 # BeitPooler: layernorm(mean)
            {"candidate": "head", "reference": "classifier"},
            {"candidate": "output", "reference": "logits"},
        ],
        # timm computes q/k/v with one F.linear (qkv weight, q_bias, v_bias) and the per-layer relative position
        # bias with a method, not a module: nothing to hook
        "ignore": ["*.attention.attention.query", "*.attention.attention.key", "*.attention.attention.value",
                   "*.attention.attention.relative_position_bias"],
    },
    "timm-resnetv2": {
        "source": "transformers/models/bit/convert_bit_to_pytorch.py (rename_key: stem.conv -> bit.embedder."
                  "convolution, blocks -> layers, head.fc -> classifier.1, norm -> bit.norm, the rest under "
                  "bit.encoder.), and timm's resnetv2.py (ResNetV2, PreActBottleneck, DownsampleConv)",
        "default_base": "bit.",
        "tensors": [
            {"candidate": "stem.conv", "reference": "{base}embedder.convolution"},
            # BiT's pre-activation embedder.norm is nn.Identity after the pad: its output is the pad's
            {"candidate": "stem.pad", "reference": "{base}embedder.norm", "unless": "stem.norm"},
            {"candidate": "stem.norm", "reference": "{base}embedder.norm"},
            {"candidate": "stem.pool", "reference": "{base}embedder.pooler"},
            {"candidate": "stem", "reference": ["{base}embedder", "hidden_states.0"]},
            *({"candidate": f"stages.{{s}}.blocks.{{b}}.{m}",
               "reference": f"{{base}}encoder.stages.{{s}}.layers.{{b}}.{m}"}
              for m in ("norm1", "conv1", "norm2", "conv2", "norm3", "conv3", "downsample", "downsample.conv",
                        "downsample.norm")),
            {"candidate": "stages.{s}.blocks.{b}", "reference": "{base}encoder.stages.{s}.layers.{b}"},
            {"candidate": "stages.{s}", "reference": ["{base}encoder.stages.{s}", "hidden_states.{s+1}"]},
            {"candidate": "norm", "reference": "{base}norm"},
            {"candidate": "head.global_pool", "reference": "{base}pooler"},
            # the script's head.fc -> classifier.1: timm's fc is a 1×1 conv, (B, classes, 1, 1)
            {"candidate": "head.fc", "reference": "classifier", "reshape": [0, -1]},
            {"candidate": "output", "reference": "logits"},
        ],
    },
    "cvt-original": {
        "source": "transformers/models/cvt/convert_cvt_original_pytorch_checkpoint_to_pytorch.py (embeddings, "
                  "attention, cls_token, final: stage{s}.patch_embed, stage{s}.blocks.{b}.attn.conv_proj_q …), and "
                  "microsoft/CvT's lib/models/cls_cvt.py (ConvEmbed, Attention, Block, VisionTransformer)",
        "default_base": "cvt.",
        "tensors": [
            {"candidate": "stage{s}.patch_embed.proj",
             "reference": "{base}encoder.stages.{s}.embedding.convolution_embeddings.projection"},
            {"candidate": "stage{s}.patch_embed.norm",
             "reference": "{base}encoder.stages.{s}.embedding.convolution_embeddings.normalization"},
            {"candidate": "stage{s}.patch_embed", "reference": "{base}encoder.stages.{s}.embedding"},
            # a block's modules, microsoft/CvT's name -> transformers' (under stage{s}.blocks.{b} -> ….layers.{b})
            *({"candidate": f"stage{{s}}.blocks.{{b}}.{cvt}",
               "reference": f"{{base}}encoder.stages.{{s}}.layers.{{b}}.{hf}"}
              for cvt, hf in (("norm1", "layernorm_before"),
                              ("attn.conv_proj_{qkv}", "attention.attention.convolution_projection_{qkv}"),
                              ("attn.proj_{qkv}", "attention.attention.projection_{qkv}"),
                              ("attn.attn_drop", "attention.attention.dropout"),
                              ("attn.proj:in", "attention.attention"),
                              ("attn.proj", "attention.output"),
                              ("norm2", "layernorm_after"),
                              ("mlp.act", "intermediate"))),
            {"candidate": "stage{s}.blocks.{b}", "reference": ["{base}encoder.stages.{s}.layers.{b}.output",
                                                              "{base}encoder.stages.{s}.layers.{b}"]},
            {"candidate": "stage{s}", "reference": ["{base}encoder.stages.{s}", "hidden_states.{s}"]},
            {"candidate": "norm", "reference": "{base}layernorm"},
            {"candidate": "head", "reference": "classifier"},
            {"candidate": "output", "reference": "logits"},
        ],
    },
}
# the {qkv} of cvt-original: q/k/v in the original, query/key/value in transformers
_CVT_QKV = {"q": "query", "k": "key", "v": "value"}


def names() -> list[str]:
    return sorted(PRESETS)


def get(name: str) -> dict:
    if name not in PRESETS:
        raise InputError(f"unknown name preset {name!r}: one of {', '.join(names())} (or a mapping JSON file)")
    return PRESETS[name]


def base_of(reference_names) -> str | None:
    """The base-model prefix of a reference's names: `deit.` for deit.embeddings, "" for a base model's embeddings."""
    for n in reference_names:
        m = re.match(r"^(.*?)(embeddings|embedder|encoder)(\.|$)", n)
        if m:
            return m.group(1)
    return None


def resolve(preset: str | dict, candidate_names, reference_names=None, base: str | None = None) -> dict:
    """A preset as a plain mapping for compare / capture_torch: {base} filled, when/unless applied, extra keys
    dropped. `candidate_names`: the candidate's module paths (or trace names); `reference_names`: the reference's."""
    spec = get(preset) if isinstance(preset, str) else preset
    have = set(candidate_names)
    if base is None and reference_names is not None:
        base = base_of(reference_names)
    if base is None:
        base = next((b for mod, b in spec.get("base_when", {}).items() if mod in have), spec.get("default_base", ""))
    out = []
    for e in spec["tensors"]:
        if ("when" in e and e["when"] not in have) or ("unless" in e and e["unless"] in have):
            continue
        e = {k: copy.deepcopy(v) for k, v in e.items() if k not in ("when", "unless")}
        if "reference" in e:
            refs = e["reference"] if isinstance(e["reference"], list) else [e["reference"]]
            e["reference"] = [r.replace("{base}", base) for r in refs]
        if "split" in e:
            e["split"]["into"] = [r.replace("{base}", base) for r in e["split"]["into"]]
        out.append(e)
    mapping = {"tensors": out}
    if spec.get("ignore"):
        mapping["ignore"] = list(spec["ignore"])
    return mapping


def fill(template: str, groups: dict) -> str:
    """`{i}` -> the captured value, `{i+1}` -> it plus one; cvt-original's {qkv} (q/k/v) -> query/key/value."""
    def one(m):
        key, plus = m.group(1), m.group(2)
        if key not in groups:
            raise KeyError(key)
        value = groups[key]
        if plus:
            return str(int(value) + int(plus))
        return _CVT_QKV.get(value, value) if key == "qkv" else value

    return re.sub(r"\{(\w+)(?:\+(\d+))?\}", one, template)
