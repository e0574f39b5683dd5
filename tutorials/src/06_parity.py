# %% [markdown]
# # Parity testing your own port
#
# You are porting a vision transformer to C, JAX, an accelerator… Its logits differ from PyTorch's by 3e-3. Is that
# a bug or rounding? Which module? This notebook is the recipe refvit itself is tested with:
#
# 1. **capture** the framework model's per-module outputs (forward hooks), under the checkpoint's module names;
# 2. **compare** your port's outputs module by module, in forward order, and report the **first** one that diverges;
# 3. use **float64 as the judge**: a float64 run of the framework tells you how much error float32 rounding alone
#    makes, so a tolerance is a measurement, not a guess.
#
# The model is golden case `deit_teacher` (a small `DeiTForImageClassificationWithTeacher`,
# `transformers/models/deit/modeling_deit.py`); "your port" is refvit, then two deliberately broken versions of it.

# %%
import dataclasses
import importlib.util
import re
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import refvit

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "golden" / "cases").is_dir())
CASE = ROOT / "golden" / "cases" / "deit_teacher"
pixel_values = np.load(CASE / "inputs.npz")["pixel_values"]                  # (B, 3, H, W) float32
recorded = np.load(CASE / "outputs.npz")                                     # written by golden/generate.py
print(pixel_values.shape, "|", len(recorded.files), "recorded tensors, e.g.", recorded.files[8])

# %% [markdown]
# ## 1. Capture the framework's intermediates
#
# A forward hook (`module.register_forward_hook`) sees each module's output. transformers 5 renamed the modules
# inside ViT/DeiT (`deit.layers.0.attention.q_proj`) but checkpoints keep the classic names
# (`deit.encoder.layer.0.attention.attention.query`); refvit and the golden files use the classic names, so the hooks
# translate. This part needs torch and transformers (the `golden` extra); without them we load the same tensors,
# recorded by `golden/generate.py` with the same hooks.

# %%
RENAMES = [(r"\.layers\.(\d+)", r".encoder.layer.\1"), (r"attention\.q_proj$", "attention.attention.query"),
           (r"attention\.k_proj$", "attention.attention.key"), (r"attention\.v_proj$", "attention.attention.value"),
           (r"attention\.o_proj$", "attention.output"), (r"mlp\.activation_fn$", "intermediate")]


def classic(name):
    """transformers-5 module name -> checkpoint module name."""
    for pattern, new in RENAMES:
        name = re.sub(pattern, new, name)
    return name


def capture(model, x):
    """Run a torch model once, returning {checkpoint module name: output as float32 NumPy}."""
    import torch
    store, handles = {}, []
    for name, module in model.named_modules():
        if re.search(r"(embeddings|layernorm\w*|_proj|activation_fn|layers\.\d+|classifier)$", name):
            def hook(mod, args, out, name=classic(name)):
                store[name] = (out[0] if isinstance(out, tuple) else out).detach().numpy()
            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in handles:
        h.remove()
    return store


if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
    with warnings.catch_warnings():                    # tqdm warns about missing notebook widgets on import
        warnings.simplefilter("ignore")
        import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    hf = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(CASE, attn_implementation="eager").eval()
    framework = capture(hf, pixel_values)
    print("captured live from transformers", transformers.__version__)
else:
    framework = {k[len("float32/intermediates/"):]: recorded[k] for k in recorded.files
                 if k.startswith("float32/intermediates/")}
    print("torch not installed: using the tensors golden/generate.py recorded")
# float64 run of the framework (recorded by golden/generate.py: weights and inputs cast to float64)
framework64 = {k[len("float64/intermediates/"):]: recorded[k] for k in recorded.files
               if k.startswith("float64/intermediates/")}
print(len(framework), "modules, e.g.", list(framework)[:4])

# %% [markdown]
# ## 2. Compare module by module
#
# Run the port with every intermediate recorded (`output_intermediates=True` gives them in forward order, under
# the same names) and report, per module, the max-abs error relative to the reference's scale — refvit's float32
# tolerance is `max|ours − ref| ≤ 1e-4 · max(1, max|ref|)`.

# %%
def errors(ours: dict, ref: dict) -> dict:
    """{module: max|ours − ref| / max(1, max|ref|)} for the modules both have, in our forward order."""
    return {k: float(np.abs(ours[k] - ref[k]).max() / max(1.0, np.abs(ref[k]).max())) for k in ours if k in ref}


def first_divergence(err: dict, tol: float):
    return next(((k, e) for k, e in err.items() if e > tol), None)


port = refvit.from_pretrained(CASE, backend="numpy")
ours = port(pixel_values, output_intermediates=True).intermediates
err32 = errors(ours, framework)
for k, e in list(err32.items())[:9]:
    print(f"{e:9.1e}  {k}")
print("...\nworst:", f"{max(err32.values()):.1e}", "| first divergence:", first_divergence(err32, 1e-4))
assert first_divergence(err32, 1e-4) is None

# %% [markdown]
# ## 3. Isolate one module
#
# Errors compound through the network, so the module that *first* exceeds the tolerance is the suspect, and the
# next step is to feed it the *reference* input and check it alone. Here: LayerNorm of layer 0 by hand
# (biased variance, `eps = config.layer_norm_eps`), applied to the framework's own embedding output.

