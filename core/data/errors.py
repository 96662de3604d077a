"""The one exception every data problem raises: a one-line message naming what and how to fix."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["DataError", "missing_files"]


class DataError(ValueError):
    """Bad dataset input: a missing, truncated or corrupt file, or an impossible request.

    The message is a single line that names the file or value, what is wrong and the fix, so a CLI
    can print it as-is instead of a traceback.
    """


def missing_files(
    name: str, root: Path, expected: Iterable[str], *, note: str = "", flags: str = ""
) -> DataError:
    """Build the error for a dataset whose folder or files are absent.

    Parameters
    ----------
    name
        Dataset name as given to ``load_dataset`` (also the ``bitfed-data download`` argument).
    root
        The folder that was searched.
    expected
        File names that should be in ``root``.
    note
        Optional extra words after the file list (e.g. "raw or .gz").
    flags
        Extra options of the download command (e.g. ``"--svhn-extra"``).

    Returns
    -------
    DataError
        ``"mnist: no <files> in <root>; fetch them with `bitfed-data download mnist --root ...`"``.
    """
    where = "folder does not exist" if not root.is_dir() else "missing files"
    files = ", ".join(expected)
    extra = f" ({note})" if note else ""
    return DataError(
        f"{name}: {where}: expected {files}{extra} in {root}; "
        f"fetch them with `bitfed-data download {name} --root {root}{' ' + flags if flags else ''}`"
    )
