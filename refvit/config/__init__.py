"""Model configurations: frozen dataclasses parsed from a `config.json` written by `save_pretrained`, or made by
keyword like transformers' (`BitConfig(depths=[3, 4, 6, 3])`), one file per family beside the shared base:

    base.py   PretrainedConfig (keywords, to_dict, save_pretrained, from_pretrained), the shared checks,
              read_config_json
    vit.py    ViTConfig, DeiTConfig             beit.py   BeitConfig, Data2VecVisionConfig
    cvt.py    CvtConfig                         bit.py    BitConfig

Each field's comment says what it means and which transformers default it mirrors (transformers 5.23). Parsing
validates every key it reads and reports *all* problems in one `ConfigError`.
"""

from .base import (COMMON_DEFAULTS, COMMON_READ_ONLY, MAX_NUM_LABELS, PROBLEM_TYPES,  # noqa: F401
                   SUPPORTED_ACTIVATIONS, LabelsMixin, PatchGridMixin, PretrainedConfig, architectures_and_labels,
                   backbone_outputs, check_activation, check_common, check_model_type, check_number, check_type,
                   int_list, parse_labels, parse_pair, positive_ints, raise_problems, read_config_json)
from .beit import MAX_LAYERS, MAX_POOL_SCALE, BeitConfig, Data2VecVisionConfig, beit_config_from_dict  # noqa: F401
from .bit import BitConfig, bit_config_from_dict, make_div  # noqa: F401
from .cvt import MAX_STRIDE, PROJECTION_METHODS, CvtConfig, cvt_config_from_dict  # noqa: F401
from .vit import DeiTConfig, ViTConfig, vit_config_from_dict  # noqa: F401

# model_type -> its public config class (the model classes' `config_class`)
CONFIG_CLASSES = {"vit": ViTConfig, "deit": DeiTConfig, "beit": BeitConfig, "data2vec-vision": Data2VecVisionConfig,
                  "cvt": CvtConfig, "bit": BitConfig}
