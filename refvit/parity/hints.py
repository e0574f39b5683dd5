"""Likely cause of a divergence: the usual porting mistakes, each tested against the first diverging tensor.

`likely_cause(reference, candidate_tensors, name)` tries, in order, and returns the first that fits, with its evidence
(or None: "no known pattern"; nothing is guessed):

  other tensor     the candidate equals another reference tensor (q <-> k, q <-> v: the wrong module's output)
  transposed       it equals the reference with two axes swapped (an attention map transposed, a layout mix-up)
  q/k swapped      an attention map whose logits are the reference's transposed (softmax(k·qᵀ) for softmax(q·kᵀ))
  attention scale  an attention map whose logits are the reference's times a constant (√D vs √C, a missing scale)
  permuted         slices along one axis are the reference's in another order (heads, tokens, channels)
  qkv split        its channels are channels of the block's query/key/value, rearranged (split as (H, 3, D)
                   where the checkpoint is (3, H, D), or the reverse)
  constant scale   candidate = s · reference
  one-pixel shift  pixel_values moved by one row or column (a crop or pad off by one)
  tanh GELU        the error is exactly tanh-GELU minus erf-GELU of the pre-activation (gelu_new for gelu)
  epsilon          the error is a per-token rescaling ∝ 1/var of the normalised input (LayerNorm eps)
  channel affine   candidate = a_c · reference + b_c per channel (mean/std of the processor, a norm's affine)
  resampling       pixel_values of the same image resampled differently (resize filter or size)
  rearranged       the same multiset of values in other places (an index or layout bug)

Each test demands an almost exact fit (the residual ≤ 1e-3 of the error's energy, or the named structure exactly),
so a tensor that is simply wrong gets no hint.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np

FIT = 1e-3  # a pattern fits when what it leaves unexplained is ≤ FIT of the error's energy


@dataclass
class Hint:
    cause: str
    evidence: str

    def to_dict(self) -> dict:
        return asdict(self)


def _energy(x) -> float:
    return float(np.sum(np.square(x, dtype=np.float64)))


def _fits(residual, err: float) -> bool:
    return err > 0 and _energy(residual) <= FIT * err


def _channel_axis(x: np.ndarray) -> int:
    return 1 if x.ndim == 4 else x.ndim - 1


def likely_cause(reference, candidate: dict, name: str) -> Hint | None:
    """The first known pattern that explains candidate[name] against reference[name] (both in `reference`'s names)."""
    r = np.asarray(reference[name], dtype=np.float64)
    c = np.asarray(candidate[name], dtype=np.float64)
    if r.shape != c.shape or r.size == 0 or not np.all(np.isfinite(c)):
        return None
    err = _energy(c - r)
    if err == 0:
        return None
    checks = [_other_tensor, _transposed, _attention_logits, _permuted, _qkv_split, _constant_scale, _pixel_shift,
              _tanh_gelu, _epsilon, _channel_affine, _resampled, _rearranged]
    for check in checks:
        hint = check(reference, name, r, c, err)
        if hint is not None:
            return hint
    return None


# ---- the checks (each returns a Hint or None) --------------------------------------------------------------------


def _other_tensor(reference, name, r, c, err):
    for other in reference.names:
        o = reference[other]
        if other == name or o.shape != r.shape or o.dtype.kind != "f":
            continue
        o = np.asarray(o, dtype=np.float64)
        if _fits(c - o, err) and not np.array_equal(o, r):
            return Hint(f"the candidate is the reference's `{other}`, not `{name}`",
                        f"NMSE against {other} {_energy(c - o) / max(_energy(o), 1e-300):.1e}, against {name} "
                        f"{err / max(_energy(r), 1e-300):.1e}" + _swap_words(name, other))
    return None


def _swap_words(a, b):
    pa, pb = a.split(".")[-1], b.split(".")[-1]
    if {pa, pb} <= {"query", "key", "value"} and a.rsplit(".", 1)[0] == b.rsplit(".", 1)[0]:
        return f" ({pa} and {pb} swapped: the wrong weights, or the wrong slice of a fused qkv)"
    return ""


def _transposed(reference, name, r, c, err):
    for i in range(r.ndim):
        for j in range(i + 1, r.ndim):
            if r.shape[i] != r.shape[j] or r.shape[i] < 2:
                continue
            t = np.swapaxes(r, i, j)
            if _fits(c - t, err):
                return Hint(f"the reference transposed (axes {i} and {j} swapped)",
                            f"candidate = swapaxes(reference, {i}, {j}) to NMSE "
                            f"{_energy(c - t) / _energy(r):.1e}; a layout or transpose mix-up")
    return None


def _is_attention(r) -> bool:
    if r.ndim < 2 or r.shape[-1] < 2 or np.any(r < 0):
        return False
    return bool(np.allclose(r.sum(-1), 1.0, atol=1e-4))


def _centered_log(p):
    lp = np.log(np.maximum(p, 1e-300))
    return lp - lp.mean(-1, keepdims=True)


def _attention_logits(reference, name, r, c, err):
    """softmax rows: log p = s − logsumexp(s), so row-centred log-probabilities are row-centred logits (rows with an
    underflowed probability are left out)."""
    if not (_is_attention(r) and _is_attention(c)):
        return None
    rows = np.all(r > 0, -1) & np.all(c > 0, -1)
    if r.shape[-1] == r.shape[-2] and np.all(rows):
        lr, lc = _centered_log(r), _centered_log(c)
        # q<->k: s'_ij = s_ji, so lc_ij − lr_ji = (a term per column) + (a term per row): double-centred, nothing left
        d = lc - np.swapaxes(lr, -1, -2)
        d = d - d.mean(-2, keepdims=True) - d.mean(-1, keepdims=True) + d.mean((-2, -1), keepdims=True)
        if _energy(d) <= FIT * _energy(lc - lr):
            return Hint("query and key swapped (the attention logits are the reference's transposed: "
                        "softmax(k·qᵀ) for softmax(q·kᵀ))",
                        f"row-centred log-probabilities = the reference's transposed up to a term per row and per "
                        f"column (residual {_energy(d) / _energy(lc - lr):.1e} of the error)")
    if rows.mean() < 0.5:
        return None
    lr, lc = _centered_log(r[rows]), _centered_log(c[rows])
    s = float(np.sum(lr * lc) / max(_energy(lr), 1e-300))
    if abs(s - 1) > 1e-3 and _energy(lc - s * lr) <= FIT * _energy(lc - lr):
        return Hint(f"the attention logits scaled by {s:.6g} (a different attention scale){_sqrt_words(s)}",
                    f"row-centred log-probabilities = {s:.6g} × the reference's (residual "
                    f"{_energy(lc - s * lr) / _energy(lc - lr):.1e} of the error, {rows.sum()} rows)")
    return None


COMMON_SIZES = sorted(set(range(2, 65)) | {72, 96, 128, 192, 256, 384, 512, 768, 1024})  # head counts, dims, widths


def _sqrt_words(s: float) -> str:
    """Name s when it is √k, 1/√k, k or 1/k for a head count or width k (to 5e-5: a chance match is unlikely)."""
    for k in COMMON_SIZES:
        for v, word in ((math.sqrt(k), f"√{k}"), (1 / math.sqrt(k), f"1/√{k}"), (k, f"{k}"), (1 / k, f"1/{k}")):
            if abs(s - v) <= 5e-5 * v:
                return f" = {word}: e.g. head_dim^-½ for embed_dim^-½ or the scale applied twice/not at all"
    return ""


def _match_slices(c, pool, axis):
    """For each slice of c along `axis`, the index in `pool` (slices stacked on axis 0) of an equal slice, or None."""
    cs = np.moveaxis(c, axis, 0).reshape(c.shape[axis], -1)
    scale = np.sqrt(np.maximum(np.sum(pool * pool, 1), 1e-300))
    d2 = (np.sum(cs * cs, 1)[:, None] + np.sum(pool * pool, 1)[None, :] - 2 * cs @ pool.T)
    best = np.argmin(d2, 1)
    ok = np.maximum(d2[np.arange(len(best)), best], 0) <= (1e-3 * scale[best]) ** 2 + 1e-20
    return [int(b) if k else None for b, k in zip(best, ok)]


def _permuted(reference, name, r, c, err):
    for axis in range(r.ndim):
        n = r.shape[axis]
        if n < 2 or n > 4096:
            continue
        pool = np.moveaxis(r, axis, 0).reshape(n, -1)
        match = _match_slices(c, pool, axis)
        if None in match or sorted(match) != list(range(n)) or match == list(range(n)):
            continue
        moved = [i for i, m in enumerate(match) if m != i]
        what = "channels" if axis == _channel_axis(r) else "tokens" if (r.ndim == 3 and axis == 1) else f"axis {axis}"
        block = _block_size(match)
        if block > 1 and what == "channels":
            order = [match[i] // block for i in range(0, n, block)]
            return Hint(f"heads in another order (channel blocks of {block} permuted: candidate head i = reference "
                        f"head {order})", f"every channel equals a reference channel; {len(moved)} of {n} moved, in "
                        f"blocks of {block}")
        pairs = ", ".join(f"{i}<-{match[i]}" for i in moved[:6]) + (" …" if len(moved) > 6 else "")
        return Hint(f"{what} permuted along axis {axis}", f"every slice equals a reference slice; {len(moved)} of "
                    f"{n} moved ({pairs})")
    return None


def _block_size(match) -> int:
    n = len(match)
    for b in sorted({d for d in range(2, n) if n % d == 0}, reverse=True):
        if all(match[i] - i == match[i - i % b] - (i - i % b) for i in range(n)) and \
                all(match[i] % b == i % b for i in range(n)):
            return b
    return 1


_QKV = re.compile(r"^(.*)\.(query|key|value)$")


def _qkv_split(reference, name, r, c, err):
    m = _QKV.match(name)
    if not m:
        return None
    siblings = [f"{m[1]}.{p}" for p in ("query", "key", "value") if f"{m[1]}.{p}" in reference]
    if len(siblings) < 2 or any(reference[s].shape != r.shape for s in siblings):
        return None
    axis = _channel_axis(r)
    pool = np.concatenate([np.moveaxis(np.asarray(reference[s], np.float64), axis, 0).reshape(r.shape[axis], -1)
                           for s in siblings])
    match = _match_slices(c, pool, axis)
    if None in match:
        return None
    n = r.shape[axis]
    sources = sorted({siblings[j // n].rsplit(".", 1)[1] for j in match})
    if len(sources) < 2:
        return None
    return Hint(f"{name.rsplit('.', 1)[1]}'s channels are channels of {'/'.join(sources)}, rearranged: the fused qkv "
                "split in the wrong order (e.g. (H, 3, D) where the checkpoint is (3, H, D))",
                f"each of the {n} channels equals a channel of the block's query/key/value; first ones from "
                + ", ".join(f"{siblings[j // n].rsplit('.', 1)[1]}[{j % n}]" for j in match[:4]))


def _constant_scale(reference, name, r, c, err):
    s = float(np.sum(r * c) / max(_energy(r), 1e-300))
    if abs(s - 1) > 1e-6 and _fits(c - s * r, err):
        words = _sqrt_words(s) or (": a weight scaled (weight standardisation or a norm missing or done twice, a "
                                   "rescaled checkpoint)" if reference.kind(name) == "module" else "")
        return Hint(f"the reference times a constant {s:.6g}{words}",
                    f"candidate = {s:.6g} × reference (residual {_energy(c - s * r) / err:.1e} of the error)")
    return None


def _pixel_shift(reference, name, r, c, err):
    if name != "pixel_values" or r.ndim != 4:
        return None
    for axis, word in ((2, "row"), (3, "column")):
        for step in (1, -1):
            a = np.take(c, range(max(0, -step), r.shape[axis] - max(0, step)), axis=axis)
            b = np.take(r, range(max(0, step), r.shape[axis] - max(0, -step)), axis=axis)
            if _energy(a - b) <= 1e-6 * max(_energy(b), 1e-300):
                where = ("down" if step > 0 else "up") if axis == 2 else ("right" if step > 0 else "left")
                return Hint(f"pixel_values shifted by one {word} ({where} in the image): a crop or pad off by one",
                            f"candidate = reference moved by {step:+d} along axis {axis} (NMSE of the overlap "
                            f"{_energy(a - b) / max(_energy(b), 1e-300):.1e})")
    return None


def _erf_gelu(u):
    from scipy.special import erf

    return 0.5 * u * (1 + erf(u / math.sqrt(2)))


def _gelu_tanh_formula(u):
    return 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))


def _bisect(f, y, lo, hi, increasing):
    lo = np.broadcast_to(np.asarray(lo, float), y.shape).copy()
    hi = np.broadcast_to(np.asarray(hi, float), y.shape).copy()
    for _ in range(80):
        mid = (lo + hi) / 2
        go_up = (f(mid) < y) == increasing
        lo, hi = np.where(go_up, mid, lo), np.where(go_up, hi, mid)
    return (lo + hi) / 2


GELU_MIN_AT = -0.7517915  # erf-GELU decreases below this point and increases above it


def _tanh_gelu(reference, name, r, c, err):
    """erf-GELU is two-to-one below 0: each negative output has a pre-activation on either branch; the one whose
    tanh-GELU is closer to the candidate is taken (positive outputs have one)."""
    ymin = float(_erf_gelu(np.array(GELU_MIN_AT)))
    if np.min(r) < ymin - 1e-6 or np.mean(r > 0) < 0.2:
        return None
    y = np.maximum(r, ymin)
    up = _bisect(_erf_gelu, y, GELU_MIN_AT, np.maximum(y, 0) + 1.0, True)
    predicted = _gelu_tanh_formula(up) - r
    neg = r < 0
    if neg.any():
        down = _bisect(_erf_gelu, y[neg], -40.0, GELU_MIN_AT, False)
        other = _gelu_tanh_formula(down) - r[neg]
        actual = (c - r)[neg]
        predicted[neg] = np.where(np.abs(other - actual) < np.abs(predicted[neg] - actual), other, predicted[neg])
    if _energy(predicted) == 0 or _energy((c - r) - predicted) > 0.01 * err:
        return None
    return Hint("GELU's tanh approximation (gelu_new / gelu_pytorch_tanh) where the checkpoint says exact erf GELU",
                f"the error equals tanh-GELU(u) − erf-GELU(u) of the pre-activation u recovered from the reference "
                f"(residual {_energy((c - r) - predicted) / err:.1e} of the error)")


def _previous_same_shape(reference, name, r):
    names = reference.names
    i = names.index(name)
    for other in reversed(names[:i]):
        if reference[other].shape == r.shape and reference.kind(other) != "attention":
            return other
    return None


def _epsilon(reference, name, r, c, err):
    """LayerNorm with eps' for eps: y' − β = k_t (y − β) per token t, k_t = √((var_t + eps)/(var_t + eps'))."""
    if r.ndim < 2 or r.shape[-1] < 4:
        return None
    R = r.reshape(-1, r.shape[-1])
    D = (c - r).reshape(-1, r.shape[-1])
    beta = np.zeros(R.shape[1])
    for _ in range(20):  # alternate: per-token factor u_t, per-channel offset β_c (D = u_t (R − β))
        X = R - beta
        u = np.sum(D * X, 1) / np.maximum(np.sum(X * X, 1), 1e-300)
        beta = np.sum(u[:, None] * (u[:, None] * R - D), 0) / max(float(np.sum(u * u)), 1e-300)
    resid = D - u[:, None] * (R - beta)
    if not _fits(resid, err) or np.ptp(u) <= 1e-3 * np.max(np.abs(u)) or not (np.all(u > 0) or np.all(u < 0)):
        return None
    weak = Hint("a normalization epsilon (or variance formula) that differs: the normalised output is rescaled per "
                "token, every token the same way round",
                f"the error is a per-token rescaling of the output (residual {_energy(resid) / err:.1e} of the error), "
                f"factors {1 + u.min():.6g} to {1 + u.max():.6g}; the normalization's input is not in the trace, so "
                "the 1/variance law could not be checked")
    source = _previous_same_shape(reference, name, r)
    if source is None:
        return weak
    x = np.asarray(reference[source], np.float64).reshape(-1, r.shape[-1])
    var = x.var(-1)
    # k_t − 1 ≈ (eps − eps')/(2 var_t): the factor times the variance is one constant
    prod = u * var
    spread = float(np.std(prod) / max(abs(float(np.mean(prod))), 1e-300))
    if spread > 0.2:
        return weak  # the tensor before it is not the normalization's input (e.g. a residual sum went unrecorded)
    delta = -2 * float(np.median(prod))
    return Hint(f"a different normalization epsilon (error ∝ 1/variance): the candidate's eps is about "
                f"{delta:+.2g} from the reference's",
                f"the error is a per-token rescaling of the normalised output (residual {_energy(resid) / err:.1e} of "
                f"the error) whose size × the input's variance ({source}) is constant to {spread:.0%}")


def _channel_affine(reference, name, r, c, err):
    if r.ndim < 2:
        return None
    axis = _channel_axis(r)
    R = np.moveaxis(r, axis, 0).reshape(r.shape[axis], -1)
    C = np.moveaxis(c, axis, 0).reshape(r.shape[axis], -1)
    if R.shape[1] < 3:
        return None
    rm, cm = R.mean(1, keepdims=True), C.mean(1, keepdims=True)
    var = np.sum((R - rm) ** 2, 1)
    if np.any(var <= 0):
        return None
    a = np.sum((R - rm) * (C - cm), 1) / var
    b = cm[:, 0] - a * rm[:, 0]
    resid = C - (a[:, None] * R + b[:, None])
    if not _fits(resid, err):
        return None
    offs = ", ".join(f"{x:.4g}" for x in b[:6]) + (" …" if len(b) > 6 else "")
    if np.max(np.abs(a - 1)) <= 1e-4:
        return Hint("a per-channel offset of the reference: a bias missing, added twice, or another module's",
                    f"candidate = reference + b_c per channel (axis {axis}), residual {_energy(resid) / err:.1e} of "
                    f"the error; b = [{offs}]")
    words = ", ".join(f"{x:.4g}" for x in a[:6]) + (" …" if len(a) > 6 else "")
    offs = ", ".join(f"{x:.4g}" for x in b[:6]) + (" …" if len(b) > 6 else "")
    what = ("the input normalization (image_mean/image_std: e.g. the processor left at its defaults)"
            if name == "pixel_values" else "a normalization's affine (weight/bias, running mean/var) or a scale "
            "applied per channel")
    return Hint(f"a per-channel affine map of the reference: {what}",
                f"candidate = a_c · reference + b_c per channel (axis {axis}), residual {_energy(resid) / err:.1e} of "
                f"the error; a = [{words}], b = [{offs}]")


def _box(x, k=4):
    h, w = x.shape[-2] // k * k, x.shape[-1] // k * k
    x = x[..., :h, :w]
    return x.reshape(*x.shape[:-2], h // k, k, w // k, k).mean((-3, -1))


def _resampled(reference, name, r, c, err):
    if name != "pixel_values" or r.ndim != 4 or min(r.shape[-2:]) < 16:
        return None
    nmse = err / _energy(r)
    br, bc = _box(r), _box(c)
    coarse = _energy(bc - br) / _energy(br)
    if nmse < 1e-1 and coarse <= 0.1 * nmse:
        return Hint("the same image resampled differently (another resize filter, size or antialiasing)",
                    f"NMSE {nmse:.1e} pixel by pixel but {coarse:.1e} after a 4×4 box blur: the difference is in the "
                    "fine detail only")
    return None


def _rearranged(reference, name, r, c, err):
    if r.size < 8:
        return None
    a, b = np.sort(r.ravel()), np.sort(c.ravel())
    if _energy(a - b) <= 1e-8 * max(_energy(a), 1e-300):
        same = float(np.mean(np.isclose(c, r, rtol=1e-6, atol=1e-9 * float(np.max(np.abs(r))))))
        extra = ""
        if r.ndim >= 2 and r.shape[-1] == r.shape[-2]:
            t = np.swapaxes(r, -1, -2)
            frac = float(np.mean(np.isclose(c, t, rtol=1e-6, atol=1e-9 * float(np.max(np.abs(r))))))
            if frac > same:
                extra = f"; {frac:.0%} of the elements equal the reference transposed (last two axes)"
        return Hint("the reference's values in other places (an index, gather or layout bug)",
                    f"same multiset of values; {same:.0%} of the elements in place{extra}")
    return None
