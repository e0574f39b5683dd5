"""BEiT / data2vec-vision: kernels (twins, direct formulas, torch where installed), loading quirks, config and input
errors, what transformers cannot run (tested against direct NumPy formulas), the image processor's segmentation maps
and post-processing against golden data, and `refvit segment`.

The golden model cases themselves (every output, hidden state, attention map and intermediate, both backends and
dtypes) run in tests/test_golden.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import refvit
from refvit import kernels
from refvit.errors import CheckpointError, ConfigError, InputError
from refvit.models import beit
from refvit.processing import BeitImageProcessor, ImageProcessor, load_image, reduce_labels
from refvit.verify import processing_golden, run_case

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = GOLDEN / "cases"
PROCESSING = GOLDEN / "processing"
NP, NB = kernels.get("numpy"), kernels.get("numba")
FAST = settings(max_examples=20, deadline=None)  # the first example compiles: no deadline
DTYPES = st.sampled_from([np.float32, np.float64])

sys.path.insert(0, str(GOLDEN))
from processing_cases import POST_PROCESS_TARGETS, segmentation_map  # noqa: E402


def case(name: str) -> Path:
    path = CASES / name
    if not path.is_dir():
        pytest.fail(f"golden case {name} is missing: run python golden/generate.py --only {name}")
    return path


def golden_outputs(name: str) -> dict:
    with np.load(case(name) / "outputs.npz") as z:
        return {k: z[k] for k in z.files}


def inputs(name: str) -> dict:
    with np.load(case(name) / "inputs.npz") as z:
        return {k: z[k] for k in z.files}


def config(name: str) -> dict:
    return json.loads((case(name) / "config.json").read_text())


def tensors(name: str) -> dict:
    return refvit.checkpoint.read_safetensors(case(name) / "model.safetensors")


# ----------------------------------------------------------------------------------------------------------------------
# Kernels: relative position index / bias


def index_by_formula(wh, ww):
    """transformers' generate_relative_position_index, written with Python loops."""
    n, T = wh * ww, (2 * wh - 1) * (2 * ww - 1) + 3
    out = np.zeros((n + 1, n + 1), np.int64)
    for i in range(n):
        for j in range(n):
            dy, dx = i // ww - j // ww, i % ww - j % ww
            out[i + 1, j + 1] = (dy + wh - 1) * (2 * ww - 1) + dx + ww - 1
    out[0, :], out[:, 0], out[0, 0] = T - 3, T - 2, T - 1
    return out


@FAST
@given(st.integers(1, 7), st.integers(1, 7))
def test_relative_position_index_twins_and_formula(wh, ww):
    ref = index_by_formula(wh, ww)
    np.testing.assert_array_equal(NP.relative_position_index(wh, ww), ref)
    np.testing.assert_array_equal(NB.relative_position_index(wh, ww), ref)


@FAST
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), DTYPES, st.integers(0, 2 ** 32 - 1))
def test_relative_position_bias_twins(wh, ww, heads, dtype, seed):
    table = np.random.default_rng(seed).standard_normal(((2 * wh - 1) * (2 * ww - 1) + 3, heads)).astype(dtype)
    index = NP.relative_position_index(wh, ww)
    a, b = NP.relative_position_bias(table, index), NB.relative_position_bias(table, index)
    assert a.dtype == b.dtype == dtype and a.shape == (heads, wh * ww + 1, wh * ww + 1)
    np.testing.assert_array_equal(a, b)
    i, j, h = wh * ww, 0, heads - 1  # the last token -> cls entry
    assert a[h, i, j] == table[-2, h] and a[h, 0, 0] == table[-1, h] and a[h, 0, 1] == table[-3, h]


def test_relative_position_kernels_refuse_bad_arguments():
    with pytest.raises(InputError, match="window"):
        NB.relative_position_index(0, 3)
    table = np.zeros((12, 2), np.float32)
    with pytest.raises(InputError, match="outside the table"):
        NB.relative_position_bias(table, np.full((2, 2), 12))
    with pytest.raises(InputError, match="float32 or float64"):
        NP.relative_position_bias(table.astype(np.int32), np.zeros((2, 2), np.int64))


# ----------------------------------------------------------------------------------------------------------------------
# Kernels: transposed convolution and adaptive average pooling


