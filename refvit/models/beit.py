"""BEiT and data2vec-vision forward passes, as `transformers/models/beit/modeling_beit.py` and
`transformers/models/data2vec/modeling_data2vec_vision.py` (5.23).

Papers: Bao et al. 2021, "BEiT: BERT Pre-Training of Image Transformers"; Baevski et al. 2022, "data2vec: A General
Framework for Self-supervised Learning in Speech, Vision and Language" (the same network, other pre-training). A ViT
whose key projection has no bias, whose attention scores get a learned *relative position bias* (per layer or one
shared table), whose residual branches are scaled per channel (layer scale, lambda_1 / lambda_2), and whose pooler
averages the patch tokens. Heads: image classification, masked image modeling over a visual-token vocabulary,
semantic segmentation (UperNet: FPN + pyramid pooling, Xiao et al. 2018, and an FCN auxiliary head) and a backbone.

Params trees and intermediates use the checkpoint's names (docs/DESIGN.md §4): `beit.encoder.layer.3.attention.attention
.relative_position_bias` is the (1, H, N, N) bias of layer 3, `decode_head.bottleneck` the pyramid-pooling
bottleneck. transformers 5 renamed BEiT's modules (`layers.3.attention.q_proj`, `shared_position_bias`,
`fpn.fpn1.conv_transpose1`, `psp_modules.blocks.0.conv.convolution` …) but `save_pretrained` writes the classic names;
data2vec-vision kept its module names, so its segmentation head's checkpoint names differ from BEiT's (`HeadNames`).

Load-time preparation (`prepare_tensors`, run through Family.before_mapping on the flat checkpoint tensors): every
BatchNorm (eval mode) is folded into the convolution before it, once, in float64 (`common.fold_batch_norms`,
docs/DESIGN.md §4).
Shapes: B batch, N tokens, C channels (hidden_size), H heads, D head dim, h/w patch grid (or feature-map size).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .architecture import Architecture, Family, Head, Inputs, check_mask
from ..config import BeitConfig, beit_config_from_dict  # noqa: F401 (BeitConfig: the family's config)
from ..errors import InputError
from ..outputs import (BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput, MaskedLMOutput,
                       SemanticSegmenterOutput)
from .common import (BN_EPS, classifier_or_identity, classifier_shapes,  # noqa: F401 (fold_batch_norm: API)
                     fold_batch_norm, fold_batch_norms, fuse_qkv, rename_modules)
from .vit import (FUSED_FROM_BATCH, LAYER_RENAMED_IN_TRANSFORMERS_5, fused_layer, interpolate_position_embeddings,
                  mask_patches, patch_embeddings)


# ----------------------------------------------------------------------------------------------------------------------
# What a checkpoint holds, per architecture (checkpoint names, shapes derived from the config)


@dataclass(frozen=True)
class HeadNames:
    """Checkpoint names inside the segmentation head: BEiT saves the classic ones, data2vec-vision its own."""

    conv: str            # the convolution of a conv module
    bn: str              # its BatchNorm
    bottleneck: str      # the pyramid-pooling bottleneck, under decode_head
    psp: str             # pyramid-pooling block i's conv module, under decode_head ({i})
    pool: str            # pyramid-pooling block i's adaptive average pool, under decode_head ({i}; no tensors)


# BeitUperHead reads 4 feature maps (in_channels = [hidden_size] * 4): a lateral and an fpn conv for each but the last,
# which goes through the pyramid pooling
UPER_LATERALS = 3
HEAD_NAMES = {"beit": HeadNames("conv", "bn", "bottleneck", "psp_modules.{i}.1", "psp_modules.{i}.0"),
              "data2vec-vision": HeadNames("convolution", "normalization", "psp_bottleneck",
                                           "psp_modules.blocks.{i}.conv", "psp_modules.blocks.{i}.pooling")}


def table_shape(cfg) -> tuple:
    """relative_position_bias_table: (2h - 1)(2w - 1) relative offsets + 3 class-token entries, one column per head."""
    h, w = cfg.grid_size
    return ((2 * h - 1) * (2 * w - 1) + 3, cfg.num_attention_heads)


def base_shapes(cfg, shared_table_name="encoder.relative_position_bias.relative_position_bias_table") -> dict:
    """Tensors of BeitModel / Data2VecVisionModel without the pooler (checkpoint names, no model prefix)."""
    C, I, (ph, pw) = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    s = {"embeddings.cls_token": (1, 1, C),
         "embeddings.patch_embeddings.projection.weight": (C, cfg.num_channels, ph, pw),
         "embeddings.patch_embeddings.projection.bias": (C,)}
    if cfg.use_mask_token:
        s["embeddings.mask_token"] = (1, 1, C)
    if cfg.use_absolute_position_embeddings:
        s["embeddings.position_embeddings"] = (1, cfg.num_patches + 1, C)
    if cfg.use_shared_relative_position_bias:
        s[shared_table_name] = table_shape(cfg)
    for i in range(cfg.num_hidden_layers):
        L = f"encoder.layer.{i}."
        s.update({L + "attention.attention.query.weight": (C, C), L + "attention.attention.query.bias": (C,),
                  L + "attention.attention.key.weight": (C, C),  # the key projection has no bias
                  L + "attention.attention.value.weight": (C, C), L + "attention.attention.value.bias": (C,),
                  L + "attention.output.dense.weight": (C, C), L + "attention.output.dense.bias": (C,),
                  L + "intermediate.dense.weight": (I, C), L + "intermediate.dense.bias": (I,),
                  L + "output.dense.weight": (C, I), L + "output.dense.bias": (C,),
                  L + "layernorm_before.weight": (C,), L + "layernorm_before.bias": (C,),
                  L + "layernorm_after.weight": (C,), L + "layernorm_after.bias": (C,)})
        if cfg.use_relative_position_bias:
            s[L + "attention.attention.relative_position_bias.relative_position_bias_table"] = table_shape(cfg)
        if cfg.layer_scale_init_value > 0:
            s[L + "lambda_1"], s[L + "lambda_2"] = (C,), (C,)
    if not cfg.use_mean_pooling:  # mean pooling makes the final LayerNorm an nn.Identity
        s["layernorm.weight"], s["layernorm.bias"] = (C,), (C,)
    return s


def pooler_shapes(cfg) -> dict:
    """BeitPooler: a LayerNorm for mean pooling; [CLS] pooling has no weights."""
    C = cfg.hidden_size
    return {"pooler.layernorm.weight": (C,), "pooler.layernorm.bias": (C,)} if cfg.use_mean_pooling else {}


def classification_shapes(cfg) -> dict:
    """`classifier`: nn.Linear(hidden, num_labels), nn.Identity when num_labels == 0."""
    return classifier_shapes("classifier", cfg.num_labels, cfg.hidden_size)


def mim_shapes(cfg) -> dict:
    """BeitForMaskedImageModeling: LayerNorm, then Linear(hidden, vocab_size)."""
    C, V = cfg.hidden_size, cfg.vocab_size
    return {"layernorm.weight": (C,), "layernorm.bias": (C,), "lm_head.weight": (V, C), "lm_head.bias": (V,)}


def batch_norm_shapes(name, channels) -> dict:
    s = {f"{name}.{k}": (channels,) for k in ("weight", "bias", "running_mean", "running_var")}
    s[f"{name}.num_batches_tracked"] = ()
    return s


def conv_module_shapes(name, cin, cout, kernel, names: HeadNames) -> dict:
    """BeitConvModule: Conv2d(bias=False) + BatchNorm2d (+ ReLU)."""
    return {f"{name}.{names.conv}.weight": (cout, cin, kernel, kernel), **batch_norm_shapes(f"{name}.{names.bn}", cout)}


def fpn_shapes(cfg) -> dict:
    """fpn1 = ConvTranspose(2, 2) + BatchNorm + GELU + ConvTranspose(2, 2); fpn2 = ConvTranspose(2, 2);
    fpn4: max-pool."""
    C = cfg.hidden_size
    s = {}
    for name in ("fpn1.0", "fpn1.3", "fpn2.0"):
        s[f"{name}.weight"], s[f"{name}.bias"] = (C, C, 2, 2), (C,)  # ConvTranspose2d weight: (Cin, Cout, kh, kw)
    return {**s, **batch_norm_shapes("fpn1.1", C)}


def segmentation_shapes(cfg) -> dict:
    """FPN, UperNet decode head (4 inputs of hidden_size channels, hidden_size inside) and the FCN auxiliary head."""
    C, L, A = cfg.hidden_size, cfg.num_labels, cfg.auxiliary_channels
    n = HEAD_NAMES[cfg.model_type]
    s = {**fpn_shapes(cfg), "decode_head.classifier.weight": (L, C, 1, 1), "decode_head.classifier.bias": (L,)}
    for i in range(len(cfg.pool_scales)):
        s.update(conv_module_shapes("decode_head." + n.psp.format(i=i), C, C, 1, n))
    s.update(conv_module_shapes(f"decode_head.{n.bottleneck}", C + len(cfg.pool_scales) * C, C, 3, n))
    for i in range(UPER_LATERALS):
        s.update(conv_module_shapes(f"decode_head.lateral_convs.{i}", C, C, 1, n))
        s.update(conv_module_shapes(f"decode_head.fpn_convs.{i}", C, C, 3, n))
    s.update(conv_module_shapes("decode_head.fpn_bottleneck", 4 * C, C, 3, n))
    if cfg.use_auxiliary_head:
        for j in range(cfg.auxiliary_num_convs):
            s.update(conv_module_shapes(f"auxiliary_head.convs.{j}", C if j == 0 else A, A, 3, n))
        if cfg.auxiliary_concat_input:
            s.update(conv_module_shapes("auxiliary_head.conv_cat", C + A, A, 3, n))
        s["auxiliary_head.classifier.weight"], s["auxiliary_head.classifier.bias"] = (L, A, 1, 1), (L,)
    return s


def backbone_shapes(cfg) -> dict:
    return fpn_shapes(cfg) if cfg.add_fpn else {}


# ----------------------------------------------------------------------------------------------------------------------
# Loading: transformers-5 state-dict names back to checkpoint names, then BatchNorm folding (once, at load)


# transformers 5 renamed BEiT's modules; `save_pretrained` converts back to the classic names, but a
# `torch.save(model.state_dict())` of a 5.x model holds the new ones (conversion_mapping.py, reversed).
RENAMED_IN_TRANSFORMERS_5 = [
    (r"(^|\.)layers\.(\d+)\.relative_position_bias\.",
     r"\1encoder.layer.\2.attention.attention.relative_position_bias."),
    (r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2."),
    (r"(^|\.)shared_position_bias\.", r"\1encoder.relative_position_bias."),
    *LAYER_RENAMED_IN_TRANSFORMERS_5,  # the layer's q/k/v/o and MLP, renamed as in ViT
    (r"^fpn\.fpn1\.conv_transpose1\.", "fpn1.0."),
    (r"^fpn\.fpn1\.normalization\.", "fpn1.1."),
    (r"^fpn\.fpn1\.conv_transpose2\.", "fpn1.3."),
    (r"^fpn\.fpn2\.", "fpn2.0."),
    (r"^decode_head\.psp_bottleneck\.", "decode_head.bottleneck."),
    (r"^decode_head\.psp_modules\.blocks\.(\d+)\.conv\.", r"decode_head.psp_modules.\1.1."),
    (r"^((?:decode|auxiliary)_head\..+)\.convolution\.", r"\1.conv."),
    (r"^((?:decode|auxiliary)_head\..+)\.normalization\.", r"\1.bn."),
]


def classic_names(tensors: dict) -> dict:
    """Rename transformers-5 internal module names (`beit.layers.3.attention.q_proj`) to checkpoint names."""
    return rename_modules(tensors, RENAMED_IN_TRANSFORMERS_5)


def batch_norm_pairs(tensors: dict, names: HeadNames) -> list:
    """(BatchNorm, conv, axis) of every BatchNorm in the segmentation head / FPN: conv modules (`….{bn}` after
    `….{conv}`, a Conv2d without bias) and fpn1 (ConvTranspose2d `fpn1.0` with a bias, then BatchNorm `fpn1.1`)."""
    pairs = []
    for name in tensors:
        bn = name[: -len(".running_var")] if name.endswith(".running_var") else None
        if bn == "fpn1.1":
            pairs.append((bn, "fpn1.0", 1))
        elif bn is not None and bn.endswith("." + names.bn):
            pairs.append((bn, bn[: -len(names.bn)] + names.conv, 0))
    return pairs


def prepare_tensors(tensors: dict, arch) -> dict:
    """Family.before_mapping for a BEiT / data2vec-vision class: checkpoint names, then the BatchNorm folding."""
    t = classic_names(tensors) if arch.family == "beit" else dict(tensors)
    if arch.head is not None and arch.head.base_at_top and any(k.startswith(("embeddings.", "fpn1.", "fpn2."))
                                                                for k in t):
        # quirk: BeitBackbone.save_pretrained writes its base at the top level (`embeddings.*`,
        # `encoder.layer.*`) but the shared table as `beit.encoder.relative_position_bias.…`; the classic
        # (transformers 4) name has no prefix. Both load, as in transformers.
        t = {k[len("beit."):] if k.startswith("beit.") else k: v for k, v in t.items()}
    # every BatchNorm (eval) folded into the convolution before it, once, in float64: fpn1.1 into fpn1.0 (which keeps
    # the shift as its bias; fpn1.1 becomes an identity the forward skips), each conv module's bn into its conv
    return fold_batch_norms(t, batch_norm_pairs(t, HEAD_NAMES[arch.family]), BN_EPS, np.float64)


# ----------------------------------------------------------------------------------------------------------------------
# Embeddings and the relative position bias


def embeddings(ctx, inputs):
    """BeitEmbeddings: patches (+ mask tokens), [CLS] in front, then (optionally) absolute position embeddings.

    Quirk reproduced: the position embeddings go through `interpolate_pos_encoding` on *every* call, whatever the
    flag: inputs of another size get resized (bicubic) embeddings without it, and so does a non-square input of the
    configured size (same patch count, but height != width), as in ViT's interpolation.
    """
    B, _, height, width = inputs.pixel_values.shape
    x, _ = patch_embeddings(ctx.at("patch_embeddings"), inputs.pixel_values)          # (B, N, C)
    if inputs.mask is not None:
        x = mask_patches(x, ctx.param("mask_token"), inputs.mask)                     # x·(1 − m) + t·m
    cls = np.broadcast_to(ctx.param("cls_token"), (B, 1, ctx.cfg.hidden_size))
    x = np.concatenate([cls, x], axis=1)                                              # (B, 1 + N, C)
    if ctx.has("position_embeddings"):
        x = x + interpolate_position_embeddings(ctx.kernels_named("interpolate_pos_encoding"),
                                                ctx.param("position_embeddings"), 1, ctx.cfg, height, width)
    return x


@lru_cache(maxsize=16)
def relative_position_index(index_kernel, window: tuple) -> np.ndarray:
    """The (N+1, N+1) index of a window, cached like transformers' `lru_cache` on generate_relative_position_index."""
    return index_kernel(*window)


