"""Shared fixtures (where the golden cases are) and CI's skip policy.

Markers (registered below):
- `must_run`: CI must run this test. With `REFVIT_CI=1` a skipped must-run test fails the session (exit 1). Every
  collected test gets it (`pytest_collection_modifyitems`): CI runs every test, in one of two stages.
- `needs_framework`: the test compares with torch/transformers (the `golden` extra) and skips, with a reason, where
  they are not installed. CI runs the suite in two stages (see .ci/run):
    stage `base` (default): the README's test command, no framework: needs_framework tests may skip there, every
        other must-run test must run;
    stage `framework` (`REFVIT_CI_STAGE=framework`, after installing the `golden` extra, `-m needs_framework`):
        every needs_framework test must run, none may skip.
  A test that skips because torch or transformers cannot be imported but is not marked needs_framework also fails
  CI: stage 2 would never run it.
- `needs_docs`: the test builds the documentation site and drives a real browser over it (the `docs` extra and
  Debian's chromium + chromium-driver); it skips, with a reason, where they are missing. It may skip in the stages
  `base` and `framework`; CI's docs stage (`REFVIT_CI_STAGE=docs`, after installing them, `-m needs_docs`) fails
  when one skips.
- `needs_timm`: the test compares with timm itself (timm's own code is the oracle) and skips, with a reason, where
  timm cannot be imported. CI stage `timm` (`REFVIT_CI_STAGE=timm`, in the throwaway timm venv .ci/run builds,
  `-m needs_timm`) runs them and none may skip there; a test that skips for want of timm without the marker fails CI.
At the end of every run a summary gives the number of skipped tests grouped by reason.
"""

import os
import re
from collections import Counter
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

CI = os.environ.get("REFVIT_CI", "") not in ("", "0")
STAGES = ("base", "framework", "docs", "timm")
STAGE = os.environ.get("REFVIT_CI_STAGE", "base")
FRAMEWORK_IMPORT = re.compile(r"could not import '(torch|transformers|safetensors\.torch)[.']")
TIMM_IMPORT = re.compile(r"could not import '(timm|torchvision)[.']")

_skips: list = []  # (nodeid, reason, marker names) of every skipped test


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true",
                     help="run the fuzz tests with many examples (same as REFVIT_FUZZ_LONG=1; count: REFVIT_FUZZ_EXAMPLES)")


def pytest_configure(config):
    config.addinivalue_line("markers", "must_run: CI (REFVIT_CI=1) fails the session when this test is skipped")
    config.addinivalue_line("markers", "needs_framework: needs torch/transformers (the `golden` extra); skips without "
                                       "them, and must run in CI stage `framework`")
    config.addinivalue_line("markers", "needs_docs: builds the docs site and browses it in chromium (the `docs` extra, "
                                       "Debian's chromium + chromium-driver); skips without them, must run in CI "
                                       "stage `docs`")
    config.addinivalue_line("markers", "needs_timm: compares with timm itself; skips without timm, and must run in CI "
                                       "stage `timm` (the timm venv of .ci/run)")
    if STAGE not in STAGES:
        raise pytest.UsageError(f"REFVIT_CI_STAGE={STAGE!r}: expected one of {', '.join(STAGES)}")
    if config.getoption("--fuzz-long"):
        os.environ["REFVIT_FUZZ_LONG"] = "1"  # read by tests/test_fuzz_support.py when the fuzz modules are collected


def pytest_collection_modifyitems(config, items):
    for item in items:  # CI runs every test: each one is must-run; needs_framework ones run in stage `framework`
        item.add_marker(pytest.mark.must_run)


def skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _skips.append((report.nodeid, skip_reason(report), set(report.keywords)))


def ci_violation(reason: str, markers: set, stage: str = STAGE) -> str | None:
    """Why a skip with this reason and these markers fails CI in `stage`, or None when the skip is allowed."""
    framework, needs_timm = "needs_framework" in markers, "needs_timm" in markers
    if TIMM_IMPORT.search(reason) and not needs_timm:
        return "skips without timm but is not marked needs_timm (CI stage `timm` would not run it)"
    if FRAMEWORK_IMPORT.search(reason) and not (framework or needs_timm):
        return "skips without torch/transformers but is not marked needs_framework (CI stage 2 would not run it)"
    if stage == "framework" and framework:
        return "needs_framework test skipped in CI stage `framework` (the golden extra is installed)"
    docs = "needs_docs" in markers
    if stage == "docs" and docs:
        return "needs_docs test skipped in CI stage `docs` (the docs extra and chromium are installed)"
    if docs:
        return None  # stages base and framework: the docs stage runs it
    if stage == "timm" and needs_timm:
        return "needs_timm test skipped in CI stage `timm` (the timm venv is installed)"
    if needs_timm and stage != "timm":
        return None  # runs in stage `timm`
    if "must_run" in markers and not (framework and stage == "base"):
        return "must_run test skipped in CI"
    return None


def violations() -> list:
    found = [(nodeid, ci_violation(reason, markers), reason) for nodeid, reason, markers in _skips]
    return [(nodeid, why, reason) for nodeid, why, reason in found if why is not None]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if CI and violations() and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    write = terminalreporter.write_line
    by_reason = Counter(reason for _, reason, _ in _skips)
    terminalreporter.section("skipped tests by reason")
    write(f"{len(_skips)} skipped" + (f" (CI stage {STAGE})" if CI else ""))
    for reason, count in by_reason.most_common():
        write(f"{count:5d}  {reason}")
    if CI:
        bad = violations()
        write(f"must-run tests skipped: {len(bad)}")
        for nodeid, why, reason in bad:
            write(f"FAILED (skipped) {nodeid}: {why}: {reason}", red=True)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


def golden_case(name: str) -> Path:
    path = GOLDEN / "cases" / name
    if not path.is_dir():
        pytest.fail(f"golden case {name} is missing: run python golden/generate.py")
    return path


def framework(name: str = "transformers"):
    """Import torch / transformers (or a submodule) for a needs_framework test; skip it, saying why, without them."""
    return pytest.importorskip(name, reason=f"could not import '{name}': needs the `golden` extra "
                                            f"(pip install \".[golden]\": torch 2.13.0 CPU + transformers 5.23.0)")


def timm_oracle(name: str = "timm"):
    """Import timm (or torch, torchvision) for a needs_timm test; skip it, saying why, without them.

    A folder named like the package on sys.path (golden/timm, once golden/ is put there for golden/timm_cases.py)
    imports as an empty namespace package where the package is not installed; that is "not installed" too."""
    reason = (f"could not import '{name}': needs the timm venv (.ci/run stage `timm`: torch 2.14.1 + torchvision "
              "0.29.1 + timm, see docs/guide/timm.md)")
    module = pytest.importorskip(name, reason=reason)
    if getattr(module, "__file__", None) is None:
        pytest.skip(f"{reason}; '{name}' resolved to the namespace folder(s) {list(module.__path__)}, not the package")
    return module


def golden_timm_case(name: str) -> Path:
    path = GOLDEN / "timm" / "models" / name
    if not path.is_dir():
        pytest.fail(f"golden timm case {name} is missing: run python golden/generate.py --timm (timm venv)")
    return path
