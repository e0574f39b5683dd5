"""Every example of docs/guide/command-line.md runs and ends with the exit code it documents.

Each example is a ```console block after a `<!-- example: NAME [exit=N] [needs_framework] -->` line; its `$ ` lines run
in order in one bash, in a fresh folder where golden/ and tutorials/ are the repository's (read-only use), with
`refvit` as `python -m refvit.cli` (refvit need not be installed). Blocks marked needs_framework export with torch.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import framework

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "guide" / "command-line.md"
EXAMPLE = re.compile(r"<!-- example: (?P<name>\S+)(?P<opts>[^>]*)-->\n```console\n(?P<body>.*?)```", re.S)


def examples():
    found = []
    for m in EXAMPLE.finditer(PAGE.read_text(encoding="utf-8")):
        opts = m.group("opts").split()
        code = next((int(o[5:]) for o in opts if o.startswith("exit=")), 0)
        commands = [line[2:] for line in m.group("body").splitlines() if line.startswith("$ ")]
        marks = [pytest.mark.needs_framework] if "needs_framework" in opts else []
        found.append(pytest.param(m.group("name"), commands, code, id=m.group("name"), marks=marks))
    return found


def test_every_subcommand_has_an_example():
    from refvit.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    shown = {c.split()[1] for e in examples() for c in e.values[1] if c.startswith("refvit ")}
    assert set(sub.choices) <= shown, sorted(set(sub.choices) - shown)


@pytest.mark.parametrize("name,commands,code", examples())
def test_example_runs(name, commands, code, tmp_path, request):
    if request.node.get_closest_marker("needs_framework"):
        framework("torch")
        framework("transformers")
    for d in ("golden", "tutorials"):
        (tmp_path / d).symlink_to(ROOT / d)
    script = "set -e -o pipefail\nrefvit() { \"$PYTHON\" -m refvit.cli \"$@\"; }\npython() { \"$PYTHON\" \"$@\"; }\n"
    script += "\n".join(commands[:-1]) + "\nset +e\n" + commands[-1] + "\n"
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == code, f"{name}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr
