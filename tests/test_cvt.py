"""CvT beyond the golden cases: the depthwise-conv kernel twins, BatchNorm folding, the `avg`/`linear` projections
(transformers fails on both, so they are checked against direct NumPy formulas of the original CvT code), config and
input validation, loading, and the ConvNeXT image processor CvT checkpoints ship."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import refvit
from refvit import kernels, synthetic
from refvit.errors import CheckpointError, ConfigError, InputError
from refvit.models import cvt
from refvit.models.common import Forward, fold_batch_norm

from conftest import golden_case

K_BOTH = [kernels.NUMPY, kernels.NUMBA]
TOL = {"float32": 2e-5, "float64": 1e-12}


def tiny_config(**overrides):
    """The golden cases' small three-stage CvT (golden/cases_cvt.py `tiny`)."""
    cfg = json.loads((golden_case("cvt_classification") / "config.json").read_text())
    cfg.update(overrides)
    return cfg


def seeded_model(config, arch="CvtForImageClassification", dtype="float64", backend="numpy", seed=0):
    tensors = synthetic.random_state_dict(synthetic.shapes_for(config, arch), seed)
    return refvit.from_state_dict(config, tensors, arch, dtype, backend)


def close(a, b, dtype):
    return np.abs(np.asarray(a, np.float64) - b).max() <= TOL[dtype] * max(1.0, np.abs(b).max())


# ----------------------------------------------------------------------------------------------------------------------
# Direct formulas (loops, float64): torch's Conv2d(groups=C) and AvgPool2d(ceil_mode=True, count_include_pad=True)


def depthwise_loops(grid, weight, bias, stride, padding):
    """grid (B, h, w, C), weight (C, 1, kh, kw) -> (B, ho, wo, C), torch Conv2d(groups=C) with symmetric zero padding."""
    B, h, w, C = grid.shape
    kh, kw = weight.shape[2:]
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((B, ho, wo, C))
    for oy in range(ho):
        for ox in range(wo):
            for i in range(kh):
                for j in range(kw):
                    iy, ix = oy * sh - ph + i, ox * sw - pw + j
                    if 0 <= iy < h and 0 <= ix < w:
                        out[:, oy, ox] += grid[:, iy, ix] * weight[:, 0, i, j]
    return out + (0 if bias is None else bias)


def avg_pool_loops(grid, k, s, p):
    """torch avg_pool2d(k, s, p, ceil_mode=True, count_include_pad=True) on grid (B, h, w, C), as AvgPool2dKernel.cpp."""
    B, h, w, C = grid.shape

    def out_size(n):
        o = -(-(n + 2 * p - k) // s) + 1          # ceil
        return o - 1 if (o - 1) * s >= n + p else o

    ho, wo = out_size(h), out_size(w)
    out = np.zeros((B, ho, wo, C))
    for oy in range(ho):
        for ox in range(wo):
            y0, x0 = oy * s - p, ox * s - p
            y1, x1 = min(y0 + k, h + p), min(x0 + k, w + p)
            pool_size = (y1 - y0) * (x1 - x0)     # padding counted, windows past the padded input clipped
            y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
            out[:, oy, ox] = grid[:, y0:y1, x0:x1].sum(axis=(1, 2)) / pool_size
    return out


def attention_formula(x, hw, p, method, kernel, stride_kv, padding_kv, heads, with_cls):
    """Original CvT Attention.forward (cls_cvt.py) for `avg`/`linear`: q unprojected, k/v pooled (avg) or not."""
    B, _, C = x.shape
    h, w = hw
    cls, grid = (x[:, :1], x[:, 1:]) if with_cls else (x[:, :0], x)
    grid = grid.reshape(B, h, w, C)
    q = grid.reshape(B, h * w, C)
    kv = avg_pool_loops(grid, kernel, stride_kv, padding_kv).reshape(B, -1, C) if method == "avg" else q
    q, k, v = (np.concatenate([cls, t], axis=1) for t in (q, kv, kv))
    q, k, v = (t @ p[f"projection_{n}"]["weight"].T + p[f"projection_{n}"].get("bias", 0)
               for t, n in zip((q, k, v), ("query", "key", "value")))
    split = lambda t: t.reshape(B, t.shape[1], heads, C // heads).transpose(0, 2, 1, 3)  # noqa: E731
    scores = np.einsum("bhld,bhtd->bhlt", split(q), split(k)) * C ** -0.5                  # embed_dim^-½, as CvT
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhlt,bhtd->bhld", probs, split(v)).transpose(0, 2, 1, 3).reshape(B, -1, C)


# ----------------------------------------------------------------------------------------------------------------------
# Kernel twins


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 2), h=st.integers(1, 8), w=st.integers(1, 8), C=st.integers(1, 6), kh=st.integers(1, 4),
       kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       dtype=st.sampled_from(["float32", "float64"]), with_bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_depthwise_conv_tokens_twins_match_loops(B, h, w, C, kh, kw, sh, sw, ph, pw, dtype, with_bias, seed):
    assume(h + 2 * ph >= kh and w + 2 * pw >= kw)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, h * w, C)).astype(dtype)
    weight = rng.standard_normal((C, 1, kh, kw)).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype) if with_bias else None
    ref = depthwise_loops(x.reshape(B, h, w, C).astype(np.float64), weight, bias, (sh, sw), (ph, pw))
    for K in K_BOTH:
        out, (ho, wo) = K.depthwise_conv_tokens(x, h, w, weight, bias, (sh, sw), (ph, pw))
        assert out.dtype == np.dtype(dtype) and out.shape == (B, ho * wo, C) and (ho, wo) == ref.shape[1:3]
        assert close(out, ref.reshape(B, ho * wo, C), dtype), K.name


