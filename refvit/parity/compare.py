"""Compare a candidate trace with a reference, tensor by tensor in the reference's execution order.

For each tensor: max |Δ| and where it sits, max |Δ| relative to max |ref|, NMSE = Σ(Δ²)/Σ(ref²), cosine similarity,
and for logits the top-1 / top-5 agreement; OK or NOT OK under a tolerance. The first NOT OK tensor is the first
divergence. Tensors are grouped into blocks (embeddings, each encoder layer, the head …): a block with a NOT OK
tensor **introduced** the error when its output's NMSE is ≥ 100× its input's (the input: the last tensor before the
block; the RMS error grew ≥ 10× inside the block), or when it is the first block; otherwise it **inherited** it.

Tolerance presets (a max |Δ| bound unless said; |ref| elementwise, max|ref| over the tensor):
    refvit        refvit's golden tolerance (default): 1e-4·max(1, max|ref|) in float32, 1e-10·max(1, max|ref|) when
                  both traces are float64 (refvit/tolerance.py, docs/DESIGN.md §7)
    transformers  |Δ| ≤ 1e-4 + 1e-4·|ref| elementwise (integration tests: torch.testing.assert_close(rtol=atol=1e-4))
    conversion    |Δ| ≤ 1e-3 + 1e-5·|ref| elementwise (conversion scripts: torch.allclose(…, atol=1e-3))
    llm.c         max |Δ| ≤ 2e-2 (llm.c test_gpt2's check_tensor)
    nmse          NMSE ≤ 1e-7 (llama.cpp test-backend-ops' default max NMSE); "nmse:1e-5" sets the bound
    a number      max |Δ| ≤ that number
NMSE bands (reported for every tensor): exact (0), ≤1e-24 rounding64, ≤1e-10 rounding32, ≤1e-6 small, ≤1e-2 large,
else wrong.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from refvit.errors import InputError
from refvit.tolerance import allowed_error

from .presets import fill
from .trace import Trace

PRESETS = ("refvit", "transformers", "conversion", "llm.c", "nmse")
INTRODUCED_NMSE_RATIO = 100.0  # output NMSE ≥ 100× input NMSE (RMS error ≥ 10×): the block introduced the error
# NMSE bands: a correct float64 port sits near 1e-30, a correct float32 one near 1e-14..1e-12 (measured on the golden
# cases); a tanh GELU in float32 is ~1e-8 ("small"), q/k swapped ~1e-1 ("wrong").
NMSE_BANDS = [(0.0, "exact"), (1e-24, "rounding64"), (1e-10, "rounding32"), (1e-6, "small"), (1e-2, "large")]


# ----------------------------------------------------------------------------------------------------------------------
# tolerances


@dataclass(frozen=True)
class Tolerance:
    """One pass rule: a preset name or "atol" with a value."""
    rule: str
    value: float | None = None

    def describe(self) -> str:
        if self.rule == "atol":
            return f"max|Δ| ≤ {self.value:g}"
        if self.rule == "nmse":
            return f"nmse: NMSE ≤ {self.value:g}"
        return {"refvit": "refvit: max|Δ| ≤ 1e-4·max(1, max|ref|) (float32), 1e-10·max(1, max|ref|) (both float64)",
                "transformers": "transformers: |Δ| ≤ 1e-4 + 1e-4·|ref|",
                "conversion": "conversion: |Δ| ≤ 1e-3 + 1e-5·|ref|",
                "llm.c": "llm.c: max|Δ| ≤ 2e-2"}[self.rule]


def parse_tolerance(text) -> Tolerance:
    """"refvit" | "transformers" | "conversion" | "llm.c" | "nmse" | "nmse:VALUE" | a number (max |Δ|)."""
    if isinstance(text, Tolerance):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return Tolerance("atol", float(text))
    t = str(text).strip()
    if t in PRESETS:
        return Tolerance(t, 1e-7 if t == "nmse" else None)
    if t.startswith("nmse:"):
        return Tolerance("nmse", _number(t[5:], text))
    return Tolerance("atol", _number(t, text))


def _number(t: str, text) -> float:
    try:
        v = float(t)
    except ValueError:
        raise InputError(f"tolerance {text!r}: expected one of {', '.join(PRESETS)}, nmse:VALUE, or a number") from None
    if not v >= 0 or v == float("inf"):
        raise InputError(f"tolerance {text!r}: must be a finite number ≥ 0")
    return v


def _bound(tol: Tolerance, ref: np.ndarray, both64: bool) -> float:
    """The max |Δ| bound of the scalar rules (refvit, llm.c, atol)."""
    if tol.rule == "refvit":
        return allowed_error(ref, "float64" if both64 else "float32")
    if tol.rule == "llm.c":
        return 2e-2
    return tol.value


def _passes(tol: Tolerance, ref, diff, nmse: float, both64: bool) -> tuple[bool, float | None, str]:
    """(ok, the bound as a number — max|Δ|, or NMSE for nmse; None for the elementwise rules —, the bound in words)."""
    if tol.rule in ("transformers", "conversion"):
        atol, rtol = (1e-4, 1e-4) if tol.rule == "transformers" else (1e-3, 1e-5)
        excess = np.abs(diff) - (atol + rtol * np.abs(ref))
        return bool(np.all(excess <= 0)), None, f"{atol:g}+{rtol:g}|ref|"
    if tol.rule == "nmse":
        return bool(nmse <= tol.value), tol.value, f"nmse≤{tol.value:g}"
    bound = float(_bound(tol, ref, both64))
    return bool(np.max(np.abs(diff)) <= bound) if diff.size else True, bound, f"{bound:.1e}"


def band(nmse: float) -> str:
    if not np.isfinite(nmse):
        return "wrong"
    for limit, name in NMSE_BANDS:
        if nmse <= limit:
            return name
    return "wrong"


# ----------------------------------------------------------------------------------------------------------------------
# name mapping (ports that fuse, split, transpose or lay out tensors differently)


def load_mapping(path) -> dict:
    """Read and check a mapping file (JSON; docs/porting.md shows one):

        {"tensors": [{"candidate": "blocks.{i}.attn.qkv", "split": {"axis": -1, "into": [REF_Q, REF_K, REF_V]}},
                     {"candidate": "stem", "reference": "bit.embedder.convolution", "layout": "NHWC"},
                     {"candidate": "blocks.{i}.mlp.h", "reference": "…intermediate", "transpose": [0, 2, 1]},
                     {"candidate": "blocks.{i}.heads", "reference": "…attention.attention", "transpose": [0, 2, 1, 3],
                      "reshape": [0, 0, -1]}],
         "tolerances": {"*.attention.attention": 1e-3, "logits": "conversion"},
         "ignore": {"reference": ["deit.pooler"], "candidate": ["my_debug_*"]}}

    `{i}` (any name in braces) matches one or more characters other than a dot: a whole dotted component where it
    stands between dots (`blocks.{i}.attn`), part of one where it does not (`layer{i}`); the same name twice must
    match the same text. What it matched is filled in the reference names (`{i+1}`: plus one); a list of reference
    names records one candidate tensor under each. Applied in order: layout (NHWC -> NCHW,
    BCN -> BNC), transpose, reshape (0 keeps an axis, -1 takes the rest), split. The first entry whose pattern
    matches a candidate name is used; unmatched names are compared as they are.

    `ignore` (globs): reference tensors deliberately not compared (not counted as missing), and candidate tensors
    that are not the reference's (not listed as unmatched). A list is the reference side alone."""
    import os

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            mapping = json.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read the mapping file ({e})") from None
    except ValueError as e:
        raise InputError(f"{path}: the mapping file is not valid JSON ({e})") from None
    return check_mapping(mapping, path)


