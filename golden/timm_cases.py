"""Golden cases written by timm itself: `python golden/generate.py --timm` (run with the timm venv's python, see
docs/guide/timm.md: torch 2.14.1 + torchvision 0.29.1 + timm 1.0.31).

Each model case is a random-weight timm model saved by `timm.models.save_for_hf` (timm's hub layout: config.json with
architecture / model_args / pretrained_cfg, model.safetensors with timm's tensor names), timm's logits in float32
and float64 on seeded pixels, and timm's module outputs recorded with forward hooks under the checkpoint names refvit
uses (the RECORD tables below, written from timm's module tree: timm's code computes every value, refvit's name map
is not used). Reduced shapes are committed (a few hundred KB each); real-size models are built from the same seeded
weights by tests/test_timm_oracle.py in CI's timm stage (hundreds of MB: not committed).

Processing cases: timm's eval transform (`create_transform(**resolve_data_config(pretrained_cfg=...))`) applied to
the shipped photos (golden/images) for each family's real pretrained_cfg, float32 pixels.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
TIMM_VERSION = "1.0.31"
TORCH_VERSION = "2.14.1"

# case -> (timm model name with tag, model kwargs (become config.json's model_args), input (B, H, W))
CASES = {
    "vit_base_augreg2_reduced": ("vit_base_patch16_224.augreg2_in21k_ft_in1k",
                                 dict(depth=2, embed_dim=64, num_heads=4, img_size=64, num_classes=10), (2, 64, 64)),
    "vit_small_no_embed_class": ("vit_small_patch16_224.augreg_in21k_ft_in1k",
                                 dict(depth=2, embed_dim=48, num_heads=3, img_size=48, num_classes=7,
                                      no_embed_class=True, qkv_bias=False), (2, 48, 48)),
    "deit_small_distilled_reduced": ("deit_small_distilled_patch16_224.fb_in1k",
                                     dict(depth=2, embed_dim=64, num_heads=4, img_size=64, num_classes=10), (2, 64, 64)),
    "deit_tiny_reduced": ("deit_tiny_patch16_224.fb_in1k",
                          dict(depth=2, embed_dim=48, num_heads=3, img_size=[48, 64], num_classes=5), (1, 48, 64)),
    "beit_base_reduced": ("beit_base_patch16_224.in22k_ft_in22k_in1k",
                          dict(depth=2, embed_dim=64, num_heads=4, img_size=64, num_classes=10), (2, 64, 64)),
    "beit_token_abs_pos": ("beit_base_patch16_224.in22k_ft_in22k_in1k",
                           dict(depth=2, embed_dim=64, num_heads=4, img_size=48, num_classes=6, global_pool="token",
                                use_abs_pos_emb=True, use_rel_pos_bias=False, init_values=None), (2, 48, 48)),
    "resnetv2_50x1_bit_reduced": ("resnetv2_50x1_bit.goog_in21k_ft_in1k",
                                  dict(channels=[128, 128, 128, 128], stem_chs=32, num_classes=10), (1, 40, 40)),
}

TORCH_BIN_CASES = ("deit_tiny_reduced",)  # saved as pytorch_model.bin (timm's legacy save), read without torch

# Real shapes (CI's timm stage, tests/test_timm_oracle.py): timm name with tag, pixels from the shipped photo.
REAL_SIZE = {
    "vit_base_patch16_224": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "deit_small_distilled_patch16_224": "deit_small_distilled_patch16_224.fb_in1k",
    "beit_base_patch16_224": "beit_base_patch16_224.in22k_ft_in22k_in1k",
    "resnetv2_50x1_bit": "resnetv2_50x1_bit.goog_in21k_ft_in1k",
}

# Processing cases: each family's real pretrained_cfg (what timm's hub config.json holds), plus the other crop modes.
PROCESSING = {
    "vit_augreg2": "vit_base_patch16_224.augreg2_in21k_ft_in1k",       # 224, crop_pct 0.9, bicubic, mean/std 0.5
    "deit_fb": "deit_small_distilled_patch16_224.fb_in1k",              # 224, crop_pct 0.9, bicubic, ImageNet
    "beit_in22k": "beit_base_patch16_224.in22k_ft_in22k_in1k",         # 224, crop_pct 0.9, bicubic, mean/std 0.5
    "resnetv2_bit": "resnetv2_50x1_bit.goog_in21k_ft_in1k",            # 448, crop_pct 1.0, bilinear, mean/std 0.5
}
PROCESSING_VARIANTS = {  # pretrained_cfg overrides on small outputs: the crop modes and odd sizes
    "squash_96_bilinear": dict(input_size=[3, 96, 96], crop_pct=0.95, crop_mode="squash", interpolation="bilinear"),
    "border_80x112_bicubic": dict(input_size=[3, 80, 112], crop_pct=1.0, crop_mode="border", interpolation="bicubic",
                                  mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711]),
    "center_72x96_lanczos": dict(input_size=[3, 72, 96], crop_pct=0.875, crop_mode="center", interpolation="lanczos"),
}


def case_seed(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


def seeded_weights(model, seed: int) -> None:
    """Replace every parameter with seeded NumPy values so attention is peaked and norms are not trivial (timm's
    init gives near-uniform attention, which hides bugs). Deterministic from (model, seed): the real-size tests
    call this too."""
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            if re.search(r"(norm\d?|fc_norm)\.weight$", name):
                v = 1.0 + 0.2 * rng.standard_normal(shape)
            elif re.search(r"gamma_\d$", name):               # BEiT layer scale
                v = 0.5 + 0.2 * rng.standard_normal(shape)
            elif p.ndim == 1:
                v = 0.1 * rng.standard_normal(shape)
            elif re.search(r"(cls_token|dist_token|pos_embed)$", name) or "relative_position_bias_table" in name:
                v = 0.5 * rng.standard_normal(shape)
            else:
                fan_in = int(np.prod(shape[1:]))
                # larger q/k: peaked attention. 2.0 gives ViT-B's last layer a mean attention entropy of 0.50·log N
                # (as the transformers goldens), and timm's own float32 logits stay 1.2e-5·max|ref| from its float64
                # ones; 3.0 made the real-size ViT-B so ill-conditioned that timm's float32 is 9.5e-5 off its own
                # float64, leaving no room for any float32 port under the 1e-4 bound
                gain = 2.0 if "qkv" in name else 1.0
                v = gain * rng.standard_normal(shape) / np.sqrt(fan_in)
            p.copy_(torch.from_numpy(v.astype(np.float32)))


# timm module -> [(kind, checkpoint-name suffix)], "out" the module's output, "in" its first input. Written from timm's
# modules (vision_transformer.py Block/Attention/Mlp, beit.py Block, resnetv2.py PreActBottleneck): each entry is the
# timm module whose output IS the value refvit records under that name (transformers' module of the same job).
def record_points(kind: str, module: str, base: str, teacher: bool = False) -> list:
    m = re.match(r"blocks\.(\d+)(\.(.+))?$", module)
    if kind in ("vit", "deit", "beit") and m:
        L = f"{base}encoder.layer.{m.group(1)}"
        sub = m.group(3)
        table = {None: [("out", L)], "norm1": [("out", L + ".layernorm_before")],
                 "norm2": [("out", L + ".layernorm_after")], "mlp.act": [("out", L + ".intermediate")],
                 # Attention.proj: input = heads merged (transformers' self-attention output), output = SelfOutput
                 "attn.proj": [("in", L + ".attention.attention"), ("out", L + ".attention.output")]}
        if kind == "beit":
            table["mlp.fc2"] = [("out", L + ".output")]  # BeitOutput = fc2 alone (lambda_2 and residual in the layer)
        else:
            table["attn.qkv"] = [("out", L + ".attention.attention.qkv")]  # split into query/key/value below
        return table.get(sub, [])
    if kind in ("vit", "deit", "beit"):
        heads = {"head": "cls_classifier" if teacher else "classifier",
                 "head_dist": "distillation_classifier"}
        table = {"pos_drop": [("out", base + "embeddings")], "norm": [("out", base + "layernorm")]}
        if kind == "beit":  # BEiT's fc_norm after mean pooling = transformers' BeitPooler (an Identity in ViT)
            table["fc_norm"] = [("out", base + "pooler")]
        table.update({k: [("out", v)] for k, v in heads.items()})
        return table.get(module, [])
    # ResNetV2 (BiT)
    m = re.match(r"stages\.(\d+)(\.blocks\.(\d+)(\.(.+))?)?$", module)
    if m:
        S = f"{base}encoder.stages.{m.group(1)}"
        if m.group(2) is None:
            return [("out", S)]
        Lr = f"{S}.layers.{m.group(3)}"
        sub = m.group(5)
        if sub is None:
            return [("out", Lr)]
        first = m.group(3) == "0"  # the inside of each stage's first layer (the one with the downsample)
        if first and sub in ("norm1", "norm2", "norm3", "conv1", "conv2", "conv3", "downsample", "downsample.conv"):
            return [("out", f"{Lr}.{sub}")]
        return []
    table = {"stem.conv": [("out", base + "embedder.convolution")], "stem": [("out", base + "embedder")],
             "norm": [("out", base + "norm")], "head": [("out", "classifier")]}
    return table.get(module, [])


def kind_of(timm_name: str) -> str:
    arch = timm_name.split(".")[0]
    if arch.startswith("resnetv2"):
        return "bit"
    if arch.startswith("beit"):
        return "beit"
    return "deit" if arch.startswith("deit") else "vit"


def base_prefix(timm_name: str, num_classes: int) -> str:
    """The checkpoint prefix of the transformers class computing this model: timm's plain DeiTs are ViTs (only the
    distilled ones have transformers' DeiT distillation token)."""
    if not num_classes:
        return ""
    kind = kind_of(timm_name)
    if kind == "deit":
        return "deit." if "distilled" in timm_name else "vit."
    return {"vit": "vit.", "beit": "beit.", "bit": "bit."}[kind]


