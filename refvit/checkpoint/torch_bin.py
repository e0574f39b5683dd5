"""Read a `pytorch_model.bin` (a `torch.save(state_dict)` zip archive) without torch and without pickle.

Format (torch/serialization.py `_save` / `_load`, torch >= 1.6 "zipfile" serialization):

    <archive>/data.pkl        pickle (protocol 2) of the state dict; tensors are
                              REDUCE(torch._utils._rebuild_tensor_v2,
                                     (BINPERSID(('storage', torch.FloatStorage, key, location, numel)),
                                      storage_offset, size, stride, requires_grad, backward_hooks))
    <archive>/data/<key>      raw bytes of storage <key> (numel elements of the storage's dtype)
    <archive>/byteorder       b"little" or b"big" (absent in old files: little)
    <archive>/version, .format_version, .storage_alignment, .data/serialization_id   (ignored)

`data.pkl` is never given to `pickle`: a small opcode interpreter (`_Interpreter`) executes only the
opcodes torch writes, and GLOBAL/STACK_GLOBAL may only name the callables in `ALLOWED_GLOBALS`, which
it emulates with NumPy. Anything else raises `UnsafeCheckpointError` before any import or call.
"""

from __future__ import annotations

import dataclasses
import encodings.cp437  # noqa: F401  zipfile decodes legacy entry names with it: imported now, reading imports none
import math
import os
import pickletools
import struct
import zipfile
import zlib

import numpy as np

from refvit.errors import CheckpointError, UnsafeCheckpointError

# --- limits ---------------------------------------------------------------------------------------
MAX_PICKLE_BYTES = 64 * 2**20  # data.pkl of a 1000-tensor state dict is ~100 kB
MAX_STRING_BYTES = 2**20  # one pickled str/bytes (tensor names are short)
MAX_MEMO_ENTRIES = 2**20
MAX_STACK_ITEMS = 2**22
MAX_MARK_DEPTH = 1000  # nested MARKs (torch nests 2 deep)
MAX_TENSOR_RANK = 64
MAX_EXPANDED_ELEMENTS = 2**24  # a stride-0 (expanded) view may exceed its storage only up to this
MAX_COMPRESSION_RATIO = 1100  # deflate cannot exceed ~1032:1; torch itself writes stored entries
MAX_SMALL_RECORD_BYTES = 64  # byteorder
MAX_COPIED_SLACK_BYTES = 2**28  # tensors that are copies (strided, expanded, BF16) may total 2x the storages + this

# torch storage class name -> dtype of the stored bytes; BFloat16 is widened to float32 on read.
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
ALLOWED_GLOBALS = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
    }
    | {f"torch.{name}" for name in STORAGE_DTYPES}
)


# --- the public function --------------------------------------------------------------------------


def read_torch_bin(path) -> dict[str, np.ndarray]:
    """Read a `torch.save(state_dict)` zip archive into a dict name -> np.ndarray (pickle order).

    Tensors are C-contiguous and read-only (those already contiguous in their storage are views of
    the storage bytes; strided ones are copies). Malformed input raises `CheckpointError`; a pickle asking for any
    global or opcode outside the allowlist raises `UnsafeCheckpointError` (nothing is executed).
    """
    path = os.fspath(path)
    zf = _open_zip(path)
    with zf:
        archive = _find_archive(zf, path)
        byteorder = _read_byteorder(zf, archive, path)
        pickle_bytes = _read_entry(zf, f"{archive}/data.pkl", MAX_PICKLE_BYTES, path)
        storages = _StorageReader(zf, archive, byteorder, path)
        where = f"{path} ({archive}/data.pkl)"
        result = _Interpreter(pickle_bytes, where, storages.load).run()
    return _as_state_dict(result, where)


# --- the zip container ----------------------------------------------------------------------------


def _open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise CheckpointError(
            f"{path}: not a zip archive ({e}). Only the zip format of torch.save (torch >= 1.6) is "
            "read; the legacy non-zip torch.save format is not supported: re-save it with a recent "
            "torch or convert it to safetensors"
        ) from e
    except (OSError, ValueError, EOFError, NotImplementedError, RuntimeError, OverflowError, struct.error) as e:
        # zipfile parsing a damaged central directory: e.g. NotImplementedError("zip file version 6.4")
        raise CheckpointError(f"{path}: cannot open as a zip archive: {type(e).__name__}: {e}") from e


