"""Every citation of the method notes in code and docs names a section that docs/method.md has."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
THIS = Path(__file__).resolve()  # its examples below are not citations
SKIP_DIRS = {".git", ".venv", "venv", "outputs", ".flwr", "build", "dist", "node_modules"}

# "method.md §2b", "docs/method.md §2g items 1–5", "method.md §9 items 4-5", "method.md §9.7",
# "method.md §2b, §2f" (refs chained after one file name count too)
_REF = r"§\s*(\d+[a-z]?)(?:\.(\d+)|\s+items?\s+(\d+)(?:\s*[-–]\s*(\d+))?)?"
CITATION = re.compile(r"(?:docs/)?method\.md\s*(" + _REF + r"(?:\s*(?:,|and)\s*" + _REF + r")*)")
REF = re.compile(_REF)
HEADING = re.compile(r"^(#{2,4})\s+(\d+[a-z]?)\.\s")
ITEM = re.compile(r"^(\d+)\.\s")


def _sources() -> list[Path]:
    """The repository's *.py and *.md files, docs/method.md and this file excluded."""
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath) / name
            if path.suffix in (".py", ".md") and path not in (METHOD, THIS):
                found.append(path)
    return sorted(found)


def _citations() -> list[tuple[str, str, int | None, int | None]]:
    """``(where, section, first item, last item)`` for every citation in the sources."""
    out = []
    for path in _sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in CITATION.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            where = f"{path.relative_to(ROOT)}:{line}"
            for ref in REF.finditer(match.group(1)):
                section, dot, lo, hi = ref.groups()
                first = int(dot or lo) if (dot or lo) else None
                out.append((where, section, first, int(hi) if hi else first))
    return out


def _sections() -> dict[str, list[str]]:
    """Section id (``2g``, ``9``, ``10``) -> the lines up to the next heading."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in METHOD.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            match = HEADING.match(line)
            current = None
            if match:
                assert match.group(2) not in sections, f"duplicate heading §{match.group(2)}"
                current = sections[match.group(2)] = []
            continue
        if current is not None:
            current.append(line)
    return sections


def test_method_notes_exist() -> None:
    assert METHOD.is_file(), "docs/method.md is missing"
    sections = _sections()
    for number in map(str, range(1, 11)):
        assert number in sections, f"docs/method.md has no '## {number}.' heading"


def test_citations_are_found() -> None:
    # guards the regular expression: the code cites the notes dozens of times
    cited = _citations()
    assert len(cited) >= 40, f"only {len(cited)} citations found; is the pattern still right?"
    assert {"1a", "2b", "2e", "2g", "5", "9"} <= {section for _, section, _, _ in cited}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("method.md §2b", [("2b", None, None)]),
        ("docs/method.md §2g items 1–5", [("2g", 1, 5)]),
        ("(method.md §9 items 4-5)", [("9", 4, 5)]),
        ("method.md §9 item 3", [("9", 3, 3)]),
        ("(method.md §2b, §9.7).", [("2b", None, None), ("9", 7, 7)]),
        ("method.md §3).", [("3", None, None)]),
    ],
)
def test_citation_pattern(text: str, expected: list) -> None:
    match = CITATION.search(text)
    assert match is not None
    refs = []
    for ref in REF.finditer(match.group(1)):
        section, dot, lo, hi = ref.groups()
        first = int(dot or lo) if (dot or lo) else None
        refs.append((section, first, int(hi) if hi else first))
    assert refs == expected


def test_every_cited_section_exists() -> None:
    sections = _sections()
    missing = sorted({f"{where}: §{s}" for where, s, _, _ in _citations() if s not in sections})
    assert not missing, "cited sections absent from docs/method.md:\n" + "\n".join(missing)


def test_every_cited_item_exists() -> None:
    sections = _sections()
    missing = []
    for where, section, first, last in _citations():
        if first is None or section not in sections:
            continue
        items = {int(m.group(1)) for line in sections[section] if (m := ITEM.match(line))}
        absent = [i for i in range(first, last + 1) if i not in items]
        if absent:
            missing.append(f"{where}: §{section} item(s) {absent}")
    assert not missing, "cited items absent from docs/method.md:\n" + "\n".join(sorted(missing))
