"""timm's hub layout -> refvit: the architecture name and `model_args` to a transformers-style config, timm's tensor
names to checkpoint names. No torch and no timm needed.

A timm checkpoint directory (what `timm.models.save_for_hf` / `push_to_hf_hub` write, e.g. the hub's
`timm/vit_base_patch16_224.augreg2_in21k_ft_in1k`) holds

    config.json        {"architecture": "vit_base_patch16_224", "num_classes": 1000, "global_pool": "token",
                        "model_args": {...}, "pretrained_cfg": {"input_size": [3, 224, 224], "crop_pct": 0.9, ...},
                        "label_names": [...]}
    model.safetensors  timm's own tensor names (blocks.3.attn.qkv.weight, ...)

The model is built by timm from the architecture's registered function (timm/models/vision_transformer.py,
deit.py, beit.py, resnetv2.py, timm 1.0.31) called with `model_args`. refvit mirrors that: TIMM_ARCHITECTURES holds
each supported function's arguments, `model_args` update them, and every argument is either mapped to the config of
the transformers class that computes the same function, accepted because it only affects training (dropout rates,
init), or refused with a ConfigError naming it. Nothing is approximated: a timm variant whose forward no refvit
family computes (layer scale in plain ViT, register tokens, average pooling without BEiT, BatchNorm ResNetV2 ...) is
refused. The preprocessing comes from `pretrained_cfg` (refvit.processing.timm).
"""

from __future__ import annotations

import re

import numpy as np

from .config import make_div
from .errors import CheckpointError, ConfigError, listed

# timm's default LayerNorm: `partial(nn.LayerNorm, eps=1e-6)` (vision_transformer.py VisionTransformer.__init__,
# beit.py Beit.__init__); transformers' ViT/BEiT default is 1e-12, so the mapped config sets it.
TIMM_LAYER_NORM_EPS = 1e-6

_VIT = ("vit", "ViT")
_DEIT = ("deit", "DeiT")
_DEIT_DISTILLED = ("deit_distilled", "DeiT")
_BEIT = ("beit", "BEiT")
_RESNETV2_BIT = ("resnetv2_bit", "ResNetV2 (BiT)")


def _vit(patch, dim, depth, heads, img=224):
    return dict(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads)


def _beit(dim, depth, heads, init_values, img=224):
    return dict(img_size=img, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=4,
                use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=init_values)


def _bit(layers, width_factor):
    return dict(layers=list(layers), width_factor=width_factor)


