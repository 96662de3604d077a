"""The compose federation in real containers: build the image, start it, submit runs, read peaks.

Used by ``tests/test_compose_e2e.py`` (marker ``docker``) and as a benchmark::

    python -m benchmarks.compose [--rounds 3] [--label one-container] [--image TAG]

which starts ``compose.yaml`` (one SuperLink, the ServerApp executor, three devices: each one
container running a SuperNode with ``--isolation subprocess``, which starts its ClientApp
executor and each round's ClientApp process inside the device's cgroup), runs the MLP on digits,
and writes every container's cgroup memory peak (``memory.max_usage_in_bytes`` on cgroup v1,
``memory.peak`` on v2: resident memory plus the page cache the container touched), its peak of
anonymous memory, the peak RSS of each process kind inside it (sampled from
``/proc/<pid>/status`` VmHWM), and the per-device totals into
``benchmarks/results/compose.json`` (the previous result moves into its ``history``, so
BENCHMARKS.md shows before and after). It also measures each device
process kind's *import floor*: what a fresh process in the image holds after importing only
what that kind imports.

Everything runs on the compose network and 127.0.0.1; the image is built offline by
``scripts/offline-image.sh`` (cached by a hash of the sources).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASE, TLS, STATE = "compose.yaml", "compose.tls.yaml", "compose.state.yaml"
NUM_DEVICES = 3
ENABLE_HINT = "run scripts/docker-engine.sh as root to provision one"
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
PROCESS_KINDS = (
    "flower-superlink",
    "flwr-serverapp",
    "flwr-clientapp",
    "flower-superexec",
    "flower-supernode",
)
ROUND_LINE = re.compile(r"round (\d+)/(\d+): accuracy ([0-9.]+)(.*)$")
SENT_LINE = re.compile(r"round (\d+): sent to (\d+) nodes \(([^)]*)\)")
RESUME_LINE = re.compile(r"resuming from (\S+): (\d+) rounds done")

__all__ = [
    "Federation",
    "PeakSampler",
    "Submission",
    "build_image",
    "device_footprint",
    "engine_problem",
    "federation_overrides",
    "isolated_copy",
    "measure",
]


def engine_problem() -> str | None:
    """One line saying why no Docker engine/compose can be used here, or None when both work."""
    if shutil.which("docker") is None:
        return f"no docker client on PATH; {ENABLE_HINT}"
    if shutil.which("docker-compose") is None:
        return f"no docker-compose on PATH; {ENABLE_HINT}"
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return f"the Docker engine does not answer; {ENABLE_HINT}"
    if proc.returncode != 0:
        return f"the Docker engine does not answer; {ENABLE_HINT}"
    return None


def build_image(root: Path = ROOT, timeout: float = 3600.0, platform: str | None = None) -> str:
    """Build (or reuse) the image with ``scripts/offline-image.sh``; return its source tag.

    ``platform`` (``amd64``/``arm64``) is passed as ``BITFED_PLATFORM``; without it,
    ``BITFED_IMAGE=TAG`` in the environment skips the build and uses that image.
    """
    if platform is None and os.environ.get("BITFED_IMAGE"):
        return os.environ["BITFED_IMAGE"]
    proc = subprocess.run(
        ["bash", str(root / "scripts" / "offline-image.sh")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_clean_env({"BITFED_PLATFORM": platform} if platform else None),
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("bitfed:"):
        detail = " ".join((proc.stderr or proc.stdout).split())[-400:]
        what = f"scripts/offline-image.sh ({platform})" if platform else "scripts/offline-image.sh"
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {detail}")
    return lines[-1]


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without Python settings (docker-compose v1 runs on the system Python)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return {**env, **FLOWER_ENV, **(extra or {})}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _http_answers(port: int, tls: bool) -> bool:
    """True when something speaks HTTP (or TLS) on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as raw:
            if tls:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                with context.wrap_socket(raw) as conn:
                    return conn.version() is not None
            raw.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return raw.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def federation_overrides(rounds: int, **extra: Any) -> list[str]:
    """Hydra overrides of a run on the three compose devices (MLP on digits unless overridden)."""
    values: dict[str, Any] = {
        "federation.num_clients": NUM_DEVICES,
        "federation.clients_per_round": NUM_DEVICES,
        "federation.min_clients": NUM_DEVICES,
        "federation.num_rounds": rounds,
        "federation.checkpoint_dir": "/app/state/checkpoints",
        "train.num_threads": 1,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@dataclass
class Submission:
    """What one ``bitfed-server --connect`` printed and how it exited."""

    returncode: int
    lines: list[str]
    seconds: float

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def rounds(self) -> dict[int, tuple[float, bool]]:
        """``{round: (accuracy, skipped)}`` from the streamed ``round k/N: accuracy …`` lines."""
        found = {}
        for line in self.lines:
            if m := ROUND_LINE.search(line):
                found[int(m.group(1))] = (float(m.group(3)), "(skipped" in m.group(4))
        return found

    def payloads(self) -> dict[int, str]:
        """``{round: "full: 3"}``-style downlink summary of each round the server configured."""
        return {int(m.group(1)): m.group(3) for line in self.lines if (m := SENT_LINE.search(line))}

    def resumed_after(self) -> int | None:
        """Rounds the ServerApp found done in its checkpoint (None: it started fresh)."""
        found = [int(m.group(2)) for line in self.lines if (m := RESUME_LINE.search(line))]
        return found[-1] if found else None


@dataclass
class Federation:
    """One compose project (unique name) built from ``files`` in ``root``."""

    files: Sequence[str]
    image: str
    workdir: Path
    root: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    project: str = field(default_factory=lambda: f"bitfed-test-{secrets.token_hex(4)}")
    port: int = field(default_factory=_free_port)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = _clean_env(
            {
                "BITFED_VERSION": self.image.split(":", 1)[1],
                "BITFED_PORT": str(self.port),
                "BITFED_HOST": "127.0.0.1",
                **self.env,
            }
        )

    # --- compose -----------------------------------------------------------------------------
    def compose(
        self, *args: str, timeout: float = 300.0, check: bool = True
    ) -> subprocess.CompletedProcess:
        cmd = ["docker-compose", "-p", self.project]
        for name in self.files:
            cmd += ["-f", str(self.root / name)]
        proc = subprocess.run(
            [*cmd, *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            detail = " ".join(proc.stderr.split())[-600:]
            raise RuntimeError(f"docker-compose {' '.join(args)} failed: {detail}")
        return proc

    def up(self, *extra: str, timeout: float = 180.0) -> None:
        """Start every service (no build) and wait until the SuperLink answers HTTP(S)."""
        self.compose("up", "-d", "--no-build", *extra, timeout=timeout)
        self.wait_superlink()

    def wait_superlink(self, timeout: float = 90.0) -> None:
        """Wait for an HTTP(S) reply on the published port (docker-proxy accepts TCP earlier)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _http_answers(self.port, tls=TLS in self.files):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SuperLink of {self.project} did not answer on {self.port}")

    def save_logs(self, path: Path | None = None) -> Path:
        """Write every service's log (``docker-compose logs``) to ``path`` (default: workdir)."""
        path = path or self.workdir / f"{self.project}.log"
        proc = self.compose("logs", "--no-color", "--timestamps", timeout=120, check=False)
        path.write_text(proc.stdout + proc.stderr)
        return path

    def down(self, volumes: bool = True) -> None:
        """Stop and remove containers and networks (and named volumes unless ``volumes=False``)."""
        args = ["down", "--remove-orphans", "--timeout", "5"]
        self.compose(*args, *(["--volumes"] if volumes else []), timeout=180, check=False)

    def container(self, service: str) -> str:
        """Full id of the (first) container of ``service``."""
        out = self.compose("ps", "-q", service).stdout.split()
        if not out:
            raise RuntimeError(f"service {service} has no container in {self.project}")
        return out[0]

    def inspect(self, service: str) -> dict[str, Any]:
        proc = subprocess.run(
            ["docker", "inspect", self.container(service)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return json.loads(proc.stdout)[0]

    def services(self) -> list[str]:
        """Services with a running container."""
        running = set(self.compose("ps", "--services", "--filter", "status=running").stdout.split())
        return [s for s in self.compose("config", "--services").stdout.split() if s in running]

    def config(self) -> dict[str, Any]:
        """The merged compose configuration (``docker-compose config``)."""
        import yaml

        return yaml.safe_load(self.compose("config").stdout)

    # --- runs --------------------------------------------------------------------------------
    def submit(
        self,
        overrides: Sequence[str],
        *,
        certs: Path | None = None,
        timeout: float = 600.0,
        on_line: Callable[[str], None] | None = None,
    ) -> Submission:
        """Run ``bitfed-server --connect 127.0.0.1:PORT`` (on this host) and collect its output."""
        tls = ["--certs-dir", str(certs)] if certs else ["--insecure"]
        cmd = [
            sys.executable,
            "-m",
            "server.deploy",
            "--connect",
            f"127.0.0.1:{self.port}",
            *tls,
            "--app",
            str(self.root),
            "--config-dir",
            str(self.root / "conf"),
            "--state-dir",
            str(self.workdir / "cli"),
            *overrides,
        ]
        env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(self.workdir / "flwr-home")}
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if on_line is not None:
                    on_line(line)
            proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return Submission(proc.returncode, lines, time.monotonic() - started)

    def exec(self, service: str, *cmd: str, timeout: float = 60.0) -> str:
        return self.compose("exec", "-T", service, *cmd, timeout=timeout).stdout

    def kill_main_process(self, service: str) -> None:
        """SIGKILL the container's main process from the host: a crash the restart policy sees."""
        pid = self.inspect(service)["State"]["Pid"]
        if not pid:
            raise RuntimeError(f"{service} is not running")
        os.kill(pid, 9)

    def wait_running(self, service: str, after_pid: int | None = None, timeout: float = 60) -> int:
        """Wait until ``service`` runs again (with a main pid other than ``after_pid``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.inspect(service)["State"]
            if state["Running"] and state["Pid"] and state["Pid"] != after_pid:
                return state["Pid"]
            time.sleep(0.5)
        raise RuntimeError(f"{service} did not come back within {timeout:.0f} s")


# --- memory --------------------------------------------------------------------------------------
def _cgroup_dir(pid: int) -> tuple[Path, int] | None:
    """The memory cgroup folder of ``pid`` and the cgroup version (1 or 2)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/"), 1
    for line in lines:
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/"), 2
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cgroup_memory(pid: int) -> dict[str, int | None]:
    """``{"peak": …, "usage": …, "limit": …}`` bytes of the memory cgroup holding ``pid``."""
    found = _cgroup_dir(pid)
    if found is None:
        return {"peak": None, "usage": None, "limit": None}
    folder, version = found
    if version == 1:
        names = ("memory.max_usage_in_bytes", "memory.usage_in_bytes", "memory.limit_in_bytes")
    else:
        names = ("memory.peak", "memory.current", "memory.max")
    peak, usage, limit = (_read_int(folder / n) for n in names)
    return {"peak": peak, "usage": usage, "limit": limit, "cgroup_version": version}


def reset_cgroup_peak(pid: int) -> bool:
    """Reset the cgroup's peak to its current usage (cgroup v1; v2 kernels >= 6.12 accept it)."""
    found = _cgroup_dir(pid)
    if found is None:
        return False
    folder, version = found
    target = folder / ("memory.max_usage_in_bytes" if version == 1 else "memory.peak")
    try:
        target.write_text("0\n")
    except OSError:
        return False
    return True


def _anon_bytes(folder: Path) -> int | None:
    """Anonymous memory charged to a memory cgroup (``total_rss`` on v1, ``anon`` on v2)."""
    try:
        lines = (folder / "memory.stat").read_text().splitlines()
    except OSError:
        return None
    stat = dict(line.split(" ", 1) for line in lines if " " in line)
    value = stat.get("total_rss", stat.get("anon"))
    return int(value) if value is not None else None


def _process_kind(pid: int) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # python [-m] KIND ...; under qemu-user the emulator and the interpreter come first
    for arg in argv[:6]:
        name = os.path.basename(arg.decode(errors="replace"))
        if name in PROCESS_KINDS:
            return name
    return "other"


def _vm_hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakSampler:
    """Sample, every ``period`` s, the peak RSS (VmHWM) of each process kind in each container."""

    def __init__(self, federation: Federation, services: Sequence[str], period: float = 0.25):
        self.federation = federation
        self.services = list(services)
        self.period = period
        self.peaks: dict[str, dict[str, int]] = {s: {} for s in self.services}
        self.counts: dict[str, dict[str, set[int]]] = {s: {} for s in self.services}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._cgroups: dict[str, Path] = {}
        self.anon_peaks: dict[str, int] = {}  # cgroup's anonymous memory (no page cache), max

    def __enter__(self) -> PeakSampler:
        for service in self.services:
            pid = self.federation.inspect(service)["State"]["Pid"]
            found = _cgroup_dir(pid)
            if found is not None:
                self._cgroups[service] = found[0]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for service, folder in self._cgroups.items():
                try:
                    pids = [int(p) for p in (folder / "cgroup.procs").read_text().split()]
                except OSError:
                    continue
                anon = _anon_bytes(folder)
                if anon is not None:
                    self.anon_peaks[service] = max(self.anon_peaks.get(service, 0), anon)
                for pid in pids:
                    kind, hwm = _process_kind(pid), _vm_hwm(pid)
                    if kind is None or hwm is None:
                        continue
                    best = self.peaks[service]
                    best[kind] = max(best.get(kind, 0), hwm)
                    self.counts[service].setdefault(kind, set()).add(pid)
            self._stop.wait(self.period)

    def processes(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{service: {kind: {"peak_rss": bytes, "processes": n}}}``."""
        return {
            s: {
                k: {"peak_rss": v, "processes": len(self.counts[s].get(k, ()))}
                for k, v in sorted(kinds.items())
            }
            for s, kinds in self.peaks.items()
        }


def container_memory(federation: Federation, services: Sequence[str]) -> dict[str, Any]:
    """Per service: cgroup peak/usage/limit and the limit Docker set (HostConfig.Memory)."""
    out = {}
    for service in services:
        info = federation.inspect(service)
        out[service] = {
            **cgroup_memory(info["State"]["Pid"]),
            "host_config_memory": info["HostConfig"].get("Memory") or None,
        }
    return out


def device_footprint(containers: dict[str, Any]) -> dict[str, dict[str, int | None]]:
    """Per device K: the cgroup peak of its container ``supernode-K`` (every process of it)."""
    devices = {}
    for k in range(1, NUM_DEVICES + 1):
        node = containers.get(f"supernode-{k}", {})
        devices[f"device-{k}"] = {"total": node.get("peak"), "anon": node.get("anon_peak")}
    return devices


# --- benchmark -----------------------------------------------------------------------------------
def isolated_copy(image: str) -> str:
    """A one-layer copy of ``image`` (same files and settings, its own files on disk).

    Containers of one image share its files' page cache, and a cgroup is charged only for the
    pages it faults in first: a device started after others would look smaller than it is on a
    board of its own. A device run from this copy pays for every page it touches.
    """
    info = json.loads(_docker("image", "inspect", image))[0]
    tag = f"bitfed-isolated:{info['Id'].split(':')[-1][:12]}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    config = info["Config"]
    changes = [f"ENV {e}" for e in config.get("Env") or []]
    changes += [f"WORKDIR {config['WorkingDir']}"] if config.get("WorkingDir") else []
    changes += [f"USER {config['User']}"] if config.get("User") else []
    container = _docker("create", image, "true").strip()
    try:
        export = subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE)
        args = [arg for change in changes for arg in ("--change", change)]
        subprocess.run(
            ["docker", "import", *args, "-", tag], stdin=export.stdout, check=True, timeout=1800,
            capture_output=True,
        )  # fmt: skip
        export.wait()
    finally:
        _docker("rm", "-f", container)
    return tag


def _docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=1800
    ).stdout


def measure(
    image: str,
    rounds: int,
    workdir: Path,
    root: Path = ROOT,
    env: dict[str, str] | None = None,
    extra_files: Sequence[Path] = (),
    isolate_device: int | None = 1,
) -> dict[str, Any]:
    """One plain federation (compose.yaml): run ``rounds`` rounds, return the footprint record.

    ``isolate_device=K`` runs device K from :func:`isolated_copy`, so its cgroup peak is that
    of a device on its own (no page cache shared with the other devices).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    files = [BASE, *map(str, extra_files)]
    overrides: dict[str, dict[str, Any]] = {}
    if isolate_device:
        overrides[f"supernode-{isolate_device}"] = {"image": isolated_copy(image)}
    if overrides:
        override = workdir / "measure-override.yaml"
        override.write_text(json.dumps({"services": overrides}))  # JSON is YAML
        files.append(str(override))
    fed = Federation(files, image, workdir, root=root, env=env or {})
    try:
        fed.up()
        services = fed.services()
        with PeakSampler(fed, services) as sampler:
            run = fed.submit(federation_overrides(rounds), timeout=2400)
        containers = container_memory(fed, services)
        for service, anon in sampler.anon_peaks.items():
            containers[service]["anon_peak"] = anon
        fed.save_logs()
    finally:
        fed.down()
    (workdir / "run.log").write_text(run.text + "\n")
    if run.returncode != 0:
        raise RuntimeError(f"the run failed (exit {run.returncode}); its output: {workdir}/run.log")
    return {
        "image": image,
        "image_bytes": _image_size(image),
        "isolated_device": f"device-{isolate_device}" if isolate_device else None,
        "topology": "one container per device (SuperNode --isolation subprocess)",
        "rounds": {str(k): {"accuracy": a, "skipped": s} for k, (a, s) in run.rounds().items()},
        "run_seconds": round(run.seconds, 1),
        "containers": containers,
        "processes": sampler.processes(),
        "devices": device_footprint(containers),
    }


def _image_size(image: str) -> int | None:
    proc = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Size}}", image], capture_output=True, text=True
    )
    return int(proc.stdout) if proc.returncode == 0 and proc.stdout.strip().isdigit() else None


#: What each process of a device imports before it does any work: Flower's SuperNode, the
#: ClientApp executor it starts (``flower-superexec``), and a ClientApp process (Flower's
#: ``flwr-clientapp`` entry point, torch, bitfed's ClientApp module). As the image starts them:
#: through :mod:`glue.lean_flower`'s scripts, with Flower's SQL stores deferred.
IMPORT_FLOORS = {
    "flower-supernode": "flwr.supernode.cli",
    "flower-superexec": "flwr.supercore.cli",
    "flwr-clientapp": "flwr.supernode.cli torch client.client_app",
}
_FLOOR_PROBE = (
    "import importlib, sys\n"
    "from glue.lean_flower import defer_sql_stores\n"
    "defer_sql_stores()\n"
    "for m in sys.argv[1:]: importlib.import_module(m)\n"
    "s = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
    "print(int(s['VmHWM'].split()[0]) * 1024, int(s['RssAnon'].split()[0]) * 1024)\n"
)


def import_floors(image: str) -> dict[str, dict[str, int]]:
    """Per process kind: peak RSS and anonymous bytes of a fresh process in ``image`` that
    only imports what that kind imports (:data:`IMPORT_FLOORS`): memory no bitfed code uses."""
    floors = {}
    for kind, modules in IMPORT_FLOORS.items():
        out = _docker("run", "--rm", "--entrypoint", "python", image, "-c", _FLOOR_PROBE,
                      *modules.split())  # fmt: skip
        peak, anon = (int(v) for v in out.split())
        floors[kind] = {"peak_rss": peak, "anon": anon}
    return floors


def build_parser() -> argparse.ArgumentParser:
    from benchmarks.common import benchmark_parser

    parser = benchmark_parser("compose", __doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--label", default="current", help="name of this run in the history")
    parser.add_argument("--image", help="use this image tag instead of building one")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository with compose.yaml")
    parser.add_argument("--note", default="", help="what differs in this measurement")
    parser.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="compose variable (repeatable)"
    )
    parser.add_argument(
        "--extra-file", action="append", default=[], type=Path, help="another compose file"
    )
    parser.add_argument(
        "--isolate-device", type=int, default=1, help="device run from its own image copy (0: none)"
    )
    return parser


def _history(out: Path) -> dict[str, Any]:
    """Earlier runs (the previous result's history and its own run), to show before/after."""
    from benchmarks.common import read_json

    path = out / "compose.json"
    if not path.is_file():
        return {}
    old = read_json(path)
    history = dict(old.get("history", {}))
    if "devices" in old and "label" in old:
        keep = ("label", "note", "image_bytes", "devices", "topology", "machine", "run_seconds")
        history[old["label"]] = {k: old[k] for k in keep if k in old}
    return history


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The measurement behind ``python -m benchmarks.compose`` (see the module docstring)."""
    from benchmarks.common import SkipBenchmark

    problem = engine_problem()
    if problem:
        raise SkipBenchmark(problem)
    image = args.image or build_image(args.root)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bitfed-compose-{secrets.token_hex(4)}"
    env = dict(kv.split("=", 1) for kv in args.env)
    history = _history(Path(args.out))
    record = measure(
        image,
        args.rounds,
        workdir,
        root=args.root,
        env=env,
        extra_files=[f.resolve() for f in args.extra_file],
        isolate_device=args.isolate_device or None,
    )
    for name, dev in record["devices"].items():
        print(f"{name}: {_mib(dev['total'])} MiB peak ({_mib(dev['anon'])} MiB anonymous)")
    return record | {
        "label": args.label,
        "note": args.note,
        "env": env,
        "extra_files": [f.name for f in args.extra_file],
        "import_floors": import_floors(image),
        "history": {k: v for k, v in history.items() if k != args.label},
    }


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.common import run_benchmark

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: compose down
    return run_benchmark("compose", run, _plot, args)


def _plot(res: dict[str, Any], png: Path) -> None:
    """Each device's cgroup peak, split into anonymous memory and page cache, vs the cap."""
    import matplotlib.pyplot as plt

    from benchmarks.common import save_figure

    names = sorted(res["devices"])
    total = [res["devices"][n]["total"] / 2**20 for n in names]
    anon = [(res["devices"][n]["anon"] or 0) / 2**20 for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, anon, label="anonymous")
    ax.bar(names, [t - a for t, a in zip(total, anon)], bottom=anon, label="page cache")
    ax.axhline(400, color="k", ls="--", lw=1, label="400 MiB target")
    ax.set_ylabel("cgroup peak (MiB)")
    ax.set_title("compose device footprint (MLP on digits)")
    ax.legend(loc="lower right")
    save_figure(fig, png, res["machine"])


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


if __name__ == "__main__":
    sys.exit(main())
