"""CvT config (transformers/models/cvt/configuration_cvt.py, 5.23)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .base import (PretrainedConfig, _is_int, _is_number, architectures_and_labels, check_common, check_model_type,
                   check_number, check_type, parses, raise_problems)


PROJECTION_METHODS = ("dw_bn", "avg", "linear")  # qkv_projection_method values (see models/cvt.py)


@dataclass(frozen=True, init=False)
class CvtConfig(PretrainedConfig):
    """transformers' `CvtConfig` (configuration_cvt.py): one entry per stage in every list; defaults are
    microsoft/cvt-13's."""

    MODEL_TYPE = "cvt"
    FIELDS = ("num_channels", "patch_sizes", "patch_stride", "patch_padding", "embed_dim", "num_heads", "depth",
              "mlp_ratio", "attention_drop_rate", "drop_rate", "drop_path_rate", "qkv_bias", "cls_token",
              "qkv_projection_method", "kernel_qkv", "padding_kv", "stride_kv", "padding_q", "stride_q",
              "initializer_range", "layer_norm_eps")

    model_type: str = "cvt"
    architectures: tuple = ()                    # HF class names this checkpoint was saved from
    num_channels: int = 3                        # input channels
    patch_sizes: tuple = (7, 3, 3)               # kernel of each stage's embedding convolution
    patch_stride: tuple = (4, 2, 2)              # its stride
    patch_padding: tuple = (2, 1, 1)             # its zero padding (both sides)
    embed_dim: tuple = (64, 192, 384)            # C of each stage
    num_heads: tuple = (1, 3, 6)                 # H of each stage, D = C // H
    depth: tuple = (1, 2, 10)                    # layers per stage (the number of stages is len(depth))
    mlp_ratio: tuple = (4.0, 4.0, 4.0)           # MLP width I = int(C · mlp_ratio), truncated as modeling_cvt.py
    qkv_bias: tuple = (True, True, True)         # whether projection_query/key/value have a bias
    cls_token: tuple = (False, False, True)      # whether the stage carries a class token
    qkv_projection_method: tuple = ("dw_bn", "dw_bn", "dw_bn")  # "dw_bn", or "avg"/"linear" (see conv_projection)
    kernel_qkv: tuple = (3, 3, 3)                # kernel of the convolutional projections
    padding_kv: tuple = (1, 1, 1)                # padding of the key/value projections
    stride_kv: tuple = (2, 2, 2)                 # stride of the key/value projections (shrinks the k/v grid)
    padding_q: tuple = (1, 1, 1)                 # padding of the query projection
    stride_q: tuple = (1, 1, 1)                  # stride of the query projection
    layer_norm_eps: float = 1e-12                # in config.json, never used by modeling_cvt.py (see LAYER_NORM_EPS)
    attention_drop_rate: tuple = (0.0, 0.0, 0.0)  # training only (refvit runs inference): kept and written back
    drop_rate: tuple = (0.0, 0.0, 0.0)           # training only
    drop_path_rate: tuple = (0.0, 0.0, 0.1)      # training only
    initializer_range: float = 0.02              # std of the random init (XModel(config, seed=…))
    id2label: dict = field(default_factory=dict)  # class index -> label name (num_labels = its length)
    label2id: dict = field(default_factory=dict)  # label name -> class index
    given: dict = field(default_factory=dict, compare=False, repr=False)  # the dict it was parsed from (to_dict)

    @property
    def num_stages(self) -> int:
        return len(self.depth)

    def mlp_width(self, stage: int) -> int:
        return int(self.embed_dim[stage] * self.mlp_ratio[stage])  # CvtIntermediate: nn.Linear(C, int(C * mlp_ratio))


# per-stage keys: (default, element kind, lower bound); drop rates are training-only but transformers indexes them too
_STAGE_INTS = {"patch_sizes": 1, "patch_stride": 1, "patch_padding": 0, "embed_dim": 1, "num_heads": 1, "depth": 0,
               "kernel_qkv": 1, "padding_kv": 0, "stride_kv": 1, "padding_q": 0, "stride_q": 1}
_STAGE_BOOLS = ("qkv_bias", "cls_token")
_STAGE_NUMBERS = ("mlp_ratio", "attention_drop_rate", "drop_rate", "drop_path_rate")


