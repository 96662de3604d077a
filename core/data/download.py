"""Fetch a dataset's official files: verified, atomic, resumable.

Each file is streamed to ``<name>.part``; an interrupted transfer leaves the ``.part`` file and
the next call asks for the rest with an HTTP ``Range: bytes=<size>-`` request (a server that
ignores ranges makes it start over). The finished file is fsynced, its checksums are checked, and
only then is it renamed to its final name (same folder, so the rename is atomic). A file already
present and verified is skipped. A checksum mismatch deletes the ``.part`` and names the file.

Checksums
---------
- MNIST: SHA-256 of each file's **decompressed** content (the IDX bytes), because mirrors
  re-compress the ``.gz`` files; the sums are those of the original IDX files.
- CIFAR-10: SHA-256 and the MD5 published with the archive (Krizhevsky's page lists the MD5).
- Fashion-MNIST and SVHN: the MD5 sums their publishers list (zalandoresearch/fashion-mnist
  README; the sums used by torchvision for ufldl.stanford.edu's files). No SHA-256 is published
  by these sources, so MD5 is what is verified for them.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.atomic import fsync_dir
from core.data.cifar import CIFAR_FILES, CIFAR_FOLDER
from core.data.errors import DataError

__all__ = ["RemoteFile", "SOURCES", "BASE_URLS", "download", "fetch_file", "verify_file"]

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset and the digests it must have (``None`` = not checked)."""

    name: str
    sha256: str | None = None  # of the file's bytes
    md5: str | None = None  # of the file's bytes, where that is what the source publishes
    content_sha256: str | None = None  # of the gunzipped bytes (MNIST)
    optional: bool = False  # fetched only on request (SVHN extra)


BASE_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "svhn": "http://ufldl.stanford.edu/housenumbers/",
}

