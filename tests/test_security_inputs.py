"""Untrusted configs, processor configs and images (docs/DESIGN.md §8): clear errors, bounded resources.

- config.json of every family: wrong types, heads not dividing, unknown architecture, mismatched tensor shapes, each
  a `ConfigError` / `CheckpointError` naming the file and the key; several problems listed in one error;
- absurd layer counts refused before anything is built for them (num_hidden_layers = 10**12 used to build a dict of
  10**13 tensor names);
- preprocessor_config.json: sizes whose resize or padding would exceed Pillow's pixel limit, empty outputs, oversized
  files, a non-object auto_map;
- images: Pillow's bomb limit also for PIL images opened lazily by the caller; extreme aspect ratios bounded;
- config values that no weight bounds (BEiT pool_scales, CvT strides/padding) bounded when the config is parsed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

import refvit
from conftest import golden_case
from refvit.checkpoint import read_safetensors
from refvit.errors import CheckpointError, ConfigError, ImageError, InputError, RefvitError
from test_fuzz_support import memory_cap, time_guard


def config_dir(tmp_path, case, **changes):
    d = tmp_path / case
    shutil.copytree(golden_case(case), d)
    raw = json.loads((d / "config.json").read_text())
    raw.update(changes)
    (d / "config.json").write_text(json.dumps(raw))
    return d


def refused(cls, call, *fragments):
    with pytest.raises(RefvitError) as info:
        call()
    message = str(info.value)
    assert type(info.value) is cls, (type(info.value).__name__, message)
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)
    return message


# ------------------------------------------------------------------------------------- config.json, each family

CONFIG_CASES = [
    ("beit_classification", {"num_attention_heads": 5}, ConfigError, "num_attention_heads: 5 does not divide"),
    ("beit_classification", {"hidden_size": "32"}, ConfigError, "hidden_size: expected int, got '32'"),
    ("beit_classification", {"architectures": ["BeitForFoo"]}, ConfigError, "architecture 'BeitForFoo'"),
    ("beit_classification", {"intermediate_size": 48}, CheckpointError, "intermediate.dense.weight: checkpoint (64, 32)"),
    ("beit_classification", {"image_size": 48}, CheckpointError, "relative_position_bias_table: checkpoint (52, 4)"),
    ("data2vec_vision_model", {"num_attention_heads": 5}, ConfigError, "num_attention_heads: 5 does not divide"),
    ("data2vec_vision_model", {"use_mean_pooling": 1}, ConfigError, "use_mean_pooling: expected bool, got 1"),
    ("cvt_model", {"embed_dim": [16, 24, "32"]}, ConfigError, "embed_dim: expected a list of ints"),
    ("cvt_model", {"depth": [1, 2]}, ConfigError, "patch_sizes: expected one entry per stage"),
    ("cvt_model", {"mlp_ratio": [4.0, 4.0, 2.0]}, CheckpointError, "intermediate.dense.weight: checkpoint (128, 32)"),
    ("cvt_model", {"architectures": ["CvtForFoo"]}, ConfigError, "architecture 'CvtForFoo'"),
    ("bit_preact_model", {"num_groups": 3}, ConfigError, "num_groups: 3 does not divide"),
    ("bit_preact_model", {"layer_type": "weird"}, ConfigError, "layer_type: expected 'preactivation' or 'bottleneck'"),
    ("bit_preact_model", {"hidden_sizes": [16, 32, 48]}, CheckpointError, "wrong shape"),
    ("deit_teacher", {"patch_size": 5}, ConfigError, "image_size [32, 32] is not divisible by patch_size [5, 5]"),
    ("deit_teacher", {"model_type": "beit"}, ConfigError, "model_type: expected 'vit' or 'deit'"),
]


@pytest.mark.parametrize("case, changes, cls, fragment", CONFIG_CASES,
                         ids=[f"{c}-{'-'.join(ch)}" for c, ch, _, _ in CONFIG_CASES])
def test_bad_config_names_file_and_key(tmp_path, case, changes, cls, fragment):
    d = config_dir(tmp_path, case, **changes)
    where = d / ("config.json" if cls is ConfigError else "model.safetensors")
    refused(cls, lambda: refvit.from_pretrained(d), where, fragment)


@pytest.mark.parametrize("case, changes", [
    ("beit_classification", {"num_attention_heads": 5, "layer_norm_eps": "x", "use_mean_pooling": 2}),
    ("cvt_model", {"embed_dim": [16, 24, "32"], "layer_norm_eps": "x", "stride_kv": [2, 2, 0]}),
    ("bit_preact_model", {"layer_type": "weird", "num_groups": "2", "global_padding": 3}),
])
def test_every_config_problem_listed_at_once(tmp_path, case, changes):
    message = refused(ConfigError, lambda: refvit.from_pretrained(config_dir(tmp_path, case, **changes)))
    for key in changes:
        assert f"{key}:" in message, (key, message)


def test_deeply_nested_config_json(tmp_path):
    d = config_dir(tmp_path, "vit_model")
    (d / "config.json").write_text('{"hidden_size": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(ConfigError, lambda: refvit.from_pretrained(d), d / "config.json", "not valid JSON", "nested too deeply")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "preprocessor_config.json", "cat.png"])
def test_fifo_instead_of_a_file_never_blocks(tmp_path, name):
    """A checkout or archive can hold a named pipe: opening one for reading blocks until a writer appears."""
    d = config_dir(tmp_path, "vit_model")
    (d / name).unlink(missing_ok=True)
    os.mkfifo(d / name)
    with time_guard(10):
        if name == "preprocessor_config.json":
            refused(ConfigError, lambda: refvit.AutoImageProcessor.from_pretrained(d), name)
        elif name == "cat.png":
            refused(ImageError, lambda: refvit.load_image(d / name), "no such image file")
        else:
            cls = ConfigError if name == "config.json" else CheckpointError
            refused(cls, lambda: refvit.from_pretrained(d), d, "not a regular file" if cls is ConfigError else
                    "no checkpoint file found")


LAYER_FIELDS = [("deit_teacher", "num_hidden_layers", 10**12), ("vit_mim", "num_hidden_layers", 2**62),
                ("data2vec_vision_model", "num_hidden_layers", 10**12), ("cvt_model", "depth", [1, 2, 10**12]),
                ("data2vec_vision_segmentation", "num_hidden_layers", 10**12),  # its head check looped over layers
                ("bit_preact_model", "depths", [1, 10**12, 1]), ("beit_segmentation", "auxiliary_num_convs", 10**12)]


@pytest.mark.parametrize("case, key, value", LAYER_FIELDS, ids=[f"{c}-{k}" for c, k, _ in LAYER_FIELDS])
def test_absurd_layer_counts_refused_before_building_anything(tmp_path, case, key, value):
    d = config_dir(tmp_path, case, **{key: value})
    with time_guard(10), memory_cap(2**30):
        refused(CheckpointError, lambda: refvit.from_pretrained(d), d / "model.safetensors", f"{key} = ",
                "layers, but the checkpoint holds only")


# ------------------------------------------------------------------ config values that would allocate without bound


def from_state_dict_with(case, **changes):
    raw = json.loads((golden_case(case) / "config.json").read_text())
    raw.update(changes)
    return refvit.from_state_dict(raw, read_safetensors(golden_case(case) / "model.safetensors"))


def golden_input(case):
    with np.load(golden_case(case) / "inputs.npz") as z:
        return z["pixel_values"][:1]


def test_beit_huge_num_hidden_layers_refused_quickly():
    with time_guard(3), memory_cap(2**30):
        with pytest.raises(RefvitError):
            from_state_dict_with("beit_classification", num_hidden_layers=10**12)


@pytest.mark.parametrize("case", ["beit_segmentation", "data2vec_vision_segmentation"])
def test_beit_huge_pool_scale_refused(case):
    # the UperNet PSP module pools to (scale, scale) whatever the map's size: [1, 2, 3, 10**6] would allocate terabytes
    with time_guard(10), memory_cap(2**30):
        refused(ConfigError, lambda: from_state_dict_with(case, pool_scales=[1, 2, 3, 10**6]),
                "pool_scales: 1000000 is more than refvit accepts (128)")


def test_beit_pool_scale_at_the_limit_runs():
    model = from_state_dict_with("beit_segmentation", pool_scales=[1, 2, 3, 128])
    with memory_cap(2**30):  # no time guard: the first call may compile kernels
        assert model(golden_input("beit_segmentation")).logits.shape[0] == 1


@pytest.mark.parametrize("case", ["vit_model", "beit_classification", "cvt_model", "bit_preact_model"])
def test_huge_num_labels_without_id2label_refused(case):
    # found by fuzzing: LABEL_i names are made for each of num_labels (10**12 never finished)
    raw = json.loads((golden_case(case) / "config.json").read_text())
    raw.pop("label2id", None)
    raw["id2label"], raw["num_labels"] = None, 10**12
    tensors = read_safetensors(golden_case(case) / "model.safetensors")
    with time_guard(10), memory_cap(2**30):
        refused(ConfigError, lambda: refvit.from_state_dict(raw, tensors),
                "num_labels: 1000000000000 is more than refvit accepts (262144)")


@pytest.mark.parametrize("key", ["patch_padding", "padding_kv"])
def test_cvt_huge_padding_refused(key):
    with time_guard(10), memory_cap(2**30):
        with pytest.raises(RefvitError):
            from_state_dict_with("cvt_model", **{key: [10**6, 1, 1]})(golden_input("cvt_model"))


@pytest.mark.parametrize("key", ["stride_kv"])
def test_cvt_huge_stride_refused(key):
    with time_guard(10), memory_cap(2**30):
        with pytest.raises(RefvitError):
            from_state_dict_with("cvt_model", **{key: [2**63, 1, 1]})(golden_input("cvt_model"))


# --------------------------------------------------------------------------------------- preprocessor_config.json


def processor_dir(tmp_path, config: dict):
    d = tmp_path / "proc"
    d.mkdir(exist_ok=True)
    (d / "preprocessor_config.json").write_text(json.dumps(config))
    return d


@pytest.mark.parametrize("config, fragment", [
    ({"image_processor_type": "ViTImageProcessor", "size": {"height": 10**6, "width": 10**6}},
     "resize: output size 1000000x1000000"),
    ({"image_processor_type": "ViTImageProcessor", "do_resize": False, "do_center_crop": True,
      "crop_size": {"height": 10**5, "width": 10**5}}, "center_crop (zero padding): output size 100000x100000"),
    ({"image_processor_type": "DeiTImageProcessor", "size": {"height": 2**20, "width": 2**20},
      "crop_size": {"height": 8, "width": 8}}, "exceeds Image.MAX_IMAGE_PIXELS"),
    ({"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 10**6}}, "exceeds"),
    ({"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 10**6}}, "exceeds"),
    ({"image_processor_type": "ViTImageProcessor", "size": {"max_height": 4, "max_width": 4}}, "is empty"),
])
def test_processor_sizes_bounded_before_allocating(tmp_path, config, fragment):
    processor = refvit.AutoImageProcessor.from_pretrained(processor_dir(tmp_path, config))
    image = Image.new("RGB", (200, 2), (10, 20, 30))
    with time_guard(10), memory_cap(2**30):
        refused(InputError, lambda: processor(image), fragment)


def test_segmentation_map_resize_bounded(tmp_path):
    processor = refvit.BeitImageProcessor(size={"height": 10**5, "width": 10**5}, do_resize=True)
    with pytest.raises(InputError, match="exceeds"):
        processor(np.zeros((5, 5, 3), np.uint8), segmentation_maps=np.zeros((5, 5), np.uint8))


def test_processor_pixel_limit_follows_pillow_at_call_time(monkeypatch):
    processor = refvit.ViTImageProcessor(size={"height": 100, "width": 100})
    image = Image.new("RGB", (8, 8))
    assert processor(image)["pixel_values"].shape == (1, 3, 100, 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    with pytest.raises(InputError, match="10000 pixels exceeds Image.MAX_IMAGE_PIXELS = 5000"):
        processor(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user switched Pillow's limit off: ours too
    assert processor(image)["pixel_values"].shape == (1, 3, 100, 100)


def test_extreme_aspect_ratio_with_shortest_edge_is_bounded():
    """A 40000x1 strip is 40k pixels, but resizing its shortest edge to 224 would make 224 x 8.96M = 2 G pixels."""
    strip = Image.new("RGB", (40_000, 1), (1, 2, 3))
    with time_guard(10), memory_cap(2**30):
        refused(InputError, lambda: refvit.BitImageProcessor()(strip), "224x8960000", "exceeds")


def test_oversized_preprocessor_config_refused(tmp_path):
    d = tmp_path / "big"
    d.mkdir()
    with open(d / "preprocessor_config.json", "wb") as f:
        f.write(b'{"image_processor_type": "ViTImageProcessor", "x": "')
        f.seek(17 * 2**20)  # sparse: 17 MiB on paper
        f.write(b'"}')
    refused(ConfigError, lambda: refvit.AutoImageProcessor.from_pretrained(d), d / "preprocessor_config.json",
            "larger than")


@pytest.mark.parametrize("auto_map", [1, "x", [1]])
def test_auto_map_must_be_an_object(tmp_path, auto_map):
    d = processor_dir(tmp_path, {"auto_map": auto_map, "size": 8})
    refused(ConfigError, lambda: refvit.AutoImageProcessor.from_pretrained(d), "auto_map must be an object")


def test_deeply_nested_preprocessor_config(tmp_path):
    d = tmp_path / "deep"
    d.mkdir()
    (d / "preprocessor_config.json").write_text('{"size": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(ConfigError, lambda: refvit.AutoImageProcessor.from_pretrained(d), "preprocessor_config.json")


# ------------------------------------------------------------------------------------------------------- images


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only a signature and an IHDR claiming width x height (8-bit RGB), plus IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def lazily_opened_bomb(tmp_path):
    """What a caller gets from Image.open on a file between Pillow's warning and error levels: only a warning."""
    side = int((Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(side, side))
    with pytest.warns(Image.DecompressionBombWarning):
        return Image.open(path)


def test_lazily_opened_pil_bomb_refused_before_decoding(tmp_path):
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    with time_guard(10), memory_cap(2**30):
        refused(ImageError, lambda: refvit.load_image(lazily_opened_bomb(tmp_path)), "bomb.png", "decompression bomb")
        refused(ImageError, lambda: refvit.ViTImageProcessor()(lazily_opened_bomb(tmp_path)), "bomb.png",
                "decompression bomb")
        refused(ImageError, lambda: refvit.BeitImageProcessor()(Image.new("RGB", (4, 4)),
                                                                segmentation_maps=lazily_opened_bomb(tmp_path)),
                "decompression bomb")
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)) == before


