"""One path from an :class:`~core.config.ExperimentConfig` to the objects of a run.

Every entry point that trains or evaluates — ``bitfed-train``, the ClientApp (through
:mod:`core.federated`), the ServerApp's evaluation, ``bitfed-memory`` and the benchmarks — builds
its recipe, model, optimizer and loaders here, so a config key (``recipe.po2_bias``, the
dataset's flip rule, ...) cannot reach one path and miss another.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from core.config import ExperimentConfig
from core.recipes import Recipe, from_recipe

if TYPE_CHECKING:
    from core.data import ImageDataset, ImageLoader

__all__ = [
    "recipe_of",
    "build_model_for",
    "build_optimizer_for",
    "train_loader",
    "eval_loader",
    "set_threads",
    "seeded",
    "EVAL_BATCH",
]

EVAL_BATCH = 500  # evaluation batch: no gradients, so larger than the training batch
_RNG_LOCK = threading.Lock()  # torch's global generator is one per process


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator and hold it for the block, against other threads.

    Clients simulated as threads of one process (the in-process test grid) would otherwise
    reseed or draw from it in the middle of each other's model initialisation.
    """
    with _RNG_LOCK:
        torch.manual_seed(seed)
        yield


def recipe_of(cfg: ExperimentConfig) -> Recipe:
    """Return the :class:`~core.recipes.Recipe` of ``cfg.recipe`` (name and ``po2_bias``)."""
    return from_recipe(cfg.recipe.name, po2_bias=cfg.recipe.po2_bias)


def build_model_for(
    cfg: ExperimentConfig, in_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    """Build ``cfg.model`` under :func:`recipe_of` ``(cfg)``, initialised from ``cfg.seed``.

    ``in_shape`` is one sample's ``(C, H, W)``; take it (and ``num_classes``) from the dataset.
    """
    from core.models import build_model

    with seeded(cfg.seed):  # version 0 of a federation: every client must build the same model
        return build_model(
            cfg.model.name, recipe_of(cfg), num_classes=num_classes, in_shape=tuple(in_shape)
        )


def build_optimizer_for(
    cfg: ExperimentConfig, model: nn.Module, lr: float | None = None, *, seed: int | None = None
) -> torch.optim.Optimizer:
    """Return the recipe's optimizer for ``model`` at ``lr`` (default ``cfg.recipe.lr``).

    ``seed`` seeds the stochastic rounding of the low-cost optimizers (default ``train.seed``).
    """
    from core.bop import BopConfig
    from core.optim import build_optimizer

    lr = cfg.recipe.lr if lr is None else lr
    bop = BopConfig(gamma=cfg.recipe.bop_gamma, threshold=cfg.recipe.bop_threshold)
    seed = cfg.train.seed if seed is None else seed
    return build_optimizer(model, recipe_of(cfg), lr, bop=bop, seed=seed)


def train_loader(
    cfg: ExperimentConfig,
    dataset: ImageDataset,
    indices: np.ndarray | None = None,
    *,
    seed: int,
) -> ImageLoader:
    """Shuffled training batches of ``dataset[indices]`` as the recipe takes them.

    Augmentation follows ``dataset.augment`` with horizontal flips only where the dataset allows
    them (:func:`core.data.flip_for`: CIFAR-10, never digits); low-cost recipes get the uint8
    codes as they are (their first layer keeps them, docs/method.md §2a). A last batch of one
    example is dropped: an l1 batch norm has no deviation over one sample.
    """
    from core.data import ImageLoader, flip_for

    n = len(dataset) if indices is None else len(indices)
    batch = cfg.train.batch_size
    return ImageLoader(
        dataset,
        indices,
        batch_size=batch,
        shuffle=True,
        seed=seed,
        augment=cfg.dataset.augment,
        flip=flip_for(cfg.dataset.name),
        drop_last=n > batch and n % batch == 1,
        raw=recipe_of(cfg).lowcost,
    )


def eval_loader(
    cfg: ExperimentConfig, dataset: ImageDataset, batch_size: int = EVAL_BATCH
) -> ImageLoader:
    """Unshuffled, unaugmented batches of the whole ``dataset`` for evaluation."""
    from core.data import ImageLoader

    return ImageLoader(
        dataset, None, batch_size=batch_size, shuffle=False, raw=recipe_of(cfg).lowcost
    )


def set_threads(cfg: ExperimentConfig) -> None:
    """Apply ``train.num_threads`` (0 keeps torch's default)."""
    if cfg.train.num_threads > 0 and torch.get_num_threads() != cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
