"""Hub ids -> local directories: the Hugging Face cache first (no network), then a download through huggingface_hub.

`resolve_model_dir("facebook/deit-small-distilled-patch16-224", revision="main")` returns a directory that
`from_pretrained` reads as it reads a `save_pretrained` directory: a snapshot in the Hugging Face cache, the one
transformers fills, so both libraries share one copy. An existing local path is returned unchanged.

The cache, as huggingface_hub lays it out (`huggingface_hub/file_download.py`, `constants.py`):

    <cache>/models--<org>--<name>/
        refs/<revision>            the commit sha a branch or tag points to (text, no newline)
        snapshots/<sha>/<file>     symlink -> ../../blobs/<etag>
        blobs/<etag>               the bytes, written to a process-unique `*.incomplete` file and renamed when whole
        .no_exist/<sha>/<file>     empty marker: <file> is known to be absent at <sha>

    <cache> = HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub

Reading the cache needs no huggingface_hub. Downloading does (`pip install "refvit[hub]"`): refvit lists the repo
(`/api/models/<id>/revision/<rev>`), picks the files it reads and fetches only those with `hf_hub_download`, so
`HF_ENDPOINT`, `HF_TOKEN` and proxies behave as in transformers. `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`)
means the network is never touched.

Which snapshot counts as complete is decided here, not by the snapshot folder existing: huggingface_hub creates it
file by file (and writes refs/<branch> before the first blob), so an interrupted download leaves a partial snapshot.
A model snapshot is complete when it has config.json and the whole of the weights `from_pretrained` will read
(the first present of model.safetensors, its shard index, pytorch_model.bin, its shard index — every shard included).
"""

from __future__ import annotations

import contextlib
import os
import re

from .checkpoint.directory import SAFETENSORS_FILE, SAFETENSORS_INDEX, TORCH_FILE, TORCH_INDEX, read_index
from .errors import CheckpointError, ConfigError

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
PROCESSOR = "processor_config.json"  # newer repos may nest the image processor's settings here
WEIGHTS = (SAFETENSORS_FILE, SAFETENSORS_INDEX, TORCH_FILE, TORCH_INDEX)  # refvit's order (checkpoint/directory.py)
OTHER_WEIGHTS = re.compile(r"\.(h5|msgpack|ckpt|pt|pth|onnx|safetensors|bin|gguf|keras|tflite)$")  # named in errors

# huggingface_hub's validate_repo_id: "name" or "org/name", word characters, '-' and '.', no '--' or '..'
REPO_ID = re.compile(r"^(\b[\w\-.]+\b/)?\b[\w\-.]{1,96}\b$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REVISION = "main"


def looks_like_repo_id(path: str) -> bool:
    """`org/name` or `name` as the Hub spells repo ids (not a path with more parts, '..', '--' or a '.git' end)."""
    return bool(REPO_ID.match(path)) and "--" not in path and ".." not in path and not path.endswith(".git")


def hub_cache_dir() -> str:
    """The cache huggingface_hub (and transformers) use, from the environment at call time (constants.py's rules)."""
    home = os.path.expandvars(os.path.expanduser(os.environ.get(
        "HF_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
                                "huggingface"))))
    legacy = os.environ.get("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub"))
    return os.path.expandvars(os.path.expanduser(os.environ.get("HF_HUB_CACHE", legacy)))


def is_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as huggingface_hub reads them (1, ON, YES, TRUE), at call time."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


def resolve_model_dir(path, revision: str | None = None, files: str = "model") -> str:
    """A local directory for `path`: the path itself when it exists, else the hub id's snapshot (cache, then download).

    files: "model" (config.json + weights), "processor" (preprocessor_config.json, config.json when the repo has it)
    or "config" (config.json alone: a timm repo's preprocessing is its pretrained_cfg).
    revision: a branch, tag or full commit sha (default "main"); ignored for a local path, as transformers does.
    A string that is neither an existing path nor a hub id is returned unchanged (the loader then names the path).
    """
    path = os.fspath(path)
    if os.path.exists(path) or not looks_like_repo_id(path):
        return path
    revision = _check_revision(DEFAULT_REVISION if revision is None else revision, path)
    cache = hub_cache_dir()
    snapshot, missing = cached_snapshot(path, revision, files, cache)
    if snapshot is not None:
        return snapshot
    where = f"{path!r} (revision {revision!r})"
    if is_offline():
        raise CheckpointError(
            f"{where}: not a local directory, and not in the Hugging Face cache at {cache} ({missing}); offline mode "
            "(HF_HUB_OFFLINE=1) forbids downloading it: unset HF_HUB_OFFLINE and run once with network access, or "
            "copy the snapshot into the cache, or pass a local directory")
    return download_snapshot(path, revision, files, cache, missing)


