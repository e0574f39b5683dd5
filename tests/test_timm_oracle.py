"""timm itself as the oracle (CI stage `timm`, the timm venv of .ci/run): real-size random-weight models of the four
families written by timm's `save_for_hf`, opened by refvit.from_pretrained, classified with refvit's copy of timm's
eval transform, logits against timm's forward; the eval transform against timm's over a sweep of settings; what
refvit refuses, on directories timm wrote. Skips (needs_timm) where timm cannot be imported."""

import itertools
import json
import sys

import numpy as np
import pytest

import refvit
from refvit.processing.timm import TimmImageProcessor

from conftest import GOLDEN, timm_oracle

pytestmark = pytest.mark.needs_timm
sys.path.insert(0, str(GOLDEN))  # golden/timm_cases.py: the seeded weights and the real-size list
TOL = {"float32": 1e-4, "float64": 1e-10}  # DESIGN §5, relative to max(1, max|ref|)
PHOTO = "chelsea_landscape.jpg"


@pytest.fixture(scope="module")
def timm():
    torch = timm_oracle("torch")
    torch.set_num_threads(2)
    return timm_oracle("timm")


def timm_transform(pretrained_cfg):
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config(pretrained_cfg=pretrained_cfg))


@pytest.mark.parametrize("arch", ["vit_base_patch16_224", "deit_small_distilled_patch16_224", "beit_base_patch16_224",
                                  "resnetv2_50x1_bit"])
def test_real_size_timm_directory_matches_timm(timm, arch, tmp_path, capsys):
    import timm_cases
    import torch
    from timm.models import save_for_hf

    name = timm_cases.REAL_SIZE[arch]
    model = timm_cases.make_model(name, {}, timm_cases.case_seed(name))
    save_for_hf(model, tmp_path, safe_serialization=True)  # timm's hub layout, real shapes
    image = refvit.load_image(GOLDEN / "images" / PHOTO)
    ref_pixels = timm_transform(model.pretrained_cfg)(image).numpy()[None]
    proc = refvit.AutoImageProcessor.from_pretrained(tmp_path)
    pixels = proc(image)["pixel_values"]
    pixel_err = float(np.abs(pixels - ref_pixels).max())
    assert pixels.shape == ref_pixels.shape and pixel_err == 0.0
    report = {"architecture": arch, "pixel_max_abs": pixel_err, "input": list(pixels.shape)}
    for dtype in ("float32", "float64"):
        ours = refvit.from_pretrained(tmp_path, dtype=dtype)(pixels.astype(dtype)).logits
        with torch.no_grad():
            ref = model.to(getattr(torch, dtype))(torch.from_numpy(ref_pixels).to(getattr(torch, dtype))).numpy()
        err = float(np.abs(ours - ref).max())
        report[f"logits_max_abs_{dtype}"] = err
        report[f"logits_max_abs_ref_{dtype}"] = float(np.abs(ref).max())
        assert err <= TOL[dtype] * max(1.0, float(np.abs(ref).max())), f"{arch} {dtype}: max|Δ| {err:.3g}"
        assert ours.argmax() == ref.argmax()
    with capsys.disabled():
        print(f"\ntimm parity: {json.dumps(report)}")


