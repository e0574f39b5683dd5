"""ViT and DeiT forward passes, as `transformers/models/vit/modeling_vit.py` and `.../deit/modeling_deit.py` (5.23).

Papers: Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words" (ViT); Touvron et al. 2020, "Training data-efficient
image transformers & distillation through attention" (DeiT). DeiT is ViT plus a distillation token next to the
class token (and +1 position embedding for it); its heads read token 0 (class) and token 1 (distillation).

Params trees use the checkpoint's names (DESIGN.md §3.2): `p["encoder"]["layer"][3]["attention"]["attention"]["query"]`.
Intermediates are recorded under the same names (`deit.encoder.layer.3.attention.output`).
Shapes: B batch, N tokens, C channels (hidden_size), H heads, D head dim, h/w patch grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..architecture import Architecture, check_mask
from ..config import vit_config_from_dict
from ..errors import InputError
from ..outputs import (BaseModelOutputWithPooling, DeiTForImageClassificationWithTeacherOutput, ImageClassifierOutput,
                       MaskedImageModelingOutput)
from .common import activation, conv1x1, layer_norm, linear, linear_act, pixel_shuffle, rename_modules

# ----------------------------------------------------------------------------------------------------------------------
# What a checkpoint holds, per architecture (checkpoint names, shapes derived from the config)


def base_shapes(cfg, num_special: int) -> dict[str, tuple]:
    """Tensors of ViTModel/DeiTModel without pooler or mask token (checkpoint names, no model prefix)."""
    C, I, (ph, pw) = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    s = {"embeddings.cls_token": (1, 1, C),
         "embeddings.position_embeddings": (1, cfg.num_patches + num_special, C),
         "embeddings.patch_embeddings.projection.weight": (C, cfg.num_channels, ph, pw),
         "embeddings.patch_embeddings.projection.bias": (C,)}
    if num_special == 2:
        s["embeddings.distillation_token"] = (1, 1, C)
    for i in range(cfg.num_hidden_layers):
        L = f"encoder.layer.{i}."
        for proj in ("query", "key", "value"):
            s[L + f"attention.attention.{proj}.weight"] = (C, C)
            if cfg.qkv_bias:
                s[L + f"attention.attention.{proj}.bias"] = (C,)
        s.update({L + "attention.output.dense.weight": (C, C), L + "attention.output.dense.bias": (C,),
                  L + "intermediate.dense.weight": (I, C), L + "intermediate.dense.bias": (I,),
                  L + "output.dense.weight": (C, I), L + "output.dense.bias": (C,),
                  L + "layernorm_before.weight": (C,), L + "layernorm_before.bias": (C,),
                  L + "layernorm_after.weight": (C,), L + "layernorm_after.bias": (C,)})
    s["layernorm.weight"], s["layernorm.bias"] = (C,), (C,)
    return s


def pooler_shapes(cfg) -> dict[str, tuple]:
    return {"pooler.dense.weight": (cfg.pooler_output_size, cfg.hidden_size), "pooler.dense.bias": (cfg.pooler_output_size,)}


def mask_token_shapes(cfg) -> dict[str, tuple]:
    return {"embeddings.mask_token": (1, 1, cfg.hidden_size)}


def classifier_shapes(cfg, name: str) -> dict[str, tuple]:
    """`nn.Linear(hidden, num_labels)`, or nothing when num_labels == 0 (transformers uses nn.Identity then)."""
    if cfg.num_labels == 0:
        return {}
    return {f"{name}.weight": (cfg.num_labels, cfg.hidden_size), f"{name}.bias": (cfg.num_labels,)}


def decoder_shapes(cfg) -> dict[str, tuple]:
    """MIM decoder: Conv2d(hidden, encoder_stride² · num_channels, kernel 1) then PixelShuffle(encoder_stride)."""
    out = cfg.encoder_stride ** 2 * cfg.num_channels
    return {"decoder.0.weight": (out, cfg.hidden_size, 1, 1), "decoder.0.bias": (out,)}


# transformers 5 renamed modules inside ViT/DeiT; `save_pretrained` converts back to the classic names, but a
# `torch.save(model.state_dict())` of a 5.x model holds the new ones. Loading renames them to the classic names.
RENAMED_IN_TRANSFORMERS_5 = [
    (r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


def classic_names(tensors: dict) -> dict:
    """Rename transformers-5 internal module names (`layers.3.attention.q_proj`) to checkpoint names."""
    return rename_modules(tensors, RENAMED_IN_TRANSFORMERS_5)


# ----------------------------------------------------------------------------------------------------------------------
# Embeddings


def patch_embeddings(p, pixel_values, cfg):
    """ViTPatchEmbeddings: Conv2d(kernel = stride = patch) as one GEMM over flattened patches -> (B, N, C)."""
    B, Cin, height, width = pixel_values.shape
    ph, pw = cfg.patch_size
    h, w = height // ph, width // pw                                                   # a strided conv floors
    x = pixel_values[:, :, :h * ph, :w * pw].reshape(B, Cin, h, ph, w, pw)
    x = x.transpose(0, 2, 4, 1, 3, 5).reshape(B, h * w, Cin * ph * pw)              # (B, N, Cin·ph·pw)
    W = p["projection"]["weight"].reshape(cfg.hidden_size, Cin * ph * pw)           # (C, Cin·ph·pw)
    return x @ W.T + p["projection"]["bias"], (h, w)                                 # (B, N, C)


def mask_patches(x, mask_token, bool_masked_pos):
    """Replace masked patch embeddings by the mask token: x·(1 − m) + t·m, the same arithmetic as transformers."""
    m = bool_masked_pos.astype(x.dtype)[:, :, None]                                  # (B, N, 1)
    return x * (1 - m) + mask_token * m


def interpolate_position_embeddings(pos, num_special, cfg, height, width, K):
    """`ViTEmbeddings.interpolate_pos_encoding`: bicubic resize of the patch position grid, special tokens kept aside.

    Quirks reproduced: nothing is resized when the patch count matches and the *pixel* height == width; the stored
    grid is assumed square (side = int(sqrt(num_positions))); the new grid is height // patch, width // patch.
    """
    num_positions = pos.shape[1] - num_special
    new_h, new_w = height // cfg.patch_size[0], width // cfg.patch_size[1]
    if new_h * new_w == num_positions and height == width:
        return pos
    side = int(num_positions ** 0.5)
    if side * side != num_positions:
        raise InputError(f"interpolate_pos_encoding: the {num_positions} stored patch positions are not a square grid "
                         f"(transformers reshapes them to {side}x{side} and fails too)")
    grid = pos[0, num_special:].reshape(side, side, -1).transpose(2, 0, 1)            # (C, side, side)
    grid = K.interpolate_bicubic(np.ascontiguousarray(grid), new_h, new_w)           # (C, new_h, new_w)
    grid = grid.transpose(1, 2, 0).reshape(1, new_h * new_w, -1)                     # (1, N, C)
    return np.concatenate([pos[:, :num_special], grid], axis=1)


def add_position_embeddings(p, x, num_special, cfg, height, width, interpolate, K):
    """Add (possibly interpolated) position embeddings; without interpolation the input must be the config's size."""
    pos = p["position_embeddings"]
    if interpolate:
        return x + interpolate_position_embeddings(pos, num_special, cfg, height, width, K)
    if (height, width) != tuple(cfg.image_size):
        raise InputError(f"pixel_values: input image size ({height}*{width}) doesn't match model "
                         f"({cfg.image_size[0]}*{cfg.image_size[1]}); pass interpolate_pos_encoding=True to resize "
                         "the position embeddings")
    return x + pos


