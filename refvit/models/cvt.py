"""CvT forward passes, as `transformers/models/cvt/modeling_cvt.py` and `configuration_cvt.py` (5.23).

Paper: Wu et al. 2021, "CvT: Introducing Convolutions to Vision Transformers" (original code: microsoft/CvT,
lib/models/cls_cvt.py). A CvT is a stack of stages; each stage
  1. embeds its input with a strided convolution + LayerNorm (convolutional token embedding, paper §3.1), so the
     token grid shrinks from stage to stage and any input size works (there are no position embeddings);
  2. puts a class token in front when `cls_token[stage]` is set;
  3. runs pre-norm transformer layers whose q, k, v first pass through a *convolutional projection* of the token grid
     (depthwise conv + BatchNorm, `dw_bn`; k and v usually with stride 2, paper §3.2) and then a linear projection;
  4. splits the class token off again and hands the grid (B, C, h, w) to the next stage.

Params trees use the checkpoint's names (docs/DESIGN.md §4), which transformers 5 still uses for its modules:
`p["encoder"]["stages"][2]["layers"][0]["attention"]["attention"]["projection_query"]`. Intermediates are recorded under
the same names (`cvt.encoder.stages.2.layers.0.attention.output`).
Load-time preparation: each `dw_bn` BatchNorm is folded into its depthwise conv once, in the run dtype
(`fold_projection_batch_norms`, docs/DESIGN.md §4).
Shapes: B batch, N tokens, C channels (embed_dim of the stage), H heads, D head dim, h/w token grid, I MLP width.
"""

from __future__ import annotations


import numpy as np

from .architecture import Architecture, Family, Head, Inputs
from ..config import CvtConfig, cvt_config_from_dict  # noqa: F401 (CvtConfig: the family's config)
from ..errors import InputError
from ..kernels.sizes import conv_output_size, pool_output_size
from ..outputs import BaseModelOutputWithCLSToken, ImageClassifierOutputWithNoAttention
from .common import classifier_or_identity, classifier_shapes, fold_batch_norms

LAYER_NORM_EPS = 1e-5   # nn.LayerNorm's default: modeling_cvt.py never passes config.layer_norm_eps
BATCH_NORM_EPS = 1e-5   # nn.BatchNorm2d(embed_dim) default eps (CvtSelfAttentionConvProjection)

# ----------------------------------------------------------------------------------------------------------------------
# What a checkpoint holds (checkpoint names, shapes derived from the config)


def projection_shapes(cfg, stage: int, name: str) -> dict[str, tuple]:
    """CvtSelfAttentionProjection: depthwise conv + BatchNorm for `dw_bn`; no tensors for `linear`/`avg`."""
    method = cfg.qkv_projection_method[stage]
    if method != "dw_bn":
        return {}
    C, k = cfg.embed_dim[stage], cfg.kernel_qkv[stage]
    P = f"convolution_projection_{name}.convolution_projection."
    s = {P + "convolution.weight": (C, 1, k, k)}
    s.update({P + f"normalization.{t}": (C,) for t in ("weight", "bias", "running_mean", "running_var")})
    s[P + "normalization.num_batches_tracked"] = ()
    return s


def layer_shapes(cfg, stage: int) -> dict[str, tuple]:
    C, I = cfg.embed_dim[stage], cfg.mlp_width(stage)
    s = {}
    for name in ("query", "key", "value"):
        s.update({"attention.attention." + k: v for k, v in projection_shapes(cfg, stage, name).items()})
        s[f"attention.attention.projection_{name}.weight"] = (C, C)
        if cfg.qkv_bias[stage]:
            s[f"attention.attention.projection_{name}.bias"] = (C,)
    s.update({"attention.output.dense.weight": (C, C), "attention.output.dense.bias": (C,),
              "intermediate.dense.weight": (I, C), "intermediate.dense.bias": (I,),
              "output.dense.weight": (C, I), "output.dense.bias": (C,),
              "layernorm_before.weight": (C,), "layernorm_before.bias": (C,),
              "layernorm_after.weight": (C,), "layernorm_after.bias": (C,)})
    return s


