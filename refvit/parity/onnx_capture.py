"""Capture a trace from an ONNX model run in ONNX Runtime, every module output under its checkpoint name.

    trace = parity.capture_onnx("deit.onnx", pixel_values, like=reference_trace)

How a node output becomes a checkpoint name. `torch.onnx.export` names each node after the module scope that
emitted it, `/deit/layers.0/attention/q_proj/Add`: the scope `deit.layers.0.attention.q_proj` is the module, `Add` the
op. For every scope S:
  - its **outputs** are the tensors produced by a node inside S and used outside it, graph outputs, or used nowhere
    (a part of a returned tuple that no one reads); the module's output is the one whose shape is the reference's
    (with `like=`), else the last in node order (a layer's residual sum, not an attention map it also hands out);
  - its **input** is the first tensor a node inside S reads that no node inside S produced (initializers and
    constants left out).
refvit's record points (`refvit.parity.names.record_points`, the rules golden/generate.py records with) say which
scopes to record and under which checkpoint name, for transformers-5 scope names (`layers.0.attention.q_proj`) and
classic ones (`encoder.layer.0.attention.attention.query`, what transformers 4 exported). Attention maps are the
outputs of the Softmax nodes (after the Casts eager attention adds), in node order: `attentions.0`, `attentions.1` ….

Graph optimizations are off by default (ORT_DISABLE_ALL), so no fusion erases a module boundary; the boundaries are
made graph outputs and read (`all_nodes=True` reads every node output, as Polygraphy's `--onnx-outputs mark all`).
With `optimized=True` ORT's fusions (extended level:
SkipLayerNormalization, FastGelu, Attention …) are kept: the graph ORT optimized is saved, the boundaries still in it
are read, and the modules whose boundary was fused away are listed in the trace's metadata as "fused" (compare shows
them as FUSED: not compared, not missing).

Needs the `onnx` extra (onnx, onnxruntime); no torch.
"""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np

from refvit.errors import InputError

from .names import RULES, record_points
from .trace import Trace, sha256_array

FAMILIES = {"vit": "vit", "deit": "deit", "beit": "beit", "data2vec_vision": "data2vec-vision", "cvt": "cvt",
            "bit": "bit"}
# classic (transformers 4) module trees of ViT/DeiT/BEiT: the same names refvit records (data2vec-vision keeps them)
_CLASSIC = re.compile(r"^((vit|deit|beit)\.)?(embeddings|layernorm|pooler|encoder\.relative_position_bias"
                      r"|encoder\.layer\.\d+(\.(layernorm_before|layernorm_after|intermediate|output|attention\.output"
                      r"|attention\.attention(\.(query|key|value|relative_position_bias))?))?)$"
                      r"|^(classifier|cls_classifier|distillation_classifier|lm_head|decoder|decoder\.0|fpn1|fpn1\.[12]"
                      r"|fpn2|fpn4|decode_head|auxiliary_head)$"
                      r"|^decode_head\.(lateral_convs\.\d+|fpn_convs\.\d+|psp_modules\.\d+\.1|bottleneck"
                      r"|fpn_bottleneck|classifier)$"
                      r"|^auxiliary_head\.(convs\.\d+|conv_cat|classifier)$")
_CLASSIC_LAYER = re.compile(r"(^|\.)encoder\.layer\.\d+(\.|$)")
_FLOAT = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx.TensorProto element types


def _require():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise InputError(f"capture_onnx needs onnx and onnxruntime: pip install 'refvit[onnx]' ({e})") from None
    return onnx, onnxruntime


QUANTIZER_OPS = ("DynamicQuantizeLinear", "QuantizeLinear")


def scope_of(node_name: str) -> list[str]:
    """`/deit/layers.0/attention/q_proj/Add` -> ["deit", "layers.0", "attention", "q_proj"]; [] for unscoped names."""
    if not node_name.startswith("/"):
        return []
    return [p for p in node_name.split("/")[1:-1] if p]


def _wrapper_prefix(scopes: list[list[str]]) -> int:
    """How many leading scope components every scoped node shares that are not the model's own (e.g. a wrapper
    module `m` around the model): a transformers model always has several top-level modules."""
    scoped = [s for s in scopes if s]
    k = 0
    while scoped and all(len(s) > k + 1 and s[k] == scoped[0][k] for s in scoped):
        k += 1
    return k


