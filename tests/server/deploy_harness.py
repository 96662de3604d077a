"""Process plumbing for the deployment tests: free ports, processes stopped by PID, and a
/proc sampler of the peak memory of a SuperNode, its executor and its ClientApp processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

BIN = Path(sys.executable).parent
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def free_port() -> int:
    """A TCP port nobody listens on right now (never Flower's defaults)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in (8000, 9094, 39091, 39093):
            return port


class Processes:
    """Start processes in their own session; :meth:`stop_all` ends each by PID (then its group)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:  # children (SuperExec, ClientApps) share the session/group of the PID we started
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree[ppid].append(int(entry))
    return tree


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _kind(pid: int) -> str | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    for kind in ("flower-supernode", "flower-superexec", "flwr-clientapp"):
        if kind in cmd:
            return kind
    return None


class FootprintSampler(threading.Thread):
    """Every ``period`` s, record the peak RSS (VmHWM) of every process under ``roots``.

    ``peak_mb[kind]`` is the largest VmHWM seen for one process of that kind; ``pids[kind]``
    the distinct processes seen (a fresh ``flwr-clientapp`` per message).
    """

    def __init__(self, roots: list[int], period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.roots, self.period = roots, period
        self.peak_kb: dict[str, int] = defaultdict(int)
        self.pids: dict[str, set[int]] = defaultdict(set)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            tree = _children()
            todo = list(self.roots)
            while todo:
                pid = todo.pop()
                todo += tree.get(pid, [])
                kind = _kind(pid)
                if kind is not None:
                    self.pids[kind].add(pid)
                    self.peak_kb[kind] = max(self.peak_kb[kind], _status_kb(pid, "VmHWM"))
            time.sleep(self.period)

    def stop(self) -> dict[str, dict[str, float]]:
        self._halt.set()
        self.join(timeout=5)
        return {
            kind: {"peak_rss_mb": round(kb / 1024, 1), "processes": len(self.pids[kind])}
            for kind, kb in self.peak_kb.items()
        }


def wait_for(predicate, timeout: float, what: str, period: float = 0.5) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def cmdline(pid: int) -> list[str]:
    """The argv of a running process."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
