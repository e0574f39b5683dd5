"""Golden image-processor cases: what transformers' PIL backend makes of real photos.

Needs the `golden` extra (transformers 5.23; torch is not used here). Called by golden/generate.py, or on
its own:  python golden/processing_cases.py [OUT_DIR]   (default: golden/processing)

Each case is a folder OUT_DIR/<case>/ with
  preprocessor_config.json  exactly what `save_pretrained` writes (or a hand-written legacy config),
  expected.npz              pixel_values (B, 3, H, W) float32 from `AutoImageProcessor.from_pretrained(
                            case_dir, backend="pil")`, and pixels_uint8 (B, 3, H, W) uint8 from the same
                            processor with do_rescale=False, do_normalize=False (the resized/cropped pixels),
  meta.json                 versions (transformers, Pillow, libjpeg), the images used (sha256 of the file and of
                            the decoded pixels), command.

Pillow: resizing (and JPEG decoding, through the libjpeg it bundles) differs between Pillow releases, so the
arrays are only the truth for the Pillow that wrote them. OUT_DIR/<case>/expected.npz is Pillow PRIMARY_PILLOW's.
Run under another Pillow X.Y (a venv with transformers 5.23, torch 2.13.0 and pillow==X.Y.*), this script writes
OUT_DIR/<case>/pillow-X.Y/meta.json for every case, and OUT_DIR/<case>/pillow-X.Y/expected.npz only where that
Pillow's arrays differ from every committed one of the case (the PRIMARY_PILLOW one and other Pillows'); meta.json's
"expected_file" names the file, relative to the case folder, that holds them. refvit.verify.processing_golden
picks the file for the installed Pillow at run time. Regenerate the PRIMARY_PILLOW golden first, then the others.

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
PRIMARY_PILLOW = "13.0"  # major.minor of the Pillow whose arrays are <case>/expected.npz; others: <case>/pillow-X.Y/

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
    # CvT checkpoints ship ConvNeXT's processor: shortest edge to int(224 / 0.875) = 256, then a 224² center crop
    "cvt_default": ("cvt", {"size": {"shortest_edge": 224}, "crop_pct": 0.875, **IMAGENET_DEFAULT}, None,
                    [(LANDSCAPE, "load_image"), (PORTRAIT, "load_image")]),
    "cvt_legacy": ("cvt", None, {  # microsoft/cvt-13 style: legacy type name, int size (= shortest edge), crop_pct
        "crop_pct": 0.875, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "ConvNextFeatureExtractor", **IMAGENET_DEFAULT, "resample": 3, "size": 224,
    }, [(LANDSCAPE, "load_image"), (PORTRAIT, "load_image")]),
    "cvt_384": ("cvt", {"size": {"shortest_edge": 384}, "crop_pct": 0.5}, None,  # >= 384: warp to a square, no crop
                [(LANDSCAPE, "load_image"), (PORTRAIT, "load_image")]),
    "cvt_crop_pct": ("cvt", {"size": {"shortest_edge": 200}, "crop_pct": 0.9, "resample": 2}, None,  # int(222.2) = 222
                     [(PORTRAIT, "load_image")]),
}
# BEiT (and data2vec-vision): the ImageNet checkpoints' legacy config (microsoft/beit-base-patch16-224 style), the
# ADE20k segmentation ones (640x640, labels reduced) as save_pretrained writes them and as the hub's legacy config
# (whose `reduce_labels` key transformers 5 ignores), and a crop. Each also processes segmentation maps (`labels`).
BEIT_LEGACY = {"crop_size": 224, "do_center_crop": False, "do_normalize": True, "do_resize": True,
               "feature_extractor_type": "BeitFeatureExtractor", "image_mean": [0.5, 0.5, 0.5],
               "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224}
CASES.update({
    "beit_default": ("beit", {}, None, [(LANDSCAPE, "load_image"), (PORTRAIT, "load_image")]),
    "beit_imagenet_legacy": ("beit", None, BEIT_LEGACY, [(LANDSCAPE, "load_image")]),
    "beit_ade": ("beit", {"size": {"height": 640, "width": 640}, "resample": 2, "do_reduce_labels": True}, None,
                 [(LANDSCAPE, "load_image"), (PORTRAIT, "load_image")]),
    "beit_ade_legacy": ("beit", None, {**BEIT_LEGACY, "crop_size": 640, "size": 640, "reduce_labels": True},
                        [(PORTRAIT, "load_image")]),
    "beit_crop": ("beit", {"size": {"shortest_edge": 256}, "do_center_crop": True,
                           "crop_size": {"height": 200, "width": 240}, "do_reduce_labels": True}, None,
                  [(PORTRAIT, "load_image")]),
})
# BiT: the class defaults (shortest edge 224, crop, CLIP mean/std, RGB conversion on by default, so gray and RGBA
# photos are converted without asking), a 448² google/bit-50-like config, and legacy hand-written configs (int sizes:
# the size is the shortest edge since default_to_square is false; the crop an int square)
CASES.update({
    "bit_default": ("bit", {}, None, [(LANDSCAPE, "load_image"), (PORTRAIT, "load_image")]),
    "bit_448": ("bit", {"size": {"shortest_edge": 448}, "crop_size": {"height": 448, "width": 448},
                        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, None, [(LANDSCAPE, "load_image")]),
    "bit_convert_default": ("bit", {}, None, [(GRAY, "open"), (RGBA, "open")]),
    "bit_legacy": ("bit", None, {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                                 "image_processor_type": "BitImageProcessor", **IMAGENET_DEFAULT, "resample": 2,
                                 "size": 256}, [(LANDSCAPE, "load_image"), (PORTRAIT, "load_image")]),
    "bit_legacy_feature_extractor": ("bit", None, {"feature_extractor_type": "BitFeatureExtractor", "size": 240,
                                                   "crop_size": 200, "resample": 3}, [(PORTRAIT, "load_image")]),
})
# segmentation maps for the BEiT cases: ADE20k-like labels 0..150 (0 = background) made from each photo's gray levels
SEGMENTATION_LABELS = 151
# post_process_semantic_segmentation golden (case beit_ade): seeded N(0, 1) float32 logits (B, num_labels, h, w),
# resized to each target size (bilinear) then argmax; "small" targets take torch's small-output path
POST_PROCESS_LOGITS = (2, 7, 12, 18)
POST_PROCESS_TARGETS = {"photos": [(300, 451), (450, 301)], "small": [(9, 13), (40, 25)], "none": None}


def segmentation_map(image):
    """A single-band (mode L) label map from a photo: gray * 151 // 256, so labels 0..150."""
    from PIL import Image

    gray = np.asarray(image.convert("L")).astype(np.int64)
    return Image.fromarray((gray * SEGMENTATION_LABELS // 256).astype(np.uint8), "L")


def segmentation_extras(name: str, processor, images) -> tuple[dict, dict]:
    """BEiT cases: `labels` for the photos' label maps; for beit_ade also the post-processing golden."""
    import torch

    maps = [segmentation_map(image) for image in images]
    arrays = {"labels": processor(images, segmentation_maps=maps, return_tensors="np")["labels"]}
    meta = {"segmentation_maps": "refvit: golden.processing_cases.segmentation_map(image) (gray * 151 // 256, "
                                 "mode L), one per image; labels from processor(images, segmentation_maps=maps)"}
    if name == "beit_ade":
        logits = np.random.default_rng(0).standard_normal(POST_PROCESS_LOGITS).astype(np.float32)
        arrays["post_process/logits"] = logits
        outputs = type("Outputs", (), {"logits": torch.from_numpy(logits)})()
        for key, targets in POST_PROCESS_TARGETS.items():
            for i, m in enumerate(processor.post_process_semantic_segmentation(outputs, target_sizes=targets)):
                arrays[f"post_process/{key}/{i}"] = m.numpy()
        meta["post_process"] = {"logits": "np.random.default_rng(0).standard_normal(%s) float32"
                                          % (list(POST_PROCESS_LOGITS),),
                                "target_sizes": POST_PROCESS_TARGETS}
    return arrays, meta


def pillow_key(version: str | None = None) -> str:
    """major.minor of a Pillow version (default: the installed one): the unit goldens are kept for."""
    if version is None:
        import PIL

        version = PIL.__version__
    return ".".join(version.split(".")[:2])


def pillow_meta() -> dict:
    """The Pillow and the JPEG library it decodes with (JPEG decoding differs between libjpeg builds)."""
    import PIL
    from PIL import features

    return {"pillow_version": PIL.__version__, "libjpeg_version": features.version("jpg"),
            "libjpeg_turbo_version": features.version("libjpeg_turbo")}


def clean(out_dir: pathlib.Path) -> None:
    """Remove what a run under the installed Pillow writes: the primary files (keeping every pillow-X.Y/ folder,
    and every case folder that still holds one) or, under another Pillow, its own pillow-X.Y/ folders."""
    import shutil

    out_dir = pathlib.Path(out_dir)
    if not out_dir.is_dir():
        return
    key = pillow_key()
    for case_dir in (p for p in out_dir.iterdir() if p.is_dir()):
        if key != PRIMARY_PILLOW:
            shutil.rmtree(case_dir / f"pillow-{key}", ignore_errors=True)
            continue
        for path in case_dir.iterdir():
            if path.is_dir() and path.name.startswith("pillow-"):
                continue
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if not any(case_dir.iterdir()):
            case_dir.rmdir()


def owned(relative: pathlib.Path) -> bool:
    """Whether a file (path relative to OUT_DIR) is written by a run under the installed Pillow (for --check)."""
    parts = pathlib.Path(relative).parts
    key = pillow_key()
    variant = [p for p in parts[1:-1] if p.startswith("pillow-")]
    if key == PRIMARY_PILLOW:
        return not variant
    return variant == [f"pillow-{key}"] or parts[1:] == ("preprocessor_config.json",)


def _write_config(case_dir: pathlib.Path, processor_class, settings, legacy) -> None:
    """The case's preprocessor_config.json. Under a non-primary Pillow an existing one must be what this
    transformers writes (the config is Pillow-independent; a difference means: regenerate the primary first)."""
    import tempfile

    target = case_dir / "preprocessor_config.json"
    with tempfile.TemporaryDirectory() as tmp:
        if legacy is None:
            processor_class(**settings).save_pretrained(tmp)
        else:
            _write_json(pathlib.Path(tmp) / "preprocessor_config.json", legacy)
        fresh = (pathlib.Path(tmp) / "preprocessor_config.json").read_text()
    if pillow_key() != PRIMARY_PILLOW and target.exists():
        if json.loads(target.read_text()) != json.loads(fresh):
            raise RuntimeError(f"{target} differs from what transformers writes now: regenerate the Pillow "
                               f"{PRIMARY_PILLOW} golden first")
        return
    target.write_text(fresh)


def _same_arrays(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> bool:
    if not path.is_file():
        return False
    with np.load(path) as z:
        return set(z.files) == set(arrays) and all(
            z[k].dtype == v.dtype and z[k].shape == v.shape and np.array_equal(z[k], v) for k, v in arrays.items())


def generate(out_dir: pathlib.Path) -> list[str]:
    """Write every case under `out_dir` for the installed Pillow (see the module docstring); returns the names."""
    import transformers
    from PIL import Image
    from transformers import AutoImageProcessor, ConvNextImageProcessorPil, DeiTImageProcessorPil, ViTImageProcessorPil
    from transformers import BeitImageProcessorPil
    from transformers.image_utils import load_image

    transformers.logging.set_verbosity_error()
    classes = {"vit": ViTImageProcessorPil, "deit": DeiTImageProcessorPil, "cvt": ConvNextImageProcessorPil}
    classes["beit"] = BeitImageProcessorPil
    from transformers import BitImageProcessorPil
    classes["bit"] = BitImageProcessorPil
    out_dir = pathlib.Path(out_dir)
    key = pillow_key()
    written = []
    for name, (family, settings, legacy, images) in CASES.items():
        case_dir = out_dir / name
        # primary Pillow: the case folder itself; any other: its own subfolder (expected.npz only if it differs)
        target = case_dir if key == PRIMARY_PILLOW else case_dir / f"pillow-{key}"
        target.mkdir(parents=True, exist_ok=True)
        _write_config(case_dir, classes[family], settings, legacy)
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
        extra, extra_meta = segmentation_extras(name, processor, loaded) if family == "beit" else ({}, {})
        arrays = {"pixel_values": pixel_values, "pixels_uint8": pixels_uint8, **extra}
        # another Pillow's committed arrays, bit for bit the same as this one's (the primary's first): no copy
        committed = GOLDEN / "processing" / name
        same_as = [] if key == PRIMARY_PILLOW else [
            f for f in [committed / "expected.npz", *sorted(committed.glob("pillow-*/expected.npz"))]
            if f.parent.name != target.name and _same_arrays(f, arrays)]
        if same_as:
            expected_file = str(same_as[0].relative_to(committed))
            same = f"identical arrays to the committed {expected_file} (written under another Pillow)"
        else:
            expected_file = str((target / "expected.npz").relative_to(case_dir))
            same = None
            _write_npz(target / "expected.npz", arrays)
        _write_json(target / "meta.json", {
            "case": name,
            "command": COMMAND,
            "transformers_version": transformers.__version__,
            **pillow_meta(),
            "numpy_version": np.__version__,
            "processor_class": type(processor).__name__,
            "loaded_with": 'transformers.AutoImageProcessor.from_pretrained(case_dir, backend="pil")',
            "pixels_uint8": "same processor with do_rescale=False, do_normalize=False",
            "expected_file": expected_file,  # relative to the case folder
            **({"expected_note": same} if same else {}),
            "images": [_image_meta(f, how, img) for (f, how), img in zip(images, loaded)],
            "pixel_values_shape": list(pixel_values.shape),
            **extra_meta,
        })
        written.append(str(target.relative_to(out_dir)))
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
    clean(target)
    print("\n".join(generate(target)))
