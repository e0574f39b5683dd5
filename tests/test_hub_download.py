"""Hub ids downloaded through huggingface_hub from a local Hub (tests/test_hub_support.FakeHub on 127.0.0.1), reached
through HF_ENDPOINT: only the files refvit reads are fetched, into the cache transformers uses; every failure is a
CheckpointError naming the id, the revision and what to do; nothing partial is ever read back as complete.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

import refvit
from refvit.cli import main as cli_main
from refvit.errors import CheckpointError

from conftest import golden_case
from test_hub_support import PREPROCESSOR_TINY, FakeHub, case_files

REPO = "facebook/deit-tiny-test"


def needs_huggingface_hub():
    pytest.importorskip("huggingface_hub", reason="the download path needs huggingface_hub (refvit[hub])")


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """A FakeHub as HF_ENDPOINT, an empty cache, online, no token from the machine running the tests."""
    needs_huggingface_hub()
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: an offline CI environment must not leak into these tests
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for var in ("HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token file either
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        fake.cache = tmp_path / "hub"
        yield fake


def assert_matches_golden(model, case: str):
    with np.load(golden_case(case) / "inputs.npz") as x, np.load(golden_case(case) / "outputs.npz") as y:
        ref = y["float32/logits"]
        got = model(x["pixel_values"]).logits
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), case


def leftovers(cache) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs if f.endswith((".incomplete", ".tmp"))]


def test_download_fetches_only_what_refvit_reads_then_serves_from_the_cache(hub_env, monkeypatch):
    files = case_files("deit_teacher_bin", **{"preprocessor_config.json": PREPROCESSOR_TINY,
                                              "tf_model.h5": b"HDF5 weights refvit does not read",
                                              "README.md": b"# card", ".gitattributes": b"*.bin filter=lfs"})
    sha = hub_env.add(REPO, files)
    model = refvit.DeiTForImageClassificationWithTeacher.from_pretrained(REPO)
    assert_matches_golden(model, "deit_teacher_bin")
    assert hub_env.fetched(REPO) == ["config.json", "preprocessor_config.json", "pytorch_model.bin"]
    storage = hub_env.cache / f"models--{REPO.replace('/', '--')}"
    assert (storage / "refs" / "main").read_text() == sha
    assert model.source == str(storage / "snapshots" / sha)
    assert os.path.islink(storage / "snapshots" / sha / "pytorch_model.bin")  # huggingface_hub's blob + symlink
    assert sorted(os.listdir(storage / ".no_exist" / sha)) == ["model.safetensors", "model.safetensors.index.json",
                                                              "pytorch_model.bin.index.json"]
    # second time: the cache answers, the Hub is not asked anything; offline too
    before = len(hub_env.requests)
    assert refvit.AutoImageProcessor.from_pretrained(REPO).crop_size == {"height": 32, "width": 32}
    refvit.from_pretrained(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_matches_golden(refvit.from_pretrained(REPO, revision=sha), "deit_teacher_bin")
    assert len(hub_env.requests) == before


def test_safetensors_is_preferred_and_revisions_are_pinned(hub_env):
    files = {**case_files("deit_teacher"), "pytorch_model.bin": b"never fetched"}
    hub_env.add(REPO, case_files("deit_teacher_bin"), refs=("main",))
    tagged = hub_env.add(REPO, files, refs=("v1.0",))
    assert_matches_golden(refvit.from_pretrained(REPO, revision="v1.0"), "deit_teacher")
    assert hub_env.fetched(REPO) == ["config.json", "model.safetensors"]
    storage = hub_env.cache / f"models--{REPO.replace('/', '--')}"
    assert (storage / "refs" / "v1.0").read_text() == tagged and not (storage / "refs" / "main").exists()
    # every file was asked for at the listed commit, not at the moving branch name
    assert all(f"/resolve/{tagged}/" in path for method, path, _ in hub_env.requests if "/resolve/" in path)
    assert_matches_golden(refvit.from_pretrained(REPO), "deit_teacher_bin")  # main: another commit, downloaded


def test_sharded_repo_downloads_index_and_every_shard(hub_env, tmp_path):
    from test_hub import sharded

    files = sharded("vit_classification", tmp_path)
    hub_env.add("google/vit-sharded", files)
    assert_matches_golden(refvit.from_pretrained("google/vit-sharded"), "vit_classification")
    assert hub_env.fetched("google/vit-sharded") == ["config.json", "model.safetensors.index.json",
                                                     "model-00001-of-00002.safetensors",
                                                     "model-00002-of-00002.safetensors"]


def test_processor_download_fetches_no_weights(hub_env):
    hub_env.add(REPO, case_files("deit_teacher", **{"preprocessor_config.json": PREPROCESSOR_TINY}))
    assert type(refvit.AutoFeatureExtractor.from_pretrained(REPO)).__name__ == "DeiTImageProcessor"
    assert hub_env.fetched(REPO) == ["config.json", "preprocessor_config.json"]
    refvit.from_pretrained(REPO)  # the weights come later, into the same snapshot
    assert hub_env.fetched(REPO)[2:] == ["model.safetensors"]


def test_tf_and_flax_only_repo_is_a_clear_checkpoint_error(hub_env):
    config = (golden_case("deit_teacher") / "config.json").read_bytes()
    hub_env.add("google/tf-only", {"config.json": config, "tf_model.h5": b"HDF", "flax_model.msgpack": b"\x80"})
    with pytest.raises(CheckpointError) as err:
        refvit.from_pretrained("google/tf-only")
    message = str(err.value)
    for part in ("'google/tf-only'", "'main'", "tf_model.h5", "flax_model.msgpack", "model.safetensors",
                 "pytorch_model.bin", "from_tf"):
        assert part in message
    assert hub_env.fetched("google/tf-only") == []  # nothing downloaded for a repo refvit cannot read


def test_repo_not_found(hub_env):
    with pytest.raises(CheckpointError, match=r"'facebook/no-such-model' \(revision 'main'\).*no repository.*HF_TOKEN"):
        refvit.from_pretrained("facebook/no-such-model")


def test_revision_not_found(hub_env):
    hub_env.add(REPO, case_files("deit_teacher"))
    with pytest.raises(CheckpointError, match=r"'facebook/deit-tiny-test' \(revision 'v9'\).*no revision 'v9'.*branch"):
        refvit.from_pretrained(REPO, revision="v9")


def test_gated_repo_needs_hf_token_which_is_never_shown(hub_env, monkeypatch):
    hub_env.add("meta/gated", case_files("deit_teacher"), token="hf_secret_token_123")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_456")
    with pytest.raises(CheckpointError) as err:
        refvit.from_pretrained("meta/gated")
    message = str(err.value)
    assert "'meta/gated'" in message and "'main'" in message and "gated" in message and "HF_TOKEN" in message
    assert "hf_wrong_token_456" not in message and "hf_secret_token_123" not in message
    assert any(p.startswith("/meta/gated/resolve/") and a == "Bearer hf_wrong_token_456"
               for _, p, a in hub_env.requests)  # HF_TOKEN was sent (by huggingface_hub), never printed
    assert not os.path.exists(hub_env.cache / "models--meta--gated" / "refs" / "main")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_123")
    assert_matches_golden(refvit.from_pretrained("meta/gated"), "deit_teacher")


def test_network_failure(hub_env, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(CheckpointError, match=rf"'{REPO}' \(revision 'main'\).*127\.0\.0\.1:{port}.*failed.*HF_HUB_OFFLINE"):
        refvit.from_pretrained(REPO)


def test_interrupted_download_leaves_nothing_read_as_complete(hub_env):
    """Half the weights arrive: huggingface_hub discards its temporary file, the snapshot has no weights pointer,
    no ref is written, so the next run downloads again (and offline it says it is not cached)."""
    sha = hub_env.add(REPO, case_files("deit_teacher_bin"))
    hub_env.truncate.add("pytorch_model.bin")
    with pytest.raises(CheckpointError, match=rf"'{REPO}' \(revision 'main'\).*failed.*nothing partial"):
        refvit.from_pretrained(REPO)
    storage = hub_env.cache / f"models--{REPO.replace('/', '--')}"
    assert not os.path.exists(storage / "snapshots" / sha / "pytorch_model.bin")
    assert not os.path.exists(storage / "refs" / "main") and leftovers(hub_env.cache) == []
    assert [f for f in os.listdir(storage / "blobs")] == [os.path.basename(os.path.realpath(
        storage / "snapshots" / sha / "config.json"))]  # only config.json's blob, whole
    hub_env.truncate.clear()
    assert_matches_golden(refvit.from_pretrained(REPO), "deit_teacher_bin")
    assert hub_env.fetched(REPO).count("pytorch_model.bin") == 2


def test_cli_takes_hub_ids_and_revision(hub_env, capsys, golden_dir):
    sha = hub_env.add(REPO, case_files("deit_teacher", **{"preprocessor_config.json": PREPROCESSOR_TINY}),
                      refs=("main", "v1"))
    assert cli_main(["inspect", REPO, "--revision", "v1"]) == 0
    out = capsys.readouterr().out
    assert "DeiTForImageClassificationWithTeacher" in out and sha in out
    image = str(golden_dir / "images" / "chelsea_landscape.jpg")
    assert cli_main(["classify", REPO, image, "--top-k", "2", "--revision", sha]) == 0
    assert "class_" in capsys.readouterr().out
    assert cli_main(["classify", REPO, image, "--revision", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("refvit classify: CheckpointError:") and "'nope'" in err and "\n" not in err


def test_timm_repo_processor_fetches_config_json_only(hub_env):
    """A timm hub repo has no preprocessor_config.json: its eval transform comes from config.json's pretrained_cfg,
    fetched alone (the weights come with the model, into the same snapshot)."""
    from conftest import golden_timm_case

    d = golden_timm_case("vit_base_augreg2_reduced")
    repo = "timm/vit-test.augreg"
    hub_env.add(repo, {n: (d / n).read_bytes() for n in ("config.json", "model.safetensors", "README.md")
                       if (d / n).exists()})
    processor = refvit.AutoImageProcessor.from_pretrained(repo)
    assert type(processor).__name__ == "TimmImageProcessor" and processor.crop_pct == 0.9
    assert hub_env.fetched(repo) == ["config.json"]
    model = refvit.from_pretrained(repo)
    assert hub_env.fetched(repo)[1:] == ["model.safetensors"]
    with np.load(d / "inputs.npz") as x, np.load(d / "outputs.npz") as y:
        ref = y["float32/logits"]
        assert np.abs(model(x["pixel_values"]).logits - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
