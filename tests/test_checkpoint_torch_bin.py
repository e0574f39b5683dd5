"""refvit.checkpoint.torch_bin: torch.save archives read without torch, and nothing unsafe executed."""

from __future__ import annotations

import builtins
import importlib
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest_checkpoint_helpers import (
    Pickle,
    TensorSpec,
    torch_state_dict_pickle,
    torch_tensor_pickle,
    torch_zip,
    write_torch_state_dict,
)
from refvit.checkpoint import read_torch_bin
from refvit.checkpoint.torch_bin import MAX_MARK_DEPTH, MAX_STRING_BYTES
from refvit.errors import CheckpointError, UnsafeCheckpointError


def assert_error(path, *fragments, cls=CheckpointError):
    """Reading `path` raises exactly `cls`, naming the file and every fragment."""
    with pytest.raises(cls) as info:
        read_torch_bin(path)
    message = str(info.value)
    assert type(info.value) is cls, message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def f32_storage(values) -> bytes:
    return np.asarray(values, "<f4").tobytes()


def one_tensor_file(path, spec: TensorSpec, storage: bytes, **kwargs):
    torch_zip(path, torch_state_dict_pickle([spec]), {spec.key: storage}, **kwargs)
    return path


# ------------------------------------------------------------------------------ good, without torch

ALL_DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"]


def test_hand_built_state_dict_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"t.{d}": (rng.standard_normal((3, 4)) * 50).astype(d) for d in ALL_DTYPES}
    arrays["scalar"] = np.array(7, np.int64)
    arrays["empty"] = np.zeros((0, 5), np.float32)
    write_torch_state_dict(tmp_path / "pytorch_model.bin", arrays)
    out = read_torch_bin(tmp_path / "pytorch_model.bin")
    assert list(out) == list(arrays)
    for name, arr in arrays.items():
        assert out[name].dtype == arr.dtype and out[name].shape == arr.shape
        np.testing.assert_array_equal(out[name], arr)
        assert out[name].flags.c_contiguous and not out[name].flags.writeable


def test_strided_offset_views_of_a_shared_storage(tmp_path):
    base = np.arange(24, dtype=np.float32)
    specs = [
        TensorSpec("full", "FloatStorage", "0", 24, 0, (4, 6), (6, 1)),
        TensorSpec("slice", "FloatStorage", "0", 24, 2, (3, 2), (4, 2)),  # base[2:14].reshape(3,4)[:, ::2]
        TensorSpec("transposed", "FloatStorage", "0", 24, 0, (6, 4), (1, 6)),
        TensorSpec("expanded", "FloatStorage", "0", 24, 5, (3, 2), (0, 1)),
        TensorSpec("param", "FloatStorage", "0", 24, 23, (1,), (1,), parameter=True),
    ]
    torch_zip(tmp_path / "m.bin", torch_state_dict_pickle(specs), {"0": base.tobytes()})
    out = read_torch_bin(tmp_path / "m.bin")
    np.testing.assert_array_equal(out["full"], base.reshape(4, 6))
    np.testing.assert_array_equal(out["slice"], base[2:14].reshape(3, 4)[:, ::2])
    np.testing.assert_array_equal(out["transposed"], base.reshape(4, 6).T)
    np.testing.assert_array_equal(out["expanded"], np.broadcast_to(base[5:7], (3, 2)))
    np.testing.assert_array_equal(out["param"], [23.0])
    assert all(a.flags.c_contiguous for a in out.values())


def test_bf16_storage_widened_exactly(tmp_path):
    bits = np.array([0x3F80, 0xC000, 0x7F80, 0x8000, 0x0001, 0x3F81], "<u2")
    spec = TensorSpec("w", "BFloat16Storage", "0", 6, 0, (2, 3), (3, 1))
    out = read_torch_bin(one_tensor_file(tmp_path / "m.bin", spec, bits.tobytes()))["w"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.ravel().view(np.uint32), bits.astype(np.uint32) << 16)
    np.testing.assert_array_equal(out.ravel(), [1.0, -2.0, np.inf, -0.0, 2.0**-133, 1.0078125])