def resize_relative_table(table, cfg, window, kernels):
    """BeitRelativePositionBias.forward, first half: the grid part of the table bilinearly resized to `window`.

    Quirk reproduced: the (2h−1)(2w−1) grid rows are reshaped as (2w−1, 2h−1) — width first — before resizing to
    (2h'−1, 2w'−1), on every call. For a square window of the configured size this is the identity; for a non-square
    one it rearranges the table even at the configured size. The 3 class-token rows are kept as they are.

    Skipped where it is the identity: when the (2w−1, 2h−1) reading already has the new size, every axis is
    "simply copied" (weights 1 and 0 on one tap), out = x·1 + x·0, which is x bit for bit for every finite x (x·0 is
    a zero of x's sign, and x + that zero is x, −0 included); then the table itself is returned (tested bit for bit
    against the resize, tests/test_beit.py). A non-finite table takes the resize (inf·0 is NaN there, as before).
    """
    old_h, old_w = 2 * cfg.grid_size[0] - 1, 2 * cfg.grid_size[1] - 1
    new_h, new_w = 2 * window[0] - 1, 2 * window[1] - 1
    if (new_h, new_w) == (old_w, old_h) and is_finite(table):
        return table                                                                   # (T', H), T' = T
    return resize_relative_table_always(table, old_h, old_w, new_h, new_w, kernels)


