"""Typed configuration for every bitfed entry point, and the bridge to Flower's run config.

Hydra composes ``conf/`` into these dataclasses (registered with ``ConfigStore`` by
:func:`register_configs`), ``OmegaConf.to_object`` calls their constructors, and each
``__post_init__`` rejects bad values with a one-line ``ValueError`` that names the allowed ones.

Flower's ``run_config`` is flat (dotted keys, scalar values only), so the federated apps move the
same tree through :func:`to_run_config` / :func:`from_run_config`; a test keeps the keys of
``[tool.flwr.app.config]`` in ``pyproject.toml`` equal to ``to_run_config(ExperimentConfig())``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from core.names import (
    AttackName,
    DatasetName,
    LRSchedule,
    ModelName,
    PartitionKind,
    RecipeName,
    StrategyName,
    VoteKind,
    choices,
)

__all__ = [
    "MODELS",
    "RECIPES",
    "DATASETS",
    "PARTITIONS",
    "STRATEGIES",
    "LR_SCHEDULES",
    "ATTACKS",
    "ModelConfig",
    "RecipeConfig",
    "DatasetConfig",
    "PartitionConfig",
    "TrainConfig",
    "StrategyConfig",
    "FederationConfig",
    "ExperimentConfig",
    "to_run_config",
    "from_run_config",
    "register_configs",
]

# Config strings of the enums in core.names (the one list of names), for validation messages.
MODELS = choices(ModelName)
RECIPES = choices(RecipeName)
DATASETS = choices(DatasetName)
PARTITIONS = choices(PartitionKind)
STRATEGIES = choices(StrategyName)
VOTES = choices(VoteKind)
LR_SCHEDULES = choices(LRSchedule)
ATTACKS = choices(AttackName)

Scalar = int | float | bool | str


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")


def _check_positive(what: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{what} must be {bound}, got {value}")


@dataclass
class ModelConfig:
    """Which network to train (docs/method.md §3)."""

    name: str = "mlp"  # mlp | cnv | binarynet | resnete18 | resnete18-cifar

    def __post_init__(self) -> None:
        _check_choice("model", self.name, MODELS)


@dataclass
class RecipeConfig:
    """How to train it: the paper's baseline or its low-memory method (docs/method.md §1a, §2g)."""

    name: str = "lowcost"  # standard | lowcost | lowcost-po2 | lowcost-bop
    lr: float = 1e-3  # Adam learning rate (docs/method.md §2f)
    po2_bias: int = 8  # b_off of the 5-bit power-of-two gradient quantizer (docs/method.md §2e)
    bop_gamma: float = 1e-3  # lowcost-bop: Bop's adaptivity rate gamma (docs/method.md §2h)
    bop_threshold: float = 2e-2  # lowcost-bop: Bop's flip threshold tau on |m|

    def __post_init__(self) -> None:
        _check_choice("recipe", self.name, RECIPES)
        _check_positive("recipe.lr", self.lr)
        if not 0.0 < self.bop_gamma <= 1.0:
            raise ValueError(f"recipe.bop_gamma must be in (0, 1], got {self.bop_gamma}")
        if not 0.0 <= self.bop_threshold < 1.0:
            raise ValueError(f"recipe.bop_threshold must be in [0, 1), got {self.bop_threshold}")


@dataclass
class DatasetConfig:
    """Where the images come from. ``digits`` ships inside scikit-learn: no root needed."""

    name: str = "digits"  # digits | mnist | fashion-mnist | cifar10 | svhn
    root: str = ""  # folder holding the dataset's standard files ("" only for digits)
    augment: bool = False  # CIFAR-10/SVHN shift 0.15 (+ flip for CIFAR-10), docs/method.md §3
    svhn_extra: bool = False  # also load SVHN's extra_32x32.mat

    def __post_init__(self) -> None:
        _check_choice("dataset", self.name, DATASETS)


@dataclass
class PartitionConfig:
    """How a dataset is split across federated clients (deterministic for ``seed``)."""

    kind: str = "iid"  # iid | dirichlet | shards
    alpha: float = 0.5  # Dirichlet concentration: smaller = more label skew
    shards_per_client: int = 2  # McMahan et al. label-sorted shards per client
    val_fraction: float = 0.1  # each client's local validation split
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("partition", self.kind, PARTITIONS)
        _check_positive("partition.alpha", self.alpha)
        _check_positive("partition.shards_per_client", self.shards_per_client)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"partition.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class TrainConfig:
    """Local training loop (centralized epochs, or local epochs per federated round)."""

    epochs: int = 3  # digits clients hold ~160 examples; the MNIST experiments set 1
    batch_size: int = 100  # the paper's batch (docs/method.md §2f)
    max_batches: int = 0  # stop each epoch after this many batches (0 = whole epoch)
    seed: int = 0
    num_threads: int = 0  # torch intra-op threads (0 = torch's default)

    def __post_init__(self) -> None:
        _check_positive("train.epochs", self.epochs)
        _check_positive("train.batch_size", self.batch_size)
        _check_positive("train.max_batches", self.max_batches, allow_zero=True)
        _check_positive("train.num_threads", self.num_threads, allow_zero=True)


