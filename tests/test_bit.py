"""BiT beyond the golden cases: weight standardisation at load, TF-"SAME" padding, the configs transformers cannot
run (width_factor with the final norm / classifier, "VALID" padding: checked against direct NumPy formulas or
refused), config and input validation, loading across classes, and the BiT image processor."""

import json
import math
import shutil

import numpy as np
import pytest

import refvit
from refvit import kernels, synthetic
from refvit.errors import CheckpointError, ConfigError, InputError
from refvit.kernels.conv import conv_output_size
from refvit.models import bit

from conftest import golden_case

BIT_CASES = ("bit_preact_same", "bit_preact_model", "bit_bottleneck", "bit_bottleneck_bin", "bit_backbone",
             "bit_backbone_indices", "bit_output_stride16", "bit_output_stride8", "bit_preact_output_stride8",
             "bit_model_width2", "bit_no_labels", "bit_50_448")


def tiny_config(**overrides):
    """golden/cases_bit.py `tiny`: stem 16, stages 16/32/64 with 1/2/1 layers, 4 groups, 5 labels."""
    cfg = {"model_type": "bit", "num_channels": 3, "embedding_size": 16, "hidden_sizes": [16, 32, 64],
           "depths": [1, 2, 1], "num_groups": 4, "id2label": {str(i): f"class_{i}" for i in range(5)}}
    cfg.update(overrides)
    return cfg


def seeded_model(config, arch="BitForImageClassification", dtype="float64", backend="numpy", seed=0):
    tensors = synthetic.random_state_dict(synthetic.shapes_for(config, arch), seed)
    return refvit.from_state_dict(config, tensors, arch, dtype, backend), tensors


def test_golden_cases_exist(golden_dir):
    names = {p.name for p in (golden_dir / "cases").iterdir()}
    assert set(BIT_CASES) <= names
    for name in ("bit_default", "bit_448", "bit_convert_default", "bit_legacy", "bit_legacy_feature_extractor"):
        assert (golden_dir / "processing" / name / "expected.npz").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# Weight standardisation, once, at load


def test_standardize_weight_is_torchs_training_batch_norm_formula():
    w = np.random.default_rng(0).standard_normal((5, 3, 3, 3)) * 0.1 + 0.3
    flat = w.reshape(5, -1)
    expected = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-8)  # biased var
    np.testing.assert_allclose(bit.standardize_weight(w), expected.reshape(w.shape), rtol=0, atol=1e-13)
    assert bit.WS_EPS == 1e-8  # every call site in modeling_bit.py passes eps=1e-8 (the class default is 1e-6)


def test_params_hold_standardised_conv_weights_and_untouched_norms():
    model, tensors = seeded_model(tiny_config())
    conv = model.params["bit"]["encoder"]["stages"][1]["layers"][0]["conv2"]["weight"]
    raw = tensors["bit.encoder.stages.1.layers.0.conv2.weight"]
    np.testing.assert_allclose(conv, bit.standardize_weight(raw), rtol=0, atol=1e-12)
    flat = conv.reshape(conv.shape[0], -1)
    np.testing.assert_allclose(flat.mean(1), 0, atol=1e-12)
    np.testing.assert_allclose(flat.var(1), 1, atol=1e-6)
    norm = model.params["bit"]["encoder"]["stages"][1]["layers"][0]["norm2"]["weight"]
    np.testing.assert_array_equal(norm, tensors["bit.encoder.stages.1.layers.0.norm2.weight"])
    assert "weight" in model.params["classifier"][1]  # the classifier is a Linear, not standardised
    np.testing.assert_array_equal(model.params["classifier"][1]["weight"], tensors["classifier.1.weight"])


