"""Determinism and equivalence, on small golden models of every family and a real-size DeiT-Tiny, both
backends.

- the same input gives bit-identical outputs (every output, hidden state and attention map) call after call, and
  from a freshly loaded model;
- across thread counts: Numba threads 1 vs all (`numba.set_num_threads`, restored), and whole processes with 1 vs 2
  BLAS + Numba threads (OPENBLAS/OMP/MKL/NUMBA_NUM_THREADS): bit-identical. Measured on the 2-core CI machine with the
  kernels of commit 6400a33; if a kernel ever reduces in parallel, the tolerance goes here, with the reason;
- a batch gives each image's single-image outputs to 1e-5 x max(1, max|out|) (not bitwise: BLAS blocks a (B·N, C)
  product differently from an (N, C) one; measured worst 5e-7 relative on DeiT-Tiny/Small 224);
- several Python threads calling one model at once give the sequential results bit for bit. The numba backend is
  checked in a child process, so that a threading-layer abort (Numba's workqueue layer is not thread-safe) fails
  this test instead of killing the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import pytest

import refvit
from conftest import golden_case
from refvit.synthetic import random_pixel_values
from refvit.verify import load_case_model

CASES = ["deit_teacher", "vit_mim", "cvt_model", "bit_preact_model", "bit_backbone", "beit_classification",
         "beit_segmentation", "data2vec_vision_model"]
BACKENDS = ["numba", "numpy"]
REAL_SIZE = "deit_tiny_teacher_224"
ROOT = Path(__file__).resolve().parent.parent


def flat(out) -> dict[str, np.ndarray]:
    """Every array of an output object: fields, tuple members (hidden states, attentions, feature maps)."""
    arrays = {}
    for key, value in out.items():
        if isinstance(value, np.ndarray):
            arrays[key] = value
        elif isinstance(value, (tuple, list)):
            arrays.update({f"{key}.{i}": v for i, v in enumerate(value) if isinstance(v, np.ndarray)})
    return arrays


def inputs(case) -> np.ndarray:
    with np.load(golden_case(case) / "inputs.npz") as z:
        return z["pixel_values"]


def run(model, x) -> dict[str, np.ndarray]:
    options = {"output_hidden_states": True}
    if model.architecture.family not in ("cvt", "bit"):
        options["output_attentions"] = True
    return flat(model(x, **options))


def assert_identical(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, (what, key)
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what}: {key}")


@pytest.fixture(scope="module")
def models():
    return {(case, backend): refvit.from_pretrained(golden_case(case), backend=backend)
            for case in CASES for backend in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_same_input_same_bits(models, case, backend):
    model, x = models[case, backend], inputs(case)
    first = run(model, x)
    assert_identical(first, run(model, x), f"{case}/{backend} second call")
    assert_identical(first, run(refvit.from_pretrained(golden_case(case), backend=backend), x.copy()),
                     f"{case}/{backend} fresh model")


@pytest.mark.parametrize("case", CASES)
def test_numba_thread_count_does_not_change_bits(models, case, monkeypatch):
    model, x = models[case, "numba"], inputs(case)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run(model, x)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        assert_identical(one, run(model, x), f"{case}: 1 vs {numba.config.NUMBA_NUM_THREADS} numba threads")
    finally:
        numba.set_num_threads(previous)
    assert numba.get_num_threads() == previous


BATCH_TOLERANCE = 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_batch_equals_single_images(models, case, backend):
    model, x = models[case, backend], inputs(case)
    assert x.shape[0] >= 2
    batch = run(model, x)
    for i in range(x.shape[0]):
        single = run(model, x[i : i + 1])
        for key, value in single.items():
            ref = batch[key][i : i + 1]
            scale = max(1.0, float(np.abs(ref).max()))
            assert np.abs(value.astype(np.float64) - ref).max() <= BATCH_TOLERANCE * scale, (case, backend, key, i)


def test_batch_equals_single_images_real_size():
    model, _ = load_case_model(golden_case(REAL_SIZE), "float32", "numba")
    x = random_pixel_values(2, 3, 224, 224, seed=6)
    batch = model(x).logits
    for i in range(2):
        single = model(x[i : i + 1]).logits
        assert np.abs(single - batch[i : i + 1]).max() <= BATCH_TOLERANCE * max(1.0, float(np.abs(batch).max()))


def test_numpy_backend_concurrent_calls_match_sequential(models):
    """In this process: the numpy backend has no threading layer to abort."""
    jobs = [(case, inputs(case) + np.float32(0.01 * k)) for case in CASES for k in range(3)]
    sequential = [run(models[case, "numpy"], x) for case, x in jobs]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda job: run(models[job[0], "numpy"], job[1]), jobs))
    for (case, _), a, b in zip(jobs, sequential, concurrent):
        assert_identical(a, b, f"{case}: concurrent vs sequential")


CHILD = r"""
import json, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[3])
import test_determinism as t
from refvit.verify import load_case_model
from refvit.synthetic import random_pixel_values

out, cases = {}, json.loads(sys.argv[2])
models = {case: load_case_model(t.golden_case(case), "float32", "numba")[0] for case in cases}
jobs = []
for case in cases:
    x = random_pixel_values(1, 3, 224, 224, 6) if case == t.REAL_SIZE else t.inputs(case)
    jobs += [(case, x + np.float32(0.01 * k)) for k in range(3)]
sequential = [t.run(models[case], x) for case, x in jobs]
with ThreadPoolExecutor(4) as pool:
    concurrent = list(pool.map(lambda job: t.run(models[job[0]], job[1]), jobs))
for (case, _), a, b in zip(jobs, sequential, concurrent):
    t.assert_identical(a, b, f"{case}: concurrent vs sequential (numba)")
for i, ((case, _), arrays) in enumerate(zip(jobs, sequential)):
    out.update({f"{case}/{i}/{k}": v for k, v in arrays.items()})
np.savez(sys.argv[1], **out)
"""


def child_run(tmp_path, threads: int, blas: int = 1) -> dict[str, np.ndarray]:
    """Sequential and 4-thread concurrent numba calls in a child process with `threads` Numba threads and `blas`
    BLAS threads (1: refvit threads its kernels, BLAS calls included; more: BLAS threads the GEMMs)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env["OPENBLAS_NUM_THREADS"] = str(blas)
    path = tmp_path / f"threads{threads}-blas{blas}.npz"
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(CASES + [REAL_SIZE]),
                             str(Path(__file__).parent)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"child with {threads} thread(s) failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_numba_concurrency_and_thread_counts_in_child_processes(tmp_path):
    """1 vs 2 Numba threads (BLAS single-threaded), and 2 with BLAS on 2 threads, give the same bits; in each,
    concurrent calls equal sequential ones."""
    one, two, blas_two = child_run(tmp_path, 1), child_run(tmp_path, 2), child_run(tmp_path, 2, blas=2)
    assert_identical(one, two, "1 vs 2 threads")
    assert_identical(one, blas_two, "1 thread vs 2 threads with BLAS on 2")
    here = run(refvit.from_pretrained(golden_case("deit_teacher")), inputs("deit_teacher"))
    assert_identical({k: one[f"deit_teacher/0/{k}"] for k in here}, here, "child vs this process")
