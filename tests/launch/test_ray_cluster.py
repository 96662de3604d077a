"""bitfed-sim on a running two-node Ray cluster started on this machine (issue 17).

A head and a worker node (``ray start --block``, one CPU each, their own ports, a private temp
folder so no other ``ray.init()`` on this machine finds the cluster) run 6 clients for 3 rounds
with ``federation.ray_address``. Every round must complete with all 6 replies, and the state a
client reads when a round starts must be the one it wrote in its previous round, whichever node
ran either round (the shared state folder carries it; :mod:`tests.launch.ray_cluster_app` logs
node and state digest around each handler call).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from core.config import (
    ExperimentConfig,
    FederationConfig,
    StrategyConfig,
    TrainConfig,
    to_run_config,
)

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
NODE_PORTS = (
    "--node-manager-port",
    "--object-manager-port",
    "--metrics-export-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def ray_start(args: list[str], log: Path) -> subprocess.Popen:
    ports = free_ports(len(NODE_PORTS))
    flags = [x for flag, port in zip(NODE_PORTS, ports) for x in (flag, str(port))]
    cmd = [str(RAY), "start", "--num-cpus", "1", "--block", "--disable-usage-stats", *args, *flags]
    env = dict(os.environ, RAY_ADDRESS="")
    with open(log, "wb") as fh:
        return subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def alive_nodes(address: str) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    lines = out.stdout.strip().splitlines()
    return int(lines[-1]) if out.returncode == 0 and lines and lines[-1].isdigit() else 0


def stop(proc: subprocess.Popen, temp: Path) -> None:
    """End a ``ray start --block`` and every process of its session (ours only, by pid)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass
    for entry in os.listdir("/proc"):  # leftovers of this cluster: their command names our temp
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if entry.isdigit() and str(temp) in cmdline and int(entry) != os.getpid():
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def two_node_cluster(tmp_path):
    temp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Ray's socket paths
    gcs, client_port = free_ports(2)
    address = f"127.0.0.1:{gcs}"
    head_args = ["--head", "--port", str(gcs), "--node-ip-address", "127.0.0.1"]
    head_args += ["--temp-dir", str(temp), "--include-dashboard=false"]
    head_args += ["--ray-client-server-port", str(client_port)]
    head = ray_start(head_args, tmp_path / "head.log")
    worker = None
    try:
        deadline = time.monotonic() + 180
        while alive_nodes(address) < 1:
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the head node did not start in 180 s"
            time.sleep(2)
        worker_args = ["--address", address, "--node-ip-address", "127.0.0.1"]
        worker = ray_start(worker_args, tmp_path / "worker.log")
        while alive_nodes(address) < 2:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the worker node did not join in 180 s"
            time.sleep(2)
        yield address
    finally:
        for proc in (worker, head):
            if proc is not None:
                stop(proc, temp)
        shutil.rmtree(temp, ignore_errors=True)


DRIVER = """
import json, sys
import launch.sim as sim
from core.config import from_run_config
from tests.launch import ray_cluster_app

component = sim.load_component
sim.load_component = lambda kind: ray_cluster_app.app if kind == "clientapp" else component(kind)
sim.run(from_run_config(json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_sim_on_a_two_node_cluster_keeps_every_client_state(tmp_path, two_node_cluster):
    out = tmp_path / "run"
    cfg = ExperimentConfig(
        train=TrainConfig(max_batches=1, batch_size=50, num_threads=1),
        strategy=StrategyConfig(name="mean"),
        federation=FederationConfig(
            num_clients=6,
            clients_per_round=6,
            num_rounds=3,
            min_clients=2,
            compact_state=True,
            ray_address=two_node_cluster,
        ),
        output_dir=str(out),
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_DEDUP_LOGS="0")
    with open(tmp_path / "sim.log", "wb") as log:
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, json.dumps(to_run_config(cfg))],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    text = (tmp_path / "sim.log").read_text()
    assert done.returncode == 0, text[-3000:]
    rounds = json.loads((out / "metrics.json").read_text())["rounds"][1:]
    assert [(r["valid"], r["skipped"]) for r in rounds] == [(6, 0)] * 3, text[-3000:]
    lines = [json.loads(x) for x in (out / "where.jsonl").read_text().splitlines()]
    assert len(lines) == 18 and len({x["node"] for x in lines}) == 2  # both nodes ran clients
    moved = 0
    for client in range(6):
        runs = sorted((x for x in lines if x["client"] == client), key=lambda x: x["round"])
        assert [x["round"] for x in runs] == [1, 2, 3] and runs[0]["before"] == ""
        for prev, cur in zip(runs, runs[1:]):
            assert cur["before"] == prev["after"] != ""  # the state it left is the state it finds
            moved += prev["node"] != cur["node"]
    assert moved >= 1, "no client changed node in 3 rounds: nothing was shown"
    assert (out / "client-state" / "replicas").is_dir()  # the compact replicas' shared store


def test_backend_config_is_local_ray_or_the_cluster_address():
    from launch.sim import backend_config

    local = backend_config(ExperimentConfig())
    assert local["init_args"] == {"num_cpus": os.cpu_count(), "include_dashboard": False}
    assert local["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    fed = FederationConfig(ray_address="10.0.0.1:6379", client_cpus=2.0)
    cluster = backend_config(ExperimentConfig(federation=fed))
    assert cluster["init_args"] == {"address": "10.0.0.1:6379"}  # Ray's resources are its own
    assert cluster["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.0}
    with pytest.raises(ValueError, match=r"federation.client_cpus must be > 0, got 0"):
        FederationConfig(client_cpus=0)