def test_depthwise_conv_tokens_takes_views():
    """Token slices (the grid after the class token) and read-only arrays work on both twins."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1 + 12, 5)).astype(np.float32)
    weight = rng.standard_normal((5, 1, 3, 3)).astype(np.float32)
    weight.flags.writeable = False
    outs = [K.depthwise_conv_tokens(x[:, 1:], 3, 4, weight, None, (2, 2), (1, 1))[0] for K in K_BOTH]
    assert np.allclose(outs[0], outs[1], atol=1e-6)


@pytest.mark.parametrize("K", K_BOTH, ids=lambda K: K.name)
@pytest.mark.parametrize("args, match", [
    ((np.zeros((1, 6, 2), np.float32), 2, 2, np.zeros((2, 1, 3, 3), np.float32), None, (1, 1), (1, 1)), "height·width"),
    ((np.zeros((1, 4, 2), np.float32), 2, 2, np.zeros((2, 2, 3, 3), np.float32), None, (1, 1), (1, 1)), "weight"),
    ((np.zeros((1, 4, 2), np.float32), 2, 2, np.zeros((2, 1, 3, 3), np.float32), np.zeros(3, np.float32), (1, 1),
      (1, 1)), "bias"),
    ((np.zeros((1, 4, 2), np.float32), 2, 2, np.zeros((2, 1, 5, 5), np.float32), None, (1, 1), (1, 1)), "smaller"),
    ((np.zeros((1, 4, 2), np.float32), 2, 2, np.zeros((2, 1, 3, 3), np.float32), None, (0, 1), (1, 1)), "stride"),
    ((np.zeros((1, 4, 2), np.int32), 2, 2, np.zeros((2, 1, 3, 3), np.float32), None, (1, 1), (1, 1)), "float32"),
])
def test_depthwise_conv_tokens_bad_inputs(K, args, match):
    with pytest.raises(InputError, match=match):
        K.depthwise_conv_tokens(*args)


def test_fold_batch_norm_equals_conv_then_batch_norm():
    rng = np.random.default_rng(2)
    C = 6
    x = rng.standard_normal((2, 20, C))
    weight = rng.standard_normal((C, 1, 3, 3))
    bn = {"weight": 1 + 0.2 * rng.standard_normal(C), "bias": rng.standard_normal(C),
          "running_mean": rng.standard_normal(C), "running_var": 0.5 + rng.random(C)}
    conv = depthwise_loops(x.reshape(2, 4, 5, C), weight, None, (2, 2), (1, 1))
    batch_norm = (conv - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-5) * bn["weight"] + bn["bias"]
    folded_weight, folded_bias = fold_batch_norm(weight, None, bn, axis=0)
    for K in K_BOTH:
        out, _ = K.depthwise_conv_tokens(x, 4, 5, folded_weight, folded_bias, (2, 2), (1, 1))
        assert np.allclose(out, batch_norm.reshape(2, -1, C), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# `avg` and `linear` projections (original CvT; transformers fails on both)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), k=st.integers(1, 5), s=st.integers(1, 3), p=st.integers(0, 2),
       seed=st.integers(0, 2 ** 16))
def test_avg_projection_matches_torch_avg_pool_formula(h, w, k, s, p, seed):
    assume(p <= k // 2 and h + 2 * p >= k and w + 2 * p >= k)
    x = np.random.default_rng(seed).standard_normal((2, h * w, 3))
    ref = avg_pool_loops(x.reshape(2, h, w, 3), k, s, p)
    out = cvt.avg_projection(None, x, (h, w), k, s, p)
    assert out.shape == (2, ref.shape[1] * ref.shape[2], 3)
    assert np.allclose(out, ref.reshape(out.shape), rtol=0, atol=1e-13)


def test_avg_projection_ceil_mode_window_divisor():
    """h=6, k=3, s=2, p=1: ceil_mode adds a 4th window starting at row 5, clipped to rows 5..6 (one of padding)."""
    x = np.arange(6.0).reshape(1, 6, 1)                                    # a 6×1 grid with values 0..5
    out = cvt.avg_projection(None, x, (6, 1), 3, 2, 1)                     # (1, 4·1, 1)
    assert out.shape == (1, 4, 1)
    assert np.allclose(out[0, :, 0], [(0 + 1) / 9, (1 + 2 + 3) / 9, (3 + 4 + 5) / 9, 5 / 6])


@pytest.mark.parametrize("method", ["avg", "linear"])
@pytest.mark.parametrize("with_cls", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("K", K_BOTH, ids=lambda K: K.name)
def test_avg_and_linear_attention_match_original_cvt_formula(method, with_cls, dtype, K):
    config = tiny_config(qkv_projection_method=[method] * 3, cls_token=[False, False, with_cls],
                         kernel_qkv=[3, 3, 4], padding_kv=[1, 1, 2], stride_kv=[2, 2, 3])
    model = seeded_model(config, dtype=dtype)
    cfg, stage = model.config, 2
    p = model.params["cvt"]["encoder"]["stages"][stage]["layers"][0]["attention"]["attention"]
    assert "convolution_projection_key" not in p                       # avg/linear hold no projection tensors
    hw = (5, 7)
    x = np.random.default_rng(3).standard_normal((2, with_cls + 35, cfg.embed_dim[stage])).astype(dtype)
    ours = cvt.self_attention(Forward(K, cfg, p), x, hw, stage)
    ref = attention_formula(x.astype(np.float64), hw, p, method, 4, 3, 2, cfg.num_heads[stage], with_cls)
    assert ours.dtype == np.dtype(dtype) and close(ours, ref, dtype)


@pytest.mark.parametrize("method", ["avg", "linear"])
def test_avg_and_linear_models_run_on_both_backends(method):
    """Whole models (any input size): the recorded layer input -> attention output follows the formula, and the
    numba and numpy backends agree."""
    config = tiny_config(qkv_projection_method=[method] * 3, cls_token=[False, True, True], embed_dim=[16, 32, 32])
    x = synthetic.random_pixel_values(2, 3, 50, 37, seed=4)
    ref = seeded_model(config)(x, output_hidden_states=True, output_intermediates=True)
    name = "cvt.encoder.stages.1.layers.1"
    layer_in = ref.intermediates[f"{name}.layernorm_before"]
    p = seeded_model(config).params["cvt"]["encoder"]["stages"][1]["layers"][1]["attention"]["attention"]
    grid = ref.hidden_states[1].shape[2:]
    expected = attention_formula(layer_in, grid, p, method, 3, 2, 1, 2, True)
    assert close(ref.intermediates[f"{name}.attention.attention"], expected, "float64")
    fast = seeded_model(config, dtype="float32", backend="numba")(x, output_hidden_states=True)
    assert close(fast.logits, ref.logits, "float32")
    assert all(close(a, b, "float32") for a, b in zip(fast.hidden_states, ref.hidden_states))


# ----------------------------------------------------------------------------------------------------------------------
# The model: any input size, options, quirks


def test_any_input_size_and_stage_grids():
    model = refvit.from_pretrained(golden_case("cvt_model"), backend="numba")
    slow = refvit.from_pretrained(golden_case("cvt_model"), backend="numpy")
    for height, width in [(33, 70), (17, 17), (91, 40)]:
        x = synthetic.random_pixel_values(1, 3, height, width, seed=height)
        out, ref = model(x, output_hidden_states=True), slow(x, output_hidden_states=True)
        grids = cvt.stage_grids(model.config, height, width)
        assert [h.shape[2:] for h in out.hidden_states] == grids
        assert [h.shape[1] for h in out.hidden_states] == list(model.config.embed_dim)
        assert out.cls_token_value.shape == (1, 1, 32)
        assert all(close(a, b, "float32") for a, b in zip(out.hidden_states, ref.hidden_states))


def test_outputs_follow_transformers_fields():
    case = golden_case("cvt_model")
    x = np.load(case / "inputs.npz")["pixel_values"]
    out = refvit.from_pretrained(case)(x, output_hidden_states=True, output_attentions=True)
    assert list(out.keys()) == ["last_hidden_state", "cls_token_value", "hidden_states"]  # no attentions, as HF
    assert out[0] is out.last_hidden_state and not hasattr(out, "attentions")                 # as HF's dataclass
    assert out.hidden_states[-1] is out.last_hidden_state
    no_cls = seeded_model(tiny_config(cls_token=[False] * 3), arch="CvtModel")(x)
    assert list(no_cls.keys()) == ["last_hidden_state"]                                 # cls_token_value None: left out
    logits = refvit.from_pretrained(golden_case("cvt_classification"))(x, output_hidden_states=True)
    assert list(logits.keys()) == ["logits", "hidden_states"] and logits.logits.shape == (2, 5)


def test_layer_norm_eps_from_config_is_ignored():
    x = synthetic.random_pixel_values(1, 3, 48, 48, seed=5)
    a = seeded_model(tiny_config(layer_norm_eps=0.25))(x).logits
    b = seeded_model(tiny_config(layer_norm_eps=1e-12))(x).logits
    assert np.array_equal(a, b)


def test_mean_pooled_head_without_class_token():
    """No class token in the last stage: LayerNorm on every token, then the mean (transformers' order)."""
    config = tiny_config(cls_token=[False] * 3)
    model = seeded_model(config)
    x = synthetic.random_pixel_values(2, 3, 48, 48, seed=6)
    out = model(x, output_intermediates=True)
    grid = out.intermediates["cvt.encoder.stages.2"]                                   # (B, C, h, w)
    tokens = grid.reshape(2, 32, -1).transpose(0, 2, 1)
    p = model.params["layernorm"]
    mu, var = tokens.mean(-1, keepdims=True), tokens.var(-1, keepdims=True)
    normed = (tokens - mu) / np.sqrt(var + 1e-5) * p["weight"] + p["bias"]
    logits = normed.mean(axis=1) @ model.params["classifier"]["weight"].T + model.params["classifier"]["bias"]
    assert close(out.logits, logits, "float64")


@pytest.mark.parametrize("kwargs, match", [
    ({"bool_masked_pos": np.zeros((1, 9), bool)}, "bool_masked_pos"),
    ({"interpolate_pos_encoding": True}, "position embeddings"),
])
def test_options_cvt_does_not_take(kwargs, match):
    model = refvit.from_pretrained(golden_case("cvt_classification"))
    with pytest.raises(InputError, match=match):
        model(synthetic.random_pixel_values(1, 3, 48, 48, seed=0), **kwargs)


def test_too_small_inputs_and_grid_changing_queries():
    model = refvit.from_pretrained(golden_case("cvt_classification"))
    with pytest.raises(InputError, match="stage 0"):
        model(np.zeros((1, 3, 2, 40), np.float32))                                     # 2 + 2·2 < 7
    unpadded = seeded_model(tiny_config(patch_padding=[2, 1, 0]))
    with pytest.raises(InputError, match="stage 2"):
        unpadded(np.zeros((1, 3, 12, 12)))                                             # 3×3 -> 2×2 -> nothing
    with pytest.raises(InputError, match="channels"):
        model(np.zeros((1, 4, 48, 48), np.float32))
    pooled = seeded_model(tiny_config(qkv_projection_method=["avg"] * 3, padding_kv=[0, 0, 0]))
    with pytest.raises(InputError, match="stage 2's 1x1 token grid gives a 1x1 query grid and a 0x0 key/value"):
        pooled(np.zeros((1, 3, 12, 12)))                                               # AvgPool2d(3) of 1×1: empty
    strided = seeded_model(tiny_config(stride_q=[1, 2, 1]))
    with pytest.raises(InputError, match="query projection must keep the grid"):
        strided(np.zeros((1, 3, 48, 48)))


# ----------------------------------------------------------------------------------------------------------------------
# Config and checkpoint validation


@pytest.mark.parametrize("overrides, match", [
    ({"embed_dim": [16, 24]}, r"embed_dim: expected one entry per stage \(3"),
    ({"num_heads": [1, 5, 4]}, r"num_heads\[1\]: 5 does not divide embed_dim\[1\] = 24"),
    ({"cls_token": [True, False, True]}, r"cls_token\[0\].*embed_dim\[-1\] = 32"),
    ({"qkv_projection_method": ["dw_bn", "conv", "dw_bn"]}, "qkv_projection_method"),
    ({"qkv_projection_method": ["avg"] * 3, "padding_kv": [1, 2, 1]}, r"padding_kv\[1\]: nn.AvgPool2d"),
    ({"qkv_bias": [1, 1, 0]}, "qkv_bias: expected a list of booleans"),
    ({"mlp_ratio": [4.0, 0.01, 4.0]}, r"mlp_ratio\[1\]"),
    ({"patch_stride": [4, 0, 2]}, "patch_stride"),
    ({"depth": []}, "at least one stage"),
    ({"depth": [1, 2], "embed_dim": [16, 24]}, "patch_sizes: expected one entry per stage"),
    ({"num_channels": 0}, "num_channels"),
    ({"model_type": "vit"}, "model_type"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        cvt.cvt_config_from_dict(tiny_config(**overrides))


def test_config_errors_are_listed_together_and_defaults_fill_missing_keys():
    with pytest.raises(ConfigError) as info:
        cvt.cvt_config_from_dict(tiny_config(kernel_qkv=[3, 3], stride_q="x", num_channels=True))
    assert all(k in str(info.value) for k in ("kernel_qkv", "stride_q", "num_channels"))
    cfg = cvt.cvt_config_from_dict({"model_type": "cvt"})                                # transformers' defaults: CvT-13
    assert cfg.embed_dim == (64, 192, 384) and cfg.depth == (1, 2, 10) and cfg.num_labels == 2
    with pytest.raises(ConfigError, match="missing, and the default"):
        cvt.cvt_config_from_dict({"model_type": "cvt", "depth": [1, 2]})


def test_loading_base_and_head_checkpoints(tmp_path):
    head = golden_case("cvt_classification")
    x = np.load(head / "inputs.npz")["pixel_values"]
    base = refvit.CvtModel.from_pretrained(head)                                       # head ignored, prefix stripped
    assert base.ignored_tensors == ["classifier.bias", "classifier.weight", "layernorm.bias", "layernorm.weight"]
    full = refvit.AutoModelForImageClassification.from_pretrained(head)
    assert np.array_equal(base(x).last_hidden_state, full(x, output_hidden_states=True).hidden_states[-1])
    with pytest.raises(CheckpointError, match="base model without this head.*layernorm.weight"):
        refvit.CvtForImageClassification.from_pretrained(golden_case("cvt_model"))
    d = tmp_path / "changed"
    shutil.copytree(head, d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "qkv_bias": [True, False, True], "mlp_ratio": [4.0, 2.0, 4.0]}))
    with pytest.raises(CheckpointError) as info:
        refvit.from_pretrained(d)
    message = str(info.value)
    assert "unexpected" in message and "stages.1.layers.0.attention.attention.projection_key.bias" in message
    assert "wrong shape" in message and "stages.1.layers.0.intermediate.dense.weight" in message


def test_auto_model_without_architectures(tmp_path):
    d = tmp_path / "noarch"
    shutil.copytree(golden_case("cvt_model"), d)
    config = json.loads((d / "config.json").read_text())
    del config["architectures"]
    (d / "config.json").write_text(json.dumps(config))
    assert refvit.AutoModel.from_pretrained(d).architecture.name == "CvtModel"


# ----------------------------------------------------------------------------------------------------------------------
# ConvNextImageProcessor (what CvT checkpoints ship)


def write_processor(tmp_path, config, model_type=None):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    if model_type:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return tmp_path


def test_convnext_processor_selection_and_defaults(tmp_path, golden_dir):
    image = refvit.load_image(golden_dir / "images" / "chelsea_landscape.jpg")               # 451×300
    legacy = refvit.AutoImageProcessor.from_pretrained(write_processor(tmp_path, {
        "feature_extractor_type": "ConvNextFeatureExtractor", "size": 224, "crop_pct": 0.875, "resample": 3}))
    assert type(legacy) is refvit.ConvNextImageProcessor and legacy.size == {"shortest_edge": 224}
    assert legacy(image).pixel_values.shape == (1, 3, 224, 224)
    assert legacy.to_dict()["crop_pct"] == 0.875
    assert legacy.to_dict()["image_processor_type"] == "ConvNextImageProcessor"
    default = refvit.ConvNextImageProcessor()                                                # transformers' defaults
    assert default.size == {"shortest_edge": 384} and default.crop_pct == 224 / 256
    assert default(image).pixel_values.shape == (1, 3, 384, 384)                             # >= 384: warped, no crop
    assert default(image, size={"shortest_edge": 100}, crop_pct=0.5).pixel_values.shape == (1, 3, 100, 100)
    (tmp_path / "by_model").mkdir()
    by_model = refvit.AutoImageProcessor.from_pretrained(write_processor(tmp_path / "by_model", {"do_resize": True}, "cvt"))
    assert type(by_model) is refvit.ConvNextImageProcessor
    assert refvit.ConvNextFeatureExtractor is refvit.ConvNextImageProcessor


def test_convnext_crop_pct_resize_then_crop(golden_dir):
    """shortest_edge < 384: resize the short side to int(edge / crop_pct), keep the aspect ratio, center-crop."""
    from PIL import Image

    image = refvit.load_image(golden_dir / "images" / "astronaut_portrait.jpg")             # 301 wide, 450 high
    proc = refvit.ConvNextImageProcessor(size={"shortest_edge": 200}, crop_pct=0.9, resample=2)
    ours = proc(image, do_rescale=False, do_normalize=False).pixel_values[0].transpose(1, 2, 0)
    resized = np.asarray(image.resize((222, int(222 * 450 / 301)), resample=Image.BILINEAR, reducing_gap=None))
    top, left = (resized.shape[0] - 200) // 2, (resized.shape[1] - 200) // 2
    assert np.array_equal(ours, resized[top:top + 200, left:left + 200])


@pytest.mark.parametrize("settings, match", [
    ({"size": {"height": 224, "width": 224}}, "shortest_edge"),
    ({"size": {"shortest_edge": 224}, "crop_pct": None}, "crop_pct"),
    ({"crop_pct": -1}, "crop_pct"),
    ({"crop_pct": "0.9"}, "crop_pct"),
])
def test_convnext_processor_config_errors(tmp_path, settings, match):
    path = write_processor(tmp_path, {"image_processor_type": "ConvNextImageProcessor", **settings})
    with pytest.raises(ConfigError, match=match):
        refvit.AutoImageProcessor.from_pretrained(path)
    with pytest.raises(InputError, match=match):
        refvit.ConvNextImageProcessor()(np.zeros((8, 8, 3), np.uint8), **settings)
