"""The floors of the house (README, "Layout"): a package imports only from its floor or below.

    launch/           bitfed-sim, bitfed-train, bitfed-memory, bitfed-data   (may use both apps)
    client/ server/   the two Flower apps, peers: neither imports the other
    glue/             Flower records <-> numpy, the Flower environment        (no ML)
    core/             the training core and the ML side of a round            (no Flower)

Read from the source with ``ast`` (every import, also the ones inside functions).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "core": {"flwr", "glue", "client", "server", "launch", "benchmarks", "tests"},
    "glue": {"client", "server", "launch", "benchmarks", "tests"},
    "client": {"server", "launch", "benchmarks", "tests"},
    "server": {"client", "launch", "benchmarks", "tests"},
    "launch": {"benchmarks", "tests"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_from_its_floor_or_below(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    bad = {
        f"{path.relative_to(ROOT)} imports {sorted(imported_roots(path) & FORBIDDEN[package])}"
        for path in files
        if imported_roots(path) & FORBIDDEN[package]
    }
    assert not bad, "\n".join(sorted(bad))


def test_the_checker_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from server.strategies import build_strategy\n")
    assert "server" in imported_roots(probe)
