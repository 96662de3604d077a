"""The ML side of a federated round, as plain functions over :mod:`core` (no Flower here).

Used by the ClientApp (local data, local training) and by the ServerApp (the same model
definition, and evaluation of the global model on held-out test data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.codec import ModelSpec
from core.config import ExperimentConfig

__all__ = [
    "LocalData",
    "set_threads",
    "load_split",
    "local_data",
    "new_model",
    "state_of",
    "load_state",
    "fit_local",
    "evaluate_global",
    "client_state_dir",
]


@dataclass
class LocalData:
    """One client's examples: the dataset and the indices of its train and validation part."""

    dataset: object  # core.data.ImageDataset
    train_idx: np.ndarray
    val_idx: np.ndarray


def set_threads(cfg: ExperimentConfig) -> None:
    """Apply ``train.num_threads`` (0 keeps torch's default)."""
    if cfg.train.num_threads > 0 and torch.get_num_threads() != cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)


def load_split(cfg: ExperimentConfig, split: str, root: str | None = None):
    """Load the configured dataset's ``split`` ("train" | "test"), cached by :mod:`core.data`.

    ``root`` (a device's own ``data-root`` from its node config) overrides ``dataset.root``.
    """
    from core.data import load_dataset

    root = root or cfg.dataset.root or None
    return load_dataset(cfg.dataset.name, root, split, svhn_extra=cfg.dataset.svhn_extra)


def local_data(cfg: ExperimentConfig, node_config: dict) -> LocalData:
    """Select this client's part of the training set (``partition-id``, ``num-partitions``).

    The node config's ``data-root``, when given, is where this device keeps the dataset.
    """
    from core.data import client_split

    if "partition-id" not in node_config:
        raise ValueError(
            "node config lacks partition-id; start the SuperNode with --node-config "
            '"partition-id=<k> num-partitions=<N>"'
        )
    pid = int(node_config["partition-id"])
    num = int(node_config.get("num-partitions", cfg.federation.num_clients))
    ds = load_split(cfg, "train", str(node_config.get("data-root") or "") or None)
    train_idx, val_idx = client_split(ds.labels, num, cfg.partition, pid)
    return LocalData(ds, train_idx, val_idx)


def new_model(cfg: ExperimentConfig, dataset) -> torch.nn.Module:
    """Build the configured model for ``dataset``'s shape, initialised from ``cfg.seed``."""
    from core import build_model

    torch.manual_seed(cfg.seed)
    c, h, w = dataset.images.shape[1:]
    return build_model(
        cfg.model.name, cfg.recipe.name, num_classes=dataset.num_classes, in_shape=(c, h, w)
    )


def state_of(model: torch.nn.Module, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Copy the travelling tensors of ``model`` out as float32 numpy arrays."""
    sd = model.state_dict()
    return {t.name: sd[t.name].detach().to(torch.float32).numpy().copy() for t in spec.tensors}


def load_state(model: torch.nn.Module, state: dict[str, np.ndarray], spec: ModelSpec) -> None:
    """Copy ``state`` into ``model`` in place, each tensor cast to the model's own dtype.

    Entries that do not travel (batch counters, packed gradient bits) are left as they are.
    """
    sd = model.state_dict()
    with torch.no_grad():
        for t in spec.tensors:
            sd[t.name].copy_(torch.from_numpy(np.array(state[t.name], dtype=np.float32)))


def fit_local(model: torch.nn.Module, data: LocalData, cfg: ExperimentConfig, server_round: int):
    """Train ``model`` on the client's train part for ``train.epochs`` epochs (core.fit).

    Batch order and torch's random stream (stochastic rounding) are seeded from
    ``(train.seed, round, first example index)``, so clients draw independent noise. The
    learning rate follows ``federation.lr_schedule`` over the rounds (``round_lr``).
    """
    from core import build_optimizer, fit, from_recipe
    from core.data import ImageLoader

    first = int(data.train_idx[0]) if len(data.train_idx) else 0
    torch.manual_seed(cfg.train.seed * 1_000_003 + server_round * 100_019 + first)

    n, bs = len(data.train_idx), cfg.train.batch_size
    loader = ImageLoader(
        data.dataset,
        data.train_idx,
        batch_size=bs,
        shuffle=True,
        seed=cfg.train.seed * 100_003 + server_round * 1_009 + first,
        augment=cfg.dataset.augment,
        flip=cfg.dataset.name != "svhn",
        drop_last=n > bs and n % bs == 1,  # a 1-example batch has no l1-BN deviation
        raw=from_recipe(cfg.recipe.name).lowcost,  # low-cost models take uint8 codes as they are
    )
    lr = cfg.federation.round_lr(cfg.recipe.lr, server_round)
    optimizer = build_optimizer(model, cfg.recipe.name, lr)
    return fit(model, optimizer, loader, epochs=cfg.train.epochs, max_batches=cfg.train.max_batches)


def evaluate_global(model: torch.nn.Module, dataset, batch_size: int = 500):
    """Loss and accuracy of ``model`` on a whole held-out ``dataset`` (core.evaluate)."""
    from core import evaluate
    from core.data import ImageLoader

    recipe = getattr(model, "recipe", None)
    raw = bool(getattr(recipe, "lowcost", False))  # low-cost models take uint8 codes as they are
    loader = ImageLoader(dataset, None, batch_size=batch_size, shuffle=False, raw=raw)
    return evaluate(model, loader)


def client_state_dir(cfg: ExperimentConfig, node_config: dict) -> Path:
    """Where this device keeps its state.

    First of: node config ``state-dir``; ``federation.state_dir``; ``<output_dir>/client-state``;
    ``$FLWR_HOME/bitfed-client-state`` (``~/.flwr`` when unset).
    """
    if node_config.get("state-dir"):
        return Path(str(node_config["state-dir"]))
    if cfg.federation.state_dir:
        return Path(cfg.federation.state_dir)
    if cfg.output_dir:
        return Path(cfg.output_dir) / "client-state"
    return Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")) / "bitfed-client-state"
