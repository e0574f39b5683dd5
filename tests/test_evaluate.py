"""`refvit evaluate`: the digits test split written as a PNG ImageFolder and evaluated with the trained
digits models gives PyTorch's recorded accuracy (golden/models/*/meta.json) and agrees with its recorded logits
(logits.npz) on every image; reports, label maps, reference files, the CLI, the data generators.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from refvit import InputError
from refvit import batch
from refvit.evaluate import (Progress, evaluate, format_report, load_reference, write_digits_imagefolder,
                             write_photo_imagefolder)
from refvit.verify import TOLERANCE, list_digit_models

ROOT = Path(__file__).resolve().parent.parent
MODELS = list_digit_models(ROOT / "golden")
FAST = ROOT / "golden" / "models" / "digits-bit"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits_imagefolder(tmp_path_factory.mktemp("digits"))


def test_digits_reference_files_hold_the_recorded_logits(digits):
    assert digits["count"] == 360 and set(digits["references"]) == {m.name for m in MODELS}
    for m in MODELS:
        ref = load_reference(digits["references"][m.name])
        with np.load(m / "logits.npz") as z:
            logits = z["logits"]
        keys = sorted(ref, key=lambda k: int(k.split("/")[1][:4]))  # NNNN.png: the position in digits_test.npz
        assert len(keys) == 360 and np.array_equal(np.stack([ref[k] for k in keys]), logits)


@pytest.mark.parametrize("model_dir", MODELS, ids=[m.name for m in MODELS])
def test_digits_imagefolder_gives_pytorchs_accuracy_and_classes(model_dir, digits):
    meta = json.loads((model_dir / "meta.json").read_text())
    report = evaluate(model_dir, digits["images"], reference=digits["references"][model_dir.name], batch_size=32)
    assert report["images"] == report["classified"] == report["labelled"] == 360 and not report["unreadable"]
    assert report["top1"] == meta["test_accuracy"] and report["correct"] == meta["test_correct"]
    ours = {int(r["path"].split("/")[1][:4]): r["top"][0] for r in report["records"]}
    assert [ours[i] for i in range(360)] == meta["test_predictions"]
    ref = report["reference"]
    assert ref["agree"] == ref["compared"] == 360 and not ref["missing"] and not ref["disagree"]
    with np.load(model_dir / "logits.npz") as z:
        bound = TOLERANCE["float32"] * max(1.0, float(np.abs(z["logits"]).max()))
    assert ref["max_abs_err"] <= bound
    confusion = np.array(report["confusion"])
    assert confusion.sum() == 360 and np.trace(confusion) == meta["test_correct"]
    assert sum(c["correct"] for c in report["per_class"]) == meta["test_correct"]
    assert report["top5"] >= report["top1"]


@pytest.mark.skipif(not batch.dask_available(),
                    reason="dask.distributed is not installed (pip install \"refvit[dask]\")")
def test_cli_two_workers_give_the_in_process_results_file(tmp_path, digits, capsys):
    from refvit.cli import main

    runs = {}
    for name, extra in (("local", []), ("dask", ["--workers", "2", "--batch-size", "7"])):
        out = tmp_path / f"{name}.jsonl"
        assert main(["evaluate", str(FAST), digits["images"], "--reference", digits["references"]["digits-bit"],
                     "--out", str(out), "--json", *extra]) == 0
        runs[name] = json.loads(capsys.readouterr().out)
        lines = out.read_text().splitlines()[1:]
        runs[name]["records"] = {r["path"]: r for r in map(json.loads, lines)}
    local, dask = runs["local"], runs["dask"]
    assert "LocalCluster(2 workers)" in dask["throughput"]["runner"] and local["throughput"]["runner"] == "in-process"
    assert local["records"] == dask["records"]  # every field: classes, logits (bits via SHA-256), reference errors
    for key in ("top1", "top5", "per_class", "confusion", "reference"):
        assert local[key] == dask[key], key


def test_cli_text_report(tmp_path, digits, capsys):
    from refvit.cli import main

    assert main(["evaluate", str(FAST), digits["images"], "--reference", digits["references"]["digits-bit"],
                 "--out", str(tmp_path / "r.jsonl")]) == 0
    out = capsys.readouterr().out
    for text in ("top-1 accuracy", "top-5 accuracy", "per class:", "confusion matrix (rows: true class",
                 "top-1 agreement 360/360", "worst images", "images/s"):
        assert text in out, text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (tmp_path / "r.confusion.png").exists()
    else:
        assert (tmp_path / "r.confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_label_map_and_unknown_labels(tmp_path, digits, capsys):
    from refvit.cli import main

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for item in batch.load_dataset(digits["images"]).items[::30]:
        folder = tmp_path / "named" / names[int(item.label)]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(item.file, folder)
    data = str(tmp_path / "named")
    assert main(["evaluate", str(FAST), data]) == 2
    err = capsys.readouterr().err
    assert "not classes of the model" in err and "--label-map" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "map.json").write_text(json.dumps({n: (i if i % 2 else str(i)) for i, n in enumerate(names)}))
    assert main(["evaluate", str(FAST), data, "--label-map", str(tmp_path / "map.json"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["labelled"] == 12 and report["top1"] == 1.0  # digits-bit: 100% on the split
    (tmp_path / "bad.json").write_text(json.dumps({"zero": 10}))
    with pytest.raises(InputError, match="not a class of the model"):
        evaluate(FAST, data, label_map=tmp_path / "bad.json")


def test_reference_disagreement_missing_and_strict(tmp_path, digits, capsys):
    from refvit.cli import main

    with np.load(digits["references"]["digits-bit"]) as z:
        paths, logits = z["paths"], z["logits"].copy()
    logits[5] = logits[5][::-1].copy()  # another top-1 class for image 5
    ref = {str(p): v for p, v in zip(paths[:-1], logits[:-1])}  # the last image missing
    np.savez(tmp_path / "ref.npz", **ref)
    report = evaluate(FAST, digits["images"], reference=tmp_path / "ref.npz")
    r = report["reference"]
    assert r["compared"] == 359 and r["agree"] == 358 and r["disagree"] == [str(paths[5])]
    assert r["missing"] == [str(paths[-1])] and r["worst"][0]["path"] == str(paths[5])
    text = format_report({k: v for k, v in report.items() if k != "records"}, {i: str(i) for i in range(10)})
    assert "top-1 differs on" in text and "not in the reference: 1 images" in text
    assert main(["evaluate", str(FAST), digits["images"], "--reference", str(tmp_path / "ref.npz")]) == 0
    assert main(["evaluate", str(FAST), digits["images"], "--reference", str(tmp_path / "ref.npz"), "--strict"]) == 1
    capsys.readouterr()


def test_safetensors_reference(tmp_path, digits):
    st = pytest.importorskip("safetensors.numpy", reason="writing the test file needs safetensors")
    with np.load(digits["references"]["digits-bit"]) as z:
        st.save_file({str(p): v for p, v in zip(z["paths"], z["logits"])}, tmp_path / "ref.safetensors")
    expected = load_reference(digits["references"]["digits-bit"])
    got = load_reference(tmp_path / "ref.safetensors")
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("name, content, what", [
    ("r.txt", b"x", "expected a .npz or .safetensors"),
    ("r.npz", b"not a zip", "not a readable .npz"),
])
def test_bad_reference_files(tmp_path, name, content, what):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=what):
        load_reference(tmp_path / name)
    np.savez(tmp_path / "two_d.npz", a=np.zeros((2, 3)))
    with pytest.raises(InputError, match="not 1-D logits"):
        load_reference(tmp_path / "two_d.npz")


def test_cli_errors_are_one_line(tmp_path, digits, capsys):
    from refvit.cli import main

    assert main(["evaluate", str(FAST), digits["images"], "--resume"]) == 2
    assert main(["evaluate", str(FAST), str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--resume needs --out" in err[0] and "no such folder" in err[1]


def test_progress_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    quiet, tty = io.StringIO(), Terminal()
    for stream in (quiet, tty):
        p = Progress("evaluate", stream)
        p(0, 10), p(5, 10), p(10, 10), p.close()
    assert quiet.getvalue() == ""
    assert "10/10" in tty.getvalue() and "img/s" in tty.getvalue() and tty.getvalue().endswith("\n")


def test_photo_imagefolder_is_deterministic(tmp_path):
    a = write_photo_imagefolder(tmp_path / "a", count=8, size=24)
    write_photo_imagefolder(tmp_path / "b", count=8, size=24)
    data = batch.load_dataset(a["images"])
    assert len(data.items) == 8 and len({i.label for i in data.items}) == 4
    for item in data.items:
        assert (tmp_path / "b" / item.key).read_bytes() == Path(item.file).read_bytes()
