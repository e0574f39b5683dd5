"""The documented snippets, verbatim except for the import line, run from a Hugging Face cache by hub id.

- The DeiT model card (facebook/deit-small-distilled-patch16-224): AutoFeatureExtractor + the teacher model,
  `return_tensors="pt"`.
- transformers' BiT docs: the `BitModel` and `BitForImageClassification` forward examples (google/bit-50), doctest
  form, `return_tensors="pt"` and `torch.no_grad()`.

The cache holds what a transformers run leaves there for these repos: config.json and preprocessor_config.json as
the repos ship them (reconstructed: same keys and values; the 1000 ImageNet label names are stand-ins), the weights
as the repos ship them — only a pytorch_model.bin (written by torch.save), real shapes, seeded random values
(refvit.synthetic) — and the .no_exist markers of the safetensors files transformers looks for first. Offline:
nothing is downloaded. The snippets' URL image and dataset come from stand-in `requests` / `datasets` modules that
hand over a local cat photo (golden/images/chelsea_landscape.jpg) and record what was asked for.

Where transformers is installed, the same snapshot through transformers gives the same pixel values and logits.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import json
import sys
import types

import numpy as np
import pytest

from refvit.synthetic import random_state_dict, shapes_for

from test_hub_support import write_snapshot

DEIT_ID = "facebook/deit-small-distilled-patch16-224"
BIT_ID = "google/bit-50"
IMAGENET = {str(i): f"imagenet_{i}" for i in range(1000)}  # stand-ins for the 1000 ImageNet-1k label names

# facebook/deit-small-distilled-patch16-224/config.json (converted from timm with transformers 4.13)
DEIT_CONFIG = {
    "architectures": ["DeiTForImageClassificationWithTeacher"], "attention_probs_dropout_prob": 0.0,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 384, "id2label": IMAGENET, "image_size": 224,
    "initializer_range": 0.02, "intermediate_size": 1536, "label2id": {v: int(k) for k, v in IMAGENET.items()},
    "layer_norm_eps": 1e-12, "model_type": "deit", "num_attention_heads": 6, "num_channels": 3,
    "num_hidden_layers": 12, "patch_size": 16, "qkv_bias": True, "torch_dtype": "float32",
    "transformers_version": "4.13.0.dev0",
}
# its preprocessor_config.json: the legacy feature-extractor keys (resize 256 bicubic, crop 224, ImageNet mean/std)
DEIT_PREPROCESSOR = {
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "DeiTFeatureExtractor", "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 256,
}
# google/bit-50/config.json (converted from timm's resnetv2_50x1_bitm with transformers 4.26)
BIT_CONFIG = {
    "architectures": ["BitForImageClassification"], "depths": [3, 4, 6, 3], "drop_path_rate": 0.0,
    "embedding_dynamic_padding": True, "embedding_size": 64, "global_padding": "SAME", "hidden_act": "relu",
    "hidden_sizes": [256, 512, 1024, 2048], "id2label": IMAGENET, "label2id": {v: int(k) for k, v in IMAGENET.items()},
    "layer_type": "preactivation", "model_type": "bit", "num_channels": 3, "num_groups": 32, "out_features": None,
    "output_stride": 32, "stage_names": ["stem", "stage1", "stage2", "stage3", "stage4"], "torch_dtype": "float32",
    "transformers_version": "4.26.0.dev0", "width_factor": 1,
}
# its preprocessor_config.json: timm's data config for that model (448², crop_pct 1, bilinear, mean = std = 0.5)
BIT_PREPROCESSOR = {
    "crop_size": {"height": 448, "width": 448}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "BitImageProcessor",
    "image_std": [0.5, 0.5, 0.5], "resample": 2, "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 448},
}

# The DeiT model card's "How to use", verbatim.
DEIT_CARD = """\
from transformers import AutoFeatureExtractor, DeiTForImageClassificationWithTeacher
from PIL import Image
import requests

url = 'http://images.cocodataset.org/val2017/000000039769.jpg'
image = Image.open(requests.get(url, stream=True).raw)

feature_extractor = AutoFeatureExtractor.from_pretrained('facebook/deit-small-distilled-patch16-224')
model = DeiTForImageClassificationWithTeacher.from_pretrained('facebook/deit-small-distilled-patch16-224')

inputs = feature_extractor(images=image, return_tensors="pt")
outputs = model(**inputs)
logits = outputs.logits

