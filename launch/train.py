"""Entry point ``bitfed-train``: train one BNN centrally on one dataset with one recipe (Hydra).

``bitfed-train [model=cnv] [recipe=standard] [dataset=mnist dataset.root=DIR] [train.epochs=10]``

A thin Hydra entry (:func:`core.hydra_entry.hydra_command`) turns the composed config into an
:class:`core.config.ExperimentConfig` (which validates it) and calls :func:`run`, a plain function
that tests and benchmarks call directly. :func:`run` trains on the dataset's train split,
evaluates on its test split after every epoch, prints one line per epoch, and writes
``metrics.json`` atomically into ``cfg.output_dir`` (or Hydra's run folder).
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

import torch

from core.atomic import atomic_write_json
from core.config import ExperimentConfig
from core.hydra_entry import CONF_DIR, hydra_command
from core.memory import process_peak_rss_bytes, reset_process_peak
from core.runs import run_folder

__all__ = ["CONF_DIR", "run", "main"]


def _progress(epoch: int, epochs: int, num_batches: int) -> Callable[[dict[str, Any]], None]:
    """Print a progress line to stderr at every tenth of an epoch (epochs of >= 50 batches)."""
    every = max(num_batches // 10, 1)

    def report(info: dict[str, Any]) -> None:
        batch = info["batch"]
        if num_batches >= 50 and batch % every == 0 and batch < num_batches:
            print(
                f"  epoch {epoch}/{epochs} batch {batch}/{num_batches}: loss {info['loss']:.4f} "
                f"acc {100 * info['accuracy']:.2f}%",
                file=sys.stderr,
                flush=True,
            )

    return report


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset`` with ``cfg.recipe``; return the ``metrics.json`` dict.

    The model's input shape and class count come from the dataset (``digits`` is 1×8×8).
    Each epoch runs :func:`core.fit` over the shuffled train split (at most
    ``cfg.train.max_batches`` batches when > 0) and :func:`core.evaluate` over the whole test
    split. Peak memory is the process's resident-set high-water mark over the run.

    Raises
    ------
    core.data.DataError
        When the dataset cannot be loaded (message names the fix).
    ValueError
        When the model cannot be built for this dataset.
    """
    from core.data import load_dataset
    from core.experiment import (
        EVAL_BATCH,
        build_model_for,
        build_optimizer_for,
        eval_loader,
        set_threads,
        train_loader,
    )
    from core.train import evaluate, fit

    reset_process_peak()
    started = time.perf_counter()
    set_threads(cfg)
    ds = cfg.dataset
    train_set = load_dataset(ds.name, ds.root, "train", svhn_extra=ds.svhn_extra)
    test_set = load_dataset(ds.name, ds.root, "test")
    in_shape = tuple(train_set.images.shape[1:])

    model = build_model_for(cfg, in_shape, train_set.num_classes)
    optimizer = build_optimizer_for(cfg, model)
    train_batches = train_loader(cfg, train_set, seed=cfg.train.seed)
    test_batches = eval_loader(cfg, test_set, max(cfg.train.batch_size, EVAL_BATCH))
    out_dir = run_folder(cfg)
    num_batches = len(train_batches)
    if cfg.train.max_batches:
        num_batches = min(num_batches, cfg.train.max_batches)
    num_params = sum(p.numel() for p in model.parameters())
    print(
        f"bitfed-train: {cfg.model.name}/{cfg.recipe.name} on {ds.name} "
        f"({len(train_set)} train, {len(test_set)} test, input {'x'.join(map(str, in_shape))}, "
        f"{num_params} parameters, {torch.get_num_threads()} threads) -> {out_dir}",
        flush=True,
    )

    history = []
    for epoch in range(1, cfg.train.epochs + 1):
        progress = _progress(epoch, cfg.train.epochs, num_batches)
        result = fit(
            model, optimizer, train_batches, epochs=1, max_batches=cfg.train.max_batches,
            progress=progress,
        )  # fmt: skip
        test = evaluate(model, test_batches)
        history.append(
            {
                "epoch": epoch,
                "train_loss": result.loss,
                "train_accuracy": result.accuracy,
                "train_examples": result.num_examples,
                "train_seconds": result.seconds,
                "test_loss": test.loss,
                "test_accuracy": test.accuracy,
            }
        )
        print(
            f"epoch {epoch}/{cfg.train.epochs}: train loss {result.loss:.4f} "
            f"acc {100 * result.accuracy:.2f}% | test loss {test.loss:.4f} "
            f"acc {100 * test.accuracy:.2f}% | {result.seconds:.1f} s",
            flush=True,
        )

    last = history[-1]
    metrics = {
        "model": cfg.model.name,
        "recipe": cfg.recipe.name,
        "dataset": ds.name,
        "final_test_accuracy": last["test_accuracy"],
        "final_test_loss": last["test_loss"],
        "final_train_loss": last["train_loss"],
        "epochs": cfg.train.epochs,
        "history": history,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_bytes": process_peak_rss_bytes(),
        "num_params": num_params,
        "in_shape": list(in_shape),
        "num_train": len(train_set),
        "num_test": len(test_set),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": asdict(cfg),
    }
    path = atomic_write_json(out_dir / "metrics.json", metrics)
    print(
        f"final test accuracy {100 * metrics['final_test_accuracy']:.2f}% in "
        f"{metrics['wall_seconds']:.1f} s, peak RSS {metrics['peak_rss_bytes'] / 2**20:.0f} MiB "
        f"-> {path}",
        flush=True,
    )
    return metrics


main = hydra_command("bitfed-train", run)


if __name__ == "__main__":
    main()
