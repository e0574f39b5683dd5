"""Hand-built checkpoint files for the refvit.checkpoint tests (no torch needed).

- `safetensors_bytes`: raw safetensors bytes from any header (even invalid ones) and data.
- `Pickle`: emits pickle opcodes one by one, so tests can write what torch.save writes, or worse.
- `torch_state_dict_pickle` + `torch_zip`: a `torch.save(state_dict)` archive built without torch.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass

import numpy as np


def safetensors_bytes(header, data: bytes = b"", *, header_len: int | None = None) -> bytes:
    """[u64 N][header][data]; `header` may be a dict (dumped as JSON), a str or raw bytes."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8")
    n = len(header) if header_len is None else header_len
    return struct.pack("<Q", n) + header + data


def entry(dtype: str, shape, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


class Pickle:
    """A tiny pickle assembler: each method appends one opcode (see `pickletools` for their meaning)."""

    def __init__(self, protocol: int = 2):
        self.out = bytearray()
        if protocol >= 2:
            self.out += bytes([0x80, protocol])

    def raw(self, data: bytes) -> "Pickle":
        self.out += data
        return self

    def mark(self):
        return self.raw(b"(")

    def stop(self):
        return self.raw(b".")

    def global_(self, module: str, name: str):
        return self.raw(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def str_(self, s: str):
        data = s.encode("utf-8")
        return self.raw(b"X" + struct.pack("<I", len(data)) + data)

    def int_(self, n: int):
        if 0 <= n < 256:
            return self.raw(b"K" + bytes([n]))
        if -(2**31) <= n < 2**31:
            return self.raw(b"J" + struct.pack("<i", n))
        data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
        return self.raw(b"\x8a" + bytes([len(data)]) + data)

    def tuple_(self, values):
        self.mark()
        for v in values:
            self.int_(v)
        return self.raw(b"t")

    def empty_tuple(self):
        return self.raw(b")")

    def reduce(self):
        return self.raw(b"R")

    def ordered_dict(self):
        return self.global_("collections", "OrderedDict").empty_tuple().reduce()

    def bytes(self) -> bytes:
        return bytes(self.out)


@dataclass
class TensorSpec:
    """One `_rebuild_tensor_v2` call: a view (offset, size, stride) of storage `key`."""

    name: str
    storage_type: str  # e.g. "FloatStorage"
    key: str
    numel: int
    offset: int
    size: tuple
    stride: tuple
    parameter: bool = False


def torch_tensor_pickle(p: Pickle, t: TensorSpec) -> Pickle:
    """The opcodes torch 2.x writes for one tensor (see tests: pickletools.dis of a real file)."""
    if t.parameter:
        p.global_("torch._utils", "_rebuild_parameter")
    p.global_("torch._utils", "_rebuild_tensor_v2").mark()
    p.mark().str_("storage").global_("torch", t.storage_type).str_(t.key).str_("cpu").int_(t.numel).raw(b"t")
    p.raw(b"Q").int_(t.offset).tuple_(t.size).tuple_(t.stride).raw(b"\x89").ordered_dict().raw(b"t").reduce()
    if t.parameter:
        p.raw(b"\x88").ordered_dict().raw(b"\x87").reduce()
    return p


def torch_state_dict_pickle(tensors: list[TensorSpec], *, metadata: bool = True) -> bytes:
    """An OrderedDict of tensors, with torch's `_metadata` attribute set through BUILD."""
    p = Pickle().ordered_dict().mark()
    for t in tensors:
        p.str_(t.name)
        torch_tensor_pickle(p, t)
    p.raw(b"u")
    if metadata:
        p.raw(b"}").str_("_metadata").ordered_dict().mark().str_("").raw(b"}").str_("version").int_(1)
        p.raw(b"s").raw(b"u").raw(b"s").raw(b"b")
    return p.stop().bytes()


def torch_zip(
    path,
    pickle_bytes: bytes,
    storages: dict[str, bytes] | None = None,
    *,
    archive: str = "archive",
    byteorder: bytes | None = b"little",
    extra: dict[str, bytes] | None = None,
    compression: int = zipfile.ZIP_STORED,
) -> None:
    """Write a zip in torch.save's layout: <archive>/data.pkl, <archive>/data/<key>, byteorder, version."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr(f"{archive}/data.pkl", pickle_bytes)
        if byteorder is not None:
            zf.writestr(f"{archive}/byteorder", byteorder)
        for key, data in (storages or {}).items():
            zf.writestr(f"{archive}/data/{key}", data)
        zf.writestr(f"{archive}/version", b"3\n")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)


def write_torch_state_dict(path, arrays: dict[str, np.ndarray], **zip_kwargs) -> None:
    """Save contiguous NumPy arrays as torch.save would (one storage per tensor), without torch."""
    types = {
        np.dtype("float64"): "DoubleStorage", np.dtype("float32"): "FloatStorage",
        np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
        np.dtype("int32"): "IntStorage", np.dtype("int16"): "ShortStorage",
        np.dtype("int8"): "CharStorage", np.dtype("uint8"): "ByteStorage", np.dtype("bool"): "BoolStorage",
    }
    specs, storages = [], {}
    for i, (name, arr) in enumerate(arrays.items()):
        arr = np.array(arr, order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
        strides = tuple(s // arr.itemsize for s in arr.strides)
        specs.append(TensorSpec(name, types[arr.dtype], str(i), arr.size, 0, arr.shape, strides))
        storages[str(i)] = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    torch_zip(path, torch_state_dict_pickle(specs), storages, **zip_kwargs)
