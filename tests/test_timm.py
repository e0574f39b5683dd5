"""timm checkpoints without torch: the golden cases timm wrote (golden/timm/, golden/timm_cases.py) opened with
refvit.from_pretrained, logits and per-module intermediates against timm's, the eval transform against timm's pixels,
the architecture / argument refusals, the CLI. (tests/test_timm_oracle.py runs timm itself, in CI's timm stage.)"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import refvit
from refvit import timm as rtimm
from refvit.checkpoint import read_safetensors, write_safetensors
from refvit.processing.timm import TimmImageProcessor

from conftest import GOLDEN, golden_timm_case

MODEL_CASES = sorted(p.name for p in (GOLDEN / "timm" / "models").iterdir())
PROCESSING_CASES = sorted(p.name for p in (GOLDEN / "timm" / "processing").iterdir())
TOL = {"float32": 1e-4, "float64": 1e-10}  # DESIGN §5: max|ours - ref| <= tol * max(1, max|ref|)


def within(ours, ref, dtype):
    err = float(np.abs(np.asarray(ours, np.float64) - ref).max())
    return err, err <= TOL[dtype] * max(1.0, float(np.abs(ref).max()))


def test_every_family_has_a_shipped_case():
    kinds = {json.loads((golden_timm_case(c) / "meta.json").read_text())["kind"] for c in MODEL_CASES}
    assert kinds == {"vit", "deit", "beit", "bit"}
    assert len(PROCESSING_CASES) >= 4


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", MODEL_CASES)
def test_logits_and_intermediates_match_timm(case, dtype):
    d = golden_timm_case(case)
    model = refvit.from_pretrained(d, dtype=dtype)
    assert model.timm_config["architecture"] == json.loads((d / "config.json").read_text())["architecture"]
    x = np.load(d / "inputs.npz")["pixel_values"].astype(dtype)
    ref = np.load(d / "outputs.npz")
    out = model(x, output_intermediates=True)
    err, ok = within(out.logits, ref[f"{dtype}/logits"], dtype)
    assert ok, f"{case} {dtype}: logits max|Δ| {err:.3g}"
    names = [k.split("/", 2)[2] for k in ref.files if k.startswith(f"{dtype}/intermediates/")]
    assert len(names) >= 10, names
    bad = []
    for name in names:
        r = ref[f"{dtype}/intermediates/{name}"]
        if name not in out.intermediates:
            bad.append(f"{name}: not recorded by refvit")
            continue
        ours = out.intermediates[name]
        if ours.shape != r.shape:  # same values, another layout (e.g. the pooled map (B, C) vs (B, C, 1, 1))
            assert ours.size == r.size, f"{name}: refvit {ours.shape}, timm {r.shape}"
            ours = ours.reshape(r.shape)
        err, ok = within(ours, r, dtype)
        if not ok:
            bad.append(f"{name}: max|Δ| {err:.3g}")
    assert not bad, f"{case} {dtype}: " + "; ".join(bad)


def _pillow_key(version):
    return ".".join(version.split(".")[:2])


@pytest.mark.parametrize("case", PROCESSING_CASES)
def test_processor_equals_timms_eval_transform(case):
    """refvit's TimmImageProcessor against the pixels timm's create_transform(resolve_data_config(...)) made.

    Pixel-exact under the Pillow that wrote the golden (its resize and JPEG decoder are the ones compared). Under
    another Pillow (CI's oldest-dependency venv) resampling and libjpeg differ by design: there the crop geometry must
    still be the same (same shape) and each value within 3 uint8 levels (3/255/std), which a wrong crop offset,
    scale size or interpolation filter breaks (they move whole edges, not single levels)."""
    import PIL

    d = GOLDEN / "timm" / "processing" / case
    meta = json.loads((d / "meta.json").read_text())
    proc = TimmImageProcessor.from_pretrained_cfg(meta["pretrained_cfg"])
    expected = np.load(d / "pixels.npz")
    same_pillow = _pillow_key(PIL.__version__) == _pillow_key(meta["versions"]["pillow"])
    std = np.array(meta["pretrained_cfg"].get("std", (0.229, 0.224, 0.225)), np.float32)[:, None, None]
    for stem in expected.files:
        ours = proc(refvit.load_image(next(GOLDEN.glob(f"images/{stem}.*"))))["pixel_values"][0]
        ref = expected[stem]
        assert ours.shape == ref.shape and ours.dtype == np.float32
        if same_pillow:
            assert np.array_equal(ours, ref), f"{case}/{stem}: max|Δ| {np.abs(ours - ref).max()}"
        else:
            assert (np.abs(ours - ref) * std).max() <= 3 / 255 + 1e-6, f"{case}/{stem}"


def test_auto_classes_pick_timm_layout(tmp_path):
    d = golden_timm_case("beit_base_reduced")
    proc = refvit.AutoImageProcessor.from_pretrained(d)
    assert isinstance(proc, TimmImageProcessor)
    cfg = json.loads((d / "config.json").read_text())["pretrained_cfg"]
    assert proc.input_size == tuple(cfg["input_size"]) and proc.crop_pct == cfg["crop_pct"]
    assert refvit.ImageProcessor.from_pretrained(d, crop_pct=1.0).crop_pct == 1.0
    assert refvit.AutoModelForImageClassification.from_pretrained(d).architecture.name == "BeitForImageClassification"
    base = refvit.AutoModel.from_pretrained(d)
    assert base.architecture.name == "BeitModel"
    image = refvit.load_image(GOLDEN / "images" / "chelsea_landscape.jpg")
    batch = proc(images=[image, image], return_tensors="np")
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    logits = refvit.from_pretrained(d)(**batch).logits
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


def test_mapped_configs_of_real_architectures():
    """The registered functions' arguments (timm 1.0.31 source) become the transformers configs of the same shape."""
    hf, arch, _ = rtimm.resolve({"architecture": "vit_base_patch16_224", "num_classes": 1000})
    assert arch == "ViTForImageClassification"
    assert (hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"], hf["intermediate_size"],
            hf["patch_size"], hf["image_size"], hf["layer_norm_eps"]) == (768, 12, 12, 3072, 16, 224, 1e-6)
    hf, arch, _ = rtimm.resolve({"architecture": "deit_small_distilled_patch16_224", "num_classes": 1000})
    assert arch == "DeiTForImageClassificationWithTeacher" and hf["hidden_size"] == 384
    hf, arch, _ = rtimm.resolve({"architecture": "beit_large_patch16_512", "num_classes": 1000})
    assert (hf["image_size"], hf["layer_scale_init_value"], hf["use_mean_pooling"],
            hf["use_relative_position_bias"], hf["use_absolute_position_embeddings"]) == (512, 1e-5, True, True, False)
    hf, arch, _ = rtimm.resolve({"architecture": "resnetv2_50x3_bit", "num_classes": 1000})
    assert arch == "BitForImageClassification"
    assert (hf["embedding_size"], hf["hidden_sizes"], hf["depths"], hf["width_factor"]) == \
        (192, [768, 1536, 3072, 6144], [3, 4, 6, 3], 1)
    hf, arch, _ = rtimm.resolve({"architecture": "deit_tiny_patch16_224", "num_classes": 0})
    assert arch == "ViTModel"


@pytest.mark.parametrize("raw, field", [
    ({"architecture": "convnext_tiny"}, "architecture 'convnext_tiny'"),
    ({"architecture": "resnetv2_50"}, "architecture 'resnetv2_50'"),          # BatchNorm ResNetV2: not BiT
    ({"architecture": "deit3_small_patch16_224"}, "architecture 'deit3_small_patch16_224'"),
    ({"architecture": "vit_base_patch16_224", "model_args": {"init_values": 1e-5}}, "init_values"),
    ({"architecture": "vit_base_patch16_224", "model_args": {"reg_tokens": 4}}, "reg_tokens"),
    ({"architecture": "vit_base_patch16_224", "model_args": {"global_pool": "avg"}}, "global_pool"),
    ({"architecture": "vit_base_patch16_224", "global_pool": "map"}, "global_pool"),
    ({"architecture": "vit_base_patch16_224", "model_args": {"class_token": False}}, "class_token"),
    ({"architecture": "vit_base_patch16_224", "model_args": {"fc_norm": True}}, "fc_norm"),
    ({"architecture": "vit_base_patch16_224", "model_args": {"qk_norm": True}}, "qk_norm"),
    ({"architecture": "vit_base_patch16_224", "model_args": {"dynamic_img_size": True}}, "dynamic_img_size"),
    ({"architecture": "vit_base_patch16_224", "model_args": {"mystery": 1}}, "mystery"),
    ({"architecture": "beit_base_patch16_224", "model_args": {"use_shared_rel_pos_bias": True}}, "use_shared_rel_pos_bias"),
    ({"architecture": "beit_base_patch16_224", "model_args": {"global_pool": "max"}}, "global_pool"),
    ({"architecture": "resnetv2_50x1_bit", "model_args": {"output_stride": 16}}, "output_stride"),
    ({"architecture": "resnetv2_50x1_bit", "model_args": {"stem_type": "same"}}, "stem_type"),
    ({"architecture": "resnetv2_50x1_bit", "model_args": {"channels": [64, 64]}}, "channels"),
    ({"architecture": "vit_base_patch16_224", "num_classes": 3, "label_names": ["a"]}, "label_names"),
    ({"architecture": 3}, "architecture"),
    ({"architecture": "vit_base_patch16_224", "model_args": []}, "model_args"),
])
def test_refused_with_the_field_named(raw, field):
    with pytest.raises(refvit.ConfigError, match=field.replace("(", r"\(").replace("[", r"\[")):
        rtimm.resolve(raw, "config.json")


def test_refusal_happens_before_tensors_are_read(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(golden_timm_case("vit_base_augreg2_reduced"), d)
    raw = json.loads((d / "config.json").read_text())
    raw["model_args"]["init_values"] = 1e-6
    (d / "config.json").write_text(json.dumps(raw))
    (d / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(refvit.ConfigError, match="init_values.*layer scale"):
        refvit.from_pretrained(d)


def test_unmapped_and_missing_timm_tensors_are_reported(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(golden_timm_case("vit_base_augreg2_reduced"), d)
    tensors = read_safetensors(d / "model.safetensors")
    write_safetensors(d / "model.safetensors", {**tensors, "blocks.0.ls1.gamma": np.ones(64, np.float32)})
    with pytest.raises(refvit.CheckpointError, match="blocks.0.ls1.gamma"):
        refvit.from_pretrained(d)
    del tensors["blocks.1.mlp.fc2.bias"]
    write_safetensors(d / "model.safetensors", tensors)
    with pytest.raises(refvit.CheckpointError, match="missing 1 tensor.*encoder.layer.1.output.dense.bias"):
        refvit.from_pretrained(d)


def test_label_names_become_id2label(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(golden_timm_case("vit_small_no_embed_class"), d)
    raw = json.loads((d / "config.json").read_text())
    raw["label_names"] = [f"n{i:08d}" for i in range(raw["num_classes"])]
    (d / "config.json").write_text(json.dumps(raw))
    model = refvit.from_pretrained(d)
    assert model.config.id2label[3] == "n00000003" and model.config.num_labels == 7


@pytest.mark.parametrize("settings, field", [
    ({"crop_mode": "random"}, "crop_mode"), ({"interpolation": "area"}, "interpolation"),
    ({"input_size": [224, 224]}, "input_size"), ({"std": [0.5, 0, 0.5]}, "std"), ({"crop_pct": -1}, "crop_pct"),
    ({"mean": [0.5, 0.5]}, "mean"), ({"input_size": [1, 224, 224]}, "input_size")])
def test_processor_settings_are_checked(settings, field):
    with pytest.raises(refvit.ConfigError, match=field):
        TimmImageProcessor.from_pretrained_cfg(settings)


def test_processor_defaults_and_quirks():
    p = TimmImageProcessor.from_pretrained_cfg({"crop_pct": None, "interpolation": ""})
    assert (p.input_size, p.crop_pct, p.interpolation, p.crop_mode) == ((3, 224, 224), 0.875, "bicubic", "center")
    from refvit.processing.timm import center_crop, keep_ratio_size, shortest_edge_size
    assert shortest_edge_size(300, 451, 248) == (248, 372)        # int(248 * 451 / 300) = 372 (truncated)
    assert keep_ratio_size(300, 451, (248, 275), 0.0) == (248, 373)   # round(451 / (300/248)) = round(372.8...)
    x = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    assert np.array_equal(center_crop(x, (2, 2), 0), x[2:4, 1:3])   # int(round(1.5)) = 2: half to even
    padded = center_crop(x, (7, 4), [9, 9, 9])
    assert padded.shape == (7, 4, 3) and (padded[0] == 9).all() and (padded[-1] == 9).all()


def test_cli_classify_inspect_trace_on_a_timm_dir(tmp_path):
    d = str(golden_timm_case("deit_small_distilled_reduced"))
    image = str(GOLDEN / "images" / "astronaut_portrait.jpg")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "refvit.cli", *args], capture_output=True, text=True,
                              cwd=str(GOLDEN.parent))

    r = cli("inspect", d)
    assert r.returncode == 0, r.stderr
    assert "deit_small_distilled_patch16_224 -> DeiTForImageClassificationWithTeacher" in r.stdout
    assert "embed_dim = 64" in r.stdout and "hidden_size = 64" in r.stdout and "crop_pct=0.9" in r.stdout
    info = json.loads(cli("inspect", "--json", d).stdout)
    assert info["timm"]["mapped_to"] == "DeiTForImageClassificationWithTeacher"
    r = cli("classify", d, image, "--top-k", "2")
    assert r.returncode == 0 and "LABEL_" in r.stdout, r.stderr
    out = tmp_path / "t.safetensors"
    r = cli("trace", d, image, "--out", str(out))
    assert r.returncode == 0, r.stderr
    trace = read_safetensors(out)
    assert any(k.endswith("deit.encoder.layer.1") for k in trace)
    # the trace's pixels are timm's eval transform of the photo
    proc = TimmImageProcessor.from_pretrained(d)
    expected = proc(refvit.load_image(image))["pixel_values"]
    pixel_key = next(k for k in trace if k.endswith("pixel_values"))
    assert np.array_equal(trace[pixel_key], expected)


def test_hub_id_of_a_timm_repo_from_the_cache(tmp_path, monkeypatch):
    """A timm hub repo (config.json + model.safetensors, no preprocessor_config.json) read from the cache, offline:
    the model and timm's eval transform."""
    from test_hub_support import write_snapshot

    d = golden_timm_case("vit_base_augreg2_reduced")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_snapshot(tmp_path, "timm/vit_test", {n: (d / n).read_bytes() for n in ("config.json", "model.safetensors")})
    model = refvit.from_pretrained("timm/vit_test")
    assert model.timm_config["architecture"] == "vit_base_patch16_224"
    proc = refvit.AutoImageProcessor.from_pretrained("timm/vit_test")
    assert isinstance(proc, TimmImageProcessor) and proc.input_size == (3, 64, 64)
    write_snapshot(tmp_path, "org/no_processor", {"config.json": b'{"model_type": "vit"}'})
    with pytest.raises(refvit.RefvitError, match="preprocessor_config.json"):  # not timm: the usual error
        refvit.AutoImageProcessor.from_pretrained("org/no_processor")


def test_cli_evaluate_on_a_timm_dir(tmp_path):
    """`refvit evaluate` with timm's preprocessing: an ImageFolder whose class folders are the model's labels."""
    d = golden_timm_case("resnetv2_50x1_bit_reduced")
    for label, photo in (("LABEL_1", "chelsea_landscape.jpg"), ("LABEL_2", "astronaut_portrait.jpg")):
        (tmp_path / "data" / label).mkdir(parents=True)
        shutil.copy(GOLDEN / "images" / photo, tmp_path / "data" / label / photo)
    r = subprocess.run([sys.executable, "-m", "refvit.cli", "evaluate", str(d), str(tmp_path / "data"), "--json"],
                       capture_output=True, text=True, cwd=str(GOLDEN.parent))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    proc, model = TimmImageProcessor.from_pretrained(d), refvit.from_pretrained(d)
    expected = sum(int(model(proc(refvit.load_image(GOLDEN / "images" / p)).pixel_values).logits.argmax()) == c
                   for c, p in ((1, "chelsea_landscape.jpg"), (2, "astronaut_portrait.jpg")))
    assert report["images"] == 2 and report["correct"] == expected, report


@pytest.mark.parametrize("cls, case, tokens", [
    ("ViTModel", "vit_base_augreg2_reduced", 17), ("DeiTModel", "deit_small_distilled_reduced", 18),
    ("BeitModel", "beit_base_reduced", 17), ("BitModel", "resnetv2_50x1_bit_reduced", None)])
def test_transformers_named_classes_open_a_timm_dir(cls, case, tokens):
    """Model-card style: `refvit.ViTModel.from_pretrained(timm_dir)` runs the base model, the head is ignored."""
    d = golden_timm_case(case)
    model = getattr(refvit, cls).from_pretrained(d)
    assert model.architecture.name == cls and model.ignored_tensors
    out = model(np.load(d / "inputs.npz")["pixel_values"])
    if tokens is not None:
        assert out.last_hidden_state.shape[1] == tokens
    ref = np.load(d / "outputs.npz")
    name = {"ViTModel": "vit.layernorm", "DeiTModel": "deit.layernorm", "BeitModel": "beit.encoder.layer.1",
            "BitModel": "bit.norm"}[cls]  # BitModel: the preactivation final norm
    expected = ref[f"float32/intermediates/{name}"]
    assert np.abs(out.last_hidden_state - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
