"""Atomic file writes: whatever bitfed persists is either the old file or the new one, whole.

``atomic_write(path, data)`` writes into a temp file in the same folder, fsyncs it, renames it
over ``path`` (``os.replace`` is atomic on POSIX) and fsyncs the folder, so a crash or
``kill -9`` at any point leaves no torn checkpoint, state file, result or key.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "atomic_write_json", "fsync_dir"]


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (some platforms): nothing more to do
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | Path, data: bytes | Callable[[BinaryIO], object], *, mode: int = 0o644
) -> Path:
    """Write ``data`` (bytes, or a function writing into a binary file) to ``path`` atomically.

    ``mode`` is set before any byte is written (0600 for private keys); the folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                data(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON (with a final newline) to ``path`` atomically.

    Numbers JSON does not know (numpy scalars) are written as floats.
    """
    return atomic_write(path, (json.dumps(payload, indent=2, default=float) + "\n").encode())
