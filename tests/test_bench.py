"""`refvit bench`: the FLOP counter (by hand, against published counts and against torch's own counter), the
tables and JSON it prints, one fresh process per implementation and round in a rotated order, the environment each
starts in, and that it runs with neither torch nor onnxruntime installed (peers skipped). No timed assertions."""

import argparse
import builtins
import json
from pathlib import Path

import numpy as np
import pytest

from refvit import bench
from refvit.bench import profiling, workers, zoo

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "cases"
TINY_VIT = {"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 24, "image_size": 32, "patch_size": 8, "id2label": {str(i): str(i) for i in range(5)}}


@pytest.fixture
def tiny_model(monkeypatch):
    """A ViT small enough to time in a test, registered as a benchmark model."""
    monkeypatch.setitem(bench.MODELS, "tiny-vit", ("ViTForImageClassification", 32, TINY_VIT))
    monkeypatch.setattr(zoo, "LABELS", TINY_VIT["id2label"])
    return "tiny-vit"


def test_flops_of_a_tiny_vit_by_hand():
    patches, N, C, I, L = 16, 17, 16, 24, 5                  # (32 / 8)² patches + [CLS]
    embed = 2 * patches * C * 3 * 8 * 8
    layer = 2 * N * C * 3 * C + 2 * N * N * C + 2 * N * N * C + 2 * N * C * C + 2 * N * C * I + 2 * N * I * C
    assert bench.count_flops(TINY_VIT, "ViTForImageClassification", 32) == embed + 2 * layer + 2 * C * L


@pytest.mark.parametrize("name, published_gmacs", [("deit-tiny", 1.3), ("deit-small", 4.6), ("vit-base", 17.6)])
def test_flops_round_to_the_published_counts(name, published_gmacs):
    # DeiT paper table 1 and ViT's: "FLOPs" there are multiply-accumulates, given to one decimal
    arch, config, side = bench.model_config(name)
    assert round(bench.count_flops(config, arch, side) / 2e9, 1) == published_gmacs


CLASSIFICATION_CASES = ["vit_classification", "deit_classification", "deit_teacher", "deit_small_teacher_224",
                        "beit_classification", "beit_classification_all_biases", "cvt_classification",
                        "cvt_classification_cls_tokens", "bit_bottleneck_bin",
                        "bit_preact_output_stride8", "bit_no_labels", "bit_50_448"]


@pytest.mark.needs_framework
@pytest.mark.parametrize("case", CLASSIFICATION_CASES)
def test_flops_equal_torch_flop_counter(case):
    """Every golden classification config: our count equals torch.utils.flop_counter's on the transformers model
    (eager attention, so that Q·Kᵀ and A·V are matmuls it sees)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from torch.utils.flop_counter import FlopCounterMode

    from refvit import synthetic

    config = json.loads((GOLDEN / case / "config.json").read_text())
    side = np.load(GOLDEN / case / "inputs.npz")["pixel_values"].shape[-1]   # square inputs, as bench uses
    arch = config["architectures"][0]
    tm = bench.torch_model(arch, config, synthetic.random_state_dict(synthetic.shapes_for(config, arch), seed=0))
    tm.set_attn_implementation("eager")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        tm(pixel_values=torch.zeros(1, 3, side, side))
    assert bench.count_flops(config, arch, side) == counter.get_total_flops()


def test_flops_of_any_class_are_counted_on_the_model():
    """Counted from the kernel calls of the model itself, not from a per-family formula: ViTModel is the classifier
    without its head (C·L multiply-accumulates) but with the pooler the classifier class does not build (a C×C
    dense on [CLS])."""
    C, L = TINY_VIT["hidden_size"], len(TINY_VIT["id2label"])
    classifier = bench.count_flops(TINY_VIT, "ViTForImageClassification", 32)
    base = bench.count_flops({**TINY_VIT, "architectures": ["ViTModel"]}, "ViTModel", 32)
    assert base == classifier - 2 * C * L + 2 * C * C


def _args(**kw):
    defaults = dict(models=["tiny-vit"], batch=[1, 2], backend=["numpy"], peers=["torch-eager", "onnxruntime"],
                    repeat=2, threads=None, startup=False, json=False, markdown=False, from_json=None)
    return argparse.Namespace(**{**defaults, **kw})


@pytest.fixture
def no_peers(monkeypatch):
    """Make `import torch`, transformers, onnx and onnxruntime fail, as where they are not installed."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] in ("torch", "transformers", "onnx", "onnxruntime"):
            raise ImportError(f"No module named {name!r} (test)")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(workers, "importable", lambda module: False)


@pytest.fixture
def quick_sgemm(monkeypatch):
    real = workers.sgemm_gflops_at
    monkeypatch.setattr(workers, "sgemm_gflops_at", lambda threads, *a, **kw: real(threads, sizes=(128,), repeat=2))


def test_bench_runs_without_torch_or_onnxruntime(tiny_model, no_peers, quick_sgemm, capsys):
    assert bench.run_cli(_args(json=True)) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["batch"], r["impl"]) for r in result["rows"]] == [(1, "refvit-numpy"), (2, "refvit-numpy")]
    assert [(s["impl"], s["reason"].split(":")[0]) for s in result["skipped"]] == [
        ("torch-eager", "not installed"), ("onnxruntime", "not installed")]
    row = result["rows"][0]
    assert row["max_abs_diff"] is None and row["logits_match"] is None
    assert row["vs_torch"] is None and row["vs_ort"] is None and row["vs_best_peer"] is None
    arch, config, side = bench.model_config("tiny-vit")
    assert row["flops"] == bench.count_flops(config, arch, side)
    assert row["floor_ms"] == pytest.approx(row["flops"] / result["environment"]["sgemm_gflops"] / 1e6)
    assert row["floor_pct"] == pytest.approx(100 * row["floor_ms"] / row["ms_per_image"])
    assert len(row["times_ms"]) == 2 * bench.RUNS_PER_PROCESS and row["ms_per_image"] > 0   # 2 rounds
    env = result["environment"]
    assert env["torch"] is None and env["onnxruntime"] is None and env["sgemm_gflops"] > 0
    assert env["command"] == ("refvit bench --models tiny-vit --batch 1 2 --backend numpy "
                              "--peers torch-eager onnxruntime --repeat 2 --json")


