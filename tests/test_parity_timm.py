"""capture_torch + the timm presets against timm itself (needs_timm: CI's timm stage, its own venv).

A porter's loop: a timm model (reduced, seeded, weights perturbed so attention is peaked), its state dict converted
to transformers' names the way transformers' conversion scripts do it (transcribed below, each function citing its
script), refvit running the converted checkpoint, and `capture_torch(timm_model, x, names=PRESET)` as the reference.
A correct conversion matches every module; each bug planted in the conversion is the first divergence at its module,
with its likely cause.

    python tests/test_parity_timm.py      # prints the table: planted bug -> first divergence -> likely cause
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import refvit  # noqa: E402
from refvit import parity  # noqa: E402
from refvit.checkpoint import write_safetensors  # noqa: E402

from conftest import timm_oracle  # noqa: E402

pytestmark = pytest.mark.needs_timm


def _timm():
    return timm_oracle("torch"), timm_oracle("timm")


def _perturb(model, seed=0):
    """Non-degenerate weights: norms' scales around 1, biases non-zero, q/k/v strong enough for peaked attention."""
    torch, _ = _timm()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if "norm" in name and name.endswith("weight") or name.endswith("gamma_1") or name.endswith("gamma_2"):
                p.copy_(1 + 0.2 * noise)
            elif "qkv" in name:
                p.copy_(0.3 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.add_(0.05 * noise)
    return model.eval()


def _numpy_state(model):
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _write(tmp: Path, name: str, config: dict, tensors: dict) -> Path:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    write_safetensors(d / "model.safetensors", {k: np.ascontiguousarray(v) for k, v in tensors.items()})
    return d


# ---- DeiT / ViT: transformers/models/deit/convert_deit_timm_to_pytorch.py --------------------------------------------


def convert_deit(sd: dict, layers: int, hidden: int, prefix="deit.", qkv_order="3HD", heads=None):
    """create_rename_keys + read_in_q_k_v (base_model=False). `qkv_order` plants the split bug: "HD3" reads the fused
    rows as (H, 3, D); "kqv" swaps query and key."""
    sd = dict(sd)
    renames = []
    for i in range(layers):
        for timm_name, hf in (("norm1", "layernorm_before"), ("attn.proj", "attention.output.dense"),
                              ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"),
                              ("mlp.fc2", "output.dense")):
            for kind in ("weight", "bias"):
                renames.append((f"blocks.{i}.{timm_name}.{kind}", f"{prefix}encoder.layer.{i}.{hf}.{kind}"))
    renames += [("cls_token", f"{prefix}embeddings.cls_token"), ("pos_embed", f"{prefix}embeddings.position_embeddings"),
                ("patch_embed.proj.weight", f"{prefix}embeddings.patch_embeddings.projection.weight"),
                ("patch_embed.proj.bias", f"{prefix}embeddings.patch_embeddings.projection.bias"),
                ("norm.weight", f"{prefix}layernorm.weight"), ("norm.bias", f"{prefix}layernorm.bias")]
    if "dist_token" in sd:
        renames += [("dist_token", f"{prefix}embeddings.distillation_token"), ("head.weight", "cls_classifier.weight"),
                    ("head.bias", "cls_classifier.bias"), ("head_dist.weight", "distillation_classifier.weight"),
                    ("head_dist.bias", "distillation_classifier.bias")]
    else:  # convert_vit_timm_to_pytorch.py's names for the plain ViT head
        renames += [("head.weight", "classifier.weight"), ("head.bias", "classifier.bias")]
    for src, dest in renames:
        sd[dest] = sd.pop(src)
    for i in range(layers):
        w, b = sd.pop(f"blocks.{i}.attn.qkv.weight"), sd.pop(f"blocks.{i}.attn.qkv.bias")
        if qkv_order == "HD3":   # the bug: rows read as (H, 3, D) where timm lays them out (3, H, D)
            d = hidden // heads
            w = w.reshape(heads, 3, d, -1).transpose(1, 0, 2, 3).reshape(3 * hidden, -1)
            b = b.reshape(heads, 3, d).transpose(1, 0, 2).reshape(-1)
        parts = {"query": slice(0, hidden), "key": slice(hidden, 2 * hidden), "value": slice(2 * hidden, 3 * hidden)}
        if qkv_order == "kqv":
            parts["query"], parts["key"] = parts["key"], parts["query"]
        for part, rows in parts.items():
            sd[f"{prefix}encoder.layer.{i}.attention.attention.{part}.weight"] = w[rows]
            sd[f"{prefix}encoder.layer.{i}.attention.attention.{part}.bias"] = b[rows]
    return sd


DEIT = dict(hidden=64, layers=2, heads=4, image=32, patch=16, classes=5)


def deit_config(eps=1e-6, act="gelu", distilled=True):
    c = DEIT
    return {"architectures": ["DeiTForImageClassificationWithTeacher" if distilled else "ViTForImageClassification"],
            "model_type": "deit" if distilled else "vit", "hidden_size": c["hidden"],
            "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"], "intermediate_size": 4 * c["hidden"],
            "hidden_act": act, "layer_norm_eps": eps, "image_size": c["image"], "patch_size": c["patch"],
            "num_channels": 3, "qkv_bias": True, "encoder_stride": c["patch"],
            "id2label": {str(i): f"c{i}" for i in range(c["classes"])},
            "label2id": {f"c{i}": i for i in range(c["classes"])}}


