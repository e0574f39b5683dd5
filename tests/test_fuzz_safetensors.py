"""Fuzzing `.safetensors` reading: mutated headers and mutated byte streams.

Property: `read_safetensors` either returns exactly what the reference `safetensors` library reads from the same
bytes, or raises `CheckpointError` naming the file; never another exception, never a hang.
refvit is stricter than the library in places (duplicate JSON keys, NaN tokens, unknown entry fields), so a refusal
is always allowed; an acceptance must agree with the library tensor for tensor.
"""

from __future__ import annotations

import itertools
import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import safetensors.numpy as safetensors_numpy  # the reference reader (the `test` extra): the oracle
from conftest_checkpoint_helpers import safetensors_bytes
from refvit.checkpoint import read_safetensors, read_safetensors_metadata, write_safetensors
from refvit.checkpoint.safetensors import DTYPES
from test_fuzz_support import fuzz_settings, outcome

COUNTER = itertools.count()

BASE = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b": np.array([-1, 2, 3], dtype=np.int16),
    "c": np.array(7, dtype=np.uint8),
    "d": np.zeros((0, 4), dtype=np.float64),
}


def base_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("st") / "base.safetensors"
    write_safetensors(path, BASE, metadata={"format": "pt"})
    return path.read_bytes()


def split(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


# ------------------------------------------------------------------------------------------------ strategies

interesting_ints = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 255, 2**31 - 1, 2**31, 2**32, 2**63 - 1,
                                    2**63, 2**64, 2**64 + 1, 10**30, -1, -2, -(2**63)])
json_values = st.recursive(
    st.none() | st.booleans() | interesting_ints | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8) | st.sampled_from(list(DTYPES) + ["F8_E4M3", "C64", "f32", "", "BF16 "]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
names = st.sampled_from(["a", "b", "c", "d", "__metadata__", "", "e", "a\x00", "ä"]) | st.text(max_size=6)
fields = st.sampled_from(["dtype", "shape", "data_offsets", "extra"])


def mutate_header(header: dict, data: st.DataObject) -> dict:
    header = json.loads(json.dumps(header))  # deep copy
    tensors = [k for k in header if k != "__metadata__"]
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        kind = data.draw(st.sampled_from(["field", "dim", "offset", "dtype", "drop", "drop_field", "rename",
                                          "metadata", "swap_offsets", "add"]), label="kind")
        name = data.draw(st.sampled_from(tensors), label="tensor") if tensors else None
        entry = header.get(name) if name is not None else None
        if kind == "field" and isinstance(entry, dict):
            entry[data.draw(fields)] = data.draw(json_values)
        elif kind == "dim" and isinstance(entry, dict) and isinstance(entry.get("shape"), list):
            shape = entry["shape"]
            if shape and data.draw(st.booleans()):
                shape[data.draw(st.integers(0, len(shape) - 1))] = data.draw(interesting_ints)
            else:
                shape.insert(data.draw(st.integers(0, len(shape))), data.draw(interesting_ints))
        elif kind == "offset" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list):
            offsets = entry["data_offsets"]
            if offsets:
                offsets[data.draw(st.integers(0, len(offsets) - 1))] = data.draw(interesting_ints)
        elif kind == "swap_offsets" and len(tensors) >= 2:
            other = data.draw(st.sampled_from(tensors))
            if isinstance(entry, dict) and isinstance(header.get(other), dict):
                entry["data_offsets"], header[other]["data_offsets"] = (header[other].get("data_offsets"),
                                                                        entry.get("data_offsets"))
        elif kind == "dtype" and isinstance(entry, dict):
            entry["dtype"] = data.draw(st.sampled_from(list(DTYPES) + ["F8_E5M2", "Q4", "float32"]))
        elif kind == "drop" and name is not None:
            header.pop(name)
            tensors.remove(name)
        elif kind == "drop_field" and isinstance(entry, dict) and entry:
            entry.pop(data.draw(st.sampled_from(sorted(entry))))
        elif kind == "rename" and name is not None:
            new = data.draw(names)
            header[new] = header.pop(name)
            tensors = [k for k in header if k != "__metadata__"]
        elif kind == "metadata":
            header["__metadata__"] = data.draw(json_values)
        elif kind == "add":
            header[data.draw(names)] = data.draw(json_values)
            tensors = [k for k in header if k != "__metadata__"]
    return header


