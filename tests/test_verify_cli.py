"""`refvit verify`: rows as each run finishes, a progress bar on a terminal (--quiet: none), a table that fits 120
columns (--wide: everything), and float64 real-size models that cast float32 weights at use, bit-identically."""

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np

from refvit import verify
from refvit.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
FAST = ["verify", "--cases", "vit_model", "deit_mim", "--backend", "numpy", "--dtype", "float32"]


def test_table_fits_120_columns_and_wide_shows_everything(capsys):
    assert main(FAST) == 0
    out = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 120 for line in out), max(out, key=len)
    assert any(line.startswith("deit_mim") and line.endswith("…") for line in out)  # cut to fit
    assert not any("ViTModel" in line for line in out)
    assert main(FAST + ["--wide"]) == 0
    wide = capsys.readouterr().out
    assert "ViTModel" in wide and "…" not in wide and "reconstruction" in wide


def _on_a_terminal(argv):
    """Run refvit with stderr on a pseudo-terminal: (stdout, what the terminal showed)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "refvit.cli", *argv], stdout=subprocess.PIPE, stderr=follower,
                            env=ENV, cwd=ROOT)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    out = proc.communicate(timeout=300)[0].decode()
    os.close(leader)
    assert proc.returncode == 0
    return out, shown.decode()


def test_progress_bar_on_a_terminal_and_quiet():
    out, shown = _on_a_terminal(FAST)
    assert "ETA" in shown and "0/2" in shown and "2/2" in shown and "vit_model numpy float32" in shown
    assert "2 passed, 0 failed" in out
    out, shown = _on_a_terminal(FAST + ["--quiet"])
    assert "ETA" not in shown and "2 passed, 0 failed" in out


def test_upcast_float64_is_bit_identical():
    """A float64 DeiT whose float32 weights are cast at each use gives the same bits as one built in float64."""
    case = ROOT / "golden" / "cases" / "deit_tiny_teacher_224"
    with np.load(case / "inputs.npz") as z:
        x = {k: z[k] for k in z.files}
    lazy, meta = verify.load_case_model(case, "float64", "numpy")
    assert isinstance(lazy.params, verify._Upcast)
    config = json.loads((case / "config.json").read_text())
    full, _ = verify._seeded(case, config, verify.synthetic.shapes_for(config, meta["architecture"]), meta, "float64",
                             "numpy")
    a = lazy(**x, output_hidden_states=True, output_attentions=True)
    b = full(**x, output_hidden_states=True, output_attentions=True)
    assert a.logits.dtype == np.float64 and np.array_equal(a.logits, b.logits)
    assert all(np.array_equal(p, q) for p, q in zip(a.hidden_states + a.attentions, b.hidden_states + b.attentions))
