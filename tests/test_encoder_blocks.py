"""The fused encoder blocks (refvit/kernels/encoder.py) and the workspace they write into
(refvit/kernels/workspace.py): the Numba blocks give the bits of the separate Numba kernels run one after the
other, match their NumPy twins within the kernel tolerance, reuse their buffers between calls, and a model's
forward gives the same bits with the workspace, without it and from two threads at once."""

import threading

import numpy as np
import pytest

import refvit
from refvit import kernels
from refvit.errors import InputError
from refvit.kernels import encoder, threads
from refvit.kernels.workspace import FRESH, Workspace, WorkspacePool

from conftest import golden_case

NP = kernels.get("numpy")
NB = kernels.get("numba")
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

# (B, N, C, heads, I): one block per stage; several; more than 512 rows (GEMMs split by rows, not columns)
SHAPES = [(1, 5, 8, 2, 16), (2, 33, 48, 3, 96), (3, 200, 64, 4, 128)]


def params(rng, C, I, dtype, qkv_bias=True, beit=None):
    """A layer's weights; beit=(H, N): also BEiT's attention bias (H, N, N) and layer scales λ1, λ2 (C,)."""
    def r(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(dtype)
    p = {"ln1": (1 + r(C), r(C)), "qkv": (r(3 * C, C), r(3 * C) if qkv_bias else None), "out": (r(C, C), r(C)),
         "ln2": (1 + r(C), r(C)), "fc1": (r(I, C), r(I)), "fc2": (r(C, I), r(C))}
    if beit:
        H, N = beit
        p.update(bias=r(H, N, N, scale=2.0), lam1=r(C, scale=0.1), lam2=r(C, scale=0.1))
    return p


def separate(ns, x, p, H, scale, need_probs):
    """The blocks as the unfused layer runs them: one kernel per module, then the residual adds (BeitLayer: the
    attention bias, and each block's output times its layer scale before the add, in NumPy as models/beit.py)."""
    ln = ns.layer_norm(x, *p["ln1"], 1e-6)
    qkv = ns.linear(ln, *p["qkv"])
    C = x.shape[-1]
    context, probs = ns.attention(qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:], H, scale, bias=p.get("bias"),
                                  need_probs=need_probs)
    proj = ns.linear(context, *p["out"])
    x1 = x + proj if "lam1" not in p else p["lam1"] * proj + x
    ln2 = ns.layer_norm(x1, *p["ln2"], 1e-6)
    hidden = ns.linear(ln2, p["fc1"][0])
    hidden = ns.bias_gelu(hidden, p["fc1"][1], out=hidden)
    fc2 = ns.linear(hidden, *p["fc2"])
    out = fc2 + x1 if "lam2" not in p else p["lam2"] * fc2 + x1
    return [x1, ln, qkv, context, proj, probs, out, ln2, hidden, fc2]


def fused(ns, x, p, H, scale, need_probs, workspace=None):
    a = ns.attention_block(x, *p["ln1"], 1e-6, *p["qkv"], *p["out"], H, scale, need_probs=need_probs,
                           workspace=workspace, bias=p.get("bias"), layer_scale=p.get("lam1"))
    m = ns.mlp_block(a.out, *p["ln2"], 1e-6, *p["fc1"], *p["fc2"], workspace=workspace, layer_scale=p.get("lam2"))
    return [a.out, a.ln, a.qkv, a.context, a.proj, a.probs, m.out, m.ln, m.hidden, m.fc2]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["plain", "probs", "no qkv bias", "workspace", "beit", "beit probs",
                                     "beit workspace"])
