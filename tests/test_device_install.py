"""The documented aarch64 device install resolves to a CPU-only torch (issue 19).

README, devices: on aarch64, ``pip install -c constraints-device-aarch64.txt .`` (torch 2.9.1).
PyPI's aarch64 torch wheels from 2.11 on require ``cuda-toolkit``, ``nvidia-*`` and ``triton`` on
every Linux (gigabytes, and ``import torch`` fails without them); 2.9.1 and 2.10.0 mark their
NVIDIA requirements ``platform_machine == "x86_64"``, and 2.10.0 dies with SIGILL on Armv8.0
cores (Raspberry Pi 3/4), so devices take 2.9.1. The resolve runs pip with
``scripts/pip_aarch64.py`` (markers evaluated for aarch64, every manylinux tag a bookworm
device accepts), needs PyPI and is cached under ``build/device-install/`` by a hash of its
inputs (every version is pinned, so the answer cannot change); it skips with one line when
PyPI is unreachable. ``BITFED_DEVICE_INSTALL_REFRESH=1`` ignores the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
DEVICE_CONSTRAINTS = ROOT / "constraints-device-aarch64.txt"
PIP_AARCH64 = ROOT / "scripts" / "pip_aarch64.py"
CACHE = ROOT / "build" / "device-install"
INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/")
# pure-Python pins that PyPI has as sdists only: a device's pip builds them; here they are built
# once on the host (a py3-none-any wheel is the same on every platform) so the resolve can stay
# binary-only (pip requires --only-binary=:all: with --platform)
SDIST_ONLY = ("antlr4-python3-runtime",)
GPU_PACKAGE = re.compile(r"^(nvidia-.*|cuda-.*|triton|pytorch-triton.*|cupy.*|jax-cuda.*)$")
# pip options that may point at a local mirror or certificate stay; the rest (this machine's
# find-links, extra indexes and constraint files) would make the resolve differ from a device's
_KEEP_PIP_ENV = {"PIP_INDEX_URL", "PIP_CERT", "PIP_CLIENT_CERT", "PIP_TRUSTED_HOST"}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_device_constraints_are_constraints_txt_but_torch():
    device, host = _pins(DEVICE_CONSTRAINTS), _pins(CONSTRAINTS)
    assert device.pop("torch") == "2.9.1"
    host.pop("torch")
    assert device == host, "constraints-device-aarch64.txt drifted from constraints.txt"


def test_pyproject_accepts_both_torch_pins():
    (torch,) = (Requirement(d) for d in _dependencies() if Requirement(d).name == "torch")
    for path in (CONSTRAINTS, DEVICE_CONSTRAINTS):
        version = _pins(path)["torch"]
        assert torch.specifier.contains(version), f"pyproject's {torch} rejects {path.name}"


def _pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in _KEEP_PIP_ENV}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _pip(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=_pip_env(), capture_output=True, text=True, timeout=timeout
    )


def _index_reachable() -> str | None:
    try:
        urllib.request.urlopen(urllib.request.Request(INDEX, method="HEAD"), timeout=10).close()
    except (urllib.error.URLError, OSError) as exc:
        return f"{INDEX} unreachable ({exc}); the aarch64 device-install resolve needs it"
    return None


def _sdist_wheels(pins: dict[str, str]) -> Path:
    out = CACHE / "sdist-wheels"
    for name in SDIST_ONLY:
        spec = f"{name}=={pins[name]}"
        stem = f"{name.replace('-', '_')}-{pins[name]}-"
        if not any(p.name.startswith(stem) for p in out.glob("*.whl")):
            done = _pip("-m", "pip", "wheel", "--no-deps", "-w", str(out), spec)
            assert done.returncode == 0, f"building {spec}: {done.stderr[-2000:]}"
        (wheel,) = (p for p in out.glob("*.whl") if p.name.startswith(stem))
        assert wheel.name.endswith("-py3-none-any.whl"), f"{wheel.name} is not pure Python"
    return out


def _resolve_device_install() -> dict:
    """pip's ``--report`` of the aarch64 device install (cached by a hash of its inputs)."""
    deps = _dependencies()
    inputs = [DEVICE_CONSTRAINTS.read_bytes(), PIP_AARCH64.read_bytes(), *map(str.encode, deps)]
    key = hashlib.sha256(b"\0".join(inputs)).hexdigest()[:16]
    report = CACHE / f"aarch64-{key}.json"
    if report.exists() and not os.environ.get("BITFED_DEVICE_INSTALL_REFRESH"):
        return json.loads(report.read_text())
    reason = _index_reachable()
    if reason:
        pytest.skip(reason)
    CACHE.mkdir(parents=True, exist_ok=True)
    links = _sdist_wheels(_pins(DEVICE_CONSTRAINTS))
    partial = report.with_suffix(".partial")
    done = _pip(
        str(PIP_AARCH64), "install", "--dry-run", "--ignore-installed", "--quiet",
        "--target", str(CACHE / "target"), "--report", str(partial),
        "--find-links", str(links), "-c", str(DEVICE_CONSTRAINTS), *deps,
    )  # fmt: skip
    assert done.returncode == 0, f"aarch64 device install does not resolve:\n{done.stderr[-3000:]}"
    partial.replace(report)
    return json.loads(report.read_text())


@pytest.mark.slow
def test_aarch64_device_install_has_no_cuda_package():
    report = _resolve_device_install()
    installed = {canonicalize_name(item["metadata"]["name"]): item for item in report["install"]}
    gpu = sorted(name for name in installed if GPU_PACKAGE.match(name))
    assert gpu == [], f"the aarch64 device install pulls GPU packages: {gpu}"
    torch = installed["torch"]
    assert torch["metadata"]["version"] == _pins(DEVICE_CONSTRAINTS)["torch"]
    wheel = torch["download_info"]["url"].rsplit("/", 1)[-1]
    assert wheel.endswith("-cp311-cp311-manylinux_2_28_aarch64.whl"), wheel
    unpinned = sorted(set(installed) - set(_pins(DEVICE_CONSTRAINTS)))
    assert unpinned == [], f"the device install takes versions no constraints file pins: {unpinned}"
