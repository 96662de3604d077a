"""bitfed-train: Hydra entry point over conf/, plain run(cfg), metrics.json, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from core.atomic import atomic_write_json
from core.config import ExperimentConfig, register_configs
from launch.train import CONF_DIR, main, run

REPO = Path(__file__).resolve().parents[2]


def compose_cfg(*overrides: str) -> ExperimentConfig:
    """Compose the real conf/ with CPU-sized overrides, validated by the dataclasses."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_object(cfg)


def bitfed_train(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("bitfed-train")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "launch.train"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_run_on_digits_learns_and_writes_metrics(tmp_path):
    cfg = compose_cfg("recipe=standard", "train.epochs=3", f"output_dir={tmp_path}")
    assert cfg.dataset.name == "digits" and cfg.model.name == "mlp"
    metrics = run(cfg)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert metrics["in_shape"] == [1, 8, 8]  # taken from the dataset, not the model's default
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["final_test_accuracy"] == metrics["history"][-1]["test_accuracy"]
    assert metrics["final_test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    assert metrics["num_train"] + metrics["num_test"] == 1797
    assert metrics["peak_rss_bytes"] > 0 and metrics["wall_seconds"] > 0
    assert metrics["config"]["recipe"]["name"] == "standard"
    assert not list(tmp_path.glob(".metrics.json.*"))  # no temp file left behind


def test_run_lowcost_respects_max_batches(tmp_path):
    cfg = compose_cfg(
        "recipe=lowcost", "train.batch_size=50", "train.max_batches=4", f"output_dir={tmp_path}"
    )
    metrics = run(cfg)
    assert metrics["history"][0]["train_examples"] == 4 * 50
    assert 0.0 <= metrics["final_test_accuracy"] <= 1.0


def test_run_on_real_mnist(tmp_path, mnist_root):
    cfg = compose_cfg(
        "dataset=mnist",
        f"dataset.root={mnist_root}",
        "train.max_batches=30",
        f"output_dir={tmp_path}",
    )
    metrics = run(cfg)
    assert metrics["in_shape"] == [1, 28, 28]
    assert (metrics["num_train"], metrics["num_test"]) == (60000, 10000)
    assert metrics["final_test_accuracy"] > 0.5  # 3000 examples of lowcost MLP


def test_write_json_atomic_replaces(tmp_path):
    path = tmp_path / "sub" / "m.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_entry_point_writes_into_hydra_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    done = bitfed_train("train.max_batches=3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dataset"] == "digits" and metrics["recipe"] == "lowcost"
    assert "epoch 3/3" in done.stdout  # conf/train: 3 epochs by default


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.name=lenet"], "unknown model 'lenet'"),
        (["model=lenet"], "Could not find 'model/lenet'"),
        (["train.epochs=many"], "could not be converted to Integer"),
        (["dataset=mnist", "dataset.root=/nonexistent/mnist"], "mnist"),
    ],
)
def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)  # Hydra's run folder, if it gets that far
    monkeypatch.setattr(sys, "argv", ["bitfed-train", *args])
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        GlobalHydra.instance().clear()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bitfed-train: error:"), err
    assert message in lines[0]
    assert "Traceback" not in err