def conv_transpose_by_formula(x, w, b, stride):
    """out[b, o, i·s + di, j·s + dj] += Σ_c x[b, c, i, j] · W[c, o, di, dj] (float64 loops)."""
    B, C, h, wd = x.shape
    _, O, kh, kw = w.shape
    sh, sw = stride
    out = np.zeros((B, O, (h - 1) * sh + kh, (wd - 1) * sw + kw))
    for i in range(h):
        for j in range(wd):
            out[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += np.einsum("bc,cokl->bokl", x[:, :, i, j], w)
    return out + b[:, None, None]


def pool_by_formula(x, oh, ow):
    h, w = x.shape[-2:]
    out = np.zeros(x.shape[:-2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
            c0, c1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            out[..., i, j] = x[..., r0:r1, c0:c1].astype(np.float64).mean(axis=(-2, -1))
    return out


@FAST
@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5),
       st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), DTYPES, st.integers(0, 2 ** 32 - 1))
def test_conv_transpose2d_twins_and_formula(B, cin, cout, h, w, kh, kw, sh, sw, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, cin, h, w)).astype(dtype)
    wt = rng.standard_normal((cin, cout, kh, kw)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    ref = conv_transpose_by_formula(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), (sh, sw))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for f in (NP.conv_transpose2d, NB.conv_transpose2d):
        out = f(x, wt, b, (sh, sw))
        assert out.dtype == dtype and out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=0, atol=tol * max(1, np.abs(ref).max()))
    np.testing.assert_array_equal(NP.conv_transpose2d(x, wt, None, (sh, sw)), NB.conv_transpose2d(x, wt, None, (sh, sw)))


@FAST
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 7), st.integers(1, 7), DTYPES, st.integers(0, 2 ** 32 - 1))
def test_adaptive_avg_pool2d_twins_and_formula(h, w, oh, ow, dtype, seed):
    x = np.random.default_rng(seed).standard_normal((2, 3, h, w)).astype(dtype)
    a, b = NP.adaptive_avg_pool2d(x, oh, ow), NB.adaptive_avg_pool2d(x, oh, ow)
    np.testing.assert_array_equal(a, b)  # same summation order, same divisions: bit-identical twins
    np.testing.assert_allclose(a, pool_by_formula(x, oh, ow), rtol=0, atol=1e-5 if dtype == np.float32 else 1e-13)


def test_resample_kernels_refuse_bad_arguments():
    x = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(InputError, match="Cin"):
        NB.conv_transpose2d(x, np.zeros((3, 2, 2, 2), np.float32), None, 2)
    with pytest.raises(InputError, match="bias"):
        NP.conv_transpose2d(x, np.zeros((2, 2, 2, 2), np.float32), np.zeros(3, np.float32), 2)
    with pytest.raises(InputError, match="stride"):
        NP.conv_transpose2d(x, np.zeros((2, 2, 2, 2), np.float32), None, 0)
    with pytest.raises(InputError, match="pool"):
        NB.adaptive_avg_pool2d(x, 0, 2)


@pytest.mark.needs_framework
def test_resample_kernels_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((2, 5, 6, 7)).astype(dtype)
        w, b = rng.standard_normal((5, 3, 3, 2)).astype(dtype), rng.standard_normal(3).astype(dtype)
        ref = torch.nn.functional.conv_transpose2d(*(torch.from_numpy(a) for a in (x, w, b)), stride=(2, 1)).numpy()
        tol = 1e-5 if dtype == np.float32 else 1e-12
        for K in (NP, NB):
            np.testing.assert_allclose(K.conv_transpose2d(x, w, b, (2, 1)), ref, rtol=0, atol=tol * np.abs(ref).max())
            for oh, ow in ((6, 6), (3, 2), (4, 5)):  # bit-exact: aten's row-by-row sum and `sum / kh / kw`
                ref_pool = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (oh, ow)).numpy()
                np.testing.assert_array_equal(K.adaptive_avg_pool2d(x, oh, ow), ref_pool)


# ----------------------------------------------------------------------------------------------------------------------
# Load-time BatchNorm folding


def test_fold_batch_norm_is_batch_norm_after_conv():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 4))
    w = rng.standard_normal((4, 3, 3, 3))
    bn = {"weight": rng.standard_normal(4), "bias": rng.standard_normal(4), "running_mean": rng.standard_normal(4),
          "running_var": 0.5 + rng.random(4)}
    conv = NP.conv2d(x, w, None, padding=(1, 1, 1, 1))
    ref = (conv - bn["running_mean"][:, None, None]) / np.sqrt(bn["running_var"][:, None, None] + beit.BN_EPS) \
        * bn["weight"][:, None, None] + bn["bias"][:, None, None]
    wf, bf = beit.fold_batch_norm(w, None, bn, axis=0)
    np.testing.assert_allclose(NP.conv2d(x, wf, bf, padding=(1, 1, 1, 1)), ref, rtol=0, atol=1e-12)
    # a transposed conv with a bias: the output channels are weight axis 1
    wt, bt = rng.standard_normal((3, 4, 2, 2)), rng.standard_normal(4)
    y = NP.conv_transpose2d(x, wt, bt, (2, 2))
    ref = (y - bn["running_mean"][:, None, None]) / np.sqrt(bn["running_var"][:, None, None] + beit.BN_EPS) \
        * bn["weight"][:, None, None] + bn["bias"][:, None, None]
    wf, bf = beit.fold_batch_norm(wt, bt, bn, axis=1)
    np.testing.assert_allclose(NP.conv_transpose2d(x, wf, bf, (2, 2)), ref, rtol=0, atol=1e-12)