_ENTRY_KEYS = {"candidate", "reference", "split", "layout", "transpose", "reshape"}
_LAYOUTS = {"NHWC": (0, 3, 1, 2), "NCHW": None, "BNC": None, "BCN": (0, 2, 1)}


def check_mapping(mapping, where: str = "mapping") -> dict:
    if not isinstance(mapping, dict) or set(mapping) - {"tensors", "tolerances", "ignore"}:
        raise InputError(f"{where}: expected a JSON object with keys tensors, tolerances, ignore")
    entries = mapping.get("tensors", [])
    if not isinstance(entries, list):
        raise InputError(f"{where}: 'tensors' must be a list of objects")
    for i, e in enumerate(entries):
        bad = sorted(set(e) - _ENTRY_KEYS) if isinstance(e, dict) else None
        if not isinstance(e, dict) or bad or not isinstance(e.get("candidate"), str):
            raise InputError(f"{where}: tensors[{i}] must be an object with 'candidate' and 'reference' or 'split'"
                             + (f" (unknown keys {bad})" if bad else ""))
        refs = e.get("reference")
        if "reference" in e and not (isinstance(refs, str) or (isinstance(refs, list) and refs
                                                               and all(isinstance(r, str) for r in refs))):
            raise InputError(f"{where}: tensors[{i}].reference must be a name or a list of names")
        if ("reference" in e) == ("split" in e):
            raise InputError(f"{where}: tensors[{i}] ({e['candidate']}) needs exactly one of 'reference' or 'split'")
        if "split" in e and not (isinstance(e["split"], dict) and isinstance(e["split"].get("into"), list)
                                 and all(isinstance(n, str) for n in e["split"]["into"])):
            raise InputError(f"{where}: tensors[{i}].split must be {{'axis': int, 'into': [reference names]}}")
        if "layout" in e and e["layout"] not in _LAYOUTS:
            raise InputError(f"{where}: tensors[{i}].layout {e['layout']!r}: one of {sorted(_LAYOUTS)}")
        if "transpose" in e and not _ints(e["transpose"]):
            raise InputError(f"{where}: tensors[{i}].transpose must be a list of axes, e.g. [0, 2, 1]")
        if "reshape" in e and not _ints(e["reshape"]):
            raise InputError(f"{where}: tensors[{i}].reshape must be a list of sizes (0 keeps an axis, -1 the rest)")
    tolerances = mapping.get("tolerances", {})
    if not isinstance(tolerances, dict):
        raise InputError(f"{where}: 'tolerances' must map a name (or glob) to a preset or a number")
    for k, v in tolerances.items():
        parse_tolerance(v)
    ignore = mapping.get("ignore", [])
    sides = ignore if isinstance(ignore, dict) else {"reference": ignore}
    if not isinstance(ignore, (list, dict)) or set(sides) - {"reference", "candidate"} or not all(
            isinstance(v, list) and all(isinstance(g, str) for g in v) for v in sides.values()):
        raise InputError(f"{where}: 'ignore' must be a list of reference names or globs, or "
                         "{\"reference\": [...], \"candidate\": [...]}")
    return mapping