@dataclass
class StrategyConfig:
    """Server-side aggregation of client updates."""

    name: str = "aligned"  # aligned (trust-weighted mean) | mean | majority (vote) | fedavg
    server_lr: float = 1.0  # multiplies the aggregated update
    server_momentum: float = 0.0  # 1-bit rules: momentum of the server step (0 = off; FedAvgM)
    majority_step: float = 0.0  # majority vote's step: 0 = sized from the round, > 0 = fixed
    vote: str = "margin"  # majority: margin (step x vote margin) | sign (step x majority sign)
    error_feedback: bool = True  # clients keep what the sign lost and add it next round
    max_examples: int = 100_000  # absolute cap on a client's claimed example count (its weight)
    # Bounds on what one reply contributes, relative to the round's robust statistics:
    scale_clip: float = 2.0  # scale (fedavg: change norm) <= scale_clip x the round's median
    example_cap: float = 2.0  # weight <= example_cap x the median claimed count (0: uniform)
    real_band: float = 8.0  # real state within median +- real_band x MAD (spreads: log scale)
    real_trim: float = 0.2  # real state: trimmed mean dropping this fraction at each end

    def __post_init__(self) -> None:
        _check_choice("strategy", self.name, STRATEGIES)
        _check_positive("strategy.server_lr", self.server_lr)
        if not 0.0 <= self.server_momentum < 1.0:
            raise ValueError(
                f"strategy.server_momentum must be in [0, 1), got {self.server_momentum}"
            )
        _check_positive("strategy.majority_step", self.majority_step, allow_zero=True)
        _check_choice("strategy.vote", self.vote, VOTES)
        _check_positive("strategy.max_examples", self.max_examples)
        if self.scale_clip < 1.0:
            raise ValueError(
                f"strategy.scale_clip must be >= 1 (x the median), got {self.scale_clip}"
            )
        if self.example_cap != 0 and self.example_cap < 1.0:
            raise ValueError(
                f"strategy.example_cap must be 0 (uniform) or >= 1, got {self.example_cap}"
            )
        _check_positive("strategy.real_band", self.real_band)
        if not 0.0 <= self.real_trim < 0.5:
            raise ValueError(f"strategy.real_trim must be in [0, 0.5), got {self.real_trim}")