def run_timm(model, pixel_values: np.ndarray, kind: str, base: str, dtype: str, record: bool, teacher: bool = False):
    """timm's forward in `dtype` -> (logits, {checkpoint name: module output})."""
    import torch

    tdtype = getattr(torch, dtype)
    model = model.to(tdtype).eval()
    store, handles = {}, []
    for name, module in (model.named_modules() if record else []):
        for how, classic in (record_points(kind, name, base, teacher) if name else []):
            if how == "out":
                def hook(mod, args, out, n=classic):
                    store[n] = (out[0] if isinstance(out, tuple) else out).detach().numpy().copy()
                handles.append(module.register_forward_hook(hook))
            else:
                def pre(mod, args, n=classic):
                    store[n] = args[0].detach().numpy().copy()
                handles.append(module.register_forward_pre_hook(pre))
    with torch.no_grad():
        logits = model(torch.from_numpy(pixel_values).to(tdtype)).numpy()
    for h in handles:
        h.remove()
    for name in [k for k in store if k.endswith(".qkv")]:  # timm's fused qkv Linear: (B, N, 3C) -> q, k, v
        q, k, v = np.split(store.pop(name), 3, axis=-1)
        stem = name[: -len(".qkv")]
        store[stem + ".query"], store[stem + ".key"], store[stem + ".value"] = q, k, v
    return logits, store


