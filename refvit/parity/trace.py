"""The trace format: one safetensors file of named tensors in execution order, with metadata in its JSON header.

    [8 bytes: header length][JSON header][raw little-endian tensor bytes, in execution order]

The header is a JSON object, written in this order:

    "__metadata__": {                        # safetensors allows str -> str only
        "format": "refvit.trace",  "format_version": "1",
        "order": JSON list of tensor names in execution order (pixel_values first, step 0),
        "kinds": JSON {name: "input" | "module" | "hidden_state" | "attention" | "output" | "tensor"},
        "modules": JSON {name: module path} for hidden states and attention maps (the module that produced them),
        ... then the trace's own metadata, keys sorted: model, architecture, dtype, backend, attention_implementation,
        versions (JSON), processor_config_sha256, input_sha256, ...
    },
    "pixel_values": {"dtype": "F32", "shape": [...], "data_offsets": [0, n]},
    "deit.embeddings": {...}, ...            # tensors in execution order, data laid out in the same order

Any safetensors reader opens a trace (`safetensors.numpy.load_file`, refvit.checkpoint.read_safetensors). A
safetensors file without the "order" list is read in header order, so files written by other tools work too.
Saving is deterministic: a trace written, read back and written again is byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Iterator

import numpy as np

from refvit.checkpoint.safetensors import DTYPES, HEADER_ALIGNMENT, read_safetensors, read_safetensors_metadata
from refvit.errors import CheckpointError, InputError

FORMAT = "refvit.trace"
FORMAT_VERSION = "1"
KINDS = ("input", "module", "hidden_state", "attention", "output", "tensor")
_RESERVED = ("format", "format_version", "order", "kinds", "modules")
_WRITABLE = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items() if k != "BF16"}


class Trace:
    """Named tensors in execution order plus metadata. Index it by name: `trace["deit.embeddings"]`.

    `trace.names` is the execution order; `trace.kind(name)` says what a tensor is (input, module output, hidden
    state, attention map, model output); `trace.meta` is a dict of str -> str|number|list|dict (JSON values)."""

    def __init__(self, tensors: dict, meta: dict | None = None, kinds: dict | None = None,
                 modules: dict | None = None):
        self.tensors: dict[str, np.ndarray] = {}
        for name, value in tensors.items():
            if not isinstance(name, str) or not name or name == "__metadata__":
                raise InputError(f"trace: invalid tensor name {name!r}")
            self.tensors[name] = _as_array(value, name)
        self.meta = dict(meta or {})
        self.kinds = {n: (kinds or {}).get(n, "tensor") for n in self.tensors}
        self.modules = {n: m for n, m in (modules or {}).items() if n in self.tensors}

    # --- reading like a dict ------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.tensors[name]
        except KeyError:
            close = [n for n in self.tensors if name.split(".")[-1] in n][:5]
            raise InputError(f"trace has no tensor {name!r}" + (f"; similar: {close}" if close else "")) from None

    def __contains__(self, name) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def items(self):
        return self.tensors.items()

    def keys(self):
        return self.tensors.keys()

    def kind(self, name: str) -> str:
        return self.kinds.get(name, "tensor")

    def module(self, name: str) -> str:
        """The module a tensor belongs to: its own name for module outputs, the producing module for hidden states
        and attention maps when known."""
        return self.modules.get(name, name)

    def __repr__(self):
        what = ", ".join(f"{k}={self.meta[k]}" for k in ("architecture", "dtype", "source") if k in self.meta)
        return f"<refvit.parity.Trace {len(self)} tensors ({what})>"

    # --- file I/O ------------------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the trace as one safetensors file (see the module docstring)."""
        write_trace(path, self)

    @classmethod
    def load(cls, path) -> "Trace":
        """Read a trace (or any safetensors file: then header order, kinds unknown)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such trace file (write one with `refvit trace MODEL INPUT --out {path}`)")
        tensors = read_safetensors(path, mmap=False)
        raw = read_safetensors_metadata(path)
        order = _json_field(raw, "order", path, list) if "order" in raw else list(tensors)
        if sorted(order) != sorted(tensors):
            raise CheckpointError(f"{path}: the metadata's 'order' list does not name exactly the file's tensors")
        kinds = _json_field(raw, "kinds", path, dict) if "kinds" in raw else {}
        modules = _json_field(raw, "modules", path, dict) if "modules" in raw else {}
        meta = {k: _decode(v) for k, v in raw.items() if k not in _RESERVED}
        return cls({n: tensors[n] for n in order}, meta, kinds, modules)


def _as_array(value, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (torch is never imported here)
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype.newbyteorder("=") not in _WRITABLE:
        raise InputError(f"trace: tensor {name!r} has dtype {arr.dtype}, which a trace cannot hold "
                         "(float64/32/16, integers or bool)")
    return arr


def _encode(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _decode(text: str):
    """Metadata values written by _encode: JSON for numbers/lists/dicts, plain strings otherwise."""
    if text[:1] in "[{" or text in ("true", "false", "null") or _is_number(text):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
        return text.strip() == text and text not in ("nan", "inf", "-inf", "NaN", "Infinity", "-Infinity")
    except ValueError:
        return False


def _json_field(raw: dict, key: str, path: str, typ):
    try:
        value = json.loads(raw[key])
    except ValueError:
        value = None
    if not isinstance(value, typ):
        raise CheckpointError(f"{path}: trace metadata {key!r} is not a JSON {typ.__name__}")
    return value


def metadata_of(trace: Trace) -> dict[str, str]:
    """The `__metadata__` object written for a trace: format keys first, then the trace's metadata sorted by key."""
    for k in trace.meta:
        if k in _RESERVED or not isinstance(k, str):
            raise InputError(f"trace metadata key {k!r} is reserved or not a string")
    head = {"format": FORMAT, "format_version": FORMAT_VERSION, "order": json.dumps(trace.names),
            "kinds": json.dumps(trace.kinds, sort_keys=True), "modules": json.dumps(trace.modules, sort_keys=True)}
    return {**head, **{k: _encode(trace.meta[k]) for k in sorted(trace.meta)}}


def write_trace(path, trace: Trace) -> None:
    """safetensors with tensors laid out in execution order (refvit.checkpoint.write_safetensors sorts by name)."""
    path = os.fspath(path)
    header: dict = {"__metadata__": metadata_of(trace)}
    blobs, offset = [], 0
    for name, arr in trace.items():
        blob = np.ascontiguousarray(arr).astype(DTYPES[_WRITABLE[arr.dtype.newbyteorder("=")]], copy=False).tobytes()
        header[name] = {"dtype": _WRITABLE[arr.dtype.newbyteorder("=")], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGNMENT)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InputError(f"{path}: directory {directory} does not exist")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def sha256_array(arr: np.ndarray) -> str:
    """Hash of an input tensor: dtype, shape and bytes (the trace's `input_sha256`)."""
    h = hashlib.sha256(f"{arr.dtype.str}{tuple(arr.shape)}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hash of a JSON document, key order and whitespace ignored (the trace's `processor_config_sha256`)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
