"""Image inputs: every PIL mode, EXIF orientations 1-8 and corrupt EXIF, multi-frame files, 1x1 and extreme
aspect ratios — each compared with transformers where refvit matches it, or with the documented rule where refvit
deliberately does better.

Behaviour (refvit/processing.py's docstring is the reference):
- `refvit.load_image` = transformers' `load_image` (EXIF transpose, then `convert("RGB")`) for 1, L, LA, P (with
  and without transparency), PA, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV: alpha and palette transparency are
  dropped, exactly as transformers does. La (premultiplied, in-memory only) cannot be converted by Pillow: ImageError.
- I;16 / I;16B / I: refvit scales 16 bits to 8 (round(v * 255 / 65535)); transformers' convert("RGB") clips at 255,
  which turns almost every 16-bit photo white. F: [0, 1] data is scaled by 255, other data clipped; transformers
  truncates. Deliberate.
- processors with do_convert_rgb=True composite alpha onto white, exactly as transformers' convert_to_rgb.
- EXIF orientations 1-8 are applied as transformers applies them; a corrupt EXIF block or an invalid orientation
  leaves the image as stored (transformers raises on some of these: deliberate).
- multi-frame GIF / TIFF / APNG: the first frame (the frame the caller's PIL object is on, if one is passed).
- 1x1 images and extreme aspect ratios give bit-identical pixel values to transformers' PIL processors, as long as
  no intermediate image exceeds Pillow's `Image.MAX_IMAGE_PIXELS` (refvit then raises InputError).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

import refvit
from refvit.errors import ImageError, InputError

from conftest import framework


def hf():
    """transformers, for the comparisons (marked needs_framework: they skip, saying why, where it is missing)."""
    transformers = framework("transformers")
    transformers.logging.set_verbosity_error()
    return transformers


def hf_load_image(image):
    return framework("transformers.image_utils").load_image(image)


RNG = np.random.default_rng(6)
RGBA = RNG.integers(0, 256, (7, 5, 4), dtype=np.uint8)
RGBA[0, 0, 3], RGBA[1, 1, 3] = 0, 255  # fully transparent and fully opaque pixels


def rgb(image) -> np.ndarray:
    out = refvit.load_image(image)
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    return np.asarray(out)


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------------ modes

SAME_AS_TRANSFORMERS = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"]


def image_in_mode(mode: str) -> Image.Image:
    base = Image.fromarray(RGBA, "RGBA")
    if mode in ("LAB", "HSV"):
        return base.convert("RGB").convert(mode) if mode == "HSV" else Image.fromarray(RGBA[..., :3], "LAB")
    if mode == "La":
        return base.convert("LA").convert("La")
    if mode == "RGBa":
        return base.convert("RGBa")
    if mode == "PA":
        return base.convert("P").convert("PA")
    return base.convert(mode)


@pytest.mark.needs_framework
@pytest.mark.filterwarnings("ignore:Palette images with Transparency")
@pytest.mark.parametrize("mode", SAME_AS_TRANSFORMERS)
def test_modes_match_transformers_load_image(mode):
    image = image_in_mode(mode)
    assert image.mode == mode
    np.testing.assert_array_equal(rgb(image), np.asarray(hf_load_image(image.copy())))


@pytest.mark.needs_framework
@pytest.mark.parametrize("mode, fmt", [("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"),
                                       ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("YCbCr", "JPEG"), ("RGB", "TIFF"),
                                       ("LA", "TIFF"), ("P", "GIF"), ("RGBA", "WEBP")])
def test_modes_through_files_match_transformers(tmp_path, mode, fmt):
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(encoded(image_in_mode(mode), fmt))
    np.testing.assert_array_equal(rgb(path), np.asarray(hf_load_image(str(path))))


def test_premultiplied_la_is_a_clear_error():
    """Pillow cannot convert La (premultiplied L + alpha, an in-memory mode) to RGB: refvit says so, naming the mode."""
    with pytest.raises(ImageError, match="cannot convert PIL mode 'La' to RGB"):
        refvit.load_image(image_in_mode("La"))


@pytest.mark.needs_framework
def test_premultiplied_la_fails_in_transformers_too():
    with pytest.raises(ValueError):
        hf_load_image(image_in_mode("La"))


@pytest.mark.needs_framework
def test_palette_with_transparency_drops_transparency_like_transformers():
    palette = Image.new("P", (3, 2))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    data = encoded(palette, "PNG", transparency=0)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and opened.info.get("transparency") == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.asarray(hf_load_image(Image.open(io.BytesIO(data))))
    np.testing.assert_array_equal(rgb(data), expected)
    assert tuple(expected[0, 0]) == (10, 20, 30)  # the transparent colour, not white


def sixteen_bit() -> np.ndarray:
    return np.array([[0, 1, 128, 257], [32767, 32768, 65279, 65535]], dtype=np.uint16)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_modes_scaled_not_clipped(mode):
    values = sixteen_bit()
    image = Image.fromarray(values.astype(np.int32), "I").convert(mode) if mode != "I;16" else Image.fromarray(values)
    assert image.mode == mode
    expected = ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    pixels = rgb(image)
    np.testing.assert_array_equal(pixels[..., 0], expected)
    assert (pixels[..., 0] == pixels[..., 2]).all()
    assert not (expected[1] == 255).all()


@pytest.mark.needs_framework
def test_sixteen_bit_clips_in_transformers():
    """What refvit deliberately departs from: transformers' convert("RGB") clips 16-bit values at 255."""
    theirs = np.asarray(hf_load_image(Image.fromarray(sixteen_bit())))[..., 0]
    assert (theirs[1] == 255).all()