# architecture -> (kind, the registered function's model arguments) -- timm 1.0.31's @register_model functions
TIMM_ARCHITECTURES = {
    **{f"vit_{size}_patch{p}_{img}": (_VIT, _vit(p, dim, depth, heads, img))
       for size, dim, depth, heads, patches in (("tiny", 192, 12, 3, (16,)), ("small", 384, 12, 6, (32, 16)),
                                                ("base", 768, 12, 12, (32, 16)), ("large", 1024, 24, 16, (32, 16)))
       for p in patches for img in (224, 384)},
    "vit_small_patch8_224": (_VIT, _vit(8, 384, 12, 6)),
    "vit_base_patch8_224": (_VIT, _vit(8, 768, 12, 12)),
    "vit_large_patch14_224": (_VIT, _vit(14, 1024, 24, 16)),
    "vit_huge_patch14_224": (_VIT, _vit(14, 1280, 32, 16)),
    "deit_tiny_patch16_224": (_DEIT, _vit(16, 192, 12, 3)),
    "deit_small_patch16_224": (_DEIT, _vit(16, 384, 12, 6)),
    "deit_base_patch16_224": (_DEIT, _vit(16, 768, 12, 12)),
    "deit_base_patch16_384": (_DEIT, _vit(16, 768, 12, 12, 384)),
    "deit_tiny_distilled_patch16_224": (_DEIT_DISTILLED, _vit(16, 192, 12, 3)),
    "deit_small_distilled_patch16_224": (_DEIT_DISTILLED, _vit(16, 384, 12, 6)),
    "deit_base_distilled_patch16_224": (_DEIT_DISTILLED, _vit(16, 768, 12, 12)),
    "deit_base_distilled_patch16_384": (_DEIT_DISTILLED, _vit(16, 768, 12, 12, 384)),
    "beit_base_patch16_224": (_BEIT, _beit(768, 12, 12, 0.1)),
    "beit_base_patch16_384": (_BEIT, _beit(768, 12, 12, 0.1, 384)),
    "beit_large_patch16_224": (_BEIT, _beit(1024, 24, 16, 1e-5)),
    "beit_large_patch16_384": (_BEIT, _beit(1024, 24, 16, 1e-5, 384)),
    "beit_large_patch16_512": (_BEIT, _beit(1024, 24, 16, 1e-5, 512)),
    "beitv2_base_patch16_224": (_BEIT, _beit(768, 12, 12, 1e-5)),
    "beitv2_large_patch16_224": (_BEIT, _beit(1024, 24, 16, 1e-5)),
    "resnetv2_50x1_bit": (_RESNETV2_BIT, _bit((3, 4, 6, 3), 1)),
    "resnetv2_50x3_bit": (_RESNETV2_BIT, _bit((3, 4, 6, 3), 3)),
    "resnetv2_101x1_bit": (_RESNETV2_BIT, _bit((3, 4, 23, 3), 1)),
    "resnetv2_101x3_bit": (_RESNETV2_BIT, _bit((3, 4, 23, 3), 3)),
    "resnetv2_152x2_bit": (_RESNETV2_BIT, _bit((3, 8, 36, 3), 2)),
    "resnetv2_152x4_bit": (_RESNETV2_BIT, _bit((3, 8, 36, 3), 4)),
}

# Arguments that only change training (dropout, stochastic depth, initialisation): accepted and unused.
TRAINING_ONLY = {"drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate",
                 "weight_init", "fix_init", "head_init_scale", "zero_init_last", "pretrained_strict"}

# Data tables, one row per timm argument: the value it must have for a refvit family to compute timm's forward,
# and why (the error says it).
DEFAULT_LAYERS = {
    "norm_layer": (None, "only timm's default LayerNorm(eps=1e-6) is mapped"),
    "act_layer": (None, "only timm's default GELU (erf) is mapped"),
}
VIT_FIXED = {
    "class_token": (True, "a ViT without a class token has no transformers counterpart"),
    "reg_tokens": (0, "register tokens have no transformers counterpart"),
    "init_values": (None, "layer scale (LayerScale gamma) is not part of transformers' ViT/DeiT"),
    "qk_norm": (False, "q/k normalisation is not part of transformers' ViT/DeiT"),
    "scale_attn_norm": (False, "an attention-output norm is not part of transformers' ViT/DeiT"),
    "scale_mlp_norm": (False, "an MLP norm is not part of transformers' ViT/DeiT"),
    "proj_bias": (True, "transformers' ViT/DeiT projections always have a bias"),
    "pos_embed": ("learn", "only learned absolute position embeddings exist in transformers' ViT/DeiT"),
    "pre_norm": (False, "a norm before the encoder (CLIP-style) is not part of transformers' ViT/DeiT"),
    "final_norm": (True, "transformers' ViT/DeiT always end with a LayerNorm"),
    "fc_norm": (None, "a norm after pooling (fc_norm) is not part of transformers' ViT/DeiT"),
    "global_pool": ("token", "transformers' ViT/DeiT classify the class token; timm's 'avg'/'map' pooling differs"),
    "dynamic_img_size": (False, "timm resamples position embeddings per input; refvit only at the configured size "
                                "(or with interpolate_pos_encoding, which uses transformers' interpolation)"),
    "dynamic_img_pad": (False, "padding inputs to the patch size is not part of transformers' ViT/DeiT"),
    "pool_include_prefix": (False, "pooling prefix tokens is not part of transformers' ViT/DeiT"),
    "embed_norm_layer": (None, "a norm after the patch embedding is not part of transformers' ViT/DeiT"),
    **DEFAULT_LAYERS,
    "use_naflex": (None, "NaFlex ViTs have no transformers counterpart"),
    "use_fc_norm": (None, "a norm after pooling (fc_norm) is not part of transformers' ViT/DeiT"),
}
VIT_VALUES = {"img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
              "qkv_bias", "no_embed_class"}

