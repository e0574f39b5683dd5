"""Shared machinery of the fuzz tests (tests/test_fuzz_*.py), and tests of that machinery.

The property every fuzz test checks: an input from a stranger gives either a correct result or a
`refvit.RefvitError` — never another exception, never a hang.

- CI: a few examples per target, derandomized (the same examples on every run, no example database), so the
  whole fuzz suite runs in seconds and a failure reproduces.
- Long campaign: `pytest --fuzz-long tests/test_fuzz_*.py` (or `REFVIT_FUZZ_LONG=1`) runs random examples,
  `REFVIT_FUZZ_EXAMPLES` of them per target (default 100_000).
- Every example runs under `time_guard`: SIGALRM interrupts Python code after `REFVIT_FUZZ_SECONDS` (default 20 s);
  code stuck in C that never returns to the interpreter (e.g. hashing a tuple DAG of 2**60 leaves) cannot be
  interrupted, so faulthandler kills the process after 3x that, printing every thread's traceback.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import resource
import signal
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from refvit.errors import RefvitError

LONG = os.environ.get("REFVIT_FUZZ_LONG", "") not in ("", "0")
LONG_EXAMPLES = int(os.environ.get("REFVIT_FUZZ_EXAMPLES", "100000"))
EXAMPLE_SECONDS = float(os.environ.get("REFVIT_FUZZ_SECONDS", "20"))


def fuzz_settings(ci_examples: int) -> settings:
    """Hypothesis settings of one fuzz target: `ci_examples` derandomized in CI, many random ones when long."""
    if LONG:
        return settings(max_examples=LONG_EXAMPLES, deadline=None, database=None, derandomize=False,
                        suppress_health_check=list(HealthCheck), print_blob=True)
    return settings(max_examples=ci_examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


class FuzzTimeout(BaseException):
    """Raised by the alarm: a BaseException, so refvit's own `except Exception` guards cannot turn a hang into an error."""


@contextlib.contextmanager
def time_guard(seconds: float = EXAMPLE_SECONDS):
    """Fail (AssertionError) when the body runs longer than `seconds`; kill the process when it is stuck in C code."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise FuzzTimeout(f"example still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(3 * seconds, exit=True)
    try:
        yield
    except FuzzTimeout as err:
        raise AssertionError(str(err)) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


@contextlib.contextmanager
def memory_cap(extra_bytes: int = 4 * 2**30):
    """Cap this process's address space at its current size + `extra_bytes` while the body runs, so an unbounded
    allocation fails as MemoryError (a test failure: not a RefvitError) instead of taking the machine down."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: no cap (the time guard still applies)
        yield
        return
    cap = current + extra_bytes if hard == resource.RLIM_INFINITY else min(hard, current + extra_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def warm_up(model, x, **options) -> None:
    """Call `model` on `x` and on a larger copy, with every output option off and on, so that Numba compiles (or loads
    from its cache) the kernels of those paths before the timed examples: on a loaded machine, compiling took longer
    than the time guard (a false "hang" in the first long campaign)."""
    bigger = np.pad(x, [(0, 0), (0, 0), (0, 8), (0, 8)])
    for flag in (False, True):
        for pixels in (x, bigger):
            try:
                model(pixels, output_hidden_states=flag, output_attentions=flag, interpolate_pos_encoding=flag, **options)
            except RefvitError:  # a model that takes only its configured size
                pass


def note_event(text: str) -> None:
    """hypothesis.event (shown by --hypothesis-show-statistics), and nothing outside a hypothesis test."""
    try:
        event(text)
    except Exception:  # noqa: BLE001 - not inside a hypothesis test
        pass


def outcome(call, *names: str):
    """Run `call()` under the time guard; return (result, None) or (None, the RefvitError it raised).

    Any other exception propagates and fails the example. A RefvitError must name each of `names` (the file, key
    or argument at fault) in its message.
    """
    with time_guard():
        try:
            result = call()
            note_event("accepted")
            return result, None
        except RefvitError as err:
            note_event(f"refused: {type(err).__name__}")
            message = str(err)
            for name in names:
                assert name in message, (name, message)
            assert len(message) < 20_000, f"error message of {len(message)} characters"
            return None, err


# ---------------------------------------------------------------------------------------------------------------------
# The machinery itself


def test_guard_interrupts_a_python_hang_even_through_except_exception():
    start = time.perf_counter()
    with pytest.raises(AssertionError, match="a hang"):
        with time_guard(0.2):
            while True:
                try:
                    time.sleep(0.01)
                except Exception:  # what refvit's guards look like: must not swallow the alarm
                    pass
    assert time.perf_counter() - start < 5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@fuzz_settings(1)
@given(st.just(0))
def test_outcome_passes_results_and_refvit_errors_only(_):
    assert outcome(lambda: 3) == (3, None)
    result, err = outcome(lambda: (_ for _ in ()).throw(RefvitError("model.safetensors: bad")), "model.safetensors")
    assert result is None and isinstance(err, RefvitError)
    with pytest.raises(KeyError):
        outcome(lambda: {}["x"])
    with pytest.raises(AssertionError):
        outcome(lambda: (_ for _ in ()).throw(RefvitError("vague")), "config.json")


def test_memory_cap_turns_a_huge_allocation_into_memory_error():
    import numpy as np

    before = resource.getrlimit(resource.RLIMIT_AS)
    with pytest.raises(MemoryError):
        with memory_cap(2**30):
            np.ones(2**31, np.uint8)
    assert resource.getrlimit(resource.RLIMIT_AS) == before


def test_ci_settings_are_bounded_and_reproducible():
    s = fuzz_settings(25)
    if not LONG:
        assert s.max_examples == 25 and s.derandomize and s.database is None
    assert s.deadline is None


@fuzz_settings(5)
@given(st.integers())
def test_settings_apply_to_a_given_test(n):
    assert outcome(lambda: n) == (n, None)