def test_stem_convolution_equals_standardise_then_conv_with_same_padding():
    """The recorded stem output is conv2d(x, standardise(raw weight)) with TF-"SAME" dynamic padding."""
    cfg = tiny_config(global_padding="same")
    model, tensors = seeded_model(cfg)
    x = np.random.default_rng(1).standard_normal((1, 3, 13, 10))
    out = model(x, output_intermediates=True).intermediates["bit.embedder.convolution"]
    w = bit.standardize_weight(tensors["bit.embedder.convolution.weight"].astype(np.float64))
    # TF SAME: total padding (ceil(n / 2) - 1) * 2 + 7 - n, the odd pixel at the bottom / right
    pads = [((math.ceil(n / 2) - 1) * 2 + 7 - n) for n in (13, 10)]
    padding = (pads[0] // 2, pads[0] - pads[0] // 2, pads[1] // 2, pads[1] - pads[1] // 2)
    assert padding == (3, 3, 2, 3)
    ref = kernels.NUMPY.conv2d(x, w, None, (2, 2), padding)
    assert out.shape == (1, 16, 7, 5)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", range(1, 12))
@pytest.mark.parametrize("kernel,stride,dilation", [(7, 2, 1), (3, 2, 1), (1, 2, 1), (3, 1, 2), (3, 2, 2)])
def test_dynamic_pad_gives_ceil_of_size_over_stride(size, kernel, stride, dilation):
    top, bottom = bit.dynamic_pad(size, kernel, stride, dilation)
    assert 0 <= bottom - top <= 1
    assert conv_output_size(size, kernel, stride, top, bottom, dilation) == math.ceil(size / stride)


# ----------------------------------------------------------------------------------------------------------------------
# What transformers cannot run: refused, or checked against a NumPy formula


def test_make_div_rounds_channels_like_modeling_bit():
    assert [bit.make_div(v) for v in (4, 8, 10, 20, 36, 64, 100, 512 * 0.25)] == [8, 8, 16, 24, 40, 64, 104, 128]


@pytest.mark.parametrize("arch,layer_type", [("BitModel", "preactivation"), ("BitBackbone", "preactivation"),
                                             ("BitForImageClassification", "preactivation"),
                                             ("BitForImageClassification", "bottleneck")])
def test_width_factor_where_transformers_fails_is_refused(arch, layer_type):
    config = tiny_config(width_factor=2, layer_type=layer_type, architectures=[arch])
    with pytest.raises(ConfigError, match="width_factor.*make_div"):
        refvit.from_state_dict(config, {}, arch)


def test_width_factor_in_bottleneck_models_widens_every_stage():
    """BitModel/BitBackbone with bottleneck layers run in transformers (golden bit_model_width2); the widths follow
    make_div(hidden_size · width_factor), the bottlenecks make_div(width · 0.25)."""
    config = tiny_config(width_factor=3, layer_type="bottleneck", hidden_sizes=[16, 24, 40], num_groups=8)
    model, _ = seeded_model(config, "BitBackbone")
    plans = bit.stage_plan(model.config)
    assert [p.out_channels for p in plans] == [48, 72, 120]
    assert [p.mid_channels for p in plans] == [bit.make_div(48 / 4), bit.make_div(72 / 4), bit.make_div(120 / 4)]
    out = model(np.random.default_rng(0).standard_normal((1, 3, 32, 32)), output_hidden_states=True)
    assert [h.shape[1] for h in out.hidden_states] == [16, 48, 72, 120]


def test_valid_padding_is_refused():
    with pytest.raises(ConfigError, match="VALID"):
        seeded_model(tiny_config(global_padding="valid"))


# ----------------------------------------------------------------------------------------------------------------------
# Config and input validation


@pytest.mark.parametrize("overrides,match", [
    ({"num_groups": 3}, "num_groups: 3 does not divide"),
    ({"hidden_sizes": [16, 32]}, "same length"),
    ({"depths": [1, 0, 1]}, "depths"),
    ({"layer_type": "basic"}, "layer_type"),
    ({"global_padding": "full"}, "global_padding"),
    ({"global_padding": 3}, "global_padding"),
    ({"hidden_act": "mish"}, "hidden_act"),
    ({"num_channels": 0}, "num_channels"),
    ({"output_stride": True}, "output_stride"),
    ({"embedding_dynamic_padding": "yes"}, "embedding_dynamic_padding"),
    ({"out_features": ["stage2", "stem"]}, "out_features"),
    ({"out_features": ["stage9"]}, "out_features"),
    ({"out_indices": [0, 7]}, "out_indices"),
    ({"out_indices": [1], "out_features": ["stage2"]}, "name different stages"),
    ({"model_type": "vit"}, "model_type"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        bit.bit_config_from_dict(tiny_config(**overrides))


def test_config_errors_are_listed_together_and_defaults_fill_missing_keys():
    with pytest.raises(ConfigError) as e:
        bit.bit_config_from_dict(tiny_config(num_channels=-1, layer_type="x", hidden_act="nope"))
    assert all(k in str(e.value) for k in ("num_channels", "layer_type", "hidden_act"))
    cfg = bit.bit_config_from_dict({"model_type": "bit"})
    assert (cfg.hidden_sizes, cfg.depths, cfg.num_groups, cfg.layer_type) == ((256, 512, 1024, 2048), (3, 4, 6, 3), 32,
                                                                              "preactivation")
    assert cfg.stage_names == ("stem", "stage1", "stage2", "stage3", "stage4")
    assert (cfg.out_features, cfg.out_indices) == (("stage4",), (4,))  # default: the last stage
    assert bit.bit_config_from_dict(tiny_config(global_padding="same")).global_padding == "SAME"  # upper-cased
    cfg = bit.bit_config_from_dict(tiny_config(out_indices=[-3, -1]))
    assert (cfg.out_features, cfg.out_indices) == (("stage1", "stage3"), (1, 3))


@pytest.mark.parametrize("kwargs,match", [
    ({"bool_masked_pos": np.zeros((1, 4), bool)}, "bool_masked_pos"),
    ({"interpolate_pos_encoding": True}, "interpolate_pos_encoding"),
])
def test_options_bit_does_not_take(kwargs, match):
    model, _ = seeded_model(tiny_config())
    with pytest.raises(InputError, match=match):
        model(np.zeros((1, 3, 32, 32)), **kwargs)


def test_outputs_follow_transformers_fields_and_ignore_output_attentions():
    model, _ = seeded_model(tiny_config(), "BitModel")
    out = model(np.zeros((2, 3, 32, 32)), output_attentions=True, output_hidden_states=True)
    assert list(out.keys()) == ["last_hidden_state", "pooler_output", "hidden_states"]
    assert out.pooler_output.shape == (2, 64, 1, 1) and len(out.hidden_states) == 4
    out = seeded_model(tiny_config())[0](np.zeros((1, 3, 32, 32)))
    assert list(out.keys()) == ["logits"] and out.logits.shape == (1, 5)
    backbone = seeded_model(tiny_config(out_features=["stem", "stage2"]), "BitBackbone")[0]
    out = backbone(np.zeros((1, 3, 32, 32)))
    assert list(out.keys()) == ["feature_maps"] and [f.shape for f in out.feature_maps] == [(1, 16, 8, 8),
                                                                                            (1, 32, 4, 4)]


def test_small_inputs_run_like_torch_and_too_small_ones_are_refused():
    model, _ = seeded_model(tiny_config())  # torch-style padding: even a 1×1 image goes through
    assert model(np.zeros((1, 3, 1, 1))).logits.shape == (1, 5)
    model, _ = seeded_model(tiny_config(global_padding="same"))  # SAME stem, un-padded 3×3 max-pool: needs 3×3
    with pytest.raises(InputError, match="too small"):
        model(np.zeros((1, 3, 4, 4)))
    with pytest.raises(InputError, match="channels"):
        model(np.zeros((1, 1, 32, 32)))


def test_intermediates_are_named_like_the_checkpoint():
    model, _ = seeded_model(tiny_config(layer_type="bottleneck"))
    names = set(model(np.zeros((1, 3, 32, 32)), output_intermediates=True).intermediates)
    for name in ("bit.embedder.convolution", "bit.embedder.norm", "bit.embedder.pooler", "bit.embedder",
                 "bit.encoder.stages.0.layers.0.downsample.conv", "bit.encoder.stages.0.layers.0.downsample.norm",
                 "bit.encoder.stages.1.layers.1.conv2", "bit.encoder.stages.1.layers.1.norm3",
                 "bit.encoder.stages.1.layers.1", "bit.encoder.stages.2", "bit.norm", "bit.pooler", "classifier"):
        assert name in names


# ----------------------------------------------------------------------------------------------------------------------
# Loading across classes


def test_backbone_and_base_model_load_a_classification_checkpoint(tmp_path):
    case = golden_case("bit_bottleneck")
    x = np.load(case / "inputs.npz")["pixel_values"]
    full = refvit.from_pretrained(case, dtype="float64", backend="numpy")
    ref = full(x, output_hidden_states=True).hidden_states
    backbone = refvit.BitBackbone.from_pretrained(case, dtype="float64", backend="numpy")  # classifier ignored
    assert [f.shape for f in backbone(x).feature_maps] == [ref[-1].shape]
    np.testing.assert_array_equal(backbone(x).feature_maps[0], ref[-1])
    base = refvit.BitModel.from_pretrained(case, dtype="float64", backend="numpy")
    assert "classifier.1.weight" in base.ignored_tensors
    np.testing.assert_array_equal(base(x).last_hidden_state, ref[-1])  # bottleneck: no final norm


def test_classifier_refuses_a_base_model_checkpoint():
    with pytest.raises(CheckpointError, match="classifier.1.weight"):
        refvit.BitForImageClassification.from_pretrained(golden_case("bit_preact_model"))


def test_auto_model_without_architectures(tmp_path):
    shutil.copytree(golden_case("bit_preact_model"), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config.pop("architectures")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    assert refvit.AutoModel.from_pretrained(tmp_path / "m").architecture.name == "BitModel"
    assert refvit.from_pretrained(tmp_path / "m").architecture.name == "BitModel"


# ----------------------------------------------------------------------------------------------------------------------
# BitImageProcessor


def test_bit_processor_selection_and_defaults(tmp_path):
    p = refvit.BitImageProcessor()
    assert p.size == {"shortest_edge": 224} and p.crop_size == {"height": 224, "width": 224} and p.resample == 3
    assert p.do_convert_rgb is True and p.image_mean == (0.48145466, 0.4578275, 0.40821073)
    for key, value in (("image_processor_type", "BitImageProcessor"), ("image_processor_type", "BitImageProcessorPil"),
                       ("feature_extractor_type", "BitFeatureExtractor")):
        (tmp_path / "preprocessor_config.json").write_text(json.dumps({key: value, "size": 300}))
        proc = refvit.AutoImageProcessor.from_pretrained(tmp_path)
        assert type(proc) is refvit.BitImageProcessor and proc.size == {"shortest_edge": 300}  # int: shortest edge
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_resize": True}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bit"}))
    assert type(refvit.AutoImageProcessor.from_pretrained(tmp_path)) is refvit.BitImageProcessor


def test_bit_processor_converts_gray_and_rgba_by_default():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 60), dtype=np.uint8)
    out = refvit.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})(
        gray[:, :, None]).pixel_values
    assert out.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(out[0, 0] * 0.26862954 + 0.48145466, out[0, 1] * 0.26130258 + 0.4578275, atol=1e-6)
