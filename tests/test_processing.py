"""refvit.processing: golden parity with transformers' PIL processors, load_image safety, bad input.

Needs no torch or transformers: the golden cases under golden/processing/ were written by
golden/processing_cases.py. The last test (a random differential check against transformers) runs
only where transformers is installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from refvit.errors import ConfigError, ImageError, InputError, RefvitError
from refvit.processing import (
    AutoFeatureExtractor,
    AutoImageProcessor,
    BatchFeature,
    DeiTFeatureExtractor,
    DeiTImageProcessor,
    ImageProcessor,
    ViTFeatureExtractor,
    ViTImageProcessor,
    load_image,
)
from refvit.verify import processing_golden

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden"
CASES = sorted(p for p in (GOLDEN / "processing").iterdir() if (p / "meta.json").is_file())
LANDSCAPE = GOLDEN / "images" / "chelsea_landscape.jpg"


def _case_images(meta: dict) -> list:
    images = []
    for entry in meta["images"]:
        path = GOLDEN / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["file_sha256"], f"{path} changed since generation"
        image = load_image(path) if entry["load"] == "load_image" else Image.open(path)
        decoded = hashlib.sha256(np.ascontiguousarray(np.asarray(image)).tobytes()).hexdigest()
        assert decoded == entry["decoded_sha256"], (
            f"{path}: this Pillow decodes it differently from the one that wrote the golden case "
            f"(Pillow {meta['pillow_version']}); regenerate golden/processing with golden/generate.py"
        )
        images.append(image)
    return images


@pytest.fixture(autouse=True)
def _pillow_globals_untouched():
    """Every test leaves Pillow's bomb limit and truncated-image flag as they were (monkeypatch undoes its own)."""
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    yield
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


# ---------------------------------------------------------------------------------------------------
# Golden parity


def test_golden_cases_exist():
    names = {p.name for p in CASES}
    assert {"vit_default", "deit_default", "deit_legacy", "vit_nonsquare", "vit_convert_gray"} <= names


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
def test_golden_case(case):
    golden = processing_golden(case)  # the arrays transformers gives under the installed Pillow (major.minor)
    if golden.expected is None:
        pytest.skip(golden.not_verified)
    meta = golden.meta
    expected = np.load(golden.expected)
    images = _case_images(meta)
    processor = ImageProcessor.from_pretrained(case)
    assert type(processor).__name__ == meta["processor_class"].removesuffix("Pil")
    for loader in (AutoImageProcessor.from_pretrained, AutoFeatureExtractor.from_pretrained):
        assert type(loader(case / "preprocessor_config.json")) is type(processor)

    uint8 = processor(images, do_rescale=False, do_normalize=False).pixel_values
    np.testing.assert_array_equal(uint8, expected["pixels_uint8"].astype(np.float32))  # resize/crop stages bit-exact

    out = processor(images=images, return_tensors="np")
    assert isinstance(out, BatchFeature) and out.pixel_values is out["pixel_values"]
    assert out.pixel_values.dtype == np.float32
    assert out.pixel_values.shape == tuple(meta["pixel_values_shape"]) == expected["pixel_values"].shape
    np.testing.assert_allclose(out.pixel_values, expected["pixel_values"], rtol=0, atol=1e-6)


def test_processing_golden_is_chosen_by_the_pillow_version():
    """Each Pillow (major.minor) with a golden gets its own arrays; any other is 'not verified', with the reason."""
    case = GOLDEN / "processing" / "vit_default"
    primary = json.loads((case / "meta.json").read_text())
    major_minor = ".".join(primary["pillow_version"].split(".")[:2])
    chosen = processing_golden(case, primary["pillow_version"].rsplit(".", 1)[0] + ".99")  # another patch release
    assert chosen.expected == case / "expected.npz" and chosen.meta == primary and not chosen.not_verified
    assert primary["libjpeg_version"] and primary["libjpeg_turbo_version"]
    for variant in sorted(case.glob("pillow-*/meta.json")):
        meta = json.loads(variant.read_text())
        chosen = processing_golden(case, meta["pillow_version"])
        assert variant.parent.name == "pillow-" + ".".join(meta["pillow_version"].split(".")[:2]) != major_minor
        assert chosen.meta == meta and chosen.expected == case / meta["expected_file"] and chosen.expected.is_file()
    missing = processing_golden(case, "9.1.0")
    assert missing.expected is None
    assert missing.not_verified.startswith("not verified for Pillow 9.1: ") and major_minor in missing.not_verified