def vit_embeddings(p, pixel_values, cfg, bool_masked_pos, interpolate, K):
    """ViTEmbeddings: patches (+ mask tokens), then [CLS] in front, then position embeddings -> (B, 1 + N, C)."""
    B, _, height, width = pixel_values.shape
    x, _ = patch_embeddings(p["patch_embeddings"], pixel_values, cfg)                 # (B, N, C)
    if bool_masked_pos is not None:
        x = mask_patches(x, p["mask_token"], bool_masked_pos)
    cls = np.broadcast_to(p["cls_token"], (B, 1, cfg.hidden_size))
    x = np.concatenate([cls, x], axis=1)                                              # (B, 1 + N, C)
    return add_position_embeddings(p, x, 1, cfg, height, width, interpolate, K)


def deit_embeddings(p, pixel_values, cfg, bool_masked_pos, interpolate, K):
    """DeiTEmbeddings: like ViT's, with the distillation token after [CLS] -> (B, 2 + N, C)."""
    B, _, height, width = pixel_values.shape
    x, _ = patch_embeddings(p["patch_embeddings"], pixel_values, cfg)                 # (B, N, C)
    if bool_masked_pos is not None:
        x = mask_patches(x, p["mask_token"], bool_masked_pos)
    cls = np.broadcast_to(p["cls_token"], (B, 1, cfg.hidden_size))
    dist = np.broadcast_to(p["distillation_token"], (B, 1, cfg.hidden_size))
    x = np.concatenate([cls, dist, x], axis=1)                                        # (B, 2 + N, C)
    return add_position_embeddings(p, x, 2, cfg, height, width, interpolate, K)


# ----------------------------------------------------------------------------------------------------------------------
# Encoder


