"""The repository as documents: no machine's absolute path in any tracked file (stored notebook outputs included),
the README a short front door, no issue numbers in any tracked file, every public name in the API reference.
Fast and without the docs extra: the site itself is built and browsed by tests/test_docs.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import refvit

ROOT = Path(__file__).resolve().parent.parent
# An absolute path of a build or developer machine: a home or work folder, a temporary folder's subfolder (pytest's,
# a worktree copy), macOS's per-user temp, a Windows user folder. Example paths a reader types (`~/.cache/...`,
# `cat.jpg`, `golden/...`) are relative and do not match; a path must start at a boundary, so a relative path through
# a folder named like one of those (docs, then root) does not.
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home/[^/\s\"']+|Users/[^/\s\"']+|tmp/[^/\s\"']+|private/var"
                          r"|var/folders|mnt/[a-z])/|\b[A-Za-z]:\\\\?(?:Users|work)\\")
ISSUE_NUMBER = re.compile(r"\b[Ii]ssues?\s*#?\d+|(?<![\w&/])#\d+\b")
SKIP_DIRS = {".git", "build", "dist", "_build", "__pycache__", ".pytest_cache", ".hypothesis", "node_modules"}


def tracked_files() -> list[Path]:
    """The files git tracks (a clone); outside a git checkout (an unpacked sdist), every file but build outputs."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / name for name in out.decode().split("\0") if name]
    return [Path(d) / f for d, dirs, files in os.walk(ROOT) for f in files
            if not (dirs.__setitem__(slice(None), [x for x in dirs if x not in SKIP_DIRS and not x.endswith(
                ".egg-info") and not x.startswith(".venv")]))]


def text_of(path: Path) -> str | None:
    if path.is_symlink() or not path.is_file():
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary: arrays, images, weights
    return data.decode("utf-8", errors="replace")


def test_machine_path_pattern():
    s, b = "/", "\\"  # the examples are assembled, so this file holds no such path itself
    for bad in (f"{s}work{s}wt{s}x{s}golden", f"{s}root{s}.cache{s}x", f"{s}home{s}alice{s}refvit",
                f"'{s}tmp{s}pytest-of-u{s}p'", f"from {s}Users{s}bob{s}refvit", f"C:{b}Users{b}bob{b}refvit",
                f"{s}private{s}var{s}folders{s}x"):
        assert MACHINE_PATH.search(bad), bad
    for fine in ("~/.cache/huggingface/hub", "golden/models/digits-vit", f"docs{s}root{s}x", "$HF_HOME/hub", f"{s}tmp",
                 "https://huggingface.co/api/models/x", "cat.jpg"):
        assert not MACHINE_PATH.search(fine), fine


def test_issue_number_pattern():
    n = "1" + "8"  # assembled, so this file names no issue itself
    for bad in (f"(issue {n})", f"issues #{n}", f"Issue{n}", f"see #{n}."):
        assert ISSUE_NUMBER.search(bad), bad
    for fine in ("#1f77b4", "§5b", "## 5. Planted quirks", "&#8212;", "a/#1", "tissue 5"):
        assert not ISSUE_NUMBER.search(fine), fine


def test_no_tracked_file_holds_an_absolute_machine_path():
    files = tracked_files()
    assert len(files) > 100 and any(f.suffix == ".ipynb" for f in files)
    found = []
    for path in files:
        text = text_of(path)
        for line_no, line in enumerate((text or "").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(ROOT)}:{line_no}: {line.strip()[:160]}")
    assert not found, "absolute machine paths (write them relative to the repository):\n" + "\n".join(found)


def test_stored_notebook_outputs_hold_no_machine_path():
    # the outputs are JSON strings inside the .ipynb: checked decoded too (escaped slashes, split lines)
    notebooks = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks
    for notebook in notebooks:
        for cell in json.loads(notebook.read_text())["cells"]:
            for output in cell.get("outputs", []):
                texts = [output.get("text", "")] + list(output.get("data", {}).get("text/plain", []))
                text = "".join("".join(t) if isinstance(t, list) else t for t in texts)
                assert not MACHINE_PATH.search(text), f"{notebook.name}: {MACHINE_PATH.search(text).group(0)}"


def test_readme_is_a_short_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move details into the fitting page of docs/"
    text = "\n".join(lines)
    for command in ('python -m pip install . && refvit verify', 'python -m pip install ".[test,tutorials]" && '
                    'python -m pytest', 'python -m pip install ".[docs]" && bash docs/build.sh'):
        assert f"\n{command}\n" in text, command


def test_no_tracked_file_names_an_issue_number():
    # the code, the docs, the notebooks: what a reader needs is said where it is, not filed under a tracker's number
    data = ("golden/cases/", "golden/processing/", "golden/models/")
    found = []
    for path in tracked_files():
        if path.relative_to(ROOT).as_posix().startswith(data):
            continue
        for n, line in enumerate((text_of(path) or "").splitlines(), 1):
            if ISSUE_NUMBER.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not found, "issue numbers (say what the code does instead):\n" + "\n".join(found)


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert links
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not missing, missing


def test_api_reference_lists_every_public_name():
    api = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^\.\. auto(?:function|class|exception|data):: refvit\.(\w+)$", api, re.M))
    assert documented == set(refvit.__all__), (f"missing from docs/api.md: {sorted(set(refvit.__all__) - documented)}; "
                                               f"not public: {sorted(documented - set(refvit.__all__))}")