def test_sixteen_bit_png_and_tiff_files(tmp_path):
    values = sixteen_bit()
    for fmt in ("PNG", "TIFF"):
        path = tmp_path / f"deep.{fmt.lower()}"
        path.write_bytes(encoded(Image.fromarray(values), fmt))
        assert Image.open(path).mode.startswith("I")
        np.testing.assert_array_equal(rgb(path)[..., 1], ((values.astype(np.int64) * 255 + 32767) // 65535))


def test_float_mode_unit_range_scaled_other_ranges_clipped(tmp_path):
    unit = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(rgb(Image.fromarray(unit, "F"))[0, :, 0], [0, 64, 128, 255])
    wide = np.array([[-3.0, 0.4, 99.6, 1e9]], dtype=np.float32)
    np.testing.assert_array_equal(rgb(Image.fromarray(wide, "F"))[0, :, 0], [0, 0, 100, 255])
    path = tmp_path / "f.tiff"
    path.write_bytes(encoded(Image.fromarray(unit, "F"), "TIFF"))
    np.testing.assert_array_equal(rgb(path)[0, :, 2], [0, 64, 128, 255])
    with pytest.raises(ImageError, match="NaN"):
        refvit.load_image(Image.fromarray(np.array([[np.inf]], np.float32), "F"))


@pytest.mark.needs_framework
@pytest.mark.filterwarnings("ignore:Palette images with Transparency")
@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "YCbCr", "RGB"])
def test_do_convert_rgb_in_processors_matches_transformers(mode):
    image = image_in_mode(mode)
    if mode == "P":
        image.info["transparency"] = 3
    ours = refvit.ViTImageProcessor(size=8, do_convert_rgb=True)(image)["pixel_values"]
    theirs = hf().ViTImageProcessorPil(size=8, do_convert_rgb=True)(image, return_tensors="np")
    np.testing.assert_array_equal(ours, theirs["pixel_values"])


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "F", "1"])
def test_non_rgb_without_conversion_refused_up_front(mode):
    image = Image.fromarray(sixteen_bit()) if mode == "I;16" else image_in_mode(mode) if mode != "F" else \
        Image.fromarray(np.zeros((3, 3), np.float32), "F")
    with pytest.raises(InputError, match=f"mode '{mode}' is not RGB"):
        refvit.ViTImageProcessor(size=8)(image)


# ------------------------------------------------------------------------------------------------------- EXIF

# orientation -> what a viewer does to the stored pixels (EXIF 2.3, as ImageOps.exif_transpose implements it)
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def with_orientation(pixels: np.ndarray, orientation, fmt="PNG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(Image.fromarray(pixels), fmt, exif=exif)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])  # lossless formats: the geometry itself
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_turn_the_pixels(fmt, orientation):
    pixels = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)  # not square: rotations change the size
    np.testing.assert_array_equal(rgb(with_orientation(pixels, orientation, fmt)), ORIENTATIONS[orientation](pixels))


@pytest.mark.needs_framework
@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_like_transformers(fmt, orientation):
    pixels = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    data = with_orientation(pixels, orientation, fmt)
    np.testing.assert_array_equal(rgb(data), np.asarray(hf_load_image(Image.open(io.BytesIO(data)))))


@pytest.mark.parametrize("orientation", [0, 9, 255, 65535])
def test_invalid_orientation_values_leave_the_image_as_stored(orientation):
    pixels = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rgb(with_orientation(pixels, orientation)), pixels)