BEIT_FIXED = {
    "use_shared_rel_pos_bias": (False, "refused: timm's shared table would need BEiT's shared-bias names mapped "
                                       "too, which no supported timm architecture uses"),
    "swiglu_mlp": (False, "a SwiGLU MLP is not part of transformers' BEiT"),
    "scale_mlp": (False, "an MLP norm is not part of transformers' BEiT"),
    **DEFAULT_LAYERS,
    "use_abs_pos_emb_interp": (None, "not a transformers BEiT feature"),
}
BEIT_VALUES = {"img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
               "qkv_bias", "use_abs_pos_emb", "use_rel_pos_bias", "init_values", "global_pool"}

BIT_FIXED = {
    "global_pool": ("avg", "transformers' BiT pools by averaging"),
    "output_stride": (32, "dilated stages are not mapped (timm and transformers place the dilation alike only "
                          "for the default 32)"),
    "preact": (True, "the BiT architectures are pre-activation ResNets"),
    "basic": (False, "basic (two 3x3) blocks are not part of transformers' BiT"),
    "bottle_ratio": (0.25, "transformers' BiT fixes the bottleneck ratio at 0.25"),
    "avg_down": (False, "average-pool downsampling is not part of transformers' BiT"),
    "stem_type": ("fixed", "the BiT architectures use the 'fixed' stem (7x7 conv, zero pad 1, 3x3 max-pool)"),
    "act_layer": (None, "only ReLU is mapped"),
    "norm_layer": (None, "only GroupNorm(32) + ReLU is mapped"),
    "conv_layer": (None, "only StdConv2d(eps=1e-8) is mapped"),
}
BIT_VALUES = {"layers", "channels", "width_factor", "stem_chs", "in_chans", "num_classes"}


def is_timm_config(raw: dict) -> bool:
    """timm's config.json names one `architecture` (a timm function) where transformers' names `architectures`."""
    return isinstance(raw, dict) and "architecture" in raw and "architectures" not in raw and "model_type" not in raw


def _pair(value, key, problems):
    if isinstance(value, bool):
        problems.append(f"{key}: expected an int or [height, width], got {value!r}")
        return (224, 224)
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    problems.append(f"{key}: expected an int or [height, width], got {value!r}")
    return (224, 224)


def _size(pair: tuple):
    """As transformers' configs hold it: an int when square (BEiT's modeling divides by an int patch_size)."""
    return pair[0] if pair[0] == pair[1] else list(pair)


def _labels(raw: dict, num_classes: int, problems: list) -> dict:
    """id2label from timm's `label_names` (a list, or a dict index -> name); else transformers' LABEL_i."""
    names = raw.get("label_names")
    if names is None:
        return {str(i): f"LABEL_{i}" for i in range(num_classes)}
    if isinstance(names, dict):
        try:
            names = [names[k] for k in sorted(names, key=int)]
        except (TypeError, ValueError):
            problems.append("label_names: expected integer keys")
            return {}
    if not isinstance(names, list) or len(names) != num_classes or not all(isinstance(n, str) for n in names):
        problems.append(f"label_names: expected {num_classes} label strings, got {type(names).__name__} of "
                        f"{len(names) if isinstance(names, (list, dict)) else '?'}")
        return {}
    return {str(i): n for i, n in enumerate(names)}


def _check_args(args: dict, fixed: dict, values: set, problems: list) -> None:
    for key, value in args.items():
        if key in TRAINING_ONLY or key in values:
            continue
        if key in fixed:
            want, why = fixed[key]
            if value != want and not (want is None and value in (None, "")):
                problems.append(f"model_args.{key} = {value!r} cannot be expressed ({why}; refvit needs {want!r})")
        else:
            problems.append(f"model_args.{key} = {value!r} is not an argument refvit maps for this architecture")