def make_model(timm_name: str, kwargs: dict, seed: int):
    import timm

    model = timm.create_model(timm_name, pretrained=False, **kwargs).eval()
    seeded_weights(model, seed)
    return model


def make_case(name: str, out_dir: Path) -> dict:
    from timm.models import save_for_hf

    timm_name, kwargs, (B, H, W) = CASES[name]
    seed = case_seed(name)
    kind = kind_of(timm_name)
    model = make_model(timm_name, kwargs, seed)
    case_dir = out_dir / name
    case_dir.mkdir(parents=True)
    # the hub's timm repos hold model.safetensors (and often pytorch_model.bin); one case keeps the .bin alone
    save_for_hf(model, case_dir, safe_serialization=name not in TORCH_BIN_CASES)
    num_classes = kwargs.get("num_classes", 1000)
    base = base_prefix(timm_name, num_classes)
    pixel_values = np.random.default_rng(seed + 1).standard_normal((B, 3, H, W)).astype(np.float32)
    np.savez(case_dir / "inputs.npz", pixel_values=pixel_values)
    arrays = {}
    for dtype in ("float32", "float64"):
        logits, store = run_timm(model, pixel_values.astype(dtype), kind, base, dtype, record=True,
                                 teacher="distilled" in timm_name)
        arrays[f"{dtype}/logits"] = logits
        arrays.update({f"{dtype}/intermediates/{k}": v for k, v in store.items()})
    np.savez(case_dir / "outputs.npz", **arrays)
    meta = {"case": name, "timm_model": timm_name, "model_kwargs": kwargs, "seed": seed, "kind": kind,
            "input_shape": [B, 3, H, W], "weights": "golden/timm_cases.py seeded_weights(model, seed)",
            "intermediates": sorted(k.split("/", 2)[2] for k in arrays if k.startswith("float32/intermediates/")),
            "versions": _versions(), "command": "python golden/generate.py --timm (timm venv)"}
    (case_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def photos() -> dict:
    """The shipped photos as refvit.load_image returns them (upright RGB PIL images; none has an EXIF rotation)."""
    import refvit

    return {p.stem: refvit.load_image(p) for p in sorted((ROOT / "images").glob("*")) if p.suffix in (".jpg", ".png")}


def processing_cfgs() -> dict:
    """case -> pretrained_cfg (from timm's registry for the real ones, with the variants' overrides)."""
    import timm

    out = {}
    for case, timm_name in PROCESSING.items():
        out[case] = _data_cfg(timm.models.get_pretrained_cfg(timm_name).to_dict())
    base = out["vit_augreg2"]
    for case, overrides in PROCESSING_VARIANTS.items():
        out[case] = {**base, **overrides}
    return out


def _data_cfg(cfg: dict) -> dict:
    keys = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
    return {k: (list(cfg[k]) if isinstance(cfg.get(k), tuple) else cfg.get(k)) for k in keys if cfg.get(k) is not None}


def make_processing(out_dir: Path) -> list:
    from timm.data import create_transform, resolve_data_config

    imgs = photos()
    written = []
    for case, cfg in processing_cfgs().items():
        transform = create_transform(**resolve_data_config(pretrained_cfg=cfg))
        d = out_dir / case
        d.mkdir(parents=True)
        pixels = {stem: transform(img).numpy() for stem, img in imgs.items()}
        np.savez_compressed(d / "pixels.npz", **pixels)
        meta = {"case": case, "pretrained_cfg": cfg, "transform": repr(transform).splitlines(),
                "photos": {s: hashlib.sha256((ROOT / "images" / f).read_bytes()).hexdigest()
                           for s, f in ((p.stem, p.name) for p in sorted((ROOT / "images").glob("*"))
                                        if p.suffix in (".jpg", ".png"))},
                "versions": _versions(), "command": "python golden/generate.py --timm (timm venv)"}
        (d / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        written.append(case)
    return written


def _versions() -> dict:
    import PIL
    import timm
    import torch
    import torchvision

    return {"timm": timm.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__, "python": platform.python_version()}


def generate(out: Path) -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    for name in CASES:
        meta = make_case(name, out / "models")
        print(f"timm/models/{name:32s} {meta['timm_model']}: {len(meta['intermediates'])} intermediates")
    for case in make_processing(out / "processing"):
        print(f"timm/processing/{case}")