def _ints(x) -> bool:
    return isinstance(x, list) and all(isinstance(a, int) for a in x)


def ignored(mapping: dict | None, side: str) -> list:
    """The `ignore` globs of one side ("reference" or "candidate") of a checked mapping."""
    ignore = (mapping or {}).get("ignore", [])
    return ignore.get(side, []) if isinstance(ignore, dict) else (ignore if side == "reference" else [])


def _pattern(template: str):
    """`blocks.{i}.attn` as a regex: each {name} one or more non-dot characters; a name seen again must repeat."""
    parts, seen, rx = re.split(r"\{(\w+)\}", template), set(), ""
    for i, p in enumerate(parts):
        if i % 2 == 0:
            rx += re.escape(p)
        else:
            rx += f"(?P={p})" if p in seen else f"(?P<{p}>[^.]+)"
            seen.add(p)
    return re.compile(rx + r"\Z")


def apply_mapping(candidate: Trace, mapping: dict | None) -> tuple[dict, dict]:
    """Candidate tensors under reference names: ({reference name: array}, {reference name: candidate name})."""
    out, origin = {}, {}
    entries = [(e, _pattern(e["candidate"])) for e in (mapping or {}).get("tensors", [])]
    skip = ignored(mapping, "candidate")
    for name, arr in candidate.items():
        if any(fnmatch.fnmatchcase(name, g) for g in skip):
            continue
        for e, rx in entries:
            m = rx.match(name)
            if not m:
                continue
            x = np.asarray(arr)
            axes = _LAYOUTS.get(e.get("layout")) if "layout" in e else None
            try:
                if axes is not None:
                    x = x.transpose(axes)
                if "transpose" in e:
                    x = x.transpose(e["transpose"])
                if "reshape" in e:  # 0 keeps that axis's size, -1 takes the rest (ONNX Reshape's rule)
                    x = x.reshape([x.shape[j] if d == 0 else d for j, d in enumerate(e["reshape"])])
                if "split" in e:
                    targets = [fill(t, m.groupdict()) for t in e["split"]["into"]]
                    pieces = np.split(x, len(targets), axis=e["split"].get("axis", -1))
                else:  # one reference name, or several that all are this tensor (a layer's output and its last step)
                    refs = e["reference"] if isinstance(e["reference"], list) else [e["reference"]]
                    targets = [fill(t, m.groupdict()) for t in refs]
                    pieces = [x] * len(targets)
            except (ValueError, IndexError, KeyError, TypeError) as err:
                raise InputError(f"mapping entry {e['candidate']!r} on candidate tensor {name} {tuple(x.shape)}: "
                                 f"{err}") from None
            for t, p in zip(targets, pieces):
                out[t], origin[t] = p, name
            break
        else:
            out.setdefault(name, arr)
            origin.setdefault(name, name)
    return out, origin


