"""The `--map` presets, checked against the module names of transformers' conversion scripts (transcribed here, each
pair with the script it comes from) and the other libraries' forward code — never against refvit's own names.

A script renames weights, `blocks.{i}.norm1.weight -> deit.encoder.layer.{i}.layernorm_before.weight`: the module
that owns the weight (`blocks.3.norm1`) must land on the module the script names (`...layer.3.layernorm_before`).
Where transformers wraps a dense layer and dropout in a module (`attention.output.dense`), the module's output is the
dense layer's at inference, so the pair is checked at the wrapper (`attention.output`)."""

import json
import subprocess
import sys

import numpy as np
import pytest

import refvit
from refvit import parity
from refvit.parity import presets

# (candidate module, reference module), from the scripts; {i}/{s}/{b} filled with 3/1/0
SCRIPT_PAIRS = {
    # transformers/models/deit/convert_deit_timm_to_pytorch.py: create_rename_keys (base_model=False)
    "timm-vit": [("blocks.3.norm1", "deit.encoder.layer.3.layernorm_before"),
                 ("blocks.3.attn.proj", "deit.encoder.layer.3.attention.output"),      # .attention.output.dense
                 ("blocks.3.norm2", "deit.encoder.layer.3.layernorm_after"),
                 ("norm", "deit.layernorm"), ("head", "cls_classifier"), ("head_dist", "distillation_classifier")],
    # transformers/models/beit/convert_beit_unilm_to_pytorch.py: create_rename_keys (no lm head, not semantic)
    "timm-beit": [("blocks.3.norm1", "beit.encoder.layer.3.layernorm_before"),
                  ("blocks.3.attn.proj", "beit.encoder.layer.3.attention.output"),    # .attention.output.dense
                  ("blocks.3.norm2", "beit.encoder.layer.3.layernorm_after"),
                  ("blocks.3.mlp.fc2", "beit.encoder.layer.3.output"),                 # .output.dense
                  ("fc_norm", "beit.pooler"),                                          # beit.pooler.layernorm
                  ("head", "classifier")],
    # transformers/models/bit/convert_bit_to_pytorch.py: rename_key
    "timm-resnetv2": [("stem.conv", "bit.embedder.convolution"),
                      ("stages.1.blocks.0.conv2", "bit.encoder.stages.1.layers.0.conv2"),
                      ("stages.1.blocks.0.norm3", "bit.encoder.stages.1.layers.0.norm3"),
                      ("stages.2.blocks.0.downsample.conv", "bit.encoder.stages.2.layers.0.downsample.conv"),
                      ("norm", "bit.norm"), ("head.fc", "classifier")],                # classifier.1 (after Flatten)
    # transformers/models/cvt/convert_cvt_original_pytorch_checkpoint_to_pytorch.py: embeddings, attention, final
    "cvt-original": [("stage1.patch_embed.proj", "cvt.encoder.stages.1.embedding.convolution_embeddings.projection"),
                     ("stage1.patch_embed.norm",
                      "cvt.encoder.stages.1.embedding.convolution_embeddings.normalization"),
                     ("stage1.blocks.0.attn.conv_proj_q",                              # .conv / .bn inside
                      "cvt.encoder.stages.1.layers.0.attention.attention.convolution_projection_query"),
                     ("stage1.blocks.0.attn.conv_proj_v",
                      "cvt.encoder.stages.1.layers.0.attention.attention.convolution_projection_value"),
                     ("stage1.blocks.0.attn.proj_k", "cvt.encoder.stages.1.layers.0.attention.attention.projection_key"),
                     ("stage1.blocks.0.attn.proj", "cvt.encoder.stages.1.layers.0.attention.output"),  # .output.dense
                     ("stage1.blocks.0.norm1", "cvt.encoder.stages.1.layers.0.layernorm_before"),
                     ("stage1.blocks.0.norm2", "cvt.encoder.stages.1.layers.0.layernorm_after"),
                     ("norm", "cvt.layernorm"), ("head", "classifier")],
}
BASES = {"timm-vit": "deit.", "timm-beit": "beit.", "timm-resnetv2": "bit.", "cvt-original": "cvt."}


def _renamed(preset, candidate_names, reference_names=None, shape=(1, 2, 6)):
    mapping = presets.resolve(preset, candidate_names, reference_names)
    trace = parity.Trace({n: np.zeros(shape if n != "head.fc" else (1, 5, 1, 1), np.float32)
                          for n in candidate_names})
    return parity.apply_mapping(trace, mapping)[0]


@pytest.mark.parametrize("preset", sorted(SCRIPT_PAIRS))
def test_preset_follows_its_conversion_script(preset):
    names = [c for c, _ in SCRIPT_PAIRS[preset]]
    renamed = _renamed(preset, names)
    for candidate, reference in SCRIPT_PAIRS[preset]:
        assert reference in renamed, (candidate, reference, sorted(renamed))
    assert presets.get(preset)["source"].split(" ")[0].startswith("transformers/models/")


def test_timm_qkv_is_split_in_the_scripts_order():
    """read_in_q_k_v: query = rows [:C], key = [C:2C], value = [-C:] of timm's qkv (its output's last axis)."""
    qkv = np.concatenate([np.full((1, 2, 4), v, np.float32) for v in (1, 2, 3)], -1)
    mapping = presets.resolve("timm-vit", ["blocks.0.attn.qkv", "head_dist"])
    out = parity.apply_mapping(parity.Trace({"blocks.0.attn.qkv": qkv}), mapping)[0]
    for part, v in (("query", 1), ("key", 2), ("value", 3)):
        assert np.all(out[f"deit.encoder.layer.0.attention.attention.{part}"] == v)


