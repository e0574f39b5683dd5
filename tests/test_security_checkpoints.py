"""Untrusted checkpoints (docs/DESIGN.md §8): what tests/test_checkpoint_*.py do not already cover.

- end to end through `refvit.from_pretrained`: malicious pickles in `pytorch_model.bin` and in a shard, every
  protocol and every code-running opcode; a sentinel file proves nothing ran, `sys.modules` proves nothing was
  imported, and nothing is half-loaded;
- memo tricks: tuple DAGs of 2**60 leaves built through the memo, which a naive hash or repr never finishes;
- BUILD / SETITEM / APPEND on the wrong type, persistent ids that are not storages;
- zip tricks: overlapping entries (the "better zip bomb"), encrypted entries, a bare top-level data.pkl;
- bounded resources: every limit is a named constant, and each one fails fast with a message naming the file.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

import refvit
from conftest import golden_case
from conftest_checkpoint_helpers import (Pickle, TensorSpec, entry, safetensors_bytes, torch_state_dict_pickle,
                                         torch_zip, write_torch_state_dict)
from refvit.checkpoint import read_safetensors, read_torch_bin, torch_bin
from refvit.checkpoint.safetensors import MAX_HEADER_SIZE
from refvit.errors import CheckpointError, UnsafeCheckpointError
from test_fuzz_support import time_guard


def raises(cls, call, *fragments):
    """`call()` raises exactly `cls`, and the message holds every fragment; returns the message."""
    with pytest.raises(cls) as info:
        call()
    message = str(info.value)
    assert type(info.value) is cls, (type(info.value), message)
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)
    return message


def bin_dir(tmp_path, pickle_bytes: bytes, storages=None, case="vit_model"):
    """A save_pretrained directory: a golden case's config.json beside a hand-made pytorch_model.bin."""
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(golden_case(case) / "config.json", d / "config.json")
    torch_zip(d / "pytorch_model.bin", pickle_bytes, storages or {})
    return d


