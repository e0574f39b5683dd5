"""Fuzzing `config.json` and `preprocessor_config.json`.

- config.json: the configs of small golden cases of every family, one to four values changed (wrong types, zero,
  negative, huge, NaN, other architectures, keys dropped), loaded with the case's own tensors. Property: a
  `RefvitError` naming the source, or a model whose forward pass on the case's input returns its outputs or raises
  `InputError`. The numba and numpy backends are compared too, but they share all the model code: that catches a
  kernel disagreement, not a wrong model. The independent oracle is the framework: `..._vs_transformers` (needs
  torch + transformers) runs the same mutated config and tensors through transformers wherever it loads them
  completely and runs, and refvit's outputs must match it to the float32 golden tolerance.
- config.json bytes: mutated JSON text through `read_config_json` (property only: a dict or a RefvitError).
- preprocessor_config.json: the settings of every processor class (and the golden BEiT ADE config), mutated,
  loaded with `AutoImageProcessor.from_pretrained` and run on small random images. Property: a `RefvitError`, or
  (1, 3, H, W) float32 pixel values; `..._vs_transformers` (needs transformers): equal, bit for bit, to
  transformers' PIL processor wherever that accepts the same settings.
Every example runs under the time guard and a memory cap (an unbounded allocation fails as MemoryError).
"""

from __future__ import annotations

import copy
import itertools
import json
import inspect
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import refvit
from conftest import framework, golden_case
from refvit.checkpoint import read_safetensors
from refvit.config import read_config_json
from refvit.errors import InputError
from test_fuzz_safetensors import byte_edits
from test_fuzz_support import fuzz_settings, memory_cap, note_event, outcome, warm_up

CASES = ["deit_teacher", "vit_mim", "beit_segmentation", "data2vec_vision_model", "cvt_model", "bit_preact_model",
         "bit_backbone", "beit_backbone_fpn"]
CASES = os.environ.get("REFVIT_FUZZ_CASES", "").split() or CASES  # to fuzz one family at a time
STRINGS = ["gelu", "relu", "gelu_new", "tanh", "mish", "SAME", "VALID", "same", "dw_bn", "avg", "linear", "conv",
           "preactivation", "bottleneck", "stage1", "stage4", "stem", "vit", "deit", "beit", "cvt", "bit",
           "data2vec-vision", "", "float32"]
ARCHITECTURES = sorted(refvit.ARCHITECTURES) + ["SwinModel", ""]
COUNTER = itertools.count()


def loaded(case):
    raw = json.loads((golden_case(case) / "config.json").read_text())
    tensors = read_safetensors(golden_case(case) / "model.safetensors")
    with np.load(golden_case(case) / "inputs.npz") as z:
        x = z["pixel_values"][:1]
    return raw, tensors, x


class Cases(dict):
    def __repr__(self):  # hypothesis prints fixtures in a falsifying example: not the tensors
        return f"<golden cases {sorted(self)}>"


@pytest.fixture(scope="module")
def cases():
    cases = Cases({case: loaded(case) for case in CASES})
    for case, (raw, tensors, x) in cases.items():
        for backend in ("numba", "numpy"):
            warm_up(refvit.from_state_dict(raw, tensors, backend=backend), x)
    return cases


def scalar_like(value, data):
    """A replacement for `value`: usually the same type, nearby or extreme; sometimes another type."""
    d = data.draw
    if isinstance(value, bool):
        return d(st.sampled_from([not value, 0, 1, "true", None]))
    if isinstance(value, int):
        return d(st.sampled_from([value + 1, value - 1, value * 2, value // 2, 0, -1, 1, 2, 3, 7, 10**6, 2**63,
                                  float(value), str(value), None, [value]]))
    if isinstance(value, float):
        whole = int(value) if math.isfinite(value) else 0
        return d(st.sampled_from([value * 10, -value, 0.0, 1e-30, 1e30, math.nan, math.inf, whole, "1e-6", None]))
    if isinstance(value, str):
        return d(st.sampled_from(STRINGS + [value.upper(), value + " ", None, 1]))
    return d(st.sampled_from([None, 0, 1, "x", [], {}, True, -3, 2.5]))


