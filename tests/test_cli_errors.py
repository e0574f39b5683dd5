"""Every user mistake, on every subcommand, ends in a non-zero exit and a short message: never a traceback.

The table runs each invocation in this process (`refvit.cli.main`, which never raises); a closed pipe and Ctrl-C need
a real process and run as subprocesses. The exit codes are those of refvit/exits.py: 2 unusable input, 130
interrupted, 141 closed pipe.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from refvit import evaluate
from refvit.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "golden" / "models" / "digits-bit"  # a small trained classifier with its preprocessor_config.json
CASE = ROOT / "golden" / "cases" / "deit_classification"  # a golden case: a reference for compare
SEG = ROOT / "golden" / "cases" / "beit_segmentation"
IMAGE = ROOT / "golden" / "images" / "chelsea_landscape.jpg"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Paths for the table: missing, empty and garbage files of each kind, folders that cannot take an output."""
    d = tmp_path_factory.mktemp("bad")
    paths = {"missing": d / "missing", "nodir": d / "no-such-folder", "tmp": d, "empty_dir": d / "empty-dir",
             "model": MODEL, "case": CASE, "seg": SEG, "image": IMAGE, "images": ROOT / "golden" / "images"}
    paths["empty_dir"].mkdir()
    for suffix in ["png", "jpg", "npy", "npz", "json", "jsonl", "csv", "safetensors"]:
        (d / f"empty.{suffix}").write_bytes(b"")
        (d / f"garbage.{suffix}").write_bytes(b"\x00garbage, not a real file\xff" * 8)
        paths[f"empty_{suffix}"], paths[f"garbage_{suffix}"] = d / f"empty.{suffix}", d / f"garbage.{suffix}"
    (d / "list.json").write_text('{"not": "a label map of ints"}')
    paths["wrong_json"] = d / "list.json"
    for name, files in {"garbage_model": {"config.json": "{not json"},
                        "bad_weights": {"config.json": (MODEL / "config.json").read_text(),
                                        "model.safetensors": "garbage"}}.items():
        (d / name).mkdir()
        for f, text in files.items():
            (d / name / f).write_text(text)
        paths[name] = d / name
    (d / "labelled" / "tabby").mkdir(parents=True)  # an ImageFolder: labels that --label-map maps
    (d / "labelled" / "tabby" / "cat.jpg").write_bytes(IMAGE.read_bytes())
    paths["labelled"] = d / "labelled"
    paths["a_file"] = d / "garbage.json"  # a file where a folder is expected: nothing can be written below it
    return {k: str(v) for k, v in paths.items()}