# %%
p = port.params["deit"]["encoder"]["layer"][0]["layernorm_before"]
x = framework["deit.embeddings"]
mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)                 # np.var is biased, as torch
by_hand = (x - mean) / np.sqrt(var + port.config.layer_norm_eps) * p["weight"] + p["bias"]
np.testing.assert_allclose(by_hand, framework["deit.encoder.layer.0.layernorm_before"], rtol=0, atol=1e-5)
print(f"layer 0 layernorm_before from the framework's input: max error "
      f"{np.abs(by_hand - framework['deit.encoder.layer.0.layernorm_before']).max():.1e}")

# %% [markdown]
# ## 4. Two broken ports
#
# Two classic porting bugs, planted by changing the config our port runs with:
#
# * **LayerNorm eps** 1e-5 (PyTorch's `nn.LayerNorm` default) instead of the checkpoint's `layer_norm_eps`;
# * **GELU** with the tanh approximation (`gelu_new`) instead of the exact erf form (`hidden_act="gelu"`).

# %%
def broken(**change):
    """The port, run with one config field changed (the bug)."""
    model = refvit.from_pretrained(CASE, backend="numpy", dtype=change.pop("dtype", "float32"))
    model.config = dataclasses.replace(model.config, **change)
    return model


for label, change in [("eps 1e-5", dict(layer_norm_eps=1e-5)), ("tanh GELU", dict(hidden_act="gelu_new"))]:
    err = errors(broken(**change)(pixel_values, output_intermediates=True).intermediates, framework)
    print(f"{label:10s} float32 vs framework: first divergence {first_divergence(err, 1e-4)}")

# %% [markdown]
# The tanh GELU is caught at its first use, `layer.0.intermediate`. The eps bug is **not** caught by the generic
# float32 tolerance: its effect (about 1e-5 relative here) hides under 1e-4. In float64, where rounding is ~1e-16,
# it is unmistakable:

# %%
def float64_errors(model):
    return errors(model(pixel_values.astype(np.float64), output_intermediates=True).intermediates, framework64)


good64 = float64_errors(refvit.from_pretrained(CASE, backend="numpy", dtype="float64"))
eps64 = float64_errors(broken(layer_norm_eps=1e-5, dtype="float64"))
print(f"correct port, float64: worst {max(good64.values()):.1e} | first divergence",
      first_divergence(good64, 1e-10))
print("eps bug,      float64: first divergence", first_divergence(eps64, 1e-10))
assert first_divergence(good64, 1e-10) is None
assert first_divergence(eps64, 1e-10)[0] == "deit.encoder.layer.0.layernorm_before"

# %% [markdown]
# ## 5. float64 as the judge of float32 error
#
# How large *should* a correct float32 port's error be? Measure it: the framework's own float32 run against its
# float64 run is the rounding floor. A correct port sits at that floor; a bug sits above it.

# %%
names = [k for k in ours if k in framework and k in framework64]
floor = errors({k: framework[k] for k in names}, framework64)     # framework float32 vs framework float64
ours_vs64 = errors(ours, framework64)                              # our float32 vs framework float64
gelu_vs64 = errors(broken(hidden_act="gelu_new")(pixel_values, output_intermediates=True).intermediates, framework64)

fig, ax = plt.subplots(figsize=(10, 3.8))
xs = np.arange(len(names))
ax.semilogy(xs, [floor[k] for k in names], "k-", lw=3, alpha=.3, label="framework float32 (rounding floor)")
ax.semilogy(xs, [ours_vs64[k] for k in names], "C0.-", label="refvit float32")
ax.semilogy(xs, [gelu_vs64[k] for k in names], "C3.-", label="port with tanh GELU")
ax.semilogy(xs, [max(eps64[k], 1e-17) for k in names], "C1.--", label="port with eps 1e-5, in float64")
ax.semilogy(xs, [max(good64[k], 1e-17) for k in names], "C2.-", label="refvit float64")
ax.axhline(1e-4, color="gray", ls=":")
short = [k.replace("deit.encoder.", "").replace("attention.", "att.") for k in names]
ax.set_xticks(xs, short, rotation=75, fontsize=7)
ax.set_ylabel("max|x − framework float64| (rel.)")
ax.legend(fontsize=7, ncol=2)
ax.set_title("error against the framework's float64 run, module by module (forward order)")
plt.show()

ratio = max(ours_vs64.values()) / max(floor.values())
print(f"refvit float32 error / framework float32 error: {ratio:.2f}")
assert ratio < 10  # a correct port rounds like the framework, within a small factor

# with a tolerance measured from the floor (10x the framework's own float32 error, module by module), float32
# catches the eps bug too
eps32 = errors(broken(layer_norm_eps=1e-5)(pixel_values, output_intermediates=True).intermediates, framework64)
print("eps bug, float32, tolerance 10 x floor: first divergence",
      next((k for k in names if eps32[k] > 10 * floor[k]), None))

# %% [markdown]
# **Recipe.** Record the framework's intermediates once (golden files), in float32 *and* float64. Compare your port
# module by module in forward order; the first module over tolerance is the suspect; feed it the reference input to
# confirm. Set tolerances from the measured float32-vs-float64 floor, and run your port in float64 too when it can:
# bugs smaller than float32 rounding (eps, a variance off by C/(C−1) for wide layers, a softmax in the wrong dtype)
# are only visible there. `refvit verify` runs exactly this over every golden case.
