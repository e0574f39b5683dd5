# %% [markdown]
# # Parity testing your own port
#
# You are porting a vision transformer to C, JAX, an accelerator… Its logits differ from PyTorch's by 3e-4. Is that
# a bug or rounding? Which module? `refvit.parity` (and the `refvit trace` / `refvit compare` commands, the
# porting guide in docs/) answers with the recipe refvit itself is tested with:
#
# 1. **trace** a reference run: every module's output under the checkpoint's module names, in execution order,
#    `pixel_values` first;
# 2. **compare** your port's tensors in that order and report the **first** one that diverges, and whether its block
#    introduced the error or inherited it;
# 3. use **float64 as the judge**: its tolerance (1e-10) is far tighter than float32's (1e-4), so a small bug that
#    hides under the float32 tolerance stands out there.
#
# The model is golden case `deit_teacher` (a small `DeiTForImageClassificationWithTeacher`,
# `transformers/models/deit/modeling_deit.py`); "your port" is refvit, then broken copies of it, then a small NumPy
# port written from scratch (`tutorials/port/vit_port.py`) with one planted bug.

# %%
import importlib.util
import math
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import refvit
from refvit import parity

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "golden" / "cases").is_dir())
CASE = ROOT / "golden" / "cases" / "deit_teacher"
pixel_values = np.load(CASE / "inputs.npz")["pixel_values"]                  # (B, 3, H, W) float32
print(pixel_values.shape)

# %% [markdown]
# ## 1. A trace of the framework
#
# `parity.capture_transformers` runs the transformers model once with forward hooks on `named_modules` (eager
# attention, so the attention maps exist) and names every output after the checkpoint's modules: transformers 5
# renamed DeiT's internals (`deit.layers.0.attention.q_proj`), checkpoints and refvit keep the classic names
# (`deit.encoder.layer.0.attention.attention.query`). It needs torch and transformers; without them we read the same
# tensors from the golden files, which `golden/generate.py` recorded with the same hooks.

# %%
if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
    with warnings.catch_warnings():                    # tqdm warns about missing notebook widgets on import
        warnings.simplefilter("ignore")
        import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    framework = parity.capture_transformers(CASE, pixel_values)
    framework64 = parity.capture_transformers(CASE, pixel_values, dtype="float64")  # softmax kept in float64
    print("captured live from transformers", transformers.__version__)
else:
    framework, framework64 = parity.from_golden(CASE, "float32"), parity.from_golden(CASE, "float64")
    print("torch not installed: the tensors golden/generate.py recorded")
print(framework)
for name in framework.names[:10]:
    print(f"  {framework.kind(name):13s}{name:50s}{framework[name].shape}")
print("  ...", framework.names[-3:])
print({k: framework.meta[k] for k in ("architecture", "dtype", "attention_implementation")})

# %% [markdown]
# The trace is a plain safetensors file: `framework.save("ref.safetensors")`, `parity.Trace.load(...)`, or
# `refvit trace MODEL IMAGE --out ref.safetensors [--framework transformers]` on the command line.
#
# ## 2. Compare a port: refvit itself
#
# `parity.capture` records refvit's run the same way (`model(x, output_intermediates=True, output_hidden_states=True,
# output_attentions=True)`). The default tolerance is refvit's golden one, `max|Δ| ≤ 1e-4 · max(1, max|ref|)` in
# float32 and `1e-10 · max(1, max|ref|)` when both sides are float64.

# %%
port = refvit.from_pretrained(CASE, backend="numpy")
ours = parity.capture(port, pixel_values)
result = parity.compare(framework, ours)
lines = parity.format_report(result).splitlines()
print("\n".join(lines[:16] + ["   ..."] + lines[-3:]))
assert result.ok

# %% [markdown]
# ## 3. Broken ports: three classic bugs
#
# We plant each bug in a copy of the model by replacing one function of its kernel namespace
# (`parity.with_kernels`: the original model is untouched):
#
# * **LayerNorm eps** 1e-5 (PyTorch's `nn.LayerNorm` default) instead of the checkpoint's `layer_norm_eps` = 1e-6;
# * **GELU** with the tanh approximation instead of the exact erf form (`hidden_act="gelu"`);
# * **q and k swapped** in the attention scores.

# %%
def tanh_gelu(x):
    return (0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))).astype(x.dtype)


def broken(bug, dtype="float32"):
    model = refvit.from_pretrained(CASE, backend="numpy", dtype=dtype)
    K = parity.kernels_of(model)
    if bug == "eps":
        return parity.with_kernels(model, layer_norm=lambda x, w, b, eps: K.layer_norm(x, w, b, 1e-5))
    if bug == "gelu":
        return parity.with_kernels(model, gelu=tanh_gelu, bias_gelu=lambda x, bias, out=None: tanh_gelu(x + bias))
    if bug == "qk":
        return parity.with_kernels(model, attention=lambda q, k, v, heads, scale, bias=None, need_probs=False:
                                   K.attention(k, q, v, heads, scale, bias=bias, need_probs=need_probs))


