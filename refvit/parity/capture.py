"""Making traces: from refvit, from transformers (forward hooks), and from what other tools already wrote.

Every capture lays the tensors out the same way (`arrange`), so any two traces of one model compare name by name:

    pixel_values                                   step 0: what the model saw (preprocessing bugs show here)
    <module outputs, execution order>              checkpoint names: deit.embeddings, deit.encoder.layer.0.…
      attentions.i                                 just before the module that uses them (…layer.i.attention.attention)
      hidden_states.i                              just after the module that produced them (hidden_states.0 after
                                                   the embeddings, hidden_states.i after layer i-1)
    logits, last_hidden_state, pooler_output, …    the model's outputs (tuples as name.i)
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re

import numpy as np

from refvit.errors import InputError, RefvitError

from .names import record_points
from .trace import Trace, sha256_array, sha256_json

_ATTENTION_MODULE = re.compile(r"\.attention\.attention$")
_INFERABLE = re.compile(r"(^|\.)(layer|layers)\.\d+$|(^|\.)embeddings$")


# ----------------------------------------------------------------------------------------------------------------------
# one layout for every source


def arrange(pixel_values, intermediates: dict, hidden_states=(), attentions=(), outputs: dict | None = None,
            meta: dict | None = None) -> Trace:
    """Build a Trace in execution order from the pieces a forward returns (see the module docstring)."""
    names = list(intermediates)
    after: dict[int, list] = {}   # position in `names` -> [(trace name, array, kind, module)] placed after it
    before: dict[int, list] = {}
    tail: list = []
    for i, h in enumerate(hidden_states or ()):
        h = _numpy(h)
        at = _last_equal(names, intermediates, h)
        (after.setdefault(at, []) if at is not None else tail).append(
            (f"hidden_states.{i}", h, "hidden_state", names[at] if at is not None else None))
    users = [j for j, n in enumerate(names) if _ATTENTION_MODULE.search(n)]
    for i, a in enumerate(attentions or ()):
        at = users[i] if len(users) == len(attentions) else None
        (before.setdefault(at, []) if at is not None else tail).append(
            (f"attentions.{i}", _numpy(a), "attention", names[at] if at is not None else None))
    entries = [("pixel_values", _numpy(pixel_values), "input", None)]
    for j, n in enumerate(names):
        entries += before.get(j, [])
        entries.append((n, _numpy(intermediates[n]), "module", None))
        entries += after.get(j, [])
    entries += tail
    for field, value in (outputs or {}).items():
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            entries += [(f"{field}.{i}", _numpy(v), "output", None) for i, v in enumerate(value)]
        else:
            entries.append((field, _numpy(value), "output", None))
    seen = set()
    entries = [e for e in entries if not (e[0] in seen or seen.add(e[0]))]
    meta = dict(meta or {})
    if hidden_states and "last_hidden_state" in (outputs or {}) and outputs["last_hidden_state"] is not None:
        same = np.array_equal(_numpy(hidden_states[-1]), _numpy(outputs["last_hidden_state"]))
        meta["hidden_states_last"] = ("equals last_hidden_state" if same else
                                      "before the final norm (last_hidden_state is after it)")
    return Trace({e[0]: e[1] for e in entries}, meta, {e[0]: e[2] for e in entries},
                 {e[0]: e[3] for e in entries if e[3] is not None})


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _last_equal(names, intermediates, h):
    """Index of the last intermediate equal to h (same shape and values), or None."""
    found = None
    for j, n in enumerate(names):
        v = intermediates[n]
        if getattr(v, "shape", None) == h.shape and np.array_equal(_numpy(v), h):
            found = j
    return found


def _versions(**extra) -> dict:
    import refvit

    out = {"refvit": refvit.__version__, "numpy": np.__version__, "python": platform.python_version()}
    return {**out, **extra}


# ----------------------------------------------------------------------------------------------------------------------
# refvit


def kernels_of(model):
    """The model instance's kernel namespace (`model.kernels`)."""
    ns = getattr(model, "kernels", None)
    if ns is None or callable(ns):
        raise RefvitError(f"{model!r} has no kernel namespace (model.kernels): pass a refvit model")
    return ns


