"""refvit.checkpoint.safetensors: round trips, BF16 exactness, and every malformed-file case."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest_checkpoint_helpers import entry, safetensors_bytes
from refvit.checkpoint import read_safetensors, read_safetensors_metadata, write_safetensors
from refvit.checkpoint.safetensors import DTYPES, MAX_HEADER_SIZE
from refvit.errors import CheckpointError

NUMPY_DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8",
                "uint64", "uint32", "uint16", "uint8", "bool"]


def sample(dtype: str, shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        values = rng.random(shape) > 0.5
    elif dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    else:
        values = rng.standard_normal(shape) * 100
    return np.asarray(values, dtype=dtype)  # an array even for shape ()


def write(tmp_path, content: bytes, name: str = "model.safetensors"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def assert_error(path, *fragments, cls=CheckpointError, mmap=True):
    """Reading `path` raises `cls`, and the message names the file and every fragment."""
    with pytest.raises(cls) as info:
        read_safetensors(path, mmap=mmap)
    message = str(info.value)
    assert type(info.value) is cls
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --------------------------------------------------------------------------------------------- good


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_round_trip_every_dtype(tmp_path, dtype, mmap):
    tensors = {"b.weight": sample(dtype, (3, 5)), "a": sample(dtype, (7,), seed=1),
               "scalar": sample(dtype, ()), "empty": sample(dtype, (0, 4))}
    path = tmp_path / "x.safetensors"
    write_safetensors(path, tensors, metadata={"format": "pt"})
    out = read_safetensors(path, mmap=mmap)
    assert list(out) == sorted(tensors)  # header order = sorted by name, as written
    for name, arr in tensors.items():
        assert out[name].dtype == arr.dtype and out[name].shape == arr.shape
        np.testing.assert_array_equal(out[name], arr)
        assert not out[name].flags.writeable
    assert read_safetensors_metadata(path) == {"format": "pt"}


def test_written_header_is_padded_sorted_and_contiguous(tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"z": np.zeros(3, np.float32), "a": np.ones(1, np.int8)})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    assert list(header) == ["a", "z"]
    assert header["a"]["data_offsets"] == [0, 1] and header["z"]["data_offsets"] == [1, 13]


def test_mmap_arrays_are_zero_copy_views(tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"w": np.arange(16, dtype=np.float32)})
    arr = read_safetensors(path)["w"]
    assert not arr.flags.owndata and not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0] = 1


def test_unaligned_tensor_is_copied_aligned(tmp_path):
    data = b"\x07" + np.array([1.5, -2.0], "<f4").tobytes()
    header = {"a": entry("U8", [1], 0, 1), "b": entry("F32", [2], 1, 9)}
    out = read_safetensors(write(tmp_path, safetensors_bytes(header, data)))
    assert out["a"].tolist() == [7]
    assert out["b"].flags.aligned and out["b"].tolist() == [1.5, -2.0]


def test_empty_file_with_no_tensors(tmp_path):
    assert read_safetensors(write(tmp_path, safetensors_bytes({}))) == {}


def test_header_may_be_padded_with_spaces(tmp_path):
    header = json.dumps({"a": entry("I8", [2], 0, 2)}) + "    "
    assert read_safetensors(write(tmp_path, safetensors_bytes(header, b"\x01\xff")))["a"].tolist() == [1, -1]


# BF16: the high 16 bits of a float32. Hand-computed patterns: value -> bf16 bits.
BF16_CASES = {1.0: 0x3F80, -2.0: 0xC000, 0.5: 0x3F00, float("inf"): 0x7F80, -0.0: 0x8000,
              2.0**-133: 0x0001, 3.0: 0x4040, 1.0078125: 0x3F81}


@pytest.mark.parametrize("mmap", [True, False])
def test_bf16_widened_exactly_from_bit_patterns(tmp_path, mmap):
    bits = np.array(list(BF16_CASES.values()) + [0x7FC0], dtype="<u2")
    path = write(tmp_path, safetensors_bytes({"x": entry("BF16", [len(bits)], 0, 2 * len(bits))}, bits.tobytes()))
    out = read_safetensors(path, mmap=mmap)["x"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.view(np.uint32), bits.astype(np.uint32) << 16)
    np.testing.assert_array_equal(out[:-1], np.array(list(BF16_CASES), np.float32))
    assert np.isnan(out[-1])


@pytest.mark.needs_framework
def test_bf16_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    t = (torch.randn(64, 33, generator=torch.Generator().manual_seed(0)) * 1e3).to(torch.bfloat16)
    t[0, :4] = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0])
    path = tmp_path / "bf16.safetensors"
    st_torch.save_file({"t": t}, str(path))
    out = read_safetensors(path)["t"]
    np.testing.assert_array_equal(out.view(np.uint32), t.float().numpy().view(np.uint32))


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_reads_files_written_by_safetensors_library(tmp_path, dtype):
    st_numpy = pytest.importorskip("safetensors.numpy")
    tensors = {"w": sample(dtype, (4, 3)), "b": sample(dtype, (5,), seed=2), "s": sample(dtype, ())}
    path = tmp_path / "lib.safetensors"
    st_numpy.save_file(tensors, str(path), metadata={"format": "np"})
    out = read_safetensors(path)
    for name, arr in tensors.items():
        assert out[name].dtype == arr.dtype
        np.testing.assert_array_equal(out[name], arr)
    assert read_safetensors_metadata(path) == {"format": "np"}


def test_safetensors_library_reads_our_files(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    tensors = {name: sample(name, (2, 3)) for name in NUMPY_DTYPES}
    path = tmp_path / "ours.safetensors"
    write_safetensors(path, tensors, metadata={"format": "pt"})
    back = st_numpy.load_file(str(path))
    for name, arr in tensors.items():
        np.testing.assert_array_equal(back[name], arr)


shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)
tensor_dicts = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__"),
    st.tuples(st.sampled_from(NUMPY_DTYPES), shapes, st.integers(0, 2**16)),
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=tensor_dicts)
def test_round_trip_property(tmp_path, specs):
    tensors = {name: sample(dtype, shape, seed) for name, (dtype, shape, seed) in specs.items()}
    path = tmp_path / "prop.safetensors"
    write_safetensors(path, tensors)
    out = read_safetensors(path, mmap=False)
    assert set(out) == set(tensors)
    for name, arr in tensors.items():
        assert out[name].shape == arr.shape
        np.testing.assert_array_equal(out[name], arr)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_files_raise_only_checkpoint_error(tmp_path, data):
    path = tmp_path / "fuzz.safetensors"
    write_safetensors(path, {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.int16)})
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    path.write_bytes(bytes(raw))
    try:
        read_safetensors(path)
    except CheckpointError:
        pass


# ---------------------------------------------------------------------------------------------- bad


@pytest.mark.parametrize("size", [0, 1, 7])
def test_file_shorter_than_8_bytes(tmp_path, size):
    assert_error(write(tmp_path, b"\x00" * size), f"file is {size} bytes", "8-byte")


def test_missing_file(tmp_path):
    assert_error(tmp_path / "nope.safetensors", "cannot read")


def test_directory_instead_of_file(tmp_path):
    assert_error(tmp_path, "cannot read")


def test_header_length_huge(tmp_path):
    path = write(tmp_path, safetensors_bytes("{}", header_len=MAX_HEADER_SIZE + 1))
    assert_error(path, f"header length {MAX_HEADER_SIZE + 1}", "exceeds the limit")


def test_header_length_max_u64(tmp_path):
    assert_error(write(tmp_path, safetensors_bytes("{}", header_len=2**64 - 1)), "exceeds the limit")


def test_header_length_past_eof(tmp_path):
    assert_error(write(tmp_path, safetensors_bytes("{}", header_len=100)), "header length 100", "past the end")


def test_header_not_utf8(tmp_path):
    assert_error(write(tmp_path, safetensors_bytes(b'{"a\xff": 1}')), "not valid UTF-8", "byte offset 11")


def test_header_not_json(tmp_path):
    assert_error(write(tmp_path, safetensors_bytes('{"a": ')), "not valid JSON")


@pytest.mark.parametrize("header", ["[]", "1", '"x"', " {}", "null"])
def test_header_not_an_object(tmp_path, header):
    assert_error(write(tmp_path, safetensors_bytes(header)), "JSON object")


def test_duplicate_tensor_names(tmp_path):
    header = '{"a": %s, "a": %s}' % (json.dumps(entry("U8", [1], 0, 1)), json.dumps(entry("U8", [1], 1, 2)))
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00\x00")), "duplicate key 'a'")


def test_duplicate_field_inside_entry(tmp_path):
    header = '{"a": {"dtype": "U8", "dtype": "I8", "shape": [1], "data_offsets": [0, 1]}}'
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00")), "duplicate key 'dtype'")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_tokens(tmp_path, token):
    header = '{"a": {"dtype": "U8", "shape": [%s], "data_offsets": [0, 1]}}' % token
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00")), f"non-JSON number '{token}'")


def test_deeply_nested_header(tmp_path):
    assert_error(write(tmp_path, safetensors_bytes('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")),
                 "not valid JSON")


@pytest.mark.parametrize("metadata", [[], "x", {"format": 1}, {"k": None}])
def test_metadata_must_map_str_to_str(tmp_path, metadata):
    assert_error(write(tmp_path, safetensors_bytes({"__metadata__": metadata})), "'__metadata__'")


@pytest.mark.parametrize("info", [[], "U8", None, 3])
def test_entry_not_an_object(tmp_path, info):
    assert_error(write(tmp_path, safetensors_bytes({"w.x": info})), "tensor 'w.x'", "must be an object")


@pytest.mark.parametrize(
    "info",
    [{"dtype": "U8", "shape": [1]}, {**entry("U8", [1], 0, 1), "extra": 1}, {"shape": [1], "data_offsets": [0, 1]}],
)
def test_entry_fields_not_exactly_dtype_shape_offsets(tmp_path, info):
    assert_error(write(tmp_path, safetensors_bytes({"w": info}, b"\x00")), "tensor 'w'", "entry fields")


@pytest.mark.parametrize("dtype", ["F8_E4M3", "XYZ", "f32", 3, None])
def test_unknown_dtype(tmp_path, dtype):
    header = {"w": {"dtype": dtype, "shape": [1], "data_offsets": [0, 1]}}
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00")), "tensor 'w'", f"dtype {dtype!r}")


@pytest.mark.parametrize("shape", [[-1], [1.0], [True], "1", None, [[1]], {"a": 1}])
def test_bad_shape(tmp_path, shape):
    header = {"w": {"dtype": "U8", "shape": shape, "data_offsets": [0, 1]}}
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00")), "tensor 'w'", "shape")


@pytest.mark.parametrize("shape", [[2**40, 2**40], [2**62, 2**62, 3], [3] * 60, [2**62, 2**3]])
def test_shape_product_overflow(tmp_path, shape):
    header = {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}}
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00" * 4)), "tensor 'w'", "more bytes than")


def test_empty_tensor_with_large_dim(tmp_path):
    header = {"w": entry("F32", [2**40, 0], 0, 0)}
    assert read_safetensors(write(tmp_path, safetensors_bytes(header)))["w"].shape == (2**40, 0)


def test_dimension_beyond_int64_in_empty_tensor(tmp_path):
    header = {"w": entry("F32", [10**30, 0], 0, 0)}
    assert_error(write(tmp_path, safetensors_bytes(header)), "tensor 'w'", "shape")


@pytest.mark.parametrize("offsets", [[0], [0, 4, 8], [], "0,4", None, [0.0, 4], [False, 4], [0, True]])
def test_offsets_wrong_arity_or_type(tmp_path, offsets):
    header = {"w": {"dtype": "F32", "shape": [1], "data_offsets": offsets}}
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00" * 4)), "tensor 'w'", "data_offsets")


def test_offsets_reversed(tmp_path):
    header = {"w": entry("U8", [0], 4, 0)}
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00" * 4)), "tensor 'w'", "[4, 0]", "reversed")


def test_offsets_negative(tmp_path):
    header = {"w": entry("U8", [1], -1, 0)}
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00")), "tensor 'w'", "negative")


def test_offsets_span_differs_from_shape(tmp_path):
    header = {"w": entry("F32", [2], 0, 4)}
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00" * 8)), "tensor 'w'", "span 4 bytes", "needs 8")


def test_offsets_overlapping(tmp_path):
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00" * 12)), "tensor 'b'", "overlaps tensor 'a'")


def test_offsets_duplicate_region(tmp_path):
    header = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 0, 4)}
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00" * 4)), "overlaps tensor 'a'")


def test_offsets_with_hole(tmp_path):
    header = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00" * 12)), "hole", "[4, 8)", "tensor 'b'")


def test_offsets_not_starting_at_zero(tmp_path):
    header = {"a": entry("F32", [1], 4, 8)}
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00" * 8)), "hole", "[0, 4)", "tensor 'a'")


def test_offsets_not_covering_buffer(tmp_path):
    header = {"a": entry("F32", [1], 0, 4)}
    assert_error(write(tmp_path, safetensors_bytes(header, b"\x00" * 6)), "cover 4 bytes", "holds 6", "offset 4")


def test_truncated_data(tmp_path):
    header = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [4], 4, 20)}
    content = safetensors_bytes(header, b"\x00" * 20)
    for cut in (1, 8, 16):
        assert_error(write(tmp_path, content[:-cut]), "tensor 'b'", "truncated")


def test_truncated_data_names_offsets(tmp_path):
    content = safetensors_bytes({"a": entry("F32", [1], 0, 4), "b": entry("F32", [4], 4, 20)}, b"\x00" * 20)
    assert_error(write(tmp_path, content[:-1]), "tensor 'b'", "[4, 20]", "19 bytes", "truncated")


def test_truncated_data_without_mmap(tmp_path):
    content = safetensors_bytes({"b": entry("F32", [4], 0, 16)}, b"\x00" * 16)
    assert_error(write(tmp_path, content[:-3]), "tensor 'b'", "truncated", mmap=False)


def test_bad_input_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        read_safetensors(write(tmp_path, b"abc"))


def test_error_message_names_file(tmp_path):
    path = write(tmp_path, b"abc", name="weird name.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        read_safetensors(path)


# ------------------------------------------------------------------------------------------- writer


def test_write_refuses_bad_metadata(tmp_path):
    with pytest.raises(CheckpointError, match="metadata"):
        write_safetensors(tmp_path / "x.safetensors", {}, metadata={"format": 1})


def test_write_refuses_reserved_name(tmp_path):
    with pytest.raises(CheckpointError, match="'__metadata__'"):
        write_safetensors(tmp_path / "x.safetensors", {"__metadata__": np.zeros(1)})


@pytest.mark.parametrize("arr", [np.array(["a"]), np.array([1 + 2j]), np.array([None])])
def test_write_refuses_unsupported_dtype(tmp_path, arr):
    with pytest.raises(CheckpointError, match="tensor 'x'"):
        write_safetensors(tmp_path / "x.safetensors", {"x": arr})


def test_write_non_contiguous_and_big_endian(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2].T
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"a": a})
    out = read_safetensors(path)["a"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, a)


def test_dtype_table_is_little_endian():
    assert all(d == d.newbyteorder("<") for d in DTYPES.values())


# ---------------------------------------------------------------------------------------------------
# pages of replaced memory-mapped tensors leave the resident set


def _rss_file_kib() -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def test_release_replaced_drops_only_whole_pages_of_replaced_tensors(tmp_path):
    import mmap

    if not hasattr(mmap, "MADV_DONTNEED"):
        pytest.skip("no madvise(MADV_DONTNEED) on this platform: release_replaced does nothing")
    from refvit.checkpoint.safetensors import release_replaced

    page = mmap.PAGESIZE
    original = {"a": sample("float32", (1024, 1024), 1), "b": sample("float32", (10,), 2),
                "c": sample("float32", (512, 1024), 3)}
    write_safetensors(tmp_path / "m.safetensors", original)
    tensors = read_safetensors(tmp_path / "m.safetensors")
    assert all(np.array_equal(tensors[k], original[k]) for k in original)    # every page read in
    before = _rss_file_kib()
    kept = [tensors["b"], tensors["c"].astype(np.float64)]      # b used in place; a dropped; c replaced by a copy
    released = release_replaced(tensors.values(), kept)

    start = np.frombuffer(tensors["a"].base.base.obj, np.uint8).__array_interface__["data"][0]
    def whole_pages(name):
        lo = tensors[name].__array_interface__["data"][0] - start
        hi = lo + tensors[name].nbytes
        return max(0, hi // page * page - -(-lo // page) * page)
    assert released == whole_pages("a") + whole_pages("c") > 0
    after = _rss_file_kib()
    if before is not None:                                      # Linux: the pages really left this process's RSS
        assert before - after >= 0.9 * released / 1024
    for name in original:                                       # and reading them again gives the same bytes
        assert np.array_equal(tensors[name], original[name])


def test_release_replaced_keeps_tensors_in_use_and_ignores_copies(tmp_path):
    from refvit.checkpoint.safetensors import release_replaced

    write_safetensors(tmp_path / "m.safetensors", {"a": sample("float32", (256, 1024), 1)})
    mapped = read_safetensors(tmp_path / "m.safetensors")
    loaded = read_safetensors(tmp_path / "m.safetensors", mmap=False)
    assert release_replaced(mapped.values(), [mapped["a"][:, ::2]]) == 0    # a strided view still reads every page
    assert release_replaced(loaded.values(), []) == 0                        # not memory-mapped: nothing to drop
