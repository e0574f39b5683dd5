"""Shared fixtures: where the golden cases are."""

from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


def golden_case(name: str) -> Path:
    path = GOLDEN / "cases" / name
    if not path.is_dir():
        pytest.fail(f"golden case {name} is missing: run python golden/generate.py")
    return path
