"""The forward context is strict: a module the params do not hold is a CheckpointError naming its checkpoint path
(optional modules say so), loop counts come from the config (the strict tensor mapping checks them against the
checkpoint at load), and a q/k/v fusion that cannot happen fails the load instead of running three GEMMs unseen."""

import numpy as np
import pytest

import refvit
from refvit import kernels, synthetic
from refvit.errors import CheckpointError
from refvit.models.common import Forward

TINY_VIT = {"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 24, "image_size": 32, "patch_size": 8, "id2label": {str(i): str(i) for i in range(5)}}


def tiny(config=TINY_VIT, arch="ViTForImageClassification"):
    tensors = synthetic.random_state_dict(synthetic.shapes_for(config, arch), seed=0)
    return refvit.from_state_dict(config, tensors, arch, "float64", "numpy"), tensors


def context():
    dense = {"weight": np.eye(2), "bias": np.zeros(2)}
    return Forward(kernels.get("numpy"), None, {"encoder": {"layer": [{"dense": dense}]}}, path="vit")


@pytest.mark.parametrize("child, missing", [("encoder.layer.0.dens", "'dens'"), ("encoder.layer.1", "'1'"),
                                            ("encoder.layers", "'layers'"), ("encoder.layer.0.dense.weight.x", "'x'")])
def test_a_missing_module_is_an_error_naming_its_path(child, missing):
    with pytest.raises(CheckpointError, match=rf"^vit\.{child.replace('.', '[.]')}: the params hold no {missing}"):
        context().param(child)
    with pytest.raises(CheckpointError, match=rf"^vit\.{child.replace('.', '[.]')}:"):
        context().at(child)


def test_a_misspelt_module_in_a_layer_fails_at_its_call_not_later():
    layer = context().at("encoder.layer.0")
    assert np.array_equal(layer.linear("dense", np.ones((1, 2))), np.ones((1, 2)))
    with pytest.raises(CheckpointError, match=r"^vit\.encoder\.layer\.0\.dens: .*they hold: \['dense'\]"):
        layer.linear("dens", np.ones((1, 2)))


def test_optional_modules_say_so():
    ctx = context()
    assert ctx.param("pooler", optional=True) is None and not ctx.has("pooler") and ctx.has("encoder.layer.0.dense")
    pooler = ctx.at("pooler", optional=True)                # a module without tensors (BeitPooler pooling [CLS])
    assert pooler.p == {} and pooler.path == "vit.pooler"


def test_layer_counts_come_from_the_config():
    """The forward runs config.num_hidden_layers layers: a layer appended to the params after load changes nothing;
    at load, a checkpoint holding another number of layers than the config asks for is refused."""
    model, tensors = tiny()
    x = synthetic.random_pixel_values(1, 3, 32, 32, seed=1).astype(np.float64)
    before = model(x).logits
    model.params["vit"]["encoder"]["layer"].append(model.params["vit"]["encoder"]["layer"][0])
    assert np.array_equal(model(x).logits, before)
    extra = {k.replace("layer.1.", "layer.2."): v for k, v in tensors.items() if ".layer.1." in k}
    with pytest.raises(CheckpointError, match=r"unexpected \d+ tensor\(s\): vit\.encoder\.layer\.2\."):
        refvit.from_state_dict(TINY_VIT, {**tensors, **extra}, "ViTForImageClassification")
    fewer = {k: v for k, v in tensors.items() if ".layer.1." not in k}
    with pytest.raises(CheckpointError, match=r"missing \d+ tensor\(s\): vit\.encoder\.layer\.1\."):
        refvit.from_state_dict(TINY_VIT, fewer, "ViTForImageClassification")