def test_folded_params_keep_the_checkpoint_names():
    model = refvit.from_pretrained(case("beit_segmentation"), dtype="float64")
    bn = model.params["decode_head"]["bottleneck"]["bn"]
    np.testing.assert_array_equal(bn["weight"], 1)
    np.testing.assert_array_equal(bn["running_mean"], 0)
    raw = tensors("beit_segmentation")
    s = raw["decode_head.bottleneck.bn.weight"] / np.sqrt(raw["decode_head.bottleneck.bn.running_var"].astype(np.float64)
                                                          + beit.BN_EPS)
    np.testing.assert_allclose(model.params["decode_head"]["bottleneck"]["conv"]["weight"],
                               raw["decode_head.bottleneck.conv.weight"] * s[:, None, None, None], rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# Golden-case specifics


def test_beit_golden_cases_exist():
    names = {p.name for p in CASES.iterdir()}
    for required in ("beit_model", "beit_classification", "beit_classification_interpolate",
                     "beit_classification_interpolate_nonsquare", "beit_classification_nonsquare", "beit_mim",
                     "beit_segmentation", "beit_backbone_fpn", "beit_base_224", "data2vec_vision_segmentation"):
        assert required in names


def test_every_beit_intermediate_is_compared():
    result = run_case(case("beit_segmentation"), dtype="float32", backend="numpy")
    keys = set(result.errors)
    assert result.ok
    assert {"intermediates/beit.encoder.layer.3.attention.attention.relative_position_bias", "intermediates/fpn1",
            "intermediates/decode_head.psp_modules.3.1", "intermediates/decode_head.bottleneck",
            "intermediates/auxiliary_head.conv_cat", "intermediates/auxiliary_head", "logits"} <= keys


def test_data2vec_three_pyramid_levels_as_transformers():
    """data2vec-vision keeps hidden_states[idx] for idx + 1 in out_indices: [0, 2, 3, 4] selects 3 maps, and
    transformers runs them through fpn1-fpn3 (no fpn4) and the UperNet head. The golden case was written by it."""
    name = "data2vec_vision_segmentation_three_levels"
    assert config(name)["out_indices"] == [0, 2, 3, 4]
    ref = golden_outputs(name)
    assert "float32/intermediates/fpn2" in ref and "float32/intermediates/fpn4" not in ref  # transformers ran 3
    for backend in ("numpy", "numba"):
        result = run_case(case(name), dtype="float32", backend=backend)
        assert result.ok, result.errors
        assert {"logits", "intermediates/fpn1", "intermediates/fpn2", "intermediates/decode_head.fpn_convs.2",
                "intermediates/decode_head.fpn_bottleneck", "intermediates/auxiliary_head"} <= set(result.errors)
    # the same weights read as 4 levels (BEiT's rule: 0 = the last hidden state) give other logits: 3 levels it is
    model = refvit.from_pretrained(case(name))
    four = refvit.from_state_dict({**config(name), "out_indices": [2, 3, 4, 5]},
                                  tensors(name))
    x = inputs(name)["pixel_values"]
    assert model(x).logits.shape == four(x).logits.shape
    assert not np.allclose(model(x).logits, four(x).logits, atol=1e-3)


@pytest.mark.parametrize("out_indices", [[0, 0, 2, 3], [0, 6, 2, 3], [0, -1, 2, 3], [1, 1, 1, 1]])
def test_data2vec_fewer_than_three_levels_refused(out_indices):
    """Two levels or fewer: transformers' fpn_bottleneck gets too few channels (RuntimeError); refvit says why."""
    with pytest.raises(ConfigError, match=r"out_indices: .* selects [0-2] hidden states.*needs 3 or 4"):
        refvit.from_state_dict({**config("data2vec_vision_segmentation"), "out_indices": out_indices}, {})


@pytest.mark.needs_framework
@pytest.mark.parametrize("out_indices", [[0, 2, 3, 4], [5, 4, 3, 2], [4, 2, 9, 3], [0, 6, 2, 3], [3, 3, 2, 0]])
def test_data2vec_levels_rule_is_transformers(out_indices):
    """The rule refvit applies (the selected hidden states in hidden-state order, whatever out_indices' order; 3 or 4
    of them run, fewer fail) is what transformers does."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    raw = {k: v for k, v in config("data2vec_vision_segmentation").items() if k not in ("architectures", "model_type")}
    tf_model = transformers.Data2VecVisionForSemanticSegmentation(
        transformers.Data2VecVisionConfig(**{**raw, "out_indices": out_indices})).eval()
    x = inputs("data2vec_vision_segmentation")["pixel_values"][:1]
    try:
        with torch.no_grad():
            ref = tf_model(torch.from_numpy(x)).logits.numpy()
    except RuntimeError:
        ref = None
    state = {k: v.detach().numpy() for k, v in tf_model.state_dict().items()}
    if ref is None:
        with pytest.raises(ConfigError, match="needs 3 or 4"):
            refvit.from_state_dict({**raw, "model_type": "data2vec-vision", "out_indices": out_indices}, state,
                                   "Data2VecVisionForSemanticSegmentation")
        return
    model = refvit.from_state_dict({**raw, "model_type": "data2vec-vision", "out_indices": out_indices}, state,
                                   "Data2VecVisionForSemanticSegmentation")
    np.testing.assert_allclose(model(x).logits, ref, rtol=0, atol=1e-4 * max(1, np.abs(ref).max()))
    assert out_indices not in ([0, 6, 2, 3], [3, 3, 2, 0])  # these select 2 levels: transformers must have failed


@pytest.mark.parametrize("name", ["beit_segmentation", "data2vec_vision_segmentation"])
def test_auxiliary_logits_are_returned(name):
    """transformers computes the FCN head's logits for its loss and drops them; refvit returns them."""
    model = refvit.from_pretrained(case(name))
    out = model(**inputs(name))
    ref = golden_outputs(name)["float32/intermediates/auxiliary_head"]
    assert out.auxiliary_logits.shape == ref.shape
    np.testing.assert_allclose(out.auxiliary_logits, ref, rtol=0, atol=1e-4 * max(1, np.abs(ref).max()))
    assert list(out.keys()) == ["logits", "auxiliary_logits"]  # transformers' fields keep their positions
    assert out[0] is out.logits


def test_pooler_output_follows_transformers():
    x = inputs("beit_model")["pixel_values"]
    assert refvit.from_pretrained(case("beit_model"))(x).pooler_output is not None   # mean pooling, weights present
    d2v = refvit.from_pretrained(case("data2vec_vision_model"))(x)
    assert d2v.pooler_output is None  # Data2VecVisionModel(add_pooling_layer=False) by default
    mim = refvit.from_pretrained(case("beit_mim"), architecture="BeitModel")  # a MIM checkpoint has no pooler
    assert mim(x).pooler_output is None and mim.ignored_tensors == ["layernorm.bias", "layernorm.weight",
                                                                     "lm_head.bias", "lm_head.weight"]
    cls = refvit.from_pretrained(case("beit_classification_all_biases"), architecture="BeitModel")
    out = cls(x)  # [CLS] pooling: BeitModel's pooler takes the first token, no weights needed
    np.testing.assert_array_equal(out.pooler_output, out.last_hidden_state[:, 0])


def test_backbone_loads_every_naming():
    """BeitBackbone's save_pretrained writes the shared table as `beit.encoder.relative_position_bias…` (quirk); the
    classic unprefixed name and a `beit.`-prefixed head checkpoint load too (head and pooler ignored)."""
    name = "beit_backbone_fpn"
    raw = tensors(name)
    assert "beit.encoder.relative_position_bias.relative_position_bias_table" in raw
    x = inputs(name)["pixel_values"]
    ref = refvit.from_pretrained(case(name))(x).feature_maps
    classic = {k.replace("beit.encoder.", "encoder."): v for k, v in raw.items()}
    out = refvit.from_state_dict(config(name), classic, "BeitBackbone")(x).feature_maps
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)
    head = refvit.from_pretrained(case("beit_classification"), architecture="BeitBackbone")
    assert head.ignored_tensors == ["classifier.bias", "classifier.weight"]
    maps = head(inputs("beit_classification")["pixel_values"]).feature_maps
    assert len(maps) == 1 and maps[0].shape == (3, 32, 4, 4)  # default out_features: the last stage


