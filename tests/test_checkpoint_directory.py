"""refvit.checkpoint.directory: which file a save_pretrained directory is read from, and shard indexes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest_checkpoint_helpers import write_torch_state_dict
from refvit.checkpoint import load_state_dict, write_safetensors
from refvit.errors import CheckpointError

INDEX = "model.safetensors.index.json"


def tensors(names, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((2, 3)).astype(np.float32) for name in names}


def write_sharded(directory, shards: dict[str, dict[str, np.ndarray]], weight_map=None, index_name=INDEX):
    """Write each shard and an index mapping its tensors to it (or `weight_map` if given)."""
    writer = write_torch_state_dict if index_name.startswith("pytorch") else write_safetensors
    for shard, content in shards.items():
        writer(directory / shard, content)
    if weight_map is None:
        weight_map = {name: shard for shard, content in shards.items() for name in content}
    (directory / index_name).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


def assert_error(directory, *fragments):
    with pytest.raises(CheckpointError) as info:
        load_state_dict(directory)
    message = str(info.value)
    assert str(directory) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ---------------------------------------------------------------------------------------- choosing


def test_single_safetensors(tmp_path):
    expected = tensors(["a.weight", "a.bias"])
    write_safetensors(tmp_path / "model.safetensors", expected)
    got, what = load_state_dict(tmp_path)
    assert what == "model.safetensors"
    assert_same(got, expected)


def test_single_pytorch_bin(tmp_path):
    expected = tensors(["w", "b"])
    write_torch_state_dict(tmp_path / "pytorch_model.bin", expected)
    got, what = load_state_dict(str(tmp_path))
    assert what == "pytorch_model.bin"
    assert_same(got, expected)


def test_safetensors_preferred_over_everything(tmp_path):
    write_safetensors(tmp_path / "model.safetensors", {"from": np.zeros(1, np.float32)})
    write_sharded(tmp_path, {"s1.safetensors": {"index": np.zeros(1, np.float32)}})
    write_torch_state_dict(tmp_path / "pytorch_model.bin", {"bin": np.zeros(1, np.float32)})
    got, what = load_state_dict(tmp_path)
    assert what == "model.safetensors" and list(got) == ["from"]


def test_safetensors_index_preferred_over_bin(tmp_path):
    write_sharded(tmp_path, {"s1.safetensors": {"index": np.zeros(1, np.float32)}})
    write_torch_state_dict(tmp_path / "pytorch_model.bin", {"bin": np.zeros(1, np.float32)})
    got, what = load_state_dict(tmp_path)
    assert what == "model.safetensors.index.json (1 shards)" and list(got) == ["index"]


def test_broken_preferred_file_is_not_skipped(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    write_torch_state_dict(tmp_path / "pytorch_model.bin", {"bin": np.zeros(1, np.float32)})
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_state_dict(tmp_path)


def test_sharded_safetensors_by_hand(tmp_path):
    a, b = tensors(["x.0", "x.1"], seed=1), tensors(["y.0"], seed=2)
    write_sharded(tmp_path, {"model-00001-of-00002.safetensors": a, "model-00002-of-00002.safetensors": b})
    got, what = load_state_dict(tmp_path)
    assert what == "model.safetensors.index.json (2 shards)"
    assert_same(got, {**a, **b})


def test_sharded_pytorch_bin_by_hand(tmp_path):
    a, b = tensors(["x.0"], seed=1), tensors(["y.0", "y.1"], seed=2)
    write_sharded(tmp_path, {"pytorch_model-00001-of-00002.bin": a, "pytorch_model-00002-of-00002.bin": b},
                  index_name="pytorch_model.bin.index.json")
    got, what = load_state_dict(tmp_path)
    assert what == "pytorch_model.bin.index.json (2 shards)"
    assert_same(got, {**a, **b})


@pytest.mark.needs_framework
def test_transformers_save_pretrained_sharded(tmp_path):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8, num_labels=3)
    model = transformers.ViTForImageClassification(config)
    model.save_pretrained(tmp_path / "single")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    single, what_single = load_state_dict(tmp_path / "single")
    sharded, what_sharded = load_state_dict(tmp_path / "sharded")
    assert what_single == "model.safetensors"
    n_shards = len(list((tmp_path / "sharded").glob("model-*.safetensors")))
    assert n_shards > 1 and what_sharded == f"model.safetensors.index.json ({n_shards} shards)"
    assert_same(sharded, single)
    assert "vit.encoder.layer.1.attention.attention.query.weight" in sharded  # classic checkpoint names
    assert sharded["classifier.weight"].shape == (3, 32)


# ---------------------------------------------------------------------------------------- bad input


def test_missing_directory(tmp_path):
    assert_error(tmp_path / "nope", "does not exist")


def test_file_instead_of_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    assert_error(tmp_path / "f", "not a directory")


def test_empty_directory_lists_what_it_looked_for(tmp_path):
    assert_error(tmp_path, "no checkpoint file", "model.safetensors", INDEX, "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


@pytest.mark.parametrize("content", ["{", "[]", '"x"', "\xff", '{"weight_map": {"a": "s"}, "x": NaN}'])
def test_index_not_a_json_object(tmp_path, content):
    (tmp_path / INDEX).write_bytes(content.encode("latin-1"))
    assert_error(tmp_path, INDEX)


@pytest.mark.parametrize("index", [{}, {"weight_map": []}, {"weight_map": {}}, {"weight_map": "a"}])
def test_index_without_weight_map(tmp_path, index):
    (tmp_path / INDEX).write_text(json.dumps(index))
    assert_error(tmp_path, INDEX, "'weight_map'")


@pytest.mark.parametrize("shard", [1, None, ["s"]])
def test_index_value_not_a_file_name(tmp_path, shard):
    (tmp_path / INDEX).write_text(json.dumps({"weight_map": {"w": shard}}))
    assert_error(tmp_path, "tensor 'w' maps to")


def test_index_lists_a_tensor_twice(tmp_path):
    write_safetensors(tmp_path / "s1.safetensors", {"w": np.zeros(1, np.float32)})
    (tmp_path / INDEX).write_text('{"weight_map": {"w": "s1.safetensors", "w": "s1.safetensors"}}')
    assert_error(tmp_path, "duplicate key 'w'")


@pytest.mark.parametrize(
    "shard", ["../model.safetensors", "sub/s.safetensors", "/etc/passwd", "..\\s.safetensors", "..", ".", "",
              "C:s.safetensors", "s\0.safetensors"],
)
def test_shard_name_not_plain(tmp_path, shard):
    (tmp_path / INDEX).write_text(json.dumps({"weight_map": {"w": shard}}))
    assert_error(tmp_path, f"shard file name {shard!r}", "not a plain file name")


def test_listed_shard_missing(tmp_path):
    write_sharded(tmp_path, {"s1.safetensors": tensors(["a"])},
                  weight_map={"a": "s1.safetensors", "b": "s2.safetensors"})
    assert_error(tmp_path, "shard 's2.safetensors'", "does not exist")


def test_shard_lacks_a_tensor(tmp_path):
    write_sharded(tmp_path, {"s1.safetensors": tensors(["a"])},
                  weight_map={"a": "s1.safetensors", "b": "s1.safetensors"})
    assert_error(tmp_path, "shard 's1.safetensors' lacks", "'b'")


def test_shard_holds_an_unlisted_tensor(tmp_path):
    write_sharded(tmp_path, {"s1.safetensors": tensors(["a", "extra"])}, weight_map={"a": "s1.safetensors"})
    assert_error(tmp_path, "shard 's1.safetensors' holds tensors the index does not assign", "'extra'")


def test_tensor_in_two_shards(tmp_path):
    write_sharded(tmp_path, {"s1.safetensors": tensors(["a", "b"]), "s2.safetensors": tensors(["b", "c"])},
                  weight_map={"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"})
    message = assert_error(tmp_path, "tensor 'b' appears in both 's1.safetensors' and 's2.safetensors'")
    assert "'s2.safetensors' holds tensors the index does not assign to it: 'b'" in message  # all problems


def test_tensor_assigned_to_the_wrong_shard(tmp_path):
    write_sharded(tmp_path, {"s1.safetensors": tensors(["a"]), "s2.safetensors": tensors(["b"])},
                  weight_map={"a": "s2.safetensors", "b": "s1.safetensors"})
    message = assert_error(tmp_path, "index and shards disagree")
    assert message.count("lacks") == 2 and message.count("does not assign") == 2


def test_bad_shard_file_names_the_shard(tmp_path):
    write_sharded(tmp_path, {"s1.safetensors": tensors(["a"])})
    (tmp_path / "s1.safetensors").write_bytes(b"\x00" * 4)
    assert_error(tmp_path, "s1.safetensors")


def test_sharded_bin_with_bad_shard(tmp_path):
    write_sharded(tmp_path, {"p1.bin": tensors(["a"])}, index_name="pytorch_model.bin.index.json")
    (tmp_path / "p1.bin").write_bytes(b"not a zip")
    assert_error(tmp_path, "p1.bin", "not a zip archive")
