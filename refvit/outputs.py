"""Output objects with transformers' class and field names (`transformers/modeling_outputs.py`).

Like transformers' `ModelOutput`: attribute and key access, fields that are None are left out of `keys()`,
`out[0]` / `to_tuple()` give the non-None fields in declaration order. refvit adds one field, `intermediates`
(a dict name -> array, docs/DESIGN.md §5), present only when asked for.
"""

from __future__ import annotations

from collections import OrderedDict


class ModelOutput(OrderedDict):
    """Base class: subclasses list their fields in `FIELDS`, in transformers' order."""

    FIELDS: tuple = ()

    def __init__(self, **values):
        super().__init__()
        unknown = set(values) - set(self.FIELDS) - {"intermediates"}
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        for name in self.FIELDS + ("intermediates",):
            if values.get(name) is not None:
                self[name] = values[name]

    def __getattr__(self, name):
        if name in self.FIELDS or name == "intermediates":
            return self.get(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self[k] for k in self.keys())

    def __repr__(self):
        parts = ", ".join(f"{k}={getattr(v, 'shape', type(v).__name__)}" for k, v in self.items())
        return f"{type(self).__name__}({parts})"


class BaseModelOutputWithPooling(ModelOutput):
    FIELDS = ("last_hidden_state", "pooler_output", "hidden_states", "attentions")


class ImageClassifierOutput(ModelOutput):
    FIELDS = ("loss", "logits", "hidden_states", "attentions")


class MaskedImageModelingOutput(ModelOutput):
    FIELDS = ("loss", "reconstruction", "hidden_states", "attentions")


class DeiTForImageClassificationWithTeacherOutput(ModelOutput):
    FIELDS = ("logits", "cls_logits", "distillation_logits", "hidden_states", "attentions")


class ImageClassifierOutputWithNoAttention(ModelOutput):  # CvT, BiT
    FIELDS = ("loss", "logits", "hidden_states")


class BaseModelOutputWithCLSToken(ModelOutput):  # CvtModel (modeling_cvt.py)
    FIELDS = ("last_hidden_state", "cls_token_value", "hidden_states")


class BaseModelOutputWithPoolingAndNoAttention(ModelOutput):  # BitModel
    FIELDS = ("last_hidden_state", "pooler_output", "hidden_states")


class BackboneOutput(ModelOutput):  # BitBackbone, BeitBackbone
    FIELDS = ("feature_maps", "hidden_states", "attentions")


class MaskedLMOutput(ModelOutput):  # BeitForMaskedImageModeling: logits over the visual-token vocabulary
    FIELDS = ("loss", "logits", "hidden_states", "attentions")


class SemanticSegmenterOutput(ModelOutput):
    """BeitForSemanticSegmentation / Data2VecVisionForSemanticSegmentation. `auxiliary_logits` (the FCN auxiliary
    head, which transformers computes for its loss but does not return) is refvit's addition, last so that the
    positions of transformers' fields are unchanged."""
    FIELDS = ("loss", "logits", "hidden_states", "attentions", "auxiliary_logits")
