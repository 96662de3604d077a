"""Crash and resume: kill -9 a running ``bitfed-sim``, start it again, lose no completed round.

Also (in process) that a resumed server keeps the clients' replicas valid: it goes on with the
1-bit delta instead of resending the full model, and a client that lost its replica gets the
full model one round later.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks.hostile import honest_handler
from benchmarks.local_grid import LocalGrid
from client.state import ClientState, state_path
from core import codec, federated
from core.codec import model_spec
from core.config import (
    ExperimentConfig,
    FederationConfig,
    TrainConfig,
    to_run_config,
)
from glue.records import to_record, wire_bytes
from server.checkpoint import Checkpoint
from server.server_app import run_server


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


def config(tmp_path, rounds):
    return ExperimentConfig(
        train=TrainConfig(max_batches=1, batch_size=50, num_threads=1),
        federation=FederationConfig(
            num_clients=3, clients_per_round=3, num_rounds=rounds, min_clients=2
        ),
        output_dir=str(tmp_path / "run"),
    )


def grid(cfg, first_node):
    """Three honest nodes; a restarted federation gets fresh node ids (as Flower assigns)."""
    run_config = to_run_config(cfg)
    return LocalGrid(
        {first_node + p: honest_handler(run_config, first_node + p, p, 3) for p in range(3)}
    )


def assert_replica_is_global(state_dir, client, ckpt):
    replica = ClientState.load(state_path(state_dir, client), ckpt.lineage)
    assert replica.version == ckpt.version
    for name, value in ckpt.global_state.items():  # up to the float16 of the first full model
        np.testing.assert_allclose(replica.replica[name], value, atol=2e-3, rtol=2e-3)


def test_resumed_server_sends_deltas_and_replicas_follow(tmp_path):
    out, state_dir = tmp_path / "run", tmp_path / "run" / "client-state"
    first = run_server(grid(config(tmp_path, 2), 10), config(tmp_path, 2))
    assert first["rounds"][1]["downlink_bytes"] == 0  # version 0 is built from the seed
    delta_bytes = first["rounds"][2]["downlink_bytes"]
    after2 = Checkpoint.load(out)
    spec = model_spec(
        federated.new_model(config(tmp_path, 2), federated.load_split(config(tmp_path, 2), "test"))
    )
    full_bytes = wire_bytes(to_record(codec.encode_full(after2.global_state, spec)))
    assert delta_bytes < full_bytes / 10
    assert after2.last_delta is not None and after2.version == 2
    state_path(state_dir, "2").unlink()  # client 2 lost its disk

    # restart with fresh node ids (as a restarted simulation gets): nobody is known by id
    resumed = run_server(grid(config(tmp_path, 3), 20), config(tmp_path, 3))
    rows = {r["round"]: r for r in resumed["rounds"]}
    assert sorted(rows) == [0, 1, 2, 3] and rows[2] == first["rounds"][2]
    assert rows[3]["downlink_bytes"] == delta_bytes  # every node got the delta, none the model
    assert rows[3]["valid"] == 2 and rows[3]["rejected"] == 0  # client 2 asked for the model
    assert_replica_is_global(state_dir, "0", after2)  # delta applied: replica = version 2
    after3 = Checkpoint.load(out)

    # restart again, node ids kept (a SuperLink that stayed up): known nodes by their version
    resumed = run_server(grid(config(tmp_path, 4), 20), config(tmp_path, 4))
    rows = {r["round"]: r for r in resumed["rounds"]}
    assert sorted(rows) == [0, 1, 2, 3, 4] and rows[4]["valid"] == 3
    assert delta_bytes < rows[4]["downlink_bytes"] < full_bytes  # 2 deltas + 1 full model
    for client in "012":
        assert_replica_is_global(state_dir, client, after3)


def _sim(out, rounds, log):
    args = [
        sys.executable,
        "-c",
        "from launch.sim import main; main()",
        f"output_dir={out}",
        "federation.num_clients=2",
        "federation.clients_per_round=2",
        "federation.min_clients=2",
        f"federation.num_rounds={rounds}",
        "train.max_batches=1",
        "train.batch_size=50",
        "train.num_threads=1",
    ]
    env = dict(os.environ, RAY_DEDUP_LOGS="0", PYTHONPATH=str(_repo()))
    return subprocess.Popen(
        args,
        cwd=out.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: kill -9 takes Ray's workers too
    )


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def _done_rounds(out):
    try:
        ckpt = Checkpoint.load(out)
    except ValueError:
        return 0
    return ckpt.round if ckpt is not None else 0


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_loses_no_round(tmp_path):
    out, rounds = tmp_path / "run", 5
    with open(tmp_path / "first.log", "wb") as log:
        proc = _sim(out, rounds, log)
        try:
            deadline = time.monotonic() + 300
            while _done_rounds(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            os.killpg(proc.pid, signal.SIGKILL)  # the whole run dies at once, mid-round
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    killed = Checkpoint.load(out)
    assert 2 <= killed.round < rounds, "the first run was not killed mid-way"
    assert "finished" not in json.loads((out / "metrics.json").read_text())
    assert not list(out.glob(".checkpoint.npz.*"))  # no torn temp file is ever read back

    with open(tmp_path / "second.log", "wb") as log:
        proc = _sim(out, rounds, log)
        try:
            code = proc.wait(420)  # generous: CI machines are shared
        finally:
            if proc.poll() is None:  # hung: take its Ray workers down with it
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        assert code == 0, (tmp_path / "second.log").read_text()[-3000:]
    text = (tmp_path / "second.log").read_text()
    assert f"{killed.round} rounds done, model version {killed.version}" in text
    final = Checkpoint.load(out)
    assert (final.round, final.version, final.lineage) == (rounds, rounds, killed.lineage)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"]
    assert [r["round"] for r in metrics["rounds"]] == list(range(rounds + 1))
    assert metrics["rounds"][: killed.round + 1] == killed.history  # nothing completed is lost
    resumed = metrics["rounds"][killed.round + 1]
    assert resumed["valid"] == 2  # both clients picked up where they were
    assert resumed["downlink_bytes"] < metrics["float32_bytes"] / 20  # a 1-bit delta, not the model
