"""Bytes on the wire of a real deployment: what each device sends and receives per round.

``python -m benchmarks.wire [--quick] [--rounds 3] [--only 1-bit,float32]``

Each variant is a real deployment on loopback: ``bitfed-server --insecure`` (a
``flower-superlink`` and the run submitted with ``flwr run``) and three ``bitfed-client``
SuperNodes, MLP on digits, all three devices sampled every round. Every SuperNode dials its own
:class:`benchmarks.wire_count.CountingProxy` in front of the SuperLink port, so the result holds,
per device and direction, every byte of its TCP connections to the SuperLink, split by Fleet API
call and by phase (:func:`benchmarks.wire_count.split_device`: one-off calls, waiting for the
first message, the training rounds, the tail), beside the arrays payload the strategy counted
(``uplink_bytes``/``downlink_bytes`` of ``metrics.json``). ``wire ratio`` (float32 wire bytes /
1-bit wire bytes) then sits beside the payload ratio, within one benchmark run.

Variants (:data:`VARIANTS`): the default 1-bit rule (``recipe=lowcost``, strategy ``aligned``),
float32 FedAvg (``recipe=standard strategy=fedavg``), and changes that aim at the protocol
overhead; a variant counts only if every round completed. Plain HTTP is measured (``--insecure``):
TLS adds its handshake (a few KB per connection) and about 30 bytes per record on top.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, benchmark_parser, flower_env, run_benchmark
from benchmarks.wire_count import CountingProxy, split_device

__all__ = ["NAME", "VARIANTS", "Variant", "build_parser", "main", "measure", "plot", "summarize"]

NAME = "wire"
NUM_DEVICES = 3
BASELINE, FLOAT32 = "1-bit", "float32"


@dataclass(frozen=True)
class Variant:
    """One deployment: Hydra overrides for the run, extra ``bitfed-client`` arguments."""

    label: str
    overrides: tuple[str, ...]
    note: str
    client_args: tuple[str, ...] = field(default=())


VARIANTS = (
    Variant(BASELINE, ("recipe=lowcost",), "default 1-bit rule (aligned), lowcost recipe"),
    Variant(FLOAT32, ("recipe=standard", "strategy=fedavg"), "float32 FedAvg, standard recipe"),
)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(base: int, count: int) -> list[int]:
    """``count`` free ports from ``base`` up (one-line error when the range is taken)."""
    found = [p for p in range(base, base + 100) if _free(p)][:count]
    if len(found) < count:
        raise RuntimeError(
            f"fewer than {count} free ports in {base}..{base + 99}; pass --base-port"
        )
    return found


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``argv`` in its own process group (its children are stopped with it)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
            start_new_session=True,
        )  # fmt: skip


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``proc`` (one we started), SIGKILL it after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.3)


def _payload(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Arrays bytes the strategy counted, all devices: uplink per reply, downlink per client."""
    up = sum((r.get("uplink_bytes") or 0) * r.get("valid", 0) for r in rows)
    down = sum((r.get("downlink_bytes") or 0) * r.get("sampled", 0) for r in rows)
    return {"up": up, "down": down, "total": up + down}


