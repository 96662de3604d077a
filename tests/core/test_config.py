import pytest
from hydra import compose, initialize
from omegaconf import OmegaConf

from core.config import (
    ExperimentConfig,
    FederationConfig,
    from_run_config,
    register_configs,
    to_run_config,
)


def _compose(overrides: list[str]) -> ExperimentConfig:
    register_configs()
    with initialize(version_base=None, config_path="../../conf"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_object(cfg)


def test_default_config_composes_to_schema() -> None:
    cfg = _compose([])
    assert isinstance(cfg, ExperimentConfig)
    assert (cfg.model.name, cfg.recipe.name, cfg.dataset.name) == ("mlp", "lowcost", "digits")


def test_experiment_is_a_diff() -> None:
    cfg = _compose(["experiment=mnist_dirichlet"])
    assert (cfg.dataset.name, cfg.partition.kind, cfg.federation.num_rounds) == (
        "mnist",
        "dirichlet",
        30,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.name=vgg", "unknown model 'vgg'"),
        ("recipe.lr=-1", "recipe.lr must be > 0"),
        ("partition.alpha=0", "partition.alpha must be > 0"),
        ("federation.clients_per_round=50", "exceeds federation.num_clients"),
        ("federation.lr_schedule=step", "unknown federation.lr_schedule 'step'"),
        ("federation.lr_final=0", "federation.lr_final must be in"),
        ("strategy.vote=soft", "unknown strategy.vote 'soft'"),
    ],
)
def test_bad_values_get_one_line_errors(override: str, message: str) -> None:
    from core.hydra_entry import compose_config

    with pytest.raises(ValueError, match=message) as info:
        compose_config([override])
    assert "\n" not in str(info.value)


def test_run_config_round_trip() -> None:
    cfg = _compose(["strategy=majority", "federation.num_rounds=3"])
    assert from_run_config(to_run_config(cfg)) == cfg


def test_run_config_partial_and_strings() -> None:
    cfg = from_run_config({"federation.num_rounds": "7", "strategy.error_feedback": "false"})
    assert cfg.federation.num_rounds == 7 and cfg.strategy.error_feedback is False


def test_run_config_unknown_key() -> None:
    with pytest.raises(ValueError, match="unknown run-config keys"):
        from_run_config({"federation.rounds": 3})


def test_round_lr_cosine_runs_from_lr_to_the_final_fraction() -> None:
    fed = FederationConfig(num_rounds=5, lr_schedule="cosine", lr_final=0.1)
    lrs = [fed.round_lr(1e-3, r) for r in range(1, 7)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[2] == pytest.approx(0.55e-3)
    assert lrs[4] == pytest.approx(1e-4) and lrs[5] == pytest.approx(1e-4)  # stays after R
    assert all(a > b for a, b in zip(lrs[:4], lrs[1:5]))
    assert FederationConfig(num_rounds=5, lr_schedule="constant").round_lr(1e-3, 4) == 1e-3