class Evil:
    """Unpickling this with `pickle` would call func(*args)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# ----------------------------------------------------------------------------------- end to end: nothing runs


def evil_pickles(sentinel):
    """(name, pickle bytes): every way a pickle can call or import something, touching `sentinel` if it ran."""
    cmd = f"touch {sentinel}"
    out = [(f"pickle.dumps protocol {p}", pickle.dumps({"w": Evil(os.system, cmd)}, protocol=p))
           for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    hand = {
        "GLOBAL+REDUCE": Pickle().global_("os", "system").str_(cmd).raw(b"\x85R"),
        "STACK_GLOBAL+REDUCE": Pickle(4).str_("os").str_("system").raw(b"\x93").str_(cmd).raw(b"\x85R"),
        "INST": Pickle().mark().str_(cmd).raw(b"ios\nsystem\n"),
        "OBJ": Pickle().mark().global_("os", "system").str_(cmd).raw(b"o"),
        "NEWOBJ": Pickle().global_("subprocess", "Popen").mark().str_("touch").str_(str(sentinel)).raw(b"l")
                          .raw(b"\x85").raw(b"\x81"),
        "NEWOBJ_EX": Pickle(4).global_("subprocess", "Popen").raw(b")}").raw(b"\x92"),
        "EXT1 (copyreg extension registry)": Pickle().raw(b"\x82\x01"),
        "PERSID (text persistent id)": Pickle().raw(b"P" + cmd.encode() + b"\n"),
        "BUILD __setstate__ on an allowed global": Pickle().global_("collections", "OrderedDict").raw(b"}").raw(b"b"),
        "REDUCE of an allowed class with arguments": Pickle().global_("collections", "OrderedDict").raw(b"]")
                                                             .raw(b"\x85R"),
        "getattr via STACK_GLOBAL dotted name": Pickle(4).str_("builtins").str_("getattr").raw(b"\x93"),
        "allowlisted name with a trailing space": Pickle().global_("collections", "OrderedDict ").raw(b")R"),
        "importlib": Pickle().global_("importlib", "import_module").str_("antigravity").raw(b"\x85R"),
        "torch global outside the allowlist": Pickle().global_("torch", "load").str_("x").raw(b"\x85R"),
        "numpy global": Pickle().global_("numpy.core.multiarray", "_reconstruct").raw(b")R"),
    }
    out += [(name, p.stop().bytes()) for name, p in hand.items()]
    return out


@pytest.mark.parametrize("index", range(len(evil_pickles("x"))))
def test_malicious_bin_through_from_pretrained(tmp_path, index):
    sentinel = tmp_path / "SENTINEL"
    name, data = evil_pickles(sentinel)[index]
    d = bin_dir(tmp_path, data)
    refvit.from_pretrained(golden_case("vit_model"))  # warm: anything refvit imports lazily is imported now
    modules = set(sys.modules)
    with pytest.raises(CheckpointError) as info:
        refvit.from_pretrained(d)
    message = str(info.value)
    assert str(d / "pytorch_model.bin") in message and "byte " in message, (name, message)
    assert isinstance(info.value, UnsafeCheckpointError) or "BUILD" in message, (name, message)
    assert set(sys.modules) == modules, sorted(set(sys.modules) - modules)
    assert not sentinel.exists()


def test_malicious_shard_refused_and_nothing_half_loaded(tmp_path):
    """A sharded .bin whose second shard is evil: the error names that shard; no model, no partial state."""
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(golden_case("vit_model") / "config.json", d / "config.json")
    tensors = read_safetensors(golden_case("vit_model") / "model.safetensors")
    names = sorted(tensors)
    write_torch_state_dict(d / "pytorch_model-00001-of-00002.bin", {k: np.array(tensors[k]) for k in names[:5]})
    evil = pickle.dumps({k: Evil(os.system, f"touch {tmp_path / 'SENTINEL'}") for k in names[5:]}, protocol=2)
    torch_zip(d / "pytorch_model-00002-of-00002.bin", evil)
    weight_map = {k: "pytorch_model-00001-of-00002.bin" if i < 5 else "pytorch_model-00002-of-00002.bin"
                  for i, k in enumerate(names)}
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    raises(UnsafeCheckpointError, lambda: refvit.from_pretrained(d), "pytorch_model-00002-of-00002.bin", "system")
    assert not (tmp_path / "SENTINEL").exists()
    model = refvit.from_pretrained(golden_case("vit_model"))  # the failure left nothing behind
    assert model.num_parameters > 0


def test_reading_a_bin_imports_nothing_in_a_fresh_interpreter(tmp_path):
    """From a fresh interpreter: loading a whole model from a .bin imports no module beyond what loading the same
    model from safetensors did (refvit imports Numba and its kernels lazily, when the first model is built)."""
    d = bin_dir(tmp_path, b"")
    tensors = read_safetensors(golden_case("vit_model") / "model.safetensors")
    write_torch_state_dict(d / "pytorch_model.bin", {k: np.array(v) for k, v in tensors.items()})
    code = ("import sys, refvit; refvit.from_pretrained(sys.argv[2]); before = set(sys.modules); "
            "m = refvit.from_pretrained(sys.argv[1]); "
            "new = sorted(set(sys.modules) - before); assert not new, new; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(d), str(golden_case("vit_model"))], check=True,
                   cwd=os.path.dirname(os.path.dirname(__file__)))


def test_allowlists_are_small_and_exact():
    """The opcode and global allowlists are a contract: a change to them must be deliberate."""
    assert torch_bin.ALLOWED_OPCODES == {
        "PROTO", "FRAME", "STOP", "MARK", "BINPUT", "LONG_BINPUT", "MEMOIZE", "BINGET", "LONG_BINGET", "NONE",
        "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE",
        "SHORT_BINUNICODE", "BINUNICODE8", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES",
        "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "EMPTY_DICT", "APPEND", "APPENDS",
        "SETITEM", "SETITEMS", "GLOBAL", "STACK_GLOBAL", "BINPERSID", "REDUCE", "BUILD"}
    assert torch_bin.ALLOWED_GLOBALS == {
        "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state"} | {f"torch.{s}" for s in torch_bin.STORAGE_DTYPES}


# --------------------------------------------------------------------------------------------- memo tricks


def dag(p: Pickle, levels: int = 62) -> Pickle:
    """Push a tuple DAG of 2**levels leaves in ~4 bytes per level: t = (t, t), through MEMOIZE and BINGET."""
    p.raw(b")")
    for i in range(levels):
        p.raw(b"\x94").raw(b"h" + bytes([i])).raw(b"\x86")
    return p


def persid_with(key=None, location=None, numel=None, whole=False) -> Pickle:
    p = Pickle(4).raw(b"}").str_("w").global_("torch._utils", "_rebuild_tensor_v2").mark()
    if whole:
        dag(p)
    else:
        p.mark().str_("storage").global_("torch", "FloatStorage")
        dag(p) if key else p.str_("0")
        dag(p) if location else p.str_("cpu")
        dag(p) if numel else p.int_(1)
        p.raw(b"t")
    return p.raw(b"Q").int_(0).tuple_((1,)).tuple_((1,)).raw(b"\x89").ordered_dict().raw(b"tRs")


MEMO_TRICKS = {
    "dict key (SETITEM)": (Pickle(4).raw(b"}"), lambda p: dag(p).int_(1).raw(b"s"), "is a tuple"),
    "dict key (SETITEMS)": (Pickle(4).raw(b"}("), lambda p: dag(p).int_(1).raw(b"u"), "is a tuple"),
    "state dict key": (Pickle(4).ordered_dict().raw(b"("), lambda p: dag(p).str_("x").raw(b"u"), "is a tuple"),
    "persistent id": (Pickle(4), lambda p: dag(p).raw(b"Q"), "persistent id"),
    "REDUCE callable": (Pickle(4), lambda p: dag(p).raw(b")R"), "REDUCE of"),
    "storage key": (persid_with(key=True), lambda p: p, "unsafe storage key"),
    "storage location": (persid_with(location=True), lambda p: p, "non-string location"),
    "storage numel": (persid_with(numel=True), lambda p: p, "invalid numel"),
    "whole persistent id": (persid_with(whole=True), lambda p: p, "persistent id"),
    "tensor offset": (Pickle(4).raw(b"}").str_("w").global_("torch._utils", "_rebuild_tensor_v2").mark()
                      .mark().str_("storage").global_("torch", "FloatStorage").str_("0").str_("cpu").int_(1)
                      .raw(b"tQ"), lambda p: dag(p).tuple_((1,)).tuple_((1,)).raw(b"\x89").ordered_dict()
                      .raw(b"tRs"), "bad offset/size/stride"),
    "_rebuild_parameter argument": (Pickle(4).global_("torch._utils", "_rebuild_parameter"),
                                    lambda p: dag(p).raw(b"\x89").ordered_dict().raw(b"\x87R"), "instead of a tensor"),
}


@pytest.mark.parametrize("trick", sorted(MEMO_TRICKS))
def test_memo_dag_is_refused_in_bounded_time(tmp_path, trick):
    """A 250-byte pickle holding a tuple DAG of 2**62 leaves: hashing or printing it must not be attempted."""
    start, build, fragment = MEMO_TRICKS[trick]
    torch_zip(tmp_path / "dag.bin", build(start).stop().bytes(), {"0": np.ones(1, "<f4").tobytes()})
    t0 = time.perf_counter()
    with time_guard(10):
        message = raises(CheckpointError, lambda: read_torch_bin(tmp_path / "dag.bin"), tmp_path / "dag.bin",
                         fragment) if trick != "REDUCE callable" else \
            raises(UnsafeCheckpointError, lambda: read_torch_bin(tmp_path / "dag.bin"), fragment)
    assert time.perf_counter() - t0 < 2 and len(message) < 1000, message


def test_memo_aliasing_cannot_smuggle_a_non_tensor_into_the_state_dict(tmp_path):
    """The state dict is memoized, checked nowhere yet, then mutated through BINGET after its tensors were added."""
    p = Pickle().raw(b"}").raw(b"q\x00").str_("w").global_("torch._utils", "_rebuild_tensor_v2").mark()
    p.mark().str_("storage").global_("torch", "FloatStorage").str_("0").str_("cpu").int_(1).raw(b"tQ")
    p.int_(0).tuple_((1,)).tuple_((1,)).raw(b"\x89").ordered_dict().raw(b"tRs")
    p.raw(b"h\x00").str_("evil").global_("collections", "OrderedDict")
    p.raw(b"s")  # SETITEM on the aliased dict: {'w': tensor, 'evil': <OrderedDict class>} is the memo's dict too
    torch_zip(tmp_path / "alias.bin", p.stop().bytes(), {"0": np.ones(1, "<f4").tobytes()})
    raises(CheckpointError, lambda: read_torch_bin(tmp_path / "alias.bin"), tmp_path / "alias.bin",
           "entry 'evil' is a _Global, not a tensor")


def test_self_referencing_list_in_an_error_message(tmp_path):
    p = Pickle().raw(b"]").raw(b"q\x00").raw(b"h\x00").raw(b"a")  # l = []; l.append(l)
    p.raw(b"Q")  # ... used as a persistent id
    torch_zip(tmp_path / "self.bin", p.stop().bytes())
    message = raises(CheckpointError, lambda: read_torch_bin(tmp_path / "self.bin"), "persistent id [[")
    assert len(message) < 500


@pytest.mark.parametrize("levels", [20, 62])
def test_huge_dag_as_a_state_dict_value_is_reported_by_type(tmp_path, levels):
    p = Pickle(4).raw(b"}").str_("w")
    dag(p, levels).raw(b"s")
    torch_zip(tmp_path / "v.bin", p.stop().bytes())
    with time_guard(10):
        raises(CheckpointError, lambda: read_torch_bin(tmp_path / "v.bin"), "entry 'w' is a tuple, not a tensor")


# ------------------------------------------------------------------------------------- wrong types, bad pids


def tensor_ops(p: Pickle) -> Pickle:
    p.global_("torch._utils", "_rebuild_tensor_v2").mark()
    p.mark().str_("storage").global_("torch", "FloatStorage").str_("0").str_("cpu").int_(1).raw(b"tQ")
    return p.int_(0).tuple_((1,)).tuple_((1,)).raw(b"\x89").ordered_dict().raw(b"tR")


TARGETS = {  # ops that push one object of each kind an attacker could aim BUILD / SETITEM / APPEND at
    "tensor": tensor_ops,
    "global": lambda p: p.global_("torch", "FloatStorage"),
    "storage": lambda p: p.mark().str_("storage").global_("torch", "FloatStorage").str_("0").str_("cpu").int_(1)
                          .raw(b"tQ"),
    "tuple": lambda p: p.raw(b")"),
    "None": lambda p: p.raw(b"N"),
    "str": lambda p: p.str_("x"),
    "int": lambda p: p.int_(3),
    "bytes": lambda p: p.raw(b"C\x01x"),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("op", ["BUILD", "SETITEM", "SETITEMS", "APPEND", "APPENDS"])
def test_container_opcodes_on_the_wrong_type(tmp_path, target, op):
    p = TARGETS[target](Pickle())
    p.raw({"BUILD": b"}b", "SETITEM": b"K\x01K\x02s", "SETITEMS": b"(K\x01K\x02u", "APPEND": b"K\x01a",
           "APPENDS": b"(K\x01e"}[op])
    torch_zip(tmp_path / "t.bin", p.stop().bytes(), {"0": np.ones(1, "<f4").tobytes()})
    kind = {"tensor": "ndarray", "global": "_Global", "storage": "_Storage", "None": "NoneType"}.get(target, target)
    fragment = "BUILD is only accepted on an OrderedDict" if op == "BUILD" else f"cannot add items to a {kind}"
    raises(CheckpointError, lambda: read_torch_bin(tmp_path / "t.bin"), tmp_path / "t.bin", "byte ", fragment)


@pytest.mark.parametrize("pid, fragment", [
    (lambda p: p.str_("storage"), "persistent id 'storage'"),
    (lambda p: p.mark().str_("storage").str_("FloatStorage").str_("0").str_("cpu").int_(1).raw(b"t"),
     "names no known storage type"),
    (lambda p: p.mark().str_("storage").global_("torch", "UntypedStorage").str_("0").str_("cpu").int_(1)
     .raw(b"t"), "'torch.UntypedStorage'"),  # refused as a global before it can be a storage type
    (lambda p: p.mark().str_("module").global_("torch", "FloatStorage").str_("0").str_("cpu").int_(1).raw(b"t"),
     "is not ('storage', type, key, location, numel)"),
    (lambda p: p.mark().str_("storage").global_("torch", "FloatStorage").str_("/etc/passwd").str_("cpu").int_(1)
     .raw(b"t"), "unsafe storage key '/etc/passwd'"),
    (lambda p: p.mark().str_("storage").global_("torch", "FloatStorage").str_("..\\..\\x").str_("cpu").int_(1)
     .raw(b"t"), "unsafe storage key"),
])
def test_persistent_ids_that_are_not_storages(tmp_path, pid, fragment):
    p = pid(Pickle()).raw(b"Q")
    torch_zip(tmp_path / "p.bin", p.stop().bytes(), {"0": np.ones(1, "<f4").tobytes()})
    with pytest.raises(CheckpointError, match=None) as info:
        read_torch_bin(tmp_path / "p.bin")
    assert fragment in str(info.value) and str(tmp_path / "p.bin") in str(info.value), str(info.value)


# ----------------------------------------------------------------------------------------------- zip tricks


def overlapping_zip(path, plain: dict[str, bytes], overlapped: list[str], kernel_plain: bytes) -> None:
    """A zip whose `overlapped` entries share bytes (D. Fifield's "quoted overlap" bomb): entry i's deflate stream
    quotes the local headers of entries i+1.. in stored blocks, then ends in one shared compressed kernel, so every
    entry inflates to ~len(kernel_plain) bytes while the kernel is stored once. `plain` entries come first, stored."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    kernel = comp.compress(kernel_plain) + comp.flush()

    def local_header(name: bytes, method: int, crc: int, csize: int, size: int) -> bytes:
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, csize, size, len(name), 0) + name

    records = []  # (name, method, crc, compressed size, size, local header, data) in file order
    for name, data in plain.items():
        crc = zlib.crc32(data)
        records.append((name.encode(), 0, crc, len(data), len(data), local_header(name.encode(), 0, crc, len(data),
                                                                                  len(data)), data))
    chain, content, next_header = kernel, kernel_plain, None
    group = []
    for name in reversed(overlapped):
        if next_header is not None:  # quote the next local header in a non-final stored block
            chain = b"\x00" + struct.pack("<HH", len(next_header), len(next_header) ^ 0xFFFF) + next_header + chain
            content = next_header + content
        crc = zlib.crc32(content)
        header = local_header(name.encode(), 8, crc, len(chain), len(content))
        group.insert(0, (name.encode(), 8, crc, len(chain), len(content), header, chain))
        next_header = header
    out, central, offsets = bytearray(), bytearray(), []
    for rec in records:
        offsets.append(len(out))
        out += rec[5] + rec[6]
    position = len(out)
    out += group[0][5] + group[0][6]  # the first overlapped entry's stream holds all the others
    for i, rec in enumerate(group):
        offsets.append(position)
        position += len(rec[5]) + 5  # past this header and the stored-block header quoting the next one
    for (name, method, crc, csize, size, _, _), offset in zip(records + group, offsets):
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, csize, size,
                               len(name), 0, 0, 0, 0, 0, offset) + name
    n = len(records) + len(group)
    path.write_bytes(bytes(out + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central),
                                                       len(out), 0)))