CASES = {  # id: argv template ({name}: a path of the `bad` fixture)
    # verify
    "verify-unknown-case": "verify --cases nope",
    "verify-missing-golden": "verify --golden {missing}",
    "verify-empty-golden": "verify --golden {empty_dir}",
    "verify-bad-dtype": "verify --dtype float16",
    "verify-bad-backend": "verify --backend cuda",
    # classify
    "classify-missing-image": "classify {model} {missing}.png --backend numpy",
    "classify-empty-image": "classify {model} {empty_png} --backend numpy",
    "classify-garbage-image": "classify {model} {garbage_jpg} --backend numpy",
    "classify-missing-model": "classify {missing} {image}",
    "classify-empty-model-dir": "classify {empty_dir} {image}",
    "classify-garbage-config": "classify {garbage_model} {image}",
    "classify-garbage-weights": "classify {bad_weights} {image}",
    "classify-top-k-zero": "classify {model} {image} --top-k 0",
    "classify-top-k-word": "classify {model} {image} --top-k five",
    "classify-out-missing-folder": "classify {model} {images} --out {nodir}/p.jsonl",
    "classify-out-below-a-file": "classify {model} {images} --out {a_file}/p.jsonl",
    "classify-out-is-a-folder": "classify {model} {images} --out {tmp}",
    "classify-empty-list": "classify {model} {empty_csv} --backend numpy",
    "classify-garbage-list": "classify {model} {garbage_jsonl} --backend numpy",
    "classify-resume-without-out": "classify {model} {images} --resume",
    "classify-resume-garbage-results": "classify {model} {images} --out {garbage_jsonl} --resume",
    "classify-bad-dtype": "classify {model} {image} --dtype float16",
    "classify-batch-size-zero": "classify {model} {images} --batch-size 0",
    "classify-workers-negative": "classify {model} {images} --workers -1",
    "classify-hub-offline": "classify nobody-xyz/not-cached {image}",
    # evaluate
    "evaluate-missing-data": "evaluate {model} {missing}",
    "evaluate-empty-data": "evaluate {model} {empty_dir}",
    "evaluate-garbage-list": "evaluate {model} {garbage_csv}",
    "evaluate-out-missing-folder": "evaluate {model} {images} --out {nodir}/r.jsonl",
    "evaluate-png-missing-folder": "evaluate {model} {images} --png {nodir}/c.png",
    "evaluate-missing-reference": "evaluate {model} {images} --reference {missing}.npz",
    "evaluate-garbage-reference": "evaluate {model} {images} --reference {garbage_npz}",
    "evaluate-missing-label-map": "evaluate {model} {labelled} --label-map {missing}.json",
    "evaluate-garbage-label-map": "evaluate {model} {labelled} --label-map {garbage_json}",
    "evaluate-empty-label-map": "evaluate {model} {labelled} --label-map {empty_json}",
    "evaluate-wrong-label-map": "evaluate {model} {labelled} --label-map {wrong_json}",
    "evaluate-label-map-unlabelled-data": "evaluate {model} {images} --label-map {wrong_json}",
    "evaluate-worst-word": "evaluate {model} {images} --worst many",
    "evaluate-hub-offline": "evaluate nobody-xyz/not-cached {images}",
    # segment
    "segment-out-missing-folder": "segment {seg} {image} --out {nodir}/m.png",
    "segment-missing-image": "segment {seg} {missing}.png",
    "segment-garbage-image": "segment {seg} {garbage_png} --backend numpy --out {tmp}/m.png",
    "segment-not-a-segmenter": "segment {model} {image} --backend numpy --out {tmp}/m.png",
    "segment-hub-offline": "segment nobody-xyz/not-cached {image} --out {tmp}/m.png",
    # bench
    "bench-from-json-missing": "bench --from-json {missing}.json",
    "bench-from-json-empty": "bench --from-json {empty_json}",
    "bench-from-json-garbage": "bench --from-json {garbage_json}",
    "bench-from-json-wrong": "bench --from-json {wrong_json}",
    "bench-unknown-model": "bench --models deit-huge",
    "bench-repeat-zero": "bench --repeat 0",
    "bench-batch-word": "bench --batch one",
    "bench-unknown-peer": "bench --peers jax",
    # inspect
    "inspect-missing": "inspect {missing}",
    "inspect-empty-dir": "inspect {empty_dir}",
    "inspect-garbage-config": "inspect {garbage_model}",
    "inspect-garbage-weights": "inspect {bad_weights}",
    "inspect-a-file": "inspect {garbage_json}",
    "inspect-hub-offline": "inspect nobody-xyz/not-cached",
    # trace
    "trace-missing-input": "trace {model} {missing}.png --out {tmp}/t.safetensors",
    "trace-garbage-npy": "trace {model} {garbage_npy} --out {tmp}/t.safetensors",
    "trace-empty-npy": "trace {model} {empty_npy} --out {tmp}/t.safetensors",
    "trace-out-missing-folder": "trace {model} {image} --out {nodir}/t.safetensors",
    "trace-missing-processor": "trace {model} {image} --processor {missing} --out {tmp}/t.safetensors",
    "trace-unknown-framework": "trace {model} {image} --framework jax",
    # capture
    "capture-missing-onnx": "capture onnx {missing}.onnx --like {case} --out {tmp}/c.safetensors",
    "capture-garbage-onnx": "capture onnx {garbage_json} --like {case} --out {tmp}/c.safetensors",
    "capture-missing-like": "capture onnx {garbage_json} --like {missing} --out {tmp}/c.safetensors",
    "capture-out-missing-folder": "capture onnx {garbage_json} --like {case} --out {nodir}/c.safetensors",
    "capture-no-runtime": "capture",
    # compare
    "compare-missing": "compare {missing} {missing}",
    "compare-empty-candidate": "compare {case} {empty_safetensors}",
    "compare-garbage-candidate": "compare {case} {garbage_safetensors}",
    "compare-garbage-npz": "compare {case} {garbage_npz}",
    "compare-missing-map": "compare {case} {case} --map {missing}.json",
    "compare-garbage-map": "compare {case} {case} --map {garbage_json}",
    "compare-bad-tolerance": "compare {case} {case} --tolerance huge",
    "compare-bad-override": "compare {case} {case} --tolerance =1e-3",
    # precision
    "precision-missing-model": "precision {missing} {image} --format bf16",
    "precision-bad-format": "precision {model} {image} --format fp8",
    "precision-garbage-image": "precision {model} {garbage_png} --format bf16 --backend numpy",
    "precision-garbage-npy": "precision {model} {garbage_npy} --format bf16 --backend numpy",
    # the command itself
    "no-command": "",
    "unknown-command": "frobnicate",
}