def test_table_markdown_and_targets_from_saved_json(tmp_path, capsys):
    rows = [{"model": "deit-base", "batch": 8, "impl": impl, "flops": 35e9, "ms_per_image": ms, "times_ms": [ms * 8],
             "max_abs_diff": 1e-6, "logits_match": True} for impl, ms in
            [("refvit-numba", 120.0), ("refvit-numba-tuned", 115.0), ("refvit-numpy", 400.0), ("torch-eager", 140.0),
             ("torch-eager-attn", 150.0), ("onnxruntime", 130.0)]]
    result = {"environment": bench.environment(2, 350.0, "refvit bench --models deit-base --batch 8"),
              "rows": bench.add_ratios(rows, 350.0),
              "startup": [{"process": p, "model": "deit-small", "runs": 3, "wall_s": w, "import_s": 0.2, "load_s": 0.1,
                           "forward_s": 0.5, "in_process_s": w - 0.1, "rss_after_import_mib": 30.0, "peak_rss_mib": m}
                          for p, w, m in [("refvit, Numba cache cold", 9.0, 180.0),
                                          ("refvit, Numba cache warm", 1.2, 150.0),
                                          ("torch + transformers", 5.7, 480.0)]]}
    result["startup"][1]["to_prediction_s"] = 0.95      # launch -> prediction (shutdown excluded); cold: wall only
    numba = result["rows"][0]
    assert numba["vs_torch"] == pytest.approx(120 / 140) and numba["vs_ort"] == pytest.approx(120 / 130)
    assert numba["vs_best_peer"] == pytest.approx(120 / 130) and numba["floor_pct"] == pytest.approx(100 * 100 / 120)
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(result))

    assert bench.run_cli(_args(from_json=str(saved))) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == "model batch impl ms/image vs torch vs ORT vs best peer floor %".split()
    assert table[2].split() == ["deit-base", "8", "refvit-numba", "120.0", "0.86x", "0.92x", "0.92x", "83%"]
    assert ("met    refvit-numba, default process, ≤ 1.0× the fastest peer, every model and batch: "
            "worst 0.92× (deit-base batch 8); 1/1 met") in table
    assert ("MISSED refvit-numba, default process, ≤ 0.9× the fastest peer, every model and batch: "
            "worst 0.92× (deit-base batch 8); 0/1 met") in table
    assert ("met    default process as fast as OPENBLAS_NUM_THREADS=1 (within the noise, ≤ 1.1×): "
            "worst 1.04× (deit-base batch 8)") in table
    assert "met    ≥ 75% of the compute floor, DeiT-B/ViT-B/BEiT-B at batch 8: deit-base 83%" in table
    assert "MISSED refvit-numpy within 3× of refvit-numba: worst 3.33× (deit-base batch 8)" in table

    assert bench.run_cli(_args(from_json=str(saved), markdown=True)) == 0
    page = capsys.readouterr().out
    assert ("| deit-base | 8 | 35.00 | 100.0 | 120.0 | 115.0 | 400.0 | 140.0 | 150.0 | 130.0 | 0.92x | 0.88x | 83% |"
            in page)
    assert "| refvit, Numba cache warm | 0.95 | 1.20 | 0.20 | 0.10 | 0.50 | 150 | 30 |" in page
    assert "| time to first prediction (launch to prediction), Numba cache warm ≤ 0.8 s | 0.95 s | no |" in page
    assert "| time to first prediction (launch to prediction), Numba cache cold ≤ 15.0 s | 9.00 s | yes |" in page
    assert "| refvit, Numba cache warm | 0.95 | 1.20 |" in page and "| refvit, Numba cache cold | 9.00 | 9.00 |" in page
    assert "| peak RSS at the first prediction ≤ 200 MiB, cache warm | 150 MiB | yes |" in page
    assert "refvit bench --models deit-base --batch 8" in page