def test_verify_row_under_a_pillow_without_golden_is_not_a_failure(monkeypatch):
    import PIL

    from refvit.verify import format_table, run_processing_case

    monkeypatch.setattr(PIL, "__version__", "9.1.0")
    result = run_processing_case(GOLDEN / "processing" / "vit_default")
    assert result.ok and not result.errors and result.not_verified.startswith("not verified for Pillow 9.1")
    assert "not verified for Pillow 9.1" in format_table([result])


def test_single_image_and_batch_forms_agree():
    image = load_image(LANDSCAPE)
    processor = DeiTImageProcessor()
    single = processor(image).pixel_values
    assert single.shape == (1, 3, 224, 224)
    array = np.asarray(image)
    np.testing.assert_array_equal(processor([image, image]).pixel_values[1], single[0])
    np.testing.assert_array_equal(processor(array).pixel_values, single)  # HWC uint8 array
    np.testing.assert_array_equal(processor(np.moveaxis(array, -1, 0)).pixel_values, single)  # CHW
    np.testing.assert_array_equal(processor(np.stack([array, array])).pixel_values[0], single[0])  # 4-D batch
    np.testing.assert_array_equal(processor([[image], [image]]).pixel_values[1], single[0])  # nested lists
    np.testing.assert_array_equal(processor(str(LANDSCAPE)).pixel_values, single)  # a path goes through load_image
    np.testing.assert_array_equal(processor(image, return_tensors=None).pixel_values, single)


# ---------------------------------------------------------------------------------------------------
# Defaults and constructors


def test_family_defaults_match_transformers():
    vit, deit = ViTImageProcessor(), DeiTImageProcessor()
    assert (vit.size, vit.resample, vit.do_center_crop) == ({"height": 224, "width": 224}, 2, None)
    assert (deit.size, deit.resample, deit.do_center_crop, deit.crop_size) == (
        {"height": 256, "width": 256}, 3, True, {"height": 224, "width": 224})
    for p in (vit, deit):
        assert p.image_mean == p.image_std == (0.5, 0.5, 0.5)
        assert p.rescale_factor == 1 / 255 and p.do_rescale and p.do_normalize and p.do_convert_rgb is None
    assert ViTFeatureExtractor is ViTImageProcessor and DeiTFeatureExtractor is DeiTImageProcessor
    assert ViTImageProcessor(size=300).size == {"height": 300, "width": 300}  # legacy int size is a square
    assert ViTImageProcessor(size=300, default_to_square=False).size == {"shortest_edge": 300}
    assert ViTImageProcessor(size=[100, 200]).size == {"height": 100, "width": 200}
    assert DeiTImageProcessor(do_center_crop=None).do_center_crop is None  # explicit null is kept, as upstream


def test_overrides_per_call():
    image = load_image(LANDSCAPE)
    processor = ViTImageProcessor()
    assert processor(image, size={"height": 32, "width": 48}).pixel_values.shape == (1, 3, 32, 48)
    assert processor(image, do_resize=None).pixel_values.shape == (1, 3, 300, 451)  # explicit None disables
    raw = processor(image, do_resize=False, do_rescale=False, do_normalize=False).pixel_values
    np.testing.assert_array_equal(raw[0], np.moveaxis(np.asarray(image), -1, 0))
    assert processor.size == {"height": 224, "width": 224}  # the call did not change the processor


def test_shortest_edge_and_crop_padding():
    image = load_image(LANDSCAPE)  # 451 x 300
    out = ViTImageProcessor(size={"shortest_edge": 100}, do_normalize=False, do_rescale=False)(image).pixel_values
    assert out.shape == (1, 3, 100, 150)  # int(100 * 451 / 300) = 150, truncated
    padded = ViTImageProcessor(size={"height": 9, "width": 9}, do_center_crop=True, crop_size=12,
                               do_rescale=False, do_normalize=False)(image).pixel_values
    assert padded.shape == (1, 3, 12, 12)
    assert np.all(padded[0, :, :2] == 0) and np.all(padded[0, :, -1] == 0) and np.any(padded[0, :, 2] != 0)


