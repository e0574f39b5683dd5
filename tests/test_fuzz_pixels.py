"""Fuzzing pixel arrays: shapes, dtypes, memory layouts, NaN/Inf, into models, processors and load_image.

Property: a `RefvitError` (an `InputError` for arrays), or a correct result: for a model, the output shapes the input
implies and — where the input is finite — the numba and numpy backends agreeing to the golden float32 tolerance; for
a processor, (B, 3, H, W) float32; for load_image, an RGB image of the array's size.
The two backends share all the model code (only the kernels differ), so their agreement is no oracle for the model.
`test_fuzz_model_pixel_values_vs_transformers` (needs torch + transformers) uses one: the framework, on the same
models (the golden cases' weights) and the same float32 pixel values, wherever transformers runs them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import refvit
from conftest import framework, golden_case
from refvit.errors import InputError
from test_fuzz_configs import compare_backends, compare_with_framework, framework_forward
from test_fuzz_support import fuzz_settings, memory_cap, note_event, outcome, warm_up

MODEL_CASES = ["deit_teacher", "vit_mim", "beit_classification", "beit_segmentation", "cvt_model", "bit_preact_model",
               "bit_backbone"]
DTYPES = ["uint8", "int8", "int16", "int32", "int64", "uint16", "float16", "float32", "float64", "bool",
          "complex64", "object", "<U1", ">f4", ">i4"]


class Models(dict):
    def __repr__(self):
        return f"<models {sorted(self)}>"


@pytest.fixture(scope="module")
def models():
    models = Models({case: tuple(refvit.from_pretrained(golden_case(case), backend=b) for b in ("numba", "numpy"))
                     for case in MODEL_CASES})
    for case, pair in models.items():
        with np.load(golden_case(case) / "inputs.npz") as z:
            x = z["pixel_values"][:1]
        for model in pair:
            warm_up(model, x)
    return models


@st.composite
def arrays(draw, channels=st.sampled_from([3, 3, 3, 1, 4, 0, 2]), ranks=st.sampled_from([4, 4, 4, 3, 2, 5, 0, 1])):
    """Mostly (B, C, H, W) arrays of small sizes, in every dtype and layout, sometimes with NaN/Inf."""
    rank = draw(ranks, label="rank")
    dims = [draw(st.integers(1, 2))] if rank >= 4 else []
    if rank >= 3:
        dims.append(draw(channels, label="channels"))
    dims += [draw(st.sampled_from([32, 32, 48, 16, 8, 40, 1, 7, 0, 64]), label="side") for _ in range(min(rank, 2))]
    dims += [draw(st.integers(1, 3)) for _ in range(max(rank - 4, 0))]
    dims = dims[:rank] if rank else []
    dtype = np.dtype(draw(st.sampled_from(DTYPES), label="dtype"))
    rng = np.random.default_rng(draw(st.integers(0, 2**16), label="seed"))
    values = np.asarray(rng.standard_normal(dims)) * draw(st.sampled_from([1.0, 1.0, 100.0, 1e-3, 1e6]), label="scale")
    if dtype.kind == "f" and values.size and draw(st.booleans(), label="nonfinite"):
        values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if dtype.kind in "iub":
        info = np.iinfo(dtype) if dtype.kind != "b" else None
        values = np.clip(values, info.min, info.max) if info is not None else values > 0
    values = np.asarray(values)  # (0-d arithmetic gives NumPy scalars)
    array = np.asarray(values.astype(dtype) if dtype.kind != "U" else values.astype(str).astype(dtype), dtype=dtype)
    layout = draw(st.sampled_from(["c", "c", "fortran", "reversed", "strided"]), label="layout")
    if layout == "fortran":
        array = np.asfortranarray(array)
    elif layout == "reversed" and array.ndim:
        array = array[..., ::-1]
    elif layout == "strided" and array.ndim:
        array = np.repeat(array, 2, axis=-1)[..., ::2]
    return array


def run_pixel_example(models, data):
    """One example of the model property; returns (case, pixel values, options, numpy-backend output) when refvit ran
    it on finite pixel values, else None."""
    case = data.draw(st.sampled_from(MODEL_CASES), label="case")
    x = data.draw(arrays(), label="pixel_values")
    options = {"interpolate_pos_encoding": data.draw(st.booleans()), "output_hidden_states": data.draw(st.booleans()),
               "output_attentions": data.draw(st.booleans())}
    if case == "vit_mim" and x.ndim == 4 and data.draw(st.booleans()):
        n = (x.shape[2] // 8) * (x.shape[3] // 8)
        options["bool_masked_pos"] = np.random.default_rng(0).random((x.shape[0], n)) > 0.5
    outputs = []
    with memory_cap():
        for model in models[case]:
            out, err = outcome(lambda: model(x, **options))
            if err is not None:
                named = ("pixel_values", "input", "bool_masked_pos", "interpolate_pos_encoding", "shape", "tokens")
                assert isinstance(err, InputError) and any(n in str(err) for n in named), err
                return None
            outputs.append(out)
    a, b = outputs
    for field in ("logits", "last_hidden_state"):
        value = getattr(a, field, None)
        if value is not None:
            assert value.shape[0] == x.shape[0] and value.dtype == np.float32, (field, value.shape, value.dtype)
    if np.all(np.isfinite(np.asarray(x, dtype=np.float64))):
        compare_backends(a, b, f"{case} {x.dtype} {x.shape}")  # shared model code: a kernel check, not an oracle
        return case, x, options, b
    return None


@fuzz_settings(120)
@given(data=st.data())
def test_fuzz_model_pixel_values(models, data):
    run_pixel_example(models, data)


@pytest.fixture(scope="module")
def framework_models():
    """torch, and transformers' model of each case (eager attention, float32), loaded from the same golden files."""
    transformers, torch = framework("transformers"), framework("torch")
    transformers.logging.set_verbosity_error()
    out = Models()
    for case in MODEL_CASES:
        arch = json.loads((golden_case(case) / "config.json").read_text())["architectures"][0]
        out[case] = getattr(transformers, arch).from_pretrained(golden_case(case), attn_implementation="eager",
                                                                dtype=torch.float32).eval()
    return torch, out


