"""parity.capture_onnx and `refvit capture onnx`: ONNX node outputs named after checkpoint modules.

Stage 1 (no torch; onnx + onnxruntime are in the `test` extra): small graphs built with onnx.helper whose node names
follow torch.onnx.export's scopes, transformers-5 and classic, checked against NumPy formulas written here.
Stage 2 (needs_framework): every family's golden case exported by torch.onnx.export, compared module by module with
refvit's trace, and planted graph bugs (a changed initializer, a LayerNormalization epsilon) found at their module."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import refvit
from refvit import parity

C, N, CLASSES = 4, 4, 3


def _ln(x, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps)


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.7, shape).astype(np.float32) for k, shape in
            [("wq", (C, C)), ("bq", (C,)), ("wk", (C, C)), ("bk", (C,)), ("wv", (C, C)), ("bv", (C,)),
             ("wo", (C, C)), ("bo", (C,)), ("wc", (C, CLASSES))]}


def _reference(x, w, eps=1e-12):
    """The toy model in NumPy: embeddings = pixels as tokens, one single-head attention layer, final norm, classifier."""
    e = x.reshape(1, C, N).transpose(0, 2, 1)
    h = _ln(e, eps)
    q, k, v = h @ w["wq"] + w["bq"], h @ w["wk"] + w["bk"], h @ w["wv"] + w["bv"]
    s = q @ k.transpose(0, 2, 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ctx = p @ v
    out = ctx @ w["wo"] + w["bo"]
    layer = out + e
    final = _ln(layer, eps)
    return {"vit.embeddings": e, "vit.encoder.layer.0.layernorm_before": h,
            "vit.encoder.layer.0.attention.attention.query": q, "vit.encoder.layer.0.attention.attention.key": k,
            "vit.encoder.layer.0.attention.attention.value": v, "attentions.0": p,
            "vit.encoder.layer.0.attention.attention": ctx, "vit.encoder.layer.0.attention.output": out,
            "vit.encoder.layer.0": layer, "vit.layernorm": final, "classifier": final @ w["wc"]}


T5 = {"emb": "vit/embeddings", "ln1": "vit/layers.0/layernorm_before", "q": "vit/layers.0/attention/q_proj",
      "k": "vit/layers.0/attention/k_proj", "v": "vit/layers.0/attention/v_proj", "att": "vit/layers.0/attention",
      "o": "vit/layers.0/attention/o_proj", "layer": "vit/layers.0", "ln": "vit/layernorm", "cls": "classifier"}
CLASSIC = {"emb": "vit/embeddings", "ln1": "vit/encoder/layer.0/layernorm_before",
           "q": "vit/encoder/layer.0/attention/attention/query", "k": "vit/encoder/layer.0/attention/attention/key",
           "v": "vit/encoder/layer.0/attention/attention/value", "att": "vit/encoder/layer.0/attention/attention",
           "o": "vit/encoder/layer.0/attention/output/dense", "layer": "vit/encoder/layer.0/output",
           "ln": "vit/layernorm", "cls": "classifier"}


def _graph(scopes, w, eps=1e-12, prefix="", swap_qk=False, extra_input=False):
    """The toy model as an ONNX graph, node names `/<scope>/<Op>` as torch.onnx.export writes them."""
    s = {k: "/" + prefix + v for k, v in scopes.items()}
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits += [numpy_helper.from_array(np.array([1, C, N], np.int64), "shape"),
              numpy_helper.from_array(np.ones(C, np.float32), "ones"), numpy_helper.from_array(np.zeros(C, np.float32),
                                                                                              "zeros")]

    def node(op, scope, name, inputs, out, **attrs):
        return helper.make_node(op, inputs, [out], name=f"{scope}/{name}", **attrs)

    (q_w, q_b), (k_w, k_b) = (("wk", "bk"), ("wq", "bq")) if swap_qk else (("wq", "bq"), ("wk", "bk"))
    nodes = [
        node("Reshape", s["emb"], "Reshape", ["pixel_values", "shape"], "e0"),
        node("Transpose", s["emb"], "Transpose", ["e0"], "emb", perm=[0, 2, 1]),
        node("LayerNormalization", s["ln1"], "LayerNormalization", ["emb", "ones", "zeros"], "h", axis=-1, epsilon=eps),
        node("MatMul", s["q"], "MatMul", ["h", q_w], "q0"), node("Add", s["q"], "Add", ["q0", q_b], "q"),
        node("MatMul", s["k"], "MatMul", ["h", k_w], "k0"), node("Add", s["k"], "Add", ["k0", k_b], "k"),
        node("MatMul", s["v"], "MatMul", ["h", "wv"], "v0"), node("Add", s["v"], "Add", ["v0", "bv"], "v"),
        node("Transpose", s["att"], "Transpose", ["k"], "kt", perm=[0, 2, 1]),
        node("MatMul", s["att"], "MatMul", ["q", "kt"], "scores"),
        node("Softmax", s["att"], "Softmax", ["scores"], "probs", axis=-1),
        node("MatMul", s["att"], "MatMul_1", ["probs", "v"], "ctx"),
        node("MatMul", s["o"], "MatMul", ["ctx", "wo"], "o0"), node("Add", s["o"], "Add", ["o0", "bo"], "o"),
        node("Add", s["layer"], "Add", ["o", "emb"], "layer"),
        node("LayerNormalization", s["ln"], "LayerNormalization", ["layer", "ones", "zeros"], "final", axis=-1,
             epsilon=eps),
        node("MatMul", s["cls"], "MatMul", ["final", "wc"], "logits"),
    ]
    inputs = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, C, 2, 2])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(nodes, "toy", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def pixels():
    return np.random.default_rng(1).normal(size=(1, C, 2, 2)).astype(np.float32)


@pytest.mark.parametrize("scopes,prefix", [(T5, ""), (CLASSIC, ""), (T5, "m/")], ids=["transformers5", "classic",
                                                                                       "wrapped"])
def test_every_module_named_and_exact(tmp_path, pixels, scopes, prefix):
    w = _weights()
    path = tmp_path / "toy.onnx"
    onnx.save(_graph(scopes, w, prefix=prefix), path)
    trace = parity.capture_onnx(path, pixels)
    expected = _reference(pixels.astype(np.float64), w)
    for name, value in expected.items():
        assert name in trace, (name, trace.names)
        np.testing.assert_allclose(trace[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    assert trace.meta["model_type"] == "vit" and trace.meta["graph_optimizations"] == "off"
    # execution order: the attention map right before the module that uses it, hidden states after their module
    names = trace.names
    assert names[0] == "pixel_values"
    assert names.index("attentions.0") == names.index("vit.encoder.layer.0.attention.attention") - 1
    assert names.index("hidden_states.1") > names.index("vit.encoder.layer.0")
    np.testing.assert_array_equal(trace["hidden_states.1"], trace["vit.encoder.layer.0"])
    np.testing.assert_array_equal(trace["logits"], trace["classifier"])  # an HF field name kept


def test_like_names_outputs_and_planted_bug(tmp_path, pixels):
    """With a reference, the graph's output takes the reference's output name; a q/k swap planted in the graph is
    the first divergence at the query module."""
    w = _weights()
    ref_arrays = {"pixel_values": pixels, **{k: v.astype(np.float32) for k, v in _reference(pixels, w).items()}}
    ref_arrays["logits"] = ref_arrays["classifier"]
    kinds = {k: "output" if k == "logits" else "attention" if k.startswith("attentions") else "input"
             if k == "pixel_values" else "module" for k in ref_arrays}
    ref = parity.Trace(ref_arrays, {"model_type": "vit"}, kinds)
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(_graph(T5, w), good)
    onnx.save(_graph(T5, w, swap_qk=True), bad)
    ok = parity.compare(ref, parity.capture_onnx(good, pixels, like=ref))
    assert ok.ok and not [r.name for r in ok.rows if r.status == "MISSING"]
    assert "logits" in [r.name for r in ok.rows if r.status == "OK"]
    result = parity.compare(ref, parity.capture_onnx(bad, pixels, like=ref))
    assert result.first_divergence.name == "vit.encoder.layer.0.attention.attention.query"
    assert "`vit.encoder.layer.0.attention.attention.key`" in result.likely_cause.cause


def test_all_nodes_keeps_every_node_output(tmp_path, pixels):
    w = _weights()
    path = tmp_path / "toy.onnx"
    onnx.save(_graph(T5, w), path)
    named = parity.capture_onnx(path, pixels)
    every = parity.capture_onnx(path, pixels, all_nodes=True)
    assert every.names[:len(named)] == named.names                    # the named ones first, unchanged
    inner = {"onnx:q0", "onnx:k0", "onnx:scores", "onnx:e0", "onnx:kt", "onnx:o0"}   # inside modules, unnamed
    assert inner <= set(every.names), sorted(set(every.names) - set(named.names))
    ref = _reference(pixels.astype(np.float64), w)
    np.testing.assert_allclose(every["onnx:q0"], ref["vit.encoder.layer.0.attention.attention.query"] - w["bq"],
                               rtol=1e-4, atol=1e-5)


def test_optimized_lists_fused_modules(tmp_path, pixels):
    """ORT's SkipLayerNormalization fusion swallows the residual Add: the layer's output boundary is gone and is
    listed as FUSED (not compared, not missing); everything still there matches the unoptimized run."""
    w = _weights()
    path = tmp_path / "toy.onnx"
    onnx.save(_graph(T5, w), path)
    plain = parity.capture_onnx(path, pixels)
    fast = parity.capture_onnx(path, pixels, optimized=True)
    fused = fast.meta.get("fused", {})
    assert "vit.encoder.layer.0" in fused and "vit.encoder.layer.0" not in fast
    result = parity.compare(plain, fast, allow_missing=True)  # hidden_states.1 is layer 0's (fused) output
    statuses = {r.name: r.status for r in result.rows}
    assert statuses["vit.encoder.layer.0"] == "FUSED" and result.ok and result.missing == ["hidden_states.1"]
    assert "FUSED" in parity.format_report(result)
    assert statuses["vit.layernorm"] == "OK"


def test_bad_inputs(tmp_path, pixels):
    with pytest.raises(refvit.InputError, match="no such ONNX file"):
        parity.capture_onnx(tmp_path / "missing.onnx", pixels)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(refvit.InputError):
        parity.capture_onnx(garbage, pixels)
    two = tmp_path / "two.onnx"
    onnx.save(_graph(T5, _weights(), extra_input=True), two)
    with pytest.raises(refvit.InputError, match="2 inputs"):
        parity.capture_onnx(two, pixels)
    anon = tmp_path / "anon.onnx"
    onnx.save(_graph({k: f"blk{i}" for i, k in enumerate(T5)}, _weights()), anon)
    with pytest.raises(refvit.InputError, match="model family"):
        parity.capture_onnx(anon, pixels)
    with pytest.raises(refvit.InputError, match="pixel_values"):
        parity.capture_onnx(two, pixels[0])


def test_cli_capture_onnx(tmp_path, pixels):
    w = _weights()
    onnx.save(_graph(T5, w), tmp_path / "toy.onnx")
    ref = parity.Trace({"pixel_values": pixels, **{k: v.astype(np.float32) for k, v in _reference(pixels, w).items()}},
                       {"model_type": "vit"})
    ref.save(tmp_path / "ref.safetensors")
    run = [sys.executable, "-m", "refvit.cli"]
    r = subprocess.run(run + ["capture", "onnx", str(tmp_path / "toy.onnx"), "--like", str(tmp_path / "ref.safetensors"),
                              "--out", str(tmp_path / "cand.safetensors")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(run + ["compare", str(tmp_path / "ref.safetensors"), str(tmp_path / "cand.safetensors"),
                              "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["compared"] == len(ref)
    r = subprocess.run(run + ["capture", "onnx", str(tmp_path / "nope.onnx"), "--like", str(tmp_path / "ref.safetensors"),
                              "--out", str(tmp_path / "x.safetensors")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no such ONNX file" in r.stderr


# ----------------------------------------------------------------------------------------------------------------------
# stage 2: torch.onnx.export of every family's golden cases

FAMILY_CASES = {"vit_classification": set(), "deit_teacher": set(), "beit_classification": set(),
                "data2vec_vision_classification": set(), "bit_bottleneck": set(), "bit_preact_model": set(),
                # the classifier reads the cls token only: the export pruned the last stage's feature map
                "cvt_classification": {"cvt.encoder.stages.2", "hidden_states.2"}}


def _export(case, path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tests.conftest import GOLDEN

    d = GOLDEN / "cases" / case
    arch = json.loads((d / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(d, attn_implementation="eager").eval()
    x = np.load(d / "inputs.npz")["pixel_values"]
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(x),), str(path), dynamo=False, opset_version=17,
                          input_names=["pixel_values"])
    return d


@pytest.mark.needs_framework
@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_exported_golden_cases_match_every_module(tmp_path, case):
    d = _export(case, tmp_path / "m.onnx")
    ref = parity.from_golden(d)
    cand = parity.capture_onnx(tmp_path / "m.onnx", ref["pixel_values"], like=ref)
    result = parity.compare(ref, cand, allow_missing=True)  # the expected gaps: asserted below
    missing = {r.name for r in result.rows if r.status == "MISSING"}
    assert result.ok, parity.format_report(result)
    assert missing == FAMILY_CASES[case], missing
    assert sum(r.status == "OK" for r in result.rows) >= 25


def _node(model, suffix):
    return next(n for n in model.graph.node if n.name.endswith(suffix))


@pytest.mark.needs_framework
def test_planted_graph_bugs_found_at_their_module(tmp_path):
    d = _export("deit_teacher", tmp_path / "m.onnx")
    ref = parity.from_golden(d)
    x = ref["pixel_values"]
    # a changed initializer: layer 1's query weight
    model = onnx.load(tmp_path / "m.onnx")
    inits = {i.name: i for i in model.graph.initializer}
    w_name = next(t for t in _node(model, "layers.1/attention/q_proj/MatMul").input if t in inits)
    w = numpy_helper.to_array(inits[w_name]).copy()
    w[0, :] += 0.05
    inits[w_name].CopyFrom(numpy_helper.from_array(w, w_name))
    onnx.save(model, tmp_path / "init.onnx")
    r = parity.compare(ref, parity.capture_onnx(tmp_path / "init.onnx", x, like=ref))
    assert r.first_divergence.name == "deit.encoder.layer.1.attention.attention.query"
    # a different LayerNorm epsilon: 1e-3 where the config says 1e-6 (layer 0's layernorm_after). Measured: 1e-5 there
    # moves that output by NMSE 1.2e-11, inside float32's own noise for this model, so no tolerance can call it
    eps = json.loads((d / "config.json").read_text())["layer_norm_eps"]
    model = onnx.load(tmp_path / "m.onnx")
    ln = _node(model, "layers.0/layernorm_after/LayerNormalization")
    for a in ln.attribute:
        if a.name == "epsilon":
            assert a.f == pytest.approx(eps) and eps < 1e-5
            a.f = 1e-3
    onnx.save(model, tmp_path / "eps.onnx")
    r = parity.compare(ref, parity.capture_onnx(tmp_path / "eps.onnx", x, like=ref))
    assert r.first_divergence.name == "deit.encoder.layer.0.layernorm_after"
    assert "epsilon" in r.likely_cause.cause  # its input (a residual sum) is not recorded: the weaker epsilon hint
    # ORT's FastGelu (the tanh approximation, a com.microsoft contrib op) in place of layer 0's erf GELU subgraph
    r = parity.compare(ref, parity.capture_onnx(fast_gelu(tmp_path / "m.onnx", tmp_path / "fastgelu.onnx"), x,
                                                like=ref))
    assert r.first_divergence.name == "deit.encoder.layer.0.intermediate"
    assert "tanh approximation" in r.likely_cause.cause


def fast_gelu(source, target, layer=0):
    """The export with layer `layer`'s GELU nodes (Div, Erf, Add, Mul, Mul) replaced by one FastGelu node."""
    model = onnx.load(source)
    act = [n for n in model.graph.node if f"/layers.{layer}/mlp/activation_fn/" in n.name]
    inputs = {t for n in act for t in n.input} - {t for n in act for t in n.output}
    x = next(t for t in inputs if "fc1" in t)
    at = list(model.graph.node).index(act[0])
    for n in act:
        model.graph.node.remove(n)
    model.graph.node.insert(at, helper.make_node("FastGelu", [x], [act[-1].output[0]], domain="com.microsoft",
                                                 name=f"/deit/layers.{layer}/mlp/activation_fn/FastGelu"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, target)
    return target


def main() -> int:
    """The table: planted graph bug -> first divergence -> likely cause (needs torch to export)."""
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    d = _export("deit_teacher", tmp / "m.onnx")
    ref = parity.from_golden(d)
    x = ref["pixel_values"]

    def edited(name, edit):
        model = onnx.load(tmp / "m.onnx")
        edit(model)
        onnx.save(model, tmp / name)
        return tmp / name

    def bump_q(model):
        inits = {i.name: i for i in model.graph.initializer}
        w_name = next(t for t in _node(model, "layers.1/attention/q_proj/MatMul").input if t in inits)
        w = numpy_helper.to_array(inits[w_name]).copy()
        w[0, :] += 0.05
        inits[w_name].CopyFrom(numpy_helper.from_array(w, w_name))

    def eps(model):
        for a in _node(model, "layers.0/layernorm_before/LayerNormalization").attribute:
            if a.name == "epsilon":
                a.f = 1e-3

    def swap_qk(model):  # the weight and the bias of q_proj and k_proj trade places
        inits = {i.name for i in model.graph.initializer}
        for kind in ("MatMul", "Add"):
            q, k = _node(model, f"layers.0/attention/q_proj/{kind}"), _node(model, f"layers.0/attention/k_proj/{kind}")
            qi, ki = list(q.input), list(k.input)
            del q.input[:], k.input[:]
            q.input.extend([ki[j] if t in inits else t for j, t in enumerate(qi)])
            k.input.extend([qi[j] if t in inits else t for j, t in enumerate(ki)])

    cases = {"layer 1 query weight row changed (initializer)": edited("init.onnx", bump_q),
             "LayerNormalization epsilon 1e-3 for 1e-6 (layer 0, before)": edited("eps.onnx", eps),
             "q_proj and k_proj weights swapped (layer 0)": edited("qk.onnx", swap_qk),
             "ORT FastGelu for the erf GELU (layer 0)": fast_gelu(tmp / "m.onnx", tmp / "fastgelu.onnx")}
    print("| planted graph bug (ONNX, DeiT) | first divergence | likely cause |\n|---|---|---|")
    for bug, path in cases.items():
        result = parity.compare(ref, parity.capture_onnx(path, x, like=ref))
        first = result.first_divergence
        print(f"| {bug} | `{first.name if first else '-'}` | "
              f"{result.likely_cause.cause if result.likely_cause else 'no known pattern'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