def timm_deit(distilled=True):
    _, timm = _timm()
    c = DEIT
    name = "deit_tiny_distilled_patch16_224" if distilled else "vit_tiny_patch16_224"
    m = timm.create_model(name, pretrained=False, img_size=c["image"], patch_size=c["patch"], embed_dim=c["hidden"],
                          depth=c["layers"], num_heads=c["heads"], num_classes=c["classes"])
    return _perturb(m)


# ---- BiT: transformers/models/bit/convert_bit_to_pytorch.py ---------------------------------------------------------


def convert_bit(sd: dict):
    """rename_key, and the head's 1×1 conv squeezed to a Linear weight (`val.squeeze() if "head" in key`)."""
    def rename_key(name):
        if "stem.conv" in name:
            name = name.replace("stem.conv", "bit.embedder.convolution")
        if "blocks" in name:
            name = name.replace("blocks", "layers")
        if "head.fc" in name:
            name = name.replace("head.fc", "classifier.1")
        if name.startswith("norm"):
            name = "bit." + name
        if "bit" not in name and "classifier" not in name:
            name = "bit.encoder." + name
        return name

    return {rename_key(k): (v.squeeze() if "head" in k else v) for k, v in sd.items()}


def bit_config(groups=32):
    return {"architectures": ["BitForImageClassification"], "model_type": "bit", "embedding_size": 64,
            "hidden_sizes": [256, 512, 1024, 2048], "depths": [1, 1, 1, 1], "layer_type": "preactivation",
            "hidden_act": "relu", "global_padding": None, "num_groups": groups, "stem_type": "", "output_stride": 32,
            "width_factor": 1, "conv_layer": "std_conv", "num_channels": 3,
            "id2label": {str(i): f"c{i}" for i in range(5)}, "label2id": {f"c{i}": i for i in range(5)}}


def timm_bit():
    torch, timm = _timm()
    from timm.layers import StdConv2d
    from timm.models.resnetv2 import ResNetV2

    # resnetv2_50x1_bit's constructor (timm: _create_resnetv2_bit) with one block per stage
    m = ResNetV2(layers=[1, 1, 1, 1], num_classes=5, stem_type="fixed", conv_layer=partial(StdConv2d, eps=1e-8))
    return _perturb(m)


# ---- BEiT: transformers/models/beit/convert_beit_unilm_to_pytorch.py (timm keeps unilm's names) ---------------------


