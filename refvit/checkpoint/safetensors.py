"""Read and write `.safetensors` files with NumPy alone.

The format (https://huggingface.co/docs/safetensors, spec in the `safetensors` repository README):

    [8 bytes: N, u64 little-endian][N bytes: UTF-8 JSON header][data buffer]

The header is a JSON object mapping tensor name -> {"dtype", "shape", "data_offsets": [begin, end]}
plus an optional "__metadata__" object of str -> str. Offsets are relative to the start of the data
buffer; the tensors, sorted by offset, must tile the buffer exactly (no holes, no overlaps). All data
is little-endian and C-contiguous.

Validation follows the Rust reference implementation (`safetensors/src/tensor.rs`,
`SafeTensors::read_metadata` and `Metadata::validate`): header size limit `MAX_HEADER_SIZE`
(100_000_000 bytes), header must start with '{', offsets contiguous from 0 to the end of the buffer.
We are stricter in a few places (duplicate JSON keys, NaN/Infinity tokens, unknown entry fields).
"""

from __future__ import annotations

import bisect
import json
import math
import mmap as _mmap
import os
import struct

import numpy as np

from refvit import strict_json
from refvit.errors import CheckpointError

MAX_HEADER_SIZE = 100_000_000  # bytes; same limit as the Rust reference (`MAX_HEADER_SIZE`)
MAX_RANK = 64  # NumPy's limit on dimensions
HEADER_ALIGNMENT = 8  # the writers pad the header with spaces so the data buffer starts 8-aligned

# safetensors dtype name -> little-endian NumPy dtype of the stored bytes.
# BF16 has no NumPy dtype: it is stored as '<u2' and widened exactly to float32 on read.
DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 exactly: bf16 is the high half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------------------------------------------
# reading


def read_safetensors(path, *, mmap: bool = True) -> dict[str, np.ndarray]:
    """Read every tensor of a `.safetensors` file into a dict name -> np.ndarray (header order).

    Every returned array is read-only. With `mmap=True` the file is memory-mapped and aligned tensors
    are zero-copy views of it; unaligned tensors and BF16 (widened exactly to float32) are copies.
    Do not truncate or rewrite a memory-mapped file while its arrays are alive (use `mmap=False`). Any malformed input
    raises `CheckpointError` naming the file and the tensor, key or offset at fault.
    """
    path = os.fspath(path)
    buf = _open_buffer(path, mmap)
    header, data_start = _read_header(buf, path)
    entries = _validate_entries(header, len(buf) - data_start, path)
    raw = np.frombuffer(buf, dtype=np.uint8)
    return {name: _tensor_from_bytes(raw, data_start, e) for name, e in entries.items()}


def read_safetensors_metadata(path) -> dict[str, str]:
    """The `__metadata__` object of a `.safetensors` file (empty dict if absent), after full validation."""
    path = os.fspath(path)
    buf = _open_buffer(path, True)
    header, data_start = _read_header(buf, path)
    _validate_entries(header, len(buf) - data_start, path)
    return dict(header.get("__metadata__") or {})


def _open_buffer(path: str, use_mmap: bool):
    """The whole file as a read-only buffer (an mmap, or bytes); at least 8 bytes long."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise CheckpointError(
                    f"{path}: file is {size} bytes, shorter than the 8-byte safetensors header length"
                )
            if use_mmap:
                return _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
            return f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read safetensors file: {e}") from e


def _read_header(buf, path: str) -> tuple[dict, int]:
    """Parse the length prefix and the JSON header; return (header dict, offset of the data buffer)."""
    (n,) = struct.unpack("<Q", buf[:8])
    if n > MAX_HEADER_SIZE:
        raise CheckpointError(
            f"{path}: header length {n} exceeds the limit of {MAX_HEADER_SIZE} bytes (corrupt file?)"
        )
    if 8 + n > len(buf):
        raise CheckpointError(
            f"{path}: header length {n} runs past the end of the file ({len(buf)} bytes)"
        )
    raw = bytes(buf[8 : 8 + n])
    if not raw.startswith(b"{"):
        raise CheckpointError(f"{path}: header must be a JSON object starting with '{{'")
    header = strict_json.loads(raw, f"{path}: header", CheckpointError, offset=8)
    return header, 8 + n


def _validate_entries(header: dict, buffer_len: int, path: str) -> dict[str, tuple]:
    """Check every entry and the tiling of the data buffer; return name -> (dtype name, shape, begin, end)."""
    _validate_metadata(header.get("__metadata__"), path)
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _validate_entry(name, info, buffer_len, path)
    _check_tiling(entries, buffer_len, path)
    return entries


def _validate_metadata(metadata, path: str) -> None:
    """`__metadata__` is optional; when present it must map str -> str."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: '__metadata__' must be an object of strings")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise CheckpointError(f"{path}: '__metadata__' key {key!r} has a non-string value")