def self_attention(p, x, cfg, K, rec, name, need_probs):
    """ViTSelfAttention: q, k, v projections, softmax(q kᵀ · D^-½) v per head (fused kernel) -> (B, N, C)."""
    q = rec(f"{name}.query", linear(x, p["query"], K))                                # (B, N, C)
    k = rec(f"{name}.key", linear(x, p["key"], K))                                    # (B, N, C)
    v = rec(f"{name}.value", linear(x, p["value"], K))                                # (B, N, C)
    context, probs = K.attention(q, k, v, cfg.num_attention_heads, cfg.head_dim ** -0.5, need_probs=need_probs)
    return rec(name, context), probs                                                  # (B, N, C), (B, H, N, N)


def layer(p, x, cfg, K, rec, name, need_probs):
    """ViTLayer: pre-norm attention and MLP blocks, each added to its residual."""
    h = rec(f"{name}.layernorm_before", layer_norm(x, p["layernorm_before"], cfg.layer_norm_eps, K))
    h, probs = self_attention(p["attention"]["attention"], h, cfg, K, rec, f"{name}.attention.attention", need_probs)
    h = rec(f"{name}.attention.output", linear(h, p["attention"]["output"]["dense"], K))
    x = x + h
    h = rec(f"{name}.layernorm_after", layer_norm(x, p["layernorm_after"], cfg.layer_norm_eps, K))
    h = rec(f"{name}.intermediate", linear_act(h, p["intermediate"]["dense"], cfg.hidden_act, K))  # (B, N, I)
    x = rec(f"{name}.output", linear(h, p["output"]["dense"], K) + x)                # ViTOutput adds the residual
    return rec(name, x), probs


def base_forward(p, pixel_values, cfg, K, rec, prefix, bool_masked_pos, interpolate, output_hidden_states, output_attentions):
    """ViTModel/DeiTModel.forward: embeddings, encoder layers, final LayerNorm, optional pooler.

    hidden_states[0] is the embedding output, hidden_states[i] the output of layer i-1 (before the final LayerNorm).
    """
    embed = deit_embeddings if cfg.model_type == "deit" else vit_embeddings
    x = rec(f"{prefix}embeddings", embed(p["embeddings"], pixel_values, cfg, bool_masked_pos, interpolate, K))
    hidden_states, attentions = [x], []
    for i, lp in enumerate(p["encoder"]["layer"]):
        x, probs = layer(lp, x, cfg, K, rec, f"{prefix}encoder.layer.{i}", output_attentions)
        hidden_states.append(x)
        attentions.append(probs)
    x = rec(f"{prefix}layernorm", layer_norm(x, p["layernorm"], cfg.layer_norm_eps, K))
    pooled = pooler(p["pooler"], x, cfg, K, rec, f"{prefix}pooler") if "pooler" in p else None
    return {"last_hidden_state": x, "pooler_output": pooled,
            "hidden_states": tuple(hidden_states) if output_hidden_states else None,
            "attentions": tuple(attentions) if output_attentions else None}


def pooler(p, x, cfg, K, rec, name):
    """ViTPooler: dense + activation (tanh by default) on the first token."""
    return rec(name, activation(cfg.pooler_act, linear(x[:, 0], p["dense"]), K))


# ----------------------------------------------------------------------------------------------------------------------
# Heads


def classifier(p, x, cfg):
    """`nn.Linear(hidden, num_labels)`, or identity when num_labels == 0 (as transformers)."""
    return linear(x, p) if cfg.num_labels > 0 else x


def image_classification(p, x, cfg, K, rec, prefix):
    """ViTForImageClassification / DeiTForImageClassification: classifier on the [CLS] token of the final LayerNorm."""
    return {"logits": rec("classifier", classifier(p.get("classifier"), x[:, 0], cfg))}


def image_classification_with_teacher(p, x, cfg, K, rec, prefix):
    """DeiTForImageClassificationWithTeacher: class head on token 0, distillation head on token 1, logits = mean."""
    cls_logits = rec("cls_classifier", classifier(p.get("cls_classifier"), x[:, 0], cfg))
    distillation_logits = rec("distillation_classifier", classifier(p.get("distillation_classifier"), x[:, 1], cfg))
    logits = (cls_logits + distillation_logits) / 2                                   # inference: average both heads
    return {"logits": logits, "cls_logits": cls_logits, "distillation_logits": distillation_logits}


def masked_image_modeling(p, x, cfg, K, rec, prefix):
    """ViT/DeiTForMaskedImageModeling (SimMIM): patch tokens to a grid, 1×1 conv, PixelShuffle -> (B, Cin, H, W).

    Quirk reproduced: the grid is taken as square, side = floor(sqrt(num patch tokens)), whatever the input shape.
    """
    num_special = 2 if cfg.model_type == "deit" else 1
    tokens = x[:, num_special:]                                                       # (B, N, C)
    B, N, C = tokens.shape
    side = int(np.floor(N ** 0.5))
    if side * side != N:
        raise InputError(f"masked image modeling: {N} patch tokens do not form the square grid transformers assumes")
    grid = np.ascontiguousarray(tokens.transpose(0, 2, 1)).reshape(B, C, side, side)  # (B, C, h, w)
    y = rec("decoder.0", conv1x1(grid, p["decoder"][0]))                              # (B, stride²·Cin, h, w)
    return {"reconstruction": rec("decoder", pixel_shuffle(y, cfg.encoder_stride))}    # (B, Cin, h·s, w·s)


