"""Builders for the hub tests (no tests here): a Hugging Face cache laid out as huggingface_hub writes it, and a
local Hub on 127.0.0.1 that answers the requests huggingface_hub 2.x makes.

Cache (huggingface_hub/file_download.py): `models--org--name/{blobs/<etag>, snapshots/<sha>/<file> -> ../../blobs/<etag>,
refs/<revision>, .no_exist/<sha>/<file>}`; the etag of a large (LFS) file is its sha256, of a small one its git sha1.

Hub protocol (huggingface_hub 2.4.0: hf_api.model_info, file_download.get_hf_file_metadata / http_get,
utils/_http.hf_raise_for_status):
    GET  /api/models/<org>/<name>/revision/<rev, url-quoted>   -> {"id", "sha", "siblings": [{"rfilename"}]}
    HEAD /<org>/<name>/resolve/<rev>/<file>                    -> X-Repo-Commit, ETag (or X-Linked-Etag), Content-Length
    GET  /<org>/<name>/resolve/<rev>/<file>                    -> the bytes
    errors: status + X-Error-Code RepoNotFound (401) | GatedRepo (401) | RevisionNotFound (404) | EntryNotFound (404)
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from conftest import golden_case


def commit_sha(files: dict[str, bytes], salt: str = "") -> str:
    """A 40-hex commit id derived from the files (stands in for the git commit of a Hub repo)."""
    h = hashlib.sha1(salt.encode())
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def etag(name: str, data: bytes) -> str:
    """What the Hub sends as the file's ETag: sha256 for LFS files (weights), git's blob sha1 for the rest."""
    if name.endswith((".safetensors", ".bin", ".h5", ".msgpack")):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_snapshot(cache: Path, repo_id: str, files: dict[str, bytes], refs=("main",), sha: str | None = None,
                   no_exist=()) -> str:
    """Lay one commit of `repo_id` into `cache` as huggingface_hub does; return its sha."""
    sha = sha or commit_sha(files, repo_id)
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = storage / "snapshots" / sha
    for name, data in files.items():
        blob = storage / "blobs" / etag(name, data)
        blob.write_bytes(data)
        pointer = snapshot / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))  # ../../blobs/<etag>, as _create_relative_symlink
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(sha)
    for name in no_exist:
        marker = storage / ".no_exist" / sha / name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return sha


def case_files(case: str, **extra: bytes) -> dict[str, bytes]:
    """config.json and the weights file of a golden case (as save_pretrained / torch.save wrote them), plus `extra`."""
    root = golden_case(case)
    files = {p.name: p.read_bytes() for p in root.iterdir()
             if p.name in ("config.json", "model.safetensors", "pytorch_model.bin")}
    files.update(extra)
    return files


PREPROCESSOR_TINY = json.dumps({  # DeiT's legacy keys (facebook/deit-*-distilled ship these), sizes of the tiny cases
    "crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "DeiTFeatureExtractor", "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 36}).encode()


class FakeHub:
    """A threaded HTTP server on 127.0.0.1 serving repos the way the Hub's API and resolve endpoints do."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization header)
        self.truncate: set[str] = set()  # file names whose GET body is cut in half (HEAD still says the full size)

    def add(self, repo_id: str, files: dict[str, bytes], refs=("main",), token: str | None = None) -> str:
        """Add a commit (refs point to it); `token`: the repo is gated, files need `Authorization: Bearer <token>`."""
        sha = commit_sha(files, repo_id)
        repo = self.repos.setdefault(repo_id, {"commits": {}, "refs": {}, "token": token})
        repo["commits"][sha] = files
        repo["refs"].update({ref: sha for ref in refs})
        return sha

    def fetched(self, repo_id: str) -> list[str]:
        """File names GET through /resolve/ for repo_id, in order."""
        prefix = f"/{repo_id}/resolve/"
        return [unquote(p[len(prefix):].split("/", 1)[1]) for m, p, _ in self.requests
                if m == "GET" and p.startswith(prefix)]

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                hub._answer(self, body=True)

            def do_HEAD(self):
                hub._answer(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    # -- the protocol -------------------------------------------------------------------------------------------------

    def _answer(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        path = urlsplit(req.path).path
        self.requests.append((req.command, path, req.headers.get("Authorization")))
        parts = path.split("/")  # quoted segments: a revision "refs%2Fpr%2F1" stays one segment
        if parts[1:3] == ["api", "models"] and len(parts) == 7 and parts[5] == "revision":
            return self._model_info(req, f"{parts[3]}/{parts[4]}", unquote(parts[6]), body)
        if len(parts) >= 6 and parts[3] == "resolve":
            return self._resolve(req, f"{parts[1]}/{parts[2]}", unquote(parts[4]), unquote("/".join(parts[5:])), body)
        self._send(req, 404, {}, b'{"error": "no such endpoint"}', body)

    def _commit(self, req, repo_id: str, revision: str, body: bool):
        repo = self.repos.get(repo_id)
        if repo is None:  # the Hub answers 401 for a missing (or private) repo to anonymous callers
            self._send(req, 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                       b'{"error": "Repository not found"}', body)
            return None, None
        sha = revision if revision in repo["commits"] else repo["refs"].get(revision)
        if sha is None:
            self._send(req, 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"},
                       b'{"error": "Invalid rev id"}', body)
            return None, None
        return repo, sha

    def _model_info(self, req, repo_id: str, revision: str, body: bool) -> None:
        repo, sha = self._commit(req, repo_id, revision, body)
        if repo is None:
            return
        info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                "gated": "manual" if repo["token"] else False,
                "siblings": [{"rfilename": name} for name in sorted(repo["commits"][sha])]}
        self._send(req, 200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body)

    def _resolve(self, req, repo_id: str, revision: str, filename: str, body: bool) -> None:
        repo, sha = self._commit(req, repo_id, revision, body)
        if repo is None:
            return
        if repo["token"] and req.headers.get("Authorization") != f"Bearer {repo['token']}":
            self._send(req, 401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this repo is restricted"},
                       b'{"error": "gated"}', body)
            return
        files = repo["commits"][sha]
        if filename not in files:
            self._send(req, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}, b'{"error": "Entry not found"}',
                       body)
            return
        data = files[filename]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag(filename, data)}"', "Content-Type": "application/octet-stream"}
        if body and filename in self.truncate:
            data = data[: len(data) // 2]  # a connection that delivers half the file, consistently with its header
        self._send(req, 200, headers, data, body, length=len(data) if body else len(files[filename]))

    @staticmethod
    def _send(req, status: int, headers: dict, data: bytes, body: bool, length: int | None = None) -> None:
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        req.send_header("Content-Length", str(len(data) if length is None else length))
        req.end_headers()
        if body:
            req.wfile.write(data)