def test_do_convert_rgb_composites_alpha_onto_white():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red under full transparency
    for image in (Image.fromarray(rgba, "RGBA"), rgba):
        out = ViTImageProcessor(do_convert_rgb=True)(image).pixel_values
        np.testing.assert_array_equal(out, np.ones_like(out))  # white: (1 - 0.5) / 0.5
    gray = Image.fromarray(np.full((5, 7), 255, dtype=np.uint8), "L")
    np.testing.assert_array_equal(ViTImageProcessor(do_convert_rgb=True)(gray).pixel_values, np.ones((1, 3, 224, 224)))


def test_batch_feature():
    batch = BatchFeature(pixel_values=np.zeros(2))
    assert batch.pixel_values is batch["pixel_values"] and batch.data == {"pixel_values": batch["pixel_values"]}
    with pytest.raises(AttributeError, match="logits"):
        batch.logits


# ---------------------------------------------------------------------------------------------------
# Bad input to the processor


@pytest.mark.parametrize("images, match", [
    (np.zeros((10, 10), np.uint8), "3 dims"),
    (np.zeros((2, 2, 10, 10, 3), np.uint8), "3 dims"),
    (np.zeros((10, 10, 2), np.uint8), "channel axis"),
    (np.zeros((10, 10, 5), np.uint8), "channel axis"),
    (np.zeros((10, 10, 4), np.uint8), "4 channels"),
    (np.zeros((10, 10, 1), np.uint8), "1 channels"),
    (np.zeros((10, 10, 3), np.complex64), "dtype"),
    (np.zeros((10, 10, 3), bool), "dtype"),
    (np.zeros((0, 10, 3), np.uint8), "channel axis|empty"),
    (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
    (np.full((10, 10, 3), 2.5, np.float32), r"\[0, 1\]"),
    (np.full((10, 10, 3), 300, np.int64), r"\[0, 255\]"),
    (Image.new("L", (10, 10)), "do_convert_rgb"),
    (Image.new("RGBA", (10, 10)), "do_convert_rgb"),
    (Image.new("YCbCr", (10, 10)), "do_convert_rgb"),
    ([], "empty"),
    (None, "no images"),
    (5, "unsupported image type"),
    ([np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8)], "3 dims"),
])
def test_bad_images_raise_input_error(images, match):
    with pytest.raises(InputError, match=match):
        ViTImageProcessor()(images)


def test_bad_call_arguments_raise_input_error():
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(InputError, match="NumPy"):
        ViTImageProcessor()(image, return_tensors="tf")  # "pt" works where torch is installed (tests/test_hub_tensors.py)
    with pytest.raises(InputError, match="unknown processor arguments"):
        ViTImageProcessor()(image, sizes=3)
    with pytest.raises(InputError, match="resample"):
        ViTImageProcessor()(image, resample=9)
    with pytest.raises(InputError, match="size"):
        ViTImageProcessor()(image, size=None)  # do_resize without a size
    with pytest.raises(InputError, match="data_format"):
        ViTImageProcessor()(image, data_format="channels_last")


# ---------------------------------------------------------------------------------------------------
# Bad configs


