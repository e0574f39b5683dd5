"""Run refvit on golden cases written by `golden/generate.py` and compare with the framework's tensors.

Used by `refvit verify` and by the test suite; every tensor within the golden tolerance (refvit/tolerance.py,
docs/DESIGN.md §7).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import synthetic
from .errors import RefvitError
from .model import from_pretrained, from_state_dict
from .tolerance import TOLERANCE, allowed_error  # noqa: F401 (TOLERANCE: refvit.verify's name for it)



def find_golden_dir(explicit: str | os.PathLike | None = None) -> Path:
    """`explicit`, else golden/ of the checkout refvit is imported from, else ./golden."""
    candidates = [Path(explicit)] if explicit else [Path(__file__).resolve().parent.parent / "golden",
                                                     Path.cwd() / "golden"]
    for c in candidates:
        if (c / "cases").is_dir():
            return c
    raise RefvitError(f"no golden cases found (looked for cases/ in {', '.join(map(str, candidates))}); "
                      "pass --golden DIR")


def list_cases(golden_dir: Path) -> list[Path]:
    return sorted(p for p in (Path(golden_dir) / "cases").iterdir() if (p / "meta.json").is_file())


def is_real_size(case_dir: Path) -> bool:
    """Whether a golden case is a real-size model (DeiT-base, BiT-50@448 …): its runs each get a fresh process."""
    return bool(json.loads((Path(case_dir) / "meta.json").read_text()).get("real_size"))


class _Upcast(dict):
    """A params node (a dict, as the forward checks) whose float32 leaves come out as float64 copies at each use."""

    def __getitem__(self, key):
        return _upcast(dict.__getitem__(self, key))

    def get(self, key, default=None):
        return self[key] if key in self else default


class _UpcastList(list):
    """A list of numbered children, each coming out upcast."""

    def __getitem__(self, i):
        return _upcast(list.__getitem__(self, i))

    def __iter__(self):
        return (_upcast(v) for v in list.__iter__(self))


def _upcast(v):
    if isinstance(v, dict):
        return _Upcast(v)
    if isinstance(v, list):
        return _UpcastList(v)
    return v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v


def _exact_in_float32(meta: dict, shapes: dict) -> bool:
    """Whether the family's load-time preparation only renames, concatenates and reshapes (ViT, DeiT, BEiT without
    BatchNorm): then float64 params are exactly the float32 ones cast, and can be cast at each use instead."""
    arch = meta["architecture"]
    return (arch.startswith(("ViT", "DeiT")) or arch.startswith(("Beit", "Data2VecVision"))
            and not any("running_mean" in n for n in shapes))


def load_case_model(case_dir: Path, dtype: str, backend: str):
    """The case's model: from its committed save_pretrained files, or rebuilt from the seed (real-size cases).

    A real-size float64 model of a family whose preparation is exact in float32 keeps float32 params and casts each to
    float64 when the forward uses it (bit-identical: float32 -> float64 is exact): DeiT-base's float64 weights alone
    are 690 MB, and verify stays under 600 MiB (docs: the verify command)."""
    meta = json.loads((case_dir / "meta.json").read_text())
    if (case_dir / "model.safetensors").exists() or (case_dir / "pytorch_model.bin").exists():
        return from_pretrained(case_dir, dtype=dtype, backend=backend, architecture=meta["architecture"]), meta
    config = json.loads((case_dir / "config.json").read_text())
    shapes = synthetic.shapes_for(config, meta["architecture"])
    if dtype == "float64" and _exact_in_float32(meta, shapes):
        model, meta = _seeded(case_dir, config, shapes, meta, "float32", backend)
        model.params, model.dtype = _Upcast(model.params), np.dtype("float64")
        return model, meta
    return _seeded(case_dir, config, shapes, meta, dtype, backend)


def _standardised_in_float64(meta: dict) -> bool:
    """Whether the family's load-time preparation makes a float64 copy of every convolution weight from the drawn
    tensors whatever their dtype (BiT's weight standardisation): then the draw can stay float32, the same bits."""
    return meta["architecture"].startswith("Bit")


def _seeded(case_dir, config, shapes, meta, dtype, backend):
    # drawn one tensor at a time (each has its own stream: the same values) and cast at once, so a float64 run never
    # holds the float32 draw and the float64 weights together (DeiT-base: 345 + 690 MB). BiT standardises each
    # convolution weight into a new float64 array from the draw whatever its dtype (exact from float32), so its draw
    # stays float32: BiT-50's load holds 97 + 195 MB, not 195 + 195 MB
    tensors = {}
    cast = "float32" if _standardised_in_float64(meta) else dtype
    for name, shape in shapes.items():
        if name in tensors:
            continue
        t = synthetic.random_state_dict({name: shape}, meta["seed"])[name]
        rows = _qkv_rows(name, shapes)
        if rows and t.dtype.kind == "f":  # q, k, v drawn into the row blocks of one array: fuse_qkv keeps it as is
            block = np.empty((len(rows) * shape[0],) + tuple(shape[1:]), cast)
            for i, sibling in enumerate(rows):
                block[i * shape[0]:(i + 1) * shape[0]] = (
                    t if sibling == name else synthetic.random_state_dict({sibling: shape}, meta["seed"])[sibling])
                tensors[sibling] = block[i * shape[0]:(i + 1) * shape[0]]
            continue
        tensors[name] = t if t.dtype.kind != "f" else t.astype(cast, copy=False)
    model = from_state_dict(config, tensors, meta["architecture"], dtype, backend, source=str(case_dir))
    del tensors
    model.checkpoint = None  # verify never saves: the tensors as drawn need not outlive the load-time preparation
    return model, meta


def _qkv_rows(name: str, shapes: dict) -> list:
    """The attention's query, key and value weight names when `name` is its query weight and all three have one
    shape (ViT, DeiT, BEiT: what `fuse_qkv` fuses), else []."""
    from .models.common import QKV

    stem, dot, leaf = name.rpartition(f".{QKV[0]}.")
    rows = [f"{stem}.{n}.{leaf}" for n in QKV] if dot and leaf == "weight" else []
    return rows if rows and all(shapes.get(r) == shapes[name] for r in rows) else []


def _ours(out, key: str):
    """Our array for a golden key like "hidden_states/3" or "intermediates/deit.encoder.layer.0.output"."""
    if key.startswith("intermediates/"):
        return (out.intermediates or {}).get(key[len("intermediates/"):])
    head, _, index = key.partition("/")
    value = out.get(head)
    if value is None:
        return None
    return value[int(index)] if index else value


@dataclass
class CaseResult:
    case: str
    architecture: str
    backend: str
    dtype: str
    seconds: float
    errors: dict = field(default_factory=dict)     # key -> (max abs error, allowed)
    problems: list = field(default_factory=list)   # missing outputs etc.
    not_verified: str = ""                         # why nothing was compared (no golden for this Pillow): not a failure

    @property
    def ok(self) -> bool:
        return not self.problems and all(e <= tol for e, tol in self.errors.values())

    def ratio(self, err: float, tol: float) -> float:
        return err / tol if tol > 0 else (0.0 if err == 0 else float("inf"))

    def by_output(self) -> dict:
        """Worst error/allowed ratio per top-level output (hidden_states/3 -> hidden_states)."""
        worst: dict = {}
        for key, (err, tol) in self.errors.items():
            group = key.split("/")[0]
            if group not in worst or self.ratio(err, tol) > self.ratio(*worst[group]):
                worst[group] = (err, tol)
        return worst


def run_case(case_dir: Path, dtype: str = "float32", backend: str = "numba", intermediates: bool = True) -> CaseResult:
    """Run one golden case; compare every recorded output (and intermediate) with the framework's."""
    case_dir = Path(case_dir)
    model, meta = load_case_model(case_dir, dtype, backend)
    with np.load(case_dir / "inputs.npz") as z:
        inputs = {k: z[k] for k in z.files}
    call = {k: v for k, v in meta["call"].items() if k != "bool_masked_pos"}
    with np.load(case_dir / "outputs.npz") as z:
        recorded = {f.split("/")[1] for f in z.files if f.startswith(dtype + "/")}
    # the hidden states and attention maps are asked for when the golden recorded some in this dtype (BiT-50@448's
    # float64 feature maps, not recorded, are 55 MB held to the end of the forward for nothing)
    kwargs = dict(output_hidden_states="hidden_states" in recorded, output_attentions="attentions" in recorded,
                  output_intermediates=intermediates and meta.get("intermediates", False), **call)
    model(**inputs, **kwargs)  # warm-up: JIT compilation is not forward time
    t0 = time.perf_counter()
    out = model(**inputs, **kwargs)
    seconds = time.perf_counter() - t0
    result = CaseResult(case_dir.name, meta["architecture"], backend, dtype, seconds)
    with np.load(case_dir / "outputs.npz") as z:
        for full in z.files:
            ref_dtype, _, key = full.partition("/")
            if ref_dtype != dtype or (key.startswith("intermediates/") and not kwargs["output_intermediates"]):
                continue
            ref = z[full]
            ours = _ours(out, key)
            if ours is None:
                result.problems.append(f"{key}: refvit produced no such output")
                continue
            if ours.shape != ref.shape:
                result.problems.append(f"{key}: shape {ours.shape} vs reference {ref.shape}")
                continue
            err = float(np.abs(ours.astype(np.float64) - ref).max(initial=0.0))
            result.errors[key] = (err, allowed_error(ref, dtype))
    return result


# --- one run at a time in a child process (refvit verify) ------------------------------------------------------------


RESTART_MIB = 256  # a worker whose resident set is above this after a run is replaced before the next run


def _resident_mib() -> float:
    """This process's resident set now, MiB (Linux /proc; elsewhere its peak so far, which only errs towards a
    restart)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def _give_freed_arrays_back() -> None:
    """In verify's worker process only (its own process, nothing else runs there): every allocation of 1 MiB or more
    gets its own mapping, so an array freed mid-run goes back to the system at once.

    glibc raises its mmap threshold (up to 32 MiB) each time a mapped block is freed, after which arrays of a few MiB
    come from the heap, whose freed holes it keeps. Measured on BiT-50@448 in float64 (NumPy backend), the largest
    NumPy-side peak: 590-665 MB resident depending on where refvit was imported from, 472 MB with the threshold fixed
    (docs/golden.md). Not glibc (macOS, musl): no mallopt, or one that does nothing; nothing changes."""
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


class _ChildTraceback(Exception):
    """The traceback of an unexpected error in the worker, shown as the cause of the error raised again here."""


def _serve(conn) -> None:
    """The worker's loop: (function name, args) in, ("ok", result) or ("error", exception, traceback) out, each with
    the worker's resident set after the run; None ends it. Ctrl-C is the parent's to handle (it ends the worker)."""
    import pickle
    import signal
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _give_freed_arrays_back()
    jobs = {"run_case": run_case, "run_processing_case": run_processing_case, "run_digits": run_digits}
    while (job := conn.recv()) is not None:
        name, args = job
        try:
            reply = ("ok", jobs[name](*args), "")
        except Exception as e:
            error = e
            try:
                pickle.dumps(error)
            except Exception:
                error = RuntimeError(f"{type(e).__name__}: {e}")
            reply = ("error", error, traceback.format_exc())
        conn.send(reply + (_resident_mib(),))


class Worker:
    """verify's runs, one at a time, in a child process, so that one run's memory does not stay with the next: a
    real-size case's run always starts in a fresh process, and a process left above RESTART_MIB after a run is
    replaced. Memory freed by a run is not all given back to the system by the allocator (pages of freed arrays,
    Numba's compiled code); a new process gives it all back. A context manager: leaving it (Ctrl-C included) ends
    the process.

    Ctrl-C: within the block (in the main thread) SIGINT also sets `interrupted`, and every call checks it. Python
    raises KeyboardInterrupt wherever the main thread is when the signal lands, and one raised inside a finalizer
    (the `__del__` of a closed worker's pipe or process, run as a worker is replaced) is printed and dropped, after
    which verify would run to the end and exit 0. The flag makes the next call, or leaving the block, raise it."""

    def __init__(self):
        import multiprocessing

        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited from this one
        self._process = self._conn = None
        self._fresh = True
        self.started = 0  # processes started so far
        self.interrupted = False
        self._previous_handler = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def _on_interrupt(self, signum, frame):
        self.interrupted = True
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
        self.close()
        if self.interrupted and exc[0] is None:  # dropped after the last call: still an interrupted run
            raise KeyboardInterrupt

    def close(self) -> None:
        if self._process is None:
            return
        process, conn, self._process, self._conn = self._process, self._conn, None, None
        try:
            conn.send(None)
            process.join(timeout=5)
        except (OSError, ValueError):
            pass
        if process.is_alive():
            process.terminate()
            process.join()
        conn.close()

    def call(self, name: str, *args, fresh: bool = False):
        """`name(*args)` (run_case, run_processing_case or run_digits) in the worker; `fresh`: in a new process."""
        if self.interrupted:  # a Ctrl-C whose KeyboardInterrupt was dropped (the class's docstring)
            raise KeyboardInterrupt
        if self._process is None or (fresh and not self._fresh):
            self.close()
            conn, child = self._context.Pipe()
            process = self._context.Process(target=_serve, args=(child,), name="refvit verify worker", daemon=True)
            try:
                process.start()
            finally:  # a process that did not start is not ours to end
                child.close()
            self._process, self._conn = process, conn
            self.started += 1
        self._fresh = False
        self._conn.send((name, args))
        try:
            kind, value, trace, resident = self._conn.recv()
        except EOFError:
            code = self._process.exitcode
            self.close()
            raise RuntimeError(f"the process running {name}{tuple(str(a) for a in args)} ended (exit code "
                               f"{code}) before it answered") from None
        if resident > RESTART_MIB:
            self.close()
        if self.interrupted:
            raise KeyboardInterrupt
        if kind == "error":
            if isinstance(value, (RefvitError, OSError)):
                raise value
            raise value from _ChildTraceback("in the worker process:\n" + trace)
        return value


TABLE_WIDTH = 120  # the default table fits a 120-column terminal; --wide shows every column in full


class Table:
    """verify's table, one row at a time as each run finishes: the columns are sized from the case names, known before
    anything runs. Default: case, backend, dtype, forward ms, status, the worst error per output (cut to fit
    TABLE_WIDTH); wide: the architecture too, and nothing cut."""

    def __init__(self, names: list[str], wide: bool = False):
        self.case_w, self.wide = max([len(n) for n in names] + [4]), wide
        self.arch_w = 38

    def _line(self, case, arch, backend, dtype, ms, status, rest) -> str:
        """One table row. Why so many parameters: one per column of the table, in the order they are printed."""
        line = f"{case:<{self.case_w}}  " + (f"{arch:<{self.arch_w}}  " if self.wide else "") + \
            f"{backend:<7}  {dtype:<7}  {ms:>9}  {status:<4}  {rest}"
        line = line.rstrip()
        return line if self.wide or len(line) <= TABLE_WIDTH else line[:TABLE_WIDTH - 1] + "…"

    def header(self) -> str:
        return self._line("case", "architecture", "backend", "dtype", "fwd ms", "", "max abs error per output")

    def rows(self, r: CaseResult) -> list[str]:
        """The run's row, then a line for each problem or out-of-bound error (never cut)."""
        if r.not_verified:
            lines = [self._line(r.case, r.architecture, r.backend, r.dtype, "", "--", r.not_verified)]
        else:
            parts = [f"{g} {e:.1e}" for g, (e, tol) in sorted(r.by_output().items())]
            lines = [self._line(r.case, r.architecture, r.backend, r.dtype, f"{r.seconds * 1e3:.1f}",
                                "ok" if r.ok else "FAIL", ", ".join(parts))]
        lines += [f"{r.case} [{r.backend}/{r.dtype}]: {p}" for p in r.problems]
        lines += [f"{r.case} [{r.backend}/{r.dtype}]: {key} max abs error {err:.3g} > allowed {tol:.3g}"
                  for key, (err, tol) in r.errors.items() if not err <= tol]
        return lines


def format_table(results: list[CaseResult], wide: bool = True) -> str:
    """One row per (case, backend, dtype): worst max-abs error of each output (with its allowed bound) and time."""
    table = Table([r.case for r in results], wide)
    return "\n".join([table.header()] + [line for r in results for line in table.rows(r)])


PROCESSING_TOLERANCE = 1e-6  # pixel values after normalize; the uint8 resize/crop stage must match exactly


def list_processing_cases(golden_dir: Path) -> list[Path]:
    root = Path(golden_dir) / "processing"
    return sorted(p for p in root.iterdir() if (p / "meta.json").is_file()) if root.is_dir() else []


@dataclass
class ProcessingGolden:
    """The expected arrays of a processing case for one Pillow, or why there are none.

    golden/processing_cases.py writes <case>/expected.npz with its PRIMARY Pillow and, run under another Pillow
    X.Y, <case>/pillow-X.Y/meta.json (+ expected.npz where that Pillow's arrays differ). Resampling and the
    bundled libjpeg change between Pillow releases, so a golden is only the truth for the Pillow (major.minor)
    that wrote it."""
    pillow: str                  # the installed (or given) Pillow, major.minor
    meta: dict                   # the meta.json of the chosen golden (the primary one when there is none)
    expected: Path | None        # the expected.npz to compare with; None: not verifiable under this Pillow
    reason: str = ""             # why not, when expected is None

    @property
    def not_verified(self) -> str:
        return f"not verified for Pillow {self.pillow}: {self.reason}" if self.expected is None else ""


def _pillow_key(version: str) -> str:
    return ".".join(version.split(".")[:2])


def processing_golden(case_dir: Path, pillow_version: str | None = None) -> ProcessingGolden:
    """The golden of `case_dir` for `pillow_version` (default: the installed Pillow)."""
    if pillow_version is None:
        import PIL

        pillow_version = PIL.__version__
    case_dir = Path(case_dir)
    key = _pillow_key(pillow_version)
    primary = json.loads((case_dir / "meta.json").read_text())
    candidates = {_pillow_key(primary["pillow_version"]): (case_dir, primary)}
    for variant in sorted(case_dir.glob("pillow-*/meta.json")):
        meta = json.loads(variant.read_text())
        candidates[_pillow_key(meta["pillow_version"])] = (variant.parent, meta)
    if key not in candidates:
        return ProcessingGolden(key, primary, None, f"its resampling may differ from the Pillows the goldens were "
                                f"written with ({', '.join(sorted(candidates, key=_version_tuple))}); write one "
                                f"with golden/generate.py --processing run under Pillow {key}")
    _, meta = candidates[key]
    return ProcessingGolden(key, meta, case_dir / meta.get("expected_file", "expected.npz"))


def _version_tuple(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in key.split("."))


def _decoded_sha256(image) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(np.asarray(image)).tobytes()).hexdigest()


def run_processing_case(case_dir: Path) -> CaseResult:
    """Run refvit's processor on a golden processing case's photos; compare with transformers' PIL backend.

    Under a Pillow with no golden (or one whose JPEG decoder gives other pixels than the golden's), the result
    is `not_verified` with the reason: refvit cannot be checked there, which is neither a pass nor a failure."""
    from PIL import Image

    from .processing import ImageProcessor, load_image

    case_dir = Path(case_dir)
    golden = processing_golden(case_dir)
    meta = golden.meta
    golden_dir = case_dir.parent.parent
    images = [load_image(golden_dir / e["file"]) if e["load"] == "load_image" else Image.open(golden_dir / e["file"])
              for e in meta["images"]]
    processor = ImageProcessor.from_pretrained(case_dir)
    result = CaseResult(case_dir.name, type(processor).__name__, "pil", "float32", 0.0)
    if golden.expected is None:
        result.not_verified = golden.not_verified
        return result
    for entry, image in zip(meta["images"], images):
        if _decoded_sha256(image) != entry["decoded_sha256"]:
            result.not_verified = (f"not verified for Pillow {golden.pillow}: this Pillow decodes {entry['file']} "
                                   f"differently from the one that wrote the golden (Pillow {meta['pillow_version']}, "
                                   f"libjpeg {meta.get('libjpeg_version')}, libjpeg-turbo "
                                   f"{meta.get('libjpeg_turbo_version')})")
            return result
    t0 = time.perf_counter()
    out = processor(images, return_tensors="np")
    result.seconds = time.perf_counter() - t0
    uint8 = processor(images, do_rescale=False, do_normalize=False).pixel_values
    with np.load(golden.expected) as z:
        for key, ours, tol in (("pixel_values", out.pixel_values, PROCESSING_TOLERANCE), ("pixels_uint8", uint8, 0.0)):
            ref = z[key]
            if ours.shape != ref.shape:
                result.problems.append(f"{key}: shape {ours.shape} vs reference {ref.shape}")
            else:
                result.errors[key] = (float(np.abs(ours.astype(np.float64) - ref).max(initial=0.0)), tol)
    return result


# --- trained digits models (golden/models/, written by golden/train_digits.py) --------------------------------------


def list_digit_models(golden_dir: Path) -> list[Path]:
    """The trained model directories golden/models/digits-*/ (each with meta.json and logits.npz)."""
    root = Path(golden_dir) / "models"
    return sorted(p for p in root.glob("digits-*") if (p / "meta.json").is_file()) if root.is_dir() else []


@dataclass
class DigitsResult:
    """refvit on the whole digits test split vs the framework's recorded predictions and logits."""
    model: str
    architecture: str
    backend: str
    dtype: str
    seconds: float
    parameters: int
    framework_accuracy: float      # recorded by golden/train_digits.py from PyTorch's predictions
    accuracy: float                # refvit's predictions vs the true labels
    disagreements: list            # test-split positions where refvit's class differs from PyTorch's
    images: int
    errors: dict = field(default_factory=dict)     # logits key -> (max abs error, allowed)
    problems: list = field(default_factory=list)

    @property
    def agreement(self) -> float:
        return 1.0 - len(self.disagreements) / self.images

    @property
    def ok(self) -> bool:
        return (not self.problems and not self.disagreements and self.accuracy == self.framework_accuracy
                and all(e <= tol for e, tol in self.errors.values()))


def digits_pixel_values(model_dir: Path, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values, labels) of the first `count` test scans: `digit_image`, then refvit's processor."""
    from .datasets import digit_image
    from .processing import ImageProcessor

    with np.load(Path(model_dir).parent / "digits_test.npz") as z:
        scans, labels = z["images"][:count], z["labels"][:count]
    processor = ImageProcessor.from_pretrained(model_dir)
    return processor([digit_image(s) for s in scans], return_tensors="np")["pixel_values"], labels


def run_digits(model_dir: Path, dtype: str = "float32", backend: str = "numba",
               count: int | None = None) -> DigitsResult:
    """Classify the digits test split (or its first `count` images) with refvit; compare with the framework's records.

    The logits tolerance is docs/DESIGN.md §7's float32 bound whatever `dtype` (the reference is PyTorch float32)."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "meta.json").read_text())
    model = from_pretrained(model_dir, dtype=dtype, backend=backend)
    pixel_values, labels = digits_pixel_values(model_dir, count)
    model(pixel_values[:1])  # warm-up: JIT compilation is not forward time
    t0 = time.perf_counter()
    out = model(pixel_values)
    seconds = time.perf_counter() - t0
    framework = np.asarray(meta["test_predictions"])[:len(labels)]
    ours = out.logits.argmax(-1)
    result = DigitsResult(model_dir.name, meta["architecture"], backend, dtype, seconds, model.num_parameters,
                          float((framework == labels).mean()), float((ours == labels).mean()),
                          np.flatnonzero(ours != framework).tolist(), len(labels))
    if count is None and result.framework_accuracy != meta["test_accuracy"]:
        result.problems.append(f"recorded predictions give accuracy {result.framework_accuracy}, "
                               f"meta.json says {meta['test_accuracy']}")
    with np.load(model_dir / "logits.npz") as z:
        for key in z.files:
            ref = z[key][:len(labels)]
            if key == "logits" and not np.array_equal(ref.argmax(-1), framework):
                result.problems.append("logits.npz disagrees with meta.json's test_predictions")
            err = float(np.abs(out[key].astype(np.float64) - ref).max(initial=0.0))
            result.errors[key] = (err, allowed_error(ref, "float32"))
    return result


def format_digits_table(results: list[DigitsResult], wide: bool = True) -> str:
    """One row per (model, backend, dtype): parameters, PyTorch and refvit test accuracy, agreement, logits error."""
    head = ("model", "architecture", "backend", "dtype", "params", "PyTorch acc", "refvit acc", "agreement",
            "logits max abs err", "")
    rows = [(r.model, r.architecture, r.backend, r.dtype, f"{r.parameters:,}", f"{r.framework_accuracy:.2%}",
             f"{r.accuracy:.2%}", f"{r.images - len(r.disagreements)}/{r.images}",
             f"{max((e for e, _ in r.errors.values()), default=float('nan')):.1e}", "ok" if r.ok else "FAIL")
            for r in results]
    if not wide:  # the architecture is in the model's name; shown with --wide
        head, rows = head[:1] + head[2:], [row[:1] + row[2:] for row in rows]
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head] + rows]
    for r in results:
        where = f"{r.model} [{r.backend}/{r.dtype}]"
        lines += [f"{where}: {p}" for p in r.problems]
        if r.disagreements:
            lines.append(f"{where}: class differs from PyTorch's on test images {r.disagreements[:20]}")
        lines += [f"{where}: {key} max abs error {e:.3g} > allowed {tol:.3g}"
                  for key, (e, tol) in r.errors.items() if not e <= tol]
    return "\n".join(lines)