def base_shapes(cfg) -> dict[str, tuple]:
    """Tensors of CvtModel (checkpoint names, no model prefix)."""
    s = {}
    for i in range(cfg.num_stages):
        S = f"encoder.stages.{i}."
        C, k = cfg.embed_dim[i], cfg.patch_sizes[i]
        c_in = cfg.num_channels if i == 0 else cfg.embed_dim[i - 1]
        if cfg.cls_token[i]:
            s[S + "cls_token"] = (1, 1, cfg.embed_dim[-1])  # quirk: CvtStage sizes every class token by embed_dim[-1]
        E = S + "embedding.convolution_embeddings."
        s.update({E + "projection.weight": (C, c_in, k, k), E + "projection.bias": (C,),
                  E + "normalization.weight": (C,), E + "normalization.bias": (C,)})
        for j in range(cfg.depth[i]):
            s.update({f"{S}layers.{j}.{k}": v for k, v in layer_shapes(cfg, i).items()})
    return s


def head_shapes(cfg) -> dict[str, tuple]:
    """CvtForImageClassification: LayerNorm(embed_dim[-1]) and nn.Linear(embed_dim[-1], num_labels) (identity if 0)."""
    C = cfg.embed_dim[-1]
    return {"layernorm.weight": (C,), "layernorm.bias": (C,), **classifier_shapes("classifier", cfg.num_labels, C)}


# ----------------------------------------------------------------------------------------------------------------------
# Token grids


def to_grid(tokens, h, w):
    """(B, h·w, C) tokens -> (B, C, h, w), as transformers' `permute(0, 2, 1).view(B, C, h, w)` (a view, no copy)."""
    B, _, C = tokens.shape
    return tokens.transpose(0, 2, 1).reshape(B, C, h, w)


def to_tokens(grid):
    """(B, C, h, w) -> (B, h·w, C), transformers' `view(B, C, h·w).permute(0, 2, 1)`."""
    B, C, h, w = grid.shape
    return grid.reshape(B, C, h * w).transpose(0, 2, 1)


def projected_size(method: str, n: int, kernel: int, stride: int, padding: int) -> int:
    """Length of one grid axis after a projection: Conv2d (`dw_bn`), AvgPool2d(ceil_mode=True) (`avg`), or none."""
    if method == "dw_bn":
        return conv_output_size(n, kernel, stride, padding, padding, 1)
    if method == "avg":
        return pool_output_size(n, kernel, stride, padding, padding, True)
    return n


def query_method(method: str) -> str:
    """The query's projection for a stage's `qkv_projection_method`: the same, except that the query is never pooled
    (original CvT's `avg` pools only key and value; the query then has no projection, as `linear`)."""
    return "linear" if method == "avg" else method


def stage_grids(cfg, height: int, width: int) -> list[tuple[int, int]]:
    """The token grid (h, w) of every stage for an input of height × width, checking that every convolution and
    pooling of the model has at least one output position and that the query grid keeps the token grid."""
    grids = []
    for i in range(cfg.num_stages):
        k, s, pad = cfg.patch_sizes[i], cfg.patch_stride[i], cfg.patch_padding[i]
        height, width = (conv_output_size(n, k, s, pad, pad, 1) for n in (height, width))
        if height < 1 or width < 1:
            raise InputError(f"pixel_values: the input is too small for stage {i}'s {k}x{k} embedding convolution "
                             f"(stride {s}, padding {pad}); every stage needs at least one token")
        method, k = cfg.qkv_projection_method[i], cfg.kernel_qkv[i]
        q = tuple(projected_size(query_method(method), n, k, cfg.stride_q[i], cfg.padding_q[i])
                  for n in (height, width))
        kv = tuple(projected_size(method, n, k, cfg.stride_kv[i], cfg.padding_kv[i]) for n in (height, width))
        if cfg.depth[i] and (q != (height, width) or min(kv) < 1):
            raise InputError(f"pixel_values: stage {i}'s {height}x{width} token grid gives a {q[0]}x{q[1]} query "
                             f"grid and a {kv[0]}x{kv[1]} key/value grid; the query projection must keep the grid "
                             "(transformers fails at the residual add) and the key/value grid must not be empty")
        grids.append((height, width))
    return grids