def overlap_bomb(path, n: int = 200, kernel_bytes: int = 2**20) -> None:
    """A torch archive of n storages that all inflate to ~kernel_bytes from one shared kernel."""
    specs = [TensorSpec(f"t{i}", "ByteStorage", str(i), 1, 0, (1,), (1,)) for i in range(n)]
    plain = {"archive/data.pkl": torch_state_dict_pickle(specs), "archive/byteorder": b"little"}
    overlapping_zip(path, plain, [f"archive/data/{i}" for i in range(n)], bytes(kernel_bytes))


def inflate_without_zipfile(path, info: zipfile.ZipInfo) -> bytes:
    """One entry inflated straight from its local header with zlib: what a zip reader with no overlap check
    (CPython's zipfile before 3.12.2 / 3.11.8) returns. Independent of the running Python's own zip defences."""
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    data = zlib.decompressobj(-15).decompress(raw[start:start + info.compress_size])
    assert zlib.crc32(data) == info.CRC and len(data) == info.file_size
    return data


def zipfile_refusal(path) -> str | None:
    """This Python's zipfile on the bomb: None if it inflates every entry, else its refusal message (newer
    CPythons refuse overlapping entries themselves: "Overlapped entries: ... (possible zip bomb)")."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                zf.read(info)
    except zipfile.BadZipFile as e:
        return str(e)
    return None


def test_overlap_bomb_is_a_bomb(tmp_path):
    """The construction is a bomb: a plain inflater (no overlap check) gets every entry in full, on any Python.
    This Python's zipfile either does the same (older CPythons) or refuses the overlap itself (newer ones)."""
    path = tmp_path / "bomb.bin"
    overlap_bomb(path, n=20, kernel_bytes=2**16)
    with zipfile.ZipFile(path) as zf:  # the central directory opens on every Python; reading is what differs
        entries = [info for info in zf.infolist() if "/data/" in info.filename]
    total = sum(len(inflate_without_zipfile(path, info)) for info in entries)
    assert len(entries) == 20 and total > 20 * 2**16 and total > 50 * os.path.getsize(path)
    refusal = zipfile_refusal(path)
    assert refusal is None or "overlap" in refusal.lower(), refusal


