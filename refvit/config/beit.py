"""BEiT and data2vec-vision configs (transformers/models/beit/configuration_beit.py,
.../data2vec/configuration_data2vec_vision.py, 5.23)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError
from .base import (PatchGridMixin, architectures_and_labels, backbone_outputs, check_activation, check_common,
                   check_model_type, check_number, check_type, int_list, parse_pair, parses, positive_ints,
                   raise_problems)


MAX_LAYERS = 4096  # far beyond any real checkpoint; bounds the work done before the tensors are checked
# UperNet pools the last feature map to scale x scale bins whatever its size (torch's adaptive bins overlap and
# repeat pixels past the map's size), allocating (B, hidden_size, scale, scale) per scale: no weight bounds it.
# Real heads use (1, 2, 3, 6); the pooled map (token grid halved) is 128 wide only for 4096-pixel inputs at
# patch 16. 128 caps each pooled map at 64 KiB per channel and image.
MAX_POOL_SCALE = 128


@dataclass(frozen=True, init=False)
class BeitConfig(PatchGridMixin):
    """transformers' `BeitConfig` (configuration_beit.py); defaults are transformers' (BEiT-B at 224²).
    `Data2VecVisionConfig` has the same fields but no backbone ones (out_features, add_fpn, reshape_hidden_states)."""

    MODEL_TYPE = "beit"
    FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
              "layer_norm_eps", "image_size", "patch_size", "num_channels", "use_mask_token",
              "use_absolute_position_embeddings", "use_relative_position_bias", "use_shared_relative_position_bias",
              "layer_scale_init_value", "drop_path_rate", "use_mean_pooling", "pool_scales", "use_auxiliary_head",
              "auxiliary_loss_weight", "auxiliary_channels", "auxiliary_num_convs", "auxiliary_concat_input",
              "semantic_loss_ignore_index", "add_fpn", "reshape_hidden_states", "out_features", "out_indices")
    GIVEN_FORM = {"image_size": 224, "patch_size": 16}
    WRITES_STAGE_NAMES = True
    DROPPED_KEYS = ("segmentation_indices",)   # read into out_indices (configuration_beit.py __post_init__)

    model_type: str = "beit"                     # "beit" or "data2vec-vision"
    architectures: tuple = ()                    # HF class names this checkpoint was saved from
    vocab_size: int = 8192                       # visual tokens predicted by BeitForMaskedImageModeling
    hidden_size: int = 768                       # C
    num_hidden_layers: int = 12
    num_attention_heads: int = 12                # H, D = C // H
    intermediate_size: int = 3072                # MLP width
    hidden_act: str = "gelu"                     # MLP activation (ACT2FN name; "gelu" is erf-GELU)
    layer_norm_eps: float = 1e-12                # every LayerNorm
    image_size: tuple = (224, 224)               # (height, width) the tables were made for
    patch_size: tuple = (16, 16)                 # (height, width) of a patch (see the patch_size quirk in parse)
    num_channels: int = 3
    use_mask_token: bool = False                 # builds embeddings.mask_token (bool_masked_pos)
    use_absolute_position_embeddings: bool = False   # ViT-style learned position embeddings
    use_relative_position_bias: bool = False     # a relative position bias table in every layer
    use_shared_relative_position_bias: bool = False  # one table in the encoder, added in every layer
    layer_scale_init_value: float = 0.1          # > 0 builds lambda_1 / lambda_2 (layer scale); 0 disables
    use_mean_pooling: bool = True                # pooler: LayerNorm(mean of patch tokens), else the [CLS] token
    pool_scales: tuple = (1, 2, 3, 6)            # UperNet pyramid pooling output sizes
    use_auxiliary_head: bool = True              # segmentation: FCN auxiliary head
    auxiliary_channels: int = 256
    auxiliary_num_convs: int = 1
    auxiliary_concat_input: bool = False
    out_indices: tuple = (12,)                   # BEiT: stage indices (stage i = hidden_states[i]); data2vec: 1-based
    out_features: tuple = ("stage12",)           # BEiT backbone: stage names, aligned with out_indices
    add_fpn: bool = False                        # BeitBackbone: FPN (x4, x2, x1, x0.5) on its 4 feature maps
    reshape_hidden_states: bool = True           # BeitBackbone: feature maps as (B, C, h, w), else (B, 1 + N, C)
    hidden_dropout_prob: float = 0.0             # training only (refvit runs inference): kept and written back
    attention_probs_dropout_prob: float = 0.0    # training only
    drop_path_rate: float = 0.1                  # training only
    auxiliary_loss_weight: float = 0.4           # training only
    semantic_loss_ignore_index: int = 255        # training only
    initializer_range: float = 0.02              # std of the random init (XModel(config, seed=…))
    id2label: dict = field(default_factory=dict)
    label2id: dict = field(default_factory=dict)
    given: dict = field(default_factory=dict, compare=False, repr=False)  # the dict it was parsed from (to_dict)
    # num_labels, head_dim, grid_size (the window the relative position tables were made for), num_patches:
    # PatchGridMixin

    @property
    def stage_names(self) -> tuple:
        return ("stem",) + tuple(f"stage{i}" for i in range(1, self.num_hidden_layers + 1))


@dataclass(frozen=True, init=False)
class Data2VecVisionConfig(BeitConfig):
    """transformers' `Data2VecVisionConfig` (configuration_data2vec_vision.py): BEiT's fields without the backbone
    ones; out_indices is a plain list (default [3, 5, 7, 11]) selecting hidden_states[i - 1] for segmentation."""

    MODEL_TYPE = "data2vec-vision"
    FIELDS = tuple(f for f in BeitConfig.FIELDS if f not in ("add_fpn", "reshape_hidden_states", "out_features",
                                                              "vocab_size"))
    WRITES_STAGE_NAMES = False
    DROPPED_KEYS = ()
    model_type: str = "data2vec-vision"
    out_indices: tuple = (3, 5, 7, 11)
    out_features: tuple = ()


@parses(BeitConfig, Data2VecVisionConfig, pass_model_type=True)
def beit_config_from_dict(raw: dict, source: str = "config.json", family: str = "beit", head: str = "") -> BeitConfig:
    """Parse and validate a BEiT / data2vec-vision config dict; every problem is listed in one ConfigError.

    head: "segmentation" / "backbone" add the checks transformers makes when it builds those classes.
    Why so long: one check per field of BeitConfig, read top to bottom in the order of transformers' class.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    problems: list[str] = []
    d = BeitConfig
    ints = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "num_channels", "auxiliary_channels")
    values = positive_ints(raw, ints, d, problems)
    values["auxiliary_num_convs"] = check_type(raw, "auxiliary_num_convs", 1, int, problems)
    if values["auxiliary_num_convs"] < 0:
        problems.append(f"auxiliary_num_convs: must be >= 0, got {values['auxiliary_num_convs']}")
    bools = ("use_mask_token", "use_absolute_position_embeddings", "use_relative_position_bias",
             "use_shared_relative_position_bias", "use_mean_pooling", "use_auxiliary_head", "auxiliary_concat_input",
             "add_fpn", "reshape_hidden_states")
    values.update({k: check_type(raw, k, getattr(d, k), bool, problems) for k in bools})
    for k in ("layer_norm_eps", "layer_scale_init_value"):
        values[k] = float(check_number(raw, k, getattr(d, k), problems))
    for k in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):  # training only
        values[k] = check_number(raw, k, getattr(d, k), problems, high=1.0)
    values["initializer_range"] = check_number(raw, "initializer_range", d.initializer_range, problems)
    values["auxiliary_loss_weight"] = check_number(raw, "auxiliary_loss_weight", d.auxiliary_loss_weight, problems,
                                                   low=-math.inf)
    values["semantic_loss_ignore_index"] = check_type(raw, "semantic_loss_ignore_index", 255, int, problems)
    values["hidden_act"] = check_activation(raw, "hidden_act", d.hidden_act, problems)
    values["pool_scales"] = int_list(raw, "pool_scales", d.pool_scales, problems)
    if max(values["pool_scales"]) > MAX_POOL_SCALE:
        problems.append(f"pool_scales: {max(values['pool_scales'])} is more than refvit accepts ({MAX_POOL_SCALE})")
    # quirk: transformers keeps patch_size as written and divides pixel sizes by it (`height // config.patch_size`)
    # in the relative position bias, the position-embedding resize, segmentation and the backbone, which fails for a
    # [h, w] list; refvit takes a list as (h, w) everywhere (where transformers runs at all, the result is the same)
    image_size = parse_pair(raw.get("image_size", 224), "image_size", problems) or d.image_size
    patch_size = parse_pair(raw.get("patch_size", 16), "patch_size", problems) or d.patch_size
    if min(patch_size) <= 0 or min(image_size) <= 0:
        problems.append(f"image_size {list(image_size)} and patch_size {list(patch_size)} must be positive")
    elif image_size[0] < patch_size[0] or image_size[1] < patch_size[1]:
        problems.append(f"image_size {list(image_size)} is smaller than one patch {list(patch_size)}")
    C, H = values["hidden_size"], values["num_attention_heads"]
    if C > 0 and H > 0 and C % H:
        problems.append(f"num_attention_heads: {H} does not divide hidden_size {C}")
    model_type = check_model_type({"model_type": family, **raw}, (family,), problems)
    archs, id2label, label2id = architectures_and_labels(raw, problems)
    check_common(raw, problems)
    L = values["num_hidden_layers"]
    if family == "beit" and L > MAX_LAYERS:  # before the per-layer stage names are built: 10**12 would never finish
        problems.append(f"num_hidden_layers: {L} is more than refvit builds ({MAX_LAYERS})")
        L = values["num_hidden_layers"] = 0
    if family == "beit":
        stage_names = ("stem",) + tuple(f"stage{i}" for i in range(1, max(L, 0) + 1))
        values["out_features"], values["out_indices"] = backbone_outputs(raw, stage_names, problems,
                                                                         legacy_indices="segmentation_indices")
        if values["add_fpn"] and len(values["out_indices"]) != 4:  # BeitConfig.__post_init__ raises this
            problems.append(f"add_fpn: needs exactly 4 out_indices, got {list(values['out_indices'])}")
    else:  # Data2VecVisionConfig: a plain list, no backbone alignment, no FPN option
        values["out_indices"] = int_list(raw, "out_indices", (3, 5, 7, 11), problems, minimum=-10 ** 9)
        values["out_features"], values["add_fpn"], values["reshape_hidden_states"] = (), False, True
    cls = BeitConfig if family == "beit" else Data2VecVisionConfig
    cfg = cls._make(model_type=family, architectures=tuple(archs), image_size=image_size, patch_size=patch_size,
                    id2label=id2label, label2id=label2id, given=dict(raw), **values)
    if not problems:
        problems += _head_problems(cfg, head)
    raise_problems(source, problems)
    return cfg