def test_state_dict_names_of_transformers_5_load():
    names = set(refvit.checkpoint.read_torch_bin(case("beit_classification_bin") / "pytorch_model.bin"))
    assert "beit.layers.0.attention.q_proj.weight" in names and "beit.shared_position_bias.relative_position_bias_table" in names
    seg = {k: v for k, v in tensors("beit_segmentation").items()}
    renamed = {}
    for k, v in seg.items():  # what a 5.x BeitForSemanticSegmentation.state_dict() holds
        k = k.replace("decode_head.bottleneck.", "decode_head.psp_bottleneck.").replace("fpn1.0.", "fpn.fpn1.conv_transpose1.")
        k = k.replace("fpn1.1.", "fpn.fpn1.normalization.").replace("fpn1.3.", "fpn.fpn1.conv_transpose2.")
        k = k.replace("fpn2.0.", "fpn.fpn2.")
        for i in range(4):
            k = k.replace(f"decode_head.psp_modules.{i}.1.", f"decode_head.psp_modules.blocks.{i}.conv.")
        k = k.replace(".conv.weight", ".convolution.weight").replace(".bn.", ".normalization.")
        renamed[k] = v
    x = inputs("beit_segmentation")["pixel_values"]
    a = refvit.from_state_dict(config("beit_segmentation"), renamed)(x).logits
    np.testing.assert_array_equal(a, refvit.from_pretrained(case("beit_segmentation"))(x).logits)