def is_finite(x) -> bool:
    """Every element finite: where a same-size bilinear resize is the identity bit for bit."""
    return bool(np.isfinite(x).all())


def resize_relative_table_always(table, old_h, old_w, new_h, new_w, kernels):
    """`resize_relative_table`'s resize, run whatever the sizes: the (old_w, old_h) reading of the grid rows of table
    (T, H) bilinearly resized to (new_h, new_w), the class-token rows appended -> (new_h·new_w + 3, H)."""
    H = table.shape[1]
    grid = table[: old_h * old_w].reshape(old_w, old_h, H).transpose(2, 0, 1)          # (H, 2w−1, 2h−1)
    grid = kernels.interpolate_bilinear(np.ascontiguousarray(grid), new_h, new_w)     # (H, 2h'−1, 2w'−1)
    grid = grid.transpose(1, 2, 0).reshape(new_h * new_w, H)                           # (T' − 3, H)
    return np.concatenate([grid, table[old_h * old_w:]], axis=0)                      # (T', H)


def relative_position_bias(ctx, inputs, seq_len):
    """BeitRelativePositionBias: table -> (H, N+1, N+1) bias, bias[h, i, j] = table[index[i, j], h], recorded as
    (1, H, N+1, N+1). With interpolate_pos_encoding the bias is then bilinearly resized to (seq_len, seq_len) — the
    size it already has, so that step is the identity: skipped for a finite bias, as the table's same-size resize
    (`resize_relative_table`), and run for any other (a non-finite bias gets NaN where transformers' does)."""
    table = resize_relative_table(ctx.param("relative_position_bias_table"), ctx.cfg, inputs.grid,
                                  ctx.kernels_named("interpolate_table"))                                  # (T', H)
    index = relative_position_index(ctx.kernels_named("index").relative_position_index, inputs.grid)
    bias = ctx.kernels.relative_position_bias(table, index)                            # (H, N+1, N+1)
    if inputs.interpolate and (bias.shape[1:] != (seq_len, seq_len) or not is_finite(bias)):
        bias = ctx.kernels_named("interpolate").interpolate_bilinear(bias, seq_len, seq_len)
    ctx.record_output(bias[None])                                                        # (1, H, N+1, N+1)
    return bias