# ----------------------------------------------------------------------------------------------------------------------
# Convolutional token embedding (paper §3.1)


def conv_embedding(ctx, x, stage):
    """CvtConvEmbeddings: Conv2d(patch_sizes, patch_stride, patch_padding) on (B, C_in, H, W), then LayerNorm over
    channels -> tokens (B, h·w, C) and the grid (h, w)."""
    s, pad = ctx.cfg.patch_stride[stage], ctx.cfg.patch_padding[stage]  # the kernel size is the weight's
    y = ctx.conv2d("projection", x, (s, s), (pad,) * 4)                                 # (B, C, h, w)
    h, w = y.shape[2:]
    tokens = ctx.layer_norm("normalization", to_tokens(y), LAYER_NORM_EPS)             # (B, N, C)
    return tokens, (h, w)


# ----------------------------------------------------------------------------------------------------------------------
# Convolutional projection (paper §3.2): grid tokens (B, h·w, C) -> projected tokens (B, h'·w', C)


def fold_projection_batch_norms(tensors: dict, arch) -> dict:
    """Family.after_cast: every `dw_bn` projection's BatchNorm folded into its depthwise conv, once at load, in the
    run dtype (common.fold_batch_norms; the same rounding as the per-call fold it replaces)."""
    suffix = ".convolution_projection.normalization.running_var"
    pairs = [(n[:-len(".running_var")], n[:-len(suffix)] + ".convolution_projection.convolution", 0)
             for n in tensors if n.endswith(suffix)]
    return fold_batch_norms(tensors, pairs, BATCH_NORM_EPS)


def dw_bn_projection(ctx, x, hw, kernel, stride, padding):
    """`dw_bn`: CvtSelfAttentionConvProjection = depthwise Conv2d(C, C, kernel, stride, padding, groups=C, bias=False)
    then BatchNorm2d (running statistics), on the token grid; one kernel pass with the BatchNorm folded in at load
    (its scale in the conv weight, its shift the BatchNorm's bias)."""
    p = ctx.param("convolution_projection")
    tokens, _ = ctx.kernels.depthwise_conv_tokens(x, hw[0], hw[1], p["convolution"]["weight"],
                                                  p["normalization"]["bias"], (stride, stride), (padding, padding))
    return tokens                                                                      # (B, h'·w', C)


def linear_projection(ctx, x, hw, kernel, stride, padding):
    """`linear`: the tokens unchanged (only the linear q/k/v projection follows), as original CvT's `proj = None`.
    transformers names this method but its CvtSelfAttentionProjection then has no `convolution_projection` and fails."""
    return x


def avg_projection(ctx, x, hw, kernel, stride, padding):
    """`avg`, as original CvT defines it (cls_cvt.py `_build_projection`): nn.AvgPool2d(kernel, stride, padding,
    ceil_mode=True), count_include_pad=True. transformers builds no module for it and fails in forward.

    torch's divisor: the window clipped to the padded input, padding included (avg_pool2d's `pool_size`); windows
    that run past it under ceil_mode read nothing there."""
    B, _, C = x.shape
    (h, w), k, s, pad = hw, kernel, stride, padding
    ho, wo = (pool_output_size(n, k, s, pad, pad, True) for n in (h, w))
    extra_h, extra_w = max(0, (ho - 1) * s + k - h - 2 * pad), max(0, (wo - 1) * s + k - w - 2 * pad)
    grid = np.pad(x.reshape(B, h, w, C), ((0, 0), (pad, pad + extra_h), (pad, pad + extra_w), (0, 0)))
    total = np.zeros((B, ho, wo, C), x.dtype)
    for i in range(k):
        for j in range(k):
            total += grid[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]       # (B, ho, wo, C)
    start_h, start_w = np.arange(ho) * s - pad, np.arange(wo) * s - pad
    count_h = np.minimum(start_h + k, h + pad) - start_h                               # rows inside the padded input
    count_w = np.minimum(start_w + k, w + pad) - start_w
    divisor = (count_h[:, None] * count_w[None, :]).astype(x.dtype)                    # (ho, wo)
    return (total / divisor[None, :, :, None]).reshape(B, ho * wo, C)