def _write_config(tmp_path: pathlib.Path, config, name: str = "preprocessor_config.json") -> pathlib.Path:
    (tmp_path / name).write_text(config if isinstance(config, str) else json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("config, match", [
    ({"image_processor_type": "ViTImageProcessor", "size": "big"}, "size"),
    ({"image_processor_type": "ViTImageProcessor", "size": {"height": 0, "width": 3}}, r"size\['height'\]"),
    ({"image_processor_type": "ViTImageProcessor", "size": {"height": 3.5, "width": 3}}, r"size\['height'\]"),
    ({"image_processor_type": "ViTImageProcessor", "size": {"foo": 3}}, "size: keys"),
    ({"image_processor_type": "ViTImageProcessor", "size": {"longest_edge": 3}}, "cannot resize"),
    ({"image_processor_type": "ViTImageProcessor", "size": [1, 2, 3]}, "size"),
    ({"image_processor_type": "ViTImageProcessor", "crop_size": True}, "crop_size"),
    ({"image_processor_type": "ViTImageProcessor", "resample": 9}, "resample"),
    ({"image_processor_type": "ViTImageProcessor", "resample": "bicubic"}, "resample"),
    ({"image_processor_type": "ViTImageProcessor", "image_mean": [0.5, 0.5]}, "image_mean"),
    ({"image_processor_type": "ViTImageProcessor", "image_std": [0.5, 0, 0.5]}, "image_std"),
    ({"image_processor_type": "ViTImageProcessor", "image_std": "x"}, "image_std"),
    ({"image_processor_type": "ViTImageProcessor", "do_resize": "yes"}, "do_resize"),
    ({"image_processor_type": "ViTImageProcessor", "do_normalize": 1}, "do_normalize"),
    ({"image_processor_type": "ViTImageProcessor", "rescale_factor": "x"}, "rescale_factor"),
    ({"image_processor_type": "ViTImageProcessor", "rescale_factor": None}, "rescale_factor"),
    ({"image_processor_type": "ViTImageProcessor", "do_center_crop": True}, "crop_size"),
    ({"image_processor_type": "ViTImageProcessor", "do_pad": True}, "do_pad"),
    ({"image_processor_type": "BeitImageProcessor", "do_reduce_labels": "yes"}, "do_reduce_labels"),
    ({"feature_extractor_type": "BeitFeatureExtractor", "size": {"foo": 3}}, "size: keys"),
    ({"image_processor_type": "ConvNextImageProcessor", "size": {"height": 224, "width": 224}}, "shortest_edge"),
    ({"image_processor_type": "FooImageProcessor"}, "unsupported image_processor_type"),
    ({"image_processor_type": 5}, "image_processor_type must be a string"),
    ({"auto_map": {"AutoImageProcessor": "x.Y"}}, "remote code"),
    ({"do_resize": True}, "no image_processor_type"),
    ([1, 2], "JSON object"),
    ('{"image_processor_type": "ViTImageProcessor", "image_mean": NaN}', "NaN"),
    ('{"size": 3, "size": 4}', "duplicate"),
    ("{not json", "JSON"),
])
def test_bad_config_raises_config_error(tmp_path, config, match):
    path = _write_config(tmp_path, config)
    with pytest.raises(ConfigError, match=match) as info:
        ImageProcessor.from_pretrained(path)
    assert "preprocessor_config.json" in str(info.value)


def test_config_error_for_missing_file_and_bad_kwargs(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        ImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="unknown arguments"):
        ViTImageProcessor(colour=True)
    with pytest.raises(ConfigError, match="size"):
        DeiTImageProcessor(size=-1)
    with pytest.raises(TypeError):
        AutoImageProcessor()


def test_config_selection(tmp_path):
    assert type(ImageProcessor.from_pretrained(_write_config(tmp_path, {"image_processor_type": "DeiTImageProcessorFast"}))) is DeiTImageProcessor
    assert type(ImageProcessor.from_pretrained(_write_config(tmp_path, {"image_processor_type": "ViTImageProcessorPil"}))) is ViTImageProcessor
    # image_processor_type wins over the legacy key; a class's own from_pretrained ignores both, as upstream
    both = _write_config(tmp_path, {"image_processor_type": "ViTImageProcessor", "feature_extractor_type": "DeiTFeatureExtractor"})
    assert type(AutoImageProcessor.from_pretrained(both)) is ViTImageProcessor
    assert type(DeiTImageProcessor.from_pretrained(both)) is DeiTImageProcessor
    # no type at all: model_type of the config.json beside it
    _write_config(tmp_path, {"do_resize": True, "unknown_key": [1]})
    _write_config(tmp_path, {"model_type": "deit"}, "config.json")
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is DeiTImageProcessor
    # newer nesting under processor_config.json, and from_pretrained overrides
    _write_config(tmp_path, {"image_processor": {"image_processor_type": "ViTImageProcessor", "size": 64}}, "processor_config.json")
    processor = ImageProcessor.from_pretrained(tmp_path, resample=0)
    assert (type(processor), processor.size, processor.resample) == (ViTImageProcessor, {"height": 64, "width": 64}, 0)


def test_legacy_null_disables_crop(tmp_path):
    path = _write_config(tmp_path, {"feature_extractor_type": "DeiTFeatureExtractor", "do_center_crop": None})
    assert ImageProcessor.from_pretrained(path)(load_image(LANDSCAPE)).pixel_values.shape == (1, 3, 256, 256)


# ---------------------------------------------------------------------------------------------------
# load_image


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def _rgb_pixels(source) -> np.ndarray:
    image = load_image(source)
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    return np.asarray(image)


def test_load_image_sources(tmp_path):
    expected = np.asarray(Image.open(LANDSCAPE).convert("RGB"))
    data = LANDSCAPE.read_bytes()
    with open(LANDSCAPE, "rb") as handle:
        from_file = _rgb_pixels(handle)
    for pixels in (_rgb_pixels(LANDSCAPE), _rgb_pixels(str(LANDSCAPE)), _rgb_pixels(data), _rgb_pixels(bytearray(data)),
                   from_file, _rgb_pixels(io.BytesIO(data)), _rgb_pixels(Image.open(LANDSCAPE)), _rgb_pixels(expected)):
        np.testing.assert_array_equal(pixels, expected)


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")  # Pillow's note on P -> RGB
@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "YCbCr", "RGB"])
def test_load_image_modes_like_transformers(mode):
    """transformers' load_image is exif_transpose + convert("RGB"): alpha is dropped, not composited."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (6, 5, 4), dtype=np.uint8), "RGBA").convert(mode)
    np.testing.assert_array_equal(_rgb_pixels(image), np.asarray(image.convert("RGB")))
    if mode in ("L", "LA", "P", "RGBA", "RGB", "1"):  # round trip through a PNG file too
        np.testing.assert_array_equal(_rgb_pixels(_png_bytes(image)), np.asarray(image.convert("RGB")))


def test_load_image_palette_transparency_and_alpha_dropped():
    palette = Image.new("P", (3, 2))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    data = _png_bytes(palette, transparency=0)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0
    pixels = _rgb_pixels(data)
    assert tuple(pixels[0, 0]) == (10, 20, 30) and tuple(pixels[0, 1]) == (200, 100, 50)
    rgba = np.array([[[10, 20, 30, 0]]], dtype=np.uint8)
    assert tuple(_rgb_pixels(Image.fromarray(rgba, "RGBA"))[0, 0]) == (10, 20, 30)
    assert tuple(_rgb_pixels(rgba)[0, 0]) == (10, 20, 30)


def test_load_image_high_bit_depth_is_scaled():
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    expected = np.array([0, 1, 128, 255], dtype=np.uint8)
    for image in (Image.fromarray(values), Image.fromarray(values.astype(np.int32), "I"), values):
        pixels = _rgb_pixels(image)
        np.testing.assert_array_equal(pixels[0, :, 0], expected)
        np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])
    sixteen = Image.open(io.BytesIO(_png_bytes(Image.fromarray(values))))
    assert sixteen.mode.startswith("I")  # a 16-bit PNG, as Pillow opens it
    np.testing.assert_array_equal(_rgb_pixels(_png_bytes(Image.fromarray(values)))[0, :, 1], expected)
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(_rgb_pixels(Image.fromarray(unit, "F"))[0, :, 0], [0, 128, 255])
    wide = np.array([[-5.0, 100.4, 300.0]], dtype=np.float32)
    np.testing.assert_array_equal(_rgb_pixels(Image.fromarray(wide, "F"))[0, :, 0], [0, 100, 255])
    np.testing.assert_array_equal(_rgb_pixels(np.array([[True, False]]))[0, :, 1], [255, 0])
    with pytest.raises(ImageError, match="NaN"):
        load_image(Image.fromarray(np.array([[np.nan]], dtype=np.float32), "F"))


def test_load_image_applies_exif_orientation(tmp_path):
    image = Image.fromarray(np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    path = tmp_path / "rotated.png"
    path.write_bytes(_png_bytes(image, exif=exif))
    upright = load_image(path)
    assert upright.size == (2, 4)
    np.testing.assert_array_equal(np.asarray(upright), np.asarray(image.transpose(Image.Transpose.ROTATE_270)))


def test_load_image_tolerates_corrupt_exif(monkeypatch):
    image = Image.new("RGB", (4, 2), (10, 20, 30))
    for blob in (b"Exif\x00\x00garbage", b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", exif=blob)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow itself warns "Corrupt EXIF data"
            assert load_image(buffer.getvalue()).size == (4, 2)

    def broken(_image):
        raise SyntaxError("corrupt EXIF")

    monkeypatch.setattr("refvit.processing.ImageOps.exif_transpose", broken)
    assert load_image(_png_bytes(image)).size == (4, 2)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_load_image_truncated(tmp_path, fmt):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut") as info:
        load_image(path)
    assert "truncated" in str(info.value) or "decode" in str(info.value)
    with pytest.raises(ImageError, match="<bytes>"):
        load_image(path.read_bytes())


def test_truncated_pil_image_handed_in(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    path = tmp_path / "half.png"
    path.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(ImageError, match="half.png"):
        load_image(Image.open(path))
    with pytest.raises(ImageError, match="half.png"):
        ViTImageProcessor()(Image.open(path))


def test_load_image_not_an_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, not an image")
    with pytest.raises(ImageError, match="notes.txt.*not an image"):
        load_image(path)
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"")
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="never downloads"):
        load_image("https://example.com/cat.jpg")
    with pytest.raises(InputError):
        load_image(42)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that is only a signature and an IHDR claiming width x height (8-bit RGB)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


@pytest.mark.parametrize("side", [100_000, 10_000])  # Pillow's error level, and its warning level
def test_load_image_refuses_decompression_bombs(tmp_path, side):
    assert Image.MAX_IMAGE_PIXELS < side * side
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(side, side))
    with pytest.raises(ImageError, match="bomb.png.*decompression bomb"):
        load_image(path)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(_png_header(side, side))


def test_load_image_leaves_pillow_and_warning_state_alone(tmp_path):
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    for source in (_png_header(100_000, 100_000), _png_header(10_000, 10_000), b"junk", LANDSCAPE.read_bytes()[:5000]):
        with pytest.raises(ImageError):
            load_image(source)
    load_image(LANDSCAPE)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)) == before
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)  # Pillow's own default, never changed


def test_load_image_honours_the_current_pillow_limit(monkeypatch, tmp_path):
    data = _png_bytes(Image.new("RGB", (40, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: Pillow's warning level
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1600 px: Pillow's error level
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user switched the limit off
    assert load_image(data).size == (40, 40)
    with pytest.raises(ImageError, match="truncated|decode"):
        load_image(_png_header(100_000, 100_000))  # no longer a bomb, but no pixel data


@pytest.mark.parametrize("array, match", [
    (np.zeros((4, 4, 2), np.uint8), "shape"),
    (np.zeros((1, 4, 4, 3), np.uint8), "shape"),
    (np.zeros((4,), np.uint8), "shape"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (np.zeros((4, 4, 3), np.complex64), "dtype"),
    (np.full((4, 4, 3), 300, np.int32), r"\[0, 255\]"),
    (np.full((4, 4, 3), np.inf, np.float32), "NaN or infinity"),
])
def test_load_image_bad_arrays(array, match):
    with pytest.raises(InputError, match=match):
        load_image(array)


def test_errors_are_refvit_errors():
    assert issubclass(ImageError, RefvitError) and issubclass(InputError, ValueError)


# ---------------------------------------------------------------------------------------------------
# Differential check against transformers itself (only where it is installed)


@pytest.mark.needs_framework
def test_random_inputs_match_transformers():
    transformers = pytest.importorskip("transformers")
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    transformers.logging.set_verbosity_error()
    upstream = {ViTImageProcessor: transformers.ViTImageProcessorPil, DeiTImageProcessor: transformers.DeiTImageProcessorPil}
    sizes = st.one_of(
        st.integers(4, 64),
        st.fixed_dictionaries({"height": st.integers(4, 64), "width": st.integers(4, 64)}),
        st.fixed_dictionaries({"shortest_edge": st.integers(4, 64)}),
    )

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(cls=st.sampled_from(sorted(upstream, key=lambda c: c.__name__)), size=sizes, resample=st.integers(0, 5),
           crop=st.none() | st.tuples(st.integers(4, 64), st.integers(4, 64)), kind=st.sampled_from(["pil", "hwc", "chw", "unit", "rgba"]),
           height=st.integers(5, 60), width=st.integers(5, 60), seed=st.integers(0, 2**16))
    def check(cls, size, resample, crop, kind, height, width, seed):
        rng = np.random.default_rng(seed)
        kwargs = {"size": size, "resample": resample}
        if crop is not None:
            kwargs.update(do_center_crop=True, crop_size={"height": crop[0], "width": crop[1]})
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = {"pil": Image.fromarray(pixels), "hwc": pixels, "chw": np.moveaxis(pixels, -1, 0),
                 "unit": rng.random((height, width, 3)).astype(np.float32),
                 "rgba": rng.integers(0, 256, (height, width, 4), dtype=np.uint8)}[kind]
        if kind == "rgba":
            kwargs["do_convert_rgb"] = True
        if kind in ("hwc", "unit", "rgba") and height in (1, 3, 4):
            return  # transformers reads (3, W, 3)-like shapes as channels-first; covered by design, not here
        ours = cls(**kwargs)(image).pixel_values
        theirs = upstream[cls](**kwargs)(image, return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(ours, theirs)

    check()

