"""Flower's device processes without the SQL stores they never open (Flower 1.42).

A device runs three Flower processes: the SuperNode, the ClientApp executor it starts
(``flower-superexec``) and one ClientApp process per round (``flwr-clientapp``). Each of them
imports Flower's SQL-backed stores at start-up, ``SqlObjectStore`` through the object-store
factory and (the executor) ``SqlLinkState`` through the link-state package, and with them
SQLAlchemy and Alembic: about 29 MiB of anonymous memory per process (measured with
``RssAnon``, x86-64, Python 3.11), close to 90 MiB for a device that trains a 2 MiB model. A
device never opens either store: its SuperNode keeps its objects in Flower's in-memory store
and only the SuperLink has a link-state database.

:func:`defer_sql_stores` puts a placeholder module in ``sys.modules`` for each of the two
modules. Its one attribute, the class name Flower imports from it, is a function that imports
the real module on first use and constructs the real class, so a process that does open a SQL
store still gets one; a process that does not never imports SQLAlchemy.

The console scripts :func:`install` writes carry Flower's own names (``flower-supernode``,
``flower-superexec``, ``flwr-clientapp``: a SuperNode starts its executor, and the executor its
ClientApps, by those names on ``PATH``, and Flower checks ``argv[0]``), so a folder of them put
first on ``PATH`` covers all three processes of a device; the image does that
(``Dockerfile``, ``/python/lean-bin``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path

__all__ = ["DEFERRED", "ENTRY_POINTS", "defer_sql_stores", "install", "main"]

#: module -> the class Flower imports from it
DEFERRED = {
    "flwr.supercore.object_store.sql_object_store": "SqlObjectStore",
    "flwr.server.superlink.linkstate.sql_linkstate": "SqlLinkState",
}
#: console script name -> (module, function) of Flower's own entry point
ENTRY_POINTS = {
    "flower-supernode": ("flwr.supernode.cli", "flower_supernode"),
    "flower-superexec": ("flwr.supercore.cli", "flower_superexec"),
    "flwr-clientapp": ("flwr.supernode.cli", "flwr_clientapp"),
}


def defer_sql_stores() -> None:
    """Put a placeholder for each module of :data:`DEFERRED` not imported yet.

    Each placeholder loads the real module on first use. Call it before anything imports Flower.
    """
    for module_name, class_name in DEFERRED.items():
        if module_name not in sys.modules:
            sys.modules[module_name] = _placeholder(module_name, class_name)


def _placeholder(module_name: str, class_name: str) -> types.ModuleType:
    placeholder = types.ModuleType(module_name, f"Deferred by {__name__}: loads on first use.")

    def construct(*args: object, **kwargs: object) -> object:
        if sys.modules.get(module_name) is placeholder:
            del sys.modules[module_name]
        real = importlib.import_module(module_name)
        return getattr(real, class_name)(*args, **kwargs)

    construct.__name__ = construct.__qualname__ = class_name
    setattr(placeholder, class_name, construct)
    return placeholder


def _entry_point(name: str) -> Callable[[], object]:
    module, function = ENTRY_POINTS[name]
    return getattr(importlib.import_module(module), function)


def install(folder: Path, python: str = sys.executable) -> list[Path]:
    """Write the three console scripts into ``folder`` (created); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ENTRY_POINTS:
        path = folder / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(
            f"#!{python}\n# bitfed: Flower's {name} without its unused SQL stores\n"
            "from glue.lean_flower import main\nmain()\n"
        )
        tmp.chmod(0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    """Run the Flower entry point named by ``argv[0]`` with the SQL stores deferred.

    Under any other name: ``python -m glue.lean_flower install FOLDER``.
    """
    argv = sys.argv if argv is None else argv
    name = Path(argv[0]).name
    if name in ENTRY_POINTS:
        defer_sql_stores()
        sys.exit(_entry_point(name)())
    parser = argparse.ArgumentParser(
        prog="python -m glue.lean_flower",
        description="Write flower-supernode, flower-superexec and flwr-clientapp scripts that "
        "start Flower's entry points without importing its unused SQL stores.",
    )
    parser.add_argument("command", choices=["install"])
    parser.add_argument("folder", type=Path, help="where to write them (put it first on PATH)")
    args = parser.parse_args(argv[1:])
    for path in install(args.folder):
        print(path)


if __name__ == "__main__":
    main()
