"""How a refvit command ends: one handler turns whatever stopped it into an exit code and, at most, one line.

Every command-line entry point (`refvit ...`, `python -m refvit.evaluate ...`) runs its body through `run`:

====  ============================================================================================================
exit  meaning
====  ============================================================================================================
0     done; every check passed
1     a verdict: something was checked and did not pass (or, for `compare`, was not checked at all: INCOMPLETE)
2     unusable input: a bad option, a missing/unreadable/unwritable file, a malformed file (a `RefvitError`),
      a missing optional package; one line on stderr says what and what to do
70    a bug in refvit: the traceback is printed with a request to report it (sysexits' EX_SOFTWARE)
130   interrupted (Ctrl-C): one line says what was kept (for evaluate/classify: what was saved, how to --resume)
141   stdout was closed by its reader (`refvit compare ... --json | head`): nothing more is written
====  ============================================================================================================
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager

from .errors import RefvitError

OK, FAILED, USAGE, BUG, INTERRUPTED, CLOSED_PIPE = 0, 1, 2, 70, 130, 141

# optional packages a command may need, and the extra that installs each (pyproject.toml)
EXTRAS = {"dask": "dask", "distributed": "dask", "matplotlib": "tutorials", "huggingface_hub": "hub",
          "torch": "golden", "transformers": "golden", "safetensors": "golden", "onnx": "onnx",
          "onnxruntime": "onnx"}


@contextmanager
def note_on_interrupt(note):
    """Within this block, Ctrl-C's one-line note is `note` (a string, or a callable returning one, called then)."""
    try:
        yield
    except KeyboardInterrupt as e:
        if not hasattr(e, "refvit_note"):
            try:
                e.refvit_note = note() if callable(note) else note
            except Exception:  # the note is a courtesy: never let it hide the interrupt
                e.refvit_note = ""
        raise


def describe_os_error(e: OSError) -> str:
    """`path: reason`, with a hint for the two reasons a user can fix."""
    if e.filename is None:
        return str(e)
    what = f"{e.filename}: {e.strerror or e}"
    if isinstance(e, FileNotFoundError):
        folder = os.path.dirname(os.fspath(e.filename)) if isinstance(e.filename, (str, os.PathLike)) else ""
        if folder and not os.path.isdir(folder):
            what += f" (the folder {folder} does not exist: create it, or choose another path)"
    elif isinstance(e, PermissionError):
        what += " (choose a path you can write to)" if e.errno == 13 else ""
    return what


def missing_extra(e: ModuleNotFoundError) -> str:
    """The one-line message for an optional package that is not installed."""
    top = (e.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    return f"needs {top}, which is not installed" + (f": pip install 'refvit[{extra}]'" if extra else "")


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr gone too: nothing left to tell
        pass


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced (e.g. captured by a test): nothing to redirect
        pass


def run(prog: str, body) -> int:
    """`body()`'s exit code, or the code for what stopped it (module docstring); `prog` starts each line."""
    try:
        return body()
    except KeyboardInterrupt as e:
        note = getattr(e, "refvit_note", "")
        _say(f"{prog}: interrupted" + (f"; {note}" if note else ""))
        return INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return CLOSED_PIPE
    except RefvitError as e:
        _say(f"{prog}: {type(e).__name__}: {e}")
        return USAGE
    except OSError as e:
        _say(f"{prog}: {describe_os_error(e)}")
        return USAGE
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in EXTRAS:
            return _bug(prog)
        _say(f"{prog}: {missing_extra(e)}")
        return USAGE
    except SystemExit as e:  # argparse's usage errors, --help and --version: already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else USAGE)
    except Exception:
        return _bug(prog)


def _bug(prog: str) -> int:
    traceback.print_exc()
    _say(f"{prog}: this is a bug in refvit, not a mistake in how you ran it. Please report it to the "
         "refvit maintainers with the command line, `refvit --version` and the traceback above.")
    return BUG
