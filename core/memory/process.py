"""Process-level memory: the resident set and its high-water mark, resettable (no torch).

The process figures follow the tensors only when glibc hands large blocks back to the kernel at
once: run a measuring process with :data:`MALLOC_ENV` (man mallopt(3)).
"""

from __future__ import annotations

import re
import resource
import sys

__all__ = ["MALLOC_ENV", "process_rss_bytes", "process_peak_rss_bytes", "reset_process_peak"]

#: glibc settings under which freed tensors leave the resident set at once (man mallopt(3)).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}

_PROC_STATUS = "/proc/self/status"
_PROC_CLEAR_REFS = "/proc/self/clear_refs"


def _proc_status_kib(field_name: str) -> int | None:
    try:
        with open(_PROC_STATUS) as f:
            match = re.search(rf"^{field_name}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def process_rss_bytes() -> int:
    """Return the current resident set size of this process, in bytes (``VmRSS``)."""
    kib = _proc_status_kib("VmRSS")
    if kib is None:  # not Linux: no cheap current-RSS; fall back to the high-water mark
        return process_peak_rss_bytes()
    return kib * 1024


def process_peak_rss_bytes() -> int:
    """Return the resident-set high-water mark of this process, in bytes.

    Reads ``VmHWM`` from ``/proc/self/status`` (reset by :func:`reset_process_peak`); elsewhere
    falls back to ``getrusage(RUSAGE_SELF).ru_maxrss`` (never reset, KiB on Linux, bytes on macOS).
    """
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_process_peak() -> bool:
    """Reset the high-water mark to the current RSS; return whether the kernel allowed it.

    Writes ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0, ``Documentation/filesystems/proc``).
    Returns ``False`` where that is impossible, and :func:`process_peak_rss_bytes` then keeps
    reporting the peak since process start.
    """
    try:
        with open(_PROC_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    return True