def test_overlapping_zip_entries_refused(tmp_path):
    """200 storages of 1 MiB each from a ~40 kB file (~5000:1 overall, each entry under the 1100:1 ratio limit)."""
    path = tmp_path / "bomb.bin"
    overlap_bomb(path)
    with time_guard(10):
        raises(CheckpointError, lambda: read_torch_bin(path), path, "'archive/data/0' overlaps", "zip bomb")


def test_total_storage_bytes_bounded_even_without_the_overlap_check(tmp_path, monkeypatch):
    """Defence in depth: all storages together may inflate to at most MAX_COMPRESSION_RATIO x the file size.

    refvit refuses the bomb with a CheckpointError naming the file on every Python. Where this Python's zipfile
    inflates overlapping entries, the refusal is refvit's own total bound ("over the limit"); where zipfile
    refuses them itself (CPython >= 3.12.2 / 3.11.8), refvit reports that refusal (it is read first)."""
    monkeypatch.setattr(torch_bin, "_check_no_overlap", lambda zf, path: None)
    path = tmp_path / "bomb.bin"
    overlap_bomb(path)
    limit = torch_bin.MAX_COMPRESSION_RATIO * os.path.getsize(path) + 1024
    assert limit < 200 * 2**20
    runtime_refusal = zipfile_refusal(path)
    with time_guard(20):
        message = raises(CheckpointError, lambda: read_torch_bin(path), path)
    if runtime_refusal is None:
        assert "over the limit" in message, message
    else:
        assert "cannot read zip entry 'archive/data/" in message and "overlap" in message.lower(), message