def resolve(raw: dict, source: str = "config.json") -> tuple[dict, str, dict]:
    """timm config.json -> (transformers-style config dict, transformers class name, timm's effective model args).

    Raises ConfigError naming every field refvit cannot express, before any tensor is read."""
    name = raw.get("architecture")
    if not isinstance(name, str):
        raise ConfigError(f"{source}: architecture: expected a timm model name string, got {name!r}")
    if name not in TIMM_ARCHITECTURES:
        raise ConfigError(f"{source}: architecture {name!r} is not a timm architecture refvit maps; supported: "
                          f"{', '.join(sorted(TIMM_ARCHITECTURES))}")
    (kind, _), defaults = TIMM_ARCHITECTURES[name]
    model_args = raw.get("model_args")
    model_args = {} if model_args is None else model_args
    if not isinstance(model_args, dict):
        raise ConfigError(f"{source}: model_args: expected an object, got {type(model_args).__name__}")
    args = {**defaults, **model_args}
    for key in ("num_classes", "global_pool"):  # the top-level copies timm's save_config writes
        if key in raw and key not in model_args:
            args[key] = raw[key]
    problems: list[str] = []
    if kind in ("vit", "deit", "deit_distilled"):
        hf, arch = _vit_config(kind, args, raw, problems)
    elif kind == "beit":
        hf, arch = _beit_config(args, raw, problems)
    else:
        hf, arch = _bit_config(args, raw, problems)
    if problems:
        raise ConfigError(f"{source} ({name}): " + "; ".join(problems))
    return hf, arch, args


def _int(args, key, default, problems, minimum=1):
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        problems.append(f"model_args.{key}: expected an int >= {minimum}, got {value!r}")
        return default
    return value


def _mlp_width(dim, ratio, problems):
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or ratio <= 0:
        problems.append(f"model_args.mlp_ratio: expected a positive number, got {ratio!r}")
        return 4 * dim
    return int(dim * ratio)  # timm's Mlp(hidden_features=int(dim * mlp_ratio))


def _encoder_fields(args, dim, problems) -> dict:
    """The transformer encoder's config fields, from the model_args timm's VisionTransformer and Beit share (the same
    names and defaults in both)."""
    return {"hidden_size": dim, "num_hidden_layers": _int(args, "depth", 12, problems),
            "num_attention_heads": _int(args, "num_heads", 12, problems),
            "intermediate_size": _mlp_width(dim, args.get("mlp_ratio", 4.0), problems), "hidden_act": "gelu",
            "layer_norm_eps": TIMM_LAYER_NORM_EPS,
            "image_size": _size(_pair(args.get("img_size", 224), "img_size", problems)),
            "patch_size": _size(_pair(args.get("patch_size", 16), "patch_size", problems)),
            "num_channels": _int(args, "in_chans", 3, problems)}


def _vit_config(kind, args, raw, problems):
    _check_args(args, VIT_FIXED, VIT_VALUES, problems)
    dim, num_classes = _int(args, "embed_dim", 768, problems), _int(args, "num_classes", 1000, problems, 0)
    if args.get("no_embed_class") and kind == "deit_distilled":
        problems.append("model_args.no_embed_class = True with a distillation token is not mapped")
    # timm's plain DeiTs are VisionTransformers; transformers' DeiT classes always hold a distillation token, so they
    # map to transformers' ViT (the same computation), and only the distilled ones to DeiT
    hf = {"model_type": "deit" if kind == "deit_distilled" else "vit", **_encoder_fields(args, dim, problems),
          "qkv_bias": bool(args.get("qkv_bias", True)), "id2label": _labels(raw, num_classes, problems)}
    if kind == "deit_distilled":
        arch = "DeiTForImageClassificationWithTeacher" if num_classes else "DeiTModel"
    else:
        arch = "ViTForImageClassification" if num_classes else "ViTModel"
    hf["architectures"] = [arch]
    return hf, arch