# ----------------------------------------------------------------------------------------------------------------------
# Encoder


def self_attention(ctx, x, bias, need_probs):
    """BeitSelfAttention: q, k (no bias), v; softmax(q kᵀ · D^-½ + relative bias) v per head (fused kernel)."""
    q, k, v = ctx.linear_qkv(x)                      # (B, N, C) each: one GEMM, weights concatenated at load
    cfg = ctx.cfg
    context, probs = ctx.kernels.attention(q, k, v, cfg.num_attention_heads, cfg.head_dim ** -0.5, bias=bias,
                                           need_probs=need_probs)
    return ctx.record_output(context), probs                                             # (B, N, C), (B, H, N, N)


def layer_scale(ctx, key, h):
    """lambda_1 · h (layer scale), or h when layer_scale_init_value is 0 (transformers multiplies by 1.0)."""
    return ctx.param(key) * h if ctx.has(key) else h


def layer(ctx, x, bias, need_probs=False):
    """BeitLayer: pre-norm attention and MLP blocks, each scaled per channel (layer scale) and added to its residual."""
    if ctx.workspace is not None and ctx.cfg.hidden_act == "gelu" and x.shape[0] >= FUSED_FROM_BATCH:
        fused = fused_layer(ctx, x, need_probs, bias=bias, beit=True)   # the same arithmetic, two kernel calls
        if fused is not None:
            return fused
    h = ctx.layer_norm("layernorm_before", x)
    h, probs = self_attention(ctx.at("attention.attention"), h, bias, need_probs)
    h = ctx.record("attention.output", ctx.linear("attention.output.dense", h, record=False))
    x = layer_scale(ctx, "lambda_1", h) + x
    h = ctx.layer_norm("layernorm_after", x)
    h = ctx.record("intermediate", ctx.linear_act("intermediate.dense", h, ctx.cfg.hidden_act, record=False))
    h = ctx.record("output", ctx.linear("output.dense", h, record=False))            # BeitOutput: no residual
    return ctx.record_output(layer_scale(ctx, "lambda_2", h) + x), probs


