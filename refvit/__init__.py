"""refvit: NumPy/Numba reference forward passes of ViT, DeiT, BEiT (and data2vec-vision), CvT and BiT, as Hugging Face
transformers defines them, checked against golden tensors from the framework.

    import refvit
    model = refvit.from_pretrained("path/to/save_pretrained_dir")
    proc = refvit.ImageProcessor.from_pretrained("path/to/save_pretrained_dir")
    out = model(**proc(refvit.load_image("cat.jpg")))
"""

from .config import BeitConfig, BitConfig, CvtConfig, Data2VecVisionConfig, DeiTConfig, ViTConfig
from .errors import CheckpointError, ConfigError, ImageError, InputError, RefvitError, UnsafeCheckpointError
from .model import (ARCHITECTURES, CLASSES, AutoModel, AutoModelForImageClassification, Model, from_pretrained,
                    from_state_dict)
from .model import (  # transformers-named classes, one per architecture (refvit/model.py)
    BeitBackbone, BeitForImageClassification, BeitForMaskedImageModeling, BeitForSemanticSegmentation, BeitModel,
    BitBackbone, BitForImageClassification, BitModel, CvtForImageClassification, CvtModel,
    Data2VecVisionForImageClassification, Data2VecVisionForSemanticSegmentation, Data2VecVisionModel,
    DeiTForImageClassification, DeiTForImageClassificationWithTeacher, DeiTForMaskedImageModeling, DeiTModel,
    ViTForImageClassification, ViTForMaskedImageModeling, ViTModel)

# Image processing (refvit.processing, and with it Pillow) is imported on first use of one of these names, not by
# `import refvit`: a process that only runs a model on arrays never loads Pillow (~2.5 MiB, ~20 ms).
_PROCESSING = ("AutoFeatureExtractor", "AutoImageProcessor", "BatchFeature", "BeitFeatureExtractor",
               "BeitImageProcessor", "BitImageProcessor", "ConvNextFeatureExtractor", "ConvNextImageProcessor",
               "DeiTFeatureExtractor", "DeiTImageProcessor", "ImageProcessor", "ViTFeatureExtractor",
               "ViTImageProcessor", "TimmImageProcessor", "load_image")

__version__ = "0.1.0"

__all__ = [
    "RefvitError", "CheckpointError", "UnsafeCheckpointError", "ConfigError", "ImageError", "InputError",
    "from_pretrained", "from_state_dict", "Model", "ARCHITECTURES", "AutoModel", "AutoModelForImageClassification",
    *CLASSES,
    "ViTConfig", "DeiTConfig", "BeitConfig", "Data2VecVisionConfig", "CvtConfig", "BitConfig",
    "ImageProcessor", "AutoImageProcessor", "AutoFeatureExtractor", "BatchFeature", "ViTImageProcessor",
    "DeiTImageProcessor", "ViTFeatureExtractor", "DeiTFeatureExtractor", "load_image",
    "ConvNextImageProcessor", "ConvNextFeatureExtractor", "BeitImageProcessor", "BeitFeatureExtractor",
    "BitImageProcessor", "TimmImageProcessor",
]


def __getattr__(name):
    """`refvit.ImageProcessor`, `refvit.load_image`, …: refvit.processing's names, imported on first use."""
    if name in _PROCESSING:
        from . import processing
        value = getattr(processing, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PROCESSING))
