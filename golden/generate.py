"""Write the golden cases: run transformers (torch, CPU) on seeded weights and record every output tensor.

This is the only writer of golden data (docs/DESIGN.md §7). It needs the `golden` extra:
    pip install -e ".[golden]"          # torch==2.13.0 (CPU) + transformers==5.23.0
    python golden/generate.py           # (re)write golden/cases/ and golden/processing/
    python golden/generate.py --check   # regenerate into a temp dir, compare with what is committed
    python golden/generate.py --timm [--check]   # golden/timm/ only, written by timm (the timm venv's python:
                                                 # golden/timm_cases.py, docs/guide/timm.md)
    python golden/generate.py --processing   # only golden/processing/, for the installed Pillow: run under another
                                             # Pillow X.Y it writes golden/processing/<case>/pillow-X.Y/ (see
                                             # golden/processing_cases.py); --check compares that Pillow's files only

A case directory holds:
    config.json          as save_pretrained writes it
    model.safetensors    as save_pretrained writes it (small cases only; real-size cases rebuild weights from the seed
                         with refvit.synthetic.random_state_dict, which needs only NumPy)
    inputs.npz           pixel_values (float32) and bool_masked_pos when used
    outputs.npz          "<dtype>/<field>" for every output (tuples expanded: "float32/hidden_states/3"), and
                         "<dtype>/intermediates/<checkpoint-name path>" for module outputs (small cases)
    meta.json            versions, seed, call arguments, command, attention entropy, what was recorded

Framework notes recorded here (see docs/golden.md):
- transformers 5 defaults to sdpa attention, which returns no attention maps: both runs use the eager implementation.
- transformers' eager attention computes softmax in float32 even for a float64 model (`softmax(..., dtype=float32)`).
  The float64 run registers an attention function identical to eager except that the softmax stays in the input
  dtype, so the float64 reference is float64 end to end (otherwise no float64 port could match it to 1e-10).
- transformers 5 renamed internal modules (layers.N.attention.q_proj …) but saves the classic names; intermediates
  are recorded under the classic checkpoint names (`deit.encoder.layer.3.attention.output`) via the map below.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))  # run from a checkout: import refvit (synthetic weights)
sys.path.insert(1, str(ROOT))         # and the case modules beside this file

from refvit import synthetic  # noqa: E402
from refvit.checkpoint import read_safetensors, read_torch_bin, write_safetensors  # noqa: E402

TRANSFORMERS_VERSION = "5.23.0"
TORCH_VERSION = "2.13.0"


FAMILIES = ["cases_vit", "cases_cvt", "cases_bit", "cases_beit", "cases_data2vec_vision"]  # golden/cases_<family>.py modules: each has CASES and record_points (see cases_vit.py)


def family_modules():
    import importlib

    return [importlib.import_module(name) for name in FAMILIES]


def all_cases() -> dict:
    """case name -> (family module, case tuple)"""
    out = {}
    for module in family_modules():
        for name, case in module.CASES.items():
            assert name not in out, f"duplicate golden case name {name}"
            out[name] = (module, case)
    return out


# Real-size cases record logits, every hidden state and the attention maps of the first and last layer only:
# all 12 layers' maps in two dtypes would add ~70 MB per DeiT-B case to the repository.
REAL_SIZE_ATTENTION_LAYERS = (0, -1)


def case_seed(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2 ** 31)


def attach_hooks(model, store: dict, family):
    """Record module outputs (forward hooks) and inputs (pre-hooks) under checkpoint names (family.record_points)."""
    handles = []
    for name, module in model.named_modules():
        for kind, classic in (family.record_points(name) if name else []):
            if kind == "out":
                def hook(mod, args, out, n=classic):
                    t = out[0] if isinstance(out, tuple) else out
                    store[n] = t.detach().numpy().copy()
                handles.append(module.register_forward_hook(hook))
            else:
                def pre(mod, args, n=classic):
                    store[n] = args[0].detach().numpy().copy()
                handles.append(module.register_forward_pre_hook(pre))
    return handles


def register_float64_attention():
    """Eager attention with the softmax kept in the input dtype (see module docstring; the function is refvit.parity's,
    whose framework capture uses it too)."""
    from transformers import AttentionInterface

    from refvit.parity.capture import eager_same_dtype

    AttentionInterface.register("eager_same_dtype", eager_same_dtype)


def flatten_output(out, prefix: str, attention_layers=None) -> dict:
    arrays = {}
    for key, value in out.items():
        if value is None or key == "loss":
            continue
        if isinstance(value, tuple):
            idx = range(len(value)) if (key != "attentions" or attention_layers is None) else \
                sorted({i % len(value) for i in attention_layers})
            for i in idx:
                arrays[f"{prefix}/{key}/{i}"] = value[i].detach().numpy()
        else:
            arrays[f"{prefix}/{key}"] = value.detach().numpy()
    return arrays


def attention_entropy_ratio(attn: np.ndarray) -> float:
    """Mean attention entropy / log(N): ~1.0 means near-uniform (degenerate) attention."""
    p = np.clip(attn.astype(np.float64), 1e-30, 1)
    return float((-(p * np.log(p)).sum(-1)).mean() / np.log(attn.shape[-1]))


def make_case(name: str, out_dir: Path) -> dict:
    import torch
    import transformers

    family, (arch, config, call, (B, H, W), storage) = all_cases()[name]
    real_size = storage is True
    seed = case_seed(name)
    shapes = synthetic.shapes_for(config, arch)  # as transformers builds the class by default
    tensors = synthetic.random_state_dict(shapes, seed)
    case_dir = out_dir / name
    case_dir.mkdir(parents=True)
    cls = getattr(transformers, arch)
    with tempfile.TemporaryDirectory() as tmp:  # classic-named tensors -> transformers converts names on load
        (Path(tmp) / "config.json").write_text(json.dumps({**config, "architectures": [arch]}))
        write_safetensors(Path(tmp) / "model.safetensors", tensors, metadata={"format": "pt"})
        model, info = cls.from_pretrained(tmp, output_loading_info=True, attn_implementation="eager", dtype=torch.float32)
    problems = {k: v for k, v in info.items() if v and k != "mismatched_keys" or (k == "mismatched_keys" and v)}
    if problems:
        raise SystemExit(f"{name}: transformers did not load every tensor: {problems}")
    model.eval()
    if storage == "bf16":
        model.to(torch.bfloat16).save_pretrained(case_dir)
        model = cls.from_pretrained(case_dir, attn_implementation="eager", dtype=torch.float32).eval()
    elif storage == "bin":
        model.save_pretrained(case_dir)
        (case_dir / "model.safetensors").unlink()
        torch.save(model.state_dict(), case_dir / "pytorch_model.bin")
    else:
        model.save_pretrained(case_dir)
        saved = read_safetensors(case_dir / "model.safetensors")  # what save_pretrained wrote (real size too)
        expected = getattr(family, "saved_names", lambda arch, t: t)(arch, tensors)  # a family's save-name quirks
        if not all(k in saved and np.array_equal(saved[k], expected[k]) for k in expected):
            raise SystemExit(f"{name}: the tensors save_pretrained wrote differ from the seeded ones")
        del saved
        if real_size:
            (case_dir / "model.safetensors").unlink()  # rebuilt from the seed by refvit.synthetic

    pixel_values = synthetic.random_pixel_values(B, config["num_channels"], H, W, seed + 1)
    inputs = {"pixel_values": pixel_values}
    kwargs = {k: v for k, v in call.items() if k != "bool_masked_pos"}
    if call.get("bool_masked_pos"):
        num_patches = (H // np.atleast_1d(config["patch_size"])[0]) * (W // np.atleast_1d(config["patch_size"])[-1])
        inputs["bool_masked_pos"] = np.random.default_rng(seed + 2).random((B, num_patches)) < 0.4
    np.savez(case_dir / "inputs.npz", **inputs)

    register_float64_attention()
    arrays, entropy = {}, None
    for dtype in ("float32", "float64"):
        tdtype = getattr(torch, dtype)
        model = model.to(tdtype)
        model.config._attn_implementation = "eager" if dtype == "float32" else "eager_same_dtype"
        for module in model.modules():  # some attention modules cache the config
            if hasattr(module, "config"):
                module.config._attn_implementation = model.config._attn_implementation
        store: dict = {}
        handles = [] if real_size else attach_hooks(model, store, family)
        probs: list = []  # attention maps of family.ATTENTION_PROBS modules, for outputs that hold none (CvT)
        probe = getattr(family, "ATTENTION_PROBS", None)
        handles += [m.register_forward_hook(lambda mod, args, o: probs.append(o.detach().numpy()))
                    for n, m in model.named_modules() if probe is not None and probe.search(n)]
        torch_inputs = {"pixel_values": torch.from_numpy(pixel_values).to(tdtype)}
        if "bool_masked_pos" in inputs:
            torch_inputs["bool_masked_pos"] = torch.from_numpy(inputs["bool_masked_pos"])
        with torch.no_grad():
            out = model(**torch_inputs, **kwargs, output_hidden_states=True, output_attentions=True)
        for h in handles:
            h.remove()
        if dtype == "float32" and ("attentions" in out or probs):  # convolutional models (BiT) have none
            entropy = attention_entropy_ratio(out.attentions[-1].numpy() if "attentions" in out else probs[-1])
        arrays.update(flatten_output(out, dtype, REAL_SIZE_ATTENTION_LAYERS if real_size else None))
        arrays.update({f"{dtype}/intermediates/{k}": v for k, v in store.items()})
    keep = getattr(family, "real_size_keep", None)  # a family's rule for what its real-size cases record (size)
    if real_size and keep is not None:
        arrays = {k: v for k, v in arrays.items() if keep(name, k)}
    np.savez(case_dir / "outputs.npz", **arrays)
    meta = {"case": name, "architecture": arch, "seed": seed, "call": {k: (bool(v) if k == "bool_masked_pos" else v)
                                                                         for k, v in call.items()},
            "input_shape": [B, config["num_channels"], H, W], "real_size": real_size,
            "weights": "refvit.synthetic.random_state_dict(shapes, seed)" + (" (not committed)" if real_size else ""),
            "storage": {False: "model.safetensors", True: "none (seeded)", "bf16": "model.safetensors (bfloat16)",
                        "bin": "pytorch_model.bin (torch.save of state_dict)"}[storage],
            "attentions_recorded": ("layers 0 and -1" if real_size else "all") if "attentions" in out
            else "none (the model returns no attention maps)", "intermediates": not real_size,
            "mean_attention_entropy_over_log_n_last_layer": None if entropy is None else round(entropy, 4),
            "float64_run": "eager attention with softmax in float64 (transformers' eager uses float32)",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
            "command": "python golden/generate.py"}
    if real_size and keep is not None:
        meta["recorded"] = family.REAL_SIZE_RECORDED
    (case_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def generate(out: Path, only: list[str] | None = None) -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)  # one thread: reductions in a fixed order, reproducible across machines of this kind
    cases_dir = out / "cases"
    if cases_dir.exists() and not only:
        shutil.rmtree(cases_dir)
    for name in (only or all_cases()):
        if (cases_dir / name).exists():
            shutil.rmtree(cases_dir / name)
        meta = make_case(name, cases_dir)
        print(f"{name:34s} {meta['architecture']:40s} attention entropy/log N = {meta['mean_attention_entropy_over_log_n_last_layer']}")
    if not only:
        import processing_cases
        proc_dir = out / "processing"
        processing_cases.clean(proc_dir)  # only what the installed Pillow writes: other Pillows' folders stay
        for case in processing_cases.generate(proc_dir):
            print(f"processing/{case}")


# Tolerances of `--check` (a regenerated tree vs the committed one), relative to max(1, max|regenerated|):
# - float64: 1e-12. The float64 reference run differs across CPUs only in the last bits (measured below: 1.4e-14).
# - float32: PyTorch's float32 CPU kernels do not give the same bits on another CPU (oneDNN/MKL pick GEMM blockings
#   and vector widths per instruction set, so sums run in another order). Measured 2026-11-30: the committed cases,
#   written on an AMD EPYC, regenerated on an Intel Xeon (lscpu: "Intel(R) Xeon(R) Processor", family 6 model 207 =
#   5th-gen Xeon Scalable, AVX-512 + AMX, KVM guest), torch 2.13.0+cpu, one thread: worst float32 difference
#   6.2e-6·max(1, max|ref|) (bit_50_448 hidden_states/4: 1.03e-3 on values up to 166; every other case at most
#   4.1e-6, beit_base_224), 89 float32 tensors above the old 1e-6 bound, every float64 tensor within 1.4e-14.
#   2e-5 is 3x that worst case and 5x below the 1e-4 bound refvit must meet (docs/DESIGN.md §7): a change of the
#   framework's float32 output big enough to matter for parity still fails the check.
FLOAT32_REGENERATION_TOL = 2e-5
FLOAT64_REGENERATION_TOL = 1e-12


def allowed_difference(reference: np.ndarray) -> float:
    rel = FLOAT32_REGENERATION_TOL if reference.dtype == np.float32 else FLOAT64_REGENERATION_TOL
    return rel * max(1.0, float(np.abs(reference).max(initial=0)))


def compare_trees(committed: Path, fresh: Path, worst: dict | None = None, keep=lambda rel: True) -> list[str]:
    """Differences between two golden trees: file sets, JSON (minus versions) and arrays (FLOAT*_REGENERATION_TOL).

    `worst`, when given, receives for each top-level directory (a case) its worst float ratio
    max|committed - regenerated| / allowed, with the array it came from: `{case: (ratio, "file:key")}`.
    `keep(relative path)`: which committed files a regeneration here writes (processing: this Pillow's only).
    """
    problems = []
    files_a = {p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and keep(p.relative_to(committed))}
    files_b = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
    for rel in sorted(files_a ^ files_b):
        problems.append(f"{rel}: only in {'committed' if rel in files_a else 'regenerated'} tree")
    for rel in sorted(files_a & files_b):
        a, b = committed / rel, fresh / rel
        if rel.suffix == ".npz":
            with np.load(a) as za, np.load(b) as zb:
                if set(za.files) != set(zb.files):
                    problems.append(f"{rel}: keys differ: {sorted(set(za.files) ^ set(zb.files))[:5]}")
                    continue
                for k in za.files:
                    x, y = za[k], zb[k]
                    if x.shape != y.shape or x.dtype != y.dtype:
                        problems.append(f"{rel}:{k}: shape/dtype {x.shape}/{x.dtype} vs {y.shape}/{y.dtype}")
                    elif x.dtype.kind == "f":
                        tol = allowed_difference(y)
                        err = float(np.abs(x.astype(np.float64) - y).max(initial=0))
                        if worst is not None:  # NaN (a NaN appearing or vanishing) ranks above everything
                            case, ratio = rel.parts[0], (err / tol if err == err else float("inf"))
                            if case not in worst or ratio > worst[case][0]:
                                worst[case] = (ratio, f"{rel.relative_to(case)}:{k}")
                        if not err <= tol:
                            problems.append(f"{rel}:{k}: max abs difference {err:.3g} > {tol:.3g}")
                    elif not np.array_equal(x, y):
                        problems.append(f"{rel}:{k}: values differ")
        elif rel.suffix in (".safetensors", ".bin"):
            read = read_safetensors if rel.suffix == ".safetensors" else read_torch_bin
            ta, tb = read(a), read(b)
            if ta.keys() != tb.keys() or any(not np.array_equal(ta[k], tb[k]) for k in ta):
                problems.append(f"{rel}: tensors differ")
        elif rel.suffix == ".json":
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            for j in (ja, jb):
                if isinstance(j, dict):
                    j.pop("versions", None)
                    j.pop("transformers_version", None)
            if ja != jb:
                problems.append(f"{rel}: JSON differs")
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"{rel}: bytes differ")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare with golden/")
    parser.add_argument("--out", type=Path, default=ROOT, help="where to write (default: golden/ of this checkout)")
    parser.add_argument("--only", nargs="*", help="regenerate only these model cases")
    parser.add_argument("--processing", action="store_true", help="regenerate only golden/processing/")
    parser.add_argument("--timm", action="store_true",
                        help="only golden/timm/ (cases written by timm; run with the timm venv's python, see "
                             "golden/timm_cases.py); with --check: regenerate them into a temp dir and compare")
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="no framework run: compare an already regenerated tree DIR (from --out DIR) with golden/")
    args = parser.parse_args(argv)
    if args.compare:
        return check_against(args.compare)
    if args.timm:
        return timm_main(args)

    import torch
    import transformers

    if transformers.__version__ != TRANSFORMERS_VERSION or not torch.__version__.startswith(TORCH_VERSION):
        print(f"warning: golden data is pinned to torch {TORCH_VERSION} + transformers {TRANSFORMERS_VERSION}; "
              f"found {torch.__version__} + {transformers.__version__}", file=sys.stderr)
    if args.processing:
        import processing_cases
        proc_dir = args.out / "processing"
        processing_cases.clean(proc_dir)  # only what the installed Pillow writes: other Pillows' folders stay
        print("\n".join(f"processing/{c}" for c in processing_cases.generate(proc_dir)))
        return 0
    if not args.check:
        generate(args.out, args.only)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        return check_against(Path(tmp))


def timm_main(args) -> int:
    """`--timm`: write golden/timm/ with timm (the timm venv), or with --check compare a fresh run with it."""
    import timm_cases
    try:
        import timm
        import torch
    except ImportError as exc:
        timm = exc
    if getattr(timm, "__file__", None) is None:  # not installed: golden/timm/ (on sys.path) imports as a namespace
        print("golden/generate.py --timm needs timm: run it in the timm venv (torch 2.14.1 + torchvision 0.29.1 + "
              "timm, docs/guide/timm.md)", file=sys.stderr)
        return 2
    if timm.__version__ != timm_cases.TIMM_VERSION or not torch.__version__.startswith(timm_cases.TORCH_VERSION):
        print(f"warning: timm golden data is pinned to timm {timm_cases.TIMM_VERSION} + torch "
              f"{timm_cases.TORCH_VERSION}; found {timm.__version__} + {torch.__version__}", file=sys.stderr)
    if not args.check:
        target = args.out / "timm"
        if target.exists():
            shutil.rmtree(target)
        timm_cases.generate(target)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        timm_cases.generate(Path(tmp))
        problems, worst = [], {}
        print(f"golden --timm --check on {cpu_model()} ({platform.machine()})")
        for sub in ("models", "processing"):
            ratios: dict = {}
            problems += [f"timm/{sub}/{p}" for p in compare_trees(ROOT / "timm" / sub, Path(tmp) / sub, ratios)]
            worst.update({f"timm/{sub}/{case}": value for case, value in ratios.items()})
        for case, (ratio, where) in sorted(worst.items()):
            print(f"  {case:45s} {ratio:8.3f}  {where}")
        for p in problems:
            print("MISMATCH", p)
        print(f"golden --timm --check: {'OK' if not problems else f'{len(problems)} difference(s)'}")
        return 1 if problems else 0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def processing_owned():
    """The committed processing files the installed Pillow writes (other Pillows' goldens are not regenerated here)."""
    import processing_cases

    return processing_cases.owned


def check_against(fresh: Path, committed: Path = ROOT) -> int:
    """Compare a regenerated tree with the committed one; print each case's worst ratio and every mismatch."""
    problems, worst = [], {}
    print(f"golden --check on {cpu_model()} ({platform.machine()})")
    for sub in ("cases", "processing"):
        ratios: dict = {}
        keep = processing_owned() if sub == "processing" else (lambda rel: True)
        problems += [f"{sub}/{p}" for p in compare_trees(committed / sub, fresh / sub, ratios, keep)]
        worst.update({f"{sub}/{case}": value for case, value in ratios.items()})
    print(f"worst max|committed - regenerated| / allowed per case (allowed: float32 {FLOAT32_REGENERATION_TOL:g}, "
          f"float64 {FLOAT64_REGENERATION_TOL:g}, each x max(1, max|ref|)):")
    for case, (ratio, where) in sorted(worst.items()):
        print(f"  {case:45s} {ratio:8.3f}  {where}")
    if worst:
        case, (ratio, where) = max(worst.items(), key=lambda item: item[1][0])
        print(f"worst of all: {ratio:.3f} ({case}/{where})")
    for p in problems:
        print("MISMATCH", p)
    print(f"golden --check: {'OK' if not problems else f'{len(problems)} difference(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
