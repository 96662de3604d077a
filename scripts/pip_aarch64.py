"""Run pip as it would run on an aarch64 Debian bookworm device (Raspberry Pi OS 64-bit).

``pip download/install --platform manylinux_2_28_aarch64`` picks aarch64 wheels, but

- evaluates environment markers on the host (pypa/pip#11664, #10050): on an x86-64 host, torch
  2.10.0's ``nvidia-cublas-cu12==...; platform_machine == "x86_64"`` is followed for an aarch64
  resolve, while a requirement marked ``platform_machine == "aarch64"`` would be dropped;
- takes the ``--platform`` tags literally (pip 23.2): ``manylinux_2_28_aarch64`` alone rejects
  the ``manylinux_2_17_aarch64`` wheels (grpcio, numpy, ...) that a device's pip accepts.

This wrapper makes ``platform.machine()`` answer ``aarch64`` before pip starts, and gives
``install``/``download`` every tag a bookworm device (glibc 2.36, CPython 3.11) accepts, binary
wheels only, so a resolve here follows exactly the requirements and wheels a device would::

    python scripts/pip_aarch64.py download -c constraints-device-aarch64.txt -d DIR torch
    python scripts/pip_aarch64.py install --dry-run --ignore-installed --target T --report R ...

The host must run CPython 3.11 on Linux (``python_version`` and ``sys_platform`` markers are
still the host's, and equal the device's).
"""

from __future__ import annotations

import platform
import runpy
import sys

__all__ = ["TARGET_MACHINE", "DEVICE_GLIBC", "device_platform_args", "main"]

TARGET_MACHINE = "aarch64"
DEVICE_GLIBC = (2, 36)  # Debian 12 bookworm = Raspberry Pi OS 64-bit (bookworm)
_PY = "3.11"


def device_platform_args(glibc: tuple[int, int] = DEVICE_GLIBC) -> list[str]:
    """Options for pip selecting the wheels an aarch64 CPython 3.11 with ``glibc`` installs.

    ``manylinux_2_X_aarch64`` for every ``X`` from 17 (the oldest aarch64 manylinux) up to the
    device's glibc, the legacy ``manylinux2014_aarch64`` alias and plain ``linux_aarch64``.
    """
    major, minor = glibc
    tags = [f"manylinux_{major}_{x}_{TARGET_MACHINE}" for x in range(minor, 16, -1)]
    tags += [f"manylinux2014_{TARGET_MACHINE}", f"linux_{TARGET_MACHINE}"]
    args = [arg for tag in tags for arg in ("--platform", tag)]
    return [*args, "--python-version", _PY, "--implementation", "cp", "--only-binary=:all:"]


def main(argv: list[str]) -> None:
    """Run ``python -m pip *argv`` as on the device (see the module docstring)."""
    if sys.platform != "linux" or sys.version_info[:2] != (3, 11):
        raise SystemExit(
            f"pip_aarch64.py: run it with CPython {_PY} on Linux (got {sys.platform}, "
            f"{platform.python_version()}): the other markers are still the host's"
        )
    platform.machine = lambda: TARGET_MACHINE  # read by pip's marker environment on each use
    extra = device_platform_args() if argv[:1] in (["install"], ["download"]) else []
    sys.argv = ["pip", *argv[:1], *extra, *argv[1:]]
    runpy.run_module("pip", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
