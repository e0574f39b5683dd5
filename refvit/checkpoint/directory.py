"""Find and read the weights of a directory written by transformers' `save_pretrained`.

Look-up order (as `transformers.modeling_utils` resolves checkpoint files):

    model.safetensors                 single safetensors file (what transformers 5 writes)
    model.safetensors.index.json      sharded safetensors: {"metadata": {...}, "weight_map": {tensor: shard}}
    pytorch_model.bin                 single torch.save zip archive
    pytorch_model.bin.index.json      sharded pytorch_model-0000k-of-0000n.bin files

A sharded index is checked against its shards: every shard is a plain file name inside the directory,
every listed shard exists, and each shard holds exactly the tensors the index assigns to it.
"""

from __future__ import annotations

import os

import numpy as np

from refvit.checkpoint.safetensors import read_safetensors
from refvit.checkpoint.torch_bin import read_torch_bin
from refvit import strict_json
from refvit.errors import CheckpointError, name_problems

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
MAX_INDEX_BYTES = 64 * 2**20

# (file name, reader, is_index) in order of preference
_CANDIDATES = (
    (SAFETENSORS_FILE, read_safetensors, False),
    (SAFETENSORS_INDEX, read_safetensors, True),
    (TORCH_FILE, read_torch_bin, False),
    (TORCH_INDEX, read_torch_bin, True),
)


def load_state_dict(directory) -> tuple[dict[str, np.ndarray], str]:
    """Read all tensors of a `save_pretrained` directory; return (tensors, what was read).

    The description is the file name read, e.g. "model.safetensors" or
    "model.safetensors.index.json (2 shards)".
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: checkpoint directory does not exist or is not a directory")
    for name, reader, is_index in _CANDIDATES:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        if not is_index:
            return reader(path), name
        tensors, n_shards = _load_sharded(directory, path, reader)
        return tensors, f"{name} ({n_shards} shards)"
    looked_for = ", ".join(name for name, _, _ in _CANDIDATES)
    raise CheckpointError(f"{directory}: no checkpoint file found (looked for {looked_for})")


def _load_sharded(directory: str, index_path: str, reader) -> tuple[dict[str, np.ndarray], int]:
    """Read every shard of an index and check that shards and index agree exactly."""
    weight_map = read_index(index_path)
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(tensor)
    shards = {}
    for shard in sorted(by_shard):
        shard_path = os.path.join(directory, shard)
        if not os.path.isfile(shard_path):
            raise CheckpointError(f"{index_path}: shard {shard!r} listed in the index does not exist")
        shards[shard] = reader(shard_path)
    _check_shards(index_path, by_shard, shards)
    tensors = {}
    for shard in sorted(shards):
        tensors.update(shards[shard])
    return tensors, len(shards)


def read_index(index_path: str) -> dict[str, str]:
    """Parse and validate a shard index; return its weight_map (tensor name -> shard file name)."""
    index = strict_json.load(index_path, CheckpointError, MAX_INDEX_BYTES, "shard index (*.index.json)")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: 'weight_map' must be a non-empty object of tensor -> shard file")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index_path}: tensor {tensor!r} maps to {shard!r}, not a file name")
        _check_plain_filename(shard, index_path)
    return weight_map


def _check_plain_filename(name: str, index_path: str) -> None:
    """A shard must be a file directly inside the checkpoint directory: no separators, no '..'."""
    if not name or name == "." or any(bad in name for bad in ("/", "\\", "\0", ":", "..")):
        raise CheckpointError(
            f"{index_path}: shard file name {name!r} is not a plain file name inside the directory"
        )


def _check_shards(index_path: str, by_shard: dict[str, set[str]], shards: dict[str, dict]) -> None:
    """Every tensor in exactly one shard, and each shard holding exactly what the index says."""
    problems = []
    owner: dict[str, str] = {}
    for shard in sorted(shards):
        for tensor in shards[shard]:
            if tensor in owner:
                problems.append(f"tensor {tensor!r} appears in both {owner[tensor]!r} and {shard!r}")
            else:
                owner[tensor] = shard
    for shard in sorted(shards):
        present, expected = set(shards[shard]), by_shard[shard]
        problems += name_problems(
            (f"shard {shard!r} lacks tensors the index assigns to it", [repr(n) for n in sorted(expected - present)]),
            (f"shard {shard!r} holds tensors the index does not assign to it",
             [repr(n) for n in sorted(present - expected)]))
    if problems:
        raise CheckpointError(f"{index_path}: index and shards disagree:\n  " + "\n  ".join(problems))