def test_unknown_model_is_refused(capsys):
    assert bench.run_cli(_args(models=["deit-huge"])) == 2
    assert "deit-huge" in capsys.readouterr().err


@pytest.mark.needs_framework
def test_peers_agree_with_refvit_on_a_tiny_model(tiny_model):
    """With torch and onnxruntime installed: every peer timed in its own process, ONNX exported from the same saved
    weights, logits match PyTorch eager's."""
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    skipped = []
    rows = bench.bench(["tiny-vit"], [2], repeat=1, backends=("numpy",), skipped=skipped)
    assert skipped == []
    assert [r["impl"] for r in rows] == ["refvit-numpy", "torch-eager", "torch-eager-attn", "onnxruntime"]
    assert all(r["logits_match"] is True for r in rows), [(r["impl"], r["max_abs_diff"]) for r in rows]
    json.dumps(rows)                                        # plain Python values only: --json prints them


def test_every_implementation_runs_in_its_own_process_in_rotated_order(tiny_model, monkeypatch):
    """One worker process per implementation and round, the order rotated each round, all on one saved model and
    input; the times of all rounds pooled into one median."""
    calls = []

    def fake_worker(spec, env):
        calls.append((spec["impl"], spec["model_dir"], tuple(spec["inputs"]), env.get("OPENBLAS_NUM_THREADS")))
        return {"times": {str(b): [0.01 * (1 + len(calls))] * spec["runs"] for b in spec["batches"]}}

    monkeypatch.setattr(workers, "run_worker", fake_worker)
    monkeypatch.setattr(workers, "missing_peer", lambda impl: None if impl.startswith("refvit") else "not installed")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    rows = bench.bench(["tiny-vit"], [1, 2], repeat=3, threads=2, backends=("numba", "numpy"))
    impls = ["refvit-numba", "refvit-numba-tuned", "refvit-numpy"]
    assert [c[0] for c in calls] == impls + impls[1:] + impls[:1] + impls[2:] + impls[:2]
    assert len({c[1:3] for c in calls}) == 1                 # the same model directory and inputs for all
    assert {c[0]: c[3] for c in calls} == {"refvit-numba": None, "refvit-numba-tuned": "1", "refvit-numpy": "2"}
    assert [(r["impl"], r["batch"], len(r["times_ms"])) for r in rows] == [
        (k, b, 3 * bench.RUNS_PER_PROCESS) for b in (1, 2) for k in impls]


