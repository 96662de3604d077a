"""The compose federation in real containers (issue 14; markers ``docker`` and ``slow``).

The image is built offline by ``scripts/offline-image.sh`` (a Debian base from debootstrap, a
host wheelhouse served on 127.0.0.1 for the build only; reused while the sources are unchanged);
``tests/conftest.py`` starts that build in the background when the session begins, so it overlaps
the rest of the suite. Two compose projects, each under its own project name and port, torn down
with their volumes even when a test fails; all traffic stays on the compose network and
127.0.0.1. The digits MLP runs 2-3 rounds per submission so that CI's time stays small:

* ``compose.yaml + compose.state.yaml`` (plain HTTP, state on volumes): a 2-round run on the
  memory-capped one-container devices (caps in force in Docker and in the kernel's cgroup; every
  container's cgroup peak written to ``build/compose-footprint-e2e.json``); then the SuperLink
  container SIGKILLed mid-run, restarted by its restart policy, and the resubmitted run resumes
  from the server's checkpoint with no round skipped and no full model resent; then
  ``docker-compose down && up`` (volumes kept) and a longer resubmitted run resumes again, each
  device continuing from its own replica;
* ``compose.yaml + compose.tls.yaml``: TLS and SuperNode authentication: a run completes, and a
  SuperNode whose key was never registered is refused.

Without a Docker engine these tests skip with one line (run ``scripts/docker-engine.sh``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.compose import (
    BASE,
    NUM_DEVICES,
    STATE,
    TLS,
    Federation,
    PeakSampler,
    Submission,
    container_memory,
    device_footprint,
    federation_overrides,
)
from tests.image_build import wait_for_image

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "build" / "compose-logs"  # every project's logs, kept for a failed test
FOOTPRINT = ROOT / "build" / "compose-footprint-e2e.json"
DEVICE_CLASS = 512 * 2**20  # one device container: SuperNode + ClientApp executor + ClientApp
NO_REPLICA = "has no usable replica"  # the server's line when a device lost its state
CHECKPOINTS = "/app/state/checkpoints"  # on the state overlay's volume

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def image() -> str:
    tag, problem = wait_for_image()
    if tag is None:
        pytest.skip(f"docker tests need a Docker engine and the image: {problem}")
    return tag


def _federation(files: list[str], image: str, workdir: Path, **env: str) -> Iterator[Federation]:
    fed = Federation(files, image, workdir, env=env)
    try:
        fed.up()
        yield fed
    finally:
        LOGS.mkdir(parents=True, exist_ok=True)
        fed.save_logs(LOGS / f"{fed.project}.log")
        fed.down(volumes=True)


def _assert_completed(run: Submission, rounds: range) -> None:
    assert run.returncode == 0, run.text[-3000:]
    assert "finished:completed" in run.text, run.text[-3000:]
    table = run.rounds()
    assert sorted(k for k in table if k > 0) == list(rounds), run.text[-3000:]
    assert not any(table[k][1] for k in rounds), f"a round was skipped: {table}"
    assert NO_REPLICA not in run.text


def _resumed_without_full_model(run: Submission, done: int, total: int) -> None:
    """The run continued after ``done`` checkpointed rounds and sent no device the full model."""
    assert run.resumed_after() == done, run.text[-3000:]
    _assert_completed(run, range(done + 1, total + 1))
    payloads = run.payloads()
    assert sorted(payloads) == list(range(done + 1, total + 1)), payloads
    assert not any("full" in kinds for kinds in payloads.values()), payloads


# --- plain HTTP with state on volumes -----------------------------------------------------------
@pytest.fixture(scope="module")
def plain(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    yield from _federation([BASE, STATE], image, tmp_path_factory.mktemp("compose-plain"))


def test_plain_federation_runs_on_memory_capped_one_container_devices(plain: Federation) -> None:
    services = plain.services()
    assert sorted(s for s in services if s.startswith("supernode-")) == [
        f"supernode-{k}" for k in range(1, NUM_DEVICES + 1)
    ]
    with PeakSampler(plain, services) as sampler:
        run = plain.submit(federation_overrides(2, **{"output_dir": "/app/state/runs/plain"}))
    _assert_completed(run, range(1, 3))
    assert run.rounds()[2][0] >= 0.5, run.rounds()  # digits MLP after 2 rounds (0.7-0.8 seen)
    metrics = json.loads(
        plain.exec("superexec-serverapp", "cat", "/app/state/runs/plain/metrics.json")
    )
    assert [r["round"] for r in metrics["rounds"] if r["round"] > 0] == [1, 2]

    containers = container_memory(plain, services)
    processes = sampler.processes()
    for k in range(1, NUM_DEVICES + 1):
        device = containers[f"supernode-{k}"]
        # the cap is in force: Docker set it and the kernel's cgroup holds it
        assert device["host_config_memory"] == device["limit"] == DEVICE_CLASS
        assert 0 < device["peak"] <= device["limit"]
        # one cgroup holds the whole device: the SuperNode started its ClientApps itself
        kinds = processes[f"supernode-{k}"]
        assert kinds["flwr-clientapp"]["processes"] >= 2, kinds  # one per round
        assert kinds["flower-supernode"]["processes"] == 1, kinds
    FOOTPRINT.parent.mkdir(parents=True, exist_ok=True)
    FOOTPRINT.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "image": plain.image,
                "rounds": {k: {"accuracy": a, "skipped": s} for k, (a, s) in run.rounds().items()},
                "run_seconds": round(run.seconds, 1),
                "containers": containers,
                "processes": processes,
                "devices": device_footprint(containers),
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )


def test_killed_superlink_and_compose_down_up_both_resume_from_checkpoint(
    plain: Federation,
) -> None:
    """A crash (the SuperLink container SIGKILLed mid-run, restarted by its restart policy), then
    ``docker-compose down && up`` with the volumes kept: each resubmitted run goes on from the
    server's last checkpointed round, and every device from its own replica (no full model)."""
    overrides = {"federation.checkpoint_dir": f"{CHECKPOINTS}/kill"}
    old_pid = plain.inspect("superlink")["State"]["Pid"]
    killed: list[str] = []

    def kill_after_round_one(line: str) -> None:
        if not killed and re.search(r"round 1/3: accuracy", line):
            plain.kill_main_process("superlink")  # SIGKILL: a crash, so the restart policy acts
            killed.append(line)

    first = plain.submit(federation_overrides(3, **overrides), on_line=kill_after_round_one)
    assert killed, first.text[-3000:]
    assert first.returncode != 0, first.text[-3000:]  # the run was cut off with the SuperLink
    plain.wait_running("superlink", after_pid=old_pid)
    plain.wait_superlink()

    second = plain.submit(federation_overrides(3, **overrides))
    done = second.resumed_after()
    assert done in (1, 2), second.text[-3000:]  # round 2 may have finished before the kill
    _resumed_without_full_model(second, done, 3)
    for k in range(1, NUM_DEVICES + 1):
        files = plain.exec(f"supernode-{k}", "ls", "/app/device-state").split()
        assert files == [f"client-{k - 1}.npz"], files

    plain.down(volumes=False)  # containers and network go; the named volumes stay
    plain.up()
    third = plain.submit(federation_overrides(4, **overrides))
    _resumed_without_full_model(third, 3, 4)