PROJECTIONS = {"dw_bn": dw_bn_projection, "linear": linear_projection, "avg": avg_projection}


# ----------------------------------------------------------------------------------------------------------------------
# Encoder


def self_attention(ctx, x, hw, stage):
    """CvtSelfAttention: the class token is split off, the token grid goes through the convolutional projections
    (query: stride_q/padding_q; key, value: stride_kv/padding_kv), the class token is put back in front of each, then
    linear q/k/v projections and softmax(q kᵀ · C^-½) v per head -> (B, N, C). The attention map is recorded as
    `…attention.attention.dropout` (its module's output); transformers' CvT returns no attentions.

    Quirk reproduced (as original CvT): the scale is embed_dim^-½, not head_dim^-½."""
    cfg = ctx.cfg
    with_cls = cfg.cls_token[stage]
    cls, grid = (x[:, :1], x[:, 1:]) if with_cls else (None, x)                      # (B, 1, C), (B, h·w, C)
    method, kernel = cfg.qkv_projection_method[stage], cfg.kernel_qkv[stage]
    q_method = query_method(method)
    q = PROJECTIONS[q_method](ctx.at("convolution_projection_query", optional=q_method != "dw_bn"), grid, hw, kernel,
                              cfg.stride_q[stage], cfg.padding_q[stage])
    k, v = (PROJECTIONS[method](ctx.at(f"convolution_projection_{n}", optional=method != "dw_bn"), grid, hw, kernel,
                                cfg.stride_kv[stage], cfg.padding_kv[stage]) for n in ("key", "value"))
    q, k, v = (ctx.record(f"convolution_projection_{n}", t) for n, t in zip(("query", "key", "value"), (q, k, v)))
    if with_cls:
        q, k, v = (np.concatenate([cls, t], axis=1) for t in (q, k, v))               # (B, 1 + N', C)
    q, k, v = ctx.linear("projection_query", q), ctx.linear("projection_key", k), ctx.linear("projection_value", v)
    context, probs = ctx.kernels.attention(q, k, v, cfg.num_heads[stage], cfg.embed_dim[stage] ** -0.5,
                                           need_probs=True)                            # probs: the buffer it fills
    ctx.record("dropout", probs)                                                       # (B, H, Nq, Nk)
    return ctx.record_output(context)                                                     # (B, N, C)


def layer(ctx, x, hw, stage):
    """CvtLayer: pre-norm attention and MLP blocks, each added to its residual (drop path is identity at inference)."""
    h = ctx.layer_norm("layernorm_before", x, LAYER_NORM_EPS)
    h = self_attention(ctx.at("attention.attention"), h, hw, stage)
    x = x + ctx.record("attention.output", ctx.linear("attention.output.dense", h, record=False))
    h = ctx.layer_norm("layernorm_after", x, LAYER_NORM_EPS)
    h = ctx.record("intermediate", ctx.linear_act("intermediate.dense", h, "gelu", record=False))  # nn.GELU: erf
    x = ctx.record("output", ctx.linear("output.dense", h, record=False) + x)         # CvtOutput adds the residual
    return ctx.record_output(x)


