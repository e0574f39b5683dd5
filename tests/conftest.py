"""Shared fixtures: where the golden cases are."""

import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true",
                     help="run the fuzz tests with many examples (same as REFVIT_FUZZ_LONG=1; count: REFVIT_FUZZ_EXAMPLES)")


def pytest_configure(config):
    if config.getoption("--fuzz-long"):
        os.environ["REFVIT_FUZZ_LONG"] = "1"  # read by tests/test_fuzz_support.py when the fuzz modules are collected


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


def golden_case(name: str) -> Path:
    path = GOLDEN / "cases" / name
    if not path.is_dir():
        pytest.fail(f"golden case {name} is missing: run python golden/generate.py")
    return path
