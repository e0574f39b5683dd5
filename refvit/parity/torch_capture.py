"""Capture a trace from any torch module (timm, a user's own) with forward hooks, under checkpoint names.

    trace = parity.capture_torch(timm_model, pixel_values, names="timm-vit")     # a preset (parity.presets)
    trace = parity.capture_torch(my_model, pixel_values, names="names.json")     # a mapping file (compare's format)
    raw = parity.capture_torch(my_model, pixel_values)                           # every module under its own path

Recorded: each hooked module's output (a tuple's first tensor) under its module path, the first input of a module
under `PATH:in`, and the model's own output (its logits when it returns an object with them) under `output` (then
renamed through the mapping). Without `names` every
module's output and every leaf module's input are kept (compare them later with `--map PRESET_OR_FILE`). The run is
under torch.no_grad() in eval mode; the module's training flag, the attributes a preset sets (timm's `fused_attn`)
and its hooks are restored afterwards. torch is imported inside the function only.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from refvit.errors import InputError

from . import presets
from .compare import _pattern, apply_mapping, check_mapping, load_mapping
from .trace import Trace, sha256_array


EAGER = {"fused_attn": False}  # timm's switch to eager attention, so attn_drop sees the maps (restored after)


def _mapping_of(names, module_names, like, base):
    """(mapping or None, preset spec or None, description) for names = None | preset | dict | JSON path."""
    if names is None:
        return None, None, "module paths"
    if isinstance(names, dict):
        return check_mapping(names, "names"), None, "mapping"
    text = os.fspath(names)
    if text in presets.PRESETS:
        spec = presets.PRESETS[text]
        return presets.resolve(text, module_names, like.names if like is not None else None, base), spec, text
    if os.path.isfile(text):
        return load_mapping(text), None, os.path.basename(text)
    raise InputError(f"names={text!r}: not a preset ({', '.join(presets.names())}) or a mapping file")


def _to_numpy(t):
    import torch

    if isinstance(t, (tuple, list)):
        t = next((x for x in t if isinstance(x, torch.Tensor)), None)
    if not isinstance(t, torch.Tensor):
        return None
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()


@contextlib.contextmanager
def _attributes(module, settings: dict):
    """Set attributes on every submodule that has them; put the old values back afterwards."""
    saved = []
    for m in module.modules():
        for k, v in settings.items():
            if hasattr(m, k):
                saved.append((m, k, getattr(m, k)))
                setattr(m, k, v)
    try:
        yield
    finally:
        for m, k, v in reversed(saved):
            setattr(m, k, v)


def capture_torch(module, pixel_values, names=None, like: Trace | None = None, base: str | None = None) -> Trace:
    """Run a torch module once on `pixel_values` and record its modules' outputs, renamed to checkpoint names.

    `names`: a preset ("timm-vit", "timm-beit", "timm-resnetv2", "cvt-original"), a mapping dict or JSON file (compare's
    format; candidate names are module paths, `PATH:in` a module's input, `output` the model's output), or None (every
    module under its own path). `like`: a reference trace whose names fix the base prefix (`deit.` …) and dtype;
    `base`: that prefix given directly.
    Why so long: naming, hooking, running and unhooking form one sequence over one module."""
    try:
        import torch
    except ImportError:
        raise InputError("capture_torch needs torch (pip install torch)") from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"capture_torch: expected a torch.nn.Module, got {type(module).__name__}")
    x = np.asarray(pixel_values)
    if x.ndim != 4 or x.dtype.kind != "f":
        raise InputError(f"capture_torch: pixel_values must be a float (B, C, H, W) array, got {x.dtype} {x.shape}")
    modules = dict(module.named_modules())
    mapping, spec, described = _mapping_of(names, list(modules), like, base)
    leaves = {n for n, m in modules.items() if not any(True for _ in m.children())}
    if mapping is None:
        outs, ins = set(modules), leaves
    else:
        patterns = [(_pattern(e["candidate"].removesuffix(":in")), e["candidate"].endswith(":in"))
                    for e in mapping.get("tensors", [])]
        outs = {n for n in modules if any(not is_in and rx.match(n) for rx, is_in in patterns)}
        ins = {n for n in modules if any(is_in and rx.match(n) for rx, is_in in patterns)}
    store: dict = {}
    handles = []
    for name, m in modules.items():
        if name in ins:
            def pre(mod, args, n=name):
                v = _to_numpy(args[0]) if args else None
                if v is not None:
                    store.setdefault(f"{n}:in", v)
            handles.append(m.register_forward_pre_hook(pre))
        if name in outs and name:
            def hook(mod, args, out, n=name):
                v = _to_numpy(out)
                if v is not None:
                    store.setdefault(n, v)   # a module called twice keeps its first call
            handles.append(m.register_forward_hook(hook))
    param = next(module.parameters(), None)
    tdtype = param.dtype if param is not None else torch.float32
    was_training = module.training
    try:
        module.eval()
        with _attributes(module, (spec or {}).get("setup", EAGER)), torch.no_grad():
            out = module(torch.from_numpy(np.ascontiguousarray(x)).to(tdtype))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    if hasattr(out, "logits"):
        out = out.logits
    value = _to_numpy(out)
    if value is not None:
        store["output"] = value
    x_used = x.astype(str(tdtype).replace("torch.", ""), copy=False)
    raw = Trace({"pixel_values": x_used, **store}, kinds={"pixel_values": "input"})
    tensors = apply_mapping(raw, mapping)[0] if mapping is not None else dict(raw.items())
    kinds = {n: ("input" if n == "pixel_values" else "hidden_state" if n.startswith("hidden_states.") else
                 "attention" if n.startswith("attentions.") else
                 "output" if n in ("logits", "cls_logits", "distillation_logits", "output") else "module")
             for n in tensors}
    meta = {"source": "torch", "architecture": type(module).__name__, "names": described,
            "dtype": str(tdtype).replace("torch.", ""), "backend": "torch", "input_sha256": sha256_array(x_used),
            "versions": {"torch": torch.__version__}}
    if spec is not None:
        meta["names_source"] = spec["source"]
    if mapping is not None and mapping.get("ignore"):
        meta["not_recorded"] = mapping["ignore"]
    return Trace(tensors, meta, kinds)
