"""return_tensors="pt" (refvit.tensors): torch tensors out of the processors where torch is installed, torch tensors
into the models (read in place), a clear InputError suggesting "np" where torch is not; never a module-level import.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import refvit
from refvit.errors import InputError

from conftest import golden_case

IMAGE = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)


def needs_torch():
    return pytest.importorskip("torch", reason="torch tensors need torch")


@pytest.mark.needs_framework
def test_processors_return_torch_tensors_for_pt():
    torch = needs_torch()
    processor = refvit.DeiTImageProcessor(size=36, crop_size=32)
    pt = processor(images=[IMAGE, IMAGE], return_tensors="pt")
    np_ = processor(images=[IMAGE, IMAGE], return_tensors="np")
    assert isinstance(pt["pixel_values"], torch.Tensor) and pt.pixel_values.dtype == torch.float32
    np.testing.assert_array_equal(pt["pixel_values"].numpy(), np_["pixel_values"])
    beit = refvit.BeitImageProcessor(size={"height": 32, "width": 32})
    seg = beit(images=IMAGE, segmentation_maps=IMAGE[:, :, 0], return_tensors="pt")
    assert isinstance(seg["pixel_values"], torch.Tensor) and isinstance(seg["labels"], torch.Tensor)
    assert seg["labels"].dtype == torch.int64 and tuple(seg["labels"].shape) == (1, 32, 32)


@pytest.mark.needs_framework
def test_transformers_tensor_type_is_accepted():
    needs_torch()
    transformers = pytest.importorskip("transformers")
    out = refvit.ViTImageProcessor(size={"height": 32, "width": 32})(IMAGE, return_tensors=transformers.TensorType.PYTORCH)
    assert type(out["pixel_values"]).__module__.startswith("torch")


@pytest.mark.needs_framework
def test_models_read_torch_tensors_in_place():
    torch = needs_torch()
    model = refvit.from_pretrained(golden_case("deit_teacher"))
    with np.load(golden_case("deit_teacher") / "inputs.npz") as z:
        x = z["pixel_values"]
    ref = model(x).logits
    assert np.array_equal(model(torch.from_numpy(x)).logits, ref)
    assert np.array_equal(model(pixel_values=torch.from_numpy(x).requires_grad_()).logits, ref)  # detached, read
    as_nhwc = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 3, 1))).permute(0, 3, 1, 2)  # non-contiguous
    assert np.array_equal(model(as_nhwc).logits, ref)
    bf16 = torch.from_numpy(x).to(torch.bfloat16)  # no NumPy dtype: widened to float32
    assert np.array_equal(model(bf16).logits, model(bf16.float().numpy()).logits)
    with pytest.raises(InputError, match=r"expected shape \(B, 3, H, W\)"):
        model(torch.zeros(3, 32, 32))


def test_pt_without_torch_is_a_clear_input_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError, as where it is not installed
    with pytest.raises(InputError, match=r"return_tensors='pt' needs torch, which is not installed: use "
                                         r"return_tensors='np'"):
        refvit.ViTImageProcessor()(IMAGE, return_tensors="pt")
    assert refvit.ViTImageProcessor()(IMAGE, return_tensors="np")["pixel_values"].shape == (1, 3, 224, 224)


@pytest.mark.parametrize("value", ["tf", "jax", "PT", 1])
def test_unknown_return_tensors(value):
    with pytest.raises(InputError, match="'np'"):
        refvit.ViTImageProcessor()(IMAGE, return_tensors=value)


def test_refvit_imports_neither_torch_nor_huggingface_hub():
    code = ("import sys, refvit, refvit.hub, refvit.tensors, refvit.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
