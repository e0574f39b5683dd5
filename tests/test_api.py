"""Public API behaviour (docs/DESIGN.md §2, §4, §8): loading, output objects, strict mapping, bad inputs, transformers-style use."""

import json
import shutil

import numpy as np
import pytest

import refvit
from refvit.checkpoint import read_safetensors, write_safetensors
from refvit.errors import CheckpointError, ConfigError, InputError

from conftest import golden_case

DEIT_CARD_PREPROCESSOR = {  # the keys facebook/deit-base-distilled-patch16-224 ships, sizes shrunk to the tiny model
    "crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "DeiTFeatureExtractor", "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 36,
}


def golden_outputs(case, dtype="float32"):
    with np.load(golden_case(case) / "outputs.npz") as z:
        return {k[len(dtype) + 1:]: z[k] for k in z.files if k.startswith(dtype + "/")}


def golden_inputs(case):
    with np.load(golden_case(case) / "inputs.npz") as z:
        return {k: z[k] for k in z.files}


def close(a, b, tol=1e-4):
    return np.abs(a.astype(np.float64) - b).max() <= tol * max(1.0, np.abs(b).max())


@pytest.fixture
def card_dir(tmp_path):
    d = tmp_path / "deit-card"
    shutil.copytree(golden_case("deit_teacher"), d)
    (d / "preprocessor_config.json").write_text(json.dumps(DEIT_CARD_PREPROCESSOR))
    return d


@pytest.mark.needs_framework
def test_deit_model_card_snippet(card_dir, golden_dir):
    """The DeiT model card's snippet with only the import changed (and a local image instead of the URL)."""
    from PIL import Image
    from refvit import AutoFeatureExtractor, DeiTForImageClassificationWithTeacher

    image = Image.open(golden_dir / "images" / "chelsea_landscape.jpg")
    feature_extractor = AutoFeatureExtractor.from_pretrained(card_dir)
    model = DeiTForImageClassificationWithTeacher.from_pretrained(card_dir)
    inputs = feature_extractor(images=image, return_tensors="np")
    outputs = model(**inputs)
    logits = outputs.logits
    predicted_class_idx = logits.argmax(-1).item()
    assert model.config.id2label[predicted_class_idx] == f"class_{predicted_class_idx}"
    assert isinstance(model, DeiTForImageClassificationWithTeacher) and logits.shape == (1, 5)

    # Same snippet through transformers itself, when it is installed: same pixel values and same logits.
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    # (transformers 5 dropped vision feature extractors from AutoFeatureExtractor: its AutoImageProcessor reads the
    # same legacy config; backend="pil" is the backend refvit reproduces)
    hf_processor = transformers.AutoImageProcessor.from_pretrained(card_dir, backend="pil")
    hf_inputs = hf_processor(images=image, return_tensors="pt")
    hf_model = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(card_dir).eval()
    with torch.no_grad():
        hf_logits = hf_model(**hf_inputs).logits.numpy()
    assert close(inputs["pixel_values"], hf_inputs["pixel_values"].numpy(), 1e-6)
    assert close(logits, hf_logits)