def _validate_entry(name: str, info, buffer_len: int, path: str) -> tuple:
    """One tensor entry: exact fields, known dtype, sane shape, offsets spanning exactly its bytes."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: entry must be an object with dtype, shape, data_offsets")
    if set(info) != _ENTRY_FIELDS:
        raise CheckpointError(
            f"{where}: entry fields are {sorted(info)}, expected exactly {sorted(_ENTRY_FIELDS)}"
        )
    dtype_name = info["dtype"]
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise CheckpointError(
            f"{where}: unknown or unsupported dtype {dtype_name!r} (supported: {', '.join(DTYPES)})"
        )
    shape = _validate_shape(info["shape"], where)
    nbytes = _checked_nbytes(shape, DTYPES[dtype_name].itemsize, buffer_len, where)
    begin, end = _validate_offsets(info["data_offsets"], where)
    if end - begin != nbytes:
        raise CheckpointError(
            f"{where}: data_offsets [{begin}, {end}] span {end - begin} bytes but "
            f"{dtype_name} shape {list(shape)} needs {nbytes}"
        )
    if end > buffer_len:
        raise CheckpointError(
            f"{where}: data_offsets [{begin}, {end}] run past the data buffer "
            f"({buffer_len} bytes): file truncated"
        )
    return dtype_name, shape, begin, end


def _validate_shape(shape, where: str) -> tuple[int, ...]:
    """A list of ints in [0, 2**63) (NumPy's index range), at most MAX_RANK of them."""
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(_is_int(d) and 0 <= d < 2**63 for d in shape)
    ):
        raise CheckpointError(
            f"{where}: shape {_short(shape)} is not a list of at most {MAX_RANK} integers in [0, 2**63)"
        )
    return tuple(shape)


def _checked_nbytes(shape: tuple[int, ...], itemsize: int, buffer_len: int, where: str) -> int:
    """prod(shape) * itemsize with Python ints, refusing anything larger than the data buffer."""
    if 0 in shape:  # empty, but NumPy still needs itemsize x the non-zero dims to fit in its index range
        if math.prod(d for d in shape if d) * itemsize >= 2**63:
            raise CheckpointError(f"{where}: empty shape {_short(list(shape))} is too large for NumPy to represent")
        return 0
    nbytes = itemsize
    for dim in shape:
        nbytes *= dim
        if nbytes > buffer_len:  # stop early: the product could be astronomically large
            raise CheckpointError(
                f"{where}: shape {list(shape)} needs more bytes than the whole data buffer "
                f"({buffer_len} bytes): file truncated or shape corrupt"
            )
    return nbytes


def _validate_offsets(offsets, where: str) -> tuple[int, int]:
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} must be a list of exactly 2 integers")
    begin, end = offsets
    if begin < 0 or begin > end:
        raise CheckpointError(f"{where}: data_offsets [{begin}, {end}] are reversed or negative")
    return begin, end


def _check_tiling(entries: dict[str, tuple], buffer_len: int, path: str) -> None:
    """Sorted by offset, tensors must cover [0, buffer_len) exactly: no hole, no overlap, no tail."""
    expected, previous = 0, None
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin < expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} at data_offsets [{begin}, {end}] overlaps tensor {previous!r}"
            )
        if begin > expected:
            raise CheckpointError(
                f"{path}: hole in the data buffer: bytes [{expected}, {begin}) before tensor {name!r} "
                "belong to no tensor"
            )
        expected, previous = end, name
    if expected != buffer_len:
        raise CheckpointError(
            f"{path}: tensors cover {expected} bytes but the data buffer holds {buffer_len} "
            f"(trailing bytes after offset {expected})"
        )


def _tensor_from_bytes(raw: np.ndarray, data_start: int, entry: tuple) -> np.ndarray:
    """View one tensor's bytes as its dtype and shape (copying only when unaligned or BF16)."""
    dtype_name, shape, begin, end = entry
    dtype = DTYPES[dtype_name]
    arr = raw[data_start + begin : data_start + end].view(dtype).reshape(shape)
    if dtype_name == "BF16":
        arr = bf16_to_float32(arr)
    elif not dtype.isnative:  # big-endian host
        arr = arr.astype(dtype.newbyteorder("="))
    elif not arr.flags.aligned:
        arr = arr.copy()
    arr.flags.writeable = False  # copies too: one contract for every tensor read
    return arr