def convert_beit(sd: dict, layers: int, hidden: int):
    """create_rename_keys + read_in_q_k_v (has_lm_head=False, is_semantic=False)."""
    sd = dict(sd)
    for i in range(layers):
        for timm_name, hf in (("norm1", "layernorm_before"), ("attn.proj", "attention.output.dense"),
                              ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"),
                              ("mlp.fc2", "output.dense")):
            for kind in ("weight", "bias"):
                sd[f"beit.encoder.layer.{i}.{hf}.{kind}"] = sd.pop(f"blocks.{i}.{timm_name}.{kind}")
    for src, dest in (("cls_token", "beit.embeddings.cls_token"),
                      ("patch_embed.proj.weight", "beit.embeddings.patch_embeddings.projection.weight"),
                      ("patch_embed.proj.bias", "beit.embeddings.patch_embeddings.projection.bias"),
                      ("fc_norm.weight", "beit.pooler.layernorm.weight"), ("fc_norm.bias", "beit.pooler.layernorm.bias"),
                      ("head.weight", "classifier.weight"), ("head.bias", "classifier.bias")):
        sd[dest] = sd.pop(src)
    for i in range(layers):
        w = sd.pop(f"blocks.{i}.attn.qkv.weight")
        p = f"beit.encoder.layer.{i}.attention.attention"
        sd[f"{p}.query.weight"], sd[f"{p}.key.weight"], sd[f"{p}.value.weight"] = (
            w[:hidden], w[hidden:2 * hidden], w[-hidden:])
        sd[f"{p}.query.bias"], sd[f"{p}.value.bias"] = sd.pop(f"blocks.{i}.attn.q_bias"), sd.pop(f"blocks.{i}.attn.v_bias")
        sd[f"beit.encoder.layer.{i}.lambda_1"] = sd.pop(f"blocks.{i}.gamma_1")
        sd[f"beit.encoder.layer.{i}.lambda_2"] = sd.pop(f"blocks.{i}.gamma_2")
        sd[f"{p}.relative_position_bias.relative_position_bias_table"] = sd.pop(
            f"blocks.{i}.attn.relative_position_bias_table")
        if f"blocks.{i}.attn.relative_position_index" in sd:  # a buffer timm no longer saves (non-persistent)
            sd[f"{p}.relative_position_bias.relative_position_index"] = sd.pop(
                f"blocks.{i}.attn.relative_position_index")
    return sd


def beit_config():
    return {"architectures": ["BeitForImageClassification"], "model_type": "beit", "hidden_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256, "hidden_act": "gelu",
            "layer_norm_eps": 1e-6, "image_size": 32, "patch_size": 16, "num_channels": 3,
            "use_absolute_position_embeddings": False, "use_relative_position_bias": True,
            "use_shared_relative_position_bias": False, "layer_scale_init_value": 0.1, "use_mean_pooling": True,
            "use_mask_token": False, "id2label": {str(i): f"c{i}" for i in range(5)},
            "label2id": {f"c{i}": i for i in range(5)}}


def timm_beit():
    _, timm = _timm()
    m = timm.create_model("beit_base_patch16_224", pretrained=False, img_size=32, patch_size=16, embed_dim=64, depth=2,
                          num_heads=4, num_classes=5, init_values=0.1)
    return _perturb(m)


# ---- the porter's loop -------------------------------------------------------------------------------------------


def pixels(seed=0, dtype="float32"):
    return np.random.default_rng(seed).normal(size=(2, 3, 32, 32)).astype(dtype)


def run(timm_model, preset, model_dir, x):
    """(reference: timm under checkpoint names, candidate: refvit on the converted checkpoint)."""
    torch, _ = _timm()
    dtype = str(x.dtype)
    reference = parity.capture_torch(timm_model.to(getattr(torch, dtype)), x, names=preset)
    candidate = parity.capture(refvit.from_pretrained(model_dir, dtype=dtype, backend="numpy"), x)
    return reference, candidate


def case(tmp: Path, bug: str):
    """One conversion (correct, or with a planted bug): returns (reference, candidate)."""
    x = pixels()
    if bug in ("deit", "deit q/k swapped", "deit qkv split (H,3,D)", "deit LayerNorm eps 1e-5",
               "deit tanh GELU", "deit processor defaults", "vit"):
        distilled = bug != "vit"
        m = timm_deit(distilled)
        c = DEIT
        order = {"deit q/k swapped": "kqv", "deit qkv split (H,3,D)": "HD3"}.get(bug, "3HD")
        sd = convert_deit(_numpy_state(m), c["layers"], c["hidden"], "deit." if distilled else "vit.", order,
                          c["heads"])
        cfg = deit_config(eps=1e-5 if "eps" in bug else 1e-6, act="gelu_new" if "tanh" in bug else "gelu",
                          distilled=distilled)
        d = _write(tmp, bug.replace(" ", "_").replace("/", ""), cfg, sd)
        if "eps" in bug:  # float64 on both sides: an eps change of 1e-5 hides under float32's tolerance
            x = pixels(dtype="float64")
            m = m.double()
        if "processor" in bug:
            # timm's eval transform normalises with ImageNet's mean/std; the port left the processor's defaults
            # (0.5, 0.5): the same image, normalised the other way, goes into the converted model
            ref, _ = run(m, "timm-vit", d, x)
            mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
            raw = x * std[:, None, None] + mean[:, None, None]
            x_port = ((raw - 0.5) / 0.5).astype("float32")
            return ref, parity.capture(refvit.from_pretrained(d, backend="numpy"), x_port)
        return run(m, "timm-vit", d, x)
    if bug in ("bit", "bit GroupNorm 16 groups"):
        m = timm_bit()
        d = _write(tmp, bug.replace(" ", "_"), bit_config(16 if "16" in bug else 32), convert_bit(_numpy_state(m)))
        return run(m, "timm-resnetv2", d, x)
    if bug == "beit":
        m = timm_beit()
        d = _write(tmp, bug, beit_config(), convert_beit(_numpy_state(m), 2, 64))
        return run(m, "timm-beit", d, x)
    raise KeyError(bug)