def stage_forward(ctx, x, i):
    """CvtStage: embedding, class token in front (if any), layers, class token split off -> (B, C, h, w), cls/None."""
    tokens, hw = conv_embedding(ctx.at("embedding.convolution_embeddings"), x, i)     # (B, N, C)
    ctx.record("embedding", to_grid(tokens, *hw))
    if ctx.cfg.cls_token[i]:
        cls = np.broadcast_to(ctx.param("cls_token"), (tokens.shape[0], 1, tokens.shape[2]))
        tokens = np.concatenate([cls, tokens], axis=1)                                 # (B, 1 + N, C)
    for j in range(ctx.cfg.depth[i]):
        tokens = layer(ctx.at(f"layers.{j}"), tokens, hw, i)
    cls, tokens = (tokens[:, :1], tokens[:, 1:]) if ctx.cfg.cls_token[i] else (None, tokens)
    return ctx.record_output(to_grid(tokens, *hw)), cls


def base_forward(ctx, inputs):
    """CvtModel.forward: the stages in turn. hidden_states[i] is stage i's output grid (no embedding entry);
    cls_token_value is the last stage's class token (None when it has none)."""
    x, cls, hidden_states = inputs.pixel_values, None, []
    for i in range(ctx.cfg.num_stages):
        x, cls = stage_forward(ctx.at(f"encoder.stages.{i}"), x, i)                   # (B, C, h, w)
        hidden_states.append(x)
    return {"last_hidden_state": x, "cls_token_value": cls, "hidden_states": tuple(hidden_states)}


# ----------------------------------------------------------------------------------------------------------------------
# Head: head(ctx, base, inputs) -> output fields, ctx at the top of the checkpoint


def image_classification(ctx, base, inputs):
    """CvtForImageClassification: LayerNorm on the class token when the last stage has one, else on every token of
    the last grid; then the mean over tokens and the classifier (identity when num_labels == 0)."""
    if ctx.cfg.cls_token[-1]:
        x = base["cls_token_value"]                                                    # (B, 1, C)
    else:
        x = to_tokens(base["last_hidden_state"])                                       # (B, N, C)
    pooled = ctx.layer_norm("layernorm", x, LAYER_NORM_EPS).mean(axis=1)               # (B, C)
    return {"logits": classifier_or_identity(ctx, "classifier", pooled)}


# ----------------------------------------------------------------------------------------------------------------------
# Architectures


def check(arch, cfg, p, pixel_values, opts):
    """A call's checks. transformers' CvT forward swallows unknown keyword arguments; refvit refuses bool_masked_pos
    and interpolate_pos_encoding=True (they would mean something in other families) and, like transformers, returns
    no attention maps for output_attentions=True (output_intermediates=True records them as `…attention.dropout`).
    Every stage's grids must be non-empty (stage_grids)."""
    if opts.bool_masked_pos is not None:
        raise InputError(f"bool_masked_pos: {arch.name} has no mask token (CvT has no masked-image-modeling head)")
    if opts.interpolate_pos_encoding:
        raise InputError(f"interpolate_pos_encoding: {arch.name} has no position embeddings; any input size works "
                         "without it")
    stage_grids(cfg, *pixel_values.shape[2:])
    return Inputs(pixel_values, arch.name)


CVT = Family(prefix="cvt.", parse_config=lambda raw, source, arch: cvt_config_from_dict(raw, source),
             shapes=lambda cfg, arch: base_shapes(cfg), check=check, forward=base_forward,
             after_cast=fold_projection_batch_norms,
             anchor="encoder.stages.0.embedding.convolution_embeddings.projection.weight")

# Data rows, one per transformers class: Architecture(name, model_type, base model, head, transformers' output class)
ARCHITECTURES = [
    Architecture("CvtModel", "cvt", CVT, None, BaseModelOutputWithCLSToken),
    Architecture("CvtForImageClassification", "cvt", CVT, Head("classification", image_classification, head_shapes),
                 ImageClassifierOutputWithNoAttention),
]