def pooler(ctx, x):
    """BeitPooler: LayerNorm of the mean patch token (use_mean_pooling), else the [CLS] token."""
    if ctx.cfg.use_mean_pooling:
        return ctx.layer_norm("layernorm", x[:, 1:].mean(axis=1), record=False)
    return x[:, 0]


def base_forward(ctx, inputs):
    """BeitModel.forward: embeddings, layers with their relative position biases, final LayerNorm, pooler.

    hidden_states[0] is the embedding output, hidden_states[i] the output of layer i-1 (before the final LayerNorm).
    The shared bias (if any) is added to each layer's own bias (if any) before the scores (5.x sums them first).
    """
    cfg = ctx.cfg
    x = ctx.record("embeddings", embeddings(ctx.at("embeddings"), inputs))
    seq_len = x.shape[1]
    shared = None
    if cfg.use_shared_relative_position_bias:
        shared = relative_position_bias(ctx.at("encoder.relative_position_bias"), inputs, seq_len)
    hidden_states, attentions = [x], []
    for i in range(cfg.num_hidden_layers):
        layer_ctx, bias = ctx.at(f"encoder.layer.{i}"), shared
        if cfg.use_relative_position_bias:
            own = relative_position_bias(layer_ctx.at("attention.attention.relative_position_bias"), inputs, seq_len)
            bias = own if shared is None else shared + own
        x, probs = layer(layer_ctx, x, bias, inputs.output_attentions)
        hidden_states.append(x)
        attentions.append(probs)
    if not cfg.use_mean_pooling:                                                      # else nn.Identity
        x = ctx.layer_norm("layernorm", x, record=False)
    elif ctx.workspace is not None and ctx.workspace.reuses:
        x = x.copy()             # the last layer's output leaves the call as last_hidden_state: not a reused buffer
    x = ctx.record("layernorm", x)
    pooled = ctx.record("pooler", pooler(ctx.at("pooler", optional=True), x)) if inputs.with_pooler else None
    return {"last_hidden_state": x, "pooler_output": pooled, "hidden_states": tuple(hidden_states),
            "attentions": tuple(attentions) if inputs.output_attentions else None}


