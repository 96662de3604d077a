"""The compose tests' image, built in the background while the rest of the suite runs.

``scripts/offline-image.sh`` takes minutes on a fresh machine (debootstrap, a host wheelhouse,
``docker build``); the container tests need it only at the end of the suite. ``tests/conftest.py``
calls :func:`start_image_build` once collection has found a ``docker`` test and an engine
answers; :func:`wait_for_image` (the tests' fixture) waits for it, or starts it itself when it was
not started. The build runs at the lowest CPU priority (``nice`` 19 for the script and its host
processes, ``--cpu-shares 2`` for the build's own containers), so the tests beside it keep the
CPUs. ``BITFED_IMAGE=TAG`` uses that image and builds nothing.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from benchmarks.compose import engine_problem

__all__ = ["start_image_build", "wait_for_image", "BUILD_LOG"]

ROOT = Path(__file__).resolve().parents[1]
BUILD_LOG = ROOT / "build" / "offline-image-tests.log"
BUILD_OUT = BUILD_LOG.with_suffix(".out")  # the script's stdout: its last line is the tag
BUILD_TIMEOUT = 3600.0  # a cold build here: ~10 min; a busy CI host may need several times that
_build: dict[str, subprocess.Popen | float] = {}


def start_image_build() -> None:
    """Start ``scripts/offline-image.sh`` in the background (once per session; not without an
    engine, or with ``BITFED_IMAGE``)."""
    if _build or os.environ.get("BITFED_IMAGE") or engine_problem() is not None:
        return
    BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["BITFED_BUILD_CPU_SHARES"] = "2"  # the build's containers yield to everything else
    with BUILD_LOG.open("w") as log, BUILD_OUT.open("w") as out:
        _build["proc"] = subprocess.Popen(
            ["nice", "-n", "19", "bash", str(ROOT / "scripts" / "offline-image.sh")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=log,
        )
    _build["started"] = time.monotonic()


def wait_for_image(timeout: float = BUILD_TIMEOUT) -> tuple[str | None, str | None]:
    """``(tag, None)`` once the image is built, or ``(None, why)`` in one line."""
    if os.environ.get("BITFED_IMAGE"):
        return os.environ["BITFED_IMAGE"], None
    problem = engine_problem()
    if problem:
        return None, problem
    start_image_build()
    proc = _build["proc"]
    assert isinstance(proc, subprocess.Popen)
    try:
        proc.wait(timeout=max(1.0, timeout - _elapsed()))
    except subprocess.TimeoutExpired:
        proc.kill()
        return None, f"scripts/offline-image.sh took over {timeout:.0f} s; see {BUILD_LOG}"
    lines = BUILD_OUT.read_text().strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("bitfed:"):
        tail = " ".join(BUILD_LOG.read_text().split())[-300:] if BUILD_LOG.is_file() else ""
        raise RuntimeError(f"scripts/offline-image.sh failed (exit {proc.returncode}): {tail}")
    return lines[-1], None


def _elapsed() -> float:
    started = _build.get("started")
    return time.monotonic() - started if isinstance(started, float) else 0.0
