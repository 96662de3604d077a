"""Faults in an in-process federation: the real ServerApp and ClientApp, misbehaving nodes.

Every run goes through :func:`server.server_app.run_server` (strategy, checkpoints, held-out
evaluation) over :class:`benchmarks.local_grid.LocalGrid`, whose nodes call the real ClientApp
handler; chosen nodes crash, hang past the round timeout, send malformed payloads, lie about
their example count or send sign-flipped updates.
"""

import threading
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from benchmarks.hostile import honest_handler
from benchmarks.local_grid import LocalGrid
from client.hostile import attack_sign_update
from core import codec
from core.config import (
    ExperimentConfig,
    FederationConfig,
    StrategyConfig,
    TrainConfig,
    to_run_config,
)
from glue.records import from_record, to_record
from server.checkpoint import Checkpoint
from server.server_app import run_server

SPEC_BOUND = 1 << 24  # generous byte bound for decoding a reply inside a test handler


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


@pytest.fixture
def release():
    """An event hanging handlers wait on; set at teardown so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def config(tmp_path, nodes, *, rounds=1, min_clients=2, per_round=None, **fed):
    return ExperimentConfig(
        train=TrainConfig(max_batches=1, batch_size=50, num_threads=1),
        strategy=StrategyConfig(name="mean", max_examples=fed.pop("max_examples", 100_000)),
        federation=FederationConfig(
            num_clients=nodes,
            clients_per_round=per_round or nodes,
            num_rounds=rounds,
            min_clients=min_clients,
            resume=False,
            **fed,
        ),
        output_dir=str(tmp_path / "run"),
    )


def honest(cfg, node):
    """The real ClientApp handler of partition ``node - 1``."""
    n = cfg.federation.num_clients
    return honest_handler(to_run_config(cfg), node, node - 1, n)


def tampered(cfg, node, change):
    """Train honestly, then ``change(arrays, metrics)`` the reply before it leaves."""
    inner = honest(cfg, node)

    def handle(msg):
        reply = inner(msg)
        arrays = dict(from_record(reply.content[codec.ARRAYS], SPEC_BOUND))
        metrics = dict(reply.content[codec.METRICS])
        record = change(arrays, metrics)
        content = RecordDict({codec.ARRAYS: record, codec.METRICS: MetricRecord(metrics)})
        return Message(content, reply_to=msg)

    return handle


def crash(msg):
    raise RuntimeError("device ran out of battery")


def hang_until(event):
    def handle(msg):
        event.wait(60)
        raise RuntimeError("too late")

    return handle


def nan_scale(arrays, metrics):
    arrays[codec.SCALES] = np.full_like(arrays[codec.SCALES], np.nan)
    return to_record(arrays)


def wrong_version(arrays, metrics):
    metrics[codec.MODEL_VERSION] = 41
    return to_record(arrays)


def absurd_size(arrays, metrics):
    # claims 2**40 float32 elements in a .npy header; carries 16 bytes
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (2**40,)
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    data = buf.getvalue() + bytes(16)
    big = Array(dtype="float32", shape=(2**40,), stype="numpy.ndarray", data=data)
    return ArrayRecord({codec.SIGNS: big, codec.SCALES: to_record(arrays)[codec.SCALES]})


def wrong_dtype(arrays, metrics):
    arrays[codec.REAL] = arrays[codec.REAL].astype(np.float32)
    return to_record(arrays)


def flipped(arrays, spec):
    update = attack_sign_update(
        codec.decode_update(arrays, spec), spec, "flip", server_round=1, partition=9, scale_clip=2
    )
    return codec.encode_update(update, spec)


def rounds_of(metrics):
    return {r["round"]: r for r in metrics["rounds"]}


def run_untrained(grid, cfg):
    """A run in which no round produced an update fails (RunFailed), yet keeps metrics.json."""
    import json

    from core.runs import RunFailed

    with pytest.raises(RunFailed, match="no round produced an update"):
        run_server(grid, cfg)
    return json.loads((Path(cfg.output_dir) / "metrics.json").read_text())


def test_faulty_nodes_are_dropped_and_the_round_completes(tmp_path, flwr_log, release):
    nodes = {1: "honest", 2: "honest", 3: "crash", 4: "hang", 5: "nan", 6: "version"}
    nodes |= {7: "huge", 8: "dtype", 9: "keys", 10: "flip"}
    cfg = config(tmp_path, len(nodes), min_clients=3, round_timeout=6.0)
    from core import federated
    from core.codec import model_spec

    spec = model_spec(federated.new_model(cfg, federated.load_split(cfg, "test")))
    make = {
        "honest": lambda n: honest(cfg, n),
        "crash": lambda n: crash,
        "hang": lambda n: hang_until(release),
        "nan": lambda n: tampered(cfg, n, nan_scale),
        "version": lambda n: tampered(cfg, n, wrong_version),
        "huge": lambda n: tampered(cfg, n, absurd_size),
        "dtype": lambda n: tampered(cfg, n, wrong_dtype),
        "keys": lambda n: tampered(
            cfg, n, lambda a, m: to_record(a | {"x": np.zeros(1, np.uint8)})
        ),
        "flip": lambda n: tampered(cfg, n, lambda a, m: to_record(flipped(a, spec))),
    }
    grid = LocalGrid({n: make[kind](n) for n, kind in nodes.items()})
    metrics = run_server(grid, cfg)

    row = rounds_of(metrics)[1]
    # honest x2 + the sign flipper (a well-formed update: only robust rules can blunt it)
    assert (row["sampled"], row["valid"], row["rejected"], row["failed"]) == (10, 3, 5, 1)
    assert row["skipped"] == 0 and row["version"] == 1 and metrics["finished"]
    rejected = [m for m in flwr_log if "rejected reply from node" in m]
    assert len(rejected) == 5  # one line per bad reply, naming the node and the reason
    assert any("node 5" in m and "NaN" in m for m in rejected)
    assert any("node 6" in m and "model version 41" in m for m in rejected)
    assert any("node 7" in m and "more than this model allows" in m for m in rejected)
    assert any("node 8" in m and "dtype float32, expected float16" in m for m in rejected)
    assert any("node 9" in m and "unexpected ['x']" in m for m in rejected)
    assert any("node 3 failed" in m and "out of battery" in m for m in flwr_log)
    assert not any("node 4" in m for m in flwr_log)  # the straggler is simply not waited for
    assert Checkpoint.load(tmp_path / "run").round == 1


def test_too_few_replies_skip_the_round_and_keep_the_model(tmp_path, flwr_log):
    cfg = config(tmp_path, 3, rounds=2, min_clients=2)
    grid = LocalGrid({1: honest(cfg, 1), 2: crash, 3: crash})
    metrics = run_untrained(grid, cfg)
    rows = rounds_of(metrics)
    assert rows[1]["skipped"] == 1 and rows[2]["skipped"] == 1 and rows[2]["version"] == 0
    assert rows[2]["accuracy"] == rows[0]["accuracy"]  # the global model never moved
    assert (
        sum(
            "skipped: 1 valid replies (3 sampled: 2 failed, 0 rejected, 0 silent, 0 empty, "
            "0 refused), fewer than federation.min_clients=2" in m
            for m in flwr_log
        )
        == 2
    )
    ckpt = Checkpoint.load(tmp_path / "run")
    assert (ckpt.round, ckpt.version) == (2, 0)


def test_node_wait_deadline_gives_up_with_seen_and_needed(tmp_path, flwr_log):
    import time

    cfg = config(tmp_path, 4, min_clients=2, node_wait_timeout=1.0)
    grid = LocalGrid({1: honest(cfg, 1)})  # 1 of the 4 nodes ever connects
    t0 = time.monotonic()
    metrics = run_untrained(grid, cfg)
    assert time.monotonic() - t0 < 30
    assert any("gave up waiting for nodes after 1 s: saw 1, needed 4" in m for m in flwr_log)
    assert rounds_of(metrics)[1]["skipped"] == 1 and rounds_of(metrics)[1]["sampled"] == 0


def test_deadline_goes_ahead_with_enough_nodes(tmp_path, flwr_log):
    cfg = config(tmp_path, 3, min_clients=2, node_wait_timeout=0.3)
    grid = LocalGrid({1: honest(cfg, 1), 2: honest(cfg, 2)})  # 2 of 3: enough for min_clients
    metrics = run_server(grid, cfg)
    assert rounds_of(metrics)[1]["valid"] == 2 and rounds_of(metrics)[1]["skipped"] == 0
    assert any("only 2 of 3 nodes" in m and "going ahead" in m for m in flwr_log)


def test_claimed_examples_are_capped(tmp_path):
    cap = 1000

    def liar(arrays, metrics):
        metrics[codec.NUM_EXAMPLES] = 10**12
        return to_record(arrays)

    cfg = config(tmp_path, 3, max_examples=cap)
    grid = LocalGrid({1: honest(cfg, 1), 2: honest(cfg, 2), 3: tampered(cfg, 3, liar)})
    row = rounds_of(run_server(grid, cfg))[1]
    # one local batch of 50 each; the liar's 10**12 is cut to max_examples (1000), then to
    # strategy.example_cap (2) x the round's median claim (50)
    assert row["valid"] == 3 and row["num_examples"] == 50 + 50 + 2 * 50
    assert row["clipped"] == 1