def _beit_config(args, raw, problems):
    _check_args(args, BEIT_FIXED, BEIT_VALUES, problems)
    dim, num_classes = _int(args, "embed_dim", 768, problems), _int(args, "num_classes", 1000, problems, 0)
    pool = args.get("global_pool", "avg")
    if pool not in ("avg", "token"):
        problems.append(f"model_args.global_pool = {pool!r} cannot be expressed (transformers' BEiT pools the "
                        "class token or averages patch tokens: 'token' or 'avg')")
    init_values = args.get("init_values")
    if init_values is not None and (not isinstance(init_values, (int, float)) or isinstance(init_values, bool)):
        problems.append(f"model_args.init_values: expected a number or null, got {init_values!r}")
        init_values = None
    hf = {"model_type": "beit", **_encoder_fields(args, dim, problems), "use_mask_token": False,
          "use_absolute_position_embeddings": bool(args.get("use_abs_pos_emb", True)),
          "use_relative_position_bias": bool(args.get("use_rel_pos_bias", False)),
          "use_shared_relative_position_bias": False,
          # timm: gamma_1/2 exist when init_values is truthy (beit.py Block: `if init_values:`)
          "layer_scale_init_value": float(init_values) if init_values else 0.0,
          "use_mean_pooling": pool == "avg", "id2label": _labels(raw, num_classes, problems)}
    if args.get("qkv_bias", True) is not True:
        problems.append("model_args.qkv_bias = False cannot be expressed "
                        "(transformers' BEiT always has q and v biases)")
    arch = "BeitForImageClassification" if num_classes else "BeitModel"
    hf["architectures"] = [arch]
    return hf, arch


def _bit_config(args, raw, problems):
    _check_args(args, BIT_FIXED, BIT_VALUES, problems)
    wf = _int(args, "width_factor", 1, problems)
    channels = args.get("channels", (256, 512, 1024, 2048))
    layers = args.get("layers")
    for key, value in (("channels", channels), ("layers", layers)):
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, int) and v > 0 for v in value):
            problems.append(f"model_args.{key}: expected a list of positive ints, got {value!r}")
            return {}, ""
    if len(channels) != len(layers):  # timm zips them: the shorter wins; refvit refuses the ambiguity
        problems.append(f"model_args.channels {list(channels)} and layers {list(layers)} differ in length")
    num_classes = _int(args, "num_classes", 1000, problems, 0)
    hf = {"model_type": "bit", "num_channels": _int(args, "in_chans", 3, problems),
          # ResNetV2.__init__: stem_chs = make_divisible(stem_chs * wf); out_chs = make_divisible(c * wf): the
          # widths are written out and width_factor set to 1 (transformers' classifier needs hidden_sizes[-1])
          "embedding_size": make_div(_int(args, "stem_chs", 64, problems) * wf),
          "hidden_sizes": [make_div(c * wf) for c in channels], "depths": list(layers),
          "layer_type": "preactivation", "hidden_act": "relu", "global_padding": None,
          "embedding_dynamic_padding": False, "num_groups": 32, "output_stride": 32, "width_factor": 1,
          "id2label": _labels(raw, num_classes, problems)}
    arch = "BitForImageClassification" if num_classes else "BitModel"
    hf["architectures"] = [arch]
    return hf, arch


# ----------------------------------------------------------------------------------------------------------------------
# Tensor names


def _split_qkv(w: np.ndarray, name: str) -> tuple:
    if w.shape[0] % 3:
        raise CheckpointError(f"{name}: fused q/k/v of {w.shape[0]} rows is not divisible by 3")
    return np.split(np.asarray(w), 3, axis=0)


def convert_tensors(tensors: dict, hf: dict, arch: str, source: str) -> dict:
    """timm's state dict -> the checkpoint names of `arch` (transformers' names, as save_pretrained writes them).

    Every timm tensor is consumed exactly once; a leftover name is an error (reported with the strict check's
    missing/unexpected lists when the names do not line up)."""
    kind = hf["model_type"]
    if kind in ("vit", "deit"):
        out, used = _vit_tensors(tensors, hf, arch)
    elif kind == "beit":
        out, used = _beit_tensors(tensors)
    else:
        out, used = _bit_tensors(tensors)
    left = sorted(set(tensors) - used)
    if left:
        raise CheckpointError(f"{source}: {len(left)} timm tensor(s) refvit does not map for {arch}: {listed(left)}")
    return out


