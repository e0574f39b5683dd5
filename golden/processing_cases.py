"""Golden image-processor cases: what transformers' PIL backend makes of real photos.

Needs the `golden` extra (transformers 5.23; torch is not used here). Called by golden/generate.py, or on
its own:  python golden/processing_cases.py [OUT_DIR]   (default: golden/processing)

Each case is a folder OUT_DIR/<case>/ with
  preprocessor_config.json  exactly what `save_pretrained` writes (or a hand-written legacy config),
  expected.npz              pixel_values (B, 3, H, W) float32 from `AutoImageProcessor.from_pretrained(
                            case_dir, backend="pil")`, and pixels_uint8 (B, 3, H, W) uint8 from the same
                            processor with do_rescale=False, do_normalize=False (the resized/cropped pixels),
  meta.json                 versions, the images used (sha256 of the file and of the decoded pixels), command.

Determinism: no timestamps anywhere; expected.npz is a zip written with fixed member order, fixed
1980-01-01 timestamps and zlib level 6, so regenerating with the same versions gives identical bytes.
A `--check` should still compare array contents (np.load), since another zlib build may compress differently.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import sys
import zipfile

import numpy as np

GOLDEN = pathlib.Path(__file__).resolve().parent
IMAGES = GOLDEN / "images"
COMMAND = "python golden/generate.py  (golden/processing_cases.py:generate)"

IMAGENET_DEFAULT = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
LANDSCAPE, PORTRAIT = "chelsea_landscape.jpg", "astronaut_portrait.jpg"
GRAY, RGBA = "camera_gray.png", "coffee_rgba.png"

# case name -> (processor family, settings passed to the *ImageProcessorPil class or None for a legacy
#               hand-written config, legacy config dict, [(image file, how it is loaded)])
# "load_image": transformers.image_utils.load_image (EXIF transpose + RGB); "open": PIL.Image.open, mode kept.
CASES = {
    "vit_default": ("vit", {}, None, [(LANDSCAPE, "load_image"), (PORTRAIT, "load_image")]),
    "deit_default": ("deit", {}, None, [(LANDSCAPE, "load_image"), (PORTRAIT, "load_image")]),
    "deit_legacy": ("deit", None, {  # facebook/deit-*-224 style: legacy type name, int sizes, resample 3
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "DeiTFeatureExtractor", **IMAGENET_DEFAULT, "resample": 3, "size": 256,
    }, [(LANDSCAPE, "load_image"), (PORTRAIT, "load_image")]),
    "vit_legacy": ("vit", None, {  # google/vit-base-patch16-224 style
        "do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224,
    }, [(PORTRAIT, "load_image")]),
    "vit_nonsquare": ("vit", {"size": {"height": 160, "width": 288}, "resample": 3, **IMAGENET_DEFAULT},
                      None, [(PORTRAIT, "load_image")]),
    "deit_shortest_edge": ("deit", {"size": {"shortest_edge": 240}, "crop_size": {"height": 224, "width": 200},
                                    "resample": 1}, None, [(LANDSCAPE, "load_image"), (PORTRAIT, "load_image")]),
    "vit_crop_pad": ("vit", {"size": {"height": 201, "width": 183}, "do_center_crop": True,
                             "crop_size": {"height": 224, "width": 224}}, None, [(LANDSCAPE, "load_image")]),
    "vit_convert_gray": ("vit", {"do_convert_rgb": True}, None, [(GRAY, "open")]),
    "deit_convert_rgba": ("deit", {"do_convert_rgb": True, **IMAGENET_DEFAULT}, None, [(RGBA, "open")]),
}


def generate(out_dir: pathlib.Path) -> list[str]:
    """Write every case under `out_dir`; returns the case names written."""
    import PIL
    import transformers
    from PIL import Image
    from transformers import AutoImageProcessor, DeiTImageProcessorPil, ViTImageProcessorPil
    from transformers.image_utils import load_image

    transformers.logging.set_verbosity_error()
    classes = {"vit": ViTImageProcessorPil, "deit": DeiTImageProcessorPil}
    out_dir = pathlib.Path(out_dir)
    written = []
    for name, (family, settings, legacy, images) in CASES.items():
        case_dir = out_dir / name
        case_dir.mkdir(parents=True, exist_ok=True)
        if legacy is None:
            classes[family](**settings).save_pretrained(case_dir)
        else:
            _write_json(case_dir / "preprocessor_config.json", legacy)
        # the config file is the only source of truth: reload it the way users do, forcing the PIL backend
        processor = AutoImageProcessor.from_pretrained(case_dir, backend="pil")
        if type(processor) is not classes[family]:
            chosen, wanted = type(processor).__name__, classes[family].__name__
            raise RuntimeError(f"{name}: AutoImageProcessor chose {chosen}, expected {wanted}")
        loaded = [load_image(str(IMAGES / f)) if how == "load_image" else Image.open(IMAGES / f) for f, how in images]
        pixel_values = processor(loaded, return_tensors="np")["pixel_values"]
        pixels_uint8 = processor(loaded, return_tensors="np", do_rescale=False, do_normalize=False)["pixel_values"]
        if pixel_values.dtype != np.float32 or pixels_uint8.dtype != np.uint8:
            raise RuntimeError(f"{name}: unexpected dtypes {pixel_values.dtype}, {pixels_uint8.dtype}")
        _write_npz(case_dir / "expected.npz", {"pixel_values": pixel_values, "pixels_uint8": pixels_uint8})
        _write_json(case_dir / "meta.json", {
            "case": name,
            "command": COMMAND,
            "transformers_version": transformers.__version__,
            "pillow_version": PIL.__version__,
            "numpy_version": np.__version__,
            "processor_class": type(processor).__name__,
            "loaded_with": 'transformers.AutoImageProcessor.from_pretrained(case_dir, backend="pil")',
            "pixels_uint8": "same processor with do_rescale=False, do_normalize=False",
            "images": [_image_meta(f, how, img) for (f, how), img in zip(images, loaded)],
            "pixel_values_shape": list(pixel_values.shape),
        })
        written.append(name)
    return written


def _image_meta(file: str, how: str, image) -> dict:
    pixels = np.ascontiguousarray(np.asarray(image))
    return {
        "file": f"images/{file}",
        "load": how,  # "load_image" -> refvit.load_image(path); "open" -> PIL.Image.open(path), mode kept
        "file_sha256": hashlib.sha256((IMAGES / file).read_bytes()).hexdigest(),
        "decoded_mode": image.mode,
        "decoded_size_wh": list(image.size),
        "decoded_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),  # tells a decoder change from a processor bug
    }


def _write_json(path: pathlib.Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez, but with fixed timestamps and member order so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN / "processing"
    print("\n".join(generate(target)))