# ----------------------------------------------------------------------------------------------------------------------
# Convolutional pieces of the segmentation head and the FPN (NCHW)


def conv_module(ctx, x, padding=0):
    """BeitConvModule: Conv2d (no bias) -> BatchNorm2d (eval) -> ReLU, recorded under the module's name. The
    BatchNorm was folded into the conv at load (fold_batch_norms): its scale is in the conv weight, its shift is
    bn.bias, used as the conv's bias."""
    names = HEAD_NAMES[ctx.cfg.model_type]
    y = ctx.conv2d(names.conv, x, padding=(padding,) * 4, bias=ctx.param(names.bn)["bias"], record=False)
    return ctx.record_output(np.maximum(y, 0, out=y))                                    # ReLU


def resize_to(kernels, x, size):
    """F.interpolate(x, size, mode="bilinear", align_corners=False) (a same-size resize copies)."""
    return kernels.interpolate_bilinear(x, size[0], size[1])


def fpn(ctx, features):
    """BeitFPNNeck (classic fpn1 … fpn4): ×4 (ConvT, BN, GELU, ConvT), ×2 (ConvT), identity, ½ (2×2 max-pool).
    Quirk: data2vec-vision applies `ops[i]` to as many maps as its out_indices selected; with 3 there is no fpn4."""
    k, p = ctx.kernels_named, ctx.p                   # each kernel call named by its module (the precision reports)
    # fpn1.0 (ConvTranspose2d) with the BatchNorm fpn1.1 folded into it at load: its output is fpn1.1's
    f1 = ctx.record("fpn1.1", k("fpn1.0").conv_transpose2d(features[0], p["fpn1"][0]["weight"], p["fpn1"][0]["bias"],
                                                           (2, 2)))
    f1 = ctx.record("fpn1.2", k("fpn1.2").gelu(f1))                                   # nn.GELU(): erf form
    f1 = ctx.record("fpn1", k("fpn1.3").conv_transpose2d(f1, p["fpn1"][3]["weight"], p["fpn1"][3]["bias"], (2, 2)))
    f2 = ctx.record("fpn2", k("fpn2.0").conv_transpose2d(features[1], p["fpn2"][0]["weight"], p["fpn2"][0]["bias"],
                                                         (2, 2)))
    if len(features) == 3:                                                            # data2vec-vision only
        return (f1, f2, features[2])
    f4 = ctx.record("fpn4", k("fpn4").max_pool2d(features[3], (2, 2), (2, 2)))         # (B, C, h//2, w//2)
    return (f1, f2, features[2], f4)                                                  # (B, C, 4h, 4w), …


def pyramid_pooling(ctx, x):
    """BeitPyramidPoolingModule + bottleneck: adaptive average pools to each scale, conv module, bilinear back to
    x's size, concatenated with x, then a 3×3 conv module (PSPNet, Zhao et al. 2017). ctx at `decode_head`."""
    names = HEAD_NAMES[ctx.cfg.model_type]
    outs = [x]
    for i, scale in enumerate(ctx.cfg.pool_scales):
        pooled = ctx.kernels_named(names.pool.format(i=i)).adaptive_avg_pool2d(x, scale, scale)
        y = conv_module(ctx.at(names.psp.format(i=i)), pooled)
        block = names.pool.format(i=i).rsplit(".", 1)[0]                              # the pyramid-pooling block
        outs.append(resize_to(ctx.kernels_named(block + ".interpolate"), y, x.shape[2:]))  # (B, C, h, w)
    return conv_module(ctx.at(names.bottleneck), np.concatenate(outs, axis=1), padding=1)


