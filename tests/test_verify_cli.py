"""`refvit verify`: rows as each run finishes, a progress bar on a terminal (--quiet: none), a table that fits 120
columns (--wide: everything), and float64 real-size models that cast float32 weights at use, bit-identically."""

import json
import platform
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

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


def _leaves(node):
    if isinstance(node, dict):
        return [x for k in sorted(node) for x in _leaves(dict.__getitem__(node, k))]
    if isinstance(node, list):
        return [x for v in list.__iter__(node) for x in _leaves(v)]
    return [node]


def test_bit_draw_kept_float32_gives_the_same_float64_params(monkeypatch):
    """BiT standardises its convolution weights in float64 from the draw whatever its dtype: a float32 draw (what
    verify keeps, to hold less) gives the same float64 params, bit for bit, as a draw cast to float64 first."""
    case = ROOT / "golden" / "cases" / "bit_50_448"
    meta = json.loads((case / "meta.json").read_text())
    config = {**json.loads((case / "config.json").read_text()), "depths": [1, 1, 1, 1],
              "hidden_sizes": [16, 32, 48, 64], "embedding_size": 8, "num_groups": 2}  # BiT-50's layout, small
    shapes = verify.synthetic.shapes_for(config, meta["architecture"])
    kept, _ = verify._seeded(case, config, shapes, meta, "float64", "numpy")
    monkeypatch.setattr(verify, "_standardised_in_float64", lambda meta: False)
    cast, _ = verify._seeded(case, config, shapes, meta, "float64", "numpy")
    a, b = _leaves(kept.params), _leaves(cast.params)
    assert len(a) == len(b) > 10
    assert all(p.dtype == q.dtype and np.array_equal(p, q) for p, q in zip(a, b)
               if isinstance(p, np.ndarray) and p.dtype.kind == "f")
    assert all(p.dtype == np.float64 for p in a if isinstance(p, np.ndarray) and p.dtype.kind == "f")


def test_runs_in_a_worker_process_fresh_when_asked_and_errors_come_back():
    """verify's runs happen in a child process; `fresh` starts a new one; a user error comes back as itself."""
    case = ROOT / "golden" / "cases" / "vit_model"
    with verify.Worker() as worker:
        first = worker.call("run_case", case, "float32", "numpy")
        assert first.ok and first.errors and worker.started == 1
        assert worker.call("run_case", case, "float32", "numpy").errors == first.errors and worker.started == 1
        assert worker.call("run_case", case, "float32", "numpy", fresh=True).ok and worker.started == 2
        process = worker._process
        try:
            worker.call("run_case", ROOT / "golden" / "cases" / "no_such_case", "float32", "numpy")
        except OSError as e:
            assert "no_such_case" in str(e)
        else:
            raise AssertionError("a missing case raised nothing")
    assert worker._process is None and not process.is_alive()


FREED = """
import sys, numpy as np
from refvit.verify import _give_freed_arrays_back, _resident_mib
if sys.argv[1] == "fixed":
    _give_freed_arrays_back()
a = np.ones(2 * 2**20); del a  # a 16 MiB block mapped and freed: glibc raises its mmap threshold to 16 MiB
pairs = [(np.ones(2**20), np.ones(2**14)) for _ in range(8)]  # 8 MiB arrays, each with a 128 KiB one after it
small = [p[1] for p in pairs]
before = _resident_mib()
del pairs
print(before - _resident_mib())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mmap threshold (Linux with glibc only)")
def test_the_worker_gives_freed_arrays_back_to_the_system():
    """Freed 8 MiB arrays below live small ones: held by the heap under glibc's raised threshold (the control), given
    back at once in verify's worker, whose threshold is fixed at 1 MiB (docs/golden.md, Memory)."""
    freed = {how: float(subprocess.run([sys.executable, "-c", FREED, how], capture_output=True, text=True, env=ENV,
                                       check=True).stdout) for how in ("default", "fixed")}
    assert freed["default"] < 16 and freed["fixed"] > 60, freed


SERVE = """
import multiprocessing, threading
from refvit import verify
calls = []
verify._give_freed_arrays_back = lambda: calls.append("fixed")
parent, child = multiprocessing.Pipe()
threading.Thread(target=parent.send, args=(None,)).start()  # None ends the worker's loop at once
verify._serve(child)
print(calls)
"""


def test_the_worker_loop_fixes_the_threshold_before_its_first_run():
    out = subprocess.run([sys.executable, "-c", SERVE], capture_output=True, text=True, env=ENV, check=True).stdout
    assert out.strip() == "['fixed']"


class _Finalizer:
    """Ctrl-C landing while a finalizer runs (a replaced worker's pipe or process being collected)."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the KeyboardInterrupt is raised here, inside __del__, where Python prints and drops it


def test_a_ctrl_c_dropped_inside_a_finalizer_still_stops_verify(monkeypatch):
    previous = signal.getsignal(signal.SIGINT)
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))  # where Python reports it
    after_the_call = []
    with pytest.raises(KeyboardInterrupt), verify.Worker() as worker:
        finalizer = _Finalizer()
        del finalizer  # Python: "Exception ignored in ... KeyboardInterrupt"; nothing propagates
        assert worker.interrupted
        worker.call("run_processing_case", ROOT / "golden" / "processing" / "vit_defaults")
        after_the_call.append(True)
    assert not after_the_call and worker.started == 0  # the call raised it, before starting a process
    assert signal.getsignal(signal.SIGINT) is previous
    assert dropped == [KeyboardInterrupt]


def test_a_ctrl_c_dropped_after_the_last_run_still_ends_as_interrupted(monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", lambda u: None)
    with pytest.raises(KeyboardInterrupt):
        with verify.Worker():
            finalizer = _Finalizer()
            del finalizer  # dropped; no call follows
