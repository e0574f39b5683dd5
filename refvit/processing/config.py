"""Reading a processor's settings (preprocessor_config.json, or processor_config.json's "image_processor") and
naming the processor class they ask for, as AutoImageProcessor does. Names, not classes: the classes live in the
family modules, which import refvit/processing/base.py, which reads the settings through this module."""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

from .. import strict_json
from ..errors import ConfigError

MAX_JSON_BYTES = 16 * 2**20  # preprocessor_config.json (and the config.json it may consult): as config.json's limit

# the processor classes refvit defines (image_processor_type, "Fast"/"Pil" suffixes dropped), and by model_type
# the one transformers' IMAGE_PROCESSOR_MAPPING picks when a config names none
PROCESSOR_NAMES = ("ViTImageProcessor", "DeiTImageProcessor", "ConvNextImageProcessor", "BeitImageProcessor",
                   "BitImageProcessor")
MODEL_TYPE_PROCESSORS = {"vit": "ViTImageProcessor", "deit": "DeiTImageProcessor", "cvt": "ConvNextImageProcessor",
                         "beit": "BeitImageProcessor", "data2vec-vision": "BeitImageProcessor",
                         "bit": "BitImageProcessor"}


def read_processor_config(path: str | os.PathLike) -> tuple[dict[str, Any], pathlib.Path]:
    """The processor settings dict and the file they came from (processor_config.json nesting included)."""
    root = pathlib.Path(path)
    if root.is_dir():
        nested = root / "processor_config.json"
        if nested.is_file():  # newer checkpoints may nest the settings under "image_processor"
            outer = _load_json(nested)
            if "image_processor" in outer:
                if not isinstance(outer["image_processor"], dict):
                    raise ConfigError(f"{nested}: 'image_processor' must be a JSON object")
                return outer["image_processor"], nested
        file = root / "preprocessor_config.json"
    else:
        file = root
    if not file.is_file():
        raise ConfigError(f"{file}: no such file (expected a preprocessor_config.json)")
    return _load_json(file), file


def _load_json(file: pathlib.Path) -> dict[str, Any]:
    return strict_json.load(file, ConfigError, MAX_JSON_BYTES, "processor config")


def processor_name(config: dict[str, Any], file: pathlib.Path) -> str:
    """The name of the processor class AutoImageProcessor.from_pretrained picks (models/auto/image_processing_auto.py),
    one of PROCESSOR_NAMES."""
    name = config.get("image_processor_type")
    source = "image_processor_type"
    if config.get("auto_map") is not None and not isinstance(config["auto_map"], dict):
        raise ConfigError(f"{file}: auto_map must be an object, got {type(config['auto_map']).__name__}")
    if name is None and "AutoImageProcessor" not in (config.get("auto_map") or {}):
        legacy = config.get("feature_extractor_type")
        if legacy is not None:
            if not isinstance(legacy, str):
                raise ConfigError(f"{file}: feature_extractor_type must be a string, got {legacy!r}")
            # legacy configs: "DeiTFeatureExtractor" names the processor "DeiTImageProcessor"
            name, source = legacy.replace("FeatureExtractor", "ImageProcessor"), "feature_extractor_type"
    if name is None and isinstance(config.get("auto_map"), dict) and config["auto_map"]:
        raise ConfigError(f"{file}: auto_map names remote code ({config['auto_map']}); refvit never runs remote code")
    if name is None:
        return _name_from_model_config(file)
    if not isinstance(name, str):
        raise ConfigError(f"{file}: {source} must be a string, got {name!r}")
    base = re.sub(r"(Fast|Pil)$", "", name)  # "ViTImageProcessorFast"/"...Pil" name the same processor
    if base in PROCESSOR_NAMES:
        return base
    raise ConfigError(f"{file}: unsupported {source} {name!r}; refvit supports {sorted(PROCESSOR_NAMES)}")


def _name_from_model_config(file: pathlib.Path) -> str:
    model_config = file.parent / "config.json"
    if not model_config.is_file():
        raise ConfigError(f"{file}: no image_processor_type or feature_extractor_type, and no config.json beside it")
    model_type = _load_json(model_config).get("model_type")
    if model_type not in MODEL_TYPE_PROCESSORS:
        raise ConfigError(f"{file}: no image_processor_type, and {model_config} has model_type {model_type!r}; "
                          f"refvit knows {sorted(MODEL_TYPE_PROCESSORS)}")
    return MODEL_TYPE_PROCESSORS[model_type]
