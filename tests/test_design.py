"""The design's promises (docs/DESIGN.md §2, §3, §5): one forward context whose kernels run every GEMM and convolution,
recording that never changes the arithmetic, architectures declared as data, real transformers-named classes."""

import inspect
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import refvit
from refvit import kernels, model as model_module
from refvit.verify import load_case_model

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "cases"
# one small case per family and head kind: patch embedding, pooler, classifier heads, lm_head, 1×1 conv decoder,
# segmentation convs, CvT's projections and head, BiT's convs and classifier
CASES = ["deit_teacher", "vit_mim", "vit_model", "beit_mim", "beit_segmentation", "cvt_classification",
         "cvt_classification_cls_tokens", "bit_bottleneck", "bit_preact_model"]


def case_inputs(name):
    with np.load(GOLDEN / name / "inputs.npz") as z:
        return {k: z[k] for k in z.files}


def counting(namespace, calls):
    """The kernels of `namespace`, each counting its calls in `calls`."""
    def wrap(name, fn):
        def counted(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)
        return counted
    return SimpleNamespace(**{k: wrap(k, v) if callable(v) else v for k, v in vars(namespace).items()})


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_recording_does_not_change_the_arithmetic(name, backend):
    """Outputs are bit-identical with and without output_intermediates (BiT adds residuals in place either way,
    CvT's attention map is asked of the kernel either way)."""
    model, meta = load_case_model(GOLDEN / name, "float32", backend)
    inputs = case_inputs(name)
    call = {k: v for k, v in meta["call"].items() if k != "bool_masked_pos"}
    plain = model(**inputs, **call, output_hidden_states=True)
    recorded = model(**inputs, **call, output_hidden_states=True, output_intermediates=True)
    assert recorded.intermediates
    for key, value in plain.items():
        values = value if isinstance(value, tuple) else (value,)
        for a, b in zip(values, recorded[key] if isinstance(value, tuple) else (recorded[key],)):
            assert np.array_equal(a, b), key


@pytest.mark.parametrize("name", CASES)
def test_every_gemm_and_conv_runs_on_the_instance_kernels(name):
    """A model given a wrapped kernel namespace on its `kernels` attribute runs every product through it: the
    forward needs no NumPy matmul of its own (poisoned here), and another instance is not affected."""
    model, meta = load_case_model(GOLDEN / name, "float64", "numpy")
    other, _ = load_case_model(GOLDEN / name, "float64", "numpy")
    inputs = case_inputs(name)
    call = {k: v for k, v in meta["call"].items() if k != "bool_masked_pos"}
    expected = model(**inputs, **call)
    calls = {}
    model.kernels = counting(kernels.get("numpy"), calls)
    out = model(**inputs, **call)
    for key in expected:
        assert np.array_equal(out[key], expected[key])
    assert calls.get("linear", 0) + calls.get("conv2d", 0) > 0
    assert other.kernels is kernels.get("numpy")            # the shared namespace was not patched


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_patch_embedding_and_heads_are_kernel_gemms(backend):
    """DeiT with teacher: the patch embedding, 4 GEMMs per layer (q/k/v fused into one at load, the attention
    output, the two MLP projections) and both classifier heads are kernel calls (no GEMM of the model's own): on
    the NumPy backend each a kernels.linear call; on the Numba backend a layer's GEMMs run inside its two fused
    block kernels (attention_block, mlp_block), the rest are kernels.linear calls."""
    model, _ = load_case_model(GOLDEN / "deit_teacher", "float32", backend)
    calls = {}
    model.kernels = counting(model.kernels, calls)
    model(**case_inputs("deit_teacher"))
    L = model.config.num_hidden_layers
    if backend == "numpy":
        assert calls["linear"] == 1 + 4 * L + 2 and "attention_block" not in calls
    else:
        assert calls["linear"] == 1 + 2 and calls["attention_block"] == calls["mlp_block"] == L


def test_architectures_are_data_and_tables_derive_from_them():
    archs = refvit.ARCHITECTURES
    for name, arch in archs.items():
        assert arch.name == name and (arch.head is None or arch.head.kind)
    assert model_module.BASE_MODELS == {a.family: a.name for a in archs.values() if a.head is None}
    assert model_module.BASE_MODELS["deit"] == "DeiTModel"
    assert model_module.CLASSIFIERS["data2vec-vision"] == "Data2VecVisionForImageClassification"
    assert model_module.CLASSIFIERS["deit"] == "DeiTForImageClassification"


@pytest.mark.parametrize("name", sorted(refvit.ARCHITECTURES))
def test_public_classes_are_real_classes(name):
    """`refvit.DeiTForImageClassificationWithTeacher` & co are written out in refvit/model.py (go-to-definition
    finds them) and pick their own architecture."""
    cls = getattr(refvit, name)
    assert cls is refvit.CLASSES[name] and cls.__name__ == name and cls.architecture_name == name
    assert inspect.getsourcefile(cls).endswith("refvit/model.py")
    assert f"class {name}(" in inspect.getsource(cls)


@pytest.mark.parametrize("name,branch", [("bit_preact_model", "conv3"), ("bit_bottleneck", "norm3")])
def test_in_place_residual_keeps_the_recorded_branch(name, branch):
    """BiT adds the shortcut into the branch's output in place; the recorded branch is the value before the add."""
    model, _ = load_case_model(GOLDEN / name, "float64", "numba")
    inter = model(**case_inputs(name), output_intermediates=True).intermediates
    layer = "bit.encoder.stages.0.layers.0" if "bit.encoder.stages.0.layers.0.conv1" in inter else \
        "encoder.stages.0.layers.0"
    total = inter[f"{layer}.{branch}"] + inter[f"{layer}.downsample"]
    if branch == "norm3":  # the bottleneck layer's activation follows the add
        total = np.maximum(total, 0)
    np.testing.assert_array_equal(total, inter[layer])