def test_legitimate_deflated_archive_still_reads(tmp_path):
    write_torch_state_dict(tmp_path / "m.bin", {f"w{i}": np.full((64, 64), i, np.float32) for i in range(5)},
                           compression=zipfile.ZIP_DEFLATED)
    assert sorted(read_torch_bin(tmp_path / "m.bin")) == [f"w{i}" for i in range(5)]


def test_encrypted_entry_refused(tmp_path):
    path = tmp_path / "enc.bin"
    write_torch_state_dict(path, {"w": np.ones(3, np.float32)})
    raw = bytearray(path.read_bytes())
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = raw.index(signature)  # the first entry, archive/data.pkl: set its "encrypted" flag bit
        raw[pos + flag_offset] |= 1
    path.write_bytes(bytes(raw))
    raises(CheckpointError, lambda: read_torch_bin(path), path, "archive/data.pkl")


def test_top_level_data_pkl_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.bin", "w") as zf:
        zf.writestr("data.pkl", Pickle().raw(b"}").stop().bytes())
    raises(CheckpointError, lambda: read_torch_bin(tmp_path / "z.bin"), "must sit at '<archive>/data.pkl'")


def test_zip_with_a_huge_central_directory_claim(tmp_path):
    path = tmp_path / "cd.bin"
    write_torch_state_dict(path, {"w": np.ones(3, np.float32)})
    raw = bytearray(path.read_bytes())
    eocd = raw.rindex(b"PK\x05\x06")
    raw[eocd + 12 : eocd + 16] = struct.pack("<I", 0xFFFFFFF0)  # a 4 GB central directory claimed
    path.write_bytes(bytes(raw))
    with time_guard(10):
        raises(CheckpointError, lambda: read_torch_bin(path), path, "zip archive")