# --- TLS + SuperNode authentication -----------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from server.certs import generate_server_credentials, generate_supernode_key

    out = tmp_path_factory.mktemp("compose-certs")
    generate_server_credentials(out, ["superlink", "localhost", "127.0.0.1"])
    for k in range(1, NUM_DEVICES + 1):
        generate_supernode_key(out, f"supernode-{k}")
    generate_supernode_key(out, "stranger")  # never registered
    for path in [out, *out.iterdir()]:  # the containers run as uid 49999 (keys are 0600)
        if os.geteuid() == 0:
            os.chown(path, 49999, 49999)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)
    return out


@pytest.fixture(scope="module")
def tls(image: str, certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    workdir = tmp_path_factory.mktemp("compose-tls")
    yield from _federation([BASE, TLS], image, workdir, BITFED_CERTS=str(certs))


def test_tls_federation_completes_and_refuses_an_unregistered_supernode(
    tls: Federation, certs: Path
) -> None:
    run = tls.submit(federation_overrides(2), certs=certs)
    _assert_completed(run, range(1, 3))

    network = next(iter(tls.inspect("superlink")["NetworkSettings"]["Networks"]))
    name = f"{tls.project}-stranger"
    cmd = [
        "docker", "run", "--rm", "--name", name, "--network", network,
        "-v", f"{certs}/ca.crt:/keys/ca.crt:ro", "-v", f"{certs}/stranger:/keys/stranger:ro",
        "--entrypoint", "flower-supernode", tls.image,
        "--superlink", "superlink:8000", "--root-certificates", "/keys/ca.crt",
        "--auth-supernode-private-key", "/keys/stranger",
        "--node-config", 'partition-id=0 num-partitions=3 data-root="/app/data"',
        "--isolation", "subprocess", "--host", "0.0.0.0", "--port", "9094",
    ]  # fmt: skip
    try:
        stranger = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
    assert stranger.returncode != 0, stranger.stdout[-2000:]
    assert "Failed to activate SuperNode" in stranger.stdout + stranger.stderr