def _check_revision(revision, repo_id: str) -> str:
    """A branch, tag or sha as the Hub names them; never a path that leaves refs/ (it becomes a file name there)."""
    if not isinstance(revision, str) or not revision or revision.startswith("/") or ".." in revision.split("/") \
            or any(c in revision for c in ("\\", "\0")) or revision != revision.strip():
        raise CheckpointError(f"{repo_id!r}: revision {revision!r} is not a branch, tag or commit sha "
                              "(e.g. 'main', 'v1.0' or a 40-character sha)")
    return revision


# ----------------------------------------------------------------------------------------------------------------------
# The cache, read without huggingface_hub


def repo_folder(cache: str, repo_id: str) -> str:
    """`<cache>/models--org--name` (huggingface_hub's repo_folder_name)."""
    return os.path.join(cache, "--".join(["models", *repo_id.split("/")]))


def cached_commit(storage: str, revision: str) -> str | None:
    """The sha `revision` names in the cache: itself when it is a full sha, else refs/<revision>'s content."""
    if COMMIT.match(revision):
        return revision
    ref = os.path.join(storage, "refs", revision)
    try:
        with open(ref, encoding="utf-8") as f:
            sha = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return sha if COMMIT.match(sha) else None


def cached_snapshot(repo_id: str, revision: str, files: str, cache: str) -> tuple[str | None, str]:
    """(snapshot directory, "") when the cache holds everything `files` needs, else (None, what is missing).

    Raises when the cache *knows* (.no_exist markers) that the repo lacks what refvit needs: no network can help.
    """
    storage = repo_folder(cache, repo_id)
    sha = cached_commit(storage, revision)
    if sha is None:
        return None, f"no {'snapshot' if COMMIT.match(revision) else f'refs/{revision}'} for it there"
    snapshot = os.path.join(storage, "snapshots", sha)
    absent = _known_absent(storage, sha)
    where = f"{repo_id!r} (revision {revision!r}, commit {sha}) in the Hugging Face cache {snapshot}"
    if files == "config":  # config.json alone (timm's layout keeps its preprocessing there: pretrained_cfg)
        if _is_file(snapshot, CONFIG):
            return snapshot, ""
        if CONFIG in absent:
            raise CheckpointError(f"{where}: the repo has no {CONFIG}")
        return None, f"snapshot {sha[:12]} lacks {CONFIG}"
    if files == "processor":
        if _is_file(snapshot, PREPROCESSOR) or _is_file(snapshot, PROCESSOR):
            return snapshot, ""
        if PREPROCESSOR in absent:
            raise ConfigError(f"{where}: the repo has no {PREPROCESSOR} (the cache marks it absent), so it ships no "
                              "image processor settings: construct the processor directly, e.g. "
                              "refvit.ViTImageProcessor(size=..., image_mean=..., image_std=...)")
        return None, f"snapshot {sha[:12]} lacks {PREPROCESSOR}"
    if not _is_file(snapshot, CONFIG):
        if CONFIG in absent:
            raise CheckpointError(f"{where}: the repo has no {CONFIG}, so it is not a transformers checkpoint")
        return None, f"snapshot {sha[:12]} lacks {CONFIG}"
    weights, reason = complete_weights(snapshot)
    if weights is not None:
        return snapshot, ""
    if set(WEIGHTS) <= absent:  # every weights file refvit reads is known to be absent at this commit
        raise _unreadable_weights(where, sorted(os.listdir(snapshot)))
    return None, reason


