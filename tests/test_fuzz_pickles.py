"""Fuzzing `pytorch_model.bin` reading: generated pickle opcode streams, opcode-level mutations of a valid
torch.save pickle, and byte mutations of the whole zip archive.

Property: `read_torch_bin` returns a flat dict of str -> read-only, C-contiguous NumPy arrays, or raises
`CheckpointError` (or `UnsafeCheckpointError`) naming the file; never another exception, never a hang; and whatever
the pickle asks for, nothing is imported (`sys.modules` unchanged) and nothing runs (a sentinel file that every
generated command would create never appears).
"""

from __future__ import annotations

import io
import itertools
import pickletools
import struct
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest_checkpoint_helpers import Pickle, TensorSpec, torch_state_dict_pickle, torch_tensor_pickle, torch_zip
from refvit.checkpoint import read_torch_bin
from refvit.checkpoint.torch_bin import ALLOWED_OPCODES
from test_fuzz_safetensors import byte_edits
from test_fuzz_support import fuzz_settings, outcome

COUNTER = itertools.count()
STORAGES = {"0": np.arange(4, dtype="<f4").tobytes(), "1": np.array([0x3F80, 0xC000], "<u2").tobytes(),
            "k": np.arange(3, dtype="<i8").tobytes()}
OPCODES = sorted(pickletools.opcodes, key=lambda op: op.name)
ALLOWED = [op for op in OPCODES if op.name in ALLOWED_OPCODES]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("pickles")


def sentinel(work) -> str:
    return str(work / "SENTINEL")


def words(work):
    return st.sampled_from([
        "storage", "torch", "FloatStorage", "BFloat16Storage", "LongStorage", "collections", "OrderedDict",
        "torch._utils", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state", "os", "system",
        "posix", "builtins", "__builtin__", "eval", "exec", "getattr", "importlib", "import_module", "subprocess",
        "call", "0", "1", "k", "cpu", "w", "_metadata", "version", "../0", "a/b", "", f"touch {sentinel(work)}",
    ])


# ------------------------------------------------------------------------------------------- opcode streams


def encode_arg(op, data, work) -> bytes:
    """Bytes of `op`'s argument, mostly plausible, sometimes wrong (lengths past the end, bad UTF-8, …)."""
    name = op.arg.name if op.arg is not None else None
    word = lambda: data.draw(words(work)).encode()  # noqa: E731
    small = lambda: data.draw(st.integers(0, 8) | st.integers(0, 2**32 - 1))  # noqa: E731
    if name is None:
        return b""
    if name == "uint1":
        return bytes([data.draw(st.integers(0, 255))])
    if name == "uint2":
        return struct.pack("<H", data.draw(st.integers(0, 2**16 - 1)))
    if name == "int4":
        return struct.pack("<i", data.draw(st.integers(-(2**31), 2**31 - 1)))
    if name == "uint4":
        return struct.pack("<I", small())
    if name == "uint8":
        return struct.pack("<Q", small())
    if name in ("long1", "long4"):
        raw = data.draw(st.binary(max_size=10))
        return (bytes([len(raw)]) if name == "long1" else struct.pack("<i", len(raw))) + raw
    if name == "stringnl_noescape_pair":
        return word() + b"\n" + word() + b"\n"
    if name in ("stringnl", "stringnl_noescape", "unicodestringnl", "decimalnl_short", "decimalnl_long", "floatnl"):
        return data.draw(st.sampled_from([word(), b"'x'", b"12", b"1.5", b"\xff"])) + b"\n"
    if name == "float8":
        return struct.pack(">d", data.draw(st.floats(allow_nan=True)))
    if name in ("string1", "bytes1", "unicodestring1", "string4", "bytes4", "unicodestring4", "bytes8",
                "bytearray8", "unicodestring8"):
        payload = data.draw(st.sampled_from([word(), b"\xff\xfe", b""]) | st.binary(max_size=8))
        n = len(payload) + data.draw(st.sampled_from([0, 0, 0, 1, 1000]))  # sometimes past the end
        size = {"1": "<B", "4": "<I", "8": "<Q"}[name[-1]]
        return struct.pack(size, min(n, 255) if size == "<B" else n) + payload
    raise AssertionError(f"no encoder for {name}")


