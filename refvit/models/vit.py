"""ViT and DeiT forward passes, as `transformers/models/vit/modeling_vit.py` and `.../deit/modeling_deit.py` (5.23).

Papers: Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words" (ViT); Touvron et al. 2020, "Training data-efficient
image transformers & distillation through attention" (DeiT). DeiT is ViT plus a distillation token next to the
class token (and +1 position embedding for it); its heads read token 0 (class) and token 1 (distillation).

Params trees use the checkpoint's names (docs/DESIGN.md §4):
`p["encoder"]["layer"][3]["attention"]["attention"]["query"]`.
Intermediates are recorded under the same names (`deit.encoder.layer.3.attention.output`).
Shapes: B batch, N tokens, C channels (hidden_size), H heads, D head dim, h/w patch grid.
"""

from __future__ import annotations

import numpy as np

from .architecture import Architecture, Family, Head, Inputs, check_mask
from ..config import DeiTConfig, ViTConfig, vit_config_from_dict
from ..errors import InputError
from ..outputs import (BaseModelOutputWithPooling, DeiTForImageClassificationWithTeacherOutput, ImageClassifierOutput,
                       MaskedImageModelingOutput)
from .common import classifier_or_identity, classifier_shapes, fuse_qkv, pixel_shuffle, rename_modules

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
    return {"pooler.dense.weight": (cfg.pooler_output_size, cfg.hidden_size),
            "pooler.dense.bias": (cfg.pooler_output_size,)}


def mask_token_shapes(cfg) -> dict[str, tuple]:
    return {"embeddings.mask_token": (1, 1, cfg.hidden_size)}


def decoder_shapes(cfg) -> dict[str, tuple]:
    """MIM decoder: Conv2d(hidden, encoder_stride² · num_channels, kernel 1) then PixelShuffle(encoder_stride)."""
    out = cfg.encoder_stride ** 2 * cfg.num_channels
    return {"decoder.0.weight": (out, cfg.hidden_size, 1, 1), "decoder.0.bias": (out,)}