class _Renaming:
    """timm's tensors `t` renamed one by one into `out` (checkpoint names); `used`: the timm names consumed
    (convert_tensors reports any left over)."""

    def __init__(self, t: dict):
        self.t, self.out, self.used = t, {}, set()

    def take(self, src: str, dst: str) -> None:
        """timm's `src` as `dst`, when the checkpoint has it."""
        if src in self.t:
            self.out[dst] = self.t[src]
            self.used.add(src)

    def take_module(self, src: str, dst: str) -> None:
        """timm's module `src` (weight and bias) as the module `dst`."""
        for leaf in ("weight", "bias"):
            self.take(f"{src}.{leaf}", f"{dst}.{leaf}")

    def take_qkv(self, src: str, dst: str) -> None:
        """timm's stacked q/k/v `src` as three tensors, `dst` with {part} = query, key, value."""
        for part, x in zip(("query", "key", "value"), _split_qkv(self.t[src], src)):
            self.out[dst.format(part=part)] = x
        self.used.add(src)

    def blocks(self, base: str):
        """(timm name, transformers' layer prefix, the name inside the block) for each tensor of timm's blocks.i."""
        for name in list(self.t):
            m = re.match(r"blocks\.(\d+)\.(.+)$", name)
            if m:
                yield name, f"{base}encoder.layer.{m.group(1)}.", m.group(2)


def _vit_tensors(t: dict, hf: dict, arch: str):
    base = "" if arch.endswith("Model") else ("vit." if hf["model_type"] == "vit" else "deit.")
    r = _Renaming(t)
    E, teacher = base + "embeddings.", arch == "DeiTForImageClassificationWithTeacher"
    r.take("cls_token", E + "cls_token")
    r.take("dist_token", E + "distillation_token")
    pos = t.get("pos_embed")
    if pos is not None:
        r.used.add("pos_embed")
        (ih, iw), (ph, pw) = (_pair(hf[k], k, []) for k in ("image_size", "patch_size"))
        grid = (ih // ph) * (iw // pw)
        if pos.ndim == 3 and pos.shape[1] == grid:  # no_embed_class: no position for the class token; timm adds
            # pos_embed before prepending it, which equals a zero position row for the class token (exact)
            pos = np.concatenate([np.zeros((1, 1, pos.shape[2]), pos.dtype), np.asarray(pos)], axis=1)
        r.out[E + "position_embeddings"] = pos
    r.take_module("patch_embed.proj", E + "patch_embeddings.projection")
    simple = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
              "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for name, L, rest in r.blocks(base):
        mod, _, leaf = rest.rpartition(".")
        if mod in simple:
            r.take(name, L + simple[mod] + "." + leaf)
        elif mod == "attn.qkv":
            r.take_qkv(name, L + "attention.attention.{part}." + leaf)
    r.take_module("norm", base + "layernorm")
    if base:
        head = "cls_classifier" if teacher else "classifier"
        r.take_module("head", head)
        r.take_module("head_dist", "distillation_classifier")
    return r.out, r.used


def _beit_tensors(t: dict):
    base = "beit." if "head.weight" in t else ""
    r = _Renaming(t)
    E = base + "embeddings."
    r.take("cls_token", E + "cls_token")
    r.take("pos_embed", E + "position_embeddings")
    r.take_module("patch_embed.proj", E + "patch_embeddings.projection")
    simple = {"norm1.weight": "layernorm_before.weight", "norm1.bias": "layernorm_before.bias",
              "norm2.weight": "layernorm_after.weight", "norm2.bias": "layernorm_after.bias",
              "attn.proj.weight": "attention.output.dense.weight", "attn.proj.bias": "attention.output.dense.bias",
              "mlp.fc1.weight": "intermediate.dense.weight", "mlp.fc1.bias": "intermediate.dense.bias",
              "mlp.fc2.weight": "output.dense.weight", "mlp.fc2.bias": "output.dense.bias",
              "gamma_1": "lambda_1", "gamma_2": "lambda_2",  # timm's layer scale = transformers' lambda
              "attn.q_bias": "attention.attention.query.bias", "attn.v_bias": "attention.attention.value.bias",
              "attn.relative_position_bias_table":
                  "attention.attention.relative_position_bias.relative_position_bias_table"}
    for name, L, rest in r.blocks(base):
        if rest in simple:
            r.take(name, L + simple[rest])
        elif rest == "attn.qkv.weight":  # q, k, v stacked; k has no bias in either library (timm: k_bias = 0)
            r.take_qkv(name, L + "attention.attention.{part}.weight")
        elif rest == "attn.relative_position_index":  # a buffer older timm versions saved: recomputed by refvit
            r.used.add(name)
    r.take_module("norm", base + "layernorm")
    r.take_module("fc_norm", base + "pooler.layernorm")
    r.take_module("head", "classifier")
    return r.out, r.used


def _bit_tensors(t: dict):
    out, used = {}, set()
    base = "bit." if "head.fc.weight" in t else ""
    for name, x in t.items():
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)$", name)
        if m:
            dst = f"{base}encoder.stages.{m.group(1)}.layers.{m.group(2)}.{m.group(3)}"
        elif name == "stem.conv.weight":
            dst = base + "embedder.convolution.weight"
        elif name in ("norm.weight", "norm.bias"):
            dst = base + name
        elif name == "head.fc.weight":  # a 1x1 convolution in timm (ClassifierHead(use_conv=True)), a Linear here
            dst, x = "classifier.1.weight", np.asarray(x).reshape(x.shape[0], -1)
        elif name == "head.fc.bias":
            dst = "classifier.1.bias"
        else:
            continue
        out[dst] = x
        used.add(name)
    return out, used


