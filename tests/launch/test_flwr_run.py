"""``flwr run .`` exactly as the README gives it, on a fresh Flower home: no idle waiting.

Flower (>= 1.32) simulates 2 SuperNodes unless told otherwise while the app's default run
config samples 10 clients per round; the README's command sets ``num-supernodes=10``. The
managed local SuperLink gets its own ports and home, and is stopped afterwards.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
README_COMMAND = [
    "flwr",
    "run",
    ".",
    "local",
    "--stream",
    "--federation-config",
    "num-supernodes=10",
]

pytestmark = pytest.mark.slow


def _stop_local_superlinks(home: Path) -> None:
    """Kill the background SuperLink ``flwr run`` started for ``home`` (Flower has no command)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "flower-superlink" in cmdline and str(home) in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_readme_flwr_run_completes_without_waiting_for_nodes(tmp_path, free_tcp_port_factory):
    readme = (ROOT / "README.md").read_text()
    assert " ".join(README_COMMAND).replace("num-supernodes=10", '"num-supernodes=10"') in readme
    home = tmp_path / "flwr-home"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_tcp_port_factory()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_tcp_port_factory()),
    }
    overrides = ["--run-config", f"federation.num_rounds=2 output_dir='{tmp_path / 'run'}'"]
    started = time.monotonic()
    try:
        for _attempt in range(3):  # Flower gives its SuperLink 15 s to start: again if busy
            done = subprocess.run(
                [str(BIN / "flwr"), *README_COMMAND[1:], *overrides],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=420,
            )  # fmt: skip
            if "Failed to start local SuperLink" not in done.stdout + done.stderr:
                break
            _stop_local_superlinks(home)
    finally:
        _stop_local_superlinks(home)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "round 2/2: accuracy" in out, out[-3000:]
    assert "waiting for nodes" not in out and "going ahead" not in out
    assert (tmp_path / "run" / "metrics.json").is_file()
    print(f"flwr run: 2 rounds in {time.monotonic() - started:.0f} s")