# model predicts one of the 1000 ImageNet classes
predicted_class_idx = logits.argmax(-1).item()
print("Predicted class:", model.config.id2label[predicted_class_idx])
"""

# transformers' BiT docs, BitModel.forward: utils/doc.py PT_VISION_BASE_MODEL_SAMPLE for model_class BitModel,
# checkpoint google/bit-50, expected output [1, 2048, 7, 7] (modeling_bit.py's _EXPECTED_OUTPUT_SHAPE), verbatim.
BIT_MODEL_DOC = """\
    >>> from transformers import AutoImageProcessor, BitModel
    >>> import torch
    >>> from datasets import load_dataset

    >>> dataset = load_dataset("huggingface/cats-image")
    >>> image = dataset["test"]["image"][0]

    >>> image_processor = AutoImageProcessor.from_pretrained("google/bit-50")
    >>> model = BitModel.from_pretrained("google/bit-50")

    >>> inputs = image_processor(image, return_tensors="pt")

    >>> with torch.no_grad():
    ...     outputs = model(**inputs)

    >>> last_hidden_states = outputs.last_hidden_state
    >>> list(last_hidden_states.shape)
    [1, 2048, 7, 7]
"""

# transformers' BiT docs, BitForImageClassification.forward (its rendered docstring in transformers 5.23), verbatim.
BIT_CLASSIFICATION_DOC = """\
        >>> from transformers import AutoImageProcessor, BitForImageClassification
        >>> import torch
        >>> from datasets import load_dataset

        >>> dataset = load_dataset("huggingface/cats-image")
        >>> image = dataset["test"]["image"][0]

        >>> image_processor = AutoImageProcessor.from_pretrained("google/bit-50")
        >>> model = BitForImageClassification.from_pretrained("google/bit-50")

        >>> inputs = image_processor(image, return_tensors="pt")

        >>> with torch.no_grad():
        ...     logits = model(**inputs).logits

        >>> # model predicts one of the 1000 ImageNet classes
        >>> predicted_label = logits.argmax(-1).item()
        >>> print(model.config.id2label[predicted_label])
        ...
"""


def only_the_import_changed(snippet: str) -> str:
    """The snippet with `from transformers import` -> `from refvit import` on its one import line, nothing else."""
    changed = snippet.replace("from transformers import ", "from refvit import ", 1)
    diff = [(a, b) for a, b in zip(snippet.splitlines(), changed.splitlines()) if a != b]
    assert len(diff) == 1 and "from refvit import" in diff[0][1]
    return changed


def run_doctest_source(text: str, namespace: dict) -> str:
    """Run each `>>>` example as the interactive prompt would (expression values printed); return what was printed.

    The expected outputs written in the docs are not compared: they are the real weights' (a tiger cat) and the
    doc's 224² shape, and these weights are random at the repo's 448² size."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for example in doctest.DocTestParser().get_examples(text):
            exec(compile(example.source, "<doc>", "single"), namespace)  # noqa: S102 - the documented snippet
    return out.getvalue()


# Every test here runs the snippets as written: return_tensors="pt" and a pytorch_model.bin need torch, so CI runs
# them in its framework stage (REFVIT_CI_STAGE=framework), where none may skip.
pytestmark = pytest.mark.needs_framework


@pytest.fixture(scope="session")
def snippet_cache(tmp_path_factory):
    """The two repos' cache entries, as a transformers run leaves them (see the module docstring)."""
    torch = pytest.importorskip("torch", reason="the snippets ask for return_tensors='pt'; the .bin is torch.save's")
    cache = tmp_path_factory.mktemp("snippets") / "hub"
    bin_dir = tmp_path_factory.mktemp("bins")
    for repo, config, preprocessor, seed in ((DEIT_ID, DEIT_CONFIG, DEIT_PREPROCESSOR, 17),
                                             (BIT_ID, BIT_CONFIG, BIT_PREPROCESSOR, 50)):
        weights = random_state_dict(shapes_for(config), seed=seed)
        path = bin_dir / f"{seed}.bin"
        torch.save({name: torch.from_numpy(array) for name, array in weights.items()}, path)
        files = {"config.json": json.dumps(config, indent=2, sort_keys=True).encode() + b"\n",
                 "preprocessor_config.json": json.dumps(preprocessor, indent=2, sort_keys=True).encode() + b"\n",
                 "pytorch_model.bin": path.read_bytes()}
        path.unlink()
        write_snapshot(cache, repo, files, refs=("main",),
                       no_exist=("model.safetensors", "model.safetensors.index.json"))
    return cache