def test_big_endian_archive(tmp_path):
    spec = TensorSpec("w", "FloatStorage", "0", 3, 0, (3,), (1,))
    storage = np.array([1.5, -2.0, 3.25], ">f4").tobytes()
    out = read_torch_bin(one_tensor_file(tmp_path / "m.bin", spec, storage, byteorder=b"big"))["w"]
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, [1.5, -2.0, 3.25])


def test_big_endian_bf16(tmp_path):
    spec = TensorSpec("w", "BFloat16Storage", "0", 2, 0, (2,), (1,))
    storage = np.array([0x3F80, 0xC000], ">u2").tobytes()
    out = read_torch_bin(one_tensor_file(tmp_path / "m.bin", spec, storage, byteorder=b"big"))["w"]
    np.testing.assert_array_equal(out, [1.0, -2.0])


def test_missing_byteorder_means_little(tmp_path):
    spec = TensorSpec("w", "IntStorage", "0", 2, 0, (2,), (1,))
    storage = np.array([1, -5], "<i4").tobytes()
    out = read_torch_bin(one_tensor_file(tmp_path / "m.bin", spec, storage, byteorder=None))["w"]
    np.testing.assert_array_equal(out, [1, -5])


def test_rebuild_parameter_with_state(tmp_path):
    p = Pickle().ordered_dict().str_("w").global_("torch._utils", "_rebuild_parameter_with_state")
    p.mark()
    torch_tensor_pickle(p, TensorSpec("w", "FloatStorage", "0", 2, 0, (2,), (1,)))
    p.raw(b"\x88").ordered_dict().raw(b"}").raw(b"t").reduce().raw(b"s").stop()
    torch_zip(tmp_path / "m.bin", p.bytes(), {"0": f32_storage([4, 5])})
    assert read_torch_bin(tmp_path / "m.bin")["w"].tolist() == [4.0, 5.0]


def test_reading_imports_nothing(tmp_path):
    """Neither importing refvit.checkpoint nor reading a .bin pulls in torch (or pickle's loaders)."""
    write_torch_state_dict(tmp_path / "m.bin", {"w": np.ones(3, np.float32)})
    code = (
        "import sys; import refvit.checkpoint as c; before = set(sys.modules); "
        f"c.read_torch_bin({str(tmp_path / 'm.bin')!r}); "
        "new = set(sys.modules) - before; assert not new, new; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_without_metadata_build(tmp_path):
    spec = TensorSpec("w", "FloatStorage", "0", 1, 0, (1,), (1,))
    torch_zip(tmp_path / "m.bin", torch_state_dict_pickle([spec], metadata=False), {"0": f32_storage([2])})
    assert read_torch_bin(tmp_path / "m.bin")["w"].tolist() == [2.0]


def test_deflated_archive(tmp_path):
    arrays = {"w": np.zeros((64, 64), np.float32)}
    write_torch_state_dict(tmp_path / "m.bin", arrays, compression=zipfile.ZIP_DEFLATED)
    np.testing.assert_array_equal(read_torch_bin(tmp_path / "m.bin")["w"], arrays["w"])


def test_protocol_4_opcodes(tmp_path):
    """STACK_GLOBAL, MEMOIZE, FRAME, SHORT_BINUNICODE, as torch.save(pickle_protocol=4) writes."""
    p = Pickle(protocol=4).raw(b"\x95" + struct.pack("<Q", 0))
    p.raw(b"\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94").empty_tuple().reduce().raw(b"\x94")
    p.raw(b"\x8c\x01w\x94")
    torch_tensor_pickle(p, TensorSpec("w", "FloatStorage", "k", 2, 0, (2,), (1,)))
    p.raw(b"\x94")  # MEMOIZE the tensor as memo[5]
    p.raw(b"s").raw(b"\x8c\x01v").raw(b"h\x05").raw(b"s").stop()  # {'w': t, 'v': memo[5]}
    torch_zip(tmp_path / "m.bin", p.bytes(), {"k": f32_storage([1, 2])})
    out = read_torch_bin(tmp_path / "m.bin")
    assert list(out) == ["w", "v"]
    assert out["w"].tolist() == out["v"].tolist() == [1.0, 2.0]


# ------------------------------------------------------------------------------ good, with real torch


@pytest.mark.needs_framework
def test_real_torch_save_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
        torch.nn.LayerNorm(4), torch.nn.Linear(4, 2),
    )
    state = model.state_dict()
    shared = torch.arange(48, dtype=torch.float32)
    state["extra.view"] = shared[5:29].view(4, 6)[1:, ::3]  # offset + non-contiguous, same storage
    state["extra.view2"] = shared[10:20]
    state["extra.transposed"] = torch.randn(3, 5).t()
    state["extra.bf16"] = torch.randn(7, 3).to(torch.bfloat16)
    state["extra.bf16_view"] = torch.randn(6, 4).to(torch.bfloat16)[::2, 1:]
    state["extra.f16"] = torch.randn(5).half()
    state["extra.f64"] = torch.randn(2, 2, dtype=torch.float64)
    state["extra.i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    state["extra.u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    state["extra.i16"] = torch.tensor([-3, 4], dtype=torch.int16)
    state["extra.i32"] = torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32)
    state["extra.bool"] = torch.tensor([True, False, True])
    state["extra.scalar"] = torch.tensor(3.5)
    state["extra.empty"] = torch.zeros(0, 3)
    state["extra.expanded"] = torch.randn(1, 3).expand(4, 3)
    state["extra.param"] = torch.nn.Parameter(torch.randn(2, 2))
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    out = read_torch_bin(path)
    assert list(out) == list(state)
    for name, t in state.items():
        expected = t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()
        assert out[name].dtype == expected.dtype, name
        assert out[name].shape == expected.shape, name
        np.testing.assert_array_equal(out[name], expected, err_msg=name)
    assert out["1.num_batches_tracked"].dtype == np.int64


