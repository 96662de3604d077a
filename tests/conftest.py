"""Suite-wide hygiene: Flower never phones home, never installs at run time, never shares state."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

MNIST_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _private_flwr_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path_factory.mktemp("flwr_home")))


@pytest.fixture
def mnist_root() -> Path:
    """Real MNIST (IDX) from ../shared/data/mnist; skips where it is absent."""
    if not (MNIST_ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST_ROOT}")
    return MNIST_ROOT