def mutate_value(value, data):
    if isinstance(value, list) and value and data.draw(st.integers(0, 3)):
        out = list(value)
        kind = data.draw(st.sampled_from(["element", "drop", "append", "empty"]))
        i = data.draw(st.integers(0, len(out) - 1))
        if kind == "element":
            out[i] = scalar_like(out[i], data)
        elif kind == "drop":
            del out[i]
        elif kind == "append":
            out.append(scalar_like(out[i], data))
        else:
            out = []
        return out
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        out = dict(value)
        key = data.draw(st.sampled_from(sorted(out, key=str)))
        out[data.draw(st.sampled_from([key, str(len(out) + 3), "-1", "x"]))] = scalar_like(out[key], data)
        return out
    return scalar_like(value, data)


def mutate_config(raw: dict, data, extra_keys=()) -> dict:
    cfg = copy.deepcopy(raw)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        key = data.draw(st.sampled_from(sorted(set(cfg) | set(extra_keys))), label="key")
        kind = data.draw(st.sampled_from(["value"] * 6 + ["drop", "architecture"]), label="kind")
        if kind == "drop":
            cfg.pop(key, None)
        elif kind == "architecture":
            cfg["architectures"] = [data.draw(st.sampled_from(ARCHITECTURES))]
        else:
            cfg[key] = mutate_value(cfg.get(key), data)
    return cfg


def compare_backends(a, b, what: str) -> None:
    """numba and numpy outputs of one call: same fields, same shapes, equal to the golden tolerance where finite."""
    for field in ("logits", "last_hidden_state", "pooler_output", "reconstruction", "auxiliary_logits"):
        x, y = getattr(a, field, None), getattr(b, field, None)
        assert (x is None) == (y is None), (what, field)
        if x is None:
            continue
        assert x.shape == y.shape, (what, field, x.shape, y.shape)
        finite = np.isfinite(x) & np.isfinite(y)
        if finite.any():
            scale = max(1.0, float(np.abs(y[finite]).max()))
            assert np.abs(x[finite].astype(np.float64) - y[finite]).max() <= 1e-4 * scale, (what, field)


FRAMEWORK_FIELDS = ("logits", "cls_logits", "distillation_logits", "last_hidden_state", "pooler_output",
                    "reconstruction", "auxiliary_logits", "feature_maps")


def compare_with_framework(ours, theirs, what: str) -> int:
    """refvit's outputs vs transformers' for the same inputs (an independent implementation): every field transformers
    returns (of FRAMEWORK_FIELDS) exists in ours with its shape and agrees to 1e-4·max(1, max|ref|) where both are
    finite. Returns the number of arrays compared."""
    compared = 0
    for field in FRAMEWORK_FIELDS:
        y = getattr(theirs, field, None)
        if y is None:
            continue
        x = getattr(ours, field, None)
        assert x is not None, (what, field, "transformers returns it, refvit does not")
        xs, ys = (x, y) if field == "feature_maps" else ((x,), (y,))
        assert len(xs) == len(ys), (what, field)
        for a, b in zip(xs, ys):
            b = b.detach().float().numpy()
            assert a.shape == b.shape, (what, field, a.shape, b.shape)
            finite = np.isfinite(a) & np.isfinite(b)
            if finite.any():
                scale = max(1.0, float(np.abs(b[finite]).max()))
                err = float(np.abs(a[finite].astype(np.float64) - b[finite]).max())
                assert err <= 1e-4 * scale, (what, field, err, scale)
            compared += 1
    return compared


def framework_model(transformers, torch, cfg: dict, case: str, directory):
    """transformers' model for a (mutated) config and the case's tensors; None where transformers refuses it or does
    not load every tensor exactly (it would run with random weights: no oracle then)."""
    arch = (cfg.get("architectures") or [None])[0] if isinstance(cfg.get("architectures"), list) else None
    cls = getattr(transformers, arch, None) if isinstance(arch, str) and arch else None
    if cls is None:
        return None
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(cfg, allow_nan=True))
    (directory / "model.safetensors").symlink_to(golden_case(case) / "model.safetensors")
    try:
        model, info = cls.from_pretrained(directory, output_loading_info=True, attn_implementation="eager",
                                          dtype=torch.float32)
    except Exception:  # noqa: BLE001 - transformers refusing (or crashing on) a config is no finding here
        return None
    if any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        return None
    return model.eval()