def release_replaced(sources, kept) -> int:
    """Hand back the pages of memory-mapped tensors (`read_safetensors(mmap=True)`) that load-time preparation
    replaced by copies (a cast to float64, q/k/v concatenated into one array, a folded BatchNorm) and that no kept
    array still views; returns the bytes released.

    A tensor read through the mapping stays in the process's resident set (RSS) until the process unmaps it, even
    once nothing uses it: the copy and the original would both count. `madvise(MADV_DONTNEED)` drops those pages from
    this process only; the file's bytes stay in the page cache, and reading them again (an array that still views
    them) faults them back in unchanged. Pages shared with a kept tensor are kept. No madvise (Windows): nothing."""
    advise = getattr(_mmap, "MADV_DONTNEED", None)
    if advise is None:
        return 0
    kept = list(kept)
    kept_ids = {id(a) for a in kept}                    # used as they are: nothing to release (the common case)
    mappings = {}                                       # id(whole-file array) -> (it, [released spans], [kept spans])
    for arrays, slot in ((sources, 1), (kept, 2)):
        for a in arrays:
            whole = _mapped_file_array(a)
            if whole is not None and (slot == 2 and id(whole) in mappings or slot == 1 and id(a) not in kept_ids):
                mappings.setdefault(id(whole), (whole, [], []))[slot].append(_byte_span(a))
    released = 0
    for whole, spans, keep in mappings.values():
        start = whole.__array_interface__["data"][0]    # the mapping's first byte (page-aligned: offset 0)
        keep = _merged(sorted(keep))
        spans = sorted(span for span in spans if not _overlaps(span, keep))
        for lo, hi in _merged(spans):
            first = -(-(lo - start) // _mmap.PAGESIZE) * _mmap.PAGESIZE    # whole pages inside the span only
            last = (hi - start) // _mmap.PAGESIZE * _mmap.PAGESIZE
            if last > first:
                try:
                    _buffer(whole).madvise(advise, first, last - first)
                except (OSError, ValueError):           # a closed mapping, a refusing kernel: keep the pages
                    continue
                released += last - first
    return released


def _mapped_file_array(a):
    """The uint8 array over a whole memory-mapped file that `a` views, or None (a copy, bytes, not an array)."""
    base = getattr(a, "base", None)
    if isinstance(a, np.ndarray) and isinstance(base, np.ndarray) and isinstance(_buffer(base), _mmap.mmap):
        return base
    return None


def _buffer(whole: np.ndarray):
    """The object an np.frombuffer array reads (through the memoryview NumPy keeps as its base)."""
    base = whole.base
    return base.obj if isinstance(base, memoryview) else base


def _byte_span(a: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) addresses of the bytes an array (any strides) can read."""
    lo = hi = a.__array_interface__["data"][0]
    if a.size:
        for n, stride in zip(a.shape, a.strides):
            (lo, hi) = (lo + stride * (n - 1), hi) if stride < 0 else (lo, hi + stride * (n - 1))
        hi += a.itemsize
    return lo, hi


def _overlaps(span: tuple, spans: list) -> bool:
    """Whether [lo, hi) overlaps one of sorted, disjoint spans."""
    i = bisect.bisect_right(spans, (span[1],))        # the spans starting before hi
    return i > 0 and spans[i - 1][1] > span[0]


def _merged(spans: list) -> list:
    """Sorted spans with touching or overlapping neighbours joined (the page between two released tensors goes too)."""
    out = []
    for lo, hi in spans:
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(x) -> bool:
    return type(x) is int  # rejects bool, which json maps true/false to


# ---------------------------------------------------------------------------------------------------
# writing

_NUMPY_TO_SAFETENSORS = {
    np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items() if k != "BF16"
}


def write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write tensors as a valid `.safetensors` file: sorted by name, contiguous, header space-padded to 8.

    `metadata` (str -> str, e.g. {"format": "pt"} as transformers writes) goes to `__metadata__`.
    NumPy has no bfloat16, so BF16 cannot be written from here.
    """
    path = os.fspath(path)
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise CheckpointError(f"{path}: metadata must map str -> str")
        header["__metadata__"] = dict(metadata)
    for name in sorted(tensors):
        if not isinstance(name, str) or name == "__metadata__":
            raise CheckpointError(f"{path}: invalid tensor name {name!r}")
        arr = np.asarray(tensors[name])
        dtype_name = _NUMPY_TO_SAFETENSORS.get(arr.dtype.newbyteorder("="))
        if dtype_name is None:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {arr.dtype}, not writable as safetensors")
        blob = arr.astype(DTYPES[dtype_name], copy=False).tobytes(order="C")
        header[name] = {"dtype": dtype_name, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGNMENT)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