def uper_head(ctx, features):
    """BeitUperHead (UperNet): lateral 1×1 convs + pyramid pooling on the last map, top-down sums, 3×3 convs,
    everything resized to the first map's size, concatenated, fused by a 3×3 conv, classified by a 1×1 conv. Given 3
    maps (data2vec-vision), the third feeds both the last lateral and the pooling: still 4 maps into the fusion."""
    k = ctx.kernels_named             # the resizes named after transformers' variables (laterals, fpn_outs)
    laterals = [conv_module(ctx.at(f"lateral_convs.{i}"), f) for i, f in enumerate(features[:UPER_LATERALS])]
    laterals.append(pyramid_pooling(ctx, features[-1]))
    for i in range(len(laterals) - 1, 0, -1):                                         # top-down path
        laterals[i - 1] = laterals[i - 1] + resize_to(k(f"laterals.{i}.interpolate"), laterals[i],
                                                      laterals[i - 1].shape[2:])
    outs = [conv_module(ctx.at(f"fpn_convs.{i}"), laterals[i], padding=1)
            for i in range(UPER_LATERALS)] + [laterals[-1]]
    outs = [outs[0]] + [resize_to(k(f"fpn_outs.{i}.interpolate"), o, outs[0].shape[2:])
                        for i, o in enumerate(outs[1:], 1)]                           # all at (4h, 4w)
    x = conv_module(ctx.at("fpn_bottleneck"), np.concatenate(outs, axis=1), padding=1)
    return ctx.record_output(ctx.conv2d("classifier", x))                               # (B, num_labels, 4h, 4w)


def fcn_head(ctx, features):
    """BeitFCNHead on features[2] (in_index 2): 3×3 conv modules, optionally concatenated with its input, 1×1 conv."""
    residual = h = features[2]
    for j in range(ctx.cfg.auxiliary_num_convs):
        h = conv_module(ctx.at(f"convs.{j}"), h, padding=1)
    if ctx.cfg.auxiliary_concat_input:
        h = conv_module(ctx.at("conv_cat"), np.concatenate([residual, h], axis=1), padding=1)
    return ctx.record_output(ctx.conv2d("classifier", h))                               # (B, num_labels, h, w)


def to_grid(tokens, grid):
    """(B, 1 + N, C) tokens -> (B, C, h, w) feature map without the [CLS] token (`[:, 1:].transpose(1, 2).reshape`)."""
    return np.ascontiguousarray(tokens[:, 1:].transpose(0, 2, 1)).reshape(tokens.shape[0], -1, *grid)


# ----------------------------------------------------------------------------------------------------------------------
# Heads: head(ctx, base, inputs) -> output fields, ctx at the top of the checkpoint


def image_classification(ctx, base, inputs):
    """BeitForImageClassification: classifier on the pooled output (identity when num_labels == 0)."""
    pooled = base["pooler_output"]
    return {"logits": classifier_or_identity(ctx, "classifier", pooled)}


def masked_image_modeling(ctx, base, inputs):
    """BeitForMaskedImageModeling: LayerNorm, then logits over the visual-token vocabulary for every patch token."""
    x = ctx.layer_norm("layernorm", base["last_hidden_state"])
    return {"logits": ctx.linear("lm_head", x[:, 1:])}                                # (B, N, vocab_size)


def segmentation_features(hidden_states, cfg, grid):
    """The maps the FPN takes. BEiT: hidden_states[i - 1] for i in out_indices (4), reshaped to the input's grid.
    data2vec-vision: hidden_states[idx] for idx + 1 in out_indices, in hidden-state order (3 or 4 of them: values
    outside 1..L+1 select nothing), reshaped to the *configured* grid (image_size // patch_size squared), which the
    input's token count must match."""
    if cfg.model_type == "beit":
        return tuple(to_grid(hidden_states[i - 1], grid) for i in cfg.out_indices)    # quirk: 1-based, i=0 -> [-1]
    side = cfg.grid_size
    if hidden_states[0].shape[1] - 1 != side[0] * side[1]:
        raise InputError(f"pixel_values: data2vec-vision segmentation reshapes the {hidden_states[0].shape[1] - 1} "
                         f"patch tokens to its configured {side[0]}x{side[1]} grid; use an input of "
                         f"{cfg.image_size[0]}x{cfg.image_size[1]} pixels (transformers fails otherwise)")
    return tuple(to_grid(h, side) for idx, h in enumerate(hidden_states) if idx + 1 in cfg.out_indices)


def semantic_segmentation(ctx, base, inputs):
    """BeitForSemanticSegmentation: 4 encoder maps (data2vec-vision: 3 or 4) -> FPN -> UperNet logits
    (B, num_labels, 4h, 4w), and the FCN auxiliary logits (B, num_labels, h, w), which transformers computes for its
    loss but does not return."""
    features = fpn(ctx, segmentation_features(base["hidden_states"], ctx.cfg, inputs.grid))
    logits = uper_head(ctx.at("decode_head"), features)
    aux = fcn_head(ctx.at("auxiliary_head"), features) if ctx.cfg.use_auxiliary_head else None
    return {"logits": logits, "auxiliary_logits": aux}