found = {}
for bug in ("eps", "gelu", "qk"):
    for dtype, reference in (("float32", framework), ("float64", framework64)):
        r = parity.compare(reference, parity.capture(broken(bug, dtype), pixel_values.astype(dtype)))
        first = r.first_divergence
        found[bug, dtype] = first.name if first else None
        where = f"{first.name} ({r.block_of(first.name).verdict} in {r.block_of(first.name).name})" if first else "-"
        print(f"{bug:5s} {dtype}: first divergence {where}")
assert found["gelu", "float32"] == found["gelu", "float64"] == "deit.encoder.layer.0.intermediate"
assert found["qk", "float32"] == "attentions.0"          # the attention map, just before layer 0's attention output
assert found["eps", "float32"] is None                   # hidden under float32's tolerance...
assert found["eps", "float64"] == "deit.encoder.layer.0.layernorm_before"   # ...plain in float64

# %% [markdown]
# The tanh GELU and the q/k swap are caught at their first use. The eps bug is **not** caught by the float32
# tolerance: its effect (about 1e-5 relative here, ≈ Δeps/(2·var)) is a hundred times float32 rounding (~6e-8) but
# still under the 1e-4 tolerance. In float64, held to 1e-10, it is the first thing that differs. A correct float64 port matches the framework's float64 run to ~1e-15.
#
# ## 4. A port written from scratch
#
# `tutorials/port/vit_port.py` is a ~100-line NumPy `ViTForImageClassification` written the way a porter would: its
# own names (`blocks.0.attn.qkv`, timm style), q/k/v fused into one matrix, attention context kept as (B, H, N, D).
# `tutorials/port/names.json` maps its names to the checkpoint's (a `split` for the fused qkv, a `transpose` +
# `reshape` for the per-head context). Here on the trained digits ViT and a real digit:

# %%
spec = importlib.util.spec_from_file_location("vit_port", ROOT / "tutorials" / "port" / "vit_port.py")
vit_port = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vit_port)
DIGITS = ROOT / "golden" / "models" / "digits-vit"
reference = parity.capture(DIGITS, ROOT / "tutorials" / "port" / "digit.png", backend="numpy")  # its processor
mapping = parity.load_mapping(ROOT / "tutorials" / "port" / "names.json")


def run_port():
    cfg, weights = vit_port.load(DIGITS)
    record = {"pixel_values": reference["pixel_values"]}       # the same input: step 0 of the reference
    vit_port.forward(cfg, weights, record["pixel_values"], record)
    return parity.from_arrays(record)


port_result = parity.compare(reference, run_port(), mapping=mapping)
report = parity.format_report(port_result)
print(report[report.index("FIRST DIVERGENCE"):])
assert port_result.first_divergence.name == "vit.encoder.layer.0.intermediate"
print("logits:", [r.status for r in port_result.rows if r.name == "logits"])

# %% [markdown]
# The logits pass (a 3-logit check at 1e-3, as conversion scripts do, would not see this bug), but
# `vit.encoder.layer.0.intermediate` — transformers' `ViTIntermediate`: `dense` then the activation — is the first
# tensor off, and the one before it (`layernorm_after`) is fine. The port's `gelu` is the tanh approximation (JAX's
# `jax.nn.gelu` default). The fix, then the same comparison:

# %%
from scipy.special import erf  # noqa: E402

buggy_gelu = vit_port.gelu
vit_port.gelu = lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))
fixed_result = parity.compare(reference, run_port(), mapping=mapping)
vit_port.gelu = buggy_gelu
print(parity.format_report(fixed_result).splitlines()[-1])
assert fixed_result.ok

# %% [markdown]
# ## 5. Where the error lives, tensor by tensor
#
# NMSE (Σ(cand − ref)² / Σref²) along the execution order: a correct float32 port sits at float32 rounding
# (~1e-14), a correct float64 one near 1e-30; a bug jumps out at its module and stays up downstream.

# %%
def nmse(result):
    return {r.name: max(r.nmse, 1e-34) for r in result.rows if r.nmse is not None}


curves = {
    "refvit float32": nmse(result),
    "refvit float64": nmse(parity.compare(framework64, parity.capture(refvit.from_pretrained(
        CASE, backend="numpy", dtype="float64"), pixel_values.astype("float64")))),
    "tanh GELU, float32": nmse(parity.compare(framework, parity.capture(broken("gelu"), pixel_values))),
    "eps 1e-5, float32": nmse(parity.compare(framework, parity.capture(broken("eps"), pixel_values))),
    "eps 1e-5, float64": nmse(parity.compare(framework64, parity.capture(broken("eps", "float64"),
                                                                          pixel_values.astype("float64")))),
}
names = [n for n in framework.names if all(n in c for c in curves.values())]
fig, ax = plt.subplots(figsize=(10, 3.8))
for (label, curve), style in zip(curves.items(), ["C0.-", "C2.-", "C3.-", "C1.:", "C1.--"]):
    ax.semilogy(range(len(names)), [curve[n] for n in names], style, label=label)
for limit, band in ((1e-24, "ceiling asserted for float64"), (1e-10, "ceiling asserted for float32")):
    ax.axhline(limit, color="gray", ls=":", lw=0.8)
    ax.text(len(names) - 1, limit * 3, band, ha="right", fontsize=7, color="gray")
