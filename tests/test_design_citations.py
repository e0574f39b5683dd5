"""Every `DESIGN.md §N` citation in refvit/, golden/ and tests/ names a section docs/DESIGN.md has (the code cites the
repository's design document; a renumbered or removed section shows up here)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"DESIGN(?:\.md)? ((?:§[\d.]+(?:, )?)+)")


def sections() -> set[str]:
    return set(re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "DESIGN.md").read_text(), re.M))


def citations() -> list[tuple[str, int, str]]:
    found = []
    for folder in ("refvit", "golden", "tests"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                for group in CITATION.findall(line):
                    found += [(str(f.relative_to(ROOT)), n, s) for s in re.findall(r"§([\d.]+)", group)]
    return found


def test_every_design_citation_names_an_existing_section():
    have = sections()
    assert {"1", "2", "3", "4", "5", "6", "7", "8"} <= have, have
    cited = citations()
    assert len(cited) > 20, cited                           # the scan finds the citations that exist
    wrong = [f"{f}:{n}: §{s}" for f, n, s in cited if s not in have]
    assert not wrong, f"citations of sections docs/DESIGN.md does not have ({sorted(have)}): {wrong}"


def test_the_scan_reads_lists_of_sections():
    assert CITATION.findall("(docs/DESIGN.md §2, §3, §5) and DESIGN §7") == ["§2, §3, §5", "§7"]