def backbone(ctx, base, inputs):
    """BeitBackbone: the hidden states of out_features (stage i = hidden_states[i]), as (B, C, h, w) maps without
    [CLS] (reshape_hidden_states) or as they are, then the FPN if add_fpn."""
    cfg = ctx.cfg
    maps = tuple(to_grid(h, inputs.grid) if cfg.reshape_hidden_states else h
                 for stage, h in zip(cfg.stage_names, base["hidden_states"]) if stage in cfg.out_features)
    return {"feature_maps": fpn(ctx, maps) if cfg.add_fpn else maps}


# ----------------------------------------------------------------------------------------------------------------------
# Architectures: the transformers classes this file runs


def check(arch, cfg, p, pixel_values, opts):
    """A call's checks (at least one patch; data2vec-vision heads take no mask) and whether the pooler runs:
    classification always; MIM, segmentation, backbone and Data2VecVisionModel never (add_pooling_layer=False);
    BeitModel's [CLS] pooler needs no weights, its mean pooling runs when the checkpoint has the pooler's LayerNorm."""
    B, _, height, width = pixel_values.shape
    if height < cfg.patch_size[0] or width < cfg.patch_size[1]:
        raise InputError(f"pixel_values: image {height}x{width} is smaller than one patch {cfg.patch_size}")
    grid = (height // cfg.patch_size[0], width // cfg.patch_size[1])                  # (h, w) patches of this input
    if arch.family == "data2vec-vision" and arch.head is not None and opts.bool_masked_pos is not None:
        raise InputError(f"bool_masked_pos: {arch.name}.forward does not take it (transformers ignores it silently)")
    mask = check_mask(opts.bool_masked_pos, B, grid[0] * grid[1], "mask_token" in p["embeddings"], arch.name)
    if arch.head is None:
        with_pooler = arch.family == "beit" and (not cfg.use_mean_pooling or "pooler" in p)
    else:
        with_pooler = arch.head.kind == "classification"
    return Inputs(pixel_values, arch.name, mask, opts.interpolate_pos_encoding, opts.output_attentions, grid,
                  with_pooler)


def parse_config(raw: dict, source: str, arch):
    return beit_config_from_dict(raw, source, arch.family, arch.head.kind if arch.head is not None else "")


def shapes(cfg, arch) -> dict:
    """The base model's tensors (+ the pooler's LayerNorm for classification)."""
    s = base_shapes(cfg)
    if arch.head is not None and arch.head.kind == "classification":
        s.update(pooler_shapes(cfg))
    return s


def optional_groups(cfg, arch) -> list:
    """Base models and the backbone accept a pooler's LayerNorm (BeitModel runs it)."""
    return [pooler_shapes(cfg)] if arch.is_base else []


def family(prefix):
    return Family(prefix=prefix, parse_config=parse_config, shapes=shapes, check=check, forward=base_forward,
                  optional_groups=optional_groups, before_mapping=prepare_tensors, after_cast=fuse_qkv,
                  default_groups=lambda arch: (0,) if arch.head is None and arch.family == "beit" else ())


BEIT, DATA2VEC_VISION = family("beit."), family("data2vec_vision.")
CLASSIFICATION = Head("classification", image_classification, classification_shapes)
MIM = Head("mim", masked_image_modeling, mim_shapes)
SEGMENTATION = Head("segmentation", semantic_segmentation, segmentation_shapes, reads_hidden_states=True)
BACKBONE = Head("backbone", backbone, backbone_shapes, base_at_top=True, reads_hidden_states=True)

# Data rows, one per transformers class: Architecture(name, model_type, base model, head, transformers' output class)
ARCHITECTURES = [
    # BEiT
    Architecture("BeitModel", "beit", BEIT, None, BaseModelOutputWithPooling),
    Architecture("BeitForImageClassification", "beit", BEIT, CLASSIFICATION, ImageClassifierOutput),
    Architecture("BeitForMaskedImageModeling", "beit", BEIT, MIM, MaskedLMOutput),
    Architecture("BeitForSemanticSegmentation", "beit", BEIT, SEGMENTATION, SemanticSegmenterOutput),
    Architecture("BeitBackbone", "beit", BEIT, BACKBONE, BackboneOutput),
    # data2vec-vision: the same network (its own checkpoint names in the segmentation head)
    Architecture("Data2VecVisionModel", "data2vec-vision", DATA2VEC_VISION, None, BaseModelOutputWithPooling),
    Architecture("Data2VecVisionForImageClassification", "data2vec-vision", DATA2VEC_VISION, CLASSIFICATION,
                 ImageClassifierOutput),
    Architecture("Data2VecVisionForSemanticSegmentation", "data2vec-vision", DATA2VEC_VISION, SEGMENTATION,
                 SemanticSegmenterOutput),
]