@pytest.mark.needs_framework
@fuzz_settings(60)
@given(data=st.data())
def test_fuzz_model_pixel_values_vs_transformers(models, framework_models, data):
    """The same examples; where refvit ran finite pixel values, transformers on the same float32 values agrees."""
    example = run_pixel_example(models, data)
    if example is None:
        return
    case, x, options, ours = example
    torch, theirs_models = framework_models
    options = {k: v for k, v in options.items() if k not in ("output_hidden_states", "output_attentions")}
    theirs = framework_forward(torch, theirs_models[case], x, options)
    if theirs is None:
        note_event("transformers refused")
        return
    assert compare_with_framework(ours, theirs, f"{case} {x.dtype} {x.shape} {sorted(options)}") > 0
    note_event("compared with transformers")


PROCESSORS = [refvit.ViTImageProcessor(size=16), refvit.DeiTImageProcessor(size=18, crop_size=16),
              refvit.BitImageProcessor(size=16, crop_size=16), refvit.ConvNextImageProcessor(size=16),
              refvit.BeitImageProcessor(size=16)]


@fuzz_settings(120)
@given(data=st.data())
def test_fuzz_processor_arrays(data):
    processor = data.draw(st.sampled_from(PROCESSORS), label="processor")
    image = data.draw(arrays(ranks=st.sampled_from([3, 3, 4, 2, 5])), label="image")
    if image.ndim >= 3 and data.draw(st.booleans(), label="channels_last"):
        image = np.moveaxis(image, -3, -1)
    kwargs = {"do_convert_rgb": data.draw(st.sampled_from([None, True, False]))}
    with memory_cap():
        batch, err = outcome(lambda: processor(image, **kwargs))
    if err is None:
        pixels = batch["pixel_values"]
        assert pixels.dtype == np.float32 and pixels.ndim == 4 and pixels.shape[1:] == (3, 16, 16), pixels.shape


@fuzz_settings(120)
@given(data=st.data())
def test_fuzz_load_image_arrays(data):
    array = data.draw(arrays(ranks=st.sampled_from([3, 3, 2, 4, 1]), channels=st.sampled_from([3, 1, 4, 2])))
    if array.ndim == 3:
        array = np.moveaxis(array, 0, -1)  # (H, W, C), what load_image takes
    with memory_cap():
        image, err = outcome(lambda: refvit.load_image(array))
    if err is None:
        assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (array.shape[1], array.shape[0])
        note_event(f"loaded {array.dtype}")
