"""Flower's device processes start without SQLAlchemy, and a SQL store still works on demand."""

import importlib.util
import subprocess
import sys

import pytest

from glue.lean_flower import DEFERRED, ENTRY_POINTS, install

DEVICE_IMPORTS = "\n".join(
    f"from {module} import {function}" for module, function in ENTRY_POINTS.values()
)


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


@pytest.mark.parametrize("module", DEFERRED)
def test_the_deferred_modules_exist_in_this_flower(module):
    assert importlib.util.find_spec(module) is not None, f"Flower moved {module}"


def test_device_entry_points_import_no_sqlalchemy_once_deferred():
    plain = run_python(f"import sys\n{DEVICE_IMPORTS}\nprint('sqlalchemy' in sys.modules)")
    lean = run_python(
        "import sys\nfrom glue.lean_flower import defer_sql_stores\ndefer_sql_stores()\n"
        f"{DEVICE_IMPORTS}\nprint('sqlalchemy' in sys.modules, 'alembic' in sys.modules)"
    )
    assert plain == "True"  # what the placeholders are for
    assert lean == "False False"


def test_a_deferred_store_is_the_real_one_when_a_process_opens_it(tmp_path):
    out = run_python(
        "import sys\nfrom glue.lean_flower import defer_sql_stores\ndefer_sql_stores()\n"
        "from flwr.supercore.object_store import ObjectStoreFactory\n"
        f"store = ObjectStoreFactory({str(tmp_path / 'objects.db')!r}).store()\n"
        "print(type(store).__module__, type(store).__name__, 'sqlalchemy' in sys.modules)"
    )
    assert out == "flwr.supercore.object_store.sql_object_store SqlObjectStore True"


def test_installed_scripts_run_flowers_commands_under_their_own_names(tmp_path):
    paths = install(tmp_path / "bin")
    assert sorted(p.name for p in paths) == sorted(ENTRY_POINTS)
    for path in paths:
        done = subprocess.run(
            [str(path), "--help"], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        assert f"usage: {path.name}" in done.stdout


def test_install_without_a_command_says_how_to_use_it():
    done = subprocess.run(
        [sys.executable, "-m", "glue.lean_flower"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "install" in done.stderr
