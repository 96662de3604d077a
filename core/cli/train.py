"""Entry point ``bitfed-train``: train one BNN centrally on one dataset with one recipe (Hydra).

``bitfed-train [model=cnv] [recipe=standard] [dataset=mnist dataset.root=DIR] [train.epochs=10]``

A thin ``@hydra.main`` over the repository's ``conf/`` turns the composed config into an
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
from pathlib import Path
from typing import Any

import torch

from core.atomic import atomic_write_json
from core.config import ExperimentConfig, register_configs
from core.memory import process_peak_rss_bytes, reset_process_peak

__all__ = ["CONF_DIR", "run", "main"]

#: The repository's Hydra configs (this file is ``<repo>/core/cli/train.py``).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def _output_dir(cfg: ExperimentConfig) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under @hydra.main: mirror Hydra's layout
        return Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")


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
    from core import build_model, build_optimizer, evaluate, fit, from_recipe
    from core.data import ImageLoader, load_dataset

    reset_process_peak()
    started = time.perf_counter()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    ds = cfg.dataset
    train_set = load_dataset(ds.name, ds.root, "train", svhn_extra=ds.svhn_extra)
    test_set = load_dataset(ds.name, ds.root, "test")
    in_shape = tuple(train_set.images.shape[1:])

    torch.manual_seed(cfg.seed)
    recipe = from_recipe(cfg.recipe.name, po2_bias=cfg.recipe.po2_bias)
    model = build_model(cfg.model.name, recipe, train_set.num_classes, in_shape)
    optimizer = build_optimizer(model, recipe, lr=cfg.recipe.lr)
    batch = cfg.train.batch_size
    train_loader = ImageLoader(
        train_set,
        batch_size=batch,
        shuffle=True,
        seed=cfg.train.seed,
        augment=ds.augment,
        drop_last=len(train_set) % batch == 1,  # a 1-example batch has no batch statistics
        raw=recipe.lowcost,  # low-cost models take the uint8 codes as they are (issue 3)
    )
    test_loader = ImageLoader(
        test_set, batch_size=max(batch, 500), shuffle=False, raw=recipe.lowcost
    )
    out_dir = _output_dir(cfg)
    num_batches = len(train_loader)
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
            model, optimizer, train_loader, epochs=1, max_batches=cfg.train.max_batches,
            progress=progress,
        )  # fmt: skip
        test = evaluate(model, test_loader)
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


def _fail(err: BaseException) -> None:
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"bitfed-train: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _task(cfg: Any) -> None:
    """Hydra task: validate the composed config, then :func:`run` it (bad input: one line)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from core.data import DataError

    try:
        experiment = OmegaConf.to_object(cfg)
    except (ValueError, OmegaConfBaseException) as err:
        _fail(getattr(err, "__cause__", None) or err)
    try:
        run(experiment)
    except (DataError, ValueError, FileNotFoundError, FloatingPointError) as err:
        _fail(err)


def main() -> None:
    """Run ``bitfed-train`` (Hydra command line: ``bitfed-train key=value ...``)."""
    import hydra

    if not (CONF_DIR / "config.yaml").is_file():
        print(
            f"bitfed-train: error: no Hydra configs at {CONF_DIR}; run it from an (editable) "
            "checkout of the repository (pip install -e .)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    register_configs()
    _check_overrides(sys.argv[1:])
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)()


def _check_overrides(argv: list[str]) -> None:
    """Compose once up front so a bad override is reported in one line, not Hydra's block.

    Only plain ``key=value`` overrides are checked; Hydra's own flags (``--cfg``, ``-m``,
    ``--help``, ...) go straight to Hydra.
    """
    if not argv or any(arg.startswith("-") for arg in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name="config", overrides=argv)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        text = str(err).split("Config search path")[0].replace("Available options", "; options")
        if err.__cause__ is not None:  # e.g. "Value 'abc' ... could not be converted to Integer"
            text += ": " + str(err.__cause__).splitlines()[0]
        _fail(ValueError(" ".join(text.split()).replace(" ;", ";")))


if __name__ == "__main__":
    main()
