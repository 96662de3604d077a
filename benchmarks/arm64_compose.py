"""A mixed amd64/arm64 compose federation that completes (issue 19).

``python -m benchmarks.arm64_compose [--rounds 2] [--port 18931]`` builds (or reuses) the amd64
image and the linux/arm64 one with ``scripts/offline-image.sh`` (``BITFED_PLATFORM=arm64`` for
the second; both carry the same source tag, the arm64 one with ``-arm64``), starts
``compose.yaml + compose.arm64.yaml`` (device 3 is the arm64 image, under qemu-user on an x86-64
host) under a project name of its own, submits a digits MLP run from this host
(``bitfed-server --connect``) with round and node-wait timeouts long enough for an emulated
device, and writes ``benchmarks/results/arm64_compose.json``: every round's accuracy and
valid/sampled replies, seconds per round, every container's cgroup peak
(``memory.max_usage_in_bytes``), each device's ClientApp peak RSS (VmHWM; on the arm64 device
that of the qemu-user process, translation cache included), the arm64 image's size and build
time, and proof that device 3 ran aarch64 code (``uname -m`` in it, the image's architecture).

Each device is one container (a SuperNode with ``--isolation subprocess`` starting its
ClientApps); the emulated one gets ``--arm64-memory`` (default 1g, a run-only override: qemu-user
and its translation cache sit on top of the guest), the others keep compose.yaml's cap. Without
a Docker engine or qemu-aarch64's binfmt handler the result says skipped.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, SkipBenchmark, benchmark_parser, run_benchmark
from benchmarks.compose import (
    BASE,
    NUM_DEVICES,
    Federation,
    PeakSampler,
    build_image,
    container_memory,
    engine_problem,
    federation_overrides,
)

__all__ = ["OVERLAY", "ARM64_DEVICE", "arm64_problem", "build_images", "measure", "main"]

OVERLAY = "compose.arm64.yaml"
ARM64_DEVICE = 3
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
METRIC_LINE = "Aggregated MetricRecord: "


def arm64_problem() -> str | None:
    """One line saying why arm64 containers cannot run here, or None."""
    try:
        text = BINFMT.read_text()
    except OSError:
        return "no qemu-aarch64 binfmt handler (scripts/test-arm64.sh registers one)"
    if not text.startswith("enabled") or "F" not in text.split("flags:", 1)[-1].split()[0]:
        return "qemu-aarch64's binfmt handler is disabled or lacks the F flag"
    return None


def _build_record(tag: str) -> dict[str, Any] | None:
    """What offline-image.sh wrote when it built ``tag`` (None: built elsewhere or earlier)."""
    path = REPO_ROOT / "build" / "offline-image-arm64.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("tag") == tag else None


def build_images(args: argparse.Namespace) -> dict[str, Any]:
    """The amd64 and arm64 tags with one version (compose: ``bitfed:V``, ``bitfed:V-arm64``)."""
    amd64 = args.image or build_image(timeout=3600, platform="amd64")
    arm64 = args.arm64_image or build_image(timeout=3 * 3600, platform="arm64")
    if arm64 != f"{amd64}-arm64":
        subprocess.run(["docker", "tag", arm64, f"{amd64}-arm64"], check=True, timeout=60)
    info = json.loads(_docker("image", "inspect", f"{amd64}-arm64"))[0]
    return {
        "amd64": amd64,
        "arm64": arm64,
        "arm64_bytes": info["Size"],
        "arm64_architecture": _architecture(f"{amd64}-arm64"),
        "arm64_build": _build_record(arm64),
        "arm64_full_build_seconds": args.arm64_full_build_seconds,
        "amd64_bytes": json.loads(_docker("image", "inspect", amd64))[0]["Size"],
    }


def _architecture(image: str) -> str:
    info = json.loads(_docker("image", "inspect", image))[0]
    return "/".join(filter(None, (info["Os"], info["Architecture"], info.get("Variant"))))


def _docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=600
    ).stdout


#: Mounted into the emulated device only (``PYTHONPATH``), see its docstring.
EMULATION_SITECUSTOMIZE = '''\
"""qemu-user only (benchmarks/arm64_compose.py): Flower's SuperNode gives a ClientApp process
HEARTBEAT_DEFAULT_INTERVAL (30 s, fixed) from launch to its first call; under emulation the
ClientApp's imports alone take longer, so the token expires and the task is relaunched forever.
This widens that window in the SuperNode's task store only (a real board imports in seconds)."""