@pytest.mark.needs_framework
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_real_torch_save_pickle_protocols(tmp_path, protocol):
    torch = pytest.importorskip("torch")
    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    torch.save(state, tmp_path / "m.bin", pickle_protocol=protocol)
    out = read_torch_bin(tmp_path / "m.bin")
    np.testing.assert_array_equal(out["a"], np.arange(6.0, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(out["b"], [1.0, 1.0])


@pytest.mark.needs_framework
def test_real_legacy_torch_save_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"a": torch.ones(2)}, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    assert_error(tmp_path / "old.bin", "not a zip archive", "legacy")


@pytest.mark.needs_framework
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_real_torchscript_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "ts.bin"))
    assert_error(tmp_path / "ts.bin", "TorchScript")


# ---------------------------------------------------------------------------------------- malicious


class Evil:
    """Unpickling this with `pickle` would call func(*args)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def sentinel_command(tmp_path) -> str:
    return f"touch {tmp_path / 'SENTINEL'}"


def evil_objects(tmp_path):
    cmd = sentinel_command(tmp_path)
    return [
        (Evil(os.system, cmd), f"{os.system.__module__}.system"),
        (Evil(builtins.exec, "import os; os.system(%r)" % cmd), "builtins.exec"),
        (Evil(builtins.eval, "__import__('os').system(%r)" % cmd), "builtins.eval"),
        (Evil(builtins.getattr, "os", "system"), "builtins.getattr"),
        (Evil(importlib.import_module, "antigravity"), "importlib.import_module"),
        (Evil(subprocess.call, ["touch", str(tmp_path / "SENTINEL")]), "subprocess.call"),
    ]


def first_global(data: bytes) -> str:
    """'module.name' of the first GLOBAL opcode (read with pickletools, which executes nothing)."""
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            return arg.replace(" ", ".")
    raise AssertionError("no GLOBAL opcode")


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("which", range(6))
def test_malicious_reduce_refused(tmp_path, protocol, which):
    obj, qualname = evil_objects(tmp_path)[which]
    data = pickle.dumps(obj, protocol=protocol)
    if protocol < 3:  # pickle's fix_imports writes Python 2 names, e.g. __builtin__.exec
        qualname = first_global(data)
    torch_zip(tmp_path / "evil.bin", data)
    modules_before = set(sys.modules)
    message = assert_error(tmp_path / "evil.bin", f"'{qualname}'", "allowlist", cls=UnsafeCheckpointError)
    assert "nothing was imported or executed" in message
    assert set(sys.modules) == modules_before
    assert not (tmp_path / "SENTINEL").exists()


def test_malicious_value_inside_state_dict(tmp_path):
    state = {"w": 1, "evil": Evil(os.system, sentinel_command(tmp_path))}
    torch_zip(tmp_path / "evil.bin", pickle.dumps(state, protocol=2))
    assert_error(tmp_path / "evil.bin", f"'{os.system.__module__}.system'", cls=UnsafeCheckpointError)
    assert not (tmp_path / "SENTINEL").exists()


@pytest.mark.needs_framework
def test_malicious_object_saved_by_real_torch(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.ones(2), "evil": Evil(os.system, sentinel_command(tmp_path))}, tmp_path / "evil.bin")
    modules_before = set(sys.modules)
    assert_error(tmp_path / "evil.bin", f"'{os.system.__module__}.system'", cls=UnsafeCheckpointError)
    assert set(sys.modules) == modules_before
    assert not (tmp_path / "SENTINEL").exists()


def test_hand_built_global_refused_before_reduce(tmp_path):
    p = Pickle().global_("os", "system").str_(sentinel_command(tmp_path)).raw(b"\x85").reduce().stop()
    torch_zip(tmp_path / "evil.bin", p.bytes())
    assert_error(tmp_path / "evil.bin", "'os.system'", "byte 2", cls=UnsafeCheckpointError)
    assert not (tmp_path / "SENTINEL").exists()


def test_torch_global_outside_allowlist(tmp_path):
    p = Pickle().global_("torch._utils", "_rebuild_qtensor").stop()
    torch_zip(tmp_path / "evil.bin", p.bytes())
    assert_error(tmp_path / "evil.bin", "'torch._utils._rebuild_qtensor'", cls=UnsafeCheckpointError)


def test_stack_global_with_non_string_names(tmp_path):
    p = Pickle(protocol=4).int_(1).int_(2).raw(b"\x93").stop()
    torch_zip(tmp_path / "evil.bin", p.bytes())
    assert_error(tmp_path / "evil.bin", "global names must be strings")


@pytest.mark.parametrize(
    "opcode, name",
    [(b"i", "INST"), (b"o", "OBJ"), (b"\x81", "NEWOBJ"), (b"\x92", "NEWOBJ_EX"), (b"\x82", "EXT1"),
     (b"P", "PERSID"), (b"I", "INT"), (b"S", "STRING"), (b"g", "GET"), (b"0", "POP"), (b"\x8f", "EMPTY_SET")],
)
def test_opcodes_outside_allowlist(tmp_path, opcode, name):
    torch_zip(tmp_path / "evil.bin", Pickle().raw(opcode + b"os\nsystem\n").stop().bytes())
    assert_error(tmp_path / "evil.bin", f"opcode {name}", "byte 2", cls=UnsafeCheckpointError)


def test_unknown_opcode_byte(tmp_path):
    torch_zip(tmp_path / "bad.bin", Pickle().raw(b"\xff").stop().bytes())
    assert_error(tmp_path / "bad.bin", "b'\\xff' is not a pickle opcode")


def test_calling_a_storage_class_refused(tmp_path):
    p = Pickle().global_("torch", "FloatStorage").int_(10).raw(b"\x85").reduce().stop()
    torch_zip(tmp_path / "evil.bin", p.bytes())
    assert_error(tmp_path / "evil.bin", "'torch.FloatStorage'", cls=UnsafeCheckpointError)


def test_ordered_dict_with_arguments_refused(tmp_path):
    p = Pickle().global_("collections", "OrderedDict").raw(b"]").raw(b"\x85").reduce().stop()
    torch_zip(tmp_path / "evil.bin", p.bytes())
    assert_error(tmp_path / "evil.bin", "'collections.OrderedDict' with 1 arguments", cls=UnsafeCheckpointError)


def test_reduce_of_a_non_global_refused(tmp_path):
    torch_zip(tmp_path / "evil.bin", Pickle().str_("os.system").empty_tuple().reduce().stop().bytes())
    assert_error(tmp_path / "evil.bin", "REDUCE of 'os.system'", cls=UnsafeCheckpointError)


def test_build_on_anything_but_ordered_dict(tmp_path):
    torch_zip(tmp_path / "bad.bin", Pickle().raw(b"]").raw(b"}").raw(b"b").stop().bytes())
    assert_error(tmp_path / "bad.bin", "BUILD is only accepted on an OrderedDict")


# --------------------------------------------------------------------------------- malformed pickles


def valid_pickle() -> bytes:
    return torch_state_dict_pickle(
        [TensorSpec("a", "FloatStorage", "0", 4, 0, (2, 2), (2, 1)),
         TensorSpec("b", "FloatStorage", "0", 4, 1, (3,), (1,), parameter=True)]
    )


def test_every_truncation_of_a_pickle(tmp_path):
    data = valid_pickle()
    for cut in range(len(data)):
        torch_zip(tmp_path / "t.bin", data[:cut], {"0": f32_storage([1, 2, 3, 4])})
        assert_error(tmp_path / "t.bin")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_pickles_raise_only_checkpoint_errors(tmp_path, data):
    raw = bytearray(valid_pickle())
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    torch_zip(tmp_path / "f.bin", bytes(raw), {"0": f32_storage([1, 2, 3, 4])})
    try:
        out = read_torch_bin(tmp_path / "f.bin")
    except CheckpointError:
        return
    assert all(isinstance(v, np.ndarray) for v in out.values())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_random_pickles_raise_only_checkpoint_errors(tmp_path, raw):
    torch_zip(tmp_path / "r.bin", raw)
    with pytest.raises(CheckpointError):
        read_torch_bin(tmp_path / "r.bin")


def test_stack_underflow(tmp_path):
    torch_zip(tmp_path / "u.bin", Pickle().raw(b"t").stop().bytes())
    assert_error(tmp_path / "u.bin", "no MARK")
    torch_zip(tmp_path / "u.bin", Pickle().raw(b"\x85").stop().bytes())
    assert_error(tmp_path / "u.bin", "stack underflow")


def test_memo_get_of_missing_entry(tmp_path):
    torch_zip(tmp_path / "m.bin", Pickle().raw(b"h\x07").stop().bytes())
    assert_error(tmp_path / "m.bin", "memo entry 7 was never stored")


def test_unhashable_dict_key(tmp_path):
    torch_zip(tmp_path / "m.bin", Pickle().raw(b"}").raw(b"]").int_(1).raw(b"s").stop().bytes())
    assert_error(tmp_path / "m.bin", "malformed pickle", "TypeError")


def test_setitem_on_a_non_dict(tmp_path):
    torch_zip(tmp_path / "m.bin", Pickle().raw(b")").int_(1).int_(2).raw(b"s").stop().bytes())
    assert_error(tmp_path / "m.bin", "cannot add items to a tuple")


def test_mark_depth_limit(tmp_path):
    torch_zip(tmp_path / "d.bin", Pickle().raw(b"(" * (MAX_MARK_DEPTH + 1)).stop().bytes())
    assert_error(tmp_path / "d.bin", "deeper than")


def test_deeply_nested_tuples_do_not_crash(tmp_path):
    p = Pickle().raw(b")" + b"\x85" * 200_000).raw(b"}").raw(b"\x85").raw(b"}").raw(b"s").stop()
    torch_zip(tmp_path / "d.bin", p.bytes())
    assert_error(tmp_path / "d.bin")


def test_string_length_limit(tmp_path):
    torch_zip(tmp_path / "s.bin", Pickle().raw(b"X" + struct.pack("<I", MAX_STRING_BYTES + 1)).stop().bytes())
    assert_error(tmp_path / "s.bin", "exceeds the limit")


def test_long1_over_64_bits(tmp_path):
    torch_zip(tmp_path / "l.bin", Pickle().raw(b"\x8a\x09" + b"\x01" * 9).stop().bytes())
    assert_error(tmp_path / "l.bin", "LONG1 of 9 bytes")


def test_unsupported_protocol(tmp_path):
    torch_zip(tmp_path / "p.bin", b"\x80\x09.")
    assert_error(tmp_path / "p.bin", "protocol 9")


def test_top_level_not_a_dict(tmp_path):
    torch_zip(tmp_path / "l.bin", Pickle().raw(b"]").stop().bytes())
    assert_error(tmp_path / "l.bin", "holds a list, not a state dict")


def test_value_not_a_tensor(tmp_path):
    torch_zip(tmp_path / "v.bin", Pickle().raw(b"}").str_("w").int_(3).raw(b"s").stop().bytes())
    assert_error(tmp_path / "v.bin", "entry 'w' is a int, not a tensor")


def test_key_not_a_string(tmp_path):
    torch_zip(tmp_path / "k.bin", Pickle().raw(b"}").int_(3).int_(3).raw(b"s").stop().bytes())
    assert_error(tmp_path / "k.bin", "key 3 is not a string")


# ------------------------------------------------------------------------------ bad persistent ids


def persid_file(tmp_path, pid_ops: Pickle, storages=None):
    """A state dict {'w': _rebuild_tensor_v2(BINPERSID(<pid built by pid_ops>), 0, (1,), (1,), ...)}."""
    p = Pickle().raw(b"}").str_("w").global_("torch._utils", "_rebuild_tensor_v2").mark()
    p.raw(pid_ops.out[2:]).raw(b"Q").int_(0).tuple_((1,)).tuple_((1,)).raw(b"\x89").ordered_dict().raw(b"t")
    p.reduce().raw(b"s").stop()
    torch_zip(tmp_path / "pid.bin", p.bytes(), storages if storages is not None else {"0": f32_storage([1])})
    return tmp_path / "pid.bin"


def pid(tag="storage", module="torch", cls="FloatStorage", key="0", location="cpu", numel=1) -> Pickle:
    p = Pickle().mark().str_(tag).global_(module, cls)
    p.str_(key) if isinstance(key, str) else p.int_(key)
    p.str_(location) if isinstance(location, str) else p.int_(location)
    p.raw(numel) if isinstance(numel, bytes) else p.int_(numel)
    return p.raw(b"t")


def test_persistent_id_valid(tmp_path):
    assert read_torch_bin(persid_file(tmp_path, pid()))["w"].tolist() == [1.0]


def test_persistent_id_not_a_tuple(tmp_path):
    assert_error(persid_file(tmp_path, Pickle().str_("storage")), "persistent id 'storage'")


def test_persistent_id_wrong_length(tmp_path):
    p = Pickle().mark().str_("storage").global_("torch", "FloatStorage").str_("0").raw(b"t")
    assert_error(persid_file(tmp_path, p), "is not ('storage', type, key, location, numel)")


def test_persistent_id_wrong_tag(tmp_path):
    assert_error(persid_file(tmp_path, pid(tag="module")), "is not ('storage'")


def test_persistent_id_not_a_storage_type(tmp_path):
    assert_error(persid_file(tmp_path, pid(module="collections", cls="OrderedDict")), "no known storage type")


@pytest.mark.parametrize("key", ["../0", "a/b", "a\\b", "..", "", "x\0"])
def test_persistent_id_unsafe_key(tmp_path, key):
    assert_error(persid_file(tmp_path, pid(key=key)), f"unsafe storage key {key!r}")


def test_persistent_id_key_not_a_string(tmp_path):
    assert_error(persid_file(tmp_path, pid(key=0)), "unsafe storage key 0")


def test_persistent_id_location_not_a_string(tmp_path):
    assert_error(persid_file(tmp_path, pid(location=0)), "non-string location")


@pytest.mark.parametrize("numel", [-1, b"\x88"])
def test_persistent_id_bad_numel(tmp_path, numel):
    assert_error(persid_file(tmp_path, pid(numel=numel)), "storage '0' has an invalid numel")


def test_storage_entry_missing(tmp_path):
    assert_error(persid_file(tmp_path, pid(key="7")), "zip entry 'archive/data/7' is missing")


def test_storage_smaller_than_numel(tmp_path):
    assert_error(persid_file(tmp_path, pid(numel=3)), "storage '0' claims 3 x FloatStorage (12 bytes)", "holds 4")


# ------------------------------------------------------------------------------- tensor bounds


@pytest.mark.parametrize(
    "offset, size, stride, fragment",
    [
        (0, (5,), (1,), "reaches element 4"),
        (4, (1,), (1,), "reaches element 4"),
        (0, (2, 2), (3, 1), "reaches element 4"),
        (0, (2,), (2**62,), "reaches element"),
        (0, (2**40, 2**40), (0, 0), "too large"),
        (0, (2,), (1, 1), "bad offset/size/stride"),
        (-1, (1,), (1,), "bad offset/size/stride"),
        (0, (1,) * 65, (1,) * 65, "bad offset/size/stride"),
        (5, (0,), (1,), "offset 5 past its 4 elements"),
    ],
)
def test_tensor_outside_its_storage(tmp_path, offset, size, stride, fragment):
    spec = TensorSpec("w", "FloatStorage", "0", 4, offset, size, stride)
    assert_error(one_tensor_file(tmp_path / "b.bin", spec, f32_storage([1, 2, 3, 4])), "storage '0'", fragment)


def test_negative_stride(tmp_path):
    p = Pickle().raw(b"}").str_("w").global_("torch._utils", "_rebuild_tensor_v2").mark()
    p.raw(pid(numel=4).out[2:]).raw(b"Q").int_(3).tuple_((2,)).tuple_((-1,)).raw(b"\x89").ordered_dict()
    p.raw(b"t").reduce().raw(b"s").stop()
    torch_zip(tmp_path / "n.bin", p.bytes(), {"0": f32_storage([1, 2, 3, 4])})
    assert_error(tmp_path / "n.bin", "stride (-1,) is not a tuple of non-negative ints")


def test_rebuild_tensor_without_storage(tmp_path):
    p = Pickle().raw(b"}").str_("w").global_("torch._utils", "_rebuild_tensor_v2").mark()
    p.str_("nope").int_(0).tuple_((1,)).tuple_((1,)).raw(b"\x89").ordered_dict().raw(b"t").reduce()
    torch_zip(tmp_path / "n.bin", p.raw(b"s").stop().bytes())
    assert_error(tmp_path / "n.bin", "_rebuild_tensor_v2 got 'nope' instead of a storage")


def test_rebuild_parameter_without_tensor(tmp_path):
    p = Pickle().raw(b"}").str_("w").global_("torch._utils", "_rebuild_parameter")
    p.int_(1).raw(b"\x88").ordered_dict().raw(b"\x87").reduce().raw(b"s").stop()
    torch_zip(tmp_path / "n.bin", p.bytes())
    assert_error(tmp_path / "n.bin", "_rebuild_parameter got 1 instead of a tensor")


# -------------------------------------------------------------------------------------- the zip


def test_not_a_zip_file(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"definitely not a zip")
    assert_error(tmp_path / "x.bin", "not a zip archive", "legacy")


def test_legacy_pickle_file(tmp_path):
    (tmp_path / "x.bin").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert_error(tmp_path / "x.bin", "legacy non-zip torch.save format is not supported")


def test_missing_file(tmp_path):
    assert_error(tmp_path / "nope.bin", "cannot open")


def test_no_data_pkl(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.bin", "w") as zf:
        zf.writestr("archive/version", b"3")
    assert_error(tmp_path / "z.bin", "exactly one '<archive>/data.pkl'", "found 0")


def test_several_data_pkl(tmp_path):
    torch_zip(tmp_path / "z.bin", valid_pickle(), extra={"other/data.pkl": valid_pickle()})
    assert_error(tmp_path / "z.bin", "found 2")


def test_data_pkl_at_wrong_depth(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.bin", "w") as zf:
        zf.writestr("a/b/data.pkl", valid_pickle())
    assert_error(tmp_path / "z.bin", "'a/b/data.pkl'")


def test_duplicate_zip_entries(tmp_path):
    with pytest.warns(UserWarning, match="Duplicate name"):
        torch_zip(tmp_path / "z.bin", valid_pickle(), {"0": f32_storage([1, 2, 3, 4])},
                  extra={"archive/data/0": f32_storage([9, 9, 9, 9])})
    assert_error(tmp_path / "z.bin", "'archive/data/0' more than once")


@pytest.mark.parametrize("entry", ["archive/constants.pkl", "archive/code/__torch__/m.py"])
def test_torchscript_archive(tmp_path, entry):
    torch_zip(tmp_path / "ts.bin", valid_pickle(), {"0": f32_storage([1, 2, 3, 4])}, extra={entry: b""})
    assert_error(tmp_path / "ts.bin", "TorchScript")


def test_bad_byteorder(tmp_path):
    torch_zip(tmp_path / "b.bin", valid_pickle(), {"0": f32_storage([1, 2, 3, 4])}, byteorder=b"middle")
    assert_error(tmp_path / "b.bin", "'archive/byteorder'", "b'middle'")


def patch_central_size(path, name: str, new_size: int) -> None:
    """Rewrite the uncompressed size of `name` in the zip central directory (what zipfile trusts)."""
    raw = bytearray(path.read_bytes())
    encoded = name.encode()
    pos = 0
    while True:
        pos = raw.index(b"PK\x01\x02", pos)
        n = struct.unpack("<H", raw[pos + 28 : pos + 30])[0]
        if raw[pos + 46 : pos + 46 + n] == encoded:
            raw[pos + 24 : pos + 28] = struct.pack("<I", new_size)
            path.write_bytes(bytes(raw))
            return
        pos += 4


def test_deflate_bomb_ratio_refused(tmp_path):
    path = tmp_path / "bomb.bin"
    write_torch_state_dict(path, {"w": np.zeros(1024, np.float32)}, compression=zipfile.ZIP_DEFLATED)
    patch_central_size(path, "archive/data/0", 2**31)
    assert_error(path, "'archive/data/0'", "compression ratio")


def test_data_pkl_over_size_limit(tmp_path):
    path = tmp_path / "big.bin"
    incompressible = np.random.default_rng(0).bytes(200_000)  # keeps the claimed ratio plausible
    torch_zip(path, valid_pickle() + incompressible, {"0": f32_storage([1, 2, 3, 4])},
              compression=zipfile.ZIP_DEFLATED)
    patch_central_size(path, "archive/data.pkl", 100 * 2**20)
    assert_error(path, "'archive/data.pkl'", "over the limit")


def test_stored_entry_size_mismatch(tmp_path):
    path = tmp_path / "lie.bin"
    torch_zip(path, valid_pickle(), {"0": f32_storage([1, 2, 3, 4])})
    patch_central_size(path, "archive/data/0", 10**6)
    assert_error(path, "'archive/data/0'", "declares 1000000 bytes but occupies 16")


def test_unsupported_compression_method(tmp_path):
    path = tmp_path / "bz.bin"
    torch_zip(path, valid_pickle(), {"0": f32_storage([1, 2, 3, 4])}, compression=zipfile.ZIP_BZIP2)
    assert_error(path, "compression method 12")


def test_corrupt_deflate_stream(tmp_path):
    path = tmp_path / "crc.bin"
    torch_zip(path, valid_pickle(), {"0": f32_storage([1, 2, 3, 4])}, compression=zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    pos = raw.index(b"archive/data.pkl") + len("archive/data.pkl") + 2
    raw[pos : pos + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    assert_error(path, "archive/data.pkl")


def test_bad_input_is_a_value_error(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"nope")
    with pytest.raises(ValueError):
        read_torch_bin(tmp_path / "x.bin")
