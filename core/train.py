"""Local training and evaluation loops (used by the client, ``bitfed-train`` and benchmarks).

One step is ``zero_grad -> forward -> cross-entropy -> backward -> step``, identical for every
recipe: the precision choices live in the model and optimizer (:mod:`core.recipes`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FitResult", "EvalResult", "fit", "evaluate"]

Batch = tuple[Tensor, Tensor]
Progress = bool | Callable[[dict[str, Any]], None]
_EMPTY = "the loader yielded no batches; check the dataset split and batch size"


@dataclass
class FitResult:
    """Outcome of :func:`fit` (figures of the last epoch)."""

    loss: float  # mean training cross-entropy over the last epoch's examples
    accuracy: float  # training accuracy (on the fly, train mode) of the last epoch
    num_examples: int  # examples seen in the last epoch
    seconds: float  # wall time of the whole call
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`."""

    loss: float
    accuracy: float
    num_examples: int


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[Batch],
    *,
    epochs: int = 1,
    max_batches: int = 0,
    progress: Progress = False,
) -> FitResult:
    """Train ``model`` for ``epochs`` passes over ``loader`` (cross-entropy, docs/method.md §2f).

    Parameters
    ----------
    model, optimizer
        From :func:`core.build_model` / :func:`core.build_optimizer` with the same recipe.
    loader : iterable of (x, y)
        Re-iterable batches: float32 images in [-1, 1] ``(B, *in_shape)`` or their uint8 codes
        (``ImageLoader(raw=True)``, the compact input of low-cost models), int64 labels ``(B,)``.
    epochs : int
        Passes over the loader (>= 1).
    max_batches : int
        Stop each epoch after this many batches (0 = whole epoch).
    progress : bool or callable
        True prints one line per epoch (and every ~10 % of a long epoch) to stderr; a callable
        receives a dict (``epoch``, ``batch``, ``loss``, ``accuracy``, ``examples``) after every
        batch.

    Returns
    -------
    FitResult
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if max_batches < 0:
        raise ValueError(f"max_batches must be >= 0, got {max_batches}")
    total_batches = _length(loader, max_batches)
    start = time.perf_counter()
    history: list[dict[str, float]] = []
    model.train()
    for epoch in range(1, epochs + 1):
        loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
        for i, (x, y) in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            del x  # the low-cost model kept what it needs (uint8 codes); free the batch
            loss = F.cross_entropy(logits, y)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"training loss became {value} at epoch {epoch}, batch {i + 1}; "
                    "lower the learning rate (recipe.lr)"
                )
            loss.backward()
            optimizer.step()
            n = int(y.shape[0])
            loss_sum += value * n
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += n
            info = {"epoch": epoch, "batch": i + 1, "loss": loss_sum / seen,
                    "accuracy": correct / seen, "examples": seen}  # fmt: skip
            _report(progress, info, total_batches)
        if seen == 0:
            raise ValueError(_EMPTY)
        record = {"epoch": epoch, "loss": loss_sum / seen, "accuracy": correct / seen,
                  "num_examples": seen, "seconds": time.perf_counter() - t0}  # fmt: skip
        history.append(record)
        if progress is True:
            print(
                f"epoch {epoch}/{epochs}: loss {record['loss']:.4f} "
                f"acc {record['accuracy']:.4f} ({seen} ex, {record['seconds']:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    last = history[-1]
    return FitResult(
        loss=last["loss"],
        accuracy=last["accuracy"],
        num_examples=int(last["num_examples"]),
        seconds=time.perf_counter() - start,
        history=history,
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Batch], *, max_batches: int = 0) -> EvalResult:
    """Mean cross-entropy and accuracy of ``model`` in eval mode (running BN statistics)."""
    was_training = model.training
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        for i, (x, y) in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += int(y.shape[0])
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError(_EMPTY)
    return EvalResult(loss=loss_sum / seen, accuracy=correct / seen, num_examples=seen)


def _length(loader: Iterable[Batch], max_batches: int) -> int:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        n = 0
    return min(n, max_batches) if max_batches and n else (max_batches or n)


def _report(progress: Progress, info: dict[str, Any], total: int) -> None:
    if callable(progress):
        progress(info)
    elif progress and total >= 20 and info["batch"] % max(1, total // 10) == 0:
        print(
            f"  epoch {info['epoch']} batch {info['batch']}/{total}: "
            f"loss {info['loss']:.4f} acc {info['accuracy']:.4f}",
            file=sys.stderr,
            flush=True,
        )
