"""A real short federation (in process, digits, MLP, 2 rounds) reports modelled device energy.

The per-round computation itself is pinned by hand in tests/core/test_energy.py
(``TestFederationRoundFields``); here: the recorder prices the run's own model once, takes each
round's steps and bytes from the replies, and writes the fields, the sums and the table column.
"""

import json

import pytest

from benchmarks.hostile import honest_handler
from benchmarks.local_grid import LocalGrid
from core.config import ExperimentConfig, FederationConfig, TrainConfig, to_run_config
from core.energy import count_step, round_energy, step_energy
from core.experiment import recipe_of
from server.recorder import METRICS_FILE
from server.report import format_table, summary
from server.server_app import run_server


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


def test_a_short_run_reports_device_energy_per_round(tmp_path):
    cfg = ExperimentConfig(
        train=TrainConfig(epochs=2, max_batches=1, batch_size=50, num_threads=1),
        federation=FederationConfig(
            num_clients=3, clients_per_round=3, num_rounds=2, min_clients=2
        ),
        output_dir=str(tmp_path / "run"),
    )
    run_config = to_run_config(cfg)
    grid = LocalGrid({10 + p: honest_handler(run_config, 10 + p, p, 3) for p in range(3)})
    run_server(grid, cfg)
    metrics = json.loads((tmp_path / "run" / METRICS_FILE).read_text())

    step = step_energy(count_step("mlp", recipe_of(cfg), 50, (1, 8, 8))).total_j
    assert metrics["energy"]["step_j"] == pytest.approx(step)
    assert metrics["energy"]["batch_size"] == 50 and "not measured" in metrics["energy"]["note"]
    rounds = {r["round"]: r for r in metrics["rounds"]}
    assert "energy_wifi_j" not in rounds[0]  # the initial evaluation: nobody trained
    cumulative = {"wifi": 0.0, "lte": 0.0}
    for n in (1, 2):
        row = rounds[n]
        assert row["valid"] == 3
        assert row["train_steps"] == row["energy_steps"] == 2.0  # 2 epochs x max_batches 1
        assert row["energy_compute_j"] == pytest.approx(2 * step)
        for radio in ("wifi", "lte"):
            radio_j = round_energy(0.0, 0, row["uplink_bytes"], row["downlink_bytes"], radio=radio)[
                "radio_j"
            ]
            assert row[f"energy_radio_{radio}_j"] == pytest.approx(radio_j)
            assert row[f"energy_{radio}_j"] == pytest.approx(2 * step + radio_j)
            cumulative[radio] += row[f"energy_{radio}_j"]
            assert row[f"energy_cumulative_{radio}_j"] == pytest.approx(cumulative[radio])
    assert rounds[2]["energy_lte_j"] > rounds[2]["energy_wifi_j"]  # LTE's 11.6 s tail
    assert "J/dev wifi" in format_table(metrics["rounds"])
    assert f"{cumulative['wifi']:.3g} J over Wi-Fi" in summary(metrics)


def test_a_claim_of_many_examples_does_not_inflate_the_round_steps():
    """train_steps (the energy figure's local steps) caps claims like the aggregation weights."""
    from core.config import ExperimentConfig, TrainConfig
    from server.strategies.base import Reply, _mean_steps

    cfg = ExperimentConfig(train=TrainConfig(batch_size=100, epochs=1, max_batches=0))
    honest = [Reply(None, None, 500) for _ in range(3)]
    liar = Reply(None, None, 100_000)
    assert _mean_steps(honest, cfg) == 5.0
    # capped at example_cap (2) x the median claim 500 = 1000 examples = 10 steps
    assert _mean_steps([*honest, liar], cfg) == (3 * 5 + 10) / 4