# ----------------------------------------------------------------------------------------------------------------------
# the comparison


@dataclass
class Row:
    step: int
    name: str
    kind: str
    shape: list
    status: str                 # "OK" | "NOT OK" | "SHAPE" (shapes differ) | "MISSING" | "FUSED" (the candidate's
    #                             runtime fused it away)
    max_abs: float | None = None
    rel: float | None = None    # max|Δ| / max|ref|
    nmse: float | None = None
    cosine: float | None = None
    band: str | None = None
    worst: dict | None = None   # {"index": [...], "reference": r, "candidate": c}
    bound: float | None = None  # the pass bound: max|Δ| (refvit, llm.c, a number) or NMSE (nmse); None: elementwise
    rule: str | None = None     # the bound in words: "max|Δ| ≤ 1.0e-04", "|Δ| ≤ 1e-4+1e-4|ref|", "nmse ≤ 1e-07",
                                # "exact"
    top1: float | None = None
    top5: float | None = None
    block: str = ""
    candidate_name: str | None = None
    candidate_shape: list | None = None  # a SHAPE row: the candidate's shape

    @property
    def failed(self) -> bool:
        return self.status in ("NOT OK", "SHAPE")


@dataclass
class Block:
    name: str
    verdict: str                # "ok" | "introduced" | "inherited"
    input: str | None
    input_nmse: float | None
    output: str
    output_nmse: float | None
    first_failing: str | None = None


@dataclass
class Comparison:
    reference: str
    candidate: str
    tolerance: str
    rows: list = field(default_factory=list)
    blocks: list = field(default_factory=list)
    unmatched: list = field(default_factory=list)   # candidate tensors with no reference counterpart
    likely_cause: object = None                      # hints.Hint for the first divergence, None: no known pattern
    ignored: list = field(default_factory=list)     # reference tensors the mapping's `ignore` leaves out
    only: list = field(default_factory=list)        # --only globs: the reference tensors selected (empty: all)
    not_selected: int = 0                           # reference tensors --only leaves out
    allow_missing: bool = False                     # --allow-missing: MISSING rows do not make it INCOMPLETE
    first_delta: object = field(default=None, repr=False)  # |cand − ref| of the first divergence (report heatmap)

    @property
    def missing(self) -> list:
        return [r.name for r in self.rows if r.status == "MISSING"]

    @property
    def verdict(self) -> str:
        """NOT OK (a compared tensor is off or has another shape), INCOMPLETE (a selected reference tensor was neither
        compared nor ignored, and --allow-missing was not given), else OK."""
        if any(r.failed for r in self.rows):
            return "NOT OK"
        return "INCOMPLETE" if self.missing and not self.allow_missing else "OK"

    @property
    def ok(self) -> bool:
        """The verdict is OK: every selected reference tensor compared (or explicitly ignored) and within tolerance."""
        return self.verdict == "OK"

    @property
    def partial(self) -> bool:
        """OK on purpose on part of the reference: --only selected some tensors, or --allow-missing let some go."""
        return bool(self.not_selected or (self.allow_missing and self.missing))

    @property
    def first_divergence(self) -> Row | None:
        return next((r for r in self.rows if r.failed), None)

    def block_of(self, name: str) -> Block | None:
        row = next((r for r in self.rows if r.name == name), None)
        return next((b for b in self.blocks if row is not None and b.name == row.block), None)

    def to_dict(self) -> dict:
        first = self.first_divergence
        block = self.block_of(first.name) if first else None
        return _finite({
            "reference": self.reference, "candidate": self.candidate, "tolerance": self.tolerance,
            "verdict": self.verdict, "ok": self.ok, "partial": self.partial, "summary": summary(self),
            "first_divergence": None if first is None else {**asdict(first), "verdict": block.verdict if block
                                                             else None},
            "compared": sum(r.status in ("OK", "NOT OK") for r in self.rows),
            "fused": [r.name for r in self.rows if r.status == "FUSED"],
            "failed": sum(r.status == "NOT OK" for r in self.rows),
            "shape_mismatches": [r.name for r in self.rows if r.status == "SHAPE"],
            "missing": self.missing, "ignored": self.ignored, "only": self.only, "not_selected": self.not_selected,
            "allow_missing": self.allow_missing, "unmatched": self.unmatched,
            "likely_cause": None if first is None else (self.likely_cause.to_dict() if self.likely_cause
                                                        else "no known pattern"),
            "rows": [asdict(r) for r in self.rows], "blocks": [asdict(b) for b in self.blocks]})