def complete_weights(snapshot: str) -> tuple[str | None, str]:
    """(the weights file `load_state_dict` will read, "") when it and all its shards are present, else (None, why).

    Mirrors checkpoint/directory.py: the first present file of WEIGHTS is the one read, so an index whose shards are
    not all there makes the snapshot incomplete even when another weights file is whole."""
    for name in WEIGHTS:
        if not _is_file(snapshot, name):
            continue
        if name in (SAFETENSORS_INDEX, TORCH_INDEX):
            shards = sorted(set(read_index(os.path.join(snapshot, name)).values()))
            missing = [s for s in shards if not _is_file(snapshot, s)]
            if missing:
                return None, f"{name} lists {len(shards)} shards, {len(missing)} not downloaded (e.g. {missing[0]})"
        return name, ""
    return None, "no weights file downloaded yet"


def _is_file(directory: str, name: str) -> bool:
    return os.path.isfile(os.path.join(directory, name))  # follows the symlink: a missing blob is a missing file


def _known_absent(storage: str, sha: str) -> set[str]:
    folder = os.path.join(storage, ".no_exist", sha)
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def _unreadable_weights(where: str, found: list[str]) -> CheckpointError:
    others = [f for f in found if OTHER_WEIGHTS.search(f)]
    return CheckpointError(
        f"{where}: no weights refvit reads ({', '.join(WEIGHTS)}); the repo has "
        f"{', '.join(others) if others else 'no weights file at all'} ({len(found)} files: {', '.join(found[:12])}). "
        "refvit reads PyTorch and safetensors checkpoints only: convert TF/Flax weights with transformers "
        "(from_pretrained(..., from_tf=True or from_flax=True) then save_pretrained) and pass that directory")


# ----------------------------------------------------------------------------------------------------------------------
# Download through huggingface_hub


def files_to_fetch(listing: set[str], files: str, where: str) -> list[str]:
    """What refvit reads from a repo listing: config.json, the processor configs, the weights (shards come later)."""
    wanted = [name for name in (CONFIG, PREPROCESSOR, PROCESSOR) if name in listing]
    if files == "config":
        if CONFIG not in listing:
            raise CheckpointError(f"{where}: the repo has no {CONFIG}")
        return [CONFIG]
    if files == "processor":
        if PREPROCESSOR not in listing and PROCESSOR not in listing:
            raise ConfigError(f"{where}: the repo has no {PREPROCESSOR}, so it ships no image processor settings: "
                              "construct the processor directly, e.g. refvit.ViTImageProcessor(...)")
        return wanted
    if CONFIG not in listing:
        raise CheckpointError(f"{where}: the repo has no {CONFIG}, so it is not a transformers checkpoint "
                              f"(files: {', '.join(sorted(listing)[:12])})")
    weights = next((name for name in WEIGHTS if name in listing), None)
    if weights is None:
        raise _unreadable_weights(where, sorted(listing))
    return wanted + [weights]


def download_snapshot(repo_id: str, revision: str, files: str, cache: str, missing: str = "") -> str:
    """Fetch what refvit needs of one commit into the cache; return the snapshot directory.

    Files go through `hf_hub_download` pinned to the listed commit (one consistent snapshot even if the branch
    moves meanwhile); each lands whole or not at all (huggingface_hub renames a finished temporary file), and
    refs/<revision> is written last, once everything `files` needs is in place."""
    where = f"{repo_id!r} (revision {revision!r})"
    try:
        import huggingface_hub  # noqa: F401 - optional: `pip install "refvit[hub]"`
    except ImportError:
        raise CheckpointError(
            f"{where}: not a local directory, and not in the Hugging Face cache at {cache} ({missing}); downloading it "
            "needs huggingface_hub, which is not installed: pip install \"refvit[hub]\" (or fetch it once with "
            "transformers / `hf download`, or pass a local directory)") from None
    from huggingface_hub import HfApi, hf_hub_download

    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None  # None: huggingface_hub's default (the Hub)
    shown = endpoint or "https://huggingface.co"
    storage = repo_folder(cache, repo_id)
    with _hub_errors(repo_id, revision, shown):
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision)
        sha = info.sha
        if not isinstance(sha, str) or not COMMIT.match(sha):
            raise CheckpointError(f"{where}: {shown} answered with commit {sha!r}, not a 40-character sha: is "
                                  "HF_ENDPOINT a Hugging Face Hub?")
        listing = {s.rfilename for s in info.siblings or []}
        where = f"{repo_id!r} (revision {revision!r}, commit {sha})"

        def fetch(name: str) -> str:
            return hf_hub_download(repo_id, name, revision=sha, cache_dir=cache, endpoint=endpoint)

        for name in files_to_fetch(listing, files, where):
            local = fetch(name)
            if name in (SAFETENSORS_INDEX, TORCH_INDEX):
                for shard in sorted(set(read_index(local).values())):  # plain file names only (checked there)
                    if shard not in listing:
                        raise CheckpointError(f"{where}: {name} lists the shard {shard!r}, which the repo lacks")
                    fetch(shard)
    snapshot = os.path.join(storage, "snapshots", sha)
    if files == "model" and complete_weights(snapshot)[0] is None:  # never claim a snapshot that is not whole
        raise CheckpointError(f"{where}: the download finished but {snapshot} is incomplete; run again")
    _mark_absent(storage, sha, [n for n in (CONFIG, PREPROCESSOR, *WEIGHTS) if n not in listing])
    _write_ref(storage, revision, sha)
    return snapshot