def guess_model_type(paths) -> str | None:
    """The family from the scopes: the base model's attribute name (`deit.`…), else a base model's own modules
    (BiT's `embedder`, CvT's `encoder.stages.N.embedding`); ViT/DeiT/BEiT base models are ambiguous (None)."""
    for p in paths:
        head = p.split(".")[0]
        if head in FAMILIES:
            return FAMILIES[head]
    if any(p == "embedder" for p in paths):
        return "bit"
    if any(re.fullmatch(r"encoder\.stages\.\d+\.embedding", p) for p in paths):
        return "cvt"
    return None


def _classic_rule(module: str) -> list:
    return [("out", module)] if _CLASSIC.search(module) else []


def points_for(model_type: str, module: str, classic: bool) -> list:
    """record_points for transformers-5 scope names; for classic ViT/DeiT/BEiT scopes the module is its own name."""
    if classic and model_type in ("vit", "deit", "beit"):
        return _classic_rule(module)
    return record_points(model_type, module)


first_inputs: dict = {}  # filled by module_boundaries: checkpoint name -> the module's first input tensor


def module_boundaries(graph, model_type: str | None = None):
    """(points, attentions, model_type) for an onnx GraphProto: points = [(checkpoint name, [onnx tensors, preferred
    first], position)] for module outputs/inputs; attentions = [(onnx tensor, scope path, position)] from the Softmax
    nodes.
    Why so long: one pass over the graph's nodes, each kind of boundary recognised where it is met."""
    nodes = list(graph.node)
    # nodes a quantizer inserted after a module's output (onnxruntime quantize_dynamic names DynamicQuantizeLinear
    # `<output>_QuantizeLinear`, inside the producer's scope) belong to the consumer, not to the module: unscoped
    scopes = [[] if n.op_type in QUANTIZER_OPS else scope_of(n.name) for n in nodes]
    strip = _wrapper_prefix(scopes)
    scopes = [s[strip:] if s else s for s in scopes]
    paths = sorted({".".join(s[:i]) for s in scopes for i in range(1, len(s) + 1)})
    model_type = model_type or guess_model_type(paths)
    if model_type is None:
        raise InputError("capture_onnx: cannot tell the model family from the node scopes (no vit/deit/beit/"
                         "data2vec_vision/cvt/bit scope; an export by torch.onnx.export names nodes after modules): "
                         "pass model_type=")
    if model_type not in RULES:
        raise InputError(f"capture_onnx: model_type {model_type!r}: one of {sorted(RULES)}")
    classic = any(_CLASSIC_LAYER.search(p) for p in paths)
    constant = {i.name for i in graph.initializer} | {o for n in nodes if n.op_type == "Constant" for o in n.output}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: dict = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    graph_outputs = {o.name for o in graph.output}
    members: dict = {}   # scope path -> node indices inside it
    for i, s in enumerate(scopes):
        for k in range(1, len(s) + 1):
            members.setdefault(".".join(s[:k]), []).append(i)
    points = []
    first_inputs.clear()
    for path in paths:
        wanted = points_for(model_type, path, classic)
        if not wanted:
            continue
        inside = set(members[path])
        outs, ins = [], []
        for i in members[path]:
            for o in nodes[i].output:
                used = consumers.get(o)  # used outside, a graph output, or unused (a tuple part no one reads)
                if o and (o in graph_outputs or not used or any(c not in inside for c in used)):
                    outs.append((i, o))
            for t in nodes[i].input:
                if t and t not in constant and producer.get(t) not in inside and t not in ins:
                    ins.append(t)
        for kind, name in wanted:
            if kind == "out" and outs:  # the last first; a module that returns a tuple (CvT's stage) has several
                points.append((name, [o for _, o in sorted(outs, reverse=True)], max(outs)[0]))
                if ins:
                    first_inputs[name] = ins[0]
            elif kind == "in" and ins:
                points.append((name, ins[:1], min(inside)))
    attentions = []
    for i, n in enumerate(nodes):
        if n.op_type != "Softmax":
            continue
        out, j = n.output[0], i
        while True:  # eager attention's softmax(dtype=float32).to(dtype): follow the Casts
            nxt = [c for c in consumers.get(out, []) if nodes[c].op_type == "Cast"]
            if len(nxt) != 1:
                break
            j = nxt[0]
            out = nodes[j].output[0]
        attentions.append((out, ".".join(scopes[i]), j))
    return points, attentions, model_type


def _session(onnxruntime, model_bytes: bytes, optimized: bool, save_to: str | None = None):
    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = (onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if optimized else
                                     onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    if save_to:
        opts.optimized_model_filepath = save_to
    try:
        return onnxruntime.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, …)
        raise InputError(f"capture_onnx: ONNX Runtime cannot load the model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:300]})") from None