def _find_archive(zf: zipfile.ZipFile, path: str) -> str:
    """The `<archive>` prefix holding exactly one data.pkl; refuse TorchScript and duplicate names."""
    _check_no_overlap(zf, path)
    names = zf.namelist()
    seen = set()
    for name in names:
        if name in seen:
            raise CheckpointError(f"{path}: zip archive holds the entry {name!r} more than once")
        seen.add(name)
    if any(n.endswith("/constants.pkl") or "/code/" in n or n.startswith("code/") for n in names):
        raise CheckpointError(
            f"{path}: this is a TorchScript archive (torch.jit.save: constants.pkl / code/), "
            "not a state dict saved with torch.save"
        )
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise CheckpointError(
            f"{path}: expected exactly one '<archive>/data.pkl' entry, found {len(pickles)}: {pickles[:5]}"
        )
    archive, sep, _ = pickles[0].rpartition("/")
    if not sep or "/" in archive:
        raise CheckpointError(f"{path}: data.pkl must sit at '<archive>/data.pkl', found {pickles[0]!r}")
    return archive


def _check_no_overlap(zf: zipfile.ZipFile, path: str) -> None:
    """Entries may not share bytes: an "overlapping" zip bomb points many names at one compressed stream
    (Python < 3.11.8's zipfile does not check). Each entry needs at least a 30-byte local header + its data."""
    infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
    ends = [i.header_offset for i in infos[1:]] + [getattr(zf, "start_dir", None)]
    for info, limit in zip(infos, ends):
        if limit is not None and info.header_offset + 30 + info.compress_size > limit:
            raise CheckpointError(
                f"{path}: zip entry {info.filename!r} overlaps the next entry or the central directory "
                "(overlapping entries: a zip bomb?)"
            )


def _read_byteorder(zf: zipfile.ZipFile, archive: str, path: str) -> str:
    name = f"{archive}/byteorder"
    if name not in zf.NameToInfo:
        return "little"  # torch's default for files without a byteorder record
    value = _read_entry(zf, name, MAX_SMALL_RECORD_BYTES, path)
    if value not in (b"little", b"big"):
        raise CheckpointError(f"{path}: entry {name!r} is {value[:20]!r}, expected b'little' or b'big'")
    return value.decode()


def _read_entry(zf: zipfile.ZipFile, name: str, limit: int, path: str) -> bytes:
    """Read one zip entry with a bounded read, refusing sizes over `limit` and deflate bombs."""
    info = zf.NameToInfo.get(name)
    if info is None:
        raise CheckpointError(f"{path}: zip entry {name!r} is missing")
    _check_entry_sizes(info, limit, path)
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: cannot read zip entry {name!r}: {e}") from e
    if len(data) != info.file_size:
        raise CheckpointError(
            f"{path}: zip entry {name!r} holds {len(data)} bytes, its header says {info.file_size}"
        )
    return data


def _check_entry_sizes(info: zipfile.ZipInfo, limit: int, path: str) -> None:
    """Only stored or deflated entries, sizes that agree with the archive, and at most `limit` bytes."""
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise CheckpointError(
                f"{path}: stored zip entry {info.filename!r} declares {info.file_size} bytes "
                f"but occupies {info.compress_size}"
            )
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if info.file_size > MAX_COMPRESSION_RATIO * info.compress_size + 1024:
            raise CheckpointError(
                f"{path}: zip entry {info.filename!r} claims a compression ratio over "
                f"{MAX_COMPRESSION_RATIO}:1 ({info.compress_size} -> {info.file_size} bytes): zip bomb?"
            )
    else:
        raise CheckpointError(
            f"{path}: zip entry {info.filename!r} uses compression method {info.compress_type}; "
            "only stored and deflated entries are read"
        )
    if info.file_size > limit:
        raise CheckpointError(
            f"{path}: zip entry {info.filename!r} declares {info.file_size} bytes, over the limit of {limit}"
        )


# --- storages and tensors -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Global:
    """An allowlisted `module.name` reference; never imported, only compared by name."""

    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclasses.dataclass(frozen=True)
class _Storage:
    """A typed storage: `array` is a read-only 1-D view (numel elements) of `<archive>/data/<key>`."""

    key: str
    storage_type: str
    array: np.ndarray


class _OrderedDict(dict):
    """What `collections.OrderedDict()` builds here; BUILD may set attributes (torch's `_metadata`)."""


