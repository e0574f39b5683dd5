"""Batch inference: data sources, results in input order, bit-identical results whatever the batch size,
the worker count or a worker killed mid-run (Dask), a killed run resumed, unreadable images reported per file.

Tests that need dask.distributed skip one by one when it is not installed; the LocalClusters here are small (2
single-threaded workers) and the datasets are slices of the digits test split, so each test runs in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from refvit import InputError, load_image
from refvit import batch
from refvit.datasets import digit_image
from refvit.evaluate import write_digits_imagefolder

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "golden" / "models"
FAST = MODELS / "digits-bit"  # the quickest digits model (~2 ms per image)
needs_dask = pytest.mark.skipif(not batch.dask_available(), reason="dask.distributed is not installed "
                                "(pip install \"refvit[dask]\")")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits_imagefolder(tmp_path_factory.mktemp("digits"))


def subset_csv(digits, path: Path, count: int, extra=()) -> Path:
    """A CSV list of the first `count` digit PNGs (path relative to the list, label), plus `extra` rows."""
    keys = batch.load_dataset(digits["images"]).items[:count]
    rel = os.path.relpath(digits["images"], path.parent)
    rows = ["path,label"] + [f"{rel}/{i.key},{i.label}" for i in keys] + list(extra)
    path.write_text("\n".join(rows) + "\n")
    return path


def same(a: dict, b: dict) -> bool:
    """Two records with the same class list and the same logits, bit for bit."""
    return a.get("error") == b.get("error") and a.get("logits_sha256") == b.get("logits_sha256") and \
        a.get("top") == b.get("top") and a.get("top_logits") == b.get("top_logits")


def read_results(path) -> dict:
    lines = Path(path).read_text().splitlines()
    assert json.loads(lines[0])["format"] == batch.RESULTS_FORMAT
    return {r["path"]: r for r in map(json.loads, lines[1:])}


# ---- data sources ----------------------------------------------------------------------------------------------------


def test_png_round_trip_keeps_the_recorded_pixels(digits):
    """The PNG ImageFolder holds exactly the pixels the recorded PyTorch run fed its processor."""
    with np.load(MODELS / "digits_test.npz") as z:
        scans, labels = z["images"], z["labels"]
    for i in (0, 1, 17, 359):
        png = Path(digits["images"]) / str(labels[i]) / f"{i:04d}.png"
        assert np.array_equal(np.asarray(load_image(png)), np.asarray(digit_image(scans[i])))


def test_imagefolder_is_sorted_and_labelled(digits):
    data = batch.load_dataset(digits["images"])
    assert data.kind == "imagefolder" and len(data.items) == 360 and data.labelled
    assert [i.key for i in data.items] == sorted(i.key for i in data.items)
    assert all(i.label == i.key.split("/")[0] for i in data.items)
    assert [i.index for i in data.items] == list(range(360))


def test_list_files(tmp_path, digits):
    csv = subset_csv(digits, tmp_path / "l.csv", 3)
    a = batch.load_dataset(csv)
    assert a.kind == "list" and len(a.items) == 3 and all(os.path.isfile(i.file) for i in a.items)
    (tmp_path / "h.csv").write_text("".join(f"{i.file}\n" for i in a.items))  # headerless, absolute, no label
    assert [i.label for i in batch.load_dataset(tmp_path / "h.csv").items] == [None] * 3
    (tmp_path / "l.jsonl").write_text("".join(json.dumps({"path": i.file, "label": i.label}) + "\n" for i in a.items))
    assert [(i.file, i.label) for i in batch.load_dataset(tmp_path / "l.jsonl").items] == \
        [(i.file, i.label) for i in a.items]


@pytest.mark.parametrize("name, text, what", [
    ("d.csv", "path\na.png\na.png\n", "listed twice"),
    ("e.jsonl", "{\"label\": 3}\n", "\"path\""),
    ("f.jsonl", "not json\n", "not JSON"),
    ("g.txt", "a.png\n", ".csv or .jsonl"),
    ("h.csv", "path,label\n", "no images"),
])
def test_bad_list_files(tmp_path, name, text, what):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=what):
        batch.load_dataset(tmp_path / name)


def test_missing_or_empty_data(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        batch.load_dataset(tmp_path / "nope")
    with pytest.raises(InputError, match="no images found"):
        batch.load_dataset(tmp_path)


# ---- in-process ------------------------------------------------------------------------------------------------------


def test_predict_yields_input_order_and_batch_size_does_not_change_bits(digits):
    data = batch.load_dataset(digits["images"])
    paths = [i.file for i in data.items[:40]][::-1]  # reversed: the output follows the input, not the folder
    runs = {b: list(batch.predict(FAST, paths, batch_size=b)) for b in (1, 7, 16)}
    for b, records in runs.items():
        assert [r["path"] for r in records] == [Path(p).as_posix() for p in paths], b
        assert [r["index"] for r in records] == list(range(40))
    for r1, r7, r16 in zip(*runs.values()):
        assert same(r1, r7) and same(r1, r16)
        assert r1["logits"].dtype == np.float32 and r1["top"][0] == int(np.argmax(r1["logits"]))
        np.testing.assert_array_equal(r1["logits"], r16["logits"])


def test_predict_takes_a_loaded_model(digits):
    import refvit

    paths = [i.file for i in batch.load_dataset(digits["images"]).items[:5]]
    model = refvit.from_pretrained(FAST)
    for a, b in zip(batch.predict(model, paths), batch.predict(FAST, paths)):
        assert same(a, b)


def test_unreadable_images_are_reported_per_file(tmp_path, digits):
    good = batch.load_dataset(digits["images"]).items[:3]
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in good:
        (folder / Path(i.key).name).write_bytes(Path(i.file).read_bytes())
    png = Path(good[0].file).read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "text.jpg").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    records = {r["path"]: r for r in batch.predict(FAST, batch.load_dataset(folder), batch_size=2)}
    assert len(records) == 6
    for bad in ("truncated.png", "text.jpg", "empty.png"):
        assert records[bad]["error"].startswith("ImageError") and bad in records[bad]["error"], records[bad]
        assert "top" not in records[bad]
    reference = {r["path"]: r for r in batch.predict(FAST, [i.file for i in good])}
    for i in good:
        assert same(records[Path(i.key).name], reference[Path(i.file).as_posix()])


# ---- the results file: append per batch, resume ---------------------------------------------------------------------


def test_resume_after_a_killed_run(tmp_path, digits):
    """A CLI run killed (SIGKILL) mid-way, its last line torn, resumes to exactly the uninterrupted run's results,
    computing only the missing images."""
    data = subset_csv(digits, tmp_path / "d.csv", 120)
    model = MODELS / "digits-vit"  # slow enough (~20-50 ms per image) to be killed part-way
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    out = tmp_path / "killed.jsonl"
    cmd = [sys.executable, "-m", "refvit.cli", "classify", str(model), str(data), "--batch-size", "2", "--out"]
    child = subprocess.Popen(cmd + [str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if out.exists() and len(out.read_bytes().splitlines()) >= 5:  # header + at least 2 batches
            break
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    lines = out.read_bytes().splitlines()
    assert 5 <= len(lines) < 121, "the run was not killed part-way"
    with open(out, "ab") as f:  # a write torn by the kill: half a record, no newline
        f.write(b'{"index": 7, "path": "images/7/00')
    finished = len(lines) - 1
    resumed = subprocess.run(cmd + [str(out), "--resume", "--json"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed"] == finished and summary["computed"] == 120 - finished
    a, b = read_results(out), {r["path"]: r for r in batch.predict(model, batch.load_dataset(data))}
    assert len(a) == len(b) == 120 and all(same(a[k], b[k]) for k in b)


def test_results_file_refuses_overwrite_and_other_settings(tmp_path, digits):
    paths = [i.file for i in batch.load_dataset(digits["images"]).items[:4]]
    out = tmp_path / "r.jsonl"
    spec = batch.ModelSpec(str(FAST))
    with batch.ResultsFile(out, {"model": "a"}) as results:
        batch.run_dataset(spec, batch.from_paths(paths), batch_size=3, results=results)
    assert len(read_results(out)) == 4
    with pytest.raises(InputError, match="already exists.*--resume"):
        batch.ResultsFile(out, {"model": "a"})
    with pytest.raises(InputError, match="other settings \\(model"):
        batch.ResultsFile(out, {"model": "b"}, resume=True)
    with batch.ResultsFile(out, {"model": "a"}, resume=True) as results:  # nothing left to do
        assert len(results.done) == 4
        done = batch.run_dataset(spec, batch.from_paths(paths), results=results)
    assert len(done) == 4 and len(read_results(out)) == 4
    (tmp_path / "x.jsonl").write_text("hello\n")
    with pytest.raises(InputError, match="not a refvit results file"):
        batch.ResultsFile(tmp_path / "x.jsonl", {}, resume=True)


def test_classify_cli_batch_mode(tmp_path, digits, capsys):
    from refvit.cli import main

    data = subset_csv(digits, tmp_path / "d.csv", 6, extra=["missing.png,3"])
    assert main(["classify", str(FAST), str(data), "--top-k", "3"]) == 0  # no --out: JSONL records on stdout
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 7 and records[-1]["path"] == "missing.png" and "no such image file" in records[-1]["error"]
    assert all(len(r["top"]) == len(r["top_labels"]) == 3 for r in records[:6])
    assert main(["classify", str(FAST), str(data), "--out", str(tmp_path / "p.jsonl"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 7 and summary["unreadable"][0]["path"] == "missing.png"
    assert len(read_results(tmp_path / "p.jsonl")) == 7
    assert main(["classify", str(FAST), str(Path(digits["images"]) / "1" / "0000.png"), "--json"]) == 0  # today's
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["label"] == "1"


# ---- Dask ---------------------------------------------------------------------------------------------------------


@needs_dask
def test_local_cluster_of_two_workers_gives_the_in_process_bits(tmp_path, digits):
    data = batch.load_dataset(subset_csv(digits, tmp_path / "d.csv", 60, extra=["missing.png,3"]))
    local = list(batch.predict(FAST, data, batch_size=16))
    dask = list(batch.predict(FAST, data, batch_size=5, workers=2))
    assert [r["path"] for r in dask] == [i.key for i in data.items]
    assert all(same(a, b) for a, b in zip(local, dask))
    assert "no such image file" in dask[-1]["error"]


@needs_dask
def test_a_worker_killed_mid_run_loses_nothing(tmp_path, digits):
    """SIGKILL one of two worker processes after the first results: Dask re-runs its tasks, the results are complete
    and identical to the in-process run."""
    from distributed import Client, LocalCluster

    data = batch.load_dataset(subset_csv(digits, tmp_path / "d.csv", 120))
    spec = batch.ModelSpec(str(MODELS / "digits-vit"))
    local = list(batch.predict(spec.path, data))
    batch.warm_cache_in_child(spec, 1)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env=batch.worker_environment(1)) as cluster, Client(cluster) as client:
        import refvit
        assert set(client.run(lambda: __import__("refvit").__file__).values()) == {refvit.__file__}
        pids = client.run(os.getpid)
        records, killed, at = [], None, None
        for record in batch.predict(spec.path, data, batch_size=4, client=client):
            records.append(record)
            if killed is None:
                killed, at = sorted(pids.values())[0], len(records)
                os.kill(killed, signal.SIGKILL)
        assert at < len(data.items)
        client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
        assert killed not in client.run(os.getpid).values()
    assert [r["path"] for r in records] == [i.key for i in data.items]
    assert all(same(a, b) for a, b in zip(local, records))


def test_threads_per_worker_never_oversubscribes():
    assert batch.threads_per_worker(2, cores=2) == 1 and batch.threads_per_worker(1, cores=16) == 16
    assert batch.threads_per_worker(3, cores=16) == 5 and batch.threads_per_worker(8, cores=2) == 1
    env = batch.worker_environment(3)
    assert env["NUMBA_NUM_THREADS"] == "3" and env["OPENBLAS_NUM_THREADS"] == "1"


def test_without_dask_workers_run_in_process(monkeypatch, digits, capsys):
    paths = [i.file for i in batch.load_dataset(digits["images"]).items[:6]]
    expected = list(batch.predict(FAST, paths))
    monkeypatch.setattr(batch, "dask_available", lambda: False)
    got = list(batch.predict(FAST, paths, workers=2))
    assert "running in-process" in capsys.readouterr().err
    assert all(same(a, b) for a, b in zip(expected, got)) and len(got) == 6
    with pytest.raises(InputError, match="--scheduler needs Dask"):
        list(batch.predict(FAST, paths, scheduler="tcp://127.0.0.1:1"))