# ------------------------------------------------------------------------------------------ bounded resources


def test_limits_are_named_constants():
    assert MAX_HEADER_SIZE == 100_000_000
    assert torch_bin.MAX_PICKLE_BYTES == 64 * 2**20
    assert torch_bin.MAX_STRING_BYTES == 2**20
    assert torch_bin.MAX_MEMO_ENTRIES == 2**20
    assert torch_bin.MAX_STACK_ITEMS == 2**22
    assert torch_bin.MAX_MARK_DEPTH == 1000
    assert torch_bin.MAX_TENSOR_RANK == 64
    assert torch_bin.MAX_EXPANDED_ELEMENTS == 2**24
    assert torch_bin.MAX_COMPRESSION_RATIO == 1100
    assert torch_bin.MAX_COPIED_SLACK_BYTES == 2**28


def test_memo_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_bin, "MAX_MEMO_ENTRIES", 100)
    torch_zip(tmp_path / "m.bin", Pickle(4).raw(b"N\x94" * 101).stop().bytes())
    raises(CheckpointError, lambda: read_torch_bin(tmp_path / "m.bin"), tmp_path / "m.bin", "memo exceeds 100")
    torch_zip(tmp_path / "m.bin", Pickle().raw(b"Nr" + struct.pack("<I", 2**32 - 1)).stop().bytes())  # index 2**32-1
    raises(CheckpointError, lambda: read_torch_bin(tmp_path / "m.bin"), "holds a NoneType, not a state dict")


