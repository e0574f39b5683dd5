"""No line in refvit/ is longer than 120 characters (the width the code, its tables and its comments are laid out for:
side by side with the paper, and in a review diff)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_CHARS = 120


def long_lines(files, root=ROOT):
    """(place, length) of every line over MAX_CHARS characters (characters, not bytes: `Δ` is one)."""
    for f in files:
        for number, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
            if len(line) > MAX_CHARS:
                yield f"{f.relative_to(root)}:{number}", len(line)


def test_no_line_in_refvit_over_120_characters():
    found = [f"{place} ({n} characters)" for place, n in long_lines(sorted((ROOT / "refvit").rglob("*.py")))]
    assert not found, f"lines over {MAX_CHARS} characters (wrap them):\n" + "\n".join(found)


def test_the_scan_counts_characters(tmp_path):
    (tmp_path / "a.py").write_text("Δ" * MAX_CHARS + "\n" + "x" * (MAX_CHARS + 1) + "\n", encoding="utf-8")
    assert list(long_lines([tmp_path / "a.py"], tmp_path)) == [("a.py:2", MAX_CHARS + 1)]