@contextlib.contextmanager
def _hub_errors(repo_id: str, revision: str, endpoint: str):
    """huggingface_hub's and the network's errors as one CheckpointError naming the id, the revision and what to do.

    (huggingface_hub sends HF_TOKEN; its messages hold URLs, never the token, and refvit adds only what it knows.)"""
    from huggingface_hub import errors

    where = f"{repo_id!r} (revision {revision!r})"
    try:
        yield
    except errors.GatedRepoError:
        raise CheckpointError(f"{where}: the repository is gated on {endpoint}: accept its conditions at "
                              f"{endpoint}/{repo_id} and set HF_TOKEN (or run `hf auth login`) with a token of an "
                              "account that has access") from None
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"{where}: {endpoint} has no revision {revision!r} for this repository: pass an "
                              "existing branch, tag or full commit sha as revision=") from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(f"{where}: no repository {repo_id!r} on {endpoint}, and no local directory of that "
                              "name: check the id; if it is private or gated, set HF_TOKEN (or run `hf auth login`) "
                              "with a token that can read it") from None
    except errors.OfflineModeIsEnabled:
        raise CheckpointError(f"{where}: huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was "
                              "imported) and the snapshot is not in the cache: unset HF_HUB_OFFLINE and restart, "
                              "or pass a local directory") from None
    except errors.HfHubHTTPError as e:
        status = e.response.status_code if getattr(e, "response", None) is not None else "?"
        raise CheckpointError(f"{where}: {endpoint} answered HTTP {status} ({type(e).__name__}); nothing partial was "
                              "kept in the cache: try again later, or check HF_ENDPOINT and HF_TOKEN") from None
    except Exception as e:  # noqa: BLE001 - httpx2 transport errors, timeouts, truncated bodies, disk errors
        if isinstance(e, (CheckpointError, ConfigError)) or not _network_or_io_error(e):
            raise
        detail = (str(e).strip().splitlines() or [""])[0]  # one line (huggingface_hub's advice lines do not apply)
        raise CheckpointError(f"{where}: download from {endpoint} failed ({type(e).__name__}: {detail}); nothing "
                              "partial was kept in the cache: check the network, proxy and HF_ENDPOINT and try "
                              "again, or set HF_HUB_OFFLINE=1 to use the cache only") from None


def _network_or_io_error(e: BaseException) -> bool:
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("httpx2", "httpx", "httpcore", "ssl")


def _write_ref(storage: str, revision: str, sha: str) -> None:
    """refs/<revision> -> sha, atomically (huggingface_hub's _cache_commit_hash_for_specific_revision)."""
    if revision == sha:
        return
    ref = os.path.join(storage, "refs", revision)
    os.makedirs(os.path.dirname(ref), exist_ok=True)
    tmp = f"{ref}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(sha)
    os.replace(tmp, ref)


def _mark_absent(storage: str, sha: str, names: list[str]) -> None:
    """.no_exist/<sha>/<name> for files the listing shows are absent, as huggingface_hub marks a 404 (best effort)."""
    for name in names:
        marker = os.path.join(storage, ".no_exist", sha, name)
        try:
            os.makedirs(os.path.dirname(marker), exist_ok=True)
            open(marker, "a").close()
        except OSError:
            pass