def _head_problems(cfg: BeitConfig, head: str) -> list[str]:
    """What makes transformers fail to build or run the segmentation head / backbone with this config."""
    problems = []
    if head == "segmentation":
        if len(cfg.out_indices) != 4:  # BeitForSemanticSegmentation.__init__ raises this
            problems.append(f"out_indices: semantic segmentation needs exactly 4, got {list(cfg.out_indices)}")
        elif cfg.model_type == "data2vec-vision":
            # It keeps hidden_states[idx] for each idx with idx + 1 in out_indices (modeling_data2vec_vision.py,
            # Data2VecVisionForSemanticSegmentation.forward), so a value outside 1..L+1 (0 among them) or a repeat
            # selects nothing. Quirk: 3 levels still run (fpn1-fpn3, no fpn4; the UperNet head's 3 laterals and its
            # pyramid pooling both read the third); with 2 or fewer its fpn_bottleneck gets too few channels.
            used = {i for i in cfg.out_indices if 1 <= i <= cfg.num_hidden_layers + 1}  # no loop over the layers
            if len(used) < 3:
                problems.append(f"out_indices: {list(cfg.out_indices)} selects {len(used)} hidden states; "
                                f"data2vec-vision keeps hidden_states[i - 1] for each distinct i in "
                                f"1..{cfg.num_hidden_layers + 1} and its UperNet head needs 3 or 4 (transformers "
                                f"fails with fewer)")
            if cfg.image_size[0] != cfg.image_size[1] or cfg.patch_size[0] != cfg.patch_size[1]:
                problems.append("image_size/patch_size: data2vec-vision segmentation reshapes features to "
                                "image_size // patch_size squared and needs square ints")
        if cfg.num_labels < 1:
            problems.append("id2label/num_labels: semantic segmentation needs at least one label")
        if cfg.use_auxiliary_head and cfg.auxiliary_num_convs == 0 and cfg.auxiliary_channels != cfg.hidden_size:
            problems.append(f"auxiliary_num_convs: 0 feeds the {cfg.hidden_size}-channel features straight into a "
                            f"classifier built for auxiliary_channels={cfg.auxiliary_channels}; transformers fails")
    if head == "backbone" and cfg.add_fpn and not cfg.reshape_hidden_states:
        problems.append("add_fpn: the FPN needs reshape_hidden_states=true (transformers fails on (B, N, C) maps)")
    return problems