def test_decoded_large_pil_image_is_the_callers_business():
    """An image already in memory (not a lazily opened file) is not re-checked: no decoding is left to bound."""
    image = Image.new("RGB", (64, 64))
    assert refvit.load_image(image).size == (64, 64)


@pytest.mark.parametrize("data", [png_header(1, 1), png_header(0, 5), b"GIF89a" + b"\x00" * 20,
                                  b"\xff\xd8\xff\xe0" + b"\x00" * 30, b"II*\x00" + b"\xff" * 30, b"BM" + b"\xff" * 60])
def test_malformed_image_headers_are_image_errors(data):
    with time_guard(10), memory_cap(2**30):
        refused(ImageError, lambda: refvit.load_image(data), "<bytes>")


def test_png_text_chunk_bomb_refused():
    """A zTXt chunk inflating far beyond Pillow's text limit: Pillow refuses it, refvit reports an ImageError."""
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "PNG")
    raw = buffer.getvalue()
    text = b"k\x00\x00" + zlib.compress(b"\x00" * (64 * 2**20), 9)
    chunk = struct.pack(">I", len(text)) + b"zTXt" + text + struct.pack(">I", zlib.crc32(b"zTXt" + text))
    bomb = raw[:33] + chunk + raw[33:]  # after the IHDR chunk
    with time_guard(20), memory_cap(2**30):
        refused(ImageError, lambda: refvit.load_image(bomb), "<bytes>")