def test_numba_blocks_are_bit_identical_to_the_separate_kernels(shape, dtype, variant, monkeypatch):
    """Split by rows (each stage as the separate kernel splits it): the same bits."""
    monkeypatch.setattr(encoder, "BY_IMAGES", False)
    B, N, C, H, I = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((B, N, C)).astype(dtype)
    p = params(rng, C, I, dtype, qkv_bias=variant != "no qkv bias", beit=(H, N) if "beit" in variant else None)
    need_probs = "probs" in variant
    ref = separate(NB, x, p, H, (C // H) ** -0.5, need_probs)
    got = fused(NB, x, p, H, (C // H) ** -0.5, need_probs, Workspace() if "workspace" in variant else None)
    names = ["out", "ln", "qkv", "context", "proj", "probs", "mlp out", "mlp ln", "hidden", "fc2"]
    for name, g, r in zip(names, got, ref):
        if "workspace" in variant and name in ("ln", "proj", "fc2"):
            continue            # the workspace shares the layer norms' buffer; proj and fc2 are `out` before the add
        if r is None:
            assert g is None, name
        else:
            assert g.dtype == r.dtype and g.shape == r.shape and np.array_equal(g, r), name


@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beit", [False, True])
def test_numba_blocks_match_their_numpy_twins(shape, dtype, beit):
    B, N, C, H, I = shape
    rng = np.random.default_rng(7)
    x = rng.standard_normal((B, N, C)).astype(dtype)
    p = params(rng, C, I, dtype, beit=(H, N) if beit else None)
    got, ref = fused(NB, x, p, H, 0.5, True), fused(NP, x, p, H, 0.5, True)
    assert all(np.array_equal(a, b) for a, b in zip(fused(NP, x, p, H, 0.5, True), separate(NP, x, p, H, 0.5, True))
               if a is not None)        # the twins are the separate twins, composed
    for g, r in zip(got, ref):
        scale = max(1.0, float(np.max(np.abs(r))))
        assert g.dtype == r.dtype and float(np.max(np.abs(g.astype(np.float64) - r))) <= TOL[np.dtype(dtype)] * scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beit", [False, True])
def test_by_images_matches_the_twins_and_any_thread_count(dtype, beit, monkeypatch):
    """Split by images (whole images per block, every stage in one parallel region): within the kernel tolerance
    of the twins, and the same bits on 1 thread as on all of them."""
    import numba

    monkeypatch.setattr(threads, "MAX_BLOCKS", 2)
    monkeypatch.setattr(threads, "MIN_WORK_PER_BLOCK", 1)
    B, N, C, H, I = 4, 33, 48, 3, 96
    assert encoder.image_blocks(B, N, C) is not None and encoder.image_blocks(3, N, C) is None
    rng = np.random.default_rng(11)
    x = rng.standard_normal((B, N, C)).astype(dtype)
    p = params(rng, C, I, dtype, beit=(H, N) if beit else None)
    before = numba.get_num_threads()
    try:
        runs = {}
        for n in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(n)
            runs[n] = fused(NB, x, p, H, 0.5, True)
    finally:
        numba.set_num_threads(before)
    one, every = runs.values()
    assert all(np.array_equal(a, b) for a, b in zip(one, every) if a is not None)
    for g, r in zip(every, fused(NP, x, p, H, 0.5, True)):
        if r is not None:
            scale = max(1.0, float(np.max(np.abs(r))))
            assert float(np.max(np.abs(g.astype(np.float64) - r))) <= TOL[np.dtype(dtype)] * scale


def test_the_workspace_hands_out_the_same_buffers_again():
    rng = np.random.default_rng(3)
    B, N, C, H, I = SHAPES[1]
    x = rng.standard_normal((B, N, C)).astype(np.float32)
    p = params(rng, C, I, np.float32)
    ws = Workspace()
    first = fused(NB, x, p, H, 0.5, False, ws)
    held = ws.nbytes
    keep = [a.copy() for a in first if a is not None]
    second = fused(NB, x, p, H, 0.5, False, ws)
    assert ws.nbytes == held                                      # no new buffer in the steady state
    for a, b, k in zip((a for a in first if a is not None), (b for b in second if b is not None), keep):
        assert np.shares_memory(a, b) and np.array_equal(b, k)   # the same memory, the same values
    assert not np.shares_memory(fused(NB, x, p, H, 0.5, False)[0], fused(NB, x, p, H, 0.5, False)[0])
    assert FRESH.get("a", (2,), np.float32) is not FRESH.get("a", (2,), np.float32)
    for batch in (1, 2, 3):                                       # at most two shapes per name are kept
        ws.get("x", (batch, 4), np.float32)
    assert sorted(k[1] for k in ws._buffers if k[0] == "x") == [(2, 4), (3, 4)]


def test_pool_leases_distinct_workspaces_to_concurrent_callers():
    pool = WorkspacePool()
    with pool.lease() as a, pool.lease() as b:
        assert a is not b
    with pool.lease() as c:
        assert c in (a, b)


def test_blocks_reject_mismatched_weights():
    x = np.zeros((1, 4, 8), np.float32)
    w = np.zeros((24, 8), np.float32)
    with pytest.raises(InputError, match="qkv"):
        NB.attention_block(x, np.ones(8, np.float32), np.zeros(8, np.float32), 1e-6, w[:, :4], None, w[:8], w[0, :8],
                           2, 0.5)
    with pytest.raises(InputError, match="fc2"):
        NB.mlp_block(x, np.ones(8, np.float32), np.zeros(8, np.float32), 1e-6, w, w[:, 0], w[:8], w[:8, 0])


@pytest.mark.parametrize("case", ["deit_teacher", "vit_model", "beit_classification", "beit_classification_all_biases",
                                  "beit_mim"])
def test_a_model_gives_the_same_bits_with_and_without_its_workspace(case, monkeypatch):
    model = refvit.from_pretrained(golden_case(case))
    with np.load(golden_case(case) / "inputs.npz") as z:
        x = z["pixel_values"].astype(np.float32)
    key = "last_hidden_state" if case == "vit_model" else "logits"
    pool = model.workspaces
    out = model(x)
    (ws,) = pool._free
    held = ws.nbytes
    assert held > 0
    assert np.array_equal(model(x)[key], out[key])                 # the second call reuses the buffers
    assert ws.nbytes == held
    fresh = model(x, output_hidden_states=True)                    # the same kernels writing new arrays
    for k in out:
        assert np.array_equal(out[k], fresh[k]), k
    monkeypatch.setattr(encoder, "BY_IMAGES", False)
    rows = model(x)
    model.workspaces = None                                        # the modules one by one, fresh arrays
    plain = model(x)
    for k in out:
        assert np.array_equal(rows[k], plain[k]), k
    model.workspaces = pool
    monkeypatch.undo()
    results = [None, None]

    def run(i):
        results[i] = [model(x)[key] for _ in range(3)]
    workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert all(np.array_equal(r, out[key]) for rs in results for r in rs)


def test_a_replaced_kernel_runs_instead_of_the_blocks():
    """parity.with_kernels (or any namespace where a kernel the blocks stand for was replaced, the blocks not):
    the modules run one by one, so the replacement is called for every layer; wrapping every kernel alike (timers,
    counters) keeps the blocks."""
    from refvit import parity

    model = refvit.from_pretrained(golden_case("deit_teacher"))
    with np.load(golden_case("deit_teacher") / "inputs.npz") as z:
        x = z["pixel_values"].astype(np.float32)
    seen = []
    base = model.kernels
    planted = parity.with_kernels(model, layer_norm=lambda *a: seen.append(1) or base.layer_norm(*a))
    planted(x)
    assert len(seen) == 2 * model.config.num_hidden_layers + 1       # two per layer and the final one
    assert np.array_equal(planted(x).logits, model(x).logits)      # batch 3: by rows, the same bits
    partial = type(base)(**{k: v for k, v in vars(base).items() if k != "mlp_block"})
    model.kernels = partial                                        # a namespace without the blocks: no blocks
    assert np.array_equal(model(x).logits, planted(x).logits)


@pytest.mark.parametrize("case", ["deit_teacher", "vit_model", "beit_classification_all_biases", "beit_model",
                                  "beit_segmentation", "data2vec_vision_segmentation"])
def test_a_returned_output_is_not_overwritten_by_the_next_call(case):
    """The workspace is refvit's scratch memory: what a forward returns belongs to the caller, so a later call with
    other pixels (same shape: the same buffers) leaves it as it was."""
    model = refvit.from_pretrained(golden_case(case))
    with np.load(golden_case(case) / "inputs.npz") as z:
        x = z["pixel_values"].astype(np.float32)
    out = model(x)
    kept = {k: v.copy() for k, v in out.items() if isinstance(v, np.ndarray)}
    assert kept
    model(np.ascontiguousarray(x[::-1]) * 0.5)
    for k, v in kept.items():
        assert np.array_equal(out[k], v), k


@pytest.mark.parametrize("case", ["beit_segmentation", "data2vec_vision_segmentation", "beit_backbone_fpn"])
def test_a_head_reading_hidden_states_gets_arrays_of_their_own(case, monkeypatch):
    """Segmentation heads and backbones read the feature maps of chosen layers after the encoder has run: those
    must not be the fused blocks' reused buffers (every layer would read the last one). Split by rows, the forward
    gives the bits of the modules run one by one."""
    monkeypatch.setattr(encoder, "BY_IMAGES", False)
    model = refvit.from_pretrained(golden_case(case))
    with np.load(golden_case(case) / "inputs.npz") as z:
        x = z["pixel_values"].astype(np.float32)
    assert x.shape[0] >= 2                                         # the fused blocks run from batch 2
    fused_out = model(x)
    model.workspaces = None
    plain = model(x)
    for k in plain:
        got, ref = fused_out[k], plain[k]
        if isinstance(ref, tuple):                                  # a backbone's feature maps
            assert len(got) == len(ref) and all(np.array_equal(a, b) for a, b in zip(got, ref)), k
        else:
            assert np.array_equal(got, ref), k
