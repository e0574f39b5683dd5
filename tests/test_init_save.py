"""Configs and models as the transformers docs show them: `BitConfig()`, `BitModel(config, seed=…)` with random weights
drawn like transformers' `_init_weights`, and `save_pretrained` that transformers loads (and refvit re-reads).

Torch-free tests first (CI stage 1); the comparisons with transformers are marked needs_framework (stage 2).
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

import refvit
from refvit import ConfigError
from refvit.errors import CheckpointError, InputError

# Small configs, one per family, that every class of the family builds (BEiT segmentation needs 4 out_indices).
SMALL = {
    "vit": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                patch_size=8, encoder_stride=8, num_labels=5),
    "deit": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                 patch_size=8, encoder_stride=8, num_labels=5),
    "beit": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32,
                 patch_size=8, vocab_size=40, use_relative_position_bias=True, use_mask_token=True,
                 out_indices=[1, 2, 3, 4], auxiliary_channels=16, num_labels=5),
    "data2vec-vision": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                            image_size=32, patch_size=8, use_shared_relative_position_bias=True,
                            out_indices=[1, 2, 3, 4], auxiliary_channels=16, num_labels=5),
    "cvt": dict(embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3], num_labels=5),  # depth[i] > i: see below
    "bit": dict(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 2], num_groups=4, num_labels=5),
}
# quirk: transformers' CvtStage indexes its per-layer drop-path rates (depth[i] of them) by the stage number i, so it
# cannot build a CvT with depth[i] <= i (IndexError); refvit runs such configs.
SIDE = {"vit": 32, "deit": 32, "beit": 32, "data2vec-vision": 32, "cvt": 64, "bit": 64}
# BitBackbone / BitModel also run with layer_type="bottleneck"; the round trip covers the default (preactivation).


def small_config(family, **overrides):
    return refvit.config.CONFIG_CLASSES[family](**{**SMALL[family], **overrides})


def small_model(name, seed=0, dtype="float32", **overrides):
    cls = refvit.CLASSES[name]
    return cls(small_config(refvit.ARCHITECTURES[name].family, **overrides), seed=seed, dtype=dtype)


def pixels(family, batch=2, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, 3, SIDE[family], SIDE[family])).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# The seeds' examples, verbatim (import line changed)


def test_bit_seed_example_runs_verbatim():
    from refvit import BitConfig, BitModel      # was: from transformers import BitConfig, BitModel

    # Initializing a BiT bit-50 style configuration
    configuration = BitConfig()

    # Initializing a model (with random weights) from the bit-50 style configuration
    model = BitModel(configuration)

    # Accessing the model configuration
    configuration = model.config

    assert configuration == BitConfig() and configuration.depths == (3, 4, 6, 3)
    out = model(np.zeros((1, 3, 224, 224), np.float32))
    assert out.last_hidden_state.shape == (1, 2048, 7, 7) and out.pooler_output.shape == (1, 2048, 1, 1)


def test_beit_and_cvt_seed_configs():
    from refvit import BeitConfig, CvtConfig, CvtModel
    configuration = BeitConfig(use_relative_position_bias=True)
    assert configuration.use_relative_position_bias and configuration.hidden_size == 768
    configuration = CvtConfig()
    assert configuration.embed_dim == (64, 192, 384) and configuration.depth == (1, 2, 10)
    model = CvtModel(CvtConfig(**SMALL["cvt"]), seed=0)
    assert model.config == CvtConfig(**SMALL["cvt"])


# ----------------------------------------------------------------------------------------------------------------------
# Configs


def test_unknown_fields_are_named_and_reported_with_bad_values():
    with pytest.raises(ConfigError) as err:
        refvit.ViTConfig(hiden_size=384, hidden_act="nope", layer_norm_eps=-1.0)
    msg = str(err.value)
    assert "unknown field(s) ['hiden_size']" in msg and "transformers would store them silently" in msg
    assert "hidden_act" in msg and "layer_norm_eps" in msg  # every problem at once
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['add_fpn'\]"):
        refvit.Data2VecVisionConfig(add_fpn=True)  # a BeitConfig field, not Data2VecVisionConfig's
    with pytest.raises(ConfigError, match="model_type"):
        refvit.ViTConfig(model_type="deit")


@pytest.mark.parametrize("family", sorted(SMALL))
def test_config_round_trips_through_json(tmp_path, family):
    cfg = small_config(family)
    assert cfg.to_dict()["model_type"] == family
    path = cfg.save_pretrained(tmp_path)
    assert path == os.path.join(tmp_path, "config.json")
    again = type(cfg).from_pretrained(tmp_path)
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert type(cfg).from_dict(json.loads(open(path).read())) == cfg
    cfg.to_json_file(tmp_path / "other.json")
    assert type(cfg).from_pretrained(tmp_path / "other.json") == cfg
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_config_keeps_the_given_form_and_common_fields():
    cfg = refvit.ViTConfig(image_size=32, patch_size=[4, 8], problem_type="regression", num_labels=1)
    assert cfg.image_size == (32, 32) and cfg.patch_size == (4, 8)                 # refvit's parsed view
    d = cfg.to_dict()
    assert d["image_size"] == 32 and d["patch_size"] == [4, 8] and d["problem_type"] == "regression"
    assert cfg.problem_type == "regression" and cfg.return_dict is True           # PreTrainedConfig's fields
    with pytest.raises(ConfigError, match="problem_type"):
        refvit.ViTConfig(problem_type="ranking")
    with pytest.raises(ConfigError, match="holds a 'deit' config"):
        refvit.ViTConfig.from_dict({"model_type": "deit"})


# ----------------------------------------------------------------------------------------------------------------------
# Models with random weights; save_pretrained; re-reading (torch-free)


def test_seeded_init_is_reproducible():
    a, b, c = (small_model("ViTModel", seed=s) for s in (0, 0, 1))
    assert all(np.array_equal(a.checkpoint[k], b.checkpoint[k]) for k in a.checkpoint)
    assert not np.array_equal(a.checkpoint["encoder.layer.0.attention.attention.query.weight"],
                              c.checkpoint["encoder.layer.0.attention.attention.query.weight"])


@pytest.mark.parametrize("name", sorted(refvit.CLASSES))
def test_save_pretrained_is_reread_bit_for_bit(tmp_path, name):
    model = small_model(name, seed=3)
    model.save_pretrained(tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    again = refvit.from_pretrained(tmp_path / "out")
    assert type(again) is type(model) and again.config == model.config.replace(architectures=(name,))
    assert again.checkpoint.keys() == model.checkpoint.keys()
    for k, v in model.checkpoint.items():
        assert again.checkpoint[k].dtype == v.dtype and np.array_equal(again.checkpoint[k], v), k
    x = pixels(model.architecture.family, batch=1)
    for field, value in model(x).items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(again(x)[field], value), field


def test_save_pretrained_refuses_a_non_empty_directory_and_overwrites_atomically(tmp_path):
    model = small_model("ViTForImageClassification", seed=0)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty.*overwrite=True"):
        model.save_pretrained(tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"]
    model.save_pretrained(tmp_path / "dir")
    loaded = refvit.from_pretrained(tmp_path / "dir")          # memory-maps model.safetensors
    other = small_model("ViTForImageClassification", seed=1)
    other.save_pretrained(tmp_path / "dir", overwrite=True)    # a new file renamed over the mapped one
    reread = refvit.from_pretrained(tmp_path / "dir")
    name = "vit.encoder.layer.0.attention.attention.query.weight"
    assert np.array_equal(reread.checkpoint[name], other.checkpoint[name])
    assert np.array_equal(loaded.checkpoint[name], model.checkpoint[name])  # the old mapping still reads the old file
    assert sorted(os.listdir(tmp_path / "dir")) == ["config.json", "model.safetensors"]
    with pytest.raises(CheckpointError, match="not a directory"):
        model.save_pretrained(tmp_path / "notes.txt", overwrite=True)


GOLDEN_CASES = sorted(p for p in (Path(__file__).resolve().parent.parent / "golden" / "cases").iterdir()
                      if (p / "model.safetensors").exists() or (p / "pytorch_model.bin").exists())


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=lambda p: p.name)
def test_loaded_checkpoints_are_saved_as_read(tmp_path, case):
    """A checkpoint transformers wrote, loaded and saved by refvit: the same tensors bit for bit (before BiT's weight
    standardisation and the BatchNorm folds; a transformers-5 state dict's names become the checkpoint names), the
    same config, and the re-read model gives the same outputs."""
    from refvit.checkpoint import load_state_dict
    from refvit.model import strip_or_add_prefix
    meta = json.loads((case / "meta.json").read_text())
    model = refvit.from_pretrained(case, architecture=meta["architecture"])
    if not (case / "model.safetensors").exists():   # a .bin is read into memory: not kept, read again to save
        assert model._checkpoint is None
    model.save_pretrained(tmp_path / "out")
    again = refvit.from_pretrained(tmp_path / "out")
    original, _ = load_state_dict(case)
    arch = model.architecture
    named, _, _ = strip_or_add_prefix(original, arch)                  # the names as read
    renamed, _, _ = strip_or_add_prefix(arch.before_mapping(original), arch)  # transformers-5 names made checkpoint names
    assert again.checkpoint.keys() == model.checkpoint.keys()
    for k, v in again.checkpoint.items():
        expected = named[k] if k in named else renamed[k]
        assert v.dtype == expected.dtype and np.array_equal(v, expected), k
    if not any(".layers." in k for k in original):                     # a classic checkpoint: every name as read
        assert set(again.checkpoint) <= set(named) | {k.removeprefix("beit.") for k in named}
    assert again.config == model.config.replace(architectures=(meta["architecture"],))
    inputs = dict(np.load(case / "inputs.npz"))
    x = inputs.pop("pixel_values")
    call = {k: v for k, v in meta.get("call", {}).items() if k != "bool_masked_pos"}  # a flag: the mask is an input
    kwargs = {**{k: v for k, v in inputs.items() if k == "bool_masked_pos"}, **call}
    for field, value in model(x, **kwargs).items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(again(x, **kwargs)[field], value), field


def test_config_json_keys_refvit_does_not_know_are_kept():
    cfg = refvit.ViTConfig.from_dict({"model_type": "vit", "torch_dtype": "float32", "use_cache": False,
                                      "segmentation_indices": [1]})
    d = cfg.to_dict()
    assert d["dtype"] == "float32" and d["use_cache"] is False and "torch_dtype" not in d
    assert refvit.ViTConfig.from_dict(d).to_dict() == d


def test_from_state_dict_takes_a_config_object():
    model = small_model("CvtForImageClassification", seed=2)
    again = refvit.from_state_dict(model.config, model.checkpoint, "CvtForImageClassification")
    x = pixels("cvt", batch=1)
    assert np.array_equal(again(x).logits, model(x).logits)


def test_model_constructor_errors():
    with pytest.raises(ConfigError, match=r"BitModel\(config\): expected a refvit.BitConfig"):
        refvit.BitModel(refvit.ViTConfig())
    with pytest.raises(ConfigError, match=r"BitModel\(config\): expected a refvit.BitConfig"):
        refvit.BitModel({"model_type": "bit"})
    with pytest.raises(InputError, match="seed"):
        refvit.ViTModel(small_config("vit"), seed=-1)
    with pytest.raises(ConfigError, match="width_factor"):  # the class's own checks, as at load
        refvit.BitForImageClassification(small_config("bit", layer_type="bottleneck", width_factor=2))


def test_bit_checkpoint_keeps_unstandardised_weights(tmp_path):
    """save_pretrained writes the conv weights as drawn; the forward runs on their standardised form."""
    model = small_model("BitModel", seed=0)
    w = model.checkpoint["embedder.convolution.weight"]
    assert abs(float(w.std()) - 1.0) > 0.1   # kaiming normal, not standardised
    assert abs(float(model.params["embedder"]["convolution"]["weight"].std()) - 1.0) < 1e-3


PROCESSORS = ("ViTImageProcessor", "DeiTImageProcessor", "BeitImageProcessor", "BitImageProcessor",
              "ConvNextImageProcessor")


@pytest.mark.parametrize("name", PROCESSORS)
def test_processor_save_pretrained_round_trips(tmp_path, name):
    from PIL import Image
    proc = getattr(refvit, name)()
    path = proc.save_pretrained(tmp_path)
    assert path == os.path.join(tmp_path, "preprocessor_config.json")
    again = refvit.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(again) is type(proc) and again.to_dict() == proc.to_dict()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert np.array_equal(again(image)["pixel_values"], proc(image)["pixel_values"])


# ----------------------------------------------------------------------------------------------------------------------
# Against transformers (CI stage 2)


@pytest.mark.needs_framework
@pytest.mark.parametrize("name", PROCESSORS)
def test_transformers_loads_the_processor_refvit_wrote(tmp_path, name):
    transformers = pytest.importorskip("transformers")
    from PIL import Image
    proc = getattr(refvit, name)()
    proc.save_pretrained(tmp_path)
    theirs = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(theirs).__name__.removesuffix("Fast").removesuffix("Pil") == name
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    ref = theirs(image, return_tensors="np")["pixel_values"]
    assert np.abs(proc(image)["pixel_values"] - ref).max() <= 1e-5


TF_CONFIGS = {"vit": "ViTConfig", "deit": "DeiTConfig", "beit": "BeitConfig", "data2vec-vision": "Data2VecVisionConfig",
              "cvt": "CvtConfig", "bit": "BitConfig"}
NOT_COMPARED = ("_name_or_path", "transformers_version")


def _tf_dict(config):
    return {k: v for k, v in config.to_dict().items() if k not in NOT_COMPARED}


@pytest.mark.needs_framework
@pytest.mark.parametrize("family", sorted(SMALL))
def test_configs_have_transformers_defaults_and_load_in_transformers_equal(tmp_path, family):
    transformers = pytest.importorskip("transformers")
    tf_cls = getattr(transformers, TF_CONFIGS[family])
    ours = refvit.config.CONFIG_CLASSES[family]
    defaults = _tf_dict(tf_cls())
    for name in ours.FIELDS:   # every transformers field, with transformers' default
        assert ours().to_dict()[name] == defaults[name], name
    assert set(ours.FIELDS) | {"stage_names"} >= set(defaults) - set(refvit.config.COMMON_DEFAULTS) - {
        "architectures", "id2label", "label2id", "model_type"}
    for kwargs in ({}, SMALL[family], {**SMALL[family], "problem_type": "multi_label_classification",
                                       "return_dict": False}):
        d = tmp_path / str(len(os.listdir(tmp_path)))
        ours(**kwargs).save_pretrained(d)
        loaded = tf_cls.from_pretrained(d)
        assert _tf_dict(loaded) == _tf_dict(tf_cls(**kwargs)), kwargs


def _torch_model(name, directory, dtype):
    import torch
    import transformers
    # eager attention returns the attention maps, but computes its softmax in float32 (`softmax(…, dtype=float32)`):
    # float64 runs use the default (sdpa) attention, without the maps
    attention = "eager" if dtype == "float32" else None
    model, info = getattr(transformers, name).from_pretrained(directory, dtype=getattr(torch, dtype),
                                                              attn_implementation=attention,
                                                              output_loading_info=True)
    return model.eval(), info


@pytest.mark.needs_framework
@pytest.mark.parametrize("name", sorted(refvit.CLASSES))
def test_names_and_shapes_equal_transformers_state_dict(tmp_path, name):
    """transformers 5 renamed some modules inside its classes (BEiT's `layers.N.attention.q_proj`) and converts
    them back when it saves: the state dict as saved is the checkpoint's contract (docs/DESIGN.md §4)."""
    transformers = pytest.importorskip("transformers")
    from refvit.checkpoint.safetensors import read_safetensors
    model = small_model(name)
    family = model.architecture.family
    tf_model = getattr(transformers, name)(getattr(transformers, TF_CONFIGS[family])(**SMALL[family]))
    tf_model.save_pretrained(tmp_path)
    theirs = read_safetensors(tmp_path / "model.safetensors", mmap=False)
    assert len(theirs) == len(tf_model.state_dict())
    assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in model.checkpoint.items()}


def _kind(name):
    """Tensors pooled for the statistics: the name with layer/stage numbers replaced."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


# a moderately sized config per family: enough values per tensor kind for the sampling error to be small
STATS = {
    "ViTForImageClassification": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, image_size=64, patch_size=8, num_labels=10),
    "DeiTForImageClassificationWithTeacher": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                  intermediate_size=128, image_size=64, patch_size=8, num_labels=10),
    "BeitForSemanticSegmentation": dict(SMALL["beit"], hidden_size=64, use_shared_relative_position_bias=True,
                                        use_absolute_position_embeddings=True, layer_scale_init_value=0.25),
    "Data2VecVisionForImageClassification": dict(SMALL["data2vec-vision"], hidden_size=64),
    "CvtForImageClassification": dict(SMALL["cvt"], num_labels=10),
    "BitForImageClassification": dict(SMALL["bit"], num_labels=10),
    "BitBackbone": dict(SMALL["bit"], layer_type="bottleneck"),
}


@pytest.mark.needs_framework
@pytest.mark.parametrize("name", sorted(STATS))
def test_init_statistics_match_transformers(tmp_path, name):
    """Per tensor kind, refvit's mean and standard deviation lie within sampling error of transformers' (the
    threshold: 6 standard errors of each statistic, from transformers' own values), and constants are equal."""
    transformers = pytest.importorskip("transformers")
    import torch
    family = refvit.ARCHITECTURES[name].family
    ours = refvit.CLASSES[name](refvit.config.CONFIG_CLASSES[family](**STATS[name]), seed=0).checkpoint
    from refvit.checkpoint.safetensors import read_safetensors
    torch.manual_seed(0)
    getattr(transformers, name)(getattr(transformers, TF_CONFIGS[family])(**STATS[name])).save_pretrained(tmp_path)
    theirs = {k: np.asarray(v, np.float64) for k, v in read_safetensors(tmp_path / "model.safetensors").items()}
    kinds = {}
    for k in theirs:
        kinds.setdefault(_kind(k), []).append(k)
    for kind, names in kinds.items():
        a = np.concatenate([np.asarray(ours[k], np.float64).ravel() for k in names])
        b = np.concatenate([theirs[k].ravel() for k in names])
        if b.std() == 0:
            assert a.std() == 0 and a.mean() == b.mean(), kind
            continue
        n = b.size
        assert abs(a.mean() - b.mean()) <= 6 * b.std() * np.sqrt(2 / n), kind
        assert abs(a.std() - b.std()) <= 6 * b.std() * np.sqrt(2 / n) + 1e-12, kind


TOLERANCE = {"float32": 1e-4, "float64": 1e-10}   # docs/DESIGN.md §7, the golden tolerances


def _arrays(value):
    if value is None:
        return []
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _arrays(v)]
    return [np.asarray(value.detach().double().numpy() if hasattr(value, "detach") else value, np.float64)]


def round_trip(name, directory, dtype):
    """(max |refvit − transformers| over every output tensor, the largest of |Δ| / (tolerance·max(1, max|ref|)))
    when transformers loads the directory refvit wrote for `name`; asserts no missing/unexpected/mismatched keys."""
    import torch
    theirs, info = _torch_model(name, directory, dtype)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ours = refvit.from_pretrained(directory, dtype=dtype, backend="numpy" if dtype == "float64" else "numba")
    family = ours.architecture.family
    x = pixels(family).astype(dtype)
    kwargs = {"output_hidden_states": True}
    if "attentions" in ours.architecture.output.FIELDS and dtype == "float32":
        kwargs["output_attentions"] = True
    mine = ours(x, **kwargs)
    with torch.no_grad():
        ref = theirs(pixel_values=torch.from_numpy(x), **kwargs)
    worst, ratio, compared = 0.0, 0.0, 0
    for field, value in mine.items():
        if value is None or field not in ref or ref[field] is None:
            continue
        for a, b in zip(_arrays(value), _arrays(ref[field]), strict=True):
            assert a.shape == b.shape, field
            if a.size:  # per tensor: max|ours - ref| <= tolerance * max(1, max|ref|)
                delta = float(np.abs(a - b).max())
                worst = max(worst, delta)
                ratio = max(ratio, delta / (TOLERANCE[dtype] * max(1.0, float(np.abs(b).max()))))
            compared += 1
    assert compared > 0
    return worst, ratio


@pytest.mark.needs_framework
@pytest.mark.parametrize("name", sorted(refvit.CLASSES))
def test_transformers_loads_what_refvit_wrote(tmp_path, name):
    pytest.importorskip("transformers")
    small_model(name, seed=5).save_pretrained(tmp_path / "out")
    for dtype in ("float32", "float64"):
        worst, ratio = round_trip(name, tmp_path / "out", dtype)
        assert ratio <= 1.0, (dtype, worst, ratio)


# ----------------------------------------------------------------------------------------------------------------------
# timm -> transformers without torch: refvit.from_pretrained(timm_dir).save_pretrained(hf_dir)


TIMM_CASES = sorted(p for p in (Path(__file__).resolve().parent.parent / "golden" / "timm" / "models").iterdir())


@pytest.mark.parametrize("case", TIMM_CASES, ids=lambda p: p.name)
def test_timm_checkpoint_saved_as_transformers_reads_back(tmp_path, case):
    model = refvit.from_pretrained(case)
    assert (model._checkpoint is None) == (not (case / "model.safetensors").exists())  # a .bin is not kept
    model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [model.architecture.name] and "pretrained_cfg" not in config
    again = refvit.from_pretrained(tmp_path / "hf")
    x = np.load(case / "inputs.npz")["pixel_values"]
    assert np.array_equal(again(x).logits, model(x).logits)


@pytest.mark.needs_framework
@pytest.mark.parametrize("case", TIMM_CASES, ids=lambda p: p.name)
def test_timm_to_transformers_converter(tmp_path, case):
    """The directory refvit writes from a timm checkpoint loads in transformers (no missing or unexpected keys) and
    gives timm's own logits (golden/timm, written by timm) within the golden tolerances, in float32 and float64."""
    pytest.importorskip("transformers")
    import torch
    refvit.from_pretrained(case).save_pretrained(tmp_path / "hf")
    name = json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"][0]
    ref = np.load(case / "outputs.npz")
    for dtype in ("float32", "float64"):
        theirs, info = _torch_model(name, tmp_path / "hf", dtype)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        x = np.load(case / "inputs.npz")["pixel_values"].astype(dtype)
        with torch.no_grad():
            logits = theirs(pixel_values=torch.from_numpy(x)).logits.numpy()
        timm_logits = ref[f"{dtype}/logits"]
        err = float(np.abs(logits - timm_logits).max())
        assert err <= TOLERANCE[dtype] * max(1.0, float(np.abs(timm_logits).max())), (dtype, err)