def test_eval_transform_sweep_is_pixel_exact(timm):
    """Every crop mode x interpolation x crop_pct x (odd) size, on the four shipped photos: max|Δ| must be 0."""
    images = [refvit.load_image(p) for p in sorted((GOLDEN / "images").glob("*")) if p.suffix in (".jpg", ".png")]
    worst, count = 0.0, 0
    sweep = itertools.product([(3, 224, 224), (3, 97, 131), (3, 448, 448)], [0.875, 0.9, 1.0, 1.15],
                              ["center", "squash", "border"], ["bicubic", "bilinear", "nearest", "lanczos", "box",
                                                               "hamming"])
    for size, pct, mode, interp in sweep:
        if size[1] == 448 and (interp != "bilinear" or pct != 1.0):  # BiT's size: its own settings
            continue
        cfg = {"input_size": size, "crop_pct": pct, "crop_mode": mode, "interpolation": interp,
               "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}
        transform, proc = timm_transform(cfg), TimmImageProcessor.from_pretrained_cfg(cfg)
        for image in images:
            ref, ours = transform(image).numpy(), proc(image)["pixel_values"][0]
            assert ours.shape == ref.shape, (cfg, image.size)
            err = float(np.abs(ours - ref).max())
            assert err == 0.0, (cfg, image.size, err)
            worst, count = max(worst, err), count + 1
    assert count == 4 * (2 * 4 * 3 * 6 + 3)


@pytest.mark.parametrize("name, kwargs, field", [
    ("deit3_small_patch16_224", dict(depth=1), "architecture 'deit3_small_patch16_224'"),
    ("vit_small_patch16_224", dict(depth=1, init_values=1e-5), "init_values"),
    ("vit_small_patch16_224", dict(depth=1, reg_tokens=4), "reg_tokens"),
    ("vit_small_patch16_224", dict(depth=1, global_pool="avg"), "global_pool"),
    ("vit_small_patch16_224", dict(depth=1, class_token=False, global_pool="avg"), "class_token"),
    ("resnetv2_50", {}, "architecture 'resnetv2_50'"),
    ("resnetv2_50x1_bit", dict(output_stride=16), "output_stride"),
])
def test_what_refvit_cannot_express_is_refused(timm, name, kwargs, field, tmp_path):
    from timm.models import save_for_hf

    save_for_hf(timm.create_model(name, pretrained=False, **kwargs), tmp_path, safe_serialization=True)
    with pytest.raises(refvit.ConfigError, match=field):
        refvit.from_pretrained(tmp_path)


def test_legacy_pytorch_model_bin_and_no_embed_class(timm, tmp_path):
    """timm's default save (pytorch_model.bin) of a no_embed_class ViT (DeiT-III-style position embeddings)."""
    import timm_cases
    import torch
    from timm.models import save_for_hf

    model = timm_cases.make_model("vit_small_patch16_224", dict(depth=2, no_embed_class=True, img_size=64), 5)
    save_for_hf(model, tmp_path)
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64))
    with torch.no_grad():
        ref = model.double()(torch.from_numpy(x)).numpy()
    ours = refvit.from_pretrained(tmp_path, dtype="float64")(x).logits
    assert np.abs(ours - ref).max() <= 1e-10 * max(1.0, np.abs(ref).max())


PRESET = {"vit": "timm-vit", "deit": "timm-vit", "beit": "timm-beit", "bit": "timm-resnetv2"}


@pytest.mark.parametrize("case", sorted(__import__("timm_cases").CASES))
def test_every_module_matches_timm_through_the_parity_presets(timm, case, tmp_path):
    """A directory timm wrote, opened by refvit.from_pretrained (no conversion script): refvit's trace against
    `parity.capture_torch(timm_model, x, names=<timm preset>)`, module by module, within the float32 golden tolerance
    (float64 intermediates: golden/timm, tests/test_timm.py)."""
    dtype = "float32"
    import timm_cases
    import torch
    from timm.models import save_for_hf

    from refvit import parity

    name, kwargs, (B, H, W) = timm_cases.CASES[case]
    if timm_cases.kind_of(name) == "bit":
        # the reduced ResNetV2 has one channel per GroupNorm group in its bottlenecks (32 mid channels, 32 groups):
        # at the golden's 40² its last stage normalises 2x2 = 4 numbers per group, where float32 rounding is amplified
        # by 1/σ (a fresh input there gave timm-vs-refvit 2.8e-4 at one norm3, float64 agreeing to 1e-15); 128² makes
        # it 16 numbers, conditioned like the real model's groups
        H = W = 128
    model = timm_cases.make_model(name, kwargs, timm_cases.case_seed(case))
    save_for_hf(model, tmp_path, safe_serialization=True)
    x = np.random.default_rng(2).standard_normal((B, 3, H, W)).astype(dtype)
    reference = parity.capture_torch(model.to(getattr(torch, dtype)), x, names=PRESET[timm_cases.kind_of(name)])
    candidate = parity.capture(refvit.from_pretrained(tmp_path, dtype=dtype), x)
    result = parity.compare(reference, candidate)
    assert result.ok, parity.format_report(result)
    compared = [r.name for r in result.rows if r.status == "OK"]
    assert len(compared) >= 15 and "logits" in compared, compared