SOURCES: dict[str, tuple[RemoteFile, ...]] = {
    "mnist": (
        RemoteFile(
            "train-images-idx3-ubyte.gz",
            content_sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        RemoteFile(
            "train-labels-idx1-ubyte.gz",
            content_sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        RemoteFile(
            "t10k-images-idx3-ubyte.gz",
            content_sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        RemoteFile(
            "t10k-labels-idx1-ubyte.gz",
            content_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ),
    "fashion-mnist": (
        RemoteFile("train-images-idx3-ubyte.gz", md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        RemoteFile("train-labels-idx1-ubyte.gz", md5="25c81989df183df01b3e8a0aad5dffbe"),
        RemoteFile("t10k-images-idx3-ubyte.gz", md5="bef4ecab320f06d8554ea6380940ec79"),
        RemoteFile("t10k-labels-idx1-ubyte.gz", md5="bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    "cifar10": (
        RemoteFile(
            "cifar-10-python.tar.gz",
            sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            md5="c58f30108f718f92721af3b95e74349a",
        ),
    ),
    "svhn": (
        RemoteFile("train_32x32.mat", md5="e26dedcc434d2e4c54c9b2d4a06d8373"),
        RemoteFile("test_32x32.mat", md5="eb5a983be6a315427106f1b164d9cef3"),
        RemoteFile("extra_32x32.mat", md5="a93ce644f1a588dc4d68dda5feec44a7", optional=True),
    ),
}

Progress = Callable[[str], None]


def _digests(path: Path, spec: RemoteFile) -> dict[str, str]:
    """Compute the digests ``spec`` asks for, as ``{"sha256": hex, ...}``."""
    hashers = {}
    if spec.sha256:
        hashers["sha256"] = hashlib.sha256()
    if spec.md5:
        hashers["md5"] = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    found = {k: h.hexdigest() for k, h in hashers.items()}
    if spec.content_sha256:
        content = hashlib.sha256()
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                content.update(chunk)
        found["content_sha256"] = content.hexdigest()
    return found


def _mismatch(path: Path, spec: RemoteFile) -> str | None:
    """Say what is wrong with ``path`` per ``spec``; ``None`` when every digest matches."""
    try:
        found = _digests(path, spec)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        return f"unreadable or corrupt gzip ({exc})"
    for kind, got in found.items():
        want = getattr(spec, kind)
        if got != want:
            return f"checksum mismatch: {kind} is {got}, expected {want}"
    return None


def verify_file(path: Path, spec: RemoteFile) -> None:
    """Check every digest ``spec`` lists; raise :class:`DataError` naming the file and mismatch."""
    problem = _mismatch(path, spec)
    if problem:
        raise DataError(f"{path}: {problem}")


def fetch_file(url: str, dest: Path, spec: RemoteFile, progress: Progress | None = None) -> bool:
    """Download ``url`` to ``dest`` unless a verified ``dest`` is already there.

    Returns
    -------
    bool
        True if something was downloaded, False if ``dest`` was already complete.

    Raises
    ------
    DataError
        Network failure (the ``.part`` file is kept for resuming), a checksum mismatch (the
        ``.part`` file is deleted) or an existing ``dest`` that fails verification (kept; the
        message says to delete it).
    """
    say = progress or (lambda _msg: None)
    if dest.exists():
        problem = _mismatch(dest, spec)
        if problem:
            raise DataError(f"{dest}: {problem}; the file was already there, delete it and rerun")
        say(f"{dest.name}: present and verified, skipped")
        return False
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "bitfed-data"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            resumed = have > 0 and response.status == 206
            if resumed and not response.headers.get("Content-Range", "").startswith(
                f"bytes {have}-"
            ):
                raise DataError(
                    f"{url}: server answered the resume request with range "
                    f"{response.headers.get('Content-Range')!r}; delete {part} and rerun"
                )
            expected = response.headers.get("Content-Length")
            say(f"{dest.name}: {'resuming at ' + str(have) + ' bytes' if resumed else 'fetching'}")
            written = 0
            with part.open("ab" if resumed else "wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if expected is not None and written != int(expected):
                raise DataError(
                    f"{url}: connection ended after {written} of {expected} bytes; "
                    f"the partial file {part} is kept, rerun to resume"
                )
    except urllib.error.HTTPError as exc:
        if not (exc.code == 416 and have):  # 416: nothing left to send, the .part is complete
            raise DataError(f"{url}: HTTP {exc.code} {exc.reason}; check --base-url") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        kept = f"; the partial file {part} is kept, rerun to resume" if part.exists() else ""
        raise DataError(f"{url}: download failed ({reason}){kept}; check --base-url") from None
    problem = _mismatch(part, spec)
    if problem:
        part.unlink(missing_ok=True)
        raise DataError(f"{dest}: {problem}; the download was deleted, rerun or check --base-url")
    os.replace(part, dest)
    fsync_dir(dest.parent)
    say(f"{dest.name}: verified")
    return True


def _extract_cifar(archive: Path, root: Path, say: Progress) -> None:
    """Unpack ``cifar-10-batches-py/`` atomically: into a temp folder, then one rename."""
    target = root / CIFAR_FOLDER
    wanted = [*CIFAR_FILES["train"], *CIFAR_FILES["test"]]
    if all((target / n).is_file() for n in wanted):
        say(f"{CIFAR_FOLDER}/: already unpacked, skipped")
        return
    if not hasattr(tarfile, "data_filter"):
        raise DataError(f"{archive}: safe unpacking needs Python >= 3.11.4; unpack it by hand")
    tmp = Path(tempfile.mkdtemp(prefix=".cifar-", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")  # "data" filter: no absolute paths or links out
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{archive}: cannot unpack ({exc}); delete it and rerun") from None
        unpacked = tmp / CIFAR_FOLDER
        if not all((unpacked / n).is_file() for n in wanted):
            raise DataError(f"{archive}: no complete {CIFAR_FOLDER}/ inside; delete it and rerun")
        if target.exists():
            shutil.rmtree(target)  # an incomplete earlier unpacking
        os.replace(unpacked, target)
        fsync_dir(root)
        say(f"{CIFAR_FOLDER}/: unpacked")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(
    name: str,
    root: str | Path,
    *,
    base_url: str | None = None,
    svhn_extra: bool = False,
    progress: Progress | None = None,
) -> list[Path]:
    """Fetch and verify every file of dataset ``name`` into ``root`` (created if needed).

    Parameters
    ----------
    name
        ``mnist``, ``fashion-mnist``, ``cifar10`` or ``svhn`` (``digits`` ships with
        scikit-learn: nothing to fetch).
    root
        Destination folder; :func:`core.data.load_dataset` reads from the same folder.
    base_url
        Replace the official location (a mirror, or a local server in tests); file names are
        appended to it.
    svhn_extra
        Also fetch SVHN's 1.3 GB ``extra_32x32.mat``.
    progress
        Called with one short line per step (the CLI prints them).

    Returns
    -------
    list of Path
        The verified files in ``root``.
    """
    say = progress or (lambda _msg: None)
    if name == "digits":
        say("digits ships inside scikit-learn; nothing to download")
        return []
    if name not in SOURCES:
        raise DataError(
            f"unknown dataset {name!r} for download; choose one of digits, {', '.join(SOURCES)}"
        )
    folder = Path(root).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create the folder ({exc.strerror})") from None
    base = (base_url or BASE_URLS[name]).rstrip("/") + "/"
    done = []
    for spec in SOURCES[name]:
        if spec.optional and not svhn_extra:
            continue
        dest = folder / spec.name
        fetch_file(base + spec.name, dest, spec, say)
        done.append(dest)
    if name == "cifar10":
        _extract_cifar(folder / SOURCES["cifar10"][0].name, folder, say)
    return done