@pytest.mark.parametrize("blob", [
    b"Exif\x00\x00garbage",
    b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",  # IFD offset far past the end
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06",  # truncated entry
    b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff",  # 65535 entries claimed
])
def test_corrupt_exif_is_tolerated(blob):
    image = Image.new("RGB", (4, 2), (10, 20, 30))
    data = encoded(image, "JPEG", exif=blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data" for some of them
        out = refvit.load_image(data)
        batch = refvit.ViTImageProcessor(size=4)(Image.open(io.BytesIO(data)))
    assert out.size == (4, 2) and batch["pixel_values"].shape == (1, 3, 4, 4)


# ------------------------------------------------------------------------------------------------ multi-frame

FRAME_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def frames():
    return [Image.new("RGB", (6, 4), colour) for colour in FRAME_COLOURS]


MULTI_FRAME = [("GIF", {}), ("TIFF", {}), ("PNG", {}), ("WEBP", {"lossless": True})]


def multi_frame_file(tmp_path, fmt, kwargs):
    first, *rest = frames()
    path = tmp_path / f"anim.{fmt.lower()}"
    first.save(path, fmt, save_all=True, append_images=rest, **kwargs)
    assert getattr(Image.open(path), "n_frames", 1) == 3, fmt
    return path


@pytest.mark.parametrize("fmt, kwargs", MULTI_FRAME)
def test_multi_frame_files_give_the_first_frame(tmp_path, fmt, kwargs):
    pixels = rgb(multi_frame_file(tmp_path, fmt, kwargs))
    assert pixels.shape == (4, 6, 3) and tuple(pixels[0, 0]) == FRAME_COLOURS[0]


@pytest.mark.needs_framework
@pytest.mark.parametrize("fmt, kwargs", MULTI_FRAME)
def test_multi_frame_files_like_transformers(tmp_path, fmt, kwargs):
    path = multi_frame_file(tmp_path, fmt, kwargs)
    np.testing.assert_array_equal(rgb(path), np.asarray(hf_load_image(str(path))))
    batch = refvit.ViTImageProcessor(size=4, do_convert_rgb=True)(Image.open(path))
    theirs = hf().ViTImageProcessorPil(size=4, do_convert_rgb=True)(Image.open(path), return_tensors="np")
    np.testing.assert_array_equal(batch["pixel_values"], theirs["pixel_values"])


def gif_on_its_last_frame(tmp_path) -> Image.Image:
    first, *rest = frames()
    path = tmp_path / "anim.gif"
    first.save(path, "GIF", save_all=True, append_images=rest)
    image = Image.open(path)
    image.seek(2)
    return image


def test_pil_object_on_a_later_frame_is_taken_as_it_is(tmp_path):
    assert tuple(rgb(gif_on_its_last_frame(tmp_path))[0, 0]) == FRAME_COLOURS[2]


@pytest.mark.needs_framework
def test_pil_object_on_a_later_frame_like_transformers(tmp_path):
    assert tuple(np.asarray(hf_load_image(gif_on_its_last_frame(tmp_path)))[0, 0]) == FRAME_COLOURS[2]


# ------------------------------------------------------------------------------------- tiny and extreme shapes

PROCESSOR_PAIRS = [("ViTImageProcessor", {}), ("DeiTImageProcessor", {}), ("BitImageProcessor", {}),
                   ("ConvNextImageProcessor", {}), ("BeitImageProcessor", {}),
                   ("ConvNextImageProcessor", {"size": {"shortest_edge": 16}, "crop_pct": 0.5}),
                   ("BitImageProcessor", {"size": {"shortest_edge": 16}, "crop_size": 12}),
                   ("DeiTImageProcessor", {"size": 20, "crop_size": 16})]


SHAPES = [(1, 1), (1, 2), (2, 1), (1, 300), (300, 1), (2, 500), (500, 3)]
# the class defaults (224/384) on tiny images; long strips with small sizes, to keep CI fast
SHAPE_CASES = [(name, kwargs, h, w) for name, kwargs in PROCESSOR_PAIRS for h, w in SHAPES
               if kwargs or (h, w) in ((1, 1), (1, 2))]


@pytest.mark.needs_framework
@pytest.mark.parametrize("name, kwargs, height, width", SHAPE_CASES,
                         ids=[f"{n}{k}-{h}x{w}" for n, k, h, w in SHAPE_CASES])
def test_tiny_and_extreme_aspect_ratios_match_transformers(name, kwargs, height, width):
    image = Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))
    ours = getattr(refvit, name)(**kwargs)(image)["pixel_values"]
    theirs = getattr(hf(), name + "Pil")(**kwargs)(image, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(ours, theirs)


def test_one_pixel_image_through_a_processor():
    image = Image.new("RGB", (1, 1), (200, 100, 50))
    batch = refvit.ViTImageProcessor(size=32)(image)
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert np.allclose(batch["pixel_values"][0, :, 5, 7], (np.array([200, 100, 50]) / 255 - 0.5) / 0.5)


def test_one_pixel_arrays_and_files(tmp_path):
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"):
        path = tmp_path / f"one.{fmt.lower()}"
        Image.new("RGB", (1, 1), (9, 99, 199)).save(path, fmt)
        assert rgb(path).shape == (1, 1, 3), fmt
    assert rgb(np.array([[[9, 99, 199]]], np.uint8)).shape == (1, 1, 3)