# transformers 5 renamed modules inside ViT/DeiT; `save_pretrained` converts back to the classic names, but a
# `torch.save(model.state_dict())` of a 5.x model holds the new ones. Loading renames them to the classic names.
# The encoder layer's own modules (BEiT's layer was renamed alike: models/beit.py uses these rows too).
LAYER_RENAMED_IN_TRANSFORMERS_5 = [
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]
RENAMED_IN_TRANSFORMERS_5 = [(r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2."), *LAYER_RENAMED_IN_TRANSFORMERS_5]


def classic_names(tensors: dict) -> dict:
    """Rename transformers-5 internal module names (`layers.3.attention.q_proj`) to checkpoint names."""
    return rename_modules(tensors, RENAMED_IN_TRANSFORMERS_5)


# ----------------------------------------------------------------------------------------------------------------------
# Embeddings


def patchify(pixel_values, patch_size):
    """(B, Cin, H, W) -> the flattened patches (B, N, Cin·ph·pw), row by row, and the grid (h, w); a strided
    conv floors, so pixels past the last whole patch are dropped."""
    B, Cin, height, width = pixel_values.shape
    ph, pw = patch_size
    h, w = height // ph, width // pw
    x = pixel_values[:, :, :h * ph, :w * pw].reshape(B, Cin, h, ph, w, pw)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(B, h * w, Cin * ph * pw), (h, w)   # (B, N, Cin·ph·pw)


def patch_embeddings(ctx, pixel_values):
    """ViTPatchEmbeddings: Conv2d(kernel = stride = patch) as one GEMM (kernels.linear) over the flattened patches
    -> (B, N, C) and the grid (h, w). ctx is at `…embeddings.patch_embeddings`."""
    x, grid = patchify(pixel_values, ctx.cfg.patch_size)                             # (B, N, Cin·ph·pw)
    proj = ctx.param("projection")
    W = proj["weight"].reshape(proj["weight"].shape[0], x.shape[-1])                  # (C, Cin·ph·pw)
    return ctx.kernels.linear(x, W, proj["bias"]), grid                              # (B, N, C)


def mask_patches(x, mask_token, bool_masked_pos):
    """Replace masked patch embeddings by the mask token: x·(1 − m) + t·m, the same arithmetic as transformers."""
    m = bool_masked_pos.astype(x.dtype)[:, :, None]                                  # (B, N, 1)
    return x * (1 - m) + mask_token * m


def interpolate_position_embeddings(kernels, pos, num_special, cfg, height, width):
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
    grid = kernels.interpolate_bicubic(np.ascontiguousarray(grid), new_h, new_w)     # (C, new_h, new_w)
    grid = grid.transpose(1, 2, 0).reshape(1, new_h * new_w, -1)                     # (1, N, C)
    return np.concatenate([pos[:, :num_special], grid], axis=1)


def position_embeddings(ctx, num_special, height, width, interpolate):
    """The (possibly interpolated) position embeddings; without interpolation the input must be the config's size."""
    pos, cfg = ctx.param("position_embeddings"), ctx.cfg
    if interpolate:
        return interpolate_position_embeddings(ctx.kernels_named("interpolate_pos_encoding"), pos, num_special, cfg,
                                               height, width)
    if (height, width) != tuple(cfg.image_size):
        raise InputError(f"pixel_values: input image size ({height}*{width}) doesn't match model "
                         f"({cfg.image_size[0]}*{cfg.image_size[1]}); pass interpolate_pos_encoding=True to resize "
                         "the position embeddings")
    return pos


def embeddings(ctx, inputs):
    """ViTEmbeddings / DeiTEmbeddings: patches (+ mask tokens), then [CLS] (DeiT: [CLS], [DIST]) in front, then
    position embeddings -> (B, 1 + N, C) (DeiT: (B, 2 + N, C))."""
    B, _, height, width = inputs.pixel_values.shape
    x, _ = patch_embeddings(ctx.at("patch_embeddings"), inputs.pixel_values)         # (B, N, C)
    if inputs.mask is not None:
        x = mask_patches(x, ctx.param("mask_token"), inputs.mask)
    special = ["cls_token", "distillation_token"] if ctx.cfg.model_type == "deit" else ["cls_token"]
    tokens = [np.broadcast_to(ctx.param(t), (B, 1, ctx.cfg.hidden_size)) for t in special]
    x = np.concatenate([*tokens, x], axis=1)                                          # (B, special + N, C)
    return x + position_embeddings(ctx, len(special), height, width, inputs.interpolate)


# ----------------------------------------------------------------------------------------------------------------------
# Encoder


def self_attention(ctx, x, need_probs):
    """ViTSelfAttention: q, k, v projections (one GEMM, weights concatenated at load), softmax(q kᵀ · D^-½) v per
    head (fused kernel) -> (B, N, C)."""
    q, k, v = ctx.linear_qkv(x)                                                       # (B, N, C) each
    cfg = ctx.cfg
    context, probs = ctx.kernels.attention(q, k, v, cfg.num_attention_heads, cfg.head_dim ** -0.5,
                                           need_probs=need_probs)
    return ctx.record_output(context), probs                                             # (B, N, C), (B, H, N, N)


def layer(ctx, x, need_probs=False):
    """ViTLayer: pre-norm attention and MLP blocks, each added to its residual."""
    if ctx.workspace is not None and ctx.cfg.hidden_act == "gelu" and x.shape[0] >= FUSED_FROM_BATCH:
        fused = fused_layer(ctx, x, need_probs)
        if fused is not None:
            return fused
    h = ctx.layer_norm("layernorm_before", x)
    h, probs = self_attention(ctx.at("attention.attention"), h, need_probs)
    x = x + ctx.record("attention.output", ctx.linear("attention.output.dense", h, record=False))
    h = ctx.layer_norm("layernorm_after", x)
    h = ctx.record("intermediate", ctx.linear_act("intermediate.dense", h, ctx.cfg.hidden_act, record=False))
    x = ctx.record("output", ctx.linear("output.dense", h, record=False) + x)        # ViTOutput adds the residual
    return ctx.record_output(x), probs


FUSED_FROM_BATCH = 2   # a single image runs the modules one by one: the fused blocks measured 1-3% more CPU time
                       # there, and have no page faults to save at that size (docs/speed.md, "Small models")


def fused_layer(ctx, x, need_probs, bias=None, beit=False):
    """`layer` as two kernel calls (the Numba backend: `ctx.workspace` set): the attention block and the MLP block,
    the same arithmetic as the modules one by one (refvit/kernels/encoder.py), recorded under the same names in the
    same order. None where the weights do not allow it (q, k, v not fused at load), then `layer` runs as written.
    BeitLayer (`beit`): attention's relative position `bias`, the layer scales λ1 and λ2 where the checkpoint has
    them, and `output` recorded before λ2 and the residual (BeitOutput adds none)."""
    qkv = ctx.at("attention.attention").qkv_params()
    if qkv is None:
        return None
    cfg, ln1, out = ctx.cfg, ctx.param("layernorm_before"), ctx.param("attention.output.dense")
    lam1, lam2 = ((ctx.param(k) if ctx.has(k) else None) if beit else None for k in ("lambda_1", "lambda_2"))
    a = ctx.kernels.attention_block(x, ln1["weight"], ln1["bias"], cfg.layer_norm_eps, *qkv, out["weight"],
                                    out["bias"], cfg.num_attention_heads, cfg.head_dim ** -0.5,
                                    need_probs=need_probs, workspace=ctx.workspace, bias=bias, layer_scale=lam1)
    if ctx.recording:
        ctx.record("layernorm_before", a.ln)
        C = a.context.shape[-1]
        for i, name in enumerate(("query", "key", "value")):
            ctx.record(f"attention.attention.{name}", a.qkv[..., i * C:(i + 1) * C])
        ctx.record("attention.attention", a.context)
        ctx.record("attention.output", a.proj)
    ln2, fc1, fc2 = ctx.param("layernorm_after"), ctx.param("intermediate.dense"), ctx.param("output.dense")
    m = ctx.kernels.mlp_block(a.out, ln2["weight"], ln2["bias"], cfg.layer_norm_eps, fc1["weight"], fc1["bias"],
                              fc2["weight"], fc2["bias"], workspace=ctx.workspace, layer_scale=lam2)
    ctx.record("layernorm_after", m.ln)
    ctx.record("intermediate", m.hidden)
    ctx.record("output", m.fc2 if beit else m.out)
    return ctx.record_output(m.out), a.probs


def base_forward(ctx, inputs):
    """ViTModel/DeiTModel.forward: embeddings, encoder layers, final LayerNorm, optional pooler.

    hidden_states[0] is the embedding output, hidden_states[i] the output of layer i-1 (before the final LayerNorm).
    """
    x = ctx.record("embeddings", embeddings(ctx.at("embeddings"), inputs))
    hidden_states, attentions = [x], []
    for i in range(ctx.cfg.num_hidden_layers):
        x, probs = layer(ctx.at(f"encoder.layer.{i}"), x, inputs.output_attentions)
        hidden_states.append(x)
        attentions.append(probs)
    x = ctx.layer_norm("layernorm", x)
    pooled = pooler(ctx.at("pooler"), x) if ctx.has("pooler") else None
    return {"last_hidden_state": x, "pooler_output": pooled, "hidden_states": tuple(hidden_states),
            "attentions": tuple(attentions)}


def pooler(ctx, x):
    """ViTPooler: dense + activation (tanh by default) on the first token."""
    return ctx.record_output(ctx.act(ctx.cfg.pooler_act, ctx.linear("dense", x[:, 0], record=False)))


# ----------------------------------------------------------------------------------------------------------------------
# Heads: head(ctx, base, inputs) -> output fields, ctx at the top of the checkpoint


def image_classification(ctx, base, inputs):
    """ViTForImageClassification / DeiTForImageClassification: classifier on the [CLS] token of the final LayerNorm."""
    return {"logits": classifier_or_identity(ctx, "classifier", base["last_hidden_state"][:, 0])}


def image_classification_with_teacher(ctx, base, inputs):
    """DeiTForImageClassificationWithTeacher: class head on token 0, distillation head on token 1, logits = mean."""
    x = base["last_hidden_state"]
    cls_logits = classifier_or_identity(ctx, "cls_classifier", x[:, 0])
    distillation_logits = classifier_or_identity(ctx, "distillation_classifier", x[:, 1])
    logits = (cls_logits + distillation_logits) / 2                                   # inference: average both heads
    return {"logits": logits, "cls_logits": cls_logits, "distillation_logits": distillation_logits}


def masked_image_modeling(ctx, base, inputs):
    """ViT/DeiTForMaskedImageModeling (SimMIM): patch tokens to a grid, 1×1 conv, PixelShuffle -> (B, Cin, H, W).

    Quirk reproduced: the grid is taken as square, side = floor(sqrt(num patch tokens)), whatever the input shape.
    """
    cfg = ctx.cfg
    tokens = base["last_hidden_state"][:, num_special_tokens(cfg):]                   # (B, N, C)
    B, N, C = tokens.shape
    side = int(np.floor(N ** 0.5))
    if side * side != N:
        raise InputError(f"masked image modeling: {N} patch tokens do not form the square grid transformers assumes")
    grid = np.ascontiguousarray(tokens.transpose(0, 2, 1)).reshape(B, C, side, side)  # (B, C, h, w)
    y = ctx.conv2d("decoder.0", grid)                                                 # (B, stride²·Cin, h, w)
    return {"reconstruction": ctx.record("decoder", pixel_shuffle(y, cfg.encoder_stride))}  # (B, Cin, h·s, w·s)


# ----------------------------------------------------------------------------------------------------------------------
# Architectures: the transformers classes this file runs


def num_special_tokens(cfg) -> int:
    """[CLS] (ViT), [CLS] + [DIST] (DeiT)."""
    return 2 if cfg.model_type == "deit" else 1


def check(arch, cfg, p, pixel_values, opts):
    """A call's checks: at least one patch, a mask only with a mask token (ViT's MIM: patch size = encoder stride)."""
    B, _, height, width = pixel_values.shape
    if height < cfg.patch_size[0] or width < cfg.patch_size[1]:
        raise InputError(f"pixel_values: image {height}x{width} is smaller than one patch {cfg.patch_size}")
    num_patches = (height // cfg.patch_size[0]) * (width // cfg.patch_size[1])
    mask = check_mask(opts.bool_masked_pos, B, num_patches, "mask_token" in p["embeddings"], arch.name)
    mim = arch.head is not None and arch.head.kind == "mim"
    if mask is not None and mim and arch.family == "vit" and cfg.patch_size[0] != cfg.encoder_stride:
        raise InputError(f"bool_masked_pos: patch_size {cfg.patch_size[0]} must equal encoder_stride "
                         f"{cfg.encoder_stride} (as transformers requires)")
    return Inputs(pixel_values, arch.name, mask, opts.interpolate_pos_encoding, opts.output_attentions)


def parse_config(raw: dict, source: str, arch):
    cfg = vit_config_from_dict(raw, source)  # the class's family decides the code (a ViT config may run as DeiT)
    return cfg if cfg.model_type == arch.family else cfg.replace(DeiTConfig if arch.family == "deit" else ViTConfig,
                                                                  model_type=arch.family)


def shapes(cfg, arch) -> dict:
    """The base model's tensors (+ the mask token for MIM)."""
    s = base_shapes(cfg, num_special_tokens(cfg))
    return {**s, **mask_token_shapes(cfg)} if arch.head is not None and arch.head.kind == "mim" else s


def optional_groups(cfg, arch) -> list:
    """A base model runs its pooler / mask token only when the checkpoint has them."""
    return [pooler_shapes(cfg), mask_token_shapes(cfg)] if arch.head is None else []


def classifier_head_shapes(cfg):
    return classifier_shapes("classifier", cfg.num_labels, cfg.hidden_size)


def teacher_head_shapes(cfg):
    return {**classifier_shapes("cls_classifier", cfg.num_labels, cfg.hidden_size),
            **classifier_shapes("distillation_classifier", cfg.num_labels, cfg.hidden_size)}


def family(prefix):
    return Family(prefix=prefix, parse_config=parse_config, shapes=shapes, check=check, forward=base_forward,
                  optional_groups=optional_groups, before_mapping=lambda tensors, arch: classic_names(tensors),
                  after_cast=fuse_qkv,
                  default_groups=lambda arch: (0,) if arch.head is None else ())  # ViTModel builds its pooler


VIT, DEIT = family("vit."), family("deit.")
CLASSIFICATION = Head("classification", image_classification, classifier_head_shapes)
TEACHER = Head("teacher", image_classification_with_teacher, teacher_head_shapes)
MIM = Head("mim", masked_image_modeling, decoder_shapes)

# Data rows, one per transformers class: Architecture(name, model_type, base model, head, transformers' output class)
ARCHITECTURES = [
    # ViT
    Architecture("ViTModel", "vit", VIT, None, BaseModelOutputWithPooling),
    Architecture("ViTForImageClassification", "vit", VIT, CLASSIFICATION, ImageClassifierOutput),
    Architecture("ViTForMaskedImageModeling", "vit", VIT, MIM, MaskedImageModelingOutput),
    # DeiT: ViT with a distillation token
    Architecture("DeiTModel", "deit", DEIT, None, BaseModelOutputWithPooling),
    Architecture("DeiTForImageClassification", "deit", DEIT, CLASSIFICATION, ImageClassifierOutput),
    Architecture("DeiTForImageClassificationWithTeacher", "deit", DEIT, TEACHER,
                 DeiTForImageClassificationWithTeacherOutput),
    Architecture("DeiTForMaskedImageModeling", "deit", DEIT, MIM, MaskedImageModelingOutput),
]
