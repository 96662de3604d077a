"""Helpers shared by the data tests: small files in the real on-disk formats."""

import pickle
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from core.data.idx import write_idx


def random_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_mnist(root: Path, split: str = "train", n: int = 12, *, gz: bool = True, seed: int = 0):
    """Write an MNIST-format image/label pair; return (images (n,28,28), labels (n,))."""
    stems = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }[split]
    root.mkdir(parents=True, exist_ok=True)
    images = random_images(n, (28, 28), seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(root / f"{stems[0]}{ext}", images)
    write_idx(root / f"{stems[1]}{ext}", labels)
    return images, labels


def write_cifar_batch(path: Path, n: int, seed: int = 0):
    """Write one batch like the real files (bytes keys, protocol 2); return (rows, labels)."""
    rows = random_images(n, (3072,), seed)
    labels = [int(v) for v in np.random.default_rng(seed).integers(0, 10, size=n)]
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": labels,
        b"data": rows,
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(batch, f, protocol=2)
    return rows, np.array(labels)


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mnist"
    write_mnist(root, "train", 12, seed=1)
    write_mnist(root, "test", 5, seed=2)
    return root


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` support, a request log and an optional cut-off."""

    def __init__(self, *args, state, **kwargs):
        self.state = state
        super().__init__(*args, **kwargs)

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802
        path = Path(self.translate_path(self.path))
        rng = self.headers.get("Range")
        self.state["log"].append((self.path, rng))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if rng and not self.state.get("ignore_range"):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.state.pop("cut_after", None)
        self.wfile.write(body if cut is None else body[:cut])
        self.close_connection = True


@pytest.fixture
def serve():
    """Start ``serve(folder)`` on 127.0.0.1 at a free port; returns (base_url, state)."""
    servers = []

    def start(folder: Path):
        state = {"log": []}
        handler = partial(RangeHandler, directory=str(folder), state=state)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
