"""bitfed-sim end to end on Flower's Ray engine (digits, 3 clients), then a resume."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from core.config import ExperimentConfig, FederationConfig, TrainConfig, register_configs
from core.hydra_entry import CONF_DIR
from launch.sim import run
from server.checkpoint import Checkpoint
from server.report import format_table, summary


def small(output_dir: Path, rounds: int) -> ExperimentConfig:
    return ExperimentConfig(
        train=TrainConfig(max_batches=2, batch_size=50, num_threads=1),
        federation=FederationConfig(
            num_clients=3, clients_per_round=3, num_rounds=rounds, min_clients=2
        ),
        output_dir=str(output_dir),
    )


@pytest.mark.slow
def test_sim_runs_writes_outputs_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    metrics = run(small(out, 2))
    printed = capsys.readouterr().out
    assert "up B/client" in printed and "final global test accuracy" in printed
    for name in ("metrics.json", "rounds.csv", "rounds.png", "checkpoint.npz"):
        assert (out / name).stat().st_size > 0
    assert (out / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    rounds = {r["round"]: r for r in json.loads((out / "metrics.json").read_text())["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    assert rounds[1]["valid"] == 3 and rounds[2]["valid"] == 3, rounds  # see the flwr log above
    assert rounds[2]["accuracy"] > rounds[0]["accuracy"]
    f32 = metrics["float32_bytes"]
    assert f32 / rounds[1]["uplink_bytes"] >= 25 and f32 / rounds[2]["uplink_bytes"] >= 25
    assert f32 / rounds[2]["downlink_bytes"] >= 25  # binarized downlink after round 1
    assert rounds[1]["downlink_bytes"] < f32 / 1.9  # first contact: float16 full model
    with open(out / "rounds.csv") as fh:
        assert [int(r["round"]) for r in csv.DictReader(fh)] == [0, 1, 2]
    assert (out / "client-state" / "client-0.npz").exists()

    # Resume: one more round continues from the checkpoint, keeping rounds 1-2 as they were.
    before = Checkpoint.load(out)
    metrics = run(small(out, 3))
    after = Checkpoint.load(out)
    assert before.round == 2 and after.round == 3 and after.version == 3
    assert after.lineage == before.lineage
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2, 3]
    assert metrics["rounds"][2] == rounds[2]
    w = next(iter(before.global_state))
    assert not np.array_equal(before.global_state[w], after.global_state[w])


def test_hydra_config_composes_to_the_schema():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        dcfg = compose(
            config_name="config",
            overrides=["strategy=majority", "federation.num_clients=100"],
        )
    cfg = OmegaConf.to_object(dcfg)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.strategy.name == "majority" and cfg.federation.num_clients == 100


def test_table_and_summary_from_metrics():
    metrics = {
        "config": {
            "dataset.name": "digits",
            "model.name": "mlp",
            "recipe.name": "lowcost",
            "strategy.name": "mean",
            "federation.num_clients": 10,
            "federation.clients_per_round": 10,
        },
        "float32_bytes": 880_000,
        "seconds": 12.0,
        "rounds": [
            {"round": 0, "accuracy": 0.1, "loss": 3.0},
            {
                "round": 1,
                "accuracy": 0.5,
                "loss": 1.0,
                "uplink_bytes": 34_000.0,
                "downlink_bytes": 440_000.0,
                "valid": 10,
                "rejected": 0,
                "peak_memory": 2**29,
            },
            {"round": 2, "accuracy": 0.5, "loss": 1.0, "skipped": 1, "valid": 1, "rejected": 2},
        ],
    }
    table = format_table(metrics["rounds"])
    assert "34,000" in table and "(skipped)" in table and "512" in table
    text = summary(metrics)
    assert "float32/25.9" in text and "skipped rounds: 1" in text


@pytest.mark.parametrize(
    ("command", "override", "names"),
    [
        ("bitfed-sim", "federation.num_clients=0", "federation.num_clients must be > 0"),
        ("bitfed-sim", "strategy=median", "strategy"),
        ("bitfed-sim", "federation.bogus=1", "bogus"),
        ("bitfed-train", "model.name=vgg", "unknown model 'vgg'"),
        ("bitfed-train", "train.batch_size=abc", "batch_size"),
    ],
)
def test_every_hydra_command_answers_bad_input_in_one_line(tmp_path, command, override, names):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name(command)
    done = subprocess.run(
        [str(script), override], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{command}: error: bad config or override") and names in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