@st.composite
def opcode_streams(draw, work):
    """Mostly allowlisted opcodes, with whole torch tensors and forbidden opcodes mixed in, then STOP."""
    p = Pickle(protocol=draw(st.sampled_from([2, 2, 4, 0])))
    data = draw(st.data())
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["allowed"] * 6 + ["any", "tensor", "dict_of_tensor"]))
        if kind == "tensor" or kind == "dict_of_tensor":
            key = draw(st.sampled_from(sorted(STORAGES)))
            storage = {"0": "FloatStorage", "1": "BFloat16Storage", "k": "LongStorage"}[key]
            numel = draw(st.integers(0, 5))
            size = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
            stride = tuple(draw(st.lists(st.integers(0, 4), min_size=len(size), max_size=len(size))))
            spec = TensorSpec("w", storage, key, numel, draw(st.integers(0, 4)), size, stride, draw(st.booleans()))
            if kind == "dict_of_tensor":
                p.raw(b"}").str_(draw(words(work)))
                torch_tensor_pickle(p, spec).raw(b"s")
            else:
                torch_tensor_pickle(p, spec)
        else:
            op = draw(st.sampled_from(ALLOWED if kind == "allowed" else OPCODES))
            p.raw(op.code.encode("latin-1") + encode_arg(op, data, work))
    if draw(st.booleans()):  # end on a state dict, so that some streams are accepted
        p.raw(b"}").str_("w")
        torch_tensor_pickle(p, TensorSpec("w", "FloatStorage", "0", 4, 0, (2,), (1,))).raw(b"s")
    return p.stop().bytes()


def check_read(work, pickle_bytes: bytes | None = None, raw_zip: bytes | None = None) -> None:
    path = work / f"{next(COUNTER)}.bin"
    if raw_zip is None:
        torch_zip(path, pickle_bytes, STORAGES)
    else:
        path.write_bytes(raw_zip)
    modules = set(sys.modules)
    try:
        result, err = outcome(lambda: read_torch_bin(path), str(path))
    finally:
        path.unlink()
    assert set(sys.modules) == modules, sorted(set(sys.modules) - modules)
    assert not (work / "SENTINEL").exists()
    if err is None:
        assert type(result) is dict
        for key, value in result.items():
            assert type(key) is str and type(value) is np.ndarray, (key, type(value))
            assert value.flags.c_contiguous and not value.flags.writeable and value.dtype.isnative


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_pickle_opcode_streams(work, data):
    check_read(work, data.draw(opcode_streams(work), label="pickle"))


# --------------------------------------------------------------------------- mutations of a valid torch pickle

VALID_PICKLE = torch_state_dict_pickle([
    TensorSpec("a", "FloatStorage", "0", 4, 0, (2, 2), (2, 1)),
    TensorSpec("b", "FloatStorage", "0", 4, 1, (3,), (1,), parameter=True),
    TensorSpec("c", "BFloat16Storage", "1", 2, 0, (2,), (1,)),
    TensorSpec("d", "LongStorage", "k", 3, 0, (3, 2), (1, 0)),
])


def split_ops(data: bytes) -> list[bytes]:
    """A pickle cut into its opcodes (with their arguments), by pickletools (which executes nothing)."""
    positions = [pos for _, _, pos in pickletools.genops(data)] + [len(data)]
    return [data[a:b] for a, b in zip(positions, positions[1:])]


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_pickle_opcode_mutations(work, data):
    ops = split_ops(VALID_PICKLE)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        kind = data.draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "insert", "move"]))
        i, j = data.draw(st.integers(0, len(ops) - 1)), data.draw(st.integers(0, len(ops) - 1))
        if kind == "delete" and len(ops) > 1:
            del ops[i]
        elif kind == "duplicate":
            ops.insert(j, ops[i])
        elif kind == "swap":
            ops[i], ops[j] = ops[j], ops[i]
        elif kind == "move":
            ops.insert(j, ops.pop(i))
        elif kind in ("replace", "insert"):
            op = data.draw(st.sampled_from(OPCODES))
            new = op.code.encode("latin-1") + encode_arg(op, data, work)
            if kind == "replace":
                ops[i] = new
            else:
                ops.insert(i, new)
    check_read(work, b"".join(ops))


def test_valid_pickle_reads(work):
    check_read(work, VALID_PICKLE)
    path = work / "valid.bin"
    torch_zip(path, VALID_PICKLE, STORAGES)
    out = read_torch_bin(path)
    assert list(out) == ["a", "b", "c", "d"] and out["c"].tolist() == [1.0, -2.0]


# ----------------------------------------------------------------------------------- byte mutations of the zip


@pytest.fixture(scope="module")
def valid_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("archive/data.pkl", VALID_PICKLE)
        zf.writestr("archive/byteorder", b"little")
        for key, blob in STORAGES.items():
            zf.writestr(f"archive/data/{key}", blob)
        zf.writestr("archive/data/big", bytes(4096), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("archive/version", b"3\n")
    return buffer.getvalue()


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_zip_bytes(work, valid_zip, data):
    check_read(work, raw_zip=data.draw(byte_edits(valid_zip), label="zip"))