def _finite(x):
    """JSON has no NaN or infinity: a non-finite float becomes null (the row's status says what happened)."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


_LAYER = re.compile(r"^(.*?\.(?:layer|layers)\.\d+)(?:\.|$)")
_STEM = re.compile(r"^(.*?\.(?:embeddings|embedder|embedding))(?:\.|$)")


def block_of(name: str) -> str:
    """The block a module belongs to: an encoder layer (`deit.encoder.layer.3`), an embedding, or itself."""
    for rx in (_LAYER, _STEM):
        m = rx.match(name)
        if m:
            return m.group(1)
    return name


def _stats(ref: np.ndarray, cand: np.ndarray) -> dict:
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    d = c - r
    with np.errstate(invalid="ignore", over="ignore"):
        ad = np.abs(d)
        if ad.size == 0:
            return {"max_abs": 0.0, "rel": 0.0, "nmse": 0.0, "cosine": 1.0, "worst": None, "diff": d}
        bad = ~np.isfinite(ad)
        flat = int(np.argmax(np.where(bad, np.inf, ad)))
        idx = [int(i) for i in np.unravel_index(flat, d.shape)]
        max_abs = float(ad.flat[flat]) if not bad.any() else float("nan")
        ref_max = float(np.max(np.abs(r)))
        denom = float(np.sum(r * r))
        err = float(np.sum(d * d))
        nmse = err / denom if denom > 0 else (0.0 if err == 0 else float("inf"))
        norms = float(np.linalg.norm(r) * np.linalg.norm(c))
        cosine = float(np.sum(r * c) / norms) if norms > 0 else (1.0 if err == 0 else 0.0)
    return {"max_abs": max_abs, "rel": max_abs / ref_max if ref_max > 0 else (0.0 if max_abs == 0 else float("inf")),
            "nmse": nmse if np.isfinite(nmse) else float("nan"), "cosine": cosine,
            "worst": {"index": idx, "reference": float(r.flat[flat]), "candidate": float(c.flat[flat])}, "diff": d}


def _topk(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement (share of rows with the same argmax) and top-5 overlap (mean |top5 ∩ top5| / 5)."""
    axis = 1 if ref.ndim == 4 else -1
    r = np.moveaxis(ref.astype(np.float64), axis, -1).reshape(-1, ref.shape[axis])
    c = np.moveaxis(cand.astype(np.float64), axis, -1).reshape(-1, ref.shape[axis])
    top1 = float(np.mean(r.argmax(-1) == c.argmax(-1)))
    k = min(5, r.shape[-1])
    rk = np.argsort(-r, axis=-1, kind="stable")[:, :k]
    ck = np.argsort(-c, axis=-1, kind="stable")[:, :k]
    top5 = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(rk, ck)]))
    return top1, top5


def _is_float64(x: np.ndarray) -> bool:
    return x.dtype == np.float64