def test_each_implementation_starts_with_its_own_thread_settings(monkeypatch):
    """The default-process row has no thread variable at all (even if this shell set one); the tuned row sets
    OPENBLAS_NUM_THREADS=1; the NumPy backend and the peers get N threads before start."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")
    assert not set(bench.THREAD_VARS) & set(bench.impl_env("refvit-numba", 2))
    tuned = bench.impl_env("refvit-numba-tuned", 2)
    assert tuned["OPENBLAS_NUM_THREADS"] == "1" and tuned["NUMBA_NUM_THREADS"] == "2"
    for impl in ("refvit-numpy", "torch-eager", "onnxruntime"):
        env = bench.impl_env(impl, 2)
        assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert not set(bench.THREAD_VARS) & set(bench.impl_env("torch-eager", None))
    assert bench.sgemm_gflops_at(1, sizes=(64,), repeat=1) > 0


def test_startup_reports_fresh_process_time_and_memory(tiny_model):
    rows = bench.startup(runs=1, include_torch=False, model="tiny-vit")
    assert [r["process"] for r in rows] == ["refvit, Numba cache cold", "refvit, Numba cache warm"]
    for r in rows:
        assert r["wall_s"] >= r["to_prediction_s"] >= r["in_process_s"] >= r["forward_s"] > 0
        assert r["peak_rss_mib"] >= r["rss_after_import_mib"] > 0


def test_profile_breaks_a_forward_into_kernels_and_restores_them(tiny_model, capsys, monkeypatch):
    """`--profile`: per-kernel wall time of the fastest forward, timers on the profiled model's own kernels only:
    the shared namespace is never patched, not even during the run."""
    from refvit import kernels

    before = dict(vars(kernels.get("numba")))
    seen = []
    real = profiling._profile_runs

    def spy(model, namespace, forward, repeat):
        out = real(model, namespace, lambda: (seen.append(dict(vars(kernels.get("numba")))), forward()), repeat)
        return out
    monkeypatch.setattr(profiling, "_profile_runs", spy)
    assert bench.run_cli(_args(profile=True, json=True, backend=["numba"], batch=[2])) == 0
    result = json.loads(capsys.readouterr().out)
    assert vars(kernels.get("numba")) == before and seen and all(v == before for v in seen)
    (row,) = result["profile"]
    assert (row["model"], row["batch"], row["impl"]) == ("tiny-vit", 2, "refvit-numba")
    names = {k["name"]: k for k in row["kernels"]}
    assert {"linear", "attention_block", "mlp_block", "layer_norm"} <= set(names)   # ViT's layers: two fused blocks
    assert names["linear"]["gflops"] > 0 and names["attention_block"]["gflops"] > 0
    assert names["layer_norm"]["gflops"] is None
    assert all(k["calls"] >= 1 and k["ms"] >= 0 for k in row["kernels"])
    assert sum(k["ms"] for k in row["kernels"]) + row["python_ms"] == pytest.approx(row["total_ms"])
    assert result["environment"]["command"].endswith("--profile")
    assert bench.run_cli(_args(profile=True, backend=["numba"], batch=[1], repeat=1)) == 0
    assert "python (between kernels)" in capsys.readouterr().out