@pytest.fixture
def offline_snippet_env(snippet_cache, monkeypatch, golden_dir):
    """HF_HUB_CACHE = the snippet cache, offline; `requests` and `datasets` stand-ins that serve a local cat photo."""
    monkeypatch.setenv("HF_HUB_CACHE", str(snippet_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    photo = golden_dir / "images" / "chelsea_landscape.jpg"
    asked = []

    def get(url, stream=False):
        asked.append(url)
        return types.SimpleNamespace(raw=open(photo, "rb"))

    def load_dataset(name):
        from PIL import Image

        asked.append(name)
        return {"test": {"image": [Image.open(photo)]}}

    monkeypatch.setitem(sys.modules, "requests", types.SimpleNamespace(get=get))
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return asked


def same_through_transformers(repo_dir, architecture: str, image, pixel_values, logits_or_hidden, field: str):
    """transformers on the same snapshot: same pixel values (PIL backend) and same outputs (golden float32 tolerance).

    Only where transformers is installed; without it the snippet test still runs (it is must-run), minus this check."""
    try:
        import transformers
    except ImportError:
        return
    import torch

    hf_inputs = transformers.AutoImageProcessor.from_pretrained(repo_dir, backend="pil")(images=image,
                                                                                       return_tensors="pt")
    model = getattr(transformers, architecture).from_pretrained(repo_dir).eval()
    with torch.no_grad():
        ref = getattr(model(**hf_inputs), field).numpy()
    np.testing.assert_allclose(pixel_values, hf_inputs["pixel_values"].numpy(), atol=1e-6)
    assert np.abs(logits_or_hidden - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.must_run
def test_deit_model_card_snippet_from_the_cache(offline_snippet_env, capsys):
    import torch

    namespace: dict = {}
    exec(compile(only_the_import_changed(DEIT_CARD), "<deit card>", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    import refvit

    model, inputs, logits = namespace["model"], namespace["inputs"], namespace["logits"]
    assert isinstance(model, refvit.DeiTForImageClassificationWithTeacher)
    assert isinstance(inputs["pixel_values"], torch.Tensor) and tuple(inputs["pixel_values"].shape) == (1, 3, 224, 224)
    assert logits.shape == (1, 1000)
    assert printed == f"Predicted class: imagenet_{int(np.argmax(logits))}\n"
    assert offline_snippet_env == ["http://images.cocodataset.org/val2017/000000039769.jpg"]
    assert "models--facebook--deit-small-distilled-patch16-224/snapshots/" in model.source
    same_through_transformers(model.source, "DeiTForImageClassificationWithTeacher", namespace["image"],
                              inputs["pixel_values"].numpy(), logits, "logits")


@pytest.mark.must_run
def test_bit_model_doc_snippet_from_the_cache(offline_snippet_env):
    import torch

    namespace: dict = {}
    printed = run_doctest_source(only_the_import_changed(BIT_MODEL_DOC), namespace)
    import refvit

    assert isinstance(namespace["model"], refvit.BitModel)
    assert isinstance(namespace["inputs"]["pixel_values"], torch.Tensor)
    # 448² input (the repo's processor) through a stride-32 network: 14×14 (the doc's 7×7 is for 224² input)
    assert printed == "[1, 2048, 14, 14]\n" == f"{list(namespace['last_hidden_states'].shape)}\n"
    assert offline_snippet_env == ["huggingface/cats-image"]


@pytest.mark.must_run
def test_bit_classification_doc_snippet_from_the_cache(offline_snippet_env):
    namespace: dict = {}
    printed = run_doctest_source(only_the_import_changed(BIT_CLASSIFICATION_DOC), namespace)
    import refvit

    model, logits = namespace["model"], namespace["logits"]
    assert isinstance(model, refvit.BitForImageClassification) and logits.shape == (1, 1000)
    assert printed == f"imagenet_{int(np.argmax(logits))}\n"
    same_through_transformers(model.source, "BitForImageClassification", namespace["image"],
                              namespace["inputs"]["pixel_values"].numpy(), logits, "logits")


def test_the_stored_bit_snippets_are_what_transformers_renders():
    """The BiT texts above are transformers' own: its rendered BitForImageClassification docstring and the
    vision base-model template filled for BitModel (5.23 renders BitModel's example empty)."""
    transformers = pytest.importorskip("transformers")
    from transformers.utils import doc

    assert BIT_CLASSIFICATION_DOC.strip() in transformers.BitForImageClassification.forward.__doc__
    template = doc.PT_VISION_BASE_MODEL_SAMPLE.format(model_class="BitModel", checkpoint="google/bit-50",
                                                      expected_output="[1, 2048, 7, 7]")
    assert BIT_MODEL_DOC.strip() in template
