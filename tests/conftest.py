"""Suite-wide hygiene: Flower never phones home, never installs at run time, never shares state."""

import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

MNIST_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def pytest_collection_finish(session: pytest.Session) -> None:
    """A session that will run compose end-to-end tests (after ``-m``/``-k`` selection) starts
    their image build now, in the background (tests/image_build.py), so that it overlaps the rest
    of the suite."""
    if any(item.get_closest_marker("docker") for item in session.items):
        from tests.image_build import start_image_build

        start_image_build()  # nothing when no engine answers: those tests then skip


@pytest.fixture(autouse=True)
def _private_flwr_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path_factory.mktemp("flwr_home")))


@pytest.fixture
def mnist_root() -> Path:
    """Real MNIST (IDX) from ../shared/data/mnist; skips where it is absent."""
    if not (MNIST_ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST_ROOT}")
    return MNIST_ROOT


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (helpers and CI share 2 cores), then restore the count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def flower_task_identity(monkeypatch):
    """Give Flower's message constructors a run/task/node identity outside a running app."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    for attr in ("_task_id", "_node_id"):
        if hasattr(TaskIdentity, attr):
            monkeypatch.setattr(TaskIdentity, attr, 1)


@pytest.fixture
def flwr_log():
    """Messages Flower's logger emits during the test."""
    records = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Grab()
    logging.getLogger("flwr").addHandler(handler)
    yield records
    logging.getLogger("flwr").removeHandler(handler)
