"""Writing what transformers reads: `model.safetensors` with NumPy (no torch), JSON files, whole directories.

Every file is written under a temporary name in its directory and then renamed over the target (`os.replace`), so
a reader never sees a half-written file, and a file that is memory-mapped for reading (refvit maps safetensors
checkpoints) is never written into: the old mapping keeps the old file's bytes, the new file gets a new inode.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from refvit.errors import CheckpointError

# NumPy dtype -> safetensors dtype name (safetensors' format spec; little-endian data)
SAFETENSORS_DTYPES = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
                      np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16",
                      np.dtype("int8"): "I8", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL"}
ALIGNMENT = 8  # the header is padded with spaces so the data starts 8-byte aligned, as the safetensors library does


def write_bytes_atomic(path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory, then rename it over `path`."""
    _write_atomic(path, lambda f: f.write(data))


def _write_atomic(path, write) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def safetensors_header(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> tuple[bytes, list]:
    """The 8-byte length + JSON header of a safetensors file holding `tensors` (in name order), and the arrays to
    write after it, each C-contiguous and little-endian."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    arrays, offset = [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        dtype = a.dtype.newbyteorder("=") if a.dtype.byteorder not in ("=", "|") else a.dtype
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{name}: dtype {a.dtype} cannot be written to safetensors "
                                  f"(supported: {', '.join(sorted(str(d) for d in SAFETENSORS_DTYPES))})")
        a = a.astype(dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype, order="C", copy=False)  # keeps 0-d
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % ALIGNMENT)
    return len(text).to_bytes(8, "little") + text, arrays


def write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write {name: array} as a safetensors file (atomically: temporary name, then os.replace)."""
    head, arrays = safetensors_header(tensors, metadata)

    def write(f):
        f.write(head)
        for a in arrays:
            f.write(memoryview(a.reshape(-1).view(np.uint8)) if a.size else b"")
    _write_atomic(path, write)


def prepare_directory(save_directory, overwrite: bool) -> str:
    """Create `save_directory` if missing; refuse an existing non-empty one unless overwrite=True."""
    save_directory = os.fspath(save_directory)
    if os.path.exists(save_directory) and not os.path.isdir(save_directory):
        raise CheckpointError(f"{save_directory}: exists and is not a directory")
    if os.path.isdir(save_directory) and os.listdir(save_directory) and not overwrite:
        listed = ", ".join(sorted(os.listdir(save_directory))[:5])
        raise CheckpointError(f"{save_directory}: directory is not empty ({listed}"
                              f"{' …' if len(os.listdir(save_directory)) > 5 else ''}); pass overwrite=True to replace "
                              "the files refvit writes, or choose an empty directory")
    os.makedirs(save_directory, exist_ok=True)
    return save_directory