def _set_kernels(model, ns) -> None:
    """Give one model instance its own kernel namespace; no other model sees it."""
    kernels_of(model)
    model.kernels = ns


def with_kernels(model, **replacements):
    """A copy of `model` whose kernels are its own with some replaced (to plant a bug, or to try a fix):

        base = parity.kernels_of(model)
        bad = parity.with_kernels(model, layer_norm=lambda x, w, b, eps: base.layer_norm(x, w, b, 1e-5))

    The copy shares the weights; the original model is unchanged."""
    import copy
    from types import SimpleNamespace

    base = kernels_of(model)
    unknown = sorted(set(replacements) - set(vars(base)))
    if unknown:
        known = sorted(k for k in vars(base) if k != "name")
        raise InputError(f"with_kernels: no kernel(s) {unknown}; kernels: {known}")
    clone = copy.copy(model)
    _set_kernels(clone, SimpleNamespace(**{**vars(base), **replacements}))
    return clone


def get_param(model, name: str) -> np.ndarray:
    """A parameter of a refvit model by checkpoint name ("bit.embedder.convolution.weight"), as loaded (prepared)."""
    node, last = _param_parent(model.params, name)
    return node[last]


def _param_parent(params, name: str):
    node, parts = params, name.split(".")
    try:
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = int(parts[-1]) if isinstance(node, list) else parts[-1]
        node[last]
    except (KeyError, IndexError, ValueError, TypeError):
        raise InputError(f"the model has no parameter {name!r}") from None
    return node, last


def with_params(model, replacements: dict):
    """A copy of `model` with some parameters replaced, by checkpoint name ("bit.embedder.convolution.weight"),
    e.g. to put back raw weights where refvit prepares them at load time; the original model is unchanged."""
    import copy

    clone = copy.copy(model)
    clone.params = _copy_tree(model.params)
    for name, value in replacements.items():
        node, last = _param_parent(clone.params, name)
        value = np.asarray(value, dtype=node[last].dtype)
        if value.shape != node[last].shape:
            raise InputError(f"with_params: {name} has shape {node[last].shape}, the replacement {value.shape}")
        node[last] = value
    return clone


def _copy_tree(node):
    if isinstance(node, dict):
        return {k: _copy_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy_tree(v) for v in node]
    return node


def _load_array(path: str) -> np.ndarray:
    """pixel_values from a .npy, or the `pixel_values` array of an .npz; a file NumPy cannot read is an InputError."""
    try:
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            if "pixel_values" not in z.files:
                raise InputError(f"{path}: no 'pixel_values' array (has {z.files})")
            return z["pixel_values"]
    except (ValueError, EOFError, OSError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: not a readable NumPy {path[-4:]} file ({type(e).__name__}: {e}); save "
                         "pixel_values with numpy.save") from None


