"""Real-data parity: refvit classifies the digits test split exactly as PyTorch did.

The models in golden/models/ were trained by golden/train_digits.py (transformers + torch), which recorded PyTorch's
float32 logits and predicted class for every test image. Here refvit's own processor and model run on the same
images (`refvit.datasets.digit_image`) and must give the same class for every image, the same accuracy, and logits
within docs/DESIGN.md §7's float32 tolerance, 1e-4·max(1, max|ref|). No torch, no scikit-learn needed.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from refvit import InputError
from refvit.datasets import digit_image
from refvit.verify import digits_pixel_values, format_digits_table, list_digit_models, run_digits

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
MODELS = list_digit_models(GOLDEN)
ARCHITECTURES = {"digits-bit": "BitForImageClassification", "digits-deit": "DeiTForImageClassificationWithTeacher",
                 "digits-vit": "ViTForImageClassification", "digits-beit": "BeitForImageClassification",
                 "digits-cvt": "CvtForImageClassification"}
NUMPY_SUBSET = 72  # float64 runs of the NumPy (teaching) backend: the first 72 test images of each model


def test_every_family_has_a_trained_model():
    assert {m.name for m in MODELS} == set(ARCHITECTURES), "run python golden/train_digits.py"
    for m in MODELS:
        config = json.loads((m / "config.json").read_text())
        assert config["architectures"] == [ARCHITECTURES[m.name]]
        assert config["id2label"] == {str(i): str(i) for i in range(10)}
        assert (m / "preprocessor_config.json").is_file()
        assert (m / "model.safetensors").stat().st_size < 2_000_000  # "a few MB at most"


def test_test_split_file():
    """360 scans (20%, stratified: 34..37 per class) as load_digits stores them: integers 0..16."""
    with np.load(GOLDEN / "models" / "digits_test.npz") as z:
        images, labels, indices = z["images"], z["labels"], z["indices"]
    assert images.shape == (360, 8, 8) and images.dtype == np.uint8 and images.max() == 16
    assert labels.dtype == np.int64 and np.all(np.abs(np.bincount(labels, minlength=10) - 36) <= 2)
    assert indices.shape == (360,) and np.all(np.diff(indices) > 0) and indices.max() < 1797


@pytest.mark.parametrize("model_dir", MODELS, ids=[m.name for m in MODELS])
def test_same_class_as_pytorch_on_every_test_image(model_dir):
    result = run_digits(model_dir, dtype="float32", backend="numba")
    assert result.images == 360 and set(result.errors) >= {"logits"}
    assert result.ok, "\n" + format_digits_table([result])
    meta = json.loads((model_dir / "meta.json").read_text())
    assert result.accuracy == meta["test_accuracy"]  # the framework's accuracy, recorded at training time
    assert result.accuracy >= 0.9, f"{model_dir.name} barely learned: retrain"


def test_deit_records_both_heads():
    """The distilled student's class and distillation heads are compared too, not only their average."""
    result = run_digits(GOLDEN / "models" / "digits-deit", count=NUMPY_SUBSET)
    assert set(result.errors) == {"logits", "cls_logits", "distillation_logits"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("model_dir", MODELS, ids=[m.name for m in MODELS])
def test_numpy_backend_agrees(model_dir, dtype):
    """The teaching path: the whole split in float32, a subset in float64 (same tolerance: PyTorch ran float32)."""
    count = None if dtype == "float32" else NUMPY_SUBSET
    result = run_digits(model_dir, dtype=dtype, backend="numpy", count=count)
    assert result.images == (count or 360)
    assert not result.disagreements and result.ok, "\n" + format_digits_table([result])


def test_processors_upscale_to_32():
    for m in MODELS:
        pixels, labels = digits_pixel_values(m, count=4)
        assert pixels.shape == (4, 3, 32, 32) and pixels.dtype == np.float32 and labels.shape == (4,)


def test_digit_image_scales_grey_to_rgb():
    scan = np.array([[0, 1, 8], [15, 16, 4]])
    pixels = np.asarray(digit_image(scan))
    assert pixels.shape == (2, 3, 3) and pixels.dtype == np.uint8
    assert pixels[..., 0].tolist() == [[0, 16, 128], [239, 255, 64]]  # round(v * 255 / 16)
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])
    assert digit_image(scan.astype(np.float64)).mode == "RGB"


@pytest.mark.parametrize("bad, what", [
    (np.zeros((8,)), "2-D"), (np.zeros((8, 8, 3)), "2-D"), (np.zeros((0, 8)), "2-D"),
    (np.full((8, 8), 17), r"\[0, 16\]"), (np.full((8, 8), -1), r"\[0, 16\]"),
    (np.full((8, 8), np.nan), r"\[0, 16\]"), (np.full((8, 8), "a"), "numeric"),
])
def test_digit_image_refuses_bad_scans(bad, what):
    with pytest.raises(InputError, match=what):
        digit_image(bad)


def test_cli_verify_reports_accuracies(capsys):
    from refvit.cli import main

    assert main(["verify", "--cases", "digits-bit", "digits-cvt", "--backend", "numpy", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "PyTorch acc" in out and "refvit acc" in out and "360/360" in out and "2 passed, 0 failed" in out


def test_cli_verify_fails_on_a_changed_prediction(tmp_path, capsys):
    """A record that disagrees with refvit (here: PyTorch's class for image 5 changed) makes verify exit 1."""
    import shutil

    from refvit.cli import main

    (tmp_path / "cases").mkdir()
    shutil.copytree(GOLDEN / "models" / "digits-bit", tmp_path / "models" / "digits-bit")
    shutil.copy(GOLDEN / "models" / "digits_test.npz", tmp_path / "models")
    meta_path = tmp_path / "models" / "digits-bit" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["test_predictions"][5] = (meta["test_predictions"][5] + 1) % 10
    meta_path.write_text(json.dumps(meta))
    assert main(["verify", "--golden", str(tmp_path), "--backend", "numpy", "--dtype", "float32"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "test images [5]" in out and "logits.npz disagrees" in out