EXPECTED = {  # single-image classify: the good images are printed, the bad ones listed, exit 1 (not 2)
    "classify-missing-image": 1, "classify-empty-image": 1, "classify-garbage-image": 1}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_invocation_is_one_clean_line(name, bad, capsys, monkeypatch, tmp_path):
    """Non-zero exit, a message on stderr, no traceback; a hub id is looked up offline in an empty cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    argv = CASES[name].format(**bad).split()
    code = main(argv)
    err = capsys.readouterr().err
    assert code not in (0, None), f"refvit {' '.join(argv)} exited 0"
    assert "Traceback" not in err, err
    assert err.strip(), "no message on stderr"
    assert code == EXPECTED.get(name, 2), (code, err)


def test_usage_errors_are_one_line(capsys):
    """argparse's mistakes come as one line that names the option and points at --help, not the usage block."""
    assert main(["classify", str(MODEL), str(IMAGE), "--top-k", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["refvit classify: argument --top-k: 0 is less than 1 "
                                        "(see refvit classify --help)"]


def test_version(capsys):
    from refvit import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"refvit {__version__}"


def test_every_positional_has_help():
    from refvit.cli import build_parser

    def check(parser):
        for action in parser._actions:
            if not action.option_strings:
                assert action.help, f"{parser.prog} {action.dest}: no help"
            if isinstance(action.choices, dict):  # a subcommand's parsers
                for sub in action.choices.values():
                    check(sub)

    check(build_parser())


def test_exits_handler():
    """The top-level handler: RefvitError/OSError 2, Ctrl-C 130 with its note, a bug 70 with the traceback."""
    from refvit import exits
    from refvit.errors import InputError

    def raising(e):
        def body():
            raise e
        return body

    def interrupted():
        with exits.note_on_interrupt(lambda: "3 images saved"):
            raise KeyboardInterrupt

    assert exits.run("refvit x", raising(InputError("bad"))) == 2
    assert exits.run("refvit x", raising(FileNotFoundError(2, "No such file or directory", "a/b"))) == 2
    assert exits.run("refvit x", interrupted) == 130
    assert exits.run("refvit x", raising(ZeroDivisionError())) == 70
    assert exits.run("refvit x", raising(ModuleNotFoundError("no dask", name="dask"))) == 2
    assert exits.run("refvit x", lambda: 1) == 1


def test_handler_messages(capsys):
    from refvit import exits

    def interrupted():
        with exits.note_on_interrupt(lambda: "3 images saved in r.jsonl"):
            raise KeyboardInterrupt

    exits.run("refvit evaluate", interrupted)
    assert capsys.readouterr().err == "refvit evaluate: interrupted; 3 images saved in r.jsonl\n"

    def bug():
        return {}["missing"]

    exits.run("refvit x", bug)
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "bug in refvit" in err.splitlines()[-1]


def test_evaluate_module_bad_input(tmp_path, capsys, monkeypatch):
    """`python -m refvit.evaluate` goes through the same handler; its bench says when it needs Dask."""
    from refvit import batch

    assert evaluate.main(["bench", str(MODEL), str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert evaluate.main(["bench", str(tmp_path), str(IMAGE.parent)]) == 2
    assert "config.json" in capsys.readouterr().err
    assert evaluate.main(["photos", str(tmp_path), "-n", "many"]) == 2
    monkeypatch.setattr(batch, "dask_available", lambda: False)
    assert evaluate.main(["bench", str(MODEL), str(IMAGE.parent), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "refvit[dask]" in err and "Traceback" not in err, err
    assert evaluate.main(["bench-one", str(MODEL), str(IMAGE.parent), "--workers", "1"]) == 2
    assert "refvit[dask]" in capsys.readouterr().err


def test_closed_pipe_is_quiet():
    """`refvit compare ... --json | head -1`: the reader goes away; refvit stops quietly (141), no BrokenPipeError."""
    proc = subprocess.Popen([sys.executable, "-m", "refvit.cli", "compare", str(CASE), str(CASE), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT)
    proc.stdout.close()  # as `head` does once it has its lines (here before any: no race with a short output)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


def test_ctrl_c_during_verify():
    """SIGINT while verify runs: exit 130, one line, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "refvit.cli", "verify", "--backend", "numpy", "--dtype",
                             "float64", "--progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                            cwd=ROOT)
    first = proc.stderr.readline()  # the first finished run: verify is under way
    assert first.strip(), "verify printed no progress"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err.decode() and "interrupted" in err.decode(), err
