"""Resolution sweeps: one trace per input size, where ports break most often (position-embedding interpolation,
BEiT's relative position bias resized to another grid).

    refvit trace MODEL IMAGE --sizes 224 240 384x256 --out ref_sweep/      # ref_sweep/224x224.safetensors …
    refvit compare ref_sweep/ port_sweep/                                  # pairs the files by size

A size is `S` (S×S) or `HxW`. An image is preprocessed by the model's processor resized straight to H×W (no centre
crop), so each trace holds the exact `pixel_values` of its size; a `.npy` input is resized bilinearly, channel by
channel. Models with position embeddings (ViT, DeiT, BEiT, data2vec-vision) run with interpolate_pos_encoding=True at
every size that is not their configured one; CvT and BiT take any size as it is.
"""

from __future__ import annotations

import os
import re

import numpy as np

from refvit.errors import InputError

SWEEP_FILE = re.compile(r"^(\d+)x(\d+)\.safetensors$")
POSITION_EMBEDDINGS = ("vit", "deit", "beit", "data2vec-vision")


def parse_size(text) -> tuple[int, int]:
    """"224" -> (224, 224); "384x256" -> (384, 256) (height × width)."""
    m = re.fullmatch(r"(\d+)(?:[x×](\d+))?", str(text).strip())
    if not m or int(m[1]) < 1 or (m[2] is not None and int(m[2]) < 1):
        raise InputError(f"size {text!r}: expected S or HxW (e.g. 224 or 384x256)")
    return int(m[1]), int(m[2] or m[1])


def label(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def resize_pixels(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, C, H, W) pixel_values resized bilinearly to `size`, channel by channel (Pillow's float mode)."""
    from PIL import Image

    if x.shape[-2:] == size:
        return x
    out = np.empty(x.shape[:2] + size, np.float32)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            img = Image.fromarray(np.ascontiguousarray(x[b, c], np.float32), mode="F")
            out[b, c] = np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), np.float32)
    return out.astype(x.dtype, copy=False)


def sweep_input(source, size: tuple[int, int], model_dir=None, processor=None, dtype="float32"):
    """(pixel_values at `size`, info) from an image (the processor, resized to the size, no crop) or an array/.npy."""
    from .capture import load_input

    path = None if isinstance(source, np.ndarray) or hasattr(source, "detach") else os.fspath(source)
    if path is None or path.endswith((".npy", ".npz")):
        x, info = load_input(source, model_dir, processor, dtype)
        return resize_pixels(x, size), {**info, "resized": f"bilinear to {label(size)}"}
    from refvit import load_image
    from refvit.processing import ImageProcessor

    proc_dir = os.fspath(processor) if processor is not None else model_dir
    if proc_dir is None or not os.path.exists(proc_dir):
        raise InputError(f"{path}: an image needs the model's preprocessor_config.json (or --processor DIR)")
    proc_dir = os.path.dirname(proc_dir) if proc_dir.endswith(".json") else proc_dir
    proc = ImageProcessor.from_pretrained(proc_dir)
    overrides = {"size": {"height": size[0], "width": size[1]}}
    if "do_center_crop" in proc._keys():
        overrides["do_center_crop"] = False
    x = proc(load_image(path), return_tensors="np", **overrides)["pixel_values"]
    return x.astype(dtype, copy=False), {"input": os.path.basename(path), "processor": type(proc).__name__,
                                         "resized": f"processor resize to {label(size)}, no crop"}


def interpolation(model_type: str, configured, size: tuple[int, int]) -> dict:
    """The call options a size needs: interpolate_pos_encoding where the model has position embeddings and the size
    is not the configured image size."""
    if model_type not in POSITION_EMBEDDINGS:
        return {}
    conf = configured if isinstance(configured, (tuple, list)) else (configured, configured)
    return {} if tuple(conf) == tuple(size) else {"interpolate_pos_encoding": True}


def sweep_files(directory) -> dict[str, str]:
    """{size label: path} of the sweep traces in a directory (files named HxW.safetensors)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return {}
    return {f[: -len(".safetensors")]: os.path.join(directory, f) for f in sorted(os.listdir(directory))
            if SWEEP_FILE.match(f)}


def pairs(reference_dir, candidate_dir) -> list[tuple[str, str, str]]:
    """[(size label, reference trace, candidate trace)] for the sizes both sweeps hold; an error when none match,
    listing what each side has."""
    ref, cand = sweep_files(reference_dir), sweep_files(candidate_dir)
    common = [s for s in ref if s in cand]
    if not common:
        raise InputError(f"no size in common between {reference_dir} ({', '.join(ref) or 'no HxW.safetensors'}) and "
                         f"{candidate_dir} ({', '.join(cand) or 'no HxW.safetensors'})")
    return [(s, ref[s], cand[s]) for s in sorted(common, key=lambda s: tuple(int(v) for v in s.split("x")))]