import importlib.abc
import importlib.util
import sys

SECONDS = 600
MODULES = {
    "flwr.supercore.corestate.in_memory_corestate",
    "flwr.supercore.corestate.sql_corestate",
}


class _Widen(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in MODULES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.HEARTBEAT_DEFAULT_INTERVAL = SECONDS

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Widen())
'''
EMULATION_NOTE = (
    "Flower's fixed 30-s window from a ClientApp's launch to its first call "
    "(HEARTBEAT_DEFAULT_INTERVAL in the SuperNode's task store) widened to 600 s in the emulated "
    "device only: under qemu-user the ClientApp's imports alone take longer (~35 s measured), "
    "so its task token expired and the task was relaunched without end"
)


def _arm64_override(workdir: Path, memory: str) -> Path:
    """A run-only override of the emulated device: its memory cap (qemu-user's own memory on
    top of the guest's) and :data:`EMULATION_SITECUSTOMIZE` on its ``PYTHONPATH``."""
    site = workdir / "emulation"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(EMULATION_SITECUSTOMIZE)
    for path in (workdir, site, site / "sitecustomize.py"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the containers run as uid 49999
    service = {
        "deploy": {"resources": {"limits": {"cpus": "1", "memory": memory}}},
        "environment": {"PYTHONPATH": "/opt/bitfed-emulation"},
        "volumes": [f"{site}:/opt/bitfed-emulation:ro"],
    }
    path = workdir / "arm64-device.yaml"
    path.write_text(json.dumps({"services": {f"supernode-{ARM64_DEVICE}": service}}))  # YAML
    return path


def _rounds_seen(lines: list[str], times: dict[int, float]) -> dict[str, Any]:
    """Per round: accuracy and the aggregated reply counts, from the streamed server output."""
    out: dict[str, Any] = {}
    pending: dict[str, float] | None = None
    for line in lines:
        if METRIC_LINE in line:
            text = line.split(METRIC_LINE, 1)[1].strip()
            pending = ast.literal_eval(text)
        elif "accuracy" in line and (head := line.split("round ", 1)[-1]).split("/")[0].isdigit():
            k = int(head.split("/")[0])
            acc = float(head.split("accuracy ", 1)[1].split(",")[0])
            entry: dict[str, Any] = {"accuracy": acc}
            if k > 0 and pending is not None:
                entry |= {n: int(pending[n]) for n in ("sampled", "valid", "rejected", "failed")}
                entry["skipped"] = bool(pending.get("skipped"))
            if k in times:
                entry["at_seconds"] = round(times[k], 1)
            out[str(k)] = entry
            pending = None
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    problem = engine_problem() or arm64_problem()
    if problem:
        raise SkipBenchmark(problem)
    rounds = 1 if args.quick else args.rounds
    images = build_images(args)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bitfed-arm64-{secrets.token_hex(4)}"
    workdir.mkdir(parents=True)
    files = [BASE, OVERLAY, str(_arm64_override(workdir, args.arm64_memory))]
    project = f"bitfed-arm64-{secrets.token_hex(3)}"
    fed = Federation(files, images["amd64"], workdir, project=project, port=args.port)
    overrides = federation_overrides(
        rounds,
        **{
            "output_dir": "/app/state/runs/arm64",
            "federation.round_timeout": args.round_timeout,
            "federation.node_wait_timeout": args.round_timeout,
        },
    )
    arrivals: dict[int, float] = {}
    try:
        started = time.monotonic()
        fed.up(timeout=600)
        services = fed.services()
        device = f"supernode-{ARM64_DEVICE}"
        machine = fed.exec(device, "uname", "-m", timeout=120).strip()
        t0 = time.monotonic()

        def on_line(line: str) -> None:
            if "round " in line and "accuracy" in line:
                head = line.split("round ", 1)[1].split("/")[0]
                if head.isdigit():
                    arrivals[int(head)] = time.monotonic() - t0

        nodes = [f"supernode-{k}" for k in range(1, NUM_DEVICES + 1)]
        with PeakSampler(fed, nodes, period=0.5) as sampler:
            run = fed.submit(overrides, timeout=args.run_timeout, on_line=on_line)
        apps = {
            s: k["flwr-clientapp"] for s, k in sampler.processes().items() if "flwr-clientapp" in k
        }
        containers = container_memory(fed, services)
        logs = fed.compose("logs", "--no-color", device, timeout=120, check=False).stdout
        metrics = json.loads(
            fed.exec("superexec-serverapp", "cat", "/app/state/runs/arm64/metrics.json")
        )
        images_of = {s: fed.inspect(s)["Config"]["Image"] for s in services}
        platforms = {s: _architecture(fed.inspect(s)["Image"]) for s in services}
        (workdir / "run.log").write_text(run.text + "\n")
        fed.save_logs()
        wall = time.monotonic() - started
    finally:
        fed.down(volumes=True)
    completed = run.returncode == 0 and "finished:completed" in run.text
    table = _rounds_seen(run.lines, arrivals)
    done = sorted(int(k) for k in table if int(k) > 0)
    gaps = [arrivals[k] - arrivals[k - 1] for k in done if k in arrivals and k - 1 in arrivals]
    metric_rounds = [r for r in metrics.get("rounds", []) if r.get("round", 0) > 0]
    all_replies = all(
        table[str(k)].get("valid") == NUM_DEVICES and not table[str(k)].get("skipped") for k in done
    )
    result = {
        "config": {
            "rounds": rounds,
            "model": "mlp",
            "dataset": "digits",
            "devices": NUM_DEVICES,
            "arm64_device": ARM64_DEVICE,
            "files": [Path(f).name for f in files],
            "arm64_device_memory": args.arm64_memory,
            "emulation_patch": EMULATION_NOTE,
            "round_timeout": args.round_timeout,
            "port": args.port,
            "project": project,
        },
        "images": images,
        "arm64_device": {
            "service": device,
            "uname_m": machine,
            "platform": platforms.get(device),
            "image": images_of.get(device),
            "clientapp_processes": apps.get(device, {}).get("processes", 0),
            "log_lines": len(logs.splitlines()),
        },
        "completed": completed,
        "all_replies_valid": all_replies and len(done) == rounds,
        "returncode": run.returncode,
        "rounds": table,
        "metrics_rounds": [
            {k: r.get(k) for k in ("round", "accuracy", "valid", "rejected", "train_time")}
            for r in metric_rounds
        ],
        "seconds_per_round": round(sum(gaps) / len(gaps), 1) if gaps else None,
        "round_seconds": [round(g, 1) for g in gaps],
        "run_seconds": round(run.seconds, 1),
        "wall_seconds": round(wall, 1),
        "containers": containers,
        "clientapp_peak_rss": {s: a["peak_rss"] for s, a in apps.items()},
        "clientapp_processes": {s: a["processes"] for s, a in apps.items()},
        "platforms": platforms,
        "images_of": images_of,
        "workdir": str(workdir),
    }
    if not completed:
        raise RuntimeError(
            f"the mixed federation did not complete (exit {run.returncode}); see {workdir}/run.log"
        )
    return result


def _no_plot(result: dict[str, Any], path: Path) -> None:
    path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("arm64_compose", __doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=18931, help="SuperLink port on 127.0.0.1")
    parser.add_argument("--image", help="amd64 image tag (default: scripts/offline-image.sh)")
    parser.add_argument("--arm64-image", help="arm64 image tag (default: offline-image.sh arm64)")
    parser.add_argument(
        "--arm64-full-build-seconds",
        type=float,
        default=None,
        help="a from-scratch arm64 build's time, measured before (offline-image-arm64.json), "
        "when this image's build reused cached layers",
    )
    parser.add_argument(
        "--arm64-memory",
        default="1g",
        help="memory cap of the emulated device (the others keep compose.yaml's)",
    )
    parser.add_argument("--round-timeout", type=float, default=3600.0)
    parser.add_argument("--run-timeout", type=float, default=5400.0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: compose down
    return run_benchmark("arm64_compose", measure, _no_plot, args)


if __name__ == "__main__":
    raise SystemExit(main())