def load_input(source, model_dir=None, processor=None, dtype="float32"):
    """(pixel_values, info) from an array, a .npy/.npz file, or an image file (through the model's processor)."""
    info: dict = {}
    if isinstance(source, np.ndarray) or hasattr(source, "detach"):
        x = _numpy(source)
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InputError(f"{path}: no such input file (give an image, or pixel_values as .npy)")
        info["input"] = os.path.basename(path)
        if path.endswith((".npy", ".npz")):
            x = _load_array(path)
        else:
            from refvit import load_image
            from refvit.processing import ImageProcessor

            proc_dir = os.fspath(processor) if processor is not None else model_dir
            if proc_dir is None:
                raise InputError(f"{path}: an image needs an image processor: pass processor= (a directory with "
                                 "preprocessor_config.json) or give pixel_values as .npy")
            from refvit.processing.timm import is_timm_dir

            config_path = proc_dir if proc_dir.endswith(".json") else os.path.join(proc_dir, "preprocessor_config.json")
            if is_timm_dir(proc_dir):  # timm's layout: the eval transform from config.json's pretrained_cfg
                config_path = os.path.join(proc_dir, "config.json")
            proc_dir = os.path.dirname(config_path) or "."
            if not os.path.isfile(config_path):
                raise InputError(f"{config_path}: not found; an image input needs the model's preprocessor_config.json "
                                 "(or pass --processor DIR, or give pixel_values as .npy)")
            with open(config_path, encoding="utf-8") as f:
                try:
                    info["processor_config_sha256"] = sha256_json(json.load(f))
                except ValueError as e:
                    raise InputError(f"{config_path}: not valid JSON ({e})") from None
            proc = ImageProcessor.from_pretrained(proc_dir)
            info["processor"] = type(proc).__name__
            x = proc(load_image(path), return_tensors="np")["pixel_values"]
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.ndim != 4:
        raise InputError(f"pixel_values must be a float array of shape (B, C, H, W), got "
                         f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
    return x.astype(dtype, copy=False), info


def _hub_origin(path: str) -> dict:
    """Hub id and revision of a directory in the Hugging Face cache (models--org--name/snapshots/<sha>/)."""
    m = re.search(r"models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})", path.replace(os.sep, "/"))
    return {"hub_id": f"{m[1]}/{m[2]}", "revision": m[3]} if m else {}


def capture(model_or_dir, inputs, dtype=None, backend="numba", processor=None, **call) -> Trace:
    """Run refvit once and record every module output, hidden state, attention map and output (a Trace).

    `inputs`: pixel_values (B, C, H, W), a .npy/.npz file, or an image file (preprocessed with the model
    directory's preprocessor_config.json, or `processor`, a directory or JSON file). `call`: other arguments of the
    model call (bool_masked_pos, interpolate_pos_encoding)."""
    import refvit

    if isinstance(model_or_dir, (str, os.PathLike)):
        model_dir = os.fspath(model_or_dir)
        model = refvit.from_pretrained(model_dir, dtype=dtype or "float32", backend=backend)
    else:
        model, model_dir = model_or_dir, getattr(model_or_dir, "source", None) or None
    run_dtype = np.dtype(getattr(model, "dtype", None) or "float32")
    if dtype is not None and np.dtype(dtype) != run_dtype:
        raise InputError(f"capture: the model runs in {run_dtype}, not {dtype} (load it with dtype={dtype!r})")
    x, info = load_input(inputs, model_dir if model_dir and os.path.isdir(model_dir) else None, processor,
                         dtype=run_dtype)
    out = model(x, output_intermediates=True, output_hidden_states=True, output_attentions=True, **call)
    fields = {k: v for k, v in out.items() if k not in ("intermediates", "hidden_states", "attentions")}
    config = getattr(model, "config", None)
    meta = {"source": "refvit", "model": os.path.abspath(model_dir) if model_dir and os.path.isdir(model_dir)
            else (model_dir or ""),
            "architecture": getattr(getattr(model, "architecture", None), "name", None) or type(model).__name__,
            "model_type": getattr(config, "model_type", ""), "dtype": str(run_dtype),
            "backend": getattr(kernels_of(model), "name", None) or str(getattr(model, "backend", "")),
            "attention_implementation": f"refvit (eager formula, softmax in {run_dtype})",
            "versions": _versions(), "input_sha256": sha256_array(x), **info, **_hub_origin(str(model_dir or ""))}
    eps = getattr(config, "layer_norm_eps", None)
    if eps is not None:
        meta["layer_norm_eps"] = eps
    return arrange(x, out.intermediates, out.get("hidden_states") or (), out.get("attentions") or (), fields, meta)


# ----------------------------------------------------------------------------------------------------------------------
# transformers (torch imported inside the functions only)


def eager_same_dtype(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention (`eager_attention_forward`) with the softmax left in the input dtype: eager
    computes it in float32 even in a float64 model, so a float64 reference would be float32-accurate there.
    golden/generate.py registers this same function for its float64 runs.
    Why so many parameters: transformers' attention interface (`eager_attention_forward`) calls it with these."""
    import torch

    if scaling is None:
        scaling = query.size(-1) ** -0.5
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1)  # eager: dtype=torch.float32 here
    return torch.matmul(attn_weights, value).transpose(1, 2).contiguous(), attn_weights


@contextlib.contextmanager
def _float64_eager(model):
    """`eager_same_dtype` registered under a refvit name for the call and removed afterwards; the model's config is
    restored."""
    from transformers import AttentionInterface

    with _attention(model, "refvit_eager_float64"):
        registry = AttentionInterface._global_mapping
        had = registry.get("refvit_eager_float64")
        AttentionInterface.register("refvit_eager_float64", eager_same_dtype)
        try:
            yield
        finally:
            if had is None:
                registry.pop("refvit_eager_float64", None)
            else:
                registry["refvit_eager_float64"] = had


@contextlib.contextmanager
def _attention(model, implementation: str):
    """Set the attention implementation on the model's config and every submodule's (some cache it); restore after."""
    saved = [(m.config, m.config._attn_implementation) for m in model.modules()
             if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")]
    for config, _ in saved:
        config._attn_implementation = implementation
    try:
        yield
    finally:
        for config, value in reversed(saved):
            config._attn_implementation = value


def capture_transformers(model_or_dir, pixel_values, dtype=None, float64_softmax: bool = True, **call) -> Trace:
    """Run a transformers model once with forward hooks on `named_modules` and return a Trace named like refvit's.

    `model_or_dir`: a transformers model (run in its own dtype unless `dtype` is given: then on a copy) or a
    `save_pretrained` directory (loaded with eager attention, in `dtype`, default float32). Attention is eager (sdpa
    returns no maps); in float64 the softmax stays float64 unless `float64_softmax=False` (transformers' eager
    computes it in float32). transformers 5's renamed modules are recorded under checkpoint names (parity.names).
    `call`: other arguments of the model call (bool_masked_pos, interpolate_pos_encoding; arrays become tensors).
    Why so long: load, hook, run, unhook and name form one sequence over one model; its helpers are the named
    steps."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise InputError(f"capture_transformers needs torch and transformers installed ({e})") from None
    pixel_values = _numpy(pixel_values)
    source = ""
    if isinstance(model_or_dir, (str, os.PathLike)):
        source = os.path.abspath(os.fspath(model_or_dir))
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise InputError(f"{source}: no config.json (expected a save_pretrained directory)")
        with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
            arch = (json.load(f).get("architectures") or ["AutoModel"])[0]
        cls = getattr(transformers, arch, None) or transformers.AutoModel
        tdtype = getattr(torch, dtype or "float32")
        model = cls.from_pretrained(source, attn_implementation="eager", dtype=tdtype).eval()
    else:
        model = model_or_dir
        if dtype is not None and model.dtype != getattr(torch, dtype):
            import copy

            model = copy.deepcopy(model).to(getattr(torch, dtype))
        model.eval()
    tdtype = model.dtype
    model_type = model.config.model_type
    store: dict = {}
    handles = []
    for name, module in model.named_modules():
        for kind, classic in record_points(model_type, name):
            if kind == "out":
                def hook(mod, args, out, n=classic):
                    t = out[0] if isinstance(out, (tuple, list)) else out
                    store[n] = _numpy(t).copy()      # bfloat16 widened to float32 (exact)
                handles.append(module.register_forward_hook(hook))
            else:
                def pre(mod, args, n=classic):
                    store[n] = _numpy(args[0]).copy()
                handles.append(module.register_forward_pre_hook(pre))
    exact64 = tdtype == torch.float64 and float64_softmax
    attention = _float64_eager(model) if exact64 else _attention(model, "eager")
    try:
        with attention, torch.no_grad():
            extra = {k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in call.items()}
            out = model(pixel_values=torch.from_numpy(pixel_values).to(tdtype), output_hidden_states=True,
                        output_attentions=True, return_dict=True, **extra)
    finally:
        for h in handles:
            h.remove()
    fields = {k: v for k, v in out.items() if k not in ("hidden_states", "attentions", "loss")}
    meta = {"source": "transformers", "model": source or getattr(model.config, "_name_or_path", ""),
            "architecture": type(model).__name__, "model_type": model_type, "dtype": str(tdtype).replace("torch.", ""),
            "backend": "torch", "attention_implementation": "eager (softmax in float64)" if exact64 else "eager",
            "versions": _versions(torch=torch.__version__, transformers=transformers.__version__),
            "input_sha256": sha256_array(pixel_values.astype(
                str(tdtype).replace("torch.", "").replace("bfloat16", "float32"), copy=False)),
            **_hub_origin(source)}
    eps = getattr(model.config, "layer_norm_eps", None)
    if eps is not None:
        meta["layer_norm_eps"] = eps
    x = pixel_values.astype(meta["dtype"] if meta["dtype"] != "bfloat16" else "float32", copy=False)
    return arrange(x, store, out.get("hidden_states") or (), out.get("attentions") or (), fields, meta)


# ----------------------------------------------------------------------------------------------------------------------
# importing what other tools wrote


def from_hidden_states(hidden_states, pixel_values=None, attentions=(), outputs: dict | None = None,
                       meta: dict | None = None) -> Trace:
    """A Trace from an `output_hidden_states` tuple (torch tensors or arrays), e.g. from your own framework's run:
    `hidden_states.0` … `hidden_states.L` (and `attentions.i`, outputs) — compares against any refvit trace."""
    if not isinstance(hidden_states, (tuple, list)) or not hidden_states:
        raise InputError("from_hidden_states: expected a non-empty tuple of (B, N, C) hidden states")
    tensors = {}
    kinds = {}
    if pixel_values is not None:
        tensors["pixel_values"], kinds["pixel_values"] = _numpy(pixel_values), "input"
    for prefix, kind, values in (("hidden_states", "hidden_state", hidden_states), ("attentions", "attention",
                                                                                   attentions or ())):
        for i, v in enumerate(values):
            tensors[f"{prefix}.{i}"], kinds[f"{prefix}.{i}"] = _numpy(v), kind
    for k, v in (outputs or {}).items():
        if v is not None:
            tensors[k], kinds[k] = _numpy(v), "output"
    return Trace(tensors, {"source": "hidden_states", **(meta or {})}, kinds)


def from_arrays(source, prefix: str = "", meta: dict | None = None) -> Trace:
    """A Trace from a dict of arrays, an .npz file, or a directory of .npy files (name = file name without .npy).

    `prefix` keeps only the names starting with it and strips it; "/" in names becomes "." (so an .npz with
    `hidden_states/3` gives `hidden_states.3`). Order: the file's (an .npz) or by name (a directory) — compare walks
    the reference's order, so a candidate's order does not matter."""
    if isinstance(source, dict):
        arrays, where = dict(source), "arrays"
    else:
        where = os.fspath(source)
        if os.path.isdir(where):
            files = sorted(f for f in os.listdir(where) if f.endswith(".npy"))
            if not files:
                raise InputError(f"{where}: no .npy files in this directory")
            arrays = {f[:-4]: np.load(os.path.join(where, f), allow_pickle=False) for f in files}
        elif where.endswith(".npz") and os.path.isfile(where):
            try:
                with np.load(where, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (ValueError, OSError) as e:
                raise InputError(f"{where}: not a readable .npz file ({e})") from None
        elif where.endswith(".npy") and os.path.isfile(where):
            arrays = {os.path.basename(where)[:-4]: np.load(where, allow_pickle=False)}
        else:
            raise InputError(f"{where}: no such .npz/.npy file or directory")
    tensors = {k[len(prefix):].replace("/", "."): v for k, v in arrays.items() if k.startswith(prefix)}
    if not tensors:
        raise InputError(f"{where}: no arrays" + (f" whose name starts with {prefix!r}" if prefix else ""))
    kinds = {n: ("input" if n == "pixel_values" else "hidden_state" if n.startswith("hidden_states.") else
                 "attention" if n.startswith("attentions.") else "tensor") for n in tensors}
    return Trace(tensors, {"source": "arrays", "path": str(where), **(meta or {})}, kinds)


def from_golden(case_dir, dtype: str = "float32") -> Trace:
    """The framework's tensors of a golden case (golden/cases/NAME: inputs.npz + outputs.npz), laid out like a
    refvit trace (dtype float32 or float64: the golden float64 run keeps its softmax in float64)."""
    case_dir = os.fspath(case_dir)
    paths = [os.path.join(case_dir, f) for f in ("inputs.npz", "outputs.npz", "meta.json")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise InputError(f"{case_dir}: not a golden case directory (missing {missing})")
    with open(paths[2], encoding="utf-8") as f:
        info = json.load(f)
    with np.load(paths[0]) as z:
        x = z["pixel_values"].astype(dtype)
    with np.load(paths[1]) as z:
        arrays = {k[len(dtype) + 1:]: z[k] for k in z.files if k.startswith(dtype + "/")}
    if not arrays:
        raise InputError(f"{paths[1]}: no {dtype} tensors")
    inter = {k[len("intermediates/"):]: v for k, v in arrays.items() if k.startswith("intermediates/")}

    def tuple_of(field):
        idx = sorted(int(k.split("/")[1]) for k in arrays if k.startswith(field + "/"))
        return [arrays[f"{field}/{i}"] for i in idx], idx

    hidden, hidx = tuple_of("hidden_states")
    attn, aidx = tuple_of("attentions")
    outputs: dict = {}
    for k, v in arrays.items():
        field, _, i = k.partition("/")
        if field in ("intermediates", "hidden_states", "attentions"):
            continue
        outputs[k.replace("/", ".")] = v
    complete = hidx == list(range(len(hidx))) and aidx == list(range(len(aidx)))
    model_type = ""
    if os.path.isfile(os.path.join(case_dir, "config.json")):
        with open(os.path.join(case_dir, "config.json"), encoding="utf-8") as f:
            model_type = json.load(f).get("model_type", "")
    meta = {"source": "golden", "model": os.path.abspath(case_dir), "architecture": info.get("architecture", ""),
            "model_type": model_type,
            "dtype": dtype, "backend": "torch", "attention_implementation": "eager" if dtype == "float32" else
            "eager (softmax in float64)", "versions": info.get("versions", {}), "input_sha256": sha256_array(x)}
    if complete:
        return arrange(x, inter, hidden, attn, outputs, meta)
    trace = arrange(x, inter, (), (), outputs, meta)  # some maps left out (real-size cases): keep their indices
    extra = {f"hidden_states.{i}": v for i, v in zip(hidx, hidden)} | {f"attentions.{i}": v for i, v in zip(aidx, attn)}
    kinds = {**trace.kinds, **{k: ("hidden_state" if k.startswith("h") else "attention") for k in extra}}
    return Trace({**trace.tensors, **extra}, trace.meta, kinds, trace.modules)


def from_debugger(path, model_type: str | None = None) -> Trace:
    """A Trace from transformers' `model_addition_debugger_context(model, debug_path, use_repr=False)` output:
    `<Class>_debug_tree_FULL_TENSORS.json` (the call tree) and one safetensors file per tensor beside it.

    Named like refvit's traces (`model_type`, default: guessed from the names): the leaf modules' outputs, and
    the inputs of modules whose input is a classic checkpoint module's output (o_proj's input = the classic
    self-attention output). The debugger keeps outputs at the leaves only, so a transformer layer's output (and the
    embeddings') is taken from the input of the next module called, when the shapes say it is that module's input.
    The model's outputs are pruned by the debugger too; layers it pruned (do_prune_layers=True keeps the first and
    last) are absent: compare reports them as missing.
    Why so long: one walk over the debugger's call tree, each kind of node handled where it is met."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith("_debug_tree_FULL_TENSORS.json"))
        if not found:
            raise InputError(f"{path}: no *_debug_tree_FULL_TENSORS.json (write it with transformers' "
                             "model_addition_debugger_context(model, debug_path=DIR, use_repr=False))")
        path = os.path.join(path, found[0])
    base = os.path.dirname(path)
    try:
        with open(path, encoding="utf-8") as f:
            tree = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read the debugger's JSON tree ({e})") from None
    root = tree.get("module_path", "")

    def tensor(node, where):
        if isinstance(node, list):
            node = node[0] if node else None
        if isinstance(node, dict) and "args" in node:
            node = node["args"]
            node = node[0] if isinstance(node, list) and node else node
        if not isinstance(node, dict) or not isinstance(node.get("value"), str):
            if isinstance(node, dict) and isinstance(node.get("value"), list):
                raise InputError(f"{path}: {where} holds a repr, not a tensor: run the debugger with use_repr=False")
            return None
        from refvit.checkpoint import read_safetensors

        data = read_safetensors(os.path.join(base, node["value"]), mmap=False)
        return np.asarray(data["data"]) if "data" in data else None

    calls: list = []  # (module name, node) in call order (pre-order: a parent is called before its children)

    def walk(node):
        for child in node.get("children", []):
            name = child.get("module_path", "")
            calls.append((name[len(root) + 1:] if name.startswith(root + ".") else name, child))
            walk(child)

    walk(tree)
    if model_type is None:
        model_type = _guess_model_type([n for n, _ in calls])
    position = {id(node): i for i, (_, node) in enumerate(calls)}
    store: dict = {}

    def output_of(name, node):
        value = tensor(node.get("outputs"), name)
        if value is not None or not _INFERABLE.search(name):
            return value
        # the debugger keeps outputs at the leaves only: a layer's (or the embeddings') output is the input of the
        # next module called outside it, when that has the layer's input shape (transformer layers keep it)
        own = tensor(node.get("inputs"), name)
        nxt = next((nd for n, nd in calls[position[id(node)] + 1:] if not n.startswith(name + ".")), None)
        after = None if nxt is None else tensor(nxt.get("inputs"), name)
        if after is None:
            return None
        ok = after.ndim == 3 if name.endswith("embeddings") else (own is not None and after.shape == own.shape)
        return after if ok else None

    def emit(name, node):  # execution order: a module's input, its children's outputs, then its own output
        points = record_points(model_type, name)
        for kind, classic in points:
            if kind == "in" and (v := tensor(node.get("inputs"), name)) is not None:
                store[classic] = v
        for child in node.get("children", []):
            emit(calls[position[id(child)]][0], child)
        for kind, classic in points:
            if kind == "out" and (v := output_of(name, node)) is not None:
                store[classic] = v

    for child in tree.get("children", []):
        emit(calls[position[id(child)]][0], child)
    inputs = tree.get("inputs") or {}
    x = tensor((inputs.get("kwargs") or {}).get("pixel_values"), "pixel_values") if isinstance(inputs, dict) else None
    if x is None:
        x = tensor(inputs, "inputs")
    outs = tree.get("outputs") or {}
    fields = {}
    if isinstance(outs, dict):
        for k, v in outs.items():
            if k in ("hidden_states", "attentions"):
                continue
            value = tensor(v, k)
            if value is not None:
                fields[k] = value
    meta = {"source": "transformers debugger", "path": path, "architecture": root, "model_type": model_type}
    if x is None:
        raise InputError(f"{path}: the tree has no top-level pixel_values input")
    return arrange(x, store, (), (), fields, meta)


def _guess_model_type(names: list[str]) -> str:
    for n in names:
        head = n.split(".")[0]
        if head in ("vit", "deit", "beit", "cvt", "bit"):
            return head
        if head == "data2vec_vision":
            return "data2vec-vision"
    raise InputError("cannot tell the model family from the debugger's module names; pass model_type=")


# ----------------------------------------------------------------------------------------------------------------------
# one entry point for the CLI


def load(path, dtype: str | None = None) -> Trace:
    """Open anything compare takes: a trace (.safetensors), a golden case directory, transformers' debugger output
    (a directory or its *_FULL_TENSORS.json), an .npz file, one .npy file, or a directory of .npy files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        entries = os.listdir(path)
        if {"inputs.npz", "outputs.npz", "meta.json"} <= set(entries):
            return from_golden(path, dtype or "float32")
        if any(f.endswith("_debug_tree_FULL_TENSORS.json") for f in entries):
            return from_debugger(path)
        return from_arrays(path)
    if path.endswith("_FULL_TENSORS.json"):
        return from_debugger(path)
    if path.endswith((".npz", ".npy")):
        return from_arrays(path)
    return Trace.load(path)