def test_base_prefix_heads_and_hidden_states():
    # the reference's names fix the prefix (a ViTForImageClassification, a base model), and the head follows
    # whether the candidate has DeiT's distillation head
    vit = _renamed("timm-vit", ["blocks.2", "head", "norm"], ["pixel_values", "vit.embeddings"])
    assert {"vit.encoder.layer.2", "vit.encoder.layer.2.output", "hidden_states.3", "classifier", "vit.layernorm"} \
        <= set(vit)
    base = _renamed("timm-vit", ["blocks.0"], ["embeddings", "encoder.layer.0"])
    assert "encoder.layer.0" in base and "hidden_states.1" in base
    deit = _renamed("timm-vit", ["head", "head_dist"])   # no reference: the distillation head says DeiT
    assert {"cls_classifier", "cls_logits", "distillation_classifier"} <= set(deit) and "classifier" not in deit
    bit = _renamed("timm-resnetv2", ["stem", "stages.3"], ["bit.embedder"])
    assert {"bit.embedder", "hidden_states.0", "bit.encoder.stages.3", "hidden_states.4"} <= set(bit)
    assert _renamed("timm-resnetv2", ["head.fc"])["classifier"].shape == (1, 5)


def test_unknown_preset_and_bad_mapping():
    with pytest.raises(refvit.InputError, match="timm-vit"):
        presets.get("timm-vitt")
    with pytest.raises(refvit.InputError, match="reference must be a name or a list"):
        parity.check_mapping({"tensors": [{"candidate": "a", "reference": 3}]})
    ok = parity.check_mapping({"tensors": [{"candidate": "a.{i}", "reference": ["x.{i}", "h.{i+1}"]}]})
    out = parity.apply_mapping(parity.Trace({"a.4": np.ones(2)}), ok)[0]
    assert set(out) == {"x.4", "h.5"}


def test_cli_map_preset(tmp_path):
    """compare --map PRESET on a candidate holding timm's module paths (synthetic tensors: names only)."""
    rng = np.random.default_rng(0)
    h = rng.normal(size=(1, 3, 4)).astype(np.float32)
    ref = parity.Trace({"pixel_values": np.zeros((1, 3, 2, 2), np.float32), "deit.encoder.layer.0.layernorm_before": h,
                        "deit.layernorm": h + 1}, kinds={"pixel_values": "input"})
    cand = parity.Trace({"pixel_values": np.zeros((1, 3, 2, 2), np.float32), "blocks.0.norm1": h, "norm": h + 1,
                         "head_dist": np.zeros((1, 2), np.float32)})
    ref.save(tmp_path / "ref.safetensors")
    cand.save(tmp_path / "cand.safetensors")
    run = [sys.executable, "-m", "refvit.cli", "compare", str(tmp_path / "ref.safetensors"),
           str(tmp_path / "cand.safetensors"), "--json", "--map"]
    r = subprocess.run(run + ["timm-vit"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["compared"] == 3
    r = subprocess.run(run + ["timm-vitt"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.mark.needs_framework
def test_capture_torch_hooks_inputs_outputs_and_restores():
    """A user's own torch module and a mapping dict: outputs, `PATH:in` inputs, the model's output, several names for
    one tensor; the module comes back in training mode, without hooks, gradients still on."""
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.fc, self.act, self.drop = (torch.nn.LayerNorm(4), torch.nn.Linear(4, 4), torch.nn.GELU(),
                                                        torch.nn.Dropout(0.5))

        def forward(self, x):
            return x + self.drop(self.act(self.fc(self.norm(x))))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])
            self.head = torch.nn.Linear(4, 3)

        def forward(self, pixel_values):
            x = pixel_values.flatten(2).transpose(1, 2)      # (B, H·W, C)
            for b in self.blocks:
                x = b(x)
            return self.head(x.mean(1))

    torch.manual_seed(0)
    net = Net().train()
    mapping = {"tensors": [{"candidate": "blocks.{i}.norm", "reference": "encoder.layer.{i}.layernorm_before"},
                           {"candidate": "blocks.{i}.fc:in", "reference": "fc_input.{i}"},
                           {"candidate": "blocks.{i}", "reference": ["encoder.layer.{i}", "hidden_states.{i+1}"]},
                           {"candidate": "output", "reference": "logits"}]}
    x = np.random.default_rng(0).normal(size=(2, 4, 3, 3)).astype(np.float32)
    t = parity.capture_torch(net, x, names=mapping)
    assert t.names == ["pixel_values", "encoder.layer.0.layernorm_before", "fc_input.0", "encoder.layer.0",
                       "hidden_states.1", "encoder.layer.1.layernorm_before", "fc_input.1", "encoder.layer.1",
                       "hidden_states.2", "logits"]
    np.testing.assert_array_equal(t["fc_input.0"], t["encoder.layer.0.layernorm_before"])
    with torch.no_grad():
        net.eval()
        expected = net(torch.from_numpy(x)).numpy()
        net.train()
    np.testing.assert_allclose(t["logits"], expected, rtol=1e-6)    # eval mode: dropout off, as the reference
    assert t.kind("hidden_states.1") == "hidden_state" and t.kind("logits") == "output"
    assert net.training and torch.is_grad_enabled()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    raw = parity.capture_torch(net, x)                                # no names: module paths
    assert {"blocks.0.norm", "blocks.0.fc:in", "blocks.1", "head", "output"} <= set(raw.names)
    with pytest.raises(refvit.InputError, match="preset"):
        parity.capture_torch(net, x, names="timm-vitt")
