"""Load-time fusion: ViT/DeiT/BEiT q, k, v weights concatenated once into one array at load, their
params views of it (no memory added), and one GEMM per attention instead of three. The fused forward must give
what three separate projections give (to the GEMM's rounding), record q, k, v under their own names, and fall
back to three GEMMs for params that were not fused."""

import numpy as np
import pytest

import refvit
from refvit.errors import CheckpointError
from refvit.model import Model
from refvit.models.common import fuse_qkv, fused_rows

from conftest import golden_case

CASES = ["vit_model", "deit_teacher", "beit_classification", "beit_classification_all_biases"]


def attention_params(model):
    """Every params node holding query/key/value (one per layer)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if {"query", "key", "value"} <= node.keys():
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(model.params)
    return found


def copied(node):
    """The params tree with every array copied (no views: nothing fused)."""
    if isinstance(node, dict):
        return {k: copied(v) for k, v in node.items()}
    if isinstance(node, list):
        return [copied(v) for v in node]
    return np.array(node)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_qkv_are_views_of_one_array_and_run_as_one_gemm(case, dtype):
    model = refvit.from_pretrained(golden_case(case), dtype=dtype)
    nodes = attention_params(model)
    assert len(nodes) == model.config.num_hidden_layers
    for node in nodes:
        weights = [node[n]["weight"] for n in ("query", "key", "value")]
        base = fused_rows(weights)
        assert base is not None and base.shape == (3 * weights[0].shape[0], weights[0].shape[1])
        assert all(w.base is base for w in weights)
        assert base.dtype == np.dtype(dtype)
        bias = fused_rows([node[n].get("bias") for n in ("query", "key", "value")], allow_missing=True)
        assert bias is not None
        if "bias" not in node["key"]:                # BEiT: no key bias; zeros stand in for it in the fused bias
            C = weights[0].shape[0]
            assert np.array_equal(bias[C:2 * C], np.zeros(C))

    calls = []
    ns = model.kernels
    model.kernels = type(ns)(**{**vars(ns), "linear": lambda x, w, *a, **k: calls.append(w.shape) or
                                ns.linear(x, w, *a, **k),       # ViT/DeiT on Numba: the GEMMs of a fused block
                                "attention_block": lambda x, lw, lb, e, w, *a, **k: calls.append(w.shape) or
                                calls.append(a[1].shape) or ns.attention_block(x, lw, lb, e, w, *a, **k)})
    x = np.random.default_rng(0).standard_normal((1, 3, *model.config.image_size)).astype(dtype)
    fused = model(x, output_intermediates=True)
    C = model.config.hidden_size
    assert calls.count((3 * C, C)) == model.config.num_hidden_layers and (C, C) in calls  # one q/k/v GEMM a layer

    unfused = Model(model.config, copied(model.params), model.architecture, dtype, "numba")
    assert all(fused_rows([n[k]["weight"] for k in ("query", "key", "value")]) is None
               for n in attention_params(unfused))
    separate = unfused(x, output_intermediates=True)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for name, value in separate.intermediates.items():
        got = fused.intermediates[name]
        assert got.shape == value.shape, name
        scale = max(1.0, float(np.abs(value).max())) if value.size else 1.0
        assert np.abs(got - value).max() <= tol * scale, name
    assert any(name.endswith("attention.attention.query") for name in fused.intermediates)


def test_fuse_qkv_leaves_other_tensors_alone_and_refuses_odd_shapes():
    rng = np.random.default_rng(0)
    t = {f"l.{n}.weight": rng.standard_normal((4, 3)) for n in ("query", "key", "value")}
    t["l.query.bias"] = rng.standard_normal(4)
    t["other.weight"] = rng.standard_normal((2, 2))
    out = fuse_qkv(t)
    assert out["other.weight"] is t["other.weight"] and "l.key.bias" not in out
    for n in ("query", "key", "value"):
        assert np.array_equal(out[f"l.{n}.weight"], t[f"l.{n}.weight"])
    assert np.array_equal(out["l.query.bias"], t["l.query.bias"])
    base = fused_rows([out[f"l.{n}.weight"] for n in ("query", "key", "value")])
    assert base is not None and base.shape == (12, 3)
    bias = fused_rows([out["l.query.bias"], None, None], allow_missing=True)
    assert np.array_equal(bias, np.concatenate([t["l.query.bias"], np.zeros(8)]))
    no_bias = fuse_qkv({k: v for k, v in t.items() if k.endswith("weight")})   # no biases: none invented
    assert not any(k.endswith("bias") for k in no_bias)
    assert fused_rows([None, None, None], allow_missing=True).size == 0
    assert fused_rows([None, None, None]) is None and fused_rows([out["l.query.bias"], None, None]) is None
    odd = {**t, "l.key.weight": rng.standard_normal((5, 3))}            # shapes differ: no silent unfused load
    with pytest.raises(CheckpointError, match=r"l\.\{query,key,value\}\.weight: cannot fuse .*\(5, 3\)"):
        fuse_qkv(odd)
    with pytest.raises(CheckpointError, match="cannot fuse"):
        fuse_qkv({k: v for k, v in t.items() if k != "l.value.weight"})
    assert fused_rows([out["l.key.weight"], out["l.query.weight"], out["l.value.weight"]]) is None  # wrong order


def test_fuse_qkv_keeps_weights_that_already_are_row_blocks_of_one_array():
    """q, k, v drawn into one (3C, C) array (refvit verify's seeded real-size models) are used as they are, not
    copied: the load holds no second copy of the attention weights. Anything else is still copied."""
    block = np.random.default_rng(1).standard_normal((12, 3))
    t = {f"l.{n}.weight": block[4 * i:4 * (i + 1)] for i, n in enumerate(("query", "key", "value"))}
    out = fuse_qkv(t)
    assert fused_rows([out[f"l.{n}.weight"] for n in ("query", "key", "value")]) is block
    shuffled = {"l.query.weight": block[4:8], "l.key.weight": block[:4], "l.value.weight": block[8:]}
    out = fuse_qkv(shuffled)
    base = fused_rows([out[f"l.{n}.weight"] for n in ("query", "key", "value")])
    assert base is not block and np.array_equal(base, np.concatenate([block[4:8], block[:4], block[8:]]))


def test_verify_draws_real_size_qkv_into_one_array_with_the_same_values():
    """refvit verify's seeded DeiT draws q, k, v into one array; each has the values of its own stream."""
    import json
    from pathlib import Path

    from refvit import synthetic, verify

    case = Path(__file__).resolve().parents[1] / "golden" / "cases" / "deit_tiny_teacher_224"
    meta, config = (json.loads((case / f).read_text()) for f in ("meta.json", "config.json"))
    shapes = synthetic.shapes_for(config, meta["architecture"])
    model, _ = verify._seeded(case, config, shapes, meta, "float32", "numpy")
    attention = model.params["deit"]["encoder"]["layer"][3]["attention"]["attention"]
    assert fused_rows([attention[n]["weight"] for n in ("query", "key", "value")]) is not None
    for n in ("query", "key", "value"):
        name = f"deit.encoder.layer.3.attention.attention.{n}.weight"
        drawn = synthetic.random_state_dict({name: shapes[name]}, meta["seed"])[name]
        assert np.array_equal(attention[n]["weight"], drawn)
