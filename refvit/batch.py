"""Batch inference over whole datasets, in one process or on a Dask cluster, with nothing lost.

    from refvit.batch import predict
    for record in predict("path/to/model_dir", ["a.jpg", "b.png"], workers=2):   # input order
        print(record["path"], record.get("top"), record.get("error"))

Data sources (`load_dataset`): an ImageFolder tree (`root/<class>/<image>`, the class taken from the folder), a flat
folder of images (no labels), or a list file: CSV (a `path` column and an optional `label` column, or headerless
`path[,label]` rows) or JSONL (`{"path": ..., "label": ...}` per line); relative paths are read from the list
file's folder. Every image is keyed by its path relative to the data root (`/`-separated): the key of the results
file, of `--resume` and of a reference-logits file.

The unit of work is one image. refvit's forward on a batch of B images does not give each image the bits of a
single-image forward (BLAS blocks a (B·N, C) product differently from an (N, C) one: measured up to 1.1e-6 on the
digits models, tests/test_determinism.py), so a result that depended on which images shared its batch would change
with the batch size, the worker count or a re-run after a crash. Each image therefore gets its own forward; the
batch size only sets how many images one task reads, preprocesses, classifies and appends to the results file.
Thread counts never change the bits (refvit.kernels.threads), so workers with fewer Numba threads agree too.

Scaling (`dask.distributed`, the `refvit[dask]` extra): `workers=N` starts a LocalCluster of N worker processes with
one task thread each (Numba's workqueue layer aborts when several Python threads launch parallel kernels at once)
and cores // N Numba threads each, after a child process with the workers' environment has warmed the Numba cache;
`scheduler="tcp://..."` uses an existing cluster. Each worker process loads the model once (`_loaded`, a per-process
cache; safetensors weights are memory-mapped by refvit's reader) and takes one task at a time (`_LOCK`), so a
cluster whose workers run several threads is safe too. A task is a pure function of its images, so when a worker
dies Dask re-runs its tasks elsewhere and the results are the same.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import hub
from .errors import InputError, RefvitError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
DEFAULT_BATCH_SIZE = 16


# ----------------------------------------------------------------------------------------------------------------------
# Data sources


@dataclass(frozen=True)
class Item:
    """One image of a dataset: its position, the file read, its key (path relative to the data root) and label."""
    index: int
    file: str
    key: str
    label: str | None = None


@dataclass
class Dataset:
    root: str
    kind: str  # "imagefolder", "folder" (flat, unlabelled), "list" (CSV/JSONL) or "paths"
    items: list[Item]

    @property
    def labelled(self) -> bool:
        return any(item.label is not None for item in self.items)


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def load_dataset(data) -> Dataset:
    """An ImageFolder tree, a flat folder of images, or a CSV/JSONL list file (see the module docstring)."""
    data = os.fspath(data)
    if os.path.isdir(data):
        return _folder(data)
    if not os.path.isfile(data):
        raise InputError(f"{data}: no such folder or list file (expected an ImageFolder tree, a folder of images, "
                         "or a .csv/.jsonl list of image paths)")
    suffix = Path(data).suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise InputError(f"{data}: a list file must end in .csv or .jsonl (got {suffix or 'no suffix'!r})")
    try:
        rows = _csv_rows(data) if suffix == ".csv" else _jsonl_rows(data)
    except UnicodeDecodeError as e:
        raise InputError(f"{data}: not UTF-8 text ({e.reason} at byte {e.start}); a list file is CSV or JSONL "
                         "text") from None
    base = os.path.dirname(os.path.abspath(data))
    items, seen = [], set()
    for i, (path, label) in enumerate(rows):
        key = Path(path).as_posix()
        if key in seen:
            raise InputError(f"{data}: {path!r} is listed twice; every image must appear once (it keys the results)")
        seen.add(key)
        items.append(Item(i, path if os.path.isabs(path) else os.path.join(base, path), key, label))
    if not items:
        raise InputError(f"{data}: the list names no images")
    return Dataset(base, "list", items)


def _folder(root: str) -> Dataset:
    """ImageFolder when the root holds sub-folders of images (torchvision's layout), else a flat folder of images."""
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    if classes:
        keys = []
        for c in classes:
            for folder, dirs, files in os.walk(os.path.join(root, c)):
                dirs.sort()
                keys += [Path(os.path.relpath(os.path.join(folder, f), root)).as_posix()
                         for f in sorted(files) if _is_image(f) and not f.startswith(".")]
        keys.sort()
        items = [Item(i, os.path.join(root, *k.split("/")), k, k.split("/")[0]) for i, k in enumerate(keys)]
        kind = "imagefolder"
    else:
        names = [e.name for e in entries if e.is_file() and _is_image(e.name) and not e.name.startswith(".")]
        items = [Item(i, os.path.join(root, n), n, None) for i, n in enumerate(names)]
        kind = "folder"
    if not items:
        raise InputError(f"{root}: no images found (extensions {sorted(IMAGE_EXTENSIONS)}); expected "
                         "root/<class>/<image> or images directly in the folder")
    return Dataset(os.path.abspath(root), kind, items)


def _csv_rows(path: str) -> list[tuple[str, str | None]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    if "path" in header:
        p, lab = header.index("path"), header.index("label") if "label" in header else None
        rows = rows[1:]
    else:
        p, lab = 0, 1 if len(rows[0]) > 1 else None
    out = []
    for n, r in enumerate(rows, 2 if "path" in header else 1):
        if len(r) <= p or not r[p].strip():
            raise InputError(f"{path}, row {n}: no image path")
        label = r[lab].strip() if lab is not None and len(r) > lab and r[lab].strip() != "" else None
        out.append((r[p].strip(), label))
    return out


def _jsonl_rows(path: str) -> list[tuple[str, str | None]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}, line {n}: not JSON ({e.msg}); expected {{\"path\": ..., \"label\": ...}}")
            if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"]:
                raise InputError(f"{path}, line {n}: expected an object with a \"path\" string")
            label = row.get("label")
            out.append((row["path"], None if label is None else str(label)))
    return out


def from_paths(paths: Iterable) -> Dataset:
    """A dataset of image files given one by one: each keyed by the path as given."""
    items = [Item(i, os.fspath(p), Path(os.fspath(p)).as_posix()) for i, p in enumerate(paths)]
    return Dataset(os.getcwd(), "paths", items)


# ----------------------------------------------------------------------------------------------------------------------
# The work: one task classifies a chunk of images, each with its own forward (module docstring)


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load the model itself: a save_pretrained directory, dtype and backend."""
    path: str
    dtype: str = "float32"
    backend: str = "numba"


_MODELS: dict = {}  # ModelSpec -> (model, processor): loaded once per process
_LOCK = threading.Lock()  # one task at a time per process (parallel Numba kernels and several Python threads)


def _loaded(spec: ModelSpec):
    if spec not in _MODELS:
        import refvit

        model = refvit.from_pretrained(spec.path, dtype=spec.dtype, backend=spec.backend)
        if not model.config.num_labels:
            raise InputError(f"{spec.path}: {type(model).__name__} has no classification head (num_labels is 0); "
                             "use a *ForImageClassification checkpoint")
        _MODELS[spec] = model, refvit.AutoImageProcessor.from_pretrained(spec.path)
    return _MODELS[spec]


@contextmanager
def numba_threads(n: int | None):
    """Numba's thread count set to `n` around refvit's kernels, restored afterwards (None: unchanged)."""
    if not n:
        yield
        return
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(old)


def classify_one(model, processor, item: Item, top_k: int = 5) -> dict:
    """The record of one image: its top-k classes and logits (float32), or the error that stopped it."""
    from .processing import load_image

    record = {"index": item.index, "path": item.key, "label": item.label}
    try:
        pixel_values = processor(load_image(item.file), return_tensors="np")["pixel_values"]  # 1, 3, H, W
        logits = np.asarray(model(pixel_values).logits[0], np.float32)  # num_labels
    except (RefvitError, OSError, MemoryError) as e:  # an unreadable file fails its image only
        record["error"] = f"{type(e).__name__}: {e}"
        return record
    top = np.argsort(-logits, kind="stable")[:top_k]
    record["top"] = [int(i) for i in top]
    record["top_logits"] = [float(logits[i]) for i in top]  # float32 -> float64 is exact: the JSON keeps the bits
    record["logits_sha256"] = hashlib.sha256(logits.tobytes()).hexdigest()
    record["logits"] = logits
    return record


def classify_chunk(spec: ModelSpec, items: list[Item], top_k: int = 5, threads: int | None = None) -> list[dict]:
    """A task: load the model once per process, classify `items` one image per forward. Pure: re-runnable anywhere."""
    with _LOCK, numba_threads(threads):
        model, processor = _loaded(spec)
        return [classify_one(model, processor, item, top_k) for item in items]


def warm_up(spec: ModelSpec, threads: int | None = None) -> None:
    """Compile (or load from Numba's on-disk cache) every kernel one forward of this model uses."""
    from PIL import Image

    with _LOCK, numba_threads(threads):
        model, processor = _loaded(spec)
        model(processor(Image.new("RGB", (32, 32)), return_tensors="np")["pixel_values"])


def chunked(items: list[Item], batch_size: int) -> list[list[Item]]:
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]


# ----------------------------------------------------------------------------------------------------------------------
# Runners: in-process, or on Dask. Both yield (chunk number, records) as chunks finish.


def dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def worker_environment(threads: int) -> dict:
    """Environment of a LocalCluster worker process: `threads` Numba threads, BLAS single-threaded (refvit threads
    its GEMM blocks itself; two spinning pools on the same cores are slower: docs/speed.md)."""
    n = str(threads)
    return {"NUMBA_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}  # this refvit, not another install


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Numba threads for each of `workers` processes so that workers x threads <= cores (at least 1)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def warm_cache_in_child(spec: ModelSpec, threads: int) -> None:
    """Warm Numba's on-disk cache in a child process with the workers' environment, before they start, so that N
    workers load compiled kernels instead of compiling the same ones at once."""
    code = ("import sys, refvit.batch as b; b.warm_up(b.ModelSpec(sys.argv[1], sys.argv[2], sys.argv[3]))")
    env = {**os.environ, **worker_environment(threads)}
    done = subprocess.run([sys.executable, "-c", code, spec.path, spec.dtype, spec.backend], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise InputError(f"warming the JIT cache for {spec.path} failed: {done.stderr.strip().splitlines()[-1:]}")


def run_in_process(spec: ModelSpec, chunks: list[list[Item]], top_k: int) -> Iterator[tuple[int, list[dict]]]:
    for n, chunk in enumerate(chunks):
        yield n, classify_chunk(spec, chunk, top_k)


def run_on_dask(client, spec: ModelSpec, chunks: list[list[Item]], top_k: int,
                threads: int | None = None) -> Iterator[tuple[int, list[dict]]]:
    """Submit one task per chunk; yield each as it finishes. A killed worker's tasks are re-run by the scheduler."""
    from distributed import as_completed

    futures = {client.submit(classify_chunk, spec, chunk, top_k, threads, pure=False, retries=2): n
               for n, chunk in enumerate(chunks)}
    for future in as_completed(futures):
        n = futures.pop(future)
        records = future.result()
        future.release()
        yield n, records


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, spec: ModelSpec | None = None,
                local_cluster_of_one: bool = False):
    """A Dask client for `scheduler` (an existing cluster), or on a LocalCluster of `workers` processes (None or 1:
    no Dask, run in-process, unless `local_cluster_of_one`, for benchmarks). The JIT cache is warmed first: in a
    child process before a LocalCluster starts, on one worker and then the others of an existing cluster."""
    if not scheduler and (not workers or workers <= 1) and not (workers == 1 and local_cluster_of_one):
        yield None, None
        return
    if not dask_available():
        if scheduler:
            raise InputError("--scheduler needs Dask: pip install \"refvit[dask]\"")
        print("refvit: Dask is not installed (pip install \"refvit[dask]\"): running in-process", file=sys.stderr)
        yield None, None
        return
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler, timeout="30s") as client:
            if spec is not None:
                names = sorted(client.scheduler_info()["workers"])
                for group in (names[:1], names[1:]):  # one worker compiles, the others then read its cache
                    if group:
                        client.run(warm_up, spec, workers=group)
            yield client, None
        return
    threads = threads_per_worker(workers)
    if spec is not None:
        warm_cache_in_child(spec, threads)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR, env=worker_environment(threads))
    try:
        with Client(cluster) as client:
            yield client, threads
    finally:
        cluster.close()


# ----------------------------------------------------------------------------------------------------------------------
# The Python API


def _spec_of(model, dtype: str, backend: str) -> tuple[ModelSpec, object]:
    """A ModelSpec for a directory, or for a loaded refvit model (its source directory; the model itself is used
    in-process)."""
    if isinstance(model, (str, os.PathLike)):  # a directory, or a hub id resolved once here to its snapshot
        return ModelSpec(os.path.abspath(hub.resolve_model_dir(os.fspath(model))), dtype, backend), None
    source = getattr(model, "source", "")
    path = source if os.path.isdir(source or "") else os.path.dirname(source or "")
    spec = ModelSpec(os.path.abspath(path) if path else f"<in-memory {id(model)}>", str(np.dtype(model.dtype)),
                     getattr(model, "backend", backend))
    return spec, model


def predict(model, paths, *, batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
            scheduler: str | None = None, client=None, top_k: int = 5, dtype: str = "float32",
            backend: str = "numba", processor=None) -> Iterator[dict]:
    """Classify images; yield one record per image, in input order.

    model: a save_pretrained directory (or a loaded refvit model: in-process, or on Dask via its source directory).
    paths: image paths, or a `Dataset` (`load_dataset`). workers=N: a LocalCluster of N processes; scheduler: the
    address of an existing Dask cluster; client: an existing `distributed.Client` (wins over both).
    A record: {"index", "path", "label", "top", "top_logits", "logits_sha256", "logits" (float32 array)} or
    {"index", "path", "label", "error"} for an unreadable image.
    Why so many parameters: one run's knobs (data, batching, precision, Dask), each a keyword with a default."""
    dataset = paths if isinstance(paths, Dataset) else from_paths(paths)
    spec, loaded = _spec_of(model, dtype, backend)
    if loaded is not None and spec.path.startswith("<") and (client is not None or scheduler or (workers or 1) > 1):
        raise InputError("this model was not loaded from a directory, so Dask workers cannot load it: pass the "
                         "save_pretrained directory instead of the model object")
    if loaded is not None:
        if processor is None:
            import refvit
            processor = refvit.AutoImageProcessor.from_pretrained(spec.path)
        _MODELS.setdefault(spec, (loaded, processor))
    chunks = chunked(dataset.items, batch_size)
    yield from _in_order(_run(spec, chunks, top_k, workers, scheduler, client), len(chunks))


def _run(spec, chunks, top_k, workers, scheduler, client) -> Iterator[tuple[int, list[dict]]]:
    if client is not None:
        yield from run_on_dask(client, spec, chunks, top_k)
        return
    with dask_client(workers, scheduler, spec) as (dask, threads):
        if dask is None:
            yield from run_in_process(spec, chunks, top_k)
        else:
            yield from run_on_dask(dask, spec, chunks, top_k, threads)


def _in_order(finished: Iterator[tuple[int, list[dict]]], count: int) -> Iterator[dict]:
    waiting, next_chunk = {}, 0
    for n, records in finished:
        waiting[n] = records
        while next_chunk in waiting:
            yield from waiting.pop(next_chunk)
            next_chunk += 1
    if next_chunk != count:
        raise RuntimeError(f"batch run ended after {next_chunk} of {count} chunks")


# ----------------------------------------------------------------------------------------------------------------------
# The results file: JSON lines, a header then one record per image, appended per finished chunk (flush + fsync), so a
# run killed at any point keeps every chunk it finished; `resume` reads it back and skips those images.

RESULTS_FORMAT = "refvit-results/1"


def record_json(record: dict, save_logits: bool = False) -> str:
    out = {k: v for k, v in record.items() if k != "logits"}
    if save_logits and record.get("logits") is not None:
        out["logits"] = [float(v) for v in record["logits"]]
    return json.dumps(out)


class ResultsFile:
    """Append-only JSONL results. `done` maps each finished image's key to its record (from a resumed file)."""

    def __init__(self, path, header: dict, resume: bool = False, save_logits: bool = False):
        self.path, self.save_logits, self.done = os.fspath(path), save_logits, {}
        header = {"format": RESULTS_FORMAT, **header}
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            if not resume:
                raise InputError(f"{self.path} already exists: pass --resume to continue that run, or choose "
                                 "another --out")
            self.done = self._read(header)
            self._file = open(self.path, "a", encoding="utf-8")
        else:
            self._file = open(self.path, "w", encoding="utf-8")
            self._write([json.dumps(header)])

    def _read(self, header: dict) -> dict:
        """The records of an earlier run; a torn last line (the run died mid-write) is cut off and recomputed."""
        with open(self.path, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
        lines = data[:end].decode("utf-8").splitlines()
        if not lines:
            raise InputError(f"{self.path}: no header line; delete it and start again")
        try:
            old = json.loads(lines[0])
        except json.JSONDecodeError:
            old = None
        if not isinstance(old, dict) or old.get("format") != RESULTS_FORMAT:
            raise InputError(f"{self.path} is not a refvit results file ({RESULTS_FORMAT}); choose another --out")
        changed = sorted(k for k in header if k in old and old[k] != header[k] and k != "started")
        if changed:
            raise InputError(f"{self.path} was written with other settings ({', '.join(changed)}: "
                             f"{[old[k] for k in changed]} then, {[header[k] for k in changed]} now); "
                             "resume with the same ones, or choose another --out")
        done = {}
        for n, line in enumerate(lines[1:], 2):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{self.path}, line {n}: not JSON (the file was changed by hand?); delete that line "
                                 "and --resume again") from None
            done[record["path"]] = record
        return done

    def _write(self, lines: list[str]) -> None:
        self._file.write("".join(line + "\n" for line in lines))
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, records: list[dict]) -> None:
        self._write([record_json(r, self.save_logits) for r in records])
        for r in records:
            self.done[r["path"]] = {k: v for k, v in json.loads(record_json(r, self.save_logits)).items()}

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_dataset(spec: ModelSpec, dataset: Dataset, *, batch_size: int = DEFAULT_BATCH_SIZE, top_k: int = 5,
                workers: int | None = None, scheduler: str | None = None, client=None,
                results: ResultsFile | None = None, on_chunk=None, finish=None) -> dict:
    """Classify every image of `dataset` not already in `results`; append each finished chunk to `results`.

    `finish(record)` may add fields (e.g. reference comparison) before a record is written; `on_chunk(done, total)`
    reports progress. Returns {key: record} for the whole dataset (resumed records included).
    Why so many parameters: what `predict` and `evaluate` hand down, each a keyword with a default."""
    done = dict(results.done) if results is not None else {}
    todo = [item for item in dataset.items if item.key not in done]
    chunks = chunked(todo, batch_size)
    if on_chunk:
        on_chunk(len(dataset.items) - len(todo), len(dataset.items))
    finished = _run(spec, chunks, top_k, workers, scheduler, client) if chunks else iter(())
    for _, records in finished:
        if finish is not None:
            records = [finish(r) for r in records]
        if results is not None:
            results.append(records)
        done.update((r["path"], r) for r in records)
        if on_chunk:
            on_chunk(len(done), len(dataset.items))
    return done