# timm argument -> the mapped config keys it sets (for `refvit inspect`'s side-by-side view)
ARG_TO_CONFIG = {"img_size": ("image_size",), "patch_size": ("patch_size",), "in_chans": ("num_channels",),
                 "embed_dim": ("hidden_size",), "depth": ("num_hidden_layers",), "num_heads": ("num_attention_heads",),
                 "mlp_ratio": ("intermediate_size",), "qkv_bias": ("qkv_bias",), "num_classes": ("num_labels",),
                 "init_values": ("layer_scale_init_value",), "use_abs_pos_emb": ("use_absolute_position_embeddings",),
                 "use_rel_pos_bias": ("use_relative_position_bias",), "global_pool": ("use_mean_pooling",),
                 "layers": ("depths",), "channels": ("hidden_sizes",), "stem_chs": ("embedding_size",),
                 "width_factor": ("hidden_sizes", "embedding_size")}


def describe(raw: dict, hf: dict, arch: str, args: dict) -> list[tuple[str, str]]:
    """(timm, refvit) rows for `refvit inspect`: the architecture, then each effective timm argument (the registered
    function's, updated by model_args) beside the mapped config values it sets, then the values timm fixes in code."""
    values = {**hf, "num_labels": len(hf.get("id2label", {}))}
    rows = [(f"architecture = {raw.get('architecture')}", f"{arch} (model_type {hf['model_type']})")]
    shown = {"id2label", "architectures", "model_type"}
    for key in sorted(args):
        targets = [t for t in ARG_TO_CONFIG.get(key, ()) if t in values]
        shown.update(targets)
        right = ", ".join(f"{t} = {values[t]!r}" for t in targets) or (
            "(training only: unused)" if key in TRAINING_ONLY else "(checked: the value refvit computes)")
        rows.append((f"{key} = {args[key]!r}", right))
    for key, value in values.items():
        if key not in shown:
            rows.append(("(timm default)", f"{key} = {value!r}"))
    return rows