def compare(reference: Trace, candidate: Trace, tolerance="refvit", mapping: dict | None = None,
            overrides: dict | None = None, reference_name: str = "reference", candidate_name: str = "candidate",
            only=(), allow_missing: bool = False) -> Comparison:
    """Walk `reference` in execution order and compare each tensor with the candidate's of the same name (after
    `mapping`, see load_mapping). `tolerance`: a preset or number; `overrides`: {name or glob: tolerance}, on top of
    the mapping's "tolerances"; `only`: globs, compare just the reference tensors they match; `allow_missing`: a
    reference tensor the candidate lacks does not make the verdict INCOMPLETE (`Comparison.verdict`).

    A tensor whose shapes differ is a SHAPE row (failed; the walk goes on). Raises InputError when no tensor is in
    common (nothing could be checked) or `only` selects nothing.
    Why so many parameters: `refvit compare`'s options, each a keyword with a default."""
    default = parse_tolerance(tolerance)
    rules = [(k, parse_tolerance(v)) for k, v in {**(mapping or {}).get("tolerances", {}), **(overrides or {})}.items()]
    ignore, only = ignored(mapping, "reference"), [only] if isinstance(only, str) else list(only or ())
    # a preset's capture names what it could not record (no module to hook): not expected of the candidate
    ignore = list(ignore) + list(candidate.meta.get("not_recorded") or [])
    cand, origin = apply_mapping(candidate, mapping)
    fused = candidate.meta.get("fused") or {}  # capture_onnx(optimized=True): boundaries ORT's fusions removed
    result = Comparison(reference_name, candidate_name, default.describe(), only=only, allow_missing=allow_missing)
    for step, (name, ref) in enumerate(reference.items()):
        if only and not any(fnmatch.fnmatchcase(name, g) for g in only):
            result.not_selected += 1
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in ignore):
            result.ignored.append(name)
            continue
        row = Row(step, name, reference.kind(name), list(ref.shape), "MISSING", block=block_of(reference.module(name)))
        result.rows.append(row)
        if name not in cand:
            row.status = "FUSED" if name in fused else "MISSING"
            continue
        c = np.asarray(cand[name])
        row.candidate_name = origin.get(name, name)
        if c.shape != ref.shape:
            row.status, row.candidate_shape = "SHAPE", list(c.shape)
            row.rule = ("same number of elements: a layout difference? add a 'layout'/'transpose' mapping entry"
                        if c.size == ref.size else "")
            continue
        _compare_row(row, ref, c, next((t for g, t in reversed(rules) if fnmatch.fnmatchcase(name, g)), default))
    if only and not result.rows and not result.ignored:
        raise InputError(f"--only {' '.join(only)}: no reference tensor matches ({reference.names[:4]}…)")
    matched = set(origin.get(n, n) for n in (r.name for r in result.rows if r.status not in ("MISSING", "FUSED")))
    skip = ignored(mapping, "candidate")
    result.unmatched = [n for n in candidate if n not in matched and not any(fnmatch.fnmatchcase(n, g) for g in skip)]
    if not any(r.status in ("OK", "NOT OK", "SHAPE") for r in result.rows):
        raise InputError(f"nothing to compare: no tensor of the candidate ({len(candidate)}: {candidate.names[:4]}…) "
                         f"matches a reference name ({reference.names[:4]}…): name them like the reference, or pass a "
                         "mapping (--map)")
    result.blocks = attribute(result.rows)
    first = result.first_divergence
    if first is not None:
        from .hints import likely_cause

        result.likely_cause = likely_cause(reference, cand, first.name)
        if first.status == "NOT OK":  # kept for the report's heatmap
            result.first_delta = np.abs(np.asarray(cand[first.name], np.float64)
                                        - np.asarray(reference[first.name], np.float64)).astype(np.float32)
    return result


def _compare_row(row: Row, ref: np.ndarray, c: np.ndarray, tol: Tolerance) -> None:
    """Fill one row's statistics and status (OK / NOT OK) for tensors of the same shape."""
    s = _stats(ref, c)
    ok, bound, rule = _passes(tol, ref.astype(np.float64), s["diff"], s["nmse"], _is_float64(ref) and _is_float64(c))
    if ref.dtype.kind in "biu" or c.dtype.kind in "biu":
        ok, bound, rule = bool(np.array_equal(ref, c)), 0.0, "exact"
    ok = ok and np.isfinite(s["max_abs"])
    row.status = "OK" if ok else "NOT OK"
    row.max_abs, row.rel, row.nmse, row.cosine, row.worst = s["max_abs"], s["rel"], s["nmse"], s["cosine"], s["worst"]
    row.bound, row.rule, row.band = bound, rule, band(s["nmse"])
    if row.name.split(".")[-1].endswith("logits") and ref.ndim >= 2 and ref.dtype.kind == "f":
        row.top1, row.top5 = _topk(ref, c)