def framework_forward(torch, model, x, options: dict):
    """transformers' forward on the float32 pixel values refvit runs (it casts to the model dtype), or None if it
    raises; options it does not take (CvT/BiT: interpolate_pos_encoding) are left out."""
    accepted = inspect.signature(model.forward).parameters
    kwargs = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in options.items() if k in accepted}
    try:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), **kwargs)
    except Exception:  # noqa: BLE001 - the framework refusing what refvit runs is reported as an event only
        return None


def run_model_config_example(cases, data):
    """One example of the config property; returns (case, mutated config, options, numpy-backend output) when refvit
    accepted the config and ran, else None."""
    case = data.draw(st.sampled_from(CASES), label="case")
    raw, tensors, x = cases[case]
    cfg = mutate_config(raw, data, extra_keys=("num_labels", "use_mask_token", "interpolate_pos_encoding"))
    with memory_cap():
        models, err = outcome(lambda: [refvit.from_state_dict(cfg, tensors, backend=b, source=f"{case}/config.json")
                                       for b in ("numba", "numpy")], f"{case}/config.json")
        if err is not None:
            return None
        options = {"output_hidden_states": data.draw(st.booleans()), "output_attentions": data.draw(st.booleans()),
                   "interpolate_pos_encoding": data.draw(st.booleans())}
        outputs = []
        for model in models:
            out, err = outcome(lambda: model(x, **options))
            if err is not None:
                assert isinstance(err, InputError), err
                return None
            outputs.append(out)
    compare_backends(*outputs, f"{case} {cfg}")  # shared model code: a kernel check, not an oracle
    return case, cfg, options, outputs[1]


@fuzz_settings(60)
@given(data=st.data())
def test_fuzz_model_configs(cases, data):
    run_model_config_example(cases, data)


@pytest.fixture(scope="module")
def hf():
    """(transformers, torch) for the comparisons with the framework."""
    transformers, torch = framework("transformers"), framework("torch")
    transformers.logging.set_verbosity_error()
    return transformers, torch


@pytest.mark.needs_framework
@fuzz_settings(40)
@given(data=st.data())
def test_fuzz_model_configs_vs_transformers(cases, hf, tmp_path_factory, data):
    """The same examples' kind, with transformers as the oracle wherever it loads the mutated config completely."""
    transformers, torch = hf
    example = run_model_config_example(cases, data)
    if example is None:
        return
    case, cfg, options, ours = example
    model = framework_model(transformers, torch, cfg, case, tmp_path_factory.getbasetemp() / f"hf_{next(COUNTER)}")
    theirs = None if model is None else framework_forward(torch, model, cases[case][2], options)
    if theirs is None:
        note_event("transformers refused")
        return
    assert compare_with_framework(ours, theirs, f"{case} {cfg}") > 0
    note_event("compared with transformers")


@pytest.fixture(scope="module")
def config_bytes():
    return (golden_case("beit_segmentation") / "config.json").read_bytes()


@fuzz_settings(100)
@given(data=st.data())
def test_fuzz_config_json_bytes(tmp_path_factory, config_bytes, data):
    path = tmp_path_factory.getbasetemp() / f"config_{next(COUNTER)}.json"
    raw = data.draw(byte_edits(config_bytes), label="bytes")
    if data.draw(st.booleans(), label="nest"):  # deep nesting: json's recursion limit, not a byte edit away
        n, at = data.draw(st.integers(1, 5000), label="depth"), data.draw(st.integers(0, len(raw)), label="at")
        raw = raw[:at] + b"[" * n + b"]" * n + raw[at:]
    path.write_bytes(raw)
    try:
        result, err = outcome(lambda: read_config_json(path), str(path))
    finally:
        path.unlink()
    assert err is not None or isinstance(result, dict)


# ------------------------------------------------------------------------------------ preprocessor_config.json

PROCESSOR_CLASSES = [refvit.ViTImageProcessor, refvit.DeiTImageProcessor, refvit.BitImageProcessor,
                     refvit.ConvNextImageProcessor, refvit.BeitImageProcessor]
