"""The ML side of a federated round, as plain functions over :mod:`core` (no Flower here).

Used by the ClientApp (local data, local training) and by the ServerApp (the same model
definition, and evaluation of the global model on held-out test data). Objects are built through
:mod:`core.experiment`, the one path from a config to a model, optimizer and loaders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.bop import LowCostBop
from core.codec import BINARY_MAGNITUDE, ModelSpec
from core.config import ExperimentConfig
from core.experiment import (
    build_model_for,
    build_optimizer_for,
    eval_loader,
    seeded,
    set_threads,
    train_loader,
)
from core.models import float_state, packed_weights_by_name

__all__ = [
    "LocalData",
    "set_threads",
    "load_split",
    "local_data",
    "check_population",
    "new_model",
    "state_of",
    "load_state",
    "version_zero",
    "fit_local",
    "evaluate_global",
]


@dataclass
class LocalData:
    """One client's examples: the dataset and the indices of its train and validation part."""

    dataset: object  # core.data.ImageDataset
    train_idx: np.ndarray
    val_idx: np.ndarray


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


def check_population(cfg: ExperimentConfig) -> tuple[int, int]:
    """Partition the training set among ``federation.num_clients`` clients once, before round 1.

    Returns ``(examples, clients without an example)``. Raises :class:`core.data.DataError` when
    the partition is impossible (e.g. ``shards`` needing more examples than there are) and
    ``ValueError`` when fewer clients hold an example than ``federation.min_clients``: every
    round would be skipped. A population larger than the dataset is fine: its empty clients
    answer without an update.
    """
    from core.data.partition import partition_table

    labels = load_split(cfg, "train").labels
    p, fed = cfg.partition, cfg.federation
    sizes = partition_table(
        labels,
        fed.num_clients,
        p.kind,
        alpha=p.alpha,
        shards_per_client=p.shards_per_client,
        seed=p.seed,
    ).sizes()
    holding = int((sizes > 0).sum())
    if holding < fed.min_clients:
        raise ValueError(
            f"federation.min_clients ({fed.min_clients}) exceeds the {holding} clients that hold "
            f"a training example ({len(labels)} examples, {fed.num_clients} clients); lower it"
        )
    return len(labels), fed.num_clients - holding


def new_model(cfg: ExperimentConfig, dataset) -> torch.nn.Module:
    """Build the configured model for ``dataset``'s shape, initialised from ``cfg.seed``."""
    return build_model_for(cfg, tuple(dataset.images.shape[1:]), dataset.num_classes)


def state_of(model: torch.nn.Module, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Copy the travelling tensors of ``model`` out as float32 numpy arrays.

    A packed binary weight (``lowcost-bop``) comes out as its ``+-1`` values.
    """
    sd = float_state(model)
    return {t.name: sd[t.name].detach().to(torch.float32).numpy().copy() for t in spec.tensors}


def version_zero(model: torch.nn.Module, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Return a fresh model's state as version 0 of a federation: real state float16-rounded.

    The real state travels as float16, so version 0 holds what every client can reproduce.
    Packed binary weights are ``BINARY_MAGNITUDE * sign(w)`` (:class:`core.codec.TensorSpec`).
    """
    state = state_of(model, spec)
    for t in spec.real:
        state[t.name] = state[t.name].astype(np.float16).astype(np.float32)
    for t in spec.sign:
        if t.binary:
            state[t.name] = BINARY_MAGNITUDE * state[t.name]
    return state


def load_state(model: torch.nn.Module, state: dict[str, np.ndarray], spec: ModelSpec) -> None:
    """Copy ``state`` into ``model`` in place, each tensor cast to the model's own dtype.

    A packed binary weight takes ``sign(state)`` (``>= 0`` <=> ``+1``): the client trains the
    binarized global model. Entries that do not travel (batch counters, packed gradient bits)
    are left as they are.
    """
    sd, packed = model.state_dict(), packed_weights_by_name(model)
    with torch.no_grad():
        for t in spec.tensors:
            value = torch.from_numpy(np.array(state[t.name], dtype=np.float32))
            if t.name in packed:
                packed[t.name].load_weight_signs_(value)
            else:
                sd[t.name].copy_(value)


def fit_local(
    model: torch.nn.Module,
    data: LocalData,
    cfg: ExperimentConfig,
    server_round: int,
    moments: dict[str, np.ndarray] | None = None,
):
    """Train ``model`` on the client's train part for ``train.epochs`` epochs (core.fit).

    Batch order, torch's random stream and the optimizer's stochastic-rounding generator are
    seeded from ``(train.seed, round, first example index)``, so clients draw independent noise. The
    learning rate follows ``federation.lr_schedule`` over the rounds (``round_lr``).
    ``moments`` (``lowcost-bop`` only; updated in place) carries the Bop moments of the packed
    layers from one round of this client to its next (:meth:`core.bop.LowCostBop.moments`).
    """
    from core.train import fit

    first = int(data.train_idx[0]) if len(data.train_idx) else 0
    seed = cfg.train.seed * 100_003 + server_round * 1_009 + first
    with seeded(cfg.train.seed * 1_000_003 + server_round * 100_019 + first):
        loader = train_loader(cfg, data.dataset, data.train_idx, seed=seed)
    lr = cfg.federation.round_lr(cfg.recipe.lr, server_round)
    optimizer = build_optimizer_for(cfg, model, lr, seed=seed)
    layers = packed_weights_by_name(model)
    keep = moments is not None and bool(layers) and isinstance(optimizer, LowCostBop)
    if keep:
        optimizer.load_moments_(layers, moments)
    epochs, max_batches = cfg.train.epochs, cfg.train.max_batches
    result = fit(model, optimizer, loader, epochs=epochs, max_batches=max_batches)
    if keep:
        moments.clear()
        moments.update({k: v.numpy() for k, v in optimizer.moments(layers).items()})
    return result


def evaluate_global(cfg: ExperimentConfig, model: torch.nn.Module, dataset):
    """Loss and accuracy of ``model`` on a whole held-out ``dataset`` (core.evaluate)."""
    from core.train import evaluate

    return evaluate(model, eval_loader(cfg, dataset))