def attribute(rows: list) -> list:
    """Per block (consecutive rows of one block): introduced, inherited or ok (see the module docstring)."""
    blocks: list = []
    groups: list = []
    for r in rows:
        if r.status in ("MISSING", "FUSED"):
            continue
        if not groups or groups[-1][0] != r.block:
            groups.append((r.block, []))
        groups[-1][1].append(r)
    prev, prev_shape = None, False
    for name, members in groups:
        out = members[-1]
        failing = next((r for r in members if r.failed), None)
        shape = any(r.status == "SHAPE" for r in members)
        if failing is None:
            verdict = "ok"
        elif prev is None:
            verdict = "introduced"
        elif shape:  # a shape error is introduced where shapes first differ, inherited after
            verdict = "inherited" if prev_shape else "introduced"
        else:
            worst = max((r.nmse for r in members if r.nmse is not None and np.isfinite(r.nmse)), default=out.nmse)
            grew = _ratio(max(out.nmse if out.nmse is not None else 0, worst or 0), prev.nmse)
            verdict = "introduced" if grew >= INTRODUCED_NMSE_RATIO else "inherited"
        blocks.append(Block(name, verdict, prev.name if prev else None, prev.nmse if prev else None, out.name,
                            out.nmse, failing.name if failing else None))
        prev, prev_shape = out, prev_shape or shape
    return blocks


def _ratio(a, b) -> float:
    if a is None or b is None or not np.isfinite(a):
        return float("inf")
    if b <= 0 or not np.isfinite(b):
        return float("inf") if a > 0 and np.isfinite(b) else 0.0
    return a / b


# ----------------------------------------------------------------------------------------------------------------------
# report


def _block_worst(result: Comparison, block: Block):
    vals = [r.nmse for r in result.rows if r.block == block.name and r.nmse is not None]
    return max(vals) if vals else None


def _f(x, fmt="{:.1e}") -> str:
    return "-" if x is None else ("nan" if x != x else fmt.format(x))


def summary(result: Comparison) -> str:
    """Exactly what was checked: reference tensors compared, failed, missing, ignored, not selected, fused."""
    rows = result.rows
    total = len(rows) + len(result.ignored) + result.not_selected
    count = {k: sum(r.status == k for r in rows) for k in ("OK", "NOT OK", "SHAPE", "MISSING", "FUSED")}
    parts = [f"{count['OK'] + count['NOT OK'] + count['SHAPE']} of {total} reference tensors compared: "
             f"{count['OK']} OK, {count['NOT OK']} NOT OK, {count['SHAPE']} SHAPE"]
    if result.not_selected:
        parts.append(f"{result.not_selected} not selected (--only {' '.join(result.only)})")
    if result.ignored:
        parts.append(f"{len(result.ignored)} ignored (the mapping's ignore)")
    if count["MISSING"]:
        parts.append(f"{count['MISSING']} missing in the candidate"
                     + (" (allowed: --allow-missing)" if result.allow_missing else ""))
    if count["FUSED"]:
        parts.append(f"{count['FUSED']} FUSED by the candidate's runtime (not compared)")
    return "; ".join(parts)


