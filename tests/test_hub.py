"""Hub ids through the local Hugging Face cache (refvit.hub): no network, no huggingface_hub needed.

Each test builds a cache in a temporary directory exactly as huggingface_hub lays it out (refs, snapshots of symlinks,
blobs, .no_exist markers) from golden cases, points HF_HUB_CACHE at it, and loads by id / revision. The loaded
models must reproduce the golden case's framework outputs, so the right snapshot (commit) was read.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

import refvit
from refvit import hub
from refvit.checkpoint import read_safetensors, write_safetensors
from refvit.errors import CheckpointError, ConfigError

from conftest import golden_case
from test_hub_support import PREPROCESSOR_TINY, case_files, write_snapshot

REPO = "facebook/deit-tiny-test"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty HF cache (HF_HUB_CACHE), offline, with no token or endpoint from the machine running the tests."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT", "HF_TOKEN", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a cache hit must never need the network
    return tmp_path / "hub"


def golden_logits(case: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(golden_case(case) / "inputs.npz") as x, np.load(golden_case(case) / "outputs.npz") as y:
        return x["pixel_values"], y["float32/logits"]


def assert_matches_golden(model, case: str):
    x, ref = golden_logits(case)
    got = model(x).logits
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), case


def test_id_branch_tag_and_sha_each_load_their_commit(cache):
    """refs/main -> the .bin commit, refs/v1.0 (a tag) -> the safetensors commit; a sha names a snapshot directly."""
    old = write_snapshot(cache, REPO, case_files("deit_teacher"), refs=("v1.0",))
    new = write_snapshot(cache, REPO, case_files("deit_teacher_bin"), refs=("main",))
    assert old != new

    by_id = refvit.from_pretrained(REPO)
    assert by_id.source == str(cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / new)
    assert_matches_golden(by_id, "deit_teacher_bin")
    assert_matches_golden(refvit.from_pretrained(REPO, revision="main"), "deit_teacher_bin")
    assert_matches_golden(refvit.from_pretrained(REPO, revision="v1.0"), "deit_teacher")
    assert_matches_golden(refvit.from_pretrained(REPO, revision=old), "deit_teacher")
    assert_matches_golden(refvit.DeiTForImageClassificationWithTeacher.from_pretrained(REPO, revision=old),
                          "deit_teacher")
    assert_matches_golden(refvit.AutoModelForImageClassification.from_pretrained(REPO, revision="v1.0"), "deit_teacher")
    base = refvit.AutoModel.from_pretrained(REPO)
    assert isinstance(base, refvit.DeiTModel)


def test_blobs_are_symlinked_like_huggingface_hub(cache, monkeypatch):
    sha = write_snapshot(cache, REPO, case_files("deit_teacher"))
    pointer = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / sha / "model.safetensors"
    assert pointer.is_symlink() and os.readlink(pointer).startswith("../../blobs/")
    monkeypatch.delenv("HF_HUB_OFFLINE")  # huggingface_hub reads it once, at import: keep later download tests online
    hf = pytest.importorskip("huggingface_hub")  # the same tree, read by huggingface_hub's own cache reader
    assert hf.try_to_load_from_cache(REPO, "model.safetensors", cache_dir=cache) == str(pointer)


def test_processor_by_id_and_revision(cache, golden_dir):
    write_snapshot(cache, REPO, case_files("deit_teacher", **{"preprocessor_config.json": PREPROCESSOR_TINY}),
                   refs=("main", "v2"))
    processor = refvit.AutoFeatureExtractor.from_pretrained(REPO)
    assert type(processor).__name__ == "DeiTImageProcessor" and processor.crop_size == {"height": 32, "width": 32}
    assert refvit.AutoImageProcessor.from_pretrained(REPO, revision="v2").to_dict() == processor.to_dict()
    image = refvit.load_image(golden_dir / "images" / "chelsea_landscape.jpg")
    out = refvit.from_pretrained(REPO)(**processor(images=image, return_tensors="np"))
    assert out.logits.shape == (1, 5)


def test_processor_without_model_weights_in_cache(cache):
    """A processor needs only its JSON: a snapshot holding config + preprocessor config (no weights) serves it."""
    files = case_files("deit_teacher", **{"preprocessor_config.json": PREPROCESSOR_TINY})
    del files["model.safetensors"]
    write_snapshot(cache, REPO, files)
    assert refvit.AutoImageProcessor.from_pretrained(REPO).size == {"height": 36, "width": 36}
    with pytest.raises(CheckpointError, match=r"(?s)facebook/deit-tiny-test.*'main'.*no weights file downloaded.*"
                                              r"HF_HUB_OFFLINE"):
        refvit.from_pretrained(REPO)


def sharded(case: str, tmp_path) -> dict[str, bytes]:
    """The case's safetensors split in two shards + index, as save_pretrained(max_shard_size=...) writes them."""
    tensors = read_safetensors(golden_case(case) / "model.safetensors")
    names = sorted(tensors)
    out, weight_map = {"config.json": (golden_case(case) / "config.json").read_bytes()}, {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        write_safetensors(tmp_path / shard, {n: np.asarray(tensors[n]) for n in part})
        out[shard] = (tmp_path / shard).read_bytes()
        weight_map.update({n: shard for n in part})
    out["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return out


def test_sharded_snapshot_loads_and_a_missing_shard_makes_it_incomplete(cache, tmp_path):
    files = sharded("vit_classification", tmp_path)
    write_snapshot(cache, "google/vit-sharded", files, refs=("main",))
    assert_matches_golden(refvit.from_pretrained("google/vit-sharded"), "vit_classification")
    # an interrupted download: the index and one shard are there, the other shard's pointer is not
    del files["model-00002-of-00002.safetensors"]
    write_snapshot(cache, "google/vit-partial", files, refs=("main",))
    with pytest.raises(CheckpointError, match=r"(?s)google/vit-partial.*2 shards, 1 not downloaded.*HF_HUB_OFFLINE"):
        refvit.from_pretrained("google/vit-partial")


def test_missing_blob_is_a_missing_file(cache):
    """A snapshot symlink whose blob is gone (a cleaned cache) does not count as present."""
    sha = write_snapshot(cache, REPO, case_files("deit_teacher"))
    storage = cache / f"models--{REPO.replace('/', '--')}"
    os.unlink(os.path.realpath(storage / "snapshots" / sha / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no weights file downloaded"):
        refvit.from_pretrained(REPO)


def test_offline_and_not_cached(cache):
    with pytest.raises(CheckpointError) as err:
        refvit.from_pretrained("facebook/deit-small-distilled-patch16-224", revision="v1")
    message = str(err.value)
    for part in ("'facebook/deit-small-distilled-patch16-224'", "'v1'", str(cache), "no refs/v1", "HF_HUB_OFFLINE"):
        assert part in message
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        refvit.AutoImageProcessor.from_pretrained("facebook/deit-small-distilled-patch16-224")


def test_not_cached_and_huggingface_hub_not_installed(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` raises ImportError
    with pytest.raises(CheckpointError) as err:
        refvit.from_pretrained("facebook/deit-small-distilled-patch16-224")
    message = str(err.value)
    for part in ("'facebook/deit-small-distilled-patch16-224'", "'main'", "huggingface_hub", 'pip install "refvit[hub]"'):
        assert part in message
    # ... and a cache hit needs no huggingface_hub at all
    write_snapshot(cache, REPO, case_files("deit_teacher"))
    assert_matches_golden(refvit.from_pretrained(REPO), "deit_teacher")


def test_no_exist_markers_answer_without_network(cache):
    """.no_exist/<sha>/<file>: the cache knows the repo lacks the file; refvit says so instead of retrying."""
    tf_only = {"config.json": (golden_case("deit_teacher") / "config.json").read_bytes(), "tf_model.h5": b"HDF"}
    write_snapshot(cache, "facebook/tf-only", tf_only, no_exist=hub.WEIGHTS + ("preprocessor_config.json",))
    with pytest.raises(CheckpointError, match=r"(?s)facebook/tf-only.*no weights refvit reads.*tf_model\.h5.*from_tf"):
        refvit.from_pretrained("facebook/tf-only")
    with pytest.raises(ConfigError, match=r"facebook/tf-only.*no preprocessor_config\.json"):
        refvit.AutoImageProcessor.from_pretrained("facebook/tf-only")


def test_local_paths_and_non_ids_are_left_alone(cache, tmp_path, monkeypatch):
    local = tmp_path / "org" / "name"
    local.parent.mkdir()
    shutil.copytree(golden_case("deit_teacher"), local)
    monkeypatch.chdir(tmp_path)
    # "org/name" exists as a directory: it is the directory, not the hub id (transformers' rule); revision is ignored
    assert_matches_golden(refvit.from_pretrained("org/name", revision="no-such-branch"), "deit_teacher")
    for not_an_id in ("./missing/dir", "/abs/missing", "a/b/c", "nope/..", "org--x/name"):
        assert hub.resolve_model_dir(not_an_id) == not_an_id
        with pytest.raises(CheckpointError, match="not a directory"):
            refvit.from_pretrained(not_an_id)


@pytest.mark.parametrize("revision", ["../../etc", "/abs", "", "a\\b", " main", 3])
def test_bad_revisions_are_refused(cache, revision):
    with pytest.raises(CheckpointError, match="revision"):
        refvit.from_pretrained(REPO, revision=revision)


def test_cache_location_follows_huggingface_hub(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.hub_cache_dir() == str(tmp_path / ".cache" / "huggingface" / "hub")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.hub_cache_dir() == str(tmp_path / "xdg" / "huggingface" / "hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.hub_cache_dir() == str(tmp_path / "home" / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "explicit"))
    assert hub.hub_cache_dir() == str(tmp_path / "explicit")

