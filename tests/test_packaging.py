"""The package installs what pyproject declares, and Flower can find both components."""

import importlib
import tomllib
from pathlib import Path

from core.config import ExperimentConfig, from_run_config, to_run_config

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _flatten(node: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_flower_components_import() -> None:
    components = PYPROJECT["tool"]["flwr"]["app"]["components"]
    assert set(components) == {"serverapp", "clientapp"}
    for ref in components.values():
        module, attr = ref.split(":")
        assert getattr(importlib.import_module(module), attr) is not None


def test_run_config_keys_match_schema() -> None:
    declared = _flatten(PYPROJECT["tool"]["flwr"]["app"]["config"])
    assert declared == to_run_config(ExperimentConfig())
    assert from_run_config(declared) == ExperimentConfig()


def test_no_federations_table() -> None:
    # flwr 1.42 rewrites pyproject.toml when it finds one.
    assert "federations" not in PYPROJECT["tool"]["flwr"]


def test_console_scripts_resolve() -> None:
    for ref in PYPROJECT["project"]["scripts"].values():
        module, attr = ref.split(":")
        assert callable(getattr(importlib.import_module(module), attr))


def test_wheel_lists_packages_explicitly() -> None:
    """Every top-level package is listed, and the Flower bundle carries all but the launchers."""
    packages = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert packages == ["core", "glue", "client", "server", "launch"]
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert set(packages) == on_disk
    fab = PYPROJECT["tool"]["flwr"]["app"]["fab-include"]
    shipped = {pattern.split("/")[0] for pattern in fab}
    assert shipped == {"core", "glue", "client", "server", "conf"}


def test_fab_leaves_out_only_modules_the_apps_never_import() -> None:
    """``fab-exclude`` drops the command-line tools; no shipped module may import one of them."""
    import ast
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    excluded = PYPROJECT["tool"]["flwr"]["app"]["fab-exclude"]
    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT))).namelist()
    assert not set(excluded) & set(names) and "server/server_app.py" in names
    dropped = {path.removesuffix(".py").replace("/", ".") for path in excluded}
    for name in (n for n in names if n.endswith(".py")):
        for node in ast.walk(ast.parse((ROOT / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                imported = {a.name for a in node.names}
            else:
                continue
            assert not imported & dropped, f"{name} imports {imported & dropped}, not in the FAB"