def test_stack_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_bin, "MAX_STACK_ITEMS", 1000)
    torch_zip(tmp_path / "s.bin", Pickle().raw(b"N" * 1001).stop().bytes())
    raises(CheckpointError, lambda: read_torch_bin(tmp_path / "s.bin"), tmp_path / "s.bin", "stack exceeds 1000")


@pytest.mark.parametrize("opcode", [b"B", b"\x8e", b"T", b"\x8d"])  # BINBYTES, BINBYTES8, BINSTRING, BINUNICODE8
def test_every_sized_string_opcode_is_bounded(tmp_path, opcode):
    size = struct.pack("<Q" if opcode in (b"\x8e", b"\x8d") else "<I", 2**31 - 1)
    torch_zip(tmp_path / "b.bin", Pickle(4).raw(opcode + size).stop().bytes())
    cls = UnsafeCheckpointError if opcode == b"\x8e" else CheckpointError  # BINBYTES8 is not even allowed
    message = raises(cls, lambda: read_torch_bin(tmp_path / "b.bin"), tmp_path / "b.bin", "byte 2")
    assert "exceeds the limit of" in message or "not in the allowlist" in message, message


def test_nesting_depth_of_tuples_is_not_a_recursion(tmp_path):
    """200k nested TUPLE1s: the interpreter is iterative, and the error message's repr is bounded."""
    p = Pickle().raw(b")" + b"\x85" * 200_000).raw(b"Q")
    torch_zip(tmp_path / "n.bin", p.stop().bytes())
    with time_guard(20):
        message = raises(CheckpointError, lambda: read_torch_bin(tmp_path / "n.bin"), "persistent id ((((")
    assert len(message) < 500


def test_copied_tensor_bytes_bounded_by_storage_bytes(tmp_path, monkeypatch):
    """Expanded (stride-0) views of one 8-byte storage: each alone is allowed, together they may not multiply memory
    (before the limit, 200 views of 2**24 doubles from a 20 kB file asked for 27 GB)."""
    monkeypatch.setattr(torch_bin, "MAX_COPIED_SLACK_BYTES", 10_000)
    specs = [TensorSpec(f"t{i}", "DoubleStorage", "0", 1, 0, (1000,), (0,)) for i in range(3)]
    torch_zip(tmp_path / "x.bin", torch_state_dict_pickle(specs), {"0": np.zeros(1).tobytes()})
    raises(CheckpointError, lambda: read_torch_bin(tmp_path / "x.bin"), tmp_path / "x.bin", "storage '0'",
           "total 16000 bytes, over the limit of 10016")
    specs = [TensorSpec(f"t{i}", "DoubleStorage", "0", 1, 0, (1000,), (0,)) for i in range(1)]
    torch_zip(tmp_path / "x.bin", torch_state_dict_pickle(specs), {"0": np.zeros(1).tobytes()})
    assert read_torch_bin(tmp_path / "x.bin")["t0"].shape == (1000,)


def test_views_are_free_and_bf16_fits_the_copy_budget(tmp_path, monkeypatch):
    """Contiguous views cost nothing; a BF16 checkpoint (every tensor a float32 copy) stays within 2x its storages."""
    monkeypatch.setattr(torch_bin, "MAX_COPIED_SLACK_BYTES", 0)
    n = 4096
    specs = [TensorSpec(f"v{i}", "FloatStorage", "0", n, 0, (n,), (1,)) for i in range(50)]
    specs += [TensorSpec("b", "BFloat16Storage", "1", n, 0, (64, 64), (64, 1))]
    torch_zip(tmp_path / "v.bin", torch_state_dict_pickle(specs),
              {"0": np.zeros(n, "<f4").tobytes(), "1": np.zeros(n, "<u2").tobytes()})
    out = read_torch_bin(tmp_path / "v.bin")
    assert len(out) == 51 and out["b"].dtype == np.float32