def check_read(directory, raw: bytes) -> None:
    """The property: the library's tensors exactly, or a CheckpointError naming the file."""
    path = directory / f"{next(COUNTER)}.safetensors"  # a fresh name: never rewrite a file that may be mapped
    path.write_bytes(raw)
    try:
        _check_read(path, raw)
    finally:
        path.unlink()


def _check_read(path, raw: bytes) -> None:
    for mmap in (True, False):
        result, err = outcome(lambda: read_safetensors(path, mmap=mmap), str(path))
        if err is not None:
            continue
        assert all(isinstance(a, np.ndarray) and not a.flags.writeable for a in result.values())
        metadata, err = outcome(lambda: read_safetensors_metadata(path), str(path))
        assert err is None and all(isinstance(v, str) for v in metadata.values())
        try:
            reference = safetensors_numpy.load(raw)
        except Exception as e:  # noqa: BLE001 - the library refuses what we accepted: a disagreement
            if "bf16" in str(e).lower() or "BF16" in raw[:4096].decode("latin-1"):
                continue  # NumPy has no bfloat16: the library cannot load BF16 into NumPy at all
            raise AssertionError(f"refvit accepted a file the safetensors library refuses: {e}") from None
        assert sorted(result) == sorted(reference)
        for name, arr in reference.items():
            assert result[name].shape == arr.shape and result[name].dtype == arr.dtype, name
            np.testing.assert_array_equal(result[name], arr)


# ------------------------------------------------------------------------------------------------ targets


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> bytes:
    return base_file(tmp_path_factory)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@fuzz_settings(150)
@given(data=st.data())
def test_fuzz_safetensors_headers(work, valid_bytes, data):
    header, buffer = split(valid_bytes)
    header = mutate_header(header, data)
    text = json.dumps(header, allow_nan=True)
    text += " " * data.draw(st.integers(0, 9), label="padding")
    length = len(text.encode("utf-8")) + data.draw(st.sampled_from([0, 0, 0, 1, -1, 8, -8, 2**20]), label="dlen")
    buffer = buffer[: data.draw(st.integers(0, len(buffer)), label="cut")] if data.draw(st.booleans()) else buffer
    buffer += b"\x00" * data.draw(st.sampled_from([0, 0, 1, 4, 8]), label="extra")
    raw = safetensors_bytes(text, buffer, header_len=max(length, 0))
    check_read(work, raw)


@st.composite
def byte_edits(draw, raw: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "insert", "delete", "duplicate", "truncate", "extend", "u64"]))
        pos = draw(st.integers(0, len(out)))
        if kind == "set" and out:
            out[min(pos, len(out) - 1)] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del out[pos : pos + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            out[pos:pos] = out[pos : pos + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del out[pos:]
        elif kind == "extend":
            out += draw(st.binary(max_size=16))
        elif kind == "u64":  # a new header length
            out[0:8] = struct.pack("<Q", draw(interesting_ints.filter(lambda n: 0 <= n < 2**64)))
    return bytes(out)


@fuzz_settings(150)
@given(data=st.data())
def test_fuzz_safetensors_bytes(work, valid_bytes, data):
    raw = data.draw(byte_edits(valid_bytes), label="raw")
    check_read(work, raw)


def test_base_file_agrees_with_the_library(tmp_path, valid_bytes):
    check_read(tmp_path, valid_bytes)
    assert safetensors_numpy.load(valid_bytes).keys() == BASE.keys()