def _stage_list(raw: dict, key: str, default: tuple, n: int | None, ok, what: str, problems: list) -> tuple:
    """A per-stage list: a list of `n` values each passing `ok`, else a problem naming the key.
    Why so many parameters: the key, its default, the stage count and the check are what differ between the lists
    it reads."""
    value = raw.get(key, list(default))
    if not isinstance(value, (list, tuple)) or not all(ok(v) for v in value):
        problems.append(f"{key}: expected a list of {what}, got {value!r}")
        return tuple(default)
    if n is not None and len(value) != n:
        # stricter than transformers, which indexes the first len(depth) entries but reads some lists at [-1]
        got = f"got {len(value)}" if key in raw else f"missing, and the default {list(default)} has {len(value)}"
        problems.append(f"{key}: expected one entry per stage ({n}, the length of depth), {got}")
    return tuple(value)


@parses(CvtConfig)
def cvt_config_from_dict(raw: dict, source: str = "config.json") -> CvtConfig:
    """Parse and validate a CvT config dict; every problem is listed in one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    d = CvtConfig
    depth = _stage_list(raw, "depth", d.depth, None, lambda v: _is_int(v) and v >= 0, "non-negative ints", problems)
    n = len(depth)
    if n == 0:
        problems.append("depth: at least one stage is needed")
    values: dict = {"depth": depth}
    for key, low in _STAGE_INTS.items():
        if key != "depth":
            values[key] = _stage_list(raw, key, getattr(d, key), n, lambda v, low=low: _is_int(v) and v >= low,
                                      "ints >= %d" % low, problems)
    for key in _STAGE_BOOLS:
        values[key] = _stage_list(raw, key, getattr(d, key), n, lambda v: isinstance(v, bool), "booleans", problems)
    for key in _STAGE_NUMBERS:
        nums = _stage_list(raw, key, getattr(d, key), n, _is_number, "finite non-negative numbers", problems)
        values[key] = tuple(float(v) for v in nums) if key == "mlp_ratio" else nums
    values["qkv_projection_method"] = _stage_list(raw, "qkv_projection_method", d.qkv_projection_method, n,
                                                  lambda v: v in PROJECTION_METHODS, f"one of {PROJECTION_METHODS}",
                                                  problems)
    values["num_channels"] = check_type(raw, "num_channels", d.num_channels, int, problems)
    if values["num_channels"] <= 0:
        problems.append(f"num_channels: must be positive, got {values['num_channels']}")
    values["layer_norm_eps"] = float(check_number(raw, "layer_norm_eps", d.layer_norm_eps, problems))
    values["initializer_range"] = check_number(raw, "initializer_range", d.initializer_range, problems)
    if not problems:
        problems += _stage_problems(values, n)
    model_type = check_model_type(raw, ("cvt",), problems)
    archs, id2label, label2id = architectures_and_labels(raw, problems)
    check_common(raw, problems)
    raise_problems(source, problems)
    return CvtConfig._make(model_type=model_type, architectures=tuple(archs), id2label=id2label, label2id=label2id,
                           given=dict(raw), **values)


MAX_STRIDE = 2 ** 16  # a stride beyond any image size only empties the grid; bounds the integers the kernels see


def _stage_problems(v: dict, n: int) -> list[str]:
    """Combinations transformers cannot build or run, stage by stage."""
    problems = []
    for i in range(n):
        C, heads, k = v["embed_dim"][i], v["num_heads"][i], v["kernel_qkv"][i]
        if C % heads:
            problems.append(f"num_heads[{i}]: {heads} does not divide embed_dim[{i}] = {C}")
        if int(C * v["mlp_ratio"][i]) < 1:
            problems.append(f"mlp_ratio[{i}]: MLP width int({C} * {v['mlp_ratio'][i]}) is 0")
        if v["cls_token"][i] and C != v["embed_dim"][-1]:
            problems.append(f"cls_token[{i}]: transformers builds every class token with embed_dim[-1] = "
                            f"{v['embed_dim'][-1]} channels, which cannot join stage {i}'s {C}")
        for key, kernel in (("patch_padding", v["patch_sizes"][i]), ("padding_kv", k), ("padding_q", k)):
            if v[key][i] > kernel:  # more padding than kernel: outputs that see only zeros (and unbounded memory)
                problems.append(f"{key}[{i}]: {v[key][i]} is more than the kernel size {kernel}")
        for key in ("patch_stride", "stride_kv", "stride_q"):
            if v[key][i] > MAX_STRIDE:
                problems.append(f"{key}[{i}]: {v[key][i]} is more than refvit accepts ({MAX_STRIDE})")
        if v["qkv_projection_method"][i] == "avg" and v["padding_kv"][i] > k // 2:
            problems.append(f"padding_kv[{i}]: nn.AvgPool2d needs padding <= kernel_qkv // 2 = {k // 2}")
    return problems
