"""The one place that sets Flower's environment and finds its executables.

Every process bitfed runs or starts — the simulation, a SuperLink, a SuperNode, the ``flwr``
CLI — gets the same hygiene: no telemetry, no update check, and no runtime dependency
installation (otherwise Flower runs ``uv sync`` per app and fetches several GB of CUDA torch),
plus a private ``FLWR_HOME``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "FLOWER_ENV",
    "apply_flower_env",
    "check_address",
    "flower_env",
    "flower_executable",
    "superexec_argv",
]

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def flower_env(
    base: Mapping[str, str] | None = None, *, home: Path | None = None
) -> dict[str, str]:
    """Environment for a Flower child process: ``base`` (default ``os.environ``) + hygiene.

    The hygiene values of :data:`FLOWER_ENV` override ``base``; ``home`` (when given) becomes
    ``FLWR_HOME``; the folder of Flower's console scripts goes first on ``PATH`` (a SuperLink or
    SuperNode starts ``flower-superexec`` and the app processes by name).
    """
    env = {**(os.environ if base is None else base), **FLOWER_ENV}
    if home is not None:
        env["FLWR_HOME"] = str(Path(home).resolve())
    try:
        scripts = str(Path(flower_executable("flower-superexec")).parent)
    except FileNotFoundError:
        return env
    if scripts not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join(p for p in (scripts, env.get("PATH")) if p)
    return env


def apply_flower_env(home: Path) -> None:
    """Give *this* process the hygiene (before Flower is imported), keeping explicit settings.

    ``FLWR_HOME`` defaults to ``home``; Ray's accelerator tip is silenced (no GPU here).
    """
    for key, value in FLOWER_ENV.items():
        os.environ[key] = value
    os.environ.setdefault("FLWR_HOME", str(home))
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def flower_executable(name: str) -> str:
    """Path of a Flower console script: beside this interpreter first, then on ``PATH``."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found; install bitfed (pip install .) in this env")
    return found


def check_address(what: str, address: str) -> None:
    """Raise ``ValueError`` naming ``what`` unless ``address`` is ``HOST:PORT``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {address!r} is not HOST:PORT (e.g. 192.168.1.10:8000)")


def superexec_argv(runtime_address: str, root_certificates: str | None = None) -> list[str]:
    """Arguments of ``flower-superexec`` serving a Runtime API at ``runtime_address``.

    With ``--isolation process`` the SuperLink (ServerApps) and each SuperNode (ClientApps) need
    a separate executor; compose runs one per side. The SuperNode's Runtime API is plain HTTP
    inside its trust zone; the SuperLink's is TLS whenever the SuperLink is (one port).
    """
    check_address("runtime API address", runtime_address)
    tls = ["--root-certificates", root_certificates] if root_certificates else ["--insecure"]
    return [*tls, "--runtime-api-address", runtime_address]