# ----------------------------------------------------------------------------------------------------------------------
# What transformers cannot run: direct checks


def test_list_patch_size_equals_int():
    """transformers divides by config.patch_size and fails for a [h, w] list; refvit takes it as (h, w)."""
    name = "beit_classification_all_biases"
    x = inputs(name)["pixel_values"]
    ref = refvit.from_pretrained(case(name))(x, interpolate_pos_encoding=True).logits
    out = refvit.from_state_dict({**config(name), "patch_size": [8, 8]}, tensors(name))(x, interpolate_pos_encoding=True)
    np.testing.assert_array_equal(out.logits, ref)


def test_absolute_embeddings_with_nonsquare_config_refused():
    cfg = {**config("beit_classification_all_biases"), "image_size": [32, 48]}
    from refvit.synthetic import random_state_dict, shapes_for
    model = refvit.from_state_dict(cfg, random_state_dict(shapes_for(cfg), 0))
    with pytest.raises(InputError, match="square grid"):
        model(np.zeros((1, 3, 32, 48), np.float32))


def test_nonsquare_table_quirk_by_formula():
    """At a non-square configured window (4×6) the grid rows are read as a (2w−1, 2h−1) = (11, 7) grid and resized to
    (7, 11): a direct NumPy bilinear resize of that reading reproduces refvit's (and transformers') table."""
    cfg = beit.beit_config_from_dict({"image_size": [32, 48], "patch_size": 8, "num_attention_heads": 2,
                                      "hidden_size": 8})
    table = np.random.default_rng(0).standard_normal((7 * 11 + 3, 2))
    out = beit.resize_relative_table(table, cfg, (4, 6), NP)
    grid = table[:77].reshape(11, 7, 2)  # (2w−1, 2h−1, H)
    rows = np.clip((np.arange(7) + 0.5) * 11 / 7 - 0.5, 0, None)  # source rows for 7 outputs from 11
    cols = np.clip((np.arange(11) + 0.5) * 7 / 11 - 0.5, 0, None)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, 10), np.minimum(c0 + 1, 6)
    ty, tx = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    ref = ((1 - ty) * ((1 - tx) * grid[r0][:, c0] + tx * grid[r0][:, c1])
           + ty * ((1 - tx) * grid[r1][:, c0] + tx * grid[r1][:, c1]))
    np.testing.assert_allclose(out[:77], ref.reshape(77, 2), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out[77:], table[77:])
    assert not np.allclose(out[:77], table[:77])  # not the identity, although the window is the configured one


def special_finite_table(rows, heads, dtype, seed):
    """A random table with the values where x·1 + x·0 could differ from x if anything did: signed zeros,
    subnormals, the largest and smallest normals of the dtype, both signs, among normal values."""
    info = np.finfo(dtype)
    rng = np.random.default_rng(seed)
    table = (rng.standard_normal((rows, heads)) * 10.0 ** rng.integers(-30, 30, (rows, heads))).astype(dtype)
    special = np.array([0.0, -0.0, info.tiny, -info.tiny, info.smallest_subnormal, -info.smallest_subnormal,
                        info.max, -info.max, info.eps, 1.0, -1.0], dtype)
    flat = table.reshape(-1)
    flat[rng.choice(flat.size, min(flat.size, 3 * special.size), replace=False)] = np.resize(special, min(
        flat.size, 3 * special.size))
    return table


