"""The one strict JSON reader for everything refvit reads that a checkpoint, a processor or a shard index carries:
config.json, preprocessor_config.json / processor_config.json, *.index.json and the safetensors header.

Strict means: UTF-8; no duplicate key at any depth (json keeps the last one silently); no NaN/Infinity tokens (json
accepts them, JSON does not); nesting deep enough to exhaust the parser refused, not crashed; an object at the top
level. A file must be a regular file of at most `max_bytes`: a FIFO would block the open forever and a device never
end, so both are refused before anything is opened. Every refusal is the caller's RefvitError subclass, with the file.
"""

from __future__ import annotations

import json
import os
import stat

from .errors import RefvitError


def loads(data: bytes | str, where: str, error: type[RefvitError], offset: int = 0) -> dict:
    """Parse `data` strictly into a dict; `where` names it in errors (a file, "…: header"), `offset` is where `data`
    starts in that file (for the byte offset of bad UTF-8)."""
    def no_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise error(f"{where}: duplicate key {key!r} (JSON readers disagree on which one counts)")
            seen[key] = value
        return seen

    def no_constants(token):
        raise error(f"{where}: the non-JSON number {token!r} (NaN and Infinity are not JSON)")

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        raise error(f"{where}: not valid UTF-8 JSON (bad byte at byte offset {offset + e.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{where}: not valid JSON (nested too deeply to parse)") from None
    if not isinstance(value, dict):
        raise error(f"{where}: must be a JSON object at the top level, got {type(value).__name__}")
    return value


def load(path: str | os.PathLike, error: type[RefvitError], max_bytes: int, what: str = "JSON file") -> dict:
    """Read the JSON object in the regular file `path` (at most `max_bytes`; `what` it should be, for errors)."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise error(f"{path}: is a directory, expected a {what}")
        if not stat.S_ISREG(mode):  # a FIFO would block open() forever, a device never end
            raise error(f"{path}: not a regular file, expected a {what}")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{path}: no such file (expected a {what})") from None
    except OSError as e:
        raise error(f"{path}: cannot read: {e}") from None
    if len(data) > max_bytes:
        raise error(f"{path}: larger than {max_bytes} bytes, not a {what}")
    return loads(data, str(path), error)