def format_report(result: Comparison, verbose: bool = False) -> str:
    """The table (one row per tensor, OK / NOT OK / SHAPE like llm.c), what was checked, the verdict, and for NOT OK
    the first divergence and the blocks that failed.
    Why so long: the report's sections in the order they print."""
    first = result.first_divergence
    width = max([len(r.name) for r in result.rows] + [6])
    lines = [f"reference: {result.reference}", f"candidate: {result.candidate}", f"tolerance: {result.tolerance}", "",
             f"{'step':>4}  {'tensor':<{width}}  {'max|Δ|':>8}  {'rel':>8}  {'NMSE':>8}  {'cosine':>9}  {'bound':>9}"
             f"  status"]
    blank = f"{'':>8}  {'':>8}  {'':>8}  {'':>9}  {'':>9}"
    for r in result.rows:
        mark = "  <-- first divergence" if r is first else ""
        extra = f"  top1 {r.top1:.0%} top5 {r.top5:.0%}" if r.top1 is not None else ""
        if r.status == "FUSED":
            lines.append(f"{r.step:>4}  {r.name:<{width}}  {blank}  FUSED (fused away by the candidate's runtime: "
                         "not compared)")
        elif r.status == "MISSING":
            if verbose:
                lines.append(f"{r.step:>4}  {r.name:<{width}}  {blank}  missing in candidate")
        elif r.status == "SHAPE":
            lines.append(f"{r.step:>4}  {r.name:<{width}}  {blank}  SHAPE reference {tuple(r.shape)}, candidate "
                         f"{tuple(r.candidate_shape)}{mark}")
        else:
            lines.append(f"{r.step:>4}  {r.name:<{width}}  {_f(r.max_abs):>8}  {_f(r.rel):>8}  {_f(r.nmse):>8}  "
                         f"{_f(r.cosine, '{:.6f}'):>9}  {r.rule:>9}  {r.status}{mark}{extra}")
    missing = result.missing
    lines += ["", summary(result) + (" (--verbose lists them)" if missing and not verbose else "") + "; "
              f"{len(result.unmatched)} candidate tensors not in the reference"
              + (f": {', '.join(result.unmatched[:6])}{' …' if len(result.unmatched) > 6 else ''}"
                 if result.unmatched else "")]
    if result.verdict == "INCOMPLETE" or (missing and not result.allow_missing):
        lines.append(f"{'INCOMPLETE' if first is None else 'Also incomplete'}: {len(missing)} reference tensor"
                     f"{'s were' if len(missing) > 1 else ' was'} neither compared nor ignored (e.g. "
                     f"{', '.join(missing[:3])}), so {'this is not a pass' if first is None else 'more may be wrong'}"
                     ": name the candidate's tensors like the reference or map them (--map), ignore what the port "
                     "does not produce (the mapping's \"ignore\"), or check part on purpose (--only GLOB, "
                     "--allow-missing)")
    if first is None:
        if result.verdict == "OK":
            lines.append("OK (partial check: only what is counted above as compared was checked): every compared "
                         "tensor is within tolerance" if result.partial else
                         "OK: every compared tensor is within tolerance, and every reference tensor was compared"
                         + (" or ignored" if result.ignored else ""))
        return "\n".join(lines)
    block = result.block_of(first.name)
    lines += ["", f"FIRST DIVERGENCE: {first.name} (step {first.step}, {first.kind})"
              + (f", from candidate tensor {first.candidate_name}" if first.candidate_name != first.name else "")]
    if first.status == "SHAPE":
        lines.append(f"  SHAPE: reference {tuple(first.shape)}, candidate {tuple(first.candidate_shape)}"
                     + (f" ({first.rule})" if first.rule else ""))
    else:
        w = first.worst or {}
        lines.append(f"  max|Δ| {_f(first.max_abs)} at {tuple(w.get('index', ()))}: reference "
                     f"{_g(w.get('reference'))}, candidate {_g(w.get('candidate'))}; NMSE {_f(first.nmse)} "
                     f"({first.band}), cosine {_f(first.cosine, '{:.6f}')}")
    if first.status == "SHAPE":
        lines.append(f"  block {block.name}: {block.verdict.upper()} the shape difference" + (
            f" (its input {block.input} has the reference's shape)" if block.input and block.verdict == "introduced"
            else "" if block.input else " (the first block)"))
    else:
        lines.append(f"  block {block.name}: {block.verdict.upper()} the error" + (
            f" (input {block.input}: NMSE {_f(block.input_nmse)}; inside the block up to "
            f"{_f(_block_worst(result, block))})" if block.input else " (the first block)"))
    hint = result.likely_cause
    if first.status != "SHAPE":  # the hints compare values; a shape difference speaks for itself
        lines += [f"LIKELY CAUSE: {hint.cause}", f"  evidence: {hint.evidence}"] if hint else [
            "LIKELY CAUSE: no known pattern (checked: another reference tensor, transpose, q/k swap, attention scale, "
            "permutation, qkv split, constant scale, one-pixel shift, tanh GELU, epsilon, per-channel affine, "
            "resampling)"]
    bad = [b for b in result.blocks if b.verdict != "ok"]
    lines += ["", "blocks with a NOT OK or SHAPE tensor (NMSE: block input -> block output):"]
    for b in bad[: None if verbose else 12]:
        lines.append(f"  {b.verdict:<10}  {b.name:<{width}}  {_f(b.input_nmse)} -> {_f(b.output_nmse)}")
    if len(bad) > 12 and not verbose:
        lines.append(f"  … {len(bad) - 12} more")
    failed = sum(r.status == "NOT OK" for r in result.rows)
    shapes = sum(r.status == "SHAPE" for r in result.rows)
    lines.append(f"NOT OK: {failed} tensor{'s' * (failed != 1)} outside tolerance, {shapes} with another shape; the "
                 f"first divergence is {first.name}")
    return "\n".join(lines)


def _g(x) -> str:
    return "-" if x is None else f"{x:.6g}"