CLEAN = ["deit", "vit", "bit", "beit"]
# planted bug -> (first divergence, words of the likely cause or None for "no known pattern")
PLANTED = {
    "deit q/k swapped": ("deit.encoder.layer.0.attention.attention.query", "`deit.encoder.layer.0.attention.attention.key`"),
    "deit qkv split (H,3,D)": ("deit.encoder.layer.0.attention.attention.query", "qkv split in the wrong order"),
    "deit LayerNorm eps 1e-5": ("deit.encoder.layer.0.layernorm_before", "epsilon"),
    "deit tanh GELU": ("deit.encoder.layer.0.intermediate", "tanh approximation"),
    "deit processor defaults": ("pixel_values", "image_mean/image_std"),
    "bit GroupNorm 16 groups": ("bit.encoder.stages.0.layers.0.norm1", None),
}


@pytest.mark.parametrize("family", CLEAN)
def test_timm_conversion_matches_every_module(tmp_path, family):
    reference, candidate = case(tmp_path, family)
    result = parity.compare(reference, candidate)
    assert result.ok, parity.format_report(result)
    compared = [r for r in result.rows if r.status == "OK"]
    missing = [r.name for r in result.rows if r.status == "MISSING"]
    assert not missing, missing
    assert len(compared) >= 20 and "logits" in {r.name for r in compared}
    # everything refvit records is in timm's capture, except what the preset says timm has no module for
    ignored = reference.meta.get("not_recorded", [])
    import fnmatch
    absent = [n for n in candidate.names if n not in reference and not any(fnmatch.fnmatchcase(n, g) for g in ignored)]
    assert not absent, absent


@pytest.mark.parametrize("bug", list(PLANTED))
def test_planted_conversion_bug(tmp_path, bug):
    expected, cause = PLANTED[bug]
    result = parity.compare(*case(tmp_path, bug))
    assert result.first_divergence is not None and result.first_divergence.name == expected, \
        parity.format_report(result)
    if cause is None:
        assert result.likely_cause is None, result.likely_cause
    else:
        assert result.likely_cause is not None and cause in result.likely_cause.cause, result.likely_cause


def test_capture_torch_leaves_the_module_as_it_was():
    torch, _ = _timm()
    m = timm_deit()
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fused = [a.fused_attn for a in (b.attn for b in m.blocks)]
    hooks = sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in m.modules())
    parity.capture_torch(m, pixels(), names="timm-vit")
    assert m.training and [a.fused_attn for a in (b.attn for b in m.blocks)] == fused
    assert sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in m.modules()) == hooks
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert torch.is_grad_enabled()


def test_raw_capture_then_compare_with_the_preset(tmp_path):
    """capture_torch without names keeps timm's module paths; `refvit compare --map timm-vit` renames them."""
    import subprocess

    m = timm_deit()
    x = pixels()
    d = _write(tmp_path, "deit", deit_config(), convert_deit(_numpy_state(m), DEIT["layers"], DEIT["hidden"]))
    parity.capture_torch(m, x).save(tmp_path / "timm.safetensors")
    assert "blocks.0.attn.qkv" in parity.Trace.load(tmp_path / "timm.safetensors")
    parity.capture(refvit.from_pretrained(d, backend="numpy"), x).save(tmp_path / "ref.safetensors")
    r = subprocess.run([sys.executable, "-m", "refvit.cli", "compare", str(tmp_path / "ref.safetensors"),
                        str(tmp_path / "timm.safetensors"), "--map", "timm-vit", "--json"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["compared"] >= 25


def main() -> int:
    import tempfile

    print("| planted bug (timm conversion) | first divergence | likely cause |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for bug in PLANTED:
            result = parity.compare(*case(Path(tmp), bug))
            first = result.first_divergence
            hint = result.likely_cause.cause if result.likely_cause else "no known pattern"
            print(f"| {bug} | `{first.name if first else '-'}` | {hint} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