short = [n.replace("deit.encoder.", "").replace("attention.", "att.") for n in names]
ax.set_xticks(range(len(names)), short, rotation=75, fontsize=7)
ax.set_ylabel("NMSE vs the framework")
ax.legend(fontsize=7, ncol=3)
ax.set_title("error against the framework, tensor by tensor (execution order)")
plt.show()
assert max(curves["refvit float32"].values()) < 1e-10 and max(curves["refvit float64"].values()) < 1e-24

# %% [markdown]
# The dotted lines are the ceilings this notebook asserts for a correct port (the cell's last line), not rounding
# levels: float32 rounding sits near 1e-14 here, float64's near 1e-30.
#
# ## 6. The report
#
# `refvit compare REF PORT --map names.json --report report.html --plot error.png` writes the same comparison as one
# self-contained HTML file (charts inline, no script, nothing fetched) and the error-against-depth figure as a PNG.
# The report also names the likely cause of the first divergence — here the tanh GELU of section 4, recognised
# from the error's shape alone: it is exactly tanh-GELU(u) − erf-GELU(u) of the pre-activation u.

# %%
import re  # noqa: E402
import tempfile  # noqa: E402

from IPython.display import Image, display  # noqa: E402

out = Path(tempfile.mkdtemp())
parity.write_html(port_result, out / "report.html")
parity.write_plot(port_result, out / "error.png")
page = (out / "report.html").read_text(encoding="utf-8")
fetched = re.findall(r'(?:src|href)="(?!data:)', page)
print(f"report.html: {len(page) // 1024} KiB; scripts: {page.count('<script')}, files it fetches: {len(fetched)}")
print("LIKELY CAUSE:", port_result.likely_cause.cause)
display(Image(filename=str(out / "error.png")))
assert "tanh" in port_result.likely_cause.cause

# %% [markdown]
# ## 7. Other runtimes: ONNX Runtime, timm
#
# The candidate need not be a NumPy port. `parity.capture_onnx` runs an ONNX export in ONNX Runtime with every
# module boundary exposed and named after the checkpoint (`refvit capture onnx model.onnx --like ref.safetensors
# --out cand.safetensors`); with `optimized=True` ORT's fusions stay and the boundaries they erased are FUSED rows.
# Exporting needs torch; without it the cell says so.

# %%
if importlib.util.find_spec("torch") and importlib.util.find_spec("onnxruntime"):
    import torch

    with warnings.catch_warnings():  # the exporter's tracer warnings
        warnings.simplefilter("ignore")
        import transformers

        transformers.logging.set_verbosity_error()
        hf = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(CASE, attn_implementation="eager")
        torch.onnx.export(hf.eval(), (torch.from_numpy(pixel_values),), str(out / "deit.onnx"), dynamo=False,
                          opset_version=17, input_names=["pixel_values"])
    onnx_result = parity.compare(framework, parity.capture_onnx(out / "deit.onnx", pixel_values, like=framework))
    print("ONNX Runtime, graph optimizations off:", parity.format_report(onnx_result).splitlines()[-2])
    fused = parity.compare(framework, parity.capture_onnx(out / "deit.onnx", pixel_values, like=framework,
                                                           optimized=True))
    print("ONNX Runtime, fusions kept:", parity.format_report(fused).splitlines()[-2])
    print("fused away:", [r.name for r in fused.rows if r.status == "FUSED"][:5], "…")
    assert onnx_result.ok and fused.ok
else:
    print("torch or onnxruntime not installed: export the model with torch.onnx.export elsewhere, then "
          "`refvit capture onnx model.onnx --like ref.safetensors --out cand.safetensors`")

# %% [markdown]
# For a torch model — timm's, or your own — `parity.capture_torch(module, pixel_values, names="timm-vit")` records
# its modules through forward hooks and renames them with a preset (`timm-vit`, `timm-beit`, `timm-resnetv2`,
# `cvt-original`, each following transformers' conversion script for that model) or your mapping. What the
# `timm-vit` preset makes of a few timm module names, for a distilled DeiT:

# %%
mapping = parity.presets.resolve("timm-vit", ["head_dist"], reference_names=framework.names)
for entry in mapping["tensors"][2:7]:
    print(f"{entry['candidate']:28s} -> {entry.get('reference') or entry['split']['into']}")

# %% [markdown]
# **Recipe.** Trace the framework once, in float32 *and* float64 (`refvit trace MODEL IMAGE --framework
# transformers [--dtype float64]`, or refvit's own trace, which matches it). Save your port's activations on the
# trace's own `pixel_values`, write a mapping for the names that differ, and run `refvit compare REF PORT --map
# names.json`: the first NOT OK tensor is the suspect, and its block says whether it introduced the error. Run your
# port in float64 too when it can: bugs whose effect is above float32 rounding but under the float32 tolerance (a
# small eps change, a softmax in the wrong dtype) are caught only there. (A variance off by C/(C−1) is not that
# small: ~1/(2C), 6.5e-4 at C = 768, fails float32's 1e-4 too.) `refvit verify` runs the same comparison over every golden case.