# ----------------------------------------------------------------------------------------------------------------------
# Architectures: the transformers classes this file runs


def model_forward(head, prefix: str, name: str):
    """The forward of one class: input checks, base model (`ViTModel.forward`), then the head (None: base model)."""
    def forward(p, pixel_values, cfg, K, rec, opts):
        B, _, height, width = pixel_values.shape
        if height < cfg.patch_size[0] or width < cfg.patch_size[1]:
            raise InputError(f"pixel_values: image {height}x{width} is smaller than one patch {cfg.patch_size}")
        base_p = p[prefix[:-1]] if prefix else p
        num_patches = (height // cfg.patch_size[0]) * (width // cfg.patch_size[1])
        mask = check_mask(opts.bool_masked_pos, B, num_patches, "mask_token" in base_p["embeddings"], name)
        if mask is not None and name == "ViTForMaskedImageModeling" and cfg.patch_size[0] != cfg.encoder_stride:
            raise InputError(f"bool_masked_pos: patch_size {cfg.patch_size[0]} must equal encoder_stride "
                             f"{cfg.encoder_stride} (as transformers requires)")
        base = base_forward(base_p, pixel_values, cfg, K, rec, prefix, mask, opts.interpolate_pos_encoding,
                            opts.output_hidden_states, opts.output_attentions)
        if head is None:
            return base
        return {**head(p, base["last_hidden_state"], cfg, K, rec, prefix),
                "hidden_states": base["hidden_states"], "attentions": base["attentions"]}
    return forward


def parse_config(family: str):
    def parse(raw: dict, source: str = "config.json"):
        return dataclasses.replace(vit_config_from_dict(raw, source), model_type=family)
    return parse


def architecture(name, family, head, head_shapes, output, uses_mask_token=False):
    """One ViT/DeiT class: base tensors (+ mask token) under `family.` for heads, then the head's own tensors."""
    num_special = 2 if family == "deit" else 1
    prefix = "" if head is None else f"{family}."

    def shapes(cfg):
        s = {**base_shapes(cfg, num_special), **(mask_token_shapes(cfg) if uses_mask_token else {})}
        return {**{prefix + k: v for k, v in s.items()}, **head_shapes(cfg)}

    def optional_groups(cfg):  # a base model runs its pooler / mask token only when the checkpoint has them
        return [pooler_shapes(cfg), mask_token_shapes(cfg)] if head is None else []

    return Architecture(name=name, family=family, is_base=head is None, base_prefix=f"{family}.",
                        parse_config=parse_config(family), shapes=shapes, forward=model_forward(head, prefix, name),
                        output=output, optional_groups=optional_groups, prepare=classic_names,
                        default_groups=(0,) if head is None else ())  # ViTModel builds its pooler by default


def no_head_shapes(cfg):
    return {}


def classifier_head_shapes(cfg):
    return classifier_shapes(cfg, "classifier")


def teacher_head_shapes(cfg):
    return {**classifier_shapes(cfg, "cls_classifier"), **classifier_shapes(cfg, "distillation_classifier")}


ARCHITECTURES = [
    architecture("ViTModel", "vit", None, no_head_shapes, BaseModelOutputWithPooling),
    architecture("ViTForImageClassification", "vit", image_classification, classifier_head_shapes, ImageClassifierOutput),
    architecture("ViTForMaskedImageModeling", "vit", masked_image_modeling, decoder_shapes, MaskedImageModelingOutput,
                 uses_mask_token=True),
    architecture("DeiTModel", "deit", None, no_head_shapes, BaseModelOutputWithPooling),
    architecture("DeiTForImageClassification", "deit", image_classification, classifier_head_shapes, ImageClassifierOutput),
    architecture("DeiTForImageClassificationWithTeacher", "deit", image_classification_with_teacher, teacher_head_shapes,
                 DeiTForImageClassificationWithTeacherOutput),
    architecture("DeiTForMaskedImageModeling", "deit", masked_image_modeling, decoder_shapes, MaskedImageModelingOutput,
                 uses_mask_token=True),
]
BASE_MODELS = {"vit": "ViTModel", "deit": "DeiTModel"}          # model_type -> base class, when config has no architectures
CLASSIFIERS = {"vit": "ViTForImageClassification", "deit": "DeiTForImageClassification"}