PROCESSOR_KEYS = ["feature_extractor_type", "image_processor_type", "auto_map", "reduce_labels", "do_pad",
                  "longest_edge", "input_data_format", "data_format", "crop_pct", "do_reduce_labels"]


def small(settings: dict) -> dict:
    """The class defaults with image sizes shrunk (224 -> 14 …), so an example takes milliseconds."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            value = {k: max(1, v // 16) for k, v in value.items()}
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def base_processor_configs():
    bases = [small(cls().to_dict()) for cls in PROCESSOR_CLASSES]
    legacy = json.loads((golden_case("deit_teacher").parent.parent / "processing" / "beit_ade" /
                         "preprocessor_config.json").read_text())
    bases.append(small(legacy))
    bases.append({"feature_extractor_type": "DeiTFeatureExtractor", "size": 18, "crop_size": 16, "resample": 3,
                  "do_center_crop": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]})
    return bases


BASES = base_processor_configs()


@pytest.fixture(scope="module")
def transformers_classes():
    transformers = framework("transformers")
    transformers.logging.set_verbosity_error()
    return {cls.__name__: getattr(transformers, cls.__name__ + "Pil") for cls in PROCESSOR_CLASSES}


def random_image(data):
    height, width = data.draw(st.integers(1, 24), label="h"), data.draw(st.integers(1, 24), label="w")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    kind = data.draw(st.sampled_from(["pil", "array", "unit"]), label="kind")
    if kind == "pil":
        return Image.fromarray(pixels)
    if kind == "unit":
        return (pixels / 255.0).astype(np.float32)
    return pixels


def run_preprocessor_example(tmp_path_factory, data):
    """One example of the preprocessor property; returns (config, processor, image, kwargs, pixel values) when
    refvit accepted the config and the image, else None."""
    config = mutate_config(data.draw(st.sampled_from(BASES), label="base"), data, extra_keys=PROCESSOR_KEYS)
    directory = tmp_path_factory.getbasetemp() / f"proc_{next(COUNTER)}"
    directory.mkdir()
    file = directory / "preprocessor_config.json"
    file.write_text(json.dumps(config))
    if data.draw(st.booleans()):
        (directory / "config.json").write_text(json.dumps({"model_type": data.draw(st.sampled_from(STRINGS))}))
    with memory_cap():
        processor, err = outcome(lambda: refvit.AutoImageProcessor.from_pretrained(directory), str(directory))
        if err is not None:
            return
        image = random_image(data)
        if isinstance(image, np.ndarray) and image.shape[0] in (1, 3, 4):
            processor_kwargs = {"input_data_format": "channels_last"}
        else:
            processor_kwargs = {}
        batch, err = outcome(lambda: processor(image, **processor_kwargs))
    if err is not None:
        return None
    pixels = batch["pixel_values"]
    assert pixels.dtype == np.float32 and pixels.ndim == 4 and pixels.shape[:2] == (1, 3) and min(pixels.shape) >= 1
    return config, processor, image, processor_kwargs, pixels


@fuzz_settings(100)
@given(data=st.data())
def test_fuzz_preprocessor_configs(tmp_path_factory, data):
    run_preprocessor_example(tmp_path_factory, data)


@pytest.mark.needs_framework
@fuzz_settings(100)
@given(data=st.data())
def test_fuzz_preprocessor_configs_vs_transformers(tmp_path_factory, transformers_classes, data):
    """The same examples, each also through transformers' PIL processor with the same settings, where it accepts them."""
    example = run_preprocessor_example(tmp_path_factory, data)
    if example is None:
        return
    config, processor, image, processor_kwargs, pixels = example
    upstream = transformers_classes[type(processor).__name__.replace("FeatureExtractor", "ImageProcessor")]
    settings = {k: v for k, v in config.items() if k in processor._keys()}
    try:
        theirs = upstream(**settings)(image, return_tensors="np", **processor_kwargs)["pixel_values"]
    except Exception:  # noqa: BLE001 - transformers refusing (or crashing on) what refvit runs is allowed
        note_event("transformers refused")
        return
    note_event("compared with transformers")
    np.testing.assert_array_equal(pixels, theirs, err_msg=json.dumps(config))