@pytest.mark.parametrize("backend", [NP, NB], ids=["numpy", "numba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("grid,heads", [((14, 14), 12), ((2, 2), 1), ((4, 6), 3), ((7, 5), 16), ((1, 1), 2)])
def test_same_size_table_resize_is_skipped_bit_for_bit(backend, dtype, grid, heads):
    """Where the (2w−1, 2h−1) reading of the table has the new size already, the skipped resize returns the table
    itself, and the resize it skips gives the same bits on finite tables (signed zeros, subnormals, ±max included)."""
    h, w = grid
    cfg = beit.beit_config_from_dict({"image_size": [8 * h, 8 * w], "patch_size": 8, "num_attention_heads": heads,
                                      "hidden_size": 4 * heads})
    old_h, old_w = 2 * h - 1, 2 * w - 1
    for seed in range(3):
        table = special_finite_table(old_h * old_w + 3, heads, dtype, seed)
        window = (w, h)                                                 # the reading's own size: the identity
        skipped = beit.resize_relative_table(table, cfg, window, backend)
        assert skipped is table
        resized = beit.resize_relative_table_always(table, old_h, old_w, old_w, old_h, backend)
        assert resized.dtype == table.dtype and resized.shape == table.shape
        np.testing.assert_array_equal(resized.view(f"u{table.itemsize}"), table.view(f"u{table.itemsize}"))


def test_same_size_resize_still_runs_for_nonfinite_tables_and_other_sizes():
    """A non-finite table takes the resize as before (inf·0 is NaN there), and so does a window of another size."""
    cfg = beit.beit_config_from_dict({"image_size": [32, 32], "patch_size": 8, "num_attention_heads": 2,
                                      "hidden_size": 8})
    table = np.random.default_rng(0).standard_normal((7 * 7 + 3, 2))
    table[5, 1] = np.inf
    with np.errstate(invalid="ignore"):                                # inf·0
        out = beit.resize_relative_table(table, cfg, (4, 4), NP)
        np.testing.assert_array_equal(out, beit.resize_relative_table_always(table, 7, 7, 7, 7, NP))
    assert out is not table and np.isnan(out[5, 1])
    finite = np.random.default_rng(1).standard_normal((7 * 7 + 3, 2))
    bigger = beit.resize_relative_table(finite, cfg, (5, 5), NP)
    assert bigger.shape == (9 * 9 + 3, 2)
    np.testing.assert_array_equal(bigger, beit.resize_relative_table_always(finite, 7, 7, 9, 9, NP))


def test_same_size_bias_resize_is_skipped_with_the_same_bits():
    """interpolate_pos_encoding at the configured size: the bias resize to its own size is skipped, the bits equal
    a forward that runs it (every recorded bias and the logits)."""
    from refvit.synthetic import random_state_dict, shapes_for
    cfg = {"model_type": "beit", "image_size": 32, "patch_size": 8, "num_attention_heads": 2, "hidden_size": 8,
           "num_hidden_layers": 2, "intermediate_size": 16, "use_relative_position_bias": True,
           "architectures": ["BeitForImageClassification"], "num_labels": 3}
    model = refvit.from_state_dict(cfg, random_state_dict(shapes_for(cfg), 0), dtype="float64", backend="numpy")
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    calls, original = [], beit.is_finite
    try:
        beit.is_finite = lambda a: calls.append(a.shape) or False    # every identity resize runs
        ran = model(x, interpolate_pos_encoding=True, output_hidden_states=True)
    finally:
        beit.is_finite = original
    skipped = model(x, interpolate_pos_encoding=True, output_hidden_states=True)
    assert (7 * 7 + 3, 2) in calls and (2, 17, 17) in calls            # both identity resizes were run above
    np.testing.assert_array_equal(ran.logits, skipped.logits)
    for a, b in zip(ran.hidden_states, skipped.hidden_states):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------------------------------
# Config and input errors


def test_config_errors_name_the_key():
    base = config("beit_segmentation")
    with pytest.raises(ConfigError, match="out_indices: semantic segmentation needs exactly 4"):
        refvit.from_state_dict({**base, "out_indices": [1, 2, 3], "out_features": None}, {})
    with pytest.raises(ConfigError, match="add_fpn: needs exactly 4 out_indices"):
        refvit.from_state_dict({**config("beit_backbone_fpn"), "out_indices": [1, 2], "out_features": None}, {})
    with pytest.raises(ConfigError, match="out_indices: must be distinct"):
        refvit.from_state_dict({**base, "out_indices": [3, 1, 2, 4], "out_features": None}, {})
    with pytest.raises(ConfigError) as e:
        refvit.from_state_dict({**config("beit_model"), "num_attention_heads": 5, "use_mean_pooling": "yes",
                                "pool_scales": [0]}, {})
    assert all(k in str(e.value) for k in ("num_attention_heads", "use_mean_pooling", "pool_scales"))
    with pytest.raises(ConfigError, match="add_fpn: the FPN needs reshape_hidden_states"):
        refvit.from_state_dict({**config("beit_backbone_fpn"), "reshape_hidden_states": False}, {})
    with pytest.raises(ConfigError, match="model_type"):
        refvit.from_state_dict({**config("beit_model"), "model_type": "data2vec-vision"}, {}, "BeitModel")
    with pytest.raises(ConfigError, match="auxiliary_num_convs"):
        refvit.from_state_dict({**base, "auxiliary_num_convs": 0}, {})


def test_legacy_segmentation_indices_key():
    cfg = {k: v for k, v in config("beit_segmentation").items() if k not in ("out_indices", "out_features")}
    parsed = beit.beit_config_from_dict({**cfg, "segmentation_indices": [1, 2, 3, 4]}, head="segmentation")
    assert parsed.out_indices == (1, 2, 3, 4)


def test_checkpoint_mismatch_reported():
    raw = tensors("beit_model")
    raw.pop("encoder.layer.1.lambda_2")
    raw["encoder.layer.0.attention.attention.key.bias"] = np.zeros(32, np.float32)
    with pytest.raises(CheckpointError, match="lambda_2.*key.bias|key.bias.*lambda_2"):
        refvit.from_state_dict(config("beit_model"), raw)
    raw = tensors("beit_segmentation")
    raw["decode_head.bottleneck.bn.running_var"] = np.ones(5, np.float32)  # wrong shape: not folded, reported
    with pytest.raises(CheckpointError, match="decode_head.bottleneck.bn.running_var"):
        refvit.from_state_dict(config("beit_segmentation"), raw)


def test_input_errors():
    x = inputs("beit_classification")["pixel_values"]
    model = refvit.from_pretrained(case("beit_classification"))
    with pytest.raises(InputError, match="no mask token"):
        model(x, bool_masked_pos=np.zeros((3, 16), bool))
    with pytest.raises(InputError, match="smaller than one patch"):
        model(np.zeros((1, 3, 7, 32), np.float32))
    d2v = refvit.from_pretrained(case("data2vec_vision_classification"))
    with pytest.raises(InputError, match="does not take it"):
        d2v(x, bool_masked_pos=np.zeros((3, 16), bool))
    seg = refvit.from_pretrained(case("data2vec_vision_segmentation"))
    with pytest.raises(InputError, match="configured 4x4 grid"):
        seg(np.zeros((1, 3, 32, 40), np.float32))
    mim = refvit.from_pretrained(case("beit_mim"))
    with pytest.raises(InputError, match="bool_masked_pos"):
        mim(x[:2], bool_masked_pos=np.zeros((2, 15), bool))


def test_any_input_size_without_the_flag():
    """BEiT resizes its tables to the input's window on every call; with interpolate_pos_encoding the bias is then
    resized to its own size (a copy): both give the same result here."""
    model = refvit.from_pretrained(case("beit_classification_interpolate"))
    x = inputs("beit_classification_interpolate")["pixel_values"]
    np.testing.assert_array_equal(model(x).logits, model(x, interpolate_pos_encoding=True).logits)


# ----------------------------------------------------------------------------------------------------------------------
# Image processor: segmentation maps, reduce labels, post-processing


BEIT_PROCESSING = ["beit_default", "beit_imagenet_legacy", "beit_ade", "beit_ade_legacy", "beit_crop"]


@pytest.mark.parametrize("name", BEIT_PROCESSING)
def test_processor_labels_match_transformers(name):
    golden = processing_golden(PROCESSING / name)  # the arrays written under the installed Pillow
    if golden.expected is None:
        pytest.skip(golden.not_verified)
    meta = golden.meta
    images = [load_image(GOLDEN / e["file"]) for e in meta["images"]]
    processor = ImageProcessor.from_pretrained(PROCESSING / name)
    assert type(processor) is BeitImageProcessor
    out = processor(images, segmentation_maps=[segmentation_map(image) for image in images])
    with np.load(golden.expected) as z:
        np.testing.assert_allclose(out.pixel_values, z["pixel_values"], rtol=0, atol=1e-6)
        assert out.labels.dtype == np.int64
        np.testing.assert_array_equal(out.labels, z["labels"])


def test_legacy_reduce_labels_key_is_ignored():
    """microsoft/beit-base-finetuned-ade-640-640's `reduce_labels: true` is not read by transformers 5 (quirk)."""
    assert ImageProcessor.from_pretrained(PROCESSING / "beit_ade_legacy").do_reduce_labels is False
    assert ImageProcessor.from_pretrained(PROCESSING / "beit_ade").do_reduce_labels is True


def test_post_process_semantic_segmentation_equals_transformers():
    processor = ImageProcessor.from_pretrained(PROCESSING / "beit_ade")
    with np.load(PROCESSING / "beit_ade" / "expected.npz") as z:
        logits = z["post_process/logits"]
        for key, targets in POST_PROCESS_TARGETS.items():
            maps = processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=targets)
            for i, m in enumerate(maps):
                assert m.dtype == np.int64
                np.testing.assert_array_equal(m, z[f"post_process/{key}/{i}"])
    scored = processor.post_process_semantic_segmentation({"logits": logits}, [(5, 6), (7, 8)],
                                                          return_segmentation_scores=True)
    assert scored[1].segmentation.shape == (7, 8) and scored[1].segmentation_scores.shape == (7, 7, 8)
    np.testing.assert_array_equal(scored[1].segmentation, scored[1].segmentation_scores.argmax(0))


def test_reduce_labels_and_map_errors():
    m = np.array([[0, 1, 2], [254, 255, 7]], np.uint8)
    np.testing.assert_array_equal(reduce_labels(m), [[255, 0, 1], [253, 255, 6]])
    np.testing.assert_array_equal(m, [[0, 1, 2], [254, 255, 7]])  # the caller's array is untouched
    p = BeitImageProcessor(size={"height": 4, "width": 6}, resample=0)
    image = np.zeros((8, 12, 3), np.uint8)
    seg = np.arange(96).reshape(8, 12)
    labels = p(image, segmentation_maps=seg, do_reduce_labels=True).labels
    assert labels.shape == (1, 4, 6) and labels.dtype == np.int64  # reduced first, then resized (nearest here)
    np.testing.assert_array_equal(labels[0], reduce_labels(seg)[1::2, 1::2])
    with pytest.raises(InputError, match=r"\[0, 255\]"):
        p(image, segmentation_maps=np.full((8, 12), 300))
    with pytest.raises(InputError, match="one \\(H, W\\) label map"):
        p(image, segmentation_maps=[image])  # a 3-D array inside a list is not one map (alone it is a batch)
    with pytest.raises(InputError, match="integer labels"):
        p(image, segmentation_maps=np.full((8, 12), 0.5))
    with pytest.raises(InputError, match="do_reduce_labels"):
        p(image, do_reduce_labels="yes")
    with pytest.raises(InputError, match="target_sizes"):
        p.post_process_semantic_segmentation({"logits": np.zeros((2, 3, 4, 4), np.float32)}, [(4, 4)])
    with pytest.raises(InputError, match="logits"):
        p.post_process_semantic_segmentation({"logits": np.zeros((2, 3), np.float32)})


def test_auto_processor_for_beit_and_data2vec(tmp_path):
    for model_type in ("beit", "data2vec-vision"):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
        (tmp_path / "preprocessor_config.json").write_text("{}")
        assert type(refvit.AutoImageProcessor.from_pretrained(tmp_path)) is BeitImageProcessor
    p = BeitImageProcessor()
    assert (p.size, p.resample, p.do_center_crop, p.do_reduce_labels) == ({"height": 224, "width": 224}, 3, False, False)
    assert p.to_dict()["image_processor_type"] == "BeitImageProcessor" and refvit.BeitFeatureExtractor is BeitImageProcessor


# ----------------------------------------------------------------------------------------------------------------------
# refvit segment


def test_cli_segment(tmp_path, capsys):
    from refvit.cli import label_palette, main

    model_dir = tmp_path / "seg"
    shutil.copytree(case("beit_segmentation"), model_dir)
    BeitImageProcessor(size={"height": 32, "width": 48}).to_dict()
    (model_dir / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "BeitImageProcessor",
                                                                     "size": {"height": 32, "width": 48}}))
    image_path = GOLDEN / "images" / "chelsea_landscape.jpg"
    out_png = tmp_path / "mask.png"
    assert main(["segment", str(model_dir), str(image_path), "--out", str(out_png), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    mask = Image.open(out_png)
    assert mask.mode == "P" and mask.size == (451, 300)
    labels = np.asarray(mask)
    model = refvit.from_pretrained(model_dir)
    processor = ImageProcessor.from_pretrained(model_dir)
    image = load_image(image_path)
    expected = processor.post_process_semantic_segmentation(model(**processor(image)), [(300, 451)])[0]
    np.testing.assert_array_equal(labels, expected)
    assert sum(r["pixels"] for r in report["labels"]) == labels.size
    assert {r["label"] for r in report["labels"]} <= set(model.config.id2label.values())
    assert mask.getpalette()[:6] == label_palette(2).ravel().tolist()
    assert main(["segment", str(model_dir), str(image_path), "--out", str(out_png)]) == 0
    assert "labels present" in capsys.readouterr().out
    (tmp_path / "cls").mkdir()
    shutil.copy(case("beit_classification") / "config.json", tmp_path / "cls")
    shutil.copy(case("beit_classification") / "model.safetensors", tmp_path / "cls")
    (tmp_path / "cls" / "preprocessor_config.json").write_text("{}")
    assert main(["segment", str(tmp_path / "cls"), str(image_path), "--out", str(out_png)]) == 2
    assert "not a semantic segmentation model" in capsys.readouterr().err