class _StorageReader:
    """Turns torch's persistent ids ('storage', <StorageClass>, key, location, numel) into `_Storage`."""

    def __init__(self, zf: zipfile.ZipFile, archive: str, byteorder: str, path: str):
        self.zf, self.archive, self.byteorder, self.path = zf, archive, byteorder, path
        self.raw: dict[str, bytes] = {}  # key -> entry bytes, read once even if shared
        self.total_bytes = 0  # of all storages read: together at most MAX_COMPRESSION_RATIO x the archive

    def load(self, pid) -> _Storage:
        storage_type, key, numel = self._validate_pid(pid)
        dtype = STORAGE_DTYPES[storage_type]
        if self.byteorder == "big":
            dtype = dtype.newbyteorder(">")
        raw = self._raw(key)
        if numel * dtype.itemsize > len(raw):
            raise CheckpointError(
                f"{self.path}: storage {key!r} claims {numel} x {storage_type} "
                f"({numel * dtype.itemsize} bytes) but entry {self.archive}/data/{key} holds {len(raw)}"
            )
        array = np.frombuffer(raw, dtype=dtype, count=numel)
        return _Storage(key, storage_type, array)

    def _validate_pid(self, pid) -> tuple[str, str, int]:
        if not (isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[0], str) and pid[0] == "storage"):
            raise CheckpointError(
                f"{self.path}: persistent id {_short(pid)} is not ('storage', type, key, location, numel)"
            )
        _, storage_type, key, location, numel = pid
        if not (isinstance(storage_type, _Global) and storage_type.module == "torch"
                and storage_type.name in STORAGE_DTYPES):
            raise CheckpointError(f"{self.path}: persistent id {_short(pid)} names no known storage type")
        if not isinstance(key, str) or not key or any(bad in key for bad in ("/", "\\", "..", "\0")):
            raise CheckpointError(f"{self.path}: persistent id has an unsafe storage key {_short(key)}")
        if not isinstance(location, str):
            raise CheckpointError(f"{self.path}: storage {key!r} has a non-string location {_short(location)}")
        if type(numel) is not int or numel < 0:
            raise CheckpointError(f"{self.path}: storage {key!r} has an invalid numel {_short(numel)}")
        return storage_type.name, key, numel

    def _raw(self, key: str) -> bytes:
        if key not in self.raw:
            name = f"{self.archive}/data/{key}"
            archive_size = os.path.getsize(self.path)
            limit = MAX_COMPRESSION_RATIO * archive_size + 1024 - self.total_bytes  # what all storages have left
            self.raw[key] = _read_entry(self.zf, name, limit, self.path)
            self.total_bytes += len(self.raw[key])
        return self.raw[key]


def _rebuild_tensor(storage, offset, size, stride, *, where: str) -> np.ndarray:
    """NumPy twin of `torch._utils._rebuild_tensor_v2`: a strided view of the storage, made contiguous.

    Bounds are checked before any view exists: the largest element index,
    offset + sum((size_i - 1) * stride_i), must lie inside the storage.
    """
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"{where}: _rebuild_tensor_v2 got {_short(storage)} instead of a storage")
    size, stride = _int_tuple(size, "size", where), _int_tuple(stride, "stride", where)
    if type(offset) is not int or offset < 0 or len(size) != len(stride) or len(size) > MAX_TENSOR_RANK:
        raise CheckpointError(
            f"{where}: storage {storage.key!r}: bad offset/size/stride {_short(offset)}, {size}, {stride}"
        )
    numel, base = storage.array.size, storage.array
    count = math.prod(size)
    if count == 0:
        if offset > numel:
            raise CheckpointError(f"{where}: storage {storage.key!r}: offset {offset} past its {numel} elements")
        return _finish(np.zeros(size, dtype=base.dtype), storage)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= numel:
        raise CheckpointError(
            f"{where}: storage {storage.key!r} has {numel} elements but a tensor with offset {offset}, "
            f"size {size}, stride {stride} reaches element {last}"
        )
    if count > max(numel, MAX_EXPANDED_ELEMENTS):
        raise CheckpointError(
            f"{where}: storage {storage.key!r}: expanded view of {count} elements over {numel} is too large"
        )
    strides = tuple(s * base.itemsize for s in stride)
    view = np.lib.stride_tricks.as_strided(base[offset:], shape=size, strides=strides, writeable=False)
    return _finish(view if view.flags.c_contiguous else view.copy(order="C"), storage)