@dataclass
class FederationConfig:
    """Rounds, clients and the limits that keep every wait bounded."""

    num_clients: int = 10
    clients_per_round: int = 10  # sampled each round (<= num_clients)
    num_rounds: int = 20
    min_clients: int = 2  # fewest replies a round may aggregate
    round_timeout: float = 600.0  # seconds to wait for replies in one round
    node_wait_timeout: float = 120.0  # seconds to wait for enough nodes to connect
    state_dir: str = ""  # client-side persistent state ("" = under the run folder)
    # Simulation (or a state_dir shared by server and clients) only: clients keep their version
    # and a float16 residual; replicas are rebuilt from what the server publishes
    # (core.replica_store)
    compact_state: bool = False
    # bitfed-sim: "" = start a local Ray instance; "auto" or "<host>:<port>" = join that running
    # Ray cluster (state_dir, output_dir and dataset.root must then be paths every node shares)
    ray_address: str = ""
    client_cpus: float = 1.0  # bitfed-sim: Ray CPUs per virtual client (actors = CPUs / this)
    checkpoint_dir: str = ""  # server-side checkpoints ("" = under the run folder)
    resume: bool = True  # continue from the last checkpoint when one exists
    lr_schedule: str = "cosine"  # client lr over rounds: cosine | constant (see round_lr)
    lr_final: float = 0.1  # cosine: the last round's lr as a fraction of recipe.lr
    delta_history: int = 32  # 1-bit downlink deltas kept to catch stale replicas up exactly
    attack: str = "none"  # what hostile devices do (client.hostile): none | flip | scale | ...
    attackers: int = 0  # devices with partition-id < attackers are hostile

    def __post_init__(self) -> None:
        _check_choice("federation.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("federation.attack", self.attack, ATTACKS)
        _check_positive("federation.attackers", self.attackers, allow_zero=True)
        _check_positive("federation.delta_history", self.delta_history)
        _check_positive("federation.client_cpus", self.client_cpus)
        if not 0.0 < self.lr_final <= 1.0:
            raise ValueError(f"federation.lr_final must be in (0, 1], got {self.lr_final}")
        _check_positive("federation.num_clients", self.num_clients)
        _check_positive("federation.clients_per_round", self.clients_per_round)
        _check_positive("federation.num_rounds", self.num_rounds)
        _check_positive("federation.min_clients", self.min_clients)
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"federation.clients_per_round ({self.clients_per_round}) exceeds "
                f"federation.num_clients ({self.num_clients}); lower it or add clients"
            )
        if self.attackers > self.num_clients:
            raise ValueError(
                f"federation.attackers ({self.attackers}) exceeds federation.num_clients "
                f"({self.num_clients}); lower it"
            )
        if self.min_clients > self.clients_per_round:
            raise ValueError(
                f"federation.min_clients ({self.min_clients}) exceeds "
                f"federation.clients_per_round ({self.clients_per_round})"
            )

    def round_lr(self, base_lr: float, run_round: int) -> float:
        """Return the clients' learning rate in round ``run_round`` (1-based) of ``num_rounds``.

        ``constant``: ``base_lr``. ``cosine`` (Loshchilov & Hutter, arXiv 1608.03983, per round):
        ``lr_r = base_lr * (f + (1 - f) * (1 + cos(pi * (r - 1) / (R - 1))) / 2)`` with
        ``f = lr_final``: ``base_lr`` in round 1, ``f * base_lr`` in round ``R`` and after.
        """
        if self.lr_schedule == "constant" or self.num_rounds == 1:
            return base_lr
        t = min(max(run_round - 1, 0) / (self.num_rounds - 1), 1.0)
        f = self.lr_final
        return base_lr * (f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * t)))


@dataclass
class ExperimentConfig:
    """Everything one run needs; the root of ``conf/config.yaml``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    seed: int = 0
    output_dir: str = ""  # "" = Hydra's run folder (or ./outputs/<time> outside Hydra)


def to_run_config(cfg: ExperimentConfig) -> dict[str, Scalar]:
    """Flatten ``cfg`` into Flower's run config: ``{"model.name": "mlp", ...}``."""
    flat: dict[str, Scalar] = {}

    def walk(prefix: str, node: dict[str, Any]) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(f"{name}.", value)
            else:
                flat[name] = value

    walk("", asdict(cfg))
    return flat


def from_run_config(run_config: dict[str, Scalar]) -> ExperimentConfig:
    """Rebuild an :class:`ExperimentConfig` from a (possibly partial) flat run config.

    Missing keys keep their defaults (``run_simulation`` passes an empty run config); unknown
    keys raise ``ValueError`` naming them; values are coerced to the field's declared type.
    """
    nested: dict[str, dict[str, Scalar]] = {}
    top: dict[str, Scalar] = {}
    known = to_run_config(ExperimentConfig())
    unknown = sorted(set(run_config) - set(known))
    if unknown:
        raise ValueError(f"unknown run-config keys {unknown}; known keys: {sorted(known)}")
    for key, value in run_config.items():
        value = _coerce(value, type(known[key]), key)
        if "." in key:
            group, name = key.split(".", 1)
            nested.setdefault(group, {})[name] = value
        else:
            top[key] = value
    kwargs: dict[str, Any] = dict(top)
    for f in fields(ExperimentConfig):
        default = f.default_factory() if callable(f.default_factory) else None  # type: ignore[misc]
        if is_dataclass(default):
            kwargs[f.name] = type(default)(**nested.get(f.name, {}))
    return ExperimentConfig(**kwargs)


def _coerce(value: Scalar, kind: type, key: str) -> Scalar:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"run-config key {key!r} must be true/false, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"run-config key {key!r} must be {kind.__name__}, got {value!r}") from None


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore so every YAML is validated against it."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="experiment_schema", node=ExperimentConfig)
    for group, node in (
        ("model", ModelConfig),
        ("recipe", RecipeConfig),
        ("dataset", DatasetConfig),
        ("partition", PartitionConfig),
        ("train", TrainConfig),
        ("strategy", StrategyConfig),
        ("federation", FederationConfig),
    ):
        cs.store(group=group, name=f"{group}_schema", node=node)