def test_safetensors_header_limit_checked_before_reading(tmp_path):
    """A header length of MAX_HEADER_SIZE + 1 in a 16-byte file: refused from the 8-byte prefix alone."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes("{}", b"", header_len=MAX_HEADER_SIZE + 1) + b" " * 8)
    raises(CheckpointError, lambda: read_safetensors(path), path, f"limit of {MAX_HEADER_SIZE}")


def test_safetensors_entry_count_is_bounded_by_the_header(tmp_path):
    """100k zero-size tensors: the header bounds the work (linear), nothing is allocated per tensor beyond a view."""
    header = {f"t{i}": entry("F32", [0], 0, 0) for i in range(100_000)}
    path = tmp_path / "many.safetensors"
    path.write_bytes(safetensors_bytes(header))
    with time_guard(20):
        assert len(read_safetensors(path)) == 100_000


@pytest.mark.parametrize("dtype, shape", [("F64", [0, 2**63 - 1]), ("U8", [0, 2**61, 4]), ("F32", [2**62, 0])])
def test_empty_safetensors_tensor_numpy_cannot_represent(tmp_path, dtype, shape):
    """Found by fuzzing: an empty tensor whose other dims x itemsize pass 2**63 made NumPy raise ValueError."""
    path = tmp_path / "e.safetensors"
    path.write_bytes(safetensors_bytes({"w": entry(dtype, shape, 0, 0)}))
    raises(CheckpointError, lambda: read_safetensors(path), path, "tensor 'w'", "too large for NumPy")


def test_empty_safetensors_tensor_numpy_can_represent(tmp_path):
    path = tmp_path / "e.safetensors"
    path.write_bytes(safetensors_bytes({"w": entry("U8", [0, 2**62], 0, 0)}))
    assert read_safetensors(path)["w"].shape == (0, 2**62)


# ----------------------------------------------------------------------------- end to end: safetensors, state


@pytest.mark.parametrize("damage, fragment", [
    (lambda raw: raw[:5], "shorter than the 8-byte"),
    (lambda raw: struct.pack("<Q", 2**40) + raw[8:], "exceeds the limit"),
    (lambda raw: raw[:-3], "file truncated"),
    (lambda raw: raw + b"\x00" * 8, "trailing bytes"),
    (lambda raw: raw[:8] + b"[" + raw[9:], "must be a JSON object"),
])
def test_broken_safetensors_through_from_pretrained_names_the_file(tmp_path, damage, fragment):
    d = tmp_path / "m"
    shutil.copytree(golden_case("vit_model"), d)
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(damage(raw))
    raises(CheckpointError, lambda: refvit.from_pretrained(d), d / "model.safetensors", fragment)


def global_state():
    import numba
    import scipy.special  # noqa: F401  (refvit imports it lazily; its own import adds a warnings filter)

    return (np.geterr(), list(warnings.filters), Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES,
            numba.get_num_threads(), sys.getrecursionlimit(), dict(os.environ), np.get_printoptions())


def test_loading_good_and_bad_checkpoints_changes_no_global_state(tmp_path):
    before = global_state()
    refvit.from_pretrained(golden_case("deit_teacher_bin"))
    refvit.from_pretrained(golden_case("deit_teacher"), backend="numpy")(np.zeros((1, 3, 32, 32), np.float32))
    for index in range(3):
        sentinel = tmp_path / f"S{index}"
        name, data = evil_pickles(sentinel)[index]
        torch_zip(tmp_path / f"e{index}.bin", data)
        with pytest.raises(CheckpointError):
            read_torch_bin(tmp_path / f"e{index}.bin")
    overlap_bomb(tmp_path / "bomb.bin", n=5, kernel_bytes=1024)
    with pytest.raises(CheckpointError):
        read_torch_bin(tmp_path / "bomb.bin")
    assert global_state() == before


def test_zip_needing_a_newer_extract_version(tmp_path):
    """Found by fuzzing: zipfile raises NotImplementedError("zip file version 6.4") while reading the directory."""
    path = tmp_path / "v.bin"
    write_torch_state_dict(path, {"w": np.ones(3, np.float32)})
    raw = bytearray(path.read_bytes())
    pos = raw.index(b"PK\x01\x02")
    raw[pos + 6 : pos + 8] = struct.pack("<H", 64)  # "version needed to extract": 6.4
    path.write_bytes(bytes(raw))
    raises(CheckpointError, lambda: read_torch_bin(path), path, "cannot open as a zip archive", "6.4")
