"""One strict JSON reader (refvit/strict_json.py) behind config.json, the processor configs, shard indexes and the
safetensors header: the same refusals, with each caller's error class and file, FIFOs refused before any open."""

import os
import struct

import pytest

import refvit
from refvit import strict_json
from refvit.checkpoint.directory import read_index
from refvit.checkpoint.safetensors import read_safetensors
from refvit.config import read_config_json
from refvit.errors import CheckpointError, ConfigError
from refvit.processing.config import read_processor_config

BAD = [(b'{"a": 1, "a": 2}', "duplicate key 'a'"), (b'{"a": {"b": 1, "b": 1}}', "duplicate key 'b'"),
       (b'{"a": NaN}', "non-JSON number 'NaN'"), (b'{"a": -Infinity}', "non-JSON number '-Infinity'"),
       (b'{"a": "\xff"}', "not valid UTF-8 JSON (bad byte at byte offset 7)"), (b'{"a": ', "not valid JSON"),
       (b"[1]", "must be a JSON object at the top level, got list"),
       (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply")]


def safetensors_file(path, header: bytes):
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


# each reader: (error class, write the JSON bytes into tmp_path and read them back)
READERS = {
    "config.json": (ConfigError, lambda d, b: read_config_json(write(d / "config.json", b))),
    "preprocessor_config.json": (ConfigError, lambda d, b: read_processor_config(write(d / "preprocessor_config.json",
                                                                                        b))),
    "index": (CheckpointError, lambda d, b: read_index(str(write(d / "model.safetensors.index.json", b)))),
    "safetensors header": (CheckpointError, lambda d, b: read_safetensors(safetensors_file(d / "m.safetensors", b))),
}


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("data, message", BAD, ids=[m for _, m in BAD])
def test_every_reader_refuses_the_same_documents(tmp_path, reader, data, message):
    error, read = READERS[reader]
    if reader == "safetensors header" and not data.startswith(b"{"):
        message = "must be a JSON object"                   # the header's own first check (safetensors: '{' first)
    if reader == "safetensors header":
        message = message.replace("byte offset 7", "byte offset 15")   # in the file: after the 8-byte length
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        read(tmp_path, data)
    assert type(info.value) is error and str(tmp_path) in str(info.value)


@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json", "model.safetensors.index.json"])
def test_a_fifo_is_refused_before_it_is_opened(tmp_path, name):
    os.mkfifo(tmp_path / name)                              # open() for reading would wait for a writer forever
    with pytest.raises(refvit.RefvitError, match="not a regular file"):
        strict_json.load(tmp_path / name, ConfigError, 100)
    if name == "model.safetensors.index.json":
        with pytest.raises(CheckpointError, match="not a regular file"):
            read_index(str(tmp_path / name))
    elif name == "config.json":
        with pytest.raises(ConfigError, match="not a regular file"):
            read_config_json(tmp_path / name)


def test_size_limit_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="larger than 10 bytes"):
        strict_json.load(write(tmp_path / "big.json", b'{"a": "' + b"x" * 10 + b'"}'), ConfigError, 10)
    with pytest.raises(CheckpointError, match="no such file"):
        strict_json.load(tmp_path / "absent.json", CheckpointError, 10)
    with pytest.raises(ConfigError, match="is a directory"):
        strict_json.load(tmp_path, ConfigError, 10)
    assert strict_json.load(write(tmp_path / "ok.json", b'{"a": [1, 2.5, "x", null]}'), ConfigError, 100) == {
        "a": [1, 2.5, "x", None]}