def test_output_objects_follow_transformers():
    model = refvit.from_pretrained(golden_case("deit_teacher"))
    x = golden_inputs("deit_teacher")["pixel_values"]
    out = model(x)
    assert type(out).__name__ == "DeiTForImageClassificationWithTeacherOutput"
    assert list(out.keys()) == ["logits", "cls_logits", "distillation_logits"]
    assert out.hidden_states is None and out.attentions is None and out.intermediates is None
    assert out[0] is out.logits and out["cls_logits"] is out.cls_logits
    np.testing.assert_allclose(out.logits, (out.cls_logits + out.distillation_logits) / 2, rtol=1e-6)
    as_tuple = model(x, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 3
    full = model(x, output_hidden_states=True, output_attentions=True)
    cfg = model.config
    assert len(full.hidden_states) == cfg.num_hidden_layers + 1 and len(full.attentions) == cfg.num_hidden_layers
    assert full.attentions[0].shape == (x.shape[0], cfg.num_attention_heads, cfg.num_patches + 2, cfg.num_patches + 2)
    with pytest.raises(AttributeError):
        out.no_such_field


def test_base_model_outputs_and_dtype():
    model = refvit.from_pretrained(golden_case("vit_model"), dtype="float64", backend="numpy")
    out = model(golden_inputs("vit_model")["pixel_values"])
    assert type(out).__name__ == "BaseModelOutputWithPooling"
    assert out.last_hidden_state.dtype == np.float64 and out.pooler_output.shape == (2, 32)
    assert isinstance(model, refvit.ViTModel)


def test_intermediates_are_named_like_the_checkpoint():
    model = refvit.from_pretrained(golden_case("deit_teacher"))
    out = model(golden_inputs("deit_teacher")["pixel_values"], output_intermediates=True)
    names = set(out.intermediates)
    for n in ("deit.embeddings", "deit.encoder.layer.0.layernorm_before", "deit.encoder.layer.0.attention.attention.query",
              "deit.encoder.layer.0.attention.attention", "deit.encoder.layer.0.attention.output",
              "deit.encoder.layer.1.intermediate", "deit.encoder.layer.1.output", "deit.layernorm", "cls_classifier"):
        assert n in names
    ref = golden_outputs("deit_teacher")
    assert close(out.intermediates["deit.encoder.layer.1.attention.output"],
                 ref["intermediates/deit.encoder.layer.1.attention.output"])


def test_base_model_loads_a_head_checkpoint():
    """As transformers: ViTModel from a ViTForImageClassification directory (no pooler there -> pooler_output None)."""
    model = refvit.ViTModel.from_pretrained(golden_case("vit_classification"))
    out = model(golden_inputs("vit_classification")["pixel_values"])
    assert out.pooler_output is None
    assert close(out.last_hidden_state, golden_outputs("vit_classification")["intermediates/vit.layernorm"])
    assert model.ignored_tensors == ["classifier.bias", "classifier.weight"]


def test_head_model_refuses_a_base_checkpoint():
    with pytest.raises(CheckpointError, match="missing 2 tensor.*base model.*classifier.bias"):
        refvit.from_pretrained(golden_case("vit_model"), architecture="ViTForImageClassification")


def test_strict_mapping_reports_every_problem_at_once(tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(golden_case("deit_teacher"), d)
    tensors = dict(read_safetensors(d / "model.safetensors"))
    del tensors["deit.encoder.layer.1.output.dense.bias"]
    tensors["deit.encoder.layer.9.extra"] = np.zeros(3, np.float32)
    tensors["cls_classifier.weight"] = np.zeros((7, 32), np.float32)
    write_safetensors(d / "model.safetensors", {k: np.array(v) for k, v in tensors.items()})
    with pytest.raises(CheckpointError) as e:
        refvit.from_pretrained(d)
    msg = str(e.value)
    assert "missing 1 tensor(s): deit.encoder.layer.1.output.dense.bias" in msg
    assert "unexpected 1 tensor(s): deit.encoder.layer.9.extra" in msg
    assert "cls_classifier.weight: checkpoint (7, 32), config expects (5, 32)" in msg
    assert "model.safetensors" in msg


def test_sharded_safetensors_directory(tmp_path):
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(golden_case("deit_teacher") / "config.json", d)
    tensors = {k: np.array(v) for k, v in read_safetensors(golden_case("deit_teacher") / "model.safetensors").items()}
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for fname, keys in shards.items():
        write_safetensors(d / fname, {k: tensors[k] for k in keys})
    index = {"metadata": {"total_size": 0}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    out = refvit.from_pretrained(d)(golden_inputs("deit_teacher")["pixel_values"])
    assert close(out.logits, golden_outputs("deit_teacher")["logits"])


@pytest.mark.parametrize("call, match", [
    (lambda m, x: m(x[:, :2]), r"expected 3 channels"),
    (lambda m, x: m(x[0]), r"expected shape \(B, 3, H, W\)"),
    (lambda m, x: m(x[:, :, :24]), r"input image size \(24\*32\) doesn't match model \(32\*32\)"),
    (lambda m, x: m(x, bool_masked_pos=np.zeros((3, 16), bool)), r"has no mask token"),
    (lambda m, x: m(x, labels=np.zeros(3)), r"unsupported argument\(s\) \['labels'\]"),
    (lambda m, x: m(), r"pixel_values is required"),
    (lambda m, x: m(x.astype(str)), r"real numeric array"),
    (lambda m, x: m(x[:, :, :4, :4], interpolate_pos_encoding=True), r"smaller than one patch"),
    (lambda m, x: m(np.zeros((0, 3, 32, 32), np.float32)), r"empty batch"),
])
def test_bad_model_inputs(call, match):
    model = refvit.from_pretrained(golden_case("deit_teacher"), backend="numpy")
    x = golden_inputs("deit_teacher")["pixel_values"]
    with pytest.raises(InputError, match=match):
        call(model, x)


def test_bad_mask():
    model = refvit.from_pretrained(golden_case("vit_mim"), backend="numpy")
    x = golden_inputs("vit_mim")["pixel_values"]
    with pytest.raises(InputError, match=r"expected shape \(2, 16\)"):
        model(x, bool_masked_pos=np.zeros((2, 15), bool))
    with pytest.raises(InputError, match="booleans"):
        model(x, bool_masked_pos=np.full((2, 16), 0.5))
    # an explicit all-False mask is the same as no mask
    np.testing.assert_array_equal(model(x, bool_masked_pos=np.zeros((2, 16), bool)).reconstruction, model(x).reconstruction)


def test_bad_options():
    with pytest.raises(InputError, match="dtype"):
        refvit.from_pretrained(golden_case("vit_model"), dtype="float16")
    with pytest.raises(InputError, match="backend"):
        refvit.from_pretrained(golden_case("vit_model"), backend="cuda")
    with pytest.raises(CheckpointError, match="not a directory"):
        refvit.from_pretrained(golden_case("vit_model") / "config.json")


def config_dir(tmp_path, **changes):
    d = tmp_path / "cfg"
    shutil.copytree(golden_case("vit_model"), d, dirs_exist_ok=True)
    raw = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    (d / "config.json").write_text(json.dumps(raw))
    return d


@pytest.mark.parametrize("changes, match", [
    ({"num_attention_heads": 5}, r"num_attention_heads: 5 does not divide hidden_size 32"),
    ({"image_size": 30}, r"image_size \[30, 30\] is not divisible by patch_size \[8, 8\]"),
    ({"hidden_size": "32"}, r"hidden_size: expected int, got '32'"),
    ({"qkv_bias": 1}, r"qkv_bias: expected bool"),
    ({"hidden_act": "mish"}, r"hidden_act: activation 'mish' is not supported"),
    ({"architectures": ["SwinModel"]}, r"architecture 'SwinModel' is not supported"),
    ({"patch_size": [8, 8, 8]}, r"patch_size: expected an int or \[height, width\]"),
    ({"layer_norm_eps": -1}, r"layer_norm_eps"),
    ({"id2label": {"0": "a", "2": "b"}}, r"id2label: keys must be 0..1"),
])
def test_config_errors_name_the_key(tmp_path, changes, match):
    with pytest.raises(ConfigError, match=match):
        refvit.from_pretrained(config_dir(tmp_path, **changes))


def test_config_lists_every_problem(tmp_path):
    with pytest.raises(ConfigError) as e:
        refvit.from_pretrained(config_dir(tmp_path, num_hidden_layers="2", intermediate_size=-1, pooler_act="x"))
    msg = str(e.value)
    assert "num_hidden_layers" in msg and "intermediate_size" in msg and "pooler_act" in msg and "config.json" in msg


def test_config_json_not_json(tmp_path):
    d = config_dir(tmp_path)
    (d / "config.json").write_text('{"hidden_size": NaN}')
    with pytest.raises(ConfigError, match="NaN"):
        refvit.from_pretrained(d)
    (d / "config.json").write_text('{"a": 1, "a": 2}')
    with pytest.raises(ConfigError, match="duplicate"):
        refvit.from_pretrained(d)
    (d / "config.json").write_text('[1]')
    with pytest.raises(ConfigError, match="JSON object"):
        refvit.from_pretrained(d)


def test_mismatched_shapes_from_config(tmp_path):
    with pytest.raises(CheckpointError, match="wrong shape"):
        refvit.from_pretrained(config_dir(tmp_path, intermediate_size=48))


def test_auto_classes(tmp_path):
    assert type(refvit.AutoModel.from_pretrained(golden_case("deit_teacher"))).__name__ == "DeiTModel"
    clf = refvit.AutoModelForImageClassification.from_pretrained(golden_case("deit_teacher"))
    assert clf.architecture.name == "DeiTForImageClassificationWithTeacher"


def test_cli_verify_inspect_classify(card_dir, golden_dir, capsys):
    from refvit.cli import main

    assert main(["verify", "--cases", "vit_model", "deit_mim", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "vit_model" in out and "deit_mim" in out and "4 passed, 0 failed" in out
    assert main(["inspect", str(card_dir)]) == 0
    assert "DeiTForImageClassificationWithTeacher" in capsys.readouterr().out
    assert main(["classify", str(card_dir), str(golden_dir / "images" / "chelsea_landscape.jpg"), "--top-k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result[0]["top"]) == 2 and result[0]["top"][0]["label"].startswith("class_")
    assert result[0]["top"][0]["probability"] >= result[0]["top"][1]["probability"]
    assert main(["classify", str(golden_case("vit_model")), "x.jpg"]) == 2
    assert main(["verify", "--cases", "nope"]) == 2