def _load_model(onnx, path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such ONNX file (export one with torch.onnx.export)")
    try:
        return onnx.load(path), path
    except Exception as e:  # protobuf's DecodeError and friends
        raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:200]})") from None


def capture_onnx(path, pixel_values, like: Trace | None = None, model_type: str | None = None,
                 optimized: bool = False, all_nodes: bool = False) -> Trace:
    """Run an ONNX model in ONNX Runtime on `pixel_values` and record each module's output under its checkpoint name.

    `like`: a reference Trace (e.g. refvit's): its model_type, where its hidden states sit and its output names are
    used (the graph's outputs are paired with the reference's outputs in order when their shapes agree).
    `optimized`: keep ORT's graph fusions; modules whose boundary was fused away are listed in meta["fused"].
    `all_nodes`: also keep every other floating-point node output, under `onnx:<tensor name>` after the named ones
    (Polygraphy's "mark all", for looking inside a module; compare lists them as not in the reference).
    Why so long: export checks, session, run, naming and pairing with the reference form one sequence."""
    onnx, onnxruntime = _require()
    model, path = _load_model(onnx, path)
    if like is not None and model_type is None:
        model_type = like.meta.get("model_type") or None
    x = np.asarray(pixel_values)
    if x.ndim != 4 or x.dtype.kind != "f":
        raise InputError(f"capture_onnx: pixel_values must be a float (B, C, H, W) array, got {x.dtype} {x.shape}")
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise InputError(f"{path}: the graph has {len(inputs)} inputs ({[i.name for i in inputs]}); capture_onnx feeds "
                         "one, pixel_values")
    elem = inputs[0].type.tensor_type.elem_type
    x = x.astype(_FLOAT.get(elem, np.float32), copy=False)
    points, attentions, model_type = module_boundaries(model.graph, model_type)
    fused: dict = {}
    run_model = model
    if optimized:
        with tempfile.TemporaryDirectory() as tmp:
            saved = os.path.join(tmp, "optimized.onnx")
            _session(onnxruntime, model.SerializeToString(), True, saved)
            run_model = onnx.load(saved)
        alive = {o for n in run_model.graph.node for o in n.output} | {i.name for i in run_model.graph.input}
        fused = {name: ts[0] for name, ts, _ in points if not any(t in alive for t in ts)}
        fused.update({f"attentions.{k}": t for k, (t, _, _) in enumerate(attentions) if t not in alive})
        points = [(name, [t for t in ts if t in alive], i) for name, ts, i in points if name not in fused]
    identities = _identity_plan(like, points, fused, model.graph, dict(first_inputs))
    # expose the node outputs we read as graph outputs (Polygraphy's "mark all", limited to module boundaries: with
    # optimizations off the values are the same, and memory stays that of the trace)
    wanted = [t for _, ts, _ in points for t in ts]
    wanted += [t for k, (t, _, _) in enumerate(attentions) if f"attentions.{k}" not in fused]
    wanted += list(identities.values())
    if all_nodes:
        wanted += [o for n in run_model.graph.node if n.op_type not in ("Constant", "Shape") for o in n.output if o]
    existing = [o.name for o in run_model.graph.output]
    exposed = list(dict.fromkeys(existing + wanted))
    del run_model.graph.output[:]
    for name in exposed:
        run_model.graph.output.append(onnx.ValueInfoProto(name=name))
    session = _session(onnxruntime, run_model.SerializeToString(), False)
    try:
        values = dict(zip(exposed, session.run(exposed, {inputs[0].name: x})))
    except Exception as e:
        raise InputError(f"{path}: ONNX Runtime failed to run the model on pixel_values {x.shape} "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    store = {}
    for name, ts, _ in sorted(points, key=lambda p: p[2]):
        if name in store:
            continue
        shape = tuple(like[name].shape) if like is not None and name in like else None
        pick = next((t for t in ts if shape is None or tuple(values[t].shape) == shape), None)
        if pick is not None:  # else the export pruned it (e.g. CvT's last stage map, unused by the classifier)
            store[name] = values[pick]
    maps = [values[t] for k, (t, _, _) in enumerate(attentions) if f"attentions.{k}" not in fused]
    for k, (t, scope, _) in enumerate(attentions):  # CvT records its probabilities as the (elided) dropout's output
        for kind, name in points_for(model_type, scope + ".dropout", False):
            if kind == "out" and t in values:
                store.setdefault(name, values[t])
    for name, t in identities.items():
        if name not in store and tuple(values[t].shape) == tuple(like[name].shape):
            store[name] = values[t]
    identities = [n for n in identities if n in store]
    hidden = _hidden_states(store, like, model_type)
    for n in like.names if like is not None else ():
        if like.kind(n) == "hidden_state" and like.modules.get(n) in fused:
            fused[n] = fused[like.modules[n]]
    outputs = _outputs(existing, values, like)
    from .capture import _versions, arrange

    meta = {"source": "onnxruntime", "model": os.path.abspath(path), "model_type": model_type,
            "architecture": os.path.basename(path), "dtype": str(x.dtype), "backend": "onnxruntime (CPU)",
            "attention_implementation": "ONNX graph", "graph_optimizations": "extended (fusions kept)" if optimized
            else "off", "versions": _versions(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__),
            "input_sha256": sha256_array(x)}
    if fused:
        meta["fused"] = fused
    if identities:
        meta["identity_modules"] = identities
    families_with_maps = ("vit", "deit", "beit", "data2vec-vision")
    trace = arrange(x, store, hidden, maps if model_type in families_with_maps else (), outputs, meta)
    if not all_nodes:
        return trace
    named = {t for _, ts, _ in points for t in ts} | {t for t, _, _ in attentions}
    extra = {f"onnx:{t}": v for t, v in values.items() if t not in named and t not in existing
             and isinstance(v, np.ndarray) and v.dtype.kind == "f"}
    return Trace({**trace.tensors, **extra}, trace.meta, trace.kinds, trace.modules)


def _identity_plan(like: Trace | None, points: list, fused: dict, graph, inputs: dict) -> dict:
    """Modules that emit no node (nn.Identity: BEiT's final layernorm under mean pooling, BiT's norms without
    pre-activation) have no tensor of their own; their output is the input of the module that runs next, or their
    parent's output when they are its last step. For each reference module with no node in its scope:
    {checkpoint name: onnx tensor} (kept only when the shape is the reference's)."""
    if like is None:
        return {}
    scoped = {".".join(scope_of(n.name)) for n in graph.node}
    placed = {p[0] for p in points} | set(fused)
    outputs = {p[0]: p[1][0] for p in points}
    names = [n for n in like.names if like.kind(n) == "module"]
    plan = {}
    for i, name in enumerate(names):
        if name in placed or any(f".{s}.".find(f".{name}.") >= 0 for s in scoped):
            continue
        nxt = next((n for n in names[i + 1:] if not n.startswith(name + ".")), None)
        if nxt is not None and name.startswith(nxt + ".") and nxt in outputs:
            plan[name] = outputs[nxt]   # the parent's last step: the parent's output (BiT's downsample.norm)
        elif nxt is not None and nxt in inputs:
            plan[name] = inputs[nxt]
    return plan


def _hidden_states(store: dict, like: Trace | None, model_type: str) -> list:
    """hidden_states.i: the module output the reference says it is (like.modules), else the transformer families'
    rule (the embeddings' output, then each layer's)."""
    if like is not None:
        found = {}
        for n in like.names:
            if like.kind(n) == "hidden_state" and like.modules.get(n) in store:
                found[int(n.split(".")[1])] = store[like.modules[n]]
        return [found[i] for i in range(len(found))] if sorted(found) == list(range(len(found))) else []
    if model_type not in ("vit", "deit", "beit", "data2vec-vision"):
        return []
    emb = [n for n in store if n.endswith("embeddings") and "." not in n.replace("embeddings", "").strip(".")]
    layers = sorted({int(m[1]) for n in store if (m := re.search(r"encoder\.layer\.(\d+)$", n))})
    if not emb or layers != list(range(len(layers))):
        return []
    prefix = emb[0][: -len("embeddings")]
    return [store[emb[0]]] + [store[f"{prefix}encoder.layer.{i}"] for i in layers]


def _outputs(names: list, values: dict, like: Trace | None) -> dict:
    """The graph's own outputs: under their names when those are output names of the reference (or HF field names),
    else paired with the reference's outputs in order when the shapes agree, else `output.i`."""
    fields = ("logits", "last_hidden_state", "pooler_output", "cls_logits", "distillation_logits", "reconstruction")
    ref_out = [n for n in like.names if like.kind(n) == "output"] if like is not None else []
    out = {}
    positional = (len(ref_out) == len(names) and
                  all(tuple(like[r].shape) == tuple(values[n].shape) for r, n in zip(ref_out, names)))
    for i, n in enumerate(names):
        if n in ref_out or n in fields:
            out[n] = values[n]
        elif positional:
            out[ref_out[i]] = values[n]
        else:
            out[f"output.{i}"] = values[n]
    return out
