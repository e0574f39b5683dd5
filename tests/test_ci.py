"""CI itself: .ci/run runs the README's test command with its status checked, and tests/conftest.py's skip
policy fails a CI session that skipped a must-run test (each case in a fresh pytest process on a tiny test file)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CI_RUN = (ROOT / ".ci" / "run").read_text()


def test_ci_runs_the_readme_test_command_verbatim_and_checks_it():
    readme_command = 'python -m pip install ".[test,tutorials]" && python -m pytest'
    assert f"\n{readme_command}\n" in (ROOT / "README.md").read_text()
    assert f"\nREADME_TEST_COMMAND='{readme_command}'\n" in CI_RUN
    assert '\nstep stage1-tests bash -c "$README_TEST_COMMAND"\n' in CI_RUN
    assert CI_RUN.startswith("#!/usr/bin/env bash") and "\nset -euo pipefail\n" in CI_RUN
    code = [line.split("#")[0] for line in CI_RUN.splitlines() if not line.lstrip().startswith("#")]
    lists = [line for line in code if "&&" in line or "||" in line]
    # the only lists: the README command (run by bash -c, its status checked), the step's `|| rc=$?`, an install's
    # `&& return 0` inside a function whose status step checks, and the summary's loop and grep
    allowed = ("README_TEST_COMMAND=", "|| rc=$?", "&& return 0", "|| true", "|| continue")
    assert all(any(a in line for a in allowed) for line in lists), lists


def test_ci_runs_every_framework_check():
    for command in ("REFVIT_CI_STAGE=framework python -m pytest -m needs_framework", "python golden/generate.py --check",
                    "python golden/train_digits.py --check", 'python -m pip install ".[golden,bench]"'):
        assert command in CI_RUN, command
    assert re.search(r"^export REFVIT_CI=1$", CI_RUN, re.M)


def test_ci_runs_every_timm_check():
    """The timm stage: its own venv with the pinned torch/torchvision pair, every needs_timm test, the timm goldens."""
    assert "TIMM_PACKAGES=(torch==2.14.1 torchvision==0.29.1 timm " in CI_RUN
    assert "\nstep timm-install install_timm\n" in CI_RUN
    assert 'REFVIT_CI_STAGE=timm PYTHONPATH="$PWD" "$TIMM_VENV/bin/python" -m pytest -m needs_timm $TIMM_TEST_FILES' \
        in CI_RUN and 'TIMM_TEST_FILES=$(grep -l "needs_timm" tests/test_*.py)' in CI_RUN
    assert '"$TIMM_VENV/bin/python" golden/generate.py --timm --check' in CI_RUN


POLICY_TESTS = '''
import pytest


def test_runs():
    pass


def test_skips_for_another_reason():
    pytest.skip("an optional package is missing")


@pytest.mark.needs_framework
def test_needs_torch():
    pytest.skip("could not import 'torch': No module named 'torch'")


def test_needs_torch_unmarked():
    pytest.skip("could not import 'transformers': No module named 'transformers'")


@pytest.mark.needs_docs
def test_needs_chromium():
    pytest.skip("needs the docs extra and Debian's chromium (/usr/bin/chromium missing)")


@pytest.mark.needs_timm
def test_needs_timm():
    pytest.skip("could not import 'timm': No module named 'timm'")


def test_needs_timm_unmarked():
    pytest.skip("could not import 'timm': No module named 'timm'")
'''


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("policy")
    shutil.copy(ROOT / "tests" / "conftest.py", directory / "conftest.py")
    (directory / "test_policy.py").write_text(POLICY_TESTS)
    return directory


def run_policy(directory, *select, ci=None, stage=None):
    env = {k: v for k, v in os.environ.items() if k not in ("REFVIT_CI", "REFVIT_CI_STAGE", "PYTEST_ADDOPTS")}
    env.update({k: v for k, v in (("REFVIT_CI", ci), ("REFVIT_CI_STAGE", stage)) if v is not None})
    node = [f"test_policy.py::{name}" for name in select] or ["test_policy.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *node], cwd=directory,
                          env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_outside_ci_skips_are_counted_by_reason_and_pass(policy_dir):
    rc, out = run_policy(policy_dir)
    assert rc == 0, out
    assert "6 skipped\n" in out and "    1  an optional package is missing" in out, out


def test_ci_fails_a_skipped_must_run_test(policy_dir):
    rc, out = run_policy(policy_dir, "test_runs", "test_skips_for_another_reason", ci="1")
    assert rc == 1, out
    assert "must-run tests skipped: 1" in out and "test_skips_for_another_reason: must_run test skipped" in out


def test_ci_stage_base_lets_marked_framework_tests_skip(policy_dir):
    rc, out = run_policy(policy_dir, "test_runs", "test_needs_torch", ci="1")
    assert rc == 0, out
    assert "1 skipped (CI stage base)" in out and "must-run tests skipped: 0" in out


def test_ci_stage_framework_fails_a_skipped_framework_test(policy_dir):
    rc, out = run_policy(policy_dir, "test_needs_torch", ci="1", stage="framework")
    assert rc == 1, out
    assert "needs_framework test skipped in CI stage `framework`" in out


def test_ci_fails_an_unmarked_test_that_skips_without_the_framework(policy_dir):
    rc, out = run_policy(policy_dir, "test_needs_torch_unmarked", ci="1")
    assert rc == 1, out
    assert "not marked needs_framework" in out


def test_ci_stages_base_and_framework_let_docs_tests_skip(policy_dir):
    for stage in ("base", "framework"):
        rc, out = run_policy(policy_dir, "test_runs", "test_needs_chromium", ci="1", stage=stage)
        assert rc == 0, out
        assert "must-run tests skipped: 0" in out


def test_ci_stage_docs_fails_a_skipped_docs_test(policy_dir):
    rc, out = run_policy(policy_dir, "test_needs_chromium", ci="1", stage="docs")
    assert rc == 1, out
    assert "needs_docs test skipped in CI stage `docs`" in out


def test_ci_runs_the_docs_stage():
    for command in ("apt-get install -y chromium chromium-driver", 'python -m pip install ".[docs]"',
                    "step docs-build bash docs/build.sh", "REFVIT_CI_STAGE=docs", "python -m pytest -m needs_docs",
                    'REFVIT_CI_ARTIFACTS="$ARTIFACTS"', 'ARTIFACTS="$LOGS/artifacts"'):
        assert command in CI_RUN, command
    # the docs stage runs before REFVIT_CI_NO_FRAMEWORK can end the run
    assert CI_RUN.index("step docs-browser-tests") < CI_RUN.index('if [ "${REFVIT_CI_NO_FRAMEWORK:-0}" = 1 ]')


def test_unknown_stage_is_refused(policy_dir):
    rc, out = run_policy(policy_dir, "test_runs", ci="1", stage="third")
    assert rc != 0 and "REFVIT_CI_STAGE='third'" in out


def test_ci_stages_base_and_framework_let_marked_timm_tests_skip(policy_dir):
    for stage in ("base", "framework"):
        rc, out = run_policy(policy_dir, "test_runs", "test_needs_timm", ci="1", stage=stage)
        assert rc == 0, out
        assert "must-run tests skipped: 0" in out


def test_ci_stage_timm_fails_a_skipped_timm_test(policy_dir):
    rc, out = run_policy(policy_dir, "test_needs_timm", ci="1", stage="timm")
    assert rc == 1, out
    assert "needs_timm test skipped in CI stage `timm`" in out


def test_ci_fails_an_unmarked_test_that_skips_without_timm(policy_dir):
    rc, out = run_policy(policy_dir, "test_needs_timm_unmarked", ci="1")
    assert rc == 1, out
    assert "not marked needs_timm" in out


def test_a_folder_named_timm_on_sys_path_is_not_timm(tmp_path, monkeypatch):
    """golden/timm/ (golden/ goes on sys.path for golden/timm_cases.py) imports as an empty namespace package where
    timm is not installed: the needs_timm tests then skip, as without timm, instead of failing on timm.create_model."""
    from conftest import timm_oracle

    name = "refvit_ci_namespace_probe"
    (tmp_path / name / "models").mkdir(parents=True)  # a folder with data in it, no __init__.py: golden/timm's shape
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"could not import '{name}'.*namespace folder"):
        timm_oracle(name)
    assert timm_oracle("json") is sys.modules["json"]  # a real package is returned