def deploy(variant: Variant, rounds: int, ports: list[int], work: Path) -> dict[str, Any]:
    """Run one deployment of ``variant`` through counting proxies; return its figures."""
    link_port, proxy_ports, node_ports = ports[0], ports[1:4], ports[4:7]
    env = {**os.environ, **flower_env(work / "cli-home")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    out = work / "out"
    overrides = [
        f"output_dir={out}",
        *(f"federation.{k}={NUM_DEVICES}" for k in ("num_clients", "clients_per_round",
                                                    "min_clients")),
        f"federation.num_rounds={rounds}",
        "train.num_threads=1",
        *variant.overrides,
    ]  # fmt: skip
    server_argv = [sys.executable, "-m", "server.deploy", "--insecure", "--host", "127.0.0.1"]
    server_argv += ["--port", str(link_port), "--state-dir", str(work / "state"), *overrides]
    proxies = [CountingProxy(p, ("127.0.0.1", link_port)) for p in proxy_ports]
    nodes: list[subprocess.Popen] = []
    started = time.monotonic()
    server = _start(server_argv, work / "server.log", env)
    try:
        log = work / "server.log"
        _wait_for(lambda: "SuperLink pid" in log.read_text(errors="replace"), 60, "SuperLink start")
        (work / "data").mkdir(exist_ok=True)
        for k, (proxy, port) in enumerate(zip(proxies, node_ports)):
            node_env = {**env, "FLWR_HOME": str(work / f"node{k}-home")}
            argv = [sys.executable, "-m", "client.deploy", "--insecure"]
            argv += ["--superlink", f"127.0.0.1:{proxy.port}", "--data-root", str(work / "data")]
            argv += ["--partition-id", str(k), "--num-partitions", str(NUM_DEVICES)]
            argv += ["--state-dir", str(work / f"node{k}"), "--port", str(port)]
            nodes.append(_start([*argv, *variant.client_args], work / f"node{k}.log", node_env))
        code = server.wait(timeout=120 + 120 * rounds)
    finally:
        _stop(server)
        for node in nodes:
            _stop(node)
        for proxy in proxies:
            proxy.close()
    seconds = time.monotonic() - started
    metrics_file = out / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    done = [r for r in metrics.get("rounds", []) if r.get("round", 0) > 0]
    completed = sum(1 for r in done if not r.get("skipped") and r.get("valid") == NUM_DEVICES)
    return {
        "label": variant.label,
        "note": variant.note,
        "overrides": list(variant.overrides),
        "client_args": list(variant.client_args),
        "exit": code,
        "rounds": rounds,
        "completed_rounds": completed,
        "reliable": code == 0 and completed == rounds,
        "seconds": round(seconds, 1),
        "accuracy": done[-1]["accuracy"] if done else None,
        "payload": _payload(done),
        "payload_per_round": [
            {"round": r["round"], "up": r.get("uplink_bytes"), "down": r.get("downlink_bytes")}
            for r in done
        ],
        "devices": [split_device(p.calls(), rounds) for p in proxies],
    }


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """Totals over the devices of one deployment: wire per phase and direction, payload."""
    devices, rounds = run["devices"], run["rounds"]
    wire = {
        phase: {d: sum(dev[phase][d] for dev in devices) for d in ("up", "down")}
        for phase in ("one_off", "waiting", "rounds", "tail", "total")
    }
    for row in wire.values():
        row["total"] = row["up"] + row["down"]
    per_device_round = wire["rounds"]["total"] / (rounds * len(devices))
    payload_device_round = run["payload"]["total"] / (rounds * len(devices))
    by_call: dict[str, dict[str, int]] = {}
    for dev in devices:
        for call, row in dev["by_call"].items():
            acc = by_call.setdefault(call, dict.fromkeys(row, 0))
            for key, value in row.items():
                acc[key] += value
    return {
        "wire": wire,
        "wire_per_device_round": per_device_round,
        "payload_per_device_round": payload_device_round,
        "overhead_per_device_round": per_device_round - payload_device_round,
        "by_call": by_call,
    }


def _ratios(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """float32 / variant for wire totals, round traffic and payload (within this run)."""
    if FLOAT32 not in runs:
        return {}
    ref = runs[FLOAT32]
    out = {}
    for label, run in runs.items():
        if label == FLOAT32:
            continue
        s, r = run["summary"], ref["summary"]
        out[label] = {
            "wire_total": r["wire"]["total"]["total"] / s["wire"]["total"]["total"],
            "wire_rounds": r["wire"]["rounds"]["total"] / s["wire"]["rounds"]["total"],
            "payload": ref["payload"]["total"] / run["payload"]["total"],
        }
    return out


def fab_bytes(tmp: Path) -> dict[str, int]:
    """Size of the app bundle ``flwr run`` ships: as configured, and without ``fab-exclude``.

    The second is built from a copy of the app whose ``pyproject.toml`` lacks ``fab-exclude``
    (what every device downloaded before the command-line modules were left out).
    """
    from flwr.cli.build import build_fab_from_disk

    copy = tmp / "app-without-exclude"
    for part in ("core", "glue", "client", "server", "conf"):
        shutil.copytree(REPO_ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    text = (REPO_ROOT / "pyproject.toml").read_text()
    (copy / "pyproject.toml").write_text(re.sub(r"\nfab-exclude = \[[^\]]*\]", "", text))
    return {
        "configured": len(build_fab_from_disk(REPO_ROOT)),
        "without_exclude": len(build_fab_from_disk(copy)),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every selected variant, one after the other; return the result body."""
    rounds = 1 if args.quick else args.rounds
    wanted = args.only or ([BASELINE, FLOAT32] if args.quick else [v.label for v in VARIANTS])
    known = {v.label: v for v in VARIANTS}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(known)}")
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bitfed-wire-") as tmp:
        fab = fab_bytes(Path(tmp))
        for i, label in enumerate(wanted):
            work = Path(tmp) / f"v{i}"
            work.mkdir()
            ports = _ports(args.base_port + 10 * i, 7)
            run = deploy(known[label], rounds, ports, work)
            run["summary"] = summarize(run)
            runs[label] = run
            if not run["reliable"]:
                tail = (work / "server.log").read_text(errors="replace")[-1500:]
                run["server_log_tail"] = tail
            print(
                f"wire: {label}: exit {run['exit']}, {run['completed_rounds']}/{rounds} rounds, "
                f"{run['summary']['wire']['total']['total']:,} B on the wire, "
                f"{run['payload']['total']:,.0f} B payload",
                file=sys.stderr,
                flush=True,
            )
    return {
        "settings": {
            "devices": NUM_DEVICES,
            "rounds": rounds,
            "model": "mlp",
            "dataset": "digits",
            "transport": "Flower 1.42 Fleet API, protobuf over HTTP/1.1, --insecure, loopback",
            "counted": "TCP payload of every device connection to the SuperLink port",
        },
        "fab_bytes": fab,
        "runs": runs,
        "ratios": _ratios(runs),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Stacked bars: each variant's wire bytes per device by phase, payload split out."""
    import matplotlib.pyplot as plt

    from benchmarks.common import save_figure

    runs = result["runs"]
    labels = list(runs)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bottoms = [0.0] * len(labels)
    n = result["settings"]["devices"]
    parts = [
        ("one-off (registration, app bundle)", lambda r: r["summary"]["wire"]["one_off"]["total"]),
        ("waiting for the first message", lambda r: r["summary"]["wire"]["waiting"]["total"]),
        ("arrays payload", lambda r: r["payload"]["total"]),
        ("protocol overhead in rounds",
         lambda r: r["summary"]["wire"]["rounds"]["total"] - r["payload"]["total"]),
        ("tail", lambda r: r["summary"]["wire"]["tail"]["total"]),
    ]  # fmt: skip
    for name, get in parts:
        values = [get(runs[label]) / n / 1e3 for label in labels]
        ax.barh(labels, values, left=bottoms, label=name)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.set_xlabel(f"kB per device, {result['settings']['rounds']} rounds, up + down")
    ax.legend(fontsize=7, loc="lower right")
    ax.invert_yaxis()
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, path, result["machine"])


def build_parser() -> argparse.ArgumentParser:
    """``--quick`` (1 round, 1-bit and float32 only), ``--rounds``, ``--only``, ``--base-port``."""
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    parser.add_argument(
        "--only",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help=f"comma-separated variants (default all: {', '.join(v.label for v in VARIANTS)})",
    )
    parser.add_argument(
        "--base-port", type=int, default=39100, help="first port to try (default 39100)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status as :func:`benchmarks.common.run_benchmark`."""
    return run_benchmark(NAME, measure, plot, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
