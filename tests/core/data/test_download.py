import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from core.data import SOURCES, DataError, download, load_dataset
from core.data.download import RemoteFile, fetch_file

from .conftest import write_cifar_batch, write_mnist


def spec_for(path: Path) -> RemoteFile:
    data = path.read_bytes()
    return RemoteFile(
        path.name, sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest()
    )


@pytest.fixture
def blob(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    path = served / "blob.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    return path


def test_fetch_verifies_and_skips_when_complete(serve, blob, tmp_path):
    url, state = serve(blob.parent)
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    assert fetch_file(url + "blob.bin", dest, spec_for(blob)) is True
    assert dest.read_bytes() == blob.read_bytes() and not dest.with_name("blob.bin.part").exists()
    assert fetch_file(url + "blob.bin", dest, spec_for(blob)) is False
    assert len(state["log"]) == 1  # the second call sent no request


def test_checksum_mismatch_deletes_download(serve, blob, tmp_path):
    spec = spec_for(blob)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")  # corrupt the served copy
    url, _ = serve(blob.parent)
    dest = tmp_path / "blob.bin"
    with pytest.raises(DataError, match=r"blob.bin: checksum mismatch: sha256 is [0-9a-f]{64}"):
        fetch_file(url + "blob.bin", dest, spec)
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()


def test_interrupted_download_resumes_with_range(serve, blob, tmp_path):
    url, state = serve(blob.parent)
    state["cut_after"] = 100_000
    dest = tmp_path / "blob.bin"
    part = tmp_path / "blob.bin.part"
    with pytest.raises(DataError, match=r"partial file .*blob.bin.part is kept, rerun to resume"):
        fetch_file(url + "blob.bin", dest, spec_for(blob))
    assert not dest.exists() and part.stat().st_size == 100_000
    assert fetch_file(url + "blob.bin", dest, spec_for(blob)) is True
    assert state["log"][-1] == ("/blob.bin", "bytes=100000-")
    assert dest.read_bytes() == blob.read_bytes() and not part.exists()


def test_server_without_range_support_restarts(serve, blob, tmp_path):
    url, state = serve(blob.parent)
    state["ignore_range"] = True
    (tmp_path / "blob.bin.part").write_bytes(b"stale bytes from elsewhere")
    fetch_file(url + "blob.bin", tmp_path / "blob.bin", spec_for(blob))
    assert (tmp_path / "blob.bin").read_bytes() == blob.read_bytes()


def test_complete_part_file_gets_416_and_is_kept(serve, blob, tmp_path):
    url, state = serve(blob.parent)
    (tmp_path / "blob.bin.part").write_bytes(blob.read_bytes())
    assert fetch_file(url + "blob.bin", tmp_path / "blob.bin", spec_for(blob)) is True
    assert state["log"] == [("/blob.bin", f"bytes={blob.stat().st_size}-")]
    assert (tmp_path / "blob.bin").read_bytes() == blob.read_bytes()


def test_existing_corrupt_file_is_kept_and_named(serve, blob, tmp_path):
    url, state = serve(blob.parent)
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"mine")
    with pytest.raises(DataError, match=r"blob.bin: checksum mismatch.*already there, delete it"):
        fetch_file(url + "blob.bin", dest, spec_for(blob))
    assert dest.read_bytes() == b"mine" and state["log"] == []


def test_http_404_and_unreachable(serve, blob, tmp_path):
    url, _ = serve(blob.parent)
    with pytest.raises(DataError, match=r"nothing.bin: HTTP 404 .*check --base-url"):
        fetch_file(url + "nothing.bin", tmp_path / "x", spec_for(blob))
    dead = url.rsplit(":", 1)[0] + ":1/"
    with pytest.raises(DataError, match=r"download failed .*check --base-url"):
        fetch_file(dead + "blob.bin", tmp_path / "x", spec_for(blob))


def test_mnist_from_local_mirror_of_real_files(serve, mnist_root, tmp_path):
    url, _ = serve(mnist_root)
    files = download("mnist", tmp_path / "mnist", base_url=url)
    assert sorted(f.name for f in files) == sorted(s.name for s in SOURCES["mnist"])
    assert not list((tmp_path / "mnist").glob("*.part"))
    assert len(load_dataset("mnist", tmp_path / "mnist", "test")) == 10_000


def test_mnist_content_checksum_rejects_other_files(serve, tmp_path):
    fake = tmp_path / "fake"
    write_mnist(fake, "train")
    write_mnist(fake, "test")
    url, _ = serve(fake)
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte.gz: checksum mismatch: content_sha256"
    ):
        download("mnist", tmp_path / "dest", base_url=url)
    assert not list((tmp_path / "dest").iterdir())


def test_mnist_gzip_garbage_is_reported(serve, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"abc")[:-4])
    url, _ = serve(served)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: unreadable or corrupt gzip"):
        download("mnist", tmp_path / "dest", base_url=url)


def make_cifar_archive(folder: Path) -> Path:
    src = folder / "src"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(src / "cifar-10-batches-py" / name, 3, seed=len(name))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive = folder / "served" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(buf.getvalue())
    return archive


def test_cifar_download_unpacks_atomically(serve, tmp_path, monkeypatch):
    archive = make_cifar_archive(tmp_path)
    monkeypatch.setitem(SOURCES, "cifar10", (spec_for(archive),))
    url, state = serve(archive.parent)
    lines = []
    download("cifar10", tmp_path / "c10", base_url=url, progress=lines.append)
    assert len(load_dataset("cifar10", tmp_path / "c10", "train")) == 15
    assert sorted(p.name for p in (tmp_path / "c10").iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]
    download("cifar10", tmp_path / "c10", base_url=url, progress=lines.append)
    assert len(state["log"]) == 1
    assert lines[-2:] == [
        "cifar-10-python.tar.gz: present and verified, skipped",
        "cifar-10-batches-py/: already unpacked, skipped",
    ]


def test_svhn_extra_only_on_request(serve, tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    specs = []
    for name, optional in (
        ("train_32x32.mat", False),
        ("test_32x32.mat", False),
        ("extra_32x32.mat", True),
    ):
        (served / name).write_bytes(name.encode() * 10)
        spec = spec_for(served / name)
        specs.append(RemoteFile(name, md5=spec.md5, optional=optional))
    monkeypatch.setitem(SOURCES, "svhn", tuple(specs))
    url, _ = serve(served)
    assert len(download("svhn", tmp_path / "a", base_url=url)) == 2
    assert len(download("svhn", tmp_path / "a", base_url=url, svhn_extra=True)) == 3


def test_unknown_and_digits(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'emnist' for download"):
        download("emnist", tmp_path)
    assert download("digits", tmp_path) == []


def test_checksums_listed_for_every_official_file():
    for name, specs in SOURCES.items():
        for spec in specs:
            digests = [spec.sha256, spec.md5, spec.content_sha256]
            assert any(digests), f"{name}/{spec.name} has no checksum"
            for d in filter(None, digests):
                assert len(d) in (32, 64) and int(d, 16) >= 0
    mnist = {s.name: s.content_sha256 for s in SOURCES["mnist"]}
    sums = Path(__file__).resolve().parents[4] / "shared" / "data" / "mnist" / "SHA256SUMS.raw"
    if sums.exists():
        for line in sums.read_text().splitlines():
            digest, name = line.split()
            assert mnist[name + ".gz"] == digest