def _finish(array: np.ndarray, storage: _Storage) -> np.ndarray:
    """Widen BFloat16 to float32 exactly, bring big-endian data to native order, mark read-only."""
    if storage.storage_type == "BFloat16Storage":
        bits = array.astype(np.uint16)  # native order, value-preserving
        array = (bits.astype(np.uint32) << 16).view(np.float32)
    elif not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    array.flags.writeable = False  # the same contract as memory-mapped safetensors
    return array


def _int_tuple(value, what: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise CheckpointError(f"{where}: tensor {what} {_short(value)} is not a tuple of non-negative ints")
    return value


# --- the allowlist pickle interpreter ---------------------------------------------------------------

_STOP = object()


class _Interpreter:
    """Executes a pickle's opcodes over plain Python data; never imports, never calls arbitrary code.

    Follows the semantics of CPython's `pickle._Unpickler` (Lib/pickle.py) for the opcodes torch's
    `torch.save` writes with protocol 2 (plus the protocol 4 framing opcodes). See `pickletools` for
    the opcode reference.
    """

    def __init__(self, data: bytes, where: str, persistent_load):
        self.data, self.where, self.persistent_load = data, where, persistent_load
        self.pos = 0  # read position
        self.op_pos = 0  # where the opcode being executed starts (named in error messages)
        self.stack: list = []
        self.metastack: list[list] = []
        self.memo: dict[int, object] = {}
        self.storage_bytes = 0  # bytes of the distinct storages the tensors view (see `_charge`)
        self.storage_keys: set[str] = set()
        self.copied_bytes = 0  # bytes of tensors that are copies, not views, of their storage

    def run(self):
        try:
            while True:
                self.op_pos = self.pos
                code = self._read(1)
                handler = _DISPATCH.get(code)
                if handler is None:
                    self._refuse(code)
                if handler(self) is _STOP:
                    return self._pop()
        except CheckpointError:
            raise
        except Exception as e:  # any slip inside a malformed pickle is a malformed checkpoint
            raise CheckpointError(
                f"{self.where}: malformed pickle at byte {self.op_pos}: {type(e).__name__}: {e}"
            ) from e

    # -- helpers
    def _refuse(self, code: bytes):
        info = pickletools.code2op.get(code.decode("latin-1"))
        if info is None:
            raise CheckpointError(f"{self.where}: byte {self.op_pos}: {code!r} is not a pickle opcode")
        raise UnsafeCheckpointError(
            f"{self.where}: byte {self.op_pos}: pickle opcode {info.name} is not in the allowlist "
            "(torch.save state dicts never use it); refusing to load, nothing was executed"
        )

    def _read(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CheckpointError(f"{self.where}: pickle truncated at byte {self.pos} (wanted {n} more)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def _read_uint(self, n: int) -> int:
        return int.from_bytes(self._read(n), "little")

    def _read_line(self) -> str:
        end = self.data.find(b"\n", self.pos, self.pos + 256)
        if end < 0:
            raise CheckpointError(f"{self.where}: byte {self.op_pos}: GLOBAL name not terminated within 256 bytes")
        line = self._read(end - self.pos + 1)[:-1]
        return line.decode("utf-8")

    def _read_sized(self, n: int) -> bytes:
        if n > MAX_STRING_BYTES:
            raise CheckpointError(
                f"{self.where}: byte {self.op_pos}: string of {n} bytes exceeds the limit of {MAX_STRING_BYTES}"
            )
        return self._read(n)

    def _push(self, value) -> None:
        if len(self.stack) >= MAX_STACK_ITEMS:
            raise CheckpointError(f"{self.where}: pickle stack exceeds {MAX_STACK_ITEMS} items")
        self.stack.append(value)

    def _pop(self):
        if not self.stack:
            raise CheckpointError(f"{self.where}: byte {self.op_pos}: pickle stack underflow")
        return self.stack.pop()

    def _top(self):
        if not self.stack:
            raise CheckpointError(f"{self.where}: byte {self.op_pos}: pickle stack underflow")
        return self.stack[-1]

    def _pop_mark(self) -> list:
        if not self.metastack:
            raise CheckpointError(f"{self.where}: byte {self.op_pos}: no MARK to pop to")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def _memo_put(self, index: int) -> None:
        if len(self.memo) >= MAX_MEMO_ENTRIES and index not in self.memo:
            raise CheckpointError(f"{self.where}: pickle memo exceeds {MAX_MEMO_ENTRIES} entries")
        self.memo[index] = self._top()

    def _memo_get(self, index: int) -> None:
        if index not in self.memo:
            raise CheckpointError(f"{self.where}: byte {self.op_pos}: memo entry {index} was never stored")
        self._push(self.memo[index])

    def _global(self, module, name) -> None:
        if not isinstance(module, str) or not isinstance(name, str):
            raise CheckpointError(f"{self.where}: byte {self.op_pos}: global names must be strings")
        qualname = f"{module}.{name}"
        if qualname not in ALLOWED_GLOBALS:
            raise UnsafeCheckpointError(
                f"{self.where}: byte {self.op_pos}: pickle asks for global '{qualname}', which is not in "
                "the allowlist; refusing to load (nothing was imported or executed)"
            )
        self._push(_Global(module, name))

    # -- framing and control
    def op_proto(self):
        version = self._read_uint(1)
        if version > 5:
            raise CheckpointError(f"{self.where}: unsupported pickle protocol {version}")

    def op_frame(self):
        self._read_uint(8)  # frame length: framing is only a read-ahead hint

    def op_stop(self):
        return _STOP

    def op_mark(self):
        if len(self.metastack) >= MAX_MARK_DEPTH:
            raise CheckpointError(f"{self.where}: pickle nests MARKs deeper than {MAX_MARK_DEPTH}")
        self.metastack.append(self.stack)
        self.stack = []

    # -- memo
    def op_binput(self):
        self._memo_put(self._read_uint(1))

    def op_long_binput(self):
        self._memo_put(self._read_uint(4))

    def op_memoize(self):
        self._memo_put(len(self.memo))

    def op_binget(self):
        self._memo_get(self._read_uint(1))

    def op_long_binget(self):
        self._memo_get(self._read_uint(4))

    # -- scalars
    def op_none(self):
        self._push(None)

    def op_newtrue(self):
        self._push(True)

    def op_newfalse(self):
        self._push(False)

    def op_binint(self):
        self._push(int.from_bytes(self._read(4), "little", signed=True))

    def op_binint1(self):
        self._push(self._read_uint(1))

    def op_binint2(self):
        self._push(self._read_uint(2))

    def op_long1(self):
        n = self._read_uint(1)
        if n > 8:
            raise CheckpointError(f"{self.where}: byte {self.op_pos}: LONG1 of {n} bytes exceeds 64 bits")
        self._push(int.from_bytes(self._read(n), "little", signed=True))

    def op_binfloat(self):
        self._push(struct.unpack(">d", self._read(8))[0])

    # -- strings
    def op_binunicode(self):
        self._push(self._read_sized(self._read_uint(4)).decode("utf-8", "surrogatepass"))

    def op_short_binunicode(self):
        self._push(self._read_sized(self._read_uint(1)).decode("utf-8", "surrogatepass"))

    def op_binunicode8(self):
        self._push(self._read_sized(self._read_uint(8)).decode("utf-8", "surrogatepass"))

    def op_binstring(self):
        n = int.from_bytes(self._read(4), "little", signed=True)
        self._push(self._read_sized(n).decode("ascii"))

    def op_short_binstring(self):
        self._push(self._read_sized(self._read_uint(1)).decode("ascii"))

    def op_binbytes(self):
        self._push(bytes(self._read_sized(self._read_uint(4))))

    def op_short_binbytes(self):
        self._push(bytes(self._read_sized(self._read_uint(1))))

    # -- containers
    def op_empty_tuple(self):
        self._push(())

    def op_tuple(self):
        self._push(tuple(self._pop_mark()))

    def op_tuple1(self):
        self._push((self._pop(),))

    def op_tuple2(self):
        b, a = self._pop(), self._pop()
        self._push((a, b))

    def op_tuple3(self):
        c, b, a = self._pop(), self._pop(), self._pop()
        self._push((a, b, c))

    def op_empty_list(self):
        self._push([])

    def op_empty_dict(self):
        self._push({})

    def op_append(self):
        value = self._pop()
        self._target(list).append(value)

    def op_appends(self):
        items = self._pop_mark()
        self._target(list).extend(items)

    def op_setitem(self):
        value, key = self._pop(), self._pop()
        self._target(dict)[self._key(key)] = value

    def op_setitems(self):
        items = self._pop_mark()
        if len(items) % 2:
            raise CheckpointError(f"{self.where}: byte {self.op_pos}: SETITEMS with an odd number of items")
        target = self._target(dict)
        for i in range(0, len(items), 2):
            target[self._key(items[i])] = items[i + 1]

    def _key(self, key):
        """Refuse tuple keys: hashing one the memo made a DAG of 2**60 leaves would never return (torch writes str
        keys)."""
        if type(key) is tuple:
            raise CheckpointError(f"{self.where}: byte {self.op_pos}: dict key {_short(key)} is a tuple; "
                                  "keys must be scalars")
        return key

    def _target(self, kind: type):
        """The list or dict under construction on top of the stack (never a tensor or anything else)."""
        target = self._top()
        allowed = (dict, _OrderedDict) if kind is dict else (list,)
        if type(target) not in allowed:
            raise CheckpointError(
                f"{self.where}: byte {self.op_pos}: cannot add items to a {type(target).__name__}"
            )
        return target

    # -- globals, calls, persistent ids
    def op_global(self):
        module = self._read_line()
        name = self._read_line()
        self._global(module, name)

    def op_stack_global(self):
        name, module = self._pop(), self._pop()
        self._global(module, name)

    def op_binpersid(self):
        self._push(self.persistent_load(self._pop()))

    def op_reduce(self):
        args, func = self._pop(), self._pop()
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise UnsafeCheckpointError(f"{self.where}: byte {self.op_pos}: REDUCE of {_short(func)} refused")
        self._push(self._call(func, args))

    def _call(self, func: _Global, args: tuple):
        """The allowlisted callables, emulated."""
        name = func.qualname
        if name == "collections.OrderedDict" and args == ():
            return _OrderedDict()
        if name == "torch._utils._rebuild_tensor_v2" and len(args) in (6, 7):
            return self._charge(_rebuild_tensor(*args[:4], where=self.where), args[0])
        if name == "torch._utils._rebuild_parameter" and len(args) == 3:
            return self._parameter_data(args[0])
        if name == "torch._utils._rebuild_parameter_with_state" and len(args) == 4:
            return self._parameter_data(args[0])
        raise UnsafeCheckpointError(
            f"{self.where}: byte {self.op_pos}: call of '{name}' with {len(args)} arguments is not allowed"
        )

    def _charge(self, tensor: np.ndarray, storage: _Storage) -> np.ndarray:
        """Tensors that are copies (strided, expanded, BF16, big-endian) may total at most twice the bytes of the
        storages viewed plus MAX_COPIED_SLACK_BYTES, so many views of one small storage cannot multiply memory."""
        if storage.key not in self.storage_keys:
            self.storage_keys.add(storage.key)
            self.storage_bytes += storage.array.nbytes
        if not np.may_share_memory(tensor, storage.array):
            self.copied_bytes += tensor.nbytes
            budget = 2 * self.storage_bytes + MAX_COPIED_SLACK_BYTES
            if self.copied_bytes > budget:
                raise CheckpointError(
                    f"{self.where}: byte {self.op_pos}: tensors copied out of their storages (strided, expanded or "
                    f"BF16 views) total {self.copied_bytes} bytes, over the limit of {budget} (2 x the "
                    f"{self.storage_bytes} storage bytes + {MAX_COPIED_SLACK_BYTES}); "
                    f"last one from storage {storage.key!r}"
                )
        return tensor

    def _parameter_data(self, data):
        if not isinstance(data, np.ndarray):
            raise CheckpointError(f"{self.where}: _rebuild_parameter got {_short(data)} instead of a tensor")
        return data

    def op_build(self):
        state = self._pop()
        target = self._top()
        if not isinstance(target, _OrderedDict) or not isinstance(state, (dict, type(None))):
            raise CheckpointError(
                f"{self.where}: byte {self.op_pos}: BUILD is only accepted on an OrderedDict "
                f"(torch's _metadata), not on a {type(target).__name__}"
            )
        # torch sets OrderedDict._metadata (module versions): irrelevant for the tensors, ignored.


_OPCODE_HANDLERS = {
    "PROTO": _Interpreter.op_proto,
    "FRAME": _Interpreter.op_frame,
    "STOP": _Interpreter.op_stop,
    "MARK": _Interpreter.op_mark,
    "BINPUT": _Interpreter.op_binput,
    "LONG_BINPUT": _Interpreter.op_long_binput,
    "MEMOIZE": _Interpreter.op_memoize,
    "BINGET": _Interpreter.op_binget,
    "LONG_BINGET": _Interpreter.op_long_binget,
    "NONE": _Interpreter.op_none,
    "NEWTRUE": _Interpreter.op_newtrue,
    "NEWFALSE": _Interpreter.op_newfalse,
    "BININT": _Interpreter.op_binint,
    "BININT1": _Interpreter.op_binint1,
    "BININT2": _Interpreter.op_binint2,
    "LONG1": _Interpreter.op_long1,
    "BINFLOAT": _Interpreter.op_binfloat,
    "BINUNICODE": _Interpreter.op_binunicode,
    "SHORT_BINUNICODE": _Interpreter.op_short_binunicode,
    "BINUNICODE8": _Interpreter.op_binunicode8,
    "BINSTRING": _Interpreter.op_binstring,
    "SHORT_BINSTRING": _Interpreter.op_short_binstring,
    "BINBYTES": _Interpreter.op_binbytes,
    "SHORT_BINBYTES": _Interpreter.op_short_binbytes,
    "EMPTY_TUPLE": _Interpreter.op_empty_tuple,
    "TUPLE": _Interpreter.op_tuple,
    "TUPLE1": _Interpreter.op_tuple1,
    "TUPLE2": _Interpreter.op_tuple2,
    "TUPLE3": _Interpreter.op_tuple3,
    "EMPTY_LIST": _Interpreter.op_empty_list,
    "EMPTY_DICT": _Interpreter.op_empty_dict,
    "APPEND": _Interpreter.op_append,
    "APPENDS": _Interpreter.op_appends,
    "SETITEM": _Interpreter.op_setitem,
    "SETITEMS": _Interpreter.op_setitems,
    "GLOBAL": _Interpreter.op_global,
    "STACK_GLOBAL": _Interpreter.op_stack_global,
    "BINPERSID": _Interpreter.op_binpersid,
    "REDUCE": _Interpreter.op_reduce,
    "BUILD": _Interpreter.op_build,
}
# opcode byte -> handler; every other opcode is refused by name
_DISPATCH = {
    op.code.encode("latin-1"): _OPCODE_HANDLERS[op.name]
    for op in pickletools.opcodes
    if op.name in _OPCODE_HANDLERS
}
ALLOWED_OPCODES = frozenset(_OPCODE_HANDLERS)


def _as_state_dict(result, where: str) -> dict[str, np.ndarray]:
    """The pickle must hold a flat dict of str -> tensor, as `torch.save(model.state_dict())` writes."""
    if not isinstance(result, dict):
        raise CheckpointError(f"{where}: pickle holds a {type(result).__name__}, not a state dict")
    for key, value in result.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: state dict key {_short(key)} is not a string")
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{where}: state dict entry {key!r} is a {type(value).__name__}, not a tensor")
    return dict(result)


def _short(value, limit: int = 80) -> str:
    """A bounded repr for error messages, in bounded time: never raises, and never walks more than ~`limit` nodes
    (through its memo a pickle can build a tuple DAG of 2**60 leaves, whose full repr would never finish)."""
    parts: list[str] = []
    budget = [limit + 1]

    def emit(text: str) -> None:
        parts.append(text[: max(budget[0], 0)])
        budget[0] -= len(text)

    def walk(v, depth: int) -> None:
        if budget[0] <= 0:
            return
        if type(v) in (tuple, list) and depth < 8:
            emit("(" if type(v) is tuple else "[")
            for i, item in enumerate(v):
                if budget[0] <= 0:
                    return
                emit(", " if i else "")
                walk(item, depth + 1)
            emit(("," if type(v) is tuple and len(v) == 1 else "") + (")" if type(v) is tuple else "]"))
        elif isinstance(v, dict) and depth < 8:
            emit("{")
            for i, (k, item) in enumerate(v.items()):
                if budget[0] <= 0:
                    return
                emit(", " if i else "")
                walk(k, depth + 1)
                emit(": ")
                walk(item, depth + 1)
            emit("}")
        elif type(v) in (str, bytes):
            emit(repr(v[: limit + 1]))
        elif type(v) in (int, float, bool, type(None), _Global):
            emit(repr(v))
        else:
            emit(f"<{type(v).__name__}>")

    walk(value, 0)
    text = "".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."
